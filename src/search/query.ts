/**
 * A parsed search: what the store compiles to SQL. Nothing here knows SQL or HTTP.
 * https://hl7.org/fhir/R4/search.html
 */
import type { SearchParamType } from './definitions.js';
import type { DateRange, NumberRange } from './values.js';

export type Prefix = 'eq' | 'ne' | 'gt' | 'lt' | 'ge' | 'le' | 'sa' | 'eb' | 'ap';

export type Alternative =
  | { type: 'string'; mode: 'start' | 'exact' | 'contains'; value: string }
  | { type: 'token'; system?: string | null; code?: string; text?: string }
  | { type: 'date'; prefix: Prefix; range: DateRange; approx: DateRange }
  | { type: 'number'; prefix: Prefix; range: NumberRange }
  | { type: 'quantity'; prefix: Prefix; range: NumberRange; system?: string; code?: string }
  | { type: 'reference'; targetType?: string; id?: string; url?: string }
  | { type: 'identifier'; system?: string | null; value?: string }
  | { type: 'uri'; mode: 'eq' | 'above' | 'below'; value: string }
  | { type: 'composite'; components: Alternative[] };

export type Filter =
  /** An indexed parameter; `alternatives` are ORed. `negate` is token :not. */
  | { kind: 'param'; param: string; table: Exclude<SearchParamType, 'composite'>; alternatives: Alternative[]; negate?: boolean }
  | { kind: 'composite'; param: string; tables: Exclude<SearchParamType, 'composite'>[]; alternatives: Alternative[] }
  | { kind: 'missing'; param: string; table: Exclude<SearchParamType, 'composite'>; missing: boolean }
  | { kind: 'id'; ids: string[] }
  | { kind: 'lastUpdated'; alternatives: Alternative[] }
  /** `param:Type.chained=…`: resources whose reference `param` points to a target matching `filter`. */
  | { kind: 'chain'; param: string; targetTypes: string[]; filters: Map<string, Filter> }
  /** `_has:Type:param:…`: resources referenced through `param` by a `sourceType` matching `filter`. */
  | { kind: 'has'; sourceType: string; param: string; filter: Filter };

export interface SortKey {
  /** `_id`, `_lastUpdated`, or an indexed parameter. */
  param: string;
  table?: Exclude<SearchParamType, 'composite'>;
  descending: boolean;
}

export interface IncludeSpec {
  sourceType: string;
  /** Reference parameter, or '*' for all of them. */
  param: string;
  targetType?: string;
  iterate: boolean;
}

export interface Cursor {
  /** Sort values of the row the page starts after (next) or before (previous). */
  values: (string | null)[];
  id: string;
  direction: 'next' | 'previous';
}

export interface SearchQuery {
  resourceType: string;
  filters: Filter[];
  sort: SortKey[];
  count: number;
  total?: 'none' | 'estimate' | 'accurate';
  summary?: 'true' | 'text' | 'data' | 'count' | 'false';
  elements?: string[];
  include: IncludeSpec[];
  revinclude: IncludeSpec[];
  cursor?: Cursor;
}

export interface SearchWarning {
  parameter: string;
  message: string;
}
