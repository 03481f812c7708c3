/**
 * Review of 3b0e398 (a connection's decisions settle in arrival order: `SettleOrder` in
 * `SharedStore.consume`, `MessageLimiter.decideFor` and the pipeline's tracker order;
 * `settleLate`; refusals in transit) on the REAL Redis store.
 *
 * Checked: token reservations (batch slots answered at once beside decisions waiting for a
 * reserving call), the block cache answering refusals at once while an earlier call waits,
 * Redis frozen (SIGSTOP) mid-flood under fail open and fail closed with a short deadline,
 * floods of 100-200 frames in one write (past the 64-frame hold) mixing types with different
 * plans, two connections from one address, a client closing mid-flood (what stays behind:
 * decision and tracker orders, refusals in transit, held frames; whether app.close() ends).
 * The promise: every admitted message gets its reply before the 1008 close, every refused
 * one a `rate_limit` frame up to the close, messages are decided in arrival order (no later
 * message admitted by a bucket that refused an earlier one), and decisions, violations and
 * events count what the client was told. No unhandled promise rejection.
 *
 * Degradation on Redis and an asynchronous tracker that answers at once after its first
 * lookup were checked too. Jest fails a test on an unhandled rejection: none was seen.
 *
 * Held at 3b0e398 (every case but the BUG one). The BUG case fails since d80aab6, whose
 * `SettleOrder` stall (ORDER_STALL_MS, 5 s; it passes at 3b0e398): a Redis call
 * waiting longer than 5 s under a deadline above that (commandTimeoutMs has no bound) lets
 * the decisions answered at once after it (block cache, reservation slots) settle first; a
 * refusal among them reaching the close threshold then leaves the earlier admitted message
 * unanswered (settled after the close was decided: CLOSING, never processed). Fixed: a
 * store's decisions wait for the ones before them as long as they take (only tracker
 * promises, which have no deadline, have a stall time, TRACKER_STALL_MS).
 *
 * Real apps on 127.0.0.1, real `ws` clients, a real redis-server on a free port.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { Injectable } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway, type OnGatewayConnection } from '@nestjs/websockets';
import { Registry } from 'prom-client';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { CONNECTION_STATE, type ConnectionState } from '../../lib/connection/connection-state.js';
import { startApp, type RunningApp } from '../support/app.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { settle, sleep, TestClient, type Frame, later } from '../support/ws-client.js';
import { metricSum } from '../support/metrics.js';

@Injectable()
class Handled {
  chat = 0;
  search = 0;
  ping = 0;
  fast = 0;
  urgent = 0;
  /** The server side of each connection, in the order they opened. */
  readonly sockets: object[] = [];
  get total(): number {
    return this.chat + this.search + this.ping + this.fast + this.urgent;
  }
}

@WebSocketGateway()
@WsRateLimit()
class OrderGateway implements OnGatewayConnection {
  constructor(private readonly handled: Handled) {}

  handleConnection(client: object): void {
    this.handled.sockets.push(client);
  }

