import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Redis } from 'ioredis';
import type { RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import type { RateLimitStore } from '../../lib/storage/rate-limit-store.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { T0, type ManualClock } from './decision-table.js';
import { trackerHashOf } from '../../lib/storage/redis/redis-keys.js';
import { adminClient, closeClient, logField, ready, storeClient } from './helpers.js';

/** xorshift32: a fixed pseudo-random schedule, the same on every run. */
function random(seed: number): () => number {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/**
 * Key layout 3 and later keep a sliding log in its tracker hash's field while it holds at most 64
 * live entries, and in a sorted set at its tier key beyond (`LOG_FIELD_LUA`). Both forms,
 * and the move between them, decide as the memory store does.
 */
describe.each([
  ['plan scripts', undefined],
  ['generic script', 0],
] as const)('sliding logs in the tracker hash (%s)', (_variant, planScripts) => {
  let server: RedisServer;
  let admin: Redis;
  let client: Redis;
  const clock: ManualClock = { now: T0 };
  let redis: RedisRateLimitStore;

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    client = storeClient(server.port);
    await Promise.all([ready(admin), ready(client)]);
    redis = new RedisRateLimitStore({
      client,
      keyPrefix: 'logf:',
      clock: 'app',
      now: () => clock.now,
      blockCache: false,
      commandTimeoutMs: 2000,
      planScripts,
    });
  });

  afterAll(async () => {
    await redis?.close();
    await closeClient(client);
    await closeClient(admin);
    await server?.stop();
  });

  const planOf = (store: RateLimitStore, tracker: string, specs: readonly TierSpec[]): RateLimitPlan => ({
    tracker,
    tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
  });
  const fieldOf = (plan: RateLimitPlan, index: number) => logField(admin, plan.tiers[index]!.key);

  it('a log outgrowing its field moves to a sorted set, and decides as the memory store throughout', async () => {
    const specs = [
      tokenBucketSpec('global', 'g', 400, 300),
      windowSpec('expensive', 'x', 'sliding-log', 150, 1000),
      windowSpec('type', 'x2', 'sliding-log', 6, 250, 2),
    ];
    const memoryClock: ManualClock = { now: clock.now };
    const memory = new MemoryRateLimitStore({ clock: () => memoryClock.now });
    const tracker = `user:spill-${planScripts ?? 'own'}`;
    // Two plans of one tracker: the bucket and the large log, and the small log alone.
    const memoryPlans = [planOf(memory, tracker, specs.slice(0, 2)), planOf(memory, tracker, specs.slice(2))];
    const redisPlans = [planOf(redis, tracker, specs.slice(0, 2)), planOf(redis, tracker, specs.slice(2))];
    const next = random(0x2545f491);
    const forms = new Set<string>();
    let refused = 0;
    for (let step = 0; step < 700; step++) {
      // Bursts (no time passes) and pauses: the log fills past 64 live entries, then drains.
      const advance = next() < 0.7 ? 0 : next() < 0.9 ? next() * 12 : next() * 900;
      clock.now += advance;
      memoryClock.now += advance;
      const p = next() < 0.8 ? 0 : 1;
      if (step % 50 === 49) {
        expect({ step, peek: await redis.peek(redisPlans[p]!) }).toEqual({
          step,
          peek: await memory.peek(memoryPlans[p]!),
        });
      }
      const want = await memory.consume(memoryPlans[p]!);
      const got = await redis.consume(redisPlans[p]!);
      expect({ step, p, got }).toEqual({ step, p, got: want });
      if (!got.allowed) refused++;
      forms.add(String((await fieldOf(redisPlans[0]!, 1))?.subarray(0, 1)));
    }
    // Both forms were used, and the limits were reached.
    expect([...forms].sort()).toEqual(['L', 'Z']);
    expect(refused).toBeGreaterThan(0);
    expect(await admin.type(redisPlans[0]!.tiers[1]!.key)).toBe('zset');
    // The small log never outgrew its field.
    expect((await fieldOf(redisPlans[1]!, 0))?.subarray(0, 1).toString()).toBe('L');
    expect(await admin.exists(redisPlans[1]!.tiers[0]!.key)).toBe(0);
  });

  it('a field holding something else reads as an empty log; a sorted-set mark with no set, as an empty set', async () => {
    const log = windowSpec('expensive', 'x', 'sliding-log', 2, 60_000);
    const plan = planOf(redis, `user:odd-${planScripts ?? 'own'}`, [log]);
    const key = plan.tiers[0]!.key;
    const { hash } = trackerHashOf(key);
    for (const odd of ['1733250000000.5', 'L123', '', '1 2 3']) {
      await admin.hset(hash, ':x', odd);
      expect(await redis.peek(plan)).toEqual([{ tier: 'expensive', limit: 2, remaining: 2, resetIn: 0 }]);
      expect(await redis.consume(plan)).toMatchObject({ allowed: true });
      expect((await fieldOf(plan, 0))?.length).toBe(9);
    }
    await admin.hset(hash, ':x', 'Z');
    await admin.del(key);
    expect(await redis.consume(plan)).toMatchObject({ allowed: true });
    expect(await redis.consume(plan)).toMatchObject({ allowed: true });
    expect(await redis.consume(plan)).toMatchObject({ allowed: false, tier: 'expensive', retryAfter: 60_000 });
    expect(await admin.zcard(key)).toBe(2);
    expect((await fieldOf(plan, 0))?.toString()).toBe('Z');
  });
});
