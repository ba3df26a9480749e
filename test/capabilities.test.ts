/** The CapabilityStatement states what is routed, and is itself valid FHIR. */
import assert from 'node:assert/strict';
import { INTERACTIONS } from '../src/interactions/index.js';
import { RESOURCE_TYPES } from '../src/fhir/resource-types.js';
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
  });

  it('lists exactly the interactions in the routing table, and each one answers something other than 404/405', async () => {
    const res = await (await api()).get('/fhir/metadata');
    const patient = (res.body.rest[0].resource as { type: string; interaction: { code: string }[] }[]).find((r) => r.type === 'Patient');
    const routed = INTERACTIONS.filter((i) => i.level !== 'system').map((i) => i.code);
    assert.deepEqual(patient?.interaction.map((i) => i.code).sort(), [...routed].sort());
    assert.deepEqual(res.body.rest[0].interaction, [{ code: 'history-system' }]);
    const agent = await api();
    const probes: Record<string, () => Promise<{ status: number }>> = {
      read: () => agent.get('/fhir/Patient/x1'),
      vread: () => agent.get('/fhir/Patient/x1/_history/1'),
      update: () => agent.put('/fhir/Patient/x1').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient', id: 'x1' }),
      delete: () => agent.delete('/fhir/Patient/x1'),
      'history-instance': () => agent.get('/fhir/Patient/x1/_history'),
      'history-type': () => agent.get('/fhir/Patient/_history'),
      create: () => agent.post('/fhir/Patient').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient' }),
    };
    await probes.update?.();
    for (const code of routed) {
      const probe = probes[code];
      assert.ok(probe, `a probe for ${code}`);
      const status = (await probe()).status;
      assert.ok(status !== 404 && status !== 405, `${code} answered ${status}`);
    }
  });
});