  @Throttle({ type: 'chat', capacity: 12, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    this.handled.chat++;
    return { event: 'chat_ack', data };
  }

  @Throttle({ type: 'search', capacity: 1000, refillRate: 1000, expensive: true })
  @SubscribeMessage('search')
  async search(@MessageBody() data: unknown) {
    this.handled.search++;
    return later(20, { event: 'search_results', data });
  }

  @Throttle({
    type: 'ping',
    limits: { short: { capacity: 8, refillRate: 0.001 }, long: { capacity: 1000, refillRate: 1000 } },
  })
  @SubscribeMessage('ping')
  ping(@MessageBody() data: unknown) {
    this.handled.ping++;
    return { event: 'pong', data };
  }

  /** Reservable: 20 burst, 20 a second. */
  @Throttle({ type: 'fast', capacity: 20, refillRate: 20 })
  @SubscribeMessage('fast')
  fast(@MessageBody() data: unknown) {
    this.handled.fast++;
    return { event: 'fast_ack', data };
  }
}

const REPLY_OF: Record<string, string> = {
  chat: 'chat_ack',
  search: 'search_results',
  ping: 'pong',
  fast: 'fast_ack',
};
const REPLIES = new Set(Object.values(REPLY_OF));

interface Instance {
  running: RunningApp;
  limiter: WsRateLimitService;
  handled: Handled;
  registry: Registry;
  events: RateLimitEvent[];
}

interface Sent {
  i: number;
  event: string;
}

function accounting(sent: readonly Sent[], frames: readonly Frame[]) {
  const replied = new Map<number, number>();
  const refused = new Map<number, Frame>();
  const refusals: Frame[] = [];
  const other: Frame[] = [];
  let twiceCount = 0;
  for (const frame of frames) {
    if (frame.event !== undefined && REPLIES.has(frame.event)) {
      const i = frame.data as number;
      if (replied.has(i) || refused.has(i)) twiceCount++;
      replied.set(i, (replied.get(i) ?? 0) + 1);
    } else if (frame.event === 'error' && typeof frame.data?.id === 'number') {
      const i = frame.data.id as number;
      if (replied.has(i) || refused.has(i)) twiceCount++;
      replied.set(i, 1);
    } else if (frame.event === 'rate_limit') {
      refusals.push(frame);
      const i = frame.data?.id as number;
      if (replied.has(i) || refused.has(i)) twiceCount++;
      refused.set(i, frame);
    } else {
      other.push(frame);
    }
  }
  const answered = sent.filter(({ i }) => replied.has(i) || refused.has(i)).map(({ i }) => i);
  const unanswered = sent.filter(({ i }) => !replied.has(i) && !refused.has(i)).map(({ i }) => i);
  const lastAnswered = answered.length === 0 ? -1 : Math.max(...answered);
  const gaps = unanswered.filter((i) => i < lastAnswered);
  return { replied, refused, refusals, other, twice: twiceCount, answered, unanswered, gaps };
}

/**
 * Messages admitted by a bucket after an earlier message of the connection was refused by
 * that same bucket (buckets that do not refill meanwhile: chat's, ping's short, and the
 * global one when `globalRefills` is false): [refused index, admitted index].
 */
function outOfOrder(sent: readonly Sent[], frames: readonly Frame[], globalRefills = false): Array<[number, number]> {
  const { replied, refused } = accounting(sent, frames);
  const typeOf = new Map(sent.map(({ i, event }) => [i, event]));
  const bad: Array<[number, number]> = [];
  for (const [i, frame] of refused) {
    const code = frame.data?.code as string;
    const type = frame.data?.messageType as string;
    for (const j of replied.keys()) {
      if (j <= i) continue;
      const later = typeOf.get(j);
      if (code === 'TYPE_LIMIT' && (type === 'chat' || type === 'ping') && later === type) bad.push([i, j]);
      if (code === 'GLOBAL_LIMIT' && !globalRefills) bad.push([i, j]);
    }
  }
  return bad;
}

describe('settle order on Redis (review of 3b0e398)', () => {
  let redis: RedisServer;
  const instances: Instance[] = [];
  const clients: TestClient[] = [];
  const subscriptions: Array<{ unsubscribe(): void }> = [];

  const start = async (options: WsRateLimitModuleOptions = {}): Promise<Instance> => {
    const registry = new Registry();
    const running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            store: 'redis',
            tracker: 'ip',
            metricsRegistry: registry,
            global: { capacity: 25, refillRate: 0.001 },
            type: { capacity: 1000, refillRate: 1000 },
            expensive: { max: 3, windowMs: 60_000 },
            violations: { max: 10, windowMs: 60_000 },
            maxPendingHandshakesPerIp: 0,
            connection: { capacity: 1000, refillRate: 1000 },
            ...options,
            redis: { url: redis.url, commandTimeoutMs: 3000, ...options.redis },
          }),
        ],
        providers: [Handled, OrderGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    const limiter = running.app.get(WsRateLimitService);
    const events: RateLimitEvent[] = [];
    subscriptions.push(limiter.events$.subscribe((event) => events.push(event)));
    const instance = { running, limiter, handled: running.app.get(Handled), registry, events };
    instances.push(instance);
    return instance;
  };

  const connect = async (instance: Instance, localAddress = '127.0.0.1') => {
    const client = await TestClient.connect(instance.running.url, { perMessageDeflate: false, localAddress });
    clients.push(client);
    return client;
  };

  const flood = (client: TestClient, sent: readonly Sent[]) =>
    client.inOneWrite(() => {
      for (const { i, event } of sent) client.sendRaw(JSON.stringify({ event, data: i, id: i }));
    });

  const mix = (events: readonly string[], count: number, from = 0): Sent[] =>
    Array.from({ length: count }, (_v, k) => ({ i: from + k, event: events[k % events.length]! }));

  const drained = (instance: Instance) => settle(() => instance.limiter.stats().connections === 0, 200, 15_000);

