import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { Global, Injectable, Module, type OnApplicationBootstrap, type OnModuleInit } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import type { AddressInfo } from 'node:net';
import {
  createRedisStore,
  MemoryRateLimitStore,
  RedisRateLimitStore,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
} from '../../lib/index.js';
import { createPlan, tokenBucketSpec } from '../../lib/store.js';
import { ConnectionsGateway } from '../e2e/connections/connections.gateway.js';
import { startApp } from '../support/app.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { TestClient } from '../support/ws-client.js';
import { storeClient } from './helpers.js';

/**
 * Adversarial review of 24f9488 / 1199549 (a store given in code that closes with its
 * application is counted per started application and closes with the last of them) and of
 * 8549058 / a67499e (duplicate suffixes / keys refused). Five cases failed on that code and
 * are fixed: counting applications at the end of the limiter's onModuleInit let app A close
 * the store under an app B compiled on it but not started yet (or starting), let a failed
 * compile close it under such an app, and kept it open after the last app closed when a
 * failed start-up had counted itself (two hooks); `status()` of two types past the 1,024
 * known ones built a plan with one suffix twice and threw the duplicate-suffix RangeError.
 * Now every limiter service holds its store from when it is built until its application
 * shuts down (`app.close()`, which an application whose start-up failed needs too, as the
 * README says), a failed compile lets go of its own services first, and `status()` reads
 * types that share a bucket from one tier. Added since: a Redis store already closed (noted
 * and left by this review: a new app took it and fell back on every decision without a
 * word) stops the start-up of an application it is given to.
 */

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

