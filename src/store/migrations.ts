/**
 * Schema migrations, applied in order at start, each once, under an advisory lock so that several
 * instances starting together do not race. Never edit a migration that has shipped: add one.
 */
import type { SqlPool } from './sql.js';
import { inTransaction } from './database.js';
import { AUDIT_MIGRATION } from './audit-store.js';
import { HL7_MESSAGE_MIGRATION, HL7_ROUTE_MIGRATION } from './hl7-store.js';
import { DELIVERY_MIGRATION } from './delivery-jobs.js';
import { CLIENTS_MIGRATION, TENANT_SCHEMA_MIGRATION } from './clients.js';
import { OUTBOUND_KEY_MIGRATION } from './outbound-keys.js';
import { INDEX_MIGRATION, TOKEN_QUANTITY_MIGRATION } from './search-index.js';
import { AUDIT_EVENT_MIGRATION, AUDIT_RECORD_MIGRATION, AUDIT_SHAPE_MIGRATION } from './audit-events.js';
import { INDEX_TABLES } from '../search/extract.js';

/**
 * Migration 14 as it shipped: AuditEvents' index rows of parameters other than these nine removed
 * (since migration 15 AuditEvents are in a store of their own and searchable by every parameter).
 */
const AUDIT_EVENT_PARAMS_14 = ['date', 'agent', 'entity', 'patient', 'type', 'subtype', 'action', 'outcome', 'address'];
const UNINDEXED_ROWS = INDEX_TABLES.map(
  (table) => `DELETE FROM sp_${table} WHERE resource_type = 'AuditEvent' AND param NOT IN (${AUDIT_EVENT_PARAMS_14.map((c) => `'${c}'`).join(', ')});`,
).join('\n');

/**
 * Migration 21 as it shipped: the parameters that are unions of others (definitions.ts
 * unionMembers; test/migrations.test.ts holds the registry to this list), whose rows were copies.
 */
export const UNION_PARAMS_21: Readonly<Record<string, readonly string[]>> = {
  Observation: ['combo-code', 'combo-code-value-quantity', 'combo-data-absent-reason', 'combo-value-concept', 'combo-value-quantity'],
};
const UNION_ROWS = Object.entries(UNION_PARAMS_21)
  .flatMap(([type, codes]) =>
    ['token', 'quantity', 'token_quantity'].map((table) => `DELETE FROM sp_${table} WHERE resource_type = '${type}' AND param IN (${codes.map((c) => `'${c}'`).join(', ')});`),
  )
  .join('\n');

const MIGRATION_LOCK = 7_310_001;

/** The migration that adds the search index; resources stored before it need reindexing. */
export const SEARCH_INDEX_MIGRATION = 2;
/** Migrations after which every resource is indexed again (their index rows changed shape). */
export const REINDEX_MIGRATIONS: readonly number[] = [SEARCH_INDEX_MIGRATION, 6];

/**
 * `tenant` migrations make the tables of a tenant's data; they run in `public` (which holds the
 * first tenant's data) and in every other tenant's schema. `global` ones run in `public` only.
 */
