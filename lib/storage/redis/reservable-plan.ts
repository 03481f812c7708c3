/** A plan of token buckets only, turned once into the reservation scripts' arguments. */
import {
  ALLOWED,
  ALLOWED_NEAR_LIMIT,
  AlgorithmKind,
  type RateLimitDecision,
  type RateLimitPlan,
  type TokenBucketSpec,
} from '../../interfaces/plan.interface.js';
import { trackerHashOf } from './redis-keys.js';

/** A plan of token buckets only, as the reservation scripts take it. */
export interface ReservablePlan {
  readonly key: string;
  readonly specs: readonly TokenBucketSpec[];
  /** The time (ms) the largest batch's slots of full buckets cover: maxBatch times the shortest span. */
  readonly batchMs: number;
  /** `[numkeys, ...KEYS, '', n, H, fieldTtls, ask, ttl, owner, moreCap, decides, ...tiers]`. */
  readonly reserveArgs: readonly string[];
  readonly hashes: readonly string[];
  /** Per tier: hash index (from 1) and field. */
  readonly places: readonly (readonly [string, string])[];
}

/** The plan as the reservation scripts take it; null when it holds anything but token buckets. */
export function compileReservable(
  plan: RateLimitPlan,
  options: { readonly owner: string; readonly maxBatch: number; readonly ttlMs: number },
): ReservablePlan | null {
  const tiers = plan.tiers;
  if (tiers.length === 0) return null;
  const specs: TokenBucketSpec[] = [];
  for (const { spec } of tiers) {
    if (spec.kind !== AlgorithmKind.TokenBucket || !(spec.cost >= 1)) return null;
    specs.push(spec);
  }
  const hashes: string[] = [];
  const places = tiers.map(({ key }) => {
    const { hash, field } = trackerHashOf(key);
    let index = hashes.indexOf(hash);
    if (index < 0) index = hashes.push(hash) - 1;
    return [String(index + 1), field] as const;
  });
  const reserveArgs = [String(hashes.length + tiers.length), ...hashes, ...tiers.map((tier) => tier.key)];
  reserveArgs.push('', String(tiers.length), String(hashes.length), '0', '1', String(options.ttlMs));
  reserveArgs.push(options.owner, String(2 * options.maxBatch), '1');
  specs.forEach((spec, i) => {
    reserveArgs.push(String(spec.limit), String(spec.cost), String(spec.slack), String(spec.span));
    reserveArgs.push(String(spec.intervalMs), ...places[i]!);
  });
  return {
    key: tiers.map(({ key, spec }) => `${key}\u0000${spec.cost}`).join('\u0001'),
    specs,
    batchMs: options.maxBatch * Math.min(...specs.map((spec) => spec.span)),
    reserveArgs,
    hashes,
    places,
  };
}

/** ALLOWED, or ALLOWED_NEAR_LIMIT for the first bucket left under a fifth full after slot j. */
export function nearOf(plan: ReservablePlan, bases: readonly number[], j: number, redisNow: number): RateLimitDecision {
  const specs = plan.specs;
  for (let i = 0; i < specs.length; i++) {
    const spec = specs[i]!;
    const fullAt = bases[i]! + (j + 1) * spec.span;
    if ((fullAt - redisNow) * 5 > spec.nearBound) return ALLOWED_NEAR_LIMIT[spec.tier];
  }
  return ALLOWED;
}
