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
  /**
   * What the reservation state is kept under: every tier's key and figures (limit, cost,
   * slack, span, interval), so two plans deciding one tier under different figures (two named
   * plans behind one address) never spend each other's slots: a slot is timed by its plan's
   * spans, and a decision must compare with its own plan's limit.
   */
  readonly key: string;
  /** The tier keys (for `ReservationBook.clear(keys)`). */
  readonly tierKeys: readonly string[];
  readonly specs: readonly TokenBucketSpec[];
  /** The time (ms) the largest batch's slots of full buckets cover: maxBatch times the shortest span. */
  readonly batchMs: number;
  /**
   * The most slots one reserving call can be granted, and the most this instance holds
   * unspent: slot j starts j spans after the first, and only slots within `ttlMs` of the
   * first are granted, so the slowest bucket allows `floor(ttlMs / span) + 1`.
   */
  readonly ttlSlots: number;
  /** `[numkeys, ...KEYS, '', n, H, fieldTtls, ask, ttl, owner, moreCap, ...tiers]`. */
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
  const reserveArgs = [String(hashes.length), ...hashes];
  reserveArgs.push('', String(tiers.length), String(hashes.length), '0', '1', String(options.ttlMs));
  reserveArgs.push(options.owner, String(2 * options.maxBatch));
  specs.forEach((spec, i) => {
    reserveArgs.push(String(spec.limit), String(spec.cost), String(spec.slack), String(spec.span));
    reserveArgs.push(String(spec.intervalMs), ...places[i]!);
  });
  return {
    // Each tier key length-prefixed: no key text can make two plans' keys equal.
    key: tiers
      .map(({ key }, i) => {
        const { limit, cost, slack, span, intervalMs } = specs[i]!;
        return `${key.length}:${key}\u0000${limit}\u0000${cost}\u0000${slack}\u0000${span}\u0000${intervalMs}`;
      })
      .join('\u0001'),
    tierKeys: tiers.map((tier) => tier.key),
    specs,
    batchMs: options.maxBatch * Math.min(...specs.map((spec) => spec.span)),
    ttlSlots: Math.max(1, Math.floor(options.ttlMs / Math.max(...specs.map((spec) => spec.span))) + 1),
    reserveArgs,
    hashes,
    places,
  };
}

/**
 * ALLOWED, or ALLOWED_NEAR_LIMIT for the first bucket left under a fifth full after its slot
 * (`slots[i]` in bucket i, or slot 0 in every bucket).
 */
export function nearOf(
  plan: ReservablePlan,
  bases: readonly number[],
  slots: readonly number[] | 0,
  redisNow: number,
): RateLimitDecision {
  const specs = plan.specs;
  for (let i = 0; i < specs.length; i++) {
    const spec = specs[i]!;
    const fullAt = bases[i]! + ((slots === 0 ? 0 : slots[i]!) + 1) * spec.span;
    if ((fullAt - redisNow) * 5 > spec.nearBound) return ALLOWED_NEAR_LIMIT[spec.tier];
  }
  return ALLOWED;
}
