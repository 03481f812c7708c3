// Over 400 lines: one algorithm in its two forms, a log object and a log packed in a slab,
// whose functions share one ring arithmetic (and must decide alike); split, they would drift.
/**
 * Sliding-window log (exact): at most `limit` events in any window of `windowMs`. An event
 * at time `t` counts while `now - t < windowMs`. Only the last `limit` timestamps can ever
 * matter, so the log is a ring of at most `limit` entries: memory is bounded by the limit,
 * not by the traffic. The ring starts small and doubles when it is full (up to `limit`
 * slots), so a log with a large limit costs what its traffic needs, not `limit` slots up
 * front; a recording that finds the ring full first drops the entries that have left the
 * window, which never changes a decision (time only moves forward, so they never count
 * again).
 *
 * The ring is kept oldest first: `ring[(head + i) % ring.length]` for `i < count`.
 *
 * One log may be decided under several windows and limits (named plans share a tier): each
 * decision compares with its own figures, and the log keeps what the longest window and the
 * largest limit that decided it need (the newest `limit` entries inside `windowMs`, both the
 * largest seen), so a shorter or smaller one never drops what a longer one still counts.
 */
export interface SlidingLogState {
  /** Timestamps (ms) of the last `count` admitted events, oldest first from `head`. */
  ring: Float64Array;
  /** Index of the oldest entry. */
  head: number;
  /** Entries held, at most `limit`. */
  count: number;
  /**
   * Events the window admits; the ring never grows past it. Decisions may pass a limit of
   * their own (a tier decided under another plan's figures): the ring then grows to the
   * largest limit given to `logRecord`, and a decision compares with its own.
   */
  limit: number;
  /**
   * The longest window that has decided the log (`logWiden`, `logRecord`): entries leave
   * the log only once they are outside it.
   */
  windowMs: number;
}

/** Slots of a new log's ring (or `limit`, if smaller). */
export const LOG_INITIAL_SLOTS = 8;

/**
 * A fresh log for a window that admits `limit` events. A log admits whole events: a limit
 * that is not whole (a spec made by hand; `windowSpec` refuses one) admits its whole part.
 */
export function createSlidingLog(limit: number): SlidingLogState {
  const whole = Math.floor(limit);
  return { ring: new Float64Array(Math.min(whole, LOG_INITIAL_SLOTS)), head: 0, count: 0, limit: whole, windowMs: 0 };
}

/**
 * The timestamp that must have left the window before `cost` more events fit, or
 * `-Infinity` when they fit whatever the timestamps. `cost` must be at most the limit.
 */
function blocker(log: SlidingLogState, cost: number, limit: number): number {
  return ringBlocker(log.ring, 0, log.ring.length, log.head, log.count, limit, cost);
}

// The ring's arithmetic, shared by both forms of the log: the object above, and a log
// packed into a slab (`packedLog*` below). A ring is `size` slots from `base` in `slots`,
// its oldest entry at `base + head`, `count` entries held.

/** The entry that must leave the window before `cost` more fit (`-Infinity`: none need to). */
function ringBlocker(
  slots: Float64Array,
  base: number,
  size: number,
  head: number,
  count: number,
  limit: number,
  cost: number,
): number {
  const over = count + cost - limit;
  if (over <= 0) return -Infinity;
  return slots[base + wrap(head + over - 1, size)]!;
}

/** Entries of a ring after `edge` (a binary search: entries are oldest first). */
function ringCountAfter(
  slots: Float64Array,
  base: number,
  size: number,
  head: number,
  count: number,
  edge: number,
): number {
  let low = 0;
  let high = count;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (slots[base + wrap(head + middle, size)]! <= edge) low = middle + 1;
    else high = middle;
  }
  return count - low;
}

/** Whole ms until the entry at `oldest` has left the window ending at `now` (0: it has). */
function waitPast(oldest: number, now: number, windowMs: number): number {
  if (oldest <= now - windowMs) return 0;
  let wait = Math.ceil(oldest + windowMs - now);
  if (wait < 1) wait = 1;
  while (oldest > now + wait - windowMs) wait++;
  return wait;
}

/**
 * True when `cost` more events fit in the window ending at `now` (never if cost > limit);
 * `limit` (whole) defaults to the log's own.
 */
