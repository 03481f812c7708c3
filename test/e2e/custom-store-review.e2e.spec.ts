/**
 * Review of a store of the application's own (63 cases, 33 failed on 9c3f9b6, all fixed): an
 * answer that was no decision (`{ allowed: 'yes' }`, `{}`, `null`, a refusal whose wait was
 * NaN or negative) admitted the message, sent a frame with holes in it and counted a
 * violation, or gave Nest's generic error frame; `service.consume` handed it to the caller
 * (and `null` ended the process through an unhandled rejection in the metrics); `status()`
 * threw a TypeError or gave NaN figures on a bad `peek`; a subclass without `consume` or
 * `peek` started and failed every call. Every store answer now passes
 * lib/storage/store-answers.ts (a malformed one is a store failure: the fail mode decides,
 * the error is counted and logged), and start-up names a missing method.
 *
 * Review: a `RateLimitStore` of the application's own (README "Options only available in
 * code": `store` as a `RateLimitStore` instance; "The store on its own"; "When Redis is slow
 * or down": "For a store of your own, which does not follow its availability, an outage runs
 * from a failed call to the next answer"), seen from a user's side through the real adapters
 * (`WsRateLimitAdapter` on ws, `WsRateLimitIoAdapter` on socket.io) and through
 * `WsRateLimitService` (consume / peek / status / reset from code).
 *
 * Every custom store here wraps the real `MemoryRateLimitStore` and only shapes how its
 * answers arrive: at once, a microtask later, a few ms later, out of order, very late; or it
 * throws, rejects, or answers something that is no decision. Messages use `tracker: 'ip'`, so
 * that their tiers live in the store (per-connection tiers never reach it, README "Where it
 * runs"). Connection plans (the upgrade's `connection` tier) are passed through untouched
 * unless a case says otherwise.
 *
 * Real apps on 127.0.0.1, real `ws` and `socket.io-client` clients.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { Injectable, type INestApplication, type LoggerService, type WebSocketAdapter } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Test } from '@nestjs/testing';
import type { AddressInfo } from 'node:net';
import { Registry } from 'prom-client';
import WebSocket from 'ws';
import {
  MemoryRateLimitStore,
  RateLimitStore,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitDecision,
  type RateLimitEvent,
  type RateLimitPlan,
  type TierStatus,
} from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { connectIo, type IoTestClient } from '../support/io-client.js';
import { metricSum } from '../support/metrics.js';
import { settle, sleep, TestClient, type Frame } from '../support/ws-client.js';

type MaybePromise<T> = T | Promise<T>;

/** Whether a plan is the upgrade's (connection rate / open connections). */
const isConnectionPlan = (plan: RateLimitPlan): boolean =>
  plan.tiers.some((tier) => tier.spec.tier === 'connection' || tier.spec.tier === 'concurrency');

/**
 * A store of the user's own: the real memory store behind it, its answers shaped by
 * `answer` (message plans only, unless `shapeConnections`). Its timers are its own and are
 * cleared by `dispose()` (the module does not close a store given as an instance).
 */
class ShapedStore extends RateLimitStore {
  readonly inner = new MemoryRateLimitStore();
  /** Message-plan consume calls so far. */
  calls = 0;
  shapeConnections = false;
  answer: (decide: () => RateLimitDecision, call: number) => MaybePromise<RateLimitDecision> = (decide) => decide();
  peekAnswer: (peek: () => readonly TierStatus[]) => MaybePromise<readonly TierStatus[]> = (peek) => peek();
  deleteAnswer: (remove: () => void) => MaybePromise<void> = (remove) => remove();
  releaseAnswer: (release: () => void) => MaybePromise<void> = (release) => release();
  private readonly timers = new Set<NodeJS.Timeout>();

  /** Runs `run` after `ms` (a timer this store owns). */
  after<T>(ms: number, run: () => T): Promise<T> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        try {
          resolve(run());
        } catch (error) {
          reject(error as Error);
        }
      }, ms);
      this.timers.add(timer);
    });
  }

  consume(plan: RateLimitPlan): MaybePromise<RateLimitDecision> {
    if (isConnectionPlan(plan) && !this.shapeConnections) return this.inner.consume(plan);
    return this.answer(() => this.inner.consume(plan), this.calls++);
  }
  peek(plan: RateLimitPlan): MaybePromise<readonly TierStatus[]> {
    if (isConnectionPlan(plan)) return this.inner.peek(plan);
    return this.peekAnswer(() => this.inner.peek(plan));
  }
  release(plan: RateLimitPlan): MaybePromise<void> {
    return this.releaseAnswer(() => this.inner.release(plan));
  }
  delete(keys: readonly string[]): MaybePromise<void> {
    return this.deleteAnswer(() => this.inner.delete(keys));
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  dispose(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }
}

