/**
 * The database connection: a PostgreSQL server through `pg` when DATABASE_URL is set, otherwise
 * embedded PostgreSQL (PGlite) in DATA_DIR behind the same pool interface (./sql.ts), so every
 * query in store/ runs unchanged on both engines.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { PGlite } from '@electric-sql/pglite';
import { PGlitePool } from './pglite-pool.js';
import { SchemaPool } from './schema-pool.js';
import type { SqlClient, SqlPool } from './sql.js';

export type Engine = 'postgresql' | 'pglite';

export interface Database {
  /** Statements in the `public` schema: the global tables (tenants, clients) and the first tenant's data. */
  readonly pool: SqlPool;
  readonly engine: Engine;
  /** Statements in one tenant's schema (schema-pool.ts), on the same connections. */
  inSchema(schema: string): SqlPool;
  close(): Promise<void>;
}

export interface DatabaseOptions {
  /** postgres://… ; unset selects PGlite. */
  databaseUrl?: string;
  /** Directory for PGlite's files; `memory://` keeps it in memory (tests). */
  dataDir: string;
  /** Connections to a PostgreSQL server. PGlite is single-connection and always uses one. */
  poolSize?: number;
}

export async function openDatabase(options: DatabaseOptions): Promise<Database> {
  if (options.databaseUrl) {
    const pool = new pg.Pool({
      connectionString: options.databaseUrl,
      max: options.poolSize ?? 20,
      connectionTimeoutMillis: 5_000,
      idleTimeoutMillis: 30_000,
    });
    // An idle client losing its connection must not crash the process; the next query reports it.
    pool.on('error', () => undefined);
    return withSchemas(pool, 'postgresql', () => pool.end());
  }
  let lite: PGlite;
  if (options.dataDir === 'memory://') {
    lite = await PGlite.create();
  } else {
    const dir = join(options.dataDir, 'pglite');
    mkdirSync(dir, { recursive: true });
    lite = await PGlite.create({ dataDir: dir });
  }
  const pool = new PGlitePool(lite);
  return withSchemas(pool, 'pglite', async () => {
    await pool.end();
    await lite.close();
  });
}

/**
 * Every statement goes through a schema pool, the global ones too: a connection last used for a
 * tenant must not run a global statement in that tenant's schema.
 */
function withSchemas(base: SqlPool, engine: Engine, close: () => Promise<void>): Database {
  const pools = new Map<string, SqlPool>();
  const inSchema = (schema: string): SqlPool => {
    let pool = pools.get(schema);
    if (!pool) {
      pool = new SchemaPool(base, schema);
      pools.set(schema, pool);
    }
    return pool;
  };
  return { pool: inSchema('public'), engine, inSchema, close };
}

/** Runs `work` in one transaction on one connection; rolls back on any error. */
export async function inTransaction<T>(pool: SqlPool, work: (client: SqlClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let broken = false;
  try {
    await client.query('BEGIN');
    const result = await work(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    try {
      await client.query('ROLLBACK');
    } catch {
      broken = true;
    }
    throw error;
  } finally {
    client.release(broken);
  }
}
