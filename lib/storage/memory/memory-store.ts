// Over 400 lines: one class, the memory store, whose consume (allowed and refused paths), peek
// and reset share the tracker table's slot lookups and the plan's slot cache.
import { performance } from 'node:perf_hooks';
import { bucketAfter, bucketTokens, bucketWait } from '../../algorithms/token-bucket.js';
import {
  createSlidingLog,
  logAllows,
  logCount,
  logFreshAt,
  logRecord,
  logWait,
  logWiden,
  PACKED_LOG_MAX_LIMIT,
  packedLogAllows,
  packedLogCount,
  packedLogFreshAt,
  packedLogFits,
  packedLogRecord,
  packedLogRoom,
  packedLogSize,
  packedLogWait,
  packedLogWiden,
  packedLogWindow,
  type LogWindow,
  type SlidingLogState,
} from '../../algorithms/sliding-log.js';
import {
  counterAllows,
  counterCount,
  counterFreshAt,
  counterRecord,
  counterWait,
  createSlidingCounter,
  type SlidingCounterState,
} from '../../algorithms/sliding-counter.js';
import {
  ALLOWED,
  ALLOWED_NEAR_LIMIT,
  AlgorithmKind,
  type RateLimitDecision,
  type RateLimitPlan,
  type RateLimitRejected,
  type TierName,
  type TierSpec,
  type TokenBucketSpec,
  type TierStatus,
} from '../../interfaces/plan.interface.js';
import { checkSpec, checkTierKeys } from '../../plans/check-spec.js';
import { figuresOfPlan, PLAN_CACHE, specAt, specsOf, tierCount } from '../../plans/create-plan.js';
import type { TierFigures } from '../../plans/tier-figures.js';
import { RateLimitStore } from '../rate-limit-store.js';
import { LOG_PAGE_MASK } from './log-slab.js';
import { HAS_STATE, isKeyOf, TrackerTable } from './tracker-table.js';

/** Options of the embedded memory store. */
export interface MemoryStoreOptions {
  /**
   * Most tier states held (one per tier a tracker has used: a tracker deciding a plan of
   * a global and a type bucket holds two). Past it, whole trackers are dropped: idle ones
   * first, then the least recently used. Idle trackers are looked for all at once, at most
   * once per `maxKeys / 64` states added: in between, a tracker that fell idle since the
   * last look may outlive a live one that was not used lately.
   * @default 100000
   */
  maxKeys?: number;
  /**
   * The clock, in milliseconds. Must never run backwards.
   * @default performance.now (monotonic: wall-clock steps do not affect limits)
   */
  clock?: () => number;
}

/** Default bound on the keys the memory store holds. */
export const DEFAULT_MAX_KEYS = 100_000;

/**
 * A plan as the memory store sees it: it remembers where the plan's tier states are in the
 * plan's cache (`createPlan` makes room for it): when the tiers' states sit in consecutive
 * slots, the first slot (a number, so remembering costs the plan nothing and a decision
 * reads no other object: always so for one tier, and for a tracker's first plan, whose
 * states are inserted together), else an array of slots. The next decision on that plan
 * checks that each slot still holds its tracker's tier (two reads) instead of looking
 * anything up; the guard reuses a plan for every message of a connection and handler. A
 * slot remembered by another store, or since given to another tracker, fails the check and
 * is looked up again: one `Map` lookup for the tracker, then its chain of tier states.
 */
type BoundPlan = RateLimitPlan & { [PLAN_CACHE]?: unknown };

/**
 * The embedded store: every decision is synchronous, O(1) per tier, and allocates no object
 * when it allows (with fractional times, V8 boxes a number or two in a plan mixing buckets
 * and a sliding log: about 32 bytes a decision, left to the young generation; whole figures
 * and single-algorithm plans allocate nothing). State is kept per tracker: one record (one `Map` entry and a chain of
 * tier states, see `TrackerTable`) holds every tier of every plan of a tracker. Memory is
 * bounded by `maxKeys` tier states; room is made by dropping whole trackers. No timer.
 */
export class MemoryRateLimitStore extends RateLimitStore {
  private readonly table: TrackerTable;
  private readonly clock: () => number;
  /**
   * The slots of the decision at hand (one decision at a time: every call is synchronous).
   * Between the two passes of `consume`, a slot s below -1 is `foreign(s)`: a bucket tier's
   * slot holding another algorithm's state, replaced if the plan is allowed.
   */
  private slots = new Int32Array(8);

