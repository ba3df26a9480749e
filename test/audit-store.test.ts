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
import { readFileSync } from 'node:fs';
import { auditEvent, type AuditInput } from '../src/audit/events.js';
import fc from 'fast-check';
import { auditEventOfRecord, auditRecordOf, auditRowOf, auditRowOfRecord } from '../src/store/audit-events.js';
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

/** A tenant of its own (`prefix`-RUN): its repository and a pool over its schema, for direct SQL. */
async function freshTenant(prefix: string) {
  const { db, ctx } = await testContext();
  const tenant = `${prefix}-${RUN}`;
  const schema = await createTenant(db, tenant);
  const repo = (await ctx.tenants?.repository(tenant)) as Repository;
  return { tenant, repo, pool: db.inSchema(schema) };
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
    // Not audited itself, so that the tenant holds these four events only.
    const app = await appWith({});
    const { tenant, repo, pool } = await freshTenant('audit-shape');
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

  it('stores what the audit log records (sanitised, a fifth of the event) and makes the AuditEvent when read: read, vread, search, history, _revinclude', async () => {
    // Not audited itself, so that the tenant holds these events only.
    const app = await appWith({});
    const { tenant, repo, pool } = await freshTenant('audit-record');
    const patient = (await repo.create({ resourceType: 'Patient', name: [{ family: `Record${RUN}` }] })).version.id;
    const server = { name: 'met-fhir-server', version: '9.9.9', baseUrl: 'https://fhir.example.org' };
    const inputs: AuditInput[] = [
      { kind: 'read', recorded: new Date('2026-03-01T10:00:00.001Z'), outcome: 'success', status: 200, client: { clientId: `reader-${RUN}`, tenant }, sourceAddress: '10.1.2.3', requestId: 'rq-1', server, resource: { type: 'Patient', id: patient } },
      { kind: 'search', recorded: new Date('2026-03-01T10:00:00.002Z'), outcome: 'success', status: 200, client: { clientId: `reader-${RUN}`, tenant }, sourceAddress: '10.1.2.3', server, query: { resourceType: 'Observation', query: `subject=Patient/${patient}&access_token=leaked-${RUN}` }, patient: `Patient/${patient}` },
    ];
    await repo.appendAuditEvents(inputs);
    const rows = await pool.query<{ id: string; format: number; content: Record<string, unknown>; size: number }>('SELECT id, format, content, octet_length(content::text) AS size FROM audit_event ORDER BY date_lo');
    assert.equal(rows.rows.length, 2);
    const expected = rows.rows.map((row, i) => {
      const event = auditEvent(inputs[i] as AuditInput);
      const lastUpdated = String(row.content.lastUpdated);
      return { ...event, id: row.id, meta: { ...event.meta, versionId: '1', lastUpdated } };
    });
    for (const [i, row] of rows.rows.entries()) {
      assert.equal(row.format, 1, 'stored as the audit log\'s record');
      assert.equal(row.content.resourceType, undefined);
      assert.ok(row.size * 3 < JSON.stringify(expected[i]).length, `record of ${row.size} bytes against an event of ${JSON.stringify(expected[i]).length}`);
      assert.ok(!JSON.stringify(row.content).includes(`leaked-${RUN}`), 'no credential stored');
    }
    const [readId, searchId] = rows.rows.map((r) => r.id) as [string, string];
    const http = supertest.agent(app).auth(await tokenFor('system/*.rs system/AuditEvent.rs', { tenant, clientId: `records-${RUN}` }), { type: 'bearer' });
    assert.deepEqual((await http.get(`/fhir/AuditEvent/${readId}`).expect(200)).body, expected[0], 'read');
    assert.deepEqual((await http.get(`/fhir/AuditEvent/${searchId}/_history/1`).expect(200)).body, expected[1], 'vread');
    const entries = async (path: string) => ((await http.get(path).expect(200)).body as Bundle).entry?.map((e) => e.resource) ?? [];
    assert.deepEqual(await entries(`/fhir/AuditEvent?agent:identifier=https://fhir.example.org|reader-${RUN}&_sort=date`), expected, 'search by the client');
    assert.deepEqual(await entries(`/fhir/AuditEvent?patient=Patient/${patient}&subtype=search-type`), [expected[1]], 'search by patient and subtype');
    assert.deepEqual(await entries(`/fhir/AuditEvent?entity=Patient/${patient}&address=10.1.2.3&action=R`), [expected[0]], 'search by entity, address and action');
    // Keys every event of this server has (its identity and address) are in the records' shape.
    assert.deepEqual(await entries('/fhir/AuditEvent?source:identifier=urn:ietf:rfc:3986|https://fhir.example.org&_sort=date'), expected, 'source, from the shape');
    assert.deepEqual(await entries('/fhir/AuditEvent?agent:identifier=urn:ietf:rfc:3986|https://fhir.example.org&subtype=read'), [expected[0]], 'the server as agent, from the shape');
    assert.deepEqual(await entries('/fhir/AuditEvent?address=https://fhir.ex&_sort=-date'), [expected[1], expected[0]], 'a prefix of the server\'s address, from the shape');
    assert.deepEqual(await entries('/fhir/AuditEvent?address:exact=10.1.2.3&address:missing=false&_sort=date'), expected, 'the caller\'s address, the event\'s own');
    assert.deepEqual(await entries('/fhir/AuditEvent/_history'), [expected[1], expected[0]], 'type history, newest first');
    const withEvents = await entries(`/fhir/Patient?_id=${patient}&_revinclude=AuditEvent:patient`);
    assert.deepEqual(withEvents.slice(1).sort((a, b) => String(a?.id).localeCompare(String(b?.id))), [...expected].sort((a, b) => a.id.localeCompare(b.id)), '_revinclude');

    // A record of format 1 is read as the same AuditEvent, to the byte, by every later version.
    const fixture = JSON.parse(readFileSync(new URL('./fixtures/audit-record-format1.json', import.meta.url), 'utf8')) as { record: { id: string; lastUpdated: string; recorded: string }; event: AuditEvent };
    const row = auditRowOf(auditEventOfRecord(fixture.record as never), repo.fhirBase);
    await pool.query('INSERT INTO audit_event (id, last_updated, date_lo, date_hi, shape, keys, format, content) VALUES ($1, $2, $3, $4, $5, $6, 1, $7)', [
      fixture.record.id,
      fixture.record.lastUpdated,
      row.dateLo,
      row.dateHi,
      '',
      [...row.keys, ...row.shapeKeys],
      JSON.stringify(fixture.record),
    ]);
    const golden = await http.get(`/fhir/AuditEvent/${fixture.record.id}`).expect(200);
    assert.equal(JSON.stringify(golden.body), JSON.stringify(fixture.event));
  });

  it('gives a record the search values its AuditEvent has (extracted once per skeleton, the values put in), for generated records', () => {
    const id = fc.oneof(fc.uuid(), fc.stringMatching(/^[A-Za-z0-9.-]{1,64}$/), fc.string({ maxLength: 80 }), fc.constantFrom('', 'a b', 'x'.repeat(65), 'eyJabc.def', 'zq0id0qz'));
    const text = fc.oneof(fc.string({ maxLength: 40 }), fc.string({ unit: 'grapheme', maxLength: 20 }), fc.constantFrom('Bearer abc.def', ' \u0007 ', 'É  Ü', '$&$1', 'x'.repeat(700)));
    const input: fc.Arbitrary<AuditInput> = fc.record(
      {
        kind: fc.constantFrom('read', 'vread', 'create', 'update', 'patch', 'delete', 'search', 'history', 'batch', 'transaction', 'operation', 'login', 'authorization-failure'),
        recorded: fc.date({ min: new Date('2000-01-01T00:00:00Z'), max: new Date('2100-01-01T00:00:00Z'), noInvalidDate: true }),
        outcome: fc.constantFrom('success', 'failure'),
        status: fc.constantFrom(200, 201, 204, 400, 401, 403, 404, 412, 422, 429, 500, 503),
        outcomeText: text,
        client: fc.record({ clientId: fc.oneof(id, text), name: text, tenant: fc.oneof(fc.constantFrom('acme', 'two words', 'zq0'), text) }, { requiredKeys: ['clientId'] }),
        sourceAddress: fc.oneof(fc.ipV4(), fc.ipV6(), fc.domain(), text),
        requestId: fc.oneof(fc.uuid(), text),
        server: fc.constantFrom(
          { name: 'met-fhir-server', version: '0.1.0', baseUrl: 'https://fhir.example.org' },
          { name: 'met', version: '2', baseUrl: 'http://127.0.0.1:3000/base/' },
          { name: 'zq0', version: 'zq0id0qz', baseUrl: 'not a url' },
        ),
        resource: fc.record({ type: fc.oneof(fc.constantFrom('Patient', 'Observation', 'Goal', 'bad type', 'Patient2'), fc.string({ maxLength: 10 })), id, versionId: id }, { requiredKeys: ['type'] }),
        query: fc.record({ resourceType: fc.constantFrom('Patient', 'Observation', 'zq0'), query: fc.oneof(fc.constantFrom('', 'a=b', 'client_secret=s&x=1', '?access_token=t'), text) }, { requiredKeys: ['query'] }),
        patient: fc.oneof(id.map((i) => `Patient/${i}`), text),
      },
      { requiredKeys: ['kind', 'recorded', 'outcome', 'server'] },
    );
    const fhirBase = 'https://fhir.example.org/fhir';
    fc.assert(
      fc.property(input, (given) => {
        const record = auditRecordOf(given, randomUUID(), new Date().toISOString());
        const fast = auditRowOfRecord(record, fhirBase);
        const extracted = auditRowOf(auditEventOfRecord(record), fhirBase);
        // The same keys, split another way (by what they hold); reference keys always the event's own.
        assert.deepEqual(new Set([...fast.keys, ...fast.shapeKeys]), new Set([...extracted.keys, ...extracted.shapeKeys]));
        assert.deepEqual([fast.dateLo, fast.dateHi], [extracted.dateLo, extracted.dateHi]);
        assert.ok(!fast.shapeKeys.some((k) => k.split('\u001f')[1] === 'r'), 'no reference key in a shape');
      }),
      { numRuns: 3000 },
    );
    // Two events that differ only in their request's values share a shape, which holds none of them.
    const server = { name: 'met-fhir-server', version: '1', baseUrl: 'https://fhir.example.org' };
    const rowOf = (n: string) =>
      auditRowOfRecord(
        auditRecordOf({ kind: 'create', recorded: new Date(), outcome: 'success', status: 201, client: { clientId: `client-${n}`, tenant: 'acme' }, sourceAddress: `10.0.0.${n}`, requestId: `req-${n}`, server, resource: { type: 'Observation', id: `obs-${n}`, versionId: '1' } }, randomUUID(), new Date().toISOString()),
        fhirBase,
      );
    const [one, two] = [rowOf('1'), rowOf('2')];
    assert.equal(one.shape, two.shape);
    assert.deepEqual(one.keys.map((k) => k.replaceAll('-1', '-2').replace('10.0.0.1', '10.0.0.2')), two.keys);
    assert.ok(!one.shapeKeys.some((k) => /-1$|10\.0\.0\.1/.test(k)), 'the shape holds no value of the request');
    assert.equal(one.keys.length, 8, `own keys: ${one.keys.join(', ')}`);
  });

  it('moves AuditEvents stored as ordinary resources (before migration 15) into the store, keeping their place in history', async () => {
    const { tenant, repo, pool } = await freshTenant('audit-move');
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
