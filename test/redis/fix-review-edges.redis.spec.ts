/**
 * Adversarial review of the two fix commits f20dc2e (reservations: a cursor per bucket, the
 * give-back of a batch that ends with a slow bucket's slots ahead) and 7a463e2 (plans' own
 * bucket keys, unrouted frames under a plan, frameBuilder failures, blocks over the allow
 * list, @SkipThrottle after the close, tracker names, ConfigService values, the password
 * beside a URL), on a real redis-server this file starts (never port 6379).
 *
 * Failed before (fixed with this file): a URL naming a user but no password lost the
 * password variable (ioredis reads the URL first, and gives such a URL an empty password;
 * the password now goes into the URL). Found and left alone (README, Token reservations;
 * both before this session's fixes too): reservations are per plan, so where a slow global
 * bucket is shared by the plans of three fast message types, a lone instance refused 3-10
 * of 60 messages the bucket had room for (a plan's batch whose global slots cannot go back,
 * another plan having reserved the global bucket after it, is lacking to the others until its
 * slots pass), and two types sharing a global bucket of their rate, alternating at 900
 * decisions a second, made 0.6 Redis calls a decision (0.04 with one type).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Redis } from 'ioredis';
import { performance } from 'node:perf_hooks';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitModule,
  WsRateLimitService,
  resolveOptions,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import type { RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { createStore } from '../../lib/storage/create-store.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { hashTag } from '../../lib/storage/redis/redis-keys.js';
import type { RedisStoreOptions } from '../../lib/storage/redis/redis-store.options.js';
import type { RateLimitStore } from '../../lib/storage/rate-limit-store.js';
import { startApp, type RunningApp } from '../support/app.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import {
  adminClient,
  closeClient,
  commandCounts,
  openStore,
  ready,
  sleep,
  worstBurst,
  type Admission,
  type OpenedStores,
} from './helpers.js';

let server: RedisServer;
let admin: Redis;
const opened: OpenedStores = { clients: [], stores: [] };
const apps: RunningApp[] = [];
const servers: RedisServer[] = [];
const looseStores: RateLimitStore[] = [];

beforeAll(async () => {
  server = await startRedis();
  admin = adminClient(server.port);
  await ready(admin);
});

afterAll(async () => {
  for (const app of apps) await app.close().catch(() => undefined);
  await Promise.all(looseStores.map((store) => store.close().catch(() => undefined)));
  await Promise.all(opened.stores.map((store) => store.close().catch(() => undefined)));
  await Promise.all([admin, ...opened.clients].map(closeClient));
  for (const extra of servers) await extra.stop();
  await server?.stop();
});

let prefixes = 0;
const freshPrefix = () => `fr${++prefixes}:`;

const makeStore = (options: Partial<RedisStoreOptions> = {}): Promise<RedisRateLimitStore> =>
  openStore(server.port, opened, {
    keyPrefix: freshPrefix(),
    commandTimeoutMs: 5000,
    reservations: { maxBatch: 64, ttlMs: 1000 },
    ...options,
  });
const planOf = (store: RedisRateLimitStore, tracker: string, specs: readonly TierSpec[]): RateLimitPlan => ({
  tracker,
  tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
});

/** Redis script calls (EVALSHA, EVAL, FCALL) since the last CONFIG RESETSTAT. */
async function scriptCalls(): Promise<number> {
  const counts = await commandCounts(admin);
  return (counts['evalsha'] ?? 0) + (counts['eval'] ?? 0) + (counts['fcall'] ?? 0) + (counts['evalsha_ro'] ?? 0);
}

