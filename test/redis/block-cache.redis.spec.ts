import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Redis } from 'ioredis';
import { performance } from 'node:perf_hooks';
import type {
  RateLimitDecision,
  RateLimitPlan,
  RateLimitRejected,
  TierSpec,
} from '../../lib/interfaces/plan.interface.js';
import { concurrencySpec, tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { BlockCache, RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { adminClient, closeClient, ready, sleep, storeClient } from './helpers.js';

/** Script calls the server has run so far (EVAL and EVALSHA), from INFO commandstats. */
async function scriptCalls(admin: Redis): Promise<number> {
  const info = await admin.info('commandstats');
  let calls = 0;
  for (const match of info.matchAll(/^cmdstat_(?:eval|evalsha):calls=(\d+)/gm)) calls += Number(match[1]);
  return calls;
}

/** Issue 4 item 6: a client known to be over its limit costs Redis nothing. */
describe('local block cache', () => {
  let server: RedisServer;
  let admin: Redis;
  let client: Redis;
  let store: RedisRateLimitStore;

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    client = storeClient(server.port);
    await Promise.all([ready(admin), ready(client)]);
    store = new RedisRateLimitStore({ client, keyPrefix: 'block:', commandTimeoutMs: 2000 });
  });

  afterAll(async () => {
    await store?.close();
    await closeClient(client);
    await closeClient(admin);
    await server?.stop();
  });

  const planOf = (tracker: string, specs: readonly TierSpec[], lease?: string): RateLimitPlan => ({
    tracker,
    tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
    lease,
  });

  it('after a refusal, further decisions before retryAfter send no command, with retryAfter counting down', async () => {
    const plan = planOf('ip:flood', [tokenBucketSpec('global', 'g', 2, 0.5)]); // a token every 2 s
    const began = performance.now();
    expect((await store.consume(plan)).allowed).toBe(true);
    expect((await store.consume(plan)).allowed).toBe(true);
    const first = (await store.consume(plan)) as RateLimitRejected;
    expect(first.allowed).toBe(false);
    // 2 s from the first decision, less the time the three took (a few ms on an idle machine).
    expect(first.retryAfter).toBeLessThanOrEqual(2000);
    expect(first.retryAfter).toBeGreaterThan(2000 - (performance.now() - began) - 2);

    const before = await scriptCalls(admin);
    const waits: number[] = [];
    for (let i = 0; i < 1000; i++) {
      const decision = store.consume(plan);
      // Answered synchronously: no promise, no round trip.
      expect(decision).toHaveProperty('allowed', false);
      waits.push((decision as RateLimitRejected).retryAfter);
      if (i % 100 === 0) await sleep(10);
    }
    expect(await scriptCalls(admin)).toBe(before);
    expect(waits.every((wait, i) => wait >= 1 && wait <= first.retryAfter && (i === 0 || wait <= waits[i - 1]!))).toBe(
      true,
    );
    expect(waits.at(-1)!).toBeLessThan(first.retryAfter);

    // Rejections per second from the cache alone.
    const start = performance.now();
    let refused = 0;
    while (performance.now() - start < 200) {
      for (let i = 0; i < 10_000; i++) if (!(store.consume(plan) as RateLimitDecision).allowed) refused++;
    }
    const perSecond = refused / ((performance.now() - start) / 1000);
    console.log(`block cache: ${(perSecond / 1e6).toFixed(2)} M rejections/s, 0 Redis commands`);
    expect(await scriptCalls(admin)).toBe(before);

    // Once the wait is over, Redis decides again, and the retry is allowed: retryAfter never lied.
    await sleep(first.retryAfter + 5);
    expect((await store.consume(plan)).allowed).toBe(true);
    expect(await scriptCalls(admin)).toBe(before + 1);
  });

  it('is keyed by plan: the same keys with another cost still go to Redis', async () => {
    const tracker = 'ip:costs';
    const cheap = planOf(tracker, [tokenBucketSpec('global', 'g', 3, 1, 3)]);
    const other = planOf(tracker, [tokenBucketSpec('global', 'g', 3, 1, 1)]);
    expect((await store.consume(cheap)).allowed).toBe(true);
    expect((await store.consume(cheap)).allowed).toBe(false);
    const before = await scriptCalls(admin);
    expect((await store.consume(other)).allowed).toBe(false);
    expect(await scriptCalls(admin)).toBe(before + 1);
  });

  it('does not keep refusals decided by a concurrency tier (a slot may free any moment)', async () => {
    const plan = planOf('ip:slots', [concurrencySpec('concurrency', 'cc', 1)], 'one');
    expect((await store.consume(plan)).allowed).toBe(true);
    expect((await store.consume(plan)).allowed).toBe(false);
    await store.release(plan);
    expect((await store.consume(plan)).allowed).toBe(true);
    await store.release(plan);
  });

  it('is emptied by delete (a reset gives the budget back at once)', async () => {
    const plan = planOf('ip:reset', [tokenBucketSpec('global', 'g', 1, 0.01)]);
    expect((await store.consume(plan)).allowed).toBe(true);
    expect((await store.consume(plan)).allowed).toBe(false);
    await store.delete(plan.tiers.map((tier) => tier.key));
    expect((await store.consume(plan)).allowed).toBe(true);
  });

  it('stays within its bound without timers', () => {
    const cache = new BlockCache(64);
    const decision: RateLimitRejected = {
      allowed: false,
      tier: 'global',
      index: 0,
      retryAfter: 1000,
      limit: 1,
      remaining: 0,
    };
    for (let i = 0; i < 10_000; i++) cache.set(`k${i}`, decision, i);
    expect(cache.size).toBeLessThanOrEqual(64);
    expect(cache.get('k9999', 9999)).toBe(decision);
    expect(cache.get('k9999', 10_998.5)?.retryAfter).toBe(1);
    expect(cache.get('k9999', 10_999)).toBeUndefined();
  });
});
