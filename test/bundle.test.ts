/** batch and transaction Bundles at POST [base]: https://hl7.org/fhir/R4/http.html#transaction */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { api, assertOutcome, BASE_URL, FHIR_JSON, uniqueId } from './helpers.js';

// Response bodies are read as loose JSON, as supertest gives them.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = Record<string, any>;

const SYSTEM = 'urn:met:test';
const urn = (): string => `urn:uuid:${randomUUID()}`;

async function post(bundle: unknown) {
  return (await api()).post('/fhir').set('Content-Type', FHIR_JSON).send(bundle as object);
}

const transaction = (...entry: Json[]): Json => ({ resourceType: 'Bundle', type: 'transaction', entry });
const batch = (...entry: Json[]): Json => ({ resourceType: 'Bundle', type: 'batch', entry });

const patient = (value: string, extra: Json = {}): Json => ({
  resourceType: 'Patient',
  identifier: [{ system: SYSTEM, value }],
  name: [{ family: 'Okafor', given: ['Ada'] }],
  ...extra,
});

async function createPatient(value: string, extra: Json = {}): Promise<string> {
  const res = await (await api()).post('/fhir/Patient').set('Content-Type', FHIR_JSON).send(patient(value, extra));
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body.id as string;
}

async function count(path: string): Promise<number> {
  const res = await (await api()).get(`/fhir/${path}${path.includes('?') ? '&' : '?'}_summary=count`);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.total as number;
}

/** Type and id of a response entry's Location: [base]/Type/id/_history/v */
function located(entry: Json): { type: string; id: string; version: string } {
  const m = new RegExp(`^${BASE_URL}/fhir/([A-Za-z]+)/([A-Za-z0-9\\-.]+)/_history/(\\d+)$`).exec(entry.response.location as string);
  assert.ok(m, `location: ${String(entry.response.location)}`);
  return { type: m[1] as string, id: m[2] as string, version: m[3] as string };
}

function references(value: unknown, out: string[] = []): string[] {
  if (Array.isArray(value)) value.forEach((v) => references(v, out));
  else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      if (k === 'reference' && typeof v === 'string') out.push(v);
      else references(v, out);
    }
  }
  return out;
}

