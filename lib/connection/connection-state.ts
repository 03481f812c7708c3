import type { IncomingMessage } from 'node:http';
import type { SlidingLogState } from '../algorithms/sliding-log.js';
import type { RateLimitPlan } from '../interfaces/plan.interface.js';
import { connectionTracker, type Tracker } from '../pipeline/tracker.js';
import type { Route } from '../plans/route-resolver.js';
import type { AnswerOrder } from './answer-order.js';
import type { FrameHold } from './frame-hold.js';
import type { SettleOrder } from './settle-order.js';
import type { RateLimitTransport } from '../transports/transport.js';
import type { WsClientLike } from '../transports/ws-transport.js';

export type { WsClientLike } from '../transports/ws-transport.js';

/** Where the limiter keeps its per-connection state on a socket. */
export const CONNECTION_STATE: unique symbol = Symbol('nestjs-ws-rate-limit.connection');

/** A socket carrying its limiter state. */
export type TrackedClient = WsClientLike & { [CONNECTION_STATE]?: ConnectionState };

const noop = (): void => undefined;

/**
 * The one record of a connection: built at admission from what the upgrade told (address,
 * address key, allow-list status, the open-connection lease and how to give it back),
 * attached to the socket when it opens, and read by everything after: the pipeline (plans
 * built for it, its violations, degradation), the enforcer (closing), the heartbeat.
 */
export class ConnectionState {
  /** Plans built for this connection, by route. */
  readonly plans = new Map<Route, RateLimitPlan>();
  /**
   * Trackers of connection-keyed plans this connection used in the process-local store (its
   * own connection tracker, in practice): their states are deleted when it closes.
   */
  readonly localTrackers = new Set<string>();
  /** The tracker of tiers keyed by this connection. */
  readonly tracker: Tracker;
  /** The tracker of the connection's address key, made on first use. */
  addressTracker: Tracker | undefined;
  /** Timestamps of recent violations (created on the first). */
  violations: SlidingLogState | undefined;
  /** The registry that made it (one per application): a socket is served by its own application only. */
  registry: object | undefined;
  /** Set once the limiter has started closing the socket. */
  closing = false;
  /**
   * Set once the connection ended and what it held was forgotten: a decision that settles
   * after that (an asynchronous tracker's) has what it made forgotten again at once.
   */
  ended = false;
  /**
   * Rejections thrown for NestJS to hand to the filter, not yet counted as violations there
   * (see `in-transit.ts`): the messages of one read are all decided before any filter runs,
   * and decisions that waited on the store may settle before the filter has counted the
   * refusals settled before them, so this tells the pipeline that the violation threshold is
   * already reached. Each refusal's answer takes its own back.
   */
  pendingRejections = 0;
  /** The period `pendingRejections` counts in: a sweep that clears a count left standing starts the next. */
  transitEpoch = 0;
  /** A sweep of `pendingRejections` is scheduled. */
  transitSweep = false;
  /** When a refusal was last put in transit or answered (monotonic ms; see `in-transit.ts`). */
  transitAt = 0;
  /** Looks at the count since it was last touched that waited for a held-up loop (`in-transit.ts`). */
  transitWaits = 0;
  /**
   * Its decisions that waited on the store, settling in the order they were asked for
   * (`MessageLimiter.decideFor`); made at the first.
   */
  decisionOrder: SettleOrder | undefined;
  /** Its asynchronous trackers, settling in arrival order (`MessagePipeline`); made at the first. */
  trackerOrder: SettleOrder | undefined;
  /** Set once shadow mode has reported the close it did not make. */
  shadowClosed = false;
  /** Until when (monotonic ms) only essential types are allowed; 0 when not degraded. */
  degradedUntil = 0;
  /** Shadow mode: until when the connection would be degraded (nothing is restricted). */
  shadowDegradedUntil = 0;
  /** When the heartbeat's unanswered ping was sent (monotonic ms); 0 when none is pending. */
  pingSentAt = 0;
  /** When the heartbeat last pinged this connection (monotonic ms). */
  lastPingAt = 0;
  /** The socket, once attached. */
  client: object | undefined;
  /** The socket library it speaks, once attached. */
  transport: RateLimitTransport | undefined;
  /** The order of this connection's answers, when its adapter keeps one (`WsRateLimitAdapter`). */
  order: AnswerOrder | undefined;
  /** Decisions of this connection waiting on the store (or on an asynchronous tracker). */
  waiting = 0;
  /** Holds the connection's frames while a decision waits, when its adapter does (`FrameHold`). */
  hold: FrameHold | undefined;
  /**
   * Told of each routed message the limiter let through, with its handler's arguments, when
   * the adapter needs to know (socket.io: the application's catch-all listeners hear an event
   * once it is admitted); undefined otherwise, which costs a routed message one check.
   */
  onAdmitted: ((args: readonly unknown[]) => void) | undefined;
  /** Gives back the open-connection lease taken at admission (idempotent; no-op when none). */
  release: () => void = noop;

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
  ) {
    this.tracker = connectionTracker(id);
  }

  /** The tracker of tiers keyed by this connection, as stores and events name it. */
  get connectionTracker(): string {
    return this.tracker.key;
  }
}
