/** vread: https://hl7.org/fhir/R4/http.html#vread */
import { fhirError } from '../fhir/errors.js';
import type { FhirContext, FhirRequest, FhirResponse, Interaction } from './types.js';
import { requireInstance } from './params.js';

export async function readResourceVersion(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const { resourceType, id } = requireInstance(req);
  if (!req.versionId) throw fhirError('version-missing', 'No version id in the URL');
  return { status: 200, version: await ctx.repo.vread(resourceType, id, req.versionId) };
}

export const vread: Interaction = {
  code: 'vread',
  level: 'instance',
  method: 'GET',
  path: '/:type/:id/_history/:vid',
  handle: readResourceVersion,
};
