// Over 400 lines: the store composes its units (client factory, call gate, lease book, plan
// compiler, reservations) and keeps the RateLimitStore contract's methods and their docs here.
import { Logger } from '@nestjs/common';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { WsRateLimitConfigError } from '../../exceptions/ws-rate-limit-config.error.js';
import {
  ALLOWED,
  AlgorithmKind,
  type RateLimitDecision,
  type RateLimitPlan,
  type TierStatus,
} from '../../interfaces/plan.interface.js';
import { RateLimitStore, type MaybePromise } from '../rate-limit-store.js';
import { BlockCache } from './block-cache.js';
import { CallGate, noop } from './call-gate.js';
import type { Redis } from './ioredis-types.js';
import {
  buildClient,
  endClient,
  redisClassOf,
  ownedClients,
  whenReady,
  type RedisStoreClient,
} from './client-factory.js';
import { LeaseBook } from './lease-book.js';
import { allowedReply, decisionOf, PlanCompiler, statusesOf, unexpected, type CompiledPlan } from './plan-compiler.js';
import { DEFAULT_PLAN_SCRIPTS, PlanScriptBook } from './plan-scripts.js';
import { KEY_LAYOUT_VERSION, trackerHash, trackerHashOf } from './redis-keys.js';
import {
  DEFAULT_BLOCK_CACHE_ENTRIES,
  DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
  DEFAULT_REDIS_KEY_PREFIX,
  DEFAULT_REDIS_LEASE_TTL_MS,
  type RedisStoreOptions,
} from './redis-store.options.js';
import { reservationBook, type ReservationBook } from './reservations.js';
import { registerScripts, type Scripts } from './script-commands.js';
import { evictionWarning, readEvictionPolicies, readFieldTtlSupport, type FieldTtlMode } from './server-checks.js';
import { watchSentinels, type SentinelWatch } from './sentinel-watch.js';
import { validateOptions } from './validate-options.js';

export type { RedisStoreClient } from './client-factory.js';
export { sentinelClientOptions } from './client-factory.js';

/**
 * The shared store on Redis (standalone, Sentinel or Cluster) through ioredis. One decision
 * is one round trip running one Lua script that checks every tier of the plan and commits
 * all of them or none, with the memory store's math on Redis's own clock.
 *
 * Calls never wait in ioredis's offline queue and never outlive `commandTimeoutMs`: a
 * failure rejects with `RedisStoreUnavailableError` (or throws it at once while the circuit
 * breaker is open), and the caller's fail mode decides. Plans known to be refused are
 * refused again from a local block cache without a Redis call.
 *
 * The jobs live in units of their own: the client factory (`client-factory.ts`), the call
 * gate with the deadline and the breaker (`call-gate.ts`), the block cache, the lease book
 * (`lease-book.ts`), the plan compiler (`plan-compiler.ts`) and the token reservations
 * (`reservations.ts`, opt-in); this class composes them (hence its length past 400 lines).
 *
 * @example
 * const store = await createRedisStore({ url: process.env.REDIS_URL });
 */
export class RedisRateLimitStore extends RateLimitStore {
  /**
   * Creates a store, and its client when the options name a server (`url`, `sentinel`,
   * `cluster`) rather than give one; then waits up to `readyTimeoutMs` for the connection.
   * Throws `WsRateLimitConfigError` for invalid options, never for an unreachable Redis.
   */
  static async create(options: RedisStoreOptions): Promise<RedisRateLimitStore> {
    validateOptions(options);
    if (options.client !== undefined) return new RedisRateLimitStore(options);
    const ioredis = await import('ioredis');
    const client = buildClient(ioredis, options);
    ownedClients.add(client);
    let store: RedisRateLimitStore;
    try {
      store = new RedisRateLimitStore({ ...options, client, url: undefined, sentinel: undefined, cluster: undefined });
    } catch (error) {
      // Refused after the client was made: it is ours to end.
      client.disconnect();
      throw error;
    }
    // A Sentinel client the store made follows the sentinels' announcements.
    if (options.sentinel !== undefined) {
      store.sentinelWatch = watchSentinels(redisClassOf(ioredis), client as Redis);
    }
    await store.whenReady(options.readyTimeoutMs ?? 2000);
    // Ready: the eviction-policy check has started; its warning (if any) comes before the store.
    await store.evictionPolicyChecked;
    return store;
  }

