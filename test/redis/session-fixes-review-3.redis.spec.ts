/**
 * 15 cases; 7 failed on 01e9c2d, all fixed: the block cache holds a refusal until the call's
 * send + retryAfter at the latest but tells retryAfter counted from the reply's arrival
 * (lib/storage/redis/block-cache.ts); a peek answered by the fallback while the store is down
 * counts as a store error (lib/services/shared-store.ts); the Redis store lists every block
 * Redis holds, ended or not, and its blocks script cleans up by Redis's clock
 * (lib/storage/redis/redis-store.ts, scripts.ts); an ended block is kept as ended while the
 * store lists it, so a backward wall-clock step does not take it up again
 * (lib/services/blocks.ts). Case 1 was rewritten after the fix: a poll made once the cache
 * let go (before the retryAfter it told ran out) may be refused by Redis, which decided late;
 * the retry at the end told is admitted, and no answer tells a later end.
 *
 * Review 3 of today's Redis-side fixes and their neighbours, looking for what they broke or
 * left open.
 *
 * Reviewed (read-only): `git show 17c4cc5` (lib/storage/redis/block-cache.ts, `decision` and
 * `consume` in lib/storage/redis/redis-store.ts: a refusal is cached from the time its call
 * was sent), `git show bfddb7d` (lib/services/shared-store.ts: in fail mode `open` a `peek`
 * the fallback answered because the store's peek failed counts in
 * `ws_rate_limit_store_errors_total`), and the lib/services/blocks.ts part of `git show
 * 01e9c2d` (operator blocks enforced on the monotonic clock), with their neighbours:
 * lib/services/operator-blocks.ts (the 1 s sync), `listBlocks`/`setBlock` of the Redis store
 * and BLOCKS_LUA (lib/storage/redis/scripts.ts), the reservation book's refusals, README
 * ("Block cache", `retryAfter`, "When Redis is slow or down", the metrics table, "Blocking
 * from code"), shared/RELIABILITY.md C-29.
 *
 * How: a real redis-server per describe (test/support/redis-server.ts; SIGSTOP to make Redis
 * busy or frozen, SIGKILL for down), stores on real ioredis clients (test/redis/helpers.ts),
 * and real NestJS apps on 127.0.0.1 with real `ws` clients; two app instances share one
 * Redis for the blocks. Wall-clock steps with jest.spyOn(Date, 'now') (the monotonic clock
 * does not move). No mocks of Redis or of the library.
 *
 * Cases:
 *  Block cache (store level)
 *   1. (it was: BUG) (token bucket, sliding log): Redis busy 500 ms (SIGSTOP) before it decides a
 *      refusal: the cache counts the refusal's retryAfter down from the send, so its answers
 *      understate the wait by the time the call waited in Redis; a retry at the cached
 *      retryAfter is refused by Redis, whose retryAfter is then larger than the cached one.
 *   2. Cost 1: a flood while a refusal is cached costs 0 Redis commands; the cache stops
 *      answering by send + retryAfter; the next decision is Redis's and admits.
 *   3. Table (token bucket cost 3 in a two-tier plan, sliding log cost 2, sliding counter,
 *      `reservations: true`, `clock: 'app'` with a custom `now`): cached answers only refuse,
 *      never after the send of the Redis call they came from plus its retryAfter, their
 *      retryAfter never grows, Redis is asked again by then and eventually admits.
 *  Block cache (app)
 *   4. (it was: BUG): the same as 1 in `rate_limit` frames: a client that waits the cached frame's
 *      retryAfter is refused again (a second violation), with a larger retryAfter.
 *  Fail mode open, peek (app on the Redis store)
 *   5. Redis frozen (SIGSTOP) for one call at a time, Redis answering in between: status(),
 *      peek() and connectionStatus() are each answered by the fallback's figures, count 1 in
 *      ws_rate_limit_store_errors_total, and are no outage (no store event, outages 0,
 *      fallback gauge 0). (Peeks failing in 3 turns in a row do open the breaker, which
 *      README calls an outage like any call's misses: not a bug, not asserted.)
 *   6. (it was: BUG): Redis killed (the breaker opens: an outage): status(), peek() and
 *      connectionStatus() are answered by the fallback but none counts in
 *      ws_rate_limit_store_errors_total (README: "a `peek` the fallback answered in fail
 *      mode `open` too"), while a consume() from code in the same outage counts.
 *  Operator blocks, two app instances on one Redis
 *   7. A block set on A is enforced at B's handshake within about a second; a re-block with
 *      a shorter duration replaces the old on both (and ends on time on both); listBlocks
 *      agrees on both; unblock propagates.
 *   8. (it was: BUG): the wall clock steps forward an hour after both learned a 10 min block: the 1 s
 *      sync (the Redis store's listBlocks filters by Date.now) lifts it on both.
 *   9. (it was: BUG): the wall clock steps back an hour after a 1.5 s block ended (a longer block
 *      keeps the Redis hash alive): the sync learns the ended block again, as a block of
 *      about an hour, on both instances.
 *  10. (it was: BUG) an instance whose wall clock is an hour ahead blocks someone else: BLOCKS_LUA
 *      drops every block ending within that hour from the shared hash (it uses the caller's
 *      clock), so the other instance lifts a 10 min block it enforced.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { Redis } from 'ioredis';
import { performance } from 'node:perf_hooks';
import { Registry } from 'prom-client';
import {
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import type {
  RateLimitDecision,
  RateLimitPlan,
  RateLimitRejected,
  TierSpec,
} from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import type { RedisRateLimitStore, RedisStoreOptions } from '../../lib/storage/redis/index.js';
import { startApp, type RunningApp } from '../support/app.js';
import { upgrade } from '../support/http.js';
import { metricSum } from '../support/metrics.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { TestClient, type Frame } from '../support/ws-client.js';
import { adminClient, closeClient, openStore, ready, sleep, type OpenedStores } from './helpers.js';

function isPromise<T>(value: T | Promise<T>): value is Promise<T> {
  return typeof (value as { then?: unknown })?.then === 'function';
}

async function waitUntil(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<number> {
  const began = performance.now();
  while (!(await check())) {
    if (performance.now() - began > timeoutMs) throw new Error(`${what}: not reached within ${timeoutMs} ms`);
    await sleep(10);
  }
  return performance.now() - began;
}

/** Script calls the server ran since the last CONFIG RESETSTAT (EVAL, EVALSHA, FCALL). */
async function scriptCalls(admin: Redis): Promise<number> {
  const info = await admin.info('commandstats');
  let calls = 0;
  for (const match of info.matchAll(/^cmdstat_(?:eval|evalsha|eval_ro|evalsha_ro|fcall):calls=(\d+)/gm)) {
    calls += Number(match[1]);
  }
  return calls;
}

