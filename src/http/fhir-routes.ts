/**
 * The Express adapter of the FHIR API: routes the interaction table, turns Express requests into
 * FhirRequests and FhirResponses into HTTP. No FHIR logic lives here.
 * Stages and the status each produces on error:
 *   negotiate (406) → content type (415) → parse body (400 malformed, 413 too large)
 *   → interaction (400, 404, 410, 412, 422, 409, 503) → send (Prefer, ETag, Location).
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { match } from 'path-to-regexp';
import { FhirError, fhirError, informationOutcome } from '../fhir/errors.js';
import { queryParams } from '../interactions/conditions.js';
import { INTERACTIONS, type FhirContext, type FhirRequest, type FhirResponse, type Interaction } from '../interactions/index.js';
import { checkRequestType, handlingPreference, MAX_BODY_DEPTH, nestedDeeperThan, responseType, returnPreference } from './negotiation.js';
import { requestIdOf } from './send.js';
import { REQUIRED_ACCESS } from '../auth/index.js';
import { authorizer, callerOf, tenantRepository } from './auth.js';
import type { AuditNote } from './audit.js';

export interface FhirRoutesOptions {
  maxBodyBytes: number;
}

export function fhirRoutes(ctx: FhirContext, options: FhirRoutesOptions): Router {
  const router = express.Router({ caseSensitive: true, strict: false });
  const json = express.json({ limit: options.maxBodyBytes, strict: true, type: () => true });
  const parseJson = [
    json,
    (req: Request, _res: Response, next: NextFunction) => {
      if (nestedDeeperThan(req.body, MAX_BODY_DEPTH)) throw fhirError('body-too-deep', `The body nests arrays and objects more than ${MAX_BODY_DEPTH} levels deep`);
      next();
    },
  ];
  const parseForm = express.urlencoded({ limit: options.maxBodyBytes, extended: false, type: () => true });

  // Negotiate the response format first: even errors are sent in the negotiated type.
  router.use((req, res, next) => {
    const format = firstQueryValue(req, '_format');
    res.locals.contentType = 'application/fhir+json';
    res.locals.contentType = responseType(format, req.get('accept'));
    next();
  });

  for (const interaction of INTERACTIONS) {
    const body = interaction.body ?? (interaction.method === 'POST' || interaction.method === 'PUT' ? 'resource' : 'none');
    const parsers = body === 'none' ? [] : [checkBodyType(body), ...(body === 'form' ? [parseForm] : parseJson)];
    router[methodName(interaction)](interaction.path, ...parsers, (req: Request, res: Response) => run(ctx, interaction, req, res));
  }

  // A path we route with another method is 405 (with Allow); any other path is 404.
  const matchers = INTERACTIONS.map((i) => ({ method: i.method, test: match(i.path, { decode: decodeURIComponent }) }));
  router.use((req: Request) => {
    const allowed = [...new Set(matchers.filter((m) => m.test(req.path) !== false).map((m) => m.method))];
    if (allowed.length > 0) {
      throw new FhirError(
        'methodNotAllowed',
        { code: 'method-not-allowed', message: `${req.method} is not supported on ${req.path}; allowed: ${allowed.join(', ')}` },
        { Allow: allowed.join(', ') },
      );
    }
    throw fhirError('unknown-path', `No FHIR interaction at ${req.path}`);
  });
  return router;
}

function methodName(interaction: Interaction): 'get' | 'post' | 'put' | 'delete' | 'patch' {
  return interaction.method.toLowerCase() as 'get' | 'post' | 'put' | 'delete' | 'patch';
}

function checkBodyType(kind: 'resource' | 'form' | 'patch') {
  return (req: Request, _res: Response, next: NextFunction): void => {
    const hasBody = req.get('content-length') !== undefined ? req.get('content-length') !== '0' : req.get('transfer-encoding') !== undefined;
    if (hasBody) checkRequestType(req.get('content-type'), kind);
    next();
  };
}

async function run(ctx: FhirContext, interaction: Interaction, req: Request, res: Response): Promise<void> {
  const request = toFhirRequest(req);
  if (interaction.resourceType) request.resourceType = interaction.resourceType;
  let reqCtx = ctx;
  if (interaction.code !== 'capabilities') {
    // What the audit log records of this request (app.ts), also when it fails below.
    const note: AuditNote = { kind: auditKind(interaction.code, request), ...auditTarget(interaction, request, req) };
    res.locals.audit = note;
    // Every interaction but the CapabilityStatement is behind requireToken (app.ts).
    const caller = callerOf(res);
    const authorize = authorizer(caller);
    reqCtx = { ...ctx, repo: await tenantRepository(ctx, caller), authorize, tenant: caller.tenant };
    const needed = [...(REQUIRED_ACCESS[interaction.code] ?? [])];
    if (interaction.code === 'create' && request.ifNoneExist !== undefined) needed.push('search');
    // Bundles are checked entry by entry (bundle.ts); system-level history needs a wildcard scope.
    if (interaction.code !== 'transaction') authorize(request.resourceType ?? '*', needed);
    const result = await interaction.handle(reqCtx, request);
    if (result.version) note.resource = { type: result.version.resourceType, id: result.version.id, versionId: result.version.versionId };
    send(req, res, result);
    return;
  }
  const result = await interaction.handle(reqCtx, request);
  send(req, res, result);
}

/** The audit event kind of an interaction (BALP distinguishes read, create, update, delete, query). */
function auditKind(code: Interaction['code'], request: FhirRequest): AuditNote['kind'] {
  switch (code) {
    case 'read':
    case 'vread':
    case 'create':
    case 'update':
    case 'delete':
    case 'patch':
      return code;
    case 'conditional-update':
      return 'update';
    case 'conditional-delete':
      return 'delete';
    case 'conditional-patch':
      return 'patch';
    case 'search-type':
      return 'search';
    case 'history-instance':
    case 'history-type':
    case 'history-system':
      return 'history';
    case 'transaction':
    case 'batch':
      return (request.body as { type?: unknown } | undefined)?.type === 'batch' ? 'batch' : 'transaction';
    case 'capabilities':
    case 'operation':
      return 'operation';
  }
}

