/**
 * The transport-independent shape of a FHIR request and response. The HTTP adapter (src/http)
 * turns Express requests into these and these into HTTP responses; nothing here knows Express.
 */
import type { Endpoint } from 'fhir/r4.js';
import { usesSmartBackend, type AssertionKey } from '../ehr/endpoint.js';
import type { EgressGuard } from '../ehr/egress.js';
import type { EhrSecrets } from '../ehr/secrets.js';
import type { Repository, StoredVersion } from '../store/repository.js';
import type { Tenants } from '../store/tenants.js';
import type { Filter, SearchQuery } from '../search/query.js';
import type { ResourceValidator } from '../validation/validator.js';

export interface FhirContext {
  /** The data of the request's tenant (or, where no tenant applies, of the first tenant). */
  repo: Repository;
  /** Every tenant's data: the HTTP layer picks the caller's tenant's repository from it. */
  tenants?: Tenants;
  validator: ResourceValidator;
  /** Public base of the FHIR API, e.g. http://localhost:8080/fhir */
  fhirBase: string;
  software: { name: string; version: string };
  startedAt: string;
  /**
   * Per request, from the caller's access token: throws (403) unless the caller may do each of
   * `needed` on `resourceType`. Bundle entries and _include are checked with it too. Unset: no
   * checks (the store's own callers, tests of the interactions themselves).
   */
  authorize?: Authorize;
  /**
   * The keys our client assertions to EHRs are signed with: each tenant's own (src/ehr/outbound-keys.ts).
   * Unset, or `tenant` unset: no SMART Backend Services connection can be made.
   */
  outboundKeys?: OutboundKeySource;
  /** EHRs over plain http (outside production, for EHRs on loopback in development and tests). */
  allowHttpEhr?: boolean;
  /** Which addresses EHR connections may reach (src/ehr/egress.ts); unset: as EhrConnection says. */
  ehrEgress?: EgressGuard;
  /** Static bearer tokens for EHRs (EHR_TOKEN_… variables, each bound to one tenant), named by Endpoints' tokenRef. */
  ehrSecrets?: EhrSecrets;
  /** Called after a transaction that queued a delivery job commits: wakes the delivery worker. */
  deliveryQueued?: () => void;
  /**
   * Per request, the caller's tenant (the one whose data `repo` holds): an Endpoint may use only
   * the EHR tokens bound to it. Unset (tests of the interactions themselves): no EHR token is found.
   */
  tenant?: string;
}

/** Each tenant's key for client assertions to EHRs. */
export interface OutboundKeySource {
  forTenant(tenant: string): Promise<AssertionKey>;
}

/**
 * The key `tenant` signs its client assertions to the EHR of `endpoint` with: only for an Endpoint
 * with auth smart-backend (the key is made on first use); undefined otherwise, or when there is
 * no tenant or no key source.
 */
export function outboundKeyOf(keys: OutboundKeySource | undefined, tenant: string | undefined, endpoint: Endpoint): Promise<AssertionKey | undefined> {
  return keys && tenant !== undefined && usesSmartBackend(endpoint) ? keys.forTenant(tenant) : Promise.resolve(undefined);
}

/** What an interaction does to a resource type, in SMART v2's terms (c r u d s). */
export type Access = 'create' | 'read' | 'update' | 'delete' | 'search';
export type Authorize = (resourceType: string, needed: readonly Access[]) => void;

/**
 * A search reads the types its chains and `_has` filters reach, not only its own: the caller must
 * be allowed to search each of them (else `Patient?_has:Observation:subject:code=…` would tell a
 * Patient-only token which patients have that Observation).
 */
export function authorizeJoins(ctx: FhirContext, query: SearchQuery): void {
  if (!ctx.authorize) return;
  const visit = (filter: Filter): void => {
    if (filter.kind === 'chain') {
      for (const t of filter.targetTypes) ctx.authorize?.(t, ['search']);
      for (const inner of filter.filters.values()) visit(inner);
    } else if (filter.kind === 'has') {
      ctx.authorize?.(filter.sourceType, ['search']);
      visit(filter.filter);
    }
  };
  for (const filter of query.filters) visit(filter);
}

/** Whether `authorize` lets the caller do `access` on `resourceType` (without throwing). */
export function allows(ctx: FhirContext, resourceType: string, access: Access): boolean {
  if (!ctx.authorize) return true;
  try {
    ctx.authorize(resourceType, [access]);
    return true;
  } catch {
    return false;
  }
}

export interface FhirRequest {
  resourceType?: string;
  id?: string;
  versionId?: string;
  /** Query parameters, each with all its values in order. */
  query: Record<string, string[]>;
  /** Version named by If-Match (the `n` of W/"n"). */
  ifMatch?: string;
  /** Search criteria of If-None-Exist. */
  ifNoneExist?: string;
  /** Prefer: return=… (writes). */
  returnPreference?: 'minimal' | 'representation' | 'OperationOutcome';
  /** Prefer: handling=strict|lenient (search). */
  handling?: 'strict' | 'lenient';
  /** Content-Type of the body (media type only). */
  contentType?: string;
  /** Form parameters of POST …/_search. */
  form?: Record<string, string[]>;
  body?: unknown;
}

export interface FhirResponse {
  status: number;
  /** Body: a stored version (sent as stored) or any JSON resource (Bundle, CapabilityStatement…). */
  version?: StoredVersion;
  resource?: object;
  /** Set on create and create-on-update. */
  location?: string;
}

export type InteractionCode =
  | 'read'
  | 'vread'
  | 'update'
  | 'delete'
  | 'history-instance'
  | 'history-type'
  | 'create'
  | 'search-type'
  | 'patch'
  | 'conditional-update'
  | 'conditional-delete'
  | 'conditional-patch'
  | 'batch'
  | 'transaction'
  | 'history-system'
  | 'capabilities'
  | 'operation';

export interface Interaction {
  code: InteractionCode;
  level: 'instance' | 'type' | 'system';
  method: 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH';
  /** Path under the FHIR base, in Express syntax. */
  path: string;
  /** The resource type of a path that names it literally (operations such as /Patient/:id/$op). */
  resourceType?: string;
  /** An operation's name, for the CapabilityStatement. */
  operation?: string;
  /** The request body: a FHIR resource (default for POST and PUT), a form (search), a patch document, or none. */
  body?: 'resource' | 'form' | 'patch' | 'none';
  handle(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse>;
}
