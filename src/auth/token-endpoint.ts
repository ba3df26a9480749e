/**
 * The OAuth 2.0 token endpoint for SMART Backend Services: the client_credentials grant, with the
 * client authenticated by `client_secret_basic`, `client_secret_post` or `private_key_jwt`.
 * https://hl7.org/fhir/smart-app-launch/backend-services.html#obtain-access-token
 * https://www.rfc-editor.org/rfc/rfc6749#section-4.4 (client credentials), §5.2 (errors)
 *
 * Framework-free: the HTTP adapter passes the headers and the parsed form and sends back what this
 * returns. `audit` is for the log only (never sent): it names the client and the precise reason.
 */
import { CLIENT_ASSERTION_TYPE, inspectClientAssertion, REGISTRATION_DEPENDENT, verifyClientAssertion, type RememberJti } from './client-assertion.js';
import type { JwksFetcher } from './jwks.js';
import type { SigningKey } from './keys.js';
import { formatScopes, honouredScopes, narrow, parseScopes } from './scopes.js';
import { verifySecret, verifySecretAgainstNothing } from './secrets.js';
import { DEFAULT_TOKEN_LIFETIME_SECONDS, issueAccessToken } from './tokens.js';

/** A client as registered; `jwks`/`jwksUrl` and `secretHash` exclude each other (keys win). */
export interface RegisteredClient {
  clientId: string;
  tenant: string;
  secretHash?: string;
  /** Inline JWK Set (object or JSON text). */
  jwks?: object | string;
  jwksUrl?: string;
  /** What the client may be granted, space-separated SMART scopes. */
  scopes: string;
  disabled?: boolean;
}

export interface TokenEndpointDeps {
  findClient(clientId: string): Promise<RegisteredClient | undefined> | RegisteredClient | undefined;
  rememberJti: RememberJti;
  jwksFetcher: JwksFetcher;
  signingKey: SigningKey;
  /** This endpoint's public URL: the `aud` client assertions must carry. */
  tokenUrl: string;
  /** `iss` of the access tokens: the server's base URL. */
  issuer: string;
  /** `aud` of the access tokens: the FHIR base URL. */
  audience: string;
  tokenLifetimeSeconds?: number;
  now?: () => number;
}

export interface TokenRequest {
  headers: Record<string, string | string[] | undefined>;
  /** The parsed application/x-www-form-urlencoded body; a repeated parameter arrives as an array. */
  form: Record<string, string | string[] | undefined>;
}

export type ClientAuthMethod = 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt';

export interface TokenResponse {
  status: number;
  headers: Record<string, string>;
  body: Record<string, unknown>;
  /** For the log, never for the client. */
  audit: { outcome: 'issued' | 'refused'; reason: string; clientId?: string; tenant?: string; method?: ClientAuthMethod; scope?: string };
}

export type OAuthError = 'invalid_request' | 'invalid_client' | 'unauthorized_client' | 'unsupported_grant_type' | 'invalid_scope';

/** RFC 6749 §5.1: token responses are never cached. */
const NO_STORE = { 'Content-Type': 'application/json;charset=UTF-8', 'Cache-Control': 'no-store', Pragma: 'no-cache' } as const;
const GENERIC_CLIENT_FAILURE = 'Client authentication failed.';

class Refusal {
  constructor(
    readonly error: OAuthError,
    readonly description: string,
    readonly reason: string,
    readonly basic = false,
  ) {}
}

function refused(r: Refusal, clientId?: string, method?: ClientAuthMethod): TokenResponse {
  const status = r.error === 'invalid_client' ? 401 : 400;
  const headers: Record<string, string> = { ...NO_STORE };
  // RFC 6749 §5.2: a client that tried HTTP Basic gets 401 with the Basic challenge.
  if (r.basic) headers['WWW-Authenticate'] = 'Basic realm="token", charset="UTF-8"';
  return { status, headers, body: { error: r.error, error_description: r.description }, audit: { outcome: 'refused', reason: r.reason, ...(clientId ? { clientId } : {}), ...(method ? { method } : {}) } };
}

const header = (req: TokenRequest, name: string): string | undefined => {
  const entry = Object.entries(req.headers).find(([k]) => k.toLowerCase() === name);
  const value = entry?.[1];
  return Array.isArray(value) ? value.join(', ') : value;
};

