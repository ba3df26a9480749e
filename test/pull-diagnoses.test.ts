/**
 * POST /fhir/Patient/{id}/$pull-diagnoses end to end: a second instance of this server, started
 * as its own process-level server on loopback with token auth on, plays the physician's EHR. We
 * are registered there as a SMART Backend Services client whose JWKS URL serves our server's own
 * public key; the EHR's Patient and Conditions are written through its own FHIR API. Pulling
 * stores the EHR's Conditions locally with their identifiers and meta.source; pulling again
 * changes nothing; a Condition resolved in the EHR is updated here; an unlinked Patient and an
 * unreachable EHR get clear errors.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Bundle, Condition, Parameters } from 'fhir/r4.js';
import supertest from 'supertest';
import { hashSecret, newClientId, newClientSecret } from '../src/auth/index.js';
import { loadConfig } from '../src/config.js';
import { EHR_ENDPOINT_EXTENSION } from '../src/interactions/pull-diagnoses.js';
import { startServer, type RunningServer } from '../src/server.js';
import { ClientStore } from '../src/store/clients.js';
import { createTenant } from '../src/store/tenants.js';
import { FHIR_JSON, silentLogger, testContext, testSigningKey, tokenFor } from './helpers.js';

const RUN = randomUUID().slice(0, 8);
const MRN_SYSTEM = `http://riverside.example.org/mrn/${RUN}`;
const CATEGORY = 'http://terminology.hl7.org/CodeSystem/condition-category';

describe('$pull-diagnoses from an EHR over FHIR', function () {
  this.timeout(90_000);
  let ehr: RunningServer;
  let dataDir: string;
  let jwks: Server;
  let ehrBase: string;
  let seedToken: string;
  const remote: Record<string, string> = {};

  async function ehrFetch(path: string, init: RequestInit = {}): Promise<Response> {
    return fetch(`${ehrBase}/${path}`, { ...init, headers: { authorization: `Bearer ${seedToken}`, 'content-type': FHIR_JSON, ...(init.headers ?? {}) } });
  }

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

  before(async () => {
    // Our public key, where the EHR reads it (as it would read https://our-server/auth/jwks).
    const key = await testSigningKey();
    jwks = createServer((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: [key.publicJwk] }));
    });
    await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve));

    dataDir = mkdtempSync(join(tmpdir(), 'met-ehr-pull-'));
    const env: Record<string, string> = { PORT: '0', HL7_PORT: '0', DELIVERY: 'off', DATA_DIR: dataDir, LOG_LEVEL: 'silent' };
    if (process.env.DATABASE_URL) env.DATABASE_URL = process.env.DATABASE_URL;
    ehr = await startServer(loadConfig(env), silentLogger);
    const origin = `http://localhost:${ehr.port}`;
    ehrBase = `${origin}/fhir`;
    const tenant = `riverside-${RUN}`;
    await createTenant(ehr.db, tenant);
    const clients = new ClientStore(ehr.db.pool);
    remote.clientId = newClientId();
    await clients.createClient({ clientId: remote.clientId, tenant, name: 'met-server', jwksUrl: `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks.json`, scopes: 'system/Patient.rs system/Condition.rs' });
    const seederId = newClientId();
    const secret = newClientSecret();
    await clients.createClient({ clientId: seederId, tenant, name: 'ehr-staff', secretHash: await hashSecret(secret), scopes: 'system/*.*' });
    const token = await fetch(`${origin}/auth/token`, { method: 'POST', body: new URLSearchParams({ grant_type: 'client_credentials', client_id: seederId, client_secret: secret, scope: 'system/*.*' }) });
    assert.equal(token.status, 200, await token.clone().text());
    seedToken = ((await token.json()) as { access_token: string }).access_token;

    // The EHR's patient and three diagnoses: two on the problem list, one for an encounter.
    const patient = await ehrFetch('Patient', { method: 'POST', body: JSON.stringify({ resourceType: 'Patient', identifier: [{ system: MRN_SYSTEM, value: 'E4471023' }], name: [{ family: 'Delacroix' }] }) });
    remote.patient = ((await patient.json()) as { id: string }).id;
    const condition = (code: string, display: string, category: string) => ({
      resourceType: 'Condition',
      clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] },
      category: [{ coding: [{ system: CATEGORY, code: category }] }],
      code: { coding: [{ system: 'http://hl7.org/fhir/sid/icd-10-cm', code, display }] },
      subject: { reference: `Patient/${remote.patient}` },
      onsetDateTime: '2025-01-12',
    });
    for (const [name, c] of Object.entries({
      knee: condition('M17.11', 'Unilateral primary osteoarthritis, right knee', 'problem-list-item'),
      htn: condition('I10', 'Essential (primary) hypertension', 'problem-list-item'),
      pain: condition('M25.561', 'Pain in right knee', 'encounter-diagnosis'),
    })) {
      const res = await ehrFetch('Condition', { method: 'POST', body: JSON.stringify(c) });
      assert.equal(res.status, 201);
      remote[name] = ((await res.json()) as { id: string }).id;
    }
  });

  after(async () => {
    await ehr?.stop();
    jwks?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  let localPatient: string;

  it('stores the EHR\'s diagnoses as local Conditions with their source, once', async () => {
    const http = await ours();
    const endpoint = await http
      .post('/fhir/Endpoint')
      .set('Content-Type', FHIR_JSON)
      .send({
        resourceType: 'Endpoint',
        status: 'active',
        name: 'Riverside EHR',
        connectionType: { system: 'http://terminology.hl7.org/CodeSystem/endpoint-connection-type', code: 'hl7-fhir-rest' },
        payloadType: [{ text: 'FHIR R4' }],
        address: ehrBase,
        extension: [
          {
            url: EHR_ENDPOINT_EXTENSION,
            extension: [
              { url: 'auth', valueCode: 'smart-backend' },
              { url: 'tokenUrl', valueUrl: `http://localhost:${ehr.port}/auth/token` },
              { url: 'clientId', valueString: remote.clientId },
              { url: 'scope', valueString: 'system/Patient.rs system/Condition.rs' },
              { url: 'patientIdentifierSystem', valueUri: MRN_SYSTEM },
            ],
          },
        ],
      });
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

    const again = await pull(localPatient);
    assert.deepEqual(again.outcomes.map((o) => o.action), ['unchanged', 'unchanged', 'unchanged']);
    const after = await http.get(`/fhir/Condition?subject=Patient/${localPatient}`).expect(200);
    assert.equal((after.body as Bundle).entry?.length, 3, 'nothing new');
  });

  it('updates a local Condition when the EHR resolves it', async () => {
    const current = (await (await ehrFetch(`Condition/${remote.pain}`)).json()) as Condition;
    const resolved = { ...current, clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'resolved' }] }, abatementDateTime: '2026-03-01' };
    assert.equal((await ehrFetch(`Condition/${remote.pain}`, { method: 'PUT', body: JSON.stringify(resolved) })).status, 200);
    const pulled = await pull(localPatient);
    assert.deepEqual(pulled.outcomes.map((o) => o.action).sort(), ['unchanged', 'unchanged', 'updated'], JSON.stringify(pulled.body));
    const updated = pulled.outcomes.find((o) => o.action === 'updated');
    const local = (await (await ours()).get(`/fhir/${updated?.reference}`).expect(200)).body as Condition;
    assert.equal(local.clinicalStatus?.coding?.[0]?.code, 'resolved');
    assert.equal(local.abatementDateTime, '2026-03-01');
    assert.equal(local.meta?.versionId, '2');
  });

  it('answers 422 for a Patient linked to no EHR, and 503 when the EHR is unreachable, writing nothing', async () => {
    const http = await ours();
    const stranger = await http.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', name: [{ family: 'Nobody' }] });
    const unlinked = await pull((stranger.body as { id: string }).id);
    assert.equal(unlinked.status, 422);

    await ehr.stop();
    const down = await pull(localPatient);
    assert.equal(down.status, 503, JSON.stringify(down.body));
    assert.equal((down.body as { issue: { details: { coding: { code: string }[] } }[] }).issue[0]?.details.coding[0]?.code, 'ehr-unavailable');
    const local = await http.get(`/fhir/Condition?subject=Patient/${localPatient}`).expect(200);
    assert.equal((local.body as Bundle).entry?.length, 3);
  });
});
