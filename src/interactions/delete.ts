/**
 * delete: https://hl7.org/fhir/R4/http.html#delete
 * Writes a deletion version; read then answers 410 Gone. Deleting an already deleted resource
 * changes nothing and answers 204 as well.
 */
import type { FhirContext, FhirRequest, FhirResponse, Interaction } from './types.js';
import { requireInstance } from './params.js';

export async function deleteResource(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const { resourceType, id } = requireInstance(req);
  const version = await ctx.repo.delete(resourceType, id, req.ifMatch);
  return { status: 204, ...(version ? { version } : {}) };
}

export const deleteInteraction: Interaction = { code: 'delete', level: 'instance', method: 'DELETE', path: '/:type/:id', handle: deleteResource };
