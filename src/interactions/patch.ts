/**
 * patch: https://hl7.org/fhir/R4/http.html#patch
 * JSON Patch (Content-Type application/json-patch+json) or FHIRPath Patch (a Parameters resource
 * in FHIR JSON). The patched resource is validated like any write and stored as a new version.
 * Without If-Match the patch applies to the current version, read under the resource's write lock,
 * so concurrent patches apply one after the other and no update is lost.
 */
import { FhirError, fhirError } from '../fhir/errors.js';
import type { JsonResource } from '../fhir/resource.js';
import { applyFhirPathPatch, applyJsonPatch } from '../patch/index.js';
import type { Repository } from '../store/repository.js';
import type { FhirContext, FhirRequest, FhirResponse, Interaction } from './types.js';
import { requireInstance } from './params.js';
import type { ResourceValidator } from '../validation/validator.js';

export type PatchFormat = 'json-patch' | 'fhirpath-patch';

export function patchFormatOf(contentType: string | undefined): PatchFormat {
  return contentType?.split(';')[0]?.trim().toLowerCase() === 'application/json-patch+json' ? 'json-patch' : 'fhirpath-patch';
}

/** Applies a patch to the current version and stores the result; used by PATCH and by Bundles. */
export async function patchResource(
  repo: Repository,
  validator: ResourceValidator,
  target: { resourceType: string; id: string },
  format: PatchFormat,
  patch: unknown,
  ifMatch?: string,
): Promise<FhirResponse> {
  // Read, patch and write under the resource's write lock, in one transaction.
  return repo.transaction(async (tx) => {
    await tx.lockResource(target.resourceType, target.id);
    const current = await tx.read(target.resourceType, target.id);
    if (ifMatch !== undefined && current.versionId !== ifMatch) {
      throw fhirError('version-mismatch', `If-Match names version ${ifMatch} but the current version of ${target.resourceType}/${target.id} is ${current.versionId}`, 'If-Match');
    }
    const resource = JSON.parse(current.json as string) as JsonResource;
    const result = format === 'json-patch' ? applyJsonPatch(resource, patch) : applyFhirPathPatch(resource, patch);
    if (!result.ok) {
      const first = result.problems[0];
      const category = result.failedTest ? 'conflict' : first?.code === 'invalid-patch' ? 'invalid' : 'unprocessable';
      throw new FhirError(category, result.problems);
    }
    const checked = validator.checkWrite(result.resource, target.resourceType, target.id);
    const { version } = await tx.update(checked, target.id, current.versionId);
    return { status: 200, version };
  });
}

export async function patchInteraction(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const target = requireInstance(req);
  return patchResource(ctx.repo, ctx.validator, target, patchFormatOf(req.contentType), req.body, req.ifMatch);
}

export const patch: Interaction = { code: 'patch', level: 'instance', method: 'PATCH', path: '/:type/:id', body: 'patch', handle: patchInteraction };
