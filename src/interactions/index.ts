/**
 * The interaction table: every FHIR REST interaction this server implements, in routing order
 * (literal path segments before parameters). The HTTP adapter routes exactly these, and the
 * CapabilityStatement is generated from them.
 */
import { bundleInteraction } from './bundle.js';
import { capabilityStatement } from './capabilities.js';
import { create } from './create.js';
import { conditionalDelete, conditionalUpdate } from './conditional.js';
import { deleteInteraction } from './delete.js';
import { historyInstance, historySystem, historyType } from './history.js';
import { read } from './read.js';
import { patch } from './patch.js';
import { pullDiagnosesOperation } from './pull-diagnoses.js';
import { sendSummaryOperation } from './send-summary.js';
import { search, searchPost } from './search.js';
import type { Interaction } from './types.js';
import { update } from './update.js';
import { vread } from './vread.js';

const RESOURCE_INTERACTIONS: readonly Interaction[] = [
  historySystem,
  historyType,
  searchPost,
  pullDiagnosesOperation,
  sendSummaryOperation,
  vread,
  historyInstance,
  read,
  update,
  patch,
  deleteInteraction,
  create,
  search,
  conditionalUpdate,
  conditionalDelete,
  bundleInteraction,
];

const metadata: Interaction = {
  code: 'capabilities',
  level: 'system',
  method: 'GET',
  path: '/metadata',
  handle: (ctx) => Promise.resolve({ status: 200, resource: capabilityStatement(ctx, RESOURCE_INTERACTIONS) }),
};

export const INTERACTIONS: readonly Interaction[] = [metadata, ...RESOURCE_INTERACTIONS];

export type { FhirContext, FhirRequest, FhirResponse, Interaction } from './types.js';
