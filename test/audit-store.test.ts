/**
 * The audit store (src/store/audit-events.ts): AuditEvents in a table of their own, read,
 * searched (every parameter type, prefix and modifier the audit parameters take), paged, counted,
 * included, reverse-included, `_has`, history at every level, and the move of AuditEvents stored
 * as ordinary resources before it. Events are written as the audit log writes them
 * (Repository.appendAuditEvents), with values chosen so that every search has a known answer.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { AuditEvent, Bundle } from 'fhir/r4.js';
import supertest from 'supertest';
import type { JsonResource } from '../src/fhir/resource.js';
import type { Repository } from '../src/store/repository.js';
import { parseSearch } from '../src/search/parse.js';
import { auditRowOf } from '../src/store/audit-events.js';
import { pageSql } from '../src/store/search-sql.js';
import { createTenant } from '../src/store/tenants.js';
import { appWith, testContext, tokenFor } from './helpers.js';

const RUN = randomUUID().slice(0, 8);
const TENANT = `audit-store-${RUN}`;
const REST = 'http://terminology.hl7.org/CodeSystem/audit-event-type';
const INTERACTION = 'http://hl7.org/fhir/restful-interaction';

interface Fixture {
  repo: Repository;
  http: supertest.Agent;
  patientA: string;
  patientB: string;
  observation: string;
  /** Event ids by name, in the order written. */
  ids: Record<'e1' | 'e2' | 'e3', string>;
  before: string;
}

let fixture: Promise<Fixture> | undefined;

function event(e: Partial<AuditEvent> & Pick<AuditEvent, 'recorded' | 'action' | 'outcome' | 'agent'>): JsonResource {
  return { resourceType: 'AuditEvent', type: { system: REST, code: 'rest' }, source: { observer: { display: 'test' } }, ...e } as unknown as JsonResource;
}

function setUp(): Promise<Fixture> {
  fixture ??= (async () => {
    const { db, ctx } = await testContext();
    // Not audited itself, so that the tenant holds these three events only.
    const app = await appWith({});
    await createTenant(db, TENANT);
    const repo = (await ctx.tenants?.repository(TENANT)) as Repository;
    const before = new Date(Date.now() - 1000).toISOString();
    const patientA = (await repo.create({ resourceType: 'Patient', name: [{ family: `Smith${RUN}` }] })).version.id;
    const patientB = (await repo.create({ resourceType: 'Patient', name: [{ family: `Jones${RUN}` }] })).version.id;
    const observation = (await repo.create({ resourceType: 'Observation', status: 'final', code: { text: 'x' } })).version.id;
    await repo.appendAuditEvents([
      event({
        recorded: '2026-01-01T10:00:00Z',
        action: 'R',
        outcome: '0',
        subtype: [{ system: INTERACTION, code: 'read' }],
        agent: [{ requestor: true, who: { reference: 'Practitioner/p1' }, network: { address: '10.0.0.1', type: '2' } }],
        entity: [{ what: { reference: `Patient/${patientA}` } }, { what: { identifier: { system: 'urn:req', value: 'req-1' } } }],
      }),
    ]);
    await repo.appendAuditEvents([
      event({
        recorded: '2026-01-02T10:00:00Z',
        action: 'C',
        outcome: '4',
        subtype: [{ system: INTERACTION, code: 'create' }],
        agent: [{ requestor: true, who: { identifier: { system: 'http://x', value: 'client-7' } }, network: { address: 'Host.Example.org', type: '1' } }],
        entity: [{ what: { reference: `Observation/${observation}` } }],
      }),
      event({
        recorded: '2026-01-03T10:00:00Z',
        action: 'R',
        outcome: '8',
        type: { system: REST, code: 'rest', display: 'RESTful Operation' },
        agent: [{ requestor: true, who: { reference: `Patient/${patientB}` } }],
        entity: [{ what: { reference: `Patient/${patientB}` } }, { what: { identifier: { system: 'urn:a|b', value: 'c' } } }],
      }),
    ]);
    const http = supertest.agent(app).auth(await tokenFor('system/*.rs system/AuditEvent.rs', { tenant: TENANT, clientId: `auditor-${RUN}` }), { type: 'bearer' });
    const all = await http.get('/fhir/AuditEvent?_sort=date').expect(200);
    const found = ((all.body as Bundle).entry ?? []).map((e) => (e.resource as AuditEvent).id as string);
    assert.equal(found.length, 3, 'the tenant holds the three events only');
    const [e1, e2, e3] = found as [string, string, string];
    return { repo, http, patientA, patientB, observation, ids: { e1, e2, e3 }, before };
  })();
  return fixture;
}

