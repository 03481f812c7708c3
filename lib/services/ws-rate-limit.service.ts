// Over 400 lines because it is the facade: the public API (README) and the calls the guard,
// filter and adapter make are kept here with their documentation, each a delegation to
// the unit that does the job (pipeline/, connection/, metrics/telemetry.ts, operator-blocks.ts).
import { Inject, Injectable, Logger, Optional, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import { DiscoveryService, ExternalContextCreator, MetadataScanner } from '@nestjs/core';
import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';
import type { Observable } from 'rxjs';
import type { ResolvedWsRateLimitOptions } from '../config/resolve-options.js';
import { looksLikeAddress } from '../config/check-values.js';
import { checkTarget, checkType, describeValue, networkKey } from './code-arguments.js';
import { AnswerOrder, type AnswerSlot } from '../connection/answer-order.js';
import { ConnectionAdmitter, type ConnectionAdmission } from '../connection/connection-admission.js';
import { ConnectionRegistry, transportFor } from '../connection/connection-registry.js';
import {
  CONNECTION_STATE,
  type ConnectionState,
  type TrackedClient,
  type WsClientLike,
} from '../connection/connection-state.js';
import type { WsRateLimitException } from '../exceptions/ws-rate-limit.exception.js';
import type { RateLimitEvent } from '../interfaces/event.interface.js';
import type { RateLimitDecision, RateLimitPlan, TierSpec, TierStatus } from '../interfaces/plan.interface.js';
import { createMetrics } from '../metrics/ws-rate-limit.metrics.js';
import { Telemetry } from '../metrics/telemetry.js';
import { Enforcer, type DisconnectKind } from '../pipeline/enforcer.js';
import { DEFAULT_PLAN, MessageLimiter } from '../pipeline/message-limiter.js';
import { MessagePipeline } from '../pipeline/message-pipeline.js';
import { addressTracker, namedTracker, type Tracker } from '../pipeline/tracker.js';
import type { Route } from '../plans/route-resolver.js';
import { concurrencySpec, figuresSuffix, tokenBucketSpec } from '../plans/tier-specs.js';
import type { UnroutedCode } from '../protocol/rate-limit-protocol.js';
import { MemoryRateLimitStore } from '../storage/memory/memory-store.js';
import type { RateLimitTransport } from '../transports/transport.js';
import { RateLimitStore, type MaybePromise } from '../storage/rate-limit-store.js';
import { closesWithApp, releaseStore, useStore } from '../storage/create-store.js';
import { clientAddressKey } from '../utils/client-ip.js';
import type { MessageId } from '../utils/message-id.js';
import { WS_RATE_LIMIT_OPTIONS } from '../ws-rate-limit.constants.js';
import { AccessRules } from './access-rules.js';
import { OperatorBlocks } from './operator-blocks.js';
import type { BudgetStatus, ClientLimitsStatus, ConsumeRequest } from './limits-status.js';
import { isPromise, SharedStore } from './shared-store.js';
import { globalThrottleGuard, throttleGuardOf } from './startup-report.js';
import { errorText } from '../utils/error-text.js';
import { LoopClock } from '../utils/loop-timeout.js';

export type { ConnectionAdmission } from '../connection/connection-admission.js';
export { frameCode } from '../metrics/telemetry.js';
export { DEFAULT_PLAN } from '../pipeline/message-limiter.js';

export type { ConsumeRequest, BudgetStatus, ClientLimitsStatus } from './limits-status.js';

const noop = (): void => undefined;

/**
 * The limiter's public face: check budgets from code (`consume`, `peek`, `status`,
 * `reset`), block clients (`block`), watch `events$`. It puts together units with one job
 * each, which the guard, the filter and the adapter use through it:
 *
 * - `MessageLimiter` (pipeline/message-limiter.ts): routes, trackers, plans, decisions;
 * - `MessagePipeline` (pipeline/message-pipeline.ts): the steps every inbound message takes;
 * - `Enforcer` (pipeline/enforcer.ts): frames, violations, degradation, closes, shadow mode;
 * - `ConnectionRegistry` and `ConnectionAdmitter` (connection/): connection records, admission;
 * - `OperatorBlocks` (services/operator-blocks.ts) and `Telemetry` (metrics/telemetry.ts).
 */
@Injectable()
export class WsRateLimitService implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger('WsRateLimit');
  private readonly telemetry: Telemetry;
  private readonly limiter: MessageLimiter;
  private readonly registry: ConnectionRegistry;
  private readonly admitter: ConnectionAdmitter;
  private readonly blocks: OperatorBlocks;
  /** The time the event loop ran, which answers' holds are measured on (started by the first connection ordered). */
  private readonly loopClock = new LoopClock();
  private readonly enforcer: Enforcer;
  /** The steps every inbound message takes (used by the guard and the adapter). */
  readonly pipeline: MessagePipeline;
  /** Names this process's open-connection leases in a shared store. */
  private readonly instanceId = `${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
  private readonly connectionSpecs: readonly TierSpec[];

  /** Every decision (when observed), violation, disconnect, connection and store outage. */
  readonly events$: Observable<RateLimitEvent>;

  constructor(
    @Inject(WS_RATE_LIMIT_OPTIONS) readonly options: ResolvedWsRateLimitOptions,
    /** The store shared tiers live in. */
    readonly store: RateLimitStore,
    private readonly discovery: DiscoveryService,
    private readonly metadataScanner: MetadataScanner,
    /** Reads the guards given to `app.useGlobalGuards` (see `globalThrottleGuard`). */
    @Optional() private readonly contexts?: ExternalContextCreator,
  ) {
    if (store.isClosed === true) {
      // A store given in code whose last application closed it (or whose owner did) would
      // answer nothing: every decision would fall to the fail mode without a word. (`=== true`:
      // a store written before `isClosed` may have a method of that name.)
      throw new Error(
        `WsRateLimitModule: option store is a ${store.constructor.name} that is already closed ` +
          '(the last application it was given to shut down and closed it, or its close() was called); ' +
          'give this application a store that is open',
      );
    }
    // The store serves this application from now until it shuts down (see `onApplicationShutdown`).
    useStore(store, this);
    const telemetry = (this.telemetry = new Telemetry(!options.shadow));
    this.events$ = telemetry.events$;
    const shared = new SharedStore(
      store,
      options.failMode,
      options.maxKeys,
      {
        // The embedded store answers in nanoseconds: timing it would cost more than it tells.
        answered: store instanceof MemoryRateLimitStore ? noop : (ms) => telemetry.metrics.storeLatency(ms / 1000),
        failed: () => telemetry.metrics.storeError(),
        down: (error) => telemetry.storeDown(error, options.failMode, this.logger),
        up: () => telemetry.storeUp(this.logger),
      },
      // From onModuleInit, once metrics can count an outage found at start-up.
      false,
    );
    this.limiter = new MessageLimiter(options, store, shared, telemetry, (message) => this.logger.warn(message));
    const access = new AccessRules(options.allowList, options.denyList);
    this.registry = new ConnectionRegistry(options.ipv6Prefix, access, (state) => this.limiter.forget(state));
    this.blocks = new OperatorBlocks(store, (message) => this.logger.warn(message));
    this.enforcer = new Enforcer(options, telemetry, this.logger);
    this.pipeline = new MessagePipeline(this.registry, this.limiter, this.enforcer, access, this.blocks, this.logger);
    const { connection, maxConnectionsPerIp } = options;
    // Keyed by its figures, as the message buckets are (see `figuresSuffix`).
    const rate = tokenBucketSpec(
      'connection',
      figuresSuffix('cr', connection.capacity, connection.refillRate),
      connection.capacity,
      connection.refillRate,
    );
    this.connectionSpecs = Object.freeze(
      maxConnectionsPerIp > 0 ? [rate, concurrencySpec('concurrency', 'cc', maxConnectionsPerIp)] : [rate],
    );
    this.admitter = new ConnectionAdmitter(
      this.limiter,
      this.registry,
      access,
      this.blocks,
      telemetry,
      this.connectionSpecs,
      maxConnectionsPerIp > 0,
      this.instanceId,
      (error) => this.releaseFailed(error),
    );
  }

  /**
   * Validates the limits of every guarded gateway handler under every plan (and the
   * `@Throttle` figures of every other one), so mistakes stop start-up; notes which guard protects each gateway (its steps decide the gateway's
   * unrouted frames too); sets up metrics, and the sharing of blocks when the store shares them.
   */
  async onModuleInit(): Promise<void> {
    const handlers: Array<[object, object]> = [];
    // Every gateway handler's figures are declared, guarded or not: a guard this does not see
    // (given to app.useGlobalGuards after the init, or a NestJS whose config cannot be read)
    // builds its handlers' routes at their first message; types they share must agree
    // whichever comes first.
    const declared: Array<[object, object]> = [];
    // A guard registered with APP_GUARD, or given to app.useGlobalGuards before the init,
    // runs for every handler: all are validated.
    const everyHandler = globalThrottleGuard(this.discovery, this.contexts) === true;
    for (const wrapper of this.discovery.getProviders()) {
      const gateway = wrapper.metatype as (new (...args: unknown[]) => unknown) | undefined;
      if (!gateway || !wrapper.instance || !Reflect.getMetadata('websockets:is_gateway', gateway)) continue;
      const prototype = Object.getPrototypeOf(wrapper.instance) as Record<string, unknown>;
      const classGuard = throttleGuardOf(gateway);
      let guard = classGuard;
      const events: unknown[] = [];
      const guarded = new Set<unknown>();
      for (const name of this.metadataScanner.getAllMethodNames(prototype)) {
        const handler = prototype[name] as object;
        const message: unknown = Reflect.getMetadata('message', handler);
        if (message === undefined) continue;
        events.push(message);
        declared.push([handler, gateway]);
        const handlerGuard = throttleGuardOf(handler);
        guard ??= handlerGuard;
        if (everyHandler || classGuard !== undefined || handlerGuard !== undefined) {
          handlers.push([handler, gateway]);
          guarded.add(message);
        }
      }
      this.pipeline.bindGateway(gateway, events, guard, guarded);
    }
    for (const [name, routes] of this.limiter.plans) {
      try {
        // Declared figures first, so that handlers sharing a type agree in any order.
        for (const [handler, gateway] of declared) routes.declare(handler, gateway);
        for (const [handler, gateway] of handlers) routes.resolve(handler, gateway);
      } catch (error) {
        if (name !== DEFAULT_PLAN) (error as Error).message += ` (under plan "${name}")`;
        throw error;
      }
    }
    this.telemetry.metrics = await createMetrics(
      this.options,
      () => this.registry.count,
      this.logger,
      () => this.limiter.shared.inFallback,
      () => this.memoryStores(),
    );
    this.limiter.shared.watch();
    await this.blocks.sync(true);
  }

  /**
   * Runs after NestJS has closed the servers (also on `app.close()` after a failed start-up):
   * releases the local state, and the store if it closes with the application
   * (`closesWithApp`) and no other application of this process holds it (`useStore`).
   */
  async onApplicationShutdown(): Promise<void> {
    this.blocks.stop();
    this.loopClock.stop();
    this.telemetry.metrics.close();
    this.telemetry.complete();
    await this.limiter.close();
    if (releaseStore(this.store, this) && closesWithApp(this.store, this.options)) await this.store.close();
  }

  // --- Public API ---------------------------------------------------------------------

  /**
   * Spends a message's budget from code: for a tracker named by you (it shares budgets with
   * a `tracker` function returning the same name) or for a connected socket.
   */
  async consume(target: string | object, request: ConsumeRequest): Promise<RateLimitDecision> {
    checkTarget('consume', target);
    const plan = this.codePlan(target, request);
    const decide = (built: RateLimitPlan): MaybePromise<RateLimitDecision> => {
      const decision = this.limiter.decide(built);
      // A socket that closed before (or while its tracker answered): what this made goes too.
      if (typeof target !== 'string') {
        const state = this.connectionOf(target);
        if (state.ended) this.limiter.forget(state);
      }
      return decision;
    };
    return isPromise(plan) ? plan.then(decide) : decide(plan);
  }

  /** The budgets a message would spend, consuming nothing. */
  async peek(target: string | object, request: ConsumeRequest): Promise<readonly TierStatus[]> {
    checkTarget('peek', target);
    return this.limiter.peek(await this.codePlan(target, request));
  }

  /**
   * A client's remaining budget in every tier (the reference article's `get_limits`): the
   * global bucket, each known type (every handler's, plus the module's `types`, plus any
   * asked for), and the expensive window, under the client's plan. While a shared store
   * cannot answer: in fail mode `open`, the local fallback's figures (the ones deciding
   * meanwhile); in `closed`, it rejects with the store's error.
   */
  async status(target: string | object, types: readonly string[] = []): Promise<ClientLimitsStatus> {
    checkTarget('status', target);
    if (!Array.isArray(types)) throw new TypeError('nestjs-ws-rate-limit: status types must be an array of type names');
    for (const type of types) checkType('status', type);
    const tracker = await this.trackerOfTarget(target);
    const plan = typeof target === 'string' ? DEFAULT_PLAN : this.limiter.planNameOf(target, this.connectionOf(target));
    const routes = this.limiter.plans.get(plan)!;
    // Handlers' types, the options', and those asked for: not types named from code, which
    // may be another client's text.
    const names = [...new Set([...routes.handlerTypes(), ...Object.keys(this.options.types), ...types])];
    const specs: TierSpec[] = [routes.globalSpec(1), routes.expensive];
    // Types that share a bucket (past the cap on known types, every new one counts in one)
    // are read from one tier: a plan names each state once.
    const tierOf = new Map<string, number>();
    const places = names.map((name) => {
      const spec = routes.typeSpec(name, 1);
      let place = tierOf.get(spec.suffix);
      if (place === undefined) tierOf.set(spec.suffix, (place = specs.push(spec) - 1));
      return place;
    });
    const statuses = await this.limiter.peek(this.limiter.buildPlan(tracker, specs, ''));
    const budget = (status: TierStatus): BudgetStatus => ({
      remaining: status.remaining,
      capacity: status.limit,
      resetIn: status.resetIn,
    });
    const byType: Record<string, BudgetStatus> = {};
    names.forEach((name, i) => (byType[name] = budget(statuses[places[i]!]!)));
    return { tracker: tracker.key, plan, global: budget(statuses[0]!), types: byType, expensive: budget(statuses[1]!) };
  }

  /**
   * The connection tiers of a client address: its connection-rate bucket and, when capped,
   * its open connections (`remaining` = slots left). `ip` is an address (an IPv6 one counts
   * in its `ipv6Prefix` group, an IPv4-mapped one as IPv4, as the adapter keys them), or a
   * key as the adapter makes it (`2001:db8::/64`).
   */
  async connectionStatus(ip: string): Promise<readonly TierStatus[]> {
    const key =
      isIP(ip) !== 0 ? (clientAddressKey(ip, this.options.ipv6Prefix) ?? ip) : networkKey(ip, this.options.ipv6Prefix);
    const statuses = await this.limiter.peek(
      this.limiter.buildPlan(addressTracker(key), this.connectionSpecs, '', this.instanceId),
    );
    return statuses.map((status) => this.admitter.ownOpen(key, status));
  }

  /**
   * Counts for health checks and tests: sockets tracked and not yet closed, keys held for
   * per-connection tiers, and, with the memory store, its keys and evictions.
   */
  stats(): {
    connections: number;
    localKeys: number;
    storeKeys?: number;
    evictions?: number;
    fallbackKeys?: number;
    fallbackEvictions?: number;
  } {
    const shared =
      this.store instanceof MemoryRateLimitStore ? { storeKeys: this.store.size, evictions: this.store.evictions } : {};
    // The fail-open fallback, once a store outage made it (it decides every shared tier then).
    const fallback = this.limiter.shared.fallback;
    const local = fallback === undefined ? {} : { fallbackKeys: fallback.size, fallbackEvictions: fallback.evictions };
    return { connections: this.registry.count, localKeys: this.limiter.local.size, ...shared, ...local };
  }

  /** The embedded memory stores deciding shared tiers, for the memory-store metrics. */
  private *memoryStores(): Generator<readonly ['memory' | 'fallback', MemoryRateLimitStore]> {
    if (this.store instanceof MemoryRateLimitStore) yield ['memory', this.store];
    const fallback = this.limiter.shared.fallback;
    if (fallback !== undefined) yield ['fallback', fallback];
  }

  /** Gives a tracker (or a socket's tracker) its full budget back in every message tier. */
  async reset(target: string | object): Promise<void> {
    checkTarget('reset', target);
    await this.limiter.reset(await this.trackerOfTarget(target));
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
    await this.blocks.set(this.blockName(target), Date.now() + Math.ceil(durationMs));
  }

  /** Lifts a block set with `block` (on every instance, with a shared store). */
  async unblock(target: string | object): Promise<void> {
    await this.blocks.delete(this.blockName(target));
  }

  /** The blocks in force, as name (`ip:<address>` or `key:<tracker>`) -> until (ms since the epoch). */
  listBlocks(): Readonly<Record<string, number>> {
    return this.blocks.list();
  }

  // --- Used by the guard, filter and adapter -------------------------------------------

  /** The route of a handler (cached) under a connection's plan, or `null` for `@SkipThrottle`. */
  routeOf(handler: object, gateway: object, state?: ConnectionState, client?: object): Route | null {
    return this.limiter.routeOf(handler, gateway, state, client);
  }

  /** Whether a socket already has its limiter record. */
  isTracked(client: object): boolean {
    return (client as TrackedClient)[CONNECTION_STATE] !== undefined;
  }

  /** The limiter state of a socket, created on first use. */
  connectionOf(client: object): ConnectionState {
    return this.registry.of(client);
  }

  /**
   * Starts tracking a socket with the client address the adapter resolved, when no
   * admission record came with it. Its per-connection state is dropped when the socket closes.
   */
  track(
    client: TrackedClient | object,
    address: string | undefined,
    request: IncomingMessage | undefined,
    group?: object,
    transport?: RateLimitTransport,
  ): ConnectionState {
    const record = address === undefined ? undefined : this.registry.create(address, request);
    return this.attach(client, record, request, group, transport);
  }

  /**
   * Attaches a connection's record (made at admission) to its socket when it opens, in a
   * group (its server); a socket with no record gets one from its peer address.
   */
  attach(
    client: object,
    record: ConnectionState | undefined,
    request?: IncomingMessage,
    group?: object,
    transport: RateLimitTransport = transportFor(client),
  ): ConnectionState {
    return this.registry.attach(client, transport, record, group, request);
  }

  /** Orders a connection's answers (see `AnswerOrder`); its adapter calls this when the connection opens. */
  orderAnswers(state: ConnectionState): void {
    const holdMs = this.enforcer.closeGraceMs;
    if (holdMs > 0) this.loopClock.watch();
    state.order = new AnswerOrder(holdMs, this.answersLost, this.loopClock.now);
  }

  /** A policy close that left replies unsent: a warning the first time, then at debug (a flood would repeat it). */
  private readonly answersLost = (unanswered: number): void => {
    const message =
      `A policy close went ahead with ${unanswered} admitted message(s) of the connection unanswered ` +
      `after closeGraceMs (${this.enforcer.closeGraceMs} ms, WS_RATE_LIMIT_CLOSE_GRACE_MS): ` +
      'their replies, if they come, are not sent';
    if (this.answersLostSaid) return this.logger.debug(message);
    this.answersLostSaid = true;
    this.logger.warn(`${message} (said once; later ones at debug level)`);
  };
  private answersLostSaid = false;

  /** The open connections a server accepted (for its heartbeat and shutdown). */
  connectionsOf(server: object): ReadonlySet<ConnectionState> {
    return this.registry.group(server);
  }

  /** Forgets a closed server's group of connections. */
  dropConnections(server: object): void {
    this.registry.dropGroup(server);
  }

  /**
   * Decides a new connection from a client address: deny list, blocks, allow list, then
   * the connection-rate bucket and, when capped, the open-connection count, together. The
   * slot, if taken, is given back by `release` in whichever store took it; `connection` is
   * the record to attach when the socket opens. With `slot: false`, an attempt that opens
   * no connection of its own (a retried socket.io namespace join): the same checks and the
   * connection-rate bucket, but no open-connection slot.
   */
  admitConnection(address: string, request?: IncomingMessage, slot = true): MaybePromise<ConnectionAdmission> {
    return this.admitter.admit(address, request, slot);
  }

  /**
   * A TCP connection the adapter dropped before its request, its address having more than
   * `maxPendingHandshakesPerIp` handshakes under way: counted and streamed as a refused
   * connection (reason `handshakes`; enforced in shadow mode too: it is hygiene, not a limit).
   */
  handshakeDropped(address: string): void {
    this.admitter.dropped(address, 'handshakes');
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
    return this.pipeline.screen(client, state, route, tracker);
  }

  /**
   * Decides a frame that reached no handler (malformed, binary, or an unknown event) with
   * the module's default steps: see `MessagePipeline.runUnrouted` (the adapter uses the
   * steps of the gateway's guard).
   */
  chargeUnrouted(client: object, state: ConnectionState, code: UnroutedCode, id: MessageId | undefined): void {
    this.pipeline.runUnrouted(client, state, code, id, { steps: this.pipeline.defaultSteps, gateway: undefined });
  }

  /**
   * Whose budget a message from this socket spends, per the `tracker` option (a promise
   * only when the `tracker` function returned one).
   */
  trackerOf(client: object, state: ConnectionState): string | Promise<string> {
    return this.limiter.trackerKeyOf(client, state);
  }

  /** The plan of a route for a tracker, built once per connection and reused. */
  planFor(state: ConnectionState, route: Route, tracker: string): RateLimitPlan {
    return this.limiter.planFor(state, route, tracker);
  }

  /**
   * Decides a plan: connection-keyed plans in process memory, the rest in the store (the
   * fail mode deciding when it cannot). Counted in metrics and, when observed, streamed.
   */
  decide(plan: RateLimitPlan, route?: Route): MaybePromise<RateLimitDecision> {
    return this.limiter.decide(plan, route);
  }

  /**
   * Answers a rejected message: counts the violation, sends the `rate_limit` frame, and at
   * the threshold degrades the connection (with `degradeCooldownMs`) or closes it after
   * that frame.
   */
  reject(client: object, exception: WsRateLimitException, slot?: AnswerSlot): void {
    this.enforcer.reject(client, this.registry.of(client), exception, slot);
  }

  /**
   * Shadow mode's answer to a rejected message: the violation is counted, streamed and
   * measured, and nothing is sent or closed.
   */
  shadowReject(client: object, exception: WsRateLimitException): void {
    this.enforcer.record(this.registry.of(client), exception);
  }

  /**
   * Sends a JSON frame unless the socket is not open or its reader is too slow; a slow
   * reader (more than `maxBufferedBytes` unread) is cut off instead. Never throws.
   */
  send(client: WsClientLike, state: ConnectionState, payload: unknown): boolean {
    return this.enforcer.send(client, state, payload);
  }

  /** Ends a connection that did not answer the heartbeat's ping in time (counted and streamed). */
  pingTimedOut(client: object, state: ConnectionState): void {
    this.enforcer.pingTimedOut(client, state);
  }

  /** Cuts off a slow consumer (more than `maxBufferedBytes` unread); returns whether it did. */
  cutOffIfSlow(client: object, state: ConnectionState): boolean {
    return this.enforcer.cutOffIfSlow(client, state);
  }

  /**
   * Closes a socket for a policy reason (`kind`: its `disconnects_total` label; violations
   * unless said). A slow consumer is terminated at once, since a close frame would wait
   * behind the data it does not read. Nothing is closed in shadow mode (the event still says
   * what would have happened).
   */
  disconnect(
    client: WsClientLike,
    state: ConnectionState,
    code: number,
    reason: string,
    tracker: string,
    kind: DisconnectKind = 'violations',
  ): void {
    this.enforcer.disconnect(client, state, code, reason, tracker, kind);
  }

  // --- Internals ---------------------------------------------------------------------

  private blockName(target: string | object): string {
    if (typeof target !== 'string') {
      const state = this.connectionOf(target);
      if (state.ip === undefined) throw new TypeError('nestjs-ws-rate-limit: this socket has no known address');
      return addressTracker(state.ip).key;
    }
    if (isIP(target) !== 0) return addressTracker(clientAddressKey(target, this.options.ipv6Prefix)!).key;
    if (target === '') throw new TypeError('nestjs-ws-rate-limit: block needs an address, a tracker name or a socket');
    // A CIDR or a mistyped address would otherwise block a tracker of that name: no one.
    if (looksLikeAddress(target)) {
      throw new TypeError(`nestjs-ws-rate-limit: block takes one address (not a CIDR): got ${JSON.stringify(target)}`);
    }
    // So would an address with a port, or in brackets.
    const written = /^\[([^\]]*)\](?::\d*)?$/.exec(target) ?? /^([\d.]+):\d*$/.exec(target);
    if (written !== null && (isIP(written[1]!) !== 0 || looksLikeAddress(written[1]!))) {
      throw new TypeError(
        `nestjs-ws-rate-limit: block takes an address without brackets or a port (${written[1]}): got ${JSON.stringify(target)}`,
      );
    }
    return namedTracker(target).key;
  }

  private releaseFailed(error: unknown): void {
    this.logger.warn(`Giving back an open-connection slot failed: ${errorText(error)}`);
  }

  private codePlan(target: string | object, request: ConsumeRequest): MaybePromise<RateLimitPlan> {
    if (request === null || typeof request !== 'object') {
      throw new TypeError('nestjs-ws-rate-limit: a request needs a non-empty string type');
    }
    checkType('a request', request.type);
    if (request.expensive !== undefined && typeof request.expensive !== 'boolean') {
      throw new TypeError(
        `nestjs-ws-rate-limit: a request's expensive is true, false or left out: got ${describeValue(request.expensive)}`,
      );
    }
    if (typeof target === 'string') {
      const specs = this.limiter.routes.specsFor(request.type, request.expensive, request.cost);
      return this.limiter.buildPlan(this.trackerOfName(target), specs, request.type);
    }
    const state = this.connectionOf(target);
    // A socket's own plan, as its messages and `status` have it.
    const routes = this.limiter.plans.get(this.limiter.planNameOf(target, state))!;
    const specs = routes.specsFor(request.type, request.expensive, request.cost);
    const build = (tracker: Tracker): RateLimitPlan => {
      const plan = this.limiter.buildPlan(tracker, specs, request.type);
      this.limiter.remember(state, plan);
      return plan;
    };
    const tracker = this.limiter.trackerOf(target, state);
    return isPromise(tracker) ? tracker.then(build) : build(tracker);
  }

  /**
   * The tracker a string names: with `tracker: 'ip'`, an IP address is that address's (an
   * IPv6 one's network, as its connections count), as the messages of its connections
   * spend; anything else is a tracker name, as a `tracker` function returns it.
   */
  private trackerOfName(target: string): Tracker {
    if (this.options.tracker === 'ip' && isIP(target) !== 0) {
      return addressTracker(clientAddressKey(target, this.options.ipv6Prefix)!);
    }
    return namedTracker(target);
  }

  private trackerOfTarget(target: string | object): MaybePromise<Tracker> {
    if (typeof target === 'string') return this.trackerOfName(target);
    return this.limiter.trackerOf(target, this.connectionOf(target));
  }
}
