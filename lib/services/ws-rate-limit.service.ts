import { Inject, Injectable, Logger, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import { DiscoveryService, MetadataScanner } from '@nestjs/core';
import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';
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
import type { ConnectionRefusalReason, RateLimitEvent } from '../interfaces/event.interface.js';
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
import { createMetrics, NO_METRICS, type LimiterMetrics } from '../metrics/ws-rate-limit.metrics.js';
import { RouteResolver, type Route } from '../plans/route-resolver.js';
import { createPlan } from '../plans/create-plan.js';
import { concurrencySpec, tokenBucketSpec } from '../plans/tier-specs.js';
import { MemoryRateLimitStore } from '../storage/memory/memory-store.js';
import { RateLimitStore, type MaybePromise } from '../storage/rate-limit-store.js';
import { clientAddressKey, plainAddress } from '../utils/client-ip.js';
import type { MessageId } from '../utils/message-id.js';
import {
  CLOSE_POLICY_VIOLATION,
  OPEN,
  RATE_LIMIT_EVENT,
  SLOW_CONSUMER_REASON,
  WS_RATE_LIMIT_OPTIONS,
} from '../ws-rate-limit.constants.js';
import { AccessRules } from './access-rules.js';
import { isPromise, SharedStore } from './shared-store.js';
import { Blocks } from './blocks.js';

/** The outcome of a connection attempt at the upgrade, and how to give its slot back. */
export interface ConnectionAdmission {
  /** Whether the handshake may complete (always, in shadow mode). */
  readonly accepted: boolean;
  /** Why it was refused (or, in shadow mode, would have been). */
  readonly reason?: ConnectionRefusalReason;
  /** Whole milliseconds until a retry could succeed, for refusals. */
  readonly retryAfter: number;
  /** Gives back the open-connection slot (no-op when none was taken); call once. */
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
  /** The plan the client's messages are limited by (`default`: the module's own limits). */
  readonly plan: string;
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
  if (decision.storeUnavailable) return 'STORE_UNAVAILABLE';
  if (decision.blocked) return 'BLOCKED';
  if (decision.degraded) return 'DEGRADED';
  return FRAME_CODES[decision.tier];
}

const defaultFrameBuilder: RateLimitFrameBuilder = (info) => ({ event: RATE_LIMIT_EVENT, data: info });

/** The name of the module's own limits among plans. */
export const DEFAULT_PLAN = 'default';
/** How often blocks set on other instances are fetched from a shared store. */
const BLOCK_SYNC_MS = 1000;
const CONNECTION_TRACKER = 'conn:';
const DENIED_REASON = 'Denied';
const noop = (): void => undefined;

/** The rejection the guard raises for messages that arrive while the limiter closes the socket. */
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
 * `rate_limit` frames, counts violations, degrades or closes repeat offenders, applies
 * allow/deny lists and operator blocks, and reports metrics and events. Inject it to
 * check budgets from code (`consume`, `peek`, `status`, `reset`, `block`) or to watch
 * `events$`.
 */
@Injectable()
export class WsRateLimitService implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger('WsRateLimit');
  /** Tiers keyed by a connection: exact, in this process, whatever the store. */
  private readonly local = new MemoryRateLimitStore({ maxKeys: Number.MAX_SAFE_INTEGER });
  /** The store behind its fail mode. */
  private readonly shared: SharedStore;
  /** Routes per plan; the module's own limits are `DEFAULT_PLAN`. */
  private readonly plans = new Map<string, RouteResolver>();
  private readonly routes: RouteResolver;
  private readonly subject = new Subject<RateLimitEvent>();
  /** Local block/unblock calls so far, and those whose store write is still in flight. */
  private blockEdits = 0;
  private blockWrites = 0;
  /** User callbacks that threw on an unrouted frame, logged once each. */
  private readonly callbackErrors = new Set<string>();
  private readonly frameBuilder: RateLimitFrameBuilder;
  private readonly access: AccessRules;
  private readonly blocks = new Blocks();
  private blockSync: NodeJS.Timeout | undefined;
  private metrics: LimiterMetrics = NO_METRICS;
  private nextConnectionId = 1;
  private openConnections = 0;
  /** Names this process's open-connection leases in a shared store. */
  private readonly instanceId = `${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
  private readonly connectionSpecs: readonly TierSpec[];
  private readonly invalidRoute: Route;
  private readonly unknownRoute: Route;

  /** Every decision (when observed), violation, disconnect, connection and store outage. */
  readonly events$: Observable<RateLimitEvent> = this.subject.asObservable();

  constructor(
    @Inject(WS_RATE_LIMIT_OPTIONS) readonly options: ResolvedWsRateLimitOptions,
    /** The store shared tiers live in. */
    readonly store: RateLimitStore,
    private readonly discovery: DiscoveryService,
    private readonly metadataScanner: MetadataScanner,
  ) {
    this.shared = new SharedStore(store, options.failMode, options.maxKeys, {
      // The embedded store answers in nanoseconds: timing it would cost more than it tells.
      answered: store instanceof MemoryRateLimitStore ? noop : (ms) => this.metrics.storeLatency(ms / 1000),
      failed: () => this.metrics.storeError(),
      down: (error) => this.storeWentDown(error),
      up: () => this.storeCameBack(),
    });
    this.routes = new RouteResolver(options);
    this.plans.set(DEFAULT_PLAN, this.routes);
    for (const [name, limits] of Object.entries(options.plans)) this.plans.set(name, new RouteResolver(limits));
    this.frameBuilder = options.frameBuilder ?? defaultFrameBuilder;
    this.access = new AccessRules(options.allowList, options.denyList);
    const { connection, maxConnectionsPerIp } = options;
    const rate = tokenBucketSpec('connection', 'cr', connection.capacity, connection.refillRate);
    this.connectionSpecs = Object.freeze(
      maxConnectionsPerIp > 0 ? [rate, concurrencySpec('concurrency', 'cc', maxConnectionsPerIp)] : [rate],
    );
    const global = Object.freeze([this.routes.globalSpec(1)]);
    this.invalidRoute = Object.freeze({ type: 'invalid', specs: global, where: 'malformed frames', essential: false });
    this.unknownRoute = Object.freeze({
      type: 'unknown',
      specs: global,
      where: 'frames for no handler',
      essential: false,
    });
  }

  /**
   * Validates the limits of every guarded gateway handler under every plan, so mistakes
   * stop start-up; sets up metrics, and the sharing of blocks when the store shares them.
   */
  async onModuleInit(): Promise<void> {
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
    for (const [name, routes] of this.plans) {
      try {
        // Declared figures first, so that handlers sharing a type agree in any order.
        for (const [handler, gateway] of handlers) routes.declare(handler, gateway);
        for (const [handler, gateway] of handlers) routes.resolve(handler, gateway);
      } catch (error) {
        if (name !== DEFAULT_PLAN) (error as Error).message += ` (under plan "${name}")`;
        throw error;
      }
    }
    this.metrics = await createMetrics(this.options, () => this.openConnections, this.logger);
    await this.syncBlocks(true);
  }

  /**
   * Runs after NestJS has closed the servers: releases the local state, and the store if
   * this module created it (a store instance given in options belongs to its creator).
   */
  async onApplicationShutdown(): Promise<void> {
    clearInterval(this.blockSync);
    this.subject.complete();
    await this.local.close();
    await this.shared.close();
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
    return this.peekPlan(plan);
  }

  /**
   * A client's remaining budget in every tier (the reference article's `get_limits`): the
   * global bucket, each known type (every handler's, plus the module's `types`, plus any
   * asked for), and the expensive window, under the client's plan. While a shared store
   * cannot answer: in fail mode `open`, the local fallback's figures (the ones deciding
   * meanwhile); in `closed`, it rejects with the store's error.
   */
  async status(target: string | object, types: readonly string[] = []): Promise<ClientLimitsStatus> {
    const tracker = this.trackerOfTarget(target);
    const plan = typeof target === 'string' ? DEFAULT_PLAN : this.planNameOf(target, this.connectionOf(target));
    const routes = this.plans.get(plan)!;
    const names = [...new Set([...routes.knownTypes(), ...Object.keys(this.options.types), ...types])];
    const specs: TierSpec[] = [routes.globalSpec(1), routes.expensive];
    for (const name of names) specs.push(routes.typeSpec(name, 1));
    const built = this.buildPlan(tracker, specs);
    const statuses = await this.peekPlan(built);
    const budget = (status: TierStatus): BudgetStatus => ({
      remaining: status.remaining,
      capacity: status.limit,
      resetIn: status.resetIn,
    });
    const byType: Record<string, BudgetStatus> = {};
    names.forEach((name, i) => (byType[name] = budget(statuses[i + 2]!)));
    return { tracker, plan, global: budget(statuses[0]!), types: byType, expensive: budget(statuses[1]!) };
  }

  /**
   * The connection tiers of a client address: its connection-rate bucket and, when capped,
   * its open connections (`remaining` = slots left). `ip` is an address as the adapter keys
   * it (IPv4 dotted, IPv6 grouped as `prefix::/64`).
   */
  async connectionStatus(ip: string): Promise<readonly TierStatus[]> {
    const plan = this.buildPlan(`ip:${ip}`, this.connectionSpecs, this.instanceId);
    return this.peekPlan(plan);
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
    const types = new Set<string>();
    for (const routes of this.plans.values()) for (const type of routes.knownTypes()) types.add(type);
    const suffixes = ['g', 'x', ...[...types].map((type) => `t:${type}`)];
    if (tracker.startsWith(CONNECTION_TRACKER)) {
      this.local.delete(suffixes.map((suffix) => this.local.key(tracker, suffix)));
    } else {
      await this.shared.delete(suffixes.map((suffix) => this.store.key(tracker, suffix)));
    }
  }

  /**
   * Blocks a client for `durationMs`: an IP address (its handshakes are refused with 403
   * and its connections' messages rejected with `BLOCKED`), a tracker name as a `tracker`
   * function returns it, or a connected socket (its address). With a shared store, every
   * instance enforces it within a second.
   */
  async block(target: string | object, durationMs: number): Promise<void> {
    if (!(durationMs > 0) || !Number.isFinite(durationMs)) {
      throw new RangeError('nestjs-ws-rate-limit: block needs a positive, finite duration in ms');
    }
    const name = this.blockName(target);
    const until = Date.now() + Math.ceil(durationMs);
    this.blocks.set(name, until);
    await this.writeBlock(() => this.store.setBlock(name, until));
  }

  /** Lifts a block set with `block` (on every instance, with a shared store). */
  async unblock(target: string | object): Promise<void> {
    const name = this.blockName(target);
    this.blocks.delete(name);
    await this.writeBlock(() => this.store.deleteBlock(name));
  }

  /** A block or unblock on its way to the store: a sync meanwhile must not undo it locally. */
  private async writeBlock(write: () => MaybePromise<void>): Promise<void> {
    this.blockEdits++;
    this.blockWrites++;
    try {
      await write();
    } finally {
      this.blockWrites--;
    }
  }

  /** The blocks in force, as name (`ip:<address>` or `key:<tracker>`) -> until (ms since the epoch). */
  listBlocks(): Readonly<Record<string, number>> {
    return this.blocks.list();
  }

  // --- Used by the guard, filter and adapter -------------------------------------------

  /** The route of a handler (cached) under a connection's plan, or `null` for `@SkipThrottle`. */
  routeOf(handler: object, gateway: object, state?: ConnectionState, client?: object): Route | null {
    const routes =
      state === undefined || this.options.planResolver === undefined
        ? this.routes
        : this.plans.get(this.planNameOf(client ?? {}, state))!;
    return routes.resolve(handler, gateway);
  }

  /** The limiter state of a socket, created on first use. */
  connectionOf(client: object): ConnectionState {
    return (client as TrackedClient)[CONNECTION_STATE] ?? this.track(client as TrackedClient, undefined, undefined);
  }

  /**
   * Starts tracking a socket (the adapter calls this at the upgrade with the client address
   * it resolved). Its per-connection state is dropped when the socket closes.
   */
  track(client: TrackedClient, address: string | undefined, request: IncomingMessage | undefined): ConnectionState {
    const peer = address ?? plainAddress((client as { _socket?: { remoteAddress?: string } })._socket?.remoteAddress);
    const ip = clientAddressKey(peer, this.options.ipv6Prefix);
    const state = new ConnectionState(this.nextConnectionId++, peer, ip, request, this.access.allowsAddress(peer));
    client[CONNECTION_STATE] = state;
    this.openConnections++;
    client.once('close', () => this.forget(state));
    return state;
  }

  /**
   * Decides a new connection from a client address: deny list, blocks, allow list, then
   * the connection-rate bucket and, when capped, the open-connection count, together. The
   * slot, if taken, is given back by `release` in whichever store took it.
   */
  admitConnection(address: string): MaybePromise<ConnectionAdmission> {
    const ip = clientAddressKey(address, this.options.ipv6Prefix)!;
    if (this.access.deniesAddress(address)) return this.admitted(ip, 'denied', 0, noop);
    const blocked = this.blocks.size === 0 ? 0 : this.blocks.remaining(`ip:${ip}`);
    if (blocked > 0) return this.admitted(ip, 'blocked', blocked, noop);
    if (this.access.allowsAddress(address)) return this.admitted(ip, undefined, 0, noop);
    const plan = this.buildPlan(`ip:${ip}`, this.connectionSpecs, this.instanceId);
    const capped = this.options.maxConnectionsPerIp > 0;
    // The slot is given back to whichever store took it: the store, or the fallback.
    let taker: RateLimitStore | undefined;
    const settle = (decision: RateLimitDecision): ConnectionAdmission => {
      const store = taker;
      const release =
        decision.allowed && capped && store
          ? once(() => {
              try {
                const released = store.release(plan);
                if (isPromise(released)) released.catch((error) => this.releaseFailed(error));
              } catch (error) {
                this.releaseFailed(error);
              }
            })
          : noop;
      if (decision.allowed) return this.admitted(ip, undefined, 0, release);
      const reason = decision.storeUnavailable ? 'store' : decision.tier === 'concurrency' ? 'concurrency' : 'rate';
      return this.admitted(ip, reason, decision.retryAfter, release);
    };
    const decision = this.shared.consume(plan, (store) => (taker = store));
    return isPromise(decision) ? decision.then(settle) : settle(decision);
  }

  /**
   * Checks that come before a message's decision: allow and deny lists, operator blocks,
   * degradation. Returns `true` to let the message through undecided, an exception to
   * reject it with, or `undefined` to decide it.
   */
  screen(
    client: object,
    state: ConnectionState,
    route: Route,
    tracker: string,
  ): true | WsRateLimitException | undefined {
    if (state.closing) return new WsRateLimitException(CLOSING, route.type, tracker, undefined);
    if (state.allowed) return true;
    if (this.access.hasTrackerRules) {
      if (this.access.allowsTracker(tracker)) return true;
      if (this.access.deniesTracker(tracker)) {
        this.disconnect(client as WsClientLike, state, CLOSE_POLICY_VIOLATION, DENIED_REASON, tracker);
        return new WsRateLimitException(CLOSING, route.type, tracker, undefined);
      }
    }
    if (this.blocks.size !== 0) {
      const left = Math.max(this.blocks.remaining(tracker), state.ip ? this.blocks.remaining(`ip:${state.ip}`) : 0);
      if (left > 0) return new WsRateLimitException(restriction('blocked', left), route.type, tracker, undefined);
    }
    if (state.degradedUntil !== 0 && !route.essential) {
      const left = Math.ceil(state.degradedUntil - performance.now());
      if (left > 0) return new WsRateLimitException(restriction('degraded', left), route.type, tracker, undefined);
      state.degradedUntil = 0;
    }
    return undefined;
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
    // This runs in the socket's message listener, outside Nest's exception handling: nothing
    // a user callback (tracker, frame builder) throws may escape, or the process goes down.
    let tracker: string;
    try {
      tracker = this.trackerOf(client, state);
    } catch (error) {
      this.callbackFailed('tracker', error, 'the frame is charged to its connection');
      tracker = state.connectionTracker;
    }
    const answer = (): void => {
      this.send(client as TrackedClient, state, { event: 'error', data: id === undefined ? { code } : { code, id } });
    };
    if (state.allowed || (this.access.hasTrackerRules && this.access.allowsTracker(tracker))) return answer();
    const settle = (settled: RateLimitDecision): void => {
      try {
        if (settled.allowed) return answer();
        const exception = new WsRateLimitException(settled, route.type, tracker, id);
        if (this.options.shadow) {
          this.shadowReject(client, exception);
          return answer();
        }
        this.reject(client, exception);
      } catch (error) {
        this.callbackFailed('frameBuilder', error, 'the frame was not answered');
      }
    };
    let decision: MaybePromise<RateLimitDecision>;
    try {
      decision = this.decide(this.planFor(state, route, tracker), route);
    } catch (error) {
      this.callbackFailed('store', error, 'the frame was not charged');
      return;
    }
    if (isPromise(decision)) decision.then(settle, noop);
    else settle(decision);
  }

  /** A user callback (or the store) threw outside Nest's handling: logged once per callback, then at debug. */
  private callbackFailed(what: string, error: unknown, outcome: string): void {
    const message = `${what} threw on an unrouted frame (${(error as Error)?.message ?? String(error)}); ${outcome}`;
    if (this.callbackErrors.has(what)) {
      this.logger.debug(message);
    } else {
      this.callbackErrors.add(what);
      this.logger.error(message);
    }
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
    rememberLocalKeys(state, plan);
    return plan;
  }

  /**
   * Decides a plan: connection-keyed plans in process memory, the rest in the store (the
   * fail mode deciding when it cannot). Counted in metrics and, when observed, streamed.
   */
  decide(plan: RateLimitPlan, route?: Route): MaybePromise<RateLimitDecision> {
    const decision = plan.tracker.startsWith(CONNECTION_TRACKER) ? this.local.consume(plan) : this.shared.consume(plan);
    if (this.metrics !== NO_METRICS || this.subject.observed) {
      const type = route?.type ?? typeOfPlan(plan);
      if (isPromise(decision)) decision.then((settled) => this.report(plan.tracker, type, settled), noop);
      else this.report(plan.tracker, type, decision);
    }
    return decision;
  }

  /**
   * Answers a rejected message: counts the violation, sends the `rate_limit` frame, and at
   * the threshold degrades the connection (with `degradeCooldownMs`) or closes it after
   * that frame.
   */
  reject(client: object, exception: WsRateLimitException): void {
    const socket = client as TrackedClient;
    const state = this.connectionOf(socket);
    if (state.closing || socket.readyState !== OPEN) return;
    const { max, closeCode, closeReason } = this.options.violations;
    const { decision } = exception;
    // Our store being unreachable is not the client's fault: answered, never counted.
    const warningCount = decision.storeUnavailable
      ? currentViolations(state, this.options.violations.windowMs)
      : this.countViolation(state, exception, true);
    const degrade =
      warningCount >= max && this.options.degradeCooldownMs > 0 && state.degradedUntil <= performance.now();
    const info: RateLimitFrameInfo = degrade
      ? {
          code: 'DEGRADED',
          messageType: exception.messageType,
          retryAfter: this.options.degradeCooldownMs,
          warningCount,
          limit: 0,
          remaining: 0,
          ...(exception.messageId === undefined ? {} : { id: exception.messageId }),
        }
      : {
          code: frameCode(decision),
          messageType: exception.messageType,
          retryAfter: decision.retryAfter,
          warningCount,
          limit: decision.limit,
          remaining: decision.remaining,
          ...(exception.messageId === undefined ? {} : { id: exception.messageId }),
        };
    if (!this.send(socket, state, this.frameBuilder(info))) return;
    if (degrade) {
      state.degradedUntil = performance.now() + this.options.degradeCooldownMs;
      // Violations start over: the same number again, while degraded, closes the socket.
      state.violations = undefined;
      if (this.subject.observed) {
        this.subject.next({ kind: 'degraded', tracker: exception.tracker, cooldownMs: this.options.degradeCooldownMs });
      }
    } else if (warningCount >= max) {
      this.disconnect(socket, state, closeCode, closeReason, exception.tracker);
    }
  }

  /**
   * Shadow mode's answer to a rejected message: the violation is counted, streamed and
   * measured, and nothing is sent or closed.
   */
  shadowReject(client: object, exception: WsRateLimitException): void {
    const state = this.connectionOf(client);
    const warningCount = this.countViolation(state, exception, false);
    if (warningCount >= this.options.violations.max) {
      this.metrics.disconnect('shadow_violations');
      if (this.subject.observed) {
        this.subject.next({
          kind: 'disconnect',
          tracker: exception.tracker,
          closeCode: this.options.violations.closeCode,
          reason: this.options.violations.closeReason,
          enforced: false,
        });
      }
      state.violations = undefined;
    }
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
   * close frame would wait behind the data it does not read. Nothing is closed in shadow
   * mode (the event still says what would have happened).
   */
  disconnect(client: WsClientLike, state: ConnectionState, code: number, reason: string, tracker: string): void {
    if (state.closing || state.shadowClosed) return;
    const enforced = !this.options.shadow;
    this.metrics.disconnect(disconnectLabel(reason, enforced));
    if (this.subject.observed) this.subject.next({ kind: 'disconnect', tracker, closeCode: code, reason, enforced });
    if (!enforced) {
      // Reported once: the heartbeat and every send would find a slow consumer again.
      state.shadowClosed = true;
      return;
    }
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
    this.logger.debug(`Closed ${tracker}: ${reason}`);
  }

  // --- Internals ---------------------------------------------------------------------

  private admitted(
    ip: string,
    reason: ConnectionRefusalReason | undefined,
    retryAfter: number,
    release: () => void,
  ): ConnectionAdmission {
    const enforced = !this.options.shadow;
    const accepted = reason === undefined || !enforced;
    this.metrics.connection(reason === undefined ? 'accepted' : enforced ? 'refused' : 'shadow_refused', reason ?? '');
    if (this.subject.observed) {
      this.subject.next(
        reason === undefined
          ? { kind: 'connection', accepted: true, ip, enforced }
          : { kind: 'connection', accepted, ip, reason, enforced },
      );
    }
    return { accepted, ...(reason === undefined ? {} : { reason }), retryAfter, release };
  }

  /** Records a violation in the connection's window; returns the count in the window. */
  private countViolation(state: ConnectionState, exception: WsRateLimitException, enforced: boolean): number {
    const { max, windowMs } = this.options.violations;
    const now = performance.now();
    const log = (state.violations ??= createSlidingLog(max));
    logRecord(log, now, 1);
    const warningCount = logCount(log, now, windowMs);
    const code = frameCode(exception.decision);
    this.metrics.violation(code, exception.messageType);
    if (this.subject.observed) {
      this.subject.next({
        kind: 'violation',
        tracker: exception.tracker,
        type: exception.messageType,
        code,
        warningCount,
        enforced,
      });
    }
    this.logger.debug(`Violation ${warningCount}/${max} by ${exception.tracker} (${code}, ${exception.messageType})`);
    return warningCount;
  }

  private report(tracker: string, type: string, decision: RateLimitDecision): void {
    if (decision.allowed) {
      this.metrics.allowed(type);
      if (decision.nearLimit !== undefined) this.metrics.nearLimit(decision.nearLimit, type);
    } else {
      const result = this.options.shadow ? 'shadow_rejected' : 'rejected';
      this.metrics.rejected(type, result, decision.tier, frameCode(decision));
    }
    if (!this.subject.observed) return;
    this.subject.next(
      decision.allowed
        ? {
            kind: 'decision',
            allowed: true,
            enforced: true,
            tracker,
            type,
            ...(decision.nearLimit === undefined ? {} : { nearLimit: decision.nearLimit }),
          }
        : {
            kind: 'decision',
            allowed: false,
            enforced: !this.options.shadow,
            tracker,
            type,
            tier: decision.tier,
            code: frameCode(decision),
            retryAfter: decision.retryAfter,
          },
    );
  }

  private planNameOf(client: object, state: ConnectionState): string {
    const resolver = this.options.planResolver;
    if (resolver === undefined) return DEFAULT_PLAN;
    const name = resolver(client, { ip: state.ip, connectionId: state.id, request: state.request });
    return name !== undefined && this.plans.has(name) ? name : DEFAULT_PLAN;
  }

  private blockName(target: string | object): string {
    if (typeof target !== 'string') {
      const state = this.connectionOf(target);
      if (state.ip === undefined) throw new TypeError('nestjs-ws-rate-limit: this socket has no known address');
      return `ip:${state.ip}`;
    }
    if (isIP(target) !== 0) return `ip:${clientAddressKey(target, this.options.ipv6Prefix)}`;
    if (target === '') throw new TypeError('nestjs-ws-rate-limit: block needs an address, a tracker name or a socket');
    return `key:${target}`;
  }

  /** Fetches blocks set on other instances; starts doing so every second if the store shares them. */
  private async syncBlocks(first: boolean): Promise<void> {
    let shared: Readonly<Record<string, number>> | undefined;
    const edits = this.blockEdits;
    const quiet = this.blockWrites === 0;
    try {
      shared = await this.store.listBlocks();
    } catch (error) {
      if (first) this.logger.warn(`Could not read blocks from the store: ${(error as Error).message}`);
      if (!first) return;
    }
    // A list read while a local block or unblock was on its way may predate it: the next sync has it.
    if (shared !== undefined && quiet && this.blockWrites === 0 && edits === this.blockEdits)
      this.blocks.replace(shared);
    if (first && (shared !== undefined || !(this.store instanceof MemoryRateLimitStore))) {
      const timer = setInterval(() => void this.syncBlocks(false), BLOCK_SYNC_MS);
      timer.unref();
      this.blockSync = timer;
    }
  }

  private forget(state: ConnectionState): void {
    this.openConnections--;
    this.local.delete([...state.localKeys]);
    state.localKeys.clear();
    state.plans.clear();
  }

  private buildPlan(tracker: string, specs: readonly TierSpec[], lease?: string): RateLimitPlan {
    return createPlan(tracker.startsWith(CONNECTION_TRACKER) ? this.local : this.store, tracker, specs, lease);
  }

  private storeWentDown(error: unknown): void {
    const message = (error as Error)?.message ?? String(error);
    this.metrics.storeOutage();
    this.logger.warn(
      `The rate-limit store cannot decide (${message}); ` +
        (this.options.failMode === 'open'
          ? 'deciding with local in-memory limits until it answers again'
          : 'refusing with STORE_UNAVAILABLE until it answers again'),
    );
    if (this.subject.observed) this.subject.next({ kind: 'store', state: 'down', error: message });
  }

  private storeCameBack(): void {
    this.logger.log('The rate-limit store answers again; shared limits are back in use');
    if (this.subject.observed) this.subject.next({ kind: 'store', state: 'up' });
  }

  private releaseFailed(error: unknown): void {
    this.logger.warn(`Giving back an open-connection slot failed: ${(error as Error)?.message ?? String(error)}`);
  }

  private codePlan(target: string | object, request: ConsumeRequest): RateLimitPlan {
    if (request === null || typeof request !== 'object' || typeof request.type !== 'string' || request.type === '') {
      throw new TypeError('nestjs-ws-rate-limit: a request needs a non-empty string type');
    }
    const specs = this.routes.specsFor(request.type, request.expensive, request.cost);
    if (typeof target === 'string') return this.buildPlan(`key:${target}`, specs);
    const state = this.connectionOf(target);
    const plan = this.buildPlan(this.trackerOf(target, state), specs);
    rememberLocalKeys(state, plan);
    return plan;
  }

  private trackerOfTarget(target: string | object): string {
    if (typeof target === 'string') return `key:${target}`;
    return this.trackerOf(target, this.connectionOf(target));
  }

  /** The state of a plan's tiers: connection-keyed plans in process memory, others in the store. */
  private async peekPlan(plan: RateLimitPlan): Promise<readonly TierStatus[]> {
    return plan.tracker.startsWith(CONNECTION_TRACKER) ? this.local.peek(plan) : this.shared.peek(plan);
  }
}

/** Notes the keys of a connection-keyed plan, so that they are deleted when the connection closes. */
function rememberLocalKeys(state: ConnectionState, plan: RateLimitPlan): void {
  if (!plan.tracker.startsWith(CONNECTION_TRACKER)) return;
  for (const tier of plan.tiers) state.localKeys.add(tier.key);
}

/** Violations of a connection in the current window, without counting a new one. */
function currentViolations(state: ConnectionState, windowMs: number): number {
  return state.violations === undefined ? 0 : logCount(state.violations, performance.now(), windowMs);
}

/** A rejection by an operator's block or by degradation, lasting `ms`. */
function restriction(kind: 'blocked' | 'degraded', ms: number): RateLimitRejected {
  return {
    allowed: false,
    tier: 'global',
    index: 0,
    retryAfter: Math.max(1, Math.ceil(ms)),
    limit: 0,
    remaining: 0,
    ...(kind === 'blocked' ? { blocked: true as const } : { degraded: true as const }),
  };
}

function disconnectLabel(reason: string, enforced: boolean): string {
  const label = reason === SLOW_CONSUMER_REASON ? 'slow_consumer' : reason === DENIED_REASON ? 'denied' : 'violations';
  return enforced ? label : `shadow_${label}`;
}

function typeOfPlan(plan: RateLimitPlan): string {
  return plan.tiers.find((tier) => tier.spec.tier === 'type')?.spec.suffix.slice(2) ?? '';
}

function once(run: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    run();
  };
}

/** Whether a class or handler lists `WsThrottleGuard` (or a subclass) in `@UseGuards`. */
function usesGuard(target: object): boolean {
  const guards = (Reflect.getMetadata('__guards__', target) as unknown[] | undefined) ?? [];
  return guards.some(
    (guard) => typeof guard === 'function' && (guard as { isWsThrottleGuard?: boolean }).isWsThrottleGuard === true,
  );
}
