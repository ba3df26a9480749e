/**
 * Compiles a parsed search (src/search/query.ts) to SQL over `resource` and the index tables, or,
 * for AuditEvents, over the audit store's table (audit-events.ts: keys and dates of each event).
 * Every value is a bound parameter; only names from fixed tables (table and column names, sort
 * directions) are ever written into the SQL text.
 *
 * Paging is by keyset: each page ends with the sort values and id of its last row, and the next
 * page starts strictly after them (the previous page strictly before its first row). Pages stay
 * correct while data changes: no row is skipped or repeated because rows before it came or went.
 */
import type { Alternative, Cursor, Filter, SearchQuery, SortKey } from '../search/query.js';
import { escapeLike } from '../search/values.js';
import { searchRegistry } from '../search/definitions.js';
import { fhirError } from '../fhir/errors.js';
import { alternativeKeys, AUDIT_EVENT_TYPE, auditJsonSql, auditKeysSql, K, key, likeMatcher } from './audit-events.js';
import { Params, type AuditShapes } from './sql.js';

type Table = 'string' | 'token' | 'date' | 'number' | 'quantity' | 'reference' | 'uri';

/** The conditions of one token-and-quantity composite alternative on a `sp_token_quantity` row. */
function tokenQuantitySql(alt: Alternative, x: string, p: Params): string {
  if (alt.type !== 'composite') throw new Error('composite filter takes composite values');
  const [token, quantity] = alt.components;
  if (token?.type !== 'token' || quantity?.type !== 'quantity') throw new Error('a token-and-quantity composite takes a token and a quantity');
  const parts = [alternativeSql(token, x, p), numberSql(quantity.prefix, x, p, quantity.range)];
  if (quantity.system !== undefined) parts.push(`${x}.unit_system = ${p.add(quantity.system)}`);
  if (quantity.code !== undefined) parts.push(`${x}.unit_code = ${p.add(quantity.code)}`);
  return parts.map((c) => `(${c})`).join(' AND ');
}

export { Params };


/** Numbers compared as numeric; bounds from the parser are exact decimal text. */
function num(p: Params, v: string): string {
  return `${p.add(v)}::numeric`;
}

function ts(p: Params, v: string): string {
  return `${p.add(v)}::timestamptz`;
}

/** A condition on one index row `x` for one alternative. */
function alternativeSql(alt: Alternative, x: string, p: Params): string {
  switch (alt.type) {
    case 'string':
      if (alt.mode === 'exact') return `${x}.exact = ${p.add(alt.value)}`;
      if (alt.mode === 'contains') return `${x}.value LIKE ${p.add(`%${escapeLike(alt.value)}%`)}`;
      return `${x}.value LIKE ${p.add(`${escapeLike(alt.value)}%`)}`;
    case 'token': {
      if (alt.text !== undefined) return `${x}.text LIKE ${p.add(`${escapeLike(alt.text)}%`)}`;
      const parts: string[] = [];
      if (alt.code !== undefined) parts.push(`${x}.code = ${p.add(alt.code)}`);
      if (alt.system === null) parts.push(`${x}.system IS NULL`);
      else if (alt.system !== undefined) parts.push(`${x}.system = ${p.add(alt.system)}`);
      return parts.length > 0 ? parts.join(' AND ') : 'TRUE';
    }
    case 'identifier': {
      const parts: string[] = [];
      if (alt.value !== undefined) parts.push(`${x}.ident_value = ${p.add(alt.value)}`);
      if (alt.system === null) parts.push(`${x}.ident_system IS NULL`);
      else if (alt.system !== undefined) parts.push(`${x}.ident_system = ${p.add(alt.system)}`);
      return parts.length > 0 ? parts.join(' AND ') : `${x}.ident_value IS NOT NULL`;
    }
    case 'date':
      return rangeSql(alt.prefix, `${x}.lo`, `${x}.hi`, p, alt.range, alt.approx);
    case 'number':
      return numberSql(alt.prefix, x, p, alt.range);
    case 'quantity': {
      const parts = [numberSql(alt.prefix, x, p, alt.range)];
      if (alt.system !== undefined) parts.push(`${x}.system = ${p.add(alt.system)}`);
      if (alt.code !== undefined) parts.push(`${x}.code = ${p.add(alt.code)}`);
      return parts.join(' AND ');
    }
    case 'reference': {
      if (alt.url !== undefined) return `${x}.url = ${p.add(alt.url)}`;
      const parts = [`${x}.target_id = ${p.add(alt.id)}`];
      if (alt.targetType !== undefined) parts.push(`${x}.target_type = ${p.add(alt.targetType)}`);
      return parts.join(' AND ');
    }
    case 'uri':
      if (alt.mode === 'below') return `starts_with(${x}.value, ${p.add(alt.value)})`;
      if (alt.mode === 'above') return `starts_with(${p.add(alt.value)}::text, ${x}.value)`;
      return `${x}.value = ${p.add(alt.value)}`;
    case 'composite':
      throw new Error('composite alternatives are compiled by compositeSql');
  }
}

