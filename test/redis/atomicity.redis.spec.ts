import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Redis } from 'ioredis';
import type { RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { adminClient, closeClient, expectBoundedTtls, ready, storeClient, logSize } from './helpers.js';

const HITS = 1000;
const INSTANCES = 4;

/**
 * F-1 / C-9: 1,000 concurrent decisions on one key through four store instances, each on
 * its own connection (as four app instances would be): exactly the limit is admitted.
 */
describe('atomicity under concurrency (4 clients, Redis TIME)', () => {
  let server: RedisServer;
  let admin: Redis;
  const clients: Redis[] = [];
  const stores: RedisRateLimitStore[] = [];

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    for (let i = 0; i < INSTANCES; i++) {
      const client = storeClient(server.port);
      clients.push(client);
      // A long deadline: 1,000 scripts queue behind each other; this file checks counts.
      stores.push(new RedisRateLimitStore({ client, keyPrefix: 'atom:', commandTimeoutMs: 10_000 }));
    }
    await Promise.all([ready(admin), ...clients.map(ready)]);
  });

  afterAll(async () => {
    await Promise.all(stores.map((store) => store.close()));
    await Promise.all([admin, ...clients].map(closeClient));
    await server?.stop();
  });

  /** Fires HITS consumes at once, spread over the instances; returns how many were admitted. */
  async function flood(tracker: string, specs: readonly TierSpec[], lease = false): Promise<number> {
    const plans = stores.map((store) => ({
      tracker,
      tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
    }));
    const decisions = await Promise.all(
      Array.from({ length: HITS }, (_, i) => {
        const plan: RateLimitPlan = lease ? { ...plans[i % INSTANCES]!, lease: `c${i}` } : plans[i % INSTANCES]!;
        return stores[i % INSTANCES]!.consume(plan);
      }),
    );
    return decisions.filter((decision) => decision.allowed).length;
  }

  it.each([1, 2, 3])('token bucket: admits exactly its capacity (trial %i)', async (trial) => {
    // 0.001 tokens/s: nothing refills while the test runs.
    const bucket = tokenBucketSpec('global', 'g', 50, 0.001);
    expect(await flood(`ip:bucket-${trial}`, [bucket])).toBe(50);
  });

  it.each([1, 2, 3])(
    'sliding log: admits exactly its limit and keeps at most limit entries (trial %i)',
    async (trial) => {
      const log = windowSpec('expensive', 'x', 'sliding-log', 50, 60_000);
      const tracker = `ip:log-${trial}`;
      expect(await flood(tracker, [log])).toBe(50);
      expect(await logSize(admin, stores[0]!.key(tracker, 'x'))).toBe(50);
    },
  );

  it.each([1, 2, 3])('sliding counter: admits exactly its limit (trial %i)', async (trial) => {
    // An hour-long window: a boundary falls inside the test once in 3,600 runs at most, and
    // even then the previous hour's weight keeps admissions at the limit.
    const counter = windowSpec('expensive', 'xc', 'sliding-counter', 50, 3_600_000);
    expect(await flood(`ip:counter-${trial}`, [counter])).toBe(50);
  });

  it('concurrency: admits exactly its slots', async () => {
    const slots = concurrencySpec('concurrency', 'cc', 20);
    const tracker = 'ip:slots';
    expect(await flood(tracker, [slots], true)).toBe(20);
    const fields = await admin.hkeys(stores[0]!.key(tracker, 'cc'));
    expect(fields.filter((field) => field.startsWith('l:'))).toHaveLength(20);
  });

  it('several tiers: the tightest one admits, and the others are charged only for admitted plans', async () => {
    const bucket = tokenBucketSpec('global', 'g', 50, 0.001);
    const log = windowSpec('expensive', 'x', 'sliding-log', 30, 60_000);
    const tracker = 'ip:multi';
    expect(await flood(tracker, [bucket, log])).toBe(30);
    const plan = { tracker, tiers: [{ key: stores[0]!.key(tracker, 'g'), spec: bucket }] };
    const [status] = await stores[0]!.peek(plan);
    expect(status!.remaining).toBe(20);
  });

  it('leaves every key with a bounded TTL (I-2)', async () => {
    const { checked, problems } = await expectBoundedTtls(admin, 'atom:', (key) =>
      key.endsWith(':g') ? 50 * 1_000_000 : key.endsWith(':xc') ? 2 * 3_600_000 : key.endsWith(':cc') ? 30_000 : 61_000,
    );
    expect(problems).toEqual([]);
    expect(checked).toBeGreaterThan(0);
  });
});
