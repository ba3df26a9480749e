/**
 * Inbound HL7 v2 (ADT^A01, A04, A08, A31 with PID and DG1) applied to a tenant's data: the
 * sending facility (MSH-4) names the tenant (admin command `hl7 route`), the Patient is matched by
 * its identifier (the MRN) or created, each DG1 becomes a Condition (matched by its identifier, so
 * a resend or an A08 updates rather than duplicates), and a Provenance records the message.
 * Every message is stored with its status before the ACK is returned:
 *  - AA: applied, in one transaction with the message row (status applied);
 *  - AE: understood but not applied (unsupported event, a DG1 without code, a resource our
 *    validation refuses, several Patients with that MRN): stored with status error and the reason;
 *  - AR: not parseable, or from a facility routed to no tenant: stored in hl7_unrouted.
 * If the message cannot be stored at all (database down), the handler throws: the connection is
 * closed without an ACK, so the sender keeps the message and sends it again.
 */
import { randomUUID } from 'node:crypto';
import type { Patient, Provenance } from 'fhir/r4.js';
import type { Logger } from 'pino';
import { FhirError, fhirError } from '../fhir/errors.js';
import { tokenSearchValue } from '../fhir/search-value.js';
import type { JsonResource } from '../fhir/resource.js';
import { ack, ackFor, mshField, parseAdt, type AdtOk, type AdtResult } from '../hl7/adt.js';
import type { MllpMeta } from '../hl7/mllp.js';
import { conditionOf } from '../interactions/conditions.js';
import type { FhirContext } from '../interactions/types.js';
import type { Hl7Routes, StoredMessage } from '../store/hl7-store.js';
import { conditionLock, type Repository } from '../store/repository.js';
import type { Tenants } from '../store/tenants.js';
import { isConflict } from '../store/db-errors.js';

interface Applicable {
  kind: 'apply';
  repo: Repository;
  result: AdtOk;
  base: { sendingFacility: string | undefined; controlId: string; messageType: string | undefined; raw: string };
}
type Routed = { kind: 'answered'; ack: string } | Applicable;

/** A batch (or message) of a connection being applied: the identifiers it writes by, and when it is done. */
interface InFlight {
  keys: ReadonlySet<string>;
  done: Promise<void>;
}

export class Hl7Inbound {
  /**
   * Each connection's batches in the handlers' hands (the MLLP server runs up to `concurrency` at
   * once): a batch that writes by an identifier an earlier one of the same connection writes by
   * waits until that one is done, so that messages about one patient or diagnosis apply in the
   * order they were sent; batches about other patients and diagnoses run at the same time.
   */
  private readonly inFlight = new WeakMap<MllpMeta, InFlight[]>();

  constructor(
    private readonly ctx: FhirContext,
    private readonly tenants: Tenants,
    private readonly routes: Hl7Routes,
    private readonly logger: Logger,
  ) {}

  /** The MLLP handler: one message in, its ACK out (see the module comment). */
  handle = async (message: string, meta: MllpMeta): Promise<string> => {
    const parsed = parseAdt(message);
    return this.inOrder(meta, [parsed], () => this.handleOne(message, parsed, meta));
  };

  private async handleOne(message: string, parsed: AdtResult, meta: MllpMeta): Promise<string> {
    const routed = await this.route(message, parsed, meta);
    if (routed.kind === 'answered') return routed.ack;
    try {
      await routed.repo.transaction((tx) => this.applyOne(tx, routed));
      return ackFor(message, routed.result);
    } catch (error) {
      // A conflict with a concurrent writer (a deadlock, say) that outlived the retries is not the
      // message's fault: no ACK, so that the sender sends it again.
      if (isConflict(error)) throw error;
      // Stored with its status (a throw here, database down, leaves the message unacknowledged).
      const reason = this.reasonOf(error, routed);
      await routed.repo.recordHl7Message({ ...routed.base, status: 'error', detail: reason });
      return ack(message, 'AE', reason, { code: 207 });
    }
  }

