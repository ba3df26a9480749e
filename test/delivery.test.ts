/**
 * Delivery of progress reports (issue #6) against real peers on loopback: a second instance of
 * this server as the physician's FHIR EHR (we are its SMART Backend Services client, our public key
 * at a JWKS URL, or hold static bearer tokens it issued), a tiny HTTP server that answers 503 and
 * 429 (another echoes the token it is sent), and an MLLP receiver whose ACKs the
 * test chooses. Jobs and Tasks are written together, as a request would; the worker's clock is
 * moved forward instead of waiting for backoffs.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { Writable } from 'node:stream';
import type { Communication, DocumentReference, Endpoint, Extension, Task } from 'fhir/r4.js';
import { pino } from 'pino';
import { FhirDocumentTransport, MllpDocumentTransport, type FhirDeliveryPayload } from '../src/delivery/transports.js';
import { DELIVERY_ATTEMPTS_EXTENSION, DeliveryWorker, type DeliveryWorkerOptions } from '../src/delivery/worker.js';
import { EHR_ENDPOINT_EXTENSION } from '../src/ehr/endpoint.js';
import { EhrSecrets } from '../src/ehr/secrets.js';
import { ack } from '../src/hl7/adt.js';
import { startMllpServer, type MllpServer } from '../src/hl7/mllp.js';
import { ClientStore } from '../src/store/clients.js';
import { inTransaction } from '../src/store/database.js';
import { claimDue, DELIVERY_MIGRATION, getJob, insertJob, markDelivered, type DeliveryChannel, type DeliveryJob } from '../src/store/delivery-jobs.js';
import { Repository } from '../src/store/repository.js';
import type { SqlPool } from '../src/store/sql.js';
import { buildMdmT02 } from '../src/summary/mdm.js';
import type { ResourceValidator } from '../src/validation/validator.js';
import { close, freePort, listen, startEhrPeer, type EhrPeer } from './ehr-peer.js';
import { FHIR_JSON, TEST_TENANT, testContext } from './helpers.js';

const RUN = randomUUID().slice(0, 8);
const DOC_SYSTEM = `https://met-fhir-server.dev/fhir/NamingSystem/report/${RUN}`;
const COMM_SYSTEM = `https://met-fhir-server.dev/fhir/NamingSystem/report-notice/${RUN}`;
const SCOPE = 'system/DocumentReference.crs system/Communication.crs';
const VAR = (name: string): string => `EHR_TOKEN_${name}_${RUN.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
/** Static tokens: one for documents and Communications, one for documents only, one echoed back by a misbehaving EHR. */
const FULL_TOKEN_VAR = VAR('FULL');
const DOCS_ONLY_TOKEN_VAR = VAR('DOCS');
const ECHOED_TOKEN_VAR = VAR('ECHOED');
const ECHOED_TOKEN = `s3cr3t-${RUN}-token`;

const payload = (key: string, extra: Partial<DocumentReference> = {}): FhirDeliveryPayload => ({
  documentReference: {
    resourceType: 'DocumentReference',
    identifier: [{ system: DOC_SYSTEM, value: key }],
    status: 'current',
    type: { coding: [{ system: 'http://loinc.org', code: '11506-3', display: 'Progress note' }] },
    description: 'Exercise progress report',
    content: [{ attachment: { contentType: 'application/pdf', data: Buffer.from('%PDF-1.4 report').toString('base64'), title: 'report.pdf' } }],
    ...extra,
  },
  communication: {
    resourceType: 'Communication',
    identifier: [{ system: COMM_SYSTEM, value: key }],
    status: 'completed',
    payload: [{ contentReference: { type: 'DocumentReference', identifier: { system: DOC_SYSTEM, value: key } } }],
  },
});

