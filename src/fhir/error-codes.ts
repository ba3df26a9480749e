/**
 * Every symbolic code the server puts in `OperationOutcome.issue.details.coding`, with its
 * category (→ HTTP status, see errors.ts). docs/errors.md documents each; a test keeps the two equal.
 */
export const ERROR_CODES = {
  // 400: the request itself is malformed
  'malformed-json': 'invalid',
  'not-a-resource': 'invalid',
  'resource-type-missing': 'invalid',
  'resource-type-mismatch': 'invalid',
  'id-missing': 'invalid',
  'id-mismatch': 'invalid',
  'invalid-id': 'invalid',
  'invalid-if-match': 'invalid',
  'invalid-search-value': 'invalid',
  'unsupported-search-parameter': 'invalid',
  'unknown-parameter': 'invalid',
  'repeated-parameter': 'invalid',
  'invalid-count': 'invalid',
  'invalid-instant': 'invalid',
  'invalid-cursor': 'invalid',
  'version-missing': 'invalid',
  'request-aborted': 'invalid',
  'body-size-mismatch': 'invalid',
  'body-too-deep': 'invalid',
  // 401, 403
  'token-missing': 'unauthorized',
  'token-invalid': 'unauthorized',
  'scope-insufficient': 'forbidden',
  // 404, 405, 406
  'resource-not-found': 'notFound',
  'version-not-found': 'notFound',
  'unknown-resource-type': 'notFound',
  'unknown-path': 'notFound',
  'method-not-allowed': 'methodNotAllowed',
  'audit-read-only': 'methodNotAllowed',
  // EHR operations ($pull-diagnoses, $send-summary)
  'unprocessable-operation': 'unprocessable',
  'ehr-refused': 'unprocessable',
  'ehr-unavailable': 'unavailable',
  'format-not-supported': 'notAcceptable',
  // 409, 410, 412, 413, 415
  'write-conflict': 'conflict',
  'duplicate-patient-link': 'conflict',
  'resource-deleted': 'gone',
  'version-mismatch': 'preconditionFailed',
  'multiple-matches': 'preconditionFailed',
  'conditional-reference-unresolved': 'preconditionFailed',
  'body-too-large': 'tooLarge',
  'media-type-not-supported': 'unsupportedMediaType',
  'charset-not-supported': 'unsupportedMediaType',
  // 422: the resource violates the FHIR R4 definitions or our rules
  'unknown-element': 'unprocessable',
  'required-element-missing': 'unprocessable',
  'invalid-type': 'unprocessable',
  'invalid-format': 'unprocessable',
  'invalid-code': 'unprocessable',
  'invalid-value': 'unprocessable',
  'invalid-structure': 'unprocessable',
  'invalid-resource-type': 'unprocessable',
  'invalid-reference': 'unprocessable',
  'conditional-reference-outside-transaction': 'unprocessable',
  'empty-array': 'unprocessable',
  'empty-object': 'unprocessable',
  'control-character': 'unprocessable',
  // 500, 503
  'internal-error': 'internal',
  'database-unavailable': 'unavailable',
  // PATCH (src/patch/): 400 for a malformed patch document, 422 when it cannot be applied, 409 for a failed test
  'invalid-patch': 'invalid',
  'patch-path-not-found': 'unprocessable',
  'patch-path-ambiguous': 'unprocessable',
  'patch-index-out-of-range': 'unprocessable',
  'patch-element-exists': 'unprocessable',
  'patch-type-mismatch': 'unprocessable',
  'patch-not-applicable': 'unprocessable',
  'patch-immutable-element': 'unprocessable',
  'patch-test-failed': 'conflict',
  // batch and transaction Bundles (src/interactions/bundle.ts)
  'unsupported-bundle-type': 'invalid',
  'invalid-bundle-entry': 'invalid',
  'duplicate-bundle-entry': 'invalid',
  'bundle-reference-unresolved': 'unprocessable',
  'too-many-entries': 'tooLarge',
  // HTTP limits (src/http/limits.ts): the request line's length, and each client's request rate
  'query-too-long': 'invalid',
  'rate-limited': 'tooManyRequests',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Codes of informational outcomes (Prefer: return=OperationOutcome on success). */
export const INFORMATION_CODES = ['resource-created', 'resource-updated', 'search-parameter-ignored'] as const;
export type InformationCode = (typeof INFORMATION_CODES)[number];
