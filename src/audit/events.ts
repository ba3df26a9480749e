/**
 * FHIR R4 AuditEvent resources following the IHE Basic Audit Log Patterns (BALP) IG
 * (https://profiles.ihe.net/ITI/BALP/, checked against the 1.1.5 CI build and its FSH sources in
 * github.com/IHE/ITI.BasicAudit). Pure: no storage, no HTTP; the caller records the result.
 *
 * Profiles, claimed in meta.profile only when the event meets every element they require:
 * - read, vread             → IHE.BasicAudit.Read    / .PatientRead   (client 110152, server 110153)
 * - create                  → IHE.BasicAudit.Create  / .PatientCreate (client 110153, server 110152)
 * - update, patch           → IHE.BasicAudit.Update  / .PatientUpdate (client 110153, server 110152)
 * - delete                  → IHE.BasicAudit.Delete  / .PatientDelete (client 110150, server custodian)
 * - search                  → IHE.BasicAudit.Query   / .PatientQuery  (client 110153, server 110152)
 * - login (token issued)    → IHE.IUA.71 "Get Access Token"           (client 110150, AuthzOauthService)
 * BALP fixes outcome = 0 in all of them ("failures are recorded differently"), so a failed
 * interaction keeps the same shape but claims no profile. history, batch, transaction, operation
 * and authorization failures have no BALP profile; they follow the nearest pattern, unprofiled.
 *
 * Secrets: nothing here reads headers or bodies. Query strings have credential parameters
 * (access_token, client_secret, client_assertion, …) replaced by REDACTED before encoding, and
 * free text (outcomeText, names) has bearer tokens and JWT-shaped strings removed.
 */
import { isIP } from 'node:net';
import type { AuditEvent, AuditEventAgent, AuditEventEntity, CodeableConcept, Coding, Meta, Reference } from 'fhir/r4.js';

export type AuditKind =
  | 'read'
  | 'vread'
  | 'create'
  | 'update'
  | 'patch'
  | 'delete'
  | 'search'
  | 'history'
  | 'batch'
  | 'transaction'
  | 'operation'
  | 'login'
  | 'authorization-failure';

export interface AuditInput {
  kind: AuditKind;
  recorded: Date;
  /** With `status`: < 400 success (0), 4xx minor failure (4), 5xx serious failure (8). */
  outcome: 'success' | 'failure';
  /** HTTP status of the response; sets the outcome code with `outcome` and starts outcomeDesc. */
  status?: number;
  /** Why it failed, for outcomeDesc. Bearer tokens and JWT-shaped strings are removed. */
  outcomeText?: string;
  /** The OAuth client; undefined when the caller could not be identified. */
  client?: { clientId: string; name?: string; tenant?: string };
  /** The caller's IP address. */
  sourceAddress?: string;
  /** Our X-Request-Id; recorded as BALP's XrequestId entity. */
  requestId?: string;
  /** This server; `baseUrl` is also the issuer of the client ids (the tokens' `iss`). */
  server: { name: string; version: string; baseUrl: string };
  /** What was read or written; `versionId` is the version read (vread) or written (create, update, patch). */
  resource?: { type: string; id?: string; versionId?: string };
  /**
   * search/history/operation: the query string as received (or the form body of POST _search);
   * login: the token request's form body. Credential parameters are redacted here.
   */
  query?: { resourceType?: string; query: string };
  /** 'Patient/123' when the resource is a Patient or has one as subject. */
  patient?: string;
}

// ------------------------------------------------------------------ canonical URLs and codes

const BALP_SD = 'https://profiles.ihe.net/ITI/BALP/StructureDefinition/';

/** BALP profile canonicals (https://profiles.ihe.net/ITI/BALP/artifacts.html). */
export const BALP_PROFILES = {
  read: `${BALP_SD}IHE.BasicAudit.Read`,
  patientRead: `${BALP_SD}IHE.BasicAudit.PatientRead`,
  create: `${BALP_SD}IHE.BasicAudit.Create`,
  patientCreate: `${BALP_SD}IHE.BasicAudit.PatientCreate`,
  update: `${BALP_SD}IHE.BasicAudit.Update`,
  patientUpdate: `${BALP_SD}IHE.BasicAudit.PatientUpdate`,
  delete: `${BALP_SD}IHE.BasicAudit.Delete`,
  patientDelete: `${BALP_SD}IHE.BasicAudit.PatientDelete`,
  query: `${BALP_SD}IHE.BasicAudit.Query`,
  patientQuery: `${BALP_SD}IHE.BasicAudit.PatientQuery`,
  getAccessToken: `${BALP_SD}IHE.IUA.71`,
} as const;

