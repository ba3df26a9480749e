/** The CapabilityStatement states what is routed, and is itself valid FHIR. */
import assert from 'node:assert/strict';
import { INTERACTIONS } from '../src/interactions/index.js';
import { RESOURCE_TYPES } from '../src/fhir/resource-types.js';
import { readdirSync, readFileSync } from 'node:fs';
import { api, testContext } from './helpers.js';

describe('capabilities', () => {
  it('serves a valid R4 CapabilityStatement at /fhir/metadata listing all resource types', async () => {
    const res = await (await api()).get('/fhir/metadata');
    assert.equal(res.status, 200);
    assert.equal(res.body.resourceType, 'CapabilityStatement');
    assert.equal(res.body.fhirVersion, '4.0.1');
    const { ctx } = await testContext();
    assert.deepEqual(ctx.validator.problems(res.body), []);
    const types = (res.body.rest[0].resource as { type: string }[]).map((r) => r.type);
    assert.deepEqual(types, [...RESOURCE_TYPES]);
    assert.equal(types.length, 146);
    const security = res.body.rest[0].security as { service: { coding: { code: string }[] }[]; extension: { extension: { url: string; valueUri: string }[] }[] };
    assert.equal(security.service[0]?.coding[0]?.code, 'SMART-on-FHIR');
    assert.equal(security.extension[0]?.extension[0]?.valueUri, 'http://fhir.test/auth/token');
  });

  it('lists exactly the interactions in the routing table, and each one answers something other than 404/405', async () => {
    const res = await (await api()).get('/fhir/metadata');
    const patient = (res.body.rest[0].resource as { type: string; interaction: { code: string }[] }[]).find((r) => r.type === 'Patient');
    const routed = [...new Set(INTERACTIONS.filter((i) => i.level !== 'system').map((i) => i.code))];
    // Conditional update and delete are stated by their own flags, not as interaction codes.
    const conditional = new Set(['conditional-update', 'conditional-delete', 'operation']);
    assert.deepEqual(patient?.interaction.map((i) => i.code).sort(), routed.filter((c) => !conditional.has(c)).sort());
    // Operations are listed by name under their resource type.
    const operations = INTERACTIONS.filter((i) => i.code === 'operation' && i.resourceType === 'Patient').map((i) => i.operation);
    assert.deepEqual((patient as unknown as { operation?: { name: string }[] }).operation?.map((o) => o.name), operations);
    const flags = patient as unknown as { conditionalUpdate: boolean; conditionalDelete: string };
    assert.equal(flags.conditionalUpdate, routed.includes('conditional-update'));
    assert.equal(flags.conditionalDelete, routed.includes('conditional-delete') ? 'single' : 'not-supported');
    const system = INTERACTIONS.filter((i) => i.level === 'system' && i.code !== 'capabilities').map((i) => i.code);
    const expectedSystem = system.includes('transaction') ? [...system, 'batch'] : system;
    assert.deepEqual((res.body.rest[0].interaction as { code: string }[]).map((i) => i.code).sort(), expectedSystem.sort());
    const agent = await api();
    const probes: Record<string, () => Promise<{ status: number }>> = {
      read: () => agent.get('/fhir/Patient/x1'),
      vread: () => agent.get('/fhir/Patient/x1/_history/1'),
      update: () => agent.put('/fhir/Patient/x1').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient', id: 'x1' }),
      delete: () => agent.delete('/fhir/Patient/x1'),
      'history-instance': () => agent.get('/fhir/Patient/x1/_history'),
      'history-type': () => agent.get('/fhir/Patient/_history'),
      create: () => agent.post('/fhir/Patient').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient' }),
      'search-type': () => agent.get('/fhir/Patient?_id=x1'),
      patch: () => agent.patch('/fhir/Patient/x1').set('Content-Type', 'application/json-patch+json').send([{ op: 'add', path: '/active', value: true }]),
      'conditional-update': () => agent.put('/fhir/Patient?_id=x1').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient', id: 'x1' }),
      'conditional-delete': () => agent.delete('/fhir/Patient?_id=x-none'),
      operation: () => agent.post('/fhir/Patient/x1/$pull-diagnoses'),
    };
    await probes.update?.();
    for (const code of routed) {
      const probe = probes[code];
      assert.ok(probe, `a probe for ${code}`);
      const res = (await probe()) as { status: number; body?: { issue?: { details?: { coding?: { code?: string }[] } }[] } };
      if (code === 'operation') {
        // Routed and run: x1 is linked to no EHR, which the operation itself reports.
        assert.equal(res.body?.issue?.[0]?.details?.coding?.[0]?.code, 'unprocessable-operation', `${code} answered ${res.status}`);
        continue;
      }
      assert.ok(res.status >= 200 && res.status < 300, `${code} answered ${res.status}`);
    }
  });

  it('names for each operation an OperationDefinition published in profiles/, valid R4, that lists what the operation takes', async () => {
    const { ctx } = await testContext();
    const dir = new URL('../profiles/', import.meta.url);
    const published = readdirSync(dir)
      .filter((f) => f.startsWith('OperationDefinition-'))
      .map((f) => JSON.parse(readFileSync(new URL(f, dir), 'utf8')) as { id: string; url: string; code: string; resource: string[]; instance: boolean; parameter: { name: string; use: string }[] });
    const statement = (await (await api()).get('/fhir/metadata').expect(200)).body as { rest: { resource: { type: string; operation?: { name: string; definition: string }[] }[] }[] };
    const named = statement.rest[0]!.resource.flatMap((r) => (r.operation ?? []).map((o) => ({ type: r.type, ...o })));
    assert.deepEqual(named.map((o) => o.definition).sort(), published.map((d) => d.url).sort());
    for (const op of named) {
      const definition = published.find((d) => d.url === op.definition)!;
      assert.deepEqual([definition.code, definition.resource, definition.instance], [op.name, [op.type], true]);
      ctx.validator.checkWrite(definition, 'OperationDefinition', definition.id);
    }
    // The inputs $send-summary reads (src/interactions/send-summary.ts), and its Task.
    const send = published.find((d) => d.code === 'send-summary')!;
    assert.deepEqual(send.parameter.filter((p) => p.use === 'in').map((p) => p.name).sort(), ['author', 'encounter', 'endpoint', 'kind', 'period', 'recipient', 'recommendation']);
    assert.deepEqual(send.parameter.filter((p) => p.use === 'out').map((p) => p.name), ['return']);
  });
});
