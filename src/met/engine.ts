/**
 * The MET documentation API's core: a pushed document is checked (its JSON Schema, then the
 * catalog: units, plausible values, qualifiers; dates; the client it is about), mapped to FHIR by
 * its declarative mapping, every resource validated like any write, and then written in one
 * transaction with what it replaces:
 * - the resources of a document have ids derived from (sender, document type, document id, part),
 *   so a resend updates them and never duplicates them, whatever the concurrency;
 * - a part gone from a resend is retired (an Observation becomes entered-in-error), never kept;
 * - an unchanged resource gets no new version, and an unchanged document writes nothing at all;
 * - every push that changes something records a Provenance naming what it touched.
 */
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import jsonata from 'jsonata';
import type { JsonResource } from '../fhir/resource.js';
import { resourceLock, type Repository, type SourceDocument, type SourceDocumentKey, type SourceResult } from '../store/repository.js';
import type { ProfileValidator } from '../validation/profiles.js';
import type { ResourceValidator } from '../validation/validator.js';
import { Catalog, type Measure } from './catalog.js';
import { DocumentSchemas, pointerToken, type DocumentProblem } from './schemas.js';
import { keepLinkIdentifiers } from '../fhir/identifier-link.js';

export const MAPPING_DIR = new URL('../../mappings/v1/', import.meta.url);

interface DocumentType {
  type: string;
  collection: string;
  notInFuture: string[];
  aboutClient: boolean;
  /** JSON Pointer of the date or instant its measurements were taken. */
  date?: string;
  /** Its lists of measurements: where (JSON Pointer), their parts' prefix, their default context. */
  measurements?: { list: string; part: string; context?: string; contextFrom?: string }[];
}

type MetDocument = { id: string; clientId?: string } & Record<string, unknown>;

const XML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** The qualifiers a goal's target may name; a result counts for the goal only when they agree. */
const GOAL_QUALIFIERS = ['side', 'position', 'joint', 'motion', 'device'] as const;

interface GoalTarget {
  measure: string;
  component?: string;
  value?: number;
  low?: number;
  high?: number;
  unit: string;
  due: string;
  side?: string;
  position?: string;
  joint?: string;
  motion?: string;
  device?: string;
}

/** Rows of a measure read for goal progress before all of them are (goalResults). */
const NEWEST_RESULTS = 16;

/** One measurement of a client, as goal progress reads it. */
interface GoalResult {
  measurement: Measurement;
  part: string;
  context?: string;
  date: string;
  time: number;
  observation: string;
  doc: string;
}

export interface GoalProgress {
  /** A code of http://terminology.hl7.org/CodeSystem/goal-achievement. */
  status: 'in-progress' | 'improving' | 'worsening' | 'no-change' | 'achieved';
  /** The latest result on the target, in the measure's canonical unit. */
  latest?: { observation: string; value: number; date: string };
}

interface Registry {
  types: DocumentType[];
  retire: Record<string, Record<string, unknown>>;
  provenance: {
    activity: { create: object; update: object };
    authorType: object;
    deviceType: object;
  };
}

/** A rejected document: every problem found, each with the JSON Pointer of the value at fault. */
export class DocumentError extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    readonly problems: DocumentProblem[],
  ) {
    super(`${title}: ${problems.map((p) => `${p.pointer} ${p.detail}`).join('; ')}`);
    this.name = 'DocumentError';
  }
}

export interface PushedResource {
  type: string;
  id: string;
  version: string;
  action: 'created' | 'updated' | 'unchanged' | 'retired';
}

export interface PushResult {
  status: 'created' | 'updated' | 'unchanged';
  document: { type: string; id: string; version: number };
  resources: PushedResource[];
  provenance?: { id: string; version: string };
  warnings: DocumentProblem[];
}

/** Who pushed: the sender namespaces document ids (from authentication, when it arrives). */
export interface Sender {
  id: string;
  software: string;
}

/**
 * One resource a mapping produced. A shared part (a diagnosis) belongs to the client, not to the
 * document: its id comes from the client and the part, and a resend without it does not retire it.
 */
type Mapped = { part: string; resource: JsonResource & { id: string }; shared?: boolean };

export class MetApi {
  readonly registry: Registry;
  private readonly types = new Map<string, DocumentType>();
  private readonly mappings = new Map<string, jsonata.Expression>();

