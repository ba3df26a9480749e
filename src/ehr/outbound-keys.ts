/**
 * The keys tenants sign their client assertions to EHRs with (SMART Backend Services): one ES384
 * key pair per tenant, made on first use and kept in the database (src/store/outbound-keys.ts),
 * its public half published as a JWK Set at `<BASE_URL>/auth/jwks/<jwks id>`. The EHR registers
 * that URL for the practice; the URL's id is random, so it names no tenant and cannot be guessed.
 *
 * Why not the server's own signing key: client ids are not secrets, and one key for every tenant
 * would let one practice's Endpoint name another practice's client id and be given a token for
 * that practice's registration at the EHR.
 */
import { randomBytes } from 'node:crypto';
import type { JSONWebKeySet } from 'jose';
import { generateSigningJwk, publicJwks, signingKeyFromJwk, type SigningKey } from '../auth/index.js';
import { OutboundKeyStore, type OutboundKeyRow } from '../store/outbound-keys.js';
import type { SqlPool } from '../store/sql.js';
import type { AssertionKey } from './endpoint.js';

/** The path (under BASE_URL) of a tenant's JWK Set. */
export const TENANT_JWKS_PATH = '/auth/jwks';
/** 128 random bits, base64url. */
const JWKS_ID = /^[A-Za-z0-9_-]{22}$/;

export interface TenantKey extends AssertionKey {
  /** Where the EHR finds the public half: `<BASE_URL>/auth/jwks/<id>`. */
  jwksUrl: string;
  jwks: JSONWebKeySet;
}

/** How long a process uses a tenant's key before reading it again (a rotation reaches it by then). */
const KEY_TTL_MS = 60_000;

export class OutboundKeys {
  private readonly store: OutboundKeyStore;
  private readonly byTenant = new Map<string, { key: Promise<TenantKey>; until: number }>();

  constructor(
    pool: SqlPool,
    private readonly baseUrl: string,
    private readonly ttlMs: number = KEY_TTL_MS,
  ) {
    this.store = new OutboundKeyStore(pool);
  }

  /** The tenant's key, made and stored on first use. The tenant must be registered. */
  forTenant(tenant: string): Promise<TenantKey> {
    const cached = this.byTenant.get(tenant);
    if (cached && cached.until > Date.now()) return cached.key;
    const key = this.load(tenant);
    this.byTenant.set(tenant, { key, until: Date.now() + this.ttlMs });
    key.catch(() => this.byTenant.delete(tenant));
    return key;
  }

  /**
   * Gives the tenant a new key (`npm run admin -- tenant ehr-jwks <name> --rotate`): published at
   * the same JWKS URL at once, in place of the old one, which no EHR accepts any more once it reads
   * the JWKS again. Servers sign with it within a minute (KEY_TTL_MS). The tenant must have a key.
   */
  async rotate(tenant: string): Promise<TenantKey> {
    const replaced = await this.store.replace(tenant, await generateSigningJwk('ES384'));
    if (!replaced) return this.forTenant(tenant);
    this.byTenant.delete(tenant);
    return this.fromRow(replaced);
  }

  /** The public JWK Set published under `id`; undefined for an id no tenant has. */
  async jwks(id: string): Promise<JSONWebKeySet | undefined> {
    if (!JWKS_ID.test(id)) return undefined;
    const row = await this.store.byJwksId(id);
    return row ? (await this.fromRow(row)).jwks : undefined;
  }

  private async load(tenant: string): Promise<TenantKey> {
    const stored = await this.store.forTenant(tenant);
    if (stored) return this.fromRow(stored);
    const candidate = { tenant, jwksId: randomBytes(16).toString('base64url'), privateJwk: await generateSigningJwk('ES384') };
    return this.fromRow(await this.store.insertOrGet(candidate));
  }

  private async fromRow(row: OutboundKeyRow): Promise<TenantKey> {
    const key: SigningKey = await signingKeyFromJwk(row.privateJwk);
    return { privateKey: key.privateKey, kid: key.kid, alg: key.alg, jwksUrl: `${this.baseUrl}${TENANT_JWKS_PATH}/${row.jwksId}`, jwks: publicJwks(key) };
  }
}
