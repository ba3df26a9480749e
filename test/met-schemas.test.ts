/**
 * The JSON Schemas of the MET documentation API v1 (mappings/schemas/v1) and the example documents in
 * test/fixtures/met: the schemas compile under Ajv 2020-12 strict mode and cannot drift from the measurement
 * catalog (mappings/measures.json); every example validates; every invalid example fails with exactly the
 * expected errors; and the examples are clinically consistent with the catalog (units, ranges, qualifiers),
 * with each other (ids, dates) and with the scenario they tell (ages, diagnosis codes, progress).
 * Run alone: npx mocha --no-config --node-option import=tsx test/met-schemas.test.ts
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { ErrorObject, ValidateFunction } from 'ajv';
import type { AcceptedUnit, Range } from '../src/met/catalog.js';

const ROOT = new URL('..', import.meta.url).pathname;
const SCHEMA_DIR = join(ROOT, 'mappings/schemas/v1');
const FIXTURES = join(ROOT, 'test/fixtures/met');
const BASE_ID = 'https://met-fhir-server.dev/met/v1/schemas/';
const TYPES = ['client', 'assessment', 'goal', 'program', 'session'] as const;
type DocType = (typeof TYPES)[number];

// ---- the catalog --------------------------------------------------------------------------------

interface UnitSpec {
  unit: { code: string; display: string };
  acceptedUnits?: AcceptedUnit[];
  range: Range;
}
interface Component extends UnitSpec {
  key: string;
}
interface Measure extends Partial<UnitSpec> {
  key: string;
  valueType: 'quantity' | 'integer' | 'components';
  components?: Component[];
  qualifiers: string[];
  requiredQualifiers?: string[];
}
interface Catalog {
  measures: Measure[];
  qualifiers: Record<string, { type: 'coded' | 'text'; values?: { key: string }[] }>;
}

const readJson = <T>(path: string): T => JSON.parse(readFileSync(path, 'utf8')) as T;
const CATALOG = readJson<Catalog>(join(ROOT, 'mappings/measures.json'));
const MEASURES = new Map(CATALOG.measures.map((m) => [m.key, m]));
const measure = (key: string): Measure => {
  const m = MEASURES.get(key);
  assert.ok(m, `measure '${key}' is not in mappings/measures.json`);
  return m;
};
const QUALIFIERS = Object.keys(CATALOG.qualifiers);
const PAIRED_JOINTS = new Set(['shoulder', 'elbow', 'forearm', 'wrist', 'hip', 'knee', 'ankle']);

/** The factor and offset to the canonical unit, when `unit` is accepted (MEASURES.md: `unit`, `ucum` or the canonical code). */
function conversion(spec: UnitSpec, unit: string): { factor: number; offset: number } | undefined {
  if (unit === spec.unit.code) return { factor: 1, offset: 0 };
  const accepted = spec.acceptedUnits?.find((u) => u.unit === unit || u.ucum === unit);
  return accepted && { factor: accepted.factor, offset: accepted.offset ?? 0 };
}
/** The spec (measure, or its component) that holds unit and range. */
function unitSpec(m: Measure, component?: string): UnitSpec {
  if (m.valueType === 'components') {
    const c = m.components?.find((x) => x.key === component);
    assert.ok(c, `${m.key} has no component '${component}'`);
    return c;
  }
  assert.ok(m.unit && m.range, `${m.key} has no unit or range`);
  return m as UnitSpec;
}
function toCanonical(where: string, spec: UnitSpec, unit: string, value: number): number {
  const conv = conversion(spec, unit);
  assert.ok(conv, `${where}: unit '${unit}' is not accepted (canonical ${spec.unit.code}, accepted ${(spec.acceptedUnits ?? []).map((u) => u.unit).join(', ') || 'none'})`);
  return value * conv.factor + conv.offset;
}
function checkInRange(where: string, spec: UnitSpec, unit: string, value: number, integer: boolean): number {
  const canonical = toCanonical(where, spec, unit, value);
  const { min, max } = spec.range;
  assert.ok(canonical >= min - 1e-9 && canonical <= max + 1e-9, `${where}: ${value} ${unit} = ${canonical} ${spec.unit.code}, outside ${min}-${max}`);
  if (integer) assert.ok(Math.abs(canonical - Math.round(canonical)) < 1e-9, `${where}: ${value} ${unit} must be a whole number`);
  return canonical;
}

