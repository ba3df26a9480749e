/**
 * batch and transaction: https://hl7.org/fhir/R4/http.html#transaction
 * POST [base] with a Bundle of type `batch` or `transaction`; the answer is a `batch-response` or
 * `transaction-response` Bundle with one entry per request entry, in the request's order.
 *
 * Entries: POST `Type` (create; `request.ifNoneExist`: conditional create), PUT `Type/id` (update,
 * create-on-update; `request.ifMatch`) and PUT `Type?criteria` (conditional update), DELETE
 * `Type/id` and `Type?criteria` (conditional delete), PATCH `Type/id` and `Type?criteria` with a
 * `Binary` holding a JSON Patch or a FHIRPath Patch `Parameters`, GET and HEAD `Type/id`
 * (read), `Type/id/_history/vid` (vread) and `Type?params` (search).
 *
 * The whole Bundle is checked first (the request of every entry, then every resource against the
 * R4 schema and our rules, with each problem's expression inside the Bundle:
 * `Bundle.entry[3].resource.subject.reference`).
 *
 * transaction (https://hl7.org/fhir/R4/http.html#trules): all or nothing, in ONE database
 * transaction (`repo.transaction`), retried as a whole when it conflicts with a concurrent writer.
 *  1. DELETE entries (conditional deletes resolved here).
 *  2. Identities: every POST gets its id (assigned before the database transaction), a conditional
 *     create whose `ifNoneExist` matches maps its fullUrl to the match (and creates nothing), a
 *     conditional update or patch maps to its match; `fullUrl` (urn:uuid:… or a URL) → `Type/id`.
 *  3. References: conditional references (`Patient?identifier=…`, anywhere in any resource) are
 *     resolved, first against the conditional creates and updates of the Bundle with the same
 *     criteria, then in the database (exactly one match, else 412); then every `reference` equal to
 *     a mapped fullUrl, and every other string exactly equal to a mapped `urn:uuid:` (uri and
 *     canonical values), is rewritten to `Type/id`. A `urn:uuid:` reference that is no entry's
 *     fullUrl is an error.
 *  4. POST, then 5. PUT and PATCH (in Bundle order), then 6. GET and HEAD (they see the writes).
 * Any failing entry fails the transaction: its error (with its own status) is the answer, its
 * expression naming the entry. Two entries acting on the same resource are refused (400).
 * A conditional create's lock (repo.create) is held to the commit, so concurrent transactions
 * creating "the same" resource create it once; when the match found under the lock is not the one
 * the references were rewritten to, the transaction is re-run.
 *
 * batch: each entry on its own, in its own database transaction, in Bundle order; a failure gives
 * that entry a status and an OperationOutcome and the others go on. Entries may not refer to each
 * other, and conditional references are not resolved (422).
 *
 * Not supported: `Prefer: return=minimal|OperationOutcome` per entry (the HTTP adapter does not pass
 * Prefer to interactions), `ifNoneMatch` and `ifModifiedSince`, history, operations and other
 * servers' URLs in entries, relative references resolved against a fullUrl's base.
 */
import { randomUUID } from 'node:crypto';
import type { Bundle, BundleEntry } from 'fhir/r4.js';
import { ERROR_CODES } from '../fhir/error-codes.js';
import { FhirError, fhirError, outcomeOf, toFhirError, type ErrorCategory, type Problem } from '../fhir/errors.js';
import { parseReference } from '../fhir/reference.js';
import { ID_PATTERN, isResourceType } from '../fhir/resource-types.js';
import type { JsonResource } from '../fhir/resource.js';
import { applyFhirPathPatch, applyJsonPatch, type PatchResult } from '../patch/index.js';
import { parseSearch } from '../search/parse.js';
import type { SearchQuery, SearchWarning } from '../search/query.js';
import type { Condition, Repository, StoredVersion } from '../store/repository.js';
import { conditionOf, queryParams } from './conditions.js';
import { locationOf } from './params.js';
import { runSearch } from './search.js';
import { authorizeJoins, type Access, type FhirContext, type FhirRequest, type FhirResponse, type Interaction } from './types.js';

/** At most this many entries in one batch or transaction. */
export const MAX_ENTRIES = 10_000;

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH'] as const;
type Method = (typeof METHODS)[number];

type Json = Record<string, unknown>;

/** One entry, checked and parsed, before anything is read or written. */
interface Plan {
  index: number;
  /** `Bundle.entry[i]`, the start of every expression about this entry. */
  at: string;
  method: Method;
  type: string;
  /** Instance-level entries. */
  id?: string;
  /** vread. */
  versionId?: string;
  /** Criteria of a conditional PUT, DELETE or PATCH, or a POST's ifNoneExist. */
  condition?: Condition;
  /** GET/HEAD on the type: a search. */
  search?: { query: SearchQuery; params: Record<string, string[]>; warnings: SearchWarning[] };
  fullUrl?: string;
  /** The resource of a POST or PUT, the patch document of a PATCH. */
  resource?: JsonResource;
  ifMatch?: string;
  /** The id a POST creates with (kept when a transaction is re-run). */
  newId?: string;
}

