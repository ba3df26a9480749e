/**
 * Linking a Patient to an EHR by demographic match, and how such a link is recorded and reviewed.
 *
 * A Patient is linked to an EHR (an Endpoint, ./endpoint.ts) by carrying an identifier of the
 * Endpoint's patientIdentifierSystem: the EHR's MRN. The MET software or a person usually gives
 * it. When the Endpoint says `matchByDemographics` true, $pull-diagnoses may find the MRN itself
 * for a Patient that has no identifier of that system: it searches the EHR's Patients by family
 * name, given name, birthdate and gender, and links only when exactly one of them has
 *   - a name (any, but an `old` one) whose family and first given equal ours (trimmed, Unicode
 *     NFC, case-insensitive),
 *   - the same birthDate (the exact day: ours must be a full date) and gender (ours must be
 *     male, female or other: `unknown` matches nobody),
 *   - exactly one MRN (identifier value) of patientIdentifierSystem.
 * Our name is the Patient's `official` name, else its first name that is not `old`. Several
 * such EHR Patients (even if only one has an MRN) is ambiguous: no link. Nor is a Patient linked
 * to an EHR Patient whose MRN another of our Patients carries already (a duplicate client: the
 * copies of the EHR's diagnoses would move between the two).
 *
 * A link made so is recorded in the transaction that stores the Conditions it brings:
 *   - the Patient gets the EHR's MRN as an identifier with the extension IDENTIFIER_LINK_EXTENSION
 *     (method `demographic-match`, reviewStatus `unreviewed`, the Endpoint, the EHR's Patient, the
 *     review Task), which tells it apart from an MRN the MET software or a person entered. Later
 *     pulls and $send-summary use it like any other MRN.
 *   - a Provenance: target the Patient's version with the identifier (and the Task when new),
 *     activity APPEND (v3-DataOperation) and link (iso-21089-lifecycle), reason TREAT, agent the
 *     server as assembler, entity (source) the EHR's Patient URL;
 *   - a Task for a person to review it: code text "review patient link", status `requested`,
 *     intent `order`, focus and for the Patient, input the EHR's Patient, its MRN, the Endpoint and
 *     the matched values; identifier PATIENT_LINK_SYSTEM | `Patient/<ours>:Endpoint/<id>:Patient/<EHR's id>`,
 *     so that matching the same Patients again finds the same Task and never makes a second one.
 *
 * Review, through the normal FHIR API:
 *   - confirm: update the Task to `completed`, and the identifier's reviewStatus to `confirmed`;
 *   - reject: remove the identifier from the Patient (and delete the Conditions pulled from that
 *     EHR, `Condition?subject=Patient/<id>&_tag=<EHR_ENDPOINT_TAG_SYSTEM>|<Endpoint id>`), and
 *     update the Task to `rejected`. A link whose Task is rejected (or cancelled, failed,
 *     entered-in-error) is never made again by matching; giving the Patient an MRN by hand still
 *     links it.
 * Should the identifier be lost (a client document from the MET software replaces the Patient),
 * the next pull matches again and finds the same Task: the identifier comes back `unreviewed`
 * while the Task is open, `confirmed` when it is completed.
 */
import type { Extension, HumanName, Identifier, Patient, Provenance, Task } from 'fhir/r4.js';

import { IDENTIFIER_LINK_EXTENSION } from '../fhir/identifier-link.js';

export { IDENTIFIER_LINK_EXTENSION };
/** The identifier system of review Tasks: one Task per (our Patient, Endpoint, EHR's Patient). */
export const PATIENT_LINK_SYSTEM = 'https://met-fhir-server.dev/fhir/patient-link';
export const LINK_METHOD = 'demographic-match';
export const REVIEW_TASK_TEXT = 'review patient link';
export type ReviewStatus = 'unreviewed' | 'confirmed';
/** Task statuses that mean a person turned the link down: it is not made again. */
export const REJECTED_TASK_STATUSES: readonly string[] = ['rejected', 'cancelled', 'failed', 'entered-in-error'];

/** The values matched on, in the order they are searched and reported. */
export const DEMOGRAPHIC_FIELDS = ['family', 'given', 'birthDate', 'gender'] as const;
export type DemographicField = (typeof DEMOGRAPHIC_FIELDS)[number];
export interface Demographics {
  family: string;
  given: string;
  birthDate: string;
  gender: string;
}

const FULL_DATE = /^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$/;
const MATCHABLE_GENDERS = ['male', 'female', 'other'];

/** The Patient's name we match on: its `official` name, else its first name that is not `old`. */
export function primaryName(patient: Patient): HumanName | undefined {
  const current = (patient.name ?? []).filter((n) => n.use !== 'old');
  return current.find((n) => n.use === 'official') ?? current[0];
}

/** What we match a Patient on, or the fields it lacks (a partial birthDate, gender `unknown` count as lacking). */
export function demographicsOf(patient: Patient): { demographics: Demographics } | { missing: DemographicField[] } {
  const name = primaryName(patient);
  const values: Record<DemographicField, string | undefined> = {
    family: name?.family?.trim() || undefined,
    given: name?.given?.[0]?.trim() || undefined,
    birthDate: patient.birthDate && FULL_DATE.test(patient.birthDate) ? patient.birthDate : undefined,
    gender: patient.gender && MATCHABLE_GENDERS.includes(patient.gender) ? patient.gender : undefined,
  };
  const missing = DEMOGRAPHIC_FIELDS.filter((f) => values[f] === undefined);
  if (missing.length > 0) return { missing };
  return { demographics: values as Demographics };
}

