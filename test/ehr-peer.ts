/**
 * A real peer for the EHR tests: a second instance of this server, started in-process on its own
 * loopback port with its own data directory (and, on PostgreSQL runs, the same database as ours
 * but a tenant of its own), playing the physician's EHR with token auth on. We register there as
 * a SMART Backend Services client (private_key_jwt, our public key at a loopback JWKS URL) and
 * seed its data through its own FHIR API with a staff client (client_secret).
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Endpoint, Extension } from 'fhir/r4.js';
import type { JWK } from 'jose';
import { EHR_ENDPOINT_EXTENSION } from '../src/ehr/endpoint.js';
import { hashSecret, newClientId, newClientSecret } from '../src/auth/index.js';
import { loadConfig } from '../src/config.js';
import { startServer, type RunningServer } from '../src/server.js';
import { ClientStore } from '../src/store/clients.js';
import { createTenant } from '../src/store/tenants.js';
import { FHIR_JSON, silentLogger, testOutboundJwk } from './helpers.js';

/**
 * An active hl7-fhir-rest Endpoint at `address` whose ehr-connection extension holds `settings`
 * (auth and the rest: src/ehr/endpoint.ts); `more` adds to or replaces top-level elements.
 */
export function fhirEndpoint(address: string, settings: Extension[], more: Partial<Endpoint> = {}): Endpoint {
  return {
    resourceType: 'Endpoint',
    status: 'active',
    connectionType: { system: 'http://terminology.hl7.org/CodeSystem/endpoint-connection-type', code: 'hl7-fhir-rest' },
    payloadType: [{ text: 'FHIR R4' }],
    address,
    extension: [{ url: EHR_ENDPOINT_EXTENSION, extension: settings }],
    ...more,
  };
}

/** The ehr-connection settings for SMART Backend Services at `tokenUrl` as client `clientId`. */
export function smartSettings(tokenUrl: string, clientId: string, scope?: string): Extension[] {
  return [
    { url: 'auth', valueCode: 'smart-backend' },
    { url: 'tokenUrl', valueUrl: tokenUrl },
    { url: 'clientId', valueString: clientId },
    ...(scope ? [{ url: 'scope', valueString: scope }] : []),
  ];
}

/** Listens on a free loopback port; returns it. */
export async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

/** Closes a server, cutting its open connections. */
export function close(server: Server): Promise<void> {
  server.closeAllConnections();
  return new Promise((resolve) => server.close(() => resolve()));
}

/** A loopback port nothing listens on (just now). */
export async function freePort(): Promise<number> {
  const server = createServer();
  const port = await listen(server);
  await close(server);
  return port;
}

export interface EhrPeer {
  /** The running server: `stop()` it to play an EHR that is down (close() still cleans up). */
  server: RunningServer;
  /** `http://127.0.0.1:<port>`, also the peer's BASE_URL (token audience, paging links). */
  origin: string;
  /** `${origin}/fhir` */
  fhirBase: string;
  /** `${origin}/auth/token` */
  tokenUrl: string;
  tenant: string;
  dataDir: string;
  /** Paths (no query) of every request the peer received, in order. */
  requests: string[];
  /** An access token of the staff client (system/*.*), for seeding and checking the EHR's data. */
  staffToken: string;
  /**
   * Registers a SMART Backend Services client whose public key (our test signing key unless
   * given) the peer reads from a loopback JWKS URL; returns its client id.
   */
  registerBackendClient(scopes: string, publicJwk?: JWK): Promise<string>;
  /** Registers a client_secret client with `scopes` and returns an access token the peer issued it. */
  issueToken(scopes: string): Promise<string>;
  /** A request to the peer's FHIR API with the staff token. */
  fetch(path: string, init?: RequestInit): Promise<Response>;
  /** Creates a resource with the staff token; returns its id. */
  create(resource: { resourceType: string } & Record<string, unknown>): Promise<string>;
  /** Every resource of `type` carrying `system|value`. */
  byIdentifier<T>(type: string, system: string, value: string): Promise<T[]>;
  /** Stops the peer and its JWKS server, removes its data directory. */
  close(): Promise<void>;
}