// ---------------------------------------------------------------------------------------
// 1. Reservations: per-bucket cursors, spendSlots, futureLeft, over()
// ---------------------------------------------------------------------------------------
describe('reservations after f20dc2e (RedisRateLimitStore directly)', () => {
  it('one message type on a single-rate plan: fast traffic stays at a call per batch of 64 or per 16 ms its slots cover (at most 0.1 a decision on a quiet machine)', async () => {
    const store = await makeStore();
    const plan = planOf(store, 'ip:one-type-one-rate', [
      tokenBucketSpec('global', 'g', 4000, 2000),
      tokenBucketSpec('type', 't:k', 4000, 2000),
    ]);
    await admin.config('RESETSTAT');
    let allowed = 0;
    const started = performance.now();
    for (let i = 0; i < 1000; i++) {
      if ((await store.consume(plan)).allowed) allowed++;
      if (i % 10 === 9) await sleep(10);
    }
    const elapsedMs = performance.now() - started;
    expect(allowed).toBe(1000);
    // A batch of 64 slots at 4000/s covers 16 ms of the buckets: its slots lapse after that
    // however few were spent, so a lone instance needs a call per 64 decisions or per 16 ms,
    // whichever comes first. On a quiet machine (a 10 ms sleep lasting ~11 ms) that measured
    // 0.044-0.06 calls a decision. Bounding it at 0.1 failed in a clean-clone CI under load
    // (0.103: each sleep outlasted a batch, one call per burst of 10), so the bound is what
    // the batches can cover in the time the loop really took, plus a few for the ramp-up
    // (1, 2, 4, ... 64), and never below 0.1 a decision; batches falling to 1 or to a few
    // slots still exceed it.
    const bound = Math.max(1000 / 64, elapsedMs / 16) + 8;
    expect(await scriptCalls()).toBeLessThan(Math.max(100, bound));
  }, 30_000);

  it('a lone instance, fast global and slow type bucket, sent one at a time: admits the full burst, then the refill', async () => {
    const store = await makeStore();
    // The type bucket refills a token per 100 ms: the six decisions must fit in less, or the
    // sixth is rightly admitted. A try where they did not (a stall of this machine or of
    // Redis) is done again on a new tracker, at most five times.
    let plan: RateLimitPlan | undefined;
    for (let attempt = 0; attempt < 5; attempt++) {
      const tried = planOf(store, `ip:lone-burst-${attempt}`, [
        tokenBucketSpec('global', 'g', 1000, 1000),
        tokenBucketSpec('type', 't:chat', 5, 10),
      ]);
      const started = performance.now();
      let first = 0;
      for (let i = 0; i < 5; i++) if ((await store.consume(tried)).allowed) first++;
      expect(first).toBe(5);
      const sixth = (await store.consume(tried)).allowed;
      if (performance.now() - started >= 90 && attempt < 4) continue;
      expect(sixth).toBe(false);
      plan = tried;
      break;
    }
    await sleep(550); // 5.5 tokens back
    let second = 0;
    for (let i = 0; i < 5; i++) if ((await store.consume(plan!)).allowed) second++;
    expect(second).toBe(5);
  }, 30_000);

  it('three reserving instances, fast and slow buckets, bursts and paced traffic: never above C + r*T in any window', async () => {
    const stores = await Promise.all([0, 1, 2].map(() => makeStore({ keyPrefix: 'fr-shared:' })));
    const fast = tokenBucketSpec('global', 'g', 200, 1000);
    const slow = tokenBucketSpec('type', 't:chat', 8, 20);
    const admissions: Admission[] = [];
    const until = performance.now() + 2500;
    await Promise.all(
      stores.flatMap((store, s) =>
        Array.from({ length: 3 }, async (_, w) => {
          const plan = planOf(store, 'ip:three-mixed', [fast, slow]);
          let n = 0;
          while (performance.now() < until && n++ < 2000) {
            const asked = performance.now();
            const decision = await store.consume(plan);
            if (decision.allowed) admissions.push([asked, performance.now()]);
            // Half the workers burst, the others pace (1-25 ms).
            if ((s + w) % 2 === 1) await sleep(1 + ((n * 7) % 25));
            else if (n % 20 === 0) await sleep(40);
          }
        }),
      ),
    );
    expect(admissions.length).toBeGreaterThan(8);
    expect(worstBurst(admissions, 20 / 1000)).toBeLessThanOrEqual(8 + 1e-9);
  }, 30_000);
});

