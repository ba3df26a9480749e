/**
 * Builds the running server from a configuration: database (with migrations), repository,
 * validator, HTTP. start() and stop() are each other's inverse, in a defined order.
 */
import { createServer, type Server } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Config } from './config.js';
import { createApp, type AppOptions } from './http/app.js';
import { MetApi } from './met/engine.js';
import { openDatabase, type Database } from './store/database.js';
import { migrate } from './store/migrations.js';
import { loadAuth } from './security.js';
import { Repository } from './store/repository.js';
import { afterMigrations, Tenants } from './store/tenants.js';
import { AuditStore } from './store/audit-store.js';
import { AuditLog } from './audit/log.js';
import { startMllpServer, type MllpServer } from './hl7/mllp.js';
import { Hl7Inbound } from './inbound/hl7-inbound.js';
import { DeliveryWorker } from './delivery/worker.js';
import { FhirDocumentTransport, MllpDocumentTransport } from './delivery/transports.js';
import { EhrSecrets } from './ehr/secrets.js';
import { EgressGuard } from './ehr/egress.js';
import { Hl7Routes } from './store/hl7-store.js';
import { ProfileValidator } from './validation/profiles.js';
import { ResourceValidator } from './validation/validator.js';
import type { FhirContext } from './interactions/index.js';

export interface RunningServer {
  server: Server;
  db: Database;
  port: number;
  /** The MLLP listener's port, when it runs. */
  hl7Port?: number;
  stop(): Promise<void>;
}

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { name: string; version: string };

/**
 * Batches of inbound HL7 messages in the handlers' hands at once per MLLP connection (a sender
 * with several messages in flight): the server's work on one overlaps PostgreSQL's on another.
 * Bench harness, 32 messages in flight, 4,000 ADT^A04 (alternated): 1.24-1.38 times the
 * messages/s of one at a time (2 and 3 in between, 8 no better than 4).
 */
const MLLP_CONCURRENCY = 4;

/**
 * Inbound HL7 batches running at once over all MLLP connections, each in a transaction of its own:
 * half the database pool (at least one), so that HL7 senders, however many and however pipelined,
 * never hold the connections the FHIR API needs.
 */
export function hl7Handlers(poolSize: number): number {
  return Math.max(1, Math.floor(poolSize / 2));
}

/** Versions written between two ANALYZE runs. */
const ANALYZE_EVERY = 5_000;

export function fhirContext(db: Database, baseUrl: string, validator = new ResourceValidator()): FhirContext {
  const fhirBase = `${baseUrl}/fhir`;
  // PGlite runs no autovacuum, and PostgreSQL's autovacuum may be a minute late after a bulk
  // load: the repository keeps the planner's statistics current itself.
  const repo = Repository.withStatsUpkeep(db.pool, fhirBase, ANALYZE_EVERY);
  return {
    repo,
    tenants: new Tenants(db, repo, ANALYZE_EVERY),
    validator,
    fhirBase,
    software: { name: pkg.name, version: pkg.version },
    startedAt: new Date().toISOString(),
  };
}

/**
 * Applies the migrations due, in \`public\` and in every tenant's schema, and does what they leave
 * to do with the data (store/tenants.ts afterMigrations: indexing again what a migration changed
 * the index of, moving AuditEvents into their store). The server and the admin commands both run
 * it before anything else, so that neither leaves a migration applied and its data work undone.
 */
export async function prepareDatabase(db: Database, ctx: FhirContext, logger: Logger): Promise<number[]> {
  const applied = await migrate(db.pool);
  await afterMigrations(ctx.repo, applied, logger);
  await ctx.tenants?.openAll(logger);
  return applied;
}

