/**
 * history at instance, type and system level: https://hl7.org/fhir/R4/http.html#history
 * Newest first. Pages are cut by the write sequence, so a `next` link keeps giving the same
 * versions while new ones are written.
 */
import type { Bundle, BundleEntry, BundleLink } from 'fhir/r4.js';
import { fhirError } from '../fhir/errors.js';
import type { StoredVersion } from '../store/repository.js';
import { allows, type FhirContext, type FhirRequest, type FhirResponse, type Interaction } from './types.js';
import { requireInstance, requireType, singleParam } from './params.js';

export const HISTORY_DEFAULT_COUNT = 50;
export const HISTORY_MAX_COUNT = 1000;
const KNOWN_PARAMETERS = new Set(['_count', '_since', '_cursor', '_format', '_pretty']);
const INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/;

interface Scope {
  resourceType?: string;
  id?: string;
  /** System level: types left out (those the caller's wildcard scope does not cover). */
  excludeTypes?: string[];
}

async function history(ctx: FhirContext, req: FhirRequest, scope: Scope): Promise<FhirResponse> {
  for (const name of Object.keys(req.query)) {
    if (!KNOWN_PARAMETERS.has(name)) {
      throw fhirError('unknown-parameter', `Parameter '${name}' is not supported by history; use _count and _since`, name);
    }
  }
  const count = parseCount(singleParam(req, '_count'));
  const since = singleParam(req, '_since');
  if (since !== undefined && (!INSTANT.test(since) || Number.isNaN(Date.parse(since)))) {
    throw fhirError('invalid-instant', `_since must be an instant with a time zone, such as 2026-01-31T10:00:00Z; got '${since}'`, '_since');
  }
  const cursor = singleParam(req, '_cursor');
  if (cursor !== undefined && !/^\d{1,18}$/.test(cursor)) {
    throw fhirError('invalid-cursor', `_cursor '${cursor}' is not a cursor this server issued`, '_cursor');
  }
  const page = await ctx.repo.history({ resourceType: scope.resourceType, id: scope.id, excludeTypes: scope.excludeTypes, count, ...(since ? { since } : {}), ...(cursor ? { before: cursor } : {}) });

  const path = [scope.resourceType, scope.id, '_history'].filter(Boolean).join('/');
  const link = (relation: string, pageCursor?: string): BundleLink => {
    const params = new URLSearchParams({ _count: String(count) });
    if (since) params.set('_since', since);
    if (pageCursor) params.set('_cursor', pageCursor);
    return { relation, url: `${ctx.fhirBase}/${path}?${params.toString()}` };
  };
  const bundle: Bundle = {
    resourceType: 'Bundle',
    type: 'history',
    link: [link('self', cursor), ...(page.next ? [link('next', page.next)] : [])],
    entry: page.versions.map((v) => entryOf(ctx, v)),
  };
  return { status: 200, resource: bundle };
}

function parseCount(raw: string | undefined): number {
  if (raw === undefined) return HISTORY_DEFAULT_COUNT;
  const count = Number(raw);
  if (!/^\d+$/.test(raw) || count < 1) throw fhirError('invalid-count', `_count must be a positive whole number; got '${raw}'`, '_count');
  return Math.min(count, HISTORY_MAX_COUNT);
}

function entryOf(ctx: FhirContext, v: StoredVersion): BundleEntry {
  const fullUrl = `${ctx.fhirBase}/${v.resourceType}/${v.id}`;
  const status = v.deleted ? '204 No Content' : v.versionId === '1' ? '201 Created' : '200 OK';
  return {
    fullUrl,
    ...(v.json ? { resource: JSON.parse(v.json) as BundleEntry['resource'] } : {}),
    request: { method: v.method, url: v.method === 'POST' ? v.resourceType : `${v.resourceType}/${v.id}` },
    response: { status, etag: `W/"${v.versionId}"`, lastModified: v.lastUpdated },
  };
}

export const historyInstance: Interaction = {
  code: 'history-instance',
  level: 'instance',
  method: 'GET',
  path: '/:type/:id/_history',
  handle: (ctx, req) => history(ctx, req, requireInstance(req)),
};

export const historyType: Interaction = {
  code: 'history-type',
  level: 'type',
  method: 'GET',
  path: '/:type/_history',
  handle: (ctx, req) => history(ctx, req, { resourceType: requireType(req) }),
};

export const historySystem: Interaction = {
  code: 'history-system',
  level: 'system',
  method: 'GET',
  path: '/_history',
  // AuditEvents need a scope naming them (scopes.ts): a wildcard's system history leaves them out.
  handle: (ctx, req) => history(ctx, req, allows(ctx, 'AuditEvent', 'read') ? {} : { excludeTypes: ['AuditEvent'] }),
};
