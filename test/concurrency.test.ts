/** No lost update and no duplicate under concurrent writers, on both engines. */
import assert from 'node:assert/strict';
import { api, FHIR_JSON, testContext, uniqueId } from './helpers.js';

describe('concurrency', () => {
  it('50 parallel updates with If-Match: exactly one success per version, no lost update', async () => {
    const agent = await api();
    const id = uniqueId();
    await agent.put(`/fhir/Basic/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Basic', id, code: { text: 'start' } });
    // Every writer reads the current version, then updates with If-Match; losers retry from a fresh read.
    const writer = async (n: number): Promise<{ wins: string[]; conflicts: number }> => {
      const wins: string[] = [];
      let conflicts = 0;
      for (;;) {
        const current = await agent.get(`/fhir/Basic/${id}`);
        const version = current.body.meta.versionId as string;
        const res = await agent
          .put(`/fhir/Basic/${id}`)
          .set('Content-Type', FHIR_JSON)
          .set('If-Match', `W/"${version}"`)
          .send({ resourceType: 'Basic', id, code: { text: `writer ${n}` } });
        if (res.status === 200) {
          assert.equal(res.body.meta.versionId, String(Number(version) + 1));
          wins.push(res.body.meta.versionId as string);
          return { wins, conflicts };
        }
        assert.equal(res.status, 412, JSON.stringify(res.body));
        conflicts++;
      }
    };
    const results = await Promise.all(Array.from({ length: 50 }, (_, n) => writer(n)));
    const versions = results.flatMap((r) => r.wins).sort((a, b) => Number(a) - Number(b));
    assert.deepEqual(versions, Array.from({ length: 50 }, (_, i) => String(i + 2)), 'one success per version 2..51');
    const history = await agent.get(`/fhir/Basic/${id}/_history?_count=100`);
    assert.equal(history.body.entry.length, 51);
    const texts = new Set((history.body.entry as { resource: { code: { text: string } } }[]).map((e) => e.resource.code.text));
    assert.equal(texts.size, 51, 'every writer’s content is a version of its own');
  });

  it('50 parallel updates with the same stale If-Match: exactly one succeeds', async () => {
    const agent = await api();
    const id = uniqueId();
    await agent.put(`/fhir/Basic/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Basic', id, code: { text: 'start' } });
    const statuses = await Promise.all(
      Array.from({ length: 50 }, (_, n) =>
        agent
          .put(`/fhir/Basic/${id}`)
          .set('Content-Type', FHIR_JSON)
          .set('If-Match', 'W/"1"')
          .send({ resourceType: 'Basic', id, code: { text: `w${n}` } })
          .then((r) => r.status),
      ),
    );
    assert.equal(statuses.filter((s) => s === 200).length, 1);
    assert.equal(statuses.filter((s) => s === 412).length, 49);
  });

  it('20 parallel conditional creates with the same identifier create exactly one resource', async () => {
    const agent = await api();
    const value = uniqueId('mrn');
    const results = await Promise.all(
      Array.from({ length: 20 }, () =>
        agent
          .post('/fhir/Patient')
          .set('Content-Type', FHIR_JSON)
          .set('If-None-Exist', `identifier=urn:met:mrn|${value}`)
          .send({ resourceType: 'Patient', identifier: [{ system: 'urn:met:mrn', value }] }),
      ),
    );
    assert.equal(results.filter((r) => r.status === 201).length, 1);
    assert.equal(results.filter((r) => r.status === 200).length, 19);
    assert.equal(new Set(results.map((r) => r.body.id as string)).size, 1);
    const { db } = await testContext();
    const stored = await db.pool.query(`SELECT count(*)::int AS n FROM resource WHERE resource_type = 'Patient' AND content -> 'identifier' @> $1::jsonb`, [
      JSON.stringify([{ value }]),
    ]);
    assert.equal((stored.rows[0] as { n: number }).n, 1);
  });

  it('20 parallel create-on-update of one new id: one 201, the rest new versions', async () => {
    const agent = await api();
    const id = uniqueId();
    const statuses = await Promise.all(
      Array.from({ length: 20 }, () => agent.put(`/fhir/Basic/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Basic', id, code: { text: 'x' } }).then((r) => r.status)),
    );
    assert.equal(statuses.filter((s) => s === 201).length, 1);
    assert.equal(statuses.filter((s) => s === 200).length, 19);
    assert.equal((await agent.get(`/fhir/Basic/${id}`)).body.meta.versionId, '20');
  });
});

describe('conditional create', () => {
  it('creates when nothing matches, returns the match (200) when one does, 412 when several do', async () => {
    const agent = await api();
    const value = uniqueId('mrn');
    const send = (body: object, criteria: string) => agent.post('/fhir/Patient').set('Content-Type', FHIR_JSON).set('If-None-Exist', criteria).send(body);
    const body = { resourceType: 'Patient', identifier: [{ system: 'urn:a', value }] };
    const first = await send(body, `identifier=urn:a|${value}`);
    assert.equal(first.status, 201);
    const again = await send(body, `identifier=urn:a|${value}`);
    assert.equal(again.status, 200);
    assert.equal(again.body.id, first.body.id);
    assert.equal(again.headers.location, undefined);
    // value only, any system
    assert.equal((await send(body, `identifier=${value}`)).body.id, first.body.id);
    // a second patient with the same value in another system → the value-only criteria match two
    const other = await send({ resourceType: 'Patient', identifier: [{ system: 'urn:b', value }] }, `identifier=urn:b|${value}`);
    assert.equal(other.status, 201);
    const ambiguous = await send(body, `identifier=${value}`);
    assert.equal(ambiguous.status, 412);
    assert.equal(ambiguous.body.issue[0].details.coding[0].code, 'multiple-matches');
    // |value means "no system": neither matches
    const noSystem = await send({ resourceType: 'Patient', identifier: [{ value }] }, `identifier=|${value}`);
    assert.equal(noSystem.status, 201);
    assert.equal((await send(body, `identifier=|${value}`)).body.id, noSystem.body.id);
    // _id
    assert.equal((await send(body, `_id=${first.body.id}`)).body.id, first.body.id);
  });
});
