/**
 * The audit log's own store: each tenant's AuditEvents in an append-only table, `audit_event`,
 * one row per event, instead of as ordinary resources (a current row, a history row and about a
 * dozen index rows in six tables, some 30 index entries per event: a third of the server's create
 * throughput went to the audit log).
 *
 * An event's search values are the index rows the generic extraction gives it (extract.ts, every
 * search parameter of AuditEvent), written as `keys`, a text array under one GIN
 * index, and its `date` as two columns under a B-tree. A search compiles to conditions on that one
 * row (search-sql.ts): an exact value is one array overlap (`keys && …`), a prefix or `:contains` a LIKE over the
 * row's own keys; so every parameter, prefix and modifier the generic search offers on these
 * parameter types means the same here. The row takes its `seq` from the history's sequence, so
 * that `_history` (type and system level) interleaves AuditEvents with the record's versions in
 * write order. AuditEvents have one version and are never changed or deleted.
 *
 * A key is `param US kind US value` (US = U+001F): param and kind never contain U+001F, so the
 * prefix of a key is unambiguous whatever its value holds.
 *
 * Shapes (migration 17): about two thirds of an event's keys say what kind of event it is (its
 * type, subtype, action, outcome, entity types and roles, profile, tenant tag, which parameters
 * it has) and repeat from event to event; the rest name who, what and from where. The repeating
 * ones (every token, uri and presence key: SHAPE_KINDS) are stored once per distinct set, as a
 * row of `audit_shape` named by a digest of the set, and the event keeps that digest (`shape`)
 * and its other keys. Every condition on keys holds when the event's own keys or its shape's
 * keys meet it (auditKeysSql), so a search means what it meant when every key was the event's.
 * Each key in the GIN index cost PostgreSQL about 0.6 µs to parse and 0.6 µs to index per event
 * (60 keys, 15 kept); events stored before the migration keep all their keys and shape ''.
 *
 * Records (migration 18): the audit log's events are stored as its records (AuditRecord, about a
 * fifth of the BALP event) and made AuditEvents when read (auditJson); their keys are extracted
 * once per skeleton and split by what they hold: the request's values stay with the event, the
 * rest goes to the shape (auditRowOfRecord; 8 keys per create kept). Every search reads own and
 * shape keys alike, so how a row's keys are split never changes what it matches.
 */
import { createHash } from 'node:crypto';
import type { AuditEvent } from 'fhir/r4.js';
import { auditEvent, ID as FHIR_ID, PATIENT_REFERENCE, sanitizedInput, type AuditInput } from '../audit/events.js';
import { extractIndex, MAX_INDEXED, type IndexRows } from '../search/extract.js';
import type { Alternative } from '../search/query.js';
import { dateRange, escapeLike, normalizeString } from '../search/values.js';
import { fhirError } from '../fhir/errors.js';
import { Params } from './sql.js';

export const AUDIT_EVENT_TYPE = 'AuditEvent';

export const AUDIT_EVENT_MIGRATION = `
  CREATE TABLE audit_event (
    id text PRIMARY KEY,
    seq bigint NOT NULL DEFAULT nextval('resource_history_seq_seq'),
    last_updated timestamptz NOT NULL,
    date_lo timestamptz,
    date_hi timestamptz,
    keys text[] NOT NULL,
    content jsonb NOT NULL
  );
  CREATE INDEX audit_event_seq ON audit_event (seq);
  -- A search sorted by date reads its first page from these (date: lo; -date: hi, in that order).
  CREATE INDEX audit_event_date_lo ON audit_event (date_lo);
  CREATE INDEX audit_event_date_hi ON audit_event (date_hi DESC NULLS LAST);
  CREATE INDEX audit_event_keys ON audit_event USING gin (keys);
`;

export const AUDIT_SHAPE_MIGRATION = `
  CREATE TABLE audit_shape (
    digest text PRIMARY KEY,
    keys text[] NOT NULL
  );
  ALTER TABLE audit_event ADD COLUMN shape text NOT NULL DEFAULT '';
  CREATE INDEX audit_event_shape ON audit_event (shape);
`;

export const AUDIT_RECORD_MIGRATION = `
  -- What content holds: 0 the AuditEvent itself; 1 the audit log's record of the event (AuditRecord),
  -- made the AuditEvent when read.
  ALTER TABLE audit_event ADD COLUMN format smallint NOT NULL DEFAULT 0;
`;

