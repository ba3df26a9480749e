/**
 * The Endpoint format of an EHR (src/ehr/endpoint.ts) and the server's static EHR tokens
 * (src/ehr/secrets.ts, EHR_TOKEN_…=<tenant>:<token> in config.ts): the documented examples read as
 * documented, every unusable Endpoint is named by the element at fault, a token is found only for
 * the tenant it is bound to, and a token never shows.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { inspect } from 'node:util';
import type { Endpoint } from 'fhir/r4.js';
import { pino } from 'pino';
import { ConfigError, loadConfig } from '../src/config.js';
import { EHR_ENDPOINT_EXTENSION, readFhirEndpoint, type AssertionKey } from '../src/ehr/endpoint.js';
import { EhrSecrets } from '../src/ehr/secrets.js';
import { DEFAULT_TENANT } from '../src/security.js';
import { startServer } from '../src/server.js';
import { testSigningKey } from './helpers.js';

const TOKEN = 'eyJhbGciOiJFUzM4NCJ9.c3RhdGlj.dG9rZW4';
/** The tenant the token is bound to. */
const TENANT = 'riverside-clinic';
const NOT_SET = /^names EHR_TOKEN_\w+ in 'tokenRef', which is not set on this server for this tenant \(it is read from the server's environment at start, as <tenant>:<token>\)$/;

/** The README's examples: the same Endpoint with each kind of auth. */
const example = (auth: Record<string, unknown>[], more: Record<string, unknown>[] = []): Endpoint => ({
  resourceType: 'Endpoint',
  status: 'active',
  name: 'Riverside EHR',
  connectionType: { system: 'http://terminology.hl7.org/CodeSystem/endpoint-connection-type', code: 'hl7-fhir-rest' },
  payloadType: [{ text: 'FHIR R4' }],
  address: 'https://ehr.riverside.example.org/fhir',
  extension: [{ url: EHR_ENDPOINT_EXTENSION, extension: [...auth, { url: 'patientIdentifierSystem', valueUri: 'http://riverside.example.org/mrn' }, ...more] as never }],
});

describe('EHR Endpoints and their tokens', () => {
  let key: AssertionKey;
  const secrets = new EhrSecrets({ EHR_TOKEN_RIVERSIDE: `${TENANT}:${TOKEN}` });

  before(async () => {
    const signing = await testSigningKey();
    key = { privateKey: signing.privateKey, kid: signing.kid, alg: signing.alg };
  });

  it('reads a SMART Backend Services Endpoint: our signing key, the scope given or the default', () => {
    const read = readFhirEndpoint(
      example([
        { url: 'auth', valueCode: 'smart-backend' },
        { url: 'tokenUrl', valueUrl: 'https://ehr.riverside.example.org/auth/token' },
        { url: 'clientId', valueString: 'met-server' },
      ]),
      { key, allowHttp: false },
    );
    assert.deepEqual(read, {
      connection: {
        baseUrl: 'https://ehr.riverside.example.org/fhir',
        timeoutMs: 20_000,
        allowHttp: false,
        auth: { kind: 'smart-backend', tokenUrl: 'https://ehr.riverside.example.org/auth/token', clientId: 'met-server', privateKey: key.privateKey, kid: key.kid, alg: key.alg, scope: 'system/Patient.rs system/Condition.rs' },
      },
      identifierSystem: 'http://riverside.example.org/mrn',
      sendCommunication: false,
    });
  });

  it('reads a static bearer token Endpoint: the token from the variable it names; and the Communication flag', () => {
    const read = readFhirEndpoint(example([{ url: 'auth', valueCode: 'bearer' }, { url: 'tokenRef', valueString: 'env:EHR_TOKEN_RIVERSIDE' }], [{ url: 'sendCommunication', valueBoolean: true }]), { secrets, tenant: TENANT, allowHttp: false });
    assert.deepEqual(read, {
      connection: { baseUrl: 'https://ehr.riverside.example.org/fhir', timeoutMs: 20_000, allowHttp: false, auth: { kind: 'bearer', token: TOKEN } },
      identifierSystem: 'http://riverside.example.org/mrn',
      sendCommunication: true,
    });
  });

  it('names the element at fault of an Endpoint it cannot use', () => {
    const at = (name: string): string => `Endpoint.extension('${EHR_ENDPOINT_EXTENSION}').extension('${name}')`;
    const bearer = { url: 'auth', valueCode: 'bearer' };
    const cases: [Endpoint, string][] = [
      [{ ...example([]), status: 'off' }, 'Endpoint.status'],
      [{ ...example([]), extension: [] }, `Endpoint.extension('${EHR_ENDPOINT_EXTENSION}')`],
      [example([bearer]), at('tokenRef')],
      [example([bearer, { url: 'tokenRef', valueString: 'EHR_TOKEN_RIVERSIDE' }]), at('tokenRef')],
      [example([bearer, { url: 'tokenRef', valueString: 'env:PATH' }]), at('tokenRef')],
      [example([bearer, { url: 'tokenRef', valueString: 'env:EHR_TOKEN_OTHER' }]), at('tokenRef')],
      [example([bearer, { url: 'tokenRef', valueString: 'env:EHR_TOKEN_RIVERSIDE' }, { url: 'token', valueString: TOKEN }]), at('token')],
      [example([{ url: 'auth', valueString: 'bearer' }]), at('auth')],
      [example([{ url: 'auth', valueCode: 'smart-backend' }, { url: 'tokenUrl', valueUrl: 'https://ehr.example.org/token' }]), at('clientId')],
      [example([], [{ url: 'sendCommunication', valueString: 'yes' }]), at('sendCommunication')],
    ];
    for (const [endpoint, expression] of cases) {
      const read = readFhirEndpoint(endpoint, { key, secrets, tenant: TENANT, allowHttp: false });
      assert.ok('problem' in read, JSON.stringify(endpoint.extension));
      assert.equal(read.expression, expression, read.problem);
      assert.ok(!read.problem.includes(TOKEN));
    }
  });

  it('finds a token only for the tenant it is bound to: to another tenant, or none, it is as if it were not set', () => {
    const endpoint = example([{ url: 'auth', valueCode: 'bearer' }, { url: 'tokenRef', valueString: 'env:EHR_TOKEN_RIVERSIDE' }]);
    const unset = readFhirEndpoint(endpoint, { secrets: new EhrSecrets(), tenant: 'other-clinic', allowHttp: false });
    assert.ok('problem' in unset);
    assert.match(unset.problem, NOT_SET);
    // Another tenant (a prefix of the bound one, a different case), or no tenant at all: the same answer, word for word.
    for (const tenant of ['other-clinic', 'riverside', 'Riverside-Clinic', `${TENANT}x`, '', undefined]) {
      assert.deepEqual(readFhirEndpoint(endpoint, { secrets, tenant, allowHttp: false }), unset, String(tenant));
      assert.equal(secrets.find('EHR_TOKEN_RIVERSIDE', tenant), undefined);
    }
    assert.equal(secrets.find('EHR_TOKEN_RIVERSIDE', TENANT), TOKEN);
    assert.equal(secrets.find('EHR_TOKEN_OTHER', TENANT), undefined);
  });

  it('takes EHR_TOKEN_… variables from the environment at start, and lists a bad one by name only', () => {
    const bound = `${TENANT}:${TOKEN}`;
    assert.deepEqual(loadConfig({ EHR_TOKEN_RIVERSIDE: bound, EHR_TOKEN_DOTTED: `a.b_c-9:${TOKEN}==`, PATH: '/usr/bin' }).ehrTokens, { EHR_TOKEN_RIVERSIDE: bound, EHR_TOKEN_DOTTED: `a.b_c-9:${TOKEN}==` });
    assert.equal(loadConfig({}).ehrTokens, undefined);
    let error: unknown;
    try {
      loadConfig({
        EHR_TOKEN_SPACED: `${TENANT}:two words`,
        'EHR_TOKEN_lower-case': bound,
        EHR_TOKEN_NEWLINE: `${TENANT}:abc\r\nX-Injected: 1`,
        // Without the tenant it is bound to: the form of before, refused rather than usable by every tenant.
        EHR_TOKEN_UNBOUND: TOKEN,
        EHR_TOKEN_NO_TENANT: `:${TOKEN}`,
        EHR_TOKEN_BAD_TENANT: `river side:${TOKEN}`,
        EHR_TOKEN_LONG_TENANT: `${'t'.repeat(65)}:${TOKEN}`,
        EHR_TOKEN_NO_TOKEN: `${TENANT}:`,
        EHR_TOKEN_TWO_COLONS: `${TENANT}:other:${TOKEN}`,
      });
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof ConfigError);
    const noTenant = "expected <tenant>:<token>, the name of the one tenant whose Endpoints may use the token (1 to 64 of letters, digits, '.', '_' and '-'), a colon, then the token";
    const noToken = 'expected <tenant>:<token> with a bearer token after the colon (RFC 6750: letters, digits, - . _ ~ + / and trailing =)';
    assert.deepEqual(error.problems, [
      `EHR_TOKEN_SPACED is invalid: ${noToken}`,
      'EHR_TOKEN_lower-case is invalid: EHR token variables are named EHR_TOKEN_ and then 1 to 64 of A-Z, 0-9 and _',
      `EHR_TOKEN_NEWLINE is invalid: ${noToken}`,
      `EHR_TOKEN_UNBOUND is invalid: ${noTenant}`,
      `EHR_TOKEN_NO_TENANT is invalid: ${noTenant}`,
      `EHR_TOKEN_BAD_TENANT is invalid: ${noTenant}`,
      `EHR_TOKEN_LONG_TENANT is invalid: ${noTenant}`,
      `EHR_TOKEN_NO_TOKEN is invalid: ${noToken}`,
      `EHR_TOKEN_TWO_COLONS is invalid: ${noToken}`,
    ]);
    // One line each, and never a value.
    for (const problem of error.problems) assert.ok(!problem.includes('\n') && !problem.includes(TOKEN) && !problem.includes('river side') && !problem.includes('two words'), problem);
  });

  it('warns at start of a token bound to a tenant not registered (yet), naming it and never the token', async function () {
    this.timeout(60_000);
    // The embedded engine in a fresh DATA_DIR: its first start registers the tenant DEFAULT_TENANT only.
    const dataDir = mkdtempSync(join(tmpdir(), 'met-ehr-tokens-'));
    const lines: { level: number; msg: string; name?: string; tenant?: string }[] = [];
    const logs: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        logs.push(chunk.toString());
        lines.push(JSON.parse(chunk.toString()) as (typeof lines)[number]);
        done();
      },
    });
    try {
      const config = loadConfig({ PORT: '0', HL7_PORT: '0', DELIVERY: 'off', DATA_DIR: dataDir, EHR_TOKEN_KNOWN: `${DEFAULT_TENANT}:${TOKEN}`, EHR_TOKEN_LATER: `not-yet-created:${TOKEN}` });
      const running = await startServer(config, pino({ level: 'info' }, sink));
      await running.stop();
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
    const warnings = lines.filter((l) => l.level === 40 && l.msg.includes('EHR_TOKEN_'));
    assert.deepEqual(
      warnings.map((w) => [w.name, w.tenant, w.msg]),
      [['EHR_TOKEN_LATER', 'not-yet-created', 'EHR_TOKEN_LATER is bound to tenant not-yet-created, which is not registered: no Endpoint can use it until that tenant is created']],
    );
    assert.ok(lines.some((l) => l.msg === 'EHR tokens configured'));
    assert.ok(!logs.join('').includes(TOKEN), 'no log line shows a token');
  });

  it('never shows a token when the secrets are logged, inspected or serialised', () => {
    for (const shown of [JSON.stringify(secrets), inspect(secrets, { depth: 10, showHidden: true }), JSON.stringify({ secrets })]) assert.ok(!shown.includes(TOKEN), shown);
    assert.deepEqual(secrets.names(), ['EHR_TOKEN_RIVERSIDE']);
    assert.deepEqual(secrets.tenants(), { EHR_TOKEN_RIVERSIDE: TENANT });
    assert.throws(
      () => new EhrSecrets({ EHR_TOKEN_BAD: `${TENANT}:has space` }),
      (e: Error) => e.message === 'EHR_TOKEN_BAD is invalid: expected <tenant>:<token> with a bearer token after the colon (RFC 6750: letters, digits, - . _ ~ + / and trailing =)',
    );
    assert.throws(() => new EhrSecrets({ EHR_TOKEN_UNBOUND: TOKEN }), (e: Error) => e.message.startsWith('EHR_TOKEN_UNBOUND is invalid: expected <tenant>:<token>') && !e.message.includes(TOKEN));
  });
});