// ---------------------------------------------------------------------------------------
// 2. Plans' own bucket keys (route-resolver figuresSuffix / typeSuffix / globalSuffix)
// ---------------------------------------------------------------------------------------
@WebSocketGateway()
@WsRateLimit()
class PlanGateway {
  @Throttle({ capacity: 3, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat() {
    return { event: 'ok' };
  }

  @Throttle({ limits: { burst: { capacity: 4, refillRate: 0.001 }, slow: { capacity: 6, refillRate: 0.0005 } } })
  @SubscribeMessage('search')
  search() {
    return { event: 'ok' };
  }
}

/** A gateway the module never discovers: its handler is first resolved under a plan. */
class LateGateway {
  @Throttle({ type: 'late', capacity: 7, refillRate: 0.002 })
  @SubscribeMessage('late')
  late() {
    return { event: 'ok' };
  }
}

interface FakeSocket {
  readyState: number;
  send(): void;
  once(): void;
  on(): void;
  close(): void;
  plan?: string;
  user: string;
}
const fakeSocket = (user: string, plan?: string): FakeSocket => ({
  readyState: 1,
  send: () => undefined,
  once: () => undefined,
  on: () => undefined,
  close: () => undefined,
  user,
  ...(plan === undefined ? {} : { plan }),
});

describe('plans with their own bucket keys (7a463e2)', () => {
  let service: WsRateLimitService;
  let prefix: string;

  beforeAll(async () => {
    prefix = freshPrefix();
    const options: WsRateLimitModuleOptions = {
      useEnv: false,
      metrics: false,
      store: 'redis',
      keyPrefix: prefix,
      redis: { url: server.url, commandTimeoutMs: 3000 },
      global: { capacity: 100, refillRate: 0.001 },
      connection: { capacity: 1000, refillRate: 1000 },
      tracker: (client) => (client as FakeSocket).user,
      plans: {
        premium: { global: { capacity: 500, refillRate: 200 }, types: { chat: { capacity: 10, refillRate: 0.001 } } },
        // Global figures equal to the module's: the same bucket.
        same: { global: { capacity: 100, refillRate: 0.001 } },
        // Two plans of equal figures share their buckets.
        gold: { global: { capacity: 500, refillRate: 200 } },
      },
      planResolver: (client) => (client as FakeSocket).plan,
    };
    const running = await startApp({ imports: [WsRateLimitModule.forRoot(options)], providers: [PlanGateway] });
    apps.push(running);
    service = running.app.get(WsRateLimitService);
  });

  const fields = async (user: string): Promise<string[]> => {
    const keys = await admin.keys(`${prefix}*`);
    const mine = keys.filter((key) => key.endsWith(':~4'));
    const all: string[] = [];
    for (const key of mine) {
      const names = await admin.hkeys(key);
      if (hashTag(key) === hashTag(service.store.key(`key:${user}`, 'g'))) all.push(...names);
    }
    return all.filter((name) => !name.startsWith('~')).sort();
  };

  it('a premium socket spends its own keys; status, peek and reset of the socket cover every bucket it used', async () => {
    const premium = fakeSocket('u-premium', 'premium');
    let allowed = 0;
    for (let i = 0; i < 11; i++) if ((await service.consume(premium, { type: 'chat' })).allowed) allowed++;
    expect(allowed).toBe(10);
    const written = await fields('u-premium');
    expect(written).toEqual([':@10/0.001:t:chat', ':@500/200:g']);
    const status = await service.status(premium);
    expect(status.plan).toBe('premium');
    expect(status.global.capacity).toBe(500);
    expect(status.types['chat']).toMatchObject({ capacity: 10, remaining: 0 });
    const peeked = await service.peek(premium, { type: 'chat' });
    expect(peeked.map((tier) => tier.remaining)).toEqual([expect.any(Number), 0]);
    // The same user on the default plan: the module's buckets, untouched by premium's spending.
    const free = fakeSocket('u-premium');
    expect((await service.status(free)).types['chat']).toMatchObject({ capacity: 3, remaining: 3 });
    await service.reset(premium);
    expect(await fields('u-premium')).toEqual([]);
    expect((await service.status(premium)).types['chat']).toMatchObject({ remaining: 10 });
    expect((await service.consume(premium, { type: 'chat' })).allowed).toBe(true);
  });

  it('named limits under a plan that does not override the type are shared with the module; a plan with module figures shares "g"; equal plans share their keys', async () => {
    const same = fakeSocket('u-named', 'same');
    const gold = fakeSocket('u-named', 'gold');
    const premium = fakeSocket('u-named', 'premium');
    const free = fakeSocket('u-named');
    expect((await service.consume(same, { type: 'search' })).allowed).toBe(true);
    expect((await service.consume(gold, { type: 'search' })).allowed).toBe(true);
    expect((await service.consume(premium, { type: 'search' })).allowed).toBe(true);
    expect((await service.consume(free, { type: 'search' })).allowed).toBe(true);
    // Every bucket's field names its figures (since buckets were keyed by figures).
    expect(await fields('u-named')).toEqual([
      ':@100/0.001:g',
      ':@4/0.001:n:burst:search',
      ':@500/200:g',
      ':@6/0.0005:n:slow:search',
    ]);
    const status = await service.status(free, ['search']);
    expect(status.types['search']).toMatchObject({ capacity: 4, remaining: 0 });
    await service.reset('u-named');
    expect(await fields('u-named')).toEqual([]);
  });

  it('a handler first resolved under a plan (never discovered) gets the module figures right, under both, with no config error', () => {
    const premium = fakeSocket('u-late', 'premium');
    const free = fakeSocket('u-late');
    const handler = LateGateway.prototype.late as object;
    const premiumRoute = service.routeOf(handler, LateGateway, service.connectionOf(premium), premium)!;
    const freeRoute = service.routeOf(handler, LateGateway, service.connectionOf(free), free)!;
    expect(premiumRoute.specs.map((spec) => spec.suffix)).toEqual(['@500/200:g', '@7/0.002:t:late']);
    expect(freeRoute.specs.map((spec) => spec.suffix)).toEqual(['@100/0.001:g', '@7/0.002:t:late']);
    expect(freeRoute.specs[1]).toMatchObject({ limit: 7 });
  });

  it('a tracker function answering a number (or a promise of one) names the tracker by its digits', async () => {
    const numeric = { ...fakeSocket('x'), user: 42 as unknown as string };
    const later = { ...fakeSocket('x'), user: Promise.resolve(42) as unknown as string };
    expect((await service.status(numeric)).tracker).toBe('key:42');
    expect((await service.status(later)).tracker).toBe('key:42');
  });

  it('keys of a plan keep the tracker hash tag (one Cluster slot)', () => {
    const key = service.store.key('key:u', '@500/200:g');
    expect(hashTag(key)).toBe(hashTag(service.store.key('key:u', 'g')));
  });
});

// ---------------------------------------------------------------------------------------
// 3. The password beside a URL (create-store.ts)
// ---------------------------------------------------------------------------------------
describe('option values as text (7a463e2)', () => {
  it('trustProxy as a digit string is a hop count, as the variable reads it', () => {
    expect(
      resolveOptions({ useEnv: false, trustProxy: ' 2 ' as unknown as number }, () => undefined).trustProxy,
    ).toEqual(
      resolveOptions({ useEnv: true }, (name) => (name === 'WS_RATE_LIMIT_TRUST_PROXY' ? '2' : undefined)).trustProxy,
    );
  });
});

describe('WS_RATE_LIMIT_REDIS_PASSWORD beside a URL (7a463e2)', () => {
  let acl: RedisServer;

  beforeAll(async () => {
    acl = await startRedis(['--user', 'alice', 'on', '>right', '~*', '&*', '+@all']);
    servers.push(acl);
  });

  async function works(url: string, password: string | undefined): Promise<boolean> {
    const options = resolveOptions(
      {
        useEnv: false,
        store: 'redis',
        keyPrefix: freshPrefix(),
        redis: { url, commandTimeoutMs: 1000, ...(password === undefined ? {} : { password }) },
        failMode: 'closed',
      },
      () => undefined,
    );
    const store = await createStore(options);
    looseStores.push(store);
    const plan: RateLimitPlan = {
      tracker: 'ip:pw',
      tiers: [{ key: store.key('ip:pw', 'g'), spec: tokenBucketSpec('global', 'g', 5, 1) }],
    };
    await sleep(300);
    try {
      const decision = await store.consume(plan);
      return decision.allowed;
    } catch {
      return false;
    }
  }

  it('a URL with its own password wins over the variable', async () => {
    expect(await works(`redis://alice:right@127.0.0.1:${acl.port}`, 'wrong')).toBe(true);
  }, 15_000);

  it("a URL naming a user but no password takes the password variable (ioredis would read the URL's empty password first)", async () => {
    expect(await works(`redis://alice@127.0.0.1:${acl.port}`, 'right')).toBe(true);
  }, 15_000);
});
