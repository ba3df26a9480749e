/**
 * Inbound HL7 v2 ADT^A01/A04/A08/A31 → FHIR R4 Patient + one Condition per DG1, and the original-mode
 * ACK (HL7 v2.5 chapter 2, sections 2.9 and 2.15.5 ERR; tables 0008, 0357). Pure: no storage, no I/O.
 * Mapping follows the HL7 v2-to-FHIR IG (https://build.fhir.org/ig/HL7/v2-to-fhir/) where it has an
 * answer: PID → Patient, DG1 → Condition; choices of ours are marked "ours".
 *
 * Parsing uses node-hl7-client 3.2's Message, after a preparation step for what real senders do
 * and the library does not handle: a UTF-8 byte-order mark, LF or CRLF segment separators,
 * continuation lines (joined to the previous segment with LF), and a field whose value ends in
 * "MSH" (the library counts every "MSH|" as a new message and throws; we hex-escape its H).
 * The library's own quirks: segment handles take segment-relative numbers, MSH-n is child n-1,
 * and reading a component past the end of a repetition throws, so values are read here only by
 * walking toArray() (repetitions → components → subcomponents, unescaped by toString()).
 */
import { randomBytes } from 'node:crypto';
import type { Address, CodeableConcept, Coding, Condition, ContactPoint, HumanName, Identifier, Patient } from 'fhir/r4.js';
import { Message } from 'node-hl7-client';

export const ADT_EVENTS = ['A01', 'A04', 'A08', 'A31'] as const;
export type AdtEvent = (typeof ADT_EVENTS)[number];

/** HL7 table 0357, the codes we send. */
export const HL7_ERROR_CODES = {
  100: 'Segment sequence error',
  101: 'Required field missing',
  102: 'Data type error',
  103: 'Table value not found',
  200: 'Unsupported message type',
  201: 'Unsupported event code',
  207: 'Application internal error',
} as const;
export type Hl7ErrorCode = keyof typeof HL7_ERROR_CODES;

/** Where a problem is (ERR-2: segment ID, its 1-based sequence among same-named segments, field). */
export interface AckError {
  segment?: string;
  sequence?: number;
  field?: number;
  code: Hl7ErrorCode;
}

export interface AdtOk {
  kind: 'ok';
  event: AdtEvent;
  controlId: string;
  sendingApplication: string;
  sendingFacility: string;
  version: string;
  /** MSH-7 as a FHIR dateTime, to order updates that arrive late. */
  messageTime?: string;
  patient: Patient;
  /** The identifier the Conditions' subject and identifiers use (first MR, else first PID-3). */
  mrn: { system: string; value: string };
  conditions: Condition[];
  warnings: string[];
}
/** The message cannot be read (ACK AR). */
export interface AdtReject {
  kind: 'reject';
  reason: string;
  err: AckError;
}
/** The message was read but cannot be applied (ACK AE). */
export interface AdtError {
  kind: 'error';
  reason: string;
  err: AckError;
  controlId: string;
}
export type AdtResult = AdtOk | AdtReject | AdtError;

export const SYSTEMS = {
  v20203: 'http://terminology.hl7.org/CodeSystem/v2-0203',
  v20052: 'http://terminology.hl7.org/CodeSystem/v2-0052',
  conditionCategory: 'http://terminology.hl7.org/CodeSystem/condition-category',
  conditionClinical: 'http://terminology.hl7.org/CodeSystem/condition-clinical',
  conditionVerStatus: 'http://terminology.hl7.org/CodeSystem/condition-ver-status',
  icd10cm: 'http://hl7.org/fhir/sid/icd-10-cm',
  icd9cm: 'http://hl7.org/fhir/sid/icd-9-cm',
  snomed: 'http://snomed.info/sct',
} as const;