  /** The ioredis client in use. */
  readonly client: RedisStoreClient;
  /** Names this instance's open-connection leases. */
  readonly instanceId: string;
  private readonly owned: boolean;
  private readonly prefix: string;
  /** The hash of operator blocks, shared by every instance using the same prefix. */
  private readonly blocksKey: string;
  private readonly localNow: () => number;
  /** `clock: 'app'`: the blocks script is given this process's time. */
  private readonly appClockBlocks: boolean;
  private readonly cache: BlockCache | undefined;
  private readonly onAvailabilityChange: RedisStoreOptions['onAvailabilityChange'];
  /** Listeners of `watchAvailability` (the module's fail mode). */
  private readonly availabilityListeners = new Set<(available: boolean, cause?: unknown) => void>();
  private readonly onWarning: (message: string) => void;
  /** The start-up checks (`maxmemory-policy`, hash-field TTLs), once the client is first ready. */
  private policyCheck: Promise<void> | undefined;
  /** The sentinels' announcements followed for a Sentinel client the store made. */
  private sentinelWatch: SentinelWatch | undefined;
  /** Whether the warning of a master name no sentinel knows was given (once per store). */
  private unknownMasterWarned = false;
  private readonly connectionError = (error: unknown): void => {
    this.gate.noteConnectionError(error);
    this.warnUnknownMaster(error);
  };
  /**
   * How the store writes hash-field TTLs (`FieldTtlMode`): not 0 once every master is known
   * to keep them (Redis 7.4+) and the option `hashFieldTtls` is not `false`; fields then
   * expire one by one in the tracker hash.
   */
  private fieldTtls: FieldTtlMode = 0;
  /** Option `hashFieldTtls`: false keeps one TTL per tracker hash on every server. */
  private readonly useFieldTtls: boolean;
  /**
   * Whether `fieldTtls` is what the server was read to keep (once its first read is over),
   * or what the option makes it whatever the server (`hashFieldTtls: false`).
   */
  private serverRead = false;
  private readonly scripts: Scripts;
  private readonly gate: CallGate;
  private readonly compiler: PlanCompiler;
  /** The consume scripts of plan shapes (option `planScripts`); undefined when off. */
  private readonly planScripts: PlanScriptBook | undefined;
  private readonly leases: LeaseBook;
  /** Token reservations (option `reservations`); undefined when off. */
  private readonly reservations: ReservationBook | undefined;
  private closed = false;
  private readonly listeners: [string, (...args: unknown[]) => void][];

