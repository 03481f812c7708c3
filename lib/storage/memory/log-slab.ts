import { PACKED_LOG_HEADER, PACKED_LOG_MAX_LIMIT, packLog } from '../../algorithms/sliding-log.js';

/**
 * One `Float64Array` holding the memory store's small sliding logs, packed
 * (`packLog`: a header and `limit` entries each), so that a tracker's log costs no object
 * of its own: no allocation when a tracker is new, nothing for the garbage collector to
 * trace or move, and a log's state in one or two cache lines.
 *
 * Space is handed out from the end and reused per size: a freed log's doubles go to the
 * free list of its limit, for the next log of that limit. The slab doubles when it is full
 * (copied once; readers re-read `slab` after `alloc`). It never holds more than the logs
 * alive at its busiest, rounded up to a power of two; `clear` gives it all back.
 */
export class LogSlab {
  /** The packed logs; replaced when it grows. */
  slab: Float64Array;
  /** First double never handed out. */
  private top = 0;
  /** Per limit (0 to `PACKED_LOG_MAX_LIMIT`): offsets of freed logs of that limit. */
  private readonly free: number[][] = freeLists();

  constructor(private readonly initialDoubles = 1024) {
    this.slab = new Float64Array(initialDoubles);
  }

  /** Doubles handed out and not freed (for tests and sizing). */
  get doublesInUse(): number {
    let freed = 0;
    this.free.forEach((list, limit) => (freed += list.length * (PACKED_LOG_HEADER + limit)));
    return this.top - freed;
  }

  /** A fresh packed log of `limit` entries (at most `PACKED_LOG_MAX_LIMIT`); returns its offset in `slab`. */
  alloc(limit: number): number {
    let at = this.free[limit]!.pop();
    if (at === undefined) {
      const size = PACKED_LOG_HEADER + limit;
      if (this.top + size > this.slab.length) this.grow(this.top + size);
      at = this.top;
      this.top += size;
    }
    packLog(this.slab, at, limit);
    return at;
  }

  /** Gives back the log at `at` (its limit is in its header). */
  release(at: number): void {
    const limit = this.slab[at + 2]!;
    this.free[limit]!.push(at);
  }

  /** Gives back every log. */
  clear(): void {
    this.slab = new Float64Array(this.initialDoubles);
    this.top = 0;
    for (const list of this.free) list.length = 0;
  }

  private grow(needed: number): void {
    let length = this.slab.length * 2;
    while (length < needed) length *= 2;
    const slab = new Float64Array(length);
    slab.set(this.slab.subarray(0, this.top));
    this.slab = slab;
  }
}

function freeLists(): number[][] {
  return Array.from({ length: PACKED_LOG_MAX_LIMIT + 1 }, () => []);
}