describe('transaction', () => {
  it('creates Patient, Encounter and Observation linked by urn:uuid, rewriting every reference', async () => {
    const p = urn();
    const e = urn();
    const o = urn();
    const absolute = 'http://elsewhere.example/fhir/Practitioner/pr-1';
    const res = await post(
      transaction(
        {
          fullUrl: o,
          resource: {
            resourceType: 'Observation',
            status: 'final',
            code: { text: 'heart rate' },
            subject: { reference: p },
            encounter: { reference: e },
            performer: [{ reference: absolute }, { reference: '#dev' }],
            contained: [{ resourceType: 'Device', id: 'dev', patient: { reference: p } }],
            extension: [
              { url: 'http://example.org/ext-ref', valueReference: { reference: e } },
              { url: 'http://example.org/ext-uri', valueUri: p },
            ],
          },
          request: { method: 'POST', url: 'Observation' },
        },
        { fullUrl: e, resource: { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: p } }, request: { method: 'POST', url: 'Encounter' } },
        { fullUrl: p, resource: patient(uniqueId()), request: { method: 'POST', url: 'Patient' } },
        { fullUrl: absolute, resource: { resourceType: 'Practitioner', name: [{ family: 'Osei' }] }, request: { method: 'POST', url: 'Practitioner' } },
      ),
    );
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.resourceType, 'Bundle');
    assert.equal(res.body.type, 'transaction-response');
    assert.equal(res.body.entry.length, 4);
    const [obs, enc, pat, pract] = (res.body.entry as Json[]).map((entry) => {
      assert.equal(entry.response.status, '201 Created');
      assert.equal(entry.response.etag, 'W/"1"');
      assert.equal(entry.response.lastModified, entry.resource.meta.lastUpdated);
      const where = located(entry);
      assert.equal(where.type, entry.resource.resourceType);
      assert.equal(where.id, entry.resource.id);
      assert.equal(entry.fullUrl, `${BASE_URL}/fhir/${where.type}/${where.id}`);
      return entry.resource as Json;
    }) as [Json, Json, Json, Json];
    assert.deepEqual([obs.resourceType, enc.resourceType, pat.resourceType, pract.resourceType], ['Observation', 'Encounter', 'Patient', 'Practitioner'], 'original order');

    const stored = (await (await api()).get(`/fhir/Observation/${obs.id}`)).body as Json;
    assert.equal(stored.subject.reference, `Patient/${pat.id}`);
    assert.equal(stored.encounter.reference, `Encounter/${enc.id}`);
    assert.deepEqual(stored.performer, [{ reference: `Practitioner/${pract.id}` }, { reference: '#dev' }]);
    assert.equal(stored.contained[0].patient.reference, `Patient/${pat.id}`, 'inside contained resources');
    assert.equal(stored.extension[0].valueReference.reference, `Encounter/${enc.id}`, 'inside extensions');
    assert.equal(stored.extension[1].valueUri, `Patient/${pat.id}`, 'uri values equal to a urn:uuid');
    const encounter = (await (await api()).get(`/fhir/Encounter/${enc.id}`)).body as Json;
    assert.equal(encounter.subject.reference, `Patient/${pat.id}`);
    // The search index holds the rewritten references.
    assert.equal(await count(`Observation?subject=Patient/${pat.id}`), 1);
    assert.equal(await count(`Encounter?patient=${pat.id}`), 1);
  });

  it('conditional create: a match maps the fullUrl to the existing resource and creates nothing', async () => {
    const value = uniqueId('mrn');
    const existing = await createPatient(value);
    const fresh = uniqueId('mrn');
    const [a, b] = [urn(), urn()];
    const res = await post(
      transaction(
        { fullUrl: a, resource: patient(value), request: { method: 'POST', url: 'Patient', ifNoneExist: `identifier=${SYSTEM}|${value}` } },
        { fullUrl: b, resource: patient(fresh), request: { method: 'POST', url: 'Patient', ifNoneExist: `Patient?identifier=${SYSTEM}|${fresh}` } },
        { resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: a }, focus: [{ reference: b }] }, request: { method: 'POST', url: 'Observation' } },
      ),
    );
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const [first, second, third] = res.body.entry as Json[];
    assert.equal(first?.response.status, '200 OK');
    assert.equal(first?.resource.id, existing);
    assert.equal(located(first).version, '1', 'the existing resource is not written');
    assert.equal(second?.response.status, '201 Created');
    assert.equal(third?.resource.subject.reference, `Patient/${existing}`);
    assert.equal(third?.resource.focus[0].reference, `Patient/${second?.resource.id as string}`);
    assert.equal(await count(`Patient?identifier=${SYSTEM}|${value}`), 1);
    assert.equal(await count(`Patient?identifier=${SYSTEM}|${fresh}`), 1);
  });

  it('conditional create with criteria matching two resources fails with 412', async () => {
    const value = uniqueId('dup');
    await createPatient(value);
    await createPatient(value);
    const res = await post(transaction({ resource: patient(value), request: { method: 'POST', url: 'Patient', ifNoneExist: `identifier=${SYSTEM}|${value}` } }));
    assert.equal(res.status, 412);
    assertOutcome(res.body, [{ code: 'conflict', detail: 'multiple-matches', expression: 'Bundle.entry[0].request.ifNoneExist' }]);
  });

  describe('conditional references', () => {
    it('with one match are replaced by the match', async () => {
      const value = uniqueId('cr');
      const id = await createPatient(value);
      const res = await post(
        transaction({
          resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient?identifier=${SYSTEM}|${value}` } },
          request: { method: 'POST', url: 'Observation' },
        }),
      );
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.body.entry[0].resource.subject.reference, `Patient/${id}`);
    });

    it('with no match fail the transaction (412) and nothing is written', async () => {
      const marker = uniqueId('none');
      const res = await post(
        transaction(
          { resource: patient(marker), request: { method: 'POST', url: 'Patient' } },
          {
            resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient?identifier=${SYSTEM}|${uniqueId('nobody')}` } },
            request: { method: 'POST', url: 'Observation' },
          },
        ),
      );
      assert.equal(res.status, 412);
      assertOutcome(res.body, [{ code: 'conflict', detail: 'conditional-reference-unresolved', expression: 'Bundle.entry[1].resource.subject.reference', diagnostics: /^Conditional reference 'Patient\?identifier=/ }]);
      assert.equal(await count(`Patient?identifier=${SYSTEM}|${marker}`), 0);
    });

    it('with two matches fail the transaction (412)', async () => {
      const value = uniqueId('two');
      await createPatient(value);
      await createPatient(value);
      const res = await post(
        transaction({
          resource: { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient?identifier=${SYSTEM}|${value}` } },
          request: { method: 'POST', url: 'Encounter' },
        }),
      );
      assert.equal(res.status, 412);
      assertOutcome(res.body, [{ code: 'conflict', detail: 'multiple-matches', expression: 'Bundle.entry[0].resource.subject.reference' }]);
    });

    it('resolve to a conditional create of the same Bundle with the same criteria', async () => {
      const value = uniqueId('org');
      const criteria = `identifier=${SYSTEM}|${value}`;
      const res = await post(
        transaction(
          { resource: { resourceType: 'Patient', managingOrganization: { reference: `Organization?${criteria}` } }, request: { method: 'POST', url: 'Patient' } },
          { fullUrl: urn(), resource: { resourceType: 'Organization', identifier: [{ system: SYSTEM, value }], name: 'Clinic' }, request: { method: 'POST', url: 'Organization', ifNoneExist: criteria } },
        ),
      );
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.body.entry[0].resource.managingOrganization.reference, `Organization/${res.body.entry[1].resource.id as string}`);
      // Sent again: the Organization now exists; both resolve to it.
      const again = await post(
        transaction(
          { resource: { resourceType: 'Patient', managingOrganization: { reference: `Organization?${criteria}` } }, request: { method: 'POST', url: 'Patient' } },
          { resource: { resourceType: 'Organization', identifier: [{ system: SYSTEM, value }], name: 'Clinic' }, request: { method: 'POST', url: 'Organization', ifNoneExist: criteria } },
        ),
      );
      assert.equal(again.status, 200, JSON.stringify(again.body));
      assert.equal(again.body.entry[1].response.status, '200 OK');
      assert.equal(again.body.entry[1].resource.id, res.body.entry[1].resource.id);
      assert.equal(again.body.entry[0].resource.managingOrganization.reference, `Organization/${res.body.entry[1].resource.id as string}`);
      assert.equal(await count(`Organization?identifier=${SYSTEM}|${value}`), 1);
    });
  });

  describe('a failing entry rolls back everything', () => {
    it('stale ifMatch (412), naming the entry', async () => {
      const marker = uniqueId('rb');
      const id = await createPatient(uniqueId());
      const res = await post(
        transaction(
          { fullUrl: urn(), resource: patient(marker), request: { method: 'POST', url: 'Patient' } },
          { resource: patient(marker, { id, gender: 'female' }), request: { method: 'PUT', url: `Patient/${id}`, ifMatch: 'W/"7"' } },
          { request: { method: 'DELETE', url: `Patient/${await createPatient(marker)}` } },
        ),
      );
      assert.equal(res.status, 412);
      assertOutcome(res.body, [{ code: 'conflict', detail: 'version-mismatch', expression: 'Bundle.entry[1].request.ifMatch' }]);
      assert.equal(await count(`Patient?identifier=${SYSTEM}|${marker}`), 1, 'neither the create nor the delete happened');
      const read = await (await api()).get(`/fhir/Patient/${id}`);
      assert.equal(read.body.meta.versionId, '1');
      assert.equal(read.body.gender, undefined);
    });

    it('an unknown resource (404) after several writes', async () => {
      const marker = uniqueId('rb404');
      const res = await post(
        transaction(
          { resource: patient(marker), request: { method: 'POST', url: 'Patient' } },
          { resource: { ...patient(marker), id: marker }, request: { method: 'PUT', url: `Patient/${marker}` } },
          { request: { method: 'GET', url: `Patient/${uniqueId('missing')}` } },
        ),
      );
      assert.equal(res.status, 404);
      assertOutcome(res.body, [{ code: 'not-found', detail: 'resource-not-found', expression: 'Bundle.entry[2]' }]);
      assert.equal(await count(`Patient?identifier=${SYSTEM}|${marker}`), 0);
      assert.equal((await (await api()).get(`/fhir/Patient/${marker}`)).status, 404);
    });

    it('invalid resources (422): every problem, anchored in the Bundle, and nothing is written', async () => {
      const marker = uniqueId('rb422');
      const res = await post(
        transaction(
          { resource: patient(marker), request: { method: 'POST', url: 'Patient' } },
          { resource: { ...patient(marker), birthDate: '1956-13-45' }, request: { method: 'POST', url: 'Patient' } },
          { resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, colour: 'red' }, request: { method: 'POST', url: 'Observation' } },
        ),
      );
      assert.equal(res.status, 422);
      assertOutcome(res.body, [
        { code: 'value', detail: 'invalid-format', expression: 'Bundle.entry[1].resource.birthDate', diagnostics: /.+/ },
        { code: 'structure', detail: 'unknown-element', expression: 'Bundle.entry[2].resource.colour' },
      ]);
      assert.equal(await count(`Patient?identifier=${SYSTEM}|${marker}`), 0);
    });

    it('a reference to a urn:uuid that is no entry (422)', async () => {
      const res = await post(
        transaction({ resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: urn() } }, request: { method: 'POST', url: 'Observation' } }),
      );
      assert.equal(res.status, 422);
      assertOutcome(res.body, [{ code: 'processing', detail: 'bundle-reference-unresolved', expression: 'Bundle.entry[0].resource.subject.reference' }]);
    });
  });

  it('processes DELETE, then POST, then PUT, then GET, and answers in the original order', async () => {
    const key = uniqueId('order');
    const gone = await createPatient(uniqueId());
    const updated = await createPatient(uniqueId());
    const p = urn();
    const res = await post(
      transaction(
        { request: { method: 'GET', url: `Patient?identifier=${SYSTEM}|${key}` } },
        { resource: { ...patient(uniqueId()), id: updated, link: [{ other: { reference: p }, type: 'seealso' }] }, request: { method: 'PUT', url: `Patient/${updated}` } },
        { fullUrl: p, resource: patient(key), request: { method: 'POST', url: 'Patient' } },
        { request: { method: 'DELETE', url: `Patient/${gone}` } },
        { request: { method: 'GET', url: `Patient/${updated}` } },
      ),
    );
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const entries = res.body.entry as Json[];
    assert.deepEqual(
      entries.map((e) => e.response.status),
      ['200 OK', '200 OK', '201 Created', '204 No Content', '200 OK'],
    );
    const created = entries[2]?.resource as Json;
    // GET ran after the POST: the search finds the new Patient.
    assert.equal(entries[0]?.resource.type, 'searchset');
    assert.deepEqual((entries[0]?.resource.entry as Json[]).map((e) => e.resource.id), [created.id]);
    // PUT ran after the POST: its reference to the POST's fullUrl is rewritten.
    assert.equal(entries[1]?.resource.link[0].other.reference, `Patient/${created.id as string}`);
    assert.equal(entries[4]?.resource.meta.versionId, '2', 'GET sees the PUT');
    assert.equal(entries[3]?.response.etag, 'W/"2"');
    assert.equal((await (await api()).get(`/fhir/Patient/${gone}`)).status, 410);
  });

  it('a DELETE runs before a conditional create with the same criteria, which then creates', async () => {
    const value = uniqueId('redo');
    const old = await createPatient(value);
    const res = await post(
      transaction(
        { resource: patient(value), request: { method: 'POST', url: 'Patient', ifNoneExist: `identifier=${SYSTEM}|${value}` } },
        { request: { method: 'DELETE', url: `Patient?identifier=${SYSTEM}|${value}` } },
      ),
    );
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.entry[0].response.status, '201 Created');
    assert.notEqual(res.body.entry[0].resource.id, old);
    assert.equal(res.body.entry[1].response.status, '204 No Content');
    assert.equal((await (await api()).get(`/fhir/Patient/${old}`)).status, 410);
    assert.equal(await count(`Patient?identifier=${SYSTEM}|${value}`), 1);
  });

  it('update with ifMatch, create-on-update, conditional update and conditional delete', async () => {
    const id = await createPatient(uniqueId());
    const newId = uniqueId('put');
    const match = uniqueId('cu');
    const matched = await createPatient(match);
    const none = uniqueId('cu0');
    const doomed = uniqueId('cd');
    await createPatient(doomed);
    const res = await post(
      transaction(
        { resource: { ...patient(uniqueId()), id, gender: 'male' }, request: { method: 'PUT', url: `Patient/${id}`, ifMatch: 'W/"1"' } },
        { resource: { ...patient(uniqueId()), id: newId }, request: { method: 'PUT', url: `Patient/${newId}` } },
        { resource: patient(match, { gender: 'female' }), request: { method: 'PUT', url: `Patient?identifier=${SYSTEM}|${match}` } },
        { resource: patient(none), request: { method: 'PUT', url: `Patient?identifier=${SYSTEM}|${none}` } },
        { request: { method: 'DELETE', url: `Patient?identifier=${SYSTEM}|${doomed}` } },
        { request: { method: 'DELETE', url: `Patient?identifier=${SYSTEM}|${uniqueId('nothing')}` } },
      ),
    );
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const entries = res.body.entry as Json[];
    assert.deepEqual(entries.map((e) => e.response.status), ['200 OK', '201 Created', '200 OK', '201 Created', '204 No Content', '204 No Content']);
    assert.equal(entries[0]?.resource.meta.versionId, '2');
    assert.equal(entries[1]?.resource.id, newId);
    assert.equal(entries[2]?.resource.id, matched);
    assert.equal(entries[2]?.resource.gender, 'female');
    assert.equal(await count(`Patient?identifier=${SYSTEM}|${none}`), 1);
    assert.equal(await count(`Patient?identifier=${SYSTEM}|${doomed}`), 0);
  });

  it('GET entries: read, vread and search (with _summary=count)', async () => {
    const value = uniqueId('get');
    const id = await createPatient(value);
    await (await api()).put(`/fhir/Patient/${id}`).set('Content-Type', FHIR_JSON).send({ ...patient(value), id, gender: 'other' });
    const res = await post(
      transaction(
        { request: { method: 'GET', url: `Patient/${id}` } },
        { request: { method: 'GET', url: `Patient/${id}/_history/1` } },
        { request: { method: 'GET', url: `Patient?identifier=${SYSTEM}|${value}` } },
        { request: { method: 'GET', url: `${BASE_URL}/fhir/Patient?identifier=${SYSTEM}|${value}&_summary=count` } },
        { request: { method: 'HEAD', url: `Patient/${id}` } },
      ),
    );
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const [read, vread, search, counted, head] = res.body.entry as Json[];
    assert.equal(read?.resource.gender, 'other');
    assert.equal(read?.response.etag, 'W/"2"');
    assert.equal(vread?.resource.gender, undefined);
    assert.equal(vread?.response.etag, 'W/"1"');
    assert.equal(search?.resource.total, 1);
    assert.equal(search?.resource.entry[0].resource.id, id);
    assert.deepEqual([counted?.resource.type, counted?.resource.total, counted?.resource.entry], ['searchset', 1, undefined]);
    assert.equal(head?.resource, undefined);
    assert.equal(head?.response.status, '200 OK');
  });

  it('PATCH entries: JSON Patch in a Binary and FHIRPath Patch', async () => {
    const id = await createPatient(uniqueId());
    const other = await createPatient(uniqueId());
    const p = urn();
    const jsonPatch = [
      { op: 'add', path: '/gender', value: 'female' },
      { op: 'add', path: '/generalPractitioner', value: [{ reference: p }] },
    ];
    const res = await post(
      transaction(
        { resource: { resourceType: 'Binary', contentType: 'application/json-patch+json', data: Buffer.from(JSON.stringify(jsonPatch)).toString('base64') }, request: { method: 'PATCH', url: `Patient/${id}` } },
        {
          resource: {
            resourceType: 'Parameters',
            parameter: [{ name: 'operation', part: [{ name: 'type', valueCode: 'add' }, { name: 'path', valueString: 'Patient' }, { name: 'name', valueString: 'birthDate' }, { name: 'value', valueDate: '1970-01-01' }] }],
          },
          request: { method: 'PATCH', url: `Patient/${other}`, ifMatch: 'W/"1"' },
        },
        { fullUrl: p, resource: { resourceType: 'Practitioner', name: [{ family: 'Mensah' }] }, request: { method: 'POST', url: 'Practitioner' } },
      ),
    );
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const [a, b, c] = res.body.entry as Json[];
    assert.equal(a?.response.status, '200 OK');
    assert.equal(a?.resource.gender, 'female');
    assert.equal(a?.resource.meta.versionId, '2');
    assert.equal(a?.resource.generalPractitioner[0].reference, `Practitioner/${c?.resource.id as string}`);
    assert.equal(b?.resource.birthDate, '1970-01-01');

    const failing = await post(
      transaction({ resource: { resourceType: 'Binary', contentType: 'application/json-patch+json', data: Buffer.from(JSON.stringify([{ op: 'test', path: '/gender', value: 'male' }])).toString('base64') }, request: { method: 'PATCH', url: `Patient/${id}` } }),
    );
    assert.equal(failing.status, 409);
    assertOutcome(failing.body, [{ code: 'conflict', detail: 'patch-test-failed', expression: 'Bundle.entry[0].resource.data', diagnostics: /at \/0/ }]);
  });

  it('refuses two entries for the same resource, and two entries with the same fullUrl (400)', async () => {
    const id = await createPatient(uniqueId());
    const same = await post(
      transaction(
        { resource: { ...patient(uniqueId()), id }, request: { method: 'PUT', url: `Patient/${id}` } },
        { request: { method: 'DELETE', url: `Patient/${id}` } },
      ),
    );
    assert.equal(same.status, 400);
    assertOutcome(same.body, [{ code: 'invalid', detail: 'duplicate-bundle-entry', expression: 'Bundle.entry[1]', diagnostics: `Bundle.entry[0] and Bundle.entry[1] both act on Patient/${id}` }]);

    const value = uniqueId('dupc');
    await createPatient(value);
    const resolved = await post(
      transaction(
        { resource: { ...patient(value), id, gender: 'male' }, request: { method: 'PUT', url: `Patient/${id}` } },
        { request: { method: 'DELETE', url: `Patient?_id=${id}` } },
      ),
    );
    assert.equal(resolved.status, 400, 'a conditional delete resolving to a resource another entry writes');
    assertOutcome(resolved.body, [{ code: 'invalid', detail: 'duplicate-bundle-entry', expression: 'Bundle.entry[1]' }]);
    assert.equal((await (await api()).get(`/fhir/Patient/${id}`)).status, 200, 'rolled back');

    const fullUrl = urn();
    const twice = await post(
      transaction(
        { fullUrl, resource: patient(uniqueId()), request: { method: 'POST', url: 'Patient' } },
        { fullUrl, resource: patient(uniqueId()), request: { method: 'POST', url: 'Patient' } },
      ),
    );
    assert.equal(twice.status, 400);
    assertOutcome(twice.body, [{ code: 'invalid', detail: 'duplicate-bundle-entry', expression: 'Bundle.entry[1].fullUrl' }]);
  });

  it('an empty transaction answers an empty transaction-response', async () => {
    const res = await post({ resourceType: 'Bundle', type: 'transaction' });
    assert.equal(res.status, 200);
    assert.equal(res.body.type, 'transaction-response');
    assert.equal(res.body.entry, undefined);
  });
});

describe('Bundle checks', () => {
  it('only Bundles of type batch or transaction', async () => {
    const doc = await post({ resourceType: 'Bundle', type: 'collection', entry: [] as Json[] });
    assert.equal(doc.status, 400);
    assertOutcome(doc.body, [{ code: 'invalid', detail: 'unsupported-bundle-type', expression: 'Bundle.type', diagnostics: 'Bundle.type is "collection": POST [base] processes Bundles of type batch or transaction only' }]);
    const none = await post({ resourceType: 'Bundle' });
    assertOutcome(none.body, [{ code: 'invalid', detail: 'unsupported-bundle-type', expression: 'Bundle.type', diagnostics: /^Bundle.type is missing/ }]);
    const notBundle = await post(patient('x'));
    assert.equal(notBundle.status, 400);
    assertOutcome(notBundle.body, [{ code: 'invalid', detail: 'resource-type-mismatch', expression: 'resourceType' }]);
  });

  it('malformed entries name the element at fault', async () => {
    const cases: [Json, number, string, string][] = [
      [{ resource: patient('x') }, 400, 'invalid-bundle-entry', 'Bundle.entry[0].request'],
      [{ request: { method: 'POST', url: 'Patient' } }, 400, 'invalid-bundle-entry', 'Bundle.entry[0].resource'],
      [{ request: { method: 'GET', url: 'Patient/1/_history' } }, 400, 'invalid-bundle-entry', 'Bundle.entry[0].request.url'],
      [{ request: { method: 'GET', url: 'https://other.example/fhir/Patient/1' } }, 400, 'invalid-bundle-entry', 'Bundle.entry[0].request.url'],
      [{ request: { method: 'DELETE', url: 'Patient' } }, 400, 'invalid-bundle-entry', 'Bundle.entry[0].request.url'],
      [{ request: { method: 'GET', url: 'Patientt/1' } }, 404, 'unknown-resource-type', 'Bundle.entry[0].request.url'],
      [{ request: { method: 'GET', url: 'Patient/a_b' } }, 400, 'invalid-id', 'Bundle.entry[0].request.url'],
      [{ resource: patient('x'), request: { method: 'POST', url: 'Observation' } }, 400, 'resource-type-mismatch', 'Bundle.entry[0].resource.resourceType'],
      [{ resource: { ...patient('x'), id: 'b' }, request: { method: 'PUT', url: 'Patient/a' } }, 400, 'id-mismatch', 'Bundle.entry[0].resource.id'],
      [{ request: { method: 'DELETE', url: 'Patient/a', ifMatch: '3' } }, 400, 'invalid-if-match', 'Bundle.entry[0].request.ifMatch'],
      [{ request: { method: 'GET', url: 'Patient?birthdate=yesterday' } }, 400, 'invalid-search-value', 'Bundle.entry[0].request.url'],
      [{ request: { method: 'GET', url: 'Patient?nonsense=1' } }, 400, 'unknown-parameter', 'Bundle.entry[0].request.url'],
      [{ request: { method: 'FETCH', url: 'Patient/1' } }, 400, 'invalid-bundle-entry', 'Bundle.entry[0].request.method'],
      [{ request: { method: 'GET', url: 'Patient/1', ifNoneMatch: 1 } }, 422, 'invalid-type', 'Bundle.entry[0].request.ifNoneMatch'],
    ];
    for (const [entry, status, detail, expression] of cases) {
      for (const type of ['transaction', 'batch']) {
        const res = await post({ resourceType: 'Bundle', type, entry: [entry] });
        if (type === 'transaction') {
          assert.equal(res.status, status, `${JSON.stringify(entry)}: ${JSON.stringify(res.body)}`);
          assert.equal(res.body.issue[0].details.coding[0].code, detail, JSON.stringify(res.body));
          assert.deepEqual(res.body.issue[0].expression, [expression]);
        } else {
          assert.equal(res.status, 200);
          const response = res.body.entry[0].response as Json;
          assert.match(response.status, new RegExp(`^${status} `));
          assert.equal(response.outcome.issue[0].details.coding[0].code, detail);
          assert.deepEqual(response.outcome.issue[0].expression, [expression]);
        }
      }
    }
  });

  it('at most 10,000 entries (413)', async () => {
    const entry = Array.from({ length: 10_001 }, () => ({ request: { method: 'GET', url: 'Patient/x' } }));
    const res = await post({ resourceType: 'Bundle', type: 'batch', entry });
    assert.equal(res.status, 413);
    assertOutcome(res.body, [{ code: 'too-costly', detail: 'too-many-entries', expression: 'Bundle.entry' }]);
  });

  it('GET [base] is not routed (405, Allow: POST); the CapabilityStatement lists transaction and batch', async () => {
    const agent = await api();
    const res = await agent.get('/fhir');
    assert.equal(res.status, 405);
    assert.match(String(res.headers.allow), /POST/);
    const metadata = await agent.get('/fhir/metadata');
    const codes = (metadata.body.rest[0].interaction as Json[]).map((i) => i.code);
    assert.ok(codes.includes('transaction') && codes.includes('batch'), JSON.stringify(codes));
  });
});

describe('batch', () => {
  it('processes each entry on its own: failures get a status and an outcome, the rest is done', async () => {
    const marker = uniqueId('batch');
    const id = await createPatient(uniqueId());
    const doomed = await createPatient(uniqueId());
    const res = await post(
      batch(
        { resource: patient(marker), request: { method: 'POST', url: 'Patient' } },
        { request: { method: 'GET', url: `Patient/${uniqueId('missing')}` } },
        { resource: { ...patient(marker), id }, request: { method: 'PUT', url: `Patient/${id}`, ifMatch: 'W/"9"' } },
        { resource: { ...patient(marker), birthDate: 'soon' }, request: { method: 'POST', url: 'Patient' } },
        { request: { method: 'DELETE', url: `Patient/${doomed}` } },
        { request: { method: 'GET', url: `Patient?identifier=${SYSTEM}|${marker}` } },
        { resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient?identifier=${SYSTEM}|${marker}` } }, request: { method: 'POST', url: 'Observation' } },
        { fullUrl: 'urn:uuid:7c6f3c3e-0a4f-4b43-9d83-6d7f1f3a8a11', resource: patient(marker), request: { method: 'POST', url: 'Patient' } },
        { resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'urn:uuid:7c6f3c3e-0a4f-4b43-9d83-6d7f1f3a8a11' } }, request: { method: 'POST', url: 'Observation' } },
      ),
    );
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.type, 'batch-response');
    const entries = res.body.entry as Json[];
    assert.deepEqual(entries.map((e) => e.response.status), [
      '201 Created',
      '404 Not Found',
      '412 Precondition Failed',
      '422 Unprocessable Entity',
      '204 No Content',
      '200 OK',
      '422 Unprocessable Entity',
      '201 Created',
      '422 Unprocessable Entity',
    ]);
    const codes = entries.map((e) => (e.response.outcome ? e.response.outcome.issue[0].details.coding[0].code : undefined));
    assert.deepEqual(codes, [
      undefined,
      'resource-not-found',
      'version-mismatch',
      'invalid-format',
      undefined,
      undefined,
      'conditional-reference-outside-transaction',
      undefined,
      'bundle-reference-unresolved',
    ]);
    assert.deepEqual(entries[3]?.response.outcome.issue[0].expression, ['Bundle.entry[3].resource.birthDate']);
    assert.deepEqual(entries[2]?.response.outcome.issue[0].expression, ['Bundle.entry[2].request.ifMatch']);
    assert.equal(entries[5]?.resource.total, 1, 'entries are processed in order: the search sees the first create');
    assert.equal(await count(`Patient?identifier=${SYSTEM}|${marker}`), 2);
    assert.equal((await (await api()).get(`/fhir/Patient/${doomed}`)).status, 410);
    assert.equal((await (await api()).get(`/fhir/Patient/${id}`)).body.meta.versionId, '1');
  });

  it('conditional create, conditional update and PATCH in a batch', async () => {
    const value = uniqueId('bc');
    const existing = await createPatient(value);
    const res = await post(
      batch(
        { resource: patient(value), request: { method: 'POST', url: 'Patient', ifNoneExist: `identifier=${SYSTEM}|${value}` } },
        { resource: patient(value, { gender: 'male' }), request: { method: 'PUT', url: `Patient?identifier=${SYSTEM}|${value}` } },
        {
          resource: { resourceType: 'Binary', contentType: 'application/json-patch+json', data: Buffer.from(JSON.stringify([{ op: 'add', path: '/active', value: true }])).toString('base64') },
          request: { method: 'PATCH', url: `Patient?identifier=${SYSTEM}|${value}` },
        },
      ),
    );
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const entries = res.body.entry as Json[];
    assert.deepEqual(entries.map((e) => e.response.status), ['200 OK', '200 OK', '200 OK']);
    assert.ok(entries.every((e) => e.resource.id === existing));
    assert.equal(entries[2]?.resource.meta.versionId, '3');
    assert.equal(entries[2]?.resource.gender, 'male');
    assert.equal(entries[2]?.resource.active, true);
  });
});

