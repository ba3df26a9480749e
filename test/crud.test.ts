/** The REST interactions: create, read, vread, update (and create-on-update), delete. */
import assert from 'node:assert/strict';
import { api, BASE_URL, FHIR_JSON, uniqueId, withoutServerMeta } from './helpers.js';

const patient = (extra: Record<string, unknown> = {}) => ({
  resourceType: 'Patient',
  name: [{ family: 'Okafor', given: ['Ada'] }],
  birthDate: '1956-03-14',
  ...extra,
});

describe('create', () => {
  it('assigns an id and version 1, and answers 201 with Location, ETag and Last-Modified', async () => {
    const res = await (await api()).post('/fhir/Patient').set('Content-Type', FHIR_JSON).send(patient({ id: 'ignored-by-create' }));
    assert.equal(res.status, 201);
    assert.match(res.body.id, /^[0-9a-f-]{36}$/);
    assert.notEqual(res.body.id, 'ignored-by-create');
    assert.equal(res.body.meta.versionId, '1');
    assert.ok(!Number.isNaN(Date.parse(res.body.meta.lastUpdated)));
    assert.equal(res.headers.location, `${BASE_URL}/fhir/Patient/${res.body.id}/_history/1`);
    assert.equal(res.headers.etag, 'W/"1"');
    assert.equal(res.headers['last-modified'], new Date(res.body.meta.lastUpdated).toUTCString());
    assert.match(String(res.headers['content-type']), /^application\/fhir\+json; charset=utf-8$/);
    assert.deepEqual(withoutServerMeta(res.body), { ...patient(), id: res.body.id });
  });

  it('keeps meta.profile, tag and source but replaces versionId and lastUpdated', async () => {
    const meta = { versionId: '77', lastUpdated: '2001-01-01T00:00:00Z', profile: ['http://example.org/p'], tag: [{ code: 'x' }], source: 'urn:met' };
    const res = await (await api()).post('/fhir/Patient').set('Content-Type', FHIR_JSON).send(patient({ meta }));
    assert.equal(res.status, 201);
    assert.deepEqual(res.body.meta.profile, meta.profile);
    assert.deepEqual(res.body.meta.tag, meta.tag);
    assert.equal(res.body.meta.source, 'urn:met');
    assert.equal(res.body.meta.versionId, '1');
    assert.notEqual(res.body.meta.lastUpdated, meta.lastUpdated);
  });

  it('accepts application/json as well as application/fhir+json', async () => {
    const res = await (await api()).post('/fhir/Patient').set('Content-Type', 'application/json; charset=utf-8').send(patient());
    assert.equal(res.status, 201);
  });
});

describe('read and vread', () => {
  it('reads the current version and each version by its id', async () => {
    const agent = await api();
    const created = await agent.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send(patient());
    const id = created.body.id as string;
    const updated = await agent.put(`/fhir/Patient/${id}`).set('Content-Type', FHIR_JSON).send({ ...created.body, gender: 'female' });
    assert.equal(updated.status, 200);
    assert.equal(updated.body.meta.versionId, '2');

    const read = await agent.get(`/fhir/Patient/${id}`);
    assert.equal(read.status, 200);
    assert.equal(read.headers.etag, 'W/"2"');
    assert.equal(read.body.gender, 'female');

    const v1 = await agent.get(`/fhir/Patient/${id}/_history/1`);
    assert.equal(v1.status, 200);
    assert.equal(v1.headers.etag, 'W/"1"');
    assert.equal(v1.body.gender, undefined);
    assert.deepEqual(v1.body, created.body);
  });
});

describe('update', () => {
  it('creates the resource with the client id when it does not exist (201)', async () => {
    const id = uniqueId('client');
    const res = await (await api()).put(`/fhir/Patient/${id}`).set('Content-Type', FHIR_JSON).send(patient({ id }));
    assert.equal(res.status, 201);
    assert.equal(res.body.id, id);
    assert.equal(res.body.meta.versionId, '1');
    assert.equal(res.headers.location, `${BASE_URL}/fhir/Patient/${id}/_history/1`);
  });

  it('with a current If-Match writes the next version', async () => {
    const agent = await api();
    const id = uniqueId();
    await agent.put(`/fhir/Patient/${id}`).set('Content-Type', FHIR_JSON).send(patient({ id }));
    const res = await agent.put(`/fhir/Patient/${id}`).set('Content-Type', FHIR_JSON).set('If-Match', 'W/"1"').send(patient({ id, gender: 'male' }));
    assert.equal(res.status, 200);
    assert.equal(res.headers.etag, 'W/"2"');
    assert.equal(res.headers.location, undefined);
  });
});

