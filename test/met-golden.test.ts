/**
 * Golden tests of the MET mappings: each example client's first month (client, intake assessment,
 * goals, program, eight sessions, reassessment), pushed in that order, must produce exactly the FHIR
 * in test/fixtures/met/<scenario>/expected/<document>.fhir.json: every resource each push wrote or
 * left unchanged, at the version it answered, without the server's meta.versionId/lastUpdated.
 * Provenance is left out (its id and time are the push's own).
 *
 * After an intended change to a mapping or the catalog, regenerate with
 *   UPDATE_GOLDEN=1 npx mocha --no-config --node-option import=tsx --require test/hooks.ts test/met-golden.test.ts
 * and read the diff before committing it.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import type { Agent } from 'supertest';
import { api } from './helpers.js';

type Json = Record<string, unknown>;

const root = new URL('./fixtures/met/', import.meta.url);
const UPDATE = process.env.UPDATE_GOLDEN === '1';

/** The first month, in the order a MET would push it. */
function documents(scenario: string): { file: string; collection: string }[] {
  const files = readdirSync(new URL(`${scenario}/`, root));
  const of = (prefix: string) => files.filter((f) => f.startsWith(prefix) && f.endsWith('.json')).sort();
  return [
    { file: 'client.json', collection: 'clients' },
    { file: 'assessment-intake.json', collection: 'assessments' },
    ...of('goal-').map((file) => ({ file, collection: 'goals' })),
    { file: 'program.json', collection: 'programs' },
    ...of('session-').map((file) => ({ file, collection: 'sessions' })),
    { file: 'assessment-reassessment.json', collection: 'assessments' },
  ];
}

function withoutServerMeta(resource: Json): Json {
  const { meta, ...rest } = resource as Json & { meta?: Json };
  if (!meta) return rest;
  const { versionId: _v, lastUpdated: _l, ...kept } = meta;
  return Object.keys(kept).length > 0 ? { ...rest, meta: kept } : rest;
}

async function pushed(agent: Agent, collection: string, body: unknown): Promise<Json[]> {
  const res = await agent.post(`/met/v1/${collection}`).set('Content-Type', 'application/json').set('X-MET-Software', 'GoldenTrainer 1.0').send(body as object);
  assert.ok(res.status === 201 || res.status === 200, `${collection}: ${res.status} ${JSON.stringify(res.body)}`);
  const refs = (res.body.resources as { type: string; id: string; version: string }[]).slice().sort((a, b) => `${a.type}/${a.id}`.localeCompare(`${b.type}/${b.id}`));
  const out: Json[] = [];
  for (const r of refs) {
    const read = await agent.get(`/fhir/${r.type}/${r.id}/_history/${r.version}`);
    assert.equal(read.status, 200, `${r.type}/${r.id}/_history/${r.version}`);
    out.push(withoutServerMeta(read.body as Json));
  }
  return out;
}

describe('MET golden tests: the exact FHIR of each example client’s first month', function () {
  this.timeout(120_000);

  for (const scenario of ['knee-replacement', 'hypertension', 'post-stroke', 'low-back-pain']) {
    it(`${scenario}`, async () => {
      const agent = await api();
      const expectedDir = new URL(`${scenario}/expected/`, root);
      if (UPDATE) mkdirSync(expectedDir, { recursive: true });
      for (const { file, collection } of documents(scenario)) {
        const body = JSON.parse(readFileSync(new URL(`${scenario}/${file}`, root), 'utf8')) as unknown;
        const actual = await pushed(agent, collection, body);
        const golden = new URL(file.replace(/\.json$/, '.fhir.json'), expectedDir);
        if (UPDATE) {
          writeFileSync(golden, JSON.stringify(actual, null, 2) + '\n');
          continue;
        }
        assert.ok(existsSync(golden), `${scenario}/expected/${file.replace(/\.json$/, '.fhir.json')} is missing (UPDATE_GOLDEN=1 writes it)`);
        const expected = JSON.parse(readFileSync(golden, 'utf8')) as unknown;
        assert.deepEqual(actual, expected, `${scenario}/${file}: the FHIR differs from expected/${file.replace(/\.json$/, '.fhir.json')}`);
      }
    });
  }
});
