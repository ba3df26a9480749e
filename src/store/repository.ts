/**
 * The only place resources are written and read. Every write is one database transaction that
 * keeps the current version (`resource`) and the full history (`resource_history`) in step.
 * https://hl7.org/fhir/R4/http.html
 */
import { randomUUID } from 'node:crypto';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { AuditShapes, SqlClient, SqlPool, SqlQueryable } from './sql.js';
import { fhirError } from '../fhir/errors.js';
import type { JsonResource } from '../fhir/resource.js';
import { inTransaction } from './database.js';
import { classifyDatabaseError, isConflict } from './db-errors.js';
import { extractIndex, INDEX_TABLES } from '../search/extract.js';
import type { Filter, SearchQuery } from '../search/query.js';
import { indexCtes, indexCtesMany, indexValues, indexValuesMany } from './search-index.js';
import { GroupCommit, type Outcome } from './group-commit.js';
import { messagesInsert, messagesValues, storeMessages, type StoredMessage } from './hl7-store.js';
import { insertJob, type NewDeliveryJob } from './delivery-jobs.js';
import { countSql, estimateSql, pageSql, whereSql, Params } from './search-sql.js';
import { AUDIT_EVENT_TYPE, auditJson, auditJsonSql, auditRecordOf, auditReferencesFromSql, auditReferencesToSql, auditRowOf, auditRowOfRecord, RECORD_FORMAT, type AuditRow } from './audit-events.js';
import type { AuditInput } from '../audit/events.js';


/** One stored version; `json` is the resource as stored (absent for deletions). */
export interface StoredVersion {
  resourceType: string;
  id: string;
  versionId: string;
  lastUpdated: string;
  deleted: boolean;
  method: 'POST' | 'PUT' | 'DELETE';
  json?: string;
}

/** State shared by a repository and the transaction-bound repositories made from it. */
interface StatsUpkeep {
  analyzeEvery: number;
  /** Versions written since the last ANALYZE of the record's tables. */
  written: number;
  /** Written versions after which the next one runs: analyzeEvery, or a tenth of the resources when that is more. */
  threshold?: number;
  /** AuditEvents written since the last ANALYZE of audit_event. */
  auditWritten?: number;
  running?: Promise<void>;
  /** Plain creates outside a transaction, grouped under load (see group-commit.ts). */
  creates?: GroupCommit<{ resource: JsonResource; id: string }, StoredVersion>;
}

/** Search criteria of a conditional interaction, and the key that serialises writers using them. */
export interface Condition {
  query: SearchQuery;
  lockKey: string;
}

export interface SourceDocumentKey {
  sender: string;
  type: string;
  id: string;
}

/** One measurement of a stored MET document, as goal progress reads it (table met_result). */
export interface SourceResult {
  docType: string;
  docId: string;
  measure: string;
  part: string;
  /** The document's date as sent, and its instant in milliseconds. */
  date: string;
  taken: number;
  context?: string;
  measurement: unknown;
}

/** A document pushed through the MET API, and the resources it produced, by part. */
export interface SourceDocument extends SourceDocumentKey {
  /** The client the document is about (not for client documents). */
  clientId?: string;
  version: number;
  content: unknown;
  parts: Record<string, { type: string; id: string }>;
  updatedAt: string;
}

export interface SearchPage {
  /** Matches in page order: id and the resource as stored. */
  rows: { id: string; json: string }[];
  /** Cursor values of the first and last row, when there are pages before or after. */
  next?: { values: (string | null)[]; id: string };
  previous?: { values: (string | null)[]; id: string };
}

export interface HistoryQuery {
  resourceType?: string;
  id?: string;
  /** Types left out (system level). */
  excludeTypes?: string[] | undefined;
  /** Only versions written after this instant. */
  since?: string;
  /** Page size. */
  count: number;
  /** Paging cursor: only versions written before this sequence number. */
  before?: string;
}

export interface HistoryPage {
  versions: StoredVersion[];
  /** Cursor for the next (older) page, when there is one. */
  next?: string;
}

interface Row {
  resource_type: string;
  id: string;
  version_id: number;
  last_updated: Date;
  deleted: boolean;
  method?: StoredVersion['method'];
  json: string | null;
  seq?: string | number;
}

const MAX_ATTEMPTS = 3;

export class Repository {
  /**
   * @param pool where statements run
   * @param fhirBase public FHIR base, to tell local absolute references from remote ones
   * @param client set on a repository bound to one open transaction (see transaction())
   */
  constructor(
    private readonly pool: SqlPool,
    readonly fhirBase: string,
    private readonly client?: SqlClient,
    private readonly stats: StatsUpkeep = { analyzeEvery: 0, written: 0 },
  ) {}

  /**
   * Audit shapes (audit-events.ts) known to be stored, digest → keys: written by this repository
   * or read for a search. Shapes are never changed or deleted.
   */
  private readonly auditShapes = new Map<string, readonly string[]>();

  /**
   * Keeps the planner's statistics current where nothing else does: embedded PGlite has no
   * autovacuum, and a search planned without statistics after a bulk load can take minutes.
   * After `analyzeEvery` versions written, or a tenth of the resources when that is more (as
   * autovacuum's scale factor: statistics drift with the share of rows changed, and each ANALYZE
   * reads a sample of up to 30,000 rows of every table), ANALYZE runs over this schema's tables
   * (outside any transaction); audit_event on its own count, after ten times as many events
   * (analysed with the rest every time, it was half of the ANALYZE, about 0.3 s every few seconds
   * under audited create load).
   */
  static withStatsUpkeep(pool: SqlPool, fhirBase: string, analyzeEvery: number): Repository {
    return new Repository(pool, fhirBase, undefined, { analyzeEvery, written: 0 });
  }

  /**
   * Starts ANALYZE when its time has come, without waiting for it: the write that crosses the
   * threshold (and a whole batch of inbound HL7 messages behind it) used to wait the whole
   * ANALYZE, hundreds of milliseconds, before it answered.
   */
  private afterWrite(): Promise<void> {
    const s = this.stats;
    if (this.client || s.analyzeEvery <= 0 || s.running) return Promise.resolve();
    const records = s.written >= (s.threshold ?? s.analyzeEvery);
    const audit = (s.auditWritten ?? 0) >= AUDIT_ANALYZE_FACTOR * s.analyzeEvery;
    if (!records && !audit) return Promise.resolve();
    if (records) s.written = 0;
    if (audit) s.auditWritten = 0;
    s.running = this.run(async () => {
      const tables = records ? (await this.pool.query<{ name: string }>(SCHEMA_TABLES)).rows.map((r) => r.name) : [];
      if (audit) tables.push(AUDIT_TABLE);
      if (tables.length === 0) return;
      await this.pool.query(`ANALYZE ${tables.join(', ')}`);
      if (records) {
        const found = await this.pool.query<{ rows: number }>(RESOURCE_ROWS);
        s.threshold = Math.max(s.analyzeEvery, Math.floor(Number(found.rows[0]?.rows ?? 0) / 10));
      }
    }).then(
      () => undefined,
      () => undefined,
    );
    void s.running.then(() => delete s.running);
    return Promise.resolve();
  }

  /** Waits for an ANALYZE that afterWrite started, if one is under way. */
  async statisticsSettled(): Promise<void> {
    await this.stats.running;
  }