/** Thrown to have repo.transaction re-run the whole transaction (SQLSTATE serialization_failure). */
class RerunTransaction extends Error {
  readonly code = '40001';
}

export async function processBundle(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const bundle = checkBundle(req.body);
  const entries = (bundle.entry ?? []) as unknown[];
  const problems = entryProblems(ctx, bundle, bundle.type === 'transaction');
  const entryOut = bundle.type === 'transaction' ? await transaction(ctx, entries, problems) : await batch(ctx, entries, problems);
  const response: Bundle = { resourceType: 'Bundle', id: randomUUID(), type: bundle.type === 'transaction' ? 'transaction-response' : 'batch-response' };
  // Prefer: return=minimal leaves the written resources out of the response entries.
  if (req.returnPreference === 'minimal') for (const e of entryOut) if (e.response?.location) delete e.resource;
  if (entryOut.length > 0) response.entry = entryOut;
  return { status: 200, resource: response };
}

export const bundleInteraction: Interaction = { code: 'transaction', level: 'system', method: 'POST', path: '/', handle: processBundle };

// ---------------------------------------------------------------------------------------------
// Checking the Bundle

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function checkBundle(body: unknown): Json & { type: 'batch' | 'transaction'; entry?: unknown } {
  if (!isObject(body)) throw fhirError('not-a-resource', 'The body must be a JSON object holding a Bundle of type batch or transaction');
  if (typeof body.resourceType !== 'string') throw fhirError('resource-type-missing', 'The body has no resourceType', 'resourceType');
  if (body.resourceType !== 'Bundle') {
    throw fhirError('resource-type-mismatch', `POST [base] takes a Bundle of type batch or transaction; the body is a ${body.resourceType}`, 'resourceType');
  }
  if (body.type !== 'batch' && body.type !== 'transaction') {
    const what = body.type === undefined ? 'Bundle.type is missing' : `Bundle.type is ${JSON.stringify(body.type)}`;
    throw fhirError('unsupported-bundle-type', `${what}: POST [base] processes Bundles of type batch or transaction only`, 'Bundle.type');
  }
  if (body.entry !== undefined && !Array.isArray(body.entry)) throw fhirError('invalid-bundle-entry', 'Bundle.entry must be an array of entries', 'Bundle.entry');
  const count = Array.isArray(body.entry) ? body.entry.length : 0;
  if (count > MAX_ENTRIES) {
    throw fhirError('too-many-entries', `The Bundle has ${count} entries; at most ${MAX_ENTRIES} are processed in one batch or transaction`, 'Bundle.entry');
  }
  return body as Json & { type: 'batch' | 'transaction' };
}

/**
 * Every problem of the Bundle against the R4 schema and our rules, by entry index. Problems
 * outside the entries fail the whole request. In a transaction, conditional references are
 * allowed (they are resolved).
 */
function entryProblems(ctx: FhirContext, bundle: Json, isTransaction: boolean): Map<number, Problem[]> {
  const byEntry = new Map<number, Problem[]>();
  const outside: Problem[] = [];
  for (const problem of ctx.validator.problems(bundle as JsonResource)) {
    if (isTransaction && problem.code === 'conditional-reference-outside-transaction') continue;
    const m = /^Bundle\.entry\[(\d+)\]/.exec(problem.expression ?? '');
    if (!m) outside.push(problem);
    else {
      const i = Number(m[1]);
      byEntry.set(i, [...(byEntry.get(i) ?? []), problem]);
    }
  }
  if (outside.length > 0) throw new FhirError('unprocessable', outside);
  return byEntry;
}

