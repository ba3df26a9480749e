/**
 * The test fixture: one real database per test run (embedded PGlite in memory by default, the
 * PostgreSQL server named by DATABASE_URL when set), migrated, behind the real Express app.
 * Tests never mock the database; they use their own ids so that they do not depend on each other.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import supertest from 'supertest';
import type { Express } from 'express';
import { createApp, type AppOptions } from '../src/http/app.js';
import { MetApi } from '../src/met/engine.js';
import { auditLogFor, fhirContext } from '../src/server.js';
import type { AuditLog } from '../src/audit/log.js';
import { openDatabase, type Database } from '../src/store/database.js';
import { migrate } from '../src/store/migrations.js';
import type { FhirContext } from '../src/interactions/index.js';
import { ProfileValidator } from '../src/validation/profiles.js';
import { ERROR_CODE_SYSTEM } from '../src/fhir/errors.js';
import type { JWK } from 'jose';
import { OutboundKeys } from '../src/ehr/outbound-keys.js';
import { generateSigningJwk, issueAccessToken, JwksFetcher, signingKeyFromJwk, type SigningKey } from '../src/auth/index.js';
import type { AuthOptions } from '../src/http/auth.js';
import { ClientStore } from '../src/store/clients.js';

export const BASE_URL = 'http://fhir.test';
/** The tenant of the test tokens (tokenFor) unless one is named. */
export const TEST_TENANT = 'test';
export const FHIR_JSON = 'application/fhir+json';
export const silentLogger = pino({ level: 'silent' });

interface TestContext {
  db: Database;
  ctx: FhirContext;
  app: Express;
  met: MetApi;
  auth: AuthOptions;
  /** An access token of this run's tenant with scope system/*.* (an hour long). */
  token: string;
  /** The audit log of the app: flush() it before looking for the events of a request. */
  audit: AuditLog;
}

let signingKey: Promise<SigningKey> | undefined;

/** The server's signing key for the whole run (in memory). */
export function testSigningKey(): Promise<SigningKey> {
  signingKey ??= generateSigningJwk('ES384').then((jwk) => signingKeyFromJwk(jwk));
  return signingKey;
}

/** An access token as /auth/token would issue it, for a client of `tenant` with `scope`. */
export async function tokenFor(scope: string, options: { tenant?: string; clientId?: string; lifetimeSeconds?: number } = {}): Promise<string> {
  const issued = await issueAccessToken(
    await testSigningKey(),
    { clientId: options.clientId ?? 'test-client', tenant: options.tenant ?? TEST_TENANT, scope },
    { issuer: BASE_URL, audience: `${BASE_URL}/fhir`, lifetimeSeconds: options.lifetimeSeconds ?? 3600 },
  );
  return issued.accessToken;
}

/** The auth options of an app over `db` (its client registry) with the run's signing key. */
export async function testAuth(db: Database): Promise<AuthOptions & { outboundKeys: OutboundKeys }> {
  return { signingKey: await testSigningKey(), outboundKeys: new OutboundKeys(db.pool, BASE_URL), clients: new ClientStore(db.pool), baseUrl: BASE_URL, jwksFetcher: new JwksFetcher({ requireHttps: false }) };
}

let shared: Promise<TestContext> | undefined;
let profiles: Promise<ProfileValidator> | undefined;

/** The profile validator, loaded once for the whole run (~2 s). */
export function profileValidator(): Promise<ProfileValidator> {
  profiles ??= ProfileValidator.load();
  return profiles;
}

export function engineName(): string {
  return process.env.DATABASE_URL ? 'postgresql' : 'pglite';
}

export async function openTestDatabase(): Promise<Database> {
  const url = process.env.DATABASE_URL;
  const db = await openDatabase(url ? { databaseUrl: url, dataDir: 'unused', poolSize: 30 } : { dataDir: 'memory://' });
  await migrate(db.pool);
  // The tenant of tokenFor()'s tokens: the first one registered, whose data is in `public`.
  const clients = new ClientStore(db.pool);
  if (!(await clients.tenantExists(TEST_TENANT))) {
    try {
      await clients.createTenant(TEST_TENANT);
    } catch (error) {
      // Another pool on the same database (PostgreSQL runs) registered it at the same moment.
      if (!(await clients.tenantExists(TEST_TENANT))) throw error;
    }
  }
  return db;
}

