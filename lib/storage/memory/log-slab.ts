import {
  PACKED_LOG_HEADER,
  PACKED_LOG_MAX_LIMIT,
  packLog,
  packedLogMove,
  packedLogSize,
} from '../../algorithms/sliding-log.js';

/** Doubles per page of a `LogSlab`, as a shift: 4,096 doubles, 32 KiB. */
export const LOG_PAGE_SHIFT = 12;
/** `at & LOG_PAGE_MASK`: a log's offset within its page. */
export const LOG_PAGE_MASK = (1 << LOG_PAGE_SHIFT) - 1;

/**
 * Pages of `Float64Array` holding the memory store's small sliding logs, packed
 * (`packLog`: a header and a ring of `size` entries each, at most `PACKED_LOG_MAX_LIMIT`),
 * so that a tracker's log costs no object of its own: no allocation when a tracker is new,
 * nothing for the garbage collector to trace or move, and a log's state in one or two cache
 * lines.
 *
 * A log is named by one number, `at`: its page is `pages[at >>> LOG_PAGE_SHIFT]`, its
 * offset there `at & LOG_PAGE_MASK`; a log never straddles two pages. Space is handed out
 * from the end and reused per size: a freed log's doubles go to the free list of its size,
 * for the next log of that size. A log whose ring must grow moves (`grow`: a new `at`, its
 * old place freed); the slab itself grows by adding a page (32 KiB), and nothing in it is
 * copied while it grows.
 *
 * Freed space serves only logs of its size, so churn through ring sizes (windows of
 * different limits, one after the other) would leave it unused: once the slab holds more
 * than twice the doubles its logs take plus a page (`wasteful`), its owner compacts it
 * (`compact`: every log it still holds moves to fresh pages, packed from the start, and
 * the owner learns its new `at`). A compaction copies what is held, at least half as much
 * as was freed since the last one: amortized, a freed double costs one copied double. So
 * the slab holds at most about twice what its logs take at its busiest, plus a page (about
 * a page once they are all freed); `clear` gives it all back.
 */
export class LogSlab {
  /** The pages; a new one is added when the last is full. */
  readonly pages: Float64Array[] = [];
  /** The next `at` to hand out (in the last page, or at the start of the next). */
  private top = 0;
  /** Per ring size (0 to `PACKED_LOG_MAX_LIMIT`): `at` of freed logs of that size. */
  private readonly free: number[][] = Array.from({ length: PACKED_LOG_MAX_LIMIT + 1 }, () => []);

  /** Doubles held by logs handed out and not freed. */
  private used = 0;

  /** Doubles held by logs handed out and not freed (for tests and sizing). */
  get doublesInUse(): number {
    return this.used;
  }

  /** Doubles the slab holds in all (its pages). */
  get doubles(): number {
    return this.pages.length << LOG_PAGE_SHIFT;
  }

  /**
   * A fresh packed log with a ring of `size` entries (at most `PACKED_LOG_MAX_LIMIT`);
   * returns its `at`.
   */
  alloc(size: number): number {
    const doubles = PACKED_LOG_HEADER + size;
    this.used += doubles;
    let at = this.free[size]!.pop();
    if (at === undefined) {
      if ((this.top & LOG_PAGE_MASK) + doubles > LOG_PAGE_MASK + 1) {
        // The rest of this page is too short: the log starts the next one.
        this.top = ((this.top >>> LOG_PAGE_SHIFT) + 1) << LOG_PAGE_SHIFT;
      }
      if (this.top >>> LOG_PAGE_SHIFT === this.pages.length) this.pages.push(new Float64Array(LOG_PAGE_MASK + 1));
      at = this.top;
      this.top += doubles;
    }
    packLog(this.pages[at >>> LOG_PAGE_SHIFT]!, at & LOG_PAGE_MASK, size);
    return at;
  }

  /**
   * Copies the log at `at` to a new ring of `size` entries (larger than its own, at most
   * `PACKED_LOG_MAX_LIMIT`), its entries kept, and returns its new `at`. The old place is the
   * caller's to `release` (once nothing refers to it: a release may compact the slab).
   */
  copy(at: number, size: number): number {
    const to = this.alloc(size);
    packedLogMove(this.pageOf(at), at & LOG_PAGE_MASK, this.pageOf(to), to & LOG_PAGE_MASK, size);
    return to;
  }

  /** The page holding the log at `at` (its offset there: `at & LOG_PAGE_MASK`). */
  pageOf(at: number): Float64Array {
    return this.pages[at >>> LOG_PAGE_SHIFT]!;
  }

  /** Gives back the log at `at` (its size is in its header). */
  release(at: number): void {
    const size = packedLogSize(this.pageOf(at), at & LOG_PAGE_MASK);
    this.used -= PACKED_LOG_HEADER + size;
    this.free[size]!.push(at);
  }

  /**
   * Whether the slab holds more than twice the doubles its logs take, plus a page: its
   * owner should `compact` it.
   */
  get wasteful(): boolean {
    return this.pages.length << LOG_PAGE_SHIFT > 2 * this.used + LOG_PAGE_MASK + 1;
  }

  /**
   * Moves every log still held to fresh pages, packed from the start, and forgets the
   * freed space. `visit` is given `move`, which must be called once with the `at` of each
   * log the owner holds and returns where that log is now; a log not moved is freed.
   */
  compact(visit: (move: (at: number) => number) => void): void {
    const old = this.pages.splice(0);
    this.top = 0;
    this.used = 0;
    for (const list of this.free) list.length = 0;
    visit((at) => {
      const page = old[at >>> LOG_PAGE_SHIFT]!;
      const from = at & LOG_PAGE_MASK;
      const doubles = PACKED_LOG_HEADER + packedLogSize(page, from);
      const to = this.alloc(doubles - PACKED_LOG_HEADER);
      const target = this.pageOf(to);
      const offset = to & LOG_PAGE_MASK;
      for (let i = 0; i < doubles; i++) target[offset + i] = page[from + i]!;
      return to;
    });
  }

  /** Gives back every log and every page. */
  clear(): void {
    this.pages.length = 0;
    this.top = 0;
    this.used = 0;
    for (const list of this.free) list.length = 0;
  }
}
