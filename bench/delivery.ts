/**
 * Outbound (issue #6): progress reports queued with `POST /fhir/Patient/{id}/$send-summary` and
 * delivered by the server's own delivery worker to a physician's EHR over FHIR (SMART Backend
 * Services, a DocumentReference with the PDF whose subject is the EHR's Patient).
 *
 * The EHR is a second instance of this server (`node dist/main.js`, DELIVERY=off) on its own
 * PostgreSQL database, started by run.ts, where the measured server is registered as a client with
 * its JWKS URL, exactly as a clinic would set it up (README "EHR integration").
 *
 *   seed   SUMMARY_PATIENTS clients as a MET keeps them (bench/summary-record.ts: 3 diagnoses,
 *          2 goals, a program, 7 outcome measures over 12 weeks, 24 sessions, one adverse event),
 *          the same patients (by MRN) in the EHR, the MET's Practitioner and the EHR's Endpoint;
 *   warm   WARMUP summaries queued and delivered (not measured: validators compile, the worker
 *          gets its first token from the EHR, which fetches our JWKS);
 *   queue  `summaries` $send-summary calls, SUMMARY_CONCURRENCY at a time, round-robin over the patients:
 *          summaries/s and each call's latency (gathering, the PDF, the transaction);
 *   deliver from the first call until every Task is `completed`: documents/s. The worker runs
 *          alongside the queueing (as in production), so the time after the last call (the drain)
 *          is reported apart, with its own CPU figures;
 *   verify every Task completed on its first attempt or later, exactly one DocumentReference per
 *          report at the EHR (none lost, no duplicates), each on the EHR's Patient of its MRN, each
 *          Task's output naming it; anything else fails the phase;
 *   PDF    renderPdf (src/summary/report.ts) in this process, PDF_RENDERINGS times, on the report
 *          input gathered from the stored data as the server gathers it (checked: the same bytes as
 *          the PDF the server stored for the same report).
 */
import type { Bundle, DocumentReference, Resource, Task } from 'fhir/r4.js';
import { DELIVERY_ATTEMPTS_EXTENSION } from '../src/delivery/worker.js';
import { DOCUMENT_ID_SYSTEM } from '../src/interactions/send-summary.js';
import { renderPdf } from '../src/summary/report.js';
import { authorization, requestToken, type BenchClient } from './auth.js';
import { percentile, round, type CpuFigures, type Window } from './proc.js';
import { clientRecord, endpoint, gatherInput, mrn, parameters, patient, patientId, PRACTITIONER, transaction } from './summary-record.js';

export const SUMMARY_CONCURRENCY = 8;
export const SUMMARY_PATIENTS = 20;
const WARMUP = SUMMARY_CONCURRENCY;
/** Calls one after another before the measured run: one report's latency with the worker otherwise idle. */
const ALONE_CALLS = 20;
export const PDF_RENDERINGS = 100;
const PDF_WARMUP = 3;
const POLL_MS = 250;
/** The phase fails when no Task completes for this long. */
const STALL_MS = 60_000;

/** The EHR's tenant and what we may do there (the Endpoint asks for the same scopes). */
export const EHR_TENANT = 'riverside';
export const EHR_SCOPES = 'system/Patient.rs system/DocumentReference.crs';
const FHIR_JSON = 'application/fhir+json';

export interface EhrPeer {
  /** The EHR's base URL (`http://127.0.0.1:<port>`), as this process reaches it. */
  url: string;
  /** Its FHIR base as our Endpoint names it, and its token endpoint (the audience of our assertions). */
  fhirBase: string;
  tokenUrl: string;
  /** The measured server's client id at the EHR (private_key_jwt, our JWKS URL). */
  metClientId: string;
  /** A system/*.* client of the EHR's staff: seeds its Patients and counts what arrived. */
  staff: BenchClient;
}

export interface DeliveryPhaseOptions {
  /** The measured server, its delivery worker on; the bench's token (auth.ts) is for it. */
  metUrl: string;
  ehr: EhrPeer;
  summaries: number;
  /** Opens a CPU/RSS window over the measured server, both databases and the EHR (as peer). */
  measure: () => Window;
  log: (message: string) => void;
}

