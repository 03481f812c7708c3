/** Latency bounds for the Redis fault tests that allow for stalls of the test process itself. */
import { afterAll, beforeEach, expect } from '@jest/globals';
import { monitorEventLoopDelay } from 'node:perf_hooks';

const RESOLUTION_MS = 10;

/**
 * The longest this process's event loop was held up during each test (a GC pause, the
 * process descheduled on a loaded machine). A decision's latency measured here includes such
 * a stall: the reply waited to be read, or the deadline's timer to run (the store then gives
 * the call one more deadline). Call at the top of a describe: each test starts a new count.
 */
export function watchStalls(): { longestMs(): number } {
  const histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  histogram.enable();
  beforeEach(() => {
    histogram.reset();
  });
  afterAll(() => {
    histogram.disable();
  });
  // A sample is the whole interval between two of its timer's turns: less the resolution.
  return { longestMs: () => Math.max(0, histogram.max / 1e6 - RESOLUTION_MS) };
}

/**
 * How long a decision may take to settle under a store fault: slop over the 50 ms deadline
 * on a loaded 2-core machine.
 */
export const SETTLE_BOUND_MS = 250;

/**
 * Every outcome's latency within `boundMs`, plus the longest stall of this process's event
 * loop in the test (at most 2 s of it: a decision held longer fails whatever the cause).
 */
export function expectSettledWithin(
  outcomes: readonly { readonly latency: number }[],
  stalls: { longestMs(): number },
  boundMs = SETTLE_BOUND_MS,
) {
  const allowance = Math.min(stalls.longestMs(), 2000);
  expect(Math.max(...outcomes.map((outcome) => outcome.latency))).toBeLessThanOrEqual(boundMs + allowance);
}

/**
 * What a stall of this process adds to a decision that misses its deadline: the stall itself
 * (the deadline's timer ran that much late), and when the timer fired more than half a
 * deadline late, one more deadline (the store gives such a call another, as its reply may be
 * waiting in the socket). At most 2 s of stall: a decision held longer fails whatever the cause.
 */
export function stallAllowance(stalls: { longestMs(): number }, deadlineMs: number): number {
  const stall = Math.min(stalls.longestMs(), 2000);
  return stall + (stall > deadlineMs / 2 ? deadlineMs : 0);
}
