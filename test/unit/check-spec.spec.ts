import { describe, expect, it } from '@jest/globals';
import type { RateLimitPlan, TierSpec, TokenBucketSpec } from '../../lib/interfaces/plan.interface.js';
import { checkSpec } from '../../lib/plans/check-spec.js';
import { createPlan } from '../../lib/plans/create-plan.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';

const bucket = tokenBucketSpec('global', 'g', 10, 2);
const log = windowSpec('expensive', 'x', 'sliding-log', 5, 60_000);
const counter = windowSpec('type', 'c', 'sliding-counter', 5, 1_000);
const leases = concurrencySpec('concurrency', 'cc', 3);

/** A spec as a caller might make it by hand: the builders' output with some fields changed. */
const edited = (spec: TierSpec, change: Record<string, unknown>): TierSpec => ({ ...spec, ...change }) as TierSpec;

describe('checkSpec: a tier spec made by hand is refused when no store could decide it soundly', () => {
  it("passes what the builders make, and what the stores define beyond them (a cost over the limit, a log's fractional limit)", () => {
    for (const spec of [bucket, log, counter, leases]) expect(() => checkSpec(spec)).not.toThrow();
    const overCost = edited(bucket, { cost: 12, slack: (10 - 12) * 500, span: 12 * 500 });
    expect(() => checkSpec(overCost)).not.toThrow();
    expect(() => checkSpec(edited(log, { limit: 2.5 }))).not.toThrow();
    // A copy with the same figures is as good as the builder's.
    expect(() => checkSpec({ ...bucket })).not.toThrow();
  });

  it.each([
    [
      'a bucket whose slack does not follow from its figures',
      edited(bucket, { limit: 20 }),
      /slack is 4500.*9500.*tokenBucketSpec/,
    ],
    [
      'a bucket whose interval does not follow from its rate',
      edited(bucket, { refillRate: 4 }),
      /intervalMs is 500.*250/,
    ],
    ['a bucket without a rate', edited(bucket, { refillRate: undefined }), /refillRate must be a positive number/],
    ['a negative limit', edited(counter, { limit: -1 }), /limit must be a positive number \(got -1\)/],
    ['a cost of 0', edited(counter, { cost: 0 }), /cost must be a positive number \(got 0\)/],
    ['a window that is not a number', edited(log, { windowMs: Number.NaN }), /windowMs must be a positive number/],
    ['an endless window', edited(counter, { windowMs: Infinity }), /windowMs must be a positive number/],
    ["a log's fractional cost", edited(log, { cost: 1.5 }), /a sliding log's cost must be whole/],
    [
      'a kind that does not match its algorithm',
      edited(log, { algorithm: 'sliding-counter' }),
      /kind 1 is 'sliding-log'/,
    ],
    ['an unknown kind', edited(counter, { kind: 7 }), /unknown kind 7/],
    ['an empty suffix', edited(bucket, { suffix: '' }), /suffix must be a non-empty string/],
    ['a tier name that is not a TierName', edited(bucket, { tier: 'burst' }), /tier must be one of 'global', 'type'/],
  ] as const)('refuses %s, naming the tier', (_what, spec, message) => {
    expect(() => checkSpec(spec)).toThrow(RangeError);
    expect(() => checkSpec(spec)).toThrow(message);
    if (spec.suffix !== '') expect(() => checkSpec(spec)).toThrow(`tier spec '${spec.tier}' (suffix '${spec.suffix}')`);
  });

  it('refuses what is not a spec at all', () => {
    expect(() => checkSpec(null as unknown as TierSpec)).toThrow(/not an object/);
  });

  it('createPlan refuses such a spec once per shape; the memory store refuses a plan made by hand that holds one, deciding nothing', () => {
    const store = new MemoryRateLimitStore();
    const bad = edited(bucket, { span: 1 }) as TokenBucketSpec;
    expect(() => createPlan(store, 'conn:1', [log, bad])).toThrow(/'global' \(suffix 'g'\): span is 1, but .* 500/);

    const byHand: RateLimitPlan = {
      tracker: 'conn:2',
      tiers: [
        { key: store.key('conn:2', 'x'), spec: log },
        { key: store.key('conn:2', 'g'), spec: bad },
      ],
    };
    expect(() => store.consume(byHand)).toThrow(RangeError);
    expect(() => store.peek(byHand)).toThrow(RangeError);
    expect(store.size).toBe(0);
    // The same plan with sound specs is decided as ever.
    const sound: RateLimitPlan = { ...byHand, tiers: [byHand.tiers[0]!, { ...byHand.tiers[1]!, spec: bucket }] };
    expect(store.consume(sound).allowed).toBe(true);
    expect(store.size).toBe(2);
  });
});
