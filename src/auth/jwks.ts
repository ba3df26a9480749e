/**
 * Clients' public JWK Sets: checked for shape, fetched from a registered JWKS URL with a timeout
 * and a size limit, and cached no longer than the client's Cache-Control allows.
 * https://hl7.org/fhir/smart-app-launch/client-confidential-asymmetric.html#registering-a-client-communicating-public-keys
 * https://www.rfc-editor.org/rfc/rfc7517#section-5 (JWK Set)
 */
import type { JSONWebKeySet, JWK } from 'jose';
import { accept, reject, type Verified } from './result.js';

export type JwksProblem = 'jwks-malformed' | 'jwks-fetch-failed' | 'jwks-too-large';

/** Members that only a private or symmetric key has; none may appear in a published set. */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];
/** The "bare key" members SMART requires for each key type it names. */
const REQUIRED_MEMBERS: Record<string, readonly string[]> = { RSA: ['n', 'e'], EC: ['crv', 'x', 'y'] };
const MAX_KEYS = 100;

/**
 * Checks a JWK Set as SMART requires: an object with a non-empty `keys` array whose every key has
 * `kty` and `kid`, carries its bare public members (n, e for RSA; crv, x, y for EC) and no private
 * material. Takes the parsed value or its JSON text (an inline registration).
 */
export function validateJwks(input: unknown): Verified<JSONWebKeySet, 'jwks-malformed'> {
  let value = input;
  if (typeof input === 'string') {
    try {
      value = JSON.parse(input);
    } catch {
      return reject('jwks-malformed', 'the JWK Set is not valid JSON');
    }
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return reject('jwks-malformed', 'the JWK Set is not a JSON object');
  const keys = (value as { keys?: unknown }).keys;
  if (!Array.isArray(keys)) return reject('jwks-malformed', 'the JWK Set has no "keys" array');
  if (keys.length === 0) return reject('jwks-malformed', 'the JWK Set has no keys');
  if (keys.length > MAX_KEYS) return reject('jwks-malformed', `the JWK Set has more than ${MAX_KEYS} keys`);
  for (const [n, key] of keys.entries()) {
    if (typeof key !== 'object' || key === null || Array.isArray(key)) return reject('jwks-malformed', `key ${n} is not a JSON object`);
    const jwk = key as Record<string, unknown>;
    if (typeof jwk.kty !== 'string' || jwk.kty === '') return reject('jwks-malformed', `key ${n} has no "kty"`);
    if (typeof jwk.kid !== 'string' || jwk.kid === '') return reject('jwks-malformed', `key ${n} has no "kid"`);
    const secret = PRIVATE_MEMBERS.find((m) => m in jwk);
    if (secret) return reject('jwks-malformed', `key ${JSON.stringify(jwk.kid)} holds private key material ("${secret}"); publish public keys only`);
    const missing = (REQUIRED_MEMBERS[jwk.kty] ?? []).find((m) => typeof jwk[m] !== 'string' || jwk[m] === '');
    if (missing) return reject('jwks-malformed', `key ${JSON.stringify(jwk.kid)} (${jwk.kty}) has no "${missing}"`);
  }
  return accept({ keys: keys as JWK[] });
}

export interface JwksFetcherOptions {
  /** The fetch to use (default: the global one). */
  fetch?: typeof globalThis.fetch;
  /** For the whole exchange, body included. */
  timeoutMs?: number;
  maxBytes?: number;
  /** How long a set is kept when the response says nothing (Cache-Control absent). */
  defaultTtlSeconds?: number;
  /** The longest a set is kept whatever the response says. */
  maxTtlSeconds?: number;
  /** How long a failure is remembered, so a dead URL is not fetched on every request. */
  failureTtlSeconds?: number;
  /** A forced refresh (unknown kid: the client may have rotated) happens at most this often per URL. */
  minRefreshSeconds?: number;
  maxEntries?: number;
  /** Refuse http: URLs (TLS is required by SMART); tests on loopback turn this off. */
  requireHttps?: boolean;
  now?: () => number;
}

interface Entry {
  result: Verified<JSONWebKeySet, JwksProblem>;
  fetchedAt: number;
  expiresAt: number;
}

/** Fetches and caches JWK Sets by URL; concurrent requests for one URL share one fetch. */
export class JwksFetcher {
  private readonly cache = new Map<string, Entry>();
  private readonly inFlight = new Map<string, Promise<Entry>>();
  private readonly options: Required<JwksFetcherOptions>;

  constructor(options: JwksFetcherOptions = {}) {
    this.options = {
      fetch: options.fetch ?? ((input, init) => globalThis.fetch(input, init)),
      timeoutMs: options.timeoutMs ?? 5000,
      maxBytes: options.maxBytes ?? 64 * 1024,
      defaultTtlSeconds: options.defaultTtlSeconds ?? 300,
      maxTtlSeconds: options.maxTtlSeconds ?? 3600,
      failureTtlSeconds: options.failureTtlSeconds ?? 10,
      minRefreshSeconds: options.minRefreshSeconds ?? 30,
      maxEntries: options.maxEntries ?? 1000,
      requireHttps: options.requireHttps ?? true,
      now: options.now ?? Date.now,
    };
  }

  /**
   * The JWK Set at `url`, from the cache while fresh. `refresh` asks for a new copy (after an
   * unknown kid), granted only when the cached one is older than `minRefreshSeconds`.
   */
  async get(url: string, refresh = false): Promise<Verified<JSONWebKeySet, JwksProblem>> {
    const now = this.options.now();
    const cached = this.cache.get(url);
    const refreshable = cached !== undefined && now - cached.fetchedAt >= this.options.minRefreshSeconds * 1000;
    if (cached && now < cached.expiresAt && !(refresh && refreshable)) return cached.result;
    let pending = this.inFlight.get(url);
    if (!pending) {
      pending = this.load(url).finally(() => this.inFlight.delete(url));
      this.inFlight.set(url, pending);
    }
    return (await pending).result;
  }

  private async load(url: string): Promise<Entry> {
    const { result, ttlSeconds } = await this.fetchJwks(url);
    const now = this.options.now();
    const entry = { result, fetchedAt: now, expiresAt: now + ttlSeconds * 1000 };
    this.cache.delete(url);
    if (ttlSeconds > 0) {
      this.cache.set(url, entry);
      // Oldest first out (Map keeps insertion order).
      for (const key of this.cache.keys()) {
        if (this.cache.size <= this.options.maxEntries) break;
        this.cache.delete(key);
      }
    }
    return entry;
  }

  private async fetchJwks(url: string): Promise<{ result: Verified<JSONWebKeySet, JwksProblem>; ttlSeconds: number }> {
    const fail = (reason: JwksProblem, message: string) => ({ result: reject(reason, message), ttlSeconds: this.options.failureTtlSeconds });
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      return fail('jwks-fetch-failed', 'the registered JWKS URL is not a URL');
    }
    if (parsed.protocol !== 'https:' && !(parsed.protocol === 'http:' && !this.options.requireHttps)) {
      return fail('jwks-fetch-failed', `the JWKS URL must use https (got ${parsed.protocol})`);
    }
    const signal = AbortSignal.timeout(this.options.timeoutMs);
    try {
      // Redirects are not followed: the registered URL is the one trusted.
      const response = await this.options.fetch(url, { signal, redirect: 'manual', headers: { accept: 'application/json' } });
      if (response.status !== 200) {
        await response.body?.cancel().catch(() => undefined);
        return fail('jwks-fetch-failed', `the JWKS URL answered HTTP ${response.status}`);
      }
      const text = await readLimited(response, this.options.maxBytes);
      if (text === undefined) return fail('jwks-too-large', `the JWK Set is larger than ${this.options.maxBytes} bytes`);
      const result = validateJwks(text);
      const ttl = result.ok ? cacheTtl(response.headers.get('cache-control'), this.options.defaultTtlSeconds, this.options.maxTtlSeconds) : this.options.failureTtlSeconds;
      return { result, ttlSeconds: ttl };
    } catch (error) {
      const timedOut = signal.aborted;
      return fail('jwks-fetch-failed', timedOut ? `the JWKS URL did not answer within ${this.options.timeoutMs} ms` : `the JWKS URL could not be fetched (${(error as Error).message})`);
    }
  }
}

