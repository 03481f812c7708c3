/**
 * Code-reading review of the Redis store when Redis is slow, down or flapping (reviewed at
 * commit d147fb6): lib/storage/redis/call-gate.ts (deadline, breaker, half-open probe),
 * block-cache.ts, redis-store.ts, client-factory.ts, server-checks.ts, sentinel-watch.ts, and
 * the fail mode in lib/services/shared-store.ts / lib/pipeline/message-limiter.ts, against
 * README "When Redis is slow or down", the option JSDoc (`breaker`, `commandTimeoutMs`,
 * `available`) and shared/RELIABILITY.md C-21/C-22 (pending store calls bounded, outages
 * reported). Real redis-server processes started here (frozen with SIGSTOP, resumed with
 * SIGCONT); no mocks.
 *
 * Probed and found to hold (not repeated here when existing tests pin them): the deadline
 * timer's re-arming and the once-only extension; one failure per turn; late answers never
 * count as health; the breaker opening on close/end without double-counting repeated close
 * events during reconnects; the probe skipped while the client is not ready and re-run at
 * `ready`; the block cache cleared at recovery; fail mode `closed` never admitting on a
 * store failure; the fallback store only deciding while a call failed; close() clearing
 * the probe timer. Pinned below: decisions refused while the breaker is open add nothing
 * to ioredis's queue (F-5), and a frozen Redis's outage ends by a probe after SIGCONT.
 *
 * Also pinned: an app started against a frozen Redis (TCP accepts, the ready check is never
 * answered) is in an outage from its start (README), though only because the module's first
 * block sync calls the store; a bare store reports `available` until its first call.
 *
 * Failed on d147fb6, fixed (call-gate.ts: a probe whose command is unanswered sends the next
 * one only once it is answered or fails, except on a Cluster, whose probe goes to a random
 * node; a closed gate's breaker no longer closes on a late answer):
 * - while Redis is frozen (SIGSTOP: TCP stays up), the breaker's half-open probe sends a
 *   new `SET <prefix>probe` every probe interval although every earlier one is still
 *   unanswered on the same connection (Redis answers a connection in order, so the new one
 *   cannot be answered first anyway): ioredis's command queue grows by one command per
 *   `probeIntervalMs + commandTimeoutMs` (300 ms by default) for as long as the freeze
 *   lasts, without bound; RELIABILITY C-22 asks that pending store calls stay bounded
 *   (<= the decisions in flight when the breaker opened). call-gate.ts `probe()` and the
 *   reject branch that calls `scheduleProbe()`.
 * - a probe in flight when `close()` is called, answered after it, closes the breaker of
 *   the closed store: `onAvailabilityChange` and `watchAvailability` listeners are told
 *   `available: true` while `store.available` is false and `isClosed` true (and
 *   `onRecover` runs on the closed store). call-gate.ts `succeeded()`/`recover()` do not
 *   look at `closed` (only `trip()` does).
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { ConfigModule } from '@nestjs/config';
import { Registry } from 'prom-client';
import { WsRateLimitModule } from '../../lib/index.js';
import type { RateLimitPlan } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { createRedisStore, RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { ConnectionsGateway } from '../e2e/connections/connections.gateway.js';
import { startApp, type RunningApp } from '../support/app.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { sleep } from './helpers.js';

const bucketPlan = (store: RedisRateLimitStore, tracker: string): RateLimitPlan => {
  const spec = tokenBucketSpec('global', 'g', 1e9, 1e6);
  return { tracker, tiers: [{ key: store.key(tracker, spec.suffix), spec }] };
};

/** Commands ioredis sent and holds for a reply (its `commandQueue`). */
const queued = (store: RedisRateLimitStore): number =>
  (store.client as unknown as { commandQueue: { length: number } }).commandQueue.length;

/** Swallows one decision's outcome (the fail mode is not under test here). */
function fire(store: RedisRateLimitStore, plan: RateLimitPlan): Promise<unknown> {
  try {
    return Promise.resolve(store.consume(plan)).catch(() => undefined);
  } catch {
    return Promise.resolve();
  }
}

