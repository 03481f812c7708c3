import { afterAll, afterEach, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { Logger } from '@nestjs/common';
import {
  SkipThrottle,
  Throttle,
  UNROUTED_HANDLERS,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsSkipThrottle,
  WsThrottle,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { startRedis, type RedisServer } from '../../support/redis-server.js';
import { sleep, TestClient, type Frame } from '../../support/ws-client.js';
import { AsyncTeamGateway, AsyncTeamGuard, MigrationGateway } from './migration.gateway.js';

/**
 * Coming from @nestjs/throttler (issue 12): several named limits on one handler decided in
 * one step, `skipIf`, an async tracker, and the `WsThrottle` / `WsSkipThrottle` aliases.
 */
describe('coming from @nestjs/throttler', () => {
  let running: RunningApp | undefined;
  let redis: RedisServer | undefined;
  const clients: TestClient[] = [];
  let nextId = 1;

  const start = async (options: WsRateLimitModuleOptions = {}, async = false) => {
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })],
        providers: async ? [AsyncTeamGateway, AsyncTeamGuard] : [MigrationGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
  };
  const connect = async (headers: Record<string, string> = {}) => {
    const client = await TestClient.connect(running!.url, { headers });
    clients.push(client);
    return client;
  };
  /** Sends one message (its data and id the same number) and returns its answer: `ack` or `rate_limit`. */
  const ask = async (client: TestClient, event: string, extra: object = {}): Promise<Frame> => {
    const id = nextId++;
    client.socket.send(JSON.stringify({ event, data: { n: id, ...extra }, id }));
    const answer = (frame: Frame) =>
      (frame.event === 'ack' && frame.data?.n === id) || (frame.event === 'rate_limit' && frame.data?.id === id);
    return (await client.waitFor(answer))[0]!;
  };
  const outcomes = async (client: TestClient, event: string, count: number, extra: object = {}) => {
    const answers: string[] = [];
    for (let i = 0; i < count; i++) answers.push((await ask(client, event, extra)).event!);
    return answers;
  };
  /**
   * Sends `count` messages in one TCP write and returns their answers in the order sent: a slow
   * machine cannot spread them over a refill.
   */
  const burst = async (client: TestClient, event: string, count: number) => {
    const ids = Array.from({ length: count }, () => nextId++);
    client.inOneWrite(() => {
      for (const id of ids) client.socket.send(JSON.stringify({ event, data: { n: id }, id }));
    });
    const answerTo = (frame: Frame) =>
      frame.event === 'ack' ? frame.data?.n : frame.event === 'rate_limit' ? frame.data?.id : undefined;
    const answers = await client.waitFor((frame) => ids.includes(answerTo(frame) as number), count);
    return ids.map((id) => answers.find((frame) => answerTo(frame) === id)?.event);
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });
  afterAll(async () => {
    await redis?.stop();
  });

  describe.each([
    ['per connection (process memory)', () => ({})],
    ['per address (memory store)', () => ({ tracker: 'ip' as const })],
    [
      'per address (Redis store)',
      () => ({ tracker: 'ip' as const, store: 'redis' as const, redis: { url: redis!.url, commandTimeoutMs: 2000 } }),
    ],
  ])('two named limits on one handler, %s', (_name, options) => {
    beforeAll(async () => {
      if (redis === undefined && _name.includes('Redis')) redis = await startRedis();
    });

    it('refuses at each limit its own bound, with that limit in the frame, and a refusal spends neither', async () => {
      await start(options());
      const client = await connect();
      // short: 2 at once. The third is refused by it; long (5) is not spent by the refusal.
      expect(await burst(client, 'chat', 3)).toEqual(['ack', 'ack', 'rate_limit']);
      const short = client.events('rate_limit')[0]!.data;
      expect(short).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'chat', limit: 2, remaining: 0 });
      expect(short.retryAfter).toBeGreaterThanOrEqual(1);
      expect(short.retryAfter).toBeLessThanOrEqual(250);
      // short refills in 250 ms a message; long has 3 left.
      await sleep(short.retryAfter + 300);
      expect(await burst(client, 'chat', 2)).toEqual(['ack', 'ack']);
      await sleep(300);
      expect(await burst(client, 'chat', 1)).toEqual(['ack']);
      await sleep(300);
      // short has room again, long (5 in all) does not: refused by long, its figures in the frame.
      expect(await burst(client, 'chat', 1)).toEqual(['rate_limit']);
      const long = client.events('rate_limit')[1]!.data;
      expect(long).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'chat', limit: 5, remaining: 0 });
      expect(long.retryAfter).toBeGreaterThan(90_000);
      expect(client.events('ack')).toHaveLength(5);
      if (redis !== undefined && _name.includes('Redis')) await redis.command('FLUSHALL');
    });
  });

  it('skipIf: the module option and @Throttle let messages through unlimited when true', async () => {
    const skipIf = (context: Parameters<NonNullable<WsRateLimitModuleOptions['skipIf']>>[0]) =>
      (context.switchToWs().getData<{ internal?: boolean } | null>() ?? {}).internal === true;
    await start({ skipIf });
    const client = await connect();
    // The module's skipIf: `once` allows one message, and internal ones do not count.
    expect(await outcomes(client, 'once', 3, { internal: true })).toEqual(['ack', 'ack', 'ack']);
    expect(await outcomes(client, 'once', 2)).toEqual(['ack', 'rate_limit']);
    expect(await outcomes(client, 'once', 1, { internal: true })).toEqual(['ack']);
    // @Throttle's skipIf on the `vip` handler.
    expect(await outcomes(client, 'vip', 3, { vip: true })).toEqual(['ack', 'ack', 'ack']);
    expect(await outcomes(client, 'vip', 2)).toEqual(['ack', 'rate_limit']);
    // The module's skipIf also applies to a handler with its own.
    expect(await outcomes(client, 'vip', 1, { internal: true })).toEqual(['ack']);
  });

  it("the module's skipIf also decides frames that reach no handler; one that throws there is logged and the frame limited", async () => {
    const errors = jest.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    await start({
      global: { capacity: 2, refillRate: 0.01 },
      skipIf: (context) => {
        if (context.getHandler() === UNROUTED_HANDLERS.INVALID_MESSAGE) throw new Error('cannot tell');
        return context.getHandler() === UNROUTED_HANDLERS.UNKNOWN_EVENT;
      },
    });
    const skipped = await connect();
    for (let i = 0; i < 4; i++) skipped.send('no-such-event', i);
    await skipped.waitForEvent('error', 4);
    expect(skipped.events('rate_limit')).toEqual([]);
    const limited = await connect();
    for (let i = 0; i < 3; i++) limited.sendRaw('not json');
    await limited.waitFor((frame) => frame.event === 'error' || frame.event === 'rate_limit', 3);
    expect(limited.events('error')).toHaveLength(2);
    expect(limited.events('rate_limit')[0]!.data).toMatchObject({ code: 'GLOBAL_LIMIT', limit: 2 });
    const logged = errors.mock.calls.map(([message]) => String(message));
    errors.mockRestore();
    expect(
      logged.filter((message) => message.startsWith('skipIf threw on an unrouted frame (cannot tell)')),
    ).toHaveLength(1);
  });

  it('an async tracker: two connections whose tracker resolves to one user share one budget', async () => {
    await start({
      tracker: async (_client, { request }) => {
        await sleep(2);
        return request?.headers['x-user'] as string | undefined;
      },
    });
    const first = await connect({ 'x-user': 'ann' });
    const second = await connect({ 'x-user': 'ann' });
    const other = await connect({ 'x-user': 'bob' });
    expect(await outcomes(first, 'once', 1)).toEqual(['ack']);
    expect(await outcomes(second, 'once', 1)).toEqual(['rate_limit']);
    expect(second.events('rate_limit')[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', limit: 1 });
    expect(await outcomes(other, 'once', 1)).toEqual(['ack']);
  });

  it("an async tracker that rejects: the unrouted frame is charged to its connection, as a throwing tracker's", async () => {
    await start({
      tracker: async () => {
        await sleep(1);
        throw new Error('session store down');
      },
      global: { capacity: 2, refillRate: 0.01 },
    });
    const client = await connect();
    for (let i = 0; i < 3; i++) client.send('no-such-event', i);
    await client.waitFor((frame) => frame.event === 'error' || frame.event === 'rate_limit', 3);
    expect(client.events('error')).toHaveLength(2);
    expect(client.events('rate_limit')[0]!.data).toMatchObject({ code: 'GLOBAL_LIMIT', limit: 2 });
  });

  it('an async tracker that rejects on a routed message is answered as a throwing tracker is', async () => {
    const answers: Array<Array<Frame>> = [];
    const trackers: Array<NonNullable<WsRateLimitModuleOptions['tracker']>> = [
      () => {
        throw new Error('session store down');
      },
      async () => {
        await sleep(1);
        throw new Error('session store down');
      },
    ];
    for (const tracker of trackers) {
      await start({ tracker });
      const client = await connect();
      client.send('once', 1);
      await client.waitFor(() => true);
      await sleep(50);
      answers.push(client.frames.map((frame) => ({ event: frame.event })));
      expect(client.socket.readyState).toBe(client.socket.OPEN);
      await Promise.all(clients.splice(0).map((open) => open.close()));
      await running!.close();
      running = undefined;
    }
    expect(answers[1]).toEqual(answers[0]);
    expect(answers[0]!.map((frame) => frame.event)).not.toContain('ack');
  });

  it("a guard subclass's async getTracker: connections of one team share a budget", async () => {
    await start({}, true);
    const first = await connect({ 'x-team': 'red' });
    const second = await connect({ 'x-team': 'red' });
    const blue = await connect({ 'x-team': 'blue' });
    expect(await outcomes(first, 'once', 1)).toEqual(['ack']);
    expect(await outcomes(second, 'once', 2)).toEqual(['ack', 'rate_limit']);
    expect(await outcomes(blue, 'once', 2)).toEqual(['ack', 'ack']);
    // Without the header, super.getTracker (the connection) is awaited as well.
    const alone = await connect();
    expect(await outcomes(alone, 'once', 3)).toEqual(['ack', 'ack', 'rate_limit']);
  });

  it('WsThrottle and WsSkipThrottle are Throttle and SkipThrottle under names that do not clash', async () => {
    expect(WsThrottle).toBe(Throttle);
    expect(WsSkipThrottle).toBe(SkipThrottle);
    await start();
    const client = await connect();
    expect(await outcomes(client, 'aliased', 3)).toEqual(['ack', 'ack', 'rate_limit']);
    expect(client.events('rate_limit')[0]!.data).toMatchObject({ messageType: 'aliased', limit: 2 });
    expect(await outcomes(client, 'free', 5)).toEqual(['ack', 'ack', 'ack', 'ack', 'ack']);
  });
});
