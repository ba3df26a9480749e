/**
 * The search result parameters that shape each returned resource: `_summary` and `_elements`.
 * https://hl7.org/fhir/R4/search.html#summary and https://hl7.org/fhir/R4/search.html#elements
 *
 * Pure functions on top-level elements only: a kept element is kept whole. Which elements are
 * summary elements or mandatory comes from generated/definitions.json (the R4
 * StructureDefinitions; see scripts/generate-definitions.ts). A choice element (`value[x]`) is
 * known by its base name (`value`) and matches whichever of its JSON names (`valueQuantity`, …) is
 * present; a primitive's extension sibling (`_birthDate`) goes with its element. The input is
 * never mutated; the result shares the kept elements' values with it (only `meta` is new).
 */
import { readFileSync } from 'node:fs';
import type { JsonResource } from './resource.js';

/** The `_summary` modes handled here (`false` is no-op and `count` returns no resources). */
export type SummaryMode = 'true' | 'text' | 'data';

/** The tag every subsetted resource carries: https://hl7.org/fhir/R4/search.html#summary */
export const SUBSETTED = Object.freeze({ system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED' });

export interface SelectedElements {
  resource: JsonResource;
  /** Requested names that are not elements of the resource type (ignored; the caller may warn). */
  unknown: string[];
}

interface TypeEntry {
  elements: string[];
  choices: Record<string, string[]>;
  summary: string[];
  mandatory: string[];
}

interface TypeInfo {
  /** JSON property name (`status`, `_status`, `valueQuantity`, …) → element base name. */
  elementOf: Map<string, string>;
  elements: ReadonlySet<string>;
  summary: ReadonlySet<string>;
  mandatory: ReadonlySet<string>;
}

let entries: Record<string, TypeEntry> | undefined;
const infos = new Map<string, TypeInfo>();

function typeInfo(type: string): TypeInfo {
  const cached = infos.get(type);
  if (cached) return cached;
  entries ??= (JSON.parse(readFileSync(new URL('./generated/definitions.json', import.meta.url), 'utf8')) as { types: Record<string, TypeEntry> }).types;
  const entry = Object.hasOwn(entries, type) ? entries[type] : undefined;
  if (!entry) throw new Error(`not an R4 resource type: ${type}`);
  const elementOf = new Map<string, string>();
  for (const element of entry.elements) {
    for (const name of entry.choices[element] ?? [element]) {
      elementOf.set(name, element);
      elementOf.set(`_${name}`, element);
    }
  }
  const info: TypeInfo = { elementOf, elements: new Set(entry.elements), summary: new Set(entry.summary), mandatory: new Set(entry.mandatory) };
  infos.set(type, info);
  return info;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A copy of `meta` with the SUBSETTED tag added unless it is already there. */
function subsettedMeta(meta: unknown): Record<string, unknown> {
  const copy = isObject(meta) ? { ...meta } : {};
  const tags = Array.isArray(copy.tag) ? (copy.tag as unknown[]) : [];
  const present = tags.some((tag) => isObject(tag) && tag.system === SUBSETTED.system && tag.code === SUBSETTED.code);
  copy.tag = present ? [...tags] : [...tags, { ...SUBSETTED }];
  return copy;
}

/**
 * A copy holding `resourceType`, the properties `keep` accepts (given the property name and its
 * element, undefined when the name is not an element of the type) and `meta` with the SUBSETTED
 * tag; `meta` stays where it was, or comes after `id` when absent.
 */
function subset(resource: JsonResource, keep: (key: string, element: string | undefined) => boolean): JsonResource {
  const info = typeInfo(resource.resourceType);
  const meta = subsettedMeta(resource.meta);
  const metaAfter = 'meta' in resource ? 'meta' : 'id' in resource ? 'id' : 'resourceType';
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(resource)) {
    if (key === 'resourceType') out[key] = value;
    else if (key !== 'meta' && keep(key, info.elementOf.get(key))) out[key] = value;
    if (key === metaAfter) out.meta = meta;
  }
  out.meta ??= meta;
  return out as JsonResource;
}

/**
 * `_summary=true`: the summary elements (with id and meta); `_summary=text`: text, id, meta and
 * the mandatory elements; `_summary=data`: everything but text. Each marked SUBSETTED.
 * Throws when resourceType is not an R4 resource type.
 */
export function summarize(resource: JsonResource, mode: SummaryMode): JsonResource {
  const { summary, mandatory } = typeInfo(resource.resourceType);
  switch (mode) {
    case 'true':
      return subset(resource, (_key, element) => element !== undefined && (summary.has(element) || element === 'id'));
    case 'text':
      return subset(resource, (_key, element) => element !== undefined && (element === 'text' || element === 'id' || mandatory.has(element)));
    case 'data':
      return subset(resource, (_key, element) => element !== 'text');
  }
}

/**
 * `_elements`: the listed top-level elements, plus id, meta and the mandatory elements, marked
 * SUBSETTED. A name is an element's base name (`value`, also written `value[x]`) or one JSON name
 * of a choice (`valueQuantity`, which keeps only that one); `resourceType` is always kept. Names
 * that are not elements of the type are returned in `unknown`, once each, in the order given.
 * Throws when resourceType is not an R4 resource type.
 */
export function selectElements(resource: JsonResource, elements: readonly string[]): SelectedElements {
  const info = typeInfo(resource.resourceType);
  const selected = new Set<string>(['id', ...info.mandatory]);
  const selectedKeys = new Set<string>();
  const unknown: string[] = [];
  for (const raw of elements) {
    const name = raw.trim();
    if (name === '' || name === 'resourceType') continue;
    const base = name.endsWith('[x]') ? name.slice(0, -3) : name;
    if (info.elements.has(base)) {
      selected.add(base);
    } else if (!name.startsWith('_') && info.elementOf.has(name)) {
      selectedKeys.add(name).add(`_${name}`);
    } else if (!unknown.includes(name)) {
      unknown.push(name);
    }
  }
  const resourceOut = subset(resource, (key, element) => element !== undefined && (selected.has(element) || selectedKeys.has(key)));
  return { resource: resourceOut, unknown };
}
