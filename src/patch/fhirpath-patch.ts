/**
 * FHIRPath Patch: a Parameters resource of `operation`s applied to a FHIR resource held as JSON.
 * https://hl7.org/fhir/R4/fhirpatch.html · tests: FHIR/fhir-test-cases r4/patch/fhir-path-tests.xml
 *
 * Pure: the input resource and Parameters are never mutated; the result is a new object.
 *
 * Stage 1 checks the Parameters alone and reports every problem at once (`invalid-patch`): each
 * parameter is named `operation` and has parts `type` (add | insert | delete | replace | move, as
 * valueCode or valueString), `path` (a FHIRPath expression that parses), and exactly the parts its
 * type needs: add `name` + `value`; insert `value` + `index`; delete nothing else; replace `value`;
 * move `source` + `destination` (indexes are non-negative valueInteger). A `value` is one
 * `value[x]` (with its `_value[x]`, if any), a `resource`, or nested `part`s naming the children
 * of an anonymous or complex value (the spec's "Anonymous Types"), as deep as needed.
 *
 * Stage 2 applies the operations in order to a copy; the first failure stops the patch. The path is
 * evaluated by fhirpath.js with the R4 model, keeping its ResourceNodes, whose `parentResNode`,
 * `propName` and `index` lead back to the JSON object, key and array position to edit:
 * - delete: the path must select at most one element; none is a no-op (R4: "Path of the element
 *   to delete (if found)"). Removes it with its `_` companion (primitive id/extensions).
 * - replace: exactly one element; the whole element is replaced, `_` companion included. A choice
 *   element (`value[x]`) may change type: replacing `valueQuantity` by a valueString gives
 *   `valueString`.
 * - add: the path selects exactly one element; `name` is a child it can have (by the R4 model).
 *   A repeating child is appended (the array is created if needed); a single one must not exist
 *   yet (`patch-element-exists`). A choice child is named by its base (`value`) and keyed by the
 *   value's type (`valueQuantity`). `id` and `extension` of a primitive go to its `_` companion.
 * - insert and move: the path names a list, so it must end in an element name; the expression
 *   before it must select one element, and the name must be a repeating child of it. insert index
 *   may be 0..length; move source and destination 0..length-1 (destination counts after removal,
 *   as in the spec's tests). Primitive lists move their `_` companion along.
 * - The value's type must fit the place (the R4 model's type, its specialisations such as Age for
 *   Quantity, any Quantity for a Quantity profile such as SimpleQuantity, a string for xhtml as the
 *   official tests do, any resource for `Resource`); nested parts name children the model knows.
 * - resolve() works for contained resources only (`#id` references); anything else is refused.
 * - After each operation, elements left empty are removed (the official "Delete Nested
 *   Primitive #2" test expects it), and `resourceType` and `id` must be unchanged.
 *
 * Where a problem is: `expression` names the operation as `Parameters.parameter[2]`, or the part at
 * fault within it, `Parameters.parameter[2].part[1]` (nested value parts go on:
 * `….part[3].part[0]`).
 *
 * Not done: the result is not validated here (the caller validates it against the R4 schema, which
 * catches, e.g., required children missing from a value built from parts); slicing, profiles and
 * terminology bindings play no part; only the R4 model is known.
 */
import fhirpath from 'fhirpath';
import r4 from 'fhirpath/fhir-context/r4';
import type { Problem } from '../fhir/errors.js';
import type { ErrorCode } from '../fhir/error-codes.js';

export type FhirPathPatchResult = { ok: true; resource: Record<string, unknown> } | { ok: false; problems: Problem[] };

type Json = Record<string, unknown>;

const OPERATION_TYPES = ['add', 'insert', 'delete', 'replace', 'move'] as const;
type OperationType = (typeof OPERATION_TYPES)[number];
const PART_NAMES = ['type', 'path', 'name', 'value', 'index', 'source', 'destination'] as const;
type PartName = (typeof PART_NAMES)[number];

/** Parts each operation type needs; any other part is refused. */
const NEEDS: Record<OperationType, PartName[]> = {
  add: ['type', 'path', 'name', 'value'],
  insert: ['type', 'path', 'value', 'index'],
  delete: ['type', 'path'],
  replace: ['type', 'path', 'value'],
  move: ['type', 'path', 'source', 'destination'],
};

const PRIMITIVES = new Set([
  'base64Binary', 'boolean', 'canonical', 'code', 'date', 'dateTime', 'decimal', 'id', 'instant', 'integer', 'markdown', 'oid',
  'positiveInt', 'string', 'time', 'unsignedInt', 'uri', 'url', 'uuid', 'xhtml',
]);
const INTEGER_TYPES = new Set(['integer', 'positiveInt', 'unsignedInt']);
const ELEMENT_NAME = /^[A-Za-z][A-Za-z0-9]*$/;

/** A value as the Parameters give it, checked in stage 1; typed and checked against its place in stage 2. */
type ValueSpec =
  | { kind: 'typed'; type: string; json: unknown; companion?: Json; at: string }
  | { kind: 'parts'; parts: { name: string; value: ValueSpec; at: string }[]; at: string };

interface Operation {
  type: OperationType;
  at: string;
  /** Expression of each part present, by part name. */
  partAt: Partial<Record<PartName, string>>;
  /** The path as given (for messages), and as evaluated (reserved names quoted). */
  path: string;
  expression: string;
  /** insert and move: the expression selecting the list's owner, and the list's name. */
  owner?: string;
  list?: string;
  name?: string;
  value?: ValueSpec;
  index?: number;
  source?: number;
  destination?: number;
}

