import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import type { RateLimitPlan, RateLimitRejected, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { createPlan, PLAN_CACHE } from '../../lib/plans/create-plan.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import { RateLimitStore } from '../../lib/storage/rate-limit-store.js';
import { fcParams } from './support/exact-model.js';
import { fullGc } from './support/heap.js';
import { PerTierMemoryStore } from './support/per-tier-store.js';

/**
 * Issue 13: the memory store keeps one record per tracker (every tier of every plan of it)
 * instead of one key per tier. It must decide exactly as the per-tier store did (kept in
 * test/unit/support/per-tier-store.ts) on any traffic, and keep `delete`, `peek`,
 * `release`, leases and `size` meaning what they meant.
 */

/** The tiers random plans are made of: every algorithm, limits large enough for logs to grow. */
const specArb: fc.Arbitrary<TierSpec> = fc.oneof(
  fc
    .record({ capacity: fc.integer({ min: 1, max: 30 }), rate: fc.constantFrom(0.5, 1, 8, 250), cost: fc.nat() })
    .map(({ capacity, rate, cost }) => tokenBucketSpec('type', 'b', capacity, rate, 1 + (cost % capacity))),
  fc
    .record({
      algorithm: fc.constantFrom('sliding-log' as const, 'sliding-counter' as const),
      limit: fc.integer({ min: 1, max: 40 }),
      windowMs: fc.integer({ min: 1, max: 2000 }),
      cost: fc.nat(),
    })
    .map(({ algorithm, limit, windowMs, cost }) =>
      windowSpec('expensive', 'w', algorithm, limit, windowMs, 1 + (cost % Math.min(limit, 3))),
    ),
  fc.integer({ min: 1, max: 3 }).map((limit) => concurrencySpec('concurrency', 'c', limit)),
);

const SUFFIXES = ['g', 't:a', 't:b', 'x', 'c'] as const;

/** One spec per suffix (a key is one tier: its algorithm and figures never change). */
const tierSetArb = fc
  .tuple(specArb, specArb, specArb, specArb, specArb)
  .map((specs) => specs.map((spec, i) => ({ ...spec, suffix: SUFFIXES[i]! }) as TierSpec));

/** A plan shape: 1-4 distinct tiers of the set, by index. */
const shapeArb = fc.uniqueArray(fc.integer({ min: 0, max: SUFFIXES.length - 1 }), { minLength: 1, maxLength: 4 });

type Command =
  | { kind: 'advance'; ms: number }
  | { kind: 'consume'; pick: number }
  | { kind: 'peek'; pick: number }
  | { kind: 'release'; pick: number }
  /** A new plan object for the same tracker and tiers (a new connection or handler). */
  | { kind: 'rebuild'; pick: number }
  /** Forgets some keys of a plan, as the service does on close and on reset. */
  | { kind: 'delete'; pick: number; mask: number };

const commandArb: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.double({ min: 0, max: 400, noNaN: true }).map((ms): Command => ({ kind: 'advance', ms })),
  },
  { weight: 8, arbitrary: fc.nat().map((pick): Command => ({ kind: 'consume', pick })) },
  { weight: 1, arbitrary: fc.nat().map((pick): Command => ({ kind: 'peek', pick })) },
  { weight: 1, arbitrary: fc.nat().map((pick): Command => ({ kind: 'release', pick })) },
  { weight: 1, arbitrary: fc.nat().map((pick): Command => ({ kind: 'rebuild', pick })) },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.nat(), fc.nat()).map(([pick, mask]): Command => ({ kind: 'delete', pick, mask })),
  },
);

const setupArb = fc.record({
  tierSet: tierSetArb,
  shapes: fc.array(shapeArb, { minLength: 1, maxLength: 3 }),
  trackers: fc.constantFrom(['A'], ['A', 'B'], ['conn:1', 'ip:203.0.113.9', 'x|1:y']),
  handMade: fc.boolean(),
  commands: fc.array(commandArb, { maxLength: 250 }),
});