// --- Block cache, store level --------------------------------------------------------------

describe('block cache: a refusal cached from its send (17c4cc5), store level on a real Redis', () => {
  let server: RedisServer;
  let admin: Redis;
  const opened: OpenedStores = { clients: [], stores: [] };
  let prefixes = 0;

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    await ready(admin);
  }, 60_000);
  afterEach(async () => {
    server.resume();
    for (const store of opened.stores.splice(0)) await store.close().catch(() => undefined);
    for (const client of opened.clients.splice(0)) await closeClient(client);
  });
  afterAll(async () => {
    if (admin !== undefined) await closeClient(admin);
    await server?.stop();
  });

  const open = (options: Omit<RedisStoreOptions, 'client' | 'keyPrefix'> = {}) =>
    openStore(server.port, opened, { keyPrefix: `r3-${++prefixes}:`, ...options });
  const planOf = (store: RedisRateLimitStore, tracker: string, specs: readonly TierSpec[]): RateLimitPlan => ({
    tracker,
    tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
  });

  it.each([
    ['token bucket (1, refilling 0.4/s)', tokenBucketSpec('global', 'g', 1, 0.4)],
    ['sliding log (1 per 2.5 s)', windowSpec('expensive', 'x', 'sliding-log', 1, 2500)],
  ] as const)(
    "%s: a refusal Redis decided 500 ms after the send (Redis busy) is counted down from the send: a retry after the cached retryAfter must be admitted and Redis's next retryAfter must not exceed the cached one (it was: BUG)",
    async (_label, spec) => {
      const store = await open({ commandTimeoutMs: 3000 });
      expect((await store.consume(planOf(store, 'warm', [spec]))).allowed).toBe(true);
      const plan = planOf(store, 'ip:busy', [spec]);
      expect((await store.consume(plan)).allowed).toBe(true);
      // Redis busy (a slow command of another client, a fork, a swap-in): the call waits in
      // its socket; Redis decides when it runs again.
      server.pause();
      let refusal: RateLimitRejected;
      try {
        const pending = store.consume(plan);
        await sleep(500);
        server.resume();
        refusal = (await pending) as RateLimitRejected;
      } finally {
        server.resume();
      }
      expect(refusal.allowed).toBe(false);
      // Read at once: its wait is far from over, so the cache keeps it.
      const cachedAt = performance.now();
      const cached = store.consume(plan);
      expect(isPromise(cached)).toBe(false);
      const fromCache = cached as RateLimitRejected;
      expect(fromCache.allowed).toBe(false);
      // Polled 10 ms apart until the cached retryAfter runs out: the cache's answers, then,
      // once it lets go (at send + retryAfter at the latest), Redis's own, which may still
      // refuse (Redis decided late: it was busy); retryAfter never grows (C-29). The retry a
      // client makes when the first cached retryAfter runs out is admitted. README
      // `retryAfter`: "sending it again after that long succeeds if nothing else was sent".
      let grew = false;
      let retry: RateLimitDecision | undefined;
      const due = cachedAt + fromCache.retryAfter;
      while (performance.now() < due) {
        await sleep(Math.min(10, Math.max(1, due - performance.now())));
        if (performance.now() >= due) break;
        const answer = await store.consume(plan);
        if (answer.allowed) {
          // Admitted before the end told: the wait was shorter than said, never longer.
          retry = answer;
          break;
        }
        // The end it tells is no later than the one the cache told first (a few ms of slack
        // for rounding and the poll's own time).
        grew ||= performance.now() + answer.retryAfter > due + 15;
      }
      while (retry === undefined && performance.now() < due) await sleep(Math.max(1, due - performance.now()));
      retry ??= await store.consume(plan);
      console.log(
        `busy Redis: first retryAfter ${refusal.retryAfter}, cached ${fromCache.retryAfter}, ` +
          `then at its end: ${retry.allowed ? 'admitted' : `refused, retryAfter ${retry.retryAfter}`}`,
      );
      expect({ admitted: retry.allowed, grew }).toEqual({ admitted: true, grew: false });
    },
    30_000,
  );

  it('cost 1: a flood while a refusal is cached costs 0 Redis commands; the cache stops answering by send + retryAfter; the decision then is Redis’s and admits', async () => {
    const store = await open();
    const plan = planOf(store, 'ip:flood', [tokenBucketSpec('global', 'g', 2, 2.5)]);
    expect((await store.consume(planOf(store, 'warm', [tokenBucketSpec('global', 'g', 2, 2.5)]))).allowed).toBe(true);
    for (let i = 0; i < 2; i++) expect((await store.consume(plan)).allowed).toBe(true);
    const sentAt = performance.now();
    const first = (await store.consume(plan)) as RateLimitRejected;
    expect(first.allowed).toBe(false);
    expect(first.retryAfter).toBeGreaterThan(200);
    await admin.config('RESETSTAT');
    const before = await scriptCalls(admin);
    let last = first.retryAfter;
    let cachedAnswers = 0;
    for (let i = 0; i < 500; i++) {
      const answer = store.consume(plan);
      if (isPromise(answer)) break;
      expect(answer.allowed).toBe(false);
      expect((answer as RateLimitRejected).retryAfter).toBeLessThanOrEqual(last);
      last = (answer as RateLimitRejected).retryAfter;
      cachedAnswers++;
    }
    // Synchronous answers all: Redis heard nothing of them.
    expect(cachedAnswers).toBe(500);
    expect((await scriptCalls(admin)) - before).toBe(0);
    // Past the send plus Redis's wait, the cache has let go: the decision is Redis's.
    await sleep(Math.max(0, sentAt + first.retryAfter + 5 - performance.now()));
    const after = store.consume(plan);
    expect(isPromise(after)).toBe(true);
    expect((await after).allowed).toBe(true);
    expect((await scriptCalls(admin)) - before).toBe(1);
  });

  type Clock = () => number;
  const cases: ReadonlyArray<
    readonly [string, readonly TierSpec[], Omit<RedisStoreOptions, 'client' | 'keyPrefix'>, Clock | undefined]
  > = [
    [
      'token bucket of cost 3 beside a larger global bucket (two tiers)',
      [tokenBucketSpec('global', 'g', 100, 100), tokenBucketSpec('type', 't', 6, 2, 3)],
      {},
      undefined,
    ],
    ['sliding log, cost 2 (4 per 1.2 s)', [windowSpec('expensive', 'x', 'sliding-log', 4, 1200, 2)], {}, undefined],
    ['sliding counter (3 per 1 s)', [windowSpec('expensive', 'x', 'sliding-counter', 3, 1000)], {}, undefined],
    [
      'token bucket with reservations: true (3, refilling 2.5/s)',
      [tokenBucketSpec('global', 'g', 3, 2.5)],
      { reservations: true },
      undefined,
    ],
    [
      "clock 'app' with a custom now (an hour ahead), token bucket of cost 2",
      [tokenBucketSpec('global', 'g', 4, 2.5, 2)],
      { clock: 'app', now: () => performance.timeOrigin + performance.now() + 3_600_000 },
      () => performance.timeOrigin + performance.now() + 3_600_000,
    ],
  ];

  it.each(cases)(
    '%s: cached answers only refuse, never past the send of their Redis call plus its retryAfter, retryAfter never grows, and Redis decides (and admits) after',
    async (_label, specs, options, customClock) => {
      const store = await open(options);
      const clock = customClock ?? (() => performance.now());
      expect((await store.consume(planOf(store, 'warm', specs))).allowed).toBe(true);
      const plan = planOf(store, 'ip:table', specs);
      // Spend until Redis refuses.
      let refusals = 0;
      for (let i = 0; i < 50 && refusals === 0; i++) {
        if (!(await store.consume(plan)).allowed) refusals++;
      }
      expect(refusals).toBe(1);
      const problems: string[] = [];
      let redisCalls = 0;
      let cachedAnswers = 0;
      let lastRetryAfter = Infinity;
      // The latest answer from Redis: when its call was sent, and its wait.
      let latest: { sentAt: number; retryAfter: number } | undefined;
      let admitted = false;
      const began = performance.now();
      while (!admitted && performance.now() - began < 8000) {
        const at = clock();
        const answer = store.consume(plan);
        if (isPromise(answer)) {
          const decision = await answer;
          redisCalls++;
          if (decision.allowed) {
            admitted = true;
            break;
          }
          latest = { sentAt: at, retryAfter: decision.retryAfter };
          lastRetryAfter = decision.retryAfter;
        } else {
          cachedAnswers++;
          if (answer.allowed) problems.push('the cache admitted');
          else {
            if (latest !== undefined && at >= latest.sentAt + latest.retryAfter) {
              problems.push(`cached ${(at - latest.sentAt - latest.retryAfter).toFixed(1)} ms past Redis's wait`);
            }
            if (answer.retryAfter > lastRetryAfter + 1) {
              problems.push(`retryAfter grew ${lastRetryAfter} -> ${answer.retryAfter}`);
            }
            lastRetryAfter = answer.retryAfter;
          }
        }
        await sleep(3);
      }
      console.log(`${_label}: ${cachedAnswers} cached answers, ${redisCalls} Redis calls until admitted`);
      expect(problems).toEqual([]);
      expect(admitted).toBe(true);
      expect(cachedAnswers).toBeGreaterThan(5);
    },
    30_000,
  );
});

