import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import type { Redis } from 'ioredis';
import type { RateLimitDecision, RateLimitPlan } from '../../lib/interfaces/plan.interface.js';
import { windowSpec } from '../../lib/plans/tier-specs.js';
import type { RateLimitStore } from '../../lib/storage/rate-limit-store.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { T0 } from './decision-table.js';
import { adminClient, closeClient, expectBoundedTtls, ready, storeClient, logSize } from './helpers.js';

const INSTANCES = 4;
const W = 1000;

/**
 * C-9: the expensive-operation sliding log shared by four store instances (one connection
 * each, as four app instances), with `clock: 'app'` and one injected clock, so that calls
 * land exactly where the test puts them: on the window's edges (W - 1 ms and W after the
 * admitted calls), all inside one millisecond, or on a random schedule checked against a
 * reference model. Never `limit + 1` in any window, and the log never holds more than
 * `limit` entries. (atomicity.redis.spec.ts floods the same tier with Redis TIME.)
 */
describe('sliding log: window edges and one-millisecond floods across 4 instances', () => {
  let server: RedisServer;
  let admin: Redis;
  const clients: Redis[] = [];
  /** Without a block cache: every call reaches the script. */
  const stores: RedisRateLimitStore[] = [];
  /** With the block cache (on the same injected clock): it must not move an edge either. */
  const cached: RedisRateLimitStore[] = [];
  const clock = { now: T0 };
  let trial = 0;

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    for (let i = 0; i < INSTANCES; i++) clients.push(storeClient(server.port));
    await Promise.all([ready(admin), ...clients.map(ready)]);
    for (const client of clients) {
      const options = {
        client,
        keyPrefix: 'edge:',
        clock: 'app',
        now: () => clock.now,
        commandTimeoutMs: 5000,
      } as const;
      stores.push(new RedisRateLimitStore({ ...options, blockCache: false }));
      cached.push(new RedisRateLimitStore(options));
    }
  });

  afterAll(async () => {
    await Promise.all([...stores, ...cached].map((store) => store.close()));
    await Promise.all([admin, ...clients].map(closeClient));
    await server?.stop();
  });

  /** A fresh tracker's plan on every instance, and its log key. */
  function plansFor(limit: number, on = stores): { plans: RateLimitPlan[]; key: string; on: RateLimitStore[] } {
    const tracker = `user:edge-${++trial}`;
    const spec = windowSpec('expensive', 'x', 'sliding-log', limit, W);
    const plans = on.map((store) => ({ tracker, tiers: [{ key: store.key(tracker, spec.suffix), spec }] }));
    return { plans, key: plans[0]!.tiers[0]!.key, on };
  }

  /** `calls` decisions at once at the current clock, spread over the instances. */
  async function burst(
    { plans, on }: { plans: readonly RateLimitPlan[]; on: readonly RateLimitStore[] },
    calls: number,
  ): Promise<RateLimitDecision[]> {
    return Promise.all(Array.from({ length: calls }, (_, i) => on[i % INSTANCES]!.consume(plans[i % INSTANCES]!)));
  }

  const admitted = (decisions: readonly RateLimitDecision[]) => decisions.filter((decision) => decision.allowed).length;

  it.each([
    ['script', 1],
    ['script', 2],
    ['script', 3],
    ['block cache', 1],
  ])('edges (%s, trial %i): limit at t, none at t + W - 1 (retry after 1 ms), limit again at t + W', async (path) => {
    const limit = 5;
    const plans = plansFor(limit, path === 'script' ? stores : cached);
    const key = plans.key;
    clock.now += 10 * W;
    const start = clock.now;
    expect(admitted(await burst(plans, 20))).toBe(limit);
    expect(await logSize(admin, key)).toBe(limit);

    clock.now = start + W - 1;
    const early = await burst(plans, 20);
    expect(admitted(early)).toBe(0);
    expect(early.map((decision) => (decision.allowed ? 0 : decision.retryAfter))).toEqual(Array(20).fill(1));

    clock.now = start + W;
    expect(admitted(await burst(plans, 20))).toBe(limit);
    expect(await logSize(admin, key)).toBe(limit);
    clock.now = start + 2 * W - 1;
    expect(admitted(await burst(plans, 20))).toBe(0);
    expect(await logSize(admin, key)).toBe(limit);
  });

  it.each([
    [50, 1000],
    [1000, 1000],
  ])(
    'limit %i, %i concurrent calls inside one millisecond: exactly the limit, no ZADD collapse',
    async (limit, calls) => {
      const plans = plansFor(limit);
      const key = plans.key;
      clock.now += 10 * W;
      const decisions = await burst(plans, calls);
      expect(admitted(decisions)).toBe(limit);
      // Every admitted call left its own entry, however many share a ms: a time in the log's
      // field (limit 50), or a member with a per-call nonce once the log moved past 64 live
      // entries to its sorted set (limit 1000).
      expect(await logSize(admin, key)).toBe(limit);
      expect(admitted(await burst(plans, 4))).toBe(0);
      expect(await logSize(admin, key)).toBe(limit);
    },
  );

  it('random schedules around the edges match the reference model; never limit + 1 in a window', async () => {
    const limit = 3;
    const step = fc.record({
      advance: fc.oneof(fc.constantFrom(0, 1, W - 1, W, W + 1), fc.integer({ min: 0, max: 2 * W })),
      calls: fc.integer({ min: 1, max: limit + 2 }),
    });
    let bursts = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 4, maxLength: 14 }), async (steps) => {
        const plans = plansFor(limit);
        const key = plans.key;
        clock.now += 10 * W;
        const log: number[] = []; // admitted times, the reference model's state
        const seen: number[] = []; // admitted times, as the decisions Redis returned say
        for (const { advance, calls } of steps) {
          clock.now += advance;
          const now = clock.now;
          const live = log.filter((at) => now - at < W).length;
          const want = Math.min(calls, limit - live);
          const decisions = await burst(plans, calls);
          bursts++;
          const got = admitted(decisions);
          for (let i = 0; i < got; i++) seen.push(now);
          // The boundary property itself, on what Redis admitted (whatever the model says): no
          // window of W ms ending now holds limit + 1 admissions.
          expect(seen.filter((at) => now - at < W).length).toBeLessThanOrEqual(limit);
          expect({ now: now - T0, admitted: got }).toEqual({ now: now - T0, admitted: want });
          for (let i = 0; i < want; i++) log.push(now);
          expect(await logSize(admin, key)).toBeLessThanOrEqual(limit);
        }
      }),
      { numRuns: 40 },
    );
    expect(bursts).toBeGreaterThan(100);
  });

  it('leaves every key with a bounded TTL (I-2)', async () => {
    const { checked, problems } = await expectBoundedTtls(admin, 'edge:', () => W + 1000);
    expect(problems).toEqual([]);
    expect(checked).toBeGreaterThan(0);
  });
});