/** DG1-3.3 (or DG1-2) → code system. I10 is WHO ICD-10 in table 0396, but US senders send ICD-10-CM codes under it. */
const CODE_SYSTEMS: Record<string, string> = {
  I10: SYSTEMS.icd10cm, ICD10: SYSTEMS.icd10cm, 'ICD-10-CM': SYSTEMS.icd10cm, I10C: SYSTEMS.icd10cm, ICD10CM: SYSTEMS.icd10cm,
  I9: SYSTEMS.icd9cm, I9C: SYSTEMS.icd9cm, ICD9: SYSTEMS.icd9cm, 'ICD-9-CM': SYSTEMS.icd9cm,
  SCT: SYSTEMS.snomed, SNM: SYSTEMS.snomed, SNOMED: SYSTEMS.snomed, SNOMEDCT: SYSTEMS.snomed, 'SNOMED-CT': SYSTEMS.snomed,
};
const GENDER: Record<string, Patient['gender']> = { M: 'male', F: 'female', O: 'other', A: 'other', U: 'unknown', N: 'unknown' };
const NAME_USE: Record<string, HumanName['use']> = { L: 'official', D: 'usual', M: 'maiden', N: 'nickname', S: 'anonymous', BAD: 'old' };
const DIAGNOSIS_TYPE: Record<string, string> = { A: 'Admitting', W: 'Working', F: 'Final' };
/** v2-0203 identifier types we recognise (others go to type.text). */
const ID_TYPES: Record<string, string> = {
  MR: 'Medical record number', PI: 'Patient internal identifier', PT: 'Patient external identifier', SS: 'Social Security number',
  AN: 'Account number', VN: 'Visit number', DL: "Driver's license number", PPN: 'Passport number', NI: 'National unique individual identifier',
  NH: 'National Health Plan Identifier', JHN: 'Jurisdictional health number', MA: 'Patient Medicaid number', MC: 'Patient Medicare number', PN: 'Person number',
};

const OID = /^[0-2](\.(0|[1-9]\d*))+$/;
const uriPart = (s: string): string => encodeURIComponent(s);

/**
 * One segment, read as plain strings: repetitions → components → subcomponents, unescaped.
 *
 * The library parses the message into segments and unescapes; the fields of a segment are split
 * here by the message's own delimiters, exactly as the library's nodes split them (an empty field,
 * repetition or component has no children; a component's text is its subcomponents'), without the
 * node per field, repetition, component and subcomponent the library builds (an EventEmitter
 * each: 60 % of a message's parse time went to their construction).
 * test/hl7-adt.test.ts checks both readings against each other on every sample message.
 */
export class Seg {
  private readonly fieldTexts: string[];
  private readonly fields = new Map<number, string[][][]>();
  constructor(
    readonly name: string,
    readonly sequence: number,
    raw: string,
    private readonly delimiters: Delimiters,
    private readonly unescape: (text: string) => string,
  ) {
    this.fieldTexts = raw.split(delimiters.field);
  }
  reps(field: number): string[][][] {
    let reps = this.fields.get(field);
    if (reps === undefined) {
      const { repetition, component, subcomponent } = this.delimiters;
      const text = this.fieldTexts[this.name === 'MSH' ? field - 1 : field] ?? '';
      reps = split(text, repetition).map((rep) => split(rep, component).map((comp) => (comp === '' ? [''] : comp.split(subcomponent).map(this.unescape))));
      this.fields.set(field, reps);
    }
    return reps;
  }
  value(field: number, comp = 1, sub = 1): string {
    return at(this.reps(field)[0], comp, sub);
  }
}

export interface Delimiters {
  field: string;
  component: string;
  repetition: string;
  subcomponent: string;
}

const split = (text: string, separator: string): string[] => (text === '' ? [] : text.split(separator));

/** The segments of a parsed message (node-hl7-client's Message), each numbered within its name. */
export function segmentsOf(message: Message): Seg[] {
  // Message.delimiters: segment, field, component, repetition, escape, subcomponent.
  const d = message.delimiters;
  const delimiters: Delimiters = { field: d.charAt(1), component: d.charAt(2), repetition: d.charAt(3), subcomponent: d.charAt(5) };
  const unescape = (text: string): string => message.unescape(text);
  const counts = new Map<string, number>();
  return message.toArray().map((node) => {
    const n = (counts.get(node.name) ?? 0) + 1;
    counts.set(node.name, n);
    return new Seg(node.name, n, node.toRaw(), delimiters, unescape);
  });
}

