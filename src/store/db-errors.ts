/**
 * Database failures as FhirErrors: an unreachable database is 503 (the client may retry), a write
 * conflict the retries could not resolve is 409; anything else stays internal (500).
 * SQLSTATE classes: https://www.postgresql.org/docs/current/errcodes-appendix.html
 */
import { FhirError, fhirError } from '../fhir/errors.js';

const UNAVAILABLE_NODE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', 'EHOSTUNREACH']);
const UNAVAILABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '53300']);
/** serialization_failure, deadlock_detected, unique_violation. */
export const CONFLICT_SQLSTATES = new Set(['40001', '40P01', '23505']);

function codeOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

export function isUnavailable(error: unknown): boolean {
  const code = codeOf(error);
  if (code && (UNAVAILABLE_NODE_CODES.has(code) || UNAVAILABLE_SQLSTATES.has(code) || code.startsWith('08'))) return true;
  const message = error instanceof Error ? error.message : '';
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(message);
}

/** A write that conflicted with a concurrent one (serialization, deadlock, unique key): worth retrying. Also once classified. */
export function isConflict(error: unknown): boolean {
  if (error instanceof FhirError) return error.problems.some((p) => p.code === 'write-conflict');
  const code = codeOf(error);
  return code !== undefined && CONFLICT_SQLSTATES.has(code);
}

/** Maps a thrown database error to the FhirError the client sees; other errors pass through. */
export function classifyDatabaseError(error: unknown): unknown {
  if (error instanceof FhirError) return error;
  if (isUnavailable(error)) {
    return fhirError('database-unavailable', 'The database is unreachable; retry later.');
  }
  if (isConflict(error)) {
    return fhirError('write-conflict', 'A concurrent write to the same data conflicted with this one; retry the request.');
  }
  return error;
}
