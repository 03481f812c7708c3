import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { Module, type INestApplication, type LoggerService, type ModuleMetadata } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Redis } from 'ioredis';
import type { IncomingMessage, Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { register } from 'prom-client';
import {
  createRedisStore,
  RedisRateLimitStore,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { createPlan, figuresSuffix, tokenBucketSpec } from '../../lib/store.js';
import { ConnectionsGateway } from '../e2e/connections/connections.gateway.js';
import { startApp, type RunningApp } from '../support/app.js';
import { connectIo, IoTestClient, waitFor } from '../support/io-client.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { TestClient } from '../support/ws-client.js';
import { storeClient } from './helpers.js';

/**
 * Shutdown and lifecycle, from an adversarial review: app.close() with decisions waiting on
 * a frozen Redis, handshakes under way, Redis down, reservations and leases given back, a
 * client the user owns, events$ and metrics across a close and a second app.
 *
 * Two cases failed on the code reviewed (31df3ae), each fixed since: a store given in code
 * that made its own Redis connection (the recipe `store: await createRedisStore({ url })`)
 * was never closed, nothing else holding it (the app now closes such a store at shutdown:
 * `closesWithApp`); and a start-up error for a second forRoot left the connections of the
 * stores made so far (the module closes them before it throws).
 */

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A gateway whose figures stop start-up (a negative capacity): its application's init fails. */
@WebSocketGateway()
@WsRateLimit()
class BadFiguresGateway {
  @Throttle({ capacity: -1, refillRate: 1 })
  @SubscribeMessage('bad')
  bad() {
    return undefined;
  }
}

const redisOptions = (url: string, more: WsRateLimitModuleOptions = {}): WsRateLimitModuleOptions => ({
  useEnv: false,
  store: 'redis',
  redis: { url },
  ...more,
});

/** A logger that keeps what it is told, with the time. */
class Captured implements LoggerService {
  readonly lines: Array<{ at: number; line: string }> = [];
  private push(level: string, message: unknown) {
    const text = message instanceof Error ? `${message.name}: ${message.message}` : String(message);
    this.lines.push({ at: Date.now(), line: `${level} ${text}` });
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
  debug() {}
  verbose() {}
}

/** Like startApp, with a logger of the test's. */
async function startLogged(
  metadata: ModuleMetadata,
  logger: LoggerService | false,
  adapter: (app: INestApplication) => WsRateLimitAdapter | WsRateLimitIoAdapter,
): Promise<RunningApp> {
  const moduleRef = await Test.createTestingModule(metadata).compile();
  const app = moduleRef.createNestApplication({ logger });
  app.useWebSocketAdapter(adapter(app));
  await app.listen(0, '127.0.0.1');
  const port = (app.getHttpServer().address() as AddressInfo).port;
  return { app, port, url: `ws://127.0.0.1:${port}`, close: () => app.close() };
}

/** Resource types keeping the event loop alive, counted (redis-server children aside). */
function resources(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const type of process.getActiveResourcesInfo()) {
    if (type === 'ProcessWrap' || type === 'PipeWrap') continue;
    counts.set(type, (counts.get(type) ?? 0) + 1);
  }
  return counts;
}

async function steadyResources(): Promise<Map<string, number>> {
  let last = JSON.stringify([...resources()].sort());
  for (let i = 0; i < 50; i++) {
    await sleep(100);
    const now = JSON.stringify([...resources()].sort());
    if (now === last) break;
    last = now;
  }
  return resources();
}

async function leftOver(baseline: Map<string, number>, timeoutMs = 8000): Promise<Record<string, number>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left: Record<string, number> = {};
    for (const [type, count] of resources()) {
      const more = count - (baseline.get(type) ?? 0);
      if (more > 0) left[type] = more;
    }
    if (Object.keys(left).length === 0 || Date.now() > deadline) return left;
    await sleep(50);
  }
}