  constructor(options: MemoryStoreOptions = {}) {
    super();
    const maxKeys = options.maxKeys ?? DEFAULT_MAX_KEYS;
    // NaN never evicted (the store grew without bound); 0, -1 and 2.5 ran as something else.
    if (!Number.isInteger(maxKeys) || maxKeys < 1) {
      throw new RangeError(
        `nestjs-ws-rate-limit: memory store: maxKeys must be a whole number of at least 1, got ${String(maxKeys)}`,
      );
    }
    if (options.clock !== undefined && typeof options.clock !== 'function') {
      throw new TypeError('nestjs-ws-rate-limit: memory store: clock must be a function returning milliseconds');
    }
    this.table = new TrackerTable(maxKeys);
    this.clock = options.clock ?? (() => performance.now());
  }

  /** Tier states held (what `maxKeys` bounds): one per tier a tracker has used. */
  get size(): number {
    return this.table.size;
  }

  /** Trackers held (records). */
  get trackers(): number {
    return this.table.trackerCount;
  }

  /** Tier states dropped to respect `maxKeys` while they still mattered. */
  get evictions(): number {
    return this.table.evictions;
  }

  /**
   * Tells `listener` once, the first time the store drops tier states that still mattered
   * to stay within `maxKeys` (their limits start over). The module logs a warning with it.
   */
  onFirstEviction(listener: () => void): this {
    this.table.firstEviction = this.table.evictions === 0 ? listener : undefined;
    if (this.table.evictions > 0) listener();
    return this;
  }

