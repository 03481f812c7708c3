/**
 * Random multi-tier plans over a `MemoryRateLimitStore`, the reference store they are
 * compared with, and a snapshot of the store's limiter state.
 */
import fc from 'fast-check';
import type { RateLimitDecision, RateLimitPlan, TierSpec, TierStatus } from '../../../lib/interfaces/plan.interface.js';
import { PACKED_LOG_HEADER } from '../../../lib/algorithms/sliding-log.js';
import { tokenBucketSpec, windowSpec } from '../../../lib/plans/tier-specs.js';
import { LOG_PAGE_MASK, type LogSlab } from '../../../lib/storage/memory/log-slab.js';
import { MemoryRateLimitStore } from '../../../lib/storage/memory/memory-store.js';
import { EXACT_RATES, RefBucket, RefCounter, RefLog, type RefLimiter, UNITS } from './exact-model.js';
import { costOf } from './schedules.js';

/** What a random plan set is made of: a global bucket, 1-3 types, an expensive window. */
export interface PlanSetup {
  readonly global: { readonly capacity: number; readonly rate: number };
  readonly types: readonly {
    readonly capacity: number;
    readonly rate: number;
    readonly costPick: number;
    readonly expensive: boolean;
  }[];
  readonly expensive: {
    readonly algorithm: 'sliding-log' | 'sliding-counter';
    readonly limit: number;
    readonly windowMs: number;
    readonly costPick: number;
  };
  readonly trackers: readonly string[];
}

export const planSetup: fc.Arbitrary<PlanSetup> = fc.record({
  global: fc.record({ capacity: fc.integer({ min: 1, max: 12 }), rate: fc.constantFrom(...EXACT_RATES) }),
  types: fc.array(
    fc.record({
      capacity: fc.integer({ min: 1, max: 8 }),
      rate: fc.constantFrom(...EXACT_RATES),
      costPick: fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 100 })),
      expensive: fc.boolean(),
    }),
    { minLength: 1, maxLength: 3 },
  ),
  expensive: fc.record({
    algorithm: fc.constantFrom('sliding-log' as const, 'sliding-counter' as const),
    // Logs up to PACKED_LOG_MAX_LIMIT (16) are packed in the store's slab, larger ones are objects.
    limit: fc.oneof(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 15, max: 20 })),
    windowMs: fc.oneof(fc.integer({ min: 1, max: 30 }), fc.integer({ min: 31, max: 3000 })),
    costPick: fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 100 })),
  }),
  trackers: fc.constantFrom(['A'], ['A', 'B'], ['conn:1', 'conn:2', 'ip:203.0.113.9']),
});

/**
 * The plans of a setup, built as the guard builds them: for each tracker and type,
 * `[global, type]` plus the expensive window when the type is expensive. One message of a
 * type costs the same in the global and the type bucket.
 */
export function buildPlans(store: MemoryRateLimitStore, setup: PlanSetup): RateLimitPlan[] {
  const expensive = windowSpec(
    'expensive',
    'x',
    setup.expensive.algorithm,
    setup.expensive.limit,
    setup.expensive.windowMs,
    costOf(setup.expensive.costPick, setup.expensive.limit),
  );
  const plans: RateLimitPlan[] = [];
  for (const tracker of setup.trackers) {
    setup.types.forEach((type, i) => {
      const cost = costOf(type.costPick, Math.min(type.capacity, setup.global.capacity));
      const specs: TierSpec[] = [
        tokenBucketSpec('global', 'g', setup.global.capacity, setup.global.rate, cost),
        tokenBucketSpec('type', `t:type${i}`, type.capacity, type.rate, cost),
      ];
      if (type.expensive) specs.push(expensive);
      plans.push({ tracker, tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })) });
    });
  }
  return plans;
}

/** Distinct keys the plans use. */
export function distinctKeys(plans: readonly RateLimitPlan[]): number {
  return new Set(plans.flatMap((plan) => plan.tiers.map((tier) => tier.key))).size;
}