/** A (sub)component, trimmed; the v2 null `""` reads as empty. */
function at(rep: string[][] | undefined, comp: number, sub = 1): string {
  const v = (rep?.[comp - 1]?.[sub - 1] ?? '').trim();
  return v === '""' ? '' : v;
}

/** Parses one ADT message and maps it; never throws. */
export function parseAdt(text: string): AdtResult {
  const prepared = prepare(text);
  if ('reject' in prepared) return prepared.reject;
  let segs: Seg[];
  try {
    segs = segmentsOf(new Message({ text: prepared.text }));
  } catch (err) {
    return reject(`The message cannot be parsed: ${(err as Error).message}`, { segment: 'MSH', sequence: 1, code: 102 });
  }
  const msh = segs[0] as Seg;
  const type = msh.value(9);
  const controlId = msh.value(10);
  if (type === '') return reject('MSH-9 (message type) is empty', { segment: 'MSH', sequence: 1, field: 9, code: 101 });
  if (controlId === '') return reject('MSH-10 (message control ID) is empty', { segment: 'MSH', sequence: 1, field: 10, code: 101 });
  const error = (reason: string, err: AckError): AdtError => ({ kind: 'error', reason, err, controlId });
  const event = msh.value(9, 2) || (segs.find((s) => s.name === 'EVN')?.value(1) ?? '');
  if (type !== 'ADT') return error(`unsupported message type ${type}^${event}: only ADT is accepted`, { segment: 'MSH', sequence: 1, field: 9, code: 200 });
  if (!isAdtEvent(event)) return error(`unsupported event ADT^${event}: only ${ADT_EVENTS.join(', ')} are accepted`, { segment: 'MSH', sequence: 1, field: 9, code: 201 });

  const warnings = [...prepared.warnings];
  const messageTz = /[+-]\d{4}$/.exec(msh.value(7))?.[0];
  const sendingApplication = msh.value(3) || msh.value(3, 2);
  const sendingFacility = msh.value(4) || msh.value(4, 2);
  const pid = segs.find((s) => s.name === 'PID');
  if (!pid) return error('The ADT message has no PID segment', { segment: 'PID', code: 100 });

  const identifiers = patientIdentifiers(pid, sendingFacility || sendingApplication, warnings);
  const mrnIdentifier = identifiers.find((i) => i.type?.coding?.[0]?.code === 'MR') ?? identifiers[0];
  if (!mrnIdentifier?.system || !mrnIdentifier.value) return error('PID-3 (patient identifier list) holds no identifier', { segment: 'PID', sequence: 1, field: 3, code: 101 });
  if (mrnIdentifier.type?.coding?.[0]?.code !== 'MR') warnings.push(`PID-3 has no MR identifier; ${mrnIdentifier.value} is used as the patient's key`);
  const mrn = { system: mrnIdentifier.system, value: mrnIdentifier.value };

  const patient: Patient = { resourceType: 'Patient', identifier: identifiers };
  const names = pid.reps(5).map(humanName).filter((n): n is HumanName => n !== undefined);
  if (names.length > 0) patient.name = names;
  const telecom = [...pid.reps(13).map((r) => contactPoint(r, 'home')), ...pid.reps(14).map((r) => contactPoint(r, 'work'))].filter((t): t is ContactPoint => t !== undefined);
  if (telecom.length > 0) patient.telecom = telecom;
  const sex = pid.value(8).toUpperCase();
  if (sex !== '') {
    if (GENDER[sex]) patient.gender = GENDER[sex];
    else warnings.push(`PID-8 sex '${sex}' is not in table 0001; gender left out`);
  }
  const birth = pid.value(7);
  if (birth !== '') {
    const date = hl7Date(birth);
    if (date) patient.birthDate = date;
    else warnings.push(`PID-7 '${birth}' is not an HL7 date; birthDate left out`);
  }
  const addresses = pid.reps(11).map(address).filter((a): a is Address => a !== undefined);
  if (addresses.length > 0) patient.address = addresses;

  const conditions: Condition[] = [];
  for (const dg1 of segs.filter((s) => s.name === 'DG1')) {
    const mapped = condition(dg1, { mrn, facility: sendingFacility || sendingApplication, messageTz, warnings });
    if ('reason' in mapped) return error(mapped.reason, mapped.err);
    conditions.push(mapped);
  }
  const messageTime = hl7DateTime(msh.value(7), undefined).dateTime;
  return { kind: 'ok', event, controlId, sendingApplication, sendingFacility, version: msh.value(12), ...(messageTime ? { messageTime } : {}), patient, mrn, conditions, warnings };
}