export function testContext(): Promise<TestContext> {
  shared ??= (async () => {
    const db = await openTestDatabase();
    const ctx = fhirContext(db, BASE_URL);
    // The MET API as the server runs it: every mapped resource checked against its profiles too.
    const met = new MetApi(ctx.validator, await profileValidator());
    const auth = await testAuth(db);
    ctx.outboundKeys = auth.outboundKeys;
    ctx.allowHttpEhr = true;
    // Every request of the suite is audited, as in the server.
    const audit = auditLogFor(db, ctx, silentLogger);
    const app = createApp({ ctx, logger: silentLogger, maxBodyBytes: 10 * 1024 * 1024, met, auth, audit });
    return { db, ctx, app, met, auth, audit, token: await tokenFor('system/*.*') };
  })();
  return shared;
}

/**
 * The public key the test tenant signs its client assertions to EHRs with (what an EHR registers
 * for it at /auth/jwks/<id>).
 */
export async function testOutboundJwk(tenant: string = TEST_TENANT): Promise<JWK> {
  const { ctx } = await testContext();
  if (!ctx.outboundKeys) throw new Error('the test context has no outbound keys');
  const key = await (ctx.outboundKeys as OutboundKeys).forTenant(tenant);
  return key.jwks.keys[0] as JWK;
}

export async function closeTestContext(): Promise<void> {
  if (!shared) return;
  const { db, audit } = await shared;
  shared = undefined;
  await audit.close();
  await db.close();
}

/** A supertest agent on the shared app, sending an access token with scope system/*.*. */
export async function api(): Promise<supertest.Agent> {
  const { app, token } = await testContext();
  return supertest.agent(app).auth(token, { type: 'bearer' });
}

/** An app over the shared database with other options (limits). */
export async function appWith(options: Partial<AppOptions>): Promise<Express> {
  const { ctx, met, auth } = await testContext();
  return createApp({ ctx, logger: silentLogger, maxBodyBytes: 10 * 1024 * 1024, met, auth, ...options });
}

export function uniqueId(prefix = 't'): string {
  return `${prefix}-${randomUUID().slice(0, 18)}`;
}

interface ExpectedIssue {
  severity?: string;
  code: string;
  detail: string;
  expression?: string;
  diagnostics?: string | RegExp;
}

/** Asserts the exact OperationOutcome: one issue per expected problem, in order. */
export function assertOutcome(body: unknown, expected: ExpectedIssue[]): void {
  const outcome = body as { resourceType: string; id?: string; issue: Record<string, unknown>[] };
  assert.equal(outcome.resourceType, 'OperationOutcome');
  assert.match(outcome.id ?? '', /^[A-Za-z0-9\-.]{1,64}$/, 'the outcome carries the request id');
  assert.equal(outcome.issue.length, expected.length, `issues: ${JSON.stringify(outcome.issue)}`);
  expected.forEach((e, i) => {
    const issue = outcome.issue[i] as {
      severity: string;
      code: string;
      details: { coding: { system: string; code: string }[]; text: string };
      diagnostics: string;
      expression?: string[];
    };
    assert.equal(issue.severity, e.severity ?? 'error');
    assert.equal(issue.code, e.code);
    assert.deepEqual(issue.details.coding, [{ system: ERROR_CODE_SYSTEM, code: e.detail }]);
    assert.equal(issue.details.text, issue.diagnostics);
    if (e.expression === undefined) assert.equal(issue.expression, undefined);
    else assert.deepEqual(issue.expression, [e.expression]);
    if (typeof e.diagnostics === 'string') assert.equal(issue.diagnostics, e.diagnostics);
    else if (e.diagnostics) assert.match(issue.diagnostics, e.diagnostics);
  });
}

/**
 * The resource without the server-set `meta.versionId` and `meta.lastUpdated`, for "unchanged
 * except meta" comparisons; the rest of meta (profile, tag, security, source) must survive.
 */
export function withoutServerMeta(resource: Record<string, unknown>): Record<string, unknown> {
  const { meta, ...rest } = resource;
  const { versionId: _v, lastUpdated: _l, ...kept } = (meta ?? {}) as Record<string, unknown>;
  return Object.keys(kept).length > 0 ? { ...rest, meta: kept } : rest;
}