  /**
   * @param validator the base R4 validation every write gets
   * @param profiles our profiles and the R4/US Core ones it knows: every mapped resource must meet
   *   each profile in its meta.profile that this knows (the server always passes it; without it,
   *   only the base R4 validation applies)
   */
  constructor(
    private readonly validator: ResourceValidator,
    private readonly profiles?: ProfileValidator,
    readonly catalog: Catalog = Catalog.load(),
    readonly schemas: DocumentSchemas = new DocumentSchemas(),
    dir: URL = MAPPING_DIR,
  ) {
    this.registry = JSON.parse(readFileSync(new URL('documents.json', dir), 'utf8')) as Registry;
    for (const t of this.registry.types) {
      this.types.set(t.collection, t);
      this.mappings.set(t.type, jsonata(readFileSync(new URL(`${t.type}.jsonata`, dir), 'utf8')));
    }
    this.mappings.set('measurement', jsonata(readFileSync(new URL('measurement.jsonata', dir), 'utf8')));
    this.mappings.set('condition', jsonata(readFileSync(new URL('condition.jsonata', dir), 'utf8')));
  }

  /** The document type pushed to a collection (`assessments`), if there is one. */
  typeOf(collection: string): DocumentType | undefined {
    return this.types.get(collection);
  }

  get collections(): string[] {
    return [...this.types.keys()];
  }

