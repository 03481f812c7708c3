/**
 * Sliding-window log (exact): at most `limit` events in any window of `windowMs`. An event
 * at time `t` counts while `now - t < windowMs`. Only the last `limit` timestamps can ever
 * matter, so the log is a ring of `limit` entries: memory is bounded by the limit, not by
 * the traffic.
 *
 * The ring is kept oldest first: `ring[(head + i) % limit]` for `i < count`.
 */
export interface SlidingLogState {
  /** Timestamps (ms) of the last `count` admitted events, a ring of `limit` slots. */
  readonly ring: Float64Array;
  /** Index of the oldest entry. */
  head: number;
  /** Entries held, at most `limit`. */
  count: number;
}

/** A fresh log for a window that admits `limit` events. */
export function createSlidingLog(limit: number): SlidingLogState {
  return { ring: new Float64Array(limit), head: 0, count: 0 };
}

/**
 * The timestamp that must have left the window before `cost` more events fit, or
 * `-Infinity` when they fit whatever the timestamps. `cost` must be at most the limit.
 */
function blocker(log: SlidingLogState, cost: number): number {
  const limit = log.ring.length;
  const over = log.count + cost - limit;
  if (over <= 0) return -Infinity;
  return log.ring[wrap(log.head + over - 1, limit)]!;
}

/** True when `cost` more events fit in the window ending at `now` (never if cost > limit). */
export function logAllows(log: SlidingLogState, now: number, windowMs: number, cost: number): boolean {
  return cost <= log.ring.length && blocker(log, cost) <= now - windowMs;
}

/** Records `cost` events at `now` (call only after `logAllows`). */
export function logRecord(log: SlidingLogState, now: number, cost: number): void {
  const limit = log.ring.length;
  for (let i = 0; i < cost; i++) {
    if (log.count < limit) {
      log.ring[wrap(log.head + log.count, limit)] = now;
      log.count++;
    } else {
      log.ring[log.head] = now;
      log.head = wrap(log.head + 1, limit);
    }
  }
}

/**
 * Whole ms until `cost` events fit, 0 if they fit now, `Infinity` if they never can;
 * waiting that long always suffices.
 */
export function logWait(log: SlidingLogState, now: number, windowMs: number, cost: number): number {
  if (cost > log.ring.length) return Infinity;
  const oldest = blocker(log, cost);
  if (oldest <= now - windowMs) return 0;
  let wait = Math.ceil(oldest + windowMs - now);
  if (wait < 1) wait = 1;
  while (oldest > now + wait - windowMs) wait++;
  return wait;
}

/** Events of the log still inside the window ending at `now` (a binary search: O(log limit)). */
export function logCount(log: SlidingLogState, now: number, windowMs: number): number {
  const limit = log.ring.length;
  const edge = now - windowMs;
  // Entries are oldest first; find the first one after the edge.
  let low = 0;
  let high = log.count;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (log.ring[wrap(log.head + middle, limit)]! <= edge) low = middle + 1;
    else high = middle;
  }
  return log.count - low;
}

/** Time at which every entry has left the window: from then on the log equals a fresh one. */
export function logFreshAt(log: SlidingLogState, windowMs: number): number {
  if (log.count === 0) return -Infinity;
  return log.ring[wrap(log.head + log.count - 1, log.ring.length)]! + windowMs;
}

/** `index % limit` for `0 <= index < 2 * limit`, without a division. */
function wrap(index: number, limit: number): number {
  return index >= limit ? index - limit : index;
}