// ---- documents ----------------------------------------------------------------------------------

type Qualified = Partial<Record<'side' | 'position' | 'joint' | 'motion' | 'device' | 'method' | 'bodySite', string>>;
interface Measurement extends Qualified {
  id?: string;
  measure: string;
  value?: number;
  components?: Record<string, number>;
  unit: string;
  context?: string;
  note?: string;
}
interface Condition {
  code?: { system: string; code: string; display?: string };
  text: string;
}
interface Client {
  id: string;
  birthDate: string;
  referringPhysician?: { npi?: string };
}
interface Assessment {
  id: string;
  clientId: string;
  date: string;
  kind: string;
  context?: string;
  measurements: Measurement[];
}
interface Target extends Qualified {
  measure: string;
  component?: string;
  value?: number;
  low?: number;
  high?: number;
  unit: string;
  due: string;
}
interface Goal {
  id: string;
  clientId: string;
  term: 'short' | 'long';
  target: Target;
  addresses?: Condition[];
  startDate: string;
}
interface Rpe {
  value: number;
  scale: 'borg-6-20' | 'borg-cr10';
}
interface Activity {
  id?: string;
  intensity: { rpe?: { scale: Rpe['scale']; low: number; high: number }; heartRate?: { low: number; high: number }; percentOf1RM?: { low: number; high: number } };
}
interface Program {
  id: string;
  clientId: string;
  period: { start: string; end?: string };
  diagnoses?: Condition[];
  goalIds?: string[];
  activities: Activity[];
}
interface Session {
  id: string;
  clientId: string;
  programId?: string;
  start: string;
  exercises: { activityId?: string; rpe?: Rpe }[];
  vitalsBefore?: Measurement[];
  vitalsAfter?: Measurement[];
  adverseEvents: unknown[];
}
interface Scenario {
  name: string;
  files: Map<string, unknown>;
  client: Client;
  intake: Assessment;
  reassessment: Assessment;
  goals: Goal[];
  program: Program;
  sessions: Session[];
}

/** The document type of an example, from its file name: client.json, assessment-*.json, goal-*.json, program.json, session-*.json. */
function typeOf(file: string): DocType {
  const type = file.split(/[-.]/)[0] as DocType;
  assert.ok(TYPES.includes(type), `${file}: the file name does not start with a document type`);
  return type;
}

const SCENARIOS = ['knee-replacement', 'hypertension', 'post-stroke', 'low-back-pain'] as const;
const AGE_AT_INTAKE: Record<(typeof SCENARIOS)[number], number> = { 'knee-replacement': 68, hypertension: 55, 'post-stroke': 72, 'low-back-pain': 45 };

function loadScenario(name: string): Scenario {
  const dir = join(FIXTURES, name);
  const files = new Map(readdirSync(dir).filter((f) => f.endsWith('.json')).sort().map((f) => [f, readJson<unknown>(join(dir, f))]));
  const get = <T>(file: string): T => {
    const doc = files.get(file);
    assert.ok(doc, `${name}/${file} is missing`);
    return doc as T;
  };
  const of = <T>(re: RegExp): T[] => [...files].filter(([f]) => re.test(f)).map(([, d]) => d as T);
  return {
    name,
    files,
    client: get<Client>('client.json'),
    intake: get<Assessment>('assessment-intake.json'),
    reassessment: get<Assessment>('assessment-reassessment.json'),
    goals: of<Goal>(/^goal-.+\.json$/),
    program: get<Program>('program.json'),
    sessions: of<Session>(/^session-\d{2}\.json$/),
  };
}

/**
 * The ICD-10-CM codes the examples use, each looked up (code and title) before use:
 * Z47.1 icd10codingpro.com/codes/Z47.1; Z96.651 hccbuddy.com/icd10/Z96.651; I10 icdlist.com/icd-10/i10 and
 * healthassure.in; E66.3 hccbuddy.com/icd10/E66.3; Z68.29 icdlist.com/icd-10/Z68 and payerready.com (section Z68);
 * I69.351 icd.busyocto.ai/conditions/hemiplegia-and-hemiparesis and codingmcw (FY2025 billable); R26.81
 * billingncoding.com/icd10cm-code/r26.81; M54.50 medicalbillingtips.com (2025 edition; new in FY2022, replacing
 * M54.5); G89.29 med.report and medcoder.ai.
 */