/** The part of fhirpath.js's ResourceNode that is used here. */
interface FpNode {
  data: unknown;
  _data: unknown;
  parentResNode: FpNode | null;
  path: string | null;
  propName: string | null;
  index: number | null;
}

const ISSUE_CODES: Partial<Record<ErrorCode, Problem['issueCode']>> = {
  'patch-path-not-found': 'not-found',
  'patch-path-ambiguous': 'multiple-matches',
};

function problem(code: ErrorCode, message: string, expression?: string): Problem {
  const issueCode = ISSUE_CODES[code];
  return { code, message, ...(expression ? { expression } : {}), ...(issueCode ? { issueCode } : {}) };
}

/** Thrown inside stage 2 to stop at the first failing operation. */
class OperationFailed extends Error {
  constructor(readonly problem: Problem) {
    super(problem.message);
  }
}
const fail = (code: ErrorCode, message: string, expression?: string): never => {
  throw new OperationFailed(problem(code, message, expression));
};

const isPlainObject = (v: unknown): v is Json =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && [Object.prototype, null].includes(Object.getPrototypeOf(v) as object | null);
const hasOwn = (o: object, key: string): boolean => Object.prototype.hasOwnProperty.call(o, key);
const capitalize = (s: string): string => s.charAt(0).toUpperCase() + s.slice(1);
const uncapitalize = (s: string): string => s.charAt(0).toLowerCase() + s.slice(1);
/** The FHIR type named by a `value[x]` suffix or a choice type list entry: `DateTime` → `dateTime`. */
const typeOfSuffix = (suffix: string): string => (PRIMITIVES.has(uncapitalize(suffix)) ? uncapitalize(suffix) : suffix);
const KNOWN_TYPES = new Set([...Object.keys(r4.type2Parent), ...Object.values(r4.type2Parent as Record<string, string>)]);
const isKnownType = (type: string): boolean => PRIMITIVES.has(type) || KNOWN_TYPES.has(type);
const describe = (v: unknown): string => {
  const text = JSON.stringify(v) ?? String(v);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
};

// ---------------------------------------------------------------------------------------------
// Stage 1: the Parameters alone

/** The own keys of a part that carry a value: `valueString`, and `_valueString` alone. */
function valueKeys(part: Json): string[] {
  const keys = Object.keys(part).filter((k) => /^value[A-Z]/.test(k));
  for (const k of Object.keys(part)) if (/^_value[A-Z]/.test(k) && !keys.includes(k.slice(1))) keys.push(k.slice(1));
  return keys;
}

function jsonKindFits(type: string, json: unknown): boolean {
  if (!PRIMITIVES.has(type)) return isPlainObject(json);
  if (type === 'boolean') return typeof json === 'boolean';
  if (INTEGER_TYPES.has(type)) return Number.isInteger(json);
  if (type === 'decimal') return typeof json === 'number' && Number.isFinite(json);
  return typeof json === 'string';
}

/** Reads the value of a `value` part (or nested part): one value[x], one resource, or parts. */
function readValue(part: Json, at: string, problems: Problem[], depth: number): ValueSpec | undefined {
  const keys = valueKeys(part);
  const hasParts = hasOwn(part, 'part');
  const hasResource = hasOwn(part, 'resource');
  if (keys.length + (hasParts ? 1 : 0) + (hasResource ? 1 : 0) !== 1) {
    problems.push(problem('invalid-patch', 'A value must be given as exactly one value[x], one resource, or a list of parts', at));
    return undefined;
  }
  if (depth > 64) {
    problems.push(problem('invalid-patch', 'Value parts are nested too deeply', at));
    return undefined;
  }
  if (hasResource) {
    const resource = part.resource;
    if (!isPlainObject(resource) || typeof resource.resourceType !== 'string' || !isKnownType(resource.resourceType)) {
      problems.push(problem('invalid-patch', 'The resource of a value must be a FHIR resource with a known resourceType', at));
      return undefined;
    }
    return { kind: 'typed', type: resource.resourceType, json: resource, at };
  }
  if (hasParts) {
    const parts = part.part;
    if (!Array.isArray(parts) || parts.length === 0) {
      problems.push(problem('invalid-patch', 'The parts of a value must be a non-empty list', at));
      return undefined;
    }
    const children: { name: string; value: ValueSpec; at: string }[] = [];
    parts.forEach((child: unknown, k) => {
      const childAt = `${at}.part[${k}]`;
      if (!isPlainObject(child) || typeof child.name !== 'string' || !ELEMENT_NAME.test(child.name)) {
        problems.push(problem('invalid-patch', 'Each part of a value must have a name that is an element name', childAt));
        return;
      }
      const value = readValue(child, childAt, problems, depth + 1);
      if (value) children.push({ name: child.name, value, at: childAt });
    });
    return { kind: 'parts', parts: children, at };
  }
  const key = keys[0] as string;
  const type = typeOfSuffix(key.slice('value'.length));
  if (!isKnownType(type)) {
    problems.push(problem('invalid-patch', `"${key}" does not name a FHIR data type`, at));
    return undefined;
  }
  const json = part[key];
  const companion = part['_' + key];
  if (json === undefined && companion === undefined) return undefined;
  if (json !== undefined && !jsonKindFits(type, json)) {
    problems.push(problem('invalid-patch', `"${key}" holds ${describe(json)}, which is not a JSON ${PRIMITIVES.has(type) ? 'value' : 'object'} of type ${type}`, at));
    return undefined;
  }
  if (companion !== undefined && (!PRIMITIVES.has(type) || !isPlainObject(companion))) {
    problems.push(problem('invalid-patch', `"_${key}" must be an object, and only beside a primitive value`, at));
    return undefined;
  }
  return { kind: 'typed', type, json, ...(companion !== undefined ? { companion } : {}), at };
}

