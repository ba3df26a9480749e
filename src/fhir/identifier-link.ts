/**
 * Identifiers the server adds to a Patient when it links the Patient to an EHR (src/ehr/
 * patient-link.ts): marked with IDENTIFIER_LINK_EXTENSION. They are the server's, not the writer's:
 * a writer that replaces the Patient from its own data (the MET API) keeps them.
 */
import type { Identifier } from 'fhir/r4.js';

/** The extension on an identifier the server added by linking the Patient to an EHR. */
export const IDENTIFIER_LINK_EXTENSION = 'https://met-fhir-server.dev/fhir/StructureDefinition/identifier-link';

type WithIdentifiers = { resourceType: string; identifier?: Identifier[] };

/**
 * `incoming` (a new version of a Patient) with the link identifiers of `existing` (its current
 * version) that it lacks; the same object when there are none to keep.
 */
export function keepLinkIdentifiers<T extends { resourceType: string }>(incoming: T, existing: { resourceType: string } | undefined): T {
  if (incoming.resourceType !== 'Patient' || existing?.resourceType !== 'Patient') return incoming;
  const links = ((existing as WithIdentifiers).identifier ?? []).filter((i) => i.extension?.some((e) => e.url === IDENTIFIER_LINK_EXTENSION));
  const mine = (incoming as WithIdentifiers).identifier ?? [];
  const missing = links.filter((l) => !mine.some((i) => i.system === l.system && i.value === l.value));
  return missing.length === 0 ? incoming : { ...incoming, identifier: [...mine, ...missing] };
}
