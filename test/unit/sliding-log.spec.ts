import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import {
  createSlidingLog,
  logAllows,
  logCount,
  logFreshAt,
  logRecord,
  logWait,
  type SlidingLogState,
} from '../../lib/algorithms/sliding-log.js';
import { RefLog, TICKS_PER_MS, check, checkSame, fcParams, ms } from './support/exact-model.js';
import { costOf, forEachWindowFrom, steps, type Admission } from './support/schedules.js';

/** Everything a log holds, to show the read-only functions leave it as it was. */
function snapshot(log: SlidingLogState): string {
  return JSON.stringify([Array.from(log.ring), log.head, log.count]);
}

/**
 * Property tests of the exact sliding-window log (RELIABILITY C-9's algorithm, issue 2
 * item 5). Times are whole ticks of 1/8 ms, so every timestamp and comparison is exact:
 * zero tolerance everywhere, and every decision and wait is compared with a log that keeps
 * every event forever.
 */
describe('sliding-window log', () => {
  const params = fc.record({
    limit: fc.integer({ min: 1, max: 8 }),
    windowMs: fc.oneof(fc.integer({ min: 1, max: 50 }), fc.integer({ min: 51, max: 5000 })),
    startTicks: fc.integer({ min: 0, max: 80_000_000 }),
  });

  it('matches a keep-everything log; no window of length W holds more than the limit; waits are tight', () => {
    fc.assert(
      fc.property(params, steps(150), ({ limit, windowMs, startTicks }, schedule) => {
        const log = createSlidingLog(limit);
        const ref = new RefLog(limit, windowMs);
        let now = startTicks;
        let rejected: { cost: number; wait: number } | undefined;
        const admitted: Admission[] = [];

        const attempt = (cost: number): boolean => {
          const before = snapshot(log);
          const allowed = logAllows(log, ms(now), windowMs, cost);
          checkSame(allowed, ref.allows(now, cost), `allowed at ${ms(now)} ms, cost ${cost}`);
          checkSame(limit - logCount(log, ms(now), windowMs), ref.remaining(now), 'remaining');
          if (allowed) {
            checkSame(logWait(log, ms(now), windowMs, cost), 0, 'wait when allowed');
            logRecord(log, ms(now), cost);
            ref.consume(now, cost);
            admitted.push({ at: now, cost });
            rejected = undefined;
            checkSame(logFreshAt(log, windowMs), ms(now) + windowMs, 'fresh at');
            return true;
          }
          const wait = logWait(log, ms(now), windowMs, cost);
          check(Number.isInteger(wait) && wait >= 1, () => `wait ${wait} is not a whole number >= 1`);
          checkSame(wait, ref.wait(now, cost), `wait at ${ms(now)} ms, cost ${cost}`);
          check(logAllows(log, ms(now) + wait, windowMs, cost), () => `refused again after waiting ${wait} ms`);
          check(wait === 1 || !logAllows(log, ms(now) + wait - 1, windowMs, cost), () => `${wait} ms is not tight`);
          checkSame(snapshot(log), before, 'state after a rejection');
          rejected = { cost, wait };
          return false;
        };

        for (const step of schedule) {
          if (step.kind === 'advance') now += step.ticks;
          else if (step.kind === 'consume') attempt(costOf(step.pick, limit));
          else if (rejected) {
            const { cost, wait } = rejected;
            now += wait * TICKS_PER_MS;
            check(attempt(cost), () => `retry after ${wait} ms refused`);
          }
        }

        // An event at t counts while now - t < W: the windows are [a, a + W).
        forEachWindowFrom(admitted, windowMs * TICKS_PER_MS, (total, from) => {
          check(total <= limit, () => `${total} admitted in the window from ${ms(from)} ms`);
        });
      }),
      fcParams(300),
    );
  });

  it('keeps memory bounded by the limit whatever the traffic', () => {
    const log = createSlidingLog(3);
    for (let t = 0; t < 10_000; t += 7) if (logAllows(log, t, 10, 1)) logRecord(log, t, 1);
    expect(log.ring.length).toBe(3);
    expect(log.count).toBeLessThanOrEqual(3);
  });

  it('counts an event at t while now - t < W, and no longer', () => {
    const log = createSlidingLog(1);
    logRecord(log, 100, 1);
    expect(logAllows(log, 1099.875, 1000, 1)).toBe(false);
    expect(logAllows(log, 1100, 1000, 1)).toBe(true);
    expect(logWait(log, 100, 1000, 1)).toBe(1000);
    expect(logWait(log, 1099.875, 1000, 1)).toBe(1);
  });
});