/** The string in a part's valueString or valueCode. */
function stringOf(part: Json): string | undefined {
  const keys = valueKeys(part);
  if (keys.length !== 1 || (keys[0] !== 'valueString' && keys[0] !== 'valueCode') || hasOwn(part, 'part') || hasOwn(part, 'resource')) return undefined;
  const v = part[keys[0]];
  return typeof v === 'string' ? v : undefined;
}

function integerOf(part: Json): number | undefined {
  const keys = valueKeys(part);
  if (keys.length !== 1 || !['valueInteger', 'valueUnsignedInt', 'valuePositiveInt'].includes(keys[0] as string)) return undefined;
  const v = part[keys[0] as string];
  return Number.isInteger(v) && (v as number) >= 0 ? (v as number) : undefined;
}

/**
 * Splits a path at its last top-level `.`: `Patient.name[0].given` → `Patient.name[0]` and `given`.
 * The list name must be a plain identifier; with no top-level dot the owner is the resource itself.
 */
export function splitListPath(path: string): { owner: string; list: string } | undefined {
  let depth = 0;
  let quote: string | null = null;
  let lastDot = -1;
  for (let i = 0; i < path.length; i++) {
    const c = path[i] as string;
    if (quote) {
      if (c === '\\') i++;
      else if (c === quote) quote = null;
    } else if (c === "'" || c === '`') quote = c;
    else if (c === '(' || c === '[' || c === '{') depth++;
    else if (c === ')' || c === ']' || c === '}') depth--;
    else if (c === '.' && depth === 0) lastDot = i;
  }
  const tail = path.slice(lastDot + 1).trim();
  const list = /^`[A-Za-z][A-Za-z0-9]*`$/.test(tail) ? tail.slice(1, -1) : tail;
  if (!ELEMENT_NAME.test(list)) return undefined;
  return { owner: lastDot < 0 ? '$this' : path.slice(0, lastDot), list };
}

/**
 * Quotes element names that FHIRPath reserves as operators when they follow a dot: the official
 * tests write `Patient.text.div`, which the FHIRPath grammar reads only as `Patient.text.\`div\``.
 */
export function quoteReservedNames(path: string): string {
  let out = '';
  let quote: string | null = null;
  for (let i = 0; i < path.length; i++) {
    const c = path[i] as string;
    if (quote) {
      if (c === '\\') {
        out += c + (path[i + 1] ?? '');
        i++;
        continue;
      }
      if (c === quote) quote = null;
    } else if (c === "'" || c === '`') {
      quote = c;
    } else if (c === '.') {
      const word = /^(div|mod|and|or|xor|implies)(?![A-Za-z0-9_])/.exec(path.slice(i + 1));
      if (word) {
        out += '.`' + (word[1] as string) + '`';
        i += (word[1] as string).length;
        continue;
      }
    }
    out += c;
  }
  return out;
}

function parseFhirPath(expression: string): string | undefined {
  try {
    compile(expression);
    return undefined;
  } catch (error) {
    return error instanceof Error ? error.message.split('\n')[0] : 'unparsable';
  }
}