/** audit_event.format of the audit log's records (AuditRecord). */
export const RECORD_FORMAT = 1;

/**
 * The audit log's record of an event (format 1): the facts the AuditEvent is made of (AuditInput,
 * sanitised: no secret the event would not hold), the id and the time it was stored. About a
 * fifth of the size of the BALP AuditEvent made from it, which is what PostgreSQL parses and
 * keeps per event. auditEvent makes it the same AuditEvent whenever it is read: a change to what
 * auditEvent makes of a record is a new format, records of this one keep being read as they are
 * (test/audit-store.test.ts holds one rendered event to the byte).
 */
export interface AuditRecord extends Omit<AuditInput, 'recorded'> {
  id: string;
  lastUpdated: string;
  recorded: string;
}

export function auditRecordOf(input: AuditInput, id: string, lastUpdated: string): AuditRecord {
  const clean = sanitizedInput(input);
  return { ...clean, id, lastUpdated, recorded: clean.recorded.toISOString() };
}

/** The AuditEvent a record stands for, as a stored version: id, meta.versionId 1 and lastUpdated. */
export function auditEventOfRecord(record: AuditRecord): AuditEvent {
  const { id, lastUpdated, recorded, ...input } = record;
  const { resourceType, meta, ...rest } = auditEvent({ ...input, recorded: new Date(recorded) });
  return { resourceType, id, meta: { ...meta, versionId: '1', lastUpdated }, ...rest };
}

/**
 * The SQL text of an audit row's content (`a` the row) as the read paths return it: an AuditEvent
 * as stored, a record marked `~format~` for auditJson.
 */
export function auditJsonSql(a: string): string {
  return `CASE ${a}.format WHEN 0 THEN ${a}.content::text ELSE '~' || ${a}.format || '~' || ${a}.content::text END`;
}

/** A resource's JSON text as read: an audit record (auditJsonSql) made its AuditEvent, any other as it is. */
export function auditJson(json: string): string {
  if (json.charCodeAt(0) !== 0x7e) return json;
  const end = json.indexOf('~', 1);
  const format = Number(json.slice(1, end));
  if (format !== RECORD_FORMAT) throw new Error(`audit_event: content format ${json.slice(1, end)} is unknown to this server`);
  return JSON.stringify(auditEventOfRecord(JSON.parse(json.slice(end + 1)) as AuditRecord));
}

const US = '\u001f';

/** Kinds of key, one letter each. */
export const K = {
  /** token: system US code (system empty when the coding has none) */
  token: 't',
  /** token: code, whatever the system */
  code: 'c',
  /** token: system, whatever the code */
  system: 's',
  /** token: the display or text, normalised (for :text) */
  text: 'x',
  /** reference: Type/id */
  ref: 'r',
  /** reference: id, whatever the type */
  refId: 'i',
  /** reference: an absolute URL that is not ours */
  url: 'u',
  /** reference: identifier system US value (system empty when none) */
  ident: 'v',
  /** reference: identifier value, whatever the system */
  identValue: 'w',
  /** reference: identifier system, whatever the value */
  identSystem: 'y',
  /** string: normalised */
  string: 'n',
  /** string: exact */
  exact: 'e',
  /** uri */
  uri: 'q',
  /** the parameter has a value (for :missing) */
  present: 'p',
} as const;

export function key(param: string, kind: string, value = ''): string {
  return `${param}${US}${kind}${US}${value}`;
}

/** The prefix every key of `param` and `kind` starts with, for LIKE. */
function likePrefix(param: string, kind: string): string {
  return escapeLike(key(param, kind));
}

export interface AuditRow {
  /** The event's own keys: those not in its shape. */
  keys: string[];
  /** The keys of its shape, sorted, and their digest. */
  shapeKeys: string[];
  shape: string;
  dateLo: string | null;
  dateHi: string | null;
}

/** Kinds of key kept in shapes: token, uri and presence keys (values from small sets). */
const SHAPE_KINDS: ReadonlySet<string> = new Set([K.token, K.code, K.system, K.text, K.uri, K.present]);

/** A key's kind: one letter, after the parameter's name. */
function kindOf(k: string): string {
  return k.charAt(k.indexOf(US) + 1);
}

/** The digest naming a set of shape keys (sorted): unambiguous whatever the keys hold. */
export function shapeDigest(sortedKeys: string[]): string {
  return createHash('sha256').update(JSON.stringify(sortedKeys)).digest('base64url');
}

