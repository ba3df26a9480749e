/**
 * SMART Backend Services over HTTP, against the real app and database: the token endpoint with
 * each client authentication method (private_key_jwt with the client's JWKS served on loopback),
 * the bearer check in front of /fhir and /met/v1, and scopes enforced per interaction, per Bundle
 * entry and on _include. Each refused request is checked to have written nothing.
 * (The token, assertion and scope rules themselves: test/auth-core.test.ts.)
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT, type JWK } from 'jose';
import supertest from 'supertest';
import { generateSigningJwk, hashSecret, issueAccessToken, newClientId, newClientSecret, signingKeyFromJwk } from '../src/auth/index.js';
import { ClientStore } from '../src/store/clients.js';
import { OutboundKeys } from '../src/ehr/outbound-keys.js';
import { createTenant } from '../src/store/tenants.js';
import { BASE_URL, FHIR_JSON, TEST_TENANT, testContext, tokenFor } from './helpers.js';

const RUN = randomUUID().slice(0, 8);
const TOKEN_URL = `${BASE_URL}/auth/token`;

async function app() {
  return supertest((await testContext()).app);
}

async function registerSecretClient(scopes: string): Promise<{ clientId: string; secret: string }> {
  const { db } = await testContext();
  const clients = new ClientStore(db.pool);
  const tenant = `auth-${RUN}`;
  if (!(await clients.tenantExists(tenant))) await clients.createTenant(tenant);
  const clientId = newClientId();
  const secret = newClientSecret();
  await clients.createClient({ clientId, tenant, name: `secret-${clientId}`, secretHash: await hashSecret(secret), scopes });
  return { clientId, secret };
}

async function exists(path: string): Promise<boolean> {
  const res = await (await app()).get(`/fhir/${path}`).auth((await testContext()).token, { type: 'bearer' });
  return res.status === 200;
}

describe('authentication and scopes over HTTP', function () {
  this.timeout(60_000);

  describe('the token endpoint', () => {
    it('issues a token for client_secret_basic and client_secret_post, usable on /fhir', async () => {
      const { clientId, secret } = await registerSecretClient('system/Basic.cruds');
      const basic = await (await app())
        .post('/auth/token')
        .auth(encodeURIComponent(clientId), encodeURIComponent(secret))
        .type('form')
        .send({ grant_type: 'client_credentials', scope: 'system/Basic.rs' });
      assert.equal(basic.status, 200, basic.text);
      assert.equal(basic.headers['cache-control'], 'no-store');
      const body = basic.body as { access_token: string; token_type: string; expires_in: number; scope: string };
      assert.equal(body.token_type, 'Bearer');
      assert.equal(body.scope, 'system/Basic.rs');
      assert.ok(body.expires_in > 0 && body.expires_in <= 300);
      const search = await (await app()).get('/fhir/Basic?_count=1').auth(body.access_token, { type: 'bearer' });
      assert.equal(search.status, 200);
      const write = await (await app()).post('/fhir/Basic').auth(body.access_token, { type: 'bearer' }).set('Content-Type', FHIR_JSON).send({ resourceType: 'Basic', code: { text: RUN } });
      assert.equal(write.status, 403, 'the token was asked for read and search only');

      const post = await (await app()).post('/auth/token').type('form').send({ grant_type: 'client_credentials', scope: 'system/*.*', client_id: clientId, client_secret: secret });
      assert.equal(post.status, 200, post.text);
      assert.equal((post.body as { scope: string }).scope, 'system/Basic.cruds', 'asking for more than registered grants what is registered');
    });

    it('refuses a wrong secret and an unknown client alike, with invalid_client', async () => {
      const { clientId } = await registerSecretClient('system/Basic.rs');
      const wrong = await (await app()).post('/auth/token').type('form').send({ grant_type: 'client_credentials', scope: 'system/Basic.rs', client_id: clientId, client_secret: 'nope' });
      const unknown = await (await app()).post('/auth/token').type('form').send({ grant_type: 'client_credentials', scope: 'system/Basic.rs', client_id: 'no-such-client', client_secret: 'nope' });
      assert.equal(wrong.status, 401);
      assert.deepEqual(wrong.body, unknown.body);
      assert.equal((wrong.body as { error: string }).error, 'invalid_client');
    });

    describe('private_key_jwt with the client JWKS served on loopback', () => {
      let server: Server;
      let jwksUrl: string;
      let privateKey: CryptoKey;
      let publicJwk: JWK;

      before(async () => {
        const pair = await generateKeyPair('ES384', { extractable: true });
        privateKey = pair.privateKey;
        publicJwk = { ...(await exportJWK(pair.publicKey)), kid: `k-${RUN}`, alg: 'ES384', use: 'sig' };
        server = createServer((_req, res) => {
          res.setHeader('content-type', 'application/json');
          res.end(JSON.stringify({ keys: [publicJwk] }));
        });
        await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
        jwksUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`;
      });
      after(() => new Promise<void>((resolve) => server.close(() => resolve())));

      async function assertion(clientId: string, claims: { aud?: string; exp?: number; jti?: string } = {}): Promise<string> {
        const now = Math.floor(Date.now() / 1000);
        return new SignJWT({ jti: claims.jti ?? randomUUID() })
          .setProtectedHeader({ alg: 'ES384', kid: publicJwk.kid, typ: 'JWT' })
          .setIssuer(clientId)
          .setSubject(clientId)
          .setAudience(claims.aud ?? TOKEN_URL)
          .setExpirationTime(claims.exp ?? now + 240)
          .sign(privateKey);
      }

      it('issues a token for a signed assertion, once: a replayed jti is refused', async () => {
        const { db } = await testContext();
        const clients = new ClientStore(db.pool);
        const tenant = `auth-${RUN}`;
        if (!(await clients.tenantExists(tenant))) await clients.createTenant(tenant);
        const clientId = newClientId();
        await clients.createClient({ clientId, tenant, name: `jwks-${clientId}`, jwksUrl, scopes: 'system/Observation.rs' });
        const form = (jwt: string) => ({
          grant_type: 'client_credentials',
          scope: 'system/Observation.rs',
          client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
          client_assertion: jwt,
        });
        const jwt = await assertion(clientId);
        const first = await (await app()).post('/auth/token').type('form').send(form(jwt));
        assert.equal(first.status, 200, first.text);
        const token = (first.body as { access_token: string }).access_token;
        assert.equal((await (await app()).get('/fhir/Observation?_count=1').auth(token, { type: 'bearer' })).status, 200);
        const replay = await (await app()).post('/auth/token').type('form').send(form(jwt));
        assert.equal(replay.status, 401, replay.text);
        const wrongAudience = await (await app()).post('/auth/token').type('form').send(form(await assertion(clientId, { aud: 'http://elsewhere/token' })));
        assert.equal(wrongAudience.status, 401);
        const tooLong = await (await app()).post('/auth/token').type('form').send(form(await assertion(clientId, { exp: Math.floor(Date.now() / 1000) + 600 })));
        assert.equal(tooLong.status, 401);
      });
    });

    it('publishes its keys and the SMART configuration without a token', async () => {
      const config = await (await app()).get('/fhir/.well-known/smart-configuration');
      assert.equal(config.status, 200);
      const c = config.body as { token_endpoint: string; jwks_uri: string; grant_types_supported: string[]; token_endpoint_auth_methods_supported: string[] };
      assert.equal(c.token_endpoint, TOKEN_URL);
      assert.deepEqual(c.grant_types_supported, ['client_credentials']);
      assert.ok(c.token_endpoint_auth_methods_supported.includes('private_key_jwt'));
      const jwks = await (await app()).get('/auth/jwks');
      assert.equal(jwks.status, 200);
      const keys = (JSON.parse(jwks.text) as { keys: Record<string, unknown>[] }).keys;
      assert.equal(keys.length, 1);
      assert.equal(keys[0]?.d, undefined, 'no private part');
    });
  });

  describe("tenants' keys for client assertions to EHRs", () => {
    it('publishes each tenant\'s public key at an unguessable JWKS URL of its own, and nothing at any other', async () => {
      const { db, ctx } = await testContext();
      const other = `keys-${RUN}`;
      await createTenant(db, other);
      const keys = ctx.outboundKeys as OutboundKeys;
      const mine = await keys.forTenant(TEST_TENANT);
      const theirs = await keys.forTenant(other);
      assert.notEqual(mine.kid, theirs.kid);
      assert.notEqual(mine.jwksUrl, theirs.jwksUrl);
      for (const key of [mine, theirs]) {
        assert.match(key.jwksUrl, new RegExp(`^${BASE_URL}/auth/jwks/[A-Za-z0-9_-]{22}$`));
        const id = key.jwksUrl.slice(`${BASE_URL}/auth/jwks/`.length);
        assert.ok(!id.includes(TEST_TENANT) && !id.includes(other), 'the URL names no tenant');
        const res = await (await app()).get(key.jwksUrl.slice(BASE_URL.length)).expect(200);
        const published = JSON.parse(res.text) as { keys: JWK[] };
        assert.equal(published.keys.length, 1);
        assert.equal(published.keys[0]?.kid, key.kid);
        assert.equal(published.keys[0]?.d, undefined, 'no private part');
        assert.deepEqual(published, key.jwks);
      }
      // The same key again, from the database, for a fresh reader (another process, a restart).
      const again = await new OutboundKeys(db.pool, BASE_URL).forTenant(other);
      assert.equal(again.kid, theirs.kid);
      assert.equal(again.jwksUrl, theirs.jwksUrl);
      // Not the server's own key, which signs access tokens.
      const server = JSON.parse((await (await app()).get('/auth/jwks').expect(200)).text) as { keys: JWK[] };
      assert.ok(!server.keys.some((k) => k.kid === mine.kid || k.kid === theirs.kid));
      for (const path of ['/auth/jwks/AAAAAAAAAAAAAAAAAAAAAA', '/auth/jwks/not-an-id', `/auth/jwks/${other}`]) {
        const missing = await (await app()).get(path);
        assert.equal(missing.status, 404, path);
        assert.equal((missing.body as { resourceType?: string }).resourceType, 'OperationOutcome');
      }
    });
  });

  describe("rotating a tenant's key for EHRs", () => {
    /** What /auth/jwks/<id> serves, as a server process reading it now does (no cache). */
    const publishedKids = async (url: string): Promise<string[]> => {
      const { db } = await testContext();
      const jwks = await new OutboundKeys(db.pool, BASE_URL, 0).jwks(url.slice(`${BASE_URL}/auth/jwks/`.length));
      return (jwks?.keys ?? []).map((k) => k.kid as string);
    };

    it('publishes the new key beside the old at once, signs with it once EHRs have read it, then stops publishing the old', async () => {
      const { db } = await testContext();
      const tenant = `rotate-${RUN}`;
      await createTenant(db, tenant);
      const admin = new OutboundKeys(db.pool, BASE_URL, 0);
      const server = new OutboundKeys(db.pool, BASE_URL, 0); // another process, reading the key on every use
      const cached = new OutboundKeys(db.pool, BASE_URL); // one that keeps it for a minute
      const before = await admin.forTenant(tenant);
      assert.equal((await cached.forTenant(tenant)).kid, before.kid);

      const during = await admin.rotate(tenant);
      assert.equal(during.kid, before.kid, 'the old key still signs');
      assert.equal(during.jwksUrl, before.jwksUrl, 'the EHR keeps the URL it registered');
      const published = await publishedKids(before.jwksUrl);
      const served = JSON.parse((await (await app()).get(before.jwksUrl.slice(BASE_URL.length)).expect(200)).text) as { keys: JWK[] };
      assert.deepEqual(served.keys.map((k) => k.kid), published, 'as the route serves it');
      assert.equal(published.length, 2);
      assert.equal(published[0], before.kid);
      const next = published[1] as string;
      assert.notEqual(next, before.kid);

      // The rotation delay passes (every EHR has read the JWK Set again by then).
      await db.pool.query("UPDATE tenant_outbound_key SET next_from = now() - interval '1 second' WHERE tenant = $1", [tenant]);
      assert.equal((await server.forTenant(tenant)).kid, next, 'the new key signs');
      assert.equal((await cached.forTenant(tenant)).kid, before.kid, 'a process that read the key less than a minute ago still uses the old one…');
      assert.deepEqual(await publishedKids(before.jwksUrl), [next, before.kid], '…which is still published');
      await db.pool.query("UPDATE tenant_outbound_key SET previous_until = now() - interval '1 second' WHERE tenant = $1", [tenant]);
      assert.deepEqual(await publishedKids(before.jwksUrl), [next], 'then the old key is published no more');
    });

    it('with --now, replaces every key at once (a key that may have leaked)', async () => {
      const { db } = await testContext();
      const tenant = `rotate-now-${RUN}`;
      await createTenant(db, tenant);
      const keys = new OutboundKeys(db.pool, BASE_URL, 0);
      const before = await keys.forTenant(tenant);
      await keys.rotate(tenant); // a rotation under way is dropped too
      const after = await keys.rotate(tenant, { now: true });
      assert.notEqual(after.kid, before.kid);
      assert.deepEqual(await publishedKids(after.jwksUrl), [after.kid]);
    });
  });

  describe('access tokens', () => {
    it('refuses missing, expired, forged, alg:none and wrong-audience tokens with 401, and writes nothing', async () => {
      const id = `auth-${RUN}-refused`;
      const body = { resourceType: 'Basic', id, code: { text: 'must not exist' } };
      const other = await signingKeyFromJwk(await generateSigningJwk('ES384'));
      const forged = (await issueAccessToken(other, { clientId: 'x', tenant: 'test', scope: 'system/*.*' }, { issuer: BASE_URL, audience: `${BASE_URL}/fhir` })).accessToken;
      const header = Buffer.from(JSON.stringify({ alg: 'none', typ: 'at+jwt' })).toString('base64url');
      const claims = Buffer.from(JSON.stringify({ iss: BASE_URL, aud: `${BASE_URL}/fhir`, sub: 'x', scope: 'system/*.*', tenant: 'test', exp: 9_999_999_999 })).toString('base64url');
      const cases: [string, string | undefined][] = [
        ['missing', undefined],
        ['expired', await tokenFor('system/*.*', { lifetimeSeconds: -120 })],
        ['forged', forged],
        ['alg none', `${header}.${claims}.`],
        ['wrong audience', (await issueAccessToken((await testContext()).auth.signingKey, { clientId: 'x', tenant: 'test', scope: 'system/*.*' }, { issuer: BASE_URL, audience: 'http://other/fhir' })).accessToken],
      ];
      for (const [what, token] of cases) {
        const req = (await app()).put(`/fhir/Basic/${id}`).set('Content-Type', FHIR_JSON);
        const res = await (token ? req.auth(token, { type: 'bearer' }) : req).send(body);
        assert.equal(res.status, 401, what);
        assert.match(String(res.headers['www-authenticate']), /^Bearer realm="fhir"/, what);
      }
      const met = await (await app()).post('/met/v1/clients').send({});
      assert.equal(met.status, 401, 'the MET API needs a token too');
      assert.equal(await exists(`Basic/${id}`), false, 'nothing was written');
    });
  });

  describe('scopes', () => {
    it('are enforced per interaction and resource type', async () => {
      const readObs = await tokenFor('system/Observation.rs');
      assert.equal((await (await app()).get('/fhir/Observation?_count=1').auth(readObs, { type: 'bearer' })).status, 200);
      assert.equal((await (await app()).get('/fhir/Patient?_count=1').auth(readObs, { type: 'bearer' })).status, 403);
      assert.equal((await (await app()).get('/fhir/_history').auth(readObs, { type: 'bearer' })).status, 403, 'system history needs a wildcard');
      const id = `auth-${RUN}-obs`;
      const write = await (await app())
        .put(`/fhir/Observation/${id}`)
        .auth(readObs, { type: 'bearer' })
        .set('Content-Type', FHIR_JSON)
        .send({ resourceType: 'Observation', id, status: 'final', code: { text: 'x' } });
      assert.equal(write.status, 403);
      assert.equal(await exists(`Observation/${id}`), false);
      const v1 = await tokenFor('system/Observation.read');
      assert.equal((await (await app()).get('/fhir/Observation?_count=1').auth(v1, { type: 'bearer' })).status, 200, 'SMART v1 read is read and search');
    });

    it('leave out _include-d resources of types the token may not read', async () => {
      const agent = supertest.agent((await testContext()).app).auth((await testContext()).token, { type: 'bearer' });
      const pid = `auth-${RUN}-p`;
      const oid = `auth-${RUN}-o`;
      await agent.put(`/fhir/Patient/${pid}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', id: pid });
      await agent.put(`/fhir/Observation/${oid}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Observation', id: oid, status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${pid}` } });
      const types = async (token: string) => {
        const res = await (await app()).get(`/fhir/Observation?_id=${oid}&_include=Observation:subject`).auth(token, { type: 'bearer' });
        assert.equal(res.status, 200);
        return ((res.body as { entry?: { resource: { resourceType: string } }[] }).entry ?? []).map((e) => e.resource.resourceType);
      };
      assert.deepEqual(await types(await tokenFor('system/Observation.rs system/Patient.r')), ['Observation', 'Patient']);
      assert.deepEqual(await types(await tokenFor('system/Observation.rs')), ['Observation']);
    });

    it('are checked per Bundle entry: a transaction with one forbidden entry writes nothing', async () => {
      const token = await tokenFor('system/Observation.cruds');
      const pid = `auth-${RUN}-tx-p`;
      const oid = `auth-${RUN}-tx-o`;
      const bundle = {
        resourceType: 'Bundle',
        type: 'transaction',
        entry: [
          { resource: { resourceType: 'Observation', id: oid, status: 'final', code: { text: 'x' } }, request: { method: 'PUT', url: `Observation/${oid}` } },
          { resource: { resourceType: 'Patient', id: pid }, request: { method: 'PUT', url: `Patient/${pid}` } },
        ],
      };
      const tx = await (await app()).post('/fhir').auth(token, { type: 'bearer' }).set('Content-Type', FHIR_JSON).send(bundle);
      assert.equal(tx.status, 403, tx.text);
      assert.match(tx.text, /Bundle\.entry\[1\]/);
      assert.equal(await exists(`Observation/${oid}`), false, 'rolled back');
      const batch = await (await app()).post('/fhir').auth(token, { type: 'bearer' }).set('Content-Type', FHIR_JSON).send({ ...bundle, type: 'batch' });
      assert.equal(batch.status, 200);
      const statuses = (batch.body as { entry: { response: { status: string } }[] }).entry.map((e) => e.response.status);
      assert.match(statuses[0] ?? '', /^201/);
      assert.match(statuses[1] ?? '', /^403/);
      assert.equal(await exists(`Patient/${pid}`), false);
    });

    it('guard the MET API: pushing needs create and update on what a push writes', async () => {
      const res = await (await app())
        .post('/met/v1/clients')
        .auth(await tokenFor('system/Patient.cu'), { type: 'bearer' })
        .send({ id: `auth-${RUN}`, name: { family: 'X' } });
      assert.equal(res.status, 403, res.text);
    });
  });
});
