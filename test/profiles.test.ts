/**
 * Our StructureDefinitions (profiles/) and the profile validator (src/validation/profiles.ts): each
 * profile loads with a generated snapshot, valid resources pass and invalid ones fail naming the
 * element, the R4 vital-sign profiles validate the blood pressure the mapping writes, and every
 * resource the MET mappings produce (pushed through the API and read back) meets its profiles.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Agent } from 'supertest';
import { api, uniqueId } from './helpers.js';
import { SchemaValidator } from '../src/validation/schema.js';
import { generateSnapshot, PROFILE_DIR, ProfileError, ProfileValidator, type ElementDefinition, type StructureDefinition } from '../src/validation/profiles.js';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const OURS = 'https://met-fhir-server.dev/fhir/StructureDefinition/';
const R4 = 'http://hl7.org/fhir/StructureDefinition/';
const PA = 'http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes';
const UCUM = 'http://unitsofmeasure.org';

const ownFiles = readdirSync(PROFILE_DIR).filter((f) => f.startsWith('StructureDefinition-') && f.endsWith('.json'));
const own = ownFiles.map((f) => JSON.parse(readFileSync(new URL(f, PROFILE_DIR), 'utf8')) as StructureDefinition);

// ------------------------------------------------------------------ hand-made valid examples

const goal = (): Json => ({
  resourceType: 'Goal',
  meta: { profile: [`${OURS}met-goal`] },
  lifecycleStatus: 'active',
  achievementStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/goal-achievement', code: 'improving', display: 'Improving' }] },
  category: [{ coding: [{ system: PA, code: 'PhysicalActivity', display: 'Physical Activity' }] }, { text: 'Short-term goal' }],
  description: { text: 'Walk to the mailbox and back without knee pain' },
  subject: { reference: 'Patient/p1' },
  startDate: '2026-10-13',
  target: [{ measure: { coding: [{ system: 'http://loinc.org', code: '8480-6' }] }, detailQuantity: { value: 130, unit: 'mmHg', system: UCUM, code: 'mm[Hg]' }, dueDate: '2026-12-15' }],
});

const carePlan = (): Json => ({
  resourceType: 'CarePlan',
  meta: { profile: [`${OURS}met-careplan`] },
  text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">Post-TKA reconditioning, right knee</div>' },
  status: 'active',
  intent: 'plan',
  category: [
    { coding: [{ system: 'http://hl7.org/fhir/us/core/CodeSystem/careplan-category', code: 'assess-plan' }] },
    { coding: [{ system: PA, code: 'PhysicalActivity' }] },
  ],
  title: 'Post-TKA reconditioning, right knee',
  subject: { reference: 'Patient/p1' },
  period: { start: '2026-10-13', end: '2027-01-13' },
  goal: [{ reference: 'Goal/g1' }],
  activity: [{ detail: { kind: 'ServiceRequest', status: 'scheduled', description: 'Recumbent bike, 3x/week, RPE 11-13, 20 min' } }],
  note: [{ authorReference: { display: 'Jordan Lee, MES' }, time: '2026-10-13T09:00:00-05:00', text: 'Home program on the other days.' }],
});

const sessionNote = (): Json => ({
  resourceType: 'DocumentReference',
  meta: { profile: [`${OURS}met-session-note`] },
  status: 'current',
  type: { coding: [{ system: 'http://loinc.org', code: '11506-3', display: 'Progress note' }] },
  category: [{ coding: [{ system: 'http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category', code: 'clinical-note' }] }],
  subject: { reference: 'Patient/p1' },
  date: '2026-10-15T10:00:00-05:00',
  author: [{ identifier: { system: 'urn:example:staff', value: 's7' }, display: 'Jordan Lee, MES' }],
  content: [{ attachment: { contentType: 'text/plain; charset=utf-8', data: Buffer.from('Tolerated well.').toString('base64') } }],
  context: { encounter: [{ reference: 'Encounter/e1' }], period: { start: '2026-10-15T09:00:00-05:00' } },
});

const assessmentObservation = (): Json => ({
  resourceType: 'Observation',
  meta: { profile: [`${OURS}met-assessment-observation`] },
  status: 'final',
  category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'exam' }] }],
  code: { coding: [{ system: 'https://met-fhir-server.dev/fhir/CodeSystem/met-measure', code: 'six-minute-walk-distance' }], text: '6-minute walk distance' },
  subject: { reference: 'Patient/p1' },
  effectiveDateTime: '2026-10-13T09:00:00-05:00',
  performer: [{ display: 'Jordan Lee, MES' }],
  valueQuantity: { value: 380, unit: 'm', system: UCUM, code: 'm' },
});

/** The blood pressure as mappings/v1/measurement.jsonata writes it (see test/met.test.ts). */
const bloodPressure = (): Json => ({
  resourceType: 'Observation',
  meta: { profile: [`${R4}bp`] },
  status: 'final',
  category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs' }] }],
  code: { coding: [{ system: 'http://loinc.org', code: '85354-9', display: 'Blood pressure panel with all children optional' }], text: 'Blood pressure' },
  subject: { reference: 'Patient/p1' },
  effectiveDateTime: '2026-10-13T09:00:00-05:00',
  performer: [{ display: 'Jordan Lee, MES' }],
  bodySite: { coding: [{ system: 'http://snomed.info/sct', code: '419161000', display: 'Unilateral left' }], text: 'left' },
  component: [
    { code: { coding: [{ system: 'http://loinc.org', code: '8480-6', display: 'Systolic blood pressure' }], text: 'Systolic blood pressure' }, valueQuantity: { value: 142, unit: 'mmHg', system: UCUM, code: 'mm[Hg]' } },
    { code: { coding: [{ system: 'http://loinc.org', code: '8462-4', display: 'Diastolic blood pressure' }], text: 'Diastolic blood pressure' }, valueQuantity: { value: 88, unit: 'mmHg', system: UCUM, code: 'mm[Hg]' } },
  ],
});