@Injectable()
class Handled {
  ids: number[] = [];
}

@WebSocketGateway()
@WsRateLimit()
class ChatGateway {
  constructor(private readonly handled: Handled) {}

  @Throttle({ type: 'chat', capacity: 1000, refillRate: 1000 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: number) {
    this.handled.ids.push(data);
    return { event: 'chat_ack', data };
  }
}

/** Collects what the library logs. */
class CapturedLog implements LoggerService {
  readonly lines: Array<{ level: string; message: string }> = [];
  log(message: unknown) {
    this.lines.push({ level: 'log', message: String(message) });
  }
  warn(message: unknown) {
    this.lines.push({ level: 'warn', message: String(message) });
  }
  error(message: unknown) {
    this.lines.push({ level: 'error', message: String(message) });
  }
  debug() {}
  verbose() {}
}

type Transport = 'ws' | 'socket.io';

interface Running {
  app: INestApplication;
  port: number;
  limiter: WsRateLimitService;
  handled: Handled;
  registry: Registry;
  events: RateLimitEvent[];
  log: CapturedLog;
  closed: boolean;
  close(): Promise<void>;
}

const GLOBAL = 5;
const MAX_VIOLATIONS = 3;

const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);
const uncaught: unknown[] = [];
const onUncaught = (error: unknown) => uncaught.push(error);

beforeAll(() => {
  process.on('unhandledRejection', onUnhandled);
  process.on('uncaughtException', onUncaught);
});
afterAll(() => {
  process.off('unhandledRejection', onUnhandled);
  process.off('uncaughtException', onUncaught);
});

const apps: Running[] = [];
const stores: ShapedStore[] = [];
const wsClients: TestClient[] = [];
const ioClients: IoTestClient[] = [];

afterEach(async () => {
  await Promise.all(wsClients.splice(0).map((client) => client.close()));
  await Promise.all(ioClients.splice(0).map((client) => client.closeAndSettle()));
  for (const running of apps.splice(0)) await running.close();
  for (const store of stores.splice(0)) store.dispose();
  // I-1 of RELIABILITY.md: no case may leave an unhandled rejection or an uncaught exception.
  await sleep(20);
  expect({ unhandled: unhandled.splice(0).map(String), uncaught: uncaught.splice(0).map(String) }).toEqual({
    unhandled: [],
    uncaught: [],
  });
});

const newStore = (): ShapedStore => {
  const store = new ShapedStore();
  stores.push(store);
  return store;
};

async function start(
  transport: Transport,
  store: RateLimitStore,
  extra: Record<string, unknown> = {},
  providers: unknown[] = [Handled, ChatGateway],
): Promise<Running> {
  const registry = new Registry();
  const log = new CapturedLog();
  const moduleRef = await Test.createTestingModule({
    imports: [
      WsRateLimitModule.forRoot({
        useEnv: false,
        store,
        tracker: 'ip',
        metricsRegistry: registry,
        global: { capacity: GLOBAL, refillRate: 0.001 },
        violations: { max: MAX_VIOLATIONS, windowMs: 60_000 },
        maxPendingHandshakesPerIp: 0,
        connection: { capacity: 1000, refillRate: 1000 },
        ...extra,
      }),
    ],
    providers: providers as never[],
  }).compile();
  const app = moduleRef.createNestApplication({ logger: log });
  const adapter: WebSocketAdapter = transport === 'ws' ? new WsRateLimitAdapter(app) : new WsRateLimitIoAdapter(app);
  app.useWebSocketAdapter(adapter);
  try {
    await app.listen(0, '127.0.0.1');
  } catch (error) {
    await app.close();
    throw error;
  }
  const port = (app.getHttpServer().address() as AddressInfo).port;
  const limiter = app.get(WsRateLimitService);
  const events: RateLimitEvent[] = [];
  const subscription = limiter.events$.subscribe((event) => events.push(event));
  const running: Running = {
    app,
    port,
    limiter,
    handled: app.get(Handled, { strict: false }),
    registry,
    events,
    log,
    closed: false,
    close: async () => {
      if (running.closed) return;
      running.closed = true;
      subscription.unsubscribe();
      await app.close();
    },
  };
  apps.push(running);
  return running;
}

const range = (from: number, to: number) => Array.from({ length: to - from }, (_v, k) => from + k);

/** Sends `count` chats in one TCP write, `{ event: 'chat', data: i, id: i }`. */
async function floodWs(running: Running, count: number): Promise<TestClient> {
  const client = await TestClient.connect(`ws://127.0.0.1:${running.port}`, { perMessageDeflate: false });
  wsClients.push(client);
  client.inOneWrite(() => {
    for (let i = 0; i < count; i++) client.sendRaw(JSON.stringify({ event: 'chat', data: i, id: i }));
  });
  return client;
}

