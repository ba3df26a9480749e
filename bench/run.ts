/**
 * `npm run bench`: builds the server, starts it as a child process (`node dist/main.js`) and
 * drives it with autocannon from this process, so that server and load generator are separate
 * processes (on the same machine: they compete for its CPUs, see `cpu` in the results).
 *
 *   0. the audit log's cost: scenarios 1 and 2 (c=1) on a server with AUDIT=off and on one as
 *      deployed, BENCH_AUDIT_PAIRS (5) alternated pairs, judged on the median (runAuditPairs), with
 *      authentication's work per request added (bench/auth-cost.ts)           — PostgreSQL
 *   1. create Observation, 16 connections, 3 s warm-up + 15 s measured   — PostgreSQL
 *   2. read Observation by id at 500 requests/s for 15 s, round-robin
 *      over 2,000 Observations created beforehand, with 1 connection
 *      (judged) and with 10 (bursty, for information; see READ_CONNECTIONS) — PostgreSQL
 *   3. MET assessment documents of 10 measurements, 8 connections, each a new document of one
 *      of 100 clients with two goals (bench/met-documents.ts)              — PostgreSQL
 *   4. inbound HL7 v2 ADT over MLLP (bench/hl7.ts, BENCH_HL7_MESSAGES)    — PostgreSQL
 *   5. outbound: progress reports queued with $send-summary and delivered by the server's worker
 *      to an EHR (a second server on its own database) over FHIR; documents/s, PDF rendering
 *      time (bench/delivery.ts, BENCH_SUMMARIES)                           — PostgreSQL
 *   6. search at scale (bench/search-phase.ts, BENCH_OBSERVATIONS)         — PostgreSQL
 *   7. scenario 1 again                                                    — embedded PGlite
 *
 * PostgreSQL: a fresh database bench_<timestamp> on the server named by BENCH_PG_URL (default
 * postgres://postgres@127.0.0.1:5432/postgres), and bench_<timestamp>_ehr for the outbound
 * phase's EHR, dropped at the end. PGlite: a fresh temporary
 * DATA_DIR, removed at the end. The server's peak RSS is sampled from /proc/<pid>/status every
 * 250 ms. Prints a table to stdout (progress goes to stderr), writes bench/results/<timestamp>.json
 * and the server logs to bench/results/server-<timestamp>-<engine>.log.
 *
 * Exit status: 0 when the run completed, whether or not the targets were met (missed targets are
 * printed as MISSED); 1 when the run itself failed (build, server start or stop, database, load),
 * or when the outbound phase lost, duplicated or misfiled a document.
 *
 * Optional environment: BENCH_PG_URL, BENCH_DURATION_S (15), BENCH_WARMUP_S (3), BENCH_AUDIT_PAIRS (5),
 * BENCH_OBSERVATIONS (see search-phase.ts), BENCH_HL7_MESSAGES (3000), BENCH_SUMMARIES (1000; 0
 * skips the outbound phase), BENCH_ONLY=delivery (only the outbound phase) or audit (only the
 * audit log's pairs), BENCH_KEEP_DB=1 (keep
 * the PostgreSQL databases, to look at their plans afterwards; drop them yourself).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import os from 'node:os';
import { dirname, join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import pg from 'pg';
import { MET_CLIENTS, MET_CONNECTIONS, metRequests, seedMet, TARGET_MET_DPS, TARGET_MET_P99_MS } from './met-documents.js';
import { runSearchPhase, type SearchPhaseResult } from './search-phase.js';
import { authorization, registerBenchClient, routeHl7, runAdmin, startAuth, stopAuth, type BenchClient } from './auth.js';
import { HL7_FACILITY, runHl7Phase, type Hl7Result } from './hl7.js';
import { measureAuthCost, type AuthCost } from './auth-cost.js';
import { machineCpu, median, openWindow, percentile, readRssKiB, round, RSS_SAMPLE_MS, type CpuFigures } from './proc.js';
import { EHR_SCOPES, EHR_TENANT, PDF_RENDERINGS, runDeliveryPhase, SUMMARY_CONCURRENCY, SUMMARY_PATIENTS, type DeliveryResult, type EhrPeer } from './delivery.js';

// ---------------------------------------------------------------------------------------------
// Settings and targets

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const RESULTS_DIR = join(ROOT, 'bench', 'results');

const DURATION_S = positiveInt('BENCH_DURATION_S', 15);
const WARMUP_S = positiveInt('BENCH_WARMUP_S', 3);
const PG_ADMIN_URL = process.env.BENCH_PG_URL || 'postgres://postgres@127.0.0.1:5432/postgres';

const CREATE_CONNECTIONS = 16;
const READ_RATE = 500;
/** Issue #5: authentication and audit add at most this share to create throughput and read p99. */
const AUDIT_COST_MAX = 0.15;
/**
 * autocannon's rate limit is per connection and per second: each connection sends its share of
 * READ_RATE back to back (each request as soon as the previous answer arrives) at the start of
 * every second, then waits for the next second. It never spaces requests evenly. So the read
 * scenario runs twice:
 *  - READ_CONNECTIONS = 1: 500 sequential requests a second, never two at once: the server's own
 *    latency at that rate, close to evenly spaced arrivals (which would add a little queueing).
 *    The read target is judged on this one; a server too slow for 500/s cannot reach the rate.
 *  - READ_BURST_CONNECTIONS = 10 (autocannon's default): bursts of 10 concurrent requests until
 *    the second's 500 are done, i.e. queueing behind up to 9 others: for information.
 */
const READ_CONNECTIONS = 1;
const READ_BURST_CONNECTIONS = 10;
const SEED_COUNT = 2_000;
const SEED_CONCURRENCY = 16;
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 20_000;

const TARGET_CREATE_RPS = 1_500;
const TARGET_READ_P99_MS = 5;
/** The rate the read scenario must reach for its latency to count as "at 500/s". */
const READ_RATE_TOLERANCE = 0.98;
/** The issue's 300 MB (10^6 bytes), in MiB: RSS is read from /proc in KiB. */
const TARGET_RSS_MIB = 300e6 / 2 ** 20;
/** Observations loaded for the search scenarios; 0 skips the search phase. */
const OBSERVATIONS = Number(process.env.BENCH_OBSERVATIONS ?? 1_000_000);
const TARGET_INGEST_RPS = 2_000;
/** Issue #6: inbound ADT with DG1 over one MLLP connection, acknowledged. */
const TARGET_HL7_MPS = 500;
const HL7_MESSAGES = Number(process.env.BENCH_HL7_MESSAGES ?? 3000);
/** Messages in flight in the pipelined HL7 scenario. */
const HL7_WINDOW = 32;
const TARGET_SEARCH_P99_MS = 20;
/** Issue #6, outbound: progress reports queued with $send-summary and delivered to an EHR; 0 skips the phase. */
const SUMMARIES = wholeNumber('BENCH_SUMMARIES', 1_000);
/**
 * BENCH_ONLY=delivery: only the outbound delivery phase (the server on PostgreSQL, its EHR peer);
 * BENCH_ONLY=audit: only the audit log's alternated pairs (issue #5).
 */
const ONLY = process.env.BENCH_ONLY || undefined;
if (ONLY !== undefined && ONLY !== 'delivery' && ONLY !== 'audit') throw new Error(`BENCH_ONLY=${ONLY} is invalid: expected delivery or audit (or unset for every phase)`);
if (ONLY === 'delivery' && SUMMARIES === 0) throw new Error('BENCH_ONLY=delivery with BENCH_SUMMARIES=0 would measure nothing');
/**
 * Issue #5: pairs of create and read runs with AUDIT=off and as deployed, alternated (off first,
 * then on first, …), each configuration on a database of its own; the audit's cost is judged on the
 * median pair. One pair per configuration varied by ±15 % between runs on this machine.
 */