/**
 * Dates: the row's range [lo, hi) against the search value's [plo, phi).
 * https://hl7.org/fhir/R4/search.html#prefix
 */
function rangeSql(prefix: string, lo: string, hi: string, p: Params, range: { lo: string; hi: string }, approx: { lo: string; hi: string }): string {
  if (prefix === 'ap') return `(${hi} > ${ts(p, approx.lo)} AND ${lo} < ${ts(p, approx.hi)})`;
  // Bind only the bounds the condition uses: an unused parameter has no type PostgreSQL can infer.
  let ploRef: string | undefined;
  let phiRef: string | undefined;
  const plo = (): string => (ploRef ??= ts(p, range.lo));
  const phi = (): string => (phiRef ??= ts(p, range.hi));
  const eq = (): string => `(${lo} >= ${plo()} AND ${hi} <= ${phi()})`;
  switch (prefix) {
    case 'ne':
      return `NOT ${eq()}`;
    case 'gt':
      return `${hi} > ${phi()}`;
    case 'lt':
      return `${lo} < ${plo()}`;
    case 'ge':
      return `(${hi} > ${phi()} OR ${eq()})`;
    case 'le':
      return `(${lo} < ${plo()} OR ${eq()})`;
    case 'sa':
      return `${lo} >= ${phi()}`;
    case 'eb':
      return `${hi} <= ${plo()}`;
    default:
      return eq();
  }
}

/** Numbers and quantities: the row's [lo, hi] (lo = hi for a single value) against the search value. */
function numberSql(prefix: string, x: string, p: Params, range: { value: string; lo: string; hi: string; apLo: string; apHi: string }): string {
  switch (prefix) {
    case 'ne':
      return `NOT (${x}.lo >= ${num(p, range.lo)} AND ${x}.hi < ${num(p, range.hi)})`;
    case 'gt':
      return `${x}.hi > ${num(p, range.value)}`;
    case 'lt':
      return `${x}.lo < ${num(p, range.value)}`;
    case 'ge':
      return `${x}.hi >= ${num(p, range.value)}`;
    case 'le':
      return `${x}.lo <= ${num(p, range.value)}`;
    case 'sa':
      return `${x}.lo > ${num(p, range.value)}`;
    case 'eb':
      return `${x}.hi < ${num(p, range.value)}`;
    case 'ap':
      return `(${x}.hi >= ${num(p, range.apLo)} AND ${x}.lo <= ${num(p, range.apHi)})`;
    default:
      return `(${x}.lo >= ${num(p, range.lo)} AND ${x}.hi < ${num(p, range.hi)})`;
  }
}

function tableOf(t: string): Table {
  return t as Table;
}

let aliasCounter = 0;
/**
 * The condition that an index row `x` is of parameter `param` of `resourceType`: of one of its
 * members for a parameter that is a union of others (combo-code: code or component-code), whose
 * rows it reads, having none of its own (definitions.ts unionMembers).
 */
function paramSql(x: string, resourceType: string, param: string, p: Params): string {
  const members = searchRegistry().get(resourceType, param)?.indexedAs;
  return members ? `${x}.param = ANY(${p.add([...members])}::text[])` : `${x}.param = ${p.add(param)}`;
}

function alias(prefix: string): string {
  aliasCounter = (aliasCounter + 1) % 1_000_000;
  return `${prefix}${aliasCounter}`;
}

