/**
 * The Redis store's failure handling at its edges (call gate, breaker, fail mode, telemetry),
 * from an adversarial review against README "When Redis is slow or down", the option JSDoc
 * and shared/RELIABILITY.md C-21..C-26. Real redis-server processes only, started here.
 *
 * The first three failed before their fixes: deadline misses under load were reported as
 * an outage (events, counter, log); a recovery with no traffic did not end the outage, so
 * the next one was not counted; a probe answered BUSY (ROLE refused by a Redis running a
 * long script) closed the breaker. The others pin edge behaviour that held.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { ConfigModule } from '@nestjs/config';
import type { Redis } from 'ioredis';
import { performance } from 'node:perf_hooks';
import { Registry } from 'prom-client';
import { WsRateLimitModule, WsRateLimitService } from '../../lib/index.js';
import type { RateLimitPlan } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { createRedisStore, RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { ConnectionsGateway } from '../e2e/connections/connections.gateway.js';
import { startApp, type RunningApp } from '../support/app.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { adminClient, closeClient, ready, sleep, storeClient } from './helpers.js';

type Outcome = 'allowed' | 'refused' | 'failed-async' | 'failed-sync';

/** One decision on a store: whether Redis answered, or the gate refused at once or later. */
function decide(store: RedisRateLimitStore, plan: RateLimitPlan): Promise<Outcome> {
  try {
    return Promise.resolve(store.consume(plan)).then(
      (decision) => (decision.allowed ? 'allowed' : 'refused'),
      () => 'failed-async' as const,
    );
  } catch {
    return Promise.resolve('failed-sync' as const);
  }
}

const bucketPlan = (store: RedisRateLimitStore, tracker: string): RateLimitPlan => {
  const spec = tokenBucketSpec('global', 'g', 1e9, 1e6);
  return { tracker, tiers: [{ key: store.key(tracker, spec.suffix), spec }] };
};

/**
 * A plan Redis takes far longer on than this process takes to send or read: 2,000 log entries
 * a decision (a sorted set of 2,000 members written), a millisecond or more of Redis's time
 * against some microseconds of this process's, so Redis, not this process, is the queue.
 */
const slowPlan = (store: RedisRateLimitStore, tracker: string): RateLimitPlan => {
  const spec = windowSpec('expensive', 'x', 'sliding-log', 1e9, 500, 2000);
  return { tracker, tiers: [{ key: store.key(tracker, spec.suffix), spec }] };
};