const isAdtEvent = (e: string): e is AdtEvent => (ADT_EVENTS as readonly string[]).includes(e);
const reject = (reason: string, err: AckError): AdtReject => ({ kind: 'reject', reason, err });

/** BOM, line endings, continuation lines, batches, and the library's "MSH|" miscount. */
function prepare(raw: string): { text: string; warnings: string[] } | { reject: AdtReject } {
  const text = raw.replace(/^\uFEFF/, '').trimStart();
  if (!text.startsWith('MSH')) return { reject: reject('The message does not begin with an MSH segment', { segment: 'MSH', sequence: 1, code: 100 }) };
  const fs = text.charAt(3);
  if (fs === '' || /[A-Za-z0-9\s]/.test(fs)) return { reject: reject('MSH-1 (field separator) is missing or invalid', { segment: 'MSH', sequence: 1, field: 1, code: 102 }) };
  const esc = text.slice(4).split(fs)[0]?.charAt(2) || '\\';
  const segmentStart = new RegExp(`^[A-Z][A-Z0-9]{2}(${escapeRegExp(fs)}|$)`);
  const warnings: string[] = [];
  const segments: string[] = [];
  for (const line of text.split(/\r\n|\r|\n/)) {
    if (line.trim() === '') continue;
    if (segments.length > 0 && line.startsWith(`MSH${fs}`)) return { reject: reject('More than one MSH segment: batches are not accepted, send one message per frame', { segment: 'MSH', sequence: 2, code: 100 }) };
    if (segmentStart.test(line) || segments.length === 0) segments.push(line);
    else {
      warnings.push(`A line not starting with a segment ID was joined to the ${segments[segments.length - 1]?.slice(0, 3)} segment before it`);
      segments[segments.length - 1] += `\n${line}`;
    }
  }
  const masked = segments.map((s, i) => (i === 0 || fs !== '|' ? s : s.replaceAll('MSH|', `MS${esc}X48${esc}|`)));
  return { text: masked.join('\r'), warnings };
}

function escapeRegExp(s: string): string {
  return s.replace(/[-/\\^$*+?.()|[\]{}]/g, '\\$&');
}

/** PID-3 CX → Identifier; CX.4 assigning authority → system (urn:oid: for OIDs, else urn:hl7v2:assigner:). */
function patientIdentifiers(pid: Seg, sender: string, warnings: string[]): Identifier[] {
  const reps = pid.reps(3).length > 0 ? pid.reps(3) : pid.reps(2);
  return reps.flatMap((rep): Identifier[] => {
    const value = at(rep, 1);
    if (value === '') return [];
    let authority = assignerSystem(at(rep, 4, 1), at(rep, 4, 2), at(rep, 4, 3));
    if (!authority) {
      // ours: an identifier without an assigning authority is taken to be assigned by the sender.
      authority = sender ? `urn:hl7v2:assigner:${uriPart(sender)}` : undefined;
      warnings.push(`PID-3 identifier ${value} has no assigning authority (CX.4); ${authority ? `the sending facility is assumed` : 'it has no system'}`);
    }
    const typeCode = at(rep, 5);
    const identifier: Identifier = {};
    if (typeCode !== '') identifier.type = ID_TYPES[typeCode] ? { coding: [{ system: SYSTEMS.v20203, code: typeCode, display: ID_TYPES[typeCode] }] } : { text: typeCode };
    if (authority) identifier.system = authority;
    identifier.value = value;
    return [identifier];
  });
}

