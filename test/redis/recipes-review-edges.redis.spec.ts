/**
 * Adversarial review of the README's "Recipes" and per-user budgets, on both transports
 * (`WsRateLimitAdapter`, `WsRateLimitIoAdapter`), on the memory store and on a real
 * redis-server this file starts (two app instances sharing it where a budget must be shared).
 *
 * Checked: a tracker function (sync and async) gives one user one budget whatever the number
 * of connections and instances, exactly at the capacity, every refusal answered; what a
 * tracker returning `undefined`/`''`/a number/an object, or throwing, does; the `info`
 * argument (`address`, `ip` as the /64 of an IPv6 client, `connectionId`, `request`); the flat
 * `frameBuilder` recipe and builders that throw or build frames JSON cannot write; a
 * `@SkipThrottle()` health check under a flood and at the violation close; handlers sharing one
 * `@Throttle({ type: 'cursor' })` budget; the `sliding-counter` expensive window at its limit.
 *
 * Failed before (fixed with this file): a tracker returning a number or an object was taken
 * as per connection without a word (a number is now its digits, anything else warned about
 * once); a frameBuilder that threw left repeat offenders connected, no frame sent (the
 * default frame now goes out, the failure said once); a frame JSON could not write, held
 * behind a slower reply, was thrown out of that reply's subscription and held the answers
 * behind it for closeGraceMs (it now goes out as the default frame); `@SkipThrottle()`
 * messages arriving after the violation close was decided were still processed.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { Logger, type INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { AddressInfo } from 'node:net';
import { config as rxjsConfig } from 'rxjs';
import {
  SkipThrottle,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  type TrackerContext,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { startApp, type RunningApp } from '../support/app.js';
import { IoTestClient, waitFor } from '../support/io-client.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { sleep, TestClient, type Frame } from '../support/ws-client.js';

const CHAT_CAPACITY = 6;
const CURSOR_CAPACITY = 5;
const EXPENSIVE_MAX = 4;

@WebSocketGateway()
@WsRateLimit()
class RecipeGateway {
  @Throttle({ capacity: CHAT_CAPACITY, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('quick')
  quick(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @SkipThrottle()
  @SubscribeMessage('health')
  health(@MessageBody() data: unknown) {
    return { event: 'healthy', data };
  }

  /** A health check whose reply takes a while (a database ping). */
  @SkipThrottle()
  @SubscribeMessage('slowHealth')
  async slowHealth(@MessageBody() data: unknown) {
    await sleep(150);
    return { event: 'healthy', data };
  }

  @Throttle({ type: 'cursor', capacity: CURSOR_CAPACITY, refillRate: 0.001 })
  @SubscribeMessage('move')
  move(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'cursor', capacity: CURSOR_CAPACITY, refillRate: 0.001 })
  @SubscribeMessage('hover')
  hover(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'cursor', capacity: CURSOR_CAPACITY, refillRate: 0.001 })
  @SubscribeMessage('click')
  click(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ capacity: 1000, refillRate: 1000, expensive: true })
  @SubscribeMessage('search')
  search(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @SkipThrottle()
  @SubscribeMessage('whoami')
  whoami(@ConnectedSocket() client: unknown) {
    return { event: 'me', data: { ok: client !== undefined } };
  }
}

/** The README's per-user recipe, the user being what an auth step put on the upgrade request. */
const userOf = (context: TrackerContext): string | undefined =>
  context.request?.headers['x-user'] as string | undefined;
const userTracker = (_client: unknown, context: TrackerContext) => userOf(context);
const asyncUserTracker = async (_client: unknown, context: TrackerContext) => {
  await sleep(1);
  return userOf(context);
};

let redis: RedisServer;
let prefixes = 0;
const apps: RunningApp[] = [];
const extraApps: INestApplication[] = [];
const wsClients: TestClient[] = [];
const ioClients: IoTestClient[] = [];

const base = (options: WsRateLimitModuleOptions): WsRateLimitModuleOptions => ({
  useEnv: false,
  metrics: false,
  global: { capacity: 1000, refillRate: 0.001 },
  connection: { capacity: 1000, refillRate: 1000 },
  violations: { max: 1000, windowMs: 60_000 },
  ...options,
});
/** The Redis store, under a key prefix of the test's own (so tests never share a budget). */
const onRedis = (prefix: string): WsRateLimitModuleOptions => ({
  store: 'redis',
  keyPrefix: prefix,
  // Exactness is the store's promise while Redis answers: a loaded machine must not send
  // decisions to the local fallback.
  redis: { url: redis.url, commandTimeoutMs: 3000 },
});
const freshPrefix = () => `rr${++prefixes}:`;