export const SYSTEMS = {
  dicom: 'http://dicom.nema.org/resources/ontology/DCM',
  auditEventType: 'http://terminology.hl7.org/CodeSystem/audit-event-type',
  restfulInteraction: 'http://hl7.org/fhir/restful-interaction',
  auditEntityType: 'http://terminology.hl7.org/CodeSystem/audit-entity-type',
  objectRole: 'http://terminology.hl7.org/CodeSystem/object-role',
  securitySourceType: 'http://terminology.hl7.org/CodeSystem/security-source-type',
  provenanceParticipantType: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type',
  extraSecurityRoleType: 'http://terminology.hl7.org/CodeSystem/extra-security-role-type',
  iheEventType: 'urn:ihe:event-type-code',
  balpEntityType: 'https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType',
  balpUserAgentType: 'https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes',
  balpAuthZSubType: 'https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType',
  uri: 'urn:ietf:rfc:3986',
} as const;

/** Our own tag system for the client's tenant (meta.tag); not from BALP. */
export const TENANT_TAG_SYSTEM = 'https://met-fhir-server.dev/fhir/CodeSystem/tenant';

const coding = (system: string, code: string, display: string): Coding => ({ system, code, display });

export const CODES = {
  typeRest: coding(SYSTEMS.auditEventType, 'rest', 'RESTful Operation'),
  typeUserAuthentication: coding(SYSTEMS.dicom, '110114', 'User Authentication'),
  typeSecurityAlert: coding(SYSTEMS.dicom, '110113', 'Security Alert'),
  subtypeLogin: coding(SYSTEMS.dicom, '110122', 'Login'),
  subtypeGetAccessToken: coding(SYSTEMS.iheEventType, 'ITI-71', 'Get Access Token'),
  subtypeAuthZRole: coding(SYSTEMS.balpAuthZSubType, 'AuthZ-Role', 'Authorization Decision using only Roles'),
  agentApplication: coding(SYSTEMS.dicom, '110150', 'Application'),
  agentDestination: coding(SYSTEMS.dicom, '110152', 'Destination Role ID'),
  agentSource: coding(SYSTEMS.dicom, '110153', 'Source Role ID'),
  agentCustodian: coding(SYSTEMS.provenanceParticipantType, 'custodian', 'Custodian'),
  agentAuthzOauthService: coding(SYSTEMS.balpUserAgentType, 'AuthzOauthService', 'OAuth Authorization Server'),
  agentAuthServer: coding(SYSTEMS.extraSecurityRoleType, 'authserver', 'authorization server'),
  entityPerson: coding(SYSTEMS.auditEntityType, '1', 'Person'),
  entitySystemObject: coding(SYSTEMS.auditEntityType, '2', 'System Object'),
  entityXRequestId: coding(SYSTEMS.balpEntityType, 'XrequestId', 'transport specific unique identifier where http X-Request-Id is used'),
  rolePatient: coding(SYSTEMS.objectRole, '1', 'Patient'),
  roleDomainResource: coding(SYSTEMS.objectRole, '4', 'Domain Resource'),
  roleQuery: coding(SYSTEMS.objectRole, '24', 'Query'),
  sourceApplicationServer: coding(SYSTEMS.securitySourceType, '4', 'Application Server'),
} as const;

const restful = (code: string): Coding => coding(SYSTEMS.restfulInteraction, code, code);

// ------------------------------------------------------------------ outcome

export type OutcomeCode = '0' | '4' | '8';

/** 5xx → 8 (serious failure); a failure or any 4xx → 4 (minor failure); else 0. 12 is never used. */
export function outcomeCode(outcome: 'success' | 'failure', status?: number): OutcomeCode {
  if (status !== undefined && status >= 500) return '8';
  if (outcome === 'failure' || (status !== undefined && status >= 400)) return '4';
  return '0';
}

// ------------------------------------------------------------------ secrets

/** Request parameters that carry credentials (OAuth 2.0, RFC 7521/7523/8693, PKCE). */
const CREDENTIAL_PARAMETERS = new Set([
  'access_token',
  'refresh_token',
  'id_token',
  'token',
  'subject_token',
  'actor_token',
  'client_secret',
  'client_assertion',
  'assertion',
  'code_verifier',
  'password',
]);

function decodeName(raw: string): string {
  try {
    return decodeURIComponent(raw.replace(/\+/g, ' '));
  } catch {
    return raw;
  }
}

/**
 * The query string (or form body) with the value of every credential parameter replaced by
 * REDACTED; everything else is kept byte for byte. `also` adds names (the token request's `code`).
 */
