// Over 400 lines: every option of the module, each with the documentation editors show on
// hover (the README's reference follows it); split by group, they would only point at each other.
import type { IncomingMessage } from 'node:http';
import type { SkipIf } from '../decorators/throttle.decorator.js';
import type { Cluster, Redis, RedisOptions } from '../storage/redis/ioredis-types.js';
import type { RateLimitStore } from '../storage/rate-limit-store.js';
import type { RateLimitFrameBuilder } from './frame.interface.js';

/**
 * How the Redis store reaches Redis (with `store: 'redis'`): exactly one of `url`,
 * `sentinels` (with `sentinelName`), `clusterNodes` or `client`. Every field but `client`
 * and `redisOptions` has a `WS_RATE_LIMIT_REDIS_*` variable.
 */
export interface RedisModuleOptions {
  /** `redis://` or `rediss://` URL of a standalone Redis. */
  url?: string;
  /** Redis Sentinels, as `host:port` strings or objects. */
  sentinels?: readonly (string | { host: string; port: number })[];
  /** The master name the sentinels monitor. */
  sentinelName?: string;
  /** Password of the Redis servers, for Sentinel or Cluster. */
  password?: string;
  /** Cluster start-up nodes, as `host:port` strings or objects. */
  clusterNodes?: readonly (string | { host: string; port: number })[];
  /** An ioredis client (standalone, Sentinel or Cluster) you own: used, never closed. */
  client?: Redis | Cluster;
  /**
   * Deadline of one store call in ms; past it the fail mode decides. At most 2147483647
   * (2^31-1, the longest timer Node keeps).
   * @default 50
   */
  commandTimeoutMs?: number;
  /**
   * `redis`: Redis's `TIME` decides (instances may disagree on time); `app`: this process's
   * clock, clamped never to run backwards, for Redis services that forbid `TIME` in scripts.
   * @default 'redis'
   */
  clock?: 'redis' | 'app';
  /**
   * Open-connection slots of an instance that died come back within this time (ms), at most
   * 2147483647.
   * @default 30000
   */
  leaseTtlMs?: number;
  /**
   * Refused plans remembered in this process until their retry time, so that a flooding
   * client costs Redis nothing; 0 turns it off. At most 16777215 (a `Map`'s limit).
   * @default 10000
   */
  blockCache?: number;
  /**
   * Token reservations (`RedisStoreOptions.reservations`): the most slots of a shared
   * plan's token buckets an instance holds to spend locally (the batch being spent and the
   * next one, each taken in one script call), never over-admitting; 0 turns them off. Size
   * it at the buckets' rate times 0.25 s or more. At most 4096. See the README's Redis
   * section.
   * @default 0
   */
  reservationBatch?: number;
  /**
   * How far ahead reserved tokens are granted, ms: a dead instance's come back within it.
   * At most 2147483647.
   * @default 1000
   */
  reservationTtlMs?: number;
  /** Further ioredis options for the clients the store creates (TLS, ACL user...). */
  redisOptions?: RedisOptions;
}

/** A token bucket's figures. */
export interface BucketLimitOptions {
  /** Burst: the most tokens the bucket holds (and starts with); at least one message's cost, at most 1000000. */
  capacity?: number;
  /**
   * Tokens added per second, fractions allowed: from 0.000001 (one token every 11.6 days) to
   * 1000000 messages a second (the rate divided by a message's cost).
   */
  refillRate?: number;
}

/** The figures of one message type, set in module options instead of `@Throttle`. */
export interface TypeLimitOptions extends BucketLimitOptions {
  /** Also count the type in the expensive-operations window. */
  expensive?: boolean;
  /**
   * Tokens one message of this type costs in the global and type buckets: greater than 0, at
   * most either capacity, and such that each bucket's refill rate divided by it is at most
   * 1000000 messages a second.
   */
  cost?: number;
  /** Still allowed while the connection is degraded (see `degradeCooldownMs`). */
  essential?: boolean;
}

