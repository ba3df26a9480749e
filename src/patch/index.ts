/**
 * FHIR PATCH, transport-independent: JSON Patch and FHIRPath Patch applied to a resource as JSON.
 * https://hl7.org/fhir/R4/http.html#patch
 *
 * Both functions are pure and never throw: the input resource and patch are left untouched, and
 * every failure comes back as problems with stable codes (docs/errors.md):
 * - `invalid-patch` (400): the patch document itself is malformed; all its problems at once.
 * - 422 when a well-formed patch cannot be applied to this resource: `patch-path-not-found`,
 *   `patch-path-ambiguous`, `patch-index-out-of-range`, `patch-element-exists`,
 *   `patch-type-mismatch`, `patch-not-applicable`, `patch-immutable-element` (resourceType or id
 *   would change). Operations apply in order and the first failure stops the patch.
 * - `patch-test-failed` (409) with `failedTest: true`: a JSON Patch `test` did not hold.
 *
 * Each problem's `expression` names the operation at fault: for JSON Patch a JSON Pointer into the
 * patch document (`/3`, `/3/path`); for FHIRPath Patch a FHIRPath into the Parameters
 * (`Parameters.parameter[2]`, `Parameters.parameter[2].part[1]`).
 *
 * The result is not validated here: the caller validates it against the R4 schema as for an update.
 */
import type { Problem } from '../fhir/errors.js';
import type { JsonResource } from '../fhir/resource.js';
import { applyJsonPatchDocument } from './json-patch.js';
import { applyFhirPathPatchParameters } from './fhirpath-patch.js';

export type PatchResult = { ok: true; resource: JsonResource } | { ok: false; problems: Problem[]; failedTest?: boolean };

/** Applies an RFC 6902 JSON Patch (the parsed `application/json-patch+json` body). */
export function applyJsonPatch(resource: JsonResource, patch: unknown): PatchResult {
  return applyJsonPatchDocument(resource, patch) as PatchResult;
}

/** Applies a FHIRPath Patch (a parsed `Parameters` resource). */
export function applyFhirPathPatch(resource: JsonResource, parameters: unknown): PatchResult {
  return applyFhirPathPatchParameters(resource, parameters) as PatchResult;
}
