/**
 * The Endpoint format of an EHR (src/ehr/endpoint.ts) and the server's static EHR tokens
 * (src/ehr/secrets.ts, EHR_TOKEN_… in config.ts): the documented examples read as documented,
 * every unusable Endpoint is named by the element at fault, and a token never shows.
 */
import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import type { Endpoint } from 'fhir/r4.js';
import { ConfigError, loadConfig } from '../src/config.js';
import { EHR_ENDPOINT_EXTENSION, readFhirEndpoint, type AssertionKey } from '../src/ehr/endpoint.js';
import { EhrSecrets } from '../src/ehr/secrets.js';
import { testSigningKey } from './helpers.js';

const TOKEN = 'eyJhbGciOiJFUzM4NCJ9.c3RhdGlj.dG9rZW4';

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
  const secrets = new EhrSecrets({ EHR_TOKEN_RIVERSIDE: TOKEN });

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
    const read = readFhirEndpoint(example([{ url: 'auth', valueCode: 'bearer' }, { url: 'tokenRef', valueString: 'env:EHR_TOKEN_RIVERSIDE' }], [{ url: 'sendCommunication', valueBoolean: true }]), { secrets, allowHttp: false });
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
      const read = readFhirEndpoint(endpoint, { key, secrets, allowHttp: false });
      assert.ok('problem' in read, JSON.stringify(endpoint.extension));
      assert.equal(read.expression, expression, read.problem);
      assert.ok(!read.problem.includes(TOKEN));
    }
  });

  it('takes EHR_TOKEN_… variables from the environment at start, and lists a bad one by name only', () => {
    assert.deepEqual(loadConfig({ EHR_TOKEN_RIVERSIDE: TOKEN, PATH: '/usr/bin' }).ehrTokens, { EHR_TOKEN_RIVERSIDE: TOKEN });
    assert.equal(loadConfig({}).ehrTokens, undefined);
    let error: unknown;
    try {
      loadConfig({ EHR_TOKEN_SPACED: 'two words', 'EHR_TOKEN_lower-case': TOKEN, EHR_TOKEN_NEWLINE: 'abc\r\nX-Injected: 1' });
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof ConfigError);
    assert.deepEqual(error.problems, [
      'EHR_TOKEN_SPACED is invalid: expected a bearer token (RFC 6750: letters, digits, - . _ ~ + / and trailing =)',
      'EHR_TOKEN_lower-case is invalid: EHR token variables are named EHR_TOKEN_ and then 1 to 64 of A-Z, 0-9 and _',
      'EHR_TOKEN_NEWLINE is invalid: expected a bearer token (RFC 6750: letters, digits, - . _ ~ + / and trailing =)',
    ]);
  });

  it('never shows a token when the secrets are logged, inspected or serialised', () => {
    for (const shown of [JSON.stringify(secrets), inspect(secrets, { depth: 10, showHidden: true }), JSON.stringify({ secrets })]) assert.ok(!shown.includes(TOKEN), shown);
    assert.deepEqual(secrets.names(), ['EHR_TOKEN_RIVERSIDE']);
    assert.throws(() => new EhrSecrets({ EHR_TOKEN_BAD: 'has space' }), (e: Error) => e.message === 'EHR_TOKEN_BAD is invalid: expected a bearer token (RFC 6750: letters, digits, - . _ ~ + / and trailing =)');
  });
});