function readOperation(raw: unknown, at: string, problems: Problem[]): Operation | undefined {
  if (!isPlainObject(raw)) {
    problems.push(problem('invalid-patch', 'Each parameter must be a JSON object', at));
    return undefined;
  }
  const before = problems.length;
  if (raw.name !== 'operation') problems.push(problem('invalid-patch', `Each parameter of a FHIRPath Patch must be named "operation", not ${describe(raw.name)}`, `${at}.name`));
  if (valueKeys(raw).length > 0 || hasOwn(raw, 'resource')) problems.push(problem('invalid-patch', 'An operation carries its content in parts, not in a value or resource', at));
  if (!Array.isArray(raw.part) || raw.part.length === 0) {
    problems.push(problem('invalid-patch', 'An operation must have parts (type, path, …)', `${at}.part`));
    return undefined;
  }
  const parts = new Map<PartName, { part: Json; at: string }>();
  raw.part.forEach((part: unknown, j) => {
    const partAt = `${at}.part[${j}]`;
    if (!isPlainObject(part) || typeof part.name !== 'string') {
      problems.push(problem('invalid-patch', 'Each part must be a JSON object with a name', partAt));
    } else if (!(PART_NAMES as readonly string[]).includes(part.name)) {
      problems.push(problem('invalid-patch', `Unknown part "${part.name}"; the parts of an operation are ${PART_NAMES.join(', ')}`, partAt));
    } else if (parts.has(part.name as PartName)) {
      problems.push(problem('invalid-patch', `The part "${part.name}" appears more than once`, partAt));
    } else {
      parts.set(part.name as PartName, { part, at: partAt });
    }
  });
  const typePart = parts.get('type');
  const type = typePart ? stringOf(typePart.part) : undefined;
  if (!typePart) {
    problems.push(problem('invalid-patch', 'The operation has no "type" part', at));
    return undefined;
  }
  if (!type || !(OPERATION_TYPES as readonly string[]).includes(type)) {
    problems.push(problem('invalid-patch', `The type must be a valueCode, one of ${OPERATION_TYPES.join(', ')}`, typePart.at));
    return undefined;
  }
  const op: Operation = { type: type as OperationType, at, partAt: {}, path: '', expression: '' };
  for (const [name, { at: partAt }] of parts) op.partAt[name] = partAt;
  const needs = NEEDS[op.type];
  for (const name of needs) if (!parts.has(name)) problems.push(problem('invalid-patch', `A ${type} operation needs a "${name}" part`, at));
  for (const [name, { at: partAt }] of parts) {
    if (!needs.includes(name)) problems.push(problem('invalid-patch', `A ${type} operation takes no "${name}" part`, partAt));
  }

  const path = parts.get('path');
  if (path) {
    const text = stringOf(path.part);
    const expression = text === undefined ? '' : quoteReservedNames(text);
    const syntax = text === undefined || text.trim() === '' ? 'must be a non-empty valueString' : parseFhirPath(expression);
    if (syntax !== undefined) {
      problems.push(problem('invalid-patch', `The path is not a FHIRPath expression: ${syntax}`, path.at));
    } else {
      op.path = text as string;
      op.expression = expression;
      if (op.type === 'insert' || op.type === 'move') {
        const split = splitListPath(expression);
        if (split) Object.assign(op, split);
        else problems.push(problem('invalid-patch', `The path of ${op.type === 'insert' ? 'an insert' : 'a move'} names a list, so it must end with an element name`, path.at));
      }
    }
  }
  const name = parts.get('name');
  if (name && needs.includes('name')) {
    const text = stringOf(name.part);
    if (text === undefined || !ELEMENT_NAME.test(text)) problems.push(problem('invalid-patch', 'The name must be a valueString holding an element name', name.at));
    else op.name = text;
  }
  const value = parts.get('value');
  if (value && needs.includes('value')) {
    const spec = readValue(value.part, value.at, problems, 0);
    if (spec) op.value = spec;
    else if (problems.length === before) problems.push(problem('invalid-patch', 'The value part holds no value', value.at));
  }
  for (const key of ['index', 'source', 'destination'] as const) {
    const part = parts.get(key);
    if (!part || !needs.includes(key)) continue;
    const n = integerOf(part.part);
    if (n === undefined) problems.push(problem('invalid-patch', `The ${key} must be a valueInteger of 0 or more`, part.at));
    else op[key] = n;
  }
  return problems.length > before ? undefined : op;
}

function readParameters(parameters: unknown): { operations: Operation[]; problems: Problem[] } {
  const problems: Problem[] = [];
  const operations: Operation[] = [];
  if (!isPlainObject(parameters) || parameters.resourceType !== 'Parameters') {
    problems.push(problem('invalid-patch', 'A FHIRPath Patch must be a Parameters resource'));
    return { operations, problems };
  }
  const list = parameters.parameter;
  if (list === undefined) return { operations, problems };
  if (!Array.isArray(list)) {
    problems.push(problem('invalid-patch', 'Parameters.parameter must be a list', 'Parameters.parameter'));
    return { operations, problems };
  }
  list.forEach((raw: unknown, i) => {
    const op = readOperation(raw, `Parameters.parameter[${i}]`, problems);
    if (op) operations.push(op);
  });
  return { operations, problems };
}

// ---------------------------------------------------------------------------------------------
// The R4 model

interface ElementInfo {
  /** Model path of the element, e.g. `Patient.contact` (after content references). */
  path: string;
  /** The element name; for a choice element its base (`value`). */
  name: string;
  /** Allowed types: one, or the choices of a `[x]` element. */
  types: string[];
  choice: boolean;
  repeating: boolean;
}

const repeating = r4.path2Repeating as Record<string, boolean>;
const choices = r4.choiceTypePaths as Record<string, string[]>;
const elsewhere = r4.pathsDefinedElsewhere as Record<string, string>;
const pathTypes = r4.path2Type as Record<string, string>;
const typeParents = r4.type2Parent as Record<string, string>;

function elementInfo(ownerPath: string, name: string): ElementInfo | undefined {
  const given = `${ownerPath}.${name}`;
  const path = elsewhere[given] ?? given;
  const isRepeating = repeating[given] === true || repeating[path] === true;
  const choiceTypes = choices[path];
  if (choiceTypes) return { path, name, types: choiceTypes.map(typeOfSuffix), choice: true, repeating: isRepeating };
  const type = pathTypes[path];
  if (typeof type !== 'string') return undefined;
  return { path, name, types: [type], choice: false, repeating: isRepeating };
}

/** The choice element that `key` is one typed variant of (`valueQuantity` → `value`), if any. */
function choiceOf(ownerPath: string, key: string): { info: ElementInfo; type: string } | undefined {
  for (let cut = 1; cut < key.length; cut++) {
    if (!/[A-Z]/.test(key.charAt(cut))) continue;
    const info = elementInfo(ownerPath, key.slice(0, cut));
    const type = typeOfSuffix(key.slice(cut));
    if (info?.choice && info.types.includes(type)) return { info, type };
  }
  return undefined;
}

