/**
 * The request limits and security headers as the app wires them (src/http/app.ts), over HTTP:
 * one rate budget per client across /fhir and /met/v1, token requests limited per address, the
 * length of the request target, and the headers on every answer. (The middlewares themselves:
 * test/limits.test.ts.)
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import supertest from 'supertest';
import { appWith, tokenFor } from './helpers.js';

const RUN = randomUUID().slice(0, 8);

describe('request limits in the app', function () {
  this.timeout(60_000);

  it('gives each client one budget across /fhir and /met/v1: over it, 429 with Retry-After and nothing done', async () => {
    const app = await appWith({ limits: { maxQueryBytes: 8192, perMinute: 1, burst: 3, tokenPerMinute: 0 } });
    const first = supertest.agent(app).auth(await tokenFor('system/*.*', { clientId: `one-${RUN}` }), { type: 'bearer' });
    const second = supertest.agent(app).auth(await tokenFor('system/*.*', { clientId: `two-${RUN}` }), { type: 'bearer' });
    await first.get('/fhir/Basic?_count=1').expect(200);
    await first.get('/fhir/Basic?_count=1').expect(200);
    await first.post('/met/v1/nothing-here').send({}).expect(404);
    const refused = await first.post('/fhir/Basic').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Basic', code: { text: `limited-${RUN}` } });
    assert.equal(refused.status, 429, refused.text);
    assert.ok(Number(refused.headers['retry-after']) >= 1);
    assert.equal((refused.body as { issue: { code: string }[] }).issue[0]?.code, 'throttled');
    // Another client has its own budget; and the refused create wrote nothing.
    const found = await second.get(`/fhir/Basic?code:text=limited-${RUN}`).expect(200);
    assert.deepEqual((found.body as { entry?: unknown[] }).entry ?? [], []);
    // /fhir/metadata needs no token and is not counted.
    await supertest(app).get('/fhir/metadata').expect(200);
  });

  it('limits token requests per address', async () => {
    const app = await appWith({ limits: { maxQueryBytes: 8192, perMinute: 0, burst: 1, tokenPerMinute: 2 } });
    const ask = () => supertest(app).post('/auth/token').type('form').send({ grant_type: 'client_credentials', client_id: 'nobody', client_secret: 'x' });
    assert.equal((await ask()).status, 401);
    assert.equal((await ask()).status, 401);
    const third = await ask();
    assert.equal(third.status, 429, third.text);
    assert.ok(Number(third.headers['retry-after']) >= 1);
  });

  it('refuses a request target over the limit with 400 query-too-long, without echoing it', async () => {
    const app = await appWith({ limits: { maxQueryBytes: 512, perMinute: 0, burst: 1, tokenPerMinute: 0 } });
    const http = supertest.agent(app).auth(await tokenFor('system/*.*'), { type: 'bearer' });
    const secret = `family=${'x'.repeat(600)}`;
    const res = await http.get(`/fhir/Patient?${secret}`);
    assert.equal(res.status, 400);
    assert.equal((res.body as { issue: { details: { coding: { code: string }[] } }[] }).issue[0]?.details.coding[0]?.code, 'query-too-long');
    assert.ok(!res.text.includes('xxxxxxxxxx'));
    await http.get('/fhir/Patient?family=short').expect(200);
  });

  it('sends security headers and no-store on every answer, errors included', async () => {
    const app = await appWith({});
    for (const res of [await supertest(app).get('/fhir/metadata'), await supertest(app).get('/fhir/Patient'), await supertest(app).get('/healthz')]) {
      assert.equal(res.headers['x-content-type-options'], 'nosniff');
      assert.equal(res.headers['x-frame-options'], 'DENY');
      assert.match(res.headers['content-security-policy'] ?? '', /default-src 'none'/);
      assert.match(res.headers['strict-transport-security'] ?? '', /max-age=/);
      assert.equal(res.headers['cache-control'], 'no-store');
      assert.equal(res.headers['x-powered-by'], undefined);
    }
  });
});
