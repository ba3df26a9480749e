/**
 * `private_key_jwt` client authentication: the signed JWT a backend client sends as
 * `client_assertion`, checked as SMART's asymmetric client authentication profile says.
 * https://hl7.org/fhir/smart-app-launch/client-confidential-asymmetric.html#authenticating-to-the-token-endpoint
 * https://www.rfc-editor.org/rfc/rfc7523#section-3 (JWT bearer client authentication)
 *
 * In two steps: `inspectClientAssertion` reads what needs no key (header, claims, times) and so
 * names the client to look up; `verifyClientAssertion` then resolves the client's key (inline
 * JWKS or JWKS URL, `jku` only when it is the registered URL), checks the signature and records
 * the `jti` so the assertion cannot be replayed.
 */
import { decodeJwt, decodeProtectedHeader, errors, importJWK, jwtVerify, type CryptoKey, type JSONWebKeySet, type JWK, type JWTPayload, type ProtectedHeaderParameters } from 'jose';
import { JwksFetcher, validateJwks, type JwksProblem } from './jwks.js';
import { accept, reject, type Rejected, type Verified } from './result.js';

export const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
/** The algorithms SMART names; `none`, HMAC and everything else are refused. */
export const ASSERTION_ALGORITHMS = ['RS384', 'ES384'] as const;
/** "This time SHALL be no more than five minutes in the future." */
export const MAX_ASSERTION_LIFETIME_SECONDS = 300;
export const ASSERTION_CLOCK_TOLERANCE_SECONDS = 30;
const MAX_ASSERTION_LENGTH = 16 * 1024;
const MAX_JTI_LENGTH = 256;

export type AssertionRejection =
  | 'malformed'
  | 'unsupported-algorithm'
  | 'wrong-type'
  | 'missing-kid'
  | 'missing-claim'
  | 'invalid-claim'
  | 'iss-sub-mismatch'
  | 'wrong-audience'
  | 'expired'
  | 'exp-too-far'
  | 'not-yet-valid'
  | 'jku-not-registered'
  | 'no-keys-registered'
  | JwksProblem
  | 'unknown-key'
  | 'ambiguous-key'
  | 'unusable-key'
  | 'bad-signature'
  | 'replayed-jti';

/**
 * Reasons that depend on the client's registration. The token endpoint answers them all with one
 * generic `invalid_client`, the same as an unknown client, so the answer does not tell which
 * client ids exist; the reason goes to the log.
 */
export const REGISTRATION_DEPENDENT: ReadonlySet<AssertionRejection> = new Set<AssertionRejection>([
  'jku-not-registered',
  'no-keys-registered',
  'jwks-malformed',
  'jwks-fetch-failed',
  'jwks-too-large',
  'unknown-key',
  'ambiguous-key',
  'unusable-key',
  'bad-signature',
]);

/**
 * Records a jti for a client; resolves false when that client already used it. Must be atomic
 * (one winner among concurrent calls) and keep the pair at least until `keepUntil` (seconds since
 * the epoch: the assertion's exp plus the clock tolerance). SMART: "check that the jti value has
 * not been previously encountered for the given iss within the maximum allowed authentication JWT
 * lifetime".
 */
export type RememberJti = (clientId: string, jti: string, keepUntil: number) => Promise<boolean>;

export interface AssertionChecks {
  /** The token endpoint URL: the only accepted `aud`. */
  tokenUrl: string;
  now?: () => number;
  clockToleranceSeconds?: number;
}

export interface InspectedAssertion {
  clientId: string;
  alg: (typeof ASSERTION_ALGORITHMS)[number];
  kid: string;
  jku?: string;
  jti: string;
  exp: number;
}

/**
 * Checks everything that needs no key: the header (alg RS384 or ES384, typ JWT, kid) and the
 * claims (iss = sub, aud = token URL, exp present, not past and at most five minutes ahead, jti).
 * Nothing here is trusted until `verifyClientAssertion` has checked the signature.
 */
