import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { Injectable, Module, type INestApplication, type LoggerService, type ModuleMetadata } from '@nestjs/common';
import { ConfigModule } from '@nestjs/config';
import { APP_GUARD } from '@nestjs/core';
import { Test } from '@nestjs/testing';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { AddressInfo } from 'node:net';
import { Registry } from 'prom-client';
import {
  MemoryRateLimitStore,
  RedisRateLimitStore,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  WsThrottleGuard,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { createPlan, tokenBucketSpec } from '../../lib/store.js';
import { ConnectionsGateway } from '../e2e/connections/connections.gateway.js';
import { startApp, type RunningApp } from '../support/app.js';
import { connectIo, waitFor, type IoTestClient } from '../support/io-client.js';
import { freePort, startRedis, type RedisServer } from '../support/redis-server.js';
import { TestClient } from '../support/ws-client.js';
import { storeClient } from './helpers.js';

/**
 * The module's lifecycle as a NestJS user meets it: forRoot/forRootAsync, the store it
 * creates, start-up with Redis unreachable, app.close() in every state, several apps in one
 * process, and whether everything it opened is closed again. From an adversarial review;
 * three cases failed before their fixes: a later app's refusals were answered by the first
 * app's filter (frame builder, threshold) through the gateway class's metadata; an app
 * started while Redis was unreachable reported no outage until a message came; a second
 * forRoot in one application silently replaced the first one's options.
 */

/** A gateway with no guard or filter of its own: its guard is registered with APP_GUARD. Used by one test only. */
@WebSocketGateway()
class GloballyGuardedGateway {
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** Resource types keeping the event loop alive, counted (the tests' own redis-server children aside). */
function resources(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const type of process.getActiveResourcesInfo()) {
    if (type === 'ProcessWrap' || type === 'PipeWrap') continue;
    counts.set(type, (counts.get(type) ?? 0) + 1);
  }
  return counts;
}

/** A baseline taken once two readings 100 ms apart agree (what a previous step closed is gone). */
async function steadyResources(): Promise<Map<string, number>> {
  let last = JSON.stringify([...resources()].sort());
  for (let i = 0; i < 50; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    const now = JSON.stringify([...resources()].sort());
    if (now === last) break;
    last = now;
  }
  return resources();
}

/** Waits (up to `timeoutMs`) until nothing above `baseline` keeps the loop alive; returns what is left. */
async function leftOver(baseline: Map<string, number>, timeoutMs = 8000): Promise<Record<string, number>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left: Record<string, number> = {};
    for (const [type, count] of resources()) {
      const more = count - (baseline.get(type) ?? 0);
      if (more > 0) left[type] = more;
    }
    if (Object.keys(left).length === 0 || Date.now() > deadline) return left;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Connections a test Redis holds, other than the one asking. */
async function redisConnections(server: RedisServer): Promise<number> {
  const list = String(await server.command('CLIENT', 'LIST')).trim();
  return list.split('\n').filter((line) => line.includes('addr=') && !line.includes('cmd=client|list')).length;
}

/** Waits until a test Redis holds no connection but the asker's (up to `timeoutMs`); returns how many it holds. */
async function redisConnectionsAfter(server: RedisServer, timeoutMs = 5000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const count = await redisConnections(server);
    if (count === 0 || Date.now() > deadline) return count;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** A logger that keeps what it is told. */
class Captured implements LoggerService {
  readonly lines: string[] = [];
  log(message: unknown) {
    this.lines.push(`log ${String(message)}`);
  }
  warn(message: unknown) {
    this.lines.push(`warn ${String(message)}`);
  }
  error(message: unknown) {
    this.lines.push(`error ${String(message)}`);
  }
  debug() {}
  verbose() {}
}

/** Like startApp, with a logger of the test's (startApp's is off). */
async function startLogged(
  metadata: ModuleMetadata,
  logger: LoggerService,
  adapter: (app: INestApplication) => WsRateLimitAdapter | WsRateLimitIoAdapter = (app) => new WsRateLimitAdapter(app),
): Promise<RunningApp> {
  const moduleRef = await Test.createTestingModule(metadata).compile();
  const app = moduleRef.createNestApplication({ logger });
  app.useWebSocketAdapter(adapter(app));
  await app.listen(0, '127.0.0.1');
  const port = (app.getHttpServer().address() as AddressInfo).port;
  return { app, port, url: `ws://127.0.0.1:${port}`, close: () => app.close() };
}

const redisOptions = (url: string, more: WsRateLimitModuleOptions = {}): WsRateLimitModuleOptions => ({
  useEnv: false,
  store: 'redis',
  redis: { url },
  ...more,
});

describe('module lifecycle (review)', () => {
  let redis: RedisServer;
  /** Run after each test, last first, whatever it did. */
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
  afterAll(() => redis.stop());

  // --- Bugs ---------------------------------------------------------------------------

  it('with a global WsThrottleGuard, an app started after another answers refusals with its own frame builder and violation threshold', async () => {
    const start = (tag: string, max: number) =>
      startApp(
        {
          imports: [
            WsRateLimitModule.forRoot({
              useEnv: false,
              type: { capacity: 1, refillRate: 0.001 },
              violations: { max, windowMs: 60_000 },
              frameBuilder: (info) => ({ event: 'rate_limit', data: { ...info, app: tag } }),
            }),
          ],
          providers: [GloballyGuardedGateway, { provide: APP_GUARD, useClass: WsThrottleGuard }],
        },
        (app) => new WsRateLimitAdapter(app),
      );
    // The usual test-suite pattern: one app per test, closed before the next starts.
    const first = await start('first', 100);
    await first.close();
    const second = await start('second', 1);
    later(() => second.close());
    const client = await TestClient.connect(second.url);
    later(() => client.close());
    client.send('chat', 1);
    client.send('chat', 2);
    const [frame] = await client.waitForEvent('rate_limit');
    // The second app's own frame builder, and its threshold of 1: closed with 1008.
    expect(frame!.data).toMatchObject({ code: 'TYPE_LIMIT', app: 'second' });
    expect((await client.waitClose(5000)).code).toBe(1008);

    // Two apps at once (the gateway class's filters are shared): each answers its own refusals.
    const third = await start('third', 100);
    later(() => third.close());
    const fourth = await start('fourth', 100);
    later(() => fourth.close());
    for (const [running, tag] of [
      [third, 'third'],
      [fourth, 'fourth'],
    ] as const) {
      const peer = await TestClient.connect(running.url);
      later(() => peer.close());
      peer.send('chat', 1);
      peer.send('chat', 2);
      const [refusal] = await peer.waitForEvent('rate_limit');
      expect(refusal!.data).toMatchObject({ code: 'TYPE_LIMIT', app: tag, warningCount: 1 });
    }
  });

  it('an app that starts while Redis is unreachable reports the outage at once (store_fallback 1, logged, counted)', async () => {
    const registry = new Registry();
    const logger = new Captured();
    const running = await startLogged(
      {
        imports: [
          WsRateLimitModule.forRoot(
            redisOptions(`redis://127.0.0.1:${await freePort()}`, {
              metricsRegistry: registry,
              metricsPrefix: 'boot_',
            }),
          ),
        ],
        providers: [ConnectionsGateway],
      },
      logger,
    );
    later(() => running.close());
    const limiter = running.app.get(WsRateLimitService);
    const value = async (name: string) => (await registry.getSingleMetric(name)!.get()).values[0]?.value;
    // The breaker is open from the start: the store says it cannot answer...
    expect(limiter.store.available).toBe(false);
    // ...so this is an outage, as README's "When Redis is slow or down" describes one: the
    // fallback gauge is 1, the outage counted and logged once.
    expect({
      fallback: await value('boot_store_fallback'),
      outages: await value('boot_store_outages_total'),
      logged: logger.lines.some((line) => line.includes('The rate-limit store cannot decide')),
    }).toEqual({ fallback: 1, outages: 1, logged: true });
  });

  it('WsRateLimitModule.forRoot imported in two modules of one application is a start-up error', async () => {
    @Module({ imports: [WsRateLimitModule.forRoot({ useEnv: false, global: { capacity: 2, refillRate: 0.01 } })] })
    class FeatureModule {}
    const compiled = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false }), FeatureModule],
    })
      .compile()
      .then(
        async (moduleRef) => {
          const capacity = moduleRef.get(WsRateLimitService).options.global.capacity;
          await moduleRef.close();
          return capacity;
        },
        (error: Error) => error.message,
      );
    // Before: the feature module's 2 or the root's 100, by the order of imports, without a word.
    expect(compiled).toBe(
      'WsRateLimitModule is imported 2 times in this application (forRoot, forRootAsync or the bare class); ' +
        'it is global: import WsRateLimitModule.forRoot() or forRootAsync() once, in the root module, ' +
        'and inject WsRateLimitService in other modules without importing it',
    );
  });

  // --- Cases that hold ------------------------------------------------------------------

  it('configures from forRootAsync with useClass, useExisting, and ConfigModule.forRoot({ load }) in either import order', async () => {
    @Injectable()
    class LimitsFactory {
      createWsRateLimitOptions(): WsRateLimitModuleOptions {
        return { useEnv: false, global: { capacity: 9, refillRate: 1 } };
      }
    }
    @Module({ providers: [LimitsFactory], exports: [LimitsFactory] })
    class LimitsModule {}
    const capacityOf = async (imports: ModuleMetadata['imports']) => {
      const moduleRef = await Test.createTestingModule({ imports }).compile();
      const capacity = moduleRef.get(WsRateLimitService).options.global.capacity;
      await moduleRef.close();
      return capacity;
    };
    expect(await capacityOf([WsRateLimitModule.forRootAsync({ useClass: LimitsFactory })])).toBe(9);
    expect(
      await capacityOf([WsRateLimitModule.forRootAsync({ imports: [LimitsModule], useExisting: LimitsFactory })]),
    ).toBe(9);
    const config = () =>
      ConfigModule.forRoot({ ignoreEnvFile: true, load: [() => ({ WS_RATE_LIMIT_GLOBAL_CAPACITY: '7' })] });
    expect(await capacityOf([config(), WsRateLimitModule.forRoot()])).toBe(7);
    expect(await capacityOf([WsRateLimitModule.forRoot(), config()])).toBe(7);
  });

  it('starts within seconds with Redis down, answers from the fallback, moves to Redis once it is up, and closes everything', async () => {
    const own = await startRedis();
    later(() => own.stop());
    own.kill('SIGKILL');
    await waitFor(() => own.process.exitCode !== null || own.process.signalCode !== null, 5000, 'redis to die');
    const baseline = await steadyResources();
    const began = Date.now();
    const running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot(redisOptions(own.url, { tracker: 'ip' }))],
        providers: [ConnectionsGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    later(() => running.close());
    expect(Date.now() - began).toBeLessThan(15_000);
    const store = running.app.get(WsRateLimitService).store as RedisRateLimitStore;
    const client = await TestClient.connect(running.url);
    later(() => client.close());
    client.send('echo', 0);
    await client.waitForEvent('echo');
    await own.restart();
    await waitFor(() => store.available, 15_000, 'the store to find Redis');
    client.send('echo', 1);
    await client.waitForEvent('echo', 2);
    expect(((await own.command('KEYS', 'wsrl:*')) as string[]).length).toBeGreaterThan(0);
    await client.close();
    await running.close();
    expect(store.client.status).toBe('end');
    expect(await redisConnectionsAfter(own)).toBe(0);
    expect(await leftOver(baseline)).toEqual({});
  });

  it.each([
    ['paused', (server: RedisServer) => server.pause()],
    ['killed', (server: RedisServer) => server.kill('SIGKILL')],
  ] as const)(
    'closes in bounded time with ws connections open and Redis %s, and leaves nothing open',
    async (_state, fault) => {
      const own = await startRedis();
      later(() => own.stop());
      const baseline = await steadyResources();
      const running = await startApp(
        {
          imports: [WsRateLimitModule.forRoot(redisOptions(own.url, { tracker: 'ip', maxConnectionsPerIp: 5 }))],
          providers: [ConnectionsGateway],
        },
        (app) => new WsRateLimitAdapter(app),
      );
      later(() => running.close());
      const clients = [await TestClient.connect(running.url), await TestClient.connect(running.url)];
      for (const client of clients) later(() => client.close());
      clients[0]!.send('echo', 1);
      await clients[0]!.waitForEvent('echo');
      fault(own);
      const began = Date.now();
      await running.close();
      expect(Date.now() - began).toBeLessThan(10_000);
      for (const client of clients) await client.waitClose();
      own.resume();
      expect(await leftOver(baseline)).toEqual({});
    },
  );

  it('closes twice without error, and closes a store it created when the app never listened', async () => {
    const baseline = await steadyResources();
    const running = await startApp(
      { imports: [WsRateLimitModule.forRoot(redisOptions(redis.url))], providers: [ConnectionsGateway] },
      (app) => new WsRateLimitAdapter(app),
    );
    const client = await TestClient.connect(running.url);
    later(() => client.close());
    await running.close();
    await client.waitClose();
    await expect(running.close()).resolves.toBeUndefined();

    const moduleRef = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot(redisOptions(redis.url))],
      providers: [ConnectionsGateway],
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    app.useWebSocketAdapter(new WsRateLimitAdapter(app));
    const store = app.get(WsRateLimitService).store as RedisRateLimitStore;
    expect(store.client.status).toBe('ready');
    await app.close();
    expect(store.client.status).toBe('end');
    expect(await redisConnectionsAfter(redis)).toBe(0);
    expect(await leftOver(baseline)).toEqual({});
  });

  it('closes socket.io connections (websocket and polling) and its Redis store at app.close()', async () => {
    const baseline = await steadyResources();
    const running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot(redisOptions(redis.url, { tracker: 'ip', maxConnectionsPerIp: 4 }))],
        providers: [ConnectionsGateway],
      },
      (app) => new WsRateLimitIoAdapter(app),
    );
    later(() => running.close());
    const url = `http://127.0.0.1:${running.port}`;
    const clients: IoTestClient[] = [await connectIo(url, 'websocket'), await connectIo(url, 'polling')];
    for (const client of clients) later(() => client.close());
    await running.close();
    await waitFor(() => clients.every((client) => client.disconnectReason !== undefined), 10_000, 'disconnects');
    for (const client of clients) client.close();
    expect(await redisConnectionsAfter(redis)).toBe(0);
    expect(await leftOver(baseline)).toEqual({});
  });

  it('keeps two apps on one Redis apart: closing one leaves the other deciding in Redis', async () => {
    const options = redisOptions(redis.url, { tracker: 'ip' });
    const start = () =>
      startApp({ imports: [WsRateLimitModule.forRoot(options)], providers: [ConnectionsGateway] }, (app) => {
        return new WsRateLimitAdapter(app);
      });
    const first = await start();
    later(() => first.close());
    const second = await start();
    later(() => second.close());
    const store = second.app.get(WsRateLimitService).store as RedisRateLimitStore;
    expect(first.app.get(WsRateLimitService).store).not.toBe(store);
    await first.close();
    const client = await TestClient.connect(second.url);
    later(() => client.close());
    client.send('echo', 1);
    await client.waitForEvent('echo');
    expect(store.available).toBe(true);
    expect(store.client.status).toBe('ready');
    expect(((await redis.command('KEYS', 'wsrl:*')) as string[]).length).toBeGreaterThan(0);
  });

  it("never closes a store or a Redis client the user passed, and takes the store's listeners off the client", async () => {
    const memory = new MemoryRateLimitStore();
    const client = storeClient(redis.port);
    later(() => client.quit());
    await waitFor(() => client.status === 'ready', 5000, 'the client');
    const listeners = () => ['close', 'end', 'ready', 'error'].map((event) => client.listenerCount(event));
    const before = listeners();
    for (const options of [
      { useEnv: false, store: memory },
      redisOptions('', { redis: { client }, tracker: 'ip' }),
    ] as WsRateLimitModuleOptions[]) {
      const running = await startApp(
        { imports: [WsRateLimitModule.forRoot(options)], providers: [ConnectionsGateway] },
        (app) => new WsRateLimitAdapter(app),
      );
      const socket = await TestClient.connect(running.url);
      socket.send('echo', 1);
      await socket.waitForEvent('echo');
      await socket.close();
      await running.close();
    }
    expect(client.status).toBe('ready');
    expect(await client.ping()).toBe('PONG');
    expect(listeners()).toEqual(before);
    expect((await memory.consume(createPlan(memory, 'x', [tokenBucketSpec('global', 'g', 1, 1)]))).allowed).toBe(true);
  });
});