  /** Checks, maps and stores one document. Throws DocumentError when it is rejected. */
  async push(repo: Repository, type: DocumentType, body: unknown, sender: Sender, now = new Date()): Promise<PushResult> {
    const schemaProblems = this.schemas.problems(type.type, body);
    if (schemaProblems.length > 0) throw new DocumentError(422, 'The document does not match its schema', schemaProblems);
    const doc = body as MetDocument;
    const problems = [...this.measurementProblems(type, doc), ...futureProblems(doc, type.notInFuture, now)];
    if (problems.length > 0) throw new DocumentError(422, 'The document has values that cannot be right', problems);
    const ids = new PartIds(sender.id);

    return repo.transaction(async (tx) => {
      const key = { sender: sender.id, type: type.type, id: doc.id };
      // The document's lock and its client's (goal progress reads the client's results), in one
      // statement.
      const clientId = type.aboutClient ? doc.clientId : undefined;
      await tx.lockKeys([`met:${sender.id}:${type.type}:${doc.id}`, ...(clientId !== undefined ? [`met:${sender.id}:client:${clientId}`] : [])]);
      if (clientId !== undefined) {
        const patient = await tx.readMany([{ type: 'Patient', id: ids.of('client', clientId, 'patient') }]);
        if (patient.length === 0) {
          throw new DocumentError(422, 'The document is about an unknown client', [
            { pointer: '/clientId', code: 'unknown-client', detail: `no client '${clientId}' has been pushed; push the client document first` },
          ]);
        }
      }
      // The document this one replaces, and its client's goals, in one statement (with the
      // client's documents stored before their measurements had rows, if any are left).
      const measurementTypes = this.measurementTypes().map((t) => t.type);
      const stored = await tx.sourceDocuments(key, clientId !== undefined ? { id: clientId, types: ['goal'], withoutResults: measurementTypes } : undefined);
      const previous = stored.document;
      if (clientId !== undefined) {
        // This push holds the client's lock: those documents get their rows now, once.
        for (const d of stored.withoutResults) {
          if (d.type === type.type && d.id === doc.id) continue; // written with this document
          await tx.writeSourceResults(sender.id, clientId, d, this.resultsOf(d.type, d.id, d.content as MetDocument));
        }
      }
      // Goal progress: a goal needs its client's results on its target; a measurement document,
      // the goals on the measures it has (or had), and then the client's results on those.
      const measured = new Set([...this.measurementsOf(type, doc), ...(previous ? this.measurementsOf(type, previous.content as MetDocument) : [])].map((m) => m.measurement.measure));
      const goalDocs = stored.clientDocuments.filter((d) => d.type === 'goal' && measured.has((d.content as { target: { measure: string } }).target.measure));
      const targets = clientId === undefined ? [] : type.type === 'goal' ? [(doc as unknown as { target: GoalTarget }).target] : goalDocs.map((g) => (g.content as { target: GoalTarget }).target);
      // This document's measurements: counted by goal progress, stored with the document.
      const own = this.resultsOf(type.type, doc.id, doc);
      const results = clientId !== undefined && targets.length > 0 ? await this.goalResults(tx, { ...key, clientId }, own, targets, ids) : [];

      const mapped = await this.mapChecked(type.type, doc, ids, results);
      // The goals whose progress this document changes, mapped again with the new results.
      const regoal: Mapped[] = [];
      const goalType = this.registry.types.find((t) => t.type === 'goal') as DocumentType;
      for (const goal of goalDocs) {
        regoal.push(...(await this.mapChecked(goalType.type, goal.content as MetDocument, ids, results)).filter((m) => m.resource.resourceType === 'Goal'));
      }
      // Every resource this push may write is locked (the key update() takes), then read: each
      // write is then one statement, without update()'s own lock and read.
      const candidates = [
        ...[...mapped, ...regoal].map((m) => ({ type: m.resource.resourceType, id: m.resource.id })),
        ...Object.values(previous?.parts ?? {}).map((p) => ({ type: p.type, id: p.id })),
      ];
      await tx.lockKeys(candidates.map((c) => resourceLock(c.type, c.id)));
      const current = await tx.readMany(candidates, { withDeleted: true });
      // Every version read, deleted ones too (a write after a delete is the next version).
      const known = new Map(current.map((v) => [`${v.resourceType}/${v.id}`, v]));
      const resources: PushedResource[] = [];
      // Resources that never existed are created together, in one statement with the Provenance.
      const fresh: JsonResource[] = [];
      const write = async (m: Mapped): Promise<void> => {
        const key = `${m.resource.resourceType}/${m.resource.id}`;
        const stored = known.get(key);
        if (!stored) {
          if (fresh.some((r) => r.resourceType === m.resource.resourceType && r.id === m.resource.id)) throw new Error(`a push wrote ${key} twice`);
          fresh.push(m.resource);
          resources.push({ type: m.resource.resourceType, id: m.resource.id, version: '1', action: 'created' });
          return;
        }
        const existing = stored.deleted ? undefined : stored;
        const current = existing?.json !== undefined ? (JSON.parse(existing.json) as JsonResource) : undefined;
        // The EHR links the server made keep their identifiers (the MET software knows nothing of them).
        const resource = keepLinkIdentifiers(m.resource, current);
        if (current && existing && sameContent(current, resource)) {
          resources.push({ type: existing.resourceType, id: existing.id, version: existing.versionId, action: 'unchanged' });
          return;
        }
        const { created, version } = await tx.updateLocked(resource, m.resource.id, stored);
        resources.push({ type: version.resourceType, id: version.id, version: version.versionId, action: created ? 'created' : 'updated' });
      };
      for (const m of mapped) await write(m);
      const parts = Object.fromEntries(mapped.filter((m) => !m.shared).map((m) => [m.part, { type: m.resource.resourceType, id: m.resource.id }]));
      for (const [part, ref] of Object.entries(previous?.parts ?? {})) {
        if (parts[part]) continue;
        const existing = known.get(`${ref.type}/${ref.id}`);
        const retire = this.registry.retire[ref.type];
        if (!existing || existing.deleted || !existing.json || !retire) continue;
        const stored = JSON.parse(existing.json) as JsonResource;
        const retired = { ...stored, ...retire } as JsonResource;
        if (sameContent(stored, retired)) continue;
        const { version } = await tx.updateLocked(retired, ref.id, existing);
        resources.push({ type: version.resourceType, id: version.id, version: version.versionId, action: 'retired' });
      }
      for (const m of regoal) await write(m);
      const touched = resources.filter((r) => r.action !== 'unchanged');
      const version = (previous?.version ?? 0) + (touched.length > 0 || !previous ? 1 : 0);
      const result: PushResult = {
        status: !previous ? 'created' : touched.length > 0 ? 'updated' : 'unchanged',
        document: { type: type.type, id: doc.id, version },
        resources,
        warnings: [],
      };
      if (touched.length === 0 && previous) return result;
      const provenance = this.provenance(touched, ids, type.type, doc, sender, now, !previous) as JsonResource & { id: string };
      await tx.createMany([...fresh, provenance].map((resource) => ({ resource, id: resource.id as string })));
      result.provenance = { id: provenance.id, version: '1' };
      const record: SourceDocument = { ...key, clientId, version, content: doc, parts, updatedAt: now.toISOString() };
      await tx.writeSourceDocument(record, own);
      return result;
    });
  }