  private get db(): SqlQueryable {
    return this.client ?? this.pool;
  }

  async ping(): Promise<void> {
    await this.run(() => this.pool.query('SELECT 1'));
  }

  /**
   * Runs `work` in one database transaction: every write through the repository it is given
   * commits together or not at all. Retried as a whole when it conflicts with another writer.
   */
  async transaction<T>(work: (tx: Repository) => Promise<T>): Promise<T> {
    if (this.client) return work(this);
    return this.write((client) => work(new Repository(this.pool, this.fhirBase, client, this.stats)));
  }

  /**
   * Inside transaction(): runs `work` so that, should it throw, what it wrote is undone and the
   * transaction goes on (a savepoint); the error is thrown on.
   */
  async savepoint<T>(work: () => Promise<T>): Promise<T> {
    const client = this.client;
    if (!client) throw new Error('savepoint needs a transaction');
    await this.run(() => client.query('SAVEPOINT work'));
    try {
      const result = await work();
      await this.run(() => client.query('RELEASE SAVEPOINT work'));
      return result;
    } catch (error) {
      await this.run(() => client.query('ROLLBACK TO SAVEPOINT work'));
      throw error;
    }
  }

  /**
   * Inside transaction(): holds the write lock of one resource until commit, so that a
   * read-modify-write (PATCH) sees no other writer in between.
   */
  async lockResource(resourceType: string, id: string): Promise<void> {
    if (!this.client) throw new Error('lockResource needs a transaction');
    await this.run(() => lock(this.client as SqlClient, resourceLock(resourceType, id)));
  }

  /** create, or conditional create when `condition` holds If-None-Exist criteria. */
  async create(resource: JsonResource, condition?: Condition, id: string = randomUUID()): Promise<{ created: boolean; version: StoredVersion }> {
    if (condition === undefined && !this.client) {
      this.stats.creates ??= new GroupCommit((items) => this.insertGroup(items), GROUP_SLOTS, CREATE_BATCH);
      const version = await this.stats.creates.submit({ resource, id });
      await this.afterWrite();
      return { created: true, version };
    }
    return this.write(async (client) => {
      if (condition) {
        await lock(client, conditionLock(condition));
        const found = await this.matches(client, condition.query, 2);
        if (found.length > 1) {
          throw fhirError('multiple-matches', `If-None-Exist matched more than one ${resource.resourceType}`, 'If-None-Exist');
        }
        const existing = found[0];
        if (existing) return { created: false, version: existing };
      }
      const version = this.stamp(resource, id, 1, 'POST');
      await client.query({ name: 'insert-first-version', text: INSERT_FIRST_VERSION, values: version.values });
      return { created: true, version: version.stored };
    });
  }

  /**
   * Creates many new resources (ids chosen by the caller, not yet in use) with one statement per
   * 500: history, index and current rows together. For transaction Bundles.
   */
  async createMany(items: { resource: JsonResource; id: string }[]): Promise<StoredVersion[]> {
    const out: StoredVersion[] = [];
    for (let i = 0; i < items.length; i += CREATE_BATCH) {
      const chunk = items.slice(i, i + CREATE_BATCH).map(({ resource, id }) => stamp(resource, id, 1, 'POST'));
      const values = manyValues(chunk, this.fhirBase);
      await this.write((client) => client.query({ name: 'insert-many', text: INSERT_MANY, values }));
      this.stats.written += chunk.length;
      out.push(...chunk.map((c) => c.stored));
    }
    return out;
  }

  /**
   * Appends entries of an append-only log (the audit log: resources never updated, written after
   * the requests they record were answered): like createMany, but each chunk is one autocommit
   * statement whose commit does not wait for the WAL flush, and the writes count a tenth towards
   * the statistics upkeep. A crash of PostgreSQL itself may lose the last few hundred milliseconds
   * of entries (never part of one, never anything else); a crash of this process already loses
   * the entries still buffered (src/audit/log.ts). The audit log's events (AuditInput) are stored
   * as its records (audit-events.ts AuditRecord, made AuditEvents when read); an AuditEvent given
   * as a resource is stored as it is.
   */
  async appendAuditEvents(events: (AuditInput | JsonResource)[]): Promise<void> {
    if (this.client) throw new Error('appendAuditEvents runs outside any transaction');
    for (let i = 0; i < events.length; i += CREATE_BATCH) {
      const chunk: { id: string; lastUpdated: string; format: number; content: object; row: AuditRow }[] = [];
      for (const event of events.slice(i, i + CREATE_BATCH)) {
        // Background work: requests get the event loop between slices (the audit log's batches of
        // up to 100 take about 3 ms to build, a slice under 1 ms), so that none waits for a whole batch.
        if (chunk.length > 0 && chunk.length % AUDIT_BUILD_SLICE === 0) await nextTurn();
        const lastUpdated = new Date().toISOString();
        const id = randomUUID();
        if (!('resourceType' in event)) {
          // The audit log's own: its record is stored, and its search values are those of the AuditEvent made of it.
          const record = auditRecordOf(event, id, lastUpdated);
          chunk.push({ id, lastUpdated, format: RECORD_FORMAT, content: record, row: auditRowOfRecord(record, this.fhirBase) });
          continue;
        }
        if (event.resourceType !== AUDIT_EVENT_TYPE) throw new Error(`appendAuditEvents takes AuditEvents, not ${event.resourceType}`);
        const content = withServerMeta(event, id, 1, lastUpdated);
        chunk.push({ id, lastUpdated, format: 0, content, row: auditRowOf(content, this.fhirBase) });
      }
      // Shapes this repository has not written yet go with the batch (a conflict on one another
      // writer stored meanwhile is ignored); the others are named by their digest only.
      const shapes = new Map<string, string[]>();
      for (const { row } of chunk) if (!this.auditShapes.has(row.shape)) shapes.set(row.shape, row.shapeKeys);
      // One JSON parameter for the batch: an array parameter per column costs pg an escaped array
      // literal of every content and key list (PostgreSQL then unescapes them): a third more per event.
      const rows = JSON.stringify(chunk.map((c) => ({ id: c.id, last_updated: c.lastUpdated, date_lo: c.row.dateLo, date_hi: c.row.dateHi, shape: c.row.shape, keys: c.row.keys, format: c.format, content: c.content })));
      const values = [rows, JSON.stringify([...shapes].map(([digest, keys]) => ({ digest, keys })))];
      await this.run(() => this.pool.query({ name: 'insert-audit-events', text: INSERT_AUDIT_EVENTS, values }));
      for (const [digest, keys] of shapes) this.auditShapes.set(digest, keys);
      // Towards audit_event's own ANALYZE (afterWrite): PGlite has no autovacuum.
      this.stats.auditWritten = (this.stats.auditWritten ?? 0) + chunk.length;
    }
    await this.afterWrite();
  }

