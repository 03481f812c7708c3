import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import type { RateLimitDecision, RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { createPlan, PLAN_CACHE } from '../../lib/plans/create-plan.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import { fcParams } from './support/exact-model.js';
import { storeSnapshot } from './support/store-model.js';

// The memory store decides a `createPlan` plan whose tier states it remembers in one short
// path (`consumeHeld`), and any other plan, or a plan whose states moved, changed algorithm
// or need a wider log, the general way. A frozen plan keeps no cache, so the store always
// decides it the general way: two stores fed the same traffic, one with plans it may cache
// and one with the same plans frozen, must answer every decision, peek and release alike.
// The specs share suffixes on purpose (named plans share the expensive tier; a tier may
// change algorithm), and a small `maxKeys` moves states between trackers. After every
// command both stores hold the same tier states (`storeSnapshot`), not only the same answers.

/** Specs the plans are drawn from; several name the same suffix with other figures. */
const POOL: readonly TierSpec[] = [
  tokenBucketSpec('global', 'g', 10, 5),
  tokenBucketSpec('global', 'g', 3, 1, 2),
  tokenBucketSpec('type', 't:chat', 4, 2),
  tokenBucketSpec('type', 't:chat', 2.5, 0.5),
  // Packed logs (limit at most 16), with windows and costs that differ under one suffix.
  windowSpec('expensive', 'x', 'sliding-log', 5, 200),
  windowSpec('expensive', 'x', 'sliding-log', 3, 800),
  windowSpec('expensive', 'x', 'sliding-log', 16, 50, 4),
  // Logs kept as objects (limit above 16).
  windowSpec('expensive', 'y', 'sliding-log', 20, 300),
  windowSpec('expensive', 'y', 'sliding-log', 40, 100),
  windowSpec('expensive', 'y', 'sliding-log', 20, 600, 3),
  windowSpec('expensive', 'x', 'sliding-counter', 4, 250),
  // A bucket under a log's suffix: the tier changes algorithm.
  tokenBucketSpec('expensive', 'x', 6, 3),
  concurrencySpec('concurrency', 'c', 2),
];

const TRACKERS = ['conn:1', 'conn:2', 'ip:203.0.113.9'] as const;

interface Setup {
  /** Each plan: indexes into POOL (distinct suffixes within one plan). */
  readonly shapes: readonly (readonly number[])[];
  readonly maxKeys: number;
}

const setup: fc.Arbitrary<Setup> = fc.record({
  shapes: fc.array(
    fc.uniqueArray(fc.nat({ max: POOL.length - 1 }), {
      minLength: 1,
      maxLength: 4,
      selector: (i) => POOL[i]!.suffix,
    }),
    { minLength: 1, maxLength: 3 },
  ),
  maxKeys: fc.constantFrom(3, 6, 1000),
});

type Command =
  | { readonly kind: 'advance'; readonly ms: number }
  | { readonly kind: 'consume'; readonly plan: number; readonly tracker: number }
  | { readonly kind: 'peek'; readonly plan: number; readonly tracker: number }
  | { readonly kind: 'release'; readonly plan: number; readonly tracker: number }
  | { readonly kind: 'forget'; readonly tracker: number };

const commands: fc.Arbitrary<Command[]> = fc.array(
  fc.oneof(
    {
      weight: 3,
      arbitrary: fc
        .oneof(fc.integer({ min: 0, max: 5 }), fc.double({ min: 0, max: 400, noNaN: true }))
        .map((ms): Command => ({ kind: 'advance', ms })),
    },
    {
      weight: 10,
      arbitrary: fc
        .tuple(fc.nat(), fc.nat({ max: TRACKERS.length - 1 }))
        .map(([plan, tracker]): Command => ({ kind: 'consume', plan, tracker })),
    },
    {
      weight: 1,
      arbitrary: fc
        .tuple(fc.nat(), fc.nat({ max: TRACKERS.length - 1 }))
        .map(([plan, tracker]): Command => ({ kind: 'peek', plan, tracker })),
    },
    {
      weight: 1,
      arbitrary: fc
        .tuple(fc.nat(), fc.nat({ max: TRACKERS.length - 1 }))
        .map(([plan, tracker]): Command => ({ kind: 'release', plan, tracker })),
    },
    {
      weight: 1,
      arbitrary: fc.nat({ max: TRACKERS.length - 1 }).map((tracker): Command => ({ kind: 'forget', tracker })),
    },
  ),
  { maxLength: 300, size: 'max' },
);

/** A store, its clock and its plans (one per shape and tracker), cached or frozen. */
function contender(config: Setup, frozen: boolean, clock: () => number) {
  const store = new MemoryRateLimitStore({ maxKeys: config.maxKeys, clock });
  const plans: RateLimitPlan[][] = config.shapes.map((shape) =>
    TRACKERS.map((tracker) => {
      const plan = createPlan(
        store,
        tracker,
        shape.map((i) => POOL[i]!),
        'lease-1',
      );
      return frozen ? Object.freeze(plan) : plan;
    }),
  );
  return { store, plans };
}

describe('MemoryRateLimitStore: the short path for remembered plans decides as the general path', () => {
  it('same decisions, peeks and releases on random traffic over shared, changing tiers', () => {
    let shortTries = 0;
    fc.assert(
      fc.property(setup, commands, (config, run) => {
        let now = 1_000;
        const clock = (): number => now;
        const fast = contender(config, false, clock);
        const slow = contender(config, true, clock);
        for (const command of run) {
          if (command.kind === 'advance') {
            now += command.ms;
            continue;
          }
          if (command.kind === 'forget') {
            fast.store.deleteTracker(TRACKERS[command.tracker]!);
            slow.store.deleteTracker(TRACKERS[command.tracker]!);
            continue;
          }
          const p = command.plan % config.shapes.length;
          const a = fast.plans[p]![command.tracker]!;
          const b = slow.plans[p]![command.tracker]!;
          if (command.kind === 'consume') {
            // The plan's cache remembers consecutive slots: the short path is tried first.
            if (typeof (a as { [PLAN_CACHE]?: unknown })[PLAN_CACHE] === 'number') shortTries++;
            const got: RateLimitDecision = fast.store.consume(a);
            const want: RateLimitDecision = slow.store.consume(b);
            expect(got).toEqual(want);
          } else if (command.kind === 'peek') {
            expect(fast.store.peek(a)).toEqual(slow.store.peek(b));
          } else {
            fast.store.release(a);
            slow.store.release(b);
          }
          // Every tier state alike (a log's window and limit too), not only the answers.
          expect(storeSnapshot(fast.store)).toBe(storeSnapshot(slow.store));
        }
        for (let p = 0; p < config.shapes.length; p++) {
          for (let t = 0; t < TRACKERS.length; t++) {
            expect(fast.store.peek(fast.plans[p]![t]!)).toEqual(slow.store.peek(slow.plans[p]![t]!));
          }
        }
      }),
      fcParams(300),
    );
    // The runs went through the short path often, not only the general one.
    expect(shortTries).toBeGreaterThan(1000);
  });

  it('a hot plan of buckets and a log is decided on the short path, and refused there alike', () => {
    // A plan decided over and over: after its first decision, its states are remembered.
    let now = 0;
    const clock = (): number => now;
    const specs = [
      tokenBucketSpec('global', 'g', 100, 50),
      tokenBucketSpec('type', 't:chat', 20, 10),
      windowSpec('expensive', 'x', 'sliding-log', 5, 60_000),
    ];
    const cached = new MemoryRateLimitStore({ clock });
    const plain = new MemoryRateLimitStore({ clock });
    const a = createPlan(cached, 'conn:1', specs);
    const b = Object.freeze(createPlan(plain, 'conn:1', specs));
    const answers: RateLimitDecision[] = [];
    for (let i = 0; i < 40; i++) {
      now += 7.5;
      const got = cached.consume(a);
      expect(got).toEqual(plain.consume(b));
      answers.push(got);
    }
    // The log admits 5, then refuses with the wait until its oldest entry leaves the window.
    expect(answers.filter((d) => d.allowed)).toHaveLength(5);
    expect(answers[5]).toMatchObject({ allowed: false, tier: 'expensive', index: 2, remaining: 0 });
    // Its oldest entry (at 7.5 ms) leaves the 60 s window at 60,007.5 ms; the 6th comes at 45 ms.
    expect((answers[5] as { retryAfter: number }).retryAfter).toBe(Math.ceil(60_007.5 - 45));
    expect(typeof (a as { [PLAN_CACHE]?: unknown })[PLAN_CACHE]).toBe('number');
  });

  it('specs made by hand (not frozen) are read as they are at each decision, not as they were', () => {
    const store = new MemoryRateLimitStore({ clock: () => 0 });
    const log = { ...windowSpec('expensive', 'y', 'sliding-log', 20, 1000) } as { limit: number } & TierSpec;
    const plan = createPlan(store, 'conn:1', [log]);
    for (let i = 0; i < 3; i++) expect(store.consume(plan).allowed).toBe(true);
    expect(typeof (plan as { [PLAN_CACHE]?: unknown })[PLAN_CACHE]).toBe('number');
    // The caller lowers the limit of its own spec object: the next decision sees it.
    log.limit = 3;
    expect(store.consume(plan)).toMatchObject({ allowed: false, tier: 'expensive', limit: 3 });
  });
});
