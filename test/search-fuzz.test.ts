/**
 * Fuzzing the search-parameter parser (fast-check): no generated search crashes the server (a
 * search answers 200 or a 400 OperationOutcome, never 500), and no value, name or modifier from
 * the request ever appears in the SQL text: everything reaches the database as a bound parameter.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { parseSearch } from '../src/search/parse.js';
import { searchRegistry } from '../src/search/definitions.js';
import { countSql, pageSql } from '../src/store/search-sql.js';
import { api, BASE_URL } from './helpers.js';

/** Put into every generated name and value; the SQL text must never contain it. */
const MARK = 'Zq9';

const TYPES = ['Patient', 'Observation', 'Encounter', 'CarePlan', 'Goal'];
const names = (type: string): string[] => searchRegistry().params(type).map((p) => p.code);
const MODIFIERS = ['', ':missing', ':exact', ':contains', ':not', ':text', ':above', ':below', ':identifier', ':Patient', ':Group', ':in', `:${MARK}`];
const PREFIXES = ['', 'eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb', 'ap', 'xx'];
const PIECES = [
  "'; DROP TABLE resource; --",
  `${MARK}' OR '1'='1`,
  '2020',
  '2020-02-30',
  '2020-01-01T10:00:00+05:00',
  '2020-01-01T10:00',
  '1e400',
  '-0.000',
  '5.4|http://unitsofmeasure.org|mg',
  'http://loinc.org|8867-4',
  '|x',
  'a\\,b',
  'a,b',
  'x$y',
  '\\',
  '%_',
  'Patient/123',
  'http://fhir.test/fhir/Patient/1',
  'true',
  '💪',
  '\u0000',
  '',
];

const value = fc.oneof(
  fc.tuple(fc.constantFrom(...PREFIXES), fc.constantFrom(...PIECES)).map(([p, v]) => p + v),
  fc.string({ maxLength: 30 }),
  fc.tuple(fc.constantFrom(...PIECES), fc.constantFrom(...PIECES)).map(([a, b]) => `${a}${MARK}${b}`),
);

function paramName(type: string): fc.Arbitrary<string> {
  const all = names(type);
  return fc.oneof(
    fc.tuple(fc.constantFrom(...all), fc.constantFrom(...MODIFIERS)).map(([n, m]) => n + m),
    fc.tuple(fc.constantFrom(...all), fc.constantFrom('name', 'identifier', 'code', 'birthdate', `${MARK}`, '_id')).map(([n, c]) => `${n}.${c}`),
    fc.tuple(fc.constantFrom(...all), fc.constantFrom(...TYPES, MARK), fc.constantFrom('name', 'gender', '_id')).map(([n, t, c]) => `${n}:${t}.${c}`),
    fc.tuple(fc.constantFrom(...TYPES, MARK), fc.constantFrom('subject', 'patient', MARK), fc.constantFrom('code', 'date', 'value-quantity')).map(([t, p, c]) => `_has:${t}:${p}:${c}`),
    fc.constantFrom('_id', '_lastUpdated', '_count', '_sort', '_total', '_summary', '_elements', '_include', '_revinclude', '_include:iterate', '_cursor', MARK),
    fc.string({ maxLength: 12 }),
  );
}

const searchOf = (maxParams: number) =>
  fc.constantFrom(...TYPES).chain((type) =>
    fc.record({ type: fc.constant(type), params: fc.array(fc.tuple(paramName(type), value), { minLength: 1, maxLength: maxParams }) }),
  );
const search = searchOf(5);

function toRecord(params: [string, string][]): Record<string, string[]> {
  const out = Object.create(null) as Record<string, string[]>;
  for (const [n, v] of params) (out[n] ??= []).push(v);
  return out;
}

describe('search parser fuzz', function () {
  this.timeout(120_000);

  it('puts no request text into SQL: 3,000 generated searches', () => {
    let compiled = 0;
    fc.assert(
      fc.property(search, ({ type, params }) => {
        let parsed;
        try {
          parsed = parseSearch(type, toRecord(params), { fhirBase: `${BASE_URL}/fhir`, lenient: params.length % 2 === 0 });
        } catch (error) {
          // Refused: it must be one of our errors, never a crash of the parser.
          assert.equal((error as Error).name, 'FhirError', String((error as Error).stack));
          return;
        }
        compiled++;
        for (const sql of [pageSql(parsed.query, 51), countSql(parsed.query)]) {
          assert.ok(!sql.text.includes(MARK), `request text in SQL: ${sql.text}`);
          assert.ok(!sql.text.includes("'; DROP"), sql.text);
          const placeholders = new Set([...sql.text.matchAll(/\$(\d+)/g)].map((m) => Number(m[1])));
          assert.equal(placeholders.size, sql.values.length, 'every bound value is used, and only those');
        }
      }),
      { numRuns: 3000, seed: 20261123 },
    );
    assert.ok(compiled > 150, `enough searches got through the parser to reach SQL (${compiled})`);
  });

  it('answers 200 or 400 to 500 generated searches over HTTP, never 500', async () => {
    const agent = await api();
    // One or two parameters each, so that a fair share gets past the parser and runs in the database.
    const samples = fc.sample(searchOf(2), { numRuns: 500, seed: 7 });
    const statuses = new Map<number, number>();
    for (const { type, params } of samples) {
      const qs = params.map(([n, v]) => `${encodeURIComponent(n)}=${encodeURIComponent(v)}`).join('&');
      const res = await agent.get(`/fhir/${type}?${qs}`);
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      assert.ok(res.status === 200 || res.status === 400, `${type}?${qs} answered ${res.status}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.resourceType, res.status === 200 ? 'Bundle' : 'OperationOutcome');
    }
    assert.ok((statuses.get(200) ?? 0) > 10, `some searches ran: ${JSON.stringify([...statuses])}`);
  });
});
