import { PACKED_LOG_HEADER, PACKED_LOG_MAX_LIMIT, packLog } from '../../algorithms/sliding-log.js';

/** Doubles per page of a `LogSlab`, as a shift: 4,096 doubles, 32 KiB. */
export const LOG_PAGE_SHIFT = 12;
/** `at & LOG_PAGE_MASK`: a log's offset within its page. */
export const LOG_PAGE_MASK = (1 << LOG_PAGE_SHIFT) - 1;

/**
 * Pages of `Float64Array` holding the memory store's small sliding logs, packed
 * (`packLog`: a header and `limit` entries each), so that a tracker's log costs no object
 * of its own: no allocation when a tracker is new, nothing for the garbage collector to
 * trace or move, and a log's state in one or two cache lines.
 *
 * A log is named by one number, `at`: its page is `pages[at >>> LOG_PAGE_SHIFT]`, its
 * offset there `at & LOG_PAGE_MASK`; a log never straddles two pages. Space is handed out
 * from the end and reused per size: a freed log's doubles go to the free list of its limit,
 * for the next log of that limit. Growing adds a page (32 KiB, from the allocator's free
 * lists once it has had one): nothing is copied, no log moves. The slab never holds more
 * than the logs alive at its busiest, plus the end of their last page; `clear` gives it
 * all back.
 */
export class LogSlab {
  /** The pages; a new one is added when the last is full. */
  readonly pages: Float64Array[] = [];
  /** The next `at` to hand out (in the last page, or at the start of the next). */
  private top = 0;
  /** Per limit (0 to `PACKED_LOG_MAX_LIMIT`): `at` of freed logs of that limit. */
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

  /** A fresh packed log of `limit` entries (at most `PACKED_LOG_MAX_LIMIT`); returns its `at`. */
  alloc(limit: number): number {
    const size = PACKED_LOG_HEADER + limit;
    this.used += size;
    let at = this.free[limit]!.pop();
    if (at === undefined) {
      if ((this.top & LOG_PAGE_MASK) + size > LOG_PAGE_MASK + 1) {
        // The rest of this page is too short: the log starts the next one.
        this.top = ((this.top >>> LOG_PAGE_SHIFT) + 1) << LOG_PAGE_SHIFT;
      }
      if (this.top >>> LOG_PAGE_SHIFT === this.pages.length) this.pages.push(new Float64Array(LOG_PAGE_MASK + 1));
      at = this.top;
      this.top += size;
    }
    packLog(this.pages[at >>> LOG_PAGE_SHIFT]!, at & LOG_PAGE_MASK, limit);
    return at;
  }

  /** The page holding the log at `at` (its offset there: `at & LOG_PAGE_MASK`). */
  pageOf(at: number): Float64Array {
    return this.pages[at >>> LOG_PAGE_SHIFT]!;
  }

  /** Gives back the log at `at` (its limit is in its header). */
  release(at: number): void {
    const limit = this.pageOf(at)[(at & LOG_PAGE_MASK) + 2]!;
    this.used -= PACKED_LOG_HEADER + limit;
    this.free[limit]!.push(at);
  }

  /** Gives back every log and every page. */
  clear(): void {
    this.pages.length = 0;
    this.top = 0;
    this.used = 0;
    for (const list of this.free) list.length = 0;
  }
}
