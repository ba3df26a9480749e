/**
 * capabilities: https://hl7.org/fhir/R4/http.html#capabilities
 * Generated from the interaction table (./index.ts), so it states exactly what is routed.
 */
import type { CapabilityStatement, CapabilityStatementRestResource } from 'fhir/r4.js';
import { RESOURCE_TYPES } from '../fhir/resource-types.js';
import type { FhirContext, Interaction } from './types.js';

type TypeInteraction = NonNullable<CapabilityStatementRestResource['interaction']>[number]['code'];

export function capabilityStatement(ctx: FhirContext, interactions: readonly Interaction[]): CapabilityStatement {
  const typeCodes = interactions.filter((i) => i.level !== 'system').map((i) => i.code as TypeInteraction);
  const systemCodes = interactions.filter((i) => i.level === 'system' && i.code !== 'capabilities').map((i) => i.code);
  const has = (code: string): boolean => interactions.some((i) => i.code === code);
  const resource: CapabilityStatementRestResource[] = RESOURCE_TYPES.map((type) => ({
    type: type as CapabilityStatementRestResource['type'],
    interaction: typeCodes.map((code) => ({ code })),
    versioning: 'versioned-update',
    readHistory: has('vread'),
    updateCreate: has('update'),
    conditionalCreate: has('create'),
    conditionalRead: 'not-supported',
    conditionalUpdate: false,
    conditionalDelete: 'not-supported',
  }));
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
    rest: [
      {
        mode: 'server',
        documentation: 'If-None-Exist (conditional create) accepts the parameters identifier and _id.',
        resource,
        interaction: systemCodes.map((code) => ({ code: code as 'history-system' })),
      },
    ],
  };
}