export function redactQuery(query: string, also: readonly string[] = []): string {
  return query
    .split('&')
    .map((part) => {
      const eq = part.indexOf('=');
      if (eq === -1) return part;
      const name = decodeName(part.slice(0, eq)).replace(/^\?/, '').trim().toLowerCase();
      const bare = name.split(':')[0] as string; // a search modifier does not hide the name
      return CREDENTIAL_PARAMETERS.has(bare) || also.includes(bare) ? `${part.slice(0, eq)}=REDACTED` : part;
    })
    .join('&');
}

/**
 * Free text fit for an AuditEvent: no control characters (our validator refuses them), no bearer
 * or basic credentials, no JWT-shaped strings, at most `max` characters; undefined when empty.
 */
function safeText(value: string | undefined, max = 1024): string | undefined {
  if (value === undefined) return undefined;
  const cleaned = value
    // eslint-disable-next-line no-control-regex
    .replace(/[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F]/g, ' ')
    .replace(/\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+/gi, '$1 [redacted]')
    .replace(/\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(\.[A-Za-z0-9_-]*)?/g, '[redacted]')
    .trim();
  if (cleaned === '') return undefined;
  return cleaned.length > max ? `${cleaned.slice(0, max - 1)}…` : cleaned;
}

// ------------------------------------------------------------------ references

const RESOURCE_TYPE = /^[A-Z][A-Za-z]{1,63}$/;
/** A FHIR id; and a reference to a Patient by one (what auditEvent takes as given, else shows as display only). */
export const ID = /^[A-Za-z0-9\-.]{1,64}$/;
export const PATIENT_REFERENCE = /^Patient\/[A-Za-z0-9\-.]{1,64}$/;
const CODE = /^[^\s]+(\s[^\s]+)*$/;

function base64(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64');
}

/**
 * The resource as a Reference: `Type/id`, or `Type/id/_history/v` when versioned. Ids that are not
 * valid FHIR ids (a failed request may carry anything) go to display, never to reference.
 */
function resourceReference(resource: NonNullable<AuditInput['resource']>, versioned: boolean): Reference | undefined {
  const typeOk = RESOURCE_TYPE.test(resource.type);
  if (typeOk && resource.id !== undefined && ID.test(resource.id)) {
    const version = versioned && resource.versionId !== undefined && ID.test(resource.versionId) ? `/_history/${resource.versionId}` : '';
    return { reference: `${resource.type}/${resource.id}${version}` };
  }
  const shown = safeText(resource.id === undefined ? resource.type : `${resource.type}/${resource.id}`, 256);
  if (!typeOk) return shown === undefined ? undefined : { display: shown };
  return { type: resource.type, ...(resource.id !== undefined && shown !== undefined ? { display: shown } : {}) };
}

/** 'Patient/123' when well formed; a Patient resource's own id otherwise. */
function patientReference(input: AuditInput): string | undefined {
  if (input.patient !== undefined) return PATIENT_REFERENCE.test(input.patient) ? input.patient : undefined;
  const r = input.resource;
  if (r?.type === 'Patient' && r.id !== undefined && ID.test(r.id)) return `Patient/${r.id}`;
  return undefined;
}

// ------------------------------------------------------------------ the plan of each kind

type AgentPattern = 'read' | 'write' | 'delete' | 'token' | 'security';

interface Plan {
  type: Coding;
  subtype: Coding[];
  action: NonNullable<AuditEvent['action']>;
  agents: AgentPattern;
  /** The BALP profile pair, when BALP has one for this kind. */
  profiles?: { plain: string; patient?: string };
  /** The data entity's reference is version specific. */
  versioned: boolean;
}