describe('store sharing between applications, and duplicate tiers (review)', () => {
  let redis: RedisServer;
  const cleanups: Array<() => unknown> = [];
  const later = (cleanup: () => unknown) => cleanups.push(cleanup);

  beforeAll(async () => {
    redis = await startRedis();
  });
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch {
        // best effort
      }
    }
    redis.resume();
    await redis.command('FLUSHALL');
  });
  afterAll(async () => {
    await redis.stop();
  });

  const keysUnder = async (prefix: string) => ((await redis.command('KEYS', `${prefix}*`)) as string[]).length;

  const startOn = (store: RedisRateLimitStore | MemoryRateLimitStore) =>
    startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, tracker: 'ip', store })],
        providers: [ConnectionsGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );

  /** One message through a running app; resolves once it is answered. */
  async function echoOnce(url: string): Promise<void> {
    const client = await TestClient.connect(url);
    later(() => client.close());
    client.send('echo', 1);
    await client.waitForEvent('echo');
    await client.close();
  }

  it.each(['onModuleInit', 'onApplicationBootstrap'] as const)(
    'an app whose start-up fails after the limiter was built (a later %s throws), closed as the README asks, leaves the store to the running app, which closes it last',
    async (hook) => {
      @Injectable()
      class Boom implements OnModuleInit, OnApplicationBootstrap {
        onModuleInit() {
          if (hook === 'onModuleInit') throw new Error('boom at init');
        }
        onApplicationBootstrap() {
          if (hook === 'onApplicationBootstrap') throw new Error('boom at bootstrap');
        }
      }
      const store = await createRedisStore({ url: redis.url, keyPrefix: 'late-fail:' });
      later(() => store.close());
      const running = await startOn(store);
      later(() => running.close());
      // A second application on the same store whose start-up fails after the limiter's own
      // onModuleInit (a root-module provider's hook runs after the limiter module's).
      const moduleRef = await Test.createTestingModule({
        imports: [WsRateLimitModule.forRoot({ useEnv: false, tracker: 'ip', store })],
        providers: [ConnectionsGateway, Boom],
      }).compile();
      const failed = moduleRef.createNestApplication({ logger: false });
      failed.useWebSocketAdapter(new WsRateLimitAdapter(failed));
      await expect(failed.init()).rejects.toThrow(/boom/);
      await failed.close();
      expect(store.client.status).toBe('ready');
      await echoOnce(running.url);
      await running.close();
      // The last application holding it closed: the store is closed.
      expect(store.client.status).toBe('end');
    },
  );

  it("app A closes while app B's start-up (on the same given store) is in flight: the store stays for B", async () => {
    let entered!: () => void;
    const inGate = new Promise<void>((resolve) => (entered = resolve));
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    @Injectable()
    class Gate implements OnModuleInit {
      async onModuleInit() {
        entered();
        await gate;
      }
    }
    // Nest runs onModuleInit by distance from the root, deepest first, global modules (the
    // limiter's is one) first of all in the order they were scanned: a global module imported
    // before the limiter's runs its hook first, so B's limiter has not counted itself yet.
    @Global()
    @Module({ providers: [Gate] })
    class GateModule {}

    const store = await createRedisStore({ url: redis.url, keyPrefix: 'in-flight:' });
    later(() => store.close());
    const a = await startOn(store);
    later(() => a.close());
    const moduleRef = await Test.createTestingModule({
      imports: [GateModule, WsRateLimitModule.forRoot({ useEnv: false, tracker: 'ip', store })],
      providers: [ConnectionsGateway],
    }).compile();
    const b = moduleRef.createNestApplication({ logger: false });
    b.useWebSocketAdapter(new WsRateLimitAdapter(b));
    later(() => b.close());
    const listening = b.listen(0, '127.0.0.1');
    listening.catch(() => undefined);
    await inGate;
    // B's limiter has not run its onModuleInit yet (its start-up is under way).
    await a.close();
    const statusAfterA = store.client.status;
    open();
    await listening;
    const url = `ws://127.0.0.1:${(b.getHttpServer().address() as AddressInfo).port}`;
    const before = await keysUnder('in-flight:');
    await echoOnce(url);
    const wrote = (await keysUnder('in-flight:')) > before;
    // B is an application the store was given to, and the last of them: the store should stay
    // open for it and B should decide in Redis (README: "given to several applications of one
    // process, it closes with the last of them").
    expect({ statusAfterA, wrote }).toEqual({ statusAfterA: 'ready', wrote: true });
  });

  it('a failed compile (forRoot imported twice) leaves a given store to a compiled application, not yet started, that was given it', async () => {
    const store = await createRedisStore({ url: redis.url, keyPrefix: 'compiled-first:' });
    later(() => store.close());
    // B: compiled, its limiter built on the store, init() not yet called (as a test suite's
    // beforeAll, or a bootstrap that builds several applications before listening, does).
    const moduleRef = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, tracker: 'ip', store })],
      providers: [ConnectionsGateway],
    }).compile();
    const b = moduleRef.createNestApplication({ logger: false });
    b.useWebSocketAdapter(new WsRateLimitAdapter(b));
    later(() => b.close());
    // C: the same store in two imports: refused at compile, closeMadeStores runs.
    @Module({ imports: [WsRateLimitModule.forRoot({ useEnv: false, store })] })
    class FeatureModule {}
    await expect(
      Test.createTestingModule({
        imports: [WsRateLimitModule.forRoot({ useEnv: false, store }), FeatureModule],
      }).compile(),
    ).rejects.toThrow(/imported 2 times/);
    await sleep(200);
    const statusAfterC = store.client.status;
    await b.listen(0, '127.0.0.1');
    const url = `ws://127.0.0.1:${(b.getHttpServer().address() as AddressInfo).port}`;
    const before = await keysUnder('compiled-first:');
    await echoOnce(url);
    const wrote = (await keysUnder('compiled-first:')) > before;
    expect({ statusAfterC, wrote }).toEqual({ statusAfterC: 'ready', wrote: true });
  });

  it("status() asking for two types past the 1,024 known ones reads both from the one '(other)' bucket they spend", async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, store: 'redis', redis: { url: redis.url } })],
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    later(() => app.close());
    await app.init();
    const service = app.get(WsRateLimitService);
    // Types from code (they may come from clients): 1,024 of them fill the known ones.
    for (let i = 0; i < 1024; i++) await service.consume('user-1', { type: `kind-${i}` });
    // Both read the one shared bucket (8549058 made createPlan refuse the plan status() built
    // then, with the one suffix twice).
    const outcome = await service.status('user-1', ['late-a', 'late-b']).then(
      (status) => Object.keys(status.types).filter((type) => type.startsWith('late-')),
      (error: Error) => `${error.name}: ${error.message}`,
    );
    expect(outcome).toEqual(['late-a', 'late-b']);
  }, 30_000);

  it('consume() of types past the 1,024 known ones still works (one tier per type: no duplicate suffix)', async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, store: 'redis', redis: { url: redis.url } })],
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    later(() => app.close());
    await app.init();
    const service = app.get(WsRateLimitService);
    for (let i = 0; i < 1030; i++) await service.consume('user-2', { type: `kind-${i}`, expensive: true });
    await expect(service.peek('user-2', { type: 'late-x', expensive: true })).resolves.toHaveLength(3);
    await expect(service.consume('user-2', { type: 'late-y' })).resolves.toMatchObject({ allowed: true });
  }, 30_000);

  it('app.close() twice on one app of two sharing a store, and a compiled-only module closed, leave the store to the running app, which closes it', async () => {
    const store = await createRedisStore({ url: redis.url, keyPrefix: 'twice:' });
    later(() => store.close());
    const first = await startOn(store);
    const second = await startOn(store);
    later(() => second.close());
    await first.close();
    await first.close();
    // A module compiled and closed without an application (shutdown hooks run uninitialised).
    const compiled = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, tracker: 'ip', store })],
    }).compile();
    await compiled.close();
    // An app closed before init().
    const never = (
      await Test.createTestingModule({
        imports: [WsRateLimitModule.forRoot({ useEnv: false, tracker: 'ip', store })],
      }).compile()
    ).createNestApplication({ logger: false });
    await never.close();
    expect(store.client.status).toBe('ready');
    const before = await keysUnder('twice:');
    await echoOnce(second.url);
    expect(await keysUnder('twice:')).toBeGreaterThan(before);
    await second.close();
    expect(store.client.status).toBe('end');
  });

  it('a failed compile (the same given store in two imports of one app) leaves the store to the app running on it', async () => {
    const store = await createRedisStore({ url: redis.url, keyPrefix: 'twice-imported:' });
    later(() => store.close());
    const running = await startOn(store);
    later(() => running.close());
    @Module({ imports: [WsRateLimitModule.forRoot({ useEnv: false, store })] })
    class FeatureModule {}
    await expect(
      Test.createTestingModule({
        imports: [WsRateLimitModule.forRoot({ useEnv: false, store }), FeatureModule],
      }).compile(),
    ).rejects.toThrow(/imported 2 times/);
    await sleep(200);
    expect(store.client.status).toBe('ready');
    await echoOnce(running.url);
    await running.close();
    expect(store.client.status).toBe('end');
  });

  it("a store on the user's client, or a memory store given in code, is never closed by any app (started, failed or closed twice)", async () => {
    const client = storeClient(redis.port);
    later(() => client.disconnect());
    const userStore = await createRedisStore({ client, keyPrefix: 'user-client:' });
    await new Promise<void>((resolve) => (client.status === 'ready' ? resolve() : client.once('ready', resolve)));
    const memory = new MemoryRateLimitStore();
    for (const store of [userStore, memory]) {
      const a = await startOn(store);
      const b = await startOn(store);
      await a.close();
      await b.close();
      await b.close();
    }
    expect(client.status).toBe('ready');
    expect(await client.ping()).toBe('PONG');
    const plan = createPlan(memory, 'm', [tokenBucketSpec('global', 'g', 2, 1)]);
    expect(memory.consume(plan).allowed).toBe(true);
  });

  it('a closed Redis store given to a new application stops its start-up with an error naming the option; a closed memory store serves on', async () => {
    // Closed by the last application it was given to.
    const store = await createRedisStore({ url: redis.url, keyPrefix: 'closed:' });
    later(() => store.close());
    expect(store.isClosed).toBe(false);
    const first = await startOn(store);
    await echoOnce(first.url);
    await first.close();
    expect(store.isClosed).toBe(true);
    await expect(startOn(store)).rejects.toThrow(/option store is a RedisRateLimitStore that is already closed/);
    // Closed by its owner, on the owner's client (which stays open).
    const client = storeClient(redis.port);
    later(() => client.disconnect());
    const userStore = await createRedisStore({ client, keyPrefix: 'closed-user:' });
    await userStore.close();
    expect(client.status).not.toBe('end');
    await expect(startOn(userStore)).rejects.toThrow(/already closed/);
    // Closing a memory store empties it; it is not closed for good, and serves a new app.
    const memory = new MemoryRateLimitStore();
    await memory.close();
    expect(memory.isClosed).toBe(false);
    const running = await startOn(memory);
    later(() => running.close());
    await echoOnce(running.url);
  });

  it('the connection plan (rate and concurrency tiers) decides on Redis under a module with plans (no duplicate-suffix refusal)', async () => {
    const running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            tracker: 'ip',
            store: 'redis',
            redis: { url: redis.url },
            maxConnectionsPerIp: 3,
            plans: { premium: { global: { capacity: 500, refillRate: 100 } } },
          }),
        ],
        providers: [ConnectionsGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    later(() => running.close());
    await echoOnce(running.url);
    const statuses = await running.app.get(WsRateLimitService).connectionStatus('127.0.0.1');
    expect(statuses.map((status) => status.tier)).toEqual(['connection', 'concurrency']);
  });

  it('a plan made by hand whose tiers share a key is refused on Redis with a RangeError naming the key, before anything is written', async () => {
    const store = await createRedisStore({ url: redis.url, keyPrefix: 'hand:' });
    later(() => store.close());
    const spec = tokenBucketSpec('global', 'g', 5, 1);
    const other = tokenBucketSpec('type', 't:chat', 5, 1);
    const key = store.key('u', 'g');
    const plan = {
      tracker: 'u',
      tiers: [
        { key, spec },
        { key, spec: other },
      ],
    };
    await expect(Promise.resolve().then(() => store.consume(plan))).rejects.toThrow(/share the key/);
    expect(await keysUnder('hand:')).toBe(0);
  });
});