/** The element an add or a value part names: `value` (a choice, typed by the value) or `valueQuantity`. */
function resolveName(ownerPath: string, name: string): { info: ElementInfo; forcedType?: string } | undefined {
  const variant = choiceOf(ownerPath, name);
  if (variant) return { info: variant.info, forcedType: variant.type };
  const info = elementInfo(ownerPath, name);
  return info ? { info } : undefined;
}

/** Model path under which the children of a value of `type` at `info` are found. */
function childOwnerPath(info: ElementInfo, type: string): string {
  return type === 'BackboneElement' || type === 'Element' ? info.path : type;
}

function descendsFrom(type: string, ancestor: string): boolean {
  for (let t: string | undefined = type, n = 0; t && n < 20; t = typeParents[t], n++) if (t === ancestor) return true;
  return false;
}

const STRING_KINDS = new Set([...PRIMITIVES].filter((t) => t !== 'boolean' && t !== 'decimal' && !INTEGER_TYPES.has(t)));

/** Whether a value of `valueType` may stand where the model expects `expected`. */
function fits(valueType: string, expected: string): boolean {
  if (valueType === expected || descendsFrom(valueType, expected)) return true;
  switch (expected) {
    case 'System.String':
      return STRING_KINDS.has(valueType);
    case 'System.Boolean':
      return valueType === 'boolean';
    case 'System.Integer':
      return INTEGER_TYPES.has(valueType);
    case 'System.Decimal':
      return valueType === 'decimal';
    case 'xhtml':
      return valueType === 'string';
    default:
      // A Quantity profile (SimpleQuantity, MoneyQuantity, Duration, …) accepts a plain Quantity.
      return valueType === 'Quantity' && descendsFrom(expected, 'Quantity');
  }
}

const isComplex = (type: string): boolean => !PRIMITIVES.has(type) && !type.startsWith('System.');

interface Materialized {
  type: string;
  json: unknown;
  companion?: Json;
}

/** Turns a value into JSON for the element `info`, checking its type (and its parts' names and types). */
function materialize(spec: ValueSpec, info: ElementInfo, forcedType?: string): Materialized {
  const allowed = forcedType ? [forcedType] : info.types;
  if (spec.kind === 'typed') {
    const type = info.choice ? allowed.find((t) => t === spec.type) : allowed.find((t) => fits(spec.type, t));
    if (!type) {
      fail('patch-type-mismatch', `A ${spec.type} cannot stand at ${info.path}${info.choice ? '[x]' : ''}, which takes ${allowed.join(' | ')}`, spec.at);
    }
    return {
      type: info.choice ? spec.type : (type as string),
      json: structuredClone(spec.json),
      ...(spec.companion ? { companion: structuredClone(spec.companion) } : {}),
    };
  }
  if (info.choice || allowed.length !== 1 || !isComplex(allowed[0] as string)) {
    fail('patch-type-mismatch', `${info.path}${info.choice ? '[x]' : ''} needs a typed value (value[x]), not parts`, spec.at);
  }
  const type = allowed[0] as string;
  const owner = childOwnerPath(info, type);
  const json: Json = {};
  for (const child of spec.parts) {
    const resolved = resolveName(owner, child.name);
    if (!resolved) fail('patch-type-mismatch', `${owner} has no element "${child.name}"`, child.at);
    const { info: childInfo, forcedType: childType } = resolved as { info: ElementInfo; forcedType?: string };
    const value = materialize(child.value, childInfo, childType);
    const key = childInfo.choice ? childInfo.name + capitalize(value.type) : childInfo.name;
    if (childInfo.repeating) {
      append(json, key, value, true);
    } else {
      if (presentKeys(json, childInfo).length > 0) fail('patch-type-mismatch', `${childInfo.path} holds one value only, but the parts give it more`, child.at);
      setSingle(json, key, value, true);
    }
  }
  return { type, json };
}

// ---------------------------------------------------------------------------------------------
// Editing the JSON

/** Where an element selected by the path sits in the JSON. */
interface Slot {
  container: Json;
  key: string;
  index: number | null;
  /** Whether `_key` beside it holds the id and extensions of primitive values (false inside a `_` object). */
  paired: boolean;
  /** Model path of the element's owner, for looking the element up. */
  ownerPath: string;
  /** The element name (a choice element's base name). */
  name: string;
}

