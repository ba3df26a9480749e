/**
 * The two ways a progress report reaches a physician's EHR, each one attempt at a time, each
 * answering with an outcome the worker acts on (never throwing for a failure of the peer):
 *
 * - FHIR (https://hl7.org/fhir/R4/http.html#create): a DocumentReference, then optionally a
 *   Communication pointing at it (when the Endpoint asks for one: src/ehr/endpoint.ts). EHRs such
 *   as Epic reject duplicates and have no conditional create, so idempotency is ours: every
 *   resource carries a stable identifier, and every attempt searches `?identifier=system|value`
 *   before it creates. A resource found is taken as delivered. The subjects are set to the EHR's
 *   own Patient (found by MRN), the Communication's recipients to the EHR's Practitioner found by
 *   identifier (an NPI, say) where exactly one carries it, else left as identifier-only
 *   references, and its `sent` to the time of the attempt that creates it.
 * - HL7 v2 over MLLP (HL7 v2.5 ch. 2.9, acknowledgments; MLLP release 2): one MDM^T02 per
 *   connection, one message in flight, the reply read as its ACK. The peer cannot be asked whether
 *   it already has a message, so an attempt whose ACK never came is resent AS IS: the same MSH-10
 *   control id and TXA-12 unique document number, by which the receiver can recognise a duplicate
 *   (HL7 v2.5 §2.10.2). A receiver that does not de-duplicate may then file the report twice.
 *
 * Failure classes: transient (try again later; `ambiguous` when the peer may have received it),
 * permanent (retrying cannot help: a person must look).
 */
import type { Communication, DocumentReference, Identifier, Reference } from 'fhir/r4.js';
import { createResource, EhrError, findByIdentifier, findPatient, type EhrConnection } from '../ehr/fhir-ehr.js';
import { readAck } from '../hl7/adt.js';
import { MllpClient, MllpError } from '../hl7/mllp-client.js';
import { defaultEgress, EgressRefused, type EgressGuard } from '../ehr/egress.js';

export type DeliveryOutcome =
  /**
   * `remoteId`: the DocumentReference's URL at the EHR (FHIR), the MSH-10 acknowledged (MLLP);
   * `communication`: the Communication's URL at the EHR, when one was sent.
   */
  | { kind: 'delivered'; remoteId: string; communication?: string; note?: string }
  | { kind: 'transient'; reason: string; ambiguous: boolean; retryAfterSeconds?: number }
  | { kind: 'permanent'; reason: string };

/**
 * The DocumentReference's stable identifier is its masterIdentifier, else its first identifier with
 * a system and a value. A Communication needs one too (same rule on `identifier`); references in
 * it to the DocumentReference by that identifier get the EHR's `DocumentReference/<id>` added, its
 * subject the EHR's Patient (as the document's), identifier-only recipients the EHR's resource.
 */
export interface FhirDeliveryPayload {
  documentReference: DocumentReference;
  communication?: Communication;
  /**
   * The patient's identifier at the EHR (its MRN): the document's subject is set, at delivery, to
   * the EHR's Patient carrying it (the request that queued it did not call the EHR).
   */
  patientIdentifier?: { system: string; value: string };
}

/** A complete MDM^T02 whose MSH-10 and TXA-12 stay the same on every attempt. */
export interface MllpDeliveryPayload {
  message: string;
}

export interface FhirTransport {
  deliver(payload: FhirDeliveryPayload, connection: EhrConnection): Promise<DeliveryOutcome>;
}

export interface MllpTransport {
  /** `address`: `mllp://host:port`. */
  deliver(payload: MllpDeliveryPayload, address: string): Promise<DeliveryOutcome>;
}

interface Key {
  system: string;
  value: string;
}

const keyOf = (...candidates: (Identifier | undefined)[]): Key | undefined => {
  const found = candidates.find((i) => i?.system && i.value);
  return found ? { system: found.system as string, value: found.value as string } : undefined;
};

