// Adversarial review of the memory store's bound (`maxKeys`, WS_RATE_LIMIT_MAX_KEYS) and of
// what eviction means for the limits, end to end: lib/storage/memory/ (memory-store.ts,
// tracker-table.ts), lib/services/shared-store.ts (the fail-open fallback store),
// lib/pipeline/message-limiter.ts (the per-connection store) and
// lib/connection/connection-admission.ts (connection rate, open-connection cap).
// README ("Stores > Memory", "Bounds"): at most `maxKeys` tier states; whole trackers are
// dropped, idle ones first, then the least recently used; a tracker holding a lease and the
// tracker being decided are never dropped; a refused decision never drops anything;
// `evictions` counts tier states dropped while they still mattered.
// Questions: can a flood of new trackers (client addresses through a trusted proxy, names
// from a tracker function) evict an exhausted tracker and so hand it a fresh budget? Is it
// the least recently used that goes? Can eviction drop a lease (the per-IP cap), an operator
// block, a sliding log mid-window? Is it counted and visible? Is the fail-open fallback
// bounded the same way, and what bounds the per-connection store?
// Real ws clients against a listening app (WsRateLimitAdapter), a real redis-server for the
// fallback; direct service/store calls where they are the clearest.
// Five cases failed on the reviewed code; fixed: under a flood of new trackers eviction was
// first-in first-out (every new tracker entered marked used, so the CLOCK hand cleared the
// whole ring and dropped where it started: a tracker in use got its spent budget back once
// per maxKeys new trackers; now a new tracker enters unmarked), the first drop of live state
// said nothing (now a warning naming WS_RATE_LIMIT_MAX_KEYS), stats() said nothing of the
// fail-open fallback (now fallbackKeys and fallbackEvictions); documented: the bound gives way
// to open-connection leases (the README said "at most maxKeys" without that).
import { afterEach, describe, expect, it, jest } from '@jest/globals';
import { Logger } from '@nestjs/common';
import { SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Registry } from 'prom-client';
import {
  MemoryRateLimitStore,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { startRedis, type RedisServer } from '../../support/redis-server.js';
import { sleep, TestClient } from '../../support/ws-client.js';

@WebSocketGateway()
@WsRateLimit()
class EvictionGateway {
  @SubscribeMessage('ping')
  ping() {
    return { event: 'pong', data: null };
  }

  @Throttle({ expensive: true })
  @SubscribeMessage('report')
  report() {
    return { event: 'reported', data: null };
  }
}

/** A type bucket of 3 that never refills in a test, an expensive window of 1 per 10 minutes. */
const SPENDABLE: WsRateLimitModuleOptions = {
  global: { capacity: 100_000, refillRate: 100_000 },
  type: { capacity: 3, refillRate: 0.000001 },
  expensive: { max: 1, windowMs: 600_000 },
  // Slow refill: a flood tracker's connection-rate state stays live (not idle) for 1,000 s,
  // so that idle-first never explains what is dropped.
  connection: { capacity: 1000, refillRate: 0.001 },
  violations: { max: 1000, windowMs: 60_000 },
};

/** A distinct client address per index, from 100.64.0.0/10. */
const address = (i: number): string => `100.${64 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;

async function waitUntil(check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await sleep(10);
  }
}

describe('memory store eviction, end to end (ws, WsRateLimitAdapter)', () => {
  let running: RunningApp | undefined;
  let redis: RedisServer | undefined;
  const clients: TestClient[] = [];
  const spies: Array<{ mockRestore(): void }> = [];

  const start = async (options: WsRateLimitModuleOptions) => {
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false, ...options })],
        providers: [EvictionGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    return running.app.get(WsRateLimitService);
  };
  const connect = async (headers: Record<string, string> = {}) => {
    const client = await TestClient.connect(running!.url, { headers });
    clients.push(client);
    return client;
  };
  /** 'accepted' (the socket is kept open), or the refusal as `HTTP <status>`. */
  const attempt = (headers: Record<string, string>) =>
    TestClient.connect(running!.url, { headers }).then(
      (client) => {
        clients.push(client);
        return 'accepted';
      },
      (error: Error) => error.message,
    );
  /** Sends the events in order and waits for one answer each; returns the answers' events. */
  const exchange = async (client: TestClient, events: readonly string[]): Promise<string[]> => {
    const before = client.frames.length;
    for (const event of events) client.send(event);
    const frames = await client.waitFor(() => true, before + events.length, 20_000);
    return frames.slice(before, before + events.length).map((frame) => frame.event ?? '?');
  };
  /**
   * New trackers: a handshake (and, with `message`, one ping) from each of `count` new
   * clients, 8 at a time, each closed after; `between` runs after every batch.
   */
  const flood = async (
    count: number,
    headers: (i: number) => Record<string, string>,
    options: { message?: boolean; between?: () => Promise<void> } = {},
  ) => {
    for (let from = 0; from < count; from += 8) {
      await Promise.all(
        Array.from({ length: Math.min(8, count - from) }, async (_, j) => {
          const client = await TestClient.connect(running!.url, { headers: headers(from + j) });
          try {
            if (options.message) await exchange(client, ['ping']);
          } finally {
            await client.close();
          }
        }),
      );
      await options.between?.();
    }
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
    await redis?.stop();
    redis = undefined;
    for (const spy of spies.splice(0)) spy.mockRestore();
  });

  describe('which tracker goes: the least recently used, not one a flood steers', () => {
    interface Variant {
      name: string;
      options: WsRateLimitModuleOptions;
      mallory: Record<string, string>;
      persistent: Record<string, string>;
      flooder: (i: number) => Record<string, string>;
      message: boolean;
    }
    const variants: Variant[] = [
      {
        name: 'client addresses through a trusted proxy (tracker ip, X-Forwarded-For)',
        options: { tracker: 'ip', trustProxy: 'loopback' } as WsRateLimitModuleOptions,
        mallory: { 'X-Forwarded-For': '6.6.6.6' },
        persistent: { 'X-Forwarded-For': '7.7.7.7' },
        flooder: (i: number) => ({ 'X-Forwarded-For': address(i) }),
        message: false,
      },
      {
        name: 'distinct names from a tracker function (a header the client sets)',
        options: {
          tracker: (_client: unknown, context: { request?: { headers: Record<string, unknown> } }) =>
            context.request?.headers['x-user'] as string | undefined,
        } as unknown as WsRateLimitModuleOptions,
        mallory: { 'x-user': 'mallory' },
        persistent: { 'x-user': 'persistent' },
        flooder: (i: number) => ({ 'x-user': `flood-${i}` }),
        message: true,
      },
    ];

    it.each(variants)(
      '$name: a quiet exhausted tracker is dropped (the documented LRU trade-off) and comes back with a fresh type bucket and expensive window, counted in evictions',
      async ({ options, mallory, flooder, message }) => {
        const maxKeys = 40;
        const limiter = await start({ ...SPENDABLE, ...options, maxKeys });
        // Mallory spends its type bucket (3) and its expensive window (1 per 10 min), then goes quiet.
        const first = await connect(mallory);
        expect(await exchange(first, ['ping', 'ping', 'ping', 'ping'])).toEqual(['pong', 'pong', 'pong', 'rate_limit']);
        expect(await exchange(first, ['report', 'report'])).toEqual(['reported', 'rate_limit']);
        await first.close();
        const before = limiter.stats().evictions!;
        await flood(4 * maxKeys, flooder, { message });
        const stats = limiter.stats();
        expect(stats.storeKeys).toBeLessThanOrEqual(maxKeys);
        // Live states were dropped (each flood tracker's connection-rate bucket is live for 1,000 s).
        expect(stats.evictions! - before).toBeGreaterThanOrEqual(2 * maxKeys);
        // Mallory, quiet through the flood, was dropped: a fresh type bucket and a fresh
        // expensive window, 10 minutes early, for 4 x maxKeys new trackers. README: idle first,
        // then the least recently used; `evictions` ("tier states dropped while they still
        // mattered") counted it.
        const back = await connect(mallory);
        expect(await exchange(back, ['ping', 'ping', 'ping', 'ping'])).toEqual(['pong', 'pong', 'pong', 'rate_limit']);
        expect(await exchange(back, ['report'])).toEqual(['reported']);
      },
      120_000,
    );

    it.each(variants)(
      '$name: a tracker refused (so used) after every 8 new trackers is never dropped by a flood of new ones (it was, once per maxKeys new trackers: eviction was first-in first-out)',
      async ({ options, persistent, flooder, message }) => {
        // README: "Room is made by dropping whole trackers: idle ones first [...], then the least
        // recently used". A tracker used after every 8 of 160 new trackers (maxKeys 40) is among
        // the 8 most recently used whenever room is made, and must never be dropped. It is,
        // once per table's worth of new trackers: TrackerTable.insert (tracker-table.ts:217)
        // gives every new tracker the USED mark, so under a flood every tracker the CLOCK hand
        // reaches is marked; evictOne (tracker-table.ts:405-425) then clears the whole ring in
        // one revolution and drops the tracker where it started, whatever its use: the hand
        // becomes a FIFO over slots. A client refused all along (one that keeps sending, as a
        // flooder does) gets its whole budget back each time. Fix: insert new trackers without
        // the USED mark (SIEVE's rule: only a tracker used again after it entered earns its
        // second chance), so a flood of one-off trackers is dropped before a tracker in use.
        const maxKeys = 40;
        const limiter = await start({ ...SPENDABLE, ...options, maxKeys });
        const steady = await connect(persistent);
        expect(await exchange(steady, ['ping', 'ping', 'ping', 'ping'])).toEqual([
          'pong',
          'pong',
          'pong',
          'rate_limit',
        ]);
        // Four times the bound of new trackers, the steady client sending after every 8.
        const answers: string[] = [];
        await flood(4 * maxKeys, flooder, {
          message,
          between: async () => {
            answers.push(...(await exchange(steady, ['ping'])));
          },
        });
        expect(limiter.stats().evictions).toBeGreaterThan(0);
        expect(answers.filter((answer) => answer === 'pong')).toEqual([]);
        expect(answers).toHaveLength((4 * maxKeys) / 8);
      },
      120_000,
    );

    it('peeks, status() and connectionStatus() of new names, and refused decisions, neither add states nor evict', async () => {
      const maxKeys = 20;
      const limiter = await start({ ...SPENDABLE, maxKeys, tracker: 'ip', trustProxy: 'loopback' });
      const held = await connect({ 'X-Forwarded-For': '7.7.7.7' });
      expect(await exchange(held, ['ping', 'ping', 'ping', 'ping'])).toEqual(['pong', 'pong', 'pong', 'rate_limit']);
      // Nearly fill the table with live trackers from code (two states each: global, t:ping).
      for (let i = 0; i < 8; i++) await limiter.consume(`filler-${i}`, { type: 'ping' });
      const before = limiter.stats();
      expect(before).toEqual(expect.objectContaining({ storeKeys: maxKeys - 1, evictions: 0 }));
      for (let i = 0; i < 5 * maxKeys; i++) {
        await limiter.status(`probe-${i}`);
        await limiter.peek(`probe-${i}`, { type: 'ping' });
        await limiter.connectionStatus(address(i));
      }
      // Refused decisions of the held tracker, from a socket and from code.
      for (let i = 0; i < 20; i++) expect(await exchange(held, ['ping'])).toEqual(['rate_limit']);
      for (let i = 0; i < 20; i++) expect((await limiter.consume('7.7.7.7', { type: 'ping' })).allowed).toBe(false);
      expect(limiter.stats()).toEqual(before);
    }, 60_000);
  });

  describe('what eviction must not drop', () => {
    it('an open-connection lease: an address at its cap stays refused through a flood of new addresses that evicts', async () => {
      const maxKeys = 20;
      const limiter = await start({
        ...SPENDABLE,
        maxKeys,
        tracker: 'ip',
        trustProxy: 'loopback',
        maxConnectionsPerIp: 2,
      });
      const victim = { 'X-Forwarded-For': '7.7.7.7' };
      await connect(victim);
      await connect(victim);
      expect(await attempt(victim)).toBe('HTTP 429');
      const before = limiter.stats().evictions!;
      await flood(4 * maxKeys, (i) => ({ 'X-Forwarded-For': address(i) }));
      expect(limiter.stats().evictions! - before).toBeGreaterThanOrEqual(2 * maxKeys);
      // The two connections are still open: a third is still refused.
      expect(await attempt(victim)).toBe('HTTP 429');
      expect((await limiter.connectionStatus('7.7.7.7')).find((tier) => tier.tier === 'concurrency')).toEqual(
        expect.objectContaining({ remaining: 0 }),
      );
      // And the store itself still holds both leases: one closed gives exactly one slot back.
      await clients[0]!.close();
      await waitUntil(async () => {
        const tier = (await limiter.connectionStatus('7.7.7.7')).find((status) => status.tier === 'concurrency');
        return tier?.remaining === 1;
      });
      expect(await attempt(victim)).toBe('accepted');
      expect(await attempt(victim)).toBe('HTTP 429');
    }, 120_000);

    it('an operator block: a blocked address and a blocked tracker stay blocked through a flood that evicts', async () => {
      const maxKeys = 20;
      const limiter = await start({ ...SPENDABLE, maxKeys, tracker: 'ip', trustProxy: 'loopback' });
      const open = await connect({ 'X-Forwarded-For': '8.8.8.8' });
      await limiter.block('9.9.9.9', 600_000);
      await limiter.block('8.8.8.8', 600_000);
      const before = limiter.stats().evictions!;
      await flood(4 * maxKeys, (i) => ({ 'X-Forwarded-For': address(i) }));
      expect(limiter.stats().evictions! - before).toBeGreaterThanOrEqual(2 * maxKeys);
      expect(await attempt({ 'X-Forwarded-For': '9.9.9.9' })).toBe('HTTP 403');
      expect(await exchange(open, ['ping'])).toEqual(['rate_limit']);
      expect(open.events('rate_limit').at(-1)!.data.code).toBe('BLOCKED');
      expect(Object.keys(limiter.listBlocks()).sort()).toEqual(['ip:8.8.8.8', 'ip:9.9.9.9']);
    }, 120_000);
  });

  describe('the bound itself', () => {
    it('more addresses holding open connections than maxKeys allows push the store past maxKeys, as the README says (the bound gives way to leases), and every cap holds', async () => {
      // README ("Bounds"): "at most `maxKeys` tier states"; RELIABILITY C-15: "store size <=
      // maxKeys". A tracker holding a lease is never dropped (rightly: that would lift the
      // per-IP cap), so once leased trackers fill the table, TrackerTable.reserve finds nothing
      // to evict and each new address grows the table past the bound (by its connection-rate
      // bucket, its lease and, with tracker 'ip', every message tier of that address), and every
      // such insertion scans the whole table first (evictOne's 2 x used + 2 steps). Either the
      // README states that the bound gives way to leases, or the store refuses what it cannot hold.
      const maxKeys = 10;
      const limiter = await start({
        ...SPENDABLE,
        maxKeys,
        tracker: 'ip',
        trustProxy: 'loopback',
        maxConnectionsPerIp: 5,
      });
      for (let i = 0; i < 3 * maxKeys; i++) {
        const client = await connect({ 'X-Forwarded-For': address(i) });
        expect(await exchange(client, ['ping'])).toEqual(['pong']);
      }
      // Documented since (README, Bounds): leases are never dropped, so the store holds more.
      expect(limiter.stats().storeKeys).toBeGreaterThan(maxKeys);
      expect(limiter.stats().evictions).toBe(0);
      for (const i of [0, 3 * maxKeys - 1]) {
        const [open] = await limiter
          .connectionStatus(address(i))
          .then((all) => all.filter((s) => s.tier === 'concurrency'));
        expect(open).toMatchObject({ limit: 5, remaining: 4 });
      }
    }, 120_000);

    it('live state dropped to stay within maxKeys (limits starting over) is logged once, naming the variable (it was only in stats().evictions)', async () => {
      // The README's Redis store warns at start-up that an evicting Redis lets "an evicted key's
      // limit silently start over" (server-checks.ts); the memory store does exactly that from
      // the first eviction of live state, and says nothing: no metric (README "Metrics" has
      // none for keys or evictions), no `warn` line (README "Events and logs"), no event. An
      // operator learns that maxKeys is too small only by polling stats().
      const lines: string[] = [];
      for (const level of ['log', 'warn', 'error'] as const) {
        spies.push(
          jest.spyOn(Logger.prototype, level).mockImplementation(function (this: Logger, text: unknown) {
            if ((this as unknown as { context?: string }).context === 'WsRateLimit') lines.push(String(text));
          }),
        );
      }
      const registry = new Registry();
      const maxKeys = 20;
      const limiter = await start({
        ...SPENDABLE,
        maxKeys,
        tracker: 'ip',
        trustProxy: 'loopback',
        metrics: true,
        metricsRegistry: registry,
      });
      await flood(4 * maxKeys, (i) => ({ 'X-Forwarded-For': address(i) }));
      expect(limiter.stats().evictions).toBeGreaterThanOrEqual(2 * maxKeys);
      const metrics = (await registry.getMetricsAsJSON()).map((metric) => metric.name);
      const reported = {
        metric: metrics.filter((name) => /evict|store_keys|keys_held/i.test(name)),
        log: lines.filter((text) => /evict|maxKeys|MAX_KEYS/i.test(text)),
      };
      expect(reported.metric.length + reported.log.length).toBeGreaterThan(0);
      expect(lines.filter((text) => text.includes('WS_RATE_LIMIT_MAX_KEYS=20 (option maxKeys)'))).toHaveLength(1);
    }, 120_000);
  });

  describe('the other memory stores', () => {
    const startWithRedisDown = async (maxKeys: number) => {
      redis = await startRedis();
      const limiter = await start({
        ...SPENDABLE,
        maxKeys,
        tracker: 'ip',
        trustProxy: 'loopback',
        store: 'redis',
        redis: { url: redis.url, commandTimeoutMs: 200 },
        failMode: 'open',
      });
      // One connection through Redis, then Redis goes away.
      const first = await connect({ 'X-Forwarded-For': '7.7.7.7' });
      expect(await exchange(first, ['ping'])).toEqual(['pong']);
      await first.close();
      redis.kill('SIGKILL');
      return limiter;
    };
    /** The fail-open fallback (lib/services/shared-store.ts), created at the first failed call. */
    const fallbackOf = (limiter: WsRateLimitService): MemoryRateLimitStore | undefined =>
      (limiter as unknown as { limiter: { shared: { fallback?: MemoryRateLimitStore } } }).limiter.shared.fallback;

    it('the fail-open fallback (Redis down) is bounded by the same maxKeys and evicts the same way', async () => {
      const maxKeys = 20;
      const limiter = await startWithRedisDown(maxKeys);
      await flood(4 * maxKeys, (i) => ({ 'X-Forwarded-For': address(i) }), { message: true });
      const fallback = fallbackOf(limiter);
      expect(fallback).toBeInstanceOf(MemoryRateLimitStore);
      expect(fallback!.size).toBeLessThanOrEqual(maxKeys);
      expect(fallback!.evictions).toBeGreaterThan(0);
    }, 120_000);

    it('while the fail-open fallback decides, stats() reports its keys and evictions (it reported neither)', async () => {
      // README: stats() gives "open connections and keys held, for health checks"; with the Redis
      // store it gives connections and localKeys only (ws-rate-limit.service.ts stats(): storeKeys
      // and evictions only when the configured store is a MemoryRateLimitStore). During an outage
      // the fallback is the store deciding every shared tier, bounded by maxKeys and evicting
      // live state; nothing reports it.
      const maxKeys = 20;
      const limiter = await startWithRedisDown(maxKeys);
      await flood(4 * maxKeys, (i) => ({ 'X-Forwarded-For': address(i) }), { message: true });
      expect(fallbackOf(limiter)!.evictions).toBeGreaterThan(0);
      const stats = limiter.stats() as Record<string, unknown>;
      expect(Object.keys(stats).filter((key) => /evict|storeKeys|fallback/i.test(key))).not.toEqual([]);
      expect(stats.fallbackKeys).toBeLessThanOrEqual(maxKeys);
      expect(stats.fallbackEvictions).toBe(fallbackOf(limiter)!.evictions);
    }, 120_000);

    it('the per-connection store is outside maxKeys: bounded by the open connections and their handlers, and freed at close', async () => {
      // With the default tracker every message tier is keyed by its connection and kept in
      // MessageLimiter.local, a MemoryRateLimitStore of maxKeys Number.MAX_SAFE_INTEGER: maxKeys
      // bounds only the connection-rate buckets there. Per connection: the global bucket and one
      // bucket per type used (handlers, and at most 1,024 types named from code), gone at close.
      const maxKeys = 10;
      const limiter = await start({ ...SPENDABLE, maxKeys });
      const open: TestClient[] = [];
      for (let i = 0; i < 3 * maxKeys; i++) {
        const client = await connect();
        expect(await exchange(client, ['ping', 'report'])).toEqual(['pong', 'reported']);
        open.push(client);
      }
      const stats = limiter.stats();
      // Global, t:ping, t:report and the expensive window, per connection: none of them evicted.
      expect(stats.localKeys).toBe(4 * 3 * maxKeys);
      expect(stats.storeKeys).toBeLessThanOrEqual(maxKeys);
      expect(stats.evictions).toBe(0);
      // Every connection's states still decide: none was dropped to stay within a bound.
      for (const client of open) expect(await exchange(client, ['report'])).toEqual(['rate_limit']);
      await Promise.all(open.map((client) => client.close()));
      await waitUntil(() => limiter.stats().connections === 0);
      expect(limiter.stats().localKeys).toBe(0);
    }, 120_000);
  });
});
