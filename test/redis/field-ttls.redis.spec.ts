import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Redis } from 'ioredis';
import { performance } from 'node:perf_hooks';
import type { RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { RedisRateLimitStore, type RedisStoreOptions } from '../../lib/storage/redis/index.js';
import { hasFieldTtls } from '../../lib/storage/redis/server-checks.js';
import { fieldTtlRedisServer, startRedis, type RedisServer } from '../support/redis-server.js';
import {
  adminClient,
  closeClient,
  commandCounts,
  expectBoundedTtls,
  openStore,
  ready,
  sleep,
  type OpenedStores,
} from './helpers.js';

const SERVER = fieldTtlRedisServer();
/** `.ci/run` sets it: there, a machine without such a server fails this file instead of skipping it. */
const REQUIRED = process.env['WSRL_REQUIRE_FIELD_TTL_REDIS'] === '1';
const TITLE = 'Redis store on a server with hash-field TTLs (Redis 7.4+)';

/** HPTTL of every field of a hash, by field name. */
async function fieldTtls(admin: Redis, key: string): Promise<Record<string, number>> {
  const fields = await admin.hkeys(key);
  if (fields.length === 0) return {};
  const ttls = (await admin.call('HPTTL', key, 'FIELDS', String(fields.length), ...fields)) as number[];
  return Object.fromEntries(fields.map((field, i) => [field, ttls[i]!]));
}

if (SERVER === undefined) {
  describe(TITLE, () => {
    // Skipped (and named so) on a machine without one; CI builds one and requires it.
    (REQUIRED ? it : it.skip)('needs a redis-server 7.4 or later: run .ci/redis-field-ttls', () => {
      throw new Error(
        'No redis-server with hash-field TTLs: run .ci/redis-field-ttls, or set WSRL_TEST_REDIS_FIELD_TTLS to one',
      );
    });
  });
} else {
  /**
   * Issue 13's hash-field TTLs, on a real server that has them (the machine's own Redis 7.0
   * runs the fallback: one TTL per tracker hash). The decision table also runs on this server
   * (`table.redis.spec.ts`).
   */
  describe(TITLE, () => {
    let server: RedisServer;
    let admin: Redis;
    const opened: OpenedStores = { clients: [], stores: [] };

    async function makeStore(options: Partial<RedisStoreOptions> = {}): Promise<RedisRateLimitStore> {
      const store = await openStore(server.port, opened, {
        keyPrefix: 'hf:',
        blockCache: false,
        commandTimeoutMs: 2000,
        ...options,
      });
      await store.evictionPolicyChecked;
      return store;
    }

    const planOf = (store: RedisRateLimitStore, tracker: string, specs: readonly TierSpec[]): RateLimitPlan => ({
      tracker,
      tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
    });
    const hashOf = (plan: RateLimitPlan) => plan.tiers[0]!.key.replace(/}:.*$/, '}:~4');

    const specs: TierSpec[] = [
      tokenBucketSpec('global', 'g', 10, 1),
      tokenBucketSpec('type', 't:chat', 5, 1),
      windowSpec('expensive', 'xc', 'sliding-counter', 3, 10_000),
      windowSpec('expensive', 'x', 'sliding-log', 4, 10_000),
    ];

    beforeAll(async () => {
      server = await startRedis([], SERVER);
      admin = adminClient(server.port);
      await ready(admin);
    });

    afterAll(async () => {
      await Promise.all(opened.stores.map((store) => store.close().catch(() => undefined)));
      await Promise.all([admin, ...opened.clients].map(closeClient));
      await server?.stop();
    });

    it('reads the support from the server version', async () => {
      const version = /redis_version:(\d+)\.(\d+)/.exec(await admin.info('server'));
      expect(Number(version![1]) * 100 + Number(version![2])).toBeGreaterThanOrEqual(704);
      expect((await makeStore()).hashFieldTtls).toBe(true);
    });

    it.each([
      ['a plan script', undefined, 2, { hsetex: 2 }],
      ['the generic script', 0, 2, { hsetex: 2 }],
      // As on Redis 7.4, which has HPEXPIRE but not HSETEX.
      ['a plan script, the Redis 7.4 way', undefined, 1, { hset: 2, hpexpire: 2 }],
      ['the generic script, the Redis 7.4 way', 0, 1, { hset: 2, hpexpire: 2 }],
    ] as const)(
      '%s: every field written carries a TTL (no hash TTL, no ~e); one write and one TTL per decision',
      async (how, planScripts, mode, writes) => {
        const store = await makeStore({ planScripts });
        if (mode === 1) (store as unknown as { fieldTtls: number }).fieldTtls = 1;
        const plan = planOf(store, `user:fields-${how}`, specs);
        expect((await store.consume(plan)).allowed).toBe(true);
        await admin.config('RESETSTAT');
        for (let i = 0; i < 2; i++) expect((await store.consume(plan)).allowed).toBe(true);
        expect(store.planScriptCount).toBe(planScripts === 0 ? 0 : 1);
        const counts = await commandCounts(admin);
        expect(counts).toMatchObject({ hmget: 2, ...writes });
        expect((counts['hset'] ?? 0) + (counts['hsetex'] ?? 0)).toBe(2);
        expect(counts['pexpire'] ?? 0).toBe(0);

        const hash = hashOf(plan);
        expect(await admin.pttl(hash)).toBe(-1);
        const ttls = await fieldTtls(admin, hash);
        expect(Object.keys(ttls).sort()).toEqual([':g', ':t:chat', ':x', ':xc']);
        // One TTL for the fields of a decision: its longest need (the counter's, fresh again
        // one to two windows from now) plus the second the hash TTL is extended by without them.
        const values = Object.values(ttls);
        expect(Math.max(...values) - Math.min(...values)).toBeLessThan(50);
        for (const ttl of values) {
          expect(ttl).toBeGreaterThan(10_000);
          expect(ttl).toBeLessThanOrEqual(20_000 + 1000);
        }
      },
    );

    it.each([
      ['a plan script', undefined],
      ['the generic script', 0],
    ] as const)(
      '%s with hashFieldTtls: false: one TTL for the hash, as on servers without field TTLs',
      async (how, planScripts) => {
        const store = await makeStore({ planScripts, hashFieldTtls: false });
        expect(store.hashFieldTtls).toBe(false);
        const plan = planOf(store, `user:hash-ttl-${how}`, specs);
        await admin.config('RESETSTAT');
        for (let i = 0; i < 3; i++) expect((await store.consume(plan)).allowed).toBe(true);
        const counts = await commandCounts(admin);
        expect(counts['hsetex'] ?? 0).toBe(0);
        expect(counts['hpexpire'] ?? 0).toBe(0);
        expect(counts).toMatchObject({ hmget: 3, hset: 3, pexpire: 1 });
        const hash = hashOf(plan);
        expect(await admin.pttl(hash)).toBeGreaterThan(10_000);
        const ttls = await fieldTtls(admin, hash);
        expect(Object.keys(ttls).sort()).toEqual([':g', ':t:chat', ':x', ':xc', '~e']);
        // HPTTL -1: no TTL of its own.
        expect(Object.values(ttls)).toEqual([-1, -1, -1, -1, -1]);
      },
    );

    it('a tier the tracker no longer uses goes by itself; the fields of its other tiers stay', async () => {
      const store = await makeStore();
      const tracker = 'user:gone';
      // A bucket full again 1 ms after a decision: its field lasts that plus a second.
      const brief = planOf(store, tracker, [tokenBucketSpec('global', 'g', 1000, 1000)]);
      const lasting = planOf(store, tracker, [specs[2]!]);
      expect((await store.consume(brief)).allowed).toBe(true);
      expect((await store.consume(lasting)).allowed).toBe(true);
      const hash = hashOf(brief);
      expect((await admin.hkeys(hash)).sort()).toEqual([':g', ':xc']);
      await sleep(1300);
      expect(await admin.hkeys(hash)).toEqual([':xc']);
      expect((await fieldTtls(admin, hash))[':xc']).toBeGreaterThan(8_000);
    });

    it('a hash written without hash-field TTLs keeps its one TTL and its ~e until it expires', async () => {
      const old = await makeStore();
      // As an instance that found no hash-field TTLs (an older server before an upgrade) wrote it.
      (old as unknown as { fieldTtls: number }).fieldTtls = 0;
      const plan = planOf(old, 'user:upgraded', [specs[0]!, specs[2]!]);
      expect((await old.consume(plan)).allowed).toBe(true);
      const hash = hashOf(plan);
      const before = await admin.pttl(hash);
      expect(before).toBeGreaterThan(10_000);

      const store = await makeStore();
      await admin.config('RESETSTAT');
      expect((await store.consume(planOf(store, 'user:upgraded', [specs[0]!, specs[2]!]))).allowed).toBe(true);
      const counts = await commandCounts(admin);
      expect((counts['hpexpire'] ?? 0) + (counts['hsetex'] ?? 0)).toBe(0);
      expect((await admin.hkeys(hash)).sort()).toEqual([':g', ':xc', '~e']);
      expect(await admin.pttl(hash)).toBeGreaterThan(10_000);
      expect(Object.values(await fieldTtls(admin, hash))).toEqual([-1, -1, -1]);
    });

    it('token reservations: the reserved buckets and their owner marks carry TTLs; the unspent tail goes back with one', async () => {
      const store = await makeStore({ reservations: { maxBatch: 64, ttlMs: 500 } });
      // 1,000 burst at 1,000 a second, 300 decisions faster than that: the bucket is still
      // short of full when the store closes.
      const plan = planOf(store, 'ip:reserved', [tokenBucketSpec('global', 'g', 1000, 1000)]);
      await admin.config('RESETSTAT');
      const began = performance.now();
      for (let i = 0; i < 300; i++) {
        expect((await store.consume(plan)).allowed).toBe(true);
        if (i % 50 === 49) await sleep(5);
      }
      const elapsedMs = performance.now() - began;
      const counts = await commandCounts(admin);
      // Batches: far fewer scripts than decisions, each setting the TTLs of what it wrote
      // (a batch of 64 at 1,000/s lapses after 64 ms: on a machine slow enough to outlast
      // that, two calls per 64 ms of the loop at most, plus the ramp-up).
      expect(counts['evalsha'] ?? 0).toBeLessThan(Math.max(40, (2 * elapsedMs) / 64 + 8));
      expect(counts['hsetex']).toBeGreaterThan(0);
      const hash = hashOf(plan);
      const held = await fieldTtls(admin, hash);
      expect(Object.keys(held).sort()).toEqual([':g', '~o:g']);
      for (const ttl of Object.values(held)) expect(ttl).toBeGreaterThan(0);

      // Closing gives the unspent tail back: the bucket's field is rewritten (HSET drops its
      // TTL), with a TTL again, and the owner mark goes.
      await store.close();
      const after = await fieldTtls(admin, hash);
      expect(Object.keys(after)).toEqual([':g']);
      expect(after[':g']).toBeGreaterThan(0);
      expect(after[':g']).toBeLessThanOrEqual(1000 + 1000);
    });

    it('a server upgraded in place is read again when the store reconnects', async () => {
      const before = await startRedis();
      const opened: OpenedStores = { clients: [], stores: [] };
      try {
        const store = await openStore(before.port, opened, { keyPrefix: 'up:', commandTimeoutMs: 2000 });
        await store.evictionPolicyChecked;
        // This machine's own server (Redis 7.0 here) has none: the store begins without them.
        expect(store.hashFieldTtls).toBe(hasFieldTtls(await before.command('INFO', 'server')));
        const plan = planOf(store, 'user:upgrade', [specs[0]!]);
        expect((await store.consume(plan)).allowed).toBe(true);
        await before.restart(SERVER);
        // The store's client reconnects by itself; its `ready` reads the version again.
        const deadline = Date.now() + 10_000;
        while (!store.hashFieldTtls && Date.now() < deadline) await sleep(50);
        expect(store.hashFieldTtls).toBe(true);
        let decided = false;
        while (!decided && Date.now() < deadline) {
          // Until the client is back, the store refuses at once (a synchronous throw, too).
          decided = await (async () => store.consume(plan))().then(
            () => true,
            () => sleep(50).then(() => false),
          );
        }
        expect(decided).toBe(true);
        const admin8 = adminClient(before.port);
        try {
          const hash = hashOf(plan);
          expect(await admin8.hkeys(hash)).toEqual([':g']);
          expect((await fieldTtls(admin8, hash))[':g']).toBeGreaterThan(0);
        } finally {
          await closeClient(admin8);
        }
      } finally {
        await Promise.all(opened.stores.map((store) => store.close()));
        await Promise.all(opened.clients.map(closeClient));
        await before.stop();
      }
    });

    it('delete() resets the tiers of a hash whose fields carry TTLs', async () => {
      const store = await makeStore();
      const plan = planOf(store, 'user:reset', [tokenBucketSpec('global', 'g', 1, 0.001)]);
      expect((await store.consume(plan)).allowed).toBe(true);
      expect((await store.consume(plan)).allowed).toBe(false);
      await store.delete(plan.tiers.map((tier) => tier.key));
      expect((await store.consume(plan)).allowed).toBe(true);
      expect((await fieldTtls(admin, hashOf(plan)))[':g']).toBeGreaterThan(0);
    });

    it('leaves every key or field with a TTL bounded by its tiers (I-2)', async () => {
      const { checked, problems } = await expectBoundedTtls(admin, 'hf:', (key) =>
        key.endsWith(':xc') ? 20_000 + 1000 : key.endsWith(':g') ? 1_000_000 + 1000 : 10_000 + 1000,
      );
      expect(problems).toEqual([]);
      expect(checked).toBeGreaterThan(0);
    });
  });
}