  /**
   * A store on a client you own (never closed by the store). To have the store create and
   * close its client from a URL, Sentinel or Cluster options, use `createRedisStore`.
   */
  constructor(options: RedisStoreOptions) {
    super();
    validateOptions(options);
    if (options.client === undefined) {
      throw new WsRateLimitConfigError(
        'redis store: `new RedisRateLimitStore` needs `client`; use createRedisStore() to connect by url, sentinel or cluster',
      );
    }
    const client = options.client;
    this.client = client;
    this.owned = ownedClients.has(client);
    // The client's own keyPrefix wins, so no prefix is applied twice. Like the store's, it
    // may not hold a brace: `{}` would leave a tracker's keys on several Cluster slots
    // (CROSSSLOT), a tag like `{app}` would put every tracker on one.
    const clientPrefix = client.options.keyPrefix;
    if (clientPrefix !== undefined && /[{}]/.test(clientPrefix)) {
      throw new WsRateLimitConfigError(
        `redis store: the client's keyPrefix ${JSON.stringify(clientPrefix)} holds { or }: every key of a tracker must hash to one slot of its own`,
      );
    }
    this.prefix = clientPrefix ? '' : (options.keyPrefix ?? DEFAULT_REDIS_KEY_PREFIX);
    this.blocksKey = `${this.prefix}blocks`;
    const appClock = options.clock === 'app' ? (options.now ?? Date.now) : undefined;
    this.appClockBlocks = appClock !== undefined;
    this.localNow = options.now ?? (() => performance.now());
    const leaseTtlMs = options.leaseTtlMs ?? DEFAULT_REDIS_LEASE_TTL_MS;
    const cache = options.blockCache ?? true;
    this.cache =
      cache === false
        ? undefined
        : new BlockCache((cache === true ? undefined : cache.maxEntries) ?? DEFAULT_BLOCK_CACHE_ENTRIES);
    this.onAvailabilityChange = options.onAvailabilityChange;
    this.onWarning = options.onWarning ?? defaultWarn;
    this.instanceId = options.instanceId ?? randomBytes(9).toString('base64url');
    this.scripts = registerScripts(client);
    this.gate = new CallGate({
      client,
      probeKey: `${this.prefix}probe`,
      deadlineMs: options.commandTimeoutMs ?? DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
      failureThreshold: options.breaker?.failureThreshold ?? 3,
      probeIntervalMs: options.breaker?.probeIntervalMs ?? 250,
      onChange: (available, cause) => this.notify(available, cause),
      // Refusals cached before an outage may describe state Redis no longer holds (a restart
      // that lost its data, a failover to a replica behind): forgotten, each cached tracker
      // costs one call that caches it again if Redis still refuses it.
      onRecover: () => {
        this.cache?.clear();
        this.leases.resyncAll();
      },
    });
    this.useFieldTtls = options.hashFieldTtls ?? true;
    this.serverRead = !this.useFieldTtls;
    const planScripts = options.planScripts ?? DEFAULT_PLAN_SCRIPTS;
    this.planScripts = planScripts === 0 ? undefined : new PlanScriptBook(client, planScripts);
    this.compiler = new PlanCompiler({
      instanceId: this.instanceId,
      leaseTtlMs,
      appClock,
      planScripts: this.planScripts,
    });
    this.leases = new LeaseBook({
      client,
      gate: this.gate,
      leases: this.scripts.leases,
      instanceId: this.instanceId,
      leaseTtlMs,
      appClock,
    });

    this.reservations = reservationBook(options.reservations, appClock !== undefined, {
      gate: this.gate,
      canCall: () => !this.gate.isOpen && client.status === 'ready',
      reserve: this.scripts.reserve,
      unreserve: this.scripts.unreserve,
      owner: this.instanceId,
      fieldTtls: () => this.fieldTtls,
    });

    const lost = (): void => this.gate.trip(new Error('the Redis connection closed'));
    this.listeners = [
      ['close', lost],
      ['end', lost],
      [
        'ready',
        () => {
          this.gate.noteConnectionError(undefined);
          this.readServer();
          this.gate.probe();
        },
      ],
      // Without a listener ioredis prints every connection error; the breaker reports outages,
      // naming the latest of them.
      ['error', this.connectionError],
      ['sentinelError', this.connectionError],
    ];
    for (const [event, listener] of this.listeners) client.on(event, listener);
    if (client.status === 'wait') client.connect().catch(noop);
    if (client.status === 'ready') this.readServer();
  }

  /**
   * Warns once when a sentinel answers that it knows no master of the configured name (ioredis
   * asks the next one; if none knows it, it retries for ever, and the outage alone would say
   * only that the connection is connecting).
   */
  private warnUnknownMaster(error: unknown): void {
    if (this.unknownMasterWarned || !(error instanceof Error)) return;
    // ioredis's words for GET-MASTER-ADDR-BY-NAME answered nil, or Redis's for another query.
    if (!/got an invalid reply: null|No such master with that name/.test(error.message)) return;
    this.unknownMasterWarned = true;
    const name = (this.client.options as { name?: string }).name;
    this.warn(
      `redis store: a sentinel knows no master named ${JSON.stringify(name)} (${error.message}); the others are ` +
        'asked, and if none knows it the store stays unavailable: check sentinel.name (module option redis.sentinelName, WS_RATE_LIMIT_REDIS_SENTINEL_NAME)',
    );
  }

  /**
   * Settles once the start-up check of Redis's `maxmemory-policy` is over: within about a
   * second of the client's first `ready`, and at once before it. The check runs once, and
   * warns through `onWarning` when Redis may evict limiter keys.
   */
  get evictionPolicyChecked(): Promise<void> {
    return this.policyCheck ?? Promise.resolve();
  }

  /** False while the circuit breaker is open (Redis unreachable, frozen or failing). */
  override get available(): boolean {
    return !this.gate.isOpen && !this.closed;
  }

