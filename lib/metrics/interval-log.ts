import { performance } from 'node:perf_hooks';

/**
 * At most one debug line about what clients cause (violations, frames a custom parser
 * throws on) per this many milliseconds, with the count of those left out: a flood, or
 * shadow mode, where nothing closes the offender, would otherwise write one line per
 * rejected message.
 */
export const VIOLATION_LOG_INTERVAL_MS = 10_000;

/**
 * A log line a client can cause, bounded: at most one line per `intervalMs`, and the next
 * line written says how many were left out since the one before. Nothing is kept but a
 * time and a count; no timer runs (a count left at the end of a burst is only reported
 * with the next line).
 */
export class IntervalLog {
  private nextAt = Number.NEGATIVE_INFINITY;
  private skipped = 0;

  constructor(
    readonly intervalMs: number,
    private readonly write: (line: string) => void,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /**
   * Writes the line `make` builds if none was written in the last interval; otherwise only
   * counts it (`make` is not called, so a dropped line costs no formatting).
   */
  note(make: () => string): void {
    const now = this.now();
    if (now < this.nextAt) {
      this.skipped++;
      return;
    }
    this.nextAt = now + this.intervalMs;
    const skipped = this.skipped;
    this.skipped = 0;
    this.write(skipped === 0 ? make() : `${make()} (and ${skipped} more since the previous line, not logged)`);
  }
}