async function floodIo(running: Running, count: number): Promise<IoTestClient> {
  const client = await connectIo(`http://127.0.0.1:${running.port}`, 'websocket');
  ioClients.push(client);
  for (let i = 0; i < count; i++) client.socket.emit('chat', i);
  return client;
}

/** A frame's `rate_limit` data is one a client can act on. */
function wellFormedRefusal(data: Record<string, unknown>): boolean {
  return (
    ['GLOBAL_LIMIT', 'TYPE_LIMIT', 'EXPENSIVE_LIMIT', 'STORE_UNAVAILABLE', 'BLOCKED', 'DEGRADED'].includes(
      data.code as string,
    ) &&
    Number.isSafeInteger(data.retryAfter) &&
    (data.retryAfter as number) >= 1 &&
    Number.isFinite(data.remaining) &&
    (data.remaining as number) >= 0 &&
    Number.isFinite(data.limit)
  );
}

/** The shapes of a store's timing; each answers with the memory store's decision. */
const TIMINGS: Record<string, (store: ShapedStore) => ShapedStore['answer']> = {
  synchronously: () => (decide) => decide(),
  'a microtask later': () => (decide) => Promise.resolve().then(decide),
  'a few ms later (setTimeout)': (store) => (decide) => {
    const decision = decide();
    return store.after(3, () => decision);
  },
  // Decided in arrival order, answered out of it: within a burst the later calls settle first.
  'out of order (later calls answer first)': (store) => (decide, call) => {
    const decision = decide();
    return store.after(2 + 2 * (12 - (call % 12)), () => decision);
  },
  'mixed: sync, microtask, and timers out of order': (store) => (decide, call) => {
    const decision = decide();
    if (call % 3 === 0) return decision;
    if (call % 3 === 1) return Promise.resolve(decision);
    return store.after(15 - (call % 10), () => decision);
  },
};

describe('a custom store: every admitted message is answered, every refused one gets its frame, in order', () => {
  for (const [name, timing] of Object.entries(TIMINGS)) {
    it(`ws: answers ${name}: 12 chats in one write, burst ${GLOBAL}: replies 0-4, frames 5-7 (warningCount 1-3), then 1008; nothing else`, async () => {
      const store = newStore();
      store.answer = timing(store);
      const running = await start('ws', store);
      const client = await floodWs(running, 12);
      expect((await client.waitClose(15_000)).code).toBe(1008);
      const sequence = client.frames.map((frame: Frame) =>
        frame.event === 'chat_ack'
          ? `ack:${frame.data}`
          : `${frame.event}:${frame.data?.id}:${frame.data?.warningCount}`,
      );
      expect(sequence).toEqual([
        ...range(0, GLOBAL).map((i) => `ack:${i}`),
        ...range(GLOBAL, GLOBAL + MAX_VIOLATIONS).map((i) => `rate_limit:${i}:${i - GLOBAL + 1}`),
      ]);
      expect(running.handled.ids).toEqual(range(0, GLOBAL));
      for (const frame of client.events('rate_limit')) {
        expect(frame.data.code).toBe('GLOBAL_LIMIT');
        expect(wellFormedRefusal(frame.data)).toBe(true);
      }
      expect(await metricSum(running.registry, 'ws_rate_limit_decisions_total', { result: 'allowed' })).toBe(GLOBAL);
      expect(await metricSum(running.registry, 'ws_rate_limit_decisions_total', { result: 'rejected' })).toBe(
        MAX_VIOLATIONS,
      );
    }, 30_000);

    it(`socket.io: answers ${name}: 12 chats, burst ${GLOBAL}: acks 0-4, then 3 rate_limit events (warningCount 1-3), then the disconnect`, async () => {
      const store = newStore();
      store.answer = timing(store);
      const running = await start('socket.io', store);
      const client = await floodIo(running, 12);
      await client.disconnected(15_000);
      const sequence = client.events.map(({ event, data }) =>
        event === 'chat_ack' ? `ack:${String(data)}` : `${event}:${(data as { warningCount?: number })?.warningCount}`,
      );
      expect(sequence.filter((entry) => entry.startsWith('ack:') || entry.startsWith('rate_limit:'))).toEqual([
        ...range(0, GLOBAL).map((i) => `ack:${i}`),
        ...range(1, MAX_VIOLATIONS + 1).map((count) => `rate_limit:${count}`),
      ]);
      expect(running.handled.ids).toEqual(range(0, GLOBAL));
      for (const data of client.of('rate_limit')) expect(wellFormedRefusal(data as Record<string, unknown>)).toBe(true);
    }, 30_000);
  }

  // Failures among answers, in open mode: the fallback (its own budget of 5) decides calls 1, 4, 7,
  // 10; the store (budget 5, answering a few ms later, out of order) the rest: 0, 2, 3, 5, 6 pass,
  // 8, 9, 11 are refused. The README: the fallback decides each failed call in its turn.
  for (const transport of ['ws', 'socket.io'] as const) {
    it(`${transport}, failMode open, every third call rejected, the rest answered late out of order: replies 0-7 and 10, frames for 8, 9, 11 (warningCount 1-3), in arrival order, then the close`, async () => {
      const store = newStore();
      store.answer = (decide, call) => {
        if (call % 3 === 1) return Promise.reject(new Error(`db hiccup ${call}`));
        const decision = decide();
        return store.after(2 + (7 - (call % 7)), () => decision);
      };
      const running = await start(transport, store, { failMode: 'open' });
      let sequence: string[];
      if (transport === 'ws') {
        const client = await floodWs(running, 12);
        expect((await client.waitClose(15_000)).code).toBe(1008);
        sequence = client.frames.map((frame: Frame) =>
          frame.event === 'chat_ack' ? `ack:${frame.data}` : `${frame.event}:${frame.data?.warningCount}`,
        );
      } else {
        const client = await floodIo(running, 12);
        await client.disconnected(15_000);
        sequence = client.events
          .filter(({ event }) => event === 'chat_ack' || event === 'rate_limit')
          .map(({ event, data }) =>
            event === 'chat_ack'
              ? `ack:${String(data)}`
              : `${event}:${(data as { warningCount: number }).warningCount}`,
          );
      }
      expect(sequence).toEqual([
        ...range(0, 8).map((i) => `ack:${i}`),
        'rate_limit:1',
        'rate_limit:2',
        'ack:10',
        'rate_limit:3',
      ]);
      expect(running.handled.ids).toEqual([...range(0, 8), 10]);
      expect(await metricSum(running.registry, 'ws_rate_limit_store_errors_total')).toBe(4);
    }, 30_000);
  }

  it('ws: a store answering very late (the first decision 1.5 s, the rest at once) still answers every message in arrival order', async () => {
    const store = newStore();
    store.answer = (decide, call) => {
      const decision = decide();
      return call === 0 ? store.after(1500, () => decision) : decision;
    };
    const running = await start('ws', store);
    const client = await floodWs(running, 4);
    await client.waitFor((frame) => frame.event === 'chat_ack', 4, 15_000);
    expect(client.frames.map((frame) => frame.data)).toEqual([0, 1, 2, 3]);
  }, 30_000);
});