/**
 * The index rows matching a parameter filter (its negation aside) or a composite filter: the
 * tables (FROM) and conditions (WHERE) of a query, and the alias whose `id` (and
 * `resource_type`) they give.
 */
function indexRowsSql(filter: Extract<Filter, { kind: 'param' | 'composite' }>, resourceType: string, p: Params, name?: string): { alias: string; from: string; where: string } {
  if (filter.kind === 'param') {
    const x = name ?? alias('x');
    const alternatives = filter.alternatives.map((a) => `(${alternativeSql(a, x, p)})`).join(' OR ');
    return { alias: x, from: `sp_${tableOf(filter.table)} ${x}`, where: `${x}.resource_type = ${p.add(resourceType)} AND ${paramSql(x, resourceType, filter.param, p)} AND (${alternatives})` };
  }
  if (filter.tables.length === 2 && filter.tables[0] === 'token' && filter.tables[1] === 'quantity') {
    const x = name ?? alias('x');
    const alternatives = filter.alternatives.map((a) => `(${tokenQuantitySql(a, x, p)})`).join(' OR ');
    return { alias: x, from: `sp_token_quantity ${x}`, where: `${x}.resource_type = ${p.add(resourceType)} AND ${paramSql(x, resourceType, filter.param, p)} AND (${alternatives})` };
  }
  const names = filter.tables.map((_, i) => (i === 0 && name) || alias('c'));
  const first = names[0] as string;
  const joins = filter.tables
    .slice(1)
    .map((t, i) => {
      const c = names[i + 1] as string;
      return `JOIN sp_${tableOf(t)} ${c} ON ${c}.resource_type = ${first}.resource_type AND ${c}.id = ${first}.id AND ${c}.grp = ${first}.grp AND ${c}.param = ${p.add(`${filter.param}#${i + 1}`)}`;
    })
    .join(' ');
  const alternatives = filter.alternatives
    .map((a) => {
      if (a.type !== 'composite') throw new Error('composite filter takes composite values');
      return `(${a.components.map((c, i) => `(${alternativeSql(c, names[i] as string, p)})`).join(' AND ')})`;
    })
    .join(' OR ');
  return {
    alias: first,
    from: `sp_${tableOf(filter.tables[0] as string)} ${first} ${joins}`,
    where: `${first}.resource_type = ${p.add(resourceType)} AND ${first}.param = ${p.add(`${filter.param}#0`)} AND (${alternatives})`,
  };
}

/** A boolean SQL condition on the resource row `r` (columns resource_type, id, last_updated). */
export function filterSql(filter: Filter, r: string, resourceType: string, p: Params): string {
  switch (filter.kind) {
    case 'id':
      return `${r}.id = ANY(${p.add(filter.ids)}::text[])`;
    case 'lastUpdated':
      return `(${filter.alternatives
        .map((a) => {
          if (a.type !== 'date') throw new Error('lastUpdated takes dates');
          // last_updated is an instant: a range one microsecond wide.
          return rangeSql(a.prefix, `${r}.last_updated`, `(${r}.last_updated + interval '1 microsecond')`, p, a.range, a.approx);
        })
        .join(' OR ')})`;
    case 'param': {
      const sub = indexRowsSql(filter, resourceType, p);
      const ids = `SELECT ${sub.alias}.id FROM ${sub.from} WHERE ${sub.where}`;
      return filter.negate ? `${r}.id NOT IN (${ids})` : `${r}.id IN (${ids})`;
    }
    case 'missing': {
      const x = alias('x');
      const sub = `SELECT ${x}.id FROM sp_${tableOf(filter.table)} ${x} WHERE ${x}.resource_type = ${p.add(resourceType)} AND ${paramSql(x, resourceType, filter.param, p)}`;
      return filter.missing ? `${r}.id NOT IN (${sub})` : `${r}.id IN (${sub})`;
    }
    case 'composite': {
      const sub = indexRowsSql(filter, resourceType, p);
      return `${r}.id IN (SELECT ${sub.alias}.id FROM ${sub.from} WHERE ${sub.where})`;
    }
    case 'chain': {
      const x = alias('x');
      const perType = filter.targetTypes.map((t) => {
        const r2 = alias('r');
        const inner = filter.filters.get(t) as Filter;
        return `(${x}.target_type = ${p.add(t)} AND ${x}.target_id IN (SELECT ${r2}.id FROM resource ${r2} WHERE ${r2}.resource_type = ${p.add(t)} AND NOT ${r2}.deleted AND ${filterSql(inner, r2, t, p)}))`;
      });
      return `${r}.id IN (SELECT ${x}.id FROM sp_reference ${x} WHERE ${x}.resource_type = ${p.add(resourceType)} AND ${x}.param = ${p.add(filter.param)} AND (${perType.join(' OR ')}))`;
    }
    case 'has': {
      if (filter.sourceType === AUDIT_EVENT_TYPE) return `${r}.id IN (${auditHasSql(resourceType, filter.param, filter.filter, p)})`;
      const x = alias('x');
      const r2 = alias('r');
      return `${r}.id IN (SELECT ${x}.target_id FROM sp_reference ${x} WHERE ${x}.resource_type = ${p.add(filter.sourceType)} AND ${x}.param = ${p.add(filter.param)} AND ${x}.target_type = ${p.add(resourceType)} AND ${x}.id IN (SELECT ${r2}.id FROM resource ${r2} WHERE ${r2}.resource_type = ${p.add(filter.sourceType)} AND NOT ${r2}.deleted AND ${filterSql(filter.filter, r2, filter.sourceType, p)}))`;
    }
  }
}