/**
 * A condition on an event's keys that holds when its own keys or its shape's keys meet it:
 * `condition(column)` in SQL for an expression of type text[], and `matches(keys)` the same test
 * in JavaScript, for the shapes `p` holds (then named as constants). Never NULL (shape is ''
 * when none).
 */
export function auditKeysSql(a: string, p: Params, condition: (keys: string) => string, matches: (keys: readonly string[]) => boolean): string {
  const own = condition(`${a}.keys`);
  if (!p.auditShapes) return `(${own} OR ${a}.shape = ANY(ARRAY(SELECT s.digest FROM audit_shape s WHERE ${condition('s.keys')})))`;
  const digests: string[] = [];
  for (const [digest, keys] of p.auditShapes) if (matches(keys)) digests.push(digest);
  return digests.length === 0 ? `(${own})` : `(${own} OR ${a}.shape = ANY(${p.add(digests)}::text[]))`;
}

/**
 * SQL LIKE (case-sensitive, `%`, `_` and backslash escapes, as escapeLike writes them) as a
 * JavaScript test, for auditKeysSql's shapes.
 */
export function likeMatcher(patterns: readonly string[]): (value: string) => boolean {
  const regexps = patterns.map((pattern) => {
    let source = '';
    for (let i = 0; i < pattern.length; i++) {
      const c = pattern.charAt(i);
      if (c === '\\' && i + 1 < pattern.length) source += escapeRegExp(pattern.charAt(++i));
      else if (c === '%') source += '[\\s\\S]*';
      else if (c === '_') source += '[\\s\\S]';
      else source += escapeRegExp(c);
    }
    return new RegExp(`^${source}$`, 'u');
  });
  return (value) => regexps.some((r) => r.test(value));
}

function escapeRegExp(c: string): string {
  return /[\\^$.*+?()[\]{}|/]/.test(c) ? `\\${c}` : c;
}

/** The search values of a stored AuditEvent. */
export function auditRowOf(event: { resourceType: string }, fhirBase: string): AuditRow {
  return auditRowFromIndex(extractIndex(event, fhirBase));
}

function auditRowFromIndex(rows: IndexRows): AuditRow {
  const keys = new Set<string>();
  const present = (param: string) => keys.add(key(param, K.present));
  for (const t of rows.token) {
    present(t.param);
    if (t.code !== null) {
      keys.add(key(t.param, K.token, `${t.system ?? ''}${US}${t.code}`));
      keys.add(key(t.param, K.code, t.code));
    }
    if (t.system !== null) keys.add(key(t.param, K.system, t.system));
    if (t.text !== null) keys.add(key(t.param, K.text, t.text));
  }
  for (const r of rows.reference) {
    present(r.param);
    if (r.targetId !== null) {
      keys.add(key(r.param, K.refId, r.targetId));
      if (r.targetType !== null) keys.add(key(r.param, K.ref, `${r.targetType}/${r.targetId}`));
    }
    if (r.url !== null) keys.add(key(r.param, K.url, r.url));
    if (r.identValue !== null) {
      keys.add(key(r.param, K.ident, `${r.identSystem ?? ''}${US}${r.identValue}`));
      keys.add(key(r.param, K.identValue, r.identValue));
      if (r.identSystem !== null) keys.add(key(r.param, K.identSystem, r.identSystem));
    }
  }
  for (const s of rows.string) {
    present(s.param);
    keys.add(key(s.param, K.string, s.value));
    keys.add(key(s.param, K.exact, s.exact));
  }
  let dateLo: string | null = null;
  let dateHi: string | null = null;
  for (const d of rows.date) {
    if (d.param !== 'date') throw new Error(`AuditEvent date parameter '${d.param}' has no column`);
    dateLo = d.lo;
    dateHi = d.hi;
  }
  for (const u of rows.uri) {
    present(u.param);
    keys.add(key(u.param, K.uri, u.value));
  }
  for (const table of ['number', 'quantity', 'token_quantity'] as const) {
    if (rows[table].length > 0) throw new Error(`AuditEvent: no ${table} parameter is searchable`);
  }
  const own: string[] = [];
  const found: string[] = [];
  for (const k of keys) (SHAPE_KINDS.has(kindOf(k)) ? found : own).push(k);
  const { digest, sorted } = shapeOf(found);
  return { keys: own, shapeKeys: sorted, shape: digest, dateLo, dateHi };
}

