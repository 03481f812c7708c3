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
 * old place freed); the slab itself grows by adding a page (32 KiB, from the allocator's
 * free lists once it has had one), and nothing in it is copied. The slab never holds more
 * than the logs alive at its busiest, plus the end of their last page; `clear` gives it
 * all back.
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
   * Moves the log at `at` to a ring of `size` entries (larger than its own, at most
   * `PACKED_LOG_MAX_LIMIT`), its entries kept; frees its old place and returns its new `at`.
   */
  grow(at: number, size: number): number {
    const to = this.alloc(size);
    packedLogMove(this.pageOf(at), at & LOG_PAGE_MASK, this.pageOf(to), to & LOG_PAGE_MASK, size);
    this.release(at);
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

  /** Gives back every log and every page. */
  clear(): void {
    this.pages.length = 0;
    this.top = 0;
    this.used = 0;
    for (const list of this.free) list.length = 0;
  }
}
