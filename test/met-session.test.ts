/**
 * The MET documentation API's session documents (mappings/v1/session.jsonata): each session becomes
 * an Encounter, an Observation per vital sign before and after exercise and per RPE rating, a
 * Procedure (the exercise done) and a DocumentReference (the session as a clinical note).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import type { Agent } from 'supertest';
import { api, uniqueId } from './helpers.js';

// Resources read back as plain JSON trees.
type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

interface Measurement {
  id?: string;
  measure: string;
  context?: string;
  [qualifier: string]: unknown;
}

interface Exercise {
  activityId?: string;
  name: string;
  note?: string;
  rpe?: { value: number; scale: string };
}

interface Session {
  id: string;
  clientId: string;
  programId?: string;
  start: string;
  durationMinutes: number;
  performer: { id?: string; name: string; credentials?: string };
  exercises: Exercise[];
  vitalsBefore?: Measurement[];
  vitalsAfter?: Measurement[];
  adverseEvents: { description: string; severity: string; actionTaken?: string }[];
  note: string;
  nextSteps?: string;
}

const ROOT = new URL('./fixtures/met/', import.meta.url);
const SCENARIOS = ['knee-replacement', 'hypertension', 'post-stroke', 'low-back-pain'];

function fixture<T = Json>(scenario: string, name: string): T {
  return JSON.parse(readFileSync(new URL(`${scenario}/${name}`, ROOT), 'utf8')) as T;
}

function fixtureNames(scenario: string, pattern: RegExp): string[] {
  return readdirSync(new URL(`${scenario}/`, ROOT))
    .filter((f) => pattern.test(f))
    .sort();
}

async function push(agent: Agent, collection: string, body: unknown) {
  return agent.post(`/met/v1/${collection}`).set('Content-Type', 'application/json').set('X-MET-Software', 'TestTrainer 1.0').send(body as object);
}

async function search(agent: Agent, query: string): Promise<Json[]> {
  const res = await agent.get(`/fhir/${query}&_count=500`);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return ((res.body.entry ?? []) as { resource: Json }[]).map((e) => e.resource);
}

function idOf(res: { body: { resources: { type: string; id: string }[] } }, type: string): string | undefined {
  return res.body.resources.find((r) => r.type === type)?.id;
}

function byIdentifier(resources: Json[], value: string): Json[] {
  return resources.filter((r) => (r.identifier as Json[] | undefined)?.some((i) => i.value === value));
}

/** The attachment's text, decoded as UTF-8. */
function noteText(doc: Json): string {
  return Buffer.from(doc.content[0].attachment.data as string, 'base64').toString('utf8');
}

/** start + minutes, written in the start's UTC offset (whole seconds). */
function endOf(start: string, minutes: number): string {
  const offset = /(Z|[+-]\d\d:\d\d)$/.exec(start)?.[1] as string;
  const offsetMinutes = offset === 'Z' ? 0 : (offset.startsWith('-') ? -1 : 1) * (Number(offset.slice(1, 3)) * 60 + Number(offset.slice(4, 6)));
  const local = new Date(Date.parse(start) + minutes * 60_000 + offsetMinutes * 60_000).toISOString();
  return local.slice(0, 19) + offset;
}

/** The part of each rated exercise's RPE Observation: its activity, ':2' … when done again. */
function rpeParts(exercises: Exercise[]): { exercise: Exercise; part: string }[] {
  const seen = new Map<string, number>();
  const parts: { exercise: Exercise; part: string }[] = [];
  for (const x of exercises) {
    assert.ok(x.activityId, 'the example exercises carry their activity');
    const n = (seen.get(x.activityId) ?? 0) + 1;
    seen.set(x.activityId, n);
    if (x.rpe) parts.push({ exercise: x, part: `rpe:${x.activityId}${n > 1 ? `:${n}` : ''}` });
  }
  return parts;
}

/** Pushes a scenario's client, goals and program under fresh ids; returns how to rename its sessions. */
async function pushScenario(agent: Agent, scenario: string, withProgram = true) {
  const suffix = uniqueId('');
  const client = fixture(scenario, 'client.json');
  const clientId = `${String(client.id)}${suffix}`;
  const created = await push(agent, 'clients', { ...client, id: clientId });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const patientId = idOf(created, 'Patient') as string;
  for (const name of fixtureNames(scenario, /^goal-.*\.json$/)) {
    const goal = fixture(scenario, name);
    const res = await push(agent, 'goals', { ...goal, id: `${String(goal.id)}${suffix}`, clientId });
    assert.equal(res.status, 201, `${name}: ${JSON.stringify(res.body)}`);
  }
  let carePlanId: string | undefined;
  if (withProgram) {
    const program = fixture(scenario, 'program.json');
    const res = await push(agent, 'programs', {
      ...program,
      id: `${String(program.id)}${suffix}`,
      clientId,
      goalIds: (program.goalIds as string[]).map((g) => `${g}${suffix}`),
    });
    assert.equal(res.status, 201, `program.json: ${JSON.stringify(res.body)}`);
    carePlanId = idOf(res, 'CarePlan');
  }
  const session = (name: string): Session => {
    const s = fixture<Session>(scenario, name);
    return { ...s, id: `${s.id}${suffix}`, clientId, ...(s.programId ? { programId: `${s.programId}${suffix}` } : {}) };
  };
  return { suffix, patientId, carePlanId, session };
}

