/**
 * The search index of one resource: for each of its type's search parameters, the values its
 * expression yields, turned into rows by parameter type. Written in the same transaction as the
 * resource (src/store/search-index.ts), so a search never sees a stale index.
 *
 * Composite parameters index each component under `<code>#<k>` with the number of the base element
 * (`grp`) they came from, so that `code-value-quantity` matches code and value of one component.
 */
import { parseReference } from '../fhir/reference.js';
import { decimalOf, dateRange, normalizeString } from './values.js';
import { ENGINE_PARAMS, searchRegistry, type PathValue, type SearchParamDef, type SearchParamType } from './definitions.js';

export interface IndexRows {
  string: { param: string; grp: number | null; value: string; exact: string }[];
  token: { param: string; grp: number | null; system: string | null; code: string | null; text: string | null }[];
  date: { param: string; grp: number | null; lo: string; hi: string }[];
  number: { param: string; grp: number | null; lo: string; hi: string }[];
  quantity: { param: string; grp: number | null; system: string | null; code: string | null; lo: string; hi: string }[];
  reference: {
    param: string;
    grp: number | null;
    targetType: string | null;
    targetId: string | null;
    url: string | null;
    identSystem: string | null;
    identValue: string | null;
  }[];
  uri: { param: string; grp: number | null; value: string }[];
  /**
   * Composite parameters of a token and a quantity (`code-value-quantity`): one row per code and
   * value of a group, so that "this code with a value above x" is one index range, not a join of
   * two large sets.
   */
  token_quantity: {
    param: string;
    grp: number | null;
    system: string | null;
    code: string | null;
    unitSystem: string | null;
    unitCode: string | null;
    lo: string;
    hi: string;
  }[];
}

export type IndexTable = keyof IndexRows;
export const INDEX_TABLES: readonly IndexTable[] = ['string', 'token', 'date', 'number', 'quantity', 'reference', 'uri', 'token_quantity'];