  /** The document types that carry measurements (assessment, session). */
  private measurementTypes(): DocumentType[] {
    return this.registry.types.filter((t) => (t.measurements ?? []).length > 0);
  }

  /** A document's measurements, each with its list's part prefix and its context (given or the list's default). */
  measurementsOf(type: DocumentType, doc: MetDocument): { measurement: Measurement; part: string; context?: string; pointer: string }[] {
    const found: { measurement: Measurement; part: string; context?: string; pointer: string }[] = [];
    for (const list of type.measurements ?? []) {
      const items = valueAt(doc, list.list);
      if (!Array.isArray(items)) continue;
      const fallback = list.contextFrom !== undefined ? valueAt(doc, list.contextFrom) : list.context;
      items.forEach((m: Measurement, i) => {
        const context = typeof m.context === 'string' ? m.context : typeof fallback === 'string' ? fallback : undefined;
        found.push({ measurement: m, part: measurementPart(m, list.part), context, pointer: `${list.list}/${i}` });
      });
    }
    return found;
  }

  /** A document's measurements as stored for goal progress (none for a type without a date). */
  resultsOf(docType: string, docId: string, doc: MetDocument): SourceResult[] {
    const type = this.registry.types.find((t) => t.type === docType);
    if (!type?.date) return [];
    const date = valueAt(doc, type.date);
    if (typeof date !== 'string') return [];
    return this.measurementsOf(type, doc).map((m) => ({
      docType,
      docId,
      measure: m.measurement.measure,
      part: m.part,
      date,
      taken: instant(date),
      ...(m.context !== undefined ? { context: m.context } : {}),
      measurement: m.measurement,
    }));
  }

  /**
   * The client's results on the measures of `targets`, as they will be once the document whose
   * measurements are `own` is stored (its stored ones, `key`, left out), oldest
   * first. Progress needs the latest two that meet a target: the newest NEWEST_RESULTS rows of each
   * measure are read (every row sharing the last one's instant too), and all of them only when
   * those hold fewer than two that meet a target and there may be more.
   */
  private async goalResults(tx: Repository, key: SourceDocumentKey & { clientId: string }, own: SourceResult[], targets: GoalTarget[], ids: PartIds): Promise<GoalResult[]> {
    const measures = [...new Set(targets.map((t) => t.measure))];
    const asResults = (rows: SourceResult[]): GoalResult[] =>
      rows.map((r) => ({
        measurement: r.measurement as Measurement,
        part: r.part,
        ...(r.context !== undefined ? { context: r.context } : {}),
        date: r.date,
        time: r.taken,
        observation: `Observation/${ids.of(r.docType, r.docId, r.part)}`,
        doc: `${r.docType}/${r.docId}`,
      }));
    let rows = await tx.clientResults(key.sender, key.clientId, measures, key, NEWEST_RESULTS);
    const newest = asResults(rows);
    const enough = targets.every((t) => this.series(t, newest).length >= 2 || rows.filter((r) => r.measure === t.measure).length < NEWEST_RESULTS);
    if (!enough) rows = await tx.clientResults(key.sender, key.clientId, measures, key);
    return asResults([...rows, ...own.filter((r) => measures.includes(r.measure))]).sort((a, b) => a.time - b.time || a.doc.localeCompare(b.doc) || a.part.localeCompare(b.part));
  }

  /** Where a goal stands: its target's latest result against the one before (FHIR goal-achievement codes). */
  progress(target: GoalTarget, results: GoalResult[]): GoalProgress {
    const def = this.catalog.measure(target.measure);
    if (!def) return { status: 'in-progress' };
    const scalar = target.component !== undefined ? (def.components ?? []).find((c) => c.key === target.component) : (def as Required<Measure>);
    if (!scalar) return { status: 'in-progress' };
    const canonical = (v: number | undefined): number | undefined => {
      if (v === undefined) return undefined;
      const c = this.catalog.convert(scalar, v, target.unit, false);
      return c.ok ? c.value : undefined;
    };
    const [low, high] = target.value !== undefined ? [canonical(target.value), canonical(target.value)] : [canonical(target.low), canonical(target.high)];
    const series = this.series(target, results);
    const distance = (v: number): number => (low !== undefined && v < low ? low - v : high !== undefined && v > high ? v - high : 0);
    const latest = series.at(-1);
    if (!latest) return { status: 'in-progress' };
    const summary = { observation: latest.result.observation, value: latest.value, date: latest.result.date };
    if (distance(latest.value) === 0) return { status: 'achieved', latest: summary };
    const before = series.at(-2);
    if (!before) return { status: 'in-progress', latest: summary };
    const change = distance(before.value) - distance(latest.value);
    return { status: change > 0 ? 'improving' : change < 0 ? 'worsening' : 'no-change', latest: summary };
  }