/**
 * The reference store: one textbook limiter per key, the plan decided all-or-nothing, the
 * rejection reporting the tier with the longest wait (the first such tier on a tie), since
 * every tier only gets better as time passes and the plan passes when its slowest tier does.
 * Times are in ticks of 1/8 ms.
 */
export class RefStore {
  private readonly limiters = new Map<string, RefLimiter>();

  private limiter(key: string, spec: TierSpec): RefLimiter {
    let limiter = this.limiters.get(key);
    if (!limiter) {
      switch (spec.algorithm) {
        case 'token-bucket':
          limiter = new RefBucket(spec.limit, spec.refillRate);
          break;
        case 'sliding-log':
          limiter = new RefLog(spec.limit, spec.windowMs);
          break;
        case 'sliding-counter':
          limiter = new RefCounter(spec.limit, spec.windowMs);
          break;
        case 'concurrency':
          throw new Error('not modelled');
      }
      this.limiters.set(key, limiter);
    }
    return limiter;
  }

  consume(plan: RateLimitPlan, now: number): RateLimitDecision {
    const limiters = plan.tiers.map(({ key, spec }) => this.limiter(key, spec));
    const waits = limiters.map((limiter, i) => limiter.wait(now, plan.tiers[i]!.spec.cost));
    const worstWait = Math.max(...waits);
    if (worstWait === 0) {
      limiters.forEach((limiter, i) => limiter.consume(now, plan.tiers[i]!.spec.cost));
      // The first token bucket left below 20% of its capacity is reported (a metrics hint).
      const near = limiters.findIndex(
        (limiter, i) => limiter instanceof RefBucket && 5 * limiter.tokenUnits(now) < plan.tiers[i]!.spec.limit * UNITS,
      );
      return near < 0 ? { allowed: true } : { allowed: true, nearLimit: plan.tiers[near]!.spec.tier };
    }
    const index = waits.indexOf(worstWait);
    const spec = plan.tiers[index]!.spec;
    return {
      allowed: false,
      tier: spec.tier,
      index,
      retryAfter: worstWait,
      limit: spec.limit,
      remaining: limiters[index]!.remaining(now),
    };
  }

  peek(plan: RateLimitPlan, now: number): TierStatus[] {
    return plan.tiers.map(({ key, spec }) => {
      const limiter = this.limiter(key, spec);
      return { tier: spec.tier, limit: spec.limit, remaining: limiter.remaining(now), resetIn: limiter.resetIn(now) };
    });
  }
}

interface TableInternals {
  readonly index: Map<string, number>;
  readonly slotCount: number;
  trackerOf(slot: number): string | undefined;
  idOf(slot: number): unknown;
  stateOf(slot: number): unknown;
  readonly freshAt: Float64Array;
  readonly logs: LogSlab;
  readonly size: number;
  readonly evictions: number;
}

/**
 * Every tier state (not the LRU "recently used" bit, which a lookup is meant to set), by
 * tracker and suffix: reads the store's private table, as a rejected call must leave all
 * of it alone.
 */
export function storeSnapshot(store: MemoryRateLimitStore): string {
  const table = (store as unknown as { table: TableInternals }).table;
  const entries: (readonly [string, string, unknown])[] = [];
  for (let slot = 0; slot < table.slotCount; slot++) {
    const tracker = table.trackerOf(slot);
    if (tracker === undefined) continue;
    const object = table.stateOf(slot) as { ring?: Float64Array } | number | undefined;
    // A packed log (where it is in the slab): its header (head, count, limit) and its entries.
    const page = typeof object === 'number' ? table.logs.pageOf(object) : undefined;
    const at = typeof object === 'number' ? object & LOG_PAGE_MASK : 0;
    const state =
      page !== undefined
        ? Array.from(page.subarray(at, at + PACKED_LOG_HEADER + page[at + 2]!))
        : typeof object === 'object' && object.ring
          ? { ...object, ring: Array.from(object.ring) }
          : object;
    entries.push([`${tracker} ${String(table.idOf(slot))}`, String(table.freshAt[slot]), state] as const);
  }
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return JSON.stringify({ size: table.size, trackers: table.index.size, evictions: table.evictions, entries });
}
