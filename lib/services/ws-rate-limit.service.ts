import { Inject, Injectable, Logger, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import { DiscoveryService, MetadataScanner } from '@nestjs/core';
import type { IncomingMessage } from 'node:http';
import { performance } from 'node:perf_hooks';
import { Observable, Subject } from 'rxjs';
import { createSlidingLog, logCount, logRecord } from '../algorithms/sliding-log.js';
import type { ResolvedWsRateLimitOptions } from '../config/resolve-options.js';
import {
  CONNECTION_STATE,
  ConnectionState,
  type TrackedClient,
  type WsClientLike,
} from '../connection/connection-state.js';
import { WsRateLimitException } from '../exceptions/ws-rate-limit.exception.js';
import type { RateLimitEvent } from '../interfaces/event.interface.js';
import type { RateLimitFrameBuilder, RateLimitFrameInfo } from '../interfaces/frame.interface.js';
import type {
  RateLimitCode,
  RateLimitDecision,
  RateLimitPlan,
  RateLimitRejected,
  TierName,
  TierSpec,
  TierStatus,
} from '../interfaces/plan.interface.js';
import { RouteResolver, type Route } from '../plans/route-resolver.js';
import { concurrencySpec, tokenBucketSpec } from '../plans/tier-specs.js';
import { MemoryRateLimitStore } from '../storage/memory/memory-store.js';
import { RateLimitStore, type MaybePromise } from '../storage/rate-limit-store.js';
import { clientAddressKey } from '../utils/client-ip.js';
import type { MessageId } from '../utils/message-id.js';
import {
  CLOSE_POLICY_VIOLATION,
  OPEN,
  RATE_LIMIT_EVENT,
  SLOW_CONSUMER_REASON,
  WS_RATE_LIMIT_OPTIONS,
} from '../ws-rate-limit.constants.js';

/** The outcome of a connection attempt at the upgrade, and how to give its slot back. */
export interface ConnectionAdmission {
  readonly decision: RateLimitDecision;
  /** Gives back the open-connection slot (no-op when refused or uncapped); call once. */
  readonly release: () => void;
}

/** What a message asks of the limiter when it is checked from code. */
export interface ConsumeRequest {
  /** The message type: its type bucket, and its figures from the module's `types`. */
  type: string;
  /** Also count it in the expensive-operations window. */
  expensive?: boolean;
  /** Tokens it costs in the global and type buckets. */
  cost?: number;
}

/** Remaining budget of one tier, as the reference article's `get_limits` reports it. */
export interface BudgetStatus {
  readonly remaining: number;
  readonly capacity: number;
  /** Milliseconds until the budget is full again. */
  readonly resetIn: number;
}

/** A client's budgets in every message tier. */
export interface ClientLimitsStatus {
  readonly tracker: string;
  readonly global: BudgetStatus;
  readonly types: Readonly<Record<string, BudgetStatus>>;
  readonly expensive: BudgetStatus;
}

const FRAME_CODES: Record<TierName, RateLimitCode> = {
  global: 'GLOBAL_LIMIT',
  type: 'TYPE_LIMIT',
  expensive: 'EXPENSIVE_LIMIT',
  connection: 'GLOBAL_LIMIT',
  concurrency: 'GLOBAL_LIMIT',
};

/** The frame code for a rejection. */
export function frameCode(decision: RateLimitRejected): RateLimitCode {
  return decision.storeUnavailable ? 'STORE_UNAVAILABLE' : FRAME_CODES[decision.tier];
}

const defaultFrameBuilder: RateLimitFrameBuilder = (info) => ({ event: RATE_LIMIT_EVENT, data: info });

const CONNECTION_TRACKER = 'conn:';
const noop = (): void => undefined;

/** The rejection the guard raises for messages that arrive while the limiter is closing the socket. */
const CLOSING: RateLimitRejected = Object.freeze({
  allowed: false,
  tier: 'global',
  index: 0,
  retryAfter: 1,
  limit: 0,
  remaining: 0,
});

/**
 * The limiter: decides plans against the store, keeps per-connection state, sends
 * `rate_limit` frames, counts violations and closes repeat offenders. Inject it to check
 * budgets from code (`consume`, `peek`, `status`, `reset`) or to watch `events$`.
 */
@Injectable()
export class WsRateLimitService implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger('WsRateLimit');
  /** Tiers keyed by a connection: exact, in this process, whatever the store. */
  private readonly local = new MemoryRateLimitStore({ maxKeys: Number.MAX_SAFE_INTEGER });
  /** Decides shared tiers while the store is unreachable and the fail mode is `open`. */
  private fallback: MemoryRateLimitStore | undefined;
  private storeDown = false;
  private readonly routes: RouteResolver;
  private readonly subject = new Subject<RateLimitEvent>();
  private readonly frameBuilder: RateLimitFrameBuilder;
  private nextConnectionId = 1;
  private openConnections = 0;
  /** Names this process's open-connection leases in a shared store. */
  private readonly instanceId = `${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
  private readonly connectionSpecs: readonly TierSpec[];
  private readonly invalidRoute: Route;
  private readonly unknownRoute: Route;

  /** Every decision (when observed), violation and limiter-initiated disconnect. */
  readonly events$: Observable<RateLimitEvent> = this.subject.asObservable();

  constructor(
    @Inject(WS_RATE_LIMIT_OPTIONS) readonly options: ResolvedWsRateLimitOptions,
    /** The store shared tiers live in. */
    readonly store: RateLimitStore,
    private readonly discovery: DiscoveryService,
    private readonly metadataScanner: MetadataScanner,
  ) {
    this.routes = new RouteResolver(options);
    this.frameBuilder = options.frameBuilder ?? defaultFrameBuilder;
    const { connection, maxConnectionsPerIp } = options;
    const rate = tokenBucketSpec('connection', 'cr', connection.capacity, connection.refillRate);
    this.connectionSpecs = Object.freeze(
      maxConnectionsPerIp > 0 ? [rate, concurrencySpec('concurrency', 'cc', maxConnectionsPerIp)] : [rate],
    );
    const global = Object.freeze([this.routes.globalSpec(1)]);
    this.invalidRoute = Object.freeze({ type: 'invalid', specs: global, where: 'malformed frames' });
    this.unknownRoute = Object.freeze({ type: 'unknown', specs: global, where: 'frames for no handler' });
  }

  /** Validates the limits of every guarded gateway handler, so mistakes stop start-up. */
  onModuleInit(): void {
    const handlers: Array<[object, object]> = [];
    for (const wrapper of this.discovery.getProviders()) {
      const gateway = wrapper.metatype as (new (...args: unknown[]) => unknown) | undefined;
      if (!gateway || !wrapper.instance || !Reflect.getMetadata('websockets:is_gateway', gateway)) continue;
      const prototype = Object.getPrototypeOf(wrapper.instance) as Record<string, unknown>;
      const guarded = usesGuard(gateway);
      for (const name of this.metadataScanner.getAllMethodNames(prototype)) {
        const handler = prototype[name] as object;
        if (Reflect.getMetadata('message', handler) === undefined) continue;
        if (guarded || usesGuard(handler)) handlers.push([handler, gateway]);
      }
    }
    // Declared figures first, so that handlers sharing a type agree in any order.
    for (const [handler, gateway] of handlers) this.routes.declare(handler, gateway);
    for (const [handler, gateway] of handlers) this.routes.resolve(handler, gateway);
  }

  /**
   * Runs after NestJS has closed the servers: releases the local state, and the store if
   * this module created it (a store instance given in options belongs to its creator).
   */
  async onApplicationShutdown(): Promise<void> {
    this.subject.complete();
    await this.local.close();
    await this.fallback?.close();
    if (!(this.options.store instanceof RateLimitStore)) await this.store.close();
  }

  // --- Public API ---------------------------------------------------------------------

  /**
   * Spends a message's budget from code: for a tracker named by you (it shares budgets with
   * a `tracker` function returning the same name) or for a connected socket.
   */
  async consume(target: string | object, request: ConsumeRequest): Promise<RateLimitDecision> {
    return this.decide(this.codePlan(target, request));
  }

  /** The budgets a message would spend, consuming nothing. */
  async peek(target: string | object, request: ConsumeRequest): Promise<readonly TierStatus[]> {
    const plan = this.codePlan(target, request);
    return this.storeFor(plan).peek(plan);
  }

  /**
   * A client's remaining budget in every tier (the reference article's `get_limits`): the
   * global bucket, each known type (every handler's, plus the module's `types`, plus any
   * asked for), and the expensive window.
   */
  async status(target: string | object, types: readonly string[] = []): Promise<ClientLimitsStatus> {
    const tracker = this.trackerOfTarget(target);
    const names = [...new Set([...this.routes.knownTypes(), ...Object.keys(this.options.types), ...types])];
    const specs: TierSpec[] = [this.routes.globalSpec(1), this.routes.expensive];
    for (const name of names) specs.push(this.routes.typeSpec(name, 1));
    const plan = this.buildPlan(tracker, specs);
    const statuses = await this.storeFor(plan).peek(plan);
    const budget = (status: TierStatus): BudgetStatus => ({
      remaining: status.remaining,
      capacity: status.limit,
      resetIn: status.resetIn,
    });
    const byType: Record<string, BudgetStatus> = {};
    names.forEach((name, i) => (byType[name] = budget(statuses[i + 2]!)));
    return { tracker, global: budget(statuses[0]!), types: byType, expensive: budget(statuses[1]!) };
  }

  /**
   * The connection tiers of a client address: its connection-rate bucket and, when capped,
   * its open connections (`remaining` = slots left). `ip` is an address as the adapter keys
   * it (IPv4 dotted, IPv6 grouped as `prefix::/64`).
   */
  async connectionStatus(ip: string): Promise<readonly TierStatus[]> {
    const plan = this.buildPlan(`ip:${ip}`, this.connectionSpecs, this.instanceId);
    return this.storeFor(plan).peek(plan);
  }

  /**
   * Counts for health checks and tests: sockets tracked and not yet closed, keys held for
   * per-connection tiers, and, with the memory store, its keys and evictions.
   */
  stats(): { connections: number; localKeys: number; storeKeys?: number; evictions?: number } {
    const shared =
      this.store instanceof MemoryRateLimitStore ? { storeKeys: this.store.size, evictions: this.store.evictions } : {};
    return { connections: this.openConnections, localKeys: this.local.size, ...shared };
  }

  /** Gives a tracker (or a socket's tracker) its full budget back in every message tier. */
  async reset(target: string | object): Promise<void> {
    const tracker = this.trackerOfTarget(target);
    const suffixes = ['g', 'x', ...this.routes.knownTypes().map((type) => `t:${type}`)];
    const store = tracker.startsWith(CONNECTION_TRACKER) ? this.local : this.store;
    await store.delete(suffixes.map((suffix) => store.key(tracker, suffix)));
    if (store !== this.local) this.fallback?.delete(suffixes.map((suffix) => store.key(tracker, suffix)));
  }

  // --- Used by the guard, filter and adapter -------------------------------------------

  /** The route of a handler (cached), or `null` for `@SkipThrottle`. */
  routeOf(handler: object, gateway: object): Route | null {
    return this.routes.resolve(handler, gateway);
  }

  /** The limiter state of a socket, created on first use. */
  connectionOf(client: object): ConnectionState {
    return (client as TrackedClient)[CONNECTION_STATE] ?? this.track(client as TrackedClient, undefined, undefined);
  }

  /**
   * Starts tracking a socket (the adapter calls this at the upgrade with the client address
   * it resolved). Its per-connection state is dropped when the socket closes.
   */
  track(client: TrackedClient, ip: string | undefined, request: IncomingMessage | undefined): ConnectionState {
    const address = ip ?? clientAddressKey((client as { _socket?: { remoteAddress?: string } })._socket?.remoteAddress);
    const state = new ConnectionState(this.nextConnectionId++, address, request);
    client[CONNECTION_STATE] = state;
    this.openConnections++;
    client.once('close', () => this.forget(state));
    return state;
  }

  /**
   * Decides a new connection from a client address: the connection-rate bucket and, when
   * capped, the open-connection count, together. The slot, if taken, is given back by
   * `release` in whichever store took it.
   */
  admitConnection(ip: string): MaybePromise<ConnectionAdmission> {
    const plan = this.buildPlan(`ip:${ip}`, this.connectionSpecs, this.instanceId);
    const capped = this.options.maxConnectionsPerIp > 0;
    const admitted = (decision: RateLimitDecision, store: RateLimitStore | undefined): ConnectionAdmission => ({
      decision,
      release:
        decision.allowed && capped && store
          ? once(() => {
              try {
                const released = store.release(plan);
                if (isPromise(released)) released.catch((error) => this.releaseFailed(error));
              } catch (error) {
                this.releaseFailed(error);
              }
            })
          : noop,
    });
    let decision: MaybePromise<RateLimitDecision>;
    try {
      decision = this.store.consume(plan);
    } catch (error) {
      const fallback = this.storeFailed(plan, error);
      return admitted(fallback, this.options.failMode === 'open' ? this.fallback : undefined);
    }
    if (!isPromise(decision)) return admitted(this.storeAnswered(decision), this.store);
    return decision.then(
      (settled) => admitted(this.storeAnswered(settled), this.store),
      (error: unknown) =>
        admitted(this.storeFailed(plan, error), this.options.failMode === 'open' ? this.fallback : undefined),
    );
  }

  /**
   * Charges a frame that reached no handler (malformed, binary, or an unknown event) to its
   * connection's global budget: within it, the client gets a small `error` frame; over it,
   * a `rate_limit` frame and a violation, like any rejected message.
   */
  chargeUnrouted(
    client: object,
    state: ConnectionState,
    code: 'INVALID_MESSAGE' | 'UNKNOWN_EVENT',
    id: MessageId | undefined,
  ): void {
    const route = code === 'INVALID_MESSAGE' ? this.invalidRoute : this.unknownRoute;
    const tracker = this.trackerOf(client, state);
    const decision = this.decide(this.planFor(state, route, tracker));
    const settle = (settled: RateLimitDecision): void => {
      if (settled.allowed) {
        this.send(client as TrackedClient, state, { event: 'error', data: id === undefined ? { code } : { code, id } });
      } else {
        this.reject(client, new WsRateLimitException(settled, route.type, tracker, id));
      }
    };
    if (isPromise(decision)) decision.then(settle, noop);
    else settle(decision);
  }

  /** Whose budget a message from this socket spends, per the `tracker` option. */
  trackerOf(client: object, state: ConnectionState): string {
    const tracker = this.options.tracker;
    if (tracker === 'connection') return state.connectionTracker;
    if (tracker === 'ip') return state.ip === undefined ? state.connectionTracker : `ip:${state.ip}`;
    const name = tracker(client, { ip: state.ip, connectionId: state.id, request: state.request });
    return typeof name === 'string' ? `key:${name}` : state.connectionTracker;
  }

  /** The plan of a route for a tracker, built once per connection and reused. */
  planFor(state: ConnectionState, route: Route, tracker: string): RateLimitPlan {
    const cached = state.plans.get(route);
    if (cached !== undefined && cached.tracker === tracker) return cached;
    const plan = this.buildPlan(tracker, route.specs);
    state.plans.set(route, plan);
    return plan;
  }

  /** Decides a plan: connection-keyed plans in process memory, the rest in the store. */
  decide(plan: RateLimitPlan): MaybePromise<RateLimitDecision> {
    const decision = plan.tracker.startsWith(CONNECTION_TRACKER) ? this.local.consume(plan) : this.consumeShared(plan);
    if (this.subject.observed) {
      if (isPromise(decision)) decision.then((settled) => this.publishDecision(plan, settled), noop);
      else this.publishDecision(plan, decision);
    }
    return decision;
  }

  /** The rejection raised for a message that arrives while its socket is being closed. */
  closingRejection(route: Route, tracker: string): WsRateLimitException {
    return new WsRateLimitException(CLOSING, route.type, tracker, undefined);
  }

  /**
   * Answers a rejected message: counts the violation, sends the `rate_limit` frame, and at
   * the threshold closes the socket after that frame.
   */
  reject(client: object, exception: WsRateLimitException): void {
    const socket = client as TrackedClient;
    const state = this.connectionOf(socket);
    if (state.closing || socket.readyState !== OPEN) return;
    const { max, windowMs, closeCode, closeReason } = this.options.violations;
    const now = performance.now();
    const log = (state.violations ??= createSlidingLog(max));
    logRecord(log, now, 1);
    const warningCount = logCount(log, now, windowMs);
    const { decision } = exception;
    const info: RateLimitFrameInfo = {
      code: frameCode(decision),
      messageType: exception.messageType,
      retryAfter: decision.retryAfter,
      warningCount,
      limit: decision.limit,
      remaining: decision.remaining,
      ...(exception.messageId === undefined ? {} : { id: exception.messageId }),
    };
    if (!this.send(socket, state, this.frameBuilder(info))) return;
    if (this.subject.observed) {
      this.subject.next({
        kind: 'violation',
        tracker: exception.tracker,
        type: exception.messageType,
        code: info.code,
        warningCount,
      });
    }
    if (warningCount >= max) this.disconnect(socket, state, closeCode, closeReason, exception.tracker);
  }

  /**
   * Sends a JSON frame unless the socket is not open or its reader is too slow; a slow
   * reader (more than `maxBufferedBytes` unread) is cut off instead. Never throws.
   */
  send(client: WsClientLike, state: ConnectionState, payload: unknown): boolean {
    if (client.readyState !== OPEN) return false;
    if (client.bufferedAmount > this.options.maxBufferedBytes) {
      this.disconnect(client, state, CLOSE_POLICY_VIOLATION, SLOW_CONSUMER_REASON, state.connectionTracker);
      return false;
    }
    client.send(JSON.stringify(payload), noop);
    return true;
  }

  /**
   * Closes a socket for a policy reason. A slow consumer is terminated at once, since a
   * close frame would wait behind the data it does not read.
   */
  disconnect(client: WsClientLike, state: ConnectionState, code: number, reason: string, tracker: string): void {
    if (state.closing) return;
    state.closing = true;
    try {
      if (reason === SLOW_CONSUMER_REASON && typeof (client as { terminate?: unknown }).terminate === 'function') {
        (client as unknown as { terminate(): void }).terminate();
      } else {
        client.close(code, reason);
      }
    } catch (error) {
      this.logger.warn(`Closing a socket failed: ${(error as Error).message}`);
    }
    if (this.subject.observed) this.subject.next({ kind: 'disconnect', tracker, closeCode: code, reason });
  }

  // --- Internals ---------------------------------------------------------------------

  private forget(state: ConnectionState): void {
    this.openConnections--;
    const keys: string[] = [];
    for (const plan of state.plans.values()) {
      if (!plan.tracker.startsWith(CONNECTION_TRACKER)) continue;
      for (const tier of plan.tiers) keys.push(tier.key);
    }
    this.local.delete(keys);
    state.plans.clear();
  }

  private buildPlan(tracker: string, specs: readonly TierSpec[], lease?: string): RateLimitPlan {
    const store = tracker.startsWith(CONNECTION_TRACKER) ? this.local : this.store;
    const tiers = Object.freeze(specs.map((spec) => Object.freeze({ key: store.key(tracker, spec.suffix), spec })));
    return Object.freeze(lease === undefined ? { tracker, tiers } : { tracker, tiers, lease });
  }

  private releaseFailed(error: unknown): void {
    this.logger.warn(`Giving back an open-connection slot failed: ${(error as Error)?.message ?? String(error)}`);
  }

  private codePlan(target: string | object, request: ConsumeRequest): RateLimitPlan {
    if (request === null || typeof request !== 'object' || typeof request.type !== 'string' || request.type === '') {
      throw new TypeError('nestjs-ws-rate-limit: a request needs a non-empty string type');
    }
    return this.buildPlan(
      this.trackerOfTarget(target),
      this.routes.specsFor(request.type, request.expensive, request.cost),
    );
  }

  private trackerOfTarget(target: string | object): string {
    if (typeof target === 'string') return `key:${target}`;
    return this.trackerOf(target, this.connectionOf(target));
  }

  private storeFor(plan: RateLimitPlan): RateLimitStore {
    if (plan.tracker.startsWith(CONNECTION_TRACKER)) return this.local;
    return this.storeDown && this.fallback ? this.fallback : this.store;
  }

  /** Decides in the store; if it cannot answer, the fail mode decides. */
  private consumeShared(plan: RateLimitPlan): MaybePromise<RateLimitDecision> {
    let decision: MaybePromise<RateLimitDecision>;
    try {
      decision = this.store.consume(plan);
    } catch (error) {
      return this.storeFailed(plan, error);
    }
    if (!isPromise(decision)) return this.storeAnswered(decision);
    return decision.then(
      (settled) => this.storeAnswered(settled),
      (error: unknown) => this.storeFailed(plan, error),
    );
  }

  private storeAnswered(decision: RateLimitDecision): RateLimitDecision {
    if (this.storeDown) {
      this.storeDown = false;
      this.logger.log('The rate-limit store answers again; shared limits are back in use');
    }
    return decision;
  }

  private storeFailed(plan: RateLimitPlan, error: unknown): RateLimitDecision {
    if (!this.storeDown) {
      this.storeDown = true;
      this.logger.warn(
        `The rate-limit store cannot decide (${(error as Error)?.message ?? String(error)}); ` +
          (this.options.failMode === 'open'
            ? 'deciding with local in-memory limits until it answers again'
            : 'refusing messages with STORE_UNAVAILABLE until it answers again'),
      );
    }
    if (this.options.failMode === 'closed') {
      const spec = plan.tiers[0]!.spec;
      return {
        allowed: false,
        tier: spec.tier,
        index: 0,
        retryAfter: 1000,
        limit: spec.limit,
        remaining: 0,
        storeUnavailable: true,
      };
    }
    this.fallback ??= new MemoryRateLimitStore({ maxKeys: this.options.maxKeys });
    return this.fallback.consume(plan);
  }

  private publishDecision(plan: RateLimitPlan, decision: RateLimitDecision): void {
    const type = plan.tiers.find((tier) => tier.spec.tier === 'type')?.spec.suffix.slice(2) ?? '';
    this.subject.next(
      decision.allowed
        ? { kind: 'decision', allowed: true, tracker: plan.tracker, type }
        : {
            kind: 'decision',
            allowed: false,
            tracker: plan.tracker,
            type,
            tier: decision.tier,
            code: frameCode(decision),
            retryAfter: decision.retryAfter,
          },
    );
  }
}

function once(run: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    run();
  };
}

function isPromise<T>(value: MaybePromise<T>): value is Promise<T> {
  return typeof (value as { then?: unknown })?.then === 'function';
}

/** Whether a class or handler lists `WsThrottleGuard` (or a subclass) in `@UseGuards`. */
function usesGuard(target: object): boolean {
  const guards = (Reflect.getMetadata('__guards__', target) as unknown[] | undefined) ?? [];
  return guards.some(
    (guard) => typeof guard === 'function' && (guard as { isWsThrottleGuard?: boolean }).isWsThrottleGuard === true,
  );
}