describe('audit store', function () {
  async function search(query: string): Promise<string[]> {
    const { http, ids } = await setUp();
    const res = await http.get(`/fhir/AuditEvent?${query}`);
    assert.equal(res.status, 200, `${query}: ${res.text}`);
    const names = Object.fromEntries(Object.entries(ids).map(([name, id]) => [id, name]));
    return ((res.body as Bundle).entry ?? []).map((e) => names[(e.resource as AuditEvent).id as string] ?? `?${(e.resource as AuditEvent).id}`).sort();
  }

  it('finds by date with every prefix, as the instants they are', async () => {
    const cases: [string, string[]][] = [
      ['date=2026-01-02', ['e2']],
      ['date=ge2026-01-02', ['e2', 'e3']],
      ['date=gt2026-01-02', ['e3']],
      ['date=lt2026-01-02', ['e1']],
      ['date=le2026-01-02', ['e1', 'e2']],
      ['date=ne2026-01-02', ['e1', 'e3']],
      ['date=sa2026-01-01', ['e2', 'e3']],
      ['date=eb2026-01-03', ['e1', 'e2']],
      ['date=2026-01-02T10:00:00Z', ['e2']],
      ['date=2026-01-02T11:00:00%2B01:00', ['e2']],
      ['date=ge2026-01-01&date=lt2026-01-03', ['e1', 'e2']],
      ['date=2026-01-01,2026-01-03', ['e1', 'e3']],
    ];
    for (const [query, expected] of cases) assert.deepEqual(await search(query), expected, query);
  });

  it('finds by token with system, code, |code, system|, :not, :text and :missing', async () => {
    const cases: [string, string[]][] = [
      ['action=R', ['e1', 'e3']],
      ['action=R,C', ['e1', 'e2', 'e3']],
      ['action:not=R', ['e2']],
      ['outcome=4,8', ['e2', 'e3']],
      [`subtype=${INTERACTION}|read`, ['e1']],
      ['subtype=|read', []],
      [`subtype=${INTERACTION}|`, ['e1', 'e2']],
      ['subtype=create', ['e2']],
      ['subtype:missing=true', ['e3']],
      ['subtype:missing=false', ['e1', 'e2']],
      [`type=${REST}|rest`, ['e1', 'e2', 'e3']],
      ['type:text=restful', ['e3']],
      ['type:text=nothing', []],
      ['action=R&outcome=0', ['e1']],
    ];
    for (const [query, expected] of cases) assert.deepEqual(await search(query), expected, query);
  });

  it('finds by reference: Type/id, id, :Type, :identifier and patient', async () => {
    const { patientA, patientB, observation } = await setUp();
    const cases: [string, string[]][] = [
      ['agent=Practitioner/p1', ['e1']],
      ['agent=p1', ['e1']],
      ['agent:Practitioner=p1', ['e1']],
      ['agent:Patient=p1', []],
      ['agent:identifier=http://x|client-7', ['e2']],
      ['agent:identifier=client-7', ['e2']],
      ['agent:identifier=http://y|client-7', []],
      [`entity=Observation/${observation}`, ['e2']],
      ['entity:identifier=urn:req|req-1', ['e1']],
      ['entity:identifier=urn:a\\|b|c', ['e3']],
      ['entity:identifier=urn:a|b|c', []],
      [`patient=Patient/${patientA}`, ['e1']],
      [`patient=${patientB}`, ['e3']],
      [`patient=Patient/${patientA},Patient/${patientB}`, ['e1', 'e3']],
      ['patient:missing=true', ['e2']],
      [`patient.name=Smith${RUN}`, ['e1']],
      [`patient:Patient.name=Jones${RUN}`, ['e3']],
    ];
    for (const [query, expected] of cases) assert.deepEqual(await search(query), expected, query);
  });

  it('finds by address: prefix, :exact, :contains and :missing, accents and case aside', async () => {
    const cases: [string, string[]][] = [
      ['address=10.0', ['e1']],
      ['address=host', ['e2']],
      ['address:exact=Host.Example.org', ['e2']],
      ['address:exact=host.example.org', []],
      ['address:contains=example', ['e2']],
      ['address:missing=true', ['e3']],
    ];
    for (const [query, expected] of cases) assert.deepEqual(await search(query), expected, query);
  });

  it('finds by _id and _lastUpdated, counts, and sorts by date, _lastUpdated and _id', async () => {
    const { http, ids, before } = await setUp();
    assert.deepEqual(await search(`_id=${ids.e1},${ids.e3}`), ['e1', 'e3']);
    assert.deepEqual(await search(`_lastUpdated=ge${before}`), ['e1', 'e2', 'e3']);
    assert.deepEqual(await search('_lastUpdated=lt2020-01-01'), []);
    const count = await http.get('/fhir/AuditEvent?action=R,C&_summary=count').expect(200);
    assert.equal((count.body as Bundle).total, 3);
    const total = await http.get('/fhir/AuditEvent?action=R&_total=accurate').expect(200);
    assert.equal((total.body as Bundle).total, 2);
    const order = async (sort: string) => ((await http.get(`/fhir/AuditEvent?_sort=${sort}`).expect(200)).body as Bundle).entry?.map((e) => e.resource?.id);
    assert.deepEqual(await order('date'), [ids.e1, ids.e2, ids.e3]);
    assert.deepEqual(await order('-date'), [ids.e3, ids.e2, ids.e1]);
    assert.deepEqual(await order('_id'), [ids.e1, ids.e2, ids.e3].sort());
    const refused = await http.get('/fhir/AuditEvent?_sort=action');
    assert.equal(refused.status, 400);
    assert.match(refused.text, /AuditEvents are sorted by date, _lastUpdated or _id, not 'action'/);
  });

  it('pages forward and back by keyset, one event a page', async () => {
    const { http, ids } = await setUp();
    const pages: string[] = [];
    let url: string | undefined = '/fhir/AuditEvent?_sort=-date&_count=1';
    let last: Bundle | undefined;
    while (url) {
      last = (await http.get(url.replace('http://fhir.test/fhir', '/fhir')).expect(200)).body as Bundle;
      pages.push(last.entry?.[0]?.resource?.id as string);
      url = last.link?.find((l) => l.relation === 'next')?.url;
    }
    assert.deepEqual(pages, [ids.e3, ids.e2, ids.e1]);
    const back: string[] = [];
    url = last?.link?.find((l) => l.relation === 'previous')?.url;
    while (url) {
      const page = (await http.get(url.replace('http://fhir.test/fhir', '/fhir')).expect(200)).body as Bundle;
      back.push(page.entry?.[0]?.resource?.id as string);
      url = page.link?.find((l) => l.relation === 'previous')?.url;
    }
    assert.deepEqual(back, [ids.e2, ids.e3]);
  });

  it('includes what events refer to, reverse-includes events, and searches other types by _has:AuditEvent', async () => {
    const { http, patientA, patientB, observation } = await setUp();
    const included = (await http.get('/fhir/AuditEvent?_include=AuditEvent:entity').expect(200)).body as Bundle;
    const includes = (included.entry ?? []).filter((e) => e.search?.mode === 'include').map((e) => `${e.resource?.resourceType}/${e.resource?.id}`).sort();
    assert.deepEqual(includes, [`Observation/${observation}`, `Patient/${patientA}`, `Patient/${patientB}`].sort());
    const patientOnly = (await http.get('/fhir/AuditEvent?_include=AuditEvent:entity:Patient&action=C').expect(200)).body as Bundle;
    assert.equal((patientOnly.entry ?? []).filter((e) => e.search?.mode === 'include').length, 0, 'e2 refers to an Observation only');

    const rev = (await http.get(`/fhir/Patient?_id=${patientA}&_revinclude=AuditEvent:patient`).expect(200)).body as Bundle;
    assert.deepEqual(
      (rev.entry ?? []).map((e) => `${e.search?.mode} ${e.resource?.resourceType}`).sort(),
      ['include AuditEvent', 'match Patient'],
    );
    const read = (await http.get(`/fhir/Patient?_has:AuditEvent:patient:action=R&_count=100`).expect(200)).body as Bundle;
    assert.deepEqual((read.entry ?? []).map((e) => e.resource?.id).sort(), [patientA, patientB].sort());
    const failed = (await http.get(`/fhir/Patient?_has:AuditEvent:patient:outcome=8`).expect(200)).body as Bundle;
    assert.deepEqual((failed.entry ?? []).map((e) => e.resource?.id), [patientB]);

    const chainIn = await http.get('/fhir/Provenance?target:AuditEvent.action=R');
    assert.equal(chainIn.status, 400);
    assert.match(chainIn.text, /a chain into AuditEvent is not supported/);
  });

  it('reads and vreads one version, and lists events in history at instance, type and system level', async () => {
    const { http, ids, patientA } = await setUp();
    const read = await http.get(`/fhir/AuditEvent/${ids.e1}`).expect(200);
    assert.equal((read.body as AuditEvent).meta?.versionId, '1');
    assert.equal(read.headers.etag, 'W/"1"');
    await http.get(`/fhir/AuditEvent/${ids.e1}/_history/1`).expect(200);
    await http.get(`/fhir/AuditEvent/${ids.e1}/_history/2`).expect(404);
    await http.get(`/fhir/AuditEvent/${randomUUID()}`).expect(404);
    await http.get(`/fhir/AuditEvent/${randomUUID()}/_history`).expect(404);

    const instance = (await http.get(`/fhir/AuditEvent/${ids.e2}/_history`).expect(200)).body as Bundle;
    assert.deepEqual(instance.entry?.map((e) => e.resource?.id), [ids.e2]);
    const type = (await http.get('/fhir/AuditEvent/_history').expect(200)).body as Bundle;
    assert.deepEqual(type.entry?.map((e) => e.resource?.id), [ids.e3, ids.e2, ids.e1], 'newest first');
    // System level: in write order with the record's versions (the Patients were written first).
    const system = (await http.get('/fhir/_history?_count=2').expect(200)).body as Bundle;
    assert.deepEqual(system.entry?.map((e) => e.resource?.id), [ids.e3, ids.e2]);
    const next = system.link?.find((l) => l.relation === 'next')?.url as string;
    const rest = (await http.get(`${next.replace('http://fhir.test/fhir', '/fhir')}`.replace('_count=2', '_count=10')).expect(200)).body as Bundle;
    assert.deepEqual(rest.entry?.map((e) => `${e.resource?.resourceType}/${e.resource?.id}`).slice(0, 2), [`AuditEvent/${ids.e1}`, `Observation/${(await setUp()).observation}`]);
    assert.ok(rest.entry?.some((e) => e.resource?.id === patientA));
    // A wildcard scope's system history leaves AuditEvents out.
    const app = await appWith({});
    const wildcard = supertest.agent(app).auth(await tokenFor('system/*.rs', { tenant: TENANT, clientId: `wild-${RUN}` }), { type: 'bearer' });
    const plain = (await wildcard.get('/fhir/_history?_count=100').expect(200)).body as Bundle;
    assert.ok(plain.entry?.length === 3 && plain.entry.every((e) => e.resource?.resourceType !== 'AuditEvent'));
  });

  it('refuses to write AuditEvents anywhere but the audit store', async () => {
    const { repo } = await setUp();
    await assert.rejects(repo.create({ resourceType: 'AuditEvent' }), /written by the audit log only/);
    await assert.rejects(repo.appendAuditEvents([{ resourceType: 'Patient' }]), /takes AuditEvents/);
  });

  it('stores the keys events share once per shape, and finds events stored before shapes (every key their own) alike, :not and :missing included', async () => {
    const { db, ctx } = await testContext();
    // Not audited itself, so that the tenant holds these four events only.
    const app = await appWith({});
    const tenant = `audit-shape-${RUN}`;
    const schema = await createTenant(db, tenant);
    const repo = (await ctx.tenants?.repository(tenant)) as Repository;
    const pool = db.inSchema(schema);
    const read = (n: number) =>
      event({
        recorded: `2026-02-0${n}T10:00:00Z`,
        action: 'R',
        outcome: '0',
        type: { system: REST, code: 'rest', display: 'RESTful Operation' },
        subtype: [{ system: INTERACTION, code: 'read' }],
        agent: [{ requestor: true, who: { identifier: { system: 'http://x', value: `client-${n}` } }, network: { address: `10.0.0.${n}`, type: '2' } }],
        entity: [{ what: { reference: `Observation/o${n}` } }],
      });
    await repo.appendAuditEvents([read(1)]);
    await repo.appendAuditEvents([read(2), read(3)]);
    // As an event stored before migration 17: every key its own, no shape.
    const legacy = event({ recorded: '2026-02-09T10:00:00Z', action: 'C', outcome: '4', agent: [{ requestor: true, who: { reference: 'Device/d9' } }] });
    const legacyId = randomUUID();
    const row = auditRowOf(legacy, repo.fhirBase);
    await pool.query(`INSERT INTO audit_event (id, last_updated, date_lo, date_hi, keys, content) VALUES ($1, now(), $2, $3, $4, $5)`, [legacyId, row.dateLo, row.dateHi, [...row.keys, ...row.shapeKeys], JSON.stringify({ ...legacy, id: legacyId })]);

    const stored = await pool.query<{ id: string; shape: string; keys: string[] }>('SELECT id, shape, keys FROM audit_event ORDER BY date_lo');
    const shaped = stored.rows.filter((r) => r.id !== legacyId);
    assert.equal(shaped.length, 3);
    assert.equal(new Set(shaped.map((r) => r.shape)).size, 1, 'three reads that differ in who and what share one shape');
    const kinds = new Set(shaped.flatMap((r) => r.keys.map((k) => k.split('\u001f')[1])));
    assert.deepEqual([...kinds].sort(), ['e', 'i', 'n', 'r', 'v', 'w', 'y'], 'an event keeps its reference and string keys');
    const shapes = await pool.query<{ digest: string; keys: string[] }>('SELECT digest, keys FROM audit_shape');
    assert.equal(shapes.rows.length, 1, 'one shape row, written once');
    assert.equal(shapes.rows[0]?.digest, shaped[0]?.shape);
    assert.ok(shapes.rows[0]?.keys.includes(`action\u001fc\u001fR`), 'the shape holds the token keys');

    const http = supertest.agent(app).auth(await tokenFor('system/AuditEvent.rs', { tenant, clientId: `shapes-${RUN}` }), { type: 'bearer' });
    const names = new Map([...shaped.map((r, i) => [r.id, `r${i + 1}`] as const), [legacyId, 'legacy']]);
    const find = async (query: string) => {
      const res = await http.get(`/fhir/AuditEvent?${query}`);
      assert.equal(res.status, 200, `${query}: ${res.text}`);
      return ((res.body as Bundle).entry ?? []).map((e) => names.get(e.resource?.id as string) ?? '?').sort();
    };
    const cases: [string, string[]][] = [
      ['action=R', ['r1', 'r2', 'r3']],
      ['action=C', ['legacy']],
      ['action:not=R', ['legacy']],
      ['action:not=C', ['r1', 'r2', 'r3']],
      ['subtype:missing=true', ['legacy']],
      ['subtype:missing=false', ['r1', 'r2', 'r3']],
      ['type:text=restful', ['r1', 'r2', 'r3']],
      [`type=${REST}|rest`, ['legacy', 'r1', 'r2', 'r3']],
      ['outcome=4&agent=Device/d9', ['legacy']],
      ['action=R&agent:identifier=http://x|client-2', ['r2']],
      ['action=R&address=10.0.0.3', ['r3']],
      ['entity=Observation/o1&outcome:not=0', []],
    ];
    // The same searches built without the shapes at hand (as conditional interactions build
    // theirs): the statement looks the shapes up itself.
    const blind = async (query: string) => {
      const params: Record<string, string[]> = {};
      for (const [name, value] of new URLSearchParams(query)) (params[name] ??= []).push(value);
      const parsed = parseSearch('AuditEvent', params, { fhirBase: repo.fhirBase, lenient: false }).query;
      const sql = pageSql(parsed, 100);
      assert.doesNotMatch(sql.text, /= ANY\(\$\d+::text\[\]\)/, 'no shape named as a constant');
      const rows = await pool.query<{ id: string }>(sql.text, sql.values);
      return rows.rows.map((r) => names.get(r.id) ?? '?').sort();
    };
    for (const [query, expected] of cases) {
      assert.deepEqual(await find(query), expected, query);
      assert.deepEqual(await blind(query), expected, `${query}, shapes looked up by the statement`);
    }
  });

  it('moves AuditEvents stored as ordinary resources (before migration 15) into the store, keeping their place in history', async () => {
    const { db, ctx } = await testContext();
    const tenant = `audit-move-${RUN}`;
    const schema = await createTenant(db, tenant);
    const repo = (await ctx.tenants?.repository(tenant)) as Repository;
    const pool = db.inSchema(schema);
    const id = randomUUID();
    const old = event({ recorded: '2025-06-01T00:00:00Z', action: 'E', outcome: '0', agent: [{ requestor: true, who: { reference: 'Device/d1' } }] });
    const content = { ...old, id, meta: { versionId: '1', lastUpdated: '2025-06-01T00:00:01Z' } };
    // As the server stored them before: current row, history row, index rows.
    await pool.query(`INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content) VALUES ('AuditEvent', $1, 1, '2025-06-01T00:00:01Z', false, $2)`, [id, JSON.stringify(content)]);
    const seq = (await pool.query<{ seq: string }>(`INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, method, content) VALUES ('AuditEvent', $1, 1, '2025-06-01T00:00:01Z', false, 'POST', NULL) RETURNING seq`, [id])).rows[0]?.seq;
    await pool.query(`INSERT INTO sp_token (resource_type, id, param, grp, system, code, text) VALUES ('AuditEvent', $1, 'action', NULL, NULL, 'E', NULL)`, [id]);

    assert.equal(await repo.moveAuditEvents(), 1);
    assert.equal(await repo.moveAuditEvents(), 0, 'a second run finds nothing left');
    for (const table of ['resource', 'resource_history', 'sp_token']) {
      const left = await pool.query(`SELECT 1 FROM ${table} WHERE resource_type = 'AuditEvent'`);
      assert.equal(left.rows.length, 0, table);
    }
    const moved = await pool.query<{ seq: string }>('SELECT seq::text AS seq FROM audit_event WHERE id = $1', [id]);
    assert.equal(moved.rows[0]?.seq, String(seq), 'the history sequence number is kept');
    const { app } = await testContext();
    const http = supertest.agent(app).auth(await tokenFor('system/AuditEvent.rs', { tenant, clientId: `mover-${RUN}` }), { type: 'bearer' });
    const found = (await http.get('/fhir/AuditEvent?action=E&agent=Device/d1').expect(200)).body as Bundle;
    assert.deepEqual(found.entry?.map((e) => e.resource?.id), [id]);
    const read = (await http.get(`/fhir/AuditEvent/${id}`).expect(200)).body as AuditEvent;
    assert.equal(read.meta?.lastUpdated, '2025-06-01T00:00:01Z');
  });
});
