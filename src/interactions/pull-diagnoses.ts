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
 *
 * A Patient with no identifier of that system may be linked by demographic match, when the
 * Endpoint says `matchByDemographics` true (src/ehr/patient-link.ts): the MRN of the one EHR
 * Patient with the same family name, first given name, birthDate and gender is added to the
 * Patient, marked, with a Provenance and a review Task, in the transaction that stores the
 * Conditions it brings. The answer has, for each Endpoint that matches by demographics and that
 * the Patient is not linked to by identifier, a `link` parameter:
 *   endpoint (Reference)  method (code `demographic-match`)
 *   outcome (code)        linked | no-match | ambiguous | no-identifier | rejected |
 *                         already-linked | missing-demographics | endpoint-unusable
 *   count (integer)       the EHR's Patients with the same demographics (searched outcomes)
 *   missing (code, 0..*)  family | given | birthDate | gender (missing-demographics)
 *   ehrPatient (Reference), identifier (Identifier), reviewStatus (code), task (Reference),
 *   provenance (Reference), patient (Reference: ours that already has the MRN)  as they apply;
 *   message (string) the reason, in words;
 *   expression (string)   the element at fault (endpoint-unusable)
 * followed by the `outcome` parameters (action, resource) of the Conditions pulled from that EHR.
 * Only when no EHR can be asked at all (no identifier link, and no Endpoint that matches by
 * demographics both usable and with all four values of the Patient) is the answer a 422, which
 * lists each such Endpoint's reason as an issue after the first.
 */
import { randomUUID } from 'node:crypto';
import type { Condition, Endpoint, Parameters, ParametersParameter, Patient, Task } from 'fhir/r4.js';
import { isDeepStrictEqual } from 'node:util';
import { isEndpointProblem, matchByDemographicsOf, patientIdentifierSystemOf, readFhirEndpoint } from '../ehr/endpoint.js';
import {
  CONDITION_CATEGORIES,
  EhrError,
  findPatient,
  findPatientsByDemographics,
  searchConditions,
  toLocalCondition,
  type EhrConnection,
} from '../ehr/fhir-ehr.js';
import {
  demographicsOf,
  LINK_METHOD,
  linkedIdentifier,
  linkKey,
  linkProvenance,
  mrnsOf,
  PATIENT_LINK_SYSTEM,
  REJECTED_TASK_STATUSES,
  reviewTask,
  type DemographicField,
  type Demographics,
  type LinkFacts,
} from '../ehr/patient-link.js';
import { FhirError, fhirError, type Problem } from '../fhir/errors.js';
import { tokenSearchValue } from '../fhir/search-value.js';
import { parseSearch } from '../search/parse.js';
import { conditionLock, type Repository } from '../store/repository.js';
import { conditionOf } from './conditions.js';
import { outboundKeyOf, type FhirContext, type FhirRequest, type FhirResponse, type Interaction } from './types.js';

/** Where the Endpoint format lives now; exported here too for existing importers. */
export { EHR_ENDPOINT_EXTENSION } from '../ehr/endpoint.js';

type StoredEndpoint = Endpoint & { id: string };

/** An EHR the Patient is linked to by identifier. */
interface LinkedEhr {
  kind: 'identifier';
  endpoint: StoredEndpoint;
  connection: EhrConnection;
  identifier: { system: string; value: string };
}

/** An EHR to match the Patient with by demographics. */
interface MatchEhr {
  kind: 'match';
  endpoint: StoredEndpoint;
  connection: EhrConnection;
  system: string;
  demographics: Demographics;
}

/** An EHR that matches by demographics but cannot for this Patient: why, as a `link` parameter and as a problem. */
interface Unmatched {
  kind: 'unmatched';
  link: ParametersParameter;
  problem: Problem;
}

type Step = LinkedEhr | MatchEhr | Unmatched;

const FIELD_ELEMENT: Record<DemographicField, string> = { family: 'Patient.name.family', given: 'Patient.name.given', birthDate: 'Patient.birthDate', gender: 'Patient.gender' };

/**
 * What to do with each EHR for this Patient, in the Endpoints' order. Throws 422 for an Endpoint
 * the Patient is linked to by identifier but that cannot be used.
 */
