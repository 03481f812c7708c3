import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Redis } from 'ioredis';
import type { RateLimitPlan } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { adminClient, closeClient, ready, storeClient } from './helpers.js';

/**
 * The store's commands of one tick share socket writes (`TickWrites`), against a real
 * Redis: Redis reads them in a few reads, answers each in order, and decides exactly.
 */
describe('Redis store: the decisions of one tick in a few socket writes', () => {
  let server: RedisServer;
  let admin: Redis;
  let client: Redis;
  let store: RedisRateLimitStore;

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    client = storeClient(server.port);
    await Promise.all([ready(admin), ready(client)]);
    store = new RedisRateLimitStore({ client, keyPrefix: 'tw:', blockCache: false, commandTimeoutMs: 5000 });
  });

  afterAll(async () => {
    await store?.close();
    await closeClient(client);
    await closeClient(admin);
    await server?.stop();
  });

  /** Redis's count of socket reads it processed, all connections together. */
  const reads = async () => Number(/total_reads_processed:(\d+)/.exec(await admin.info('stats'))?.[1]);

  it('256 decisions sent in one tick: read in at most 16 reads, each answered, exactly 100 allowed', async () => {
    const spec = tokenBucketSpec('global', 'g', 100, 0.001);
    const plans: RateLimitPlan[] = Array.from({ length: 256 }, () => ({
      tracker: 'ip:203.0.113.7',
      tiers: [{ key: store.key('ip:203.0.113.7', 'g'), spec }],
    }));
    // Compiled and its script loaded first, so the timed tick sends only the decisions.
    await store.peek(plans[0]!);
    const before = await reads();
    const decisions = await Promise.all(plans.map((plan) => store.consume(plan)));
    const after = await reads();
    // 8 writes of 32 commands; the INFO calls are 2 more reads. One write per command (256
    // reads at most, usually far more than 16) is what this replaced.
    expect(after - before).toBeLessThanOrEqual(16);
    expect(decisions.filter((decision) => decision.allowed)).toHaveLength(100);
    // In order: the first 100 sent were the ones allowed.
    expect(decisions.slice(0, 100).every((decision) => decision.allowed)).toBe(true);
  });

  it("a decision sent with nothing in flight goes out at once; the next of its tick is held to the tick's end", async () => {
    const spec = tokenBucketSpec('global', 'g', 100, 1000);
    const plan: RateLimitPlan = { tracker: 'ip:203.0.113.8', tiers: [{ key: store.key('ip:203.0.113.8', 'g'), spec }] };
    await store.consume(plan);
    const socket = (client as unknown as { stream: { writableCorked: number } }).stream;
    expect(client.commandQueue.length).toBe(0);
    const first = store.consume(plan);
    expect([socket.writableCorked, client.commandQueue.length]).toEqual([0, 1]);
    const second = store.consume(plan);
    expect(socket.writableCorked).toBe(1);
    expect(await Promise.all([first, second])).toEqual([{ allowed: true }, { allowed: true }]);
    expect(socket.writableCorked).toBe(0);
  });
});
