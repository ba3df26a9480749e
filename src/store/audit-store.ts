/**
 * Where the audit log (src/audit/log.ts) writes: each tenant's AuditEvents into its own data, in
 * the audit store (audit-events.ts; read and searched at /fhir/AuditEvent, by a client with a
 * scope naming AuditEvent), and events no tenant can be named for into `audit_unattributed`, a global table
 * the API does not serve (the admin command lists it). Neither is ever updated or deleted here.
 */
import { auditEvent, type AuditInput } from '../audit/events.js';
import type { SqlPool } from './sql.js';
import type { Repository } from './repository.js';

/** A tenant's repository (tenants.ts), undefined for a tenant not registered. */
export type RepositoryOf = (tenant: string) => Promise<Repository | undefined>;

export const AUDIT_MIGRATION = `
  -- AuditEvents of callers that could not be tied to a tenant: missing or forged tokens, refused
  -- token requests. Append only.
  CREATE TABLE audit_unattributed (
    seq bigserial PRIMARY KEY,
    recorded timestamptz NOT NULL,
    content jsonb NOT NULL
  );
  CREATE INDEX audit_unattributed_recorded ON audit_unattributed (recorded);
`;

export class AuditStore {
  constructor(
    private readonly repositoryOf: RepositoryOf,
    private readonly publicPool: SqlPool,
  ) {}

  async writeTenant(tenant: string, events: AuditInput[]): Promise<boolean> {
    const repo = await this.repositoryOf(tenant);
    if (!repo) return false;
    await repo.appendAuditEvents(events);
    return true;
  }

  /** Unattributed events are kept as the AuditEvents made of them (few, and listed as they are). */
  async writeUnattributed(events: AuditInput[]): Promise<void> {
    await this.publicPool.query(
      `INSERT INTO audit_unattributed (recorded, content)
       SELECT (e ->> 'recorded')::timestamptz, e FROM jsonb_array_elements($1::jsonb) AS e`,
      [JSON.stringify(events.map((e) => auditEvent(e)))],
    );
  }

  /** Unattributed events recorded at or after `since` (an instant), oldest first. */
  async listUnattributed(since: string | undefined, limit = 1000): Promise<object[]> {
    const found = await this.publicPool.query<{ content: object }>(
      'SELECT content FROM audit_unattributed WHERE recorded >= COALESCE($1::timestamptz, \'-infinity\') ORDER BY seq LIMIT $2',
      [since ?? null, limit],
    );
    return found.rows.map((r) => r.content);
  }
}
