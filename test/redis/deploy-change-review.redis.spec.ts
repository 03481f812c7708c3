/**
 * Review: what happens to stored limiter state when a team changes its limits between deploys,
 * or runs two versions side by side during a rolling deploy, on the memory store (same store
 * object, new plan) and on the Redis store (a new store, or a new app, on the same Redis);
 * token reservations across such a change; keys left by earlier key layouts and foreign values
 * at a tracker's keys. Reviewed on commit b96c489.
 *
 * Five cases failed on b96c489, with one cause (each retitled since to what it checks now,
 * "it was ..." saying what failed): a token bucket's whole state is `fullAt`, a time that
 * means tokens only at the rate that wrote it, as lib/plans/route-resolver.ts's
 * `figuresSuffix` note says; plans got a key naming their figures for that reason, but the
 * module's and @Throttle's own figures kept `g` / `t:<type>` / `cr` whatever they were, so
 * after a deploy the old debt was read at the new figures. Now every bucket the module makes
 * is keyed by its figures (`@<capacity>/<refillRate>:g`): new figures start full, and two
 * versions side by side each count on their own field (README, "Changing a bucket's
 * figures"). The store API keys a tier by its spec's suffix alone, as before: the store-level
 * cases below now show both sides (one suffix for both figures reads the old debt, as README
 * says; suffixes made with `figuresSuffix`, as the module's, start the new figures full).
 * Clamping an old debt to the new figures' empty bucket instead was tried and dropped: written
 * back, it forgave the old figures' debt at every refusal of an instance with the new ones, so
 * a rolling deploy admitted 130 where the old figures allow 102 (the reservations case below).
 * The cases as filed:
 * - memory: capacity lowered 100 -> 10 (1/s) after a client spent 50: its next message is
 *   refused for ~41 s, where a 10-burst bucket at 1/s never makes one message wait over 1 s.
 * - memory: refill rate raised 1/s -> 10/s (a loosening) after a client spent 50 of 100: its
 *   next message is refused for ~40 s although it has half its burst left.
 * - Redis: a new store (the next deploy) with capacity lowered 100 -> 10: the same ~41 s block.
 * - Redis, rolling deploy: while an instance on 1/s admits a client's burst of 100, the
 *   instance still on 100/s refuses that client for ~99 s (either version's figures make it
 *   wait at most 1 s).
 * - NestJS app restarted on the same Redis with a handler's @Throttle refill rate raised
 *   1/s -> 10/s: a client that used half its burst gets a rate_limit frame asking it to wait
 *   ~40 s, after a deploy that only loosened its limit.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { Redis } from 'ioredis';
import type { RateLimitDecision, TierSpec } from '../../lib/interfaces/plan.interface.js';
import {
  MemoryRateLimitStore,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  createPlan,
  tokenBucketSpec,
  windowSpec,
} from '../../lib/index.js';
import { figuresSuffix } from '../../lib/store.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { trackerHash } from '../../lib/storage/redis/redis-keys.js';
import { startApp, type RunningApp } from '../support/app.js';
import { fieldTtlRedisServer, startRedis, type RedisServer } from '../support/redis-server.js';
import { TestClient } from '../support/ws-client.js';
import { adminClient, closeClient, openStore, ready, type OpenedStores } from './helpers.js';

/** A memory store on a clock the test moves (ms). */
function manualMemory(): { store: MemoryRateLimitStore; clock: { now: number } } {
  const clock = { now: 1_000_000 };
  return { store: new MemoryRateLimitStore({ clock: () => clock.now }), clock };
}

/** The wait a decision asks for: 0 when allowed. */
const waitOf = (decision: RateLimitDecision): number => (decision.allowed ? 0 : decision.retryAfter);

/** Decisions of `count` consumes of one plan on the memory store, in a row (no time passes). */
function burstMemory(store: MemoryRateLimitStore, tracker: string, specs: readonly TierSpec[], count: number): number {
  const plan = createPlan(store, tracker, specs);
  let admitted = 0;
  for (let i = 0; i < count; i++) if (store.consume(plan).allowed) admitted++;
  return admitted;
}