  /**
   * Moves AuditEvents stored as ordinary resources (before migration 15) into the audit store,
   * in batches, each in one transaction; a no-op once none is left. Returns the number moved.
   */
  async moveAuditEvents(batchSize = 500): Promise<number> {
    let total = 0;
    for (;;) {
      const batch = await this.run(() =>
        this.pool.query<{ id: string; json: string | null; last_updated: Date; seq: string | null }>(
          `SELECT r.id, r.content::text AS json, r.last_updated,
             (SELECT min(h.seq) FROM resource_history h WHERE h.resource_type = r.resource_type AND h.id = r.id) AS seq
           FROM resource r WHERE r.resource_type = $1 ORDER BY r.id LIMIT $2`,
          [AUDIT_EVENT_TYPE, batchSize],
        ),
      );
      if (batch.rows.length === 0) return total;
      const live = batch.rows.filter((r) => r.json !== null);
      const rows = live.map((r) => auditRowOf(JSON.parse(r.json as string) as JsonResource, this.fhirBase));
      const ids = batch.rows.map((r) => r.id);
      await this.write(async (client) => {
        await client.query(
          `INSERT INTO audit_event (id, seq, last_updated, date_lo, date_hi, keys, content)
           SELECT u.id, COALESCE(u.seq, nextval('resource_history_seq_seq')), u.last_updated, u.date_lo, u.date_hi, ARRAY(SELECT jsonb_array_elements_text(u.keys)), u.content
           FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[], $6::jsonb[], $7::jsonb[])
             AS u(id, seq, last_updated, date_lo, date_hi, keys, content)
           ON CONFLICT (id) DO NOTHING`,
          [
            live.map((r) => r.id),
            live.map((r) => r.seq),
            live.map((r) => r.last_updated.toISOString()),
            rows.map((r) => r.dateLo),
            rows.map((r) => r.dateHi),
            // Moved events keep every key of their own (shape ''), as events stored before shapes do.
            rows.map((r) => JSON.stringify([...r.keys, ...r.shapeKeys])),
            live.map((r) => r.json),
          ],
        );
        for (const table of ['resource', 'resource_history', ...INDEX_TABLES.map((t) => `sp_${t}`)]) {
          await client.query(`DELETE FROM ${table} WHERE resource_type = $1 AND id = ANY($2::text[])`, [AUDIT_EVENT_TYPE, ids]);
        }
      });
      total += live.length;
    }
  }

  /**
   * Writes a group of plain creates in one autocommit statement (atomic by itself). Should that
   * statement fail, each create is tried alone, so that one bad write fails only its own request.
   */
  private async insertGroup(items: { resource: JsonResource; id: string }[]): Promise<Outcome<StoredVersion>[]> {
    const one = async ({ resource, id }: { resource: JsonResource; id: string }): Promise<StoredVersion> => {
      const version = this.stamp(resource, id, 1, 'POST');
      await this.run(() => this.pool.query({ name: 'insert-first-version', text: INSERT_FIRST_VERSION, values: version.values }));
      return version.stored;
    };
    const settle = (items: { resource: JsonResource; id: string }[]) =>
      Promise.all(items.map((item) => one(item).then((value): Outcome<StoredVersion> => ({ ok: true, value }), (error: unknown): Outcome<StoredVersion> => ({ ok: false, error }))));
    if (items.length === 1) return settle(items);
    let chunk: ReturnType<typeof stamp>[];
    let values: unknown[];
    try {
      chunk = items.map(({ resource, id }) => stamp(resource, id, 1, 'POST'));
      values = manyValues(chunk, this.fhirBase);
    } catch {
      return settle(items);
    }
    try {
      await this.pool.query({ name: 'insert-many', text: INSERT_MANY, values });
    } catch {
      return settle(items);
    }
    this.stats.written += chunk.length;
    return chunk.map((c) => ({ ok: true, value: c.stored }));
  }

  /** Current versions matching a search, at most `limit` (for conditional interactions). */
  private async matches(client: SqlQueryable, query: SearchQuery, limit: number): Promise<StoredVersion[]> {
    const p = new Params();
    const where = whereSql(query, p);
    const found = await client.query<Row>(
      `SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.content::text AS json FROM resource r WHERE ${where} LIMIT ${p.add(limit)}`,
      p.values,
    );
    return found.rows.map(fromRow);
  }

  /**
   * Conditional update: no match creates (with the body's id, or a new one), one match is updated,
   * more than one is 412. https://hl7.org/fhir/R4/http.html#cond-update
   */
  async conditionalUpdate(resource: JsonResource, condition: Condition): Promise<{ created: boolean; version: StoredVersion }> {
    return this.write(async (client) => {
      await lock(client, conditionLock(condition));
      const found = await this.matches(client, condition.query, 2);
      if (found.length > 1) throw fhirError('multiple-matches', `The conditional update matched more than one ${resource.resourceType}`);
      const match = found[0];
      if (match && resource.id !== undefined && resource.id !== match.id) {
        throw fhirError('id-mismatch', `The resource's id ${resource.id} differs from the id of the match (${match.id})`, `${resource.resourceType}.id`);
      }
      const bound = new Repository(this.pool, this.fhirBase, client, this.stats);
      // No match: create, with the body's id when it has one (as an update would: that id may be deleted).
      if (!match) return resource.id !== undefined ? bound.update(resource, resource.id) : bound.create(resource, undefined, randomUUID());
      return bound.update(resource, match.id);
    });
  }

  /** Conditional delete: deletes the one match; none is fine; more than one is 412. Returns what was deleted. */
  async conditionalDelete(condition: Condition): Promise<StoredVersion | undefined> {
    return this.write(async (client) => {
      const found = await this.matches(client, condition.query, 2);
      if (found.length > 1) throw fhirError('multiple-matches', `The conditional delete matched more than one ${condition.query.resourceType}`);
      const match = found[0];
      if (!match) return undefined;
      return new Repository(this.pool, this.fhirBase, client, this.stats).delete(match.resourceType, match.id);
    });
  }

  /** Resolves a conditional reference (`Patient?identifier=…`) to the one match. */
  async resolveCondition(condition: Condition, where: string): Promise<StoredVersion> {
    const found = await this.run(() => this.matches(this.db, condition.query, 2));
    if (found.length !== 1) {
      throw fhirError(found.length === 0 ? 'conditional-reference-unresolved' : 'multiple-matches',
        `${where} matched ${found.length === 0 ? 'no' : 'more than one'} ${condition.query.resourceType}`,
        where,
      );
    }
    return found[0] as StoredVersion;
  }

  /**
   * Every audit shape stored, for a search with conditions on AuditEvents (undefined for any
   * other): those not known yet are read, in one statement. A shape first stored after this read
   * is not named by the search (its events, the first of their kind, show from the next search).
   */
  private async auditShapesFor(query: SearchQuery): Promise<AuditShapes | undefined> {
    if (query.resourceType !== AUDIT_EVENT_TYPE && !query.filters.some(hasAuditFilter)) return undefined;
    const found = await this.run(() =>
      this.db.query<{ digest: string; keys: string[] }>('SELECT digest, keys FROM audit_shape WHERE NOT (digest = ANY($1::text[]))', [[...this.auditShapes.keys()]]),
    );
    for (const row of found.rows) this.auditShapes.set(row.digest, row.keys);
    return this.auditShapes;
  }

