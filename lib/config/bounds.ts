/**
 * The largest (and smallest) values each numeric option may take: what its consumer
 * accepts. A value past a bound is refused at start-up, naming the variable or option,
 * instead of being wrapped, clamped or crashed on later.
 */

/** Every millisecond option: Node's timers fire after 1 ms for a delay above 2^31-1. */
export const MAX_TIMER_MS = 2_147_483_647;
/**
 * The shortest open-connection lease of the Redis store: a live instance refreshes its
 * leases every third of their TTL, one round trip each, so a shorter one lapses between
 * refreshes and the cap leaks.
 */
export const MIN_LEASE_TTL_MS = 1000;

/** `ws` reads `maxPayload` as a 32-bit signed integer (`maxPayload | 0`): above 2^31-1 it wraps. */
export const MAX_PAYLOAD_BYTES = 2_147_483_647;

/**
 * Violations before the close: the violation log keeps one timestamp (8 B) per violation
 * counted, so at most 8 MB for a connection that commits them all within the window.
 */
export const MAX_VIOLATIONS = 1_000_000;

/**
 * Operations per window of the `sliding-log` algorithm: one timestamp per operation (8 B in
 * memory, about 100 B in Redis), so at most 800 KB per tracker in memory and about 10 MB per
 * key in Redis. Above it, use `sliding-counter`.
 */
export const MAX_SLIDING_LOG = 100_000;

/** Operations per window of the `sliding-counter` algorithm (three numbers, whatever the limit). */
export const MAX_SLIDING_COUNTER = 1_000_000_000;

/** Tokens a bucket may hold (global, type, connection, and per-type capacities). */
export const MAX_CAPACITY = 1_000_000;

/**
 * The smallest refill rate, in tokens per second: one token every 1,000,000,000 ms (11.6 days).
 * Every figure derived from it (`1000 / rate` ms per token, `4 * capacity * interval`) is
 * then finite and below 2^53.
 */
export const MIN_REFILL_RATE = 0.000_001;

/**
 * The largest refill rate in messages per second (tokens per second divided by a message's
 * cost): one message every microsecond. A message then moves the bucket's time, a double
 * of milliseconds since 1970 on Redis's clock, by at least 4 of its units of precision.
 */
export const MAX_MESSAGE_RATE = 1_000_000;

/**
 * Entries of a JavaScript `Map` (V8 refuses the 2^24th): the memory store's `maxKeys` and the
 * Redis store's block cache.
 */
export const MAX_MAP_ENTRIES = 16_777_215;

/** A number as an operator writes it: `0.000001`, not `1e-6`. */
export function formatBound(value: number): string {
  return value < 1 ? value.toFixed(Math.max(0, -Math.floor(Math.log10(value)))) : String(value);
}

/**
 * Why a bucket refilled at `refillRate` tokens a second cannot count messages of `cost`
 * tokens, or `undefined`: messages may come at most `MAX_MESSAGE_RATE` a second.
 */
export function messageRateProblem(refillRate: number, cost: number): string | undefined {
  const messageRate = refillRate / cost;
  if (messageRate <= MAX_MESSAGE_RATE) return undefined;
  return (
    `refill rate ${refillRate} for messages costing ${cost} is ${messageRate} messages a second, ` +
    `more than ${MAX_MESSAGE_RATE} (one a microsecond), finer than the bucket's clock can count`
  );
}

/** Named limits one `@Throttle` may give a type: each is one more tier in every decision. */
export const MAX_NAMED_LIMITS = 8;

/**
 * A named limit's name: it is part of the tier's key suffix (`n:<name>:<type>`), so it holds
 * no `:` (which keeps two limits' suffixes distinct) and stays short.
 */
export const NAMED_LIMIT_NAME = /^[A-Za-z0-9_-]{1,32}$/;
