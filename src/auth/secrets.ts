/**
 * Client secrets: generated at random, stored only as a salted scrypt hash in a self-describing
 * string, checked in constant time.
 * https://www.rfc-editor.org/rfc/rfc7914 (scrypt), RFC 6749 §2.3.1 (client password)
 *
 * Stored form: `scrypt$<N>$<r>$<p>$<salt>$<hash>`, salt and hash base64url. The parameters travel
 * with the hash, so they can be raised later without invalidating stored secrets.
 */
import { randomBytes, randomUUID, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';

/**
 * N = 2^14, r = 8, p = 1: 16 MiB and ~30-60 ms per check here. Our secrets are 256 random bits,
 * so the hash guards against a leaked table being usable, not against guessing; a slower setting
 * would only make the token endpoint easier to overload.
 */
const DEFAULTS = { N: 2 ** 14, r: 8, p: 1 } as const;
const SALT_BYTES = 16;
const HASH_BYTES = 32;
/** Bounds on parameters read back from storage, so a corrupted row cannot exhaust memory or CPU. */
const MAX_MEMORY = 64 * 1024 * 1024;
const MAX_P = 4;

function scryptAsync(secret: string, salt: Buffer, length: number, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(secret, salt, length, { ...options, maxmem: MAX_MEMORY + 1024 * 1024 }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/** Hashes a secret for storage. */
export async function hashSecret(secret: string, params: { N: number; r: number; p: number } = DEFAULTS): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const hash = await scryptAsync(secret, salt, HASH_BYTES, params);
  return ['scrypt', params.N, params.r, params.p, salt.toString('base64url'), hash.toString('base64url')].join('$');
}

/** The parts of a stored hash, or undefined when it is not one we wrote. */
function parseStored(stored: string): { N: number; r: number; p: number; salt: Buffer; hash: Buffer } | undefined {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return undefined;
  const [N, r, p] = parts.slice(1, 4).map((x) => (/^\d{1,8}$/.test(x ?? '') ? Number(x) : NaN)) as [number, number, number];
  const isPowerOf2 = N > 1 && (N & (N - 1)) === 0;
  if (!isPowerOf2 || !(r >= 1) || 128 * N * r > MAX_MEMORY || !(p >= 1 && p <= MAX_P)) return undefined;
  const salt = Buffer.from(parts[4] ?? '', 'base64url');
  const hash = Buffer.from(parts[5] ?? '', 'base64url');
  if (salt.length < 8 || hash.length < 16) return undefined;
  return { N, r, p, salt, hash };
}

/**
 * Whether `secret` matches the stored hash. Constant time in the secret's content; false (never a
 * throw) for a stored value that is not a hash we wrote.
 */
export async function verifySecret(secret: string, stored: string): Promise<boolean> {
  const parsed = parseStored(stored);
  if (!parsed) return false;
  const actual = await scryptAsync(secret, parsed.salt, parsed.hash.length, { N: parsed.N, r: parsed.r, p: parsed.p });
  return timingSafeEqual(actual, parsed.hash);
}

/** A new client secret: 32 random bytes, base64url (43 characters). Shown once, never stored. */
export function newClientSecret(): string {
  return randomBytes(32).toString('base64url');
}

/** A new client id: a random UUID (not a secret; safe in HTTP Basic without escaping). */
export function newClientId(): string {
  return randomUUID();
}

let dummy: Promise<string> | undefined;

/**
 * Spends the time of one check against a hash nobody knows the secret of. The token endpoint
 * calls it for an unknown client, so that answering does not tell unknown ids from known ones.
 */
export async function verifySecretAgainstNothing(secret: string): Promise<false> {
  dummy ??= hashSecret(newClientSecret());
  await verifySecret(secret, await dummy);
  return false;
}
