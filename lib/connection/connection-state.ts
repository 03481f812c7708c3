import type { IncomingMessage } from 'node:http';
import type { SlidingLogState } from '../algorithms/sliding-log.js';
import type { RateLimitPlan } from '../interfaces/plan.interface.js';
import type { Route } from '../plans/route-resolver.js';

/** The parts of a `ws` WebSocket the limiter uses. */
export interface WsClientLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: string, callback?: (error?: Error) => void): void;
  close(code?: number, reason?: string): void;
  once(event: 'close', listener: () => void): unknown;
}

/** Where the limiter keeps its per-connection state on a socket. */
export const CONNECTION_STATE: unique symbol = Symbol('nestjs-ws-rate-limit.connection');

/** A socket carrying its limiter state. */
export type TrackedClient = WsClientLike & { [CONNECTION_STATE]?: ConnectionState };

/**
 * What the limiter knows about one connection: its identity, the plans built for it (one
 * per handler, so a decision builds nothing), and its recent violations.
 */
export class ConnectionState {
  /** Plans built for this connection, by route. */
  readonly plans = new Map<Route, RateLimitPlan>();
  /**
   * Keys of connection-keyed tiers this connection used in the process-local store (from its
   * plans, including ones replaced when its tracker changed, and from `consume` in code):
   * deleted when it closes.
   */
  readonly localKeys = new Set<string>();
  /** Timestamps of recent violations (created on the first). */
  violations: SlidingLogState | undefined;
  /** Set once the limiter has started closing the socket. */
  closing = false;
  /** Set once shadow mode has reported the close it did not make. */
  shadowClosed = false;
  /** Until when (monotonic ms) only essential types are allowed; 0 when not degraded. */
  degradedUntil = 0;
  /** When the heartbeat's unanswered ping was sent (monotonic ms); 0 when none is pending. */
  pingSentAt = 0;
  /** When the heartbeat last pinged this connection (monotonic ms). */
  lastPingAt = 0;

  constructor(
    /** Unique within the process. */
    readonly id: number,
    /** The client address (trusted proxies applied), if known. */
    readonly address: string | undefined,
    /** The client address key (see `clientAddressKey`): IPv6 grouped by prefix. */
    readonly ip: string | undefined,
    /** The upgrade request, when the adapter saw it. */
    readonly request: IncomingMessage | undefined,
    /** The address is on the allow list: no limit applies. */
    readonly allowed: boolean,
  ) {}

  /** The tracker of tiers keyed by this connection. */
  get connectionTracker(): string {
    return `conn:${this.id}`;
  }
}