// --- Gateway used by the app cases ---------------------------------------------------------

@WebSocketGateway()
@WsRateLimit()
class ReviewGateway {
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'chat', data };
  }
}

interface App {
  running: RunningApp;
  limiter: WsRateLimitService;
  registry: Registry;
  events: RateLimitEvent[];
}

async function startReviewApp(url: string, options: WsRateLimitModuleOptions = {}, into: App[]): Promise<App> {
  const registry = new Registry();
  const { redis, ...rest } = options;
  const running = await startApp(
    {
      imports: [
        WsRateLimitModule.forRoot({
          useEnv: false,
          store: 'redis',
          redis: { url, ...(redis ?? {}) },
          connection: { capacity: 1000, refillRate: 1000 },
          global: { capacity: 1000, refillRate: 1000 },
          violations: { max: 1000, windowMs: 60_000 },
          metricsRegistry: registry,
          ...rest,
        }),
      ],
      providers: [ReviewGateway],
    },
    (app) => new WsRateLimitAdapter(app),
  );
  const limiter = running.app.get(WsRateLimitService);
  const events: RateLimitEvent[] = [];
  const subscription = limiter.events$.subscribe((event) => {
    if (event.kind === 'store') events.push(event);
  });
  const app: App = {
    running,
    limiter,
    registry,
    events,
  };
  const close = running.close;
  running.close = async () => {
    subscription.unsubscribe();
    await close();
  };
  into.push(app);
  return app;
}

