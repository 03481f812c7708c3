import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';

/** The parts of Engine.IO (socket.io's engine) `WsRateLimitIoAdapter` uses, without importing it. */

/** An Engine.IO request: Engine.IO parses its query into `_query` before middlewares run. */
export type EngineRequest = IncomingMessage & { _query?: Record<string, string | undefined> };
export type EngineMiddleware = (
  request: EngineRequest,
  response: ServerResponse,
  next: (error?: unknown) => void,
) => void;

/** The parts of an Engine.IO server and socket the adapter uses. */
export interface EngineServerLike {
  use(middleware: EngineMiddleware): void;
  on(event: 'connection', listener: (socket: EngineConnectionLike) => void): unknown;
  on(event: 'connection_error', listener: (error: { req?: IncomingMessage }) => void): unknown;
}
export interface EngineConnectionLike {
  readonly request: IncomingMessage;
  once(event: 'close', listener: () => void): unknown;
  /** Every Engine.IO packet the client sends, before socket.io decodes it. */
  on(event: 'packet', listener: (packet: { readonly type: string; readonly data?: unknown }) => void): unknown;
  /** Every Engine.IO packet the server sends. */
  on(event: 'packetCreate', listener: (packet: { readonly type: string }) => void): unknown;
  /** Ends the connection; with `discard`, at once, without what is queued. */
  close(discard?: boolean): void;
}

/** The Engine.IO socket's own parts `tolerateStalledPings` wraps (not part of its typings). */
interface EngineSocketInternals {
  /** 4 for today's clients (the server pings); 3 for socket.io v2 clients (they ping). */
  protocol?: number;
  readyState?: string;
  onClose?: (reason: string, ...rest: unknown[]) => void;
  /** Its server: `opts.pingTimeout` is the timeout in force (a gateway's own, or ours). */
  server?: { opts?: { pingTimeout?: unknown } };
}

/**
 * Engine.IO ends a connection whose pong has not come `pongTimeoutMs` after its ping with a
 * plain timer. When the event loop stalls past that time (a long synchronous job, a GC pause),
 * the timer fires as soon as the loop runs again, before the poll phase that would read a pong
 * the peer sent meanwhile, and a live peer is ended as a ping timeout. As the library's own
 * heartbeat on `ws` does, such a late verdict (more than half the timeout late) is put off:
 * the connection ends one more timeout later unless a pong comes first. Engine.IO's own close
 * (`onClose`, a method it has had since its first versions) is wrapped per connection; one
 * without it is left as it is.
 */
export function tolerateStalledPings(socket: EngineConnectionLike): void {
  const internals = socket as unknown as EngineSocketInternals;
  const onClose = internals.onClose;
  const pongTimeoutMs = internals.server?.opts?.pingTimeout;
  if (typeof onClose !== 'function' || typeof pongTimeoutMs !== 'number' || !(pongTimeoutMs > 0)) return;
  let pingAt = 0;
  let pongAt = 0;
  /** When Engine.IO's timeout for the pong last started: at the ping, or once after it. */
  let timedFrom = 0;
  let restarted = false;
  let putOff: NodeJS.Timeout | undefined;
  let putOffPing = 0;
  socket.on('packetCreate', (packet) => {
    if (packet.type !== 'ping') return;
    pingAt = timedFrom = performance.now();
    restarted = false;
  });
  socket.on('packet', (packet) => {
    if (packet.type !== 'pong') {
      // Engine.IO starts the pong's timeout again at the first other packet while it waits.
      if (pingAt > pongAt && !restarted) {
        restarted = true;
        timedFrom = performance.now();
      }
      return;
    }
    pongAt = performance.now();
    clearTimeout(putOff);
    putOff = undefined;
  });
  socket.once('close', () => clearTimeout(putOff));
  internals.onClose = function (this: EngineSocketInternals, reason: string, ...rest: unknown[]): void {
    const ping = pingAt;
    const late = performance.now() - (timedFrom + pongTimeoutMs);
    if (
      reason === 'ping timeout' &&
      internals.protocol !== 3 &&
      ping !== 0 &&
      putOffPing !== ping &&
      late > pongTimeoutMs / 2 &&
      internals.readyState !== 'closed'
    ) {
      putOffPing = ping;
      putOff = setTimeout(() => {
        putOff = undefined;
        if (pongAt < ping && internals.readyState !== 'closed') onClose.call(this, reason, ...rest);
      }, pongTimeoutMs);
      putOff.unref();
      return;
    }
    onClose.call(this, reason, ...rest);
  };
}