function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createNetServer();
    probe.once('error', reject);
    probe.listen(0, host, () => {
      const address = probe.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}

/** The audit log over the database: each tenant's events in its own data (src/audit/log.ts). */
export function auditLogFor(db: Database, ctx: FhirContext, logger: Logger): AuditLog {
  const tenants = ctx.tenants;
  if (!tenants) throw new Error('the audit log needs the tenants of the context');
  // Small writes while traffic is light, bigger ones as it grows (src/audit/log.ts): a write
  // starts at 5 events or 20 ms, and takes what is queued, up to 100.
  return new AuditLog(new AuditStore((t) => tenants.repository(t), db.pool), logger, { flushAt: 5, flushMs: 20, maxBatch: 100 });
}

export async function startServer(given: Readonly<Config>, logger: Logger, extra: Partial<AppOptions> = {}): Promise<RunningServer> {
  // PORT=0 without BASE_URL: the port is chosen now, so that the base URL (token audience, links) names it.
  let config = given;
  if (given.port === 0 && given.baseUrl.endsWith(':0')) {
    const port = await freePort(given.host);
    config = Object.freeze({ ...given, port, baseUrl: `${given.baseUrl.slice(0, -2)}:${port}` });
  }
  // Our profiles (and the R4 and US Core ones) for the MET API's resources: loaded once (~2 s).
  const profiles = await ProfileValidator.load();
  const db = await openDatabase({ ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}), dataDir: config.dataDir, poolSize: config.dbPoolSize });
  const ctx = fhirContext(db, config.baseUrl);
  try {
    const applied = await prepareDatabase(db, ctx, logger);
    logger.info({ engine: db.engine, applied }, 'database ready');
  } catch (error) {
    await db.close();
    throw error;
  }
  let auth;
  try {
    auth = await loadAuth(config, db, logger);
  } catch (error) {
    await db.close();
    throw error;
  }
  // Each tenant signs its client assertions to EHRs with a key of its own (published at /auth/jwks/<id>).
  ctx.outboundKeys = auth.outboundKeys;
  ctx.allowHttpEhr = !config.production;
  // In production, EHR connections reach public addresses only, and the hosts the operator lists.
  const egress = new EgressGuard(config.production, config.ehrAllowedHosts);
  ctx.ehrEgress = egress;
  // Static bearer tokens for EHRs, named by Endpoints (tokenRef), never stored in one.
  // Each is bound to one tenant (EHR_TOKEN_<NAME>=<tenant>:<token>), usable by its Endpoints only.
  ctx.ehrSecrets = new EhrSecrets(config.ehrTokens ?? {});
  if (config.ehrTokens) {
    const bound = ctx.ehrSecrets.tenants();
    logger.info({ names: ctx.ehrSecrets.names(), tenants: bound }, 'EHR tokens configured');
    // A warning, not an error: the tenant may be created later (npm run admin -- tenant create);
    // until then no Endpoint can use the token. Should the tenants not be listed, no warning.
    const registered = await ctx.tenants?.names().catch(() => undefined);
    for (const [name, tenant] of Object.entries(bound)) {
      if (registered && !registered.includes(tenant)) logger.warn({ name, tenant }, `${name} is bound to tenant ${tenant}, which is not registered: no Endpoint can use it until that tenant is created`);
    }
  }
  const met = new MetApi(ctx.validator, profiles);
  const audit = config.audit ? auditLogFor(db, ctx, logger) : undefined;
  if (!audit) logger.warn('AUDIT=off: requests are not audited (for measurement only)');
  let accepting = true;
  const limits = { maxQueryBytes: config.maxQueryBytes, perMinute: config.rateLimitPerMinute, burst: config.rateLimitBurst, tokenPerMinute: config.tokenRateLimitPerMinute };
  const app = createApp({ ctx, logger, maxBodyBytes: config.maxBodyBytes, isAccepting: () => accepting, met, auth, ...(audit ? { audit } : {}), limits, ...extra });
  // Inbound HL7 v2 over MLLP (HL7_PORT; 0 turns it off).
  let mllp: MllpServer | undefined;
  if (config.hl7Port !== 0) {
    const tenants = ctx.tenants;
    if (!tenants) throw new Error('the HL7 listener needs the tenants of the context');
    const inbound = new Hl7Inbound(ctx, tenants, new Hl7Routes(db.pool), logger);
    mllp = await startMllpServer(inbound.handle, { batchHandler: inbound.handleBatch, concurrency: MLLP_CONCURRENCY, maxHandlers: hl7Handlers(config.dbPoolSize), port: config.hl7Port, host: config.host, onError: (err) => logger.warn({ err }, 'MLLP connection error') });
    logger.info({ port: mllp.port }, 'HL7 v2 MLLP listener ready');
  }
  // Documents queued by $send-summary go out from here (DELIVERY=off leaves them to another process).
  let worker: DeliveryWorker | undefined;
  if (config.delivery && ctx.tenants) {
    const tenants = ctx.tenants;
    worker = new DeliveryWorker({
      tenants: () => tenants.stores(),
      transports: { fhir: new FhirDocumentTransport(), mllp: new MllpDocumentTransport({ egress }) },
      validator: ctx.validator,
      ...(ctx.outboundKeys ? { outboundKeys: ctx.outboundKeys } : {}),
      ehrSecrets: ctx.ehrSecrets,
      allowHttp: ctx.allowHttpEhr ?? false,
      egress,
      leaseMs: config.deliveryLeaseSeconds * 1000,
      logger,
    });
    worker.start();
    const started = worker;
    ctx.deliveryQueued = () => started.notify();
  }
  const server = createServer(app);
  server.keepAliveTimeout = 65_000;
  // A client that announces a body and never sends it is cut off (408) rather than held for Node's 5 minutes.
  server.requestTimeout = 60_000;
  server.headersTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  logger.info({ host: config.host, port, baseUrl: config.baseUrl, engine: db.engine }, 'listening');

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      accepting = false;
      // Stop accepting, let in-flight requests finish, then close idle keep-alive sockets.
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const timer = setTimeout(() => server.closeAllConnections(), config.shutdownTimeoutMs);
      await closed;
      clearTimeout(timer);
      await mllp?.close();
      await worker?.stop();
      // The audit events of the last requests are written before the database closes.
      await audit?.close();
      await db.close();
      logger.info('stopped');
    })();
    return stopping;
  };
  return { server, db, port, ...(mllp ? { hl7Port: mllp.port } : {}), stop };
}