async function plan(ctx: FhirContext, patientId: string, patient: Patient): Promise<Step[]> {
  const query = parseSearch('Endpoint', { 'connection-type': ['hl7-fhir-rest'], status: ['active'], _count: ['100'] }, { fhirBase: ctx.fhirBase, lenient: false }).query;
  const page = await ctx.repo.search(query);
  const out: Step[] = [];
  for (const row of page.rows) {
    const endpoint = JSON.parse(row.json) as StoredEndpoint;
    const system = patientIdentifierSystemOf(endpoint);
    if (!system) continue;
    const options = { key: await outboundKeyOf(ctx.outboundKeys, ctx.tenant, endpoint), secrets: ctx.ehrSecrets, tenant: ctx.tenant, allowHttp: ctx.allowHttpEhr ?? false, egress: ctx.ehrEgress };
    const mrn = patient.identifier?.find((i) => i.system === system && i.value);
    if (mrn?.value) {
      const found = readFhirEndpoint(endpoint, options);
      if (isEndpointProblem(found)) throw fhirError('unprocessable-operation', `Endpoint/${endpoint.id}, the EHR this Patient is linked to, ${found.problem}`, found.expression);
      out.push({ kind: 'identifier', endpoint, connection: found.connection, identifier: { system, value: mrn.value } });
      continue;
    }
    // An identifier of the system without a value links nowhere, and is not replaced by a match.
    if (patient.identifier?.some((i) => i.system === system)) continue;
    const flag = matchByDemographicsOf(endpoint);
    if (flag === false) continue;
    const found = flag === true ? readFhirEndpoint(endpoint, options) : flag;
    if (isEndpointProblem(found)) {
      const message = `Endpoint/${endpoint.id}, which matches Patients by demographics, ${found.problem}`;
      out.push({
        kind: 'unmatched',
        link: linkParameter(endpoint.id, 'endpoint-unusable', [{ name: 'message', valueString: message }, { name: 'expression', valueString: found.expression }]),
        problem: { code: 'unprocessable-operation', message, expression: found.expression },
      });
      continue;
    }
    const who = demographicsOf(patient);
    if ('missing' in who) {
      const message = `Patient/${patientId} has no ${who.missing.join(', ')} to match on (a full birthDate; gender male, female or other): not matched with the EHR of Endpoint/${endpoint.id}`;
      out.push({
        kind: 'unmatched',
        link: linkParameter(endpoint.id, 'missing-demographics', [...who.missing.map((f) => ({ name: 'missing', valueCode: f })), { name: 'message', valueString: message }]),
        problem: { code: 'unprocessable-operation', message, expression: FIELD_ELEMENT[who.missing[0] as DemographicField] },
      });
      continue;
    }
    out.push({ kind: 'match', endpoint, connection: found.connection, system, demographics: who.demographics });
  }
  return out;
}

function linkParameter(endpointId: string, outcome: string, parts: ParametersParameter[]): ParametersParameter {
  return {
    name: 'link',
    part: [{ name: 'endpoint', valueReference: { reference: `Endpoint/${endpointId}` } }, { name: 'method', valueCode: LINK_METHOD }, { name: 'outcome', valueCode: outcome }, ...parts],
  };
}

type Action = 'created' | 'updated' | 'unchanged';
interface Outcome {
  action: Action;
  reference: string;
}

/** The Patient as last read or written here (a link updates it). */
interface PatientState {
  id: string;
  versionId: string;
}

export async function pullDiagnoses(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const id = req.id as string;
  ctx.authorize?.('Patient', ['read']);
  ctx.authorize?.('Endpoint', ['search']);
  ctx.authorize?.('Condition', ['create', 'update', 'search']);
  ctx.authorize?.('Provenance', ['create']);
  const stored = await ctx.repo.read('Patient', id);
  const patient = JSON.parse(stored.json ?? '{}') as Patient;
  const steps = await plan(ctx, id, patient);
  if (!steps.some((s) => s.kind !== 'unmatched')) {
    const main: Problem = {
      code: 'unprocessable-operation',
      message: `Patient/${id} is linked to no EHR: give it an identifier of the patientIdentifierSystem of an active hl7-fhir-rest Endpoint`,
    };
    throw new FhirError('unprocessable', [main, ...steps.flatMap((s) => (s.kind === 'unmatched' ? [s.problem] : []))]);
  }
  if (steps.some((s) => s.kind === 'match')) {
    // A match looks for another Patient with the MRN, and may write the link: the MRN on the Patient, its review Task.
    ctx.authorize?.('Patient', ['update', 'search']);
    ctx.authorize?.('Task', ['create', 'search']);
  }
  const state: PatientState = { id, versionId: stored.versionId };
  const parameters: ParametersParameter[] = [];
  const outcome = (o: Outcome): ParametersParameter => ({ name: 'outcome', part: [{ name: 'action', valueCode: o.action }, { name: 'resource', valueReference: { reference: o.reference } }] });
  for (const step of steps) {
    if (step.kind === 'unmatched') {
      parameters.push(step.link);
    } else if (step.kind === 'identifier') {
      parameters.push(...(await pullLinked(ctx, id, step)).map(outcome));
    } else {
      const matched = await matchAndPull(ctx, state, step);
      parameters.push(matched.link, ...matched.outcomes.map(outcome));
    }
  }
  const answer: Parameters = { resourceType: 'Parameters', ...(parameters.length > 0 ? { parameter: parameters } : {}) };
  return { status: 200, resource: answer };
}

