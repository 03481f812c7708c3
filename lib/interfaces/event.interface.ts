import type { RateLimitCode, TierName } from './plan.interface.js';

/** A decision on one message, as published on `WsRateLimitService.events$`. */
export interface RateLimitDecisionEvent {
  readonly kind: 'decision';
  readonly allowed: boolean;
  /** False in shadow mode: a rejection that was let through. */
  readonly enforced: boolean;
  /** Whose budget was spent. */
  readonly tracker: string;
  /** The message type. */
  readonly type: string;
  /**
   * The tier that refused (rejections only; none for a refusal no tier made: `BLOCKED`,
   * `DEGRADED`, `STORE_UNAVAILABLE`, as `code` says).
   */
  readonly tier?: TierName;
  readonly code?: RateLimitCode;
  readonly retryAfter?: number;
  /** The tier left below 20% of its capacity, for allowed decisions. */
  readonly nearLimit?: TierName;
}

/** A violation: a rejected message counted against its connection. */
export interface RateLimitViolationEvent {
  readonly kind: 'violation';
  readonly tracker: string;
  readonly type: string;
  readonly code: RateLimitCode;
  /** Violations in the current window, this one included. */
  readonly warningCount: number;
  /** False in shadow mode. */
  readonly enforced: boolean;
}

/** A connection closed (or, in shadow mode, that would have been) by the limiter. */
export interface RateLimitDisconnectEvent {
  readonly kind: 'disconnect';
  readonly tracker: string;
  readonly closeCode: number;
  readonly reason: string;
  /** False in shadow mode. */
  readonly enforced: boolean;
}

/** A connection was restricted to essential message types. */
export interface RateLimitDegradedEvent {
  readonly kind: 'degraded';
  readonly tracker: string;
  /** Milliseconds the restriction lasts. */
  readonly cooldownMs: number;
  /** False in shadow mode (the connection would have been restricted; it is not). */
  readonly enforced: boolean;
}

/** A connection attempt decided at the upgrade. */
export interface RateLimitConnectionEvent {
  readonly kind: 'connection';
  readonly accepted: boolean;
  /** The client address key. */
  readonly ip: string;
  /** Why it was refused (or, in shadow mode, would have been). */
  readonly reason?: ConnectionRefusalReason;
  /** False in shadow mode for a refusal that was let through (an accepted connection's is true, as an allowed decision's). */
  readonly enforced: boolean;
}

/**
 * Why a connection was refused. `handshakes`: the TCP connection was dropped, before its
 * request, for having more than `maxPendingHandshakesPerIp` handshakes from its address under
 * way at once (no HTTP answer: nothing was asked yet).
 */
export type ConnectionRefusalReason = 'rate' | 'concurrency' | 'denied' | 'blocked' | 'store' | 'handshakes';

/** The store became unreachable, or reachable again. */
export interface RateLimitStoreEvent {
  readonly kind: 'store';
  readonly state: 'down' | 'up';
  /** What failed, when it went down. */
  readonly error?: string;
}

/** Everything published on `WsRateLimitService.events$`. */
export type RateLimitEvent =
  | RateLimitDecisionEvent
  | RateLimitViolationEvent
  | RateLimitDisconnectEvent
  | RateLimitDegradedEvent
  | RateLimitConnectionEvent
  | RateLimitStoreEvent;
