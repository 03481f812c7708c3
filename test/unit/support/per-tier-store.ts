/**
 * The memory store as it was before issue 13 (commit 2c3a88c): one key-table slot per tier
 * key, one lookup per tier. Kept verbatim (but for import paths, names and its own plan-cache
 * symbol) as the reference the one-record-per-tracker store must decide exactly like.
 */
import { performance } from 'node:perf_hooks';
import { bucketAfter, bucketTokens, bucketWait } from '../../../lib/algorithms/token-bucket.js';
import {
  createSlidingLog,
  logAllows,
  logCount,
  logFreshAt,
  logRecord,
  logWait,
  type SlidingLogState,
} from '../../../lib/algorithms/sliding-log.js';
import {
  counterAllows,
  counterCount,
  counterFreshAt,
  counterRecord,
  counterWait,
  createSlidingCounter,
  type SlidingCounterState,
} from '../../../lib/algorithms/sliding-counter.js';
import {
  ALLOWED,
  ALLOWED_NEAR_LIMIT,
  AlgorithmKind,
  type RateLimitDecision,
  type RateLimitPlan,
  type RateLimitRejected,
  type TierSpec,
  type TierStatus,
} from '../../../lib/interfaces/plan.interface.js';
import { RateLimitStore } from '../../../lib/storage/rate-limit-store.js';

/** The old store's own plan cache (the new store uses PLAN_CACHE). */
const PLAN_CACHE: unique symbol = Symbol('per-tier-store.plan-cache');

/** Options of the embedded memory store. */
interface MemoryStoreOptions {
  /**
   * Most keys held; past it, idle keys are dropped first, then the least recently used.
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
const DEFAULT_MAX_KEYS = 100_000;

/**
 * A plan as the memory store sees it: it remembers the slots of the plan's keys in the
 * plan's cache (`createPlan` makes room for it). The next decision on that plan checks
 * that each slot still holds its key (one array read) instead of hashing and probing the
 * key table once per tier; the guard reuses a plan for every message of a connection and
 * handler. The check is by key, so a slot remembered by another store (or since given to
 * another key) is simply looked up again. (A remembered refusal would make a flood cheaper
 * still, but its `retryAfter` and `remaining` would drift from the exact figures a fresh
 * decision gives.)
 */
type BoundPlan = RateLimitPlan & { [PLAN_CACHE]?: number[] };

/**
 * The embedded store: every decision is synchronous, O(1) per tier, and allocates nothing
 * when it allows. Memory is bounded by `maxKeys`; no timer is used.
 */
export class PerTierMemoryStore extends RateLimitStore {
  private readonly table: KeyTable;
  private readonly clock: () => number;

  constructor(options: MemoryStoreOptions = {}) {
    super();
    this.table = new KeyTable(options.maxKeys ?? DEFAULT_MAX_KEYS);
    this.clock = options.clock ?? (() => performance.now());
  }

  /** Keys held now. */
  get size(): number {
    return this.table.size;
  }

  /** Keys dropped to respect `maxKeys` while their state still mattered. */
  get evictions(): number {
    return this.table.evictions;
  }

