/** Start, persistence on the embedded database, graceful shutdown, and configuration checks. */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:http';
import { ConfigError, loadConfig } from '../src/config.js';
import { startServer } from '../src/server.js';
import { hashSecret, newClientId, newClientSecret } from '../src/auth/index.js';
import { ClientStore } from '../src/store/clients.js';
import { silentLogger } from './helpers.js';

function httpRequest(port: number, method: string, path: string, body?: object | string, token?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const data = typeof body === 'string' ? body : body ? JSON.stringify(body) : undefined;
    const headers: Record<string, string | number> = {};
    if (data) {
      headers['content-type'] = typeof body === 'string' ? 'application/x-www-form-urlencoded' : 'application/fhir+json';
      headers['content-length'] = Buffer.byteLength(data);
    }
    if (token) headers.authorization = `Bearer ${token}`;
    const req = request(
      { host: '127.0.0.1', port, method, path, headers },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

/** An access token from the server's own /auth/token, with client_secret_post. */
async function tokenFrom(port: number, clientId: string, secret: string): Promise<string> {
  const form = new URLSearchParams({ grant_type: 'client_credentials', scope: 'system/*.*', client_id: clientId, client_secret: secret }).toString();
  const res = await httpRequest(port, 'POST', '/auth/token', form);
  assert.equal(res.status, 200, res.body);
  return (JSON.parse(res.body) as { access_token: string }).access_token;
}

describe('server lifecycle', function () {
  this.timeout(60_000);

  // Always on the embedded engine (the config below has no DATABASE_URL), in both CI passes.
  it('keeps data in DATA_DIR across a restart of the embedded database', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'met-fhir-'));
    try {
      // One public base for both starts (a token names it as its audience); the ports themselves are free ones.
      const config = loadConfig({ PORT: '0', HL7_PORT: '0', DELIVERY: 'off', BASE_URL: 'http://fhir.restart.test', DATA_DIR: dataDir, LOG_LEVEL: 'silent' });
      const first = await startServer(config, silentLogger);
      // Development convenience: a first start creates a client and writes its credentials (0600).
      const file = join(dataDir, 'dev-credentials.json');
      assert.equal(statSync(file).mode & 0o777, 0o600);
      const credentials = JSON.parse(readFileSync(file, 'utf8')) as { client_id: string; client_secret: string; scope: string };
      assert.equal(credentials.scope, 'system/*.*');
      const token = await tokenFrom(first.port, credentials.client_id, credentials.client_secret);
      assert.equal((await httpRequest(first.port, 'GET', '/fhir/Basic/persist-1')).status, 401, 'no token, no access');
      const put = await httpRequest(first.port, 'PUT', '/fhir/Basic/persist-1', { resourceType: 'Basic', id: 'persist-1', code: { text: 'kept' } }, token);
      assert.equal(put.status, 201);
      await first.stop();
      const second = await startServer(config, silentLogger);
      // The signing key is kept in DATA_DIR/keys: a token from before the restart still works.
      const read = await httpRequest(second.port, 'GET', '/fhir/Basic/persist-1', undefined, token);
      assert.equal(read.status, 200);
      assert.equal((JSON.parse(read.body) as { code: { text: string } }).code.text, 'kept');
      await second.stop();
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('on stop, finishes in-flight requests, refuses new connections, and closes the database', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'met-fhir-'));
    after(() => rmSync(dataDir, { recursive: true, force: true }));
    const env: Record<string, string> = { PORT: '0', HL7_PORT: '0', DELIVERY: 'off', LOG_LEVEL: 'silent', DATA_DIR: dataDir };
    if (process.env.DATABASE_URL) env.DATABASE_URL = process.env.DATABASE_URL;
    const running = await startServer(loadConfig(env), silentLogger);
    // A client registered as `npm run admin -- client create` does it.
    const clients = new ClientStore(running.db.pool);
    const tenant = `lifecycle-${randomUUID()}`;
    const secret = newClientSecret();
    const clientId = newClientId();
    await clients.createTenant(tenant);
    await clients.createClient({ clientId, tenant, name: 'lifecycle', secretHash: await hashSecret(secret), scopes: 'system/Basic.cu' });
    const token = await tokenFrom(running.port, clientId, secret);
    let received = 0;
    const allReceived = new Promise<void>((resolve) =>
      running.server.on('request', () => {
        if (++received === 10) resolve();
      }),
    );
    const inFlight = Array.from({ length: 10 }, (_, i) =>
      httpRequest(running.port, 'PUT', `/fhir/Basic/shutdown-${i}`, { resourceType: 'Basic', id: `shutdown-${i}`, code: { text: String(i) } }, token),
    );
    await allReceived; // all ten are in flight: received, not yet answered
    const stopped = running.stop();
    const results = await Promise.all(inFlight);
    await stopped;
    assert.ok(results.every((r) => r.status === 201 || r.status === 200), JSON.stringify(results.map((r) => r.status)));
    await assert.rejects(httpRequest(running.port, 'GET', '/healthz'), /ECONNREFUSED/);
    await assert.rejects(running.db.pool.query('SELECT 1'));
  });
});

describe('configuration', () => {
  it('has the documented defaults', () => {
    const config = loadConfig({});
    assert.deepEqual(
      { ...config },
      {
        port: 8080,
        host: '127.0.0.1',
        baseUrl: 'http://localhost:8080',
        dataDir: './data',
        hl7Port: 2575,
        production: false,
        audit: true,
        delivery: true,
        logLevel: 'info',
        maxBodyBytes: 10 * 1024 * 1024,
        maxQueryBytes: 8192,
        rateLimitPerMinute: 6000,
        rateLimitBurst: 1000,
        tokenRateLimitPerMinute: 120,
        dbPoolSize: 20,
        shutdownTimeoutMs: 10_000,
        deliveryLeaseSeconds: 300,
        ehrAllowedHosts: [],
      },
    );
    assert.ok(Object.isFrozen(config));
  });

  it('lists every problem at once, one line each', () => {
    let error: unknown;
    try {
      loadConfig({ PORT: 'eighty', DATABASE_URL: 'mysql://x', LOG_LEVEL: 'loud', MAX_BODY_BYTES: '12', BASE_URL: 'ftp://x', NODE_ENV: 'staging', AUDIT: 'maybe' });
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof ConfigError);
    assert.deepEqual(error.problems, [
      'PORT=eighty is invalid: expected a whole number from 0 to 65535',
      'BASE_URL=ftp://x is invalid: expected an http(s) URL such as https://fhir.example.org',
      'DATABASE_URL is invalid: expected postgres://user@host:port/database',
      'LOG_LEVEL=loud is invalid: expected one of fatal, error, warn, info, debug, trace, silent',
      'NODE_ENV=staging is invalid: expected production, development or test',
      'AUDIT=maybe is invalid: expected on or off',
      'MAX_BODY_BYTES=12 is invalid: expected a whole number from 1024 to 1073741824',
    ]);
  });
});
