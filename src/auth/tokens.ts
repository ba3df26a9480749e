/**
 * Access tokens: short-lived JWTs signed with the server's key, and their verification.
 * https://hl7.org/fhir/smart-app-launch/backend-services.html#issue-access-token
 * https://www.rfc-editor.org/rfc/rfc9068 (JWT profile for OAuth 2.0 access tokens)
 *
 * Header `typ: at+jwt` (RFC 9068 §2.1) keeps any other JWT, a client assertion included, from
 * passing as an access token. Verification names one reason per failure, for the log; the client
 * is told only that the token is invalid (RFC 6750 §3.1).
 */
import { randomUUID } from 'node:crypto';
import { decodeProtectedHeader, errors, jwtVerify, SignJWT, type JWTPayload } from 'jose';
import type { SigningKey } from './keys.js';
import { accept, reject, type Rejected, type Verified } from './result.js';

/** Recommended and maximum lifetime in SMART Backend Services: five minutes. */
export const DEFAULT_TOKEN_LIFETIME_SECONDS = 300;
export const ACCESS_TOKEN_TYPE = 'at+jwt';
/** Tolerated clock difference, in seconds, for exp, nbf and iat. */
export const CLOCK_TOLERANCE_SECONDS = 30;
/** Longer than any token we issue; a longer string is refused before parsing. */
const MAX_TOKEN_LENGTH = 8192;

export interface AccessTokenClaims {
  /** The server's base URL. */
  iss: string;
  /** The FHIR base URL the token is for. */
  aud: string;
  /** The client_id (also in `client_id`, RFC 9068 §2.2). */
  sub: string;
  client_id: string;
  /** The granted scopes, space-separated. */
  scope: string;
  /** The tenant (practice) whose data the token opens. */
  tenant: string;
  jti: string;
  iat: number;
  exp: number;
}

export interface IssueOptions {
  issuer: string;
  audience: string;
  lifetimeSeconds?: number;
  /** Clock in milliseconds since the epoch (tests pass a fixed one). */
  now?: () => number;
}

/** Issues an access token for a client, its tenant and the scopes granted. */
export async function issueAccessToken(
  key: SigningKey,
  grant: { clientId: string; tenant: string; scope: string },
  options: IssueOptions,
): Promise<{ accessToken: string; expiresIn: number; claims: AccessTokenClaims }> {
  const lifetime = options.lifetimeSeconds ?? DEFAULT_TOKEN_LIFETIME_SECONDS;
  const iat = Math.floor((options.now ?? Date.now)() / 1000);
  const claims: AccessTokenClaims = {
    iss: options.issuer,
    aud: options.audience,
    sub: grant.clientId,
    client_id: grant.clientId,
    scope: grant.scope,
    tenant: grant.tenant,
    jti: randomUUID(),
    iat,
    exp: iat + lifetime,
  };
  const accessToken = await new SignJWT({ ...claims }).setProtectedHeader({ alg: key.alg, kid: key.kid, typ: ACCESS_TOKEN_TYPE }).sign(key.privateKey);
  return { accessToken, expiresIn: lifetime, claims };
}

/** Why a token was refused; stable, for logs and metrics. */
export type TokenRejection =
  | 'malformed'
  | 'unsupported-algorithm'
  | 'wrong-type'
  | 'unknown-key'
  | 'bad-signature'
  | 'expired'
  | 'not-yet-valid'
  | 'wrong-issuer'
  | 'wrong-audience'
  | 'missing-claim'
  | 'invalid-claim';

export interface VerifyOptions {
  /** The keys we trust: the current one and any not yet retired. */
  keys: SigningKey | readonly SigningKey[];
  issuer: string;
  audience: string;
  now?: () => number;
  clockToleranceSeconds?: number;
}

/**
 * Verifies an access token we issued: one of our algorithms and keys (never `none`, never HMAC),
 * a valid signature, `typ` at+jwt, our issuer and audience, not expired, and every claim present.
 */
