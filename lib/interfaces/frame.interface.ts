import type { RateLimitCode } from './plan.interface.js';

/** What a frame builder is told about one rejected message. */
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
  readonly id?: string | number;
}

/** The default frame: `{ event: 'rate_limit', data: {...} }`, NestJS's message convention. */
export interface RateLimitFrame {
  readonly event: 'rate_limit';
  readonly data: RateLimitFrameInfo;
}

/**
 * Builds the frame sent for a rejected message; its result is sent as JSON.
 * @example
 * // the reference article's flat frame
 * frameBuilder: (info) => ({ type: 'rate_limit', ...info })
 */
export type RateLimitFrameBuilder = (info: RateLimitFrameInfo) => unknown;
