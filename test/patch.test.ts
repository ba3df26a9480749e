/**
 * src/patch: JSON Patch (RFC 6902) and FHIRPath Patch (https://hl7.org/fhir/R4/fhirpatch.html)
 * applied to resources as JSON. Pure functions: no database, no HTTP.
 */
import assert from 'node:assert/strict';
import { applyFhirPathPatch, applyJsonPatch, type PatchResult } from '../src/patch/index.js';
import { quoteReservedNames, splitListPath } from '../src/patch/fhirpath-patch.js';
import { parsePointer } from '../src/patch/json-patch.js';
import { ERROR_CODES } from '../src/fhir/error-codes.js';
import type { JsonResource } from '../src/fhir/resource.js';

type Json = Record<string, unknown>;

function ok(result: PatchResult): JsonResource {
  if (!result.ok) assert.fail(`expected success, got ${JSON.stringify(result.problems)}`);
  return result.resource;
}

/** Asserts failure with exactly these problems (code and expression; message when given as a RegExp). */
function fails(result: PatchResult, expected: { code: string; expression?: string; message?: RegExp }[]): void {
  if (result.ok) assert.fail(`expected failure, got ${JSON.stringify(result.resource)}`);
  assert.deepEqual(
    result.problems.map((p) => ({ code: p.code, expression: p.expression })),
    expected.map((e) => ({ code: e.code, expression: e.expression })),
  );
  expected.forEach((e, i) => {
    if (e.message) assert.match(result.problems[i]?.message ?? '', e.message);
  });
}

const patient = (extra: Json = {}): JsonResource => ({ resourceType: 'Patient', id: 'p1', ...extra });

// ---------------------------------------------------------------------------------------------
// JSON Patch

