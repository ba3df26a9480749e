/**
 * The client side of talking to a physician's EHR over FHIR R4: SMART Backend Services access
 * tokens (or a static bearer token, for test systems: ./secrets.ts), finding the EHR's Patient by identifier
 * (or its Patients by demographics, ./patient-link.ts), pulling its Conditions page by page, and the
 * local copy of a pulled Condition; for delivery, finding a resource by identifier and creating one.
 * Every failure is an EhrError whose `kind` tells the pull and delivery layers what to do:
 * `transient` (try again later), `permanent` (a person must look), `auth` (our credentials or
 * registration at the EHR must be fixed).
 *
 * https://hl7.org/fhir/smart-app-launch/backend-services.html (token request, Access FHIR API)
 * https://hl7.org/fhir/smart-app-launch/client-confidential-asymmetric.html#authenticating-to-the-token-endpoint
 * https://hl7.org/fhir/R4/http.html#paging and https://hl7.org/fhir/R4/search.html#token
 *
 * Never in an error message: access tokens, client assertions, keys, query strings (identifiers).
 */
import { randomUUID } from 'node:crypto';
import { Client, type RequestOptions } from 'fhir-kit-client';
import { SignJWT, type CryptoKey, type JWK, type KeyObject } from 'jose';
import type { Annotation, Bundle, Condition, Identifier, OperationOutcome, Patient, Reference } from 'fhir/r4.js';
import { parseReference } from '../fhir/reference.js';
import { stringSearchValue, tokenSearchValue } from '../fhir/search-value.js';
import { sameDemographics, type Demographics } from './patient-link.js';
import { defaultEgress, EgressRefused, type EgressGuard } from './egress.js';

function egressOf(conn: EhrConnection): EgressGuard {
  return conn.egress ?? defaultEgress();
}

/** fetch's options that route its connections through the connection's egress guard. */
function viaGuard(conn: EhrConnection): { dispatcher?: NonNullable<ReturnType<EgressGuard['dispatcher']>> } {
  const dispatcher = egressOf(conn).dispatcher();
  return dispatcher ? { dispatcher } : {};
}

export const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
export const CONDITION_CATEGORY_SYSTEM = 'http://terminology.hl7.org/CodeSystem/condition-category';
export const CONDITION_CATEGORIES = ['problem-list-item', 'encounter-diagnosis'] as const;
export type ConditionCategory = (typeof CONDITION_CATEGORIES)[number];
/** meta.tag of a local copy: which EHR endpoint (our id for it) the resource was pulled from. */
export const EHR_ENDPOINT_TAG_SYSTEM = 'https://met-fhir-server.dev/fhir/CodeSystem/ehr-endpoint';
/** RFC 3986 URI as an identifier (https://hl7.org/fhir/R4/datatypes.html#Identifier). */
const URI_SYSTEM = 'urn:ietf:rfc:3986';

/** "exp … SHALL be no more than five minutes in the future": we sign for four, well inside. */
const ASSERTION_LIFETIME_SECONDS = 240;
const DEFAULT_TIMEOUT_MS = 20_000;
const DEFAULT_SLACK_SECONDS = 30;
const DEFAULT_PAGE_SIZE = 100;
const DEFAULT_MAX_PAGES = 50;

export interface SmartBackendAuth {
  kind: 'smart-backend';
  /** The EHR's token endpoint (its smart-configuration `token_endpoint`); also the assertion's `aud`. */
  tokenUrl: string;
  clientId: string;
  /** Our private key: a CryptoKey or KeyObject, or a private JWK. */
  privateKey: CryptoKey | KeyObject | JWK;
  /** The kid of the public key we registered in our JWK Set. */
  kid: string;
  alg: 'ES384' | 'RS384';
  /** Space-separated, e.g. `system/Patient.rs system/Condition.rs`. */
  scope: string;
}

export type EhrAuth = SmartBackendAuth | { kind: 'bearer'; token: string } | { kind: 'none' };

