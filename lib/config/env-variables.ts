// A table of every variable, one entry each, with their bounds: over 400 lines for that reason.
import {
  MAX_CAPACITY,
  MAX_MAP_ENTRIES,
  MAX_MESSAGE_RATE,
  MAX_PAYLOAD_BYTES,
  MAX_SLIDING_COUNTER,
  MAX_TIMER_MS,
  MAX_VIOLATIONS,
  MIN_LEASE_TTL_MS,
  MIN_REFILL_RATE,
} from './bounds.js';
import type { OptionPath } from './option-paths.js';

/** Prefix of every environment variable the module reads. */
export const ENV_PREFIX = 'WS_RATE_LIMIT_';

/** How a variable's text is read. */
export type EnvKind =
  | 'positive-number'
  | 'positive-integer'
  | 'non-negative-integer'
  | 'enum'
  | 'string'
  | 'json'
  | 'trust-proxy'
  | 'redis-url'
  | 'close-code'
  | 'ipv6-prefix'
  | 'boolean'
  | 'plans'
  | 'access-list'
  | 'host-list';

/** One environment variable and the option it sets. */
export interface EnvVariable {
  /** Full variable name. */
  readonly name: string;
  /** Dotted path of the option in `WsRateLimitModuleOptions`. */
  readonly option: OptionPath;
  readonly kind: EnvKind;
  /** Accepted values of an `enum`. */
  readonly values?: readonly string[];
  /** Smallest value of a number (else what its kind allows). */
  readonly min?: number;
  /** Largest value of a number (else any safe one): what the option's consumer accepts. */
  readonly max?: number;
  /** Default, as written in the README (`none` when unset). */
  readonly default: string;
  /** One sentence for the README's table. */
  readonly description: string;
}

/**
 * Every variable the module reads. The README's table is checked against this list by a
 * test, so the two cannot drift.
 */
