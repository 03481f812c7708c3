import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Redis } from 'ioredis';
import { performance } from 'node:perf_hooks';
import type { RateLimitDecision, RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import type { RedisStoreOptions } from '../../lib/storage/redis/redis-store.options.js';
import { fieldTtlRedisServer, startRedis, type RedisServer } from '../support/redis-server.js';
import { RefillClock } from '../support/refill.js';
import { stallAllowance, watchStalls } from './stalls.js';
import type { TcpProxy } from '../support/tcp-proxy.js';
import {
  adminClient,
  closeClient,
  expectBoundedTtls,
  openProxiedStore,
  openStore,
  ready,
  sleep,
  type OpenedStores,
} from './helpers.js';

/**
 * Edge cases of token reservations (option `reservations`, C-34), from an adversarial review.
 * Three failed on the code reviewed, before their fixes: two named plans deciding one tracker
 * (a reservation kept under the tier key and cost only, so the free plan spent slots reserved
 * under the premium figures), a slow-refill burst whose grants the TTL cut to one slot
 * (decisions then waited one round trip each, in turn), and concurrent decisions with Redis
 * frozen (each waiter of a failed reserving call sent its own, chaining deadlines). The
 * other review cases held already and pin that behaviour down. Added with the fixes: a burst
 * running the buckets' slots past the TTL (grants cut to a few slots), and a reply that came
 * after its deadline (its deciding slot not spent again).
 */
describe('token reservations: edge cases', () => {
  const stalls = watchStalls();
  let server: RedisServer;
  let admin: Redis;
  const opened: OpenedStores = { clients: [], stores: [] };
  const proxies: TcpProxy[] = [];

  const makeStore = (options: Partial<RedisStoreOptions> = {}): Promise<RedisRateLimitStore> =>
    openStore(server.port, opened, {
      keyPrefix: 'rr:',
      commandTimeoutMs: 5000,
      reservations: { maxBatch: 64, ttlMs: 1000 },
      ...options,
    });

  /** A store whose client goes through a TCP proxy (for latency and blackholes). */
  /** A store whose client goes through a TCP proxy (for latency and blackholes). */
  const proxiedStore = (options: Partial<RedisStoreOptions>) =>
    openProxiedStore(server.port, opened, proxies, { keyPrefix: 'rr:', commandTimeoutMs: 5000, ...options });

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
    for (const proxy of proxies) proxy.pass();
    await Promise.all(opened.stores.map((store) => store.close().catch(() => undefined)));
    await Promise.all([admin, ...opened.clients].map(closeClient));
    await Promise.all(proxies.map((proxy) => proxy.close()));
    await server?.stop();
  });

  it('two named plans deciding one tracker: a free decision never spends slots reserved under premium figures', async () => {
    // README (Plans, Memory): one tier may be decided under several plans' figures, and each
    // decision compares with its own plan's limit. Per call, the Redis store does so (the
    // script gets each plan's figures). Two users behind one address share the tracker.
    const premium = tokenBucketSpec('global', 'g', 1000, 100); // slots 10 ms apart
    const free = tokenBucketSpec('global', 'g', 5, 0.1); // 5 burst, one per 10 s

    async function run(store: RedisRateLimitStore, tracker: string): Promise<number> {
      const premiumPlan = planOf(store, tracker, [premium]);
      const freePlan = planOf(store, tracker, [free]);
      // A premium connection decides steadily: batches grow.
      for (let i = 0; i < 20; i++) expect((await store.consume(premiumPlan)).allowed).toBe(true);
      // Then a free connection behind the same address sends a burst.
      const burst = await Promise.all(Array.from({ length: 60 }, () => store.consume(freePlan)));
      return allowed(burst);
    }

    const perCall = await run(await makeStore({ reservations: false }), 'ip:plans-per-call');
    const reserving = await run(await makeStore(), 'ip:plans-reserving');
    console.log(`free burst after premium decisions: ${perCall} admitted per call, ${reserving} with reservations`);
    // Per call the free figures admit 4-5 (a bucket of 5, whose fullAt the premium decisions
    // moved a little); with reservations the free plan must not do better than that.
    expect(perCall).toBeLessThanOrEqual(5);
    expect(reserving).toBeLessThanOrEqual(perCall + 1);
  });

  it('slots granted one per call (a slow-refill burst, cut by ttlMs): concurrent decisions go per call together, not one round trip each', async () => {
    // Capacity 1000 refilling 0.5 a second: each slot after the first starts 2 s later, past
    // ttlMs (1 s), so every reserving call grants only its own slot. README: such a tracker is
    // "decided per call"; an ask cut short only by ttlMs keeps the batch size (> 1), and with
    // a size above 1 every decision waits for the call in flight, then sends its own.
    const spec = tokenBucketSpec('global', 'g', 1000, 0.5);
    const latencyMs = 100;
    const n = 20;

    async function run(
      reservations: RedisStoreOptions['reservations'],
      tracker: string,
    ): Promise<{ took: number; ok: number }> {
      const { store, proxy } = await proxiedStore({ reservations });
      proxy.latency(latencyMs);
      try {
        const plan = planOf(store, tracker, [spec]);
        const began = performance.now();
        const decisions = await Promise.all(Array.from({ length: n }, () => store.consume(plan)));
        return { took: performance.now() - began, ok: allowed(decisions) };
      } finally {
        proxy.pass();
      }
    }

    const perCall = await run(false, 'ip:ttl-cut-per-call');
    const reserving = await run({ maxBatch: 16, ttlMs: 1000 }, 'ip:ttl-cut-reserving');
    console.log(
      `${n} concurrent allowed decisions at ${latencyMs} ms a round trip: ${perCall.took.toFixed(0)} ms per call, ${reserving.took.toFixed(0)} ms with reservations`,
    );
    expect(perCall.ok).toBe(n);
    expect(reserving.ok).toBe(n);
    // Per call: one round trip (two on a slow machine). Serialised: n round trips (2,000 ms).
    // Plus the longest stall of this process in the test (a loaded machine's pause).
    const allowance = Math.min(stalls.longestMs(), 2000);
    expect(perCall.took).toBeLessThan(5 * latencyMs + allowance);
    expect(reserving.took).toBeLessThan(5 * latencyMs + allowance);
  }, 30_000);

  it('Redis frozen: concurrent decisions on a reservable plan settle within one deadline (no chained reserving calls)', async () => {
    // F-4: a decision settles within the deadline when Redis is slow, down or frozen.
    const deadline = 200;
    const n = 10;

    async function run(reservations: RedisStoreOptions['reservations'], tracker: string): Promise<number[]> {
      const { store, proxy } = await proxiedStore({
        reservations,
        commandTimeoutMs: deadline,
        breaker: { failureThreshold: 3, probeIntervalMs: 60_000 },
      });
      const spec = tokenBucketSpec('global', 'g', 100, 100);
      const plan = planOf(store, tracker, [spec]);
      proxy.blackhole();
      try {
        const began = performance.now();
        return await Promise.all(
          Array.from({ length: n }, () =>
            Promise.resolve()
              .then(() => store.consume(plan))
              .then(
                () => performance.now() - began,
                () => performance.now() - began,
              ),
          ),
        );
      } finally {
        proxy.pass();
      }
    }

    const perCall = await run(false, 'ip:frozen-per-call');
    const reserving = await run({ maxBatch: 64, ttlMs: 1000 }, 'ip:frozen-reserving');
    const worst = (times: number[]): number => Math.max(...times);
    console.log(
      `Redis frozen, ${n} concurrent decisions, deadline ${deadline} ms: slowest ${worst(perCall).toFixed(0)} ms per call, ${worst(reserving).toFixed(0)} ms with reservations (${reserving.map((t) => t.toFixed(0)).join(',')})`,
    );
    // Plus what a stall of this process adds (its timers ran late, and the store then gives
    // a call one more deadline): a chain of deadlines still exceeds it.
    const allowance = stallAllowance(stalls, deadline);
    expect(worst(perCall)).toBeLessThan(2 * deadline + allowance);
    expect(worst(reserving)).toBeLessThan(2 * deadline + allowance);
  }, 30_000);

  it('rounds of concurrent decisions above what ttlMs grants (a burst running fullAt seconds ahead) are not sent one call at a time', async () => {
    // 1,000 burst refilling 10 a second (slots 100 ms apart): each round of 20 moves the
    // bucket's fullAt 2 s further, and one call grants at most 11 slots (ttlMs of refill):
    // the decisions beyond an ask that could be no larger go per call together.
    const spec = tokenBucketSpec('global', 'g', 1000, 10);
    const latencyMs = 50;
    const rounds = 8;
    const n = 20;

    async function run(
      reservations: RedisStoreOptions['reservations'],
      tracker: string,
    ): Promise<{ took: number; ok: number }> {
      const { store, proxy } = await proxiedStore({ reservations });
      proxy.latency(latencyMs);
      try {
        const plan = planOf(store, tracker, [spec]);
        const began = performance.now();
        let ok = 0;
        for (let round = 0; round < rounds; round++) {
          ok += allowed(await Promise.all(Array.from({ length: n }, () => store.consume(plan))));
        }
        return { took: performance.now() - began, ok };
      } finally {
        proxy.pass();
      }
    }

    const perCall = await run(false, 'ip:ahead-per-call');
    const reserving = await run({ maxBatch: 64, ttlMs: 1000 }, 'ip:ahead-reserving');
    console.log(
      `${rounds} rounds of ${n} concurrent decisions at ${latencyMs} ms a round trip: ${perCall.took.toFixed(0)} ms per call, ${reserving.took.toFixed(0)} ms with reservations`,
    );
    expect(perCall.ok).toBe(rounds * n);
    expect(reserving.ok).toBe(rounds * n);
    // A round waits at most two round trips (a reserving call, then per call); one call at
    // a time would take n round trips (8 rounds: 8,000 ms).
    expect(reserving.took).toBeLessThan(3 * perCall.took + rounds * 2 * latencyMs);
  }, 30_000);

  it('a deciding reply that comes after its deadline keeps its slot 0 spent: the failure mode answered that decision', async () => {
    // 10 burst, no refill to speak of; a long TTL so that slots far ahead are granted.
    const spec = tokenBucketSpec('global', 'g', 10, 0.01);
    const deadline = 100;
    const { store, proxy } = await proxiedStore({
      reservations: { maxBatch: 16, ttlMs: 600_000 },
      commandTimeoutMs: deadline,
      breaker: { failureThreshold: 100, probeIntervalMs: 60_000 },
    });
    const plan = planOf(store, 'ip:late-deciding', [spec]);
    // Another instance spent 3 tokens: the bucket's next slots start ahead of now, so a
    // reserved slot 0 does not lapse at once.
    const other = await makeStore({ reservations: false });
    let admitted = 0;
    for (let i = 0; i < 3; i++)
      if ((await other.consume(planOf(other, 'ip:late-deciding', [spec]))).allowed) admitted++;
    // The first reserving call (2 slots) is answered after its deadline.
    proxy.latency(1.5 * deadline);
    // Failing open, the decision whose call missed its deadline is admitted.
    admitted += await Promise.resolve(store.consume(plan)).then(
      (decision) => (decision.allowed ? 1 : 0),
      () => 1,
    );
    // Its reply arrives.
    await sleep(deadline);
    proxy.pass();
    for (let i = 0; i < 30; i++) if ((await store.consume(plan)).allowed) admitted++;
    expect(admitted).toBeLessThanOrEqual(10);
  });

  it('a global and a type bucket flooded by two reserving instances: >= 95 % of the type rate in steady load', async () => {
    // A tracker's global bucket (fast, full) and a message type's bucket (the binding limit):
    // near the type bucket's limit the batches fall to 1, so lapsing slots cost little here.
    const global = tokenBucketSpec('global', 'g', 1000, 1000);
    const type = tokenBucketSpec('type', 't:chat', 20, 20);
    async function run(reservations: RedisStoreOptions['reservations'], tracker: string): Promise<number> {
      const two = await Promise.all([0, 1].map(() => makeStore({ reservations })));
      const start = performance.now();
      const until = start + 3000;
      let steady = 0;
      await Promise.all(
        two.flatMap((store) =>
          Array.from({ length: 4 }, async () => {
            const plan = planOf(store, tracker, [global, type]);
            while (performance.now() < until) {
              const decision = await store.consume(plan);
              const at = performance.now();
              if (decision.allowed && at >= start + 1000 && at < until) steady++;
              if (!decision.allowed) await sleep(Math.min(20, decision.retryAfter));
            }
          }),
        ),
      );
      return steady;
    }
    const perCall = await run(false, 'ip:two-tier-steady-per-call');
    const reserving = await run({ maxBatch: 64, ttlMs: 1000 }, 'ip:two-tier-steady-reserving');
    console.log(`two-tier steady flood, 2 s at 20/s (40): ${perCall} per call, ${reserving} with reservations`);
    expect(perCall).toBeGreaterThanOrEqual(0.95 * 40);
    expect(reserving).toBeGreaterThanOrEqual(0.95 * 40);
  }, 30_000);

  it('capacity 1 shared by four reserving instances never admits more than 1 plus its refill', async () => {
    const four = await Promise.all([0, 1, 2, 3].map(() => makeStore()));
    const spec = tokenBucketSpec('global', 'g', 1, 2); // one token every 500 ms
    for (let trial = 0; trial < 3; trial++) {
      const clock = new RefillClock();
      const decisions = await Promise.all(
        Array.from({ length: 200 }, (_, i) => four[i % 4]!.consume(planOf(four[i % 4]!, `ip:cap1-${trial}`, [spec]))),
      );
      expect(allowed(decisions)).toBeLessThanOrEqual(1 + clock.gained(2) + 1);
    }
  });

  it('a global and a type bucket, the type one running out first: admitted never above the type bucket', async () => {
    const two = await Promise.all([0, 1].map(() => makeStore({ reservations: { maxBatch: 32, ttlMs: 5000 } })));
    const global = tokenBucketSpec('global', 'g', 1000, 1000);
    const type = tokenBucketSpec('type', 't:chat', 10, 1); // 10 burst, 1 a second
    const clock = new RefillClock();
    let ok = 0;
    for (let round = 0; round < 10; round++) {
      const decisions = await Promise.all(
        Array.from({ length: 20 }, (_, i) => two[i % 2]!.consume(planOf(two[i % 2]!, 'ip:two-tier', [global, type]))),
      );
      ok += allowed(decisions);
    }
    console.log(
      `two-tier burst: ${ok} of the type bucket's 10 admitted (slots lapsing at the global bucket's 1 ms span burn type tokens)`,
    );
    expect(ok).toBeLessThanOrEqual(10 + clock.gained(1) + 1);
    // Under-admission (not asserted exact): a lapsed slot's type token stays taken until its
    // start in the type bucket (up to ttlMs); 7-8 of 10 were admitted in the review runs.
    expect(ok).toBeGreaterThanOrEqual(1);
  });

  it('slots given back after the bucket refilled do not overflow its capacity', async () => {
    const store = await makeStore({ reservations: { maxBatch: 64, ttlMs: 5000 } });
    const other = await makeStore({ reservations: false });
    // 20 burst, 20 a second: slots 50 ms apart.
    const spec = tokenBucketSpec('global', 'g', 20, 20);
    const plan = planOf(store, 'ip:refund-full', [spec]);
    for (let i = 0; i < 6; i++) await store.consume(plan);
    // Past a full refill, then the tail goes back at close.
    await sleep(1200);
    await store.close();
    const otherPlan = planOf(other, 'ip:refund-full', [spec]);
    const [status] = await other.peek(otherPlan);
    expect(status!.remaining).toBeLessThanOrEqual(20);
    const clock = new RefillClock();
    const burst = await Promise.all(Array.from({ length: 60 }, () => other.consume(otherPlan)));
    expect(allowed(burst)).toBeLessThanOrEqual(20 + clock.gained(20) + 1);
  });

  it('close() twice, concurrently: both resolve, and the slots are back once the second has', async () => {
    const store = await makeStore({ reservations: { maxBatch: 64, ttlMs: 60_000 } });
    const other = await makeStore({ reservations: false });
    const spec = tokenBucketSpec('global', 'g', 100, 0.01);
    const plan = planOf(store, 'ip:close-twice', [spec]);
    let spent = 0;
    for (let i = 0; i < 12; i++) if ((await store.consume(plan)).allowed) spent++;
    const first = store.close();
    await store.close();
    const [back] = await other.peek(planOf(other, 'ip:close-twice', [spec]));
    await first;
    const [later] = await other.peek(planOf(other, 'ip:close-twice', [spec]));
    console.log(
      `close twice: ${back!.remaining} remaining when the second close resolved, ${later!.remaining} after the first (spent ${spent})`,
    );
    expect(later!.remaining).toBeGreaterThanOrEqual(100 - spent);
  });

  it('many trackers each decided a few times: the book empties and every slot is back within ttlMs', async () => {
    const ttlMs = 400;
    const store = await makeStore({ reservations: { maxBatch: 64, ttlMs } });
    const other = await makeStore({ reservations: false });
    const spec = tokenBucketSpec('global', 'g', 50, 100);
    const trackers = Array.from({ length: 300 }, (_, i) => `ip:many-${i}\u0000{odd}:${'é'.repeat(i % 5)}`);
    for (const tracker of trackers) {
      const plan = planOf(store, tracker, [spec]);
      for (let i = 0; i < 4; i++) await store.consume(plan);
    }
    const book = (store as unknown as { reservations: { size: number } }).reservations;
    expect(book.size).toBeGreaterThan(0);
    await sleep(3 * ttlMs);
    // Idle: the sweeps gave the tails back and dropped the entries.
    for (let i = 0; i < 20 && book.size > 0; i++) await sleep(ttlMs / 2);
    expect(book.size).toBe(0);
    const statuses = await Promise.all(trackers.slice(0, 20).map((t) => other.peek(planOf(other, t, [spec]))));
    for (const [status] of statuses) expect(status!.remaining).toBeGreaterThanOrEqual(49);
  }, 30_000);

  it('alternating instances (batches shrinking to 1 under contention) admit exactly the budget of a bucket that does not refill', async () => {
    const a = await makeStore({ reservations: { maxBatch: 64, ttlMs: 60_000 } });
    const b = await makeStore({ reservations: { maxBatch: 64, ttlMs: 60_000 } });
    const spec = tokenBucketSpec('global', 'g', 200, 0.001);
    let ok = 0;
    // a alone first (its batches grow), then both interleaved with bursts.
    for (let i = 0; i < 30; i++) if ((await a.consume(planOf(a, 'ip:alternate', [spec]))).allowed) ok++;
    for (let round = 0; round < 20; round++) {
      const decisions = await Promise.all(
        Array.from({ length: 16 }, (_, i) => {
          const s = (i + round) % 3 === 0 ? b : a;
          return s.consume(planOf(s, 'ip:alternate', [spec]));
        }),
      );
      ok += allowed(decisions);
    }
    expect(ok).toBeLessThanOrEqual(200);
    // Everything spent or held: close gives back what is held, and the rest is admitted.
    await a.close();
    await b.close();
    const c = await makeStore({ reservations: false });
    const rest = await Promise.all(Array.from({ length: 300 }, () => c.consume(planOf(c, 'ip:alternate', [spec]))));
    expect(ok + allowed(rest)).toBe(200);
  });

  const redis8 = fieldTtlRedisServer();
  (redis8 ? it : it.skip)(
    'Redis 8, hash-field TTLs: give-back is exact and every field keeps a bounded TTL',
    async () => {
      const server8 = await startRedis([], redis8);
      const admin8 = adminClient(server8.port);
      const local: OpenedStores = { clients: [], stores: [] };
      try {
        await ready(admin8);
        const store = await openStore(server8.port, local, {
          keyPrefix: 'rr8:',
          commandTimeoutMs: 5000,
          reservations: { maxBatch: 64, ttlMs: 5000 },
        });
        const other = await openStore(server8.port, local, { keyPrefix: 'rr8:', commandTimeoutMs: 5000 });
        // Wait for the server read (field-TTL mode).
        for (let i = 0; i < 100 && !store.hashFieldTtls; i++) await sleep(20);
        expect(store.hashFieldTtls).toBe(true);
        const spec = tokenBucketSpec('global', 'g', 100, 10);
        const plan = planOf(store, 'ip:r8', [spec]);
        let spent = 0;
        const clock = new RefillClock();
        for (let i = 0; i < 12; i++) if ((await store.consume(plan)).allowed) spent++;
        const { problems } = await expectBoundedTtls(admin8, 'rr8:', () => 100_000 + 1000);
        expect(problems).toEqual([]);
        await store.close();
        const [back] = await other.peek(planOf(other, 'ip:r8', [spec]));
        expect(back!.remaining).toBeGreaterThanOrEqual(100 - spent);
        expect(back!.remaining).toBeLessThanOrEqual(100 - spent + clock.gained(10) + 1);
        const after = await expectBoundedTtls(admin8, 'rr8:', () => 100_000 + 1000);
        expect(after.problems).toEqual([]);
        expect(after.checked).toBeGreaterThan(0);
      } finally {
        await Promise.all(local.stores.map((s) => s.close().catch(() => undefined)));
        await Promise.all([admin8, ...local.clients].map(closeClient));
        await server8.stop();
      }
    },
    30_000,
  );

  it('a reset of one tracker drops only the reservations of plans with a reset tier', async () => {
    const store = await makeStore({ keyPrefix: 'rr-reset:' });
    const book = (store as unknown as { reservations: { size: number } }).reservations;
    const spec = tokenBucketSpec('global', 'g', 1000, 1000);
    const a = planOf(store, 'ip:reset-a', [spec]);
    const b = planOf(store, 'ip:reset-b', [spec]);
    for (let i = 0; i < 4; i++) {
      await store.consume(a);
      await store.consume(b);
    }
    expect(book.size).toBe(2);
    await store.delete(a.tiers.map((tier) => tier.key));
    // B's batch is kept (its bucket was not reset); before, every plan's was dropped.
    expect(book.size).toBe(1);
    await store.delete([]);
    expect(book.size).toBe(1);
  });
});