  /** One page of a search. `limit` rows; one more is read to know whether a next page exists. */
  async search(query: SearchQuery): Promise<SearchPage> {
    if (query.count === 0) return { rows: [] };
    const sql = pageSql(query, query.count + 1, await this.auditShapesFor(query));
    const result = await this.run(() => this.db.query<Record<string, string | null>>(sql.text, sql.values));
    const more = result.rows.length > query.count;
    let rows = result.rows.slice(0, query.count);
    if (sql.reversed) rows = rows.reverse();
    const keyOf = (row: Record<string, string | null> | undefined) =>
      row ? { values: Array.from({ length: sql.sortColumns }, (_, i) => row[`s${i}`] ?? null), id: row.id as string } : undefined;
    const first = keyOf(rows[0]);
    const last = keyOf(rows[rows.length - 1]);
    const page: SearchPage = { rows: rows.map((r) => ({ id: r.id as string, json: auditJson(r.json as string) })) };
    // Going forward there is a next page when more rows came back, and a previous one when we
    // came from a cursor; going backward, the other way round.
    const hasNext = sql.reversed ? true : more;
    const hasPrevious = sql.reversed ? more : query.cursor !== undefined;
    if (hasNext && last) page.next = last;
    if (hasPrevious && first) page.previous = first;
    return page;
  }

  async count(query: SearchQuery): Promise<number> {
    const sql = countSql(query, await this.auditShapesFor(query));
    const result = await this.run(() => this.db.query<{ total: number }>(sql.text, sql.values));
    return Number(result.rows[0]?.total ?? 0);
  }

  /** The planner's estimate of the number of matches (for _total=estimate). */
  async estimate(query: SearchQuery): Promise<number> {
    const sql = estimateSql(query, await this.auditShapesFor(query));
    const result = await this.run(() => this.db.query<{ 'QUERY PLAN': unknown }>(sql.text, sql.values));
    const raw = result.rows[0]?.['QUERY PLAN'];
    const plan = (typeof raw === 'string' ? JSON.parse(raw) : raw) as { Plan: { 'Plan Rows': number } }[];
    return Math.round(plan[0]?.Plan['Plan Rows'] ?? 0);
  }

  /**
   * The current resources carrying each identifier (`identifier=system|value` for each, in one
   * prepared statement: inbound HL7 matches its Patient and its DG1 Conditions with it). Keyed by
   * type, then `system|value`.
   */
  async byIdentifiers(wanted: { type: string; system: string; value: string }[]): Promise<Map<string, Map<string, { id: string; json: string }[]>>> {
    const out = new Map<string, Map<string, { id: string; json: string }[]>>();
    if (wanted.length === 0) return out;
    const result = await this.run(() =>
      this.db.query<{ resource_type: string; id: string; system: string; code: string; json: string }>({
        name: 'by-identifiers',
        text: `SELECT DISTINCT r.resource_type, r.id, t.system, t.code, r.content::text AS json
               FROM unnest($1::text[], $2::text[], $3::text[]) AS w(type, system, code)
               JOIN sp_token t ON t.resource_type = w.type AND t.param = 'identifier' AND t.code = w.code AND t.system = w.system
               JOIN resource r ON r.resource_type = t.resource_type AND r.id = t.id AND NOT r.deleted`,
        values: [wanted.map((w) => w.type), wanted.map((w) => w.system), wanted.map((w) => w.value)],
      }),
    );
    for (const row of result.rows) {
      const byKey = out.get(row.resource_type) ?? new Map<string, { id: string; json: string }[]>();
      out.set(row.resource_type, byKey);
      const key = `${row.system}|${row.code}`;
      byKey.set(key, [...(byKey.get(key) ?? []), { id: row.id, json: row.json }]);
    }
    return out;
  }

  /** The references held by resources of `sourceType` (ids given) through `param` ('*': any). */
  async referencesFrom(sourceType: string, ids: string[], param: string, targetType?: string): Promise<{ type: string; id: string }[]> {
    if (ids.length === 0) return [];
    if (sourceType === AUDIT_EVENT_TYPE) {
      const sql = auditReferencesFromSql(ids, param, targetType);
      const found = await this.run(() => this.db.query<{ target_type: string; target_id: string }>(sql.text, sql.values));
      return found.rows.map((r) => ({ type: r.target_type, id: r.target_id }));
    }
    const p = new Params();
    const conditions = [`resource_type = ${p.add(sourceType)}`, `id = ANY(${p.add(ids)}::text[])`, 'target_id IS NOT NULL', 'target_type IS NOT NULL'];
    if (param !== '*') conditions.push(`param = ${p.add(param)}`);
    if (targetType) conditions.push(`target_type = ${p.add(targetType)}`);
    const result = await this.run(() =>
      this.db.query<{ target_type: string; target_id: string }>(`SELECT DISTINCT target_type, target_id FROM sp_reference WHERE ${conditions.join(' AND ')}`, p.values),
    );
    return result.rows.map((r) => ({ type: r.target_type, id: r.target_id }));
  }

  /** Ids of resources of `sourceType` that refer through `param` to any of the targets. */
  async referencesTo(sourceType: string, param: string, targets: { type: string; id: string }[], targetType?: string): Promise<string[]> {
    const wanted = targetType ? targets.filter((t) => t.type === targetType) : targets;
    if (wanted.length === 0) return [];
    if (sourceType === AUDIT_EVENT_TYPE) {
      const sql = auditReferencesToSql(param, wanted);
      return (await this.run(() => this.db.query<{ id: string }>(sql.text, sql.values))).rows.map((r) => r.id);
    }
    const p = new Params();
    const result = await this.run(() =>
      this.db.query<{ id: string }>(
        `SELECT DISTINCT s.id FROM sp_reference s JOIN unnest(${p.add(wanted.map((t) => t.type))}::text[], ${p.add(wanted.map((t) => t.id))}::text[]) AS t(type, id)
           ON s.target_type = t.type AND s.target_id = t.id
         WHERE s.resource_type = ${p.add(sourceType)} AND s.param = ${p.add(param)}`,
        p.values,
      ),
    );
    return result.rows.map((r) => r.id);
  }

  /** Inside transaction(): lockKey() for several keys, in one statement (in a fixed order: no deadlock). */
  async lockKeys(keys: string[]): Promise<void> {
    await this.lockKeysAndRecordHl7(keys, []);
  }

  /**
   * Inside transaction(): lockKeys, and the inbound HL7 messages being applied stored with their
   * status (as recordHl7Message stores one) in the same statement, a round trip fewer per
   * transaction. The rows are the transaction's like everything it writes: undone with it should
   * a message fail.
   */
  async lockKeysAndRecordHl7(keys: string[], messages: StoredMessage[]): Promise<void> {
    if (!this.client) throw new Error('lockKeys needs a transaction');
    const client = this.client;
    const sorted = [...new Set(keys)].sort();
    const [text, values] = messages.length === 0 ? [LOCK_KEYS, [sorted]] : [`WITH stored AS (${messagesInsert(2)}) ${LOCK_KEYS}`, [sorted, ...messagesValues(messages)]];
    await this.run(() => client.query(text, values));
  }

  /**
   * Inside transaction(): serialises the writers of one key (a pushed document, say) until
   * commit.
   */
  async lockKey(key: string): Promise<void> {
    if (!this.client) throw new Error('lockKey needs a transaction');
    await this.run(() => lock(this.client as SqlClient, key));
  }

