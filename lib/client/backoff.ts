/**
 * Exponential back-off with full jitter: a whole number of milliseconds drawn uniformly
 * from [0, min(capMs, baseMs * 2^attempt)).
 *
 * Full jitter spreads the reconnects of many clients cut off at once (a server restart)
 * over the whole window instead of synchronising them.
 */
export function fullJitterDelay(attempt: number, baseMs: number, capMs: number, random: () => number): number {
  // 2 ** attempt overflows to Infinity for large attempts; min() then picks the cap.
  const ceiling = Math.min(capMs, baseMs * 2 ** attempt);
  const r = random();
  const unit = Number.isFinite(r) ? Math.min(Math.max(r, 0), 1) : 0;
  return Math.floor(unit * ceiling);
}