export function logAllows(
  log: SlidingLogState,
  now: number,
  windowMs: number,
  cost: number,
  limit = log.limit,
): boolean {
  return cost <= limit && blocker(log, cost, limit) <= now - windowMs;
}

/**
 * Records `cost` events at `now` (call only after `logAllows`). With `windowMs`, a full ring
 * first drops the entries that have left the longest window the log was decided under
 * (`windowMs` or a longer one before) before it grows; without, it drops none. A `limit`
 * (whole) above the log's own raises it: the ring may then grow to it.
 */
export function logRecord(
  log: SlidingLogState,
  now: number,
  cost: number,
  windowMs = Infinity,
  limit = log.limit,
): void {
  if (limit > log.limit) log.limit = limit;
  if (windowMs > log.windowMs) log.windowMs = windowMs;
  for (let i = 0; i < cost; i++) {
    if (log.count === log.limit) {
      // Full at the limit: the oldest entry gives its slot.
      log.ring[log.head] = now;
      log.head = wrap(log.head + 1, log.ring.length);
      continue;
    }
    if (log.count === log.ring.length) {
      dropExpired(log, now - log.windowMs);
      if (log.count === log.ring.length) grow(log);
    }
    log.ring[wrap(log.head + log.count, log.ring.length)] = now;
    log.count++;
  }
}

/**
 * Notes that the log is decided under a window of `windowMs` (a decision that refuses too):
 * from then on its entries are kept until they have left it. Returns whether it was longer
 * than every window before (the log then matters for longer: see `logFreshAt`).
 */
export function logWiden(log: SlidingLogState, windowMs: number): boolean {
  if (!(windowMs > log.windowMs)) return false;
  log.windowMs = windowMs;
  return true;
}

/** Drops the entries at or before `edge` (they are outside every window from now on). */
function dropExpired(log: SlidingLogState, edge: number): void {
  const ring = log.ring;
  while (log.count > 0 && ring[log.head]! <= edge) {
    log.head = wrap(log.head + 1, ring.length);
    log.count--;
  }
}

/** Doubles the ring (at most to `limit` slots), oldest entry first at index 0. */
function grow(log: SlidingLogState): void {
  const old = log.ring;
  const ring = new Float64Array(Math.min(log.limit, Math.max(1, old.length * 2)));
  for (let i = 0; i < log.count; i++) ring[i] = old[wrap(log.head + i, old.length)]!;
  log.ring = ring;
  log.head = 0;
}

/**
 * Whole ms until `cost` events fit, 0 if they fit now, `Infinity` if they never can;
 * waiting that long always suffices.
 */
export function logWait(log: SlidingLogState, now: number, windowMs: number, cost: number, limit = log.limit): number {
  if (cost > limit) return Infinity;
  return waitPast(blocker(log, cost, limit), now, windowMs);
}

/** Events of the log still inside the window ending at `now` (a binary search: O(log limit)). */
export function logCount(log: SlidingLogState, now: number, windowMs: number): number {
  return ringCountAfter(log.ring, 0, log.ring.length, log.head, log.count, now - windowMs);
}

/** Time at which every entry has left the window: from then on the log equals a fresh one. */
export function logFreshAt(log: SlidingLogState, windowMs: number): number {
  if (log.count === 0) return -Infinity;
  return freshAfter(log.ring[wrap(log.head + log.count - 1, log.ring.length)]!, windowMs);
}

/**
 * The first time from which an entry at `last` has left the window: `last + windowMs`, or
 * just above it where that sum rounds below the time (the entry counts while
 * `last > now - windowMs`, and `(last + windowMs) - windowMs` may round below `last`).
 */
function freshAfter(last: number, windowMs: number): number {
  let fresh = last + windowMs;
  while (fresh - windowMs < last) fresh += Math.max(Number.MIN_VALUE, Math.abs(fresh) * Number.EPSILON);
  return fresh;
}

/** `index % size` for `0 <= index < 2 * size`, without a division. */
function wrap(index: number, size: number): number {
  return index >= size ? index - size : index;
}

// --- A log packed into a slab ------------------------------------------------------------

/**
 * The largest limit a packed log takes. A packed log holds `PACKED_LOG_HEADER + size`
 * doubles, its ring `size` slots: at most 160 bytes, at this limit, less than a
 * `SlidingLogState` object with its ring.
 */