/** Shapes by their keys in the order extraction found them: a server sees few shapes, again and again. */
const shapes = new Map<string, { digest: string; sorted: string[] }>();
const RS = '\u001e';
const SHAPES_CACHED = 1000;

function shapeOf(found: string[]): { digest: string; sorted: string[] } {
  // Joined by U+001E, or as JSON when a key holds one (a key starts with a parameter's name, never '[').
  const joined = found.some((k) => k.includes(RS)) ? JSON.stringify(found) : found.join(RS);
  let shape = shapes.get(joined);
  if (!shape) {
    const sorted = [...found].sort();
    shape = { digest: shapeDigest(sorted), sorted };
    if (shapes.size >= SHAPES_CACHED) shapes.clear();
    shapes.set(joined, shape);
  }
  return shape;
}

/**
 * The search values of a record's AuditEvent: auditRowOf(auditEventOfRecord(record)), without
 * extracting them from every event. The values that change from request to request (the client
 * id, the caller's address, the request id, the resource's id and version, the patient) reach the
 * index unchanged (identifiers and references) or normalised (the address, a string): so the keys
 * are extracted once per skeleton, the record with placeholders in their stead (and with what no
 * parameter searches, the recorded time aside, left out), and the placeholders replaced by the
 * values in the keys. A value that would take another branch than its placeholder in auditEvent
 * (an id that is not a FHIR id, a blank client id) has a placeholder that takes it too; a value
 * put in is cut where the index cuts it; constants that hold a placeholder's marker are extracted
 * as they are. test/audit-store.test.ts compares both ways on generated records.
 *
 * The keys are split by what they hold, not by kind: an event's own keys are those with a value of
 * its request (and every reference key: _include, _revinclude, _has and chains read those from the
 * row alone); every other key is the same for all events of its skeleton (the server's identity
 * and address among them, which auditRowOf keeps with the event) and goes to the shape. About 8
 * keys of the 17 auditRowOf keeps per event.
 */
export function auditRowOfRecord(record: AuditRecord, fhirBase: string): AuditRow {
  const skeleton = skeletonOf(record);
  if (!skeleton) return auditRowOf(auditEventOfRecord(record), fhirBase);
  const memo = `${fhirBase}\u0000${skeleton.signature}`;
  let split = splitsBySkeleton.get(memo);
  if (!split) {
    const row = auditRowOf(auditEventOfRecord(skeleton.record()), fhirBase);
    // A value reaching a token or uri key (none does) would need what those do to it: extracted as it is.
    if (row.shapeKeys.some((k) => k.includes(MARK))) return auditRowOf(auditEventOfRecord(record), fhirBase);
    const own: OwnKey[] = [];
    const shared: string[] = [];
    for (const k of [...row.keys, ...row.shapeKeys]) {
      if (k.includes(MARK) || kindOf(k) === K.ref) own.push({ parts: k.split(PLACEHOLDER_SPLIT), normalised: kindOf(k) === K.string });
      else shared.push(k);
    }
    const sorted = shared.sort();
    split = { own, shapeKeys: sorted, shape: shapeDigest(sorted) };
    if (splitsBySkeleton.size >= SHAPES_CACHED) splitsBySkeleton.clear();
    splitsBySkeleton.set(memo, split);
  }
  const keys = new Set<string>();
  for (const { parts, normalised } of split.own) {
    // Literal text and placeholders alternate (split with a capture): a value is put in as it
    // is, never searched for placeholders again (a value may hold another placeholder's text).
    let k = parts[0] as string;
    for (let i = 1; i < parts.length; i += 2) {
      const value = skeleton.values.get(parts[i] as string) as string;
      k += (normalised ? normalizeString(value) : value).slice(0, MAX_INDEXED) + (parts[i + 1] as string);
    }
    keys.add(k);
  }
  const date = dateRange(record.recorded);
  return { keys: [...keys], shapeKeys: split.shapeKeys, shape: split.shape, dateLo: date?.lo ?? null, dateHi: date?.hi ?? null };
}

/** An own key of a skeleton: its text split around placeholders (odd indices), and whether values are normalised (string keys). */
interface OwnKey {
  parts: string[];
  normalised: boolean;
}

