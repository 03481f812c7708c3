/**
 * Review of the fixes committed on main since ee2752f, attacked adversarially:
 *
 * 1. The block cache's answers (lib/storage/redis/block-cache.ts): a refusal answered from
 *    the cache named, where a token bucket decided, `cost - left * rate` as what the bucket
 *    held then. Checked against `peek` (Redis's own answer) right after: cost 1, cost > 1,
 *    another plan spending the same bucket (a cheaper message type on the shared global
 *    bucket), and a second instance spending it.
 * 2. The cache is emptied when the breaker closes (redis-store.ts): a flood during an outage,
 *    a refusal still true after it, token reservations across it; nothing over-admitted.
 * 3. Unknown option fields and non-object options are refused (lib/config/option-fields.ts):
 *    every option of the README's table and the code-only ones accepted, options given as a
 *    class instance, `Object.create(null)`, with symbol keys, `trustProxy` as an array, and
 *    forRootAsync with useClass / useExisting.
 * 4. `WsRateLimitModule` imported bare runs as forRoot(): alone, in a feature module, beside
 *    forRoot / forRootAsync.
 * 5. A ws gateway on a port of its own without a path (its upgrades through a replaced
 *    `handleUpgrade`): connection caps, the gateway's own verifyClient, two gateways on one
 *    such port, the application's close.
 * 6. A custom message parser's throws: an error line once, then debug.
 *
 * Real parts only: real `ws` clients against listening NestJS apps on 127.0.0.1, and a real
 * `redis-server` started here.
 *
 * Four cases failed on the reviewed code (bdf0540), and are fixed: the cache's `cost - left *
 * rate` said more than the bucket held when another plan (a cheaper type on the shared
 * global bucket) or another instance spent the refill; an entry of a deciding token bucket
 * now lasts only until the bucket's next whole unit and the next message asks Redis. A
 * custom parser's throws wrote a debug line per frame (now at most one per 10 s, through
 * IntervalLog), and one that threw an object without a prototype crashed the process
 * (String(error) threw in the log line; lib/utils/error-text.ts never throws, and every log
 * of a value user code threw goes through it).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import {
  Inject,
  Injectable,
  Module,
  type INestApplication,
  type LoggerService,
  type ModuleMetadata,
} from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Test, type TestingModule } from '@nestjs/testing';
import { Redis } from 'ioredis';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';
import {
  MemoryRateLimitStore,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  tokenBucketSpec,
  type RateLimitDecision,
  type RateLimitPlan,
  type RateLimitRejected,
  type TierSpec,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { checkOptionFields } from '../../lib/config/option-fields.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { withEnv } from '../support/app.js';
import { buildChildApp, startChildApp } from '../support/child-app.js';
import { freePort, startRedis, type RedisServer } from '../support/redis-server.js';
import { TestClient, sleep } from '../support/ws-client.js';

/** A value after `ms`, with a timer that does not keep the process alive. */
const later = <T>(ms: number, value: T): Promise<T> =>
  new Promise((resolve) => setTimeout(() => resolve(value), ms).unref());
import { adminClient, closeClient, ready, storeClient } from './helpers.js';

// --- shared helpers ----------------------------------------------------------------------

async function waitUntil(check: () => boolean | Promise<boolean>, timeoutMs = 20_000, what = 'condition') {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function busyWait(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    // the event loop is held, as on a loaded instance
  }
}

/** A decision, or undefined where the store refused to decide (it throws at once while its breaker is open). */
async function tryConsume(store: RedisRateLimitStore, plan: RateLimitPlan): Promise<RateLimitDecision | undefined> {
  try {
    return await store.consume(plan);
  } catch {
    return undefined;
  }
}

/** Script calls the server has run so far (EVAL and EVALSHA). */
async function scriptCalls(admin: Redis): Promise<number> {
  const info = await admin.info('commandstats');
  let calls = 0;
  for (const match of info.matchAll(/^cmdstat_(?:eval|evalsha):calls=(\d+)/gm)) calls += Number(match[1]);
  return calls;
}

