import { performance } from 'node:perf_hooks';

/** A block as held here: its wall-clock end, and that end on this process's monotonic clock. */
export interface Held {
  /** Ms since the epoch (what instances share, and `listBlocks` shows). */
  readonly until: number;
  /** `performance.now()` at which it ends, fixed when this process learned `until`. */
  readonly endsAt: number;
}

/**
 * Trackers and addresses blocked by an operator, by name (`ip:<key>` or `key:<name>`), each
 * until a wall-clock time (ms since the epoch, so that instances agree on it). Expired
 * entries are dropped when read; no timer is used.
 *
 * Enforced on the monotonic clock (RELIABILITY.md C-29): the wall-clock end is turned into a
 * `performance.now()` deadline once, when this process learns it (set here, or a new end read
 * from the shared store), and kept while the end stays the same. A wall-clock step afterwards
 * (NTP, a VM resumed) neither stretches a 2 s block into an hour's lockout nor lifts a 10 min
 * block early; a block set by another instance whose clock is off is off by that much (C-28).
 * A block that ended is kept (as ended) while the shared store still lists it, so that a
 * backward step of the wall clock does not take it up again as new; it goes when the store
 * drops it. Without a shared store (no `replace`), an ended block is dropped when read.
 */
export class Blocks {
  private entries = new Map<string, Held>();
  /** A shared store lists the blocks (`replace` ran): ended entries wait for it to drop them. */
  private shared = false;

  /** Names blocked now (an upper bound: some may have expired). */
  get size(): number {
    return this.entries.size;
  }

  /** A block set here (`block`): its deadline counts from now, whatever was held before. */
  set(name: string, until: number): void {
    this.entries.set(name, { until, endsAt: performance.now() + (until - Date.now()) });
  }

  /** A name's entry as held (deadline included), for `restore`. */
  snapshot(name: string): Held | undefined {
    return this.entries.get(name);
  }

  /** Puts back an entry taken with `snapshot` (undefined: none), as it was. */
  restore(name: string, held: Held | undefined): void {
    if (held === undefined) this.entries.delete(name);
    else this.entries.set(name, held);
  }

  delete(name: string): void {
    this.entries.delete(name);
  }

  /** Milliseconds left on a name's block (whole, at least 1), 0 when it is not blocked. */
  remaining(name: string): number {
    const held = this.entries.get(name);
    if (held === undefined) return 0;
    const left = held.endsAt - performance.now();
    if (left <= 0) {
      if (!this.shared) this.entries.delete(name);
      return 0;
    }
    return Math.ceil(left);
  }

  /**
   * Replaces every entry (from a shared store, which may list ended blocks); an end already
   * held keeps its deadline, ended or not.
   */
  replace(entries: Readonly<Record<string, number>>): void {
    this.shared = true;
    const next = new Map<string, Held>();
    for (const [name, until] of Object.entries(entries)) next.set(name, this.held(name, until));
    this.entries = next;
  }

  /** The live blocks, as name -> wall-clock end. */
  list(): Record<string, number> {
    const now = performance.now();
    const live: Record<string, number> = {};
    for (const [name, held] of this.entries) if (held.endsAt > now) live[name] = held.until;
    return live;
  }

  /** The entry of `name` ending at `until` read from the store: the one held when the end is the same. */
  private held(name: string, until: number): Held {
    const held = this.entries.get(name);
    if (held !== undefined && held.until === until) return held;
    return { until, endsAt: performance.now() + (until - Date.now()) };
  }
}
