/**
 * What the server and the client agree on, in one place both import: the `rate_limit`
 * frame, its codes, and the message ids it echoes. Dependency-free (no Node built-ins, no
 * NestJS), since `nestjs-ws-rate-limit/client` is bundled for browsers.
 */

/** Event of the frame sent for a rejected message. */
export const RATE_LIMIT_EVENT = 'rate_limit';

/** Longest message id (in characters) echoed in `rate_limit` and `error` frames. */
export const MAX_MESSAGE_ID_LENGTH = 64;

/**
 * The `code` of a `rate_limit` frame: a tier's limit, the store being unreachable with
 * fail mode `closed`, a connection restricted to essential types (`DEGRADED`), or a tracker
 * blocked by an operator (`BLOCKED`).
 */
export type RateLimitCode =
  'GLOBAL_LIMIT' | 'TYPE_LIMIT' | 'EXPENSIVE_LIMIT' | 'STORE_UNAVAILABLE' | 'DEGRADED' | 'BLOCKED';

/** The codes of the `error` frame answering a message that reached no handler. */
export type UnroutedCode = 'INVALID_MESSAGE' | 'UNKNOWN_EVENT';

/**
 * An id a client may put on a message (`{ event, data, id }`) to match the answer to it: a
 * safe integer or a string of at most 64 characters.
 */
export type MessageId = string | number;

/** What the `rate_limit` frame says about one rejected message. */
export interface RateLimitFrameInfo {
  /** Which limit refused the message. */
  readonly code: RateLimitCode;
  /** The message type (the handler's `@Throttle` type or its event), never client text. */
  readonly messageType: string;
  /** Whole milliseconds until the same message would be allowed; at least 1. */
  readonly retryAfter: number;
  /** Violations of this connection in the current window, this one included. */
  readonly warningCount: number;
  /** Capacity of the limit that refused. */
  readonly limit: number;
  /** What that limit has left now. */
  readonly remaining: number;
  /**
   * The `id` of the refused message, when the client gave one (`{ event, data, id }`: a
   * safe integer or a string of at most 64 characters) and the adapter is
   * `WsRateLimitAdapter`. Lets a client re-send exactly the refused message.
   */
  readonly id?: MessageId;
}

/** The default frame: `{ event: 'rate_limit', data: {...} }`, NestJS's message convention. */
export interface RateLimitFrame {
  readonly event: typeof RATE_LIMIT_EVENT;
  readonly data: RateLimitFrameInfo;
}

/**
 * A value as a message id the limiter echoes, or undefined: a safe integer, or a string of
 * at most 64 printable ASCII characters other than `"` and `\` (each is one byte in the
 * frame: a control or non-ASCII character would take up to six once escaped, and push a
 * frame past 256 bytes). Anything else is ignored, so a frame never carries more client text.
 */
export function toMessageId(value: unknown): MessageId | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) ? value : undefined;
  if (typeof value !== 'string' || value.length > MAX_MESSAGE_ID_LENGTH) return undefined;
  for (let i = 0; i < value.length; i++) {
    const char = value.charCodeAt(i);
    if (char < 0x20 || char > 0x7e || char === 0x22 /* " */ || char === 0x5c /* \ */) return undefined;
  }
  return value;
}

/**
 * socket.io only (it has no close codes): the event sent just before the server disconnects
 * a socket for a policy reason, carrying what a WebSocket close frame would.
 */
export const RATE_LIMIT_DISCONNECT_EVENT = 'rate_limit_disconnect';

/** The data of the `rate_limit_disconnect` event. */
export interface RateLimitDisconnectInfo {
  /** The close code a WebSocket would have been closed with (1008 for violations). */
  readonly code: number;
  /** The close reason. */
  readonly reason: string;
}
