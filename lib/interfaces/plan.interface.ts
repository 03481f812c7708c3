/** The levels at which a limit can apply. */
export type TierName = 'global' | 'type' | 'expensive' | 'connection' | 'concurrency';

/** The `code` of a `rate_limit` frame (shared with the client). */
export type { RateLimitCode } from '../protocol/rate-limit-protocol.js';

/** The algorithms a tier can use. */
export type TierAlgorithm = 'token-bucket' | 'sliding-log' | 'sliding-counter' | 'concurrency';

/** Numeric tags of the algorithms, so the hot path switches on small integers. */
export const AlgorithmKind = { TokenBucket: 0, SlidingLog: 1, SlidingCounter: 2, Concurrency: 3 } as const;

interface TierSpecBase {
  /** Which level this tier limits. */
  readonly tier: TierName;
  /** Capacity of a bucket, events per window, or open connections. */
  readonly limit: number;
  /** What one decision charges: tokens, events or connections. */
  readonly cost: number;
  /** The short, fixed suffix that names this tier in a key, e.g. `g` or `t:chat`. */
  readonly suffix: string;
}

/** A token bucket: `limit` tokens of burst, refilled at `refillRate` per second. */
export interface TokenBucketSpec extends TierSpecBase {
  readonly algorithm: 'token-bucket';
  readonly kind: typeof AlgorithmKind.TokenBucket;
  /** Tokens added per second. */
  readonly refillRate: number;
  /** Milliseconds per token. */
  readonly intervalMs: number;
  /**
   * `4 * limit * intervalMs`: when `5 * (fullAt - now)` exceeds it, less than 20% of the
   * bucket is left (both sides exact products, so the test has no rounding edge).
   */
  readonly nearBound: number;
  /** `(limit - cost) * intervalMs`, see `bucketSlack`. */
  readonly slack: number;
  /** `cost * intervalMs`, see `bucketAfter`. */
  readonly span: number;
}

/** An exact sliding-window log: at most `limit` events in any `windowMs`. */
export interface SlidingLogSpec extends TierSpecBase {
  readonly algorithm: 'sliding-log';
  readonly kind: typeof AlgorithmKind.SlidingLog;
  readonly windowMs: number;
}

/** An O(1) sliding-window counter: about `limit` events per `windowMs`. */
export interface SlidingCounterSpec extends TierSpecBase {
  readonly algorithm: 'sliding-counter';
  readonly kind: typeof AlgorithmKind.SlidingCounter;
  readonly windowMs: number;
}

/** At most `limit` leases held at once (open connections). */
export interface ConcurrencySpec extends TierSpecBase {
  readonly algorithm: 'concurrency';
  readonly kind: typeof AlgorithmKind.Concurrency;
}

/** The static description of one tier: what it limits and how. */
export type TierSpec = TokenBucketSpec | SlidingLogSpec | SlidingCounterSpec | ConcurrencySpec;

/** One tier of a plan: a spec applied to one key. */
export interface PlanTier {
  readonly key: string;
  readonly spec: TierSpec;
}

/**
 * What one decision checks: every tier consumes, or none does. Plans are built once per
 * connection and handler and reused, so a decision builds no strings.
 */
export interface RateLimitPlan {
  /** Whose budget this plan spends, e.g. `conn:17` or `ip:203.0.113.9`. */
  readonly tracker: string;
  readonly tiers: readonly PlanTier[];
  /** Identifies the lease of a concurrency tier, so that it can be released. */
  readonly lease?: string;
  /**
   * The message type the plan limits (its type tier's), for metrics and events; set by
   * the limiter. Plans without it are reported by their type tier.
   */
  readonly type?: string;
  /**
   * Whether the tiers are keyed by one connection and so decided in process memory
   * whatever the store; set by the limiter. Plans without it are placed by their tracker.
   */
  readonly connectionKeyed?: boolean;
}

/** A decision that let the message through. */
export interface RateLimitAllowed {
  readonly allowed: true;
  /** Set when a token bucket is left with less than 20% of its capacity. */
  readonly nearLimit?: TierName;
}

/** A decision that refused it, and when the same message would be allowed. */
export interface RateLimitRejected {
  readonly allowed: false;
  /** The tier that decided: the one with the longest wait. */
  readonly tier: TierName;
  /** Index of that tier in the plan. */
  readonly index: number;
  /** Whole milliseconds until the same message would be allowed; at least 1. */
  readonly retryAfter: number;
  /** Capacity of that tier. */
  readonly limit: number;
  /** What that tier has left now (whole units). */
  readonly remaining: number;
  /** Set when the store could not decide and the fail mode refused. */
  readonly storeUnavailable?: true;
  /** Set when the tracker or address is blocked by an operator. */
  readonly blocked?: true;
  /** Set when the connection is restricted to essential types. */
  readonly degraded?: true;
  /**
   * Set on the refusal of a message that arrived while the limiter closes its connection
   * (after the close decision): it is no decision, and nothing is to be sent for it.
   */
  readonly closing?: true;
}

/** The outcome of one decision. */
export type RateLimitDecision = RateLimitAllowed | RateLimitRejected;

/** The one allowed decision, shared so the allowed path allocates nothing. */
export const ALLOWED: RateLimitAllowed = Object.freeze({ allowed: true });

/** Allowed decisions that left a tier near its limit, one shared object per tier. */
export const ALLOWED_NEAR_LIMIT: Readonly<Record<TierName, RateLimitAllowed>> = Object.freeze({
  global: Object.freeze({ allowed: true, nearLimit: 'global' }),
  type: Object.freeze({ allowed: true, nearLimit: 'type' }),
  expensive: Object.freeze({ allowed: true, nearLimit: 'expensive' }),
  connection: Object.freeze({ allowed: true, nearLimit: 'connection' }),
  concurrency: Object.freeze({ allowed: true, nearLimit: 'concurrency' }),
});

/** The state of one tier as seen by `peek`. */
export interface TierStatus {
  readonly tier: TierName;
  readonly limit: number;
  /** Whole units left now. */
  readonly remaining: number;
  /** Milliseconds until the tier is back to its full budget (0 when it is). */
  readonly resetIn: number;
}