/** Parses entry `index` into a Plan; throws a FhirError whose expressions name the entry. */
function planEntry(ctx: FhirContext, raw: unknown, index: number): Plan {
  const at = `Bundle.entry[${index}]`;
  if (!isObject(raw)) throw fhirError('invalid-bundle-entry', `${at} is not an object`, at);
  const request = raw.request;
  if (!isObject(request)) {
    throw fhirError('invalid-bundle-entry', `${at} has no request: each entry of a batch or transaction says what to do in request.method and request.url`, `${at}.request`);
  }
  const method = request.method;
  if (typeof method !== 'string' || !(METHODS as readonly string[]).includes(method)) {
    throw fhirError('invalid-bundle-entry', `${at}.request.method must be one of ${METHODS.join(', ')}`, `${at}.request.method`);
  }
  if (typeof request.url !== 'string' || request.url === '') throw fhirError('invalid-bundle-entry', `${at}.request.url is missing`, `${at}.request.url`);
  const url = parseEntryUrl(ctx, request.url, `${at}.request.url`);
  const plan: Plan = { index, at, method: method as Method, type: url.type };
  if (typeof raw.fullUrl === 'string') plan.fullUrl = raw.fullUrl;
  const urlWhere = `${at}.request.url`;
  const shapeError = (expected: string) => fhirError('invalid-bundle-entry', `${method} ${request.url as string}: a ${method} entry's url must be ${expected}`, urlWhere);

  const conditional = url.id === undefined && url.query !== undefined;
  switch (plan.method) {
    case 'POST':
      if (url.id !== undefined || url.query !== undefined) throw shapeError('the resource type alone (Type)');
      break;
    case 'PUT':
    case 'DELETE':
    case 'PATCH':
      if (url.versionId !== undefined || (url.id !== undefined && url.query !== undefined) || (url.id === undefined && (url.query ?? '') === '')) {
        throw shapeError('Type/id or Type?criteria');
      }
      break;
    case 'GET':
    case 'HEAD':
      break;
  }
  if (url.id !== undefined) plan.id = url.id;
  if (url.versionId !== undefined) plan.versionId = url.versionId;

  // The resource: required for POST, PUT and PATCH, ignored otherwise.
  if (plan.method === 'POST' || plan.method === 'PUT' || plan.method === 'PATCH') {
    const resource = raw.resource;
    if (!isObject(resource)) throw fhirError('invalid-bundle-entry', `A ${method} entry must carry its resource in ${at}.resource`, `${at}.resource`);
    if (typeof resource.resourceType !== 'string') throw fhirError('resource-type-missing', 'The resource has no resourceType', `${at}.resource.resourceType`);
    if (plan.method === 'PATCH') {
      if (resource.resourceType !== 'Binary' && resource.resourceType !== 'Parameters') {
        throw fhirError('invalid-bundle-entry', `A PATCH entry's resource must be a Binary holding a JSON Patch or a FHIRPath Patch Parameters, not a ${resource.resourceType}`, `${at}.resource.resourceType`);
      }
    } else {
      if (resource.resourceType !== plan.type) {
        throw fhirError('resource-type-mismatch', `The resource is a ${resource.resourceType} but request.url names ${plan.type}`, `${at}.resource.resourceType`);
      }
      if (plan.method === 'PUT' && plan.id !== undefined) {
        if (resource.id === undefined) throw fhirError('id-missing', `An update must carry the id; expected "id": "${plan.id}"`, `${at}.resource.id`);
        if (resource.id !== plan.id) throw fhirError('id-mismatch', `The resource has id ${JSON.stringify(resource.id)} but request.url names '${plan.id}'`, `${at}.resource.id`);
      }
    }
    plan.resource = resource as JsonResource;
  }

  if (typeof request.ifMatch === 'string' && (plan.method === 'PUT' || plan.method === 'DELETE' || plan.method === 'PATCH')) {
    const m = /^(?:W\/)?"([A-Za-z0-9\-.]{1,64})"$/.exec(request.ifMatch.trim());
    if (!m?.[1]) throw fhirError('invalid-if-match', `ifMatch must be an ETag such as W/"3"; got '${request.ifMatch}'`, `${at}.request.ifMatch`);
    plan.ifMatch = m[1];
  }

  try {
    if (plan.method === 'POST' && typeof request.ifNoneExist === 'string') {
      // The criteria alone ("identifier=…"); "Patient?identifier=…" and "?identifier=…" are accepted too.
      const criteria = request.ifNoneExist.replace(new RegExp(`^(?:${plan.type})?\\?`), '');
      plan.condition = conditionOf(ctx, plan.type, queryParams(criteria), `${at}.request.ifNoneExist`);
    } else if (conditional && plan.method !== 'GET' && plan.method !== 'HEAD') {
      plan.condition = conditionOf(ctx, plan.type, queryParams(url.query ?? ''), urlWhere);
    } else if ((plan.method === 'GET' || plan.method === 'HEAD') && url.id === undefined) {
      const params = queryParams(url.query ?? '');
      plan.search = { ...parseSearch(plan.type, params, { fhirBase: ctx.fhirBase, lenient: false }), params };
      authorizeJoins(ctx, plan.search.query);
    }
    ctx.authorize?.(plan.type, accessOf(plan, url.id !== undefined));
  } catch (error) {
    throw anchored(error, plan);
  }
  return plan;
}

/** What an entry does, in scope terms (a conditional write searches too). */
function accessOf(plan: Plan, hasId: boolean): Access[] {
  const searches = plan.condition !== undefined ? (['search'] as const) : [];
  switch (plan.method) {
    case 'GET':
    case 'HEAD':
      return hasId ? ['read'] : ['search'];
    case 'POST':
      return ['create', ...searches];
    case 'PUT':
    case 'PATCH':
      return ['update', ...searches];
    case 'DELETE':
      return ['delete', ...searches];
  }
}

