/** The MET documentation API: clients and assessments pushed as plain JSON become FHIR. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { Agent } from 'supertest';
import { api, uniqueId } from './helpers.js';

// Observations read back as plain JSON trees.
type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function client(id: string): Record<string, unknown> {
  return {
    id,
    identifiers: [{ system: 'urn:oid:1.2.36.146.595.217.0.1', value: `MRN-${id}`, kind: 'mrn' }],
    name: { given: ['Maria'], family: 'Lopez' },
    birthDate: '1958-03-14',
    sex: 'female',
    contact: { phone: '555-0100' },
    referringPhysician: { name: { given: ['Ann'], family: 'Chen' }, npi: '1234567893' },
    precautions: ['No kneeling on the right knee'],
  };
}

function assessment(id: string, clientId: string, measurements: unknown[]): Record<string, unknown> {
  return { id, clientId, date: '2026-10-13T09:00:00-05:00', performer: { id: 'staff-7', name: 'Jordan Lee', credentials: 'MES' }, kind: 'intake', context: 'rest', measurements, findings: 'Antalgic gait.' };
}

const BP = { measure: 'blood-pressure', components: { systolic: 142, diastolic: 88 }, unit: 'mmHg', side: 'left', position: 'sitting' };
const WALK = { measure: 'six-minute-walk', value: 380, unit: 'm', device: 'cane' };
const ROM = { measure: 'joint-range-of-motion', value: 95, unit: 'deg', joint: 'knee', motion: 'flexion', side: 'right' };

async function push(agent: Agent, collection: string, body: unknown) {
  return agent.post(`/met/v1/${collection}`).set('Content-Type', 'application/json').set('X-MET-Software', 'TestTrainer 1.0').send(body as object);
}

async function observationsOf(agent: Agent, patientId: string): Promise<Record<string, unknown>[]> {
  const res = await agent.get(`/fhir/Observation?subject=Patient/${patientId}&_count=100`);
  assert.equal(res.status, 200);
  return ((res.body.entry ?? []) as { resource: Record<string, unknown> }[]).map((e) => e.resource);
}

describe('MET API', function () {
  this.timeout(30_000);

  it('a client becomes a Patient with its MRN, its physician and a Flag per precaution; a resend changes nothing', async () => {
    const agent = await api();
    const id = uniqueId('cl');
    const res = await push(agent, 'clients', client(id));
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const types = (res.body.resources as { type: string }[]).map((r) => r.type).sort();
    assert.deepEqual(types, ['Flag', 'Patient', 'Practitioner']);
    const patientId = (res.body.resources as { type: string; id: string }[]).find((r) => r.type === 'Patient')?.id as string;
    const patient = await agent.get(`/fhir/Patient/${patientId}`);
    assert.equal(patient.body.identifier[1].value, `MRN-${id}`);
    assert.equal(patient.body.identifier[1].type.coding[0].code, 'MR');
    const again = await push(agent, 'clients', client(id));
    assert.equal(again.status, 200);
    assert.equal(again.body.status, 'unchanged');
    assert.equal(again.body.provenance, undefined);
    assert.deepEqual((again.body.resources as { action: string }[]).map((r) => r.action), ['unchanged', 'unchanged', 'unchanged']);
    const history = await agent.get(`/fhir/Patient/${patientId}/_history`);
    assert.equal(history.body.total ?? history.body.entry.length, 1);
  });

  it('an assessment becomes one Observation per measurement (blood pressure with components), grouped, with a Provenance', async () => {
    const agent = await api();
    const cl = uniqueId('cl');
    const patientId = ((await push(agent, 'clients', client(cl))).body.resources as { type: string; id: string }[])[0]?.id as string;
    const kpa = { ...BP, components: { systolic: 18.9, diastolic: 11.7 }, unit: 'kPa', id: 'bp-kpa', side: 'right' };
    const res = await push(agent, 'assessments', assessment(uniqueId('as'), cl, [BP, WALK, ROM, kpa]));
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.ok(res.body.provenance?.id);
    const obs = await observationsOf(agent, patientId);
    assert.equal(obs.length, 5, 'four measurements and the grouping Observation');
    const bp = obs.find((o) => JSON.stringify(o.code).includes('85354-9') && String(JSON.stringify(o.bodySite)).includes('419161000')) as Json;
    assert.deepEqual(bp.meta.profile, ['http://hl7.org/fhir/StructureDefinition/bp']);
    assert.deepEqual(bp.component.map((c: Json) => [c.code.coding[0].code, c.valueQuantity.value, c.valueQuantity.code]), [['8480-6', 142, 'mm[Hg]'], ['8462-4', 88, 'mm[Hg]']]);
    assert.equal(bp.category[0].coding[0].code, 'vital-signs');
    const converted = obs.find((o) => JSON.stringify(o.code).includes('85354-9') && String(JSON.stringify(o.bodySite)).includes('419465000')) as Json;
    assert.equal(converted.component[0].valueQuantity.value, 141.7616, '18.9 kPa in mmHg');
    const rom = obs.find((o) => JSON.stringify(o.code).includes('joint-range-of-motion') || JSON.stringify(o.component ?? []).includes('flexion')) as Json;
    assert.equal(rom.valueQuantity.value, 95);
    assert.equal(rom.bodySite.text, 'right knee');
    const group = obs.find((o) => Array.isArray(o.hasMember)) as Json;
    assert.equal(group.hasMember.length, 4);
    assert.equal(group.valueString, 'Antalgic gait.');
    const prov = await agent.get(`/fhir/Provenance/${res.body.provenance.id}`);
    assert.equal(prov.body.target.length, res.body.resources.length);
    assert.equal(prov.body.agent[0].who.display, 'TestTrainer 1.0');
  });

  it('a resend with a measurement removed marks its Observation entered-in-error; a changed value is a new version', async () => {
    const agent = await api();
    const cl = uniqueId('cl');
    const patientId = ((await push(agent, 'clients', client(cl))).body.resources as { type: string; id: string }[])[0]?.id as string;
    const id = uniqueId('as');
    await push(agent, 'assessments', assessment(id, cl, [BP, WALK]));
    const res = await push(agent, 'assessments', assessment(id, cl, [{ ...BP, components: { systolic: 138, diastolic: 86 } }]));
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.status, 'updated');
    const actions = Object.fromEntries((res.body.resources as { type: string; action: string; version: string }[]).map((r) => [`${r.type}:${r.action}`, r.version]));
    assert.ok('Observation:retired' in actions, JSON.stringify(res.body.resources));
    const obs = await observationsOf(agent, patientId);
    const walk = obs.find((o) => JSON.stringify(o.code).includes('six-minute-walk')) as Json;
    assert.equal(walk.status, 'entered-in-error');
    const bp = obs.find((o) => JSON.stringify(o.code).includes('85354-9')) as Json;
    assert.equal(bp.meta.versionId, '2');
    assert.equal(bp.component[0].valueQuantity.value, 138);
  });

  it('a resend after an Observation was deleted through /fhir writes it again as its next version; an unchanged one is left alone', async () => {
    const agent = await api();
    const cl = uniqueId('cl');
    await push(agent, 'clients', client(cl));
    const id = uniqueId('as');
    const first = await push(agent, 'assessments', assessment(id, cl, [BP, WALK]));
    const made = first.body.resources as { type: string; id: string; version: string }[];
    const [bpObs, walkObs] = made.filter((r) => r.type === 'Observation').slice(-2);
    assert.ok(bpObs && walkObs, JSON.stringify(made));
    assert.equal((await agent.delete(`/fhir/Observation/${bpObs.id}`)).status, 204);
    const res = await push(agent, 'assessments', assessment(id, cl, [BP, { ...WALK, value: 400 }]));
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const byId = new Map((res.body.resources as { id: string; action: string; version: string }[]).map((r) => [r.id, r]));
    // Created 1, deleted 2, written again 3; the walk changed (version 2).
    assert.deepEqual(byId.get(bpObs.id), { type: 'Observation', id: bpObs.id, version: '3', action: 'created' });
    assert.deepEqual(byId.get(walkObs.id), { type: 'Observation', id: walkObs.id, version: '2', action: 'updated' });
    assert.equal((await agent.get(`/fhir/Observation/${bpObs.id}`)).body.meta.versionId, '3');
    const history = await agent.get(`/fhir/Observation/${bpObs.id}/_history`);
    assert.deepEqual((history.body.entry as { request: { method: string } }[]).map((e) => e.request.method), ['PUT', 'DELETE', 'POST']);
    const again = await push(agent, 'assessments', assessment(id, cl, [BP, { ...WALK, value: 400 }]));
    assert.equal(again.body.status, 'unchanged');
  });

  it('rejects impossible values, wrong units, unknown clients and future dates, all at once, and writes nothing', async () => {
    const agent = await api();
    const cl = uniqueId('cl');
    await push(agent, 'clients', client(cl));
    const bad = assessment(uniqueId('as'), cl, [
      { ...BP, components: { systolic: 900, diastolic: 88 } },
      { ...WALK, unit: 'kg' },
      { ...ROM, joint: undefined },
    ]);
    bad.date = '2099-01-01T09:00:00-05:00';
    const res = await push(agent, 'assessments', bad);
    assert.equal(res.status, 422, JSON.stringify(res.body));
    assert.equal(res.type, 'application/problem+json');
    const pointers = (res.body.errors as { pointer: string }[]).map((e) => e.pointer).sort();
    assert.deepEqual(pointers, ['/date', '/measurements/0/components/systolic', '/measurements/1/unit', '/measurements/2/joint']);
    const unknown = await push(agent, 'assessments', assessment(uniqueId('as'), uniqueId('nobody'), [WALK]));
    assert.equal(unknown.status, 422);
    assert.deepEqual((unknown.body.errors as { pointer: string }[]).map((e) => e.pointer), ['/clientId']);
    const schema = await push(agent, 'assessments', { ...assessment(uniqueId('as'), cl, [{ ...WALK, value: 'far' }]), colour: 'red' });
    assert.equal(schema.status, 422);
    assert.deepEqual((schema.body.errors as { pointer: string }[]).map((e) => e.pointer).sort(), ['/colour', '/measurements/0/value']);
  });

  it('the same document sent 10 times in parallel yields one set of resources and one Provenance', async () => {
    const agent = await api();
    const cl = uniqueId('cl');
    const patientId = ((await push(agent, 'clients', client(cl))).body.resources as { type: string; id: string }[])[0]?.id as string;
    const doc = assessment(uniqueId('as'), cl, [BP, WALK, ROM]);
    const results = await Promise.all(Array.from({ length: 10 }, () => push(agent, 'assessments', doc)));
    assert.deepEqual(results.map((r) => r.status).sort(), [200, 200, 200, 200, 200, 200, 200, 200, 200, 201]);
    assert.equal(results.filter((r) => r.body.provenance).length, 1);
    const obs = await observationsOf(agent, patientId);
    assert.equal(obs.length, 4);
    assert.ok(obs.every((o) => (o.meta as { versionId: string }).versionId === '1'));
  });

  it('an assessment dated without seconds (09:00-05:00) is stored with them, as FHIR requires', async () => {
    const agent = await api();
    const cl = uniqueId('cl');
    const patientId = ((await push(agent, 'clients', client(cl))).body.resources as { type: string; id: string }[])[0]?.id as string;
    const doc = { ...assessment(uniqueId('as'), cl, [WALK]), date: '2026-10-13T09:00-05:00' };
    const res = await push(agent, 'assessments', doc);
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const obs = await observationsOf(agent, patientId);
    assert.deepEqual(obs.map((o) => o.effectiveDateTime), ['2026-10-13T09:00:00-05:00', '2026-10-13T09:00:00-05:00']);
  });

  it('publishes its schemas and the catalog', async () => {
    const agent = await api();
    const schema = await agent.get('/met/v1/schemas/assessment.schema.json');
    assert.equal(schema.status, 200);
    assert.match(schema.type, /schema\+json/);
    const measures = await agent.get('/met/v1/measures');
    assert.ok((measures.body.measures as unknown[]).length >= 26);
    const none = await agent.post('/met/v1/spaceships').send({});
    assert.equal(none.status, 404);
    assert.equal(none.type, 'application/problem+json');
  });
});

describe('MET API on the example clients (test/fixtures/met)', function () {
  this.timeout(60_000);
  const root = new URL('./fixtures/met/', import.meta.url);
  for (const scenario of ['knee-replacement', 'hypertension', 'post-stroke', 'low-back-pain']) {
    it(`${scenario}: the client and both assessments map to valid FHIR; each measurement is one Observation`, async () => {
      const agent = await api();
      const read = (name: string) => JSON.parse(readFileSync(new URL(`${scenario}/${name}`, root), 'utf8')) as Record<string, unknown>;
      // Each run uses fresh sender ids, so the shared database never holds them already.
      const suffix = uniqueId('');
      const cl = { ...read('client.json'), id: `${String(read('client.json').id)}${suffix}` };
      const created = await push(agent, 'clients', cl);
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const patientId = (created.body.resources as { type: string; id: string }[])[0]?.id as string;
      let expected = 0;
      for (const name of ['assessment-intake.json', 'assessment-reassessment.json']) {
        const doc: Record<string, unknown> = { ...read(name), id: `${String(read(name).id)}${suffix}`, clientId: cl.id };
        const res = await push(agent, 'assessments', doc);
        assert.equal(res.status, 201, `${name}: ${JSON.stringify(res.body)}`);
        expected += (doc.measurements as unknown[]).length + 1;
      }
      assert.equal((await observationsOf(agent, patientId)).length, expected);
    });
  }
});