function assignerSystem(namespace: string, universalId: string, universalIdType: string): string | undefined {
  if (universalId !== '' && OID.test(universalId) && (universalIdType === 'ISO' || namespace === '')) return `urn:oid:${universalId}`;
  if (OID.test(namespace)) return `urn:oid:${namespace}`;
  if (namespace !== '') return `urn:hl7v2:assigner:${uriPart(namespace)}`;
  if (universalId !== '') return OID.test(universalId) ? `urn:oid:${universalId}` : `urn:hl7v2:assigner:${uriPart(universalId)}`;
  return undefined;
}

/** XPN: 1 family (FN.1 surname), 2 given, 3 middle, 4 suffix, 5 prefix, 6 degree, 7 name type (table 0200). */
function humanName(rep: string[][]): HumanName | undefined {
  const name: HumanName = {};
  const use = NAME_USE[at(rep, 7)];
  if (use) name.use = use;
  const family = at(rep, 1);
  if (family) name.family = family;
  const given = [at(rep, 2), at(rep, 3)].filter(Boolean);
  if (given.length > 0) name.given = given;
  const prefix = at(rep, 5);
  if (prefix) name.prefix = [prefix];
  const suffix = [at(rep, 4), at(rep, 6)].filter(Boolean);
  if (suffix.length > 0) name.suffix = suffix;
  return name.family || name.given ? name : undefined;
}

/** XAD: 1 street (SAD.1), 2 other designation, 3 city, 4 state, 5 zip, 6 country, 7 type (table 0190). */
function address(rep: string[][]): Address | undefined {
  const a: Address = {};
  const type = at(rep, 7);
  const use = ({ H: 'home', B: 'work', O: 'work', C: 'temp', BA: 'old' } as Record<string, Address['use']>)[type];
  if (use) a.use = use;
  if (type === 'M') a.type = 'postal';
  // SAD.1 is the street line; some senders split it as number & street name (SAD.3 & SAD.2).
  const street = (rep[0] ?? []).slice(1, 3).reduce((acc, p) => (p.trim() && !acc.includes(p.trim()) ? `${acc} ${p.trim()}`.trim() : acc), at(rep, 1));
  const line = [street, at(rep, 2)].filter(Boolean);
  if (line.length > 0) a.line = line;
  const [city, state, postalCode, country] = [at(rep, 3), at(rep, 4), at(rep, 5), at(rep, 6)];
  if (city) a.city = city;
  if (state) a.state = state;
  if (postalCode) a.postalCode = postalCode;
  if (country) a.country = country;
  return a.line || a.city || a.postalCode ? a : undefined;
}

/** XTN: 1 formatted number (≤ 2.5), 2 use (table 0201), 3 equipment (0202), 4 email, 5 country, 6 area, 7 local, 8 extension, 12 unformatted. */
function contactPoint(rep: string[][], defaultUse: 'home' | 'work'): ContactPoint | undefined {
  const useCode = at(rep, 2);
  const equipment = at(rep, 3);
  if (equipment === 'Internet' || equipment === 'X.400' || useCode === 'NET') {
    const value = at(rep, 4) || at(rep, 1);
    return value ? { system: 'email', value, use: useCode === 'WPN' ? 'work' : defaultUse } : undefined;
  }
  const parts = [at(rep, 5) && `+${at(rep, 5)}`, at(rep, 6), at(rep, 7)].filter(Boolean).join(' ');
  const extension = at(rep, 8) ? ` ext. ${at(rep, 8)}` : '';
  const value = at(rep, 1) || (parts ? parts + extension : at(rep, 12));
  if (!value) return undefined;
  const system: ContactPoint['system'] = equipment === 'FX' ? 'fax' : equipment === 'BP' ? 'pager' : 'phone';
  const use: ContactPoint['use'] = equipment === 'CP' ? 'mobile' : useCode === 'WPN' ? 'work' : ['PRN', 'ORN', 'VHN'].includes(useCode) ? 'home' : defaultUse;
  return { system, value, use };
}