  /**
   * Follows the circuit breaker: told when it opens (`false`) and closes (`true`); a listener
   * added while it is open is told at once (a store that could not reach Redis at start-up).
   */
  override watchAvailability(listener: (available: boolean, cause?: unknown) => void): () => void {
    this.availabilityListeners.add(listener);
    const outage = this.gate.outage;
    if (outage !== undefined && !this.closed) {
      try {
        listener(false, outage);
      } catch {
        // As in `notify`: a listener's failure is its own.
      }
    }
    return () => void this.availabilityListeners.delete(listener);
  }

  /**
   * The version of the key layout this store reads and writes (see `scripts.ts`); keys of
   * the previous layout are ignored and expire.
   */
  get keyLayoutVersion(): number {
    return KEY_LAYOUT_VERSION;
  }

  /**
   * Whether the store gives tracker-hash fields TTLs of their own: the server keeps them
   * (Redis 7.4+), as read at start-up and again at each reconnect (false until a read
   * succeeds), and the option `hashFieldTtls` is not `false`.
   */
  get hashFieldTtls(): boolean {
    return this.fieldTtls !== 0;
  }

  /**
   * Calls that missed the deadline while Redis answered others in time: failed (the fail
   * mode decided) without counting towards the breaker. A load figure, for metrics.
   */
  get deadlineMissesUnderLoad(): number {
    return this.gate.busyMisses;
  }

  /** Plan shapes decided by a consume script of their own so far (option `planScripts`). */
  get planScriptCount(): number {
    return this.planScripts?.size ?? 0;
  }

  /** Refusals held by the block cache (expired ones until swept). */
  get blockedPlans(): number {
    return this.cache?.size ?? 0;
  }

  /**
   * `<prefix>{<sha1(tracker), base64url>}:<suffix>`: the hash has a fixed length, so no
   * tracker text (which may come from a client) can pick the Cluster slot or make two
   * trackers' keys equal, and every tier of one tracker shares the slot.
   */
  override key(tracker: string, suffix: string): string {
    return `${this.prefix}{${trackerHash(tracker)}}:${suffix}`;
  }

  consume(plan: RateLimitPlan): MaybePromise<RateLimitDecision> {
    if (plan.tiers.length === 0) return ALLOWED;
    const compiled = this.compiler.compile(plan);
    const reservable = this.reservations?.reservable(plan);
    if (reservable !== undefined) {
      const spent = this.reservations!.take(reservable);
      if (spent !== undefined) return spent;
    }
    // An empty cache (the usual case) costs no lookup and no clock read.
    if (this.cache !== undefined && this.cache.size !== 0) {
      const blocked = this.cache.get(compiled.blockKey, this.localNow());
      if (blocked !== undefined) return blocked;
    }
    this.gate.check();
    // When the call is sent: a refusal is cached from then (see `decision`).
    const sentAt = this.cache === undefined ? 0 : this.localNow();
    if (reservable !== undefined && this.reservations!.wants(reservable)) {
      return this.reservations!.consume(
        reservable,
        () => this.consume(plan),
        (reply, delivered) => this.decision(compiled, reply, delivered, sentAt),
      );
    }
    const own =
      compiled.own === undefined ? undefined : this.compiler.callOwn(compiled, this.fieldTtls, this.serverRead);
    if (own !== undefined) {
      return this.gate.within(own, (reply, delivered) => this.decision(compiled, reply, delivered, sentAt));
    }
    const args = this.compiler.argsOf(compiled, this.fieldTtls);
    if (compiled.leaseKeys.length === 0) {
      return this.gate.within(this.scripts.consume.withArgs(args), (reply, delivered) =>
        this.decision(compiled, reply, delivered, sentAt),
      );
    }
    this.leases.begin(compiled.leaseKeys);
    return this.gate.within(
      this.scripts.consume(...args),
      (reply, delivered) => this.decision(compiled, reply, delivered, sentAt),
      (reply, delivered) => {
        const allowed = allowedReply(reply);
        this.leases.settled(compiled.leaseKeys, compiled.leaseCosts, plan.lease ?? '', allowed, delivered);
        // Redis took the leases after the caller had its answer (the deadline passed, and the
        // fail mode decided): no connection holds them, so they go back now, not at the next
        // refresh (a third of the lease TTL, during which the address lacked those slots on
        // every instance).
        if (allowed && !delivered && compiled.releaseArgs !== undefined) {
          this.gate.within(this.scripts.release(...compiled.releaseArgs), noop).catch(noop);
        }
      },
    );
  }

