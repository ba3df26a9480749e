/**
 * A `pg.Pool`-shaped front for embedded PGlite, on PGlite's own query API.
 *
 * Why not `createPgConfig` from `@electric-sql/pglite/node-postgres`: with 0.5.16, after any SQL
 * error in a parameterised query (a unique violation, say) that adapter loses protocol sync and
 * every later query fails ("Connection terminated unexpectedly"), which would take the embedded
 * server down on the first conflict. PGlite is single-connection, so this front is a pool of one:
 * a client (a transaction) holds the connection until released, and other queries wait.
 */
import type { PGlite } from '@electric-sql/pglite';
import type { SqlClient, SqlPool, SqlResult, SqlStatement } from './sql.js';

export class PGlitePool implements SqlPool {
  private tail: Promise<void> = Promise.resolve();
  private ended = false;

  constructor(private readonly lite: PGlite) {}

  /** Waits for the connection; the returned function gives it back. */
  private acquire(): Promise<() => void> {
    let release!: () => void;
    const next = new Promise<void>((resolve) => (release = resolve));
    const ready = this.tail.then(() => release);
    this.tail = this.tail.then(() => next);
    return ready;
  }

  private async run<R>(textOrStatement: string | SqlStatement, maybeValues?: unknown[]): Promise<SqlResult<R>> {
    // PGlite has a single connection and no statement names; a named statement runs as any other.
    const text = typeof textOrStatement === 'string' ? textOrStatement : textOrStatement.text;
    const values = typeof textOrStatement === 'string' ? maybeValues : textOrStatement.values;
    if (this.ended) throw Object.assign(new Error('Connection terminated: the embedded database is closed'), { code: '57P01' });
    if (values === undefined || values.length === 0) {
      // Several statements in one text (migrations) need the simple protocol.
      const results = await this.lite.exec(text);
      const last = results[results.length - 1];
      return { rows: (last?.rows ?? []) as R[], rowCount: last?.affectedRows ?? last?.rows.length ?? 0 };
    }
    const result = await this.lite.query<R>(text, values);
    return { rows: result.rows, rowCount: result.affectedRows ?? result.rows.length };
  }

  query<R = Record<string, unknown>>(text: string, values?: unknown[]): Promise<SqlResult<R>>;
  query<R = Record<string, unknown>>(statement: SqlStatement): Promise<SqlResult<R>>;
  async query<R = Record<string, unknown>>(text: string | SqlStatement, values?: unknown[]): Promise<SqlResult<R>> {
    const release = await this.acquire();
    try {
      return await this.run<R>(text, values);
    } finally {
      release();
    }
  }

  async connect(): Promise<SqlClient> {
    const release = await this.acquire();
    let released = false;
    return {
      session: this,
      query: <R = Record<string, unknown>>(text: string | SqlStatement, values?: unknown[]) => this.run<R>(text, values),
      release: () => {
        if (released) return;
        released = true;
        release();
      },
    };
  }

  async end(): Promise<void> {
    const release = await this.acquire();
    this.ended = true;
    release();
  }
}
