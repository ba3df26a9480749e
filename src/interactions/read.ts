/** read: https://hl7.org/fhir/R4/http.html#read */
import type { FhirContext, FhirRequest, FhirResponse, Interaction } from './types.js';
import { requireInstance } from './params.js';

export async function readResourceById(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const { resourceType, id } = requireInstance(req);
  return { status: 200, version: await ctx.repo.read(resourceType, id) };
}

export const read: Interaction = { code: 'read', level: 'instance', method: 'GET', path: '/:type/:id', handle: readResourceById };
