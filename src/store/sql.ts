/**
 * The slice of `pg.Pool` that store/ uses. `pg.Pool` (PostgreSQL server) and PGlitePool
 * (embedded) both provide it, so every SQL statement runs unchanged on both engines.
 */
export interface SqlResult<R> {
  rows: R[];
  rowCount: number | null;
}

/** A statement with a name is prepared once per connection (PostgreSQL plans it once). */
export interface SqlStatement {
  name: string;
  text: string;
  values: unknown[];
}

export interface SqlQueryable {
  query<R = Record<string, unknown>>(text: string, values?: unknown[]): Promise<SqlResult<R>>;
  query<R = Record<string, unknown>>(statement: SqlStatement): Promise<SqlResult<R>>;
}

export interface SqlClient extends SqlQueryable {
  release(destroy?: boolean): void;
  /**
   * The database session the client is a handle on, when handles are not one per session
   * (PGlite: every connect() hands out a new handle on its one session). Unset: the client is the
   * session (pg). schema-pool.ts remembers each session's search_path by it.
   */
  readonly session?: object;
}

export interface SqlPool extends SqlQueryable {
  connect(): Promise<SqlClient>;
  end(): Promise<void>;
}

/** The bound parameters of a statement being built: add() binds a value and returns its `$n`. */
/** A tenant's audit shapes (audit-events.ts): digest → keys. */
export type AuditShapes = ReadonlyMap<string, readonly string[]>;

export class Params {
  readonly values: unknown[] = [];

  /**
   * @param auditShapes the tenant's audit shapes, when the caller read them before building an
   *   AuditEvent search: conditions on shape keys then name the matching shapes as constants,
   *   which the planner estimates from its statistics. Without them, the shapes are looked up in
   *   the statement itself (the same rows, planned blind).
   */
  constructor(readonly auditShapes?: AuditShapes) {}

  add(value: unknown): string {
    this.values.push(value);
    return `$${this.values.length}`;
  }
}
