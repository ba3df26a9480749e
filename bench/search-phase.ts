/**
 * The search and ingest scenarios of `npm run bench` (issue #3), run against a server on
 * PostgreSQL that bench/run.ts has started:
 *  1. the 47 Synthea patient bundles POSTed as transactions, 4 at a time, cold then warm → resources/s;
 *  2. BENCH_OBSERVATIONS Observations (default 1,000,000) and 10,000 Patients loaded as
 *     transaction bundles of 1,000 resources, 3 in flight → time and resources/s;
 *  3. VACUUM ANALYZE, then the database size per million resources;
 *  4. three searches at 50 requests/s (autocannon, 1 connection, 20 s each, parameters varied per
 *     request): p50 and p99 from each response's own timing.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import autocannon from 'autocannon';
import pg from 'pg';
import { authorization } from './auth.js';

const SYNTHEA_DIR = new URL('../../shared/data/synthea/', import.meta.url).pathname;
const BUNDLE_SIZE = 1_000;
const SYNTHEA_CONCURRENCY = 4;
const LOAD_CONCURRENCY = 3;
const PATIENTS = 10_000;
const SEARCH_RATE = 50;
const SEARCH_SECONDS = 20;
const CODES = ['8867-4', '8480-6', '8462-4', '29463-7', '8302-2', '39156-5', '9279-1', '2708-6', '8310-5', '55423-8'];
const FAMILIES = ['Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'Garcia', 'Miller', 'Davis', 'Rodriguez', 'Martinez', 'Hernandez', 'Lopez', 'Gonzalez', 'Wilson', 'Anderson', 'Thomas', 'Taylor', 'Moore', 'Jackson', 'Martin'];

export interface SearchPhaseResult {
  synthea: { bundles: number; resources: number; concurrency: number; seconds: number; resourcesPerSecond: number; coldResourcesPerSecond: number };
  load: { observations: number; patients: number; seconds: number; resourcesPerSecond: number };
  database: { resources: number; bytes: number; bytesPerMillionResources: number; vacuumSeconds: number };
  searches: { name: string; example: string; rate: number; requests: number; non2xx: number; errors: number; p50: number; p99: number; max: number }[];
}

/** A deterministic pseudo-random sequence, so every run loads the same data. */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

async function postBundle(baseUrl: string, bundle: unknown): Promise<number> {
  const response = await fetch(`${baseUrl}/fhir`, {
    method: 'POST',
    headers: { 'content-type': 'application/fhir+json', prefer: 'return=minimal', authorization: authorization() },
    body: typeof bundle === 'string' ? bundle : JSON.stringify(bundle),
  });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`transaction answered ${response.status}: ${text.slice(0, 500)}`);
  return (JSON.parse(text) as { entry?: unknown[] }).entry?.length ?? 0;
}

function observation(rnd: () => number, i: number): object {
  const code = CODES[i % CODES.length] as string;
  const day = Math.floor(rnd() * 3650);
  const date = new Date(Date.UTC(2016, 0, 1) + day * 86_400_000 + Math.floor(rnd() * 86_400) * 1000).toISOString();
  return {
    resourceType: 'Observation',
    status: 'final',
    category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs' }] }],
    code: { coding: [{ system: 'http://loinc.org', code }] },
    subject: { reference: `Patient/bench-p${Math.floor(rnd() * PATIENTS)}` },
    effectiveDateTime: date,
    valueQuantity: { value: Math.round(rnd() * 2000) / 10, unit: '1', system: 'http://unitsofmeasure.org', code: '1' },
  };
}

function patient(rnd: () => number, i: number): object {
  const family = `${FAMILIES[i % FAMILIES.length] as string}${Math.floor(rnd() * 500)}`;
  return { resourceType: 'Patient', id: `bench-p${i}`, name: [{ family, given: ['Alex'] }], gender: i % 2 ? 'male' : 'female', birthDate: '1960-01-01' };
}

function transaction(resources: object[]): object {
  return {
    resourceType: 'Bundle',
    type: 'transaction',
    entry: resources.map((r) => {
      const id = (r as { id?: string }).id;
      const type = (r as { resourceType: string }).resourceType;
      return id ? { resource: r, request: { method: 'PUT', url: `${type}/${id}` } } : { resource: r, request: { method: 'POST', url: type } };
    }),
  };
}

/**
 * The 47 Synthea bundles as transactions, SYNTHEA_CONCURRENCY at a time: once cold (the first use
 * of each resource type compiles its validator), then again, measured warm. Both are reported.
 */
async function loadSynthea(baseUrl: string, log: (s: string) => void): Promise<SearchPhaseResult['synthea']> {
  const files = readdirSync(SYNTHEA_DIR).filter((f) => f.endsWith('.json')).sort();
  const bodies = files.map((f) => readFileSync(join(SYNTHEA_DIR, f), 'utf8'));
  const pass = async (): Promise<{ resources: number; seconds: number }> => {
    const started = performance.now();
    let resources = 0;
    let next = 0;
    await Promise.all(
      Array.from({ length: SYNTHEA_CONCURRENCY }, async () => {
        while (next < bodies.length) {
          const written = await postBundle(baseUrl, bodies[next++]);
          resources += written;
        }
      }),
    );
    return { resources, seconds: (performance.now() - started) / 1000 };
  };
  log(`ingesting ${files.length} Synthea transaction bundles, ${SYNTHEA_CONCURRENCY} at a time: cold, then warm`);
  const cold = await pass();
  const warm = await pass();
  return {
    bundles: files.length,
    resources: warm.resources,
    concurrency: SYNTHEA_CONCURRENCY,
    seconds: warm.seconds,
    resourcesPerSecond: warm.resources / warm.seconds,
    coldResourcesPerSecond: cold.resources / cold.seconds,
  };
}