export interface EhrConnection {
  /** The EHR's FHIR base, e.g. `https://ehr.example.org/fhir`. */
  baseUrl: string;
  auth: EhrAuth;
  /** Per HTTP exchange (token request or FHIR call), body included. Default 20 s. */
  timeoutMs?: number;
  /** A cached token is used until this long before it expires. Default 30 s. */
  tokenLifetimeSlackSeconds?: number;
  /** Plain http to a host other than loopback (SMART requires TLS: development only). */
  allowHttp?: boolean;
  /**
   * Which addresses may be connected to (./egress.ts). Unset: ./egress.ts defaultEgress (public
   * addresses only in production); the server always sets it from EHR_ALLOWED_HOSTS.
   */
  egress?: EgressGuard;
  /** Where access tokens are kept between calls; the process-wide cache by default. */
  tokenCache?: TokenCache;
}

export const EHR_ERROR_KINDS = ['transient', 'permanent', 'auth'] as const;
export type EhrErrorKind = (typeof EHR_ERROR_KINDS)[number];

/** Stable reasons, for logs, metrics and the operator's screen. */
export type EhrErrorCode =
  | 'unreachable'
  | 'timeout'
  | 'rate-limited'
  | 'server-error'
  | 'token-refused'
  | 'token-endpoint-error'
  | 'signing-failed'
  | 'unauthorized'
  | 'forbidden'
  | 'not-found'
  | 'rejected'
  | 'redirected'
  | 'not-fhir'
  | 'insecure-url'
  | 'address-refused'
  | 'ambiguous-patient'
  | 'identifier-mismatch'
  | 'subject-mismatch'
  | 'category-mismatch'
  | 'paging-loop'
  | 'too-many-pages'
  | 'foreign-link'
  | 'unsupported-content';

export class EhrError extends Error {
  override readonly name = 'EhrError';
  readonly status?: number;
  /** The EHR's OperationOutcome, summarised (`severity code: diagnostics; …`), when it sent one. */
  readonly outcome?: string;
  /** From Retry-After on 429/503, when the EHR said. */
  readonly retryAfterSeconds?: number;

  constructor(
    readonly kind: EhrErrorKind,
    readonly code: EhrErrorCode,
    message: string,
    details: { status?: number; outcome?: string; retryAfterSeconds?: number } = {},
  ) {
    super(details.outcome ? `${message} (${details.outcome})` : message);
    if (details.status !== undefined) this.status = details.status;
    if (details.outcome !== undefined) this.outcome = details.outcome;
    if (details.retryAfterSeconds !== undefined) this.retryAfterSeconds = details.retryAfterSeconds;
  }
}

interface CachedToken {
  accessToken: string;
  /** Epoch ms after which the token is not used any more (expiry minus slack). */
  usableUntil: number;
}

/** Access tokens by client registration, each used until shortly before it expires. */
export class TokenCache {
  private readonly tokens = new Map<string, CachedToken>();
  private readonly pending = new Map<string, Promise<string>>();

  constructor(readonly now: () => number = Date.now) {}

  get(key: string): string | undefined {
    const cached = this.tokens.get(key);
    if (cached && cached.usableUntil > this.now()) return cached.accessToken;
    this.tokens.delete(key);
    return undefined;
  }

  set(key: string, accessToken: string, usableUntil: number): void {
    for (const [k, v] of this.tokens) if (v.usableUntil <= this.now()) this.tokens.delete(k);
    if (usableUntil > this.now()) this.tokens.set(key, { accessToken, usableUntil });
  }

  /** Drops `accessToken` (the one the EHR refused), unless another call has replaced it already. */
  drop(key: string, accessToken: string): void {
    if (this.tokens.get(key)?.accessToken === accessToken) this.tokens.delete(key);
  }

  clear(): void {
    this.tokens.clear();
  }

  /** Concurrent calls for one registration share one token request. */
  once(key: string, fetchToken: () => Promise<string>): Promise<string> {
    let pending = this.pending.get(key);
    if (!pending) {
      pending = fetchToken().finally(() => this.pending.delete(key));
      this.pending.set(key, pending);
    }
    return pending;
  }
}

const sharedTokenCache = new TokenCache();

export function tokenCacheKey(auth: SmartBackendAuth): string {
  return JSON.stringify([auth.tokenUrl, auth.clientId, auth.scope, auth.kid, auth.alg]);
}

// ---------------------------------------------------------------------------------------------
// SMART Backend Services: the access token

/**
 * An access token for `conn`: the cached one while usable, else a new one from the token endpoint
 * (client_credentials with a signed JWT assertion). Undefined for `auth.kind: 'none'`.
 */