const AUDIT_PAIRS = positiveInt('BENCH_AUDIT_PAIRS', 5);
/** Foreign CPU load (in % of one core) above which a scenario's figures are flagged as disturbed. */
const OTHER_CPU_WARNING_PCT = 15;

const FHIR_JSON = 'application/fhir+json';

function positiveInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < 1) throw new Error(`${name}=${raw} is invalid: expected a whole number ≥ 1`);
  return Number(raw);
}

function wholeNumber(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw)) throw new Error(`${name}=${raw} is invalid: expected a whole number ≥ 0`);
  return Number(raw);
}

function log(message: string): void {
  process.stderr.write(`[bench] ${message}\n`);
}

// ---------------------------------------------------------------------------------------------
// Result shapes

type Engine = 'postgresql' | 'pglite';

interface ScenarioResult {
  id: string;
  name: string;
  engine: Engine;
  mode: 'closed-loop' | 'fixed-rate';
  connections: number;
  targetRate?: number;
  warmupS: number;
  durationS: number;
  requestsPerSecond: { mean: number; median: number; min: number; max: number; samples: number };
  totalResponses: number;
  /** Responses divided by the measured duration. */
  achievedRate: number;
  /** From every response's own time (sub-millisecond resolution), not autocannon's integer-ms histogram. */
  latencyMs: { median: number; p90: number; p99: number; max: number; mean: number; samples: number };
  /** autocannon's own histogram (whole milliseconds), for reference. */
  autocannonLatencyMs: { p50: number; p99: number; max: number };
  non2xx: number;
  errors: number;
  timeouts: number;
  statusCodes: Record<string, number>;
  peakRssMiB: number;
  rssSamples: number;
  cpu: CpuFigures;
}

interface TargetResult {
  name: string;
  target: string;
  actual: string;
  pass: boolean;
}

interface Report {
  startedAt: string;
  finishedAt?: string;
  ok: boolean;
  error?: string;
  commit?: string;
  machine: {
    cpus: number;
    cpuModel: string;
    totalMemoryBytes: number;
    totalMemoryGiB: number;
    platform: string;
    release: string;
    loadAverage: number[];
    /** All cores' busy time during one second before the run, in %: other workloads on the machine. */
    busyBeforeStartPct: number;
  };
  node: string;
  loadGenerator: { name: string; version: string; process: string };
  server: { command: string; env: Record<string, string> };
  databases: { postgresql?: Record<string, string>; ehr?: Record<string, string>; pglite?: { version: string } };
  settings: Record<string, number | string>;
  scenarios: ScenarioResult[];
  /** Ingest, bulk load and search at scale on PostgreSQL (bench/search-phase.ts). */
  search?: SearchPhaseResult;
  /** Inbound HL7 v2 ADT over one MLLP connection on PostgreSQL (bench/hl7.ts). */
  hl7?: Hl7Result;
  /** The same, with HL7_WINDOW messages in flight (a sender that does not wait for each ACK). */
  hl7Pipelined?: Hl7Result;
  /** Outbound: progress reports queued and delivered to an EHR over FHIR, on PostgreSQL (bench/delivery.ts). */
  delivery?: DeliveryResult;
  pgliteToPostgresqlCreateRatio?: number;
  /** Issue #5: alternated pairs of runs with AUDIT=off and as deployed (runAuditPairs). */
  audit?: AuditComparison;
  targets: TargetResult[];
  allTargetsMet?: boolean;
  /** The server's RSS once ready, before any load, per engine. */
  idleRssMiB: Partial<Record<Engine, number>>;
  files: { results: string; serverLogs: string[] };
}

interface AuditPair {
  /** Which configuration ran first in this pair. */
  first: 'off' | 'on';
  createPerSecond: { off: number; on: number };
  readP99Ms: { off: number; on: number };
  /** 1 - on/off creates per second. */
  createCost: number;
  /** on/off read p99, - 1. */
  readCost: number;
  /** The deployed server's CPU per request (its CPU share over the requests served), in ms. */
  serverCpuMsPerRequest: { create: number; read: number };
  /**
   * With authentication's work counted too (measureAuthCost): against a server without either,
   * whose requests would each take auth.perRequestUs less CPU (creates: the server is the bound,
   * so that many more per second) and less time (the read p99).
   */
  createCostWithAuth: number;
  readCostWithAuth: number;
}

interface AuditComparison {
  pairs: AuditPair[];
  createCostMedian: number;
  readCostMedian: number;
  /** Authentication's own cost per request and per token (bench/auth-cost.ts), measured after the pairs. */
  auth: AuthCost;
  /** Issue #5's figures: authentication and audit together (AuditPair), medians over the pairs. */
  createCostWithAuthMedian: number;
  readCostWithAuthMedian: number;
}

// ---------------------------------------------------------------------------------------------
// Cleanup: everything started is registered here and undone in reverse order, also on Ctrl-C.

const cleanups: Array<{ name: string; run: () => Promise<void> }> = [];

async function runCleanups(): Promise<string[]> {
  const problems: string[] = [];
  while (cleanups.length > 0) {
    const cleanup = cleanups.pop();
    if (!cleanup) break;
    try {
      await cleanup.run();
    } catch (error) {
      problems.push(`${cleanup.name}: ${message(error)}`);
    }
  }
  return problems;
}

function message(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === 'string' ? error : (JSON.stringify(error) ?? 'unknown error');
}

// ---------------------------------------------------------------------------------------------
// Build, free port, server child process

function build(): void {
  log('building (npm run build)…');
  const started = Date.now();
  const result = spawnSync('npm', ['run', 'build', '--silent'], { cwd: ROOT, encoding: 'utf8' });
  if (result.error) throw new Error(`build could not run: ${result.error.message}`);
  if (result.status !== 0) {
    process.stderr.write(result.stdout);
    process.stderr.write(result.stderr);
    throw new Error(`build failed (exit ${result.status ?? result.signal ?? '?'})`);
  }
  log(`built in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.unref();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      probe.close(() => (port ? resolve(port) : reject(new Error('no free port'))));
    });
  });
}

interface ServerProcess {
  child: ChildProcess;
  pid: number;
  url: string;
  logPath: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stop(): Promise<void>;
}

/** The node flags of package.json's start script (`node <flags> dist/main.js`), so the bench runs the server as deployed. */
function startScriptNodeFlags(): string[] {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  const match = /\bnode((?: --[^\s]+)*) dist\/main\.js/.exec(pkg.scripts.start ?? '');
  if (!match) throw new Error('package.json start script does not run `node … dist/main.js`');
  return (match[1] ?? '').trim().split(/\s+/).filter(Boolean);
}

/** The server is started exactly as `npm start` starts it (package.json's start script). */
const SERVER_NODE_FLAGS = startScriptNodeFlags();
// One bench client sends far more than a client's default rate (6,000/min): the limiter still runs, with a budget it never reaches.
// In production EHR connections reach public addresses only: the bench's EHR is on loopback.
const SERVER_ENV = {
  HOST: '127.0.0.1',
  LOG_LEVEL: 'warn',
  NODE_ENV: 'production',
  HL7_PORT: '0',
  RATE_LIMIT_PER_MINUTE: '10000000',
  RATE_LIMIT_BURST: '10000000',
  EHR_ALLOWED_HOSTS: 'localhost,127.0.0.0/8,::1',
};

/** `name`: how messages call the server (its engine, or `EHR`). */
async function startServerProcess(name: string, dbEnv: Record<string, string>, logPath: string): Promise<ServerProcess> {
  const port = await freePort();
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const name of ['DATABASE_URL', 'DATA_DIR', 'PORT', 'BASE_URL', 'DB_POOL_SIZE']) delete env[name];
  Object.assign(env, SERVER_ENV, { PORT: String(port) }, dbEnv);

  // The server writes its logs straight into the file: they never reach this process or the table.
  const logFd = openSync(logPath, 'a');
  const child = spawn(process.execPath, [...SERVER_NODE_FLAGS, 'dist/main.js'], { cwd: ROOT, env, stdio: ['ignore', logFd, logFd] });
  closeSync(logFd);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const spawned = new Promise<void>((resolve, reject) => {
    child.once('spawn', () => resolve());
    child.once('error', reject);
  });
  await spawned;
  const pid = child.pid;
  if (pid === undefined) throw new Error('server process has no pid');
  let running = true;
  void exited.then(() => {
    running = false;
  });

  const stop = async (): Promise<void> => {
    if (!running) return;
    child.kill('SIGTERM');
    const timer = sleep(STOP_TIMEOUT_MS).then(() => 'timeout' as const);
    const outcome = await Promise.race([exited, timer]);
    if (outcome === 'timeout') {
      child.kill('SIGKILL');
      await exited;
      throw new Error(`${name} server did not stop within ${STOP_TIMEOUT_MS / 1000} s of SIGTERM (killed)`);
    }
    if (outcome.code !== 0) {
      throw new Error(`${name} server exited with ${outcome.code ?? outcome.signal} after SIGTERM; see ${relative(ROOT, logPath)}`);
    }
  };
  cleanups.push({ name: `stop ${name} server`, run: stop });

  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (!running) {
      const { code, signal } = await exited;
      throw new Error(`${name} server exited during start (${code ?? signal}):\n${tail(logPath)}`);
    }
    try {
      const response = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2_000) });
      if (response.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${name} server not ready within ${START_TIMEOUT_MS / 1000} s:\n${tail(logPath)}`);
    await sleep(100);
  }
  return { child, pid, url, logPath, exited, stop };
}

