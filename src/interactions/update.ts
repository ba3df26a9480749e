/** update and create-on-update (client-assigned id): https://hl7.org/fhir/R4/http.html#update */
import type { FhirContext, FhirRequest, FhirResponse, Interaction } from './types.js';
import { locationOf, requireInstance } from './params.js';

export async function updateResource(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const { resourceType, id } = requireInstance(req);
  const resource = ctx.validator.checkWrite(req.body, resourceType, id);
  // An update that creates (client-assigned id) is a create: the caller needs that scope too; the
  // check runs inside the write's transaction, so a refused create leaves nothing behind.
  const { created, version } = await ctx.repo.transaction(async (tx) => {
    const result = await tx.update(resource, id, req.ifMatch);
    if (result.created) ctx.authorize?.(resourceType, ['create']);
    return result;
  });
  return created ? { status: 201, version, location: locationOf(ctx, version) } : { status: 200, version };
}

export const update: Interaction = { code: 'update', level: 'instance', method: 'PUT', path: '/:type/:id', handle: updateResource };
