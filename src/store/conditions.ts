/**
 * The search criteria of a conditional create (If-None-Exist), compiled to SQL over the `resource`
 * table. https://hl7.org/fhir/R4/http.html#ccreate
 * Supported here: `_id` and the token parameter `identifier` (system|value, |value, value,
 * system|), comma for OR, repeated parameters for AND.
 */
import { fhirError } from '../fhir/errors.js';

export interface CompiledCriteria {
  /** SQL boolean expression over `resource`, with placeholders from `firstParam` on. */
  where: string;
  values: unknown[];
  /** Keys to lock so that two requests with the same criteria are serialised. */
  lockKeys: string[];
}

export function compileCriteria(resourceType: string, query: string, firstParam: number): CompiledCriteria {
  const params = new URLSearchParams(query);
  const clauses: string[] = [];
  const values: unknown[] = [];
  const lockKeys: string[] = [];
  const placeholder = (value: unknown): string => {
    values.push(value);
    return `$${firstParam + values.length - 1}`;
  };
  let count = 0;
  for (const [name, rawValue] of params) {
    count++;
    const alternatives = splitOr(rawValue);
    if (alternatives.length === 0 || alternatives.some((a) => a === '')) {
      throw fhirError('invalid-search-value', `Search parameter '${name}' has an empty value`, 'If-None-Exist');
    }
    if (name === '_id') {
      clauses.push(`(${alternatives.map((id) => `id = ${placeholder(id)}`).join(' OR ')})`);
      for (const id of alternatives) lockKeys.push(`${resourceType}/${id}`);
    } else if (name === 'identifier') {
      clauses.push(`(${alternatives.map((token) => identifierClause(token, placeholder)).join(' OR ')})`);
      for (const token of alternatives) lockKeys.push(`${resourceType}?identifier=${token}`);
    } else {
      throw fhirError('unsupported-search-parameter',
        `Search parameter '${name}' is not supported in If-None-Exist; use identifier or _id`,
        'If-None-Exist',
      );
    }
  }
  if (count === 0) throw fhirError('invalid-search-value', 'If-None-Exist holds no search criteria', 'If-None-Exist');
  return { where: clauses.join(' AND '), values, lockKeys: lockKeys.sort() };
}

/** Splits on commas that are not escaped with a backslash, and unescapes `\,` `\|` `\\`. */
export function splitOr(value: string): string[] {
  const out: string[] = [];
  let current = '';
  for (let i = 0; i < value.length; i++) {
    const c = value[i] as string;
    if (c === '\\' && i + 1 < value.length) {
      current += c + (value[i + 1] as string);
      i++;
    } else if (c === ',') {
      out.push(current);
      current = '';
    } else {
      current += c;
    }
  }
  out.push(current);
  return out;
}

/** Splits a token on the first unescaped `|` and unescapes both parts. */
function splitToken(token: string): { system?: string; value: string } {
  for (let i = 0; i < token.length; i++) {
    if (token[i] === '\\') {
      i++;
    } else if (token[i] === '|') {
      return { system: unescape(token.slice(0, i)), value: unescape(token.slice(i + 1)) };
    }
  }
  return { value: unescape(token) };
}

function unescape(s: string): string {
  return s.replace(/\\([\\,|$])/g, '$1');
}

function identifierClause(token: string, placeholder: (v: unknown) => string): string {
  const { system, value } = splitToken(token);
  const contains = (element: Record<string, string>): string => `(content -> 'identifier') @> ${placeholder(JSON.stringify([element]))}::jsonb`;
  if (system === undefined) return contains({ value });
  if (system === '') {
    return `(${contains({ value })} AND jsonb_path_exists(content, '$.identifier[*] ? (@.value == $v && !exists(@.system))', ${placeholder(JSON.stringify({ v: value }))}::jsonb))`;
  }
  if (value === '') return contains({ system });
  return contains({ system, value });
}