function plan(input: AuditInput): Plan {
  const r = input.resource;
  const typeSearch = input.query?.resourceType !== undefined;
  switch (input.kind) {
    case 'read':
    case 'vread':
      return {
        type: CODES.typeRest,
        subtype: [restful(input.kind)],
        action: 'R',
        agents: 'read',
        profiles: { plain: BALP_PROFILES.read, patient: BALP_PROFILES.patientRead },
        versioned: input.kind === 'vread',
      };
    case 'create':
      return { type: CODES.typeRest, subtype: [restful('create')], action: 'C', agents: 'write', profiles: { plain: BALP_PROFILES.create, patient: BALP_PROFILES.patientCreate }, versioned: true };
    case 'update':
    case 'patch':
      return { type: CODES.typeRest, subtype: [restful(input.kind)], action: 'U', agents: 'write', profiles: { plain: BALP_PROFILES.update, patient: BALP_PROFILES.patientUpdate }, versioned: true };
    case 'delete':
      return { type: CODES.typeRest, subtype: [restful('delete')], action: 'D', agents: 'delete', profiles: { plain: BALP_PROFILES.delete, patient: BALP_PROFILES.patientDelete }, versioned: false };
    case 'search':
      return {
        type: CODES.typeRest,
        subtype: [restful(typeSearch ? 'search-type' : 'search-system')],
        action: 'E',
        agents: 'write',
        profiles: { plain: BALP_PROFILES.query, patient: BALP_PROFILES.patientQuery },
        versioned: false,
      };
    case 'history': {
      const level = r?.id !== undefined ? 'history-instance' : r !== undefined || typeSearch ? 'history-type' : 'history-system';
      return { type: CODES.typeRest, subtype: [restful(level)], action: 'R', agents: 'read', versioned: false };
    }
    case 'batch':
    case 'transaction':
    case 'operation':
      return { type: CODES.typeRest, subtype: [restful(input.kind)], action: 'E', agents: 'write', versioned: false };
    case 'login':
      // BALP's IHE.IUA.71 fixes subtype to ITI-71 (1..1): DICOM 110122 Login cannot also be sent.
      return { type: CODES.typeUserAuthentication, subtype: [CODES.subtypeGetAccessToken], action: 'E', agents: 'token', profiles: { plain: BALP_PROFILES.getAccessToken }, versioned: false };
    case 'authorization-failure':
      // 401: the credentials were refused (DICOM User Authentication / Login, failed);
      // otherwise an access decision denied it (DICOM Security Alert, BALP AuthZ-Role).
      return input.status === 401
        ? { type: CODES.typeUserAuthentication, subtype: [CODES.subtypeLogin], action: 'E', agents: 'security', versioned: false }
        : { type: CODES.typeSecurityAlert, subtype: [CODES.subtypeAuthZRole], action: 'E', agents: 'security', versioned: false };
  }
}

/** The agent types [client, server] of each pattern, as BALP sets them. */
const AGENT_TYPES: Record<AgentPattern, [Coding, Coding]> = {
  read: [CODES.agentDestination, CODES.agentSource],
  write: [CODES.agentSource, CODES.agentDestination],
  delete: [CODES.agentApplication, CODES.agentCustodian],
  token: [CODES.agentApplication, CODES.agentAuthzOauthService],
  security: [CODES.agentApplication, CODES.agentAuthServer],
};

const concept = (c: Coding): CodeableConcept => ({ coding: [c] });

function serverReference(server: AuditInput['server']): Reference {
  const display = safeText(`${server.name} ${server.version}`, 256);
  return { identifier: { system: SYSTEMS.uri, value: server.baseUrl }, ...(display ? { display } : {}) };
}

// ------------------------------------------------------------------ the input as kept

/**
 * The input as it may be stored (the audit store keeps inputs and makes the AuditEvent when it is
 * read): credential parameters redacted and free text cleaned as auditEvent does, so that a stored
 * input holds no secret its AuditEvent would not. auditEvent gives the same event from it as from
 * the input itself: each step is one auditEvent takes again, and taking it twice changes nothing.
 * Ids and references stay as received (auditEvent tests them as they are).
 */
export function sanitizedInput(input: AuditInput): AuditInput {
  const out: AuditInput = { kind: input.kind, recorded: input.recorded, outcome: input.outcome, server: input.server };
  if (input.status !== undefined) out.status = input.status;
  const outcomeText = safeText(input.outcomeText);
  if (outcomeText !== undefined) out.outcomeText = outcomeText;
  if (input.client !== undefined) {
    const name = safeText(input.client.name, 256);
    const tenant = safeText(input.client.tenant, 64);
    out.client = { clientId: input.client.clientId, ...(name !== undefined ? { name } : {}), ...(tenant !== undefined ? { tenant } : {}) };
  }
  const address = safeText(input.sourceAddress, 256);
  if (address !== undefined) out.sourceAddress = address;
  const requestId = safeText(input.requestId, 256);
  if (requestId !== undefined) out.requestId = requestId;
  if (input.resource !== undefined) out.resource = input.resource;
  if (input.query !== undefined) out.query = { ...input.query, query: redactQuery(input.query.query, input.kind === 'login' ? ['code'] : []) };
  if (input.patient !== undefined) out.patient = input.patient;
  return out;
}

// ------------------------------------------------------------------ the event

/**
 * The AuditEvent of one interaction. Never throws for what a request may carry (malformed ids,
 * odd text); only an invalid `recorded` Date is refused (RangeError).
 */
