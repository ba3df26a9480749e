/**
 * Inbound HL7 v2 end to end over real MLLP on loopback, into the real database: ADT with DG1 from
 * a routed facility makes a Patient and its Conditions in that facility's tenant (ACK AA), a
 * resend or an A08 updates rather than duplicates, a message we cannot apply is AE and one we
 * cannot read or route is AR, and every message is stored with its status before the ACK.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Bundle, Condition, Patient } from 'fhir/r4.js';
import supertest from 'supertest';
import { readAck } from '../src/hl7/adt.js';
import { MllpClient } from '../src/hl7/mllp-client.js';
import { frame, MllpDecoder, startMllpServer, type MllpServer } from '../src/hl7/mllp.js';
import { connect } from 'node:net';
import { Hl7Inbound } from '../src/inbound/hl7-inbound.js';
import { Hl7Routes } from '../src/store/hl7-store.js';
import { ClientStore } from '../src/store/clients.js';
import { createTenant } from '../src/store/tenants.js';
import { silentLogger, testContext, tokenFor } from './helpers.js';

const DATA = new URL('../../shared/data/hl7v2/', import.meta.url).pathname;
const RUN = randomUUID().slice(0, 6).toUpperCase();

/** A sample with its facility, control id and MRN made unique to this run. */
function sample(file: string, facility: string, replace: Record<string, string> = {}): string {
  let text = readFileSync(DATA + file, 'utf8').replace(/\r?\n/g, '\r').trimEnd();
  text = text.replace(/^(MSH\|[^|]*\|[^|]*\|)([^|^]*)/, `$1${facility}`);
  for (const [from, to] of Object.entries(replace)) text = text.split(from).join(to);
  return text;
}

