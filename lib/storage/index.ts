export * from './rate-limit-store.js';
export * from './memory/memory-store.js';
export { MalformedStoreAnswerError } from './store-answers.js';
export {
  RedisRateLimitStore,
  createRedisStore,
  RedisStoreUnavailableError,
  type RedisStoreClient,
  type RedisStoreOptions,
  type RedisSentinelOptions,
  type RedisClusterOptions,
} from './redis/index.js';