interface DiagnosisContext {
  mrn: { system: string; value: string };
  facility: string;
  messageTz: string | undefined;
  warnings: string[];
}

/**
 * DG1 → Condition: 3 code (CWE: code, text, system; 4–6 alternate), 4 description, 5 date/time,
 * 6 type (table 0052), 20 identifier (EI), 21 action code (table 0206; D = delete, ours: entered-in-error).
 */
function condition(dg1: Seg, ctx: DiagnosisContext): Condition | { reason: string; err: AckError } {
  const where = `DG1 ${dg1.sequence}`;
  const cwe = dg1.reps(3)[0];
  const code = at(cwe, 1);
  if (code === '') return { reason: `${where} has no diagnosis code (DG1-3)`, err: { segment: 'DG1', sequence: dg1.sequence, field: 3, code: 101 } };
  if (!ctx.facility) return { reason: 'MSH-4 (sending facility) and MSH-3 are empty: diagnoses cannot be given stable identifiers', err: { segment: 'MSH', sequence: 1, field: 4, code: 101 } };
  const codingSystem = (at(cwe, 3) || dg1.value(2)).toUpperCase();
  const system = CODE_SYSTEMS[codingSystem];
  const text = dg1.value(4) || at(cwe, 2);
  const concept: CodeableConcept = {};
  if (system) {
    const coding: Coding[] = [{ system, code, ...(at(cwe, 2) ? { display: at(cwe, 2) } : {}) }];
    const alternate = CODE_SYSTEMS[at(cwe, 6).toUpperCase()];
    if (alternate && at(cwe, 4)) coding.push({ system: alternate, code: at(cwe, 4), ...(at(cwe, 5) ? { display: at(cwe, 5) } : {}) });
    concept.coding = coding;
    if (text) concept.text = text;
  } else {
    ctx.warnings.push(`${where}: coding system '${codingSystem}' is not known; the diagnosis is kept as text`);
    concept.text = text ? `${text} (${codingSystem || 'local'} ${code})` : `${codingSystem || 'local'} ${code}`;
  }

  const identifierEi = dg1.reps(20)[0];
  const identifier: Identifier = at(identifierEi, 1)
    ? { system: assignerSystem('', at(identifierEi, 3), at(identifierEi, 4)) ?? `urn:hl7v2:dg1:${uriPart(ctx.facility)}`, value: at(identifierEi, 1) }
    : { system: `urn:hl7v2:dg1:${uriPart(ctx.facility)}`, value: `${ctx.mrn.value}|${code}` };

  const type = dg1.value(6).toUpperCase();
  const deleted = dg1.value(21).toUpperCase() === 'D';
  const category: CodeableConcept[] = [{ coding: [{ system: SYSTEMS.conditionCategory, code: 'encounter-diagnosis', display: 'Encounter Diagnosis' }] }];
  if (DIAGNOSIS_TYPE[type]) category.push({ coding: [{ system: SYSTEMS.v20052, code: type, display: DIAGNOSIS_TYPE[type] }] });
  else if (type !== '') ctx.warnings.push(`${where}: diagnosis type '${type}' is not in table 0052`);
  const verification = deleted ? 'entered-in-error' : type === 'F' ? 'confirmed' : 'provisional';

  const result: Condition = {
    resourceType: 'Condition',
    identifier: [identifier],
    ...(deleted ? {} : { clinicalStatus: { coding: [{ system: SYSTEMS.conditionClinical, code: 'active' }] } }),
    verificationStatus: { coding: [{ system: SYSTEMS.conditionVerStatus, code: verification }] },
    category,
    code: concept,
    subject: { type: 'Patient', identifier: { system: ctx.mrn.system, value: ctx.mrn.value } },
  };
  const when = dg1.value(5);
  if (when !== '') {
    const { dateTime, warning } = hl7DateTime(when, ctx.messageTz);
    if (dateTime) {
      result.onsetDateTime = dateTime;
      result.recordedDate = dateTime;
    }
    if (warning) ctx.warnings.push(`${where} DG1-5: ${warning}`);
  }
  return result;
}

