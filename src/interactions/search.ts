/**
 * search: https://hl7.org/fhir/R4/http.html#search  https://hl7.org/fhir/R4/search.html
 * GET [base]/[type]?… and POST [base]/[type]/_search (form body), answered with a searchset
 * Bundle: matches, then included resources, then an outcome entry when parameters were ignored.
 */
import type { Bundle, BundleEntry, BundleLink, OperationOutcome } from 'fhir/r4.js';
import { ERROR_CODE_SYSTEM } from '../fhir/errors.js';
import type { JsonResource } from '../fhir/resource.js';
import { selectElements, summarize } from '../fhir/summary.js';
import { encodeCursor, parseSearch } from '../search/parse.js';
import type { IncludeSpec, SearchQuery, SearchWarning } from '../search/query.js';
import { allows, authorizeJoins, type FhirContext, type FhirRequest, type FhirResponse, type Interaction } from './types.js';
import { requireType } from './params.js';

/** At most this many resources are added by _include and _revinclude to one page. */
export const MAX_INCLUDED = 1000;
/** `:iterate` follows references at most this many levels deep. */
const MAX_ITERATIONS = 4;

export async function searchType(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const resourceType = requireType(req);
  const params = Object.create(null) as Record<string, string[]>;
  for (const source of [req.query, req.form ?? {}]) for (const [k, v] of Object.entries(source)) (params[k] ??= []).push(...v);
  const { query, warnings } = parseSearch(resourceType, params, { fhirBase: ctx.fhirBase, lenient: req.handling === 'lenient' });
  authorizeJoins(ctx, query);
  const bundle = await runSearch(ctx, query, params, warnings);
  return { status: 200, resource: bundle };
}

export async function runSearch(ctx: FhirContext, query: SearchQuery, params: Record<string, string[]>, warnings: SearchWarning[]): Promise<Bundle> {
  const bundle: Bundle = { resourceType: 'Bundle', type: 'searchset' };
  if (query.summary === 'count') {
    bundle.total = await ctx.repo.count(query);
    bundle.link = [link(ctx, query, params, 'self')];
    return bundle;
  }
  const page = await ctx.repo.search(query);
  const total =
    query.total === 'accurate'
      ? await ctx.repo.count(query)
      : query.total === 'estimate'
        ? await ctx.repo.estimate(query)
        : query.total === undefined && !query.cursor && !page.next
          ? page.rows.length
          : undefined;
  if (total !== undefined) bundle.total = total;
  bundle.link = [link(ctx, query, params, 'self', query.cursor ? encodeCursor(query.cursor) : undefined)];
  if (page.next) bundle.link.push(link(ctx, query, params, 'next', encodeCursor({ ...page.next, direction: 'next' })));
  if (page.previous) bundle.link.push(link(ctx, query, params, 'previous', encodeCursor({ ...page.previous, direction: 'previous' })));

  const matches = page.rows.map((r) => JSON.parse(r.json) as JsonResource);
  const included = await includes(ctx, query, matches);
  const shape = (resource: JsonResource): JsonResource => {
    if (query.elements && query.elements.length > 0) {
      const { resource: selected, unknown } = selectElements(resource, query.elements);
      for (const name of unknown) {
        if (!warnings.some((w) => w.parameter === '_elements' && w.message.includes(`'${name}'`))) {
          warnings.push({ parameter: '_elements', message: `'${name}' is not an element of ${resource.resourceType}; ignored` });
        }
      }
      return selected;
    }
    if (query.summary === 'true' || query.summary === 'text' || query.summary === 'data') return summarize(resource, query.summary);
    return resource;
  };
  bundle.entry = [
    ...matches.map((r) => entry(ctx, shape(r), 'match')),
    ...included.map((r) => entry(ctx, shape(r), 'include')),
  ];
  if (warnings.length > 0) bundle.entry.push({ resource: warningOutcome(warnings), search: { mode: 'outcome' } });
  return bundle;
}

function entry(ctx: FhirContext, resource: JsonResource, mode: 'match' | 'include'): BundleEntry {
  return { fullUrl: `${ctx.fhirBase}/${resource.resourceType}/${resource.id}`, resource: resource, search: { mode } };
}

function warningOutcome(warnings: SearchWarning[]): OperationOutcome {
  return {
    resourceType: 'OperationOutcome',
    issue: warnings.map((w) => ({
      severity: 'warning',
      code: 'not-supported',
      details: { coding: [{ system: ERROR_CODE_SYSTEM, code: 'search-parameter-ignored' }], text: w.message },
      diagnostics: w.message,
      expression: [w.parameter],
    })),
  };
}

/** The search's own URL: every parameter as received, with the page's cursor. */
function link(ctx: FhirContext, query: SearchQuery, params: Record<string, string[]>, relation: string, cursor?: string): BundleLink {
  const search = new URLSearchParams();
  for (const [name, values] of Object.entries(params)) {
    if (name === '_cursor') continue;
    for (const v of values) search.append(name, v);
  }
  if (cursor) search.set('_cursor', cursor);
  const qs = search.toString();
  return { relation, url: `${ctx.fhirBase}/${query.resourceType}${qs ? `?${qs}` : ''}` };
}

type Key = { type: string; id: string };
const keyOf = (k: Key): string => `${k.type}/${k.id}`;

/** _include and _revinclude, with :iterate followed a few levels, each resource once. */
async function includes(ctx: FhirContext, query: SearchQuery, matches: JsonResource[]): Promise<JsonResource[]> {
  if (query.include.length === 0 && query.revinclude.length === 0) return [];
  const seen = new Set(matches.map((m) => keyOf({ type: m.resourceType, id: m.id as string })));
  const out: JsonResource[] = [];
  let frontier: Key[] = matches.map((m) => ({ type: m.resourceType, id: m.id as string }));
  for (let round = 0; round < MAX_ITERATIONS && frontier.length > 0 && out.length < MAX_INCLUDED; round++) {
    const applies = (spec: IncludeSpec): boolean => round === 0 || spec.iterate;
    const wanted: Key[] = [];
    for (const spec of query.include.filter(applies)) {
      const ids = frontier.filter((k) => k.type === spec.sourceType).map((k) => k.id);
      wanted.push(...(await ctx.repo.referencesFrom(spec.sourceType, ids, spec.param, spec.targetType)));
    }
    for (const spec of query.revinclude.filter(applies)) {
      const ids = await ctx.repo.referencesTo(spec.sourceType, spec.param, frontier, spec.targetType);
      wanted.push(...ids.map((id) => ({ type: spec.sourceType, id })));
    }
    const fresh = wanted.filter((k) => {
      // Only types the caller may read are included (and followed further).
      if (!allows(ctx, k.type, 'read')) return false;
      const key = keyOf(k);
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    });
    const found = await ctx.repo.readMany(fresh.slice(0, MAX_INCLUDED - out.length));
    const resources = found.map((v) => JSON.parse(v.json as string) as JsonResource);
    out.push(...resources);
    frontier = resources.map((r) => ({ type: r.resourceType, id: r.id as string }));
  }
  return out;
}

export const search: Interaction = { code: 'search-type', level: 'type', method: 'GET', path: '/:type', handle: searchType };
export const searchPost: Interaction = { code: 'search-type', level: 'type', method: 'POST', path: '/:type/_search', body: 'form', handle: searchType };
