/**
 * SMART Backend Services core (src/auth): scopes, secrets, the server key, access tokens, client
 * assertions, client JWK Sets and the token endpoint. No database: JWK Sets are served by a real
 * HTTP server on 127.0.0.1; keys are generated with jose.
 */
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, chmod, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, type CryptoKey, type JWK, type JWTPayload } from 'jose';
import {
  accessFor,
  formatScopes,
  handleTokenRequest,
  hashSecret,
  issueAccessToken,
  JwksFetcher,
  loadOrCreateSigningKey,
  narrow,
  newClientId,
  newClientSecret,
  parseScope,
  parseScopes,
  permits,
  permittedTypes,
  publicJwks,
  signingKeyFromJwk,
  generateSigningJwk,
  validateJwks,
  verifyAccessToken,
  verifyClientAssertion,
  verifySecret,
  cacheTtl,
  REQUIRED_ACCESS,
  type AssertionDeps,
  type RegisteredClient,
  type SigningKey,
  type TokenEndpointDeps,
} from '../src/auth/index.js';

const NOW = Date.UTC(2030, 0, 1, 12, 0, 0);
const NOW_S = NOW / 1000;
const TOKEN_URL = 'https://fhir.example.org/auth/token';
const ISSUER = 'https://fhir.example.org';
const FHIR_BASE = 'https://fhir.example.org/fhir';

const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');
const scopesOf = (text: string) => parseScopes(text).scopes;

