/**
 * Search behaviour, per parameter type, prefix and modifier, with the edge cases the spec names
 * (partial dates, time zones, escaped commas, missing values, references by URL and by id).
 * Every resource here carries this run's tag, and every search filters on it, so the shared
 * database's other resources never interfere.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { api, BASE_URL, FHIR_JSON, assertOutcome } from './helpers.js';

const RUN = randomUUID().slice(0, 8);
const TAG = { system: 'urn:test:search', code: RUN };
const SCOPE = `_tag=${encodeURIComponent(`urn:test:search|${RUN}`)}`;

type R = Record<string, unknown> & { resourceType: string; id?: string };
interface Bundle {
  resourceType: string;
  type: string;
  total?: number;
  link: { relation: string; url: string }[];
  entry?: { fullUrl: string; resource: R; search: { mode: string } }[];
}

async function put(resource: R): Promise<R> {
  const body = { ...resource, meta: { tag: [TAG] } };
  const res = await (await api()).put(`/fhir/${resource.resourceType}/${resource.id}`).set('Content-Type', FHIR_JSON).send(body);
  assert.ok(res.status === 201 || res.status === 200, `${resource.resourceType}/${resource.id}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body as R;
}

async function search(path: string, status = 200): Promise<Bundle> {
  const sep = path.includes('?') ? '&' : '?';
  const res = await (await api()).get(`/fhir/${path}${sep}${SCOPE}`);
  assert.equal(res.status, status, JSON.stringify(res.body));
  return res.body as Bundle;
}

/** The ids of the matches, sorted unless `ordered`. */
async function ids(path: string, ordered = false): Promise<string[]> {
  const bundle = await search(path);
  const list = (bundle.entry ?? []).filter((e) => e.search.mode === 'match').map((e) => e.resource.id as string);
  return ordered ? list : list.sort();
}

const id = (s: string): string => `${s}-${RUN}`;

