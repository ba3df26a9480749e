/**
 * SMART scopes for clinical data: parse v1 and v2 resource scopes, decide what a set of granted
 * scopes permits, and narrow what a client asks for to what it is registered for.
 * https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html
 *
 * Grammar: `<context>/<type>.<permissions>[?<query>]` with context `system`, `user` or `patient`,
 * type a resource type or `*`, and permissions either v1 (`read`, `write`, `*`) or v2 (the letters
 * `c r u d s`, at least one, in that order). Only v2 scopes take a query (`?category=…`).
 *
 * Granted access is honoured for the `system/` context only: this server has no user or patient
 * context to bind `user/` and `patient/` scopes to, so honouring them would widen them to the whole
 * tenant. They are parsed (and never reported as invalid) but grant nothing.
 *
 * A v2 scope with a query (e.g. `system/Observation.rs?category=laboratory`) is a constraint this
 * module cannot enforce alone: it grants reads and searches only, and only through `accessFor`,
 * which hands the queries to the caller to apply. `permits` ignores such scopes; its `c`, `u` and
 * `d` letters are never honoured (and never granted by `narrow`).
 */

/** The interactions a scope letter stands for. */
export type Interaction = 'create' | 'read' | 'update' | 'delete' | 'search';
export type ScopeContext = 'system' | 'user' | 'patient';

/** One parsed resource scope. */
export interface Scope {
  /** The scope as written (or, for a scope `narrow` derived, in v2 letters). */
  text: string;
  context: ScopeContext;
  /** A resource type, or `*` for all. */
  resourceType: string;
  /** The interactions granted, in the v2 letter order. */
  interactions: readonly Interaction[];
  version: 1 | 2;
  /** The v2 query constraint, as ordered name/value pairs (AND), when present. */
  query?: readonly (readonly [string, string])[];
}

/** Scope letters in their required v2 order. */
const LETTERS = [
  ['c', 'create'],
  ['r', 'read'],
  ['u', 'update'],
  ['d', 'delete'],
  ['s', 'search'],
] as const;

const ALL: readonly Interaction[] = LETTERS.map(([, i]) => i);

/** v1 permissions as v2 interactions (scopes-and-launch-context.html#scopes-for-requesting-fhir-resources). */
const V1: Record<string, readonly Interaction[]> = {
  read: ['read', 'search'],
  write: ['create', 'update', 'delete'],
  '*': ALL,
};

/**
 * What each of our FHIR interactions needs, by its code in src/interactions (`conditional-create`
 * is a create with If-None-Exist). Batch and transaction entries are checked one by one; a
 * conditional update that creates also needs `create`.
 */
export const REQUIRED_ACCESS: Readonly<Record<string, readonly Interaction[]>> = {
  read: ['read'],
  vread: ['read'],
  'history-instance': ['read'],
  'search-type': ['search'],
  'search-system': ['search'],
  'history-type': ['search'],
  'history-system': ['search'],
  create: ['create'],
  'conditional-create': ['create', 'search'],
  update: ['update'],
  patch: ['update'],
  'conditional-update': ['update', 'search'],
  'conditional-patch': ['update', 'search'],
  delete: ['delete'],
  'conditional-delete': ['delete', 'search'],
};

/** Scopes that are valid SMART but name no resource access; never granted to backend services. */
const NON_RESOURCE = /^(openid|fhirUser|profile|offline_access|online_access|launch(\/[A-Za-z]+)?)$/;

const SCOPE = /^(system|user|patient)\/(\*|[A-Z][A-Za-z]{0,63})\.([a-z*]+)(?:\?(.*))?$/;

/** The v2 letters of a permission string, or undefined when they are not `c r u d s` in order. */
function v2Interactions(permissions: string): Interaction[] | undefined {
  const out: Interaction[] = [];
  let at = 0;
  for (const [letter, interaction] of LETTERS) {
    if (permissions[at] === letter) {
      out.push(interaction);
      at++;
    }
  }
  return at === permissions.length && out.length > 0 ? out : undefined;
}

/** Parses one scope token; undefined when it is not a well-formed resource scope. */
export function parseScope(token: string): Scope | undefined {
  const m = SCOPE.exec(token);
  if (!m) return undefined;
  const [, context, resourceType, permissions, rawQuery] = m as unknown as [string, ScopeContext, string, string, string | undefined];
  const v1 = Object.hasOwn(V1, permissions) ? V1[permissions] : undefined;
  const v2 = v1 ? undefined : v2Interactions(permissions);
  if (!v1 && !v2) return undefined;
  if (rawQuery === undefined) {
    return { text: token, context, resourceType, interactions: (v1 ?? v2) as Interaction[], version: v1 ? 1 : 2 };
  }
  // Only v2 scopes take a query, and it must name at least one parameter.
  if (v1 || rawQuery === '') return undefined;
  const query = [...new URLSearchParams(rawQuery)].map(([k, v]) => [k, v] as const);
  if (query.length === 0 || query.some(([k]) => k === '')) return undefined;
  return { text: token, context, resourceType, interactions: v2 as Interaction[], version: 2, query };
}

/**
 * Parses a space-separated scope string (RFC 6749 §3.3). Non-resource scopes (`openid`,
 * `offline_access`, `launch`, …) are dropped silently; anything else that is not a well-formed
 * resource scope is listed in `invalid`.
 */
export function parseScopes(scopeString: string | undefined): { scopes: Scope[]; invalid: string[] } {
  const scopes: Scope[] = [];
  const invalid: string[] = [];
  const seen = new Set<string>();
  for (const token of (scopeString ?? '').split(/[ \t\r\n]+/)) {
    if (token === '' || NON_RESOURCE.test(token)) continue;
    const scope = parseScope(token);
    if (!scope) invalid.push(token);
    else if (!seen.has(scope.text)) {
      seen.add(scope.text);
      scopes.push(scope);
    }
  }
  return { scopes, invalid };
}