  consume(plan: RateLimitPlan): RateLimitDecision {
    const now = this.clock();
    // A plan from `createPlan` is decided from its shape's specs (its tiers' keys are never
    // built); any other plan from its tiers.
    const specs = specsOf(plan);
    const tiers = specs === undefined ? plan.tiers : undefined;
    // A plan made by hand: its specs are checked (once per spec object; createPlan checked its
    // own), and its tiers' keys are distinct (a few comparisons).
    if (tiers !== undefined) {
      for (const tier of tiers) checkSpec(tier.spec);
      checkTierKeys(tiers);
    }
    const count = specs !== undefined ? specs.length : tiers!.length;
    const table = this.table;
    const tracker = plan.tracker;
    const cache = (plan as BoundPlan)[PLAN_CACHE];
    if (this.slots.length < count) this.slots = new Int32Array(count * 2);
    if (typeof cache === 'number') {
      const figures = figuresOfPlan(plan);
      if (figures !== undefined) {
        const decided = this.consumeHeld(plan, figures, cache, now);
        if (decided !== undefined) return decided;
      }
    }
    const slots = this.slots;
    // -2: the tracker's head not looked up yet; -1: the tracker is new.
    let head = -2;
    let missing = 0;
    let stale = false;
    for (let i = 0; i < count; i++) {
      const spec = specs !== undefined ? specs[i]! : tiers![i]!.spec;
      const name = specs !== undefined ? spec.suffix : this.nameOf(tracker, spec.suffix, tiers![i]!.key);
      let slot = remembered(cache, i, count);
      // The slot's flags (see `TrackerTable.touch`).
      let flags = 0;
      if (slot >= 0 && table.holds(slot, tracker, name)) {
        flags = table.touch(slot);
      } else {
        stale = true;
        if (head === -2) head = table.head(tracker);
        slot = head < 0 ? -1 : table.find(head, name);
        if (slot >= 0) flags = table.touch(slot);
      }
      slots[i] = slot;
      if (slot < 0) {
        // A fresh state admits any cost up to its limit, and nothing above it.
        if (spec.cost > spec.limit) return this.reject(plan, now, i);
        missing++;
        continue;
      }
      switch (spec.kind) {
        case AlgorithmKind.TokenBucket: {
          let fullAt = table.freshAt[slot]!;
          if ((flags & HAS_STATE) !== 0) {
            // Another algorithm's state (the tier changed algorithm) reads as a fresh bucket,
            // and is replaced if the plan is allowed (`foreign`: see below).
            fullAt = -Infinity;
            slots[i] = foreign(slot);
          }
          // A negative slack (a cost above the capacity, in a spec made by hand) is never paid.
          if (fullAt - now > spec.slack || spec.slack < 0) {
            slots[i] = slot;
            // The last tier refusing has nothing after it to compare waits with.
            return i === count - 1 ? refuseBucket(spec, i, fullAt, now) : this.reject(plan, now, i);
          }
          break;
        }
        case AlgorithmKind.SlidingLog: {
          const log = this.logState(slot, spec);
          let allowed: boolean;
          if (typeof log === 'number') {
            const page = table.logs.pageOf(log);
            const at = log & LOG_PAGE_MASK;
            if (spec.windowMs > packedLogWindow(page, at)) this.widen(slot, spec.windowMs);
            allowed = packedLogAllows(page, at, now, spec);
          } else if (log === undefined) {
            allowed = spec.cost <= spec.limit;
          } else {
            if (spec.windowMs > log.windowMs) this.widen(slot, spec.windowMs);
            // The largest limit too, whether or not this decision records: entries it counts
            // are not overwritten by a plan of a smaller limit (the ring may grow to it).
            const whole = Math.floor(spec.limit);
            if (whole > log.limit) log.limit = whole;
            allowed = logAllows(log, now, spec.windowMs, spec.cost, whole);
          }
          if (!allowed) return this.reject(plan, now, i);
          break;
        }
        case AlgorithmKind.SlidingCounter: {
          const counter = counterState(table.stateOf(slot));
          if (
            counter === undefined
              ? spec.cost > spec.limit
              : !counterAllows(counter, now, spec.windowMs, spec.limit, spec.cost)
          ) {
            return this.reject(plan, now, i);
          }
          break;
        }
        case AlgorithmKind.Concurrency:
          if (concurrencyHeld(table.stateOf(slot)) + spec.cost > spec.limit) return this.reject(plan, now, i);
          break;
      }
    }
    if (missing > 0) {
      // Room for new states is made only on the allowed path, never at this tracker's expense.
      if (head === -2) head = table.head(tracker);
      if (table.size + missing > table.maxKeys) table.reserve(missing, now, head);
    }
    let decision: RateLimitDecision = ALLOWED;
    for (let i = 0; i < count; i++) {
      const spec = specs !== undefined ? specs[i]! : tiers![i]!.spec;
      let slot = slots[i]!;
      if (slot < -1) {
        // A bucket's slot that holds another algorithm's state: the bucket starts afresh.
        slots[i] = slot = foreign(slot);
        table.replaceState(slot, undefined);
        table.freshAt[slot] = -Infinity;
      } else if (slot < 0) {
        if (specs !== undefined) {
          slot = table.insert(tracker, spec.suffix, false, head);
        } else {
          const key = tiers![i]!.key;
          const own = !isKeyOf(key, tracker, spec.suffix);
          slot = table.insert(tracker, own ? key : spec.suffix, own, head);
        }
        slots[i] = slot;
        if (head < 0) head = slot;
      }
      // Read the column after inserting: an insertion may have grown (replaced) it.
      const freshAt = table.freshAt;
      switch (spec.kind) {
        case AlgorithmKind.TokenBucket:
          freshAt[slot] = bucketAfter(freshAt[slot]!, now, spec.span);
          if ((freshAt[slot]! - now) * 5 > spec.nearBound && decision === ALLOWED) {
            decision = ALLOWED_NEAR_LIMIT[spec.tier];
          }
          break;
        case AlgorithmKind.SlidingLog: {
          let state = this.logState(slot, spec);
          // A small log is packed in the table's slab: no object of its own. (`windowSpec`
          // makes a log's limit whole; a spec made by hand may not, and keeps the object.)
          if (state === undefined) {
            state = packable(spec)
              ? table.packLog(slot, spec.limit)
              : table.replaceState(slot, createSlidingLog(spec.limit));
          }
          if (typeof state === 'number') {
            // The window first: a new log has none yet (the first pass widened a held one).
            const page = table.logs.pageOf(state);
            if (spec.windowMs > packedLogWindow(page, state & LOG_PAGE_MASK)) {
              packedLogWiden(page, state & LOG_PAGE_MASK, spec.windowMs);
            }
            freshAt[slot] = this.recordPacked(slot, state, spec, now);
            break;
          }
          freshAt[slot] = this.recordObject(state, spec, now);
          break;
        }
        case AlgorithmKind.SlidingCounter: {
          const counter = counterState(table.stateOf(slot)) ?? table.replaceState(slot, createSlidingCounter());
          counterRecord(counter, now, spec.windowMs, spec.cost);
          freshAt[slot] = counterFreshAt(counter, spec.windowMs);
          break;
        }
        case AlgorithmKind.Concurrency: {
          const held = table.stateOf(slot);
          const leases = held instanceof Map ? held : table.replaceState(slot, new Map<string, number>());
          const lease = plan.lease ?? '';
          leases.set(lease, (leases.get(lease) ?? 0) + spec.cost);
          freshAt[slot] = Infinity;
          break;
        }
      }
      table.noteFresh(freshAt[slot]!);
    }
    if (stale) this.remember(plan as BoundPlan, cache, count);
    return decision;
  }