function tail(path: string, lines = 20): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no server log)';
  }
}

// Load

interface LoadRun {
  result: autocannon.Result;
  latenciesMs: number[];
}

function runLoad(options: autocannon.Options): Promise<LoadRun> {
  return new Promise((resolve, reject) => {
    const latenciesMs: number[] = [];
    const instance = autocannon(options, (error: unknown, result: autocannon.Result) => {
      if (error) reject(error instanceof Error ? error : new Error(message(error)));
      else resolve({ result, latenciesMs });
    });
    instance.on('response', (_client, _status, _bytes, responseTime) => {
      latenciesMs.push(responseTime);
    });
  });
}

/** A heart-rate Observation in the shape of the FHIR R4 vital-signs profile. */
function heartRate(i: number): string {
  const effective = new Date(Date.UTC(2025, 0, 1) + i * 60_000).toISOString();
  return JSON.stringify({
    resourceType: 'Observation',
    status: 'final',
    category: [
      {
        coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs', display: 'Vital Signs' }],
        text: 'Vital Signs',
      },
    ],
    code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }], text: 'Heart rate' },
    subject: { reference: `Patient/bench-patient-${(i % 50) + 1}` },
    effectiveDateTime: effective,
    valueQuantity: { value: 55 + ((i * 7) % 60), unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
  });
}

const BODIES = Array.from({ length: 1_000 }, (_, i) => heartRate(i));

function createRequests(): autocannon.Request[] {
  let next = 0;
  return [
    {
      method: 'POST',
      path: '/fhir/Observation',
      headers: { 'content-type': FHIR_JSON, accept: FHIR_JSON, authorization: authorization() },
      setupRequest: (request) => ({ ...request, body: BODIES[next++ % BODIES.length] ?? BODIES[0] }),
    },
  ];
}

function readRequests(ids: string[]): autocannon.Request[] {
  const paths = ids.map((id) => `/fhir/Observation/${id}`);
  let next = 0;
  return [
    {
      method: 'GET',
      path: paths[0] ?? '/fhir/Observation',
      headers: { accept: FHIR_JSON, authorization: authorization() },
      setupRequest: (request) => ({ ...request, path: paths[next++ % paths.length] ?? paths[0] }),
    },
  ];
}

interface ScenarioSpec {
  id: string;
  name: string;
  engine: Engine;
  connections: number;
  overallRate?: number;
  /** The PostgreSQL database the server uses, to account its backends' CPU time. */
  postgresDatabase?: string;
  requests: () => autocannon.Request[];
}

async function runScenario(server: ServerProcess, spec: ScenarioSpec): Promise<ScenarioResult> {
  const base: autocannon.Options = {
    url: server.url,
    connections: spec.connections,
    // autocannon's coordinated-omission correction assumes an interval of ceil(1 / per-connection
    // rate) = 1 ms and would invent samples; the raw times are recorded instead.
    ...(spec.overallRate ? { overallRate: spec.overallRate, ignoreCoordinatedOmission: true } : {}),
    timeout: 10,
  };
  log(`${spec.name} on ${spec.engine}: warm-up ${WARMUP_S} s`);
  const warm = await runLoad({ ...base, duration: WARMUP_S, requests: spec.requests() });
  if (warm.result['2xx'] === 0) throw new Error(`${spec.name} on ${spec.engine}: no successful response during warm-up (${JSON.stringify(warm.result.statusCodeStats)}, ${warm.result.errors} errors)`);

  log(`${spec.name} on ${spec.engine}: measuring ${DURATION_S} s`);
  const window = openWindow(server.pid, spec.postgresDatabase);
  const run = await runLoad({ ...base, duration: DURATION_S, requests: spec.requests() });
  const { peakRssMiB, rssSamples, cpu } = window.end();
  const { result } = run;
  if (result['2xx'] === 0) throw new Error(`${spec.name} on ${spec.engine}: no successful response (${JSON.stringify(result.statusCodeStats)}, ${result.errors} errors)`);

  const sorted = Float64Array.from(run.latenciesMs).sort();
  const latencies = Array.from(sorted);
  const total = latencies.length;
  const mean = total ? latencies.reduce((sum, value) => sum + value, 0) / total : 0;
  const statusCodes: Record<string, number> = {};
  for (const [code, stats] of Object.entries(result.statusCodeStats ?? {})) statusCodes[code] = stats.count ?? 0;
  const samples = (result as autocannon.Result & { samples?: number }).samples ?? 0;

  return {
    id: spec.id,
    name: spec.name,
    engine: spec.engine,
    mode: spec.overallRate ? 'fixed-rate' : 'closed-loop',
    connections: spec.connections,
    ...(spec.overallRate ? { targetRate: spec.overallRate } : {}),
    warmupS: WARMUP_S,
    durationS: result.duration,
    requestsPerSecond: {
      mean: round(result.requests.mean, 1),
      median: result.requests.p50,
      min: result.requests.min,
      max: result.requests.max,
      samples,
    },
    totalResponses: total,
    achievedRate: round(total / result.duration, 1),
    latencyMs: {
      median: round(percentile(latencies, 50), 2),
      p90: round(percentile(latencies, 90), 2),
      p99: round(percentile(latencies, 99), 2),
      max: round(percentile(latencies, 100), 2),
      mean: round(mean, 2),
      samples: total,
    },
    autocannonLatencyMs: { p50: result.latency.p50, p99: result.latency.p99, max: result.latency.max },
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    statusCodes,
    peakRssMiB,
    rssSamples,
    cpu,
  };
}

/** Creates `count` Observations through the API (not measured) and returns their ids. */
async function seed(url: string, count: number): Promise<string[]> {
  const ids: string[] = new Array<string>(count);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < count; i = next++) {
      const response = await fetch(`${url}/fhir/Observation`, {
        method: 'POST',
        headers: { 'content-type': FHIR_JSON, accept: FHIR_JSON, authorization: authorization() },
        body: heartRate(100_000 + i),
      });
      const text = await response.text();
      if (response.status !== 201) throw new Error(`seeding: POST /fhir/Observation answered ${response.status}: ${text.slice(0, 300)}`);
      const id = (JSON.parse(text) as { id?: unknown }).id;
      if (typeof id !== 'string') throw new Error('seeding: created Observation has no id');
      ids[i] = id;
    }
  };
  await Promise.all(Array.from({ length: SEED_CONCURRENCY }, worker));
  return ids;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL database and environment facts