  /** The results that count for a goal's target, in the order given, each in the measure's canonical unit. */
  private series(target: GoalTarget, results: GoalResult[]): { value: number; result: GoalResult }[] {
    const def = this.catalog.measure(target.measure);
    if (!def) return [];
    const scalar = target.component !== undefined ? (def.components ?? []).find((c) => c.key === target.component) : (def as Required<Measure>);
    if (!scalar) return [];
    const series: { value: number; result: GoalResult }[] = [];
    for (const r of results) {
      const m = r.measurement;
      if (m.measure !== target.measure || m.unit === undefined) continue;
      if (def.exerciseSensitive && (r.context === 'during-exercise' || r.context === 'post-exercise')) continue;
      if (GOAL_QUALIFIERS.some((q) => target[q] !== undefined && m[q] !== target[q])) continue;
      const raw = target.component !== undefined ? m.components?.[target.component] : m.value;
      if (raw === undefined) continue;
      const converted = this.catalog.convert(scalar, raw, m.unit, false);
      if (converted.ok) series.push({ value: converted.value, result: r });
    }
    return series;
  }

  /** Units, plausible values and qualifiers of every measurement in the document. */
  private measurementProblems(type: DocumentType, doc: MetDocument): DocumentProblem[] {
    const problems: DocumentProblem[] = [];
    const seen = new Map<string, string>();
    const listed = new Map(this.measurementsOf(type, doc).map((m) => [m.pointer, m.part]));
    walk(doc, '', (value, pointer) => {
      if (typeof value !== 'object' || value === null || Array.isArray(value) || typeof (value as { measure?: unknown }).measure !== 'string') return;
      const m = value as Measurement;
      const def = this.catalog.measure(m.measure);
      if (!def) {
        problems.push({ pointer: `${pointer}/measure`, code: 'unknown-measure', detail: `'${m.measure}' is not in the measurement catalog (GET /met/v1/measures)` });
        return;
      }
      problems.push(...this.valueProblems(def, m, pointer), ...this.qualifierProblems(def, m, pointer));
      const part = listed.get(pointer);
      if (part !== undefined) {
        const first = seen.get(part);
        if (first !== undefined) {
          problems.push({ pointer, code: 'duplicate-measurement', detail: `measures the same as ${first}; give each an 'id' to tell them apart` });
        } else seen.set(part, pointer);
      }
    });
    return problems;
  }

  private valueProblems(def: Measure, m: Measurement, pointer: string): DocumentProblem[] {
    const problems: DocumentProblem[] = [];
    if (m.unit === undefined) return problems;
    // A goal's target: one of the measure's values (a component's for blood pressure), exact or a range.
    if (typeof m.component === 'string' || (m.value === undefined && (m.low !== undefined || m.high !== undefined))) {
      const scalar = typeof m.component === 'string' ? (def.components ?? []).find((c) => c.key === m.component) : def.valueType === 'components' ? undefined : (def as Required<Measure>);
      if (!scalar) {
        problems.push({ pointer: `${pointer}/component`, code: 'unknown-component', detail: `${def.display} has ${(def.components ?? []).length > 0 ? `components ${(def.components ?? []).map((c) => c.key).join(', ')}` : 'no components'}` });
        return problems;
      }
      for (const bound of ['value', 'low', 'high'] as const) {
        const v = m[bound];
        if (typeof v !== 'number') continue;
        const converted = this.catalog.convert(scalar, v, m.unit, false);
        if (!converted.ok) problems.push(this.conversionProblem(pointer, bound, m.unit, converted.message));
      }
      if (typeof m.low === 'number' && typeof m.high === 'number' && m.low > m.high) {
        problems.push({ pointer: `${pointer}/low`, code: 'empty-range', detail: `low (${m.low}) is above high (${m.high})` });
      }
      return problems;
    }
    if (def.valueType === 'components') {
      if (m.value !== undefined) problems.push({ pointer: `${pointer}/value`, code: 'components-expected', detail: `${def.display} has components (${(def.components ?? []).map((c) => c.key).join(', ')}); send them in 'components'` });
      for (const c of def.components ?? []) {
        const v = m.components?.[c.key];
        if (v === undefined) {
          problems.push({ pointer: `${pointer}/components/${c.key}`, code: 'required', detail: `${def.display} needs its ${c.display}` });
          continue;
        }
        const converted = this.catalog.convert(c, v, m.unit, false);
        if (!converted.ok) problems.push({ pointer: `${pointer}/components/${c.key}`, code: 'implausible-value', detail: converted.message });
      }
      for (const k of Object.keys(m.components ?? {})) {
        if (!(def.components ?? []).some((c) => c.key === k)) problems.push({ pointer: `${pointer}/components/${k}`, code: 'unknown-component', detail: `${def.display} has no component '${k}'` });
      }
      return problems;
    }
    if (m.value === undefined) {
      problems.push({ pointer: `${pointer}/value`, code: 'required', detail: `${def.display} needs a 'value'` });
      return problems;
    }
    const converted = this.catalog.convert(def as Required<Measure>, m.value, m.unit, def.valueType === 'integer');
    if (!converted.ok) problems.push(this.conversionProblem(pointer, 'value', m.unit, converted.message));
    return problems;
  }

