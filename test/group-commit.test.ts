/** Group commit: concurrent plain creates share statements, and each still gets its own answer. */
import assert from 'node:assert/strict';
import { GroupCommit, type Outcome } from '../src/store/group-commit.js';
import { parseSearch } from '../src/search/parse.js';
import { BASE_URL, testContext, uniqueId } from './helpers.js';

/** A flush whose groups are recorded and which completes only when released. */
function gatedFlush() {
  const groups: number[][] = [];
  const gates: (() => void)[] = [];
  const flush = (items: number[]): Promise<Outcome<string>[]> => {
    groups.push(items);
    return new Promise((resolve) => {
      gates.push(() => resolve(items.map((n) => (n < 0 ? { ok: false, error: new Error(`bad ${n}`) } : { ok: true, value: `done ${n}` }))));
    });
  };
  return { groups, gates, flush };
}

describe('group commit', () => {
  it('sends a write at once while a slot is free, and groups what queues behind busy slots', async () => {
    const { groups, gates, flush } = gatedFlush();
    const gc = new GroupCommit(flush, 2, 3);
    const answers = [1, 2, 3, 4, 5, 6, 7, 8].map((n) => gc.submit(n));
    assert.deepEqual(groups, [[1], [2]], 'the first two take the two free slots, alone');
    gates.shift()?.();
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(groups, [[1], [2], [3, 4, 5]], 'a freed slot takes the next group, at most 3');
    gates.shift()?.();
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(groups, [[1], [2], [3, 4, 5], [6, 7, 8]]);
    while (gates.length) gates.shift()?.();
    assert.deepEqual(await Promise.all(answers), [1, 2, 3, 4, 5, 6, 7, 8].map((n) => `done ${n}`));
  });

  it('answers each item with its own outcome: one failure rejects only its caller', async () => {
    const { gates, flush } = gatedFlush();
    const gc = new GroupCommit(flush, 1, 10);
    const first = gc.submit(0);
    const rest = [1, -2, 3].map((n) => gc.submit(n).then((v) => v, (e: Error) => e.message));
    gates.shift()?.();
    await first;
    await new Promise((r) => setImmediate(r));
    gates.shift()?.();
    assert.deepEqual(await Promise.all(rest), ['done 1', 'bad -2', 'done 3']);
  });

  it('rejects every item of a group whose flush throws, and keeps serving later ones', async () => {
    let calls = 0;
    const gc = new GroupCommit<number, number>((items) => {
      calls++;
      if (calls === 1) return Promise.reject(new Error('database down'));
      return Promise.resolve(items.map((n) => ({ ok: true, value: n * 10 })));
    }, 1, 10);
    await assert.rejects(gc.submit(1), /database down/);
    assert.equal(await gc.submit(2), 20);
  });

  it('on the database: 60 concurrent creates, one of them with an id already taken, store and index the other 59', async function () {
    this.timeout(30_000);
    const { ctx } = await testContext();
    const repo = ctx.repo;
    const tag = uniqueId('gc');
    const taken = uniqueId('taken');
    await repo.create({ resourceType: 'Basic', code: { text: 'first' } }, undefined, taken);
    const results = await Promise.allSettled(
      Array.from({ length: 60 }, (_, n) =>
        repo.create({ resourceType: 'Basic', code: { coding: [{ system: 'urn:test:gc', code: tag }] } }, undefined, n === 30 ? taken : undefined),
      ),
    );
    const rejected = results.flatMap((r, n) => (r.status === 'rejected' ? [n] : []));
    assert.deepEqual(rejected, [30], 'only the create that reused an id fails');
    const failure = (results[30] as PromiseRejectedResult).reason as { code?: string; status?: number };
    assert.equal(failure.status, 409, `the duplicate id is a conflict, not an internal error: ${JSON.stringify(failure)}`);
    const ids = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value.version.id] : []));
    assert.equal(new Set(ids).size, 59);
    const query = parseSearch('Basic', { code: [`urn:test:gc|${tag}`], _count: ['100'] }, { fhirBase: BASE_URL, lenient: false }).query;
    const found = (await repo.search(query)).rows.map((r) => r.id).sort();
    assert.deepEqual(found, [...ids].sort(), 'every stored create is searchable (its index was written with it)');
    const read = await repo.read('Basic', taken);
    assert.match(read.json ?? '', /"first"/, 'the resource that owned the id is untouched');
  });
});