class Captured implements LoggerService {
  readonly lines: Array<{ level: string; text: string }> = [];
  private push(level: string, message: unknown) {
    this.lines.push({ level, text: message instanceof Error ? message.message : String(message) });
  }
  log(message: unknown) {
    this.push('log', message);
  }
  warn(message: unknown) {
    this.push('warn', message);
  }
  error(message: unknown) {
    this.push('error', message);
  }
  debug(message: unknown) {
    this.push('debug', message);
  }
  verbose(message: unknown) {
    this.push('verbose', message);
  }
}

@WebSocketGateway()
@WsRateLimit()
class EchoGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

const apps: INestApplication[] = [];
const modules: TestingModule[] = [];
const clients: TestClient[] = [];

async function startNest(
  metadata: ModuleMetadata,
  more: { logger?: LoggerService | false; parser?: (data: unknown) => unknown; listen?: boolean } = {},
): Promise<{ app: INestApplication; url: string; port: number }> {
  const moduleRef = await Test.createTestingModule(metadata).compile();
  const app = moduleRef.createNestApplication({ logger: more.logger ?? false });
  apps.push(app);
  const adapter = new WsRateLimitAdapter(app);
  if (more.parser) adapter.setMessageParser(more.parser as never);
  app.useWebSocketAdapter(adapter);
  await app.listen(0, '127.0.0.1');
  const port = (app.getHttpServer().address() as AddressInfo).port;
  return { app, port, url: `ws://127.0.0.1:${port}` };
}

async function compile(imports: ModuleMetadata['imports'], providers: ModuleMetadata['providers'] = []) {
  const ref = await Test.createTestingModule({ imports, providers }).compile();
  modules.push(ref);
  return ref;
}

async function connect(url: string, options: WebSocket.ClientOptions = {}): Promise<TestClient> {
  const client = await TestClient.connect(url, options);
  clients.push(client);
  return client;
}

/** An upgrade attempt: the HTTP status it was refused with, or 101. */
function upgradeStatus(url: string): Promise<number> {
  return new Promise((resolve) => {
    const socket = new WebSocket(url);
    socket.on('error', () => resolve(-1));
    socket.once('unexpected-response', (_request, response) => {
      resolve(response.statusCode ?? 0);
      response.resume();
      socket.terminate();
    });
    socket.once('open', () => {
      resolve(101);
      socket.terminate();
    });
  });
}

afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()));
  for (const app of apps.splice(0)) await app.close();
  for (const ref of modules.splice(0)) await ref.close();
});

// --- 1 and 2: the block cache against Redis's own answer -------------------------------

