/**
 * The server's own signing key, for the access tokens it issues, and its public JWK Set.
 * https://www.rfc-editor.org/rfc/rfc7517 (JWK), https://www.rfc-editor.org/rfc/rfc7638 (thumbprint)
 *
 * ES384 by default (RS384 accepted), the two algorithms SMART names
 * (client-confidential-asymmetric.html#registering-a-client-communicating-public-keys).
 * The private JWK lives in `<dir>/signing-key.json`, mode 0600, in a directory of mode 0700;
 * its `kid` is its RFC 7638 thumbprint, so it stays the same for as long as the key does.
 */
import { chmod, link, mkdir, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { calculateJwkThumbprint, CompactSign, compactVerify, exportJWK, generateKeyPair, importJWK, type CryptoKey, type JWK, type JSONWebKeySet } from 'jose';

export const SIGNING_ALGORITHMS = ['ES384', 'RS384'] as const;
export type SigningAlgorithm = (typeof SIGNING_ALGORITHMS)[number];

export interface SigningKey {
  kid: string;
  alg: SigningAlgorithm;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  /** The public half as published in the JWKS (kty, key material, kid, alg, use). */
  publicJwk: JWK;
}

export const SIGNING_KEY_FILE = 'signing-key.json';

/** Public members per key type (RFC 7518 §6); everything else (d, p, q, …) stays private. */
const PUBLIC_MEMBERS: Record<string, readonly string[]> = { EC: ['kty', 'crv', 'x', 'y'], RSA: ['kty', 'n', 'e'] };

function algorithmOf(jwk: JWK): SigningAlgorithm {
  const alg = jwk.alg ?? (jwk.kty === 'RSA' ? 'RS384' : 'ES384');
  if (alg === 'ES384' && jwk.kty === 'EC' && jwk.crv === 'P-384') return 'ES384';
  if (alg === 'RS384' && jwk.kty === 'RSA') return 'RS384';
  throw new Error(`signing key: expected an EC P-384 key for ES384 or an RSA key for RS384, got kty=${String(jwk.kty)} crv=${String(jwk.crv)} alg=${String(jwk.alg)}`);
}

/**
 * A signing key from a private JWK (for instance one passed in through the environment). Its
 * `kid` is kept when present, else it is the thumbprint. Throws with a clear message when the JWK
 * is not a private EC P-384 or RSA (≥ 2048 bits) key.
 */
export async function signingKeyFromJwk(jwk: JWK): Promise<SigningKey> {
  if (typeof jwk !== 'object' || jwk === null) throw new Error('signing key: not a JWK object');
  const alg = algorithmOf(jwk);
  if (typeof jwk.d !== 'string') throw new Error('signing key: the JWK has no private part (d)');
  const members = PUBLIC_MEMBERS[jwk.kty as string] ?? [];
  const bare = Object.fromEntries(members.map((m) => [m, (jwk as Record<string, unknown>)[m]])) as JWK;
  const kid = typeof jwk.kid === 'string' && jwk.kid !== '' ? jwk.kid : await calculateJwkThumbprint(bare, 'sha256');
  if (alg === 'RS384' && Buffer.from(String(jwk.n), 'base64url').length < 256) throw new Error('signing key: RSA keys must have at least 2048 bits');
  const { key_ops: _ops, ext: _ext, use: _use, ...material } = jwk;
  let privateKey: CryptoKey;
  let publicKey: CryptoKey;
  try {
    privateKey = (await importJWK({ ...material, alg }, alg)) as CryptoKey;
    publicKey = (await importJWK({ ...bare, alg }, alg)) as CryptoKey;
  } catch (error) {
    throw new Error(`signing key: the JWK cannot be imported (${(error as Error).message})`);
  }
  // The halves must belong together: a probe signed with one must verify with the other.
  const probe = await new CompactSign(new TextEncoder().encode('probe')).setProtectedHeader({ alg }).sign(privateKey);
  await compactVerify(probe, publicKey).catch(() => {
    throw new Error('signing key: the private part does not match the public part');
  });
  return { kid, alg, privateKey, publicKey, publicJwk: { ...bare, kid, alg, use: 'sig' } };
}

/** A new private JWK (extractable, so it can be stored), with its thumbprint as `kid`. */
export async function generateSigningJwk(alg: SigningAlgorithm = 'ES384'): Promise<JWK> {
  const { privateKey } = await generateKeyPair(alg, { extractable: true, ...(alg === 'RS384' ? { modulusLength: 3072 } : {}) });
  const jwk = await exportJWK(privateKey);
  const bare = Object.fromEntries((PUBLIC_MEMBERS[jwk.kty as string] ?? []).map((m) => [m, (jwk as Record<string, unknown>)[m]])) as JWK;
  return { ...jwk, kid: await calculateJwkThumbprint(bare, 'sha256'), alg, use: 'sig' };
}

/**
 * The server's signing key from `<dir>/signing-key.json`, created on first use. Creation is
 * atomic (written aside, then hard-linked into place), so two processes starting together end up
 * with the same key. A key file readable by others is tightened to 0600.
 */
export async function loadOrCreateSigningKey(dir: string, alg: SigningAlgorithm = 'ES384'): Promise<{ key: SigningKey; created: boolean }> {
  const file = join(dir, SIGNING_KEY_FILE);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  let created = false;
  try {
    await stat(file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    const temp = join(dir, `.${SIGNING_KEY_FILE}.${randomBytes(6).toString('hex')}`);
    await writeFile(temp, `${JSON.stringify(await generateSigningJwk(alg), null, 2)}\n`, { mode: 0o600, flag: 'wx' });
    try {
      await link(temp, file);
      created = true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    } finally {
      await unlink(temp);
    }
  }
  if (((await stat(file)).mode & 0o077) !== 0) await chmod(file, 0o600);
  let jwk: JWK;
  try {
    jwk = JSON.parse(await readFile(file, 'utf8')) as JWK;
  } catch (error) {
    throw new Error(`signing key: ${file} is not valid JSON (${(error as Error).message})`);
  }
  return { key: await signingKeyFromJwk(jwk), created };
}

/** The public JWK Set to publish: the current key first, then any still-trusted older ones. */
export function publicJwks(...keys: SigningKey[]): JSONWebKeySet {
  return { keys: keys.map((k) => ({ ...k.publicJwk })) };
}
