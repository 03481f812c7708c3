import type { RateLimitCode, TierName } from './plan.interface.js';

/** A decision on one message, as published on `WsRateLimitService.events$`. */
export interface RateLimitDecisionEvent {
  readonly kind: 'decision';
  readonly allowed: boolean;
  /** Whose budget was spent. */
  readonly tracker: string;
  /** The message type. */
  readonly type: string;
  /** The tier that refused (rejections only). */
  readonly tier?: TierName;
  readonly code?: RateLimitCode;
  readonly retryAfter?: number;
}

/** A violation: a rejected message counted against its connection. */
export interface RateLimitViolationEvent {
  readonly kind: 'violation';
  readonly tracker: string;
  readonly type: string;
  readonly code: RateLimitCode;
  /** Violations in the current window, this one included. */
  readonly warningCount: number;
}

/** A connection closed by the limiter. */
export interface RateLimitDisconnectEvent {
  readonly kind: 'disconnect';
  readonly tracker: string;
  readonly closeCode: number;
  readonly reason: string;
}

/** Everything published on `WsRateLimitService.events$`. */
export type RateLimitEvent = RateLimitDecisionEvent | RateLimitViolationEvent | RateLimitDisconnectEvent;
