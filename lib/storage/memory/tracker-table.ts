// Over 400 lines: one class, the tracker table, whose slot pages, chains, log slab and
// eviction (sweep and CLOCK) read the same columns; split, they would be read apart.
import { packedLogInitialSize, unpackedLog, type SlidingLogState } from '../../algorithms/sliding-log.js';
import { LOG_PAGE_MASK, LogSlab } from './log-slab.js';

/**
 * The memory store's state, one record per tracker. A record is a chain of tier states in
 * flat columns (one slot per tier the tracker has used, whichever plans used it), found
 * through one `Map` entry per tracker; updating a state allocates nothing.
 *
 * Per slot: three references side by side in pages (`refs`: the tracker that owns it, the
 * tier's name within it, and where its sliding log is packed in the table's `LogSlab`, a
 * log of at most `PACKED_LOG_MAX_LIMIT` entries, or else the state object of window and
 * concurrency tiers), then in typed columns `freshAt` (a token bucket's whole state; for
 * the other algorithms the time from which the state equals a fresh one), the next slot
 * of the same tracker, and a flags byte (head of its chain, recently used, holds a state
 * reference).
 *
 * Bounds: the table holds at most `maxKeys` tier states (slots), and makes room by dropping
 * whole trackers: idle trackers first (every state fresh again; `minFreshAt`, a lower bound
 * of every slot's `freshAt`, tells when one may be, and a sweep then drops every idle
 * tracker at once; sweeps are spaced at least `maxKeys / 64` insertions apart), otherwise
 * the least recently used tracker, by the CLOCK approximation (a new tracker unmarked: only a
 * use after the decision that made it earns its second chance). A tracker holding a lease
 * (`freshAt` Infinity) is never evicted, nor the tracker of the decision at hand. No timer.
 */
export class TrackerTable {
  /** Tracker -> head slot of its chain. */
  private readonly index = new Map<string, number>();
  /**
   * The slots' references, in pages of `REF_PAGE_SLOTS` slots, `REFS_PER_SLOT` entries per
   * slot (see `TRACKER`, `ID`, `STATE`), side by side: a decision reads one cache line of
   * them per slot, and the table grows by adding a page, never by copying (growing three
   * arrays by copying was half a new tracker's first decision: the copies, and the garbage
   * the old arrays leave for the old generation's collector).
   *
   * - `TRACKER`: the tracker owning the slot (`undefined`: free).
   * - `ID`: what names its tier within the tracker: the tier's suffix (a string every
   *   tracker shares) when the plan's key is `key(tracker, suffix)`, as `createPlan` makes
   *   it; for a plan made by hand with another key, that key's `OwnKey` (an object, so no
   *   suffix can name it: two keys are two states).
   * - `STATE`: the state of window and concurrency tiers: an object, or, for a sliding log
   *   packed in `logs`, where it is there (a number: the slot costs no object).
   */
  private refs: unknown[][] = [];
  /** Per slot: time from which the state equals a fresh one; `Infinity` pins the tracker. */
  freshAt: Float64Array;
  /** The packed sliding logs of every slot. */
  readonly logs = new LogSlab();
  /** Per slot: the next slot of the same tracker, or -1. */
  private next: Int32Array;
  /** Per slot: HEAD | USED bits. */
  private flags: Uint8Array;
  /** The keys of plans made by hand that are not `key(tracker, suffix)`, held by some slot. */
  private readonly owned = new Map<string, OwnKey>();
  private readonly free: number[] = [];
  private used = 0;
  private held = 0;
  private hand = 0;
  private insertsSinceSweep = 0;
  /**
   * No tracker is idle before this time: writers of `freshAt` lower it, a sweep sets it to
   * the earliest time a held tracker becomes idle.
   */
  minFreshAt = Infinity;
  /** Tier states dropped to stay within `maxKeys` while they still mattered. */
  evictions = 0;
  /** Told once, the first time states that still mattered are dropped (see `MemoryRateLimitStore.onFirstEviction`). */
  firstEviction: (() => void) | undefined;

