/**
 * The search index tables, written in the same statement as the resource version they index:
 * the old rows of the resource are deleted and the new ones inserted from arrays (`unnest`), so a
 * write is still one round trip and a search never sees an index out of step with its resource.
 */
import type { IndexRows, IndexTable } from '../search/extract.js';

/** Columns of each index table after (resource_type, id), with their SQL array types. */
export const INDEX_COLUMNS: Record<IndexTable, readonly (readonly [string, string])[]> = {
  string: [['param', 'text'], ['grp', 'int'], ['value', 'text'], ['exact', 'text']],
  token: [['param', 'text'], ['grp', 'int'], ['system', 'text'], ['code', 'text'], ['text', 'text']],
  date: [['param', 'text'], ['grp', 'int'], ['lo', 'timestamptz'], ['hi', 'timestamptz']],
  number: [['param', 'text'], ['grp', 'int'], ['lo', 'numeric'], ['hi', 'numeric']],
  quantity: [['param', 'text'], ['grp', 'int'], ['system', 'text'], ['code', 'text'], ['lo', 'numeric'], ['hi', 'numeric']],
  reference: [['param', 'text'], ['grp', 'int'], ['target_type', 'text'], ['target_id', 'text'], ['url', 'text'], ['ident_system', 'text'], ['ident_value', 'text']],
  uri: [['param', 'text'], ['grp', 'int'], ['value', 'text']],
  token_quantity: [
    ['param', 'text'], ['grp', 'int'], ['system', 'text'], ['code', 'text'],
    ['unit_system', 'text'], ['unit_code', 'text'], ['lo', 'numeric'], ['hi', 'numeric'],
  ],
};

const TABLES = Object.keys(INDEX_COLUMNS) as IndexTable[];

/** Row property for each column (camelCase where the column is snake_case). */
const PROPERTY: Record<string, string> = {
  target_type: 'targetType',
  target_id: 'targetId',
  ident_system: 'identSystem',
  ident_value: 'identValue',
  unit_system: 'unitSystem',
  unit_code: 'unitCode',
};

/**
 * CTEs that replace the index rows of the resource named by $1 (type) and $2 (id), with array
 * parameters from $`first` on. `replace` false skips the deletes (a new resource has no rows).
 */
export function indexCtes(first: number, replace: boolean): { sql: string; count: number } {
  const ctes: string[] = [];
  let n = first;
  for (const table of TABLES) {
    if (replace) ctes.push(`del_${table} AS (DELETE FROM sp_${table} WHERE resource_type = $1 AND id = $2)`);
    const cols = INDEX_COLUMNS[table];
    const arrays = cols.map(([, type]) => `$${n++}::${type}[]`).join(', ');
    ctes.push(
      `ins_${table} AS (INSERT INTO sp_${table} (resource_type, id, ${cols.map(([c]) => c).join(', ')}) ` +
        `SELECT $1, $2, u.* FROM unnest(${arrays}) AS u)`,
    );
  }
  return { sql: ctes.join(',\n'), count: n - first };
}

/**
 * CTEs that insert the index rows of many new resources, with array parameters (resource type
 * and id first, then the columns) from $`first` on.
 */
export function indexCtesMany(first: number): { sql: string; count: number } {
  const ctes: string[] = [];
  let n = first;
  for (const table of TABLES) {
    const cols = [['resource_type', 'text'], ['id', 'text'], ...INDEX_COLUMNS[table]] as const;
    const arrays = cols.map(([, type]) => `$${n++}::${type}[]`).join(', ');
    ctes.push(`ins_${table} AS (INSERT INTO sp_${table} (${cols.map(([c]) => c).join(', ')}) SELECT u.* FROM unnest(${arrays}) AS u)`);
  }
  return { sql: ctes.join(',\n'), count: n - first };
}

/** The array parameters for indexCtesMany: the rows of every resource, each with its type and id. */
export function indexValuesMany(resources: { resourceType: string; id: string; rows: IndexRows }[]): unknown[] {
  const values: unknown[] = [];
  for (const table of TABLES) {
    const types: string[] = [];
    const ids: string[] = [];
    const columns: unknown[][] = INDEX_COLUMNS[table].map(() => []);
    for (const r of resources) {
      const list = r.rows[table] as unknown as Record<string, unknown>[];
      for (const row of list) {
        types.push(r.resourceType);
        ids.push(r.id);
        INDEX_COLUMNS[table].forEach(([column], i) => (columns[i] as unknown[]).push(row[PROPERTY[column] ?? column] ?? null));
      }
    }
    values.push(types, ids, ...columns);
  }
  return values;
}

