/** Summary documents for the physician: the FHIR Composition and the PDF (src/summary/report.ts). */
import assert from 'node:assert/strict';
import type { Composition, Condition } from 'fhir/r4.js';
import { reportDiagnoses } from '../src/interactions/send-summary.js';
import type { JsonResource } from '../src/fhir/resource.js';
import { ResourceValidator } from '../src/validation/validator.js';
import {
  buildComposition,
  formatDate,
  pdfText,
  renderPdf,
  reportSections,
  summarizeOutcome,
  type OutcomeMeasure,
  type ReportInput,
} from '../src/summary/report.js';

const MET = 'https://met-fhir-server.dev/fhir/CodeSystem/met-measure';
const ICD10 = 'http://hl7.org/fhir/sid/icd-10-cm';

function typical(): ReportInput {
  return {
    kind: 'progress-report',
    patient: { name: "Margaret O'Neill", birthDate: '1954-07-19', gender: 'female', identifiers: [{ system: 'urn:oid:1.2.3', value: 'MRN-004211', label: 'MRN' }] },
    period: { start: '2024-01-08', end: '2024-03-29' },
    author: { name: 'Jordan Lee, ACSM-CEP', organization: 'MoveWell Clinical Exercise' },
    recipient: { name: 'Dr. Priya Raman' },
    issued: '2024-04-02T10:15:00+02:00',
    diagnoses: [
      { code: { system: ICD10, code: 'M17.11' }, display: 'Unilateral primary osteoarthritis, right knee', onset: '2021-05' },
      { code: { system: ICD10, code: 'I10' }, display: 'Essential (primary) hypertension', onset: '2018' },
    ],
    program: {
      title: 'Knee OA strengthening and walking program',
      period: { start: '2024-01-08', end: '2024-03-29' },
      activities: [
        'Walking: 5x/week, moderate intensity (RPE 12-13), 30 min, flat terrain',
        'Lower-limb resistance (sit-to-stand, step-ups, leg press): 2x/week, 2-3 sets of 10-12 reps at RPE 13-15',
        'Balance training (tandem stance, single-leg stance): 3x/week, 10 min',
      ],
    },
    goals: [
      {
        description: 'Walk further without knee pain limiting',
        target: { measure: '6MWT distance', comparator: '>=', value: 450, unit: 'm', due: '2024-03-31' },
        achievementStatus: { code: 'achieved' },
        latest: { value: 462, unit: 'm', date: '2024-03-27' },
      },
      {
        description: 'Reduce knee pain during daily activities',
        target: { measure: 'Pain (NRS)', comparator: '<=', value: 3, unit: 'points', due: '2024-03-31' },
        achievementStatus: { code: 'improving' },
        latest: { value: 4, unit: 'points', date: '2024-03-27' },
      },
    ],
    outcomes: [
      {
        name: '6-minute walk distance',
        code: { system: MET, code: 'six-minute-walk-distance' },
        unit: 'm',
        betterWhen: 'higher',
        // Out of order on purpose: baseline and now go by date.
        series: [{ date: '2024-02-05', value: 410 }, { date: '2024-01-08', value: 385 }, { date: '2024-03-27', value: 462 }, { date: '2024-03-04', value: 438 }],
      },
      {
        name: 'Timed Up and Go',
        code: { system: 'http://loinc.org', code: '89423-8' },
        unit: 's',
        betterWhen: 'lower',
        series: [{ date: '2024-01-08', value: 11.4 }, { date: '2024-02-05', value: 10.8 }, { date: '2024-03-27', value: 9.6 }],
      },
      {
        name: 'Pain severity (0-10)',
        code: { system: 'http://loinc.org', code: '72514-3' },
        unit: 'points',
        series: [{ date: '2024-01-08', value: 6 }, { date: '2024-03-27', value: 4 }],
      },
      { name: 'Body weight', code: { system: 'http://loinc.org', code: '29463-7' }, unit: 'kg', series: [] },
    ],
    attendance: { planned: 24, attended: 21 },
    adverseEvents: [{ date: '2024-02-14', text: 'Transient right knee swelling after step-ups; load reduced for one week, resolved.' }],
    recommendations: ['Continue the walking program independently; reassess in 12 weeks.', 'Consider review of antihypertensive medication: resting systolic BP remains above 130 mmHg.'],
  };
}