describe('transaction concurrency', () => {
  it('10 parallel transactions conditionally creating the same Patient create it once', async () => {
    const value = uniqueId('race');
    const send = () => {
      const p = urn();
      return post(
        transaction(
          { fullUrl: p, resource: patient(value), request: { method: 'POST', url: 'Patient', ifNoneExist: `identifier=${SYSTEM}|${value}` } },
          { resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: p } }, request: { method: 'POST', url: 'Observation' } },
        ),
      );
    };
    const results = await Promise.all(Array.from({ length: 10 }, send));
    for (const r of results) assert.equal(r.status, 200, JSON.stringify(r.body));
    const statuses = results.map((r) => r.body.entry[0].response.status as string).sort();
    assert.deepEqual(statuses, ['200 OK', ...Array<string>(8).fill('200 OK'), '201 Created'].sort());
    const ids = new Set(results.map((r) => r.body.entry[0].resource.id as string));
    assert.equal(ids.size, 1);
    const [id] = [...ids];
    assert.equal(await count(`Patient?identifier=${SYSTEM}|${value}`), 1);
    for (const r of results) assert.equal(r.body.entry[1].resource.subject.reference, `Patient/${id as string}`);
    assert.equal(await count(`Observation?subject=Patient/${id as string}`), 10);
  });
});