export class FhirDocumentTransport implements FhirTransport {
  constructor(private readonly now: () => Date = () => new Date()) {}

  async deliver(payload: FhirDeliveryPayload, conn: EhrConnection): Promise<DeliveryOutcome> {
    const doc = payload?.documentReference;
    if (doc?.resourceType !== 'DocumentReference') return { kind: 'permanent', reason: 'the job holds no DocumentReference' };
    const docKey = keyOf(doc.masterIdentifier, ...(doc.identifier ?? []));
    if (!docKey) return { kind: 'permanent', reason: 'the DocumentReference has no identifier with a system and a value: it could not be delivered at most once' };
    const comm = payload.communication;
    const commKey = comm ? keyOf(...(comm.identifier ?? [])) : undefined;
    if (comm && (comm.resourceType !== 'Communication' || !commKey)) return { kind: 'permanent', reason: 'the Communication has no identifier with a system and a value' };
    const sent = { value: false };
    let url: string | undefined;
    try {
      let subject: Reference | undefined;
      if (payload.patientIdentifier && !doc.subject?.reference) {
        const patient = await findPatient(conn, { identifier: payload.patientIdentifier });
        if (!patient?.id) return { kind: 'permanent', reason: `the EHR has no Patient with identifier ${payload.patientIdentifier.system}|${payload.patientIdentifier.value}` };
        subject = { reference: `Patient/${patient.id}` };
      }
      const outbound = subject ? { ...doc, subject: { ...subject, ...(doc.subject?.display ? { display: doc.subject.display } : {}) } } : doc;
      const document = await ensureCreated(conn, outbound, docKey, sent);
      const base = conn.baseUrl.replace(/\/+$/, '');
      url = `${base}/DocumentReference/${document.id}`;
      const notes = document.existed ? ['the EHR already had the document (an earlier attempt had delivered it)'] : [];
      if (!comm || !commKey) return { kind: 'delivered', remoteId: url, ...(notes.length > 0 ? { note: notes.join('; ') } : {}) };
      const recipients = await resolveRecipients(conn, comm.recipient, notes);
      const message: Communication = {
        ...pointAt(comm, docKey, `DocumentReference/${document.id}`),
        ...(subject && !comm.subject?.reference ? { subject: { ...subject, ...(comm.subject?.display ? { display: comm.subject.display } : {}) } } : {}),
        ...(recipients ? { recipient: recipients } : {}),
        sent: comm.sent ?? this.now().toISOString(),
      };
      const created = await ensureCreated(conn, message, commKey, sent);
      notes.push(`Communication/${created.id}${created.existed ? ' (already there)' : ''}`);
      return { kind: 'delivered', remoteId: url, communication: `${base}/Communication/${created.id}`, note: notes.join('; ') };
    } catch (error) {
      if (!(error instanceof EhrError)) throw error;
      const reason = url ? `the document is at ${url}, but its Communication is not: ${error.message}` : error.message;
      if (error.kind === 'transient') {
        return { kind: 'transient', reason, ambiguous: sent.value, ...(error.retryAfterSeconds !== undefined ? { retryAfterSeconds: error.retryAfterSeconds } : {}) };
      }
      return { kind: 'permanent', reason };
    }
  }
}

/** Types a Communication's recipient is looked up as at the EHR (Communication.recipient's targets we send). */
const RECIPIENT_TYPES = new Set(['Practitioner', 'PractitionerRole', 'Organization', 'CareTeam']);

/**
 * The recipients with those named only by identifier made literal: the EHR's resource when exactly
 * one carries the identifier. None, several, or an EHR that does not let us search (403, 404, 400:
 * our registration lacks the scope, the type is not supported) leave it identifier-only, which a
 * FHIR server accepts and a person can still resolve; why is added to `notes` (no identifier
 * values there). A transient failure or refused credentials are thrown: the attempt is retried.
 */
