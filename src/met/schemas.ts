/**
 * The JSON Schemas of the MET documents (mappings/schemas/v1), compiled once with ajv, and their
 * errors turned into problems a vendor's developer reads: the JSON Pointer of the value at fault
 * and a sentence about it. Every problem of a document is reported at once.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';

export const SCHEMA_DIR = new URL('../../mappings/schemas/v1/', import.meta.url);

/** One problem in a document: where (JSON Pointer into the document) and what. */
export interface DocumentProblem {
  pointer: string;
  code: string;
  detail: string;
}

export class DocumentSchemas {
  private readonly validators = new Map<string, ValidateFunction>();
  /** The schema files as published at /met/v1/schemas/<name>. */
  readonly files = new Map<string, string>();

  constructor(dir: URL = SCHEMA_DIR) {
    const ajv = new Ajv2020({ allErrors: true, strict: true });
    for (const name of readdirSync(dir).filter((n) => n.endsWith('.schema.json')).sort()) {
      const text = readFileSync(new URL(name, dir), 'utf8');
      this.files.set(name, text);
      ajv.addSchema(JSON.parse(text) as object, name);
    }
    for (const name of this.files.keys()) {
      const type = name.replace(/\.schema\.json$/, '');
      if (type === 'common') continue;
      this.validators.set(type, ajv.getSchema(name) as ValidateFunction);
    }
  }

  get types(): string[] {
    return [...this.validators.keys()];
  }

  /** Every schema problem of `document` as a `type` document; empty when it is valid. */
  problems(type: string, document: unknown): DocumentProblem[] {
    const validate = this.validators.get(type);
    if (!validate) throw new Error(`no schema for document type ${type}`);
    if (validate(document)) return [];
    return dedupe((validate.errors ?? []).filter(isReported).map(problemOf));
  }
}

/** Errors that only say "a subschema failed" add nothing to the ones that say which. */
function isReported(e: ErrorObject): boolean {
  return e.keyword !== 'if' && e.keyword !== 'oneOf' && e.keyword !== 'anyOf' && e.keyword !== 'allOf';
}

function problemOf(e: ErrorObject): DocumentProblem {
  const at = e.instancePath;
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'required':
      return { pointer: `${at}/${pointerToken(String(p.missingProperty))}`, code: 'required', detail: `'${String(p.missingProperty)}' is required` };
    case 'additionalProperties':
      return { pointer: `${at}/${pointerToken(String(p.additionalProperty))}`, code: 'unknown-property', detail: `'${String(p.additionalProperty)}' is not a property of this document (check its spelling)` };
    case 'enum':
      return { pointer: at, code: 'not-allowed', detail: `must be one of: ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}` };
    case 'const':
      return { pointer: at, code: 'not-allowed', detail: `must be ${JSON.stringify(p.allowedValue)}` };
    case 'type':
      return { pointer: at, code: 'wrong-type', detail: `must be ${article(String(p.type))}` };
    case 'pattern':
      return { pointer: at, code: 'wrong-format', detail: `is not in the expected format (${describePattern(String(p.pattern))})` };
    case 'not':
      return { pointer: at, code: 'not-allowed', detail: 'is not allowed here' };
    default:
      return { pointer: at, code: e.keyword, detail: e.message ?? 'is not valid' };
  }
}

/** One reference token of a JSON Pointer (RFC 6901): `~` and `/` escaped. */
export function pointerToken(name: string): string {
  return name.replace(/~/g, '~0').replace(/\//g, '~1');
}

function article(type: string): string {
  const word = type.replace(/,/g, ' or ');
  return /^[aeiou]/.test(word) ? `an ${word}` : `a ${word}`;
}

/** The patterns our schemas use, in words; others are shown as they are. */
function describePattern(pattern: string): string {
  if (pattern.startsWith('^\\d{4}-\\d{2}-\\d{2}T')) return 'a date and time with its UTC offset, e.g. 2026-11-02T09:30:00-05:00';
  if (pattern.startsWith('^\\d{4}-\\d{2}-\\d{2}$')) return 'a date, YYYY-MM-DD';
  return `pattern ${pattern}`;
}

function dedupe(problems: DocumentProblem[]): DocumentProblem[] {
  const seen = new Set<string>();
  return problems.filter((p) => {
    const key = `${p.pointer} ${p.detail}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}
