/**
 * The audit log over HTTP, against the real app and database: every read, search, write, token
 * request and refused request leaves an AuditEvent (IHE BALP shapes, test/audit-events.test.ts),
 * in the caller's tenant, readable only with a scope naming AuditEvent, never writable through the
 * API; events of callers with no tenant go to the unattributed table. And the log itself: a batch
 * the database refuses is kept and written later; close() writes what is queued.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { AuditEvent, Bundle } from 'fhir/r4.js';
import supertest from 'supertest';
import { hashSecret, newClientId, newClientSecret } from '../src/auth/index.js';
import type { AuditInput } from '../src/audit/events.js';
import { AuditLog, type AuditSink } from '../src/audit/log.js';
import { AuditStore } from '../src/store/audit-store.js';
import { ClientStore } from '../src/store/clients.js';
import { createTenant } from '../src/store/tenants.js';
import { FHIR_JSON, silentLogger, testContext, tokenFor, TEST_TENANT } from './helpers.js';

const RUN = randomUUID().slice(0, 8);

async function auditor(tenant = TEST_TENANT): Promise<supertest.Agent> {
  const { app } = await testContext();
  return supertest.agent(app).auth(await tokenFor('system/AuditEvent.rs', { tenant, clientId: `auditor-${RUN}` }), { type: 'bearer' });
}

/** The tenant's AuditEvents about one request (by its X-Request-Id), after the log is flushed. */
async function eventsOf(requestId: string, tenant = TEST_TENANT): Promise<AuditEvent[]> {
  await (await testContext()).audit.flush();
  // The request id is an entity of the event (BALP: transport-specific unique identifier).
  const res = await (await auditor(tenant)).get(`/fhir/AuditEvent?entity:identifier=${encodeURIComponent(requestId)}&_count=1000&_sort=-_lastUpdated`);
  assert.equal(res.status, 200, res.text);
  const events = ((res.body as Bundle).entry ?? []).map((e) => e.resource as AuditEvent);
  assert.ok(events.every((e) => e.entity?.some((x) => x.what?.identifier?.value === requestId)), 'only the request\'s events');
  return events;
}

const subtypeOf = (e: AuditEvent): string | undefined => e.subtype?.[0]?.code;
const clientOf = (e: AuditEvent): string | undefined => e.agent.find((a) => a.requestor)?.who?.identifier?.value;

