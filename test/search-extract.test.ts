/**
 * The search index of every official R4 example and every Synthea resource is the same whether
 * plain paths are walked directly over the JSON (the fast path) or evaluated with fhirpath.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SearchParameter } from 'fhir/r4.js';
import { extractionOptions, SearchRegistry } from '../src/search/definitions.js';
import { extractIndex, INDEX_TABLES, type IndexRows } from '../src/search/extract.js';

const DATA = new URL('../../shared/data/', import.meta.url).pathname;
const BASE = 'http://fhir.test/fhir';

type Resource = { resourceType: string; id?: string };

function resources(): { name: string; resource: Resource }[] {
  const out: { name: string; resource: Resource }[] = [];
  const examples = join(DATA, 'fhir-r4-examples');
  for (const f of readdirSync(examples).filter((n) => n.endsWith('.json')).sort()) {
    out.push({ name: f, resource: JSON.parse(readFileSync(join(examples, f), 'utf8')) as Resource });
  }
  const synthea = join(DATA, 'synthea');
  for (const f of readdirSync(synthea).filter((n) => n.endsWith('.json')).sort()) {
    const bundle = JSON.parse(readFileSync(join(synthea, f), 'utf8')) as { entry: { resource: Resource }[] };
    bundle.entry.forEach((e, i) => out.push({ name: `${f}#${i}`, resource: e.resource }));
  }
  return out;
}

function canonical(rows: IndexRows): string[] {
  return INDEX_TABLES.flatMap((t) => (rows[t] as unknown as Record<string, unknown>[]).map((r) => `${t} ${JSON.stringify(r)}`)).sort();
}

describe('search index extraction', function () {
  this.timeout(300_000);

  it('gives the same index with the direct path walk as with fhirpath, on every example and Synthea resource', () => {
    const all = resources();
    assert.ok(all.length > 9_000, `${all.length} resources`);
    const differences: string[] = [];
    let rows = 0;
    for (const { name, resource } of all) {
      extractionOptions.fhirpathOnly = false;
      const fast = canonical(extractIndex(resource, BASE));
      extractionOptions.fhirpathOnly = true;
      const reference = canonical(extractIndex(resource, BASE));
      extractionOptions.fhirpathOnly = false;
      rows += reference.length;
      if (JSON.stringify(fast) !== JSON.stringify(reference)) {
        const missing = reference.filter((r) => !fast.includes(r)).slice(0, 3);
        const extra = fast.filter((r) => !reference.includes(r)).slice(0, 3);
        differences.push(`${name}: missing ${JSON.stringify(missing)} extra ${JSON.stringify(extra)}`);
      }
    }
    assert.deepEqual(differences.slice(0, 10), []);
    // 86,227 (Observation's combo-* parameters, unions of others, have no rows of their own).
    assert.ok(rows > 80_000, `index rows compared: ${rows}`);
  });

  it('a parameter that is a union of others has no rows of its own and reads members that have theirs, however the unions nest', () => {
    const param = (code: string, expression: string, type: SearchParameter['type'] = 'token'): SearchParameter => ({
      resourceType: 'SearchParameter',
      url: `http://example.org/sp/${code}`,
      name: code,
      status: 'active',
      description: code,
      code,
      base: ['Observation'],
      type,
      expression,
    });
    const registry = new SearchRegistry([
      param('all', 'Observation.code | Observation.category | Observation.method'),
      param('two', 'Observation.code | Observation.category'),
      param('code', 'Observation.code'),
      param('category', 'Observation.category'),
      param('method', 'Observation.method'),
      // Of another type, or overlapping without covering: not unions.
      param('code-as-string', 'Observation.code | Observation.method', 'string'),
      param('overlap', 'Observation.code | Observation.interpretation'),
    ]);
    assert.deepEqual(registry.get('Observation', 'two')?.indexedAs, ['category', 'code']);
    assert.deepEqual(registry.get('Observation', 'all')?.indexedAs, ['category', 'code', 'method'], 'never through "two", which has no rows');
    for (const code of ['code', 'category', 'method', 'code-as-string', 'overlap']) assert.equal(registry.get('Observation', code)?.indexedAs, undefined, code);
    // The published registry: combo-code (code | component-code) gets no rows.
    const observation = { resourceType: 'Observation', code: { coding: [{ system: 's', code: 'c' }] }, category: [{ coding: [{ system: 's', code: 'k' }] }] };
    const rows = extractIndex(observation, BASE);
    assert.deepEqual([...new Set(rows.token.map((r) => r.param))].sort(), ['category', 'code'], 'no combo-code rows');
  });
});
