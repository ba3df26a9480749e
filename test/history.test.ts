/** history at instance, type and system level, with paging that survives concurrent writes. */
import assert from 'node:assert/strict';
import { ClientStore } from '../src/store/clients.js';
import { api, assertOutcome, BASE_URL, FHIR_JSON, TEST_TENANT, testContext, uniqueId } from './helpers.js';

async function writeVersions(type: string, id: string, count: number): Promise<void> {
  const agent = await api();
  for (let i = 0; i < count; i++) {
    const res = await agent.put(`/fhir/${type}/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: type, id, code: { text: `v${i + 1}` } });
    assert.ok(res.status === 200 || res.status === 201);
  }
}

describe('history', () => {
  it('instance history lists every version newest first, with request and response of each', async () => {
    const agent = await api();
    const id = uniqueId();
    await writeVersions('Basic', id, 2);
    await agent.delete(`/fhir/Basic/${id}`);
    const res = await agent.get(`/fhir/Basic/${id}/_history`);
    assert.equal(res.status, 200);
    assert.equal(res.body.resourceType, 'Bundle');
    assert.equal(res.body.type, 'history');
    const entries = res.body.entry as { fullUrl: string; resource?: { meta: { versionId: string } }; request: unknown; response: { status: string; etag: string } }[];
    assert.deepEqual(
      entries.map((e) => [e.request, e.response.status, e.response.etag, e.resource?.meta.versionId]),
      [
        [{ method: 'DELETE', url: `Basic/${id}` }, '204 No Content', 'W/"3"', undefined],
        [{ method: 'PUT', url: `Basic/${id}` }, '200 OK', 'W/"2"', '2'],
        [{ method: 'PUT', url: `Basic/${id}` }, '201 Created', 'W/"1"', '1'],
      ],
    );
    assert.ok(entries.every((e) => e.fullUrl === `${BASE_URL}/fhir/Basic/${id}`));
  });

  it('stores a version\'s content once: the current version\'s in the current row, an older one\'s in history; vread and _history give each its own', async () => {
    const agent = await api();
    const { db } = await testContext();
    const pool = db.inSchema((await new ClientStore(db.pool).tenantSchema(TEST_TENANT)) as string);
    const id = uniqueId();
    const stored = async (): Promise<[number, boolean][]> =>
      (await pool.query<{ version_id: number; has: boolean }>('SELECT version_id, content IS NOT NULL AS has FROM resource_history WHERE resource_type = $1 AND id = $2 ORDER BY version_id', ['Basic', id])).rows.map((r) => [r.version_id, r.has]);

    const put = async (text: string): Promise<number> => (await agent.put(`/fhir/Basic/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Basic', id, code: { text } })).status;

    assert.equal(await put('v1'), 201);
    assert.deepEqual(await stored(), [[1, false]]);
    assert.equal(await put('v2'), 200);
    assert.equal(await put('v3'), 200);
    assert.deepEqual(await stored(), [[1, true], [2, true], [3, false]]);
    await agent.delete(`/fhir/Basic/${id}`);
    assert.deepEqual(await stored(), [[1, true], [2, true], [3, true], [4, false]]);

    for (const v of [1, 2, 3]) {
      const res = await agent.get(`/fhir/Basic/${id}/_history/${v}`);
      assert.equal(res.status, 200);
      assert.equal(res.body.code.text, `v${v}`);
    }
    const history = await agent.get(`/fhir/Basic/${id}/_history`);
    assert.deepEqual(history.body.entry.map((e: { resource?: { code: { text: string } } }) => e.resource?.code.text), [undefined, 'v3', 'v2', 'v1']);
    // Written again after the delete: the new current version reads from the current row.
    assert.equal(await put('v5'), 201);
    assert.equal((await agent.get(`/fhir/Basic/${id}/_history/5`)).body.code.text, 'v5');
    assert.equal((await agent.get(`/fhir/Basic/_history?_count=50`)).body.entry.find((e: { resource?: { id: string; meta: { versionId: string } } }) => e.resource?.id === id && e.resource.meta.versionId === '5')?.resource.code.text, 'v5');
  });

  it('pages with _count and next links, and the pages stay the same while new versions are written', async () => {
    const agent = await api();
    const id = uniqueId();
    await writeVersions('Basic', id, 5);
    const first = await agent.get(`/fhir/Basic/${id}/_history?_count=2`);
    assert.deepEqual(first.body.entry.map((e: { resource: { meta: { versionId: string } } }) => e.resource.meta.versionId), ['5', '4']);
    const next = (first.body.link as { relation: string; url: string }[]).find((l) => l.relation === 'next');
    assert.ok(next);
    await writeVersions('Basic', id, 1); // version 6 arrives between pages
    const second = await agent.get(new URL(next.url).pathname.replace(/^\/fhir/, '/fhir') + new URL(next.url).search);
    assert.deepEqual(second.body.entry.map((e: { resource: { meta: { versionId: string } } }) => e.resource.meta.versionId), ['3', '2']);
    const nextUrl = new URL((second.body.link as { relation: string; url: string }[]).find((l) => l.relation === 'next')?.url ?? '');
    const third = await agent.get(nextUrl.pathname + nextUrl.search);
    assert.deepEqual(third.body.entry.map((e: { resource: { meta: { versionId: string } } }) => e.resource.meta.versionId), ['1']);
    assert.equal((third.body.link as { relation: string }[]).some((l) => l.relation === 'next'), false);
  });

  it('type history holds only that type; system history holds every type; _since filters by time', async () => {
    const agent = await api();
    const before = new Date(Date.now() - 1).toISOString();
    const bid = uniqueId();
    const pid = uniqueId();
    await writeVersions('Basic', bid, 1);
    await agent.put(`/fhir/Patient/${pid}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', id: pid });
    const type = await agent.get(`/fhir/Basic/_history?_since=${encodeURIComponent(before)}&_count=1000`);
    const typeUrls = (type.body.entry as { fullUrl: string }[]).map((e) => e.fullUrl);
    assert.ok(typeUrls.includes(`${BASE_URL}/fhir/Basic/${bid}`));
    assert.ok(typeUrls.every((u) => u.includes('/fhir/Basic/')));
    const system = await agent.get(`/fhir/_history?_since=${encodeURIComponent(before)}&_count=1000`);
    const systemUrls = (system.body.entry as { fullUrl: string }[]).map((e) => e.fullUrl);
    assert.ok(systemUrls.includes(`${BASE_URL}/fhir/Basic/${bid}`));
    assert.ok(systemUrls.includes(`${BASE_URL}/fhir/Patient/${pid}`));
    const future = await agent.get(`/fhir/_history?_since=${encodeURIComponent(new Date(Date.now() + 60_000).toISOString())}`);
    assert.deepEqual(future.body.entry, []);
  });

  it('returns Bad Request on an invalid _since, _count or an unsupported parameter', async () => {
    const agent = await api();
    const since = await agent.get('/fhir/_history?_since=2026-01-01');
    assert.equal(since.status, 400);
    assertOutcome(since.body, [
      { code: 'invalid', detail: 'invalid-instant', expression: '_since', diagnostics: "_since must be an instant with a time zone, such as 2026-01-31T10:00:00Z; got '2026-01-01'" },
    ]);
    const count = await agent.get('/fhir/Patient/_history?_count=-3');
    assert.equal(count.status, 400);
    assertOutcome(count.body, [{ code: 'invalid', detail: 'invalid-count', expression: '_count', diagnostics: "_count must be a positive whole number; got '-3'" }]);
    const at = await agent.get('/fhir/_history?_at=2026');
    assert.equal(at.status, 400);
    assertOutcome(at.body, [{ code: 'invalid', detail: 'unknown-parameter', expression: '_at', diagnostics: "Parameter '_at' is not supported by history; use _count and _since" }]);
  });
});
