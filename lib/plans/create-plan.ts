import type { PlanTier, RateLimitPlan, TierSpec } from '../interfaces/plan.interface.js';
import type { RateLimitStore } from '../storage/rate-limit-store.js';

/**
 * Where a store may remember things about a plan it has decided (the memory store keeps
 * the table slots of the plan's keys there). Declared when a plan is created so that it
 * lives inside the plan object rather than in a property store added later.
 */
export const PLAN_CACHE: unique symbol = Symbol('nestjs-ws-rate-limit.plan-cache');

/** A plan as `createPlan` makes it. */
export type CachedPlan = RateLimitPlan & { [PLAN_CACHE]: unknown };

/** What the limiter tells a plan about itself besides its tiers. */
export interface PlanFacts {
  /** Identifies the lease of a concurrency tier. */
  readonly lease?: string;
  /** The message type the plan limits. */
  readonly type?: string;
  /** The tiers are keyed by one connection (decided in process memory). */
  readonly connectionKeyed?: boolean;
}

/**
 * Builds a plan the way the guard does: the tiers' keys from the store, frozen tiers, and
 * room for the store's per-plan cache. Build a plan once and reuse it for every decision of
 * the same tracker and tiers.
 * @example
 * const plan = createPlan(store, 'key:user-42', [tokenBucketSpec('global', 'g', 100, 50)]);
 * store.consume(plan);
 */
export function createPlan(
  store: RateLimitStore,
  tracker: string,
  specs: readonly TierSpec[],
  lease?: string,
): RateLimitPlan {
  return planOf(store, tracker, specs, lease === undefined ? undefined : { lease });
}

/** `createPlan` with the facts the limiter knows: lease, message type, placement. */
export function planOf(
  store: RateLimitStore,
  tracker: string,
  specs: readonly TierSpec[],
  facts?: PlanFacts,
): RateLimitPlan {
  const tiers: readonly PlanTier[] = Object.freeze(
    specs.map((spec) => Object.freeze({ key: store.key(tracker, spec.suffix), spec })),
  );
  // One object shape per kind of plan, every field present from the start.
  const plan: CachedPlan =
    facts === undefined
      ? { tracker, tiers, [PLAN_CACHE]: undefined }
      : {
          tracker,
          tiers,
          ...(facts.lease === undefined ? {} : { lease: facts.lease }),
          type: facts.type ?? '',
          connectionKeyed: facts.connectionKeyed === true,
          [PLAN_CACHE]: undefined,
        };
  return plan;
}