export const PACKED_LOG_MAX_LIMIT = 16;

/**
 * Doubles before a packed log's entries: its head, its count, its ring's size and the
 * longest window it was decided under (see `SlidingLogState.windowMs`).
 */
export const PACKED_LOG_HEADER = 4;

/**
 * Slots of a new packed log's ring (or its limit, if smaller). Growing a packed log is a
 * copy within its slab, no allocation, so it starts smaller than an object's ring: a tracker
 * that makes a few expensive calls a window holds 8 doubles, not `4 + limit`.
 */
export const PACKED_LOG_INITIAL_SLOTS = 4;

/** Slots of a new packed log's ring for a window of `limit` events. */
export function packedLogInitialSize(limit: number): number {
  return Math.min(limit, PACKED_LOG_INITIAL_SLOTS);
}

/**
 * Writes a fresh log with a ring of `size` slots at `at` in `slab` (it takes
 * `PACKED_LOG_HEADER + size` doubles). The same log as `createSlidingLog`'s, in a
 * `Float64Array` shared with other logs: a store that keeps many small logs in one slab
 * allocates no object per log. Its limit is not kept: every function given it takes it.
 */
export function packLog(slab: Float64Array, at: number, size: number): void {
  slab[at] = 0;
  slab[at + 1] = 0;
  slab[at + 2] = size;
  slab[at + 3] = 0;
}

/** Slots of the ring of the log packed at `at`. */
export function packedLogSize(slab: Float64Array, at: number): number {
  return slab[at + 2]!;
}

/** Whether `cost` more events fit in the ring of the log packed at `at` as it is. */
export function packedLogFits(slab: Float64Array, at: number, cost: number): boolean {
  return slab[at + 1]! + cost <= slab[at + 2]!;
}

/** The longest window the log packed at `at` was decided under (see `packedLogWiden`). */
export function packedLogWindow(slab: Float64Array, at: number): number {
  return slab[at + 3]!;
}

/** `logWiden` of the log packed at `at`. */
export function packedLogWiden(slab: Float64Array, at: number, windowMs: number): boolean {
  if (!(windowMs > slab[at + 3]!)) return false;
  slab[at + 3] = windowMs;
  return true;
}

/**
 * What the functions of a packed log take of its window (a sliding-log `TierSpec` has it):
 * its length, the events it admits, and the events one decision records.
 */
export interface LogWindow {
  readonly windowMs: number;
  readonly limit: number;
  readonly cost: number;
}

/** The entry of the log packed at `at` that must leave the window before `cost` more fit. */
function packedBlocker(slab: Float64Array, at: number, limit: number, cost: number): number {
  return ringBlocker(slab, at + PACKED_LOG_HEADER, slab[at + 2]!, slab[at]!, slab[at + 1]!, limit, cost);
}

/** `logAllows` of the log packed at `at`. */
export function packedLogAllows(slab: Float64Array, at: number, now: number, window: LogWindow): boolean {
  return window.cost <= window.limit && packedBlocker(slab, at, window.limit, window.cost) <= now - window.windowMs;
}

/**
 * The ring size the log packed at `at` needs before a decision's events at `now` are
 * recorded (after `packedLogAllows`; it notes the decision's window, see `packedLogWiden`):
 * its own size when they fit, first dropping the entries that have left the longest window
 * the log was decided under if the ring would overflow (as `logRecord` does), else a larger
 * size (doubled) to move it to (`packedLogMove`), up to `PACKED_LOG_MAX_LIMIT` (or a larger
 * limit, which the stores never pack): the most any packed log's limit can be, so that
 * entries a plan of a larger limit (or a longer
 * window) counts are kept whichever plan records. A ring of that size that is full gives its
 * oldest entry.
 */