export async function accessToken(conn: EhrConnection): Promise<string | undefined> {
  const auth = conn.auth;
  switch (auth.kind) {
    case 'none':
      return undefined;
    case 'bearer':
      return auth.token;
    case 'smart-backend': {
      const cache = conn.tokenCache ?? sharedTokenCache;
      const key = tokenCacheKey(auth);
      return cache.get(key) ?? cache.once(key, () => requestToken(conn, auth, cache, key));
    }
  }
}

/** The signed authentication JWT (client-confidential-asymmetric: header alg, kid, typ; claims iss, sub, aud, exp, jti). */
export async function clientAssertion(auth: SmartBackendAuth, now: number = Date.now()): Promise<string> {
  const seconds = Math.floor(now / 1000);
  try {
    return await new SignJWT({})
      .setProtectedHeader({ alg: auth.alg, kid: auth.kid, typ: 'JWT' })
      .setIssuer(auth.clientId)
      .setSubject(auth.clientId)
      .setAudience(auth.tokenUrl)
      .setIssuedAt(seconds)
      .setExpirationTime(seconds + ASSERTION_LIFETIME_SECONDS)
      .setJti(randomUUID())
      .sign(auth.privateKey);
  } catch (error) {
    // jose's messages name the problem (wrong key type, public key), never the key material.
    throw new EhrError('auth', 'signing-failed', `could not sign the client assertion with key ${JSON.stringify(auth.kid)} (${(error as Error).name}: ${(error as Error).message})`);
  }
}

async function requestToken(conn: EhrConnection, auth: SmartBackendAuth, cache: TokenCache, key: string): Promise<string> {
  checkUrl(conn, auth.tokenUrl);
  const body = new URLSearchParams({
    grant_type: 'client_credentials',
    scope: auth.scope,
    client_assertion_type: CLIENT_ASSERTION_TYPE,
    client_assertion: await clientAssertion(auth, cache.now()),
  });
  const timeoutMs = conn.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const where = `the EHR's token endpoint ${describeUrl(auth.tokenUrl)}`;
  let status: number;
  let text: string;
  let retryAfter: string | null;
  try {
    const response = await fetch(auth.tokenUrl, {
      ...viaGuard(conn),
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body,
      redirect: 'manual',
      signal: AbortSignal.timeout(timeoutMs),
    });
    status = response.status;
    retryAfter = response.headers.get('retry-after');
    text = await response.text();
  } catch (error) {
    throw networkError(error, where, timeoutMs);
  }
  const json = parseJson(text);
  if (status !== 200) {
    const oauth = typeof json === 'object' && json !== null ? (json as { error?: unknown; error_description?: unknown }) : {};
    const said = typeof oauth.error === 'string' ? `: ${scrub(oauth.error.slice(0, 100))}${typeof oauth.error_description === 'string' ? ` (${scrub(oauth.error_description.slice(0, 300))})` : ''}` : '';
    const message = `${where} refused the token request with HTTP ${status}${said}`;
    if (status === 429 || status === 408 || status >= 500) {
      throw new EhrError('transient', status === 429 ? 'rate-limited' : 'token-endpoint-error', message, { status, ...retryAfterOf(retryAfter) });
    }
    // RFC 6749 §5.2: 400 (invalid_scope, unauthorized_client, …) and 401 (invalid_client).
    if (status === 400 || status === 401) throw new EhrError('auth', 'token-refused', message, { status });
    throw new EhrError('permanent', status >= 300 && status < 400 ? 'redirected' : 'token-endpoint-error', message, { status });
  }
  const token = (json ?? {}) as { access_token?: unknown; token_type?: unknown; expires_in?: unknown };
  if (typeof token.access_token !== 'string' || token.access_token === '' || typeof token.token_type !== 'string' || token.token_type.toLowerCase() !== 'bearer') {
    throw new EhrError('auth', 'token-endpoint-error', `${where} answered without a bearer access_token`, { status });
  }
  // expires_in is required; without it, assume no more than a minute.
  const expiresIn = typeof token.expires_in === 'number' && token.expires_in > 0 ? token.expires_in : 60;
  const slack = conn.tokenLifetimeSlackSeconds ?? DEFAULT_SLACK_SECONDS;
  cache.set(key, token.access_token, cache.now() + (expiresIn - slack) * 1000);
  return token.access_token;
}

