import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Cluster } from 'ioredis';
import { tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { createRedisStore, RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { rawCommand, startCluster, type RedisCluster } from '../support/redis-server.js';
import { expectedOutcomes, runScenario, SCENARIOS, T0, type ManualClock } from './decision-table.js';
import { closeClient, ready } from './helpers.js';

/**
 * The shared decision table on a three-master Cluster (C-20): every key of a plan shares the
 * tracker's hash tag, so each script runs on one node, and no CROSSSLOT ever occurs.
 */
describe('decision table: Redis Cluster (3 masters)', () => {
  let cluster: RedisCluster;
  let client: Cluster;
  let store: RedisRateLimitStore;
  const clock: ManualClock = { now: T0 };

  beforeAll(async () => {
    cluster = await startCluster();
    client = new Cluster([...cluster.startupNodes], {
      enableOfflineQueue: false,
      redisOptions: { maxRetriesPerRequest: 0, autoResendUnfulfilledCommands: false },
    });
    client.on('error', () => undefined);
    await ready(client);
    store = new RedisRateLimitStore({
      client,
      keyPrefix: 'cl:',
      clock: 'app',
      now: () => clock.now,
      blockCache: false,
      commandTimeoutMs: 2000,
    });
  }, 30_000);

  afterAll(async () => {
    await store?.close();
    if (client) await closeClient(client);
    await cluster?.stop();
  });

  it.each(SCENARIOS.map((scenario) => [scenario.name, scenario] as const))('%s', async (_name, scenario) => {
    expect(await runScenario(store, clock, scenario, `cluster-${Date.now()}`)).toEqual(expectedOutcomes(scenario));
  });

  it('hostile trackers: no CROSSSLOT, and the keys spread over every master', async () => {
    const specs = [tokenBucketSpec('global', 'g', 10, 1), windowSpec('expensive', 'x', 'sliding-log', 5, 60_000)];
    const hostile = ['{x}', '}{', '{', '}', 'a:b', '*', ' ', '\n', '{user}:1', '', '\u0000', '🚀'];
    const trackers = [...hostile, ...Array.from({ length: 600 }, (_, i) => `key:{${i}}:${i % 7}`)];
    const errors: unknown[] = [];
    for (const tracker of trackers) {
      const plan = { tracker, tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })) };
      try {
        await store.consume(plan);
        await store.peek(plan);
      } catch (error) {
        errors.push(error);
      }
    }
    expect(errors).toEqual([]);
    const sizes = await Promise.all(cluster.nodes.map((node) => rawCommand(node.port, ['DBSIZE'])));
    // 612 trackers x 2 keys (+ clock keys): an even spread puts about a third on each master.
    for (const size of sizes) expect(size as number).toBeGreaterThan(300);
  });

  it('connects by itself from cluster options and closes what it opened', async () => {
    const own = await createRedisStore({ cluster: { nodes: [...cluster.startupNodes] }, keyPrefix: 'own:' });
    const tracker = 'ip:192.0.2.1';
    const plan = { tracker, tiers: [{ key: own.key(tracker, 'g'), spec: tokenBucketSpec('global', 'g', 1, 1) }] };
    expect((await own.consume(plan)).allowed).toBe(true);
    expect((await own.consume(plan)).allowed).toBe(false);
    await own.close();
    expect(own.client.status).toBe('end');
  });
});
