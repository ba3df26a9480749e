/**
 * $pull-diagnoses linking a Patient to an EHR by demographic match (src/ehr/patient-link.ts),
 * against a real peer EHR (test/ehr-peer.ts), in a tenant of its own. Two Endpoints to the same
 * EHR: one with matchByDemographics true (the EHR's MRNs), one without (another identifier system
 * the EHR's Patients carry too). A Patient without the MRN matched uniquely gets it, marked, with
 * a Provenance and a review Task, and its Conditions; pulling again reuses the identifier and makes
 * no second Task. Two EHR Patients with the same demographics, a birthDate a day off, another
 * gender, a family name the EHR finds only by prefix: no link, nothing pulled. An Endpoint without
 * the flag never matches, and no EHR Patient is linked to a second Patient here. Review (confirm,
 * reject) through the normal FHIR API.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { Bundle, Condition, Endpoint, Extension, Parameters, ParametersParameter, Patient, Provenance, Task } from 'fhir/r4.js';
import supertest from 'supertest';
import { EHR_ENDPOINT_EXTENSION, matchByDemographicsOf } from '../src/ehr/endpoint.js';
import { EHR_ENDPOINT_TAG_SYSTEM } from '../src/ehr/fhir-ehr.js';
import { demographicsOf, IDENTIFIER_LINK_EXTENSION, PATIENT_LINK_SYSTEM, sameDemographics } from '../src/ehr/patient-link.js';
import { ClientStore } from '../src/store/clients.js';
import { createTenant } from '../src/store/tenants.js';
import { fhirEndpoint, smartSettings, startEhrPeer, type EhrPeer } from './ehr-peer.js';
import { assertOutcome, FHIR_JSON, testContext, testOutboundJwk, tokenFor } from './helpers.js';

const RUN = randomUUID().slice(0, 8);
const TENANT = `linking-${RUN}`;
const MRN_SYSTEM = `http://northgate.example.org/mrn/${RUN}`;
/** Another identifier the EHR's Patients carry: the system of the Endpoint that does not match. */
const PLAIN_SYSTEM = `http://northgate.example.org/plain/${RUN}`;
const CATEGORY = 'http://terminology.hl7.org/CodeSystem/condition-category';
const MR = { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MR' }] };
const SAME = "this Patient's family name, first given name, birthDate and gender";

describe('$pull-diagnoses linking a Patient to an EHR by demographic match', function () {
  this.timeout(90_000);
  let peer: EhrPeer;
  let ehrBase: string;
  let http: supertest.Agent;
  const remote: Record<string, string> = {};
  let matching: string;
  let plain: string;

  const condition = (patient: string, code: string, category: string) => ({
    resourceType: 'Condition',
    clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] },
    category: [{ coding: [{ system: CATEGORY, code: category }] }],
    code: { coding: [{ system: 'http://hl7.org/fhir/sid/icd-10-cm', code }] },
    subject: { reference: `Patient/${patient}` },
  });
  const ehrPatient = (family: string, given: string, birthDate: string, gender: string, mrn: string | undefined, plainId?: string) => ({
    resourceType: 'Patient',
    identifier: [...(mrn ? [{ type: MR, system: MRN_SYSTEM, value: mrn }] : []), ...(plainId ? [{ system: PLAIN_SYSTEM, value: plainId }] : [])],
    name: [{ use: 'official', family, given: [given] }],
    birthDate,
    gender,
  });
  const endpoint = (id: string | undefined, system: string, more: Extension[]): Endpoint =>
    fhirEndpoint(ehrBase, [...smartSettings(peer.tokenUrl, remote.clientId as string), { url: 'patientIdentifierSystem', valueUri: system }, ...more], { name: 'Northgate EHR', ...(id ? { id } : {}) });
  const matchingEndpoint = (flag: Extension[] = [{ url: 'matchByDemographics', valueBoolean: true }]) => endpoint(matching, MRN_SYSTEM, flag);

  async function localPatient(resource: Omit<Patient, 'resourceType'>): Promise<string> {
    const res = await http.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', ...resource });
    assert.equal(res.status, 201, res.text);
    return (res.body as { id: string }).id;
  }
  async function pull(id: string): Promise<{ status: number; body: Parameters & { issue?: unknown }; sent: string[] }> {
    const before = peer.requests.length;
    const res = await http.post(`/fhir/Patient/${id}/$pull-diagnoses`);
    return { status: res.status, body: res.body as Parameters, sent: peer.requests.slice(before).filter((p) => p.startsWith('/fhir/')) };
  }
  async function read<T>(reference: string): Promise<T & { id: string; meta: { versionId: string } }> {
    return (await http.get(`/fhir/${reference}`).expect(200)).body as T & { id: string; meta: { versionId: string } };
  }
  async function search<T>(query: string): Promise<T[]> {
    return (((await http.get(`/fhir/${query}`).expect(200)).body as Bundle).entry ?? []).map((e) => e.resource as T);
  }
  const link = (endpointId: string, outcome: string, parts: ParametersParameter[]): ParametersParameter => ({
    name: 'link',
    part: [{ name: 'endpoint', valueReference: { reference: `Endpoint/${endpointId}` } }, { name: 'method', valueCode: 'demographic-match' }, { name: 'outcome', valueCode: outcome }, ...parts],
  });
  const outcome = (action: string, reference: string): ParametersParameter => ({ name: 'outcome', part: [{ name: 'action', valueCode: action }, { name: 'resource', valueReference: { reference } }] });
  const partOf = (p: ParametersParameter | undefined, name: string) => p?.part?.find((x) => x.name === name);

  before(async () => {
    peer = await startEhrPeer({ prefix: 'northgate' });
    ehrBase = peer.fhirBase;
    const { db, app } = await testContext();
    if (!(await new ClientStore(db.pool).tenantExists(TENANT))) await createTenant(db, TENANT);
    // The EHR knows this tenant's own key for client assertions (what it serves at /auth/jwks/<id>).
    remote.clientId = await peer.registerBackendClient('system/Patient.rs system/Condition.rs', await testOutboundJwk(TENANT));
    // The one match, with two diagnoses; it carries the other Endpoint's identifier too.
    remote.castellano = await peer.create(ehrPatient('Castellano', 'Inés', '1968-04-23', 'female', 'M-1001', 'P-1001'));
    remote.castellanoKnee = await peer.create(condition(remote.castellano, 'M17.11', 'problem-list-item'));
    remote.castellanoPain = await peer.create(condition(remote.castellano, 'M25.561', 'encounter-diagnosis'));
    // Two of the same demographics.
    remote.brandt1 = await peer.create(ehrPatient('Brandt', 'Tomas', '1975-09-02', 'male', 'M-2001', 'P-2001'));
    remote.brandt2 = await peer.create(ehrPatient('Brandt', 'Tomas', '1975-09-02', 'male', 'M-2002'));
    remote.brandtHtn = await peer.create(condition(remote.brandt1, 'I10', 'problem-list-item'));
    await peer.create(condition(remote.brandt2, 'E11.9', 'problem-list-item'));
    // The near misses' EHR Patient.
    remote.lindqvist = await peer.create(ehrPatient('Lindqvist', 'Helga', '1981-01-15', 'female', 'M-3001'));
    await peer.create(condition(remote.lindqvist, 'J45.909', 'problem-list-item'));
    // For review: one to confirm is Castellano's; one to reject.
    remote.okafor = await peer.create(ehrPatient('Okafor', 'Ruth', '1990-12-01', 'female', 'M-4001'));
    remote.okaforAsthma = await peer.create(condition(remote.okafor, 'J45.20', 'problem-list-item'));
    // Without an MRN.
    remote.noMrn = await peer.create(ehrPatient('Varga', 'Zsofia', '1959-06-30', 'female', undefined, 'P-5001'));
    remote.vargaCopd = await peer.create(condition(remote.noMrn, 'J44.9', 'problem-list-item'));

    http = supertest.agent(app).auth(await tokenFor('system/*.*', { tenant: TENANT }), { type: 'bearer' });
    const created = await http.post('/fhir/Endpoint').set('Content-Type', FHIR_JSON).send(endpoint(undefined, MRN_SYSTEM, [{ url: 'matchByDemographics', valueBoolean: true }]));
    assert.equal(created.status, 201, created.text);
    matching = (created.body as { id: string }).id;
    const other = await http.post('/fhir/Endpoint').set('Content-Type', FHIR_JSON).send(endpoint(undefined, PLAIN_SYSTEM, []));
    assert.equal(other.status, 201, other.text);
    plain = (other.body as { id: string }).id;
  });

  after(async () => {
    await peer?.close();
  });

  let castellano: string;
  let castellanoTask: string;

  it('links the one EHR Patient with the same demographics: its MRN marked on the Patient, a Provenance, a review Task, its Conditions', async () => {
    // Case and spaces differ from the EHR's; the name is the same.
    castellano = await localPatient({ name: [{ use: 'official', family: ' CASTELLANO', given: ['inés '] }], birthDate: '1968-04-23', gender: 'female' });
    const first = await pull(castellano);
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.deepEqual(first.sent, ['/fhir/Patient', '/fhir/Condition', '/fhir/Condition'], 'one demographic search (the other Endpoint does not match), a Condition search per category');
    const parameters = first.body.parameter ?? [];
    castellanoTask = (partOf(parameters[0], 'task')?.valueReference?.reference ?? '').replace('Task/', '');
    const provenanceId = (partOf(parameters[0], 'provenance')?.valueReference?.reference ?? '').replace('Provenance/', '');
    const knee = (await search<Condition>(`Condition?identifier=${encodeURIComponent(`${ehrBase}/Condition|${remote.castellanoKnee}`)}`))[0];
    const pain = (await search<Condition>(`Condition?identifier=${encodeURIComponent(`${ehrBase}/Condition|${remote.castellanoPain}`)}`))[0];
    const ehrUrl = `${ehrBase}/Patient/${remote.castellano}`;
    assert.deepEqual(first.body, {
      resourceType: 'Parameters',
      parameter: [
        link(matching, 'linked', [
          { name: 'count', valueInteger: 1 },
          { name: 'ehrPatient', valueReference: { reference: ehrUrl } },
          { name: 'identifier', valueIdentifier: { system: MRN_SYSTEM, value: 'M-1001' } },
          { name: 'reviewStatus', valueCode: 'unreviewed' },
          { name: 'task', valueReference: { reference: `Task/${castellanoTask}` } },
          { name: 'provenance', valueReference: { reference: `Provenance/${provenanceId}` } },
          {
            name: 'message',
            valueString: `Linked to the EHR's Patient ${ehrUrl} by demographic match: its MRN ${MRN_SYSTEM}|M-1001 was added to Patient/${castellano} (unreviewed); review Task/${castellanoTask}`,
          },
        ]),
        outcome('created', `Condition/${knee?.id}`),
        outcome('created', `Condition/${pain?.id}`),
      ],
    });
    assert.equal(knee?.subject?.reference, `Patient/${castellano}`);
    assert.equal(pain?.subject?.reference, `Patient/${castellano}`);

    // The MRN, marked; not the other Endpoint's identifier.
    const patient = await read<Patient>(`Patient/${castellano}`);
    assert.equal(patient.meta.versionId, '2');
    assert.deepEqual(patient.identifier, [
      {
        extension: [
          {
            url: IDENTIFIER_LINK_EXTENSION,
            extension: [
              { url: 'method', valueCode: 'demographic-match' },
              { url: 'reviewStatus', valueCode: 'unreviewed' },
              { url: 'endpoint', valueReference: { reference: `Endpoint/${matching}` } },
              { url: 'ehrPatient', valueReference: { reference: ehrUrl } },
              { url: 'task', valueReference: { reference: `Task/${castellanoTask}` } },
            ],
          },
        ],
        type: MR,
        system: MRN_SYSTEM,
        value: 'M-1001',
      },
    ]);

    const { id: _t, meta: _tm, authoredOn, ...task } = await read<Task>(`Task/${castellanoTask}`);
    assert.match(authoredOn ?? '', /^\d{4}-\d\d-\d\dT/);
    assert.deepEqual(task, {
      resourceType: 'Task',
      identifier: [{ system: PATIENT_LINK_SYSTEM, value: `Patient/${castellano}:Endpoint/${matching}:Patient/${remote.castellano}` }],
      status: 'requested',
      intent: 'order',
      priority: 'routine',
      code: { text: 'review patient link' },
      description:
        `Patient/${castellano} was linked by demographic match to the EHR's Patient ${ehrUrl} (MRN ${MRN_SYSTEM}|M-1001) of Endpoint/${matching}: ` +
        `family CASTELLANO, given inés, birthDate 1968-04-23, gender female. Confirm: set this Task to completed and the identifier's reviewStatus to confirmed. ` +
        `Reject: remove the identifier from the Patient, delete the Conditions pulled from that EHR, and set this Task to rejected.`,
      focus: { reference: `Patient/${castellano}` },
      for: { reference: `Patient/${castellano}` },
      input: [
        { type: { text: 'ehr-patient' }, valueReference: { reference: ehrUrl } },
        { type: { text: 'ehr-identifier' }, valueIdentifier: { system: MRN_SYSTEM, value: 'M-1001' } },
        { type: { text: 'endpoint' }, valueReference: { reference: `Endpoint/${matching}` } },
        { type: { text: 'family' }, valueString: 'CASTELLANO' },
        { type: { text: 'given' }, valueString: 'inés' },
        { type: { text: 'birthDate' }, valueDate: '1968-04-23' },
        { type: { text: 'gender' }, valueCode: 'female' },
      ],
    });

    const { id: _p, meta: _pm, recorded, ...provenance } = await read<Provenance>(`Provenance/${provenanceId}`);
    assert.equal(recorded, authoredOn);
    const { ctx } = await testContext();
    assert.deepEqual(provenance, {
      resourceType: 'Provenance',
      target: [{ reference: `Patient/${castellano}/_history/2` }, { reference: `Task/${castellanoTask}/_history/1` }],
      activity: {
        coding: [
          { system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation', code: 'APPEND', display: 'append' },
          { system: 'http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle', code: 'link', display: 'Link Record Lifecycle Event' },
        ],
        text: 'linked to an EHR patient by demographic match',
      },
      reason: [
        {
          coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'TREAT', display: 'treatment' }],
          text: `exactly one Patient of the EHR of Endpoint/${matching} has the same family name, first given name, birthDate and gender`,
        },
      ],
      agent: [
        {
          type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'assembler', display: 'Assembler' }] },
          who: { display: `${ctx.software.name} ${ctx.software.version} ($pull-diagnoses)` },
        },
      ],
      entity: [{ role: 'source', what: { reference: ehrUrl, display: `the EHR's Patient (MRN ${MRN_SYSTEM}|M-1001)` } }],
    });
    // And the Conditions' own Provenance, as for a Patient linked by identifier.
    assert.equal((await search<Provenance>(`Provenance?target=Condition/${knee?.id}`)).length, 1);

    // Again: by the identifier now; no link made again, no second Task or Provenance.
    const again = await pull(castellano);
    assert.equal(again.status, 200, JSON.stringify(again.body));
    assert.deepEqual(again.body, { resourceType: 'Parameters', parameter: [outcome('unchanged', `Condition/${knee?.id}`), outcome('unchanged', `Condition/${pain?.id}`)] });
    assert.deepEqual(again.sent, ['/fhir/Patient', '/fhir/Condition', '/fhir/Condition']);
    assert.equal((await read<Patient>(`Patient/${castellano}`)).meta.versionId, '2');
    assert.deepEqual((await search<Task>(`Task?focus=Patient/${castellano}`)).map((t) => t.id), [castellanoTask]);
    assert.equal((await search<Provenance>(`Provenance?target=Patient/${castellano}`)).length, 1);
  });

  it('links nothing and pulls nothing when two EHR Patients have the same demographics', async () => {
    const brandt = await localPatient({ name: [{ family: 'Brandt', given: ['Tomas'] }], birthDate: '1975-09-02', gender: 'male' });
    const ambiguous = await pull(brandt);
    assert.equal(ambiguous.status, 200, JSON.stringify(ambiguous.body));
    const message = `2 Patients of the EHR of Endpoint/${matching} have ${SAME}: not linked, as which one (if any) is this client cannot be told; give the Patient the EHR's MRN (${MRN_SYSTEM}) to link it`;
    assert.deepEqual(ambiguous.body, { resourceType: 'Parameters', parameter: [link(matching, 'ambiguous', [{ name: 'count', valueInteger: 2 }, { name: 'message', valueString: message }])] });
    assert.deepEqual(ambiguous.sent, ['/fhir/Patient'], 'the search, and no Condition search');
    assert.equal((await read<Patient>(`Patient/${brandt}`)).meta.versionId, '1');
    assert.deepEqual(await search(`Condition?subject=Patient/${brandt}`), []);
    assert.deepEqual(await search(`Task?focus=Patient/${brandt}`), []);

    // Linked to the EHR by the other Endpoint's identifier: that one pulls, the match still does not.
    const current = await read<Patient>(`Patient/${brandt}`);
    await http.put(`/fhir/Patient/${brandt}`).set('Content-Type', FHIR_JSON).send({ ...current, identifier: [{ system: PLAIN_SYSTEM, value: 'P-2001' }] }).expect(200);
    const mixed = await pull(brandt);
    assert.equal(mixed.status, 200, JSON.stringify(mixed.body));
    const htn = (await search<Condition>(`Condition?subject=Patient/${brandt}`)).map((c) => c.id);
    assert.equal(htn.length, 1);
    const parameters = mixed.body.parameter ?? [];
    assert.deepEqual(
      parameters.filter((p) => p.name === 'link'),
      [link(matching, 'ambiguous', [{ name: 'count', valueInteger: 2 }, { name: 'message', valueString: message }])],
    );
    assert.deepEqual(
      parameters.filter((p) => p.name === 'outcome'),
      [outcome('created', `Condition/${htn[0]}`)],
    );
    assert.equal(parameters.length, 2);
    assert.deepEqual((await read<Patient>(`Patient/${brandt}`)).identifier, [{ system: PLAIN_SYSTEM, value: 'P-2001' }], 'no MRN added');
    assert.deepEqual(await search(`Task?focus=Patient/${brandt}`), []);
  });

  it('links nothing on a near miss: a birthDate a day off, another gender, a family name the EHR finds only by prefix', async () => {
    const misses = [
      { name: [{ family: 'Lindqvist', given: ['Helga'] }], birthDate: '1981-01-16', gender: 'female' as const },
      { name: [{ family: 'Lindqvist', given: ['Helga'] }], birthDate: '1981-01-15', gender: 'male' as const },
      { name: [{ family: 'Lind', given: ['Helga'] }], birthDate: '1981-01-15', gender: 'female' as const },
      { name: [{ family: 'Lindqvist', given: ['Helen'] }], birthDate: '1981-01-15', gender: 'female' as const },
    ];
    // The EHR finds Lindqvist for family=Lind (string search matches a prefix): only our own check keeps it out.
    const prefix = (await (await peer.fetch('Patient?family=Lind&given=Helga&birthdate=1981-01-15&gender=female')).json()) as Bundle;
    assert.deepEqual(prefix.entry?.map((e) => e.resource?.id), [remote.lindqvist]);
    for (const miss of misses) {
      const id = await localPatient(miss);
      const res = await pull(id);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.deepEqual(res.body, {
        resourceType: 'Parameters',
        parameter: [link(matching, 'no-match', [{ name: 'count', valueInteger: 0 }, { name: 'message', valueString: `No Patient of the EHR of Endpoint/${matching} has ${SAME}: not linked` }])],
      }, JSON.stringify(miss));
      assert.deepEqual(res.sent, ['/fhir/Patient']);
      assert.equal((await read<Patient>(`Patient/${id}`)).meta.versionId, '1');
      assert.deepEqual(await search(`Condition?subject=Patient/${id}`), []);
      assert.deepEqual(await search(`Task?focus=Patient/${id}`), []);
    }
    // The one match carries no MRN.
    const varga = await localPatient({ name: [{ family: 'Varga', given: ['Zsofia'] }], birthDate: '1959-06-30', gender: 'female' });
    const res = await pull(varga);
    assert.deepEqual(res.body, {
      resourceType: 'Parameters',
      parameter: [
        link(matching, 'no-identifier', [
          { name: 'count', valueInteger: 1 },
          { name: 'ehrPatient', valueReference: { reference: `${ehrBase}/Patient/${remote.noMrn}` } },
          { name: 'message', valueString: `The one Patient of the EHR of Endpoint/${matching} with ${SAME} carries no identifier of ${MRN_SYSTEM}: not linked` },
        ]),
      ],
    });
    assert.equal((await read<Patient>(`Patient/${varga}`)).meta.versionId, '1');
  });

  it('answers 422 when no EHR can be asked: the Patient lacks what to match on, or the only matching Endpoint cannot be used', async () => {
    const partial = await localPatient({ name: [{ family: 'Castellano', given: ['Inés'] }], birthDate: '1968' });
    const res = await pull(partial);
    assert.equal(res.status, 422, JSON.stringify(res.body));
    assertOutcome(res.body, [
      { code: 'processing', detail: 'unprocessable-operation', diagnostics: `Patient/${partial} is linked to no EHR: give it an identifier of the patientIdentifierSystem of an active hl7-fhir-rest Endpoint` },
      {
        code: 'processing',
        detail: 'unprocessable-operation',
        expression: 'Patient.birthDate',
        diagnostics: `Patient/${partial} has no birthDate, gender to match on (a full birthDate; gender male, female or other): not matched with the EHR of Endpoint/${matching}`,
      },
    ]);
    assert.deepEqual(res.sent, []);

    // Linked by the other Endpoint's identifier: a 200 that still says why it was not matched.
    const current = await read<Patient>(`Patient/${partial}`);
    await http.put(`/fhir/Patient/${partial}`).set('Content-Type', FHIR_JSON).send({ ...current, identifier: [{ system: PLAIN_SYSTEM, value: 'P-5001' }] }).expect(200);
    const linked = await pull(partial);
    assert.equal(linked.status, 200, JSON.stringify(linked.body));
    assert.deepEqual(
      (linked.body.parameter ?? []).filter((p) => p.name === 'link'),
      [
        link(matching, 'missing-demographics', [
          { name: 'missing', valueCode: 'birthDate' },
          { name: 'missing', valueCode: 'gender' },
          {
            name: 'message',
            valueString: `Patient/${partial} has no birthDate, gender to match on (a full birthDate; gender male, female or other): not matched with the EHR of Endpoint/${matching}`,
          },
        ]),
      ],
    );
    const copd = (await search<Condition>(`Condition?subject=Patient/${partial}`)).map((c) => c.id);
    assert.equal(copd.length, 1);
    assert.deepEqual((linked.body.parameter ?? []).filter((p) => p.name === 'outcome'), [outcome('created', `Condition/${copd[0]}`)]);
    assert.equal(linked.body.parameter?.length, 2);

    // A flag that is not a valueBoolean: that Endpoint cannot be used.
    await http.put(`/fhir/Endpoint/${matching}`).set('Content-Type', FHIR_JSON).send(matchingEndpoint([{ url: 'matchByDemographics', valueString: 'true' }])).expect(200);
    try {
      const other = await localPatient({ name: [{ family: 'Okafor', given: ['Ruth'] }], birthDate: '1990-12-01', gender: 'female' });
      const broken = await pull(other);
      assert.equal(broken.status, 422, JSON.stringify(broken.body));
      const at = `Endpoint.extension('${EHR_ENDPOINT_EXTENSION}').extension('matchByDemographics')`;
      assertOutcome(broken.body, [
        { code: 'processing', detail: 'unprocessable-operation', diagnostics: `Patient/${other} is linked to no EHR: give it an identifier of the patientIdentifierSystem of an active hl7-fhir-rest Endpoint` },
        { code: 'processing', detail: 'unprocessable-operation', expression: at, diagnostics: `Endpoint/${matching}, which matches Patients by demographics, has a 'matchByDemographics' that is not a valueBoolean` },
      ]);
      assert.deepEqual(broken.sent, []);
    } finally {
      await http.put(`/fhir/Endpoint/${matching}`).set('Content-Type', FHIR_JSON).send(matchingEndpoint()).expect(200);
    }
  });

  it('never matches through an Endpoint without matchByDemographics (absent or false)', async () => {
    // The same demographics as the EHR's Castellano, who carries the plain Endpoint's identifier too.
    const twin = await localPatient({ name: [{ family: 'Castellano', given: ['Inés'] }], birthDate: '1968-04-23', gender: 'female' });
    const only = `Patient/${twin} is linked to no EHR: give it an identifier of the patientIdentifierSystem of an active hl7-fhir-rest Endpoint`;
    try {
      for (const flag of [[], [{ url: 'matchByDemographics', valueBoolean: false }]] as Extension[][]) {
        await http.put(`/fhir/Endpoint/${matching}`).set('Content-Type', FHIR_JSON).send(matchingEndpoint(flag)).expect(200);
        await http.put(`/fhir/Endpoint/${plain}`).set('Content-Type', FHIR_JSON).send(endpoint(plain, PLAIN_SYSTEM, flag)).expect(200);
        const res = await pull(twin);
        assert.equal(res.status, 422, JSON.stringify(res.body));
        assertOutcome(res.body, [{ code: 'processing', detail: 'unprocessable-operation', diagnostics: only }]);
        assert.deepEqual(res.sent, [], 'the EHR is not asked');
      }
      assert.equal((await read<Patient>(`Patient/${twin}`)).meta.versionId, '1');
    } finally {
      await http.put(`/fhir/Endpoint/${matching}`).set('Content-Type', FHIR_JSON).send(matchingEndpoint()).expect(200);
      await http.put(`/fhir/Endpoint/${plain}`).set('Content-Type', FHIR_JSON).send(endpoint(plain, PLAIN_SYSTEM, [])).expect(200);
    }
    // Matching again: the one EHR Patient's MRN is already another Patient's here (a duplicate client).
    const res = await pull(twin);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const ehrUrl = `${ehrBase}/Patient/${remote.castellano}`;
    assert.deepEqual(res.body, {
      resourceType: 'Parameters',
      parameter: [
        link(matching, 'already-linked', [
          { name: 'count', valueInteger: 1 },
          { name: 'ehrPatient', valueReference: { reference: ehrUrl } },
          { name: 'patient', valueReference: { reference: `Patient/${castellano}` } },
          {
            name: 'message',
            valueString: `Patient/${castellano} already carries the MRN ${MRN_SYSTEM}|M-1001 of the EHR's Patient ${ehrUrl}: not linked, as the EHR's diagnoses would move between two Patients here; merge them, or give this Patient the MRN by hand`,
          },
        ]),
      ],
    });
    assert.deepEqual(res.sent, ['/fhir/Patient'], 'no Conditions asked for');
    assert.equal((await read<Patient>(`Patient/${twin}`)).meta.versionId, '1');
    assert.deepEqual(await search(`Task?focus=Patient/${twin}`), []);
  });

  it('is confirmed through the FHIR API: Task completed, identifier confirmed, and pulls go on; a lost identifier comes back confirmed', async () => {
    // Until confirmed, no report about this client goes to that EHR patient.
    const author = ((await http.post('/fhir/Practitioner').set('Content-Type', FHIR_JSON).send({ resourceType: 'Practitioner', name: [{ family: 'Reyes' }] }).expect(201)).body as { id: string }).id;
    const summary = () =>
      http
        .post(`/fhir/Patient/${castellano}/$send-summary`)
        .set('Content-Type', FHIR_JSON)
        .send({ resourceType: 'Parameters', parameter: [{ name: 'endpoint', valueReference: { reference: `Endpoint/${matching}` } }, { name: 'author', valueReference: { reference: `Practitioner/${author}` } }] });
    const refused = await summary();
    assert.equal(refused.status, 422, refused.text);
    assertOutcome(refused.body, [
      {
        code: 'processing',
        detail: 'unprocessable-operation',
        diagnostics: `Patient/${castellano} is linked to the EHR of Endpoint/${matching} by a demographic match that awaits review (its Task \u201creview patient link\u201d): confirm it before sending reports there`,
      },
    ]);
    const task = await read<Task>(`Task/${castellanoTask}`);
    await http.put(`/fhir/Task/${castellanoTask}`).set('Content-Type', FHIR_JSON).send({ ...task, status: 'completed', lastModified: new Date().toISOString() }).expect(200);
    const patient = await read<Patient>(`Patient/${castellano}`);
    const confirmed = JSON.parse(JSON.stringify(patient).replace('"valueCode":"unreviewed"', '"valueCode":"confirmed"')) as Patient;
    await http.put(`/fhir/Patient/${castellano}`).set('Content-Type', FHIR_JSON).send(confirmed).expect(200);
    assert.equal((await summary()).status, 201, 'a confirmed link is used');
    const res = await pull(castellano);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual((res.body.parameter ?? []).map((p) => [p.name, partOf(p, 'action')?.valueCode]), [['outcome', 'unchanged'], ['outcome', 'unchanged']]);
    const after = await read<Patient>(`Patient/${castellano}`);
    assert.equal(after.meta.versionId, '3');
    assert.equal(after.identifier?.[0]?.extension?.[0]?.extension?.[1]?.valueCode, 'confirmed');

    // Should the identifier be lost, the next match brings it back confirmed, with the same (completed) Task.
    const { identifier: _lost, ...without } = after;
    await http.put(`/fhir/Patient/${castellano}`).set('Content-Type', FHIR_JSON).send(without).expect(200);
    const relinked = await pull(castellano);
    assert.equal(partOf(relinked.body.parameter?.[0], 'outcome')?.valueCode, 'linked', JSON.stringify(relinked.body));
    assert.equal(partOf(relinked.body.parameter?.[0], 'reviewStatus')?.valueCode, 'confirmed');
    assert.equal(partOf(relinked.body.parameter?.[0], 'task')?.valueReference?.reference, `Task/${castellanoTask}`);
    assert.deepEqual((await read<Patient>(`Patient/${castellano}`)).identifier, confirmed.identifier);
    assert.deepEqual((await search<Task>(`Task?focus=Patient/${castellano}`)).map((t) => [t.id, t.status]), [[castellanoTask, 'completed']]);
  });

  it('keeps the link when the MET software pushes the client again (the link identifier is the server\'s)', async () => {
    await peer.create(ehrPatient('Haddad', 'Leila', '1972-07-09', 'female', 'M-6001'));
    const client = { id: `met-link-${RUN}`, name: { given: ['Leila'], family: 'Haddad' }, birthDate: '1972-07-09', sex: 'female' };
    const pushed = await http.post('/met/v1/clients').set('Content-Type', 'application/json').send(client);
    assert.equal(pushed.status, 201, pushed.text);
    const patientId = (pushed.body as { resources: { type: string; id: string }[] }).resources.find((r) => r.type === 'Patient')?.id as string;
    const linked = await pull(patientId);
    assert.equal(partOf(linked.body.parameter?.[0], 'outcome')?.valueCode, 'linked', JSON.stringify(linked.body));
    const withLink = await read<Patient>(`Patient/${patientId}`);
    const link = withLink.identifier?.find((i) => i.system === MRN_SYSTEM);
    assert.equal(link?.value, 'M-6001');

    // The same document again: nothing changes. A changed one: a new version, the link kept.
    const again = await http.post('/met/v1/clients').set('Content-Type', 'application/json').send(client);
    assert.equal((again.body as { status: string }).status, 'unchanged', again.text);
    const moved = await http.post('/met/v1/clients').set('Content-Type', 'application/json').send({ ...client, contact: { phone: '+1 612-555-0199' } });
    assert.equal((moved.body as { status: string }).status, 'updated', moved.text);
    const after = await read<Patient>(`Patient/${patientId}`);
    assert.equal(after.telecom?.[0]?.value, '+1 612-555-0199');
    assert.deepEqual(after.identifier?.find((i) => i.system === MRN_SYSTEM), link);
  });

  it('is made again with the same Task when the identifier is lost while the review is open; once rejected, never again', async () => {
    const okafor = await localPatient({ name: [{ family: 'Okafor', given: ['Ruth'] }], birthDate: '1990-12-01', gender: 'female' });
    const first = await pull(okafor);
    assert.equal(partOf(first.body.parameter?.[0], 'outcome')?.valueCode, 'linked', JSON.stringify(first.body));
    const taskRef = partOf(first.body.parameter?.[0], 'task')?.valueReference?.reference as string;
    const condition = (await search<Condition>(`Condition?subject=Patient/${okafor}`))[0] as Condition & { id: string };
    assert.deepEqual(first.body.parameter?.slice(1), [outcome('created', `Condition/${condition.id}`)]);

    // The identifier is lost (a client document replaced the Patient, say): matched again, the same Task.
    const { identifier: _lost, ...without } = await read<Patient>(`Patient/${okafor}`);
    await http.put(`/fhir/Patient/${okafor}`).set('Content-Type', FHIR_JSON).send(without).expect(200);
    const again = await pull(okafor);
    assert.equal(partOf(again.body.parameter?.[0], 'outcome')?.valueCode, 'linked', JSON.stringify(again.body));
    assert.equal(partOf(again.body.parameter?.[0], 'task')?.valueReference?.reference, taskRef);
    assert.equal(partOf(again.body.parameter?.[0], 'reviewStatus')?.valueCode, 'unreviewed');
    assert.deepEqual(again.body.parameter?.slice(1), [outcome('unchanged', `Condition/${condition.id}`)]);
    assert.equal((await search(`Task?focus=Patient/${okafor}`)).length, 1);
    assert.equal((await read<Patient>(`Patient/${okafor}`)).identifier?.[0]?.value, 'M-4001');

    // Rejected: the identifier removed, the Conditions from that EHR deleted, the Task rejected.
    const { identifier: _removed, ...unlinked } = await read<Patient>(`Patient/${okafor}`);
    await http.put(`/fhir/Patient/${okafor}`).set('Content-Type', FHIR_JSON).send(unlinked).expect(200);
    const pulled = await search<Condition>(`Condition?subject=Patient/${okafor}&_tag=${encodeURIComponent(`${EHR_ENDPOINT_TAG_SYSTEM}|${matching}`)}`);
    assert.deepEqual(pulled.map((c) => c.id), [condition.id]);
    for (const c of pulled) await http.delete(`/fhir/Condition/${c.id}`).expect(204);
    const task = await read<Task>(taskRef);
    await http.put(`/fhir/${taskRef}`).set('Content-Type', FHIR_JSON).send({ ...task, status: 'rejected', statusReason: { text: 'not the same person' } }).expect(200);
    const version = (await read<Patient>(`Patient/${okafor}`)).meta.versionId;

    const rejected = await pull(okafor);
    assert.equal(rejected.status, 200, JSON.stringify(rejected.body));
    const ehrUrl = `${ehrBase}/Patient/${remote.okafor}`;
    assert.deepEqual(rejected.body, {
      resourceType: 'Parameters',
      parameter: [
        link(matching, 'rejected', [
          { name: 'count', valueInteger: 1 },
          { name: 'ehrPatient', valueReference: { reference: ehrUrl } },
          { name: 'task', valueReference: { reference: taskRef } },
          { name: 'message', valueString: `The link of Patient/${okafor} to the EHR's Patient ${ehrUrl} was turned down (${taskRef} is rejected): it is not made again; give the Patient the EHR's MRN to link it` },
        ]),
      ],
    });
    assert.deepEqual(rejected.sent, ['/fhir/Patient'], 'no Conditions asked for');
    assert.equal((await read<Patient>(`Patient/${okafor}`)).meta.versionId, version);
    assert.deepEqual(await search(`Condition?subject=Patient/${okafor}`), []);
    assert.equal((await search(`Task?focus=Patient/${okafor}`)).length, 1);
  });
});

