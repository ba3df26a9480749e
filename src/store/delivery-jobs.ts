/**
 * The outbox of documents to deliver to physicians' EHRs: one `delivery_job` row per document,
 * written in the same transaction as the request that asks for the delivery (insertJob), then
 * claimed, sent and recorded by the delivery worker (src/delivery/worker.ts). Its id is the id of
 * the FHIR Task that shows the delivery to users.
 *
 * States: queued ──claim──► sending ──► delivered | failed, or back to queued with a later
 * next_attempt_at (a retry). A claim is a lease: `claimed_until` (and `next_attempt_at`, set to
 * the same instant, so one index finds both kinds of due job) says when the job may be claimed
 * again if the worker holding it never records an outcome (it crashed or lost the database). Such
 * a job's last attempt is AMBIGUOUS: the document may have reached the EHR. Every claim counts as
 * an attempt, so a job that kills its worker every time still runs out of attempts.
 *
 * The outcome functions take the claim (id and attempt number) as a fencing token: a worker that
 * outlived its lease cannot overwrite what the worker that re-claimed the job recorded.
 */
import type { SqlQueryable } from './sql.js';

/** Tenant migration: the delivery outbox. Idempotent, so a test can run it ahead of the server. */
export const DELIVERY_MIGRATION = `
  CREATE TABLE IF NOT EXISTS delivery_job (
    -- The id of the Task that tracks the delivery.
    id text PRIMARY KEY,
    channel text NOT NULL CHECK (channel IN ('fhir', 'mllp')),
    endpoint_id text NOT NULL,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sending', 'delivered', 'failed')),
    -- Attempts started (claims), the one in progress included.
    attempts integer NOT NULL DEFAULT 0,
    -- queued: when it is due; sending: when its lease ends (= claimed_until).
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until timestamptz,
    -- The last attempt may have reached the peer (timeout after sending, interrupted worker).
    ambiguous boolean NOT NULL DEFAULT false,
    last_error text,
    -- The delivered document at the peer: its URL at the EHR (FHIR), the MSH-10 acknowledged (MLLP).
    remote_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
  );
  CREATE INDEX IF NOT EXISTS delivery_job_due ON delivery_job (next_attempt_at) WHERE status IN ('queued', 'sending');
`;

export const DELIVERY_CHANNELS = ['fhir', 'mllp'] as const;
export type DeliveryChannel = (typeof DELIVERY_CHANNELS)[number];
export const DELIVERY_STATUSES = ['queued', 'sending', 'delivered', 'failed'] as const;
export type DeliveryStatus = (typeof DELIVERY_STATUSES)[number];

export interface NewDeliveryJob {
  /** The id of the Task that tracks it. */
  id: string;
  channel: DeliveryChannel;
  endpointId: string;
  /** What the channel's transport sends (src/delivery/transports.ts), as JSON. */
  payload: unknown;
  /** Not before (default: now). */
  nextAttemptAt?: Date;
}

export interface DeliveryJob {
  id: string;
  channel: DeliveryChannel;
  endpointId: string;
  payload: unknown;
  status: DeliveryStatus;
  attempts: number;
  nextAttemptAt: Date;
  claimedUntil?: Date;
  ambiguous: boolean;
  lastError?: string;
  remoteId?: string;
  createdAt: Date;
  updatedAt: Date;
  deliveredAt?: Date;
}

/** A claimed job's identity for recording its outcome: the id and the attempt the claim started. */
export type JobClaim = Pick<DeliveryJob, 'id' | 'attempts'>;

interface Row {
  id: string;
  channel: DeliveryChannel;
  endpoint_id: string;
  payload: unknown;
  status: DeliveryStatus;
  attempts: number;
  next_attempt_at: Date | string;
  claimed_until: Date | string | null;
  ambiguous: boolean;
  last_error: string | null;
  remote_id: string | null;
  created_at: Date | string;
  updated_at: Date | string;
  delivered_at: Date | string | null;
}

const COLUMNS = 'id, channel, endpoint_id, payload, status, attempts, next_attempt_at, claimed_until, ambiguous, last_error, remote_id, created_at, updated_at, delivered_at';

/** Queues a job; run it on the request's transaction so the job exists exactly if the request committed. */
export async function insertJob(db: SqlQueryable, job: NewDeliveryJob): Promise<void> {
  await db.query(
    `INSERT INTO delivery_job (id, channel, endpoint_id, payload, next_attempt_at)
     VALUES ($1, $2, $3, $4::jsonb, COALESCE($5::timestamptz, now()))`,
    [job.id, job.channel, job.endpointId, JSON.stringify(job.payload), job.nextAttemptAt?.toISOString() ?? null],
  );
}

/**
 * Claims one due job, atomically (concurrent workers skip each other's rows): a queued job whose
 * time has come, or a sending job whose lease ended (marked ambiguous, with the interruption as its
 * last error). The job comes back as `sending`, its attempts counted up, leased for `leaseMs`.
 */
