import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Redis } from 'ioredis';
import type { RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { fieldTtlModeOf, hasFieldTtls } from '../../lib/storage/redis/server-checks.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { adminClient, closeClient, commandCounts, expectBoundedTtls, ready, storeClient } from './helpers.js';

/**
 * Issue 13: key layout 4, one hash per tracker holding its buckets, counters and sliding
 * logs, every number as a little-endian double; keys of layouts 1, 2 and 3 left by an older
 * version are tolerated (never read, never an error).
 */
describe('Redis key layout 4: one hash per tracker', () => {
  let server: RedisServer;
  let admin: Redis;
  let client: Redis;
  let store: RedisRateLimitStore;

  const specs: TierSpec[] = [
    tokenBucketSpec('global', 'g', 10, 1),
    tokenBucketSpec('type', 't:chat', 5, 1),
    windowSpec('expensive', 'xc', 'sliding-counter', 3, 10_000),
    windowSpec('expensive', 'x', 'sliding-log', 4, 10_000),
    concurrencySpec('concurrency', 'cc', 2),
  ];
  const planOf = (tracker: string, chosen: readonly TierSpec[] = specs): RateLimitPlan => ({
    tracker,
    tiers: chosen.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
    lease: 'L',
  });

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    client = storeClient(server.port);
    await Promise.all([ready(admin), ready(client)]);
    store = new RedisRateLimitStore({ client, keyPrefix: 'lay:', blockCache: false, commandTimeoutMs: 2000 });
    await store.evictionPolicyChecked;
  });

  afterAll(async () => {
    await store?.close();
    await Promise.all([admin, client].filter(Boolean).map(closeClient));
    await server?.stop();
  });

  it('names its layout version, and reads hash-field TTL support from the server version', () => {
    expect(store.keyLayoutVersion).toBe(4);
    expect(hasFieldTtls('# Server\r\nredis_version:7.4.1\r\nredis_mode:standalone\r\n')).toBe(true);
    expect(hasFieldTtls('# Server\r\nredis_version:8.0.2\r\n')).toBe(true);
    expect(hasFieldTtls('# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\n')).toBe(false);
    expect(hasFieldTtls('# Server\r\nredis_version:7.0.15\r\n')).toBe(false);
    expect(hasFieldTtls(undefined)).toBe(false);
    expect([fieldTtlModeOf('redis_version:7.0.15'), fieldTtlModeOf('redis_version:7.4.2')]).toEqual([0, 1]);
    expect([fieldTtlModeOf('redis_version:8.0.2'), fieldTtlModeOf('redis_version:10.1.0')]).toEqual([2, 2]);
  });

  it('keeps every bucket, counter and sliding log of a tracker in one hash, with one TTL', async () => {
    const plan = planOf('user:one');
    expect((await store.consume(plan)).allowed).toBe(true);
    const hash = plan.tiers[0]!.key.replace(/:g$/, ':~4');
    const fields = await admin.hkeys(hash);
    // On a server with hash-field TTLs (WSRL_TEST_REDIS_SERVER), `field-ttls.redis.spec.ts`
    // checks the fields' own TTLs; here, that there is no `~e` then.
    const expiry = store.hashFieldTtls ? [] : ['~e'];
    expect(fields.sort()).toEqual([':g', ':t:chat', ':x', ':xc', ...expiry].sort());
    // Numbers as little-endian doubles: the bucket's fullAt (8 bytes: the event's time plus
    // one token's interval, 1 s), the counter's start, prev and curr (24 bytes).
    const bucket = await admin.hgetBuffer(hash, ':g');
    expect(bucket?.length).toBe(8);
    expect(Math.abs(bucket!.readDoubleLE(0) - 1000 - Date.now())).toBeLessThan(5_000);
    const counter = await admin.hgetBuffer(hash, ':xc');
    expect(counter?.length).toBe(24);
    expect([counter!.readDoubleLE(0) % 10_000, counter!.readDoubleLE(8), counter!.readDoubleLE(16)]).toEqual([0, 0, 1]);
    if (!store.hashFieldTtls) {
      const expiry = await admin.hgetBuffer(hash, '~e');
      expect(expiry?.length).toBe(8);
      expect(expiry!.readDoubleLE(0) - Date.now()).toBeGreaterThan(10_000);
    }
    // The log's field: 'L' and one little-endian double, the time of the event.
    const log = await admin.hgetBuffer(hash, ':x');
    expect(log?.length).toBe(9);
    expect(log?.subarray(0, 1).toString()).toBe('L');
    expect(Math.abs(log!.readDoubleLE(1) - Date.now())).toBeLessThan(5_000);
    // The leases keep a hash of their own, on the same hash tag.
    expect(await admin.type(plan.tiers[4]!.key)).toBe('hash');
    expect(await admin.exists(plan.tiers[0]!.key, plan.tiers[1]!.key, plan.tiers[2]!.key, plan.tiers[3]!.key)).toBe(0);
    const ttl = store.hashFieldTtls
      ? Math.min(...((await admin.call('HPTTL', hash, 'FIELDS', '1', ':g')) as number[]))
      : await admin.pttl(hash);
    // The counter is the longest-lived field: fresh again 1-2 windows (10 s) from now.
    expect(ttl).toBeGreaterThan(10_000);
    expect(ttl).toBeLessThanOrEqual(20_000 + 1000); // plus the second a TTL extension adds
    await store.release(plan);
  });

  it('decides a plan of buckets, a counter and a log with one TIME, one HMGET, one HSET and at most one PEXPIRE', async () => {
    const plan = planOf('user:calls', [specs[0]!, specs[1]!, specs[2]!, specs[3]!]);
    expect((await store.consume(plan)).allowed).toBe(true);
    await admin.config('RESETSTAT');
    const decisions = 2;
    for (let i = 0; i < decisions; i++) expect((await store.consume(plan)).allowed).toBe(true);
    const counts = await commandCounts(admin);
    expect(counts['time']).toBe(decisions);
    expect(counts['hmget']).toBe(decisions);
    // HSETEX (values and their TTL in one) on a server with it (Redis 8).
    expect((counts['hset'] ?? 0) + (counts['hsetex'] ?? 0)).toBe(decisions);
    expect(counts['pexpire'] ?? 0).toBeLessThanOrEqual(decisions);
    expect(counts['get'] ?? 0).toBe(0);
    expect(counts['set'] ?? 0).toBe(0);
    expect((counts['zadd'] ?? 0) + (counts['zrange'] ?? 0)).toBe(0);
  });

  it('tolerates keys of layouts 1, 2 and 3 at start-up: never read, never an error, they expire', async () => {
    const tracker = 'ip:198.51.100.7';
    const plan = planOf(tracker);
    // What layout 1 wrote: each bucket and counter in a string of its own at the tier key,
    // spent to the limit (layout 4 ignores them: the tracker starts with full budgets once).
    const now = Date.now();
    await admin.set(plan.tiers[0]!.key, String(now + 60_000), 'PX', 60_000);
    await admin.set(plan.tiers[1]!.key, String(now + 60_000), 'PX', 60_000);
    await admin.set(plan.tiers[2]!.key, `${now} 3 3`, 'PX', 20_000);
    // A log key holding another type (a tier whose algorithm changed between versions).
    await admin.set(plan.tiers[3]!.key, 'not a sorted set', 'PX', 60_000);
    // What layout 2 wrote for another tracker: its buckets spent in the hash `...}:~2`, its
    // log full in a sorted set at the tier key. Layout 4 reads neither.
    const other = planOf('ip:198.51.100.8', [specs[0]!, specs[3]!]);
    const oldHash = other.tiers[0]!.key.replace(/:g$/, ':~2');
    await admin.hset(oldHash, ':g', String(now + 60_000), '~e', String(now + 60_000));
    await admin.pexpire(oldHash, 60_000);
    await admin.zadd(other.tiers[1]!.key, now, 'a', now, 'b', now, 'c', now, 'd');
    await admin.pexpire(other.tiers[1]!.key, 10_000);
    // What layout 3 wrote for a third tracker: the same fields in the hash `...}:~3`, its
    // numbers as text (bucket and counter spent, log in its sorted set: 'Z').
    const third = planOf('ip:198.51.100.9', [specs[0]!, specs[2]!, specs[3]!]);
    const layout3 = third.tiers[0]!.key.replace(/:g$/, ':~3');
    const window = Math.floor(now / 10_000) * 10_000;
    await admin.hset(
      layout3,
      ':g',
      String(now + 60_000),
      ':xc',
      `${window} 3 3`,
      ':x',
      'Z',
      '~e',
      String(now + 60_000),
    );
    await admin.pexpire(layout3, 60_000);
    await admin.zadd(third.tiers[2]!.key, now, 'a', now, 'b', now, 'c', now, 'd');
    await admin.pexpire(third.tiers[2]!.key, 10_000);

    const statuses = await store.peek(plan);
    expect(statuses.map((status) => status.remaining)).toEqual([10, 5, 3, 4, 2]);
    const decisions = [];
    for (let i = 0; i < 4; i++) decisions.push(await store.consume(plan));
    expect(decisions.map((decision) => decision.allowed)).toEqual([true, true, false, false]);
    // Full budgets (layout 1's spent strings were not read): the open-connection cap of 2 is
    // what refuses the third.
    expect(decisions[2]).toMatchObject({ allowed: false, tier: 'concurrency' });
    // Layout 1's strings, and the log key of another type, are left to their TTLs.
    expect(await admin.get(plan.tiers[0]!.key)).toBe(String(now + 60_000));
    expect(await admin.get(plan.tiers[3]!.key)).toBe('not a sorted set');
    // Layout 2's spent bucket and full log: not read, so a fresh budget once; left to their TTLs.
    expect((await store.consume(other)).allowed).toBe(true);
    expect(await admin.zcard(other.tiers[1]!.key)).toBe(4);
    expect(await admin.hget(oldHash, ':g')).toBe(String(now + 60_000));
    // Layout 3's hash: not read (a fresh budget in every tier), left to its TTL; the stale
    // sorted set of its log is replaced once the new log outgrows its field, never read.
    expect((await store.peek(third)).map((status) => status.remaining)).toEqual([10, 3, 4]);
    expect((await store.consume(third)).allowed).toBe(true);
    expect(await admin.hget(layout3, ':g')).toBe(String(now + 60_000));
    expect(await admin.pttl(layout3)).toBeGreaterThan(50_000);
    expect((await admin.hgetBuffer(third.tiers[0]!.key.replace(/:g$/, ':~4'), ':g'))?.length).toBe(8);

    await store.delete(plan.tiers.map((tier) => tier.key));
    expect(await admin.exists(...plan.tiers.map((tier) => tier.key))).toBe(0);
    expect(await admin.hkeys(plan.tiers[0]!.key.replace(/:g$/, ':~4'))).toEqual(store.hashFieldTtls ? [] : ['~e']);
    expect((await store.consume(plan)).allowed).toBe(true);
    await store.release(plan);
  });

  it('keeps a hash written without hash-field TTLs on its hash TTL once the server has them', async () => {
    // This machine's Redis has no hash-field TTLs (7.4+): only the transition branch can run
    // here. A hash holding `~e` keeps its one TTL (no HPEXPIRE is sent) until it expires.
    const plan = planOf('user:upgraded', [specs[0]!, specs[2]!]);
    const forced = store as unknown as { fieldTtls: number };
    const own = forced.fieldTtls;
    try {
      forced.fieldTtls = 0;
      expect((await store.consume(plan)).allowed).toBe(true);
      forced.fieldTtls = 1;
      expect((await store.consume(plan)).allowed).toBe(true);
    } finally {
      forced.fieldTtls = own;
    }
    const hash = plan.tiers[0]!.key.replace(/:g$/, ':~4');
    expect((await admin.hkeys(hash)).sort()).toEqual([':g', ':xc', '~e'].sort());
    expect(await admin.pttl(hash)).toBeGreaterThan(10_000);
  });

  it('leaves every key with a TTL bounded by the tiers it holds (I-2)', async () => {
    const { checked, problems } = await expectBoundedTtls(admin, 'lay:', (key) =>
      key.endsWith(':cc') ? 30_000 : key.endsWith(':xc') ? 20_000 : 60_000,
    );
    expect(problems).toEqual([]);
    expect(checked).toBeGreaterThan(0);
  });
});
