import type { ResolvedWsRateLimitOptions } from '../config/resolve-options.js';
import { MemoryRateLimitStore } from './memory/memory-store.js';
import { RateLimitStore } from './rate-limit-store.js';

/** The store the options ask for: an instance given in code, or one this module owns. */
export function createStore(options: ResolvedWsRateLimitOptions): RateLimitStore {
  if (options.store instanceof RateLimitStore) return options.store;
  return new MemoryRateLimitStore({ maxKeys: options.maxKeys });
}