/** Allowed decisions of `count` sequential consumes of one plan on a Redis store. */
async function burstRedis(store: RedisRateLimitStore, tracker: string, specs: readonly TierSpec[], count: number) {
  const plan = createPlan(store, tracker, specs);
  let admitted = 0;
  let last: RateLimitDecision | undefined;
  for (let i = 0; i < count; i++) {
    last = await store.consume(plan);
    if (last.allowed) admitted++;
  }
  return { admitted, last: last! };
}

// ---------------------------------------------------------------------------------------
// 1. Memory store: the same store object, a new plan with new figures
// ---------------------------------------------------------------------------------------
describe('memory store: a plan with new figures on the same store', () => {
  it('capacity lowered 100 -> 10 (1/s) after a client spent 50: under suffixes keyed by figures (as the module makes them) the new bucket starts full; under one suffix the old debt counts, as README says (it was filed as a ~41 s wait)', () => {
    const { store, clock } = manualMemory();
    const bucket = (capacity: number, rate: number, suffix = figuresSuffix('g', capacity, rate)) =>
      tokenBucketSpec('global', suffix, capacity, rate);
    expect(burstMemory(store, 'ip:203.0.113.1', [bucket(100, 1)], 50)).toBe(50);
    expect(burstMemory(store, 'ip:203.0.113.9', [bucket(100, 1, 'g')], 50)).toBe(50);
    clock.now += 10;
    expect(burstMemory(store, 'ip:203.0.113.1', [bucket(10, 1)], 12)).toBe(10);
    const shared = store.consume(createPlan(store, 'ip:203.0.113.9', [bucket(10, 1, 'g')]));
    expect(waitOf(shared)).toBeGreaterThan(30_000);
  });

  it('refill rate raised 1/s -> 10/s after a client spent 50 of 100: under suffixes keyed by figures the next message passes (it was refused for ~40 s)', () => {
    const { store, clock } = manualMemory();
    const bucket = (rate: number) => tokenBucketSpec('global', figuresSuffix('g', 100, rate), 100, rate);
    expect(burstMemory(store, 'ip:203.0.113.2', [bucket(1)], 50)).toBe(50);
    clock.now += 10;
    const next = store.consume(createPlan(store, 'ip:203.0.113.2', [bucket(10)]));
    expect(next).toEqual(expect.objectContaining({ allowed: true }));
  });

  it('refill rate lowered 100/s -> 1/s on an exhausted bucket: never more than the new capacity at once, then paced at the new rate', () => {
    const { store, clock } = manualMemory();
    expect(burstMemory(store, 'ip:203.0.113.3', [tokenBucketSpec('global', 'g', 100, 100)], 120)).toBe(100);
    const slow = [tokenBucketSpec('global', 'g', 100, 1)];
    // (Today: 99, the old debt of one second read at 1/s: nearly a fresh burst.)
    const admitted = burstMemory(store, 'ip:203.0.113.3', slow, 150);
    expect(admitted).toBeLessThanOrEqual(100);
    const refused = store.consume(createPlan(store, 'ip:203.0.113.3', slow));
    expect(refused.allowed).toBe(false);
    expect(waitOf(refused)).toBeLessThanOrEqual(1000);
    clock.now += waitOf(refused);
    expect(burstMemory(store, 'ip:203.0.113.3', slow, 3)).toBe(1);
  });

  it('capacity raised 10 -> 100 on an exhausted bucket: the burst in all stays within the new capacity', () => {
    const { store } = manualMemory();
    const before = burstMemory(store, 'ip:203.0.113.4', [tokenBucketSpec('global', 'g', 10, 1)], 20);
    expect(before).toBe(10);
    const after = burstMemory(store, 'ip:203.0.113.4', [tokenBucketSpec('global', 'g', 100, 1)], 200);
    expect(before + after).toBeLessThanOrEqual(100);
    expect(before + after).toBeGreaterThanOrEqual(99);
  });

  it('cost raised 1 -> 5 with 50 tokens left: exactly 10 more messages, then a wait of at most one message', () => {
    const { store, clock } = manualMemory();
    expect(burstMemory(store, 'ip:203.0.113.5', [tokenBucketSpec('global', 'g', 100, 1)], 50)).toBe(50);
    const costly = [tokenBucketSpec('global', 'g', 100, 1, 5)];
    expect(burstMemory(store, 'ip:203.0.113.5', costly, 20)).toBe(10);
    const refused = store.consume(createPlan(store, 'ip:203.0.113.5', costly));
    expect(waitOf(refused)).toBeGreaterThan(0);
    expect(waitOf(refused)).toBeLessThanOrEqual(5000);
    clock.now += waitOf(refused);
    expect(store.consume(createPlan(store, 'ip:203.0.113.5', costly)).allowed).toBe(true);
  });

  it('sliding log: limit lowered below the events held refuses until they leave; a shorter window forgets older events, a longer one counts them', () => {
    const { store, clock } = manualMemory();
    const tracker = 'user:log';
    expect(burstMemory(store, tracker, [windowSpec('expensive', 'x', 'sliding-log', 10, 60_000)], 10)).toBe(10);
    // Lowered to 3 with 10 held: refused until 8 of them left the window (all at once here).
    const lowered = [windowSpec('expensive', 'x', 'sliding-log', 3, 60_000)];
    const refused = store.consume(createPlan(store, tracker, lowered));
    expect(refused.allowed).toBe(false);
    expect(waitOf(refused)).toBeLessThanOrEqual(60_000);
    clock.now += 30_000;
    // A window of 10 s no longer sees the events of 30 s ago: exactly its limit.
    expect(burstMemory(store, tracker, [windowSpec('expensive', 'x', 'sliding-log', 3, 10_000)], 5)).toBe(3);
    clock.now += 15_000;
    // Lengthened again to 60 s: the 13 events of the last 45 s all count against 20.
    expect(burstMemory(store, tracker, [windowSpec('expensive', 'x', 'sliding-log', 20, 60_000)], 20)).toBe(7);
    // Raised above what a packed log holds (16), and back: no throw, exact counts.
    expect(burstMemory(store, tracker, [windowSpec('expensive', 'x', 'sliding-log', 40, 60_000)], 30)).toBe(20);
    expect(burstMemory(store, tracker, [windowSpec('expensive', 'x', 'sliding-log', 5, 60_000)], 3)).toBe(0);
  });

  it('algorithm switched under one tier name (bucket -> sliding log -> sliding counter -> bucket): each starts afresh, exactly its limit, no throw', () => {
    const { store, clock } = manualMemory();
    const tracker = 'user:switch';
    const bucket = [tokenBucketSpec('type', 't:search', 5, 0.01)];
    const log = [windowSpec('type', 't:search', 'sliding-log', 4, 60_000)];
    const counter = [windowSpec('type', 't:search', 'sliding-counter', 3, 60_000)];
    expect(burstMemory(store, tracker, bucket, 8)).toBe(5);
    clock.now += 1;
    expect(burstMemory(store, tracker, log, 8)).toBe(4);
    clock.now += 1;
    expect(burstMemory(store, tracker, counter, 8)).toBe(3);
    clock.now += 1;
    expect(burstMemory(store, tracker, bucket, 8)).toBe(5);
    clock.now += 1;
    expect(burstMemory(store, tracker, log, 8)).toBe(4);
    // Peeking under each shape answers without throwing.
    for (const specs of [bucket, log, counter]) expect(store.peek(createPlan(store, tracker, specs))).toHaveLength(1);
  });
});

