import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Redis } from 'ioredis';
import { performance } from 'node:perf_hooks';
import { WsRateLimitConfigError } from '../../lib/exceptions/ws-rate-limit-config.error.js';
import type { RateLimitPlan } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import {
  createRedisStore,
  RedisRateLimitStore,
  RedisStoreUnavailableError,
  type RedisStoreOptions,
} from '../../lib/storage/redis/index.js';
import { freePort, startRedis, type RedisServer } from '../support/redis-server.js';
import { adminClient, closeClient, percentile, ready, sleep, storeClient } from './helpers.js';

const bucket = tokenBucketSpec('global', 'g', 1, 1);

describe('Redis store: keys, prefixes, clients and options', () => {
  let server: RedisServer;
  let admin: Redis;
  /** Closed after the tests even when an assertion fails first. */
  const opened: { close(): Promise<void> }[] = [];
  const track = <T extends RedisRateLimitStore | Redis>(thing: T): T => {
    opened.push(thing instanceof RedisRateLimitStore ? thing : { close: () => closeClient(thing as Redis) });
    return thing;
  };

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    await ready(admin);
  });

  afterAll(async () => {
    for (const thing of opened.reverse()) await thing.close();
    await closeClient(admin);
    await server?.stop();
  });

  const planOf = (store: RedisRateLimitStore, tracker: string): RateLimitPlan => ({
    tracker,
    tiers: [{ key: store.key(tracker, bucket.suffix), spec: bucket }],
  });

  it('keys are prefix, a fixed-length hash tag of the tracker, and the tier suffix', async () => {
    const client = track(storeClient(server.port));
    const store = track(new RedisRateLimitStore({ client }));
    const hostile = ['ip:1.2.3.4', '{x}', '}{', 'a}b{c', '', '\n', 'x'.repeat(10_000), '🚀', 'ip:1.2.3.4 '];
    const keys = hostile.map((tracker) => store.key(tracker, 'g'));
    for (const key of keys) expect(key).toMatch(/^wsrl:\{[A-Za-z0-9_-]{27}\}:g$/);
    expect(new Set(keys).size).toBe(hostile.length);
    await store.close();
    await closeClient(client);
  });

  it('a plan made by hand whose tiers share a key is refused, as by the memory store, before anything is sent', async () => {
    const client = track(storeClient(server.port));
    const store = track(new RedisRateLimitStore({ client }));
    const key = store.key('ip:twice', 'g');
    const plan: RateLimitPlan = {
      tracker: 'ip:twice',
      tiers: [
        { key, spec: bucket },
        { key, spec: tokenBucketSpec('type', 'g', 2, 1) },
      ],
    };
    expect(() => store.consume(plan)).toThrow(/tiers 0 and 1 of one plan share the key/);
    await expect(store.peek(plan)).rejects.toThrow(/share the key/);
    expect(await admin.keys('*twice*')).toEqual([]);
    await store.close();
    await closeClient(client);
  });

  it("a client's own keyPrefix wins and is applied once; the client is never closed by the store", async () => {
    const client = track(
      new Redis({ port: server.port, host: '127.0.0.1', keyPrefix: 'app:', enableOfflineQueue: false }),
    );
    await ready(client);
    const store = track(new RedisRateLimitStore({ client, keyPrefix: 'ignored:' }));
    const plan = planOf(store, 'ip:prefixed');
    expect(plan.tiers[0]!.key.startsWith('{')).toBe(true);
    expect((await store.consume(plan)).allowed).toBe(true);
    // Key layout 4: the bucket is a field of the tracker hash, `<tag>:~4`.
    const key = plan.tiers[0]!.key;
    expect(await admin.exists(`app:${key.slice(0, key.indexOf('}') + 1)}:~4`)).toBe(1);
    expect(await admin.keys('ignored:*')).toEqual([]);
    await store.close();
    expect(client.status).toBe('ready');
    await closeClient(client);
  });

  it('an unreachable Redis: the store is returned after readyTimeoutMs and refuses at once', async () => {
    const port = await freePort();
    const started = performance.now();
    const store = track(await createRedisStore({ url: `redis://127.0.0.1:${port}`, readyTimeoutMs: 200 }));
    expect(performance.now() - started).toBeLessThan(1500);
    const plan = planOf(store, 'ip:nowhere');
    expect(() => store.consume(plan)).toThrow(RedisStoreUnavailableError);
    // Refused at once, not after the 50 ms deadline.
    const took: number[] = [];
    for (let i = 0; i < 100; i++) {
      const before = performance.now();
      try {
        store.consume(plan);
      } catch (error) {
        expect(error).toBeInstanceOf(RedisStoreUnavailableError);
      }
      took.push(performance.now() - before);
    }
    expect(percentile(took, 50)).toBeLessThan(10);
    expect(store.available).toBe(false);
    await expect(store.peek(planOf(store, 'ip:nowhere'))).rejects.toBeInstanceOf(RedisStoreUnavailableError);
    await store.close();
    expect(store.client.status).toBe('end');
  });

  it("with clock 'app', time that runs backwards is clamped, so no budget comes back", async () => {
    const client = track(storeClient(server.port));
    await ready(client);
    let now = 1_700_000_010_000;
    const store = track(new RedisRateLimitStore({ client, clock: 'app', now: () => now, blockCache: false }));
    const plan = planOf(store, 'ip:skewed');
    expect((await store.consume(plan)).allowed).toBe(true);
    now -= 5000; // another instance 5 s behind
    expect(await store.consume(plan)).toMatchObject({ allowed: false, retryAfter: 1000 });
    now += 6000;
    expect((await store.consume(plan)).allowed).toBe(true);
    await store.close();
    await closeClient(client);
  });

  it("operators' blocks are shared by every instance and expire with their time", async () => {
    const one = track(new RedisRateLimitStore({ client: track(storeClient(server.port)), keyPrefix: 'ops:' }));
    const two = track(new RedisRateLimitStore({ client: track(storeClient(server.port)), keyPrefix: 'ops:' }));
    await Promise.all([ready(one.client as Redis), ready(two.client as Redis)]);
    const now = Date.now();
    await one.setBlock('ip:203.0.113.7', now + 5000);
    await one.setBlock('key:spammer', now + 1500);
    expect(await two.listBlocks()).toEqual({ 'ip:203.0.113.7': now + 5000, 'key:spammer': now + 1500 });
    const ttl = await admin.pttl('ops:blocks');
    expect(ttl).toBeGreaterThan(4000);
    expect(ttl).toBeLessThanOrEqual(5000);
    await two.deleteBlock('ip:203.0.113.7');
    expect(await one.listBlocks()).toEqual({ 'key:spammer': now + 1500 });
    await sleep(now + 1600 - Date.now());
    expect(await one.listBlocks()).toEqual({});
  });

  it('invalid options stop start-up with an error naming the option', async () => {
    const cases: [RedisStoreOptions, string][] = [
      [{}, 'url'],
      [{ url: 'redis://a', cluster: { nodes: ['a:1'] } }, 'url, cluster'],
      [{ url: 'http://a' }, 'url'],
      [{ url: 'redis://a', keyPrefix: 'a{b}' }, 'keyPrefix'],
      [{ url: 'redis://a', commandTimeoutMs: 0 }, 'commandTimeoutMs'],
      [{ url: 'redis://a', leaseTtlMs: 1.5 }, 'leaseTtlMs'],
      [{ url: 'redis://a', clock: 'wall' as 'app' }, 'clock'],
      [{ url: 'redis://a', instanceId: 'a|b' }, 'instanceId'],
      [{ url: 'redis://a', blockCache: { maxEntries: -1 } }, 'blockCache.maxEntries'],
      [{ url: 'redis://a', planScripts: -1 }, 'planScripts'],
      [{ url: 'redis://a', planScripts: 1.5 }, 'planScripts'],
      [{ url: 'redis://a', planScripts: 1025 }, 'planScripts'],
      [{ url: 'redis://a', planScripts: '8' as unknown as number }, 'planScripts'],
      [{ url: 'redis://a', hashFieldTtls: 'no' as unknown as boolean }, 'hashFieldTtls'],
      [{ sentinel: { sentinels: [], name: 'm' } }, 'sentinel.sentinels'],
      [{ cluster: { nodes: [] } }, 'cluster.nodes'],
    ];
    for (const [options, option] of cases) {
      const attempt = createRedisStore(options);
      await expect(attempt).rejects.toBeInstanceOf(WsRateLimitConfigError);
      await expect(attempt).rejects.toThrow(`redis store option ${option}:`);
    }
    expect(() => new RedisRateLimitStore({ url: 'redis://a' })).toThrow(WsRateLimitConfigError);
  });
});