// ---------------------------------------------------------------------------------------------
// FHIR calls

/**
 * One FHIR call with the connection's token; on 401 the token is dropped and the call made once
 * more with a fresh one (SMART backend tokens are short-lived; the EHR may also have revoked it).
 */
async function call<T>(conn: EhrConnection, what: string, run: (options: RequestOptions) => Promise<unknown>): Promise<T> {
  const timeoutMs = conn.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  for (let attempt = 1; ; attempt++) {
    const token = await accessToken(conn);
    const headers: Record<string, string> = { accept: 'application/fhir+json', prefer: 'handling=strict' };
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    try {
      return (await run({ headers, signal: AbortSignal.timeout(timeoutMs), redirect: 'manual' })) as T;
    } catch (error) {
      const status = statusOf(error);
      if (status === 401 && attempt === 1 && conn.auth.kind === 'smart-backend' && token !== undefined) {
        (conn.tokenCache ?? sharedTokenCache).drop(tokenCacheKey(conn.auth), token);
        continue;
      }
      // The token of this call, static or from the EHR's token endpoint (opaque tokens are not
      // JWTs, which are cut out anyway), never reaches a message should the EHR echo it.
      throw classify(error, what, timeoutMs, attempt > 1, token !== undefined ? [token] : []);
    }
  }
}

function clientFor(conn: EhrConnection): Client {
  const base = baseOf(conn);
  checkUrl(conn, base);
  return new Client({ baseUrl: base, requestOptions: viaGuard(conn) });
}

/** Every resource of `resourceType` a search matches, following `next` links to the end. */
async function searchAll<T extends { resourceType: string; id?: string }>(
  conn: EhrConnection,
  resourceType: T['resourceType'],
  searchParams: Record<string, string>,
  limits: { count: number; maxPages: number },
): Promise<T[]> {
  const base = baseOf(conn);
  const client = clientFor(conn);
  const found = new Map<string, T>();
  const query = new URLSearchParams({ ...searchParams, _count: String(limits.count) });
  const seen = new Set<string>([new URL(`${base}/${resourceType}?${query.toString()}`).href]);
  const what = `search ${resourceType} at ${base}`;
  let bundle = await call<Bundle>(conn, what, (options) => client.search({ resourceType, searchParams: Object.fromEntries(query), options }));
  for (let page = 1; ; page++) {
    if (bundle?.resourceType !== 'Bundle' || bundle.type !== 'searchset') throw new EhrError('permanent', 'not-fhir', `${what}: the answer is not a searchset Bundle`);
    for (const entry of bundle.entry ?? []) {
      const resource = entry.resource as T | undefined;
      if (resource?.resourceType !== resourceType || (entry.search?.mode ?? 'match') !== 'match') continue;
      // A resource seen on two pages (the EHR's data changed while we paged) is kept once, the later copy.
      found.set(resource.id ?? `#${found.size}`, resource);
    }
    const next = bundle.link?.find((l) => l.relation === 'next')?.url;
    if (!next) return [...found.values()];
    const url = nextUrl(next, base, what);
    if (seen.has(url)) throw new EhrError('permanent', 'paging-loop', `${what}: the EHR's next link repeats an earlier page (page ${page + 1})`);
    if (page >= limits.maxPages) throw new EhrError('permanent', 'too-many-pages', `${what}: more than ${limits.maxPages} pages of ${limits.count}`);
    seen.add(url);
    bundle = await call<Bundle>(conn, what, (options) => client.request(url, { options }));
  }
}

/**
 * A next link, absolute, and only if it stays under the EHR's base: SMART says a backend service
 * "SHOULD NOT blindly follow such references and send along its access_token".
 */
function nextUrl(link: string, base: string, what: string): string {
  let url: URL;
  try {
    url = new URL(link, `${base}/`);
  } catch {
    throw new EhrError('permanent', 'foreign-link', `${what}: the next link is not a URL`);
  }
  const root = new URL(`${base}/`);
  if (url.origin !== root.origin || !url.pathname.startsWith(root.pathname)) {
    throw new EhrError('permanent', 'foreign-link', `${what}: the next link leads outside the EHR's base (${url.origin}${url.pathname}); not following it with our token`);
  }
  return url.href;
}

/**
 * The EHR's Patient carrying this identifier: undefined when there is none, an EhrError listing
 * them when there are several. Each match is checked to carry the identifier, so an EHR that
 * ignored the parameter cannot hand us someone else.
 */
