import { Logger } from '@nestjs/common';
import { createHash, randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Cluster, ClusterOptions, Redis, RedisOptions } from 'ioredis';
import { WsRateLimitConfigError } from '../../exceptions/ws-rate-limit-config.error.js';
import {
  ALLOWED,
  ALLOWED_NEAR_LIMIT,
  AlgorithmKind,
  type RateLimitDecision,
  type RateLimitPlan,
  type RateLimitRejected,
  type TierStatus,
} from '../../interfaces/plan.interface.js';
import { RateLimitStore, type MaybePromise } from '../rate-limit-store.js';
import { BlockCache } from './block-cache.js';
import { RedisStoreUnavailableError } from './redis-store.error.js';
import {
  DEFAULT_BLOCK_CACHE_ENTRIES,
  DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
  DEFAULT_REDIS_KEY_PREFIX,
  DEFAULT_REDIS_LEASE_TTL_MS,
  type RedisSentinelOptions,
  type RedisStoreOptions,
} from './redis-store.options.js';
import { BLOCKS_LUA, CONSUME_LUA, LEASES_LUA, PEEK_LUA, RELEASE_LUA } from './scripts.js';

/** An ioredis client: standalone, Sentinel or Cluster. */
export type RedisStoreClient = Redis | Cluster;

type ScriptCall = (...args: string[]) => Promise<unknown>;

interface Scripts {
  readonly consume: ScriptCall;
  readonly peek: ScriptCall;
  readonly release: ScriptCall;
  readonly leases: ScriptCall;
  readonly blocks: ScriptCall;
}

/** A plan turned into script arguments once; plans are reused, so this is cached. */
interface CompiledPlan {
  readonly plan: RateLimitPlan;
  /** `[numkeys, ...KEYS, ...ARGV]` of consume and peek, with the per-call slots empty. */
  readonly args: readonly string[];
  readonly nowAt: number;
  readonly nonceAt: number;
  readonly usesNonce: boolean;
  /** Names the plan (keys and costs) in the block cache. */
  readonly blockKey: string;
  readonly leaseKeys: readonly string[];
  readonly leaseCosts: readonly number[];
  /** `[numkeys, ...KEYS, ...ARGV]` of release; undefined without concurrency tiers. */
  readonly releaseArgs: readonly string[] | undefined;
}

/** What this instance holds on one concurrency key. */
interface LeaseEntry {
  /** Units per lease name, as this process knows them. */
  readonly held: Map<string, number>;
  /** Consumes in flight on the key: the key is only touched, not synced, meanwhile. */
  pending: number;
  /** Redis may differ from `held` (a call failed or timed out): sync at the next chance. */
  dirty: boolean;
}

/** Clients the store created (and so closes); a client given in options is never closed. */
const ownedClients = new WeakSet<object>();

const RETRY_CAP_MS = 1000;
/** Reconnect delays 100, 200, ... ms, capped at 1 s (ioredis 6 would back off to 5 s). */
const retryStrategy = (times: number): number => Math.min(100 * times, RETRY_CAP_MS);
/**
 * A demoted master answers `READONLY`: reconnect, which through Sentinel (or a DNS name that
 * moved) finds the new master; a standalone URL reconnects to the same server, and the
 * breaker stays open until it is a master again.
 */
