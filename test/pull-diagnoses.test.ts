/**
 * POST /fhir/Patient/{id}/$pull-diagnoses end to end: a second instance of this server, started
 * as its own process-level server on loopback with token auth on, plays the physician's EHR. We
 * are registered there as a SMART Backend Services client whose JWKS URL serves our server's own
 * public key; the EHR's Patient and Conditions are written through its own FHIR API. Pulling
 * stores the EHR's Conditions locally with their identifiers and meta.source; pulling again
 * changes nothing; a Condition resolved in the EHR is updated here; an unlinked Patient and an
 * unreachable EHR get clear errors. An Endpoint may instead name a static bearer token held by the
 * server (tokenRef env:EHR_TOKEN_…, bound to one tenant): here a token the EHR itself issued, and
 * one it never did; and another tenant's Endpoint naming the first one's token, which is refused.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Bundle, Condition, Endpoint, Extension, OperationOutcome, Parameters, Provenance } from 'fhir/r4.js';
import supertest from 'supertest';
import { EHR_ENDPOINT_EXTENSION } from '../src/ehr/endpoint.js';
import { EhrSecrets } from '../src/ehr/secrets.js';
import { ClientStore } from '../src/store/clients.js';
import { createTenant } from '../src/store/tenants.js';
import { fhirEndpoint, smartSettings, startEhrPeer, type EhrPeer } from './ehr-peer.js';
import { assertOutcome, FHIR_JSON, TEST_TENANT, testContext, tokenFor } from './helpers.js';

const RUN = randomUUID().slice(0, 8);
const MRN_SYSTEM = `http://riverside.example.org/mrn/${RUN}`;
/** The MRNs of the patient the static-token Endpoint is linked by. */
const BEARER_MRN_SYSTEM = `http://riverside.example.org/bearer-mrn/${RUN}`;
const CATEGORY = 'http://terminology.hl7.org/CodeSystem/condition-category';
const TOKEN_VAR = `EHR_TOKEN_RIVERSIDE_${RUN.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
const BAD_TOKEN_VAR = `${TOKEN_VAR}_REVOKED`;
const BAD_TOKEN = 'a-token-the-ehr-never-issued.sig';

describe('$pull-diagnoses from an EHR over FHIR', function () {
  this.timeout(90_000);
  let peer: EhrPeer;
  let ehrBase: string;
  const remote: Record<string, string> = {};

  async function ours() {
    return supertest.agent((await testContext()).app).auth(await tokenFor('system/*.*'), { type: 'bearer' });
  }

  async function pull(patientId: string): Promise<{ status: number; outcomes: { action: string; reference: string }[]; body: unknown }> {
    const res = await (await ours()).post(`/fhir/Patient/${patientId}/$pull-diagnoses`);
    const outcomes = ((res.body as Parameters).parameter ?? []).map((p) => ({
      action: p.part?.find((x) => x.name === 'action')?.valueCode ?? '',
      reference: p.part?.find((x) => x.name === 'resource')?.valueReference?.reference ?? '',
    }));
    return { status: res.status, outcomes, body: res.body };
  }

  const condition = (patient: string, code: string, display: string, category: string) => ({
    resourceType: 'Condition',
    clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] },
    category: [{ coding: [{ system: CATEGORY, code: category }] }],
    code: { coding: [{ system: 'http://hl7.org/fhir/sid/icd-10-cm', code, display }] },
    subject: { reference: `Patient/${patient}` },
    onsetDateTime: '2025-01-12',
  });

  let savedSecrets: EhrSecrets | undefined;

  before(async () => {
    peer = await startEhrPeer({ prefix: 'riverside' });
    ehrBase = peer.fhirBase;
    remote.clientId = await peer.registerBackendClient('system/Patient.rs system/Condition.rs');
    // The EHR's patient and three diagnoses: two on the problem list, one for an encounter.
    remote.patient = await peer.create({ resourceType: 'Patient', identifier: [{ system: MRN_SYSTEM, value: 'E4471023' }], name: [{ family: 'Delacroix' }] });
    remote.knee = await peer.create(condition(remote.patient, 'M17.11', 'Unilateral primary osteoarthritis, right knee', 'problem-list-item'));
    remote.htn = await peer.create(condition(remote.patient, 'I10', 'Essential (primary) hypertension', 'problem-list-item'));
    remote.pain = await peer.create(condition(remote.patient, 'M25.561', 'Pain in right knee', 'encounter-diagnosis'));
    // Another patient, with a diagnosis, for the Endpoint with a static bearer token.
    remote.bearerPatient = await peer.create({ resourceType: 'Patient', identifier: [{ system: BEARER_MRN_SYSTEM, value: 'B-77' }], name: [{ family: 'Okonkwo' }] });
    remote.asthma = await peer.create(condition(remote.bearerPatient, 'J45.909', 'Unspecified asthma, uncomplicated', 'problem-list-item'));
    // Our server's static tokens, for the tests' tenant: one the EHR issued (read and search only), one it never did.
    remote.token = await peer.issueToken('system/Patient.rs system/Condition.rs');
    const { ctx } = await testContext();
    savedSecrets = ctx.ehrSecrets;
    ctx.ehrSecrets = new EhrSecrets({ [TOKEN_VAR]: `${TEST_TENANT}:${remote.token}`, [BAD_TOKEN_VAR]: `${TEST_TENANT}:${BAD_TOKEN}` });
  });

  after(async () => {
    const { ctx } = await testContext();
    if (savedSecrets) ctx.ehrSecrets = savedSecrets;
    else delete ctx.ehrSecrets;
    await peer?.close();
  });

  let localPatient: string;

  it('stores the EHR\'s diagnoses as local Conditions with their source, once', async () => {
    const http = await ours();
    const endpoint = await http
      .post('/fhir/Endpoint')
      .set('Content-Type', FHIR_JSON)
      .send(fhirEndpoint(ehrBase, [...smartSettings(peer.tokenUrl, remote.clientId as string, 'system/Patient.rs system/Condition.rs'), { url: 'patientIdentifierSystem', valueUri: MRN_SYSTEM }], { name: 'Riverside EHR' }));
    assert.equal(endpoint.status, 201, endpoint.text);
    const patient = await http.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', identifier: [{ system: MRN_SYSTEM, value: 'E4471023' }], name: [{ family: 'Delacroix' }] });
    localPatient = (patient.body as { id: string }).id;

    const first = await pull(localPatient);
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.deepEqual(first.outcomes.map((o) => o.action), ['created', 'created', 'created']);
    const local = await http.get(`/fhir/Condition?subject=Patient/${localPatient}`).expect(200);
    const conditions = ((local.body as Bundle).entry ?? []).map((e) => e.resource as Condition);
    assert.deepEqual(conditions.map((c) => c.code?.coding?.[0]?.code).sort(), ['I10', 'M17.11', 'M25.561']);
    const knee = conditions.find((c) => c.code?.coding?.[0]?.code === 'M17.11');
    assert.equal(knee?.meta?.source, `${ehrBase}/Condition/${remote.knee}/_history/1`);
    assert.ok(knee?.identifier?.some((i) => i.system === `${ehrBase}/Condition` && i.value === remote.knee));
    const provenance = await http.get(`/fhir/Provenance?target=Condition/${knee?.id}`).expect(200);
    assert.equal((provenance.body as Bundle).entry?.length, 1);
    // R4: agent.who may not refer to an Endpoint; the EHR is named there, and its Endpoint is a source.
    const record = (provenance.body as Bundle).entry?.[0]?.resource as Provenance;
    assert.deepEqual(record.agent.map((a) => a.who), [{ display: 'Riverside EHR' }]);
    assert.ok(record.entity?.some((e) => e.role === 'source' && e.what.reference?.startsWith('Endpoint/')));

    const again = await pull(localPatient);
    assert.deepEqual(again.outcomes.map((o) => o.action), ['unchanged', 'unchanged', 'unchanged']);
    const after = await http.get(`/fhir/Condition?subject=Patient/${localPatient}`).expect(200);
    assert.equal((after.body as Bundle).entry?.length, 3, 'nothing new');
  });

  it('updates a local Condition when the EHR resolves it', async () => {
    const current = (await (await peer.fetch(`Condition/${remote.pain}`)).json()) as Condition;
    const resolved = { ...current, clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'resolved' }] }, abatementDateTime: '2026-03-01' };
    assert.equal((await peer.fetch(`Condition/${remote.pain}`, { method: 'PUT', body: JSON.stringify(resolved) })).status, 200);
    const pulled = await pull(localPatient);
    assert.deepEqual(pulled.outcomes.map((o) => o.action).sort(), ['unchanged', 'unchanged', 'updated'], JSON.stringify(pulled.body));
    const updated = pulled.outcomes.find((o) => o.action === 'updated');
    const local = (await (await ours()).get(`/fhir/${updated?.reference}`).expect(200)).body as Condition;
    assert.equal(local.clinicalStatus?.coding?.[0]?.code, 'resolved');
    assert.equal(local.abatementDateTime, '2026-03-01');
    assert.equal(local.meta?.versionId, '2');
  });

  const fhirRest = { system: 'http://terminology.hl7.org/CodeSystem/endpoint-connection-type', code: 'hl7-fhir-rest' };
  /** The Endpoint of the static-token tests, with these connection settings. */
  const bearerEndpoint = (id: string | undefined, settings: Extension[]): Endpoint => ({
    resourceType: 'Endpoint',
    ...(id ? { id } : {}),
    status: 'active',
    name: 'Riverside test EHR',
    connectionType: fhirRest,
    payloadType: [{ text: 'FHIR R4' }],
    address: ehrBase,
    extension: [{ url: EHR_ENDPOINT_EXTENSION, extension: [...settings, { url: 'patientIdentifierSystem', valueUri: BEARER_MRN_SYSTEM }] }],
  });
  let bearerEndpointId: string;
  let bearerPatient: string;

  it('pulls with a static bearer token that the Endpoint names (tokenRef env:EHR_TOKEN_…), asking the EHR for no token', async () => {
    const http = await ours();
    const endpoint = await http.post('/fhir/Endpoint').set('Content-Type', FHIR_JSON).send(bearerEndpoint(undefined, [{ url: 'auth', valueCode: 'bearer' }, { url: 'tokenRef', valueString: `env:${TOKEN_VAR}` }]));
    assert.equal(endpoint.status, 201, endpoint.text);
    bearerEndpointId = (endpoint.body as { id: string }).id;
    const patient = await http.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', identifier: [{ system: BEARER_MRN_SYSTEM, value: 'B-77' }], name: [{ family: 'Okonkwo' }] });
    bearerPatient = (patient.body as { id: string }).id;

    const before = peer.requests.length;
    const pulled = await pull(bearerPatient);
    assert.equal(pulled.status, 200, JSON.stringify(pulled.body));
    assert.deepEqual(pulled.outcomes.map((o) => o.action), ['created']);
    assert.deepEqual(peer.requests.slice(before), ['/fhir/Patient', '/fhir/Condition', '/fhir/Condition'], 'the Patient, a search per category, and no token request');
    const local = (await http.get(`/fhir/${pulled.outcomes[0]?.reference}`).expect(200)).body as Condition;
    assert.equal(local.code?.coding?.[0]?.code, 'J45.909');
    assert.equal(local.meta?.source, `${ehrBase}/Condition/${remote.asthma}/_history/1`);
    assert.equal((await pull(bearerPatient)).outcomes[0]?.action, 'unchanged');
  });

  it('never shows the token: the Endpoint read, searched, in its history and in a batch holds only the reference', async () => {
    const http = await ours();
    const responses = [
      await http.get(`/fhir/Endpoint/${bearerEndpointId}`),
      await http.get(`/fhir/Endpoint?_id=${bearerEndpointId}`),
      await http.get(`/fhir/Endpoint/${bearerEndpointId}/_history`),
      await http.post('/fhir').set('Content-Type', FHIR_JSON).send({ resourceType: 'Bundle', type: 'batch', entry: [{ request: { method: 'GET', url: `Endpoint/${bearerEndpointId}` } }] }),
    ];
    for (const res of responses) {
      assert.equal(res.status, 200, res.text);
      assert.ok(res.text.includes(`env:${TOKEN_VAR}`), `the reference is there: ${res.text.slice(0, 300)}`);
      assert.ok(!res.text.includes(remote.token as string), 'the token is not');
    }
  });

  it('moves no diagnosis between two local Patients carrying the same MRN (409 duplicate-patient-link, nothing written) until one is corrected', async () => {
    const http = await ours();
    // An EHR patient of its own, with one diagnosis; two local Patients carry its MRN (entered twice).
    const ehrPatient = await peer.create({ resourceType: 'Patient', identifier: [{ system: MRN_SYSTEM, value: 'E-DUP-1' }], name: [{ family: 'Twofold' }] });
    const ehrCondition = await peer.create(condition(ehrPatient, 'E11.9', 'Type 2 diabetes mellitus without complications', 'problem-list-item'));
    const local = async (family: string): Promise<string> =>
      ((await http.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', identifier: [{ system: MRN_SYSTEM, value: 'E-DUP-1' }], name: [{ family }] }).expect(201)).body as { id: string }).id;
    const first = await local('Twofold');
    const twin = await local('Twofold-Twin');
    assert.deepEqual((await pull(first)).outcomes.map((o) => o.action), ['created']);
    const conditionsOf = async (patient: string): Promise<Condition[]> =>
      (((await http.get(`/fhir/Condition?subject=Patient/${patient}`).expect(200)).body as Bundle).entry ?? []).map((e) => e.resource as Condition);
    const [stored] = await conditionsOf(first);

    const refused = await http.post(`/fhir/Patient/${twin}/$pull-diagnoses`);
    assert.equal(refused.status, 409, refused.text);
    assertOutcome(refused.body, [
      {
        code: 'conflict',
        detail: 'duplicate-patient-link',
        expression: 'Patient.identifier',
        diagnostics: new RegExp(
          `^The EHR's Condition ${ehrCondition} of Endpoint/\\S+ is already stored as Condition/${stored?.id} of Patient/${first}, and Patient/${twin} is linked to the same EHR Patient ${ehrPatient}: two Patients here carry that EHR's identifier of one person; merge or correct them, then pull again$`,
        ),
      },
    ]);
    assert.deepEqual(await conditionsOf(first), [stored], 'the first Patient keeps its diagnosis, unchanged');
    assert.deepEqual(await conditionsOf(twin), []);

    // The first one is corrected (its MRN was the twin's): the diagnosis moves to the twin, with a Provenance.
    await http.put(`/fhir/Patient/${first}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', id: first, name: [{ family: 'Twofold' }] }).expect(200);
    const moved = await pull(twin);
    assert.equal(moved.status, 200, JSON.stringify(moved.body));
    assert.deepEqual(moved.outcomes, [{ action: 'updated', reference: `Condition/${stored?.id}` }]);
    assert.deepEqual(await conditionsOf(first), []);
    assert.deepEqual((await conditionsOf(twin)).map((c) => c.id), [stored?.id]);
    const provenance = await http.get(`/fhir/Provenance?target=Condition/${stored?.id}`).expect(200);
    assert.equal((provenance.body as Bundle).entry?.length, 2, 'one for the pull that created it, one for the move');
  });

  it("gets another tenant's Endpoint naming this tenant's SMART client id no token: each tenant signs with a key of its own", async () => {
    // The attacker: a client of another tenant, whose Endpoint names the EHR's token URL and the
    // client id the EHR registered for the tests' tenant (client ids are not secrets).
    const { db, app, ctx } = await testContext();
    const attacker = `smart-attacker-${RUN}`;
    if (!(await new ClientStore(db.pool).tenantExists(attacker))) await createTenant(db, attacker);
    const mine = await ctx.outboundKeys!.forTenant(TEST_TENANT);
    const theirs = await ctx.outboundKeys!.forTenant(attacker);
    assert.notEqual(theirs.kid, mine.kid);
    const http = supertest.agent(app).auth(await tokenFor('system/*.*', { tenant: attacker }), { type: 'bearer' });
    const endpoint = await http
      .post('/fhir/Endpoint')
      .set('Content-Type', FHIR_JSON)
      .send(fhirEndpoint(ehrBase, [...smartSettings(peer.tokenUrl, remote.clientId as string, 'system/Patient.rs system/Condition.rs'), { url: 'patientIdentifierSystem', valueUri: MRN_SYSTEM }], { name: 'Riverside EHR' }));
    assert.equal(endpoint.status, 201, endpoint.text);
    const patient = await http.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', identifier: [{ system: MRN_SYSTEM, value: 'E4471023' }] });
    const patientId = (patient.body as { id: string }).id;
    const seen: string[] = [];
    const record = (req: IncomingMessage): void => void seen.push((req.url ?? '').split('?')[0] as string);
    peer.server.server.prependListener('request', record);
    try {
      const refused = await http.post(`/fhir/Patient/${patientId}/$pull-diagnoses`);
      assert.equal(refused.status, 422, refused.text);
      assertOutcome(refused.body, [{ code: 'processing', detail: 'ehr-refused', diagnostics: /token endpoint .* refused the token request with HTTP 401: invalid_client/ }]);
    } finally {
      peer.server.server.removeListener('request', record);
    }
    assert.deepEqual(seen, ['/auth/token'], 'the EHR was asked for a token, refused it, and was read from not at all');
    const conditions = await http.get(`/fhir/Condition?subject=Patient/${patientId}`).expect(200);
    assert.equal((conditions.body as Bundle).entry?.length ?? 0, 0, 'nothing was pulled into the attacker\'s tenant');
    // The tests' own tenant still pulls with its key.
    assert.equal((await pull(localPatient)).status, 200);
  });

  it("refuses another tenant's Endpoint naming this tenant's token variable exactly as a variable not set, sending nothing", async () => {
    // The attacker: a client of another tenant, with an Endpoint of its own whose address is a host
    // of its choosing (here the peer, which records what it is sent) and whose tokenRef names the
    // variable of the tests' tenant's token.
    const { db, app } = await testContext();
    const attacker = `attacker-${RUN}`;
    if (!(await new ClientStore(db.pool).tenantExists(attacker))) await createTenant(db, attacker);
    const http = supertest.agent(app).auth(await tokenFor('system/*.*', { tenant: attacker }), { type: 'bearer' });
    const stolen = await http.post('/fhir/Endpoint').set('Content-Type', FHIR_JSON).send(bearerEndpoint(undefined, [{ url: 'auth', valueCode: 'bearer' }, { url: 'tokenRef', valueString: `env:${TOKEN_VAR}` }]));
    assert.equal(stolen.status, 201, stolen.text);
    const endpointId = (stolen.body as { id: string }).id;
    const patient = await http.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', identifier: [{ system: BEARER_MRN_SYSTEM, value: 'B-77' }] });
    assert.equal(patient.status, 201, patient.text);
    const patientId = (patient.body as { id: string }).id;
    const seen: string[] = [];
    const record = (req: IncomingMessage): void => void seen.push(req.headers.authorization ?? '');
    peer.server.server.prependListener('request', record);
    try {
      const refused = await http.post(`/fhir/Patient/${patientId}/$pull-diagnoses`);
      assert.equal(refused.status, 422, refused.text);
      assert.ok(!refused.text.includes(remote.token as string));
      // The answer for a variable that is set nowhere, word for word but for its name.
      const unsetVar = `EHR_TOKEN_UNSET_${RUN.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
      await http.put(`/fhir/Endpoint/${endpointId}`).set('Content-Type', FHIR_JSON).send(bearerEndpoint(endpointId, [{ url: 'auth', valueCode: 'bearer' }, { url: 'tokenRef', valueString: `env:${unsetVar}` }])).expect(200);
      const unset = await http.post(`/fhir/Patient/${patientId}/$pull-diagnoses`);
      assert.equal(unset.status, 422, unset.text);
      // (Each OperationOutcome has an id of its own.)
      const outcome = (res: supertest.Response): OperationOutcome => ({ ...(res.body as OperationOutcome), id: '' });
      assert.deepEqual(outcome(refused), JSON.parse(JSON.stringify(outcome(unset)).split(unsetVar).join(TOKEN_VAR)) as OperationOutcome);
      assertOutcome(refused.body, [
        {
          code: 'processing',
          detail: 'unprocessable-operation',
          expression: `Endpoint.extension('${EHR_ENDPOINT_EXTENSION}').extension('tokenRef')`,
          diagnostics: `Endpoint/${endpointId}, the EHR this Patient is linked to, names ${TOKEN_VAR} in 'tokenRef', which is not set on this server for this tenant (it is read from the server's environment at start, as <tenant>:<token>)`,
        },
      ]);
    } finally {
      peer.server.server.removeListener('request', record);
    }
    assert.deepEqual(seen, [], 'the EHR (the attacker\'s host) was sent nothing, and so never the token');
    // The tests' own tenant still pulls with it.
    assert.equal((await pull(bearerPatient)).status, 200);
  });

  it('answers 422 ehr-refused when the EHR refuses the static token, naming neither token', async () => {
    const http = await ours();
    await http
      .put(`/fhir/Endpoint/${bearerEndpointId}`)
      .set('Content-Type', FHIR_JSON)
      .send(bearerEndpoint(bearerEndpointId, [{ url: 'auth', valueCode: 'bearer' }, { url: 'tokenRef', valueString: `env:${BAD_TOKEN_VAR}` }]))
      .expect(200);
    const before = peer.requests.length;
    const refused = await pull(bearerPatient);
    assert.equal(refused.status, 422, JSON.stringify(refused.body));
    assertOutcome(refused.body, [{ code: 'processing', detail: 'ehr-refused', diagnostics: new RegExp(`^The EHR of Endpoint/${bearerEndpointId} refused the request: search Patient at .*: the EHR answered HTTP 401: our credentials are not accepted`) }]);
    assert.deepEqual(peer.requests.slice(before), ['/fhir/Patient'], 'a static token is not retried');
    const text = JSON.stringify(refused.body);
    assert.ok(!text.includes(BAD_TOKEN) && !text.includes(remote.token as string));
  });

  it('answers 422 unprocessable-operation naming the element at fault for an Endpoint it cannot use, and sends nothing', async () => {
    const http = await ours();
    const at = (name: string): string => `Endpoint.extension('${EHR_ENDPOINT_EXTENSION}').extension('${name}')`;
    const cases: [Extension[], string, RegExp][] = [
      [[{ url: 'auth', valueCode: 'bearer' }], 'tokenRef', /has auth bearer but no 'tokenRef' \(valueString\)/],
      [[{ url: 'auth', valueCode: 'bearer' }, { url: 'tokenRef', valueString: 'env:DATABASE_URL' }], 'tokenRef', /has a 'tokenRef' that is not env:EHR_TOKEN_<NAME>/],
      [[{ url: 'auth', valueCode: 'bearer' }, { url: 'tokenRef', valueString: `env:EHR_TOKEN_UNSET_${RUN.toUpperCase().replace(/[^A-Z0-9]/g, '_')}` }], 'tokenRef', /names EHR_TOKEN_UNSET_\w+ in 'tokenRef', which is not set on this server for this tenant/],
      [[{ url: 'auth', valueCode: 'bearer' }, { url: 'token', valueString: 'pasted-in-by-mistake' }], 'token', /carries a secret in sub-extension 'token', which is refused/],
      [[{ url: 'auth', valueCode: 'basic' }], 'auth', /has auth "basic": expected one of smart-backend, bearer, none \(valueCode\)/],
      [[{ url: 'auth', valueCode: 'smart-backend' }, { url: 'clientId', valueString: 'met' }], 'tokenUrl', /has auth smart-backend but no 'tokenUrl'/],
    ];
    for (const [settings, element, diagnostics] of cases) {
      await http.put(`/fhir/Endpoint/${bearerEndpointId}`).set('Content-Type', FHIR_JSON).send(bearerEndpoint(bearerEndpointId, settings)).expect(200);
      const before = peer.requests.length;
      const res = await pull(bearerPatient);
      assert.equal(res.status, 422, JSON.stringify(res.body));
      assertOutcome(res.body, [{ code: 'processing', detail: 'unprocessable-operation', expression: at(element), diagnostics: new RegExp(`^Endpoint/${bearerEndpointId}, the EHR this Patient is linked to, ${diagnostics.source}`) }]);
      assert.equal(peer.requests.length, before, 'nothing sent to the EHR');
    }
    await http.put(`/fhir/Endpoint/${bearerEndpointId}`).set('Content-Type', FHIR_JSON).send({ ...bearerEndpoint(bearerEndpointId, []), status: 'off' }).expect(200);
  });

  it('answers 422 for a Patient linked to no EHR, and 503 when the EHR is unreachable, writing nothing', async () => {
    const http = await ours();
    const stranger = await http.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', name: [{ family: 'Nobody' }] });
    const unlinked = await pull((stranger.body as { id: string }).id);
    assert.equal(unlinked.status, 422);

    await peer.server.stop();
    const down = await pull(localPatient);
    assert.equal(down.status, 503, JSON.stringify(down.body));
    assert.equal((down.body as { issue: { details: { coding: { code: string }[] } }[] }).issue[0]?.details.coding[0]?.code, 'ehr-unavailable');
    const local = await http.get(`/fhir/Condition?subject=Patient/${localPatient}`).expect(200);
    assert.equal((local.body as Bundle).entry?.length, 3);
  });
});