const FAILURES: Record<string, (store: ShapedStore) => ShapedStore['answer']> = {
  'throws synchronously': () => () => {
    throw new Error('db down (sync)');
  },
  rejects: () => () => Promise.reject(new Error('db down (async)')),
  'rejects a few ms later': (store) => () =>
    store.after(3, () => {
      throw new Error('db down (late)');
    }),
};

describe('a failing custom store follows failMode and is reported', () => {
  for (const [name, failure] of Object.entries(FAILURES)) {
    it(`failMode open, store ${name}: the local fallback (same figures) decides: replies 0-4, 3 GLOBAL_LIMIT frames, 1008; outage reported once (events$, metrics, a warning); the next answer ends it`, async () => {
      const store = newStore();
      store.answer = failure(store);
      const running = await start('ws', store, { failMode: 'open' });
      const client = await floodWs(running, 12);
      expect((await client.waitClose(15_000)).code).toBe(1008);
      expect(client.events('chat_ack').map((frame) => frame.data)).toEqual(range(0, GLOBAL));
      expect(client.events('rate_limit').map((frame) => [frame.data.id, frame.data.code])).toEqual(
        range(GLOBAL, GLOBAL + MAX_VIOLATIONS).map((i) => [i, 'GLOBAL_LIMIT']),
      );
      const storeEvents = () => running.events.filter((event) => event.kind === 'store');
      expect(storeEvents().map((event) => (event as { state: string }).state)).toEqual(['down']);
      expect(await metricSum(running.registry, 'ws_rate_limit_store_outages_total')).toBe(1);
      expect(await metricSum(running.registry, 'ws_rate_limit_store_errors_total')).toBeGreaterThanOrEqual(
        GLOBAL + MAX_VIOLATIONS,
      );
      expect(await metricSum(running.registry, 'ws_rate_limit_store_fallback')).toBe(1);
      const warnings = running.log.lines.filter(
        (line) => line.level === 'warn' && /store cannot decide/.test(line.message),
      );
      expect(warnings).toHaveLength(1);

      // The database is back: the next decision it answers ends the outage.
      store.answer = (decide) => Promise.resolve().then(decide);
      const second = await TestClient.connect(`ws://127.0.0.1:${running.port}`, { perMessageDeflate: false });
      wsClients.push(second);
      second.sendRaw(JSON.stringify({ event: 'chat', data: 100, id: 100 }));
      await second.waitForEvent('chat_ack', 1, 10_000);
      await settle(() => storeEvents().length === 2, 20, 5000);
      expect(storeEvents().map((event) => (event as { state: string }).state)).toEqual(['down', 'up']);
      expect(await metricSum(running.registry, 'ws_rate_limit_store_fallback')).toBe(0);
    }, 30_000);

    it(`failMode closed, store ${name}: every message gets a STORE_UNAVAILABLE frame (no reply), not counted as a violation (no close); outage reported`, async () => {
      const store = newStore();
      store.answer = failure(store);
      const running = await start('ws', store, { failMode: 'closed' });
      const client = await floodWs(running, 8);
      await client.waitForEvent('rate_limit', 8, 10_000);
      await sleep(100);
      expect(client.socket.readyState).toBe(WebSocket.OPEN);
      expect(client.events('chat_ack')).toEqual([]);
      expect(running.handled.ids).toEqual([]);
      const refusals = client.events('rate_limit').map((frame) => frame.data);
      expect(refusals.map((data) => data.id)).toEqual(range(0, 8));
      for (const data of refusals) {
        expect(data.code).toBe('STORE_UNAVAILABLE');
        expect(wellFormedRefusal(data)).toBe(true);
      }
      expect(await metricSum(running.registry, 'ws_rate_limit_violations_total')).toBe(0);
      expect(running.events.filter((event) => event.kind === 'store').length).toBe(1);
      expect(await metricSum(running.registry, 'ws_rate_limit_store_errors_total')).toBe(8);
    }, 30_000);
  }

  it('failMode closed, socket.io: a rejecting store gets STORE_UNAVAILABLE events for each of 6 events, no acks, no disconnect', async () => {
    const store = newStore();
    store.answer = () => Promise.reject(new Error('db down'));
    const running = await start('socket.io', store, { failMode: 'closed' });
    const client = await floodIo(running, 6);
    await client.until(() => client.of('rate_limit').length === 6, 10_000, '6 rate_limit events');
    await sleep(100);
    expect(client.socket.connected).toBe(true);
    expect(client.of('chat_ack')).toEqual([]);
    expect(client.of('rate_limit').map((data) => (data as { code: string }).code)).toEqual(
      Array(6).fill('STORE_UNAVAILABLE'),
    );
    expect(running.handled.ids).toEqual([]);
  }, 30_000);

  it('failMode closed: an upgrade the store cannot decide is refused with HTTP 503 (README); failMode open admits it through the fallback', async () => {
    for (const failMode of ['closed', 'open'] as const) {
      const store = newStore();
      store.shapeConnections = true;
      store.answer = () => Promise.reject(new Error('db down'));
      const running = await start('ws', store, { failMode });
      const outcome = await new Promise<string>((resolve) => {
        const socket = new WebSocket(`ws://127.0.0.1:${running.port}`);
        socket.on('open', () => {
          socket.close();
          resolve('open');
        });
        socket.on('unexpected-response', (_req, res) => {
          resolve(`HTTP ${res.statusCode}`);
          res.resume();
          socket.terminate();
        });
        socket.on('error', () => resolve('error'));
      });
      expect([failMode, outcome]).toEqual([failMode, failMode === 'closed' ? 'HTTP 503' : 'open']);
      await running.close();
    }
  }, 30_000);
});

