/**
 * Adversarial review of the Redis store's key layout (version 4) with named plans whose
 * figures differ from the module's (their buckets under `@<capacity>/<refillRate>:<suffix>`),
 * on real redis-server processes this file starts (a standalone server and a three-master
 * Cluster; never port 6379): one Cluster slot per tracker, fields that do not pile up when a
 * connection switches plans, keys of earlier layouts and foreign values at a tracker's keys,
 * hash-field TTL mode against its fallback, resets of plan buckets, odd key prefixes, and two
 * instances configured with different plans on one Redis. Decisions are compared by admitted
 * counts (refill rates of 0.001/s: nothing comes back while a case runs), never by timings.
 *
 * Hash-field TTLs (Redis 7.4+) run only when a field-TTL server is there
 * (`fieldTtlRedisServer()`); on this machine's Redis 7.0 both store settings keep one TTL
 * per hash, so that comparison is a guard only.
 *
 * Seven cases (five bugs) failed on the code reviewed (d8f2550) and were fixed: a string,
 * list or set at a tracker hash or a lease key made every decision of that tracker fail with
 * WRONGTYPE (and three of them opened the breaker for every tracker); the scripts now read
 * such keys with redis.pcall, delete them and start fresh. A first write keeping one TTL per
 * hash (the fallback, and every store until it has read INFO) into a hash written with
 * field TTLs gave it its own short TTL, and a log's longer-lived field went with it (6
 * expensive operations in a window of 3); it now never sets the hash's TTL below what the
 * hash already holds needs. WS_RATE_LIMIT_KEY_PREFIX with a brace now names the variable.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { Redis } from 'ioredis';
import { Redis as RedisClient } from 'ioredis';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import type { RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { createRedisStore, RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { hashTag, trackerHashOf } from '../../lib/storage/redis/redis-keys.js';
import type { RedisStoreOptions } from '../../lib/storage/redis/redis-store.options.js';
import { startApp, withEnv, type RunningApp } from '../support/app.js';
import {
  fieldTtlRedisServer,
  startCluster,
  startRedis,
  type RedisCluster,
  type RedisServer,
} from '../support/redis-server.js';
import { adminClient, closeClient, keySlots, openStore, ready, sleep, type OpenedStores } from './helpers.js';

let server: RedisServer;
let admin: Redis;
const opened: OpenedStores = { clients: [], stores: [] };
const apps: RunningApp[] = [];
const looseStores: RedisRateLimitStore[] = [];

beforeAll(async () => {
  server = await startRedis();
  admin = adminClient(server.port);
  await ready(admin);
});

afterAll(async () => {
  for (const app of apps) await app.close().catch(() => undefined);
  await Promise.all([...looseStores, ...opened.stores].map((store) => store.close().catch(() => undefined)));
  await Promise.all([admin, ...opened.clients].map(closeClient));
  await server?.stop();
});

let prefixes = 0;
const freshPrefix = () => `lr${++prefixes}:`;

const makeStore = (options: Partial<Omit<RedisStoreOptions, 'client'>> = {}): Promise<RedisRateLimitStore> =>
  openStore(server.port, opened, { keyPrefix: freshPrefix(), commandTimeoutMs: 3000, blockCache: false, ...options });

const planOf = (store: RedisRateLimitStore, tracker: string, specs: readonly TierSpec[]): RateLimitPlan => ({
  tracker,
  tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
  lease: 'L',
});

/** Each decision's outcome: true (allowed), false (refused) or the error's message. */
async function outcomes(store: RedisRateLimitStore, plan: RateLimitPlan, count: number): Promise<(boolean | string)[]> {
  const out: (boolean | string)[] = [];
  for (let i = 0; i < count; i++) {
    try {
      out.push((await store.consume(plan)).allowed);
    } catch (error) {
      out.push((error as Error).message);
    }
  }
  return out;
}

