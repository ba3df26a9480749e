/**
 * The HTTP hardening middlewares (src/http/limits.ts) on a minimal Express app whose error handler
 * sends OperationOutcomes the way the server's does (sendOutcome).
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import express, { type Express, type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import supertest from 'supertest';
import { toFhirError } from '../src/fhir/errors.js';
import { callerKey, noStore, queryLengthLimit, rateLimit, securityHeaders } from '../src/http/limits.js';
import { sendOutcome } from '../src/http/send.js';
import { assertOutcome } from './helpers.js';

/** An app with these middlewares in front of GET /fhir/Patient, answering errors as OperationOutcomes. */
function appWith(...middlewares: RequestHandler[]): Express {
  const app = express();
  app.disable('x-powered-by');
  app.use((_req: Request, res: Response, next: NextFunction) => {
    res.locals.requestId = 'limits-test';
    next();
  });
  for (const middleware of middlewares) app.use(middleware);
  app.get('/fhir/Patient', (_req: Request, res: Response) => {
    res.type('application/fhir+json').send(JSON.stringify({ resourceType: 'Bundle', type: 'searchset', total: 0 }));
  });
  app.use((error: unknown, _req: Request, res: Response, _next: NextFunction) => {
    sendOutcome(res, toFhirError(error));
  });
  return app;
}

/** The client is named by the X-Client header in these tests. */
const byHeader = (req: Request): string | undefined => req.get('x-client');

/** A clock the test moves by hand. */
function manualClock(): { now: () => number; advance: (ms: number) => void } {
  let t = Date.UTC(2025, 0, 1);
  return { now: () => t, advance: (ms) => (t += ms) };
}

async function statuses(app: Express, client: string, count: number): Promise<number[]> {
  const result: number[] = [];
  for (let i = 0; i < count; i++) result.push((await supertest(app).get('/fhir/Patient').set('X-Client', client)).status);
  return result;
}

const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'none';frame-ancestors 'none'",
  'strict-transport-security': 'max-age=31536000; includeSubDomains',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cross-origin-resource-policy': 'same-origin',
  'x-frame-options': 'DENY',
  'cache-control': 'no-store',
  pragma: 'no-cache',
};

function assertSecurityHeaders(headers: Record<string, string>): void {
  for (const [name, value] of Object.entries(SECURITY_HEADERS)) assert.equal(headers[name], value, name);
  assert.equal(headers['x-powered-by'], undefined);
}

describe('securityHeaders and noStore', () => {
  it('sends the security headers of a JSON API and forbids caching on success', async () => {
    const res = await supertest(appWith(securityHeaders(), noStore())).get('/fhir/Patient');
    assert.equal(res.status, 200);
    assertSecurityHeaders(res.headers);
  });

  it('keeps them on error outcomes', async () => {
    const res = await supertest(appWith(securityHeaders(), noStore(), queryLengthLimit(20))).get('/fhir/Patient?name=a-rather-long-name');
    assert.equal(res.status, 400);
    assertSecurityHeaders(res.headers);
  });

  it('lets a later route set its own Cache-Control', async () => {
    const app = appWith(noStore());
    app.get('/jwks', (_req: Request, res: Response) => {
      res.set('Cache-Control', 'public, max-age=300').json({ keys: [] });
    });
    const res = await supertest(app).get('/jwks');
    assert.equal(res.headers['cache-control'], 'public, max-age=300');
  });
});