/** The WHERE clause of a search over `resource r`. */
export function whereSql(query: SearchQuery, p: Params): string {
  const parts = [`r.resource_type = ${p.add(query.resourceType)}`, 'NOT r.deleted'];
  for (const f of query.filters) parts.push(filterSql(f, 'r', query.resourceType, p));
  return parts.join(' AND ');
}

/** How selective a kind of filter usually is: the lower, the better it drives a search. */
function driverRank(f: Filter): number {
  if (f.kind === 'composite') return 1;
  if (f.kind !== 'param' || f.negate) return Infinity;
  return ({ reference: 0, token: 2, string: 2, uri: 2, date: 3, number: 3, quantity: 3 } as const)[f.table];
}

/**
 * The rows `r` (with resource_type and id) a search ranges over, and the conditions on them.
 * Index rows exist for live resources only (a delete removes them, an update replaces them), so a
 * search with a parameter filter ranges over that filter's index rows, `r` being the index table
 * itself, without reading the resource table: the planner can then take the index range the
 * filter gives (a code with a value above a threshold, say) or walk it in id order, rather than
 * walk every resource in id order until a page is full. A resource may have several matching
 * index rows, so such a search is `distinct`. Searches with no such filter, or that need
 * `last_updated`, range over the resource table.
 */
export function sourceSql(query: SearchQuery, p: Params): { from: string; where: string; distinct: boolean } {
  const needsResource = query.filters.some((f) => f.kind === 'lastUpdated') || query.sort.some((k) => k.param === '_lastUpdated');
  let driver: Extract<Filter, { kind: 'param' | 'composite' }> | undefined;
  for (const f of query.filters) {
    if ((f.kind === 'param' || f.kind === 'composite') && driverRank(f) < (driver ? driverRank(driver) : Infinity)) driver = f;
  }
  if (needsResource || !driver) return { from: 'resource r', where: whereSql(query, p), distinct: false };
  const rows = indexRowsSql(driver, query.resourceType, p, 'r');
  const rest = query.filters.filter((f) => f !== driver).map((f) => filterSql(f, 'r', query.resourceType, p));
  return { from: rows.from, where: [rows.where, ...rest].join(' AND '), distinct: true };
}

interface SortColumn {
  expression: string;
  sqlType: 'text' | 'timestamptz' | 'numeric';
  descending: boolean;
}

function sortColumn(key: SortKey, resourceType: string, p: Params): SortColumn {
  if (key.param === '_id') return { expression: 'r.id', sqlType: 'text', descending: key.descending };
  if (key.param === '_lastUpdated') return { expression: 'r.last_updated', sqlType: 'timestamptz', descending: key.descending };
  const table = tableOf(key.table ?? 'token');
  const agg = key.descending ? 'max' : 'min';
  const column: Record<Table, string> = {
    string: 'x.value',
    token: 'x.code',
    date: key.descending ? 'x.hi' : 'x.lo',
    number: key.descending ? 'x.hi' : 'x.lo',
    quantity: key.descending ? 'x.hi' : 'x.lo',
    reference: "coalesce(x.target_type || '/' || x.target_id, x.url)",
    uri: 'x.value',
  };
  const sqlType = table === 'date' ? 'timestamptz' : table === 'number' || table === 'quantity' ? 'numeric' : 'text';
  return {
    expression: `(SELECT ${agg}(${column[table]}) FROM sp_${table} x WHERE x.resource_type = r.resource_type AND x.id = r.id AND ${paramSql('x', resourceType, key.param, p)})`,
    sqlType,
    descending: key.descending,
  };
}