/** Skeletons' keys: those that hold a placeholder (and reference keys), and the shape of the others. */
const splitsBySkeleton = new Map<string, { own: OwnKey[]; shapeKeys: string[]; shape: string }>();
/** Every placeholder holds it; lowercase letters and digits, so that normalising leaves it alone and it is a FHIR id. */
const MARK = 'zq0';
const PLACEHOLDER = { client: 'zq0client0qz', address: 'zq0address0qz', request: 'zq0request0qz', id: 'zq0id0qz', version: 'zq0version0qz', patient: 'zq0patient0qz' };
const PLACEHOLDER_SPLIT = new RegExp(`(${Object.values(PLACEHOLDER).join('|')})`);
/** Stands for a value auditEvent refuses as an id or reference (shown as display only, never indexed). */
const NOT_AN_ID = 'not an id';
const EPOCH = '1970-01-01T00:00:00.000Z';

/**
 * A record's skeleton: the values that change from request to request (by placeholder), the
 * skeleton's signature (its constants and which placeholders, or NOT_AN_ID, stand where: equal
 * signatures, equal skeletons) and the skeleton record itself, built only when its keys are not
 * known yet. Undefined when a constant holds a placeholder's marker.
 */
function skeletonOf(r: AuditRecord): { signature: string; values: Map<string, string>; record: () => AuditRecord } | undefined {
  const constants = JSON.stringify([r.kind, r.outcome, r.status, r.client?.tenant, r.server, r.resource?.type, r.query?.resourceType]);
  if (constants.includes(MARK)) return undefined;
  const values = new Map<string, string>();
  // One letter per variable part: '-' absent, 'p' a placeholder, 'e' empty, 'n' NOT_AN_ID, 'q' a query.
  const client = r.client === undefined ? '-' : r.client.clientId.trim() === '' ? 'e' : 'p';
  if (client === 'p') values.set(PLACEHOLDER.client, (r.client as { clientId: string }).clientId);
  if (r.sourceAddress !== undefined) values.set(PLACEHOLDER.address, r.sourceAddress);
  if (r.requestId !== undefined) values.set(PLACEHOLDER.request, r.requestId);
  const idPart = (placeholder: string, value: string | undefined): string => {
    if (value === undefined) return '-';
    if (!FHIR_ID.test(value)) return 'n';
    values.set(placeholder, value);
    return 'p';
  };
  const id = idPart(PLACEHOLDER.id, r.resource?.id);
  const version = idPart(PLACEHOLDER.version, r.resource?.versionId);
  const query = r.query === undefined ? '-' : r.query.query === '' ? 'e' : 'q';
  const patient = r.patient === undefined ? '-' : PATIENT_REFERENCE.test(r.patient) ? 'p' : 'n';
  if (patient === 'p') values.set(PLACEHOLDER.patient, (r.patient as string).slice('Patient/'.length));
  const signature = `${constants}${client}${r.sourceAddress === undefined ? '-' : 'p'}${r.requestId === undefined ? '-' : 'p'}${r.resource === undefined ? '-' : 'p'}${id}${version}${query}${patient}`;
  const record = (): AuditRecord => {
    // What no parameter searches stays out (outcomeText, the client's name, the query's text).
    const s: AuditRecord = { kind: r.kind, outcome: r.outcome, server: r.server, id: 'x', lastUpdated: EPOCH, recorded: EPOCH };
    if (r.status !== undefined) s.status = r.status;
    if (r.client !== undefined) s.client = { clientId: client === 'e' ? '' : PLACEHOLDER.client, ...(r.client.tenant !== undefined ? { tenant: r.client.tenant } : {}) };
    // Sanitised already (auditRecordOf): auditEvent keeps these as they are.
    if (r.sourceAddress !== undefined) s.sourceAddress = PLACEHOLDER.address;
    if (r.requestId !== undefined) s.requestId = PLACEHOLDER.request;
    if (r.resource !== undefined) {
      const stand = (part: string, placeholder: string): string => (part === 'p' ? placeholder : NOT_AN_ID);
      s.resource = {
        type: r.resource.type,
        ...(id !== '-' ? { id: stand(id, PLACEHOLDER.id) } : {}),
        ...(version !== '-' ? { versionId: stand(version, PLACEHOLDER.version) } : {}),
      };
    }
    if (r.query !== undefined) s.query = { ...(r.query.resourceType !== undefined ? { resourceType: r.query.resourceType } : {}), query: query === 'e' ? '' : 'q' };
    if (r.patient !== undefined) s.patient = patient === 'p' ? `Patient/${PLACEHOLDER.patient}` : NOT_AN_ID;
    return s;
  };
  return { signature, values, record };
}