/** `request.url`: relative to the base (or absolute on this server): Type, Type/id, Type/id/_history/vid, each with an optional query. */
function parseEntryUrl(ctx: FhirContext, url: string, where: string): { type: string; id?: string; versionId?: string; query?: string } {
  let rest = url;
  if (rest.startsWith(`${ctx.fhirBase}/`)) rest = rest.slice(ctx.fhirBase.length + 1);
  else if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(rest)) {
    throw fhirError('invalid-bundle-entry', `'${url}' is not on this server: give request.url relative to the base, such as Patient/123`, where);
  }
  rest = rest.replace(/^\//, '');
  const q = rest.indexOf('?');
  const path = q < 0 ? rest : rest.slice(0, q);
  const segments = path.split('/');
  const [type = '', id, history, versionId] = segments;
  if (!isResourceType(type)) {
    if (/^[A-Z][A-Za-z]*$/.test(type)) throw fhirError('unknown-resource-type', `'${type}' is not an R4 resource type`, where);
    throw fhirError('invalid-bundle-entry', `'${url}' is not supported in a Bundle entry: use Type, Type/id, Type/id/_history/vid or Type?criteria`, where);
  }
  const query = q < 0 ? undefined : rest.slice(q + 1);
  const out = { type, ...(query !== undefined ? { query } : {}) };
  if (id === undefined) return out;
  const shapeOk = segments.length === 2 || (segments.length === 4 && history === '_history');
  if (!shapeOk || id.startsWith('_') || id.startsWith('$')) {
    throw fhirError('invalid-bundle-entry', `'${url}' is not supported in a Bundle entry: use Type, Type/id, Type/id/_history/vid or Type?criteria`, where);
  }
  if (!ID_PATTERN.test(id)) throw fhirError('invalid-id', `'${id}' is not a valid id: 1 to 64 letters, digits, '-' and '.'`, where);
  if (versionId === undefined) return { ...out, id };
  if (!ID_PATTERN.test(versionId)) throw fhirError('invalid-id', `'${versionId}' is not a valid version id`, where);
  return { ...out, id, versionId };
}

/**
 * The error with every expression inside the Bundle: `Patient.name[0]` → `Bundle.entry[3].resource.name[0]`,
 * `If-Match` → `Bundle.entry[3].request.ifMatch`, a search parameter → `Bundle.entry[3].request.url`,
 * none → `Bundle.entry[3]`. Anything that is not a FhirError is passed on (500).
 */
function anchored(error: unknown, plan: Pick<Plan, 'at' | 'type' | 'resource'>): unknown {
  if (!(error instanceof FhirError)) return error;
  const roots = [plan.type, plan.resource?.resourceType].filter((t): t is string => typeof t === 'string' && t !== '');
  const where = (expression: string | undefined): string => {
    if (expression === undefined) return plan.at;
    if (expression.startsWith('Bundle.entry[')) return expression;
    for (const root of roots) {
      if (expression === root || expression.startsWith(`${root}.`) || expression.startsWith(`${root}[`)) return `${plan.at}.resource${expression.slice(root.length)}`;
    }
    if (expression === 'resourceType') return `${plan.at}.resource.resourceType`;
    if (expression === 'If-Match') return `${plan.at}.request.ifMatch`;
    if (expression === 'If-None-Exist') return `${plan.at}.request.ifNoneExist`;
    return `${plan.at}.request.url`;
  };
  return new FhirError(
    error.category,
    error.problems.map((p) => ({ ...p, expression: where(p.expression) })),
    error.headers,
  );
}

/** The first request-level error (400s first, as for a single write), else all resource problems at once (422). */
function combined(errors: [FhirError, ...FhirError[]]): FhirError {
  const request = errors.find((e) => e.category !== 'unprocessable');
  return request ?? new FhirError('unprocessable', errors.flatMap((e) => e.problems));
}

// ---------------------------------------------------------------------------------------------
// References

/**
 * Rewrites the references of resources: mapped fullUrls to `Type/id`, conditional references to
 * their one match. In a batch nothing is mapped and a reference to another entry is an error.
 */
class References {
  /** fullUrl → Type/id. */
  readonly byFullUrl = new Map<string, string>();
  /** Criteria (Condition.lockKey) of the Bundle's conditional creates and updates → Type/id. */
  readonly byCriteria = new Map<string, string>();
  private readonly conditional = new Map<string, string>();

  constructor(
    private readonly ctx: FhirContext,
    private readonly tx: Repository,
    /** In a batch: the fullUrls of all entries (none may be referred to). */
    private readonly batchFullUrls?: Set<string>,
  ) {}

