import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { bucketSlack, intervalMs } from '../../lib/algorithms/token-bucket.js';
import {
  AlgorithmKind,
  type RateLimitDecision,
  type RateLimitPlan,
  type TierSpec,
} from '../../lib/interfaces/plan.interface.js';
import { createPlan, PLAN_CACHE } from '../../lib/plans/create-plan.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import { fcParams } from './support/exact-model.js';
import { storeSnapshot } from './support/store-model.js';

// Adversarial review of the memory store's short path (`consumeHeld`, commits acec624,
// 4c1a24b, 7185855). The reference is always the general path: the same plans frozen (a
// frozen plan keeps no cache) on a second store with the same clock. This widens the
// existing differential test (memory-store.fast-path.spec.ts) with what it does not draw:
// frozen specs made by hand (fractional bucket figures, a cost above the limit, a log limit
// that is not whole), limits 16/17 around the packed/object boundary, costs up to 16,
// `delete(keys)`, hand-made plans on the same trackers, a tiny maxKeys, clocks far from 0
// with fractional steps, and one plan decided by two stores. Two cases failed before their
// fixes: a frozen spec whose `limit` is a getter (frozen, yet its figures change) was decided
// on the short path with the figures createPlan copied (TierFigures are now made only of
// specs whose read fields are own data properties); a plan of two tiers on one suffix kept
// two states when cached and one when looked up (createPlan now refuses it).

const cacheOf = (plan: RateLimitPlan): unknown => (plan as { [PLAN_CACHE]?: unknown })[PLAN_CACHE];

/** A bucket spec made by hand, frozen, with its derived figures computed as checkSpec wants. */
function handBucket(
  tier: 'global' | 'type',
  suffix: string,
  limit: number,
  refillRate: number,
  cost: number,
): TierSpec {
  const interval = intervalMs(refillRate);
  return Object.freeze({
    tier,
    suffix,
    algorithm: 'token-bucket',
    kind: AlgorithmKind.TokenBucket,
    limit,
    cost,
    refillRate,
    intervalMs: interval,
    slack: bucketSlack(limit, cost, interval),
    span: cost * interval,
    nearBound: 4 * limit * interval,
  }) as TierSpec;
}

function handLog(suffix: string, limit: number, windowMs: number, cost: number): TierSpec {
  return Object.freeze({
    tier: 'expensive',
    suffix,
    algorithm: 'sliding-log',
    kind: AlgorithmKind.SlidingLog,
    limit,
    cost,
    windowMs,
  }) as TierSpec;
}

const POOL: readonly TierSpec[] = [
  tokenBucketSpec('global', 'g', 10, 5),
  tokenBucketSpec('global', 'g', 2.5, 0.7, 1.5),
  handBucket('global', 'g', 2, 1, 3), // cost above capacity: never admitted
  tokenBucketSpec('type', 't', 4, 2, 3),
  tokenBucketSpec('type', 't', 1, 1000),
  // Packed logs around the boundary, costs up to the limit.
  windowSpec('expensive', 'x', 'sliding-log', 16, 50, 4),
  windowSpec('expensive', 'x', 'sliding-log', 16, 1000, 16),
  windowSpec('expensive', 'x', 'sliding-log', 1, 30),
  windowSpec('expensive', 'x', 'sliding-log', 5, 200, 2),
  handLog('x', 3.5, 100, 1), // not whole: an object log of limit 3
  handLog('x', 2, 500, 3), // cost above the limit
  windowSpec('expensive', 'x', 'sliding-log', 17, 120, 5), // object log on the packed suffix
  // Object logs.
  windowSpec('expensive', 'y', 'sliding-log', 17, 300),
  windowSpec('expensive', 'y', 'sliding-log', 40, 100, 7),
  windowSpec('expensive', 'y', 'sliding-log', 3, 900), // packable spec on an object log
  handLog('y', 17.9, 400, 2),
  // Other algorithms under the same suffixes.
  windowSpec('expensive', 'x', 'sliding-counter', 4, 250),
  tokenBucketSpec('expensive', 'y', 6, 3),
  concurrencySpec('concurrency', 'c', 2),
];

const TRACKERS = ['a', 'b', 'ip:203.0.113.9', 'd'] as const;

interface Setup {
  readonly shapes: readonly (readonly number[])[];
  readonly maxKeys: number;
  readonly start: number;
}

