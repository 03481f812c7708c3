import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import type { Redis } from 'ioredis';
import type { RateLimitDecision, RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { SharedStore, type SharedStoreEvents } from '../../lib/services/shared-store.js';
import { createRedisStore, RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { adminClient, closeClient, ready, sleep, storeClient, logSize } from './helpers.js';

const planOf = (store: RedisRateLimitStore, tracker: string, specs: readonly TierSpec[]): RateLimitPlan => ({
  tracker,
  tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
});

/** What SharedStore reported, in order. */
function recorder(): SharedStoreEvents & { log: string[]; timed: number } {
  const log: string[] = [];
  const events = {
    log,
    timed: 0,
    answered: () => void events.timed++,
    failed: () => undefined,
    down: () => void log.push('down'),
    up: () => void log.push('up'),
  };
  return events;
}

/** Edge cases of the Redis store found in review; each test fails on the behaviour it names. */
describe('Redis store edges', () => {
  let server: RedisServer;
  let admin: Redis;
  const cleanup: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    await ready(admin);
  });

  afterEach(async () => {
    for (const step of cleanup.splice(0).reverse()) await step().catch(() => undefined);
  });

  afterAll(async () => {
    if (admin) await closeClient(admin);
    await server?.stop();
  });

  /** A store on its own client whose breaker opens at the first failure and does not probe during a test. */
  const tripwireStore = async (keyPrefix: string): Promise<RedisRateLimitStore> => {
    const client = storeClient(server.port);
    cleanup.push(() => closeClient(client));
    await ready(client);
    const store = new RedisRateLimitStore({
      client,
      keyPrefix,
      commandTimeoutMs: 200,
      breaker: { failureThreshold: 1, probeIntervalMs: 60_000 },
    });
    cleanup.push(() => store.close());
    return store;
  };

  it('a plan made by hand with a spec no script could decide soundly is refused before any Redis command', async () => {
    const store = await tripwireStore('edge-spec:');
    const sound = tokenBucketSpec('global', 'g', 5, 1);
    const bad = { ...sound, nearBound: 0 };
    const plan: RateLimitPlan = { tracker: 'ip:bad', tiers: [{ key: store.key('ip:bad', 'g'), spec: bad }] };
    await admin.config('RESETSTAT');
    expect(() => store.consume(plan)).toThrow(/'global' \(suffix 'g'\): nearBound is 0, but .* 20000/);
    await expect(store.peek(plan)).rejects.toThrow(RangeError);
    expect(await admin.info('commandstats')).not.toMatch(/cmdstat_evalsha/);
    // Refused, not an outage: the store decides sound plans as ever.
    expect((await store.consume({ ...plan, tiers: [{ ...plan.tiers[0]!, spec: sound }] })).allowed).toBe(true);
  });

  it('a refusal answered from the block cache during an outage does not end the outage', async () => {
    const store = await tripwireStore('edge-cache:');
    const events = recorder();
    const shared = new SharedStore(store, 'open', 1000, events);
    const flood = planOf(store, 'ip:flood', [tokenBucketSpec('global', 'g', 1, 0.001)]); // one token per 1,000 s
    const other = planOf(store, 'ip:other', [tokenBucketSpec('global', 'g', 5, 1)]);

    expect((await shared.consume(flood)).allowed).toBe(true);
    expect((await shared.consume(flood)).allowed).toBe(false); // now in the block cache
    const timedBefore = events.timed;
    expect((shared.consume(flood) as RateLimitDecision).allowed).toBe(false); // synchronous
    expect(events.timed).toBe(timedBefore); // no round trip, not timed as one

    server.kill('SIGKILL');
    try {
      // The outage starts; then the cached refusals and further failures alternate.
      for (let i = 0; i < 5; i++) {
        await shared.consume(other);
        expect((shared.consume(flood) as RateLimitDecision).allowed).toBe(false);
      }
      expect(store.available).toBe(false);
      expect(events.log).toEqual(['down']);
    } finally {
      await server.restart();
      await ready(admin);
    }
  });

  it('a decision that straggles in after shutdown (limiter closed, then the store) is decided quietly: no outage', async () => {
    for (const failMode of ['open', 'closed'] as const) {
      const store = await tripwireStore(`edge-shutdown-${failMode}:`);
      const plan = planOf(store, 'ip:late', [tokenBucketSpec('global', 'g', 5, 1)]);
      // While running, a closed store is an outage, reported once.
      const running = recorder();
      const before = new SharedStore(store, failMode, 1000, running);
      expect((await before.consume(plan)).allowed).toBe(true);
      // The module's shutdown order: the limiter (and its shared store) first, then the store.
      const events = recorder();
      const shared = new SharedStore(store, failMode, 1000, events);
      await shared.close();
      await store.close();
      const late = await shared.consume(plan);
      expect(late.allowed).toBe(failMode === 'open');
      expect(events.log).toEqual([]);
      await before.consume(plan);
      expect(running.log).toEqual(['down']);
    }
  });

  it('fail mode closed: status cannot be read while the store is down (no made-up full budgets); open: the fallback answers', async () => {
    const store = await tripwireStore('edge-peek:');
    const closed = new SharedStore(store, 'closed', 1000, recorder());
    const open = new SharedStore(store, 'open', 1000, recorder());
    const plan = planOf(store, 'ip:peek', [tokenBucketSpec('global', 'g', 5, 1)]);
    expect((await closed.peek(plan))[0]!.remaining).toBe(5);

    server.kill('SIGKILL');
    try {
      const refused = await closed.consume(plan);
      expect(refused).toMatchObject({ allowed: false, storeUnavailable: true });
      await expect(closed.peek(plan)).rejects.toThrow();
      await open.consume(plan); // decided by the fallback
      expect((await open.peek(plan))[0]!.remaining).toBe(4);
    } finally {
      await server.restart();
      await ready(admin);
    }
  });

  it('two stores given the same instanceId still add distinct sliding-log entries', async () => {
    const clients = [storeClient(server.port), storeClient(server.port)];
    for (const client of clients) cleanup.push(() => closeClient(client));
    await Promise.all(clients.map(ready));
    const stores = clients.map(
      (client) =>
        new RedisRateLimitStore({ client, keyPrefix: 'edge-nonce:', instanceId: 'pod-a', commandTimeoutMs: 2000 }),
    );
    for (const store of stores) cleanup.push(() => store.close());
    // 80 entries: past the 64 a tracker hash's field holds, so the log lives in its sorted set,
    // one member per event.
    const spec = windowSpec('expensive', 'x', 'sliding-log', 80, 60_000);
    const decisions: boolean[] = [];
    // Alternating stores: each one's n-th call carried the same member before members had a random part.
    for (let i = 0; i < 82; i++) {
      const store = stores[i % 2]!;
      decisions.push((await store.consume(planOf(store, 'user:1', [spec]))).allowed);
    }
    expect(decisions).toEqual([...Array<boolean>(80).fill(true), false, false]);
    expect(await admin.zcard(stores[0]!.key('user:1', 'x'))).toBe(80);
    expect(await logSize(admin, stores[0]!.key('user:1', 'x'))).toBe(80);
  });

  it("one tier decided under several plans' figures (named plans share the expensive tier) decides with each plan's own", async () => {
    const client = storeClient(server.port);
    cleanup.push(() => closeClient(client));
    await ready(client);
    const store = new RedisRateLimitStore({ client, keyPrefix: 'edge-plans:', commandTimeoutMs: 2000 });
    cleanup.push(() => store.close());
    const free = [windowSpec('expensive', 'x', 'sliding-log', 5, 60_000)];
    const pro = [windowSpec('expensive', 'x', 'sliding-log', 20, 60_000)];
    const counter = [windowSpec('expensive', 'x', 'sliding-counter', 5, 60_000)];
    const allowed = async (specs: readonly TierSpec[], tracker = 'ip:198.51.100.7'): Promise<boolean> =>
      (await store.consume(planOf(store, tracker, specs))).allowed;
    // A free client, then a pro client behind the same address: 20 in the window in all.
    expect(await allowed(free)).toBe(true);
    const outcomes: boolean[] = [];
    for (let i = 0; i < 25; i++) outcomes.push(await allowed(pro));
    expect(outcomes.filter(Boolean)).toHaveLength(19);
    // The free plan, with 20 events live, refuses.
    expect(await allowed(free)).toBe(false);
    // Another algorithm on the same tier starts afresh (as the memory store does), without an error.
    for (let i = 0; i < 5; i++) expect(await allowed(counter, 'user:7')).toBe(true);
    expect(await allowed(free, 'user:7')).toBe(true);
    expect(await allowed(counter, 'user:7')).toBe(true);
  });

  it('a demoted master keeps the breaker open (no flapping) until it is a master again', async () => {
    const other = await startRedis();
    cleanup.push(() => other.stop());
    const availability: boolean[] = [];
    const store = await createRedisStore({
      url: server.url,
      keyPrefix: 'edge-role:',
      commandTimeoutMs: 200,
      breaker: { failureThreshold: 1, probeIntervalMs: 50 },
      onAvailabilityChange: (available) => availability.push(available),
    });
    cleanup.push(() => store.close());
    cleanup.push(async () => void (await admin.call('REPLICAOF', 'NO', 'ONE')));
    const plan = planOf(store, 'ip:role', [tokenBucketSpec('global', 'g', 1e6, 1e6)]);
    expect((await store.consume(plan)).allowed).toBe(true);

    await admin.call('REPLICAOF', '127.0.0.1', String(other.port));
    let failed = 0;
    const until = Date.now() + 1500;
    while (Date.now() < until) {
      try {
        await store.consume(plan);
      } catch {
        failed++;
      }
      await sleep(10);
    }
    expect(failed).toBeGreaterThan(10);
    // A PING probe closed the breaker after every reconnect, and the next decision opened it again.
    expect(availability).toEqual([false]);

    await admin.call('REPLICAOF', 'NO', 'ONE');
    const back = Date.now() + 3000;
    while (!store.available && Date.now() < back) await sleep(20);
    expect(availability).toEqual([false, true]);
    expect((await store.consume(plan)).allowed).toBe(true);
  });
});
