import type { Cluster, ClusterOptions, Redis, RedisOptions } from './ioredis-types.js';

/** A Redis Sentinel deployment: the store connects to the master that the sentinels name. */
export interface RedisSentinelOptions {
  /** The sentinels to ask, e.g. `[{ host: '10.0.0.5', port: 26379 }]`. */
  sentinels: { host: string; port: number }[];
  /** The monitored master's name (`sentinel monitor <name> ...`). */
  name: string;
  /** ACL user and password of the Redis servers. */
  username?: string;
  password?: string;
  /** ACL user and password of the sentinels themselves. */
  sentinelUsername?: string;
  sentinelPassword?: string;
  /** Database index. @default 0 */
  db?: number;
  /**
   * Connect to the master and replicas with TLS (`true` for the system's CAs). TLS to the
   * sentinels themselves: `redisOptions.sentinelTLS`.
   */
  tls?: boolean | NonNullable<RedisOptions['tls']>;
}

/** A Redis Cluster: a few of its nodes to discover the rest from. */
export interface RedisClusterOptions {
  /** Start-up nodes, as `host:port` strings or objects. */
  nodes: (string | { host: string; port: number })[];
  /** ACL user and password of every node. */
  username?: string;
  password?: string;
  /** Connect to the nodes with TLS (`true` for the system's CAs). */
  tls?: boolean | NonNullable<RedisOptions['tls']>;
  /**
   * Further ioredis Cluster options, applied under the store's own safety settings, which
   * cannot be overridden: no offline queue, reconnect delay capped at 1 s, and
   * `retryDelayOnFailover: 0` and `retryDelayOnClusterDown: 0`, so that a command whose node
   * connection closed is never resent (it may have run, and would be counted twice) and a
   * Cluster that is down fails at once rather than retrying past the deadline. MOVED and ASK
   * redirections are still followed, and TRYAGAIN (a slot being migrated) still retried,
   * every 5 ms (`retryDelayOnTryAgain`), within the deadline rather than after it, and
   * `maxRedirections` is raised to cover the deadline's retries (16 would end them after
   * 40-80 ms, while a slot's keys move: the call would fail long before its deadline). The
   * store's scripts name only keys that may exist, so TRYAGAIN meets only a plan with a
   * sliding log or an open-connection tier on a migrating slot (every plan with the app
   * clock, whose clock is a key of its own); such a call retried past its deadline may
   * still run once its answer no longer counts (as a late reply).
   */
  options?: ClusterOptions;
}

/**
 * Options of the Redis store. Give exactly one of `client`, `url`, `sentinel` or `cluster`.
 * @example
 * const store = await createRedisStore({ url: 'redis://redis.internal:6379' });
 * WsRateLimitModule.forRoot({ store });
 */