function slotOf(node: FpNode, at: string): Slot {
  const owner = node.parentResNode;
  if (!owner || node.propName === null) return fail('patch-not-applicable', 'The path selects the resource itself, which cannot be deleted or replaced', at);
  let container: Json;
  let paired: boolean;
  if (isPlainObject(owner.data)) {
    container = owner.data;
    paired = true;
  } else if (isPlainObject(owner._data)) {
    container = owner._data;
    paired = false;
  } else {
    return fail('patch-not-applicable', 'The path selects something that is not an element of the resource', at);
  }
  const prop = node.propName;
  const ownerPath = owner.path ?? '';
  const present = (k: string): boolean => hasOwn(container, k) || (paired && hasOwn(container, '_' + k));
  let key: string | undefined;
  let name = prop;
  if (present(prop)) {
    key = prop;
    // Reached by its full name (e.g. through descendants()): a variant of a choice element.
    const variant = choiceOf(ownerPath, prop);
    if (variant) name = variant.info.name;
  } else {
    // Reached by a choice element's base name (`value`): the key carries the type (`valueQuantity`).
    const keys = new Set(Object.keys(container).map((k) => (paired && k.startsWith('_') ? k.slice(1) : k)));
    const variants = [...keys].filter((k) => k.startsWith(prop) && choiceOf(ownerPath, k)?.info.name === prop);
    if (variants.length === 1) key = variants[0];
  }
  if (!key) return fail('patch-not-applicable', 'The element selected by the path could not be found in the resource', at);
  const list = container[key] ?? container['_' + key];
  if (node.index !== null && (!Array.isArray(list) || node.index >= Math.max(arrayLength(container[key]), paired ? arrayLength(container['_' + key]) : 0))) {
    return fail('patch-not-applicable', 'The element selected by the path could not be found in the resource', at);
  }
  return { container, key, index: node.index, paired, ownerPath, name };
}

const arrayLength = (v: unknown): number => (Array.isArray(v) ? v.length : 0);

/** Keys under which the element `info` is present in `owner` (several only for a broken choice). */
function presentKeys(owner: Json, info: ElementInfo): string[] {
  const names = info.choice ? info.types.map((t) => info.name + capitalize(t)) : [info.name];
  return names.filter((k) => hasOwn(owner, k) || hasOwn(owner, '_' + k));
}

function setSingle(owner: Json, key: string, value: Materialized, paired: boolean): void {
  if (value.json !== undefined) owner[key] = value.json;
  else delete owner[key];
  if (paired && value.companion) owner['_' + key] = value.companion;
  else if (paired) delete owner['_' + key];
}

/** Replaces the entries `removed` of `o` by `added` (undefined values left out), where the first stood. */
function replaceEntries(o: Json, removed: string[], added: [string, unknown][]): void {
  const gone = new Set([...removed, ...added.map(([k]) => k)]);
  const entries = Object.entries(o);
  const first = entries.findIndex(([k]) => removed.includes(k));
  const kept = entries.filter(([k]) => !gone.has(k));
  const at = first < 0 ? kept.length : entries.slice(0, first).filter(([k]) => !gone.has(k)).length;
  kept.splice(at, 0, ...added.filter(([, v]) => v !== undefined));
  for (const k of Object.keys(o)) delete o[k];
  for (const [k, v] of kept) o[k] = v;
}

/** Inserts into the list `key` (and its `_` companion) at `position`; the end when omitted. */
function append(owner: Json, key: string, value: Materialized, paired: boolean, position?: number): void {
  const main = Array.isArray(owner[key]) ? (owner[key] as unknown[]) : undefined;
  const companion = paired && Array.isArray(owner['_' + key]) ? (owner['_' + key] as unknown[]) : undefined;
  const length = Math.max(main?.length ?? 0, companion?.length ?? 0);
  const at = position ?? length;
  if (main || value.json !== undefined) {
    const list = main ?? [];
    while (list.length < length) list.push(null);
    list.splice(at, 0, value.json ?? null);
    owner[key] = list;
  }
  if (companion || (paired && value.companion)) {
    const list = companion ?? [];
    while (list.length < length) list.push(null);
    list.splice(at, 0, value.companion ?? null);
    owner['_' + key] = list;
  }
}

function listLength(owner: Json, key: string, paired: boolean): number {
  return Math.max(arrayLength(owner[key]), paired ? arrayLength(owner['_' + key]) : 0);
}

/** The object that receives children of the selected element: itself, or a primitive's `_` companion. */
function childOwner(node: FpNode, at: string): { owner: Json; ownerPath: string; paired: boolean } {
  if (isPlainObject(node.data)) return { owner: node.data, ownerPath: node.path ?? '', paired: true };
  // A primitive: its id and extensions live in the `_` companion.
  const slot = slotOf(node, at);
  if (!slot.paired) return fail('patch-not-applicable', 'The path selects something that cannot have children', at);
  const companionKey = '_' + slot.key;
  let owner: unknown;
  if (slot.index === null) {
    if (!isPlainObject(slot.container[companionKey])) slot.container[companionKey] = {};
    owner = slot.container[companionKey];
  } else {
    const length = listLength(slot.container, slot.key, true);
    const list = Array.isArray(slot.container[companionKey]) ? (slot.container[companionKey] as unknown[]) : [];
    while (list.length < length) list.push(null);
    if (!isPlainObject(list[slot.index])) list[slot.index] = {};
    slot.container[companionKey] = list;
    owner = list[slot.index];
  }
  return { owner: owner as Json, ownerPath: node.path ?? '', paired: false };
}

/**
 * Removes what the operation left empty: `{}`, `[]`, items that are empty in both a primitive list
 * and its `_` companion, and companions holding only nulls. Returns whether `o` itself is empty.
 */
