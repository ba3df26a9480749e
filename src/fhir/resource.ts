/** A FHIR resource as JSON, before or after storage. */
export type JsonResource = { resourceType: string; id?: string; meta?: Record<string, unknown> } & Record<string, unknown>;