const ICD10CM: Record<string, string> = {
  'Z47.1': 'Aftercare following joint replacement surgery',
  'Z96.651': 'Presence of right artificial knee joint',
  I10: 'Essential (primary) hypertension',
  'E66.3': 'Overweight',
  'Z68.29': 'Body mass index [BMI] 29.0-29.9, adult',
  'I69.351': 'Hemiplegia and hemiparesis following cerebral infarction affecting right dominant side',
  'R26.81': 'Unsteadiness on feet',
  'M54.50': 'Low back pain, unspecified',
  'G89.29': 'Other chronic pain',
};

// ---- schemas ------------------------------------------------------------------------------------

type Schema = Record<string, unknown>;
const SCHEMAS: Record<DocType | 'common', Schema> = Object.fromEntries(
  (['common', ...TYPES] as const).map((t) => [t, readJson<Schema>(join(SCHEMA_DIR, `${t}.schema.json`))]),
) as Record<DocType | 'common', Schema>;
const COMMON_DEFS = SCHEMAS.common.$defs as Record<string, Schema>;

function compileAll(): Record<DocType, ValidateFunction> {
  const ajv = new Ajv2020({ allErrors: true, strict: true });
  ajv.addSchema(SCHEMAS.common);
  return Object.fromEntries(TYPES.map((t) => [t, ajv.compile(SCHEMAS[t])])) as Record<DocType, ValidateFunction>;
}

/** Every subschema with its JSON pointer inside the schema file. */
function* subschemas(schema: unknown, pointer = ''): Generator<[string, Schema]> {
  if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) return;
  const s = schema as Schema;
  yield [pointer, s];
  for (const key of ['properties', '$defs']) {
    for (const [name, sub] of Object.entries((s[key] as Record<string, unknown> | undefined) ?? {})) yield* subschemas(sub, `${pointer}/${key}/${name}`);
  }
  for (const key of ['items', 'not', 'if', 'then', 'else', 'additionalProperties']) yield* subschemas(s[key], `${pointer}/${key}`);
  for (const key of ['oneOf', 'anyOf', 'allOf']) {
    for (const [i, sub] of ((s[key] as unknown[] | undefined) ?? []).entries()) yield* subschemas(sub, `${pointer}/${key}/${i}`);
  }
}

function enumOf(def: string): string[] {
  const values = COMMON_DEFS[def]?.enum as string[] | undefined;
  assert.ok(values, `common.schema.json#/$defs/${def} has no enum`);
  return values;
}
const sorted = (xs: Iterable<string>): string[] => [...xs].sort();