describe('JSON Patch', () => {
  const base = (): JsonResource =>
    patient({
      active: true,
      name: [{ family: 'Okafor', given: ['Ada', 'Ngozi'] }],
      identifier: [{ value: 'a' }, { value: 'b' }, { value: 'c' }],
    });

  describe('operations', () => {
    it('add: a new member, into an array by index and with "-", and over an existing member', () => {
      const r = ok(
        applyJsonPatch(base(), [
          { op: 'add', path: '/birthDate', value: '1970-01-01' },
          { op: 'add', path: '/name/0/given/1', value: 'Chioma' },
          { op: 'add', path: '/name/0/given/-', value: 'Last' },
          { op: 'add', path: '/active', value: false },
        ]),
      );
      assert.equal(r.birthDate, '1970-01-01');
      assert.deepEqual((r.name as Json[])[0]?.given, ['Ada', 'Chioma', 'Ngozi', 'Last']);
      assert.equal(r.active, false);
    });

    it('add at the end of an array by its length', () => {
      const r = ok(applyJsonPatch(base(), [{ op: 'add', path: '/identifier/3', value: { value: 'd' } }]));
      assert.deepEqual((r.identifier as Json[]).map((i) => i.value), ['a', 'b', 'c', 'd']);
    });

    it('remove: a member and an array element', () => {
      const r = ok(applyJsonPatch(base(), [{ op: 'remove', path: '/active' }, { op: 'remove', path: '/identifier/1' }]));
      assert.equal('active' in r, false);
      assert.deepEqual((r.identifier as Json[]).map((i) => i.value), ['a', 'c']);
    });

    it('replace: a member and an array element', () => {
      const r = ok(applyJsonPatch(base(), [{ op: 'replace', path: '/name/0/family', value: 'Obi' }, { op: 'replace', path: '/identifier/0', value: { value: 'z' } }]));
      assert.equal((r.name as Json[])[0]?.family, 'Obi');
      assert.deepEqual((r.identifier as Json[]).map((i) => i.value), ['z', 'b', 'c']);
    });

    it('move: between members and within an array', () => {
      const r = ok(applyJsonPatch(base(), [{ op: 'move', from: '/identifier/0', path: '/identifier/2' }, { op: 'move', from: '/active', path: '/deceasedBoolean' }]));
      assert.deepEqual((r.identifier as Json[]).map((i) => i.value), ['b', 'c', 'a']);
      assert.equal(r.deceasedBoolean, true);
      assert.equal('active' in r, false);
    });

    it('copy: a deep copy, so later operations do not change the source', () => {
      const r = ok(
        applyJsonPatch(base(), [
          { op: 'copy', from: '/name/0', path: '/name/-' },
          { op: 'replace', path: '/name/1/family', value: 'Copy' },
        ]),
      );
      assert.deepEqual((r.name as Json[]).map((n) => n.family), ['Okafor', 'Copy']);
    });

    it('test: passes on equal values (objects compared regardless of key order) and changes nothing', () => {
      const r = ok(
        applyJsonPatch(base(), [
          { op: 'test', path: '/name/0', value: { given: ['Ada', 'Ngozi'], family: 'Okafor' } },
          { op: 'test', path: '/active', value: true },
        ]),
      );
      assert.deepEqual(r, base());
    });

    it('an empty patch changes nothing', () => {
      assert.deepEqual(ok(applyJsonPatch(base(), [])), base());
    });

    it('a pointer with escaped tokens (~0, ~1) reaches keys holding "~" and "/"', () => {
      const r = ok(applyJsonPatch(patient({ extension: [{ url: 'u', valueString: 'x' }] }), [{ op: 'add', path: '/a~1b~0c', value: 1 }]));
      assert.equal(r['a/b~c'], 1);
    });

    it('replacing the whole resource is allowed when resourceType and id stay', () => {
      const r = ok(applyJsonPatch(base(), [{ op: 'replace', path: '', value: { resourceType: 'Patient', id: 'p1', active: false } }]));
      assert.deepEqual(r, { resourceType: 'Patient', id: 'p1', active: false });
    });
  });

  describe('RFC 6902 appendix A examples (on a resource)', () => {
    // Each example's document is put under the resource; resourceType and id ride along.
    const cases: { name: string; doc: Json; patch: Json[]; expected?: Json; code?: string }[] = [
      { name: 'A.1 adding an object member', doc: { foo: 'bar' }, patch: [{ op: 'add', path: '/baz', value: 'qux' }], expected: { baz: 'qux', foo: 'bar' } },
      { name: 'A.2 adding an array element', doc: { foo: ['bar', 'baz'] }, patch: [{ op: 'add', path: '/foo/1', value: 'qux' }], expected: { foo: ['bar', 'qux', 'baz'] } },
      { name: 'A.3 removing an object member', doc: { baz: 'qux', foo: 'bar' }, patch: [{ op: 'remove', path: '/baz' }], expected: { foo: 'bar' } },
      { name: 'A.4 removing an array element', doc: { foo: ['bar', 'qux', 'baz'] }, patch: [{ op: 'remove', path: '/foo/1' }], expected: { foo: ['bar', 'baz'] } },
      { name: 'A.5 replacing a value', doc: { baz: 'qux', foo: 'bar' }, patch: [{ op: 'replace', path: '/baz', value: 'boo' }], expected: { baz: 'boo', foo: 'bar' } },
      {
        name: 'A.6 moving a value',
        doc: { foo: { bar: 'baz', waldo: 'fred' }, qux: { corge: 'grault' } },
        patch: [{ op: 'move', from: '/foo/waldo', path: '/qux/thud' }],
        expected: { foo: { bar: 'baz' }, qux: { corge: 'grault', thud: 'fred' } },
      },
      { name: 'A.7 moving an array element', doc: { foo: ['all', 'grass', 'cows', 'eat'] }, patch: [{ op: 'move', from: '/foo/1', path: '/foo/3' }], expected: { foo: ['all', 'cows', 'eat', 'grass'] } },
      {
        name: 'A.8 testing a value: success',
        doc: { baz: 'qux', foo: ['a', 2, 'c'] },
        patch: [{ op: 'test', path: '/baz', value: 'qux' }, { op: 'test', path: '/foo/1', value: 2 }],
        expected: { baz: 'qux', foo: ['a', 2, 'c'] },
      },
      { name: 'A.9 testing a value: error', doc: { baz: 'qux' }, patch: [{ op: 'test', path: '/baz', value: 'bar' }], code: 'patch-test-failed' },
      { name: 'A.10 adding a nested member object', doc: { foo: 'bar' }, patch: [{ op: 'add', path: '/child', value: { grandchild: {} } }], expected: { foo: 'bar', child: { grandchild: {} } } },
      { name: 'A.11 ignoring unrecognized elements', doc: { foo: 'bar' }, patch: [{ op: 'add', path: '/baz', value: 'qux', xyz: 123 }], expected: { foo: 'bar', baz: 'qux' } },
      { name: 'A.12 adding to a nonexistent target', doc: { foo: 'bar' }, patch: [{ op: 'add', path: '/baz/bat', value: 'qux' }], code: 'patch-path-not-found' },
      { name: 'A.14 ~ escape ordering', doc: { '/': 9, '~1': 10 }, patch: [{ op: 'test', path: '/~01', value: 10 }], expected: { '/': 9, '~1': 10 } },
      { name: 'A.15 comparing strings and numbers', doc: { '/': 9, '~1': 10 }, patch: [{ op: 'test', path: '/~01', value: '10' }], code: 'patch-test-failed' },
      { name: 'A.16 adding an array value', doc: { foo: ['bar'] }, patch: [{ op: 'add', path: '/foo/-', value: ['abc', 'def'] }], expected: { foo: ['bar', ['abc', 'def']] } },
    ];
    for (const c of cases) {
      it(c.name, () => {
        const result = applyJsonPatch(patient(c.doc), c.patch);
        if (c.expected) assert.deepEqual(ok(result), patient(c.expected));
        else fails(result, [{ code: c.code as string, expression: c.code === 'patch-test-failed' ? '/0' : '/0/path' }]);
      });
    }
  });

  describe('a malformed patch document: every problem at once, with the operation named', () => {
    it('is not an array', () => {
      fails(applyJsonPatch(patient(), { op: 'add', path: '/a', value: 1 }), [{ code: 'invalid-patch', message: /array/ }]);
      fails(applyJsonPatch(patient(), null), [{ code: 'invalid-patch' }]);
    });

    it('reports each broken operation and member', () => {
      fails(
        applyJsonPatch(patient(), [
          { op: 'add', path: '/active', value: true },
          'remove',
          { op: 'delete', path: '/active' },
          { op: 'add', value: 1 },
          { op: 'replace', path: 'active', value: 1 },
          { op: 'test', path: '/a~2' },
          { op: 'copy', path: '/a' },
          { op: 'move', from: 'x', path: '/a' },
          { op: 'add', path: '/a' },
        ]),
        [
          { code: 'invalid-patch', expression: '/1' },
          { code: 'invalid-patch', expression: '/2/op' },
          { code: 'invalid-patch', expression: '/3/path', message: /missing/ },
          { code: 'invalid-patch', expression: '/4/path', message: /JSON Pointer/ },
          { code: 'invalid-patch', expression: '/5/path', message: /~/ },
          { code: 'invalid-patch', expression: '/5/value' },
          { code: 'invalid-patch', expression: '/6/from' },
          { code: 'invalid-patch', expression: '/7/from' },
          { code: 'invalid-patch', expression: '/8/value' },
        ],
      );
    });

    it('refuses ops that are not RFC 6902 ones, including names fast-json-patch would take', () => {
      for (const op of ['_get', 'toString', 'constructor', 'ADD', 'delete', 1, null]) {
        fails(applyJsonPatch(patient(), [{ op, path: '/a', value: 1 }]), [{ code: 'invalid-patch', expression: '/0/op' }]);
      }
    });

    it('refuses a value that is not JSON', () => {
      fails(applyJsonPatch(patient(), [{ op: 'add', path: '/a', value: undefined }]), [{ code: 'invalid-patch', expression: '/0/value' }]);
      fails(applyJsonPatch(patient(), [{ op: 'add', path: '/a', value: { x: () => 1 } }]), [{ code: 'invalid-patch', expression: '/0/value' }]);
      fails(applyJsonPatch(patient(), [{ op: 'add', path: '/a', value: Number.NaN }]), [{ code: 'invalid-patch', expression: '/0/value' }]);
    });

    it('refuses a move into its own child', () => {
      fails(applyJsonPatch(patient({ name: [{ family: 'x' }] }), [{ op: 'move', from: '/name', path: '/name/0/x' }]), [{ code: 'invalid-patch', expression: '/0/from', message: /inside itself/ }]);
    });

    it('refuses __proto__ and constructor/prototype, which are no FHIR elements', () => {
      fails(applyJsonPatch(patient(), [{ op: 'add', path: '/__proto__/polluted', value: 1 }]), [{ code: 'invalid-patch', expression: '/0/path' }]);
      fails(applyJsonPatch(patient(), [{ op: 'add', path: '/constructor/prototype/x', value: 1 }]), [{ code: 'invalid-patch', expression: '/0/path' }]);
      assert.equal(({} as Json).polluted, undefined);
    });

    it('parses JSON pointers by RFC 6901', () => {
      assert.deepEqual(parsePointer(''), []);
      assert.deepEqual(parsePointer('/'), ['']);
      assert.deepEqual(parsePointer('/a~1b/~0/c'), ['a/b', '~', 'c']);
      assert.deepEqual(parsePointer('/~01'), ['~1']);
      assert.equal(typeof parsePointer('a'), 'string');
      assert.equal(typeof parsePointer('/~'), 'string');
      assert.equal(typeof parsePointer(7), 'string');
    });
  });

  describe('operations that cannot be applied: the first failure stops the patch', () => {
    const r = (): JsonResource => patient({ name: [{ given: ['a', 'b'] }], active: true });

    it('a path that does not exist', () => {
      fails(applyJsonPatch(r(), [{ op: 'remove', path: '/birthDate' }]), [{ code: 'patch-path-not-found', expression: '/0/path' }]);
      fails(applyJsonPatch(r(), [{ op: 'replace', path: '/name/0/family', value: 'x' }]), [{ code: 'patch-path-not-found', expression: '/0/path' }]);
      fails(applyJsonPatch(r(), [{ op: 'add', path: '/contact/0/name', value: {} }]), [{ code: 'patch-path-not-found', expression: '/0/path' }]);
      fails(applyJsonPatch(r(), [{ op: 'add', path: '/active/x', value: 1 }]), [{ code: 'patch-path-not-found', expression: '/0/path', message: /not an object or array/ }]);
      fails(applyJsonPatch(r(), [{ op: 'copy', from: '/birthDate', path: '/x' }]), [{ code: 'patch-path-not-found', expression: '/0/from' }]);
      fails(applyJsonPatch(r(), [{ op: 'move', from: '/name/0/family', path: '/x' }]), [{ code: 'patch-path-not-found', expression: '/0/from' }]);
    });

    it('names inherited from Object.prototype do not exist', () => {
      fails(applyJsonPatch(r(), [{ op: 'remove', path: '/constructor' }]), [{ code: 'patch-path-not-found', expression: '/0/path' }]);
      fails(applyJsonPatch(r(), [{ op: 'copy', from: '/toString', path: '/x' }]), [{ code: 'patch-path-not-found', expression: '/0/from' }]);
      fails(applyJsonPatch(r(), [{ op: 'replace', path: '/name/length', value: 0 }]), [{ code: 'patch-path-not-found', expression: '/0/path' }]);
    });

    it('array indexes: out of range, leading zeros, and "-" outside add', () => {
      fails(applyJsonPatch(r(), [{ op: 'add', path: '/name/0/given/3', value: 'x' }]), [{ code: 'patch-index-out-of-range', expression: '/0/path' }]);
      fails(applyJsonPatch(r(), [{ op: 'remove', path: '/name/0/given/2' }]), [{ code: 'patch-index-out-of-range', expression: '/0/path' }]);
      fails(applyJsonPatch(r(), [{ op: 'replace', path: '/name/0/given/01', value: 'x' }]), [{ code: 'patch-path-not-found', expression: '/0/path' }]);
      fails(applyJsonPatch(r(), [{ op: 'remove', path: '/name/0/given/-' }]), [{ code: 'patch-path-not-found', expression: '/0/path' }]);
      fails(applyJsonPatch(r(), [{ op: 'add', path: '/name/x', value: {} }]), [{ code: 'patch-path-not-found', expression: '/0/path' }]);
    });

    it('stops at the first failing operation and reports only it', () => {
      fails(
        applyJsonPatch(r(), [
          { op: 'replace', path: '/active', value: false },
          { op: 'remove', path: '/nothing' },
          { op: 'remove', path: '/nothing/else' },
        ]),
        [{ code: 'patch-path-not-found', expression: '/1/path' }],
      );
    });

    it('a failed test is its own outcome, flagged failedTest', () => {
      const result = applyJsonPatch(r(), [{ op: 'replace', path: '/active', value: false }, { op: 'test', path: '/name/0/given/0', value: 'b' }]);
      fails(result, [{ code: 'patch-test-failed', expression: '/1' }]);
      assert.equal(!result.ok && result.failedTest, true);
      const missing = applyJsonPatch(r(), [{ op: 'test', path: '/birthDate', value: '1970' }]);
      fails(missing, [{ code: 'patch-test-failed', expression: '/0', message: /does not exist/ }]);
      assert.equal(!missing.ok && missing.failedTest, true);
      const other = applyJsonPatch(r(), [{ op: 'remove', path: '/birthDate' }]);
      assert.equal(!other.ok && other.failedTest, undefined);
    });

    it('resourceType and id cannot be changed, removed or added', () => {
      for (const patch of [
        [{ op: 'replace', path: '/resourceType', value: 'Group' }],
        [{ op: 'replace', path: '/id', value: 'p2' }],
        [{ op: 'remove', path: '/id' }],
        [{ op: 'move', from: '/id', path: '/x' }],
        [{ op: 'replace', path: '', value: { resourceType: 'Patient', id: 'other' } }],
        [{ op: 'remove', path: '' }],
        [{ op: 'add', path: '', value: [] }],
      ]) {
        fails(applyJsonPatch(r(), patch), [{ code: 'patch-immutable-element', expression: '/0' }]);
      }
      fails(applyJsonPatch(patient({ id: undefined }), [{ op: 'add', path: '/id', value: 'new' }]), [{ code: 'patch-immutable-element', expression: '/0' }]);
    });
  });

  it('never mutates the resource or the patch, and never shares values with them', () => {
    const resource = patient({ name: [{ given: ['a'] }] });
    const value = { family: 'New' };
    const patch = [{ op: 'add', path: '/name/-', value }, { op: 'remove', path: '/name/0/given/0' }];
    const [resourceBefore, patchBefore] = [structuredClone(resource), structuredClone(patch)];
    const r = ok(applyJsonPatch(resource, patch));
    assert.deepEqual(resource, resourceBefore);
    assert.deepEqual(patch, patchBefore);
    (r.name as Json[])[1]!.family = 'Changed';
    assert.equal(value.family, 'New');
  });

  it('a value holding a "__proto__" key stays data and pollutes no prototype', () => {
    const patch: unknown = JSON.parse('[{"op":"add","path":"/x","value":{"__proto__":{"polluted":1}}}]');
    const r = ok(applyJsonPatch(patient(), patch));
    assert.deepEqual(Object.keys(r.x as Json), ['__proto__']);
    assert.equal(({} as Json).polluted, undefined);
  });

  it('problems carry the FHIR issue type where one fits', () => {
    const result = applyJsonPatch(patient(), [{ op: 'remove', path: '/x' }]);
    assert.equal(!result.ok && result.problems[0]?.issueCode, 'not-found');
  });
});

