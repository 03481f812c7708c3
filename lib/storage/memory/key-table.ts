/**
 * String keys mapped to slots of flat columns: the state of one key is a number in
 * `freshAt` (for a token bucket, its whole state) and, for window algorithms, an object in
 * `objects`. Updating a key allocates nothing.
 *
 * `freshAt[slot]` is the time from which the key's state equals a fresh key's: such a key
 * is idle and can be dropped without changing any decision. The table holds at most
 * `maxKeys` keys: idle keys are dropped first (a sweep over the table, at most once per
 * `maxKeys / 8` insertions), then the least recently used by the CLOCK approximation. A key
 * whose `freshAt` is `Infinity` (a held lease) is never evicted. No timer is used.
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

  /** The slot of a key, without marking it used; -1 if absent. */
  peek(key: string): number {
    const slot = this.index.get(key);
    return slot === undefined ? -1 : slot;
  }

  /**
   * Makes room for `count` new keys, evicting if the table is full. Call it before
   * looking keys up for a decision, so that inserting them never evicts a slot in use.
   */
  reserve(count: number, now: number): void {
    while (this.index.size + count > this.maxKeys && this.index.size > 0) {
      if (!this.evictOne(now)) return;
    }
  }

  /** Adds a key (absent, room reserved) and returns its slot; its state starts fresh. */
  insert(key: string): number {
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

  private evictOne(now: number): boolean {
    if (this.insertsSinceSweep * 8 >= this.maxKeys && this.sweepIdle(now) > 0) return true;
    // CLOCK: a referenced key gets a second chance; pinned keys are skipped.
    for (let steps = 0; steps < 2 * this.used + 2; steps++) {
      const slot = this.hand;
      this.hand = this.hand + 1 >= this.used ? 0 : this.hand + 1;
      if (this.keys[slot] === undefined) continue;
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

  /** Drops every idle key; returns how many. */
  private sweepIdle(now: number): number {
    this.insertsSinceSweep = 0;
    let dropped = 0;
    for (let slot = 0; slot < this.used; slot++) {
      if (this.keys[slot] !== undefined && this.freshAt[slot]! <= now) {
        this.release(slot);
        dropped++;
      }
    }
    return dropped;
  }
}