  /** Resolves the conditional references found in `resource` (transaction only). */
  async resolveConditional(resource: JsonResource, root: string): Promise<void> {
    if (this.batchFullUrls) return;
    const found = new Map<string, string>();
    walk(resource, root, (value, key, path) => {
      if (key === 'reference' && !this.conditional.has(value) && !found.has(value)) {
        const shape = parseReference(value);
        if (!('error' in shape) && shape.kind === 'conditional') found.set(value, path);
      }
      return undefined;
    });
    for (const [reference, where] of found) {
      const shape = parseReference(reference) as { resourceType: string; query: string };
      const condition = conditionOf(this.ctx, shape.resourceType, queryParams(shape.query), where);
      const inBundle = this.byCriteria.get(condition.lockKey);
      if (inBundle) {
        this.conditional.set(reference, inBundle);
        continue;
      }
      try {
        const match = await this.tx.resolveCondition(condition, where);
        this.conditional.set(reference, `${match.resourceType}/${match.id}`);
      } catch (error) {
        if (!(error instanceof FhirError)) throw error;
        throw new FhirError(
          error.category,
          error.problems.map((p) => ({ ...p, message: `Conditional reference '${reference}': ${p.message}` })),
        );
      }
    }
  }

  /** Rewrites `resource` in place; conditional references must have been resolved. */
  rewrite(resource: JsonResource, root: string): void {
    walk(resource, root, (value, key, path) => {
      if (key === 'reference') {
        if (this.batchFullUrls) {
          if (this.batchFullUrls.has(value)) {
            throw fhirError('bundle-reference-unresolved', `'${value}' is the fullUrl of another entry; entries of a batch are independent (use a transaction)`, path);
          }
          return undefined;
        }
        const target = this.byFullUrl.get(value) ?? this.conditional.get(value);
        if (target !== undefined) return target;
        if (value.startsWith('urn:uuid:')) throw fhirError('bundle-reference-unresolved', `'${value}' is not the fullUrl of any entry of the transaction`, path);
        return undefined;
      }
      // uri and canonical values that name an entry by its urn:uuid
      if (!this.batchFullUrls && value.startsWith('urn:uuid:')) return this.byFullUrl.get(value);
      return undefined;
    });
  }
}

/** Visits every string (with its key, or undefined in an array) and replaces it when `visit` returns a string. */
function walk(node: unknown, path: string, visit: (value: string, key: string | undefined, path: string) => string | undefined): void {
  if (Array.isArray(node)) {
    node.forEach((v, i) => {
      const p = `${path}[${i}]`;
      if (typeof v === 'string') {
        const replaced = visit(v, undefined, p);
        if (replaced !== undefined) node[i] = replaced;
      } else walk(v, p, visit);
    });
    return;
  }
  if (!isObject(node)) return;
  for (const [key, value] of Object.entries(node)) {
    const p = `${path}.${key}`;
    if (typeof value === 'string') {
      const replaced = visit(value, key, p);
      if (replaced !== undefined) node[key] = replaced;
    } else walk(value, p, visit);
  }
}

// ---------------------------------------------------------------------------------------------
// transaction

async function transaction(ctx: FhirContext, entries: unknown[], problems: Map<number, Problem[]>): Promise<BundleEntry[]> {
  const plans: Plan[] = [];
  const errors: FhirError[] = [];
  entries.forEach((raw, i) => {
    try {
      plans.push(planEntry(ctx, raw, i));
    } catch (error) {
      if (!(error instanceof FhirError)) throw error;
      errors.push(error);
    }
  });
  for (const list of problems.values()) errors.push(new FhirError('unprocessable', list));
  if (errors.length > 0) throw combined(errors as [FhirError, ...FhirError[]]);

  // The same resource twice, or the same fullUrl twice: refused before anything is done.
  const fullUrls = new Map<string, number>();
  const instances = new Map<string, number>();
  for (const p of plans) {
    if (p.fullUrl !== undefined) {
      const other = fullUrls.get(p.fullUrl);
      if (other !== undefined) throw fhirError('duplicate-bundle-entry', `Bundle.entry[${other}] and ${p.at} have the same fullUrl ${p.fullUrl}`, `${p.at}.fullUrl`);
      fullUrls.set(p.fullUrl, p.index);
    }
    if (p.id !== undefined && (p.method === 'PUT' || p.method === 'DELETE' || p.method === 'PATCH')) {
      const key = `${p.type}/${p.id}`;
      const other = instances.get(key);
      if (other !== undefined) throw fhirError('duplicate-bundle-entry', `Bundle.entry[${other}] and ${p.at} both act on ${key}`, p.at);
      instances.set(key, p.index);
    }
    if (p.method === 'POST') p.newId = randomUUID();
  }
  return ctx.repo.transaction((tx) => runTransaction(ctx, tx, plans, instances));
}

