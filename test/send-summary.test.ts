/**
 * POST /fhir/Patient/{id}/$send-summary end to end, against real peers on loopback: the report is
 * built from the stored data, the Composition, local DocumentReference, Task and delivery job are
 * written together, and the delivery worker sends it: as a DocumentReference with the PDF to a
 * second instance of this server playing the physician's EHR (SMART Backend Services, the subject
 * set to the EHR's own Patient), and as MDM^T02 to a real MLLP peer. Delivered once: a second run
 * of the worker sends nothing again. The Task tells what happened. With an Endpoint holding a
 * static bearer token (by reference) and asking for it, a Communication tells the physician.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { Bundle, Communication, Composition, DocumentReference, Endpoint, Task } from 'fhir/r4.js';
import { Message } from 'node-hl7-client';
import supertest from 'supertest';
import { FhirDocumentTransport, MllpDocumentTransport, type FhirDeliveryPayload } from '../src/delivery/transports.js';
import { DELIVERY_STATUS_SYSTEM, DeliveryWorker } from '../src/delivery/worker.js';
import { EgressGuard } from '../src/ehr/egress.js';
import { EHR_ENDPOINT_EXTENSION, readFhirEndpoint } from '../src/ehr/endpoint.js';
import { EhrSecrets } from '../src/ehr/secrets.js';
import { ack } from '../src/hl7/adt.js';
import { startMllpServer, type MllpServer } from '../src/hl7/mllp.js';
import { DOCUMENT_ID_SYSTEM, NOTIFICATION_ID_SYSTEM } from '../src/interactions/send-summary.js';
import { ClientStore } from '../src/store/clients.js';
import { createTenant } from '../src/store/tenants.js';
import { getJob } from '../src/store/delivery-jobs.js';
import type { Repository } from '../src/store/repository.js';
import type { SqlPool } from '../src/store/sql.js';
import { fhirEndpoint, smartSettings, startEhrPeer, type EhrPeer } from './ehr-peer.js';
import { assertOutcome, FHIR_JSON, silentLogger, TEST_TENANT, testContext, tokenFor } from './helpers.js';

const RUN = randomUUID().slice(0, 8);
const MRN_SYSTEM = `http://riverside.example.org/mrn/${RUN}`;
const MRN = `E${RUN}`;
const CONNECTION_TYPE = 'http://terminology.hl7.org/CodeSystem/endpoint-connection-type';
const NPI_SYSTEM = 'http://hl7.org/fhir/sid/us-npi';
/** The physician's NPI, known to the EHR; and another's it does not know. */
const NPI = `9${RUN.replace(/[^0-9]/g, '').padEnd(9, '7').slice(0, 9)}`;
const UNKNOWN_NPI = `8${NPI.slice(1)}`;
const TOKEN_VAR = `EHR_TOKEN_SUMMARY_${RUN.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;

describe('$send-summary: a progress report delivered to the physician', function () {
  this.timeout(120_000);
  let peer: EhrPeer;
  let mllp: MllpServer;
  const received: string[] = [];
  let ehrBase: string;
  let clientId: string;
  let patientId: string;
  let practitionerId: string;
  let ehrPatientId: string;
  let ehrPhysicianId: string;
  let worker: DeliveryWorker;
  let pool: SqlPool;
  /** The tests' tenant's data (not `public` on PostgreSQL when another tenant came first). */
  let repo: Repository;
  let secrets: EhrSecrets;
  let savedSecrets: EhrSecrets | undefined;

  const http = async () => supertest.agent((await testContext()).app).auth(await tokenFor('system/*.*'), { type: 'bearer' });
  const ehrGet = async (path: string): Promise<Bundle> => (await (await peer.fetch(path)).json()) as Bundle;

  before(async () => {
    peer = await startEhrPeer({ prefix: 'riverside' });
    ehrBase = peer.fhirBase;
    clientId = await peer.registerBackendClient('system/Patient.rs system/DocumentReference.crs');
    ehrPatientId = await peer.create({ resourceType: 'Patient', identifier: [{ system: MRN_SYSTEM, value: MRN }], name: [{ family: 'Delacroix' }] });
    ehrPhysicianId = await peer.create({ resourceType: 'Practitioner', identifier: [{ system: NPI_SYSTEM, value: NPI }], name: [{ family: 'Okonkwo', given: ['Chidi'], prefix: ['Dr.'] }] });
    // The static token our server holds for this EHR (EHR_TOKEN_…), issued by the EHR itself, for the tests' tenant.
    secrets = new EhrSecrets({ [TOKEN_VAR]: `${TEST_TENANT}:${await peer.issueToken('system/Patient.rs system/Practitioner.rs system/DocumentReference.crs system/Communication.crs')}` });
    const { ctx: shared } = await testContext();
    savedSecrets = shared.ehrSecrets;
    shared.ehrSecrets = secrets;

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
    pool = db.inSchema(schema);
    repo = (await ctx.tenants?.repository(TEST_TENANT)) ?? ctx.repo;
    worker = new DeliveryWorker({
      tenants: () => Promise.resolve([{ tenant: TEST_TENANT, pool, repo }]),
      transports: { fhir: new FhirDocumentTransport(), mllp: new MllpDocumentTransport() },
      validator: ctx.validator,
      ...(ctx.outboundKeys ? { outboundKeys: ctx.outboundKeys } : {}),
      ehrSecrets: secrets,
      allowHttp: true,
      logger: silentLogger,
    });
  });

  after(async () => {
    const { ctx } = await testContext();
    if (savedSecrets) ctx.ehrSecrets = savedSecrets;
    else delete ctx.ehrSecrets;
    await peer?.close();
    await mllp?.close();
  });

  async function endpoint(body: object): Promise<string> {
    const res = await (await http()).post('/fhir/Endpoint').set('Content-Type', FHIR_JSON).send(body);
    assert.equal(res.status, 201, res.text);
    return (res.body as { id: string }).id;
  }

  /** The operation's Parameters; `recipient` replaces the default one (a name), null leaves it out. */
  function parameters(endpointId: string, recipient: object | null = { name: 'recipient', valueString: 'Dr. Chidi Okonkwo' }): object {
    return {
      resourceType: 'Parameters',
      parameter: [
        { name: 'endpoint', valueReference: { reference: `Endpoint/${endpointId}` } },
        { name: 'author', valueReference: { reference: `Practitioner/${practitionerId}` } },
        { name: 'period', valuePeriod: { start: '2026-10-01', end: '2026-11-20' } },
        ...(recipient ? [recipient] : []),
        { name: 'recommendation', valueString: 'Continue the walking program, 5 times a week.' },
      ],
    };
  }

  /** An Endpoint of the EHR with our static token (tokenRef) that asks for a Communication. */
  const bearerEndpoint = (tokenRef = `env:${TOKEN_VAR}`): Promise<string> =>
    endpoint(
      fhirEndpoint(
        ehrBase,
        [
          { url: 'auth', valueCode: 'bearer' },
          { url: 'tokenRef', valueString: tokenRef },
          { url: 'patientIdentifierSystem', valueUri: MRN_SYSTEM },
          { url: 'sendCommunication', valueBoolean: true },
        ],
        { name: 'Riverside EHR (static token)' },
      ),
    );

  /** An Endpoint of the MLLP peer; `system` is its patientIdentifierSystem (none: left out). */
  const mllpEndpoint = (system: string | undefined, name?: string): Promise<string> =>
    endpoint({
      resourceType: 'Endpoint',
      status: 'active',
      ...(name ? { name } : {}),
      connectionType: { system: CONNECTION_TYPE, code: 'hl7v2-mllp' },
      payloadType: [{ text: 'HL7 v2 MDM' }],
      address: `mllp://127.0.0.1:${mllp.port}`,
      ...(system ? { extension: [{ url: EHR_ENDPOINT_EXTENSION, extension: [{ url: 'patientIdentifierSystem', valueUri: system }] }] } : {}),
    });

  const taskCount = async (): Promise<number | undefined> => ((await (await http()).get(`/fhir/Task?patient=Patient/${patientId}&_summary=count`)).body as Bundle).total;

  /** Runs the worker until nothing is due; returns the Task. */
  async function deliver(taskId: string): Promise<Task> {
    await worker.runOnce();
    return (await (await http()).get(`/fhir/Task/${taskId}`).expect(200)).body as Task;
  }

  it('over FHIR: queues the report (Task requested), then delivers one DocumentReference with the PDF to the EHR\'s Patient', async () => {
    const id = await endpoint(
      fhirEndpoint(ehrBase, [...smartSettings(peer.tokenUrl, clientId, 'system/Patient.rs system/DocumentReference.crs'), { url: 'patientIdentifierSystem', valueUri: MRN_SYSTEM }], { name: 'Riverside EHR' }),
    );
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
    assert.equal(delivered.subject?.reference, `Patient/${ehrPatientId}`);
    assert.equal(delivered.type?.coding?.[0]?.code, '11506-3');
    assert.deepEqual(Buffer.from(delivered.content[0]?.attachment.data ?? '', 'base64'), pdf);

    // Delivered once: another run sends nothing again.
    await worker.runOnce();
    assert.equal((await ehrGet(`DocumentReference?identifier=${encodeURIComponent(`${identifier?.system}|${identifier?.value}`)}`)).entry?.length, 1);
  });

  it('over FHIR with a static bearer token and sendCommunication: delivers the document and a Communication to the physician the EHR knows by NPI, each once', async () => {
    const id = await bearerEndpoint();
    const recipient = { name: 'recipient', valueReference: { type: 'Practitioner', identifier: { system: NPI_SYSTEM, value: NPI }, display: 'Dr. Chidi Okonkwo' } };
    const res = await (await http()).post(`/fhir/Patient/${patientId}/$send-summary`).set('Content-Type', FHIR_JSON).send(parameters(id, recipient));
    assert.equal(res.status, 201, res.text);
    const queued = res.body as Task;
    const key = queued.identifier?.[0]?.value as string;
    const before = peer.requests.length;
    const done = await deliver(queued.id as string);
    assert.equal(done.status, 'completed', JSON.stringify(done.businessStatus));
    assert.ok(!peer.requests.slice(before).includes('/auth/token'), 'a static token: no token request');

    const docs = await peer.byIdentifier<DocumentReference>('DocumentReference', DOCUMENT_ID_SYSTEM, key);
    const comms = await peer.byIdentifier<Communication>('Communication', NOTIFICATION_ID_SYSTEM, key);
    assert.deepEqual([docs.length, comms.length], [1, 1]);
    const comm = comms[0] as Communication;
    assert.equal(comm.status, 'completed');
    assert.deepEqual(comm.category?.[0]?.coding?.[0], { system: 'http://terminology.hl7.org/CodeSystem/communication-category', code: 'notification', display: 'Notification' });
    assert.equal(comm.subject?.reference, `Patient/${ehrPatientId}`);
    assert.deepEqual(comm.recipient, [{ type: 'Practitioner', identifier: { system: NPI_SYSTEM, value: NPI }, display: 'Dr. Chidi Okonkwo', reference: `Practitioner/${ehrPhysicianId}` }]);
    assert.equal(comm.payload?.find((p) => p.contentReference)?.contentReference?.reference, `DocumentReference/${docs[0]?.id}`);
    assert.ok(comm.sent && Math.abs(Date.parse(comm.sent) - Date.now()) < 120_000, `sent ${comm.sent}`);
    assert.deepEqual(
      done.output?.map((o) => [o.type.coding?.find((c) => c.system === DELIVERY_STATUS_SYSTEM)?.code, o.valueReference?.reference]),
      [
        ['delivered-document', `${ehrBase}/DocumentReference/${docs[0]?.id}`],
        ['delivered-communication', `${ehrBase}/Communication/${comm.id}`],
      ],
    );

    // The same job again (a worker that died before recording its outcome): both are found, neither sent twice.
    const job = await getJob(pool, queued.id as string);
    const settings = readFhirEndpoint(JSON.parse((await repo.read('Endpoint', id)).json ?? '{}') as Endpoint, { secrets, tenant: TEST_TENANT, allowHttp: true });
    assert.ok('connection' in settings);
    const again = await new FhirDocumentTransport().deliver(job.payload as FhirDeliveryPayload, settings.connection);
    assert.equal(again.kind, 'delivered');
    assert.match(again.kind === 'delivered' ? (again.note ?? '') : '', /already had the document.*; Communication\/\S+ \(already there\)$/);
    assert.equal((await peer.byIdentifier('DocumentReference', DOCUMENT_ID_SYSTEM, key)).length, 1);
    assert.equal((await peer.byIdentifier('Communication', NOTIFICATION_ID_SYSTEM, key)).length, 1);
  });

  it("addresses the Communication by identifier alone when no Practitioner at the EHR carries the recipient's NPI", async () => {
    const api = await http();
    const physician = await api
      .post('/fhir/Practitioner')
      .set('Content-Type', FHIR_JSON)
      .send({ resourceType: 'Practitioner', identifier: [{ system: 'http://clinic.example.org/staff', value: 'S-1' }, { system: NPI_SYSTEM, value: UNKNOWN_NPI }], name: [{ given: ['Ada'], family: 'Lovelace' }] })
      .expect(201);
    const res = await api
      .post(`/fhir/Patient/${patientId}/$send-summary`)
      .set('Content-Type', FHIR_JSON)
      .send(parameters(await bearerEndpoint(), { name: 'recipient', valueReference: { reference: `Practitioner/${(physician.body as { id: string }).id}` } }));
    assert.equal(res.status, 201, res.text);
    const done = await deliver((res.body as Task).id as string);
    assert.equal(done.status, 'completed', JSON.stringify(done.businessStatus));
    assert.match(done.businessStatus?.text ?? '', /no Practitioner at the EHR carries the recipient's identifier: sent by identifier only/);
    const [comm] = await peer.byIdentifier<Communication>('Communication', NOTIFICATION_ID_SYSTEM, (res.body as Task).identifier?.[0]?.value as string);
    assert.deepEqual(comm?.recipient, [{ type: 'Practitioner', identifier: { system: NPI_SYSTEM, value: UNKNOWN_NPI }, display: 'Ada Lovelace' }]);
  });

  it('refuses, writing nothing, a Communication without a recipient and an Endpoint naming a token the server does not have', async () => {
    const before = await taskCount();
    const noRecipient = await (await http()).post(`/fhir/Patient/${patientId}/$send-summary`).set('Content-Type', FHIR_JSON).send(parameters(await bearerEndpoint(), null));
    assert.equal(noRecipient.status, 422, noRecipient.text);
    assertOutcome(noRecipient.body, [
      { code: 'processing', detail: 'unprocessable-operation', expression: "Parameters.parameter.where(name = 'recipient')", diagnostics: /asks for a Communication to the physician: \$send-summary needs parameter 'recipient'$/ },
    ]);
    const unsetId = await bearerEndpoint('env:EHR_TOKEN_NOT_ON_THIS_SERVER');
    const unset = await (await http()).post(`/fhir/Patient/${patientId}/$send-summary`).set('Content-Type', FHIR_JSON).send(parameters(unsetId));
    assert.equal(unset.status, 422, unset.text);
    assertOutcome(unset.body, [
      {
        code: 'processing',
        detail: 'unprocessable-operation',
        expression: `Endpoint.extension('${EHR_ENDPOINT_EXTENSION}').extension('tokenRef')`,
        diagnostics: `Endpoint/${unsetId} names EHR_TOKEN_NOT_ON_THIS_SERVER in 'tokenRef', which is not set on this server for this tenant (it is read from the server's environment at start, as <tenant>:<token>)`,
      },
    ]);
    assert.equal(await taskCount(), before);
  });

  it("refuses another tenant's Endpoint naming this tenant's token as if it were not set: nothing queued, nothing sent", async () => {
    const { db, app } = await testContext();
    const attacker = `attacker-${RUN}`;
    if (!(await new ClientStore(db.pool).tenantExists(attacker))) await createTenant(db, attacker);
    const theirs = supertest.agent(app).auth(await tokenFor('system/*.*', { tenant: attacker }), { type: 'bearer' });
    // Their own Endpoint (to a host of their choosing) naming our variable, and a Patient of theirs linked to it.
    const stolen = await theirs
      .post('/fhir/Endpoint')
      .set('Content-Type', FHIR_JSON)
      .send(fhirEndpoint(ehrBase, [{ url: 'auth', valueCode: 'bearer' }, { url: 'tokenRef', valueString: `env:${TOKEN_VAR}` }, { url: 'patientIdentifierSystem', valueUri: MRN_SYSTEM }]));
    assert.equal(stolen.status, 201, stolen.text);
    const stolenId = (stolen.body as { id: string }).id;
    const patient = await theirs.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', identifier: [{ system: MRN_SYSTEM, value: MRN }] });
    assert.equal(patient.status, 201, patient.text);
    const author = await theirs.post('/fhir/Practitioner').set('Content-Type', FHIR_JSON).send({ resourceType: 'Practitioner', name: [{ family: 'Mallory' }] });
    const body = JSON.parse(JSON.stringify(parameters(stolenId)).split(`Practitioner/${practitionerId}`).join(`Practitioner/${(author.body as { id: string }).id}`)) as object;
    const before = peer.requests.length;
    const refused = await theirs.post(`/fhir/Patient/${(patient.body as { id: string }).id}/$send-summary`).set('Content-Type', FHIR_JSON).send(body);
    assert.equal(refused.status, 422, refused.text);
    assertOutcome(refused.body, [
      {
        code: 'processing',
        detail: 'unprocessable-operation',
        expression: `Endpoint.extension('${EHR_ENDPOINT_EXTENSION}').extension('tokenRef')`,
        diagnostics: `Endpoint/${stolenId} names ${TOKEN_VAR} in 'tokenRef', which is not set on this server for this tenant (it is read from the server's environment at start, as <tenant>:<token>)`,
      },
    ]);
    assert.equal(((await theirs.get('/fhir/Task?_summary=count').expect(200)).body as Bundle).total, 0, 'nothing queued for the worker');
    await worker.runOnce();
    assert.equal(peer.requests.length, before, 'nothing sent to the EHR');
  });

  it('over HL7 v2: delivers an MDM^T02 whose OBX carries the PDF, acknowledged AA', async () => {
    const id = await mllpEndpoint(MRN_SYSTEM, 'Riverside interface engine');
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

  it('a session summary: the session\'s exercises, its measurements before, during and after, tolerance and next steps; refused without a session of this client', async () => {
    const api = await http();
    const post = async (resource: object): Promise<string> => {
      const res = await api.post(`/fhir/${(resource as { resourceType: string }).resourceType}`).set('Content-Type', FHIR_JSON).send(resource);
      assert.equal(res.status, 201, res.text);
      return (res.body as { id: string }).id;
    };
    const subject = { reference: `Patient/${patientId}` };
    const encounterId = await post({
      resourceType: 'Encounter',
      status: 'finished',
      class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
      subject,
      period: { start: '2026-11-12T19:30:00-05:00', end: '2026-11-12T20:20:00-05:00' },
      length: { value: 50, unit: 'min', system: 'http://unitsofmeasure.org', code: 'min' },
    });
    const encounter = { reference: `Encounter/${encounterId}` };
    await post({
      resourceType: 'Procedure',
      status: 'completed',
      code: { coding: [{ system: 'http://snomed.info/sct', code: '229065009', display: 'Exercise therapy' }] },
      subject,
      encounter,
      performedPeriod: { start: '2026-11-12T19:30:00-05:00', end: '2026-11-12T20:20:00-05:00' },
      note: [{ text: 'Recumbent bike: 15 min, RPE 12' }, { text: 'Sit-to-stand: 2 × 10' }],
      outcome: { text: 'Tolerated well' },
      followUp: [{ text: 'Add a third set of sit-to-stand.' }],
    });
    const vital = (code: string, display: string, value: number, unit: string, note: string): object => ({
      resourceType: 'Observation',
      status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code, display }], text: display },
      subject,
      encounter,
      effectiveDateTime: '2026-11-12T19:30:00-05:00',
      valueQuantity: { value, unit, system: 'http://unitsofmeasure.org', code: unit === 'beats/minute' ? '/min' : unit },
      note: [{ text: note }],
    });
    await post(vital('8867-4', 'Heart rate', 96, 'beats/minute', 'Measured after exercise'));
    await post(vital('8867-4', 'Heart rate', 72, 'beats/minute', 'Measured before exercise'));
    const mllpId = await mllpEndpoint(MRN_SYSTEM);
    const session = (extra: object[]): object => {
      const base = parameters(mllpId) as { parameter: object[] };
      return { ...base, parameter: [...base.parameter.filter((p) => (p as { name: string }).name !== 'period'), ...extra] };
    };
    const res = await api.post(`/fhir/Patient/${patientId}/$send-summary`).set('Content-Type', FHIR_JSON).send(session([{ name: 'kind', valueCode: 'session-summary' }, { name: 'encounter', valueReference: encounter }]));
    assert.equal(res.status, 201, res.text);
    const task = res.body as Task;
    assert.equal(task.code?.text, 'Deliver a session summary to the physician\u2019s EHR');
    const doc = JSON.parse((await repo.read('DocumentReference', (task.focus?.reference as string).split('/')[1] as string)).json ?? '{}') as DocumentReference;
    assert.deepEqual(doc.context?.period, { start: '2026-11-12', end: '2026-11-12' });
    const composition = JSON.parse((await repo.read('Composition', (doc.context?.related?.[0]?.reference as string).split('/')[1] as string)).json ?? '{}') as Composition;
    assert.equal(composition.title, 'Exercise session summary');
    const div = composition.section?.find((x) => x.title === 'Session details')?.text?.div ?? '';
    assert.match(div, /Session on 12 Nov 2026, 50 min\./);
    assert.match(div, /<li>Recumbent bike: 15 min, RPE 12<\/li><li>Sit-to-stand: 2 × 10<\/li>/);
    assert.match(div, /Heart rate \(before exercise\)<\/td><td>72 beats\/minute<\/td>.*Heart rate \(after exercise\)<\/td><td>96 beats\/minute/);
    assert.match(div, /Tolerance: Tolerated well\. Next steps: Add a third set of sit-to-stand\./);
    assert.equal(composition.section?.some((x) => x.title === 'Attendance'), false);
    const done = await deliver(task.id as string);
    assert.equal(done.status, 'completed', JSON.stringify(done.businessStatus));

    const tasksBefore = await taskCount();
    const refused = async (extra: object[]): Promise<unknown> => {
      const r = await api.post(`/fhir/Patient/${patientId}/$send-summary`).set('Content-Type', FHIR_JSON).send(session(extra));
      assert.equal(r.status, 422, r.text);
      return r.body;
    };
    const at = (name: string): string => `Parameters.parameter.where(name = '${name}')`;
    assertOutcome(await refused([{ name: 'kind', valueCode: 'session-summary' }]), [
      { code: 'processing', detail: 'unprocessable-operation', expression: at('encounter'), diagnostics: "$send-summary of kind session-summary needs parameter 'encounter': a reference to the session's Encounter" },
    ]);
    assertOutcome(await refused([{ name: 'kind', valueCode: 'weekly' }]), [
      { code: 'processing', detail: 'unprocessable-operation', expression: at('kind'), diagnostics: "$send-summary parameter 'kind' must be a valueCode: progress-report or session-summary" },
    ]);
    const otherPatient = await post({ resourceType: 'Patient', name: [{ family: 'Other' }] });
    const othersEncounter = await post({ resourceType: 'Encounter', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: { reference: `Patient/${otherPatient}` }, period: { start: '2026-11-12T09:00:00Z' } });
    for (const ref of [`Encounter/${othersEncounter}`, 'Encounter/nowhere']) {
      assertOutcome(await refused([{ name: 'kind', valueCode: 'session-summary' }, { name: 'encounter', valueReference: { reference: ref } }]), [
        { code: 'processing', detail: 'unprocessable-operation', expression: at('encounter'), diagnostics: `${ref} is not a session of Patient/${patientId}` },
      ]);
    }
    assert.equal(await taskCount(), tasksBefore);
  });

  it('refuses an Endpoint that names no patientIdentifierSystem: a bare number could be anyone\'s', async () => {
    const id = await mllpEndpoint(undefined);
    const tasksBefore = await taskCount();
    const res = await (await http()).post(`/fhir/Patient/${patientId}/$send-summary`).set('Content-Type', FHIR_JSON).send(parameters(id));
    assert.equal(res.status, 422, res.text);
    assertOutcome(res.body, [
      {
        code: 'processing',
        detail: 'unprocessable-operation',
        expression: `Endpoint.extension('${EHR_ENDPOINT_EXTENSION}').extension('patientIdentifierSystem')`,
        diagnostics: `Endpoint/${id} names no patientIdentifierSystem: the system of the EHR's MRNs is needed to name the patient there`,
      },
    ]);
    assert.equal(await taskCount(), tasksBefore);
  });

  it('refuses, in production, an Endpoint at an address the server does not connect to (EHR_ALLOWED_HOSTS), writing nothing', async () => {
    const id = await mllpEndpoint(MRN_SYSTEM);
    const { ctx } = await testContext();
    const tasksBefore = await taskCount();
    ctx.ehrEgress = new EgressGuard(true);
    try {
      const res = await (await http()).post(`/fhir/Patient/${patientId}/$send-summary`).set('Content-Type', FHIR_JSON).send(parameters(id));
      assert.equal(res.status, 422, res.text);
      assertOutcome(res.body, [
        {
          code: 'processing',
          detail: 'unprocessable-operation',
          expression: 'Endpoint.address',
          diagnostics: `Endpoint/${id} has an address whose host 127.0.0.1 is a loopback address, which this server does not connect to in production; if the EHR is on the practice's own network, list its host or range in EHR_ALLOWED_HOSTS`,
        },
      ]);
      assert.equal(await taskCount(), tasksBefore);
    } finally {
      delete ctx.ehrEgress;
    }
  });

  it('refuses a report for a Patient not linked to the Endpoint\'s EHR, writing nothing', async () => {
    const id = await mllpEndpoint('http://elsewhere.example.org/mrn');
    const tasksBefore = await taskCount();
    const res = await (await http()).post(`/fhir/Patient/${patientId}/$send-summary`).set('Content-Type', FHIR_JSON).send(parameters(id));
    assert.equal(res.status, 422, res.text);
    const tasksAfter = await taskCount();
    assert.equal(tasksAfter, tasksBefore);
  });
});