/** Rows strictly after (or before) the cursor in the order of `columns` then id. */
function keysetSql(columns: SortColumn[], cursor: Cursor, p: Params): string {
  const forward = cursor.direction === 'next';
  const disjuncts: string[] = [];
  const equalities: string[] = [];
  const keys = [...columns.map((c, i) => ({ ...c, ref: `q.k${i}`, value: cursor.values[i] ?? null })), { expression: '', sqlType: 'text' as const, descending: false, ref: 'q.id', value: cursor.id }];
  for (const k of keys) {
    // In the page's order NULLs come last whichever the direction.
    const after = k.descending ? '<' : '>';
    const before = k.descending ? '>' : '<';
    let step: string;
    if (k.value === null) {
      step = forward ? 'FALSE' : `${k.ref} IS NOT NULL`;
    } else {
      const v = `${p.add(k.value)}::${k.sqlType}`;
      step = forward ? `(${k.ref} ${after} ${v} OR ${k.ref} IS NULL)` : `${k.ref} ${before} ${v}`;
    }
    disjuncts.push([...equalities, step].join(' AND '));
    // (the last key needs no equality: binding an unused value would leave its type unknown)
    if (k !== keys[keys.length - 1]) equalities.push(k.value === null ? `${k.ref} IS NULL` : `${k.ref} = ${p.add(k.value)}::${k.sqlType}`);
  }
  return `(${disjuncts.map((d) => `(${d})`).join(' OR ')})`;
}

export interface PageSql {
  text: string;
  values: unknown[];
  /** Number of sort columns (selected as s0…, as text). */
  sortColumns: number;
  /** True when rows come in reverse page order (a previous page) and must be reversed. */
  reversed: boolean;
}

/** The sort keys that need a column: the id always ends the order (ascending), so `_id` ascending needs none. */
function columnSortKeys(query: SearchQuery): SortKey[] {
  return query.sort.filter((k) => !(k.param === '_id' && !k.descending));
}

/**
 * The ORDER BY of a page over `q` (its sort columns k0…, then its id; reversed for a previous
 * page, NULLs last in the page's order) and the sort values as text (s0…) for the cursors.
 */
function pageOrder(columns: SortColumn[], reversed: boolean): { orderBy: string; sortText: string } {
  const order = (c: { descending: boolean }, ref: string): string => {
    const desc = reversed ? !c.descending : c.descending;
    return `${ref} ${desc ? 'DESC' : 'ASC'} NULLS ${reversed ? 'FIRST' : 'LAST'}`;
  };
  return {
    orderBy: [...columns.map((c, i) => order(c, `q.k${i}`)), order({ descending: false }, 'q.id')].join(', '),
    sortText: columns.map((_, i) => `, q.k${i}::text AS s${i}`).join(''),
  };
}