/** A report too long for one page in every section: 40 goals, 12 charted measures, 30 recommendations. */
function long(): ReportInput {
  const base = typical();
  const measure = (i: number): OutcomeMeasure => ({
    name: `Measure ${i + 1}`,
    code: { system: MET, code: `m-${i}` },
    unit: 'm',
    series: Array.from({ length: 14 }, (_v, k) => ({ date: `2024-0${1 + Math.floor(k / 5)}-${String(1 + (k % 5) * 6).padStart(2, '0')}`, value: 300 + i * 5 + k * 3 + (k % 3) })),
  });
  return {
    ...base,
    goals: Array.from({ length: 40 }, (_v, i) => ({ ...(base.goals[i % 2] as ReportInput['goals'][number]), description: `Goal ${i + 1}: ${'a longer description that wraps '.repeat(1 + (i % 3))}` })),
    outcomes: Array.from({ length: 12 }, (_v, i) => measure(i)),
    recommendations: Array.from({ length: 30 }, (_v, i) => `Recommendation ${i + 1}: keep going.`),
  };
}

/** FHIR narrative (https://hl7.org/fhir/R4/narrative.html#xhtml): well-formed XHTML, the allowed elements, no attributes but the root's xmlns. */
const ALLOWED = new Set('a abbr acronym b big blockquote br caption cite code col colgroup dd dfn div dl dt em h1 h2 h3 h4 h5 h6 hr i img kbd li ol p pre q samp small span strong sub sup table tbody td tfoot th thead tr tt ul var'.split(' '));
function narrativeProblems(div: string): string[] {
  const problems: string[] = [];
  const root = '<div xmlns="http://www.w3.org/1999/xhtml">';
  if (!div.startsWith(root) || !div.endsWith('</div>')) problems.push('root must be <div xmlns="http://www.w3.org/1999/xhtml">');
  const stack: string[] = [];
  let text = '';
  const token = /<(\/?)([a-z0-9]+)((?:\s+[a-z:]+="[^"<&]*")*)\s*(\/?)>|&(?:#\d+|#x[0-9a-f]+|amp|lt|gt|quot|apos);|[<&]|[^<&]+/gi;
  for (const m of div.matchAll(token)) {
    const [all, close, name, attrs, selfClose] = m;
    if (all === '<' || all === '&') problems.push(`unescaped '${all}' at ${m.index}`);
    else if (name === undefined) text += all.startsWith('&') ? 'x' : all;
    else {
      if (!ALLOWED.has(name)) problems.push(`element <${name}> is not allowed`);
      if (attrs && !(stack.length === 0 && attrs.trim() === 'xmlns="http://www.w3.org/1999/xhtml"')) problems.push(`attributes on <${name}>`);
      if (close) {
        if (stack.pop() !== name) problems.push(`</${name}> closes nothing open`);
      } else if (!selfClose) stack.push(name);
    }
  }
  if (stack.length > 0) problems.push(`unclosed: ${stack.join(', ')}`);
  if (text.trim() === '') problems.push('no text content');
  return problems;
}

/** The text drawn on the pages of an uncompressed pdfkit PDF: one line per TJ operator. */
function pdfLines(pdf: Buffer): string[] {
  const raw = pdf.toString('latin1');
  return [...raw.matchAll(/\[((?:<[0-9a-f]*>\s*-?[\d.]*\s*)+)\]\s*TJ/g)].map((m) =>
    [...(m[1] as string).matchAll(/<([0-9a-f]*)>/g)].map((h) => Buffer.from(h[1] as string, 'hex').toString('latin1')).join(''),
  );
}
const pageCount = (pdf: Buffer): number => (pdf.toString('latin1').match(/\/Type \/Page\b(?!s)/g) ?? []).length;

const refs = { subject: 'Patient/p1', author: 'Practitioner/met1', custodian: 'Organization/movewell' };

describe('summary report: Composition', () => {
  let validator: ResourceValidator;
  before(() => {
    validator = new ResourceValidator();
  });

  it('is a final LOINC 11506-3 Progress note that the ResourceValidator accepts, narrative included', () => {
    const composition = buildComposition(typical(), { ...refs, id: 'report-1', identifier: { system: 'urn:ietf:rfc:3986', value: 'urn:uuid:7c1b2c4e-2b7e-4f7c-9a55-0d2b3e9d1a01' } });
    assert.deepEqual(validator.problems(composition as unknown as JsonResource), []);
    assert.equal(composition.status, 'final');
    assert.deepEqual(composition.type.coding, [{ system: 'http://loinc.org', code: '11506-3', display: 'Progress note' }]);
    assert.deepEqual(composition.subject, { reference: 'Patient/p1', display: "Margaret O'Neill" });
    assert.deepEqual(composition.author, [{ reference: 'Practitioner/met1', display: 'Jordan Lee, ACSM-CEP' }]);
    assert.equal(composition.date, '2024-04-02T10:15:00+02:00');
    assert.deepEqual(composition.event, [{ period: { start: '2024-01-08', end: '2024-03-29' } }]);
    for (const div of [composition.text?.div, ...(composition.section ?? []).map((s) => s.text?.div)]) {
      assert.deepEqual(narrativeProblems(div ?? ''), [], div);
    }
    assert.match(composition.text?.div ?? '', /Dr\. Priya Raman/);
  });

  it('has the sections in reading order, with LOINC section codes where one fits', () => {
    const sections = (buildComposition(typical(), refs).section ?? []).map((s) => [s.title, s.code?.coding?.[0]?.code]);
    assert.deepEqual(sections, [
      ['Diagnoses', '11450-4'],
      ['Exercise program', '62387-6'],
      ['Goals and progress', '61146-7'],
      ['Outcome measures', '30954-2'],
      ['Attendance', undefined],
      ['Adverse events', undefined],
      ['Recommendations', '18776-5'],
    ]);
  });

  it('a session summary adds the session details after the diagnoses and still validates', () => {
    const input: ReportInput = {
      ...typical(),
      kind: 'session-summary',
      attendance: undefined,
      session: { date: '2024-03-27', durationMinutes: 50, activities: ['Treadmill 20 min at 4.5 km/h'], measurements: [{ name: 'Heart rate, peak', value: 118, unit: '/min' }], notes: 'Tolerated well.' },
    };
    const composition = buildComposition(input, refs);
    assert.deepEqual(validator.problems(composition as unknown as JsonResource), []);
    assert.deepEqual((composition.section ?? []).map((s) => s.title), ['Diagnoses', 'Session details', 'Exercise program', 'Goals and progress', 'Outcome measures', 'Adverse events', 'Recommendations']);
    assert.equal(composition.title, 'Exercise session summary');
    const session = composition.section?.[1]?.text?.div ?? '';
    assert.match(session, /Session on 27 Mar 2024, 50 min\./);
    assert.match(session, /<td>118 \/min<\/td>/);
  });

  it('lists the referenced resources as section entries', () => {
    const composition = buildComposition(typical(), { ...refs, entries: { goals: ['Goal/g1', 'Goal/g2'], outcomes: ['Observation/o1'] } });
    assert.deepEqual(validator.problems(composition as unknown as JsonResource), []);
    const byTitle = new Map((composition.section ?? []).map((s) => [s.title, s.entry]));
    assert.deepEqual(byTitle.get('Goals and progress'), [{ reference: 'Goal/g1' }, { reference: 'Goal/g2' }]);
    assert.deepEqual(byTitle.get('Outcome measures'), [{ reference: 'Observation/o1' }]);
    assert.equal(byTitle.get('Diagnoses'), undefined);
  });

  it('escapes markup and drops control characters in the narrative', () => {
    const input = { ...typical(), recommendations: ['Keep HR < 120 & avoid <script>alert(1)</script>\u0007 "sprints"'] };
    const composition = buildComposition(input, refs);
    assert.deepEqual(validator.problems(composition as unknown as JsonResource), []);
    const div = composition.section?.find((s) => s.title === 'Recommendations')?.text?.div ?? '';
    assert.deepEqual(narrativeProblems(div), []);
    assert.equal(narrativeProblems('<div xmlns="http://www.w3.org/1999/xhtml">a & b<script onload="x()"></script></div>').length >= 3, true, 'the check itself catches bad narrative');
    assert.match(div, /Keep HR &lt; 120 &amp; avoid &lt;script&gt;alert\(1\)&lt;\/script&gt; {2}&quot;sprints&quot;/);
  });

  it('says so when a section has nothing to report', () => {
    const input: ReportInput = { ...typical(), diagnoses: [], goals: [], outcomes: [], adverseEvents: [], recommendations: [], program: undefined };
    const composition: Composition = buildComposition(input, refs);
    assert.deepEqual(validator.problems(composition as unknown as JsonResource), []);
    const texts = (composition.section ?? []).map((s) => s.text?.div.replace(/<[^>]+>/g, ''));
    assert.deepEqual(texts, ['No diagnoses recorded.', 'No program recorded.', 'No goals recorded.', 'No outcome measures recorded.', 'Attended 21 of 24 planned sessions (88%).', 'No adverse events reported.', 'No recommendations.']);
  });
});

describe('summary report: outcome changes', () => {
  it('takes the earliest result as baseline and the latest as now, whatever the input order', () => {
    const walk = typical().outcomes[0] as OutcomeMeasure;
    assert.deepEqual(summarizeOutcome(walk), {
      name: '6-minute walk distance',
      unit: 'm',
      baseline: { date: '2024-01-08', value: 385 },
      now: { date: '2024-03-27', value: 462 },
      change: 77,
      percent: 20,
      decimals: 0,
      direction: 'improved',
    });
  });

  it('rounds the change to the precision of the series and judges it by betterWhen', () => {
    const tug = summarizeOutcome(typical().outcomes[1] as OutcomeMeasure);
    assert.equal(tug?.change, -1.8); // 9.6 - 11.4 is -1.8000000000000007 in floating point
    assert.equal(tug?.percent, -15.8);
    assert.equal(tug?.direction, 'improved'); // lower is better
    const flat = summarizeOutcome({ ...(typical().outcomes[0] as OutcomeMeasure), series: [{ date: '2024-01-01', value: 0 }, { date: '2024-02-01', value: 0 }] });
    assert.equal(flat?.direction, 'unchanged');
    assert.equal(flat?.percent, undefined); // no percentage of a zero baseline
    assert.equal(summarizeOutcome({ ...(typical().outcomes[0] as OutcomeMeasure), series: [] }), undefined);
  });

  it('shows baseline, now and change with units in the outcome table', () => {
    const outcomes = reportSections(typical()).find((s) => s.key === 'outcomes');
    const table = outcomes?.blocks.find((b) => b.kind === 'table');
    assert.deepEqual(table, {
      kind: 'table',
      headers: ['Measure', 'Baseline', 'Now', 'Change'],
      widths: [0.28, 0.22, 0.22, 0.28],
      rows: [
        ['6-minute walk distance', '385 m (8 Jan 2024)', '462 m (27 Mar 2024)', '+77 m (+20.0%), improved'],
        ['Timed Up and Go', '11.4 s (8 Jan 2024)', '9.6 s (27 Mar 2024)', '-1.8 s (-15.8%), improved'],
        ['Pain severity (0-10)', '6 points (8 Jan 2024)', '4 points (27 Mar 2024)', '-2 points (-33.3%)'],
      ],
    });
  });

  it('writes dates day month year, as given (no time zone shift)', () => {
    assert.equal(formatDate('2024-03-05'), '5 Mar 2024');
    assert.equal(formatDate('2024-03-05T23:30:00-05:00'), '5 Mar 2024');
    assert.equal(formatDate('2021-05'), 'May 2021');
    assert.equal(formatDate('2018'), '2018');
  });
});

describe('summary report: PDF', () => {
  it('is a PDF, the same bytes for the same input', async () => {
    const a = await renderPdf(typical());
    const b = await renderPdf(typical());
    assert.equal(a.subarray(0, 5).toString('latin1'), '%PDF-');
    assert.match(a.subarray(-6).toString('latin1'), /%%EOF\s*$/);
    assert.ok(a.equals(b), 'rendering is deterministic');
    assert.match(a.toString('latin1'), /\(D:20240402081500Z\)/); // CreationDate: the issue time, in UTC
  });

  it('shows the header, the sections, the tables and a footer on two pages', async () => {
    const pdf = await renderPdf(typical(), { compress: false });
    assert.equal(pageCount(pdf), 2);
    const lines = pdfLines(pdf);
    for (const expected of ['Exercise progress report', "Margaret O'Neill", '19 Jul 1954', 'MRN MRN-004211', 'Dr. Priya Raman', 'Diagnoses', 'Goals and progress', 'Outcome measures', '+77 m (+20.0%), improved', 'Attended 21 of 24 planned sessions (88%).', 'Page 1 of 2', 'Page 2 of 2']) {
      assert.ok(lines.includes(expected), `missing "${expected}"`);
    }
    assert.ok(lines.includes('Generated 2 Apr 2024 by MoveWell Clinical Exercise'));
    assert.ok(lines.includes('6-minute walk distance (m)'), 'a chart per measure with results');
    assert.ok(!lines.includes('Body weight (kg)'), 'no chart for a measure without results');
  });

  it('breaks a long report over pages, repeating table headers and the patient on every page', async () => {
    const pdf = await renderPdf(long(), { compress: false });
    const pages = pageCount(pdf);
    assert.equal(pages, 5); // header and goals 1-14; goals 15-35; goals 36-40, outcome table, 2 charts; 8 charts; 2 charts and the rest
    const lines = pdfLines(pdf);
    for (let i = 1; i <= pages; i++) assert.ok(lines.includes(`Page ${i} of ${pages}`), `footer of page ${i}`);
    const running = lines.filter((l) => l.startsWith("Margaret O'Neill - born 19 Jul 1954 - Exercise progress report"));
    assert.equal(running.length, pages - 1, 'the running header on every page after the first');
    assert.ok(lines.filter((l) => l === 'Goal').length >= 2, 'the goals table header again after a page break');
    assert.ok(lines.includes('Recommendation 30: keep going.'));
    assert.ok(lines.includes('Measure 12 (m)'));
  });

  it('prints text the built-in Helvetica cannot encode as its nearest WinAnsi form', async () => {
    assert.equal(pdfText('HR ≥ 120 − Łukasz Zoë Ștefan 张'), 'HR >= 120 - ?ukasz Zoë Stefan ?');
    const pdf = await renderPdf({ ...typical(), patient: { ...typical().patient, name: 'Ștefan Łukasz' } }, { compress: false });
    assert.ok(pdfLines(pdf).includes('Stefan ?ukasz'));
  });
});

describe('the diagnoses a report lists', () => {
  const condition = (id: string, code: string, extra: Partial<Condition> = {}): Condition => ({
    resourceType: 'Condition',
    id,
    subject: { reference: 'Patient/p' },
    code: { coding: [{ system: 'http://hl7.org/fhir/sid/icd-10-cm', code }] },
    ...extra,
  });

  it('lists a diagnosis reported by the MET software and pulled from the EHR once, as the EHR has it', () => {
    const reported = condition('met', 'Z96.651');
    const pulled = condition('ehr', 'Z96.651', { meta: { source: 'https://ehr.example.org/fhir/Condition/9/_history/2' } });
    const other = condition('other', 'I10');
    assert.deepEqual(reportDiagnoses([reported, other, pulled]).map((c) => c.id), ['ehr', 'other']);
    assert.deepEqual(reportDiagnoses([pulled, reported]).map((c) => c.id), ['ehr']);
  });

  it('leaves out refuted ones, and those pulled from an EHR linked by a demographic match not yet confirmed', () => {
    const refuted = condition('refuted', 'I10', { verificationStatus: { coding: [{ code: 'refuted' }] } });
    const tag = (endpoint: string): Partial<Condition> => ({ meta: { source: 'https://ehr.example.org/fhir/Condition/1', tag: [{ system: 'https://met-fhir-server.dev/fhir/CodeSystem/ehr-endpoint', code: endpoint }] } });
    const unsure = condition('unsure', 'E11.9', tag('e-unconfirmed'));
    const sure = condition('sure', 'M17.11', tag('e-confirmed'));
    assert.deepEqual(reportDiagnoses([refuted, unsure, sure], new Set(['e-unconfirmed'])).map((c) => c.id), ['sure']);
    assert.deepEqual(reportDiagnoses([unsure, sure]).map((c) => c.id), ['unsure', 'sure']);
  });

  it('leaves out entered-in-error ones and keeps uncoded ones apart', () => {
    const wrong = condition('wrong', 'I10', { verificationStatus: { coding: [{ code: 'entered-in-error' }] } });
    const uncoded = (id: string): Condition => ({ resourceType: 'Condition', id, subject: { reference: 'Patient/p' }, code: { text: 'knee pain' } });
    assert.deepEqual(reportDiagnoses([wrong, uncoded('a'), uncoded('b')]).map((c) => c.id), ['a', 'b']);
  });
});
