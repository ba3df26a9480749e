/**
 * The layering of src/ (see README, Architecture): dependencies point one way and there are no
 * import cycles. Read from the import statements themselves.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const SRC = new URL('../src/', import.meta.url).pathname;

/** Which layers each layer may import (besides itself). */
const ALLOWED: Record<string, string[]> = {
  fhir: [],
  auth: [],
  validation: ['fhir'],
  search: ['fhir'],
  patch: ['fhir'],
  store: ['fhir', 'search', 'audit'],
  interactions: ['fhir', 'search', 'patch', 'store', 'validation', 'ehr', 'summary'],
  met: ['fhir', 'store', 'validation'],
  audit: [],
  hl7: ['fhir'],
  summary: ['fhir'],
  ehr: ['fhir', 'auth', 'store'],
  delivery: ['fhir', 'store', 'ehr', 'hl7', 'interactions', 'validation'],
  inbound: ['fhir', 'hl7', 'interactions', 'store', 'validation', 'search'],
  http: ['fhir', 'interactions', 'met', 'auth', 'store', 'audit'],
  '.': ['fhir', 'search', 'patch', 'store', 'validation', 'interactions', 'met', 'http', 'auth', 'audit', 'hl7', 'summary', 'ehr', 'inbound', 'delivery'],
};

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : path.endsWith('.ts') ? [path] : [];
  });
}

function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/^(?:import|export)\s[^'"]*?from\s+'(\.[^']+)'/gm)].map((m) => resolve(dirname(file), (m[1] as string).replace(/\.js$/, '.ts')));
}

const layerOf = (file: string): string => {
  const rel = relative(SRC, file);
  return rel.includes('/') ? (rel.split('/')[0] as string) : '.';
};

describe('architecture', () => {
  const graph = new Map(files(SRC).map((f) => [f, imports(f)]));

  it('each layer imports only the layers below it', () => {
    const violations: string[] = [];
    for (const [file, deps] of graph) {
      for (const dep of deps) {
        const from = layerOf(file);
        const to = layerOf(dep);
        if (from !== to && !(ALLOWED[from] ?? []).includes(to)) violations.push(`${relative(SRC, file)} → ${relative(SRC, dep)}`);
      }
    }
    assert.deepEqual(violations, []);
  });

  it('has no import cycles', () => {
    const cycles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const visit = (file: string, path: string[]): void => {
      if (state.get(file) === 'done') return;
      if (state.get(file) === 'open') {
        cycles.push([...path.slice(path.indexOf(file)), file].map((f) => relative(SRC, f)).join(' → '));
        return;
      }
      state.set(file, 'open');
      for (const dep of graph.get(file) ?? []) visit(dep, [...path, file]);
      state.set(file, 'done');
    };
    for (const file of graph.keys()) visit(file, []);
    assert.deepEqual(cycles, []);
  });

  it('keeps SQL in store/ only', () => {
    const outside = [...graph.keys()].filter((f) => layerOf(f) !== 'store' && /\b(SELECT|INSERT INTO|UPDATE \w+ SET)\b/.test(readFileSync(f, 'utf8')));
    assert.deepEqual(outside.map((f) => relative(SRC, f)), []);
  });
});
