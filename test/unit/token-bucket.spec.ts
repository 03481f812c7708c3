import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import {
  bucketAfter,
  bucketAllows,
  bucketSlack,
  bucketTokens,
  bucketWait,
  intervalMs,
} from '../../lib/algorithms/token-bucket.js';
import { EXACT_RATES, RefBucket, TICKS_PER_MS, check, checkSame, fcParams, ms } from './support/exact-model.js';
import { costOf, forEachTightInterval, steps, type Admission } from './support/schedules.js';

/**
 * Property tests of the GCRA token bucket (RELIABILITY C-7, F-3). Two families:
 *
 * - Exact schedules: times are whole ticks of 1/8 ms and rates come from EXACT_RATES, so
 *   every number the algorithm computes is exactly representable. The bound
 *   `admitted <= C + r*t` is checked with zero tolerance, and every decision, wait and
 *   token count is compared with a textbook bucket in integer arithmetic.
 * - Arbitrary doubles (any rate, any fractional time): the bound is checked with a
 *   tolerance of 1e-6 ms of time, i.e. `admitted <= C + r * (t + 1e-6 ms)`. Why that much:
 *   `fullAt` is at most ~1.1e7 ms here, where one rounding costs at most ulp/2 ~ 1e-9 ms;
 *   each decision does O(1) roundings and a schedule has at most 150 steps, so the state
 *   can drift from exact arithmetic by well under 1e-6 ms. In tokens that is at most
 *   r * 1e-9 <= 1e-6 of one token: any real over-admission (a whole extra token) is caught.
 */
