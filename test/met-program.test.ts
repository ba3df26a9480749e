/** The MET documentation API: a program (exercise prescription) becomes a PA Care Plan. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { Agent } from 'supertest';
import { api, uniqueId } from './helpers.js';

// Resources read back as plain JSON trees.
type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const ROOT = new URL('./fixtures/met/', import.meta.url);
const SCENARIOS = ['knee-replacement', 'hypertension', 'post-stroke', 'low-back-pain'] as const;
const GOALS: Record<(typeof SCENARIOS)[number], string[]> = {
  'knee-replacement': ['goal-knee-extension.json', 'goal-knee-flexion.json', 'goal-walk.json'],
  hypertension: ['goal-activity.json', 'goal-bp.json', 'goal-weight.json'],
  'post-stroke': ['goal-balance.json', 'goal-gait-speed.json', 'goal-tug.json'],
  'low-back-pain': ['goal-flexion.json', 'goal-odi.json', 'goal-pain.json'],
};
const US_CORE_CATEGORY = { system: 'http://hl7.org/fhir/us/core/CodeSystem/careplan-category', code: 'assess-plan' };
const PA_CATEGORY = { system: 'http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes', code: 'PhysicalActivity' };
const XHTML_ROOT = '<div xmlns="http://www.w3.org/1999/xhtml">';
const NARRATIVE_ELEMENTS = new Set(['div', 'h3', 'p', 'b', 'br', 'ul', 'li', 'table', 'thead', 'tbody', 'tr', 'th', 'td']);

async function push(agent: Agent, collection: string, body: unknown) {
  return agent.post(`/met/v1/${collection}`).set('Content-Type', 'application/json').set('X-MET-Software', 'TestTrainer 1.0').send(body as object);
}

function read(scenario: string, name: string): Json {
  return JSON.parse(readFileSync(new URL(`${scenario}/${name}`, ROOT), 'utf8')) as Json;
}

async function search(agent: Agent, type: string, patientId: string): Promise<Json[]> {
  const res = await agent.get(`/fhir/${type}?subject=Patient/${patientId}&_count=100`);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return ((res.body.entry ?? []) as { resource: Json }[]).map((e) => e.resource);
}

/** Text as $xml writes it into the narrative. */
function escapeXml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);
}

/**
 * A well-formedness check of a narrative: one root div in the XHTML namespace, only the elements
 * the mapping writes, no attributes but the root's xmlns, every tag closed in order, no raw '<'
 * and only the five XML entities or character references after '&'.
 */