describe('audit log over HTTP', function () {
  this.timeout(60_000);

  it('records a read, a search and a create with who, what, when, outcome and address', async () => {
    const { app } = await testContext();
    const clientId = `reader-${RUN}`;
    const http = supertest.agent(app).auth(await tokenFor('system/*.*', { clientId }), { type: 'bearer' });
    const created = await http.post('/fhir/Patient').set('Content-Type', FHIR_JSON).set('X-Request-Id', `create-${RUN}`).send({ resourceType: 'Patient', name: [{ family: `Audit-${RUN}` }] });
    assert.equal(created.status, 201);
    const id = (created.body as { id: string }).id;
    await http.get(`/fhir/Patient/${id}`).set('X-Request-Id', `read-${RUN}`).expect(200);
    await http.get(`/fhir/Patient?family=Audit-${RUN}`).set('X-Request-Id', `search-${RUN}`).expect(200);

    const [create] = await eventsOf(`create-${RUN}`);
    assert.ok(create, 'the create is recorded');
    assert.equal(subtypeOf(create), 'create');
    assert.equal(create.action, 'C');
    assert.equal(create.outcome, '0');
    assert.equal(clientOf(create), clientId);
    assert.ok(create.entity?.some((e) => e.what?.reference === `Patient/${id}/_history/1`), JSON.stringify(create.entity));
    assert.ok(create.meta?.profile?.[0]?.includes('BALP'));
    assert.match(create.agent.find((a) => a.requestor)?.network?.address ?? '', /127\.0\.0\.1|::1|::ffff:127\.0\.0\.1/);

    const [read] = await eventsOf(`read-${RUN}`);
    assert.ok(read);
    assert.equal(subtypeOf(read), 'read');
    assert.equal(read.action, 'R');
    assert.ok(read.entity?.some((e) => e.what?.reference?.startsWith(`Patient/${id}`)));

    const [search] = await eventsOf(`search-${RUN}`);
    assert.ok(search);
    assert.equal(subtypeOf(search), 'search-type');
    const query = search.entity?.find((e) => e.query)?.query;
    assert.equal(Buffer.from(query ?? '', 'base64').toString('utf8'), `Patient?family=Audit-${RUN}`);
    assert.ok(Date.now() - Date.parse(search.recorded) < 60_000);
  });

  it('finds events by every AuditEvent search parameter', async () => {
    const { app } = await testContext();
    const clientId = `finder-${RUN}`;
    const http = supertest.agent(app).auth(await tokenFor('system/*.*', { clientId }), { type: 'bearer' });
    const started = new Date(Date.now() - 1000).toISOString();
    const created = await http.post('/fhir/Patient').set('Content-Type', FHIR_JSON).set('X-Request-Id', `find-${RUN}`).send({ resourceType: 'Patient', name: [{ family: `Find-${RUN}` }] });
    const id = (created.body as { id: string }).id;
    await (await testContext()).audit.flush();
    const search = async (query: string): Promise<AuditEvent[]> => {
      const res = await (await auditor()).get(`/fhir/AuditEvent?${query}&_count=1000`);
      assert.equal(res.status, 200, `${query}: ${res.text}`);
      return ((res.body as Bundle).entry ?? []).map((e) => e.resource as AuditEvent);
    };
    const mine = (events: AuditEvent[]): AuditEvent[] => events.filter((e) => e.entity?.some((x) => x.what?.identifier?.value === `find-${RUN}`));
    const queries = [
      `patient=Patient/${id}`,
      `entity=Patient/${id}/_history/1`,
      `entity:identifier=find-${RUN}`,
      `agent:identifier=${clientId}`,
      `patient=Patient/${id}&subtype=http://hl7.org/fhir/restful-interaction|create&action=C&outcome=0&type=rest&date=ge${started}`,
      `patient=Patient/${id}&address=127.0.0.1`,
    ];
    for (const query of queries) assert.equal(mine(await search(query)).length, 1, query);
    assert.equal(mine(await search(`patient=Patient/${id}&subtype=read`)).length, 0);
    // The parameters auditors search by less often are searchable too, each by a value of this event.
    const [event] = mine(await search(`patient=Patient/${id}`));
    assert.ok(event);
    const profile = event.meta?.profile?.[0] as string;
    const tag = event.meta?.tag?.[0];
    const more = [
      `site=${encodeURIComponent(event.source.site as string)}`,
      `source:identifier=${encodeURIComponent(`${event.source.observer.identifier?.system}|${event.source.observer.identifier?.value}`)}`,
      `entity-type=${event.entity?.[0]?.type?.code}`,
      `entity-role=${event.entity?.[0]?.role?.code}`,
      `_tag=${encodeURIComponent(`${tag?.system}|${tag?.code}`)}`,
      `_profile=${encodeURIComponent(profile)}`,
      `_profile:below=${encodeURIComponent(profile.slice(0, 30))}`,
      `_profile:above=${encodeURIComponent(`${profile}/more`)}`,
      `agent-role:missing=true`,
    ];
    for (const query of more) assert.equal(mine(await search(`${query}&patient=Patient/${id}`)).length, 1, query);
    assert.equal(mine(await search(`_profile=${encodeURIComponent(`${profile}x`)}&patient=Patient/${id}`)).length, 0);
    assert.equal(mine(await search(`_profile:below=${encodeURIComponent(`${profile}x`)}&patient=Patient/${id}`)).length, 0);
    const unknown = await (await auditor()).get('/fhir/AuditEvent?colour=red');
    assert.equal(unknown.status, 400);
    assert.match(unknown.text, /'colour' is not a search parameter of AuditEvent/);
    const metadata = await supertest(app).get('/fhir/metadata').expect(200);
    const auditResource = (metadata.body as { rest: { resource: { type: string; searchParam?: { name: string }[] }[] }[] }).rest[0]?.resource.find((r) => r.type === 'AuditEvent');
    assert.deepEqual(
      auditResource?.searchParam?.map((p) => p.name).sort(),
      ['_id', '_lastUpdated', '_profile', '_security', '_source', '_tag', 'action', 'address', 'agent', 'agent-name', 'agent-role', 'altid', 'date', 'entity', 'entity-name', 'entity-role', 'entity-type', 'outcome', 'patient', 'policy', 'site', 'source', 'subtype', 'type'],
    );
  });

  it('records refused requests: 403 in the caller\'s tenant, 401 without a token unattributed', async () => {
    const { app, db } = await testContext();
    const readOnly = supertest.agent(app).auth(await tokenFor('system/Patient.rs', { clientId: `ro-${RUN}` }), { type: 'bearer' });
    await readOnly.post('/fhir/Patient').set('Content-Type', FHIR_JSON).set('X-Request-Id', `denied-${RUN}`).send({ resourceType: 'Patient' }).expect(403);
    const [denied] = await eventsOf(`denied-${RUN}`);
    assert.ok(denied, 'the refused create is recorded');
    assert.equal(denied.outcome, '4');
    assert.equal(subtypeOf(denied), 'create');
    assert.equal(clientOf(denied), `ro-${RUN}`);
    assert.equal(denied.meta?.profile, undefined, 'a failure claims no BALP profile');

    await supertest(app).get('/fhir/Patient').set('X-Request-Id', `anonymous-${RUN}`).expect(401);
    await (await testContext()).audit.flush();
    const unattributed = (await new AuditStore(() => Promise.resolve(undefined), db.pool).listUnattributed(undefined, 100_000)) as AuditEvent[];
    const anonymous = unattributed.find((e) => e.entity?.some((x) => x.what?.identifier?.value === `anonymous-${RUN}`));
    assert.ok(anonymous, 'the request without a token is recorded, unattributed');
    assert.equal(anonymous.outcome, '4');
    assert.equal(anonymous.agent.find((a) => a.requestor)?.who?.identifier, undefined, 'no client named');
    assert.equal((await eventsOf(`anonymous-${RUN}`)).length, 0, 'and not in any tenant');
  });

  it('records token requests: an issued token in the client\'s tenant, a wrong secret unattributed', async () => {
    const { app, db } = await testContext();
    const tenant = `audit-${RUN}`;
    await createTenant(db, tenant);
    const clients = new ClientStore(db.pool);
    const clientId = newClientId();
    const secret = newClientSecret();
    await clients.createClient({ clientId, tenant, name: 'audited', secretHash: await hashSecret(secret), scopes: 'system/*.rs' });
    await supertest(app).post('/auth/token').set('X-Request-Id', `login-${RUN}`).auth(clientId, secret).type('form').send({ grant_type: 'client_credentials', scope: 'system/*.rs' }).expect(200);
    await supertest(app).post('/auth/token').set('X-Request-Id', `badlogin-${RUN}`).auth(clientId, `tried-${RUN}-secret`).type('form').send({ grant_type: 'client_credentials', scope: 'system/*.rs' }).expect(401);
    await (await testContext()).audit.flush();

    const res = await (await auditor(tenant)).get('/fhir/AuditEvent?_count=1000');
    const events = ((res.body as Bundle).entry ?? []).map((e) => e.resource as AuditEvent);
    const login = events.find((e) => e.type.code === '110114' && e.outcome === '0');
    assert.ok(login, `an issued token is recorded in the tenant: ${JSON.stringify(events.map((e) => e.type))}`);
    assert.equal(clientOf(login), clientId);
    assert.ok(!JSON.stringify(login).includes(secret), 'never the secret');
    const unattributed = (await new AuditStore(() => Promise.resolve(undefined), db.pool).listUnattributed(undefined, 100_000)) as AuditEvent[];
    const bad = unattributed.find((e) => JSON.stringify(e).includes(`badlogin-${RUN}`));
    assert.ok(bad, 'a refused token request is recorded, unattributed');
    assert.equal(bad.outcome, '4');
    assert.ok(!JSON.stringify(bad).includes(`tried-${RUN}`), 'never the secret tried');
  });

  it('keeps AuditEvents read-only and visible only to a scope naming them, in the tenant only', async () => {
    const { app, db } = await testContext();
    const everything = supertest.agent(app).auth(await tokenFor('system/*.*'), { type: 'bearer' });
    // A wildcard does not cover AuditEvent: neither search nor system history shows them.
    await everything.get('/fhir/AuditEvent').expect(403);
    const history = await everything.get('/fhir/_history?_count=1000').expect(200);
    assert.ok(!((history.body as Bundle).entry ?? []).some((e) => e.resource?.resourceType === 'AuditEvent'));

    // Even a client registered for every AuditEvent interaction cannot write one.
    const full = supertest.agent(app).auth(await tokenFor('system/AuditEvent.cruds system/*.*'), { type: 'bearer' });
    const some = await full.get('/fhir/AuditEvent?_count=1').expect(200);
    const existing = (some.body as Bundle).entry?.[0]?.resource as AuditEvent;
    assert.ok(existing);
    const before = JSON.stringify((await full.get(`/fhir/AuditEvent/${existing.id}`)).body);
    const attempts = [
      full.post('/fhir/AuditEvent').set('Content-Type', FHIR_JSON).send({ ...existing, id: undefined, meta: undefined }),
      full.put(`/fhir/AuditEvent/${existing.id}`).set('Content-Type', FHIR_JSON).send({ ...existing, outcome: '0', outcomeDesc: 'forged' }),
      full.patch(`/fhir/AuditEvent/${existing.id}`).set('Content-Type', 'application/json-patch+json').send([{ op: 'replace', path: '/outcome', value: '12' }]),
      full.delete(`/fhir/AuditEvent/${existing.id}`),
      full.delete(`/fhir/AuditEvent?_id=${existing.id}`),
    ];
    for (const attempt of attempts) {
      const res = await attempt;
      assert.equal(res.status, 405, res.text);
      assert.equal((res.body as { issue: { details: { coding: { code: string }[] } }[] }).issue[0]?.details.coding[0]?.code, 'audit-read-only');
    }
    const tx = await full
      .post('/fhir')
      .set('Content-Type', FHIR_JSON)
      .send({ resourceType: 'Bundle', type: 'transaction', entry: [{ request: { method: 'DELETE', url: `AuditEvent/${existing.id}` } }] });
    assert.equal(tx.status, 405, tx.text);
    assert.equal(JSON.stringify((await full.get(`/fhir/AuditEvent/${existing.id}`)).body), before, 'unchanged');

    // Another tenant's auditor sees none of this tenant's events.
    const other = `audit-other-${RUN}`;
    await createTenant(db, other);
    const theirs = await (await auditor(other)).get(`/fhir/AuditEvent/${existing.id}`);
    assert.equal(theirs.status, 404);
  });
});