  const stateOf = (socket: object): ConnectionState =>
    (socket as { [CONNECTION_STATE]: ConnectionState })[CONNECTION_STATE];

  const figuresOf = async (instance: Instance, client: TestClient, sent: readonly Sent[], globalRefills = false) => {
    const { replied, refusals, other, twice, gaps } = accounting(sent, client.frames);
    return {
      twice,
      gaps,
      outOfOrder: outOfOrder(sent, client.frames, globalRefills),
      other: other.map((frame) => frame.event),
      replies: replied.size,
      handled: instance.handled.total + client.events('error').length,
      frames: refusals.length,
      warningCounts: refusals.map((frame) => frame.data.warningCount),
      violations: await metricSum(instance.registry, 'ws_rate_limit_violations_total'),
      rejected: await metricSum(instance.registry, 'ws_rate_limit_decisions_total', { result: 'rejected' }),
      allowed: await metricSum(instance.registry, 'ws_rate_limit_decisions_total', { result: 'allowed' }),
      decisionEvents: instance.events.filter((event) => event.kind === 'decision').length,
      violationEvents: instance.events.filter((event) => event.kind === 'violation').length,
      disconnects: await metricSum(instance.registry, 'ws_rate_limit_disconnects_total', { reason: 'violations' }),
    };
  };

  const expected = (handled: number, frames = 10) => ({
    twice: 0,
    gaps: [],
    outOfOrder: [],
    other: [],
    replies: handled,
    handled,
    frames,
    warningCounts: [...Array(frames).keys()].map((k) => k + 1),
    violations: frames,
    rejected: frames,
    allowed: handled,
    decisionEvents: handled + frames,
    violationEvents: frames,
    disconnects: 1,
  });

  beforeAll(async () => {
    redis = await startRedis();
  });
  afterEach(async () => {
    redis.resume();
    for (const subscription of subscriptions.splice(0)) subscription.unsubscribe();
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (const instance of instances.splice(0)) await instance.running.close();
    if (redis.process.exitCode === null && redis.process.signalCode === null) await redis.command('FLUSHALL');
  });
  afterAll(() => redis.stop());

  describe('floods past the frame hold, mixed plans', () => {
    for (const [name, options] of [
      ['per call', {}],
      ['reservations 64', { redis: { reservationBatch: 64, reservationTtlMs: 1000 } }],
      ['block cache off', { redis: { blockCache: 0 } }],
    ] as Array<[string, WsRateLimitModuleOptions]>) {
      for (const count of [100, 200]) {
        it(`${count} frames of chat/search/ping/fast/chat in one write (${name}): answered before the close, in order, counted as told`, async () => {
          const instance = await start({ global: { capacity: 40, refillRate: 0.001 }, ...options });
          const client = await connect(instance);
          const sent = mix(['chat', 'search', 'ping', 'fast', 'chat'], count);
          flood(client, sent);
          expect((await client.waitClose(15_000)).code).toBe(1008);
          await drained(instance);
          const figures = await figuresOf(instance, client, sent);
          expect(figures).toEqual(expected(figures.handled));
        }, 30_000);
      }
    }
  });

  describe('the block cache answering at once while earlier calls wait', () => {
    it('chat refused once (cached), then 150 frames search/chat/ping/chat: the cached refusals settle after the searches before them, counted as told', async () => {
      const instance = await start({ global: { capacity: 60, refillRate: 0.001 } });
      const client = await connect(instance);
      const first = mix(['chat'], 13);
      flood(client, first);
      await client.waitFor((frame) => frame.event === 'rate_limit' || frame.event === 'chat_ack', 13);
      const sent = mix(['search', 'chat', 'ping', 'chat'], 150, 100);
      flood(client, sent);
      expect((await client.waitClose(15_000)).code).toBe(1008);
      await drained(instance);
      const figures = await figuresOf(instance, client, [...first, ...sent]);
      expect(figures).toEqual(expected(figures.handled));
    }, 30_000);
  });

