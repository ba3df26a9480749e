/**
 * POST [base]/Patient/{id}/$pull-diagnoses: fetches the patient's diagnoses (Condition, categories
 * problem-list-item and encounter-diagnosis) from every EHR the patient is linked to, and stores
 * them as local Conditions that keep the EHR's identifiers and meta.source (src/ehr/fhir-ehr.ts),
 * with a Provenance. Pulling twice changes nothing; a Condition changed in the EHR (resolved, say)
 * gets a new version here.
 *
 * EHRs are FHIR Endpoint resources of the tenant (connectionType `hl7-fhir-rest`, status active,
 * address = the EHR's FHIR base) whose extension EHR_ENDPOINT_EXTENSION says how to authenticate
 * (SMART Backend Services with the server's own key, or a static bearer token that the Endpoint
 * names by reference, `env:EHR_TOKEN_<NAME>`, and never holds; only a token bound to the request's
 * tenant is used) and the identifier system of the EHR's MRNs: src/ehr/endpoint.ts. A Patient is
 * linked to an EHR by carrying an identifier of that system; an Endpoint it is linked to but that
 * cannot be used is a 422 naming the element at fault.
 */
import type { Condition, Endpoint, Parameters, Patient, Provenance } from 'fhir/r4.js';
import { isDeepStrictEqual } from 'node:util';
import { isEndpointProblem, patientIdentifierSystemOf, readFhirEndpoint } from '../ehr/endpoint.js';
import { CONDITION_CATEGORIES, EhrError, findPatient, searchConditions, toLocalCondition, type EhrConnection } from '../ehr/fhir-ehr.js';
import { FhirError, fhirError } from '../fhir/errors.js';
import { tokenSearchValue } from '../fhir/search-value.js';
import { parseSearch } from '../search/parse.js';
import { conditionOf } from './conditions.js';
import type { FhirContext, FhirRequest, FhirResponse, Interaction } from './types.js';

/** Where the Endpoint format lives now; exported here too for existing importers. */
export { EHR_ENDPOINT_EXTENSION } from '../ehr/endpoint.js';

interface LinkedEhr {
  endpoint: Endpoint & { id: string };
  connection: EhrConnection;
  identifier: { system: string; value: string };
}

/** The EHRs the Patient is linked to; throws 422 for one that is linked but cannot be used. */
async function linkedEhrs(ctx: FhirContext, patient: Patient): Promise<LinkedEhr[]> {
  const query = parseSearch('Endpoint', { 'connection-type': ['hl7-fhir-rest'], status: ['active'], _count: ['100'] }, { fhirBase: ctx.fhirBase, lenient: false }).query;
  const page = await ctx.repo.search(query);
  const out: LinkedEhr[] = [];
  for (const row of page.rows) {
    const endpoint = JSON.parse(row.json) as Endpoint & { id: string };
    const system = patientIdentifierSystemOf(endpoint);
    const mrn = system ? patient.identifier?.find((i) => i.system === system && i.value) : undefined;
    if (!system || !mrn?.value) continue;
    const found = readFhirEndpoint(endpoint, { key: ctx.outboundKey, secrets: ctx.ehrSecrets, tenant: ctx.tenant, allowHttp: ctx.allowHttpEhr ?? false });
    if (isEndpointProblem(found)) throw fhirError('unprocessable-operation', `Endpoint/${endpoint.id}, the EHR this Patient is linked to, ${found.problem}`, found.expression);
    out.push({ endpoint, connection: found.connection, identifier: { system, value: mrn.value } });
  }
  return out;
}

type Action = 'created' | 'updated' | 'unchanged';

