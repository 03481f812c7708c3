import { bucketSlack, intervalMs } from '../algorithms/token-bucket.js';
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
  return algorithm === 'sliding-log'
    ? Object.freeze({ tier, suffix, algorithm, kind: AlgorithmKind.SlidingLog, limit, cost, windowMs })
    : Object.freeze({ tier, suffix, algorithm, kind: AlgorithmKind.SlidingCounter, limit, cost, windowMs });
}

/** A concurrency tier: at most `limit` leases held at once. */
export function concurrencySpec(tier: TierName, suffix: string, limit: number): ConcurrencySpec {
  return Object.freeze({ tier, suffix, algorithm: 'concurrency', kind: AlgorithmKind.Concurrency, limit, cost: 1 });
}
