/** `_summary` and `_elements` on real R4 examples: https://hl7.org/fhir/R4/search.html#summary */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { JsonResource } from '../src/fhir/resource.js';
import { SUBSETTED, selectElements, summarize } from '../src/fhir/summary.js';

const EXAMPLES = new URL('../../shared/data/fhir-r4-examples/', import.meta.url).pathname;
const DEFINITIONS = new URL('../src/fhir/generated/definitions.json', import.meta.url);
const TAG = { system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED' };

const load = (name: string): JsonResource => JSON.parse(readFileSync(join(EXAMPLES, name), 'utf8')) as JsonResource;

/** Frozen all the way down: any mutation of the input throws (ES modules are strict). */
function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

describe('summary: _summary and _elements', () => {
  // Observation-example: text, status, category, code, subject, encounter, effectiveDateTime, valueQuantity.
  const observation = deepFreeze(load('Observation-example.json'));
  // Patient-example: text, identifier, active, name, telecom, gender, birthDate + _birthDate,
  // deceasedBoolean, address, contact, managingOrganization.
  const patient = deepFreeze(load('Patient-example.json'));
  const weight = { value: 185, unit: 'lbs', system: 'http://unitsofmeasure.org', code: '[lb_av]' };

  it('uses the SUBSETTED code of v3-ObservationValue', () => {
    assert.deepEqual({ ...SUBSETTED }, TAG);
  });

  it('_summary=true keeps the summary elements of an Observation (choices included), marked SUBSETTED', () => {
    const out = summarize(observation, 'true');
    assert.deepEqual(out, {
      resourceType: 'Observation',
      id: 'example',
      meta: { tag: [TAG] },
      status: 'final',
      code: observation.code,
      subject: { reference: 'Patient/example' },
      encounter: { reference: 'Encounter/example' },
      effectiveDateTime: '2016-03-28',
      valueQuantity: weight,
    });
    assert.deepEqual(Object.keys(out), ['resourceType', 'id', 'meta', 'status', 'code', 'subject', 'encounter', 'effectiveDateTime', 'valueQuantity']);
    assert.equal((out.code as { coding: unknown[] }).coding.length, 4);
  });

  it('_summary=true on a Patient keeps primitive extensions with their element and drops text and contact', () => {
    const out = summarize(patient, 'true');
    assert.deepEqual(Object.keys(out), ['resourceType', 'id', 'meta', 'identifier', 'active', 'name', 'telecom', 'gender', 'birthDate', '_birthDate', 'deceasedBoolean', 'address', 'managingOrganization']);
    assert.deepEqual(out, {
      resourceType: 'Patient',
      id: 'example',
      meta: { tag: [TAG] },
      identifier: patient.identifier,
      active: true,
      name: patient.name,
      telecom: patient.telecom,
      gender: 'male',
      birthDate: '1974-12-25',
      _birthDate: { extension: [{ url: 'http://hl7.org/fhir/StructureDefinition/patient-birthTime', valueDateTime: '1974-12-25T14:35:45-05:00' }] },
      deceasedBoolean: false,
      address: patient.address,
      managingOrganization: { reference: 'Organization/1' },
    });
  });

  it('_summary=text keeps text, id, meta and the mandatory elements', () => {
    assert.deepEqual(summarize(observation, 'text'), {
      resourceType: 'Observation',
      id: 'example',
      meta: { tag: [TAG] },
      text: observation.text,
      status: 'final',
      code: observation.code,
    });
    assert.deepEqual(summarize(patient, 'text'), { resourceType: 'Patient', id: 'example', meta: { tag: [TAG] }, text: patient.text });
  });

  it('_summary=data removes text only', () => {
    const { text: _text, ...rest } = observation;
    const out = summarize(observation, 'data');
    assert.deepEqual(out, { ...rest, meta: { tag: [TAG] } });
    assert.deepEqual(Object.keys(out), ['resourceType', 'id', 'meta', 'status', 'category', 'code', 'subject', 'encounter', 'effectiveDateTime', 'valueQuantity']);
  });

  it('keeps meta in place, adds the tag after existing ones, never twice, and never mutates the input', () => {
    const other = { system: 'http://example.org/tags', code: 'reviewed' };
    const stored = deepFreeze({ ...observation, meta: { versionId: '3', lastUpdated: '2026-11-23T12:00:00.000Z', tag: [other] } });
    const once = summarize(stored, 'true');
    assert.deepEqual(once.meta, { versionId: '3', lastUpdated: '2026-11-23T12:00:00.000Z', tag: [other, TAG] });
    assert.deepEqual(summarize(once, 'data').meta, { versionId: '3', lastUpdated: '2026-11-23T12:00:00.000Z', tag: [other, TAG] });
    assert.deepEqual(selectElements(once, ['value']).resource.meta, { versionId: '3', lastUpdated: '2026-11-23T12:00:00.000Z', tag: [other, TAG] });
    assert.deepEqual(stored.meta, { versionId: '3', lastUpdated: '2026-11-23T12:00:00.000Z', tag: [other] });
    assert.deepEqual(observation, load('Observation-example.json'));
    assert.deepEqual(patient, load('Patient-example.json'));
  });

  it('_elements keeps the listed elements plus id, meta and mandatory ones; a choice base keeps whichever is present', () => {
    assert.deepEqual(selectElements(observation, ['value']), {
      resource: { resourceType: 'Observation', id: 'example', meta: { tag: [TAG] }, status: 'final', code: observation.code, valueQuantity: weight },
      unknown: [],
    });
    assert.deepEqual(selectElements(observation, ['subject', 'effective[x]', 'valueString']), {
      resource: { resourceType: 'Observation', id: 'example', meta: { tag: [TAG] }, status: 'final', code: observation.code, subject: { reference: 'Patient/example' }, effectiveDateTime: '2016-03-28' },
      unknown: [],
    });
    assert.deepEqual(selectElements(observation, ['valueQuantity']).resource.valueQuantity, weight);
    assert.deepEqual(selectElements(patient, []), { resource: { resourceType: 'Patient', id: 'example', meta: { tag: [TAG] } }, unknown: [] });
  });

  it('_elements ignores names that are not elements of the type, and reports each once', () => {
    const out = selectElements(patient, ['birthDate', 'deceased', 'foo', 'Patient.gender', 'foo', '_birthDate', 'resourceType', ' name ', 'valueQuantity', '']);
    assert.deepEqual(out.unknown, ['foo', 'Patient.gender', '_birthDate', 'valueQuantity']);
    assert.deepEqual(out.resource, {
      resourceType: 'Patient',
      id: 'example',
      meta: { tag: [TAG] },
      name: patient.name,
      birthDate: '1974-12-25',
      _birthDate: patient._birthDate,
      deceasedBoolean: false,
    });
  });

  it('throws on a resource type that is not R4', () => {
    assert.throws(() => summarize({ resourceType: 'Project', id: 'p' }, 'true'), /not an R4 resource type: Project/);
    assert.throws(() => selectElements({ resourceType: 'toString' }, []), /not an R4 resource type: toString/);
  });

  it('knows every element of all 698 official examples (each kept by _elements listing all elements)', () => {
    const { types } = JSON.parse(readFileSync(DEFINITIONS, 'utf8')) as { types: Record<string, { elements: string[] }> };
    const files = readdirSync(EXAMPLES).filter((f) => f.endsWith('.json'));
    assert.equal(files.length, 698);
    for (const file of files) {
      const resource = load(file);
      const all = types[resource.resourceType]?.elements ?? [];
      const { resource: out, unknown } = selectElements(resource, all);
      assert.deepEqual(unknown, [], file);
      const tags = [...((resource.meta?.tag as unknown[] | undefined) ?? []), TAG];
      assert.deepEqual(out, { ...resource, meta: { ...resource.meta, tag: tags } }, file);
      assert.equal(summarize(resource, 'data').text, undefined, file);
    }
  });
});
