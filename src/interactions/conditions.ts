/**
 * Search criteria of conditional interactions (If-None-Exist, conditional update and delete,
 * conditional references in Bundles), parsed with the search engine so that any search
 * parameter can be used. https://hl7.org/fhir/R4/http.html#cond-update
 */
import { fhirError } from '../fhir/errors.js';
import { parseSearch } from '../search/parse.js';
import type { Condition } from '../store/repository.js';
import { authorizeJoins, type FhirContext } from './types.js';

/** Query-string parameters as name → values, in order; no prototype, so a parameter may be called valueOf or __proto__. */
export function queryParams(query: string): Record<string, string[]> {
  const out = Object.create(null) as Record<string, string[]>;
  for (const [name, value] of new URLSearchParams(query)) (out[name] ??= []).push(value);
  return out;
}

export function conditionOf(ctx: FhirContext, resourceType: string, params: Record<string, string[]>, where: string): Condition {
  const names = Object.keys(params).filter((n) => !['_format', '_pretty'].includes(n));
  if (names.length === 0) throw fhirError('invalid-search-value', `${where} holds no search criteria`, where);
  for (const n of names) {
    if (n.startsWith('_') && !['_id', '_lastUpdated', '_tag', '_profile', '_security', '_source'].includes(n.split(':')[0] as string) && !n.startsWith('_has:')) {
      throw fhirError('invalid-search-value', `${where}: '${n}' is not a search criterion`, where);
    }
  }
  let parsed;
  try {
    parsed = parseSearch(resourceType, params, { fhirBase: ctx.fhirBase, lenient: false });
  } catch (error) {
    // Name where the criteria came from, keeping the problem's own code and message.
    const e = error as { problems?: { expression?: string }[] };
    for (const p of e.problems ?? []) p.expression = where;
    throw error;
  }
  // Criteria search the type (and what their chains reach): a caller who may not search them
  // must not learn, from a conditional reference or write, whether a match exists.
  ctx.authorize?.(resourceType, ['search']);
  authorizeJoins(ctx, parsed.query);
  // One lock key per distinct set of criteria: the same criteria, in any order, serialise.
  const canonical = names
    .sort()
    .map((n) => `${n}=${[...(params[n] ?? [])].sort().join('&')}`)
    .join('&');
  return { query: { ...parsed.query, count: 2 }, lockKey: `${resourceType}?${canonical}` };
}
