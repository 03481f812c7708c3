/**
 * A refused upgrade, where the socket shows it: the `ws` package in Node emits
 * `unexpected-response` with the HTTP answer (a `WsRateLimitAdapter` refusing a connection
 * answers 429 with `Retry-After`, in seconds); a browser's WebSocket and Node's global one
 * show nothing of it (the client waits its `policyDelayMs` there).
 */
import type { WebSocketLike } from './types.js';

/** The part of an `http.IncomingMessage` read here. */
interface ResponseLike {
  readonly statusCode?: number;
  readonly headers?: Readonly<Record<string, string | string[] | undefined>>;
  resume?(): void;
}

/** A socket with `ws`'s events (an EventEmitter) and `terminate`. */
interface EmittingSocket {
  on(event: 'unexpected-response', listener: (request: unknown, response: ResponseLike) => void): unknown;
  terminate(): void;
}

function emits(socket: WebSocketLike): socket is WebSocketLike & EmittingSocket {
  const candidate = socket as Partial<EmittingSocket>;
  return typeof candidate.on === 'function' && typeof candidate.terminate === 'function';
}

/**
 * Calls `refused` with the status and the `Retry-After` (ms; undefined when absent or
 * unreadable) of an upgrade the server answered with anything but 101, then ends the socket
 * as `ws` would have (its `error` and `close` follow). Does nothing for a socket that does
 * not show the answer.
 */
export function watchRefusal(
  socket: WebSocketLike,
  refused: (status: number, retryAfterMs: number | undefined) => void,
  nowMs: () => number = Date.now,
): void {
  if (!emits(socket)) return;
  const listener = (_request: unknown, response: ResponseLike): void => {
    try {
      refused(response.statusCode ?? 0, retryAfterMs(response.headers?.['retry-after'], nowMs()));
    } finally {
      // The body is not read: drained, the connection's socket is freed.
      response.resume?.();
      socket.terminate();
    }
  };
  try {
    socket.on('unexpected-response', listener);
  } catch {
    // An `on` that is no EventEmitter's (one refusing events it does not know): the answer
    // is a best-effort read, so the socket goes on as one that does not show it.
  }
}

/** HTTP's obsolete asctime date (`Sun Dec  6 11:01:00 2026`), which names no zone and means GMT. */
const ASCTIME = /^[A-Za-z]{3} [A-Za-z]{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$/;

/**
 * A `Retry-After` header in ms: delay-seconds (a whole number; one too large for a number
 * waits as long as any, `Number.MAX_SAFE_INTEGER`) or an HTTP date (the asctime form read as
 * GMT, as HTTP means it, not in the local time zone); undefined when absent, unreadable or
 * already past.
 */
export function retryAfterMs(header: string | string[] | undefined, nowMs: number): number | undefined {
  const text = (Array.isArray(header) ? header[0] : header)?.trim();
  if (text === undefined || text === '') return undefined;
  if (/^\d+$/.test(text)) {
    const ms = Number(text) * 1000;
    return ms > 0 ? Math.min(ms, Number.MAX_SAFE_INTEGER) : undefined;
  }
  const at = Date.parse(ASCTIME.test(text) ? `${text} GMT` : text);
  return Number.isFinite(at) && at > nowMs ? at - nowMs : undefined;
}