async function resolveRecipients(conn: EhrConnection, recipients: Reference[] | undefined, notes: string[]): Promise<Reference[] | undefined> {
  if (!recipients) return undefined;
  const out: Reference[] = [];
  for (const recipient of recipients) {
    const key = keyOf(recipient.identifier);
    const type = recipient.type ?? 'Practitioner';
    if (recipient.reference || !key || !RECIPIENT_TYPES.has(type)) {
      out.push(recipient);
      continue;
    }
    let found: { id?: string }[];
    try {
      found = await findByIdentifier<{ resourceType: string; id?: string; identifier?: Identifier[] }>(conn, type, key);
    } catch (error) {
      if (!(error instanceof EhrError) || error.kind !== 'permanent') throw error;
      notes.push(`the recipient was not looked up at the EHR (${error.code}): sent by identifier only`);
      out.push(recipient);
      continue;
    }
    const id = found.length === 1 ? found[0]?.id : undefined;
    if (id) out.push({ ...recipient, type, reference: `${type}/${id}` });
    else {
      notes.push(found.length === 0 ? `no ${type} at the EHR carries the recipient's identifier: sent by identifier only` : `${found.length} ${type}s at the EHR carry the recipient's identifier: sent by identifier only`);
      out.push(recipient);
    }
  }
  return out;
}

/**
 * The EHR's id of the resource carrying `key`: found by a search, or else created. A create the
 * EHR refuses is followed by one more search (an EHR that rejects duplicates may hold it already
 * where its search index did not show it yet); a create that names no id, by one more search too.
 */
async function ensureCreated(conn: EhrConnection, resource: DocumentReference | Communication, key: Key, sent: { value: boolean }): Promise<{ id: string; existed: boolean }> {
  const find = async (): Promise<string | undefined> => (await findByIdentifier<typeof resource>(conn, resource.resourceType, key)).find((r) => r.id)?.id;
  const existing = await find();
  if (existing) return { id: existing, existed: true };
  let created: { id?: string };
  try {
    sent.value = true;
    created = await createResource(conn, resource);
  } catch (error) {
    if (!(error instanceof EhrError) || error.kind === 'transient') throw error;
    const there = await find();
    if (there) return { id: there, existed: true };
    throw error;
  }
  if (created.id) return { id: created.id, existed: false };
  const found = await find();
  if (found) return { id: found, existed: false };
  throw new EhrError('transient', 'not-fhir', `the EHR accepted the ${resource.resourceType} without naming its id, and a search does not find it yet`);
}

/** A copy of the Communication whose references to the document by identifier also name its id at the EHR. */
function pointAt(comm: Communication, key: Key, reference: string): Communication {
  const walk = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(walk);
    if (typeof value !== 'object' || value === null) return value;
    const o = value as Record<string, unknown>;
    const id = o.identifier as Identifier | undefined;
    if (o.reference === undefined && id?.system === key.system && id.value === key.value && (o.type === undefined || o.type === 'DocumentReference')) {
      return { ...o, reference };
    }
    return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, walk(v)]));
  };
  return walk(comm) as Communication;
}

export interface MllpTransportOptions {
  /** Default 10 s. */
  connectTimeoutMs?: number;
  /** How long to wait for the ACK after sending; default 30 s. */
  ackTimeoutMs?: number;
  /** Which addresses may be connected to (src/ehr/egress.ts); default defaultEgress(). */
  egress?: EgressGuard;
}

export class MllpDocumentTransport implements MllpTransport {
  constructor(private readonly options: MllpTransportOptions = {}) {}

