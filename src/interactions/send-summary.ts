/**
 * POST [base]/Patient/{id}/$send-summary: builds the progress report over a period from what is
 * stored (diagnoses, program, goals and their progress, outcome measures at baseline and now, each
 * with a small chart, attendance, adverse events, the professional's recommendations) as a FHIR
 * Composition and a PDF (src/summary), and queues its delivery to the physician's EHR, named by an
 * Endpoint: over FHIR (a DocumentReference with the PDF and, when the Endpoint's
 * `sendCommunication` says so, a Communication telling the physician) or HL7 v2 (MDM^T02 over
 * MLLP). An Endpoint that cannot be used is a 422 naming the element at fault. Returns
 * the Task that tracks the delivery. The Composition, the local DocumentReference, the Task and the
 * delivery job are written in one transaction: a report either is queued whole or not at all.
 *
 * Parameters (a FHIR Parameters body):
 *  - endpoint (valueReference, required): the EHR's Endpoint (hl7-fhir-rest or hl7v2-mllp);
 *  - author (valueReference, required): the MET, a Practitioner;
 *  - period (valuePeriod): default the last 30 days;
 *  - recipient: the physician: valueString (a name), or valueReference to a local Practitioner
 *    (`Practitioner/{id}`) or by identifier (`{ type: 'Practitioner', identifier: { system:
 *    'http://hl7.org/fhir/sid/us-npi', value }, display }`); the Communication's recipient is the
 *    EHR's Practitioner carrying that identifier, found at delivery, else the identifier (or name)
 *    alone. Required when the Endpoint asks for a Communication;
 *  - recommendation (valueString, repeating): the professional's recommendations;
 *  - kind (valueCode): `progress-report` (default: the period's progress) or `session-summary` (one
 *    session, named by `encounter`, a valueReference to its Encounter; the period is its day, and a
 *    section gives its exercises, the measurements before, during and after, its tolerance and
 *    next steps).
 */
import { randomUUID } from 'node:crypto';
import type {
  CarePlan,
  Communication,
  Condition,
  DocumentReference,
  Encounter,
  Endpoint,
  Goal,
  Identifier,
  Observation,
  Parameters,
  ParametersParameter,
  Patient,
  Practitioner,
  Procedure,
  Reference,
  Task,
} from 'fhir/r4.js';
import { addressRefusal, EHR_ENDPOINT_EXTENSION, isEndpointProblem, patientIdentifierSystemOf, readFhirEndpoint } from '../ehr/endpoint.js';
import { EHR_ENDPOINT_TAG_SYSTEM } from '../ehr/fhir-ehr.js';
import { IDENTIFIER_LINK_EXTENSION } from '../ehr/patient-link.js';
import { fhirError } from '../fhir/errors.js';
import { parseSearch } from '../search/parse.js';
import { buildMdmT02 } from '../summary/mdm.js';
import { buildComposition, renderPdf, type GoalAchievementCode, type OutcomeMeasure, type ReportInput, type SessionDetails } from '../summary/report.js';
import { outboundKeyOf, type FhirContext, type FhirRequest, type FhirResponse, type Interaction } from './types.js';

/** Stable identifiers of the documents we send: the EHR finds a retried document by it. */
export const DOCUMENT_ID_SYSTEM = 'https://met-fhir-server.dev/fhir/document-id';
/** Stable identifiers of the Communications we send (the same value as their document's). */
export const NOTIFICATION_ID_SYSTEM = 'https://met-fhir-server.dev/fhir/notification-id';
const NPI_SYSTEM = 'http://hl7.org/fhir/sid/us-npi';
const RECIPIENT_EXPRESSION = "Parameters.parameter.where(name = 'recipient')";

interface Recipient {
  /** As the report addresses them. */
  name: string;
  /** The Communication's recipient: by identifier (resolved at the EHR on delivery) or by name only. */
  reference?: Reference;
  /** A local Practitioner to take the name and identifier from. */
  local?: string;
}

type SummaryKind = 'progress-report' | 'session-summary';

interface Args {
  kind: SummaryKind;
  /** session-summary: `Encounter/{id}`. */
  encounter?: string;
  /** session-summary: that Encounter, once read (and checked to be this client's). */
  session?: Encounter;
  endpoint: string;
  author: string;
  period: { start: string; end: string };
  /** Undefined when the parameter is absent. */
  recipient: Recipient | undefined;
  recommendations: string[];
}

