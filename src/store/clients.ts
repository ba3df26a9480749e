/**
 * Tenants (practices) and the OAuth clients registered for them, and the client-assertion ids
 * (`jti`) already used, for replay protection. Secrets are stored only as slow hashes (made by
 * src/auth/secrets.ts before they reach this module).
 */
import type { SqlPool } from './sql.js';

/** A tenant's name: 1 to 64 letters, digits, '.', '_' and '-', starting with a letter or digit. */
export const TENANT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export interface ClientRow {
  clientId: string;
  tenant: string;
  name: string;
  secretHash?: string;
  jwks?: object;
  jwksUrl?: string;
  scopes: string;
  disabled: boolean;
}

interface DbClientRow {
  client_id: string;
  tenant: string;
  name: string;
  secret_hash: string | null;
  jwks: object | null;
  jwks_url: string | null;
  scopes: string;
  disabled: boolean;
}

export const CLIENTS_MIGRATION = `
  CREATE TABLE tenant (
    name text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
  );
  CREATE TABLE oauth_client (
    client_id text PRIMARY KEY,
    tenant text NOT NULL REFERENCES tenant (name),
    name text NOT NULL,
    secret_hash text,
    jwks jsonb,
    jwks_url text,
    scopes text NOT NULL,
    disabled boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, name),
    -- a client authenticates either by secret or by keys, never both, never neither
    CHECK ((secret_hash IS NOT NULL) <> (jwks IS NOT NULL OR jwks_url IS NOT NULL))
  );
  CREATE TABLE oauth_jti (
    client_id text NOT NULL,
    jti text NOT NULL,
    keep_until timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
  );
`;

/**
 * Each tenant's data lives in a schema of its own (schema-pool.ts). The first tenant's is `public`,
 * where the data of a database from before tenants already is; every later one gets `tenant_<n>`.
 */
export const TENANT_SCHEMA_MIGRATION = `
  CREATE SEQUENCE tenant_schema_seq;
  ALTER TABLE tenant ADD COLUMN schema_name text UNIQUE;
  UPDATE tenant SET schema_name = 'public' WHERE name = (SELECT name FROM tenant ORDER BY created_at, name LIMIT 1);
  UPDATE tenant SET schema_name = 'tenant_' || nextval('tenant_schema_seq') WHERE schema_name IS NULL;
  ALTER TABLE tenant ALTER COLUMN schema_name SET NOT NULL;
`;

export class ClientStore {
  constructor(private readonly pool: SqlPool) {}

  /**
   * Registers a tenant and names its schema (the caller creates the schema: tenants.ts). Of two
   * tenants created at once, the unique schema name lets one take \`public\`; the other retries.
   */
  async createTenant(name: string): Promise<string> {
    for (let attempt = 0; ; attempt++) {
      try {
        const created = await this.pool.query<{ schema_name: string }>(
          `INSERT INTO tenant (name, schema_name)
           SELECT $1, CASE WHEN EXISTS (SELECT 1 FROM tenant WHERE schema_name = 'public') THEN 'tenant_' || nextval('tenant_schema_seq') ELSE 'public' END
           RETURNING schema_name`,
          [name],
        );
        return created.rows[0]!.schema_name;
      } catch (error) {
        const unique = (error as { code?: string; constraint?: string }).code === '23505';
        if (!unique || attempt >= 2 || (await this.tenantExists(name))) throw error;
      }
    }
  }

  /** The schema holding a tenant's data; undefined for an unknown tenant. */
  async tenantSchema(name: string): Promise<string | undefined> {
    const found = await this.pool.query<{ schema_name: string }>('SELECT schema_name FROM tenant WHERE name = $1', [name]);
    return found.rows[0]?.schema_name;
  }

  async tenantExists(name: string): Promise<boolean> {
    const found = await this.pool.query('SELECT 1 FROM tenant WHERE name = $1', [name]);
    return found.rows.length > 0;
  }

  async tenantNames(): Promise<string[]> {
    const found = await this.pool.query<{ name: string }>('SELECT name FROM tenant ORDER BY name');
    return found.rows.map((r) => r.name);
  }

  async createClient(client: Omit<ClientRow, 'disabled'>): Promise<void> {
    await this.pool.query(
      'INSERT INTO oauth_client (client_id, tenant, name, secret_hash, jwks, jwks_url, scopes) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)',
      [client.clientId, client.tenant, client.name, client.secretHash ?? null, client.jwks ? JSON.stringify(client.jwks) : null, client.jwksUrl ?? null, client.scopes],
    );
  }

  async findClient(clientId: string): Promise<ClientRow | undefined> {
    const found = await this.pool.query<DbClientRow>(
      'SELECT client_id, tenant, name, secret_hash, jwks, jwks_url, scopes, disabled FROM oauth_client WHERE client_id = $1',
      [clientId],
    );
    const row = found.rows[0];
    if (!row) return undefined;
    return {
      clientId: row.client_id,
      tenant: row.tenant,
      name: row.name,
      ...(row.secret_hash ? { secretHash: row.secret_hash } : {}),
      ...(row.jwks ? { jwks: row.jwks } : {}),
      ...(row.jwks_url ? { jwksUrl: row.jwks_url } : {}),
      scopes: row.scopes,
      disabled: row.disabled,
    };
  }

  async countClients(): Promise<number> {
    const found = await this.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM oauth_client');
    return found.rows[0]?.n ?? 0;
  }

  /**
   * Records a client assertion's `jti` until `keepUntil` (epoch seconds). True the first time,
   * false when it was seen already: of two racing requests with one jti exactly one wins (the
   * primary key decides). Expired ids are purged on the way.
   */
  async rememberJti(clientId: string, jti: string, keepUntil: number): Promise<boolean> {
    await this.pool.query('DELETE FROM oauth_jti WHERE keep_until < now()');
    const inserted = await this.pool.query(
      'INSERT INTO oauth_jti (client_id, jti, keep_until) VALUES ($1, $2, to_timestamp($3)) ON CONFLICT DO NOTHING RETURNING 1',
      [clientId, jti, keepUntil],
    );
    return inserted.rows.length === 1;
  }
}
