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
 * The grace is measured on the clock, and a stalled event loop (a long GC pause, a loaded
 * machine) moves the clock past it without running the turn that answers: so a sweep that
 * finds a count overdue does not clear it at once but looks again a full grace later, from a
 * timer of its own, and clears it only if it is still untouched then. At least one whole turn
 * of the loop runs between the two looks, and a lost count is cleared within two grace
 * periods.
 */
import { performance } from 'node:perf_hooks';
import type { ConnectionState } from '../connection/connection-state.js';
import type { WsRateLimitException } from '../exceptions/ws-rate-limit.exception.js';

/** How long a count of refusals in transit may stand with none noted or answered. */
export const TRANSIT_GRACE_MS = 250;

/** The count period (`transitEpoch`) each refusal in transit was counted in. */
const counted = new WeakMap<WsRateLimitException, number>();

/** Counts a refusal thrown for the filter on its connection. */
export function noteInTransit(state: ConnectionState, exception: WsRateLimitException): void {
  if (counted.has(exception)) return;
  counted.set(exception, state.transitEpoch);
  state.pendingRejections++;
  state.transitAt = performance.now();
  state.transitOverdue = -1;
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
  state.transitOverdue = -1;
}

/**
 * Clears a count that stood `TRANSIT_GRACE_MS` untouched and was still untouched when looked
 * at again a grace period after it was first found overdue; runs until the count is 0.
 */
function sweep(state: ConnectionState): void {
  if (state.pendingRejections === 0) {
    state.transitSweep = false;
    return;
  }
  const stood = performance.now() - state.transitAt;
  if (stood < TRANSIT_GRACE_MS) {
    setTimeout(sweep, TRANSIT_GRACE_MS - stood, state).unref();
    return;
  }
  if (state.transitOverdue !== state.transitAt) {
    // First seen overdue: the loop may only have stalled. Look again a grace period later.
    state.transitOverdue = state.transitAt;
    setTimeout(sweep, TRANSIT_GRACE_MS, state).unref();
    return;
  }
  state.transitSweep = false;
  state.transitOverdue = -1;
  state.pendingRejections = 0;
  state.transitEpoch++;
}