export function inspectClientAssertion(assertion: string, checks: AssertionChecks): Verified<InspectedAssertion, AssertionRejection> {
  if (typeof assertion !== 'string' || assertion.length > MAX_ASSERTION_LENGTH || assertion.split('.').length !== 3) {
    return reject('malformed', 'client_assertion is not a compact signed JWT');
  }
  let header: ProtectedHeaderParameters;
  let claims: JWTPayload;
  try {
    header = decodeProtectedHeader(assertion);
    claims = decodeJwt(assertion);
  } catch {
    return reject('malformed', 'client_assertion is not a compact signed JWT');
  }
  const alg = ASSERTION_ALGORITHMS.find((a) => a === header.alg);
  if (!alg) return reject('unsupported-algorithm', `client_assertion alg ${JSON.stringify(header.alg)} is not accepted; use RS384 or ES384`);
  if (typeof header.typ !== 'string' || header.typ.toUpperCase() !== 'JWT') return reject('wrong-type', 'client_assertion header typ must be "JWT"');
  if (typeof header.kid !== 'string' || header.kid === '') return reject('missing-kid', 'client_assertion header has no kid');
  if (header.jku !== undefined && typeof header.jku !== 'string') return reject('malformed', 'client_assertion header jku is not a string');
  for (const claim of ['iss', 'sub', 'aud', 'exp', 'jti'] as const) {
    if (claims[claim] === undefined) return reject('missing-claim', `client_assertion has no ${claim} claim`);
  }
  const { iss, sub, aud, exp, jti } = claims;
  if (typeof iss !== 'string' || iss === '' || typeof sub !== 'string') return reject('invalid-claim', 'client_assertion iss and sub must be the client_id');
  if (iss !== sub) return reject('iss-sub-mismatch', 'client_assertion iss and sub must both be the client_id');
  const audiences = Array.isArray(aud) ? aud : [aud];
  if (!audiences.includes(checks.tokenUrl)) return reject('wrong-audience', `client_assertion aud must be the token endpoint URL ${checks.tokenUrl}`);
  if (typeof jti !== 'string' || jti === '' || jti.length > MAX_JTI_LENGTH) return reject('invalid-claim', `client_assertion jti must be a non-empty string of at most ${MAX_JTI_LENGTH} characters`);
  if (typeof exp !== 'number' || !Number.isFinite(exp)) return reject('invalid-claim', 'client_assertion exp must be a number (seconds since the epoch)');
  const now = (checks.now ?? Date.now)() / 1000;
  const tolerance = checks.clockToleranceSeconds ?? ASSERTION_CLOCK_TOLERANCE_SECONDS;
  if (exp <= now - tolerance) return reject('expired', 'client_assertion has expired');
  if (exp > now + MAX_ASSERTION_LIFETIME_SECONDS + tolerance) return reject('exp-too-far', 'client_assertion exp is more than five minutes in the future');
  if (typeof claims.nbf === 'number' && claims.nbf > now + tolerance) return reject('not-yet-valid', 'client_assertion is not valid yet (nbf)');
  if (typeof claims.iat === 'number' && claims.iat > now + tolerance) return reject('not-yet-valid', 'client_assertion iat is in the future');
  return accept({ clientId: iss, alg, kid: header.kid, ...(header.jku ? { jku: header.jku } : {}), jti, exp });
}

/** A registered client's keys: its JWK Set inline (object or JSON text) or the URL of it. */
export interface AssertionClient {
  clientId: string;
  jwks?: JSONWebKeySet | object | string;
  jwksUrl?: string;
}

export interface AssertionDeps extends AssertionChecks {
  rememberJti: RememberJti;
  jwksFetcher: JwksFetcher;
}

/**
 * Verifies a client assertion for a registered client: every check of `inspectClientAssertion`,
 * iss = sub = the client's id, the key resolved as "Signature Verification" says, the signature,
 * and finally the jti (recorded only for an assertion that is otherwise valid).
 */
export async function verifyClientAssertion(assertion: string, client: AssertionClient, deps: AssertionDeps): Promise<Verified<InspectedAssertion, AssertionRejection>> {
  const inspected = inspectClientAssertion(assertion, deps);
  if (!inspected.ok) return inspected;
  const { alg, kid, jku, clientId, jti, exp } = inspected.value;
  if (clientId !== client.clientId) return reject('invalid-claim', 'client_assertion iss and sub must be the client_id');
  const key = await resolveKey(client, alg, kid, jku, deps.jwksFetcher);
  if (!key.ok) return key;
  const tolerance = deps.clockToleranceSeconds ?? ASSERTION_CLOCK_TOLERANCE_SECONDS;
  try {
    await jwtVerify(assertion, key.value, {
      algorithms: [alg],
      issuer: client.clientId,
      subject: client.clientId,
      audience: deps.tokenUrl,
      typ: 'JWT',
      requiredClaims: ['exp', 'jti'],
      clockTolerance: tolerance,
      currentDate: new Date((deps.now ?? Date.now)()),
    });
  } catch (error) {
    return joseRejection(error);
  }
  if (!(await deps.rememberJti(clientId, jti, Math.ceil(exp + tolerance)))) {
    return reject('replayed-jti', 'client_assertion jti was already used; sign a new assertion for each request');
  }
  return inspected;
}

