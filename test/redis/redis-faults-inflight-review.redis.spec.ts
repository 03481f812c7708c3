/**
 * Review: a Redis store that fails while messages are in flight, on a listening NestJS app
 * with real `ws` and socket.io-client clients and a real redis-server (startRedis) that is
 * frozen (SIGSTOP/SIGCONT), killed and restarted on the same port. Checks the promises of
 * README ("When Redis is slow or down"), DESIGN.md and RELIABILITY.md C-21/C-22: a message
 * admitted gets its reply, a refused one its frame (STORE_UNAVAILABLE under fail mode
 * `closed`), nothing is lost, nothing hangs; fail mode `open` says so as a metric and an
 * events$ store event; a busy event loop (200 ms busy-wait) with a healthy Redis is not an
 * outage; recovery (limits shared again, reservations returned, no stale refusals);
 * upgrades while Redis is down; app.close() with Redis frozen is bounded and leaves no
 * handles. Token reservations on and off.
 *
 * One defect found on the reviewed code (ee2752f), and fixed: the store's block cache
 * survived an outage, so after Redis restarted (its data lost) an app went on refusing a
 * tracker it had cached as over its limit (up to the cached retry time, here ~100 s, with
 * `remaining: 0`), while Redis and the other instances admitted it. The cache is now
 * emptied when the breaker closes (lib/storage/redis/redis-store.ts, `onRecover`).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { performance } from 'node:perf_hooks';
import { Registry } from 'prom-client';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { startApp, type RunningApp } from '../support/app.js';
import { upgrade } from '../support/http.js';
import { connectIo, IoTestClient, waitFor } from '../support/io-client.js';
import { metricSum } from '../support/metrics.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { TestClient, type Frame } from '../support/ws-client.js';
import { sleep } from './helpers.js';

/** Busy-waits the event loop for `ms`. */
function busyWait(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // blocking on purpose
  }
}

@WebSocketGateway()
@WsRateLimit()
class FaultGateway {
  static limiter: WsRateLimitService | undefined;

  constructor(limiter: WsRateLimitService) {
    FaultGateway.limiter = limiter;
  }

  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }

  @SubscribeMessage('pooled')
  pooled(@MessageBody() data: unknown) {
    return { event: 'pooled', data };
  }

  @Throttle({ type: 'scarce', capacity: 5, refillRate: 0.01 })
  @SubscribeMessage('scarce')
  scarce(@MessageBody() data: unknown) {
    return { event: 'scarce', data };
  }

  /**
   * Sends 5 decisions from code, lets them reach Redis, then blocks the event loop for
   * 200 ms while they are in flight; replies with which of them were allowed.
   */
  @SubscribeMessage('spin')
  async spin(@MessageBody() data: { id: number }, @ConnectedSocket() _client: object) {
    const limiter = FaultGateway.limiter!;
    const pending = Array.from({ length: 5 }, () => limiter.consume('spinner', { type: 'spin-code' }));
    await new Promise<void>((resolve) => setTimeout(resolve, 2));
    busyWait(200);
    // And calls sent in the blocked tick itself (their bytes leave once it ends).
    const corked = Array.from({ length: 5 }, () => limiter.consume('spinner', { type: 'spin-code' }));
    busyWait(200);
    const decisions = await Promise.all([...pending, ...corked]);
    return { event: 'spun', data: { id: data.id, allowed: decisions.map((decision) => decision.allowed) } };
  }
}

/** Resource types keeping the event loop alive, counted (redis-server children aside). */
function resources(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const type of process.getActiveResourcesInfo()) {
    if (type === 'ProcessWrap' || type === 'PipeWrap') continue;
    counts.set(type, (counts.get(type) ?? 0) + 1);
  }
  return counts;
}

async function steadyResources(): Promise<Map<string, number>> {
  let last = JSON.stringify([...resources()].sort());
  for (let i = 0; i < 50; i++) {
    await sleep(100);
    const now = JSON.stringify([...resources()].sort());
    if (now === last) break;
    last = now;
  }
  return resources();
}

async function leftOver(baseline: Map<string, number>, timeoutMs = 8000): Promise<Record<string, number>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left: Record<string, number> = {};
    for (const [type, count] of resources()) {
      const more = count - (baseline.get(type) ?? 0);
      if (more > 0) left[type] = more;
    }
    if (Object.keys(left).length === 0 || Date.now() > deadline) return left;
    await sleep(50);
  }
}