function assertWellFormedXhtml(div: string): void {
  assert.ok(div.startsWith(XHTML_ROOT), `root: ${div.slice(0, 60)}`);
  assert.ok(div.endsWith('</div>'));
  const tokens = div.match(/<[^<>]*>|[^<>]+|[<>]/g) ?? [];
  assert.equal(tokens.join(''), div);
  const open: string[] = [];
  tokens.forEach((token, i) => {
    if (token === '<') assert.fail(`a raw '<' in the narrative near ${tokens.slice(i, i + 3).join('')}`);
    if (!token.startsWith('<')) {
      assert.ok(open.length > 0, `text outside the root div: ${token}`);
      const bad = token.replace(/&(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);/g, '').match(/&.{0,10}/);
      assert.equal(bad, null, `an unescaped '&' in: ${token}`);
      return;
    }
    const tag = /^<(\/?)([a-z][a-z0-9]*)((?:\s+[a-z:]+="[^"<&]*")*)\s*(\/?)>$/.exec(token);
    assert.ok(tag, `a malformed tag: ${token}`);
    const [, closing, name, attributes, empty] = tag as unknown as [string, string, string, string, string];
    assert.ok(NARRATIVE_ELEMENTS.has(name), `an element the narrative should not hold: ${name}`);
    if (i === 0) assert.equal(attributes.trim(), 'xmlns="http://www.w3.org/1999/xhtml"');
    else assert.equal(attributes, '', `attributes on ${token}`);
    if (closing) {
      assert.equal(open.pop(), name, `</${name}> closes another element`);
      if (open.length === 0) assert.equal(i, tokens.length - 1, 'content after the root div');
    } else if (!empty) open.push(name);
  });
  assert.deepEqual(open, [], 'unclosed elements');
}

interface Pushed {
  agent: Agent;
  patientId: string;
  program: Json;
  goalIds: Map<string, string>;
}

/** Pushes a scenario's client, goals and program, with fresh sender ids so the runs never meet. */
async function pushScenario(scenario: string, change?: (program: Json) => void): Promise<Pushed> {
  const agent = await api();
  const suffix = uniqueId('');
  const cl = { ...read(scenario, 'client.json') };
  cl.id = `${String(cl.id)}${suffix}`;
  const created = await push(agent, 'clients', cl);
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const patientId = (created.body.resources as { type: string; id: string }[]).find((r) => r.type === 'Patient')?.id as string;
  for (const name of GOALS[scenario as (typeof SCENARIOS)[number]]) {
    const goal = { ...read(scenario, name) };
    goal.id = `${String(goal.id)}${suffix}`;
    goal.clientId = cl.id;
    const res = await push(agent, 'goals', goal);
    assert.equal(res.status, 201, `${name}: ${JSON.stringify(res.body)}`);
  }
  const program = read(scenario, 'program.json');
  program.id = `${String(program.id)}${suffix}`;
  program.clientId = cl.id;
  program.goalIds = (program.goalIds as string[]).map((g) => `${g}${suffix}`);
  change?.(program);
  const res = await push(agent, 'programs', program);
  assert.equal(res.status, 201, JSON.stringify(res.body));
  assert.equal(res.body.status, 'created');
  const goals = await search(agent, 'Goal', patientId);
  const goalIds = new Map(goals.map((g) => [g.identifier[0].value as string, g.id as string]));
  return { agent, patientId, program, goalIds };
}

async function carePlanOf(agent: Agent, patientId: string): Promise<Json> {
  const plans = await search(agent, 'CarePlan', patientId);
  assert.equal(plans.length, 1, 'one CarePlan per program');
  return plans[0] as Json;
}

function hasCoding(concepts: Json[], coding: { system: string; code: string }): boolean {
  return concepts.some((c) => (c.coding ?? []).some((x: Json) => x.system === coding.system && x.code === coding.code));
}

describe('MET API: programs become PA Care Plans', function () {
  this.timeout(60_000);

  for (const scenario of SCENARIOS) {
    it(`${scenario}: the program maps to a CarePlan with its goals, diagnoses, FITT activities and a readable narrative; a resend changes nothing`, async () => {
      const { agent, patientId, program, goalIds } = await pushScenario(scenario);
      const plan = await carePlanOf(agent, patientId);

      assert.deepEqual(plan.meta.profile, ['https://met-fhir-server.dev/fhir/StructureDefinition/met-careplan']);
      assert.equal(plan.status, 'active');
      assert.equal(plan.intent, 'plan');
      assert.ok(hasCoding(plan.category, US_CORE_CATEGORY), JSON.stringify(plan.category));
      assert.ok(hasCoding(plan.category, PA_CATEGORY), JSON.stringify(plan.category));
      assert.equal(plan.subject.reference, `Patient/${patientId}`);
      assert.deepEqual(plan.period, program.period);
      assert.equal(plan.title, program.title);
      assert.equal(plan.identifier[0].value, program.id);
      assert.match(plan.identifier[0].system, /:program$/);
      assert.equal(plan.note, undefined, 'no note without an author and a time (PA Care Plan)');
      for (const p of program.precautions as string[]) assert.ok(plan.description.includes(p), `precaution in description: ${p}`);
      assert.ok(plan.description.includes(program.notes), 'notes in description');

      // Goals: exactly the pushed Goals the program names, in its order.
      assert.equal(goalIds.size, (program.goalIds as string[]).length);
      assert.deepEqual(
        plan.goal.map((g: Json) => g.reference),
        (program.goalIds as string[]).map((g) => `Goal/${goalIds.get(g) as string}`),
      );

      // Diagnoses: the client's Conditions, shared with the goals that name them.
      assert.equal(plan.addresses.length, (program.diagnoses as unknown[]).length);
      const conditions = await search(agent, 'Condition', patientId);
      for (const [i, ref] of (plan.addresses as Json[]).entries()) {
        const id = (ref.reference as string).replace(/^Condition\//, '');
        const condition = conditions.find((c) => c.id === id);
        assert.ok(condition, `${ref.reference as string} resolves`);
        assert.equal(condition.code.text, program.diagnoses[i].text);
        assert.equal(condition.code.coding[0].code, program.diagnoses[i].code.code);
      }

      // Activities: one per prescribed activity, with its FITT prescription.
      const activities = program.activities as Json[];
      assert.equal(plan.activity.length, activities.length);
      activities.forEach((a, i) => {
        const detail = plan.activity[i].detail as Json;
        assert.equal(detail.kind, undefined);
        assert.equal(detail.code.text, a.name);
        assert.deepEqual(detail.code.coding, [{ system: 'http://snomed.info/sct', code: '229065009', display: 'Exercise therapy' }]);
        assert.equal(detail.status, 'scheduled');
        const repeat = detail.scheduledTiming.repeat as Json;
        assert.deepEqual([repeat.frequency, repeat.period, repeat.periodUnit], [a.frequency.timesPerWeek, 1, 'wk']);
        assert.deepEqual(repeat.boundsPeriod, program.period);
        if (a.time.minutes !== undefined) assert.deepEqual([repeat.duration, repeat.durationUnit], [a.time.minutes, 'min']);
        else assert.equal(repeat.duration, undefined);
        assert.match(detail.description, /Type: .+ Frequency: .+ Intensity: .+ Time: .+ per session\./);
        if (a.progression) assert.ok(detail.description.includes(`Progression: ${a.progression as string}`), detail.description);
        if (a.intensity.description) assert.ok(detail.description.includes(a.intensity.description), detail.description);
        if (a.intensity.rpe) assert.ok(detail.description.includes(`RPE ${a.intensity.rpe.low as number}–${a.intensity.rpe.high as number}`), detail.description);
        if (a.time.sets && a.time.repetitions) {
          const sets = `${a.time.sets as number} set${a.time.sets === 1 ? '' : 's'}`;
          assert.ok(detail.description.includes(`${sets} of ${a.time.repetitions as number} repetitions`), detail.description);
        }
        if (a.time.holdSeconds) assert.ok(detail.description.includes(`hold ${a.time.holdSeconds as number} s`), detail.description);
      });

      // The narrative: well-formed, with everything a physician scans for.
      assert.equal(plan.text.status, 'generated');
      const div = plan.text.div as string;
      assertWellFormedXhtml(div);
      assert.ok(div.includes(escapeXml(program.title)));
      assert.ok(div.includes(`Patient/${patientId}`));
      assert.ok(div.includes(`${program.period.start as string} to ${program.period.end as string}`));
      for (const a of activities) {
        assert.ok(div.includes(`<td>${escapeXml(a.name)}</td>`), `activity row: ${a.name as string}`);
        if (a.progression) assert.ok(div.includes(escapeXml(a.progression)));
      }
      for (const d of program.diagnoses as Json[]) assert.ok(div.includes(escapeXml(d.text)), `diagnosis: ${d.text as string}`);
      for (const p of program.precautions as string[]) assert.ok(div.includes(escapeXml(p)), `precaution: ${p}`);
      for (const g of program.goalIds as string[]) assert.ok(div.includes(escapeXml(g)), `goal: ${g}`);
      assert.equal((div.match(/<tr>/g) ?? []).length, activities.length + 1, 'a header row and one row per activity');

      // The same program again: nothing written.
      const again = await push(agent, 'programs', program);
      assert.equal(again.status, 200, JSON.stringify(again.body));
      assert.equal(again.body.status, 'unchanged');
      assert.equal(again.body.provenance, undefined);
      assert.ok((again.body.resources as { action: string }[]).every((r) => r.action === 'unchanged'));
      assert.equal((await carePlanOf(agent, patientId)).meta.versionId, plan.meta.versionId);
    });
  }

  it('a changed program (an activity dropped, a load raised) is a new version of the same CarePlan', async () => {
    const { agent, patientId, program } = await pushScenario('knee-replacement');
    const before = await carePlanOf(agent, patientId);
    const changed = structuredClone(program);
    const dropped = (changed.activities as Json[]).pop() as Json;
    ((changed.activities as Json[])[1] as Json).intensity.load.value = 32.5;
    const res = await push(agent, 'programs', changed);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.status, 'updated');
    const carePlan = (res.body.resources as { type: string; id: string; action: string; version: string }[]).find((r) => r.type === 'CarePlan');
    assert.deepEqual([carePlan?.id, carePlan?.action, carePlan?.version], [before.id, 'updated', '2']);
    assert.ok(res.body.provenance?.id);
    const after = await carePlanOf(agent, patientId);
    assert.equal(after.id, before.id);
    assert.equal(after.meta.versionId, '2');
    assert.equal(after.activity.length, before.activity.length - 1);
    assert.ok(!after.text.div.includes(escapeXml(dropped.name)), 'the dropped activity is gone from the narrative');
    assert.ok(after.activity[1].detail.description.includes('starting load 32.5 kg'), after.activity[1].detail.description);
    const history = await agent.get(`/fhir/CarePlan/${before.id as string}/_history`);
    assert.equal(history.status, 200);
    assert.equal(history.body.total ?? history.body.entry.length, 2);
  });

  it('a minimal program (no diagnoses, goals, precautions or notes; open-ended) maps, and its text is escaped in the narrative', async () => {
    const { agent, patientId } = await pushScenario('knee-replacement', (p) => {
      delete p.diagnoses;
      delete p.goalIds;
      delete p.precautions;
      delete p.notes;
      delete p.period.end;
      p.title = 'Knee <program> & "home" work';
      p.activities = [{ name: 'Walk <outdoors> & stairs', type: 'aerobic', frequency: { timesPerWeek: 7 }, intensity: { description: "Can't sing" }, time: { minutes: 20 } }];
    });
    const plan = await carePlanOf(agent, patientId);
    assert.equal(plan.addresses, undefined);
    assert.equal(plan.goal, undefined);
    assert.deepEqual(plan.period, { start: '2026-10-15' });
    assert.equal(plan.activity.length, 1);
    const detail = plan.activity[0].detail as Json;
    assert.equal(detail.description, "Type: Aerobic (endurance). Frequency: 7 times per week (daily). Intensity: Can't sing. Time: 20 min per session.");
    assert.deepEqual(detail.scheduledTiming.repeat, { boundsPeriod: { start: '2026-10-15' }, frequency: 7, period: 1, periodUnit: 'wk', duration: 20, durationUnit: 'min' });
    assertWellFormedXhtml(plan.text.div);
    assert.ok(plan.text.div.includes('Knee &lt;program&gt; &amp; &quot;home&quot; work'));
    assert.ok(plan.text.div.includes('<td>Walk &lt;outdoors&gt; &amp; stairs</td>'));
    assert.ok(plan.text.div.includes('from 2026-10-15 (open-ended)'));
    assert.ok(!plan.text.div.includes('Diagnoses'));
  });
});
