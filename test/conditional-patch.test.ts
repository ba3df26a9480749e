/** PATCH over HTTP, conditional update and conditional delete at type level. */
import assert from 'node:assert/strict';
import { api, FHIR_JSON, assertOutcome, uniqueId } from './helpers.js';

async function createPatient(extra: Record<string, unknown> = {}): Promise<string> {
  const id = uniqueId('pp');
  const res = await (await api()).put(`/fhir/Patient/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', id, name: [{ family: 'Patch' }], ...extra });
  assert.equal(res.status, 201);
  return id;
}

describe('PATCH', () => {
  it('applies a JSON Patch, validates and stores a new version', async () => {
    const id = await createPatient();
    const res = await (await api()).patch(`/fhir/Patient/${id}`).set('Content-Type', 'application/json-patch+json').send([{ op: 'add', path: '/birthDate', value: '1970-01-01' }]);
    assert.equal(res.status, 200);
    assert.equal(res.body.birthDate, '1970-01-01');
    assert.equal(res.body.meta.versionId, '2');
    assert.equal(res.headers.etag, 'W/"2"');
    const found = await (await api()).get(`/fhir/Patient?_id=${id}&birthdate=1970-01-01`);
    assert.equal(found.body.total, 1, 'the index follows the patch');
  });

  it('applies a FHIRPath Patch (Parameters)', async () => {
    const id = await createPatient();
    const patch = { resourceType: 'Parameters', parameter: [{ name: 'operation', part: [{ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.name[0].family' }, { name: 'value', valueString: 'Fixed' }] }] };
    const res = await (await api()).patch(`/fhir/Patient/${id}`).set('Content-Type', FHIR_JSON).send(patch);
    assert.equal(res.status, 200);
    assert.equal(res.body.name[0].family, 'Fixed');
  });

  it('refuses a result that is not valid FHIR, and changes nothing', async () => {
    const id = await createPatient();
    const res = await (await api()).patch(`/fhir/Patient/${id}`).set('Content-Type', 'application/json-patch+json').send([{ op: 'add', path: '/birthDate', value: 'yesterday' }]);
    assert.equal(res.status, 422);
    assert.equal(res.body.issue[0].expression[0], 'Patient.birthDate');
    const read = await (await api()).get(`/fhir/Patient/${id}`);
    assert.equal(read.body.meta.versionId, '1');
  });

  it('a malformed patch is 400, a failed test 409, a stale If-Match 412, an unknown resource 404', async () => {
    const id = await createPatient();
    const agent = await api();
    const bad = await agent.patch(`/fhir/Patient/${id}`).set('Content-Type', 'application/json-patch+json').send({ op: 'add' });
    assert.equal(bad.status, 400);
    const test = await agent.patch(`/fhir/Patient/${id}`).set('Content-Type', 'application/json-patch+json').send([{ op: 'test', path: '/name/0/family', value: 'Other' }]);
    assert.equal(test.status, 409);
    const stale = await agent.patch(`/fhir/Patient/${id}`).set('Content-Type', 'application/json-patch+json').set('If-Match', 'W/"7"').send([{ op: 'add', path: '/active', value: true }]);
    assert.equal(stale.status, 412);
    const missing = await agent.patch('/fhir/Patient/does-not-exist').set('Content-Type', 'application/json-patch+json').send([{ op: 'add', path: '/active', value: true }]);
    assert.equal(missing.status, 404);
  });

  it('20 parallel patches without If-Match lose no update', async () => {
    const id = await createPatient({ telecom: [{ system: 'phone', value: '555-start' }] });
    const agent = await api();
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        agent.patch(`/fhir/Patient/${id}`).set('Content-Type', 'application/json-patch+json').send([{ op: 'add', path: '/telecom/-', value: { system: 'phone', value: `555-${i}` } }]).catch((e: unknown) => e),
      ),
    ).catch(() => []);
    void results;
    const read = await agent.get(`/fhir/Patient/${id}`);
    // Each patch applies to the version the previous one wrote: all 20 land, in 20 versions.
    assert.deepEqual((results as { status?: number }[]).map((r) => r.status), Array(20).fill(200));
    assert.equal((read.body.telecom ?? []).length, 21);
    assert.equal(read.body.meta.versionId, '21');
  });
});

describe('conditional update and delete', () => {
  it('update: no match creates, one match updates, two matches is 412', async () => {
    const system = `urn:test:${uniqueId('cu')}`;
    const agent = await api();
    const url = `/fhir/Patient?identifier=${encodeURIComponent(`${system}|A`)}`;
    const created = await agent.put(url).set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', identifier: [{ system, value: 'A' }], active: true });
    assert.equal(created.status, 201);
    const updated = await agent.put(url).set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', identifier: [{ system, value: 'A' }], active: false });
    assert.equal(updated.status, 200);
    assert.equal(updated.body.id, created.body.id);
    assert.equal(updated.body.meta.versionId, '2');
    await agent.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', identifier: [{ system, value: 'A' }] });
    const ambiguous = await agent.put(url).set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', identifier: [{ system, value: 'A' }] });
    assert.equal(ambiguous.status, 412);
    assertOutcome(ambiguous.body, [{ code: 'conflict', detail: 'multiple-matches', diagnostics: 'The conditional update matched more than one Patient' }]);
  });

  it('20 parallel conditional updates with the same criteria create one resource', async () => {
    const system = `urn:test:${uniqueId('cu')}`;
    const agent = await api();
    const url = `/fhir/Patient?identifier=${encodeURIComponent(`${system}|B`)}`;
    const results = await Promise.all(Array.from({ length: 20 }, () => agent.put(url).set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', identifier: [{ system, value: 'B' }] })));
    assert.deepEqual(results.map((r) => r.status).sort(), [201, ...Array(19).fill(200)].sort());
    const found = await agent.get(`${url}&_total=accurate`);
    assert.equal(found.body.total, 1);
  });

  it('delete: deletes the one match; no match is fine; two matches is 412', async () => {
    const system = `urn:test:${uniqueId('cd')}`;
    const agent = await api();
    const make = () => agent.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', identifier: [{ system, value: 'C' }] });
    const one = await make();
    const url = `/fhir/Patient?identifier=${encodeURIComponent(`${system}|C`)}`;
    assert.equal((await agent.delete(url)).status, 204);
    assert.equal((await agent.get(`/fhir/Patient/${one.body.id}`)).status, 410);
    assert.equal((await agent.delete(url)).status, 204);
    await make();
    await make();
    assert.equal((await agent.delete(url)).status, 412);
  });

  it('needs criteria', async () => {
    const res = await (await api()).delete('/fhir/Patient');
    assert.equal(res.status, 400);
  });
});
