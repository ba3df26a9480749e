/**
 * Tenant isolation over HTTP, against the real app and database: two practices, each with a token
 * of scope system/*.*, and every way one could reach the other's data (read, vread, history at
 * every level, search by id, identifier, chain, _has, _include and _revinclude, conditional create,
 * conditional references and updates in transactions, update, patch, delete, the MET API). A
 * resource of another tenant is answered exactly as one that does not exist (404, an empty
 * search), and each attempt is checked to have changed nothing in the tenant attacked.
 * Below that, the schema pools themselves: one connection switching tenants many times, with
 * prepared statements, never answers from the wrong schema.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import supertest from 'supertest';
import { openDatabase } from '../src/store/database.js';
import { migrate } from '../src/store/migrations.js';
import { Repository } from '../src/store/repository.js';
import { createTenant } from '../src/store/tenants.js';
import { ClientStore } from '../src/store/clients.js';
import { FHIR_JSON, TEST_TENANT, testContext, tokenFor } from './helpers.js';

const RUN = randomUUID().slice(0, 8);
const SYSTEM = `urn:test:tenants:${RUN}`;

type Agent = ReturnType<typeof supertest.agent>;

interface Practice {
  name: string;
  http: Agent;
}

async function practice(name: string): Promise<Practice> {
  const { db, app } = await testContext();
  if (!(await new ClientStore(db.pool).tenantExists(name))) await createTenant(db, name);
  return { name, http: supertest.agent(app).auth(await tokenFor('system/*.*', { tenant: name }), { type: 'bearer' }) };
}

function patient(value: string): object {
  return { resourceType: 'Patient', identifier: [{ system: SYSTEM, value }], name: [{ family: `Family-${value}` }], gender: 'female' };
}

async function create(p: Practice, resource: object): Promise<{ id: string; body: Record<string, unknown> }> {
  const res = await p.http.post(`/fhir/${(resource as { resourceType: string }).resourceType}`).set('Content-Type', FHIR_JSON).send(resource);
  assert.equal(res.status, 201, res.text);
  const body = res.body as Record<string, unknown>;
  return { id: body.id as string, body };
}

function ids(bundle: unknown): string[] {
  const entries = ((bundle as { entry?: { resource: { resourceType: string; id: string } }[] }).entry ?? []).map((e) => `${e.resource.resourceType}/${e.resource.id}`);
  return entries.sort();
}

describe('tenant isolation', function () {
  this.timeout(60_000);
  let a: Practice;
  let b: Practice;
  let first: Practice;
  let aPatient: { id: string; body: Record<string, unknown> };
  let aObservation: { id: string; body: Record<string, unknown> };

  before(async () => {
    a = await practice(`practice-a-${RUN}`);
    b = await practice(`practice-b-${RUN}`);
    // The first tenant (the tests' own), whose data is in the public schema.
    first = { name: TEST_TENANT, http: supertest.agent((await testContext()).app).auth(await tokenFor('system/*.*'), { type: 'bearer' }) };
    aPatient = await create(a, patient(`a-${RUN}`));
    aObservation = await create(a, {
      resourceType: 'Observation',
      status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
      subject: { reference: `Patient/${aPatient.id}` },
      valueQuantity: { value: 72, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    });
  });

  /** A's resources exactly as written: nothing an attack did changed them. */
  async function assertAUnchanged(): Promise<void> {
    const p = await a.http.get(`/fhir/Patient/${aPatient.id}`);
    assert.equal(p.status, 200);
    assert.deepEqual(p.body, aPatient.body);
    const o = await a.http.get(`/fhir/Observation/${aObservation.id}`);
    assert.equal(o.status, 200);
    assert.deepEqual(o.body, aObservation.body);
    const history = await a.http.get(`/fhir/Patient/${aPatient.id}/_history`);
    assert.equal((history.body as { entry: unknown[] }).entry.length, 1);
  }

  it('answers another tenant\'s ids 404 on read, vread and instance history, as if they did not exist', async () => {
    for (const other of [b, first]) {
      for (const path of [`Patient/${aPatient.id}`, `Patient/${aPatient.id}/_history/1`, `Patient/${aPatient.id}/_history`, `Observation/${aObservation.id}`]) {
        const res = await other.http.get(`/fhir/${path}`);
        assert.equal(res.status, 404, `${other.name} GET ${path}: ${res.text}`);
        const never = await other.http.get(`/fhir/Patient/${randomUUID()}`);
        // Exactly the answer for an id that exists nowhere, so that nothing tells them apart.
        assert.deepEqual(
          (res.body as { issue: { code: string }[] }).issue.map((i) => i.code),
          (never.body as { issue: { code: string }[] }).issue.map((i) => i.code),
        );
      }
    }
    await assertAUnchanged();
  });

  it('finds nothing of another tenant by search: _id, identifier, chain, _has, _include, _revinclude', async () => {
    const searches = [
      `Patient?_id=${aPatient.id}`,
      `Patient?identifier=${encodeURIComponent(`${SYSTEM}|a-${RUN}`)}`,
      `Patient?family=Family-a-${RUN}`,
      `Observation?subject=Patient/${aPatient.id}`,
      `Observation?subject:Patient.identifier=${encodeURIComponent(`${SYSTEM}|a-${RUN}`)}`,
      `Patient?_has:Observation:subject:code=8867-4&identifier=${encodeURIComponent(`${SYSTEM}|a-${RUN}`)}`,
      `Observation?_id=${aObservation.id}&_include=Observation:subject`,
      `Patient?_id=${aPatient.id}&_revinclude=Observation:subject`,
    ];
    for (const search of searches) {
      const own = await a.http.get(`/fhir/${search}`);
      assert.equal(own.status, 200, own.text);
      assert.ok(ids(own.body).length > 0, `the owner finds ${search}`);
      for (const other of [b, first]) {
        const res = await other.http.get(`/fhir/${search}`);
        assert.equal(res.status, 200, `${other.name} ${search}: ${res.text}`);
        assert.deepEqual(ids(res.body), [], `${other.name} ${search}`);
        assert.equal((res.body as { total?: number }).total ?? 0, 0);
      }
    }
    // B's own Observation pointing at A's patient id includes nothing of A's.
    const bObservation = await create(b, {
      resourceType: 'Observation',
      status: 'final',
      code: { text: 'probe' },
      subject: { reference: `Patient/${aPatient.id}` },
    });
    const included = await b.http.get(`/fhir/Observation?_id=${bObservation.id}&_include=Observation:subject`);
    assert.deepEqual(ids(included.body), [`Observation/${bObservation.id}`]);
    const revincluded = await a.http.get(`/fhir/Patient?_id=${aPatient.id}&_revinclude=Observation:subject`);
    assert.deepEqual(ids(revincluded.body), [`Observation/${aObservation.id}`, `Patient/${aPatient.id}`]);
  });

  it('keeps type and system history to the tenant', async () => {
    for (const path of ['Patient/_history?_count=1000', '_history?_count=1000', 'Observation/_history?_count=1000']) {
      const res = await b.http.get(`/fhir/${path}`);
      assert.equal(res.status, 200, res.text);
      const found = ids(res.body);
      assert.ok(!found.includes(`Patient/${aPatient.id}`) && !found.includes(`Observation/${aObservation.id}`), path);
    }
    const own = await a.http.get('/fhir/_history?_count=1000');
    assert.ok(ids(own.body).includes(`Patient/${aPatient.id}`));
  });

  it('does not let another tenant update, patch or delete by id; a PUT with the id creates the other tenant\'s own resource', async () => {
    const patched = await b.http
      .patch(`/fhir/Patient/${aPatient.id}`)
      .set('Content-Type', 'application/json-patch+json')
      .send([{ op: 'replace', path: '/gender', value: 'male' }]);
    assert.equal(patched.status, 404, patched.text);
    const deleted = await b.http.delete(`/fhir/Patient/${aPatient.id}`);
    assert.equal(deleted.status, 404, deleted.text);
    // If-Match on an id B does not have: the answer for an id that exists nowhere.
    const stale = await b.http.put(`/fhir/Patient/${aPatient.id}`).set('Content-Type', FHIR_JSON).set('If-Match', 'W/"1"').send({ ...patient('b-put'), id: aPatient.id });
    const nowhere = randomUUID();
    const staleNowhere = await b.http.put(`/fhir/Patient/${nowhere}`).set('Content-Type', FHIR_JSON).set('If-Match', 'W/"1"').send({ ...patient('b-put'), id: nowhere });
    assert.equal(stale.status, 412, stale.text);
    assert.equal(staleNowhere.status, 412, staleNowhere.text);
    const put = await b.http.put(`/fhir/Patient/${aPatient.id}`).set('Content-Type', FHIR_JSON).send({ ...patient(`b-put-${RUN}`), id: aPatient.id });
    assert.equal(put.status, 201, `create-on-update in B's own space: ${put.text}`);
    assert.equal((put.body as { meta: { versionId: string } }).meta.versionId, '1');
    await assertAUnchanged();
    const bRead = await b.http.get(`/fhir/Patient/${aPatient.id}`);
    assert.equal((bRead.body as { identifier: { value: string }[] }).identifier[0]?.value, `b-put-${RUN}`);
    const removed = await b.http.delete(`/fhir/Patient/${aPatient.id}`);
    assert.ok(removed.status === 200 || removed.status === 204, removed.text);
    await assertAUnchanged();
  });

  it('resolves conditional creates and conditional references only among the tenant\'s own resources', async () => {
    const criteria = `identifier=${encodeURIComponent(`${SYSTEM}|a-${RUN}`)}`;
    // Conditional create: A's match does not count in B: B gets a new resource of its own.
    const conditional = await b.http.post('/fhir/Patient').set('Content-Type', FHIR_JSON).set('If-None-Exist', criteria).send(patient(`a-${RUN}`));
    assert.equal(conditional.status, 201, conditional.text);
    assert.notEqual((conditional.body as { id: string }).id, aPatient.id);
    await b.http.delete(`/fhir/Patient/${(conditional.body as { id: string }).id}`);

    // A conditional reference to A's patient does not resolve in B's transaction: nothing written.
    const marker = `cond-ref-${RUN}`;
    const transaction = await b.http
      .post('/fhir')
      .set('Content-Type', FHIR_JSON)
      .send({
        resourceType: 'Bundle',
        type: 'transaction',
        entry: [
          {
            request: { method: 'POST', url: 'Observation' },
            resource: { resourceType: 'Observation', status: 'final', code: { text: marker }, subject: { reference: `Patient?${criteria}` } },
          },
        ],
      });
    assert.ok(transaction.status >= 400 && transaction.status < 500, `${transaction.status} ${transaction.text}`);
    for (const p of [a, b]) {
      const written = await p.http.get(`/fhir/Observation?code:text=${marker}`);
      assert.deepEqual(ids(written.body), []);
    }

    // Conditional update and delete by A's identifier act in B's space only.
    const update = await b.http.put(`/fhir/Patient?${criteria}`).set('Content-Type', FHIR_JSON).send({ ...patient(`a-${RUN}`), gender: 'male' });
    assert.equal(update.status, 201, `no match in B, so a new resource in B: ${update.text}`);
    const del = await b.http.delete(`/fhir/Patient?${criteria}`);
    assert.ok(del.status === 200 || del.status === 204, del.text);
    const stillThere = await a.http.get(`/fhir/Patient?${criteria}`);
    assert.deepEqual(ids(stillThere.body), [`Patient/${aPatient.id}`]);
    await assertAUnchanged();
  });

  it('keeps transaction entries that name another tenant\'s ids out of it: all or nothing', async () => {
    const marker = `tx-${RUN}`;
    const transaction = await b.http
      .post('/fhir')
      .set('Content-Type', FHIR_JSON)
      .send({
        resourceType: 'Bundle',
        type: 'transaction',
        entry: [
          { request: { method: 'POST', url: 'Basic' }, resource: { resourceType: 'Basic', code: { text: marker } } },
          { request: { method: 'DELETE', url: `Observation/${aObservation.id}` } },
          {
            request: { method: 'PATCH', url: `Patient/${aPatient.id}` },
            resource: {
              resourceType: 'Parameters',
              parameter: [{ name: 'operation', part: [{ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.gender' }, { name: 'value', valueCode: 'male' }] }],
            },
          },
        ],
      });
    assert.equal(transaction.status, 404, transaction.text);
    const written = await b.http.get(`/fhir/Basic?code:text=${marker}`);
    assert.deepEqual(ids(written.body), [], 'the transaction wrote nothing');
    await assertAUnchanged();
  });

  it('keeps MET documents per tenant: the same client id pushed by two practices makes a Patient in each', async () => {
    const doc = (family: string) => ({ id: `met-${RUN}`, name: { given: ['Ana'], family }, birthDate: '1960-04-02', sex: 'female' });
    const pushA = await a.http.post('/met/v1/clients').send(doc(`MetA-${RUN}`));
    assert.equal(pushA.status, 201, pushA.text);
    const pushB = await b.http.post('/met/v1/clients').send(doc(`MetB-${RUN}`));
    assert.equal(pushB.status, 201, `B's first push creates, it does not update A's: ${pushB.text}`);
    const patientOf = (body: unknown): { id: string; version: string } =>
      (body as { resources: { type: string; id: string; version: string }[] }).resources.find((r) => r.type === 'Patient') as { id: string; version: string };
    assert.equal(patientOf(pushB.body).version, '1');
    const inA = await a.http.get(`/fhir/Patient?family=MetA-${RUN}`);
    assert.deepEqual(ids(inA.body), [`Patient/${patientOf(pushA.body).id}`]);
    assert.deepEqual(ids((await a.http.get(`/fhir/Patient?family=MetB-${RUN}`)).body), []);
    const inB = await b.http.get(`/fhir/Patient?family=MetB-${RUN}`);
    assert.deepEqual(ids(inB.body), [`Patient/${patientOf(pushB.body).id}`]);
    assert.deepEqual(ids((await b.http.get(`/fhir/Patient?family=MetA-${RUN}`)).body), []);
  });

  it('refuses a token for a tenant that is not registered (401), writing nothing', async () => {
    const { app } = await testContext();
    const ghost = `ghost-${RUN}`;
    const res = await supertest(app)
      .post('/fhir/Basic')
      .auth(await tokenFor('system/*.*', { tenant: ghost }), { type: 'bearer' })
      .set('Content-Type', FHIR_JSON)
      .send({ resourceType: 'Basic', code: { text: ghost } });
    assert.equal(res.status, 401, res.text);
    for (const p of [a, b, first]) {
      const found = await p.http.get(`/fhir/Basic?code:text=${ghost}`);
      assert.deepEqual(ids(found.body), []);
    }
  });
});

describe('tenant schemas on shared connections', function () {
  this.timeout(60_000);

  it('switch one connection between tenants, prepared statements included, without answering from the wrong schema', async () => {
    // One connection for everything, so that every statement reuses what the last tenant left.
    const url = process.env.DATABASE_URL;
    const db = await openDatabase(url ? { databaseUrl: url, dataDir: 'unused', poolSize: 1 } : { dataDir: 'memory://' });
    try {
      await migrate(db.pool);
      const clients = new ClientStore(db.pool);
      const names = [`one-${RUN}`, `two-${RUN}`, `three-${RUN}`];
      const repos: Repository[] = [];
      for (const name of names) {
        const schema = (await clients.tenantSchema(name)) ?? (await createTenant(db, name));
        repos.push(new Repository(db.inSchema(schema), 'http://fhir.test/fhir'));
      }
      for (let round = 0; round < 20; round++) {
        for (const [i, repo] of repos.entries()) {
          // The same client-assigned id in every tenant, each with its own content.
          await repo.update({ resourceType: 'Basic', id: `shared-${RUN}`, code: { text: `${names[i]}-${round}` } }, `shared-${RUN}`);
        }
        for (const [i, repo] of repos.entries()) {
          const read = await repo.read('Basic', `shared-${RUN}`);
          const json = JSON.parse(read.json ?? '{}') as { code: { text: string } };
          assert.equal(json.code.text, `${names[i]}-${round}`, `round ${round}, tenant ${names[i]}`);
          assert.equal(read.versionId, String(round + 1));
        }
      }
      // The global tables stay reachable through the public pool after any tenant's statements.
      assert.deepEqual((await clients.tenantNames()).filter((n) => names.includes(n)), [...names].sort());
    } finally {
      await db.close();
    }
  });
});
