/**
 * Values of search: the implicit ranges of dates and decimals, and string normalisation.
 * https://hl7.org/fhir/R4/search.html#prefix  https://hl7.org/fhir/R4/search.html#date
 *
 * Ranges are half-open, [lo, hi): a date's range is every instant it may stand for (2020 is
 * 2020-01-01T00:00Z up to 2021-01-01T00:00Z), a decimal's the values its precision allows
 * (100 is 99.5 up to 100.5). Dates and times without a time zone are read as UTC, the server's
 * time zone; values with an offset are converted exactly.
 */

export interface DateRange {
  /** ISO instant (UTC), inclusive; '-infinity' when open. */
  lo: string;
  /** ISO instant (UTC), exclusive; 'infinity' when open. */
  hi: string;
}

const DATE_RE =
  /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

function utc(year: number, month: number, day: number, h = 0, m = 0, s = 0, ms = 0): number {
  const d = new Date(Date.UTC(2000, month - 1, day, h, m, s, ms));
  d.setUTCFullYear(year, month - 1, day);
  return d.getTime();
}

/**
 * The range a FHIR date, dateTime or instant (or a search value of that form) stands for, or
 * undefined when it is not one. Calendar values are checked (no 2021-02-30).
 */
export function dateRange(value: string): DateRange | undefined {
  const m = DATE_RE.exec(value);
  if (!m) return undefined;
  const year = Number(m[1]);
  const month = m[2] ? Number(m[2]) : undefined;
  const day = m[3] ? Number(m[3]) : undefined;
  if (month !== undefined && (month < 1 || month > 12)) return undefined;
  if (day !== undefined) {
    const days = new Date(utc(year, (month ?? 1) + 1, 0)).getUTCDate();
    if (day < 1 || day > days) return undefined;
  }
  if (m[4] === undefined) {
    if (month === undefined) return iso(utc(year, 1, 1), utc(year + 1, 1, 1));
    if (day === undefined) return iso(utc(year, month, 1), utc(year, month + 1, 1));
    return iso(utc(year, month, day), utc(year, month, day + 1));
  }
  const h = Number(m[4]);
  const min = Number(m[5]);
  const hasSeconds = m[6] !== undefined;
  const s = hasSeconds ? Number(m[6]) : 0;
  if (h > 24 || min > 59 || s > 60 || (h === 24 && (min > 0 || s > 0))) return undefined;
  const fraction = m[7] ?? '';
  const ms = fraction ? Number(fraction.slice(0, 3).padEnd(3, '0')) : 0;
  let offsetMinutes = 0;
  const zone = m[8];
  if (zone && zone !== 'Z') {
    const sign = zone.startsWith('-') ? -1 : 1;
    const oh = Number(zone.slice(1, 3));
    const om = Number(zone.slice(4, 6));
    if (oh > 14 || om > 59) return undefined;
    offsetMinutes = sign * (oh * 60 + om);
  }
  const start = utc(year, month as number, day as number, h, min, s, ms) - offsetMinutes * 60_000;
  const width = fraction ? 1 : hasSeconds ? 1_000 : 60_000;
  return iso(start, start + width);
}

function iso(lo: number, hi: number): DateRange {
  return { lo: new Date(lo).toISOString(), hi: new Date(hi).toISOString() };
}

/** An exact decimal: digits scaled by 10^-scale. */
interface Decimal {
  digits: bigint;
  scale: number;
}

const DECIMAL_RE = /^([+-]?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/;

function parseDecimal(text: string): Decimal | undefined {
  const m = DECIMAL_RE.exec(text);
  if (!m) return undefined;
  const fraction = m[3] ?? '';
  const exponent = m[4] ? Number(m[4]) : 0;
  if (!Number.isSafeInteger(exponent) || Math.abs(exponent) > 1000) return undefined;
  const digits = BigInt(`${m[1] === '-' ? '-' : ''}${m[2]}${fraction}`);
  return { digits, scale: fraction.length - exponent };
}

function decimalText(d: Decimal): string {
  if (d.scale <= 0) return (d.digits * 10n ** BigInt(-d.scale)).toString();
  const negative = d.digits < 0n;
  const abs = (negative ? -d.digits : d.digits).toString().padStart(d.scale + 1, '0');
  return `${negative ? '-' : ''}${abs.slice(0, -d.scale)}.${abs.slice(-d.scale)}`;
}

export interface NumberRange {
  /** The value as written, normalised to plain decimal notation. */
  value: string;
  /** Inclusive lower bound of the implicit range. */
  lo: string;
  /** Exclusive upper bound of the implicit range. */
  hi: string;
  /** The bounds of "approximately" (±10 %). */
  apLo: string;
  apHi: string;
}

/** A search number with the implicit range of its precision (`100` → [99.5, 100.5)). */
export function numberRange(text: string): NumberRange | undefined {
  const d = parseDecimal(text);
  if (!d) return undefined;
  const lo = { digits: d.digits * 10n - 5n, scale: d.scale + 1 };
  const hi = { digits: d.digits * 10n + 5n, scale: d.scale + 1 };
  const abs = d.digits < 0n ? -d.digits : d.digits;
  const apLo = { digits: d.digits * 10n - abs, scale: d.scale + 1 };
  const apHi = { digits: d.digits * 10n + abs, scale: d.scale + 1 };
  return { value: decimalText(d), lo: decimalText(lo), hi: decimalText(hi), apLo: decimalText(apLo), apHi: decimalText(apHi) };
}

/** A number from a resource, as exact decimal text for the database, or undefined. */
export function decimalOf(value: unknown): string | undefined {
  if (typeof value !== 'number' || !Number.isFinite(value)) return undefined;
  return String(value).includes('e') ? decimalText(parseDecimal(String(value)) as Decimal) : String(value);
}

/**
 * Strings are matched case- and accent-insensitively: lower case, decomposed, combining marks
 * removed, runs of white space as one space. https://hl7.org/fhir/R4/search.html#string
 */
export function normalizeString(value: string): string {
  return value
    .normalize('NFD')
    .replace(/\p{M}+/gu, '')
    .toLowerCase()
    .replace(/\s+/g, ' ')
    .trim();
}

/** Escapes LIKE wildcards so a value is matched literally. */
export function escapeLike(value: string): string {
  return value.replace(/[\\%_]/g, (c) => `\\${c}`);
}
