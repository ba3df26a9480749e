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
/** How long EHRs may cache a tenant's JWK Set (Cache-Control max-age of /auth/jwks/<id>). */
export const JWKS_MAX_AGE_SECONDS = 300;
/**
 * A rotated key signs this long after it is published: every EHR that cached the JWK Set has read
 * it again by then (max-age), with room to spare.
 */
export const ROTATION_DELAY_MS = 2 * JWKS_MAX_AGE_SECONDS * 1000;
/** A retired key stays published this long: servers that still hold it in memory stop using it by then. */
const RETIRED_PUBLISHED_MS = 2 * KEY_TTL_MS;

export class OutboundKeys {
  private readonly store: OutboundKeyStore;
  private readonly byTenant = new Map<string, { key: Promise<TenantKey>; until: number }>();
  /** Public JWK Sets by URL id: an unauthenticated path must not cost key imports every time. */
  private readonly published = new Map<string, { jwks: Promise<JSONWebKeySet | undefined>; until: number }>();

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
    const entry = { key, until: Date.now() + this.ttlMs };
    this.byTenant.set(tenant, entry);
    key.catch(() => {
      if (this.byTenant.get(tenant) === entry) this.byTenant.delete(tenant);
    });
    return key;
  }

  /**
   * Gives the tenant a new key (`npm run admin -- tenant ehr-jwks <name> --rotate`). It is
   * published at the same JWKS URL at once, beside the current one, and signs from
   * ROTATION_DELAY_MS on, when every EHR has read the JWK Set again; the old one stays published a
   * little longer, while servers still hold it. `now` (a key that may have leaked): the new key
   * replaces every other at once, and assertions fail at EHRs that still cache the old JWK Set
   * until they read it again. Returns the key that signs now. The tenant must have a key.
   */
  async rotate(tenant: string, options: { now?: boolean } = {}): Promise<TenantKey> {
    const jwk = await generateSigningJwk('ES384');
    if (options.now) await this.store.replaceNow(tenant, jwk);
    else await this.store.scheduleNext(tenant, jwk, ROTATION_DELAY_MS);
    this.byTenant.delete(tenant);
    this.published.clear();
    return this.forTenant(tenant);
  }

  /** The public JWK Set published under `id`; undefined for an id no tenant has. */
  jwks(id: string): Promise<JSONWebKeySet | undefined> {
    if (!JWKS_ID.test(id)) return Promise.resolve(undefined);
    const cached = this.published.get(id);
    if (cached && cached.until > Date.now()) return cached.jwks;
    const jwks = this.store.byJwksId(id).then(async (row) => (row ? (await this.fromRow(row)).jwks : undefined));
    const entry = { jwks, until: Date.now() + Math.min(this.ttlMs, KEY_TTL_MS) };
    if (this.published.size >= 1_000) this.published.clear();
    this.published.set(id, entry);
    jwks.catch(() => {
      if (this.published.get(id) === entry) this.published.delete(id);
    });
    return jwks;
  }

  private async load(tenant: string): Promise<TenantKey> {
    const stored = await this.store.forTenant(tenant, RETIRED_PUBLISHED_MS);
    if (stored) return this.fromRow(stored);
    const candidate = { tenant, jwksId: randomBytes(16).toString('base64url'), privateJwk: await generateSigningJwk('ES384') };
    return this.fromRow(await this.store.insertOrGet(candidate));
  }

  private async fromRow(row: OutboundKeyRow): Promise<TenantKey> {
    const key: SigningKey = await signingKeyFromJwk(row.privateJwk);
    const others = await Promise.all(row.alsoPublished.map((jwk) => signingKeyFromJwk(jwk)));
    return { privateKey: key.privateKey, kid: key.kid, alg: key.alg, jwksUrl: `${this.baseUrl}${TENANT_JWKS_PATH}/${row.jwksId}`, jwks: publicJwks(key, ...others) };
  }
}
