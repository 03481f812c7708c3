import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import {
  counterAllows,
  counterCount,
  counterFreshAt,
  counterRecord,
  counterWait,
  createSlidingCounter,
  type SlidingCounterState,
} from '../../lib/algorithms/sliding-counter.js';
import { RefCounter, TICKS_PER_MS, check, checkSame, fcParams, ms } from './support/exact-model.js';
import { costOf, forEachWindowFrom, steps, type Admission } from './support/schedules.js';

function snapshot(state: SlidingCounterState): string {
  return JSON.stringify([state.start, state.prev, state.curr]);
}

/**
 * Property tests of the O(1) sliding-window counter. Its documented bound: never more
 * than the limit in one aligned window, at most twice the limit in any sliding window.
 * Times are whole ticks of 1/8 ms and windows whole ms, so the weighting
 * `prev * (W - e) / W` is a division of exact numbers whose result is either exact or at
 * least 1/(8W) away from the integer it is compared with: the comparisons cannot flip by
 * rounding, and the decisions are compared with an integer model with zero tolerance. The
 * model finds each wait by trying every whole ms, so equality also proves the wait tight.
 */
describe('sliding-window counter', () => {
  const params = fc.record({
    limit: fc.integer({ min: 1, max: 10 }),
    windowMs: fc.oneof(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 41, max: 800 })),
    startTicks: fc.integer({ min: 0, max: 80_000_000 }),
  });

  it('matches the integer model, keeps its documented bounds, and reports exact waits', () => {
    fc.assert(
      fc.property(params, steps(150), ({ limit, windowMs, startTicks }, schedule) => {
        const state = createSlidingCounter();
        const ref = new RefCounter(limit, windowMs);
        let now = startTicks;
        let rejected: { cost: number; wait: number } | undefined;
        const admitted: Admission[] = [];

        const attempt = (cost: number): boolean => {
          const before = snapshot(state);
          const allowed = counterAllows(state, ms(now), windowMs, limit, cost);
          checkSame(allowed, ref.allows(now, cost), `allowed at ${ms(now)} ms, cost ${cost}`);
          const remaining = Math.max(0, Math.floor(limit - counterCount(state, ms(now), windowMs)));
          checkSame(remaining, ref.remaining(now), 'remaining');
          if (allowed) {
            checkSame(counterWait(state, ms(now), windowMs, limit, cost), 0, 'wait when allowed');
            counterRecord(state, ms(now), windowMs, cost);
            ref.consume(now, cost);
            admitted.push({ at: now, cost });
            rejected = undefined;
            return true;
          }
          const wait = counterWait(state, ms(now), windowMs, limit, cost);
          checkSame(snapshot(state), before, 'state after a rejection');
          check(Number.isInteger(wait) && wait >= 1, () => `wait ${wait} is not a whole number >= 1`);
          check(counterAllows(state, ms(now) + wait, windowMs, limit, cost), () => `refused after ${wait} ms`);
          checkSame(wait, ref.wait(now, cost), `wait at ${ms(now)} ms, cost ${cost}`);
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

        const width = windowMs * TICKS_PER_MS;
        const perWindow = new Map<number, number>();
        for (const { at, cost } of admitted) {
          const index = Math.floor(at / width);
          perWindow.set(index, (perWindow.get(index) ?? 0) + cost);
        }
        for (const [index, total] of perWindow) {
          check(total <= limit, () => `${total} admitted in aligned window ${index}`);
        }
        forEachWindowFrom(admitted, width, (total, from) => {
          check(total <= 2 * limit, () => `${total} admitted in the sliding window from ${ms(from)} ms`);
        });
        if (admitted.length > 0) {
          const last = admitted[admitted.length - 1]!.at;
          checkSame(counterFreshAt(state, windowMs), (Math.floor(last / width) + 2) * windowMs, 'fresh at');
        }
      }),
      fcParams(300),
    );
  });

  it('reaches the 2x bound at a window boundary, as documented', () => {
    const state = createSlidingCounter();
    let admitted = 0;
    // A full burst at the very end of one window: at the next boundary the previous window
    // still weighs fully, and its weight decays linearly from there.
    for (let i = 0; i < 10; i++) {
      if (counterAllows(state, 999, 1000, 5, 1)) {
        counterRecord(state, 999, 1000, 1);
        admitted++;
      }
    }
    expect(admitted).toBe(5);
    expect(counterAllows(state, 1000, 1000, 5, 1)).toBe(false);
    expect(counterWait(state, 1000, 1000, 5, 1)).toBe(200);
  });
});