  describe('Redis frozen mid-flood, short deadline', () => {
    for (const reservationBatch of [0, 64]) {
      it(`fail open, 150 frames, frozen after the first 40 are sent (reservation batch ${reservationBatch}): answered before the close, counted as told`, async () => {
        const instance = await start({
          failMode: 'open',
          global: { capacity: 1000, refillRate: 1000 },
          redis: { commandTimeoutMs: 150, reservationBatch, reservationTtlMs: 1000 },
        });
        const client = await connect(instance);
        const sent = mix(['chat', 'fast', 'ping', 'chat', 'search'], 150);
        flood(client, sent.slice(0, 40));
        redis.pause();
        flood(client, sent.slice(40));
        expect((await client.waitClose(20_000)).code).toBe(1008);
        await drained(instance);
        redis.resume();
        const figures = await figuresOf(instance, client, sent, true);
        expect({ ...figures, outOfOrder: [] }).toEqual(expected(figures.handled));
      }, 40_000);

      it(`fail closed, 150 frames, frozen after the first 40 are sent (reservation batch ${reservationBatch}): each refusal or reply told once, in order`, async () => {
        const instance = await start({
          failMode: 'closed',
          global: { capacity: 1000, refillRate: 1000 },
          redis: { commandTimeoutMs: 150, reservationBatch, reservationTtlMs: 1000 },
        });
        const client = await connect(instance);
        const sent = mix(['chat', 'fast', 'ping', 'chat', 'search'], 150);
        flood(client, sent.slice(0, 40));
        redis.pause();
        flood(client, sent.slice(40));
        await settle(
          () =>
            client.socket.readyState === client.socket.CLOSED ||
            accounting(sent, client.frames).answered.length === 150,
          300,
          20_000,
        );
        const closed = client.socket.readyState === client.socket.CLOSED ? true : undefined;
        redis.resume();
        const { twice, gaps, unanswered, refusals, replied } = accounting(sent, client.frames);
        const counted = refusals.filter((frame) => frame.data.code !== 'STORE_UNAVAILABLE');
        expect({
          twice,
          gaps,
          unanswered: closed === undefined ? unanswered : [],
          replies: replied.size,
          counted: counted.map((frame) => frame.data.warningCount),
          violations: await metricSum(instance.registry, 'ws_rate_limit_violations_total'),
          rejected: await metricSum(instance.registry, 'ws_rate_limit_decisions_total', { result: 'rejected' }),
          allowed: await metricSum(instance.registry, 'ws_rate_limit_decisions_total', { result: 'allowed' }),
        }).toEqual({
          twice: 0,
          gaps: [],
          unanswered: [],
          replies: instance.handled.total,
          counted: counted.map((_f, k) => k + 1),
          violations: counted.length,
          rejected: refusals.length,
          allowed: instance.handled.total,
        });
      }, 40_000);
    }
  });

  describe('Redis frozen and thawed while a flood is decided', () => {
    for (const failMode of ['open', 'closed'] as const) {
      for (const reservationBatch of [0, 64]) {
        it(`fail ${failMode}, 200 frames, frozen before and thawed 100 ms in (deadline 60 ms, reservation batch ${reservationBatch}): each answered once, in order, counted as told`, async () => {
          const instance = await start({
            failMode,
            global: { capacity: 1000, refillRate: 1000 },
            redis: { commandTimeoutMs: 60, reservationBatch, reservationTtlMs: 1000 },
          });
          const client = await connect(instance);
          const warm = mix(['fast', 'chat'], 6);
          flood(client, warm);
          await client.waitFor((frame) => REPLIES.has(frame.event ?? ''), 6);
          redis.pause();
          const sent = mix(['fast', 'chat', 'ping', 'search', 'fast'], 200, 100);
          flood(client, sent);
          await sleep(100);
          redis.resume();
          await settle(
            () =>
              client.socket.readyState === client.socket.CLOSED ||
              accounting(sent, client.frames).answered.length === 200,
            300,
            20_000,
          );
          const all = [...warm, ...sent];
          const { twice, gaps, refusals, replied } = accounting(all, client.frames);
          const counted = refusals.filter((frame) => frame.data.code !== 'STORE_UNAVAILABLE');
          expect({
            twice,
            gaps,
            outOfOrder: outOfOrder(all, client.frames, true),
            replies: replied.size,
            counted: counted.map((frame) => frame.data.warningCount),
            violations: await metricSum(instance.registry, 'ws_rate_limit_violations_total'),
            rejected: await metricSum(instance.registry, 'ws_rate_limit_decisions_total', { result: 'rejected' }),
            allowed: await metricSum(instance.registry, 'ws_rate_limit_decisions_total', { result: 'allowed' }),
            decisionEvents: instance.events.filter((event) => event.kind === 'decision').length,
          }).toEqual({
            twice: 0,
            gaps: [],
            outOfOrder: [],
            replies: instance.handled.total,
            counted: counted.map((_f, k) => k + 1),
            violations: counted.length,
            rejected: refusals.length,
            allowed: instance.handled.total,
            decisionEvents: instance.handled.total + refusals.length,
          });
        }, 40_000);
      }
    }
  });