async function startWs(options: WsRateLimitModuleOptions): Promise<RunningApp> {
  const running = await startApp(
    { imports: [WsRateLimitModule.forRoot(base(options))], providers: [RecipeGateway] },
    (app) => new WsRateLimitAdapter(app),
  );
  apps.push(running);
  return running;
}
async function startIo(options: WsRateLimitModuleOptions): Promise<RunningApp> {
  const running = await startApp(
    { imports: [WsRateLimitModule.forRoot(base(options))], providers: [RecipeGateway] },
    (app) => new WsRateLimitIoAdapter(app),
  );
  apps.push(running);
  return running;
}
async function connectWs(url: string, user?: string): Promise<TestClient> {
  const client = await TestClient.connect(url, user === undefined ? {} : { headers: { 'x-user': user } });
  wsClients.push(client);
  return client;
}
async function connectIo(port: number, user?: string): Promise<IoTestClient> {
  const client = new IoTestClient(
    `http://127.0.0.1:${port}`,
    'websocket',
    user === undefined ? {} : { extraHeaders: { 'x-user': user } },
  );
  ioClients.push(client);
  await client.connected();
  return client;
}

let nextId = 1;
/** Sends one message per event in one TCP write (`{ event, data: { id }, id }`); returns the ids. */
function burstWs(client: TestClient, events: readonly string[]): number[] {
  const ids = events.map(() => nextId++);
  client.inOneWrite(() => {
    events.forEach((event, i) => client.sendRaw(JSON.stringify({ event, data: { id: ids[i] }, id: ids[i] })));
  });
  return ids;
}
/** Emits one event per name in one tick (engine.io-client writes them together); returns the ids. */
function burstIo(client: IoTestClient, events: readonly string[]): number[] {
  const ids = events.map(() => nextId++);
  events.forEach((event, i) => client.socket.emit(event, { id: ids[i] }));
  return ids;
}
const isRefusal = (frame: Frame) => frame.event === 'rate_limit' || frame.type === 'rate_limit';
const wsAnswers = (client: TestClient) => ({
  admitted: client.frames.filter((f) => f.event === 'ack').map((f) => f.data.id as number),
  refused: client.frames.filter(isRefusal).map((f) => (f.data?.id ?? f.id) as number),
});
const ioAnswers = (client: IoTestClient) => ({
  admitted: client.of('ack').map((d) => (d as { id: number }).id),
  refused: client.of('rate_limit').map((d) => (d as { id: number }).id),
});
const sorted = (ids: number[]) => [...ids].sort((a, b) => a - b);

/** Logger errors and warnings while a test runs. */
function captureLogs(): { lines: () => string[]; restore: () => void } {
  const seen: string[] = [];
  const keep = (message: unknown) => void seen.push(message instanceof Error ? message.message : String(message));
  const spies = [
    jest.spyOn(Logger.prototype, 'error').mockImplementation(keep),
    jest.spyOn(Logger.prototype, 'warn').mockImplementation(keep),
    jest.spyOn(Logger, 'error').mockImplementation(keep),
    jest.spyOn(Logger, 'warn').mockImplementation(keep),
  ];
  return { lines: () => seen, restore: () => spies.forEach((spy) => spy.mockRestore()) };
}

/**
 * Errors thrown out of an rxjs subscriber (rxjs rethrows them on a timer: an uncaught
 * exception, which ends a Node process with no handler), caught through rxjs's own hook.
 */
function catchEscaped(): { errors: string[]; restore: () => void } {
  const errors: string[] = [];
  const before = rxjsConfig.onUnhandledError;
  rxjsConfig.onUnhandledError = (error: unknown) => void errors.push(String(error));
  return { errors, restore: () => (rxjsConfig.onUnhandledError = before) };
}

beforeAll(async () => {
  redis = await startRedis();
}, 30_000);
afterEach(async () => {
  await Promise.all(wsClients.splice(0).map((client) => client.close()));
  for (const client of ioClients.splice(0)) client.close();
  await sleep(20);
  for (const running of apps.splice(0)) await running.close();
  for (const app of extraApps.splice(0)) await app.close();
});
afterAll(async () => {
  await redis?.stop();
});