function prune(o: Json): boolean {
  for (const key of Object.keys(o)) {
    const v = o[key];
    if (isPlainObject(v)) {
      if (prune(v)) delete o[key];
    } else if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        const item: unknown = v[i];
        if (isPlainObject(item) && prune(item)) v[i] = null;
      }
    }
  }
  const names = new Set(Object.keys(o).map((k) => (k.startsWith('_') ? k.slice(1) : k)));
  for (const name of names) {
    const main = o[name];
    const companion = o['_' + name];
    if (!Array.isArray(main) && !Array.isArray(companion)) continue;
    const length = Math.max(arrayLength(main), arrayLength(companion));
    const keep: number[] = [];
    for (let i = 0; i < length; i++) {
      const a: unknown = Array.isArray(main) ? main[i] : undefined;
      const b: unknown = Array.isArray(companion) ? companion[i] : undefined;
      if ((a !== null && a !== undefined) || (b !== null && b !== undefined)) keep.push(i);
    }
    const compact = (list: unknown[]): unknown[] => keep.map((i) => list[i] ?? null);
    if (keep.length === 0) {
      delete o[name];
      delete o['_' + name];
    } else {
      // A value list of nulls stays beside a companion that has content; a companion of nulls goes.
      if (Array.isArray(main)) o[name] = compact(main);
      if (Array.isArray(companion)) {
        const kept = compact(companion);
        if (kept.every((x) => x === null)) delete o['_' + name];
        else o['_' + name] = kept;
      }
    }
  }
  return Object.keys(o).length === 0;
}

// ---------------------------------------------------------------------------------------------
// Stage 2: applying

const isNode = (v: unknown): v is FpNode => typeof v === 'object' && v !== null && 'parentResNode' in v && 'propName' in v && 'data' in v;

class OutsideReference extends Error {}

/**
 * The contained resources of the document being evaluated, by `#id`, for resolve(). Set just
 * before each (synchronous) evaluation that uses resolve().
 */
let containedNow = new Map<string, FpNode>();

/** resolve(), limited to the contained resources of the resource being patched. */
const resolveContained = {
  fn: (inputs: unknown[]): FpNode[] =>
    inputs.map((input) => {
      const data = isNode(input) ? input.data : input;
      const reference = isPlainObject(data) ? data.reference : data;
      const target = typeof reference === 'string' ? containedNow.get(reference) : undefined;
      if (!target) throw new OutsideReference(`resolve() can only reach contained resources (#id), not ${describe(reference)}`);
      return target;
    }),
  arity: { 0: [] },
  internalStructures: true,
};

type Evaluator = (resource: unknown, envVars: Record<string, unknown>) => unknown;
const compiled = new Map<string, Evaluator>();

/** Parses once per distinct expression (parsing costs far more than evaluating). */
function compile(expression: string): Evaluator {
  let evaluator = compiled.get(expression);
  if (!evaluator) {
    evaluator = fhirpath.compile(expression, r4, { resolveInternalTypes: false, userInvocationTable: { resolve: resolveContained } }) as Evaluator;
    if (compiled.size >= 1000) compiled.clear();
    compiled.set(expression, evaluator);
  }
  return evaluator;
}

/** Evaluates a path on the working document; every result must be an element of that document. */
function select(doc: Json, expression: string, at: string): FpNode[] {
  const result: unknown = (() => {
    try {
      const evaluate = compile(expression);
      containedNow = new Map();
      if (expression.includes('resolve')) {
        for (const node of compile('contained')(doc, {}) as unknown[]) {
          if (isNode(node) && isPlainObject(node.data) && typeof node.data.id === 'string') containedNow.set('#' + node.data.id, node);
        }
      }
      return evaluate(doc, { resource: doc, rootResource: doc });
    } catch (error) {
      if (error instanceof OutsideReference) return fail('patch-not-applicable', error.message, at);
      const reason = error instanceof Error && error.message ? error.message.split('\n')[0] : 'it failed';
      return fail('invalid-patch', `The path cannot be evaluated: ${reason}`, at);
    } finally {
      containedNow = new Map();
    }
  })();
  if (result instanceof Promise) {
    result.catch(() => undefined);
    fail('invalid-patch', 'The path uses an asynchronous function, which a patch cannot', at);
  }
  const nodes = Array.isArray(result) ? (result as unknown[]) : [];
  for (const node of nodes) {
    let top: unknown = node;
    for (let n = 0; isNode(top) && top.parentResNode && n < 10_000; n++) top = top.parentResNode;
    if (!isNode(node) || !isNode(top) || top.data !== doc) {
      fail('patch-not-applicable', `The path selects ${describe(isNode(node) ? node.data : node)}, a value computed by the expression rather than an element of the resource`, at);
    }
  }
  return nodes as FpNode[];
}

function selectOne(doc: Json, expression: string, at: string, what: string, shown = expression): FpNode {
  const nodes = select(doc, expression, at);
  if (nodes.length === 0) fail('patch-path-not-found', `${what} "${shown}" selects nothing in the resource`, at);
  if (nodes.length > 1) fail('patch-path-ambiguous', `${what} "${shown}" selects ${nodes.length} elements; it must select one`, at);
  return nodes[0] as FpNode;
}

function elementAt(ownerPath: string, name: string, at: string): ElementInfo {
  const info = elementInfo(ownerPath, name);
  return info ?? fail('patch-not-applicable', `The R4 model does not describe ${ownerPath}.${name}`, at);
}