describe('MET API: sessions', function () {
  this.timeout(60_000);

  for (const scenario of SCENARIOS) {
    it(`${scenario}: each session is one Encounter, Procedure and note, with an Observation per vital and RPE`, async () => {
      const agent = await api();
      const { suffix, patientId, carePlanId, session } = await pushScenario(agent, scenario);
      const sessions = fixtureNames(scenario, /^session-\d\d\.json$/).map(session);
      assert.equal(sessions.length, 8);
      for (const s of sessions) {
        const res = await push(agent, 'sessions', s);
        assert.equal(res.status, 201, `${s.id}: ${JSON.stringify(res.body)}`);
      }
      const subject = `subject=Patient/${patientId}`;
      const encounters = await search(agent, `Encounter?${subject}`);
      const procedures = await search(agent, `Procedure?${subject}`);
      const notes = await search(agent, `DocumentReference?${subject}`);
      const observationsOf = new Map<string, Json[]>();
      assert.equal(encounters.length, sessions.length, 'one Encounter per session');
      assert.equal(procedures.length, sessions.length, 'one Procedure per session');
      assert.equal(notes.length, sessions.length, 'one DocumentReference per session');

      for (const s of sessions) {
        const end = endOf(s.start, s.durationMinutes);
        const [encounter, ...moreEncounters] = byIdentifier(encounters, s.id);
        assert.ok(encounter && moreEncounters.length === 0, `${s.id}: its Encounter`);
        const encounterRef = `Encounter/${String(encounter.id)}`;
        assert.equal(encounter.status, 'finished');
        assert.equal(encounter.class.code, 'AMB');
        assert.equal(encounter.type[0].text, 'Exercise session');
        assert.deepEqual(encounter.period, { start: s.start, end });
        assert.deepEqual(encounter.length, { value: s.durationMinutes, unit: 'min', system: 'http://unitsofmeasure.org', code: 'min' });
        assert.equal(encounter.subject.reference, `Patient/${patientId}`);
        assert.equal(encounter.participant[0].individual.identifier.value, s.performer.id);
        assert.equal(encounter.participant[0].individual.display, `${s.performer.name}${s.performer.credentials ? `, ${s.performer.credentials}` : ''}`);

        const [procedure, ...moreProcedures] = byIdentifier(procedures, s.id);
        assert.ok(procedure && moreProcedures.length === 0, `${s.id}: its Procedure`);
        assert.equal(procedure.status, 'completed');
        assert.deepEqual(procedure.code.coding, [{ system: 'http://snomed.info/sct', code: '229065009', display: 'Exercise therapy' }]);
        assert.equal(procedure.encounter.reference, encounterRef);
        assert.deepEqual(procedure.performedPeriod, { start: s.start, end });
        assert.equal(procedure.basedOn[0].reference, carePlanId ? `CarePlan/${carePlanId}` : procedure.basedOn[0].reference);
        assert.match(procedure.basedOn[0].reference as string, /^CarePlan\/[0-9a-f-]{36}$/);
        assert.equal(procedure.note.length, s.exercises.length, `${s.id}: one note per exercise`);
        s.exercises.forEach((x, i) => assert.ok((procedure.note[i].text as string).startsWith(`${x.name}`), `${s.id}: exercise ${i} in order`));
        assert.equal((procedure.complication ?? []).length, s.adverseEvents.length);
        s.adverseEvents.forEach((a, i) => assert.ok((procedure.complication[i].text as string).includes(a.description)));
        assert.equal(procedure.followUp?.[0].text, s.nextSteps);
        assert.ok(procedure.outcome.text.startsWith('Tolerated'));

        const [note, ...moreNotes] = byIdentifier(notes, `${s.id}#note`);
        assert.ok(note && moreNotes.length === 0, `${s.id}: its note`);
        assert.equal(note.status, 'current');
        assert.equal(note.docStatus, 'final');
        assert.deepEqual(note.type.coding, [{ system: 'http://loinc.org', code: '11506-3', display: 'Progress note' }]);
        assert.equal(note.category[0].coding[0].code, 'clinical-note');
        assert.equal(note.date, s.start);
        assert.deepEqual(note.context, { encounter: [{ reference: encounterRef }], period: { start: s.start, end } });
        assert.equal(note.content[0].attachment.contentType, 'text/plain; charset=utf-8');
        assert.deepEqual(procedure.report, [{ reference: `DocumentReference/${String(note.id)}` }]);
        const text = noteText(note);
        assert.ok(text.includes(s.note), `${s.id}: the note's text holds the professional's note`);
        for (const x of s.exercises) {
          assert.ok(text.includes(x.name), `${s.id}: ${x.name} in the note`);
          if (x.note) assert.ok(text.includes(x.note), `${s.id}: the remark on ${x.name} in the note (UTF-8)`);
        }
        if (s.nextSteps) assert.ok(text.includes(s.nextSteps));
        for (const a of s.adverseEvents) assert.ok(text.includes(a.description));
        assert.match(text, new RegExp(`Date: ${s.start.slice(0, 10)}, ${s.start.slice(11, 16)} to ${end.slice(11, 16)}`));

        const observations = await search(agent, `Observation?${subject}&encounter=${encounterRef}`);
        observationsOf.set(s.id, observations);
        const rated = rpeParts(s.exercises);
        const vitals = [
          ...(s.vitalsBefore ?? []).map((m) => ({ m, part: `before:${String(m.id)}`, context: m.context ?? 'pre-exercise', date: s.start })),
          ...(s.vitalsAfter ?? []).map((m) => ({ m, part: `after:${String(m.id)}`, context: m.context ?? 'post-exercise', date: end })),
        ];
        assert.equal(observations.length, vitals.length + rated.length, `${s.id}: an Observation per vital and per RPE`);
        for (const v of vitals) {
          const [o] = byIdentifier(observations, `${s.id}#${v.part}`);
          assert.ok(o, `${s.id}: the Observation of ${v.part}`);
          assert.equal(o.status, 'final');
          assert.equal(o.note[0].text, `Measured ${v.context === 'pre-exercise' ? 'before exercise' : v.context === 'post-exercise' ? 'after exercise' : v.context === 'rest' ? 'at rest' : 'during exercise'}`);
          assert.equal(o.effectiveDateTime, v.date);
          assert.equal(o.encounter.reference, encounterRef);
        }
        for (const r of rated) {
          const [o] = byIdentifier(observations, `${s.id}#${r.part}`);
          assert.ok(o, `${s.id}: the RPE of ${r.part}`);
          assert.equal(o.code.coding[0].code, `rpe-${String(r.exercise.rpe?.scale)}`);
          assert.deepEqual(o.valueQuantity, { value: r.exercise.rpe?.value, unit: 'score', system: 'http://unitsofmeasure.org', code: '{score}' });
          assert.deepEqual(o.note.map((n: Json) => n.text), ['Measured during exercise', `Exercise: ${r.exercise.name}`]);
          assert.equal(o.effectiveDateTime, s.start);
        }
      }

      // Goal progress reads the session vitals by their part names (documents.json): a goal on a
      // vital taken before exercise names the last session's Observation of it as its latest result.
      const goals = await search(agent, `Goal?${subject}`);
      const last = sessions.at(-1) as Session;
      let tracked = 0;
      for (const name of fixtureNames(scenario, /^goal-.*\.json$/)) {
        const target = fixture(scenario, name).target as Json;
        const qualifiers = ['side', 'position', 'joint', 'motion', 'device'].filter((q) => target[q] !== undefined);
        const results = (last.vitalsBefore ?? []).filter((m) => m.measure === target.measure && qualifiers.every((q) => m[q] === target[q]));
        if (results.length === 0) continue;
        const [goal] = byIdentifier(goals, `${String(fixture(scenario, name).id)}${suffix}`);
        const expected = results.map((m) => `Observation/${String(byIdentifier(observationsOf.get(last.id) ?? [], `${last.id}#before:${String(m.id)}`)[0]?.id)}`);
        assert.ok(expected.includes(goal?.outcomeReference?.[0].reference as string), `${name}: ${JSON.stringify(goal?.outcomeReference)} is one of ${expected.join(', ')}`);
        tracked += 1;
      }
      assert.equal(tracked, { hypertension: 1, 'low-back-pain': 1 }[scenario] ?? 0, 'goals on a vital sign');
    });
  }

  it('the same session again changes nothing; without a vital, its Observation is entered-in-error', async () => {
    const agent = await api();
    // No program: the Procedure names a CarePlan that does not exist yet, which the server accepts.
    const { patientId, session } = await pushScenario(agent, 'knee-replacement', false);
    const s = session('session-01.json');
    const first = await push(agent, 'sessions', s);
    assert.equal(first.status, 201, JSON.stringify(first.body));
    const procedure = await agent.get(`/fhir/Procedure/${String(idOf(first, 'Procedure'))}`);
    assert.match(procedure.body.basedOn[0].reference as string, /^CarePlan\//);

    const again = await push(agent, 'sessions', s);
    assert.equal(again.status, 200, JSON.stringify(again.body));
    assert.equal(again.body.status, 'unchanged');
    assert.equal(again.body.provenance, undefined);
    assert.ok((again.body.resources as { action: string }[]).every((r) => r.action === 'unchanged'));

    const encounterId = idOf(first, 'Encounter') as string;
    const before = await search(agent, `Observation?subject=Patient/${patientId}&encounter=Encounter/${encounterId}`);
    const postHr = byIdentifier(before, `${s.id}#after:post-hr`)[0] as Json;
    const changed = { ...s, vitalsAfter: (s.vitalsAfter ?? []).filter((m) => m.id !== 'post-hr') };
    const res = await push(agent, 'sessions', changed);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.status, 'updated');
    const actions = (res.body.resources as { type: string; id: string; action: string }[]).map((r) => `${r.type}/${r.id}:${r.action}`);
    assert.ok(actions.includes(`Observation/${String(postHr.id)}:retired`), actions.join(' '));
    assert.ok(actions.includes(`Encounter/${encounterId}:unchanged`));
    assert.ok(actions.some((a) => a.startsWith('DocumentReference/') && a.endsWith(':updated')), 'the note no longer lists it');
    const retired = await agent.get(`/fhir/Observation/${String(postHr.id)}`);
    assert.equal(retired.body.status, 'entered-in-error');
    assert.equal(retired.body.meta.versionId, '2');
    const after = await search(agent, `Observation?subject=Patient/${patientId}&encounter=Encounter/${encounterId}`);
    assert.equal(after.filter((o) => o.status === 'final').length, before.length - 1);
    const note = await agent.get(`/fhir/DocumentReference/${String(idOf(res, 'DocumentReference'))}`);
    const vitalsAfterText = noteText(note.body).split('Vitals after exercise:')[1]?.split('\n\n')[0] ?? '';
    assert.ok(!vitalsAfterText.includes('Heart rate') && vitalsAfterText.includes('Blood pressure'), vitalsAfterText);
  });

  it('a session stopped before any exercise is a not-done Procedure; the note keeps every character', async () => {
    const agent = await api();
    const { patientId, session } = await pushScenario(agent, 'hypertension', false);
    const base = session('session-05.json');
    const note = 'Resting BP 182/104 mmHg at screening (limit 160/100) → no exercise today. Rechecked after 10 min: 178/102, asymptomatic. ½ tablet of amlodipine missed; “physician notified” — Zoë 😀';
    const s: Session = { ...base, programId: undefined, exercises: [], vitalsAfter: undefined, note, nextSteps: undefined, start: '2026-10-30T23:40-05:00', durationMinutes: 25 };
    const res = await push(agent, 'sessions', s);
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const procedure = (await agent.get(`/fhir/Procedure/${String(idOf(res, 'Procedure'))}`)).body;
    assert.equal(procedure.status, 'not-done');
    assert.equal(procedure.note, undefined);
    assert.equal(procedure.basedOn, undefined);
    assert.equal(procedure.followUp, undefined);
    // A start without seconds is written with them, and the end crosses midnight in its offset.
    assert.deepEqual(procedure.performedPeriod, { start: '2026-10-30T23:40:00-05:00', end: '2026-10-31T00:05:00-05:00' });
    const doc = (await agent.get(`/fhir/DocumentReference/${String(idOf(res, 'DocumentReference'))}`)).body;
    assert.equal(doc.date, '2026-10-30T23:40:00-05:00');
    const text = noteText(doc);
    assert.ok(text.includes(note), text);
    assert.ok(text.includes('Exercises: none'));
    assert.ok(text.includes('Date: 2026-10-30, 23:40 to 2026-10-31 00:05 (UTC-05:00), 25 min'), text);
    assert.equal(Buffer.from(text, 'utf8').toString('base64'), doc.content[0].attachment.data);
    const observations = await search(agent, `Observation?subject=Patient/${patientId}`);
    assert.equal(observations.length, (base.vitalsBefore ?? []).length, 'the vitals before, no RPE');
  });
});