describe('the block cache: remaining from the cache, and its emptying at recovery (store on a real Redis)', () => {
  let server: RedisServer;
  let admin: Redis;
  const opened: Array<{ client: Redis; store: RedisRateLimitStore }> = [];

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    await ready(admin);
  }, 60_000);

  afterEach(async () => {
    for (const { client, store } of opened.splice(0)) {
      await store.close();
      await closeClient(client);
    }
  });

  afterAll(async () => {
    if (admin) await closeClient(admin);
    await server?.stop();
  });

  async function open(options: Partial<ConstructorParameters<typeof RedisRateLimitStore>[0]> = {}) {
    const client = storeClient(server.port);
    await ready(client);
    const store = new RedisRateLimitStore({ client, keyPrefix: 'review:', commandTimeoutMs: 5000, ...options });
    opened.push({ client, store });
    return store;
  }

  const planOf = (store: RedisRateLimitStore, tracker: string, specs: readonly TierSpec[]): RateLimitPlan => ({
    tracker,
    tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
  });

  /** What the bucket holds now, as Redis says (the first tier's remaining). */
  const held = async (store: RedisRateLimitStore, plan: RateLimitPlan) => (await store.peek(plan))[0]!.remaining;

  it('cost 1: every answer from the cache says remaining 0, never more than Redis says the bucket holds', async () => {
    const store = await open();
    // One token a second: the four decisions and the looks below fit in it on a loaded machine.
    const plan = planOf(store, 'ip:cost1', [tokenBucketSpec('global', 'g', 3, 1)]);
    for (let i = 0; i < 3; i++) expect((await store.consume(plan)).allowed).toBe(true);
    const first = (await store.consume(plan)) as RateLimitRejected;
    expect(first.allowed).toBe(false);
    const seen: Array<{ cached: number; redis: number }> = [];
    for (let i = 0; i < 6; i++) {
      await sleep(60);
      // From the cache (synchronously), or from Redis once the entry is over.
      const cached = (await store.consume(plan)) as RateLimitDecision;
      if (cached.allowed) break;
      seen.push({ cached: cached.remaining, redis: await held(store, plan) });
    }
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.every(({ cached, redis }) => cached === 0 && cached <= redis)).toBe(true);
  });

  it('cost 3 alone: remaining counts up as the bucket refills (the entry ends at each unit and Redis answers), never above Redis, never below its first answer', async () => {
    const store = await open();
    // One unit a second (a refusal waits about 3 s): room for several looks however slow.
    const plan = planOf(store, 'ip:cost3', [tokenBucketSpec('global', 'g', 6, 1, 3)]);
    expect((await store.consume(plan)).allowed).toBe(true);
    expect((await store.consume(plan)).allowed).toBe(true);
    const first = (await store.consume(plan)) as RateLimitRejected;
    expect(first).toMatchObject({ allowed: false, remaining: 0 });
    const seen: Array<{ cached: number; redis: number }> = [];
    const began = performance.now();
    while (performance.now() - began < first.retryAfter - 150) {
      // From the cache, or from Redis once the bucket has gained a unit since the entry.
      const cached = (await store.consume(plan)) as RateLimitRejected;
      if (cached.allowed) {
        // Only where a stall of this process let the decision run at the retry time.
        expect(performance.now() - began).toBeGreaterThanOrEqual(first.retryAfter - 50);
        break;
      }
      seen.push({ cached: cached.remaining, redis: await held(store, plan) });
      await sleep(120);
    }
    expect(seen.length).toBeGreaterThan(3);
    expect(seen.filter(({ cached, redis }) => cached > redis)).toEqual([]);
    expect(seen.every(({ cached }) => cached >= first.remaining)).toBe(true);
    expect(seen.every(({ cached }, i) => i === 0 || cached >= seen[i - 1]!.cached)).toBe(true);
    expect(Math.max(...seen.map(({ cached }) => cached))).toBeGreaterThanOrEqual(1);
  });

  it('a cost-5 refusal while a cost-1 type spends the same global bucket never says more than the bucket holds (the cache counted a refill another plan spent)', async () => {
    const store = await open();
    // One tracker's global bucket (10, 5/s) under two message types' plans: `upload` costs 5,
    // `chat` costs 1 (README: "cost is the tokens one message takes from the global and type
    // buckets"; both plans name the same key, their cache entries are apart).
    const upload = planOf(store, 'ip:shared', [tokenBucketSpec('global', 'g', 10, 5, 5)]);
    const chat = planOf(store, 'ip:shared', [tokenBucketSpec('global', 'g', 10, 5, 1)]);
    for (let i = 0; i < 10; i++) expect((await store.consume(chat)).allowed).toBe(true);
    const refused = (await store.consume(upload)) as RateLimitRejected;
    expect(refused).toMatchObject({ allowed: false, remaining: 0 });
    expect(refused.retryAfter).toBeGreaterThan(600);
    const seen: Array<{ cached: number; redis: number }> = [];
    const began = performance.now();
    while (performance.now() - began < refused.retryAfter - 150) {
      await sleep(100);
      // The chat keeps the bucket near empty: each token it gets back is spent.
      await store.consume(chat);
      const cached = (await store.consume(upload)) as RateLimitDecision;
      if (cached.allowed) break;
      seen.push({ cached: cached.remaining, redis: await held(store, chat) });
    }
    console.log(`cost-5 refusals from the cache vs the bucket: ${JSON.stringify(seen)}`);
    expect(seen.length).toBeGreaterThan(2);
    // README: "`remaining`: ... what it [the tier that decided] holds now".
    expect(seen.filter(({ cached, redis }) => cached > redis)).toEqual([]);
  }, 30_000);

  it('two instances, one plan of cost 3: after the other instance spends the refilled bucket, the refusal does not count that refill as held (the cache did)', async () => {
    const a = await open();
    const b = await open({ blockCache: false });
    const planA = planOf(a, 'ip:two', [tokenBucketSpec('global', 'g', 6, 5, 3)]);
    const planB = planOf(b, 'ip:two', [tokenBucketSpec('global', 'g', 6, 5, 3)]);
    expect((await b.consume(planB)).allowed).toBe(true);
    expect((await b.consume(planB)).allowed).toBe(true);
    // A is a loaded instance: its event loop is held for 400 ms while Redis answers it.
    const pending = a.consume(planA);
    busyWait(400);
    const refused = (await pending) as RateLimitRejected;
    expect(refused.allowed).toBe(false);
    // B gets the 3 tokens as soon as they are there.
    await waitUntil(async () => (await b.consume(planB)).allowed, 5000, 'B admitted');
    const cached = (await a.consume(planA)) as RateLimitDecision;
    const redis = await held(b, planB);
    console.log(`A's cached refusal after B spent: ${JSON.stringify(cached)}; Redis holds ${redis}`);
    expect(cached.allowed).toBe(false);
    expect((cached as RateLimitRejected).remaining).toBeLessThanOrEqual(redis);
  }, 30_000);

  it('a refusal cached before Redis froze still holds through a flood during the outage; at recovery the cache is emptied and Redis (which kept the state) refuses again: nothing admitted', async () => {
    const changes: boolean[] = [];
    const store = await open({
      commandTimeoutMs: 200,
      onAvailabilityChange: (available) => changes.push(available),
    });
    const plan = planOf(store, 'ip:frozen', [tokenBucketSpec('global', 'g', 5, 0.01)]);
    const other = planOf(store, 'ip:other', [tokenBucketSpec('global', 'g', 5, 0.01)]);
    for (let i = 0; i < 5; i++) expect((await store.consume(plan)).allowed).toBe(true);
    expect((await store.consume(plan)).allowed).toBe(false);
    expect(store.blockedPlans).toBe(1);
    server.pause();
    let admitted = 0;
    let answered = 0;
    try {
      // A flood: the cached tracker from the cache, another tracker against the frozen Redis.
      const began = performance.now();
      while (performance.now() - began < 1500) {
        for (let i = 0; i < 20; i++) {
          const decision = store.consume(plan) as RateLimitDecision;
          answered++;
          if (decision.allowed) admitted++;
        }
        await tryConsume(store, other);
        await sleep(10);
      }
      expect(store.available).toBe(false);
    } finally {
      server.resume();
    }
    await waitUntil(() => store.available, 20_000, 'recovery');
    expect(changes).toEqual([false, true]);
    expect(answered).toBeGreaterThan(100);
    expect(admitted).toBe(0);
    // Emptied at recovery: the next decision goes to Redis, which still refuses it.
    const calls = await scriptCalls(admin);
    const after = await store.consume(plan);
    expect(after.allowed).toBe(false);
    expect(await scriptCalls(admin)).toBe(calls + 1);
    expect(store.blockedPlans).toBe(1);
  }, 60_000);

  it('token reservations on two instances across a Redis freeze with a flood: admitted in all never exceeds the bucket (capacity + refill)', async () => {
    const reservations = { maxBatch: 16, ttlMs: 1000 };
    const a = await open({ commandTimeoutMs: 200, reservations });
    const b = await open({ commandTimeoutMs: 200, reservations });
    const spec = tokenBucketSpec('global', 'g', 20, 10);
    const plans = [planOf(a, 'ip:reserved', [spec]), planOf(b, 'ip:reserved', [spec])] as const;
    const stores = [a, b] as const;
    let admitted = 0;
    const began = performance.now();
    const flood = async (ms: number) => {
      const until = performance.now() + ms;
      while (performance.now() < until) {
        for (let i = 0; i < 2; i++) {
          for (let k = 0; k < 5; k++) {
            const decision = await tryConsume(stores[i]!, plans[i]!);
            if (decision?.allowed) admitted++;
          }
        }
        await sleep(5);
      }
    };
    await flood(800);
    server.pause();
    try {
      await flood(1200);
    } finally {
      server.resume();
    }
    await waitUntil(() => a.available && b.available, 20_000, 'recovery');
    await flood(800);
    const seconds = (performance.now() - began) / 1000;
    console.log(`reservations across a freeze: ${admitted} admitted in ${seconds.toFixed(2)} s`);
    expect(admitted).toBeLessThanOrEqual(20 + Math.ceil(10 * seconds) + 1);
    expect(admitted).toBeGreaterThan(20);
  }, 60_000);
});

