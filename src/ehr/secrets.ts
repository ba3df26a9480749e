/**
 * Static bearer tokens for EHRs (test systems, or EHRs without SMART Backend Services), kept on the
 * server and only ever named by an Endpoint.
 *
 * Design: an Endpoint never carries a token. It carries a reference, `tokenRef` =
 * `env:EHR_TOKEN_<NAME>`, and the token is in that environment variable of the server, read once
 * at start (config.ts) into an EhrSecrets. So:
 *  - no response can show a token: reads, searches, _history, _include, Bundles, PATCH results,
 *    the audit trail and database backups only ever hold the reference, with no masking to forget
 *    on some path, and no PATCH `test` operation or search to probe a stored token with;
 *  - only variables named `EHR_TOKEN_…` can be named: an Endpoint cannot make the server send
 *    another of its settings (DATABASE_URL, say) to an address of the Endpoint author's choosing;
 *  - each token is bound to one tenant by its value, `EHR_TOKEN_<NAME>=<tenant>:<token>`, and only
 *    that tenant's Endpoints can use it. The variable names are one namespace for the whole server,
 *    and an Endpoint's address is whatever its author wrote: without the binding, a client of one
 *    tenant could name another tenant's variable and have the server send that token to a host of
 *    its choosing. To an Endpoint of any other tenant the variable is as if it were not set (the
 *    same answer, so that its existence does not show either);
 *  - the tenant is a tenant name (as `tenant create` takes it: no ':') and the token a valid
 *    RFC 6750 `b64token`, checked at start, so it cannot break the header. Whether the tenant is
 *    registered is not (tenants are created later, by the admin command): server.ts warns;
 *  - rotating a token is a restart with the new value; the Endpoint does not change.
 *
 * https://www.rfc-editor.org/rfc/rfc6750#section-2.1 (b64token)
 */
import { TENANT_NAME } from '../store/clients.js';

/** What the Endpoint's `tokenRef` must look like; group 1 is the variable's name. */
export const TOKEN_REF_PATTERN = /^env:(EHR_TOKEN_[A-Z0-9_]{1,64})$/;
/** The environment variables that hold EHR tokens. */
export const EHR_TOKEN_VARIABLE = /^EHR_TOKEN_[A-Z0-9_]{1,64}$/;
/** RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=". */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

/** A token and the one tenant whose Endpoints may use it. */
export interface BoundToken {
  tenant: string;
  token: string;
}

/** `<tenant>:<token>`, or what is wrong with it (never quoting it: it holds the secret). */
function parseValue(value: string): BoundToken | string {
  const colon = value.indexOf(':');
  const tenant = colon < 0 ? '' : value.slice(0, colon);
  const token = value.slice(colon + 1);
  if (!TENANT_NAME.test(tenant)) return "expected <tenant>:<token>, the name of the one tenant whose Endpoints may use the token (1 to 64 of letters, digits, '.', '_' and '-'), a colon, then the token";
  if (!B64TOKEN.test(token)) return 'expected <tenant>:<token> with a bearer token after the colon (RFC 6750: letters, digits, - . _ ~ + / and trailing =)';
  return { tenant, token };
}

/**
 * The EHR_TOKEN_… variables of an environment (their values as set, `<tenant>:<token>`), and a
 * line for each one that is not usable.
 */
export function ehrTokensOf(env: Record<string, string | undefined>): { tokens: Record<string, string>; problems: string[] } {
  const tokens: Record<string, string> = {};
  const problems: string[] = [];
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('EHR_TOKEN_') || value === undefined) continue;
    // Never the value in a message: it is the secret.
    if (!EHR_TOKEN_VARIABLE.test(name)) {
      problems.push(`${name} is invalid: EHR token variables are named EHR_TOKEN_ and then 1 to 64 of A-Z, 0-9 and _`);
      continue;
    }
    const parsed = parseValue(value);
    if (typeof parsed === 'string') problems.push(`${name} is invalid: ${parsed}`);
    else tokens[name] = value;
  }
  return { tokens, problems };
}

/** The server's EHR tokens, by variable name, each bound to one tenant. */
export class EhrSecrets {
  // A #private field: util.inspect and JSON.stringify do not show it.
  readonly #tokens: ReadonlyMap<string, BoundToken>;

  /**
   * @param tokens variable name → its value, `<tenant>:<token>`; throws (naming the variable, never
   *   the value) on one that is not usable.
   */
  constructor(tokens: Record<string, string> = {}) {
    const { tokens: usable, problems } = ehrTokensOf(tokens);
    const ignored = Object.keys(tokens).filter((name) => !name.startsWith('EHR_TOKEN_'));
    if (ignored.length > 0) problems.push(`${ignored.join(', ')}: not EHR token variables (EHR_TOKEN_…)`);
    if (problems.length > 0) throw new Error(problems.join('; '));
    this.#tokens = new Map(Object.entries(usable).map(([name, value]) => [name, parseValue(value) as BoundToken]));
  }

  /**
   * The token in variable `name`, if the server has it and it is bound to `tenant`. Not bound to
   * `tenant` (or no tenant given) is the same as not set: the caller cannot tell the two apart.
   */
  find(name: string, tenant: string | undefined): string | undefined {
    const bound = this.#tokens.get(name);
    return bound !== undefined && tenant !== undefined && bound.tenant === tenant ? bound.token : undefined;
  }

  /** The variable names (never the values): for logs and messages. */
  names(): string[] {
    return [...this.#tokens.keys()].sort();
  }

  /** Each variable's tenant (never the token), by variable name: for the operator's log at start. */
  tenants(): Record<string, string> {
    return Object.fromEntries(this.names().map((name) => [name, (this.#tokens.get(name) as BoundToken).tenant]));
  }

  /** Never the tokens, whatever logs or serialises this object. */
  toJSON(): { names: string[] } {
    return { names: this.names() };
  }
}