  constructor(
    readonly maxKeys: number,
    initialCapacity = 1024,
  ) {
    const capacity = Math.max(16, Math.min(initialCapacity, maxKeys));
    this.freshAt = new Float64Array(capacity);
    this.next = new Int32Array(capacity);
    this.flags = new Uint8Array(capacity);
  }

  /** Tier states held (slots in use). */
  get size(): number {
    return this.held;
  }

  /** Trackers held. */
  get trackerCount(): number {
    return this.index.size;
  }

  /** Slots ever handed out (free or in use): slots below it may be read. */
  get slotCount(): number {
    return this.used;
  }

  /**
   * Whether `slot` holds the state of a tier of `tracker` (a remembered slot may not);
   * `name` is what names the tier in the table (see `refs`, `ownKey`).
   */
  holds(slot: number, tracker: string, name: unknown): boolean {
    const page = this.refs[slot >>> REF_PAGE_SHIFT];
    if (page === undefined) return false;
    const at = (slot & REF_PAGE_MASK) * REFS_PER_SLOT;
    return page[at + ID] === name && page[at + TRACKER] === tracker;
  }

  /**
   * What names the tier of a plan made by hand whose key is not `key(tracker, suffix)`:
   * its key's `OwnKey`, or `undefined` when no tracker holds a state under that key.
   */
  ownKey(key: string): OwnKey | undefined {
    return this.owned.get(key);
  }

  /** The state object of a slot, or where its packed log is (a number), or `undefined`. */
  stateOf(slot: number): unknown {
    return this.refs[slot >>> REF_PAGE_SHIFT]![(slot & REF_PAGE_MASK) * REFS_PER_SLOT + STATE];
  }

  /** Sets the state of a slot (see `stateOf`); returns it. */
  setState<T>(slot: number, state: T): T {
    this.refs[slot >>> REF_PAGE_SHIFT]![(slot & REF_PAGE_MASK) * REFS_PER_SLOT + STATE] = state;
    if (state === undefined) this.flags[slot]! &= ~HAS_STATE;
    else this.flags[slot]! |= HAS_STATE;
    return state;
  }

  /**
   * Whether a slot holds a state object or packed log (`stateOf` is not `undefined`): a
   * token bucket's state is its `freshAt` alone, so a bucket finding one finds another
   * algorithm's state. Read from the flags (see `touch`), not the references.
   */
  hasState(slot: number): boolean {
    return (this.flags[slot]! & HAS_STATE) !== 0;
  }

  /** The tracker owning a slot (below `slotCount`), or `undefined` (free). */
  trackerOf(slot: number): string | undefined {
    return this.refs[slot >>> REF_PAGE_SHIFT]![(slot & REF_PAGE_MASK) * REFS_PER_SLOT + TRACKER] as string | undefined;
  }

  /** What names a slot's tier within its tracker (see `refs`), or `undefined` (free). */
  idOf(slot: number): unknown {
    return this.refs[slot >>> REF_PAGE_SHIFT]![(slot & REF_PAGE_MASK) * REFS_PER_SLOT + ID];
  }

  /**
   * Marks a slot (and so its tracker) as recently used; returns its flags (`HAS_STATE`, see
   * `hasState`, read at no further cost).
   */
  touch(slot: number): number {
    return (this.flags[slot]! |= USED);
  }

  /** The head slot of a tracker, or -1. */
  head(tracker: string): number {
    const head = this.index.get(tracker);
    return head === undefined ? -1 : head;
  }

  /** The slot of the tier `name` names in the chain starting at `head` (-1 for none), or -1. */
  find(head: number, name: unknown): number {
    if (name === undefined) return -1;
    for (let slot = head; slot >= 0; slot = this.next[slot]!) {
      if (this.idOf(slot) === name) return slot;
    }
    return -1;
  }

  /**
   * Makes room for `count` new slots, evicting whole trackers if the table is full, but
   * never the tracker whose chain starts at `keep`. If nothing can go, the table grows past
   * `maxKeys` by at most `count`.
   */
  reserve(count: number, now: number, keep: number): void {
    while (this.held + count > this.maxKeys && this.held > 0) {
      if (!this.evictOne(now, keep)) return;
    }
  }