function recipientOf(parameter: ParametersParameter | undefined): Recipient | undefined {
  if (!parameter) return undefined;
  if (parameter.valueString !== undefined) return { name: parameter.valueString, reference: { display: parameter.valueString } };
  const ref = parameter.valueReference;
  if (ref?.reference?.startsWith('Practitioner/') && !ref.reference.includes('/', 'Practitioner/'.length)) return { name: ref.display ?? '', local: ref.reference };
  const { system, value } = ref?.identifier ?? {};
  if (ref && !ref.reference && !ref.identifier && ref.display) return { name: ref.display, reference: { display: ref.display } };
  if (ref && !ref.reference && system && value) {
    const type = ref.type ?? 'Practitioner';
    return { name: ref.display ?? `${type} ${value}`, reference: { type, identifier: { system, value }, ...(ref.display ? { display: ref.display } : {}) } };
  }
  throw fhirError(
    'unprocessable-operation',
    "$send-summary parameter 'recipient' must be a valueString (the physician's name) or a valueReference to a local Practitioner or with an identifier (system and value, such as the physician's NPI)",
    RECIPIENT_EXPRESSION,
  );
}

function args(body: unknown): Args {
  const p = body as Parameters | undefined;
  if (p !== undefined && (typeof p !== 'object' || p === null || p.resourceType !== 'Parameters')) {
    throw fhirError('unprocessable-operation', '$send-summary takes a Parameters resource (endpoint, author, period, recipient, recommendation)');
  }
  const all = (name: string): ParametersParameter[] => (p?.parameter ?? []).filter((x) => x.name === name);
  const endpoint = all('endpoint')[0]?.valueReference?.reference;
  const author = all('author')[0]?.valueReference?.reference;
  if (!endpoint?.startsWith('Endpoint/')) throw fhirError('unprocessable-operation', "$send-summary needs parameter 'endpoint': a reference to the EHR's Endpoint");
  if (!author?.startsWith('Practitioner/')) throw fhirError('unprocessable-operation', "$send-summary needs parameter 'author': a reference to the Practitioner (the MET) who signs the report");
  const kindParameter = all('kind')[0];
  const kind = kindParameter === undefined ? 'progress-report' : kindParameter.valueCode;
  if (kind !== 'progress-report' && kind !== 'session-summary') {
    throw fhirError('unprocessable-operation', "$send-summary parameter 'kind' must be a valueCode: progress-report or session-summary", "Parameters.parameter.where(name = 'kind')");
  }
  const encounter = all('encounter')[0]?.valueReference?.reference;
  if (kind === 'session-summary' && !/^Encounter\/[A-Za-z0-9\-.]{1,64}$/.test(encounter ?? '')) {
    throw fhirError('unprocessable-operation', "$send-summary of kind session-summary needs parameter 'encounter': a reference to the session's Encounter", "Parameters.parameter.where(name = 'encounter')");
  }
  const end = all('period')[0]?.valuePeriod?.end ?? new Date().toISOString().slice(0, 10);
  const start = all('period')[0]?.valuePeriod?.start ?? new Date(Date.parse(end) - 30 * 86_400_000).toISOString().slice(0, 10);
  return {
    kind,
    ...(kind === 'session-summary' && encounter ? { encounter } : {}),
    endpoint,
    author,
    period: { start, end },
    recipient: recipientOf(all('recipient')[0]),
    recommendations: all('recommendation').flatMap((x) => (x.valueString ? [x.valueString] : [])),
  };
}

async function search<T>(ctx: FhirContext, type: string, params: Record<string, string[]>): Promise<T[]> {
  const query = parseSearch(type, { ...params, _count: ['1000'] }, { fhirBase: ctx.fhirBase, lenient: false }).query;
  return (await ctx.repo.search(query)).rows.map((r) => JSON.parse(r.json) as T);
}

/**
 * The diagnoses a report lists: each coded one once. The same diagnosis often arrives twice, as the
 * MET software reported it with the client and as $pull-diagnoses brought it from the EHR; the
 * EHR's (it has a meta.source) is the one listed. Entered-in-error and refuted ones are left out,
 * and so are those pulled from an EHR (tagged with its Endpoint) the Patient is linked to by a
 * demographic match not yet confirmed (`unconfirmedEndpoints`: those Endpoints' ids).
 */
