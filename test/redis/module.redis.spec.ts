import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { ConfigModule } from '@nestjs/config';
import { performance } from 'node:perf_hooks';
import { Registry } from 'prom-client';
import {
  RedisRateLimitStore,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { ConnectionsGateway } from '../e2e/connections/connections.gateway.js';
import { startApp, withEnv, type RunningApp } from '../support/app.js';
import { upgrade } from '../support/http.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { TestClient } from '../support/ws-client.js';
import { sleep } from './helpers.js';

/** The module on the Redis store, in process: configuration, outages, shutdown. */
describe('WsRateLimitModule on Redis', () => {
  let redis: RedisServer;
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}) => {
    running = await startApp(
      {
        imports: [ConfigModule.forRoot({ ignoreEnvFile: true }), WsRateLimitModule.forRoot(options)],
        providers: [ConnectionsGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    return running.app.get(WsRateLimitService);
  };

  beforeAll(async () => {
    redis = await startRedis();
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
    if (!redis.process.killed && redis.process.exitCode === null) await redis.command('FLUSHALL');
  });
  afterAll(() => redis.stop());

  it('is chosen by WS_RATE_LIMIT_STORE=redis and WS_RATE_LIMIT_REDIS_URL, and closed with the app', async () => {
    const limiter = await withEnv(
      { WS_RATE_LIMIT_STORE: 'redis', WS_RATE_LIMIT_REDIS_URL: redis.url, WS_RATE_LIMIT_TRACKER: 'ip' },
      () => start(),
    );
    expect(limiter.store).toBeInstanceOf(RedisRateLimitStore);
    const client = await TestClient.connect(running!.url);
    clients.push(client);
    client.send('echo', 1);
    await client.waitForEvent('echo');
    // Shared tiers were decided in Redis: their keys are there, each with a TTL (a bucket's
    // is tens of ms, so one may expire between KEYS and PTTL: -2; never -1, "no TTL").
    const keys = (await redis.command('KEYS', 'wsrl:*')) as string[];
    // Key layout 4: a tracker's tiers are fields of one hash (`...}:~4`): count tier states.
    let states = 0;
    for (const key of keys) {
      const fields = key.endsWith('}:~4') ? ((await redis.command('HKEYS', key)) as string[]) : [key];
      states += fields.filter((field) => field !== '~e').length;
    }
    expect(states).toBeGreaterThanOrEqual(2);
    for (const key of keys) {
      const ttl = Number(await redis.command('PTTL', key));
      if (ttl === -1 && key.endsWith('}:~4')) {
        // A server with hash-field TTLs (Redis 7.4+): each field carries its own instead.
        const fields = (await redis.command('HKEYS', key)) as string[];
        const ttls = (await redis.command('HPTTL', key, 'FIELDS', String(fields.length), ...fields)) as number[];
        for (const fieldTtl of ttls) expect(fieldTtl === -2 || fieldTtl > 0).toBe(true);
        continue;
      }
      expect(ttl === -2 || ttl > 0).toBe(true);
    }
    const store = limiter.store as RedisRateLimitStore;
    await clients.pop()!.close();
    await running!.close();
    running = undefined;
    expect(store.client.status).toBe('end');
  });

  it('turns token reservations on with WS_RATE_LIMIT_REDIS_RESERVATION_BATCH: fewer scripts, the same answers', async () => {
    const scripts = async () => {
      const stats = String(await redis.command('INFO', 'commandstats'));
      let calls = 0;
      for (const match of stats.matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+)/g)) calls += Number(match[1]);
      return calls;
    };
    const run = async (batch: string) => {
      await withEnv(
        {
          WS_RATE_LIMIT_STORE: 'redis',
          WS_RATE_LIMIT_REDIS_URL: redis.url,
          WS_RATE_LIMIT_TRACKER: 'ip',
          WS_RATE_LIMIT_GLOBAL_CAPACITY: '200',
          WS_RATE_LIMIT_GLOBAL_REFILL_RATE: '400',
          WS_RATE_LIMIT_TYPE_CAPACITY: '200',
          WS_RATE_LIMIT_TYPE_REFILL_RATE: '400',
          WS_RATE_LIMIT_REDIS_RESERVATION_BATCH: batch,
        },
        () => start(),
      );
      const client = await TestClient.connect(running!.url);
      clients.push(client);
      await redis.command('CONFIG', 'RESETSTAT');
      // 150 messages, one at a time: well inside both buckets, so every one is answered.
      const began = performance.now();
      for (let i = 0; i < 150; i++) {
        client.send('echo', i);
        await client.waitForEvent('echo', i + 1);
      }
      elapsedMs = performance.now() - began;
      const calls = await scripts();
      await clients.pop()!.close();
      await running!.close();
      running = undefined;
      await redis.command('FLUSHALL');
      return calls;
    };
    let elapsedMs = 0;
    const off = await run('0');
    const on = await run('32');
    expect(off).toBeGreaterThanOrEqual(150);
    // A batch of 32 slots at 400/s covers 80 ms and lapses after that however few were
    // spent: on a machine slow enough that 32 round trips outlast it, more calls are needed
    // (two per 80 ms at most: a lapsed batch and the one prefetched after it, plus a few for
    // the ramp-up), so the bound is what the batches can cover in the time the run took.
    expect(on).toBeLessThan(Math.max(off / 2, (2 * elapsedMs) / 80 + 8));
  });

  it('reports budgets from the local fallback while Redis is down (fail mode open)', async () => {
    const limiter = await start({ store: 'redis', redis: { url: redis.url }, tracker: 'ip' });
    expect((await limiter.status('someone')).global.remaining).toBe(100);
    redis.pause();
    try {
      const status = await limiter.status('someone');
      expect(status.global.capacity).toBe(100);
    } finally {
      redis.resume();
    }
  });

  it('reports the fall-back as a gauge and as store events, down then up (fail mode open)', async () => {
    const registry = new Registry();
    const limiter = await start({
      store: 'redis',
      redis: { url: redis.url },
      tracker: 'ip',
      metricsRegistry: registry,
      metricsPrefix: 'fb_',
    });
    const fallback = async () =>
      ((await registry.getSingleMetric('fb_store_fallback')!.get()).values[0]?.value as number | undefined) ?? -1;
    const events: string[] = [];
    const subscription = limiter.events$.subscribe((event) => {
      if (event.kind === 'store') events.push(event.state);
    });
    try {
      const client = await TestClient.connect(running!.url);
      clients.push(client);
      client.send('echo', 0);
      await client.waitForEvent('echo');
      expect(await fallback()).toBe(0);
      redis.pause();
      try {
        // Fail mode open: the local limits decide, every message is answered. The outage
        // starts when the breaker opens: at the third failed call (one per message here).
        let sent = 1;
        while (events.length === 0 && sent < 10) {
          client.send('echo', sent++);
          await client.waitForEvent('echo', sent);
        }
        expect(sent).toBe(4);
        expect(await fallback()).toBe(1);
        expect(events).toEqual(['down']);
      } finally {
        redis.resume();
      }
      for (let i = 0; i < 60 && (await fallback()) === 1; i++) {
        await sleep(100);
        client.send('echo', i);
      }
      expect(await fallback()).toBe(0);
      expect(events).toEqual(['down', 'up']);
    } finally {
      subscription.unsubscribe();
    }
  });

  it('refuses with STORE_UNAVAILABLE and 503 while Redis is down in fail mode closed, then recovers', async () => {
    await start({ store: 'redis', redis: { url: redis.url }, tracker: 'ip', failMode: 'closed' });
    const client = await TestClient.connect(running!.url);
    clients.push(client);
    redis.pause();
    try {
      // An outage is not the client's fault: frames, but no violations, so no 1008.
      for (let i = 0; i < 12; i++) client.send('echo', i);
      const frames = await client.waitForEvent('rate_limit', 12);
      expect(frames[0]!.data).toMatchObject({ code: 'STORE_UNAVAILABLE', retryAfter: 1000, warningCount: 0 });
      expect(client.socket.readyState).toBe(client.socket.OPEN);
      const refused = await upgrade(running!.port);
      expect(refused.status).toBe(503);
      expect(refused.headers['retry-after']).toBe('1');
    } finally {
      redis.resume();
    }
    // Back by itself: the breaker's probe finds Redis again.
    let echoed = 0;
    for (let i = 0; i < 50 && echoed === 0; i++) {
      await sleep(100);
      client.send('echo', i);
      await sleep(50);
      echoed = client.events('echo').length;
    }
    expect(echoed).toBeGreaterThan(0);
  });
});