/** The array parameters for indexCtes, in the same order. */
export function indexValues(rows: IndexRows | undefined): unknown[] {
  const values: unknown[] = [];
  for (const table of TABLES) {
    const list = (rows?.[table] ?? []) as unknown as Record<string, unknown>[];
    for (const [column] of INDEX_COLUMNS[table]) {
      const key = PROPERTY[column] ?? column;
      values.push(list.map((r) => r[key] ?? null));
    }
  }
  return values;
}

export const INDEX_MIGRATION = `
  CREATE TABLE sp_string (resource_type text NOT NULL, id text NOT NULL, param text NOT NULL, grp int, value text NOT NULL, exact text NOT NULL);
  CREATE INDEX sp_string_value ON sp_string (resource_type, param, value text_pattern_ops);
  CREATE INDEX sp_string_resource ON sp_string (resource_type, id);

  CREATE TABLE sp_token (resource_type text NOT NULL, id text NOT NULL, param text NOT NULL, grp int, system text, code text, text text);
  CREATE INDEX sp_token_code ON sp_token (resource_type, param, code, system, id);
  CREATE INDEX sp_token_resource ON sp_token (resource_type, id);

  CREATE TABLE sp_date (resource_type text NOT NULL, id text NOT NULL, param text NOT NULL, grp int, lo timestamptz NOT NULL, hi timestamptz NOT NULL);
  CREATE INDEX sp_date_lo ON sp_date (resource_type, param, lo);
  CREATE INDEX sp_date_hi ON sp_date (resource_type, param, hi);
  CREATE INDEX sp_date_resource ON sp_date (resource_type, id, param);

  CREATE TABLE sp_number (resource_type text NOT NULL, id text NOT NULL, param text NOT NULL, grp int, lo numeric NOT NULL, hi numeric NOT NULL);
  CREATE INDEX sp_number_lo ON sp_number (resource_type, param, lo);
  CREATE INDEX sp_number_resource ON sp_number (resource_type, id);

  CREATE TABLE sp_quantity (resource_type text NOT NULL, id text NOT NULL, param text NOT NULL, grp int, system text, code text, lo numeric NOT NULL, hi numeric NOT NULL);
  CREATE INDEX sp_quantity_code ON sp_quantity (resource_type, param, code, lo);
  CREATE INDEX sp_quantity_resource ON sp_quantity (resource_type, id);

  CREATE TABLE sp_reference (resource_type text NOT NULL, id text NOT NULL, param text NOT NULL, grp int, target_type text, target_id text, url text, ident_system text, ident_value text);
  CREATE INDEX sp_reference_target ON sp_reference (resource_type, param, target_id, target_type, id);
  CREATE INDEX sp_reference_reverse ON sp_reference (target_type, target_id);
  CREATE INDEX sp_reference_resource ON sp_reference (resource_type, id);

  CREATE TABLE sp_uri (resource_type text NOT NULL, id text NOT NULL, param text NOT NULL, grp int, value text NOT NULL);
  CREATE INDEX sp_uri_value ON sp_uri (resource_type, param, value);
  CREATE INDEX sp_uri_resource ON sp_uri (resource_type, id);
`;

/**
 * Migration 6: composites of a token and a quantity in one row. Three ways in: a code with a
 * value above (hi) or below (lo) a threshold, as one index range; and a code in id order, checking
 * the value from the index, for thresholds most values pass (the planner picks by the statistics).
 */
export const TOKEN_QUANTITY_MIGRATION = `
  CREATE TABLE sp_token_quantity (resource_type text NOT NULL, id text NOT NULL, param text NOT NULL, grp int,
    system text, code text, unit_system text, unit_code text, lo numeric NOT NULL, hi numeric NOT NULL);
  CREATE INDEX sp_token_quantity_hi ON sp_token_quantity (resource_type, param, code, hi) INCLUDE (id, system, lo);
  CREATE INDEX sp_token_quantity_lo ON sp_token_quantity (resource_type, param, code, lo) INCLUDE (id, system, hi);
  CREATE INDEX sp_token_quantity_id ON sp_token_quantity (resource_type, param, code, id) INCLUDE (system, lo, hi, unit_system, unit_code);
  CREATE INDEX sp_token_quantity_resource ON sp_token_quantity (resource_type, id);
`;
