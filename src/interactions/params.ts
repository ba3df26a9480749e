/** Checks shared by the interactions: the resource type and id named in the URL. */
import { fhirError } from '../fhir/errors.js';
import { ID_PATTERN, isResourceType } from '../fhir/resource-types.js';
import type { StoredVersion } from '../store/repository.js';
import type { FhirContext, FhirRequest } from './types.js';

export function requireType(req: FhirRequest): string {
  const type = req.resourceType ?? '';
  if (!isResourceType(type)) throw fhirError('unknown-resource-type', `'${type}' is not an R4 resource type`);
  return type;
}

export function requireInstance(req: FhirRequest): { resourceType: string; id: string } {
  const resourceType = requireType(req);
  const id = req.id ?? '';
  if (!ID_PATTERN.test(id)) {
    throw fhirError('invalid-id', `'${id}' is not a valid id: 1 to 64 letters, digits, '-' and '.'`);
  }
  return { resourceType, id };
}

/** Location of a version: [base]/Type/id/_history/vid */
export function locationOf(ctx: FhirContext, version: StoredVersion): string {
  return `${ctx.fhirBase}/${version.resourceType}/${version.id}/_history/${version.versionId}`;
}

/** The single value of a query parameter; repeating it is an error. */
export function singleParam(req: FhirRequest, name: string): string | undefined {
  const values = req.query[name];
  if (!values || values.length === 0) return undefined;
  if (values.length > 1) throw fhirError('repeated-parameter', `Parameter '${name}' may appear only once`, name);
  return values[0];
}