  /**
   * One document's last version and the last versions of a client's documents of some types
   * (MET API), in one statement: what a push reads before it maps (the document it replaces, the
   * client's goals), with the client's documents of `withoutResults` types stored before their
   * measurements had rows (migration 16).
   */
  async sourceDocuments(
    key: SourceDocumentKey,
    client?: { id: string; types: string[]; withoutResults?: string[] },
  ): Promise<{ document?: SourceDocument; clientDocuments: SourceDocument[]; withoutResults: SourceDocument[] }> {
    const result = await this.run(() =>
      this.db.query<{ doc_type: string; doc_id: string; client_id: string | null; version: number; content: unknown; parts: Record<string, { type: string; id: string }>; updated_at: Date; results: boolean }>({
        name: 'source-documents',
        text: `SELECT doc_type, doc_id, client_id, version, content, parts, updated_at, results FROM source_document
          WHERE sender = $1 AND ((doc_type = $2 AND doc_id = $3) OR (client_id = $4 AND doc_type = ANY($5::text[]))
            OR (client_id = $4 AND doc_type = ANY($6::text[]) AND NOT results))
          ORDER BY doc_type, doc_id`,
        values: [key.sender, key.type, key.id, client?.id ?? null, client?.types ?? [], client?.withoutResults ?? []],
      }),
    );
    const out: { document?: SourceDocument; clientDocuments: SourceDocument[]; withoutResults: SourceDocument[] } = { clientDocuments: [], withoutResults: [] };
    for (const row of result.rows) {
      const doc: SourceDocument = {
        sender: key.sender,
        type: row.doc_type,
        id: row.doc_id,
        ...(row.client_id !== null ? { clientId: row.client_id } : {}),
        version: row.version,
        content: row.content,
        parts: row.parts,
        updatedAt: row.updated_at.toISOString(),
      };
      if (row.doc_type === key.type && row.doc_id === key.id) out.document = doc;
      if (client && row.client_id === client.id && client.types.includes(row.doc_type)) out.clientDocuments.push(doc);
      if (client && row.client_id === client.id && !row.results && client.withoutResults?.includes(row.doc_type)) out.withoutResults.push(doc);
    }
    return out;
  }

  /**
   * Records a source document's new version and its measurements (`results`: every one it has,
   * those of its earlier version replaced), in one statement, inside the transaction that wrote
   * its resources.
   */
  async writeSourceDocument(doc: SourceDocument, results: SourceResult[]): Promise<void> {
    await this.write((client) =>
      client.query({
        name: 'write-source-document',
        text: `WITH d AS (
                 INSERT INTO source_document (sender, doc_type, doc_id, version, content, parts, updated_at, client_id, results)
                 VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, true)
                 ON CONFLICT (sender, doc_type, doc_id) DO UPDATE
                   SET version = EXCLUDED.version, content = EXCLUDED.content, parts = EXCLUDED.parts, updated_at = EXCLUDED.updated_at,
                       client_id = EXCLUDED.client_id, results = true
               ),
               ${resultRowsSql('$8', '$9')}`,
        values: [doc.sender, doc.type, doc.id, doc.version, JSON.stringify(doc.content), JSON.stringify(doc.parts), doc.updatedAt, doc.clientId ?? null, resultRows(results)],
      }),
    );
  }

  /**
   * Writes the measurements of documents stored before they had rows (migration 16), and marks
   * them: goal progress then reads their rows like any other's. One statement per document.
   */
  async writeSourceResults(sender: string, clientId: string, doc: SourceDocumentKey, results: SourceResult[]): Promise<void> {
    await this.write((client) =>
      client.query({
        name: 'write-source-results',
        text: `WITH d AS (UPDATE source_document SET results = true WHERE sender = $1 AND doc_type = $2 AND doc_id = $3),
               ${resultRowsSql('$4', '$5')}`,
        values: [sender, doc.type, doc.id, clientId, resultRows(results)],
      }),
    );
  }

  /**
   * The measurements of a client's stored documents on each of `measures`, those of one document
   * (`except`) left out: for each measure the newest `newest` by instant (with every one sharing
   * the last one's instant), or all of them when `newest` is undefined.
   */
  async clientResults(sender: string, clientId: string, measures: string[], except: SourceDocumentKey, newest?: number): Promise<SourceResult[]> {
    if (measures.length === 0) return [];
    const result = await this.run(() =>
      this.db.query<{ doc_type: string; doc_id: string; measure: string; part: string; date: string; taken: number; context: string | null; measurement: unknown }>({
        name: newest === undefined ? 'client-results-all' : 'client-results-newest',
        text: `SELECT r.doc_type, r.doc_id, r.measure, r.part, r.date, r.taken, r.context, r.measurement
               FROM unnest($3::text[]) AS m(measure)
               CROSS JOIN LATERAL (
                 SELECT * FROM met_result r
                 WHERE r.sender = $1 AND r.client_id = $2 AND r.measure = m.measure AND NOT (r.doc_type = $4 AND r.doc_id = $5)
                   ${
                     newest === undefined
                       ? ''
                       : `AND r.taken >= COALESCE((SELECT b.taken FROM met_result b
                            WHERE b.sender = $1 AND b.client_id = $2 AND b.measure = m.measure AND NOT (b.doc_type = $4 AND b.doc_id = $5)
                            ORDER BY b.taken DESC OFFSET $6::int - 1 LIMIT 1), '-Infinity')`
                   }
               ) r`,
        values: [sender, clientId, measures, except.type, except.id, ...(newest === undefined ? [] : [newest])],
      }),
    );
    return result.rows.map((row) => ({
      docType: row.doc_type,
      docId: row.doc_id,
      measure: row.measure,
      part: row.part,
      date: row.date,
      taken: Number(row.taken),
      ...(row.context !== null ? { context: row.context } : {}),
      measurement: row.measurement,
    }));
  }

  /** Queues a delivery job (inside the transaction that wrote what it delivers). */
  async enqueueDelivery(job: NewDeliveryJob): Promise<void> {
    await this.write((client) => insertJob(client, job));
  }

  /** Records an HL7 v2 message with its status (inside the transaction that applied it, or alone). */
  async recordHl7Message(message: StoredMessage): Promise<void> {
    await this.write((client) => storeMessages(client, [message]));
  }

  /**
   * Current versions of the given resources (those that exist): not deleted ones, or with
   * `withDeleted` also those whose current version is a deletion (to tell "never existed" apart).
   */
  async readMany(keys: { type: string; id: string }[], options: { withDeleted?: boolean } = {}): Promise<StoredVersion[]> {
    if (keys.some((k) => k.type === AUDIT_EVENT_TYPE)) {
      const events = await this.auditEvents(keys.filter((k) => k.type === AUDIT_EVENT_TYPE).map((k) => k.id));
      return [...(await this.readMany(keys.filter((k) => k.type !== AUDIT_EVENT_TYPE), options)), ...events];
    }
    if (keys.length === 0) return [];
    const p = new Params();
    const result = await this.run(() =>
      this.db.query<Row>(
        `SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.content::text AS json
         FROM resource r JOIN unnest(${p.add(keys.map((k) => k.type))}::text[], ${p.add(keys.map((k) => k.id))}::text[]) AS k(type, id)
           ON r.resource_type = k.type AND r.id = k.id
         ${options.withDeleted ? '' : 'WHERE NOT r.deleted'}`,
        p.values,
      ),
    );
    return result.rows.map(fromRow);
  }