describe('one record per tracker: same decisions as the per-tier store', () => {
  it('consume, peek, release, delete and size agree on random traffic (every algorithm, leases)', () => {
    fc.assert(
      fc.property(setupArb, ({ tierSet, shapes, trackers, handMade, commands }) => {
        let now = 1_000;
        const store = new MemoryRateLimitStore({ clock: () => now, maxKeys: 1_000_000 });
        const reference = new PerTierMemoryStore({ clock: () => now, maxKeys: 1_000_000 });
        const pairs: { specs: TierSpec[]; tracker: string; lease: string }[] = [];
        for (const tracker of trackers) {
          shapes.forEach((shape, i) =>
            pairs.push({ specs: shape.map((pick) => tierSet[pick]!), tracker, lease: `lease-${i}` }),
          );
        }
        const build = (pair: (typeof pairs)[number]): [RateLimitPlan, RateLimitPlan] => {
          const ours = handMade
            ? {
                tracker: pair.tracker,
                lease: pair.lease,
                tiers: pair.specs.map((spec) => ({ key: store.key(pair.tracker, spec.suffix), spec })),
              }
            : createPlan(store, pair.tracker, pair.specs, pair.lease);
          const theirs = {
            tracker: pair.tracker,
            lease: pair.lease,
            tiers: pair.specs.map((spec) => ({ key: reference.key(pair.tracker, spec.suffix), spec })),
          };
          return [ours, theirs];
        };
        const plans = pairs.map(build);
        for (const [step, command] of commands.entries()) {
          const at = `step ${step} (${command.kind})`;
          if (command.kind === 'advance') {
            now += command.ms;
            continue;
          }
          const index = command.pick % plans.length;
          const [ours, theirs] = plans[index]!;
          switch (command.kind) {
            case 'consume':
              expect([at, store.consume(ours)]).toEqual([at, reference.consume(theirs)]);
              break;
            case 'peek':
              expect([at, store.peek(ours)]).toEqual([at, reference.peek(theirs)]);
              break;
            case 'release':
              store.release(ours);
              reference.release(theirs);
              break;
            case 'rebuild':
              plans[index] = build(pairs[index]!);
              break;
            case 'delete': {
              const keys = ours.tiers.filter((_, i) => (command.mask >> i) & 1).map((tier) => tier.key);
              store.delete(keys);
              reference.delete(keys);
              break;
            }
          }
          expect([at, store.size]).toEqual([at, reference.size]);
        }
      }),
      fcParams(400),
    );
  });
});

