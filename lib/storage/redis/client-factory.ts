import type { Cluster, ClusterOptions, Redis, RedisOptions } from './ioredis-types.js';
import {
  DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
  type RedisSentinelOptions,
  type RedisStoreOptions,
} from './redis-store.options.js';

/** An ioredis client: standalone, Sentinel or Cluster. */
export type RedisStoreClient = Redis | Cluster;

/** Clients the store created (and so closes); a client given in options is never closed. */
export const ownedClients = new WeakSet<object>();

const RETRY_CAP_MS = 1000;
/** Reconnect delays 100, 200, ... ms, capped at 1 s (ioredis 6 would back off to 5 s). */
const retryStrategy = (times: number): number => Math.min(100 * times, RETRY_CAP_MS);
/**
 * A demoted master answers `READONLY`: reconnect, which through Sentinel (or a DNS name that
 * moved) finds the new master; a standalone URL reconnects to the same server, and the
 * breaker stays open until it is a master again.
 */
const reconnectOnError = (error: Error): boolean => error.message.startsWith('READONLY');

/**
 * The ioredis options of a Sentinel client: the sentinel settings over `base` (which holds
 * `redisOptions` and the store's safety settings), each falling back to `base`'s own. TLS to
 * the master and replicas needs ioredis's `enableTLSForSentinelMode` as well as `tls` (without
 * it ioredis connects in plain text); TLS to the sentinels themselves is `sentinelTLS`, set
 * through `redisOptions`. (The store follows failovers as the sentinels announce them with
 * subscribers of its own: see `watchSentinels`.)
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

/** ioredis's client classes from the loaded module. */
function ioredisClasses(loaded: unknown): IoRedisModule {
  // Native ESM sees ioredis's CommonJS exports as named exports; CommonJS interop may nest them.
  const module = loaded as Partial<IoRedisModule> & { default?: IoRedisModule };
  return module.Redis && module.Cluster ? (module as IoRedisModule) : module.default!;
}

/**
 * ioredis's standalone client class from the loaded module (typed through ioredis-types.ts,
 * so that the shipped declarations do not name 'ioredis').
 */
export function redisClassOf(loaded: unknown): new (options: RedisOptions) => Redis {
  return ioredisClasses(loaded).Redis;
}

interface IoRedisModule {
  Redis: typeof import('ioredis').Redis;
  Cluster: typeof import('ioredis').Cluster;
}

/** How soon ioredis sends a call that met TRYAGAIN again. */
const TRY_AGAIN_DELAY_MS = 5;

/**
 * The client the options name (`url`, `sentinel` or `cluster`), with the store's safety
 * settings over the caller's: no offline queue, no retries, no auto-pipelining, reconnect
 * delays capped at 1 s. `loaded` is the ioredis module, imported by the caller.
 */
export function buildClient(loaded: unknown, options: RedisStoreOptions): RedisStoreClient {
  const { Redis, Cluster } = ioredisClasses(loaded);
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
    // TRYAGAIN (a multi-key call on a slot being migrated) is always retried: within the
    // deadline, not 100 ms later, when the fail mode has answered and a resent decision
    // would count twice.
    retryDelayOnTryAgain: TRY_AGAIN_DELAY_MS,
    // Each TRYAGAIN (and the ASK before it) spends one of ioredis's redirections (16 by
    // default: about 40-80 ms of retries, while moving a slot's keys takes longer), and the
    // call then fails with "Too many Cluster redirections" long before its deadline (a
    // decision or a connection refused as if Redis were down): enough for the whole deadline.
    maxRedirections: Math.max(
      extra.maxRedirections ?? 16,
      16 + 2 * Math.ceil((options.commandTimeoutMs ?? DEFAULT_REDIS_COMMAND_TIMEOUT_MS) / TRY_AGAIN_DELAY_MS),
    ),
    redisOptions: {
      connectTimeout: 2000,
      // The store's `redisOptions` (an ACL user, TLS, a connection name) reach every node.
      ...options.redisOptions,
      ...extra.redisOptions,
      username: cluster.username ?? extra.redisOptions?.username ?? options.redisOptions?.username,
      password: cluster.password ?? extra.redisOptions?.password ?? options.redisOptions?.password,
      tls: cluster.tls === true ? {} : cluster.tls || extra.redisOptions?.tls || options.redisOptions?.tls,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      reconnectOnError,
    },
  });
}

/** The masters a client decides on: the server itself, or every master of a Cluster. */
export function mastersOf(client: RedisStoreClient): Redis[] {
  return client.isCluster ? (client as Cluster).nodes('master') : [client as Redis];
}

const noop = (): void => undefined;

/** Ends a client the store created: QUIT when connected (replies in flight arrive), else stop. */
export async function endClient(client: RedisStoreClient): Promise<void> {
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

/** Resolves once the client is `ready`, or after `timeoutMs` whatever its state. */
export function whenReady(client: RedisStoreClient, timeoutMs: number): Promise<void> {
  if (client.status === 'ready') return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      client.off('ready', done);
      resolve();
    };
    const timer = setTimeout(done, timeoutMs);
    client.on('ready', done);
  });
}
