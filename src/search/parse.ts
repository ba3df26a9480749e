/**
 * Parses the parameters of a search into a SearchQuery, checking every name, modifier, prefix and
 * value against the published SearchParameter definitions. Every value that reaches the store is
 * typed and checked here; the store binds them as parameters, never as SQL text.
 * https://hl7.org/fhir/R4/search.html
 */
import { fhirError, type FhirError } from '../fhir/errors.js';
import { isResourceType } from '../fhir/resource-types.js';
import { INDEXED_ONLY, searchRegistry, type SearchParamDef, type SearchParamType } from './definitions.js';
import { isTokenQuantity, localReference } from './extract.js';
import type { Alternative, Cursor, Filter, IncludeSpec, Prefix, SearchQuery, SearchWarning, SortKey } from './query.js';
import { dateRange, normalizeString, numberRange, type DateRange } from './values.js';

export const DEFAULT_COUNT = 50;
export const MAX_COUNT = 1000;
const MAX_CHAIN_DEPTH = 2;
const MAX_VALUES = 100;

/** Result parameters that are not filters. `_format` and `_pretty` are handled by the HTTP layer. */
const CONTROL = new Set(['_count', '_sort', '_total', '_summary', '_elements', '_include', '_revinclude', '_cursor', '_format', '_pretty']);

/** Modifiers by parameter type. https://hl7.org/fhir/R4/search.html#modifiers */
const MODIFIERS: Record<SearchParamType, readonly string[]> = {
  string: ['missing', 'exact', 'contains'],
  token: ['missing', 'not', 'text'],
  reference: ['missing', 'identifier'],
  uri: ['missing', 'above', 'below'],
  date: ['missing'],
  number: ['missing'],
  quantity: ['missing'],
  composite: [],
};

export const SUPPORTED_MODIFIERS = MODIFIERS;

const PREFIXES: readonly Prefix[] = ['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb', 'ap'];

export interface ParseOptions {
  fhirBase: string;
  /** Prefer: handling=lenient: unknown parameters are ignored with a warning instead of an error. */
  lenient: boolean;
  /** Search pairs of filters as the composite they amount to (see combineRootedComposites); default true. */
  combine?: boolean;
}

export interface ParsedSearch {
  query: SearchQuery;
  warnings: SearchWarning[];
}

type IndexedType = Exclude<SearchParamType, 'composite'>;

/** The most AND-ed criteria (repeated or distinct parameters) one search may have. */
export const MAX_FILTERS = 32;

export function parseSearch(resourceType: string, params: Record<string, string[]>, options: ParseOptions): ParsedSearch {
  const warnings: SearchWarning[] = [];
  const query: SearchQuery = { resourceType, filters: [], sort: [], count: DEFAULT_COUNT, include: [], revinclude: [] };
  const unknown = (name: string, error: FhirError): void => {
    if (!options.lenient) throw error;
    warnings.push({ parameter: name, message: error.problems[0]?.message ?? error.message });
  };
  for (const [name, values] of Object.entries(params)) {
    // PostgreSQL text cannot hold NUL; no FHIR value contains it.
    if (name.includes('\u0000') || values.some((v) => v.includes('\u0000'))) {
      throw fhirError('invalid-search-value', `${JSON.stringify(name)}: a search value cannot contain the NUL character`, name.split('\u0000').join(''));
    }
    const iterate = /^(_include|_revinclude):(iterate|recurse)$/.exec(name);
    if (iterate) {
      const kind = iterate[1] as '_include' | '_revinclude';
      (kind === '_include' ? query.include : query.revinclude).push(...parseIterate(kind, values));
      continue;
    }
    if (CONTROL.has(name)) {
      parseControl(query, name, values, warnings, options);
      continue;
    }
    for (const value of values) {
      try {
        query.filters.push(parseFilter(resourceType, name, value, options, 0));
      } catch (error) {
        const e = error as FhirError;
        const code = e.problems?.[0]?.code;
        if (code === 'unknown-parameter' || code === 'unsupported-search-parameter') unknown(name, e);
        else throw error;
      }
    }
  }
  // Each AND-ed filter is a join: past a few dozen, a search costs seconds to minutes (a cheap denial of service).
  if (query.filters.length > MAX_FILTERS) {
    throw fhirError('invalid-search-value', `A search may combine at most ${MAX_FILTERS} criteria (this one has ${query.filters.length}); use comma-separated values for OR`);
  }
  if (options.combine !== false) query.filters = combineRootedComposites(resourceType, query.filters);
  if (query.cursor) checkCursorValues(query);
  checkAuditQuery(query);
  return { query, warnings };
}

