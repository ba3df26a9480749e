/**
 * Conditional update and conditional delete at type level: PUT / DELETE [base]/[type]?criteria.
 * https://hl7.org/fhir/R4/http.html#cond-update  https://hl7.org/fhir/R4/http.html#cdelete
 */
import { fhirError } from '../fhir/errors.js';
import type { FhirContext, FhirRequest, FhirResponse, Interaction } from './types.js';
import { conditionOf } from './conditions.js';
import { locationOf, requireType } from './params.js';

function criteria(ctx: FhirContext, req: FhirRequest, resourceType: string, what: string) {
  const params = Object.fromEntries(Object.entries(req.query).filter(([n]) => n !== '_format' && n !== '_pretty'));
  if (Object.keys(params).length === 0) {
    throw fhirError('invalid-search-value', `A conditional ${what} needs search criteria in the URL (${resourceType}?identifier=…)`);
  }
  return conditionOf(ctx, resourceType, params, 'url');
}

export async function conditionalUpdateResource(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const resourceType = requireType(req);
  const body = req.body as { id?: unknown } | undefined;
  const resource = ctx.validator.checkWrite(req.body, resourceType, typeof body?.id === 'string' ? body.id : undefined);
  const condition = criteria(ctx, req, resourceType, 'update');
  const { created, version } = await ctx.repo.transaction(async (tx) => {
    const result = await tx.conditionalUpdate(resource, condition);
    // No match, so a create: the caller needs that scope too (refused: rolled back).
    if (result.created) ctx.authorize?.(resourceType, ['create']);
    return result;
  });
  return created ? { status: 201, version, location: locationOf(ctx, version) } : { status: 200, version };
}

export async function conditionalDeleteResource(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const resourceType = requireType(req);
  const version = await ctx.repo.conditionalDelete(criteria(ctx, req, resourceType, 'delete'));
  return { status: 204, ...(version ? { version } : {}) };
}

export const conditionalUpdate: Interaction = { code: 'conditional-update', level: 'type', method: 'PUT', path: '/:type', handle: conditionalUpdateResource };
export const conditionalDelete: Interaction = { code: 'conditional-delete', level: 'type', method: 'DELETE', path: '/:type', handle: conditionalDeleteResource };