const TS = /^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$/;

/** HL7 DT/TS → FHIR date (the date as written, no time-zone shift). */
export function hl7Date(ts: string): string | undefined {
  const m = TS.exec(ts.trim());
  if (!m) return undefined;
  const [, y, mo, d] = m as unknown as [string, string, string?, string?];
  if (mo !== undefined && (+mo < 1 || +mo > 12)) return undefined;
  if (d !== undefined && (+d < 1 || +d > new Date(Date.UTC(+y, +(mo ?? 1), 0)).getUTCDate())) return undefined;
  return [y, mo, d].filter(Boolean).join('-');
}

/**
 * HL7 TS → FHIR dateTime. A time needs a zone in FHIR: the value's own, else MSH-7's; without
 * either, only the date is kept (ours: guessing the server's zone would be wrong by hours).
 */
export function hl7DateTime(ts: string, fallbackTz: string | undefined): { dateTime?: string; warning?: string } {
  const m = TS.exec(ts.trim());
  const date = m ? hl7Date(ts) : undefined;
  if (!m || !date) return { warning: `'${ts}' is not an HL7 date/time; left out` };
  const [, , , , hh, mi, ss, frac, ownTz] = m;
  if (hh === undefined) return { dateTime: date };
  if (+hh > 23 || +(mi ?? 0) > 59 || +(ss ?? 0) > 59) return { warning: `'${ts}' is not an HL7 date/time; left out` };
  const tz = ownTz ?? fallbackTz;
  if (!tz) return { dateTime: date, warning: `'${ts}' has a time but no time zone (nor has MSH-7); only the date is kept` };
  if (+tz.slice(1, 3) > 14 || +tz.slice(3) > 59) return { dateTime: date, warning: `'${ts}' has an invalid time zone; only the date is kept` };
  return { dateTime: `${date}T${hh}:${mi ?? '00'}:${ss ?? '00'}${frac ?? ''}${tz.slice(0, 3)}:${tz.slice(3)}` };
}

// ---------------------------------------------------------------------------------------------
// Acknowledgements

export interface AckOptions {
  /** MSH-10 of the ACK; generated when absent. */
  controlId?: string;
  now?: Date;
  /** Our MSH-3/MSH-4 when the original's MSH-5/MSH-6 are empty. */
  application?: string;
  facility?: string;
}

/**
 * The original-mode ACK for a message: MSH with sender and receiver swapped, ACK^<event>^ACK, a
 * new control ID and the original's processing ID and version; MSA with the code and the
 * original control ID; ERR when not AA. The original's MSH is read tolerantly, without the
 * library, so a message the parser rejects still gets an ACK with whatever can be read. The ACK
 * uses the original's encoding characters, so the copied fields stay valid as they are.
 */