export const ENV_VARIABLES: readonly EnvVariable[] = [
  {
    name: 'WS_RATE_LIMIT_STORE',
    option: 'store',
    kind: 'enum',
    values: ['memory', 'redis'],
    default: 'memory',
    description: 'Where shared limits live: `memory` or `redis`.',
  },
  {
    name: 'WS_RATE_LIMIT_REDIS_URL',
    option: 'redis.url',
    kind: 'redis-url',
    default: 'none',
    description: '`redis://` or `rediss://` URL of a standalone Redis.',
  },
  {
    name: 'WS_RATE_LIMIT_REDIS_SENTINELS',
    option: 'redis.sentinels',
    kind: 'host-list',
    default: 'none',
    description: 'Redis Sentinels as `host:port`, comma-separated (with `REDIS_SENTINEL_NAME`).',
  },
  {
    name: 'WS_RATE_LIMIT_REDIS_SENTINEL_NAME',
    option: 'redis.sentinelName',
    kind: 'string',
    default: 'none',
    description: 'The master name the sentinels monitor (only with `REDIS_SENTINELS`).',
  },
  {
    name: 'WS_RATE_LIMIT_REDIS_PASSWORD',
    option: 'redis.password',
    kind: 'string',
    default: 'none',
    description: 'Password of the Redis servers: Sentinel, Cluster, or a URL that carries none of its own.',
  },
  {
    name: 'WS_RATE_LIMIT_REDIS_CLUSTER_NODES',
    option: 'redis.clusterNodes',
    kind: 'host-list',
    default: 'none',
    description: 'Redis Cluster start-up nodes as `host:port`, comma-separated.',
  },
  {
    name: 'WS_RATE_LIMIT_REDIS_TIMEOUT_MS',
    option: 'redis.commandTimeoutMs',
    kind: 'positive-integer',
    max: MAX_TIMER_MS,
    default: '50',
    description: 'Deadline of one Redis decision; past it the fail mode decides.',
  },
  {
    name: 'WS_RATE_LIMIT_REDIS_CLOCK',
    option: 'redis.clock',
    kind: 'enum',
    values: ['redis', 'app'],
    default: 'redis',
    description:
      "Whose clock decides: Redis's `TIME` (instances may be skewed), or the app's (for Redis that forbids `TIME` in scripts).",
  },
  {
    name: 'WS_RATE_LIMIT_REDIS_LEASE_TTL_MS',
    option: 'redis.leaseTtlMs',
    kind: 'positive-integer',
    min: MIN_LEASE_TTL_MS,
    max: MAX_TIMER_MS,
    default: '30000',
    description:
      'Open-connection slots of an instance that died come back within this time (at least 1000: a live instance refreshes its slots every third of it, so it keeps them through an event-loop stall of up to two thirds of it).',
  },
  {
    name: 'WS_RATE_LIMIT_REDIS_BLOCK_CACHE',
    option: 'redis.blockCache',
    kind: 'non-negative-integer',
    max: MAX_MAP_ENTRIES,
    default: '10000',
    description: 'Refused plans remembered locally until their retry time (no Redis call for them); 0 = off.',
  },
  {
    name: 'WS_RATE_LIMIT_REDIS_RESERVATION_BATCH',
    option: 'redis.reservationBatch',
    kind: 'non-negative-integer',
    max: 4096,
    default: '0',
    description:
      'Token reservations: the most slots of a shared token bucket an instance holds to spend locally (the batch being spent and the next); 0 = off.',
  },
  {
    name: 'WS_RATE_LIMIT_REDIS_RESERVATION_TTL_MS',
    option: 'redis.reservationTtlMs',
    kind: 'positive-integer',
    max: MAX_TIMER_MS,
    default: '1000',
    description:
      "Token reservations: an instance holds at most this long of a shared bucket's refill unspent, so what a dead instance held is refilled within it.",
  },
  {
    name: 'WS_RATE_LIMIT_TRACKER',
    option: 'tracker',
    kind: 'enum',
    values: ['connection', 'ip'],
    default: 'connection',
    description: 'Whose budget a message spends: `connection` or `ip` (a function in code).',
  },
  {
    name: 'WS_RATE_LIMIT_GLOBAL_CAPACITY',
    option: 'global.capacity',
    kind: 'positive-number',
    max: MAX_CAPACITY,
    default: '100',
    description: 'All messages of a tracker: burst.',
  },
  {
    name: 'WS_RATE_LIMIT_GLOBAL_REFILL_RATE',
    option: 'global.refillRate',
    kind: 'positive-number',
    min: MIN_REFILL_RATE,
    max: MAX_MESSAGE_RATE,
    default: '50',
    description: 'All messages of a tracker: tokens per second.',
  },
  {
    name: 'WS_RATE_LIMIT_TYPE_CAPACITY',
    option: 'type.capacity',
    kind: 'positive-number',
    max: MAX_CAPACITY,
    default: '20',
    description: 'A message type without figures of its own: burst.',
  },
  {
    name: 'WS_RATE_LIMIT_TYPE_REFILL_RATE',
    option: 'type.refillRate',
    kind: 'positive-number',
    min: MIN_REFILL_RATE,
    max: MAX_MESSAGE_RATE,
    default: '10',
    description: 'A message type without figures of its own: tokens per second.',
  },
  {
    name: 'WS_RATE_LIMIT_TYPES',
    option: 'types',
    kind: 'json',
    default: '{}',
    description: 'Figures per message type as JSON, e.g. `{"chat":{"capacity":30,"refillRate":15}}`; `@Throttle` wins.',
  },
  {
    name: 'WS_RATE_LIMIT_EXPENSIVE_MAX',
    option: 'expensive.max',
    kind: 'positive-integer',
    max: MAX_SLIDING_COUNTER,
    default: '5',
    description: 'Expensive operations allowed per window.',
  },
  {
    name: 'WS_RATE_LIMIT_EXPENSIVE_WINDOW_MS',
    option: 'expensive.windowMs',
    kind: 'positive-integer',
    max: MAX_TIMER_MS,
    default: '60000',
    description: 'Expensive-operations window, in milliseconds.',
  },
  {
    name: 'WS_RATE_LIMIT_EXPENSIVE_ALGORITHM',
    option: 'expensive.algorithm',
    kind: 'enum',
    values: ['sliding-log', 'sliding-counter'],
    default: 'sliding-log',
    description: '`sliding-log` (exact, one entry per allowed operation) or `sliding-counter` (O(1), approximate).',
  },
  {
    name: 'WS_RATE_LIMIT_CONNECTION_CAPACITY',
    option: 'connection.capacity',
    kind: 'positive-number',
    max: MAX_CAPACITY,
    default: '5',
    description: 'New connections per client IP: burst.',
  },
  {
    name: 'WS_RATE_LIMIT_CONNECTION_REFILL_RATE',
    option: 'connection.refillRate',
    kind: 'positive-number',
    min: MIN_REFILL_RATE,
    max: MAX_MESSAGE_RATE,
    default: '1',
    description: 'New connections per client IP: per second.',
  },
  {
    name: 'WS_RATE_LIMIT_MAX_CONNECTIONS_PER_IP',
    option: 'maxConnectionsPerIp',
    kind: 'non-negative-integer',
    default: '0',
    description: 'Open connections per client IP; 0 = no cap.',
  },
  {
    name: 'WS_RATE_LIMIT_CONNECTION_REFUSAL',
    option: 'connectionRefusal',
    kind: 'enum',
    values: ['http', 'close'],
    default: 'http',
    description:
      'How a refused connection is told: `http` (429 + `Retry-After`, no upgrade) or `close` (upgrade, then close 1008; browsers can read that).',
  },
  {
    name: 'WS_RATE_LIMIT_IPV6_PREFIX',
    option: 'ipv6Prefix',
    kind: 'ipv6-prefix',
    default: '64',
    description: 'IPv6 clients are grouped by this many leading bits (32-128).',
  },
  {
    name: 'WS_RATE_LIMIT_HANDSHAKE_TIMEOUT_MS',
    option: 'handshakeTimeoutMs',
    kind: 'non-negative-integer',
    max: MAX_TIMER_MS,
    default: '10000',
    description:
      'A TCP connection that has not sent its whole request (headers and body) or completed its upgrade by then is dropped; the time the server takes to answer is not counted; 0 = off.',
  },
  {
    name: 'WS_RATE_LIMIT_MAX_PENDING_HANDSHAKES_PER_IP',
    option: 'maxPendingHandshakesPerIp',
    kind: 'non-negative-integer',
    default: '10',
    description:
      'TCP connections per peer address in an exchange not yet complete (trusted proxies exempt); 0 = no cap.',
  },
  {
    name: 'WS_RATE_LIMIT_PING_INTERVAL_MS',
    option: 'pingIntervalMs',
    kind: 'non-negative-integer',
    max: MAX_TIMER_MS,
    default: '30000',
    description: 'How often each connection is pinged; 0 = no heartbeat.',
  },
  {
    name: 'WS_RATE_LIMIT_PONG_TIMEOUT_MS',
    option: 'pongTimeoutMs',
    kind: 'positive-integer',
    max: MAX_TIMER_MS,
    default: '10000',
    description:
      'A connection that has not answered a ping within this time is terminated (not by a check that ran late: its pong may be unread).',
  },
  {
    name: 'WS_RATE_LIMIT_PER_MESSAGE_DEFLATE',
    option: 'perMessageDeflate',
    kind: 'boolean',
    default: 'false',
    description: 'Accept permessage-deflate; frames are limited by `MAX_PAYLOAD` after decompression.',
  },
  {
    name: 'WS_RATE_LIMIT_MAX_VIOLATIONS',
    option: 'violations.max',
    kind: 'positive-integer',
    max: MAX_VIOLATIONS,
    default: '10',
    description: 'Violations before close 1008, counted in the window below.',
  },
  {
    name: 'WS_RATE_LIMIT_VIOLATION_WINDOW_MS',
    option: 'violations.windowMs',
    kind: 'positive-integer',
    max: MAX_TIMER_MS,
    default: '60000',
    description: 'Window in which violations are counted, in milliseconds.',
  },
  {
    name: 'WS_RATE_LIMIT_VIOLATION_CLOSE_CODE',
    option: 'violations.closeCode',
    kind: 'close-code',
    default: '1008',
    description: 'Close code for repeat offenders: 1000-1003, 1007-1014 or 3000-4999.',
  },
  {
    name: 'WS_RATE_LIMIT_VIOLATION_CLOSE_REASON',
    option: 'violations.closeReason',
    kind: 'string',
    default: 'Rate limit violations',
    description: 'Close reason for repeat offenders, cut to 123 bytes.',
  },
  {
    name: 'WS_RATE_LIMIT_MAX_PAYLOAD',
    option: 'maxPayload',
    kind: 'positive-integer',
    max: MAX_PAYLOAD_BYTES,
    default: '65536',
    description: 'Largest inbound frame in bytes.',
  },
  {
    name: 'WS_RATE_LIMIT_TRUST_PROXY',
    option: 'trustProxy',
    kind: 'trust-proxy',
    default: 'none',
    description: 'Proxies whose forwarding headers are believed: addresses/CIDRs, comma-separated, or a hop count.',
  },
  {
    name: 'WS_RATE_LIMIT_FORWARDED_HEADER',
    option: 'forwardedHeader',
    kind: 'enum',
    values: ['x-forwarded-for', 'forwarded'],
    default: 'x-forwarded-for',
    description:
      'The forwarding header your trusted proxies set: `x-forwarded-for` or `forwarded`; the other is ignored.',
  },
  {
    name: 'WS_RATE_LIMIT_FAIL_MODE',
    option: 'failMode',
    kind: 'enum',
    values: ['open', 'closed'],
    default: 'open',
    description: 'When the store is unreachable: `open` (local fallback limits) or `closed`.',
  },
  {
    name: 'WS_RATE_LIMIT_KEY_PREFIX',
    option: 'keyPrefix',
    kind: 'string',
    default: 'wsrl:',
    description: 'Prefix of every key the store writes.',
  },
  {
    name: 'WS_RATE_LIMIT_MAX_KEYS',
    option: 'maxKeys',
    kind: 'positive-integer',
    max: MAX_MAP_ENTRIES,
    default: '100000',
    description: 'Most keys the memory store holds; idle keys are dropped first, then the least recently used.',
  },
  {
    name: 'WS_RATE_LIMIT_MAX_BUFFERED_BYTES',
    option: 'maxBufferedBytes',
    kind: 'positive-integer',
    default: '1048576',
    description: 'Unread bytes a client may leave before it is cut off (terminated: it sees 1006).',
  },
  {
    name: 'WS_RATE_LIMIT_PLANS',
    option: 'plans',
    kind: 'plans',
    default: '{}',
    description:
      'Per-plan limits as JSON, e.g. `{"premium":{"global":{"capacity":500,"refillRate":200}}}`; a plan may set `global`, `type`, `types`, `expensive`.',
  },
  {
    name: 'WS_RATE_LIMIT_SHADOW',
    option: 'shadow',
    kind: 'boolean',
    default: 'false',
    description: 'Decide, count, stream and log everything, but reject and close nothing.',
  },
  {
    name: 'WS_RATE_LIMIT_CLOSE_GRACE_MS',
    option: 'closeGraceMs',
    kind: 'non-negative-integer',
    max: MAX_TIMER_MS,
    default: '2000',
    description:
      'At the violation threshold, how long the 1008 close waits for replies of messages admitted before it (`WsRateLimitAdapter`); 0 = close at once.',
  },
  {
    name: 'WS_RATE_LIMIT_DEGRADE_COOLDOWN_MS',
    option: 'degradeCooldownMs',
    kind: 'non-negative-integer',
    max: MAX_TIMER_MS,
    default: '0',
    description:
      'At the violation threshold, allow only `essential` types for this long (code `DEGRADED`) instead of closing; 0 = close at once.',
  },
  {
    name: 'WS_RATE_LIMIT_ALLOW_LIST',
    option: 'allowList',
    kind: 'access-list',
    default: 'none',
    description: 'Addresses, CIDRs or tracker names that skip every limit, comma-separated.',
  },
  {
    name: 'WS_RATE_LIMIT_DENY_LIST',
    option: 'denyList',
    kind: 'access-list',
    default: 'none',
    description:
      'Addresses or CIDRs refused at the handshake (403), and tracker names whose connections are closed (1008), comma-separated.',
  },
  {
    name: 'WS_RATE_LIMIT_METRICS',
    option: 'metrics',
    kind: 'boolean',
    default: 'true',
    description: 'Publish Prometheus metrics through `prom-client` when it is installed.',
  },
  {
    name: 'WS_RATE_LIMIT_METRICS_PREFIX',
    option: 'metricsPrefix',
    kind: 'string',
    default: 'ws_rate_limit_',
    description: 'Prefix of every metric name: letters, digits, `_` and `:`, not starting with a digit.',
  },
];