export function reportDiagnoses(conditions: Condition[], unconfirmedEndpoints: ReadonlySet<string> = new Set()): Condition[] {
  const kept = new Map<string, Condition>();
  for (const c of conditions) {
    if (['entered-in-error', 'refuted'].includes(c.verificationStatus?.coding?.[0]?.code ?? '')) continue;
    // Pulled through a demographic link nobody has confirmed yet: perhaps another person's.
    if (c.meta?.tag?.some((t) => t.system === EHR_ENDPOINT_TAG_SYSTEM && unconfirmedEndpoints.has(t.code ?? ''))) continue;
    const coding = c.code?.coding?.find((x) => x.system && x.code);
    const key = coding ? `${coding.system}|${coding.code}` : `Condition/${c.id}`;
    const seen = kept.get(key);
    if (!seen || (!seen.meta?.source && c.meta?.source)) kept.set(key, c);
  }
  return [...kept.values()];
}

const text = (c: { text?: string; coding?: { display?: string; code?: string }[] } | undefined): string => c?.text ?? c?.coding?.[0]?.display ?? c?.coding?.[0]?.code ?? '';
const nameOf = (n: { text?: string; given?: string[]; family?: string }[] | undefined): string => n?.[0]?.text ?? [...(n?.[0]?.given ?? []), n?.[0]?.family ?? ''].join(' ').trim();
const dayOf = (s: string | undefined): string => (s ?? '').slice(0, 10);

const ACHIEVEMENT = new Set(['in-progress', 'improving', 'worsening', 'no-change', 'achieved', 'sustaining', 'not-achieved', 'no-progress', 'not-attainable']);

const PHASES = ['before', 'during', 'after'] as const;

/**
 * One session as the session summary tells it: its exercises (the Procedure's notes), the
 * measurements taken in it (before, during and after exercise, as the MET software said), its
 * tolerance and next steps. `observations` and `procedures` are the session's.
 */
function sessionDetails(e: Encounter, observations: Observation[], procedures: Procedure[]): SessionDetails {
  const encounter = `Encounter/${e.id}`;
  const start = e.period?.start ?? '';
  const minutes = e.length?.code === 'min' && e.length.value !== undefined ? e.length.value : undefined;
  const ofSession = procedures.filter((p) => p.encounter?.reference === encounter && p.status !== 'entered-in-error');
  const measured = observations
    .filter((o) => o.encounter?.reference === encounter && o.status !== 'entered-in-error' && o.status !== 'cancelled')
    .map((o) => {
      const notes = (o.note ?? []).map((n) => n.text);
      const phase = PHASES.findIndex((ph) => notes.includes(`Measured ${ph} exercise`));
      const qualifiers = [
        ...(phase >= 0 ? [`${PHASES[phase]} exercise`] : []),
        ...notes.filter((n) => !/^Measured (before|during|after) exercise$/.test(n)),
        ...(o.component ?? []).flatMap((c) => (c.valueCodeableConcept ? [`${text(c.code)}: ${text(c.valueCodeableConcept)}`] : [])),
      ];
      const parts = (o.component ?? []).flatMap((c) => (c.valueQuantity?.value !== undefined ? [c.valueQuantity] : []));
      const value = o.valueQuantity?.value ?? (parts.length > 0 ? parts.map((q) => q.value).join('/') : (o.valueString ?? text(o.valueCodeableConcept)));
      const unit = o.valueQuantity ? (o.valueQuantity.unit ?? o.valueQuantity.code) : parts[0]?.unit ?? parts[0]?.code;
      return { order: phase < 0 ? PHASES.length : phase, name: `${text(o.code)}${qualifiers.length ? ` (${qualifiers.join('; ')})` : ''}`, value, ...(unit ? { unit } : {}) };
    })
    .filter((m) => m.value !== '' && m.value !== undefined)
    .sort((x, y) => x.order - y.order || x.name.localeCompare(y.name));
  const notes = ofSession.flatMap((p) => [
    ...(p.outcome ? [`Tolerance: ${text(p.outcome)}.`] : []),
    ...(p.followUp ?? []).map((f) => `Next steps: ${text(f)}`),
  ]);
  return {
    date: dayOf(start),
    ...(minutes !== undefined ? { durationMinutes: minutes } : {}),
    activities: ofSession.flatMap((p) => (p.note ?? []).map((n) => n.text)),
    measurements: measured.map(({ order: _order, ...m }) => m),
    ...(notes.length > 0 ? { notes: notes.join(' ') } : {}),
  };
}