export async function claimDue(db: SqlQueryable, now: Date, leaseMs: number): Promise<DeliveryJob | undefined> {
  const until = new Date(now.getTime() + leaseMs).toISOString();
  const result = await db.query<Row>(
    `UPDATE delivery_job AS j
     SET status = 'sending',
         attempts = j.attempts + 1,
         ambiguous = j.ambiguous OR j.status = 'sending',
         last_error = CASE WHEN j.status = 'sending'
           THEN 'attempt ' || j.attempts || ' was interrupted before its outcome was recorded; the document may have been delivered'
           ELSE j.last_error END,
         claimed_until = $2::timestamptz,
         next_attempt_at = $2::timestamptz,
         updated_at = $1::timestamptz
     WHERE j.id = (
       SELECT id FROM delivery_job
       WHERE status IN ('queued', 'sending') AND next_attempt_at <= $1::timestamptz
       ORDER BY next_attempt_at, id
       LIMIT 1
       FOR UPDATE SKIP LOCKED
     )
     RETURNING ${COLUMNS.split(', ').map((c) => `j.${c}`).join(', ')}`,
    [now.toISOString(), until],
  );
  const row = result.rows[0];
  return row ? fromRow(row) : undefined;
}

/** Records a delivery; false when the claim is no longer this worker's (its lease was taken over). */
export async function markDelivered(db: SqlQueryable, claim: JobClaim, remoteId: string, at: Date = new Date()): Promise<boolean> {
  const result = await db.query(
    `UPDATE delivery_job SET status = 'delivered', remote_id = $3, delivered_at = $4::timestamptz, updated_at = $4::timestamptz,
       claimed_until = NULL, ambiguous = false
     WHERE id = $1 AND attempts = $2 AND status = 'sending'`,
    [claim.id, claim.attempts, remoteId, at.toISOString()],
  );
  return result.rowCount === 1;
}

/** Puts the job back in the queue until `nextAttemptAt`; `ambiguous` when the attempt may have reached the peer. */
export async function markRetry(
  db: SqlQueryable,
  claim: JobClaim,
  nextAttemptAt: Date,
  error: string,
  options: { ambiguous?: boolean; at?: Date } = {},
): Promise<boolean> {
  const at = options.at ?? new Date();
  const result = await db.query(
    `UPDATE delivery_job SET status = 'queued', next_attempt_at = $3::timestamptz, last_error = $4, ambiguous = $5,
       claimed_until = NULL, updated_at = $6::timestamptz
     WHERE id = $1 AND attempts = $2 AND status = 'sending'`,
    [claim.id, claim.attempts, nextAttemptAt.toISOString(), error, options.ambiguous ?? false, at.toISOString()],
  );
  return result.rowCount === 1;
}

/** Gives up: the job is failed with the reason, for a person to look at. */
export async function markFailed(db: SqlQueryable, claim: JobClaim, error: string, at: Date = new Date()): Promise<boolean> {
  const result = await db.query(
    `UPDATE delivery_job SET status = 'failed', last_error = $3, claimed_until = NULL, updated_at = $4::timestamptz
     WHERE id = $1 AND attempts = $2 AND status = 'sending'`,
    [claim.id, claim.attempts, error, at.toISOString()],
  );
  return result.rowCount === 1;
}

/** The job, or undefined. */
export async function findJob(db: SqlQueryable, id: string): Promise<DeliveryJob | undefined> {
  const result = await db.query<Row>(`SELECT ${COLUMNS} FROM delivery_job WHERE id = $1`, [id]);
  const row = result.rows[0];
  return row ? fromRow(row) : undefined;
}

/** The job; throws when there is none. */
export async function getJob(db: SqlQueryable, id: string): Promise<DeliveryJob> {
  const job = await findJob(db, id);
  if (!job) throw new Error(`no delivery job ${id}`);
  return job;
}

function fromRow(row: Row): DeliveryJob {
  const job: DeliveryJob = {
    id: row.id,
    channel: row.channel,
    endpointId: row.endpoint_id,
    payload: typeof row.payload === 'string' ? (JSON.parse(row.payload) as unknown) : row.payload,
    status: row.status,
    attempts: Number(row.attempts),
    nextAttemptAt: new Date(row.next_attempt_at),
    ambiguous: row.ambiguous,
    createdAt: new Date(row.created_at),
    updatedAt: new Date(row.updated_at),
  };
  if (row.claimed_until !== null) job.claimedUntil = new Date(row.claimed_until);
  if (row.last_error !== null) job.lastError = row.last_error;
  if (row.remote_id !== null) job.remoteId = row.remote_id;
  if (row.delivered_at !== null) job.deliveredAt = new Date(row.delivered_at);
  return job;
}
