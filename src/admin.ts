/**
 * `npm run admin -- <command>`: operator commands against the configured database (DATABASE_URL,
 * or the embedded one in DATA_DIR). INTERFACE.md:
 *   tenant create <name>
 *   tenant ehr-jwks <name> [--rotate [--now]]   (the JWKS URL an EHR registers for the tenant's
 *                             SMART Backend Services client: the tenant's own key for client
 *                             assertions, ehr/outbound-keys.ts; --rotate publishes a new key, which
 *                             signs ten minutes later; --now replaces it at once, for a leaked key)
 *   client create --tenant <name> --name <name> --scopes "<scopes>" [--jwks-url <url>]
 *   audit unattributed [--since <instant>]   (AuditEvents of callers no tenant could be named for)
 *   hl7 route --facility <MSH-4> --tenant <name>   (inbound HL7 v2 from that facility goes to the tenant)
 * Each prints JSON on stdout and exits 0, or prints one line on stderr and exits non-zero.
 * A client gets a secret (printed once, stored only as a scrypt hash) unless it registers a JWKS
 * URL, in which case it authenticates with private_key_jwt.
 */
import { ConfigError, loadConfig } from './config.js';
import { hashSecret, newClientId, newClientSecret, parseScopes } from './auth/index.js';
import { ClientStore, TENANT_NAME } from './store/clients.js';
import { destination, pino } from 'pino';
import { openDatabase } from './store/database.js';
import { createTenant } from './store/tenants.js';
import { AuditStore } from './store/audit-store.js';
import { Hl7Routes } from './store/hl7-store.js';
import { OutboundKeys, ROTATION_DELAY_MS } from './ehr/outbound-keys.js';
import { fhirContext, prepareDatabase } from './server.js';

/** Logs (a reindex after an upgrade, say) go to stderr: stdout carries the command's JSON. */
const logger = pino({ level: 'info' }, destination(2));

class UsageError extends Error {}

const USAGE =
  'usage: npm run admin -- tenant create <name> | tenant ehr-jwks <name> [--rotate [--now]] | client create --tenant <name> --name <name> --scopes "<scopes>" [--jwks-url <url>] | audit unattributed [--since <instant>] | hl7 route --facility <MSH-4> --tenant <name>';

function options(args: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < args.length; i += 2) {
    const key = args[i] as string;
    const value = args[i + 1];
    if (!key.startsWith('--') || value === undefined) throw new UsageError(`expected --option value pairs, got '${args.slice(i).join(' ')}'`);
    out.set(key.slice(2), value);
  }
  return out;
}

function checkJwksUrl(url: string, production: boolean): void {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError(`--jwks-url is not a URL: ${url}`);
  }
  const loopback = ['127.0.0.1', 'localhost', '[::1]'].includes(parsed.hostname);
  if (parsed.protocol !== 'https:' && !(parsed.protocol === 'http:' && loopback && !production)) {
    throw new UsageError('--jwks-url must be https (http only on loopback, outside production)');
  }
}