  async peek(plan: RateLimitPlan): Promise<readonly TierStatus[]> {
    if (plan.tiers.length === 0) return [];
    const compiled = this.compiler.compile(plan);
    this.gate.check();
    return this.gate.within(this.scripts.peek(...this.compiler.argsOf(compiled, this.fieldTtls)), (reply) =>
      statusesOf(plan, reply),
    );
  }

  /**
   * Gives back the plan's open-connection leases. A release that cannot reach Redis does
   * not fail: this instance forgets the lease at once, and brings Redis in line with what it
   * holds as soon as Redis answers again (or at its next lease refresh).
   */
  async release(plan: RateLimitPlan): Promise<void> {
    const compiled = this.compiler.compile(plan);
    if (compiled.releaseArgs === undefined) return;
    this.leases.forget(compiled.leaseKeys, compiled.leaseCosts, plan.lease ?? '');
    try {
      this.gate.check();
      await this.gate.within(this.scripts.release(...compiled.releaseArgs), noop);
    } catch {
      this.leases.markDirty(compiled.leaseKeys);
    }
    for (const key of compiled.leaseKeys) this.leases.dropIfIdle(key);
  }

  /**
   * Resets tier keys: each key (a sliding log's, a lease hash, a key of layout 1) and its
   * field in the tracker hash, one script call per tracker.
   */
  async delete(keys: readonly string[]): Promise<void> {
    this.cache?.clear();
    // Only the reservations of plans with a reset tier: the others' buckets are untouched.
    this.reservations?.clear(keys);
    if (keys.length === 0) return;
    this.gate.check();
    this.leases.reset(keys);
    const groups = new Map<string, { keys: string[]; fields: string[] }>();
    for (const key of keys) {
      const { hash, field } = trackerHashOf(key);
      let group = groups.get(hash);
      if (group === undefined) groups.set(hash, (group = { keys: [], fields: [] }));
      group.keys.push(key);
      group.fields.push(field);
    }
    await Promise.all(
      [...groups].map(([hash, group]) =>
        this.gate.within(
          this.scripts.forget(String(group.keys.length + 1), hash, ...group.keys, ...group.fields),
          noop,
        ),
      ),
    );
  }

  /** Records an operator's block in Redis, where every instance reads it. */
  override async setBlock(name: string, until: number): Promise<void> {
    this.gate.check();
    await this.gate.within(
      this.scripts.blocks('1', this.blocksKey, 'set', name, String(until), this.blocksNow()),
      noop,
    );
  }

  /** Lifts a block on every instance. */
  override async deleteBlock(name: string): Promise<void> {
    this.gate.check();
    await this.gate.within(this.scripts.blocks('1', this.blocksKey, 'delete', name, '', this.blocksNow()), noop);
  }

  /**
   * Every block any instance set and Redis still holds: name -> until (ms since the epoch).
   * Some may have ended: each instance judges them on its monotonic clock (filtered here by
   * this process's wall clock, a forward step of it would drop live blocks from the list,
   * and the instance would lift them).
   */
  override async listBlocks(): Promise<Readonly<Record<string, number>>> {
    this.gate.check();
    return this.gate.within(this.client.hgetall(this.blocksKey), (reply) => {
      if (reply === null || typeof reply !== 'object') throw unexpected('HGETALL', reply);
      const held: Record<string, number> = Object.create(null) as Record<string, number>;
      for (const [name, until] of Object.entries(reply as Record<string, string>)) {
        const end = Number(until);
        if (Number.isFinite(end)) held[name] = end;
      }
      return held;
    });
  }

  /**
   * The time the blocks script cleans up ended blocks by: '' (Redis's own), or, with
   * `clock: 'app'` (a Redis refusing `TIME` in scripts), this process's wall clock, which
   * blocks' ends are counted on.
   */
  private blocksNow(): string {
    return this.appClockBlocks ? String(Date.now()) : '';
  }