// --- 3: option fields --------------------------------------------------------------------

describe('option fields: everything documented is accepted, the odd shapes behave', () => {
  /** Every option named in README's table, set to a value of its kind. */
  it("every option of README's options table and the code-only ones pass the field check", async () => {
    const { readFileSync } = await import('node:fs');
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const options: Record<string, Record<string, unknown>> = {};
    let count = 0;
    for (const [, option] of readme.matchAll(/^\| `WS_RATE_LIMIT_\w+`\s*\| `([\w.]+)`/gm)) {
      const [group, field] = option!.split('.') as [string, string | undefined];
      count++;
      if (field === undefined) (options as Record<string, unknown>)[group] ??= 'x';
      else (options[group] ??= {})[field] = 'x';
    }
    expect(count).toBeGreaterThan(45);
    const all = {
      ...options,
      tracker: () => 'x',
      skipIf: () => false,
      store: new MemoryRateLimitStore(),
      frameBuilder: () => ({}),
      planResolver: () => undefined,
      metricsRegistry: {},
      useEnv: false,
      redis: { ...options['redis'], client: {}, redisOptions: { tls: {} } },
    };
    expect(() => checkOptionFields(all)).not.toThrow();
  });

  it('a real app: redis.client (ioredis) with redis.redisOptions beside it, blockCache, reservations, trustProxy as an array, types and plans start', async () => {
    const server = await startRedis();
    const client = new Redis({ host: '127.0.0.1', port: server.port, lazyConnect: true });
    try {
      const ref = await compile([
        WsRateLimitModule.forRoot({
          useEnv: false,
          metrics: false,
          store: 'redis',
          redis: {
            client,
            redisOptions: { connectionName: 'review' },
            commandTimeoutMs: 500,
            blockCache: 100,
            reservationBatch: 8,
            reservationTtlMs: 500,
          },
          trustProxy: ['loopback', '10.0.0.0/8'],
          types: { chat: { capacity: 4, refillRate: 2 } },
          plans: { pro: { global: { capacity: 500, refillRate: 200 } } },
          planResolver: () => 'pro',
          tracker: 'ip',
        }),
      ]);
      const service = ref.get(WsRateLimitService);
      expect(service.options.global.capacity).toBe(100);
      expect(await service.consume('ip:review', { type: 'chat' })).toMatchObject({ allowed: true });
      await ref.close();
      modules.splice(modules.indexOf(ref), 1);
    } finally {
      client.disconnect();
      await server.stop();
    }
  }, 60_000);

  it('options given as a class instance, as Object.create(null), or with symbol keys are read like a plain object', async () => {
    class Options {
      useEnv = false;
      metrics = false;
      global = { capacity: 7, refillRate: 1 };
      /** A prototype method is no field. */
      describe() {
        return 'mine';
      }
    }
    const nullProto = Object.assign(Object.create(null) as Record<string, unknown>, {
      useEnv: false,
      metrics: false,
      global: Object.assign(Object.create(null) as Record<string, unknown>, { capacity: 8, refillRate: 1 }),
    });
    const withSymbol = { useEnv: false, metrics: false, global: { capacity: 9, refillRate: 1 }, [Symbol('tag')]: 1 };
    const capacities: number[] = [];
    for (const options of [new Options(), nullProto, withSymbol]) {
      const ref = await compile([WsRateLimitModule.forRoot(options as WsRateLimitModuleOptions)]);
      capacities.push(ref.get(WsRateLimitService).options.global.capacity);
      await ref.close();
      modules.splice(modules.indexOf(ref), 1);
    }
    expect(capacities).toEqual([7, 8, 9]);
  });

  it('forRootAsync with useClass and useExisting: the returned options apply; nothing returned, or a misspelled field, stops start-up naming it', async () => {
    @Injectable()
    class Good {
      createWsRateLimitOptions(): WsRateLimitModuleOptions {
        return { useEnv: false, metrics: false, global: { capacity: 11, refillRate: 1 } };
      }
    }
    @Injectable()
    class Empty {
      createWsRateLimitOptions(): WsRateLimitModuleOptions {
        return undefined as unknown as WsRateLimitModuleOptions;
      }
    }
    @Injectable()
    class Typo {
      createWsRateLimitOptions(): WsRateLimitModuleOptions {
        return { useEnv: false, metrics: false, global: { capactiy: 3 } } as unknown as WsRateLimitModuleOptions;
      }
    }
    @Module({ providers: [Good], exports: [Good] })
    class GoodModule {}

    const viaClass = await compile([WsRateLimitModule.forRootAsync({ useClass: Good })]);
    expect(viaClass.get(WsRateLimitService).options.global.capacity).toBe(11);
    await viaClass.close();
    modules.splice(modules.indexOf(viaClass), 1);

    const viaExisting = await compile([WsRateLimitModule.forRootAsync({ imports: [GoodModule], useExisting: Good })]);
    expect(viaExisting.get(WsRateLimitService).options.global.capacity).toBe(11);
    await viaExisting.close();
    modules.splice(modules.indexOf(viaExisting), 1);

    const failure = (what: typeof Empty | typeof Typo) =>
      Test.createTestingModule({ imports: [WsRateLimitModule.forRootAsync({ useClass: what })] })
        .compile()
        .then(
          async (ref) => {
            await ref.close();
            return 'started';
          },
          (error: Error) => error.message,
        );
    expect(await failure(Empty)).toMatch(/must be an object/);
    expect(await failure(Typo)).toMatch(/global\.capactiy is not an option.*did you mean option global\.capacity/);
  });
});

