/**
 * What authentication costs per request (issue #5 asks for authentication and audit together).
 * The server has no switch to run without authentication, and should not: so the bench measures
 * the work authentication adds to a request, in this process, with the server's own code:
 *  - every request: passport's bearer check as the server runs it (requireToken, src/http/auth.ts),
 *    for a token it has verified before, and the scope check of the interaction (requireScope);
 *  - once per token: the ES384 signature and claims check of a token not seen before, and issuing
 *    it (the token endpoint's signature; the bench's client asks for a new token every two
 *    minutes, as a client would every few minutes).
 * The share of a request's server CPU is then computed against the audit pairs' measured server
 * CPU per request (run.ts): the request's work without authentication would be that much less.
 */
import type { NextFunction, Request, Response } from 'express';
import pino from 'pino';
import { generateSigningJwk, issueAccessToken, signingKeyFromJwk } from '../src/auth/index.js';
import { callerOf, requireScope, requireToken, type AuthOptions } from '../src/http/auth.js';
import { median } from './proc.js';

export interface AuthCost {
  /** Per request with a token verified before: bearer check and scope check, in microseconds. */
  perRequestUs: number;
  /** Per new token: its first verification, in milliseconds (median). */
  firstVerificationMs: number;
  /** Per new token: issuing (signing) it at the token endpoint, in milliseconds (median). */
  issueMs: number;
  /** Requests timed for perRequestUs; tokens for the per-token figures. */
  requests: number;
  tokens: number;
}

const BASE = 'http://localhost:8080';
const REQUESTS = 200_000;
const TOKENS = 50;

export async function measureAuthCost(): Promise<AuthCost> {
  const signingKey = await signingKeyFromJwk(await generateSigningJwk('ES384'));
  const options = {
    signingKey,
    baseUrl: BASE,
    outboundKeys: { jwks: () => Promise.resolve(undefined) },
    // The bearer check never reads the client store (only the token endpoint does).
    clients: undefined,
  } as unknown as AuthOptions;
  const check = requireToken(options, pino({ level: 'silent' }));
  const issue = (): Promise<{ accessToken: string }> =>
    issueAccessToken(signingKey, { clientId: 'bench', tenant: 'bench', scope: 'system/*.*' }, { issuer: BASE, audience: `${BASE}/fhir` });

  /** One request through the check; resolves when it called next (synchronously for a known token). */
  const pass = (token: string): Promise<void> =>
    new Promise((resolve, reject) => {
      const req = { headers: { authorization: `Bearer ${token}` }, originalUrl: '/fhir/Observation/0f6a1c2e-4b1d-4c55-9a3e-2f1d7e9b8c10', get: () => `Bearer ${token}` } as unknown as Request;
      const res = { locals: {} } as unknown as Response;
      const next: NextFunction = (error?: unknown) => {
        if (error) return reject(error instanceof Error ? error : new Error('the bearer check refused the request'));
        requireScope(callerOf(res), 'Observation', ['read']);
        resolve();
      };
      check(req, res, next);
    });

  const issued: number[] = [];
  const verified: number[] = [];
  let token = '';
  for (let i = 0; i < TOKENS; i++) {
    let t0 = process.hrtime.bigint();
    token = (await issue()).accessToken;
    issued.push(Number(process.hrtime.bigint() - t0) / 1e6);
    t0 = process.hrtime.bigint();
    await pass(token);
    verified.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }

  // Requests with the last token, known by now: the path nearly every request takes.
  for (let i = 0; i < 20_000; i++) await pass(token);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < REQUESTS; i++) await pass(token);
  const perRequestUs = Number(process.hrtime.bigint() - t0) / 1e3 / REQUESTS;

  return { perRequestUs, firstVerificationMs: median(verified), issueMs: median(issued), requests: REQUESTS, tokens: TOKENS };
}