const rateLimitFrames = (client: TestClient): Frame[] => client.events('rate_limit');

// --- Block cache through an app ------------------------------------------------------------

describe('block cache through a gateway (rate_limit frames)', () => {
  let redis: RedisServer;
  const apps: App[] = [];
  const clients: TestClient[] = [];

  beforeAll(async () => {
    redis = await startRedis();
  }, 60_000);
  afterEach(async () => {
    redis.resume();
    for (const client of clients.splice(0)) await client.close();
    for (const app of apps.splice(0)) await app.running.close().catch(() => undefined);
    await redis.command('FLUSHALL').catch(() => undefined);
  });
  afterAll(async () => {
    await redis?.stop();
  });

  it("Redis busy 500 ms while it decides a refusal: a client that waits the cached frame's retryAfter must be admitted (it is refused again, with a larger retryAfter, and counted a violation) (it was: BUG)", async () => {
    const app = await startReviewApp(
      redis.url,
      { tracker: 'ip', redis: { commandTimeoutMs: 3000 }, types: { chat: { capacity: 1, refillRate: 0.4 } } },
      apps,
    );
    const client = await TestClient.connect(app.running.url);
    clients.push(client);
    client.send('chat', 'm1');
    await client.waitFor((frame) => frame.event === 'chat' && frame.data === 'm1');
    redis.pause();
    try {
      client.send('chat', 'm2');
      await sleep(500);
    } finally {
      redis.resume();
    }
    const [first] = await client.waitFor((frame) => frame.event === 'rate_limit');
    expect(first!.data.code).toBe('TYPE_LIMIT');
    // The next one is answered from the block cache.
    client.send('chat', 'm3');
    await client.waitFor((frame) => frame.event === 'rate_limit', 2);
    const toldAt = performance.now();
    const cached = rateLimitFrames(client)[1]!;
    await sleep(cached.data.retryAfter + 30 - (performance.now() - toldAt));
    client.send('chat', 'm4');
    await client.waitFor(
      (frame) =>
        (frame.event === 'chat' && frame.data === 'm4') ||
        (frame.event === 'rate_limit' && frame !== first && frame !== cached),
    );
    const third = rateLimitFrames(client)[2];
    console.log(
      `frames: first retryAfter ${first!.data.retryAfter}, cached ${cached.data.retryAfter}, ` +
        `after waiting it: ${third === undefined ? 'admitted' : `refused, retryAfter ${third.data.retryAfter}, warningCount ${third.data.warningCount}`}`,
    );
    // README: "sending it again after that long succeeds if nothing else was sent".
    expect(third === undefined ? 'admitted' : `refused (retryAfter ${third.data.retryAfter})`).toBe('admitted');
  }, 30_000);
});