/** One attempt at the transaction, on `tx`; everything it does commits together or not at all. */
async function runTransaction(ctx: FhirContext, tx: Repository, plans: Plan[], staticInstances: Map<string, number>): Promise<BundleEntry[]> {
  const txCtx: FhirContext = { ...ctx, repo: tx };
  const out: BundleEntry[] = new Array<BundleEntry>(plans.length);
  const touched = new Map(staticInstances);
  const touch = (p: Plan, key: string): void => {
    const other = touched.get(key);
    if (other !== undefined && other !== p.index) throw fhirError('duplicate-bundle-entry', `Bundle.entry[${other}] and ${p.at} both act on ${key}`, p.at);
    touched.set(key, p.index);
  };
  const refs = new References(ctx, tx);
  // Each attempt works on its own copies: a re-run starts from the resources as sent.
  const resources = new Map<number, JsonResource>();
  for (const p of plans) if (p.resource) resources.set(p.index, structuredClone(p.resource));
  /** Type/id each entry acts on, once known. */
  const targets = new Map<number, string>();
  const createdIds = new Set(plans.filter((p) => p.newId !== undefined).map((p) => `${p.type}/${p.newId}`));
  const step = async <T>(p: Plan, work: () => Promise<T>): Promise<T> => {
    try {
      return await work();
    } catch (error) {
      throw anchored(error, p);
    }
  };
  const byMethod = (...methods: Method[]) => plans.filter((p) => methods.includes(p.method));

  // 1. DELETE
  for (const p of byMethod('DELETE')) {
    out[p.index] = await step(p, async () => {
      if (p.id !== undefined) return deleteEntry(await tx.delete(p.type, p.id, p.ifMatch));
      const deleted = await tx.conditionalDelete(p.condition as Condition);
      if (deleted) touch(p, `${deleted.resourceType}/${deleted.id}`);
      return deleteEntry(deleted);
    });
  }

  // 2. Identities
  for (const p of plans) {
    await step(p, async () => {
      let target: string | undefined;
      if (p.method === 'POST') {
        target = `${p.type}/${p.newId as string}`;
        if (p.condition) {
          const earlier = refs.byCriteria.get(p.condition.lockKey);
          if (earlier) target = earlier;
          else {
            const rows = (await tx.search(p.condition.query)).rows;
            if (rows.length > 1) throw fhirError('multiple-matches', `ifNoneExist matched more than one ${p.type}`, `${p.at}.request.ifNoneExist`);
            if (rows[0]) target = `${p.type}/${rows[0].id}`;
          }
          refs.byCriteria.set(p.condition.lockKey, target);
        }
      } else if ((p.method === 'PUT' || p.method === 'PATCH') && p.id !== undefined) {
        target = `${p.type}/${p.id}`;
      } else if ((p.method === 'PUT' || p.method === 'PATCH') && p.condition) {
        const rows = (await tx.search(p.condition.query)).rows;
        if (rows.length > 1) throw fhirError('multiple-matches', `The conditional ${p.method === 'PUT' ? 'update' : 'patch'} matched more than one ${p.type}`, `${p.at}.request.url`);
        const resource = resources.get(p.index) as JsonResource;
        if (p.method === 'PATCH') {
          if (!rows[0]) throw fhirError('resource-not-found', `The conditional patch matched no ${p.type}`, `${p.at}.request.url`);
          target = `${p.type}/${rows[0].id}`;
        } else {
          const given = typeof resource.id === 'string' ? resource.id : undefined;
          if (rows[0] && given !== undefined && given !== rows[0].id) {
            throw fhirError('id-mismatch', `The resource's id ${given} differs from the id of the match (${rows[0].id})`, `${p.at}.resource.id`);
          }
          const id = rows[0]?.id ?? given ?? randomUUID();
          resource.id = id;
          target = `${p.type}/${id}`;
          refs.byCriteria.set(p.condition.lockKey, target);
        }
        touch(p, target);
      }
      if (target === undefined) return;
      targets.set(p.index, target);
      if (p.fullUrl !== undefined) refs.byFullUrl.set(p.fullUrl, target);
    });
  }

  // 3. References of every resource written by POST and PUT
  for (const p of byMethod('POST', 'PUT')) {
    await step(p, async () => {
      const resource = resources.get(p.index) as JsonResource;
      await refs.resolveConditional(resource, `${p.at}.resource`);
      refs.rewrite(resource, `${p.at}.resource`);
    });
  }

  // 4. POST: plain creates together, a few statements for all of them (their ids are new);
  // conditional creates one by one, each under the lock of its criteria.
  const plain = byMethod('POST').filter((p) => p.condition === undefined && p.newId !== undefined);
  const first = plain[0];
  if (first) {
    const versions = await step(first, () => tx.createMany(plain.map((p) => ({ resource: resources.get(p.index) as JsonResource, id: p.newId as string }))));
    plain.forEach((p, i) => (out[p.index] = writeEntry(ctx, versions[i] as StoredVersion, 201)));
  }
  const inPlain = new Set(plain);
  for (const p of byMethod('POST').filter((q) => !inPlain.has(q))) {
    out[p.index] = await step(p, async () => {
      const { created, version } = await tx.create(resources.get(p.index) as JsonResource, p.condition, p.newId);
      const key = `${version.resourceType}/${version.id}`;
      if (p.condition && key !== targets.get(p.index)) {
        // The match under the lock is not the one the references were rewritten to.
        if (createdIds.has(key)) {
          throw fhirError('duplicate-bundle-entry', `ifNoneExist matches ${key}, which another entry of this transaction creates`, `${p.at}.request.ifNoneExist`);
        }
        throw new RerunTransaction(`a concurrent transaction created the match of ${p.at}.request.ifNoneExist`);
      }
      return writeEntry(ctx, version, created ? 201 : 200);
    });
  }

  // 5. PUT and PATCH
  for (const p of byMethod('PUT', 'PATCH')) {
    out[p.index] = await step(p, async () => {
      if (p.method === 'PATCH') return patchEntry(ctx, tx, p, targets.get(p.index) as string, refs);
      const resource = resources.get(p.index) as JsonResource;
      if (p.id !== undefined) {
        const { created, version } = await tx.update(resource, p.id, p.ifMatch);
        if (created) ctx.authorize?.(p.type, ['create']);
        return writeEntry(ctx, version, created ? 201 : 200);
      }
      try {
        const { created, version } = await tx.conditionalUpdate(resource, p.condition as Condition);
        if (created) ctx.authorize?.(p.type, ['create']);
        return writeEntry(ctx, version, created ? 201 : 200);
      } catch (error) {
        // The match changed since step 2 (a concurrent writer): re-run with the new state.
        if (p.resource?.id === undefined && error instanceof FhirError && error.problems[0]?.code === 'id-mismatch') throw new RerunTransaction('the conditional update matched another resource');
        throw error;
      }
    });
  }

  // 6. GET and HEAD, which see the writes
  for (const p of byMethod('GET', 'HEAD')) out[p.index] = await step(p, () => readEntry(txCtx, p));
  return out;
}