  /**
   * The MLLP batch handler: messages that arrived together on one connection (a sender that does
   * not wait for each ACK; after any earlier batch of the connection about the same patients or
   * diagnoses, inOrder), in order, each of a tenant applied in one transaction with a savepoint
   * per message: one commit for the lot, and a message that cannot be applied is undone alone and
   * stored with its reason (AE) while the others go on. Should the transaction fail as a whole
   * (database down), none is acknowledged.
   */
  handleBatch = async (messages: string[], meta: MllpMeta): Promise<string[]> => {
    const parsed = messages.map((message) => parseAdt(message));
    return this.inOrder(meta, parsed, () => this.applyBatch(messages, parsed, meta));
  };

  /**
   * Runs `work` once no earlier batch of the connection `meta` that writes by one of the same
   * identifiers (MRN, DG1) as `parsed` is still running (inFlight). Registers the batch before it
   * waits for anything: the MLLP server starts the connection's next batch as soon as this call
   * returns its promise.
   */
  private inOrder<T>(meta: MllpMeta, parsed: AdtResult[], work: () => Promise<T>): Promise<T> {
    const keys = new Set(parsed.flatMap((p) => (p.kind === 'ok' ? writeKeysOf(p) : [])));
    const running = this.inFlight.get(meta) ?? [];
    const before = running.filter((r) => [...keys].some((k) => r.keys.has(k))).map((r) => r.done);
    const result = (before.length === 0 ? work() : Promise.all(before).then(work));
    const entry: InFlight = { keys, done: result.then(() => undefined, () => undefined) };
    running.push(entry);
    this.inFlight.set(meta, running);
    void entry.done.then(() => running.splice(running.indexOf(entry), 1));
    return result;
  }

  private async applyBatch(messages: string[], parsed: AdtResult[], meta: MllpMeta): Promise<string[]> {
    const routed = [];
    for (const [i, message] of messages.entries()) routed.push(await this.route(message, parsed[i] as AdtResult, meta));
    const acks: string[] = [];
    for (let i = 0; i < routed.length; ) {
      const first = routed[i] as Routed;
      if (first.kind === 'answered') {
        acks.push(first.ack);
        i++;
        continue;
      }
      // The run of messages to apply in the same tenant: all in one go, and should one of them
      // fail, again with a savepoint for each, so that only that one is undone.
      const run: Applicable[] = [];
      for (let r = routed[i]; r?.kind === 'apply' && r.repo === first.repo; r = routed[++i]) run.push(r);
      const together = await first.repo
        .transaction(async (tx) => {
          await this.applyAll(tx, run.map((item) => item.result), run.map((item) => this.applied(item)));
          return run.map((item) => ackFor(item.base.raw, item.result));
        })
        .catch(() => undefined);
      if (together) {
        acks.push(...together);
        continue;
      }
      acks.push(
        ...(await first.repo.transaction(async (tx) => {
          const out: string[] = [];
          for (const item of run) {
            try {
              await tx.savepoint(() => this.applyOne(tx, item));
              out.push(ackFor(item.base.raw, item.result));
            } catch (error) {
              // A conflict: the whole transaction is retried (or, failing, nothing is acknowledged).
              if (isConflict(error)) throw error;
              const reason = this.reasonOf(error, item);
              await tx.recordHl7Message({ ...item.base, status: 'error', detail: reason });
              out.push(ack(item.base.raw, 'AE', reason, { code: 207 }));
            }
          }
          return out;
        })),
      );
    }
    return acks;
  }

  /** Parses and routes a message: answered at once (AR, or AE for one we understand but refuse), or to apply. */
  private async route(message: string, result: AdtResult, meta: MllpMeta): Promise<Routed> {
    if (result.kind === 'reject') {
      await this.routes.storeUnrouted(message, result.reason, meta.remoteAddress);
      return { kind: 'answered', ack: ackFor(message, result) };
    }
    const facility = mshField(message, 4);
    const tenant = facility ? await this.routes.tenantOf(facility) : undefined;
    const repo = tenant ? await this.tenants.repository(tenant) : undefined;
    if (!repo) {
      const reason = facility ? `Sending facility ${facility} is not routed to a practice on this server` : 'MSH-4 (sending facility) is empty';
      await this.routes.storeUnrouted(message, reason, meta.remoteAddress);
      return { kind: 'answered', ack: ack(message, 'AR', reason, { segment: 'MSH', sequence: 1, field: 4, code: 103 }) };
    }
    const base = { sendingFacility: facility, controlId: result.controlId, messageType: mshField(message, 9, 2), raw: message };
    if (result.kind === 'error') {
      await repo.recordHl7Message({ ...base, status: 'error', detail: result.reason });
      return { kind: 'answered', ack: ackFor(message, result) };
    }
    return { kind: 'apply', repo, result, base };
  }