  /** AuditEvents by id, from the audit store (one version each). */
  private async auditEvents(ids: string[]): Promise<StoredVersion[]> {
    if (ids.length === 0) return [];
    const result = await this.run(() => this.db.query<Row>(`SELECT ${AUDIT_VERSION_COLUMNS} FROM audit_event a WHERE a.id = ANY($1::text[])`, [ids]));
    return result.rows.map(fromRow);
  }

  async read(resourceType: string, id: string): Promise<StoredVersion> {
    if (resourceType === AUDIT_EVENT_TYPE) {
      const found = await this.auditEvents([id]);
      if (!found[0]) throw notFound(resourceType, id);
      return found[0];
    }
    const result = await this.run(() =>
      this.db.query<Row>(
        'SELECT resource_type, id, version_id, last_updated, deleted, content::text AS json FROM resource WHERE resource_type = $1 AND id = $2',
        [resourceType, id],
      ),
    );
    const row = result.rows[0];
    if (!row) throw notFound(resourceType, id);
    if (row.deleted) throw gone(resourceType, id, row.version_id);
    return fromRow(row);
  }

  async vread(resourceType: string, id: string, versionId: string): Promise<StoredVersion> {
    const version = Number(versionId);
    if (!Number.isSafeInteger(version) || version < 1) throw versionNotFound(resourceType, id, versionId);
    if (resourceType === AUDIT_EVENT_TYPE) {
      const found = await this.auditEvents([id]);
      if (!found[0] || version !== 1) throw versionNotFound(resourceType, id, versionId);
      return found[0];
    }
    const result = await this.run(() =>
      this.db.query<Row>(
        `SELECT h.resource_type, h.id, h.version_id, h.last_updated, h.deleted, h.method, ${HISTORY_CONTENT} AS json
         FROM ${HISTORY_FROM} WHERE h.resource_type = $1 AND h.id = $2 AND h.version_id = $3`,
        [resourceType, id, version],
      ),
    );
    const row = result.rows[0];
    if (!row) throw versionNotFound(resourceType, id, versionId);
    if (row.deleted) throw gone(resourceType, id, row.version_id);
    return fromRow(row);
  }

  /** update, or create-on-update with the client's id. `ifMatch` is the version the client holds. */
  async update(resource: JsonResource, id: string, ifMatch?: string): Promise<{ created: boolean; version: StoredVersion }> {
    return this.write(async (client) => {
      const current = await lockCurrent(client, resource.resourceType, id);
      checkIfMatch(resource.resourceType, id, current, ifMatch);
      const next = (current?.version_id ?? 0) + 1;
      const version = this.stamp(resource, id, next, 'PUT');
      await client.query(
        current
          ? { name: 'upsert-next-version', text: UPSERT_NEXT_VERSION, values: version.values }
          : { name: 'insert-first-version', text: INSERT_FIRST_VERSION, values: version.values },
      );
      return { created: !current || current.deleted, version: version.stored };
    });
  }

  /**
   * Inside transaction(): the next version of a resource whose lock this transaction holds
   * (lockKeys with `Type/id`, the key update() takes) and whose current version it read after
   * taking it, so that no other writer can have come in between: one statement, where update()
   * takes the lock and reads the current row first. For writers of many resources at once.
   */
  async updateLocked(resource: JsonResource, id: string, current: { versionId: string; deleted: boolean }): Promise<{ created: boolean; version: StoredVersion }> {
    if (!this.client) throw new Error('updateLocked needs a transaction');
    return this.write(async (client) => {
      const version = this.stamp(resource, id, Number(current.versionId) + 1, 'PUT');
      await client.query({ name: 'upsert-next-version', text: UPSERT_NEXT_VERSION, values: version.values });
      return { created: current.deleted, version: version.stored };
    });
  }

  /** delete: writes a deletion version. Returns undefined when the resource was already deleted. */
  async delete(resourceType: string, id: string, ifMatch?: string): Promise<StoredVersion | undefined> {
    return this.write(async (client) => {
      const current = await lockCurrent(client, resourceType, id);
      if (!current) throw notFound(resourceType, id);
      checkIfMatch(resourceType, id, current, ifMatch);
      if (current.deleted) return undefined;
      const version: StoredVersion = {
        resourceType,
        id,
        versionId: String(current.version_id + 1),
        lastUpdated: new Date().toISOString(),
        deleted: true,
        method: 'DELETE',
      };
      await client.query({ name: 'upsert-next-version', text: UPSERT_NEXT_VERSION, values: [...insertValues(version), ...indexValues(undefined)] });
      return version;
    });
  }

  /**
   * Rebuilds the search index of every current resource, in batches (after a migration that
   * adds index tables, or when the search parameters change). Returns the number indexed.
   */
  async reindex(batchSize = 500): Promise<number> {
    let after = { type: '', id: '' };
    let total = 0;
    for (;;) {
      const batch = await this.run(() =>
        this.pool.query<{ resource_type: string; id: string; json: string }>(
          `SELECT resource_type, id, content::text AS json FROM resource
           WHERE NOT deleted AND (resource_type, id) > ($1, $2) ORDER BY resource_type, id LIMIT $3`,
          [after.type, after.id, batchSize],
        ),
      );
      if (batch.rows.length === 0) return total;
      await this.write(async (client) => {
        for (const row of batch.rows) {
          const rows = extractIndex(JSON.parse(row.json) as JsonResource, this.fhirBase);
          await client.query(REINDEX, [row.resource_type, row.id, ...indexValues(rows)]);
        }
      });
      total += batch.rows.length;
      const last = batch.rows[batch.rows.length - 1] as { resource_type: string; id: string };
      after = { type: last.resource_type, id: last.id };
    }
  }