export async function findPatient(conn: EhrConnection, query: { identifier: { system: string; value: string } }): Promise<Patient | undefined> {
  const { system, value } = query.identifier;
  const patients = await searchAll<Patient>(conn, 'Patient', { identifier: tokenSearchValue(system, value) }, { count: 10, maxPages: 5 });
  const stray = patients.filter((p) => !(p.identifier ?? []).some((i) => i.system === system && i.value === value));
  if (stray.length > 0) {
    throw new EhrError('permanent', 'identifier-mismatch', `the EHR answered a Patient identifier search with ${stray.length} Patient(s) that do not carry the identifier (${ids('Patient', stray)})`);
  }
  if (patients.length > 1) {
    throw new EhrError('permanent', 'ambiguous-patient', `${patients.length} Patients at ${baseOf(conn)} carry identifier system ${system}: ${ids('Patient', patients)}`);
  }
  return patients[0];
}

/**
 * The EHR's Patients with these demographics (./patient-link.ts, sameDemographics): searched by
 * family, given, birthdate and gender, then each checked here, since an EHR matches names by prefix
 * (`family=Li` finds Lind) and may ignore a parameter. Up to 200 are read; more is an error.
 */
export async function findPatientsByDemographics(conn: EhrConnection, who: Demographics): Promise<Patient[]> {
  const patients = await searchAll<Patient>(
    conn,
    'Patient',
    { family: stringSearchValue(who.family), given: stringSearchValue(who.given), birthdate: who.birthDate, gender: who.gender },
    { count: 50, maxPages: 4 },
  );
  return patients.filter((p) => sameDemographics(p, who));
}

/**
 * The Patient's Conditions of one category, all pages. Each is checked to be about this Patient
 * and of this category: a copy of someone else's diagnosis must never reach our store.
 */
export async function searchConditions(
  conn: EhrConnection,
  patientId: string,
  category: ConditionCategory,
  options: { count?: number; maxPages?: number } = {},
): Promise<Condition[]> {
  const base = baseOf(conn);
  const conditions = await searchAll<Condition>(
    conn,
    'Condition',
    { patient: `Patient/${patientId}`, category: `${CONDITION_CATEGORY_SYSTEM}|${category}` },
    { count: options.count ?? DEFAULT_PAGE_SIZE, maxPages: options.maxPages ?? DEFAULT_MAX_PAGES },
  );
  const otherSubject = conditions.filter((c) => !refersTo(c.subject?.reference, 'Patient', patientId, base));
  if (otherSubject.length > 0) {
    throw new EhrError('permanent', 'subject-mismatch', `the EHR answered a search for Patient/${patientId}'s Conditions with ${otherSubject.length} of another subject (${ids('Condition', otherSubject)})`);
  }
  const otherCategory = conditions.filter((c) => !(c.category ?? []).some((cc) => (cc.coding ?? []).some((k) => k.code === category && (k.system ?? CONDITION_CATEGORY_SYSTEM) === CONDITION_CATEGORY_SYSTEM)));
  if (otherCategory.length > 0) {
    throw new EhrError('permanent', 'category-mismatch', `the EHR answered a search for ${category} Conditions with ${otherCategory.length} not of that category (${ids('Condition', otherCategory)})`);
  }
  return conditions;
}

// ---------------------------------------------------------------------------------------------
// Writing to the EHR (delivery): search by identifier, then create

/**
 * The resources of `resourceType` carrying the identifier `system|value` (the `identifier` search
 * parameter; for DocumentReference it covers masterIdentifier too). Each match is checked to carry
 * it, so an EHR that ignored the parameter cannot make us believe a document is already there.
 * EHRs such as Epic have no conditional create: this search is how a retry avoids a duplicate.
 */
export async function findByIdentifier<T extends { resourceType: string; id?: string; identifier?: Identifier[]; masterIdentifier?: Identifier }>(
  conn: EhrConnection,
  resourceType: T['resourceType'],
  identifier: { system: string; value: string },
): Promise<T[]> {
  const { system, value } = identifier;
  const found = await searchAll<T>(conn, resourceType, { identifier: tokenSearchValue(system, value) }, { count: 10, maxPages: 2 });
  const carries = (r: T): boolean => [...(r.identifier ?? []), ...(r.masterIdentifier ? [r.masterIdentifier] : [])].some((i) => i.system === system && i.value === value);
  const stray = found.filter((r) => !carries(r));
  if (stray.length > 0) {
    throw new EhrError('permanent', 'identifier-mismatch', `the EHR answered a ${resourceType} identifier search with ${stray.length} that do not carry the identifier (${ids(resourceType, stray)})`);
  }
  return found;
}

