/**
 * The Express side of SMART Backend Services (the rules themselves are in src/auth):
 *  - POST /auth/token: OAuth 2.0 client_credentials (client_secret_basic, client_secret_post,
 *    private_key_jwt), answered as RFC 6749 JSON;
 *  - GET /auth/jwks: the public keys our access tokens are signed with;
 *  - GET /auth/jwks/<id>: one tenant's public key for its client assertions to EHRs
 *    (src/ehr/outbound-keys.ts), the JWKS URL an EHR registers for that practice;
 *  - GET /fhir/.well-known/smart-configuration: where those are and what we support;
 *  - requireToken: passport's bearer strategy in front of the API, answering 401 with an
 *    OperationOutcome and `WWW-Authenticate: Bearer` (RFC 6750 §3).
 * https://hl7.org/fhir/smart-app-launch/backend-services.html
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import passport from 'passport';
import { Strategy as BearerStrategy } from 'passport-http-bearer';
import type { JSONWebKeySet } from 'jose';
import type { Logger } from 'pino';
import {
  handleTokenRequest,
  JwksFetcher,
  parseScopes,
  permits,
  publicJwks,
  verifyAccessToken,
  type Interaction,
  type Scope,
  type SigningKey,
} from '../auth/index.js';
import { FhirError, fhirError } from '../fhir/errors.js';
import { SERVER_WRITTEN_TYPES } from '../fhir/resource-types.js';
import type { ClientStore } from '../store/clients.js';
import type { Repository } from '../store/repository.js';
import type { AuditNote } from './audit.js';
import type { FhirContext } from '../interactions/index.js';

export interface AuthOptions {
  signingKey: SigningKey;
  /** Each tenant's key for client assertions to EHRs (src/ehr/outbound-keys.ts), published at /auth/jwks/<id>. */
  outboundKeys: TenantJwks;
  clients: ClientStore;
  /** The server's public base (BASE_URL): tokens are issued by it, for `${baseUrl}/fhir`. */
  baseUrl: string;
  /** Fetches clients' JWKS URLs (https only unless told otherwise, for tests on loopback). */
  jwksFetcher?: JwksFetcher;
  tokenLifetimeSeconds?: number;
}

/** The public JWK Sets of tenants' keys for client assertions to EHRs, by the opaque id of their URL. */
export interface TenantJwks {
  jwks(id: string): Promise<JSONWebKeySet | undefined>;
}

/** Who is calling, from a verified access token. */
export interface Caller {
  clientId: string;
  tenant: string;
  scopes: Scope[];
}

/** The caller of a request that passed requireToken. */
export function callerOf(res: Response): Caller {
  const caller = res.locals.caller as Caller | undefined;
  if (!caller) throw new Error('no caller: the route is not behind requireToken');
  return caller;
}

/**
 * The repository of the caller's tenant: every statement of the request runs in the tenant's own
 * schema. A token for a tenant no longer registered is refused like any invalid token.
 */
export async function tenantRepository(ctx: FhirContext, caller: Caller): Promise<Repository> {
  if (!ctx.tenants) return ctx.repo;
  const repo = await ctx.tenants.repository(caller.tenant);
  if (!repo) throw fhirError('token-invalid', 'The access token is for a tenant that is not registered here');
  return repo;
}

/**
 * The per-request check of FhirContext.authorize: AuditEvents are never created, changed or
 * deleted through the API (also not in Bundle entries), whatever the scopes; anything else is
 * as the caller's scopes allow.
 */
export function authorizer(caller: Caller): (resourceType: string, needed: readonly Interaction[]) => void {
  return (resourceType, needed) => {
    if (SERVER_WRITTEN_TYPES.has(resourceType) && needed.some((n) => n === 'create' || n === 'update' || n === 'delete')) {
      throw new FhirError(
        'methodNotAllowed',
        { code: 'audit-read-only', message: `${resourceType} resources are written by the server alone: they can be read and searched, never created, changed or deleted` },
        { Allow: 'GET' },
      );
    }
    requireScope(caller, resourceType, needed);
  };
}