describe('MET documentation API v1: JSON Schemas', () => {
  it('every schema compiles under Ajv2020 strict mode with allErrors', () => {
    const validators = compileAll();
    for (const t of TYPES) assert.equal(typeof validators[t], 'function');
  });

  it('every schema has $schema 2020-12, its $id, a title and a description', () => {
    for (const [t, s] of Object.entries(SCHEMAS)) {
      assert.equal(s.$schema, 'https://json-schema.org/draft/2020-12/schema', t);
      assert.equal(s.$id, `${BASE_ID}${t}.schema.json`, t);
      assert.equal(typeof s.title, 'string', t);
      assert.equal(typeof s.description, 'string', t);
    }
  });

  it('every object is closed (additionalProperties: false) and every property and definition is described', () => {
    for (const [t, schema] of Object.entries(SCHEMAS)) {
      for (const [pointer, s] of subschemas(schema)) {
        const where = `${t}.schema.json#${pointer}`;
        if (pointer.match(/\/\$defs\/[^/]+$/)) assert.equal(typeof s.description, 'string', `${where}: no description`);
        if (s.type === 'object') {
          assert.equal(s.additionalProperties, false, `${where}: additionalProperties is not false`);
          assert.equal(typeof s.description, 'string', `${where}: no description`);
          for (const [name, prop] of Object.entries((s.properties as Record<string, Schema> | undefined) ?? {})) {
            assert.equal(typeof prop.description, 'string', `${where}/properties/${name}: no description`);
          }
        }
      }
    }
  });

  it('every definition of common.schema.json is used', () => {
    const text = TYPES.map((t) => JSON.stringify(SCHEMAS[t])).join('\n') + JSON.stringify(SCHEMAS.common);
    for (const def of Object.keys(COMMON_DEFS)) assert.ok(text.includes(`#/$defs/${def}"`), `$defs/${def} is not referenced`);
  });

  describe('cannot drift from the measurement catalog', () => {
    it('the measure enum is the set of catalog keys', () => {
      assert.deepEqual(sorted(enumOf('measureKey')), sorted(MEASURES.keys()));
    });

    it('the measures sent with components are those of valueType components, with their component keys', () => {
      const multi = CATALOG.measures.filter((m) => m.valueType === 'components');
      assert.deepEqual(sorted(enumOf('componentMeasureKey')), sorted(multi.map((m) => m.key)));
      const keys = sorted(new Set(multi.flatMap((m) => (m.components ?? []).map((c) => c.key))));
      assert.deepEqual(sorted(enumOf('componentKey')), keys);
      assert.deepEqual(sorted(Object.keys(COMMON_DEFS.components?.properties as Schema)), keys);
    });

    it('the measurement takes every catalog qualifier, with the catalog value keys', () => {
      const props = (COMMON_DEFS.measurement?.properties ?? {}) as Record<string, Schema>;
      for (const [name, q] of Object.entries(CATALOG.qualifiers)) {
        assert.ok(props[name], `measurement has no qualifier '${name}'`);
        if (q.type === 'coded') {
          assert.deepEqual(props[name].$ref, `#/$defs/${name}`);
          assert.deepEqual(enumOf(name), (q.values ?? []).map((v) => v.key), `values of '${name}'`);
        }
      }
      const targetProps = ((SCHEMAS.goal.properties as Record<string, Schema>).target?.properties ?? {}) as Record<string, Schema>;
      for (const [name, q] of Object.entries(CATALOG.qualifiers)) {
        if (q.type === 'coded') assert.equal(targetProps[name]?.$ref, `common.schema.json#/$defs/${name}`, `goal target qualifier '${name}'`);
      }
    });

    it('the RPE and heart-rate bounds are the catalog ranges', () => {
      const range = (key: string): [number, number] => {
        const r = measure(key).range;
        assert.ok(r);
        return [r.min, r.max];
      };
      type Props = Record<string, Schema>;
      const activity = (SCHEMAS.program.$defs as Props).activity?.properties as Props;
      const intensity = activity.intensity?.properties as Props;
      const rpeBounds = (rpe: Schema, branch: 'then' | 'else', prop: string): [number, number] => {
        const p = ((rpe[branch] as Schema).properties as Props)[prop] as { minimum: number; maximum: number };
        return [p.minimum, p.maximum];
      };
      const exerciseRpe = ((SCHEMAS.session.$defs as Props).exercise?.properties as Props).rpe as Schema;
      for (const [rpe, prop] of [[intensity.rpe as Schema, 'low'], [intensity.rpe as Schema, 'high'], [exerciseRpe, 'value']] as const) {
        assert.deepEqual(rpeBounds(rpe, 'then', prop), range('rpe-borg-6-20'));
        assert.deepEqual(rpeBounds(rpe, 'else', prop), range('rpe-borg-cr10'));
      }
      const hr = intensity.heartRate?.properties as Record<string, { minimum: number; maximum: number }>;
      for (const p of ['low', 'high']) assert.deepEqual([hr[p]?.minimum, hr[p]?.maximum], range('heart-rate'));
    });
  });
});

