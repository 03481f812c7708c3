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
 * The applications of this process using each store (their `WsRateLimitService`): a store
 * given in code that closes with its application (`closesWithApp`) may be given to several,
 * and closes with the last of them.
 */
const users = new WeakMap<RateLimitStore, number>();

/** Notes that one more application uses `store` (see `releaseStore`). */
export function useStore(store: RateLimitStore): void {
  users.set(store, (users.get(store) ?? 0) + 1);
}

/** Whether an application of this process uses `store` (see `useStore`). */
export function inUse(store: RateLimitStore): boolean {
  return users.has(store);
}

/** Notes that an application stopped using `store`; true when no other one still uses it. */
export function releaseStore(store: RateLimitStore): boolean {
  const count = users.get(store) ?? 0;
  if (count <= 1) {
    users.delete(store);
    return true;
  }
  users.set(store, count - 1);
  return false;
}

/**
 * The store the options ask for: an instance given in code, or one this module creates. The
 * Redis store loads ioredis only when chosen.
 */
export async function createStore(options: ResolvedWsRateLimitOptions): Promise<RateLimitStore> {
  if (options.store instanceof RateLimitStore) return options.store;
  if (options.store === 'memory') return new MemoryRateLimitStore({ maxKeys: options.maxKeys });
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