describe('delete', () => {
  it('writes a deletion version; read answers 410, vread of the old version still works', async () => {
    const agent = await api();
    const created = await agent.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send(patient());
    const id = created.body.id as string;
    const del = await agent.delete(`/fhir/Patient/${id}`);
    assert.equal(del.status, 204);
    assert.equal(del.headers.etag, 'W/"2"');
    assert.equal(del.text, '');
    const read = await agent.get(`/fhir/Patient/${id}`);
    assert.equal(read.status, 410);
    assert.equal((await agent.get(`/fhir/Patient/${id}/_history/1`)).status, 200);
    assert.equal((await agent.get(`/fhir/Patient/${id}/_history/2`)).status, 410);
  });

  it('deleting a deleted resource changes nothing (204, no new version)', async () => {
    const agent = await api();
    const created = await agent.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send(patient());
    const id = created.body.id as string;
    await agent.delete(`/fhir/Patient/${id}`);
    const again = await agent.delete(`/fhir/Patient/${id}`);
    assert.equal(again.status, 204);
    assert.equal(again.headers.etag, undefined);
    const history = await agent.get(`/fhir/Patient/${id}/_history`);
    assert.equal(history.body.entry.length, 2);
  });

  it('an update after delete brings the resource back as a new version (201)', async () => {
    const agent = await api();
    const id = uniqueId();
    await agent.put(`/fhir/Patient/${id}`).set('Content-Type', FHIR_JSON).send(patient({ id }));
    await agent.delete(`/fhir/Patient/${id}`);
    const back = await agent.put(`/fhir/Patient/${id}`).set('Content-Type', FHIR_JSON).send(patient({ id }));
    assert.equal(back.status, 201);
    assert.equal(back.body.meta.versionId, '3');
    assert.equal((await agent.get(`/fhir/Patient/${id}`)).status, 200);
  });
});

describe('Prefer: return', () => {
  it('return=minimal answers with headers and no body', async () => {
    const res = await (await api()).post('/fhir/Patient').set('Content-Type', FHIR_JSON).set('Prefer', 'return=minimal').send(patient());
    assert.equal(res.status, 201);
    assert.equal(res.text, '');
    assert.match(String(res.headers.location), /\/fhir\/Patient\/[0-9a-f-]{36}\/_history\/1$/);
    assert.equal(res.headers.etag, 'W/"1"');
  });

  it('return=representation answers with the stored resource', async () => {
    const res = await (await api()).post('/fhir/Patient').set('Content-Type', FHIR_JSON).set('Prefer', 'return=representation').send(patient());
    assert.equal(res.body.resourceType, 'Patient');
  });

  it('return=OperationOutcome answers with an informational outcome', async () => {
    const res = await (await api()).post('/fhir/Patient').set('Content-Type', FHIR_JSON).set('Prefer', 'return=OperationOutcome').send(patient());
    assert.equal(res.status, 201);
    const id = (res.headers.location as string).split('/')[5];
    assert.equal(res.body.resourceType, 'OperationOutcome');
    assert.equal(res.body.issue[0].severity, 'information');
    assert.equal(res.body.issue[0].diagnostics, `Patient/${id}/_history/1 created`);
  });
});

describe('formats', () => {
  it('answers application/json when Accept or _format asks for it', async () => {
    const agent = await api();
    const created = await agent.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send(patient());
    const byAccept = await agent.get(`/fhir/Patient/${created.body.id}`).set('Accept', 'application/json');
    assert.match(String(byAccept.headers['content-type']), /^application\/json/);
    const byFormat = await agent.get(`/fhir/Patient/${created.body.id}?_format=application/json`);
    assert.match(String(byFormat.headers['content-type']), /^application\/json/);
    const fhir = await agent.get(`/fhir/Patient/${created.body.id}?_format=json`).set('Accept', 'text/html,*/*;q=0.8');
    assert.match(String(fhir.headers['content-type']), /^application\/fhir\+json/);
  });
});

describe('health', () => {
  it('/healthz is alive and /readyz reports the database reachable', async () => {
    const agent = await api();
    assert.deepEqual((await agent.get('/healthz')).body, { status: 'ok' });
    const ready = await agent.get('/readyz');
    assert.equal(ready.status, 200);
    assert.deepEqual(ready.body, { status: 'ready', database: 'reachable' });
  });

  it('every response carries a request id, and a valid X-Request-Id is echoed', async () => {
    const res = await (await api()).get('/fhir/Patient/nope-404').set('X-Request-Id', 'abc-123');
    assert.equal(res.headers['x-request-id'], 'abc-123');
    assert.equal(res.body.id, 'abc-123');
  });
});