describe('MET documentation API v1: example documents', () => {
  const validators = compileAll();
  const scenarios = SCENARIOS.map(loadScenario);

  it('the four scenarios are complete: client, intake, 2-3 goals, program, sessions 01-08, reassessment', () => {
    for (const s of scenarios) {
      assert.ok(s.goals.length >= 2 && s.goals.length <= 3, `${s.name}: ${s.goals.length} goals`);
      assert.ok(s.goals.some((g) => g.term === 'short') && s.goals.some((g) => g.term === 'long'), `${s.name}: short- and long-term goals`);
      assert.deepEqual([...s.files.keys()].filter((f) => f.startsWith('session-')), ['01', '02', '03', '04', '05', '06', '07', '08'].map((n) => `session-${n}.json`));
      assert.equal(s.files.size, 1 + 2 + s.goals.length + 1 + 8, `${s.name}: unexpected files`);
    }
  });

  it('every example validates against the schema its file name gives', () => {
    for (const s of scenarios) {
      for (const [file, doc] of s.files) {
        const validate = validators[typeOf(file)];
        assert.ok(validate(doc), `${s.name}/${file}: ${JSON.stringify(validate.errors, null, 1)}`);
      }
    }
  });

  describe('agree with the catalog (the server re-checks; this keeps the examples realistic)', () => {
    function checkQualifiers(where: string, m: Measure, q: Qualified, target = false): void {
      for (const name of QUALIFIERS) {
        if (q[name as keyof Qualified] !== undefined) assert.ok(m.qualifiers.includes(name), `${where}: ${m.key} does not take '${name}'`);
      }
      for (const name of m.requiredQualifiers ?? []) assert.ok(q[name as keyof Qualified] !== undefined, `${where}: ${m.key} requires '${name}'`);
      if (m.key === 'joint-range-of-motion' && q.joint) {
        // MEASURES.md: side is required for paired joints; the spine takes it only for lateral flexion and rotation.
        if (PAIRED_JOINTS.has(q.joint)) assert.ok(q.side, `${where}: ${q.joint} range of motion without side`);
        else if (!target) assert.equal(q.side !== undefined, q.motion === 'lateral-flexion' || q.motion === 'rotation', `${where}: side on the spine`);
      }
    }

    function checkMeasurement(where: string, x: Measurement): void {
      const m = measure(x.measure);
      checkQualifiers(where, m, x);
      if (m.valueType === 'components') {
        assert.ok(x.components, `${where}: ${m.key} needs components`);
        for (const [key, v] of Object.entries(x.components)) checkInRange(`${where}/components/${key}`, unitSpec(m, key), x.unit, v, false);
      } else {
        assert.equal(typeof x.value, 'number', `${where}: ${m.key} needs a value`);
        checkInRange(where, unitSpec(m), x.unit, x.value as number, m.valueType === 'integer');
      }
    }

    function measurementsOf(s: Scenario): [string, Measurement][] {
      const out: [string, Measurement][] = [];
      for (const [file, doc] of s.files) {
        const d = doc as Partial<Assessment & Session>;
        for (const key of ['measurements', 'vitalsBefore', 'vitalsAfter'] as const) {
          for (const [i, m] of (d[key] ?? []).entries()) out.push([`${s.name}/${file}#/${key}/${i}`, m]);
        }
      }
      return out;
    }

    it('every measurement: known measure, accepted unit, value in range, allowed and required qualifiers', () => {
      for (const s of scenarios) for (const [where, m] of measurementsOf(s)) checkMeasurement(where, m);
    });

    it('every goal target: known measure, accepted unit, bounds in range and in order, allowed qualifiers', () => {
      for (const s of scenarios) {
        for (const g of s.goals) {
          const where = `${s.name}/${g.id}`;
          const t = g.target;
          const m = measure(t.measure);
          checkQualifiers(where, m, t, true);
          const spec = unitSpec(m, t.component);
          for (const k of ['value', 'low', 'high'] as const) if (t[k] !== undefined) checkInRange(`${where}/target/${k}`, spec, t.unit, t[k], false);
          if (t.low !== undefined && t.high !== undefined) assert.ok(t.low <= t.high, `${where}: low > high`);
          assert.ok(t.due > g.startDate, `${where}: due before start`);
        }
      }
    });

    it('every RPE is on its scale (program intensities and session exercises)', () => {
      const key = (scale: Rpe['scale']): string => (scale === 'borg-6-20' ? 'rpe-borg-6-20' : 'rpe-borg-cr10');
      for (const s of scenarios) {
        for (const a of s.program.activities) {
          const rpe = a.intensity.rpe;
          if (rpe) for (const v of [rpe.low, rpe.high]) checkInRange(`${s.name}/program ${a.id}`, unitSpec(measure(key(rpe.scale))), '{score}', v, rpe.scale === 'borg-6-20');
          for (const r of [rpe, a.intensity.heartRate, a.intensity.percentOf1RM]) if (r) assert.ok(r.low <= r.high, `${s.name}/program ${a.id}: low > high`);
        }
        for (const x of s.sessions) {
          for (const e of x.exercises) if (e.rpe) checkInRange(`${s.name}/${x.id}`, unitSpec(measure(key(e.rpe.scale))), '{score}', e.rpe.value, e.rpe.scale === 'borg-6-20');
        }
      }
    });
  });

  describe('tell a consistent story', () => {
    it('ids: the client is everywhere, program goals and session activities exist, ids are unique', () => {
      for (const s of scenarios) {
        const ids = new Set<string>();
        for (const [file, doc] of s.files) {
          const d = doc as { id: string; clientId?: string; measurements?: Measurement[]; vitalsBefore?: Measurement[]; vitalsAfter?: Measurement[] };
          assert.ok(!ids.has(d.id), `${s.name}/${file}: duplicate id ${d.id}`);
          ids.add(d.id);
          if (file !== 'client.json') assert.equal(d.clientId, s.client.id, `${s.name}/${file}: clientId`);
          const mids = [...(d.measurements ?? []), ...(d.vitalsBefore ?? []), ...(d.vitalsAfter ?? [])].map((m) => m.id).filter((x) => x !== undefined);
          assert.equal(new Set(mids).size, mids.length, `${s.name}/${file}: duplicate measurement ids`);
        }
        assert.deepEqual(sorted(s.program.goalIds ?? []), sorted(s.goals.map((g) => g.id)), `${s.name}: program goalIds`);
        const activities = new Set(s.program.activities.map((a) => a.id));
        assert.equal(activities.size, s.program.activities.length, `${s.name}: duplicate activity ids`);
        for (const x of s.sessions) {
          assert.equal(x.programId, s.program.id, `${x.id}: programId`);
          for (const e of x.exercises) assert.ok(e.activityId === undefined || activities.has(e.activityId), `${x.id}: unknown activity ${e.activityId}`);
        }
        assert.equal(s.intake.kind, 'intake');
        assert.equal(s.reassessment.kind, 'reassessment');
      }
    });

    it('dates: October-November 2026, US Central offsets (-05:00 until 1 November, -06:00 after), in order', () => {
      const central = new Intl.DateTimeFormat('en-US', { timeZone: 'America/Chicago', timeZoneName: 'longOffset' });
      const checkInstant = (where: string, value: string): void => {
        assert.match(value, /^2026-1[01]-\d{2}T/, `${where}: ${value} is not in October-November 2026`);
        const offset = central.formatToParts(new Date(value)).find((p) => p.type === 'timeZoneName')?.value.replace('GMT', '');
        assert.equal(value.slice(-6), offset, `${where}: ${value} does not carry the US Central offset of that day`);
      };
      const day = (instant: string): string => instant.slice(0, 10);
      for (const s of scenarios) {
        checkInstant(`${s.name} intake`, s.intake.date);
        checkInstant(`${s.name} reassessment`, s.reassessment.date);
        for (const x of s.sessions) checkInstant(x.id, x.start);
        const starts = s.sessions.map((x) => Date.parse(x.start));
        assert.deepEqual(starts, [...starts].sort((a, b) => a - b), `${s.name}: sessions out of order`);
        const intake = day(s.intake.date);
        assert.ok(s.program.period.start > intake && day(s.sessions[0]?.start ?? '') >= s.program.period.start, `${s.name}: program starts after the intake, sessions in the program`);
        assert.ok(Date.parse(s.reassessment.date) > Math.max(...starts), `${s.name}: reassessment after the last session`);
        const days = (Date.parse(s.reassessment.date) - Date.parse(s.intake.date)) / 86_400_000;
        assert.ok(days >= 28 && days <= 36, `${s.name}: reassessment ${days} days after the intake (about a month)`);
        for (const g of s.goals) assert.equal(g.startDate, intake, `${g.id}: set at the intake`);
      }
    });

    it('clients: the scenario age at intake, a valid NPI check digit', () => {
      for (const s of scenarios) {
        const [by, bm, bd] = s.client.birthDate.split('-').map(Number) as [number, number, number];
        const [iy, im, id] = s.intake.date.slice(0, 10).split('-').map(Number) as [number, number, number];
        const age = iy - by - (im < bm || (im === bm && id < bd) ? 1 : 0);
        assert.equal(age, AGE_AT_INTAKE[s.name as keyof typeof AGE_AT_INTAKE], `${s.name}: age`);
        const npi = s.client.referringPhysician?.npi;
        if (npi) {
          // NPI check digit: Luhn over '80840' + the 10 digits.
          const digits = `80840${npi}`.split('').map(Number).reverse();
          const sum = digits.reduce((acc, d, i) => acc + (i % 2 === 1 ? (d * 2 > 9 ? d * 2 - 9 : d * 2) : d), 0);
          assert.equal(sum % 10, 0, `${s.name}: NPI ${npi} fails its check digit`);
        }
      }
    });

    it('diagnoses: verified ICD-10-CM codes with their official titles', () => {
      for (const s of scenarios) {
        const conditions = [...(s.program.diagnoses ?? []), ...s.goals.flatMap((g) => g.addresses ?? [])];
        assert.ok(conditions.length > 0, `${s.name}: no diagnosis`);
        for (const c of conditions) {
          assert.ok(c.code, `${s.name}: '${c.text}' has no code`);
          assert.equal(c.code.system, 'http://hl7.org/fhir/sid/icd-10-cm');
          assert.equal(c.code.display, ICD10CM[c.code.code], `${s.name}: ${c.code.code}`);
        }
      }
    });

    it('goal targets are measured at intake and reassessment: most improve, exactly one does not', () => {
      for (const s of scenarios) {
        const outcomes = s.goals.map((g) => {
          const t = g.target;
          const m = measure(t.measure);
          const spec = unitSpec(m, t.component);
          const find = (a: Assessment): number => {
            const hits = a.measurements.filter(
              (x) =>
                x.measure === t.measure &&
                (x.context ?? a.context ?? 'rest') === 'rest' &&
                QUALIFIERS.every((q) => t[q as keyof Qualified] === undefined || x[q as keyof Qualified] === t[q as keyof Qualified]),
            );
            assert.equal(hits.length, 1, `${g.id}: ${hits.length} matching measurements in ${a.id}`);
            const x = hits[0] as Measurement;
            const v = t.component ? x.components?.[t.component] : x.value;
            assert.equal(typeof v, 'number');
            return toCanonical(`${a.id}`, spec, x.unit, v as number);
          };
          const bound = (v: number | undefined): number | undefined => (v === undefined ? undefined : toCanonical(g.id, spec, t.unit, v));
          const low = bound(t.low ?? t.value) ?? -Infinity;
          const high = bound(t.high ?? t.value) ?? Infinity;
          const distance = (v: number): number => (v < low ? low - v : v > high ? v - high : 0);
          const before = distance(find(s.intake));
          assert.ok(before > 0, `${g.id}: already met at intake`);
          return distance(find(s.reassessment)) < before;
        });
        assert.equal(outcomes.filter((improved) => !improved).length, 1, `${s.name}: targets improved ${JSON.stringify(outcomes)}`);
      }
    });

    it('sessions record vitals before and after, and one scenario has an adverse event', () => {
      for (const s of scenarios) {
        for (const x of s.sessions) {
          assert.ok((x.vitalsBefore ?? []).length > 0 && (x.vitalsAfter ?? []).length > 0, `${x.id}: vitals`);
          assert.ok((x.vitalsBefore ?? []).some((m) => m.measure === 'blood-pressure'), `${x.id}: blood pressure before`);
        }
      }
      assert.ok(scenarios.some((s) => s.sessions.some((x) => x.adverseEvents.length > 0)));
    });
  });
});