  describe('two connections from one address', () => {
    for (const reservationBatch of [0, 64]) {
      it(`both flooded at once with 120 frames each (reservation batch ${reservationBatch}): each accounted, shared budgets hold`, async () => {
        const instance = await start({ global: { capacity: 60, refillRate: 0.001 }, redis: { reservationBatch } });
        const a = await connect(instance);
        const b = await connect(instance);
        const sentA = mix(['chat', 'search', 'ping', 'fast'], 120);
        const sentB = mix(['fast', 'chat', 'ping', 'search'], 120, 1000);
        flood(a, sentA);
        flood(b, sentB);
        expect((await a.waitClose(15_000)).code).toBe(1008);
        expect((await b.waitClose(15_000)).code).toBe(1008);
        await drained(instance);
        const ra = accounting(sentA, a.frames);
        const rb = accounting(sentB, b.frames);
        expect({
          twice: ra.twice + rb.twice,
          gaps: [...ra.gaps, ...rb.gaps],
          outOfOrder: [...outOfOrder(sentA, a.frames), ...outOfOrder(sentB, b.frames)],
          frames: [ra.refusals.length, rb.refusals.length],
          warningCounts: [ra.refusals.map((f) => f.data.warningCount), rb.refusals.map((f) => f.data.warningCount)],
          replies: ra.replied.size + rb.replied.size,
          violations: await metricSum(instance.registry, 'ws_rate_limit_violations_total'),
          rejected: await metricSum(instance.registry, 'ws_rate_limit_decisions_total', { result: 'rejected' }),
          allowed: await metricSum(instance.registry, 'ws_rate_limit_decisions_total', { result: 'allowed' }),
          chat: instance.handled.chat <= 12,
          ping: instance.handled.ping <= 8,
          global: instance.handled.total <= 60,
        }).toEqual({
          twice: 0,
          gaps: [],
          outOfOrder: [],
          frames: [10, 10],
          warningCounts: [
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
          ],
          replies: instance.handled.total,
          violations: 20,
          rejected: 20,
          allowed: instance.handled.total,
          chat: true,
          ping: true,
          global: true,
        });
      }, 30_000);
    }
  });

  describe('a client closing mid-flood', () => {
    for (const frozen of [false, true]) {
      it(`closed after 150 frames in one write${frozen ? ', Redis frozen meanwhile' : ''}: nothing left on the connection, app.close() ends`, async () => {
        const instance = await start({
          failMode: 'open',
          global: { capacity: 1000, refillRate: 1000 },
          redis: { commandTimeoutMs: 400, reservationBatch: 64 },
        });
        const client = await connect(instance);
        await settle(() => instance.handled.sockets.length === 1, 0);
        const state = stateOf(instance.handled.sockets[0]!);
        if (frozen) redis.pause();
        const sent = mix(['chat', 'search', 'ping', 'fast', 'nope'], 150);
        flood(client, sent);
        await sleep(5);
        client.socket.terminate();
        await drained(instance);
        if (frozen) redis.resume();
        await sleep(800);
        expect({
          waiting: state.waiting,
          held: state.hold?.size ?? 0,
          decisionOrder: state.decisionOrder?.waiting ?? false,
          trackerOrder: state.trackerOrder?.waiting ?? false,
          pending: state.pendingRejections,
          plans: state.plans.size,
          localTrackers: state.localTrackers.size,
        }).toEqual({
          waiting: 0,
          held: 0,
          decisionOrder: false,
          trackerOrder: false,
          pending: 0,
          plans: 0,
          localTrackers: 0,
        });
        const closing = instance.running.close().then(() => 'closed');
        instances.splice(instances.indexOf(instance), 1);
        expect(await Promise.race([closing, later(10_000, 'hung')])).toBe('closed');
      }, 40_000);
    }
  });

