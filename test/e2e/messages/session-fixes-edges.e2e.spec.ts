/**
 * Adversarial review of 5e319e9 (client openTimeoutMs), e21a6b8 (close decided after async
 * decisions, refusal owners, one forRoot per app, outages at init, handshake drops counted)
 * and f1d5f37 (plan shapes per store). Real apps on 127.0.0.1, real clients, a real
 * redis-server where a case needs one. Two cases failed before their fixes: a flood that
 * degrades and then closes (degradeCooldownMs) was decided and counted past the close (25
 * rejections against 6 frames); the handshake time-out's error came after the client had
 * given up (maxReconnectAttempts 0).
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import {
  Catch,
  Injectable,
  Module,
  UseFilters,
  type ArgumentsHost,
  type ExceptionFilter,
  type INestApplication,
} from '@nestjs/common';
import { ConfigModule } from '@nestjs/config';
import { Test } from '@nestjs/testing';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { createServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Registry } from 'prom-client';
import { io as ioConnect } from 'socket.io-client';
import WebSocket from 'ws';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitException,
  WsRateLimitFilter,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { RateLimitedClient, socketIoFactory } from '../../../lib/client/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { freePort, startRedis } from '../../support/redis-server.js';
import { upgrade } from '../../support/http.js';
import { settle, sleep, TestClient } from '../../support/ws-client.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { rawPollingSession } from '../socket-io/c35-messages.harness.js';
import { connectionsEndedByServer } from '../../support/http.js';
import { metricSum } from '../../support/metrics.js';

/** Chat: 5 burst, a slow refill; ping: plenty. */
@WebSocketGateway()
@WsRateLimit()
class ReviewGateway {
  @Throttle({ type: 'chat', capacity: 5, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'chat', data };
  }

  @Throttle({ type: 'ping', capacity: 1000, refillRate: 1000 })
  @SubscribeMessage('ping')
  ping(@MessageBody() data: unknown) {
    return { event: 'pong', data };
  }
}

/** The README's catch-all filter, handing the limiter's refusals on. */
@Catch()
@Injectable()
class AllErrorsFilter implements ExceptionFilter {
  constructor(private readonly rateLimit: WsRateLimitFilter) {}
  catch(exception: unknown, host: ArgumentsHost) {
    if (exception instanceof WsRateLimitException) return this.rateLimit.catch(exception, host);
    const client = host.switchToWs().getClient<WebSocket>();
    client.send(JSON.stringify({ event: 'oops', data: String(exception) }));
  }
}

