/**
 * The MET documentation API's load (issue #4): assessment documents of 10 measurements each,
 * pushed to /met/v1/assessments. Every request is a new assessment of one of CLIENTS clients,
 * each with two goals on measures the assessment has, so every push also recomputes two Goals.
 */
import type autocannon from 'autocannon';
import { authorization } from './auth.js';

export const MET_CLIENTS = 100;
export const MET_CONNECTIONS = 8;
export const TARGET_MET_DPS = 300;
export const TARGET_MET_P99_MS = 100;

const JSON_TYPE = 'application/json';

function client(n: number): object {
  return {
    id: `bench-client-${n}`,
    name: { given: ['Bench'], family: `Client ${n}` },
    birthDate: '1960-05-01',
    sex: n % 2 === 0 ? 'female' : 'male',
    referringPhysician: { name: { given: ['Ann'], family: 'Chen' }, npi: '1234567893' },
    precautions: ['Stop if chest pain or dizziness'],
  };
}

function goals(n: number): object[] {
  return [
    {
      id: `bench-goal-${n}-bp`,
      clientId: `bench-client-${n}`,
      term: 'long',
      description: 'Bring my blood pressure down',
      target: { measure: 'blood-pressure', component: 'systolic', side: 'left', position: 'sitting', high: 129, unit: 'mmHg', due: '2027-03-01' },
      priority: 'high',
      status: 'active',
      addresses: [{ code: { system: 'http://hl7.org/fhir/sid/icd-10-cm', code: 'I10', display: 'Essential (primary) hypertension' }, text: 'Hypertension' }],
      startDate: '2026-01-05',
    },
    {
      id: `bench-goal-${n}-walk`,
      clientId: `bench-client-${n}`,
      term: 'short',
      description: 'Walk to the park and back',
      target: { measure: 'six-minute-walk', device: 'none', low: 450, unit: 'm', due: '2026-12-01' },
      priority: 'medium',
      status: 'active',
      startDate: '2026-01-05',
    },
  ];
}

/** An assessment of 10 measurements; values vary with i so the documents differ. */
export function assessment(i: number): string {
  const n = i % MET_CLIENTS;
  const day = new Date(Date.UTC(2026, 0, 5) + Math.floor(i / MET_CLIENTS) * 3_600_000).toISOString();
  return JSON.stringify({
    id: `bench-assessment-${i}`,
    clientId: `bench-client-${n}`,
    date: day,
    performer: { id: 'staff-1', name: 'Jordan Lee', credentials: 'MES' },
    kind: 'other',
    context: 'rest',
    measurements: [
      { measure: 'blood-pressure', components: { systolic: 120 + (i % 30), diastolic: 70 + (i % 20) }, unit: 'mmHg', side: 'left', position: 'sitting' },
      { measure: 'resting-heart-rate', value: 55 + (i % 30), unit: '/min' },
      { measure: 'body-weight', value: 60 + (i % 40), unit: 'kg' },
      { measure: 'body-height', value: 150 + (i % 40), unit: 'cm' },
      { measure: 'bmi', value: 20 + (i % 15), unit: 'kg/m2' },
      { measure: 'waist-circumference', value: 80 + (i % 30), unit: 'cm' },
      { measure: 'timed-up-and-go', value: 8 + (i % 10), unit: 's', device: 'none' },
      { measure: 'chair-stand-30s', value: 8 + (i % 10), unit: '{#}/(30.s)' },
      { measure: 'six-minute-walk', value: 300 + (i % 200), unit: 'm', device: 'none' },
      { measure: 'pain-severity', value: i % 10, unit: '{score}' },
    ],
    findings: 'Tolerated all tests.',
  });
}

async function post(url: string, collection: string, body: object | string): Promise<void> {
  const response = await fetch(`${url}/met/v1/${collection}`, {
    method: 'POST',
    headers: { 'content-type': JSON_TYPE, 'x-met-software': 'bench', authorization: authorization() },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await response.text();
  if (response.status !== 201 && response.status !== 200) throw new Error(`seeding: POST /met/v1/${collection} answered ${response.status}: ${text.slice(0, 400)}`);
}

/** Pushes the clients and their goals (not measured), and checks one assessment is accepted. */
export async function seedMet(url: string): Promise<void> {
  for (let n = 0; n < MET_CLIENTS; n++) {
    await post(url, 'clients', client(n));
    for (const goal of goals(n)) await post(url, 'goals', goal);
  }
  await post(url, 'assessments', assessment(0));
}

/** Each request a new assessment (ids from `first` on), round-robin over the clients. */
export function metRequests(first: { next: number }): autocannon.Request[] {
  return [
    {
      method: 'POST',
      path: '/met/v1/assessments',
      headers: { 'content-type': JSON_TYPE, 'x-met-software': 'bench', authorization: authorization() },
      setupRequest: (request) => ({ ...request, body: assessment(first.next++) }),
    },
  ];
}