/** Per resource type, its token-and-quantity composites over the resource itself. */
const ROOTED_COMPOSITES = new Map<string, SearchParamDef[]>();

/** The most alternatives a pair of filters is combined into (their product). */
const MAX_COMBINED = 100;

/**
 * `Observation?code=X&value-quantity=gt5` asks for what `code-value-quantity=X$gt5` asks: that
 * composite's one base is the Observation itself, and its components are the very parameters
 * `code` and `value-quantity`. Such a pair of filters is searched as the composite, whose index
 * holds code and value in one row: one index range instead of the join of every Observation with
 * the code and every Observation with a value above 5 (tens of thousands each at scale).
 * Only token-and-quantity composites are combined, and only plain filters (no modifier).
 */
function combineRootedComposites(resourceType: string, filters: Filter[]): Filter[] {
  const registry = searchRegistry();
  let out = filters;
  let composites = ROOTED_COMPOSITES.get(resourceType);
  if (!composites) {
    composites = registry.params(resourceType).filter((def) => def.rooted && isTokenQuantity(def));
    ROOTED_COMPOSITES.set(resourceType, composites);
  }
  for (const def of composites) {
    const [tokenParam, quantityParam] = (def.components ?? []).map((c) => c.param);
    if (!tokenParam || !quantityParam) continue;
    // The component must be the resource's own parameter of that code, not a namesake.
    if (registry.get(resourceType, tokenParam.code)?.url !== tokenParam.url || registry.get(resourceType, quantityParam.code)?.url !== quantityParam.url) continue;
    const token = out.find(
      (f): f is Extract<Filter, { kind: 'param' }> =>
        f.kind === 'param' && f.param === tokenParam.code && f.table === 'token' && !f.negate && f.alternatives.every((a) => a.type === 'token' && a.text === undefined),
    );
    const quantity = out.find(
      (f): f is Extract<Filter, { kind: 'param' }> =>
        f.kind === 'param' && f.param === quantityParam.code && f.table === 'quantity' && !f.negate && f.alternatives.every((a) => a.type === 'quantity'),
    );
    if (!token || !quantity || token.alternatives.length * quantity.alternatives.length > MAX_COMBINED) continue;
    const combined: Filter = {
      kind: 'composite',
      param: def.code,
      tables: ['token', 'quantity'],
      alternatives: token.alternatives.flatMap((t) => quantity.alternatives.map((q): Alternative => ({ type: 'composite', components: [t, q] }))),
    };
    out = [...out.filter((f) => f !== token && f !== quantity), combined];
  }
  return out;
}

function single(name: string, values: string[]): string {
  if (values.length > 1) throw fhirError('repeated-parameter', `${name} may be given once`, name);
  return values[0] ?? '';
}