/** Pulls from an EHR the Patient is linked to by identifier. */
async function pullLinked(ctx: FhirContext, id: string, ehr: LinkedEhr): Promise<Outcome[]> {
  let remotes: Condition[];
  let remotePatientId: string;
  try {
    const remotePatient = await findPatient(ehr.connection, { identifier: ehr.identifier });
    if (!remotePatient?.id) throw fhirError('unprocessable-operation', `The EHR of Endpoint/${ehr.endpoint.id} has no Patient with identifier ${ehr.identifier.system}|${ehr.identifier.value}`);
    remotePatientId = remotePatient.id;
    remotes = await conditionsOf(ehr.connection, remotePatientId);
  } catch (error) {
    throw error instanceof EhrError ? ehrFailure(error, ehr.endpoint.id) : error;
  }
  return ctx.repo.transaction((tx) => storeConditions(ctx, tx, ehr.endpoint, ehr.connection, id, remotePatientId, remotes));
}

/** Every diagnosis of the EHR's Patient, each once (a Condition in both categories comes once). */
async function conditionsOf(connection: EhrConnection, remotePatientId: string): Promise<Condition[]> {
  const remotes: Condition[] = [];
  for (const category of CONDITION_CATEGORIES) remotes.push(...(await searchConditions(connection, remotePatientId, category)));
  return [...new Map(remotes.map((c) => [c.id, c])).values()];
}

/**
 * Matches the Patient with the EHR's Patients by demographics; on exactly one match with one MRN,
 * records the link and pulls its diagnoses in one transaction.
 */