/** Starts a peer EHR with a fresh tenant (`prefix-<random>`). */
export async function startEhrPeer(options: { prefix?: string } = {}): Promise<EhrPeer> {
  const prefix = options.prefix ?? 'ehr';
  // The JWKS the peer reads our public keys from.
  const keys: JWK[] = [];
  const jwks = createServer((_req, res) => res.setHeader('content-type', 'application/json').end(JSON.stringify({ keys })));
  const jwksUrl = `http://127.0.0.1:${await listen(jwks)}/jwks.json`;

  // A DATA_DIR on disk, not memory://: in memory the server only fetches https JWKS URLs.
  const dataDir = mkdtempSync(join(tmpdir(), `met-${prefix}-`));
  // The port is chosen first and named in BASE_URL: every paging link and the token audience use it.
  const port = await freePort();
  const origin = `http://127.0.0.1:${port}`;
  const env: Record<string, string> = { PORT: String(port), HL7_PORT: '0', DELIVERY: 'off', BASE_URL: origin, DATA_DIR: dataDir, LOG_LEVEL: 'silent' };
  if (process.env.DATABASE_URL) env.DATABASE_URL = process.env.DATABASE_URL;
  let server: RunningServer;
  try {
    server = await startServer(loadConfig(env), silentLogger);
  } catch (error) {
    await close(jwks);
    rmSync(dataDir, { recursive: true, force: true });
    throw error;
  }
  const requests: string[] = [];
  server.server.prependListener('request', (req: IncomingMessage) => requests.push((req.url ?? '').split('?')[0] as string));
  const fhirBase = `${origin}/fhir`;
  const tokenUrl = `${origin}/auth/token`;
  const tenant = `${prefix}-${randomUUID().slice(0, 8)}`;
  await createTenant(server.db, tenant);
  const clients = new ClientStore(server.db.pool);

  const issueToken = async (scopes: string): Promise<string> => {
    const clientId = newClientId();
    const secret = newClientSecret();
    await clients.createClient({ clientId, tenant, name: `staff-${clientId.slice(0, 6)}`, secretHash: await hashSecret(secret), scopes });
    const response = await fetch(tokenUrl, { method: 'POST', body: new URLSearchParams({ grant_type: 'client_credentials', client_id: clientId, client_secret: secret, scope: scopes }) });
    assert.equal(response.status, 200, await response.clone().text());
    return ((await response.json()) as { access_token: string }).access_token;
  };
  const staffToken = await issueToken('system/*.*');
  const peerFetch = (path: string, init: RequestInit = {}): Promise<Response> =>
    fetch(`${fhirBase}/${path}`, { ...init, headers: { authorization: `Bearer ${staffToken}`, 'content-type': FHIR_JSON, ...(init.headers as Record<string, string> | undefined) } });

  return {
    server,
    origin,
    fhirBase,
    tokenUrl,
    tenant,
    dataDir,
    requests,
    staffToken,
    async registerBackendClient(scopes, publicJwk) {
      const jwk = publicJwk ?? (await testOutboundJwk());
      if (!keys.some((k) => k.kid === jwk.kid)) keys.push(jwk);
      const clientId = newClientId();
      await clients.createClient({ clientId, tenant, name: `met-server-${clientId.slice(0, 6)}`, jwksUrl, scopes });
      return clientId;
    },
    issueToken,
    fetch: peerFetch,
    async create(resource) {
      const res = await peerFetch(resource.resourceType, { method: 'POST', body: JSON.stringify(resource) });
      assert.equal(res.status, 201, await res.clone().text());
      return ((await res.json()) as { id: string }).id;
    },
    async byIdentifier<T>(type: string, system: string, value: string) {
      const res = await peerFetch(`${type}?identifier=${encodeURIComponent(`${system}|${value}`)}`);
      assert.equal(res.status, 200, await res.clone().text());
      return (((await res.json()) as { entry?: { resource: T }[] }).entry ?? []).map((e) => e.resource);
    },
    async close() {
      await server.stop();
      await close(jwks);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
