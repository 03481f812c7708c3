import { describe, expect, it } from '@jest/globals';
import { ALLOWED, type RateLimitPlan, type RateLimitRejected } from '../../lib/interfaces/plan.interface.js';
import { createPlan } from '../../lib/plans/create-plan.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import {
  checkedDecision,
  checkedStatuses,
  MalformedStoreAnswerError,
  missingStoreMethods,
} from '../../lib/storage/store-answers.js';

const refusal: RateLimitRejected = {
  allowed: false,
  tier: 'global',
  index: 0,
  retryAfter: 250,
  limit: 5,
  remaining: 0,
};

function planOf(store: MemoryRateLimitStore, tracker: string): RateLimitPlan {
  return createPlan(store, tracker, [tokenBucketSpec('global', 'g', 2, 1)]);
}

describe('checkedDecision', () => {
  it('passes the built-in stores answers as they are (the same objects: nothing copied on the hot path)', async () => {
    const store = new MemoryRateLimitStore();
    const plan = planOf(store, 'ip:a');
    const answers = [store.consume(plan), store.consume(plan), store.consume(plan), store.consume(plan)];
    for (const answer of answers) expect(checkedDecision(answer)).toBe(answer);
    expect(answers.map((answer) => (answer as { allowed: boolean }).allowed)).toEqual([true, true, false, false]);
    expect(checkedDecision(ALLOWED)).toBe(ALLOWED);
    expect(checkedDecision(refusal)).toBe(refusal);
    await store.close();
  });

  it('a wait of Infinity (never: a cost above the limit, as the built-in stores answer it) passes', () => {
    const never = { ...refusal, retryAfter: Infinity };
    expect(checkedDecision(never)).toBe(never);
  });

  it("a refusal's fractional wait is made whole ms (at least 1) and its remaining whole units, in a copy", () => {
    expect(checkedDecision({ ...refusal, retryAfter: 0.2, remaining: 1.7 })).toEqual({
      ...refusal,
      retryAfter: 1,
      remaining: 1,
    });
    expect(checkedDecision({ ...refusal, retryAfter: 0 })).toMatchObject({ retryAfter: 1 });
    expect(checkedDecision({ ...refusal, retryAfter: 12.01 })).toMatchObject({ retryAfter: 13 });
  });

  it.each([['blocked'], ['degraded'], ['storeUnavailable'], ['closing']])(
    "a refusal carrying the limiter's own mark %s is its tier's: the mark is dropped, in a copy",
    (mark) => {
      const marked = { ...refusal, [mark]: true };
      const checked = checkedDecision(marked);
      expect(checked).not.toBe(marked);
      expect(checked).toEqual(refusal);
    },
  );

  it.each([
    ['null', null, /answered null/],
    ['undefined', undefined, /answered undefined/],
    ['a number', 1, /answered 1/],
    ['{}', {}, /answered \{\}/],
    ["{ allowed: 'yes' }", { allowed: 'yes' }, /answered \{"allowed":"yes"\}/],
    ['{ allowed: 1 }', { allowed: 1 }, /answered \{"allowed":1\}/],
    ['a refusal without a tier', { ...refusal, tier: undefined }, /whose tier is undefined/],
    ['a refusal of an unknown tier', { ...refusal, tier: 'burst' }, /whose tier is "burst"/],
    ['a negative wait', { ...refusal, retryAfter: -5 }, /whose retryAfter is -5/],
    ['a NaN wait', { ...refusal, retryAfter: Number.NaN }, /whose retryAfter is "NaN"/],
    ['a wait as text', { ...refusal, retryAfter: '250' }, /whose retryAfter is "250"/],
    ['a NaN remaining', { ...refusal, remaining: Number.NaN }, /whose remaining is "NaN"/],
    ['an infinite limit', { ...refusal, limit: Infinity }, /whose limit is "Infinity"/],
  ])('%s throws a MalformedStoreAnswerError naming what is wrong', (_name, answer, message) => {
    expect(() => checkedDecision(answer)).toThrow(MalformedStoreAnswerError);
    expect(() => checkedDecision(answer)).toThrow(message);
  });

  it('an answer that cannot be shown as JSON (a cycle) still gets its error', () => {
    const cyclic: Record<string, unknown> = { allowed: 'maybe' };
    cyclic['self'] = cyclic;
    expect(() => checkedDecision(cyclic)).toThrow(/answered object/);
  });
});

describe('checkedStatuses', () => {
  it("passes the memory store's peek as it is", async () => {
    const store = new MemoryRateLimitStore();
    const plan = planOf(store, 'ip:b');
    store.consume(plan);
    const statuses = store.peek(plan);
    expect(checkedStatuses(statuses, plan)).toBe(statuses);
    await store.close();
  });

  it.each([
    ['no array', { remaining: 1 }, /peek\(\) answered \{"remaining":1\} for a plan of 1 tier/],
    ['too few statuses', [], /answered \[\] for a plan of 1 tier/],
    ['a null status', [null], /answered null for tier 0/],
    ['a NaN remaining', [{ tier: 'global', limit: 2, remaining: Number.NaN, resetIn: 0 }], /for tier 0/],
    ['no resetIn', [{ tier: 'global', limit: 2, remaining: 1 }], /for tier 0/],
    [
      'a status of another tier',
      [{ tier: 'type', limit: 2, remaining: 1, resetIn: 0 }],
      /its tier is the plan's \(global\)/,
    ],
    [
      'one status too many',
      [
        { tier: 'global', limit: 2, remaining: 1, resetIn: 0 },
        { tier: 'expensive', limit: 1, remaining: 1, resetIn: 0 },
      ],
      /for a plan of 1 tier/,
    ],
  ])('%s throws a MalformedStoreAnswerError', async (_name, answer, message) => {
    const store = new MemoryRateLimitStore();
    const plan = planOf(store, 'ip:c');
    expect(() => checkedStatuses(answer, plan)).toThrow(MalformedStoreAnswerError);
    expect(() => checkedStatuses(answer, plan)).toThrow(message);
    await store.close();
  });
});

describe('missingStoreMethods', () => {
  it('none for the memory store; the missing ones, named, for a store that lacks them', async () => {
    const store = new MemoryRateLimitStore();
    expect(missingStoreMethods(store)).toEqual([]);
    Object.defineProperty(store, 'peek', { value: 42 });
    Object.defineProperty(store, 'delete', { value: undefined });
    expect(missingStoreMethods(store)).toEqual(['peek()', 'delete()']);
    await MemoryRateLimitStore.prototype.close.call(store);
  });
});