  /**
   * History at system, type or instance level, newest first, in pages. AuditEvents (one version
   * each, in the audit store) take part by the same sequence numbers.
   */
  async history(query: HistoryQuery): Promise<HistoryPage> {
    const values: unknown[] = [];
    const bind = (value: unknown): string => {
      values.push(value);
      return `$${values.length}`;
    };
    const resourceWhere: string[] = [];
    const auditWhere: string[] = [];
    const audit = query.resourceType === AUDIT_EVENT_TYPE;
    const withAudit = audit || (!query.resourceType && !query.excludeTypes?.includes(AUDIT_EVENT_TYPE));
    // Each value is bound once, and used by both sides (a value bound but unused has no type).
    const both = (column: string, op: string, value: unknown): void => {
      const ref = bind(value);
      resourceWhere.push(`h.${column} ${op} ${ref}`);
      auditWhere.push(`a.${column} ${op} ${ref}`);
    };
    if (query.resourceType && !audit) resourceWhere.push(`h.resource_type = ${bind(query.resourceType)}`);
    if (query.id) both('id', '=', query.id);
    if (query.excludeTypes?.length && !audit) resourceWhere.push(`h.resource_type <> ALL(${bind(query.excludeTypes)}::text[])`);
    if (query.since) both('last_updated', '>', query.since);
    if (query.before) both('seq', '<', query.before);
    if (!query.resourceType) resourceWhere.push(`h.resource_type <> '${AUDIT_EVENT_TYPE}'`);
    const limit = bind(query.count + 1);
    const fromResources = `SELECT h.seq, h.resource_type, h.id, h.version_id, h.last_updated, h.deleted, h.method, ${HISTORY_CONTENT} AS json
      FROM ${HISTORY_FROM} ${resourceWhere.length ? `WHERE ${resourceWhere.join(' AND ')}` : ''} ORDER BY h.seq DESC LIMIT ${limit}`;
    const fromAudit = `SELECT ${AUDIT_VERSION_COLUMNS} FROM audit_event a ${auditWhere.length ? `WHERE ${auditWhere.join(' AND ')}` : ''} ORDER BY a.seq DESC LIMIT ${limit}`;
    const sql =
      audit
        ? fromAudit
        : withAudit
          ? `SELECT * FROM ((${fromResources}) UNION ALL (${fromAudit})) v ORDER BY v.seq DESC LIMIT ${limit}`
          : fromResources;
    const result = await this.run(() => this.db.query<Row>(sql, values));
    if (query.id && query.resourceType && result.rows.length === 0 && !query.before && !query.since) {
      await this.assertExists(query.resourceType, query.id);
    }
    const rows = result.rows.slice(0, query.count);
    const last = rows[rows.length - 1];
    return {
      versions: rows.map(fromRow),
      ...(result.rows.length > query.count && last?.seq !== undefined ? { next: String(last.seq) } : {}),
    };
  }

  private async assertExists(resourceType: string, id: string): Promise<void> {
    if (resourceType === AUDIT_EVENT_TYPE) {
      await this.read(resourceType, id);
      return;
    }
    const found = await this.run(() => this.db.query('SELECT 1 FROM resource WHERE resource_type = $1 AND id = $2', [resourceType, id]));
    if (found.rowCount === 0) throw notFound(resourceType, id);
  }

  /** The version to store for a write, with the statement parameters (resource, then index). */
  private stamp(resource: JsonResource, id: string, versionId: number, method: 'POST' | 'PUT'): { stored: StoredVersion; values: unknown[] } {
    const { stored, content } = stamp(resource, id, versionId, method);
    this.stats.written++;
    return { stored, values: [...insertValues(stored), ...indexValues(extractIndex(content, this.fhirBase))] };
  }

  /** A write transaction, retried when it conflicts with a concurrent one; inside transaction(), the open one. */
  private async write<T>(work: (client: SqlClient) => Promise<T>): Promise<T> {
    if (this.client) {
      try {
        return await work(this.client);
      } catch (error) {
        throw classifyDatabaseError(error);
      }
    }
    for (let attempt = 1; ; attempt++) {
      try {
        const result = await inTransaction(this.pool, work);
        await this.afterWrite();
        return result;
      } catch (error) {
        if (attempt < MAX_ATTEMPTS && isConflict(error)) continue;
        throw classifyDatabaseError(error);
      }
    }
  }

  private async run<T>(query: () => Promise<T>): Promise<T> {
    try {
      return await query();
    } catch (error) {
      throw classifyDatabaseError(error);
    }
  }
}

// One statement per write: the version in history, the search index, and the current row.
//
// The content of a version is stored once: a history row of the current, live version has no
// content of its own (NULL); the version's content is the current row's. When a later version
// (update or delete) supersedes it, the same statement copies the content into that history row
// before it overwrites the current row (one snapshot: the copy reads the content being replaced).
// So a create writes its content once, not twice, and vread and _history take a NULL history
// content from the current row of the same version. Rows written before this rule kept their copy.

/** The history table with, for a version that is current, the current row that holds its content. */
const HISTORY_FROM = `resource_history h LEFT JOIN resource cur
  ON h.content IS NULL AND NOT h.deleted
  AND cur.resource_type = h.resource_type AND cur.id = h.id AND cur.version_id = h.version_id`;
const HISTORY_CONTENT = 'COALESCE(h.content, cur.content)::text';
// Data-modifying CTEs all run, on one snapshot: the index deletes never see the index inserts.
const INSERT_FIRST_VERSION = `
  WITH h AS (
    INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, method, content)
    VALUES ($1, $2, $3, $4, $5, $6, NULL)
  ),
  ${indexCtes(8, false).sql}
  INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content)
  VALUES ($1, $2, $3, $4, $5, $7::jsonb)`;

const CREATE_BATCH = 500;
/** Takes the advisory locks of $1 (sorted, distinct keys) in their order (lockKeys). */
const LOCK_KEYS = 'SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest($1::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n';

/** Audit events built between two turns of the event loop (appendAuditEvents). */
const AUDIT_BUILD_SLICE = 32;

/** Groups of plain creates in flight at once; more creates wait and go together in the next group. */
const GROUP_SLOTS = Number(process.env.GROUP_SLOTS ?? 1);

/** audit_event is analysed after this many times analyzeEvery events (afterWrite). */
const AUDIT_ANALYZE_FACTOR = 10;
const AUDIT_TABLE = 'audit_event';
/** The tables of the schema a statement runs in (the tenant's), audit_event aside, quoted for ANALYZE. */
const SCHEMA_TABLES = `SELECT quote_ident(current_schema()) || '.' || quote_ident(c.relname) AS name FROM pg_class c
  WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') AND c.relname <> '${AUDIT_TABLE}' ORDER BY c.relname`;
/** The planner's count of current resources, as the last ANALYZE left it. */
const RESOURCE_ROWS = `SELECT greatest(c.reltuples, 0) AS rows FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = 'resource'`;

/** Many first versions in one statement: history, index and current rows. */
const INSERT_MANY = `
  WITH v AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::jsonb[]) AS v(resource_type, id, last_updated, content)
  ),
  h AS (
    INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, method, content)
    SELECT resource_type, id, 1, last_updated, false, 'POST', NULL::jsonb FROM v
  ),
  ${indexCtesMany(5).sql}
  INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content)
  SELECT resource_type, id, 1, last_updated, false, content FROM v`;

/**
 * AuditEvents into the audit store (audit-events.ts), many in one statement whose implicit
 * transaction commits without waiting for the WAL flush (set_config(…, true) is local to it; the
 * cross join makes it run before the rows are written): the audit log is append-only, written off
 * the requests' path, and a crash of PostgreSQL itself may lose its last few milliseconds.
 */
const INSERT_AUDIT_EVENTS = `
  WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true) AS off),
  shapes AS (
    INSERT INTO audit_shape (digest, keys)
    SELECT s.digest, s.keys FROM jsonb_to_recordset($2::jsonb) AS s(digest text, keys text[]) CROSS JOIN async_commit
    ON CONFLICT (digest) DO NOTHING
  )
  INSERT INTO audit_event (id, last_updated, date_lo, date_hi, shape, keys, format, content)
  SELECT u.id, u.last_updated, u.date_lo, u.date_hi, u.shape, u.keys, u.format, u.content
  FROM jsonb_to_recordset($1::jsonb) AS u(id text, last_updated timestamptz, date_lo timestamptz, date_hi timestamptz, shape text, keys text[], format smallint, content jsonb)
  CROSS JOIN async_commit`;

