/**
 * SMART on FHIR Backend Services: authentication and authorization, as pure modules.
 * https://hl7.org/fhir/smart-app-launch/backend-services.html
 *
 * scopes            parse SMART v1/v2 scopes, what they permit, what to grant
 * secrets           client secrets: generate, hash (scrypt), verify
 * keys              the server's signing key and its public JWK Set
 * tokens            issue and verify access tokens
 * jwks              clients' JWK Sets: check, fetch, cache
 * client-assertion  private_key_jwt client assertions
 * token-endpoint    the /auth/token request handler, framework-free
 */
export * from './scopes.js';
export * from './secrets.js';
export * from './keys.js';
export * from './tokens.js';
export * from './jwks.js';
export * from './client-assertion.js';
export * from './token-endpoint.js';
export type { Verified, Rejected } from './result.js';