function parseControl(query: SearchQuery, name: string, values: string[], warnings: SearchWarning[], options: ParseOptions): void {
  switch (name) {
    case '_count': {
      const v = single(name, values);
      if (!/^\d{1,7}$/.test(v)) throw fhirError('invalid-count', `_count must be a whole number from 0 to ${MAX_COUNT}`, '_count');
      query.count = Math.min(Number(v), MAX_COUNT);
      return;
    }
    case '_total': {
      const v = single(name, values);
      if (v !== 'none' && v !== 'estimate' && v !== 'accurate') throw fhirError('invalid-search-value', '_total must be none, estimate or accurate', '_total');
      query.total = v;
      return;
    }
    case '_summary': {
      const v = single(name, values);
      if (!['true', 'text', 'data', 'count', 'false'].includes(v)) {
        throw fhirError('invalid-search-value', '_summary must be true, text, data, count or false', '_summary');
      }
      query.summary = v as SearchQuery['summary'];
      return;
    }
    case '_elements':
      query.elements = values.flatMap((v) => v.split(',')).map((e) => e.trim()).filter(Boolean);
      for (const e of query.elements) {
        if (!/^[A-Za-z][A-Za-z0-9]*$/.test(e)) throw fhirError('invalid-search-value', `_elements: '${e}' is not an element name`, '_elements');
      }
      return;
    case '_sort':
      for (const key of values.flatMap((v) => v.split(','))) query.sort.push(parseSortKey(query.resourceType, key.trim(), options, warnings));
      return;
    case '_include':
    case '_revinclude':
      for (const v of values) (name === '_include' ? query.include : query.revinclude).push(parseInclude(name, v));
      return;
    case '_cursor':
      query.cursor = parseCursor(single(name, values));
      return;
    default:
      return; // _format, _pretty
  }
}

function parseSortKey(resourceType: string, key: string, options: ParseOptions, warnings: SearchWarning[]): SortKey {
  const descending = key.startsWith('-');
  const param = descending ? key.slice(1) : key;
  if (param === '_id' || param === '_lastUpdated') return { param, descending };
  const def = searchRegistry().get(resourceType, param);
  if (!def || def.type === 'composite') {
    const error = fhirError('unknown-parameter', `_sort: '${param}' is not a search parameter of ${resourceType} that can be sorted on`, '_sort');
    if (!options.lenient) throw error;
    warnings.push({ parameter: '_sort', message: error.message });
    return { param: '_id', descending: false };
  }
  return { param, table: def.type, descending };
}

function parseInclude(name: string, value: string): IncludeSpec {
  const parts = value.split(':');
  const [sourceType, param, targetType] = parts;
  if (parts.length < 2 || parts.length > 3 || !sourceType || !param || !isResourceType(sourceType)) {
    throw fhirError('invalid-search-value', `${name} must be SourceType:parameter[:TargetType], not '${value}'`, name);
  }
  if (param !== '*') {
    const def = searchRegistry().get(sourceType, param);
    if (!def || def.type !== 'reference') throw fhirError('unknown-parameter', `${name}: '${param}' is not a reference parameter of ${sourceType}`, name);
  }
  if (targetType !== undefined && !isResourceType(targetType)) throw fhirError('invalid-search-value', `${name}: '${targetType}' is not a resource type`, name);
  return { sourceType, param, ...(targetType ? { targetType } : {}), iterate: false };
}

/** `_include:iterate` and `_revinclude:iterate` are read by the caller with the parameter's own name. */
export function parseIterate(name: '_include' | '_revinclude', values: string[]): IncludeSpec[] {
  return values.map((v) => ({ ...parseInclude(name, v), iterate: true }));
}

function parseCursor(value: string): Cursor {
  try {
    const json = JSON.parse(Buffer.from(value, 'base64url').toString('utf8')) as unknown;
    if (json && typeof json === 'object' && !Array.isArray(json)) {
      const c = json as Record<string, unknown>;
      const values = c.v;
      if (
        Array.isArray(values) &&
        values.length <= 10 &&
        values.every((x) => x === null || typeof x === 'string') &&
        typeof c.id === 'string' &&
        (c.d === 'n' || c.d === 'p')
      ) {
        return { values: values as (string | null)[], id: c.id, direction: c.d === 'n' ? 'next' : 'previous' };
      }
    }
  } catch {
    // falls through to the error
  }
  throw fhirError('invalid-cursor', '_cursor is not a cursor this server issued', '_cursor');
}

const NUMERIC = /^-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$/;
/** A timestamptz as PostgreSQL writes it as text (2026-11-23 19:00:00.123+00), or ISO 8601. */
const INSTANT = /^-?\d{4,}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}(:?\d{2}){0,2})?( BC)?$|^-?infinity$/;

/** PostgreSQL's text form of a timestamptz as ISO 8601, for Date.parse to check its ranges. */
function isoOf(value: string): string {
  return value.replace(' ', 'T').replace(/([+-]\d{2})$/, '$1:00').replace(/([+-]\d{2})(\d{2})$/, '$1:$2');
}

