import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import {
  LOG_INITIAL_SLOTS,
  createSlidingLog,
  logAllows,
  logCount,
  logFreshAt,
  logRecord,
  logWait,
  PACKED_LOG_HEADER,
  PACKED_LOG_MAX_LIMIT,
  packLog,
  packedLogAllows,
  packedLogCount,
  packedLogFreshAt,
  packedLogInitialSize,
  packedLogMove,
  packedLogRecord,
  packedLogRoom,
  packedLogSize,
  packedLogWait,
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
    // Past 8 (LOG_INITIAL_SLOTS) the ring grows with use.
    limit: fc.oneof(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 9, max: 40 })),
    /** Whether recordings pass the window, so a full ring drops expired entries before growing. */
    trims: fc.boolean(),
    windowMs: fc.oneof(fc.integer({ min: 1, max: 50 }), fc.integer({ min: 51, max: 5000 })),
    startTicks: fc.integer({ min: 0, max: 80_000_000 }),
  });

  it('matches a keep-everything log; no window of length W holds more than the limit; waits are tight', () => {
    fc.assert(
      fc.property(params, steps(150), ({ limit, trims, windowMs, startTicks }, schedule) => {
        const log = createSlidingLog(limit);
        // The same log packed in a slab, among doubles it must never touch (-7). It starts with
        // a small ring and moves further along when its ring must grow; its old place is
        // marked free (-7) again, as a LogSlab would hand it to another log.
        const slab = new Float64Array(400).fill(-7);
        let at = 5;
        packLog(slab, at, packedLogInitialSize(limit));
        const outsideTouched = (): number =>
          slab.findIndex((x, i) => x !== -7 && (i < at || i >= at + PACKED_LOG_HEADER + packedLogSize(slab, at)));
        let moves = 0;
        const ref = new RefLog(limit, windowMs);
        let now = startTicks;
        let rejected: { cost: number; wait: number } | undefined;
        const admitted: Admission[] = [];

        const attempt = (cost: number): boolean => {
          const before = snapshot(log);
          const allowed = logAllows(log, ms(now), windowMs, cost);
          checkSame(allowed, ref.allows(now, cost), `allowed at ${ms(now)} ms, cost ${cost}`);
          checkSame(limit - logCount(log, ms(now), windowMs), ref.remaining(now), 'remaining');
          const window = { windowMs, limit, cost };
          checkSame(packedLogAllows(slab, at, ms(now), window), allowed, 'packed: allowed');
          checkSame(packedLogCount(slab, at, ms(now), windowMs), logCount(log, ms(now), windowMs), 'packed: count');
          checkSame(packedLogWait(slab, at, ms(now), window), logWait(log, ms(now), windowMs, cost), 'packed: wait');
          if (allowed) {
            checkSame(logWait(log, ms(now), windowMs, cost), 0, 'wait when allowed');
            logRecord(log, ms(now), cost, trims ? windowMs : undefined);
            const size = packedLogRoom(slab, at, ms(now), trims ? window : { ...window, windowMs: Infinity });
            if (size !== packedLogSize(slab, at)) {
              // Up to the largest limit a packed log may be decided under (another plan's), not this one's.
              const cap = Math.max(limit, PACKED_LOG_MAX_LIMIT);
              check(size > packedLogSize(slab, at) && size <= cap, () => `ring of ${size} for limit ${limit}`);
              const to = at + PACKED_LOG_HEADER + packedLogSize(slab, at) + 2;
              packedLogMove(slab, at, slab, to, size);
              slab.fill(-7, at, to);
              at = to;
              moves++;
            }
            packedLogRecord(slab, at, ms(now), window);
            checkSame(packedLogFreshAt(slab, at, windowMs), logFreshAt(log, windowMs), 'packed: fresh at');
            checkSame(outsideTouched(), -1, 'packed: a double outside the log written');
            check(moves <= 4, () => `the packed log moved ${moves} times`);
            check(log.count <= limit && log.ring.length <= limit, () => `ring ${log.ring.length} past limit ${limit}`);
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

  it('grows with use instead of allocating `limit` slots (max 1e6 is not 8 MB)', () => {
    const log = createSlidingLog(1_000_000);
    expect(log.ring.length).toBe(LOG_INITIAL_SLOTS);
    for (let i = 0; i < 100; i++) logRecord(log, i, 1, 60_000);
    expect(log.ring.length).toBe(128);
    expect(logCount(log, 99, 60_000)).toBe(100);
    // Steady traffic of 10 events per window: expired entries make room, the ring stays small.
    const steady = createSlidingLog(1_000_000);
    for (let t = 0; t < 100_000; t += 100) {
      expect(logAllows(steady, t, 1000, 1)).toBe(true);
      logRecord(steady, t, 1, 1000);
    }
    expect(steady.ring.length).toBeLessThanOrEqual(16);
    expect(logCount(steady, 99_900, 1000)).toBe(10);
    // Never past the limit: a log of 20 holds 20 slots at most.
    const capped = createSlidingLog(20);
    for (let i = 0; i < 1_000; i++) logRecord(capped, i, 1);
    expect(capped.ring.length).toBe(20);
    expect(logAllows(capped, 999, 1_000, 1)).toBe(false);
    expect(logWait(capped, 999, 1_000, 1)).toBe(981);
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