  async deliver(payload: MllpDeliveryPayload, address: string): Promise<DeliveryOutcome> {
    // An Endpoint without an address (it may come from any writer) fails at once, not as a crash retried.
    const peer = typeof address === 'string' ? parseMllpAddress(address) : undefined;
    if (!peer) return { kind: 'permanent', reason: `the Endpoint's address ${JSON.stringify(typeof address === 'string' ? address.slice(0, 200) : address)} is not mllp://host:port` };
    const message = typeof payload?.message === 'string' ? payload.message : '';
    const controlId = controlIdOf(message);
    if (!controlId) return { kind: 'permanent', reason: 'the job holds no HL7 v2 message with a control id (MSH-10)' };
    const egress = this.options.egress ?? defaultEgress();
    const refused = egress.literalRefusal(peer.host);
    if (refused) return { kind: 'permanent', reason: `the Endpoint's address: ${refused}` };
    let client: MllpClient;
    try {
      client = await MllpClient.connect({ ...peer, connectTimeoutMs: this.options.connectTimeoutMs ?? 10_000, timeoutMs: this.options.ackTimeoutMs ?? 30_000, ...(egress.restricted ? { lookup: egress.lookup } : {}) });
    } catch (error) {
      if (error instanceof MllpError && error.cause instanceof EgressRefused) return { kind: 'permanent', reason: `the Endpoint's address: ${error.cause.message}` };
      if (error instanceof MllpError) return { kind: 'transient', reason: error.message, ambiguous: false };
      throw error;
    }
    try {
      return answer(await client.send(message), controlId);
    } catch (error) {
      // Timeout after sending, connection closed before the ACK: the peer may have the message.
      if (error instanceof MllpError && error.code !== 'MLLP_BUSY') return { kind: 'transient', reason: `${error.message} (message ${controlId})`, ambiguous: true };
      throw error;
    } finally {
      await client.close();
    }
  }
}

/** The ACK, per HL7 v2.5 table 0008 and §2.9.2 (original mode) and §2.9.3 (enhanced mode). */
function answer(reply: string, controlId: string): DeliveryOutcome {
  const ack = readAck(reply);
  if (!ack) return { kind: 'transient', reason: `the peer answered message ${controlId} with something that is not an ACK`, ambiguous: true };
  if (ack.controlId !== controlId) return { kind: 'transient', reason: `the peer acknowledged message ${ack.controlId || '(none)'}, not ${controlId}`, ambiguous: true };
  const said = ack.text ? `: ${ack.text.slice(0, 300)}` : '';
  switch (ack.code) {
    case 'AA': // application accept
    case 'CA': // commit accept: the receiver has it in safe storage
      return { kind: 'delivered', remoteId: controlId };
    case 'AE': // application error: not applied, for a reason that may pass (the receiver's store down)
    case 'CE': // commit error: the receiver could not store it now
      return { kind: 'transient', reason: `the peer answered ${ack.code} (error) to message ${controlId}${said}`, ambiguous: false };
    case 'AR': // application reject: the message itself is refused; resending the same one cannot help
    case 'CR':
      return { kind: 'permanent', reason: `the peer answered ${ack.code} (reject) to message ${controlId}${said}` };
    default:
      return { kind: 'transient', reason: `the peer answered message ${controlId} with the unknown code ${JSON.stringify(ack.code.slice(0, 10))}`, ambiguous: true };
  }
}

export function parseMllpAddress(address: string): { host: string; port: number } | undefined {
  const m = /^mllp:\/\/(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})\/?$/.exec(address);
  const port = Number(m?.[2]);
  if (!m?.[1] || !Number.isInteger(port) || port < 1 || port > 65_535) return undefined;
  return { host: m[1].replace(/^\[|\]$/g, ''), port };
}

/** MSH-10 of a message: the field separator is the character after "MSH". */
function controlIdOf(message: string): string | undefined {
  if (!message.startsWith('MSH') || message.length < 8) return undefined;
  const fs = message.charAt(3);
  const msh = message.split(/\r\n|\r|\n/, 1)[0] ?? '';
  const id = msh.split(fs)[9];
  return id && id.trim() !== '' ? id : undefined;
}
