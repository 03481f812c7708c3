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
export class KeyTable {
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