// --- 4: the bare module -------------------------------------------------------------------

describe('WsRateLimitModule imported bare', () => {
  it('alone in the root module: runs as forRoot() (environment, then defaults) and limits a live gateway', async () => {
    const running = await withEnv(
      { WS_RATE_LIMIT_TYPE_CAPACITY: '2', WS_RATE_LIMIT_TYPE_REFILL_RATE: '0.01', WS_RATE_LIMIT_METRICS: 'false' },
      () => startNest({ imports: [WsRateLimitModule], providers: [EchoGateway] }),
    );
    expect(running.app.get(WsRateLimitService).options.global.capacity).toBe(100);
    const client = await connect(running.url);
    for (let i = 0; i < 3; i++) client.send('echo', i);
    await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 3);
    expect(client.frames.map((frame) => frame.event)).toEqual(['ack', 'ack', 'rate_limit']);
  });

  it('only in a feature module (none in the root), and in two feature modules: one limiter, injected where asked', async () => {
    @Injectable()
    class UsesLimiter {
      constructor(@Inject(WsRateLimitService) readonly limiter: WsRateLimitService) {}
    }
    @Module({ imports: [WsRateLimitModule], providers: [UsesLimiter], exports: [UsesLimiter] })
    class FeatureA {}
    @Module({ imports: [WsRateLimitModule] })
    class FeatureB {}
    const ref = await withEnv({ WS_RATE_LIMIT_METRICS: 'false' }, () => compile([FeatureA, FeatureB]));
    expect(ref.get(UsesLimiter).limiter).toBe(ref.get(WsRateLimitService));
  });

  it('beside forRoot, or beside forRootAsync (in a feature module): a start-up error that says to import forRoot once and inject the service', async () => {
    @Module({ imports: [WsRateLimitModule] })
    class Feature {}
    const outcome = (root: NonNullable<ModuleMetadata['imports']>[number]) =>
      Test.createTestingModule({ imports: [root, Feature] })
        .compile()
        .then(
          async (ref) => {
            await ref.close();
            return 'started';
          },
          (error: Error) => error.message,
        );
    const withForRoot = await outcome(WsRateLimitModule.forRoot({ useEnv: false, metrics: false }));
    const withAsync = await outcome(
      WsRateLimitModule.forRootAsync({ useFactory: () => ({ useEnv: false, metrics: false }) }),
    );
    for (const message of [withForRoot, withAsync]) {
      expect(message).toMatch(/imported 2 times/);
      expect(message).toMatch(/inject WsRateLimitService in other modules without importing it/);
    }
  });
});

