/** docs/errors.md documents exactly the declared error codes, with the status each produces. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ERROR_CODES } from '../src/fhir/error-codes.js';
import { ERROR_CATEGORIES } from '../src/fhir/errors.js';

describe('error code documentation', () => {
  it('lists every declared code once, with its HTTP status', () => {
    const doc = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');
    const documented = [...doc.matchAll(/^\| `([a-z-]+)` \| (\d{3}) \|/gm)].map((m) => [m[1], Number(m[2])]);
    const declared = Object.entries(ERROR_CODES).map(([code, category]) => [code, ERROR_CATEGORIES[category].status]);
    assert.deepEqual(documented, declared);
  });

  it('every HTTP status of the error table is reachable through some code', () => {
    const used = new Set(Object.values(ERROR_CODES));
    assert.deepEqual(Object.keys(ERROR_CATEGORIES).filter((c) => !used.has(c as keyof typeof ERROR_CATEGORIES)), []);
  });
});