/** Conditions for one alternative: exact keys (any of them matches) or LIKE patterns on the row's keys. */
export function alternativeKeys(param: string, alt: Alternative): { keys: string[]; patterns: string[]; above?: string } {
  switch (alt.type) {
    case 'token': {
      if (alt.text !== undefined) return { keys: [], patterns: [`${likePrefix(param, K.text)}${escapeLike(alt.text)}%`] };
      if (alt.code !== undefined) {
        if (alt.system === undefined) return { keys: [key(param, K.code, alt.code)], patterns: [] };
        return { keys: [key(param, K.token, `${alt.system ?? ''}${US}${alt.code}`)], patterns: [] };
      }
      if (typeof alt.system === 'string') return { keys: [key(param, K.system, alt.system)], patterns: [] };
      return { keys: [key(param, K.present)], patterns: [] };
    }
    case 'reference':
      if (alt.url !== undefined) return { keys: [key(param, K.url, alt.url)], patterns: [] };
      if (alt.id === undefined) return { keys: [key(param, K.present)], patterns: [] };
      return { keys: [alt.targetType !== undefined ? key(param, K.ref, `${alt.targetType}/${alt.id}`) : key(param, K.refId, alt.id)], patterns: [] };
    case 'identifier':
      if (alt.value !== undefined) {
        if (alt.system === undefined) return { keys: [key(param, K.identValue, alt.value)], patterns: [] };
        return { keys: [key(param, K.ident, `${alt.system ?? ''}${US}${alt.value}`)], patterns: [] };
      }
      if (typeof alt.system === 'string') return { keys: [key(param, K.identSystem, alt.system)], patterns: [] };
      return { keys: [], patterns: [`${likePrefix(param, K.identValue)}%`] };
    case 'string':
      if (alt.mode === 'exact') return { keys: [key(param, K.exact, alt.value)], patterns: [] };
      if (alt.mode === 'contains') return { keys: [], patterns: [`${likePrefix(param, K.string)}%${escapeLike(alt.value)}%`] };
      return { keys: [], patterns: [`${likePrefix(param, K.string)}${escapeLike(alt.value)}%`] };
    case 'uri':
      if (alt.mode === 'below') return { keys: [], patterns: [`${likePrefix(param, K.uri)}${escapeLike(alt.value)}%`] };
      // :above: the stored URI is a prefix of the value searched for.
      if (alt.mode === 'above') return { keys: [], patterns: [], above: key(param, K.uri, alt.value) };
      return { keys: [key(param, K.uri, alt.value)], patterns: [] };
    case 'date':
    case 'number':
    case 'quantity':
    case 'composite':
      throw fhirError('unsupported-search-parameter', `AuditEvent: '${param}' cannot be searched with a ${alt.type} value`, param);
  }
}

/** `_include` from AuditEvents: the targets their reference keys name (`param` '*': any). */
export function auditReferencesFromSql(ids: string[], param: string, targetType: string | undefined): { text: string; values: unknown[] } {
  const p = new Params();
  const us = p.add(US);
  // A reference key's value is Type/id, neither of which can hold U+001F or '/'.
  const conditions = [`a.id = ANY(${p.add(ids)}::text[])`, `split_part(k, ${us}, 2) = ${p.add(K.ref)}`];
  if (param !== '*') conditions.push(`split_part(k, ${us}, 1) = ${p.add(param)}`);
  const outer = targetType ? `WHERE split_part(v, '/', 1) = ${p.add(targetType)}` : '';
  return {
    text: `SELECT DISTINCT split_part(v, '/', 1) AS target_type, split_part(v, '/', 2) AS target_id FROM (
             SELECT split_part(k, ${us}, 3) AS v FROM audit_event a, unnest(a.keys) AS k WHERE ${conditions.join(' AND ')}
           ) refs ${outer}`,
    values: p.values,
  };
}

/** `_revinclude` of AuditEvents: the events that refer to any of the targets through `param`. */
export function auditReferencesToSql(param: string, targets: { type: string; id: string }[]): { text: string; values: unknown[] } {
  return {
    text: 'SELECT a.id FROM audit_event a WHERE a.keys && $1::text[]',
    values: [targets.map((t) => key(param, K.ref, `${t.type}/${t.id}`))],
  };
}
