/**
 * A token search value `system|value` as a FHIR search parameter carries it: `\`, `|`, `,` and `$`
 * inside the system or the value are escaped with `\` (https://hl7.org/fhir/R4/search.html#escaping),
 * so an identifier such as `MRN|123` is searched as itself, not as a system and a code.
 */
export function tokenSearchValue(system: string, value: string): string {
  const escape = (s: string): string => s.replace(/[\\|,$]/g, (c) => `\\${c}`);
  return `${escape(system)}|${escape(value)}`;
}

/** A string (or date) search value as a FHIR search parameter carries it: `\`, `|`, `,` and `$` escaped with `\`. */
export function stringSearchValue(value: string): string {
  return value.replace(/[\\|,$]/g, (c) => `\\${c}`);
}