describe('one record per tracker: layout', () => {
  const global = tokenBucketSpec('global', 'g', 3, 1);
  const chat = tokenBucketSpec('type', 't:chat', 2, 1);
  const search = tokenBucketSpec('type', 't:search', 2, 1);
  const expensive = windowSpec('expensive', 'x', 'sliding-log', 2, 1000);

  /** Counts the lookups of the tracker index (a Map) while `run` runs. */
  function lookups(store: MemoryRateLimitStore, run: () => void): number {
    const index = (store as unknown as { table: { index: Map<string, number> } }).table.index;
    const get = index.get.bind(index);
    let count = 0;
    index.get = (key: string) => {
      count++;
      return get(key);
    };
    try {
      run();
    } finally {
      index.get = get;
    }
    return count;
  }

  it('a kept plan decides with no lookup; a new plan of a known tracker with one, whatever its tiers', () => {
    const store = new MemoryRateLimitStore({ clock: () => 0 });
    const roomy = windowSpec('expensive', 'x', 'sliding-log', 10, 1000);
    const first = createPlan(store, 'ip:1', [global, chat, roomy]);
    expect(lookups(store, () => store.consume(first))).toBe(1);
    expect(lookups(store, () => store.consume(first))).toBe(0);
    const other = createPlan(store, 'ip:1', [global, search, roomy]);
    expect(lookups(store, () => store.consume(other))).toBe(1);
    expect(lookups(store, () => store.consume(other))).toBe(0);
    // One record holds the four tier states of the tracker.
    expect(store.trackers).toBe(1);
    expect(store.size).toBe(4);
    // The global bucket (3 tokens) is shared by both plans: the fourth message was refused.
    expect(store.consume(first)).toMatchObject({ allowed: false, tier: 'global' });
    expect(store.peek(other).map((status) => status.remaining)).toEqual([0, 1, 7]);
  });

  it('a plan whose states sit in consecutive slots remembers the first as a number, else an array; a frozen plan still works', () => {
    type Cached = RateLimitPlan & { [PLAN_CACHE]: unknown };
    const store = new MemoryRateLimitStore({ clock: () => 0 });
    const one = createPlan(store, 'conn:1', [global]) as Cached;
    const other = createPlan(store, 'conn:2', [global]) as Cached;
    const two = createPlan(store, 'conn:1', [global, chat]) as Cached;
    const three = createPlan(store, 'conn:3', [global, chat, expensive]) as Cached;
    for (const plan of [one, other, two, three]) store.consume(plan);
    expect(one[PLAN_CACHE]).toBe(0);
    // conn:1's chat state was inserted after conn:2's global: slots 0 and 2.
    expect(two[PLAN_CACHE]).toEqual([0, 2]);
    // A tracker's first plan inserts its states together.
    expect(three[PLAN_CACHE]).toBe(3);
    const frozen = Object.freeze(createPlan(store, 'conn:1', [global]));
    expect(store.consume(frozen).allowed).toBe(true); // the third of the global bucket's 3 tokens
    expect(store.consume(frozen)).toMatchObject({ allowed: false, tier: 'global', remaining: 0 });
    expect(store.consume(two)).toMatchObject({ allowed: false, tier: 'global', remaining: 0 });
    expect(store.peek(three).map((status) => status.remaining)).toEqual([2, 1, 1]);
  });

  it('a tracker dropped to make room gives its slots back in order: the next plan of as many tiers gets them consecutive', () => {
    type Cached = RateLimitPlan & { [PLAN_CACHE]: unknown };
    const store = new MemoryRateLimitStore({ maxKeys: 3, clock: () => 0 });
    const first = createPlan(store, 'a', [global, chat, expensive]) as Cached;
    const second = createPlan(store, 'b', [global, chat, expensive]) as Cached;
    store.consume(first);
    expect(first[PLAN_CACHE]).toBe(0);
    store.consume(second);
    expect([store.trackers, store.size]).toEqual([1, 3]);
    expect(second[PLAN_CACHE]).toBe(0);
    // The first plan's number now points at another tracker's states: looked up again, fresh.
    expect(store.peek(first).map((status) => status.remaining)).toEqual([3, 2, 2]);
    expect(store.peek(second).map((status) => status.remaining)).toEqual([2, 1, 1]);
  });

  it('a plan decided by two stores in turn (the fallback store) keeps both exact', () => {
    const a = new MemoryRateLimitStore({ clock: () => 0 });
    const b = new MemoryRateLimitStore({ clock: () => 0 });
    for (const tracker of ['pad-1', 'pad-2']) b.consume(createPlan(b, tracker, [chat]));
    const plan = createPlan(a, 'ip:9', [global, chat]);
    const outcomes: boolean[] = [];
    for (let i = 0; i < 3; i++) outcomes.push(a.consume(plan).allowed, b.consume(plan).allowed);
    expect(outcomes).toEqual([true, true, true, true, false, false]);
  });

  it("states spread over many pages of slots stay exact; a slot remembered past a small store's pages is looked up", () => {
    // 3,000 trackers x 2 tiers: 6,000 slots, several pages of the table's references.
    const big = new MemoryRateLimitStore({ clock: () => 0 });
    const plans = Array.from({ length: 3_000 }, (_, i) => createPlan(big, `conn:${i}`, [global, chat]));
    const admitted = (store: MemoryRateLimitStore, plan: RateLimitPlan): number => {
      let n = 0;
      while (n < 100 && store.consume(plan).allowed) n++;
      return n;
    };
    for (const plan of plans) big.consume(plan);
    expect(big.size).toBe(6_000);
    // Each tracker's chat bucket (2 tokens) holds 1 more: no state was lost or shared.
    expect(plans.map((plan) => admitted(big, plan))).toEqual(plans.map(() => 1));
    // The last plan remembers slots 5,998-5,999; a store of one tracker has one page.
    const small = new MemoryRateLimitStore({ clock: () => 0 });
    small.consume(createPlan(small, 'pad', [global]));
    const last = plans[plans.length - 1]!;
    expect((last as RateLimitPlan & { [PLAN_CACHE]?: unknown })[PLAN_CACHE]).toBe(5_998);
    expect(admitted(small, last)).toBe(2);
    expect(admitted(big, last)).toBe(0);
  });

  it('a decision through a kept plan marks its tracker recently used: the eviction hand passes it by', () => {
    const store = new MemoryRateLimitStore({ maxKeys: 3, clock: () => 0 });
    const bucket = tokenBucketSpec('global', 'g', 10, 1);
    const plans = new Map(['a', 'b', 'c', 'd', 'e'].map((tracker) => [tracker, createPlan(store, tracker, [bucket])]));
    const decide = (tracker: string): boolean => store.consume(plans.get(tracker)!).allowed;
    const remaining = (tracker: string): number => store.peek(plans.get(tracker)!)[0]!.remaining;
    for (const tracker of ['a', 'b', 'c']) decide(tracker);
    // Full: d takes the place of a (every tracker was used; the hand clears them, then drops a).
    decide('d');
    expect([remaining('a'), store.evictions]).toEqual([10, 1]);
    // b decides through its kept plan (no lookup), then e needs room: c goes, not b.
    decide('b');
    decide('e');
    expect([remaining('b'), remaining('c'), store.evictions]).toEqual([8, 10, 2]);
  });

  it('delete forgets one tier state; a tracker left with none is gone; deleteTracker drops every one', () => {
    const store = new MemoryRateLimitStore({ clock: () => 0 });
    const plan = createPlan(store, 'user:7', [global, chat, expensive]);
    store.consume(plan);
    store.consume(createPlan(store, 'user:8', [global]));
    expect([store.size, store.trackers]).toEqual([4, 2]);
    store.delete([store.key('user:7', 't:chat'), 'not a key', store.key('nobody', 'g')]);
    expect([store.size, store.trackers]).toEqual([3, 2]);
    expect(store.peek(plan).map((status) => status.remaining)).toEqual([2, 2, 1]);
    store.delete([store.key('user:7', 'g'), store.key('user:7', 'x')]);
    expect([store.size, store.trackers]).toEqual([0 + 1, 1]);
    store.consume(plan);
    store.deleteTracker('user:7');
    expect([store.size, store.trackers]).toEqual([1, 1]);
    expect(store.peek(plan).map((status) => status.remaining)).toEqual([3, 2, 2]);
  });

  it('maxKeys counts tier states; room is made by dropping a whole tracker, never the one deciding', () => {
    let now = 0;
    const store = new MemoryRateLimitStore({ maxKeys: 4, clock: () => now });
    const slow = tokenBucketSpec('global', 'g', 1, 0.001);
    const slowType = tokenBucketSpec('type', 't:chat', 1, 0.001);
    const a = createPlan(store, 'A', [slow, slowType]);
    const b = createPlan(store, 'B', [slow, slowType]);
    store.consume(a);
    store.consume(b);
    expect([store.size, store.trackers]).toEqual([4, 2]);
    now = 1;
    store.consume(a); // refused: A's buckets are empty; a refusal evicts nothing
    expect(store.evictions).toBe(0);
    const c = createPlan(store, 'C', [slow]);
    expect(store.consume(c).allowed).toBe(true);
    // One whole tracker went (the CLOCK's pick), both its live states counted as evictions.
    expect([store.size, store.trackers, store.evictions]).toEqual([3, 2, 2]);
    expect(store.peek(c)[0]!.remaining).toBe(0);
    // A tracker needing three states on a full table: the others make room, never its own.
    const d = createPlan(store, 'D', [slow, slowType, tokenBucketSpec('type', 't:more', 5, 1)]);
    expect(store.consume(d).allowed).toBe(true);
    expect(store.peek(d).map((status) => status.remaining)).toEqual([0, 0, 4]);
    expect(store.size).toBeLessThanOrEqual(4);
  });

  it('a held lease pins its tracker; release gives the state back and frees it', () => {
    const now = 0;
    const store = new MemoryRateLimitStore({ maxKeys: 2, clock: () => now });
    const seat = concurrencySpec('concurrency', 'c', 1);
    const first = createPlan(store, 'ip:1', [seat], 'instance-a');
    expect(store.consume(first).allowed).toBe(true);
    for (let i = 0; i < 5; i++) store.consume(createPlan(store, `ip:${i + 2}`, [global]));
    expect(store.consume(createPlan(store, 'ip:1', [seat], 'instance-b'))).toMatchObject({ allowed: false });
    store.release(first);
    expect(store.peek(first)).toEqual([{ tier: 'concurrency', limit: 1, remaining: 1, resetIn: 0 }]);
    expect(store.consume(createPlan(store, 'ip:1', [seat], 'instance-b')).allowed).toBe(true);
  });

  it("a flood refused with the same figures gets one frozen answer from the second refusal on; the first is its caller's own; new figures a new one, the old left as it was", () => {
    let now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now });
    const plan = createPlan(store, 'ip:1', [global, expensive]);
    for (let i = 0; i < 2; i++) expect(store.consume(plan).allowed).toBe(true);
    const own = store.consume(plan) as { -readonly [K in keyof RateLimitRejected]: RateLimitRejected[K] };
    expect(own).toEqual({ allowed: false, tier: 'expensive', index: 1, retryAfter: 1000, limit: 2, remaining: 0 });
    expect(Object.isFrozen(own)).toBe(false);
    // Its caller changes it: the next refusal with the same figures is made from the figures.
    own.retryAfter = 5;
    own.limit = 99;
    const first = store.consume(plan);
    expect(first).not.toBe(own);
    expect(first).toEqual({ allowed: false, tier: 'expensive', index: 1, retryAfter: 1000, limit: 2, remaining: 0 });
    expect(Object.isFrozen(first)).toBe(true);
    expect(store.consume(plan)).toBe(first);
    // Another store, another tracker, same figures: the same answer (it names neither).
    const other = new MemoryRateLimitStore({ clock: () => now });
    const elsewhere = createPlan(other, 'ip:2', [global, expensive]);
    for (let i = 0; i < 2; i++) other.consume(elsewhere);
    expect(other.consume(elsewhere)).toBe(first);
    now = 1.5;
    const later = store.consume(plan);
    expect(later).not.toBe(first);
    expect(Object.isFrozen(later)).toBe(false);
    expect(later).toMatchObject({ retryAfter: 999, remaining: 0 });
    expect(first).toMatchObject({ retryAfter: 1000 });
    const shared = store.consume(plan);
    expect(shared).toEqual(later);
    expect(Object.isFrozen(shared)).toBe(true);
    expect(store.consume(plan)).toBe(shared);
    // The last tier a token bucket: the same sharing.
    const bucketOnly = createPlan(store, 'ip:3', [tokenBucketSpec('global', 'g', 1, 1)]);
    expect(store.consume(bucketOnly).allowed).toBe(true);
    expect(store.consume(bucketOnly)).toMatchObject({
      allowed: false,
      tier: 'global',
      retryAfter: 1000,
      limit: 1,
      remaining: 0,
    });
    const refused = store.consume(bucketOnly);
    expect(refused).toMatchObject({ allowed: false, tier: 'global', retryAfter: 1000, limit: 1, remaining: 0 });
    expect(Object.isFrozen(refused)).toBe(true);
    expect(store.consume(bucketOnly)).toBe(refused);
  });
});

