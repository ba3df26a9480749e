/**
 * `Observation?code=…&value-quantity=…` is searched as the composite `code-value-quantity`, whose
 * index holds code and value in one row (src/search/parse.ts, combineRootedComposites). The two
 * must find exactly the same resources: here every search is run both ways, over Observations
 * chosen to tell them apart if they differed (several codings, a code without a value, a value
 * without a code, a Range or SampledData value, components, other units, a deleted one).
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { parseSearch } from '../src/search/parse.js';
import { api, BASE_URL, FHIR_JSON, testContext } from './helpers.js';

const RUN = randomUUID().slice(0, 8);
const TAG = `urn:test:combined|${RUN}`;
const LOINC = 'http://loinc.org';
const UCUM = 'http://unitsofmeasure.org';

const quantity = (value: number, code = 'mm[Hg]', unit?: string): Record<string, unknown> => ({ value, unit: unit ?? code, system: UCUM, code });
const codeOf = (...codings: [string | undefined, string][]): Record<string, unknown> => ({ coding: codings.map(([system, code]) => (system ? { system, code } : { code })) });

const OBSERVATIONS: Record<string, unknown>[] = [
  { code: codeOf([LOINC, '8480-6']), valueQuantity: quantity(120) },
  { code: codeOf([LOINC, '8480-6']), valueQuantity: quantity(150) },
  { code: codeOf([LOINC, '8480-6'], ['urn:local', 'sys']), valueQuantity: quantity(135) },
  { code: codeOf(['urn:local', '8480-6']), valueQuantity: quantity(140) },
  { code: codeOf([undefined, '8480-6']), valueQuantity: quantity(160) },
  { code: codeOf([LOINC, '8480-6']) },
  { code: { text: 'systolic' }, valueQuantity: quantity(170) },
  { code: codeOf([LOINC, '8480-6']), valueRange: { low: quantity(100), high: quantity(200) } },
  { code: codeOf([LOINC, '8480-6']), valueSampledData: { origin: quantity(130), period: 10, dimensions: 1, data: '1 2 3' } },
  {
    code: codeOf([LOINC, '85354-9']),
    component: [
      { code: codeOf([LOINC, '8480-6']), valueQuantity: quantity(145) },
      { code: codeOf([LOINC, '8462-4']), valueQuantity: quantity(95) },
    ],
  },
  { code: codeOf([LOINC, '8480-6']), valueQuantity: quantity(18.7, 'kPa') },
  { code: codeOf([LOINC, '8480-6']), valueQuantity: { value: 130, unit: 'mmHg' } },
  { code: codeOf([LOINC, '8867-4']), valueQuantity: quantity(72, '/min') },
  { code: codeOf([LOINC, '8867-4'], [LOINC, '8480-6']), valueQuantity: quantity(155) },
];

const CODES = ['8480-6', `${LOINC}|8480-6`, `urn:local|8480-6`, `|8480-6`, `${LOINC}|`, `8480-6,8867-4`, `${LOINC}|8867-4`];
const VALUES = [
  'gt130', 'ge135', 'lt140', 'le120', 'eq150', '150', 'ne150', 'ap150', 'sa140', 'eb140', 'gt0',
  `gt130|${UCUM}|mm[Hg]`, 'gt10||kPa', 'gt100||mmHg', `lt100|${UCUM}|/min`, 'gt130,lt125',
];

describe('search: code and value-quantity as one composite', function () {
  this.timeout(60_000);
  const ids: string[] = [];

  before(async () => {
    const agent = await api();
    for (const [i, o] of OBSERVATIONS.entries()) {
      const id = `cmb-${RUN}-${i}`;
      const body = { resourceType: 'Observation', id, status: 'final', meta: { tag: [{ system: 'urn:test:combined', code: RUN }] }, ...o };
      const res = await agent.put(`/fhir/Observation/${id}`).set('Content-Type', FHIR_JSON).send(body);
      assert.equal(res.status, 201, JSON.stringify(res.body));
      ids.push(id);
    }
    // A deleted one that matched: found by neither.
    assert.ok([200, 204].includes((await agent.delete(`/fhir/Observation/${ids[1] as string}`)).status));
  });

  async function found(params: Record<string, string[]>, combine: boolean): Promise<string[]> {
    const { ctx } = await testContext();
    const { query } = parseSearch('Observation', { ...params, _tag: [TAG], _count: ['1000'] }, { fhirBase: `${BASE_URL}/fhir`, lenient: false, combine });
    const kinds = query.filters.map((f) => f.kind);
    assert.equal(kinds.includes('composite'), combine, `searched as the composite: ${String(combine)}`);
    return (await ctx.repo.search(query)).rows.map((r) => r.id).sort();
  }

  it('finds the same Observations either way, for every code and value form', async () => {
    let nonEmpty = 0;
    for (const code of CODES) {
      for (const value of VALUES) {
        const params = { code: [code], 'value-quantity': [value] };
        const combined = await found(params, true);
        assert.deepEqual(combined, await found(params, false), `code=${code}&value-quantity=${value}`);
        if (combined.length > 0) nonEmpty++;
      }
    }
    assert.ok(nonEmpty > 40, `most searches find something (${nonEmpty})`);
  });

  it('finds what it should (checked by hand)', async () => {
    const id = (i: number): string => `cmb-${RUN}-${i}`;
    assert.deepEqual(await found({ code: [`${LOINC}|8480-6`], 'value-quantity': ['gt130'] }, true), [id(2), id(13)].sort());
    assert.deepEqual(await found({ code: ['8480-6'], 'value-quantity': ['gt130'] }, true), [id(2), id(3), id(4), id(13)].sort());
    assert.deepEqual(await found({ code: ['8480-6'], 'value-quantity': ['gt10||kPa'] }, true), [id(10)]);
  });

  it('keeps each filter as it is when a modifier or a second value of one rules the composite out', () => {
    const { query } = parseSearch('Observation', { 'code:text': ['sys'], 'value-quantity': ['gt1'] }, { fhirBase: `${BASE_URL}/fhir`, lenient: false });
    assert.deepEqual(query.filters.map((f) => f.kind), ['param', 'param']);
    const twice = parseSearch('Observation', { code: ['8480-6'], 'value-quantity': ['gt1', 'lt500'] }, { fhirBase: `${BASE_URL}/fhir`, lenient: false }).query;
    assert.deepEqual(twice.filters.map((f) => f.kind).sort(), ['composite', 'param'], 'one value pairs with the code, the other stays');
  });
});
