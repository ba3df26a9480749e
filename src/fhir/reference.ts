/**
 * Literal references: https://hl7.org/fhir/R4/references.html#literal
 * A reference is relative (`Type/id`, optionally `/_history/vid`), absolute (any URL with a
 * scheme, such as `https://…/Patient/1` or `urn:uuid:…`), or internal to the resource (`#id`).
 */
import { ID_PATTERN, isResourceType } from './resource-types.js';

const ABSOLUTE = /^[A-Za-z][A-Za-z0-9+.-]*:\S+$/;
const LOCAL = /^#[A-Za-z0-9\-.]{0,64}$/;

export type ReferenceShape =
  | { kind: 'relative'; resourceType: string; id: string; versionId?: string }
  | { kind: 'absolute' }
  | { kind: 'local' }
  | { kind: 'conditional'; resourceType: string; query: string };

/** The shape of a reference string, or an explanation of why it is malformed. */
export function parseReference(reference: string): ReferenceShape | { error: string } {
  if (LOCAL.test(reference)) return { kind: 'local' };
  if (ABSOLUTE.test(reference)) return { kind: 'absolute' };
  const q = reference.indexOf('?');
  if (q > 0) {
    const resourceType = reference.slice(0, q);
    if (isResourceType(resourceType)) return { kind: 'conditional', resourceType, query: reference.slice(q + 1) };
  }
  const parts = reference.split('/');
  const [resourceType, id, history, versionId] = parts;
  if (resourceType === undefined || id === undefined || !isResourceType(resourceType)) {
    return { error: `'${reference}' is not a reference: expected Type/id with an R4 resource type, an absolute URL or #id` };
  }
  if (!ID_PATTERN.test(id)) return { error: `'${reference}' has an invalid id '${id}'` };
  if (parts.length === 2) return { kind: 'relative', resourceType, id };
  if (parts.length === 4 && history === '_history' && versionId !== undefined && ID_PATTERN.test(versionId)) {
    return { kind: 'relative', resourceType, id, versionId };
  }
  return { error: `'${reference}' is not a reference: expected Type/id or Type/id/_history/version` };
}
