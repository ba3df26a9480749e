/**
 * Every error status the API produces, each asserting the exact OperationOutcome.
 * Status table: src/fhir/errors.ts; codes: docs/errors.md.
 */
import assert from 'node:assert/strict';
import supertest from 'supertest';
import { pino } from 'pino';
import { createApp } from '../src/http/app.js';
import { fhirContext } from '../src/server.js';
import { openDatabase } from '../src/store/database.js';
import { classifyDatabaseError } from '../src/store/db-errors.js';
import { FhirError } from '../src/fhir/errors.js';
import { api, appWith, assertOutcome, FHIR_JSON, testAuth, testContext, tokenFor, uniqueId, BASE_URL } from './helpers.js';

const silent = pino({ level: 'silent' });

describe('400 Bad Request', () => {
  it('returns Bad Request on malformed JSON, without crashing', async () => {
    const res = await (await api()).post('/fhir/Patient').set('Content-Type', FHIR_JSON).send('{"resourceType": "Patient",');
    assert.equal(res.status, 400);
    assertOutcome(res.body, [{ code: 'invalid', detail: 'malformed-json', diagnostics: /^The body is not valid JSON: / }]);
  });

  it('returns Bad Request when the body is not a JSON object', async () => {
    const res = await (await api()).post('/fhir/Patient').set('Content-Type', FHIR_JSON).send('[1,2]');
    assert.equal(res.status, 400);
    assertOutcome(res.body, [{ code: 'invalid', detail: 'not-a-resource', diagnostics: 'The body must be a JSON object holding one FHIR resource' }]);
  });

  it('returns Bad Request when resourceType is missing', async () => {
    const res = await (await api()).post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ name: [{ family: 'X' }] });
    assert.equal(res.status, 400);
    assertOutcome(res.body, [{ code: 'invalid', detail: 'resource-type-missing', expression: 'resourceType', diagnostics: 'The body has no resourceType' }]);
  });

  it('returns Bad Request when resourceType does not match the URL', async () => {
    const res = await (await api()).post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Observation' });
    assert.equal(res.status, 400);
    assertOutcome(res.body, [
      { code: 'invalid', detail: 'resource-type-mismatch', expression: 'resourceType', diagnostics: 'The body is a Observation but the URL names Patient' },
    ]);
  });

  it('returns Bad Request when the id in the body does not match the URL on update', async () => {
    const res = await (await api()).put('/fhir/Patient/abc').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', id: 'xyz' });
    assert.equal(res.status, 400);
    assertOutcome(res.body, [{ code: 'invalid', detail: 'id-mismatch', expression: 'Patient.id', diagnostics: "The body has id 'xyz' but the URL names 'abc'" }]);
  });

  it('returns Bad Request when an update carries no id', async () => {
    const res = await (await api()).put('/fhir/Patient/abc').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient' });
    assert.equal(res.status, 400);
    assertOutcome(res.body, [{ code: 'invalid', detail: 'id-missing', expression: 'Patient.id', diagnostics: 'An update must carry the id; expected "id": "abc"' }]);
  });

  it('returns Bad Request on an id that FHIR does not allow', async () => {
    const res = await (await api()).get('/fhir/Patient/has_underscore');
    assert.equal(res.status, 400);
    assertOutcome(res.body, [{ code: 'invalid', detail: 'invalid-id', diagnostics: "'has_underscore' is not a valid id: 1 to 64 letters, digits, '-' and '.'" }]);
  });

  it('returns Bad Request on an If-Match that is not an ETag', async () => {
    const res = await (await api()).put('/fhir/Patient/abc').set('Content-Type', FHIR_JSON).set('If-Match', '3').send({ resourceType: 'Patient', id: 'abc' });
    assert.equal(res.status, 400);
    assertOutcome(res.body, [{ code: 'invalid', detail: 'invalid-if-match', expression: 'If-Match', diagnostics: `If-Match must be an ETag such as W/"3"; got '3'` }]);
  });

  it('returns Bad Request on an If-None-Exist naming a parameter the type does not have', async () => {
    const res = await (await api()).post('/fhir/Patient').set('Content-Type', FHIR_JSON).set('If-None-Exist', 'colour=red').send({ resourceType: 'Patient' });
    assert.equal(res.status, 400);
    assertOutcome(res.body, [
      { code: 'invalid', detail: 'unknown-parameter', expression: 'If-None-Exist', diagnostics: "'colour' is not a search parameter of Patient" },
    ]);
  });
});

