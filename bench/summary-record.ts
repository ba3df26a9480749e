/**
 * The clinical record the outbound phase (bench/delivery.ts) builds its progress reports from: what
 * a medical exercise professional keeps about a client over a 12-week program. Per client: three
 * diagnoses (knee osteoarthritis, hypertension, type 2 diabetes), two goals with targets, the
 * exercise program (CarePlan), seven outcome measures assessed every two weeks (7 time points,
 * the blood pressure as a panel), 24 supervised sessions of which some were missed, and one adverse
 * event. Values trend the way a program that works makes them, with a little noise per client.
 * Also: the MET (Practitioner), the EHR's Endpoint, the $send-summary parameters, and the report
 * input gathered back from the stored data the way the server gathers it.
 */
import type { Bundle, CarePlan, Condition, Encounter, Endpoint, Goal, Observation, Patient, Practitioner, Procedure, Resource } from 'fhir/r4.js';
import { EHR_ENDPOINT_EXTENSION } from '../src/interactions/pull-diagnoses.js';
import type { GoalAchievementCode, ReportInput } from '../src/summary/report.js';

export const MRN_SYSTEM = 'http://riverside.example.org/mrn';
const CONNECTION_TYPES = 'http://terminology.hl7.org/CodeSystem/endpoint-connection-type';
const LOINC = 'http://loinc.org';
const UCUM = 'http://unitsofmeasure.org';
const MET_MEASURE = 'https://met-fhir-server.dev/fhir/CodeSystem/met-measure';

/** The report period: the 12 weeks of the seeded program (sessions twice a week, assessments every 2 weeks). */
const PROGRAM_START = Date.UTC(2026, 8, 7);
const WEEKS = 12;
const day = (ms: number): string => new Date(ms).toISOString().slice(0, 10);
export const PERIOD = { start: day(PROGRAM_START), end: day(PROGRAM_START + WEEKS * 7 * 86_400_000) };
const RECIPIENT = 'Dr. Chidi Okonkwo';
const RECOMMENDATIONS = [
  'Continue the walking program 5 times a week; add 5 minutes every second week up to 45 minutes.',
  'Progress sit-to-stand and step-ups to 3 sets of 12; keep the knee pain at or below 3/10 during and after exercise.',
  'Please review the antihypertensive medication: resting systolic pressure is still above the goal.',
];

export type WithId<T extends Resource> = T & { id: string };

/** A transaction that PUTs each resource at its id. */
export function transaction(resources: WithId<Resource>[]): Bundle {
  return { resourceType: 'Bundle', type: 'transaction', entry: resources.map((r) => ({ resource: r, request: { method: 'PUT', url: `${r.resourceType}/${r.id}` } })) };
}

// ---------------------------------------------------------------------------------------------
// The record

export const mrn = (n: number): string => `RV${String(400_100 + n)}`;
export const patientId = (n: number): string => `summary-client-${n}`;
const FAMILIES = ['Delacroix', 'Okafor', 'Lindqvist', 'Moreau', 'Tanaka', 'Haddad', 'Novak', 'Brennan', 'Castillo', 'Weber'];
const GIVEN = ['Marguerite', 'Samuel', 'Ingrid', 'Luc', 'Aiko', 'Rami', 'Petra', 'Declan', 'Lucia', 'Hans'];

