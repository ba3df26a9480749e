/**
 * MET goals: a goal document becomes a Goal whose achievementStatus follows the latest result on
 * its target measure, recomputed whenever an assessment (or a session's vitals) brings one.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import type { Agent } from 'supertest';
import { api, testContext, TEST_TENANT, uniqueId } from './helpers.js';
import { ClientStore } from '../src/store/clients.js';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const root = new URL('./fixtures/met/', import.meta.url);

function read(scenario: string, name: string): Json {
  return JSON.parse(readFileSync(new URL(`${scenario}/${name}`, root), 'utf8')) as Json;
}

async function push(agent: Agent, collection: string, body: unknown) {
  return agent.post(`/met/v1/${collection}`).set('Content-Type', 'application/json').set('X-MET-Software', 'TestTrainer 1.0').send(body as object);
}

/** The scenario's documents with fresh sender ids, so the shared test database never holds them. */
function scenario(name: string): { client: Json; goals: Json[]; intake: Json; reassessment: Json; fixtureId: (id: string) => string } {
  const suffix = uniqueId('-');
  const client = { ...read(name, 'client.json'), id: `${String(read(name, 'client.json').id)}${suffix}` };
  const own = (doc: Json): Json => ({ ...doc, id: `${String(doc.id)}${suffix}`, clientId: client.id });
  const goalFiles = readdirSync(new URL(`${name}/`, root)).filter((f) => f.startsWith('goal-')).sort();
  return {
    client,
    goals: goalFiles.map((f) => own(read(name, f))),
    intake: own(read(name, 'assessment-intake.json')),
    reassessment: own(read(name, 'assessment-reassessment.json')),
    fixtureId: (id: string) => id.slice(0, id.length - suffix.length),
  };
}

function status(goal: Json | undefined): string {
  return goal?.achievementStatus?.coding?.[0]?.code as string;
}

/** The client's Goals by the fixture id of their goal document. */
async function goalsOf(agent: Agent, patientId: string, fixtureId: (id: string) => string): Promise<Record<string, Json>> {
  const res = await agent.get(`/fhir/Goal?subject=Patient/${patientId}&_count=50`);
  assert.equal(res.status, 200);
  const goals = ((res.body.entry ?? []) as { resource: Json }[]).map((e) => e.resource);
  return Object.fromEntries(goals.map((g) => [fixtureId(String(g.identifier[0].value)), g]));
}

const statuses = (goals: Record<string, Json>) => Object.fromEntries(Object.entries(goals).map(([k, g]) => [k, status(g)]));

const EXPECTED: Record<string, { intake: Record<string, string>; reassessment: Record<string, string> }> = {
  // Knee flexion 98° → 113° (target ≥ 110°), extension −6° → −6° (≥ −2°), 6MWT 342 → 401 m (≥ 450 m).
  'knee-replacement': {
    intake: { 'goal-0042-knee-flexion': 'in-progress', 'goal-0042-knee-extension': 'in-progress', 'goal-0042-walk': 'in-progress' },
    reassessment: { 'goal-0042-knee-flexion': 'achieved', 'goal-0042-knee-extension': 'no-change', 'goal-0042-walk': 'improving' },
  },
  // Resting systolic (left, sitting) 138 → 131 (≤ 129; the post-exercise 168 and 160 do not count),
  // weight 92.4 → 92.6 kg (≤ 194 lb = 88.0 kg), MVPA 40 → 140 min/wk (≥ 150).
  hypertension: {
    intake: { 'goal-0057-bp': 'in-progress', 'goal-0057-weight': 'in-progress', 'goal-0057-activity': 'in-progress' },
    reassessment: { 'goal-0057-bp': 'improving', 'goal-0057-weight': 'worsening', 'goal-0057-activity': 'improving' },
  },
  // Berg 41 → 41 (≥ 45), gait speed with cane 0.52 → 0.61 m/s (≥ 0.8), TUG with cane 24.6 → 20.8 s (≤ 20).
  'post-stroke': {
    intake: { 'goal-0063-balance': 'in-progress', 'goal-0063-gait-speed': 'in-progress', 'goal-0063-tug': 'in-progress' },
    reassessment: { 'goal-0063-balance': 'no-change', 'goal-0063-gait-speed': 'improving', 'goal-0063-tug': 'improving' },
  },
  // Standing lumbar flexion 38° → 37° (≥ 50°), Oswestry 36 → 24 % (≤ 26), pain 5 → 3 (≤ 3).
  'low-back-pain': {
    intake: { 'goal-0071-flexion': 'in-progress', 'goal-0071-odi': 'in-progress', 'goal-0071-pain': 'in-progress' },
    reassessment: { 'goal-0071-flexion': 'worsening', 'goal-0071-odi': 'achieved', 'goal-0071-pain': 'achieved' },
  },
};