  /** A unit the measure does not accept is the unit's fault; anything else is the value's. */
  private conversionProblem(pointer: string, field: string, unit: string, message: string): DocumentProblem {
    return message.startsWith(`'${unit}'`)
      ? { pointer: `${pointer}/unit`, code: 'wrong-unit', detail: message }
      : { pointer: `${pointer}/${field}`, code: 'implausible-value', detail: message };
  }

  private qualifierProblems(def: Measure, m: Measurement, pointer: string): DocumentProblem[] {
    const problems: DocumentProblem[] = [];
    for (const name of Object.keys(this.catalog.file.qualifiers)) {
      const given = (m as unknown as Record<string, unknown>)[name];
      if (given === undefined) {
        if (def.requiredQualifiers?.includes(name)) problems.push({ pointer: `${pointer}/${name}`, code: 'required', detail: `${def.display} needs '${name}'` });
        continue;
      }
      if (!def.qualifiers.includes(name)) {
        problems.push({ pointer: `${pointer}/${name}`, code: 'qualifier-not-applicable', detail: `'${name}' does not apply to ${def.display}` });
        continue;
      }
      const q = this.catalog.qualifier(name);
      if (q?.type === 'coded' && (typeof given !== 'string' || !this.catalog.qualifierCoding(name, given))) {
        problems.push({ pointer: `${pointer}/${name}`, code: 'not-allowed', detail: `must be one of: ${(q.values ?? []).map((v) => v.key).join(', ')}` });
      }
    }
    return problems;
  }

  /** Maps a document and checks every resource it yields: an invalid one is our defect (500), not the sender's. */
  private async mapChecked(type: string, doc: MetDocument, ids: PartIds, results: GoalResult[]): Promise<Mapped[]> {
    const mapped = await this.map(type, doc, ids, results);
    for (const m of mapped) {
      const resourceProblems = this.validator.problems(m.resource).map((p) => p.message);
      if (resourceProblems.length === 0 && this.profiles) {
        resourceProblems.push(...this.profiles.problems(m.resource).map((p) => `${p.path}: ${p.message} (${p.profile})`));
      }
      if (resourceProblems.length > 0) {
        throw new Error(`mapping ${type} produced an invalid ${m.resource.resourceType} (${m.part}): ${resourceProblems.join('; ')}`);
      }
    }
    return mapped;
  }

