export { RedisRateLimitStore, createRedisStore, type RedisStoreClient } from './redis-store.js';
export { RedisStoreUnavailableError } from './redis-store.error.js';
export {
  DEFAULT_BLOCK_CACHE_ENTRIES,
  DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
  DEFAULT_REDIS_KEY_PREFIX,
  DEFAULT_REDIS_LEASE_TTL_MS,
  type RedisClusterOptions,
  type RedisSentinelOptions,
  type RedisStoreOptions,
} from './redis-store.options.js';
export { BlockCache } from './block-cache.js';
