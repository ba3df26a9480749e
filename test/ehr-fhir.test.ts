/**
 * The EHR client (src/ehr/fhir-ehr.ts) against a real FHIR server on loopback: a second instance
 * of this server, started in-process (./ehr-peer.ts), plays the physician's EHR. We are registered there as a
 * SMART Backend Services client (private_key_jwt, our public JWK served by a loopback JWKS URL),
 * and the EHR's data is seeded through its own FHIR API. Failures (a down, slow, misaddressed or
 * paging-broken EHR) are checked for the EhrError kind the pull layer acts on.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { Client } from 'fhir-kit-client';
import { decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose';
import type { Bundle, BundleEntry, Condition } from 'fhir/r4.js';
import { issueAccessToken, loadOrCreateSigningKey } from '../src/auth/index.js';
import { ResourceValidator } from '../src/validation/validator.js';
import {
  accessToken,
  clientAssertion,
  CONDITION_CATEGORY_SYSTEM,
  EhrError,
  findPatient,
  searchConditions,
  TokenCache,
  tokenCacheKey,
  toLocalCondition,
  type EhrConnection,
  type SmartBackendAuth,
} from '../src/ehr/fhir-ehr.js';
import { close, listen, startEhrPeer, type EhrPeer } from './ehr-peer.js';

const RUN = randomUUID().slice(0, 8);
const MRN_SYSTEM = 'http://hospital.example.org/mrn';
const PROBLEM_SYSTEM = 'http://hospital.example.org/problem';
const PROBLEMS = 14;
const DIAGNOSES = 11;

/** Serves `handler` on a free loopback port. */
async function loopback(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ server: Server; url: string }> {
  const server = createServer(handler);
  return { server, url: `http://127.0.0.1:${await listen(server)}` };
}

async function rejectsWith(promise: Promise<unknown>, expected: Partial<Pick<EhrError, 'kind' | 'code' | 'status'>>): Promise<EhrError> {
  let caught: unknown;
  try {
    await promise;
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof EhrError, `expected an EhrError, got ${String(caught)}`);
  assert.deepEqual({ kind: caught.kind, code: caught.code, ...(expected.status !== undefined ? { status: caught.status } : {}) }, expected, caught.message);
  return caught;
}

