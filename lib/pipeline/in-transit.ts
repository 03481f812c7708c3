/**
 * Refusals on their way to the filter: thrown by the guard for NestJS to hand to
 * `WsRateLimitFilter`, which counts them as violations a few promise jobs later. Until then
 * the messages decided after them (the rest of a read, or decisions settling meanwhile) must
 * see them, or a flood would be answered past the violation threshold: each connection
 * counts its refusals in transit (`pendingRejections`), and the answer takes its own back.
 *
 * NestJS hands a guard's refusal to the filter within the promise jobs of the turn that threw
 * it; a filter of the application's own that hands refusals on to ours may do so later (after
 * an `await`). A count that has stood `TRANSIT_GRACE_MS` with no refusal put in transit or
 * answered meanwhile is of refusals no filter of ours will answer (a filter of the
 * application's own kept them): it is cleared then, and the late answer of one of them, if
 * any, takes nothing back.
 *
 * The grace counts time the event loop ran: a stalled loop (a long synchronous job, a GC
 * pause, a loaded machine) moves the clock past it without running the turns that answer. So
 * the first look (the turn after the throw) never clears a count; a later look, from a timer,
 * clears it when the timer fired on time (less than half a grace late: the loop ran through
 * the grace); a look from a timer the loop held up longer waits a full grace again (as
 * utils/loop-timeout.ts does), once per count: after that, a count that stood the grace is
 * cleared whatever the lateness, so a loop late on every tick does not keep it for ever. A
 * lost count is cleared about a grace period after it was last touched, two after a stall.
 */
import { performance } from 'node:perf_hooks';
import type { ConnectionState } from '../connection/connection-state.js';
import type { WsRateLimitException } from '../exceptions/ws-rate-limit.exception.js';

/** How long a count of refusals in transit may stand with none noted or answered. */
export const TRANSIT_GRACE_MS = 250;

/** The count period (`transitEpoch`) each refusal in transit was counted in. */
const counted = new WeakMap<WsRateLimitException, number>();
/** Refusals decided while their connection was degraded. */
const whileDegraded = new WeakSet<WsRateLimitException>();

/**
 * Whether a refusal was decided while its connection was degraded. Its answer closes at the
 * threshold then, as the look-ahead of the read it came in (`closesWith`) counted on, even
 * when the cooldown ran out while it was on its way (a filter of the application's own that
 * hands it on after an `await`): else the messages after it, dropped as after a close, would
 * go unanswered on a connection left open.
 */
export function decidedWhileDegraded(exception: WsRateLimitException): boolean {
  return whileDegraded.has(exception);
}

/** Counts a refusal thrown for the filter on its connection. */
export function noteInTransit(state: ConnectionState, exception: WsRateLimitException): void {
  if (counted.has(exception)) return;
  counted.set(exception, state.transitEpoch);
  if (state.degradedUntil > performance.now()) whileDegraded.add(exception);
  state.pendingRejections++;
  state.transitAt = performance.now();
  state.transitWaits = 0;
  if (!state.transitSweep) {
    state.transitSweep = true;
    setImmediate(sweep, state);
  }
}

/** A refusal reached its answer (counted as a violation, or not, there): no longer in transit. */
export function answeredInTransit(state: ConnectionState, exception: WsRateLimitException): void {
  const epoch = counted.get(exception);
  if (epoch === undefined) return;
  counted.delete(exception);
  if (epoch !== state.transitEpoch || state.pendingRejections === 0) return;
  state.pendingRejections--;
  state.transitAt = performance.now();
  state.transitWaits = 0;
}

/**
 * A count's looks that may wait a full grace because the loop was held up (or, the first
 * look, because no timer has measured the loop yet): the first look and one late timer.
 */
const HELD_UP_WAITS = 2;

/**
 * Looks at a connection's count: clears it when it stood `TRANSIT_GRACE_MS` untouched and
 * this look's timer (due at `dueAt`) fired on time, or its waits for a held-up loop are spent;
 * else looks again. The first look, in the turn after the throw, has no timer (`dueAt`
 * undefined). Runs until the count is 0.
 */
function sweep(state: ConnectionState, dueAt?: number): void {
  if (state.pendingRejections === 0) {
    state.transitSweep = false;
    return;
  }
  const now = performance.now();
  const stood = now - state.transitAt;
  const onTime = dueAt !== undefined && now - dueAt <= TRANSIT_GRACE_MS / 2;
  if (!onTime && state.transitWaits < HELD_UP_WAITS) {
    // The loop was held up (or not yet measured): a full grace of running loop from now.
    state.transitWaits++;
    setTimeout(sweep, TRANSIT_GRACE_MS, state, now + TRANSIT_GRACE_MS).unref();
    return;
  }
  if (stood < TRANSIT_GRACE_MS) {
    setTimeout(sweep, TRANSIT_GRACE_MS - stood, state, now + TRANSIT_GRACE_MS - stood).unref();
    return;
  }
  state.transitSweep = false;
  state.pendingRejections = 0;
  state.transitEpoch++;
}