/** Everything the report says, read from the tenant's data. */
async function gather(ctx: FhirContext, patientId: string, a: Args, recipientName: string): Promise<{ input: ReportInput; entries: Record<string, string[]>; patient: Patient }> {
  const patient = JSON.parse((await ctx.repo.read('Patient', patientId)).json ?? '{}') as Patient;
  const author = JSON.parse((await ctx.repo.read('Practitioner', a.author.split('/')[1] as string)).json ?? '{}') as Practitioner;
  const subject = { subject: [`Patient/${patientId}`] };
  const conditions = await search<Condition>(ctx, 'Condition', subject);
  const carePlans = (await search<CarePlan>(ctx, 'CarePlan', subject)).filter((c) => c.status === 'active' || c.status === 'completed');
  const goals = await search<Goal>(ctx, 'Goal', subject);
  const observations = await search<Observation>(ctx, 'Observation', { ...subject, date: [`le${a.period.end}`] });
  const encounters = await search<Encounter>(ctx, 'Encounter', { ...subject, date: [`ge${a.period.start}`, `le${a.period.end}`] });
  const procedures = await search<Procedure>(ctx, 'Procedure', { ...subject, date: [`ge${a.period.start}`, `le${a.period.end}`] });

  // Outcome measures: numeric values per code (each component of a panel its own), oldest first.
  const series = new Map<string, OutcomeMeasure & { series: { date: string; value: number }[] }>();
  const add = (code: Observation['code'], value: { value?: number; unit?: string; code?: string } | undefined, date: string | undefined): void => {
    const coding = code.coding?.[0];
    if (!coding?.code || value?.value === undefined || !date) return;
    const key = `${coding.system ?? ''}|${coding.code}`;
    let m = series.get(key);
    if (!m) {
      m = { name: text(code) || coding.code, code: { system: coding.system ?? '', code: coding.code }, unit: value.unit ?? value.code ?? '', series: [] };
      series.set(key, m);
    }
    m.series.push({ date: dayOf(date), value: value.value });
  };
  for (const o of observations) {
    if (o.status === 'entered-in-error' || o.status === 'cancelled') continue;
    const when = o.effectiveDateTime ?? o.effectivePeriod?.start ?? o.issued;
    add(o.code, o.valueQuantity, when);
    for (const c of o.component ?? []) add(c.code, c.valueQuantity, when);
  }
  const outcomes = [...series.values()].filter((m) => m.series.length > 0).map((m) => ({ ...m, series: m.series.sort((x, y) => x.date.localeCompare(y.date)) }));

  const unconfirmed = new Set(
    (patient.identifier ?? []).flatMap((i) => {
      const link = i.extension?.find((e) => e.url === IDENTIFIER_LINK_EXTENSION);
      if (!link || link.extension?.find((e) => e.url === 'reviewStatus')?.valueCode === 'confirmed') return [];
      const endpointRef = link.extension?.find((e) => e.url === 'endpoint')?.valueReference?.reference;
      return endpointRef?.startsWith('Endpoint/') ? [endpointRef.slice('Endpoint/'.length)] : [];
    }),
  );
  const diagnoses = reportDiagnoses(conditions, unconfirmed);
  const sessions = encounters.filter((e) => e.status !== 'entered-in-error');
  // The session's own resources by their encounter, not by date: a session late in the evening is
  // already the next day in UTC, which is how a date without a zone is searched.
  const session = a.session
    ? sessionDetails(
        a.session,
        await search<Observation>(ctx, 'Observation', { encounter: [a.encounter as string] }),
        await search<Procedure>(ctx, 'Procedure', { encounter: [a.encounter as string] }),
      )
    : undefined;
  const plan = carePlans.sort((x, y) => (y.period?.start ?? '').localeCompare(x.period?.start ?? ''))[0];
  const input: ReportInput = {
    ...(session ? { kind: 'session-summary' as const, session } : { kind: 'progress-report' as const }),
    patient: {
      name: nameOf(patient.name) || `Patient/${patientId}`,
      birthDate: patient.birthDate ?? '',
      gender: patient.gender ?? 'unknown',
      identifiers: (patient.identifier ?? []).flatMap((i) => (i.value ? [{ ...(i.system ? { system: i.system } : {}), value: i.value, ...(i.type?.coding?.[0]?.code === 'MR' ? { label: 'MRN' } : {}) }] : [])),
    },
    period: a.period,
    author: { name: nameOf(author.name) || a.author, organization: author.qualification?.[0]?.issuer?.display ?? '' },
    recipient: { name: recipientName },
    issued: new Date().toISOString(),
    diagnoses: diagnoses
      .map((c) => ({
        ...(c.code?.coding?.[0]?.code ? { code: { system: c.code.coding[0].system ?? '', code: c.code.coding[0].code } } : {}),
        display: text(c.code) || 'Condition',
        ...(c.onsetDateTime ? { onset: dayOf(c.onsetDateTime) } : {}),
      })),
    ...(plan
      ? {
          program: {
            title: plan.title ?? text(plan.category?.[0]) ?? 'Exercise program',
            activities: (plan.activity ?? []).map((x) => x.detail?.description ?? text(x.detail?.code)).filter((s): s is string => !!s),
            period: { start: dayOf(plan.period?.start) || a.period.start, ...(plan.period?.end ? { end: dayOf(plan.period.end) } : {}) },
          },
        }
      : {}),
    goals: goals
      .filter((g) => g.lifecycleStatus !== 'entered-in-error' && g.lifecycleStatus !== 'cancelled')
      .map((g) => {
        const code = g.achievementStatus?.coding?.[0]?.code ?? 'in-progress';
        const target = g.target?.[0];
        const quantity = target?.detailQuantity;
        return {
          description: text(g.description),
          ...(quantity?.value !== undefined
            ? { target: { measure: text(target?.measure), value: quantity.value, unit: quantity.unit ?? quantity.code ?? '', ...(target?.dueDate ? { due: target.dueDate } : {}) } }
            : {}),
          achievementStatus: { code: (ACHIEVEMENT.has(code) ? code : 'in-progress') as GoalAchievementCode },
        };
      }),
    outcomes,
    ...(sessions.length > 0 && !session ? { attendance: { planned: sessions.length, attended: sessions.filter((e) => e.status === 'finished').length } } : {}),
    adverseEvents: procedures.flatMap((p) => (p.complication ?? []).map((c) => ({ date: dayOf(p.performedPeriod?.start ?? p.performedDateTime), text: text(c) }))),
    recommendations: a.recommendations,
  };
  const entries = {
    diagnoses: diagnoses.map((c) => `Condition/${c.id}`),
    goals: goals.map((g) => `Goal/${g.id}`),
    ...(plan ? { program: [`CarePlan/${plan.id}`] } : {}),
  };
  return { input, entries, patient };
}

