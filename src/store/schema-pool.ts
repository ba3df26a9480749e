/**
 * A pool whose statements run in one PostgreSQL schema: each tenant's resources live in a schema
 * of their own (tenants.ts), and every statement of a tenant runs with `search_path` set to that
 * schema alone, so that no statement can name, join or find another tenant's tables. The same SQL
 * serves every tenant, unchanged, on both engines.
 *
 * All schema pools of a database share its connections: a connection's search_path is set when it
 * is handed to a pool of another schema than the one it was last set for (once per switch, not per
 * statement). The SET runs outside any transaction, so a rollback cannot undo it. PostgreSQL
 * parses a prepared statement again when search_path changed since its last use (9.3 and later),
 * so named statements shared across tenants resolve to the current tenant's tables.
 */
import { isUnavailable } from './db-errors.js';
import type { SqlClient, SqlPool, SqlResult, SqlStatement } from './sql.js';

/** A schema name we create: `public` (the first tenant and the global tables) or `tenant_<n>`. */
export const SCHEMA_NAME = /^(public|tenant_[0-9]{1,9})$/;

/** The search_path each session was last set to. */
const pathOf = new WeakMap<object, string>();

export class SchemaPool implements SqlPool {
  constructor(
    private readonly base: SqlPool,
    readonly schema: string,
  ) {
    if (!SCHEMA_NAME.test(schema)) throw new Error(`not a tenant schema name: ${schema}`);
  }

  async connect(): Promise<SqlClient> {
    const client = await this.base.connect();
    const session = client.session ?? client;
    if (pathOf.get(session) !== this.schema) {
      try {
        // The name is checked against SCHEMA_NAME above; it is quoted all the same.
        await client.query(`SET search_path TO "${this.schema}"`);
      } catch (error) {
        pathOf.delete(session);
        client.release(true);
        throw error;
      }
      pathOf.set(session, this.schema);
    }
    return client;
  }

  query<R = Record<string, unknown>>(text: string, values?: unknown[]): Promise<SqlResult<R>>;
  query<R = Record<string, unknown>>(statement: SqlStatement): Promise<SqlResult<R>>;
  async query<R = Record<string, unknown>>(text: string | SqlStatement, values?: unknown[]): Promise<SqlResult<R>> {
    const client = await this.connect();
    let broken = false;
    try {
      return typeof text === 'string' ? await client.query<R>(text, values) : await client.query<R>(text);
    } catch (error) {
      // A lost connection is not given back to the pool (as pg.Pool.query does).
      broken = isUnavailable(error);
      throw error;
    } finally {
      client.release(broken);
    }
  }

  /** The pool is the database's; closing one schema's view of it closes nothing. */
  async end(): Promise<void> {}
}