/** Polls `condition` every 20 ms until true or `timeoutMs`; returns its last value. */
async function until(condition: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

describe('call gate, breaker and probe under a frozen Redis (code review)', () => {
  const servers: RedisServer[] = [];
  const stores: RedisRateLimitStore[] = [];
  const apps: RunningApp[] = [];

  afterAll(async () => {
    for (const server of servers) server.resume();
    for (const app of apps) await app.close().catch(() => undefined);
    await Promise.all(stores.map((store) => store.close().catch(() => undefined)));
    await Promise.all(servers.map((server) => server.stop()));
  });

  async function frozenStore(probeIntervalMs: number): Promise<{ server: RedisServer; store: RedisRateLimitStore }> {
    const server = await startRedis();
    servers.push(server);
    const store = await createRedisStore({
      url: server.url,
      keyPrefix: 'cgr:',
      blockCache: false,
      breaker: { probeIntervalMs },
    });
    stores.push(store);
    // Warm: the script is loaded and Redis answers.
    await store.consume(bucketPlan(store, 'warm'));
    server.pause();
    // Decisions in turns of their own until the breaker opens (3 missed turns).
    const opened = await until(() => {
      if (store.available) void fire(store, bucketPlan(store, 'frozen'));
      return !store.available;
    }, 5000);
    expect(opened).toBe(true);
    return { server, store };
  }

  it('while Redis stays frozen, the half-open probes do not pile up in the connection (pending calls stay bounded, RELIABILITY C-22; it was: one more probe every interval)', async () => {
    const { server, store } = await frozenStore(20);
    // The decisions sent before the breaker opened, unanswered: the bound C-22 sets.
    const atOpen = queued(store);
    // No traffic from here: only the breaker's probe may send. One probe in flight at a
    // time is the most that can help (Redis answers a connection's commands in order, so a
    // probe queued behind an unanswered one cannot be answered before it anyway).
    await until(() => queued(store) > atOpen + 5, 3000);
    const after = queued(store);
    console.log(`frozen Redis: ${atOpen} commands pending when the breaker opened, ${after} later with no traffic`);
    try {
      expect(after).toBeLessThanOrEqual(atOpen + 1);
    } finally {
      server.resume();
      // Recovery still happens (a probe answered in time closes the breaker).
      expect(await until(() => store.available, 5000)).toBe(true);
    }
  });

  it('decisions refused while the breaker is open send nothing (no command queued: F-5); after SIGCONT a probe closes the breaker and Redis decides again', async () => {
    const { server, store } = await frozenStore(250);
    const before = queued(store);
    let refusedAtOnce = 0;
    for (let i = 0; i < 200; i++) {
      try {
        void Promise.resolve(store.consume(bucketPlan(store, `open-${i}`))).catch(() => undefined);
      } catch {
        refusedAtOnce++;
      }
    }
    // Same tick: nothing but these decisions could have sent.
    expect({ refusedAtOnce, queued: queued(store) }).toEqual({ refusedAtOnce: 200, queued: before });
    server.resume();
    expect(await until(() => store.available, 5000)).toBe(true);
    const decision = await store.consume(bucketPlan(store, 'after'));
    expect(decision.allowed).toBe(true);
  });

  it('a probe answered after close() does not tell availability listeners the closed store is available again (it was: told available: true while closed)', async () => {
    const server = await startRedis();
    servers.push(server);
    const told: { available: boolean; closed: boolean }[] = [];
    let store: RedisRateLimitStore | undefined = undefined;
    store = await createRedisStore({
      url: server.url,
      keyPrefix: 'cgr-close:',
      commandTimeoutMs: 1500,
      breaker: { failureThreshold: 1, probeIntervalMs: 10 },
      onAvailabilityChange: (available) => told.push({ available, closed: store?.isClosed ?? false }),
    });
    stores.push(store);
    const s = store;
    await s.consume(bucketPlan(s, 'warm'));
    server.pause();
    const idle = queued(s);
    void fire(s, bucketPlan(s, 'frozen'));
    // The decision is in ioredis's queue (unanswered) before the breaker can open.
    expect(await until(() => queued(s) > idle, 3000)).toBe(true);
    const sent = queued(s);
    expect(await until(() => !s.available, 5000)).toBe(true);
    // The probe is sent 10 ms after the breaker opened, and waits up to 1.5 s for Redis (only
    // one: later ones wait for its answer). Counted from before the breaker opened: the probe
    // may be out by the time the poll sees the breaker open.
    expect(await until(() => queued(s) > sent, 3000)).toBe(true);
    const closing = s.close();
    server.resume();
    await closing;
    // Long enough for the probe's reply (Redis answers at once after SIGCONT).
    await sleep(300);
    console.log(`availability told: ${JSON.stringify(told)}`);
    expect(s.available).toBe(false);
    // The store is closed: it answers nothing any more (isClosed), and `available` says false.
    expect(told.filter((change) => change.closed && change.available)).toEqual([]);
  });

  it('an app started against a frozen Redis (TCP accepts, the ready check is never answered) reports the outage from its start (its block sync trips the breaker)', async () => {
    const server = await startRedis();
    servers.push(server);
    server.pause();
    const store = await createRedisStore({ url: server.url, keyPrefix: 'cgr-boot:', readyTimeoutMs: 500 });
    stores.push(store);
    const told: boolean[] = [];
    store.watchAvailability((available) => told.push(available));
    const registry = new Registry();
    const running = await startApp({
      imports: [
        ConfigModule.forRoot({ ignoreEnvFile: true }),
        WsRateLimitModule.forRoot({ useEnv: false, store, metricsRegistry: registry, metricsPrefix: 'cgr_boot_' }),
      ],
      providers: [ConnectionsGateway],
    });
    apps.push(running);
    const value = async (name: string) => (await registry.getSingleMetric(`cgr_boot_${name}`)!.get()).values[0]?.value;
    const seen = {
      status: store.client.status,
      available: store.available,
      told,
      fallback: await value('store_fallback'),
      outages: await value('store_outages_total'),
    };
    console.log(`started against a frozen Redis: ${JSON.stringify(seen)}`);
    server.resume();
    // README ("When Redis is slow or down"): "An application that starts while Redis cannot
    // be reached (start-up waits up to 2 s for it) is in an outage from its start, reported
    // the same way"; `available`: "False while the circuit breaker is open (Redis
    // unreachable, frozen or failing)".
    expect({ available: seen.available, told: seen.told, fallback: seen.fallback, outages: seen.outages }).toEqual({
      available: false,
      told: [false],
      fallback: 1,
      outages: 1,
    });
  });
});
