/** create and conditional create: https://hl7.org/fhir/R4/http.html#create */
import type { FhirContext, FhirRequest, FhirResponse, Interaction } from './types.js';
import { locationOf, requireType } from './params.js';
import { conditionOf, queryParams } from './conditions.js';

export async function createResource(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const resourceType = requireType(req);
  const resource = ctx.validator.checkWrite(req.body, resourceType);
  const condition = req.ifNoneExist === undefined ? undefined : conditionOf(ctx, resourceType, queryParams(req.ifNoneExist), 'If-None-Exist');
  const { created, version } = await ctx.repo.create(resource, condition);
  // A conditional create that matched one resource answers 200 with it and creates nothing.
  if (!created) return { status: 200, version };
  return { status: 201, version, location: locationOf(ctx, version) };
}

export const create: Interaction = { code: 'create', level: 'type', method: 'POST', path: '/:type', handle: createResource };
