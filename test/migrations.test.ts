/** A database created before the search index (migration 1 only) gets its resources indexed at start. */
import assert from 'node:assert/strict';
import { openDatabase } from '../src/store/database.js';
import { MIGRATIONS, migrate, REINDEX_MIGRATIONS, SEARCH_INDEX_MIGRATION, UNION_PARAMS_21 } from '../src/store/migrations.js';
import { searchRegistry } from '../src/search/definitions.js';
import { RESOURCE_TYPES } from '../src/fhir/resource-types.js';
import { Repository } from '../src/store/repository.js';
import type { SqlPool } from '../src/store/sql.js';
import { parseSearch } from '../src/search/parse.js';
import { ClientStore } from '../src/store/clients.js';
import { createTenant, Tenants } from '../src/store/tenants.js';

/** Applies the migrations before `version`, as a server of that time would have. */
async function migrateBefore(pool: SqlPool, version: number): Promise<void> {
  await pool.query('CREATE TABLE schema_migration (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())');
  for (const m of MIGRATIONS.filter((m) => m.version < version)) {
    await pool.query(m.sql);
    await pool.query('INSERT INTO schema_migration (version, name) VALUES ($1, $2)', [m.version, m.name]);
  }
}

describe('migrations', function () {
  this.timeout(60_000);

  it('migration 2 adds the search index and reindex() indexes what was stored before it', async () => {
    // Its own embedded database in memory, in both CI passes.
    const db = await openDatabase({ dataDir: 'memory://' });
    try {
      await migrateBefore(db.pool, SEARCH_INDEX_MIGRATION);
      const patient = { resourceType: 'Patient', id: 'old-1', meta: { versionId: '1', lastUpdated: '2025-01-01T00:00:00.000Z' }, name: [{ family: 'Before' }] };
      await db.pool.query(
        `INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content) VALUES ('Patient', 'old-1', 1, '2025-01-01T00:00:00Z', false, $1::jsonb)`,
        [JSON.stringify(patient)],
      );
      const applied = await migrate(db.pool);
      assert.deepEqual(applied, MIGRATIONS.slice(1).map((m) => m.version));
      assert.ok(applied.includes(SEARCH_INDEX_MIGRATION));
      const repo = new Repository(db.pool, 'http://fhir.test/fhir');
      const query = parseSearch('Patient', { family: ['before'] }, { fhirBase: 'http://fhir.test/fhir', lenient: false }).query;
      assert.deepEqual((await repo.search(query)).rows, [], 'not searchable before reindexing');
      assert.equal(await repo.reindex(), 1);
      assert.deepEqual((await repo.search(query)).rows.map((r) => r.id), ['old-1']);
      assert.equal(await repo.reindex(), 1, 'reindexing again replaces the rows rather than adding to them');
      assert.equal(await repo.count(query), 1);
    } finally {
      await db.close();
    }
  });

  it('migration 21 deletes the rows of parameters that are unions of others (the registry\'s unions are its list); their searches still find what they found', async () => {
    const unions: Record<string, string[]> = {};
    for (const type of RESOURCE_TYPES) for (const d of searchRegistry().params(type)) if (d.indexedAs) (unions[type] ??= []).push(d.code);
    assert.deepEqual(unions, UNION_PARAMS_21);
    assert.deepEqual(searchRegistry().get('Observation', 'combo-code')?.indexedAs, ['code', 'component-code']);
    const db = await openDatabase({ dataDir: 'memory://' });
    try {
      await migrateBefore(db.pool, 21);
      const repo = new Repository(db.pool, 'http://fhir.test/fhir');
      const bp = await repo.create({
        resourceType: 'Observation',
        status: 'final',
        code: { coding: [{ system: 'http://loinc.org', code: '85354-9' }] },
        component: [
          { code: { coding: [{ system: 'http://loinc.org', code: '8480-6' }] }, valueQuantity: { value: 142, unit: 'mmHg', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' } },
          { code: { coding: [{ system: 'http://loinc.org', code: '8462-4' }] }, valueQuantity: { value: 91, unit: 'mmHg', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' } },
        ],
      });
      const id = bp.version.id;
      const count = async (param: string): Promise<number> => {
        const found = await db.pool.query<{ n: number }>(
          `SELECT (SELECT count(*) FROM sp_token WHERE id = $1 AND param = $2) + (SELECT count(*) FROM sp_quantity WHERE id = $1 AND param = $2) + (SELECT count(*) FROM sp_token_quantity WHERE id = $1 AND param = $2) AS n`,
          [id, param],
        );
        return Number(found.rows[0]?.n);
      };
      assert.equal(await count('combo-code'), 0, 'a union has no rows of its own');
      assert.equal(await count('component-code'), 2);
      const members = await count('component-code-value-quantity');
      assert.ok(members > 0);
      // Rows as a server before migration 21 wrote them.
      await db.pool.query(`INSERT INTO sp_token (resource_type, id, param, grp, system, code) VALUES ('Observation', $1, 'combo-code', 0, 'http://loinc.org', '85354-9'), ('Observation', $1, 'combo-code', 1, 'http://loinc.org', '8480-6')`, [id]);
      await db.pool.query(`INSERT INTO sp_quantity (resource_type, id, param, grp, system, code, lo, hi) VALUES ('Observation', $1, 'combo-value-quantity', 0, 'http://unitsofmeasure.org', 'mm[Hg]', 141.5, 142.5)`, [id]);
      await db.pool.query(`INSERT INTO sp_token_quantity (resource_type, id, param, grp, system, code, unit_system, unit_code, lo, hi) VALUES ('Observation', $1, 'combo-code-value-quantity', 0, 'http://loinc.org', '8480-6', 'http://unitsofmeasure.org', 'mm[Hg]', 141.5, 142.5)`, [id]);
      assert.deepEqual(await migrate(db.pool), [21]);
      for (const param of ['combo-code', 'combo-value-quantity', 'combo-code-value-quantity']) assert.equal(await count(param), 0, param);
      assert.equal(await count('component-code-value-quantity'), members, 'the members\' rows stay');
      const search = async (params: Record<string, string[]>): Promise<string[]> =>
        (await repo.search(parseSearch('Observation', params, { fhirBase: 'http://fhir.test/fhir', lenient: false }).query)).rows.map((r) => r.id);
      for (const params of [
        { 'combo-code': ['8480-6'] },
        { 'combo-code': ['http://loinc.org|85354-9'] },
        { 'combo-value-quantity': ['gt140'] },
        { 'combo-code-value-quantity': ['http://loinc.org|8462-4$lt100'] },
        { 'combo-code:missing': ['false'] },
        { 'combo-code:not': ['1234-5'] },
      ] as Record<string, string[]>[]) {
        assert.deepEqual(await search(params), [id], JSON.stringify(params));
      }
      for (const params of [{ 'combo-value-quantity': ['gt150'] }, { 'combo-code-value-quantity': ['http://loinc.org|8480-6$lt100'] }, { 'combo-code:missing': ['true'] }, { 'combo-code:not': ['8462-4'] }] as Record<string, string[]>[]) {
        assert.deepEqual(await search(params), [], JSON.stringify(params));
      }
    } finally {
      await db.close();
    }
  });

  it('migration 6 moves token-and-quantity composites to their own table; reindex() fills it', async () => {
    const db = await openDatabase({ dataDir: 'memory://' });
    try {
      await migrateBefore(db.pool, 6);
      const obs = {
        resourceType: 'Observation',
        id: 'old-obs',
        meta: { versionId: '1', lastUpdated: '2025-01-01T00:00:00.000Z' },
        status: 'final',
        code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
        valueQuantity: { value: 88, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
      };
      await db.pool.query(
        `INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content) VALUES ('Observation', 'old-obs', 1, '2025-01-01T00:00:00Z', false, $1::jsonb)`,
        [JSON.stringify(obs)],
      );
      const applied = await migrate(db.pool);
      assert.deepEqual(applied, MIGRATIONS.filter((m) => m.version >= 6).map((m) => m.version));
      assert.ok(applied.some((m) => REINDEX_MIGRATIONS.includes(m)), 'the server reindexes after it');
      const repo = new Repository(db.pool, 'http://fhir.test/fhir');
      assert.equal(await repo.reindex(), 1);
      for (const params of [{ 'code-value-quantity': ['http://loinc.org|8867-4$gt80'] }, { code: ['8867-4'], 'value-quantity': ['gt80'] }] as Record<string, string[]>[]) {
        const query = parseSearch('Observation', params, { fhirBase: 'http://fhir.test/fhir', lenient: false }).query;
        assert.deepEqual((await repo.search(query)).rows.map((r) => r.id), ['old-obs'], JSON.stringify(params));
      }
    } finally {
      await db.close();
    }
  });

  it('keeps planner statistics current on PGlite (no autovacuum there): ANALYZE after every N writes', async () => {
    const db = await openDatabase({ dataDir: 'memory://' });
    try {
      await migrate(db.pool);
      const tuples = async (): Promise<number> =>
        Number((await db.pool.query<{ n: number }>("SELECT reltuples AS n FROM pg_class WHERE relname = 'resource'")).rows[0]?.n);
      const repo = Repository.withStatsUpkeep(db.pool, 'http://fhir.test/fhir', 5);
      for (let i = 0; i < 4; i++) await repo.create({ resourceType: 'Basic', code: { text: String(i) } });
      assert.ok((await tuples()) < 4, 'not analysed before the 5th write');
      await repo.create({ resourceType: 'Basic', code: { text: '4' } });
      await repo.statisticsSettled();
      assert.equal(await tuples(), 5, 'analysed after the 5th');
      await repo.transaction((tx) => tx.createMany(Array.from({ length: 6 }, (_, i) => ({ resource: { resourceType: 'Basic', code: { text: `m${i}` } }, id: `m-${i}` }))));
      await repo.statisticsSettled();
      assert.equal(await tuples(), 11, 'writes inside a transaction count too');

      // Past 50 resources the next ANALYZE waits for a tenth of them (autovacuum's scale factor).
      await repo.transaction((tx) => tx.createMany(Array.from({ length: 89 }, (_, i) => ({ resource: { resourceType: 'Basic', code: { text: `n${i}` } }, id: `n-${i}` }))));
      await repo.statisticsSettled();
      assert.equal(await tuples(), 100);
      for (let i = 0; i < 9; i++) await repo.create({ resourceType: 'Basic', code: { text: `t${i}` } });
      await repo.statisticsSettled();
      assert.equal(await tuples(), 100, 'nine writes are under a tenth of 100');
      await repo.create({ resourceType: 'Basic', code: { text: 't9' } });
      await repo.statisticsSettled();
      assert.equal(await tuples(), 110, 'the tenth is not');

      // audit_event on its own count (ten times analyzeEvery), not with the record's tables; only
      // this schema's tables are analysed.
      const auditTuples = async (): Promise<number> =>
        Number((await db.pool.query<{ n: number }>("SELECT reltuples AS n FROM pg_class WHERE relname = 'audit_event' AND relnamespace = 'public'::regnamespace")).rows[0]?.n);
      await db.pool.query('CREATE SCHEMA elsewhere; CREATE TABLE elsewhere.t (n int); INSERT INTO elsewhere.t SELECT generate_series(1, 10)');
      const event = (n: number) => ({ kind: 'read' as const, recorded: new Date(), outcome: 'success' as const, requestId: `r${n}`, server: { name: 'test', version: '0', baseUrl: 'http://fhir.test' } });
      await repo.appendAuditEvents(Array.from({ length: 49 }, (_, n) => event(n)));
      for (let i = 0; i < 11; i++) await repo.create({ resourceType: 'Basic', code: { text: `u${i}` } });
      await repo.statisticsSettled();
      assert.equal(await tuples(), 121, 'the record\'s tables analysed');
      assert.ok((await auditTuples()) < 49, 'audit_event not, with 49 events written');
      const elsewhere = await db.pool.query<{ n: number }>("SELECT reltuples AS n FROM pg_class WHERE relname = 't' AND relnamespace = 'elsewhere'::regnamespace");
      assert.ok(Number(elsewhere.rows[0]?.n) < 10, 'another schema\'s table not');
      await repo.appendAuditEvents([event(49)]);
      await repo.statisticsSettled();
      assert.equal(await auditTuples(), 50, 'audit_event analysed at the 50th event');
    } finally {
      await db.close();
    }
  });

  it('migration 20 makes the audit keys\' GIN index merge its pending list at 64 kB, in the public schema and a tenant\'s own', async () => {
    const db = await openDatabase({ dataDir: 'memory://' });
    try {
      await migrate(db.pool);
      // The first tenant has the public schema, the next one a schema of its own.
      await createTenant(db, 'gin-a');
      const own = await createTenant(db, 'gin-b');
      const options = await db.pool.query<{ schema: string; options: string[] | null }>(
        `SELECT n.nspname AS schema, c.reloptions AS options FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'audit_event_keys' ORDER BY 1`,
      );
      assert.deepEqual(options.rows.map((r) => r.schema).sort(), [own, 'public'].sort());
      for (const row of options.rows) assert.deepEqual(row.options, ['gin_pending_list_limit=64'], row.schema);
    } finally {
      await db.close();
    }
  });

  it('migration 8 gives the tenant of a database from before tenants the public schema, where its data is; later tenants get schemas of their own', async () => {
    const db = await openDatabase({ dataDir: 'memory://' });
    try {
      await migrateBefore(db.pool, 8);
      await db.pool.query("INSERT INTO tenant (name) VALUES ('default')");
      const before = new Repository(db.pool, 'http://fhir.test/fhir');
      const { version } = await before.create({ resourceType: 'Basic', code: { text: 'before tenants' } });
      assert.deepEqual(await migrate(db.pool), MIGRATIONS.filter((m) => m.version >= 8).map((m) => m.version));
      const clients = new ClientStore(db.pool);
      assert.equal(await clients.tenantSchema('default'), 'public');
      const tenants = new Tenants(db, before, 0);
      const repo = await tenants.repository('default');
      assert.equal(repo, before, 'the first tenant is served from public');
      assert.equal((await repo.read('Basic', version.id)).versionId, '1');
      const schema = await createTenant(db, 'second');
      assert.match(schema, /^tenant_[0-9]+$/);
      const second = await tenants.repository('second');
      await assert.rejects(second!.read('Basic', version.id), (e: { status?: number }) => e.status === 404);
      assert.equal(await tenants.repository('nobody'), undefined);
    } finally {
      await db.close();
    }
  });
});
