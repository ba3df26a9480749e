/**
 * JSON Patch (RFC 6902) applied to a FHIR resource held as plain JSON.
 * https://www.rfc-editor.org/rfc/rfc6902 · https://hl7.org/fhir/R4/http.html#patch
 *
 * Pure: the input resource and the patch are never mutated; the result is a new object.
 *
 * Two stages:
 * 1. The patch document is checked on its own, and every problem in it is reported at once
 *    (`invalid-patch`): it must be an array of objects, each with an `op` of RFC 6902, a `path`
 *    that is a JSON Pointer (RFC 6901: empty, or `/`-separated tokens where `~` is only `~0` or
 *    `~1`), a `value` for add/replace/test and a JSON-Pointer `from` for move/copy; a move may not
 *    put a value inside itself. Members RFC 6902 does not define are ignored, as it requires.
 * 2. The operations are applied in order to a copy of the resource; the first that fails stops
 *    the patch and is the only problem reported (the later ones would act on a state that never
 *    exists). Before each operation its pointers are resolved here, on own properties only and with
 *    RFC 6901's array-index syntax (`0` or no leading zero; `-` only as the target of add), so that
 *    every failure is named precisely (`patch-path-not-found`, `patch-index-out-of-range`); the edit
 *    itself is then done by fast-json-patch. A failed `test` gives `patch-test-failed` and
 *    `failedTest: true`. After each operation `resourceType` and `id` must be as they were
 *    (`patch-immutable-element`).
 *
 * Where a problem is: `expression` is a JSON Pointer into the patch document, naming the
 * operation by its index and, when one member is at fault, that member: `/3` (the fourth
 * operation), `/3/path`, `/3/from`, `/3/op`, `/3/value`. A patch that is not an array at all has
 * no expression.
 *
 * Why guard fast-json-patch rather than call it bare (3.1.1): it looks pointers up through the
 * prototype chain (`/constructor` "exists" on every object, and copying it throws a SyntaxError),
 * accepts `_get` and inherited names as an `op`, accepts array indexes with leading zeros, lets a
 * move into its own child fail with a TypeError, and throws a TypeError for `__proto__`. The checks
 * here close each of those; the library still performs the edit and the `test` comparison.
 */
import jsonpatch from 'fast-json-patch';
import type { Problem } from '../fhir/errors.js';
import type { ErrorCode } from '../fhir/error-codes.js';

export type JsonPatchResult =
  | { ok: true; resource: Record<string, unknown> }
  | { ok: false; problems: Problem[]; failedTest?: boolean };

const OPS = ['add', 'remove', 'replace', 'move', 'copy', 'test'] as const;
type OpName = (typeof OPS)[number];

interface CheckedOperation {
  op: OpName;
  path: string;
  tokens: string[];
  from?: string;
  fromTokens?: string[];
  value?: unknown;
}

const ISSUE_CODES: Partial<Record<ErrorCode, Problem['issueCode']>> = {
  'patch-path-not-found': 'not-found',
  'patch-path-ambiguous': 'multiple-matches',
};

function problem(code: ErrorCode, message: string, expression?: string): Problem {
  const issueCode = ISSUE_CODES[code];
  return { code, message, ...(expression !== undefined && expression !== '' ? { expression } : {}), ...(issueCode ? { issueCode } : {}) };
}

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && [Object.prototype, null].includes(Object.getPrototypeOf(v) as object | null);

const hasOwn = (o: object, key: string): boolean => Object.prototype.hasOwnProperty.call(o, key);

/** RFC 6901 tokens of a pointer, or a reason it is not one. */
export function parsePointer(pointer: unknown): string[] | string {
  if (typeof pointer !== 'string') return 'must be a string holding a JSON Pointer';
  if (pointer === '') return [];
  if (!pointer.startsWith('/')) return `"${pointer}" is not a JSON Pointer: it must be empty or start with "/"`;
  if (/~(?![01])/.test(pointer)) return `"${pointer}" is not a JSON Pointer: "~" must be followed by 0 or 1`;
  const tokens = pointer
    .slice(1)
    .split('/')
    .map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
  const banned = tokens.findIndex((t, i) => t === '__proto__' || (t === 'prototype' && tokens[i - 1] === 'constructor'));
  if (banned >= 0) return `"${pointer}" names "${tokens[banned]}", which is no FHIR element and is refused`;
  return tokens;
}