  /** Applies a message and stores it as applied, in the transaction `tx`. */
  private async applyOne(tx: Repository, item: Applicable): Promise<void> {
    await this.applyAll(tx, [item.result], [this.applied(item)]);
  }

  private applied(item: Applicable): StoredMessage {
    return { ...item.base, status: 'applied', ...(item.result.warnings.length ? { detail: item.result.warnings.join('; ') } : {}) };
  }

  private reasonOf(error: unknown, item: Applicable): string {
    if (error instanceof FhirError) return error.message;
    this.logger.error({ err: error, controlId: item.result.controlId }, 'HL7 message not applied');
    return 'the message could not be applied';
  }

  /**
   * Messages in order, in the transaction `tx`: for each, the Patient (matched by MRN, else
   * created), a Condition per DG1 (matched by its identifier, else created) and a Provenance. In
   * few statements, whatever the number of messages: one lock statement for every MRN and DG1 (the
   * keys a conditional update takes), one lookup of all the Patients and all the DG1s' Conditions
   * by identifier, an update per resource that exists already, and one statement creating
   * everything new. Messages that share an MRN or a DG1 go in separate rounds, in order, so that a later one
   * sees what an earlier one wrote. `stored`, the messages' rows (status applied), go with the
   * lock statement: should a message fail, the transaction (or its savepoint) undoes them too.
   */
  private async applyAll(tx: Repository, adts: AdtOk[], stored: StoredMessage[]): Promise<void> {
    // Every key of every message first, in one sorted statement: two batches that share patients
    // in another order cannot deadlock.
    await tx.lockKeysAndRecordHl7(adts.flatMap((adt) => this.lockKeysOf(adt)), stored);
    let round: AdtOk[] = [];
    const seen = new Set<string>();
    for (const adt of adts) {
      const keys = writeKeysOf(adt);
      if (keys.some((k) => seen.has(k))) {
        await this.applyRound(tx, round);
        round = [];
        seen.clear();
      }
      round.push(adt);
      for (const k of keys) seen.add(k);
    }
    if (round.length > 0) await this.applyRound(tx, round);
  }

  /**
   * The locks a message takes: its MRN's and each DG1 identifier's, the very keys a conditional
   * create or update with that identifier takes, so that writers through FHIR and HL7 serialise.
   */
  private lockKeysOf(adt: AdtOk): string[] {
    const key = (type: string, system: string | undefined, value: string | undefined): string[] =>
      system && value ? [conditionLock(conditionOf(this.ctx, type, { identifier: [tokenSearchValue(system, value)] }, type))] : [];
    return [...key('Patient', adt.mrn.system, adt.mrn.value), ...adt.conditions.flatMap((c) => key('Condition', c.identifier?.[0]?.system, c.identifier?.[0]?.value))];
  }

