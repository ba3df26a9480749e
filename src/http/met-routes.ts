/**
 * The MET documentation API at /met/v1 (application/json): documents pushed by MET software,
 * their JSON Schemas and the measurement catalog. Errors are RFC 9457 problem details with one
 * entry per problem in `errors` (JSON Pointer and message), never a FHIR OperationOutcome: the
 * senders are MET software, not FHIR clients.
 */
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Logger } from 'pino';
import { DocumentError, type MetApi } from '../met/engine.js';
import type { FhirContext } from '../interactions/index.js';
import { callerOf, requireScope, tenantRepository } from './auth.js';
import { MAX_BODY_DEPTH, nestedDeeperThan } from './negotiation.js';
import type { AuditNote } from './audit.js';

/** What a push may create and update (src/met mappings): the token must allow both on each. */
// Every type a push can write (a client's precautions are Flags, its referring physician a Practitioner).
const MET_RESOURCE_TYPES = ['Patient', 'Observation', 'Goal', 'CarePlan', 'Encounter', 'Procedure', 'DocumentReference', 'Condition', 'Provenance', 'Flag', 'Practitioner'];

const PROBLEM_JSON = 'application/problem+json';

export function metRoutes(api: MetApi, ctx: FhirContext, options: { maxBodyBytes: number; logger: Logger }): express.Router {
  const router = express.Router();
  const parseJson = express.json({ limit: options.maxBodyBytes, strict: true, type: () => true });

  router.get('/schemas/:name', (req: Request, res: Response) => {
    const text = api.schemas.files.get(String(req.params.name));
    if (!text) return problem(res, 404, 'No such schema', [], `Schemas: ${[...api.schemas.files.keys()].join(', ')}`);
    res.type('application/schema+json').send(text);
  });

  router.get('/measures', (_req: Request, res: Response) => {
    res.json(api.catalog.file);
  });

  router.post('/:collection', parseJson, async (req: Request, res: Response) => {
    if (nestedDeeperThan(req.body, MAX_BODY_DEPTH)) return problem(res, 400, 'The body is nested too deeply', [], `Arrays and objects may nest at most ${MAX_BODY_DEPTH} levels deep`);
    const type = api.typeOf(String(req.params.collection));
    if (!type) return problem(res, 404, 'No such document collection', [], `Documents are pushed to: ${api.collections.map((c) => `/met/v1/${c}`).join(', ')}`);
    const note: AuditNote = { kind: 'operation', query: { query: new URLSearchParams({ collection: String(req.params.collection) }).toString() } };
    res.locals.audit = note;
    const caller = callerOf(res);
    for (const t of MET_RESOURCE_TYPES) requireScope(caller, t, ['create', 'update']);
    const software = req.get('x-met-software')?.slice(0, 200) || 'unnamed MET software';
    const repo = await tenantRepository(ctx, caller);
    const result = await api.push(repo, type, req.body, { id: 'default', software });
    const touched = result.resources.find((r) => r.type === 'Patient') ?? result.resources[0];
    if (touched) note.resource = { type: touched.type, id: touched.id, versionId: touched.version };
    res.status(result.status === 'created' ? 201 : 200).json(result);
  });

  router.use((_req: Request, res: Response) => {
    problem(res, 404, 'Nothing is served at this path', [], `The MET API takes POST /met/v1/{${api.collections.join('|')}}`);
  });

  router.use((error: unknown, _req: Request, res: Response, _next: NextFunction) => {
    if (error instanceof DocumentError) return problem(res, error.status, error.title, error.problems);
    const type = (error as { type?: unknown } | null)?.type;
    if (type === 'entity.parse.failed') return problem(res, 400, 'The body is not valid JSON', [], (error as Error).message);
    if (type === 'entity.too.large') return problem(res, 413, 'The body is too large', [], `The limit is ${options.maxBodyBytes} bytes`);
    const status = (error as { status?: unknown } | null)?.status;
    if (typeof status === 'number' && status >= 400 && status < 500) return problem(res, status, (error as Error).message, []);
    if (status === 503) return problem(res, 503, 'The database is unreachable; retry later', []);
    options.logger.error({ requestId: res.locals.requestId, err: error }, 'MET request failed');
    problem(res, 500, 'Internal error', [], `Quote request id ${String(res.locals.requestId)} when reporting this`);
  });
  return router;
}

function problem(res: Response, status: number, title: string, errors: { pointer: string; code: string; detail: string }[], detail?: string): void {
  res.status(status).type(PROBLEM_JSON).send(JSON.stringify({ type: 'about:blank', title, status, ...(detail ? { detail } : {}), ...(errors.length > 0 ? { errors } : {}) }));
}