// ---------------------------------------------------------------------------------------
// 2. Redis store: a new store (the next deploy), or two at once (a rolling deploy)
// ---------------------------------------------------------------------------------------
describe('Redis store: figures changed across deploys on one Redis', () => {
  let server: RedisServer;
  let admin: Redis;
  const opened: OpenedStores = { clients: [], stores: [] };
  let prefixes = 0;
  const freshPrefix = () => `dep${++prefixes}:`;
  const store = (prefix: string, extra: { reservations?: boolean | { maxBatch?: number; ttlMs?: number } } = {}) =>
    openStore(server.port, opened, { keyPrefix: prefix, commandTimeoutMs: 3000, ...extra });

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    await ready(admin);
  });
  afterAll(async () => {
    await Promise.all(opened.stores.map((s) => s.close().catch(() => undefined)));
    await Promise.all(opened.clients.map(closeClient));
    if (admin) await closeClient(admin);
    await server?.stop();
  });

  it('a new store with capacity lowered 100 -> 10 (1/s): under suffixes keyed by figures a client that spent 50 gets the new burst (it was refused for ~41 s)', async () => {
    const prefix = freshPrefix();
    const before = await store(prefix);
    const bucket = (capacity: number) => [tokenBucketSpec('global', figuresSuffix('g', capacity, 1), capacity, 1)];
    expect((await burstRedis(before, 'ip:198.51.100.1', bucket(100), 50)).admitted).toBe(50);
    const after = await store(prefix);
    const { admitted, last } = await burstRedis(after, 'ip:198.51.100.1', bucket(10), 12);
    expect(admitted).toBe(10);
    expect(waitOf(last)).toBeLessThanOrEqual(1000);
  });

  it('a new store with the refill rate lowered 100/s -> 1/s on an exhausted bucket: never more than the new capacity at once', async () => {
    const prefix = freshPrefix();
    const before = await store(prefix);
    expect(
      (await burstRedis(before, 'ip:198.51.100.2', [tokenBucketSpec('global', 'g', 100, 100)], 100)).admitted,
    ).toBeGreaterThanOrEqual(100);
    const after = await store(prefix);
    const { admitted, last } = await burstRedis(
      after,
      'ip:198.51.100.2',
      [tokenBucketSpec('global', 'g', 100, 1)],
      150,
    );
    expect(admitted).toBeLessThanOrEqual(100);
    expect(last.allowed).toBe(false);
    expect(waitOf(last)).toBeLessThanOrEqual(1000);
  });

  it('sliding log limit lowered below the events held (in its field and in its sorted set), window shortened, algorithm switched: no error, exact limits', async () => {
    const prefix = freshPrefix();
    const v1 = await store(prefix);
    // 10 events in the field, 80 in the sorted set (past 64 a log moves there).
    expect(
      (await burstRedis(v1, 'user:small', [windowSpec('expensive', 'x', 'sliding-log', 10, 60_000)], 12)).admitted,
    ).toBe(10);
    expect(
      (await burstRedis(v1, 'user:large', [windowSpec('expensive', 'x', 'sliding-log', 80, 60_000)], 85)).admitted,
    ).toBe(80);
    expect(await admin.type(v1.key('user:large', 'x'))).toBe('zset');
    const v2 = await store(prefix);
    const lowered = [windowSpec('expensive', 'x', 'sliding-log', 3, 60_000)];
    for (const tracker of ['user:small', 'user:large']) {
      const { admitted, last } = await burstRedis(v2, tracker, lowered, 3);
      expect(admitted).toBe(0);
      expect(waitOf(last)).toBeGreaterThan(0);
      expect(waitOf(last)).toBeLessThanOrEqual(60_000);
    }
    // A window of 300 ms: the events of more than 300 ms ago no longer count.
    await new Promise((resolve) => setTimeout(resolve, 600));
    const v3 = await store(prefix);
    const short = [windowSpec('expensive', 'x', 'sliding-log', 3, 300)];
    expect((await burstRedis(v3, 'user:small', short, 5)).admitted).toBe(3);
    expect((await burstRedis(v3, 'user:large', short, 5)).admitted).toBe(3);
    // The algorithm switched under the same tier name by each next deploy: a fresh state each
    // time, never an error.
    const bucket = [tokenBucketSpec('expensive', 'x', 4, 0.01)];
    expect((await burstRedis(await store(prefix), 'user:large', bucket, 6)).admitted).toBe(4);
    const counter = [windowSpec('expensive', 'x', 'sliding-counter', 2, 60_000)];
    expect((await burstRedis(await store(prefix), 'user:large', counter, 4)).admitted).toBe(2);
    const log = [windowSpec('expensive', 'x', 'sliding-log', 70, 60_000)];
    expect((await burstRedis(await store(prefix), 'user:large', log, 72)).admitted).toBe(70);
    expect(await admin.type(v1.key('user:large', 'x'))).toBe('zset');
    expect((await burstRedis(await store(prefix), 'user:large', bucket, 6)).admitted).toBe(4);
  });

  it('sliding counter: limit lowered below the count held waits at most two windows; window changed: no error, never over the new limit', async () => {
    const prefix = freshPrefix();
    const v1 = await store(prefix);
    expect(
      (await burstRedis(v1, 'user:c', [windowSpec('expensive', 'xc', 'sliding-counter', 10, 60_000)], 10)).admitted,
    ).toBe(10);
    const v2 = await store(prefix);
    const { admitted, last } = await burstRedis(
      v2,
      'user:c',
      [windowSpec('expensive', 'xc', 'sliding-counter', 3, 60_000)],
      3,
    );
    expect(admitted).toBe(0);
    expect(waitOf(last)).toBeGreaterThan(0);
    expect(waitOf(last)).toBeLessThanOrEqual(120_000);
    const v3 = await store(prefix);
    const shorter = await burstRedis(v3, 'user:c', [windowSpec('expensive', 'xc', 'sliding-counter', 4, 7_000)], 8);
    expect(shorter.admitted).toBeLessThanOrEqual(4);
    const v4 = await store(prefix);
    const longer = await burstRedis(v4, 'user:c', [windowSpec('expensive', 'xc', 'sliding-counter', 12, 120_000)], 20);
    expect(longer.admitted).toBeLessThanOrEqual(12);
  });

  it('rolling deploy, 100/s and 1/s side by side under suffixes keyed by figures: each version its own budget, and the 100/s one never refuses for long (it refused for ~99 s)', async () => {
    const prefix = freshPrefix();
    const fast = await store(prefix);
    const slow = await store(prefix);
    const tracker = 'ip:198.51.100.9';
    const bucket = (rate: number) => [tokenBucketSpec('global', figuresSuffix('g', 100, rate), 100, rate)];
    const fastPlan = createPlan(fast, tracker, bucket(100));
    const slowPlan = createPlan(slow, tracker, bucket(1));
    // The client's messages alternate between the instances (a load balancer); neither errors.
    let fastAdmitted = 0;
    let slowAdmitted = 0;
    const began = performance.now();
    for (let i = 0; i < 150; i++) {
      const [a, b] = await Promise.all([fast.consume(fastPlan), slow.consume(slowPlan)]);
      if (a.allowed) fastAdmitted++;
      if (b.allowed) slowAdmitted++;
    }
    // Each version within its own figures (README: a client served by both may get both budgets).
    // (100 and the 1/s refill over the time the loop took: one on a quiet machine.)
    expect(slowAdmitted).toBeLessThanOrEqual(100 + Math.ceil((performance.now() - began) / 1000));
    expect(fastAdmitted + slowAdmitted).toBeLessThanOrEqual(200 + 100 * 10);
    // (A refusal the fast instance cached early, with a wait of a few ms, lapses first.)
    await new Promise((resolve) => setTimeout(resolve, 100));
    const next = await fast.consume(fastPlan);
    // Either version makes one message wait at most 1 s (1/s); 100/s at most 10 ms.
    expect(waitOf(next)).toBeLessThanOrEqual(1000);
  });

  it('rolling deploy: one instance restarted with reservations off, the other keeping them on: together never over the bucket, no error', async () => {
    const prefix = freshPrefix();
    const reserving = await store(prefix, { reservations: { maxBatch: 64, ttlMs: 1000 } });
    const perCall = await store(prefix);
    const tracker = 'ip:198.51.100.10';
    const specs = [tokenBucketSpec('global', 'g', 20, 20)];
    const a = createPlan(reserving, tracker, specs);
    const b = createPlan(perCall, tracker, specs);
    let admitted = 0;
    let errors = 0;
    const start = Date.now();
    // About 1.5 s of a client flooding both instances (bounded: 300 rounds at most).
    for (let i = 0; i < 300 && Date.now() - start < 1500; i++) {
      if (i > 0) await new Promise((resolve) => setTimeout(resolve, 5));
      const decisions = await Promise.all(
        [reserving.consume(a), reserving.consume(a), perCall.consume(b)].map((p) =>
          Promise.resolve(p).catch(() => {
            errors++;
            return undefined;
          }),
        ),
      );
      for (const decision of decisions) if (decision?.allowed) admitted++;
    }
    const elapsed = Date.now() - start;
    expect(errors).toBe(0);
    expect(admitted).toBeGreaterThanOrEqual(20);
    expect(admitted).toBeLessThanOrEqual(20 + Math.ceil((20 * elapsed) / 1000) + 1);
  });

  it('reservations: an instance holding a batch under capacity 100 while the next version (capacity 10) decides per call: each within its own figures, no error', async () => {
    const prefix = freshPrefix();
    const old = await store(prefix, { reservations: { maxBatch: 64, ttlMs: 1000 } });
    const next = await store(prefix);
    const tracker = 'ip:198.51.100.11';
    const oldPlan = createPlan(old, tracker, [tokenBucketSpec('global', 'g', 100, 50)]);
    const newPlan = createPlan(next, tracker, [tokenBucketSpec('global', 'g', 10, 50)]);
    const start = Date.now();
    let oldAdmitted = 0;
    for (let i = 0; i < 30; i++) if ((await old.consume(oldPlan)).allowed) oldAdmitted++;
    let newAdmitted = 0;
    for (let i = 0; i < 100; i++) {
      const [a, b] = await Promise.all([old.consume(oldPlan), next.consume(newPlan)]);
      if (a.allowed) oldAdmitted++;
      if (b.allowed) newAdmitted++;
    }
    const seconds = (Date.now() - start) / 1000;
    expect(oldAdmitted + newAdmitted).toBeLessThanOrEqual(100 + Math.ceil(50 * seconds) + 1);
    expect(newAdmitted).toBeLessThanOrEqual(10 + Math.ceil(50 * seconds) + 1);
  });
});