/**
 * POST [base]/{resourceType} (https://hl7.org/fhir/R4/http.html#create). The EHR's id for the new
 * resource comes from the answer's body or else its Location header (Epic answers 201 with an
 * empty body); undefined when it names neither (the caller can search for it).
 */
export async function createResource(conn: EhrConnection, resource: { resourceType: string }): Promise<{ id?: string; versionId?: string }> {
  const client = clientFor(conn);
  const what = `create ${resource.resourceType} at ${baseOf(conn)}`;
  const created = await call<{ resourceType?: string; id?: string; meta?: { versionId?: string } }>(conn, what, (options) =>
    client.create({ resourceType: resource.resourceType, body: resource, options }),
  );
  if (created?.resourceType === resource.resourceType && typeof created.id === 'string') {
    return { id: created.id, ...(created.meta?.versionId ? { versionId: created.meta.versionId } : {}) };
  }
  const location = Client.httpFor(created as Parameters<typeof Client.httpFor>[0]).response?.headers.get('location');
  const match = location ? new RegExp(`(?:^|/)${resource.resourceType}/([A-Za-z0-9\\-.]{1,64})(?:/_history/([A-Za-z0-9\\-.]{1,64}))?/?$`).exec(location.split('?')[0] ?? '') : null;
  if (!match?.[1]) return {};
  return { id: match[1], ...(match[2] ? { versionId: match[2] } : {}) };
}

// ---------------------------------------------------------------------------------------------
// The local copy

/**
 * The copy of a Condition pulled from an EHR that we store: the clinical content kept, its
 * identity at the EHR as an identifier (`${baseUrl}/Condition` | id, so a second pull finds the
 * same local resource), `meta.source` the EHR's URL of the version we read, the subject our own
 * Patient, and the EHR's other references (encounter, asserter, recorder, note authors, identifier
 * assigners) made display-only: they name the EHR's resource by identifier and resolve nowhere
 * here. Not copied: id, text, contained, extensions, stage and evidence (references into the EHR),
 * meta other than security labels.
 */
export function toLocalCondition(remote: Condition, ehr: { endpointId: string; baseUrl: string }, localPatientRef: string): Condition {
  const base = ehr.baseUrl.replace(/\/+$/, '');
  if (!remote.id) throw new EhrError('permanent', 'unsupported-content', `a Condition from ${base} has no id`);
  if (remote.modifierExtension?.length) {
    throw new EhrError('permanent', 'unsupported-content', `Condition/${remote.id} from ${base} has a modifierExtension, which changes its meaning in a way we cannot interpret`);
  }
  const ours: Identifier = { system: `${base}/Condition`, value: remote.id };
  const identifiers = (remote.identifier ?? []).filter((i) => !(i.system === ours.system && i.value === ours.value)).map((i) => localIdentifier(i, base));
  const version = remote.meta?.versionId;
  const local: Condition = {
    resourceType: 'Condition',
    meta: {
      source: `${base}/Condition/${remote.id}${version ? `/_history/${version}` : ''}`,
      tag: [{ system: EHR_ENDPOINT_TAG_SYSTEM, code: ehr.endpointId }],
      ...(remote.meta?.security?.length ? { security: remote.meta.security } : {}),
    },
    ...(remote.language ? { language: remote.language } : {}),
    identifier: [...identifiers, ours],
    subject: { reference: localPatientRef, ...(remote.subject?.display ? { display: remote.subject.display } : {}) },
  };
  const copy = <K extends keyof Condition>(...keys: K[]): void => {
    for (const k of keys) if (remote[k] !== undefined) local[k] = remote[k];
  };
  copy('clinicalStatus', 'verificationStatus', 'category', 'severity', 'code', 'bodySite');
  copy('onsetDateTime', 'onsetAge', 'onsetPeriod', 'onsetRange', 'onsetString');
  copy('abatementDateTime', 'abatementAge', 'abatementPeriod', 'abatementRange', 'abatementString');
  copy('recordedDate');
  const encounter = displayOnly(remote.encounter, base);
  if (encounter) local.encounter = encounter;
  const recorder = displayOnly(remote.recorder, base);
  if (recorder) local.recorder = recorder;
  const asserter = displayOnly(remote.asserter, base);
  if (asserter) local.asserter = asserter;
  if (remote.note?.length) local.note = remote.note.map((n) => localNote(n, base));
  return local;
}