// --- 5: a gateway on its own port without a path -------------------------------------------

describe('a ws gateway on its own port without a path', () => {
  function gatewaysOn(port: number) {
    let verified = 0;
    @WebSocketGateway(port, {
      verifyClient: (info: { req: { url?: string } }) => {
        verified++;
        return !String(info.req.url).includes('deny');
      },
    })
    @WsRateLimit()
    class First {
      @Throttle({ capacity: 2, refillRate: 0.01 })
      @SubscribeMessage('first')
      first(@MessageBody() data: unknown) {
        return { event: 'first-ack', data };
      }
    }
    @WebSocketGateway(port)
    @WsRateLimit()
    class Second {
      @SubscribeMessage('second')
      second(@MessageBody() data: unknown) {
        return { event: 'second-ack', data };
      }
    }
    return { First, Second, verified: () => verified };
  }

  it("the open-connection cap (HTTP refusal), the gateway's own verifyClient after ours, and a slot given back by a close", async () => {
    const own = await freePort();
    const { First, verified } = gatewaysOn(own);
    await startNest({
      imports: [
        WsRateLimitModule.forRoot({
          useEnv: false,
          metrics: false,
          maxConnectionsPerIp: 1,
          connection: { capacity: 100, refillRate: 100 },
        }),
      ],
      providers: [First],
    });
    const url = `ws://127.0.0.1:${own}`;
    // Refused by the gateway's own verifyClient: ws's 401; the slot ours took is given back.
    expect(await upgradeStatus(`${url}/deny`)).toBe(401);
    expect(verified()).toBe(1);
    const first = await connect(url);
    expect(await upgradeStatus(url)).toBe(429);
    // Over the cap: ours refused, the gateway's own is not asked.
    expect(verified()).toBe(2);
    await first.close();
    await waitUntil(async () => (await upgradeStatus(url)) === 101, 10_000, 'the slot back');
  });

  it('two gateways on one such port share one server: both handlers answer on one connection, in order, with their own figures', async () => {
    const own = await freePort();
    const { First, Second } = gatewaysOn(own);
    await startNest({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false })],
      providers: [First, Second],
    });
    const client = await connect(`ws://127.0.0.1:${own}`);
    client.inOneWrite(() => {
      for (const event of ['first', 'second', 'first', 'second', 'first', 'second']) client.send(event, event);
    });
    await client.waitFor(() => true, 6);
    expect(client.frames.map((frame) => frame.event)).toEqual([
      'first-ack',
      'second-ack',
      'first-ack',
      'second-ack',
      'rate_limit',
      'second-ack',
    ]);
  });

  it("app.close() closes the port's clients and frees the port", async () => {
    const own = await freePort();
    const { Second } = gatewaysOn(own);
    const running = await startNest({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false })],
      providers: [Second],
    });
    const client = await connect(`ws://127.0.0.1:${own}`);
    client.send('second', 1);
    await client.waitForEvent('second-ack');
    await running.app.close();
    apps.splice(apps.indexOf(running.app), 1);
    const close = await client.waitClose(10_000);
    expect(close.code).toBeGreaterThan(0);
    const free = await new Promise<boolean>((resolve) => {
      const probe = createServer();
      probe.once('error', () => resolve(false));
      probe.listen(own, () => probe.close(() => resolve(true)));
    });
    expect(free).toBe(true);
  });
});