async function loadObservations(baseUrl: string, observations: number, log: (s: string) => void): Promise<SearchPhaseResult['load']> {
  const rnd = random(20261123);
  const started = performance.now();
  const patients = Array.from({ length: PATIENTS }, (_, i) => patient(rnd, i));
  for (let i = 0; i < patients.length; i += BUNDLE_SIZE) await postBundle(baseUrl, transaction(patients.slice(i, i + BUNDLE_SIZE)));
  let next = 0;
  let done = 0;
  let lastLog = performance.now();
  const worker = async (): Promise<void> => {
    while (next < observations) {
      const from = next;
      next += BUNDLE_SIZE;
      const batch = Array.from({ length: Math.min(BUNDLE_SIZE, observations - from) }, (_, k) => observation(rnd, from + k));
      await postBundle(baseUrl, transaction(batch));
      done += batch.length;
      if (performance.now() - lastLog > 30_000) {
        lastLog = performance.now();
        log(`  ${done.toLocaleString('en-US')} Observations loaded (${Math.round(done / ((lastLog - started) / 1000))}/s)`);
      }
    }
  };
  log(`loading ${PATIENTS.toLocaleString('en-US')} Patients and ${observations.toLocaleString('en-US')} Observations in transactions of ${BUNDLE_SIZE}`);
  await Promise.all(Array.from({ length: LOAD_CONCURRENCY }, worker));
  const seconds = (performance.now() - started) / 1000;
  return { observations, patients: PATIENTS, seconds, resourcesPerSecond: (observations + PATIENTS) / seconds };
}

async function measureDatabase(pgUrl: string): Promise<SearchPhaseResult['database']> {
  const client = new pg.Client({ connectionString: pgUrl });
  await client.connect();
  try {
    const started = performance.now();
    await client.query('VACUUM ANALYZE');
    const vacuumSeconds = (performance.now() - started) / 1000;
    const count = await client.query<{ n: string }>('SELECT count(*) AS n FROM resource');
    const size = await client.query<{ bytes: string }>('SELECT pg_database_size(current_database()) AS bytes');
    const resources = Number(count.rows[0]?.n ?? 0);
    const bytes = Number(size.rows[0]?.bytes ?? 0);
    return { resources, bytes, bytesPerMillionResources: (bytes / resources) * 1e6, vacuumSeconds };
  } finally {
    await client.end();
  }
}

interface SearchScenario {
  name: string;
  path: (rnd: () => number) => string;
}

const SCENARIOS: SearchScenario[] = [
  {
    name: 'Observation?subject&code&date=ge&_sort=-date',
    path: (rnd) =>
      `/fhir/Observation?subject=Patient/bench-p${Math.floor(rnd() * PATIENTS)}&code=${encodeURIComponent(`http://loinc.org|${CODES[Math.floor(rnd() * CODES.length)] as string}`)}` +
      `&date=ge${2016 + Math.floor(rnd() * 9)}-01-01&_sort=-date`,
  },
  {
    name: 'Observation?code&value-quantity=gt',
    path: (rnd) => `/fhir/Observation?code=${encodeURIComponent(`http://loinc.org|${CODES[Math.floor(rnd() * CODES.length)] as string}`)}&value-quantity=gt${Math.floor(rnd() * 200)}`,
  },
  {
    name: 'Patient?name',
    path: (rnd) => `/fhir/Patient?name=${(FAMILIES[Math.floor(rnd() * FAMILIES.length)] as string).toLowerCase()}${Math.floor(rnd() * 500)}`,
  },
];

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

async function measureSearch(baseUrl: string, scenario: SearchScenario): Promise<SearchPhaseResult['searches'][number]> {
  const rnd = random(42);
  const latencies: number[] = [];
  const example = scenario.path(random(1));
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon(
      {
        url: baseUrl,
        connections: 1,
        overallRate: SEARCH_RATE,
        duration: SEARCH_SECONDS,
        requests: [{ method: 'GET', headers: { authorization: authorization() }, setupRequest: (req) => ({ ...req, path: scenario.path(rnd) }) }],
      },
      (error: unknown, res: autocannon.Result) => (error ? reject(error instanceof Error ? error : new Error(JSON.stringify(error))) : resolve(res)),
    );
    // Each response's own time (sub-millisecond), not autocannon's whole-millisecond histogram.
    instance.on('response', (_client, _status, _bytes, responseTime) => {
      latencies.push(responseTime);
    });
  });
  latencies.sort((a, b) => a - b);
  return {
    name: scenario.name,
    example,
    rate: result.requests.total / SEARCH_SECONDS,
    requests: result.requests.total,
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    max: latencies[latencies.length - 1] ?? NaN,
  };
}

export async function runSearchPhase(baseUrl: string, pgUrl: string, observations: number, log: (s: string) => void): Promise<SearchPhaseResult> {
  const synthea = await loadSynthea(baseUrl, log);
  const load = await loadObservations(baseUrl, observations, log);
  log('VACUUM ANALYZE and database size');
  const database = await measureDatabase(pgUrl);
  const searches: SearchPhaseResult['searches'] = [];
  for (const scenario of SCENARIOS) {
    log(`search ${scenario.name} at ${SEARCH_RATE}/s for ${SEARCH_SECONDS} s`);
    searches.push(await measureSearch(baseUrl, scenario));
  }
  return { synthea, load, database, searches };
}