  /** Messages of which no two share an MRN or a DG1 identifier (applyAll). */
  private async applyRound(tx: Repository, adts: AdtOk[]): Promise<void> {
    const plans = adts.map((adt) => ({
      adt,
      dg1s: adt.conditions.map((condition, i) => {
        const identifier = condition.identifier?.[0];
        if (!identifier?.system || !identifier.value) throw new FhirError('unprocessable', { code: 'invalid-search-value', message: `DG1 ${i + 1} has no identifier to match it by` });
        return { condition, identifier: { system: identifier.system, value: identifier.value } };
      }),
    }));

    const found = await tx.byIdentifiers([
      ...plans.map((p) => ({ type: 'Patient', ...p.adt.mrn })),
      ...plans.flatMap((p) => p.dg1s.map((d) => ({ type: 'Condition', ...d.identifier }))),
    ]);
    const patients = found.get('Patient') ?? new Map<string, { id: string; json: string }[]>();
    const conditions = found.get('Condition') ?? new Map<string, { id: string; json: string }[]>();
    const created: { resource: JsonResource; id: string }[] = [];
    for (const { adt, dg1s } of plans) {
      const { system, value } = adt.mrn;
      const found = patients.get(`${system}|${value}`) ?? [];
      if (found.length > 1) throw new FhirError('preconditionFailed', { code: 'multiple-matches', message: `More than one Patient has identifier ${system}|${value}` });
      const existing = found[0] ? (JSON.parse(found[0].json) as Patient) : undefined;
      let patientId: string;
      if (existing?.id) {
        const merged = this.ctx.validator.checkWrite(mergePatient(existing, adt.patient), 'Patient', existing.id);
        patientId = (await tx.update(merged, existing.id)).version.id;
      } else {
        patientId = randomUUID();
        created.push({ resource: this.ctx.validator.checkWrite(adt.patient, 'Patient'), id: patientId });
      }
      const targets = [{ reference: `Patient/${patientId}` }];
      for (const [i, d] of dg1s.entries()) {
        const resource = this.ctx.validator.checkWrite({ ...d.condition, subject: { reference: `Patient/${patientId}` } }, 'Condition');
        const matches = conditions.get(`${d.identifier.system}|${d.identifier.value}`) ?? [];
        if (matches.length > 1) throw fhirError('multiple-matches', `DG1 ${i + 1}: more than one Condition has identifier ${d.identifier.system}|${d.identifier.value}`);
        const id = matches[0]?.id;
        const holder = matches[0] ? (JSON.parse(matches[0].json) as { subject?: { reference?: string } }).subject?.reference : undefined;
        if (id && holder !== `Patient/${patientId}`) {
          // The sender reused a DG1 identifier for another patient: never move a diagnosis between people.
          throw fhirError('multiple-matches', `DG1 ${i + 1}: identifier ${d.identifier.system}|${d.identifier.value} is already that of a Condition of ${holder ?? 'another patient'}`);
        }
        if (id) {
          await tx.update({ ...resource, id }, id);
          targets.push({ reference: `Condition/${id}` });
        } else {
          const newId = randomUUID();
          created.push({ resource, id: newId });
          targets.push({ reference: `Condition/${newId}` });
        }
      }
      created.push({ resource: this.ctx.validator.checkWrite(provenanceOf(adt, targets, existing !== undefined), 'Provenance'), id: randomUUID() });
    }
    await tx.createMany(created);
  }
}

/** The identifiers a message's resources are matched by: its MRN's and each DG1's. */
function writeKeysOf(adt: AdtOk): string[] {
  return [`Patient|${adt.mrn.system}|${adt.mrn.value}`, ...adt.conditions.map((c) => `Condition|${c.identifier?.[0]?.system ?? ''}|${c.identifier?.[0]?.value ?? ''}`)];
}

/** The Provenance of one message: what it wrote, the sender, the message. */
function provenanceOf(adt: AdtOk, targets: { reference: string }[], updated: boolean): Provenance {
  return {
    resourceType: 'Provenance',
    target: targets,
    recorded: new Date().toISOString(),
    activity: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation', code: updated ? 'UPDATE' : 'CREATE' }] },
    agent: [
      {
        type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'author' }] },
        who: { display: `${adt.sendingApplication || 'HL7 v2 sender'} at ${adt.sendingFacility}` },
      },
    ],
    entity: [{ role: 'source', what: { identifier: { system: `urn:hl7v2:message:${adt.sendingFacility}`, value: adt.controlId }, display: `ADT^${adt.event} ${adt.controlId}` } }],
  };
}

/** A Patient updated from PID: demographics from the message, identifiers of both kept. */
function mergePatient(existing: Patient, incoming: Patient): JsonResource {
  const identifiers = [...(existing.identifier ?? [])];
  for (const id of incoming.identifier ?? []) {
    if (!identifiers.some((e) => e.system === id.system && e.value === id.value)) identifiers.push(id);
  }
  const { meta: _meta, ...current } = existing;
  return { ...current, ...incoming, id: existing.id, identifier: identifiers } as unknown as JsonResource;
}