const reconnectOnError = (error: Error): boolean => error.message.startsWith('READONLY');
const noop = (): void => undefined;
/** `ROLE` refused by the server itself (renamed or disabled, as some managed services do): it answered. */
const roleUnsupported = (error: unknown): null => {
  if ((error as { name?: string })?.name === 'ReplyError' && !String((error as Error).message).startsWith('READONLY')) {
    return null;
  }
  throw error;
};

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
    const store = new RedisRateLimitStore({
      ...options,
      client,
      url: undefined,
      sentinel: undefined,
      cluster: undefined,
    });
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
  private readonly deadlineMs: number;
  private readonly appClock: (() => number) | undefined;
  private readonly localNow: () => number;
  private readonly leaseTtlMs: number;
  private readonly cache: BlockCache | undefined;
  private readonly failureThreshold: number;
  private readonly probeIntervalMs: number;
  private readonly onAvailabilityChange: RedisStoreOptions['onAvailabilityChange'];
  private readonly onWarning: (message: string) => void;
  /** The start-up check of `maxmemory-policy`, once the client is first ready. */
  private policyCheck: Promise<void> | undefined;
  private readonly scripts: Scripts;
  private readonly compiled = new WeakMap<RateLimitPlan, CompiledPlan>();
  private readonly leases = new Map<string, LeaseEntry>();
  private leaseTimer: NodeJS.Timeout | undefined;
  private probeTimer: NodeJS.Timeout | undefined;
  private probing = false;
  private failures = 0;
  /** Set while the breaker is open: the error every call gets. */
  private openError: RedisStoreUnavailableError | undefined;
  private closed = false;
  private nonce = 0;
  /** Starts every sliding-log member: random per store object, so members never repeat across restarts or stores. */
  private readonly noncePrefix = `${randomBytes(9).toString('base64url')}.`;
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
    // The client's own keyPrefix wins, so no prefix is applied twice.
    this.prefix = client.options.keyPrefix ? '' : (options.keyPrefix ?? DEFAULT_REDIS_KEY_PREFIX);
    this.blocksKey = `${this.prefix}blocks`;
    this.deadlineMs = options.commandTimeoutMs ?? DEFAULT_REDIS_COMMAND_TIMEOUT_MS;
    this.appClock = options.clock === 'app' ? (options.now ?? Date.now) : undefined;
    this.localNow = options.now ?? (() => performance.now());
    this.leaseTtlMs = options.leaseTtlMs ?? DEFAULT_REDIS_LEASE_TTL_MS;
    const cache = options.blockCache ?? true;
    this.cache =
      cache === false
        ? undefined
        : new BlockCache((cache === true ? undefined : cache.maxEntries) ?? DEFAULT_BLOCK_CACHE_ENTRIES);
    this.failureThreshold = options.breaker?.failureThreshold ?? 3;
    this.probeIntervalMs = options.breaker?.probeIntervalMs ?? 250;
    this.onAvailabilityChange = options.onAvailabilityChange;
    this.onWarning = options.onWarning ?? defaultWarn;
    this.instanceId = options.instanceId ?? randomBytes(9).toString('base64url');
    this.scripts = registerScripts(client);

    const lost = (): void => this.trip(new Error('the Redis connection closed'));
    this.listeners = [
      ['close', lost],
      ['end', lost],
      [
        'ready',
        () => {
          this.checkEvictionPolicy();
          this.probe();
        },
      ],
      // Without a listener ioredis prints every connection error; the breaker reports outages.
      ['error', noop],
    ];
    for (const [event, listener] of this.listeners) client.on(event, listener);
    if (client.status === 'wait') client.connect().catch(noop);
    if (client.status === 'ready') this.checkEvictionPolicy();
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
    return this.openError === undefined && !this.closed;
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
    const compiled = this.compile(plan);
    if (this.cache !== undefined) {
      const blocked = this.cache.get(compiled.blockKey, this.localNow());
      if (blocked !== undefined) return blocked;
    }
    this.gate();
    const args = this.argsOf(compiled);
    if (compiled.leaseKeys.length === 0) {
      return this.within(this.scripts.consume(...args), (reply, delivered) =>
        this.decision(compiled, reply, delivered),
      );
    }
    for (const key of compiled.leaseKeys) this.leaseEntry(key).pending++;
    return this.within(
      this.scripts.consume(...args),
      (reply, delivered) => this.decision(compiled, reply, delivered),
      (reply, delivered) => this.leasesSettled(compiled, reply, delivered),
    );
  }

  async peek(plan: RateLimitPlan): Promise<readonly TierStatus[]> {
    const tiers = plan.tiers;
    if (tiers.length === 0) return [];
    const compiled = this.compile(plan);
    this.gate();
    return this.within(this.scripts.peek(...this.argsOf(compiled)), (reply) => {
      if (!Array.isArray(reply) || reply.length !== 2 * tiers.length) throw unexpected('peek', reply);
      return tiers.map(({ spec }, i) => ({
        tier: spec.tier,
        limit: spec.limit,
        remaining: toNumber(reply[2 * i]),
        resetIn: toNumber(reply[2 * i + 1]),
      }));
    });
  }

  /**
   * Gives back the plan's open-connection leases. A release that cannot reach Redis does
   * not fail: this instance forgets the lease at once, and brings Redis in line with what it
   * holds as soon as Redis answers again (or at its next lease refresh).
   */
  async release(plan: RateLimitPlan): Promise<void> {
    const compiled = this.compile(plan);
    if (compiled.releaseArgs === undefined) return;
    const lease = plan.lease ?? '';
    compiled.leaseKeys.forEach((key, i) => {
      const entry = this.leases.get(key);
      if (entry === undefined) return;
      const units = (entry.held.get(lease) ?? 0) - compiled.leaseCosts[i]!;
      if (units > 0) entry.held.set(lease, units);
      else entry.held.delete(lease);
    });
    try {
      this.gate();
      await this.within(this.scripts.release(...compiled.releaseArgs), noop);
    } catch {
      for (const key of compiled.leaseKeys) this.leaseEntry(key).dirty = true;
    }
    for (const key of compiled.leaseKeys) this.dropIfIdle(key);
  }

  async delete(keys: readonly string[]): Promise<void> {
    this.cache?.clear();
    if (keys.length === 0) return;
    this.gate();
    for (const key of keys) {
      const entry = this.leases.get(key);
      if (entry === undefined) continue;
      if (entry.pending === 0) {
        this.leases.delete(key);
      } else {
        // A consume still in flight settles on this entry: keep it, holding nothing, to be synced.
        entry.held.clear();
        entry.dirty = true;
      }
    }
    if (!this.client.isCluster) {
      await this.within(this.client.del(...keys), noop);
      return;
    }
    // In a Cluster one DEL may only name keys of one slot: group them by hash tag.
    const groups = new Map<string, string[]>();
    for (const key of keys) {
      const tag = hashTag(key);
      const group = groups.get(tag);
      if (group) group.push(key);
      else groups.set(tag, [key]);
    }
    await Promise.all([...groups.values()].map((group) => this.within(this.client.del(...group), noop)));
  }

  /** Records an operator's block in Redis, where every instance reads it. */
  override async setBlock(name: string, until: number): Promise<void> {
    this.gate();
    await this.within(this.scripts.blocks('1', this.blocksKey, 'set', name, String(until), String(Date.now())), noop);
  }

  /** Lifts a block on every instance. */
  override async deleteBlock(name: string): Promise<void> {
    this.gate();
    await this.within(this.scripts.blocks('1', this.blocksKey, 'delete', name, '', String(Date.now())), noop);
  }

  /** Every block in force on any instance: name -> until (ms since the epoch). */
  override async listBlocks(): Promise<Readonly<Record<string, number>>> {
    this.gate();
    const now = Date.now();
    return this.within(this.client.hgetall(this.blocksKey), (reply) => {
      if (reply === null || typeof reply !== 'object') throw unexpected('HGETALL', reply);
      const live: Record<string, number> = Object.create(null) as Record<string, number>;
      for (const [name, until] of Object.entries(reply as Record<string, string>)) {
        if (Number(until) > now) live[name] = Number(until);
      }
      return live;
    });
  }

  /**
   * Stops the lease refresh and the breaker's probe, gives back this instance's leases
   * (best effort, within the deadline), and closes the client if the store created it.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.leaseTimer);
    clearTimeout(this.probeTimer);
    this.leaseTimer = this.probeTimer = undefined;
    if (this.openError === undefined && this.client.status === 'ready' && this.leases.size > 0) {
      await Promise.allSettled([...this.leases.keys()].map((key) => this.syncLeases(key, new Map(), 'sync')));
    }
    this.leases.clear();
    this.cache?.clear();
    for (const [event, listener] of this.listeners) {
      if (event !== 'error' || !this.owned) this.client.off(event, listener);
    }
    if (!this.owned) return;
    const client = this.client;
    if (client.status === 'end') return;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, 1500)));
    const ended = new Promise<void>((resolve) => client.once('end', () => resolve()));
    // Between reconnect attempts ioredis cannot be ended cleanly (it would keep a 2 s timer on
    // the dead socket and never emit `end`): wait for the next attempt, at most the 1 s cap.
    if (client.status === 'reconnecting') {
      await Promise.race([new Promise<void>((resolve) => client.once('connecting', () => resolve())), timeout]);
    }
    // QUIT lets replies in flight arrive; a client that is not connected is just stopped.
    if (client.status === 'ready') client.quit().catch(noop);
    else client.disconnect();
    await Promise.race([ended, timeout]);
    clearTimeout(timer);
    // Only if that did not end it: disconnecting an ended client would leave a 2 s timer.
    if ((client.status as string) !== 'end') client.disconnect();
  }

  /**
   * Resolves once the client is `ready`, or after `timeoutMs` whatever its state (calls made
   * before then are refused at once and the fail mode decides).
   */
  whenReady(timeoutMs: number): Promise<void> {
    if (this.client.status === 'ready') return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.client.off('ready', done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.client.on('ready', done);
    });
  }

  // --- Decisions --------------------------------------------------------------------

  private decision(compiled: CompiledPlan, reply: unknown, delivered: boolean): RateLimitDecision {
    if (reply === 1 || reply === '1') return ALLOWED;
    if (Array.isArray(reply) && reply.length === 2 && toNumber(reply[0]) === 1) {
      const near = compiled.plan.tiers[toNumber(reply[1])];
      if (near === undefined) throw unexpected('consume', reply);
      return ALLOWED_NEAR_LIMIT[near.spec.tier];
    }
    if (!Array.isArray(reply) || reply.length !== 4 || toNumber(reply[0]) !== 0) throw unexpected('consume', reply);
    const index = toNumber(reply[1]);
    const wait = toNumber(reply[2]);
    // -1: never (a cost above the limit), as the memory store's Infinity.
    const retryAfter = wait === -1 ? Infinity : wait;
    const tier = compiled.plan.tiers[index];
    if (tier === undefined || !(retryAfter >= 1)) throw unexpected('consume', reply);
    const spec = tier.spec;
    const decision: RateLimitRejected = {
      allowed: false,
      tier: spec.tier,
      index,
      retryAfter,
      limit: spec.limit,
      remaining: toNumber(reply[3]),
    };
    if (delivered && this.cache !== undefined && spec.kind !== AlgorithmKind.Concurrency) {
      this.cache.set(compiled.blockKey, decision, this.localNow());
    }
    return decision;
  }

  private compile(plan: RateLimitPlan): CompiledPlan {
    const cached = this.compiled.get(plan);
    if (cached !== undefined) return cached;
    const tiers = plan.tiers;
    const keys = tiers.map((tier) => tier.key);
    const app = this.appClock !== undefined;
    const args = [String(tiers.length + (app ? 1 : 0)), ...keys];
    if (app) args.push(clockKeyOf(keys[0]!));
    const nowAt = args.length;
    args.push('', String(tiers.length));
    const nonceAt = args.length;
    args.push('', this.instanceId, plan.lease ?? '', String(this.leaseTtlMs));
    const leaseKeys: string[] = [];
    const leaseCosts: number[] = [];
    let usesNonce = false;
    for (const { key, spec } of tiers) {
      switch (spec.kind) {
        case AlgorithmKind.TokenBucket:
          args.push('0', String(spec.limit), String(spec.cost), String(spec.slack), String(spec.span));
          args.push(String(spec.intervalMs), String(spec.nearBound));
          break;
        case AlgorithmKind.SlidingLog:
          usesNonce = true;
          args.push('1', String(spec.limit), String(spec.cost), String(spec.windowMs), '0', '0', '0');
          break;
        case AlgorithmKind.SlidingCounter:
          args.push('2', String(spec.limit), String(spec.cost), String(spec.windowMs), '0', '0', '0');
          break;
        case AlgorithmKind.Concurrency:
          args.push('3', String(spec.limit), String(spec.cost), '0', '0', '0', '0');
          leaseKeys.push(key);
          leaseCosts.push(spec.cost);
          break;
      }
    }
    const releaseArgs =
      leaseKeys.length === 0
        ? undefined
        : [String(leaseKeys.length), ...leaseKeys, this.instanceId, plan.lease ?? '', ...leaseCosts.map(String)];
    const compiled: CompiledPlan = {
      plan,
      args,
      nowAt,
      nonceAt,
      usesNonce,
      blockKey: tiers.map(({ key, spec }) => `${key}\u0000${spec.cost}`).join('\u0001'),
      leaseKeys,
      leaseCosts,
      releaseArgs,
    };
    this.compiled.set(plan, compiled);
    return compiled;
  }

  private argsOf(compiled: CompiledPlan): string[] {
    const args = compiled.args.slice();
    if (this.appClock !== undefined) args[compiled.nowAt] = String(this.appClock());
    if (compiled.usesNonce) args[compiled.nonceAt] = this.noncePrefix + (this.nonce++).toString(36);
    return args;
  }

  // --- Deadline and circuit breaker -------------------------------------------------

  /** Refuses at once, without sending, while the breaker is open or the client not ready. */
  private gate(): void {
    if (this.closed) throw new RedisStoreUnavailableError('the Redis store is closed');
    if (this.openError !== undefined) throw this.openError;
    const status = this.client.status;
    if (status !== 'ready') {
      this.trip(new Error(`the Redis connection is ${status}`));
      throw this.openError ?? new RedisStoreUnavailableError(`the Redis connection is ${status}`);
    }
  }

  /**
   * Settles with the parsed reply, or rejects when Redis fails or stays silent past the
   * deadline. `settled` runs once the command itself settles (possibly after the deadline),
   * told whether the caller got that reply.
   */
  private within<T>(
    sent: Promise<unknown>,
    parse: (reply: unknown, delivered: boolean) => T,
    settled?: (reply: unknown, delivered: boolean) => void,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let done = false;
      const timer = setTimeout(() => {
        // When this process itself was busy past the deadline, the reply may be waiting in the
        // socket already: let the next I/O phase deliver it before calling Redis late.
        setImmediate(() => {
          if (done) return;
          done = true;
          const error = new RedisStoreUnavailableError(`Redis did not answer within ${this.deadlineMs} ms`);
          this.failed(error);
          reject(error);
        });
      }, this.deadlineMs);
      // The socket keeps the process alive while a call is in flight; the timer need not.
      timer.unref();
      sent.then(
        (reply) => {
          const delivered = !done;
          if (delivered) {
            done = true;
            clearTimeout(timer);
            try {
              resolve(parse(reply, true));
              this.succeeded();
            } catch (error) {
              this.failed(error);
              reject(new RedisStoreUnavailableError(`Redis answered unexpectedly`, { cause: error }));
            }
          }
          // A late answer counts for nothing: a Redis slower than the deadline is no use to a
          // decision, and resetting the failure count on it would keep the breaker from ever
          // opening under steady latency above the deadline. Only an answer in time (a
          // decision's, or the probe's) closes the breaker.
          settled?.(reply, delivered);
        },
        (error: unknown) => {
          if (!done) {
            done = true;
            clearTimeout(timer);
            this.failed(error);
            reject(new RedisStoreUnavailableError(`Redis failed: ${messageOf(error)}`, { cause: error }));
          }
          settled?.(undefined, false);
        },
      );
    });
  }

  private succeeded(): void {
    this.failures = 0;
    if (this.openError !== undefined) this.recover();
  }

  private failed(cause: unknown): void {
    if (++this.failures >= this.failureThreshold) this.trip(cause);
  }

  /** Opens the breaker: every call is refused at once until a probe succeeds. */
  private trip(cause: unknown): void {
    if (this.openError !== undefined || this.closed) return;
    this.openError = new RedisStoreUnavailableError(`Redis is unavailable (${messageOf(cause)})`, { cause });
    this.notify(false, cause);
    this.scheduleProbe();
  }

  private recover(): void {
    this.openError = undefined;
    this.failures = 0;
    clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
    this.notify(true);
    // Every entry, not only dirty ones: while the breaker was open nothing refreshed this
    // instance's expiry, so other instances may have dropped its leases as a dead instance's.
    for (const [key, entry] of this.leases) {
      this.syncLeases(key, entry.held, entry.pending > 0 ? 'touch' : 'sync').catch(noop);
    }
  }

  private scheduleProbe(): void {
    if (this.probeTimer !== undefined || this.closed) return;
    this.probeTimer = setTimeout(() => {
      this.probeTimer = undefined;
      this.probe();
    }, this.probeIntervalMs);
    this.probeTimer.unref();
  }

  /**
   * Half-open: one call within the deadline decides whether the breaker closes: `ROLE`, which
   * must say `master` (a demoted master answers, but refuses every write with READONLY; a
   * server that refuses ROLE itself counts as reachable), or on a Cluster `CLUSTER INFO` of a
   * random node, which must say `cluster_state:ok` (a Cluster that lost a master refuses every
   * key with CLUSTERDOWN but still answers PING).
   */
  private probe(): void {
    if (this.openError === undefined || this.probing || this.closed) return;
    if (this.client.status !== 'ready') {
      this.scheduleProbe();
      return;
    }
    this.probing = true;
    const probe = this.client.isCluster
      ? this.within(this.client.call('CLUSTER', 'INFO'), (reply) => {
          if (!String(reply).includes('cluster_state:ok')) throw new Error('the Cluster state is not ok');
        })
      : this.within(this.client.call('ROLE').catch(roleUnsupported), (reply) => {
          // A demoted master still answers PING; closing the breaker on it would only fail the next decision.
          if (Array.isArray(reply) && reply[0] !== 'master') throw new Error(`Redis answers as a ${String(reply[0])}`);
        });
    probe.then(
      () => {
        this.probing = false;
      },
      () => {
        this.probing = false;
        this.scheduleProbe();
      },
    );
  }

  /** Starts the check of `maxmemory-policy`, once per store (at start-up: the first `ready`). */
  private checkEvictionPolicy(): void {
    if (this.policyCheck !== undefined || this.closed) return;
    this.policyCheck = readEvictionPolicies(this.client).then((policies) => {
      if (this.closed) return;
      const evicting = policies.filter(({ policy }) => policy !== 'noeviction');
      if (evicting.length === 0) return;
      const named = [...new Set(evicting.map(({ policy }) => policy))].join(', ');
      const where = this.client.isCluster ? ` on ${evicting.map(({ node }) => node).join(', ')}` : '';
      this.warn(
        `Redis maxmemory-policy is ${named}${where}: at maxmemory, Redis may evict rate-limit keys (every one ` +
          "carries a TTL), and an evicted key's limit silently starts over. Set maxmemory-policy noeviction " +
          'on the Redis that holds the limits.',
      );
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
    try {
      this.onAvailabilityChange?.(available, cause);
    } catch {
      // A listener's failure must not break the client's event handling.
    }
  }

  // --- Open-connection leases -------------------------------------------------------

  private leaseEntry(key: string): LeaseEntry {
    let entry = this.leases.get(key);
    if (entry === undefined) {
      entry = { held: new Map(), pending: 0, dirty: false };
      this.leases.set(key, entry);
      if (this.leaseTimer === undefined && !this.closed) {
        // Timers take at most 2^31 - 1 ms.
        const period = Math.min(2_147_483_647, Math.max(1, Math.floor(this.leaseTtlMs / 3)));
        this.leaseTimer = setInterval(() => this.refreshLeases(), period);
        this.leaseTimer.unref();
      }
    }
    return entry;
  }

  private leasesSettled(compiled: CompiledPlan, reply: unknown, delivered: boolean): void {
    const lease = compiled.plan.lease ?? '';
    const allowed = reply === 1 || reply === '1' || (Array.isArray(reply) && toNumber(reply[0]) === 1);
    compiled.leaseKeys.forEach((key, i) => {
      const entry = this.leaseEntry(key);
      if (entry.pending > 0) entry.pending--;
      if (delivered && allowed) entry.held.set(lease, (entry.held.get(lease) ?? 0) + compiled.leaseCosts[i]!);
      // A call that failed or answered too late may have taken a slot nobody will give back.
      else if (!delivered) entry.dirty = true;
      this.dropIfIdle(key);
    });
  }

  private dropIfIdle(key: string): void {
    const entry = this.leases.get(key);
    if (entry !== undefined && entry.held.size === 0 && entry.pending === 0 && !entry.dirty) this.leases.delete(key);
    if (this.leases.size === 0 && this.leaseTimer !== undefined) {
      clearInterval(this.leaseTimer);
      this.leaseTimer = undefined;
    }
  }

  /** Every third of the lease TTL: keeps this instance's leases alive, and exact. */
  private refreshLeases(): void {
    if (this.openError !== undefined || this.closed || this.client.status !== 'ready') return;
    for (const [key, entry] of this.leases) {
      this.syncLeases(key, entry.held, entry.pending > 0 ? 'touch' : 'sync').then(() => this.dropIfIdle(key), noop);
    }
  }

  private async syncLeases(key: string, held: ReadonlyMap<string, number>, mode: 'sync' | 'touch'): Promise<void> {
    const app = this.appClock !== undefined;
    const args = [app ? '2' : '1', key];
    if (app) args.push(clockKeyOf(key));
    args.push(app ? String(this.appClock!()) : '', this.instanceId, String(this.leaseTtlMs), mode);
    if (mode === 'sync') for (const [lease, units] of held) args.push(lease, String(units));
    const entry = this.leases.get(key);
    try {
      await this.within(this.scripts.leases(...args), noop);
      if (mode === 'sync' && entry !== undefined) entry.dirty = false;
    } catch (error) {
      if (entry !== undefined) entry.dirty = true;
      throw error;
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

// --- Helpers --------------------------------------------------------------------------

function registerScripts(client: RedisStoreClient): Scripts {
  const define = (name: string, lua: string, readOnly: boolean): ScriptCall => {
    // The name carries the script's hash, so two versions of this library can share a client.
    const command = `wsrl_${name}_${createHash('sha1').update(lua).digest('hex').slice(0, 12)}`;
    const target = client as unknown as Record<string, unknown>;
    if (typeof target[command] !== 'function') client.defineCommand(command, { lua, readOnly });
    const call = target[command] as (...args: string[]) => Promise<unknown>;
    return (...args) => call.apply(client, args);
  };
  return {
    consume: define('consume', CONSUME_LUA, false),
    peek: define('peek', PEEK_LUA, true),
    release: define('release', RELEASE_LUA, false),
    leases: define('leases', LEASES_LUA, false),
    blocks: define('blocks', BLOCKS_LUA, false),
  };
}

/**
 * The ioredis options of a Sentinel client: the sentinel settings over `base` (which holds
 * `redisOptions` and the store's safety settings), each falling back to `base`'s own. TLS to
 * the master and replicas needs ioredis's `enableTLSForSentinelMode` as well as `tls` (without
 * it ioredis connects in plain text); TLS to the sentinels themselves is `sentinelTLS`, set
 * through `redisOptions`.
 */
export function sentinelClientOptions(base: RedisOptions, sentinel: RedisSentinelOptions): RedisOptions {
  const { sentinels, name, username, password, sentinelUsername, sentinelPassword, db, tls } = sentinel;
  const serverTls = tls === true ? {} : tls || base.tls;
  return {
    ...base,
    sentinels,
    name,
    username: username ?? base.username,
    password: password ?? base.password,
    sentinelUsername: sentinelUsername ?? base.sentinelUsername,
    sentinelPassword: sentinelPassword ?? base.sentinelPassword,
    db: db ?? base.db,
    ...(serverTls ? { tls: serverTls, enableTLSForSentinelMode: true } : {}),
    sentinelRetryStrategy: retryStrategy,
  };
}

interface IoRedisModule {
  Redis: typeof import('ioredis').Redis;
  Cluster: typeof import('ioredis').Cluster;
}

function buildClient(loaded: unknown, options: RedisStoreOptions): RedisStoreClient {
  // Native ESM sees ioredis's CommonJS exports as named exports; CommonJS interop may nest them.
  const module = loaded as Partial<IoRedisModule> & { default?: IoRedisModule };
  const { Redis, Cluster } = module.Redis && module.Cluster ? (module as IoRedisModule) : module.default!;
  const safety = {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    enableAutoPipelining: false,
    retryStrategy,
    reconnectOnError,
  } satisfies RedisOptions;
  const base: RedisOptions = { connectTimeout: 2000, ...options.redisOptions, ...safety };
  if (options.url !== undefined) return new Redis(options.url, base);
  if (options.sentinel !== undefined) return new Redis(sentinelClientOptions(base, options.sentinel));
  const cluster = options.cluster!;
  const extra: ClusterOptions = cluster.options ?? {};
  return new Cluster(cluster.nodes, {
    ...extra,
    enableOfflineQueue: false,
    enableAutoPipelining: false,
    clusterRetryStrategy: retryStrategy,
    // ioredis would resend a command whose node connection closed 100 ms later (it may have
    // run: counted twice), and retry CLUSTERDOWN for up to 1.6 s, long past the deadline.
    retryDelayOnFailover: 0,
    retryDelayOnClusterDown: 0,
    redisOptions: {
      connectTimeout: 2000,
      ...extra.redisOptions,
      username: cluster.username ?? extra.redisOptions?.username,
      password: cluster.password ?? extra.redisOptions?.password,
      tls: cluster.tls === true ? {} : cluster.tls || extra.redisOptions?.tls,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      reconnectOnError,
    },
  });
}

function validateOptions(options: RedisStoreOptions): void {
  const fail = (message: string): never => {
    throw new WsRateLimitConfigError(`redis store option ${message}`);
  };
  if (options === null || typeof options !== 'object') fail('object: expected the store options');
  const sources = (['client', 'url', 'sentinel', 'cluster'] as const).filter((name) => options[name] !== undefined);
  if (sources.length > 1) fail(`${sources.join(', ')}: give only one of client, url, sentinel or cluster`);
  if (sources.length === 0) fail('url: give one of client, url, sentinel or cluster');
  if (options.url !== undefined && !/^rediss?:\/\//.test(options.url)) {
    fail('url: expected a redis:// or rediss:// URL');
  }
  if (options.sentinel !== undefined) {
    if (!Array.isArray(options.sentinel.sentinels) || options.sentinel.sentinels.length === 0) {
      fail('sentinel.sentinels: expected at least one { host, port }');
    }
    if (typeof options.sentinel.name !== 'string' || options.sentinel.name === '') {
      fail('sentinel.name: expected the master name');
    }
  }
  if (options.cluster !== undefined && (!Array.isArray(options.cluster.nodes) || options.cluster.nodes.length === 0)) {
    fail('cluster.nodes: expected at least one node');
  }
  if (options.keyPrefix !== undefined && (typeof options.keyPrefix !== 'string' || /[{}]/.test(options.keyPrefix))) {
    fail('keyPrefix: expected a string without { or }');
  }
  const positive = (name: string, value: number | undefined, integer = false) => {
    if (value === undefined) return;
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
      fail(`${name}: expected a positive ${integer ? 'integer' : 'number'}`);
    }
  };
  positive('commandTimeoutMs', options.commandTimeoutMs);
  positive('leaseTtlMs', options.leaseTtlMs, true);
  positive('readyTimeoutMs', options.readyTimeoutMs);
  positive('breaker.failureThreshold', options.breaker?.failureThreshold, true);
  positive('breaker.probeIntervalMs', options.breaker?.probeIntervalMs);
  if (typeof options.blockCache === 'object' && options.blockCache !== null) {
    positive('blockCache.maxEntries', options.blockCache.maxEntries, true);
  }
  if (options.clock !== undefined && options.clock !== 'redis' && options.clock !== 'app') {
    fail("clock: expected 'redis' or 'app'");
  }
  if (options.now !== undefined && typeof options.now !== 'function') fail('now: expected a function');
  if (options.onWarning !== undefined && typeof options.onWarning !== 'function') {
    fail('onWarning: expected a function');
  }
  if (options.instanceId !== undefined && !/^[A-Za-z0-9_.-]{1,64}$/.test(options.instanceId)) {
    fail('instanceId: expected 1-64 letters, digits, _, - or .');
  }
}

/** A lone UTF-16 surrogate, which UTF-8 cannot carry. */
const LONE_SURROGATE = /\p{Cs}/u;
/** Starts the hashed bytes of text with lone surrogates: 0xFF never occurs in UTF-8. */
const ILL_FORMED = Buffer.from([0xff]);

/**
 * SHA-1 (base64url) of the tracker's UTF-8 bytes. UTF-8 turns every lone surrogate into
 * U+FFFD, so `'a\uD800'`, `'a\uDBFF'` and `'a\uFFFD'` would share a hash: text with a lone
 * surrogate is hashed as 0xFF and its UTF-16 code units instead, which no UTF-8 text can
 * equal. Well-formed text (every tracker the library itself builds) keeps its UTF-8 hash.
 */
function trackerHash(tracker: string): string {
  const hash = createHash('sha1');
  if (LONE_SURROGATE.test(tracker)) hash.update(ILL_FORMED).update(tracker, 'utf16le');
  else hash.update(tracker);
  return hash.digest('base64url');
}

/** The hash tag of a key (what Redis Cluster hashes), or the whole key without one. */
function hashTag(key: string): string {
  const open = key.indexOf('{');
  if (open >= 0) {
    const close = key.indexOf('}', open + 1);
    if (close > open + 1) return key.slice(open + 1, close);
  }
  return key;
}

/** The app-clock key of a tier key: same hash tag, so same Cluster slot. */
function clockKeyOf(key: string): string {
  const open = key.indexOf('{');
  const close = open >= 0 ? key.indexOf('}', open + 1) : -1;
  return close > open + 1 ? `${key.slice(0, close + 1)}:~clock` : `${key}:~clock`;
}

let logger: Logger | undefined;

function defaultWarn(message: string): void {
  (logger ??= new Logger('WsRateLimit')).warn(message);
}

/** How long the start-up read of `maxmemory-policy` may take. */
const POLICY_CHECK_MS = 1000;

/**
 * `CONFIG GET maxmemory-policy` of the server, or of every master of a Cluster. Servers that
 * refuse CONFIG (managed services, ACLs) or do not answer within a second are left out.
 */
async function readEvictionPolicies(client: RedisStoreClient): Promise<{ node: string; policy: string }[]> {
  const servers: Redis[] = client.isCluster ? (client as Cluster).nodes('master') : [client as Redis];
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(resolve, POLICY_CHECK_MS, undefined);
    timer.unref();
  });
  try {
    const replies = await Promise.all(
      servers.map((server) =>
        Promise.race([server.call('CONFIG', 'GET', 'maxmemory-policy').catch(noop), late]).then((reply) => ({
          node: `${server.options.host ?? ''}:${server.options.port ?? ''}`,
          policy: policyOf(reply),
        })),
      ),
    );
    return replies.filter((reply): reply is { node: string; policy: string } => reply.policy !== undefined);
  } finally {
    clearTimeout(timer);
  }
}

/** The value of a `CONFIG GET maxmemory-policy` reply: RESP2 `[name, value]`, or a RESP3 map. */
function policyOf(reply: unknown): string | undefined {
  let value: unknown;
  if (Array.isArray(reply)) value = reply[1];
  else if (reply instanceof Map) value = reply.get('maxmemory-policy');
  else if (reply !== null && typeof reply === 'object') value = (reply as Record<string, unknown>)['maxmemory-policy'];
  return typeof value === 'string' && value !== '' ? value.toLowerCase() : undefined;
}

function toNumber(value: unknown): number {
  return typeof value === 'number' ? value : typeof value === 'string' ? Number(value) : NaN;
}

function unexpected(script: string, reply: unknown): Error {
  return new Error(`unexpected ${script} reply ${JSON.stringify(reply)?.slice(0, 200)}`);
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