  private async map(type: string, doc: MetDocument, ids: PartIds, results: GoalResult[]): Promise<Mapped[]> {
    const expression = this.mappings.get(type) as jsonata.Expression;
    const catalog = this.catalog;
    const bindings: Record<string, unknown> = {
      id: (docType: string, docId: string, part: string) => ids.of(docType, docId, part),
      idSystem: (docType: string) => ids.system(docType),
      hash: (text: string) => shortHash(text),
      measure: (key: string) => catalog.measure(key),
      qualifier: (name: string) => catalog.qualifier(name),
      qualifierCoding: (name: string, key: string) => catalog.qualifierCoding(name, key),
      measurementPart: (m: Measurement, prefix?: string) => measurementPart(m, prefix),
      quantity: (key: string, component: string | null, value: number, unit: string) => {
        const def = catalog.measure(key) as Measure;
        const scalar = component === null ? (def as Required<Measure>) : (def.components ?? []).find((c) => c.key === component);
        if (!scalar) throw new Error(`no component ${String(component)} of ${key}`);
        const converted = catalog.convert(scalar, value, unit, def.valueType === 'integer');
        if (!converted.ok) throw new Error(converted.message);
        return { value: converted.value, unit: converted.unit.display, system: 'http://unitsofmeasure.org', code: converted.unit.code };
      },
      progress: (target: GoalTarget) => this.progress(target, results),
      // Text as UTF-8 in base64 (an Attachment's data); JSONata's $base64encode is Latin-1 only.
      base64: (text: string | undefined) => (text === undefined ? text : Buffer.from(text, 'utf8').toString('base64')),
      // A dateTime as FHIR writes it: seconds are required once there is a time (09:00 → 09:00:00).
      fhirDateTime: (value: string | undefined) => (value === undefined ? value : value.replace(/^(\d{4}-\d\d-\d\dT\d\d:\d\d)(Z|[+-])/, '$1:00$2')),
      // Text made safe for XHTML narrative (Resource.text.div).
      xml: (text: string | number | boolean | undefined) => (text === undefined ? text : String(text).replace(/[&<>"']/g, (c) => XML_ESCAPES[c] as string)),
    };
    const condition = this.mappings.get('condition');
    // A diagnosis as a Condition of the client, mapped by condition.jsonata: a shared part.
    // Its identity is its code when it has one (else its text): one Condition per diagnosis.
    bindings.condition = async (c: { code?: { system: string; code: string }; text: string }): Promise<Mapped> => {
      const resource = (await (condition as jsonata.Expression).evaluate({ clientId: doc.clientId, condition: c }, bindings)) as JsonResource;
      const part = `condition:${shortHash(c.code ? `${c.code.system}|${c.code.code}` : c.text)}`;
      return { part, shared: true, resource: { ...resource, id: ids.of('client', doc.clientId as string, part) } };
    };
    // A measurement as its Observation, mapped by measurement.jsonata (assessments, session vitals).
    bindings.observation = async (input: unknown): Promise<Mapped> =>
      (await (this.mappings.get('measurement') as jsonata.Expression).evaluate(input, bindings)) as Mapped;
    const result = (await expression.evaluate(doc, bindings)) as Mapped[] | Mapped | undefined;
    const list = result === undefined ? [] : Array.isArray(result) ? result : [result];
    const seen = new Set<string>();
    const out: Mapped[] = [];
    for (const m of list) {
      if (seen.has(m.part)) {
        if (m.shared) continue; // the same diagnosis named twice
        throw new Error(`mapping ${type} produced part ${m.part} twice`);
      }
      seen.add(m.part);
      const id = m.shared ? m.resource.id : ids.of(type, doc.id, m.part);
      const resource = prune({ ...m.resource, id }) as JsonResource & { id: string };
      out.push(m.shared ? { part: m.part, resource, shared: true } : { part: m.part, resource });
    }
    return out;
  }

  private provenance(touched: PushedResource[], ids: PartIds, type: string, doc: Record<string, unknown>, sender: Sender, now: Date, first: boolean): JsonResource {
    const p = this.registry.provenance;
    return {
      resourceType: 'Provenance',
      id: randomUUID(),
      target: touched.map((r) => ({ reference: `${r.type}/${r.id}/_history/${r.version}` })),
      recorded: now.toISOString(),
      activity: { coding: [first ? p.activity.create : p.activity.update] },
      agent: [{ type: { coding: [p.deviceType] }, who: { display: sender.software } }],
      entity: [{ role: 'source', what: { identifier: { system: ids.system(type), value: String(doc.id) }, display: `${type} document ${String(doc.id)}` } }],
    };
  }
}

interface Measurement {
  id?: string;
  measure: string;
  value?: number;
  /** A goal target's bounds and component. */
  low?: number;
  high?: number;
  component?: string;
  components?: Record<string, number>;
  unit?: string;
  [qualifier: string]: unknown;
}

/** The stable name of a measurement within its document: its id, else what it measures. */
export function measurementPart(m: Measurement, prefix = 'measurement'): string {
  if (m.id !== undefined) return `${prefix}:${m.id}`;
  const qualifiers = ['side', 'joint', 'motion', 'position', 'context'].map((q) => m[q]).filter((v) => typeof v === 'string');
  return `${prefix}:${[m.measure, ...qualifiers].join(':')}`;
}

function valueAt(doc: unknown, pointer: string): unknown {
  return pointer
    .split('/')
    .slice(1)
    .reduce<unknown>((v, k) => (typeof v === 'object' && v !== null ? (v as Record<string, unknown>)[k.replace(/~1/g, '/').replace(/~0/g, '~')] : undefined), doc);
}

/** The instant of a date (its start) or dateTime, for ordering results. */
function instant(value: string): number {
  const t = Date.parse(/T/.test(value) ? value : `${value}T00:00:00Z`);
  return Number.isFinite(t) ? t : 0;
}

/** FHIR ids of the parts of a sender's documents: stable, and distinct between senders. */
class PartIds {
  constructor(private readonly sender: string) {}

  of(docType: string, docId: string, part: string): string {
    const hash = createHash('sha256').update(`${this.sender}\u0000${docType}\u0000${docId}\u0000${part}`).digest('hex');
    // An RFC 9562 UUIDv8 (custom): version and variant bits set, the rest from the hash.
    return `${hash.slice(0, 8)}-${hash.slice(8, 12)}-8${hash.slice(13, 16)}-${((parseInt(hash.slice(16, 18), 16) & 0x3f) | 0x80).toString(16)}${hash.slice(18, 20)}-${hash.slice(20, 32)}`;
  }

  system(docType: string): string {
    return `urn:met-fhir-server:sender:${encodeURIComponent(this.sender)}:${docType}`;
  }
}

function shortHash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 12);
}

/** Equal but for meta.versionId / meta.lastUpdated (what the server sets). */
function sameContent(a: JsonResource, b: JsonResource): boolean {
  return JSON.stringify(canonical(withoutServerMeta(a))) === JSON.stringify(canonical(withoutServerMeta(b)));
}

function withoutServerMeta(r: JsonResource): JsonResource {
  if (!r.meta) return r;
  const { versionId: _v, lastUpdated: _l, ...meta } = r.meta;
  const copy = { ...r } as JsonResource;
  if (Object.keys(meta).length > 0) copy.meta = meta;
  else delete copy.meta;
  return copy;
}

function canonical(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical);
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, canonical((value as Record<string, unknown>)[k])]));
  }
  return value;
}