describe('inbound HL7 v2 over MLLP', function () {
  this.timeout(60_000);
  let server: MllpServer;
  let client: MllpClient;
  const facility = `RIVERSIDE-${RUN}`;
  const tenant = `hl7-${RUN}`;
  /** The size of each batch the server handled (messages that arrived together). */
  const batches: number[] = [];

  before(async () => {
    const { db, ctx } = await testContext();
    if (!(await new ClientStore(db.pool).tenantExists(tenant))) await createTenant(db, tenant);
    const routes = new Hl7Routes(db.pool);
    await routes.setRoute(facility, tenant);
    const inbound = new Hl7Inbound(ctx, ctx.tenants!, routes, silentLogger);
    server = await startMllpServer(inbound.handle, {
      port: 0,
      host: '127.0.0.1',
      batchHandler: (batch, meta) => {
        batches.push(batch.length);
        return inbound.handleBatch(batch, meta);
      },
    });
    client = await MllpClient.connect({ host: '127.0.0.1', port: server.port, timeoutMs: 20_000 });
  });

  after(async () => {
    await client?.close();
    await server?.close();
  });

  async function http() {
    return supertest.agent((await testContext()).app).auth(await tokenFor('system/*.*', { tenant }), { type: 'bearer' });
  }

  async function patientsWith(mrn: string): Promise<Patient[]> {
    const res = await (await http()).get(`/fhir/Patient?identifier=${encodeURIComponent(mrn)}`).expect(200);
    return ((res.body as Bundle).entry ?? []).map((e) => e.resource as Patient);
  }

  async function conditionsOf(patientId: string): Promise<Condition[]> {
    const res = await (await http()).get(`/fhir/Condition?subject=Patient/${patientId}&_count=100`).expect(200);
    return ((res.body as Bundle).entry ?? []).map((e) => e.resource as Condition);
  }

  async function messages(): Promise<{ control_id: string; status: string; detail: string | null }[]> {
    const { db } = await testContext();
    const schema = await new ClientStore(db.pool).tenantSchema(tenant);
    const rows = await db.inSchema(schema!).query<{ control_id: string; status: string; detail: string | null }>('SELECT control_id, status, detail FROM hl7_message ORDER BY seq');
    return rows.rows;
  }

  it('applies an ADT^A04 with three DG1: one Patient, three Conditions, a Provenance, ACK AA, the message stored as applied', async () => {
    const mrn = `E${RUN}1`;
    const text = sample('adt-a04-knee-oa.hl7', facility, { E4471023: mrn, RVS000123: `C${RUN}1` });
    const reply = readAck(await client.send(text));
    assert.equal(reply?.code, 'AA', JSON.stringify(reply));
    assert.equal(reply?.controlId, `C${RUN}1`);
    const patients = await patientsWith(mrn);
    assert.equal(patients.length, 1);
    const patient = patients[0]!;
    assert.equal(patient.name?.[0]?.family, 'Delacroix');
    assert.equal(patient.birthDate, '1958-06-14');
    const conditions = await conditionsOf(patient.id!);
    assert.deepEqual(conditions.map((c) => c.code?.coding?.[0]?.code).sort(), ['I10', 'M17.11', 'Z96.651']);
    assert.ok(conditions.every((c) => c.code?.coding?.[0]?.system === 'http://hl7.org/fhir/sid/icd-10-cm'));
    const provenance = await (await http()).get(`/fhir/Provenance?target=Patient/${patient.id}`).expect(200);
    assert.equal((provenance.body as Bundle).entry?.length, 1);
    assert.deepEqual((await messages()).filter((m) => m.control_id === `C${RUN}1`).map((m) => m.status), ['applied']);

    // The same message again (a sender retrying after a lost ACK): AA, and nothing duplicated.
    assert.equal(readAck(await client.send(text))?.code, 'AA');
    assert.equal((await patientsWith(mrn)).length, 1);
    assert.equal((await conditionsOf(patient.id!)).length, 3);
  });

  it('updates the Patient and its Conditions from an A08, keeping identifiers it had', async () => {
    const mrn = `E${RUN}2`;
    await client.send(sample('adt-a04-knee-oa.hl7', facility, { E4471023: mrn, RVS000123: `C${RUN}2` }));
    const [before] = await patientsWith(mrn);
    // The same patient moves house (PID-11) in an A08.
    const update = sample('adt-a04-knee-oa.hl7', facility, { E4471023: mrn, RVS000123: `C${RUN}3`, 'ADT^A04': 'ADT^A08', 'EVN|A04': 'EVN|A08', '418 Birch Ln': '7 Elm St' });
    assert.equal(readAck(await client.send(update))?.code, 'AA');
    const after = await patientsWith(mrn);
    assert.equal(after.length, 1);
    assert.equal(after[0]!.id, before!.id);
    assert.equal(after[0]!.address?.[0]?.line?.[0], '7 Elm St');
    assert.equal(after[0]!.meta?.versionId, '2');
    assert.equal((await conditionsOf(before!.id!)).length, 3);
  });

  it('answers AE to a message it understands but cannot apply, and stores it with the reason', async () => {
    const text = sample('malformed-bad-dg1-code.hl7', facility, { RVS000124: `C${RUN}4`, E4471099: `E${RUN}4` });
    const reply = readAck(await client.send(text));
    assert.equal(reply?.code, 'AE', JSON.stringify(reply));
    const stored = (await messages()).find((m) => m.control_id === `C${RUN}4`);
    assert.equal(stored?.status, 'error');
    assert.ok(stored?.detail);
    assert.equal((await patientsWith(`E${RUN}4`)).length, 0, 'nothing applied');
  });

  it('messages sent without waiting for each ACK are handled together in order: one commit, each its own ACK, a failing one undone alone', async () => {
    // Two Patients already carry this MRN: a message for it cannot be applied (AE), inside the batch.
    const dup = `E${RUN}D`;
    const adt = (mrn: string, control: string, from = facility): string => sample('adt-a04-knee-oa.hl7', from, { E4471023: mrn, RVS000123: control });
    assert.equal(readAck(await client.send(adt(dup, `P${RUN}0`)))?.code, 'AA');
    const [first] = await patientsWith(dup);
    await (await http()).post('/fhir/Patient').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient', identifier: first!.identifier }).expect(201);
    const sent = [
      adt(`E${RUN}P1`, `P${RUN}1`),
      adt(dup, `P${RUN}2`),
      sample('malformed-bad-dg1-code.hl7', facility, { RVS000124: `P${RUN}3`, E4471099: `E${RUN}P3` }),
      adt(`E${RUN}P4`, `P${RUN}4`, `NOWHERE-${RUN}`),
      adt(`E${RUN}P5`, `P${RUN}5`),
      adt(`E${RUN}P1`, `P${RUN}1`),
    ];
    /** Sends all the messages in one write, without waiting; resolves with their replies. */
    const pipelined = async (messages: string[]): Promise<string[]> => {
      const socket = connect(server.port, '127.0.0.1');
      await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
      const decoder = new MllpDecoder({});
      const replies: string[] = [];
      const done = new Promise<void>((resolve) => {
        socket.on('data', (chunk: Buffer) => {
          replies.push(...decoder.push(chunk));
          if (replies.length >= messages.length) resolve();
        });
      });
      socket.write(Buffer.concat(messages.map((m) => frame(m))));
      await done;
      socket.destroy();
      return replies;
    };
    const before = batches.length;
    const replies = await pipelined(sent);
    assert.deepEqual(
      replies.map((r) => [readAck(r)?.code, readAck(r)?.controlId]),
      [['AA', `P${RUN}1`], ['AE', `P${RUN}2`], ['AE', `P${RUN}3`], ['AR', `P${RUN}4`], ['AA', `P${RUN}5`], ['AA', `P${RUN}1`]],
    );
    assert.ok(batches.slice(before).some((n) => n > 1), `handled as a batch: ${JSON.stringify(batches.slice(before))}`);
    assert.match(readAck(replies[1] as string)?.text ?? '', /More than one Patient/);
    const [p1] = await patientsWith(`E${RUN}P1`);
    assert.equal((await patientsWith(`E${RUN}P1`)).length, 1);
    assert.equal((await conditionsOf(p1!.id!)).length, 3);
    assert.equal((await patientsWith(`E${RUN}P5`)).length, 1);
    assert.equal((await patientsWith(dup)).length, 2, 'the failing message wrote nothing');
    const stored = (await messages()).filter((m) => m.control_id.startsWith(`P${RUN}`) && m.control_id !== `P${RUN}0`);
    assert.deepEqual(stored.map((m) => [m.control_id, m.status]), [
      [`P${RUN}3`, 'error'],
      [`P${RUN}1`, 'applied'],
      [`P${RUN}2`, 'error'],
      [`P${RUN}5`, 'applied'],
      [`P${RUN}1`, 'applied'],
    ]);

    // Two messages for one new patient in one batch (an A04, then an A08 moving her): one Patient,
    // created then updated, and her Conditions once.
    const a04 = adt(`E${RUN}P9`, `P${RUN}9`);
    const a08 = sample('adt-a04-knee-oa.hl7', facility, { E4471023: `E${RUN}P9`, RVS000123: `P${RUN}10`, 'ADT^A04': 'ADT^A08', 'EVN|A04': 'EVN|A08', '418 Birch Ln': '7 Elm St' });
    assert.deepEqual((await pipelined([a04, a08])).map((r) => readAck(r)?.code), ['AA', 'AA']);
    const moved = await patientsWith(`E${RUN}P9`);
    assert.equal(moved.length, 1);
    assert.deepEqual([moved[0]!.meta?.versionId, moved[0]!.address?.[0]?.line?.[0]], ['2', '7 Elm St']);
    assert.equal((await conditionsOf(moved[0]!.id!)).length, 3);

    // A sender that reuses a DG1 identifier for another patient: AE, and the diagnosis stays with
    // the patient it belongs to.
    const shared = (mrn: string, control: string): string =>
      sample('adt-a04-knee-oa.hl7', facility, { E4471023: mrn, RVS000123: control, '|F|||||||||1\r': `|F|||||||||1|||||DX${RUN}\r` });
    assert.equal(readAck(await client.send(shared(`E${RUN}P12`, `P${RUN}12`)))?.code, 'AA');
    const [owner] = await patientsWith(`E${RUN}P12`);
    const reply = readAck(await client.send(shared(`E${RUN}P11`, `P${RUN}11`)));
    assert.equal(reply?.code, 'AE', JSON.stringify(reply));
    assert.match(reply?.text ?? '', /^DG1 1: identifier urn:hl7v2:dg1:.* is already that of a C/);
    const detail = (await messages()).find((m) => m.control_id === `P${RUN}11`)?.detail ?? '';
    assert.match(detail, new RegExp(`DX${RUN} is already that of a Condition of Patient/${owner!.id}$`));
    assert.equal((await conditionsOf(owner!.id!)).length, 3);
    assert.equal((await patientsWith(`E${RUN}P11`)).length, 0);

    // All of them good: applied together, each stored as applied.
    const good = [6, 7, 8].map((n) => adt(`E${RUN}P${n}`, `P${RUN}${n}`));
    assert.deepEqual((await pipelined(good)).map((r) => readAck(r)?.code), ['AA', 'AA', 'AA']);
    for (const n of [6, 7, 8]) assert.equal((await patientsWith(`E${RUN}P${n}`)).length, 1);
    assert.deepEqual(
      (await messages()).filter((m) => [6, 7, 8].some((n) => m.control_id === `P${RUN}${n}`)).map((m) => [m.control_id, m.status]),
      [6, 7, 8].map((n) => [`P${RUN}${n}`, 'applied']),
    );
  });

  it('with several batches of a connection at once (concurrency): messages about one patient still apply in the order sent', async () => {
    const { ctx, db } = await testContext();
    const inbound = new Hl7Inbound(ctx, ctx.tenants!, new Hl7Routes(db.pool), silentLogger);
    let running = 0;
    let most = 0;
    const concurrent = await startMllpServer(inbound.handle, {
      port: 0,
      host: '127.0.0.1',
      concurrency: 4,
      maxBatch: 4,
      batchHandler: async (batch, meta) => {
        most = Math.max(most, ++running);
        try {
          return await inbound.handleBatch(batch, meta);
        } finally {
          running--;
        }
      },
    });
    try {
      // Patient Q0 registered, then moved twice, her messages spread over batches that run
      // beside batches about other patients. The first batch stores three messages from a facility
      // routed nowhere before it starts its transaction: the second, about Q0 too, must wait for
      // it rather than take her locks first.
      const moves = ['418 Birch Ln', '7 Elm St', '9 Oak Ave'];
      const q0 = (n: number): string =>
        sample('adt-a04-knee-oa.hl7', facility, { E4471023: `E${RUN}Q0`, RVS000123: `Q${RUN}0-${n}`, ...(n > 0 ? { 'ADT^A04': 'ADT^A08', 'EVN|A04': 'EVN|A08', '418 Birch Ln': moves[n]! } : {}) });
      const other = (n: number): string => sample('adt-a04-knee-oa.hl7', facility, { E4471023: `E${RUN}Q${n}`, RVS000123: `Q${RUN}${n}` });
      const strangers = [1, 2, 3].map((n) => sample('adt-a04-knee-oa.hl7', `NOWHERE-${RUN}`, { RVS000123: `Q${RUN}X${n}`, E4471023: `E${RUN}QX${n}` }));
      const sent = [...strangers, q0(0), q0(1), ...[1, 2, 3, 4, 5, 6].map(other), q0(2), ...[7, 8, 9].map(other)];
      const socket = connect(concurrent.port, '127.0.0.1');
      await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
      const decoder = new MllpDecoder({});
      const replies: string[] = [];
      const done = new Promise<void>((resolve) => socket.on('data', (chunk: Buffer) => (replies.push(...decoder.push(chunk)), replies.length >= sent.length && resolve())));
      socket.write(Buffer.concat(sent.map((m) => frame(m))));
      await done;
      socket.destroy();
      assert.deepEqual(
        replies.map((r) => readAck(r)?.code),
        sent.map((m) => (strangers.includes(m) ? 'AR' : 'AA')),
      );
      assert.deepEqual(
        replies.map((r) => readAck(r)?.controlId),
        sent.map((m) => m.split('\r')[0]!.split('|')[9]),
      );
      assert.ok(most > 1, `batches ran at once (${most})`);
      const [q] = await patientsWith(`E${RUN}Q0`);
      assert.deepEqual([q!.meta?.versionId, q!.address?.[0]?.line?.[0]], ['3', '9 Oak Ave']);
      assert.equal((await conditionsOf(q!.id!)).length, 3);
      for (let n = 1; n <= 9; n++) assert.equal((await patientsWith(`E${RUN}Q${n}`)).length, 1);
      const stored = (await messages()).filter((m) => m.control_id.startsWith(`Q${RUN}0-`)).map((m) => m.control_id);
      assert.deepEqual(stored, [0, 1, 2].map((n) => `Q${RUN}0-${n}`));
    } finally {
      await concurrent.close();
    }
  });

  it('answers AR to a message from a facility routed to no tenant, and to one it cannot parse; both stored', async () => {
    const { db } = await testContext();
    const stranger = sample('adt-a04-knee-oa.hl7', `NOWHERE-${RUN}`, { RVS000123: `C${RUN}5`, E4471023: `E${RUN}5` });
    const reply = readAck(await client.send(stranger));
    assert.equal(reply?.code, 'AR');
    assert.match(reply?.text ?? '', /not routed/);
    const noMsh = readFileSync(DATA + 'malformed-no-msh.hl7', 'utf8').replace(/\r?\n/g, '\r').trimEnd();
    assert.equal(readAck(await client.send(noMsh))?.code, 'AR');
    const unrouted = await db.pool.query<{ raw: string; status: string }>('SELECT raw, status FROM hl7_unrouted');
    assert.ok(unrouted.rows.some((r) => r.raw.includes(`C${RUN}5`) && r.status === 'rejected'));
    assert.ok(unrouted.rows.some((r) => r.raw === noMsh));
    // Nothing of it reached any tenant.
    assert.equal((await patientsWith(`E${RUN}5`)).length, 0);
  });
});
