/**
 * Where the server connects for a tenant (src/ehr/egress.ts). In production an Endpoint's address
 * must be a public one unless EHR_ALLOWED_HOSTS lists it: a user of a practice must not make the
 * server call its own database, a cloud metadata address or a port on loopback. Checked on the
 * address actually connected to (a name is resolved by the guard's own lookup), and on IP literals
 * before anything is sent. Against real peers on loopback: the EHR (a second instance of this
 * server) and an MLLP listener, each of which must see nothing when the address is refused.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { Parameters } from 'fhir/r4.js';
import supertest from 'supertest';
import { loadConfig, ConfigError } from '../src/config.js';
import { MllpDocumentTransport } from '../src/delivery/transports.js';
import { EgressGuard, parseAllowedHost } from '../src/ehr/egress.js';
import { ack } from '../src/hl7/adt.js';
import { startMllpServer, type MllpServer } from '../src/hl7/mllp.js';
import { fhirEndpoint, smartSettings, startEhrPeer, type EhrPeer } from './ehr-peer.js';
import { assertOutcome, FHIR_JSON, testContext, tokenFor } from './helpers.js';

const RUN = randomUUID().slice(0, 8);
const MRN_SYSTEM = `http://egress.example.org/mrn/${RUN}`;

describe('egress: the addresses EHR connections may reach', function () {
  this.timeout(90_000);

  describe('the guard (production)', () => {
    const guard = new EgressGuard(true);

    it('refuses every address that is not public unicast, IPv4-mapped IPv6 included', () => {
      const refused: [string, string][] = [
        ['127.0.0.1', 'loopback'],
        ['127.8.9.10', 'loopback'],
        ['10.1.2.3', 'private'],
        ['172.16.0.9', 'private'],
        ['192.168.1.20', 'private'],
        ['169.254.169.254', 'linkLocal'],
        ['100.64.0.1', 'carrierGradeNat'],
        ['0.0.0.0', 'unspecified'],
        ['224.0.0.1', 'multicast'],
        ['::1', 'loopback'],
        ['::ffff:127.0.0.1', 'loopback'],
        ['::ffff:10.0.0.8', 'private'],
        ['fc00::1', 'uniqueLocal'],
        ['fe80::1', 'linkLocal'],
        ['::', 'unspecified'],
        ['2002:7f00:1::1', '6to4'],
      ];
      for (const [address, range] of refused) {
        const why = guard.refusal(address, address);
        assert.ok(why?.includes(`is a ${range} address`), `${address}: ${why}`);
      }
      for (const address of ['8.8.8.8', '93.184.215.14', '2001:4860:4860::8888']) assert.equal(guard.refusal(address, address), undefined, address);
      assert.match(guard.literalRefusal('[::1]') ?? '', /loopback/);
      assert.equal(guard.literalRefusal('ehr.example.org'), undefined, 'a name is checked when it is resolved, at connect time');
    });

    it('lets through the hosts, addresses and ranges the operator lists, and nothing next to them', () => {
      const listed = new EgressGuard(true, ['10.20.0.0/16', '192.168.7.9', 'EHR.Practice.internal', 'fd00:1::/32']);
      assert.equal(listed.refusal('10.20.5.5', '10.20.5.5'), undefined);
      assert.match(listed.refusal('10.21.0.1', '10.21.0.1') ?? '', /private/);
      assert.equal(listed.refusal('192.168.7.9', '192.168.7.9'), undefined);
      assert.match(listed.refusal('192.168.7.10', '192.168.7.10') ?? '', /private/);
      assert.equal(listed.refusal('ehr.practice.internal', '10.99.0.1'), undefined, 'a listed name, whatever it resolves to');
      assert.match(listed.refusal('other.practice.internal', '10.99.0.1') ?? '', /other\.practice\.internal \(10\.99\.0\.1\) is a private address/);
      assert.equal(listed.refusal('::ffff:10.20.1.1', '::ffff:10.20.1.1'), undefined, 'a mapped address is its IPv4 address');
      assert.equal(listed.refusal('fd00:1::5', 'fd00:1::5'), undefined);
      assert.match(listed.refusal('fd00:2::5', 'fd00:2::5') ?? '', /uniqueLocal/);
      // Outside production nothing is refused.
      assert.equal(new EgressGuard(false).refusal('127.0.0.1', '127.0.0.1'), undefined);
    });

    it('reads EHR_ALLOWED_HOSTS at start, and stops the server with one clear line per bad entry', () => {
      assert.deepEqual(loadConfig({ EHR_ALLOWED_HOSTS: ' 10.0.0.0/8, ehr.local ,192.168.1.5' }).ehrAllowedHosts, ['10.0.0.0/8', 'ehr.local', '192.168.1.5']);
      assert.deepEqual(loadConfig({}).ehrAllowedHosts, []);
      assert.throws(
        () => loadConfig({ EHR_ALLOWED_HOSTS: '10.0.0.0/33,not a host,ok.example' }),
        (error: unknown) =>
          error instanceof ConfigError &&
          error.problems.length === 2 &&
          error.problems[0] === 'EHR_ALLOWED_HOSTS is invalid: "10.0.0.0/33" is not a CIDR range (such as 10.20.0.0/16)' &&
          error.problems[1] === 'EHR_ALLOWED_HOSTS is invalid: "not a host" is not a host name, an IP address or a CIDR range',
      );
      assert.ok('problem' in parseAllowedHost(''));
    });
  });

  describe('$pull-diagnoses from a real EHR on loopback, as in production', () => {
    let peer: EhrPeer;
    let clientId: string;
    let http: supertest.Agent;

    before(async () => {
      peer = await startEhrPeer({ prefix: 'egress' });
      clientId = await peer.registerBackendClient('system/Patient.rs system/Condition.rs');
      const patient = await peer.create({ resourceType: 'Patient', identifier: [{ system: MRN_SYSTEM, value: 'G-1' }], name: [{ family: 'Egress' }] });
      await peer.create({
        resourceType: 'Condition',
        clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] },
        category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-category', code: 'problem-list-item' }] }],
        code: { coding: [{ system: 'http://hl7.org/fhir/sid/icd-10-cm', code: 'I10' }] },
        subject: { reference: `Patient/${patient}` },
      });
      http = supertest.agent((await testContext()).app).auth(await tokenFor('system/*.*'), { type: 'bearer' });
    });

    after(async () => {
      delete (await testContext()).ctx.ehrEgress;
      await peer?.close();
    });

    /** An Endpoint to the peer at `origin` and a Patient linked to it by an MRN of `system`. */
    async function linked(origin: string, system: string = `${MRN_SYSTEM}/${randomUUID().slice(0, 6)}`): Promise<{ patient: string; endpoint: string }> {
      // Each Endpoint its own MRN system (but the one that pulls), so that each Patient is linked to one Endpoint only.
      const settings = [...smartSettings(`${origin}/auth/token`, clientId, 'system/Patient.rs system/Condition.rs'), { url: 'patientIdentifierSystem', valueUri: system }];
      const endpoint = await http.post('/fhir/Endpoint').set('Content-Type', FHIR_JSON).send(fhirEndpoint(`${origin}/fhir`, settings));
      assert.equal(endpoint.status, 201, endpoint.text);
      const patient = await http.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', identifier: [{ system, value: 'G-1' }] });
      assert.equal(patient.status, 201, patient.text);
      return { patient: (patient.body as { id: string }).id, endpoint: (endpoint.body as { id: string }).id };
    }

    it('refuses an Endpoint at a loopback IP with 422 naming Endpoint.address, and a name that resolves to loopback when connecting; the EHR sees nothing', async () => {
      const { ctx } = await testContext();
      ctx.ehrEgress = new EgressGuard(true);
      const port = new URL(peer.origin).port;
      const before = peer.requests.length;

      const literal = await linked(`http://127.0.0.1:${port}`);
      const refused = await http.post(`/fhir/Patient/${literal.patient}/$pull-diagnoses`);
      assert.equal(refused.status, 422, refused.text);
      assertOutcome(refused.body, [
        {
          code: 'processing',
          detail: 'unprocessable-operation',
          expression: 'Endpoint.address',
          diagnostics: `Endpoint/${literal.endpoint}, the EHR this Patient is linked to, has an address whose host 127.0.0.1 is a loopback address, which this server does not connect to in production; if the EHR is on the practice's own network, list its host or range in EHR_ALLOWED_HOSTS`,
        },
      ]);

      const named = await linked(`http://localhost:${port}`);
      const resolved = await http.post(`/fhir/Patient/${named.patient}/$pull-diagnoses`);
      assert.equal(resolved.status, 422, resolved.text);
      assertOutcome(resolved.body, [{ code: 'processing', detail: 'ehr-refused', diagnostics: /localhost \((127\.0\.0\.1|::1)\) is a loopback address, which this server does not connect to in production/ }]);
      assert.equal(peer.requests.length, before, 'not even the token endpoint was called');
    });

    it('pulls from the same EHR once EHR_ALLOWED_HOSTS lists its range', async () => {
      const { ctx } = await testContext();
      ctx.ehrEgress = new EgressGuard(true, ['127.0.0.0/8']);
      const { patient } = await linked(peer.origin, MRN_SYSTEM);
      const pulled = await http.post(`/fhir/Patient/${patient}/$pull-diagnoses`);
      assert.equal(pulled.status, 200, pulled.text);
      const actions = ((pulled.body as Parameters).parameter ?? []).filter((p) => p.name === 'outcome').map((p) => p.part?.find((x) => x.name === 'action')?.valueCode);
      assert.deepEqual(actions, ['created']);
    });
  });

  describe('MLLP delivery to a real listener on loopback, as in production', () => {
    let listener: MllpServer;
    const received: string[] = [];
    const message = (id: string): string => `MSH|^~\\&|MET|PRACTICE|EHR|HOSP|20261207120000||MDM^T02^MDM_T02|${id}|P|2.5.1\rEVN|T02|20261207120000\rPID|1||G-1^^^HOSP^MR||Egress^Gail`;

    before(async () => {
      listener = await startMllpServer(
        (m) => {
          received.push(m);
          return Promise.resolve(ack(m, 'AA'));
        },
        { port: 0, host: '127.0.0.1' },
      );
    });
    after(() => listener.close());

    it('fails the job for good, without connecting, at a loopback address or a name resolving to one; delivers once the range is listed', async () => {
      const refused = new MllpDocumentTransport({ egress: new EgressGuard(true), connectTimeoutMs: 2000, ackTimeoutMs: 2000 });
      const literal = await refused.deliver({ message: message(`L${RUN}`) }, `mllp://127.0.0.1:${listener.port}`);
      assert.deepEqual(literal, {
        kind: 'permanent',
        reason: `the Endpoint's address: 127.0.0.1 is a loopback address, which this server does not connect to in production; if the EHR is on the practice's own network, list its host or range in EHR_ALLOWED_HOSTS`,
      });
      const named = await refused.deliver({ message: message(`N${RUN}`) }, `mllp://localhost:${listener.port}`);
      assert.equal(named.kind, 'permanent');
      assert.match((named as { reason: string }).reason, /^the Endpoint's address: localhost \((127\.0\.0\.1|::1)\) is a loopback address/);
      assert.equal(received.length, 0, 'the listener was sent nothing');

      const allowed = new MllpDocumentTransport({ egress: new EgressGuard(true, ['127.0.0.1']), connectTimeoutMs: 2000, ackTimeoutMs: 2000 });
      const delivered = await allowed.deliver({ message: message(`A${RUN}`) }, `mllp://127.0.0.1:${listener.port}`);
      assert.deepEqual(delivered, { kind: 'delivered', remoteId: `A${RUN}` });
      assert.equal(received.length, 1);
    });
  });
});
