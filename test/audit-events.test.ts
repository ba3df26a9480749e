/**
 * src/audit/events.ts: the AuditEvent of each kind of interaction follows its IHE BALP pattern
 * (profile, type/subtype/action, agents, entities), failures keep the shape but claim no profile,
 * credentials never reach an event, and every event produced here is valid R4 (the validator the
 * server uses on writes).
 */
import assert from 'node:assert/strict';
import type { AuditEvent, AuditEventAgent, AuditEventEntity, Coding } from 'fhir/r4.js';
import { auditEvent, BALP_PROFILES, CODES, outcomeCode, redactQuery, sanitizedInput, SYSTEMS, TENANT_TAG_SYSTEM, type AuditInput } from '../src/audit/events.js';
import type { JsonResource } from '../src/fhir/resource.js';
import { ResourceValidator } from '../src/validation/validator.js';

const SERVER = { name: 'met-fhir-server', version: '0.1.0', baseUrl: 'https://fhir.example.org' };
const RECORDED = new Date('2025-03-04T05:06:07.089Z');
const CLIENT = { clientId: 'c-42', name: 'Gym App', tenant: 'acme' };
const DCM = 'http://dicom.nema.org/resources/ontology/DCM';

const validator = new ResourceValidator();
/** Every event built in this file; each must be valid R4 (checked at the end). */
const produced: AuditEvent[] = [];
/** The inputs they were built from. */
const inputs: AuditInput[] = [];

function build(input: Partial<AuditInput> & Pick<AuditInput, 'kind'>): AuditEvent {
  const full: AuditInput = { recorded: RECORDED, outcome: 'success', status: 200, client: CLIENT, sourceAddress: '203.0.113.7', requestId: 'req-1', server: SERVER, ...input };
  const event = auditEvent(full);
  produced.push(event);
  inputs.push(full);
  assert.deepEqual(validator.problems(event as unknown as JsonResource), [], `valid R4: ${JSON.stringify(event)}`);
  return event;
}

const code = (c: Coding | undefined): string => `${c?.system}#${c?.code}`;
const agentCodes = (e: AuditEvent): string[] => e.agent.map((a) => code(a.type?.coding?.[0]));
const client = (e: AuditEvent): AuditEventAgent => e.agent[0] as AuditEventAgent;
const server = (e: AuditEvent): AuditEventAgent => e.agent[e.agent.length - 1] as AuditEventAgent;
const entity = (e: AuditEvent, role: Coding): AuditEventEntity | undefined => e.entity?.find((x) => x.role?.code === role.code && x.role?.system === role.system);
const requestIdEntity = (e: AuditEvent): AuditEventEntity | undefined => e.entity?.find((x) => x.type?.code === 'XrequestId');
const decode = (b64: string | undefined): string => Buffer.from(b64 ?? '', 'base64').toString('utf8');

/** What every successful REST event carries: BALP's client/server agents, source, request id. */
function assertRestShape(e: AuditEvent, clientType: string, serverType: string): void {
  assert.equal(code(e.type), `${SYSTEMS.auditEventType}#rest`);
  assert.equal(e.recorded, '2025-03-04T05:06:07.089Z');
  assert.deepEqual(agentCodes(e), [`${DCM}#${clientType}`, serverType.includes('#') ? serverType : `${DCM}#${serverType}`]);
  assert.deepEqual(client(e).who, { identifier: { system: SERVER.baseUrl, value: 'c-42' }, display: 'Gym App' });
  assert.equal(client(e).requestor, true);
  assert.deepEqual(client(e).network, { address: '203.0.113.7', type: '2' });
  assert.deepEqual(server(e).who, { identifier: { system: 'urn:ietf:rfc:3986', value: SERVER.baseUrl }, display: 'met-fhir-server 0.1.0' });
  assert.equal(server(e).requestor, false);
  assert.deepEqual(server(e).network, { address: SERVER.baseUrl, type: '5' });
  assert.deepEqual(e.source, { site: 'fhir.example.org', observer: server(e).who, type: [CODES.sourceApplicationServer] });
  assert.deepEqual(requestIdEntity(e), { what: { identifier: { value: 'req-1' } }, type: { system: 'https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType', code: 'XrequestId', display: CODES.entityXRequestId.display } });
  assert.deepEqual(e.meta?.tag, [{ system: TENANT_TAG_SYSTEM, code: 'acme' }]);
}