export function packedLogRoom(slab: Float64Array, at: number, now: number, window: LogWindow): number {
  const { windowMs, cost } = window;
  if (windowMs > slab[at + 3]!) slab[at + 3] = windowMs;
  const size = slab[at + 2]!;
  if (slab[at + 1]! + cost <= size) return size;
  const kept = slab[at + 3]!;
  // Up to the most any packed log's limit can be, not this decision's: the log may be decided
  // under a larger limit too (another plan's), whose entries must not be overwritten. A log
  // decided under one limit L never holds more than L live entries, so its ring still stops
  // below 2L.
  const cap = Math.max(window.limit, PACKED_LOG_MAX_LIMIT);
  if (size >= cap) return size;
  const base = at + PACKED_LOG_HEADER;
  let head = slab[at]!;
  let count = slab[at + 1]!;
  while (count > 0 && slab[base + head]! <= now - kept) {
    head = wrap(head + 1, size);
    count--;
  }
  slab[at] = head;
  slab[at + 1] = count;
  return count + cost <= size ? size : Math.min(cap, Math.max(size * 2, count + cost));
}

/**
 * Copies the log packed at `from` in `source` to a fresh ring of `size` slots at `to` in
 * `target` (oldest entry first); `size` holds its entries. The old place is left as it was.
 */
export function packedLogMove(
  source: Float64Array,
  from: number,
  target: Float64Array,
  to: number,
  size: number,
): void {
  const count = source[from + 1]!;
  const head = source[from]!;
  const oldSize = source[from + 2]!;
  for (let i = 0; i < count; i++) {
    target[to + PACKED_LOG_HEADER + i] = source[from + PACKED_LOG_HEADER + wrap(head + i, oldSize)]!;
  }
  target[to] = 0;
  target[to + 1] = count;
  target[to + 2] = size;
  target[to + 3] = source[from + 3]!;
}

/**
 * `logRecord` of the log packed at `at` (call only after `packedLogAllows`, and
 * `packedLogRoom` returned the ring's own size).
 */
export function packedLogRecord(slab: Float64Array, at: number, now: number, window: LogWindow): void {
  const cost = window.cost;
  const size = slab[at + 2]!;
  const base = at + PACKED_LOG_HEADER;
  let head = slab[at]!;
  let count = slab[at + 1]!;
  for (let i = 0; i < cost; i++) {
    if (count === size) {
      // Full (`packedLogRoom` left it so: every entry is among the newest the log's limits
      // need, or the ring is at the largest size and holds more): the oldest entry gives its
      // slot. A ring with room appends, even past this decision's limit: a ring grown under
      // a larger limit keeps what that limit needs, and the entries past the one this
      // decision compares with never change its answer.
      slab[base + head] = now;
      head = wrap(head + 1, size);
    } else {
      slab[base + wrap(head + count, size)] = now;
      count++;
    }
  }
  slab[at] = head;
  slab[at + 1] = count;
}

/** `logWait` of the log packed at `at`. */
export function packedLogWait(slab: Float64Array, at: number, now: number, window: LogWindow): number {
  if (window.cost > window.limit) return Infinity;
  return waitPast(packedBlocker(slab, at, window.limit, window.cost), now, window.windowMs);
}

/**
 * The log packed at `at` as a `SlidingLogState` (its entries, oldest first, and its longest
 * window) for a window of `limit` events (the larger of it and the entries held). The
 * packed log is left as it was.
 */
export function unpackedLog(slab: Float64Array, at: number, limit: number): SlidingLogState {
  const count = slab[at + 1]!;
  const size = slab[at + 2]!;
  const head = slab[at]!;
  const whole = Math.max(Math.floor(limit), count);
  const ring = new Float64Array(Math.max(count, Math.min(whole, LOG_INITIAL_SLOTS)));
  for (let i = 0; i < count; i++) ring[i] = slab[at + PACKED_LOG_HEADER + wrap(head + i, size)]!;
  return { ring, head: 0, count, limit: whole, windowMs: slab[at + 3]! };
}

/** `logCount` of the log packed at `at`. */
export function packedLogCount(slab: Float64Array, at: number, now: number, windowMs: number): number {
  return ringCountAfter(slab, at + PACKED_LOG_HEADER, slab[at + 2]!, slab[at]!, slab[at + 1]!, now - windowMs);
}

/** `logFreshAt` of the log packed at `at`. */
export function packedLogFreshAt(slab: Float64Array, at: number, windowMs: number): number {
  const count = slab[at + 1]!;
  if (count === 0) return -Infinity;
  return freshAfter(slab[at + PACKED_LOG_HEADER + wrap(slab[at]! + count - 1, slab[at + 2]!)]!, windowMs);
}
