/** Sending OperationOutcomes for errors, with the request id. */
import type { Response } from 'express';
import { outcomeOf, type FhirError } from '../fhir/errors.js';

export function requestIdOf(res: Response): string | undefined {
  const id: unknown = res.locals.requestId;
  return typeof id === 'string' ? id : undefined;
}

export function sendOutcome(res: Response, error: FhirError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  for (const [name, value] of Object.entries(error.headers)) res.set(name, value);
  const type = typeof res.locals.contentType === 'string' ? res.locals.contentType : 'application/fhir+json';
  res.status(error.status).type(type).send(JSON.stringify(outcomeOf(error, requestIdOf(res))));
}