describe('401 Unauthorized', () => {
  it('returns Unauthorized, with WWW-Authenticate: Bearer, without a token and with one that is not ours', async () => {
    const { app } = await testContext();
    const none = await supertest(app).get('/fhir/Patient/x');
    assert.equal(none.status, 401);
    assert.equal(none.headers['www-authenticate'], 'Bearer realm="fhir"');
    assertOutcome(none.body, [{ code: 'login', detail: 'token-missing', diagnostics: 'This request needs Authorization: Bearer <access token>; get one at /auth/token' }]);
    const bad = await supertest(app).get('/fhir/Patient/x').set('Authorization', 'Bearer abc');
    assert.equal(bad.status, 401);
    assert.equal(bad.headers['www-authenticate'], 'Bearer realm="fhir", error="invalid_token"');
    assertOutcome(bad.body, [
      { code: 'login', detail: 'token-invalid', diagnostics: 'The access token is not valid (expired, malformed or not issued by this server); get a new one at /auth/token' },
    ]);
    assert.equal((await supertest(app).get('/fhir/metadata')).status, 200, 'metadata stays open');
  });
});

describe('403 Forbidden', () => {
  it("returns Forbidden when the token's scopes do not allow the interaction", async () => {
    const { app } = await testContext();
    const res = await supertest(app).get('/fhir/Patient/x').auth(await tokenFor('system/Observation.rs'), { type: 'bearer' });
    assert.equal(res.status, 403);
    assertOutcome(res.body, [
      { code: 'forbidden', detail: 'scope-insufficient', diagnostics: "This token's scopes do not allow read on Patient (needs system/Patient.r or a wider scope)" },
    ]);
  });
});