describe('shutdown and lifecycle (review)', () => {
  let redis: RedisServer;
  const cleanups: Array<() => unknown> = [];
  const later = (cleanup: () => unknown) => cleanups.push(cleanup);
  const rejections: unknown[] = [];
  const onRejection = (reason: unknown) => rejections.push(reason);

  beforeAll(async () => {
    redis = await startRedis();
    process.on('unhandledRejection', onRejection);
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
    rejections.length = 0;
  });
  afterAll(async () => {
    process.off('unhandledRejection', onRejection);
    await redis.stop();
  });

  /** Resolves with the first request (or upgrade) the app's HTTP server receives on `path`. */
  const requestSeen = (running: RunningApp, path: string) =>
    new Promise<IncomingMessage>((resolve) => {
      const server = running.app.getHttpServer() as HttpServer;
      const seen = (request: IncomingMessage) => {
        if (!request.url?.startsWith(path)) return;
        server.off('request', seen);
        server.off('upgrade', seen);
        resolve(request);
      };
      server.prependListener('request', seen);
      server.prependListener('upgrade', seen);
    });

  it('socket.io (polling): a handshake whose admission waits on a frozen Redis when app.close() starts leaves nothing running', async () => {
    const baseline = await steadyResources();
    const running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot(redisOptions(redis.url, { tracker: 'ip' }))],
        providers: [ConnectionsGateway],
      },
      (app) => new WsRateLimitIoAdapter(app),
    );
    later(() => running.close());
    const before = ConnectionsGateway.connections;
    redis.pause();
    const seen = requestSeen(running, '/socket.io/');
    const client = new IoTestClient(`http://127.0.0.1:${running.port}`, 'polling');
    later(() => client.close());
    await seen;
    const began = Date.now();
    await running.close();
    expect(Date.now() - began).toBeLessThan(5000);
    redis.resume();
    await waitFor(
      () => client.connectError !== undefined || client.disconnectReason !== undefined,
      10_000,
      'the client to fail',
    );
    client.close();
    expect(client.socket.connected).toBe(false);
    expect(ConnectionsGateway.connections - before).toBe(0);
    expect(await leftOver(baseline)).toEqual({});
    expect(rejections).toEqual([]);
  }, 30_000);

  it.each(['ws', 'socket.io'] as const)(
    '%s: messages whose Redis decision waits (Redis frozen) when app.close() starts: close is bounded, nothing logged or rejected after it, nothing left running',
    async (transport) => {
      const baseline = await steadyResources();
      const logger = new Captured();
      const running = await startLogged(
        {
          imports: [WsRateLimitModule.forRoot(redisOptions(redis.url, { tracker: 'ip' }))],
          providers: [ConnectionsGateway],
        },
        logger,
        (app) => (transport === 'ws' ? new WsRateLimitAdapter(app) : new WsRateLimitIoAdapter(app)),
      );
      later(() => running.close());
      let sendBurst: () => void;
      let gone: () => Promise<unknown>;
      if (transport === 'ws') {
        const client = await TestClient.connect(running.url);
        later(() => client.close());
        client.send('echo', 0);
        await client.waitForEvent('echo');
        sendBurst = () =>
          client.inOneWrite(() => {
            for (let i = 1; i <= 20; i++) client.send('echo', i);
          });
        gone = () => client.waitClose();
      } else {
        const client = await connectIo(`http://127.0.0.1:${running.port}`, 'websocket');
        later(() => client.close());
        client.socket.emit('echo', 0);
        await client.until(() => client.of('echo').length === 1);
        sendBurst = () => {
          for (let i = 1; i <= 20; i++) client.socket.emit('echo', i);
        };
        gone = () => client.disconnected();
      }
      redis.pause();
      sendBurst();
      await sleep(20);
      const began = Date.now();
      await running.close();
      const closedAt = Date.now();
      expect(closedAt - began).toBeLessThan(5000);
      await gone();
      redis.resume();
      await sleep(1000);
      const afterClose = logger.lines.filter(({ at, line }) => at >= closedAt && !line.startsWith('log'));
      expect(afterClose.map(({ line }) => line)).toEqual([]);
      expect(rejections).toEqual([]);
      expect(await leftOver(baseline)).toEqual({});
    },
    30_000,
  );

  it('reservations held by the app go back to Redis at app.close() (the shared bucket lacks only what was spent)', async () => {
    const running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot(
            redisOptions(redis.url, {
              tracker: 'ip',
              global: { capacity: 100, refillRate: 10 },
              type: { capacity: 100, refillRate: 10 },
              redis: { url: redis.url, reservationBatch: 32, reservationTtlMs: 5000 },
            }),
          ),
        ],
        providers: [ConnectionsGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    later(() => running.close());
    const client = await TestClient.connect(running.url);
    later(() => client.close());
    for (let i = 0; i < 12; i++) {
      client.send('echo', i);
      await client.waitForEvent('echo', i + 1);
    }
    const started = Date.now();
    const service = running.app.get(WsRateLimitService);
    // What the app's own plan reads in Redis, from an independent store.
    const probeClient = storeClient(redis.port);
    later(() => probeClient.quit());
    await waitFor(() => probeClient.status === 'ready', 5000, 'the probe client');
    const other = new RedisRateLimitStore({ client: probeClient });
    // The module's global bucket, under its suffix naming its figures.
    const global = figuresSuffix('g', 100, 10);
    const plan = createPlan(other, 'ip:127.0.0.1', [tokenBucketSpec('global', global, 100, 10)]);
    const key = service.store.key('ip:127.0.0.1', global);
    expect(key).toBe(other.key('ip:127.0.0.1', global));
    const [held] = await other.peek(plan);
    await client.close();
    await running.close();
    const [back] = await other.peek(plan);
    const refilled = Math.ceil(((Date.now() - started) / 1000) * 10) + 2;
    // 13 messages spent (the connection's own welcome none); the batch's unspent tail is back.
    expect({ heldBelowSpent: held!.remaining < 100 - 12, back: back!.remaining >= 100 - 12 }).toEqual({
      heldBelowSpent: true,
      back: true,
    });
    expect(back!.remaining).toBeLessThanOrEqual(100 - 12 + refilled);
  }, 30_000);

  it('events$ completes at app.close(), and a late subscriber is completed at once', async () => {
    const running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot(redisOptions(redis.url, { tracker: 'ip' }))],
        providers: [ConnectionsGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    later(() => running.close());
    const service = running.app.get(WsRateLimitService);
    const seen: RateLimitEvent[] = [];
    let completed = false;
    const subscription = service.events$.subscribe({
      next: (event) => seen.push(event),
      complete: () => (completed = true),
    });
    later(() => subscription.unsubscribe());
    const client = await TestClient.connect(running.url);
    later(() => client.close());
    client.send('echo', 1);
    await client.waitForEvent('echo');
    await running.close();
    expect(completed).toBe(true);
    let lateCompleted = false;
    service.events$.subscribe({ complete: () => (lateCompleted = true) }).unsubscribe();
    expect(lateCompleted).toBe(true);
    expect(seen.some((event) => event.kind === 'connection')).toBe(true);
  });

  it('a client the user owns: app.close() with Redis frozen is bounded, the client is not quit and works once Redis is back', async () => {
    const client = storeClient(redis.port);
    later(() => client.quit());
    await waitFor(() => client.status === 'ready', 5000, 'the client');
    const listeners = () => ['close', 'end', 'ready', 'error'].map((event) => client.listenerCount(event));
    const before = listeners();
    const running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot(
            redisOptions('', {
              tracker: 'ip',
              maxConnectionsPerIp: 3,
              redis: { client, reservationBatch: 16 },
            }),
          ),
        ],
        providers: [ConnectionsGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    later(() => running.close());
    const socket = await TestClient.connect(running.url);
    later(() => socket.close());
    for (let i = 0; i < 5; i++) {
      socket.send('echo', i);
      await socket.waitForEvent('echo', i + 1);
    }
    redis.pause();
    const began = Date.now();
    await running.close();
    expect(Date.now() - began).toBeLessThan(3000);
    redis.resume();
    expect(client.status).toBe('ready');
    expect(await client.ping()).toBe('PONG');
    expect(listeners()).toEqual(before);
  }, 30_000);

  it('a second app in the same process (default prom-client registry) after the first closed: its decisions and open connections are counted', async () => {
    register.clear();
    later(() => register.clear());
    const start = () =>
      startApp(
        {
          imports: [WsRateLimitModule.forRoot(redisOptions(redis.url, { tracker: 'ip', metricsPrefix: 'shut_' }))],
          providers: [ConnectionsGateway],
        },
        (app) => new WsRateLimitAdapter(app),
      );
    const read = async (name: string, labels: Record<string, string> = {}) => {
      const metric = register.getSingleMetric(name);
      if (!metric) return undefined;
      const values = (await metric.get()).values as Array<{ value: number; labels: Record<string, string> }>;
      return values
        .filter((value) => Object.entries(labels).every(([label, want]) => value.labels[label] === want))
        .reduce((sum, value) => sum + value.value, 0);
    };
    const first = await start();
    later(() => first.close());
    const one = await TestClient.connect(first.url);
    later(() => one.close());
    one.send('echo', 1);
    await one.waitForEvent('echo');
    await first.close();
    await one.waitClose();
    const afterFirst = await read('shut_decisions_total', { result: 'allowed' });
    expect(afterFirst).toBe(1);
    expect(await read('shut_open_connections')).toBe(0);

    const second = await start();
    later(() => second.close());
    const two = await TestClient.connect(second.url);
    later(() => two.close());
    two.send('echo', 1);
    two.send('echo', 2);
    await two.waitForEvent('echo', 2);
    expect(await read('shut_decisions_total', { result: 'allowed' })).toBe(3);
    expect(await read('shut_open_connections')).toBe(1);
    expect(await read('shut_connections_total', { result: 'accepted' })).toBe(2);
  }, 30_000);

  it('the JSDoc recipe forRootAsync({ useFactory: async () => ({ store: await createRedisStore({ url }) }) }) leaves no Redis connection open after app.close()', async () => {
    const baseline = await steadyResources();
    const running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRootAsync({
            useFactory: async () => ({
              useEnv: false,
              tracker: 'ip',
              store: await createRedisStore({ url: redis.url }),
            }),
          }),
        ],
        providers: [ConnectionsGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    const store = running.app.get(WsRateLimitService).store as RedisRateLimitStore;
    later(() => store.close());
    const client = await TestClient.connect(running.url);
    later(() => client.close());
    client.send('echo', 1);
    await client.waitForEvent('echo');
    await client.close();
    await running.close();
    // I-4 (RELIABILITY.md): after app.close() no library-owned handle remains and the Redis
    // client is ended. This client was made by the library (createRedisStore), and the
    // application has no other place to close it in this recipe.
    expect({ status: store.client.status, left: await leftOver(baseline, 3000) }).toEqual({ status: 'end', left: {} });
  });

  it('one createRedisStore({ url }) store given to two apps: closing the first leaves the second deciding in Redis, the last closes it', async () => {
    const baseline = await steadyResources();
    const store = await createRedisStore({ url: redis.url, keyPrefix: 'shared-store:' });
    later(() => store.close());
    const start = () =>
      startApp(
        {
          imports: [WsRateLimitModule.forRoot({ useEnv: false, tracker: 'ip', store })],
          providers: [ConnectionsGateway],
        },
        (app) => new WsRateLimitAdapter(app),
      );
    const first = await start();
    const second = await start();
    await first.close();
    // The store the first app was given is still open: the second decides in Redis.
    expect(store.client.status).toBe('ready');
    const keys = async () => ((await redis.command('KEYS', 'shared-store:*')) as string[]).length;
    const before = await keys();
    const client = await TestClient.connect(second.url);
    later(() => client.close());
    client.send('echo', 1);
    await client.waitForEvent('echo');
    expect(await keys()).toBeGreaterThan(before);
    await client.close();
    await second.close();
    // The last app closes it: no Redis connection of the library is left.
    expect({ status: store.client.status, left: await leftOver(baseline, 3000) }).toEqual({ status: 'end', left: {} });
  });

  it('one such store, an app running on it and another whose start-up fails: closing the failed one leaves the store to the running one, which closes it', async () => {
    const baseline = await steadyResources();
    const store = await createRedisStore({ url: redis.url, keyPrefix: 'shared-failed:' });
    later(() => store.close());
    const running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, tracker: 'ip', store })],
        providers: [ConnectionsGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    const moduleRef = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, tracker: 'ip', store })],
      providers: [BadFiguresGateway],
    }).compile();
    const failing = moduleRef.createNestApplication({ logger: false });
    failing.useWebSocketAdapter(new WsRateLimitAdapter(failing));
    await expect(failing.init()).rejects.toThrow(/capacity/);
    // Closed as the README asks of an application whose start-up failed.
    await failing.close();
    expect(store.client.status).toBe('ready');
    const client = await TestClient.connect(running.url);
    later(() => client.close());
    client.send('echo', 1);
    await client.waitForEvent('echo');
    await client.close();
    await running.close();
    expect({ status: store.client.status, left: await leftOver(baseline, 3000) }).toEqual({ status: 'end', left: {} });
  });

  /**
   * Runs `run` while recording every ioredis client constructed (its constructor calls
   * `connect`), so that a test can end clients the code under test leaked and left it no
   * handle to (clean-up only: the clients talk to the real server).
   */
  async function recordingClients<T>(run: () => Promise<T>): Promise<{ result: T; clients: Redis[] }> {
    const clients: Redis[] = [];
    const original = Redis.prototype.connect;
    Redis.prototype.connect = function (this: Redis, ...args: Parameters<Redis['connect']>) {
      clients.push(this);
      return original.apply(this, args);
    };
    try {
      return { result: await run(), clients };
    } finally {
      Redis.prototype.connect = original;
    }
  }

  const redisConnections = async () =>
    String(await redis.command('CLIENT', 'LIST'))
      .trim()
      .split('\n')
      .filter((line) => line.includes('addr=') && !line.includes('cmd=client|list')).length;

  it('a start-up error at compile (forRoot imported twice, on Redis) leaves none of the Redis connections its stores opened', async () => {
    const baseline = await steadyResources();
    @Module({ imports: [WsRateLimitModule.forRoot(redisOptions(redis.url))] })
    class FeatureModule {}
    const { result: failed, clients } = await recordingClients(() =>
      Test.createTestingModule({
        imports: [WsRateLimitModule.forRoot(redisOptions(redis.url)), FeatureModule],
        providers: [ConnectionsGateway],
      })
        .compile()
        .then(
          (moduleRef) => later(() => moduleRef.close()) && 'compiled',
          (error: Error) => error.message,
        ),
    );
    later(() => clients.forEach((client) => client.status !== 'end' && client.disconnect()));
    expect(failed).toContain('imported 2 times');
    // No application exists to close: what the failed start-up opened must be closed by it
    // (else the process stays alive on them, as Jest's "did not exit" says).
    await sleep(500);
    expect({ redisConnections: await redisConnections(), left: await leftOver(baseline, 3000) }).toEqual({
      redisConnections: 0,
      left: {},
    });
  });

  it('a start-up validation error in onModuleInit: app.close() after the failed init ends the Redis client', async () => {
    const baseline = await steadyResources();
    const { result, clients } = await recordingClients(async () => {
      const moduleRef = await Test.createTestingModule({
        imports: [WsRateLimitModule.forRoot(redisOptions(redis.url))],
        providers: [BadFiguresGateway],
      }).compile();
      const app = moduleRef.createNestApplication({ logger: false });
      app.useWebSocketAdapter(new WsRateLimitAdapter(app));
      const init = await app.init().then(
        () => 'started',
        (error: Error) => error.message,
      );
      await app.close();
      return init;
    });
    later(() => clients.forEach((client) => client.status !== 'end' && client.disconnect()));
    expect(result).toContain('capacity');
    expect(clients.map((client) => client.status)).toEqual(['end']);
    expect(await redisConnections()).toBe(0);
    expect(await leftOver(baseline, 3000)).toEqual({});
  });
});
