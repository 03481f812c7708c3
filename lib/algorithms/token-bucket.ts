/**
 * Token bucket in its GCRA form: the whole state is one number, `fullAt`, the time (ms)
 * at which the bucket will be full again. A fresh bucket is any `fullAt <= now`.
 *
 * With capacity `C` and one token every `I` ms, the bucket holds
 * `C - max(0, fullAt - now) / I` tokens. Paying `k` tokens is possible when
 * `fullAt - now <= (C - k) * I` (the "slack"), and moves `fullAt` to
 * `max(fullAt, now) + k * I` (the "span"). The same comparisons run in the memory store
 * and in the Redis script, so both decide identically.
 *
 * Every function here is pure: state in, numbers out.
 */

/** Milliseconds per token for a refill rate given in tokens per second. */
export function intervalMs(refillRate: number): number {
  return 1000 / refillRate;
}

/** `(C - k) * I`: how far ahead of `now` `fullAt` may be for a cost of `k` to be paid. */
export function bucketSlack(capacity: number, cost: number, interval: number): number {
  return (capacity - cost) * interval;
}

/**
 * True when a bucket at `fullAt` can pay the cost whose slack is given, at `now`. A
 * negative slack (a cost above the capacity) can never be paid.
 */
export function bucketAllows(fullAt: number, now: number, slack: number): boolean {
  return slack >= 0 && fullAt - now <= slack;
}

/** The new `fullAt` after paying a cost of `span` (= cost * interval) ms at `now`. */
export function bucketAfter(fullAt: number, now: number, span: number): number {
  return (fullAt > now ? fullAt : now) + span;
}

/**
 * Whole milliseconds until a bucket at `fullAt`, left alone, can pay the cost: never 0 when
 * the cost cannot be paid now, and waiting that long always suffices (the result is checked
 * with the very comparison `bucketAllows` makes, so rounding cannot make it a lie).
 * Returns 0 when the cost can be paid now, `Infinity` when it never can.
 */
export function bucketWait(fullAt: number, now: number, slack: number): number {
  if (slack < 0) return Infinity;
  if (fullAt - now <= slack) return 0;
  let wait = Math.ceil(fullAt - now - slack);
  if (wait < 1) wait = 1;
  while (fullAt - (now + wait) > slack) wait++;
  return wait;
}

/** Tokens held at `now`, in `[0, capacity]`, possibly fractional. */
export function bucketTokens(fullAt: number, now: number, capacity: number, interval: number): number {
  if (fullAt <= now) return capacity;
  const tokens = capacity - (fullAt - now) / interval;
  return tokens > 0 ? tokens : 0;
}