/**
 * A cursor's values are compared in SQL with the sort keys' columns: each must be of its key's
 * type (a date an instant, a number a number), or the cursor is not one this server issued.
 */
function checkCursorValues(query: SearchQuery): void {
  const cursor = query.cursor as Cursor;
  const keys = query.sort.filter((k) => k.param !== '_id');
  const bad = (): never => {
    throw fhirError('invalid-cursor', '_cursor is not a cursor this server issued (for this _sort)', '_cursor');
  };
  if (cursor.values.length > keys.length) bad();
  cursor.values.forEach((value, i) => {
    if (value === null) return;
    const key = keys[i] as SortKey;
    const kind = key.param === '_lastUpdated' ? 'date' : key.table;
    if (kind === 'date' && (!INSTANT.test(value) || (!value.endsWith('infinity') && !value.endsWith(' BC') && Number.isNaN(Date.parse(isoOf(value)))))) bad();
    if ((kind === 'number' || kind === 'quantity') && !NUMERIC.test(value)) bad();
  });
}

export function encodeCursor(cursor: Cursor): string {
  return Buffer.from(JSON.stringify({ v: cursor.values, id: cursor.id, d: cursor.direction === 'next' ? 'n' : 'p' })).toString('base64url');
}

/** Splits on unescaped `sep`, keeping escapes (they are removed by unescape). */
export function splitUnescaped(value: string, sep: string): string[] {
  const out: string[] = [];
  let current = '';
  for (let i = 0; i < value.length; i++) {
    const c = value[i] as string;
    if (c === '\\' && i + 1 < value.length) {
      current += c + (value[i + 1] as string);
      i++;
    } else if (c === sep) {
      out.push(current);
      current = '';
    } else {
      current += c;
    }
  }
  out.push(current);
  return out;
}

export function unescapeValue(s: string): string {
  return s.replace(/\\([\\,|$])/g, '$1');
}

function invalid(name: string, message: string): FhirError {
  return fhirError('invalid-search-value', message, name);
}

function parseFilter(resourceType: string, name: string, raw: string, options: ParseOptions, depth: number): Filter {
  if (name.startsWith('_has:')) return parseHas(resourceType, name, raw, options, depth);
  const dot = name.indexOf('.');
  if (dot > 0) return parseChain(resourceType, name, dot, raw, options, depth);
  const [code, modifier, ...rest] = name.split(':');
  if (!code || rest.length > 0) throw fhirError('unknown-parameter', `'${name}' is not a valid search parameter name`, name);
  const values = splitUnescaped(raw, ',');
  if (values.length > MAX_VALUES) throw invalid(name, `${name} has more than ${MAX_VALUES} values`);
  if (code === '_id') {
    if (modifier !== undefined) throw fhirError('unsupported-search-parameter', `_id supports no modifier ('${modifier}')`, name);
    if (values.some((v) => v === '')) throw invalid(name, '_id has an empty value');
    return { kind: 'id', ids: values.map(unescapeValue) };
  }
  if (code === '_lastUpdated') {
    if (modifier !== undefined) throw fhirError('unsupported-search-parameter', `_lastUpdated supports no modifier ('${modifier}')`, name);
    return { kind: 'lastUpdated', alternatives: values.map((v) => parseDate(name, v)) };
  }
  const def = searchRegistry().get(resourceType, code);
  if (!def) {
    const only = INDEXED_ONLY.get(resourceType);
    const which = only ? ` (${resourceType} is searchable by _id, _lastUpdated, ${[...only].join(', ')})` : '';
    throw fhirError('unknown-parameter', `'${code}' is not a search parameter of ${resourceType}${which}`, name);
  }
  if (modifier === 'missing') {
    if (raw !== 'true' && raw !== 'false') throw invalid(name, `${name} must be true or false`);
    if (def.type === 'composite') throw fhirError('unsupported-search-parameter', `:missing is not supported on composite parameter '${code}'`, name);
    return { kind: 'missing', param: code, table: def.type, missing: raw === 'true' };
  }
  if (modifier !== undefined && def.type === 'reference' && isResourceType(modifier)) {
    if (def.targets.length > 0 && !def.targets.includes(modifier)) throw invalid(name, `${code} cannot refer to ${modifier}`);
    return { kind: 'param', param: code, table: 'reference', alternatives: values.map((v) => parseReferenceValue(name, def, v, options, modifier)) };
  }
  if (modifier !== undefined && !MODIFIERS[def.type].includes(modifier)) {
    throw fhirError('unsupported-search-parameter', `Modifier ':${modifier}' is not supported on ${def.type} parameter '${code}'`, name);
  }
  if (values.some((v) => v === '')) throw invalid(name, `${name} has an empty value`);
  if (def.type === 'composite') {
    const components = def.components ?? [];
    return {
      kind: 'composite',
      param: code,
      tables: components.map((c) => c.param.type as IndexedType),
      alternatives: values.map((v) => {
        const parts = splitUnescaped(v, '$');
        if (parts.length !== components.length) throw invalid(name, `${name} needs ${components.length} components separated by $, got '${v}'`);
        return { type: 'composite', components: parts.map((p, i) => parseValue(name, (components[i] as { param: SearchParamDef }).param, undefined, p, options)) };
      }),
    };
  }
  if (modifier === 'identifier') {
    return { kind: 'param', param: code, table: 'reference', alternatives: values.map((v) => identifierValue(v)) };
  }
  return {
    kind: 'param',
    param: code,
    table: def.type,
    alternatives: values.map((v) => parseValue(name, def, modifier, v, options)),
    ...(modifier === 'not' ? { negate: true } : {}),
  };
}