/** The body as text, or undefined once it passes `maxBytes` (the rest is not read). */
async function readLimited(response: Response, maxBytes: number): Promise<string | undefined> {
  const declared = Number(response.headers.get('content-length') ?? NaN);
  if (declared > maxBytes) {
    await response.body?.cancel().catch(() => undefined);
    return undefined;
  }
  if (!response.body) return '';
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      await reader.cancel().catch(() => undefined);
      return undefined;
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Seconds to keep a set: never longer than the response's Cache-Control allows (SMART: "SHALL NOT
 * cache a JWKS for longer than the client's cache-control header indicates"), `defaultTtl` when it
 * says nothing, and never more than `maxTtl`.
 */
export function cacheTtl(cacheControl: string | null, defaultTtl: number, maxTtl: number): number {
  if (!cacheControl) return Math.min(defaultTtl, maxTtl);
  const directives = cacheControl.toLowerCase().split(',').map((d) => d.trim());
  if (directives.some((d) => d === 'no-store' || d === 'no-cache')) return 0;
  const maxAge = directives.map((d) => /^max-age\s*=\s*"?(\d+)"?$/.exec(d)?.[1]).find((v) => v !== undefined);
  return maxAge === undefined ? Math.min(defaultTtl, maxTtl) : Math.min(Number(maxAge), maxTtl);
}