async function run(args: string[]): Promise<unknown> {
  const config = loadConfig(process.env);
  const [noun, verb, ...rest] = args;
  const db = await openDatabase({ ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}), dataDir: config.dataDir, poolSize: 2 });
  try {
    const ctx = fhirContext(db, config.baseUrl);
    await prepareDatabase(db, ctx, logger);
    const clients = new ClientStore(db.pool);
    if (noun === 'tenant' && verb === 'create' && rest.length === 1) {
      const name = rest[0] as string;
      if (!TENANT_NAME.test(name)) throw new UsageError(`tenant name must be 1-64 letters, digits, '.', '_' or '-': ${name}`);
      if (await clients.tenantExists(name)) throw new UsageError(`tenant ${name} exists already`);
      await createTenant(db, name);
      const key = await new OutboundKeys(db.pool, config.baseUrl).forTenant(name);
      return { tenant: name, ehr_jwks_url: key.jwksUrl };
    }
    if (noun === 'tenant' && verb === 'ehr-jwks' && rest.length >= 1) {
      const [name, ...flags] = rest as [string, ...string[]];
      const rotate = flags[0] === '--rotate';
      const now = rotate && flags[1] === '--now';
      if (flags.length > (now ? 2 : rotate ? 1 : 0)) throw new UsageError(`tenant ehr-jwks takes a name, then --rotate [--now]; got ${flags.join(' ')}`);
      if (!(await clients.tenantExists(name))) throw new UsageError(`no tenant ${name}; create it first with: npm run admin -- tenant create ${name}`);
      const keys = new OutboundKeys(db.pool, config.baseUrl);
      const key = rotate ? await keys.rotate(name, { now }) : await keys.forTenant(name);
      const note = !rotate
        ? {}
        : now
          ? { rotated: 'the new key replaced every other at once: EHRs that cache the old JWK Set refuse assertions until they read it again' }
          : { rotated: `the new key is published now and signs from ${new Date(Date.now() + ROTATION_DELAY_MS).toISOString()}` };
      return { tenant: name, ehr_jwks_url: key.jwksUrl, signing_kid: key.kid, jwks: key.jwks, ...note };
    }
    if (noun === 'client' && verb === 'create') {
      const opts = options(rest);
      for (const key of opts.keys()) if (!['tenant', 'name', 'scopes', 'jwks-url'].includes(key)) throw new UsageError(`unknown option --${key}`);
      const tenant = opts.get('tenant');
      const name = opts.get('name');
      const scopes = opts.get('scopes');
      if (!tenant || !name || !scopes) throw new UsageError('client create needs --tenant, --name and --scopes');
      if (!(await clients.tenantExists(tenant))) throw new UsageError(`no tenant ${tenant}; create it first with: npm run admin -- tenant create ${tenant}`);
      const parsed = parseScopes(scopes);
      if (parsed.invalid.length > 0) throw new UsageError(`not SMART scopes: ${parsed.invalid.join(' ')}`);
      const nonSystem = parsed.scopes.filter((s) => s.context !== 'system');
      if (nonSystem.length > 0 || parsed.scopes.length === 0) throw new UsageError('backend clients get system/ scopes only (for example system/*.rs or system/Observation.cruds)');
      const jwksUrl = opts.get('jwks-url');
      const clientId = newClientId();
      if (jwksUrl) {
        checkJwksUrl(jwksUrl, config.production);
        await clients.createClient({ clientId, tenant, name, jwksUrl, scopes });
        return { client_id: clientId, tenant, name, scopes, jwks_url: jwksUrl, token_endpoint_auth_method: 'private_key_jwt' };
      }
      const secret = newClientSecret();
      await clients.createClient({ clientId, tenant, name, secretHash: await hashSecret(secret), scopes });
      return { client_id: clientId, client_secret: secret, tenant, name, scopes, token_endpoint_auth_method: 'client_secret_basic' };
    }
    if (noun === 'audit' && verb === 'unattributed') {
      const opts = options(rest);
      for (const key of opts.keys()) if (key !== 'since') throw new UsageError(`unknown option --${key}`);
      const since = opts.get('since');
      if (since !== undefined && Number.isNaN(Date.parse(since))) throw new UsageError(`--since is not an instant: ${since}`);
      return new AuditStore((t) => ctx.tenants!.repository(t), db.pool).listUnattributed(since, 10_000);
    }
    if (noun === 'hl7' && verb === 'route') {
      const opts = options(rest);
      for (const key of opts.keys()) if (!['facility', 'tenant'].includes(key)) throw new UsageError(`unknown option --${key}`);
      const facility = opts.get('facility');
      const tenant = opts.get('tenant');
      if (!facility || !tenant) throw new UsageError('hl7 route needs --facility and --tenant');
      if (!(await clients.tenantExists(tenant))) throw new UsageError(`no tenant ${tenant}; create it first with: npm run admin -- tenant create ${tenant}`);
      await new Hl7Routes(db.pool).setRoute(facility, tenant);
      return { sending_facility: facility, tenant };
    }
    throw new UsageError(USAGE);
  } finally {
    await db.close();
  }
}

run(process.argv.slice(2)).then(
  (result) => {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  },
  (error: unknown) => {
    if (error instanceof ConfigError) process.stderr.write(`admin: ${error.problems.join('; ')}\n`);
    else if (error instanceof UsageError) process.stderr.write(`admin: ${error.message}\n`);
    else if ((error as { code?: string }).code === '23505') process.stderr.write('admin: a client of that name exists already in the tenant\n');
    else process.stderr.write(`admin: ${(error as Error).message}\n`);
    process.exitCode = 1;
  },
);