function identifierValue(v: string): Alternative {
  const parts = splitUnescaped(v, '|');
  if (parts.length === 1) return { type: 'identifier', value: unescapeValue(parts[0] as string) };
  const system = unescapeValue(parts[0] as string);
  const value = unescapeValue(parts.slice(1).join('|'));
  return { type: 'identifier', system: system === '' ? null : system, ...(value !== '' ? { value } : {}) };
}

function parseValue(name: string, def: SearchParamDef, modifier: string | undefined, raw: string, options: ParseOptions): Alternative {
  switch (def.type) {
    case 'string': {
      const value = unescapeValue(raw);
      if (modifier === 'exact') return { type: 'string', mode: 'exact', value };
      return { type: 'string', mode: modifier === 'contains' ? 'contains' : 'start', value: normalizeString(value) };
    }
    case 'token': {
      if (modifier === 'text') return { type: 'token', text: normalizeString(unescapeValue(raw)) };
      const parts = splitUnescaped(raw, '|');
      if (parts.length === 1) return { type: 'token', code: unescapeValue(parts[0] as string) };
      if (parts.length > 2) throw invalid(name, `${name}: '${raw}' has more than one unescaped |`);
      const system = unescapeValue(parts[0] as string);
      const code = unescapeValue(parts[1] as string);
      return { type: 'token', system: system === '' ? null : system, ...(code !== '' ? { code } : {}) };
    }
    case 'date':
      return parseDate(name, raw);
    case 'number': {
      const { prefix, rest } = splitPrefix(raw);
      const range = numberRange(rest);
      if (!range) throw invalid(name, `${name}: '${raw}' is not a number`);
      return { type: 'number', prefix, range };
    }
    case 'quantity': {
      const parts = splitUnescaped(raw, '|');
      if (parts.length !== 1 && parts.length !== 3) throw invalid(name, `${name}: '${raw}' must be [prefix]number or [prefix]number|system|code`);
      const { prefix, rest } = splitPrefix(parts[0] as string);
      const range = numberRange(rest);
      if (!range) throw invalid(name, `${name}: '${raw}' does not start with a number`);
      const system = parts[1] ? unescapeValue(parts[1]) : undefined;
      const code = parts[2] ? unescapeValue(parts[2]) : undefined;
      return { type: 'quantity', prefix, range, ...(system ? { system } : {}), ...(code ? { code } : {}) };
    }
    case 'reference':
      return parseReferenceValue(name, def, raw, options, undefined);
    case 'uri':
      return { type: 'uri', mode: modifier === 'above' ? 'above' : modifier === 'below' ? 'below' : 'eq', value: unescapeValue(raw) };
    case 'composite':
      throw invalid(name, `${name}: a composite inside a composite is not supported`);
  }
}