export function patient(n: number): WithId<Patient> {
  return {
    resourceType: 'Patient',
    id: patientId(n),
    identifier: [{ type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MR' }] }, system: MRN_SYSTEM, value: mrn(n) }],
    name: [{ family: FAMILIES[n % FAMILIES.length], given: [GIVEN[n % GIVEN.length] as string] }],
    birthDate: `${1948 + (n % 20)}-0${1 + (n % 9)}-1${n % 10}`,
    gender: n % 2 === 0 ? 'female' : 'male',
  };
}

export const PRACTITIONER: WithId<Practitioner> = {
  resourceType: 'Practitioner',
  id: 'summary-met',
  name: [{ given: ['Jordan'], family: 'Reyes' }],
  qualification: [{ code: { text: 'ACSM Certified Clinical Exercise Physiologist' }, issuer: { display: 'Riverside Exercise Clinic' } }],
};

/** The EHR as an Endpoint of the tenant: SMART Backend Services with our key, patients linked by MRN. */
export function endpoint(ehr: { fhirBase: string; tokenUrl: string; clientId: string; scope: string }): WithId<Endpoint> {
  return {
    resourceType: 'Endpoint',
    id: 'summary-ehr',
    status: 'active',
    name: 'Riverside EHR',
    connectionType: { system: CONNECTION_TYPES, code: 'hl7-fhir-rest' },
    payloadType: [{ text: 'FHIR R4' }],
    address: ehr.fhirBase,
    extension: [
      {
        url: EHR_ENDPOINT_EXTENSION,
        extension: [
          { url: 'auth', valueCode: 'smart-backend' },
          { url: 'tokenUrl', valueUrl: ehr.tokenUrl },
          { url: 'clientId', valueString: ehr.clientId },
          { url: 'scope', valueString: ehr.scope },
          { url: 'patientIdentifierSystem', valueUri: MRN_SYSTEM },
        ],
      },
    ],
  };
}

const DIAGNOSES = [
  { system: 'http://hl7.org/fhir/sid/icd-10-cm', code: 'M17.11', display: 'Unilateral primary osteoarthritis, right knee', onset: '2023-04-12' },
  { system: 'http://hl7.org/fhir/sid/icd-10-cm', code: 'I10', display: 'Essential (primary) hypertension', onset: '2019-10-02' },
  { system: 'http://hl7.org/fhir/sid/icd-10-cm', code: 'E11.9', display: 'Type 2 diabetes mellitus without complications', onset: '2021-06-21' },
];

/** One measure: its code, unit, value at week 0 and change per week; or a panel with components. */
interface Measure {
  key: string;
  code: { system: string; code: string; display: string };
  unit?: string;
  start?: number;
  perWeek?: number;
  components?: { code: string; display: string; start: number; perWeek: number }[];
  vital?: boolean;
}
const MEASURES: Measure[] = [
  { key: '6mwd', code: { system: MET_MEASURE, code: 'six-minute-walk-distance', display: '6-minute walk distance' }, unit: 'm', start: 330, perWeek: 7 },
  { key: 'sts', code: { system: LOINC, code: '66247-8', display: 'Sit to stand frequency in 30 seconds' }, unit: '{#}/(30.s)', start: 9, perWeek: 0.4 },
  { key: 'tug', code: { system: LOINC, code: '89423-8', display: 'Timed up and go [TUG]' }, unit: 's', start: 12.8, perWeek: -0.25 },
  { key: 'pain', code: { system: LOINC, code: '72514-3', display: 'Pain severity - 0-10 verbal numeric rating [Score] - Reported' }, unit: '{score}', start: 6, perWeek: -0.3 },
  { key: 'rhr', code: { system: LOINC, code: '40443-4', display: 'Heart rate --resting' }, unit: '/min', start: 78, perWeek: -0.5, vital: true },
  { key: 'weight', code: { system: LOINC, code: '29463-7', display: 'Body weight' }, unit: 'kg', start: 94.5, perWeek: -0.3, vital: true },
  {
    key: 'bp',
    code: { system: LOINC, code: '85354-9', display: 'Blood pressure panel with all children optional' },
    vital: true,
    components: [
      { code: '8480-6', display: 'Systolic blood pressure', start: 148, perWeek: -1 },
      { code: '8462-4', display: 'Diastolic blood pressure', start: 92, perWeek: -0.5 },
    ],
  },
];

const at = (week: number, dayOfWeek = 0, hour = 9): string => new Date(PROGRAM_START + (week * 7 + dayOfWeek) * 86_400_000 + hour * 3_600_000).toISOString();

/** Everything about client n, as resources with ids (one transaction). */
export function clientRecord(n: number): WithId<Resource>[] {
  const subject = { reference: `Patient/${patientId(n)}` };
  const id = (kind: string, i: number | string = 0): string => `summary-${n}-${kind}-${i}`;
  const noise = (week: number, k: number): number => ((n * 7 + week * 13 + k * 5) % 9) / 8 - 0.5;
  const resources: WithId<Resource>[] = [patient(n)];
  DIAGNOSES.forEach((d, i) => {
    const condition: WithId<Condition> = {
      resourceType: 'Condition',
      id: id('condition', i),
      clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] },
      verificationStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-ver-status', code: 'confirmed' }] },
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-category', code: 'problem-list-item' }] }],
      code: { coding: [{ system: d.system, code: d.code, display: d.display }], text: d.display },
      subject,
      onsetDateTime: d.onset,
    };
    resources.push(condition);
  });
  const goal = (i: number, text: string, measure: { system: string; code: string; display: string }, value: number, unit: string, status: GoalAchievementCode): WithId<Goal> => ({
    resourceType: 'Goal',
    id: id('goal', i),
    lifecycleStatus: 'active',
    achievementStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/goal-achievement', code: status }] },
    description: { text },
    subject,
    startDate: PERIOD.start,
    target: [{ measure: { coding: [measure], text: measure.display }, detailQuantity: { value, unit, system: UCUM, code: unit }, dueDate: '2027-01-31' }],
  });
  resources.push(goal(0, 'Walk to the park and back (450 m in six minutes) without knee pain', MEASURES[0]?.code as Measure['code'], 450, 'm', 'improving'));
  resources.push(goal(1, 'Resting systolic blood pressure below 130 mmHg', { system: LOINC, code: '8480-6', display: 'Systolic blood pressure' }, 130, 'mm[Hg]', n % 3 === 0 ? 'no-change' : 'improving'));
  const plan: WithId<CarePlan> = {
    resourceType: 'CarePlan',
    id: id('careplan'),
    status: 'active',
    intent: 'plan',
    title: 'Knee osteoarthritis and cardiometabolic exercise program',
    subject,
    period: { start: PERIOD.start },
    activity: [
      'Walking: 5x/week, moderate (RPE 12-13), 30 min',
      'Lower-limb strengthening (sit-to-stand, step-ups, bridges): 2x/week, 2-3 sets of 10-12',
      'Stationary cycling: 2x/week, 20 min, moderate',
      'Balance and mobility: daily, 10 min',
    ].map((description) => ({ detail: { status: 'in-progress' as const, description } })),
  };
  resources.push(plan);
  for (let week = 0; week <= WEEKS; week += 2) {
    MEASURES.forEach((m, k) => {
      const observation: WithId<Observation> = {
        resourceType: 'Observation',
        id: id(`obs-${m.key}`, week),
        status: 'final',
        ...(m.vital ? { category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs' }] }] } : {}),
        code: { coding: [m.code], text: m.code.display },
        subject,
        effectiveDateTime: at(week),
        performer: [{ reference: `Practitioner/${PRACTITIONER.id}` }],
      };
      if (m.components) {
        observation.component = m.components.map((c) => ({
          code: { coding: [{ system: LOINC, code: c.code, display: c.display }] },
          valueQuantity: { value: Math.round(c.start + c.perWeek * week + 3 * noise(week, k)), unit: 'mmHg', system: UCUM, code: 'mm[Hg]' },
        }));
      } else {
        const value = (m.start ?? 0) + (m.perWeek ?? 0) * week + Math.abs(m.perWeek ?? 0) * 2 * noise(week, k);
        observation.valueQuantity = { value: Math.round(value * 10) / 10, unit: m.unit ?? '', system: UCUM, code: m.unit ?? '' };
      }
      resources.push(observation);
    });
  }
  for (let week = 0; week < WEEKS; week++) {
    for (const [s, dayOfWeek] of [1, 3].entries()) {
      const missed = (week * 2 + s + n) % 8 === 5 && week % 3 === 1;
      const encounter: WithId<Encounter> = {
        resourceType: 'Encounter',
        id: id('session', week * 2 + s),
        status: missed ? 'cancelled' : 'finished',
        class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB', display: 'ambulatory' },
        type: [{ text: 'Supervised exercise session' }],
        subject,
        participant: [{ individual: { reference: `Practitioner/${PRACTITIONER.id}` } }],
        period: { start: at(week, dayOfWeek, 10), end: at(week, dayOfWeek, 11) },
      };
      resources.push(encounter);
    }
  }
  const adverse: WithId<Procedure> = {
    resourceType: 'Procedure',
    id: id('session-adverse'),
    status: 'completed',
    code: { text: 'Supervised exercise session' },
    subject,
    performedDateTime: at(5, 3, 10),
    complication: [{ text: 'Mild right knee swelling after step-ups; settled with rest and ice within 24 h' }],
  };
  resources.push(adverse);
  return resources;
}

/** The $send-summary body: the Endpoint, the MET, the period, the physician and the recommendations. */
export function parameters(): object {
  return {
    resourceType: 'Parameters',
    parameter: [
      { name: 'endpoint', valueReference: { reference: 'Endpoint/summary-ehr' } },
      { name: 'author', valueReference: { reference: `Practitioner/${PRACTITIONER.id}` } },
      { name: 'period', valuePeriod: PERIOD },
      { name: 'recipient', valueString: RECIPIENT },
      ...RECOMMENDATIONS.map((valueString) => ({ name: 'recommendation', valueString })),
    ],
  };
}

// ---------------------------------------------------------------------------------------------
// The report input, gathered back

const text = (c: { text?: string; coding?: { display?: string; code?: string }[] } | undefined): string => c?.text ?? c?.coding?.[0]?.display ?? c?.coding?.[0]?.code ?? '';

/** The ReportInput of client n's report over PERIOD, from what the server stores (mirrors gather() in send-summary.ts). */
export async function gatherInput(search: <T extends Resource>(query: string) => Promise<T[]>, n: number, issued: string): Promise<ReportInput> {
  const subject = `subject=Patient/${patientId(n)}`;
  const within = `date=ge${PERIOD.start}&date=le${PERIOD.end}`;
  const [conditions, plans, goals, observations, encounters, procedures] = await Promise.all([
    search<Condition>(`Condition?${subject}`),
    search<CarePlan>(`CarePlan?${subject}`),
    search<Goal>(`Goal?${subject}`),
    search<Observation>(`Observation?${subject}&date=le${PERIOD.end}`),
    search<Encounter>(`Encounter?${subject}&${within}`),
    search<Procedure>(`Procedure?${subject}&${within}`),
  ]);
  const p = patient(n);
  const series = new Map<string, { name: string; code: { system: string; code: string }; unit: string; series: { date: string; value: number }[] }>();
  const add = (code: Observation['code'], value: { value?: number; unit?: string; code?: string } | undefined, date: string | undefined): void => {
    const coding = code.coding?.[0];
    if (!coding?.code || value?.value === undefined || !date) return;
    const key = `${coding.system ?? ''}|${coding.code}`;
    const m = series.get(key) ?? { name: text(code) || coding.code, code: { system: coding.system ?? '', code: coding.code }, unit: value.unit ?? value.code ?? '', series: [] };
    series.set(key, m);
    m.series.push({ date: date.slice(0, 10), value: value.value });
  };
  for (const o of observations) {
    const when = o.effectiveDateTime ?? o.effectivePeriod?.start ?? o.issued;
    add(o.code, o.valueQuantity, when);
    for (const c of o.component ?? []) add(c.code, c.valueQuantity, when);
  }
  const plan = plans.filter((c) => c.status === 'active' || c.status === 'completed').sort((x, y) => (y.period?.start ?? '').localeCompare(x.period?.start ?? ''))[0];
  return {
    kind: 'progress-report',
    patient: {
      name: `${p.name?.[0]?.given?.[0] ?? ''} ${p.name?.[0]?.family ?? ''}`,
      birthDate: p.birthDate ?? '',
      gender: p.gender ?? 'unknown',
      identifiers: [{ system: MRN_SYSTEM, value: mrn(n), label: 'MRN' }],
    },
    period: PERIOD,
    author: { name: 'Jordan Reyes', organization: PRACTITIONER.qualification?.[0]?.issuer?.display ?? '' },
    recipient: { name: RECIPIENT },
    issued,
    diagnoses: conditions.map((c) => ({
      ...(c.code?.coding?.[0]?.code ? { code: { system: c.code.coding[0].system ?? '', code: c.code.coding[0].code } } : {}),
      display: text(c.code) || 'Condition',
      ...(c.onsetDateTime ? { onset: c.onsetDateTime.slice(0, 10) } : {}),
    })),
    ...(plan
      ? {
          program: {
            title: plan.title ?? 'Exercise program',
            activities: (plan.activity ?? []).map((x) => x.detail?.description ?? text(x.detail?.code)).filter((s): s is string => !!s),
            period: { start: plan.period?.start?.slice(0, 10) || PERIOD.start, ...(plan.period?.end ? { end: plan.period.end.slice(0, 10) } : {}) },
          },
        }
      : {}),
    goals: goals.map((g) => {
      const target = g.target?.[0];
      const quantity = target?.detailQuantity;
      return {
        description: text(g.description),
        ...(quantity?.value !== undefined ? { target: { measure: text(target?.measure), value: quantity.value, unit: quantity.unit ?? quantity.code ?? '', ...(target?.dueDate ? { due: target.dueDate } : {}) } } : {}),
        achievementStatus: { code: (g.achievementStatus?.coding?.[0]?.code ?? 'in-progress') as GoalAchievementCode },
      };
    }),
    outcomes: [...series.values()].map((m) => ({ ...m, series: m.series.sort((x, y) => x.date.localeCompare(y.date)) })),
    ...(encounters.length > 0 ? { attendance: { planned: encounters.length, attended: encounters.filter((e) => e.status === 'finished').length } } : {}),
    adverseEvents: procedures.flatMap((proc) => (proc.complication ?? []).map((c) => ({ date: (proc.performedPeriod?.start ?? proc.performedDateTime ?? '').slice(0, 10), text: text(c) }))),
    recommendations: RECOMMENDATIONS,
  };
}
