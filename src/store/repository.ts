/**
 * The only place resources are written and read. Every write is one database transaction that
 * keeps the current version (`resource`) and the full history (`resource_history`) in step.
 * https://hl7.org/fhir/R4/http.html
 */
import { randomUUID } from 'node:crypto';
import type { SqlClient, SqlPool } from './sql.js';
import { fhirError } from '../fhir/errors.js';
import type { JsonResource } from '../fhir/resource.js';
import { inTransaction } from './database.js';
import { classifyDatabaseError, isConflict } from './db-errors.js';
import { compileCriteria } from './conditions.js';


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

export interface HistoryQuery {
  resourceType?: string;
  id?: string;
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
  constructor(private readonly pool: SqlPool) {}

  async ping(): Promise<void> {
    await this.run(() => this.pool.query('SELECT 1'));
  }

  /** create, or conditional create when `ifNoneExist` holds search criteria. */
  async create(resource: JsonResource, ifNoneExist?: string): Promise<{ created: boolean; version: StoredVersion }> {
    const id = randomUUID();
    if (ifNoneExist === undefined) {
      const version = stamp(resource, id, 1, 'POST');
      await this.run(() => this.pool.query(INSERT_FIRST_VERSION, insertValues(version)));
      return { created: true, version };
    }
    const criteria = compileCriteria(resource.resourceType, ifNoneExist, 2);
    return this.write(async (client) => {
      for (const key of criteria.lockKeys) await lock(client, `create:${key}`);
      const found = await client.query<Row>(
        `SELECT resource_type, id, version_id, last_updated, deleted, content::text AS json FROM resource
         WHERE resource_type = $1 AND NOT deleted AND ${criteria.where} LIMIT 2`,
        [resource.resourceType, ...criteria.values],
      );
      if (found.rows.length > 1) {
        throw fhirError('multiple-matches', `If-None-Exist matched more than one ${resource.resourceType}`, 'If-None-Exist');
      }
      const existing = found.rows[0];
      if (existing) return { created: false, version: fromRow(existing) };
      const version = stamp(resource, id, 1, 'POST');
      await client.query(INSERT_FIRST_VERSION, insertValues(version));
      return { created: true, version };
    });
  }

  async read(resourceType: string, id: string): Promise<StoredVersion> {
    const result = await this.run(() =>
      this.pool.query<Row>(
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
    const result = await this.run(() =>
      this.pool.query<Row>(
        `SELECT resource_type, id, version_id, last_updated, deleted, method, content::text AS json
         FROM resource_history WHERE resource_type = $1 AND id = $2 AND version_id = $3`,
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
      const version = stamp(resource, id, next, 'PUT');
      await client.query(current ? UPSERT_NEXT_VERSION : INSERT_FIRST_VERSION, insertValues(version));
      return { created: !current || current.deleted, version };
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
      await client.query(UPSERT_NEXT_VERSION, insertValues(version));
      return version;
    });
  }

  /** History at system, type or instance level, newest first, in pages. */
  async history(query: HistoryQuery): Promise<HistoryPage> {
    const where: string[] = [];
    const values: unknown[] = [];
    const add = (clause: string, value: unknown): void => {
      values.push(value);
      where.push(clause.replace('?', `$${values.length}`));
    };
    if (query.resourceType) add('resource_type = ?', query.resourceType);
    if (query.id) add('id = ?', query.id);
    if (query.since) add('last_updated > ?', query.since);
    if (query.before) add('seq < ?', query.before);
    values.push(query.count + 1);
    const sql = `SELECT seq, resource_type, id, version_id, last_updated, deleted, method, content::text AS json
      FROM resource_history ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
      ORDER BY seq DESC LIMIT $${values.length}`;
    const result = await this.run(() => this.pool.query<Row>(sql, values));
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
    const found = await this.run(() => this.pool.query('SELECT 1 FROM resource WHERE resource_type = $1 AND id = $2', [resourceType, id]));
    if (found.rowCount === 0) throw notFound(resourceType, id);
  }

  /** A write transaction, retried when it conflicts with a concurrent one. */
  private async write<T>(work: (client: SqlClient) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await inTransaction(this.pool, work);
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

const INSERT_FIRST_VERSION = `
  WITH h AS (
    INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, method, content)
    VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
  )
  INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content)
  VALUES ($1, $2, $3, $4, $5, $7::jsonb)`;

const UPSERT_NEXT_VERSION = `
  WITH h AS (
    INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, method, content)
    VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
  )
  UPDATE resource SET version_id = $3, last_updated = $4, deleted = $5, content = $7::jsonb
  WHERE resource_type = $1 AND id = $2`;

function insertValues(v: StoredVersion): unknown[] {
  return [v.resourceType, v.id, Number(v.versionId), v.lastUpdated, v.deleted, v.method, v.json ?? null];
}

/** The resource as stored: server-assigned id, versionId and lastUpdated; `resourceType` first. */
function stamp(resource: JsonResource, id: string, versionId: number, method: 'POST' | 'PUT'): StoredVersion {
  const lastUpdated = new Date().toISOString();
  const { resourceType, id: _ignored, meta, ...rest } = resource;
  const stored = { resourceType, id, meta: { ...meta, versionId: String(versionId), lastUpdated }, ...rest };
  return { resourceType, id, versionId: String(versionId), lastUpdated, deleted: false, method, json: JSON.stringify(stored) };
}

async function lock(client: SqlClient, key: string): Promise<void> {
  await client.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [key]);
}

/** Serialises writers of one resource (existing or not yet) and returns its current row. */
async function lockCurrent(client: SqlClient, resourceType: string, id: string): Promise<Row | undefined> {
  await lock(client, `${resourceType}/${id}`);
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
    ...(row.json !== null ? { json: row.json } : {}),
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
