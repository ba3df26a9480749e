/** update and create-on-update (client-assigned id): https://hl7.org/fhir/R4/http.html#update */
import type { FhirContext, FhirRequest, FhirResponse, Interaction } from './types.js';
import { locationOf, requireInstance } from './params.js';

export async function updateResource(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const { resourceType, id } = requireInstance(req);
  const resource = ctx.validator.checkWrite(req.body, resourceType, id);
  const { created, version } = await ctx.repo.update(resource, id, req.ifMatch);
  return created ? { status: 201, version, location: locationOf(ctx, version) } : { status: 200, version };
}

export const update: Interaction = { code: 'update', level: 'instance', method: 'PUT', path: '/:type/:id', handle: updateResource };