describe('queryLengthLimit', () => {
  // '/fhir/Patient?name=' is 19 bytes.
  it('accepts a request target of exactly the limit', async () => {
    const res = await supertest(appWith(queryLengthLimit(24))).get('/fhir/Patient?name=abcde');
    assert.equal(res.status, 200);
  });

  it('returns Bad Request with too-long on a request target one byte over the limit, naming the limit', async () => {
    const res = await supertest(appWith(queryLengthLimit(24))).get('/fhir/Patient?name=abcdef');
    assert.equal(res.status, 400);
    assert.match(res.headers['content-type'] ?? '', /^application\/fhir\+json/);
    assertOutcome(res.body, [
      {
        code: 'too-long',
        detail: 'query-too-long',
        diagnostics: 'The request target (path and query) is 25 bytes long; this server accepts at most 24. Send a long search as POST [type]/_search with a form body',
      },
    ]);
  });

  it('counts the bytes as sent, percent-encoding included', async () => {
    const res = await supertest(appWith(queryLengthLimit(24))).get('/fhir/Patient?name=%C3%A9');
    assert.equal(res.status, 400);
    assert.match((res.body as { issue: { diagnostics: string }[] }).issue[0]?.diagnostics ?? '', /is 25 bytes long/);
  });

  it('measures the whole target even behind a mounted router', async () => {
    const router = express.Router();
    router.use(queryLengthLimit(24));
    router.get('/Patient', (_req: Request, res: Response) => {
      res.json({});
    });
    const app = express();
    app.use('/fhir', router);
    app.use((error: unknown, _req: Request, res: Response, _next: NextFunction) => sendOutcome(res, toFhirError(error)));
    // req.url inside the router is '/Patient?name=abcdef' (20 bytes); the target is 25.
    assert.equal((await supertest(app).get('/fhir/Patient?name=abcdef')).status, 400);
    assert.equal((await supertest(app).get('/fhir/Patient?name=abcde')).status, 200);
  });

  it('refuses a limit that is not a positive whole number', () => {
    assert.throws(() => queryLengthLimit(0), RangeError);
    assert.throws(() => queryLengthLimit(1.5), RangeError);
  });
});

