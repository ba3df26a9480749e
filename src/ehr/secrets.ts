/**
 * Static bearer tokens for EHRs (test systems, or EHRs without SMART Backend Services), kept on the
 * server and only ever named by an Endpoint.
 *
 * Design: an Endpoint never carries a token. It carries a reference, `tokenRef` =
 * `env:EHR_TOKEN_<NAME>`, and the token is the value of that environment variable of the server,
 * read once at start (config.ts) into an EhrSecrets. So:
 *  - no response can show a token: reads, searches, _history, _include, Bundles, PATCH results,
 *    the audit trail and database backups only ever hold the reference, with no masking to forget
 *    on some path, and no PATCH `test` operation or search to probe a stored token with;
 *  - only variables named `EHR_TOKEN_…` can be named: an Endpoint cannot make the server send
 *    another of its settings (DATABASE_URL, say) to an address of the Endpoint author's choosing;
 *  - a token is a valid RFC 6750 `b64token`, checked at start, so it cannot break the header;
 *  - rotating a token is a restart with the new value; the Endpoint does not change.
 * The names are one namespace for the whole server (every tenant): see the README.
 *
 * https://www.rfc-editor.org/rfc/rfc6750#section-2.1 (b64token)
 */

/** What the Endpoint's `tokenRef` must look like; group 1 is the variable's name. */
export const TOKEN_REF_PATTERN = /^env:(EHR_TOKEN_[A-Z0-9_]{1,64})$/;
/** The environment variables that hold EHR tokens. */
export const EHR_TOKEN_VARIABLE = /^EHR_TOKEN_[A-Z0-9_]{1,64}$/;
/** RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=". */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

/** The EHR_TOKEN_… variables of an environment, and a line for each one that is not usable. */
export function ehrTokensOf(env: Record<string, string | undefined>): { tokens: Record<string, string>; problems: string[] } {
  const tokens: Record<string, string> = {};
  const problems: string[] = [];
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('EHR_TOKEN_') || value === undefined) continue;
    // Never the value in a message: it is the secret.
    if (!EHR_TOKEN_VARIABLE.test(name)) problems.push(`${name} is invalid: EHR token variables are named EHR_TOKEN_ and then 1 to 64 of A-Z, 0-9 and _`);
    else if (!B64TOKEN.test(value)) problems.push(`${name} is invalid: expected a bearer token (RFC 6750: letters, digits, - . _ ~ + / and trailing =)`);
    else tokens[name] = value;
  }
  return { tokens, problems };
}

/** The server's EHR tokens, by variable name. */
export class EhrSecrets {
  // A #private field: util.inspect and JSON.stringify do not show it.
  readonly #tokens: ReadonlyMap<string, string>;

  /** @param tokens variable name → token; throws (naming the variable, never the value) on one that is not usable. */
  constructor(tokens: Record<string, string> = {}) {
    const { tokens: usable, problems } = ehrTokensOf(tokens);
    const ignored = Object.keys(tokens).filter((name) => !name.startsWith('EHR_TOKEN_'));
    if (ignored.length > 0) problems.push(`${ignored.join(', ')}: not EHR token variables (EHR_TOKEN_…)`);
    if (problems.length > 0) throw new Error(problems.join('; '));
    this.#tokens = new Map(Object.entries(usable));
  }

  /** The token in variable `name`, if the server has it. */
  find(name: string): string | undefined {
    return this.#tokens.get(name);
  }

  /** The variable names (never the values): for logs and messages. */
  names(): string[] {
    return [...this.#tokens.keys()].sort();
  }

  /** Never the tokens, whatever logs or serialises this object. */
  toJSON(): { names: string[] } {
    return { names: this.names() };
  }
}
