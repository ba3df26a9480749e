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
import type { Repository, SourceDocument } from '../store/repository.js';
import type { ResourceValidator } from '../validation/validator.js';
import { Catalog, type Measure } from './catalog.js';
import { DocumentSchemas, pointerToken, type DocumentProblem } from './schemas.js';

export const MAPPING_DIR = new URL('../../mappings/v1/', import.meta.url);

interface DocumentType {
  type: string;
  collection: string;
  notInFuture: string[];
  aboutClient: boolean;
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

type Mapped = { part: string; resource: JsonResource };

export class MetApi {
  readonly registry: Registry;
  private readonly types = new Map<string, DocumentType>();
  private readonly mappings = new Map<string, jsonata.Expression>();

  constructor(
    private readonly validator: ResourceValidator,
    readonly catalog: Catalog = Catalog.load(),
    readonly schemas: DocumentSchemas = new DocumentSchemas(),
    dir: URL = MAPPING_DIR,
  ) {
    this.registry = JSON.parse(readFileSync(new URL('documents.json', dir), 'utf8')) as Registry;
    for (const t of this.registry.types) {
      this.types.set(t.collection, t);
      this.mappings.set(t.type, jsonata(readFileSync(new URL(`${t.type}.jsonata`, dir), 'utf8')));
    }
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
    const doc = body as { id: string; clientId?: string } & Record<string, unknown>;
    const problems = [...this.measurementProblems(doc), ...futureProblems(doc, type.notInFuture, now)];
    if (problems.length > 0) throw new DocumentError(422, 'The document has values that cannot be right', problems);

    const ids = new PartIds(sender.id);
    const mapped = await this.map(type.type, doc, ids);
    for (const m of mapped) {
      const resourceProblems = this.validator.problems(m.resource);
      // A mapping that produces an invalid resource is our defect, not the sender's.
      if (resourceProblems.length > 0) {
        throw new Error(`mapping ${type.type} produced an invalid ${m.resource.resourceType} (${m.part}): ${resourceProblems.map((p) => p.message).join('; ')}`);
      }
    }

    return repo.transaction(async (tx) => {
      const key = { sender: sender.id, type: type.type, id: doc.id };
      await tx.lockKey(`met:${sender.id}:${type.type}:${doc.id}`);
      if (type.aboutClient && doc.clientId !== undefined) {
        const patient = await tx.readMany([{ type: 'Patient', id: ids.of('client', doc.clientId, 'patient') }]);
        if (patient.length === 0) {
          throw new DocumentError(422, 'The document is about an unknown client', [
            { pointer: '/clientId', code: 'unknown-client', detail: `no client '${doc.clientId}' has been pushed; push the client document first` },
          ]);
        }
      }
      const previous = await tx.readSourceDocument(key);
      const current = await tx.readMany([
        ...mapped.map((m) => ({ type: m.resource.resourceType, id: m.resource.id })),
        ...Object.values(previous?.parts ?? {}).map((p) => ({ type: p.type, id: p.id })),
      ]);
      const byKey = new Map(current.map((v) => [`${v.resourceType}/${v.id}`, v]));
      const resources: PushedResource[] = [];
      for (const m of mapped) {
        const existing = byKey.get(`${m.resource.resourceType}/${m.resource.id}`);
        if (existing?.json !== undefined && sameContent(JSON.parse(existing.json) as JsonResource, m.resource)) {
          resources.push({ type: existing.resourceType, id: existing.id, version: existing.versionId, action: 'unchanged' });
          continue;
        }
        const { created, version } = await tx.update(m.resource, m.resource.id);
        resources.push({ type: version.resourceType, id: version.id, version: version.versionId, action: created ? 'created' : 'updated' });
      }
      const parts = Object.fromEntries(mapped.map((m) => [m.part, { type: m.resource.resourceType, id: m.resource.id }]));
      for (const [part, ref] of Object.entries(previous?.parts ?? {})) {
        if (parts[part]) continue;
        const existing = byKey.get(`${ref.type}/${ref.id}`);
        const retire = this.registry.retire[ref.type];
        if (!existing?.json || !retire) continue;
        const stored = JSON.parse(existing.json) as JsonResource;
        const retired = { ...stored, ...retire } as JsonResource;
        if (sameContent(stored, retired)) continue;
        const { version } = await tx.update(retired, ref.id);
        resources.push({ type: version.resourceType, id: version.id, version: version.versionId, action: 'retired' });
      }
      const touched = resources.filter((r) => r.action !== 'unchanged');
      const version = (previous?.version ?? 0) + (touched.length > 0 || !previous ? 1 : 0);
      const result: PushResult = {
        status: !previous ? 'created' : touched.length > 0 ? 'updated' : 'unchanged',
        document: { type: type.type, id: doc.id, version },
        resources,
        warnings: [],
      };
      if (touched.length === 0 && previous) return result;
      const provenance = this.provenance(touched, ids, type.type, doc, sender, now, !previous);
      const written = await tx.create(provenance);
      result.provenance = { id: written.version.id, version: written.version.versionId };
      const record: SourceDocument = { ...key, version, content: doc, parts, updatedAt: now.toISOString() };
      await tx.writeSourceDocument(record);
      return result;
    });
  }

