/**
 * One error class for the whole server and one table from its category to the HTTP status and the
 * OperationOutcome `issue.code`. Unknown errors are 500, never 400.
 * https://hl7.org/fhir/R4/http.html#Status-Codes
 * https://hl7.org/fhir/R4/operationoutcome.html
 */
import type { OperationOutcome, OperationOutcomeIssue } from 'fhir/r4.js';
import { ERROR_CODES, type ErrorCode, type InformationCode } from './error-codes.js';

/** Category → HTTP status and FHIR issue type. The only place statuses are decided. */
export const ERROR_CATEGORIES = {
  invalid: { status: 400, issueCode: 'invalid' },
  unauthorized: { status: 401, issueCode: 'login' },
  forbidden: { status: 403, issueCode: 'forbidden' },
  notFound: { status: 404, issueCode: 'not-found' },
  methodNotAllowed: { status: 405, issueCode: 'not-supported' },
  notAcceptable: { status: 406, issueCode: 'not-supported' },
  conflict: { status: 409, issueCode: 'conflict' },
  gone: { status: 410, issueCode: 'deleted' },
  preconditionFailed: { status: 412, issueCode: 'conflict' },
  tooLarge: { status: 413, issueCode: 'too-costly' },
  unsupportedMediaType: { status: 415, issueCode: 'not-supported' },
  unprocessable: { status: 422, issueCode: 'processing' },
  tooManyRequests: { status: 429, issueCode: 'throttled' },
  internal: { status: 500, issueCode: 'exception' },
  unavailable: { status: 503, issueCode: 'transient' },
} as const;

export type ErrorCategory = keyof typeof ERROR_CATEGORIES;

/** System of our stable symbolic error codes, carried in `issue.details.coding`. */
export const ERROR_CODE_SYSTEM = 'https://met-fhir-server.dev/fhir/CodeSystem/error-code';

/** One problem: a stable code, a human message, and where it is (FHIRPath), when known. */
export interface Problem {
  code: ErrorCode;
  message: string;
  expression?: string;
  /** FHIR issue type when it differs from the category's (e.g. 'structure', 'required'). */
  issueCode?: OperationOutcomeIssue['code'];
  severity?: OperationOutcomeIssue['severity'];
}

export class FhirError extends Error {
  readonly category: ErrorCategory;
  readonly problems: Problem[];
  /** Extra HTTP headers the status needs (for instance `Allow` on 405). */
  readonly headers: Record<string, string>;

  constructor(category: ErrorCategory, problems: Problem | Problem[], headers: Record<string, string> = {}) {
    const list = Array.isArray(problems) ? problems : [problems];
    super(list.map((p) => p.message).join('; '));
    this.name = 'FhirError';
    this.category = category;
    this.problems = list;
    this.headers = headers;
  }

  get status(): number {
    return ERROR_CATEGORIES[this.category].status;
  }
}

/** The common single-problem error; its category (and so its status) follows from the code. */
export function fhirError(code: ErrorCode, message: string, expression?: string): FhirError {
  return new FhirError(ERROR_CODES[code], { code, message, ...(expression ? { expression } : {}) });
}

export function issueOf(category: ErrorCategory, problem: Problem): OperationOutcomeIssue {
  const issue: OperationOutcomeIssue = {
    severity: problem.severity ?? 'error',
    code: problem.issueCode ?? ERROR_CATEGORIES[category].issueCode,
    details: { coding: [{ system: ERROR_CODE_SYSTEM, code: problem.code }], text: problem.message },
    diagnostics: problem.message,
  };
  if (problem.expression) issue.expression = [problem.expression];
  return issue;
}

/** The OperationOutcome for an error; `requestId` ties it to the log line of the request. */
export function outcomeOf(error: FhirError, requestId?: string): OperationOutcome {
  return {
    resourceType: 'OperationOutcome',
    ...(requestId ? { id: requestId } : {}),
    issue: error.problems.map((p) => issueOf(error.category, p)),
  };
}

/** An informational outcome (Prefer: return=OperationOutcome on success). */
export function informationOutcome(code: InformationCode, message: string, requestId?: string): OperationOutcome {
  return {
    resourceType: 'OperationOutcome',
    ...(requestId ? { id: requestId } : {}),
    issue: [
      {
        severity: 'information',
        code: 'informational',
        details: { coding: [{ system: ERROR_CODE_SYSTEM, code }], text: message },
        diagnostics: message,
      },
    ],
  };
}

/** Anything thrown that is not a FhirError is an internal error; its message is never shown. */
export function toFhirError(error: unknown): FhirError {
  if (error instanceof FhirError) return error;
  return fhirError('internal-error', 'The server met an unexpected error; it has been logged with the request id.');
}