// ---------------------------------------------------------------------------------------------
// batch

async function batch(ctx: FhirContext, entries: unknown[], problems: Map<number, Problem[]>): Promise<BundleEntry[]> {
  const fullUrls = new Set(entries.flatMap((e) => (isObject(e) && typeof e.fullUrl === 'string' ? [e.fullUrl] : [])));
  const out: BundleEntry[] = [];
  for (const [index, raw] of entries.entries()) {
    let plan: Pick<Plan, 'at' | 'type' | 'resource'> = { at: `Bundle.entry[${index}]`, type: '' };
    try {
      const p = planEntry(ctx, raw, index);
      plan = p;
      const list = problems.get(index);
      if (list) throw new FhirError('unprocessable', list);
      out.push(await ctx.repo.transaction((tx) => batchEntry(ctx, tx, p, fullUrls)));
    } catch (error) {
      const e = toFhirError(anchored(error, plan));
      out.push({ response: { status: statusLine(e.status), outcome: outcomeOf(e) } });
    }
  }
  return out;
}

/** One batch entry, in its own database transaction. */
async function batchEntry(ctx: FhirContext, tx: Repository, p: Plan, fullUrls: Set<string>): Promise<BundleEntry> {
  const refs = new References(ctx, tx, new Set([...fullUrls].filter((u) => u !== p.fullUrl)));
  switch (p.method) {
    case 'DELETE':
      return deleteEntry(p.id !== undefined ? await tx.delete(p.type, p.id, p.ifMatch) : await tx.conditionalDelete(p.condition as Condition));
    case 'POST':
    case 'PUT': {
      const resource = structuredClone(p.resource as JsonResource);
      refs.rewrite(resource, `${p.at}.resource`);
      const { created, version } =
        p.method === 'POST'
          ? await tx.create(resource, p.condition)
          : p.id !== undefined
            ? await tx.update(resource, p.id, p.ifMatch)
            : await tx.conditionalUpdate(resource, p.condition as Condition);
      // An update that creates is a create: the caller needs that too (the entry's own transaction rolls back).
      if (created) ctx.authorize?.(p.type, ['create']);
      return writeEntry(ctx, version, created ? 201 : 200);
    }
    case 'PATCH': {
      let target = `${p.type}/${p.id ?? ''}`;
      if (p.id === undefined) {
        const rows = (await tx.search((p.condition as Condition).query)).rows;
        if (rows.length > 1) throw fhirError('multiple-matches', `The conditional patch matched more than one ${p.type}`, `${p.at}.request.url`);
        if (!rows[0]) throw fhirError('resource-not-found', `The conditional patch matched no ${p.type}`, `${p.at}.request.url`);
        target = `${p.type}/${rows[0].id}`;
      }
      return patchEntry(ctx, tx, p, target, refs);
    }
    case 'GET':
    case 'HEAD':
      return readEntry({ ...ctx, repo: tx }, p);
  }
}

// ---------------------------------------------------------------------------------------------
// Entries shared by both

/**
 * PATCH: read the current version, apply the patch, rewrite its references, check the result and
 * update with If-Match of what was read. Without ifMatch, a concurrent write in between makes it
 * start again from the newer version (as the PATCH interaction does), at most 3 times.
 */