const mdm = (controlId: string): string =>
  buildMdmT02({
    sendingApplication: 'MET',
    sendingFacility: 'CLINIC',
    receivingApplication: 'EHR',
    receivingFacility: 'RIVERSIDE',
    controlId,
    timestamp: '2026-03-01T10:00:00Z',
    patient: { mrn: 'E4471023', family: 'Delacroix', given: 'Anne', birthDate: '1958-06-14', gender: 'female' },
    document: { uniqueId: `DOC-${controlId}`, title: 'Exercise progress report', typeCode: '11506-3', activityTime: '2026-03-01', authorName: 'Sam Trainer', pdf: Buffer.from('%PDF-1.4 report') },
  });

describe('delivery of progress reports to EHRs', function () {
  this.timeout(60_000);
  let pool: SqlPool;
  let repo: Repository;
  let validator: ResourceValidator;
  let options: Pick<DeliveryWorkerOptions, 'outboundKeys' | 'ehrSecrets'>;
  let peer: EhrPeer;
  let ehrBase: string;
  let tokenUrl: string;
  let clientId: string;
  const tokens: Record<string, string> = {};
  let mllp: MllpServer;
  /** The MLLP receiver's answer, and every message it received. */
  let mllpMode: 'AA' | 'AE' | 'AR' | 'silent' | 'close' = 'AA';
  const received: string[] = [];
  const silenced: (() => void)[] = [];
  /** The worker's clock runs ahead of the real one by this much. */
  let offset = 0;
  const now = (): Date => new Date(Date.now() + offset);
  const advanceTo = (at: Date): void => {
    offset += Math.max(0, at.getTime() - now().getTime()) + 1;
  };

  const transports = { fhir: new FhirDocumentTransport(), mllp: new MllpDocumentTransport({ ackTimeoutMs: 400, connectTimeoutMs: 2000 }) };
  const worker = (extra: Partial<DeliveryWorkerOptions> = {}): DeliveryWorker =>
    new DeliveryWorker({ tenants: () => Promise.resolve([{ tenant: TEST_TENANT, pool, repo }]), transports, validator, allowHttp: true, now, ...options, ...extra });

  const atEhr = <T>(type: string, system: string, key: string): Promise<T[]> => peer.byIdentifier<T>(type, system, key);

  async function endpoint(resource: Partial<Endpoint>, id: string = randomUUID()): Promise<string> {
    const body = { resourceType: 'Endpoint', id, status: 'active', payloadType: [{ text: 'progress report' }], ...resource };
    await repo.update(validator.checkWrite(body, 'Endpoint', id), id);
    return id;
  }
  /** An hl7-fhir-rest Endpoint at `base` with these connection settings (besides patientIdentifierSystem). */
  const fhirEndpointWith = (base: string, settings: Extension[], id?: string): Promise<string> =>
    endpoint(
      {
        connectionType: { system: 'http://terminology.hl7.org/CodeSystem/endpoint-connection-type', code: 'hl7-fhir-rest' },
        address: base,
        extension: [{ url: EHR_ENDPOINT_EXTENSION, extension: [...settings, { url: 'patientIdentifierSystem', valueUri: 'http://riverside.example.org/mrn' }] }],
      },
      id,
    );
  /** SMART Backend Services with the token endpoint `token`, or no auth at all. */
  const fhirEndpoint = (base: string, token: string | undefined, id?: string): Promise<string> =>
    fhirEndpointWith(
      base,
      token
        ? [{ url: 'auth', valueCode: 'smart-backend' }, { url: 'tokenUrl', valueUrl: token }, { url: 'clientId', valueString: clientId }, { url: 'scope', valueString: SCOPE }]
        : [{ url: 'auth', valueCode: 'none' }],
      id,
    );
  /** A static bearer token, the server's variable `variable`. */
  const bearer = (variable: string): Extension[] => [
    { url: 'auth', valueCode: 'bearer' },
    { url: 'tokenRef', valueString: `env:${variable}` },
  ];
  const mllpEndpoint = (port: number, id?: string): Promise<string> =>
    endpoint({ connectionType: { system: 'http://terminology.hl7.org/CodeSystem/endpoint-connection-type', code: 'hl7v2-mllp' }, address: `mllp://127.0.0.1:${port}` }, id);

  /** A Task and its job, in one transaction, as the request that asks for a delivery writes them. */
  async function queue(channel: DeliveryChannel, endpointId: string, jobPayload: unknown): Promise<string> {
    const id = randomUUID();
    await inTransaction(pool, async (client) => {
      const task = { resourceType: 'Task', id, status: 'requested', intent: 'order', code: { text: 'deliver progress report' }, authoredOn: now().toISOString() };
      await new Repository(pool, repo.fhirBase, client).update(validator.checkWrite(task, 'Task', id), id);
      await insertJob(client, { id, channel, endpointId, payload: jobPayload, nextAttemptAt: now() });
    });
    return id;
  }
  const task = async (id: string): Promise<Task> => JSON.parse((await repo.read('Task', id)).json ?? '{}') as Task;
  const attemptsOf = (t: Task): number | undefined => t.extension?.find((e) => e.url === DELIVERY_ATTEMPTS_EXTENSION)?.valueUnsignedInt;

  before(async () => {
    const { db, ctx } = await testContext();
    // The tests' tenant, in whichever schema it got (public unless another tenant was registered first).
    pool = db.inSchema((await new ClientStore(db.pool).tenantSchema(TEST_TENANT)) as string);
    repo = (await ctx.tenants?.repository(TEST_TENANT)) ?? ctx.repo;
    validator = ctx.validator;
    // Until the server's migrations include it (tenant migration 12): the statements are idempotent.
    const exists = await pool.query<{ t: string | null }>(`SELECT to_regclass('delivery_job')::text AS t`);
    if (!exists.rows[0]?.t) await pool.query(DELIVERY_MIGRATION);

    peer = await startEhrPeer({ prefix: 'riverside' });
    ehrBase = peer.fhirBase;
    tokenUrl = peer.tokenUrl;
    clientId = await peer.registerBackendClient(SCOPE);
    tokens[FULL_TOKEN_VAR] = await peer.issueToken(SCOPE);
    tokens[DOCS_ONLY_TOKEN_VAR] = await peer.issueToken('system/DocumentReference.crs');
    tokens[ECHOED_TOKEN_VAR] = ECHOED_TOKEN;
    // Each bound to the tests' tenant, the worker's tenant below (EHR_TOKEN_…=<tenant>:<token>).
    const bound = Object.fromEntries(Object.entries(tokens).map(([name, token]) => [name, `${TEST_TENANT}:${token}`]));
    options = { ...(ctx.outboundKeys ? { outboundKeys: ctx.outboundKeys } : {}), ehrSecrets: new EhrSecrets(bound) };

    mllp = await startMllpServer(
      async (message) => {
        received.push(message);
        switch (mllpMode) {
          case 'silent':
            await new Promise<void>((resolve) => silenced.push(resolve));
            return ack(message, 'AA');
          case 'close':
            throw new Error('the receiver fails mid-message');
          case 'AR':
            return ack(message, 'AR', 'Unknown document type');
          case 'AA':
          case 'AE':
            return ack(message, mllpMode);
        }
      },
      { port: 0, host: '127.0.0.1', closeTimeoutMs: 200 },
    );
  });

  afterEach(async () => {
    // Jobs a test leaves due must not be picked up by the next one.
    await pool.query(`UPDATE delivery_job SET status = 'failed' WHERE status IN ('queued', 'sending')`);
  });

  after(async () => {
    silenced.forEach((resolve) => resolve());
    await mllp?.close();
    await peer?.close();
  });

  it('delivers a DocumentReference and its Communication once, and completes the Task', async () => {
    const id = await queue('fhir', await fhirEndpoint(ehrBase, tokenUrl), payload(id0('once')));
    await worker().runOnce();
    const job = await getJob(pool, id);
    const docs = await atEhr<DocumentReference>('DocumentReference', DOC_SYSTEM, id0('once'));
    assert.equal(docs.length, 1);
    assert.deepEqual([job.status, job.attempts, job.remoteId], ['delivered', 1, `${ehrBase}/DocumentReference/${docs[0]?.id}`]);
    const comms = await atEhr<Communication>('Communication', COMM_SYSTEM, id0('once'));
    assert.equal(comms.length, 1);
    assert.equal(comms[0]?.payload?.[0]?.contentReference?.reference, `DocumentReference/${docs[0]?.id}`);
    const done = await task(id);
    assert.equal(done.status, 'completed');
    assert.equal(attemptsOf(done), 1);
    assert.equal(done.output?.[0]?.valueReference?.reference, job.remoteId);
    assert.match(done.businessStatus?.text ?? '', /^delivered on attempt 1/);

    assert.equal(await worker().runOnce(), 0, 'nothing left to do');
    assert.equal((await atEhr('DocumentReference', DOC_SYSTEM, id0('once'))).length, 1);
  });

  it('sends with several jobs in flight (concurrency lanes), each document once and every Task completed', async () => {
    const endpointId = await fhirEndpoint(ehrBase, tokenUrl);
    const names = Array.from({ length: 6 }, (_, i) => id0(`lane${i}`));
    const ids = await Promise.all(names.map((n) => queue('fhir', endpointId, payload(n))));
    assert.equal(await worker({ concurrency: 3 }).runOnce(), 6);
    for (const n of names) assert.equal((await atEhr('DocumentReference', DOC_SYSTEM, n)).length, 1, n);
    assert.deepEqual(await Promise.all(ids.map(async (id) => (await task(id)).status)), Array(6).fill('completed'));
    assert.throws(() => worker({ concurrency: 0 }), /concurrency must be an integer ≥ 1/);
  });

  it('retries while the EHR cannot be reached, then delivers once it can', async () => {
    const dead = await freePort();
    const endpointId = await fhirEndpoint(`http://127.0.0.1:${dead}/fhir`, `http://127.0.0.1:${dead}/auth/token`);
    const id = await queue('fhir', endpointId, payload(id0('down')));
    await worker().runOnce();
    const waiting = await getJob(pool, id);
    assert.deepEqual([waiting.status, waiting.attempts, waiting.ambiguous], ['queued', 1, false]);
    assert.match(waiting.lastError ?? '', /could not reach the EHR/);
    const retrying = await task(id);
    assert.equal(retrying.status, 'in-progress');
    assert.equal(attemptsOf(retrying), 1);
    assert.match(retrying.businessStatus?.text ?? '', /^attempt 1 of 8 failed: .*could not reach the EHR.*; next attempt at /);

    assert.equal(await worker().runOnce(), 0, 'not due yet');
    await fhirEndpoint(ehrBase, tokenUrl, endpointId);
    advanceTo(waiting.nextAttemptAt);
    await worker().runOnce();
    const job = await getJob(pool, id);
    assert.deepEqual([job.status, job.attempts], ['delivered', 2]);
    const done = await task(id);
    assert.deepEqual([done.status, attemptsOf(done)], ['completed', 2]);
    assert.equal((await atEhr('DocumentReference', DOC_SYSTEM, id0('down'))).length, 1);
  });

  it('backs off exponentially with bounded jitter on 503, honours Retry-After on 429, and gives up after the last attempt', async () => {
    const statuses = [503, 503, 503, 429, 503];
    let calls = 0;
    const busy = createServer((_req, res) => {
      const status = statuses[calls++] ?? 503;
      res.writeHead(status, { 'content-type': FHIR_JSON, ...(status === 429 ? { 'retry-after': '20' } : {}) });
      res.end(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'transient', diagnostics: 'down for maintenance' }] }));
    });
    const port = await listen(busy);
    try {
      const id = await queue('fhir', await fhirEndpoint(`http://127.0.0.1:${port}/fhir`, undefined), payload(id0('busy')));
      const w = worker({ maxAttempts: 5, baseBackoffMs: 1000, jitter: 0.5 });
      const waits: number[] = [];
      for (let attempt = 1; attempt <= 4; attempt++) {
        const started = now().getTime();
        await w.runOnce();
        const job = await getJob(pool, id);
        assert.deepEqual([job.status, job.attempts], ['queued', attempt]);
        waits.push(job.nextAttemptAt.getTime() - started);
        assert.match((await task(id)).businessStatus?.text ?? '', new RegExp(`^attempt ${attempt} of 5 failed: .*HTTP ${statuses[attempt - 1]}`));
        advanceTo(job.nextAttemptAt);
      }
      for (const [i, wait] of waits.slice(0, 3).entries()) {
        const full = 1000 * 2 ** i;
        assert.ok(wait >= full / 2 && wait <= full + 50, `wait ${i + 1} is ${wait} ms, not within [${full / 2}, ${full}]`);
      }
      assert.ok(waits[3] !== undefined && waits[3] >= 20_000 && waits[3] <= 20_050, `Retry-After: 20 → ${waits[3]} ms`);
      await w.runOnce();
      const job = await getJob(pool, id);
      assert.deepEqual([job.status, job.attempts, calls], ['failed', 5, 5]);
      const failed = await task(id);
      assert.equal(failed.status, 'failed');
      assert.match(failed.statusReason?.text ?? '', /^gave up after 5 attempts: .*HTTP 503/);
    } finally {
      await close(busy);
    }
  });

  it('fails at once, with the EHR\'s reason, when the EHR refuses the document (4xx)', async () => {
    const invalid = payload(id0('refused'), { status: 'no-such-status' as never });
    const id = await queue('fhir', await fhirEndpoint(ehrBase, tokenUrl), invalid);
    await worker().runOnce();
    const job = await getJob(pool, id);
    assert.deepEqual([job.status, job.attempts], ['failed', 1]);
    assert.match(job.lastError ?? '', /create DocumentReference at .*: the EHR answered HTTP 4\d\d/);
    const failed = await task(id);
    assert.deepEqual([failed.status, attemptsOf(failed)], ['failed', 1]);
    assert.equal(failed.statusReason?.text, job.lastError);
  });

  it('after a worker stopped mid-delivery, finds the document the EHR already stored and does not send it again', async () => {
    const id = await queue('fhir', await fhirEndpoint(ehrBase, tokenUrl), payload(id0('crash')));
    // The worker claims the job and sends the document, then dies before recording anything.
    const claimed = (await claimDue(pool, now(), 60_000)) as DeliveryJob;
    assert.deepEqual([claimed.id, claimed.status, claimed.attempts], [id, 'sending', 1]);
    const posted = await peer.fetch('DocumentReference', { method: 'POST', body: JSON.stringify(payload(id0('crash')).documentReference) });
    assert.equal(posted.status, 201);
    const remoteId = ((await posted.json()) as { id: string }).id;

    assert.equal(await worker().runOnce(), 0, 'the lease holds');
    offset += 61_000;
    await worker().runOnce();
    const job = await getJob(pool, id);
    assert.deepEqual([job.status, job.attempts, job.remoteId], ['delivered', 2, `${ehrBase}/DocumentReference/${remoteId}`]);
    assert.match(job.lastError ?? '', /attempt 1 was interrupted/);
    assert.equal((await atEhr('DocumentReference', DOC_SYSTEM, id0('crash'))).length, 1, 'no second DocumentReference');
    const done = await task(id);
    assert.deepEqual([done.status, attemptsOf(done)], ['completed', 2]);
    assert.match(done.businessStatus?.text ?? '', /already had the document/);
  });

  it('with static bearer tokens: a Communication refused after its document is sent goes with a later delivery, and neither is ever duplicated', async () => {
    const key = id0('bearer');
    // The token first given covers documents only: the Communication is refused (403), the job fails.
    const endpointId = await fhirEndpointWith(ehrBase, bearer(DOCS_ONLY_TOKEN_VAR));
    const first = await queue('fhir', endpointId, payload(key));
    await worker().runOnce();
    const failed = await getJob(pool, first);
    const docs = await atEhr<DocumentReference>('DocumentReference', DOC_SYSTEM, key);
    assert.equal(docs.length, 1);
    assert.deepEqual([failed.status, failed.attempts], ['failed', 1]);
    assert.match(failed.lastError ?? '', new RegExp(`^the document is at ${ehrBase}/DocumentReference/${docs[0]?.id}, but its Communication is not: .*HTTP 403`));
    assert.equal((await atEhr('Communication', COMM_SYSTEM, key)).length, 0);

    // The Endpoint is given the token that covers Communications, and the report is sent again.
    await fhirEndpointWith(ehrBase, bearer(FULL_TOKEN_VAR), endpointId);
    const second = await queue('fhir', endpointId, payload(key));
    await worker().runOnce();
    const comms = await atEhr<Communication>('Communication', COMM_SYSTEM, key);
    assert.equal(comms.length, 1);
    assert.equal(comms[0]?.payload?.[0]?.contentReference?.reference, `DocumentReference/${docs[0]?.id}`);
    assert.ok(comms[0]?.sent, 'sent is set when it is sent');
    const job = await getJob(pool, second);
    assert.deepEqual([job.status, job.remoteId], ['delivered', `${ehrBase}/DocumentReference/${docs[0]?.id}`]);
    const done = await task(second);
    assert.match(done.businessStatus?.text ?? '', new RegExp(`already had the document.*; Communication/${comms[0]?.id}$`));
    assert.deepEqual(done.output?.map((o) => o.valueReference?.reference), [job.remoteId, `${ehrBase}/Communication/${comms[0]?.id}`]);

    // Once more: both are found at the EHR, neither is created again.
    const third = await queue('fhir', endpointId, payload(key));
    await worker().runOnce();
    assert.match((await task(third)).businessStatus?.text ?? '', new RegExp(`already had the document.*; Communication/${comms[0]?.id} \\(already there\\)$`));
    assert.equal((await atEhr('DocumentReference', DOC_SYSTEM, key)).length, 1);
    assert.equal((await atEhr('Communication', COMM_SYSTEM, key)).length, 1);
  });

  it('a static token the EHR echoes back reaches neither the job, the Task nor the logs', async () => {
    let seen = '';
    const echo = createServer((req, res) => {
      seen = req.headers.authorization ?? '';
      res.writeHead(400, { 'content-type': FHIR_JSON });
      res.end(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'security', diagnostics: `token ${seen.slice('Bearer '.length)} is not valid (${seen})` }] }));
    });
    const port = await listen(echo);
    try {
      const lines: string[] = [];
      const logger = pino(
        { level: 'trace' },
        new Writable({
          write(chunk: Buffer, _encoding, done) {
            lines.push(chunk.toString());
            done();
          },
        }),
      );
      const id = await queue('fhir', await fhirEndpointWith(`http://127.0.0.1:${port}/fhir`, bearer(ECHOED_TOKEN_VAR)), payload(id0('echo')));
      await worker({ logger }).runOnce();
      assert.equal(seen, `Bearer ${ECHOED_TOKEN}`, 'the EHR was sent the token');
      const job = await getJob(pool, id);
      assert.equal(job.status, 'failed');
      assert.match(job.lastError ?? '', /the EHR answered HTTP 400 \(error security: token \[token\] is not valid \(Bearer \[token\]\)\)$/);
      const failed = await task(id);
      assert.equal(failed.statusReason?.text, job.lastError);
      assert.ok(lines.length > 0, 'the worker logged');
      assert.ok(!`${JSON.stringify([job, failed])}${lines.join('')}`.includes(ECHOED_TOKEN));
    } finally {
      await close(echo);
    }
  });

  it('fails at once, naming the element, when the Endpoint names a token the server does not have', async () => {
    const endpointId = await fhirEndpointWith(ehrBase, bearer('EHR_TOKEN_NOWHERE'));
    const id = await queue('fhir', endpointId, payload(id0('nowhere')));
    await worker().runOnce();
    const job = await getJob(pool, id);
    assert.deepEqual([job.status, job.attempts], ['failed', 1]);
    assert.equal(
      job.lastError,
      `Endpoint/${endpointId} names EHR_TOKEN_NOWHERE in 'tokenRef', which is not set on this server for this tenant (it is read from the server's environment at start, as <tenant>:<token>) (Endpoint.extension('${EHR_ENDPOINT_EXTENSION}').extension('tokenRef'))`,
    );
  });

  it("fails a job of another tenant whose Endpoint names this tenant's token as if it were not set, sending nothing", async () => {
    // The same schema, visited as another tenant's: only the tenant the worker reads the job for differs.
    const asOther = (): DeliveryWorker => worker({ tenants: () => Promise.resolve([{ tenant: `other-${RUN}`, pool, repo }]) });
    const endpointId = await fhirEndpointWith(ehrBase, bearer(FULL_TOKEN_VAR));
    const id = await queue('fhir', endpointId, payload(id0('other-tenant')));
    const before = peer.requests.length;
    await asOther().runOnce();
    const job = await getJob(pool, id);
    assert.deepEqual([job.status, job.attempts], ['failed', 1]);
    assert.equal(
      job.lastError,
      `Endpoint/${endpointId} names ${FULL_TOKEN_VAR} in 'tokenRef', which is not set on this server for this tenant (it is read from the server's environment at start, as <tenant>:<token>) (Endpoint.extension('${EHR_ENDPOINT_EXTENSION}').extension('tokenRef'))`,
    );
    assert.equal(peer.requests.length, before, 'nothing was sent to the EHR');
    assert.equal((await task(id)).status, 'failed');
  });

  it('claims each due job once, even concurrently; a worker whose lease was taken over cannot record an outcome', async () => {
    const endpointId = await mllpEndpoint(mllp.port);
    const ids = [await queue('mllp', endpointId, { message: mdm(`C1${RUN}`) }), await queue('mllp', endpointId, { message: mdm(`C2${RUN}`) })];
    const claims = await Promise.all([claimDue(pool, now(), 1000), claimDue(pool, now(), 1000), claimDue(pool, now(), 1000)]);
    assert.deepEqual(claims.map((c) => c?.id).filter(Boolean).sort(), [...ids].sort());
    offset += 1001;
    const again = (await claimDue(pool, now(), 1000)) as DeliveryJob;
    assert.deepEqual([again.attempts, again.ambiguous], [2, true]);
    assert.equal(await markDelivered(pool, { id: again.id, attempts: 1 }, 'late'), false, 'the first claim is fenced off');
    assert.equal(await markDelivered(pool, again, 'on time'), true);
  });

  it('fails at once, not as a crash retried, when an MLLP Endpoint has no address', async () => {
    const endpointId = await endpoint({ connectionType: { system: 'http://terminology.hl7.org/CodeSystem/endpoint-connection-type', code: 'hl7v2-mllp' } });
    const id = await queue('mllp', endpointId, { message: mdm(`NA${RUN}`) });
    await worker().runOnce();
    const job = await getJob(pool, id);
    assert.deepEqual([job.status, job.attempts], ['failed', 1]);
    assert.match(job.lastError ?? '', /address undefined is not mllp:\/\/host:port/);
  });

  it('MLLP: AA delivers, AR fails with the receiver\'s text, AE is retried', async () => {
    const endpointId = await mllpEndpoint(mllp.port);
    mllpMode = 'AA';
    const accepted = await queue('mllp', endpointId, { message: mdm(`AA${RUN}`) });
    await worker().runOnce();
    assert.deepEqual(pick(await getJob(pool, accepted)), ['delivered', 1, `AA${RUN}`]);
    const done = await task(accepted);
    assert.equal(done.status, 'completed');
    assert.equal(done.output?.[0]?.valueIdentifier?.value, `AA${RUN}`);

    mllpMode = 'AR';
    const rejected = await queue('mllp', endpointId, { message: mdm(`AR${RUN}`) });
    await worker().runOnce();
    const job = await getJob(pool, rejected);
    assert.deepEqual(pick(job), ['failed', 1, undefined]);
    assert.match(job.lastError ?? '', /answered AR \(reject\) to message AR.*: Unknown document type/);
    assert.equal((await task(rejected)).status, 'failed');

    mllpMode = 'AE';
    const errored = await queue('mllp', endpointId, { message: mdm(`AE${RUN}`) });
    await worker().runOnce();
    const retried = await getJob(pool, errored);
    assert.deepEqual([...pick(retried), retried.ambiguous], ['queued', 1, undefined, false]);
    assert.equal((await task(errored)).status, 'in-progress');
  });

  it('MLLP: no ACK, or a connection closed mid-message, is retried with the same control id', async () => {
    const endpointId = await mllpEndpoint(mllp.port);
    for (const mode of ['silent', 'close'] as const) {
      mllpMode = mode;
      const controlId = `${mode.slice(0, 2).toUpperCase()}${RUN}`;
      const id = await queue('mllp', endpointId, { message: mdm(controlId) });
      await worker().runOnce();
      const waiting = await getJob(pool, id);
      assert.deepEqual([...pick(waiting), waiting.ambiguous], ['queued', 1, undefined, true]);
      assert.match(waiting.lastError ?? '', mode === 'silent' ? /No MLLP reply within 400 ms/ : /closed/);
      mllpMode = 'AA';
      advanceTo(waiting.nextAttemptAt);
      await worker().runOnce();
      assert.deepEqual(pick(await getJob(pool, id)), ['delivered', 2, controlId]);
      const copies = received.filter((m) => m.includes(`|${controlId}|`));
      assert.equal(copies.length, 2);
      assert.equal(copies[0], copies[1], 'the same message, control id and all');
    }
  });

  it('jobs survive a restart: a new worker delivers what the old one left queued, polling until stopped', async () => {
    const dead = await freePort();
    const endpointId = await mllpEndpoint(dead);
    const id = await queue('mllp', endpointId, { message: mdm(`RS${RUN}`) });
    await worker().runOnce();
    const waiting = await getJob(pool, id);
    assert.deepEqual([...pick(waiting), waiting.ambiguous], ['queued', 1, undefined, false]);
    assert.match(waiting.lastError ?? '', /Cannot connect/);

    // "Restart": the receiver is back, and a new worker, knowing nothing, runs over the same database.
    await mllpEndpoint(mllp.port, endpointId);
    mllpMode = 'AA';
    advanceTo(waiting.nextAttemptAt);
    const fresh = worker({ pollIntervalMs: 50 });
    fresh.start();
    const deadline = Date.now() + 10_000;
    while ((await getJob(pool, id)).status !== 'delivered' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await fresh.stop();
    assert.deepEqual(pick(await getJob(pool, id)), ['delivered', 2, `RS${RUN}`]);
    const done = await task(id);
    assert.deepEqual([done.status, attemptsOf(done)], ['completed', 2]);
  });

  /** A document key unique to this run. */
  function id0(name: string): string {
    return `${name}-${RUN}`;
  }
  function pick(job: DeliveryJob): [string, number, string | undefined] {
    return [job.status, job.attempts, job.remoteId];
  }
});
