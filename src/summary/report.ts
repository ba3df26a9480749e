/**
 * The summary documents a MET sends to the client's physician: a progress report over a period or
 * the summary of one session, as a FHIR R4 Composition (https://hl7.org/fhir/R4/composition.html)
 * and as a PDF. Pure: no storage, no delivery; the caller supplies a plain `ReportInput`.
 *
 * Both renderings come from one section model (`reportSections`), so the narrative the EHR shows
 * and the PDF the physician reads say the same thing. Codes: document type LOINC 11506-3 "Progress
 * note" (https://loinc.org/11506-3); section codes from LOINC's C-CDA progress-note and care-plan
 * section panels (81216-4, 81215-6), see SECTION_CODES. Attendance, adverse events and session
 * details have no fitting LOINC section code: they carry a title only, no invented code.
 */
import PDFDocument from 'pdfkit';
import type { Composition, CompositionSection } from 'fhir/r4.js';

// ---------------------------------------------------------------------------------------------
// Input

export type Gender = 'male' | 'female' | 'other' | 'unknown';
/** http://terminology.hl7.org/CodeSystem/goal-achievement (R4), with its displays. */
export const GOAL_ACHIEVEMENT = {
  'in-progress': 'In Progress',
  improving: 'Improving',
  worsening: 'Worsening',
  'no-change': 'No Change',
  achieved: 'Achieved',
  sustaining: 'Sustaining',
  'not-achieved': 'Not Achieved',
  'no-progress': 'No Progress',
  'not-attainable': 'Not Attainable',
} as const;
export type GoalAchievementCode = keyof typeof GOAL_ACHIEVEMENT;

export interface Code {
  system: string;
  code: string;
}
/** FHIR date (`2024-03-01`) or dateTime (`2024-03-01T09:30:00+01:00`). */
export type FhirDate = string;
export interface Period {
  start: FhirDate;
  end: FhirDate;
}

export interface ReportPatient {
  name: string;
  birthDate: FhirDate;
  gender: Gender;
  /** `label` is how the physician knows it ("MRN", "NHS number"). */
  identifiers: readonly { system?: string; value: string; label?: string }[];
}
export interface Diagnosis {
  code?: Code;
  display: string;
  onset?: FhirDate;
}
export interface Program {
  title: string;
  /** FITT prescription, one activity a line ("Walking: 5x/week, moderate (RPE 12-13), 30 min"). */
  activities: readonly string[];
  period: { start: FhirDate; end?: FhirDate };
}
export interface GoalProgress {
  description: string;
  target?: { measure: string; comparator?: '<' | '<=' | '>=' | '>'; value: number; unit: string; due?: FhirDate };
  achievementStatus: { code: GoalAchievementCode; display?: string };
  latest?: { value: number; unit: string; date?: FhirDate };
}
export interface OutcomeMeasure {
  name: string;
  /** LOINC, or our own code system for measures LOINC lacks (mappings/MEASURES.md). */
  code: Code;
  /** The unit as the physician reads it ("m", "s", "kg", "points"). */
  unit: string;
  series: readonly { date: FhirDate; value: number }[];
  /** Which way is better; when given, the change is called improved or worsened. */
  betterWhen?: 'higher' | 'lower';
}
export interface SessionDetails {
  date: FhirDate;
  durationMinutes?: number;
  activities: readonly string[];
  measurements?: readonly { name: string; value: number | string; unit?: string }[];
  notes?: string;
}
interface ReportCommon {
  patient: ReportPatient;
  period: Period;
  author: { name: string; organization: string };
  recipient: { name: string };
  /** When the report was issued: Composition.date, the PDF's CreationDate and "generated" line. */
  issued: FhirDate;
  diagnoses: readonly Diagnosis[];
  program?: Program;
  goals: readonly GoalProgress[];
  outcomes: readonly OutcomeMeasure[];
  attendance?: { planned: number; attended: number };
  adverseEvents: readonly { date: FhirDate; text: string }[];
  recommendations: readonly string[];
}
export type ReportInput = ReportCommon &
  ({ kind: 'progress-report'; session?: undefined } | { kind: 'session-summary'; session: SessionDetails });