/** Is the value plain JSON (what JSON.parse can produce)? Iterative, so deep nesting cannot overflow. */
function isJson(value: unknown): boolean {
  const stack: unknown[] = [value];
  let seen = 0;
  while (stack.length > 0) {
    const v = stack.pop();
    if (++seen > 1_000_000) return false;
    if (v === null || typeof v === 'string' || typeof v === 'boolean') continue;
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) return false;
      continue;
    }
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        if (!(i in v)) return false;
        stack.push(v[i]);
      }
      continue;
    }
    if (isPlainObject(v)) {
      for (const key of Object.keys(v)) stack.push(v[key]);
      continue;
    }
    return false;
  }
  return true;
}

const pointerOf = (tokens: string[]): string => tokens.map((t) => '/' + t.replace(/~/g, '~0').replace(/\//g, '~1')).join('');

/** Stage 1: the patch document alone. */
function checkDocument(patch: unknown): { operations: CheckedOperation[]; problems: Problem[] } {
  const problems: Problem[] = [];
  const operations: CheckedOperation[] = [];
  if (!Array.isArray(patch)) {
    problems.push(problem('invalid-patch', 'A JSON Patch must be a JSON array of operations'));
    return { operations, problems };
  }
  patch.forEach((raw: unknown, i) => {
    const at = `/${i}`;
    if (!isPlainObject(raw)) {
      problems.push(problem('invalid-patch', `Operation ${i} is not a JSON object`, at));
      return;
    }
    const before = problems.length;
    const op = raw.op;
    if (typeof op !== 'string' || !(OPS as readonly string[]).includes(op)) {
      problems.push(problem('invalid-patch', `Operation ${i}: "op" must be one of ${OPS.join(', ')}`, `${at}/op`));
    }
    const tokens = hasOwn(raw, 'path') ? parsePointer(raw.path) : 'is missing';
    if (typeof tokens === 'string') problems.push(problem('invalid-patch', `Operation ${i}: "path" ${tokens}`, `${at}/path`));
    const needsValue = op === 'add' || op === 'replace' || op === 'test';
    if (needsValue && !hasOwn(raw, 'value')) {
      problems.push(problem('invalid-patch', `Operation ${i}: "${op}" needs a "value"`, `${at}/value`));
    } else if (needsValue && !isJson(raw.value)) {
      problems.push(problem('invalid-patch', `Operation ${i}: "value" is not a JSON value`, `${at}/value`));
    }
    let fromTokens: string[] | string | undefined;
    if (op === 'move' || op === 'copy') {
      fromTokens = hasOwn(raw, 'from') ? parsePointer(raw.from) : 'is missing';
      if (typeof fromTokens === 'string') {
        problems.push(problem('invalid-patch', `Operation ${i}: "${op}" needs a "from" that is a JSON Pointer; it ${fromTokens}`, `${at}/from`));
      } else if (op === 'move' && typeof tokens !== 'string' && fromTokens.length < tokens.length && fromTokens.every((t, k) => tokens[k] === t)) {
        problems.push(problem('invalid-patch', `Operation ${i}: a move cannot put "${String(raw.from)}" inside itself ("${String(raw.path)}")`, `${at}/from`));
      }
    }
    if (problems.length > before || typeof tokens === 'string') return;
    operations.push({
      op: op as OpName,
      path: raw.path as string,
      tokens,
      ...(typeof fromTokens === 'object' ? { from: raw.from as string, fromTokens } : {}),
      ...(needsValue ? { value: raw.value } : {}),
    });
  });
  return { operations, problems };
}

const ARRAY_INDEX = /^(0|[1-9][0-9]*)$/;

type Located = { ok: true; value: unknown } | { ok: false; problem: Problem };

/**
 * Resolves a pointer against the document for an operation. `mode` says what the last token may
 * be: 'existing' (remove, replace, test, and the `from` of move and copy) or 'insert' (the target
 * of add, move and copy: a new member, an index up to the array's length, or `-`).
 */
function locate(doc: unknown, tokens: string[], mode: 'existing' | 'insert', i: number, member: 'path' | 'from'): Located {
  const at = `/${i}/${member}`;
  let node: unknown = doc;
  for (let k = 0; k < tokens.length; k++) {
    const token = tokens[k] as string;
    const last = k === tokens.length - 1;
    const here = pointerOf(tokens.slice(0, k + 1));
    if (Array.isArray(node)) {
      if (last && mode === 'insert' && token === '-') return { ok: true, value: undefined };
      if (!ARRAY_INDEX.test(token)) {
        return { ok: false, problem: problem('patch-path-not-found', `Operation ${i}: "${here}" does not exist: "${token}" is not an index of the array at "${pointerOf(tokens.slice(0, k))}"`, at) };
      }
      const index = Number(token);
      const limit = last && mode === 'insert' ? node.length : node.length - 1;
      if (index > limit) {
        return {
          ok: false,
          problem: problem('patch-index-out-of-range', `Operation ${i}: index ${index} is out of range for the array at "${pointerOf(tokens.slice(0, k))}", which has ${node.length} element(s)`, at),
        };
      }
      node = node[index];
    } else if (isPlainObject(node)) {
      if (!hasOwn(node, token)) {
        if (last && mode === 'insert') return { ok: true, value: undefined };
        return { ok: false, problem: problem('patch-path-not-found', `Operation ${i}: "${here}" does not exist in the resource`, at) };
      }
      node = node[token];
    } else {
      return { ok: false, problem: problem('patch-path-not-found', `Operation ${i}: "${here}" does not exist: "${pointerOf(tokens.slice(0, k))}" is not an object or array`, at) };
    }
  }
  return { ok: true, value: node };
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Applies a JSON Patch to a copy of `resource`. Never throws; see the module comment. */
export function applyJsonPatchDocument(resource: Record<string, unknown>, patch: unknown): JsonPatchResult {
  try {
    const { operations, problems } = checkDocument(patch);
    if (problems.length > 0) return { ok: false, problems };

    let doc: unknown = structuredClone(resource);
    const resourceType = resource.resourceType;
    const id = resource.id;
    for (const [i, operation] of operations.entries()) {
      const { op, tokens, fromTokens } = operation;
      if (fromTokens) {
        const source = locate(doc, fromTokens, 'existing', i, 'from');
        if (!source.ok) return { ok: false, problems: [source.problem] };
      }
      const target = locate(doc, tokens, op === 'add' || op === 'move' || op === 'copy' ? 'insert' : 'existing', i, 'path');
      if (!target.ok) {
        // A test of something that is not there is a failed test: the resource is not as expected.
        if (op === 'test' && target.problem.code === 'patch-path-not-found') {
          return { ok: false, failedTest: true, problems: [problem('patch-test-failed', `Operation ${i}: test failed: "${operation.path}" does not exist`, `/${i}`)] };
        }
        return { ok: false, problems: [target.problem] };
      }
      if (op === 'test' && !jsonpatch._areEquals(target.value, operation.value)) {
        return {
          ok: false,
          failedTest: true,
          problems: [problem('patch-test-failed', `Operation ${i}: test failed: "${operation.path}" does not hold the expected value`, `/${i}`)],
        };
      }
      const libraryOp = {
        op,
        path: operation.path,
        ...(operation.from !== undefined ? { from: operation.from } : {}),
        ...('value' in operation ? { value: structuredClone(operation.value) } : {}),
      } as jsonpatch.Operation;
      doc = jsonpatch.applyOperation(doc, libraryOp, true, true, true, i).newDocument;

      if (!isPlainObject(doc)) {
        return { ok: false, problems: [problem('patch-immutable-element', `Operation ${i} would leave something other than a resource`, `/${i}`)] };
      }
      for (const [name, before] of [['resourceType', resourceType], ['id', id]] as const) {
        if (!sameJson(doc[name], before)) {
          return { ok: false, problems: [problem('patch-immutable-element', `Operation ${i} would change the resource's ${name}, which a patch cannot do`, `/${i}`)] };
        }
      }
    }
    return { ok: true, resource: doc as Record<string, unknown> };
  } catch (error) {
    return { ok: false, problems: [unexpected(error)] };
  }
}

/** Unreachable by design (every failure above is checked first); kept so the function never throws. */
function unexpected(error: unknown): Problem {
  if (error instanceof jsonpatch.JsonPatchError) {
    const index = typeof error.index === 'number' ? `/${error.index}` : undefined;
    const code: ErrorCode = error.name === 'TEST_OPERATION_FAILED' ? 'patch-test-failed' : 'patch-not-applicable';
    return problem(code, `The patch could not be applied (${error.name})`, index);
  }
  return problem('internal-error', 'The patch could not be applied because of an unexpected error');
}
