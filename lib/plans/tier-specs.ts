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
  const slack = bucketSlack(capacity, cost, interval);
  const nearBound = 4 * capacity * interval;
  // A rate so small (or a capacity so large) that the bucket's times overflow to Infinity
  // would make its comparisons NaN: such a bucket never refused.
  if (![interval, slack, cost * interval, nearBound].every(Number.isFinite)) {
    throw new RangeError(
      `${tier} tier: capacity ${capacity} at a refill rate of ${refillRate} per second is out of range: the time to refill it must be a finite number of milliseconds`,
    );
  }
  return Object.freeze({
    tier,
    suffix,
    algorithm: 'token-bucket',
    kind: AlgorithmKind.TokenBucket,
    limit: capacity,
    cost,
    refillRate,
    intervalMs: interval,
    slack,
    span: cost * interval,
    nearBound,
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

/**
 * The key suffix of a tier with its two figures: `@<capacity>/<refillRate>:<suffix>` for
 * every token bucket, `@<max>/<windowMs>:<suffix>` for a plan's expensive window whose
 * figures differ from the module's (no other suffix starts with `@`). A bucket's state (the
 * time it is full again) means what it owes only under the figures that wrote it: read under
 * another plan's refill rate, a free plan's debt of a few slow tokens would refuse a premium
 * connection for seconds after its upgrade, and after a deploy that lowered a capacity or
 * raised a rate, the old debt read at the new rate refused a client for the old debt's whole
 * length (100 -> 10 at 1/s: 40 s for a client that had spent 50). On Redis, a decision under
 * a shorter window dropped the entries a longer one still counted, and a larger limit met the
 * block cache's refusal of the smaller one. Keyed by its figures, each set of figures has its
 * own state (new figures start full; two versions of an app side by side in a rolling deploy
 * each keep their own), as each algorithm has its own expensive window; plans with the same
 * figures share one.
 */
export function figuresSuffix(suffix: string, first: number, second: number): string {
  return `@${first}/${second}:${suffix}`;
}