const setup: fc.Arbitrary<Setup> = fc.record({
  shapes: fc.array(
    fc.uniqueArray(fc.nat({ max: POOL.length - 1 }), {
      minLength: 1,
      maxLength: 4,
      selector: (i) => POOL[i]!.suffix,
    }),
    { minLength: 1, maxLength: 4 },
  ),
  maxKeys: fc.constantFrom(2, 3, 4, 5, 7, 1000),
  start: fc.constantFrom(0, 1_000, 1e12 + 0.3, 2 ** 40 + 0.1),
});

type Command =
  | { readonly kind: 'advance'; readonly ms: number }
  | { readonly kind: 'consume'; readonly plan: number; readonly tracker: number; readonly hand: boolean }
  | { readonly kind: 'peek'; readonly plan: number; readonly tracker: number }
  | { readonly kind: 'release'; readonly plan: number; readonly tracker: number }
  | { readonly kind: 'forget'; readonly tracker: number }
  | { readonly kind: 'delete'; readonly tracker: number; readonly suffix: number };

const SUFFIXES = ['g', 't', 'x', 'y', 'c'] as const;

const commands: fc.Arbitrary<Command[]> = fc.array(
  fc.oneof(
    {
      weight: 4,
      arbitrary: fc
        .oneof(
          fc.integer({ min: 0, max: 5 }),
          fc.constantFrom(0.1, 1e-3, 0.25, 0.7),
          fc.double({ min: 0, max: 1200, noNaN: true }),
        )
        .map((ms): Command => ({ kind: 'advance', ms })),
    },
    {
      weight: 12,
      arbitrary: fc
        .tuple(fc.nat(), fc.nat({ max: TRACKERS.length - 1 }), fc.boolean(), fc.nat({ max: 9 }))
        .map(([plan, tracker, hand, pick]): Command => ({ kind: 'consume', plan, tracker, hand: hand && pick < 2 })),
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
    {
      weight: 1,
      arbitrary: fc
        .tuple(fc.nat({ max: TRACKERS.length - 1 }), fc.nat({ max: SUFFIXES.length - 1 }))
        .map(([tracker, suffix]): Command => ({ kind: 'delete', tracker, suffix })),
    },
  ),
  { maxLength: 300, size: 'max' },
);

/** Short-path outcomes seen (decided there / handed over), counted by wrapping the instance's method. */
const shortPath = { decided: 0, handedOver: 0 };

function countShortPath(store: MemoryRateLimitStore): void {
  const held = store as unknown as { consumeHeld: (...args: unknown[]) => unknown };
  const original = held.consumeHeld;
  held.consumeHeld = function (this: unknown, ...args: unknown[]): unknown {
    const decided = original.apply(this, args);
    if (decided === undefined) shortPath.handedOver++;
    else shortPath.decided++;
    return decided;
  };
}

function contender(config: Setup, frozen: boolean, clock: () => number) {
  const store = new MemoryRateLimitStore({ maxKeys: config.maxKeys, clock });
  if (!frozen) countShortPath(store);
  const plans = config.shapes.map((shape) =>
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
  // Plans made by hand over the same keys (frozen: no cache, decided the general way on both).
  const hand = config.shapes.map((shape) =>
    TRACKERS.map((tracker) =>
      Object.freeze({
        tracker,
        lease: 'lease-2',
        tiers: Object.freeze(
          shape.map((i) => Object.freeze({ key: store.key(tracker, POOL[i]!.suffix), spec: POOL[i]! })),
        ),
      }),
    ),
  );
  return { store, plans, hand };
}

describe('MemoryRateLimitStore short path: review', () => {
  it('decides as the general path over hand-made frozen specs, packed/object boundaries, delete(keys) and far clocks', () => {
    let shortTries = 0;
    fc.assert(
      fc.property(setup, commands, (config, run) => {
        let now = config.start;
        const clock = (): number => now;
        const fast = contender(config, false, clock);
        const slow = contender(config, true, clock);
        for (const command of run) {
          switch (command.kind) {
            case 'advance':
              now += command.ms;
              continue;
            case 'forget':
              fast.store.deleteTracker(TRACKERS[command.tracker]!);
              slow.store.deleteTracker(TRACKERS[command.tracker]!);
              break;
            case 'delete': {
              const tracker = TRACKERS[command.tracker]!;
              const suffix = SUFFIXES[command.suffix]!;
              fast.store.delete([fast.store.key(tracker, suffix)]);
              slow.store.delete([slow.store.key(tracker, suffix)]);
              break;
            }
            default: {
              const p = command.plan % config.shapes.length;
              const hand = command.kind === 'consume' && command.hand;
              const a = (hand ? fast.hand : fast.plans)[p]![command.tracker]!;
              const b = (hand ? slow.hand : slow.plans)[p]![command.tracker]!;
              if (command.kind === 'consume') {
                if (!hand && typeof cacheOf(a) === 'number') shortTries++;
                const got: RateLimitDecision = fast.store.consume(a);
                const want: RateLimitDecision = slow.store.consume(b);
                expect(got).toEqual(want);
              } else if (command.kind === 'peek') {
                expect(fast.store.peek(a)).toEqual(slow.store.peek(b));
              } else {
                fast.store.release(a);
                slow.store.release(b);
              }
            }
          }
          expect(storeSnapshot(fast.store)).toBe(storeSnapshot(slow.store));
        }
        for (let p = 0; p < config.shapes.length; p++) {
          for (let t = 0; t < TRACKERS.length; t++) {
            expect(fast.store.peek(fast.plans[p]![t]!)).toEqual(slow.store.peek(slow.plans[p]![t]!));
          }
        }
      }),
      fcParams(400),
    );
    expect(shortTries).toBeGreaterThan(1000);
    // The short path decided often, and handed over often (the cases it must leave alone).
    expect(shortPath.decided).toBeGreaterThan(2000);
    expect(shortPath.handedOver).toBeGreaterThan(2000);
  });

  it('one plan decided by two stores whose tables lay its tracker out differently: each decides as the general path', () => {
    let now = 5_000.25;
    const clock = (): number => now;
    const specs = [
      tokenBucketSpec('global', 'g', 4, 2),
      windowSpec('expensive', 'x', 'sliding-log', 3, 1_000),
      tokenBucketSpec('type', 't', 2, 1),
    ];
    const a = new MemoryRateLimitStore({ clock });
    const b = new MemoryRateLimitStore({ clock });
    const a2 = new MemoryRateLimitStore({ clock });
    const b2 = new MemoryRateLimitStore({ clock });
    // Store b holds another tracker first, and the tracker's tiers in another order: the
    // plan's cache from one store points at slots the other store gives to something else.
    for (const store of [b, b2]) {
      store.consume(Object.freeze(createPlan(store, 'other', [tokenBucketSpec('global', 'g', 9, 9)])));
      store.consume(Object.freeze(createPlan(store, 'u', [specs[2]!, specs[1]!, specs[0]!])));
    }
    const shared = createPlan(a, 'u', specs);
    const frozenA = Object.freeze(createPlan(a2, 'u', specs));
    const frozenB = Object.freeze(createPlan(b2, 'u', specs));
    for (let i = 0; i < 30; i++) {
      now += i % 3 === 0 ? 400 : 0.5;
      const [store, twin, reference] = i % 2 === 0 ? [a, a2, frozenA] : [b, b2, frozenB];
      expect(store.consume(shared)).toEqual(twin.consume(reference));
      expect(storeSnapshot(store)).toBe(storeSnapshot(twin));
    }
  });

  it('a packed log that must grow, then is full at 16, inside the short path: the same answers and states', () => {
    let now = 0;
    const clock = (): number => now;
    const specs = [tokenBucketSpec('global', 'g', 1000, 1000), windowSpec('expensive', 'x', 'sliding-log', 16, 100, 3)];
    const other = windowSpec('expensive', 'x', 'sliding-log', 16, 40, 1);
    const fast = new MemoryRateLimitStore({ clock });
    const slow = new MemoryRateLimitStore({ clock });
    const p = createPlan(fast, 'u', specs);
    const q = createPlan(fast, 'u', [specs[0]!, other]);
    const p2 = Object.freeze(createPlan(slow, 'u', specs));
    const q2 = Object.freeze(createPlan(slow, 'u', [specs[0]!, other]));
    let allowed = 0;
    for (let i = 0; i < 200; i++) {
      now += [0, 0.5, 3, 7.25, 0][i % 5]!;
      const [x, y] = i % 4 === 3 ? [q, q2] : [p, p2];
      const got = fast.consume(x);
      expect(got).toEqual(slow.consume(y));
      if (got.allowed) allowed++;
      expect(storeSnapshot(fast)).toBe(storeSnapshot(slow));
    }
    expect(typeof cacheOf(p)).toBe('number');
    expect(allowed).toBeGreaterThan(20);
    expect(fast.peek(p)).toEqual(slow.peek(p2));
  });

  it('a tracker last decided on the short path is kept while its log counts, and swept (no eviction counted) once idle', () => {
    let now = 0;
    const clock = (): number => now;
    const specs = [tokenBucketSpec('global', 'g', 2, 1), windowSpec('expensive', 'x', 'sliding-log', 2, 3_000)];
    const store = new MemoryRateLimitStore({ clock, maxKeys: 3 });
    const hot = createPlan(store, 'hot', specs);
    store.consume(hot);
    store.consume(createPlan(store, 'idle', [specs[0]!]));
    now = 100;
    // On the short path: the log's entry at 100 keeps 'hot' live until 3,100.
    expect(typeof cacheOf(hot)).toBe('number');
    expect(store.consume(hot)).toEqual({ allowed: true, nearLimit: 'global' });
    // At 3,050 a new tracker needs room: the sweep drops 'idle' (fresh since 1,000), not 'hot'.
    now = 3_050;
    store.consume(createPlan(store, 'new-1', [specs[0]!]));
    expect(store.trackers).toBe(2);
    expect(store.peek(hot)[1]).toEqual({ tier: 'expensive', limit: 2, remaining: 1, resetIn: 50 });
    expect(store.evictions).toBe(0);
    // Long after: 'hot' is idle; room for a new tracker drops it without counting an eviction.
    now = 20_000;
    store.consume(createPlan(store, 'new-2', specs));
    expect(store.peek(hot)).toEqual([
      { tier: 'global', limit: 2, remaining: 2, resetIn: 0 },
      { tier: 'expensive', limit: 2, remaining: 2, resetIn: 0 },
    ]);
    expect(store.evictions).toBe(0);
  });

  it(
    'a frozen spec whose figures are read through its prototype (a live-config class) is decided ' +
      'with the figures it has at each decision, on either path',
    () => {
      // A spec made by hand as a frozen class instance: its own fields are frozen, but
      // `limit` is a getter on the class reading live configuration. Object.isFrozen says
      // true, so createPlan builds TierFigures (tier-figures.ts `figuresOf`), and the short
      // path keeps deciding with the limit it copied; the general path reads `spec.limit`
      // at each decision, as commit 7185855 says specs made by hand are read.
      const config = { expensiveMax: 20 };
      class LiveLogSpec {
        readonly tier = 'expensive' as const;
        readonly suffix = 'y';
        readonly algorithm = 'sliding-log' as const;
        readonly kind = AlgorithmKind.SlidingLog;
        readonly cost = 1;
        readonly windowMs = 60_000;
        get limit(): number {
          return config.expensiveMax;
        }
      }
      const spec = Object.freeze(new LiveLogSpec()) as unknown as TierSpec;
      expect(Object.isFrozen(spec)).toBe(true);
      const clock = (): number => 0;
      const fast = new MemoryRateLimitStore({ clock });
      const slow = new MemoryRateLimitStore({ clock });
      const cached = createPlan(fast, 'u', [spec]);
      const frozen = Object.freeze(createPlan(slow, 'u', [spec]));
      for (let i = 0; i < 3; i++) expect(fast.consume(cached)).toEqual(slow.consume(frozen));
      expect(typeof cacheOf(cached)).toBe('number');
      // The operator lowers the limit: 3 events are held, so a limit of 3 refuses.
      config.expensiveMax = 3;
      const want = slow.consume(frozen);
      expect(want).toMatchObject({ allowed: false, tier: 'expensive', limit: 3 });
      expect(fast.consume(cached)).toEqual(want);
    },
  );

  it('a plan of two tiers on one suffix is refused by createPlan (a cached plan kept two states, a looked-up one one)', () => {
    // createPlan/checkSpecs accepted a plan whose tiers share a suffix. The first decision
    // inserted one slot per tier, both named 'g'; the cached plan then decided each tier on
    // its own slot, while the same plan frozen, or a new plan object of the same tracker,
    // found the first 'g' slot for both (retryAfter 1000 against 2000 on the third call).
    const store = new MemoryRateLimitStore({ clock: () => 0 });
    const specs = [tokenBucketSpec('global', 'g', 3, 1), tokenBucketSpec('type', 'g', 2, 1)];
    expect(() => createPlan(store, 'u', specs)).toThrow(/tier specs 0 and 1 of one plan share the suffix 'g'/);
    // A plan made by hand with two tiers on one key: refused by consume and peek alike.
    const key = store.key('u', 'g');
    const byHand: RateLimitPlan = { tracker: 'u', tiers: specs.map((spec) => ({ key, spec })) };
    expect(() => store.consume(byHand)).toThrow(/tiers 0 and 1 of one plan share the key/);
    expect(() => store.peek(byHand)).toThrow(/share the key/);
    expect(store.size).toBe(0);
  });
});
