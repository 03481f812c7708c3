import { bucketSlack, intervalMs } from '../algorithms/token-bucket.js';

/** Refuses figures no decision could ever satisfy, or that make no sense. */
function check(tier: string, limit: number, cost: number, rateOrWindow: number): void {
  if (!(limit > 0) || !Number.isFinite(limit)) throw new RangeError(`${tier} tier: limit must be a positive number`);
  if (!(cost > 0) || !Number.isFinite(cost)) throw new RangeError(`${tier} tier: cost must be a positive number`);
  if (cost > limit) throw new RangeError(`${tier} tier: cost ${cost} exceeds limit ${limit} and could never be paid`);
  if (!(rateOrWindow > 0) || !Number.isFinite(rateOrWindow)) {
    throw new RangeError(`${tier} tier: refill rate or window must be a positive number`);
  }
}
import {
  AlgorithmKind,
  type ConcurrencySpec,
  type SlidingCounterSpec,
  type SlidingLogSpec,
  type TierName,
  type TokenBucketSpec,
} from '../interfaces/plan.interface.js';

/** A token-bucket tier with its derived figures computed once. */
export function tokenBucketSpec(
  tier: TierName,
  suffix: string,
  capacity: number,
  refillRate: number,
  cost = 1,
): TokenBucketSpec {
  check(tier, capacity, cost, refillRate);
  const interval = intervalMs(refillRate);
  return Object.freeze({
    tier,
    suffix,
    algorithm: 'token-bucket',
    kind: AlgorithmKind.TokenBucket,
    limit: capacity,
    cost,
    refillRate,
    intervalMs: interval,
    slack: bucketSlack(capacity, cost, interval),
    span: cost * interval,
    nearBound: 4 * capacity * interval,
  });
}

/** A sliding-window tier (exact log or O(1) counter). */
export function windowSpec(
  tier: TierName,
  suffix: string,
  algorithm: 'sliding-log' | 'sliding-counter',
  limit: number,
  windowMs: number,
  cost = 1,
): SlidingLogSpec | SlidingCounterSpec {
  check(tier, limit, cost, windowMs);
  if (algorithm === 'sliding-log' && !Number.isInteger(limit))
    throw new RangeError(`${tier} tier: a log's limit must be whole`);
  // A log keeps one entry per unit spent: half an entry cannot be kept.
  if (algorithm === 'sliding-log' && !Number.isInteger(cost))
    throw new RangeError(`${tier} tier: a log's cost must be whole`);
  return algorithm === 'sliding-log'
    ? Object.freeze({ tier, suffix, algorithm, kind: AlgorithmKind.SlidingLog, limit, cost, windowMs })
    : Object.freeze({ tier, suffix, algorithm, kind: AlgorithmKind.SlidingCounter, limit, cost, windowMs });
}

/** A concurrency tier: at most `limit` leases held at once. */
export function concurrencySpec(tier: TierName, suffix: string, limit: number): ConcurrencySpec {
  check(tier, limit, 1, 1);
  return Object.freeze({ tier, suffix, algorithm: 'concurrency', kind: AlgorithmKind.Concurrency, limit, cost: 1 });
}