/** A composite of a token and a quantity is indexed in its own table (`token_quantity`). */
export function isTokenQuantity(def: SearchParamDef): boolean {
  return def.type === 'composite' && def.components?.length === 2 && def.components[0]?.param.type === 'token' && def.components[1]?.param.type === 'quantity';
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(v: unknown): string | null {
  return typeof v === 'string' && v !== '' ? v : null;
}

/** Limits what one value may put in an index row (btree rows must stay well under 2.7 kB). */
export const MAX_INDEXED = 512;

function cut(v: string): string {
  return v.length > MAX_INDEXED ? v.slice(0, MAX_INDEXED) : v;
}

/**
 * A reference as the index keeps it: a reference to this server (relative, or absolute under its
 * base) as type and id, any other as a URL; contained (`#id`) references are not indexed.
 */
export function localReference(reference: string, fhirBase: string): { type: string; id: string } | { url: string } | undefined {
  const base = `${fhirBase.replace(/\/$/, '')}/`;
  const shape = parseReference(reference.startsWith(base) ? reference.slice(base.length) : reference);
  if ('kind' in shape && shape.kind === 'local') return undefined;
  return 'kind' in shape && shape.kind === 'relative' ? { type: shape.resourceType, id: shape.id } : { url: reference };
}

export class IndexBuilder {
  readonly rows: IndexRows = { string: [], token: [], date: [], number: [], quantity: [], reference: [], uri: [], token_quantity: [] };

  constructor(private readonly fhirBase: string) {}

  add(param: string, type: SearchParamType, grp: number | null, value: PathValue): void {
    switch (type) {
      case 'string':
        return this.addString(param, grp, value);
      case 'token':
        return this.addToken(param, grp, value);
      case 'date':
        return this.addDate(param, grp, value);
      case 'number':
        return this.addNumber(param, grp, value);
      case 'quantity':
        return this.addQuantity(param, grp, value);
      case 'reference':
        return this.addReference(param, grp, value);
      case 'uri':
        return this.addUri(param, grp, value);
      case 'composite':
        return;
    }
  }

  private string(param: string, grp: number | null, v: unknown): void {
    if (typeof v !== 'string' || v.trim() === '') return;
    this.rows.string.push({ param, grp, value: cut(normalizeString(v)), exact: cut(v) });
  }

  private addString(param: string, grp: number | null, { data }: PathValue): void {
    if (typeof data === 'string') return this.string(param, grp, data);
    if (!isObject(data)) return;
    // HumanName, Address and other complex types: every string part.
    for (const key of ['text', 'family', 'given', 'prefix', 'suffix', 'line', 'city', 'district', 'state', 'postalCode', 'country']) {
      const part = data[key];
      if (Array.isArray(part)) for (const p of part) this.string(param, grp, p);
      else this.string(param, grp, part);
    }
  }

  private token(param: string, grp: number | null, system: unknown, code: unknown, text: unknown): void {
    const t = str(text);
    const row = { param, grp, system: str(system), code: str(code), text: t ? cut(normalizeString(t)) : null };
    if (row.system === null && row.code === null && row.text === null) return;
    if (row.code) row.code = cut(row.code);
    this.rows.token.push(row);
  }

  private addToken(param: string, grp: number | null, { data, type }: PathValue): void {
    if (typeof data === 'boolean' || typeof data === 'number') return this.token(param, grp, null, String(data), null);
    if (typeof data === 'string') return this.token(param, grp, null, data, null);
    if (!isObject(data)) return;
    // fhirpath gives the type; the direct path walk does not, so it is told by the shape.
    const kind = type ?? (Array.isArray(data.coding) || ('text' in data && !('code' in data) && !('value' in data)) ? 'CodeableConcept' : 'value' in data ? 'Identifier' : 'Coding');
    switch (kind) {
      case 'CodeableConcept': {
        const codings = Array.isArray(data.coding) ? data.coding.filter(isObject) : [];
        for (const c of codings) this.token(param, grp, c.system, c.code, c.display ?? data.text);
        if (codings.length === 0) this.token(param, grp, null, null, data.text);
        return;
      }
      case 'Identifier':
        return this.token(param, grp, data.system, data.value, isObject(data.type) ? data.type.text : undefined);
      case 'ContactPoint':
        return this.token(param, grp, data.system, data.value, null);
      default:
        return this.token(param, grp, data.system, data.code, data.display);
    }
  }

  private date(param: string, grp: number | null, v: unknown, hiFrom?: unknown): void {
    const lo = typeof v === 'string' ? dateRange(v) : undefined;
    const hi = hiFrom === undefined ? lo : typeof hiFrom === 'string' ? dateRange(hiFrom) : undefined;
    if (!lo && !hi) return;
    this.rows.date.push({ param, grp, lo: lo?.lo ?? '-infinity', hi: hi?.hi ?? 'infinity' });
  }

  private addDate(param: string, grp: number | null, { data }: PathValue): void {
    if (typeof data === 'string') return this.date(param, grp, data);
    if (!isObject(data)) return;
    if ('start' in data || 'end' in data) return this.date(param, grp, data.start ?? null, data.end ?? null);
    // Timing: its events, or the bounds of its repeat.
    const events = Array.isArray(data.event) ? data.event.filter((e): e is string => typeof e === 'string').sort() : [];
    if (events.length > 0) return this.date(param, grp, events[0], events[events.length - 1]);
    const repeat = isObject(data.repeat) ? data.repeat : undefined;
    if (repeat && isObject(repeat.boundsPeriod)) this.date(param, grp, repeat.boundsPeriod.start ?? null, repeat.boundsPeriod.end ?? null);
  }

  private addNumber(param: string, grp: number | null, { data }: PathValue): void {
    const n = decimalOf(data) ?? (isObject(data) ? decimalOf(data.value) : undefined);
    if (n !== undefined) this.rows.number.push({ param, grp, lo: n, hi: n });
  }

  private addQuantity(param: string, grp: number | null, { data }: PathValue): void {
    if (!isObject(data)) return;
    if ('low' in data || 'high' in data) {
      // Range: one row spanning low..high, with the unit of either end.
      const low = isObject(data.low) ? data.low : {};
      const high = isObject(data.high) ? data.high : {};
      const lo = decimalOf(low.value) ?? '-Infinity';
      const hi = decimalOf(high.value) ?? 'Infinity';
      if (lo === '-Infinity' && hi === 'Infinity') return;
      this.rows.quantity.push({ param, grp, system: str(low.system ?? high.system), code: str(low.code ?? high.code ?? low.unit ?? high.unit), lo, hi });
      return;
    }
    const value = decimalOf(data.value);
    if (value === undefined) return;
    this.rows.quantity.push({ param, grp, system: str(data.system), code: str(data.code), lo: value, hi: value });
    // The human unit is searchable too (`5.4||mg` matches code or unit).
    const unit = str(data.unit);
    if (unit && unit !== data.code) this.rows.quantity.push({ param, grp, system: null, code: unit, lo: value, hi: value });
  }

  private addReference(param: string, grp: number | null, { data }: PathValue): void {
    if (typeof data === 'string') {
      // canonical or uri used as a reference
      this.rows.reference.push({ param, grp, targetType: null, targetId: null, url: cut(data), identSystem: null, identValue: null });
      return;
    }
    if (!isObject(data)) return;
    const reference = str(data.reference);
    const identifier = isObject(data.identifier) ? data.identifier : undefined;
    const parsed = reference ? localReference(reference, this.fhirBase) : undefined;
    const identSystem = identifier ? str(identifier.system) : null;
    const identValue = identifier ? str(identifier.value) : null;
    if (!parsed && !identValue) return;
    this.rows.reference.push({
      param,
      grp,
      targetType: parsed && 'type' in parsed ? parsed.type : str(data.type),
      targetId: parsed && 'id' in parsed ? parsed.id : null,
      url: parsed && 'url' in parsed ? cut(parsed.url) : null,
      identSystem,
      identValue: identValue ? cut(identValue) : null,
    });
  }

  private addUri(param: string, grp: number | null, { data }: PathValue): void {
    if (typeof data === 'string' && data !== '') this.rows.uri.push({ param, grp, value: cut(data) });
  }
}

function indexParam(builder: IndexBuilder, def: SearchParamDef, resource: object): void {
  if (def.type !== 'composite') {
    for (const value of def.evaluate(resource)) builder.add(def.code, def.type, null, value);
    return;
  }
  let grp = 0;
  for (const base of def.compositeBases ?? []) {
    for (const value of base.evaluate(resource)) {
      if (typeof value.data !== 'object' || value.data === null) continue;
      // A group matches only with a value for every component; without one it is not indexed.
      const values = base.components.map((component) => component(value.data as object));
      if (values.some((v) => v.length === 0)) continue;
      if (isTokenQuantity(def)) {
        indexTokenQuantity(builder, def.code, grp, values as [PathValue[], PathValue[]]);
        grp++;
        continue;
      }
      values.forEach((list, k) => {
        const param = def.components?.[k]?.param;
        if (param) for (const v of list) builder.add(`${def.code}#${k}`, param.type, grp, v);
      });
      grp++;
    }
  }
}

/** The rows of one token-and-quantity group: each code with each value. */
function indexTokenQuantity(builder: IndexBuilder, param: string, grp: number, [tokens, quantities]: [PathValue[], PathValue[]]): void {
  const scratch = new IndexBuilder('');
  for (const v of tokens) scratch.add('t', 'token', grp, v);
  for (const v of quantities) scratch.add('q', 'quantity', grp, v);
  for (const t of scratch.rows.token) {
    for (const q of scratch.rows.quantity) {
      builder.rows.token_quantity.push({ param, grp, system: t.system, code: t.code, unitSystem: q.system, unitCode: q.code, lo: q.lo, hi: q.hi });
    }
  }
}

/** Every index row of a resource. */
export function extractIndex(resource: { resourceType: string }, fhirBase: string): IndexRows {
  const builder = new IndexBuilder(fhirBase);
  for (const def of searchRegistry().params(resource.resourceType)) {
    // A union of other parameters (combo-code) has their rows, not its own copies (definitions.ts).
    if (ENGINE_PARAMS.has(def.code) || def.indexedAs) continue;
    indexParam(builder, def, resource);
  }
  // The same value reached twice (an AuditEvent naming one Patient as two entities, say) is one
  // row: a duplicate finds nothing more and costs a write of every index of its table.
  const rows = builder.rows;
  for (const table of INDEX_TABLES) rows[table] = unique(rows[table] as object[]) as never;
  return rows;
}

function unique<T extends object>(rows: T[]): T[] {
  if (rows.length < 2) return rows;
  const seen = new Set<string>();
  return rows.filter((row) => {
    const key = JSON.stringify(Object.values(row));
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}
