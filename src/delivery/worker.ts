/**
 * The delivery worker: the outbound state machine for progress reports. Jobs are written by the
 * request that asks for a delivery, in its own transaction (store/delivery-jobs.ts). The worker
 * claims one due job at a time (tenants in turn), reads its Endpoint, hands the payload to the
 * channel's transport (./transports.ts) and records the outcome together with the tracking Task,
 * in one transaction:
 *
 *   outcome                                   job                       Task
 *   delivered (AA/CA, created or found)       delivered, remote_id      completed, output = the document at the EHR
 *                                                                       (and its Communication, if one was sent)
 *   transient (network, timeout, 408, 429,    queued, next_attempt_at   in-progress, businessStatus "attempt n failed: …;
 *     5xx, AE/CE, no ACK) and attempts left     = now + backoff           next attempt at …"
 *   transient, no attempts left               failed                    failed, statusReason = the last reason
 *   permanent (4xx, 401/403, AR/CR, bad       failed                    failed, statusReason = the reason
 *     Endpoint or payload)
 *
 * Ambiguous attempts (timeout after sending, connection closed before the ACK, a worker that
 * stopped mid-delivery and whose lease ran out) are retried like transient ones: the FHIR transport
 * searches the EHR before every create, the MLLP transport resends the same message (same MSH-10).
 *
 * Backoff: attempt n waits min(maxBackoff, base × 2^(n−1)) scaled by a random factor in
 * (1 − jitter, 1], so that jobs failed together by one outage do not all come back at once. With
 * the defaults (base 2 s, 8 attempts, jitter 0.5) the waits are 2, 4, 8, … 128 s: a job is given up
 * after about 2–4 minutes of failures; an EHR's Retry-After (429/503) is honoured up to the maximum
 * backoff (10 min). Operators facing longer outages raise maxAttempts (14 attempts ≈ 1 hour).
 *
 * The lease must outlast one attempt: FHIR calls time out after 20 s each (token, search, create,
 * and the same for a Communication: about 2 minutes at worst), MLLP after 10 s + the ACK timeout.
 */
import type { Endpoint, Extension, Task } from 'fhir/r4.js';
import type { Logger } from 'pino';
import { FhirError } from '../fhir/errors.js';
import { isEndpointProblem, readFhirEndpoint } from '../ehr/endpoint.js';
import type { EhrSecrets } from '../ehr/secrets.js';
import { outboundKeyOf, type OutboundKeySource } from '../interactions/types.js';
import type { EgressGuard } from '../ehr/egress.js';
import { inTransaction } from '../store/database.js';
import { claimDue, markDelivered, markFailed, markRetry, type DeliveryJob } from '../store/delivery-jobs.js';
import { Repository } from '../store/repository.js';
import type { SqlPool } from '../store/sql.js';
import type { ResourceValidator } from '../validation/validator.js';
import type { DeliveryOutcome, FhirDeliveryPayload, FhirTransport, MllpDeliveryPayload, MllpTransport } from './transports.js';

/** Task.extension: the number of attempts made so far (valueUnsignedInt). */
export const DELIVERY_ATTEMPTS_EXTENSION = 'https://met-fhir-server.dev/fhir/StructureDefinition/delivery-attempts';
/** Task.businessStatus and Task.output.type codes: queued, retrying, delivered, failed; delivered-document, delivered-communication. */
export const DELIVERY_STATUS_SYSTEM = 'https://met-fhir-server.dev/fhir/CodeSystem/delivery-status';
/** Endpoint.connectionType code of an HL7 v2 receiver over MLLP (address `mllp://host:port`). */
export const MLLP_CONNECTION_TYPE = 'hl7v2-mllp';

export interface TenantStore {
  tenant: string;
  /** The tenant's schema pool. */
  pool: SqlPool;
  /** The tenant's repository, over `pool`. */
  repo: Repository;
}

export interface DeliveryWorkerOptions {
  tenants: () => Promise<TenantStore[]>;
  transports: { fhir: FhirTransport; mllp: MllpTransport };
  /** Checks each Task before it is written. */
  validator: ResourceValidator;
  /** Each tenant's key for SMART Backend Services at EHRs (src/ehr/outbound-keys.ts). */
  outboundKeys?: OutboundKeySource;
  /** Static bearer tokens for EHRs (EHR_TOKEN_… variables, each bound to one tenant), named by Endpoints' tokenRef. */
  ehrSecrets?: EhrSecrets;
  /** EHRs over plain http (development and tests). */
  allowHttp?: boolean;
  /** Which addresses EHR connections may reach (src/ehr/egress.ts); unset: as EhrConnection says. */
  egress?: EgressGuard;
  /** Between looks for due jobs when idle; default 1 s. */
  pollIntervalMs?: number;
  /** Jobs sent at once (each to its own connection); default 4. */
  concurrency?: number;
  /** How long a claimed job stays with this worker; default 5 min. */
  leaseMs?: number;
  /** Default 8. */
  maxAttempts?: number;
  /** Default 2 s. */
  baseBackoffMs?: number;
  /** Default 10 min. */
  maxBackoffMs?: number;
  /** Fraction of the backoff taken off at random, 0–1; default 0.5. */
  jitter?: number;
  /** For tests. */
  now?: () => Date;
  random?: () => number;
  logger?: Logger;
}