describe('the memory store builds its keys flat', () => {
  it('every key is the one RateLimitStore.key makes (the format delete parses)', () => {
    const store = new MemoryRateLimitStore();
    fc.assert(
      fc.property(fc.string(), fc.string(), (tracker, suffix) => {
        expect(store.key(tracker, suffix)).toBe(RateLimitStore.prototype.key.call(store, tracker, suffix));
      }),
      fcParams(500),
    );
  });
});

describe('issue 10 item 5: sliding logs grow with use', () => {
  it('1,000 trackers with a log of max 1e6 cost kilobytes, not 8 MB each', () => {
    const gc = fullGc();
    const spec = windowSpec('expensive', 'x', 'sliding-log', 1_000_000, 60_000);
    let now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now });
    const plans = Array.from({ length: 1_000 }, (_, i) => createPlan(store, `conn:${i}`, [spec]));
    gc?.();
    const before = process.memoryUsage();
    for (const plan of plans) for (let m = 0; m < 3; m++) expect(store.consume(plan).allowed).toBe(true);
    gc?.();
    const after = process.memoryUsage();
    const grown = after.heapUsed - before.heapUsed + (after.arrayBuffers - before.arrayBuffers);
    expect(grown).toBeLessThan(2 * 1024 * 1024);
    // Exact at the limit still: a log of 3 refuses the 4th event in its window.
    const small = createPlan(store, 'conn:small', [windowSpec('expensive', 'y', 'sliding-log', 3, 1000)]);
    const outcomes = [0, 1, 2, 3].map(() => store.consume(small).allowed);
    expect(outcomes).toEqual([true, true, true, false]);
    now += 1000;
    expect(store.consume(small).allowed).toBe(true);
  });
});
