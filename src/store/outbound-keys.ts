/**
 * Each tenant's own key pair for the client assertions it signs to EHRs (SMART Backend Services,
 * private_key_jwt): the private JWK, and the opaque id of the JWK Set URL its public half is
 * published at (`/auth/jwks/<jwks_id>`, src/http/auth.ts). A key of its own per tenant means an
 * EHR that registered one practice's JWKS accepts no assertion another practice's Endpoint signs,
 * whatever client id that Endpoint names.
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
    created_at timestamptz NOT NULL DEFAULT now()
  );
`;

export interface OutboundKeyRow {
  tenant: string;
  jwksId: string;
  privateJwk: JWK;
}

interface DbRow {
  tenant: string;
  jwks_id: string;
  private_jwk: JWK;
}

const row = (r: DbRow): OutboundKeyRow => ({ tenant: r.tenant, jwksId: r.jwks_id, privateJwk: r.private_jwk });

export class OutboundKeyStore {
  constructor(private readonly pool: SqlPool) {}

  async forTenant(tenant: string): Promise<OutboundKeyRow | undefined> {
    const found = await this.pool.query<DbRow>('SELECT tenant, jwks_id, private_jwk FROM tenant_outbound_key WHERE tenant = $1', [tenant]);
    return found.rows[0] && row(found.rows[0]);
  }

  async byJwksId(jwksId: string): Promise<OutboundKeyRow | undefined> {
    const found = await this.pool.query<DbRow>('SELECT tenant, jwks_id, private_jwk FROM tenant_outbound_key WHERE jwks_id = $1', [jwksId]);
    return found.rows[0] && row(found.rows[0]);
  }

  /** Replaces a tenant's key (rotation): the JWKS URL stays, the old key is published no more. */
  async replace(tenant: string, privateJwk: JWK): Promise<OutboundKeyRow | undefined> {
    const found = await this.pool.query<DbRow>('UPDATE tenant_outbound_key SET private_jwk = $2, created_at = now() WHERE tenant = $1 RETURNING tenant, jwks_id, private_jwk', [
      tenant,
      JSON.stringify(privateJwk),
    ]);
    return found.rows[0] && row(found.rows[0]);
  }

  /**
   * Stores a tenant's key unless it has one already, and returns the one it has: of two processes
   * creating a tenant's key at once, both end up with the same key.
   */
  async insertOrGet(candidate: OutboundKeyRow): Promise<OutboundKeyRow> {
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