async function matchAndPull(ctx: FhirContext, state: PatientState, ehr: MatchEhr): Promise<{ link: ParametersParameter; outcomes: Outcome[] }> {
  const endpointId = ehr.endpoint.id;
  const base = ehr.connection.baseUrl.replace(/\/+$/, '');
  const unlinked = (outcome: string, message: string, parts: ParametersParameter[] = []) => ({
    link: linkParameter(endpointId, outcome, [...parts, { name: 'message', valueString: message }]),
    outcomes: [],
  });
  let candidates;
  try {
    candidates = await findPatientsByDemographics(ehr.connection, ehr.demographics);
  } catch (error) {
    throw error instanceof EhrError ? ehrFailure(error, endpointId) : error;
  }
  const same = "this Patient's family name, first given name, birthDate and gender";
  const count = { name: 'count', valueInteger: candidates.length };
  if (candidates.length === 0) return unlinked('no-match', `No Patient of the EHR of Endpoint/${endpointId} has ${same}: not linked`, [count]);
  if (candidates.length > 1) {
    return unlinked('ambiguous', `${candidates.length} Patients of the EHR of Endpoint/${endpointId} have ${same}: not linked, as which one (if any) is this client cannot be told; give the Patient the EHR's MRN (${ehr.system}) to link it`, [count]);
  }
  const remote = candidates[0] as Patient;
  if (!remote.id) throw ehrFailure(new EhrError('permanent', 'unsupported-content', `a Patient from ${base} has no id`), endpointId);
  const remoteUrl = `${base}/Patient/${remote.id}`;
  const ehrPatient = { name: 'ehrPatient', valueReference: { reference: remoteUrl } };
  const mrns = mrnsOf(remote, ehr.system);
  if (mrns.length !== 1) {
    const carries = mrns.length === 0 ? 'no identifier' : `${mrns.length} different identifiers`;
    return unlinked('no-identifier', `The one Patient of the EHR of Endpoint/${endpointId} with ${same} carries ${carries} of ${ehr.system}: not linked`, [count, ehrPatient]);
  }
  const mrn = (remote.identifier ?? []).find((i) => i.system === ehr.system && i.value === mrns[0]) as LinkFacts['mrn'];
  const facts: LinkFacts = { localPatientId: state.id, endpointId, remotePatientUrl: remoteUrl, remotePatientId: remote.id, mrn, demographics: ehr.demographics };
  const taskMatch = conditionOf(ctx, 'Task', { identifier: [tokenSearchValue(PATIENT_LINK_SYSTEM, linkKey(state.id, endpointId, remote.id))] }, 'Task.identifier');
  const turnedDown = (task: Task & { id: string }) =>
    unlinked('rejected', `The link of Patient/${state.id} to the EHR's Patient ${remoteUrl} was turned down (Task/${task.id} is ${task.status}): it is not made again; give the Patient the EHR's MRN to link it`, [
      count,
      ehrPatient,
      { name: 'task', valueReference: { reference: `Task/${task.id}` } },
    ]);
  const before = await reviewTaskOf(ctx.repo, taskMatch.query);
  if (before && REJECTED_TASK_STATUSES.includes(before.status)) return turnedDown(before);
  // Another of our Patients with this MRN (a duplicate client): linking this one too would move
  // the EHR's diagnoses between the two (their copies are found by the EHR's identifiers).
  const holders = conditionOf(ctx, 'Patient', { identifier: [tokenSearchValue(mrn.system, mrn.value)] }, 'Patient.identifier');
  const holderOf = async (repo: Repository): Promise<string | undefined> => (await repo.search(holders.query)).rows.find((r) => r.id !== state.id)?.id;
  const taken = (holder: string) =>
    unlinked(
      'already-linked',
      `Patient/${holder} already carries the MRN ${mrn.system}|${mrn.value} of the EHR's Patient ${remoteUrl}: not linked, as the EHR's diagnoses would move between two Patients here; merge them, or give this Patient the MRN by hand`,
      [count, ehrPatient, { name: 'patient', valueReference: { reference: `Patient/${holder}` } }],
    );
  const holder = await holderOf(ctx.repo);
  if (holder) return taken(holder);

  let remotes: Condition[];
  try {
    remotes = await conditionsOf(ehr.connection, remote.id);
  } catch (error) {
    throw error instanceof EhrError ? ehrFailure(error, endpointId) : error;
  }
  const written = await ctx.repo.transaction(async (tx) => {
    await tx.lockResource('Patient', state.id);
    const current = await tx.read('Patient', state.id);
    if (current.versionId !== state.versionId) {
      throw fhirError('write-conflict', `Patient/${state.id} changed while it was being matched with the Patients of the EHR of Endpoint/${endpointId}; pull again`);
    }
    await tx.lockKey(conditionLock(taskMatch));
    const task = await reviewTaskOf(tx, taskMatch.query);
    if (task && REJECTED_TASK_STATUSES.includes(task.status)) return { kind: 'turned-down' as const, task };
    await tx.lockKey(conditionLock(holders));
    const holder = await holderOf(tx);
    if (holder) return { kind: 'taken' as const, holder };
    const now = new Date().toISOString();
    const taskId = task?.id ?? randomUUID();
    const reviewStatus = task?.status === 'completed' ? 'confirmed' : 'unreviewed';
    const targets: string[] = [];
    if (!task) {
      const created = await tx.create(ctx.validator.checkWrite(reviewTask(facts, now), 'Task'), undefined, taskId);
      targets.push(`Task/${taskId}/_history/${created.version.versionId}`);
    }
    const patient = JSON.parse(current.json ?? '{}') as Patient;
    const linked = { ...patient, identifier: [...(patient.identifier ?? []), linkedIdentifier(facts, taskId, reviewStatus)] };
    const { version } = await tx.update(ctx.validator.checkWrite(linked, 'Patient', state.id), state.id);
    targets.unshift(`Patient/${state.id}/_history/${version.versionId}`);
    const provenance = await tx.create(ctx.validator.checkWrite(linkProvenance(facts, targets, now, ctx.software), 'Provenance'));
    const outcomes = await storeConditions(ctx, tx, ehr.endpoint, ehr.connection, state.id, remote.id as string, remotes);
    return { kind: 'linked' as const, versionId: version.versionId, taskId, reviewStatus, provenanceId: provenance.version.id, outcomes };
  });
  if (written.kind === 'turned-down') return turnedDown(written.task);
  if (written.kind === 'taken') return taken(written.holder);
  state.versionId = written.versionId;
  return {
    link: linkParameter(endpointId, 'linked', [
      count,
      ehrPatient,
      { name: 'identifier', valueIdentifier: { system: mrn.system, value: mrn.value } },
      { name: 'reviewStatus', valueCode: written.reviewStatus },
      { name: 'task', valueReference: { reference: `Task/${written.taskId}` } },
      { name: 'provenance', valueReference: { reference: `Provenance/${written.provenanceId}` } },
      {
        name: 'message',
        valueString: `Linked to the EHR's Patient ${remoteUrl} by demographic match: its MRN ${mrn.system}|${mrn.value} was added to Patient/${state.id} (${written.reviewStatus}); review Task/${written.taskId}`,
      },
    ]),
    outcomes: written.outcomes,
  };
}

