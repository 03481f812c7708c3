import { MIN_LEASE_TTL_MS } from '../../config/bounds.js';
import { WsRateLimitConfigError } from '../../exceptions/ws-rate-limit-config.error.js';
import { MAX_PLAN_SCRIPTS } from './plan-scripts.js';
import type { RedisStoreOptions } from './redis-store.options.js';

/** Throws `WsRateLimitConfigError` naming the first invalid Redis store option. */
export function validateOptions(options: RedisStoreOptions): void {
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
  // The client's own prefix, when one is set, replaces the store's: the same rule holds.
  for (const [path, prefix] of [
    ['redisOptions.keyPrefix', options.redisOptions?.keyPrefix],
    ['cluster.options.keyPrefix', options.cluster?.options?.keyPrefix],
  ] as const) {
    if (prefix !== undefined && (typeof prefix !== 'string' || /[{}]/.test(prefix))) {
      fail(`${path}: expected a string without { or } (every key of a tracker must hash to one slot of its own)`);
    }
  }
  const positive = (name: string, value: number | undefined, integer = false) => {
    if (value === undefined) return;
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
      fail(`${name}: expected a positive ${integer ? 'integer' : 'number'}`);
    }
  };
  positive('commandTimeoutMs', options.commandTimeoutMs);
  positive('leaseTtlMs', options.leaseTtlMs, true);
  // Refreshed every third of it, one Redis round trip each: shorter, a live instance's slots
  // lapse between refreshes and the open-connection cap leaks (1 ms let 12 of 200 through).
  if (options.leaseTtlMs !== undefined && options.leaseTtlMs < MIN_LEASE_TTL_MS) {
    fail(`leaseTtlMs: expected at least ${MIN_LEASE_TTL_MS}`);
  }
  positive('readyTimeoutMs', options.readyTimeoutMs);
  positive('breaker.failureThreshold', options.breaker?.failureThreshold, true);
  positive('breaker.probeIntervalMs', options.breaker?.probeIntervalMs);
  if (typeof options.blockCache === 'object' && options.blockCache !== null) {
    positive('blockCache.maxEntries', options.blockCache.maxEntries, true);
  }
  const reservations = options.reservations;
  if (reservations !== undefined && typeof reservations !== 'boolean') {
    if (reservations === null || typeof reservations !== 'object') {
      fail('reservations: expected true, false or { maxBatch, ttlMs }');
    }
    positive('reservations.maxBatch', reservations.maxBatch, true);
    if (reservations.maxBatch !== undefined && reservations.maxBatch > 4096) {
      fail('reservations.maxBatch: expected at most 4096');
    }
    positive('reservations.ttlMs', reservations.ttlMs);
    if (reservations.ttlMs !== undefined && reservations.ttlMs > 2_147_483_647) {
      fail('reservations.ttlMs: expected at most 2147483647');
    }
  }
  const planScripts = options.planScripts;
  if (
    planScripts !== undefined &&
    (typeof planScripts !== 'number' ||
      !Number.isInteger(planScripts) ||
      planScripts < 0 ||
      planScripts > MAX_PLAN_SCRIPTS)
  ) {
    fail(`planScripts: expected an integer from 0 to ${MAX_PLAN_SCRIPTS}`);
  }
  if (options.hashFieldTtls !== undefined && typeof options.hashFieldTtls !== 'boolean') {
    fail('hashFieldTtls: expected true or false');
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