async function withAdmin<T>(work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 5_000 });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

/**
 * What the audit log costs (issue #5): a server with AUDIT=off (allowed outside production only)
 * and one as deployed, each on a fresh database of its own with SEED_COUNT Observations to read,
 * then AUDIT_PAIRS pairs of the create and read scenarios, one configuration after the other, the
 * order alternated from pair to pair so that a drift of the machine's speed during the phase
 * weighs on both. Both servers run throughout (the idle one costs nothing); the bench's token is
 * fetched from the server each run addresses. Scenarios go to `scenarios` as they run.
 */
async function runAuditPairs(dbName: string, dataDir: string, logPath: string, scenarios: ScenarioResult[]): Promise<AuditComparison> {
  const configs = [];
  for (const label of ['off', 'on'] as const) {
    const name = `${dbName}_audit_${label}`;
    log(`creating database ${name} (AUDIT=${label})`);
    await createBenchDatabase(name);
    cleanups.push({ name: `drop database ${name}`, run: () => dropBenchDatabase(name) });
    const url = new URL(PG_ADMIN_URL);
    url.pathname = `/${name}`;
    const env = { DATABASE_URL: url.toString(), DATA_DIR: dataDir };
    const client = registerBenchClient(ROOT, env);
    log(`starting server on PostgreSQL with AUDIT=${label}`);
    const server = await startServerProcess('postgresql', label === 'off' ? { ...env, AUDIT: 'off', NODE_ENV: 'development' } : env, logPath);
    await startAuth(server.url, client);
    log(`seeding ${fmt(SEED_COUNT)} Observations (AUDIT=${label})`);
    const ids = await seed(server.url, SEED_COUNT);
    configs.push({ label, name, client, server, ids });
  }
  await checkpoint();
  const measured: Omit<AuditPair, 'createCostWithAuth' | 'readCostWithAuth'>[] = [];
  for (let i = 0; i < AUDIT_PAIRS; i++) {
    const order = i % 2 === 0 ? configs : [...configs].reverse();
    const create: Record<string, number> = {};
    const readP99: Record<string, number> = {};
    const cpuMs = { create: 0, read: 0 };
    for (const c of order) {
      await startAuth(c.server.url, c.client);
      const suffix = `${c.label === 'off' ? ', audit off' : ''}, pair ${i + 1} of ${AUDIT_PAIRS}`;
      const created = await runScenario(c.server, {
        id: `create-postgresql-audit-${c.label}-${i + 1}`,
        name: `create Observation (c=${CREATE_CONNECTIONS})${suffix}`,
        engine: 'postgresql',
        connections: CREATE_CONNECTIONS,
        postgresDatabase: c.name,
        requests: createRequests,
      });
      const read = await runScenario(c.server, {
        id: `read-postgresql-audit-${c.label}-${i + 1}`,
        name: `read by id (${READ_RATE}/s, c=${READ_CONNECTIONS})${suffix}`,
        engine: 'postgresql',
        connections: READ_CONNECTIONS,
        overallRate: READ_RATE,
        postgresDatabase: c.name,
        requests: () => readRequests(c.ids),
      });
      scenarios.push(created, read);
      create[c.label] = created.requestsPerSecond.mean;
      readP99[c.label] = read.latencyMs.p99;
      if (c.label === 'on') {
        cpuMs.create = round((created.cpu.serverPct / 100 / created.requestsPerSecond.mean) * 1000, 4);
        cpuMs.read = round((read.cpu.serverPct / 100 / read.achievedRate) * 1000, 4);
      }
    }
    const createPerSecond = { off: create.off ?? 0, on: create.on ?? 0 };
    const readP99Ms = { off: readP99.off ?? 0, on: readP99.on ?? 0 };
    measured.push({
      first: order[0]?.label ?? 'off',
      createPerSecond,
      readP99Ms,
      createCost: round(1 - createPerSecond.on / createPerSecond.off, 3),
      readCost: round(readP99Ms.on / readP99Ms.off - 1, 3),
      serverCpuMsPerRequest: cpuMs,
    });
  }
  stopAuth();
  for (const c of configs) {
    await c.server.stop();
    await dropBenchDatabase(c.name);
  }
  await checkpoint();
  log('authentication: its work per request and per token, in this process (bench/auth-cost.ts)');
  const auth = await measureAuthCost();
  // The share of a create's server CPU authentication takes: without it, as many more creates
  // per second (the server is their bound); the read p99 without it, that much shorter.
  const pairs: AuditPair[] = measured.map((p) => ({
    ...p,
    createCostWithAuth: round(1 - (p.createPerSecond.on / p.createPerSecond.off) * (1 - auth.perRequestUs / 1000 / p.serverCpuMsPerRequest.create), 3),
    readCostWithAuth: round(p.readP99Ms.on / (p.readP99Ms.off - auth.perRequestUs / 1000) - 1, 3),
  }));
  return {
    pairs,
    createCostMedian: median(pairs.map((p) => p.createCost)),
    readCostMedian: median(pairs.map((p) => p.readCost)),
    auth,
    createCostWithAuthMedian: median(pairs.map((p) => p.createCostWithAuth)),
    readCostWithAuthMedian: median(pairs.map((p) => p.readCostWithAuth)),
  };
}

async function createBenchDatabase(name: string): Promise<Record<string, string>> {
  return withAdmin(async (client) => {
    await client.query(`CREATE DATABASE "${name}"`);
    const facts: Record<string, string> = { database: name };
    for (const setting of ['server_version', 'max_connections', 'shared_buffers', 'synchronous_commit', 'fsync']) {
      const { rows } = await client.query<Record<string, string>>(`SHOW ${setting}`);
      facts[setting] = rows[0]?.[setting] ?? '?';
    }
    return facts;
  });
}

/** Writes every dirty page now, so that no scenario pays for the previous one's checkpoint. */
async function checkpoint(): Promise<void> {
  await withAdmin(async (client) => {
    await client.query('CHECKPOINT');
  });
}

async function dropBenchDatabase(name: string): Promise<void> {
  await withAdmin(async (client) => {
    await client.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  });
}

/**
 * The physician's EHR of the delivery phase: a second server (`node dist/main.js`, DELIVERY=off,
 * no MLLP listener) on its own PostgreSQL database `database`. The measured server's practice is
 * registered there as a SMART Backend Services client with its JWKS URL `metJwksUrl` (private_key_jwt), as
 * README "EHR integration" says; a staff client (system/*.*) seeds it and counts what arrives.
 * NODE_ENV=development: a server fetches a client's JWKS over plain http (here, on loopback) only
 * outside production. The measured server stays in production mode.
 */
async function startEhrPeer(database: string, metJwksUrl: string, logPath: string): Promise<{ server: ServerProcess; peer: EhrPeer }> {
  const dataDir = mkdtempSync(join(os.tmpdir(), 'bench-ehr-keys-'));
  cleanups.push({ name: `remove ${dataDir}`, run: () => rm(dataDir, { recursive: true, force: true }) });
  const databaseUrl = new URL(PG_ADMIN_URL);
  databaseUrl.pathname = `/${database}`;
  const env = { DATABASE_URL: databaseUrl.toString(), DATA_DIR: dataDir, NODE_ENV: 'development', DELIVERY: 'off' };
  runAdmin(ROOT, env, ['tenant', 'create', EHR_TENANT]);
  const staff = JSON.parse(runAdmin(ROOT, env, ['client', 'create', '--tenant', EHR_TENANT, '--name', 'ehr-staff', '--scopes', 'system/*.*'])) as BenchClient;
  const met = JSON.parse(runAdmin(ROOT, env, ['client', 'create', '--tenant', EHR_TENANT, '--name', 'met-fhir-server', '--scopes', EHR_SCOPES, '--jwks-url', metJwksUrl])) as { client_id: string };
  const server = await startServerProcess('EHR', env, logPath);
  // Its BASE_URL is unset, so http://localhost:<port>: its token URL is the audience our assertions must name.
  const base = `http://localhost:${new URL(server.url).port}`;
  return { server, peer: { url: server.url, fhirBase: `${base}/fhir`, tokenUrl: `${base}/auth/token`, metClientId: met.client_id, staff } };
}