export async function verifyAccessToken(token: string, options: VerifyOptions): Promise<Verified<AccessTokenClaims, TokenRejection>> {
  if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH || token.split('.').length !== 3) {
    return reject('malformed', 'not a compact JWS');
  }
  let header: ReturnType<typeof decodeProtectedHeader>;
  try {
    header = decodeProtectedHeader(token);
  } catch {
    return reject('malformed', 'the header is not valid base64url JSON');
  }
  const keys = Array.isArray(options.keys) ? (options.keys as readonly SigningKey[]) : [options.keys as SigningKey];
  // Refuse the algorithm before anything else: this is what stops alg=none and HS256-with-our-public-key.
  if (typeof header.alg !== 'string' || !keys.some((k) => k.alg === header.alg)) {
    return reject('unsupported-algorithm', `alg ${JSON.stringify(header.alg)} is not accepted`);
  }
  // RFC 9068 §4: "at+jwt", or its full media type "application/at+jwt".
  if (typeof header.typ !== 'string' || header.typ.toLowerCase().replace(/^application\//, '') !== ACCESS_TOKEN_TYPE) {
    return reject('wrong-type', `typ ${JSON.stringify(header.typ)} is not ${ACCESS_TOKEN_TYPE}`);
  }
  const key = keys.find((k) => k.kid === header.kid && k.alg === header.alg);
  if (!key) return reject('unknown-key', `kid ${JSON.stringify(header.kid)} is not one of our keys`);
  const tolerance = options.clockToleranceSeconds ?? CLOCK_TOLERANCE_SECONDS;
  const now = (options.now ?? Date.now)();
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(token, key.publicKey, {
      algorithms: [key.alg],
      issuer: options.issuer,
      audience: options.audience,
      typ: ACCESS_TOKEN_TYPE,
      requiredClaims: ['exp', 'iat', 'sub', 'jti'],
      clockTolerance: tolerance,
      currentDate: new Date(now),
    }));
  } catch (error) {
    return joseRejection(error);
  }
  if (typeof payload.iat === 'number' && payload.iat > now / 1000 + tolerance) return reject('not-yet-valid', 'iat is in the future');
  for (const claim of ['sub', 'client_id', 'scope', 'tenant', 'jti'] as const) {
    if (!(claim in payload)) return reject('missing-claim', `the ${claim} claim is missing`);
    if (typeof payload[claim] !== 'string' || (claim !== 'scope' && payload[claim] === '')) return reject('invalid-claim', `the ${claim} claim is not a string`);
  }
  if (payload.client_id !== payload.sub) return reject('invalid-claim', 'client_id differs from sub');
  return accept(payload as unknown as AccessTokenClaims);
}

/** A jose failure as one of our reasons; anything that is not a JOSE error is a bug and rethrown. */
function joseRejection(error: unknown): Rejected<TokenRejection> {
  if (error instanceof errors.JWTExpired) return reject('expired', 'the token has expired');
  if (error instanceof errors.JWSSignatureVerificationFailed) return reject('bad-signature', 'the signature does not verify');
  if (error instanceof errors.JOSEAlgNotAllowed) return reject('unsupported-algorithm', error.message);
  if (error instanceof errors.JWTClaimValidationFailed) {
    const { claim, reason } = error;
    if (reason === 'missing') return reject('missing-claim', `the ${claim} claim is missing`);
    if (claim === 'iss') return reject('wrong-issuer', 'the token was issued by someone else');
    if (claim === 'aud') return reject('wrong-audience', 'the token is meant for another audience');
    if (claim === 'typ') return reject('wrong-type', error.message);
    if (claim === 'nbf' || claim === 'iat') return reject('not-yet-valid', `${claim}: ${error.message}`);
    return reject('invalid-claim', `${claim}: ${error.message}`);
  }
  if (error instanceof errors.JOSEError) return reject('malformed', error.message);
  throw error;
}