describe('search', function () {
  this.timeout(60_000);

  before(async () => {
    await put({
      resourceType: 'Patient',
      id: id('anna'),
      identifier: [{ system: 'urn:oid:1.2.3', value: 'MRN-1' }, { value: 'no-system' }],
      active: true,
      name: [{ family: 'Müller', given: ['Anna', 'Maria'] }],
      gender: 'female',
      birthDate: '1960-05-03',
      telecom: [{ system: 'phone', value: '555-0100' }],
      address: [{ line: ['1 Main St'], city: 'Springfield', postalCode: '12345', country: 'US' }],
    });
    await put({
      resourceType: 'Patient',
      id: id('bob'),
      identifier: [{ system: 'urn:oid:1.2.3', value: 'MRN-2' }],
      active: false,
      name: [{ family: 'Smith, Jr', given: ['Bob'] }],
      gender: 'male',
      birthDate: '1975',
      generalPractitioner: [{ reference: 'Practitioner/' + id('doc') }],
    });
    await put({ resourceType: 'Patient', id: id('carl'), name: [{ family: 'Mueller', given: ['Carl'] }], gender: 'male', birthDate: '1975-12-31' });
    await put({ resourceType: 'Practitioner', id: id('doc'), name: [{ family: 'House' }], identifier: [{ system: 'urn:npi', value: 'NPI-9' }] });
    const obs = (name: string, patient: string, code: string, value: number, unit: string, date: string, extra: Partial<R> = {}): R => ({
      resourceType: 'Observation',
      id: id(name),
      status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code, display: code === '8867-4' ? 'Heart rate' : 'Body weight' }], text: code === '8867-4' ? 'Heart rate' : 'Body weight' },
      subject: { reference: `Patient/${id(patient)}` },
      effectiveDateTime: date,
      valueQuantity: { value, unit, system: 'http://unitsofmeasure.org', code: unit },
      ...extra,
    });
    await put(obs('hr1', 'anna', '8867-4', 72, '/min', '2020-01-01T23:30:00-05:00'));
    await put(obs('hr2', 'anna', '8867-4', 100, '/min', '2020-03-15T08:00:00Z'));
    await put(obs('wt1', 'bob', '29463-7', 80.5, 'kg', '2021-06-30'));
    await put({
      resourceType: 'Observation',
      id: id('bp'),
      status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code: '85354-9' }] },
      subject: { reference: `${BASE_URL}/fhir/Patient/${id('carl')}` },
      effectivePeriod: { start: '2022-02-01T10:00:00Z', end: '2022-02-01T11:00:00Z' },
      component: [
        { code: { coding: [{ system: 'http://loinc.org', code: '8480-6' }] }, valueQuantity: { value: 140, unit: 'mm[Hg]', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' } },
        { code: { coding: [{ system: 'http://loinc.org', code: '8462-4' }] }, valueQuantity: { value: 90, unit: 'mm[Hg]', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' } },
      ],
    });
    await put({ resourceType: 'RiskAssessment', id: id('risk'), status: 'final', subject: { reference: `Patient/${id('anna')}` }, prediction: [{ probabilityDecimal: 0.25 }] });
    await put({ resourceType: 'ValueSet', id: id('vs'), status: 'active', url: `http://example.org/fhir/ValueSet/${RUN}/exercise` });
  });

  describe('string', () => {
    it('matches the start of any name part, ignoring case and accents', async () => {
      assert.deepEqual(await ids('Patient?name=mull'), [id('anna')]);
      assert.deepEqual(await ids('Patient?name=MÜLLER'), [id('anna')]);
      assert.deepEqual(await ids('Patient?given=mar'), [id('anna')]);
      assert.deepEqual(await ids('Patient?family=mu'), [id('anna'), id('carl')]);
    });
    it(':exact matches the whole value, case and accents included', async () => {
      assert.deepEqual(await ids(`Patient?family:exact=${encodeURIComponent('Müller')}`), [id('anna')]);
      assert.deepEqual(await ids('Patient?family:exact=muller'), []);
    });
    it(':contains matches anywhere', async () => {
      assert.deepEqual(await ids('Patient?family:contains=elle'), [id('carl')]);
      assert.deepEqual(await ids('Patient?address=spring'), [id('anna')]);
    });
    it('an escaped comma is part of the value, an unescaped comma is OR', async () => {
      assert.deepEqual(await ids(`Patient?family=${encodeURIComponent('smith\\, jr')}`), [id('bob')]);
      assert.deepEqual(await ids('Patient?family=smith,mueller'), [id('bob'), id('carl')]);
    });
    it('a repeated parameter is AND', async () => {
      assert.deepEqual(await ids('Patient?name=anna&name=maria'), [id('anna')]);
      assert.deepEqual(await ids('Patient?name=anna&name=bob'), []);
    });
  });

  describe('token', () => {
    it('code, system|code, |code and system|', async () => {
      assert.deepEqual(await ids('Patient?identifier=MRN-1'), [id('anna')]);
      assert.deepEqual(await ids(`Patient?identifier=${encodeURIComponent('urn:oid:1.2.3|MRN-2')}`), [id('bob')]);
      assert.deepEqual(await ids(`Patient?identifier=${encodeURIComponent('urn:oid:9|MRN-2')}`), []);
      assert.deepEqual(await ids(`Patient?identifier=${encodeURIComponent('|no-system')}`), [id('anna')]);
      assert.deepEqual(await ids(`Patient?identifier=${encodeURIComponent('|MRN-1')}`), []);
      assert.deepEqual(await ids(`Patient?identifier=${encodeURIComponent('urn:oid:1.2.3|')}`), [id('anna'), id('bob')]);
    });
    it('codes, booleans and contact points', async () => {
      assert.deepEqual(await ids('Patient?gender=male'), [id('bob'), id('carl')]);
      assert.deepEqual(await ids('Patient?active=true'), [id('anna')]);
      assert.deepEqual(await ids('Patient?phone=555-0100'), [id('anna')]);
    });
    it(':not includes resources without the value', async () => {
      assert.deepEqual(await ids('Patient?gender:not=male'), [id('anna')]);
      assert.deepEqual(await ids('Patient?active:not=true'), [id('bob'), id('carl')]);
    });
    it(':text matches display and text', async () => {
      assert.deepEqual(await ids('Observation?code:text=heart'), [id('hr1'), id('hr2')]);
    });
    it(':missing', async () => {
      assert.deepEqual(await ids('Patient?active:missing=true'), [id('carl')]);
      assert.deepEqual(await ids('Patient?active:missing=false'), [id('anna'), id('bob')]);
    });
  });

  describe('date', () => {
    it('partial dates stand for their whole range', async () => {
      assert.deepEqual(await ids('Patient?birthdate=1975'), [id('bob'), id('carl')]);
      assert.deepEqual(await ids('Patient?birthdate=1975-12'), [id('carl')]);
      // 1975 (the whole year) is not within December 1975
      assert.deepEqual(await ids('Patient?birthdate=1960-05-03'), [id('anna')]);
    });
    it('converts time zones: 2020-01-01T23:30-05:00 is 2020-01-02 in UTC', async () => {
      assert.deepEqual(await ids('Observation?date=2020-01-02'), [id('hr1')]);
      assert.deepEqual(await ids('Observation?date=2020-01-01'), []);
      assert.deepEqual(await ids(`Observation?date=${encodeURIComponent('2020-01-01T23:30:00-05:00')}`), [id('hr1')]);
      assert.deepEqual(await ids(`Observation?date=${encodeURIComponent('2020-01-02T04:30:00Z')}`), [id('hr1')]);
    });
    it('prefixes gt lt ge le sa eb ne ap', async () => {
      assert.deepEqual(await ids('Patient?birthdate=gt1975-06'), [id('bob'), id('carl')]);
      assert.deepEqual(await ids('Patient?birthdate=lt1975-06'), [id('anna'), id('bob')]);
      // 1975 as a whole does not reach beyond 1975-12-31, nor lies within it
      assert.deepEqual(await ids('Patient?birthdate=ge1975-12-31'), [id('carl')]);
      assert.deepEqual(await ids('Patient?birthdate=le1960-05-03'), [id('anna')]);
      assert.deepEqual(await ids('Patient?birthdate=sa1960'), [id('bob'), id('carl')]);
      assert.deepEqual(await ids('Patient?birthdate=eb1975'), [id('anna')]);
      assert.deepEqual(await ids('Patient?birthdate=ne1975'), [id('anna')]);
      // ap widens by 10 % of the distance from now (here some 245 days): 2020-01-02 is near, 2021-06-30 is not
      assert.deepEqual(await ids('Observation?date=ap2020-03-14'), [id('hr1'), id('hr2')]);
    });
    it('periods: the whole period must lie within an eq value', async () => {
      assert.deepEqual(await ids('Observation?date=2022-02-01'), [id('bp')]);
      assert.deepEqual(await ids(`Observation?date=${encodeURIComponent('2022-02-01T10:30:00Z')}`), []);
      assert.deepEqual(await ids(`Observation?date=${encodeURIComponent('gt2022-02-01T10:30:00Z')}`), [id('bp')]);
    });
    it('rejects a date that does not exist', async () => {
      const res = await (await api()).get('/fhir/Patient?birthdate=2021-02-30');
      assert.equal(res.status, 400);
      assertOutcome(res.body, [
        { code: 'invalid', detail: 'invalid-search-value', expression: 'birthdate', diagnostics: "birthdate: '2021-02-30' is not a date (YYYY, YYYY-MM, YYYY-MM-DD or a dateTime with time zone)" },
      ]);
    });
    it('_lastUpdated', async () => {
      assert.equal((await ids('Patient?_lastUpdated=gt2020-01-01')).length, 3);
      assert.deepEqual(await ids('Patient?_lastUpdated=lt2020-01-01'), []);
    });
  });

  describe('number and quantity', () => {
    it('numbers with the implicit range of their precision', async () => {
      assert.deepEqual(await ids('RiskAssessment?probability=0.25'), [id('risk')]);
      // 0.3 stands for [0.25, 0.35): 0.25 is in it, 0.4 is not
      assert.deepEqual(await ids('RiskAssessment?probability=0.3'), [id('risk')]);
      assert.deepEqual(await ids('RiskAssessment?probability=0.4'), []);
      assert.deepEqual(await ids('RiskAssessment?probability=gt0.2'), [id('risk')]);
      assert.deepEqual(await ids('RiskAssessment?probability=lt0.2'), []);
    });
    it('quantities with prefixes, system|code and ||unit', async () => {
      assert.deepEqual(await ids('Observation?value-quantity=72'), [id('hr1')]);
      assert.deepEqual(await ids('Observation?value-quantity=gt75'), [id('hr2'), id('wt1')]);
      assert.deepEqual(await ids('Observation?value-quantity=le80.5'), [id('hr1'), id('wt1')]);
      assert.deepEqual(await ids(`Observation?value-quantity=${encodeURIComponent('gt75|http://unitsofmeasure.org|kg')}`), [id('wt1')]);
      assert.deepEqual(await ids(`Observation?value-quantity=${encodeURIComponent('80.5||kg')}`), [id('wt1')]);
      assert.deepEqual(await ids('Observation?value-quantity=ap82'), [id('wt1')]);
      assert.deepEqual(await ids('Observation?value-quantity=ne72&code=8867-4'), [id('hr2')]);
    });
  });

  describe('reference', () => {
    it('by id, by Type/id, by absolute URL of this server, and with a type modifier', async () => {
      assert.deepEqual(await ids(`Observation?subject=${id('anna')}`), [id('hr1'), id('hr2')]);
      assert.deepEqual(await ids(`Observation?subject=Patient/${id('carl')}`), [id('bp')]);
      assert.deepEqual(await ids(`Observation?patient=${encodeURIComponent(`${BASE_URL}/fhir/Patient/${id('bob')}`)}`), [id('wt1')]);
      assert.deepEqual(await ids(`Observation?subject:Patient=${id('anna')}`), [id('hr1'), id('hr2')]);
      assert.deepEqual(await ids(`Observation?subject:Group=${id('anna')}`), []);
    });
    it('chained one and two levels', async () => {
      assert.deepEqual(await ids('Observation?subject:Patient.name=anna'), [id('hr1'), id('hr2')]);
      assert.deepEqual(await ids(`Observation?patient.identifier=${encodeURIComponent('urn:oid:1.2.3|MRN-2')}`), [id('wt1')]);
      assert.deepEqual(await ids('Observation?subject:Patient.general-practitioner:Practitioner.name=house'), [id('wt1')]);
    });
    it('_has, reverse chaining', async () => {
      assert.deepEqual(await ids('Patient?_has:Observation:patient:code=8867-4'), [id('anna')]);
      assert.deepEqual(await ids('Patient?_has:Observation:subject:value-quantity=gt75'), [id('anna'), id('bob')]);
    });
  });

  describe('uri and composite', () => {
    it('uri exact, :below and :above', async () => {
      const url = `http://example.org/fhir/ValueSet/${RUN}/exercise`;
      assert.deepEqual(await ids(`ValueSet?url=${encodeURIComponent(url)}`), [id('vs')]);
      assert.deepEqual(await ids(`ValueSet?url:below=${encodeURIComponent(`http://example.org/fhir/ValueSet/${RUN}`)}`), [id('vs')]);
      assert.deepEqual(await ids(`ValueSet?url:above=${encodeURIComponent(`${url}/v2`)}`), [id('vs')]);
      assert.deepEqual(await ids(`ValueSet?url=${encodeURIComponent(`http://example.org/fhir/ValueSet/${RUN}`)}`), []);
    });
    it('composite components must come from the same element', async () => {
      assert.deepEqual(await ids(`Observation?component-code-value-quantity=${encodeURIComponent('8480-6$gt130')}`), [id('bp')]);
      // 8462-4 (diastolic) is 90: "8462-4 above 130" must not pair it with the systolic 140
      assert.deepEqual(await ids(`Observation?component-code-value-quantity=${encodeURIComponent('8462-4$gt130')}`), []);
      assert.deepEqual(await ids(`Observation?code-value-quantity=${encodeURIComponent('http://loinc.org|8867-4$ge100')}`), [id('hr2')]);
    });
  });

  describe('results', () => {
    it('_sort on several keys, descending with -', async () => {
      assert.deepEqual(await ids('Patient?_sort=birthdate', true), [id('anna'), id('bob'), id('carl')]);
      // Descending sorts on the end of each range: 1975 and 1975-12-31 both end 1976-01-01, then ids decide.
      assert.deepEqual(await ids('Patient?_sort=-birthdate', true), [id('bob'), id('carl'), id('anna')]);
      assert.deepEqual(await ids('Patient?_sort=gender,-birthdate', true), [id('anna'), id('bob'), id('carl')]);
      assert.deepEqual(await ids('Patient?_sort=-gender,birthdate', true), [id('bob'), id('carl'), id('anna')]);
      assert.deepEqual(await ids('Observation?_sort=-date', true), [id('bp'), id('wt1'), id('hr2'), id('hr1')]);
    });
    it('pages with next and previous links that keep working while data changes', async () => {
      // family sorts as normalised: mueller < muller < smith, jr
      const first = await search('Patient?_sort=family&_count=1');
      assert.deepEqual(first.entry?.map((e) => e.resource.id), [id('carl')]);
      assert.equal(first.total, undefined, 'no total is computed for a partial first page unless asked');
      const next = first.link.find((l) => l.relation === 'next');
      assert.ok(next);
      // A resource that sorts before the page boundary appears meanwhile: the next page is unaffected.
      await put({ resourceType: 'Patient', id: id('aaron'), name: [{ family: 'Aaronson' }] });
      const second = (await (await api()).get(next.url.replace(BASE_URL, ''))).body as Bundle;
      assert.deepEqual(second.entry?.map((e) => e.resource.id), [id('anna')]);
      const third = (await (await api()).get((second.link.find((l) => l.relation === 'next') as { url: string }).url.replace(BASE_URL, ''))).body as Bundle;
      assert.deepEqual(third.entry?.map((e) => e.resource.id), [id('bob')]);
      assert.equal(third.link.find((l) => l.relation === 'next'), undefined);
      const back = (await (await api()).get((third.link.find((l) => l.relation === 'previous') as { url: string }).url.replace(BASE_URL, ''))).body as Bundle;
      assert.deepEqual(back.entry?.map((e) => e.resource.id), [id('anna')]);
      await (await api()).delete(`/fhir/Patient/${id('aaron')}`);
    });
    it('_total and _summary=count', async () => {
      assert.equal((await search('Patient?_count=1&_total=accurate')).total, 3);
      assert.equal(typeof (await search('Patient?_count=1&_total=estimate')).total, 'number');
      assert.equal((await search('Patient?_total=none')).total, undefined);
      const count = await search('Patient?_summary=count');
      assert.equal(count.total, 3);
      assert.equal(count.entry, undefined);
    });
    it('_elements and _summary mark the result SUBSETTED', async () => {
      const bundle = await search(`Patient?_id=${id('anna')}&_elements=gender`);
      const r = bundle.entry?.[0]?.resource as R & { meta: { tag: { code: string }[] } };
      assert.deepEqual(Object.keys(r).sort(), ['gender', 'id', 'meta', 'resourceType']);
      assert.ok(r.meta.tag.some((t) => t.code === 'SUBSETTED'));
      const summary = (await search(`Patient?_id=${id('anna')}&_summary=true`)).entry?.[0]?.resource as R;
      assert.equal(summary.telecom !== undefined, true);
      assert.equal((summary as { address?: unknown }).address !== undefined, true);
    });
    it('_include, _revinclude and :iterate', async () => {
      const inc = await search(`Observation?_id=${id('wt1')}&_include=Observation:subject`);
      assert.deepEqual(inc.entry?.map((e) => `${e.resource.id}:${e.search.mode}`), [`${id('wt1')}:match`, `${id('bob')}:include`]);
      const it2 = await search(`Observation?_id=${id('wt1')}&_include=Observation:subject&_include:iterate=Patient:general-practitioner`);
      assert.deepEqual(it2.entry?.map((e) => e.resource.id), [id('wt1'), id('bob'), id('doc')]);
      const rev = await search(`Patient?_id=${id('anna')}&_revinclude=Observation:subject`);
      assert.deepEqual(rev.entry?.filter((e) => e.search.mode === 'include').map((e) => e.resource.id).sort(), [id('hr1'), id('hr2')]);
    });
    it('POST _search with a form body', async () => {
      const res = await (await api()).post('/fhir/Patient/_search').type('form').send(`gender=male&${SCOPE}`);
      assert.equal(res.status, 200);
      assert.deepEqual(((res.body as Bundle).entry ?? []).map((e) => e.resource.id).sort(), [id('bob'), id('carl')]);
    });
    it('entries have fullUrl and search.mode; self link', async () => {
      const bundle = await search(`Patient?_id=${id('anna')}`);
      assert.equal(bundle.type, 'searchset');
      assert.equal(bundle.total, 1);
      assert.equal(bundle.entry?.[0]?.fullUrl, `${BASE_URL}/fhir/Patient/${id('anna')}`);
      assert.ok(bundle.link.find((l) => l.relation === 'self')?.url.startsWith(`${BASE_URL}/fhir/Patient?_id=`));
    });
  });

  describe('errors and leniency', () => {
    it('an unknown parameter is an error', async () => {
      const res = await (await api()).get('/fhir/Patient?colour=red');
      assert.equal(res.status, 400);
      assertOutcome(res.body, [{ code: 'invalid', detail: 'unknown-parameter', expression: 'colour', diagnostics: "'colour' is not a search parameter of Patient" }]);
    });
    it('an unsupported modifier is an error', async () => {
      const res = await (await api()).get('/fhir/Patient?gender:below=x');
      assert.equal(res.status, 400);
      assertOutcome(res.body, [{ code: 'invalid', detail: 'unsupported-search-parameter', expression: 'gender:below', diagnostics: "Modifier ':below' is not supported on token parameter 'gender'" }]);
    });
    it('Prefer: handling=lenient ignores unknown parameters with a warning entry', async () => {
      const res = await (await api()).get(`/fhir/Patient?colour=red&gender=female&${SCOPE}`).set('Prefer', 'handling=lenient');
      assert.equal(res.status, 200);
      const bundle = res.body as Bundle;
      assert.deepEqual(bundle.entry?.filter((e) => e.search.mode === 'match').map((e) => e.resource.id), [id('anna')]);
      const outcome = bundle.entry?.find((e) => e.search.mode === 'outcome')?.resource as unknown as { issue: { severity: string; expression: string[] }[] };
      assert.equal(outcome.issue[0]?.severity, 'warning');
      assert.deepEqual(outcome.issue[0]?.expression, ['colour']);
    });
    it('bad values: _count, prefixes, quantities, cursors', async () => {
      for (const q of ['_count=-1', '_count=abc', 'birthdate=gtx', '_cursor=abc', '_total=some', '_summary=maybe']) {
        const res = await (await api()).get(`/fhir/Patient?${q}`);
        assert.equal(res.status, 400, q);
      }
      assert.equal((await (await api()).get('/fhir/Observation?value-quantity=abc')).status, 400);
    });
  });

  describe('index in step with writes', () => {
    it('an update re-indexes and a delete removes from results', async () => {
      await put({ resourceType: 'Patient', id: id('temp'), name: [{ family: 'Zeta' }] });
      assert.deepEqual(await ids('Patient?family=zeta'), [id('temp')]);
      await put({ resourceType: 'Patient', id: id('temp'), name: [{ family: 'Omega' }] });
      assert.deepEqual(await ids('Patient?family=zeta'), []);
      assert.deepEqual(await ids('Patient?family=omega'), [id('temp')]);
      await (await api()).delete(`/fhir/Patient/${id('temp')}`);
      assert.deepEqual(await ids('Patient?family=omega'), []);
    });
  });
});