/** Throws 403 unless the caller's scopes grant every one of `needed` on `resourceType`. */
export function requireScope(caller: Caller, resourceType: string, needed: readonly Interaction[]): void {
  for (const interaction of needed) {
    if (!permits(caller.scopes, resourceType, interaction)) {
      const letter = { create: 'c', read: 'r', update: 'u', delete: 'd', search: 's' }[interaction];
      throw fhirError('scope-insufficient', `This token's scopes do not allow ${interaction} on ${resourceType} (needs system/${resourceType}.${letter} or a wider scope)`);
    }
  }
}

export function smartConfiguration(baseUrl: string): Record<string, unknown> {
  return {
    issuer: baseUrl,
    jwks_uri: `${baseUrl}/auth/jwks`,
    token_endpoint: `${baseUrl}/auth/token`,
    token_endpoint_auth_methods_supported: ['private_key_jwt', 'client_secret_basic', 'client_secret_post'],
    token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
    grant_types_supported: ['client_credentials'],
    scopes_supported: ['system/*.read', 'system/*.write', 'system/*.*', 'system/*.cruds', 'system/*.rs'],
    response_types_supported: ['token'],
    capabilities: ['client-confidential-asymmetric', 'client-confidential-symmetric', 'permission-v1', 'permission-v2'],
  };
}

/** /auth/token, /auth/jwks and /auth/jwks/<id>. */
export function authRoutes(options: AuthOptions, logger: Logger): Router {
  const router = express.Router();
  const jwksFetcher = options.jwksFetcher ?? new JwksFetcher();
  const deps = {
    findClient: (clientId: string) => options.clients.findClient(clientId),
    rememberJti: (clientId: string, jti: string, keepUntil: number) => options.clients.rememberJti(clientId, jti, keepUntil),
    jwksFetcher,
    signingKey: options.signingKey,
    tokenUrl: `${options.baseUrl}/auth/token`,
    issuer: options.baseUrl,
    audience: `${options.baseUrl}/fhir`,
    ...(options.tokenLifetimeSeconds ? { tokenLifetimeSeconds: options.tokenLifetimeSeconds } : {}),
  };
  const form = express.urlencoded({ extended: false, limit: '64kb', type: () => true });
  router.post('/token', form, async (req: Request, res: Response) => {
    const body = typeof req.body === 'object' && req.body !== null ? (req.body as Record<string, string | string[]>) : {};
    const headers = { ...req.headers, 'content-type': req.get('content-type') };
    let answer;
    try {
      answer = await handleTokenRequest({ headers, form: body }, deps);
    } catch (error) {
      logger.error({ requestId: res.locals.requestId, err: error }, 'token endpoint failed');
      throw fhirError('database-unavailable', 'The token endpoint cannot reach its database');
    }
    // The reason (wrong secret, replayed jti, …) is for the log; the client gets RFC 6749's answer.
    logger.info({ requestId: res.locals.requestId, audit: answer.audit }, 'token request');
    const asked = new URLSearchParams();
    for (const name of ['grant_type', 'scope']) if (typeof body[name] === 'string') asked.set(name, body[name]);
    const note: AuditNote = {
      kind: 'login',
      query: { query: asked.toString() },
      ...(answer.audit.outcome === 'refused' ? { outcomeText: answer.audit.reason } : {}),
      // A refused request's client id is only a claim: recorded, but tied to no tenant.
      ...(answer.audit.clientId ? { client: { clientId: answer.audit.clientId, ...(answer.audit.outcome === 'issued' && answer.audit.tenant ? { tenant: answer.audit.tenant } : {}) } } : {}),
    };
    res.locals.audit = note;
    res.status(answer.status).set(answer.headers).send(JSON.stringify(answer.body));
  });
  router.get('/jwks', (_req: Request, res: Response) => {
    res.type('application/json').set('Cache-Control', 'public, max-age=300').send(JSON.stringify(publicJwks(options.signingKey)));
  });
  router.get('/jwks/:id', async (req: Request, res: Response) => {
    let jwks;
    try {
      jwks = await options.outboundKeys.jwks(String(req.params.id));
    } catch (error) {
      logger.error({ requestId: res.locals.requestId, err: error }, 'tenant JWKS lookup failed');
      throw fhirError('database-unavailable', 'The JWK Set cannot be read from the database');
    }
    if (!jwks) throw fhirError('unknown-path', 'No JWK Set is published at this address');
    res.type('application/json').set('Cache-Control', 'public, max-age=300').send(JSON.stringify(jwks));
  });
  return router;
}