/** Answers that are no decision at all. */
const MALFORMED: Record<string, unknown> = {
  '{}': {},
  null: null,
  undefined: undefined,
  "{ allowed: 'yes' }": { allowed: 'yes' },
  '{ allowed: 1 }': { allowed: 1 },
  'a refusal with retryAfter -5': { allowed: false, tier: 'global', index: 0, retryAfter: -5, limit: 5, remaining: 0 },
  'a refusal with remaining NaN': {
    allowed: false,
    tier: 'global',
    index: 0,
    retryAfter: 100,
    limit: 5,
    remaining: NaN,
  },
  'a refusal with retryAfter NaN': {
    allowed: false,
    tier: 'global',
    index: 0,
    retryAfter: NaN,
    limit: 5,
    remaining: 0,
  },
};

describe('malformed decisions from a custom store are no admission and no crash', () => {
  for (const [name, value] of Object.entries(MALFORMED)) {
    for (const when of ['synchronously', 'as a promise'] as const) {
      it(`ws, failMode closed, store answers ${name} ${when}: not admitted; the client gets a well-formed rate_limit frame (treated as a store failure); the store error is counted (it was: admitted, a frame with holes, a violation counted, or Nest's generic error frame)`, async () => {
        const store = newStore();
        store.answer = () =>
          (when === 'synchronously' ? value : Promise.resolve(value)) as MaybePromise<RateLimitDecision>;
        const running = await start('ws', store, { failMode: 'closed' });
        const client = await TestClient.connect(`ws://127.0.0.1:${running.port}`, { perMessageDeflate: false });
        wsClients.push(client);
        client.sendRaw(JSON.stringify({ event: 'chat', data: 1, id: 1 }));
        // Some answer comes (a frame, or the close); then what it was.
        await settle(() => client.frames.length > 0 || client.socket.readyState !== WebSocket.OPEN, 150, 10_000);
        const outcome = {
          admitted: running.handled.ids.length > 0 || client.events('chat_ack').length > 0,
          frames: client.frames.map((frame) =>
            frame.event === 'rate_limit' && wellFormedRefusal(frame.data)
              ? { event: 'rate_limit', wellFormed: true }
              : frame,
          ),
          open: client.socket.readyState === WebSocket.OPEN,
          storeErrors: await metricSum(running.registry, 'ws_rate_limit_store_errors_total'),
        };
        expect(outcome).toEqual({
          admitted: false,
          frames: [{ event: 'rate_limit', wellFormed: true }],
          open: true,
          storeErrors: 1,
        });
      }, 20_000);
    }
  }

  it("socket.io, failMode closed, store answers { allowed: 'yes' }: the event is not admitted (it was admitted)", async () => {
    const store = newStore();
    store.answer = () => Promise.resolve({ allowed: 'yes' } as unknown as RateLimitDecision);
    const running = await start('socket.io', store, { failMode: 'closed' });
    const client = await floodIo(running, 1);
    await client.until(() => client.events.length > 0, 10_000, 'an answer');
    await sleep(100);
    expect(running.handled.ids).toEqual([]);
    expect(client.of('chat_ack')).toEqual([]);
  }, 20_000);
});

