/**
 * The Express application: request ids and logs, the open (unauthenticated) probes, the token
 * endpoint and SMART configuration, the access-token check in front of /fhir and /met/v1, the
 * FHIR routes, and the one error handler that turns everything thrown into an
 * OperationOutcome (unknown errors are 500 and their details go to the log only).
 */
import { randomUUID } from 'node:crypto';
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Logger } from 'pino';
import { FhirError, fhirError, toFhirError } from '../fhir/errors.js';
import type { FhirContext } from '../interactions/index.js';
import { MetApi } from '../met/engine.js';
import { fhirRoutes } from './fhir-routes.js';
import { authRoutes, requireToken, smartConfiguration, type AuthOptions } from './auth.js';
import { metRoutes } from './met-routes.js';
import { sendOutcome } from './send.js';
import { auditRequests } from './audit.js';
import { callerKey, noStore, queryLengthLimit, rateLimit, securityHeaders } from './limits.js';
import type { AuditLog } from '../audit/log.js';

export interface AppOptions {
  ctx: FhirContext;
  logger: Logger;
  maxBodyBytes: number;
  /** SMART Backend Services: our signing key, the registered clients, the public base URL. */
  auth: AuthOptions;
  /** False while shutting down, so that /readyz turns 503 before the server stops. */
  isAccepting?: () => boolean;
  /** The MET documentation API (made from ctx when not given). */
  met?: MetApi;
  /** Request limits (config.ts); unset: none (tests of other parts). */
  limits?: { maxQueryBytes: number; perMinute: number; burst: number; tokenPerMinute: number };
  /** Where every request's AuditEvent goes (none: nothing is audited, for tests of other parts). */
  audit?: AuditLog;
}

const REQUEST_ID = /^[A-Za-z0-9\-.]{1,64}$/;

export function createApp(options: AppOptions): express.Express {
  const { ctx, logger } = options;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);

  app.use((req, res, next) => {
    const given = req.get('x-request-id');
    const requestId = given && REQUEST_ID.test(given) ? given : randomUUID();
    res.locals.requestId = requestId;
    res.set('X-Request-Id', requestId);
    const started = process.hrtime.bigint();
    res.on('finish', () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      // The path only: query strings may carry identifiers (PHI) and stay out of the logs.
      logger.info({ requestId, method: req.method, path: req.originalUrl.split('?')[0], status: res.statusCode, ms: Math.round(ms * 100) / 100 }, 'request');
    });
    next();
  });

  if (options.audit) app.use(auditRequests(options.audit, { ...ctx.software, baseUrl: options.auth.baseUrl }));
  // Security headers on every answer; nothing with health data may be cached on the way.
  app.use(securityHeaders(), noStore());
  if (options.limits) app.use(queryLengthLimit(options.limits.maxQueryBytes));
  // One budget per client across /fhir and /met/v1 (keyed after the token check); token requests by address.
  const perClient = options.limits && options.limits.perMinute > 0 ? rateLimit({ perMinute: options.limits.perMinute, burst: options.limits.burst, keyOf: callerKey }) : undefined;
  const perAddress =
    options.limits && options.limits.tokenPerMinute > 0 ? rateLimit({ perMinute: options.limits.tokenPerMinute, keyOf: (req) => req.socket.remoteAddress ?? 'unknown' }) : undefined;

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/readyz', async (_req, res) => {
    if (options.isAccepting && !options.isAccepting()) {
      res.status(503).json({ status: 'shutting-down' });
      return;
    }
    try {
      await ctx.repo.ping();
      res.json({ status: 'ready', database: 'reachable' });
    } catch {
      res.status(503).json({ status: 'unavailable', database: 'unreachable' });
    }
  });

  if (perAddress) app.use('/auth/token', perAddress);
  app.use('/auth', authRoutes(options.auth, logger));
  app.get('/fhir/.well-known/smart-configuration', (_req: Request, res: Response) => {
    res.type('application/json').send(JSON.stringify(smartConfiguration(options.auth.baseUrl)));
  });
  const requireAccessToken = requireToken(options.auth, logger);
  app.use('/fhir', (req: Request, res: Response, next: NextFunction) => {
    if (req.path === '/metadata') return next();
    requireAccessToken(req, res, next);
  });
  if (perClient) app.use('/fhir', perClient);
  app.use('/fhir', fhirRoutes(ctx, { maxBodyBytes: options.maxBodyBytes }));

  app.use('/met/v1', requireAccessToken);
  if (perClient) app.use('/met/v1', perClient);
  app.use('/met/v1', metRoutes(options.met ?? new MetApi(ctx.validator), ctx, { maxBodyBytes: options.maxBodyBytes, logger }));

  app.use((_req: Request, _res: Response) => {
    throw fhirError('unknown-path', 'Nothing is served at this path; the FHIR API is at /fhir');
  });

  app.use((error: unknown, _req: Request, res: Response, _next: NextFunction) => {
    const fhir = error instanceof FhirError ? error : fromExpressError(error);
    if (fhir.status >= 500) {
      logger.error({ requestId: res.locals.requestId, err: error }, 'request failed');
    }
    sendOutcome(res, fhir);
  });
  return app;
}

/** body-parser's errors carry `type` and `status`; anything else is internal. */
function fromExpressError(error: unknown): FhirError {
  const type = (error as { type?: unknown } | null)?.type;
  switch (type) {
    case 'entity.parse.failed':
      return fhirError('malformed-json', `The body is not valid JSON: ${(error as Error).message}`);
    case 'entity.too.large': {
      const limit = (error as { limit?: number }).limit;
      return fhirError('body-too-large', `The body is larger than the limit of ${limit ?? '?'} bytes`);
    }
    case 'encoding.unsupported':
    case 'charset.unsupported':
      return fhirError('charset-not-supported', 'Send the body in UTF-8');
    case 'request.aborted':
      return fhirError('request-aborted', 'The client aborted the request');
    case 'parameters.too.many':
      return fhirError('body-too-large', 'The form body has more parameters than the server accepts (1,000)');
    case 'request.size.invalid':
      return fhirError('body-size-mismatch', 'The body is not as long as Content-Length says');
    default:
      return toFhirError(error);
  }
}