  /**
   * The common decision, in fewer steps (about a fifth less time on a 3-tier plan): a
   * `createPlan` plan of frozen specs (`figuresOfPlan`) whose tiers' states sit in the
   * consecutive slots from `first` its cache
   * remembers, each a token bucket or a sliding log held as that algorithm's state, no log
   * needing a longer window or another limit than it keeps. It decides as the general path
   * does (the same checks, the same refusal); on anything else it answers `undefined`
   * having changed nothing but recently-used marks, and `consume` goes the general way.
   */
  private consumeHeld(
    plan: RateLimitPlan,
    tiers: readonly TierFigures[],
    first: number,
    now: number,
  ): RateLimitDecision | undefined {
    const table = this.table;
    const tracker = plan.tracker;
    const count = tiers.length;
    const freshAt = table.freshAt;
    for (let i = 0; i < count; i++) {
      const spec = tiers[i]!;
      const slot = first + i;
      if (!table.holds(slot, tracker, spec.suffix)) return undefined;
      const flags = table.touch(slot);
      let allowed: boolean;
      if (spec.kind === AlgorithmKind.TokenBucket) {
        if ((flags & HAS_STATE) !== 0) return undefined;
        const fullAt = freshAt[slot]!;
        // Written as the general path's test, so that they agree on any clock reading.
        allowed = !(fullAt - now > spec.slack || spec.slack < 0);
        if (!allowed && i === count - 1) return refuseBucket(spec.spec as TokenBucketSpec, i, fullAt, now);
      } else if (spec.kind === AlgorithmKind.SlidingLog) {
        const state = table.stateOf(slot);
        if (typeof state === 'number') {
          const page = table.logs.pageOf(state);
          const at = state & LOG_PAGE_MASK;
          if (!spec.packable || spec.windowMs > packedLogWindow(page, at)) return undefined;
          allowed = packedLogAllows(page, at, now, spec);
        } else {
          const log = objectLog(state);
          if (log === undefined || spec.windowMs > log.windowMs || spec.limit !== log.limit) return undefined;
          allowed = logAllows(log, now, spec.windowMs, spec.cost, spec.limit);
        }
      } else {
        return undefined;
      }
      if (!allowed) {
        this.slots[i] = slot;
        return this.reject(plan, now, i);
      }
    }
    let decision: RateLimitDecision = ALLOWED;
    for (let i = 0; i < count; i++) {
      const spec = tiers[i]!;
      const slot = first + i;
      let fresh: number;
      if (spec.kind === AlgorithmKind.TokenBucket) {
        fresh = bucketAfter(freshAt[slot]!, now, spec.span);
        if ((fresh - now) * 5 > spec.nearBound && decision === ALLOWED) decision = ALLOWED_NEAR_LIMIT[spec.tier];
      } else {
        const state = table.stateOf(slot);
        fresh =
          typeof state === 'number'
            ? this.recordPacked(slot, state, spec, now)
            : this.recordObject(state as SlidingLogState, spec, now);
      }
      freshAt[slot] = fresh;
      table.noteFresh(fresh);
    }
    return decision;
  }

  /**
   * Records a decision of `spec` in the log packed at `at` for `slot` (its window already
   * noted), moving it to a larger ring first when its events do not fit; returns when the
   * log is fresh again.
   */
  private recordPacked(slot: number, at: number, spec: LogWindow, now: number): number {
    const table = this.table;
    let page = table.logs.pageOf(at);
    // Room is made only when the events do not fit (a call V8 does not inline here: made
    // on every decision, it boxed the clock reading, about 40 bytes a decision).
    if (!packedLogFits(page, at & LOG_PAGE_MASK, spec.cost)) {
      const size = packedLogRoom(page, at & LOG_PAGE_MASK, now, spec);
      if (size !== packedLogSize(page, at & LOG_PAGE_MASK)) {
        at = table.growLog(slot, size);
        page = table.logs.pageOf(at);
      }
    }
    packedLogRecord(page, at & LOG_PAGE_MASK, now, spec);
    // Fresh once the longest window that decided the log has passed its entries.
    return packedLogFreshAt(page, at & LOG_PAGE_MASK, packedLogWindow(page, at & LOG_PAGE_MASK));
  }

