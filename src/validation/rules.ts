/**
 * The rules a JSON schema cannot express that matter most on every write:
 * - references are well formed (https://hl7.org/fhir/R4/references.html);
 * - conditional references (`Type?query`) only inside a transaction, never in a stored resource.
 * The URL-related rules (resourceType and id against the URL) live in the interactions.
 */
import type { Problem } from '../fhir/errors.js';
import { parseReference } from '../fhir/reference.js';

type Json = unknown;

export function referenceProblems(resource: Record<string, Json>, root: string): Problem[] {
  const problems: Problem[] = [];
  visit(resource, root, problems);
  return problems;
}

function visit(value: Json, path: string, problems: Problem[]): void {
  if (Array.isArray(value)) {
    value.forEach((v, i) => visit(v, `${path}[${i}]`, problems));
    return;
  }
  if (typeof value !== 'object' || value === null) return;
  for (const [key, child] of Object.entries(value)) {
    if (key === 'reference' && typeof child === 'string') {
      const shape = parseReference(child);
      if ('error' in shape) {
        problems.push({ code: 'invalid-reference', message: shape.error, expression: `${path}.reference`, issueCode: 'value' });
      } else if (shape.kind === 'conditional') {
        problems.push({
          code: 'conditional-reference-outside-transaction',
          message: `'${child}' is a conditional reference; these are resolved only inside a transaction Bundle`,
          expression: `${path}.reference`,
          issueCode: 'value',
        });
      }
    } else {
      visit(child, `${path}.${key}`, problems);
    }
  }
}

/**
 * JSON representation rules (https://hl7.org/fhir/R4/json.html): no empty arrays or objects;
 * strings hold no control characters but tab, CR and LF (https://hl7.org/fhir/R4/datatypes.html#string);
 * PostgreSQL could not store U+0000 at all.
 */
export function contentProblems(resource: Record<string, Json>, root: string): Problem[] {
  const problems: Problem[] = [];
  const walk = (value: Json, path: string): void => {
    if (typeof value === 'string') {
      // eslint-disable-next-line no-control-regex
      if (/[\u0000-\u0008\u000B\u000C\u000E-\u001F]/.test(value)) {
        problems.push({ code: 'control-character', message: 'Strings must not contain control characters other than tab, CR and LF', expression: path, issueCode: 'value' });
      }
    } else if (Array.isArray(value)) {
      if (value.length === 0) problems.push({ code: 'empty-array', message: 'Arrays must not be empty: leave the element out instead', expression: path, issueCode: 'structure' });
      value.forEach((v, i) => walk(v, `${path}[${i}]`));
    } else if (typeof value === 'object' && value !== null) {
      if (Object.keys(value).length === 0) problems.push({ code: 'empty-object', message: 'Elements must not be empty: leave the element out instead', expression: path, issueCode: 'structure' });
      for (const [k, v] of Object.entries(value)) {
        // eslint-disable-next-line no-control-regex
        if (/[\u0000-\u001F]/.test(k)) problems.push({ code: 'control-character', message: 'Element names must not contain control characters', expression: path, issueCode: 'structure' });
        walk(v, `${path}.${k}`);
      }
    }
  };
  walk(resource, root);
  return problems;
}