export interface Migration {
  version: number;
  name: string;
  scope: 'tenant' | 'global';
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'resources and their history',
    scope: 'tenant',
    sql: `
      -- The current version of every resource (deleted ones keep a row with deleted = true).
      CREATE TABLE resource (
        resource_type text NOT NULL,
        id text NOT NULL,
        version_id integer NOT NULL,
        last_updated timestamptz NOT NULL,
        deleted boolean NOT NULL DEFAULT false,
        content jsonb,
        PRIMARY KEY (resource_type, id)
      );
      -- Every version ever written, in write order (seq), for vread and _history.
      CREATE TABLE resource_history (
        seq bigserial PRIMARY KEY,
        resource_type text NOT NULL,
        id text NOT NULL,
        version_id integer NOT NULL,
        last_updated timestamptz NOT NULL,
        deleted boolean NOT NULL DEFAULT false,
        method text NOT NULL,
        content jsonb,
        UNIQUE (resource_type, id, version_id)
      );
      CREATE INDEX resource_history_type_seq ON resource_history (resource_type, seq);
      -- Conditional create by identifier (If-None-Exist: identifier=system|value).
      CREATE INDEX resource_identifier ON resource USING gin ((content -> 'identifier') jsonb_path_ops);
    `,
  },
  {
    version: 2,
    name: 'search index',
    scope: 'tenant',
    // Resources stored before this migration are indexed by the server at start (reindex()).
    sql: `
      DROP INDEX resource_identifier;
      ${INDEX_MIGRATION}
    `,
  },
  {
    version: 3,
    name: 'search: index-only paths for paging and quantity ranges',
    scope: 'tenant',
    sql: `
      -- The ids of live resources, in id order, without reading their (large) rows: the default
      -- search order and the semi-joins of every search read this instead of the table.
      CREATE INDEX resource_live ON resource (resource_type, id) WHERE NOT deleted;
      -- value-quantity=gt…/lt… without a unit, and index-only checks of one resource's quantities.
      CREATE INDEX sp_quantity_hi ON sp_quantity (resource_type, param, hi);
      CREATE INDEX sp_quantity_lo ON sp_quantity (resource_type, param, lo);
      CREATE INDEX sp_quantity_probe ON sp_quantity (resource_type, id, param) INCLUDE (lo, hi, system, code);
      DROP INDEX sp_quantity_resource;
    `,
  },
  {
    version: 4,
    name: 'MET documents: what each pushed document created',
    scope: 'tenant',
    sql: `
      -- The last version of every document MET software pushed (/met/v1), with the FHIR resources
      -- it produced, by part: a resend updates those, and a part gone from it is retired.
      CREATE TABLE source_document (
        sender text NOT NULL,
        doc_type text NOT NULL,
        doc_id text NOT NULL,
        version integer NOT NULL,
        content jsonb NOT NULL,
        parts jsonb NOT NULL,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (sender, doc_type, doc_id)
      );
    `,
  },
  {
    version: 5,
    name: 'MET documents: by client',
    scope: 'tenant',
    sql: `
      -- A client's documents (goals, assessments, sessions): goal progress is computed from them.
      ALTER TABLE source_document ADD COLUMN client_id text;
      UPDATE source_document SET client_id = content->>'clientId';
      CREATE INDEX source_document_client ON source_document (sender, client_id, doc_type);
    `,
  },
  {
    version: 6,
    name: 'search: composites of a token and a quantity in one row',
    scope: 'tenant',
    // Their rows move from sp_token/sp_quantity (as <code>#0, <code>#1) to sp_token_quantity:
    // the server indexes every resource again at start (reindex()).
    sql: TOKEN_QUANTITY_MIGRATION,
  },
  {
    version: 7,
    name: 'security: tenants, OAuth clients, used client-assertion ids',
    scope: 'global',
    sql: CLIENTS_MIGRATION,
  },
  {
    version: 8,
    name: 'security: every tenant has a schema of its own',
    scope: 'global',
    sql: TENANT_SCHEMA_MIGRATION,
  },
  {
    version: 9,
    name: 'audit: events no tenant can be named for',
    scope: 'global',
    sql: AUDIT_MIGRATION,
  },
  {
    version: 10,
    name: 'HL7 v2: messages received, with their status',
    scope: 'tenant',
    sql: HL7_MESSAGE_MIGRATION,
  },
  {
    version: 11,
    name: 'HL7 v2: sending facilities routed to tenants; messages no tenant could be named for',
    scope: 'global',
    sql: HL7_ROUTE_MIGRATION,
  },
  {
    version: 12,
    name: 'delivery: documents queued for physicians\' EHRs',
    scope: 'tenant',
    sql: DELIVERY_MIGRATION,
  },
  {
    version: 13,
    name: 'EHR connections: each tenant signs its client assertions with a key of its own',
    scope: 'global',
    sql: OUTBOUND_KEY_MIGRATION,
  },
  {
    version: 14,
    name: 'search: AuditEvents indexed on the parameters auditors search by only',
    scope: 'tenant',
    sql: UNINDEXED_ROWS,
  },
  {
    version: 15,
    // AuditEvents stored before it are moved by the server at start (Repository.moveAuditEvents).
    name: 'audit: AuditEvents in an append-only store of their own',
    scope: 'tenant',
    sql: AUDIT_EVENT_MIGRATION,
  },
  {
    version: 16,
    name: 'MET documents: each measurement as a row, for goal progress',
    scope: 'tenant',
    sql: `
      -- Goal progress reads the latest results on a measure: one row per measurement of a stored
      -- document, newest first by measure, instead of every document of the client (a push read
      -- them all: its time grew with the client's history). Written with the document.
      CREATE TABLE met_result (
        sender text NOT NULL,
        client_id text NOT NULL,
        measure text NOT NULL,
        doc_type text NOT NULL,
        doc_id text NOT NULL,
        part text NOT NULL,
        -- The document's date as sent, and its instant in milliseconds (results are ordered by it).
        date text NOT NULL,
        taken double precision NOT NULL,
        context text,
        measurement jsonb NOT NULL,
        PRIMARY KEY (sender, doc_type, doc_id, part)
      );
      CREATE INDEX met_result_measure ON met_result (sender, client_id, measure, taken DESC);
      -- Documents stored before this migration have no rows: goal progress reads them whole, and
      -- the next push about their client writes their rows (true once a document has them).
      ALTER TABLE source_document ADD COLUMN results boolean NOT NULL DEFAULT false;
    `,
  },
  {
    version: 17,
    name: 'audit: the keys events share stored once per shape',
    scope: 'tenant',
    sql: AUDIT_SHAPE_MIGRATION,
  },
  {
    version: 18,
    name: 'audit: events stored as the audit log\'s records, made AuditEvents when read',
    scope: 'tenant',
    sql: AUDIT_RECORD_MIGRATION,
  },
  {
    version: 19,
    name: 'no planner statistics on stored JSON',
    scope: 'tenant',
    // No statement filters on a resource's or an event's JSON (searches read the index tables
    // and the audit keys), yet ANALYZE sampled and compared it: half its time on audit_event and
    // resource (0.33 and 0.10 s on 26,000 rows each, 0.20 and 0.05 s without).
    sql: `
      ALTER TABLE resource ALTER COLUMN content SET STATISTICS 0;
      ALTER TABLE resource_history ALTER COLUMN content SET STATISTICS 0;
      ALTER TABLE audit_event ALTER COLUMN content SET STATISTICS 0;
    `,
  },
  {
    version: 20,
    name: 'audit: the GIN index of event keys merges its pending entries in small steps',
    scope: 'tenant',
    // A GIN index gathers new entries in a pending list and merges it into the index once it
    // holds gin_pending_list_limit (4 MB by default), inside the insert that fills it: with some
    // 12 keys per event, a merge every few thousand events that took up to 232 ms, one core's
    // worth of PostgreSQL while requests waited (30,000 events in batches of 5: 8 inserts over
    // 10 ms, 820 ms in all). At 64 kB (the least) the longest took 8.8 ms, for the same CPU per
    // event (95 against 100 µs).
    sql: `ALTER INDEX audit_event_keys SET (gin_pending_list_limit = 64);`,
  },
  {
    version: 21,
    name: 'search index: no rows of their own for parameters that are unions of others',
    scope: 'tenant',
    // combo-code is code | component-code, and so on (definitions.ts unionMembers): its rows were
    // copies of theirs, half of sp_quantity's and sp_token_quantity's and a fifth of sp_token's
    // for MET assessments. Its searches read its members' rows now.
    sql: UNION_ROWS,
  },
];