/** The columns of a history row, for an AuditEvent (one version, never changed). */
const AUDIT_VERSION_COLUMNS = `a.seq, '${AUDIT_EVENT_TYPE}'::text AS resource_type, a.id, 1 AS version_id, a.last_updated, false AS deleted, 'POST'::text AS method, ${auditJsonSql('a')} AS json`;

const REINDEX = `WITH ${indexCtes(3, true).sql} SELECT 1`;

const UPSERT_NEXT_VERSION = `
  WITH superseded AS (
    UPDATE resource_history h SET content = r.content
    FROM resource r
    WHERE r.resource_type = $1 AND r.id = $2 AND NOT r.deleted
      AND h.resource_type = $1 AND h.id = $2 AND h.version_id = r.version_id AND h.content IS NULL
  ),
  h AS (
    INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, method, content)
    VALUES ($1, $2, $3, $4, $5, $6, NULL)
  ),
  ${indexCtes(8, true).sql}
  UPDATE resource SET version_id = $3, last_updated = $4, deleted = $5, content = $7::jsonb
  WHERE resource_type = $1 AND id = $2`;

/**
 * CTEs (after one named `d`) that make a document's measurement rows those of the JSON array in
 * parameter `rows` (resultRows): each given part written, every other part of the document
 * deleted. The document is ($1, $2, $3), its client the parameter `client`. Inserted and deleted
 * parts never overlap: one statement can do both.
 */
function resultRowsSql(client: string, rows: string): string {
  return `
  r AS (
    SELECT * FROM jsonb_to_recordset(${rows}::jsonb)
      AS r(measure text, part text, date text, taken double precision, context text, measurement jsonb)
  ),
  gone AS (
    DELETE FROM met_result g
    WHERE g.sender = $1 AND g.doc_type = $2 AND g.doc_id = $3 AND g.part NOT IN (SELECT part FROM r)
  )
  INSERT INTO met_result (sender, client_id, measure, doc_type, doc_id, part, date, taken, context, measurement)
  SELECT $1, ${client}, r.measure, $2, $3, r.part, r.date, r.taken, r.context, r.measurement FROM r
  ON CONFLICT (sender, doc_type, doc_id, part) DO UPDATE
    SET client_id = EXCLUDED.client_id, measure = EXCLUDED.measure, date = EXCLUDED.date, taken = EXCLUDED.taken,
        context = EXCLUDED.context, measurement = EXCLUDED.measurement`;
}

function resultRows(results: SourceResult[]): string {
  return JSON.stringify(results.map((r) => ({ measure: r.measure, part: r.part, date: r.date, taken: r.taken, context: r.context ?? null, measurement: r.measurement })));
}

/** Parameters of INSERT_MANY for stamped new resources. */
function manyValues(chunk: ReturnType<typeof stamp>[], fhirBase: string): unknown[] {
  return [
    chunk.map((c) => c.stored.resourceType),
    chunk.map((c) => c.stored.id),
    chunk.map((c) => c.stored.lastUpdated),
    chunk.map((c) => c.stored.json),
    ...indexValuesMany(chunk.map((c) => ({ resourceType: c.stored.resourceType, id: c.stored.id, rows: extractIndex(c.content, fhirBase) }))),
  ];
}

function insertValues(v: StoredVersion): unknown[] {
  return [v.resourceType, v.id, Number(v.versionId), v.lastUpdated, v.deleted, v.method, v.json ?? null];
}

/** The resource as stored: server-assigned id, versionId and lastUpdated; `resourceType` first. */
function stamp(resource: JsonResource, id: string, versionId: number, method: 'POST' | 'PUT'): { stored: StoredVersion; content: JsonResource } {
  // AuditEvents live in the audit store (appendAuditEvents); nothing else writes them.
  if (resource.resourceType === AUDIT_EVENT_TYPE) throw new Error('AuditEvents are written by the audit log only');
  const lastUpdated = new Date().toISOString();
  const content = withServerMeta(resource, id, versionId, lastUpdated);
  return { stored: { resourceType: resource.resourceType, id, versionId: String(versionId), lastUpdated, deleted: false, method, json: JSON.stringify(content) }, content };
}

/** The resource with the server's id, versionId and lastUpdated; `resourceType` first. */
function withServerMeta(resource: JsonResource, id: string, versionId: number, lastUpdated: string): JsonResource {
  const { resourceType, id: _ignored, meta, ...rest } = resource;
  return { resourceType, id, meta: { ...meta, versionId: String(versionId), lastUpdated }, ...rest };
}

/**
 * The advisory-lock key every writer of the resources matching `condition` takes (conditional
 * create, update and delete, $pull-diagnoses, inbound HL7), so that they serialise.
 */
export function conditionLock(condition: Condition): string {
  return `create:${condition.lockKey}`;
}

async function lock(client: SqlClient, key: string): Promise<void> {
  await client.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [key]);
}

/** The advisory lock key of one resource's writers (update, delete, PATCH; lockKeys for several). */
export function resourceLock(resourceType: string, id: string): string {
  return `${resourceType}/${id}`;
}

/** Serialises writers of one resource (existing or not yet) and returns its current row. */
async function lockCurrent(client: SqlClient, resourceType: string, id: string): Promise<Row | undefined> {
  await lock(client, resourceLock(resourceType, id));
  const result = await client.query<Row>(
    'SELECT resource_type, id, version_id, last_updated, deleted, NULL AS json FROM resource WHERE resource_type = $1 AND id = $2',
    [resourceType, id],
  );
  return result.rows[0];
}

function checkIfMatch(resourceType: string, id: string, current: Row | undefined, ifMatch: string | undefined): void {
  if (ifMatch === undefined) return;
  if (!current || current.deleted) {
    throw fhirError('version-mismatch', `If-Match names version ${ifMatch} but ${resourceType}/${id} has no current version`, 'If-Match');
  }
  if (String(current.version_id) !== ifMatch) {
    throw fhirError('version-mismatch',
      `If-Match names version ${ifMatch} but the current version of ${resourceType}/${id} is ${current.version_id}`,
      'If-Match',
    );
  }
}

function fromRow(row: Row): StoredVersion {
  return {
    resourceType: row.resource_type,
    id: row.id,
    versionId: String(row.version_id),
    lastUpdated: row.last_updated.toISOString(),
    deleted: row.deleted,
    method: row.method ?? (row.deleted ? 'DELETE' : 'PUT'),
    ...(row.json !== null ? { json: auditJson(row.json) } : {}),
  };
}

function notFound(resourceType: string, id: string) {
  return fhirError('resource-not-found', `${resourceType}/${id} is not known`);
}

function versionNotFound(resourceType: string, id: string, versionId: string) {
  return fhirError('version-not-found', `${resourceType}/${id} has no version ${versionId}`);
}

function gone(resourceType: string, id: string, versionId: number) {
  return fhirError('resource-deleted', `${resourceType}/${id} was deleted (version ${versionId})`);
}

/** Whether a filter searches AuditEvents (`_has:AuditEvent:…`, at any depth). */
function hasAuditFilter(filter: Filter): boolean {
  if (filter.kind === 'has') return filter.sourceType === AUDIT_EVENT_TYPE || hasAuditFilter(filter.filter);
  if (filter.kind === 'chain') return [...filter.filters.values()].some(hasAuditFilter);
  return false;
}
