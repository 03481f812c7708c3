import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Redis } from 'ioredis';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RateLimitDecision, RateLimitPlan } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { adminClient, closeClient, expectBoundedTtls, ready, sleep, storeClient } from './helpers.js';

/** C-24: the script cache emptied under the store (SCRIPT FLUSH, restart) costs no decision. */
describe('script cache flushed or lost', () => {
  let server: RedisServer;
  let admin: Redis;
  let client: Redis;
  let store: RedisRateLimitStore;
  let plan: RateLimitPlan;

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    client = storeClient(server.port);
    await Promise.all([ready(admin), ready(client)]);
    // A generous deadline: after a flush one decision is two round trips (NOSCRIPT, EVAL).
    store = new RedisRateLimitStore({ client, keyPrefix: 'flush:', commandTimeoutMs: 2000, blockCache: false });
    const tracker = 'ip:flush';
    const specs = [
      tokenBucketSpec('global', 'g', 1_000_000, 1000),
      windowSpec('expensive', 'x', 'sliding-log', 1000, 1000),
    ];
    plan = { tracker, tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })) };
  });

  afterAll(async () => {
    await store?.close();
    await closeClient(client);
    await closeClient(admin);
    await server?.stop();
  });

  it('SCRIPT FLUSH before each of 200 decisions: none fails', async () => {
    const decisions: RateLimitDecision[] = [];
    for (let i = 0; i < 200; i++) {
      await admin.script('FLUSH');
      decisions.push(await store.consume(plan));
    }
    expect(decisions.filter((decision) => !decision.allowed)).toEqual([]);
  });

  it('SCRIPT FLUSH while 500 decisions are in flight: none fails', async () => {
    const pending: Promise<RateLimitDecision>[] = [];
    for (let i = 0; i < 500; i++) {
      if (i % 50 === 0) void admin.script('FLUSH');
      pending.push(Promise.resolve(store.consume(plan)));
    }
    const decisions = await Promise.all(pending);
    expect(decisions.filter((decision) => !decision.allowed)).toEqual([]);
  });

  it('after a restart (script cache and data gone), decisions come back without help', async () => {
    await server.restart();
    const start = Date.now();
    let decision: RateLimitDecision | undefined;
    while (Date.now() - start < 5000) {
      try {
        decision = await store.consume(plan);
        break;
      } catch {
        await sleep(20);
      }
    }
    expect(decision?.allowed).toBe(true);
  });

  it('leaves every key with a bounded TTL (I-2)', async () => {
    const { checked, problems } = await expectBoundedTtls(admin, 'flush:', () => 2000);
    expect(problems).toEqual([]);
    expect(checked).toBeGreaterThan(0);
  });

  it('no source file of the Redis store uses MULTI or a pipeline around its scripts', () => {
    const dir = join(process.cwd(), 'lib/storage/redis');
    const offenders = readdirSync(dir)
      .filter((file) => file.endsWith('.ts'))
      .filter((file) => /\.(multi|pipeline)\(/.test(readFileSync(join(dir, file), 'utf8')));
    expect(offenders).toEqual([]);
  });
});