/** The tracker hash of a plan's first tier. */
const hashOf = (plan: RateLimitPlan): string => trackerHashOf(plan.tiers[0]!.key).hash;

/** A plan's bucket (its own figures, as a named plan keys it), and a sliding log. */
const planBucket = tokenBucketSpec('global', '@500/200:g', 5, 0.001);
const planType = tokenBucketSpec('type', '@10/0.001:t:chat', 4, 0.001);

// ---------------------------------------------------------------------------------------
// 1. Foreign values and earlier layouts at a tracker's keys (the store on its own)
// ---------------------------------------------------------------------------------------
describe("foreign values at a tracker's keys", () => {
  for (const planScripts of [64, 0]) {
    const how = planScripts === 0 ? 'generic script' : 'plan script';

    it(`a string or a list at the tracker hash (...}:~4) is dropped, and the decision starts fresh (${how})`, async () => {
      // README, Redis, "Upgrading from layout 1, 2 or 3": "A key that holds a value of another
      // type (a tier whose algorithm changed) is ignored or dropped, never an error." Expected:
      // the decision is made (a fresh budget: allowed), not a WRONGTYPE error from HMGET that
      // the fail mode must then decide (and that counts towards opening the breaker).
      const store = await makeStore({ planScripts, breaker: { failureThreshold: 1000 } });
      const results: (boolean | string)[] = [];
      for (const [tracker, write] of [
        ['ip:198.51.100.20', (hash: string) => admin.set(hash, 'foreign')],
        ['ip:198.51.100.21', (hash: string) => admin.rpush(hash, 'a', 'b')],
        ['ip:198.51.100.22', (hash: string) => admin.sadd(hash, 'a')],
      ] as const) {
        const plan = planOf(store, tracker, [planBucket, planType]);
        await write(hashOf(plan));
        results.push(...(await outcomes(store, plan, 1)));
      }
      expect(results).toEqual([true, true, true]);
    });

    it(`a string at an open-connection lease key is dropped, and the decision starts fresh (${how})`, async () => {
      // Same README promise ("never an error"); scripts.ts says so of lease keys in particular
      // ("a log or lease key holding a value of another type is dropped, not an error").
      // readLeases' HGETALL (lua-helpers.ts) raises WRONGTYPE instead.
      const store = await makeStore({ planScripts, breaker: { failureThreshold: 1000 } });
      const plan = planOf(store, 'ip:198.51.100.23', [
        tokenBucketSpec('connection', 'cr', 5, 0.001),
        concurrencySpec('concurrency', 'cc', 2),
      ]);
      await admin.set(plan.tiers[1]!.key, 'a value of layout 1', 'PX', 60_000);
      const results = await outcomes(store, plan, 3);
      // Two open connections fit, the third is refused by the cap: nothing else.
      expect(results).toEqual([true, true, false]);
      await store.release(plan).catch(() => undefined);
    });
  }

  it('one tracker whose hash holds a foreign value does not open the breaker for every tracker', async () => {
    // A foreign value at one tracker's key is that tracker's problem at most: README, "When Redis
    // is slow or down": "A circuit breaker opens on the client's close/end or after 3 failures in
    // a row" -- failures of Redis, which here answers every call. Expected: another tracker's
    // decision still goes to Redis (exact shared limits), the store stays available. Found:
    // three messages of the poisoned tracker trip the store-wide breaker (call-gate.ts `failed`
    // counts a script's error reply as a Redis failure).
    const store = await makeStore();
    const poisoned = planOf(store, 'ip:198.51.100.30', [planBucket]);
    await admin.set(hashOf(poisoned), 'foreign', 'PX', 60_000);
    await outcomes(store, poisoned, 3);
    const clean = planOf(store, 'ip:198.51.100.31', [planBucket]);
    expect(await outcomes(store, clean, 1)).toEqual([true]);
    expect(store.available).toBe(true);
  });

  it('a tracker hash with odd fields (wrong lengths, text of layout 3, junk ~e) decides as fresh and never over-admits', async () => {
    for (const planScripts of [64, 0]) {
      const store = await makeStore({ planScripts });
      const log = windowSpec('expensive', 'x', 'sliding-log', 3, 60_000);
      const counter = windowSpec('expensive', 'xc', 'sliding-counter', 2, 60_000);
      const plan = planOf(store, 'user:odd', [planBucket, planType, log, counter]);
      const hash = hashOf(plan);
      // Each field of another length or kind than its tier's, a field of no tier, and a `~e` of
      // 3 bytes: every one reads as a fresh state (nothing to refuse), none as an error.
      await admin.hset(hash, ':@500/200:g', `${Date.now() + 60_000}`, ':@10/0.001:t:chat', 'abc', ':x', 'Lxyz');
      await admin.hset(hash, ':xc', Buffer.alloc(16), ':stray', 'x', '~e', 'abc');
      await admin.pexpire(hash, 60_000);
      // The counter (2 per window) binds first: 2 admitted, then refused, every time.
      expect(await outcomes(store, plan, 4)).toEqual([true, true, false, false]);
      const bucketOnly = planOf(store, 'user:odd', [planBucket]);
      // The bucket was spent twice above: 3 of its 5 left, then refused.
      expect(await outcomes(store, bucketOnly, 4)).toEqual([true, true, true, false]);
      const ttl = await admin.pttl(hash);
      expect(ttl).toBeGreaterThan(0);
    }
  });

  it("keys of earlier layouts at a plan bucket's key are never read: a fresh budget once, exactly its capacity", async () => {
    const store = await makeStore();
    const plan = planOf(store, 'ip:198.51.100.40', [planBucket, planType]);
    const now = Date.now();
    // Layout 1: each bucket a string at its tier key (here spent far ahead); layout 2 and 3: the
    // same fields in `...}:~2` / `...}:~3`.
    await admin.set(plan.tiers[0]!.key, String(now + 600_000), 'PX', 60_000);
    await admin.set(plan.tiers[1]!.key, String(now + 600_000), 'PX', 60_000);
    const base = hashOf(plan).slice(0, -':~4'.length);
    await admin.hset(`${base}:~2`, ':@500/200:g', String(now + 600_000), '~e', String(now + 600_000));
    await admin.hset(`${base}:~3`, ':@10/0.001:t:chat', String(now + 600_000), '~e', String(now + 600_000));
    await admin.pexpire(`${base}:~2`, 60_000);
    await admin.pexpire(`${base}:~3`, 60_000);
    // The type bucket (4) binds: 4 admitted, then refused.
    expect(await outcomes(store, plan, 6)).toEqual([true, true, true, true, false, false]);
    expect(await admin.get(plan.tiers[0]!.key)).toBe(String(now + 600_000));
  });
});

