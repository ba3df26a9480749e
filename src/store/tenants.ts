/**
 * Each tenant's data, behind a Repository of its own over the tenant's schema (schema-pool.ts):
 * every statement a tenant's requests make runs with search_path = its schema, so resources,
 * searches, history, conditional references and MET documents of one tenant never see another's.
 * A tenant's schema is migrated when the server starts (every tenant known then) or, for a tenant
 * created while it runs, before its first request.
 */
import type { Logger } from 'pino';
import { ClientStore } from './clients.js';
import { classifyDatabaseError } from './db-errors.js';
import type { Database } from './database.js';
import { migrateTenantSchema, REINDEX_MIGRATIONS } from './migrations.js';
import { Repository } from './repository.js';
import type { SqlPool } from './sql.js';

export class Tenants {
  private readonly repos = new Map<string, Promise<Repository>>();
  private readonly clients: ClientStore;

  /**
   * @param publicRepo the repository over `public` (the first tenant's schema), shared so that its
   *   statistics upkeep and grouped creates are one
   */
  constructor(
    private readonly db: Database,
    private readonly publicRepo: Repository,
    private readonly analyzeEvery: number,
  ) {
    this.clients = new ClientStore(db.pool);
  }

  /** The repository of a tenant's data; undefined when no such tenant is registered. */
  async repository(tenant: string): Promise<Repository | undefined> {
    const known = this.repos.get(tenant);
    if (known) return known;
    let schema: string | undefined;
    try {
      schema = await this.clients.tenantSchema(tenant);
    } catch (error) {
      throw classifyDatabaseError(error);
    }
    if (schema === undefined) return undefined;
    // Requests racing for a tenant not yet open share one opening.
    const again = this.repos.get(tenant);
    if (again) return again;
    const opening = this.open(schema).catch((error: unknown) => {
      throw classifyDatabaseError(error);
    });
    this.repos.set(tenant, opening);
    opening.catch(() => this.repos.delete(tenant));
    return opening;
  }

  /** The names of the registered tenants, in order. */
  async names(): Promise<string[]> {
    try {
      return await this.clients.tenantNames();
    } catch (error) {
      throw classifyDatabaseError(error);
    }
  }

  /** Every tenant's schema pool and repository (the delivery worker visits each). */
  async stores(): Promise<{ tenant: string; pool: SqlPool; repo: Repository }[]> {
    const out: { tenant: string; pool: SqlPool; repo: Repository }[] = [];
    for (const tenant of await this.clients.tenantNames()) {
      const schema = await this.clients.tenantSchema(tenant);
      const repo = await this.repository(tenant);
      if (schema !== undefined && repo) out.push({ tenant, pool: this.db.inSchema(schema), repo });
    }
    return out;
  }

  /** Migrates (and where a migration asks for it, reindexes) every tenant's schema; at start. */
  async openAll(logger: Logger): Promise<void> {
    for (const tenant of await this.clients.tenantNames()) {
      const schema = await this.clients.tenantSchema(tenant);
      if (schema === undefined || schema === 'public') continue;
      const opening = this.open(schema, logger);
      this.repos.set(tenant, opening);
      await opening;
    }
  }

  private async open(schema: string, logger?: Logger): Promise<Repository> {
    if (schema === 'public') return this.publicRepo;
    const pool = this.db.inSchema(schema);
    const applied = await migrateTenantSchema(pool, schema);
    const repo = Repository.withStatsUpkeep(pool, this.publicRepo.fhirBase, this.analyzeEvery);
    await afterMigrations(repo, applied, logger, { schema });
    return repo;
  }
}

/**
 * What the migrations `applied` in a schema leave to do with its data, before it is served: the
 * resources indexed again where a migration changed the index, and AuditEvents stored as ordinary
 * resources (before migration 15) moved into the audit store (a no-op once none is left).
 */
export async function afterMigrations(repo: Repository, applied: number[], logger: Logger | undefined, fields: object = {}): Promise<void> {
  if (applied.some((m) => REINDEX_MIGRATIONS.includes(m))) {
    const indexed = await repo.reindex();
    if (indexed > 0) logger?.info({ ...fields, indexed }, 'search index built for existing resources');
  }
  const moved = await repo.moveAuditEvents();
  if (moved > 0) logger?.info({ ...fields, moved }, 'AuditEvents moved into the audit store');
}

/** Registers a tenant and creates its schema with every table; returns the schema's name. */
export async function createTenant(db: Database, name: string): Promise<string> {
  const schema = await new ClientStore(db.pool).createTenant(name);
  if (schema !== 'public') await migrateTenantSchema(db.inSchema(schema), schema);
  return schema;
}
