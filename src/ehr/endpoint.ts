/**
 * An EHR as a FHIR Endpoint (https://hl7.org/fhir/R4/endpoint.html): connectionType
 * `hl7-fhir-rest` (or `hl7v2-mllp` for HL7 v2 delivery), status active, address = the EHR's FHIR
 * base, and the complex extension EHR_ENDPOINT_EXTENSION saying how to authenticate and how the
 * EHR's patients are identified:
 *
 *   patientIdentifierSystem (valueUri, required)  the system of the EHR's MRNs: a Patient is linked
 *                                                 to the EHR by an identifier of it
 *   auth (valueCode)      smart-backend | bearer | none (default none)
 *     smart-backend: tokenUrl (valueUrl), clientId (valueString), scope (valueString, optional);
 *                    our private key is the tenant's own (src/ehr/outbound-keys.ts; public half at
 *                    /auth/jwks/<id>, the JWKS URL the EHR registers for the practice)
 *     bearer:        tokenRef (valueString) = `env:EHR_TOKEN_<NAME>`: the server's environment
 *                    variable holding the token, bound to one tenant (./secrets.ts): usable only
 *                    by that tenant's Endpoints. Never the token itself.
 *   sendCommunication (valueBoolean, default false)  FHIR delivery also creates a Communication
 *                    telling the physician about the delivered DocumentReference
 *   matchByDemographics (valueBoolean, default false)  $pull-diagnoses may link a Patient that has
 *                    no identifier of patientIdentifierSystem to this EHR by demographic match:
 *                    exactly one of the EHR's Patients with the same family name, first given
 *                    name, birthDate and gender, carrying an MRN of patientIdentifierSystem. The
 *                    link is recorded (the MRN added to the Patient, marked with
 *                    IDENTIFIER_LINK_EXTENSION), with a Provenance and a Task for a person to
 *                    review it: src/ehr/patient-link.ts. Off, a Patient is linked only by an MRN
 *                    the MET software or a person gave it.
 *
 * Nothing secret is ever kept in an Endpoint, so no response can show one. A problem is reported
 * with the FHIRPath of the element at fault, for a 422 or a delivery's failure reason.
 */
import type { Endpoint, Extension } from 'fhir/r4.js';
import type { CryptoKey, JWK, KeyObject } from 'jose';
import type { EhrConnection } from './fhir-ehr.js';
import { TOKEN_REF_PATTERN, type EhrSecrets } from './secrets.js';
import type { EgressGuard } from './egress.js';

export const EHR_ENDPOINT_EXTENSION = 'https://met-fhir-server.dev/fhir/StructureDefinition/ehr-connection';
export const EHR_AUTH_METHODS = ['smart-backend', 'bearer', 'none'] as const;
export type EhrAuthMethod = (typeof EHR_AUTH_METHODS)[number];
const DEFAULT_SCOPE = 'system/Patient.rs system/Condition.rs';
/** Sub-extensions that would hold a secret in the Endpoint itself: refused, never used. */
const SECRET_HOLDERS = ['token', 'accessToken', 'bearerToken', 'clientSecret', 'privateKey', 'password'];

/** The key our client assertions are signed with (the tenant's own: src/ehr/outbound-keys.ts). */
export interface AssertionKey {
  privateKey: CryptoKey | KeyObject | JWK;
  kid: string;
  alg: 'ES384' | 'RS384';
}

export interface EhrEndpointOptions {
  /** For `smart-backend`: the tenant's key (fetch it only for an Endpoint that usesSmartBackend). */
  key?: AssertionKey | undefined;
  /** For `bearer`: the server's EHR_TOKEN_… variables. */
  secrets?: EhrSecrets | undefined;
  /**
   * For `bearer`: the tenant whose Endpoint this is; only a token bound to it is used. Unset: no
   * token is found.
   */
  tenant?: string | undefined;
  /** Plain http to any host (development and tests). */
  allowHttp: boolean;
  /** Which addresses may be connected to (./egress.ts); unset: as EhrConnection says. */
  egress?: EgressGuard | undefined;
}