// ---------------------------------------------------------------------------------------------
// Codes

const LOINC = 'http://loinc.org';
/** https://loinc.org/11506-3 (LOINC 2.78); also the first code of C-CDA's ProgressNoteDocumentTypeCode. */
export const PROGRESS_NOTE = { system: LOINC, code: '11506-3', display: 'Progress note' } as const;

export type SectionKey = 'diagnoses' | 'session' | 'program' | 'goals' | 'outcomes' | 'attendance' | 'adverseEvents' | 'recommendations';

/**
 * LOINC section codes, where one fits. Sources: loinc.org 11506-3 (panel 81216-4, progress note
 * sections: 11450-4, 30954-2, 18776-5), cdn.loinc.org/18776-5 (panel 81215-6, care plan sections:
 * 61146-7, 62387-6); displays are the LOINC long common names (61146-7 and 62387-6 also in R4's
 * c80-doc-typecodes, 30954-2 in R4's doc-section-codes).
 */
export const SECTION_CODES: Partial<Record<SectionKey, { code: string; display: string }>> = {
  diagnoses: { code: '11450-4', display: 'Problem list - Reported' },
  program: { code: '62387-6', display: 'Interventions Narrative' },
  goals: { code: '61146-7', display: 'Goals Narrative' },
  outcomes: { code: '30954-2', display: 'Relevant diagnostic tests/laboratory data note' },
  recommendations: { code: '18776-5', display: 'Plan of care note' },
};

// ---------------------------------------------------------------------------------------------
// Derived values and formatting

export interface OutcomeSummary {
  name: string;
  unit: string;
  baseline: { date: FhirDate; value: number };
  now: { date: FhirDate; value: number };
  /** now − baseline, rounded to the precision of the series. */
  change: number;
  /** Relative change in %, absent when the baseline is 0. */
  percent?: number;
  decimals: number;
  direction?: 'improved' | 'worsened' | 'unchanged';
}

const decimalsOf = (n: number): number => (Number.isInteger(n) ? 0 : (String(n).split('.')[1] ?? '').length);
const round = (n: number, decimals: number): number => Number(n.toFixed(decimals));

/** The series in date order (stable). */
const chronological = (m: OutcomeMeasure) => [...m.series].sort((a, b) => (a.date < b.date ? -1 : a.date > b.date ? 1 : 0));