/** The recipient, a local Practitioner read for its name and identifier (an NPI preferred). */
async function resolveRecipient(ctx: FhirContext, recipient: Recipient | undefined): Promise<Recipient | undefined> {
  if (!recipient?.local) return recipient;
  const practitioner = JSON.parse((await ctx.repo.read('Practitioner', recipient.local.split('/')[1] as string)).json ?? '{}') as Practitioner;
  const name = recipient.name || nameOf(practitioner.name) || recipient.local;
  const ids = (practitioner.identifier ?? []).filter((i): i is Identifier & { system: string; value: string } => !!i.system && !!i.value);
  const id = ids.find((i) => i.system === NPI_SYSTEM) ?? ids[0];
  return { name, reference: { ...(id ? { type: 'Practitioner', identifier: { system: id.system, value: id.value } } : {}), display: name } };
}

export async function sendSummary(ctx: FhirContext, req: FhirRequest): Promise<FhirResponse> {
  const patientId = req.id as string;
  for (const t of ['Patient', 'Practitioner', 'Endpoint']) ctx.authorize?.(t, ['read']);
  for (const t of ['Condition', 'CarePlan', 'Goal', 'Observation', 'Encounter', 'Procedure']) ctx.authorize?.(t, ['search']);
  for (const t of ['Composition', 'DocumentReference', 'Task']) ctx.authorize?.(t, ['create']);
  const a = args(req.body);
  if (a.kind === 'session-summary') {
    // The session must be this client's; the report covers its day.
    const encounterId = (a.encounter as string).split('/')[1] as string;
    ctx.authorize?.('Encounter', ['read']);
    const found = await ctx.repo.readMany([{ type: 'Encounter', id: encounterId }]);
    const encounter = found[0] ? (JSON.parse(found[0].json ?? '{}') as Encounter) : undefined;
    if (!encounter || encounter.subject?.reference !== `Patient/${patientId}`) {
      throw fhirError('unprocessable-operation', `${a.encounter} is not a session of Patient/${patientId}`, "Parameters.parameter.where(name = 'encounter')");
    }
    const day = dayOf(encounter.period?.start);
    if (!day) throw fhirError('unprocessable-operation', `${a.encounter} has no period.start: the session summary needs the session's date`, "Parameters.parameter.where(name = 'encounter')");
    a.period = { start: day, end: dayOf(encounter.period?.end) || day };
    a.session = encounter;
  }
  const endpoint = JSON.parse((await ctx.repo.read('Endpoint', a.endpoint.split('/')[1] as string)).json ?? '{}') as Endpoint & { id: string };
  const channel = endpoint.connectionType?.code === 'hl7-fhir-rest' ? 'fhir' : endpoint.connectionType?.code === 'hl7v2-mllp' ? 'mllp' : undefined;
  if (!channel || endpoint.status !== 'active') throw fhirError('unprocessable-operation', `${a.endpoint} is not an active hl7-fhir-rest or hl7v2-mllp Endpoint`);
  // A FHIR Endpoint must be usable now (auth settings, the token it names): refused here rather
  // than failing at delivery. Checked again by the worker, which may run in another process.
  let sendCommunication = false;
  const refused = addressRefusal(endpoint.address ?? '', ctx.ehrEgress);
  if (refused) throw fhirError('unprocessable-operation', `${a.endpoint} ${refused}`, 'Endpoint.address');
  if (channel === 'fhir') {
    const settings = readFhirEndpoint(endpoint, { key: await outboundKeyOf(ctx.outboundKeys, ctx.tenant, endpoint), secrets: ctx.ehrSecrets, tenant: ctx.tenant, allowHttp: ctx.allowHttpEhr ?? false, egress: ctx.ehrEgress });
    if (isEndpointProblem(settings)) throw fhirError('unprocessable-operation', `${a.endpoint} ${settings.problem}`, settings.expression);
    sendCommunication = settings.sendCommunication;
  }
  if (sendCommunication && !a.recipient) {
    throw fhirError('unprocessable-operation', `${a.endpoint} asks for a Communication to the physician: $send-summary needs parameter 'recipient'`, RECIPIENT_EXPRESSION);
  }
  const identifierSystem = patientIdentifierSystemOf(endpoint);
  if (!identifierSystem) {
    // Without it no identifier names this patient at that EHR: a bare number could be anyone's.
    throw fhirError(
      'unprocessable-operation',
      `${a.endpoint} names no patientIdentifierSystem: the system of the EHR's MRNs is needed to name the patient there`,
      `Endpoint.extension('${EHR_ENDPOINT_EXTENSION}').extension('patientIdentifierSystem')`,
    );
  }
  const recipient = await resolveRecipient(ctx, a.recipient);

  const { input, entries, patient } = await gather(ctx, patientId, a, recipient?.name ?? 'the referring physician');
  const mrn = patient.identifier?.find((i) => i.system === identifierSystem && i.value);
  if (!mrn?.value) throw fhirError('unprocessable-operation', `Patient/${patientId} is not linked to the EHR of ${a.endpoint}: it has no identifier of ${identifierSystem ?? 'the Endpoint\u2019s patientIdentifierSystem'}`);
  // A link made by a demographic match goes unused until a person has confirmed it: a report on
  // this client must not reach another person's record.
  const link = mrn.extension?.find((e) => e.url === IDENTIFIER_LINK_EXTENSION);
  if (link && link.extension?.find((e) => e.url === 'reviewStatus')?.valueCode !== 'confirmed') {
    throw fhirError('unprocessable-operation', `Patient/${patientId} is linked to the EHR of ${a.endpoint} by a demographic match that awaits review (its Task \u201creview patient link\u201d): confirm it before sending reports there`);
  }
  const pdf = await renderPdf(input);
  const documentId = randomUUID();
  const identifier = { system: DOCUMENT_ID_SYSTEM, value: `urn:uuid:${documentId}` };
  const composition = buildComposition(input, { subject: `Patient/${patientId}`, author: a.author, identifier, entries });
  const title = composition.title;
  const attachment = { contentType: 'application/pdf', data: pdf.toString('base64'), title, creation: input.issued };
  // The document as it goes to the EHR (its subject is set there, to the EHR's own Patient).
  const outbound: DocumentReference = {
    resourceType: 'DocumentReference',
    identifier: [identifier],
    status: 'current',
    docStatus: 'final',
    type: { coding: [{ system: 'http://loinc.org', code: '11506-3', display: 'Progress note' }] },
    category: [{ coding: [{ system: 'http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category', code: 'clinical-note', display: 'Clinical Note' }] }],
    subject: { identifier: { system: mrn.system as string, value: mrn.value }, display: input.patient.name },
    date: input.issued,
    author: [{ display: input.author.name }],
    description: title,
    content: [{ attachment }],
    context: { period: { start: input.period.start, end: input.period.end } },
  };
  // The note to the physician, when the Endpoint asks for one: its subject, the document's id and
  // the recipient's id at the EHR are set on delivery; its identifier makes a retry find it.
  const communication: Communication | undefined =
    sendCommunication && recipient?.reference
      ? {
          resourceType: 'Communication',
          identifier: [{ system: NOTIFICATION_ID_SYSTEM, value: identifier.value }],
          status: 'completed',
          category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/communication-category', code: 'notification', display: 'Notification' }] }],
          subject: outbound.subject,
          topic: { text: title },
          recipient: [recipient.reference],
          sender: { display: input.author.name },
          payload: [
            { contentString: `${title ?? 'Progress report'} from ${input.author.name}, ${input.period.start} to ${input.period.end}: see the attached document.` },
            { contentReference: { type: 'DocumentReference', identifier, ...(title ? { display: title } : {}) } },
          ],
        }
      : undefined;
  const [family = '', given = ''] = [patient.name?.[0]?.family ?? '', patient.name?.[0]?.given?.[0] ?? ''];
  const payload =
    channel === 'fhir'
      ? { documentReference: outbound, ...(communication ? { communication } : {}), patientIdentifier: { system: mrn.system, value: mrn.value } }
      : {
          message: buildMdmT02({
            sendingApplication: 'MET-FHIR',
            sendingFacility: 'MET',
            receivingApplication: endpoint.name ?? 'EHR',
            receivingFacility: endpoint.name ?? 'EHR',
            controlId: documentId.replace(/-/g, '').slice(0, 20),
            timestamp: input.issued,
            patient: { mrn: mrn.value, family, given, birthDate: patient.birthDate ?? '', gender: patient.gender ?? 'unknown' },
            document: { uniqueId: identifier.value, title: title ?? 'Progress report', typeCode: '11506-3', activityTime: input.period.end, authorName: input.author.name, pdf },
          }),
        };

  const task = await ctx.repo.transaction(async (tx) => {
    const stored = await tx.create(ctx.validator.checkWrite(composition, 'Composition'));
    const local: DocumentReference = { ...outbound, subject: { reference: `Patient/${patientId}` }, context: { ...outbound.context, related: [{ reference: `Composition/${stored.version.id}` }] } };
    const doc = await tx.create(ctx.validator.checkWrite(local, 'DocumentReference'));
    const taskId = randomUUID();
    const resource: Task = {
      resourceType: 'Task',
      id: taskId,
      identifier: [identifier],
      status: 'requested',
      intent: 'order',
      code: { text: `Deliver ${a.kind === 'session-summary' ? 'a session summary' : 'a progress report'} to the physician\u2019s EHR` },
      focus: { reference: `DocumentReference/${doc.version.id}` },
      for: { reference: `Patient/${patientId}` },
      authoredOn: input.issued,
      lastModified: input.issued,
      businessStatus: { text: 'queued' },
      input: [{ type: { text: 'endpoint' }, valueReference: { reference: a.endpoint } }],
    };
    const created = await tx.update(ctx.validator.checkWrite(resource, 'Task', taskId), taskId);
    await tx.enqueueDelivery({ id: taskId, channel, endpointId: endpoint.id, payload });
    return created.version;
  });
  // Committed: the worker need not wait for its next poll.
  ctx.deliveryQueued?.();
  return { status: 201, version: task, location: `${ctx.fhirBase}/Task/${task.id}/_history/${task.versionId}` };
}

export const sendSummaryOperation: Interaction = {
  code: 'operation',
  level: 'instance',
  method: 'POST',
  path: '/Patient/:id/$send-summary',
  resourceType: 'Patient',
  operation: 'send-summary',
  handle: sendSummary,
};