// ---------------------------------------------------------------------------------------
// 2. Hash-field TTL mode against its fallback, plan scripts against the generic script
// ---------------------------------------------------------------------------------------
describe('field-TTL mode and its fallback decide identically', () => {
  const binary = fieldTtlRedisServer();
  const servers: { name: string; start: () => Promise<RedisServer> }[] = [
    { name: "this machine's Redis", start: () => startRedis() },
    ...(binary === undefined ? [] : [{ name: 'Redis with hash-field TTLs', start: () => startRedis([], binary) }]),
  ];
  for (const { name, start } of servers) {
    it(`${name}: hashFieldTtls true and false, plan scripts on and off, alone and in turn on one tracker`, async () => {
      const own = await start();
      const extra: OpenedStores = { clients: [], stores: [] };
      try {
        const stores = await Promise.all(
          [
            { hashFieldTtls: true, planScripts: 64 },
            { hashFieldTtls: false, planScripts: 64 },
            { hashFieldTtls: true, planScripts: 0 },
            { hashFieldTtls: false, planScripts: 0 },
          ].map((options) =>
            openStore(own.port, extra, { keyPrefix: 'ft:', commandTimeoutMs: 3000, blockCache: false, ...options }),
          ),
        );
        await Promise.all(stores.map((store) => store.evictionPolicyChecked));
        const specs = [planBucket, planType, windowSpec('expensive', 'x', 'sliding-log', 3, 60_000)];
        // Each store alone on a tracker of its own.
        const alone = await Promise.all(
          stores.map((store, i) => outcomes(store, planOf(store, `user:alone-${i}`, specs), 5)),
        );
        for (const result of alone) expect(result).toEqual([true, true, true, false, false]);
        // All four in turn on one tracker: one budget.
        const turns: (boolean | string)[] = [];
        for (let i = 0; i < 8; i++)
          turns.push(...(await outcomes(stores[i % 4]!, planOf(stores[i % 4]!, 'user:turns', specs), 1)));
        expect(turns).toEqual([true, true, true, false, false, false, false, false]);
        // Whatever the mode, the tracker hash (or each of its fields) has a TTL.
        const hash = hashOf(planOf(stores[0]!, 'user:turns', specs));
        const ttl = await own.command('PTTL', hash);
        if (ttl === -1) {
          const fields = (await own.command('HKEYS', hash)) as string[];
          const ttls = (await own.command('HPTTL', hash, 'FIELDS', String(fields.length), ...fields)) as number[];
          expect(ttls.every((left) => left > 0)).toBe(true);
        } else {
          expect(ttl).toBeGreaterThan(0);
        }
      } finally {
        await Promise.all(extra.stores.map((store) => store.close().catch(() => undefined)));
        await Promise.all(extra.clients.map(closeClient));
        await own.stop();
      }
    });
  }
});

