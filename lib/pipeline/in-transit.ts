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
}

/** Clears a count that stood `TRANSIT_GRACE_MS` untouched; runs until the count is 0. */
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
  state.transitSweep = false;
  state.pendingRejections = 0;
  state.transitEpoch++;
}