/** The installed version of a package (read from its folder: some packages do not export package.json). */
function packageVersion(name: string): string {
  let dir = dirname(createRequire(import.meta.url).resolve(name));
  for (;;) {
    try {
      const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (manifest.name === name && manifest.version) return manifest.version;
    } catch {
      // no package.json here
    }
    const parent = dirname(dir);
    if (parent === dir) return 'unknown';
    dir = parent;
  }
}

function gitCommit(): string | undefined {
  // Read-only: rev-parse neither writes the index nor anything else.
  const result = spawnSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' });
  return result.status === 0 ? result.stdout.trim() : undefined;
}

/** ISO 8601 basic format (no colons, so it is a valid file name everywhere): 20250101T120000Z. */
function basicTimestamp(date: Date): string {
  return date.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}

// ---------------------------------------------------------------------------------------------
// Output

function fmt(value: number, digits = 0): string {
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function printTable(report: Report): void {
  const out: string[] = [];
  const { machine } = report;
  out.push('');
  out.push(`FHIR server benchmark  ${report.startedAt}${report.commit ? `  commit ${report.commit.slice(0, 12)}` : ''}`);
  out.push(`Machine: ${machine.cpus} × ${machine.cpuModel}, ${machine.totalMemoryGiB} GiB RAM, ${machine.platform} ${machine.release}`);
  out.push(`Node ${report.node}; load generator ${report.loadGenerator.name} ${report.loadGenerator.version} in its own process, server = node dist/main.js`);
  out.push(`Note: server, load generator${report.databases.postgresql ? ' and PostgreSQL' : ''} share these ${machine.cpus} CPUs (see CPU columns).`);
  out.push('');

  const header = ['Scenario', 'Engine', 'req/s mean', 'req/s med', 'p50 ms', 'p99 ms', 'non-2xx', 'errors', 'peak RSS', 'CPU srv/gen/pg/other', 'machine'];
  const rows: string[][] = report.scenarios.map((s) => [
    s.name,
    s.engine === 'postgresql' ? 'PostgreSQL' : 'PGlite',
    fmt(s.requestsPerSecond.mean, 1),
    fmt(s.requestsPerSecond.median),
    fmt(s.latencyMs.median, 2),
    fmt(s.latencyMs.p99, 2),
    fmt(s.non2xx),
    fmt(s.errors),
    `${fmt(s.peakRssMiB, 1)} MiB`,
    `${s.cpu.serverPct}/${s.cpu.loadGeneratorPct}/${s.cpu.postgresPct}/${s.cpu.otherPct}%`,
    `${s.cpu.machinePct}%`,
  ]);
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] ?? '').length)));
  const line = (cells: string[]): string =>
    cells.map((cell, column) => (column < 2 ? cell.padEnd(widths[column] ?? 0) : cell.padStart(widths[column] ?? 0))).join('  ');
  if (rows.length > 0) {
    out.push(line(header));
    out.push(widths.map((width) => '-'.repeat(width)).join('  '));
    for (const row of rows) out.push(line(row));
  }
  out.push('');
  out.push('CPU: server process / load generator process / PostgreSQL processes of the bench database / any other process,');
  out.push(`each in % of one core; machine = all ${machine.cpus} cores busy, in %. Latency from every response's own timing;`);
  const idle = Object.entries(report.idleRssMiB).map(([engine, mib]) => `${engine === 'pglite' ? 'PGlite' : 'PostgreSQL'} ${fmt(mib, 1)} MiB`);
  out.push(`RSS = server process only (PGlite runs inside it; PostgreSQL's own memory is not included); at start, idle: ${idle.join(', ') || 'n/a'}.`);
  for (const s of report.scenarios) {
    if (s.cpu.otherPct >= OTHER_CPU_WARNING_PCT) {
      out.push(`WARNING: other processes used ${s.cpu.otherPct}% of a core during "${s.name}" on ${s.engine}; its figures are disturbed.`);
    }
  }
  if (report.machine.busyBeforeStartPct >= OTHER_CPU_WARNING_PCT / machine.cpus) {
    out.push(`WARNING: the machine was already ${report.machine.busyBeforeStartPct}% busy before the run started.`);
  }
  for (const read of report.scenarios.filter((s) => s.mode === 'fixed-rate')) {
    out.push(`${read.name}: target ${fmt(read.targetRate ?? 0)}/s, achieved ${fmt(read.achievedRate, 1)}/s over ${fmt(read.durationS, 1)} s.`);
  }
  if (report.scenarios.some((s) => s.mode === 'fixed-rate')) {
    out.push('  (autocannon sends each connection\'s share back to back at the start of every second: with c=1 one at a');
    out.push('  time, with c=10 in bursts of 10 concurrent requests. The read target is judged on c=1.)');
  }
  if (report.pgliteToPostgresqlCreateRatio !== undefined) {
    out.push(`PGlite create throughput = ${report.pgliteToPostgresqlCreateRatio.toFixed(2)} × PostgreSQL's.`);
  }
  if (report.search) {
    const s = report.search;
    out.push('');
    out.push('Ingest and search at scale (PostgreSQL)');
    out.push(`  Synthea: ${s.synthea.bundles} transaction bundles (${fmt(s.synthea.resources)} resources), ${s.synthea.concurrency} at a time: warm ${fmt(s.synthea.resourcesPerSecond)} resources/s (${fmt(s.synthea.seconds, 1)} s), cold (first pass) ${fmt(s.synthea.coldResourcesPerSecond)} resources/s`);
    out.push(`  Load: ${fmt(s.load.observations)} Observations + ${fmt(s.load.patients)} Patients in ${fmt(s.load.seconds, 0)} s = ${fmt(s.load.resourcesPerSecond)} resources/s (transactions of 1,000, 3 in flight)`);
    out.push(`  Database: ${fmt(s.database.resources)} resources, ${fmt(s.database.bytes / 2 ** 20, 0)} MiB = ${fmt(s.database.bytesPerMillionResources / 2 ** 30, 2)} GiB per million resources (VACUUM ANALYZE ${fmt(s.database.vacuumSeconds, 0)} s)`);
    for (const q of s.searches) {
      out.push(`  ${q.name.padEnd(46)} ${fmt(q.rate, 1)}/s  p50 ${fmt(q.p50, 2)} ms  p99 ${fmt(q.p99, 2)} ms  max ${fmt(q.max, 1)} ms  non-2xx ${q.non2xx}  errors ${q.errors}`);
    }
    out.push(`  e.g. ${s.searches[0]?.example ?? ''}`);
  }
  if (report.delivery) printDelivery(out, report.delivery, machine.cpus);
  out.push('');
  out.push('Targets');
  for (const target of report.targets) {
    out.push(`  ${target.pass ? 'PASS  ' : 'MISSED'}  ${target.name} (${target.target}): ${target.actual}`);
  }
  out.push('');
  out.push(report.allTargetsMet ? 'All targets met.' : '*** MISSED: not every target was met (see above). This is a measurement; the run itself succeeded. ***');
  out.push(`Results: ${report.files.results}`);
  out.push('');
  process.stdout.write(out.join('\n') + '\n');
}