/** Steps 1-3 of "Signature Verification": the key set to use, then the one key for kid and alg. */
async function resolveKey(client: AssertionClient, alg: string, kid: string, jku: string | undefined, fetcher: JwksFetcher): Promise<Verified<CryptoKey, AssertionRejection>> {
  if (jku !== undefined && jku !== client.jwksUrl) return reject('jku-not-registered', 'client_assertion jku is not the JWKS URL registered for this client');
  const url = client.jwksUrl;
  if (url === undefined && client.jwks === undefined) return reject('no-keys-registered', 'the client has no registered JWK Set');
  let set = url !== undefined ? await fetcher.get(url) : validateJwks(client.jwks);
  if (!set.ok) return set;
  let candidates = set.value.keys.filter((k) => suits(k, alg, kid));
  if (candidates.length === 0 && url !== undefined) {
    // The client may have rotated its keys since we cached the set: fetch once more (rate-limited).
    set = await fetcher.get(url, true);
    if (!set.ok) return set;
    candidates = set.value.keys.filter((k) => suits(k, alg, kid));
  }
  if (candidates.length === 0) return reject('unknown-key', `no key in the client's JWK Set has kid ${JSON.stringify(kid)} and suits ${alg}`);
  if (candidates.length > 1) return reject('ambiguous-key', `more than one key in the client's JWK Set has kid ${JSON.stringify(kid)}`);
  const jwk = candidates[0] as JWK;
  if (jwk.kty === 'RSA' && Buffer.from(jwk.n ?? '', 'base64url').length < 256) return reject('unusable-key', `key ${JSON.stringify(kid)} is an RSA key under 2048 bits`);
  try {
    const { kid: _kid, use: _use, key_ops: _ops, alg: _alg, ext: _ext, ...material } = jwk;
    return accept((await importJWK(material, alg)) as CryptoKey);
  } catch (error) {
    return reject('unusable-key', `key ${JSON.stringify(kid)} cannot be used: ${(error as Error).message}`);
  }
}

/**
 * Whether a JWK may verify this assertion: same kid, a key type matching the algorithm (RSA for
 * RS384, EC P-384 for ES384), and, where stated, the same alg, use `sig`, key_ops with `verify`.
 */
function suits(jwk: JWK, alg: string, kid: string): boolean {
  if (jwk.kid !== kid) return false;
  const typeFits = alg === 'RS384' ? jwk.kty === 'RSA' : jwk.kty === 'EC' && jwk.crv === 'P-384';
  return typeFits && (jwk.alg === undefined || jwk.alg === alg) && (jwk.use === undefined || jwk.use === 'sig') && (jwk.key_ops === undefined || (Array.isArray(jwk.key_ops) && jwk.key_ops.includes('verify')));
}

/** A jose failure (after our own checks passed) as one of our reasons; anything else is rethrown. */
function joseRejection(error: unknown): Rejected<AssertionRejection> {
  if (error instanceof errors.JWSSignatureVerificationFailed) return reject('bad-signature', 'client_assertion signature does not verify');
  if (error instanceof errors.JWTExpired) return reject('expired', 'client_assertion has expired');
  if (error instanceof errors.JOSEAlgNotAllowed) return reject('unsupported-algorithm', error.message);
  if (error instanceof errors.JWTClaimValidationFailed) {
    if (error.claim === 'aud') return reject('wrong-audience', 'client_assertion aud must be the token endpoint URL');
    if (error.claim === 'nbf' || error.claim === 'iat') return reject('not-yet-valid', `client_assertion ${error.claim}: ${error.message}`);
    return reject('invalid-claim', `client_assertion ${error.claim}: ${error.message}`);
  }
  if (error instanceof errors.JOSEError) return reject('malformed', error.message);
  throw error;
}
