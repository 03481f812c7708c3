/**
 * Adversarial review of the client library (`RateLimitedClient`, and its socket.io form)
 * against a real NestJS gateway, on the memory store and on a real redis-server started here
 * (free loopback port), with Redis killed, restarted, frozen and resumed mid-run, the server
 * going away and coming back, and 1008 closes. README sections "Client" and "The client on
 * socket.io".
 *
 * Failed before (fixed): with reservations on a plan of a fast global bucket and a slow type
 * bucket, a lone instance admitted 4 of a fresh burst of 5 (a batch's slots lapsed at the
 * fast bucket's pace, 1 ms apart, and the slow bucket's were lost with them; now each bucket
 * keeps its own cursor, and a batch that ends with slow slots still ahead gives them back).
 * Found and left alone (README says so; the tests below check what holds): the fail-open
 * fallback deciding the frames held during a freeze together (a burst), and declared limits
 * at exactly the server's figures meeting network-delay jitter.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { AddressInfo } from 'node:net';
import { io } from 'socket.io-client';
import '../support/io-settle.js';
import { WebSocket } from 'ws';
import {
  RateLimitedClient,
  isSocketIoAck,
  socketIoFactory,
  type AckMatch,
  type DropEvent,
  type RateLimitNotice,
  type RateLimitedClientOptions,
  type ReconnectEvent,
  type UndeliveredEvent,
} from '../../lib/client/index.js';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { sleep } from '../support/ws-client.js';

/** How many times each handler ran, per seq (counted on the server). */
const processed = { chat: new Map<number, number>(), ask: new Map<number, number>() };
/** Replies the `evil` handler gives, one per call (then acks). */
const evilReplies: unknown[] = [];

function count(map: Map<number, number>, seq: number): void {
  map.set(seq, (map.get(seq) ?? 0) + 1);
}