describe('MET documentation API v1: invalid documents', () => {
  interface Expected {
    instancePath: string;
    keyword: string;
    params?: Record<string, unknown>;
  }
  const validators = compileAll();
  const dir = join(FIXTURES, 'invalid');
  const files = readdirSync(dir).filter((f) => f.endsWith('.json') && !f.endsWith('.expected.json')).sort();

  it('there is one of each kind of defect', () => {
    assert.ok(files.length >= 6);
    const keywords = new Set(files.flatMap((f) => readJson<Expected[]>(join(dir, f.replace(/\.json$/, '.expected.json'))).map((e) => e.keyword)));
    for (const k of ['type', 'required', 'additionalProperties', 'enum', 'pattern']) assert.ok(keywords.has(k), `no invalid example for '${k}'`);
  });

  for (const file of files) {
    it(`${file} fails with exactly the expected errors`, () => {
      const validate = validators[typeOf(file)];
      const expected = readJson<Expected[]>(join(dir, file.replace(/\.json$/, '.expected.json')));
      assert.equal(validate(readJson<unknown>(join(dir, file))), false);
      const errors = validate.errors as ErrorObject[];
      const key = (e: { instancePath: string; keyword: string }): string => `${e.instancePath} ${e.keyword}`;
      assert.deepEqual(sorted(errors.map(key)), sorted(expected.map(key)), JSON.stringify(errors, null, 1));
      for (const e of expected) {
        const actual = errors.find((x) => key(x) === key(e)) as ErrorObject;
        for (const [k, v] of Object.entries(e.params ?? {})) assert.deepEqual((actual.params as Record<string, unknown>)[k], v, `${key(e)}: params.${k}`);
      }
    });
  }
});