  /** Whether `close()` was called: the store answers nothing any more (see `RateLimitStore.isClosed`). */
  override get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Whether the store made its client (from `url`, `sentinel` or `cluster`): closing the
   * store quits it, and an application the store is given to closes it at shutdown.
   */
  get ownsClient(): boolean {
    return this.owned;
  }

  /**
   * Stops the lease refresh and the breaker's probe, gives back this instance's leases and
   * the unspent slots of its token reservations (best effort, within the deadline), and closes the client if the store created it.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.gate.close();
    await Promise.all([this.leases.close(), this.reservations?.close()]);
    this.cache?.clear();
    for (const [event, listener] of this.listeners) {
      if (event !== 'error' || !this.owned) this.client.off(event, listener);
    }
    if (!this.owned) return;
    this.sentinelWatch?.close();
    await endClient(this.client);
  }

  /**
   * Resolves once the client is `ready`, or after `timeoutMs` whatever its state (calls made
   * before then are refused at once and the fail mode decides).
   */
  whenReady(timeoutMs: number): Promise<void> {
    return whenReady(this.client, timeoutMs);
  }

  /**
   * The decision of a reply to a call sent at `sentAt` (the local clock). A refusal is cached
   * until `sentAt + retryAfter` at the latest: Redis decided it between then and now, so its
   * wait ends no later (a little earlier than in truth, by up to the round trip: the next
   * decision then asks Redis). Held from the reply's arrival, a reply read late (the event
   * loop stalled meanwhile) kept refusing for as long as it waited to be read, past the time
   * Redis would admit again. The retryAfter told (this decision's and the cache's) counts down
   * from the reply's arrival: never shorter than Redis's wait.
   */
  private decision(compiled: CompiledPlan, reply: unknown, delivered: boolean, sentAt: number): RateLimitDecision {
    const decision = decisionOf(compiled, reply);
    if (decision.allowed || !delivered || this.cache === undefined) return decision;
    const spec = compiled.plan.tiers[decision.index]!.spec;
    if (spec.kind === AlgorithmKind.TokenBucket) {
      this.cache.set(compiled.blockKey, decision, this.localNow(), spec.refillRate / 1000, spec.cost, sentAt);
    } else if (spec.kind !== AlgorithmKind.Concurrency) {
      this.cache.set(compiled.blockKey, decision, this.localNow(), 0, 0, sentAt);
    }
    return decision;
  }

  /**
   * At every `ready` (start-up and each reconnect, so a server upgraded or replaced in place
   * is read again), reads whether the server has hash-field TTLs; at the first, also starts
   * the check of `maxmemory-policy`, once per store.
   */
  private readServer(): void {
    if (this.closed) return;
    const fieldTtls = readFieldTtlSupport(this.client).then((mode) => {
      // Unknown (INFO refused or late): the mode stays as it was.
      if (mode !== undefined && !this.closed) this.fieldTtls = this.useFieldTtls ? mode : 0;
      this.serverRead = true;
    });
    if (this.policyCheck !== undefined) return;
    const policies = readEvictionPolicies(this.client);
    this.policyCheck = Promise.all([policies, fieldTtls]).then(([policies]) => {
      const warning = evictionWarning(policies, this.client.isCluster);
      if (warning !== undefined && !this.closed) this.warn(warning);
    });
  }

  private warn(message: string): void {
    try {
      this.onWarning(message);
    } catch {
      // A listener's failure must not break start-up.
    }
  }

  private notify(available: boolean, cause?: unknown): void {
    for (const listener of [this.onAvailabilityChange, ...this.availabilityListeners]) {
      try {
        listener?.(available, cause);
      } catch {
        // A listener's failure must not break the client's event handling.
      }
    }
  }
}

/**
 * Creates a Redis store (and its client, unless `client` is given), waiting up to
 * `readyTimeoutMs` for the connection. ioredis is loaded only here, so applications on the
 * memory store need not install it.
 * @example
 * WsRateLimitModule.forRootAsync({ useFactory: async () => ({ store: await createRedisStore({ url }) }) })
 */
export function createRedisStore(options: RedisStoreOptions): Promise<RedisRateLimitStore> {
  return RedisRateLimitStore.create(options);
}

let logger: Logger | undefined;

function defaultWarn(message: string): void {
  (logger ??= new Logger('WsRateLimit')).warn(message);
}