async function reviewTaskOf(repo: Repository, query: ReturnType<typeof conditionOf>['query']): Promise<(Task & { id: string }) | undefined> {
  const row = (await repo.search(query)).rows[0];
  return row ? (JSON.parse(row.json) as Task & { id: string }) : undefined;
}

/**
 * Whether the Patient `holder` (a local Condition's subject) exists and carries an identifier of
 * the Endpoint's patient system that Patient/{id} carries too: both linked to one EHR patient.
 */
async function linkedToo(tx: Repository, holder: string | undefined, id: string, endpoint: StoredEndpoint): Promise<boolean> {
  const system = patientIdentifierSystemOf(endpoint);
  const holderId = holder?.startsWith('Patient/') ? holder.slice('Patient/'.length) : undefined;
  if (!system || !holderId) return false;
  // Both in one read; a Patient deleted or never stored is absent.
  const found = new Map((await tx.readMany([{ type: 'Patient', id }, { type: 'Patient', id: holderId }])).map((v) => [v.id, JSON.parse(v.json ?? '{}') as Patient]));
  const [mine, theirs] = [found.get(id), found.get(holderId)];
  const values = new Set((mine?.identifier ?? []).filter((i) => i.system === system && i.value).map((i) => i.value));
  return (theirs?.identifier ?? []).some((i) => i.system === system && i.value !== undefined && values.has(i.value));
}

/** Stores the EHR's Conditions as local copies of Patient/{id}, with a Provenance of those that changed. */
async function storeConditions(
  ctx: FhirContext,
  tx: Repository,
  endpoint: StoredEndpoint,
  connection: EhrConnection,
  id: string,
  remotePatientId: string,
  remotes: Condition[],
): Promise<Outcome[]> {
  const results: Outcome[] = [];
  const touched: string[] = [];
  const base = connection.baseUrl.replace(/\/+$/, '');
  for (const remote of remotes) {
    const local = toLocalCondition(remote, { endpointId: endpoint.id, baseUrl: connection.baseUrl }, `Patient/${id}`);
    const key = local.identifier?.find((i) => i.system === `${base}/Condition`);
    const match = conditionOf(ctx, 'Condition', { identifier: [tokenSearchValue(key?.system ?? '', key?.value ?? '')] }, 'Condition.identifier');
    await tx.lockKey(conditionLock(match));
    const existing = (await tx.search(match.query)).rows[0];
    const holder = existing && (JSON.parse(existing.json) as Condition).subject?.reference;
    if (existing && holder !== `Patient/${id}` && (await linkedToo(tx, holder, id, endpoint))) {
      // Two local Patients linked to one EHR patient (the same MRN entered twice): the EHR's
      // diagnosis is not moved from one to the other; a person must merge or correct them. Once
      // the other is corrected (or deleted), the diagnosis moves here, below, with a Provenance.
      throw fhirError(
        'duplicate-patient-link',
        `The EHR's Condition ${key?.value ?? ''} of Endpoint/${endpoint.id} is already stored as Condition/${existing.id} of ${holder ?? 'no Patient'}, and Patient/${id} is linked to the same EHR Patient ${remotePatientId}: two Patients here carry that EHR's identifier of one person; merge or correct them, then pull again`,
        'Patient.identifier',
      );
    }
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
    await tx.create(
      ctx.validator.checkWrite(
        {
          resourceType: 'Provenance',
          target: touched.map((reference) => ({ reference })),
          recorded: new Date().toISOString(),
          activity: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation', code: 'UPDATE' }] },
          // The EHR as the author, by name (R4's Provenance.agent.who cannot refer to an Endpoint); the
          // Endpoint, with the EHR's Patient, among the sources.
          agent: [{ type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'author' }] }, who: { display: endpoint.name ?? connection.baseUrl } }],
          entity: [
            { role: 'source', what: { reference: `${base}/Patient/${remotePatientId}` } },
            { role: 'source', what: { reference: `Endpoint/${endpoint.id}` } },
          ],
        },
        'Provenance',
      ),
    );
  }
  return results;
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
