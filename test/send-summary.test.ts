/**
 * POST /fhir/Patient/{id}/$send-summary end to end, against real peers on loopback: the report is
 * built from the stored data, the Composition, local DocumentReference, Task and delivery job are
 * written together, and the delivery worker sends it: as a DocumentReference with the PDF to a
 * second instance of this server playing the physician's EHR (SMART Backend Services, the subject
 * set to the EHR's own Patient), and as MDM^T02 to a real MLLP peer. Delivered once: a second run
 * of the worker sends nothing again. The Task tells what happened.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Bundle, Composition, DocumentReference, Task } from 'fhir/r4.js';
import { Message } from 'node-hl7-client';
import supertest from 'supertest';
import { hashSecret, newClientId, newClientSecret } from '../src/auth/index.js';
import { loadConfig } from '../src/config.js';
import { FhirDocumentTransport, MllpDocumentTransport } from '../src/delivery/transports.js';
import { DeliveryWorker } from '../src/delivery/worker.js';
import { ack } from '../src/hl7/adt.js';
import { startMllpServer, type MllpServer } from '../src/hl7/mllp.js';
import { EHR_ENDPOINT_EXTENSION } from '../src/interactions/pull-diagnoses.js';
import { DOCUMENT_ID_SYSTEM } from '../src/interactions/send-summary.js';
import { startServer, type RunningServer } from '../src/server.js';
import { ClientStore } from '../src/store/clients.js';
import { createTenant } from '../src/store/tenants.js';
import { FHIR_JSON, silentLogger, TEST_TENANT, testContext, testSigningKey, tokenFor } from './helpers.js';

const RUN = randomUUID().slice(0, 8);
const MRN_SYSTEM = `http://riverside.example.org/mrn/${RUN}`;
const MRN = `E${RUN}`;
const CONNECTION_TYPE = 'http://terminology.hl7.org/CodeSystem/endpoint-connection-type';

describe('$send-summary: a progress report delivered to the physician', function () {
  this.timeout(120_000);
  let ehr: RunningServer;
  let dataDir: string;
  let jwks: Server;
  let mllp: MllpServer;
  const received: string[] = [];
  let ehrBase: string;
  let seedToken: string;
  let clientId: string;
  let patientId: string;
  let practitionerId: string;
  let worker: DeliveryWorker;

  const http = async () => supertest.agent((await testContext()).app).auth(await tokenFor('system/*.*'), { type: 'bearer' });
  const ehrGet = async (path: string): Promise<Bundle> => (await (await fetch(`${ehrBase}/${path}`, { headers: { authorization: `Bearer ${seedToken}` } })).json()) as Bundle;

  before(async () => {
    const key = await testSigningKey();
    jwks = createServer((_req, res) => res.setHeader('content-type', 'application/json').end(JSON.stringify({ keys: [key.publicJwk] })));
    await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve));
    dataDir = mkdtempSync(join(tmpdir(), 'met-summary-'));
    const env: Record<string, string> = { PORT: '0', HL7_PORT: '0', DELIVERY: 'off', DATA_DIR: dataDir, LOG_LEVEL: 'silent' };
    if (process.env.DATABASE_URL) env.DATABASE_URL = process.env.DATABASE_URL;
    ehr = await startServer(loadConfig(env), silentLogger);
    ehrBase = `http://localhost:${ehr.port}/fhir`;
    const tenant = `riverside-${RUN}`;
    await createTenant(ehr.db, tenant);
    const clients = new ClientStore(ehr.db.pool);
    clientId = newClientId();
    await clients.createClient({ clientId, tenant, name: 'met-server', jwksUrl: `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks.json`, scopes: 'system/Patient.rs system/DocumentReference.crs' });
    const seederId = newClientId();
    const secret = newClientSecret();
    await clients.createClient({ clientId: seederId, tenant, name: 'ehr-staff', secretHash: await hashSecret(secret), scopes: 'system/*.*' });
    const token = await fetch(`http://localhost:${ehr.port}/auth/token`, { method: 'POST', body: new URLSearchParams({ grant_type: 'client_credentials', client_id: seederId, client_secret: secret, scope: 'system/*.*' }) });
    seedToken = ((await token.json()) as { access_token: string }).access_token;
    const ehrPatient = await fetch(`${ehrBase}/Patient`, {
      method: 'POST',
      headers: { authorization: `Bearer ${seedToken}`, 'content-type': FHIR_JSON },
      body: JSON.stringify({ resourceType: 'Patient', identifier: [{ system: MRN_SYSTEM, value: MRN }], name: [{ family: 'Delacroix' }] }),
    });
    assert.equal(ehrPatient.status, 201);

    mllp = await startMllpServer(
      (message) => {
        received.push(message);
        return Promise.resolve(ack(message, 'AA'));
      },
      { port: 0, host: '127.0.0.1' },
    );

    // Our side: the client, the MET, a diagnosis, a goal and a measure taken three times.
    const api = await http();
    const patient = await api.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({
      resourceType: 'Patient',
      identifier: [{ system: MRN_SYSTEM, value: MRN }],
      name: [{ family: 'Delacroix', given: ['Marguerite'] }],
      birthDate: '1958-06-14',
      gender: 'female',
    });
    patientId = (patient.body as { id: string }).id;
    const practitioner = await api.post('/fhir/Practitioner').set('Content-Type', FHIR_JSON).send({ resourceType: 'Practitioner', name: [{ given: ['Jordan'], family: 'Reyes' }] });
    practitionerId = (practitioner.body as { id: string }).id;
    await api
      .post('/fhir/Condition')
      .set('Content-Type', FHIR_JSON)
      .send({ resourceType: 'Condition', code: { coding: [{ system: 'http://hl7.org/fhir/sid/icd-10-cm', code: 'M17.11', display: 'Unilateral primary osteoarthritis, right knee' }] }, subject: { reference: `Patient/${patientId}` } })
      .expect(201);
    await api
      .post('/fhir/Goal')
      .set('Content-Type', FHIR_JSON)
      .send({ resourceType: 'Goal', lifecycleStatus: 'active', achievementStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/goal-achievement', code: 'improving' }] }, description: { text: 'Walk 400 m without pain' }, subject: { reference: `Patient/${patientId}` } })
      .expect(201);
    for (const [date, value] of [['2026-10-01', 310], ['2026-10-20', 352], ['2026-11-10', 398]] as const) {
      await api
        .post('/fhir/Observation')
        .set('Content-Type', FHIR_JSON)
        .send({
          resourceType: 'Observation',
          status: 'final',
          code: { coding: [{ system: 'http://loinc.org', code: '64098-7', display: 'Six minute walk test' }], text: '6-minute walk distance' },
          subject: { reference: `Patient/${patientId}` },
          effectiveDateTime: `${date}T10:00:00Z`,
          valueQuantity: { value, unit: 'm', system: 'http://unitsofmeasure.org', code: 'm' },
        })
        .expect(201);
    }
    const { db, ctx } = await testContext();
    // The tests' tenant, in whichever schema it got (public unless another tenant was registered first).
    const schema = (await new ClientStore(db.pool).tenantSchema(TEST_TENANT)) as string;
    const repo = (await ctx.tenants?.repository(TEST_TENANT)) ?? ctx.repo;
    worker = new DeliveryWorker({
      tenants: () => Promise.resolve([{ tenant: TEST_TENANT, pool: db.inSchema(schema), repo }]),
      transports: { fhir: new FhirDocumentTransport(), mllp: new MllpDocumentTransport() },
      validator: ctx.validator,
      ...(ctx.outboundKey ? { outboundKey: ctx.outboundKey } : {}),
      allowHttp: true,
      logger: silentLogger,
    });
  });

  after(async () => {
    await ehr?.stop();
    await mllp?.close();
    jwks?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  async function endpoint(body: object): Promise<string> {
    const res = await (await http()).post('/fhir/Endpoint').set('Content-Type', FHIR_JSON).send(body);
    assert.equal(res.status, 201, res.text);
    return (res.body as { id: string }).id;
  }

  function parameters(endpointId: string): object {
    return {
      resourceType: 'Parameters',
      parameter: [
        { name: 'endpoint', valueReference: { reference: `Endpoint/${endpointId}` } },
        { name: 'author', valueReference: { reference: `Practitioner/${practitionerId}` } },
        { name: 'period', valuePeriod: { start: '2026-10-01', end: '2026-11-20' } },
        { name: 'recipient', valueString: 'Dr. Chidi Okonkwo' },
        { name: 'recommendation', valueString: 'Continue the walking program, 5 times a week.' },
      ],
    };
  }

  /** Runs the worker until nothing is due; returns the Task. */
  async function deliver(taskId: string): Promise<Task> {
    await worker.runOnce();
    return (await (await http()).get(`/fhir/Task/${taskId}`).expect(200)).body as Task;
  }

  it('over FHIR: queues the report (Task requested), then delivers one DocumentReference with the PDF to the EHR\'s Patient', async () => {
    const id = await endpoint({
      resourceType: 'Endpoint',
      status: 'active',
      name: 'Riverside EHR',
      connectionType: { system: CONNECTION_TYPE, code: 'hl7-fhir-rest' },
      payloadType: [{ text: 'FHIR R4' }],
      address: ehrBase,
      extension: [
        {
          url: EHR_ENDPOINT_EXTENSION,
          extension: [
            { url: 'auth', valueCode: 'smart-backend' },
            { url: 'tokenUrl', valueUrl: `http://localhost:${ehr.port}/auth/token` },
            { url: 'clientId', valueString: clientId },
            { url: 'scope', valueString: 'system/Patient.rs system/DocumentReference.crs' },
            { url: 'patientIdentifierSystem', valueUri: MRN_SYSTEM },
          ],
        },
      ],
    });
    const res = await (await http()).post(`/fhir/Patient/${patientId}/$send-summary`).set('Content-Type', FHIR_JSON).send(parameters(id));
    assert.equal(res.status, 201, res.text);
    const queued = res.body as Task;
    assert.equal(queued.status, 'requested');
    const identifier = queued.identifier?.[0];
    assert.equal(identifier?.system, DOCUMENT_ID_SYSTEM);

    // Stored here: the Composition with its sections, and the PDF as our own DocumentReference.
    const local = (await (await http()).get(`/fhir/${queued.focus?.reference}`).expect(200)).body as DocumentReference;
    const pdf = Buffer.from(local.content[0]?.attachment.data ?? '', 'base64');
    assert.equal(pdf.subarray(0, 5).toString(), '%PDF-');
    const composition = (await (await http()).get(`/fhir/${local.context?.related?.[0]?.reference}`).expect(200)).body as Composition;
    assert.equal(composition.type.coding?.[0]?.code, '11506-3');
    const outcomes = composition.section?.find((s) => s.code?.coding?.[0]?.code === '30954-2');
    assert.match(outcomes?.text?.div ?? '', /310/);
    assert.match(outcomes?.text?.div ?? '', /398/);

    const done = await deliver(queued.id as string);
    assert.equal(done.status, 'completed', JSON.stringify(done.businessStatus));
    const inEhr = await ehrGet(`DocumentReference?identifier=${encodeURIComponent(`${identifier?.system}|${identifier?.value}`)}`);
    assert.equal(inEhr.entry?.length, 1);
    const delivered = inEhr.entry?.[0]?.resource as DocumentReference;
    const ehrPatient = await ehrGet(`Patient?identifier=${encodeURIComponent(`${MRN_SYSTEM}|${MRN}`)}`);
    assert.equal(delivered.subject?.reference, `Patient/${ehrPatient.entry?.[0]?.resource?.id}`);
    assert.equal(delivered.type?.coding?.[0]?.code, '11506-3');
    assert.deepEqual(Buffer.from(delivered.content[0]?.attachment.data ?? '', 'base64'), pdf);

    // Delivered once: another run sends nothing again.
    await worker.runOnce();
    assert.equal((await ehrGet(`DocumentReference?identifier=${encodeURIComponent(`${identifier?.system}|${identifier?.value}`)}`)).entry?.length, 1);
  });

  it('over HL7 v2: delivers an MDM^T02 whose OBX carries the PDF, acknowledged AA', async () => {
    const id = await endpoint({
      resourceType: 'Endpoint',
      status: 'active',
      name: 'Riverside interface engine',
      connectionType: { system: CONNECTION_TYPE, code: 'hl7v2-mllp' },
      payloadType: [{ text: 'HL7 v2 MDM' }],
      address: `mllp://127.0.0.1:${mllp.port}`,
      extension: [{ url: EHR_ENDPOINT_EXTENSION, extension: [{ url: 'patientIdentifierSystem', valueUri: MRN_SYSTEM }] }],
    });
    const res = await (await http()).post(`/fhir/Patient/${patientId}/$send-summary`).set('Content-Type', FHIR_JSON).send(parameters(id));
    assert.equal(res.status, 201, res.text);
    const before = received.length;
    const done = await deliver((res.body as Task).id as string);
    assert.equal(done.status, 'completed', JSON.stringify(done.businessStatus));
    assert.equal(received.length, before + 1);
    const message = new Message({ text: received[received.length - 1] as string });
    assert.equal(message.get('MSH.9.1').toString(), 'MDM');
    assert.equal(message.get('PID.3.1').toString(), MRN);
    const obx5 = (received[received.length - 1] as string).split('\r').find((s) => s.startsWith('OBX'))?.split('|')[5] ?? '';
    const base64 = obx5.split('^')[4] ?? '';
    assert.equal(Buffer.from(base64, 'base64').subarray(0, 5).toString(), '%PDF-');
    await worker.runOnce();
    assert.equal(received.length, before + 1, 'not sent twice');
  });

  it('refuses a report for a Patient not linked to the Endpoint\'s EHR, writing nothing', async () => {
    const id = await endpoint({
      resourceType: 'Endpoint',
      status: 'active',
      connectionType: { system: CONNECTION_TYPE, code: 'hl7v2-mllp' },
      payloadType: [{ text: 'HL7 v2 MDM' }],
      address: `mllp://127.0.0.1:${mllp.port}`,
      extension: [{ url: EHR_ENDPOINT_EXTENSION, extension: [{ url: 'patientIdentifierSystem', valueUri: 'http://elsewhere.example.org/mrn' }] }],
    });
    const tasksBefore = ((await (await http()).get(`/fhir/Task?patient=Patient/${patientId}&_summary=count`)).body as Bundle).total;
    const res = await (await http()).post(`/fhir/Patient/${patientId}/$send-summary`).set('Content-Type', FHIR_JSON).send(parameters(id));
    assert.equal(res.status, 422, res.text);
    const tasksAfter = ((await (await http()).get(`/fhir/Task?patient=Patient/${patientId}&_summary=count`)).body as Bundle).total;
    assert.equal(tasksAfter, tasksBefore);
  });
});