  /** Units, plausible values and qualifiers of every measurement in the document. */
  private measurementProblems(doc: Record<string, unknown>): DocumentProblem[] {
    const problems: DocumentProblem[] = [];
    const seen = new Map<string, string>();
    walk(doc, '', (value, pointer) => {
      if (typeof value !== 'object' || value === null || Array.isArray(value) || typeof (value as { measure?: unknown }).measure !== 'string') return;
      const m = value as Measurement;
      const def = this.catalog.measure(m.measure);
      if (!def) {
        problems.push({ pointer: `${pointer}/measure`, code: 'unknown-measure', detail: `'${m.measure}' is not in the measurement catalog (GET /met/v1/measures)` });
        return;
      }
      problems.push(...this.valueProblems(def, m, pointer), ...this.qualifierProblems(def, m, pointer));
      if (pointer.match(/\/measurements\/\d+$/)) {
        const part = measurementPart(m);
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
    if (!converted.ok) problems.push({ pointer: `${pointer}/${converted.message.startsWith(`'${m.unit}'`) ? 'unit' : 'value'}`, code: converted.message.startsWith(`'${m.unit}'`) ? 'wrong-unit' : 'implausible-value', detail: converted.message });
    return problems;
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

  private async map(type: string, doc: Record<string, unknown>, ids: PartIds): Promise<(Mapped & { resource: JsonResource & { id: string } })[]> {
    const expression = this.mappings.get(type) as jsonata.Expression;
    const catalog = this.catalog;
    const result = (await expression.evaluate(doc, {
      id: (docType: string, docId: string, part: string) => ids.of(docType, docId, part),
      idSystem: (docType: string) => ids.system(docType),
      hash: (text: string) => shortHash(text),
      measure: (key: string) => catalog.measure(key),
      qualifier: (name: string) => catalog.qualifier(name),
      qualifierCoding: (name: string, key: string) => catalog.qualifierCoding(name, key),
      measurementPart: (m: Measurement) => measurementPart(m),
      quantity: (key: string, component: string | null, value: number, unit: string) => {
        const def = catalog.measure(key) as Measure;
        const scalar = component === null ? (def as Required<Measure>) : (def.components ?? []).find((c) => c.key === component);
        if (!scalar) throw new Error(`no component ${String(component)} of ${key}`);
        const converted = catalog.convert(scalar, value, unit, def.valueType === 'integer');
        if (!converted.ok) throw new Error(converted.message);
        return { value: converted.value, unit: converted.unit.display, system: 'http://unitsofmeasure.org', code: converted.unit.code };
      },
    })) as Mapped[] | Mapped | undefined;
    const list = result === undefined ? [] : Array.isArray(result) ? result : [result];
    const seen = new Set<string>();
    return list.map((m) => {
      if (seen.has(m.part)) throw new Error(`mapping ${type} produced part ${m.part} twice`);
      seen.add(m.part);
      const resource = prune({ ...m.resource, id: ids.of(type, doc.id as string, m.part) }) as JsonResource & { id: string };
      return { part: m.part, resource };
    });
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
  components?: Record<string, number>;
  unit?: string;
  [qualifier: string]: unknown;
}

/** The stable name of a measurement within its document: its id, else what it measures. */
export function measurementPart(m: Measurement): string {
  if (m.id !== undefined) return `measurement:${m.id}`;
  const qualifiers = ['side', 'joint', 'motion', 'position', 'context'].map((q) => m[q]).filter((v) => typeof v === 'string');
  return `measurement:${[m.measure, ...qualifiers].join(':')}`;
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
    const value = pointer.split('/').slice(1).reduce<unknown>((v, k) => (v as Record<string, unknown> | undefined)?.[k], doc);
    if (typeof value !== 'string') continue;
    const instant = /T/.test(value) ? Date.parse(value) : Date.parse(`${value}T00:00:00-14:00`);
    const limit = /T/.test(value) ? now.getTime() + 5 * 60_000 : now.getTime();
    if (Number.isFinite(instant) && instant > limit) problems.push({ pointer, code: 'in-the-future', detail: `${value} is in the future` });
  }
  return problems;
}

