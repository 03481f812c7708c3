/**
 * Sliding-window counter (O(1) memory, approximate): windows of `windowMs` aligned on
 * multiples of `windowMs`; the count at `now` is the current window's count plus the
 * previous window's count weighted by the part of it still inside the sliding window,
 * `prev * (windowMs - (now - start)) / windowMs + curr`. An admission needs that count plus
 * the cost to stay within the limit. It never admits more than the limit in one aligned
 * window, and at most twice the limit in any sliding window (the Cloudflare bound; on
 * evenly spread traffic the error is far smaller).
 */
export interface SlidingCounterState {
  /** Start (ms) of the current aligned window. */
  start: number;
  /** Events admitted in the previous aligned window. */
  prev: number;
  /** Events admitted in the current aligned window. */
  curr: number;
}

/** A fresh counter. */
export function createSlidingCounter(): SlidingCounterState {
  return { start: -Infinity, prev: 0, curr: 0 };
}

/** The counts as seen from `now`, rolled forward if windows have passed; does not mutate. */
function rolled(state: SlidingCounterState, now: number, windowMs: number): [number, number, number] {
  const start = Math.floor(now / windowMs) * windowMs;
  if (start === state.start) return [start, state.prev, state.curr];
  if (start - state.start === windowMs) return [start, state.curr, 0];
  return [start, 0, 0];
}

function weighted(start: number, prev: number, curr: number, now: number, windowMs: number): number {
  return prev === 0 ? curr : (prev * (windowMs - (now - start))) / windowMs + curr;
}

/** True when `cost` more events fit at `now`. */
export function counterAllows(
  state: SlidingCounterState,
  now: number,
  windowMs: number,
  limit: number,
  cost: number,
): boolean {
  const [start, prev, curr] = rolled(state, now, windowMs);
  return weighted(start, prev, curr, now, windowMs) + cost <= limit;
}

/** Records `cost` events at `now` (call only after `counterAllows`). */
export function counterRecord(state: SlidingCounterState, now: number, windowMs: number, cost: number): void {
  const [start, prev, curr] = rolled(state, now, windowMs);
  state.start = start;
  state.prev = prev;
  state.curr = curr + cost;
}

/** The weighted count at `now`. */
export function counterCount(state: SlidingCounterState, now: number, windowMs: number): number {
  const [start, prev, curr] = rolled(state, now, windowMs);
  return weighted(start, prev, curr, now, windowMs);
}

/**
 * Whole ms until `cost` events fit, 0 if they fit now. The estimate solves the weighting
 * for the earliest time; the loop then checks it with `counterAllows` itself, so rounding
 * never makes it a lie. `Infinity` when `cost` exceeds the limit.
 */
export function counterWait(
  state: SlidingCounterState,
  now: number,
  windowMs: number,
  limit: number,
  cost: number,
): number {
  if (cost > limit) return Infinity;
  if (counterAllows(state, now, windowMs, limit, cost)) return 0;
  const [start, prev, curr] = rolled(state, now, windowMs);
  let at: number;
  if (curr + cost <= limit && prev > 0) {
    // Inside the current window the previous window's weight decays linearly.
    at = start + windowMs * (1 - (limit - curr - cost) / prev);
  } else {
    // After the next boundary the current count becomes the decaying one.
    const decay = curr > 0 ? windowMs * (1 - (limit - cost) / curr) : 0;
    at = start + windowMs + (decay > 0 ? decay : 0);
  }
  let wait = Math.ceil(at - now);
  if (wait < 1) wait = 1;
  for (let step = 0; !counterAllows(state, now + wait, windowMs, limit, cost); step++) {
    // Two whole windows after the current one began, every count has aged out.
    if (step === 8) return Math.max(1, Math.ceil(start + 2 * windowMs - now) + 1);
    wait++;
  }
  return wait;
}

/** Time from which the counter equals a fresh one (both counts have aged out). */
export function counterFreshAt(state: SlidingCounterState, windowMs: number): number {
  return state.curr > 0 ? state.start + 2 * windowMs : state.prev > 0 ? state.start + windowMs : -Infinity;
}
