/**
 * Validation of every write: the request-level rules (400) first, then the resource against the
 * R4 schema and the rules a schema cannot express (422), every problem reported at once.
 */
import { FhirError, fhirError, type Problem } from '../fhir/errors.js';
import { ID_PATTERN, isResourceType } from '../fhir/resource-types.js';
import type { JsonResource } from '../fhir/resource.js';
import { referenceProblems, contentProblems } from './rules.js';
import { SchemaValidator } from './schema.js';

export class ResourceValidator {
  private readonly schema = new SchemaValidator();

  warm(resourceTypes: readonly string[]): void {
    this.schema.warm(resourceTypes);
  }

  /**
   * Checks a body sent to `[base]/{urlType}` (create) or `[base]/{urlType}/{urlId}` (update) and
   * returns it typed; throws a FhirError listing every problem.
   */
  checkWrite(body: unknown, urlType: string, urlId?: string): JsonResource {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      throw fhirError('not-a-resource', 'The body must be a JSON object holding one FHIR resource');
    }
    const resource = body as JsonResource;
    if (typeof resource.resourceType !== 'string') {
      throw fhirError('resource-type-missing', 'The body has no resourceType', 'resourceType');
    }
    if (resource.resourceType !== urlType) {
      throw fhirError('resource-type-mismatch', `The body is a ${resource.resourceType} but the URL names ${urlType}`, 'resourceType');
    }
    if (urlId !== undefined) {
      if (resource.id === undefined) {
        throw fhirError('id-missing', `An update must carry the id; expected "id": "${urlId}"`, `${urlType}.id`);
      }
      if (resource.id !== urlId) {
        throw fhirError('id-mismatch', `The body has id '${String(resource.id)}' but the URL names '${urlId}'`, `${urlType}.id`);
      }
    }
    const problems = this.problems(resource);
    if (problems.length > 0) throw new FhirError('unprocessable', problems);
    return resource;
  }

  /** Every problem of a resource against the R4 definitions and our rules. */
  problems(resource: JsonResource): Problem[] {
    const root = resource.resourceType;
    return [...this.schema.validate(resource), ...referenceProblems(resource, root), ...contentProblems(resource, root)];
  }
}

export function isValidId(id: string): boolean {
  return ID_PATTERN.test(id);
}

export { isResourceType };
