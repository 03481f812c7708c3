/**
 * Regressions a review of one session's changes (887e464..) found, fixed before they landed
 * in a release: a socket.io socket met in a namespace middleware (not yet connected) was
 * taken for a closed one and never counted; the heartbeat left a silent peer whose policy
 * close waited for its close frame until ws's 30 s timeout; an empty WS_RATE_LIMIT_REDIS_URL
 * drew the "nothing reads" warning. The last case held.
 */
import { afterAll, afterEach, describe, expect, it, jest } from '@jest/globals';
import { Logger, type INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { IoAdapter } from '@nestjs/platform-socket.io';
import { MessageBody, SubscribeMessage, WebSocketGateway, type OnGatewayInit } from '@nestjs/websockets';
import type { Server, Socket } from 'socket.io';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, withEnv, type RunningApp } from '../../support/app.js';
import { connectIo, waitFor, type IoTestClient } from '../../support/io-client.js';
import { settle, sleep, TestClient } from '../../support/ws-client.js';

const warnings: string[] = [];
const spies = (['warn'] as const).map((level) =>
  jest.spyOn(Logger.prototype, level).mockImplementation(function (this: Logger, message: unknown) {
    warnings.push(String(message));
  }),
);
afterAll(() => {
  for (const spy of spies) spy.mockRestore();
});

/** A socket.io gateway whose namespace middleware spends an "auth" budget (a common login-throttle pattern). */
@WebSocketGateway()
@WsRateLimit()
class IoAuthGateway implements OnGatewayInit {
  static middlewareRuns = 0;
  constructor(private readonly limiter: WsRateLimitService) {}

  afterInit(server: Server): void {
    server.use((socket: Socket, next: (error?: Error) => void) => {
      IoAuthGateway.middlewareRuns++;
      this.limiter.consume(socket, { type: 'auth' }).then(
        (decision) => next(decision.allowed ? undefined : new Error('too many logins')),
        (error: unknown) => next(error as Error),
      );
    });
  }

  @Throttle({ type: 'chat', capacity: 50, refillRate: 50 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** A ws gateway: chat with a burst of 1 and a slow refill. */
@WebSocketGateway()
@WsRateLimit()
class TightGateway {
  @Throttle({ type: 'chat', capacity: 1, refillRate: 0.01 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

describe('session edges', () => {
  const apps: RunningApp[] = [];
  const ioClients: IoTestClient[] = [];
  const wsClients: TestClient[] = [];

  afterEach(async () => {
    for (const client of wsClients.splice(0)) client.socket.terminate();
    await Promise.all(ioClients.splice(0).map((client) => client.closeAndSettle().catch(() => undefined)));
    for (const running of apps.splice(0)) await running.close();
    warnings.length = 0;
  });

  describe.each([
    ['WsRateLimitIoAdapter', (app: INestApplication) => new WsRateLimitIoAdapter(app)],
    ["NestJS's IoAdapter", (app: INestApplication) => new IoAdapter(app)],
  ] as const)('socket.io on %s', (_name, adapter) => {
    it('a socket a namespace middleware meets (not yet connected) is counted while connected and freed on disconnect', async () => {
      IoAuthGateway.middlewareRuns = 0;
      const running = await startApp(
        {
          imports: [WsRateLimitModule.forRoot({ useEnv: false, tracker: 'connection', metrics: false })],
          providers: [IoAuthGateway],
        },
        adapter,
      );
      apps.push(running);
      const limiter = running.app.get(WsRateLimitService);
      const client = await connectIo(`http://127.0.0.1:${running.port}`, 'websocket');
      ioClients.push(client);
      expect(IoAuthGateway.middlewareRuns).toBe(1);
      client.socket.emit('chat', { n: 1 });
      await client.until(() => client.of('ack').length === 1, 10_000, 'the ack');
      // Give the setImmediate that released the record its turn.
      await sleep(50);
      // The socket is open: stats() counts it, as it counts every open connection.
      expect(limiter.stats().connections).toBe(1);
      await client.closeAndSettle();
      await waitFor(() => limiter.stats().connections === 0, 5000, 'the close').catch(() => undefined);
      // Its per-connection tiers are freed with it.
      await settle(() => limiter.stats().localKeys === 0, 100, 3000).catch(() => undefined);
      expect(limiter.stats().localKeys).toBe(0);
    });
  });

  it('the heartbeat terminates a silent peer whose policy close is waiting for its close frame', async () => {
    const running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            metrics: false,
            tracker: 'connection',
            pingIntervalMs: 300,
            pongTimeoutMs: 600,
            closeGraceMs: 0,
            violations: { max: 2, windowMs: 60_000 },
          } as WsRateLimitModuleOptions),
        ],
        providers: [TightGateway],
      },
      (app: INestApplication) => new WsRateLimitAdapter(app),
    );
    apps.push(running);
    const limiter = running.app.get(WsRateLimitService);
    // A peer that answers no ping (and, below, reads nothing more).
    const client = await TestClient.connect(running.url, { autoPong: false });
    wsClients.push(client);
    await new Promise<void>((resolve) => client.socket.once('ping', () => resolve()));
    // Over budget at once: the second refusal reaches the threshold and closes with 1008.
    for (let i = 0; i < 4; i++) client.send('chat', i);
    // It goes silent: it never reads the close frame, so it never answers it.
    (client.socket as unknown as { _socket: { pause(): void } })._socket.pause();
    // The ping it never answered is more than pongTimeoutMs old well within 8 s: the heartbeat
    // ends it (otherwise only ws's own 30 s close timeout does).
    let ended = true;
    await waitFor(() => limiter.stats().connections === 0, 8000, 'the heartbeat to end the peer').catch(
      () => (ended = false),
    );
    expect(ended).toBe(true);
  }, 20_000);

  it("an empty WS_RATE_LIMIT_REDIS_URL (unset, as every variable's empty value is) draws no 'nothing reads' warning", async () => {
    await withEnv({ WS_RATE_LIMIT_REDIS_URL: '', WS_RATE_LIMIT_STORE: undefined }, async () => {
      const moduleRef = await Test.createTestingModule({ imports: [WsRateLimitModule.forRoot()] }).compile();
      const app = moduleRef.createNestApplication({ logger: false });
      try {
        await app.init();
        expect(warnings.filter((warning) => warning.includes('nothing reads'))).toEqual([]);
      } finally {
        await app.close();
      }
    });
  });

  it('a set WS_RATE_LIMIT_REDIS_URL with the memory store is warned about', async () => {
    await withEnv({ WS_RATE_LIMIT_REDIS_URL: 'redis://127.0.0.1:1', WS_RATE_LIMIT_STORE: undefined }, async () => {
      const moduleRef = await Test.createTestingModule({ imports: [WsRateLimitModule.forRoot()] }).compile();
      const app = moduleRef.createNestApplication({ logger: false });
      try {
        await app.init();
        expect(warnings.filter((warning) => warning.includes('nothing reads WS_RATE_LIMIT_REDIS_URL'))).toHaveLength(1);
      } finally {
        await app.close();
      }
    });
  });
});
