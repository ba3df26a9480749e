/**
 * Records an AuditEvent (src/audit) for every request to the FHIR API, the MET API and the token
 * endpoint: who (the client of the access token, or the one the token request named), what (the
 * resource or the query), when, the outcome (from the HTTP status) and the caller's address. The
 * routes say what a request is about in `res.locals.audit` (an AuditNote) before they act, so
 * that a request that fails is recorded as what it tried to do. A request refused before any
 * route (no token, a forged one) is recorded as an authorization failure, unattributed.
 * Not recorded: the open paths (/fhir/metadata, the SMART configuration, /auth/jwks, /healthz,
 * /readyz) and paths that serve nothing (404 outside the APIs).
 */
import type { NextFunction, Request, Response } from 'express';
import type { AuditKind } from '../audit/events.js';
import type { AuditLog } from '../audit/log.js';

export interface AuditNote {
  kind: AuditKind;
  resource?: { type: string; id?: string; versionId?: string };
  query?: { resourceType?: string; query: string };
  patient?: string;
  /** The client, where no access token names it (the token endpoint). */
  client?: { clientId: string; tenant?: string };
  /** Why a request failed, for the record (never sent to the caller). */
  outcomeText?: string;
}

const AUDITED_WITHOUT_NOTE = /^\/(fhir|met\/v1)(\/|$)/;

export function auditRequests(log: AuditLog, server: { name: string; version: string; baseUrl: string }) {
  return (req: Request, res: Response, next: NextFunction): void => {
    res.on('finish', () => {
      const note = res.locals.audit as AuditNote | undefined;
      const status = res.statusCode;
      let kind: AuditKind;
      if (note) kind = note.kind;
      else if ((status === 401 || status === 403) && AUDITED_WITHOUT_NOTE.test(req.path)) kind = 'authorization-failure';
      else return;
      // The caller requireToken verified (auth.ts Caller).
      const caller = res.locals.caller as { clientId: string; tenant: string } | undefined;
      const client = caller ? { clientId: caller.clientId, tenant: caller.tenant } : note?.client;
      try {
        // The facts only: the audit store makes them the BALP AuditEvent (audit/events.ts).
        log.record(client?.tenant, {
          kind,
          recorded: new Date(),
          outcome: status < 400 ? 'success' : 'failure',
          status,
          ...(note?.outcomeText ? { outcomeText: note.outcomeText } : {}),
          ...(client ? { client } : {}),
          ...(req.socket.remoteAddress ? { sourceAddress: req.socket.remoteAddress } : {}),
          ...(typeof res.locals.requestId === 'string' ? { requestId: res.locals.requestId } : {}),
          server,
          ...(note?.resource ? { resource: note.resource } : {}),
          ...(note?.query ? { query: note.query } : {}),
          ...(note?.patient ? { patient: note.patient } : {}),
        });
      } catch (error) {
        // An event that cannot be recorded must not fail the response that has gone already.
        log.failed(error);
      }
    });
    next();
  };
}