export interface EhrEndpoint {
  connection: EhrConnection;
  identifierSystem: string;
  /** Whether a FHIR delivery also creates a Communication to the physician. */
  sendCommunication: boolean;
}

/** What is wrong with an Endpoint, and where (FHIRPath from `Endpoint`). */
export interface EndpointProblem {
  problem: string;
  expression: string;
}

const ext = `Endpoint.extension('${EHR_ENDPOINT_EXTENSION}')`;
const at = (name: string): string => `${ext}.extension('${name}')`;

function sub(extension: Extension | undefined, url: string): Extension | undefined {
  return extension?.extension?.find((e) => e.url === url);
}

function connectionExtension(endpoint: Endpoint): Extension | undefined {
  return endpoint.extension?.find((e) => e.url === EHR_ENDPOINT_EXTENSION);
}

/** The system of the EHR's MRNs, if the Endpoint names one (any connection type). */
export function patientIdentifierSystemOf(endpoint: Endpoint): string | undefined {
  return sub(connectionExtension(endpoint), 'patientIdentifierSystem')?.valueUri;
}

/** Whether the Endpoint connects with SMART Backend Services (and so needs the tenant's key). */
export function usesSmartBackend(endpoint: Endpoint): boolean {
  return sub(connectionExtension(endpoint), 'auth')?.valueCode === 'smart-backend';
}

/**
 * Whether the Endpoint lets $pull-diagnoses link Patients to its EHR by demographic match
 * (`matchByDemographics` valueBoolean true), or what is wrong with the flag.
 */
export function matchByDemographicsOf(endpoint: Endpoint): boolean | EndpointProblem {
  const flag = sub(connectionExtension(endpoint), 'matchByDemographics');
  if (flag && typeof flag.valueBoolean !== 'boolean') return { problem: "has a 'matchByDemographics' that is not a valueBoolean", expression: at('matchByDemographics') };
  return flag?.valueBoolean === true;
}

/**
 * How to reach the EHR of an `hl7-fhir-rest` Endpoint, or what is wrong with it. A `bearer`
 * Endpoint's token is looked up in `options.secrets` for `options.tenant`; a variable not set, or
 * bound to another tenant, is a problem too (the same one: another tenant's variable does not show).
 */