describe('a hash written with hash-field TTLs, then by a store keeping one TTL per hash', () => {
  const binary = fieldTtlRedisServer();
  const run = binary === undefined ? it.skip : it;

  run(
    "the first write without field TTLs keeps the hash's TTL at least what a log's longer-lived field needs",
    async () => {
      // README, Redis: without hash-field TTLs "the hash has one TTL, that of its longest-lived
      // field plus a second"; `hashFieldTtls: false` "keeps one TTL per hash on every server", and
      // "A hash written before the server was upgraded keeps the old way until it expires" (the
      // one transition the scripts handle, through `~e`). The other way is not handled: a hash
      // written with field TTLs has no `~e` and no TTL of its own, so the first write of a store
      // keeping one TTL per hash (a second instance with `hashFieldTtls: false`, or any store in
      // its first milliseconds, before it has read INFO: `fieldTtls` starts at 0) takes `exp ==
      // nil` for a fresh hash and sets the hash's TTL to what its own fields need (here a fast
      // global bucket: about a second), cutting the 60 s the log's field still needs. The log
      // is gone with the hash and admits again: 6 expensive operations in a 60 s window of max 3.
      const own = await startRedis([], binary);
      const extra: OpenedStores = { clients: [], stores: [] };
      try {
        const options = { keyPrefix: 'mix:', commandTimeoutMs: 3000, blockCache: false } as const;
        const withTtls = await openStore(own.port, extra, { ...options });
        const oneTtl = await openStore(own.port, extra, { ...options, hashFieldTtls: false });
        await Promise.all([withTtls.evictionPolicyChecked, oneTtl.evictionPolicyChecked]);
        expect([withTtls.hashFieldTtls, oneTtl.hashFieldTtls]).toEqual([true, false]);
        const fast = tokenBucketSpec('global', '@500/200:g', 500, 200);
        const log = windowSpec('expensive', 'x', 'sliding-log', 3, 60_000);
        const expensive = planOf(withTtls, 'user:mixed', [fast, log]);
        expect(await outcomes(withTtls, expensive, 4)).toEqual([true, true, true, false]);
        // An unrouted frame's plan on the other instance: the global bucket alone.
        expect(await outcomes(oneTtl, planOf(oneTtl, 'user:mixed', [fast]), 1)).toEqual([true]);
        const hash = hashOf(expensive);
        const ttl = Number(await own.command('PTTL', hash));
        // Wait (up to 5 s) for the hash to expire, as it does here after about a second; then
        // the log must still be full: 3 operations in its 60 s window, none more.
        const deadline = Date.now() + 5_000;
        while (Date.now() < deadline && Number(await own.command('EXISTS', hash)) === 1) await sleep(50);
        const after = await outcomes(withTtls, expensive, 3);
        // The hash's own TTL (if it had one) had to cover the log's field: about 60 s.
        expect({ after, hashTtlCoversTheLog: ttl === -1 || ttl > 50_000 }).toEqual({
          after: [false, false, false],
          hashTtlCoversTheLog: true,
        });
      } finally {
        await Promise.all(extra.stores.map((store) => store.close().catch(() => undefined)));
        await Promise.all(extra.clients.map(closeClient));
        await own.stop();
      }
    },
    30_000,
  );
});