/** One page of matches, `limit` rows, in the sort order, from the cursor on. */
export function pageSql(query: SearchQuery, limit: number, auditShapes?: AuditShapes): PageSql {
  if (query.resourceType === AUDIT_EVENT_TYPE) return auditPageSql(query, limit, auditShapes);
  const p = new Params(auditShapes);
  const columns = columnSortKeys(query).map((k) => sortColumn(k, query.resourceType, p));
  const source = sourceSql(query, p);
  const reversed = query.cursor?.direction === 'previous';
  const select = columns.map((c, i) => `${c.expression} AS k${i}`).join(', ');
  const inner = `SELECT r.id${select ? `, ${select}` : ''} FROM ${source.from} WHERE ${source.where}`;
  const keyset = query.cursor ? `WHERE ${keysetSql(columns, query.cursor, p)}` : '';
  const { orderBy, sortText } = pageOrder(columns, reversed);
  // The page's ids (and sort values) first, from the indexes alone; the resources' content is read
  // for those rows only, never for the candidates the ORDER BY … LIMIT leaves out.
  const outerOrder = orderBy.replace(/q\./g, 'page.');
  const pageCols = ['q.id', ...columns.map((_, i) => `q.k${i}`)].join(', ');
  const sortOut = columns.map((_, i) => `, page.s${i}`).join('');
  const text =
    `WITH page AS MATERIALIZED (SELECT ${source.distinct ? 'DISTINCT ' : ''}${pageCols}${sortText} FROM (${inner}) q ${keyset} ORDER BY ${orderBy} LIMIT ${p.add(limit)}) ` +
    `SELECT page.id, r.content::text AS json${sortOut} FROM page JOIN resource r ON r.resource_type = ${p.add(query.resourceType)} AND r.id = page.id ORDER BY ${outerOrder}`;
  return { text, values: p.values, sortColumns: columns.length, reversed };
}

export function countSql(query: SearchQuery, auditShapes?: AuditShapes): { text: string; values: unknown[] } {
  if (query.resourceType === AUDIT_EVENT_TYPE) return auditCountSql(query, auditShapes);
  const p = new Params(auditShapes);
  const source = sourceSql(query, p);
  return { text: `SELECT count(${source.distinct ? 'DISTINCT r.id' : '*'})::int AS total FROM ${source.from} WHERE ${source.where}`, values: p.values };
}

export function estimateSql(query: SearchQuery, auditShapes?: AuditShapes): { text: string; values: unknown[] } {
  if (query.resourceType === AUDIT_EVENT_TYPE) return auditEstimateSql(query, auditShapes);
  const p = new Params(auditShapes);
  const where = whereSql(query, p);
  return { text: `EXPLAIN (FORMAT JSON) SELECT 1 FROM resource r WHERE ${where}`, values: p.values };
}

// AuditEvents: searches over the audit store's one table (audit-events.ts), with the same filters,
// sort keys, paging and result columns as over the resource table.

/** A boolean SQL condition on the audit row `a` for one filter. */
function auditFilterSql(filter: Filter, a: string, p: Params): string {
  switch (filter.kind) {
    case 'id':
    case 'lastUpdated':
      // On columns audit_event shares with resource (id, last_updated).
      return filterSql(filter, a, AUDIT_EVENT_TYPE, p);
    case 'param': {
      let condition: string;
      if (filter.table === 'date') {
        condition = filter.alternatives
          .map((alt) => {
            if (alt.type !== 'date') throw new Error('a date parameter takes dates');
            return `(${rangeSql(alt.prefix, `${a}.date_lo`, `${a}.date_hi`, p, alt.range, alt.approx)})`;
          })
          .join(' OR ');
      } else {
        const keys: string[] = [];
        const patterns: string[] = [];
        const above: string[] = [];
        for (const alt of filter.alternatives) {
          const k = alternativeKeys(filter.param, alt);
          keys.push(...k.keys);
          patterns.push(...k.patterns);
          if (k.above !== undefined) above.push(k.above);
        }
        const parts: string[] = [];
        if (keys.length > 0) {
          const wanted = p.add(keys);
          const set = new Set(keys);
          parts.push(auditKeysSql(a, p, (own) => `${own} && ${wanted}::text[]`, (shape) => shape.some((k) => set.has(k))));
        }
        if (patterns.length > 0) {
          const like = p.add(patterns);
          const matches = likeMatcher(patterns);
          parts.push(auditKeysSql(a, p, (own) => `EXISTS (SELECT 1 FROM unnest(${own}) AS k WHERE k LIKE ANY(${like}::text[]))`, (shape) => shape.some(matches)));
        }
        if (above.length > 0) {
          const uri = key(filter.param, K.uri);
          const prefix = p.add(uri);
          const values = p.add(above);
          parts.push(
            auditKeysSql(
              a,
              p,
              (own) => `EXISTS (SELECT 1 FROM unnest(${own}) AS k, unnest(${values}::text[]) AS v WHERE starts_with(k, ${prefix}) AND starts_with(v, k))`,
              (shape) => shape.some((k) => k.startsWith(uri) && above.some((v) => v.startsWith(k))),
            ),
          );
        }
        condition = parts.join(' OR ');
      }
      return filter.negate ? `NOT (${condition})` : `(${condition})`;
    }
    case 'missing': {
      let has = `${a}.date_lo IS NOT NULL`;
      if (filter.table !== 'date') {
        const presentKey = key(filter.param, K.present);
        const present = p.add(presentKey);
        has = auditKeysSql(a, p, (own) => `${own} @> ARRAY[${present}::text]`, (shape) => shape.includes(presentKey));
      }
      return filter.missing ? `NOT (${has})` : has;
    }
    case 'chain': {
      // The targets matching the chained search, as the keys an event referring to them has.
      const perType = filter.targetTypes.map((t) => {
        const r = alias('r');
        const inner = filter.filters.get(t) as Filter;
        const prefix = p.add(key(filter.param, K.ref, `${t}/`));
        return `${a}.keys && ARRAY(SELECT ${prefix}::text || ${r}.id FROM resource ${r} WHERE ${r}.resource_type = ${p.add(t)} AND NOT ${r}.deleted AND ${filterSql(inner, r, t, p)})`;
      });
      return `(${perType.join(' OR ')})`;
    }
    case 'has':
    case 'composite':
      throw fhirError('unsupported-search-parameter', 'AuditEvent: this search is not supported', filter.kind === 'has' ? '_has' : filter.param);
  }
}