function applyOperation(doc: Json, op: Operation): void {
  const pathAt = op.partAt.path ?? op.at;
  switch (op.type) {
    case 'delete': {
      const nodes = select(doc, op.expression, pathAt);
      if (nodes.length === 0) return;
      if (nodes.length > 1) fail('patch-path-ambiguous', `The path "${op.path}" selects ${nodes.length} elements; a delete removes one`, pathAt);
      const slot = slotOf(nodes[0] as FpNode, pathAt);
      for (const key of slot.paired ? [slot.key, '_' + slot.key] : [slot.key]) {
        const v = slot.container[key];
        if (slot.index === null) delete slot.container[key];
        else if (Array.isArray(v) && slot.index < v.length) v.splice(slot.index, 1);
      }
      return;
    }
    case 'replace': {
      const slot = slotOf(selectOne(doc, op.expression, pathAt, 'The path', op.path), pathAt);
      const info = elementAt(slot.ownerPath, slot.name, pathAt);
      const value = materialize(op.value as ValueSpec, info);
      const key = info.choice ? info.name + capitalize(value.type) : slot.key;
      if (slot.index === null) {
        const removed = slot.paired ? [slot.key, '_' + slot.key] : [slot.key];
        const added: [string, unknown][] = [[key, value.json]];
        if (slot.paired) added.push(['_' + key, value.companion]);
        replaceEntries(slot.container, removed, added);
      } else {
        const length = listLength(slot.container, slot.key, slot.paired);
        for (const [k, v] of [[slot.key, value.json], ['_' + slot.key, value.companion]] as const) {
          if (k !== slot.key && !slot.paired) continue;
          const existing = slot.container[k];
          if (!Array.isArray(existing) && v === undefined) continue;
          const list = Array.isArray(existing) ? (existing as unknown[]) : [];
          while (list.length < length) list.push(null);
          list[slot.index] = v ?? null;
          slot.container[k] = list;
        }
      }
      return;
    }
    case 'add': {
      const target = selectOne(doc, op.expression, pathAt, 'The path', op.path);
      const { owner, ownerPath, paired } = childOwner(target, pathAt);
      const nameAt = op.partAt.name ?? op.at;
      const resolved = resolveName(ownerPath, op.name as string);
      if (!resolved) return fail('patch-type-mismatch', `${ownerPath || 'The element'} has no element "${op.name}"`, nameAt);
      const { info, forcedType } = resolved;
      const value = materialize(op.value as ValueSpec, info, forcedType);
      const key = info.choice ? info.name + capitalize(value.type) : info.name;
      if (info.repeating) {
        append(owner, key, value, paired);
      } else {
        const existing = presentKeys(owner, info);
        if (existing.length > 0) fail('patch-element-exists', `${ownerPath}.${info.name} already has a value and holds one only; use replace`, nameAt);
        setSingle(owner, key, value, paired);
      }
      return;
    }
    case 'insert':
    case 'move': {
      const owner = selectOne(doc, op.owner as string, pathAt, 'The list owner');
      const { owner: json, ownerPath, paired } = childOwner(owner, pathAt);
      const info = elementInfo(ownerPath, op.list as string);
      if (!info) return fail('patch-type-mismatch', `${ownerPath || 'The element'} has no element "${op.list}"`, pathAt);
      if (!info.repeating) return fail('patch-type-mismatch', `${info.path} is not a list`, pathAt);
      const key = info.name;
      const length = listLength(json, key, paired);
      if (op.type === 'insert') {
        const index = op.index as number;
        if (index > length) fail('patch-index-out-of-range', `Index ${index} is beyond the end of ${op.path}, which has ${length} element(s)`, op.partAt.index);
        append(json, key, materialize(op.value as ValueSpec, info), paired, index);
        return;
      }
      const { source, destination } = op as { source: number; destination: number };
      if (length === 0) fail('patch-path-not-found', `The list "${op.path}" is empty`, pathAt);
      if (source >= length) fail('patch-index-out-of-range', `Source ${source} is beyond the end of ${op.path}, which has ${length} element(s)`, op.partAt.source);
      if (destination >= length) fail('patch-index-out-of-range', `Destination ${destination} is beyond the end of ${op.path}, which has ${length} element(s)`, op.partAt.destination);
      for (const k of paired ? [key, '_' + key] : [key]) {
        const list = json[k];
        if (!Array.isArray(list)) continue;
        while (list.length < length) list.push(null);
        const [moved] = list.splice(source, 1) as unknown[];
        list.splice(destination, 0, moved);
      }
      return;
    }
  }
}

/** Applies a FHIRPath Patch to a copy of `resource`. Never throws; see the module comment. */
export function applyFhirPathPatchParameters(resource: Record<string, unknown>, parameters: unknown): FhirPathPatchResult {
  try {
    const { operations, problems } = readParameters(parameters);
    if (problems.length > 0) return { ok: false, problems };
    const doc = structuredClone(resource);
    const resourceType = JSON.stringify(resource.resourceType);
    const id = JSON.stringify(resource.id);
    for (const op of operations) {
      try {
        applyOperation(doc, op);
        prune(doc);
      } catch (error) {
        if (error instanceof OperationFailed) return { ok: false, problems: [error.problem] };
        throw error;
      }
      if (JSON.stringify(doc.resourceType) !== resourceType || JSON.stringify(doc.id) !== id) {
        const which = JSON.stringify(doc.resourceType) !== resourceType ? 'resourceType' : 'id';
        return { ok: false, problems: [problem('patch-immutable-element', `The operation would change the resource's ${which}, which a patch cannot do`, op.at)] };
      }
    }
    return { ok: true, resource: doc };
  } catch {
    return { ok: false, problems: [problem('internal-error', 'The patch could not be applied because of an unexpected error')] };
  }
}
