/**
 * HL7 v2 messages received over MLLP, each stored with its status before it is acknowledged:
 * in the tenant's own schema once the sending facility (MSH-4) is routed to a tenant
 * (`hl7_message`), else in the global `hl7_unrouted` (messages that could not be parsed, or from a
 * facility no tenant has registered). The routes themselves are global (`hl7_route`), set with
 * the admin command. Nothing here is ever deleted by the server.
 */
import type { SqlPool, SqlQueryable } from './sql.js';

/** Tenant migration: the messages a tenant received. */
export const HL7_MESSAGE_MIGRATION = `
  CREATE TABLE hl7_message (
    seq bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    sending_facility text,
    control_id text,
    message_type text,
    -- applied (ACK AA) | error (ACK AE: understood, not applied)
    status text NOT NULL,
    detail text,
    raw text NOT NULL
  );
  CREATE INDEX hl7_message_control ON hl7_message (sending_facility, control_id);
`;

/** Global migration: facility → tenant routes, and messages no tenant could be named for. */
export const HL7_ROUTE_MIGRATION = `
  CREATE TABLE hl7_route (
    sending_facility text PRIMARY KEY,
    tenant text NOT NULL REFERENCES tenant (name),
    created_at timestamptz NOT NULL DEFAULT now()
  );
  CREATE TABLE hl7_unrouted (
    seq bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    remote_address text,
    -- rejected (ACK AR)
    status text NOT NULL,
    detail text,
    raw text NOT NULL
  );
`;

export interface StoredMessage {
  sendingFacility?: string;
  controlId?: string;
  messageType?: string;
  status: 'applied' | 'error';
  detail?: string;
  raw: string;
}

export class Hl7Routes {
  private readonly cache = new Map<string, { tenant: string | undefined; at: number }>();

  constructor(private readonly publicPool: SqlPool) {}

  async setRoute(sendingFacility: string, tenant: string): Promise<void> {
    await this.publicPool.query(
      'INSERT INTO hl7_route (sending_facility, tenant) VALUES ($1, $2) ON CONFLICT (sending_facility) DO UPDATE SET tenant = EXCLUDED.tenant',
      [sendingFacility, tenant],
    );
    this.cache.delete(sendingFacility);
  }

  /** The tenant a facility's messages belong to; looked up again after a minute. */
  async tenantOf(sendingFacility: string): Promise<string | undefined> {
    const known = this.cache.get(sendingFacility);
    if (known && Date.now() - known.at < 60_000) return known.tenant;
    const found = await this.publicPool.query<{ tenant: string }>('SELECT tenant FROM hl7_route WHERE sending_facility = $1', [sendingFacility]);
    const tenant = found.rows[0]?.tenant;
    this.cache.set(sendingFacility, { tenant, at: Date.now() });
    return tenant;
  }

  async storeUnrouted(raw: string, detail: string, remoteAddress: string | undefined): Promise<void> {
    await this.publicPool.query("INSERT INTO hl7_unrouted (remote_address, status, detail, raw) VALUES ($1, 'rejected', $2, $3)", [remoteAddress ?? null, detail, raw]);
  }
}

/** Stores a tenant's messages with their status, in order, with one statement (on the transaction that applied them, or alone). */
export async function storeMessages(db: SqlQueryable, messages: StoredMessage[]): Promise<void> {
  if (messages.length === 0) return;
  await db.query(messagesInsert(1), messagesValues(messages));
}

/** The INSERT of storeMessages, its six parameters numbered from `first`. */
export function messagesInsert(first: number): string {
  const p = (i: number): string => `$${first + i}::text[]`;
  return `INSERT INTO hl7_message (sending_facility, control_id, message_type, status, detail, raw)
     SELECT f, c, t, s, d, r FROM unnest(${p(0)}, ${p(1)}, ${p(2)}, ${p(3)}, ${p(4)}, ${p(5)}) WITH ORDINALITY AS m(f, c, t, s, d, r, n) ORDER BY n`;
}

/** The six parameters of messagesInsert, column by column. */
export function messagesValues(messages: StoredMessage[]): (string | null)[][] {
  return [
    messages.map((m) => m.sendingFacility ?? null),
    messages.map((m) => m.controlId ?? null),
    messages.map((m) => m.messageType ?? null),
    messages.map((m) => m.status),
    messages.map((m) => m.detail ?? null),
    messages.map((m) => m.raw),
  ];
}