/** What a tracker function is told about a connection. */
export interface TrackerContext {
  /**
   * The client's address key, as `tracker: 'ip'` counts it: the address the adapter resolved
   * (trusted proxies only), an IPv6 one as its network (`ipv6Prefix`, `2001:db8::/64`), if
   * known. The address itself is `address`.
   */
  readonly ip: string | undefined;
  /** The client address the adapter resolved (trusted proxies only), if known. */
  readonly address?: string | undefined;
  /** A number unique to the connection within this process. */
  readonly connectionId: number;
  /** The upgrade request, when the connection came through `WsRateLimitAdapter`. */
  readonly request: IncomingMessage | undefined;
}

/**
 * Names whose budget a message spends, e.g. a user id an auth step put on the socket.
 * Returning `undefined` (or `''`, which would make one budget of every such user) falls
 * back to the connection. May return a promise (e.g. a session
 * looked up in a store): it is awaited only then, so a synchronous tracker costs nothing
 * more. A throw or a rejection is handled as a throwing tracker's.
 * @example
 * tracker: (client) => (client as { user?: { id: string } }).user?.id
 * @example
 * tracker: async (client) => (await sessions.get((client as { sid: string }).sid))?.userId
 */
export type TrackerFn = (client: unknown, context: TrackerContext) => string | undefined | Promise<string | undefined>;

/** Whose budget a message spends. */
export type TrackerOption = 'connection' | 'ip' | TrackerFn;

/**
 * Names the plan a connection's messages are limited by (e.g. from a header a gateway
 * set, the query string, or the user an auth step put on the socket). `undefined`, or a
 * name with no plan, means the module's own limits (a name with no plan is logged as a warning,
 * once per name). Called as each message is decided, so it must be synchronous: a resolver
 * that throws or returns a promise gives the module's own limits too (logged the first time).
 * @example
 * planResolver: (client) => ((client as { user?: { tier?: string } }).user?.tier === 'pro' ? 'premium' : 'free')
 */
export type PlanResolver = (client: unknown, context: TrackerContext) => string | undefined;

/** The limits a plan overrides; anything left out is the module's. */
export interface PlanLimitsOptions {
  global?: BucketLimitOptions;
  /** Figures of types without their own (in the plan, in `@Throttle`, or in `types`). */
  type?: BucketLimitOptions;
  /** Figures per type: these win over `@Throttle`'s for connections on this plan. */
  types?: Record<string, TypeLimitOptions>;
  expensive?: ExpensiveLimitOptions;
}

/** A prom-client `Registry`, or anything with its `registerMetric`. */
export interface MetricsRegistry {
  registerMetric(metric: unknown): void;
}

/** The sliding window of expensive operations. */
export interface ExpensiveLimitOptions {
  /**
   * Expensive operations allowed per window: at most 100000 with `sliding-log` (one
   * timestamp is kept per operation), 1000000000 with `sliding-counter`.
   * @default 5
   */
  max?: number;
  /**
   * Window length in milliseconds, at most 2147483647.
   * @default 60000
   */
  windowMs?: number;
  /**
   * `sliding-log` is exact and keeps one timestamp per allowed operation (at most `max`);
   * `sliding-counter` keeps three numbers whatever `max` is, and approximates.
   * @default 'sliding-log'
   */
  algorithm?: 'sliding-log' | 'sliding-counter';
}

/** Repeat offenders: violations counted in a sliding window, then a close. */
export interface ViolationOptions {
  /**
   * Violations within `windowMs` that close the connection (that violation's frame is
   * still sent first), at most 1000000.
   * @default 10
   */
  max?: number;
  /**
   * Window in which violations are counted, in milliseconds, at most 2147483647.
   * @default 60000
   */
  windowMs?: number;
  /**
   * Close code: 1000-1003, 1007-1014 or 3000-4999.
   * @default 1008
   */
  closeCode?: number;
  /**
   * Close reason; cut to 123 bytes on a UTF-8 boundary.
   * @default 'Rate limit violations'
   */
  closeReason?: string;
}

/**
 * Options of `WsRateLimitModule.forRoot`. Every field is optional: a field left out is read
 * from its `WS_RATE_LIMIT_*` environment variable (see the README's table), else from its
 * default. A field given in code wins over the environment.
 */