  /** Records a decision of `spec` in a log object; returns when it is fresh again. */
  private recordObject(log: SlidingLogState, spec: LogWindow, now: number): number {
    logRecord(log, now, spec.cost, spec.windowMs, Math.floor(spec.limit));
    return logFreshAt(log, log.windowMs);
  }

  /**
   * What names tier `suffix` of a plan made by hand in the table: the suffix when its key is
   * `key(tracker, suffix)` (the state a `createPlan` plan of that tier decides), else its
   * key's `OwnKey` (`undefined`: no state is held under that key).
   */
  private nameOf(tracker: string, suffix: string, key: string): unknown {
    return isKeyOf(key, tracker, suffix) ? suffix : this.table.ownKey(key);
  }

  /** `nameOf` of tier `i` of any plan (a `createPlan` plan's tier is named by its suffix). */
  private nameAt(plan: RateLimitPlan, i: number): unknown {
    const specs = specsOf(plan);
    if (specs !== undefined) return specs[i]!.suffix;
    const tier = plan.tiers[i]!;
    return this.nameOf(plan.tracker, tier.spec.suffix, tier.key);
  }

  /** A token bucket's `fullAt` at a slot: another algorithm's state reads as a fresh bucket. */
  private fullAt(slot: number): number {
    return this.table.hasState(slot) ? -Infinity : this.table.freshAt[slot]!;
  }

  /**
   * Notes that the sliding log at `slot` is decided under a window longer than any before
   * (another plan's: named plans share the expensive tier): it keeps its entries until they
   * have left that window, and is not fresh before.
   */
  private widen(slot: number, windowMs: number): void {
    const table = this.table;
    const log = table.stateOf(slot);
    let fresh: number;
    if (typeof log === 'number') {
      const page = table.logs.pageOf(log);
      packedLogWiden(page, log & LOG_PAGE_MASK, windowMs);
      fresh = packedLogFreshAt(page, log & LOG_PAGE_MASK, windowMs);
    } else {
      logWiden(log as SlidingLogState, windowMs);
      fresh = logFreshAt(log as SlidingLogState, windowMs);
    }
    if (fresh > table.freshAt[slot]!) table.freshAt[slot] = fresh;
  }

  /**
   * A slot's state as the sliding log of `spec`: where it is packed (a number), its object,
   * or undefined (none yet, or another algorithm's state: the tier is decided as fresh, and
   * its state replaced when it records). One tier may be decided under the figures of
   * several plans (named plans share the expensive tier): a packed log whose spec takes
   * more than a packed log holds moves into an object, and a log is decided with the spec's
   * limit and window, keeping what the largest limit and longest window need.
   */
  private logState(slot: number, spec: TierSpec): number | SlidingLogState | undefined {
    const state = this.table.stateOf(slot);
    if (typeof state === 'number') return packable(spec) ? state : this.table.unpackLog(slot, spec.limit);
    return objectLog(state);
  }

  /**
   * Keeps the slots of the decision just made in the plan's cache: the first slot when they
   * are consecutive; else in place when the plan has an array of the right length, else a
   * new one (once per plan). A plan made without `createPlan` gets the cache added; a
   * frozen one keeps none.
   */
  private remember(plan: BoundPlan, cache: unknown, count: number): void {
    if (!canCache(plan)) return;
    const slots = this.slots;
    let consecutive = true;
    for (let i = 1; i < count && consecutive; i++) consecutive = slots[i] === slots[0]! + i;
    if (consecutive) {
      if (cache !== slots[0]) setCache(plan, slots[0]);
      return;
    }
    if (Array.isArray(cache) && cache.length === count) {
      for (let i = 0; i < count; i++) cache[i] = slots[i];
      return;
    }
    // Sized exactly (an array grown by push would reserve 17 slots).
    const fresh = new Array<number>(count);
    for (let i = 0; i < count; i++) fresh[i] = slots[i]!;
    setCache(plan, fresh);
  }