  describe('degradation on Redis', () => {
    for (const [name, redisOptions] of [
      ['per call', {}],
      ['reservations 64', { reservationBatch: 64, reservationTtlMs: 1000 }],
      ['block cache off', { blockCache: 0 }],
    ] as Array<[string, WsRateLimitModuleOptions['redis']]>) {
      it(`150 frames, max 3, cooldown 60 s (${name}): nothing admitted after the DEGRADED frame's message, 6 frames (1,2,3,1,2,3), counted as told`, async () => {
        const instance = await start({
          global: { capacity: 1000, refillRate: 1000 },
          violations: { max: 3, windowMs: 60_000 },
          degradeCooldownMs: 60_000,
          redis: { ...redisOptions },
        });
        const client = await connect(instance);
        const sent = mix(['chat', 'chat', 'search', 'ping', 'chat', 'fast'], 150);
        flood(client, sent);
        expect((await client.waitClose(15_000)).code).toBe(1008);
        await drained(instance);
        const { replied, refusals, twice, gaps } = accounting(sent, client.frames);
        const degradedAt = refusals.find((frame) => frame.data.code === 'DEGRADED')?.data.id as number;
        expect({
          twice,
          gaps,
          admittedAfterDegraded: [...replied.keys()].filter((i) => i > degradedAt),
          warningCounts: refusals.map((frame) => frame.data.warningCount),
          replies: replied.size,
          violations: await metricSum(instance.registry, 'ws_rate_limit_violations_total'),
          rejected: await metricSum(instance.registry, 'ws_rate_limit_decisions_total', { result: 'rejected' }),
          allowed: await metricSum(instance.registry, 'ws_rate_limit_decisions_total', { result: 'allowed' }),
          decisionEvents: instance.events.filter((event) => event.kind === 'decision').length,
        }).toEqual({
          twice: 0,
          gaps: [],
          admittedAfterDegraded: [],
          warningCounts: [1, 2, 3, 1, 2, 3],
          replies: instance.handled.total,
          violations: 6,
          rejected: 6,
          allowed: instance.handled.total,
          decisionEvents: instance.handled.total + 6,
        });
      }, 30_000);
    }
  });

  describe('an asynchronous tracker function on Redis', () => {
    for (const reservationBatch of [0, 64]) {
      it(`a tracker that looks its name up once (a promise) and then answers at once, 150 frames (reservation batch ${reservationBatch}): in order, counted as told`, async () => {
        let looked = false;
        const instance = await start({
          global: { capacity: 40, refillRate: 0.001 },
          tracker: () => {
            if (looked) return 'user-1';
            looked = true;
            return later(30, 'user-1');
          },
          redis: { reservationBatch },
        });
        const client = await connect(instance);
        const sent = mix(['chat', 'search', 'ping', 'fast', 'chat'], 150);
        flood(client, sent);
        expect((await client.waitClose(15_000)).code).toBe(1008);
        await drained(instance);
        const figures = await figuresOf(instance, client, sent);
        expect(figures).toEqual(expected(figures.handled));
      }, 30_000);
    }
  });

  describe('a Redis call outlasting the order stall (5 s) under a longer deadline', () => {
    it('9 violations, Redis frozen 7 s (deadline 15 s), then search + 64 chats the block cache refuses at once: the search, admitted, gets its reply before the 1008 close (it is asked before the refusal that reaches the threshold; it was: never answered once a 5 s stall let the refusals overtake it)', async () => {
      const instance = await start({
        failMode: 'open',
        global: { capacity: 1000, refillRate: 0.001 },
        closeGraceMs: 20_000,
        redis: { commandTimeoutMs: 15_000 },
      });
      const client = await connect(instance);
      // 12 chats admitted, 9 refused (violations 1-9): chat's refusal is in the block cache.
      const first = mix(['chat'], 21);
      flood(client, first);
      await client.waitFor((frame) => frame.event === 'rate_limit' || frame.event === 'chat_ack', 21);
      expect(client.events('rate_limit').map((frame) => frame.data.warningCount)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
      redis.pause();
      // The search waits on the frozen Redis; the 64 chats after it are released side by side,
      // each refused at once from the cache (made to settle after the search).
      const sent: Sent[] = [{ i: 100, event: 'search' }, ...mix(['chat'], 64, 101)];
      flood(client, sent);
      await sleep(7_000);
      redis.resume();
      await client.waitClose(30_000);
      await drained(instance);
      const { replied, refused } = accounting(sent, client.frames.slice(first.length));
      expect({
        searchAdmitted: instance.handled.search,
        searchReplied: replied.has(100),
        refused: [...refused.keys()],
        warningCounts: [...refused.values()].map((frame) => frame.data.warningCount),
      }).toEqual({ searchAdmitted: 1, searchReplied: true, refused: [101], warningCounts: [10] });
    }, 60_000);
  });
});