// ---------------------------------------------------------------------------------------------
// FHIRPath Patch

type PartValue = Json;
interface Op {
  type: string;
  path?: string;
  name?: string;
  value?: PartValue;
  index?: number;
  source?: number;
  destination?: number;
}

/** An operation parameter; `value` is the body of the value part (`{ valueDate: … }` or `{ part: […] }`). */
function operation(op: Op): Json {
  const part: Json[] = [{ name: 'type', valueCode: op.type }];
  if (op.path !== undefined) part.push({ name: 'path', valueString: op.path });
  if (op.name !== undefined) part.push({ name: 'name', valueString: op.name });
  if (op.value !== undefined) part.push({ name: 'value', ...op.value });
  for (const key of ['index', 'source', 'destination'] as const) if (op[key] !== undefined) part.push({ name: key, valueInteger: op[key] });
  return { name: 'operation', part };
}
const parameters = (...ops: Op[]): Json => ({ resourceType: 'Parameters', parameter: ops.map(operation) });
const fhirPatch = (resource: JsonResource, ...ops: Op[]): PatchResult => applyFhirPathPatch(resource, parameters(...ops));

const ids = (...values: string[]): Json[] => values.map((value) => ({ system: 'http://example.org', value }));

describe('FHIRPath Patch', () => {
  describe('the examples of https://hl7.org/fhir/R4/fhirpatch.html', () => {
    it('adds an element (birthDate)', () => {
      assert.deepEqual(ok(fhirPatch(patient(), { type: 'add', path: 'Patient', name: 'birthDate', value: { valueDate: '1930-01-01' } })), patient({ birthDate: '1930-01-01' }));
    });

    it('adds an anonymous type from parts (a contact with a name)', () => {
      const r = fhirPatch(patient(), { type: 'add', path: 'Patient', name: 'contact', value: { part: [{ name: 'name', valueHumanName: { text: 'a name' } }] } });
      assert.deepEqual(ok(r), patient({ contact: [{ name: { text: 'a name' } }] }));
    });
  });

  describe('the official test cases (fhir-test-cases r4/patch/fhir-path-tests.xml)', () => {
    // "Consecutive operations" is left out: as published, its expected output changes an
    // extension value ("VV" to "WW") that no operation touches, and it adds to contact[1], which
    // its input does not have.
    const contact = (extra: Json = {}): Json => ({ name: { text: 'a name' }, ...extra });
    const cases: { name: string; input: Json; ops: Op[]; output?: Json; error?: string }[] = [
      { name: 'No Difference', input: { birthDate: '1920-01-01' }, ops: [], output: { birthDate: '1920-01-01' } },
      { name: 'Replace Primitive', input: { birthDate: '1920-01-01' }, ops: [{ type: 'replace', path: 'Patient.birthDate', value: { valueDate: '1930-01-01' } }], output: { birthDate: '1930-01-01' } },
      { name: 'Delete Primitive', input: { birthDate: '1920-01-01' }, ops: [{ type: 'delete', path: 'Patient.birthDate' }], output: {} },
      { name: 'Add Primitive', input: {}, ops: [{ type: 'add', path: 'Patient', name: 'birthDate', value: { valueDate: '1930-01-01' } }], output: { birthDate: '1930-01-01' } },
      {
        name: 'Replace Nested Primitive #1',
        input: { contact: [contact({ gender: 'male' })] },
        ops: [{ type: 'replace', path: 'Patient.contact[0].gender', value: { valueCode: 'female' } }],
        output: { contact: [contact({ gender: 'female' })] },
      },
      {
        name: 'Replace Nested Primitive #2',
        input: { contact: [contact({ gender: 'male' })] },
        ops: [{ type: 'replace', path: 'Patient.contact[0].name.text', value: { valueString: 'the name' } }],
        output: { contact: [{ name: { text: 'the name' }, gender: 'male' }] },
      },
      { name: 'Delete Nested Primitive #1', input: { contact: [contact({ gender: 'male' })] }, ops: [{ type: 'delete', path: 'Patient.contact[0].gender' }], output: { contact: [contact()] } },
      { name: 'Delete Nested Primitive #2', input: { contact: [contact({ gender: 'male' })] }, ops: [{ type: 'delete', path: 'Patient.contact[0].name.text' }], output: { contact: [{ gender: 'male' }] } },
      {
        name: 'Add Nested Primitive',
        input: { contact: [contact()] },
        ops: [{ type: 'add', path: 'Patient.contact[0]', name: 'gender', value: { valueCode: 'male' } }],
        output: { contact: [contact({ gender: 'male' })] },
      },
      {
        name: 'Add Complex',
        input: {},
        ops: [{ type: 'add', path: 'Patient', name: 'maritalStatus', value: { valueCodeableConcept: { text: 'married' } } }],
        output: { maritalStatus: { text: 'married' } },
      },
      {
        name: 'Replace Complex',
        input: { maritalStatus: { id: '1', text: 'married' } },
        ops: [{ type: 'replace', path: 'Patient.maritalStatus', value: { valueCodeableConcept: { id: '2', text: 'not married' } } }],
        output: { maritalStatus: { id: '2', text: 'not married' } },
      },
      { name: 'Delete Complex', input: { maritalStatus: { text: 'married' } }, ops: [{ type: 'delete', path: 'Patient.maritalStatus' }], output: {} },
      {
        name: 'Add Anonymous Type',
        input: {},
        ops: [{ type: 'add', path: 'Patient', name: 'contact', value: { part: [{ name: 'name', valueHumanName: { text: 'a name' } }] } }],
        output: { contact: [contact()] },
      },
      { name: 'Delete Anonymous Type', input: { contact: [contact()] }, ops: [{ type: 'delete', path: 'Patient.contact[0]' }], output: {} },
      { name: 'List unchanged', input: { identifier: ids('value 1', 'value 2') }, ops: [], output: { identifier: ids('value 1', 'value 2') } },
      {
        name: 'List unchanged, contents changed',
        input: { identifier: [{ id: 'a', ...ids('value 1')[0] }, { id: 'b', ...ids('value 2')[0] }] },
        ops: [
          { type: 'replace', path: 'Patient.identifier[0].value', value: { valueString: 'value 2' } },
          { type: 'replace', path: 'Patient.identifier[1].value', value: { valueString: 'value 1' } },
        ],
        output: { identifier: [{ id: 'a', ...ids('value 2')[0] }, { id: 'b', ...ids('value 1')[0] }] },
      },
      {
        name: 'Add to list',
        input: { identifier: ids('value 1', 'value 2') },
        ops: [{ type: 'insert', path: 'Patient.identifier', index: 2, value: { valueIdentifier: ids('value 3')[0] } }],
        output: { identifier: ids('value 1', 'value 2', 'value 3') },
      },
      {
        name: 'Insert in list #1',
        input: { identifier: ids('value 1', 'value 2') },
        ops: [{ type: 'insert', path: 'Patient.identifier', index: 1, value: { valueIdentifier: ids('value 3')[0] } }],
        output: { identifier: ids('value 1', 'value 3', 'value 2') },
      },
      {
        name: 'Insert in list #2',
        input: { identifier: ids('value 1', 'value 2') },
        ops: [{ type: 'insert', path: 'Patient.identifier', index: 0, value: { valueIdentifier: ids('value 3')[0] } }],
        output: { identifier: ids('value 3', 'value 1', 'value 2') },
      },
      { name: 'Delete from List #1', input: { identifier: ids('value 1', 'value 2', 'value 3') }, ops: [{ type: 'delete', path: 'Patient.identifier[0]' }], output: { identifier: ids('value 2', 'value 3') } },
      { name: 'Delete from List #2', input: { identifier: ids('value 1', 'value 2', 'value 3') }, ops: [{ type: 'delete', path: 'Patient.identifier[1]' }], output: { identifier: ids('value 1', 'value 3') } },
      { name: 'Delete from List #3', input: { identifier: ids('value 1', 'value 2', 'value 3') }, ops: [{ type: 'delete', path: 'Patient.identifier[2]' }], output: { identifier: ids('value 1', 'value 2') } },
      ...(
        [
          ['#1', [[3, 1]], ['value 1', 'value 4', 'value 2', 'value 3']],
          ['#2', [[3, 0]], ['value 4', 'value 1', 'value 2', 'value 3']],
          ['#3', [[3, 2]], ['value 1', 'value 2', 'value 4', 'value 3']],
          ['#4', [[0, 3]], ['value 2', 'value 3', 'value 4', 'value 1']],
          ['#5', [[1, 0], [2, 1]], ['value 2', 'value 3', 'value 1', 'value 4']],
          ['#6', [[3, 0], [3, 1], [3, 2]], ['value 4', 'value 3', 'value 2', 'value 1']],
        ] as [string, [number, number][], string[]][]
      ).map(([n, moves, out]) => ({
        name: `Reorder List ${n}`,
        input: { identifier: ids('value 1', 'value 2', 'value 3', 'value 4') },
        ops: moves.map(([source, destination]) => ({ type: 'move', path: 'Patient.identifier', source, destination })),
        output: { identifier: ids(...out) },
      })),
      {
        name: 'Operation on missing element',
        input: { identifier: [{ use: 'official', value: '123' }] },
        ops: [{ type: 'add', path: "Patient.identifier.where(use = 'official').period", name: 'end', value: { valueDate: '2021-12-01' } }],
        error: 'patch-path-not-found',
      },
      {
        name: 'Operation on missing element #2',
        input: {},
        ops: [{ type: 'add', path: 'Patient', name: 'identifier', value: { valueIdentifier: ids('value 3')[0] } }],
        output: { identifier: ids('value 3') },
      },
      {
        name: 'Full Resource (narrative div and family name)',
        input: {
          text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml"><b>Chalmers</b></div>' },
          name: [{ use: 'official', family: 'Chalmers', given: ['Peter', 'James'] }, { use: 'usual', given: ['Jim'] }],
          birthDate: '1974-12-25',
          _birthDate: { extension: [{ url: 'http://hl7.org/fhir/StructureDefinition/patient-birthTime', valueDateTime: '1974-12-25T14:35:45-05:00' }] },
        },
        ops: [
          { type: 'replace', path: 'Patient.text.div', value: { valueString: '<div xmlns="http://www.w3.org/1999/xhtml"><b>Chalmers1</b></div>' } },
          { type: 'replace', path: 'Patient.name[0].family', value: { valueString: 'Chalmers1' } },
        ],
        output: {
          text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml"><b>Chalmers1</b></div>' },
          name: [{ use: 'official', family: 'Chalmers1', given: ['Peter', 'James'] }, { use: 'usual', given: ['Jim'] }],
          birthDate: '1974-12-25',
          _birthDate: { extension: [{ url: 'http://hl7.org/fhir/StructureDefinition/patient-birthTime', valueDateTime: '1974-12-25T14:35:45-05:00' }] },
        },
      },
    ];
    for (const c of cases) {
      it(c.name, () => {
        const result = fhirPatch(patient(c.input), ...c.ops);
        if (c.output) assert.deepEqual(ok(result), patient(c.output));
        else fails(result, [{ code: c.error as string, expression: 'Parameters.parameter[0].part[1]' }]);
      });
    }
  });

  describe('choice elements (value[x])', () => {
    const observation = (extra: Json = {}): JsonResource => ({ resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'weight' }, ...extra });

    it('add names the base and the value gives the type', () => {
      const r = ok(fhirPatch(observation(), { type: 'add', path: 'Observation', name: 'value', value: { valueQuantity: { value: 72.5, unit: 'kg' } } }));
      assert.deepEqual(r.valueQuantity, { value: 72.5, unit: 'kg' });
      assert.equal('value' in r, false);
    });

    it('add also takes the typed name, and checks the type against it', () => {
      assert.equal(ok(fhirPatch(observation(), { type: 'add', path: 'Observation', name: 'valueString', value: { valueString: 'heavy' } })).valueString, 'heavy');
      fails(fhirPatch(observation(), { type: 'add', path: 'Observation', name: 'valueString', value: { valueBoolean: true } }), [
        { code: 'patch-type-mismatch', expression: 'Parameters.parameter[0].part[3]' },
      ]);
    });

    it('replace may change the type of a choice element, keeping its place', () => {
      const r = ok(fhirPatch(observation({ valueQuantity: { value: 1 }, note: [{ text: 'n' }] }), { type: 'replace', path: 'Observation.value', value: { valueString: 'one' } }));
      assert.deepEqual(Object.keys(r), ['resourceType', 'id', 'status', 'code', 'valueString', 'note']);
      assert.equal(r.valueString, 'one');
    });

    it('refuses a type the choice does not allow, and a second value', () => {
      fails(fhirPatch(observation(), { type: 'add', path: 'Observation', name: 'value', value: { valueAddress: { city: 'x' } } }), [
        { code: 'patch-type-mismatch', expression: 'Parameters.parameter[0].part[3]', message: /Quantity/ },
      ]);
      fails(fhirPatch(observation({ valueBoolean: true }), { type: 'add', path: 'Observation', name: 'value', value: { valueString: 'x' } }), [
        { code: 'patch-element-exists', expression: 'Parameters.parameter[0].part[2]' },
      ]);
    });

    it('a path through a choice element reaches its content', () => {
      const r = ok(fhirPatch(observation({ valueQuantity: { value: 1, unit: 'kg' } }), { type: 'replace', path: 'Observation.value.unit', value: { valueString: 'g' } }));
      assert.deepEqual(r.valueQuantity, { value: 1, unit: 'g' });
    });
  });

  describe('primitive extensions (the _element companion)', () => {
    const birthTime = { url: 'http://hl7.org/fhir/StructureDefinition/patient-birthTime', valueDateTime: '1974-12-25T14:35:45-05:00' };

    it('add an extension to a primitive puts it in _birthDate', () => {
      const r = ok(
        fhirPatch(patient({ birthDate: '1974-12-25' }), {
          type: 'add',
          path: 'Patient.birthDate',
          name: 'extension',
          value: { part: [{ name: 'url', valueUri: birthTime.url }, { name: 'value', valueDateTime: birthTime.valueDateTime }] },
        }),
      );
      assert.deepEqual(r, patient({ birthDate: '1974-12-25', _birthDate: { extension: [birthTime] } }));
    });

    it('deleting the only extension of a primitive removes the empty _birthDate', () => {
      const r = ok(fhirPatch(patient({ birthDate: '1974-12-25', _birthDate: { extension: [birthTime] } }), { type: 'delete', path: 'Patient.birthDate.extension[0]' }));
      assert.deepEqual(r, patient({ birthDate: '1974-12-25' }));
    });

    it('deleting a primitive deletes its extensions too', () => {
      assert.deepEqual(ok(fhirPatch(patient({ birthDate: '1974-12-25', _birthDate: { extension: [birthTime] } }), { type: 'delete', path: 'Patient.birthDate' })), patient());
    });

    it('replace sets the new value with the extensions the value part carries', () => {
      const r = ok(
        fhirPatch(patient({ birthDate: '1974-12-25' }), { type: 'replace', path: 'Patient.birthDate', value: { valueDate: '1975-01-01', _valueDate: { extension: [birthTime] } } }),
      );
      assert.deepEqual(r, patient({ birthDate: '1975-01-01', _birthDate: { extension: [birthTime] } }));
    });

    const name = (): JsonResource => patient({ name: [{ given: ['a', 'b', 'c'], _given: [null, { id: 'g2' }, null] }] });

    it('insert into a primitive list keeps the companion aligned', () => {
      const r = ok(fhirPatch(name(), { type: 'insert', path: 'Patient.name[0].given', index: 0, value: { valueString: 'z' } }));
      assert.deepEqual(r.name, [{ given: ['z', 'a', 'b', 'c'], _given: [null, null, { id: 'g2' }, null] }]);
    });

    it('move in a primitive list moves the companion along', () => {
      const r = ok(fhirPatch(name(), { type: 'move', path: 'Patient.name[0].given', source: 1, destination: 2 }));
      assert.deepEqual(r.name, [{ given: ['a', 'c', 'b'], _given: [null, null, { id: 'g2' }] }]);
    });

    it('delete from a primitive list drops the companion entry, and a companion left all null', () => {
      const r = ok(fhirPatch(name(), { type: 'delete', path: 'Patient.name[0].given[1]' }));
      assert.deepEqual(r.name, [{ given: ['a', 'c'] }]);
    });

    it('add to a primitive list with a companion pads it', () => {
      const r = ok(fhirPatch(name(), { type: 'add', path: 'Patient.name[0]', name: 'given', value: { valueString: 'd', _valueString: { id: 'g4' } } }));
      assert.deepEqual(r.name, [{ given: ['a', 'b', 'c', 'd'], _given: [null, { id: 'g2' }, null, { id: 'g4' }] }]);
    });

    it('replace a list item by index', () => {
      const r = ok(fhirPatch(name(), { type: 'replace', path: 'Patient.name[0].given[1]', value: { valueString: 'B' } }));
      assert.deepEqual(r.name, [{ given: ['a', 'B', 'c'] }]);
    });
  });

  describe('complex values from parts, contained resources and resolve()', () => {
    it('adds a Coding to a CodeableConcept from parts system and code', () => {
      const r = ok(
        fhirPatch(patient({ maritalStatus: { text: 'married' } }), {
          type: 'add',
          path: 'Patient.maritalStatus',
          name: 'coding',
          value: { part: [{ name: 'system', valueUri: 'http://terminology.hl7.org/CodeSystem/v3-MaritalStatus' }, { name: 'code', valueCode: 'M' }] },
        }),
      );
      assert.deepEqual(r.maritalStatus, { text: 'married', coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-MaritalStatus', code: 'M' }] });
    });

    it('nests parts as deep as needed, repeating children into lists', () => {
      const r = ok(
        fhirPatch(patient(), {
          type: 'add',
          path: 'Patient',
          name: 'contact',
          value: {
            part: [
              { name: 'relationship', part: [{ name: 'coding', valueCoding: { code: 'N' } }, { name: 'coding', valueCoding: { code: 'E' } }] },
              { name: 'telecom', valueContactPoint: { system: 'phone', value: '1' } },
              { name: 'gender', valueCode: 'female' },
            ],
          },
        }),
      );
      assert.deepEqual(r.contact, [{ relationship: [{ coding: [{ code: 'N' }, { code: 'E' }] }], telecom: [{ system: 'phone', value: '1' }], gender: 'female' }]);
    });

    it('adds an extension to the resource from parts', () => {
      const r = ok(fhirPatch(patient(), { type: 'add', path: 'Patient', name: 'extension', value: { part: [{ name: 'url', valueUri: 'http://x' }, { name: 'value', valueBoolean: true }] } }));
      assert.deepEqual(r.extension, [{ url: 'http://x', valueBoolean: true }]);
    });

    it('refuses parts naming an element the type does not have, or a single one twice', () => {
      fails(fhirPatch(patient(), { type: 'add', path: 'Patient', name: 'contact', value: { part: [{ name: 'colour', valueString: 'red' }] } }), [
        { code: 'patch-type-mismatch', expression: 'Parameters.parameter[0].part[3].part[0]', message: /no element "colour"/ },
      ]);
      fails(
        fhirPatch(patient(), {
          type: 'add',
          path: 'Patient',
          name: 'contact',
          value: { part: [{ name: 'gender', valueCode: 'male' }, { name: 'gender', valueCode: 'female' }] },
        }),
        [{ code: 'patch-type-mismatch', expression: 'Parameters.parameter[0].part[3].part[1]' }],
      );
    });

    it('adds a contained resource from a resource part, then patches it through resolve()', () => {
      const organization = { resourceType: 'Organization', id: 'org', name: 'Old' };
      const r = ok(
        fhirPatch(
          patient({ managingOrganization: { reference: '#org' } }),
          { type: 'add', path: 'Patient', name: 'contained', value: { resource: organization } },
          { type: 'replace', path: 'Patient.managingOrganization.resolve().name', value: { valueString: 'New' } },
        ),
      );
      assert.deepEqual(r.contained, [{ resourceType: 'Organization', id: 'org', name: 'New' }]);
    });

    it('resolve() refuses anything but a contained resource', () => {
      fails(fhirPatch(patient({ managingOrganization: { reference: 'Organization/1' } }), { type: 'delete', path: 'Patient.managingOrganization.resolve().name' }), [
        { code: 'patch-not-applicable', expression: 'Parameters.parameter[0].part[1]', message: /contained/ },
      ]);
    });

    it('FHIRPath functions select elements (where, first, descendants)', () => {
      const r = ok(
        fhirPatch(
          patient({ telecom: [{ system: 'phone', value: '1' }, { system: 'email', value: 'a@b' }] }),
          { type: 'replace', path: "Patient.telecom.where(system = 'email').value", value: { valueString: 'c@d' } },
          { type: 'delete', path: 'Patient.telecom.first()' },
        ),
      );
      assert.deepEqual(r.telecom, [{ system: 'email', value: 'c@d' }]);
    });

    it('a path without the type name works from the resource', () => {
      assert.deepEqual(ok(fhirPatch(patient({ identifier: ids('1') }), { type: 'insert', path: 'identifier', index: 0, value: { valueIdentifier: { value: '0' } } })).identifier, [
        { value: '0' },
        ...ids('1'),
      ]);
    });

    it('insert into a list that does not exist yet, at 0', () => {
      assert.deepEqual(ok(fhirPatch(patient(), { type: 'insert', path: 'Patient.identifier', index: 0, value: { valueIdentifier: { value: '0' } } })).identifier, [{ value: '0' }]);
    });

    it('accepts a value of a derived type (Age for Quantity) and a Quantity for a Quantity profile', () => {
      const r = ok(fhirPatch(patient(), { type: 'add', path: 'Patient', name: 'extension', value: { part: [{ name: 'url', valueUri: 'http://x' }, { name: 'value', valueAge: { value: 3 } }] } }));
      assert.deepEqual(r.extension, [{ url: 'http://x', valueAge: { value: 3 } }]);
      const m = ok(
        fhirPatch({ resourceType: 'Medication', id: 'm' }, { type: 'add', path: 'Medication', name: 'amount', value: { part: [{ name: 'numerator', valueQuantity: { value: 1 } }] } }),
      );
      assert.deepEqual(m.amount, { numerator: { value: 1 } });
      const e = ok(fhirPatch({ resourceType: 'Encounter', id: 'e', status: 'finished', class: { code: 'AMB' } }, { type: 'add', path: 'Encounter', name: 'length', value: { valueQuantity: { value: 30, code: 'min' } } }));
      assert.deepEqual(e.length, { value: 30, code: 'min' });
      fails(fhirPatch({ resourceType: 'Encounter', id: 'e' }, { type: 'add', path: 'Encounter', name: 'length', value: { valueRange: { low: { value: 1 } } } }), [
        { code: 'patch-type-mismatch', expression: 'Parameters.parameter[0].part[3]' },
      ]);
    });
  });

  describe('delete', () => {
    it('of nothing is a no-op', () => {
      assert.deepEqual(ok(fhirPatch(patient({ active: true }), { type: 'delete', path: 'Patient.birthDate' })), patient({ active: true }));
    });

    it('of several elements is refused', () => {
      fails(fhirPatch(patient({ identifier: ids('1', '2') }), { type: 'delete', path: 'Patient.identifier' }), [
        { code: 'patch-path-ambiguous', expression: 'Parameters.parameter[0].part[1]', message: /2 elements/ },
      ]);
    });

    it('of the resource itself is refused', () => {
      fails(fhirPatch(patient(), { type: 'delete', path: 'Patient' }), [{ code: 'patch-not-applicable', expression: 'Parameters.parameter[0].part[1]' }]);
    });
  });

  describe('a malformed Parameters: every problem at once, each naming its operation', () => {
    it('is not a Parameters resource', () => {
      fails(applyFhirPathPatch(patient(), [{ op: 'add' }]), [{ code: 'invalid-patch', message: /Parameters/ }]);
      fails(applyFhirPathPatch(patient(), { resourceType: 'Patient' }), [{ code: 'invalid-patch' }]);
      fails(applyFhirPathPatch(patient(), { resourceType: 'Parameters', parameter: {} }), [{ code: 'invalid-patch', expression: 'Parameters.parameter' }]);
    });

    it('reports the problems of each operation and part', () => {
      const op = (...part: Json[]): Json => ({ name: 'operation', part });
      const result = applyFhirPathPatch(patient(), {
        resourceType: 'Parameters',
        parameter: [
          { name: 'change', part: [{ name: 'type', valueCode: 'delete' }, { name: 'path', valueString: 'Patient.active' }] },
          op({ name: 'type', valueCode: 'remove' }, { name: 'path', valueString: 'Patient.active' }),
          op({ name: 'type', valueCode: 'add' }, { name: 'path', valueString: 'Patient' }, { name: 'value', valueBoolean: true }),
          op({ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.name.where(' }, { name: 'value', valueString: 'x' }),
          op({ name: 'type', valueCode: 'delete' }, { name: 'path', valueString: 'Patient.active' }, { name: 'index', valueInteger: 0 }),
          op({ name: 'type', valueCode: 'insert' }, { name: 'path', valueString: 'Patient.identifier' }, { name: 'index', valueInteger: -1 }, { name: 'value', valueIdentifier: {} }),
          op({ name: 'type', valueCode: 'delete' }, { name: 'path', valueString: 'Patient.active' }, { name: 'path', valueString: 'Patient.active' }),
          op({ name: 'type', valueCode: 'delete' }, { name: 'colour', valueString: 'red' }, { name: 'path', valueString: 'Patient.active' }),
          op({ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.active' }, { name: 'value', valueBoolean: true, valueString: 'x' }),
          op({ name: 'type', valueCode: 'insert' }, { name: 'path', valueString: 'Patient.identifier.first()' }, { name: 'index', valueInteger: 0 }, { name: 'value', valueIdentifier: {} }),
          op({ name: 'type', valueCode: 'add' }, { name: 'path', valueString: 'Patient' }, { name: 'name', valueString: 'a.b' }, { name: 'value', valueBoolean: true }),
          op({ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.active' }, { name: 'value', valueBoolean: 'yes' }),
          op({ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.active' }, { name: 'value', valueWidget: 'x' }),
          { name: 'operation' },
        ],
      });
      fails(result, [
        { code: 'invalid-patch', expression: 'Parameters.parameter[0].name' },
        { code: 'invalid-patch', expression: 'Parameters.parameter[1].part[0]', message: /add, insert, delete, replace, move/ },
        { code: 'invalid-patch', expression: 'Parameters.parameter[2]', message: /"name" part/ },
        { code: 'invalid-patch', expression: 'Parameters.parameter[3].part[1]', message: /not a FHIRPath expression/ },
        { code: 'invalid-patch', expression: 'Parameters.parameter[4].part[2]', message: /takes no "index"/ },
        { code: 'invalid-patch', expression: 'Parameters.parameter[5].part[2]', message: /0 or more/ },
        { code: 'invalid-patch', expression: 'Parameters.parameter[6].part[2]', message: /more than once/ },
        { code: 'invalid-patch', expression: 'Parameters.parameter[7].part[1]', message: /Unknown part "colour"/ },
        { code: 'invalid-patch', expression: 'Parameters.parameter[8].part[2]', message: /exactly one/ },
        { code: 'invalid-patch', expression: 'Parameters.parameter[9].part[1]', message: /end with an element name/ },
        { code: 'invalid-patch', expression: 'Parameters.parameter[10].part[2]' },
        { code: 'invalid-patch', expression: 'Parameters.parameter[11].part[2]', message: /boolean/ },
        { code: 'invalid-patch', expression: 'Parameters.parameter[12].part[2]', message: /valueWidget/ },
        { code: 'invalid-patch', expression: 'Parameters.parameter[13].part' },
      ]);
    });

    it('a Parameters without parameters is an empty patch', () => {
      assert.deepEqual(ok(applyFhirPathPatch(patient({ active: true }), { resourceType: 'Parameters' })), patient({ active: true }));
    });

    it('accepts the type as a valueString too', () => {
      const r = applyFhirPathPatch(patient({ active: true }), { resourceType: 'Parameters', parameter: [{ name: 'operation', part: [{ name: 'type', valueString: 'delete' }, { name: 'path', valueString: 'Patient.active' }] }] });
      assert.deepEqual(ok(r), patient());
    });
  });

  describe('operations that cannot be applied: the first failure stops the patch', () => {
    const r = (): JsonResource => patient({ name: [{ family: 'A' }, { family: 'B' }], identifier: ids('1', '2'), birthDate: '1970-01-01' });

    it('a path selecting nothing (replace, add, insert, move)', () => {
      fails(fhirPatch(r(), { type: 'replace', path: 'Patient.gender', value: { valueCode: 'male' } }), [{ code: 'patch-path-not-found', expression: 'Parameters.parameter[0].part[1]' }]);
      fails(fhirPatch(r(), { type: 'add', path: 'Patient.contact', name: 'gender', value: { valueCode: 'male' } }), [{ code: 'patch-path-not-found', expression: 'Parameters.parameter[0].part[1]' }]);
      fails(fhirPatch(r(), { type: 'insert', path: 'Patient.contact[0].telecom', index: 0, value: { valueContactPoint: { value: '1' } } }), [
        { code: 'patch-path-not-found', expression: 'Parameters.parameter[0].part[1]' },
      ]);
      fails(fhirPatch(r(), { type: 'move', path: 'Patient.address', source: 0, destination: 0 }), [{ code: 'patch-path-not-found', expression: 'Parameters.parameter[0].part[1]' }]);
      fails(fhirPatch({ resourceType: 'Observation', id: 'o' }, { type: 'add', path: 'Patient', name: 'active', value: { valueBoolean: true } }), [
        { code: 'patch-path-not-found', expression: 'Parameters.parameter[0].part[1]' },
      ]);
    });

    it('a path selecting two or more elements', () => {
      fails(fhirPatch(r(), { type: 'replace', path: 'Patient.name.family', value: { valueString: 'C' } }), [
        { code: 'patch-path-ambiguous', expression: 'Parameters.parameter[0].part[1]', message: /2 elements/ },
      ]);
      fails(fhirPatch(r(), { type: 'add', path: 'Patient.name', name: 'text', value: { valueString: 'x' } }), [{ code: 'patch-path-ambiguous', expression: 'Parameters.parameter[0].part[1]' }]);
      fails(fhirPatch(r(), { type: 'insert', path: 'Patient.name.given', index: 0, value: { valueString: 'x' } }), [{ code: 'patch-path-ambiguous', expression: 'Parameters.parameter[0].part[1]' }]);
    });

    it('indexes out of range', () => {
      fails(fhirPatch(r(), { type: 'insert', path: 'Patient.identifier', index: 3, value: { valueIdentifier: { value: '3' } } }), [
        { code: 'patch-index-out-of-range', expression: 'Parameters.parameter[0].part[3]' },
      ]);
      fails(fhirPatch(r(), { type: 'move', path: 'Patient.identifier', source: 2, destination: 0 }), [{ code: 'patch-index-out-of-range', expression: 'Parameters.parameter[0].part[2]' }]);
      fails(fhirPatch(r(), { type: 'move', path: 'Patient.identifier', source: 0, destination: 2 }), [{ code: 'patch-index-out-of-range', expression: 'Parameters.parameter[0].part[3]' }]);
    });

    it('insert or move on an element that is not a list, or that does not exist', () => {
      fails(fhirPatch(r(), { type: 'insert', path: 'Patient.birthDate', index: 0, value: { valueDate: '1970' } }), [
        { code: 'patch-type-mismatch', expression: 'Parameters.parameter[0].part[1]', message: /not a list/ },
      ]);
      fails(fhirPatch(r(), { type: 'move', path: 'Patient.colour', source: 0, destination: 0 }), [{ code: 'patch-type-mismatch', expression: 'Parameters.parameter[0].part[1]' }]);
    });

    it('add of an unknown element, or of a single element already there', () => {
      fails(fhirPatch(r(), { type: 'add', path: 'Patient', name: 'colour', value: { valueString: 'red' } }), [
        { code: 'patch-type-mismatch', expression: 'Parameters.parameter[0].part[2]', message: /no element "colour"/ },
      ]);
      fails(fhirPatch(r(), { type: 'add', path: 'Patient', name: 'birthDate', value: { valueDate: '1980-01-01' } }), [
        { code: 'patch-element-exists', expression: 'Parameters.parameter[0].part[2]', message: /use replace/ },
      ]);
    });

    it('a value of the wrong type for its place', () => {
      for (const value of [{ valueBoolean: true }, { valueString: '1970-01-01' }, { valueHumanName: { text: 'x' } }, { part: [{ name: 'text', valueString: 'x' }] }]) {
        fails(fhirPatch(r(), { type: 'replace', path: 'Patient.birthDate', value }), [{ code: 'patch-type-mismatch', expression: 'Parameters.parameter[0].part[2]' }]);
      }
      fails(fhirPatch(r(), { type: 'add', path: 'Patient', name: 'gender', value: { valueString: 'male' } }), [{ code: 'patch-type-mismatch', expression: 'Parameters.parameter[0].part[3]' }]);
      fails(fhirPatch(r(), { type: 'add', path: 'Patient', name: 'contained', value: { valueString: 'x' } }), [{ code: 'patch-type-mismatch', expression: 'Parameters.parameter[0].part[3]' }]);
    });

    it('a path selecting a computed value rather than an element', () => {
      for (const path of ['Patient.name.count()', "'text'", 'Patient.birthDate.toString()', '1 + 1']) {
        fails(fhirPatch(r(), { type: 'replace', path, value: { valueString: 'x' } }), [{ code: 'patch-not-applicable', expression: 'Parameters.parameter[0].part[1]' }]);
      }
    });

    it('a path that parses but cannot be evaluated', () => {
      fails(fhirPatch(r(), { type: 'delete', path: 'Patient.noSuchFunction()' }), [{ code: 'invalid-patch', expression: 'Parameters.parameter[0].part[1]', message: /cannot be evaluated/ }]);
    });

    it('resourceType and id cannot be changed or deleted', () => {
      fails(fhirPatch(r(), { type: 'replace', path: 'Patient.id', value: { valueId: 'p2' } }), [{ code: 'patch-immutable-element', expression: 'Parameters.parameter[0]' }]);
      fails(fhirPatch(r(), { type: 'delete', path: 'Patient.id' }), [{ code: 'patch-immutable-element', expression: 'Parameters.parameter[0]' }]);
    });

    it('stops at the first failing operation', () => {
      fails(
        fhirPatch(
          r(),
          { type: 'replace', path: 'Patient.birthDate', value: { valueDate: '1980-01-01' } },
          { type: 'replace', path: 'Patient.gender', value: { valueCode: 'male' } },
          { type: 'delete', path: 'Patient.name' },
        ),
        [{ code: 'patch-path-not-found', expression: 'Parameters.parameter[1].part[1]' }],
      );
    });
  });

  it('never mutates the resource or the Parameters', () => {
    const resource = patient({ name: [{ given: ['a'], _given: [{ id: 'x' }] }], identifier: ids('1', '2') });
    const patch = parameters(
      { type: 'add', path: 'Patient.name[0]', name: 'given', value: { valueString: 'b' } },
      { type: 'move', path: 'Patient.identifier', source: 0, destination: 1 },
      { type: 'add', path: 'Patient', name: 'contact', value: { part: [{ name: 'name', valueHumanName: { text: 'n' } }] } },
    );
    const [resourceBefore, patchBefore] = [structuredClone(resource), structuredClone(patch)];
    const r = ok(applyFhirPathPatch(resource, patch));
    assert.deepEqual(resource, resourceBefore);
    assert.deepEqual(patch, patchBefore);
    ((r.contact as Json[])[0]!.name as Json).text = 'changed';
    assert.deepEqual(patch, patchBefore);
  });

  it('a value holding a "__proto__" key stays data and pollutes no prototype', () => {
    const params: unknown = JSON.parse(
      '{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},' +
        '{"name":"name","valueString":"maritalStatus"},{"name":"value","valueCodeableConcept":{"__proto__":{"polluted":2},"text":"x"}}]}]}',
    );
    const r = ok(applyFhirPathPatch(patient(), params));
    assert.deepEqual(Object.keys(r.maritalStatus as Json), ['__proto__', 'text']);
    assert.equal(({} as Json).polluted, undefined);
  });

  it('quotes element names that FHIRPath reserves (Patient.text.div) but not inside strings', () => {
    assert.equal(quoteReservedNames('Patient.text.div'), 'Patient.text.`div`');
    assert.equal(quoteReservedNames("Patient.name.where(text = 'a.div').given"), "Patient.name.where(text = 'a.div').given");
    assert.equal(quoteReservedNames('Patient.divisor.x'), 'Patient.divisor.x');
    assert.equal(quoteReservedNames('a div b'), 'a div b');
  });

  it('splits a list path at its last top-level dot', () => {
    assert.deepEqual(splitListPath('Patient.identifier'), { owner: 'Patient', list: 'identifier' });
    assert.deepEqual(splitListPath('Patient.name[0].given'), { owner: 'Patient.name[0]', list: 'given' });
    assert.deepEqual(splitListPath("Patient.name.where(text = 'a.b').given"), { owner: "Patient.name.where(text = 'a.b')", list: 'given' });
    assert.deepEqual(splitListPath('identifier'), { owner: '$this', list: 'identifier' });
    assert.deepEqual(splitListPath('Patient.`identifier`'), { owner: 'Patient', list: 'identifier' });
    assert.equal(splitListPath('Patient.identifier.first()'), undefined);
    assert.equal(splitListPath('Patient.identifier[0]'), undefined);
  });
});

// ---------------------------------------------------------------------------------------------
// Fuzz: random patches never throw, and every outcome is well-formed

/** A small deterministic PRNG (mulberry32), so a failure can be replayed from its seed. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('fuzz: random patches never throw and give well-formed outcomes', () => {
  const resource = (): JsonResource =>
    patient({
      active: true,
      name: [{ family: 'A', given: ['a', 'b'], _given: [null, { extension: [{ url: 'u', valueString: 'x' }] }] }, { text: 'second' }],
      identifier: ids('1', '2', '3'),
      birthDate: '1970-01-01',
      _birthDate: { extension: [{ url: 'http://hl7.org/fhir/StructureDefinition/patient-birthTime', valueDateTime: '1970-01-01T10:00:00Z' }] },
      contact: [{ name: { text: 'c' }, gender: 'male' }],
      contained: [{ resourceType: 'Organization', id: 'org', name: 'O' }],
      managingOrganization: { reference: '#org' },
      extension: [{ url: 'e', valueQuantity: { value: 1 } }],
    });
  const codes = new Set(Object.keys(ERROR_CODES));

  function check(result: PatchResult, input: JsonResource, before: JsonResource, label: string): void {
    assert.deepEqual(input, before, `input mutated: ${label}`);
    if (result.ok) {
      assert.equal(result.resource.resourceType, 'Patient', label);
      assert.equal(result.resource.id, 'p1', label);
    } else {
      assert.ok(result.problems.length > 0, label);
      for (const p of result.problems) {
        assert.ok(codes.has(p.code), `unknown code ${p.code}: ${label}`);
        assert.notEqual(p.code, 'internal-error', `unexpected error: ${label}`);
        assert.equal(typeof p.message, 'string', label);
      }
      assert.equal(result.failedTest === true, result.problems[0]?.code === 'patch-test-failed', label);
    }
  }

  it('JSON Patch: 3000 random documents', () => {
    const rnd = random(20261123);
    const pick = <T>(list: readonly T[]): T => list[Math.floor(rnd() * list.length)] as T;
    const real = [
      '/active', '/name/0/family', '/name/0/given/0', '/name/0/given/-', '/name/1/text', '/name/-', '/identifier/0', '/identifier/1/value', '/identifier/-',
      '/birthDate', '/_birthDate/extension/0', '/contact/0/gender', '/extension/0/valueQuantity/value', '/newElement', '/name/0/given/5', '/id', '/resourceType', '',
    ];
    const tokens = ['name', '0', '1', '2', '-', 'given', 'identifier', 'value', 'id', 'x', '', '~0', '~1', '01', 'constructor', 'toString', 'length', '__proto__', 'prototype'];
    const pointer = (): unknown => {
      const r = rnd();
      if (r < 0.03) return pick([undefined, 3, null, 'name', '/~2']);
      if (r < 0.25) return Array.from({ length: Math.floor(rnd() * 4) }, () => '/' + pick(tokens)).join('');
      return pick(real);
    };
    const values = [1, 'x', true, null, [], {}, { family: 'Z' }, ['a'], 'Patient', 'p1', 'p2', { resourceType: 'Patient', id: 'p1' }, { value: 'v' }];
    const ops = ['add', 'add', 'remove', 'replace', 'replace', 'move', 'copy', 'test', 'bogus'];
    let succeeded = 0;
    for (let n = 0; n < 3000; n++) {
      const patch = Array.from({ length: 1 + Math.floor(rnd() * 3) }, () => {
        const op: Json = { op: pick(ops) };
        if (rnd() < 0.97) op.path = pointer();
        if (['add', 'replace', 'test'].includes(op.op as string) ? rnd() < 0.95 : rnd() < 0.1) op.value = pick(values);
        if (['move', 'copy'].includes(op.op as string) ? rnd() < 0.95 : rnd() < 0.1) op.from = pointer();
        return rnd() < 0.01 ? pick([null, 'add', 7, []]) : op;
      });
      const input = resource();
      const before = structuredClone(input);
      const result = applyJsonPatch(input, rnd() < 0.01 ? { patch } : patch);
      check(result, input, before, JSON.stringify(patch));
      if (result.ok) succeeded++;
    }
    assert.ok(succeeded > 300, `only ${succeeded} random patches applied; the generator should exercise success too`);
  });

  it('FHIRPath Patch: 2000 random Parameters', () => {
    const rnd = random(4242);
    const pick = <T>(list: readonly T[]): T => list[Math.floor(rnd() * list.length)] as T;
    const elements = [
      'Patient.name[0]', 'Patient.name[1]', 'Patient.name[0].given[1]', 'Patient.name[0].family', 'Patient.identifier[2]', 'Patient.identifier[0].value', 'Patient.birthDate',
      'Patient.birthDate.extension[0]', 'Patient.birthDate.extension[0].value', 'Patient.contact[0]', 'Patient.contact.name.text', 'Patient.active', 'Patient.extension.value',
      'Patient.extension[0]', 'Patient.managingOrganization.resolve().name', 'Patient.contained[0]', 'Patient.gender', "Patient.name.where(text = 'second')", '%resource.name[0]',
    ];
    const odd = ['Patient.id', 'Patient', 'Patient.name', 'Patient.name.given', 'Patient.name.count()', 'Patient.descendants()', 'Patient.name.where(', '1', '', 'Patient.meta', 'Patient.text.div'];
    const owners = ['Patient', 'Patient.name[0]', 'Patient.name[1]', 'Patient.contact[0]', 'Patient.birthDate', 'Patient.identifier[0]', 'Patient.contained[0]', 'Patient.maritalStatus'];
    const lists = ['Patient.identifier', 'Patient.name', 'Patient.name[0].given', 'Patient.extension', 'Patient.birthDate.extension', 'Patient.telecom', 'Patient.contact', 'identifier', 'Patient.active'];
    const names = ['given', 'family', 'text', 'identifier', 'gender', 'birthDate', 'extension', 'id', 'value', 'valueString', 'telecom', 'colour', 'name', 'active', 'url', 'maritalStatus'];
    const values: Json[] = [
      { valueString: 'x' }, { valueCode: 'male' }, { valueDate: '2000-01-01' }, { valueBoolean: false }, { valueInteger: 3 }, { valueIdentifier: { value: 'i' } },
      { valueHumanName: { text: 'h' } }, { valueQuantity: { value: 2 } }, { valueUri: 'http://u' }, { part: [{ name: 'text', valueString: 't' }] },
      { part: [{ name: 'url', valueUri: 'u' }, { name: 'value', valueString: 'v' }] }, { resource: { resourceType: 'Basic', id: 'b' } },
      { valueString: 'x', _valueString: { id: 'e' } }, { valueId: 'p2' }, {}, { valueWidget: 1 }, { part: [] }, { valueContactPoint: { value: '1' } },
    ];
    let succeeded = 0;
    for (let n = 0; n < 2000; n++) {
      const ops = Array.from({ length: 1 + Math.floor(rnd() * 3) }, (): Op => {
        const type = pick(['add', 'insert', 'delete', 'replace', 'move']);
        const path = rnd() < 0.1 ? pick(odd) : type === 'add' ? pick(owners) : type === 'insert' || type === 'move' ? pick(lists) : pick(elements);
        const op: Op = { type, path };
        if (type === 'add') Object.assign(op, { name: pick(names), value: pick(values) });
        if (type === 'insert') Object.assign(op, { index: Math.floor(rnd() * 4), value: pick(values) });
        if (type === 'replace') op.value = pick(values);
        if (type === 'move') Object.assign(op, { source: Math.floor(rnd() * 4), destination: Math.floor(rnd() * 4) });
        if (rnd() < 0.05) op.type = pick(['nope', 'ADD', '']);
        if (rnd() < 0.05) delete op.path;
        if (rnd() < 0.05) op.name = pick(names);
        if (rnd() < 0.05) op.index = Math.floor(rnd() * 5) - 1;
        if (rnd() < 0.03) op.value = pick(values);
        return op;
      });
      const input = resource();
      const before = structuredClone(input);
      const result = fhirPatch(input, ...ops);
      check(result, input, before, JSON.stringify(ops));
      if (result.ok) succeeded++;
    }
    assert.ok(succeeded > 100, `only ${succeeded} random patches applied; the generator should exercise success too`);
  });
});
