/**
 * capabilities: https://hl7.org/fhir/R4/http.html#capabilities
 * Generated from the interaction table (./index.ts) and the search registry, so it states exactly
 * what is routed and what can be searched.
 */
import type { CapabilityStatement, CapabilityStatementRestResource, CapabilityStatementRestResourceSearchParam } from 'fhir/r4.js';
import { RESOURCE_TYPES, SERVER_WRITTEN_TYPES } from '../fhir/resource-types.js';
import { searchRegistry } from '../search/definitions.js';
import { SUPPORTED_MODIFIERS } from '../search/parse.js';
import type { FhirContext, Interaction } from './types.js';

type TypeInteraction = NonNullable<CapabilityStatementRestResource['interaction']>[number]['code'];
type SystemInteraction = NonNullable<NonNullable<CapabilityStatement['rest']>[number]['interaction']>[number]['code'];

/** Our interaction codes that are FHIR type-level interaction codes. */
const TYPE_CODES = new Set<string>(['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'history-type', 'create', 'search-type']);
const SYSTEM_CODES = new Set<string>(['transaction', 'batch', 'history-system', 'search-system']);

/** Our operations' canonical URLs: their OperationDefinitions are published in profiles/ (OperationDefinition-*.json). */
const OPERATION_BASE = 'https://met-fhir-server.dev/fhir/OperationDefinition/';

const COMMON_PARAMS: CapabilityStatementRestResourceSearchParam[] = [
  { name: '_id', definition: 'http://hl7.org/fhir/SearchParameter/Resource-id', type: 'token', documentation: 'Logical id; comma for OR.' },
  { name: '_lastUpdated', definition: 'http://hl7.org/fhir/SearchParameter/Resource-lastUpdated', type: 'date', documentation: 'With prefixes eq ne gt lt ge le sa eb ap.' },
];

function searchParams(type: string): CapabilityStatementRestResourceSearchParam[] {
  const indexed = searchRegistry()
    .params(type)
    .filter((p) => p.code !== '_id' && p.code !== '_lastUpdated')
    .map((p) => {
      const modifiers = SUPPORTED_MODIFIERS[p.type];
      const extra = p.type === 'reference' ? ['[type]', 'chaining (2 levels)'] : [];
      const prefixes = p.type === 'date' || p.type === 'number' || p.type === 'quantity' ? ' Prefixes: eq ne gt lt ge le sa eb ap.' : '';
      const mods = [...modifiers, ...extra].map((m) => (m.startsWith('[') || m.startsWith('chain') ? m : `:${m}`));
      return {
        name: p.code,
        definition: p.url,
        type: p.type,
        documentation: `${mods.length > 0 ? `Modifiers: ${mods.join(' ')}.` : 'No modifiers.'}${prefixes}`,
      };
    });
  return [...COMMON_PARAMS, ...indexed];
}

export function capabilityStatement(ctx: FhirContext, interactions: readonly Interaction[]): CapabilityStatement {
  const codes = new Set(interactions.map((i) => i.code));
  const typeCodes = [...codes].filter((c) => TYPE_CODES.has(c)) as TypeInteraction[];
  const systemCodes = [...codes].filter((c) => SYSTEM_CODES.has(c)) as SystemInteraction[];
  if (codes.has('transaction')) systemCodes.push('batch');
  const registry = searchRegistry();
  const resource: CapabilityStatementRestResource[] = RESOURCE_TYPES.map((type) => {
    const referenceParams = registry.params(type).filter((p) => p.type === 'reference');
    // Types the server alone writes (src/http/auth.ts refuses the rest): clients read and search them.
    const allowed = SERVER_WRITTEN_TYPES.has(type) ? typeCodes.filter((c) => !['create', 'update', 'patch', 'delete'].includes(c)) : typeCodes;
    const entry: CapabilityStatementRestResource = {
      type: type as CapabilityStatementRestResource['type'],
      interaction: allowed.map((code) => ({ code })),
      versioning: 'versioned-update',
      readHistory: codes.has('vread'),
      updateCreate: codes.has('update'),
      conditionalCreate: codes.has('create'),
      conditionalRead: 'not-supported',
      conditionalUpdate: codes.has('conditional-update'),
      conditionalDelete: codes.has('conditional-delete') ? 'single' : 'not-supported',
    };
    if (codes.has('search-type')) {
      entry.searchInclude = ['*', ...referenceParams.map((p) => `${type}:${p.code}`)];
      entry.searchRevInclude = RESOURCE_TYPES.flatMap((source) =>
        registry
          .params(source)
          .filter((p) => p.type === 'reference' && (p.targets.length === 0 || p.targets.includes(type)))
          .map((p) => `${source}:${p.code}`),
      );
      entry.searchParam = searchParams(type);
    }
    const operations = interactions.filter((i) => i.code === 'operation' && i.resourceType === type && i.operation);
    if (operations.length > 0) {
      entry.operation = operations.map((i) => ({ name: i.operation as string, definition: `${OPERATION_BASE}${type}-${i.operation as string}` }));
    }
    return entry;
  });
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: ctx.startedAt,
    publisher: 'MET FHIR server',
    kind: 'instance',
    software: { name: ctx.software.name, version: ctx.software.version },
    implementation: { description: 'FHIR R4 server for medical exercise professionals', url: ctx.fhirBase },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    ...(codes.has('patch') ? { patchFormat: ['application/json-patch+json', 'application/fhir+json'] } : {}),
    rest: [
      {
        mode: 'server',
        documentation:
          'Search: every R4 SearchParameter of types number, date, string, token, reference, quantity, uri and composite; ' +
          'chaining and _has to 2 levels; _include and _revinclude with :iterate; _sort, _count (max 1000), _total, _summary, _elements; ' +
          'keyset paging (_cursor). Unknown parameters are an error unless Prefer: handling=lenient. ' +
          'Dates and times without a time zone are read as UTC. Conditional interactions accept any search criteria.',
        // Every interaction but this one needs a SMART Backend Services access token (src/http/auth.ts).
        security: {
          extension: [
            {
              url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
              extension: [{ url: 'token', valueUri: `${ctx.fhirBase.replace(/\/fhir$/, '')}/auth/token` }],
            },
          ],
          service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] }],
          description:
            'SMART Backend Services: client_credentials at the token URL with private_key_jwt (RS384, ES384), client_secret_basic or ' +
            'client_secret_post; scopes system/<type>.<read|write|*> (v1) and system/<type>.<cruds> (v2), enforced per interaction.',
        },
        resource,
        interaction: systemCodes.map((code) => ({ code })),
      },
    ],
  };
}