describe('EHR client over FHIR, with this server as the EHR', function () {
  this.timeout(60_000);

  let peer: EhrPeer;
  let ehr: EhrPeer['server'];
  let dataDir: string;
  let origin: string;
  let fhirBase: string;
  let tokenUrl: string;
  let privateKey: CryptoKey;
  let auth: SmartBackendAuth;
  let tenant: string;
  /** Paths (no query) of every request the EHR received, in order. */
  let requests: string[];
  const ids = { patient: '', other: '', encounter: '', practitioner: '', problems: [] as string[], diagnoses: [] as string[], duplicates: [] as string[] };

  const conn = (extra: Partial<EhrConnection> = {}): EhrConnection => ({ baseUrl: fhirBase, auth, tokenCache: new TokenCache(), ...extra });
  const tokenRequests = (): number => requests.filter((p) => p === '/auth/token').length;

  before(async () => {
    peer = await startEhrPeer({ prefix: 'ehr' });
    ({ server: ehr, dataDir, origin, fhirBase, tokenUrl, tenant, requests } = peer);

    // Us, registered at the EHR with a key of our own: read and search on Patient and Condition.
    const pair = await generateKeyPair('ES384', { extractable: true });
    privateKey = pair.privateKey;
    const kid = `met-${RUN}`;
    const publicJwk: JWK = { ...(await exportJWK(pair.publicKey)), kid, alg: 'ES384', use: 'sig' };
    const clientId = await peer.registerBackendClient('system/Patient.rs system/Condition.rs', publicJwk);
    auth = { kind: 'smart-backend', tokenUrl, clientId, privateKey, kid, alg: 'ES384', scope: 'system/Patient.rs system/Condition.rs' };

    // The EHR's staff seeds its data through its API.
    const seeder = new Client({ baseUrl: fhirBase, bearerToken: peer.staffToken });
    const seeded = (await seeder.transaction({ body: seedBundle() as never })) as unknown as Bundle;
    const locations = (seeded.entry ?? []).map((e) => (e.response?.location ?? '').split('/').slice(-3, -2)[0] as string);
    [ids.patient, ids.other, ids.encounter, ids.practitioner] = locations.slice(0, 4) as [string, string, string, string];
    ids.duplicates = locations.slice(4, 6);
    ids.problems = locations.slice(6, 6 + PROBLEMS);
    ids.diagnoses = locations.slice(6 + PROBLEMS, 6 + PROBLEMS + DIAGNOSES);
    requests.length = 0;
  });

  after(async () => {
    await peer?.close();
  });

  describe('SMART Backend Services', () => {
    it('signs the assertion as the spec says: ES384 with our kid, iss = sub = client id, aud = token URL, exp within 5 minutes, a new jti each time', async () => {
      const now = Date.now();
      const [first, second] = [await clientAssertion(auth, now), await clientAssertion(auth, now)];
      assert.deepEqual(decodeProtectedHeader(first), { alg: 'ES384', kid: auth.kid, typ: 'JWT' });
      const claims = decodeJwt(first);
      assert.equal(claims.iss, auth.clientId);
      assert.equal(claims.sub, auth.clientId);
      assert.equal(claims.aud, tokenUrl);
      assert.ok(typeof claims.exp === 'number' && claims.exp > now / 1000 && claims.exp <= now / 1000 + 300, `exp ${claims.exp}`);
      assert.ok(typeof claims.jti === 'string' && claims.jti.length >= 32);
      assert.notEqual(decodeJwt(second).jti, claims.jti);
    });

    it('gets a token from the EHR and reuses it until shortly before it expires; concurrent calls share one request', async () => {
      const c = conn();
      const before = tokenRequests();
      const tokens = await Promise.all([accessToken(c), accessToken(c), accessToken(c)]);
      assert.equal(new Set(tokens).size, 1);
      assert.equal(await accessToken(c), tokens[0], 'cached');
      assert.equal(tokenRequests() - before, 1);
      // The EHR's tokens last 300 s: with 300 s of slack none is ever reused.
      const noReuse = conn({ tokenLifetimeSlackSeconds: 300 });
      const [a, b] = [await accessToken(noReuse), await accessToken(noReuse)];
      assert.notEqual(a, b);
      assert.equal(tokenRequests() - before, 3);
    });

    it('a key the EHR does not know is refused: EhrError auth, and no secret in the message', async () => {
      const stranger = await generateKeyPair('ES384');
      const wrong = conn({ auth: { ...auth, privateKey: stranger.privateKey } });
      const error = await rejectsWith(accessToken(wrong), { kind: 'auth', code: 'token-refused', status: 401 });
      assert.match(error.message, /invalid_client/);
      assert.doesNotMatch(error.message, /eyJ/, 'no JWT (assertion or token) in the message');
      await rejectsWith(findPatient(wrong, { identifier: { system: MRN_SYSTEM, value: `MRN-${RUN}` } }), { kind: 'auth', code: 'token-refused', status: 401 });
    });

    it('on a 401, drops the cached token and retries once with a fresh one', async () => {
      // A token the EHR itself signed, but expired an hour ago, sits in our cache as if still good.
      const { key } = await loadOrCreateSigningKey(join(dataDir, 'keys'));
      const stale = await issueAccessToken(key, { clientId: auth.clientId, tenant, scope: auth.scope }, { issuer: origin, audience: fhirBase, lifetimeSeconds: 300, now: () => Date.now() - 3_600_000 });
      const cache = new TokenCache();
      cache.set(tokenCacheKey(auth), stale.accessToken, Date.now() + 3_600_000);
      const before = requests.length;
      const found = await findPatient(conn({ tokenCache: cache }), { identifier: { system: MRN_SYSTEM, value: `MRN-${RUN}` } });
      assert.equal(found?.id, ids.patient);
      assert.deepEqual(requests.slice(before), ['/fhir/Patient', '/auth/token', '/fhir/Patient']);
      const fresh = cache.get(tokenCacheKey(auth));
      assert.ok(fresh && fresh !== stale.accessToken, 'the fresh token replaced the stale one');
      // A fixed bearer token cannot be renewed: its 401 is an auth error at once, with the EHR's outcome.
      const before2 = requests.length;
      const error = await rejectsWith(findPatient(conn({ auth: { kind: 'bearer', token: stale.accessToken } }), { identifier: { system: MRN_SYSTEM, value: `MRN-${RUN}` } }), { kind: 'auth', code: 'unauthorized', status: 401 });
      assert.deepEqual(requests.slice(before2), ['/fhir/Patient']);
      assert.ok(error.outcome?.startsWith('error login'), error.outcome);
      assert.ok(!error.message.includes(stale.accessToken));
    });
  });

  describe('reading the EHR', () => {
    it('findPatient: the Patient carrying the MRN; undefined when none does; an error naming each when several do', async () => {
      const found = await findPatient(conn(), { identifier: { system: MRN_SYSTEM, value: `MRN-${RUN}` } });
      assert.equal(found?.resourceType, 'Patient');
      assert.equal(found?.id, ids.patient);
      assert.equal(await findPatient(conn(), { identifier: { system: MRN_SYSTEM, value: `MRN-${RUN}-none` } }), undefined);
      // Token search escaping: a value with | and , is one value, not two.
      assert.equal(await findPatient(conn(), { identifier: { system: MRN_SYSTEM, value: `MRN-${RUN}|x,y` } }), undefined);
      const error = await rejectsWith(findPatient(conn(), { identifier: { system: MRN_SYSTEM, value: `DUP-${RUN}` } }), { kind: 'permanent', code: 'ambiguous-patient' });
      for (const id of ids.duplicates) assert.ok(error.message.includes(`Patient/${id}`), error.message);
      assert.ok(!error.message.includes(`DUP-${RUN}`), 'the identifier value (PHI) is not in the message');
    });

    it('searchConditions follows next links to the end: each category exactly, over two pages of 10, and none of another patient', async () => {
      const before = requests.length;
      const problems = await searchConditions(conn(), ids.patient, 'problem-list-item', { count: 10 });
      assert.equal(requests.slice(before).filter((p) => p === '/fhir/Condition').length, 2, 'two pages');
      assert.deepEqual(problems.map((c) => c.id).sort(), [...ids.problems].sort());
      const before2 = requests.length;
      const diagnoses = await searchConditions(conn(), ids.patient, 'encounter-diagnosis', { count: 10 });
      assert.equal(requests.slice(before2).filter((p) => p === '/fhir/Condition').length, 2, 'two pages');
      assert.deepEqual(diagnoses.map((c) => c.id).sort(), [...ids.diagnoses].sort());
      // Three pages of 5, and the patient with one Condition.
      assert.equal((await searchConditions(conn(), ids.patient, 'encounter-diagnosis', { count: 5 })).length, DIAGNOSES);
      assert.deepEqual((await searchConditions(conn(), ids.other, 'problem-list-item', { count: 10 })).length, 1);
      await rejectsWith(searchConditions(conn(), ids.patient, 'problem-list-item', { count: 5, maxPages: 2 }), { kind: 'permanent', code: 'too-many-pages' });
    });

    it('toLocalCondition: the local copy keeps the clinical content and the EHR identity, refers to our Patient, and validates', async () => {
      const problems = await searchConditions(conn(), ids.patient, 'problem-list-item', { count: 10 });
      const diagnoses = await searchConditions(conn(), ids.patient, 'encounter-diagnosis', { count: 10 });
      const remote = problems.find((c) => c.id === ids.problems[0]) as Condition;
      const local = toLocalCondition(remote, { endpointId: 'ehr-1', baseUrl: `${fhirBase}/` }, 'Patient/local-7');
      const practitioner = { type: 'Practitioner', identifier: { system: `${fhirBase}/Practitioner`, value: ids.practitioner }, display: 'Dr. Petra Hill' };
      assert.deepEqual(local, {
        resourceType: 'Condition',
        meta: {
          source: `${fhirBase}/Condition/${remote.id}/_history/1`,
          tag: [{ system: 'https://met-fhir-server.dev/fhir/CodeSystem/ehr-endpoint', code: 'ehr-1' }],
          security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality', code: 'N' }],
        },
        identifier: [
          { system: PROBLEM_SYSTEM, value: 'P-0' },
          { system: `${fhirBase}/Condition`, value: remote.id },
        ],
        subject: { reference: 'Patient/local-7', display: 'Ada Okafor' },
        clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] },
        verificationStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-ver-status', code: 'confirmed' }] },
        category: [{ coding: [{ system: CONDITION_CATEGORY_SYSTEM, code: 'problem-list-item' }] }],
        code: { coding: [{ system: 'http://snomed.info/sct', code: '239873007', display: 'Osteoarthritis of knee' }], text: 'Osteoarthritis, left knee' },
        bodySite: [{ coding: [{ system: 'http://snomed.info/sct', code: '82169009', display: 'Structure of left knee' }] }],
        onsetDateTime: '2024-03-01',
        recordedDate: '2024-03-02',
        encounter: { type: 'Encounter', identifier: { system: `${fhirBase}/Encounter`, value: ids.encounter }, display: `${fhirBase}/Encounter/${ids.encounter}` },
        recorder: practitioner,
        asserter: practitioner,
        note: [{ text: 'Avoid deep squats.', time: '2024-03-02T10:00:00Z', authorReference: practitioner }],
      });
      // Pulled twice, the same copy (found again by its identifier).
      assert.deepEqual(toLocalCondition(remote, { endpointId: 'ehr-1', baseUrl: fhirBase }, 'Patient/local-7'), local);
      const validator = new ResourceValidator();
      for (const condition of [...problems, ...diagnoses]) {
        assert.deepEqual(validator.problems(toLocalCondition(condition, { endpointId: 'ehr-1', baseUrl: fhirBase }, 'Patient/local-7') as never), [], condition.id);
      }
      assert.throws(() => toLocalCondition({ ...remote, modifierExtension: [{ url: 'http://example.org/x', valueBoolean: true }] }, { endpointId: 'ehr-1', baseUrl: fhirBase }, 'Patient/local-7'), /modifierExtension/);
    });
  });

  describe('failures, classified', () => {
    it('a base path the EHR does not serve: permanent, with the EHR\'s OperationOutcome', async () => {
      const error = await rejectsWith(findPatient(conn({ baseUrl: `${origin}/fhir-r4` }), { identifier: { system: MRN_SYSTEM, value: `MRN-${RUN}` } }), { kind: 'permanent', code: 'not-found', status: 404 });
      assert.ok(error.outcome, error.message);
    });

    it('a slow EHR: transient, once the timeout passes', async () => {
      const silent = await loopback(() => undefined);
      try {
        const started = Date.now();
        await rejectsWith(findPatient(conn({ baseUrl: `${silent.url}/fhir`, auth: { kind: 'none' }, timeoutMs: 300 }), { identifier: { system: MRN_SYSTEM, value: 'x' } }), { kind: 'transient', code: 'timeout' });
        assert.ok(Date.now() - started < 2000);
        await rejectsWith(accessToken(conn({ auth: { ...auth, tokenUrl: `${silent.url}/token` }, timeoutMs: 300 })), { kind: 'transient', code: 'timeout' });
      } finally {
        await close(silent.server);
      }
    });

    it('429 and 5xx are transient, with Retry-After and the OperationOutcome; 403 is permanent', async () => {
      let status = 503;
      const fake = await loopback((_req, res) => {
        res.writeHead(status, { 'content-type': 'application/fhir+json', 'retry-after': '7' });
        res.end(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'transient', diagnostics: 'maintenance' }] }));
      });
      try {
        const c = conn({ baseUrl: `${fake.url}/fhir`, auth: { kind: 'bearer', token: 'secret-token-value' } });
        const query = { identifier: { system: MRN_SYSTEM, value: 'x' } };
        const unavailable = await rejectsWith(findPatient(c, query), { kind: 'transient', code: 'server-error', status: 503 });
        assert.equal(unavailable.retryAfterSeconds, 7);
        assert.equal(unavailable.outcome, 'error transient: maintenance');
        assert.ok(!unavailable.message.includes('secret-token-value'));
        status = 429;
        await rejectsWith(findPatient(c, query), { kind: 'transient', code: 'rate-limited', status: 429 });
        status = 403;
        await rejectsWith(findPatient(c, query), { kind: 'permanent', code: 'forbidden', status: 403 });
      } finally {
        await close(fake.server);
      }
    });

    it('paging: a next link that repeats a page, or leads off the EHR, is refused', async () => {
      let next = '';
      const fake = await loopback((_req, res) => {
        res.setHeader('content-type', 'application/fhir+json');
        res.end(JSON.stringify({ resourceType: 'Bundle', type: 'searchset', link: [{ relation: 'next', url: next }], entry: [] }));
      });
      try {
        const c = conn({ baseUrl: `${fake.url}/fhir`, auth: { kind: 'none' } });
        next = `${fake.url}/fhir/Condition?page=2`;
        await rejectsWith(searchConditions(c, 'p1', 'problem-list-item'), { kind: 'permanent', code: 'paging-loop' });
        next = 'https://elsewhere.example/fhir/Condition?page=2';
        await rejectsWith(searchConditions(c, 'p1', 'problem-list-item'), { kind: 'permanent', code: 'foreign-link' });
      } finally {
        await close(fake.server);
      }
    });

    it('plain http to a host other than loopback is refused before anything is sent', async () => {
      await rejectsWith(findPatient(conn({ baseUrl: 'http://ehr.example.org/fhir' }), { identifier: { system: MRN_SYSTEM, value: 'x' } }), { kind: 'permanent', code: 'insecure-url' });
    });

    it('an EHR that is down: transient (last: stops the EHR)', async () => {
      await ehr.stop();
      await rejectsWith(findPatient(conn(), { identifier: { system: MRN_SYSTEM, value: `MRN-${RUN}` } }), { kind: 'transient', code: 'unreachable' });
      await rejectsWith(findPatient(conn({ auth: { kind: 'none' } }), { identifier: { system: MRN_SYSTEM, value: `MRN-${RUN}` } }), { kind: 'transient', code: 'unreachable' });
    });
  });

  /** The EHR's data: our patient, another, an encounter, a practitioner, two patients sharing an MRN, the Conditions. */
  function seedBundle(): Bundle {
    const urn = (): string => `urn:uuid:${randomUUID()}`;
    const [patient, other, encounter, practitioner] = [urn(), urn(), urn(), urn()];
    const post = (fullUrl: string, resource: Record<string, unknown>): BundleEntry => ({ fullUrl, resource: resource as never, request: { method: 'POST', url: resource.resourceType as string } });
    const clinical = { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] };
    const verified = { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-ver-status', code: 'confirmed' }] };
    const condition = (subject: string, category: string, n: number): Record<string, unknown> => ({
      resourceType: 'Condition',
      identifier: [{ system: PROBLEM_SYSTEM, value: `${category === 'problem-list-item' ? 'P' : 'D'}-${n}` }],
      clinicalStatus: clinical,
      verificationStatus: verified,
      category: [{ coding: [{ system: CONDITION_CATEGORY_SYSTEM, code: category }] }],
      code: { coding: [{ system: 'http://snomed.info/sct', code: '239873007', display: 'Osteoarthritis of knee' }], text: 'Osteoarthritis, left knee' },
      subject: { reference: subject, display: 'Ada Okafor' },
      onsetDateTime: '2024-03-01',
      recordedDate: '2024-03-02',
      ...(category === 'encounter-diagnosis' ? { encounter: { reference: encounter } } : {}),
    });
    const first = {
      ...condition(patient, 'problem-list-item', 0),
      meta: { security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality', code: 'N' }] },
      bodySite: [{ coding: [{ system: 'http://snomed.info/sct', code: '82169009', display: 'Structure of left knee' }] }],
      encounter: { reference: encounter },
      recorder: { reference: practitioner, display: 'Dr. Petra Hill' },
      asserter: { reference: practitioner, display: 'Dr. Petra Hill' },
      note: [{ text: 'Avoid deep squats.', time: '2024-03-02T10:00:00Z', authorReference: { reference: practitioner, display: 'Dr. Petra Hill' } }],
    };
    const mrn = (value: string): Record<string, unknown> => ({ resourceType: 'Patient', identifier: [{ system: MRN_SYSTEM, value }], name: [{ family: 'Okafor', given: ['Ada'] }] });
    return {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        post(patient, mrn(`MRN-${RUN}`)),
        post(other, mrn(`MRN-${RUN}-other`)),
        post(encounter, { resourceType: 'Encounter', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: { reference: patient } }),
        post(practitioner, { resourceType: 'Practitioner', name: [{ family: 'Hill', given: ['Petra'] }] }),
        post(urn(), mrn(`DUP-${RUN}`)),
        post(urn(), mrn(`DUP-${RUN}`)),
        post(urn(), first),
        ...Array.from({ length: PROBLEMS - 1 }, (_, i) => post(urn(), condition(patient, 'problem-list-item', i + 1))),
        ...Array.from({ length: DIAGNOSES }, (_, i) => post(urn(), condition(patient, 'encounter-diagnosis', i))),
        post(urn(), condition(other, 'problem-list-item', 99)),
      ],
    };
  }
});