describe('per-user budgets (tracker: a function of the socket)', () => {
  it("ws, memory store: one user's three connections share exactly one budget; every refusal gets its frame", async () => {
    const app = await startWs({ tracker: userTracker });
    const conns = await Promise.all([0, 1, 2].map(() => connectWs(app.url, 'ann')));
    const other = await connectWs(app.url, 'bob');
    const sent = conns.map((client) => burstWs(client, Array(4).fill('chat')));
    await Promise.all(conns.map((client) => client.waitFor((f) => f.event === 'ack' || isRefusal(f), 4)));
    const answers = conns.map(wsAnswers);
    expect(answers.flatMap((a) => a.admitted)).toHaveLength(CHAT_CAPACITY);
    // Each message answered once, on its own connection: admitted or refused.
    answers.forEach((a, i) => expect(sorted([...a.admitted, ...a.refused])).toEqual(sent[i]));
    const frames = conns.flatMap((client) => client.frames.filter(isRefusal));
    expect(frames.every((f) => f.data.code === 'TYPE_LIMIT' && f.data.limit === CHAT_CAPACITY)).toBe(true);
    // Another user has a budget of their own.
    burstWs(other, ['chat', 'chat']);
    await other.waitForEvent('ack', 2);
  });

  it.each([
    ['sync', userTracker],
    ['async', asyncUserTracker],
  ])(
    'ws, Redis, two instances (%s tracker): one user on four connections across both gets exactly one budget',
    async (_kind, tracker) => {
      const prefix = freshPrefix();
      const [a, b] = [await startWs({ tracker, ...onRedis(prefix) }), await startWs({ tracker, ...onRedis(prefix) })];
      const conns = await Promise.all([a!, a!, b!, b!].map((app) => connectWs(app.url, 'ann')));
      const sent = conns.map((client) => burstWs(client, Array(4).fill('chat')));
      await Promise.all(conns.map((client) => client.waitFor((f) => f.event === 'ack' || isRefusal(f), 4, 15_000)));
      const answers = conns.map(wsAnswers);
      expect(answers.flatMap((x) => x.admitted)).toHaveLength(CHAT_CAPACITY);
      expect(answers.flatMap((x) => x.refused)).toHaveLength(16 - CHAT_CAPACITY);
      answers.forEach((x, i) => expect(sorted([...x.admitted, ...x.refused])).toEqual(sent[i]));
    },
    30_000,
  );

  it('socket.io, Redis, two instances: one user on four sockets across both gets exactly one budget', async () => {
    const prefix = freshPrefix();
    const [a, b] = [
      await startIo({ tracker: userTracker, ...onRedis(prefix) }),
      await startIo({ tracker: asyncUserTracker, ...onRedis(prefix) }),
    ];
    const conns = await Promise.all([a!, a!, b!, b!].map((app) => connectIo(app.port, 'ann')));
    const sent = conns.map((client) => burstIo(client, Array(4).fill('chat')));
    const total = () => conns.reduce((n, c) => n + c.of('ack').length + c.of('rate_limit').length, 0);
    await waitFor(() => total() >= 16, 15_000, 'every event answered');
    const answers = conns.map(ioAnswers);
    expect(answers.flatMap((x) => x.admitted)).toHaveLength(CHAT_CAPACITY);
    answers.forEach((x, i) => expect(sorted([...x.admitted, ...x.refused])).toEqual(sent[i]));
  }, 30_000);

  it("a tracker returning undefined or '' is per connection: two such connections each get their own budget", async () => {
    for (const answer of [undefined, '']) {
      const app = await startWs({ tracker: () => answer });
      const [one, two] = [await connectWs(app.url), await connectWs(app.url)];
      burstWs(one!, Array(CHAT_CAPACITY).fill('chat'));
      burstWs(two!, Array(CHAT_CAPACITY).fill('chat'));
      await one!.waitForEvent('ack', CHAT_CAPACITY);
      await two!.waitForEvent('ack', CHAT_CAPACITY);
      expect([...one!.frames, ...two!.frames].filter(isRefusal)).toEqual([]);
      await Promise.all(wsClients.splice(0).map((client) => client.close()));
      await apps.pop()!.close();
    }
  });

  it.each([
    ['a number (a numeric user id)', (user: string) => Number(user.slice(1))],
    ['an object (the user instead of its id)', (user: string) => ({ id: user })],
  ])(
    'a tracker returning %s: a number is the user id, one budget; anything else per connection, with a warning',
    async (_kind, shape) => {
      const logs = captureLogs();
      try {
        const app = await startWs({
          tracker: ((_client: unknown, context: TrackerContext) => shape(userOf(context)!)) as never,
        });
        const [one, two] = [await connectWs(app.url, 'u42'), await connectWs(app.url, 'u42')];
        burstWs(one!, Array(CHAT_CAPACITY).fill('chat'));
        burstWs(two!, Array(CHAT_CAPACITY).fill('chat'));
        await one!.waitFor((f) => f.event === 'ack' || isRefusal(f), CHAT_CAPACITY);
        await two!.waitFor((f) => f.event === 'ack' || isRefusal(f), CHAT_CAPACITY);
        const admitted = one!.events('ack').length + two!.events('ack').length;
        const explained = logs.lines().some((line) => /tracker/i.test(line));
        // A number names the user (one budget for both connections); an object is no name:
        // per connection, and the app is told (a warning), never a silent split.
        expect({ admitted, explained }).toEqual(
          typeof shape('u42') === 'number'
            ? { admitted: CHAT_CAPACITY, explained: false }
            : { admitted: 2 * CHAT_CAPACITY, explained: true },
        );
      } finally {
        logs.restore();
      }
    },
  );

  it('a tracker that throws on a routed message: NestJS answers with its exception frame, later messages go on (ws and socket.io)', async () => {
    let calls = 0;
    const tracker = (_client: unknown, context: TrackerContext) => {
      if (++calls === 1) throw new Error('session store down');
      return userOf(context);
    };
    const logs = captureLogs();
    try {
      const ws = await startWs({ tracker });
      const client = await connectWs(ws.url, 'ann');
      burstWs(client, ['chat', 'chat']);
      await client.waitForEvent('ack');
      await client.waitForEvent('exception');
      expect(client.socket.readyState).toBe(client.socket.OPEN);
      calls = 0;
      const io = await startIo({ tracker });
      const socket = await connectIo(io.port, 'ann');
      burstIo(socket, ['chat', 'chat', 'health']);
      await waitFor(() => socket.of('ack').length === 1 && socket.of('healthy').length === 1, 5_000, 'later answers');
      await waitFor(() => socket.of('exception').length === 1, 5_000, 'the exception event');
    } finally {
      logs.restore();
    }
  });

  it("gives the tracker an IPv6 client's address and its /64 as ip, a connectionId and the upgrade request", async () => {
    const seen: TrackerContext[] = [];
    const moduleRef = await Test.createTestingModule({
      imports: [
        WsRateLimitModule.forRoot(
          base({ tracker: (_client, context) => (seen.push(context), `user:${userOf(context)}`) }),
        ),
      ],
      providers: [RecipeGateway],
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    extraApps.push(app);
    app.useWebSocketAdapter(new WsRateLimitAdapter(app));
    await app.listen(0, '::1');
    const port = (app.getHttpServer().address() as AddressInfo).port;
    const [one, two] = [await connectWs(`ws://[::1]:${port}`, 'ann'), await connectWs(`ws://[::1]:${port}`, 'ann')];
    burstWs(one!, ['chat']);
    burstWs(two!, ['chat']);
    await one!.waitForEvent('ack');
    await two!.waitForEvent('ack');
    expect(seen[0]).toMatchObject({ address: '::1', ip: '::/64' });
    expect(seen[0]!.request?.headers['x-user']).toBe('ann');
    expect(seen[0]!.connectionId).not.toBe(seen[1]!.connectionId);
  });

  it('socket.io: the tracker gets the address, ip, a connectionId and the handshake request', async () => {
    const seen: TrackerContext[] = [];
    const app = await startIo({ tracker: (_client, context) => (seen.push(context), userOf(context)) });
    const socket = await connectIo(app.port, 'ann');
    burstIo(socket, ['chat']);
    await waitFor(() => socket.of('ack').length === 1, 5_000, 'the ack');
    expect(seen[0]).toMatchObject({ address: '127.0.0.1', ip: '127.0.0.1', connectionId: expect.any(Number) });
    expect(seen[0]!.request?.headers['x-user']).toBe('ann');
  });
});

describe('frameBuilder', () => {
  it('socket.io: the flat frame recipe reaches the client as a rate_limit event carrying the fields', async () => {
    const app = await startIo({ frameBuilder: (info) => ({ type: 'rate_limit', ...info }) });
    const socket = await connectIo(app.port);
    const [, refused] = burstIo(socket, ['quick', 'quick']);
    await waitFor(() => socket.of('rate_limit').length === 1, 5_000, 'the rate_limit event');
    expect(socket.of('rate_limit')[0]).toMatchObject({
      type: 'rate_limit',
      code: 'TYPE_LIMIT',
      messageType: 'quick',
      limit: 1,
      warningCount: 1,
      id: refused,
    });
  });

  it('ws: a frameBuilder that throws: the default frame goes out, the failure is said, and repeat offenders are closed 1008', async () => {
    const builder = () => (): never => {
      throw new Error('builder bug');
    };
    const logs = captureLogs();
    const escaped = catchEscaped();
    try {
      const app = await startWs({ frameBuilder: builder() as never, violations: { max: 2, windowMs: 60_000 } });
      const client = await connectWs(app.url);
      burstWs(client, ['quick', 'quick', 'quick', 'quick']);
      await client.waitForEvent('ack');
      // The limits still hold: the second violation closes the socket with 1008...
      const closed = await client.waitClose(5_000).catch(() => ({ code: -1, reason: 'still open' }));
      expect(closed.code).toBe(1008);
      // ...and the failure is reported (logged), not thrown out of a subscription.
      expect(logs.lines().length).toBeGreaterThan(0);
      expect(escaped.errors).toEqual([]);
    } finally {
      escaped.restore();
      logs.restore();
    }
  }, 15_000);

  it('a frameBuilder building a 1.5 MB frame: each refusal still gets it and the reading client stays connected', async () => {
    const padding = 'x'.repeat(1_500_000);
    const app = await startWs({ frameBuilder: (info) => ({ event: 'rate_limit', data: { ...info, padding } }) });
    const client = await connectWs(app.url);
    burstWs(client, ['quick', 'quick', 'quick']);
    await client.waitForEvent('rate_limit', 2);
    expect(client.socket.readyState).toBe(client.socket.OPEN);
  });

  /** A frame builder whose first frame JSON cannot write (a BigInt on ws, a cycle on socket.io), the rest sound. */
  const badOnce = (transport: string) => {
    let calls = 0;
    return (info: object) => {
      if (++calls > 1) return { event: 'rate_limit', data: info };
      if (transport === 'ws') return { event: 'rate_limit', data: { ...info, at: 1n } };
      const data: Record<string, unknown> = { ...info };
      data.self = data;
      return { event: 'rate_limit', data };
    };
  };

  it.each([['ws'], ['socket.io']])(
    '%s: a rate_limit frame JSON cannot write, held behind a slower reply, goes out as the default frame, and the refusals behind it follow the reply',
    async (transport) => {
      const logs = captureLogs();
      const escaped = catchEscaped();
      try {
        const options = { frameBuilder: badOnce(transport) as never, closeGraceMs: 4_000 };
        // slowHealth (150 ms), quick (admitted), quick (refused: its frame is held behind
        // slowHealth's reply, and cannot be written), quick (refused: a sound frame).
        const events = ['slowHealth', 'quick', 'quick', 'quick'];
        let refusals: () => number;
        const started = performance.now();
        if (transport === 'ws') {
          const client = await connectWs((await startWs(options)).url);
          burstWs(client, events);
          refusals = () => client.events('rate_limit').length;
          await client.waitForEvent('healthy');
        } else {
          const socket = await connectIo((await startIo(options)).port);
          burstIo(socket, events);
          refusals = () => socket.of('rate_limit').length;
          await waitFor(() => socket.of('healthy').length === 1, 5_000, 'the slow reply');
        }
        const repliedAt = performance.now() - started;
        // The frame that could not be written goes out as the default frame, then the sound one.
        await waitFor(() => refusals() === 2, 8_000, 'both refusals');
        const late = performance.now() - started - repliedAt;
        // The frame that could not be written is reported, not thrown out of the reply's rxjs
        // subscription (rethrown on a timer: an uncaught exception)...
        expect(escaped.errors).toEqual([]);
        expect(logs.lines().length).toBeGreaterThan(0);
        // ...and the sound refusal behind it goes out with the reply it waited for, not a grace later.
        expect(late).toBeLessThan(1_000);
      } finally {
        escaped.restore();
        logs.restore();
      }
    },
    20_000,
  );
});

describe('@SkipThrottle() health check', () => {
  it('ws and socket.io on Redis: answered when a per-user flood has exhausted every budget of the user', async () => {
    const prefix = freshPrefix();
    const options = { tracker: userTracker, ...onRedis(prefix), global: { capacity: 5, refillRate: 0.001 } };
    const ws = await startWs(options);
    const io = await startIo(options);
    const client = await connectWs(ws.url, 'ann');
    const socket = await connectIo(io.port, 'ann');
    burstWs(client, [...Array(8).fill('chat'), ...Array(4).fill('search'), 'nope']);
    await client.waitFor((f) => f.event === 'ack' || isRefusal(f), 12, 10_000);
    expect(client.events('ack')).toHaveLength(5);
    const [health] = burstWs(client, ['health']);
    await client.waitFor((f) => f.event === 'healthy' && f.data.id === health);
    burstIo(socket, ['chat', 'search', 'health']);
    await waitFor(() => socket.of('rate_limit').length === 2 && socket.of('healthy').length === 1, 10_000, 'answers');
    expect(socket.of('rate_limit').map((d) => (d as { code: string }).code)).toEqual(['GLOBAL_LIMIT', 'GLOBAL_LIMIT']);
  }, 20_000);

  it('ws: a slow health check sent before the refusal that reaches the violation threshold is answered before the 1008 close', async () => {
    const app = await startWs({ violations: { max: 2, windowMs: 60_000 } });
    const client = await connectWs(app.url);
    const [, health] = burstWs(client, ['quick', 'slowHealth', 'quick', 'quick', 'quick']);
    expect((await client.waitClose()).code).toBe(1008);
    expect(client.frames.filter((f) => f.event === 'healthy').map((f) => f.data.id)).toEqual([health]);
    expect(client.frames.filter(isRefusal).map((f) => f.data.warningCount)).toEqual([1, 2]);
    // The reply of the health check came before the refusals that followed it.
    expect(client.frames.findIndex((f) => f.event === 'healthy')).toBeLessThan(client.frames.findIndex(isRefusal));
  });

  it('socket.io: a slow health check sent before the threshold refusal is answered before rate_limit_disconnect', async () => {
    const app = await startIo({ violations: { max: 2, windowMs: 60_000 } });
    const socket = await connectIo(app.port);
    const [, health] = burstIo(socket, ['quick', 'slowHealth', 'quick', 'quick', 'quick']);
    await socket.disconnected();
    const names = socket.events.map((e) => e.event);
    expect(socket.of('healthy')).toEqual([{ id: health }]);
    expect(socket.of('rate_limit').map((d) => (d as { warningCount: number }).warningCount)).toEqual([1, 2]);
    expect(names.indexOf('healthy')).toBeLessThan(names.indexOf('rate_limit_disconnect'));
  });
  it.each([['ws'], ['socket.io']])(
    '%s: @SkipThrottle() messages that arrive after the violation close was decided are not processed (README: "messages that arrive after the decision are not processed")',
    async (transport) => {
      // quick (admitted), quick (violation 1), quick (violation 2: the close is decided), then two health checks.
      const events = ['quick', 'quick', 'quick', 'health', 'slowHealth'];
      let healthy: () => number;
      if (transport === 'ws') {
        const client = await connectWs((await startWs({ violations: { max: 2, windowMs: 60_000 } })).url);
        burstWs(client, events);
        expect((await client.waitClose()).code).toBe(1008);
        healthy = () => client.events('healthy').length;
        expect(client.events('rate_limit').map((f) => f.data.warningCount)).toEqual([1, 2]);
      } else {
        const socket = await connectIo((await startIo({ violations: { max: 2, windowMs: 60_000 } })).port);
        burstIo(socket, events);
        await socket.disconnected();
        healthy = () => socket.of('healthy').length;
        expect(socket.of('rate_limit_disconnect')).toEqual([{ code: 1008, reason: 'Rate limit violations' }]);
      }
      expect(healthy()).toBe(0);
    },
  );
});

describe("handlers sharing one @Throttle({ type: 'cursor' }) budget", () => {
  it('memory store, ws: an interleaved burst across three handlers admits exactly the capacity, refusals named cursor', async () => {
    const app = await startWs({});
    const client = await connectWs(app.url);
    const events = ['move', 'hover', 'click', 'move', 'click', 'hover', 'move', 'click', 'hover'];
    const ids = burstWs(client, events);
    await client.waitFor((f) => f.event === 'ack' || isRefusal(f), events.length);
    const { admitted, refused } = wsAnswers(client);
    expect(admitted).toEqual(ids.slice(0, CURSOR_CAPACITY));
    expect(refused).toEqual(ids.slice(CURSOR_CAPACITY));
    expect(new Set(client.frames.filter(isRefusal).map((f) => f.data.messageType))).toEqual(new Set(['cursor']));
    expect(client.frames.filter(isRefusal).every((f) => f.data.limit === CURSOR_CAPACITY)).toBe(true);
  });

  it("Redis, a user's sockets on ws and socket.io instances: the shared type admits exactly the capacity in all", async () => {
    const prefix = freshPrefix();
    const ws = await startWs({ tracker: userTracker, ...onRedis(prefix) });
    const io = await startIo({ tracker: userTracker, ...onRedis(prefix) });
    const client = await connectWs(ws.url, 'ann');
    const socket = await connectIo(io.port, 'ann');
    burstWs(client, ['move', 'hover', 'click', 'move']);
    burstIo(socket, ['click', 'hover', 'move', 'click']);
    await client.waitFor((f) => f.event === 'ack' || isRefusal(f), 4, 10_000);
    await waitFor(() => socket.of('ack').length + socket.of('rate_limit').length === 4, 10_000, 'answers');
    expect(client.events('ack').length + socket.of('ack').length).toBe(CURSOR_CAPACITY);
    const refusals = [...client.frames.filter(isRefusal).map((f) => f.data), ...socket.of('rate_limit')];
    expect(refusals.map((d) => (d as { messageType: string }).messageType)).toEqual(Array(3).fill('cursor'));
  }, 20_000);
});

describe("expensive: { algorithm: 'sliding-counter' }", () => {
  const expensive = { max: EXPENSIVE_MAX, windowMs: 60_000, algorithm: 'sliding-counter' as const };

  it('memory store, ws: a burst past the limit admits exactly max; a refusal spends nothing', async () => {
    const app = await startWs({ expensive });
    const client = await connectWs(app.url);
    const ids = burstWs(client, Array(EXPENSIVE_MAX + 3).fill('search'));
    await client.waitFor((f) => f.event === 'ack' || isRefusal(f), ids.length);
    expect(wsAnswers(client).admitted).toEqual(ids.slice(0, EXPENSIVE_MAX));
    const frames = client.frames.filter(isRefusal).map((f) => f.data);
    expect(frames.every((d) => d.code === 'EXPENSIVE_LIMIT' && d.limit === EXPENSIVE_MAX && d.retryAfter >= 1)).toBe(
      true,
    );
  });

  it("Redis, one user's connections on two instances: exactly max admitted in all, the rest EXPENSIVE_LIMIT", async () => {
    const prefix = freshPrefix();
    const [a, b] = [
      await startWs({ tracker: userTracker, expensive, ...onRedis(prefix) }),
      await startIo({ tracker: userTracker, expensive, ...onRedis(prefix) }),
    ];
    const conns = await Promise.all([connectWs(a!.url, 'ann'), connectWs(a!.url, 'ann')]);
    const socket = await connectIo(b!.port, 'ann');
    for (const client of conns) burstWs(client, Array(3).fill('search'));
    burstIo(socket, Array(3).fill('search'));
    await Promise.all(conns.map((client) => client.waitFor((f) => f.event === 'ack' || isRefusal(f), 3, 10_000)));
    await waitFor(() => socket.of('ack').length + socket.of('rate_limit').length === 3, 10_000, 'answers');
    const admitted = conns.reduce((n, c) => n + c.events('ack').length, 0) + socket.of('ack').length;
    expect(admitted).toBe(EXPENSIVE_MAX);
    const codes = [
      ...conns.flatMap((c) => c.frames.filter(isRefusal).map((f) => f.data.code)),
      ...socket.of('rate_limit').map((d) => (d as { code: string }).code),
    ];
    expect(codes).toEqual(Array(9 - EXPENSIVE_MAX).fill('EXPENSIVE_LIMIT'));
  }, 20_000);
});