async function patchEntry(ctx: FhirContext, tx: Repository, p: Plan, target: string, refs: References): Promise<BundleEntry> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await patchOnce(ctx, tx, p, target, refs);
    } catch (error) {
      const raced = error instanceof FhirError && error.problems[0]?.code === 'version-mismatch' && p.ifMatch === undefined;
      if (!raced || attempt >= 3) throw error;
    }
  }
}

async function patchOnce(ctx: FhirContext, tx: Repository, p: Plan, target: string, refs: References): Promise<BundleEntry> {
  const id = target.slice(target.indexOf('/') + 1);
  const current = await tx.read(p.type, id);
  const resource = JSON.parse(current.json as string) as JsonResource;
  const doc = p.resource as JsonResource;
  let result: PatchResult;
  if (doc.resourceType === 'Binary') {
    const contentType = typeof doc.contentType === 'string' ? doc.contentType.split(';')[0]?.trim() : undefined;
    if (contentType !== 'application/json-patch+json') {
      throw fhirError('invalid-patch', `A Binary patch must have contentType application/json-patch+json, not ${String(doc.contentType)}`, `${p.at}.resource.contentType`);
    }
    let patch: unknown;
    try {
      patch = JSON.parse(Buffer.from(typeof doc.data === 'string' ? doc.data : '', 'base64').toString('utf8'));
    } catch {
      throw fhirError('invalid-patch', 'Binary.data is not base64 of a JSON Patch document', `${p.at}.resource.data`);
    }
    result = applyJsonPatch(resource, patch);
    if (!result.ok) {
      // JSON Pointers into the patch document go into the message.
      for (const problem of result.problems) {
        if (problem.expression?.startsWith('/') || problem.expression === undefined) {
          problem.message = `${problem.message}${problem.expression ? ` (at ${problem.expression} of the JSON Patch)` : ''}`;
          problem.expression = `${p.at}.resource.data`;
        }
      }
    }
  } else {
    result = applyFhirPathPatch(resource, doc);
  }
  if (!result.ok) {
    const first = result.problems[0];
    const category: ErrorCategory = result.failedTest ? 'conflict' : first ? ERROR_CODES[first.code] : 'unprocessable';
    throw new FhirError(category, result.problems);
  }
  const patched = result.resource;
  await refs.resolveConditional(patched, p.type);
  refs.rewrite(patched, p.type);
  const checked = ctx.validator.checkWrite(patched, p.type, id);
  const { version } = await tx.update(checked, id, p.ifMatch ?? current.versionId);
  return writeEntry(ctx, version, 200);
}

/** GET and HEAD: read, vread or search. */
async function readEntry(ctx: FhirContext, p: Plan): Promise<BundleEntry> {
  const withBody = p.method === 'GET';
  if (p.search) {
    const bundle = await runSearch(ctx, p.search.query, p.search.params, p.search.warnings);
    return { ...(withBody ? { resource: bundle } : {}), response: { status: statusLine(200) } };
  }
  const version = p.versionId !== undefined ? await ctx.repo.vread(p.type, p.id as string, p.versionId) : await ctx.repo.read(p.type, p.id as string);
  return {
    fullUrl: `${ctx.fhirBase}/${version.resourceType}/${version.id}`,
    ...(withBody ? { resource: JSON.parse(version.json as string) as NonNullable<BundleEntry['resource']> } : {}),
    response: { status: statusLine(200), etag: `W/"${version.versionId}"`, lastModified: version.lastUpdated },
  };
}

function writeEntry(ctx: FhirContext, version: StoredVersion, status: 200 | 201): BundleEntry {
  const entry: BundleEntry = { fullUrl: `${ctx.fhirBase}/${version.resourceType}/${version.id}` };
  // Parsed only when the response is written with it (not under Prefer: return=minimal).
  let resource: BundleEntry['resource'];
  Object.defineProperty(entry, 'resource', {
    enumerable: true,
    configurable: true,
    get: () => (resource ??= JSON.parse(version.json as string) as NonNullable<BundleEntry['resource']>),
  });
  entry.response = { status: statusLine(status), location: locationOf(ctx, version), etag: `W/"${version.versionId}"`, lastModified: version.lastUpdated };
  return entry;
}

function deleteEntry(version: StoredVersion | undefined): BundleEntry {
  return { response: { status: statusLine(204), ...(version ? { etag: `W/"${version.versionId}"`, lastModified: version.lastUpdated } : {}) } };
}

const REASONS: Record<number, string> = {
  200: 'OK',
  201: 'Created',
  204: 'No Content',
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  406: 'Not Acceptable',
  409: 'Conflict',
  410: 'Gone',
  412: 'Precondition Failed',
  413: 'Payload Too Large',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Entity',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

/** `Bundle.entry.response.status`: the status code and its reason phrase, "201 Created". */
function statusLine(status: number): string {
  const reason = REASONS[status];
  return reason ? `${status} ${reason}` : String(status);
}