function printDelivery(out: string[], d: DeliveryResult, cpus: number): void {
  const cpu = (c: CpuFigures): string => `CPU srv/gen/pg/ehr/other ${c.serverPct}/${c.loadGeneratorPct}/${c.postgresPct}/${c.peerPct ?? 0}/${c.otherPct}%, machine ${c.machinePct}% of ${cpus}`;
  const cpuMs = (c: { server: number; postgres: number; ehr: number }): string => `server ${fmt(c.server, 1)}, PostgreSQL ${fmt(c.postgres, 1)}, EHR ${fmt(c.ehr, 1)}`;
  const ms = (l: { p50: number; p99: number }): string => `p50 ${fmt(l.p50, 0)} ms, p99 ${fmt(l.p99, 0)} ms`;
  const s = (l: { p50: number; p99: number }): string => `p50 ${fmt(l.p50 / 1000, 1)} s, p99 ${fmt(l.p99 / 1000, 1)} s`;
  const { queue: q, delivery: t, verification: v } = d;
  const attempts = Object.entries(t.attempts).map(([n, tasks]) => `${fmt(tasks)} on attempt ${n}`).join(', ');
  out.push('');
  out.push('Outbound: progress reports to a physician\'s EHR over FHIR (PostgreSQL; the EHR = a second server on its own database)');
  out.push(`  ${fmt(d.patients)} clients, ${d.resourcesPerPatient} resources each (3 diagnoses, 2 goals, a program, 7 measures × 7 assessments, 24 sessions, 1 adverse event)`);
  out.push(`  Alone:    ${d.alone.calls} $send-summary one at a time: ${ms(d.alone.latencyMs)}; queued → delivered ${s(d.alone.queuedToDeliveredMs)}`);
  out.push(`  Queue:    ${fmt(d.summaries)} $send-summary, ${d.concurrency} at a time: ${fmt(q.summariesPerSecond, 1)} summaries/s (${fmt(q.seconds, 1)} s); ${ms(q.latencyMs)}, max ${fmt(q.latencyMs.max, 0)} ms`);
  out.push(`            CPU ms per summary: ${cpuMs(q.cpuMsPerSummary)} (the worker delivering alongside); peak RSS ${fmt(q.peakRssMiB, 1)} MiB; ${cpu(q.cpu)}`);
  out.push(`  Delivery: ${fmt(d.summaries)} documents in ${fmt(t.seconds, 1)} s from the first call to the last Task completed = ${fmt(t.documentsPerSecond, 1)} documents/s; ${fmt(t.deliveredWhileQueueing)} delivered while queueing`);
  out.push(`            drain after the last call: ${fmt(d.summaries - t.deliveredWhileQueueing)} in ${fmt(t.drainSeconds, 1)} s = ${fmt(t.drainDocumentsPerSecond, 1)} documents/s; CPU ms per document: ${cpuMs(t.drainCpuMsPerDocument)}`);
  out.push(`            ${cpu(t.drainCpu)}; queued → delivered ${s(t.queuedToDeliveredMs)}; ${attempts}`);
  out.push(`  Verified: ${fmt(v.documentsAtEhr)} DocumentReferences at the EHR for ${fmt(v.tasksCompleted)} completed Tasks (${d.before} before the measured ones): ${v.ok ? 'each report exactly once, on the EHR\'s Patient of its MRN' : `${v.missing} missing, ${v.duplicates} duplicates, ${v.unexpected} unexpected, ${v.wrongSubject} wrong subject`}`);
  out.push(`  PDF:      renderPdf in-process × ${d.pdf.renderings}: median ${fmt(d.pdf.medianMs, 1)} ms, p99 ${fmt(d.pdf.p99Ms, 1)} ms per report; ${fmt(d.pdf.bytes / 1024, 1)} KiB, ${d.pdf.pages} pages${d.pdf.sameBytesAsServer ? ' (byte for byte the server\'s PDF)' : ' (NOT the same bytes as the server\'s PDF: the bench\'s input differs)'}`);
  for (const [window, c] of [['queueing', q.cpu], ['drain', t.drainCpu]] as const) {
    if (c.otherPct >= OTHER_CPU_WARNING_PCT) out.push(`  WARNING: other processes used ${c.otherPct}% of a core during the ${window}; its figures are disturbed (CPU ms per item much less so).`);
  }
}

