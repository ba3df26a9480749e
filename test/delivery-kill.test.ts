/**
 * Our server killed (SIGKILL) while a delivery is in flight: the EHR has received the document, our
 * server never saw the answer. After a restart on the same data, the job is taken up again as
 * ambiguous once its lease has passed; the search before create finds the document the EHR already
 * holds, so it is never delivered twice, and the Task says what happened. The server is a real
 * child process (so it can be killed), on its own embedded database in a temporary DATA_DIR; the
 * EHR is a second instance of this server (test/ehr-peer.ts) behind a loopback HTTP relay that
 * passes every request on but holds the EHR's answer to the document's create until told.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Bundle, DocumentReference, Task } from 'fhir/r4.js';
import { close, fhirEndpoint, freePort, listen, startEhrPeer, type EhrPeer } from './ehr-peer.js';
import { FHIR_JSON } from './helpers.js';

const RUN = randomUUID().slice(0, 8);
const MRN_SYSTEM = `http://riverside.example.org/mrn/${RUN}`;
const MRN = `K${RUN}`;
const TOKEN_VAR = `EHR_TOKEN_KILL_${RUN.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
const ROOT = new URL('..', import.meta.url).pathname;

describe('delivery when our server is killed mid-flight', function () {
  this.timeout(120_000);
  let peer: EhrPeer;
  let relay: Server;
  let relayOrigin: string;
  let dataDir: string;
  let child: ChildProcess | undefined;
  let base: string;
  let token: string;
  /** Set while the relay holds the EHR's answer to a document create: call it to let the answer through. */
  let held: { release: () => void } | undefined;
  let documentPosted: () => void = () => undefined;
  /** `METHOD path` of every request the relay passed to the EHR. */
  const relayed: string[] = [];

  const start = async (port: number, env: Record<string, string>): Promise<void> => {
    const spawned = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      cwd: ROOT,
      env: { ...process.env, DATABASE_URL: '', NODE_ENV: 'development', PORT: String(port), HOST: '127.0.0.1', HL7_PORT: '0', DATA_DIR: dataDir, LOG_LEVEL: 'warn', ...env },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    child = spawned;
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (spawned.exitCode !== null) throw new Error(`server exited with ${spawned.exitCode} during start`);
      const ready = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.ok, () => false);
      if (ready) return;
      if (Date.now() > deadline) throw new Error('server not ready within 60 s');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  };
  const kill = async (): Promise<void> => {
    const running = child;
    if (!running || running.exitCode !== null || running.signalCode !== null) return;
    const exited = new Promise((resolve) => running.once('exit', resolve));
    running.kill('SIGKILL');
    await exited;
  };
  const api = (path: string, init: RequestInit = {}): Promise<Response> =>
    fetch(`${base}${path}`, { ...init, headers: { authorization: `Bearer ${token}`, 'content-type': FHIR_JSON, ...(init.headers as Record<string, string> | undefined) } });
  const ehrDocuments = async (): Promise<DocumentReference[]> =>
    (((await (await peer.fetch(`DocumentReference?subject:Patient.identifier=${encodeURIComponent(`${MRN_SYSTEM}|${MRN}`)}`)).json()) as Bundle).entry ?? []).map((e) => e.resource as DocumentReference);

  before(async () => {
    peer = await startEhrPeer({ prefix: 'killed' });
    await peer.create({ resourceType: 'Patient', identifier: [{ system: MRN_SYSTEM, value: MRN }], name: [{ family: 'Lindqvist' }] });
    // The relay: every request goes to the EHR at once; the answer to a DocumentReference create is
    // held until released (the EHR has stored the document by then).
    const target = new URL(peer.origin);
    relay = createServer((req, res) => {
      const path = (req.url ?? '').split('?')[0] as string;
      relayed.push(`${req.method ?? ''} ${path}`);
      const holds = req.method === 'POST' && path === '/fhir/DocumentReference';
      const upstream = request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
        const pass = (): void => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        };
        if (!holds) return pass();
        held = { release: pass };
        documentPosted();
      });
      upstream.on('error', () => res.destroy());
      req.pipe(upstream);
    });
    relayOrigin = `http://127.0.0.1:${await listen(relay)}`;
    dataDir = mkdtempSync(join(tmpdir(), 'met-killed-'));
  });

  after(async () => {
    await kill();
    held?.release();
    await close(relay);
    await peer?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('delivers the document exactly once after a restart, and the Task tells of the interrupted attempt', async () => {
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    const ehrToken = await peer.issueToken('system/Patient.rs system/DocumentReference.crs');
    // The first start creates the development tenant `default` and its client (dev-credentials.json).
    const env = { [TOKEN_VAR]: `default:${ehrToken}`, DELIVERY_LEASE_SECONDS: '2' };
    await start(port, env);
    const creds = JSON.parse(readFileSync(join(dataDir, 'dev-credentials.json'), 'utf8')) as { client_id: string; client_secret: string };
    const issued = await fetch(`${base}/auth/token`, {
      method: 'POST',
      body: new URLSearchParams({ grant_type: 'client_credentials', client_id: creds.client_id, client_secret: creds.client_secret, scope: 'system/*.*' }),
    });
    token = ((await issued.json()) as { access_token: string }).access_token;

    const created = async (resource: object): Promise<string> => {
      const res = await api(`/fhir/${(resource as { resourceType: string }).resourceType}`, { method: 'POST', body: JSON.stringify(resource) });
      assert.equal(res.status, 201, await res.clone().text());
      return ((await res.json()) as { id: string }).id;
    };
    const patientId = await created({ resourceType: 'Patient', identifier: [{ system: MRN_SYSTEM, value: MRN }], name: [{ family: 'Lindqvist', given: ['Ingrid'] }], birthDate: '1961-02-03', gender: 'female' });
    const author = await created({ resourceType: 'Practitioner', name: [{ given: ['Sam'], family: 'Okoro' }] });
    const endpointId = await created(
      fhirEndpoint(`${relayOrigin}/fhir`, [{ url: 'auth', valueCode: 'bearer' }, { url: 'tokenRef', valueString: `env:${TOKEN_VAR}` }, { url: 'patientIdentifierSystem', valueUri: MRN_SYSTEM }]),
    );

    const posted = new Promise<void>((resolve) => (documentPosted = resolve));
    const sent = await api(`/fhir/Patient/${patientId}/$send-summary`, {
      method: 'POST',
      body: JSON.stringify({
        resourceType: 'Parameters',
        parameter: [
          { name: 'endpoint', valueReference: { reference: `Endpoint/${endpointId}` } },
          { name: 'author', valueReference: { reference: `Practitioner/${author}` } },
          { name: 'period', valuePeriod: { start: '2026-10-01', end: '2026-11-30' } },
          { name: 'recipient', valueString: 'Dr. Amara Nwosu' },
        ],
      }),
    });
    assert.equal(sent.status, 201, await sent.clone().text());
    const taskId = ((await sent.json()) as Task).id as string;

    // The document reaches the EHR; our server dies before it hears back.
    await posted;
    await kill();
    held?.release();
    held = undefined;
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal((await ehrDocuments()).length, 1, 'the EHR holds the document sent before the kill');

    // Restarted on the same data: once the lease (2 s) has passed, the job is taken up again.
    await start(port, env);
    let task: Task | undefined;
    for (const deadline = Date.now() + 30_000; Date.now() < deadline; ) {
      task = (await (await api(`/fhir/Task/${taskId}`)).json()) as Task;
      if (task.status === 'completed' || task.status === 'failed') break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    assert.equal(task?.status, 'completed', JSON.stringify(task?.businessStatus));
    const documents = await ehrDocuments();
    assert.equal(documents.length, 1, 'never delivered twice');
    assert.equal(task?.output?.[0]?.valueReference?.reference, `${relayOrigin}/fhir/DocumentReference/${documents[0]?.id}`);
    assert.match(task?.businessStatus?.text ?? '', /^delivered on attempt 2/);
    // One create reached the EHR: each attempt searched first, and the second found the document.
    assert.deepEqual(
      relayed.filter((r) => r.endsWith(' /fhir/DocumentReference')),
      ['GET /fhir/DocumentReference', 'POST /fhir/DocumentReference', 'GET /fhir/DocumentReference'],
    );
    await kill();
  });
});
