/**
 * The server's side of SMART Backend Services at start: its signing key (kept in
 * `$DATA_DIR/keys`), the client registry in the database, and the development convenience of
 * INTERFACE.md: on a first start outside production with no client registered, a default tenant
 * and a client with `system/*.*`, whose credentials go to `$DATA_DIR/dev-credentials.json` (0600).
 */
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { generateSigningJwk, hashSecret, JwksFetcher, loadOrCreateSigningKey, newClientId, newClientSecret, signingKeyFromJwk } from './auth/index.js';
import type { Config } from './config.js';
import type { AuthOptions } from './http/auth.js';
import { OutboundKeys } from './ehr/outbound-keys.js';
import { ClientStore } from './store/clients.js';
import type { Database } from './store/database.js';

export const DEV_CREDENTIALS_FILE = 'dev-credentials.json';
export const DEFAULT_TENANT = 'default';

export async function loadAuth(config: Readonly<Config>, db: Database, logger: Logger): Promise<AuthOptions & { outboundKeys: OutboundKeys }> {
  const clients = new ClientStore(db.pool);
  if (config.dataDir.startsWith('memory://')) {
    // A database in memory (tests): a key in memory too, and no credentials file.
    return {
      signingKey: await signingKeyFromJwk(await generateSigningJwk('ES384')),
      outboundKeys: new OutboundKeys(db.pool, config.baseUrl),
      clients,
      baseUrl: config.baseUrl,
      jwksFetcher: new JwksFetcher({ requireHttps: config.production }),
    };
  }
  const { key, created } = await loadOrCreateSigningKey(join(config.dataDir, 'keys'));
  if (created) logger.info({ kid: key.kid, dir: join(config.dataDir, 'keys') }, 'created the server signing key');
  if (!config.production && (await clients.countClients()) === 0) {
    const file = await createDevClient(clients, config);
    logger.warn({ file }, 'development: created a client with scope system/*.* and wrote its credentials (never in production)');
  }
  // Clients' JWKS URLs must be https in production; outside it, http (a local test IdP) is accepted.
  return { signingKey: key, outboundKeys: new OutboundKeys(db.pool, config.baseUrl), clients, baseUrl: config.baseUrl, jwksFetcher: new JwksFetcher({ requireHttps: config.production }) };
}

async function createDevClient(clients: ClientStore, config: Readonly<Config>): Promise<string> {
  if (!(await clients.tenantExists(DEFAULT_TENANT))) await clients.createTenant(DEFAULT_TENANT);
  const clientId = newClientId();
  const secret = newClientSecret();
  await clients.createClient({ clientId, tenant: DEFAULT_TENANT, name: 'development', secretHash: await hashSecret(secret), scopes: 'system/*.*' });
  await mkdir(config.dataDir, { recursive: true });
  const file = join(config.dataDir, DEV_CREDENTIALS_FILE);
  const credentials = { client_id: clientId, client_secret: secret, token_url: `${config.baseUrl}/auth/token`, scope: 'system/*.*', tenant: DEFAULT_TENANT };
  await writeFile(file, `${JSON.stringify(credentials, null, 2)}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  return file;
}