// --- Fail mode open: peek -------------------------------------------------------------------

describe("fail mode 'open': a peek the fallback answered (bfddb7d), app on the Redis store", () => {
  let redis: RedisServer | undefined;
  const apps: App[] = [];

  afterEach(async () => {
    redis?.resume();
    for (const app of apps.splice(0)) await app.running.close().catch(() => undefined);
    await redis?.stop();
    redis = undefined;
  });

  const metric = (app: App, name: string) => metricSum(app.registry, name);

  it('Redis frozen: status(), peek() and connectionStatus() (each alone, Redis answering in between) are answered by the fallback, count 1 store error each, and none is an outage', async () => {
    const server = (redis = await startRedis());
    const app = await startReviewApp(server.url, { types: { chat: { capacity: 7, refillRate: 1 } } }, apps);
    // Spent on Redis: the fallback (which starts full) is told apart by its figures.
    await app.limiter.consume('u1', { type: 'chat', cost: 3 });
    const fromRedis = async () => (await app.limiter.status('u1', ['chat'])).types['chat']!.remaining === 4;
    expect(await fromRedis()).toBe(true);
    const frozen = async <T>(call: () => Promise<T>): Promise<T> => {
      server.pause();
      try {
        return await call();
      } finally {
        server.resume();
      }
    };
    const calls: Array<[string, () => Promise<unknown>]> = [
      ['status', async () => expect((await app.limiter.status('u1', ['chat'])).types['chat']!.remaining).toBe(7)],
      ['peek', async () => expect((await app.limiter.peek('u1', { type: 'chat' })).length).toBeGreaterThan(0)],
      ['connectionStatus', async () => expect((await app.limiter.connectionStatus('127.0.0.1')).length).toBe(1)],
    ];
    for (const [name, call] of calls) {
      const before = await metric(app, 'ws_rate_limit_store_errors_total');
      // The fallback's figures (the ones deciding meanwhile): full.
      await frozen(call);
      const counted = (await metric(app, 'ws_rate_limit_store_errors_total')) - before;
      const outage = {
        outages: await metric(app, 'ws_rate_limit_store_outages_total'),
        fallback: await metric(app, 'ws_rate_limit_store_fallback'),
        events: app.events.length,
      };
      expect({ name, counted, ...outage }).toEqual({ name, counted: 1, outages: 0, fallback: 0, events: 0 });
      // Redis answers again (its figures), which also resets the breaker's count of misses.
      await waitUntil(fromRedis, 'status() answered by Redis again');
    }
  }, 30_000);

  it('Redis killed (breaker open, an outage): status(), peek() and connectionStatus() answered by the fallback must each count in ws_rate_limit_store_errors_total (README: "a `peek` the fallback answered in fail mode `open` too"), as a consume() in the same outage does (it was: BUG)', async () => {
    redis = await startRedis();
    const app = await startReviewApp(redis.url, { types: { chat: { capacity: 7, refillRate: 1 } } }, apps);
    await app.limiter.consume('u1', { type: 'chat', cost: 3 });
    redis.kill('SIGKILL');
    await waitUntil(() => app.events.some((event) => event.kind === 'store'), 'the outage reported');
    expect(await metric(app, 'ws_rate_limit_store_fallback')).toBe(1);
    const before = await metric(app, 'ws_rate_limit_store_errors_total');
    // A decision from code in the outage: refused at once by the store, decided by the fallback, counted.
    await app.limiter.consume('u1', { type: 'chat' });
    const afterConsume = await metric(app, 'ws_rate_limit_store_errors_total');
    expect(afterConsume).toBe(before + 1);
    // Three peeks, each answered by the fallback.
    const status = await app.limiter.status('u1', ['chat']);
    expect(status.types['chat']!.remaining).toBe(6);
    await app.limiter.peek('u1', { type: 'chat' });
    await app.limiter.connectionStatus('127.0.0.1');
    const afterPeeks = await metric(app, 'ws_rate_limit_store_errors_total');
    console.log(`store errors: +${afterConsume - before} for a consume, +${afterPeeks - afterConsume} for 3 peeks`);
    expect(afterPeeks - afterConsume).toBe(3);
  }, 30_000);
});

