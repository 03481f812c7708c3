import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Redis } from 'ioredis';
import { performance } from 'node:perf_hooks';
import type { RateLimitDecision, RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import type { RedisStoreOptions } from '../../lib/storage/redis/redis-store.options.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { startTcpProxy } from '../support/tcp-proxy.js';
import { adminClient, closeClient, ready, sleep, storeClient } from './helpers.js';

/** Review of the background reservations (b61a01a..): failing cases. */
describe('token reservations: review', () => {
  let server: RedisServer;
  let admin: Redis;
  const clients: Redis[] = [];
  const stores: RedisRateLimitStore[] = [];

  async function makeStore(options: Partial<RedisStoreOptions> = {}): Promise<RedisRateLimitStore> {
    const client = storeClient(server.port);
    clients.push(client);
    await ready(client);
    const store = new RedisRateLimitStore({
      client,
      keyPrefix: 'review:',
      commandTimeoutMs: 5000,
      reservations: { maxBatch: 16, ttlMs: 120_000 },
      ...options,
    });
    stores.push(store);
    return store;
  }

  const planOf = (store: RedisRateLimitStore, tracker: string, specs: readonly TierSpec[]): RateLimitPlan => ({
    tracker,
    tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
  });

  const allowed = (decisions: readonly RateLimitDecision[]): number => decisions.filter((d) => d.allowed).length;

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    await ready(admin);
  });

  afterAll(async () => {
    server?.resume();
    await Promise.all(stores.map((store) => store.close().catch(() => undefined)));
    await Promise.all([admin, ...clients].map(closeClient));
    await server?.stop();
  });

  it('delete() resets the bucket: a batch reserved before the reset (its reply still in flight) is not spent after it', async () => {
    const store = await makeStore();
    // Capacity 20, 1 token a second: no refill to speak of during the test.
    const capacity = 20;
    const spec = tokenBucketSpec('global', 'g', capacity, 1);
    const plan = planOf(store, 'ip:reset-in-flight', [spec]);
    // A new plan: the first call asks 2, the 30 others wait on it.
    const first = store.consume(plan);
    const waiters = Promise.all(Array.from({ length: 30 }, () => store.consume(plan)));
    // When it settles, the first waiter spends slot 1 and asks the next batch (16) in the background.
    expect((await first).allowed).toBe(true);
    // The keys are reset while that background call is in flight; the next decision opens a new entry.
    const began = performance.now();
    const reset = store.delete(plan.tiers.map((tier) => tier.key));
    const next = store.consume(plan);
    await reset;
    const afterReset: RateLimitDecision[] = [await next, ...(await waiters).slice(1)];
    afterReset.push(...(await Promise.all(Array.from({ length: 60 }, () => store.consume(plan)))));
    const refilled = Math.floor((performance.now() - began) / 1000) + 1;
    // A bucket reset to full admits its capacity (plus its refill); the background batch's 16
    // slots were taken before the reset and belong to the bucket as it was.
    expect(allowed(afterReset)).toBeLessThanOrEqual(capacity + refilled);
  });
  it('a batch that comes back late while the store closes, and whose give-back then fails, is no unhandled rejection', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => {
      unhandled.push(reason);
    };
    process.on('unhandledRejection', onUnhandled);
    try {
      const store = await makeStore({ commandTimeoutMs: 100 });
      const spec = tokenBucketSpec('global', 'g', 100, 1);
      const held = planOf(store, 'ip:close-late-held', [spec]);
      const late = planOf(store, 'ip:close-late-late', [spec]);
      // One plan holds unspent slots: close gives them back (a round trip close waits for).
      for (let i = 0; i < 3; i++) expect((await store.consume(held)).allowed).toBe(true);
      await sleep(50);
      // The other's first reserving call is in flight when Redis stalls and the store closes.
      server.pause();
      const stalled = Promise.resolve(store.consume(late)).catch(() => undefined);
      const closing = store.close();
      // The call misses its deadline (100 ms); close sends the first plan's give-back.
      await sleep(150);
      // Redis answers both (the reserve late), then stalls again before the late batch's give-back.
      server.resume();
      const until = performance.now() + 30;
      while (performance.now() < until) {
        // the event loop is held: the replies wait in the socket
      }
      server.pause();
      await closing;
      await stalled;
      // The late batch's give-back misses its deadline after close() resolved.
      await sleep(300);
      server.resume();
      await sleep(50);
      expect(unhandled).toEqual([]);
    } finally {
      server.resume();
      process.off('unhandledRejection', onUnhandled);
    }
  });
  it('concurrent refused decisions on a new plan are not sent one reserving call at a time (block cache off)', async () => {
    const proxy = await startTcpProxy(server.port);
    const client = storeClient(proxy.port);
    clients.push(client);
    await ready(client);
    const store = new RedisRateLimitStore({
      client,
      keyPrefix: 'review:',
      commandTimeoutMs: 5000,
      blockCache: false,
      reservations: { maxBatch: 16, ttlMs: 1000 },
    });
    stores.push(store);
    const other = await makeStore({ reservations: false });
    try {
      // Another instance spent the bucket (no refill to speak of).
      const spec = tokenBucketSpec('global', 'g', 5, 0.001);
      for (let i = 0; i < 5; i++) await other.consume(planOf(other, 'ip:refused-serial', [spec]));
      const plan = planOf(store, 'ip:refused-serial', [spec]);
      proxy.latency(20);
      const began = performance.now();
      const decisions = await Promise.all(Array.from({ length: 20 }, () => store.consume(plan)));
      const took = performance.now() - began;
      console.log(`20 concurrent refused decisions at 20 ms a round trip: ${took.toFixed(0)} ms`);
      expect(allowed(decisions)).toBe(0);
      // Per call (as before b61a01a, or at a batch size of 1) they go out together: one round trip.
      expect(took).toBeLessThan(120);
    } finally {
      proxy.pass();
      await store.close();
      await proxy.close();
    }
  });
  it('a background call refused only by the TTL is no Redis error: a burst within the capacity never opens the breaker', async () => {
    const changes: boolean[] = [];
    const errors: unknown[] = [];
    const store = await makeStore({
      reservations: { maxBatch: 64, ttlMs: 1000 },
      onAvailabilityChange: (available) => changes.push(available),
    });
    // 100 burst, 10 a second (slots 100 ms apart): a batch of 8 reaches past the TTL.
    const spec = tokenBucketSpec('global', 'g', 100, 10);
    const plan = planOf(store, 'ip:ttl-cut-background', [spec]);
    let admitted = 0;
    for (let i = 0; i < 60; i++) {
      try {
        if ((await store.consume(plan)).allowed) admitted++;
      } catch (error) {
        errors.push(error);
      }
      // A steady pace (500 a second, above the refill but within the burst).
      await sleep(2);
    }
    // The background call for the slots after a TTL-cut batch (they start more than ttlMs
    // ahead) gets the script's error reply 'wsrl: a refused reservation with no wait'.
    console.log((await admin.info('errorstats')).trim(), errors[0]);
    console.log(
      `burst of 60 within a capacity of 100: ${admitted} admitted, ${errors.length} errors, breaker ${JSON.stringify(changes)}`,
    );
    expect(changes).toEqual([]);
    expect(errors).toEqual([]);
    expect(admitted).toBe(60);
  });
});
