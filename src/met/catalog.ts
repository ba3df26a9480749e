/**
 * The measurement catalog (mappings/measures.json) as data the mappings and the checks read:
 * measure key → code, canonical UCUM unit, units accepted with their conversion, plausible range,
 * qualifiers. No code lives here; a new measurement is a change to the catalog only.
 */
import { readFileSync } from 'node:fs';

export interface Coding {
  system: string;
  code: string;
  display: string;
}

export interface AcceptedUnit {
  unit: string;
  ucum: string;
  factor: number;
  offset?: number;
}

export interface Range {
  min: number;
  max: number;
}

interface Scalar {
  key: string;
  display: string;
  code: Coding;
  unit: { code: string; display: string };
  acceptedUnits: AcceptedUnit[];
  range: Range;
}

export interface Measure extends Partial<Omit<Scalar, 'key' | 'display' | 'code'>> {
  key: string;
  display: string;
  code: Coding;
  category: string;
  valueType: 'quantity' | 'integer' | 'components';
  components?: Scalar[];
  qualifiers: string[];
  requiredQualifiers?: string[];
  profile: string;
  /** Results during or just after exercise do not count toward goals (blood pressure, heart rate, pain). */
  exerciseSensitive?: boolean;
}

export interface Qualifier {
  display: string;
  type: 'coded' | 'text';
  fhir: string;
  values?: { key: string; code: Coding }[];
}

export interface CatalogFile {
  codeSystem: string;
  measures: Measure[];
  qualifiers: Record<string, Qualifier>;
}

/** A value in its canonical unit, or why it cannot be one. */
export type Converted = { ok: true; value: number; unit: { code: string; display: string } } | { ok: false; message: string };

export const CATALOG_URL = new URL('../../mappings/measures.json', import.meta.url);

export class Catalog {
  private readonly byKey = new Map<string, Measure>();

  constructor(readonly file: CatalogFile) {
    for (const m of file.measures) this.byKey.set(m.key, m);
  }

  static load(url: URL = CATALOG_URL): Catalog {
    return new Catalog(JSON.parse(readFileSync(url, 'utf8')) as CatalogFile);
  }

  measure(key: string): Measure | undefined {
    return this.byKey.get(key);
  }

  get keys(): string[] {
    return [...this.byKey.keys()];
  }

  qualifier(name: string): Qualifier | undefined {
    return this.file.qualifiers[name];
  }

  /** The coding of a coded qualifier's value, e.g. ('side', 'left'). */
  qualifierCoding(name: string, key: string): Coding | undefined {
    return this.file.qualifiers[name]?.values?.find((v) => v.key === key)?.code;
  }

  /**
   * Converts `value` sent in `unit` to the canonical unit of a measure (or of one of its
   * components) and checks the plausible range there.
   */
  convert(scalar: Pick<Scalar, 'display' | 'unit' | 'acceptedUnits' | 'range'>, value: number, unit: string, whole: boolean): Converted {
    const canonical = scalar.unit;
    const accepted = unit === canonical.code || unit === canonical.display ? { factor: 1, offset: 0 } : scalar.acceptedUnits.find((u) => u.unit === unit || u.ucum === unit);
    if (!accepted) {
      const known = [canonical.display, ...scalar.acceptedUnits.map((u) => u.unit)].filter((u, i, all) => all.indexOf(u) === i);
      return { ok: false, message: `'${unit}' is not a unit of ${scalar.display}; use one of: ${known.join(', ')}` };
    }
    const converted = round(value * accepted.factor + (accepted.offset ?? 0));
    if (whole && !Number.isInteger(converted)) return { ok: false, message: `${scalar.display} is a whole number; got ${value}` };
    const { min, max } = scalar.range;
    if (converted < min || converted > max) {
      return { ok: false, message: `${value} ${unit} is not a plausible ${scalar.display} (expected ${min}–${max} ${canonical.display})` };
    }
    return { ok: true, value: converted, unit: canonical };
  }
}

/** Conversions keep at most 4 decimals (a kPa reading in mmHg, a pound weight in kg). */
function round(n: number): number {
  return Math.round(n * 10_000) / 10_000;
}