describe('a store whose methods are missing or of the wrong type: a clear start-up error', () => {
  const badStores: Record<string, () => unknown> = {
    'a subclass without consume': () => {
      abstract class NoConsume extends RateLimitStore {
        peek() {
          return [];
        }
        release() {}
        delete() {}
        async close() {}
      }
      return new (NoConsume as unknown as new () => RateLimitStore)();
    },
    'a subclass whose consume is a number': () => {
      const store = newStore();
      (store as unknown as { consume: unknown }).consume = 42;
      return store;
    },
    'a subclass without peek, release or delete': () => {
      abstract class OnlyConsume extends RateLimitStore {
        private readonly inner = new MemoryRateLimitStore();
        consume(plan: RateLimitPlan) {
          return this.inner.consume(plan);
        }
        async close() {}
      }
      return new (OnlyConsume as unknown as new () => RateLimitStore)();
    },
    'a plain object with the right methods (not a RateLimitStore)': () => {
      const inner = new MemoryRateLimitStore();
      return {
        consume: (plan: RateLimitPlan) => inner.consume(plan),
        peek: (plan: RateLimitPlan) => inner.peek(plan),
        release: () => undefined,
        delete: () => undefined,
        close: async () => undefined,
        key: (tracker: string, suffix: string) => `${tracker}|${suffix}`,
      };
    },
  };

  for (const [name, make] of Object.entries(badStores)) {
    it(`${name}: start-up fails with an error naming the store option and what is wrong${name.startsWith('a plain') ? '' : ' (it was: started, every call decided by the fail mode)'}`, async () => {
      let started: Running | undefined;
      let failure: unknown;
      try {
        started = await start('ws', make() as RateLimitStore);
      } catch (error) {
        failure = error;
      }
      // Started anyway: what a user would meet at the first message (recorded for the report).
      let firstMessage = 'not tried';
      if (started !== undefined) {
        const client = await TestClient.connect(`ws://127.0.0.1:${started.port}`).catch((error: Error) => error);
        if (client instanceof TestClient) {
          wsClients.push(client);
          client.sendRaw(JSON.stringify({ event: 'chat', data: 1, id: 1 }));
          await settle(() => client.frames.length > 0 || client.socket.readyState !== WebSocket.OPEN, 100, 5000).catch(
            () => undefined,
          );
          firstMessage = JSON.stringify(client.frames);
        } else firstMessage = `connect failed: ${client.message}`;
      }
      expect({ started: started !== undefined, firstMessage }).toEqual({ started: false, firstMessage: 'not tried' });
      expect(String((failure as Error).message)).toMatch(/store/);
      expect(String((failure as Error).message)).toMatch(/consume|peek|release|delete|RateLimitStore/);
    }, 20_000);
  }
});

