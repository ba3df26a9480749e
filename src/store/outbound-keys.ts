/**
 * Each tenant's own key pair for the client assertions it signs to EHRs (SMART Backend Services,
 * private_key_jwt): the private JWK, and the opaque id of the JWK Set URL its public half is
 * published at (`/auth/jwks/<jwks_id>`, src/http/auth.ts). A key of its own per tenant means an
 * EHR that registered one practice's JWKS accepts no assertion another practice's Endpoint signs,
 * whatever client id that Endpoint names.
 *
 * Rotation (src/ehr/outbound-keys.ts) keeps three keys apart: the `current` one signs; a `next`
 * one is published from the rotation on and signs from `next_from` (when every EHR has had time
 * to read the JWK Set again); the `previous` one is still published until `previous_until` (when
 * every server has stopped signing with it). The switch is made by whichever reader first finds
 * `next_from` past, in one statement.
 *
 * The private JWKs live in `public`, beside the client registry, which the FHIR API never reads;
 * a database backup holds them, as `$DATA_DIR/keys` holds the server's own key.
 */
import type { JWK } from 'jose';
import type { SqlPool } from './sql.js';

export const OUTBOUND_KEY_MIGRATION = `
  CREATE TABLE tenant_outbound_key (
    tenant text PRIMARY KEY REFERENCES tenant (name),
    jwks_id text NOT NULL UNIQUE,
    private_jwk jsonb NOT NULL,
    next_jwk jsonb,
    next_from timestamptz,
    previous_jwk jsonb,
    previous_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
  );
`;

export interface OutboundKeyRow {
  tenant: string;
  jwksId: string;
  /** The key that signs now. */
  privateJwk: JWK;
  /** Keys published besides it: the next one (rotation under way) and the previous (just retired). */
  alsoPublished: JWK[];
}

interface DbRow {
  tenant: string;
  jwks_id: string;
  private_jwk: JWK;
  also: JWK[] | null;
}

const row = (r: DbRow): OutboundKeyRow => ({ tenant: r.tenant, jwksId: r.jwks_id, privateJwk: r.private_jwk, alsoPublished: r.also ?? [] });

const COLUMNS = `tenant, jwks_id, private_jwk,
  (SELECT COALESCE(jsonb_agg(k), '[]'::jsonb) FROM (SELECT next_jwk AS k WHERE next_jwk IS NOT NULL
     UNION ALL SELECT previous_jwk WHERE previous_jwk IS NOT NULL AND previous_until > now()) AS keys) AS also`;

export class OutboundKeyStore {
  constructor(private readonly pool: SqlPool) {}

  /** The tenant's keys, after making the next key current if its time has come. */
  async forTenant(tenant: string, previousForMs = 0): Promise<OutboundKeyRow | undefined> {
    const promoted = await this.pool.query<DbRow>(
      `UPDATE tenant_outbound_key SET previous_jwk = private_jwk, previous_until = now() + $2 * interval '1 millisecond',
         private_jwk = next_jwk, next_jwk = NULL, next_from = NULL
       WHERE tenant = $1 AND next_from <= now()
       RETURNING ${COLUMNS}`,
      [tenant, previousForMs],
    );
    if (promoted.rows[0]) return row(promoted.rows[0]);
    const found = await this.pool.query<DbRow>(`SELECT ${COLUMNS} FROM tenant_outbound_key WHERE tenant = $1`, [tenant]);
    return found.rows[0] && row(found.rows[0]);
  }

  async byJwksId(jwksId: string): Promise<OutboundKeyRow | undefined> {
    const found = await this.pool.query<DbRow>(`SELECT ${COLUMNS} FROM tenant_outbound_key WHERE jwks_id = $1`, [jwksId]);
    return found.rows[0] && row(found.rows[0]);
  }

  /** Publishes `next` now; it signs from `fromMs` milliseconds on. False: the tenant has no key. */
  async scheduleNext(tenant: string, next: JWK, fromMs: number): Promise<boolean> {
    const updated = await this.pool.query(
      `UPDATE tenant_outbound_key SET next_jwk = $2, next_from = now() + $3 * interval '1 millisecond' WHERE tenant = $1`,
      [tenant, JSON.stringify(next), fromMs],
    );
    return (updated.rowCount ?? 0) > 0;
  }

  /**
   * Replaces the tenant's keys by `key` at once, publishing no other (a key that may have leaked).
   * False: the tenant has no key.
   */
  async replaceNow(tenant: string, key: JWK): Promise<boolean> {
    const updated = await this.pool.query(
      `UPDATE tenant_outbound_key SET private_jwk = $2, next_jwk = NULL, next_from = NULL, previous_jwk = NULL, previous_until = NULL, created_at = now()
       WHERE tenant = $1`,
      [tenant, JSON.stringify(key)],
    );
    return (updated.rowCount ?? 0) > 0;
  }

  /**
   * Stores a tenant's key unless it has one already, and returns the one it has: of two processes
   * creating a tenant's key at once, both end up with the same key.
   */
  async insertOrGet(candidate: { tenant: string; jwksId: string; privateJwk: JWK }): Promise<OutboundKeyRow> {
    await this.pool.query('INSERT INTO tenant_outbound_key (tenant, jwks_id, private_jwk) VALUES ($1, $2, $3) ON CONFLICT (tenant) DO NOTHING', [
      candidate.tenant,
      candidate.jwksId,
      JSON.stringify(candidate.privateJwk),
    ]);
    const stored = await this.forTenant(candidate.tenant);
    if (!stored) throw new Error(`no outbound key stored for tenant ${candidate.tenant}`);
    return stored;
  }
}