@WebSocketGateway()
@WsRateLimit()
class ReviewGateway {
  /** Answered with an `ack` event naming its seq. 5 burst, 10 per second. */
  @Throttle({ type: 'chat', capacity: 5, refillRate: 10 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: { seq: number }) {
    count(processed.chat, data.seq);
    return { event: 'ack', data: { event: 'chat', seq: data.seq } };
  }

  /** Answered through the socket.io acknowledgement (a plain return value). */
  @Throttle({ type: 'ask', capacity: 5, refillRate: 10 })
  @SubscribeMessage('ask')
  ask(@MessageBody() data: { seq: number }) {
    count(processed.ask, data.seq);
    return { seq: data.seq };
  }

  /** A server that answers with hand-made (bad) rate_limit frames, then acks. */
  @SubscribeMessage('evil')
  evil(@MessageBody() data: { seq: number }) {
    const reply = evilReplies.shift();
    return reply ?? { event: 'ack', data: { event: 'evil', seq: data.seq } };
  }
}

type Transport = 'ws' | 'io';

interface Running {
  app: INestApplication;
  port: number;
  url: string;
}

const apps: INestApplication[] = [];
const clients: RateLimitedClient[] = [];
let redis: RedisServer;
let prefix = 0;

async function startApp(transport: Transport, options: WsRateLimitModuleOptions, port = 0): Promise<Running> {
  const moduleRef = await Test.createTestingModule({
    imports: [
      WsRateLimitModule.forRoot({
        useEnv: false,
        tracker: 'ip',
        global: { capacity: 1000, refillRate: 1000 },
        violations: { max: 10, windowMs: 60_000 },
        connection: { capacity: 1000, refillRate: 1000 },
        maxPendingHandshakesPerIp: 0,
        ...options,
      } as WsRateLimitModuleOptions),
    ],
    providers: [ReviewGateway],
  }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  app.useWebSocketAdapter(transport === 'ws' ? new WsRateLimitAdapter(app) : new WsRateLimitIoAdapter(app));
  await app.listen(port, '127.0.0.1');
  apps.push(app);
  const bound = (app.getHttpServer().address() as AddressInfo).port;
  return { app, port: bound, url: `${transport === 'ws' ? 'ws' : 'http'}://127.0.0.1:${bound}` };
}

/** Module options of the Redis store on the test server (own key prefix per app). */
function onRedis(extra: WsRateLimitModuleOptions = {}): WsRateLimitModuleOptions {
  return {
    store: 'redis',
    keyPrefix: `wsrl:crev${++prefix}:`,
    ...extra,
    redis: { url: redis.url, commandTimeoutMs: 500, ...(extra.redis ?? {}) },
  } as WsRateLimitModuleOptions;
}

async function closeApp(app: INestApplication): Promise<void> {
  const index = apps.indexOf(app);
  if (index >= 0) apps.splice(index, 1);
  await app.close();
}

/** `chat` and `evil` are answered by an `ack` event naming their event; `ask` by its socket.io ack. */
function isAck(message: unknown): AckMatch | false {
  const { event, data } = message as { event?: unknown; data?: { event?: unknown } };
  if (event === 'ack' && typeof data?.event === 'string') return { event: data.event };
  return isSocketIoAck(message);
}

interface Seen {
  client: RateLimitedClient;
  /** seqs in the order their replies came. */
  replies: number[];
  notices: RateLimitNotice[];
  drops: DropEvent[];
  undelivered: UndeliveredEvent[];
  reconnects: ReconnectEvent[];
  errors: unknown[];
  states: string[];
}

function observe(url: string, transport: Transport, options: RateLimitedClientOptions = {}): Seen {
  const client = new RateLimitedClient(url, {
    ...(transport === 'ws' ? { WebSocket } : { createSocket: socketIoFactory(io, { transports: ['websocket'] }) }),
    isAck,
    ...options,
  });
  clients.push(client);
  const seen: Seen = {
    client,
    replies: [],
    notices: [],
    drops: [],
    undelivered: [],
    reconnects: [],
    errors: [],
    states: [],
  };
  client.on('message', (message) => {
    const { event, data, ack } = message as { event?: string; data?: { seq?: number }; ack?: boolean };
    if ((event === 'ack' || ack === true) && typeof data?.seq === 'number') seen.replies.push(data.seq);
  });
  client.on('rateLimit', (notice) => seen.notices.push(notice));
  client.on('drop', (drop) => seen.drops.push(drop));
  client.on('undelivered', (event) => seen.undelivered.push(event));
  client.on('reconnect', (event) => seen.reconnects.push(event));
  client.on('error', (error) => seen.errors.push(error));
  client.on('state', (state) => seen.states.push(state));
  return seen;
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

beforeAll(async () => {
  redis = await startRedis();
}, 60_000);

afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  for (const app of apps.splice(0)) await app.close();
  processed.chat.clear();
  processed.ask.clear();
  evilReplies.length = 0;
  // A test that froze or killed Redis leaves it running again.
  redis.resume();
});

afterAll(async () => {
  await redis?.stop();
});

// ---------------------------------------------------------------------------------------
// Steady state: paced by declared or learned limits, the client is not refused again.
// ---------------------------------------------------------------------------------------

const STORES = [
  ['memory', () => ({})],
  ['redis', () => onRedis()],
  ['redis with reservations', () => onRedis({ redis: { reservationBatch: 16 } } as WsRateLimitModuleOptions)],
] as const;

describe.each(STORES)('client steady state (%s store)', (name, options) => {
  const reservations = name.includes('reservations');
  it.each(['ws', 'io'] as const)(
    'on %s, declared limits a little under the server: 25 chats delivered once, in order, with no refusal',
    async (transport) => {
      const running = await startApp(transport, options());
      const seen = observe(running.url, transport, {
        limits: { types: { chat: { capacity: 4, refillPerSecond: 9 } } },
      });
      await waitFor(() => seen.client.state === 'open', 'open');
      for (const seq of range(25)) expect(seen.client.send('chat', { seq })).toBe(true);
      await waitFor(() => seen.replies.length >= 25 || seen.reconnects.length > 0, '25 replies');
      expect(seen.replies).toEqual(range(25));
      expect(seen.notices).toEqual([]);
      expect([...processed.chat.values()].every((n) => n === 1)).toBe(true);
      expect(seen.drops).toEqual([]);
    },
    40_000,
  );

  it.each(['ws', 'io'] as const)(
    `on %s, an unknown limit learned from one frame (minPaceMs >= 1000 / rate): refused once (the 6th), all delivered once${reservations ? ' (with reservations: the 5th of a fresh burst of 5 is admitted)' : ''}`,
    async (transport) => {
      const running = await startApp(transport, options());
      const seen = observe(running.url, transport, { minPaceMs: 100 });
      await waitFor(() => seen.client.state === 'open', 'open');
      for (const seq of range(25)) seen.client.send('chat', { seq });
      await waitFor(() => seen.replies.length >= 25 || seen.reconnects.length > 0, '25 replies');
      expect(seen.reconnects).toEqual([]);
      expect(seen.replies).toEqual(range(25));
      expect([...processed.chat.values()].every((n) => n === 1)).toBe(true);
      // One message unconfirmed at a time against the unknown limit: the 6th is refused,
      // then the model learned from its frame paces the rest.
      expect(seen.notices.map((notice) => notice.id)).toEqual([5]);
    },
    40_000,
  );
});

describe('client steady state: limits declared exactly as the server has them', () => {
  it.each(['ws', 'io'] as const)(
    'on %s, limits declared exactly at the server figures (5 burst, 10/s): every message delivered once; a refusal, if any, only a few ms early (README: the model counts from sends)',
    async (transport) => {
      const running = await startApp(transport, {});
      const seen = observe(running.url, transport, {
        limits: { types: { chat: { capacity: 5, refillPerSecond: 10 } } },
      });
      await waitFor(() => seen.client.state === 'open', 'open');
      // Warm up: one chat answered, then the bucket (and the model) full again.
      seen.client.send('chat', { seq: 0 });
      await waitFor(() => seen.replies.length >= 1, 'the first reply');
      await sleep(800);
      for (const seq of range(24, 1)) seen.client.send('chat', { seq });
      await waitFor(() => seen.replies.length >= 25 || seen.reconnects.length > 0, '25 replies');
      expect(seen.replies).toEqual(range(25));
      // Left alone (README, Client): the client's model counts time from its sends, the
      // server from its decisions a network delay later; with varying delays a message paced
      // at exactly the server's refill may arrive a few ms early (this review saw one
      // refusal a run, retryAfter 1-7 ms). Declared a little under, none (the test above).
      expect(seen.notices.every((notice) => notice.retryAfter <= 20)).toBe(true);
    },
    40_000,
  );
});

// ---------------------------------------------------------------------------------------
// Redis killed, frozen, restarted mid-run (tracker 'ip': the budgets live in Redis).
// ---------------------------------------------------------------------------------------

describe.each(['ws', 'io'] as const)('client with Redis faults mid-run (%s)', (transport) => {
  const event = transport === 'ws' ? 'chat' : 'ask';
  const handled = () => (transport === 'ws' ? processed.chat : processed.ask);

  it('fail mode closed, Redis killed then restarted: STORE_UNAVAILABLE is waited out, never counted, every message answered once', async () => {
    // 3 violations would close: the outage's refusals must not count.
    const running = await startApp(
      transport,
      onRedis({ failMode: 'closed', violations: { max: 3, windowMs: 60_000 } }),
    );
    const seen = observe(running.url, transport, {
      limits: { types: { [event]: { capacity: 4, refillPerSecond: 9 } } },
      policyDelayMs: 60_000,
    });
    await waitFor(() => seen.client.state === 'open', 'open');
    for (const seq of range(8)) seen.client.send(event, { seq });
    await waitFor(() => seen.replies.length >= 8, '8 replies');
    redis.kill('SIGKILL');
    await sleep(100);
    for (const seq of range(12, 8)) seen.client.send(event, { seq });
    const unavailable = () => seen.notices.filter((n) => n.code === 'STORE_UNAVAILABLE');
    await waitFor(() => unavailable().length >= 4, '4 STORE_UNAVAILABLE refusals', 20_000);
    expect(seen.client.state).toBe('rate_limited');
    await redis.restart();
    await waitFor(() => seen.replies.length >= 20 || seen.reconnects.length > 0, '20 replies', 30_000);
    expect(seen.reconnects).toEqual([]);
    expect(seen.replies).toEqual(range(20));
    expect([...handled().entries()].sort(([a], [b]) => a - b)).toEqual(range(20).map((seq) => [seq, 1]));
    // Each refusal names the refused message (by id), and the outage counts no violation.
    expect(unavailable().every((n) => n.warningCount === 0 && n.message?.event === event)).toBe(true);
    expect(seen.notices.filter((n) => n.code !== 'STORE_UNAVAILABLE')).toEqual([]);
    expect(seen.drops).toEqual([]);
    expect(seen.undelivered).toEqual([]);
  }, 60_000);

  it('fail mode open, Redis frozen (SIGSTOP) mid-run, then resumed: every message answered once, no close; refusals only by the local fallback, waited out', async () => {
    // Deadline 500 ms (the helper's); the type allows 5 burst, 10 a second.
    const running = await startApp(transport, onRedis({ failMode: 'open' }));
    const seen = observe(running.url, transport, {
      limits: { types: { [event]: { capacity: 4, refillPerSecond: 9 } } },
      policyDelayMs: 60_000,
    });
    await waitFor(() => seen.client.state === 'open', 'open');
    for (const seq of range(4)) seen.client.send(event, { seq });
    await waitFor(() => seen.replies.length >= 4, '4 replies');
    await sleep(500);
    redis.pause();
    // 16 messages at the client's declared pace (9 a second, under the server's 10):
    // the server holds those that arrive while a decision waits on the frozen Redis, for
    // up to 3 deadlines of 500 ms until the breaker opens, then decides them side by side.
    for (const seq of range(16, 4)) seen.client.send(event, { seq });
    await waitFor(
      () => seen.replies.length >= 12 || seen.reconnects.length > 0,
      '12 replies during the freeze',
      20_000,
    );
    redis.resume();
    await waitFor(() => seen.replies.length >= 20 || seen.reconnects.length > 0, '20 replies', 30_000);
    // Left alone (README, fail mode `open`): the frames held while decisions waited on the
    // frozen Redis are decided together by the local fallback once the breaker opens, so its
    // burst limit may refuse some (this review found 10 TYPE_LIMIT refusals, warningCount up
    // to 8, under the default 10 that would close). They are waited out and sent again.
    expect(seen.reconnects).toEqual([]);
    expect(seen.notices.every((n) => n.code === 'TYPE_LIMIT' && n.message?.event === event)).toBe(true);
    expect(seen.replies).toEqual(range(20));
  }, 60_000);
});

// ---------------------------------------------------------------------------------------
// Closes: a 1008 on Redis, and a server that goes away and comes back.
// ---------------------------------------------------------------------------------------

describe.each(['ws', 'io'] as const)('client at a close (%s)', (transport) => {
  const event = transport === 'ws' ? 'chat' : 'ask';
  const handled = () => (transport === 'ws' ? processed.chat : processed.ask);

  it('a priority flood closed 1008 (Redis store): every message replied, refused (dropped) or reported undelivered, none twice', async () => {
    const running = await startApp(transport, onRedis());
    const seen = observe(running.url, transport, { policyDelayMs: 60_000, undelivered: 'requeue' });
    await waitFor(() => seen.client.state === 'open', 'open');
    for (const seq of range(20)) expect(seen.client.sendPriority(event, { seq })).toBe(true);
    await waitFor(() => seen.reconnects.length > 0, 'the close', 20_000);
    expect(seen.reconnects.map((r) => [r.code, r.policy])).toEqual([[1008, true]]);
    const rejected = seen.drops
      .filter((d) => d.reason === 'rejected')
      .map((d) => (d.message.data as { seq: number }).seq);
    const unanswered = seen.undelivered.flatMap((u) => u.messages.map((m) => (m.data as { seq: number }).seq));
    expect(seen.undelivered.every((u) => u.reason === 'closed' && u.code === 1008 && u.requeued.length === 0)).toBe(
      true,
    );
    expect([...seen.replies, ...rejected, ...unanswered].sort((a, b) => a - b)).toEqual(range(20));
    expect(rejected).toHaveLength(10);
    // Admitted messages were replied before the close: nothing processed is reported.
    expect([...handled().keys()].sort((a, b) => a - b)).toEqual([...seen.replies].sort((a, b) => a - b));
    expect(seen.client.queued).toBe(0);
  }, 40_000);

  it("the server goes away and comes back on its port: with 'requeue' every message is answered once, only unanswered ones processed twice", async () => {
    const first = await startApp(transport, {});
    const seen = observe(first.url, transport, {
      limits: { types: { [event]: { capacity: 4, refillPerSecond: 9 } } },
      undelivered: 'requeue',
      backoffBaseMs: 200,
      backoffCapMs: 400,
      policyDelayMs: 500,
    });
    await waitFor(() => seen.client.state === 'open', 'open');
    for (const seq of range(20)) seen.client.send(event, { seq });
    await waitFor(() => seen.replies.length >= 6, '6 replies');
    await closeApp(first.app);
    await waitFor(() => seen.reconnects.length > 0, 'the close');
    await startApp(transport, {}, first.port);
    await waitFor(() => new Set(seen.replies).size >= 20, '20 replies', 30_000);
    await sleep(300);
    expect([...seen.replies].sort((a, b) => a - b)).toEqual(range(20));
    const reported = new Set(seen.undelivered.flatMap((u) => u.requeued.map((m) => (m.data as { seq: number }).seq)));
    for (const [seq, times] of handled()) if (times > 1) expect(reported.has(seq)).toBe(true);
    expect(seen.drops).toEqual([]);
  }, 60_000);
});

// ---------------------------------------------------------------------------------------
// Bad rate_limit frames from a real gateway (a handler's reply).
// ---------------------------------------------------------------------------------------

describe('client and bad rate_limit frames from the server (ws, memory store)', () => {
  it.each([
    ['negative', -50],
    ['NaN (null in JSON)', Number.NaN],
    ['a string', '200'],
    ['missing', undefined],
  ])(
    'a retryAfter %s is read as 1000 ms: the message is sent again once, about 1 s later',
    async (_what, retryAfter) => {
      const running = await startApp('ws', {});
      evilReplies.push({
        event: 'rate_limit',
        data: { code: 'TYPE_LIMIT', messageType: 'evil', retryAfter, limit: 5 },
      });
      const writes: number[] = [];
      const seen = observe(running.url, 'ws', {
        createSocket: (target: string) => {
          const socket = new WebSocket(target);
          const send = socket.send.bind(socket);
          socket.send = ((data: string) => {
            writes.push(performance.now());
            send(data);
          }) as typeof socket.send;
          return socket;
        },
      });
      await waitFor(() => seen.client.state === 'open', 'open');
      seen.client.send('evil', { seq: 0 });
      await waitFor(() => seen.replies.length >= 1, 'the reply');
      expect(seen.notices.map((n) => n.retryAfter)).toEqual([1000]);
      expect(writes).toHaveLength(2);
      expect(writes[1]! - writes[0]!).toBeGreaterThanOrEqual(990);
      expect(seen.errors).toEqual([]);
    },
    20_000,
  );

  it('a retryAfter of 1e300 holds the message (no firing loop); close() drops it once and leaves nothing running', async () => {
    const running = await startApp('ws', {});
    evilReplies.push({ event: 'rate_limit', data: { code: 'TYPE_LIMIT', messageType: 'evil', retryAfter: 1e300 } });
    const seen = observe(running.url, 'ws');
    await waitFor(() => seen.client.state === 'open', 'open');
    seen.client.send('evil', { seq: 0 });
    seen.client.send('evil', { seq: 1 });
    await waitFor(() => seen.notices.length >= 1, 'the frame');
    await sleep(300);
    expect(seen.client.state).toBe('rate_limited');
    expect(seen.client.queued).toBe(2);
    expect(seen.replies).toEqual([]);
    seen.client.close();
    expect(seen.drops.map((d) => [d.reason, (d.message.data as { seq: number }).seq])).toEqual([
      ['closed', 0],
      ['closed', 1],
    ]);
    expect(seen.client.state).toBe('closed');
  }, 20_000);
});
