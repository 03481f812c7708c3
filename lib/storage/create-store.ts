import { Logger } from '@nestjs/common';
import type { ResolvedWsRateLimitOptions } from '../config/resolve-options.js';
import { MemoryRateLimitStore } from './memory/memory-store.js';
import { RateLimitStore } from './rate-limit-store.js';
import { createRedisStore } from './redis/redis-store.js';

/**
 * Whether the application closes `store` when it shuts down: a store this module made from
 * its options, or one given in code that made its own Redis connection (from a URL, Sentinel
 * or Cluster options, as `createRedisStore({ url })` does: nothing else holds it to close
 * it). A store given with a client of yours (or any other instance) is yours to close.
 */
export function closesWithApp(store: RateLimitStore, options: ResolvedWsRateLimitOptions): boolean {
  return options.store !== store || (store as { readonly ownsClient?: unknown }).ownsClient === true;
}

/**
 * What holds each store in this process: the limiter service of every application built on
 * it (from when the service is made until its application shuts down). A store given in
 * code that closes with its application (`closesWithApp`) may be given to several, and
 * closes when the last lets go.
 */
const holders = new WeakMap<RateLimitStore, Set<object>>();

/** Notes that `holder` (a limiter service) holds `store` (see `releaseStore`). */
export function useStore(store: RateLimitStore, holder: object): void {
  let set = holders.get(store);
  if (set === undefined) holders.set(store, (set = new Set()));
  set.add(holder);
}

/** Whether anything holds `store` (see `useStore`). */
export function inUse(store: RateLimitStore): boolean {
  return (holders.get(store)?.size ?? 0) > 0;
}

/** Notes that `holder` lets go of `store` (once, however often called); true when nothing holds it any more. */
export function releaseStore(store: RateLimitStore, holder: object): boolean {
  holders.get(store)?.delete(holder);
  return !inUse(store);
}

/**
 * The store the options ask for: an instance given in code, or one this module creates. The
 * Redis store loads ioredis only when chosen.
 */
export async function createStore(options: ResolvedWsRateLimitOptions): Promise<RateLimitStore> {
  if (options.store instanceof RateLimitStore) return options.store;
  if (options.store === 'memory') {
    return new MemoryRateLimitStore({ maxKeys: options.maxKeys }).onFirstEviction(() => warnEvicting(options.maxKeys));
  }
  const { redis } = options;
  const common = {
    keyPrefix: options.keyPrefix,
    commandTimeoutMs: redis.commandTimeoutMs,
    clock: redis.clock,
    leaseTtlMs: redis.leaseTtlMs,
    blockCache: redis.blockCache === 0 ? (false as const) : { maxEntries: redis.blockCache },
    reservations:
      redis.reservationBatch === 0
        ? (false as const)
        : { maxBatch: redis.reservationBatch, ttlMs: redis.reservationTtlMs },
    ...(redis.redisOptions ? { redisOptions: redis.redisOptions } : {}),
  };
  if (redis.client) return createRedisStore({ ...common, client: redis.client });
  if (redis.url) return createRedisStore({ ...common, url: withPassword(redis.url, redis.password) });
  if (redis.sentinels) {
    return createRedisStore({
      ...common,
      sentinel: {
        sentinels: [...redis.sentinels],
        name: redis.sentinelName!,
        ...(redis.password === undefined ? {} : { password: redis.password }),
      },
    });
  }
  return createRedisStore({
    ...common,
    cluster: {
      nodes: [...redis.clusterNodes!],
      ...(redis.password === undefined ? {} : { password: redis.password }),
    },
  });
}

/**
 * The first eviction of a memory store the module made (the store, or the fail-open
 * fallback): said once, as the limits of the trackers dropped start over.
 */
export function warnEvicting(maxKeys: number, which = 'The memory store'): void {
  new Logger('WsRateLimit').warn(
    `${which} dropped a tracker whose limits had not recovered, to stay within ` +
      `WS_RATE_LIMIT_MAX_KEYS=${maxKeys} (option maxKeys): its limits start over. Raise it if this happens ` +
      'under normal traffic; stats().evictions and the memory_store_evictions_total metric count the ' +
      'states dropped. (Said once per store.)',
  );
}

/**
 * A password given beside a URL fills in for one the URL does not carry. It goes into the URL
 * itself: ioredis reads the URL first, and a URL naming a user without a password gives it an
 * empty one, which would win over an option.
 */
function withPassword(url: string, password: string | undefined): string {
  if (password === undefined) return url;
  const parsed = new URL(url);
  if (parsed.password !== '') return url;
  parsed.password = password;
  return parsed.toString();
}