describe('MET goals', function () {
  this.timeout(60_000);

  for (const name of Object.keys(EXPECTED)) {
    it(`${name}: each Goal's achievementStatus follows the assessments, and points at the latest result`, async () => {
      const agent = await api();
      const docs = scenario(name);
      const client = await push(agent, 'clients', docs.client);
      assert.equal(client.status, 201, JSON.stringify(client.body));
      const patientId = (client.body.resources as { type: string; id: string }[]).find((r) => r.type === 'Patient')?.id as string;
      // A goal set before any result: in progress, with no outcome yet.
      const first = await push(agent, 'goals', docs.goals[0]);
      assert.equal(first.status, 201, JSON.stringify(first.body));
      const bare = Object.values(await goalsOf(agent, patientId, docs.fixtureId))[0];
      assert.equal(status(bare), 'in-progress');
      assert.equal(bare?.outcomeReference, undefined);

      assert.equal((await push(agent, 'assessments', docs.intake)).status, 201);
      for (const goal of docs.goals.slice(1)) assert.equal((await push(agent, 'goals', goal)).status, 201);
      assert.deepEqual(statuses(await goalsOf(agent, patientId, docs.fixtureId)), EXPECTED[name]?.intake);

      const re = await push(agent, 'assessments', docs.reassessment);
      assert.equal(re.status, 201, JSON.stringify(re.body));
      const updatedGoals = (re.body.resources as { type: string; action: string }[]).filter((r) => r.type === 'Goal' && r.action === 'updated');
      assert.ok(updatedGoals.length > 0, 'the reassessment updates the goals it brings results for');
      const afterReassessment = await goalsOf(agent, patientId, docs.fixtureId);
      assert.deepEqual(statuses(afterReassessment), EXPECTED[name]?.reassessment);

      // Every goal now points at a result of the reassessment, which exists and is on the goal's measure.
      for (const goal of Object.values(afterReassessment)) {
        const ref = goal?.outcomeReference?.[0]?.reference as string;
        assert.match(ref, /^Observation\//);
        const obs = await agent.get(`/fhir/${ref}`);
        assert.equal(obs.status, 200);
        assert.equal(obs.body.effectiveDateTime, docs.reassessment.date);
        const targetCode = goal?.target[0].measure.coding[0].code as string;
        assert.ok(JSON.stringify(obs.body.code).includes(targetCode) || JSON.stringify(obs.body.component).includes(targetCode), `${ref} is on ${targetCode}`);
      }
    });
  }

  it('a Goal holds its target in UCUM, addresses its diagnosis as a Condition, and is recomputed when a result is withdrawn', async () => {
    const agent = await api();
    const docs = scenario('knee-replacement');
    const patientId = ((await push(agent, 'clients', docs.client)).body.resources as { type: string; id: string }[]).find((r) => r.type === 'Patient')?.id as string;
    await push(agent, 'assessments', docs.intake);
    const flexion = docs.goals.find((g) => String(g.id).startsWith('goal-0042-knee-flexion')) as Json;
    const res = await push(agent, 'goals', flexion);
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.deepEqual((res.body.resources as { type: string }[]).map((r) => r.type).sort(), ['Condition', 'Goal']);
    const goalId = (res.body.resources as { type: string; id: string }[]).find((r) => r.type === 'Goal')?.id as string;
    const goal = (await agent.get(`/fhir/Goal/${goalId}`)).body as Json;
    assert.equal(goal.lifecycleStatus, 'active');
    assert.equal(goal.description.text, flexion.description);
    assert.deepEqual(goal.target[0].detailRange.low, { value: 110, unit: 'degrees', system: 'http://unitsofmeasure.org', code: 'deg' });
    assert.equal(goal.target[0].dueDate, '2026-11-13');
    assert.equal(goal.target[0].measure.text, 'Joint range of motion (right knee flexion)');
    assert.equal(goal.priority.coding[0].code, 'high-priority');
    const condition = (await agent.get(`/fhir/${goal.addresses[0].reference as string}`)).body as Json;
    assert.equal(condition.code.coding[0].code, 'Z96.651');
    assert.equal(condition.subject.reference, `Patient/${patientId}`);
    // The other knee goal addresses the same diagnosis: the same Condition, unchanged.
    const extension = docs.goals.find((g) => String(g.id).startsWith('goal-0042-knee-extension')) as Json;
    const other = await push(agent, 'goals', extension);
    const sharedCondition = (other.body.resources as { type: string; id: string; action: string }[]).find((r) => r.type === 'Condition');
    assert.equal(sharedCondition?.id, goal.addresses[0].reference.split('/')[1]);
    assert.equal(sharedCondition?.action, 'unchanged');

    // The reassessment reaches the flexion target; resent without that measurement, the goal falls back.
    await push(agent, 'assessments', docs.reassessment);
    assert.equal(status((await agent.get(`/fhir/Goal/${goalId}`)).body as Json), 'achieved');
    const withdrawn = {
      ...docs.reassessment,
      measurements: (docs.reassessment.measurements as Json[]).filter((m) => !(m.measure === 'joint-range-of-motion' && m.side === 'right' && m.motion === 'flexion')),
    };
    const resent = await push(agent, 'assessments', withdrawn);
    assert.equal(resent.status, 200, JSON.stringify(resent.body));
    const after = (await agent.get(`/fhir/Goal/${goalId}`)).body as Json;
    assert.equal(status(after), 'in-progress', 'only the intake result is left');
    assert.match(after.outcomeReference[0].reference as string, /^Observation\//);
    const intakeObs = (await agent.get(`/fhir/${after.outcomeReference[0].reference as string}`)).body as Json;
    assert.equal(intakeObs.effectiveDateTime, docs.intake.date);
  });
  /** A client with a blood-pressure goal (left arm, sitting, systolic ≤ 129) and its Goal's id. */
  async function bpClient(agent: Agent): Promise<{ cl: string; goalId: string }> {
    const cl = uniqueId('cl');
    assert.equal((await push(agent, 'clients', { id: cl, name: { given: ['Bea'], family: 'Pressure' }, birthDate: '1958-03-02', sex: 'female' })).status, 201);
    const goal = await push(agent, 'goals', {
      id: uniqueId('goal'),
      clientId: cl,
      term: 'long',
      description: 'Bring my blood pressure down',
      target: { measure: 'blood-pressure', component: 'systolic', side: 'left', position: 'sitting', high: 129, unit: 'mmHg', due: '2027-03-01' },
      status: 'active',
      startDate: '2026-01-15',
    });
    assert.equal(goal.status, 201, JSON.stringify(goal.body));
    return { cl, goalId: (goal.body.resources as { type: string; id: string }[]).find((r) => r.type === 'Goal')?.id as string };
  }

  const bpAssessment = (cl: string, day: number, systolic: number, side: string) => ({
    id: uniqueId('as'),
    kind: 'reassessment',
    clientId: cl,
    date: `2026-02-${String(day).padStart(2, '0')}T09:00:00Z`,
    performer: { id: 'staff-1', name: 'Jordan Lee' },
    context: 'rest',
    measurements: [{ measure: 'blood-pressure', components: { systolic, diastolic: 80 }, unit: 'mmHg', side, position: 'sitting' }],
  });

  it('progress finds the two latest results that meet the target behind more than sixteen newer ones that do not', async () => {
    const agent = await api();
    const { cl, goalId } = await bpClient(agent);
    // Left arm: 150 then 140 (improving). Then twenty on the right arm, which the goal does not count.
    const one = await push(agent, 'assessments', bpAssessment(cl, 1, 150, 'left'));
    assert.equal(one.status, 201, JSON.stringify(one.body));
    const second = await push(agent, 'assessments', bpAssessment(cl, 2, 140, 'left'));
    const latestLeft = (second.body.resources as { type: string; id: string }[]).filter((r) => r.type === 'Observation').at(-1)?.id;
    for (let day = 3; day <= 22; day++) assert.equal((await push(agent, 'assessments', bpAssessment(cl, day, 120, 'right'))).status, 201);
    const goal = (await agent.get(`/fhir/Goal/${goalId}`)).body as Json;
    assert.equal(status(goal), 'improving');
    assert.equal(goal.outcomeReference[0].reference, `Observation/${latestLeft}`);
  });

  it('documents stored before their measurements had rows (migration 16) count, and get their rows at the next push', async () => {
    const agent = await api();
    const { cl, goalId } = await bpClient(agent);
    const one = await push(agent, 'assessments', bpAssessment(cl, 1, 150, 'left'));
    assert.equal(one.status, 201, JSON.stringify(one.body));
    assert.equal((await push(agent, 'assessments', bpAssessment(cl, 2, 140, 'left'))).status, 201);
    // As a database migrated to 16 has them: the documents without rows.
    const { db } = await testContext();
    const pool = db.inSchema((await new ClientStore(db.pool).tenantSchema(TEST_TENANT)) as string);
    await pool.query('DELETE FROM met_result WHERE client_id = $1', [cl]);
    await pool.query('UPDATE source_document SET results = false WHERE client_id = $1', [cl]);
    // A third result, no better than the second: no change, judged against the stored ones.
    const third = await push(agent, 'assessments', bpAssessment(cl, 3, 140, 'left'));
    assert.equal(third.status, 201, JSON.stringify(third.body));
    assert.equal(status((await agent.get(`/fhir/Goal/${goalId}`)).body as Json), 'no-change');
    const rows = await pool.query<{ n: string }>('SELECT count(*) AS n FROM met_result WHERE client_id = $1', [cl]);
    assert.equal(Number(rows.rows[0]?.n), 3);
    const left = await pool.query<{ n: string }>('SELECT count(*) AS n FROM source_document WHERE client_id = $1 AND NOT results AND doc_type = $2', [cl, 'assessment']);
    assert.equal(Number(left.rows[0]?.n), 0);
  });
});
