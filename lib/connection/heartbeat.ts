import { performance } from 'node:perf_hooks';
import type { ResolvedWsRateLimitOptions } from '../config/resolve-options.js';
import type { RateLimitTransport } from '../transports/transport.js';
import type { ConnectionState } from './connection-state.js';

/** Close code and reason for a transport that cannot terminate a silent peer outright. */
export const GOING_AWAY = 1001;
export const PING_TIMEOUT_REASON = 'Ping timeout';

/**
 * One timer (unref'd; clear it when the server closes) reads the records of a server's
 * connections: cuts off slow consumers (more than `maxBufferedBytes` unread) within a
 * second, and, when the transport has no liveness of its own, pings each connection every
 * `pingIntervalMs` and ends those silent for `pongTimeoutMs` after a ping, through
 * `timedOut` (which counts and reports it, then terminates the socket).
 */
export function startHeartbeat(
  records: ReadonlySet<ConnectionState>,
  transport: RateLimitTransport,
  options: Pick<ResolvedWsRateLimitOptions, 'pingIntervalMs' | 'pongTimeoutMs'>,
  cutOffIfSlow: (client: object, state: ConnectionState) => boolean,
  timedOut: (client: object, state: ConnectionState) => void = (client) =>
    transport.terminate(client, GOING_AWAY, PING_TIMEOUT_REASON),
): NodeJS.Timeout {
  const { pingIntervalMs, pongTimeoutMs } = options;
  const { liveness } = transport;
  const tick = Math.max(10, pingIntervalMs === 0 ? 1000 : Math.min(1000, pingIntervalMs / 2, pongTimeoutMs / 2));
  let lastTick = performance.now();
  let heldBack = false;
  const timer = setInterval(() => {
    const now = performance.now();
    // A tick more than a tick late means the event loop was held up (a long task, a GC
    // pause, the process descheduled): a pong that came meanwhile may still sit unread in
    // its socket, as timers run before the poll phase that reads it. Such a tick ends no
    // one; the next, after a poll phase, does. Never two ticks in a row, so a loop late on
    // every tick still ends silent peers, one tick later.
    const stalled = !heldBack && now - lastTick > 2 * tick;
    heldBack = stalled;
    lastTick = now;
    for (const state of records) {
      const client = state.client!;
      if (cutOffIfSlow(client, state) || pingIntervalMs === 0 || liveness === undefined) continue;
      if (state.pingSentAt !== 0) {
        if (!stalled && now - state.pingSentAt >= pongTimeoutMs) {
          // Ended after this turn's poll phase, unless a pong read there answers the ping: a
          // loop busy for less than a tick across the deadline leaves a live peer's pong
          // unread when this timer runs.
          const sentAt = state.pingSentAt;
          setImmediate(() => {
            if (state.pingSentAt === sentAt) timedOut(client, state);
          });
        }
      } else if (now - state.lastPingAt >= pingIntervalMs && transport.isOpen(client)) {
        state.pingSentAt = state.lastPingAt = now;
        liveness.ping(client);
      }
    }
  }, tick);
  timer.unref();
  return timer;
}

/** Notes a connection's answers to the heartbeat's pings (transports with liveness hooks). */
export function watchPongs(state: ConnectionState, transport: RateLimitTransport): void {
  transport.liveness?.onPong(state.client!, () => (state.pingSentAt = 0));
}