// ---------------------------------------------------------------------------------------
// 3. Keys of earlier layouts and foreign values at a tracker's keys
// ---------------------------------------------------------------------------------------
const fieldTtlBinary = fieldTtlRedisServer();
describe.each([
  ['the default redis-server', undefined],
  // Without a Redis that has hash-field TTLs on this machine, the same cases run on the default one.
  [
    fieldTtlBinary === undefined ? 'the default redis-server (no field-TTL build here)' : 'Redis with hash-field TTLs',
    fieldTtlBinary,
  ],
])('keys left by earlier layouts, and foreign values, on %s', (_name, binary) => {
  let server: RedisServer;
  let admin: Redis;
  const opened: OpenedStores = { clients: [], stores: [] };

  beforeAll(async () => {
    server = await startRedis([], binary);
    admin = adminClient(server.port);
    await ready(admin);
  });
  afterAll(async () => {
    await Promise.all(opened.stores.map((s) => s.close().catch(() => undefined)));
    await Promise.all(opened.clients.map(closeClient));
    if (admin) await closeClient(admin);
    await server?.stop();
  });

  it('layouts 1, 2 and 3 (all saying "blocked for a day"), then a list, a string and a sorted set at the tracker hash: never an error, never over capacity', async () => {
    const prefix = 'old:';
    // No block cache: the same tracker is refused, then planted with foreign values, in turn.
    const store = await openStore(server.port, opened, {
      keyPrefix: prefix,
      commandTimeoutMs: 3000,
      blockCache: false,
    });
    await store.evictionPolicyChecked;
    const tracker = 'ip:192.0.2.7';
    const tag = `${prefix}{${trackerHash(tracker)}}`;
    const day = String(Date.now() + 86_400_000);
    // Layout 1: a string per bucket at its tier key; layout 2: the hash ...}:~2 with text;
    // layout 3: the hash ...}:~3 with 17-digit text; a log's sorted set at its tier key (layout 2).
    await admin.set(`${tag}:g`, day, 'PX', 60_000);
    await admin.hset(`${tag}:~2`, ':g', day);
    await admin.pexpire(`${tag}:~2`, 60_000);
    await admin.hset(`${tag}:~3`, ':g', day, ':t:chat', day);
    await admin.pexpire(`${tag}:~3`, 60_000);
    for (let i = 0; i < 10; i++) await admin.zadd(`${tag}:x`, Date.now(), `old-${i}`);
    await admin.pexpire(`${tag}:x`, 60_000);
    const specs = [
      tokenBucketSpec('global', 'g', 6, 0.01),
      tokenBucketSpec('type', 't:chat', 5, 0.01),
      windowSpec('expensive', 'x', 'sliding-log', 4, 60_000),
    ];
    // Never read: exactly a fresh budget, the smallest tier's.
    expect((await burstRedis(store, tracker, specs, 8)).admitted).toBe(4);
    // Foreign values of the wrong type at the tracker hash: dropped, a fresh budget, no error.
    const hash = `${tag}:~4`;
    for (const plant of [
      () => admin.rpush(hash, 'a', 'b'),
      () => admin.set(hash, 'not a hash'),
      () => admin.zadd(hash, 1, 'm'),
    ]) {
      await admin.del(hash, `${tag}:x`);
      await plant();
      const { admitted } = await burstRedis(store, tracker, specs, 8);
      expect(admitted).toBe(4);
    }
    // The log's field saying "in the sorted set" while a string sits at its key.
    await admin.del(hash, `${tag}:x`);
    expect(
      (await burstRedis(store, tracker, [windowSpec('expensive', 'x', 'sliding-log', 70, 60_000)], 66)).admitted,
    ).toBe(66);
    expect(await admin.type(`${tag}:x`)).toBe('zset');
    await admin.del(`${tag}:x`);
    await admin.set(`${tag}:x`, 'foreign', 'PX', 60_000);
    const log = await burstRedis(store, tracker, [windowSpec('expensive', 'x', 'sliding-log', 70, 60_000)], 75);
    expect(log.admitted).toBeLessThanOrEqual(70);
    // Everything the store wrote expires: the key, or (hash-field TTLs) each of its fields.
    for (const key of await admin.keys(`${prefix}*`)) {
      const left = await admin.pttl(key);
      if (left === -1 && store.hashFieldTtls && (await admin.type(key)) === 'hash') {
        const fields = await admin.hkeys(key);
        const ttls = (await admin.call('HPTTL', key, 'FIELDS', String(fields.length), ...fields)) as number[];
        for (const ttl of ttls) expect(ttl).toBeGreaterThan(0);
      } else {
        expect(left).toBeGreaterThan(0);
      }
    }
  });
});