describe('token bucket (GCRA)', () => {
  const exactParams = fc.record({
    capacity: fc.integer({ min: 1, max: 12 }),
    rate: fc.constantFrom(...EXACT_RATES),
    startTicks: fc.integer({ min: 0, max: 80_000_000 }),
  });

  it('matches a textbook bucket exactly and never admits more than C + r*t in any interval (zero tolerance)', () => {
    fc.assert(
      fc.property(exactParams, steps(150), ({ capacity, rate, startTicks }, schedule) => {
        const interval = intervalMs(rate);
        const ref = new RefBucket(capacity, rate);
        let fullAt = -Infinity;
        let now = startTicks;
        let rejected: { cost: number; wait: number } | undefined;
        const admitted: Admission[] = [];

        const attempt = (cost: number): boolean => {
          const slack = bucketSlack(capacity, cost, interval);
          const allowed = bucketAllows(fullAt, ms(now), slack);
          checkSame(allowed, ref.allows(now, cost), `allowed at ${ms(now)} ms, cost ${cost}`);
          const tokens = bucketTokens(fullAt, ms(now), capacity, interval);
          check(tokens >= 0 && tokens <= capacity, () => `tokens ${tokens} outside [0, ${capacity}]`);
          checkSame(Math.floor(tokens), ref.remaining(now), 'whole tokens');
          if (allowed) {
            checkSame(bucketWait(fullAt, ms(now), slack), 0, 'wait when allowed');
            fullAt = bucketAfter(fullAt, ms(now), cost * interval);
            ref.consume(now, cost);
            admitted.push({ at: now, cost });
            rejected = undefined;
            return true;
          }
          const wait = bucketWait(fullAt, ms(now), slack);
          check(Number.isInteger(wait) && wait >= 1, () => `wait ${wait} is not a whole number >= 1`);
          checkSame(wait, ref.wait(now, cost), `wait at ${ms(now)} ms, cost ${cost}`);
          // Tight: the retry works at `wait` and would not one ms earlier.
          check(bucketAllows(fullAt, ms(now) + wait, slack), () => `refused again after waiting ${wait} ms`);
          check(wait === 1 || !bucketAllows(fullAt, ms(now) + wait - 1, slack), () => `${wait} ms is not tight`);
          rejected = { cost, wait };
          return false;
        };

        for (const step of schedule) {
          if (step.kind === 'advance') now += step.ticks;
          else if (step.kind === 'consume') attempt(costOf(step.pick, capacity));
          else if (rejected) {
            const { cost, wait } = rejected;
            now += wait * TICKS_PER_MS;
            check(attempt(cost), () => `retry after ${wait} ms refused`);
          }
        }

        // sum * 16000 <= C * 16000 + 2r * (t in ticks): both sides integers, no tolerance.
        forEachTightInterval(admitted, (total, ticks, from) => {
          check(
            total * 16_000 <= capacity * 16_000 + 2 * rate * ticks,
            () => `${total} admitted in ${ms(ticks)} ms from ${ms(from)} ms`,
          );
        });
      }),
      fcParams(300),
    );
  });

  it('never admits more than C + r*(t + 1e-6 ms) with arbitrary rates and fractional times', () => {
    const TIME_TOLERANCE_MS = 1e-6;
    const floatParams = fc.record({
      capacity: fc.oneof(fc.integer({ min: 1, max: 20 }), fc.double({ min: 1, max: 20, noNaN: true })),
      rate: fc.double({ min: 0.01, max: 1000, noNaN: true }),
      start: fc.double({ min: 0, max: 1e7, noNaN: true }),
    });
    const floatSteps = fc.array(
      fc.oneof(
        fc.record({
          kind: fc.constant('advance' as const),
          by: fc.oneof(fc.constant(0), fc.double({ min: 0, max: 3000, noNaN: true })),
        }),
        fc.record({ kind: fc.constant('consume' as const), fraction: fc.double({ min: 0, max: 1, noNaN: true }) }),
        fc.constant({ kind: 'retry' as const }),
      ),
      { maxLength: 150, size: 'max' },
    );
    fc.assert(
      fc.property(floatParams, floatSteps, ({ capacity, rate, start }, schedule) => {
        const interval = intervalMs(rate);
        let fullAt = -Infinity;
        let now = start;
        let rejected: { cost: number; wait: number } | undefined;
        const admitted: Admission[] = [];
        const attempt = (cost: number): boolean => {
          const slack = bucketSlack(capacity, cost, interval);
          const tokens = bucketTokens(fullAt, now, capacity, interval);
          check(tokens >= 0 && tokens <= capacity, () => `tokens ${tokens} outside [0, ${capacity}]`);
          if (bucketAllows(fullAt, now, slack)) {
            fullAt = bucketAfter(fullAt, now, cost * interval);
            admitted.push({ at: now, cost });
            rejected = undefined;
            return true;
          }
          const wait = bucketWait(fullAt, now, slack);
          check(Number.isInteger(wait) && wait >= 1, () => `wait ${wait} is not a whole number >= 1`);
          check(bucketAllows(fullAt, now + wait, slack), () => `refused again after waiting ${wait} ms`);
          rejected = { cost, wait };
          return false;
        };
        for (const step of schedule) {
          if (step.kind === 'advance') now += step.by;
          else if (step.kind === 'consume') attempt(Math.max(1, Math.floor(step.fraction * capacity)));
          else if (rejected) {
            const { cost, wait } = rejected;
            now += wait;
            check(attempt(cost), () => `retry after ${wait} ms refused`);
          }
        }
        forEachTightInterval(admitted, (total, length, from) => {
          check(
            total <= capacity + (rate * (length + TIME_TOLERANCE_MS)) / 1000,
            () => `${total} admitted in ${length} ms from ${from} ms`,
          );
        });
      }),
      fcParams(300),
    );
  });

  it('admits a full burst from fresh, then exactly one token per interval', () => {
    const capacity = 5;
    const interval = intervalMs(2);
    const slack = bucketSlack(capacity, 1, interval);
    let fullAt = -Infinity;
    let allowed = 0;
    for (let i = 0; i < 100; i++) {
      if (bucketAllows(fullAt, 1000, slack)) {
        fullAt = bucketAfter(fullAt, 1000, interval);
        allowed++;
      }
    }
    expect(allowed).toBe(capacity);
    expect(bucketWait(fullAt, 1000, slack)).toBe(500);
    expect(bucketAllows(fullAt, 1499, slack)).toBe(false);
    expect(bucketAllows(fullAt, 1500, slack)).toBe(true);
  });

  it('a cost above capacity is never satisfiable, whatever the state and the time (issue 2, item 5)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 50 }),
        fc.integer({ min: 1, max: 50 }),
        fc.constantFrom(...EXACT_RATES),
        fc.oneof(fc.constant(-Infinity), fc.integer({ min: -1e9, max: 1e9 })),
        fc.integer({ min: 0, max: 1e9 }),
        (capacity, excess, rate, fullAt, now) => {
          const slack = bucketSlack(capacity, capacity + excess, intervalMs(rate));
          expect(bucketAllows(fullAt, now, slack)).toBe(false);
        },
      ),
      fcParams(200),
    );
  });
});