async function waitUntil(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not reached within ${timeoutMs} ms`);
    await sleep(20);
  }
}

/** An app under test, its limiter, metrics and the store events it streamed. */
/**
 * Batches of token reservations an app's Redis store holds, and give-backs in flight (test
 * access to the store's private reservation book; 0 with reservations off).
 */
function reservationsHeld(limiter: WsRateLimitService): number {
  let store = limiter.store as unknown as { store?: unknown; reservations?: unknown };
  if (store.reservations === undefined && store.store !== undefined) store = store.store as typeof store;
  const book = store.reservations as
    { entries: Map<unknown, { batch?: unknown }>; returning: Set<unknown> } | undefined;
  if (book === undefined) return 0;
  let held = book.returning.size;
  for (const entry of book.entries.values()) if (entry.batch !== undefined) held++;
  return held;
}

interface Started {
  running: RunningApp;
  limiter: WsRateLimitService;
  registry: Registry;
  storeEvents: string[];
  events: RateLimitEvent[];
}

const RESERVATIONS = [
  ['off', 0],
  ['on', 32],
] as const;

/** Scripts Redis ran since the last CONFIG RESETSTAT. */
async function scriptCalls(redis: RedisServer): Promise<number> {
  const stats = String(await redis.command('INFO', 'commandstats'));
  let calls = 0;
  for (const match of stats.matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+)/g)) calls += Number(match[1]);
  return calls;
}

/** The ids a ws client's answers name: replies of `reply` and `rate_limit` frames. */
function answersOf(client: TestClient, reply: string): { replied: number[]; refused: Frame[] } {
  const replied: number[] = [];
  const refused: Frame[] = [];
  for (const frame of client.frames) {
    if (frame.event === reply) replied.push((frame.data as { id: number }).id);
    else if (frame.event === 'rate_limit') refused.push(frame);
  }
  return { replied, refused };
}

describe('Redis faults with messages in flight (review)', () => {
  let redis: RedisServer;
  const cleanups: Array<() => unknown> = [];
  const later = (cleanup: () => unknown) => cleanups.push(cleanup);
  const rejections: unknown[] = [];
  const onRejection = (reason: unknown) => rejections.push(reason);

  beforeAll(async () => {
    redis = await startRedis();
    process.on('unhandledRejection', onRejection);
  });
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch {
        // best effort
      }
    }
    redis.resume();
    if (redis.process.exitCode !== null || redis.process.signalCode !== null) await redis.restart();
    await redis.command('FLUSHALL');
    rejections.length = 0;
  });
  afterAll(async () => {
    process.off('unhandledRejection', onRejection);
    await redis.stop();
  });

  const start = async (
    options: WsRateLimitModuleOptions,
    transport: 'ws' | 'socket.io' = 'ws',
    reservationBatch = 0,
    commandTimeoutMs?: number,
  ): Promise<Started> => {
    const registry = new Registry();
    const running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            store: 'redis',
            redis: {
              url: redis.url,
              ...(reservationBatch > 0 ? { reservationBatch } : {}),
              ...(commandTimeoutMs !== undefined ? { commandTimeoutMs } : {}),
            },
            tracker: 'ip',
            global: { capacity: 1000, refillRate: 1000 },
            type: { capacity: 1000, refillRate: 1000 },
            violations: { max: 1000, windowMs: 60_000 },
            metricsRegistry: registry,
            ...options,
          }),
        ],
        providers: [FaultGateway],
      },
      (app) => (transport === 'ws' ? new WsRateLimitAdapter(app) : new WsRateLimitIoAdapter(app)),
    );
    later(() => running.close());
    const limiter = running.app.get(WsRateLimitService);
    const storeEvents: string[] = [];
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => {
      if (event.kind === 'store') storeEvents.push(event.state);
      if (event.kind !== 'decision') events.push(event);
    });
    later(() => subscription.unsubscribe());
    return { running, limiter, registry, storeEvents, events };
  };

  const connectWs = async (url: string): Promise<TestClient> => {
    const client = await TestClient.connect(url);
    later(() => client.close());
    return client;
  };

  describe.each(RESERVATIONS)('token reservations %s', (_label, batch) => {
    it('fail mode closed, Redis killed under a burst: every message gets its reply or a STORE_UNAVAILABLE frame, once; restarted, no stale refusal and the limits are in Redis again', async () => {
      const app = await start({ failMode: 'closed' }, 'ws', batch);
      const client = await connectWs(app.running.url);
      client.socket.send(JSON.stringify({ event: 'echo', data: { id: -1 } }));
      await client.waitForEvent('echo');
      const send = (id: number) => client.socket.send(JSON.stringify({ event: 'echo', data: { id }, id }));
      client.inOneWrite(() => {
        for (let id = 0; id < 30; id++) send(id);
      });
      redis.kill('SIGKILL');
      await sleep(20);
      for (let id = 30; id < 40; id++) send(id);
      await client.waitFor((frame) => frame.event === 'echo' || frame.event === 'rate_limit', 41, 15_000);
      await sleep(200);
      const { replied, refused } = answersOf(client, 'echo');
      const refusedIds = refused.map((frame) => frame['data'].id as number);
      expect([...replied.filter((id) => id >= 0), ...refusedIds].sort((a, b) => a - b)).toEqual(
        Array.from({ length: 40 }, (_, id) => id),
      );
      for (const frame of refused) expect(frame.data).toMatchObject({ code: 'STORE_UNAVAILABLE', warningCount: 0 });
      // The later ones, sent after the kill, are all refused (nothing admitted unseen).
      expect(refusedIds.filter((id) => id >= 30)).toHaveLength(10);
      expect(client.socket.readyState).toBe(client.socket.OPEN);
      expect(app.storeEvents).toEqual(['down']);
      expect(await metricSum(app.registry, 'ws_rate_limit_store_fallback')).toBe(1);
      expect(await metricSum(app.registry, 'ws_rate_limit_store_outages_total')).toBe(1);

      await redis.restart();
      await waitUntil(() => app.storeEvents.length === 2, 'store up');
      expect(app.storeEvents).toEqual(['down', 'up']);
      expect(await metricSum(app.registry, 'ws_rate_limit_store_fallback')).toBe(0);
      client.frames.length = 0;
      for (let id = 100; id < 110; id++) send(id);
      await client.waitFor((frame) => frame.event === 'echo' || frame.event === 'rate_limit', 10, 10_000);
      await sleep(100);
      expect(answersOf(client, 'echo')).toEqual({
        replied: Array.from({ length: 10 }, (_, i) => 100 + i),
        refused: [],
      });
      const keys = (await redis.command('KEYS', 'wsrl:*')) as string[];
      expect(keys.filter((key) => key.endsWith(':~4')).length).toBeGreaterThan(0);
      expect(rejections).toEqual([]);
    }, 60_000);

    it('socket.io, fail mode closed, Redis killed under a burst: every event gets its echo or a STORE_UNAVAILABLE rate_limit event, once', async () => {
      const app = await start({ failMode: 'closed' }, 'socket.io', batch);
      const client = await connectIo(`http://127.0.0.1:${app.running.port}`, 'websocket');
      later(() => client.close());
      client.socket.emit('echo', { id: -1 });
      await client.until(() => client.of('echo').length === 1);
      for (let id = 0; id < 30; id++) client.socket.emit('echo', { id });
      redis.kill('SIGKILL');
      await sleep(20);
      for (let id = 30; id < 40; id++) client.socket.emit('echo', { id });
      const answered = () => client.of('echo').length + client.of('rate_limit').length;
      await client.until(() => answered() >= 41, 15_000, '41 answers');
      await sleep(200);
      const ids = [...client.of('echo'), ...client.of('rate_limit')]
        .map((data) => (data as { id: number }).id)
        .filter((id) => id >= 0)
        .sort((x, y) => x - y);
      expect(ids).toEqual(Array.from({ length: 40 }, (_, id) => id));
      for (const data of client.of('rate_limit')) expect(data).toMatchObject({ code: 'STORE_UNAVAILABLE' });
      expect(client.socket.connected).toBe(true);
      expect(rejections).toEqual([]);
    }, 60_000);

    it('fail mode open, Redis frozen under a burst: every message answered from the fallback, reported as a gauge, a counter and an events$ store event; resumed, decisions go to Redis again', async () => {
      const app = await start({ failMode: 'open' }, 'ws', batch);
      const client = await connectWs(app.running.url);
      client.socket.send(JSON.stringify({ event: 'echo', data: { id: -1 } }));
      await client.waitForEvent('echo');
      const send = (id: number) => client.socket.send(JSON.stringify({ event: 'echo', data: { id }, id }));
      client.inOneWrite(() => {
        for (let id = 0; id < 30; id++) send(id);
      });
      redis.pause();
      try {
        await sleep(20);
        for (let id = 30; id < 40; id++) send(id);
        await client.waitForEvent('echo', 41, 15_000);
        await waitUntil(() => app.storeEvents.length > 0, 'store down', 5000);
        expect(answersOf(client, 'echo').refused).toEqual([]);
        expect(app.storeEvents).toEqual(['down']);
        const down = app.events.find((event) => event.kind === 'store');
        expect(down).toMatchObject({ kind: 'store', state: 'down' });
        expect(typeof (down as { error?: unknown }).error).toBe('string');
        expect(await metricSum(app.registry, 'ws_rate_limit_store_fallback')).toBe(1);
        expect(await metricSum(app.registry, 'ws_rate_limit_store_outages_total')).toBe(1);
        expect(await metricSum(app.registry, 'ws_rate_limit_store_errors_total')).toBeGreaterThan(0);
      } finally {
        redis.resume();
      }
      await waitUntil(() => app.storeEvents.length === 2, 'store up');
      expect(app.storeEvents).toEqual(['down', 'up']);
      expect(await metricSum(app.registry, 'ws_rate_limit_store_fallback')).toBe(0);
      await redis.command('CONFIG', 'RESETSTAT');
      client.frames.length = 0;
      for (let id = 100; id < 140; id++) send(id);
      await client.waitForEvent('echo', 40, 10_000);
      expect(await scriptCalls(redis)).toBeGreaterThan(0);
      expect(rejections).toEqual([]);
    }, 60_000);

    it('fail mode closed, Redis busy (DEBUG SLEEP 0.3) under a burst: each message answered once, by its reply or STORE_UNAVAILABLE; afterwards nothing is refused', async () => {
      const app = await start({ failMode: 'closed' }, 'ws', batch);
      const client = await connectWs(app.running.url);
      const send = (id: number) => client.socket.send(JSON.stringify({ event: 'echo', data: { id }, id }));
      send(-1);
      await client.waitForEvent('echo');
      const slept = redis.command('DEBUG', 'SLEEP', '0.3').catch(() => undefined);
      await sleep(20);
      client.inOneWrite(() => {
        for (let id = 0; id < 30; id++) send(id);
      });
      await sleep(50);
      for (let id = 30; id < 40; id++) send(id);
      await client.waitFor((frame) => frame.event === 'echo' || frame.event === 'rate_limit', 41, 15_000);
      await slept;
      await sleep(300);
      const { replied, refused } = answersOf(client, 'echo');
      const refusedIds = refused.map((frame) => frame['data'].id as number);
      expect([...replied.filter((id) => id >= 0), ...refusedIds].sort((a, b) => a - b)).toEqual(
        Array.from({ length: 40 }, (_, id) => id),
      );
      for (const frame of refused) expect(frame.data).toMatchObject({ code: 'STORE_UNAVAILABLE', warningCount: 0 });
      // An outage, if the breaker opened, is over once Redis answers again.
      await waitUntil(async () => (await metricSum(app.registry, 'ws_rate_limit_store_fallback')) === 0, 'no fallback');
      expect(app.storeEvents.length % 2).toBe(0);
      client.frames.length = 0;
      for (let id = 100; id < 120; id++) send(id);
      await client.waitFor((frame) => frame.event === 'echo' || frame.event === 'rate_limit', 20, 10_000);
      await sleep(100);
      expect(answersOf(client, 'echo')).toEqual({
        replied: Array.from({ length: 20 }, (_, i) => 100 + i),
        refused: [],
      });
      expect(rejections).toEqual([]);
    }, 60_000);

    it('recovery after a restart (data lost): two apps share a limit again, reservations taken after it come back when idle', async () => {
      const a = await start({ failMode: 'open', types: { pooled: { capacity: 40, refillRate: 2 } } }, 'ws', batch);
      const b = await start({ failMode: 'open', types: { pooled: { capacity: 40, refillRate: 2 } } }, 'ws', batch);
      const clientA = await connectWs(a.running.url);
      const clientB = await connectWs(b.running.url);
      const send = (client: TestClient, event: string, id: number) =>
        client.socket.send(JSON.stringify({ event, data: { id }, id }));
      send(clientA, 'echo', -1);
      await clientA.waitForEvent('echo');
      redis.kill('SIGKILL');
      await waitUntil(() => a.storeEvents.length === 1 && b.storeEvents.length === 1, 'both down', 10_000);
      // The fallback decides meanwhile: its own budget, per instance.
      send(clientB, 'echo', -2);
      await clientB.waitForEvent('echo');
      await redis.restart();
      await waitUntil(() => a.storeEvents.length === 2 && b.storeEvents.length === 2, 'both up');
      const began = performance.now();
      for (let id = 0; id < 10; id++) send(clientA, 'pooled', id);
      await clientA.waitFor((frame) => frame.event === 'pooled' || frame.event === 'rate_limit', 10);
      expect(answersOf(clientA, 'pooled')).toEqual({ replied: Array.from({ length: 10 }, (_, i) => i), refused: [] });
      // Reservations A took and did not spend go back when idle (two sweeps a quarter of the
      // TTL apart, then a Redis call): until A holds no batch and has no give-back in flight
      // (at least 800 ms; longer when this machine stalls and the sweeps come late).
      await sleep(800);
      await waitUntil(() => reservationsHeld(a.limiter) === 0, 'A to give its reservations back', 10_000);
      clientB.inOneWrite(() => {
        for (let id = 100; id < 140; id++) send(clientB, 'pooled', id);
      });
      await clientB.waitFor((frame) => frame.event === 'pooled' || frame.event === 'rate_limit', 40, 15_000);
      const elapsedS = (performance.now() - began) / 1000;
      const onB = answersOf(clientB, 'pooled');
      // Shared again: B gets what A left (30) and the refill since, never a budget of its own.
      expect(onB.replied.length).toBeGreaterThanOrEqual(30);
      expect(onB.replied.length).toBeLessThanOrEqual(30 + Math.ceil(2 * elapsedS) + 1);
      expect(onB.refused.every((frame) => frame.data.code === 'TYPE_LIMIT')).toBe(true);
      expect(rejections).toEqual([]);
    }, 60_000);

    it('a refusal an app cached before Redis restarted (data lost) does not outlive the recovery (it was served for ~100 s with remaining 0 while Redis and the other app admitted)', async () => {
      const a = await start({ failMode: 'open' }, 'ws', batch);
      const b = await start({ failMode: 'open' }, 'ws', batch);
      const clientA = await connectWs(a.running.url);
      const clientB = await connectWs(b.running.url);
      const sendScarce = (client: TestClient, id: number) =>
        client.socket.send(JSON.stringify({ event: 'scarce', data: { id }, id }));
      // Before: A spends the whole scarce budget (5, one token per 100 s): B is refused.
      for (let id = 0; id < 5; id++) sendScarce(clientA, id);
      await clientA.waitForEvent('scarce', 5);
      sendScarce(clientB, 0);
      await clientB.waitForEvent('rate_limit', 1);
      expect(clientB.events('rate_limit')[0]!.data).toMatchObject({ code: 'TYPE_LIMIT' });
      redis.kill('SIGKILL');
      await waitUntil(() => a.storeEvents.length === 1 && b.storeEvents.length === 1, 'both down', 10_000);
      await redis.restart();
      await waitUntil(() => a.storeEvents.length === 2 && b.storeEvents.length === 2, 'both up');
      // Redis lost its data: the address has a fresh budget of 5, shared by both apps.
      clientA.frames.length = 0;
      clientB.frames.length = 0;
      sendScarce(clientA, 10);
      await clientA.waitFor((frame) => frame.event === 'scarce' || frame.event === 'rate_limit', 1);
      expect(answersOf(clientA, 'scarce').replied).toEqual([10]);
      sendScarce(clientB, 20);
      await clientB.waitFor((frame) => frame.event === 'scarce' || frame.event === 'rate_limit', 1);
      // B answers from the refusal it cached before the outage (retryAfter ~99 s, remaining
      // 0), though Redis, now deciding again, holds 4 of the address's 5.
      expect(clientB.frames).toEqual([{ event: 'scarce', data: { id: 20 } }]);
      expect(rejections).toEqual([]);
    }, 60_000);

    it('a 200 ms busy-wait of the app with a healthy Redis and decisions in flight is no outage: no refusal, no fallback, no store error', async () => {
      // A 100 ms deadline (half the stall): the stall, not the deadline, is under test, and
      // after a stall a call has one more deadline for Redis to answer in, which a loaded
      // machine may not meet in the default 50 ms.
      const app = await start({ failMode: 'closed' }, 'ws', batch, 100);
      const spinner = await connectWs(app.running.url);
      const other = await connectWs(app.running.url);
      other.socket.send(JSON.stringify({ event: 'echo', data: { id: -1 } }));
      await other.waitForEvent('echo');
      for (let round = 0; round < 3; round++) {
        other.inOneWrite(() => {
          for (let id = 0; id < 20; id++) other.socket.send(JSON.stringify({ event: 'echo', data: { id }, id }));
        });
        spinner.inOneWrite(() => {
          spinner.socket.send(JSON.stringify({ event: 'spin', data: { id: round }, id: round }));
          for (let id = 100; id < 110; id++) spinner.socket.send(JSON.stringify({ event: 'echo', data: { id }, id }));
        });
        await spinner.waitForEvent('spun', round + 1, 15_000);
        await spinner.waitForEvent('echo', (round + 1) * 10, 15_000);
        await other.waitForEvent('echo', 1 + (round + 1) * 20, 15_000);
      }
      expect(spinner.events('rate_limit')).toEqual([]);
      expect(other.events('rate_limit')).toEqual([]);
      for (const frame of spinner.events('spun')) expect(frame.data.allowed).toEqual(new Array(10).fill(true));
      expect(app.storeEvents).toEqual([]);
      expect(await metricSum(app.registry, 'ws_rate_limit_store_errors_total')).toBe(0);
      expect(await metricSum(app.registry, 'ws_rate_limit_store_outages_total')).toBe(0);
      expect(rejections).toEqual([]);
    }, 60_000);

    it.each(['ws', 'socket.io'] as const)(
      '%s: app.close() with Redis frozen, messages and reservations in flight and connections capped: bounded, no handle left, nothing rejected',
      async (transport) => {
        const baseline = await steadyResources();
        const app = await start({ failMode: 'closed', maxConnectionsPerIp: 10 }, transport, batch);
        let burst: () => void;
        if (transport === 'ws') {
          const client = await connectWs(app.running.url);
          client.socket.send(JSON.stringify({ event: 'echo', data: { id: -1 } }));
          await client.waitForEvent('echo');
          burst = () =>
            client.inOneWrite(() => {
              for (let id = 0; id < 30; id++) client.socket.send(JSON.stringify({ event: 'echo', data: { id } }));
            });
        } else {
          const client = await connectIo(`http://127.0.0.1:${app.running.port}`, 'websocket');
          later(() => client.close());
          client.socket.emit('echo', { id: -1 });
          await client.until(() => client.of('echo').length === 1);
          burst = () => {
            for (let id = 0; id < 30; id++) client.socket.emit('echo', { id });
          };
        }
        burst();
        redis.pause();
        burst();
        await sleep(30);
        const began = Date.now();
        await app.running.close();
        expect(Date.now() - began).toBeLessThan(5000);
        redis.resume();
        await sleep(300);
        expect(rejections).toEqual([]);
        for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
        expect(await leftOver(baseline)).toEqual({});
      },
      60_000,
    );
  });

  describe('upgrades while Redis is down', () => {
    it('fail mode closed, Redis killed: ws upgrades 503 with Retry-After, socket.io handshakes refused, counted as reason store; restarted, accepted again', async () => {
      const app = await start({ failMode: 'closed' }, 'ws');
      redis.kill('SIGKILL');
      await waitUntil(() => app.storeEvents.length === 1, 'down', 10_000);
      const refused = await upgrade(app.running.port);
      expect(refused.status).toBe(503);
      expect(refused.headers['retry-after']).toBe('1');
      expect(await metricSum(app.registry, 'ws_rate_limit_connections_total', { reason: 'store' })).toBe(1);
      await redis.restart();
      await waitUntil(() => app.storeEvents.length === 2, 'up');
      const accepted = await upgrade(app.running.port);
      expect(accepted.status).toBe(101);
    }, 60_000);

    it.each(['websocket', 'polling'] as const)(
      'socket.io over %s, fail mode closed, Redis killed: the handshake is refused (connect_error), then accepted once Redis is back',
      async (engine) => {
        const app = await start({ failMode: 'closed' }, 'socket.io');
        const url = `http://127.0.0.1:${app.running.port}`;
        redis.kill('SIGKILL');
        await waitUntil(() => app.storeEvents.length === 1, 'down', 10_000);
        const refused = new IoTestClient(url, engine);
        later(() => refused.close());
        await waitFor(() => refused.connectError !== undefined, 10_000, 'connect_error');
        expect(refused.socket.connected).toBe(false);
        await redis.restart();
        await waitUntil(() => app.storeEvents.length === 2, 'up');
        const accepted = await connectIo(url, engine);
        later(() => accepted.close());
        accepted.socket.emit('echo', { id: 1 });
        await accepted.until(() => accepted.of('echo').length === 1);
      },
      60_000,
    );
  });
});