type Settings = Required<Omit<DeliveryWorkerOptions, 'outboundKeys' | 'ehrSecrets' | 'logger' | 'egress'>> & Pick<DeliveryWorkerOptions, 'outboundKeys' | 'ehrSecrets' | 'logger' | 'egress'>;

/** The wait before the attempt after attempt `attempt` (1-based), in ms. */
export function backoffMs(attempt: number, options: { baseBackoffMs: number; maxBackoffMs: number; jitter: number }, random: () => number = Math.random): number {
  const full = Math.min(options.maxBackoffMs, options.baseBackoffMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(full * (1 - options.jitter * random()));
}

export class DeliveryWorker {
  private readonly settings: Settings;
  private loop: Promise<void> | undefined;
  private stopping = false;
  private wake: (() => void) | undefined;
  private notified = false;
  /** Jobs an attempt of this worker is sending now (tenant/job id). */
  private readonly sending = new Set<string>();

  constructor(options: DeliveryWorkerOptions) {
    const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as unknown as DeliveryWorkerOptions;
    this.settings = {
      allowHttp: false,
      pollIntervalMs: 1000,
      concurrency: 4,
      leaseMs: 5 * 60_000,
      maxAttempts: 8,
      baseBackoffMs: 2000,
      maxBackoffMs: 10 * 60_000,
      jitter: 0.5,
      now: () => new Date(),
      random: Math.random,
      ...given,
    };
    const { maxAttempts, jitter, leaseMs, pollIntervalMs, baseBackoffMs, maxBackoffMs } = this.settings;
    const problems = [
      Number.isInteger(maxAttempts) && maxAttempts >= 1 ? '' : 'maxAttempts must be an integer ≥ 1',
      Number.isInteger(this.settings.concurrency) && this.settings.concurrency >= 1 ? '' : 'concurrency must be an integer ≥ 1',
      jitter >= 0 && jitter <= 1 ? '' : 'jitter must be within 0–1',
      leaseMs > 0 && pollIntervalMs > 0 && baseBackoffMs > 0 && maxBackoffMs >= baseBackoffMs ? '' : 'leaseMs, pollIntervalMs and baseBackoffMs must be > 0, maxBackoffMs ≥ baseBackoffMs',
    ].filter(Boolean);
    if (problems.length > 0) throw new Error(`delivery worker options: ${problems.join('; ')}`);
  }

  /** Polls for due jobs until stop(). */
  start(): void {
    if (this.loop) return;
    this.stopping = false;
    this.loop = (async () => {
      while (!this.stopping) {
        try {
          await this.runOnce();
        } catch (error) {
          this.settings.logger?.error({ err: error }, 'delivery: looking for due jobs failed');
        }
        if (this.stopping) break;
        if (this.notified) {
          this.notified = false;
          continue;
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, this.settings.pollIntervalMs);
          timer.unref();
          this.wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.wake = undefined;
      }
    })();
  }

  /** Looks for due jobs now (after a job was queued), instead of at the next poll. */
  notify(): void {
    if (this.wake) this.wake();
    else this.notified = true;
  }

  /** Stops polling; resolves once the job in flight (if any) is recorded. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.wake?.();
    await this.loop;
    this.loop = undefined;
  }

  /**
   * Claims and processes due jobs, one per tenant in turn, until none is due; returns how many.
   * `concurrency` lanes do this side by side (each claim takes a different job: SKIP LOCKED), so
   * one slow EHR round trip does not hold up the others.
   */
  async runOnce(): Promise<number> {
    this.notified = false;
    let done = 0;
    const stores = await this.settings.tenants();
    const lane = async (): Promise<void> => {
      let active = stores;
      while (active.length > 0 && !this.stopping) {
        const next: TenantStore[] = [];
        for (const store of active) {
          if (this.stopping) break;
          let job: DeliveryJob | undefined;
          try {
            job = await claimDue(store.pool, this.settings.now(), this.settings.leaseMs);
          } catch (error) {
            this.settings.logger?.error({ err: error, tenant: store.tenant }, 'delivery: claiming a job failed');
            continue;
          }
          if (!job) continue;
          next.push(store);
          // Still being sent by another lane of this worker (an attempt that outlived its lease):
          // never a second send alongside it.
          const key = `${store.tenant}/${job.id}`;
          if (this.sending.has(key)) continue;
          this.sending.add(key);
          try {
            await this.process(store, job);
          } finally {
            this.sending.delete(key);
          }
          done++;
        }
        active = next;
      }
    };
    await Promise.all(Array.from({ length: this.settings.concurrency }, lane));
    return done;
  }

  private async process(store: TenantStore, job: DeliveryJob): Promise<void> {
    const log = this.settings.logger?.child({ tenant: store.tenant, job: job.id, attempt: job.attempts });
    let outcome: DeliveryOutcome;
    try {
      outcome = await this.attempt(store, job);
    } catch (error) {
      // A bug or our own database: retried, within the attempts allowed.
      log?.error({ err: error }, 'delivery: unexpected error');
      outcome = { kind: 'transient', reason: `unexpected error: ${(error as Error).message ?? String(error)}`.slice(0, 500), ambiguous: true };
    }
    try {
      await this.record(store, job, outcome);
      log?.info({ outcome: outcome.kind }, 'delivery: attempt recorded');
    } catch (error) {
      // The job stays `sending` until its lease ends, then is claimed again as ambiguous.
      log?.error({ err: error }, 'delivery: recording the outcome failed');
    }
  }

  private async attempt(store: TenantStore, job: DeliveryJob): Promise<DeliveryOutcome> {
    const { maxAttempts } = this.settings;
    if (job.attempts > maxAttempts) {
      return { kind: 'permanent', reason: `gave up after ${maxAttempts} attempts; ${job.lastError ?? 'the last one was interrupted'}` };
    }
    let endpoint: Endpoint;
    try {
      endpoint = JSON.parse((await store.repo.read('Endpoint', job.endpointId)).json ?? '{}') as Endpoint;
    } catch (error) {
      if (error instanceof FhirError && (error.category === 'notFound' || error.category === 'gone')) {
        return { kind: 'permanent', reason: `Endpoint/${job.endpointId} does not exist (any more)` };
      }
      throw error;
    }
    switch (job.channel) {
      case 'fhir': {
        // The job's tenant's Endpoint: only a token bound to that tenant is used.
        const found = readFhirEndpoint(endpoint, { key: await outboundKeyOf(this.settings.outboundKeys, store.tenant, endpoint), secrets: this.settings.ehrSecrets, tenant: store.tenant, allowHttp: this.settings.allowHttp, egress: this.settings.egress });
        if (isEndpointProblem(found)) return { kind: 'permanent', reason: `Endpoint/${job.endpointId} ${found.problem} (${found.expression})` };
        return this.settings.transports.fhir.deliver(job.payload as FhirDeliveryPayload, found.connection);
      }
      case 'mllp':
        if (endpoint.connectionType?.code !== MLLP_CONNECTION_TYPE || endpoint.status !== 'active') {
          return { kind: 'permanent', reason: `Endpoint/${job.endpointId} is not an active ${MLLP_CONNECTION_TYPE} Endpoint` };
        }
        return this.settings.transports.mllp.deliver(job.payload as MllpDeliveryPayload, endpoint.address);
    }
  }

  /** The job's new state and the Task's, in one transaction. */
  private async record(store: TenantStore, job: DeliveryJob, outcome: DeliveryOutcome): Promise<void> {
    const now = this.settings.now();
    const state = this.decide(job, outcome, now);
    await inTransaction(store.pool, async (client) => {
      let marked: boolean;
      switch (state.status) {
        case 'completed':
          marked = await markDelivered(client, job, state.remoteId, now);
          break;
        case 'in-progress':
          marked = await markRetry(client, job, state.nextAttemptAt, clip(state.reason), { ambiguous: state.ambiguous, at: now });
          break;
        case 'failed':
          marked = await markFailed(client, job, clip(state.reason), now);
          break;
      }
      if (!marked) {
        this.settings.logger?.warn({ tenant: store.tenant, job: job.id }, 'delivery: the job was claimed again meanwhile; outcome not recorded');
        return;
      }
      await this.updateTask(new Repository(store.pool, store.repo.fhirBase, client), job, state, now);
    });
  }

  /** What an outcome means for the job: delivered, retried after a backoff, or failed. */
  private decide(job: DeliveryJob, outcome: DeliveryOutcome, now: Date): DeliveryState {
    const s = this.settings;
    const n = job.attempts;
    if (outcome.kind === 'delivered') {
      return {
        status: 'completed',
        remoteId: outcome.remoteId,
        ...(outcome.communication ? { communication: outcome.communication } : {}),
        text: `delivered on attempt ${n}${outcome.note ? `; ${outcome.note}` : ''}`,
      };
    }
    if (outcome.kind === 'transient' && n < s.maxAttempts) {
      const wait = Math.max(backoffMs(n, s, s.random), Math.min(s.maxBackoffMs, (outcome.retryAfterSeconds ?? 0) * 1000));
      const nextAttemptAt = new Date(now.getTime() + wait);
      const maybe = outcome.ambiguous ? ' (it may have arrived: checked before resending)' : '';
      return { status: 'in-progress', nextAttemptAt, reason: outcome.reason, ambiguous: outcome.ambiguous, text: `attempt ${n} of ${s.maxAttempts} failed: ${outcome.reason}${maybe}; next attempt at ${nextAttemptAt.toISOString()}` };
    }
    const reason = outcome.kind === 'transient' ? `gave up after ${n} attempts: ${outcome.reason}` : outcome.reason;
    return { status: 'failed', reason, text: `failed on attempt ${n}: ${reason}` };
  }

  private async updateTask(tx: Repository, job: DeliveryJob, state: DeliveryState, now: Date): Promise<void> {
    let task: Task;
    try {
      await tx.lockResource('Task', job.id);
      task = JSON.parse((await tx.read('Task', job.id)).json ?? '{}') as Task;
    } catch (error) {
      // Only a Task that is gone is passed over. Any other error (the database's) fails the
      // transaction, which must not then seem to commit the job's new state: it is rethrown.
      if (!(error instanceof FhirError && (error.category === 'notFound' || error.category === 'gone'))) throw error;
      this.settings.logger?.warn({ err: error, job: job.id }, 'delivery: no Task to update');
      return;
    }
    const next = taskAfter(task, job, state, now);
    let checked;
    try {
      checked = this.settings.validator.checkWrite(next, 'Task', job.id);
    } catch (error) {
      // The job's state is what matters: an invalid Task is logged, never a reason to lose it.
      this.settings.logger?.error({ err: error, job: job.id }, 'delivery: the updated Task is not valid; not written');
      return;
    }
    await tx.update(checked, job.id);
  }
}

/** What an attempt comes to, for the job and its Task. */
export type DeliveryState =
  | { status: 'completed'; text: string; remoteId: string; communication?: string }
  | { status: 'in-progress'; text: string; nextAttemptAt: Date; reason: string; ambiguous: boolean }
  | { status: 'failed'; text: string; reason: string };

const clip = (text: string, max = 2000): string => (text.length > max ? `${text.slice(0, max - 1)}…` : text);

/** The Task after an attempt: status, businessStatus, attempts, output or statusReason; the rest kept. */
export function taskAfter(task: Task, job: Pick<DeliveryJob, 'attempts' | 'channel'>, state: DeliveryState, now: Date): Task {
  const code = state.status === 'completed' ? 'delivered' : state.status === 'failed' ? 'failed' : 'retrying';
  const { statusReason: _reason, ...rest } = task;
  const next: Task = {
    ...rest,
    status: state.status,
    businessStatus: { coding: [{ system: DELIVERY_STATUS_SYSTEM, code }], text: clip(state.text) },
    lastModified: now.toISOString(),
    executionPeriod: { ...task.executionPeriod, start: task.executionPeriod?.start ?? now.toISOString(), ...(state.status === 'in-progress' ? {} : { end: now.toISOString() }) },
    extension: [...(task.extension ?? []).filter((e: Extension) => e.url !== DELIVERY_ATTEMPTS_EXTENSION), { url: DELIVERY_ATTEMPTS_EXTENSION, valueUnsignedInt: job.attempts }],
  };
  if (state.status === 'failed') next.statusReason = { text: clip(state.reason) };
  if (state.status === 'completed') {
    const type = { coding: [{ system: DELIVERY_STATUS_SYSTEM, code: 'delivered-document' }], text: 'the document as delivered to the EHR' };
    const others = (task.output ?? []).filter((o) => !o.type.coding?.some((c) => c.system === DELIVERY_STATUS_SYSTEM));
    next.output = [
      ...others,
      job.channel === 'fhir' ? { type, valueReference: { reference: state.remoteId } } : { type, valueIdentifier: { type: { text: 'HL7 v2 message control ID (MSH-10)' }, value: state.remoteId } },
      ...(state.communication
        ? [{ type: { coding: [{ system: DELIVERY_STATUS_SYSTEM, code: 'delivered-communication' }], text: 'the Communication telling the physician, at the EHR' }, valueReference: { reference: state.communication } }]
        : []),
    ];
  }
  return next;
}