export interface WsRateLimitModuleOptions {
  /**
   * Where shared limits live: `memory` (embedded), `redis`, or a store instance. An instance
   * is closed with the application when it made its own Redis connection
   * (`createRedisStore({ url })`); any other (one on a client of yours) is yours to close.
   * @default 'memory'
   */
  store?: 'memory' | 'redis' | RateLimitStore;
  /** How the Redis store reaches Redis. */
  redis?: RedisModuleOptions;
  /**
   * Whose budget a message spends: each `connection`, each client `ip`, or a function.
   * @default 'connection'
   */
  tracker?: TrackerOption;
  /**
   * All messages of a tracker.
   * @default { capacity: 100, refillRate: 50 }
   */
  global?: BucketLimitOptions;
  /**
   * A message type with no figures of its own (from `@Throttle` or `types`).
   * @default { capacity: 20, refillRate: 10 }
   */
  type?: BucketLimitOptions;
  /**
   * Figures per message type; `@Throttle` on a handler wins over these.
   * @default {}
   */
  types?: Record<string, TypeLimitOptions>;
  /** The expensive-operations window. */
  expensive?: ExpensiveLimitOptions;
  /**
   * New connections per client IP, decided before the upgrade by `WsRateLimitAdapter`.
   * @default { capacity: 5, refillRate: 1 }
   */
  connection?: BucketLimitOptions;
  /**
   * Open connections per client IP; 0 means no cap.
   * @default 0
   */
  maxConnectionsPerIp?: number;
  /**
   * How `WsRateLimitAdapter` tells a client its connection is refused: `http` answers the
   * upgrade with 429 and `Retry-After` (no WebSocket is created); `close` upgrades, then
   * closes at once with 1008 and a reason, which browsers (blind to a refused handshake's
   * status) can read. Gateway code runs for neither.
   * @default 'http'
   */
  connectionRefusal?: 'http' | 'close';
  /**
   * IPv6 clients are grouped by this many leading bits: one host usually holds a whole /64.
   * @default 64
   */
  ipv6Prefix?: number;
  /**
   * Milliseconds a TCP connection may take to send its whole request (headers and body) or
   * complete its upgrade (slowloris defence); the time the server takes to answer is not
   * counted. 0 turns the check off. At most 2147483647.
   * @default 10000
   */
  handshakeTimeoutMs?: number;
  /**
   * TCP connections per client IP in an exchange not yet complete (a request still
   * arriving or unanswered, an upgrade not yet open); more are dropped at once. 0 means no cap.
   * @default 10
   */
  maxPendingHandshakesPerIp?: number;
  /**
   * How often `WsRateLimitAdapter` pings each connection; 0 turns the heartbeat off. At most
   * 2147483647. On socket.io (`WsRateLimitIoAdapter`) it is Engine.IO's `pingInterval`, and
   * `pongTimeoutMs` its `pingTimeout` (0 leaves socket.io's own; a gateway's own win).
   * @default 30000
   */
  pingIntervalMs?: number;
  /**
   * A connection that has not answered a ping within this many milliseconds is terminated
   * (and its open-connection slot freed). When the event loop was held up (the check runs
   * more than a check late), a pong may be waiting unread: that check ends no one, the next
   * one does. At most 2147483647.
   * @default 10000
   */
  pongTimeoutMs?: number;
  /**
   * Accept permessage-deflate (on socket.io, Engine.IO's `perMessageDeflate`). Frames are
   * still limited by `maxPayload` after inflation.
   * @default false
   */
  perMessageDeflate?: boolean;
  /** Repeat offenders. */
  violations?: ViolationOptions;
  /**
   * Largest inbound frame in bytes (after decompression), enforced by `WsRateLimitAdapter`;
   * at most 2147483647, as `ws` reads it as a 32-bit signed integer (above, it wraps).
   * @default 65536
   */
  maxPayload?: number;
  /**
   * Proxies whose `X-Forwarded-For`/`Forwarded` headers are believed: addresses and CIDRs
   * (an array or a comma-separated string), or the number of proxy hops in front of the app.
   * Ranges that together cover every IPv4 or every IPv6 address (`0.0.0.0/0`, `::/0`) are
   * refused, like `true`: any client could choose its address.
   * @default none: the socket address is the client
   */
  trustProxy?: string | readonly string[] | number;
  /**
   * The forwarding header your trusted proxies set, and the only one read: a proxy passes on
   * the header it does not manage as the client sent it, so falling back to it would let a
   * client choose its own address.
   * @default 'x-forwarded-for' (as Express)
   */
  forwardedHeader?: 'x-forwarded-for' | 'forwarded';
  /**
   * When the store cannot answer: `open` decides with a local in-memory limiter of the same
   * figures, `closed` refuses with `STORE_UNAVAILABLE`.
   * @default 'open'
   */
  failMode?: 'open' | 'closed';
  /**
   * Builds the frame sent for a rejected message.
   * @default `{ event: 'rate_limit', data: info }`
   */
  frameBuilder?: RateLimitFrameBuilder;
  /**
   * Lets a message through unlimited when it returns true (as @nestjs/throttler's
   * `skipIf`), e.g. for an internal service's socket. Called with the message's execution
   * context for every routed message (and, with `WsRateLimitAdapter`, for frames that reach
   * no handler) before `@Throttle`'s own `skipIf`. Code only (no variable).
   * @example
   * skipIf: (context) => (context.switchToWs().getClient() as { internal?: boolean }).internal === true
   */
  skipIf?: SkipIf;
  /**
   * Prefix of every key the store writes.
   * @default 'wsrl:'
   */
  keyPrefix?: string;
  /**
   * Most keys the memory store holds (idle keys go first, then the least recently used), at
   * most 16777215 (a `Map`'s limit).
   * @default 100000
   */
  maxKeys?: number;
  /**
   * Bytes a client may leave unread before the limiter stops writing to it and closes it
   * (1008, `Slow consumer`); frames are never queued without bound.
   * @default 1048576
   */
  maxBufferedBytes?: number;
  /**
   * Limits per plan, by name; `planResolver` picks a connection's plan.
   * @default {}
   */
  plans?: Record<string, PlanLimitsOptions>;
  /** Picks the plan of a connection's messages (code only). */
  planResolver?: PlanResolver;
  /**
   * Shadow mode: decide, count, stream and log everything, but reject and close nothing,
   * so that limits can be tried against real traffic.
   * @default false
   */
  shadow?: boolean;
  /**
   * At the violation threshold, instead of closing, allow only handlers marked
   * `@Throttle({ essential: true })` for this many milliseconds (other messages get
   * `DEGRADED` frames); reaching the threshold again while degraded closes with 1008.
   * 0 closes at once. At most 2147483647.
   * @default 0
   */
  degradeCooldownMs?: number;
  /**
   * At the violation threshold, how long the 1008 close waits for the replies of messages
   * admitted before the decision (on `WsRateLimitAdapter`, which sends a connection's
   * answers in the order its messages came); the close happens then even if some are still
   * pending. Messages that arrive after the decision are not processed. 0 closes at once.
   * @default 2000
   */
  closeGraceMs?: number;
  /**
   * Client addresses, CIDRs or tracker names that skip every limit: an array, or a
   * comma-separated string.
   * @default none
   */
  allowList?: string | readonly string[];
  /**
   * Client addresses or CIDRs refused at the handshake (403), and tracker names whose
   * connections are closed (1008) at their first message.
   * @default none
   */
  denyList?: string | readonly string[];
  /**
   * Publish Prometheus metrics through `prom-client` (an optional peer dependency): without
   * it the module works and says once how to turn metrics on.
   * @default true
   */
  metrics?: boolean;
  /**
   * Prefix of every metric name.
   * @default 'ws_rate_limit_'
   */
  metricsPrefix?: string;
  /** The prom-client registry to register metrics in (code only). @default prom-client's global registry */
  metricsRegistry?: MetricsRegistry;
  /**
   * Read `WS_RATE_LIMIT_*` variables for the fields left out.
   * @default true
   */
  useEnv?: boolean;
}