describe('WsRateLimitService from code, on a custom store', () => {
  const request = { type: 'chat' };

  it('consume: sync, microtask, timer and out-of-order answers resolve to the memory store decisions, in call order', async () => {
    for (const [name, timing] of Object.entries(TIMINGS)) {
      const store = newStore();
      store.answer = timing(store);
      const running = await start('ws', store);
      const decisions = await Promise.all(range(0, 7).map(() => running.limiter.consume('user-1', request)));
      expect([name, decisions.map((decision) => decision.allowed)]).toEqual([
        name,
        [true, true, true, true, true, false, false],
      ]);
      await running.close();
    }
  }, 30_000);

  it('consume: a failing store (throw / reject) follows failMode: open decides with the fallback, closed refuses with storeUnavailable', async () => {
    for (const [name, failure] of Object.entries(FAILURES)) {
      for (const failMode of ['open', 'closed'] as const) {
        const store = newStore();
        store.answer = failure(store);
        const running = await start('ws', store, { failMode });
        const decision = await running.limiter.consume('user-1', request);
        expect([name, failMode, decision]).toEqual([
          name,
          failMode,
          failMode === 'open'
            ? expect.objectContaining({ allowed: true })
            : expect.objectContaining({ allowed: false, storeUnavailable: true }),
        ]);
        expect(await metricSum(running.registry, 'ws_rate_limit_store_errors_total')).toBe(1);
        await running.close();
      }
    }
  }, 30_000);

  for (const [name, value] of Object.entries(MALFORMED)) {
    it(`consume, store answers ${name}: the caller gets a fail-mode decision (closed: storeUnavailable) or a clear error, never the malformed value (it was handed the value)`, async () => {
      const store = newStore();
      store.answer = () => Promise.resolve(value as RateLimitDecision);
      const running = await start('ws', store, { failMode: 'closed' });
      let outcome: unknown;
      try {
        const decision = await running.limiter.consume('user-1', request);
        outcome = decision;
      } catch (error) {
        outcome = /store|decision/i.test((error as Error).message) ? 'clear error' : `unclear: ${String(error)}`;
      }
      expect([
        expect.objectContaining({ allowed: false, storeUnavailable: true, retryAfter: expect.any(Number) }),
        'clear error',
      ]).toContainEqual(outcome);
    }, 20_000);
  }

  it('peek / status: failMode open and a throwing peek give the fallback figures; closed rejects with the store error (README)', async () => {
    for (const failMode of ['open', 'closed'] as const) {
      const store = newStore();
      store.peekAnswer = () => {
        throw new Error('db down (peek)');
      };
      const running = await start('ws', store, { failMode });
      const status = running.limiter.status('user-1');
      const peek = running.limiter.peek('user-1', request);
      if (failMode === 'open') {
        const read = await status;
        expect(read.global).toEqual({ remaining: GLOBAL, capacity: GLOBAL, resetIn: 0 });
        expect((await peek).map((tier) => tier.tier)).toEqual(['global', 'type']);
      } else {
        await expect(status).rejects.toThrow('db down (peek)');
        await expect(peek).rejects.toThrow('db down (peek)');
      }
      await running.close();
    }
  }, 30_000);

  it('peek / status: answers a microtask and a timer later give the store figures after consumption', async () => {
    const store = newStore();
    store.peekAnswer = (peek) => store.after(3, peek);
    store.answer = (decide) => Promise.resolve().then(decide);
    const running = await start('ws', store);
    await running.limiter.consume('user-1', request);
    await running.limiter.consume('user-1', request);
    const status = await running.limiter.status('user-1');
    expect(status.global.remaining).toBe(GLOBAL - 2);
    expect(status.global.capacity).toBe(GLOBAL);
  }, 20_000);

  for (const [name, answer] of Object.entries({
    '[] (no tiers)': [] as TierStatus[],
    null: null,
    'tiers with NaN remaining': 'nan',
  })) {
    it(`status, store peek answers ${name}: a clear error naming the store (or the fail mode's figures), never a TypeError or NaN figures (it was one of those)`, async () => {
      const store = newStore();
      store.peekAnswer = (peek) =>
        Promise.resolve(
          answer === 'nan'
            ? peek().map((tier) => ({ ...tier, remaining: NaN }))
            : (answer as unknown as readonly TierStatus[]),
        );
      const running = await start('ws', store, { failMode: 'closed' });
      let outcome: unknown;
      try {
        const status = await running.limiter.status('user-1');
        outcome = Number.isFinite(status.global.remaining) ? 'figures' : `NaN figures: ${JSON.stringify(status)}`;
      } catch (error) {
        outcome = /store|peek/i.test((error as Error).message)
          ? 'clear error'
          : `unclear: ${(error as Error).constructor.name}: ${(error as Error).message}`;
      }
      expect(['clear error', 'figures']).toContain(outcome);
    }, 20_000);
  }

  it('reset: a delete that rejects rejects reset with the store error; one that answers late is awaited, and the budget is full again', async () => {
    const store = newStore();
    const running = await start('ws', store);
    for (let i = 0; i < GLOBAL; i++) await running.limiter.consume('user-1', request);
    expect((await running.limiter.consume('user-1', request)).allowed).toBe(false);
    store.deleteAnswer = () => Promise.reject(new Error('db down (delete)'));
    await expect(running.limiter.reset('user-1')).rejects.toThrow('db down (delete)');
    store.deleteAnswer = (remove) => store.after(20, remove);
    await running.limiter.reset('user-1');
    expect((await running.limiter.consume('user-1', request)).allowed).toBe(true);
  }, 20_000);
});