// --- 6: a custom parser that throws ---------------------------------------------------------

describe("a custom message parser's throws", () => {
  it('a flood of frames the parser rejects writes a bounded number of lines, at any level Nest prints by default (each wrote a debug line: 300 frames, 300 lines)', async () => {
    // A LoggerService that records every level, as Nest's default ConsoleLogger prints every
    // level (log, error, warn, debug, verbose, fatal) unless logLevels is set.
    const logger = new Captured();
    const parser = (data: unknown) => {
      const parsed = JSON.parse(String(data)) as { event?: unknown };
      if (typeof parsed.event !== 'string') throw new Error('not a message');
      return parsed;
    };
    const running = await startNest(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            metrics: false,
            violations: { max: 1_000_000, windowMs: 60_000 },
            global: { capacity: 100_000, refillRate: 100_000 },
          }),
        ],
        providers: [EchoGateway],
      },
      { logger, parser },
    );
    const client = await connect(running.url);
    client.inOneWrite(() => {
      for (let i = 0; i < 300; i++) client.sendRaw(`garbage ${i}`);
    });
    await client.waitFor((frame) => frame.event === 'error', 300, 30_000);
    const parserLines = logger.lines.filter((line) => /message parser threw/.test(line.text));
    expect(parserLines.filter((line) => line.level === 'error')).toHaveLength(1);
    // README, Events and logs: a client-caused debug line is "at most one line per 10 s"
    // (violations); "a line per rejected message" is what the bound exists to prevent.
    expect(parserLines.length).toBeLessThanOrEqual(3);
  }, 60_000);

  it('a parser that throws a string, null or a plain object: INVALID_MESSAGE each time, one error line, the connection serves on', async () => {
    const logger = new Captured();
    const thrown: unknown[] = ['plain string', null, { code: 'BAD' }, 42];
    let n = 0;
    const parser = (data: unknown) => {
      const text = String(data);
      if (text.startsWith('{')) return JSON.parse(text) as unknown;
      throw thrown[n++ % thrown.length];
    };
    const running = await startNest(
      {
        imports: [
          WsRateLimitModule.forRoot({ useEnv: false, metrics: false, violations: { max: 1000, windowMs: 60_000 } }),
        ],
        providers: [EchoGateway],
      },
      { logger, parser },
    );
    const client = await connect(running.url);
    for (let i = 0; i < thrown.length * 2; i++) client.sendRaw(`bad ${i}`);
    client.send('echo', 'still here');
    await client.waitFor(() => true, thrown.length * 2 + 1, 20_000);
    expect(client.events('error').map((frame) => frame.data.code)).toEqual(
      Array.from({ length: thrown.length * 2 }, () => 'INVALID_MESSAGE'),
    );
    expect(client.events('ack')).toEqual([{ event: 'ack', data: 'still here' }]);
    expect(logger.lines.filter((line) => line.level === 'error')).toHaveLength(1);
  });

  it('a parser that throws an object without a prototype (Object.create(null)) does not crash the process (String(error) in the log line threw out of the socket handler)', async () => {
    const entry = buildChildApp(THROWING_PARSER_APP);
    const child = await startChildApp(entry);
    const exited = new Promise<string>((resolve) =>
      child.process.once('exit', (code, signal) => resolve(`the app's process exited (${code ?? signal})`)),
    );
    try {
      const client = await TestClient.connect(child.url);
      clients.push(client);
      client.sendRaw('bad 1');
      client.sendRaw('bad 2');
      client.send('echo', 'still here');
      const outcome = await client
        .waitFor(() => true, 3, 20_000)
        .then(
          () => client.frames.map((frame) => (frame.event === 'error' ? frame.data.code : frame.event)).join(','),
          async (error: Error) =>
            `${error.message}; ${await Promise.race([exited, later(5000, 'the app still runs')])}`,
        );
      // README: "A frame is INVALID_MESSAGE when the parser throws".
      expect(outcome).toBe('INVALID_MESSAGE,INVALID_MESSAGE,ack');
    } finally {
      await child.stop();
    }
  }, 120_000);
});

/** An app in its own process whose message parser throws objects without a prototype. */
const THROWING_PARSER_APP = `
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { WsRateLimit, WsRateLimitAdapter, WsRateLimitModule } from 'nestjs-ws-rate-limit';
import type { AddressInfo } from 'node:net';

@WebSocketGateway()
@WsRateLimit()
class EchoGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

@Module({ imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false })], providers: [EchoGateway] })
class AppModule {}

async function main(): Promise<void> {
  const app = await NestFactory.create(AppModule, { logger: ['error', 'warn'] });
  const adapter = new WsRateLimitAdapter(app);
  adapter.setMessageParser(((data: unknown) => {
    const text = String(data);
    if (text.startsWith('{')) return JSON.parse(text);
    // e.g. a validator's issues collected in a dictionary object
    throw Object.assign(Object.create(null), { issues: ['not JSON'] });
  }) as never);
  app.useWebSocketAdapter(adapter);
  app.enableShutdownHooks();
  await app.listen(0, '127.0.0.1');
  process.send!({ type: 'listening', port: (app.getHttpServer().address() as AddressInfo).port });
}
void main();
`;