export function readFhirEndpoint(endpoint: Endpoint, options: EhrEndpointOptions): EhrEndpoint | EndpointProblem {
  if (endpoint.connectionType?.code !== 'hl7-fhir-rest') return { problem: 'is not an hl7-fhir-rest Endpoint', expression: 'Endpoint.connectionType' };
  if (endpoint.status !== 'active') return { problem: `is ${endpoint.status}, not active`, expression: 'Endpoint.status' };
  if (!endpoint.address) return { problem: 'has no address (the EHR\u2019s FHIR base URL)', expression: 'Endpoint.address' };
  const extension = connectionExtension(endpoint);
  if (!extension) return { problem: `has no extension ${EHR_ENDPOINT_EXTENSION} saying how to connect to the EHR`, expression: ext };
  const holder = SECRET_HOLDERS.find((name) => sub(extension, name));
  if (holder) {
    return { problem: `carries a secret in sub-extension '${holder}', which is refused: name a server-side token with tokenRef (env:EHR_TOKEN_<NAME>) and remove it`, expression: at(holder) };
  }
  const identifierSystem = sub(extension, 'patientIdentifierSystem')?.valueUri;
  if (!identifierSystem) return { problem: "has no 'patientIdentifierSystem' (valueUri): the system of the EHR's MRNs", expression: at('patientIdentifierSystem') };
  const flag = sub(extension, 'sendCommunication');
  if (flag && typeof flag.valueBoolean !== 'boolean') return { problem: "has a 'sendCommunication' that is not a valueBoolean", expression: at('sendCommunication') };
  const sendCommunication = flag?.valueBoolean === true;
  const refused = addressRefusal(endpoint.address, options.egress);
  if (refused) return { problem: refused, expression: 'Endpoint.address' };
  const base = { baseUrl: endpoint.address, timeoutMs: 20_000, allowHttp: options.allowHttp, ...(options.egress ? { egress: options.egress } : {}) };
  const authExtension = sub(extension, 'auth');
  const method = authExtension ? authExtension.valueCode : 'none';
  if (method === undefined) return { problem: `has an 'auth' without a valueCode: expected one of ${EHR_AUTH_METHODS.join(', ')}`, expression: at('auth') };
  switch (method) {
    case 'none':
      return { connection: { ...base, auth: { kind: 'none' } }, identifierSystem, sendCommunication };
    case 'smart-backend': {
      const tokenUrl = sub(extension, 'tokenUrl')?.valueUrl;
      const clientId = sub(extension, 'clientId')?.valueString;
      if (!tokenUrl) return { problem: "has auth smart-backend but no 'tokenUrl' (valueUrl): the EHR's token endpoint", expression: at('tokenUrl') };
      if (!clientId) return { problem: "has auth smart-backend but no 'clientId' (valueString): our client id at the EHR", expression: at('clientId') };
      const tokenRefused = addressRefusal(tokenUrl, options.egress);
      if (tokenRefused) return { problem: tokenRefused, expression: at('tokenUrl') };
      if (!options.key) return { problem: 'has auth smart-backend, but this server has no key for this tenant to sign client assertions with', expression: at('auth') };
      const scope = sub(extension, 'scope')?.valueString ?? DEFAULT_SCOPE;
      const { privateKey, kid, alg } = options.key;
      return { connection: { ...base, auth: { kind: 'smart-backend', tokenUrl, clientId, privateKey, kid, alg, scope } }, identifierSystem, sendCommunication };
    }
    case 'bearer': {
      const ref = sub(extension, 'tokenRef')?.valueString;
      if (!ref) return { problem: "has auth bearer but no 'tokenRef' (valueString): the server's variable holding the token, as env:EHR_TOKEN_<NAME>", expression: at('tokenRef') };
      const name = TOKEN_REF_PATTERN.exec(ref)?.[1];
      if (!name) {
        return { problem: `has a 'tokenRef' that is not env:EHR_TOKEN_<NAME> (1 to 64 of A-Z, 0-9, _): only variables named EHR_TOKEN_… are ever used as tokens`, expression: at('tokenRef') };
      }
      const token = options.secrets?.find(name, options.tenant);
      if (token === undefined) {
        return { problem: `names ${name} in 'tokenRef', which is not set on this server for this tenant (it is read from the server's environment at start, as <tenant>:<token>)`, expression: at('tokenRef') };
      }
      return { connection: { ...base, auth: { kind: 'bearer', token } }, identifierSystem, sendCommunication };
    }
    default:
      return { problem: `has auth ${JSON.stringify(method.slice(0, 40))}: expected one of ${EHR_AUTH_METHODS.join(', ')} (valueCode)`, expression: at('auth') };
  }
}

/**
 * Why the server will not connect to the host of `address` (a URL or mllp://host:port) when that
 * host is an IP address `egress` refuses; host names are checked when connecting (./egress.ts).
 */
export function addressRefusal(address: string, egress: EgressGuard | undefined): string | undefined {
  if (!egress) return undefined;
  let host: string;
  try {
    host = new URL(address).hostname;
  } catch {
    return undefined;
  }
  const refused = egress.literalRefusal(host);
  return refused && `has an address whose host ${refused}`;
}

export function isEndpointProblem(value: EhrEndpoint | EndpointProblem): value is EndpointProblem {
  return 'problem' in value;
}
