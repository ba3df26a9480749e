/**
 * Real data through the API: every official R4 example, and every resource of the 47 Synthea
 * patients, is accepted by update (create-on-update with its id) and read back unchanged except
 * the server's meta.versionId and meta.lastUpdated.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { api, testContext, FHIR_JSON, withoutServerMeta } from './helpers.js';

const DATA = new URL('../../shared/data/', import.meta.url).pathname;

/** Official examples this server rejects, each for a real defect of the example (see README). */
const KNOWN_DEFECTIVE_EXAMPLES: Record<string, string> = {};

type Resource = { resourceType: string; id: string } & Record<string, unknown>;

/** Runs `work` over `items` with at most `limit` in flight. */
async function pool<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) await work(items[next++] as T);
    }),
  );
}

describe('the official FHIR R4 examples', function () {
  this.timeout(300_000);
  const dir = join(DATA, 'fhir-r4-examples');
  const files = readdirSync(dir).filter((f) => f.endsWith('.json'));

  it('has all 698 examples to test', () => {
    assert.equal(files.length, 698);
  });

  it('accepts every one by update and reads it back unchanged except meta (AuditEvents: valid, and refused as server-written)', async () => {
    const agent = await api();
    const { ctx } = await testContext();
    const failures: string[] = [];
    await pool(files, 8, async (file) => {
      const resource = JSON.parse(readFileSync(join(dir, file), 'utf8')) as Resource;
      const path = `/fhir/${resource.resourceType}/${resource.id}`;
      const put = await agent.put(path).set('Content-Type', FHIR_JSON).send(resource);
      if (resource.resourceType === 'AuditEvent') {
        // Only the server writes AuditEvents (the audit log); the examples must still be valid R4.
        const code = (put.body as { issue?: { details?: { coding?: { code?: string }[] } }[] }).issue?.[0]?.details?.coding?.[0]?.code;
        if (put.status !== 405 || code !== 'audit-read-only') failures.push(`${file}: ${put.status} ${code}`);
        const problems = ctx.validator.problems(resource);
        if (problems.length > 0) failures.push(`${file}: ${JSON.stringify(problems.slice(0, 3))}`);
        return;
      }
      if (put.status !== 201 && put.status !== 200) {
        if (!KNOWN_DEFECTIVE_EXAMPLES[file]) failures.push(`${file}: ${put.status} ${JSON.stringify(put.body.issue?.slice(0, 3))}`);
        return;
      }
      const read = await agent.get(path);
      try {
        assert.deepEqual(withoutServerMeta(read.body), withoutServerMeta(resource));
      } catch {
        failures.push(`${file}: read back differs`);
      }
    });
    assert.deepEqual(failures, []);
  });
});

describe('the Synthea patients, resource by resource', function () {
  this.timeout(600_000);
  const dir = join(DATA, 'synthea');
  const files = readdirSync(dir).filter((f) => f.endsWith('.json'));

  it('stores all 8,503 resources by update and reads every one back unchanged except meta', async () => {
    const agent = await api();
    // Synthea's transaction bundles refer to entries by urn:uuid; stored resources refer by Type/id.
    const byUrn = new Map<string, string>();
    const resources: Resource[] = [];
    for (const file of files) {
      const bundle = JSON.parse(readFileSync(join(dir, file), 'utf8')) as { entry: { fullUrl: string; resource: Resource }[] };
      for (const entry of bundle.entry) {
        byUrn.set(entry.fullUrl, `${entry.resource.resourceType}/${entry.resource.id}`);
        resources.push(entry.resource);
      }
    }
    assert.equal(resources.length, 8503);
    const rewrite = (resource: Resource): Resource =>
      JSON.parse(JSON.stringify(resource), (key, value: unknown) => (key === 'reference' && typeof value === 'string' ? (byUrn.get(value) ?? value) : value)) as Resource;
    const latest = new Map<string, Resource>();
    const failures: string[] = [];
    await pool(resources, 8, async (original) => {
      const resource = rewrite(original);
      const key = `${resource.resourceType}/${resource.id}`;
      latest.set(key, resource);
      const put = await agent.put(`/fhir/${key}`).set('Content-Type', FHIR_JSON).send(resource);
      if (put.status !== 201 && put.status !== 200) failures.push(`${key}: ${put.status} ${JSON.stringify(put.body.issue?.slice(0, 2))}`);
    });
    assert.deepEqual(failures.slice(0, 10), []);
    await pool([...latest.entries()], 8, async ([key, resource]) => {
      const read = await agent.get(`/fhir/${key}`);
      try {
        assert.equal(read.status, 200);
        assert.deepEqual(withoutServerMeta(read.body), withoutServerMeta(resource));
      } catch {
        failures.push(`${key}: read back differs`);
      }
    });
    assert.deepEqual(failures.slice(0, 10), []);
  });
});
