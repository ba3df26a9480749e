/**
 * HTTP hardening in front of the API, each an Express middleware that answers a refusal by passing
 * a FhirError to next(), so the app's error handler sends the OperationOutcome:
 *  - securityHeaders: helmet, set for a JSON API that serves no HTML;
 *  - noStore: responses (PHI) must not be kept by browsers or intermediaries;
 *  - queryLengthLimit: 400 `query-too-long` for an overlong request target;
 *  - rateLimit: 429 `rate-limited` with Retry-After, a token bucket per client (express-rate-limit
 *    does the middleware work; its own MemoryStore counts fixed windows, which cannot express a
 *    burst and let a client send twice its rate across a window boundary, so the bucket is ours).
 * https://cheatsheetseries.owasp.org/cheatsheets/REST_Security_Cheat_Sheet.html#security-headers
 * https://www.rfc-editor.org/rfc/rfc6585#section-4 (429), https://www.rfc-editor.org/rfc/rfc9110#section-10.2.3 (Retry-After)
 */
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { rateLimit as expressRateLimit, type ClientRateLimitInfo, type RateLimitInfo, type Store } from 'express-rate-limit';
import helmet from 'helmet';
import { ERROR_CODES } from '../fhir/error-codes.js';
import { FhirError, fhirError } from '../fhir/errors.js';
import type { Caller } from './auth.js';

/** Security headers for a JSON API: nothing may be loaded, framed or sniffed; HTTPS only. */
export function securityHeaders(): RequestHandler {
  return helmet({
    contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
    strictTransportSecurity: { maxAge: 365 * 24 * 60 * 60, includeSubDomains: true },
    xContentTypeOptions: true,
    referrerPolicy: { policy: 'no-referrer' },
    crossOriginResourcePolicy: { policy: 'same-origin' },
    xFrameOptions: { action: 'deny' },
  });
}

/** `Cache-Control: no-store` (and `Pragma: no-cache` for HTTP/1.0 caches); a route may override it. */
export function noStore(): RequestHandler {
  return (_req: Request, res: Response, next: NextFunction) => {
    res.set('Cache-Control', 'no-store');
    res.set('Pragma', 'no-cache');
    next();
  };
}

/**
 * Refuses a request whose target (path and query string, as sent) is longer than `maxBytes`.
 * Node itself refuses a request line plus headers over 16 KiB (431), so the limit should be lower.
 */
export function queryLengthLimit(maxBytes: number): RequestHandler {
  if (!Number.isInteger(maxBytes) || maxBytes < 1) throw new RangeError(`queryLengthLimit: maxBytes must be a positive whole number, not ${maxBytes}`);
  return (req: Request, _res: Response, next: NextFunction) => {
    // Node refuses (400) a request target with bytes outside ASCII, so characters are bytes here.
    const length = Buffer.byteLength(req.originalUrl, 'latin1');
    if (length <= maxBytes) return next();
    // The message gives lengths only: a query string may carry identifiers (PHI).
    const message = `The request target (path and query) is ${length} bytes long; this server accepts at most ${maxBytes}. Send a long search as POST [type]/_search with a form body`;
    next(new FhirError(ERROR_CODES['query-too-long'], { code: 'query-too-long', message, issueCode: 'too-long' }));
  };
}

export interface RateLimitOptions {
  /** Requests each client may make per minute, sustained; 0 or less turns the limit off. */
  perMinute: number;
  /** Requests a client may make at once after being idle (the bucket's size); default `perMinute`. */
  burst?: number;
  /** The client a request counts against; undefined: not limited (see `callerKey`). */
  keyOf: (req: Request, res: Response) => string | undefined;
  /** The clock, in ms since the epoch; tests pass their own. */
  now?: () => number;
}

/** The authenticated client of a request that passed requireToken, else undefined. */
export function callerKey(_req: Request, res: Response): string | undefined {
  return (res.locals.caller as Caller | undefined)?.clientId;
}

const MINUTE_MS = 60_000;

/**
 * Per-client rate limit: a token bucket holding `burst` requests, refilled at `perMinute`.
 * A refused request costs nothing, so a client that keeps retrying is served at its rate.
 * The 429 carries `Retry-After`, whole seconds until the next request would be accepted (≥ 1).
 * Create one per process and mount that same one on every path it guards: each holds its buckets.
 */