  /** The slot of a plan's tier in this store, or -1 (not held). Looks the tracker up. */
  private locate(plan: RateLimitPlan, i: number): number {
    const table = this.table;
    const name = this.nameAt(plan, i);
    const slot = remembered((plan as BoundPlan)[PLAN_CACHE], i, tierCount(plan));
    if (slot >= 0 && table.holds(slot, plan.tracker, name)) return slot;
    const head = table.head(plan.tracker);
    return head < 0 ? -1 : table.find(head, name);
  }

  /**
   * The rejected path: the longest wait of the tiers from `first` on (the tiers before it
   * allowed, so their wait is 0) decides. Changes no state. `this.slots` holds the slots of
   * the tiers up to `first`.
   */
  private reject(plan: RateLimitPlan, now: number, first: number): RateLimitRejected {
    const specs = specsOf(plan);
    const count = specs !== undefined ? specs.length : plan.tiers.length;
    let spec = specs !== undefined ? specs[first]! : plan.tiers[first]!.spec;
    let worst = first;
    let worstSlot = this.slots[first]!;
    let worstWait = this.wait(worstSlot, spec, now);
    for (let i = first + 1; i < count; i++) {
      const next = specs !== undefined ? specs[i]! : plan.tiers[i]!.spec;
      const slot = this.locate(plan, i);
      const wait = this.wait(slot, next, now);
      if (wait > worstWait) {
        worstWait = wait;
        worst = i;
        worstSlot = slot;
        spec = next;
      }
    }
    // A sliding log that refuses one event holds as many live events as it admits: nothing
    // remains, and a flood refused by its expensive window is answered without counting them.
    const remaining =
      spec.kind === AlgorithmKind.SlidingLog && spec.cost === 1 && worstSlot >= 0 && worstWait > 0
        ? 0
        : this.remaining(worstSlot, spec, now);
    return refusal(spec, worst, worstWait, remaining);
  }

  private wait(slot: number, spec: TierSpec, now: number): number {
    if (slot < 0) return spec.cost > spec.limit ? Infinity : 0;
    switch (spec.kind) {
      case AlgorithmKind.TokenBucket:
        return bucketWait(this.fullAt(slot), now, spec.slack);
      case AlgorithmKind.SlidingLog: {
        const log = this.logState(slot, spec);
        if (log === undefined) return spec.cost > spec.limit ? Infinity : 0;
        return typeof log === 'number'
          ? packedLogWait(this.table.logs.pageOf(log), log & LOG_PAGE_MASK, now, spec)
          : logWait(log, now, spec.windowMs, spec.cost, Math.floor(spec.limit));
      }
      case AlgorithmKind.SlidingCounter: {
        const counter = counterState(this.table.stateOf(slot));
        if (counter === undefined) return spec.cost > spec.limit ? Infinity : 0;
        return counterWait(counter, now, spec.windowMs, spec.limit, spec.cost);
      }
      case AlgorithmKind.Concurrency:
        // A lease is given back by a close, not by time; a retry in a second is a fair guess.
        return concurrencyHeld(this.table.stateOf(slot)) + spec.cost > spec.limit ? 1000 : 0;
    }
  }

  private remaining(slot: number, spec: TierSpec, now: number): number {
    // Whole units: a limit that is not whole (a bucket's capacity, a spec made by hand) leaves its whole part.
    if (slot < 0) return Math.floor(spec.limit);
    switch (spec.kind) {
      case AlgorithmKind.TokenBucket:
        return Math.floor(bucketTokens(this.fullAt(slot), now, spec.limit, spec.intervalMs));
      case AlgorithmKind.SlidingLog: {
        const log = this.logState(slot, spec);
        const held =
          log === undefined
            ? 0
            : typeof log === 'number'
              ? packedLogCount(this.table.logs.pageOf(log), log & LOG_PAGE_MASK, now, spec.windowMs)
              : logCount(log, now, spec.windowMs);
        // Whole events (a limit that is not whole, in a spec made by hand, admits its whole part).
        return Math.max(0, Math.floor(spec.limit) - held);
      }
      case AlgorithmKind.SlidingCounter: {
        const counter = counterState(this.table.stateOf(slot));
        return Math.max(
          0,
          Math.floor(spec.limit - (counter === undefined ? 0 : counterCount(counter, now, spec.windowMs))),
        );
      }
      case AlgorithmKind.Concurrency:
        return Math.max(0, Math.floor(spec.limit - concurrencyHeld(this.table.stateOf(slot))));
    }
  }