  /** Records that a slot's `freshAt` was set to `value`. */
  noteFresh(value: number): void {
    if (value < this.minFreshAt) this.minFreshAt = value;
  }

  /**
   * Adds the state of a tier to `tracker` (absent, room reserved) and returns its slot;
   * `head` is the tracker's head slot, -1 for a new tracker. The tier is named by `name`:
   * its suffix, or with `own`, its plan's key (see `refs`). The state starts fresh.
   */
  insert(tracker: string, name: string, own: boolean, head: number): number {
    let slot = this.free.pop();
    if (slot === undefined) {
      if (this.used === this.freshAt.length) this.grow();
      if (this.used >>> REF_PAGE_SHIFT === this.refs.length) this.refs.push(refPage());
      slot = this.used++;
    }
    const page = this.refs[slot >>> REF_PAGE_SHIFT]!;
    const at = (slot & REF_PAGE_MASK) * REFS_PER_SLOT;
    page[at + TRACKER] = tracker;
    if (own) {
      let id = this.owned.get(name);
      if (id === undefined) {
        name.charCodeAt(0); // see below
        this.owned.set(name, (id = new OwnKey(name)));
      }
      id.trackers.add(tracker);
      page[at + ID] = id;
    } else {
      page[at + ID] = name;
    }
    page[at + STATE] = undefined;
    this.freshAt[slot] = -Infinity;
    if (head < 0) {
      // Strings built by concatenation are ropes in V8: flattened once, they keep their
      // plain size for as long as the table holds them.
      tracker.charCodeAt(0);
      this.index.set(tracker, slot);
      this.next[slot] = -1;
      this.flags[slot] = HEAD;
    } else {
      this.next[slot] = this.next[head]!;
      this.next[head] = slot;
      this.flags[slot] = 0;
    }
    // Not marked used: a tracker earns its second chance by a use after the decision that
    // made its states (`touch`), so a flood of one-off trackers goes before the trackers in
    // use, whatever the order they came in (a tracker in use adding a state is marked by the
    // states of its that the same decision touches).
    this.held++;
    this.insertsSinceSweep++;
    return slot;
  }

  /**
   * Gives `slot` a fresh sliding log for a window of `limit` events packed in `logs` and
   * returns where it is (see `LogSlab`).
   */
  packLog(slot: number, limit: number): number {
    return this.setState(slot, this.logs.alloc(packedLogInitialSize(limit)));
  }

  /**
   * Replaces the state of a slot (a tier decided under another algorithm than the one that
   * made its state, or a packed log moving to an object), freeing a packed log it held.
   */
  replaceState<T>(slot: number, state: T): T {
    const old = this.stateOf(slot);
    this.setState(slot, state);
    if (typeof old === 'number') this.releaseLog(old);
    return state;
  }

  /**
   * Moves the packed log of `slot` into a `SlidingLogState` for a window of `limit` events
   * (more than a packed log takes, or not whole); returns it.
   */
  unpackLog(slot: number, limit: number): SlidingLogState {
    const at = this.stateOf(slot) as number;
    return this.replaceState(slot, unpackedLog(this.logs.pageOf(at), at & LOG_PAGE_MASK, limit));
  }

  /** Moves the packed log of `slot` to a ring of `size` entries; returns where it is now. */
  growLog(slot: number, size: number): number {
    const from = this.stateOf(slot) as number;
    this.setState(slot, this.logs.copy(from, size));
    this.releaseLog(from);
    // The release may have compacted the slab: the log may have moved again.
    return this.stateOf(slot) as number;
  }

  /**
   * Removes the state of the tier `name` names (see `holds`) from `tracker`, if held; a
   * tracker left with none is forgotten.
   */
  delete(tracker: string, name: unknown): void {
    const head = this.head(tracker);
    let previous = -1;
    for (let slot = head; slot >= 0; previous = slot, slot = this.next[slot]!) {
      if (this.idOf(slot) !== name) continue;
      const after = this.next[slot]!;
      if (previous >= 0) this.next[previous] = after;
      else if (after >= 0) {
        this.index.set(tracker, after);
        this.flags[after]! |= HEAD | (this.flags[slot]! & USED);
      } else this.index.delete(tracker);
      this.releaseSlot(slot);
      // The tracker may be idle sooner now (a lease given back unpins it): sweeps must see it.
      const rest = previous >= 0 ? head : after;
      if (rest >= 0) this.noteFresh(this.freshOf(rest));
      return;
    }
  }