export interface RedisStoreOptions {
  /**
   * An ioredis client (standalone, Sentinel or Cluster) you created and own: the store
   * registers its scripts on it and never closes it. For the deadline to hold, give it
   * `enableOfflineQueue: false`; the store's own breaker refuses to send while it is not
   * `ready` either way. A Cluster client should also have `retryDelayOnFailover: 0` (else
   * ioredis resends a decision whose connection closed, which may count it twice) and
   * `retryDelayOnClusterDown: 0`. A client made with `lazyConnect` is connected by the store.
   */
  client?: Redis | Cluster;
  /** `redis://` or `rediss://` URL of a standalone Redis; the store creates and closes the client. */
  url?: string;
  /** A Sentinel deployment; the store creates and closes the client. */
  sentinel?: RedisSentinelOptions;
  /** A Cluster; the store creates and closes the client. */
  cluster?: RedisClusterOptions;
  /**
   * Further ioredis options for the client the store creates (TLS, ACL, timeouts; on a
   * Cluster, every node's connection, under `cluster.options.redisOptions`), applied under
   * its safety settings, which cannot be overridden:
   * `enableOfflineQueue: false`, `maxRetriesPerRequest: 0`,
   * `autoResendUnfulfilledCommands: false` (a decision is never retried, so never counted
   * twice), reconnect delay capped at 1 s, reconnect on `READONLY`.
   */
  redisOptions?: RedisOptions;
  /**
   * Prefix of every key. Keys are `<prefix>{<sha1(tracker), base64url>}:<tier suffix>`.
   * When `client` already has its own ioredis `keyPrefix`, that one wins: the store adds
   * none of its own (so no prefix is applied twice) and this option is ignored. Must not
   * contain `{` or `}` (they would change the Cluster hash tag).
   * @default 'wsrl:'
   */
  keyPrefix?: string;
  /**
   * The deadline of one store call, in ms: past it the call rejects and the fail mode
   * decides. On loopback or one LAN, p99 of a decision is well under 1 ms serially and about
   * 5 ms with 64 in flight on 2 cores, so 50 ms is ten times that and still short enough
   * that a Redis outage never stalls a message noticeably (Envoy uses 20 ms).
   * @default 50
   */
  commandTimeoutMs?: number;
  /**
   * Whose clock decides: `redis` reads `TIME` inside the script, so instances with skewed
   * clocks agree; `app` passes this process's time (`now`) instead, for managed Redis that
   * refuses `TIME` in scripts. App time is clamped per tracker so that it never runs
   * backwards, but skewed instances then share limits less exactly.
   * @default 'redis'
   */
  clock?: 'redis' | 'app';
  /**
   * The app clock in ms, used with `clock: 'app'`. When given, it is also the clock of the
   * block cache and must never run backwards.
   * @default Date.now
   */
  now?: () => number;
  /**
   * How long an open-connection lease outlives its instance, in ms: each store instance
   * refreshes its leases every third of this, so the slots of an instance that died without
   * closing come back within `leaseTtlMs` (plus at most one refresh period after the last
   * successful refresh). A live instance whose event loop stalls for more than two thirds
   * of it has its leases expire meanwhile: keep it well above the longest stall.
   * @default 30000
   */
  leaseTtlMs?: number;
  /**
   * The local block cache: a plan refused until time T is refused again before T without a
   * Redis call, so a flooding client costs Redis nothing. `false` turns it off.
   * @default { maxEntries: 10000 }
   */
  blockCache?: boolean | { maxEntries?: number };
  /**
   * The circuit breaker: it opens when the client reports `close`/`end` or not ready, or
   * after `failureThreshold` consecutive failed calls; while open, calls reject at once with
   * no Redis traffic. A probe every `probeIntervalMs` (and on `ready`) closes it: a write of
   * the key `<keyPrefix>probe` (`SET ... PX 100`), which Redis refuses while it is a
   * replica, out of memory under `noeviction`, running a long script, loading or unable to
   * persist (as it would refuse a decision), or on a Cluster `CLUSTER INFO` of a random node,
   * which must report `cluster_state:ok`.
   *
   * The breaker is one for the whole store, also on a Cluster. When a Cluster master dies
   * and no replica takes over, decisions on its slots fail at once (its connection is
   * closed; nothing is resent) while the other slots still answer, so the breaker opens only
   * when `failureThreshold` decisions in a row fail on the dead master, and then sends every
   * decision, on any slot, to the fail mode until its next probe (`probeIntervalMs`) finds the
   * Cluster state ok; this repeats for as long as the master is gone. Once the Cluster marks
   * the master failed (after about its `cluster-node-timeout`), a Cluster with
   * `cluster-require-full-coverage yes` (Redis's default) refuses every key with CLUSTERDOWN
   * and reports `cluster_state:fail`: the breaker then stays open, every decision going to
   * the fail mode at once, until the master (or a replica promoted in its place) serves its
   * slots again and the Cluster reports ok. (With `cluster-require-full-coverage no` the state
   * stays ok, and the first behaviour lasts until the master is back.)
   *
   * A missed deadline counts as a failure only when it is Redis's: a call whose deadline
   * timer fired more than half a deadline late (this process's event loop was blocked) gets
   * one more deadline from then, and a miss while Redis answered other calls in time (the
   * call waited behind them) fails the call without counting (not on a Cluster). Misses of
   * calls sent in one turn of the event loop (a burst) count as one failure.
   * @default { failureThreshold: 3, probeIntervalMs: 250 }
   */
  breaker?: { failureThreshold?: number; probeIntervalMs?: number };
  /**
   * How long `createRedisStore` waits for the first `ready` before returning the store
   * anyway (it then answers by the fail mode until Redis is reachable).
   * @default 2000
   */
  readyTimeoutMs?: number;
  /**
   * Names this store instance in lease keys; letters, digits, `_`, `-` and `.` only. It must
   * be unique among the live processes sharing the Redis (two stores with one id share their
   * connection leases); a stable name such as the pod's is fine across restarts.
   * @default a random id
   */
  instanceId?: string;
  /**
   * Token reservations for shared trackers, off by default. For a plan made of token buckets
   * only (one tier, or a tracker's global and per-type buckets), the store takes a batch of
   * slots from the shared buckets in one script call and spends them in this process, with
   * no Redis call. The batch grows (doubling, or to cover the decisions waiting for it, up
   * to `maxBatch`) while this instance has the buckets to itself; it falls to 1 under
   * contention (another instance, or a per-call decision, moved a bucket since) or near the
   * limit (never more than half of what is left), and stays 1 while this instance decides
   * too rarely for the buckets' rates. The next batch is asked for in the background before
   * the current one runs out (within twice the recent latency of reserving calls, as this
   * process reads their replies), and its slots start where the current ones end, so
   * decisions keep being answered in process meanwhile.
   *
   * A full bucket's slots come at its refill rate whether spent or not, so a batch must cover
   * the time a reply takes under load: `maxBatch` of at least the buckets' rate times
   * 0.25 s keeps a busy tracker local (at 1,000 tokens a second, 64 slots last 64 ms, less
   * than a loaded event loop's turn or two); `maxBatch` at the rate times `ttlMs` leaves the
   * TTL as the only bound.
   *
   * A reserved slot is spent at most once, and only until its time in the bucket comes, so
   * the buckets admit what they would without reservations: never more. A call is granted
   * only slots within `ttlMs` of its first, and an instance holds at most `ttlMs` of the
   * slowest bucket's refill unspent, wherever the buckets stand (full, or spending their
   * burst ahead of the refill), so what a dead instance held is refilled within `ttlMs`; an
   * idle batch's unspent slots go back after a quarter to a half of `ttlMs`, and every
   * batch's at `close()`, when no other decision moved its buckets since (else the batch
   * stays with this instance, spent first, until its slots lapse; at `close()` it is lost).
   * Under-admission is bounded by the slots reserved and unspent: at
   * most `maxBatch` decisions per plan and instance (the batch being spent and the next one
   * together), and at most `ttlMs` of refill. Plans with a sliding log, sliding counter or
   * concurrency tier, and every plan with `clock: 'app'`, are decided per call as without
   * reservations.
   * @default false ({ maxBatch: 64, ttlMs: 1000 } with `true`)
   */
  reservations?: boolean | { maxBatch?: number; ttlMs?: number };
  /**
   * How many consume scripts of their own plans get: the generic script unrolled for the
   * plan's tiers, with their limits, costs, rates and windows, their field names in the
   * tracker hash and the server's hash-field TTL mode written into the Lua (one script per
   * handler and message type, in practice: trackers share it; one more per mode if the
   * server is upgraded or replaced while the app runs). Such a script decides
   * exactly as the generic one, on the same keys, for a third to a half of its Redis CPU
   * (`bench/README.md`). Past this many, as many plan shapes more (a shape is the list of a
   * plan's tiers with their figures) get a script taking the field names as arguments
   * (about 10 % more Redis CPU for a three-tier plan); plans beyond both, plans with a
   * concurrency tier, and plans over several trackers use the generic script. Each script
   * is loaded into Redis's script cache (3 to 15 KB) the first time a plan needs it, with
   * EVAL: Redis 7.4 and later keep at most 500 scripts loaded that way, so above about 245
   * (twice this many plan scripts and the store's eight others) plans in rotation reload
   * theirs. Until the server's version has been read, plans use the second kind. `0` turns
   * plan scripts off. An integer from 0 to 1024.
   * @default 64
   */
  planScripts?: number;
  /**
   * Whether tracker-hash fields get TTLs of their own on servers that have hash-field TTLs
   * (Redis 7.4+, read at start-up and at each reconnect): each field then goes when its tier
   * no longer needs it, instead of the whole hash living as long as its longest-lived field
   * needs (the way on older servers, kept with `false`). Fields carrying TTLs cost Redis more
   * per decision: a three-tier decision 73,300 instructions on Redis 8 against 67,500
   * without them (`bench/README.md`), for less memory held by tiers a tracker has stopped
   * using. Instances may differ: a hash written either way is read correctly by both.
   * @default true
   */
  hashFieldTtls?: boolean;
  /** Told when Redis becomes unavailable (`false`, with the cause) and available again (`true`). */
  onAvailabilityChange?: (available: boolean, cause?: unknown) => void;
  /**
   * Told about a Redis set up in a way that undermines the limits. At start-up (the
   * client's first `ready`) the store reads `CONFIG GET maxmemory-policy` (of every master on
   * a Cluster) and warns once when it is anything but `noeviction`: every limiter key
   * carries a TTL, so `allkeys-*` and `volatile-*` policies alike may evict it at maxmemory,
   * and its limit silently starts over. A Redis that refuses CONFIG (as managed services do)
   * is not checked, and nothing is said.
   * @default a warning through Nest's `Logger` named `WsRateLimit`
   */
  onWarning?: (message: string) => void;
}

/** Default key prefix. */
export const DEFAULT_REDIS_KEY_PREFIX = 'wsrl:';
/** Default deadline of one store call, ms. */
export const DEFAULT_REDIS_COMMAND_TIMEOUT_MS = 50;
/** Default open-connection lease TTL, ms. */
export const DEFAULT_REDIS_LEASE_TTL_MS = 30_000;
/** Default largest batch of reserved slots (option `reservations`). */
export const DEFAULT_RESERVATION_MAX_BATCH = 64;
/** Default horizon of reserved slots, ms (option `reservations`). */
export const DEFAULT_RESERVATION_TTL_MS = 1000;
/** Default size of the block cache. */
export const DEFAULT_BLOCK_CACHE_ENTRIES = 10_000;