/** Whether a scope is one this server honours at all: `system/` context. */
const honoured = (s: Scope): boolean => s.context === 'system';

/**
 * Types a wildcard scope does not cover: a client must be registered for them by name. AuditEvents
 * (the record of every access) are for whoever audits, not for every client with `system/*.*`.
 */
export const NAMED_SCOPE_ONLY: ReadonlySet<string> = new Set(['AuditEvent']);

const covers = (s: Scope, resourceType: string): boolean =>
  s.resourceType === resourceType || (s.resourceType === '*' && !NAMED_SCOPE_ONLY.has(resourceType));

/**
 * Whether the granted scopes allow `interaction` on every resource of `resourceType` (use `*` for
 * system-level search and history, which only a wildcard scope allows). Constrained scopes (with a
 * query) never count here; see `accessFor`.
 */
export function permits(granted: readonly Scope[], resourceType: string, interaction: Interaction): boolean {
  return granted.some((s) => honoured(s) && !s.query && covers(s, resourceType) && s.interactions.includes(interaction));
}

/** What the granted scopes allow for one resource type and interaction. */
export type Access =
  | { kind: 'all' }
  /** Only resources matching one of these searches (each an AND of its pairs; OR across them). */
  | { kind: 'constrained'; queries: (readonly (readonly [string, string])[])[] }
  | { kind: 'none' };

/**
 * Like `permits`, but also reports constrained v2 scopes for reads and searches: a search must be
 * restricted to resources matching one of the queries, and a read must check that the resource
 * matches one. Constrained scopes never allow create, update or delete.
 */
export function accessFor(granted: readonly Scope[], resourceType: string, interaction: Interaction): Access {
  if (permits(granted, resourceType, interaction)) return { kind: 'all' };
  if (interaction !== 'read' && interaction !== 'search') return { kind: 'none' };
  const queries = granted.filter((s) => honoured(s) && s.query && covers(s, resourceType) && s.interactions.includes(interaction)).map((s) => [...(s.query ?? [])]);
  return queries.length > 0 ? { kind: 'constrained', queries } : { kind: 'none' };
}

/**
 * The resource types the granted scopes allow `interaction` on without constraint: `*` for all,
 * else a sorted list (for system-level search and history, which must then be limited to them).
 */
export function permittedTypes(granted: readonly Scope[], interaction: Interaction): '*' | string[] {
  const types = new Set<string>();
  for (const s of granted) {
    if (!honoured(s) || s.query || !s.interactions.includes(interaction)) continue;
    if (s.resourceType === '*') return '*';
    types.add(s.resourceType);
  }
  return [...types].sort();
}

/** The query of a scope as written, without its `?` ('' when none). */
const rawQuery = (s: Scope): string => (s.query ? s.text.slice(s.text.indexOf('?') + 1) : '');

/** The scope text for a context, type and interactions in v2 letters, with the queries as written. */
function v2Text(context: ScopeContext, resourceType: string, interactions: readonly Interaction[], queries: string[]): string {
  const letters = LETTERS.filter(([, i]) => interactions.includes(i)).map(([l]) => l).join('');
  const q = queries.filter((x) => x !== '').join('&');
  return `${context}/${resourceType}.${letters}${q ? `?${q}` : ''}`;
}

/** The intersection of one requested and one allowed scope, or undefined when they share nothing. */
function intersect(requested: Scope, allowed: Scope): Scope | undefined {
  if (requested.context !== allowed.context) return undefined;
  const resourceType = requested.resourceType === '*' ? allowed.resourceType : requested.resourceType;
  if (!covers(allowed, resourceType)) return undefined;
  // Both queries apply (AND); a constrained scope keeps its reads and searches only.
  const query = [...(requested.query ?? []), ...(allowed.query ?? [])];
  const interactions = requested.interactions.filter(
    (i) => allowed.interactions.includes(i) && (query.length === 0 || i === 'read' || i === 'search'),
  );
  if (interactions.length === 0) return undefined;
  // The request as written, when it is granted whole; else the v2 form of what remains.
  const whole = resourceType === requested.resourceType && interactions.length === requested.interactions.length && !allowed.query;
  const text = whole ? requested.text : v2Text(requested.context, resourceType, interactions, [rawQuery(requested), rawQuery(allowed)]);
  return { text, context: requested.context, resourceType, interactions, version: whole ? requested.version : 2, ...(query.length > 0 ? { query } : {}) };
}

/**
 * What to grant: every requested scope cut down to what the client is registered for (SMART
 * Backend Services, "Evaluate Requested Access"; RFC 6749 §3.3 lets the server grant less).
 * Asking for more than registered yields the registered subset; an empty result means
 * `invalid_scope`. Duplicates are dropped; the order follows the request.
 */
export function narrow(requested: readonly Scope[], allowed: readonly Scope[]): Scope[] {
  const out: Scope[] = [];
  const seen = new Set<string>();
  for (const r of requested) {
    for (const a of allowed) {
      const s = intersect(r, a);
      if (s && !seen.has(s.text)) {
        seen.add(s.text);
        out.push(s);
      }
    }
  }
  return out;
}

/** The granted scopes as the space-separated `scope` value of a token response. */
export function formatScopes(scopes: readonly Scope[]): string {
  return scopes.map((s) => s.text).join(' ');
}

/** Keeps the scopes this server honours (the `system/` context). */
export function honouredScopes(scopes: readonly Scope[]): Scope[] {
  return scopes.filter(honoured);
}