/** The WHERE clause of an AuditEvent search over `audit_event a`. */
function auditWhere(query: SearchQuery, p: Params): string {
  const parts = query.filters.map((f) => auditFilterSql(f, 'a', p));
  return parts.length > 0 ? parts.join(' AND ') : 'TRUE';
}

/**
 * `_has:AuditEvent:param:…` on another type: the ids of `resourceType` that matching events
 * refer to through `param`.
 */
function auditHasSql(resourceType: string, param: string, inner: Filter, p: Params): string {
  const prefix = key(param, K.ref, `${resourceType}/`);
  return `SELECT substr(k, ${prefix.length + 1}) FROM audit_event a, unnest(a.keys) AS k WHERE k LIKE ${p.add(`${escapeLike(prefix)}%`)} AND ${auditFilterSql(inner, 'a', p)}`;
}

function auditSortColumn(k: SortKey): SortColumn {
  if (k.param === '_id') return { expression: 'a.id', sqlType: 'text', descending: k.descending };
  if (k.param === '_lastUpdated') return { expression: 'a.last_updated', sqlType: 'timestamptz', descending: k.descending };
  return { expression: k.descending ? 'a.date_hi' : 'a.date_lo', sqlType: 'timestamptz', descending: k.descending };
}

/** One page of an AuditEvent search: the same columns and paging as search-sql.ts's pageSql. */
function auditPageSql(query: SearchQuery, limit: number, auditShapes?: AuditShapes): PageSql {
  const p = new Params(auditShapes);
  const columns = columnSortKeys(query).map(auditSortColumn);
  const reversed = query.cursor?.direction === 'previous';
  const select = columns.map((c, i) => `, ${c.expression} AS k${i}`).join('');
  const inner = `SELECT a.id, a.format, a.content${select} FROM audit_event a WHERE ${auditWhere(query, p)}`;
  const keyset = query.cursor ? `WHERE ${keysetSql(columns, query.cursor, p)}` : '';
  const { orderBy, sortText } = pageOrder(columns, reversed);
  const text = `SELECT q.id, ${auditJsonSql('q')} AS json${sortText} FROM (${inner}) q ${keyset} ORDER BY ${orderBy} LIMIT ${p.add(limit)}`;
  return { text, values: p.values, sortColumns: columns.length, reversed };
}

function auditCountSql(query: SearchQuery, auditShapes?: AuditShapes): { text: string; values: unknown[] } {
  const p = new Params(auditShapes);
  return { text: `SELECT count(*)::int AS total FROM audit_event a WHERE ${auditWhere(query, p)}`, values: p.values };
}

function auditEstimateSql(query: SearchQuery, auditShapes?: AuditShapes): { text: string; values: unknown[] } {
  const p = new Params(auditShapes);
  return { text: `EXPLAIN (FORMAT JSON) SELECT 1 FROM audit_event a WHERE ${auditWhere(query, p)}`, values: p.values };
}