describe('rateLimit', () => {
  it('returns Too Many Requests with Retry-After and a throttled outcome once a client has spent its burst', async () => {
    const clock = manualClock();
    const app = appWith(securityHeaders(), noStore(), rateLimit({ perMinute: 6, burst: 2, keyOf: byHeader, now: clock.now }));
    assert.deepEqual(await statuses(app, 'a', 2), [200, 200]);
    const res = await supertest(app).get('/fhir/Patient').set('X-Client', 'a');
    assert.equal(res.status, 429);
    assert.equal(res.headers['retry-after'], '10');
    assert.match(res.headers['content-type'] ?? '', /^application\/fhir\+json/);
    assertOutcome(res.body, [
      { code: 'throttled', detail: 'rate-limited', diagnostics: 'This client may send 6 requests per minute, at most 2 at once; retry after 10 s' },
    ]);
    assertSecurityHeaders(res.headers);
  });

  it('gives each client its own budget', async () => {
    const clock = manualClock();
    const app = appWith(rateLimit({ perMinute: 6, burst: 2, keyOf: byHeader, now: clock.now }));
    assert.deepEqual(await statuses(app, 'a', 3), [200, 200, 429]);
    assert.deepEqual(await statuses(app, 'b', 3), [200, 200, 429]);
    assert.deepEqual(await statuses(app, 'a', 1), [429]);
  });

  it('refills at the per-minute rate, and a client recovers its whole burst after idling', async () => {
    const clock = manualClock();
    const app = appWith(rateLimit({ perMinute: 6, burst: 2, keyOf: byHeader, now: clock.now }));
    assert.deepEqual(await statuses(app, 'a', 3), [200, 200, 429]);
    clock.advance(9_999);
    assert.deepEqual(await statuses(app, 'a', 1), [429]);
    clock.advance(1);
    assert.deepEqual(await statuses(app, 'a', 2), [200, 429]);
    clock.advance(60_000);
    assert.deepEqual(await statuses(app, 'a', 3), [200, 200, 429]);
  });

  it('does not charge refused requests, so Retry-After is the real wait', async () => {
    const clock = manualClock();
    const app = appWith(rateLimit({ perMinute: 6, burst: 1, keyOf: byHeader, now: clock.now }));
    assert.deepEqual(await statuses(app, 'a', 1), [200]);
    clock.advance(4_000);
    const refused = await supertest(app).get('/fhir/Patient').set('X-Client', 'a');
    assert.equal(refused.status, 429);
    assert.equal(refused.headers['retry-after'], '6');
    assert.deepEqual(await statuses(app, 'a', 5), [429, 429, 429, 429, 429]);
    clock.advance(6_000);
    assert.deepEqual(await statuses(app, 'a', 2), [200, 429]);
  });

  it('allows a burst of perMinute when no burst is given', async () => {
    const clock = manualClock();
    const app = appWith(rateLimit({ perMinute: 3, keyOf: byHeader, now: clock.now }));
    assert.deepEqual(await statuses(app, 'a', 4), [200, 200, 200, 429]);
  });

  it('sends Retry-After of at least one second at high rates', async () => {
    const clock = manualClock();
    const app = appWith(rateLimit({ perMinute: 60_000, burst: 1, keyOf: byHeader, now: clock.now }));
    assert.deepEqual(await statuses(app, 'a', 1), [200]);
    const res = await supertest(app).get('/fhir/Patient').set('X-Client', 'a');
    assert.equal(res.status, 429);
    assert.equal(res.headers['retry-after'], '1');
  });

  it('does not limit requests that have no key', async () => {
    const clock = manualClock();
    const app = appWith(rateLimit({ perMinute: 6, burst: 1, keyOf: byHeader, now: clock.now }));
    const results = await Promise.all(Array.from({ length: 5 }, () => supertest(app).get('/fhir/Patient')));
    assert.deepEqual(
      results.map((r) => r.status),
      [200, 200, 200, 200, 200],
    );
  });

  it('is off when perMinute is 0 or less', async () => {
    for (const perMinute of [0, -1]) {
      const app = appWith(rateLimit({ perMinute, keyOf: byHeader }));
      assert.deepEqual(await statuses(app, 'a', 5), [200, 200, 200, 200, 200]);
    }
  });

  it('works on the real clock: a client recovers once its window has passed', async () => {
    // 120 per minute: one token every 500 ms.
    const app = appWith(rateLimit({ perMinute: 120, burst: 1, keyOf: byHeader }));
    assert.deepEqual(await statuses(app, 'a', 1), [200]);
    const refused = await supertest(app).get('/fhir/Patient').set('X-Client', 'a');
    assert.equal(refused.status, 429);
    assert.equal(refused.headers['retry-after'], '1');
    await sleep(600);
    assert.deepEqual(await statuses(app, 'a', 1), [200]);
  });

  it('keys on the authenticated client with callerKey', async () => {
    const clock = manualClock();
    const app = express();
    app.use((req: Request, res: Response, next: NextFunction) => {
      res.locals.requestId = 'limits-test';
      const client = req.get('x-client');
      if (client) res.locals.caller = { clientId: client, tenant: 't', scopes: [] };
      next();
    });
    app.use(rateLimit({ perMinute: 6, burst: 1, keyOf: callerKey, now: clock.now }));
    app.get('/fhir/Patient', (_req: Request, res: Response) => {
      res.json({});
    });
    app.use((error: unknown, _req: Request, res: Response, _next: NextFunction) => sendOutcome(res, toFhirError(error)));
    assert.deepEqual(await statuses(app, 'a', 2), [200, 429]);
    assert.deepEqual(await statuses(app, 'b', 1), [200]);
    assert.equal((await supertest(app).get('/fhir/Patient')).status, 200);
  });

  it('refuses a burst that is not a positive whole number, and a perMinute that is not a number', () => {
    assert.throws(() => rateLimit({ perMinute: 60, burst: 0, keyOf: byHeader }), RangeError);
    assert.throws(() => rateLimit({ perMinute: 60, burst: 2.5, keyOf: byHeader }), RangeError);
    assert.throws(() => rateLimit({ perMinute: Number.NaN, keyOf: byHeader }), RangeError);
  });
});
