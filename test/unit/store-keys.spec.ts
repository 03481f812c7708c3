import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import type { RateLimitPlan } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import { check, fcParams } from './support/exact-model.js';

/** The values RELIABILITY C-4 names, as the text a type or tracker field could carry. */
const HOSTILE = [
  '__proto__',
  'constructor',
  'hasOwnProperty',
  'prototype',
  'toString',
  '',
  '{x}',
  'a:b',
  'a|b',
  '|1:',
  '\u0000',
  '\r\n',
  'a\u0000b\rc\nd',
  '😀',
  '👩‍👩‍👧‍👦',
  '\ud800', // a lone surrogate
  'x'.repeat(64 * 1024),
  '😀'.repeat(16 * 1024), // 64 KiB of UTF-16
] as const;

/** Any value turned into the text that would reach the key function. */
const hostileText: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(...HOSTILE),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.anything().map((value) => (typeof value === 'string' ? value : fc.stringify(value))),
);

/** Short strings over the key's own punctuation and digits: where collisions would hide. */
const trickyText = fc.string({ unit: fc.constantFrom('|', ':', '0', '1', '2', '3', '4', 'a'), maxLength: 6 });

const store = new MemoryRateLimitStore();

describe('C-4: the key function (RateLimitStore.prototype.key) under hostile text', () => {
  it('never throws and always returns a string containing both parts', () => {
    fc.assert(
      fc.property(hostileText, hostileText, (tracker, suffix) => {
        const key = store.key(tracker, suffix);
        check(typeof key === 'string', () => 'not a string');
        check(key.includes(tracker) && key.includes(suffix), () => 'a part is missing from the key');
      }),
      fcParams(2_000),
    );
    for (const tracker of HOSTILE)
      for (const suffix of HOSTILE) expect(typeof store.key(tracker, suffix)).toBe('string');
  });

  it('is injective in the tracker for any fixed suffix (client text cannot reach another tracker)', () => {
    const suffixes = ['g', 't:chat', 't:a|b', 'x', 'cr', 'c'];
    fc.assert(
      fc.property(
        fc.constantFrom(...suffixes),
        fc.uniqueArray(fc.oneof(trickyText, hostileText), { minLength: 2, maxLength: 40 }),
        (suffix, trackers) => {
          const keys = new Set(trackers.map((tracker) => store.key(tracker, suffix)));
          check(keys.size === trackers.length, () => `two trackers share a key under suffix ${JSON.stringify(suffix)}`);
        },
      ),
      fcParams(2_000),
    );
  });

  it('is injective over (tracker, suffix) pairs: distinct pairs never produce equal keys', () => {
    // Comparing random pairs with each other almost never lands two colliding ones in one
    // sample. Instead, for each pair, find every other (tracker, suffix) that the key
    // function would map to the same text: for `suffix|length:tracker`, any "|digits:" in
    // the key whose digits equal the length of what follows is a reading of it.
    const readings = (key: string): [string, string][] => {
      const found: [string, string][] = [];
      for (let bar = key.indexOf('|'); bar >= 0; bar = key.indexOf('|', bar + 1)) {
        const colon = key.indexOf(':', bar + 1);
        if (colon < 0) break;
        const digits = key.slice(bar + 1, colon);
        if (!/^(0|[1-9]\d*)$/.test(digits)) continue;
        const tracker = key.slice(colon + 1);
        if (tracker.length === Number(digits)) found.push([tracker, key.slice(0, bar)]);
      }
      return found;
    };
    fc.assert(
      fc.property(fc.oneof(trickyText, hostileText), fc.oneof(trickyText, hostileText), (tracker, suffix) => {
        const key = store.key(tracker, suffix);
        const others = readings(key).filter(([t, s]) => t !== tracker || s !== suffix);
        for (const [t, s] of others) {
          check(
            store.key(t, s) !== key,
            () =>
              `key(${JSON.stringify(tracker)}, ${JSON.stringify(suffix)}) === key(${JSON.stringify(t)}, ${JSON.stringify(s)}) === ${JSON.stringify(key)}`,
          );
        }
      }),
      fcParams(5_000),
    );
  });

  it('regression: tracker "a" under type "x|4:" and tracker "|1:a" under type "x" are different buckets', () => {
    expect(store.key('a', 't:x|4:')).not.toBe(store.key('|1:a', 't:x'));
  });
});

describe('C-4: the memory store under hostile keys', () => {
  const spec = tokenBucketSpec('type', 't:any', 2, 1);
  const planFor = (s: MemoryRateLimitStore, tracker: string, suffix: string): RateLimitPlan => ({
    tracker,
    tiers: [{ key: s.key(tracker, suffix), spec }],
  });

  it('consume, peek and delete never throw, and each hostile key is its own bucket', () => {
    fc.assert(
      fc.property(fc.uniqueArray(hostileText, { minLength: 1, maxLength: 30 }), (texts) => {
        const s = new MemoryRateLimitStore({ clock: () => 0 });
        const plans = texts.map((text) => planFor(s, text, text));
        for (const plan of plans) {
          check(s.consume(plan).allowed, () => `first message refused for ${JSON.stringify(plan.tracker)}`);
        }
        for (const plan of plans) {
          const [status] = s.peek(plan);
          check(status!.remaining === 1, () => `${JSON.stringify(plan.tracker)} shares a bucket`);
        }
        check(s.size === texts.length, () => `${s.size} keys for ${texts.length} distinct texts`);
        s.delete(plans.map((plan) => plan.tiers[0]!.key));
        check(s.size === 0, () => 'keys left after delete');
      }),
      fcParams(300),
    );
  });

  it('keys named like Object.prototype members neither pollute nor read the prototype', () => {
    const s = new MemoryRateLimitStore({ clock: () => 0 });
    for (const name of ['__proto__', 'constructor', 'hasOwnProperty', 'toString', 'valueOf']) {
      const bare: RateLimitPlan = { tracker: name, tiers: [{ key: name, spec }] };
      expect(s.peek(bare)).toEqual([{ tier: 'type', limit: 2, remaining: 2, resetIn: 0 }]);
      expect(s.consume(bare).allowed).toBe(true);
      expect(s.consume(bare).allowed).toBe(true);
      expect(s.consume(bare).allowed).toBe(false);
    }
    expect(s.size).toBe(5);
    expect(Object.prototype).not.toHaveProperty('limit');
    expect(({} as Record<string, unknown>)['__proto__']).toBe(Object.prototype);
    expect(typeof Object.prototype.hasOwnProperty).toBe('function');
  });

  it('64 KiB trackers and suffixes work like any other', () => {
    const s = new MemoryRateLimitStore({ clock: () => 0 });
    const big = 'x'.repeat(64 * 1024);
    const plan = planFor(s, big, big);
    const nearlyBig = planFor(s, big.slice(1), big);
    expect(s.consume(plan).allowed).toBe(true);
    expect(s.consume(plan).allowed).toBe(true);
    expect(s.consume(plan).allowed).toBe(false);
    expect(s.consume(nearlyBig).allowed).toBe(true);
  });
});