const fold = (s: string | undefined): string => (s ?? '').trim().normalize('NFC').toLowerCase();

/** Whether one of `candidate`'s names (not `old`) and its birthDate and gender equal `ours` exactly. */
export function sameDemographics(candidate: Patient, ours: Demographics): boolean {
  if (candidate.birthDate !== ours.birthDate || candidate.gender !== ours.gender) return false;
  return (candidate.name ?? []).some((n) => n.use !== 'old' && fold(n.family) === fold(ours.family) && fold(n.given?.[0]) === fold(ours.given));
}

/** The distinct MRNs (values of `system`) a Patient carries. */
export function mrnsOf(patient: Patient, system: string): string[] {
  return [...new Set((patient.identifier ?? []).filter((i) => i.system === system && i.value).map((i) => i.value as string))];
}

/** The Task identifier value of a link: stable for the same Patients and Endpoint. */
export function linkKey(localPatientId: string, endpointId: string, remotePatientId: string): string {
  return `Patient/${localPatientId}:Endpoint/${endpointId}:Patient/${remotePatientId}`;
}

export interface LinkFacts {
  localPatientId: string;
  endpointId: string;
  /** The EHR's Patient, absolute: `${base}/Patient/${id}`. */
  remotePatientUrl: string;
  remotePatientId: string;
  /** The EHR's MRN, as the EHR's Patient carries it (its type kept). */
  mrn: Identifier & { system: string; value: string };
  demographics: Demographics;
}

/** The MRN as our Patient carries it: marked as added by this server's match, with its review status. */
export function linkedIdentifier(facts: LinkFacts, taskId: string, reviewStatus: ReviewStatus): Identifier {
  const mark: Extension = {
    url: IDENTIFIER_LINK_EXTENSION,
    extension: [
      { url: 'method', valueCode: LINK_METHOD },
      { url: 'reviewStatus', valueCode: reviewStatus },
      { url: 'endpoint', valueReference: { reference: `Endpoint/${facts.endpointId}` } },
      { url: 'ehrPatient', valueReference: { reference: facts.remotePatientUrl } },
      { url: 'task', valueReference: { reference: `Task/${taskId}` } },
    ],
  };
  return { extension: [mark], ...(facts.mrn.type ? { type: facts.mrn.type } : {}), system: facts.mrn.system, value: facts.mrn.value };
}

/** The Task asking a person to confirm or reject the link. */
export function reviewTask(facts: LinkFacts, authoredOn: string): Task {
  const d = facts.demographics;
  const patient = `Patient/${facts.localPatientId}`;
  return {
    resourceType: 'Task',
    identifier: [{ system: PATIENT_LINK_SYSTEM, value: linkKey(facts.localPatientId, facts.endpointId, facts.remotePatientId) }],
    status: 'requested',
    intent: 'order',
    priority: 'routine',
    code: { text: REVIEW_TASK_TEXT },
    description:
      `${patient} was linked by demographic match to the EHR's Patient ${facts.remotePatientUrl} (MRN ${facts.mrn.system}|${facts.mrn.value}) of Endpoint/${facts.endpointId}: ` +
      `family ${d.family}, given ${d.given}, birthDate ${d.birthDate}, gender ${d.gender}. Confirm: set this Task to completed and the identifier's reviewStatus to confirmed. ` +
      `Reject: remove the identifier from the Patient, delete the Conditions pulled from that EHR, and set this Task to rejected.`,
    focus: { reference: patient },
    for: { reference: patient },
    authoredOn,
    input: [
      { type: { text: 'ehr-patient' }, valueReference: { reference: facts.remotePatientUrl } },
      { type: { text: 'ehr-identifier' }, valueIdentifier: { system: facts.mrn.system, value: facts.mrn.value } },
      { type: { text: 'endpoint' }, valueReference: { reference: `Endpoint/${facts.endpointId}` } },
      { type: { text: 'family' }, valueString: d.family },
      { type: { text: 'given' }, valueString: d.given },
      { type: { text: 'birthDate' }, valueDate: d.birthDate },
      { type: { text: 'gender' }, valueCode: d.gender },
    ],
  };
}

/** The Provenance of the link: what changed (`targets`, versioned), from what, by whom, why. */
export function linkProvenance(facts: LinkFacts, targets: string[], recorded: string, software: { name: string; version: string }): Provenance {
  return {
    resourceType: 'Provenance',
    target: targets.map((reference) => ({ reference })),
    recorded,
    activity: {
      coding: [
        { system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation', code: 'APPEND', display: 'append' },
        { system: 'http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle', code: 'link', display: 'Link Record Lifecycle Event' },
      ],
      text: 'linked to an EHR patient by demographic match',
    },
    reason: [
      {
        coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'TREAT', display: 'treatment' }],
        text: `exactly one Patient of the EHR of Endpoint/${facts.endpointId} has the same family name, first given name, birthDate and gender`,
      },
    ],
    agent: [
      {
        type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'assembler', display: 'Assembler' }] },
        who: { display: `${software.name} ${software.version} ($pull-diagnoses)` },
      },
    ],
    entity: [{ role: 'source', what: { reference: facts.remotePatientUrl, display: `the EHR's Patient (MRN ${facts.mrn.system}|${facts.mrn.value})` } }],
  };
}
