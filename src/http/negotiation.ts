/**
 * Content negotiation: https://hl7.org/fhir/R4/http.html#mime-type
 * JSON only: application/fhir+json (default) or application/json, chosen by `_format` or Accept.
 * XML (and anything else) is answered 406; a request body that is not JSON is 415.
 */
import { fhirError } from '../fhir/errors.js';

export const FHIR_JSON = 'application/fhir+json';
export const JSON_TYPE = 'application/json';

const FORMAT_ALIASES: Record<string, string | null> = {
  json: FHIR_JSON,
  'application/fhir+json': FHIR_JSON,
  'application/json': JSON_TYPE,
  'application/json+fhir': FHIR_JSON,
  xml: null,
  'text/xml': null,
  'application/xml': null,
  'application/fhir+xml': null,
  'application/xml+fhir': null,
};

/** The media type to answer with, or a 406 FhirError. */
export function responseType(format: string | undefined, accept: string | undefined): string {
  if (format !== undefined) {
    const key = format.split(';')[0]?.trim().toLowerCase() ?? '';
    const chosen = FORMAT_ALIASES[key];
    if (chosen) return chosen;
    throw notAcceptable(`_format=${format}`);
  }
  if (!accept || accept.trim() === '') return FHIR_JSON;
  const ranges = accept
    .split(',')
    .map((part) => {
      const [type = '', ...params] = part.split(';').map((s) => s.trim().toLowerCase());
      const q = params.find((p) => p.startsWith('q='));
      return { type, q: q ? Number(q.slice(2)) : 1 };
    })
    .filter((r) => r.q > 0)
    .sort((a, b) => b.q - a.q);
  for (const { type } of ranges) {
    if (type === FHIR_JSON || type === 'application/json+fhir' || type === 'application/*' || type === '*/*') return FHIR_JSON;
    if (type === JSON_TYPE) return JSON_TYPE;
  }
  throw notAcceptable(`Accept: ${accept}`);
}

function notAcceptable(asked: string) {
  return fhirError('format-not-supported', `${asked} cannot be served: this server speaks FHIR JSON only (application/fhir+json or application/json)`);
}

const BODY_TYPES = {
  resource: [FHIR_JSON, JSON_TYPE, 'application/json+fhir'],
  form: ['application/x-www-form-urlencoded'],
  // JSON Patch, or a FHIRPath Patch (a Parameters resource). https://hl7.org/fhir/R4/http.html#patch
  patch: ['application/json-patch+json', FHIR_JSON, JSON_TYPE, 'application/json+fhir'],
  none: [] as string[],
};

/** A request body must be of a type the interaction reads (FHIR JSON unless it says otherwise). */
export function checkRequestType(contentType: string | undefined, kind: keyof typeof BODY_TYPES = 'resource'): void {
  const type = contentType?.split(';')[0]?.trim().toLowerCase();
  const accepted = BODY_TYPES[kind];
  if (type && accepted.includes(type)) return;
  const expected = accepted.length > 0 ? accepted[0] : 'no body';
  throw fhirError('media-type-not-supported',
    type ? `Content-Type ${type} is not supported here: send ${expected}` : `The request has a body but no Content-Type: send ${expected}`,
  );
}

/** Prefer: handling=strict|lenient https://hl7.org/fhir/R4/search.html#errors */
export function handlingPreference(prefer: string | undefined): 'strict' | 'lenient' | undefined {
  const match = prefer?.match(/(?:^|[,;\s])handling\s*=\s*"?(strict|lenient)"?/i);
  const value = match?.[1]?.toLowerCase();
  return value === 'lenient' || value === 'strict' ? value : undefined;
}

/** Prefer: return=… https://hl7.org/fhir/R4/http.html#ops */
export type ReturnPreference = 'minimal' | 'representation' | 'OperationOutcome';

export function returnPreference(prefer: string | undefined): ReturnPreference {
  const match = prefer?.match(/(?:^|[,;\s])return\s*=\s*"?(minimal|representation|OperationOutcome)"?/i);
  const value = match?.[1]?.toLowerCase();
  if (value === 'minimal') return 'minimal';
  if (value === 'operationoutcome') return 'OperationOutcome';
  return 'representation';
}

/** Deepest nesting of arrays and objects a body may have (FHIR's deepest real structures, nested Questionnaire items, stay far below). */
export const MAX_BODY_DEPTH = 256;

/**
 * Whether a parsed JSON body nests deeper than `max`, measured without recursion: a 100,000-deep
 * body must get a clear 400, not a stack overflow in a validator walking it.
 */
export function nestedDeeperThan(value: unknown, max: number): boolean {
  const stack: [unknown, number][] = [[value, 0]];
  while (stack.length > 0) {
    const [node, depth] = stack.pop() as [unknown, number];
    if (node === null || typeof node !== 'object') continue;
    if (depth >= max) return true;
    for (const child of Array.isArray(node) ? node : Object.values(node)) if (child !== null && typeof child === 'object') stack.push([child, depth + 1]);
  }
  return false;
}