function parseReferenceValue(name: string, def: SearchParamDef, raw: string, options: ParseOptions, typeModifier: string | undefined): Alternative {
  const value = unescapeValue(raw);
  if (/^[A-Za-z0-9\-.]{1,64}$/.test(value)) {
    if (typeModifier) return { type: 'reference', targetType: typeModifier, id: value };
    return { type: 'reference', id: value };
  }
  const parsed = localReference(value, options.fhirBase);
  if (!parsed) throw invalid(name, `${name}: '${raw}' is not a reference`);
  if ('url' in parsed) return { type: 'reference', url: parsed.url };
  if (typeModifier && parsed.type !== typeModifier) throw invalid(name, `${name}: '${raw}' is not a ${typeModifier}`);
  if (def.targets.length > 0 && !def.targets.includes(parsed.type)) throw invalid(name, `${def.code} cannot refer to ${parsed.type}`);
  return { type: 'reference', targetType: parsed.type, id: parsed.id };
}

function splitPrefix(raw: string): { prefix: Prefix; rest: string } {
  const p = raw.slice(0, 2) as Prefix;
  if (PREFIXES.includes(p) && raw.length > 2) return { prefix: p, rest: raw.slice(2) };
  return { prefix: 'eq', rest: raw };
}

function parseDate(name: string, raw: string): Alternative {
  const { prefix, rest } = splitPrefix(raw);
  // A search dateTime may omit the time zone (read as UTC) and the seconds.
  const range = dateRange(rest);
  if (!range) throw invalid(name, `${name}: '${raw}' is not a date (YYYY, YYYY-MM, YYYY-MM-DD or a dateTime with time zone)`);
  return { type: 'date', prefix, range, approx: approximately(range) };
}

/** `ap` on dates: the value's range widened by 10 % of its distance from now, at least a day. */
function approximately(range: DateRange): DateRange {
  const lo = Date.parse(range.lo);
  const hi = Date.parse(range.hi);
  const widen = Math.max(0.1 * Math.abs(Date.now() - (lo + hi) / 2), 86_400_000);
  return { lo: new Date(lo - widen).toISOString(), hi: new Date(hi + widen).toISOString() };
}

function parseChain(resourceType: string, name: string, dot: number, raw: string, options: ParseOptions, depth: number): Filter {
  if (depth >= MAX_CHAIN_DEPTH) throw fhirError('unsupported-search-parameter', `'${name}': chains are supported to ${MAX_CHAIN_DEPTH} levels`, name);
  const head = name.slice(0, dot);
  const rest = name.slice(dot + 1);
  const [code, typeModifier, ...extra] = head.split(':');
  if (!code || extra.length > 0) throw fhirError('unknown-parameter', `'${name}' is not a valid chained parameter`, name);
  const def = searchRegistry().get(resourceType, code);
  if (!def) {
    const only = INDEXED_ONLY.get(resourceType);
    const which = only ? ` (${resourceType} is searchable by _id, _lastUpdated, ${[...only].join(', ')})` : '';
    throw fhirError('unknown-parameter', `'${code}' is not a search parameter of ${resourceType}${which}`, name);
  }
  if (def.type !== 'reference') throw invalid(name, `'${code}' is not a reference parameter and cannot be chained`);
  let targets = typeModifier ? [typeModifier] : [...def.targets];
  if (typeModifier && !isResourceType(typeModifier)) throw invalid(name, `'${typeModifier}' is not a resource type`);
  if (typeModifier && def.targets.length > 0 && !def.targets.includes(typeModifier)) throw invalid(name, `${code} cannot refer to ${typeModifier}`);
  const restCode = rest.split(/[.:]/)[0] ?? '';
  // Without a type, keep the targets on which the chained parameter exists.
  targets = targets.filter((t) => restCode === '_id' || restCode === '_lastUpdated' || restCode.startsWith('_has') || searchRegistry().get(t, restCode));
  if (targets.length === 0) throw fhirError('unknown-parameter', `'${restCode}' is not a search parameter of any type ${code} refers to`, name);
  const filters = new Map<string, Filter>();
  for (const t of targets) filters.set(t, parseFilter(t, rest, raw, options, depth + 1));
  return { kind: 'chain', param: code, targetTypes: targets, filters };
}