  /**
   * When the state at `slot` is back to what a fresh one is under `spec` (`Infinity`: a
   * lease pins it): another algorithm's state is fresh already, and a window's is read with
   * the spec's own length (a log kept for a longer window is full again sooner for a shorter one).
   */
  private resetAt(slot: number, spec: TierSpec): number {
    if (slot < 0) return -Infinity;
    const table = this.table;
    switch (spec.kind) {
      case AlgorithmKind.TokenBucket:
        return this.fullAt(slot);
      case AlgorithmKind.SlidingLog: {
        const log = this.logState(slot, spec);
        if (log === undefined) return -Infinity;
        return typeof log === 'number'
          ? packedLogFreshAt(table.logs.pageOf(log), log & LOG_PAGE_MASK, spec.windowMs)
          : logFreshAt(log, spec.windowMs);
      }
      case AlgorithmKind.SlidingCounter: {
        const counter = counterState(table.stateOf(slot));
        return counter === undefined ? -Infinity : counterFreshAt(counter, spec.windowMs);
      }
      case AlgorithmKind.Concurrency:
        return table.stateOf(slot) instanceof Map ? table.freshAt[slot]! : -Infinity;
    }
  }

  peek(plan: RateLimitPlan): TierStatus[] {
    const now = this.clock();
    if (specsOf(plan) === undefined) checkTierKeys(plan.tiers);
    return Array.from({ length: tierCount(plan) }, (_, i) => {
      const spec = specAt(plan, i);
      // A plan made by hand: its specs are checked (createPlan checked its own).
      if (specsOf(plan) === undefined) checkSpec(spec);
      const slot = this.locate(plan, i);
      const fresh = this.resetAt(slot, spec);
      return {
        tier: spec.tier,
        limit: spec.limit,
        remaining: this.remaining(slot, spec, now),
        resetIn: fresh === Infinity || fresh <= now ? 0 : Math.ceil(fresh - now),
      };
    });
  }

  release(plan: RateLimitPlan): void {
    const lease = plan.lease ?? '';
    const count = tierCount(plan);
    for (let i = 0; i < count; i++) {
      const spec = specAt(plan, i);
      if (spec.kind !== AlgorithmKind.Concurrency) continue;
      const slot = this.locate(plan, i);
      if (slot < 0) continue;
      const leases = this.table.stateOf(slot);
      if (!(leases instanceof Map)) continue;
      const held = (leases.get(lease) ?? 0) - spec.cost;
      if (held > 0) leases.set(lease, held);
      else leases.delete(lease);
      if (leases.size === 0) this.table.delete(plan.tracker, this.nameAt(plan, i));
    }
  }

  /**
   * Forgets the given keys: a key as `key(tracker, suffix)` makes it is one tier state of
   * the tracker it names; any other key (of a plan made by hand) is found in the table's
   * index of such keys, whichever trackers hold it. A tracker left without states is
   * forgotten; a key no state is held under is ignored.
   */
  delete(keys: readonly string[]): void {
    for (const key of keys) {
      const parsed = parseKey(key);
      if (parsed !== undefined) this.table.delete(parsed[0], parsed[1]);
      this.table.deleteOwnKey(key);
    }
  }

  /** Forgets every tier state of a tracker, whichever plans made them. */
  deleteTracker(tracker: string): void {
    this.table.deleteTracker(tracker);
  }

  async close(): Promise<void> {
    this.table.clear();
  }

  /**
   * The same key as every store's (`<length>:<tracker>|<suffix>`), built flat: a key made by
   * concatenation is a V8 rope that costs about twice its flat size for as long as a plan
   * keeps it.
   */
  override key(tracker: string, suffix: string): string {
    return [tracker.length, ':', tracker, '|', suffix].join('');
  }
}

/** `-2 - slot`: its own inverse, and below -1 (-1 stands for a state not held). */
function foreign(slot: number): number {
  return -2 - slot;
}

/** The slot a plan's cache remembers for tier `i` of `count`, or -1 (the caller checks it). */
function remembered(cache: unknown, i: number, count: number): number {
  if (typeof cache === 'number') return cache + i;
  if (count > 1 && Array.isArray(cache) && cache.length === count) {
    const slot: unknown = cache[i];
    if (typeof slot === 'number') return slot;
  }
  return -1;
}