/** Form parameters, each at most once (RFC 6749 §3.2) and empty meaning absent. */
function formOf(req: TokenRequest): Map<string, string> | Refusal {
  const form = new Map<string, string>();
  for (const [name, value] of Object.entries(req.form)) {
    if (Array.isArray(value)) return new Refusal('invalid_request', `Parameter ${name} appears more than once.`, `repeated-${name}`);
    if (value !== undefined && value !== '') form.set(name, value);
  }
  return form;
}

/** RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding. */
function decodeBasic(value: string): { clientId: string; secret: string } | undefined {
  const m = /^Basic[ ]+([A-Za-z0-9+/]+={0,2})[ ]*$/i.exec(value);
  if (!m) return undefined;
  const decoded = Buffer.from(m[1] as string, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  try {
    const unescape = (s: string): string => decodeURIComponent(s.replace(/\+/g, ' '));
    return { clientId: unescape(decoded.slice(0, colon)), secret: unescape(decoded.slice(colon + 1)) };
  } catch {
    return undefined;
  }
}

interface Authenticated {
  client: RegisteredClient;
  method: ClientAuthMethod;
}

/**
 * Handles one token request. Checks, in order: the request's shape (one authentication method,
 * grant_type), the client (same answer for unknown client and wrong credentials), the grant, then
 * the scopes. Resolves with the response to send; rejects only when a dependency fails.
 */
export async function handleTokenRequest(req: TokenRequest, deps: TokenEndpointDeps): Promise<TokenResponse> {
  const form = formOf(req);
  if (form instanceof Refusal) return refused(form);
  const contentType = header(req, 'content-type');
  if (!contentType || !/^application\/x-www-form-urlencoded\b/i.test(contentType)) {
    return refused(new Refusal('invalid_request', 'The request body must be application/x-www-form-urlencoded.', 'content-type'));
  }
  const grantType = form.get('grant_type');
  if (!grantType) return refused(new Refusal('invalid_request', 'grant_type is required.', 'no-grant-type'));
  const auth = await authenticate(req, form, deps);
  if (auth instanceof Refusal) return refused(auth, form.get('client_id'));
  const { client, method } = auth;
  if (grantType !== 'client_credentials') {
    return refused(new Refusal('unsupported_grant_type', 'Only grant_type=client_credentials is supported.', `grant-type-${grantType.slice(0, 40)}`), client.clientId, method);
  }
  if (client.disabled) return refused(new Refusal('unauthorized_client', 'This client is disabled.', 'client-disabled'), client.clientId, method);
  const scope = grantScopes(form.get('scope'), client.scopes);
  if (scope instanceof Refusal) return refused(scope, client.clientId, method);
  const { accessToken, expiresIn } = await issueAccessToken(
    deps.signingKey,
    { clientId: client.clientId, tenant: client.tenant, scope },
    { issuer: deps.issuer, audience: deps.audience, lifetimeSeconds: deps.tokenLifetimeSeconds ?? DEFAULT_TOKEN_LIFETIME_SECONDS, ...(deps.now ? { now: deps.now } : {}) },
  );
  return {
    status: 200,
    headers: { ...NO_STORE },
    body: { access_token: accessToken, token_type: 'Bearer', expires_in: expiresIn, scope },
    audit: { outcome: 'issued', reason: 'issued', clientId: client.clientId, tenant: client.tenant, method, scope },
  };
}

/** Which client this is, by exactly one of the three methods (RFC 6749 §2.3: never more than one). */
async function authenticate(req: TokenRequest, form: Map<string, string>, deps: TokenEndpointDeps): Promise<Authenticated | Refusal> {
  const authorization = header(req, 'authorization');
  const usesJwt = form.has('client_assertion') || form.has('client_assertion_type');
  const methods = [authorization !== undefined, form.has('client_secret'), usesJwt].filter(Boolean).length;
  if (methods > 1) return new Refusal('invalid_request', 'Use exactly one client authentication method.', 'several-auth-methods');
  if (authorization !== undefined) return authenticateBasic(authorization, form, deps);
  if (form.has('client_secret')) return authenticateSecret(form.get('client_id'), form.get('client_secret') as string, 'client_secret_post', deps, false);
  if (usesJwt) return authenticateAssertion(form, deps);
  return new Refusal('invalid_client', 'Client authentication is required.', 'no-client-authentication');
}

async function authenticateBasic(authorization: string, form: Map<string, string>, deps: TokenEndpointDeps): Promise<Authenticated | Refusal> {
  const credentials = decodeBasic(authorization);
  if (!credentials) return new Refusal('invalid_client', 'The Authorization header must be HTTP Basic with the client_id and client_secret.', 'bad-authorization-header', true);
  const formId = form.get('client_id');
  if (formId !== undefined && formId !== credentials.clientId) return new Refusal('invalid_request', 'client_id differs from the one in the Authorization header.', 'client-id-mismatch');
  return authenticateSecret(credentials.clientId, credentials.secret, 'client_secret_basic', deps, true);
}

/** A shared secret: unknown client, no secret registered and wrong secret all answer the same. */
async function authenticateSecret(clientId: string | undefined, secret: string, method: ClientAuthMethod, deps: TokenEndpointDeps, basic: boolean): Promise<Authenticated | Refusal> {
  const fail = (reason: string): Refusal => new Refusal('invalid_client', GENERIC_CLIENT_FAILURE, reason, basic);
  if (!clientId) return new Refusal('invalid_client', 'client_id is required with client_secret.', 'no-client-id', basic);
  const client = await deps.findClient(clientId);
  if (!client || client.secretHash === undefined || client.jwks !== undefined || client.jwksUrl !== undefined) {
    await verifySecretAgainstNothing(secret);
    return fail(!client ? 'unknown-client' : 'client-uses-keys-not-secret');
  }
  if (!(await verifySecret(secret, client.secretHash))) return fail('wrong-secret');
  return { client, method };
}

/** private_key_jwt (client-confidential-asymmetric.html). */
async function authenticateAssertion(form: Map<string, string>, deps: TokenEndpointDeps): Promise<Authenticated | Refusal> {
  if (form.get('client_assertion_type') !== CLIENT_ASSERTION_TYPE) {
    return new Refusal('invalid_request', `client_assertion_type must be ${CLIENT_ASSERTION_TYPE}.`, 'bad-client-assertion-type');
  }
  const assertion = form.get('client_assertion');
  if (!assertion) return new Refusal('invalid_request', 'client_assertion is required.', 'no-client-assertion');
  const inspected = inspectClientAssertion(assertion, deps);
  if (!inspected.ok) return new Refusal('invalid_client', inspected.message, `assertion-${inspected.reason}`);
  const { clientId } = inspected.value;
  const formId = form.get('client_id');
  if (formId !== undefined && formId !== clientId) return new Refusal('invalid_client', 'client_id differs from the client_assertion iss and sub.', 'client-id-mismatch');
  const client = await deps.findClient(clientId);
  if (!client) return new Refusal('invalid_client', GENERIC_CLIENT_FAILURE, 'unknown-client');
  if (client.jwks === undefined && client.jwksUrl === undefined) return new Refusal('invalid_client', GENERIC_CLIENT_FAILURE, 'client-uses-secret-not-keys');
  const verified = await verifyClientAssertion(
    assertion,
    { clientId, ...(client.jwks !== undefined ? { jwks: client.jwks } : {}), ...(client.jwksUrl !== undefined ? { jwksUrl: client.jwksUrl } : {}) },
    deps,
  );
  if (!verified.ok) {
    const description = REGISTRATION_DEPENDENT.has(verified.reason) ? GENERIC_CLIENT_FAILURE : verified.message;
    return new Refusal('invalid_client', description, `assertion-${verified.reason}: ${verified.message}`);
  }
  return { client, method: 'private_key_jwt' };
}

/**
 * The scope to grant: the requested `system/` scopes cut down to the registered ones. SMART
 * Backend Services requires `scope`; RFC 6749 §3.3 then lets us answer `invalid_scope` when it is
 * absent, and when nothing of what was asked can be granted.
 */
function grantScopes(requestedText: string | undefined, registeredText: string): string | Refusal {
  if (requestedText === undefined) return new Refusal('invalid_scope', 'scope is required (for example "system/*.rs").', 'no-scope');
  const requested = parseScopes(requestedText);
  const granted = narrow(honouredScopes(requested.scopes), parseScopes(registeredText).scopes);
  if (granted.length === 0) {
    const invalid = requested.invalid.length > 0 ? ` Not understood: ${requested.invalid.slice(0, 5).join(' ')}.` : '';
    return new Refusal('invalid_scope', `None of the requested scopes can be granted to this client.${invalid}`, 'no-grantable-scope');
  }
  return formatScopes(granted);
}