/** Asserts that some problem is at `path` and its message matches `message`. */
function assertProblem(problems: { path: string; message: string }[], path: string, message: RegExp): void {
  assert.ok(
    problems.some((p) => p.path === path && message.test(p.message)),
    `expected a problem at ${path} matching ${String(message)}, got ${JSON.stringify(problems, null, 1)}`,
  );
}

describe('profiles', function () {
  this.timeout(60_000);
  let v: ProfileValidator;

  before(async () => {
    v = await ProfileValidator.load();
  });

  describe('our StructureDefinitions', () => {
    it('there are the four the issue names, each a draft constraint profile of version 0.1.0 on FHIR 4.0.1', () => {
      assert.deepEqual(own.map((sd) => sd.id).sort(), ['met-assessment-observation', 'met-careplan', 'met-goal', 'met-session-note']);
      for (const sd of own) {
        assert.equal(sd.url, OURS + sd.id);
        assert.deepEqual([sd.version, sd.status, sd.fhirVersion, sd.kind, sd.derivation, sd.abstract], ['0.1.0', 'draft', '4.0.1', 'resource', 'constraint', false]);
        assert.equal(sd.snapshot, undefined, 'differential only: the snapshot is generated at load');
        assert.equal(sd.baseDefinition, R4 + sd.type);
      }
    });

    it('are valid R4 StructureDefinitions and ValueSets (base JSON schema)', () => {
      const schema = new SchemaValidator();
      for (const file of readdirSync(PROFILE_DIR).filter((f) => f.endsWith('.json'))) {
        const resource = JSON.parse(readFileSync(new URL(file, PROFILE_DIR), 'utf8')) as Json;
        assert.deepEqual(schema.validate(resource), [], file);
      }
    });

    for (const sd of own) {
      it(`${sd.id} loads with a generated snapshot holding each differential element`, () => {
        assert.ok(v.knows(sd.url));
        assert.ok(v.own.has(sd.url));
        const snapshot = v.snapshot(sd.url) as ElementDefinition[];
        const base = v.snapshot(sd.baseDefinition as string) as ElementDefinition[];
        assert.ok(snapshot.length > base.length, 'slices and unfolded datatype elements are added');
        const ids = new Set(snapshot.map((e) => e.id));
        for (const e of base) assert.ok(ids.has(e.id), `base element ${e.id} kept`);
        for (const d of sd.differential?.element ?? []) {
          const e = snapshot.find((x) => x.id === d.id) as ElementDefinition;
          assert.ok(e, `${d.id} in the snapshot`);
          if (d.min !== undefined) assert.equal(e.min, d.min, `${d.id} min`);
          if (d.max !== undefined) assert.equal(e.max, d.max, `${d.id} max`);
          for (const c of d.constraint ?? []) assert.ok(e.constraint?.some((x) => x.key === c.key), `${d.id} ${c.key}`);
        }
        // What the validator leaves unchecked is inherited from the base, never something of ours.
        for (const note of v.notes(sd.url)) assert.ok(!(sd.differential?.element ?? []).some((d) => note.startsWith(`${d.id}:`) && (d.binding || d.slicing || d.sliceName)), note);
      });
    }

    it('met-goal: category:PA is a slice with the Physical Activity pattern, target.due[x] a required date', () => {
      const snapshot = v.snapshot(`${OURS}met-goal`) as ElementDefinition[];
      const pa = snapshot.find((e) => e.id === 'Goal.category:PA') as ElementDefinition;
      assert.deepEqual([pa.sliceName, pa.min, pa.max, pa.patternCodeableConcept], ['PA', 1, '1', { coding: [{ system: PA, code: 'PhysicalActivity' }] }]);
      const due = snapshot.find((e) => e.id === 'Goal.target.due[x]') as ElementDefinition;
      assert.deepEqual([due.min, due.type], [1, [{ code: 'date' }]]);
      assert.ok(snapshot.some((e) => e.id === 'Goal.description.text' && e.min === 1), 'CodeableConcept unfolded under Goal.description');
    });
  });

  describe('snapshot generation', () => {
    const goalBase = (): StructureDefinition => v.definition(`${R4}Goal`) as StructureDefinition;
    const resolve = (typeOrUrl: string): StructureDefinition | undefined => v.definition(typeOrUrl) ?? v.definition(R4 + typeOrUrl);
    const profile = (elements: Json[]): StructureDefinition => ({
      resourceType: 'StructureDefinition', id: 'x', url: 'https://example.org/x', name: 'X', type: 'Goal', kind: 'resource', derivation: 'constraint',
      baseDefinition: `${R4}Goal`, differential: { element: elements as ElementDefinition[] },
    });
    const fails = (elements: Json[], message: RegExp): void => assert.throws(() => generateSnapshot(profile(elements), goalBase(), resolve), (e: Error) => e instanceof ProfileError && message.test(e.message));

    it('throws, naming the element, on what it does not support or FHIR forbids', () => {
      fails([{ id: 'Goal.subject', path: 'Goal.subject', min: 0 }], /Goal\.subject: min 0 would relax/);
      fails([{ id: 'Goal.target', path: 'Goal.target', max: '*', min: 0 }, { id: 'Goal.note', path: 'Goal.note', maxLength: 5 }], /Goal\.note: the differential property 'maxLength' is not supported/);
      fails([{ id: 'Goal.category:PA', path: 'Goal.category', sliceName: 'PA', min: 1 }], /Goal\.category:PA is a slice of Goal\.category, which has no slicing/);
      fails([{ id: 'Goal.target.detail[x].value', path: 'Goal.target.detail[x].value', min: 1 }], /cannot unfold Goal\.target\.detail\[x\].*7 types/);
      fails([{ id: 'Goal.nothing', path: 'Goal.nothing', min: 1 }], /no element Goal\.nothing/);
      fails([{ id: 'Goal.start[x]', path: 'Goal.start[x]', type: [{ code: 'dateTime' }] }], /type dateTime is not one of the base's/);
      fails([{ id: 'Goal.subject', path: 'Goal.subject', type: [{ code: 'Reference', targetProfile: [`${R4}Encounter`] }] }], /target .*Encounter is not allowed/);
      fails([{ id: 'Goal.lifecycleStatus', path: 'Goal.lifecycleStatus', binding: { strength: 'extensible', valueSet: 'http://hl7.org/fhir/ValueSet/goal-status' } }], /cannot weaken a required binding/);
      fails([{ id: 'Goal.lifecycleStatus', path: 'Goal.lifecycleStatus', patternCodeableConcept: { text: 'x' } }], /patternCodeableConcept does not fit/);
    });

    it('a profile that cannot be generated fails the load', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'profiles-'));
      try {
        writeFileSync(join(dir, 'StructureDefinition-x.json'), JSON.stringify(profile([{ id: 'Goal.subject', path: 'Goal.subject', min: 0 }])));
        await assert.rejects(ProfileValidator.load({ profileDir: pathToFileURL(`${dir}/`) }), /Goal\.subject: min 0 would relax/);
      } finally {
        rmSync(dir, { recursive: true });
      }
    });
  });

  describe('met-goal', () => {
    it('a valid Goal passes, with a range target too', () => {
      assert.deepEqual(v.problems(goal()), []);
      const range = goal();
      range.target[0].detailRange = { low: { value: 450, unit: 'm', system: UCUM, code: 'm' } };
      delete range.target[0].detailQuantity;
      assert.deepEqual(v.problems(range), []);
    });

    it('fails without the Physical Activity category', () => {
      const g = goal();
      g.category = [{ text: 'Short-term goal' }];
      assertProblem(v.problems(g), 'Goal.category', /Goal\.category:PA: slice 'PA' requires at least 1, but found 0/);
    });

    it('fails without target.dueDate, naming the target', () => {
      const g = goal();
      delete g.target[0].dueDate;
      assertProblem(v.problems(g), 'Goal.target[0].due', /Goal\.target\.due\[x\]: minimum required = 1, but found 0/);
      g.target[0].dueDuration = { value: 8, unit: 'wk', system: UCUM, code: 'wk' };
      assertProblem(v.problems(g), 'Goal.target[0].dueDuration', /type Duration is not allowed here \(allowed: date\)/);
    });

    it('fails without a target, a measure, an achievementStatus, or with a code outside goal-achievement', () => {
      const g = goal();
      delete g.target[0].measure;
      delete g.achievementStatus;
      assertProblem(v.problems(g), 'Goal.target[0].measure', /minimum required = 1/);
      assertProblem(v.problems(g), 'Goal.achievementStatus', /minimum required = 1/);
      const wrong = goal();
      wrong.achievementStatus.coding[0].code = 'sustaining-ish';
      assertProblem(v.problems(wrong), 'Goal.achievementStatus', /none of the codings \(.*sustaining-ish\) is in the required value set http:\/\/hl7\.org\/fhir\/ValueSet\/goal-achievement/);
      const none = goal();
      delete none.target;
      assertProblem(v.problems(none), 'Goal.target', /minimum required = 1, but found 0/);
    });

    it('fails with a subject that is not a Patient, a note without author and time, or a modifierExtension', () => {
      const g = goal();
      g.subject = { reference: 'Group/g1' };
      g.note = [{ text: 'Agreed with the client' }];
      g.modifierExtension = [{ url: 'https://example.org/x', valueBoolean: true }];
      const problems = v.problems(g);
      assertProblem(problems, 'Goal.subject.reference', /a reference to a Group, but only Patient allowed/);
      assertProblem(problems, 'Goal.note[0].author', /Goal\.note\.author\[x\]: minimum required = 1/);
      assertProblem(problems, 'Goal.note[0].time', /Goal\.note\.time: minimum required = 1/);
      assertProblem(problems, 'Goal.modifierExtension', /maximum allowed = 0, but found 1/);
    });
  });

  describe('met-careplan', () => {
    it('a valid CarePlan passes', () => {
      assert.deepEqual(v.problems(carePlan()), []);
    });

    it("fails with an intent other than 'plan'", () => {
      const c = carePlan();
      c.intent = 'order';
      assertProblem(v.problems(c), 'CarePlan.intent', /CarePlan\.intent: the value must match "plan"/);
    });

    it('fails without the US Core assess-plan or the Physical Activity category, or twice the same', () => {
      const c = carePlan();
      c.category = [c.category[1], c.category[1]];
      const problems = v.problems(c);
      assertProblem(problems, 'CarePlan.category', /CarePlan\.category:AssessPlan: slice 'AssessPlan' requires at least 1, but found 0/);
      assertProblem(problems, 'CarePlan.category', /CarePlan\.category:PA: slice 'PA' allows at most 1, but found 2/);
    });

    it('fails without a narrative (US Core), a period start, or a note author; with a narrative status US Core does not allow', () => {
      const c = carePlan();
      delete c.text;
      delete c.period.start;
      delete c.note[0].authorReference;
      const problems = v.problems(c);
      assertProblem(problems, 'CarePlan.text', /minimum required = 1/);
      assertProblem(problems, 'CarePlan.period.start', /minimum required = 1/);
      assertProblem(problems, 'CarePlan.note[0].author', /minimum required = 1/);
      const empty = carePlan();
      empty.text.status = 'empty';
      assertProblem(v.problems(empty), 'CarePlan.text.status', /'empty' is not in the required value set .*met-narrative-status/);
    });
  });

  describe('met-session-note', () => {
    it('a valid session note passes', () => {
      assert.deepEqual(v.problems(sessionNote()), []);
    });

    it('fails without the encounter', () => {
      const n = sessionNote();
      delete n.context.encounter;
      assertProblem(v.problems(n), 'DocumentReference.context.encounter', /DocumentReference\.context\.encounter: minimum required = 1, but found 0/);
      delete n.context;
      assertProblem(v.problems(n), 'DocumentReference.context', /minimum required = 1/);
    });

    it('fails when the note is not plain text data, has no LOINC type, no author or no clinical-note category', () => {
      const n = sessionNote();
      n.content[0].attachment = { contentType: 'text/html', url: 'https://example.org/note.html' };
      n.type = { text: 'Session note' };
      delete n.author;
      n.category = [{ text: 'note' }];
      const problems = v.problems(n);
      assertProblem(problems, 'DocumentReference.content[0].attachment', /met-note-2: The note is plain text/);
      assertProblem(problems, 'DocumentReference.content[0].attachment.data', /minimum required = 1/);
      assertProblem(problems, 'DocumentReference.type', /met-note-1: The note's type is a LOINC document code/);
      assertProblem(problems, 'DocumentReference.author', /minimum required = 1/);
      assertProblem(problems, 'DocumentReference.category', /slice 'uscore' requires at least 1/);
    });
  });

  describe('met-assessment-observation', () => {
    it('a valid assessment Observation passes', () => {
      assert.deepEqual(v.problems(assessmentObservation()), []);
    });

    it('fails without a subject, naming it', () => {
      const o = assessmentObservation();
      delete o.subject;
      assertProblem(v.problems(o), 'Observation.subject', /Observation\.subject: minimum required = 1, but found 0/);
    });

    it('fails with a value that is not a UCUM Quantity, without a value, or with a non-UCUM component', () => {
      const o = assessmentObservation();
      o.valueQuantity.system = 'urn:example:units';
      assertProblem(v.problems(o), 'Observation.valueQuantity.system', /the value must be exactly "http:\/\/unitsofmeasure\.org"/);
      o.valueString = '380 m';
      delete o.valueQuantity;
      assertProblem(v.problems(o), 'Observation.valueString', /type string is not allowed here \(allowed: Quantity\)/);
      delete o.valueString;
      assertProblem(v.problems(o), 'Observation', /met-obs-1: An assessment result has a value or components/);
      o.component = [{ code: { text: 'flexion' }, valueQuantity: { value: 3, unit: 'x' } }];
      assertProblem(v.problems(o), 'Observation.component[0]', /met-obs-4/);
    });

    it('fails without an observation-category category or a coded code', () => {
      const o = assessmentObservation();
      o.category = [{ text: 'exam' }];
      o.code = { text: '6-minute walk' };
      const problems = v.problems(o);
      assertProblem(problems, 'Observation', /met-obs-2/);
      assertProblem(problems, 'Observation.code', /met-obs-3/);
    });
  });

  describe('R4 vital-sign profiles', () => {
    it('the blood pressure as the mapping writes it meets the R4 bp profile', () => {
      assert.deepEqual(v.problems(bloodPressure()), []);
    });

    it('matches components to SystolicBP/DiastolicBP through their re-sliced code.coding (SBPCode, DBPCode)', () => {
      // The R4 bp profile slices component by code.coding.code and code.coding.system, whose
      // values are fixed only inside the re-slices code.coding:SBPCode and code.coding:DBPCode.
      const missing = bloodPressure();
      missing.component[0].code.coding[0].code = '8478-0';
      assertProblem(v.problems(missing), 'Observation.component', /Observation\.component:SystolicBP: slice 'SystolicBP' requires at least 1, but found 0/);
      const kpa = bloodPressure();
      kpa.component[1].valueQuantity = { value: 11.7, unit: 'kPa', system: UCUM, code: 'kPa' };
      assertProblem(v.problems(kpa), 'Observation.component[1].valueQuantity.code', /Observation\.component:DiastolicBP\.value\[x\]\.code: the value must be exactly "mm\[Hg\]"/);
    });

    it('the vital-sign category and code are required by vitalsigns and heartrate', () => {
      const hr: Json = { ...bloodPressure(), meta: { profile: [`${R4}heartrate`] }, code: { coding: [{ system: 'http://loinc.org', code: '40443-4' }] }, valueQuantity: { value: 60, unit: 'beats/minute', system: UCUM, code: '/min' } };
      delete hr.component;
      hr.category = [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'exam' }] }];
      const problems = v.problems(hr);
      assertProblem(problems, 'Observation.category', /slice 'VSCat' requires at least 1/);
      assertProblem(problems, 'Observation.code.coding', /slice 'HeartRateCode' requires at least 1/);
    });
  });

  describe('profiles we do not know', () => {
    it('are not checked, and unknownProfiles names them', () => {
      const pa = { ...assessmentObservation(), meta: { profile: ['http://hl7.org/fhir/us/physical-activity/StructureDefinition/pa-observation-evs-days-per-week', `${OURS}met-assessment-observation|0.1.0`] } };
      assert.deepEqual(v.unknownProfiles(pa), ['http://hl7.org/fhir/us/physical-activity/StructureDefinition/pa-observation-evs-days-per-week']);
      assert.ok(v.knows(`${OURS}met-assessment-observation|0.1.0`));
      assert.deepEqual(v.problems(pa), []);
      assert.deepEqual(v.problems({ resourceType: 'Observation' }), [], 'no meta.profile, nothing to check');
    });

    it('a profile of another resource type is a problem', () => {
      const o = { ...assessmentObservation(), meta: { profile: [`${OURS}met-goal`] } };
      assertProblem(v.problems(o), 'Observation', /the profile is for Goal, not Observation/);
    });
  });

  describe('what the mappings produce', () => {
    let agent: Agent;
    const clientId = uniqueId('cl');
    const push = (collection: string, body: unknown) => agent.post(`/met/v1/${collection}`).set('Content-Type', 'application/json').set('X-MET-Software', 'TestTrainer 1.0').send(body as object);
    const read = async (type: string, ids: string[]): Promise<Json[]> => Promise.all(ids.map(async (id) => (await agent.get(`/fhir/${type}/${id}`)).body as Json));
    const pushed = (body: Json, type: string): string[] => (body.resources as { type: string; id: string }[]).filter((r) => r.type === type).map((r) => r.id);

    before(async () => {
      agent = await api();
      const res = await push('clients', { id: clientId, name: { given: ['Maria'], family: 'Lopez' }, birthDate: '1958-03-14', sex: 'female', identifiers: [{ system: 'urn:oid:1.2.36.146.595.217.0.1', value: `MRN-${clientId}`, kind: 'mrn' }] });
      assert.equal(res.status, 201, JSON.stringify(res.body));
    });

    it('every catalog measure, as an assessment Observation, meets the profile it claims', async () => {
      const catalog = JSON.parse(readFileSync(new URL('../mappings/measures.json', import.meta.url), 'utf8')) as Json;
      const measurements = (catalog.measures as Json[]).map((m) => {
        // The range is in the canonical unit: send that unit, as the sender's string for it if there is one.
        const unitOf = (s: Json): string => ((s.acceptedUnits as Json[] | undefined)?.find((u) => u.ucum === s.unit.code)?.unit as string | undefined) ?? (s.unit.code as string);
        const mid = (s: Json): number => (m.valueType === 'integer' ? Math.round((s.range.min + s.range.max) / 2) : (s.range.min + s.range.max) / 2);
        const measurement: Json = { id: m.key, measure: m.key };
        if (m.valueType === 'components') {
          measurement.components = Object.fromEntries((m.components as Json[]).map((c) => [c.key, mid(c)]));
          measurement.unit = unitOf((m.components as Json[])[0] as Json);
        } else {
          measurement.value = mid(m);
          measurement.unit = unitOf(m);
        }
        for (const q of [...((m.requiredQualifiers as string[] | undefined) ?? []), ...((m.qualifiers as string[]).includes('side') ? ['side'] : [])]) {
          const def = catalog.qualifiers[q] as Json;
          measurement[q] = def.type === 'coded' ? def.values[0].key : 'as per protocol';
        }
        return measurement;
      });
      const res = await push('assessments', { id: uniqueId('as'), clientId, date: '2026-10-13T09:00:00-05:00', performer: { id: 'staff-7', name: 'Jordan Lee', credentials: 'MES' }, kind: 'intake', context: 'rest', measurements, findings: 'Antalgic gait.' });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      const observations = (await read('Observation', pushed(res.body as Json, 'Observation'))).filter((o) => o.meta?.profile);
      assert.equal(observations.length, measurements.length);
      const unknown = new Set<string>();
      for (const o of observations) {
        assert.deepEqual(v.problems(o), [], `${o.code.text}: ${JSON.stringify(o.meta.profile)}`);
        for (const url of v.unknownProfiles(o)) unknown.add(url);
      }
      // Only the Physical Activity IG's exercise vital signs go unchecked.
      assert.deepEqual([...unknown].filter((u) => !u.startsWith('http://hl7.org/fhir/us/physical-activity/')), []);
      const known = observations.filter((o) => v.unknownProfiles(o).length === 0);
      assert.ok(known.length >= 20, `${known.length} Observations checked against a profile`);
    });

    it('goals (an exact value, a range, a blood-pressure component) meet met-goal', async () => {
      const goals = [
        { measure: 'six-minute-walk', low: 450, unit: 'm', due: '2026-12-15' },
        { measure: 'timed-up-and-go', high: 9, unit: 's', due: '2026-12-15' },
        { measure: 'blood-pressure', component: 'systolic', value: 130, unit: 'mmHg', due: '2027-01-15' },
      ];
      for (const target of goals) {
        const res = await push('goals', { id: uniqueId('goal'), clientId, term: 'long', description: `Reach ${target.measure}`, target, status: 'active', startDate: '2026-10-13', priority: 'high' });
        assert.equal(res.status, 201, JSON.stringify(res.body));
        const [g] = await read('Goal', pushed(res.body as Json, 'Goal'));
        assert.deepEqual(g?.meta.profile, [`${OURS}met-goal`]);
        assert.deepEqual(v.problems(g), [], JSON.stringify(g));
      }
    });

    it('the client Patient meets US Core 5.0.1 Patient too (it claims no profile)', async () => {
      const res = await push('clients', { id: clientId, name: { given: ['Maria'], family: 'Lopez' }, birthDate: '1958-03-14', sex: 'female', identifiers: [{ system: 'urn:oid:1.2.36.146.595.217.0.1', value: `MRN-${clientId}`, kind: 'mrn' }] });
      const [patient] = await read('Patient', pushed(res.body as Json, 'Patient'));
      assert.deepEqual(v.problemsAgainst(patient as Json, 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient'), []);
    });
  });
});