/** Drops what FHIR JSON may not hold: undefined and null, empty strings, arrays and objects. */
function prune(value: unknown): unknown {
  if (Array.isArray(value)) {
    const items = value.map(prune).filter((v) => v !== undefined);
    return items.length > 0 ? items : undefined;
  }
  if (typeof value === 'object' && value !== null) {
    const entries = Object.entries(value).map(([k, v]) => [k, prune(v)] as const).filter(([, v]) => v !== undefined);
    return entries.length > 0 ? Object.fromEntries(entries) : undefined;
  }
  if (value === null || value === '') return undefined;
  return value;
}

function walk(value: unknown, pointer: string, visit: (value: unknown, pointer: string) => void): void {
  visit(value, pointer);
  if (Array.isArray(value)) value.forEach((v, i) => walk(v, `${pointer}/${i}`, visit));
  else if (typeof value === 'object' && value !== null) {
    for (const [k, v] of Object.entries(value)) walk(v, `${pointer}/${pointerToken(k)}`, visit);
  }
}

/** Dates and instants that must not lie in the future (a day's grace for time zones). */
function futureProblems(doc: Record<string, unknown>, pointers: string[], now: Date): DocumentProblem[] {
  const problems: DocumentProblem[] = [];
  for (const pointer of pointers) {
    const value = valueAt(doc, pointer);
    if (typeof value !== 'string') continue;
    const instant = /T/.test(value) ? Date.parse(value) : Date.parse(`${value}T00:00:00-14:00`);
    const limit = /T/.test(value) ? now.getTime() + 5 * 60_000 : now.getTime();
    if (Number.isFinite(instant) && instant > limit) problems.push({ pointer, code: 'in-the-future', detail: `${value} is in the future` });
  }
  return problems;
}