// ---------------------------------------------------------------------------------------
// 4. A NestJS app restarted with new @Throttle figures on the same Redis
// ---------------------------------------------------------------------------------------
@WebSocketGateway()
@WsRateLimit()
class ChatV1Gateway {
  @Throttle({ type: 'chat', capacity: 100, refillRate: 1 })
  @SubscribeMessage('chat')
  chat() {
    return { event: 'ack', data: 'v1' };
  }
}

/** The next release: the same type, its refill rate raised tenfold (a loosening). */
@WebSocketGateway()
@WsRateLimit()
class ChatV2Gateway {
  @Throttle({ type: 'chat', capacity: 100, refillRate: 10 })
  @SubscribeMessage('chat')
  chat() {
    return { event: 'ack', data: 'v2' };
  }
}

describe('a NestJS app restarted with new @Throttle figures on the same Redis', () => {
  let server: RedisServer;
  const apps: RunningApp[] = [];
  const clients: TestClient[] = [];

  const start = (gateway: new () => object) =>
    startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            metrics: false,
            store: 'redis',
            tracker: 'ip',
            keyPrefix: 'app:',
            global: { capacity: 1000, refillRate: 1000 },
            connection: { capacity: 100, refillRate: 100 },
            redis: { url: server.url, commandTimeoutMs: 3000 },
          }),
        ],
        providers: [gateway],
      },
      (app) => new WsRateLimitAdapter(app),
    ).then((running) => {
      apps.push(running);
      return running;
    });
  const connect = async (url: string) => {
    const client = await TestClient.connect(url, { perMessageDeflate: false });
    clients.push(client);
    return client;
  };

  beforeAll(async () => {
    server = await startRedis();
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (const running of apps.splice(0)) await running.close();
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('refill rate raised 1/s -> 10/s by a deploy: a client that used half its burst is served (it was told to wait ~40 s)', async () => {
    const v1 = await start(ChatV1Gateway);
    const first = await connect(v1.url);
    for (let i = 0; i < 50; i++) first.send('chat', i);
    const acks = await first.waitForEvent('ack', 50);
    expect(acks).toHaveLength(50);
    expect(first.events('rate_limit')).toHaveLength(0);
    await first.close();
    await v1.close();

    const v2 = await start(ChatV2Gateway);
    const second = await connect(v2.url);
    second.send('chat', 'after the deploy');
    const [answer] = await second.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit');
    // 50 of 100 left before the deploy, and a faster refill after it: the message passes.
    expect(answer).toEqual({ event: 'ack', data: 'v2' });
  });
});