// ---------------------------------------------------------------------------------------
// 3. Plans through the module: switching, resets, two instances with other plans
// ---------------------------------------------------------------------------------------
@WebSocketGateway()
@WsRateLimit()
class ChatGateway {
  @Throttle({ capacity: 3, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat() {
    return { event: 'ok' };
  }

  @Throttle({ capacity: 100, refillRate: 0.001, expensive: true })
  @SubscribeMessage('search')
  search() {
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

async function moduleApp(prefix: string, options: Partial<WsRateLimitModuleOptions>): Promise<WsRateLimitService> {
  const running = await startApp({
    imports: [
      WsRateLimitModule.forRoot({
        useEnv: false,
        metrics: false,
        store: 'redis',
        keyPrefix: prefix,
        redis: { url: server.url, commandTimeoutMs: 3000, reservationBatch: 64 },
        global: { capacity: 100, refillRate: 0.001 },
        expensive: { max: 100, windowMs: 60_000 },
        connection: { capacity: 1000, refillRate: 1000 },
        tracker: (client) => (client as FakeSocket).user,
        planResolver: (client) => (client as FakeSocket).plan,
        ...options,
      }),
    ],
    providers: [ChatGateway],
  });
  apps.push(running);
  return running.app.get(WsRateLimitService);
}

async function admitted(service: WsRateLimitService, socket: FakeSocket, type: string, count: number): Promise<number> {
  // `consume` from code takes `expensive` from its caller, not from the handler's @Throttle.
  const request = type === 'search' ? { type, expensive: true } : { type };
  let allowed = 0;
  for (let i = 0; i < count; i++) if ((await service.consume(socket, request)).allowed) allowed++;
  return allowed;
}

/** Every key under a prefix, and the fields of each tracker hash among them. */
async function layout(prefix: string): Promise<{ keys: string[]; fields: Record<string, string[]> }> {
  const keys = (await admin.keys(`${prefix}*`)).sort();
  const fields: Record<string, string[]> = {};
  for (const key of keys) if (key.endsWith(':~4')) fields[key] = (await admin.hkeys(key)).sort();
  return { keys, fields };
}

describe("plans' own keys through the module", () => {
  const plans = {
    premium: { global: { capacity: 500, refillRate: 200 }, types: { chat: { capacity: 10, refillRate: 0.001 } } },
    counter: { expensive: { algorithm: 'sliding-counter' as const, max: 100, windowMs: 60_000 } },
  };

  it('a connection switching plans 200 times: exact budgets per plan, one hash, fields bounded, a TTL', async () => {
    const prefix = freshPrefix();
    const service = await moduleApp(prefix, { plans });
    const free = fakeSocket('u-switch');
    const premium = fakeSocket('u-switch', 'premium');
    const counter = fakeSocket('u-switch', 'counter');
    let freeChat = 0;
    let premiumChat = 0;
    for (let i = 0; i < 100; i++) {
      freeChat += await admitted(service, free, 'chat', 1);
      premiumChat += await admitted(service, premium, 'chat', 1);
      if (i % 10 === 0) await admitted(service, counter, 'search', 1);
    }
    // Free: the module's 3; premium: its own 10. Neither spends the other's.
    expect([freeChat, premiumChat]).toEqual([3, 10]);
    const { keys, fields } = await layout(prefix);
    // One key for the user: its tracker hash (no log outgrew its field: one search in ten).
    expect(keys.filter((key) => !key.endsWith('probe') && !key.endsWith('blocks'))).toHaveLength(1);
    const names = Object.values(fields)[0]!.filter((field) => !field.startsWith('~'));
    // Every bucket's field names its figures (the module's too, since buckets were keyed by figures).
    expect(names).toEqual(
      [':@10/0.001:t:chat', ':@500/200:g', ':@100/0.001:g', ':@3/0.001:t:chat', ':@100/0.001:t:search', ':xc'].sort(),
    );
    // Reservation owner marks (~o<field>) at most one per bucket field, and ~e.
    expect(Object.values(fields)[0]!.length).toBeLessThanOrEqual(2 * names.length + 1);
    const ttl = await admin.pttl(Object.keys(fields)[0]!);
    expect(ttl).toBeGreaterThan(0);
  });

  it("reset of a socket on a plan, and of the tracker's name, remove plan fields and a log's sorted set; full budgets after", async () => {
    const prefix = freshPrefix();
    const service = await moduleApp(prefix, { plans });
    const premium = fakeSocket('u-reset', 'premium');
    const free = fakeSocket('u-reset');
    expect(await admitted(service, premium, 'chat', 12)).toBe(10);
    expect(await admitted(service, free, 'chat', 5)).toBe(3);
    // 70 expensive searches: the log (max 100) outgrows its field into a sorted set at `...:x`.
    expect(await admitted(service, premium, 'search', 70)).toBe(70);
    expect((await layout(prefix)).keys.filter((key) => key.endsWith(':x'))).toHaveLength(1);
    await service.reset(premium);
    const after = await layout(prefix);
    expect(after.keys.filter((key) => key.endsWith(':x'))).toEqual([]);
    for (const names of Object.values(after.fields)) {
      expect(names.filter((field) => !field.startsWith('~'))).toEqual([]);
    }
    expect(await admitted(service, premium, 'chat', 12)).toBe(10);
    expect(await admitted(service, free, 'chat', 5)).toBe(3);
    await service.reset('u-reset');
    expect(await admitted(service, premium, 'chat', 12)).toBe(10);
    expect(await admitted(service, free, 'chat', 5)).toBe(3);
  });

  it('two instances with different plans on one Redis: a bucket of equal figures is shared, others are not', async () => {
    const prefix = freshPrefix();
    // Instance A: premium as above. Instance B: a "premium" of other global figures but the same
    // chat figures, and no "counter" plan (those connections get the module's limits there).
    const a = await moduleApp(prefix, { plans });
    const b = await moduleApp(prefix, {
      plans: {
        premium: { global: { capacity: 8, refillRate: 0.001 }, types: { chat: { capacity: 10, refillRate: 0.001 } } },
      },
    });
    // One user connected to each instance (a socket is its own application's: each has its own).
    const onA = fakeSocket('u-two', 'premium');
    const onB = fakeSocket('u-two', 'premium');
    let chat = 0;
    for (let i = 0; i < 10; i++) chat += (await admitted(a, onA, 'chat', 1)) + (await admitted(b, onB, 'chat', 1));
    // One chat bucket of 10 (same figures, same key `@10/0.001:t:chat`) across both instances;
    // B's global (8) is its own key, so it refused at most B's ninth message, never A's.
    expect(chat).toBe(10);
    const b2 = fakeSocket('u-two-b', 'premium');
    expect(await admitted(b, b2, 'search', 12)).toBe(8);
    const names = Object.values((await layout(prefix)).fields)
      .flat()
      .filter((field) => !field.startsWith('~'));
    expect(new Set(names)).toEqual(
      new Set([':@10/0.001:t:chat', ':@500/200:g', ':@8/0.001:g', ':@100/0.001:t:search', ':x']),
    );
  });
});

// ---------------------------------------------------------------------------------------
// 4. Key prefixes with odd characters, and with braces
// ---------------------------------------------------------------------------------------
describe('key prefixes', () => {
  it('a prefix of odd characters (spaces, glob characters, a newline, a backslash, UTF-8) keeps exact decisions, one tag per tracker, and resets', async () => {
    const prefix = 'odd prefix*?[x]\\\n\u00e9\u6f22:';
    const store = await makeStore({ keyPrefix: prefix });
    const log = windowSpec('expensive', 'x', 'sliding-log', 80, 60_000);
    const plan = planOf(store, 'user:odd-prefix', [planBucket, log]);
    expect(plan.tiers.every((tier) => tier.key.startsWith(prefix))).toBe(true);
    expect(new Set(plan.tiers.map((tier) => hashTag(tier.key))).size).toBe(1);
    expect(await outcomes(store, plan, 7)).toEqual([true, true, true, true, true, false, false]);
    await store.delete(plan.tiers.map((tier) => tier.key));
    expect(await outcomes(store, plan, 6)).toEqual([true, true, true, true, true, false]);
    const keys = await admin.keys('odd prefix\\*\\?\\[x]*');
    expect(keys.length).toBeGreaterThan(0);
    expect(keys.every((key) => key.startsWith(prefix))).toBe(true);
  });

  it("a client's own keyPrefix of odd characters wins and is applied once", async () => {
    const client = new RedisClient({
      host: '127.0.0.1',
      port: server.port,
      keyPrefix: 'own prefix:\u00e9:',
      maxRetriesPerRequest: 0,
    });
    client.on('error', () => undefined);
    opened.clients.push(client);
    await ready(client);
    const store = new RedisRateLimitStore({ client, keyPrefix: 'ignored:', commandTimeoutMs: 3000, blockCache: false });
    opened.stores.push(store);
    const plan = planOf(store, 'user:own-prefix', [planBucket]);
    expect(await outcomes(store, plan, 6)).toEqual([true, true, true, true, true, false]);
    const keys = await admin.keys('own prefix:*');
    expect(keys).toEqual([`own prefix:\u00e9:${hashOf(plan)}`]);
    expect(await admin.keys('ignored:*')).toEqual([]);
  });

  it('a prefix with a brace is refused before anything is written', async () => {
    await expect(createRedisStore({ url: server.url, keyPrefix: 'a{b}:' })).rejects.toThrow(/keyPrefix/);
    await expect(createRedisStore({ url: server.url, keyPrefix: 'a}:' })).rejects.toThrow(/keyPrefix/);
    expect(await admin.keys('a{b}:*')).toEqual([]);
  });

  it('WS_RATE_LIMIT_KEY_PREFIX with a brace stops start-up naming the variable', async () => {
    // DESIGN.md: "Every option can come from environment variables prefixed WS_RATE_LIMIT_, read
    // through @nestjs/config; invalid values stop start-up with an error naming the variable."
    // The brace rule is the Redis store's (validate-options.ts): its error says "redis store
    // option keyPrefix", so an operator who set only the variable is not told which one.
    let message = '';
    await withEnv(
      { WS_RATE_LIMIT_STORE: 'redis', WS_RATE_LIMIT_REDIS_URL: server.url, WS_RATE_LIMIT_KEY_PREFIX: 'tenant{1}:' },
      async () => {
        try {
          const running = await startApp({ imports: [WsRateLimitModule.forRoot()], providers: [ChatGateway] });
          apps.push(running);
        } catch (error) {
          message = (error as Error).message;
        }
      },
    );
    expect(message).toMatch(/keyPrefix|KEY_PREFIX/);
    expect(message).toContain('WS_RATE_LIMIT_KEY_PREFIX');
  });
});

// ---------------------------------------------------------------------------------------
// 5. A Cluster: every key of a tracker in one slot, plans' own keys included
// ---------------------------------------------------------------------------------------
describe('plans on a three-master Cluster', () => {
  let cluster: RedisCluster;
  let store: RedisRateLimitStore;

  beforeAll(async () => {
    cluster = await startCluster();
    store = await createRedisStore({
      cluster: { nodes: [...cluster.startupNodes] },
      keyPrefix: 'cl:',
      commandTimeoutMs: 3000,
      reservations: { maxBatch: 64, ttlMs: 1000 },
    });
    looseStores.push(store);
  }, 60_000);

  afterAll(async () => {
    await store?.close().catch(() => undefined);
    await cluster?.stop();
  });

  it('plan buckets, a log in its sorted set and leases: one slot per tracker, no CROSSSLOT, exact counts, reset', async () => {
    const log = windowSpec('expensive', 'x', 'sliding-log', 100, 60_000);
    const counter = windowSpec('expensive', 'xc', 'sliding-counter', 100, 60_000);
    const errors: string[] = [];
    const counts: number[] = [];
    const trackers = Array.from({ length: 12 }, (_, i) => `user:cl-${i}`);
    for (const tracker of trackers) {
      // Reservable (buckets only), per call (a log, outgrowing its field), a counter, a lease.
      const plans = [
        planOf(store, tracker, [planBucket, planType]),
        planOf(store, tracker, [tokenBucketSpec('global', '@900/450:g', 70, 0.001), log]),
        planOf(store, tracker, [tokenBucketSpec('type', '@3/0.001:t:x', 3, 0.001), counter]),
        planOf(store, tracker, [concurrencySpec('concurrency', 'cc', 2)]),
      ];
      for (const [plan, n] of [
        [plans[0]!, 6],
        [plans[1]!, 72],
        [plans[2]!, 4],
        [plans[3]!, 3],
      ] as const) {
        const result = await outcomes(store, plan, n);
        counts.push(result.filter((outcome) => outcome === true).length);
        errors.push(...result.filter((outcome): outcome is string => typeof outcome === 'string'));
      }
      await store.release(plans[3]!);
    }
    expect(errors).toEqual([]);
    expect(counts).toEqual(trackers.flatMap(() => [4, 70, 3, 2]));
    // Every key under the prefix, on every master: one slot per tracker's tag.
    const keys: string[] = [];
    for (const node of cluster.nodes) {
      const found = (await node.command('KEYS', 'cl:{*')) as string[];
      keys.push(...found);
    }
    const slots = await keySlots(cluster.nodes[0]!.port, keys);
    const byTag = new Map<string, Set<number>>();
    keys.forEach((key, i) => {
      const tag = hashTag(key);
      if (!byTag.has(tag)) byTag.set(tag, new Set());
      byTag.get(tag)!.add(slots[i]!);
    });
    expect(byTag.size).toBe(trackers.length);
    expect([...byTag.values()].every((set) => set.size === 1)).toBe(true);
    // The logs outgrew their fields: a sorted set per tracker, in its tracker's slot.
    expect(keys.filter((key) => key.endsWith(':x'))).toHaveLength(trackers.length);
    // A reset of every tier key of one tracker: one script per tracker, same slot.
    const first = trackers[0]!;
    const suffixes = ['@500/200:g', '@10/0.001:t:chat', '@900/450:g', 'x', '@3/0.001:t:x', 'xc'];
    await store.delete(suffixes.map((suffix) => store.key(first, suffix)));
    expect(await outcomes(store, planOf(store, first, [planBucket, planType]), 5)).toEqual([
      true,
      true,
      true,
      true,
      false,
    ]);
  }, 60_000);
});