describe('audit events (IHE BALP)', () => {
  describe('read and vread: IHE.BasicAudit.Read', () => {
    it('read: R, restful-interaction#read, client Destination Role ID, server Source Role ID, data entity', () => {
      const e = build({ kind: 'read', resource: { type: 'Observation', id: 'o1', versionId: '3' } });
      assert.deepEqual(e.meta?.profile, ['https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Read']);
      assert.deepEqual(e.subtype, [{ system: 'http://hl7.org/fhir/restful-interaction', code: 'read', display: 'read' }]);
      assert.equal(e.action, 'R');
      assert.equal(e.outcome, '0');
      assert.equal(e.outcomeDesc, 'HTTP 200');
      assertRestShape(e, '110152', '110153');
      const data = entity(e, CODES.roleDomainResource);
      assert.deepEqual(data, {
        what: { reference: 'Observation/o1' },
        type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '2', display: 'System Object' },
        role: { system: 'http://terminology.hl7.org/CodeSystem/object-role', code: '4', display: 'Domain Resource' },
      });
      assert.equal(entity(e, CODES.rolePatient), undefined);
    });

    it('read of a Patient: IHE.BasicAudit.PatientRead with the patient entity (type 1, role 1)', () => {
      const e = build({ kind: 'read', resource: { type: 'Patient', id: 'p1' } });
      assert.deepEqual(e.meta?.profile, [BALP_PROFILES.patientRead]);
      assert.deepEqual(entity(e, CODES.rolePatient), {
        what: { reference: 'Patient/p1' },
        type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '1', display: 'Person' },
        role: { system: 'http://terminology.hl7.org/CodeSystem/object-role', code: '1', display: 'Patient' },
      });
    });

    it('vread: subtype vread, the version-specific reference, PatientRead when the subject is known', () => {
      const e = build({ kind: 'vread', resource: { type: 'Observation', id: 'o1', versionId: '3' }, patient: 'Patient/p1' });
      assert.deepEqual(e.meta?.profile, [BALP_PROFILES.patientRead]);
      assert.equal(code(e.subtype?.[0]), `${SYSTEMS.restfulInteraction}#vread`);
      assert.equal(e.action, 'R');
      assert.equal(entity(e, CODES.roleDomainResource)?.what?.reference, 'Observation/o1/_history/3');
      assert.equal(entity(e, CODES.rolePatient)?.what?.reference, 'Patient/p1');
    });
  });

  describe('create, update, patch: IHE.BasicAudit.Create / .Update', () => {
    it('create: C, client Source Role ID, server Destination Role ID, the created version', () => {
      const e = build({ kind: 'create', status: 201, resource: { type: 'Goal', id: 'g1', versionId: '1' } });
      assert.deepEqual(e.meta?.profile, [BALP_PROFILES.create]);
      assert.equal(BALP_PROFILES.create, 'https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Create');
      assert.equal(code(e.subtype?.[0]), `${SYSTEMS.restfulInteraction}#create`);
      assert.equal(e.action, 'C');
      assert.equal(e.outcome, '0');
      assertRestShape(e, '110153', '110152');
      assert.equal(entity(e, CODES.roleDomainResource)?.what?.reference, 'Goal/g1/_history/1');
    });

    it('create with a patient subject: IHE.BasicAudit.PatientCreate', () => {
      const e = build({ kind: 'create', status: 201, resource: { type: 'Goal', id: 'g1', versionId: '1' }, patient: 'Patient/p1' });
      assert.deepEqual(e.meta?.profile, [BALP_PROFILES.patientCreate]);
      assert.equal(entity(e, CODES.rolePatient)?.what?.reference, 'Patient/p1');
    });

    it('update: U, subtype update, IHE.BasicAudit.Update, the new version', () => {
      const e = build({ kind: 'update', resource: { type: 'Goal', id: 'g1', versionId: '2' } });
      assert.deepEqual(e.meta?.profile, ['https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Update']);
      assert.equal(code(e.subtype?.[0]), `${SYSTEMS.restfulInteraction}#update`);
      assert.equal(e.action, 'U');
      assertRestShape(e, '110153', '110152');
      assert.equal(entity(e, CODES.roleDomainResource)?.what?.reference, 'Goal/g1/_history/2');
    });

    it('patch: U, subtype patch, IHE.BasicAudit.Update (PatientUpdate with a subject)', () => {
      const e = build({ kind: 'patch', resource: { type: 'Goal', id: 'g1', versionId: '3' }, patient: 'Patient/p1' });
      assert.deepEqual(e.meta?.profile, [BALP_PROFILES.patientUpdate]);
      assert.equal(code(e.subtype?.[0]), `${SYSTEMS.restfulInteraction}#patch`);
      assert.equal(e.action, 'U');
    });
  });

  describe('delete: IHE.BasicAudit.Delete', () => {
    it('D, client DICOM Application, server custodian, the id that is no longer valid', () => {
      const e = build({ kind: 'delete', status: 204, resource: { type: 'Goal', id: 'g1', versionId: '4' } });
      assert.deepEqual(e.meta?.profile, ['https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Delete']);
      assert.equal(code(e.subtype?.[0]), `${SYSTEMS.restfulInteraction}#delete`);
      assert.equal(e.action, 'D');
      assertRestShape(e, '110150', 'http://terminology.hl7.org/CodeSystem/provenance-participant-type#custodian');
      assert.equal(entity(e, CODES.roleDomainResource)?.what?.reference, 'Goal/g1');
    });

    it('with a patient: IHE.BasicAudit.PatientDelete', () => {
      const e = build({ kind: 'delete', status: 204, resource: { type: 'Patient', id: 'p9' } });
      assert.deepEqual(e.meta?.profile, [BALP_PROFILES.patientDelete]);
      assert.equal(entity(e, CODES.rolePatient)?.what?.reference, 'Patient/p9');
    });
  });

  describe('search: IHE.BasicAudit.Query', () => {
    it('search-type: E, query entity (type 2, role 24, no what) holding the base64 request', () => {
      const e = build({ kind: 'search', query: { resourceType: 'Observation', query: 'code=http://loinc.org|8867-4&_count=10' } });
      assert.deepEqual(e.meta?.profile, ['https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Query']);
      assert.equal(code(e.subtype?.[0]), `${SYSTEMS.restfulInteraction}#search-type`);
      assert.equal(e.action, 'E');
      assertRestShape(e, '110153', '110152');
      const q = entity(e, CODES.roleQuery);
      assert.equal(code(q?.type), 'http://terminology.hl7.org/CodeSystem/audit-entity-type#2');
      assert.equal(code(q?.role), 'http://terminology.hl7.org/CodeSystem/object-role#24');
      assert.equal(q?.what, undefined);
      assert.equal(q?.query, Buffer.from('Observation?code=http://loinc.org|8867-4&_count=10').toString('base64'));
      assert.equal(entity(e, CODES.roleDomainResource), undefined);
    });

    it('search-system, and a search without parameters still records the request', () => {
      const system = build({ kind: 'search', query: { query: '_type=Patient&name=smith' } });
      assert.equal(code(system.subtype?.[0]), `${SYSTEMS.restfulInteraction}#search-system`);
      assert.equal(decode(entity(system, CODES.roleQuery)?.query), '?_type=Patient&name=smith');
      const bare = build({ kind: 'search', query: { resourceType: 'Goal', query: '' } });
      assert.equal(decode(entity(bare, CODES.roleQuery)?.query), 'Goal?');
      assert.deepEqual(bare.meta?.profile, [BALP_PROFILES.query]);
    });

    it('with a patient: IHE.BasicAudit.PatientQuery', () => {
      const e = build({ kind: 'search', query: { resourceType: 'Observation', query: 'subject=Patient/p1' }, patient: 'Patient/p1' });
      assert.deepEqual(e.meta?.profile, [BALP_PROFILES.patientQuery]);
      assert.equal(entity(e, CODES.rolePatient)?.what?.reference, 'Patient/p1');
    });

    it('credential parameters are redacted before encoding; the rest is kept byte for byte', () => {
      const e = build({ kind: 'search', query: { resourceType: 'Goal', query: 'status=active&access_token=eyJhbGciOi.x.y&Client_Secret=s3cr3t&_count=5' } });
      const text = decode(entity(e, CODES.roleQuery)?.query);
      assert.equal(text, 'Goal?status=active&access_token=REDACTED&Client_Secret=REDACTED&_count=5');
      assert.doesNotMatch(JSON.stringify(e), /s3cr3t|eyJhbGciOi/);
    });
  });

  describe('kinds BALP has no profile for', () => {
    it('history: R, history-instance / history-type / history-system, no profile', () => {
      const instance = build({ kind: 'history', resource: { type: 'Goal', id: 'g1' }, query: { resourceType: 'Goal', query: '_since=2025-01-01' } });
      assert.equal(code(instance.subtype?.[0]), `${SYSTEMS.restfulInteraction}#history-instance`);
      assert.equal(instance.action, 'R');
      assert.equal(instance.meta?.profile, undefined);
      assert.equal(entity(instance, CODES.roleDomainResource)?.what?.reference, 'Goal/g1');
      assert.equal(decode(entity(instance, CODES.roleQuery)?.query), 'Goal?_since=2025-01-01');
      const type = build({ kind: 'history', resource: { type: 'Goal' } });
      assert.equal(code(type.subtype?.[0]), `${SYSTEMS.restfulInteraction}#history-type`);
      assert.deepEqual(entity(type, CODES.roleDomainResource)?.what, { type: 'Goal' });
      const all = build({ kind: 'history' });
      assert.equal(code(all.subtype?.[0]), `${SYSTEMS.restfulInteraction}#history-system`);
      assert.deepEqual(agentCodes(all), [`${DCM}#110152`, `${DCM}#110153`]);
    });

    it('batch and transaction: E, their restful-interaction code, no profile', () => {
      for (const kind of ['batch', 'transaction'] as const) {
        const e = build({ kind });
        assert.equal(code(e.type), `${SYSTEMS.auditEventType}#rest`);
        assert.equal(code(e.subtype?.[0]), `${SYSTEMS.restfulInteraction}#${kind}`);
        assert.equal(e.action, 'E');
        assert.equal(e.meta?.profile, undefined);
        assert.deepEqual(agentCodes(e), [`${DCM}#110153`, `${DCM}#110152`]);
        assert.deepEqual(e.entity, [requestIdEntity(e)]);
      }
    });

    it('operation: E, subtype operation, the target and its parameters', () => {
      const e = build({ kind: 'operation', resource: { type: 'Patient', id: 'p1' }, query: { resourceType: 'Patient', query: '_count=10' } });
      assert.equal(code(e.subtype?.[0]), `${SYSTEMS.restfulInteraction}#operation`);
      assert.equal(e.action, 'E');
      assert.equal(e.meta?.profile, undefined);
      assert.equal(entity(e, CODES.rolePatient)?.what?.reference, 'Patient/p1');
    });
  });

  describe('login (token endpoint): IHE.IUA.71', () => {
    const form = 'grant_type=client_credentials&scope=system%2F*.rs&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJjLTQyIn0.sig&client_secret=hunter2&code=abc';

    it('issued: DICOM 110114, ITI-71, E, exactly the client (Application) and the OAuth server, one token-request entity', () => {
      const e = build({ kind: 'login', query: { query: form } });
      assert.deepEqual(e.meta?.profile, ['https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.IUA.71']);
      assert.deepEqual(e.type, { system: DCM, code: '110114', display: 'User Authentication' });
      assert.deepEqual(e.subtype, [{ system: 'urn:ihe:event-type-code', code: 'ITI-71', display: 'Get Access Token' }]);
      assert.equal(e.action, 'E');
      assert.equal(e.outcome, '0');
      assert.deepEqual(agentCodes(e), [`${DCM}#110150`, 'https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes#AuthzOauthService']);
      assert.deepEqual(client(e).who?.identifier, { system: SERVER.baseUrl, value: 'c-42' });
      assert.equal(e.entity?.length, 1, 'IHE.IUA.71 allows one entity');
      const request = e.entity?.[0];
      assert.equal(code(request?.type), 'http://terminology.hl7.org/CodeSystem/audit-entity-type#2');
      assert.equal(code(request?.role), 'http://terminology.hl7.org/CodeSystem/object-role#24');
      assert.deepEqual(request?.detail, [{ type: 'X-Request-Id', valueString: 'req-1' }]);
      assert.equal(
        decode(request?.query),
        'grant_type=client_credentials&scope=system%2F*.rs&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=REDACTED&client_secret=REDACTED&code=REDACTED',
      );
      assert.doesNotMatch(JSON.stringify(e), /hunter2|eyJ|abc/);
    });

    it('refused: BALP records failures differently, so no profile; outcome 4 with the reason', () => {
      const e = build({ kind: 'login', outcome: 'failure', status: 401, outcomeText: 'invalid_client: wrong secret', query: { query: 'grant_type=client_credentials' } });
      assert.equal(e.meta?.profile, undefined);
      assert.equal(code(e.type), `${DCM}#110114`);
      assert.equal(e.outcome, '4');
      assert.equal(e.outcomeDesc, 'HTTP 401: invalid_client: wrong secret');
    });

    it('refused for an unknown caller: the client agent has the network address only', () => {
      const e = build({ kind: 'login', outcome: 'failure', status: 400, client: undefined });
      assert.equal(client(e).who, undefined);
      assert.deepEqual(client(e).network, { address: '203.0.113.7', type: '2' });
      assert.equal(e.meta?.tag, undefined);
      assert.deepEqual(e.entity, [requestIdEntity(e)]);
    });
  });

  describe('authorization-failure', () => {
    it('401 (token refused): DICOM 110114 / 110122 Login, outcome 4, never the token', () => {
      const e = build({ kind: 'authorization-failure', outcome: 'failure', status: 401, client: undefined, outcomeText: 'expired token Bearer eyJhbGciOiJFUzM4NCJ9.eyJzdWIiOiJ4In0.c2ln', resource: { type: 'Observation', id: 'o1' } });
      assert.deepEqual(e.type, { system: DCM, code: '110114', display: 'User Authentication' });
      assert.deepEqual(e.subtype, [{ system: DCM, code: '110122', display: 'Login' }]);
      assert.equal(e.action, 'E');
      assert.equal(e.outcome, '4');
      assert.equal(e.meta, undefined);
      assert.equal(e.outcomeDesc, 'HTTP 401: expired token Bearer [redacted]');
      assert.doesNotMatch(JSON.stringify(e), /eyJ/);
      assert.deepEqual(agentCodes(e), [`${DCM}#110150`, 'http://terminology.hl7.org/CodeSystem/extra-security-role-type#authserver']);
      assert.equal(entity(e, CODES.roleDomainResource)?.what?.reference, 'Observation/o1');
    });

    it('403 (scopes): DICOM 110113 Security Alert, BALP AuthZ-Role, failure even when called "success"', () => {
      const e = build({ kind: 'authorization-failure', outcome: 'success', status: 403, outcomeText: 'scope system/Goal.r does not allow update', patient: 'Patient/p1' });
      assert.deepEqual(e.type, { system: DCM, code: '110113', display: 'Security Alert' });
      assert.deepEqual(e.subtype, [{ system: 'https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType', code: 'AuthZ-Role', display: 'Authorization Decision using only Roles' }]);
      assert.equal(e.outcome, '4');
      assert.equal(e.meta?.profile, undefined);
      assert.equal(entity(e, CODES.rolePatient)?.what?.reference, 'Patient/p1');
    });
  });

  describe('outcome', () => {
    it('maps HTTP status: < 400 → 0, 4xx → 4, 5xx → 8; a failure without status → 4', () => {
      assert.equal(outcomeCode('success', 200), '0');
      assert.equal(outcomeCode('success', 304), '0');
      assert.equal(outcomeCode('failure', 404), '4');
      assert.equal(outcomeCode('success', 422), '4');
      assert.equal(outcomeCode('failure', 500), '8');
      assert.equal(outcomeCode('failure', 503), '8');
      assert.equal(outcomeCode('failure'), '4');
      assert.equal(outcomeCode('failure', 200), '4');
      assert.equal(outcomeCode('success'), '0');
    });

    it('a failed interaction keeps its BALP shape but claims no profile', () => {
      const notFound = build({ kind: 'read', outcome: 'failure', status: 404, outcomeText: 'Observation/nope is not known', resource: { type: 'Observation', id: 'nope' } });
      assert.equal(notFound.outcome, '4');
      assert.equal(notFound.meta?.profile, undefined);
      assert.equal(notFound.outcomeDesc, 'HTTP 404: Observation/nope is not known');
      assert.deepEqual(agentCodes(notFound), [`${DCM}#110152`, `${DCM}#110153`]);
      const crashed = build({ kind: 'create', outcome: 'failure', status: 500, resource: { type: 'Goal' } });
      assert.equal(crashed.outcome, '8');
      assert.equal(crashed.meta?.profile, undefined);
      assert.deepEqual(entity(crashed, CODES.roleDomainResource)?.what, { type: 'Goal' });
    });

    it('no profile either when BALP-required parts are missing (client network, client identity)', () => {
      assert.equal(build({ kind: 'read', sourceAddress: undefined, resource: { type: 'Goal', id: 'g1' } }).meta?.profile, undefined);
      assert.equal(build({ kind: 'read', client: undefined, resource: { type: 'Goal', id: 'g1' } }).meta, undefined);
      assert.equal(build({ kind: 'search' }).meta?.profile, undefined, 'no query entity');
    });
  });

  describe('robustness', () => {
    it('whatever a request carries gives a valid event: bad ids, control characters, a host name', () => {
      const e = build({
        kind: 'read',
        outcome: 'failure',
        status: 400,
        resource: { type: 'Goal', id: 'bad id$\u0000' },
        patient: 'Patient/../x',
        requestId: 'r\u0001 2',
        sourceAddress: 'proxy.internal',
        outcomeText: ' \u0007 ',
        client: { clientId: 'c-42', name: 'Tab\tName', tenant: 'two words' },
      });
      assert.deepEqual(entity(e, CODES.roleDomainResource)?.what, { type: 'Goal', display: 'Goal/bad id$' });
      assert.equal(entity(e, CODES.rolePatient), undefined);
      assert.deepEqual(client(e).network, { address: 'proxy.internal', type: '1' });
      assert.equal(e.outcomeDesc, 'HTTP 400');
      assert.deepEqual(e.meta?.tag, [{ system: TENANT_TAG_SYSTEM, code: 'two words' }]);
      assert.equal(build({ kind: 'read', sourceAddress: '2001:db8::1' }).agent[0]?.network?.type, '2');
    });

    it('refuses only an invalid recorded Date', () => {
      assert.throws(() => auditEvent({ kind: 'read', recorded: new Date('nope'), outcome: 'success', server: SERVER }), RangeError);
    });

    it('redactQuery leaves other parameters and bare names alone', () => {
      assert.equal(redactQuery('code=1234&token&password=x&refresh_token:exact=y'), 'code=1234&token&password=REDACTED&refresh_token:exact=REDACTED');
      assert.equal(redactQuery('code=1234', ['code']), 'code=REDACTED');
      assert.equal(redactQuery('?access_token=z&a=%E0%A4%A'), '?access_token=REDACTED&a=%E0%A4%A');
    });
  });

  describe('the input as stored (sanitizedInput; the audit store keeps it and makes the event when read)', () => {
    const SECRETS = ['s3cr3t-value', 'eyJhbGciOiJSUzM4NCJ9.eyJzdWIiOiJ4In0.c2ln', 'tok-9f8e', 'pkce-verifier-1', 'auth-code-77'];
    const adversarial: AuditInput[] = [
      { kind: 'login', recorded: RECORDED, outcome: 'failure', status: 401, client: { clientId: 'c-1' }, server: SERVER, outcomeText: `Bearer ${SECRETS[2]} refused`, query: { query: `grant_type=client_credentials&client_secret=${SECRETS[0]}&client_assertion=${SECRETS[1]}&code=${SECRETS[4]}` } },
      { kind: 'search', recorded: RECORDED, outcome: 'success', status: 200, server: SERVER, query: { resourceType: 'Patient', query: `name=x&access_token=${SECRETS[2]}&code_verifier:exact=${SECRETS[3]}` }, requestId: `id ${SECRETS[1]}` },
      { kind: 'operation', recorded: RECORDED, outcome: 'failure', status: 500, server: SERVER, outcomeText: `failed with ${SECRETS[1]}\u0000 and Basic ${SECRETS[0]}`, client: { clientId: 'c-2', name: `n\u0007${'x'.repeat(400)}`, tenant: `t ${'y'.repeat(80)}` }, sourceAddress: `\u0001${'h'.repeat(300)}` },
      { kind: 'authorization-failure', recorded: RECORDED, outcome: 'failure', status: 403, server: SERVER, outcomeText: 'z'.repeat(2000), resource: { type: 'Patient', id: 'eyJabc.def' }, patient: 'Patient/eyJabc.def' },
    ];

    it('gives the same AuditEvent as the input itself, for every input built in this file and odd ones', () => {
      for (const input of [...inputs, ...adversarial]) {
        assert.deepEqual(auditEvent(sanitizedInput(input)), auditEvent(input), JSON.stringify(input));
        assert.deepEqual(sanitizedInput(sanitizedInput(input)), sanitizedInput(input), 'taken twice, it changes nothing');
      }
      assert.ok(inputs.length >= 30, `${inputs.length} inputs from the tests above`);
    });

    it('holds none of the credentials and tokens a request carried', () => {
      for (const input of adversarial) {
        const kept = JSON.stringify(sanitizedInput(input));
        for (const secret of SECRETS) assert.ok(!kept.includes(secret), `${secret} kept: ${kept}`);
      }
    });
  });

  after(() => {
    // Every kind was built at least once, and everything built was valid R4 (checked in build()).
    const kinds = new Set(produced.map((e) => `${e.type.code}/${e.subtype?.[0]?.code}`));
    assert.ok(kinds.size >= 17, [...kinds].join(', '));
  });
});