describe('call gate edges: load, busy scripts, outages, shutdown', () => {
  let server: RedisServer;
  let admin: Redis;
  const clients: Redis[] = [];
  const stores: RedisRateLimitStore[] = [];
  let running: RunningApp | undefined;

  beforeAll(async () => {
    server = await startRedis(['--busy-reply-threshold', '100']);
    admin = adminClient(server.port);
    await ready(admin);
  });

  afterEach(async () => {
    server.resume();
    await running?.close();
    running = undefined;
  });

  afterAll(async () => {
    try {
      await running?.close();
      await Promise.all(stores.map((store) => store.close()));
      await Promise.all(clients.map((client) => closeClient(client)));
      if (admin) await closeClient(admin);
    } finally {
      await server?.stop();
    }
  });

  async function ownStore(options: Parameters<typeof createRedisStore>[0] = {}): Promise<RedisRateLimitStore> {
    const client = storeClient(server.port);
    clients.push(client);
    await ready(client);
    const store = new RedisRateLimitStore({ client, keyPrefix: 'review:', blockCache: false, ...options });
    stores.push(store);
    return store;
  }

  it('deadline misses while Redis answers other calls in time (load) are not reported as a store outage', async () => {
    const availability: boolean[] = [];
    const store = await ownStore({
      commandTimeoutMs: 20,
      onAvailabilityChange: (available) => availability.push(available),
    });
    const storeConnection = clients[clients.length - 1]!;
    const registry = new Registry();
    running = await startApp({
      imports: [
        ConfigModule.forRoot({ ignoreEnvFile: true }),
        WsRateLimitModule.forRoot({ store, tracker: 'ip', metricsRegistry: registry, metricsPrefix: 'load_' }),
      ],
      providers: [ConnectionsGateway],
    });
    const limiter = running.app.get(WsRateLimitService);
    const value = async (name: string) =>
      ((await registry.getSingleMetric(`load_${name}`)!.get()).values[0]?.value as number | undefined) ?? 0;
    const events: string[] = [];
    const subscription = limiter.events$.subscribe((event) => {
      if (event.kind === 'store') events.push(event.state);
    });
    try {
      // Warm: the scripts are loaded, Redis answers.
      await limiter.consume('warm', { type: 'echo' });
      expect(await value('store_errors_total')).toBe(0);
      const slow = Array.from({ length: 100 }, (_, i) => slowPlan(store, `load-${i}`));
      let rounds = 0;
      const started = performance.now();
      // Redis is healthy and busy: 100 slow decisions queued on the connection (each a
      // millisecond or more of Redis's time, next to nothing of this process's), then the
      // limiter's own decisions behind them. The first slow ones are answered in time; the
      // limiter's wait behind the queue, in Redis, while this process is idle, and miss the
      // 20 ms deadline: load, not an outage. (An earlier version queued 4,000 cheap slow
      // decisions; on a loaded machine this process, reading their replies, was the
      // bottleneck, the deadline timers fired late and the calls were rightly given another
      // deadline: CI of 9504649 had 20 rounds without a miss.) Rounds go on until misses
      // under load are counted (a round where Redis itself was not scheduled for a deadline
      // before its first answer counts plain failures instead), bounded in count and time.
      while (
        rounds < 10 &&
        performance.now() - started < 40_000 &&
        ((await value('store_errors_total')) === 0 || store.deadlineMissesUnderLoad === 0)
      ) {
        rounds++;
        const loads = slow.map((plan) => decide(store, plan));
        const mine = Array.from({ length: 20 }, (_, i) => limiter.consume(`user-${rounds}-${i}`, { type: 'echo' }));
        await Promise.all([...loads, ...mine]);
        // The decisions were answered by the fail mode at their deadlines; Redis may still be
        // working through the queue. A PING on the store's own connection is answered behind it.
        await storeConnection.ping();
        await sleep(100);
      }
      // One more decision, answered by Redis.
      await limiter.consume('after', { type: 'echo' });
      const misses = store.deadlineMissesUnderLoad;
      const errors = await value('store_errors_total');
      console.log(
        `load: ${rounds} round(s), ${misses} deadline misses under load, ${errors} limiter decisions by the fail mode; ` +
          `breaker changes ${JSON.stringify(availability)}; store events ${JSON.stringify(events)}; ` +
          `outages_total ${await value('store_outages_total')}`,
      );
      // Preconditions: the fail mode decided some of the limiter's decisions, and the breaker
      // never took it for an outage.
      expect(errors).toBeGreaterThan(0);
      expect(misses).toBeGreaterThan(0);
      expect(availability).toEqual([]);
      expect(store.available).toBe(true);
      // README: "a call that misses its deadline while Redis answers other calls in time ...
      // fails (the fail mode decides) but does not count towards opening the breaker";
      // call-gate.ts: "which is load, not an outage". The outage reporting must agree.
      expect(events).toEqual([]);
      expect(await value('store_outages_total')).toBe(0);
    } finally {
      subscription.unsubscribe();
    }
  }, 90_000);

  it('two outages of Redis separated by a recovery with no traffic are reported as two outages', async () => {
    const availability: boolean[] = [];
    const store = await ownStore({ onAvailabilityChange: (available) => availability.push(available) });
    const registry = new Registry();
    running = await startApp({
      imports: [
        ConfigModule.forRoot({ ignoreEnvFile: true }),
        WsRateLimitModule.forRoot({ store, tracker: 'ip', metricsRegistry: registry, metricsPrefix: 'twice_' }),
      ],
      providers: [ConnectionsGateway],
    });
    const limiter = running.app.get(WsRateLimitService);
    const value = async (name: string) =>
      ((await registry.getSingleMetric(`twice_${name}`)!.get()).values[0]?.value as number | undefined) ?? 0;
    const events: string[] = [];
    const subscription = limiter.events$.subscribe((event) => {
      if (event.kind === 'store') events.push(event.state);
    });
    let n = 0;
    /** Decisions (each in a turn of its own) until the breaker opened. */
    const untilOpen = async () => {
      for (let i = 0; i < 200 && store.available; i++) {
        await limiter.consume(`u-${n++}`, { type: 'echo' });
        await sleep(5);
      }
      expect(store.available).toBe(false);
    };
    /** No traffic: the breaker's probe alone finds Redis again. */
    const untilClosedByProbe = async () => {
      for (let i = 0; i < 300 && !store.available; i++) await sleep(10);
      expect(store.available).toBe(true);
    };
    try {
      await limiter.consume('warm', { type: 'echo' });
      server.pause();
      await untilOpen();
      server.resume();
      await untilClosedByProbe();
      const afterFirst = { events: [...events], fallback: await value('store_fallback') };
      server.pause();
      await untilOpen();
      server.resume();
      await untilClosedByProbe();
      // Traffic again, answered by Redis.
      await limiter.consume('after', { type: 'echo' });
      const outages = await value('store_outages_total');
      console.log(
        `two outages: breaker ${JSON.stringify(availability)}; after the first recovery (no traffic): events ` +
          `${JSON.stringify(afterFirst.events)}, store_fallback ${afterFirst.fallback}; at the end: events ` +
          `${JSON.stringify(events)}, store_outages_total ${outages}`,
      );
      expect(availability).toEqual([false, true, false, true]);
      // README: "An outage is logged once when it starts and once when it ends; events$ carries
      // { kind: 'store', state: 'down' | 'up' }"; store_outages_total: "Times the store became unreachable".
      expect(events).toEqual(['down', 'up', 'down', 'up']);
      expect(outages).toBe(2);
    } finally {
      subscription.unsubscribe();
      server.resume();
    }
  });

  it('a Redis busy running a long script (BUSY to every command) keeps the breaker open: the probe does not close it', async () => {
    const availability: boolean[] = [];
    const store = await ownStore({ onAvailabilityChange: (available) => availability.push(available) });
    const plan = bucketPlan(store, 'busy-1');
    expect(await decide(store, plan)).toBe('allowed');
    // A script of another client that runs 1.5 s: past busy-reply-threshold (100 ms) every
    // other command, ROLE included, is answered `BUSY Redis is busy running a script`.
    const busy = admin
      .eval(
        "local s = redis.call('TIME'); local t0 = s[1] * 1000000 + s[2]; " +
          "repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - t0 > 1500000 return 1",
        0,
      )
      .catch((error: unknown) => error);
    await sleep(300);
    const during: Outcome[] = [];
    const availableDuring: boolean[] = [];
    const start = performance.now();
    while (performance.now() - start < 900) {
      during.push(await decide(store, plan));
      availableDuring.push(store.available);
      await sleep(10);
    }
    expect(await busy).toBe(1);
    const sentToBusyRedis = during.filter((outcome) => outcome === 'failed-async').length;
    console.log(
      `BUSY for 1.5 s: ${during.length} decisions during it, ${sentToBusyRedis} sent to Redis and refused with BUSY, ` +
        `${during.filter((o) => o === 'failed-sync').length} refused at once by the breaker; ` +
        `onAvailabilityChange ${JSON.stringify(availability)}`,
    );
    // Nothing was decided by Redis while it ran the script.
    expect(during.filter((outcome) => outcome === 'allowed' || outcome === 'refused')).toEqual([]);
    // The breaker opened once, and was never "available again" while Redis refused every
    // command: ROLE answered BUSY, which is not "a server that refuses ROLE itself".
    expect(availability[0]).toBe(false);
    expect(availability.slice(1, -1)).toEqual([]);
    // Available only before it first opened (the failures before the threshold).
    const opened = availableDuring.indexOf(false);
    expect(opened).toBeGreaterThanOrEqual(0);
    expect(availableDuring.slice(opened).filter((available) => available)).toEqual([]);
  });

  it('a 400 ms busy-wait of this process with calls in flight (150 ms deadline) fails none and leaves the breaker closed', async () => {
    // (It was a 200 ms busy-wait and a 50 ms deadline: after a stall a call has one more
    // deadline for Redis to answer in, which a loaded machine may not meet in 50 ms.)
    const availability: boolean[] = [];
    const store = await ownStore({ commandTimeoutMs: 150, onAvailabilityChange: (a) => availability.push(a) });
    const block = (ms: number) => {
      const until = performance.now() + ms;
      while (performance.now() < until);
    };
    const outcomes: Outcome[] = [];
    for (let round = 0; round < 3; round++) {
      // Sent in this turn (the busy-wait in the same turn), then sent in a turn of their own
      // with the busy-wait in the next.
      const sameTurn = Array.from({ length: 32 }, (_, i) => decide(store, bucketPlan(store, `same-${round}-${i}`)));
      block(400);
      outcomes.push(...(await Promise.all(sameTurn)));
      const inFlight = Array.from({ length: 32 }, (_, i) => decide(store, bucketPlan(store, `flight-${round}-${i}`)));
      await new Promise((resolve) => setImmediate(resolve));
      block(400);
      outcomes.push(...(await Promise.all(inFlight)));
    }
    expect(outcomes.filter((outcome) => outcome !== 'allowed')).toEqual([]);
    expect(availability).toEqual([]);
    expect(store.deadlineMissesUnderLoad).toBe(0);
  });

  /** Open TCP sockets of this process (the store's client is one). */
  const tcpSockets = () => process.getActiveResourcesInfo().filter((kind) => kind === 'TCPSocketWrap').length;

  it('close() of a store that owns its client while Redis is frozen (SIGSTOP) returns within a bound and destroys its socket', async () => {
    const own = await startRedis();
    try {
      const before = tcpSockets();
      const store = await createRedisStore({
        url: own.url,
        keyPrefix: 'close:',
        onAvailabilityChange: () => undefined,
      });
      const plan = bucketPlan(store, 'close-frozen');
      expect(await decide(store, plan)).toBe('allowed');
      own.pause();
      const pending = Array.from({ length: 5 }, () => decide(store, plan));
      await sleep(120);
      const started = performance.now();
      await store.close();
      const took = performance.now() - started;
      expect(took).toBeLessThan(5000);
      expect((await Promise.all(pending)).filter((o) => o === 'allowed' || o === 'refused')).toEqual([]);
      // Well past the close: still frozen.
      await sleep(2000);
      const stream = (store.client as unknown as { stream?: { destroyed: boolean; readable: boolean } }).stream;
      const open = stream !== undefined && !stream.destroyed;
      console.log(
        `close() while Redis is frozen: returned after ${took.toFixed(0)} ms; 2 s later the client is ` +
          `'${store.client.status}', its socket ${open ? 'still open (half-closed, readable ' + String(stream!.readable) + ')' : 'destroyed'}; ` +
          `TCP sockets of this process: ${tcpSockets()} (before the store: ${before})`,
      );
      // RELIABILITY.md I-4: no library-owned handle remains. (The client's status was seen
      // 'ready' instead of 'end' in one run of three: not asserted, reported as a suspicion.)
      expect(open).toBe(false);
    } finally {
      own.resume();
      await own.stop();
    }
  });

  it('close() of a store that owns its client while Redis is down (killed) settles and ends the client', async () => {
    const own = await startRedis();
    try {
      const store = await createRedisStore({
        url: own.url,
        keyPrefix: 'close:',
        onAvailabilityChange: () => undefined,
      });
      const plan = bucketPlan(store, 'close-down');
      expect(await decide(store, plan)).toBe('allowed');
      own.kill('SIGKILL');
      const pending = Array.from({ length: 5 }, () => decide(store, plan));
      await sleep(120);
      const started = performance.now();
      await store.close();
      const took = performance.now() - started;
      expect(took).toBeLessThan(5000);
      expect((await Promise.all(pending)).filter((o) => o === 'allowed' || o === 'refused')).toEqual([]);
      expect(store.client.status).toBe('end');
      expect(await decide(store, plan)).toBe('failed-sync');
    } finally {
      await own.stop();
    }
  });
});