/** What the request names: the resource (type, id, version), or the query of a search or history. */
function auditTarget(interaction: Interaction, request: FhirRequest, req: Request): Pick<AuditNote, 'resource' | 'query'> {
  const search = interaction.code === 'search-type' || interaction.code.startsWith('history') || interaction.code.startsWith('conditional');
  const queryString = (): string => {
    if (request.form) return new URLSearchParams(Object.entries(request.form).flatMap(([k, vs]) => vs.map((v) => [k, v]))).toString();
    const at = req.originalUrl.indexOf('?');
    return at < 0 ? '' : req.originalUrl.slice(at + 1);
  };
  return {
    ...(request.resourceType ? { resource: { type: request.resourceType, ...(request.id ? { id: request.id } : {}), ...(request.versionId ? { versionId: request.versionId } : {}) } } : {}),
    ...(search ? { query: { ...(request.resourceType ? { resourceType: request.resourceType } : {}), query: queryString() } } : {}),
  };
}

function toFhirRequest(req: Request): FhirRequest {
  const params = req.params as Record<string, string | undefined>;
  const query = queryParams(new URL(req.originalUrl, 'http://localhost').search);
  const ifMatch = req.get('if-match');
  const ifNoneExist = req.get('if-none-exist');
  const handling = handlingPreference(req.get('prefer'));
  const form = formOf(req);
  return {
    ...(params.type !== undefined ? { resourceType: params.type } : {}),
    ...(params.id !== undefined ? { id: params.id } : {}),
    ...(params.vid !== undefined ? { versionId: params.vid } : {}),
    query,
    ...(ifMatch !== undefined ? { ifMatch: parseIfMatch(ifMatch) } : {}),
    ...(ifNoneExist !== undefined ? { ifNoneExist } : {}),
    ...(handling ? { handling } : {}),
    returnPreference: returnPreference(req.get('prefer')),
    ...(form ? { form } : {}),
    ...(req.get('content-type') ? { contentType: req.get('content-type') } : {}),
    body: req.body as unknown,
  };
}

/** The parameters of a form body (POST …/_search), each with all its values. */
function formOf(req: Request): Record<string, string[]> | undefined {
  if (!req.is('application/x-www-form-urlencoded') || typeof req.body !== 'object' || req.body === null) return undefined;
  const form = Object.create(null) as Record<string, string[]>;
  for (const [name, value] of Object.entries(req.body as Record<string, unknown>)) {
    const values = Array.isArray(value) ? value : [value];
    form[name] = values.filter((v): v is string => typeof v === 'string');
  }
  return form;
}

/** If-Match: W/"3" (or "3") → 3. https://hl7.org/fhir/R4/http.html#concurrency */
export function parseIfMatch(header: string): string {
  const m = header.trim().match(/^(?:W\/)?"([A-Za-z0-9\-.]{1,64})"$/);
  if (!m?.[1]) throw fhirError('invalid-if-match', `If-Match must be an ETag such as W/"3"; got '${header}'`, 'If-Match');
  return m[1];
}

function send(req: Request, res: Response, result: FhirResponse): void {
  const { version } = result;
  if (version) {
    res.set('ETag', `W/"${version.versionId}"`);
    res.set('Last-Modified', new Date(version.lastUpdated).toUTCString());
  }
  if (result.location) res.set('Location', result.location);
  res.status(result.status);
  // A Bundle (POST to the base) is answered with its response Bundle; it applies Prefer to its entries.
  const isWrite = (req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH') && req.path !== '/' && !req.path.endsWith('/_search');
  const preference = isWrite ? returnPreference(req.get('prefer')) : 'representation';
  if (result.status === 204 || preference === 'minimal') {
    res.end();
    return;
  }
  res.type(String(res.locals.contentType));
  if (preference === 'OperationOutcome') {
    const what = result.status === 201 ? 'created' : 'updated';
    const ref = version ? `${version.resourceType}/${version.id}/_history/${version.versionId}` : '';
    res.send(JSON.stringify(informationOutcome(what === 'created' ? 'resource-created' : 'resource-updated', `${ref} ${what}`, requestIdOf(res))));
    return;
  }
  res.send(version?.json ?? JSON.stringify(result.resource));
}

function firstQueryValue(req: Request, name: string): string | undefined {
  const value = (req.query as Record<string, unknown>)[name];
  if (Array.isArray(value)) return typeof value[0] === 'string' ? value[0] : undefined;
  return typeof value === 'string' ? value : undefined;
}