function localNote(note: Annotation, base: string): Annotation {
  const { authorReference, ...rest } = note;
  const author = displayOnly(authorReference, base);
  return author ? { ...rest, authorReference: author } : rest;
}

function localIdentifier(identifier: Identifier, base: string): Identifier {
  const { assigner, ...rest } = identifier;
  const local = displayOnly(assigner, base);
  return local ? { ...rest, assigner: local } : rest;
}

/**
 * A reference into the EHR as one that resolves nowhere here: `Type/id` becomes type plus the
 * identifier `${base}/Type` | id (the scheme of our own copies' identifiers), another absolute URL
 * the identifier `urn:ietf:rfc:3986` | URL; the display is kept, or else the EHR's URL.
 */
function displayOnly(ref: Reference | undefined, base: string): Reference | undefined {
  if (!ref) return undefined;
  const out: Reference = {};
  let url: string | undefined;
  const literal = ref.reference;
  if (literal !== undefined) {
    const relative = literal.startsWith(`${base}/`) ? literal.slice(base.length + 1) : literal;
    const shape = parseReference(relative);
    if (!('error' in shape) && shape.kind === 'relative') {
      out.type = ref.type ?? shape.resourceType;
      out.identifier = { system: `${base}/${shape.resourceType}`, value: shape.id };
      url = `${base}/${shape.resourceType}/${shape.id}`;
    } else if (!('error' in shape) && shape.kind === 'absolute') {
      if (ref.type) out.type = ref.type;
      out.identifier = { system: URI_SYSTEM, value: literal };
      url = literal;
    } else if (ref.type) {
      out.type = ref.type;
    }
  } else {
    if (ref.type) out.type = ref.type;
    if (ref.identifier) out.identifier = localIdentifier(ref.identifier, base);
  }
  const display = ref.display ?? url;
  if (display) out.display = display;
  return out.identifier || out.display ? out : undefined;
}

// ---------------------------------------------------------------------------------------------
// Errors

function statusOf(error: unknown): number | undefined {
  const status = (error as { response?: { status?: unknown } } | null)?.response?.status;
  return typeof status === 'number' ? status : undefined;
}

/**
 * A failed FHIR call as an EhrError (fhir-kit-client throws `{ response: { status, data }, config: { headers } }`).
 * `secrets` (the call's access token) are cut out of whatever the EHR said, should it echo them.
 */
function classify(error: unknown, what: string, timeoutMs: number, retried: boolean, secrets: readonly string[] = []): EhrError {
  if (error instanceof EhrError) return error;
  const status = statusOf(error);
  if (status === undefined) return networkError(error, what, timeoutMs);
  const { response, config } = error as { response: { data?: unknown }; config?: { headers?: Headers } };
  const outcome = summariseOutcome(response.data, secrets);
  const details = { status, ...(outcome ? { outcome } : {}) };
  const message = `${what}: the EHR answered HTTP ${status}`;
  if (status === 429 || status === 408 || status >= 500) {
    const retryAfter = config?.headers instanceof Headers ? config.headers.get('retry-after') : null;
    return new EhrError('transient', status === 429 ? 'rate-limited' : 'server-error', message, { ...details, ...retryAfterOf(retryAfter) });
  }
  if (status === 401) return new EhrError('auth', 'unauthorized', retried ? `${message}, also with a fresh access token` : `${message}: our credentials are not accepted`, details);
  if (status === 403) return new EhrError('permanent', 'forbidden', `${message}: our registration's scopes do not cover this`, details);
  if (status === 404 || status === 410) return new EhrError('permanent', 'not-found', `${message}: is the base URL right?`, details);
  if (status >= 300 && status < 400) return new EhrError('permanent', 'redirected', `${message} (a redirect; configure the final URL)`, details);
  if (status < 300) return new EhrError('permanent', 'not-fhir', `${what}: the EHR's answer is not JSON`, { status });
  return new EhrError('permanent', 'rejected', message, details);
}

