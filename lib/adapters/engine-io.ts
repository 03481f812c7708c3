import type { IncomingMessage, ServerResponse } from 'node:http';

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
  /** Ends the connection; with `discard`, at once, without what is queued. */
  close(discard?: boolean): void;
}
