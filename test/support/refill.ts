/**
 * Bounds for tests whose limit refills while they run. A fixed "one or two more" slack
 * fails on a loaded machine (CI once took long enough between a burst and `get_limits`
 * for a 15-a-second bucket to hold 5 tokens again). These bounds follow the clock
 * instead: still tight on an idle machine, never wrong on a slow one.
 */
export class RefillClock {
  private readonly started = performance.now();

  /** Tokens a bucket refilling `perSecond` can have gained since this clock started. */
  gained(perSecond: number): number {
    return Math.floor(((performance.now() - this.started) / 1000) * perSecond);
  }

  /**
   * The most a bucket can report as `remaining` now, if it held under one token at some
   * moment after this clock started (it refused a message then), capped at `capacity`.
   */
  remainingAtMost(perSecond: number, capacity: number): number {
    return Math.min(capacity, 1 + this.gained(perSecond));
  }
}