/** A numbered event (its request id), for the batching tests. */
const event = (n: number): AuditInput => ({ kind: 'read', recorded: new Date(), outcome: 'success', requestId: String(n), server: { name: 'test', version: '0', baseUrl: 'http://localhost/fhir' } });

/** A sink that records each batch's events and holds the first write until release(): events keep arriving meanwhile. */
/** A sink that holds the first write (and the next after hold()) until release(). */
function heldSink(): { sink: AuditSink; batches: string[][]; release: () => void; hold: () => void } {
  const batches: string[][] = [];
  let release: (() => void) | undefined;
  let holdNext = true;
  const sink: AuditSink = {
    writeTenant: async (_tenant, events) => {
      batches.push(events.map((e) => e.requestId ?? ''));
      if (holdNext) {
        holdNext = false;
        await new Promise<void>((resolve) => (release = resolve));
      }
      return true;
    },
    writeUnattributed: () => Promise.resolve(),
  };
  return { sink, batches, release: () => release?.(), hold: () => (holdNext = true) };
}

describe('audit log', () => {
  it('starts a write at flushAt events without waiting for the timer, and puts what arrives meanwhile in the next, up to maxBatch', async () => {
    const held = heldSink();
    const { batches } = held;
    const log = new AuditLog(held.sink, silentLogger, { flushAt: 3, flushMs: 60_000, maxBatch: 4 });
    for (let n = 0; n < 2; n++) log.record('t', event(n));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(batches.length, 0, 'below flushAt, and the timer is a minute away');
    log.record('t', event(2));
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(batches, [['0', '1', '2']], 'the third event starts a write at once');
    for (let n = 3; n < 9; n++) log.record('t', event(n));
    assert.equal(batches.length, 1, 'one write at a time');
    held.release();
    await log.flush();
    assert.deepEqual(batches, [['0', '1', '2'], ['3', '4', '5', '6'], ['7', '8']], 'what arrived meanwhile, maxBatch at a time');
    await log.close();
  });

  it('after a write, fewer than flushAt events that arrived meanwhile wait for the timer; flushAt or more follow at once', async () => {
    const held = heldSink();
    const { batches } = held;
    const log = new AuditLog(held.sink, silentLogger, { flushAt: 3, flushMs: 80, maxBatch: 100 });
    for (let n = 0; n < 3; n++) log.record('t', event(n));
    log.record('t', event(3)); // arrives while 0-2 are written
    held.release();
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(batches, [['0', '1', '2']], 'one event after the write: it waits');
    await new Promise((resolve) => setTimeout(resolve, 120));
    assert.deepEqual(batches, [['0', '1', '2'], ['3']], 'the timer writes it');
    held.hold();
    for (let n = 4; n < 7; n++) log.record('t', event(n)); // a write of 4-6 starts, held
    for (let n = 7; n < 10; n++) log.record('t', event(n)); // three more meanwhile: a whole batch
    held.release();
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(batches.slice(2), [['4', '5', '6'], ['7', '8', '9']], 'a whole batch follows at once');
    await log.close();
  });

  it('never takes an event that was not written for one that was, when a full queue drops its oldest during a write', async () => {
    const held = heldSink();
    const { batches } = held;
    const log = new AuditLog(held.sink, silentLogger, { flushAt: 2, flushMs: 60_000, maxBatch: 2, maxQueued: 3 });
    log.record('t', event(0));
    log.record('t', event(1)); // a write of 0 and 1 starts, and is held
    await new Promise((resolve) => setImmediate(resolve));
    // Over maxQueued at 3 and 4: the oldest two go, which are the ones being written (so they
    // would not be tried again should the write fail; here it succeeds).
    for (let n = 2; n < 5; n++) log.record('t', event(n));
    held.release();
    await log.close();
    assert.deepEqual(batches, [['0', '1'], ['2', '3'], ['4']], 'each event still queued is written, once');
    assert.equal(log.counts.dropped, 2);
  });

  it('keeps a batch the database refused and writes it later; close() writes what is queued', async () => {
    const written: AuditInput[] = [];
    let failures = 2;
    const sink: AuditSink = {
      writeTenant: (_tenant, events) => {
        if (failures > 0) {
          failures--;
          return Promise.reject(new Error('database down'));
        }
        written.push(...events);
        return Promise.resolve(true);
      },
      writeUnattributed: () => Promise.resolve(),
    };
    const log = new AuditLog(sink, silentLogger, { flushMs: 5 });
    for (let n = 0; n < 3; n++) log.record('t', event(n));
    await log.flush();
    assert.equal(written.length, 0, 'the first attempt failed');
    await log.flush();
    assert.equal(written.length, 0, 'the second too');
    log.record('t', event(3));
    await log.close();
    assert.deepEqual(written.map((e) => e.requestId), ['0', '1', '2', '3'], 'all kept, in order');
    assert.equal(log.counts.dropped, 0);
  });
});