describe('no crash, nothing left running', () => {
  for (const value of [null, undefined]) {
    it(`service.consume on a store resolving ${String(value)} (metrics on, the default): no unhandled rejection (it would end a Node process; it was one)`, async () => {
      const store = newStore();
      store.answer = () => Promise.resolve(value as unknown as RateLimitDecision);
      const running = await start('ws', store, { failMode: 'open' });
      await running.limiter.consume('user-1', { type: 'chat' }).catch(() => undefined);
      await sleep(50);
      expect(unhandled.map(String)).toEqual([]);
    }, 20_000);
  }

  it('maxConnectionsPerIp with a store whose release rejects: the slot failure is logged, no unhandled rejection, later connections admitted', async () => {
    const store = newStore();
    store.releaseAnswer = () => Promise.reject(new Error('db down (release)'));
    const running = await start('ws', store, { maxConnectionsPerIp: 3 });
    for (let i = 0; i < 2; i++) {
      const client = await TestClient.connect(`ws://127.0.0.1:${running.port}`);
      await client.close();
    }
    await settle(() => running.log.lines.some((line) => /open-connection slot failed/.test(line.message)), 50, 5000);
    expect(running.log.lines.filter((line) => /db down \(release\)/.test(line.message)).length).toBeGreaterThan(0);
  }, 20_000);

  it('app.close() while decisions wait on a slow store; they settle after the close: no crash, no unhandled rejection', async () => {
    for (const transport of ['ws', 'socket.io'] as const) {
      for (const settleAs of ['resolve', 'reject'] as const) {
        const store = newStore();
        store.answer = (decide) =>
          store.after(400, () => {
            if (settleAs === 'reject') throw new Error('late failure');
            return decide();
          });
        const running = await start(transport, store);
        if (transport === 'ws') await floodWs(running, 5);
        else await floodIo(running, 5);
        await settle(() => store.calls > 0, 0, 5000);
        await Promise.all(wsClients.splice(0).map((client) => client.close()));
        await Promise.all(ioClients.splice(0).map((client) => client.closeAndSettle()));
        await running.close();
        await sleep(600);
      }
    }
  }, 30_000);

  it('after app.close() no timers, servers or sockets of the library remain (both adapters, a store answering with timers)', async () => {
    const kinds = ['Timeout', 'TCPServerWrap', 'TCPSocketWrap', 'Immediate'];
    const count = () => {
      const info = process.getActiveResourcesInfo();
      return Object.fromEntries(kinds.map((kind) => [kind, info.filter((entry) => entry === kind).length]));
    };
    await sleep(50);
    const baseline = count();
    for (const transport of ['ws', 'socket.io'] as const) {
      const store = newStore();
      store.answer = (decide, call) => {
        const decision = decide();
        return call % 2 === 0 ? store.after(5, () => decision) : decision;
      };
      const running = await start(transport, store, { failMode: 'open', maxConnectionsPerIp: 5 });
      if (transport === 'ws') {
        const client = await floodWs(running, 12);
        await client.waitClose(10_000);
      } else {
        const client = await floodIo(running, 12);
        await client.disconnected(10_000);
      }
      await running.limiter.status('user-1');
      await Promise.all(wsClients.splice(0).map((client) => client.close()));
      await Promise.all(ioClients.splice(0).map((client) => client.closeAndSettle()));
      await running.close();
    }
    const deadline = Date.now() + 5000;
    let now = count();
    while (kinds.some((kind) => now[kind]! > baseline[kind]!) && Date.now() < deadline) {
      await sleep(50);
      now = count();
    }
    for (const kind of kinds) expect([kind, now[kind]! <= baseline[kind]!]).toEqual([kind, true]);
  }, 30_000);
});