export async function pullDiagnoses(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const id = req.id as string;
  ctx.authorize?.('Patient', ['read']);
  ctx.authorize?.('Endpoint', ['search']);
  ctx.authorize?.('Condition', ['create', 'update', 'search']);
  ctx.authorize?.('Provenance', ['create']);
  const patient = JSON.parse((await ctx.repo.read('Patient', id)).json ?? '{}') as Patient;
  const ehrs = await linkedEhrs(ctx, patient);
  if (ehrs.length === 0) {
    throw fhirError('unprocessable-operation', `Patient/${id} is linked to no EHR: give it an identifier of the patientIdentifierSystem of an active hl7-fhir-rest Endpoint`);
  }
  const results: { action: Action; reference: string }[] = [];
  for (const ehr of ehrs) {
    let remotes: Condition[];
    let remotePatient;
    try {
      remotePatient = await findPatient(ehr.connection, { identifier: ehr.identifier });
      if (!remotePatient?.id) throw fhirError('unprocessable-operation', `The EHR of Endpoint/${ehr.endpoint.id} has no Patient with identifier ${ehr.identifier.system}|${ehr.identifier.value}`);
      remotes = [];
      for (const category of CONDITION_CATEGORIES) remotes.push(...(await searchConditions(ehr.connection, remotePatient.id, category)));
    } catch (error) {
      throw error instanceof EhrError ? ehrFailure(error, ehr.endpoint.id) : error;
    }
    // A Condition in both categories comes once.
    const unique = [...new Map(remotes.map((c) => [c.id, c])).values()];
    await ctx.repo.transaction(async (tx) => {
      const touched: string[] = [];
      for (const remote of unique) {
        const local = toLocalCondition(remote, { endpointId: ehr.endpoint.id, baseUrl: ehr.connection.baseUrl }, `Patient/${id}`);
        const key = local.identifier?.find((i) => i.system === `${ehr.connection.baseUrl.replace(/\/+$/, '')}/Condition`);
        const match = conditionOf(ctx, 'Condition', { identifier: [tokenSearchValue(key?.system ?? '', key?.value ?? '')] }, 'Condition.identifier');
        await tx.lockKey(match.lockKey);
        const existing = (await tx.search(match.query)).rows[0];
        if (existing && isDeepStrictEqual(withoutServerMeta(JSON.parse(existing.json) as Condition), withoutServerMeta(local))) {
          results.push({ action: 'unchanged', reference: `Condition/${existing.id}` });
          continue;
        }
        const resource = ctx.validator.checkWrite({ ...local, ...(existing ? { id: existing.id } : {}) }, 'Condition', existing?.id);
        const { created, version } = existing ? await tx.update(resource, existing.id) : await tx.create(resource);
        results.push({ action: created ? 'created' : 'updated', reference: `Condition/${version.id}` });
        touched.push(`Condition/${version.id}`);
      }
      if (touched.length > 0) {
        const provenance: Provenance = {
          resourceType: 'Provenance',
          target: touched.map((reference) => ({ reference })),
          recorded: new Date().toISOString(),
          activity: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation', code: 'UPDATE' }] },
          agent: [{ type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'author' }] }, who: { reference: `Endpoint/${ehr.endpoint.id}`, display: ehr.endpoint.name ?? ehr.connection.baseUrl } }],
          entity: [{ role: 'source', what: { reference: `${ehr.connection.baseUrl.replace(/\/+$/, '')}/Patient/${remotePatient.id}` } }],
        };
        await tx.create(ctx.validator.checkWrite(provenance, 'Provenance'));
      }
    });
  }
  const parameters: Parameters = {
    resourceType: 'Parameters',
    parameter: results.map((r) => ({ name: 'outcome', part: [{ name: 'action', valueCode: r.action }, { name: 'resource', valueReference: { reference: r.reference } }] })),
  };
  return { status: 200, resource: parameters };
}

/** The EHR's failure, for our caller: 502 (the EHR refused or failed) or 504-like transient as 503. */
function ehrFailure(error: EhrError, endpointId: string): FhirError {
  const code = error.kind === 'transient' ? 'ehr-unavailable' : 'ehr-refused';
  return fhirError(code, `The EHR of Endpoint/${endpointId} ${error.kind === 'transient' ? 'could not be reached or failed; retry later' : 'refused the request'}: ${error.message}`);
}

function withoutServerMeta(c: Condition): unknown {
  const { id: _id, meta, ...rest } = c;
  return { ...rest, source: meta?.source, tag: meta?.tag, security: meta?.security };
}

export const pullDiagnosesOperation: Interaction = {
  code: 'operation',
  level: 'instance',
  method: 'POST',
  path: '/Patient/:id/$pull-diagnoses',
  resourceType: 'Patient',
  operation: 'pull-diagnoses',
  body: 'none',
  handle: pullDiagnoses,
};