describe('404 Not Found', () => {
  it('returns Not Found on a resource that never existed', async () => {
    const res = await (await api()).get('/fhir/Patient/never-was');
    assert.equal(res.status, 404);
    assertOutcome(res.body, [{ code: 'not-found', detail: 'resource-not-found', diagnostics: 'Patient/never-was is not known' }]);
  });

  it('returns Not Found on a version that does not exist', async () => {
    const agent = await api();
    const id = uniqueId();
    await agent.put(`/fhir/Basic/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Basic', id, code: { text: 'x' } });
    const res = await agent.get(`/fhir/Basic/${id}/_history/2`);
    assert.equal(res.status, 404);
    assertOutcome(res.body, [{ code: 'not-found', detail: 'version-not-found', diagnostics: `Basic/${id} has no version 2` }]);
  });

  it('returns Not Found on an unknown resource type, also case-sensitively', async () => {
    for (const type of ['Patients', 'patient']) {
      const res = await (await api()).get(`/fhir/${type}/1`);
      assert.equal(res.status, 404);
      assertOutcome(res.body, [{ code: 'not-found', detail: 'unknown-resource-type', diagnostics: `'${type}' is not an R4 resource type` }]);
    }
  });

  it('returns Not Found on history of a resource that never existed', async () => {
    const res = await (await api()).get('/fhir/Patient/never-was/_history');
    assert.equal(res.status, 404);
    assertOutcome(res.body, [{ code: 'not-found', detail: 'resource-not-found', diagnostics: 'Patient/never-was is not known' }]);
  });

  it('returns Not Found on a path with no interaction, and outside /fhir', async () => {
    const agent = await api();
    const deep = await agent.get('/fhir/Patient/1/_history/1/extra');
    assert.equal(deep.status, 404);
    assertOutcome(deep.body, [{ code: 'not-found', detail: 'unknown-path', diagnostics: 'No FHIR interaction at /Patient/1/_history/1/extra' }]);
    const outside = await agent.get('/nothing-here');
    assert.equal(outside.status, 404);
    assertOutcome(outside.body, [{ code: 'not-found', detail: 'unknown-path', diagnostics: 'Nothing is served at this path; the FHIR API is at /fhir' }]);
  });
});

describe('405 Method Not Allowed', () => {
  it('returns Method Not Allowed with Allow on a method the path does not support', async () => {
    const res = await (await api()).post('/fhir/Patient/1').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient' });
    assert.equal(res.status, 405);
    assert.equal(res.headers.allow, 'GET, PUT, PATCH, DELETE');
    assertOutcome(res.body, [{ code: 'not-supported', detail: 'method-not-allowed', diagnostics: 'POST is not supported on /Patient/1; allowed: GET, PUT, PATCH, DELETE' }]);
    const typePatch = await (await api()).patch('/fhir/Patient').set('Content-Type', 'application/json-patch+json').send('[]');
    assert.equal(typePatch.status, 405);
    assert.equal(typePatch.headers.allow, 'POST, GET, PUT, DELETE');
  });
});

describe('406 Not Acceptable', () => {
  it('returns Not Acceptable, in JSON, when XML is asked for by Accept or _format', async () => {
    const agent = await api();
    const byAccept = await agent.get('/fhir/metadata').set('Accept', 'application/fhir+xml');
    assert.equal(byAccept.status, 406);
    assert.match(String(byAccept.headers['content-type']), /^application\/fhir\+json/);
    assertOutcome(byAccept.body, [
      {
        code: 'not-supported',
        detail: 'format-not-supported',
        diagnostics: 'Accept: application/fhir+xml cannot be served: this server speaks FHIR JSON only (application/fhir+json or application/json)',
      },
    ]);
    const byFormat = await agent.get('/fhir/Patient/1?_format=xml');
    assert.equal(byFormat.status, 406);
    assertOutcome(byFormat.body, [
      { code: 'not-supported', detail: 'format-not-supported', diagnostics: '_format=xml cannot be served: this server speaks FHIR JSON only (application/fhir+json or application/json)' },
    ]);
  });
});

describe('409 Conflict', () => {
  it('maps a write conflict the database reports (unique violation) to 409 write-conflict', async () => {
    const { db } = await testContext();
    const id = uniqueId();
    await db.pool.query("INSERT INTO resource (resource_type, id, version_id, last_updated) VALUES ('Basic', $1, 1, now())", [id]);
    let thrown: unknown;
    try {
      await db.pool.query("INSERT INTO resource (resource_type, id, version_id, last_updated) VALUES ('Basic', $1, 1, now())", [id]);
    } catch (error) {
      thrown = error;
    }
    const mapped = classifyDatabaseError(thrown);
    assert.ok(mapped instanceof FhirError);
    assert.equal(mapped.status, 409);
    assert.equal(mapped.problems[0]?.code, 'write-conflict');
    await db.pool.query("DELETE FROM resource WHERE resource_type = 'Basic' AND id = $1", [id]);
  });
});

describe('410 Gone', () => {
  it('returns Gone on a deleted resource', async () => {
    const agent = await api();
    const id = uniqueId();
    await agent.put(`/fhir/Basic/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Basic', id, code: { text: 'x' } });
    await agent.delete(`/fhir/Basic/${id}`);
    const res = await agent.get(`/fhir/Basic/${id}`);
    assert.equal(res.status, 410);
    assertOutcome(res.body, [{ code: 'deleted', detail: 'resource-deleted', diagnostics: `Basic/${id} was deleted (version 2)` }]);
  });
});

describe('412 Precondition Failed', () => {
  it('returns Precondition Failed on an update with a stale If-Match, and writes nothing', async () => {
    const agent = await api();
    const id = uniqueId();
    const body = { resourceType: 'Basic', id, code: { text: 'x' } };
    await agent.put(`/fhir/Basic/${id}`).set('Content-Type', FHIR_JSON).send(body);
    await agent.put(`/fhir/Basic/${id}`).set('Content-Type', FHIR_JSON).send(body);
    const res = await agent.put(`/fhir/Basic/${id}`).set('Content-Type', FHIR_JSON).set('If-Match', 'W/"1"').send(body);
    assert.equal(res.status, 412);
    assertOutcome(res.body, [
      { code: 'conflict', detail: 'version-mismatch', expression: 'If-Match', diagnostics: `If-Match names version 1 but the current version of Basic/${id} is 2` },
    ]);
    assert.equal((await agent.get(`/fhir/Basic/${id}`)).headers.etag, 'W/"2"');
  });

  it('returns Precondition Failed on a delete with a stale If-Match', async () => {
    const agent = await api();
    const id = uniqueId();
    await agent.put(`/fhir/Basic/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Basic', id, code: { text: 'x' } });
    const res = await agent.delete(`/fhir/Basic/${id}`).set('If-Match', 'W/"5"');
    assert.equal(res.status, 412);
    assertOutcome(res.body, [
      { code: 'conflict', detail: 'version-mismatch', expression: 'If-Match', diagnostics: `If-Match names version 5 but the current version of Basic/${id} is 1` },
    ]);
  });

  it('returns Precondition Failed on If-Match for a resource that does not exist', async () => {
    const id = uniqueId();
    const res = await (await api()).put(`/fhir/Basic/${id}`).set('Content-Type', FHIR_JSON).set('If-Match', 'W/"1"').send({ resourceType: 'Basic', id, code: { text: 'x' } });
    assert.equal(res.status, 412);
    assertOutcome(res.body, [{ code: 'conflict', detail: 'version-mismatch', expression: 'If-Match', diagnostics: `If-Match names version 1 but Basic/${id} has no current version` }]);
  });
});

describe('413 Payload Too Large', () => {
  it('returns Payload Too Large on a body over the configured limit', async () => {
    const app = await appWith({ maxBodyBytes: 2048 });
    const res = await supertest(app)
      .post('/fhir/Basic')
      .auth((await testContext()).token, { type: 'bearer' })
      .set('Content-Type', FHIR_JSON)
      .send({ resourceType: 'Basic', code: { text: 'x'.repeat(4096) } });
    assert.equal(res.status, 413);
    assertOutcome(res.body, [{ code: 'too-costly', detail: 'body-too-large', diagnostics: 'The body is larger than the limit of 2048 bytes' }]);
  });
});

describe('415 Unsupported Media Type', () => {
  it('returns Unsupported Media Type on an XML body and on a body without Content-Type', async () => {
    const agent = await api();
    const xml = await agent.post('/fhir/Patient').set('Content-Type', 'application/fhir+xml').send('<Patient xmlns="http://hl7.org/fhir"/>');
    assert.equal(xml.status, 415);
    assertOutcome(xml.body, [{ code: 'not-supported', detail: 'media-type-not-supported', diagnostics: 'Content-Type application/fhir+xml is not supported here: send application/fhir+json' }]);
    const none = await agent.post('/fhir/Patient').set('Content-Type', '').send(Buffer.from('{"resourceType":"Patient"}'));
    assert.equal(none.status, 415);
  });
});

describe('422 Unprocessable Entity', () => {
  it('lists every problem at once, each with the FHIRPath of the element at fault, and writes nothing', async () => {
    const res = await (await api())
      .post('/fhir/Patient')
      .set('Content-Type', FHIR_JSON)
      .send({
        resourceType: 'Patient',
        identifier: [{ system: 'urn:met', value: 'must-not-exist-422' }],
        gender: 'unknownish',
        birthDate: '1956-13-45',
        foo: 1,
        active: 'yes',
        name: [],
        managingOrganization: { reference: 'Organisation/1' },
        contained: [{ resourceType: 'Practitioner', id: 'p1', bogus: true }],
      });
    assert.equal(res.status, 422);
    assertOutcome(res.body, [
      { code: 'structure', detail: 'unknown-element', expression: 'Patient.foo', diagnostics: "Unknown element 'foo'" },
      { code: 'structure', detail: 'invalid-type', expression: 'Patient.active', diagnostics: 'Expected JSON boolean, got "yes"' },
      { code: 'code-invalid', detail: 'invalid-code', expression: 'Patient.gender', diagnostics: 'Code must be one of: male, female, other, unknown' },
      { code: 'value', detail: 'invalid-format', expression: 'Patient.birthDate', diagnostics: '"1956-13-45" is not a valid FHIR date' },
      { code: 'structure', detail: 'unknown-element', expression: 'Patient.contained[0].bogus', diagnostics: "Unknown element 'bogus'" },
      {
        code: 'value',
        detail: 'invalid-reference',
        expression: 'Patient.managingOrganization.reference',
        diagnostics: "'Organisation/1' is not a reference: expected Type/id with an R4 resource type, an absolute URL or #id",
      },
      { code: 'structure', detail: 'empty-array', expression: 'Patient.name', diagnostics: 'Arrays must not be empty: leave the element out instead' },
    ]);
    const { db } = await testContext();
    const stored = await db.pool.query(`SELECT 1 FROM resource WHERE content -> 'identifier' @> '[{"value":"must-not-exist-422"}]'`);
    assert.equal(stored.rowCount, 0);
  });

  it('rejects a conditional reference outside a transaction and control characters in strings', async () => {
    const res = await (await api())
      .post('/fhir/Observation')
      .set('Content-Type', FHIR_JSON)
      .send({ resourceType: 'Observation', status: 'final', code: { text: 'a\u0000b' }, subject: { reference: 'Patient?identifier=x' } });
    assert.equal(res.status, 422);
    assertOutcome(res.body, [
      {
        code: 'value',
        detail: 'conditional-reference-outside-transaction',
        expression: 'Observation.subject.reference',
        diagnostics: "'Patient?identifier=x' is a conditional reference; these are resolved only inside a transaction Bundle",
      },
      { code: 'value', detail: 'control-character', expression: 'Observation.code.text', diagnostics: 'Strings must not contain control characters other than tab, CR and LF' },
    ]);
  });
});

describe('500 Internal Server Error', () => {
  it('answers an unexpected database error with 500 and no SQL or stack in the response', async () => {
    // A real database without our tables: the query fails with "relation does not exist".
    const db = await openDatabase({ dataDir: 'memory://' });
    try {
      const app = createApp({ ctx: fhirContext(db, BASE_URL), logger: silent, maxBodyBytes: 1024, auth: await testAuth(db) });
      const res = await supertest(app).get('/fhir/Patient/x').auth((await testContext()).token, { type: 'bearer' });
      assert.equal(res.status, 500);
      assertOutcome(res.body, [{ code: 'exception', detail: 'internal-error', diagnostics: 'The server met an unexpected error; it has been logged with the request id.' }]);
      assert.doesNotMatch(res.text, /relation|SELECT|at .*\.ts/);
    } finally {
      await db.close();
    }
  });
});

describe('503 Service Unavailable', () => {
  it('answers 503 on reads and writes, and /readyz turns 503, when the database is unreachable', async () => {
    // Nothing listens on port 1: every connection is refused.
    const db = await openDatabase({ databaseUrl: 'postgres://postgres@127.0.0.1:1/none', dataDir: 'unused' });
    try {
      const app = createApp({ ctx: fhirContext(db, BASE_URL), logger: silent, maxBodyBytes: 1024, auth: await testAuth(db) });
      const { token } = await testContext();
      const read = await supertest(app).get('/fhir/Patient/x').auth(token, { type: 'bearer' });
      assert.equal(read.status, 503);
      assertOutcome(read.body, [{ code: 'transient', detail: 'database-unavailable', diagnostics: 'The database is unreachable; retry later.' }]);
      const write = await supertest(app).put('/fhir/Basic/x').auth(token, { type: 'bearer' }).set('Content-Type', FHIR_JSON).send({ resourceType: 'Basic', id: 'x', code: { text: 'x' } });
      assert.equal(write.status, 503);
      const ready = await supertest(app).get('/readyz');
      assert.equal(ready.status, 503);
      assert.deepEqual(ready.body, { status: 'unavailable', database: 'unreachable' });
    } finally {
      await db.close();
    }
  });
});