export function auditEvent(input: AuditInput): AuditEvent {
  if (Number.isNaN(input.recorded.getTime())) throw new RangeError('auditEvent: recorded is not a valid Date');
  const p = plan(input);
  const outcome = outcomeCode(input.kind === 'authorization-failure' ? 'failure' : input.outcome, input.status);
  const [clientType, serverType] = AGENT_TYPES[p.agents];

  // Agents: the client (requestor), then this server.
  const clientId = input.client?.clientId !== undefined && input.client.clientId.trim() !== '' ? input.client.clientId : undefined;
  const clientName = safeText(input.client?.name, 256);
  const address = safeText(input.sourceAddress, 256);
  const agents: AuditEventAgent[] = [];
  if (clientId !== undefined || address !== undefined) {
    agents.push({
      type: concept(clientType),
      ...(clientId !== undefined ? { who: { identifier: { system: input.server.baseUrl, value: clientId }, ...(clientName ? { display: clientName } : {}) } } : {}),
      requestor: true,
      ...(address !== undefined ? { network: { address, type: isIP(address) ? '2' : '1' } } : {}),
    });
  }
  agents.push({ type: concept(serverType), who: serverReference(input.server), requestor: false, network: { address: input.server.baseUrl, type: '5' } });

  // Entities: what was touched or asked, the patient, the request id.
  const entities: AuditEventEntity[] = [];
  let dataEntity = false;
  let queryEntity = false;
  const requestId = safeText(input.requestId, 256);
  const isToken = input.kind === 'login';
  const carriesResource = !['search', 'batch', 'transaction', 'login'].includes(input.kind);
  if (input.resource !== undefined && carriesResource) {
    const what = resourceReference(input.resource, p.versioned);
    if (what !== undefined) {
      entities.push({ what, type: CODES.entitySystemObject, role: CODES.roleDomainResource });
      dataEntity = what.reference !== undefined;
    }
  }
  if (input.query !== undefined && !['read', 'vread', 'create', 'update', 'patch', 'delete'].includes(input.kind)) {
    const redacted = redactQuery(input.query.query, isToken ? ['code'] : []);
    // The token request is its form body; a search is the request relative to the base, so that
    // a search without parameters still records what was asked ("Patient?").
    const raw = isToken ? redacted : `${input.query.resourceType ?? ''}?${redacted.replace(/^\?/, '')}`;
    if (raw !== '') {
      entities.push({
        type: CODES.entitySystemObject,
        role: CODES.roleQuery,
        query: base64(raw),
        ...(isToken && requestId !== undefined ? { detail: [{ type: 'X-Request-Id', valueString: requestId }] } : {}),
      });
      queryEntity = true;
    }
  }
  const patient = isToken ? undefined : patientReference(input);
  if (patient !== undefined) entities.push({ what: { reference: patient }, type: CODES.entityPerson, role: CODES.rolePatient });
  // IHE.IUA.71 allows one entity only: there the request id went into the token request's detail.
  if (requestId !== undefined && !(isToken && queryEntity)) entities.push({ what: { identifier: { value: requestId } }, type: CODES.entityXRequestId });

  // The profile, when every element it requires is here.
  const clientComplete = clientId !== undefined && address !== undefined;
  const subjectComplete = input.kind === 'search' || input.kind === 'login' ? queryEntity : dataEntity;
  const profile = p.profiles && outcome === '0' && clientComplete && subjectComplete ? (patient !== undefined && p.profiles.patient ? p.profiles.patient : p.profiles.plain) : undefined;

  const tenant = safeText(input.client?.tenant, 64);
  const meta: Meta = {
    ...(profile ? { profile: [profile] } : {}),
    ...(tenant !== undefined && CODE.test(tenant) ? { tag: [{ system: TENANT_TAG_SYSTEM, code: tenant }] } : {}),
  };

  const description = safeText([input.status !== undefined ? `HTTP ${input.status}` : undefined, safeText(input.outcomeText)].filter((s) => s !== undefined).join(': '));
  let site: string | undefined;
  try {
    site = new URL(input.server.baseUrl).host || undefined;
  } catch {
    site = undefined;
  }

  return {
    resourceType: 'AuditEvent',
    ...(Object.keys(meta).length > 0 ? { meta } : {}),
    type: p.type,
    subtype: p.subtype,
    action: p.action,
    recorded: input.recorded.toISOString(),
    outcome,
    ...(description !== undefined ? { outcomeDesc: description } : {}),
    agent: agents,
    source: { ...(site ? { site } : {}), observer: serverReference(input.server), type: [CODES.sourceApplicationServer] },
    ...(entities.length > 0 ? { entity: entities } : {}),
  };
}