/** Baseline (first result), now (last result) and the change; undefined without results. */
export function summarizeOutcome(m: OutcomeMeasure): OutcomeSummary | undefined {
  const series = chronological(m);
  const baseline = series[0];
  const now = series[series.length - 1];
  if (!baseline || !now) return undefined;
  const decimals = Math.min(4, Math.max(...series.map((p) => decimalsOf(p.value))));
  const change = round(now.value - baseline.value, decimals);
  const summary: OutcomeSummary = { name: m.name, unit: m.unit, baseline, now, change, decimals };
  if (baseline.value !== 0) summary.percent = round((change / Math.abs(baseline.value)) * 100, 1);
  if (m.betterWhen) summary.direction = change === 0 ? 'unchanged' : (change > 0) === (m.betterWhen === 'higher') ? 'improved' : 'worsened';
  return summary;
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
/** `2024-03-05…` → "5 Mar 2024": unambiguous whichever the reader's convention. The date as written (no time zone shift). */
export function formatDate(date: FhirDate): string {
  const m = /^(\d{4})(?:-(\d\d)(?:-(\d\d))?)?/.exec(date);
  if (!m) return date;
  const [, y, mo, d] = m;
  const month = mo ? MONTHS[Number(mo) - 1] : undefined;
  return [d ? String(Number(d)) : undefined, month, y].filter(Boolean).join(' ');
}
const formatPeriod = (p: { start: FhirDate; end?: FhirDate }): string => `${formatDate(p.start)} – ${p.end ? formatDate(p.end) : 'ongoing'}`;
const withUnit = (value: string, unit: string): string => (unit === '' ? value : unit === '%' ? `${value}%` : `${value} ${unit}`);
const fixed = (n: number, decimals: number): string => n.toFixed(decimals);
const signed = (n: number, decimals: number): string => (n > 0 ? '+' : '') + fixed(n, decimals);

export function formatChange(s: OutcomeSummary): string {
  const parts = [withUnit(signed(s.change, s.decimals), s.unit)];
  if (s.percent !== undefined) parts.push(`(${signed(s.percent, 1)}%)`);
  const text = parts.join(' ');
  return s.direction ? `${text}, ${s.direction}` : text;
}

const GENDER: Record<Gender, string> = { male: 'Male', female: 'Female', other: 'Other', unknown: 'Unknown' };

// ---------------------------------------------------------------------------------------------
// The section model both renderings share

export type Block =
  | { kind: 'paragraph'; text: string }
  | { kind: 'list'; items: string[] }
  | { kind: 'table'; headers: string[]; rows: string[][]; widths: number[] }
  | { kind: 'charts'; measures: OutcomeMeasure[] };

export interface ReportSection {
  key: SectionKey;
  title: string;
  blocks: Block[];
}

export const reportTitle = (input: ReportInput): string => (input.kind === 'progress-report' ? 'Exercise progress report' : 'Exercise session summary');

function goalRow(g: GoalProgress): string[] {
  const t = g.target;
  const target = t ? `${t.measure} ${t.comparator ?? ''}${t.comparator ? ' ' : ''}${withUnit(String(t.value), t.unit)}${t.due ? ` by ${formatDate(t.due)}` : ''}` : '-';
  const latest = g.latest ? `${withUnit(String(g.latest.value), g.latest.unit)}${g.latest.date ? ` (${formatDate(g.latest.date)})` : ''}` : '-';
  return [g.description, target, latest, g.achievementStatus.display ?? GOAL_ACHIEVEMENT[g.achievementStatus.code]];
}

/** The sections, in reading order, with their content as text. */
export function reportSections(input: ReportInput): ReportSection[] {
  const none = (text: string): Block[] => [{ kind: 'paragraph', text }];
  const sections: ReportSection[] = [];
  sections.push({
    key: 'diagnoses',
    title: 'Diagnoses',
    blocks: input.diagnoses.length === 0 ? none('No diagnoses recorded.') : [{
      kind: 'list',
      items: input.diagnoses.map((d) => `${d.display}${d.code ? ` (${d.code.code})` : ''}${d.onset ? `, onset ${formatDate(d.onset)}` : ''}`),
    }],
  });
  if (input.kind === 'session-summary') {
    const s = input.session;
    const blocks: Block[] = [{ kind: 'paragraph', text: `Session on ${formatDate(s.date)}${s.durationMinutes !== undefined ? `, ${s.durationMinutes} min` : ''}.` }];
    if (s.activities.length > 0) blocks.push({ kind: 'list', items: [...s.activities] });
    if (s.measurements && s.measurements.length > 0) {
      blocks.push({ kind: 'table', headers: ['Measurement', 'Value'], widths: [0.6, 0.4], rows: s.measurements.map((m) => [m.name, withUnit(String(m.value), m.unit ?? '')]) });
    }
    if (s.notes) blocks.push({ kind: 'paragraph', text: s.notes });
    sections.push({ key: 'session', title: 'Session details', blocks });
  }
  const p = input.program;
  sections.push({
    key: 'program',
    title: 'Exercise program',
    blocks: p ? [{ kind: 'paragraph', text: `${p.title} (${formatPeriod(p.period)})` }, ...(p.activities.length > 0 ? [{ kind: 'list' as const, items: [...p.activities] }] : [])] : none('No program recorded.'),
  });
  sections.push({
    key: 'goals',
    title: 'Goals and progress',
    blocks: input.goals.length === 0 ? none('No goals recorded.') : [{ kind: 'table', headers: ['Goal', 'Target', 'Latest', 'Status'], widths: [0.34, 0.3, 0.2, 0.16], rows: input.goals.map(goalRow) }],
  });
  const summaries = input.outcomes.flatMap((m) => {
    const s = summarizeOutcome(m);
    return s ? [s] : [];
  });
  sections.push({
    key: 'outcomes',
    title: 'Outcome measures',
    blocks: summaries.length === 0 ? none('No outcome measures recorded.') : [
      {
        kind: 'table',
        headers: ['Measure', 'Baseline', 'Now', 'Change'],
        widths: [0.28, 0.22, 0.22, 0.28],
        rows: summaries.map((s) => [
          s.name,
          `${withUnit(fixed(s.baseline.value, s.decimals), s.unit)} (${formatDate(s.baseline.date)})`,
          `${withUnit(fixed(s.now.value, s.decimals), s.unit)} (${formatDate(s.now.date)})`,
          formatChange(s),
        ]),
      },
      { kind: 'charts', measures: input.outcomes.filter((m) => m.series.length > 0) },
    ],
  });
  const a = input.attendance;
  if (a) {
    const share = a.planned > 0 ? ` (${Math.round((a.attended / a.planned) * 100)}%)` : '';
    sections.push({ key: 'attendance', title: 'Attendance', blocks: none(`Attended ${a.attended} of ${a.planned} planned sessions${share}.`) });
  }
  sections.push({
    key: 'adverseEvents',
    title: 'Adverse events',
    blocks: input.adverseEvents.length === 0 ? none('No adverse events reported.') : [{ kind: 'list', items: input.adverseEvents.map((e) => `${formatDate(e.date)}: ${e.text}`) }],
  });
  sections.push({
    key: 'recommendations',
    title: 'Recommendations',
    blocks: input.recommendations.length === 0 ? none('No recommendations.') : [{ kind: 'list', items: [...input.recommendations] }],
  });
  return sections;
}

// ---------------------------------------------------------------------------------------------
// FHIR Composition

/** References the caller has for the resources the document is about. */
export interface CompositionRefs {
  /** `Patient/…` */
  subject: string;
  /** `Practitioner/…`, `PractitionerRole/…` or `Organization/…`: the MET. */
  author: string;
  /** `Organization/…`: the MET's organization, which keeps the original. */
  custodian?: string;
  encounter?: string;
  id?: string;
  identifier?: { system: string; value: string };
  /** Resources each section is about (Condition, CarePlan, Goal, Observation, …). */
  entries?: Partial<Record<SectionKey, readonly string[]>>;
}

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F]/g;
/** FHIR strings hold no control characters but tab, CR and LF (https://hl7.org/fhir/R4/datatypes.html#string). */
const clean = (text: string): string => text.replace(CONTROL, ' ');
const XML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
/** Text as XHTML character data. */
export const escapeXml = (text: string): string => clean(text).replace(/[&<>"']/g, (c) => XML_ESCAPES[c] as string);
const xhtml = (inner: string): string => `<div xmlns="http://www.w3.org/1999/xhtml">${inner}</div>`;

function blockXhtml(block: Block): string {
  switch (block.kind) {
    case 'paragraph':
      return `<p>${escapeXml(block.text)}</p>`;
    case 'list':
      return `<ul>${block.items.map((i) => `<li>${escapeXml(i)}</li>`).join('')}</ul>`;
    case 'table': {
      const head = `<thead><tr>${block.headers.map((h) => `<th>${escapeXml(h)}</th>`).join('')}</tr></thead>`;
      const body = `<tbody>${block.rows.map((r) => `<tr>${r.map((c) => `<td>${escapeXml(c)}</td>`).join('')}</tr>`).join('')}</tbody>`;
      return `<table>${head}${body}</table>`;
    }
    case 'charts':
      return ''; // the table says it in text; charts are for the PDF
  }
}

/** Label/value pairs of the document header, shared by the Composition narrative and the PDF. */
function headerFields(input: ReportInput): [string, string][] {
  const ids = input.patient.identifiers.map((i) => (i.label ? `${i.label} ${i.value}` : i.value)).join(', ');
  return [
    ['Patient', input.patient.name],
    ['Date of birth', formatDate(input.patient.birthDate)],
    ['Sex', GENDER[input.patient.gender]],
    ...(ids ? [['Identifiers', ids] as [string, string]] : []),
    ['Period', formatPeriod(input.period)],
    ['Author', input.author.name],
    ['Organization', input.author.organization],
    ['Recipient', input.recipient.name],
    ['Issued', formatDate(input.issued)],
  ];
}

export function buildComposition(input: ReportInput, refs: CompositionRefs): Composition {
  const sections: CompositionSection[] = reportSections(input).map((s) => {
    const code = SECTION_CODES[s.key];
    const entries = refs.entries?.[s.key] ?? [];
    return {
      title: s.title,
      ...(code ? { code: { coding: [{ system: LOINC, code: code.code, display: code.display }] } } : {}),
      text: { status: 'generated', div: xhtml(s.blocks.map(blockXhtml).join('')) },
      ...(entries.length > 0 ? { entry: entries.map((reference) => ({ reference })) } : {}),
    };
  });
  const title = reportTitle(input);
  const header = headerFields(input).map(([k, v]) => `<tr><th>${escapeXml(k)}</th><td>${escapeXml(v)}</td></tr>`).join('');
  return {
    resourceType: 'Composition',
    ...(refs.id ? { id: refs.id } : {}),
    text: { status: 'generated', div: xhtml(`<h1>${escapeXml(title)}</h1><table><tbody>${header}</tbody></table>`) },
    ...(refs.identifier ? { identifier: refs.identifier } : {}),
    status: 'final',
    type: { coding: [{ ...PROGRESS_NOTE }], text: title },
    // R4 binds category to DocumentClassValueSet (example), where 11506-3 is the progress-note class.
    category: [{ coding: [{ ...PROGRESS_NOTE }] }],
    subject: { reference: refs.subject, display: clean(input.patient.name) },
    ...(refs.encounter ? { encounter: { reference: refs.encounter } } : {}),
    date: input.issued,
    author: [{ reference: refs.author, display: clean(input.author.name) }],
    title,
    ...(refs.custodian ? { custodian: { reference: refs.custodian, display: clean(input.author.organization) } } : {}),
    event: [{ period: { start: input.period.start, end: input.period.end } }],
    section: sections,
  };
}

// ---------------------------------------------------------------------------------------------
// PDF

export interface RenderOptions {
  /** Compress page content (default true). Tests turn it off to read the text. */
  compress?: boolean;
}

const WIN_ANSI_EXTRA = new Set('€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ');
const REPLACEMENTS: Record<string, string> = { '≥': '>=', '≤': '<=', '−': '-', '→': '->', '←': '<-', '≠': '!=', '\t': ' ' };
/**
 * The built-in Helvetica encodes WinAnsi (cp1252) only; any other character would print as
 * garbage. Known symbols are spelled out, accented letters lose their accent, the rest becomes '?'.
 */
export function pdfText(text: string): string {
  let out = '';
  for (const ch of clean(text)) {
    const c = ch.codePointAt(0) as number;
    if (ch === '\n' || (c >= 0x20 && c <= 0x7e) || (c >= 0xa0 && c <= 0xff) || WIN_ANSI_EXTRA.has(ch)) out += ch;
    else if (ch in REPLACEMENTS) out += REPLACEMENTS[ch] as string;
    else {
      const base = ch.normalize('NFD').replace(/[\u0300-\u036f]/g, '');
      out += base !== ch && [...base].every((b) => (b.codePointAt(0) as number) < 0x7f) ? base : '?';
    }
  }
  return out;
}

type Doc = PDFKit.PDFDocument;
const A4 = { width: 595.28, height: 841.89 };
const MARGIN = { top: 64, bottom: 56, left: 50, right: 50 };
const CONTENT_WIDTH = A4.width - MARGIN.left - MARGIN.right;
const BOTTOM = A4.height - MARGIN.bottom;
const COLOR = { text: '#111111', muted: '#555555', rule: '#999999', fill: '#eeeeee', line: '#1f4e79', grid: '#dddddd' };
const FONT = { regular: 'Helvetica', bold: 'Helvetica-Bold' };

/** A new page when fewer than `height` points are left. */
function ensure(doc: Doc, height: number): void {
  if (doc.y + height > BOTTOM) doc.addPage();
}

function drawHeader(doc: Doc, input: ReportInput): void {
  doc.font(FONT.bold).fontSize(18).fillColor(COLOR.text).text(pdfText(reportTitle(input)), MARGIN.left, MARGIN.top - 24, { width: CONTENT_WIDTH });
  doc.moveDown(0.4);
  const fields = headerFields(input);
  const half = Math.ceil(fields.length / 2);
  const columns = [fields.slice(0, half), fields.slice(half)];
  const top = doc.y;
  let bottom = top;
  columns.forEach((column, i) => {
    const x = MARGIN.left + i * (CONTENT_WIDTH / 2);
    let y = top;
    for (const [label, value] of column) {
      doc.font(FONT.bold).fontSize(8).fillColor(COLOR.muted).text(pdfText(label.toUpperCase()), x, y, { width: 80 });
      doc.font(FONT.regular).fontSize(10).fillColor(COLOR.text).text(pdfText(value), x + 82, y - 1, { width: CONTENT_WIDTH / 2 - 90 });
      y = Math.max(doc.y, y + 12) + 3;
    }
    bottom = Math.max(bottom, y);
  });
  doc.moveTo(MARGIN.left, bottom + 4).lineTo(MARGIN.left + CONTENT_WIDTH, bottom + 4).lineWidth(1).strokeColor(COLOR.rule).stroke();
  doc.x = MARGIN.left;
  doc.y = bottom + 14;
}

function drawSectionTitle(doc: Doc, title: string): void {
  ensure(doc, 60); // a title never ends a page alone
  doc.moveDown(0.3);
  doc.font(FONT.bold).fontSize(12).fillColor(COLOR.line).text(pdfText(title), MARGIN.left, doc.y, { width: CONTENT_WIDTH });
  const y = doc.y + 1;
  doc.moveTo(MARGIN.left, y).lineTo(MARGIN.left + CONTENT_WIDTH, y).lineWidth(0.5).strokeColor(COLOR.line).stroke();
  doc.y = y + 5;
}

function drawParagraph(doc: Doc, text: string): void {
  doc.font(FONT.regular).fontSize(10).fillColor(COLOR.text);
  ensure(doc, Math.min(doc.heightOfString(pdfText(text), { width: CONTENT_WIDTH }), 40));
  doc.text(pdfText(text), MARGIN.left, doc.y, { width: CONTENT_WIDTH });
  doc.moveDown(0.3);
}

function drawList(doc: Doc, items: readonly string[]): void {
  doc.font(FONT.regular).fontSize(10).fillColor(COLOR.text);
  for (const item of items) {
    const text = pdfText(item);
    ensure(doc, Math.min(doc.heightOfString(text, { width: CONTENT_WIDTH - 14 }), 40));
    const y = doc.y;
    doc.circle(MARGIN.left + 4, y + 4.5, 1.6).fill(COLOR.text);
    doc.text(text, MARGIN.left + 14, y, { width: CONTENT_WIDTH - 14 });
    doc.y += 2;
  }
  doc.x = MARGIN.left;
  doc.moveDown(0.2);
}

function drawTable(doc: Doc, headers: readonly string[], rows: readonly string[][], fractions: readonly number[]): void {
  const pad = 4;
  const widths = fractions.map((f) => f * CONTENT_WIDTH);
  const heightOf = (cells: readonly string[], font: string): number => {
    doc.font(font).fontSize(9);
    return Math.max(...cells.map((c, i) => doc.heightOfString(pdfText(c), { width: (widths[i] ?? 0) - 2 * pad }))) + 2 * pad;
  };
  const drawRow = (cells: readonly string[], font: string, fill?: string): void => {
    const h = Math.min(heightOf(cells, font), BOTTOM - MARGIN.top - 20);
    const y = doc.y;
    if (fill) doc.rect(MARGIN.left, y, CONTENT_WIDTH, h).fill(fill);
    let x = MARGIN.left;
    cells.forEach((c, i) => {
      const w = widths[i] ?? 0;
      doc.font(font).fontSize(9).fillColor(COLOR.text).text(pdfText(c), x + pad, y + pad, { width: w - 2 * pad, height: h - 2 * pad, ellipsis: true });
      x += w;
    });
    doc.moveTo(MARGIN.left, y + h).lineTo(MARGIN.left + CONTENT_WIDTH, y + h).lineWidth(0.4).strokeColor(COLOR.rule).stroke();
    doc.y = y + h;
  };
  ensure(doc, heightOf(headers, FONT.bold) + heightOf(rows[0] ?? [], FONT.regular));
  drawRow(headers, FONT.bold, COLOR.fill);
  for (const row of rows) {
    if (doc.y + heightOf(row, FONT.regular) > BOTTOM) {
      doc.addPage();
      drawRow(headers, FONT.bold, COLOR.fill); // the header again on the new page
    }
    drawRow(row, FONT.regular);
  }
  doc.x = MARGIN.left;
  doc.y += 8;
}

const CHART = { height: 150, gap: 14, perRow: 2 };

/** A small line chart of one measure: axes, points, value labels, first and last date. */
function drawChart(doc: Doc, m: OutcomeMeasure, x: number, y: number, w: number, h: number): void {
  const series = chronological(m);
  doc.rect(x, y, w, h).lineWidth(0.5).strokeColor(COLOR.grid).stroke();
  doc.font(FONT.bold).fontSize(9).fillColor(COLOR.text).text(pdfText(m.unit ? `${m.name} (${m.unit})` : m.name), x + 6, y + 6, { width: w - 12, height: 12, ellipsis: true, lineBreak: false });
  const plot = { x: x + 40, y: y + 30, w: w - 40 - 14, h: h - 30 - 22 };
  const values = series.map((p) => p.value);
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const pad = hi === lo ? Math.abs(hi) * 0.1 || 1 : (hi - lo) * 0.15;
  const [min, max] = [lo - pad, hi + pad];
  const times = series.map((p) => Date.parse(p.date));
  const [t0, t1] = [Math.min(...times), Math.max(...times)];
  const inset = 14; // points clear of the axis and of the box
  const px = (i: number): number => {
    const t = times[i] as number;
    if (series.length === 1) return plot.x + plot.w / 2;
    return plot.x + inset + (Number.isNaN(t) || t1 === t0 ? i / (series.length - 1) : (t - t0) / (t1 - t0)) * (plot.w - 2 * inset);
  };
  const py = (v: number): number => plot.y + plot.h - ((v - min) / (max - min)) * plot.h;
  const decimals = Math.min(4, Math.max(...values.map(decimalsOf)));
  // Gridlines and labels at the lowest and highest value.
  doc.font(FONT.regular).fontSize(7).fillColor(COLOR.muted);
  for (const v of hi === lo ? [hi] : [lo, hi]) {
    doc.moveTo(plot.x, py(v)).lineTo(plot.x + plot.w, py(v)).lineWidth(0.3).strokeColor(COLOR.grid).stroke();
    doc.text(fixed(v, decimals), x + 2, py(v) - 3, { width: 34, align: 'right', lineBreak: false });
  }
  // Axes.
  doc.moveTo(plot.x, plot.y).lineTo(plot.x, plot.y + plot.h).lineTo(plot.x + plot.w, plot.y + plot.h).lineWidth(0.7).strokeColor(COLOR.muted).stroke();
  // The line and its points.
  if (series.length > 1) {
    series.forEach((p, i) => (i === 0 ? doc.moveTo(px(i), py(p.value)) : doc.lineTo(px(i), py(p.value))));
    doc.lineWidth(1.2).strokeColor(COLOR.line).stroke();
  }
  // Value labels: all of them when few, else first, last, lowest and highest.
  const labelled = new Set(series.length <= 8 ? series.map((_p, i) => i) : [0, series.length - 1, values.indexOf(lo), values.indexOf(hi)]);
  series.forEach((p, i) => {
    doc.circle(px(i), py(p.value), 2.2).fill(COLOR.line);
    if (labelled.has(i)) doc.font(FONT.regular).fontSize(7).fillColor(COLOR.text).text(fixed(p.value, decimals), px(i) - 20, py(p.value) - 11, { width: 40, align: 'center', lineBreak: false });
  });
  // Dates at both ends.
  const first = series[0];
  const last = series[series.length - 1];
  doc.font(FONT.regular).fontSize(7).fillColor(COLOR.muted);
  const dateAt = (date: FhirDate, cx: number): void => {
    const left = Math.min(Math.max(cx - 30, x + 2), x + w - 62);
    doc.text(formatDate(date), left, plot.y + plot.h + 5, { width: 60, align: 'center', lineBreak: false });
  };
  if (first) dateAt(first.date, px(0));
  if (last && series.length > 1) dateAt(last.date, px(series.length - 1));
}

function drawCharts(doc: Doc, measures: readonly OutcomeMeasure[]): void {
  const w = (CONTENT_WIDTH - CHART.gap * (CHART.perRow - 1)) / CHART.perRow;
  for (let i = 0; i < measures.length; i += CHART.perRow) {
    ensure(doc, CHART.height + CHART.gap);
    const y = doc.y;
    measures.slice(i, i + CHART.perRow).forEach((m, j) => drawChart(doc, m, MARGIN.left + j * (w + CHART.gap), y, w, CHART.height));
    doc.x = MARGIN.left;
    doc.y = y + CHART.height + CHART.gap;
  }
}

/** Running header (from page 2) and footer on every page, once the page count is known. */
function drawPageFurniture(doc: Doc, input: ReportInput): void {
  const range = doc.bufferedPageRange();
  const running = pdfText(`${input.patient.name} - born ${formatDate(input.patient.birthDate)} - ${reportTitle(input)}, ${formatPeriod(input.period)}`);
  const generated = pdfText(`Generated ${formatDate(input.issued)} by ${input.author.organization}`);
  for (let i = range.start; i < range.start + range.count; i++) {
    doc.switchToPage(i);
    const bottomMargin = doc.page.margins.bottom;
    doc.page.margins.bottom = 0; // writing in the margin must not start a new page
    doc.font(FONT.regular).fontSize(8).fillColor(COLOR.muted);
    if (i > range.start) {
      doc.text(running, MARGIN.left, 30, { width: CONTENT_WIDTH, lineBreak: false, ellipsis: true });
      doc.moveTo(MARGIN.left, 42).lineTo(MARGIN.left + CONTENT_WIDTH, 42).lineWidth(0.4).strokeColor(COLOR.rule).stroke();
    }
    const y = A4.height - 36;
    doc.moveTo(MARGIN.left, y - 6).lineTo(MARGIN.left + CONTENT_WIDTH, y - 6).lineWidth(0.4).strokeColor(COLOR.rule).stroke();
    doc.text(generated, MARGIN.left, y, { width: CONTENT_WIDTH * 0.7, lineBreak: false, ellipsis: true });
    doc.text(`Page ${i - range.start + 1} of ${range.count}`, MARGIN.left + CONTENT_WIDTH * 0.7, y, { width: CONTENT_WIDTH * 0.3, align: 'right', lineBreak: false });
    doc.page.margins.bottom = bottomMargin;
  }
}

/** The report as a PDF (A4, Helvetica). The same input gives the same bytes. */
export function renderPdf(input: ReportInput, options: RenderOptions = {}): Promise<Buffer> {
  const created = new Date(input.issued);
  const doc = new PDFDocument({
    size: 'A4',
    margins: MARGIN,
    bufferPages: true,
    compress: options.compress ?? true,
    info: {
      Title: pdfText(`${reportTitle(input)}: ${input.patient.name}`),
      Author: pdfText(`${input.author.name}, ${input.author.organization}`),
      Subject: pdfText(`${reportTitle(input)} ${formatPeriod(input.period)}`),
      Creator: 'met-fhir-server',
      CreationDate: Number.isNaN(created.getTime()) ? new Date(0) : created,
    },
  });
  const chunks: Buffer[] = [];
  const done = new Promise<Buffer>((resolve, reject) => {
    doc.on('data', (chunk: Buffer) => chunks.push(chunk));
    doc.on('end', () => resolve(Buffer.concat(chunks)));
    doc.on('error', reject);
  });
  drawHeader(doc, input);
  for (const section of reportSections(input)) {
    drawSectionTitle(doc, section.title);
    for (const block of section.blocks) {
      switch (block.kind) {
        case 'paragraph':
          drawParagraph(doc, block.text);
          break;
        case 'list':
          drawList(doc, block.items);
          break;
        case 'table':
          drawTable(doc, block.headers, block.rows, block.widths);
          break;
        case 'charts':
          drawCharts(doc, block.measures);
          break;
      }
    }
  }
  drawPageFurniture(doc, input);
  doc.end();
  return done;
}