describe('demographic match rules (src/ehr/patient-link.ts)', () => {
  const who = { family: 'Castellano', given: 'Inés', birthDate: '1968-04-23', gender: 'female' };

  it('matches on the official name (else the first that is not old), a full birthDate and a gender other than unknown', () => {
    assert.deepEqual(
      demographicsOf({ resourceType: 'Patient', name: [{ use: 'old', family: 'Ruiz', given: ['Inés'] }, { family: 'Nickname' }, { use: 'official', family: ' Castellano ', given: ['Inés', 'María'] }], birthDate: '1968-04-23', gender: 'female' }),
      { demographics: who },
    );
    assert.deepEqual(demographicsOf({ resourceType: 'Patient', name: [{ use: 'old', family: 'Ruiz', given: ['Inés'] }], birthDate: '1968-04', gender: 'unknown' }), { missing: ['family', 'given', 'birthDate', 'gender'] });
    assert.deepEqual(demographicsOf({ resourceType: 'Patient', name: [{ family: 'Castellano', given: ['  '] }], birthDate: '1968-04-23', gender: 'female' }), { missing: ['given'] });
  });

  it('takes an EHR Patient with any current name equal, trimmed and case-insensitive, and the same day and gender; nothing else', () => {
    const ehr = (name: object, more: object = {}) => ({ resourceType: 'Patient' as const, name: [name], birthDate: '1968-04-23', gender: 'female' as const, ...more });
    assert.equal(sameDemographics(ehr({ family: 'CASTELLANO ', given: ['inés', 'María'] }), who), true);
    assert.equal(sameDemographics(ehr({ use: 'old', family: 'Castellano', given: ['Inés'] }), who), false);
    assert.equal(sameDemographics(ehr({ family: 'Castellanos', given: ['Inés'] }), who), false);
    assert.equal(sameDemographics(ehr({ family: 'Castellano', given: ['María', 'Inés'] }), who), false);
    assert.equal(sameDemographics(ehr({ family: 'Castellano', given: ['Ines'] }), who), false, 'accents count');
    assert.equal(sameDemographics(ehr({ family: 'Castellano', given: ['Inés'] }, { birthDate: '1968-04' }), who), false);
    assert.equal(sameDemographics(ehr({ family: 'Castellano', given: ['Inés'] }, { gender: 'other' }), who), false);
  });

  it('reads the Endpoint flag: true only for valueBoolean true; another type is a problem', () => {
    const endpoint = (flag: Extension[]): Endpoint => ({ resourceType: 'Endpoint', status: 'active', connectionType: { code: 'hl7-fhir-rest' }, payloadType: [{ text: 'FHIR R4' }], address: 'https://ehr.example.org/fhir', extension: [{ url: EHR_ENDPOINT_EXTENSION, extension: flag }] });
    assert.equal(matchByDemographicsOf(endpoint([{ url: 'matchByDemographics', valueBoolean: true }])), true);
    assert.equal(matchByDemographicsOf(endpoint([{ url: 'matchByDemographics', valueBoolean: false }])), false);
    assert.equal(matchByDemographicsOf(endpoint([])), false);
    assert.deepEqual(matchByDemographicsOf(endpoint([{ url: 'matchByDemographics', valueString: 'true' }])), {
      problem: "has a 'matchByDemographics' that is not a valueBoolean",
      expression: `Endpoint.extension('${EHR_ENDPOINT_EXTENSION}').extension('matchByDemographics')`,
    });
  });
});