interface Latency {
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

/** CPU time per report (or document), in ms: the measured server, PostgreSQL (both databases), the EHR. */
interface CpuMs {
  server: number;
  postgres: number;
  ehr: number;
}

export interface DeliveryResult {
  summaries: number;
  patients: number;
  /** Resources stored per patient on our side (the report is built from them). */
  resourcesPerPatient: number;
  concurrency: number;
  /** Reports queued and delivered before the measured ones (warm-up and `alone`), verified with them. */
  before: number;
  /** ALONE_CALLS $send-summary calls one after another, the worker otherwise idle: one report's cost. */
  alone: { calls: number; latencyMs: Latency; queuedToDeliveredMs: Latency };
  queue: { seconds: number; summariesPerSecond: number; latencyMs: Latency; peakRssMiB: number; cpu: CpuFigures; cpuMsPerSummary: CpuMs };
  delivery: {
    /** From the first $send-summary call until the last Task completed. */
    seconds: number;
    documentsPerSecond: number;
    /** Tasks completed when the last $send-summary call answered. */
    deliveredWhileQueueing: number;
    /** From the last call's answer until the last Task completed, and the rate over the rest. */
    drainSeconds: number;
    drainDocumentsPerSecond: number;
    /** Task.authoredOn (the report issued) to Task.executionPeriod.end (delivered), per report. */
    queuedToDeliveredMs: Latency;
    /** How many Tasks took how many attempts. */
    attempts: Record<string, number>;
    /** The drain window: the worker and the EHR alone. */
    drainPeakRssMiB: number;
    drainCpu: CpuFigures;
    drainCpuMsPerDocument: CpuMs;
  };
  verification: {
    ok: boolean;
    tasksCompleted: number;
    tasksNotCompleted: number;
    documentsAtEhr: number;
    distinctDocuments: number;
    duplicates: number;
    missing: number;
    unexpected: number;
    wrongSubject: number;
    wrongTaskOutput: number;
    problems: string[];
  };
  pdf: {
    renderings: number;
    medianMs: number;
    p90Ms: number;
    p99Ms: number;
    meanMs: number;
    maxMs: number;
    bytes: number;
    pages: number;
    /** Whether the bench's rendering is byte for byte the PDF the server stored for the same report. */
    sameBytesAsServer: boolean;
  };
}

const stats = (values: number[]): Latency => {
  const sorted = [...values].sort((a, b) => a - b);
  const mean = sorted.length ? sorted.reduce((sum, value) => sum + value, 0) / sorted.length : 0;
  return { p50: round(percentile(sorted, 50), 1), p90: round(percentile(sorted, 90), 1), p99: round(percentile(sorted, 99), 1), max: round(percentile(sorted, 100), 1), mean: round(mean, 1) };
};

/** A window's CPU figures as ms per item. */
const cpuMsPer = (figures: { cpu: CpuFigures; seconds: number }, items: number): CpuMs => {
  const ms = (pct: number): number => (items > 0 ? round(((pct / 100) * figures.seconds * 1000) / items, 1) : 0);
  return { server: ms(figures.cpu.serverPct), postgres: ms(figures.cpu.postgresPct), ehr: ms(figures.cpu.peerPct ?? 0) };
};

// ---------------------------------------------------------------------------------------------
// HTTP

/** The EHR staff's token, fetched again after two minutes (tokens last five). */
function ehrAuthorization(ehr: EhrPeer): () => Promise<string> {
  let token = '';
  let fetchedAt = 0;
  return async () => {
    if (Date.now() - fetchedAt > 120_000) {
      token = await requestToken(ehr.url, ehr.staff);
      fetchedAt = Date.now();
    }
    return `Bearer ${token}`;
  };
}

async function call<T>(method: string, url: string, auth: string, body?: unknown, expected = method === 'POST' ? [200, 201] : [200]): Promise<T> {
  const response = await fetch(url, {
    method,
    headers: { accept: FHIR_JSON, authorization: auth, ...(body === undefined ? {} : { 'content-type': FHIR_JSON }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  if (!expected.includes(response.status)) throw new Error(`${method} ${new URL(url).pathname} answered ${response.status}: ${text.slice(0, 500)}`);
  return JSON.parse(text) as T;
}

/** Every resource of a search, following its `next` links. */
async function searchAll<T extends Resource>(url: string, auth: () => string | Promise<string>): Promise<T[]> {
  const found: T[] = [];
  for (let next: string | undefined = url; next; ) {
    const page: Bundle = await call<Bundle>('GET', next, await auth());
    found.push(...(page.entry ?? []).flatMap((e) => (e.resource ? [e.resource as T] : [])));
    next = page.link?.find((l) => l.relation === 'next')?.url;
  }
  return found;
}

async function count(url: string, auth: string): Promise<number> {
  return (await call<Bundle>('GET', url, auth)).total ?? 0;
}

// ---------------------------------------------------------------------------------------------
// The phase

interface Queued {
  taskId: string;
  identifier: string;
  patient: number;
}

export async function runDeliveryPhase(options: DeliveryPhaseOptions): Promise<DeliveryResult> {
  const { metUrl, ehr, summaries, log } = options;
  const ehrAuth = ehrAuthorization(ehr);
  log(`delivery: seeding ${SUMMARY_PATIENTS} clients here and their Patients at the EHR`);
  const { ehrPatientIds, resourcesPerPatient } = await seed(metUrl, ehr, ehrAuth);

  log(`delivery: warm-up, ${WARMUP} summaries queued and delivered; then ${ALONE_CALLS} one at a time`);
  const warm = await send(metUrl, 0, WARMUP, SUMMARY_CONCURRENCY);
  await awaitCompleted(metUrl, WARMUP);
  const alone = await send(metUrl, WARMUP, ALONE_CALLS, 1);
  await awaitCompleted(metUrl, WARMUP + ALONE_CALLS);
  const before = WARMUP + ALONE_CALLS;

  log(`delivery: queueing ${summaries.toLocaleString('en-US')} summaries, ${SUMMARY_CONCURRENCY} at a time, while the worker delivers them`);
  const queueWindow = options.measure();
  const firstCall = Date.now();
  const measured = await send(metUrl, before, summaries, SUMMARY_CONCURRENCY);
  const queueEnded = Date.now();
  const queueFigures = queueWindow.end();
  const drainWindow = options.measure();
  const deliveredWhileQueueing = (await completedTasks(metUrl)) - before;
  log(`delivery: queued in ${((queueEnded - firstCall) / 1000).toFixed(1)} s; ${deliveredWhileQueueing} delivered meanwhile, waiting for the rest`);
  let lastLogged = 0;
  await awaitCompleted(metUrl, before + summaries, (done) => {
    if (done - lastLogged >= 250) {
      lastLogged = done;
      log(`  ${done - before} delivered`);
    }
  });
  const drainFigures = drainWindow.end();

  const all = [...warm.queued, ...alone.queued, ...measured.queued];
  const { verification, tasks } = await verify(metUrl, ehr, ehrAuth, all, ehrPatientIds);
  log(`delivery: verified ${verification.documentsAtEhr} DocumentReferences at the EHR for ${all.length} reports (${before} before the measured ones): ${verification.ok ? 'each exactly once' : `${verification.problems.length} problem(s)`}`);
  const aloneTimes = deliveryTimes(alone.queued, tasks);
  const times = deliveryTimes(measured.queued, tasks);
  const queueSeconds = (queueEnded - firstCall) / 1000;
  const deliverySeconds = (times.lastDelivered - firstCall) / 1000;
  const drainSeconds = Math.max(0, times.lastDelivered - queueEnded) / 1000;
  const pdf = await measurePdf(metUrl, measured.queued[0] ?? all[0], log);

  return {
    summaries,
    patients: SUMMARY_PATIENTS,
    resourcesPerPatient,
    concurrency: SUMMARY_CONCURRENCY,
    before,
    alone: { calls: ALONE_CALLS, latencyMs: stats(alone.latencies), queuedToDeliveredMs: stats(aloneTimes.queuedToDelivered) },
    queue: {
      seconds: round(queueSeconds, 2),
      summariesPerSecond: round(summaries / queueSeconds, 1),
      latencyMs: stats(measured.latencies),
      peakRssMiB: queueFigures.peakRssMiB,
      cpu: queueFigures.cpu,
      cpuMsPerSummary: cpuMsPer(queueFigures, summaries),
    },
    delivery: {
      seconds: round(deliverySeconds, 2),
      documentsPerSecond: round(summaries / deliverySeconds, 1),
      deliveredWhileQueueing,
      drainSeconds: round(drainSeconds, 2),
      drainDocumentsPerSecond: drainSeconds > 0 ? round((summaries - deliveredWhileQueueing) / drainSeconds, 1) : 0,
      queuedToDeliveredMs: stats(times.queuedToDelivered),
      attempts: times.attempts,
      drainPeakRssMiB: drainFigures.peakRssMiB,
      drainCpu: drainFigures.cpu,
      drainCpuMsPerDocument: cpuMsPer(drainFigures, summaries - deliveredWhileQueueing),
    },
    verification,
    pdf,
  };
}

/** The clients here, the same patients (by MRN) at the EHR, the MET and the Endpoint. Returns the EHR's Patient ids by MRN. */
async function seed(metUrl: string, ehr: EhrPeer, ehrAuth: () => Promise<string>): Promise<{ ehrPatientIds: Map<string, string>; resourcesPerPatient: number }> {
  const created = await call<Bundle>('POST', `${ehr.url}/fhir`, await ehrAuth(), {
    resourceType: 'Bundle',
    type: 'transaction',
    entry: Array.from({ length: SUMMARY_PATIENTS }, (_, n) => {
      const { id: _id, ...resource } = patient(n);
      return { resource, request: { method: 'POST', url: 'Patient' } };
    }),
  });
  const ehrPatientIds = new Map<string, string>();
  for (const [n, entry] of (created.entry ?? []).entries()) {
    const id = /Patient\/([^/]+)/.exec(entry.response?.location ?? '')?.[1];
    if (!id) throw new Error(`the EHR did not say where it created Patient ${n}: ${JSON.stringify(entry.response)}`);
    ehrPatientIds.set(mrn(n), id);
  }
  const ehrEndpoint = endpoint({ fhirBase: ehr.fhirBase, tokenUrl: ehr.tokenUrl, clientId: ehr.metClientId, scope: EHR_SCOPES });
  await call('POST', `${metUrl}/fhir`, authorization(), transaction([PRACTITIONER, ehrEndpoint]));
  let resourcesPerPatient = 0;
  for (let n = 0; n < SUMMARY_PATIENTS; n++) {
    const record = clientRecord(n);
    resourcesPerPatient = record.length;
    await call('POST', `${metUrl}/fhir`, authorization(), transaction(record));
  }
  return { ehrPatientIds, resourcesPerPatient };
}

/** `total` $send-summary calls, `concurrency` at a time, round-robin over the clients from the `from`-th; fails on any failure. */
async function send(metUrl: string, from: number, total: number, concurrency: number): Promise<{ queued: Queued[]; latencies: number[] }> {
  const queued: Queued[] = [];
  const latencies: number[] = [];
  const failures: string[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < total; i = next++) {
      const n = (from + i) % SUMMARY_PATIENTS;
      const started = performance.now();
      const response = await fetch(`${metUrl}/fhir/Patient/${patientId(n)}/$send-summary`, {
        method: 'POST',
        headers: { 'content-type': FHIR_JSON, accept: FHIR_JSON, authorization: authorization() },
        body: JSON.stringify(parameters()),
      });
      const text = await response.text();
      latencies.push(performance.now() - started);
      const task = response.status === 201 ? (JSON.parse(text) as Task) : undefined;
      const identifier = task?.identifier?.find((x) => x.system === DOCUMENT_ID_SYSTEM)?.value;
      if (!task?.id || !identifier) failures.push(`${response.status}: ${text.slice(0, 300)}`);
      else queued.push({ taskId: task.id, identifier, patient: n });
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  if (failures.length > 0) throw new Error(`${failures.length} of ${total} $send-summary calls failed (or answered no Task with a document identifier), e.g. ${failures[0]}`);
  return { queued, latencies };
}

const completedTasks = (metUrl: string): Promise<number> => count(`${metUrl}/fhir/Task?status=completed&_summary=count`, authorization());

/** Waits until `expected` Tasks are completed; fails on a failed Task, or when none completes for STALL_MS. */
async function awaitCompleted(metUrl: string, expected: number, onProgress?: (done: number) => void): Promise<void> {
  let done = 0;
  let progressAt = Date.now();
  while (done < expected) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    const now = await completedTasks(metUrl);
    if (now > done) progressAt = Date.now();
    done = now;
    onProgress?.(done);
    const failed = await searchAll<Task>(`${metUrl}/fhir/Task?status=failed,cancelled,rejected&_count=5`, authorization);
    if (failed.length > 0) throw new Error(`delivery failed: Task/${failed[0]?.id} is ${failed[0]?.status}: ${failed[0]?.statusReason?.text ?? failed[0]?.businessStatus?.text ?? ''}`);
    if (Date.now() - progressAt > STALL_MS) {
      const waiting = await searchAll<Task>(`${metUrl}/fhir/Task?status=requested,in-progress&_count=1`, authorization);
      throw new Error(`delivery stalled: ${done} of ${expected} Tasks completed, none in the last ${STALL_MS / 1000} s (e.g. Task/${waiting[0]?.id}: ${waiting[0]?.status}, ${waiting[0]?.businessStatus?.text ?? ''})`);
    }
  }
}

/**
 * Both sides agree: every report's Task completed, exactly one DocumentReference with its identifier
 * at the EHR, on the EHR's Patient of its MRN and named by the Task's output; nothing else there.
 */
async function verify(
  metUrl: string,
  ehr: EhrPeer,
  ehrAuth: () => Promise<string>,
  queued: Queued[],
  ehrPatientIds: Map<string, string>,
): Promise<{ verification: DeliveryResult['verification']; tasks: Map<string, Task> }> {
  const found = await searchAll<Task>(`${metUrl}/fhir/Task?_count=1000&_elements=identifier,status,authoredOn,executionPeriod,output,extension`, authorization);
  const tasks = new Map(found.flatMap((t) => t.identifier?.filter((x) => x.system === DOCUMENT_ID_SYSTEM).map((x) => [x.value as string, t] as const) ?? []));
  const documents = await searchAll<DocumentReference>(`${ehr.url}/fhir/DocumentReference?_count=1000&_elements=identifier,subject`, ehrAuth);
  const copies = new Map<string, DocumentReference[]>();
  for (const doc of documents) {
    const key = doc.identifier?.find((x) => x.system === DOCUMENT_ID_SYSTEM)?.value ?? '(none)';
    copies.set(key, [...(copies.get(key) ?? []), doc]);
  }
  const problems: string[] = [];
  const note = (problem: string): void => {
    if (problems.length < 20) problems.push(problem);
  };
  const v = { tasksCompleted: 0, duplicates: 0, missing: 0, unexpected: 0, wrongSubject: 0, wrongTaskOutput: 0 };
  const expected = new Set(queued.map((q) => q.identifier));
  for (const [key, docs] of copies) {
    if (expected.has(key)) continue;
    v.unexpected += docs.length;
    note(`the EHR has ${docs.length} DocumentReference(s) with identifier ${key} that no $send-summary answered`);
  }
  for (const q of queued) {
    const docs = copies.get(q.identifier) ?? [];
    const task = tasks.get(q.identifier);
    if (task?.status === 'completed') v.tasksCompleted++;
    else note(`Task/${q.taskId} is ${task?.status ?? 'missing'}`);
    const doc = docs[0];
    if (!doc) {
      v.missing++;
      note(`report ${q.identifier} (Task/${q.taskId}) never arrived at the EHR`);
      continue;
    }
    if (docs.length > 1) {
      v.duplicates += docs.length - 1;
      note(`report ${q.identifier} arrived ${docs.length} times: ${docs.map((d) => d.id).join(', ')}`);
    }
    const ehrPatient = `Patient/${ehrPatientIds.get(mrn(q.patient))}`;
    if (doc.subject?.reference !== ehrPatient) {
      v.wrongSubject++;
      note(`DocumentReference/${doc.id} at the EHR is about ${doc.subject?.reference ?? 'nobody'}, not ${ehrPatient} (MRN ${mrn(q.patient)})`);
    }
    const output = task?.output?.find((o) => o.valueReference?.reference)?.valueReference?.reference ?? '';
    if (!docs.some((d) => output.endsWith(`/DocumentReference/${d.id}`))) {
      v.wrongTaskOutput++;
      note(`Task/${q.taskId} names ${output || 'no output'}, not the EHR's DocumentReference/${doc.id}`);
    }
  }
  if (documents.length !== queued.length) note(`${documents.length} DocumentReferences at the EHR for ${queued.length} reports`);
  const verification = { ok: problems.length === 0, ...v, tasksNotCompleted: queued.length - v.tasksCompleted, documentsAtEhr: documents.length, distinctDocuments: copies.size, problems };
  return { verification, tasks };
}

/** From the Tasks: when the last report was delivered, each report's time from issued to delivered, the attempts taken. */
function deliveryTimes(queued: Queued[], tasks: Map<string, Task>): { lastDelivered: number; queuedToDelivered: number[]; attempts: Record<string, number> } {
  let lastDelivered = 0;
  const queuedToDelivered: number[] = [];
  const attempts: Record<string, number> = {};
  for (const q of queued) {
    const task = tasks.get(q.identifier);
    const n = String(task?.extension?.find((e) => e.url === DELIVERY_ATTEMPTS_EXTENSION)?.valueUnsignedInt ?? '?');
    attempts[n] = (attempts[n] ?? 0) + 1;
    const end = Date.parse(task?.executionPeriod?.end ?? '');
    const issued = Date.parse(task?.authoredOn ?? '');
    if (!Number.isFinite(end)) continue;
    lastDelivered = Math.max(lastDelivered, end);
    if (Number.isFinite(issued)) queuedToDelivered.push(end - issued);
  }
  return { lastDelivered, queuedToDelivered, attempts };
}

// ---------------------------------------------------------------------------------------------
// PDF rendering, in this process

/**
 * renderPdf timed on the input of one delivered report, rebuilt from the stored data the way
 * src/interactions/send-summary.ts gathers it, with the `issued` instant of the server's own
 * rendering, so that the bytes can be compared with the PDF the server stored.
 */
async function measurePdf(metUrl: string, report: Queued | undefined, log: (message: string) => void): Promise<DeliveryResult['pdf']> {
  if (!report) throw new Error('no report to render');
  const get = <T>(path: string): Promise<T> => call<T>('GET', `${metUrl}/fhir/${path}`, authorization());
  const task = await get<Task>(`Task/${report.taskId}`);
  const local = await get<DocumentReference>(task.focus?.reference ?? '');
  const attachment = local.content[0]?.attachment;
  const stored = Buffer.from(attachment?.data ?? '', 'base64');
  const search = <T extends Resource>(query: string): Promise<T[]> => searchAll<T>(`${metUrl}/fhir/${query}&_count=1000`, authorization);
  const input = await gatherInput(search, report.patient, attachment?.creation ?? new Date().toISOString());
  log(`delivery: rendering the PDF ${PDF_RENDERINGS} times in-process (renderPdf)`);
  for (let i = 0; i < PDF_WARMUP; i++) await renderPdf(input);
  const times: number[] = [];
  let pdf: Buffer = Buffer.alloc(0);
  for (let i = 0; i < PDF_RENDERINGS; i++) {
    const started = performance.now();
    pdf = await renderPdf(input);
    times.push(performance.now() - started);
  }
  const sorted = [...times].sort((a, b) => a - b);
  return {
    renderings: PDF_RENDERINGS,
    medianMs: round(percentile(sorted, 50), 2),
    p90Ms: round(percentile(sorted, 90), 2),
    p99Ms: round(percentile(sorted, 99), 2),
    meanMs: round(sorted.reduce((sum, ms) => sum + ms, 0) / sorted.length, 2),
    maxMs: round(percentile(sorted, 100), 2),
    bytes: pdf.length,
    pages: (pdf.toString('latin1').match(/\/Type \/Page\b/g) ?? []).length,
    sameBytesAsServer: pdf.equals(stored),
  };
}