/** Applies the migrations due in `public` (`pool` is the database's public-schema pool). */
export function migrate(pool: SqlPool): Promise<number[]> {
  return apply(pool, MIGRATIONS);
}

/**
 * Creates a tenant's schema if need be and applies the tenant migrations due in it. `pool` must be
 * the schema's own pool (Database.inSchema), whose statements run with search_path = the schema.
 */
export async function migrateTenantSchema(pool: SqlPool, schema: string): Promise<number[]> {
  if (schema === 'public') return migrate(pool);
  // The name comes from tenant.schema_name, which only tenant creation writes (public | tenant_<n>).
  if (!/^tenant_[0-9]+$/.test(schema)) throw new Error(`not a tenant schema: ${schema}`);
  await pool.query(`CREATE SCHEMA IF NOT EXISTS "${schema}"`);
  return apply(pool, MIGRATIONS.filter((m) => m.scope === 'tenant'));
}

async function apply(pool: SqlPool, migrations: readonly Migration[]): Promise<number[]> {
  return inTransaction(pool, async (client) => {
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
    await client.query(
      'CREATE TABLE IF NOT EXISTS schema_migration (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())',
    );
    const done = await client.query<{ version: number }>('SELECT version FROM schema_migration');
    const applied = new Set(done.rows.map((r) => r.version));
    const now: number[] = [];
    for (const m of migrations) {
      if (applied.has(m.version)) continue;
      await client.query(m.sql);
      await client.query('INSERT INTO schema_migration (version, name) VALUES ($1, $2)', [m.version, m.name]);
      now.push(m.version);
    }
    return now;
  });
}