// --- Operator blocks across two instances ---------------------------------------------------

describe('operator blocks on the monotonic clock (01e9c2d), two app instances sharing one Redis', () => {
  let redis: RedisServer;
  const apps: App[] = [];

  beforeAll(async () => {
    redis = await startRedis();
  }, 60_000);
  afterEach(async () => {
    jest.restoreAllMocks();
    for (const app of apps.splice(0)) await app.running.close().catch(() => undefined);
    await redis.command('FLUSHALL').catch(() => undefined);
  });
  afterAll(async () => {
    await redis?.stop();
  });

  const two = async () =>
    [await startReviewApp(redis.url, {}, apps), await startReviewApp(redis.url, {}, apps)] as const;
  /** The handshake answer of `address` at `app`: 403 while blocked, 101 when not. */
  const handshake = async (app: App, address: string) => (await upgrade(app.running.port, {}, address)).status;
  /** Waits out at least two block syncs (every second) of every instance. */
  const twoSyncs = () => sleep(2600);

  it('a block set on A is enforced at B within about a second; a re-block with a shorter duration replaces the old on both and ends on time there; listBlocks agree; unblock propagates', async () => {
    const [a, b] = await two();
    await a.limiter.block('127.0.0.31', 600_000);
    const reached = await waitUntil(() => 'ip:127.0.0.31' in b.limiter.listBlocks(), 'B learns the block', 5000);
    console.log(`block reached B after ${Math.round(reached)} ms`);
    expect(await handshake(b, '127.0.0.31')).toBe(403);
    expect(b.limiter.listBlocks()).toEqual(a.limiter.listBlocks());
    // Re-blocked for 4 s: the 10 min end is replaced on both. (4 s, not less: B's sync, once
    // a second, may come a second or more late on a loaded machine, and must find it in force.)
    const reblockedAt = performance.now();
    await a.limiter.block('127.0.0.31', 4000);
    const newUntil = a.limiter.listBlocks()['ip:127.0.0.31']!;
    await waitUntil(() => b.limiter.listBlocks()['ip:127.0.0.31'] === newUntil, 'B learns the new end', 5000);
    expect(b.limiter.listBlocks()).toEqual(a.limiter.listBlocks());
    if (performance.now() - reblockedAt < 3500) expect(await handshake(b, '127.0.0.31')).toBe(403);
    await sleep(Math.max(0, reblockedAt + 4000 + 100 - performance.now()));
    expect(a.limiter.listBlocks()).toEqual({});
    expect(b.limiter.listBlocks()).toEqual({});
    expect(await handshake(a, '127.0.0.31')).toBe(101);
    expect(await handshake(b, '127.0.0.31')).toBe(101);
    // Unblock propagates.
    await b.limiter.block('127.0.0.32', 600_000);
    await waitUntil(() => 'ip:127.0.0.32' in a.limiter.listBlocks(), 'A learns the block', 5000);
    expect(await handshake(a, '127.0.0.32')).toBe(403);
    await b.limiter.unblock('127.0.0.32');
    await waitUntil(() => !('ip:127.0.0.32' in a.limiter.listBlocks()), 'A learns the unblock', 5000);
    expect(await handshake(a, '127.0.0.32')).toBe(101);
  }, 30_000);

  it('the wall clock steps forward an hour after both instances learned a 10 min block: it must stay in force on both (the 1 s sync lifts it) (it was: BUG)', async () => {
    const [a, b] = await two();
    await a.limiter.block('127.0.0.41', 600_000);
    await waitUntil(() => 'ip:127.0.0.41' in b.limiter.listBlocks(), 'B learns the block', 5000);
    expect(await handshake(b, '127.0.0.41')).toBe(403);
    const real = Date.now.bind(Date);
    jest.spyOn(Date, 'now').mockImplementation(() => real() + 3_600_000);
    await twoSyncs();
    const seen = {
      aList: 'ip:127.0.0.41' in a.limiter.listBlocks(),
      bList: 'ip:127.0.0.41' in b.limiter.listBlocks(),
      aHandshake: await handshake(a, '127.0.0.41'),
      bHandshake: await handshake(b, '127.0.0.41'),
    };
    jest.restoreAllMocks();
    // README: "a step of the wall clock afterwards (NTP, a resumed VM) neither stretches a block nor lifts it early".
    expect(seen).toEqual({ aList: true, bList: true, aHandshake: 403, bHandshake: 403 });
  }, 30_000);

  it('the wall clock steps back an hour after a 1.5 s block ended (a 60 s block keeps the Redis hash): the ended block must stay ended on both (the sync learns it again, for about an hour) (it was: BUG)', async () => {
    const [a, b] = await two();
    await a.limiter.block('127.0.0.51', 1500);
    await a.limiter.block('127.0.0.52', 60_000);
    // B learns the long one (and the short one too, unless its sync came later than 1.5 s).
    await waitUntil(() => 'ip:127.0.0.52' in b.limiter.listBlocks(), 'B learns the 60 s block', 5000);
    // The short one ends, and a sync on each instance has seen it gone.
    await waitUntil(() => !('ip:127.0.0.51' in b.limiter.listBlocks()), 'the 1.5 s block ended', 5000);
    await twoSyncs();
    expect(await handshake(b, '127.0.0.51')).toBe(101);
    expect(await handshake(b, '127.0.0.52')).toBe(403);
    const real = Date.now.bind(Date);
    jest.spyOn(Date, 'now').mockImplementation(() => real() - 3_600_000);
    await twoSyncs();
    const seen = {
      aList: 'ip:127.0.0.51' in a.limiter.listBlocks(),
      bList: 'ip:127.0.0.51' in b.limiter.listBlocks(),
      aHandshake: await handshake(a, '127.0.0.51'),
      bHandshake: await handshake(b, '127.0.0.51'),
    };
    jest.restoreAllMocks();
    expect(seen).toEqual({ aList: false, bList: false, aHandshake: 101, bHandshake: 101 });
  }, 30_000);

  it("an instance whose wall clock runs an hour ahead blocks someone else: a 10 min block another instance enforced must stay in force there (BLOCKS_LUA drops it from the shared hash by the caller's clock) (it was: BUG)", async () => {
    const [a, b] = await two();
    await b.limiter.block('127.0.0.61', 600_000);
    await waitUntil(() => 'ip:127.0.0.61' in a.limiter.listBlocks(), 'A learns the block', 5000);
    const real = Date.now.bind(Date);
    // Only for A's call: the clock of one instance.
    const spy = jest.spyOn(Date, 'now').mockImplementation(() => real() + 3_600_000);
    try {
      await a.limiter.block('127.0.0.62', 60_000);
    } finally {
      spy.mockRestore();
    }
    await twoSyncs();
    const seen = {
      inRedis: (await redis.command('HEXISTS', 'wsrl:blocks', 'ip:127.0.0.61')) === 1,
      bList: 'ip:127.0.0.61' in b.limiter.listBlocks(),
      bHandshake: await handshake(b, '127.0.0.61'),
    };
    expect(seen).toEqual({ inRedis: true, bList: true, bHandshake: 403 });
  }, 30_000);
});