/** Whether the store can keep its cache on a plan (not on a frozen one, nor add it to a sealed one). */
function canCache(plan: BoundPlan): boolean {
  return !Object.isFrozen(plan) && (PLAN_CACHE in plan || Object.isExtensible(plan));
}

function setCache(plan: BoundPlan, value: unknown): void {
  plan[PLAN_CACHE] = value;
}

/**
 * `[tracker, suffix]` of a key made by `RateLimitStore.key` (`<length>:<tracker>|<suffix>`),
 * or `undefined` for any other string.
 */
function parseKey(key: string): [string, string] | undefined {
  const colon = key.indexOf(':');
  if (colon <= 0) return undefined;
  const digits = key.slice(0, colon);
  // Only the length as `key` writes it (no sign, no leading zero, no space, no hex).
  if (!/^(?:0|[1-9][0-9]*)$/.test(digits)) return undefined;
  const length = Number(digits);
  const bar = colon + 1 + length;
  if (key.charCodeAt(bar) !== 124 /* | */) return undefined;
  return [key.slice(colon + 1, bar), key.slice(bar + 1)];
}

/** Units held by the leases of a concurrency key. */
function concurrencyHeld(leases: unknown): number {
  let held = 0;
  if (leases instanceof Map) for (const units of (leases as Map<string, number>).values()) held += units;
  return held;
}

/** A slot's state as a sliding log object, or undefined (none, packed, or another algorithm's). */
function objectLog(state: unknown): SlidingLogState | undefined {
  return typeof state === 'object' && state !== null && (state as SlidingLogState).ring !== undefined
    ? (state as SlidingLogState)
    : undefined;
}

/** Whether a sliding log of this spec is packed in the table's slab (see `consume`). */
function packable(spec: TierSpec): boolean {
  return spec.limit <= PACKED_LOG_MAX_LIMIT && Number.isInteger(spec.limit);
}

/** A slot's state as a sliding counter, or undefined (none yet, or another algorithm's). */
function counterState(state: unknown): SlidingCounterState | undefined {
  return typeof state === 'object' && state !== null && (state as SlidingCounterState).curr !== undefined
    ? (state as SlidingCounterState)
    : undefined;
}

/** A refusal by a token-bucket tier that is the plan's last: its own wait decides. */
function refuseBucket(spec: TokenBucketSpec, index: number, fullAt: number, now: number): RateLimitRejected {
  return refusal(
    spec,
    index,
    bucketWait(fullAt, now, spec.slack),
    Math.floor(bucketTokens(fullAt, now, spec.limit, spec.intervalMs)),
  );
}

/**
 * The last refusal made, its figures, and whether it is shared. A refusal is its caller's
 * own the first time its figures are asked for (a plain object: over many trackers each
 * refusal's wait is its own, and freezing one costs more than making it); the second time
 * in a row, a frozen one is made and shared from then on, so a flood refused by one tier
 * gets the same answer for a whole millisecond (`retryAfter` is whole) and the refused path
 * allocates twice per change of answer, not once per decision. The figures are kept apart
 * from the object, which its caller may change while it is its own. Shared by every store
 * of the process: the object holds no tracker.
 */
let lastRefusal: RateLimitRejected | undefined;
let lastShared = false;
let lastRetryAfter = Number.NaN;
let lastIndex = -1;
let lastRemaining = Number.NaN;
let lastTier: TierName | undefined;
let lastLimit = Number.NaN;

/** A refusal with these figures: the shared one when it has them all (see `lastRefusal`). */
function refusal(spec: TierSpec, index: number, retryAfter: number, remaining: number): RateLimitRejected {
  const again =
    lastRetryAfter === retryAfter &&
    lastIndex === index &&
    lastRemaining === remaining &&
    lastTier === spec.tier &&
    lastLimit === spec.limit;
  if (again && lastShared) return lastRefusal!;
  lastShared = again;
  lastRetryAfter = retryAfter;
  lastIndex = index;
  lastRemaining = remaining;
  lastTier = spec.tier;
  lastLimit = spec.limit;
  const made: RateLimitRejected = { allowed: false, tier: spec.tier, index, retryAfter, limit: spec.limit, remaining };
  return (lastRefusal = again ? Object.freeze(made) : made);
}