/** Tokens verified recently, so that a client's every request does not verify its signature again. */
const VERIFIED_CACHE_SIZE = 1_000;

/** passport's bearer strategy, verifying our own access tokens. */
export function requireToken(options: AuthOptions, logger: Logger) {
  const authenticator = new passport.Passport();
  // A token that passed verification, until it expires (by its own exp, no tolerance added):
  // an ES384 verification costs more CPU than a read by id, and a client sends one token many times.
  const verified = new Map<string, { caller: Caller; exp: number }>();
  authenticator.use(
    new BearerStrategy((token, done) => {
      const known = verified.get(token);
      if (known && known.exp > Date.now() / 1000) return done(null, known.caller);
      if (known) verified.delete(token);
      verifyAccessToken(token, { keys: options.signingKey, issuer: options.baseUrl, audience: `${options.baseUrl}/fhir` }).then(
        (result) => {
          if (!result.ok) return done(null, false, result.reason);
          const { sub, tenant, scope, exp } = result.value as unknown as { sub: string; tenant: string; scope: string; exp: number };
          const caller: Caller = { clientId: sub, tenant, scopes: parseScopes(scope).scopes };
          if (verified.size >= VERIFIED_CACHE_SIZE) verified.delete(verified.keys().next().value as string);
          verified.set(token, { caller, exp });
          return done(null, caller);
        },
        (error: unknown) => done(error),
      );
    }),
  );
  return (req: Request, res: Response, next: NextFunction): void => {
    // The common case without passport (a strategy and several closures per request): a Bearer
    // header with a token verified before and not expired, and no access_token in the URL.
    // Anything else (no token, a new one, one in the URL) takes passport's way below.
    const header = req.headers.authorization;
    if (header?.startsWith('Bearer ') && !req.originalUrl.includes('access_token')) {
      const known = verified.get(header.slice(7).trim());
      if (known && known.exp > Date.now() / 1000) {
        res.locals.caller = known.caller;
        next();
        return;
      }
    }
    // passport-http-bearer also reads ?access_token= (RFC 6750 §2.3): a token in a URL ends up in
    // logs, caches and links (our own paging links included), so it is refused, never used.
    if (new URL(req.originalUrl, 'http://x').searchParams.has('access_token')) {
      next(new FhirError('unauthorized', { code: 'token-invalid', message: 'Send the access token in the Authorization header, never in the URL' }, { 'WWW-Authenticate': 'Bearer realm="fhir", error="invalid_request"' }));
      return;
    }
    const authenticate = authenticator.authenticate('bearer', { session: false }, (error: unknown, caller: Caller | false, info: unknown) => {
      if (error) return next(error);
      if (!caller) {
        const sent = (req.get('authorization') ?? '').trim() !== '';
        const reason = typeof info === 'string' ? info : 'missing';
        logger.info({ requestId: res.locals.requestId, reason: sent ? reason : 'no token' }, 'access token refused');
        return next(
          sent
            ? new FhirError('unauthorized', { code: 'token-invalid', message: 'The access token is not valid (expired, malformed or not issued by this server); get a new one at /auth/token' }, { 'WWW-Authenticate': 'Bearer realm="fhir", error="invalid_token"' })
            : new FhirError('unauthorized', { code: 'token-missing', message: 'This request needs Authorization: Bearer <access token>; get one at /auth/token' }, { 'WWW-Authenticate': 'Bearer realm="fhir"' }),
        );
      }
      res.locals.caller = caller;
      next();
    }) as (req: Request, res: Response, next: NextFunction) => void;
    authenticate(req, res, next);
  };
}
