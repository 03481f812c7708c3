/**
 * Adversarial review of b5a7391 (socket.io: events no handler takes decided on a tick behind
 * the routed events still on their way to their guard), with 2ff6148 (refusals met after the
 * close was decided) around it.
 *
 * The promise checked (README, "Frames held while a decision waits" and "Events no handler
 * takes"): an event no handler takes is charged to the global budget after the routed events
 * that arrived before it, so decisions keep arrival order: with a budget of N, the first N
 * events are the ones admitted, whatever the handler they go to.
 *
 * Real apps on 127.0.0.1, real socket.io-client clients, a real redis-server on a free port.
 *
 * Found here, on b5a7391 (both stores; also before it): with an application middleware
 * after the adapter's that calls next() later, an unknown event sent behind a chat is decided
 * before the chat's guard runs (the chat counts as in transit only until the tick after the
 * adapter's own next()), so it takes the last token and the chat is refused. Its fix
 * (7e211a2) was reverted after a review (test/e2e/socket-io/ordering-edges.e2e.spec.ts):
 * left alone, README says so; the two cases pinning it were dropped.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { Injectable } from '@nestjs/common';
import {
  ConnectedSocket,
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  type OnGatewayConnection,
} from '@nestjs/websockets';
import type { Socket } from 'socket.io';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { startApp, type RunningApp } from '../support/app.js';
import { IoTestClient, waitFor, answeredIds, connectReady } from '../support/io-client.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { settle, sleep } from '../support/ws-client.js';

/** The reply events of admitted messages. */
const REPLIES: ReadonlySet<string> = new Set(['chat_ack', 'heard_ack']);

/** How the gateway's sockets are set up, and what ran. */
@Injectable()
class Setup {
  /** Ids of admitted events, in the order their handler or listener ran. */
  readonly ran: Array<{ event: string; id: number }> = [];
  /** Handlers and listeners that ran for a socket already disconnected. */
  ranClosed = 0;
}

@WebSocketGateway()
@WsRateLimit()
class ReviewGateway implements OnGatewayConnection {
  constructor(private readonly setup: Setup) {}

  handleConnection(socket: Socket) {
    // `heard`: no handler, the application's own listener.
    socket.on('heard', (data: { id: number }) => {
      if (!socket.connected) this.setup.ranClosed++;
      this.setup.ran.push({ event: 'heard', id: data.id });
      socket.emit('heard_ack', data);
    });
    // Once NestJS has bound the handlers (and the adapter its middleware), right after this hook.
    queueMicrotask(() => socket.emit('ready'));
  }

  @Throttle({ type: 'chat', capacity: 1000, refillRate: 1000 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: { id: number }, @ConnectedSocket() socket: Socket) {
    if (!socket.connected) this.setup.ranClosed++;
    this.setup.ran.push({ event: 'chat', id: data.id });
    return { event: 'chat_ack', data };
  }
}

describe('socket.io: events no handler takes, decided behind the routed ones (review of b5a7391)', () => {
  let redis: RedisServer;
  let running: RunningApp | undefined;
  const clients: IoTestClient[] = [];
  let test = 0;

  const start = async (options: WsRateLimitModuleOptions) => {
    const redisOptions =
      options.store === 'redis'
        ? { redis: { commandTimeoutMs: 3000, url: redis.url }, keyPrefix: `wsrl:srev${++test}:` }
        : {};
    running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            tracker: 'connection',
            type: { capacity: 1000, refillRate: 1000 },
            violations: { max: 1000, windowMs: 60_000 },
            maxPendingHandshakesPerIp: 0,
            connection: { capacity: 1000, refillRate: 1000 },
            ...options,
            ...redisOptions,
          } as WsRateLimitModuleOptions),
        ],
        providers: [Setup, ReviewGateway],
      },
      (app) => new WsRateLimitIoAdapter(app),
    );
    const setup = running.app.get(Setup);
    return { setup, limiter: running.app.get(WsRateLimitService), url: `http://127.0.0.1:${running.port}` };
  };

  const connect = (url: string) => connectReady(url, clients);

  /** The id each answer names, by outcome: admitted (a reply) or refused (`rate_limit`). */
  const outcomes = (client: IoTestClient) => answeredIds(client, REPLIES);

  beforeAll(async () => {
    redis = await startRedis();
  }, 60_000);
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.closeAndSettle().catch(() => undefined)));
    await sleep(20);
    await running?.close();
    running = undefined;
  });
  afterAll(() => redis.stop());

  it('with an asynchronous tracker (memory store), 70 events in one read alternating chat and an unknown event admit exactly the first 35 to arrive', async () => {
    // 35 tokens for 70 events alternating chat and heard, sent in one read (past the hold of
    // 64): the first 35 to arrive should be the ones admitted.
    await start({
      store: 'memory',
      tracker: async () => 'user-1',
      global: { capacity: 35, refillRate: 0.001 },
    } as WsRateLimitModuleOptions);
    const client = await connect(`http://127.0.0.1:${running!.port}`);
    for (let i = 0; i < 70; i++) client.socket.emit(i % 2 === 0 ? 'chat' : 'heard', { id: i });
    await waitFor(
      () => {
        const o = outcomes(client);
        return o.admitted.length + o.refused.length >= 70;
      },
      20_000,
      'all answered',
    );
    const { admitted } = outcomes(client);
    expect({
      admitted: admitted.length,
      // Admitted events beyond the first 35 to arrive (by id), and refused ones among them.
      admittedLate: admitted.filter((id) => id >= 35),
      refusedEarly: outcomes(client).refused.filter((id) => id < 35),
    }).toEqual({ admitted: 35, admittedLate: [], refusedEarly: [] });
  }, 40_000);

  it('a flood past the hold from a client that disconnects at once runs nothing for the closed socket and leaves no connection counted (redis store)', async () => {
    const { setup, limiter } = await start({ store: 'redis', global: { capacity: 1000, refillRate: 1000 } });
    const client = await connect(`http://127.0.0.1:${running!.port}`);
    for (let i = 0; i < 90; i++) client.socket.emit(i % 2 === 0 ? 'chat' : 'heard', { id: i });
    client.socket.disconnect();
    await settle(() => limiter.stats().connections === 0, 300, 15_000);
    expect({ ranClosed: setup.ranClosed, connections: limiter.stats().connections }).toEqual({
      ranClosed: 0,
      connections: 0,
    });
  }, 40_000);
});