/** Network failures and timeouts: always transient. Anything that is not one is a bug: rethrown. */
function networkError(error: unknown, what: string, timeoutMs: number): EhrError {
  const e = error as { name?: string; message?: string; cause?: { code?: string; message?: string } } | null;
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return new EhrError('transient', 'timeout', `${what}: no answer within ${timeoutMs} ms`);
  if (e?.cause instanceof EgressRefused) return new EhrError('permanent', 'address-refused', `${what}: ${e.cause.message}`);
  if (error instanceof TypeError && (e?.cause !== undefined || e?.message === 'fetch failed' || e?.message === 'terminated')) {
    const reason = e?.cause?.code ?? e?.cause?.message ?? e?.message ?? 'network error';
    return new EhrError('transient', 'unreachable', `${what}: could not reach the EHR (${reason})`);
  }
  throw error;
}

/** "severity code: text; …", at most 500 characters. */
function summariseOutcome(data: unknown, secrets: readonly string[] = []): string | undefined {
  const outcome = data as OperationOutcome | undefined;
  if (outcome?.resourceType !== 'OperationOutcome' || !Array.isArray(outcome.issue)) return undefined;
  // Scrubbed before it is cut short, so that a token cut in two cannot survive in part.
  const text = scrub(outcome.issue.map((i) => `${i.severity} ${i.code}${i.diagnostics ?? i.details?.text ? `: ${i.diagnostics ?? i.details?.text}` : ''}`).join('; '), secrets);
  return text.length > 500 ? `${text.slice(0, 499)}…` : text;
}

/** Whatever an EHR echoes back, no JWT (our assertion, a token) and none of `secrets` reaches a message. */
function scrub(text: string, secrets: readonly string[] = []): string {
  const cut = secrets.filter((s) => s.length > 0).reduce((t, secret) => t.split(secret).join('[token]'), text);
  return cut.replace(/eyJ[\w-]*\.[\w-]*\.[\w-]*/g, '[jwt]');
}

function retryAfterOf(value: string | null): { retryAfterSeconds?: number } {
  if (!value) return {};
  if (/^\d+$/.test(value.trim())) return { retryAfterSeconds: Number(value.trim()) };
  const at = Date.parse(value);
  return Number.isNaN(at) ? {} : { retryAfterSeconds: Math.max(0, Math.ceil((at - Date.now()) / 1000)) };
}

// ---------------------------------------------------------------------------------------------
// Helpers

function baseOf(conn: EhrConnection): string {
  return conn.baseUrl.replace(/\/+$/, '');
}

/** SMART: "All exchanges … SHALL be secured using TLS". Loopback (tests, a local proxy) excepted. */
function checkUrl(conn: EhrConnection, url: string): void {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new EhrError('permanent', 'insecure-url', `${JSON.stringify(url.slice(0, 200))} is not a URL`);
  }
  const loopback = ['localhost', '127.0.0.1', '[::1]'].includes(parsed.hostname) || parsed.hostname.startsWith('127.');
  if (!(parsed.protocol === 'https:' || (parsed.protocol === 'http:' && (loopback || conn.allowHttp === true)))) {
    throw new EhrError('permanent', 'insecure-url', `${describeUrl(url)} is not https; SMART requires TLS for every exchange with the EHR`);
  }
  const refused = egressOf(conn).literalRefusal(parsed.hostname);
  if (refused) throw new EhrError('permanent', 'address-refused', `${describeUrl(url)}: ${refused}`);
}

/** Origin and path only: query strings can carry identifiers. */
function describeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return '(not a URL)';
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function refersTo(reference: string | undefined, type: string, id: string, base: string): boolean {
  if (reference === undefined) return false;
  const relative = reference.startsWith(`${base}/`) ? reference.slice(base.length + 1) : reference;
  const shape = parseReference(relative);
  return !('error' in shape) && shape.kind === 'relative' && shape.resourceType === type && shape.id === id;
}

function ids(type: string, resources: { id?: string }[]): string {
  const shown = resources.slice(0, 20).map((r) => `${type}/${r.id ?? '(no id)'}`);
  return resources.length > 20 ? `${shown.join(', ')} and ${resources.length - 20} more` : shown.join(', ');
}