export function ack(original: string, code: 'AA' | 'AE' | 'AR', text?: string, err?: AckError, options: AckOptions = {}): string {
  const msh = rawMsh(original);
  const fs = msh?.fs ?? '|';
  const enc = msh?.enc ?? '^~\\&';
  const [cs = '^', , esc = '\\', ss = '&'] = enc;
  const f = (n: number): string => msh?.fields[n] ?? '';
  const first = (n: number): string => f(n).split(cs)[0] ?? '';
  const event = f(9).split(cs)[1] ?? '';
  const version = first(12) || '2.5';
  const escape = (s: string, max: number): string =>
    s
      .replace(/[\r\n]+/g, ' ')
      .slice(0, max)
      .replace(/[\s\S]/g, (c) => (c === esc ? `${esc}E${esc}` : c === fs ? `${esc}F${esc}` : c === cs ? `${esc}S${esc}` : c === enc[1] ? `${esc}R${esc}` : c === ss ? `${esc}T${esc}` : c));
  const header = ['MSH', enc, f(5) || escape(options.application ?? '', 227), f(6) || escape(options.facility ?? '', 227), f(3), f(4), hl7Now(options.now ?? new Date()), '', event ? `ACK${cs}${event}${cs}ACK` : 'ACK', options.controlId ?? newControlId(), first(11) || 'P', version];
  const segments = [header.join(fs), ['MSA', code, f(10), text ? escape(text, 80) : ''].join(fs).replace(new RegExp(`${escapeRegExp(fs)}+$`), '')];
  if (code !== 'AA') {
    const e = err ?? { code: 207 as const };
    const label = HL7_ERROR_CODES[e.code];
    const location = e.segment ? [e.segment, e.sequence ?? '', e.field ?? ''].join(cs).replace(new RegExp(`${escapeRegExp(cs)}+$`), '') : '';
    const legacy = versionBefore(version, 2, 5) ? [location, `${e.code}${ss}${escape(label, 80)}${ss}HL70357`].filter(Boolean).join(cs) : '';
    segments.push(['ERR', legacy, location, `${e.code}${cs}${escape(label, 80)}${cs}HL70357`, 'E', '', '', '', text ? escape(text, 250) : ''].join(fs));
  }
  return segments.join('\r');
}

/** The ACK a parse result calls for: ok → AA, reject → AR, error → AE. */
export function ackFor(original: string, result: AdtResult, options?: AckOptions): string {
  if (result.kind === 'ok') return ack(original, 'AA', undefined, undefined, options);
  return ack(original, result.kind === 'reject' ? 'AR' : 'AE', result.reason, result.err, options);
}

/** MSA of a received ACK (for outbound delivery): code, echoed control ID, text. */
export function readAck(text: string): { code: string; controlId: string; text: string } | undefined {
  const msh = rawMsh(text);
  const fs = msh?.fs ?? '|';
  const msa = text.split(/\r\n|\r|\n/).find((l) => l.startsWith(`MSA${fs}`));
  if (!msa) return undefined;
  const [, code = '', controlId = '', message = ''] = msa.split(fs);
  return { code, controlId, text: message };
}

/**
 * MSH-n's first `components` components (joined by ^), read tolerantly without the parser (also
 * from messages it refuses); undefined when MSH or the field is missing or empty.
 */
export function mshField(text: string, n: number, components = 1): string | undefined {
  const msh = rawMsh(text);
  if (!msh) return undefined;
  const cs = msh.enc[0] ?? '^';
  const value = msh.fields[n]?.split(cs).slice(0, components).join('^').trim();
  return value || undefined;
}

function rawMsh(text: string): { fs: string; enc: string; fields: string[] } | undefined {
  const line = text.replace(/^\uFEFF/, '').split(/\r\n|\r|\n/).map((l) => l.trimStart()).find((l) => l.startsWith('MSH') && l.length > 4);
  if (!line) return undefined;
  const fs = line.charAt(3);
  if (/[A-Za-z0-9\s]/.test(fs)) return undefined;
  const parts = line.split(fs);
  const enc = parts[1] && parts[1].length >= 2 && parts[1].length <= 5 ? parts[1] : '^~\\&';
  // fields[n] is MSH-n: MSH-1 is the separator itself, MSH-2 the encoding characters.
  return { fs, enc, fields: ['MSH', fs, enc, ...parts.slice(2)] };
}

function versionBefore(version: string, major: number, minor: number): boolean {
  const [a = 0, b = 0] = version.split('.').map(Number);
  return a < major || (a === major && b < minor);
}

function hl7Now(d: Date): string {
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}+0000`;
}

let ackSequence = 0;
/** 16 characters, unique per process and across restarts (time + counter + random); MSH-10 allows 20. */
function newControlId(): string {
  ackSequence = (ackSequence + 1) % 1296;
  return `${Date.now().toString(36).toUpperCase()}${ackSequence.toString(36).toUpperCase().padStart(2, '0')}${randomBytes(3).toString('hex').toUpperCase()}`;
}
