/** Start, persistence on the embedded database, graceful shutdown, and configuration checks. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:http';
import { ConfigError, loadConfig } from '../src/config.js';
import { startServer } from '../src/server.js';
import { silentLogger } from './helpers.js';

function httpRequest(port: number, method: string, path: string, body?: object): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const data = body ? JSON.stringify(body) : undefined;
    const req = request(
      { host: '127.0.0.1', port, method, path, headers: data ? { 'content-type': 'application/fhir+json', 'content-length': Buffer.byteLength(data) } : {} },
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

describe('server lifecycle', function () {
  this.timeout(60_000);

  // Always on the embedded engine (the config below has no DATABASE_URL), in both CI passes.
  it('keeps data in DATA_DIR across a restart of the embedded database', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'met-fhir-'));
    try {
      const config = loadConfig({ PORT: '0', DATA_DIR: dataDir, LOG_LEVEL: 'silent' });
      const first = await startServer(config, silentLogger);
      const put = await httpRequest(first.port, 'PUT', '/fhir/Basic/persist-1', { resourceType: 'Basic', id: 'persist-1', code: { text: 'kept' } });
      assert.equal(put.status, 201);
      await first.stop();
      const second = await startServer(config, silentLogger);
      const read = await httpRequest(second.port, 'GET', '/fhir/Basic/persist-1');
      assert.equal(read.status, 200);
      assert.equal((JSON.parse(read.body) as { code: { text: string } }).code.text, 'kept');
      await second.stop();
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('on stop, finishes in-flight requests, refuses new connections, and closes the database', async () => {
    const env: Record<string, string> = { PORT: '0', LOG_LEVEL: 'silent', DATA_DIR: 'memory://' };
    if (process.env.DATABASE_URL) env.DATABASE_URL = process.env.DATABASE_URL;
    const running = await startServer(loadConfig(env), silentLogger);
    let received = 0;
    const allReceived = new Promise<void>((resolve) =>
      running.server.on('request', () => {
        if (++received === 10) resolve();
      }),
    );
    const inFlight = Array.from({ length: 10 }, (_, i) =>
      httpRequest(running.port, 'PUT', `/fhir/Basic/shutdown-${i}`, { resourceType: 'Basic', id: `shutdown-${i}`, code: { text: String(i) } }),
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
        logLevel: 'info',
        maxBodyBytes: 10 * 1024 * 1024,
        dbPoolSize: 20,
        shutdownTimeoutMs: 10_000,
      },
    );
    assert.ok(Object.isFrozen(config));
  });

  it('lists every problem at once, one line each', () => {
    let error: unknown;
    try {
      loadConfig({ PORT: 'eighty', DATABASE_URL: 'mysql://x', LOG_LEVEL: 'loud', MAX_BODY_BYTES: '12', BASE_URL: 'ftp://x', NODE_ENV: 'staging' });
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
      'MAX_BODY_BYTES=12 is invalid: expected a whole number from 1024 to 1073741824',
    ]);
  });
});