  /** Forgets every state held under a key of a plan made by hand (see `ownKey`), whichever tracker holds it. */
  deleteOwnKey(key: string): void {
    const id = this.owned.get(key);
    if (id === undefined) return;
    for (const tracker of [...id.trackers]) this.delete(tracker, id);
  }

  /** Removes a tracker and every state it holds. */
  deleteTracker(tracker: string): void {
    const head = this.head(tracker);
    if (head >= 0) this.dropChain(head);
  }

  /** The latest `freshAt` of a tracker's chain: from then on the whole tracker is idle. */
  freshOf(head: number): number {
    let fresh = -Infinity;
    for (let slot = head; slot >= 0; slot = this.next[slot]!) {
      if (this.freshAt[slot]! > fresh) fresh = this.freshAt[slot]!;
    }
    return fresh;
  }

  /** Removes every tracker. */
  clear(): void {
    this.index.clear();
    this.owned.clear();
    this.refs = [];
    this.logs.clear();
    this.free.length = 0;
    this.used = 0;
    this.held = 0;
    this.hand = 0;
    this.minFreshAt = Infinity;
  }

  private releaseSlot(slot: number): void {
    const page = this.refs[slot >>> REF_PAGE_SHIFT]!;
    const at = (slot & REF_PAGE_MASK) * REFS_PER_SLOT;
    const state = page[at + STATE];
    const id = page[at + ID];
    if (id instanceof OwnKey) {
      id.trackers.delete(page[at + TRACKER] as string);
      if (id.trackers.size === 0) this.owned.delete(id.key);
    }
    page[at + TRACKER] = page[at + ID] = page[at + STATE] = undefined;
    this.flags[slot] = 0;
    this.free.push(slot);
    this.held--;
    if (typeof state === 'number') this.releaseLog(state);
  }

  /**
   * Gives back a packed log no slot refers to any more, then compacts the slab if it holds
   * far more than its logs take (see `LogSlab`): every slot's packed log moves.
   */
  private releaseLog(at: number): void {
    const logs = this.logs;
    logs.release(at);
    if (!logs.wasteful) return;
    logs.compact((move) => {
      for (let slot = 0; slot < this.used; slot++) {
        const page = this.refs[slot >>> REF_PAGE_SHIFT]!;
        const state = (slot & REF_PAGE_MASK) * REFS_PER_SLOT + STATE;
        if (typeof page[state] === 'number') page[state] = move(page[state]);
      }
    });
  }

  /** Drops a whole chain; returns how many of its states still mattered at `now`. */
  private dropChain(head: number, now = Infinity): number {
    this.index.delete(this.trackerOf(head)!);
    const free = this.free;
    const from = free.length;
    let live = 0;
    for (let slot = head; slot >= 0;) {
      const after = this.next[slot]!;
      if (this.freshAt[slot]! > now) live++;
      this.releaseSlot(slot);
      slot = after;
    }
    // The chain's slots, highest first: the next tracker inserted takes them back in
    // ascending order, so a plan of as many tiers finds them consecutive (its cache is
    // then one number, see `MemoryRateLimitStore`).
    for (let i = from + 1; i < free.length; i++) {
      const slot = free[i]!;
      let j = i;
      for (; j > from && free[j - 1]! < slot; j--) free[j] = free[j - 1]!;
      free[j] = slot;
    }
    return live;
  }

  private grow(): void {
    const capacity = this.freshAt.length * 2;
    const freshAt = new Float64Array(capacity);
    freshAt.set(this.freshAt);
    this.freshAt = freshAt;
    const next = new Int32Array(capacity);
    next.set(this.next);
    this.next = next;
    const flags = new Uint8Array(capacity);
    flags.set(this.flags);
    this.flags = flags;
  }