  consume(plan: RateLimitPlan): RateLimitDecision {
    const now = this.clock();
    const tiers = plan.tiers;
    const count = tiers.length;
    const table = this.table;
    const slots = this.slotsOf(plan as BoundPlan);
    let missing = 0;
    for (let i = 0; i < count; i++) {
      const tier = tiers[i]!;
      const spec = tier.spec;
      let slot = slots[i]!;
      if (slot >= 0 && table.holds(slot, tier.key)) table.touch(slot);
      else slots[i] = slot = table.find(tier.key);
      if (slot < 0) {
        // A fresh key admits any cost up to its limit, and nothing above it.
        if (spec.cost > spec.limit) return this.reject(plan, now, slots, i);
        missing++;
        continue;
      }
      switch (spec.kind) {
        case AlgorithmKind.TokenBucket:
          if (table.freshAt[slot]! - now > spec.slack) return this.reject(plan, now, slots, i);
          break;
        case AlgorithmKind.SlidingLog:
          if (!logAllows(table.objects[slot] as SlidingLogState, now, spec.windowMs, spec.cost)) {
            return this.reject(plan, now, slots, i);
          }
          break;
        case AlgorithmKind.SlidingCounter:
          if (!counterAllows(table.objects[slot] as SlidingCounterState, now, spec.windowMs, spec.limit, spec.cost)) {
            return this.reject(plan, now, slots, i);
          }
          break;
        case AlgorithmKind.Concurrency:
          if (concurrencyHeld(table.objects[slot]) + spec.cost > spec.limit) return this.reject(plan, now, slots, i);
          break;
      }
    }
    // Room for new keys is made only on the allowed path, never at the expense of this plan's.
    if (missing > 0 && table.size + missing > table.maxKeys) table.reserve(missing, now, slots, count);
    let decision: RateLimitDecision = ALLOWED;
    for (let i = 0; i < count; i++) {
      const tier = tiers[i]!;
      const spec = tier.spec;
      let slot = slots[i]!;
      if (slot < 0) slots[i] = slot = table.insert(tier.key);
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
          const log = (table.objects[slot] ??= createSlidingLog(spec.limit)) as SlidingLogState;
          logRecord(log, now, spec.cost);
          freshAt[slot] = logFreshAt(log, spec.windowMs);
          break;
        }
        case AlgorithmKind.SlidingCounter: {
          const counter = (table.objects[slot] ??= createSlidingCounter()) as SlidingCounterState;
          counterRecord(counter, now, spec.windowMs, spec.cost);
          freshAt[slot] = counterFreshAt(counter, spec.windowMs);
          break;
        }
        case AlgorithmKind.Concurrency: {
          const leases = (table.objects[slot] ??= new Map<string, number>()) as Map<string, number>;
          const lease = plan.lease ?? '';
          leases.set(lease, (leases.get(lease) ?? 0) + spec.cost);
          freshAt[slot] = Infinity;
          break;
        }
      }
      table.noteFresh(freshAt[slot]!);
    }
    return decision;
  }

  /**
   * The remembered slots of a plan's keys (-1: not known), kept in the plan's cache. A plan
   * made without `createPlan` gets the cache added (a frozen one, slots for one decision).
   */
  private slotsOf(plan: BoundPlan): number[] {
    const cached = plan[PLAN_CACHE];
    if (cached !== undefined) return cached;
    // Sized exactly (an array grown by push would reserve 17 slots).
    const slots = new Array<number>(plan.tiers.length).fill(-1);
    if (Object.isExtensible(plan)) plan[PLAN_CACHE] = slots;
    return slots;
  }

  /**
   * The rejected path: the longest wait of the tiers from `first` on (the tiers before it
   * allowed, so their wait is 0) decides. Changes no state.
   */
  private reject(plan: RateLimitPlan, now: number, slots: readonly number[], first: number): RateLimitRejected {
    let worst = -1;
    let worstWait = 0;
    let worstSlot = -1;
    const tiers = plan.tiers;
    const table = this.table;
    for (let i = first; i < tiers.length; i++) {
      const { key, spec } = tiers[i]!;
      const slot = slots[i]! >= 0 && table.holds(slots[i]!, key) ? slots[i]! : table.peek(key);
      const wait = this.wait(slot, spec, now);
      if (wait > worstWait) {
        worstWait = wait;
        worst = i;
        worstSlot = slot;
      }
    }
    const spec = tiers[worst]!.spec;
    return {
      allowed: false,
      tier: spec.tier,
      index: worst,
      retryAfter: worstWait,
      limit: spec.limit,
      remaining: this.remaining(worstSlot, spec, now),
    };
  }

  private wait(slot: number, spec: TierSpec, now: number): number {
    if (slot < 0) return spec.cost > spec.limit ? Infinity : 0;
    switch (spec.kind) {
      case AlgorithmKind.TokenBucket:
        return bucketWait(this.table.freshAt[slot]!, now, spec.slack);
      case AlgorithmKind.SlidingLog:
        return logWait(this.table.objects[slot] as SlidingLogState, now, spec.windowMs, spec.cost);
      case AlgorithmKind.SlidingCounter:
        return counterWait(this.table.objects[slot] as SlidingCounterState, now, spec.windowMs, spec.limit, spec.cost);
      case AlgorithmKind.Concurrency:
        // A lease is given back by a close, not by time; a retry in a second is a fair guess.
        return concurrencyHeld(this.table.objects[slot]) + spec.cost > spec.limit ? 1000 : 0;
    }
  }

  private remaining(slot: number, spec: TierSpec, now: number): number {
    if (slot < 0) return spec.limit;
    switch (spec.kind) {
      case AlgorithmKind.TokenBucket:
        return Math.floor(bucketTokens(this.table.freshAt[slot]!, now, spec.limit, spec.intervalMs));
      case AlgorithmKind.SlidingLog:
        return Math.max(0, spec.limit - logCount(this.table.objects[slot] as SlidingLogState, now, spec.windowMs));
      case AlgorithmKind.SlidingCounter:
        return Math.max(
          0,
          Math.floor(spec.limit - counterCount(this.table.objects[slot] as SlidingCounterState, now, spec.windowMs)),
        );
      case AlgorithmKind.Concurrency:
        return Math.max(0, spec.limit - concurrencyHeld(this.table.objects[slot]));
    }
  }

  peek(plan: RateLimitPlan): TierStatus[] {
    const now = this.clock();
    return plan.tiers.map(({ key, spec }) => {
      const slot = this.table.peek(key);
      const fresh = slot < 0 ? -Infinity : this.table.freshAt[slot]!;
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
    for (const { key, spec } of plan.tiers) {
      if (spec.kind !== AlgorithmKind.Concurrency) continue;
      const slot = this.table.peek(key);
      if (slot < 0) continue;
      const leases = this.table.objects[slot] as Map<string, number>;
      const held = (leases.get(lease) ?? 0) - spec.cost;
      if (held > 0) leases.set(lease, held);
      else leases.delete(lease);
      if (leases.size === 0) this.table.delete(key);
    }
  }

  delete(keys: readonly string[]): void {
    for (const key of keys) this.table.delete(key);
  }

  async close(): Promise<void> {
    this.table.clear();
  }
}

/** Units held by the leases of a concurrency key. */
function concurrencyHeld(leases: unknown): number {
  let held = 0;
  for (const units of (leases as Map<string, number>).values()) held += units;
  return held;
}

/**
 * String keys mapped to slots of flat columns: the state of one key is a number in
 * `freshAt` (for a token bucket, its whole state) and, for window algorithms, an object in
 * `objects`. Updating a key allocates nothing.
 *
 * `freshAt[slot]` is the time from which the key's state equals a fresh key's: such a key
 * is idle and can be dropped without changing any decision. The table holds at most
 * `maxKeys` keys. When it is full, idle keys go first: `minFreshAt`, a lower bound of every
 * key's `freshAt`, tells when some key may have become idle, and a sweep then drops every
 * idle key at once (sweeps are spaced at least `maxKeys / 64` insertions apart, so their
 * cost stays under 64 slot reads per insertion whatever the traffic). Otherwise the least
 * recently used key goes, by the CLOCK approximation. A key whose `freshAt` is `Infinity`
 * (a held lease) is never evicted. No timer is used.
 */
class KeyTable {
  private readonly index = new Map<string, number>();
  private keys: (string | undefined)[] = [];
  /** Per slot: time from which the state equals a fresh key's; `Infinity` pins the key. */
  freshAt: Float64Array;
  /** Per slot: the state object of window algorithms. */
  objects: unknown[] = [];
  private referenced: Uint8Array;
  private readonly free: number[] = [];
  private used = 0;
  private hand = 0;
  private insertsSinceSweep = 0;
  /**
   * No key is idle before this time. Writers of `freshAt` lower it (`noteFresh`); a sweep
   * sets it exactly.
   */
  minFreshAt = Infinity;
  /** Keys dropped to stay within `maxKeys` while their state still mattered. */
  evictions = 0;

  constructor(
    readonly maxKeys: number,
    initialCapacity = 1024,
  ) {
    const capacity = Math.max(16, Math.min(initialCapacity, maxKeys));
    this.freshAt = new Float64Array(capacity);
    this.referenced = new Uint8Array(capacity);
  }

  /** Keys held. */
  get size(): number {
    return this.index.size;
  }

  /** The slot of a key, or -1. Marks the key as recently used. */
  find(key: string): number {
    const slot = this.index.get(key);
    if (slot === undefined) return -1;
    this.referenced[slot] = 1;
    return slot;
  }

  /** Whether a slot still holds a key (a remembered slot may have been given to another). */
  holds(slot: number, key: string): boolean {
    return this.keys[slot] === key;
  }

  /** Marks a slot as recently used. */
  touch(slot: number): void {
    this.referenced[slot] = 1;
  }

  /** The slot of a key, without marking it used; -1 if absent. */
  peek(key: string): number {
    const slot = this.index.get(key);
    return slot === undefined ? -1 : slot;
  }

  /**
   * Makes room for `count` new keys, evicting if the table is full, but never one of the
   * `keep` slots (the ones the decision at hand uses). If nothing can go, the table grows
   * past `maxKeys` by at most `count`.
   */
  reserve(count: number, now: number, keep: ArrayLike<number>, kept: number): void {
    while (this.index.size + count > this.maxKeys && this.index.size > 0) {
      if (!this.evictOne(now, keep, kept)) return;
    }
  }

  /** Records that a slot's `freshAt` was set to `value`. */
  noteFresh(value: number): void {
    if (value < this.minFreshAt) this.minFreshAt = value;
  }

  /** Adds a key (absent, room reserved) and returns its slot; its state starts fresh. */
  insert(key: string): number {
    // Keys built by concatenation are rope strings in V8; flattening one now keeps it at
    // its plain size for the rest of its life in the table.
    key.charCodeAt(0);
    let slot = this.free.pop();
    if (slot === undefined) {
      if (this.used === this.freshAt.length) this.grow();
      slot = this.used++;
    }
    this.index.set(key, slot);
    this.keys[slot] = key;
    this.freshAt[slot] = -Infinity;
    this.referenced[slot] = 1;
    this.insertsSinceSweep++;
    return slot;
  }

  /** Removes a key if present. */
  delete(key: string): void {
    const slot = this.index.get(key);
    if (slot !== undefined) this.release(slot);
  }

  /** Removes every key. */
  clear(): void {
    this.index.clear();
    this.keys = [];
    this.objects = [];
    this.free.length = 0;
    this.used = 0;
    this.hand = 0;
    this.minFreshAt = Infinity;
  }

  private release(slot: number): void {
    this.index.delete(this.keys[slot]!);
    this.keys[slot] = undefined;
    if (this.objects[slot] !== undefined) this.objects[slot] = undefined;
    this.referenced[slot] = 0;
    this.free.push(slot);
  }

  private grow(): void {
    const capacity = this.freshAt.length * 2;
    const freshAt = new Float64Array(capacity);
    freshAt.set(this.freshAt);
    this.freshAt = freshAt;
    const referenced = new Uint8Array(capacity);
    referenced.set(this.referenced);
    this.referenced = referenced;
  }

  private evictOne(now: number, keep: ArrayLike<number>, kept: number): boolean {
    if (now >= this.minFreshAt && this.insertsSinceSweep * 64 >= this.maxKeys && this.sweepIdle(now, keep, kept) > 0) {
      return true;
    }
    // CLOCK: a referenced key gets a second chance; pinned and kept keys are skipped.
    for (let steps = 0; steps < 2 * this.used + 2; steps++) {
      const slot = this.hand;
      this.hand = this.hand + 1 >= this.used ? 0 : this.hand + 1;
      if (this.keys[slot] === undefined || isKept(slot, keep, kept)) continue;
      const fresh = this.freshAt[slot]!;
      if (fresh === Infinity) continue;
      if (fresh <= now) {
        this.release(slot);
        return true;
      }
      if (this.referenced[slot] === 1) {
        this.referenced[slot] = 0;
        continue;
      }
      this.release(slot);
      this.evictions++;
      return true;
    }
    return false;
  }

  /** Drops every idle key (but the kept ones); returns how many. Sets `minFreshAt` exactly. */
  private sweepIdle(now: number, keep: ArrayLike<number>, kept: number): number {
    this.insertsSinceSweep = 0;
    let dropped = 0;
    let min = Infinity;
    for (let slot = 0; slot < this.used; slot++) {
      if (this.keys[slot] === undefined) continue;
      const fresh = this.freshAt[slot]!;
      if (fresh <= now && !isKept(slot, keep, kept)) {
        this.release(slot);
        dropped++;
      } else if (fresh < min) {
        min = fresh;
      }
    }
    this.minFreshAt = min;
    return dropped;
  }
}

function isKept(slot: number, keep: ArrayLike<number>, kept: number): boolean {
  for (let i = 0; i < kept; i++) if (keep[i] === slot) return true;
  return false;
}