describe('Synthea patient as a transaction', () => {
  const dir = new URL('../../shared/data/synthea/', import.meta.url);

  it('stores every resource, counted per type, with every reference resolved', async function () {
    const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
    // A mid-sized patient: the first file with 200 to 400 entries.
    const file = files.find((f) => {
      const n = (JSON.parse(readFileSync(new URL(f, dir), 'utf8')) as Json).entry.length as number;
      return n >= 200 && n <= 400;
    });
    assert.ok(file, 'a Synthea file with 200 to 400 entries');
    const bundle = JSON.parse(readFileSync(new URL(file, dir), 'utf8')) as Json;
    assert.equal(bundle.type, 'transaction');
    const expected = new Map<string, number>();
    for (const e of bundle.entry as Json[]) expected.set(e.resource.resourceType as string, (expected.get(e.resource.resourceType as string) ?? 0) + 1);
    const before = new Map<string, number>();
    for (const type of expected.keys()) before.set(type, await count(type));

    const started = performance.now();
    const res = await post(bundle);
    const seconds = (performance.now() - started) / 1000;
    assert.equal(res.status, 200, JSON.stringify(res.body).slice(0, 2000));
    const entries = res.body.entry as Json[];
    assert.equal(entries.length, (bundle.entry as Json[]).length);
    assert.ok(entries.every((e) => e.response.status === '201 Created'));
    for (const [type, n] of expected) assert.equal((await count(type)) - (before.get(type) ?? 0), n, type);

    const stored = new Set(entries.map((e) => `${e.resource.resourceType as string}/${e.resource.id as string}`));
    const refs = entries.flatMap((e) => references(e.resource));
    assert.ok(refs.length > 100);
    for (const ref of refs) assert.ok(ref.startsWith('#') || stored.has(ref), `unresolved reference ${ref}`);
    const patientId = (entries.find((e) => e.resource.resourceType === 'Patient') as Json).resource.id as string;
    assert.equal(await count(`Observation?subject=Patient/${patientId}`), expected.get('Observation'));
    this.test!.title += ` (${file}: ${entries.length} resources in ${seconds.toFixed(2)} s, ${Math.round(entries.length / seconds)}/s)`;
  });

  it('loads all 47 patients as transactions; per-patient searches give the counts in the source files', async function () {
    this.timeout(300_000);
    const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
    assert.equal(files.length, 47);
    const wantedCodes = ['8302-2', '29463-7', '8867-4'];
    let checked = 0;
    for (const f of files) {
      const bundle = JSON.parse(readFileSync(new URL(f, dir), 'utf8')) as Json;
      const entries = bundle.entry as Json[];
      const patientEntry = entries.find((e) => e.resource.resourceType === 'Patient') as Json;
      const patientUrl = patientEntry.fullUrl as string;
      // Counted in the source file: resources whose subject (or patient) is this patient.
      const about = (type: string, field: string): Json[] => entries.filter((e) => e.resource.resourceType === type && (e.resource[field] as Json | undefined)?.reference === patientUrl).map((e) => e.resource as Json);
      const observations = about('Observation', 'subject');
      const expected = {
        observations: observations.length,
        encounters: about('Encounter', 'subject').length,
        conditions: about('Condition', 'subject').length,
        byCode: wantedCodes.map((code) => observations.filter((o) => ((o.code as Json).coding as Json[]).some((c) => c.system === 'http://loinc.org' && c.code === code)).length),
      };
      const res = await post(bundle);
      assert.equal(res.status, 200, `${f}: ${JSON.stringify(res.body).slice(0, 1000)}`);
      const patientId = located((res.body.entry as Json[])[entries.indexOf(patientEntry)] as Json).id;
      assert.equal(await count(`Observation?subject=Patient/${patientId}`), expected.observations, `${f} Observations`);
      assert.equal(await count(`Encounter?patient=${patientId}`), expected.encounters, `${f} Encounters`);
      assert.equal(await count(`Condition?subject:Patient=${patientId}`), expected.conditions, `${f} Conditions`);
      for (const [i, code] of wantedCodes.entries()) {
        assert.equal(await count(`Observation?patient=${patientId}&code=${encodeURIComponent(`http://loinc.org|${code}`)}`), expected.byCode[i], `${f} Observations ${code}`);
      }
      checked += expected.observations;
    }
    assert.ok(checked > 2_000, `Observations checked: ${checked}`);
  });
});