/** A handler-level catch-all and a class-level WsRateLimitFilter of its own. */
@WebSocketGateway()
@WsRateLimit()
@UseFilters(WsRateLimitFilter)
class FilteredGateway {
  @Throttle({ type: 'chat', capacity: 1, refillRate: 0.001 })
  @UseFilters(AllErrorsFilter)
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'chat', data };
  }

  @Throttle({ type: 'say', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('say')
  say(@MessageBody() data: unknown) {
    return { event: 'said', data };
  }
}

const count = (events: RateLimitEvent[], test: (event: RateLimitEvent) => boolean): number =>
  events.filter(test).length;

describe('session fixes review', () => {
  const apps: RunningApp[] = [];
  const clients: TestClient[] = [];
  const cleanups: Array<() => unknown> = [];

  const start = async (
    options: WsRateLimitModuleOptions,
    gateway: new (...args: never[]) => unknown = ReviewGateway,
  ) => {
    const running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })], providers: [gateway] },
      (app: INestApplication) => new WsRateLimitAdapter(app),
    );
    apps.push(running);
    return { running, limiter: running.app.get(WsRateLimitService) };
  };
  const connect = async (running: RunningApp) => {
    const client = await TestClient.connect(running.url);
    clients.push(client);
    return client;
  };

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch {
        // best effort
      }
    }
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (const running of apps.splice(0)) await running.close();
  });

  // --- Message pipeline: the close decided in one burst ------------------------------------

  it('async tracker: unknown events after a flood that decides the close get no error frame and are not decided', async () => {
    const registry = new Registry();
    const { running, limiter } = await start({
      metricsRegistry: registry,
      violations: { max: 3, windowMs: 60_000 },
      tracker: async (_client, { connectionId }) => `user-${connectionId}`,
    });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const client = await connect(running);
    client.inOneWrite(() => {
      for (let i = 0; i < 30; i++) client.send('chat', i);
      for (let i = 0; i < 5; i++) client.send(`nope-${i}`, i);
    });
    expect((await client.waitClose()).code).toBe(1008);
    await settle(() => limiter.stats().connections === 0, 300);
    subscription.unsubscribe();
    const replies = client.events('chat').length;
    const frames = client.events('rate_limit').length;
    const errors = client.events('error').length;
    expect({ replies, frames, errors }).toEqual({ replies: 5, frames: 3, errors: 0 });
    expect(await metricSum(registry, 'ws_rate_limit_violations_total')).toBe(frames);
    expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' })).toBe(frames);
    expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'allowed' })).toBe(replies);
    expect(count(events, (event) => event.kind === 'decision')).toBe(replies + frames);
  });

  it('with degradeCooldownMs, a flood in one write that degrades then closes counts as many rejections as rate_limit frames', async () => {
    const registry = new Registry();
    const { running, limiter } = await start({
      metricsRegistry: registry,
      violations: { max: 3, windowMs: 60_000 },
      degradeCooldownMs: 60_000,
    });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const client = await connect(running);
    client.inOneWrite(() => {
      for (let i = 0; i < 30; i++) client.send('chat', i);
    });
    const closed = await client.waitClose();
    await settle(() => limiter.stats().connections === 0, 300);
    subscription.unsubscribe();
    const replies = client.events('chat').length;
    const frames = client.events('rate_limit').length;
    expect(closed.code).toBe(1008);
    expect(replies).toBe(5);
    expect(await metricSum(registry, 'ws_rate_limit_violations_total')).toBe(frames);
    expect({
      rejected: await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' }),
      frames,
    }).toEqual({ rejected: frames, frames });
  });

  it('Redis: a flood mixing admitted and refused messages and unknown events: every admitted message answered, figures match frames', async () => {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const registry = new Registry();
    const { running, limiter } = await start({
      metricsRegistry: registry,
      store: 'redis',
      redis: { url: redis.url, commandTimeoutMs: 5000 },
      tracker: 'ip',
      violations: { max: 3, windowMs: 60_000 },
    });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const client = await connect(running);
    client.inOneWrite(() => {
      for (let i = 0; i < 40; i++) {
        client.send('chat', i);
        client.send('ping', i);
      }
      for (let i = 0; i < 5; i++) client.send(`nope-${i}`, i);
    });
    expect((await client.waitClose()).code).toBe(1008);
    await settle(() => limiter.stats().connections === 0, 300);
    subscription.unsubscribe();
    const replies = client.events('chat').length + client.events('pong').length;
    const frames = client.events('rate_limit').length;
    const errors = client.events('error').length;
    expect({ chat: client.events('chat').length, frames, errors }).toEqual({ chat: 5, frames: 3, errors: 0 });
    expect(await metricSum(registry, 'ws_rate_limit_violations_total')).toBe(frames);
    expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' })).toBe(frames);
    expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'allowed' })).toBe(replies);
    expect(count(events, (event) => event.kind === 'decision')).toBe(replies + frames);
    // Answers in order: every reply before the rate_limit frames that follow it.
    const order = client.frames.map((frame) => frame.event);
    const lastReply = Math.max(order.lastIndexOf('chat'), order.lastIndexOf('pong'));
    expect(lastReply).toBeLessThan(order.lastIndexOf('rate_limit'));
  }, 60_000);

  it('Redis: unknown events only, flooded past the global budget, end with a 1008 and figures that match', async () => {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const registry = new Registry();
    const { running, limiter } = await start({
      metricsRegistry: registry,
      store: 'redis',
      redis: { url: redis.url, commandTimeoutMs: 5000 },
      tracker: 'ip',
      global: { capacity: 5, refillRate: 0.001 },
      violations: { max: 3, windowMs: 60_000 },
    });
    const client = await connect(running);
    client.inOneWrite(() => {
      for (let i = 0; i < 5; i++) client.send('ping', i);
      for (let i = 0; i < 40; i++) client.send(`nope-${i}`, i);
    });
    expect((await client.waitClose()).code).toBe(1008);
    await settle(() => limiter.stats().connections === 0, 300);
    const frames = client.events('rate_limit').length;
    expect({ pongs: client.events('pong').length, frames, errors: client.events('error').length }).toEqual({
      pongs: 5,
      frames: 3,
      errors: 0,
    });
    expect(await metricSum(registry, 'ws_rate_limit_violations_total')).toBe(frames);
    expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' })).toBe(frames);
  }, 60_000);

  const ioFlood = async (options: WsRateLimitModuleOptions) => {
    const registry = new Registry();
    const running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            metricsRegistry: registry,
            violations: { max: 3, windowMs: 60_000 },
            ...options,
          }),
        ],
        providers: [ReviewGateway],
      },
      (app: INestApplication) => new WsRateLimitIoAdapter(app),
    );
    apps.push(running);
    const limiter = running.app.get(WsRateLimitService);
    const session = await rawPollingSession(running.port);
    const packets = [
      ...Array.from({ length: 40 }, (_v, i) => `42["chat",${i}]`),
      ...Array.from({ length: 40 }, (_v, i) => `42["ping",${i}]`),
      ...Array.from({ length: 5 }, (_v, i) => `42["nope-${i}",${i}]`),
    ];
    expect(await session.post(packets.join('\x1e'))).toBe(200);
    const received: string[] = [];
    const deadline = Date.now() + 15_000;
    while (!received.some((packet) => packet.startsWith('41')) && Date.now() < deadline) {
      received.push(...(await session.poll()).split('\x1e'));
    }
    await settle(() => limiter.stats().connections === 0);
    if (!received.includes('1')) await session.poll().catch(() => '');
    const chats = received.filter((packet) => packet.startsWith('42["chat"')).length;
    const frames = received.filter((packet) => packet.startsWith('42["rate_limit"')).length;
    return {
      figures: {
        chats,
        frames,
        disconnects: received.filter((p) => p.startsWith('42["rate_limit_disconnect"')).length,
      },
      rejected: await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' }),
      violations: await metricSum(registry, 'ws_rate_limit_violations_total'),
    };
  };

  it('socket.io polling, async tracker: a flood in one POST: figures match what the client got', async () => {
    const result = await ioFlood({ tracker: async (_client, { connectionId }) => `user-${connectionId}` });
    expect(result).toEqual({ figures: { chats: 5, frames: 3, disconnects: 1 }, rejected: 3, violations: 3 });
  }, 60_000);

  it('socket.io polling, Redis: a flood in one POST: figures match what the client got', async () => {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const result = await ioFlood({ store: 'redis', redis: { url: redis.url, commandTimeoutMs: 5000 }, tracker: 'ip' });
    expect(result).toEqual({ figures: { chats: 5, frames: 3, disconnects: 1 }, rejected: 3, violations: 3 });
  }, 60_000);

  // --- Client: openTimeoutMs --------------------------------------------------------------

  /** A TCP server that takes connections and never answers: each connection and whether it ended. */
  const silentServer = async () => {
    const held: Socket[] = [];
    const ended = new Set<Socket>();
    const server = createServer((socket) => {
      held.push(socket);
      socket.on('error', () => undefined);
      socket.resume();
      socket.on('close', () => ended.add(socket));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(async () => {
      for (const socket of held) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });
    return { held, ended, port: (server.address() as AddressInfo).port };
  };

  // Over long polling, engine.io-client 6 leaves a poll that never got its answer pending
  // (it aborts a poll only on an error, and its Node XHR throws if aborted mid-request): a
  // limitation of socket.io-client noted in the README, not tested here.
  for (const transport of ['websocket'] as const) {
    it('socketIoFactory over websocket: a handshake given up after openTimeoutMs is ended and retried', async () => {
      const server = await silentServer();
      const client = new RateLimitedClient(`http://127.0.0.1:${server.port}`, {
        createSocket: socketIoFactory(ioConnect, { transports: [transport] }),
        openTimeoutMs: 300,
        policyDelayMs: 0,
        backoffBaseMs: 1,
        backoffCapMs: 1,
      });
      cleanups.push(() => client.close());
      const errors: unknown[] = [];
      const reconnects: { code: number; policy: boolean }[] = [];
      client.on('error', (error) => errors.push(error));
      client.on('reconnect', (event) => reconnects.push(event));
      const deadline = Date.now() + 15_000;
      while (reconnects.length < 2 && Date.now() < deadline) await sleep(50);
      expect(reconnects.length).toBeGreaterThanOrEqual(2);
      expect(String(errors[0])).toContain('the handshake did not complete within 300 ms');
      client.close();
      // Each abandoned attempt's connection is ended, not left to the server.
      while (server.held.some((socket) => !server.ended.has(socket)) && Date.now() < deadline) await sleep(50);
      expect({
        held: server.held.length >= 2,
        open: server.held.filter((socket) => !server.ended.has(socket)).length,
      }).toEqual({ held: true, open: 0 });
    }, 30_000);
  }

  it('maxReconnectAttempts 0: the handshake time-out\'s error comes before "gave up after 0 reconnect attempts"', async () => {
    const server = await silentServer();
    const client = new RateLimitedClient(`ws://127.0.0.1:${server.port}`, {
      WebSocket,
      openTimeoutMs: 300,
      maxReconnectAttempts: 0,
    });
    cleanups.push(() => client.close());
    const errors: string[] = [];
    const states: string[] = [];
    client.on('error', (error) => errors.push(String(error)));
    client.on('state', (state) => states.push(state));
    let reconnects = 0;
    client.on('reconnect', () => reconnects++);
    const deadline = Date.now() + 15_000;
    while (client.state !== 'closed' && Date.now() < deadline) await sleep(50);
    await sleep(500);
    expect(client.state).toBe('closed');
    expect(reconnects).toBe(0);
    expect(server.held).toHaveLength(1);
    expect(errors[0]).toContain('the handshake did not complete within 300 ms');
  }, 30_000);

  it('an error listener that closes the client when the handshake times out leaves nothing running', async () => {
    const server = await silentServer();
    const client = new RateLimitedClient(`ws://127.0.0.1:${server.port}`, {
      WebSocket,
      openTimeoutMs: 300,
      policyDelayMs: 0,
      backoffBaseMs: 1,
      backoffCapMs: 1,
    });
    cleanups.push(() => client.close());
    client.on('error', () => client.close());
    const deadline = Date.now() + 15_000;
    while (client.state !== 'closed' && Date.now() < deadline) await sleep(50);
    await sleep(1000);
    expect({ state: client.state, attempts: server.held.length }).toEqual({ state: 'closed', attempts: 1 });
    expect(client.send('chat', 1)).toBe(false);
  }, 30_000);

  // --- Filters and several apps ------------------------------------------------------------

  it('apps side by side with their own filters (a catch-all handing on, a class WsRateLimitFilter) each answer with their own options, also after one closes', async () => {
    const startTagged = async (tag: string, max: number) =>
      (
        await start(
          {
            violations: { max, windowMs: 60_000 },
            frameBuilder: (info) => ({ event: 'rate_limit', data: { ...info, app: tag } }),
          },
          FilteredGateway,
        )
      ).running;
    const probe = async (running: RunningApp, event: 'chat' | 'say') => {
      const client = await connect(running);
      client.send(event, 1);
      client.send(event, 2);
      const [frame] = await client.waitForEvent('rate_limit');
      return { app: frame!.data.app, warningCount: frame!.data.warningCount };
    };
    const a = await startTagged('a', 1);
    const b = await startTagged('b', 100);
    for (const event of ['chat', 'say'] as const) {
      expect(await probe(a, event)).toEqual({ app: 'a', warningCount: 1 });
      expect(await probe(b, event)).toEqual({ app: 'b', warningCount: 1 });
    }
    // a's threshold of 1 closes; b's of 100 does not.
    const onA = await connect(a);
    onA.send('chat', 1);
    onA.send('chat', 2);
    expect((await onA.waitClose()).code).toBe(1008);
    apps.splice(apps.indexOf(a), 1);
    await a.close();
    const c = await startTagged('c', 100);
    for (const event of ['chat', 'say'] as const) {
      expect(await probe(b, event)).toEqual({ app: 'b', warningCount: 1 });
      expect(await probe(c, event)).toEqual({ app: 'c', warningCount: 1 });
    }
  });

  it('one forRoot re-exported by a shared module imported by several modules, and forRootAsync with imports, start', async () => {
    const RateLimit = WsRateLimitModule.forRoot({ useEnv: false });
    @Module({ imports: [RateLimit], exports: [RateLimit] })
    class SharedModule {}
    @Module({ imports: [SharedModule] })
    class FeatureA {}
    @Module({ imports: [SharedModule] })
    class FeatureB {}
    const first = await Test.createTestingModule({ imports: [SharedModule, FeatureA, FeatureB] }).compile();
    await first.init();
    await first.close();
    const second = await Test.createTestingModule({
      imports: [
        WsRateLimitModule.forRootAsync({
          imports: [ConfigModule.forRoot({ ignoreEnvFile: true })],
          useFactory: () => ({ useEnv: false, violations: { max: 7, windowMs: 1000 } }),
        }),
      ],
    }).compile();
    await second.init();
    expect(second.get(WsRateLimitService).options.violations.max).toBe(7);
    await second.close();
  });

  // --- Handshake hygiene ---------------------------------------------------------------------

  it('socket.io adapter: connections the pending-handshake cap drops are counted and streamed; shadow mode too', async () => {
    for (const shadow of [false, true]) {
      const registry = new Registry();
      const running = await startApp(
        {
          imports: [
            WsRateLimitModule.forRoot({
              useEnv: false,
              metricsRegistry: registry,
              maxPendingHandshakesPerIp: 2,
              shadow,
            }),
          ],
          providers: [ReviewGateway],
        },
        (app: INestApplication) => new WsRateLimitIoAdapter(app),
      );
      apps.push(running);
      const limiter = running.app.get(WsRateLimitService);
      const events: RateLimitEvent[] = [];
      const subscription = limiter.events$.subscribe((event) => events.push(event));
      const dropped = await connectionsEndedByServer(running.port, 4, 3000);
      subscription.unsubscribe();
      expect(dropped).toBe(2);
      expect({
        metric: await metricSum(registry, 'ws_rate_limit_connections_total', {
          result: 'refused',
          reason: 'handshakes',
        }),
        events: count(
          events,
          (event) => event.kind === 'connection' && !event.accepted && event.reason === 'handshakes',
        ),
      }).toEqual({ metric: 2, events: 2 });
      apps.splice(apps.indexOf(running), 1);
      await running.close();
    }
  });

  // --- Store availability from init -----------------------------------------------------------

  it('fail mode closed, Redis unreachable at start: one outage at once, upgrades refused 503 (reason store), no second report', async () => {
    const registry = new Registry();
    const { running, limiter } = await start({
      metricsRegistry: registry,
      store: 'redis',
      redis: { url: `redis://127.0.0.1:${await freePort()}` },
      failMode: 'closed',
    });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    expect(await metricSum(registry, 'ws_rate_limit_store_outages_total')).toBe(1);
    expect(await metricSum(registry, 'ws_rate_limit_store_fallback')).toBe(1);
    for (let i = 0; i < 3; i++) expect((await upgrade(running.port)).status).toBe(503);
    subscription.unsubscribe();
    expect(await metricSum(registry, 'ws_rate_limit_connections_total', { result: 'refused', reason: 'store' })).toBe(
      3,
    );
    expect(await metricSum(registry, 'ws_rate_limit_store_outages_total')).toBe(1);
    expect(count(events, (event) => event.kind === 'store')).toBe(0);
  }, 30_000);
});
