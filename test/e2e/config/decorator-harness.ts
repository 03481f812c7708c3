import { afterAll, afterEach, beforeAll, jest } from '@jest/globals';
import { Logger, type INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import type { AddressInfo } from 'node:net';
import {
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  WsThrottleGuard,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { TestClient, type Frame } from '../../support/ws-client.js';

/** A line the application logged. */
export interface LoggedLine {
  level: string;
  context: string | undefined;
  text: string;
}

/**
 * Apps of handler-decorator tests, set up in the calling `describe`: the logger's lines
 * captured, one app at a time (started by `start`, closed after each test with its clients),
 * messages sent in bursts of one TCP write. `reset` runs after each test too.
 */
export function decoratorHarness(reset?: () => void) {
  const lines: LoggedLine[] = [];
  let spies: Array<{ mockRestore(): void }> = [];
  let app: INestApplication | undefined;
  let url = '';
  const clients: TestClient[] = [];
  let nextId = 1;

  beforeAll(() => {
    spies = (['log', 'warn', 'debug', 'error'] as const).map((level) =>
      jest.spyOn(Logger.prototype, level).mockImplementation(function (this: Logger, message: unknown) {
        lines.push({ level, context: (this as unknown as { context?: string }).context, text: String(message) });
      }),
    );
  });
  afterAll(() => {
    for (const spy of spies) spy.mockRestore();
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await app?.close();
    app = undefined;
    lines.length = 0;
    reset?.();
  });

  return {
    lines,
    /** The running app (after a `start` that succeeded). */
    get app(): INestApplication | undefined {
      return app;
    },
    /** Builds and starts an app; a start-up error is returned rather than thrown. */
    async start(
      providers: any[],
      options: WsRateLimitModuleOptions = {},
      globalGuard = false,
    ): Promise<Error | undefined> {
      const moduleRef = await Test.createTestingModule({
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            metrics: false,
            global: { capacity: 1000, refillRate: 1000 },
            violations: { max: 1000, windowMs: 60_000 },
            ...options,
          }),
        ],
        providers,
      }).compile();
      const made = moduleRef.createNestApplication({ logger: false });
      made.useWebSocketAdapter(new WsRateLimitAdapter(made));
      if (globalGuard) made.useGlobalGuards(new WsThrottleGuard(made.get(WsRateLimitService)));
      try {
        await made.listen(0, '127.0.0.1');
      } catch (error) {
        await made.close().catch(() => undefined);
        return error as Error;
      }
      app = made;
      url = `ws://127.0.0.1:${(made.getHttpServer().address() as AddressInfo).port}`;
      return undefined;
    },
    async connect(path = ''): Promise<TestClient> {
      const client = await TestClient.connect(`${url}${path}`);
      clients.push(client);
      return client;
    },
    /**
     * Sends `count` messages of one event (ids attached) in one write and returns their
     * answers in order: `ack`/`pong` (the handler ran), `rate_limit`, or `exception`
     * (NestJS's generic frame).
     */
    async burst(client: TestClient, event: string, count: number): Promise<Frame[]> {
      const ids = Array.from({ length: count }, () => nextId++);
      client.inOneWrite(() => {
        for (const id of ids) client.socket.send(JSON.stringify({ event, data: { id }, id }));
      });
      const idOf = (frame: Frame): unknown => frame.data?.id;
      const mine = (frame: Frame) =>
        ['ack', 'pong', 'rate_limit', 'exception'].includes(frame.event ?? '') &&
        (ids.includes(idOf(frame) as number) || frame.event === 'exception');
      await client.waitFor(mine, count);
      const answers = client.frames.filter(mine);
      return answers.slice(answers.length - count);
    },
    events: (frames: Frame[]) => frames.map((frame) => frame.event),
    /** The limiter's warnings, one per line. */
    warnings: () =>
      lines
        .filter((line) => line.context === 'WsRateLimit' && line.level === 'warn')
        .map((line) => line.text)
        .join('\n'),
    errors: () => lines.filter((line) => line.level === 'error').map((line) => line.text),
  };
}
