/**
 * The transport-independent shape of a FHIR request and response. The HTTP adapter (src/http)
 * turns Express requests into these and these into HTTP responses; nothing here knows Express.
 */
import type { Repository, StoredVersion } from '../store/repository.js';
import type { Tenants } from '../store/tenants.js';
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
}

/** What an interaction does to a resource type, in SMART v2's terms (c r u d s). */
export type Access = 'create' | 'read' | 'update' | 'delete' | 'search';
export type Authorize = (resourceType: string, needed: readonly Access[]) => void;

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
  | 'capabilities';

export interface Interaction {
  code: InteractionCode;
  level: 'instance' | 'type' | 'system';
  method: 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH';
  /** Path under the FHIR base, in Express syntax. */
  path: string;
  /** The request body: a FHIR resource (default for POST and PUT), a form (search), a patch document, or none. */
  body?: 'resource' | 'form' | 'patch' | 'none';
  handle(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse>;
}