function parseHas(resourceType: string, name: string, raw: string, options: ParseOptions, depth: number): Filter {
  if (depth >= MAX_CHAIN_DEPTH) throw fhirError('unsupported-search-parameter', `'${name}': _has is supported to ${MAX_CHAIN_DEPTH} levels`, name);
  const m = /^_has:([A-Za-z]+):([A-Za-z0-9_-]+):(.+)$/.exec(name);
  if (!m) throw fhirError('unknown-parameter', `'${name}' must be _has:Type:reference-parameter:parameter`, name);
  const [, sourceType, param, inner] = m as unknown as [string, string, string, string];
  if (!isResourceType(sourceType)) throw invalid(name, `'${sourceType}' is not a resource type`);
  const def = searchRegistry().get(sourceType, param);
  if (!def || def.type !== 'reference') throw fhirError('unknown-parameter', `'${param}' is not a reference parameter of ${sourceType}`, name);
  if (def.targets.length > 0 && !def.targets.includes(resourceType)) throw invalid(name, `${sourceType}.${param} cannot refer to ${resourceType}`);
  return { kind: 'has', sourceType, param, filter: parseFilter(sourceType, inner, raw, options, depth + 1) };
}

/**
 * AuditEvents are kept in a store of their own (src/store/audit-events.ts), which searches these
 * parameter types (all that AuditEvent's parameters have).
 */
const AUDIT_TABLES = new Set(['token', 'reference', 'string', 'date', 'uri']);

/**
 * Refuses, naming the parameter, what the audit store does not search: composites, `_has` with
 * AuditEvent as the target, sorting on anything but date, _lastUpdated and _id, and chains into
 * AuditEvent from another type. Called on every parsed search.
 */
export function checkAuditQuery(query: SearchQuery): void {
  const audit = query.resourceType === 'AuditEvent';
  if (audit) {
    for (const f of query.filters) checkAuditFilter(f);
    for (const s of query.sort) {
      if (!(s.param === '_id' || s.param === '_lastUpdated' || s.param === 'date')) {
        throw fhirError('unknown-parameter', `_sort: AuditEvents are sorted by date, _lastUpdated or _id, not '${s.param}'`, '_sort');
      }
    }
  } else {
    for (const f of query.filters) checkOtherFilter(f);
  }
}

function checkAuditFilter(f: Filter): void {
  switch (f.kind) {
    case 'id':
    case 'lastUpdated':
      return;
    case 'param':
    case 'missing':
      if (!AUDIT_TABLES.has(f.table)) throw fhirError('unsupported-search-parameter', `AuditEvent: '${f.param}' cannot be searched`, f.param);
      return;
    case 'chain':
      for (const inner of f.filters.values()) checkOtherFilter(inner);
      return;
    case 'has':
      throw fhirError('unsupported-search-parameter', `_has: nothing is searched by what refers to an AuditEvent`, `_has:${f.sourceType}:${f.param}`);
    case 'composite':
      throw fhirError('unsupported-search-parameter', `AuditEvent: '${f.param}' cannot be searched`, f.param);
  }
}

function checkOtherFilter(f: Filter): void {
  if (f.kind === 'chain') {
    if (f.targetTypes.includes('AuditEvent')) {
      throw fhirError('unsupported-search-parameter', `${f.param}: a chain into AuditEvent is not supported; search AuditEvent itself`, f.param);
    }
    for (const inner of f.filters.values()) checkOtherFilter(inner);
  } else if (f.kind === 'has') {
    if (f.sourceType === 'AuditEvent') checkAuditFilter(f.filter);
    else checkOtherFilter(f.filter);
  }
}