/** A client key pair; the public JWK carries kid, alg and use. */
async function clientKey(alg: 'ES384' | 'RS384' = 'ES384', kid = 'client-key-1'): Promise<{ privateKey: CryptoKey; jwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

/** A client assertion; `header` and `claims` override the valid defaults (undefined removes). */
async function assertion(privateKey: CryptoKey, opts: { clientId?: string; header?: Record<string, unknown>; claims?: Record<string, unknown> } = {}): Promise<string> {
  const clientId = opts.clientId ?? 'client-a';
  const claims: JWTPayload = { iss: clientId, sub: clientId, aud: TOKEN_URL, exp: NOW_S + 240, jti: `jti-${Math.random()}`, ...opts.claims };
  for (const [k, v] of Object.entries(claims)) if (v === undefined) delete claims[k];
  const header = { alg: 'ES384', kid: 'client-key-1', typ: 'JWT', ...opts.header } as Record<string, unknown>;
  for (const [k, v] of Object.entries(header)) if (v === undefined) delete header[k];
  return new SignJWT(claims).setProtectedHeader(header as { alg: string }).sign(privateKey);
}

/** A JWT with alg none (no signature), which no library will sign for us. */
const unsigned = (header: object, claims: object): string => `${b64({ ...header, alg: 'none' })}.${b64(claims)}.`;

/** The classic key-confusion forgery: HS256 keyed with the verifier's public key text. */
function hmacWith(secret: string, header: object, claims: object): string {
  const input = `${b64({ ...header, alg: 'HS256' })}.${b64(claims)}`;
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}

/** A loopback HTTP server whose routes the tests set; counts requests per path. */
class JwksServer {
  readonly hits = new Map<string, number>();
  routes = new Map<string, (req: IncomingMessage, res: ServerResponse) => void>();
  private server: Server | undefined;
  base = '';

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const path = req.url ?? '/';
      this.hits.set(path, (this.hits.get(path) ?? 0) + 1);
      const route = this.routes.get(path);
      if (route) route(req, res);
      else res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    this.base = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  json(path: string, body: unknown, headers: Record<string, string> = {}): string {
    this.routes.set(path, (_req, res) => res.writeHead(200, { 'Content-Type': 'application/json', ...headers }).end(typeof body === 'string' ? body : JSON.stringify(body)));
    return `${this.base}${path}`;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise((resolve) => this.server?.close(resolve));
  }
}

describe('auth core', function () {
  // RSA key generation and scrypt take a second or so on a slow machine.
  this.timeout(20_000);

  describe('SMART scopes', () => {
    it('reads v1 scopes: read is read+search, write is create+update+delete, * is all', () => {
      assert.deepEqual(parseScope('system/Observation.read')?.interactions, ['read', 'search']);
      assert.deepEqual(parseScope('system/*.write')?.interactions, ['create', 'update', 'delete']);
      assert.deepEqual(parseScope('system/*.*')?.interactions, ['create', 'read', 'update', 'delete', 'search']);
      assert.equal(parseScope('patient/Patient.read')?.context, 'patient');
      assert.equal(parseScope('user/*.read')?.version, 1);
    });

    it('reads v2 letters in c r u d s order and refuses any other spelling', () => {
      assert.deepEqual(parseScope('system/Observation.rs')?.interactions, ['read', 'search']);
      assert.deepEqual(parseScope('system/*.cruds')?.interactions, ['create', 'read', 'update', 'delete', 'search']);
      assert.deepEqual(parseScope('system/Patient.cud')?.interactions, ['create', 'update', 'delete']);
      for (const bad of ['system/Observation.sr', 'system/Observation.rr', 'system/Observation.x', 'system/Observation.', 'system/observation.rs', 'System/Observation.rs', 'system/Observation', 'Observation.rs', 'system/*.readwrite']) {
        assert.equal(parseScope(bad), undefined, bad);
      }
    });

    it('keeps the query of a v2 scope as ordered pairs and refuses a query on v1', () => {
      const s = parseScope('system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory&status=final');
      assert.deepEqual(s?.query, [
        ['category', 'http://terminology.hl7.org/CodeSystem/observation-category|laboratory'],
        ['status', 'final'],
      ]);
      assert.equal(s?.text, 'system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory&status=final');
      assert.equal(parseScope('system/Observation.read?category=laboratory'), undefined);
      assert.equal(parseScope('system/Observation.rs?'), undefined);
    });

    it('drops openid, offline_access and launch scopes silently and lists malformed ones', () => {
      const { scopes, invalid } = parseScopes('openid fhirUser offline_access launch launch/patient  system/Observation.rs system/Foo.zz nonsense system/Observation.rs');
      assert.deepEqual(scopes.map((s) => s.text), ['system/Observation.rs']);
      assert.deepEqual(invalid, ['system/Foo.zz', 'nonsense']);
      assert.deepEqual(parseScopes(undefined), { scopes: [], invalid: [] });
    });

    it('permits by system/ scopes only: user/ and patient/ scopes have no context here and grant nothing', () => {
      const granted = scopesOf('system/Observation.rs system/Patient.c user/*.cruds patient/*.cruds');
      assert.equal(permits(granted, 'Observation', 'read'), true);
      assert.equal(permits(granted, 'Observation', 'search'), true);
      assert.equal(permits(granted, 'Observation', 'update'), false);
      assert.equal(permits(granted, 'Patient', 'create'), true);
      assert.equal(permits(granted, 'Patient', 'read'), false);
      assert.equal(permits(granted, 'Condition', 'read'), false);
      assert.equal(permits(scopesOf('system/*.read'), 'Condition', 'search'), true);
      assert.equal(permits(scopesOf('system/*.read'), '*', 'search'), true, 'system-level search needs a wildcard');
      assert.equal(permits(scopesOf('system/Observation.read'), '*', 'search'), false);
      assert.equal(permits([], 'Observation', 'read'), false);
    });

    it('treats a scope with a query as a constraint on reads and searches only, never as full access', () => {
      const granted = scopesOf('system/Observation.cruds?category=laboratory system/Observation.s?status=final');
      assert.equal(permits(granted, 'Observation', 'read'), false);
      assert.deepEqual(accessFor(granted, 'Observation', 'read'), { kind: 'constrained', queries: [[['category', 'laboratory']]] });
      assert.deepEqual(accessFor(granted, 'Observation', 'search'), { kind: 'constrained', queries: [[['category', 'laboratory']], [['status', 'final']]] });
      assert.deepEqual(accessFor(granted, 'Observation', 'create'), { kind: 'none' });
      assert.deepEqual(accessFor(granted, 'Patient', 'read'), { kind: 'none' });
      assert.deepEqual(accessFor(scopesOf('system/*.rs system/Observation.rs?category=laboratory'), 'Observation', 'read'), { kind: 'all' });
    });

    it('lists the types a system-level search may cover', () => {
      assert.equal(permittedTypes(scopesOf('system/Patient.rs system/*.s'), 'search'), '*');
      assert.deepEqual(permittedTypes(scopesOf('system/Patient.rs system/Observation.read system/Goal.r system/Flag.s?x=1'), 'search'), ['Observation', 'Patient']);
    });

    it('names the scope interaction each FHIR interaction needs', () => {
      assert.deepEqual(REQUIRED_ACCESS.vread, ['read']);
      assert.deepEqual(REQUIRED_ACCESS['history-type'], ['search']);
      assert.deepEqual(REQUIRED_ACCESS.patch, ['update']);
      assert.deepEqual(REQUIRED_ACCESS['conditional-delete'], ['delete', 'search']);
    });

    describe('narrow (what the token endpoint grants)', () => {
      const grant = (requested: string, allowed: string): string => formatScopes(narrow(scopesOf(requested), scopesOf(allowed)));

      it('grants a request within the registration as written', () => {
        assert.equal(grant('system/Observation.read system/Patient.rs', 'system/*.*'), 'system/Observation.read system/Patient.rs');
        assert.equal(grant('system/*.*', 'system/*.cruds'), 'system/*.*');
      });

      it('cuts a request for more than registered down to the registered subset (no escalation)', () => {
        assert.equal(grant('system/*.cruds', 'system/Observation.read'), 'system/Observation.rs');
        assert.equal(grant('system/*.*', 'system/Observation.rs system/Patient.r'), 'system/Observation.rs system/Patient.r');
        assert.equal(grant('system/Observation.write', 'system/*.read system/Observation.u'), 'system/Observation.u');
        assert.equal(grant('system/Observation.cruds', 'system/Observation.rs?category=laboratory'), 'system/Observation.rs?category=laboratory');
      });

      it('grants nothing when nothing of the request is registered, or the context differs', () => {
        assert.equal(grant('system/Patient.read', 'system/Observation.read'), '');
        assert.equal(grant('system/Observation.c', 'system/Observation.rs'), '');
        assert.equal(grant('patient/Observation.rs', 'system/*.*'), '');
        assert.equal(grant('system/*.rs', 'user/*.*'), '');
      });

      it('keeps both queries when both sides are constrained, and drops writes from constrained scopes', () => {
        assert.equal(grant('system/Observation.rs?status=final', 'system/Observation.rs?category=laboratory'), 'system/Observation.rs?status=final&category=laboratory');
        assert.equal(grant('system/Observation.cruds?category=laboratory', 'system/*.*'), 'system/Observation.rs?category=laboratory');
        assert.equal(grant('system/Observation.cud?category=laboratory', 'system/*.*'), '');
      });
    });
  });

  describe('client secrets', () => {
    it('hashes into scrypt$N$r$p$salt$hash and verifies only the right secret', async () => {
      const secret = newClientSecret();
      const stored = await hashSecret(secret);
      assert.match(stored, /^scrypt\$16384\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/);
      assert.equal(await verifySecret(secret, stored), true);
      assert.equal(await verifySecret(`${secret}x`, stored), false);
      assert.equal(await verifySecret('', stored), false);
      assert.notEqual(await hashSecret(secret), stored, 'a fresh salt each time');
    });

    it('reads its parameters from the stored value', async () => {
      const stored = await hashSecret('s3cret', { N: 1024, r: 4, p: 1 });
      assert.match(stored, /^scrypt\$1024\$4\$1\$/);
      assert.equal(await verifySecret('s3cret', stored), true);
    });

    it('answers false, without throwing or allocating gigabytes, for stored values it did not write', async () => {
      const good = await hashSecret('x');
      const [, , , , salt, hash] = good.split('$');
      for (const bad of ['', 'x', 'plain-secret', `bcrypt$16384$8$1$${salt}$${hash}`, `scrypt$1000$8$1$${salt}$${hash}`, `scrypt$1048576$64$1$${salt}$${hash}`, `scrypt$16384$8$1$${salt}`, `scrypt$16384$8$1$$${hash}`]) {
        assert.equal(await verifySecret('x', bad), false, bad);
      }
    });

    it('generates secrets of 32 random bytes and unique client ids', () => {
      const secrets = new Set(Array.from({ length: 50 }, newClientSecret));
      assert.equal(secrets.size, 50);
      for (const s of secrets) assert.equal(Buffer.from(s, 'base64url').length, 32);
      assert.match(newClientId(), /^[0-9a-f-]{36}$/);
      assert.notEqual(newClientId(), newClientId());
    });
  });

  describe('the server signing key', () => {
    let dir: string;
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'auth-keys-'));
    });
    afterEach(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it('creates an ES384 key in a 0600 file on first use and loads the same key afterwards', async () => {
      const keysDir = join(dir, 'keys');
      const first = await loadOrCreateSigningKey(keysDir);
      assert.equal(first.created, true);
      assert.equal(first.key.alg, 'ES384');
      assert.equal((await stat(join(keysDir, 'signing-key.json'))).mode & 0o777, 0o600);
      assert.equal((await stat(keysDir)).mode & 0o077, 0);
      const stored = JSON.parse(await readFile(join(keysDir, 'signing-key.json'), 'utf8'));
      assert.equal(typeof stored.d, 'string', 'the file holds the private key');
      const again = await loadOrCreateSigningKey(keysDir);
      assert.equal(again.created, false);
      assert.equal(again.key.kid, first.key.kid, 'the kid is stable');
      assert.match(first.key.kid, /^[A-Za-z0-9_-]{43}$/, 'the kid is the RFC 7638 thumbprint');
    });

    it('gives concurrent starts one and the same key', async () => {
      const results = await Promise.all(Array.from({ length: 5 }, () => loadOrCreateSigningKey(dir)));
      assert.equal(new Set(results.map((r) => r.key.kid)).size, 1);
      assert.equal(results.filter((r) => r.created).length, 1);
    });

    it('tightens a key file others can read to 0600', async () => {
      await loadOrCreateSigningKey(dir);
      await chmod(join(dir, 'signing-key.json'), 0o644);
      await loadOrCreateSigningKey(dir);
      assert.equal((await stat(join(dir, 'signing-key.json'))).mode & 0o777, 0o600);
    });

    it('refuses a key file that is not JSON with a clear message', async () => {
      await writeFile(join(dir, 'signing-key.json'), 'not json', { mode: 0o600 });
      await assert.rejects(loadOrCreateSigningKey(dir), /signing-key\.json is not valid JSON/);
    });

    it('publishes only public members in the JWKS', async () => {
      const { key } = await loadOrCreateSigningKey(dir);
      const rsa = await signingKeyFromJwk(await generateSigningJwk('RS384'));
      const jwks = publicJwks(key, rsa);
      assert.deepEqual(Object.keys(jwks.keys[0] ?? {}).sort(), ['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y']);
      assert.deepEqual(Object.keys(jwks.keys[1] ?? {}).sort(), ['alg', 'e', 'kid', 'kty', 'n', 'use']);
      assert.equal(jwks.keys[1]?.alg, 'RS384');
    });

    it('takes a key from a JWK (e.g. from the environment) and refuses public-only, mismatched or wrong-curve keys', async () => {
      const jwk = await generateSigningJwk();
      assert.equal((await signingKeyFromJwk({ ...jwk, kid: 'from-env' })).kid, 'from-env');
      const { d: _d, ...publicOnly } = jwk;
      await assert.rejects(signingKeyFromJwk(publicOnly), /no private part/);
      const other = await generateSigningJwk();
      await assert.rejects(signingKeyFromJwk({ ...jwk, d: other.d }), /cannot be imported|does not match/);
      const { privateKey } = await generateKeyPair('ES256', { extractable: true });
      await assert.rejects(signingKeyFromJwk(await exportJWK(privateKey)), /expected an EC P-384 key/);
    });
  });

  describe('access tokens', () => {
    let key: SigningKey;
    let other: SigningKey;
    const verifyOptions = () => ({ keys: key, issuer: ISSUER, audience: FHIR_BASE, now: () => NOW });
    const issue = (lifetimeSeconds?: number) =>
      issueAccessToken(key, { clientId: 'client-a', tenant: 'practice-1', scope: 'system/Observation.rs' }, { issuer: ISSUER, audience: FHIR_BASE, now: () => NOW, ...(lifetimeSeconds ? { lifetimeSeconds } : {}) });
    /** A token with our header, signed by `signer`, with claims changed. */
    const craft = (claims: Record<string, unknown>, signer = key, header: Record<string, unknown> = {}) =>
      new SignJWT({ iss: ISSUER, aud: FHIR_BASE, sub: 'client-a', client_id: 'client-a', scope: 'system/*.rs', tenant: 't', jti: 'j', iat: NOW_S, exp: NOW_S + 300, ...claims })
        .setProtectedHeader({ alg: signer.alg, kid: key.kid, typ: 'at+jwt', ...header })
        .sign(signer.privateKey);

    before(async () => {
      key = await signingKeyFromJwk(await generateSigningJwk());
      other = await signingKeyFromJwk(await generateSigningJwk());
    });

    it('issues a 300 s token with iss, aud, sub, client_id, scope, tenant, jti, iat, exp, and verifies it', async () => {
      const { accessToken, expiresIn, claims } = await issue();
      assert.equal(expiresIn, 300);
      assert.deepEqual({ ...claims, jti: 'x' }, { iss: ISSUER, aud: FHIR_BASE, sub: 'client-a', client_id: 'client-a', scope: 'system/Observation.rs', tenant: 'practice-1', jti: 'x', iat: NOW_S, exp: NOW_S + 300 });
      const verified = await verifyAccessToken(accessToken, verifyOptions());
      assert.deepEqual(verified, { ok: true, value: claims });
      assert.notEqual((await issue()).claims.jti, claims.jti, 'each token has its own jti');
    });

    it('refuses an expired token, allowing 30 s of clock skew', async () => {
      const { accessToken } = await issue();
      const at = (ms: number) => verifyAccessToken(accessToken, { ...verifyOptions(), now: () => NOW + ms });
      assert.equal((await at(300_000 + 29_000)).ok, true);
      const late = await at(300_000 + 31_000);
      assert.equal(late.ok || late.reason, 'expired');
    });

    it('refuses a token signed by another key under our kid (forged signature)', async () => {
      const forged = await craft({}, other);
      const r = await verifyAccessToken(forged, verifyOptions());
      assert.equal(r.ok || r.reason, 'bad-signature');
    });

    it('refuses a token whose payload was altered after signing', async () => {
      const [h, , s] = (await issue()).accessToken.split('.');
      const r = await verifyAccessToken(`${h}.${b64({ iss: ISSUER, aud: FHIR_BASE, sub: 'admin', client_id: 'admin', scope: 'system/*.*', tenant: 'other', jti: 'j', iat: NOW_S, exp: NOW_S + 300 })}.${s}`, verifyOptions());
      assert.equal(r.ok || r.reason, 'bad-signature');
    });

    it('refuses alg none', async () => {
      const r = await verifyAccessToken(unsigned({ kid: key.kid, typ: 'at+jwt' }, { iss: ISSUER, aud: FHIR_BASE, sub: 'a', scope: 'system/*.*', tenant: 't', jti: 'j', exp: NOW_S + 60 }), verifyOptions());
      assert.equal(r.ok || r.reason, 'unsupported-algorithm');
    });

    it('refuses HS256 keyed with our own public key (algorithm confusion)', async () => {
      const claims = { iss: ISSUER, aud: FHIR_BASE, sub: 'a', client_id: 'a', scope: 'system/*.*', tenant: 't', jti: 'j', iat: NOW_S, exp: NOW_S + 60 };
      for (const secret of [await exportSPKI(key.publicKey), JSON.stringify(key.publicJwk)]) {
        const r = await verifyAccessToken(hmacWith(secret, { kid: key.kid, typ: 'at+jwt' }, claims), verifyOptions());
        assert.equal(r.ok || r.reason, 'unsupported-algorithm');
      }
    });

    it('refuses a token for another audience or from another issuer', async () => {
      const r1 = await verifyAccessToken(await craft({ aud: 'https://elsewhere.example/fhir' }), verifyOptions());
      assert.equal(r1.ok || r1.reason, 'wrong-audience');
      const r2 = await verifyAccessToken(await craft({ iss: 'https://evil.example' }), verifyOptions());
      assert.equal(r2.ok || r2.reason, 'wrong-issuer');
    });

    it('refuses a token missing a claim, with the claim named', async () => {
      for (const claim of ['tenant', 'scope', 'exp', 'jti', 'sub', 'iss', 'aud']) {
        const r = await verifyAccessToken(await craft({ [claim]: undefined }), verifyOptions());
        assert.equal(r.ok || r.reason, 'missing-claim', claim);
        assert.match(r.ok ? '' : r.message, new RegExp(claim));
      }
    });

    it('refuses unknown kids, other token types, and garbage, each with its own reason', async () => {
      const r1 = await verifyAccessToken(await craft({}, key, { kid: 'not-ours' }), verifyOptions());
      assert.equal(r1.ok || r1.reason, 'unknown-key');
      const r2 = await verifyAccessToken(await craft({}, key, { typ: 'JWT' }), verifyOptions());
      assert.equal(r2.ok || r2.reason, 'wrong-type', 'a client assertion is not an access token');
      for (const garbage of ['', 'abc', 'a.b.c', 'x'.repeat(9000)]) {
        const r = await verifyAccessToken(garbage, verifyOptions());
        assert.equal(r.ok || r.reason, 'malformed', garbage.slice(0, 10));
      }
      const r3 = await verifyAccessToken(await craft({ iat: NOW_S + 600 }), verifyOptions());
      assert.equal(r3.ok || r3.reason, 'not-yet-valid');
    });

    it('works the same with an RS384 server key, and accepts typ application/at+jwt', async () => {
      const rsa = await signingKeyFromJwk(await generateSigningJwk('RS384'));
      const { accessToken } = await issueAccessToken(rsa, { clientId: 'c', tenant: 't', scope: 'system/*.rs' }, { issuer: ISSUER, audience: FHIR_BASE, now: () => NOW });
      assert.equal((await verifyAccessToken(accessToken, { ...verifyOptions(), keys: rsa })).ok, true);
      const r = await verifyAccessToken(accessToken, verifyOptions());
      assert.equal(r.ok || r.reason, 'unsupported-algorithm', 'an ES384-only verifier refuses RS384');
      assert.equal((await verifyAccessToken(await craft({}, key, { typ: 'application/at+jwt' }), verifyOptions())).ok, true);
    });

    it('accepts a token from a retired key still listed, after rotation', async () => {
      const { accessToken } = await issue();
      const r = await verifyAccessToken(accessToken, { ...verifyOptions(), keys: [other, key] });
      assert.equal(r.ok, true);
    });
  });

  describe('client JWK Sets', () => {
    const server = new JwksServer();
    before(() => server.start());
    after(() => server.stop());

    it('refuses malformed inline sets with a reason that says what is wrong', async () => {
      const { jwk } = await clientKey();
      const cases: [unknown, RegExp][] = [
        ['{not json', /not valid JSON/],
        ['[]', /not a JSON object/],
        [{}, /no "keys" array/],
        [{ keys: [] }, /no keys/],
        [{ keys: ['x'] }, /key 0 is not a JSON object/],
        [{ keys: [{ ...jwk, kty: undefined }] }, /no "kty"/],
        [{ keys: [{ ...jwk, kid: undefined }] }, /no "kid"/],
        [{ keys: [{ ...jwk, d: 'secret' }] }, /private key material/],
        [{ keys: [{ ...jwk, x: undefined }] }, /has no "x"/],
      ];
      for (const [input, message] of cases) {
        const r = validateJwks(typeof input === 'string' ? input : JSON.parse(JSON.stringify(input)));
        assert.equal(r.ok || r.reason, 'jwks-malformed');
        assert.match(r.ok ? '' : r.message, message);
      }
      assert.equal(validateJwks(JSON.stringify({ keys: [jwk] })).ok, true);
    });

    it('fetches a set once and serves it from the cache until it expires', async () => {
      const { jwk } = await clientKey();
      const url = server.json('/cached', { keys: [jwk] });
      let clock = NOW;
      const fetcher = new JwksFetcher({ requireHttps: false, now: () => clock, defaultTtlSeconds: 60 });
      assert.equal((await Promise.all([fetcher.get(url), fetcher.get(url)])).every((r) => r.ok), true);
      assert.equal((await fetcher.get(url)).ok, true);
      assert.equal(server.hits.get('/cached'), 1, 'concurrent and later requests share one fetch');
      clock += 61_000;
      await fetcher.get(url);
      assert.equal(server.hits.get('/cached'), 2);
    });

    it('caches no longer than Cache-Control allows', async () => {
      const { jwk } = await clientKey();
      const url = server.json('/no-store', { keys: [jwk] }, { 'Cache-Control': 'no-store' });
      const fetcher = new JwksFetcher({ requireHttps: false, now: () => NOW });
      await fetcher.get(url);
      await fetcher.get(url);
      assert.equal(server.hits.get('/no-store'), 2);
      assert.equal(cacheTtl('public, max-age=120', 300, 3600), 120);
      assert.equal(cacheTtl('max-age=999999', 300, 3600), 3600);
      assert.equal(cacheTtl('no-cache', 300, 3600), 0);
      assert.equal(cacheTtl(null, 300, 3600), 300);
    });

    it('refuses a served set that is malformed, too large, slow, missing or redirected', async () => {
      const fetcher = new JwksFetcher({ requireHttps: false, timeoutMs: 300, maxBytes: 2048 });
      const malformed = await fetcher.get(server.json('/malformed', { keys: [{ kty: 'EC', crv: 'P-384' }] }));
      assert.equal(malformed.ok || malformed.reason, 'jwks-malformed');
      const notJson = await fetcher.get(server.json('/html', '<html>hello</html>'));
      assert.equal(notJson.ok || notJson.reason, 'jwks-malformed');
      server.routes.set('/big', (_req, res) => {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ keys: [], pad: 'x'.repeat(10_000) }));
      });
      const big = await fetcher.get(`${server.base}/big`);
      assert.equal(big.ok || big.reason, 'jwks-too-large');
      server.routes.set('/chunked-big', (_req, res) => {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        for (let i = 0; i < 10; i++) res.write('x'.repeat(1000));
        res.end();
      });
      const chunked = await fetcher.get(`${server.base}/chunked-big`);
      assert.equal(chunked.ok || chunked.reason, 'jwks-too-large', 'counted while streaming, without Content-Length');
      server.routes.set('/slow', (_req, res) => {
        setTimeout(() => res.writeHead(200).end('{"keys":[]}'), 2000).unref();
      });
      const started = Date.now();
      const slow = await fetcher.get(`${server.base}/slow`);
      assert.equal(slow.ok || slow.reason, 'jwks-fetch-failed');
      assert.match(slow.ok ? '' : slow.message, /did not answer within 300 ms/);
      assert.ok(Date.now() - started < 1500, 'gives up at the timeout');
      const missing = await fetcher.get(`${server.base}/missing`);
      assert.equal(missing.ok || missing.message, 'the JWKS URL answered HTTP 404');
      server.routes.set('/redirect', (_req, res) => res.writeHead(302, { Location: `${server.base}/cached` }).end());
      const redirected = await fetcher.get(`${server.base}/redirect`);
      assert.equal(redirected.ok || redirected.message, 'the JWKS URL answered HTTP 302');
    });

    it('requires https unless told otherwise', async () => {
      const r = await new JwksFetcher().get(`${server.base}/cached`);
      assert.equal(r.ok || r.message, 'the JWKS URL must use https (got http:)');
    });
  });

  describe('private_key_jwt client assertions', () => {
    const server = new JwksServer();
    let es: { privateKey: CryptoKey; jwk: JWK };
    let rs: { privateKey: CryptoKey; jwk: JWK };
    let used: Set<string>;
    let deps: AssertionDeps;
    const client = (extra: Partial<{ jwks: unknown; jwksUrl: string }> = {}) => ({ clientId: 'client-a', jwks: { keys: [es.jwk, rs.jwk] }, ...extra });
    const verify = async (jwt: string, c: ReturnType<typeof client> | { clientId: string; jwksUrl: string } = client()) => {
      const r = await verifyClientAssertion(jwt, c as never, deps);
      return r.ok ? 'ok' : r.reason;
    };

    before(async () => {
      await server.start();
      es = await clientKey('ES384', 'client-key-1');
      rs = await clientKey('RS384', 'client-key-rsa');
    });
    after(() => server.stop());
    beforeEach(() => {
      used = new Set();
      deps = {
        tokenUrl: TOKEN_URL,
        now: () => NOW,
        jwksFetcher: new JwksFetcher({ requireHttps: false, now: () => NOW }),
        rememberJti: (clientId, jti, keepUntil) => {
          assert.ok(keepUntil >= NOW_S, 'kept at least until the assertion expires');
          const k = `${clientId} ${jti}`;
          if (used.has(k)) return Promise.resolve(false);
          used.add(k);
          return Promise.resolve(true);
        },
      };
    });

    it('accepts ES384 and RS384 assertions signed by a registered key', async () => {
      assert.equal(await verify(await assertion(es.privateKey)), 'ok');
      assert.equal(await verify(await assertion(rs.privateKey, { header: { alg: 'RS384', kid: 'client-key-rsa' } })), 'ok');
      assert.equal(await verify(await assertion(es.privateKey, { claims: { aud: ['https://other.example', TOKEN_URL] } })), 'ok', 'aud may be an array holding the token URL');
    });

    it('refuses a replayed jti', async () => {
      const jwt = await assertion(es.privateKey, { claims: { jti: 'once' } });
      assert.equal(await verify(jwt), 'ok');
      assert.equal(await verify(jwt), 'replayed-jti');
      assert.equal(await verify(await assertion(es.privateKey, { claims: { jti: 'once' } })), 'replayed-jti', 'a new assertion with a used jti');
    });

    it('records the jti only for an assertion that is otherwise valid', async () => {
      const forged = await assertion((await clientKey()).privateKey, { claims: { jti: 'victim' } });
      assert.equal(await verify(forged), 'bad-signature');
      assert.equal(await verify(await assertion(es.privateKey, { claims: { jti: 'victim' } })), 'ok');
    });

    it('refuses alg none and HS256 keyed with the public key', async () => {
      const claims = { iss: 'client-a', sub: 'client-a', aud: TOKEN_URL, exp: NOW_S + 60, jti: 'j1' };
      assert.equal(await verify(unsigned({ kid: 'client-key-1', typ: 'JWT' }, claims)), 'unsupported-algorithm');
      assert.equal(await verify(hmacWith(JSON.stringify(es.jwk), { kid: 'client-key-1', typ: 'JWT' }, claims)), 'unsupported-algorithm');
      const { privateKey } = await generateKeyPair('ES256');
      assert.equal(await verify(await assertion(privateKey, { header: { alg: 'ES256' } })), 'unsupported-algorithm');
    });

    it('requires typ JWT and a kid in the header', async () => {
      assert.equal(await verify(await assertion(es.privateKey, { header: { typ: undefined } })), 'wrong-type');
      assert.equal(await verify(await assertion(es.privateKey, { header: { typ: 'at+jwt' } })), 'wrong-type');
      assert.equal(await verify(await assertion(es.privateKey, { header: { kid: undefined } })), 'missing-kid');
    });

    it('requires iss = sub = client_id and aud = the token URL', async () => {
      assert.equal(await verify(await assertion(es.privateKey, { claims: { sub: 'client-b' } })), 'iss-sub-mismatch');
      assert.equal(await verify(await assertion(es.privateKey, { clientId: 'client-b' })), 'invalid-claim', 'another client cannot use our keys');
      assert.equal(await verify(await assertion(es.privateKey, { claims: { aud: 'https://fhir.example.org/auth/token/' } })), 'wrong-audience');
      assert.equal(await verify(await assertion(es.privateKey, { claims: { aud: FHIR_BASE } })), 'wrong-audience');
      for (const claim of ['iss', 'sub', 'aud', 'exp', 'jti']) {
        assert.equal(await verify(await assertion(es.privateKey, { claims: { [claim]: undefined } })), 'missing-claim', claim);
      }
    });

    it('refuses an exp in the past or more than five minutes ahead', async () => {
      assert.equal(await verify(await assertion(es.privateKey, { claims: { exp: NOW_S - 31 } })), 'expired');
      assert.equal(await verify(await assertion(es.privateKey, { claims: { exp: NOW_S - 10 } })), 'ok', 'within the clock tolerance');
      assert.equal(await verify(await assertion(es.privateKey, { claims: { exp: NOW_S + 300 } })), 'ok');
      assert.equal(await verify(await assertion(es.privateKey, { claims: { exp: NOW_S + 3600 } })), 'exp-too-far');
      assert.equal(await verify(await assertion(es.privateKey, { claims: { exp: String(NOW_S + 60) } })), 'invalid-claim');
      assert.equal(await verify(await assertion(es.privateKey, { claims: { nbf: NOW_S + 120 } })), 'not-yet-valid');
    });

    it('refuses a signature by a key that is not the registered one', async () => {
      const impostor = await clientKey('ES384', 'client-key-1');
      assert.equal(await verify(await assertion(impostor.privateKey)), 'bad-signature');
    });

    it('picks the key by kid and algorithm: unknown kid, wrong key type, enc-only or duplicate keys fail', async () => {
      assert.equal(await verify(await assertion(es.privateKey, { header: { kid: 'nope' } })), 'unknown-key');
      assert.equal(await verify(await assertion(rs.privateKey, { header: { alg: 'RS384', kid: 'client-key-1' } })), 'unknown-key', 'an EC key cannot check RS384');
      assert.equal(await verify(await assertion(es.privateKey), client({ jwks: { keys: [{ ...es.jwk, use: 'enc' }] } })), 'unknown-key');
      assert.equal(await verify(await assertion(es.privateKey), client({ jwks: { keys: [{ ...es.jwk, key_ops: ['encrypt'] }] } })), 'unknown-key');
      assert.equal(await verify(await assertion(es.privateKey), client({ jwks: { keys: [{ ...es.jwk, alg: 'ES256' }] } })), 'unknown-key');
      assert.equal(await verify(await assertion(es.privateKey), client({ jwks: { keys: [es.jwk, { ...es.jwk }] } })), 'ambiguous-key');
      assert.equal(await verify(await assertion(es.privateKey), client({ jwks: { keys: [{ ...es.jwk, alg: undefined, use: undefined }] } })), 'ok', 'alg and use are optional');
    });

    it('refuses a malformed inline JWKS and a client with no keys', async () => {
      const jwt = await assertion(es.privateKey);
      assert.equal(await verify(jwt, client({ jwks: '{"keys": [' })), 'jwks-malformed');
      assert.equal(await verify(jwt, client({ jwks: { keys: [{ ...es.jwk, kid: undefined }] } })), 'jwks-malformed');
      assert.equal(await verify(jwt, client({ jwks: JSON.stringify({ keys: [es.jwk] }) })), 'ok', 'inline JSON text is accepted');
      assert.equal(await verify(jwt, { clientId: 'client-a' } as never), 'no-keys-registered');
    });

    it('verifies against a JWKS URL served over HTTP, and refuses one serving a malformed set', async () => {
      const url = server.json('/client-a/jwks.json', { keys: [es.jwk] });
      assert.equal(await verify(await assertion(es.privateKey), { clientId: 'client-a', jwksUrl: url }), 'ok');
      const bad = server.json('/client-a/bad.json', { keys: [{ kty: 'EC', kid: 'client-key-1' }] });
      assert.equal(await verify(await assertion(es.privateKey), { clientId: 'client-a', jwksUrl: bad }), 'jwks-malformed');
      assert.equal(await verify(await assertion(es.privateKey), { clientId: 'client-a', jwksUrl: `${server.base}/gone.json` }), 'jwks-fetch-failed');
    });

    it('honours jku only when it is the registered JWKS URL', async () => {
      const url = server.json('/client-a/jku.json', { keys: [es.jwk] });
      const registered = { clientId: 'client-a', jwksUrl: url };
      assert.equal(await verify(await assertion(es.privateKey, { header: { jku: url } }), registered), 'ok');
      const evil = server.json('/evil/jwks.json', { keys: [es.jwk] });
      assert.equal(await verify(await assertion(es.privateKey, { header: { jku: evil } }), registered), 'jku-not-registered');
      assert.equal(await verify(await assertion(es.privateKey, { header: { jku: url } })), 'jku-not-registered', 'an inline-JWKS client has no URL to match');
      assert.equal(server.hits.get('/evil/jwks.json'), undefined, 'an unregistered jku is never fetched');
    });

    it('fetches the set again when a kid is unknown (key rotation), at most once per 30 s', async () => {
      let served = { keys: [es.jwk] };
      server.routes.set('/rotating.json', (_req, res) => res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(served)));
      let clock = NOW;
      deps.now = () => clock;
      deps.jwksFetcher = new JwksFetcher({ requireHttps: false, now: () => clock });
      const registered = { clientId: 'client-a', jwksUrl: `${server.base}/rotating.json` };
      assert.equal(await verify(await assertion(es.privateKey), registered), 'ok');
      const next = await clientKey('ES384', 'client-key-2');
      served = { keys: [es.jwk, next.jwk] };
      assert.equal(await verify(await assertion(next.privateKey, { header: { kid: 'client-key-2' } }), registered), 'unknown-key', 'too soon to refetch');
      clock += 31_000;
      assert.equal(await verify(await assertion(next.privateKey, { header: { kid: 'client-key-2' }, claims: { exp: clock / 1000 + 60 } }), registered), 'ok');
      assert.equal(server.hits.get('/rotating.json'), 2);
    });
  });

  describe('token endpoint', () => {
    const server = new JwksServer();
    let key: SigningKey;
    let es: { privateKey: CryptoKey; jwk: JWK };
    let secret: string;
    let clients: Map<string, RegisteredClient>;
    let deps: TokenEndpointDeps;
    const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
    const basic = (id: string, pw: string) => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(pw)}`).toString('base64')}`;
    const post = (form: Record<string, string | string[]>, headers: Record<string, string> = {}) => handleTokenRequest({ headers: { ...FORM, ...headers }, form }, deps);
    const jwtForm = async (opts: Parameters<typeof assertion>[1] = {}, scope = 'system/Observation.rs') => ({
      grant_type: 'client_credentials',
      scope,
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: await assertion(es.privateKey, { clientId: 'jwt-client', ...opts }),
    });

    before(async () => {
      await server.start();
      key = await signingKeyFromJwk(await generateSigningJwk());
      es = await clientKey();
      secret = newClientSecret();
    });
    after(() => server.stop());
    beforeEach(async () => {
      const used = new Set<string>();
      clients = new Map([
        ['secret-client', { clientId: 'secret-client', tenant: 'practice-1', secretHash: await hashSecret(secret), scopes: 'system/Observation.rs system/Patient.read' }],
        ['jwt-client', { clientId: 'jwt-client', tenant: 'practice-2', jwksUrl: server.json('/jwt-client.json', { keys: [es.jwk] }), scopes: 'system/*.*' }],
        ['inline-client', { clientId: 'inline-client', tenant: 'practice-2', jwks: { keys: [es.jwk] }, scopes: 'system/*.rs' }],
        ['odd id:é', { clientId: 'odd id:é', tenant: 'practice-3', secretHash: await hashSecret('p@ss:wörd+%'), scopes: 'system/*.rs' }],
        ['disabled-client', { clientId: 'disabled-client', tenant: 'practice-1', secretHash: await hashSecret(secret), scopes: 'system/*.*', disabled: true }],
      ]);
      deps = {
        findClient: (id) => clients.get(id),
        rememberJti: (c, j) => Promise.resolve(used.has(`${c} ${j}`) ? false : (used.add(`${c} ${j}`), true)),
        jwksFetcher: new JwksFetcher({ requireHttps: false, now: () => NOW }),
        signingKey: key,
        tokenUrl: TOKEN_URL,
        issuer: ISSUER,
        audience: FHIR_BASE,
        now: () => NOW,
      };
    });

    /** The token in a success answer, verified as the FHIR API will. */
    const tokenOf = async (body: Record<string, unknown>) => {
      const r = await verifyAccessToken(body.access_token as string, { keys: key, issuer: ISSUER, audience: FHIR_BASE, now: () => NOW });
      assert.ok(r.ok, JSON.stringify(r));
      return r.value;
    };

    it('issues a bearer token for client_secret_basic, not cacheable', async () => {
      const r = await post({ grant_type: 'client_credentials', scope: 'system/Observation.rs' }, { Authorization: basic('secret-client', secret) });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual(Object.keys(r.body).sort(), ['access_token', 'expires_in', 'scope', 'token_type']);
      assert.equal(r.body.token_type, 'Bearer');
      assert.equal(r.body.expires_in, 300);
      assert.equal(r.body.scope, 'system/Observation.rs');
      assert.equal(r.headers['Cache-Control'], 'no-store');
      assert.equal(r.headers.Pragma, 'no-cache');
      const claims = await tokenOf(r.body);
      assert.equal(claims.sub, 'secret-client');
      assert.equal(claims.tenant, 'practice-1');
      assert.equal(claims.scope, 'system/Observation.rs');
      assert.deepEqual(r.audit, { outcome: 'issued', reason: 'issued', clientId: 'secret-client', tenant: 'practice-1', method: 'client_secret_basic', scope: 'system/Observation.rs' });
    });

    it('decodes form-urlencoded ids and secrets in HTTP Basic (RFC 6749 §2.3.1)', async () => {
      const r = await post({ grant_type: 'client_credentials', scope: 'system/Patient.rs' }, { authorization: basic('odd id:é', 'p@ss:wörd+%') });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal((await tokenOf(r.body)).sub, 'odd id:é');
    });

    it('issues a token for client_secret_post', async () => {
      const r = await post({ grant_type: 'client_credentials', scope: 'system/Patient.read', client_id: 'secret-client', client_secret: secret });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.scope, 'system/Patient.read');
      assert.equal(r.audit.method, 'client_secret_post');
    });

    it('issues a token for private_key_jwt with a JWKS URL or an inline JWKS', async () => {
      const r = await post(await jwtForm({}, 'system/Observation.rs system/Patient.cruds'));
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.scope, 'system/Observation.rs system/Patient.cruds');
      assert.equal((await tokenOf(r.body)).tenant, 'practice-2');
      const inline = await post({ ...(await jwtForm({ clientId: 'inline-client' })), client_id: 'inline-client' });
      assert.equal(inline.status, 200, JSON.stringify(inline.body));
    });

    it('answers a wrong secret and an unknown client the same way, and never echoes the secret', async () => {
      const wrong = await post({ grant_type: 'client_credentials', scope: 'system/Observation.rs' }, { Authorization: basic('secret-client', 'guess') });
      const unknown = await post({ grant_type: 'client_credentials', scope: 'system/Observation.rs' }, { Authorization: basic('nobody', 'guess') });
      assert.equal(wrong.status, 401);
      assert.deepEqual(wrong.body, { error: 'invalid_client', error_description: 'Client authentication failed.' });
      assert.match(wrong.headers['WWW-Authenticate'] ?? '', /^Basic /);
      assert.deepEqual([unknown.status, unknown.body, unknown.headers], [wrong.status, wrong.body, wrong.headers]);
      assert.deepEqual([wrong.audit.reason, unknown.audit.reason], ['wrong-secret', 'unknown-client']);
      const viaPost = await post({ grant_type: 'client_credentials', client_id: 'secret-client', client_secret: 'guess' });
      const unknownPost = await post({ grant_type: 'client_credentials', client_id: 'nobody', client_secret: 'guess' });
      assert.deepEqual([viaPost.status, viaPost.body], [401, wrong.body]);
      assert.equal(viaPost.headers['WWW-Authenticate'], undefined, 'no Basic challenge when Basic was not used');
      assert.deepEqual([unknownPost.status, unknownPost.body, unknownPost.headers], [viaPost.status, viaPost.body, viaPost.headers]);
      const withSecret = await post({ grant_type: 'client_credentials', client_id: 'jwt-client', client_secret: secret });
      assert.ok(!JSON.stringify(withSecret.body).includes(secret));
    });

    it('refuses a secret from a client registered with keys, and an assertion from a client registered with a secret', async () => {
      const r1 = await post({ grant_type: 'client_credentials', scope: 'system/Observation.rs', client_id: 'inline-client', client_secret: secret });
      assert.deepEqual([r1.status, r1.body.error, r1.audit.reason], [401, 'invalid_client', 'client-uses-keys-not-secret']);
      const r2 = await post(await jwtForm({ clientId: 'secret-client' }));
      assert.deepEqual([r2.status, r2.body.error, r2.audit.reason], [401, 'invalid_client', 'client-uses-secret-not-keys']);
      assert.equal(r2.body.error_description, 'Client authentication failed.');
    });

    it('refuses two authentication methods at once, and none at all', async () => {
      const both = await post({ grant_type: 'client_credentials', client_id: 'secret-client', client_secret: secret }, { Authorization: basic('secret-client', secret) });
      assert.deepEqual([both.status, both.body.error], [400, 'invalid_request']);
      const jwtAndSecret = await post({ ...(await jwtForm()), client_secret: secret });
      assert.deepEqual([jwtAndSecret.status, jwtAndSecret.body.error], [400, 'invalid_request']);
      const none = await post({ grant_type: 'client_credentials', scope: 'system/*.rs' });
      assert.deepEqual([none.status, none.body.error], [401, 'invalid_client']);
      const bearer = await post({ grant_type: 'client_credentials' }, { Authorization: 'Bearer abc' });
      assert.deepEqual([bearer.status, bearer.body.error], [401, 'invalid_client']);
      assert.match(bearer.headers['WWW-Authenticate'] ?? '', /^Basic /);
    });

    it('refuses a missing or unsupported grant_type, a repeated parameter and a non-form body', async () => {
      const auth = { Authorization: basic('secret-client', secret) };
      const missing = await post({ scope: 'system/*.rs' }, auth);
      assert.deepEqual([missing.status, missing.body.error], [400, 'invalid_request']);
      const password = await post({ grant_type: 'password', scope: 'system/*.rs' }, auth);
      assert.deepEqual([password.status, password.body.error], [400, 'unsupported_grant_type']);
      const repeated = await post({ grant_type: 'client_credentials', scope: ['system/*.rs', 'system/*.*'] }, auth);
      assert.deepEqual([repeated.status, repeated.body.error], [400, 'invalid_request']);
      const json = await handleTokenRequest({ headers: { 'content-type': 'application/json', ...auth }, form: { grant_type: 'client_credentials' } }, deps);
      assert.deepEqual([json.status, json.body.error], [400, 'invalid_request']);
    });

    it('grants the registered subset when asked for more, and invalid_scope when nothing remains', async () => {
      const auth = { Authorization: basic('secret-client', secret) };
      const more = await post({ grant_type: 'client_credentials', scope: 'system/*.cruds openid offline_access' }, auth);
      assert.equal(more.status, 200, JSON.stringify(more.body));
      assert.equal(more.body.scope, 'system/Observation.rs system/Patient.rs');
      const claims = await tokenOf(more.body);
      assert.equal(claims.scope, 'system/Observation.rs system/Patient.rs');
      const outside = await post({ grant_type: 'client_credentials', scope: 'system/Condition.read system/Observation.c' }, auth);
      assert.deepEqual([outside.status, outside.body.error], [400, 'invalid_scope']);
      const patient = await post({ grant_type: 'client_credentials', scope: 'patient/Observation.rs' }, auth);
      assert.deepEqual([patient.status, patient.body.error], [400, 'invalid_scope'], 'no patient context in backend services');
      const none = await post({ grant_type: 'client_credentials' }, auth);
      assert.deepEqual([none.status, none.body.error], [400, 'invalid_scope']);
      const junk = await post({ grant_type: 'client_credentials', scope: 'system/Observation.xyz' }, auth);
      assert.match(String(junk.body.error_description), /Not understood: system\/Observation\.xyz/);
    });

    it('refuses a disabled client once it has authenticated', async () => {
      const r = await post({ grant_type: 'client_credentials', scope: 'system/*.rs' }, { Authorization: basic('disabled-client', secret) });
      assert.deepEqual([r.status, r.body.error], [400, 'unauthorized_client']);
      const wrong = await post({ grant_type: 'client_credentials', scope: 'system/*.rs' }, { Authorization: basic('disabled-client', 'guess') });
      assert.deepEqual([wrong.status, wrong.body.error], [401, 'invalid_client'], 'a wrong secret learns nothing about the client');
    });

    it('refuses replayed, far-future, forged, mis-addressed and iss≠sub assertions with invalid_client', async () => {
      const form = await jwtForm({ claims: { jti: 'one-time' } });
      assert.equal((await post(form)).status, 200);
      const replay = await post(form);
      assert.deepEqual([replay.status, replay.body.error], [401, 'invalid_client']);
      assert.match(String(replay.body.error_description), /jti was already used/);
      const far = await post(await jwtForm({ claims: { exp: NOW_S + 301 + 60 } }));
      assert.deepEqual([far.status, far.body.error, far.audit.reason], [401, 'invalid_client', 'assertion-exp-too-far']);
      const mixed = await post(await jwtForm({ claims: { sub: 'secret-client' } }));
      assert.deepEqual([mixed.status, mixed.audit.reason], [401, 'assertion-iss-sub-mismatch']);
      const aud = await post(await jwtForm({ claims: { aud: FHIR_BASE } }));
      assert.deepEqual([aud.status, aud.audit.reason], [401, 'assertion-wrong-audience']);
      const impostor = await clientKey();
      const forged = await post({ ...(await jwtForm()), client_assertion: await assertion(impostor.privateKey, { clientId: 'jwt-client' }) });
      assert.deepEqual([forged.status, forged.body.error_description], [401, 'Client authentication failed.']);
      assert.match(forged.audit.reason, /^assertion-bad-signature/);
      const unknown = await post(await jwtForm({ clientId: 'nobody' }));
      assert.deepEqual([unknown.status, unknown.body], [forged.status, forged.body], 'unknown client and forged signature look alike');
      const mismatch = await post({ ...(await jwtForm()), client_id: 'inline-client' });
      assert.deepEqual([mismatch.status, mismatch.audit.reason], [401, 'client-id-mismatch']);
      const wrongType = await post({ ...(await jwtForm()), client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:saml2-bearer' });
      assert.deepEqual([wrongType.status, wrongType.body.error], [400, 'invalid_request']);
    });

    it('gives a client with a malformed JWKS at its URL only the generic answer, and the reason to the log', async () => {
      clients.set('jwt-client', { ...(clients.get('jwt-client') as RegisteredClient), jwksUrl: server.json('/broken.json', { keys: [{ kty: 'EC', kid: 'client-key-1', crv: 'P-384', x: 'a', y: 'b', d: 'c' }] }) });
      const r = await post(await jwtForm());
      assert.deepEqual([r.status, r.body.error_description], [401, 'Client authentication failed.']);
      assert.match(r.audit.reason, /^assertion-jwks-malformed: .*private key material/);
    });
  });
});