  /** Whether any slot of a chain was used since the hand last passed; clears the marks. */
  private usedSince(head: number): boolean {
    let used = false;
    for (let slot = head; slot >= 0; slot = this.next[slot]!) {
      if ((this.flags[slot]! & USED) !== 0) {
        used = true;
        this.flags[slot]! &= ~USED;
      }
    }
    return used;
  }

  private evictOne(now: number, keep: number): boolean {
    if (now >= this.minFreshAt && this.insertsSinceSweep * 64 >= this.maxKeys && this.sweepIdle(now, keep) > 0) {
      return true;
    }
    // CLOCK over chain heads: a used tracker gets a second chance; pinned and kept ones are skipped.
    for (let steps = 0; steps < 2 * this.used + 2; steps++) {
      const slot = this.hand;
      this.hand = this.hand + 1 >= this.used ? 0 : this.hand + 1;
      if ((this.flags[slot]! & HEAD) === 0 || slot === keep) continue;
      const fresh = this.freshOf(slot);
      if (fresh === Infinity) continue;
      if (fresh <= now) {
        this.dropChain(slot);
        return true;
      }
      if (this.usedSince(slot)) continue;
      this.evictions += this.dropChain(slot, now);
      if (this.firstEviction !== undefined && this.evictions > 0) {
        const told = this.firstEviction;
        this.firstEviction = undefined;
        told();
      }
      return true;
    }
    return false;
  }

  /** Drops every idle tracker (but the kept one); returns how many. Sets `minFreshAt` exactly. */
  private sweepIdle(now: number, keep: number): number {
    this.insertsSinceSweep = 0;
    let dropped = 0;
    let min = Infinity;
    for (let slot = 0; slot < this.used; slot++) {
      if ((this.flags[slot]! & HEAD) === 0) continue;
      const fresh = this.freshOf(slot);
      if (slot !== keep && fresh <= now) {
        this.dropChain(slot);
        dropped++;
      } else if (fresh < min) {
        min = fresh;
      }
    }
    this.minFreshAt = min;
    return dropped;
  }
}

/** Slots per page of `TrackerTable.refs`, as a shift: 1,024 slots (12 KiB of references). */
const REF_PAGE_SHIFT = 10;
const REF_PAGE_MASK = (1 << REF_PAGE_SHIFT) - 1;
/** Entries per slot in a page of references, and where each is. */
const REFS_PER_SLOT = 3;
const TRACKER = 0;
const ID = 1;
const STATE = 2;

/**
 * A page of references, every entry `undefined`: each page is made the same way, so that
 * they all have one elements kind and the table's loads stay monomorphic.
 */
function refPage(): unknown[] {
  return new Array<unknown>(REFS_PER_SLOT << REF_PAGE_SHIFT).fill(undefined);
}

/**
 * What names a tier whose plan (made by hand) keys it with a key other than
 * `key(tracker, suffix)`: one per such key, shared by the trackers holding a state under it
 * (`trackers`, so that `delete(keys)` finds them from the key alone).
 */
export class OwnKey {
  readonly trackers = new Set<string>();
  constructor(readonly key: string) {}
}

/** Flag: the slot heads its tracker's chain. */
const HEAD = 1;
/** Flag: the slot was used since the CLOCK hand last passed its tracker. */
const USED = 2;
/** Flag: the slot's `STATE` reference is not `undefined` (see `TrackerTable.hasState`). */
export const HAS_STATE = 4;

/** Whether `key` is `RateLimitStore.key(tracker, suffix)`: `<tracker length>:<tracker>|<suffix>`. */
export function isKeyOf(key: string, tracker: string, suffix: string): boolean {
  const colon = key.length - suffix.length - tracker.length - 2;
  if (colon < 1 || key.charCodeAt(colon) !== 58 /* : */ || key.charCodeAt(colon + 1 + tracker.length) !== 124 /* | */) {
    return false;
  }
  // The length exactly as `key` writes it: `01:` or `+1:` names no tracker of length 1.
  const length = String(tracker.length);
  return (
    colon === length.length && key.startsWith(length) && key.startsWith(tracker, colon + 1) && key.endsWith(suffix)
  );
}