export function rateLimit(options: RateLimitOptions): RequestHandler {
  const { perMinute, keyOf } = options;
  if (!Number.isFinite(perMinute)) throw new RangeError(`rateLimit: perMinute must be a finite number, not ${perMinute}`);
  if (perMinute <= 0) return (_req: Request, _res: Response, next: NextFunction) => next();
  const burst = options.burst ?? Math.max(1, Math.floor(perMinute));
  if (!Number.isInteger(burst) || burst < 1) throw new RangeError(`rateLimit: burst must be a positive whole number, not ${burst}`);
  const now = options.now ?? Date.now;
  const store = new TokenBucketStore(burst, MINUTE_MS / perMinute, now);
  return expressRateLimit({
    limit: burst,
    store,
    skip: (req, res) => keyOf(req, res) === undefined,
    keyGenerator: (req, res) => keyOf(req, res) ?? '',
    // No RateLimit-* headers: their window semantics do not describe a bucket. Retry-After is ours.
    legacyHeaders: false,
    standardHeaders: false,
    handler: (req, res, next) => {
      const info = (req as Request & { rateLimit?: RateLimitInfo }).rateLimit;
      const waitMs = (info?.resetTime?.getTime() ?? now() + MINUTE_MS / perMinute) - now();
      const seconds = Math.max(1, Math.ceil(waitMs / 1000));
      res.set('Retry-After', String(seconds));
      next(fhirError('rate-limited', `This client may send ${perMinute} requests per minute, at most ${burst} at once; retry after ${seconds} s`));
    },
  });
}

/**
 * express-rate-limit's Store interface over one token bucket per key, in memory. A request takes
 * a token if there is one (`totalHits` ≤ `limit`: accepted) and is refused otherwise
 * (`totalHits` = `limit` + 1). `resetTime` is when a refused client may send again, or when an
 * accepted client's bucket is full again.
 */
class TokenBucketStore implements Store {
  readonly localKeys = true;
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private sweptAt: number;

  constructor(
    private readonly capacity: number,
    private readonly msPerToken: number,
    private readonly now: () => number,
  ) {
    this.sweptAt = now();
  }

  get(key: string): ClientRateLimitInfo | undefined {
    if (!this.buckets.has(key)) return undefined;
    const tokens = this.tokensOf(key, this.now());
    return { totalHits: this.capacity - Math.floor(tokens), resetTime: new Date(this.now() + (this.capacity - tokens) * this.msPerToken) };
  }

  increment(key: string): ClientRateLimitInfo {
    const now = this.now();
    this.sweep(now);
    const tokens = this.tokensOf(key, now);
    if (tokens < 1) {
      this.buckets.set(key, { tokens, at: now });
      return { totalHits: this.capacity + 1, resetTime: new Date(now + (1 - tokens) * this.msPerToken) };
    }
    const left = tokens - 1;
    this.buckets.set(key, { tokens: left, at: now });
    return { totalHits: this.capacity - Math.floor(left), resetTime: new Date(now + (this.capacity - left) * this.msPerToken) };
  }

  decrement(key: string): void {
    const now = this.now();
    this.buckets.set(key, { tokens: Math.min(this.capacity, this.tokensOf(key, now) + 1), at: now });
  }

  resetKey(key: string): void {
    this.buckets.delete(key);
  }

  resetAll(): void {
    this.buckets.clear();
  }

  private tokensOf(key: string, now: number): number {
    const bucket = this.buckets.get(key);
    if (!bucket) return this.capacity;
    return Math.min(this.capacity, bucket.tokens + Math.max(0, now - bucket.at) / this.msPerToken);
  }

  /** Forgets full buckets (they equal no bucket), at most once per time it takes to fill one. */
  private sweep(now: number): void {
    if (now - this.sweptAt < this.capacity * this.msPerToken) return;
    this.sweptAt = now;
    for (const key of [...this.buckets.keys()]) {
      if (this.tokensOf(key, now) >= this.capacity) this.buckets.delete(key);
    }
  }
}