function evaluateTargets(report: Report): TargetResult[] {
  const targets: TargetResult[] = [];
  const pgCreate = report.scenarios.find((s) => s.id === 'create-postgresql');
  const pgRead = report.scenarios.find((s) => s.id === 'read-postgresql');
  if (pgCreate) {
    targets.push({
      name: 'create throughput on PostgreSQL',
      target: `≥ ${fmt(TARGET_CREATE_RPS)} req/s (mean of per-second samples)`,
      actual: `${fmt(pgCreate.requestsPerSecond.mean, 1)} req/s`,
      pass: pgCreate.requestsPerSecond.mean >= TARGET_CREATE_RPS,
    });
  }
  if (pgRead) {
    const rateReached = pgRead.achievedRate >= READ_RATE * READ_RATE_TOLERANCE;
    targets.push({
      name: `read latency on PostgreSQL, c=${READ_CONNECTIONS}`,
      target: `p99 ≤ ${TARGET_READ_P99_MS} ms at ${READ_RATE} req/s (rate reached ≥ ${READ_RATE * READ_RATE_TOLERANCE}/s)`,
      actual: `p99 ${fmt(pgRead.latencyMs.p99, 2)} ms at ${fmt(pgRead.achievedRate, 1)} req/s`,
      pass: pgRead.latencyMs.p99 <= TARGET_READ_P99_MS && rateReached,
    });
  }
  // Issue #5: authentication and audit together add at most 15%, judged on the median of the
  // alternated pairs (the audit measured as AUDIT=off against on, authentication's work per
  // request added: measureAuthCost).
  if (report.audit && report.audit.pairs.length > 0) {
    const a = report.audit;
    const pct = (x: number): string => `${fmt(x * 100, 1)}%`;
    const auth = `; authentication ${fmt(a.auth.perRequestUs, 2)} µs per request, median server CPU per create ${fmt(median(a.pairs.map((p) => p.serverCpuMsPerRequest.create)), 3)} ms`;
    const createCost = a.createCostWithAuthMedian;
    const readCost = a.readCostWithAuthMedian;
    targets.push({
      name: `authentication and audit log cost on create throughput (median of ${a.pairs.length} alternated pairs)`,
      target: `≤ ${AUDIT_COST_MAX * 100}% fewer creates/s than without either`,
      actual: `${pct(createCost)}; audit alone ${pct(a.createCostMedian)} (pairs: ${a.pairs.map((p) => `${fmt(p.createPerSecond.on, 0)} vs ${fmt(p.createPerSecond.off, 0)}/s = ${pct(p.createCost)}`).join('; ')})${auth}`,
      pass: createCost <= AUDIT_COST_MAX,
    });
    targets.push({
      name: `authentication and audit log cost on read p99 (median of ${a.pairs.length} alternated pairs)`,
      target: `≤ ${AUDIT_COST_MAX * 100}% above without either`,
      actual: `${pct(readCost)}; audit alone ${pct(a.readCostMedian)} (pairs: ${a.pairs.map((p) => `${fmt(p.readP99Ms.on, 2)} vs ${fmt(p.readP99Ms.off, 2)} ms = ${pct(p.readCost)}`).join('; ')})`,
      pass: readCost <= AUDIT_COST_MAX,
    });
  }
  for (const h of [report.hl7, report.hl7Pipelined]) {
    if (!h) continue;
    targets.push({
      name: `inbound HL7 v2 ADT with DG1, one MLLP connection, ${h.window === 1 ? 'each message after the previous ACK' : `${h.window} in flight`}, on PostgreSQL`,
      target: `≥ ${TARGET_HL7_MPS} messages/s acknowledged AA`,
      actual: `${fmt(h.messagesPerSecond, 1)} messages/s (${fmt(h.acknowledged)} of ${fmt(h.messages)} AA; p50 ${fmt(h.latencyMs.p50, 2)} ms, p99 ${fmt(h.latencyMs.p99, 2)} ms)`,
      pass: h.acknowledged === h.messages && h.messagesPerSecond >= TARGET_HL7_MPS,
    });
  }
  if (report.delivery) {
    const d = report.delivery;
    targets.push({
      name: 'outbound progress reports delivered to the EHR over FHIR, on PostgreSQL',
      target: 'every queued report delivered exactly once (issue #6 asks for documents/s, no figure)',
      actual: `${fmt(d.verification.documentsAtEhr)} documents for ${fmt(d.summaries + d.before)} reports; ${fmt(d.queue.summariesPerSecond, 1)} queued/s, ${fmt(d.delivery.documentsPerSecond, 1)} delivered/s; PDF median ${fmt(d.pdf.medianMs, 1)} ms`,
      pass: d.verification.ok,
    });
  }
  const met = report.scenarios.find((s) => s.id === 'met-assessment-postgresql');
  if (met) {
    targets.push({
      name: `MET assessment documents on PostgreSQL, c=${MET_CONNECTIONS}`,
      target: `≥ ${TARGET_MET_DPS} documents/s, p99 ≤ ${TARGET_MET_P99_MS} ms`,
      actual: `${fmt(met.requestsPerSecond.mean, 1)} documents/s, p99 ${fmt(met.latencyMs.p99, 2)} ms`,
      pass: met.requestsPerSecond.mean >= TARGET_MET_DPS && met.latencyMs.p99 <= TARGET_MET_P99_MS,
    });
  }
  if (report.search) {
    const s = report.search;
    targets.push({
      name: 'Synthea transaction ingest on PostgreSQL (warm)',
      target: `≥ ${fmt(TARGET_INGEST_RPS)} resources/s`,
      actual: `${fmt(s.synthea.resourcesPerSecond)} resources/s`,
      pass: s.synthea.resourcesPerSecond >= TARGET_INGEST_RPS,
    });
    for (const q of s.searches) {
      targets.push({
        name: `search ${q.name} with ${fmt(s.load.observations)} Observations`,
        target: `p99 ≤ ${TARGET_SEARCH_P99_MS} ms at 50/s, no failures`,
        actual: `p99 ${fmt(q.p99, 2)} ms at ${fmt(q.rate, 1)}/s, ${q.non2xx + q.errors} failed`,
        pass: q.p99 <= TARGET_SEARCH_P99_MS && q.rate >= 49 && q.non2xx + q.errors === 0,
      });
    }
  }
  // PGlite runs a whole PostgreSQL (WASM) inside the server process, so its RSS is reported but
  // not held to the server's target; on PostgreSQL the database's memory is its own processes'.
  const pgPeaks = report.scenarios.filter((s) => s.engine === 'postgresql').map((s) => ({ id: s.id, peakRssMiB: s.peakRssMiB }));
  if (report.delivery) {
    pgPeaks.push({ id: 'outbound-queue', peakRssMiB: report.delivery.queue.peakRssMiB }, { id: 'outbound-drain', peakRssMiB: report.delivery.delivery.drainPeakRssMiB });
  }
  if (pgPeaks.length > 0) {
    targets.push({
      name: 'server memory on PostgreSQL',
      target: `peak RSS ≤ 300 MB (${fmt(TARGET_RSS_MIB, 1)} MiB) in every PostgreSQL scenario`,
      actual: pgPeaks.map((s) => `${s.id} ${fmt(s.peakRssMiB, 1)} MiB`).join(', '),
      pass: Math.max(...pgPeaks.map((s) => s.peakRssMiB)) <= TARGET_RSS_MIB,
    });
  }
  if (report.scenarios.length > 0) {
    const failed = report.scenarios.filter((s) => s.non2xx > 0 || s.errors > 0);
    targets.push({
      name: 'no failed requests',
      target: '0 non-2xx responses and 0 errors/timeouts in every scenario',
      actual: failed.length === 0 ? 'none' : failed.map((s) => `${s.id}: ${s.non2xx} non-2xx ${JSON.stringify(s.statusCodes)}, ${s.errors} errors`).join('; '),
      pass: failed.length === 0,
    });
  }
  return targets;
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  const started = new Date();
  const stamp = basicTimestamp(started);
  mkdirSync(RESULTS_DIR, { recursive: true });
  const resultsPath = join(RESULTS_DIR, `${stamp}.json`);
  const cpus = os.cpus();
  const commit = gitCommit();
  const before = machineCpu();
  await sleep(1_000);
  const after = machineCpu();
  const busyBeforeStartPct = after.total > before.total ? round((100 * (after.busy - before.busy)) / (after.total - before.total), 0) : 0;
  const report: Report = {
    startedAt: started.toISOString(),
    ok: false,
    ...(commit ? { commit } : {}),
    machine: {
      cpus: cpus.length,
      cpuModel: cpus[0]?.model.trim() ?? 'unknown',
      totalMemoryBytes: os.totalmem(),
      totalMemoryGiB: round(os.totalmem() / 1024 ** 3, 1),
      platform: os.platform(),
      release: os.release(),
      loadAverage: os.loadavg().map((value) => round(value, 2)),
      busyBeforeStartPct,
    },
    node: process.version,
    loadGenerator: { name: 'autocannon', version: packageVersion('autocannon'), process: 'separate from the server, same machine' },
    server: { command: 'node dist/main.js', env: { ...SERVER_ENV, DB_POOL_SIZE: '(default)' } },
    databases: {},
    settings: {
      warmupS: WARMUP_S,
      durationS: DURATION_S,
      createConnections: CREATE_CONNECTIONS,
      readRate: READ_RATE,
      readConnections: READ_CONNECTIONS,
      readBurstConnections: READ_BURST_CONNECTIONS,
      seedCount: SEED_COUNT,
      auditPairs: AUDIT_PAIRS,
      rssSampleMs: RSS_SAMPLE_MS,
      summaries: SUMMARIES,
      summaryConcurrency: SUMMARY_CONCURRENCY,
      summaryPatients: SUMMARY_PATIENTS,
      pdfRenderings: PDF_RENDERINGS,
      ...(ONLY ? { only: ONLY } : {}),
    },
    scenarios: [],
    targets: [],
    idleRssMiB: {},
    files: { results: relative(ROOT, resultsPath), serverLogs: [] },
  };

  let interrupted = false;
  process.once('SIGINT', () => {
    interrupted = true;
    log('interrupted: cleaning up…');
    void runCleanups().finally(() => process.exit(130));
  });

  let failure: unknown;
  try {
    build();
    const everyPhase = ONLY === undefined;

    // PostgreSQL: create, then read.
    const dbName = `bench_${Date.now()}`;
    log(`creating database ${dbName}`);
    report.databases.postgresql = await createBenchDatabase(dbName);
    if (process.env.BENCH_KEEP_DB === '1') log(`keeping database ${dbName} (BENCH_KEEP_DB=1)`);
    else cleanups.push({ name: `drop database ${dbName}`, run: () => dropBenchDatabase(dbName) });
    const databaseUrl = new URL(PG_ADMIN_URL);
    databaseUrl.pathname = `/${dbName}`;
    const pgLog = join(RESULTS_DIR, `server-${stamp}-postgresql.log`);
    report.files.serverLogs.push(relative(ROOT, pgLog));
    const pgDataDir = mkdtempSync(join(os.tmpdir(), 'bench-pg-keys-'));
    cleanups.push({ name: `remove ${pgDataDir}`, run: () => rm(pgDataDir, { recursive: true, force: true }) });
    const pgEnv = { DATABASE_URL: databaseUrl.toString(), DATA_DIR: pgDataDir };
    const hl7Port = await freePort();
    log('registering the bench client (admin command)');
    const pgClient = registerBenchClient(ROOT, pgEnv);
    if (everyPhase || ONLY === 'audit') report.audit = await runAuditPairs(dbName, pgDataDir, pgLog, report.scenarios);
    if (ONLY !== 'audit') {
      log('starting server on PostgreSQL');
      routeHl7(ROOT, pgEnv, HL7_FACILITY, 'bench');
      const pgServer = await startServerProcess('postgresql', { ...pgEnv, HL7_PORT: String(hl7Port) }, pgLog);
      await startAuth(pgServer.url, pgClient);
      report.idleRssMiB.postgresql = round((readRssKiB(pgServer.pid) ?? 0) / 1024, 1);

      if (everyPhase) {
        report.scenarios.push(
          await runScenario(pgServer, {
            id: 'create-postgresql',
            name: `create Observation (c=${CREATE_CONNECTIONS})`,
            engine: 'postgresql',
            connections: CREATE_CONNECTIONS,
            postgresDatabase: dbName,
            requests: createRequests,
          }),
        );
        log(`seeding ${fmt(SEED_COUNT)} Observations for the read scenario`);
        const ids = await seed(pgServer.url, SEED_COUNT);
        // One at a time (the target), then in bursts.
        for (const [id, connections] of [['read-postgresql', READ_CONNECTIONS], ['read-burst-postgresql', READ_BURST_CONNECTIONS]] as const) {
          report.scenarios.push(
            await runScenario(pgServer, {
              id,
              name: `read by id (${READ_RATE}/s, c=${connections})`,
              engine: 'postgresql',
              connections,
              overallRate: READ_RATE,
              postgresDatabase: dbName,
              requests: () => readRequests(ids),
            }),
          );
        }
        log(`seeding ${MET_CLIENTS} MET clients with two goals each`);
        await seedMet(pgServer.url);
        const metCounter = { next: 1 };
        report.scenarios.push(
          await runScenario(pgServer, {
            id: 'met-assessment-postgresql',
            name: `MET assessment, 10 measurements (c=${MET_CONNECTIONS})`,
            engine: 'postgresql',
            connections: MET_CONNECTIONS,
            postgresDatabase: dbName,
            requests: () => metRequests(metCounter),
          }),
        );
        log(`inbound HL7 v2: ${fmt(HL7_MESSAGES)} ADT^A04 with 3 DG1 over one MLLP connection`);
        report.hl7 = await runHl7Phase('127.0.0.1', hl7Port, new URL('../../shared/data/hl7v2/adt-a04-knee-oa.hl7', import.meta.url).pathname, HL7_MESSAGES, log);
        log(`inbound HL7 v2: ${fmt(HL7_MESSAGES)} more, up to ${HL7_WINDOW} in flight on one connection`);
        report.hl7Pipelined = await runHl7Phase('127.0.0.1', hl7Port, new URL('../../shared/data/hl7v2/adt-a04-knee-oa.hl7', import.meta.url).pathname, HL7_MESSAGES, log, HL7_WINDOW, 'W');
      }
      if (SUMMARIES > 0) {
        const ehrDb = `${dbName}_ehr`;
        log(`outbound: creating database ${ehrDb} and starting the EHR peer`);
        report.databases.ehr = await createBenchDatabase(ehrDb);
        if (process.env.BENCH_KEEP_DB !== '1') cleanups.push({ name: `drop database ${ehrDb}`, run: () => dropBenchDatabase(ehrDb) });
        const ehrLog = join(RESULTS_DIR, `server-${stamp}-ehr.log`);
        report.files.serverLogs.push(relative(ROOT, ehrLog));
        // The measured server's practice signs its client assertions with a key of its own, at this JWKS URL.
        const jwksPath = new URL((JSON.parse(runAdmin(ROOT, pgEnv, ['tenant', 'ehr-jwks', 'bench'])) as { ehr_jwks_url: string }).ehr_jwks_url).pathname;
        const ehr = await startEhrPeer(ehrDb, `${pgServer.url}${jwksPath}`, ehrLog);
        report.delivery = await runDeliveryPhase({
          metUrl: pgServer.url,
          ehr: ehr.peer,
          summaries: SUMMARIES,
          log,
          measure: () => openWindow(pgServer.pid, [dbName, ehrDb], ehr.server.pid),
        });
        await ehr.server.stop();
        const verified = report.delivery.verification;
        if (!verified.ok) {
          throw new Error(`outbound delivery FAILED verification (${verified.documentsAtEhr} DocumentReferences at the EHR for ${SUMMARIES} reports + warm-up; ${verified.missing} missing, ${verified.duplicates} duplicates, ${verified.unexpected} unexpected): ${verified.problems.slice(0, 5).join('; ')}`);
        }
      }
      if (everyPhase && OBSERVATIONS > 0) report.search = await runSearchPhase(pgServer.url, databaseUrl.toString(), OBSERVATIONS, log);
      log('stopping server (SIGTERM)');
      stopAuth();
      await pgServer.stop();

      if (everyPhase) {
        // PGlite: create.
        const dataDir = mkdtempSync(join(os.tmpdir(), 'bench-pglite-'));
        cleanups.push({ name: `remove ${dataDir}`, run: () => rm(dataDir, { recursive: true, force: true }) });
        report.databases.pglite = { version: packageVersion('@electric-sql/pglite') };
        const liteLog = join(RESULTS_DIR, `server-${stamp}-pglite.log`);
        report.files.serverLogs.push(relative(ROOT, liteLog));
        log(`starting server on PGlite (DATA_DIR ${dataDir})`);
        const liteClient = registerBenchClient(ROOT, { DATA_DIR: dataDir });
        const liteServer = await startServerProcess('pglite', { DATA_DIR: dataDir }, liteLog);
        await startAuth(liteServer.url, liteClient);
        report.idleRssMiB.pglite = round((readRssKiB(liteServer.pid) ?? 0) / 1024, 1);
        report.scenarios.push(
          await runScenario(liteServer, {
            id: 'create-pglite',
            name: `create Observation (c=${CREATE_CONNECTIONS})`,
            engine: 'pglite',
            connections: CREATE_CONNECTIONS,
            requests: createRequests,
          }),
        );
        log('stopping server (SIGTERM)');
        stopAuth();
        await liteServer.stop();
      }
    }
  } catch (error) {
    failure = error;
  }

  const cleanupProblems = await runCleanups();
  if (interrupted) return 130;
  if (!failure && cleanupProblems.length > 0) failure = new Error(`cleanup failed: ${cleanupProblems.join('; ')}`);
  else if (cleanupProblems.length > 0) log(`cleanup problems: ${cleanupProblems.join('; ')}`);

  const pgCreate = report.scenarios.find((s) => s.id === 'create-postgresql');
  const liteCreate = report.scenarios.find((s) => s.id === 'create-pglite');
  if (pgCreate && liteCreate && pgCreate.requestsPerSecond.mean > 0) {
    report.pgliteToPostgresqlCreateRatio = round(liteCreate.requestsPerSecond.mean / pgCreate.requestsPerSecond.mean, 3);
  }
  report.targets = evaluateTargets(report);
  report.allTargetsMet = failure === undefined && report.targets.every((target) => target.pass);
  report.finishedAt = new Date().toISOString();
  report.ok = failure === undefined;
  if (failure !== undefined) report.error = message(failure);
  writeFileSync(resultsPath, JSON.stringify(report, null, 2) + '\n');

  if (failure !== undefined) {
    log(`RUN FAILED: ${message(failure)}`);
    log(`partial results: ${relative(ROOT, resultsPath)}`);
    return 1;
  }
  printTable(report);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    log(`RUN FAILED: ${message(error)}`);
    process.exit(1);
  },
);
