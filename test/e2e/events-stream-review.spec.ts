/**
 * Review of `WsRateLimitService.events$` (the RxJS stream of decisions, violations,
 * degradations, disconnects, connection decisions and store outages) and of the module's
 * logs, on the memory store with real `ws` and `socket.io-client` clients: each event once
 * per happening with the fields the README and `event.interface.ts` document and the values
 * the client was told; subscribers that throw or are slow; late subscription (a hot
 * stream); completion at app.close() and nothing left running; two apps in one process;
 * no buffering of a flood of refusals; "once" warnings and bounded log lines under floods.
 *
 * One case failed on the reviewed code (43eb929), and is fixed: a custom message parser
 * (`adapter.setMessageParser`) that throws on client input wrote an error line per frame, a
 * log flood a client could cause; the adapter now logs the first throw as an error, later
 * ones at debug level.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import type { INestApplication, LoggerService, ModuleMetadata } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Test } from '@nestjs/testing';
import type { AddressInfo } from 'node:net';
import { config as rxjsConfig } from 'rxjs';
import WebSocket from 'ws';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { MemoryRateLimitStore } from '../../lib/store.js';
import type { RateLimitDecision, RateLimitPlan } from '../../lib/interfaces/plan.interface.js';
import { IoTestClient } from '../support/io-client.js';
import { settle, sleep, TestClient, type Frame } from '../support/ws-client.js';

@WebSocketGateway()
@WsRateLimit()
class EventsGateway {
  @Throttle({ type: 'chat', capacity: 3, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'bulk', capacity: 100_000, refillRate: 100_000 })
  @SubscribeMessage('bulk')
  bulk(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'search', capacity: 1000, refillRate: 1000, expensive: true })
  @SubscribeMessage('search')
  search(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** A logger that keeps every line, debug included. */
class Captured implements LoggerService {
  readonly lines: Array<{ level: string; context: string; text: string }> = [];
  private push(level: string, message: unknown, rest: unknown[]) {
    const text = message instanceof Error ? `${message.name}: ${message.message}` : String(message);
    const context = typeof rest[rest.length - 1] === 'string' ? (rest[rest.length - 1] as string) : '';
    this.lines.push({ level, context, text });
  }
  log(message: unknown, ...rest: unknown[]) {
    this.push('log', message, rest);
  }
  warn(message: unknown, ...rest: unknown[]) {
    this.push('warn', message, rest);
  }
  error(message: unknown, ...rest: unknown[]) {
    this.push('error', message, rest);
  }
  debug(message: unknown, ...rest: unknown[]) {
    this.push('debug', message, rest);
  }
  verbose(message: unknown, ...rest: unknown[]) {
    this.push('verbose', message, rest);
  }
}

interface Running {
  app: INestApplication;
  port: number;
  url: string;
  limiter: WsRateLimitService;
  close(): Promise<void>;
}

/** A memory store that can be made to fail (an outage of a store given in code). */
class FlakyMemoryStore extends MemoryRateLimitStore {
  failing = false;
  override consume(plan: RateLimitPlan): RateLimitDecision {
    if (this.failing) throw new Error('backend unreachable');
    return super.consume(plan);
  }
}

const count = <T>(items: readonly T[], test: (item: T) => boolean): number => items.filter(test).length;

async function waitFor(check: () => boolean, timeoutMs = 15_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** A plain upgrade attempt: resolves with the HTTP status, or the close a 101 was followed by. */
function attempt(port: number): Promise<{ status: number; close?: { code: number; reason: string } }> {
  return new Promise((resolve) => {
    const socket = new WebSocket(`ws://127.0.0.1:${port}`);
    let status = 0;
    socket.on('error', () => undefined);
    socket.once('unexpected-response', (_request, response) => {
      resolve({ status: response.statusCode ?? 0 });
      response.resume();
      socket.terminate();
    });
    let timer: NodeJS.Timeout | undefined;
    socket.once('open', () => {
      status = 101;
      // An accepted upgrade stays open: closed by the test after a while.
      timer = setTimeout(() => {
        resolve({ status });
        socket.close();
      }, 1000);
    });
    socket.once('close', (code, reason) => {
      clearTimeout(timer);
      if (status === 101) resolve({ status, close: { code, reason: reason.toString() } });
    });
  });
}

describe('events$ and logs (review)', () => {
  const apps: Running[] = [];
  const clients: TestClient[] = [];
  const ios: IoTestClient[] = [];

  const start = async (
    options: WsRateLimitModuleOptions,
    more: { logger?: LoggerService | false; io?: boolean; parser?: (data: unknown) => unknown } = {},
  ): Promise<Running> => {
    const metadata: ModuleMetadata = {
      imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false, ...options })],
      providers: [EventsGateway],
    };
    const moduleRef = await Test.createTestingModule(metadata).compile();
    const app = moduleRef.createNestApplication({ logger: more.logger ?? false });
    if (more.io) {
      app.useWebSocketAdapter(new WsRateLimitIoAdapter(app));
    } else {
      const adapter = new WsRateLimitAdapter(app);
      if (more.parser) adapter.setMessageParser(more.parser as never);
      app.useWebSocketAdapter(adapter);
    }
    await app.listen(0, '127.0.0.1');
    const port = (app.getHttpServer().address() as AddressInfo).port;
    const running: Running = {
      app,
      port,
      url: `ws://127.0.0.1:${port}`,
      limiter: app.get(WsRateLimitService),
      close: async () => {
        const at = apps.indexOf(running);
        if (at >= 0) apps.splice(at, 1);
        await app.close();
      },
    };
    apps.push(running);
    return running;
  };
  const connect = async (running: Running): Promise<TestClient> => {
    const client = await TestClient.connect(running.url);
    clients.push(client);
    return client;
  };
  const record = (running: Running) => {
    const events: RateLimitEvent[] = [];
    const subscription = running.limiter.events$.subscribe((event) => events.push(event));
    return { events, subscription };
  };

  afterEach(async () => {
    for (const client of ios.splice(0)) client.close();
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (const running of [...apps]) await running.close();
  });

  // --- what is emitted, and with which values ------------------------------------------------

  it('ws: each refusal (TYPE_LIMIT, EXPENSIVE_LIMIT, GLOBAL_LIMIT) is one decision and one violation whose fields equal the frame; the 1008 close is one disconnect equal to the close', async () => {
    const running = await start({
      global: { capacity: 10, refillRate: 0.001 },
      expensive: { max: 2, windowMs: 60_000 },
      violations: { max: 5, windowMs: 60_000 },
    });
    const { events, subscription } = record(running);
    const client = await connect(running);
    const sent: Array<[string, number]> = [];
    const send = (event: string) => {
      const id = sent.length + 1;
      sent.push([event, id]);
      client.socket.send(JSON.stringify({ event, data: { id }, id }));
    };
    // chat: 3 allowed, 1 TYPE_LIMIT; search: 2 allowed, 1 EXPENSIVE_LIMIT; global (10): 5 spent,
    // bulk: 5 allowed, then GLOBAL_LIMIT x3 (the third is the 5th violation: close).
    for (let i = 0; i < 4; i++) send('chat');
    for (let i = 0; i < 3; i++) send('search');
    for (let i = 0; i < 8; i++) send('bulk');
    const closed = await client.waitClose();
    await settle(() => running.limiter.stats().connections === 0);
    subscription.unsubscribe();

    const frames = client.events('rate_limit');
    expect(frames.map((frame) => frame.data.code)).toEqual([
      'TYPE_LIMIT',
      'EXPENSIVE_LIMIT',
      'GLOBAL_LIMIT',
      'GLOBAL_LIMIT',
      'GLOBAL_LIMIT',
    ]);
    expect(client.events('ack')).toHaveLength(10);
    expect(closed).toEqual({ code: 1008, reason: 'Rate limit violations' });

    const decisions = events.filter((event) => event.kind === 'decision');
    const refusals = decisions.filter((event) => !event.allowed);
    const violations = events.filter((event) => event.kind === 'violation');
    const disconnects = events.filter((event) => event.kind === 'disconnect');
    const connections = events.filter((event) => event.kind === 'connection');
    expect(decisions).toHaveLength(15);
    expect(count(decisions, (event) => event.allowed)).toBe(10);
    // Allowed decisions carry no refusal fields.
    for (const event of decisions.filter((e) => e.allowed)) {
      expect(event).not.toHaveProperty('code');
      expect(event).not.toHaveProperty('tier');
      expect(event.enforced).toBe(true);
    }
    const tierOf = { TYPE_LIMIT: 'type', EXPENSIVE_LIMIT: 'expensive', GLOBAL_LIMIT: 'global' } as const;
    expect(refusals).toHaveLength(5);
    expect(violations).toHaveLength(5);
    const tracker = refusals[0]!.tracker;
    frames.forEach((frame: Frame, i) => {
      const refusal = refusals[i]!;
      const violation = violations[i]!;
      expect(refusal).toMatchObject({
        kind: 'decision',
        allowed: false,
        enforced: true,
        type: frame.data.messageType,
        code: frame.data.code,
        tier: tierOf[frame.data.code as keyof typeof tierOf],
        retryAfter: frame.data.retryAfter,
        tracker,
      });
      expect(violation).toEqual({
        kind: 'violation',
        tracker,
        type: frame.data.messageType,
        code: frame.data.code,
        warningCount: frame.data.warningCount,
        enforced: true,
      });
      expect(frame.data.warningCount).toBe(i + 1);
    });
    expect(disconnects).toEqual([
      { kind: 'disconnect', tracker, closeCode: closed.code, reason: closed.reason, enforced: true },
    ]);
    expect(connections).toEqual([{ kind: 'connection', accepted: true, ip: '127.0.0.1', enforced: true }]);
    // The last violation comes before the disconnect.
    expect(events.indexOf(violations[4]!)).toBeLessThan(events.indexOf(disconnects[0]!));
  });

  it("socket.io: a refused event's decision and violation equal the rate_limit event; the disconnect equals rate_limit_disconnect", async () => {
    const running = await start(
      { tracker: 'connection', violations: { max: 2, windowMs: 60_000 }, global: { capacity: 1000, refillRate: 1000 } },
      { io: true },
    );
    const { events, subscription } = record(running);
    const client = new IoTestClient(`http://127.0.0.1:${running.port}`, 'websocket');
    ios.push(client);
    await client.connected();
    for (let i = 0; i < 5; i++) client.socket.emit('chat', { id: i });
    await client.disconnected();
    await settle(() => running.limiter.stats().connections === 0);
    subscription.unsubscribe();
    const frames = client.of('rate_limit') as Array<Record<string, unknown>>;
    const bye = client.of('rate_limit_disconnect');
    expect(frames).toHaveLength(2);
    expect(bye).toEqual([{ code: 1008, reason: 'Rate limit violations' }]);
    const violations = events.filter((event) => event.kind === 'violation');
    const refusals = events.filter((event) => event.kind === 'decision' && !event.allowed);
    expect(violations.map((event) => event.kind === 'violation' && event.warningCount)).toEqual(
      frames.map((frame) => frame.warningCount),
    );
    expect(refusals.map((event) => event.kind === 'decision' && event.retryAfter)).toEqual(
      frames.map((frame) => frame.retryAfter),
    );
    expect(events.filter((event) => event.kind === 'disconnect')).toEqual([
      expect.objectContaining({ closeCode: 1008, reason: 'Rate limit violations', enforced: true }),
    ]);
    expect(count(events, (event) => event.kind === 'connection' && event.accepted)).toBe(1);
  });

  it("connectionRefusal 'close': each refused upgrade is one connection event whose reason matches the close the client got, and no disconnect event", async () => {
    const running = await start({
      connectionRefusal: 'close',
      connection: { capacity: 2, refillRate: 0.001 },
      maxConnectionsPerIp: 1,
    });
    const { events, subscription } = record(running);
    const first = await connect(running); // holds the one open slot
    const second = await attempt(running.port); // concurrency
    await first.close();
    await settle(() => running.limiter.stats().connections === 0);
    const third = await attempt(running.port); // the 2nd token: accepted, then closed by us
    const fourth = await attempt(running.port); // rate
    await running.limiter.block('127.0.0.1', 60_000);
    const fifth = await attempt(running.port); // blocked
    await sleep(200);
    subscription.unsubscribe();
    expect(second.close).toEqual({ code: 1008, reason: 'Too many connections' });
    expect(third.status).toBe(101);
    expect(fourth.close).toEqual({ code: 1008, reason: 'Connection rate limit exceeded' });
    expect(fifth.close).toEqual({ code: 1008, reason: 'Blocked' });
    const connections = events.filter((event) => event.kind === 'connection');
    expect(connections.map((event) => event.kind === 'connection' && [event.accepted, event.reason ?? null])).toEqual([
      [true, null],
      [false, 'concurrency'],
      [true, null],
      [false, 'rate'],
      [false, 'blocked'],
    ]);
    for (const event of connections) expect(event).toMatchObject({ ip: '127.0.0.1', enforced: true });
    expect(count(events, (event) => event.kind === 'disconnect')).toBe(0);
    await settle(() => running.limiter.stats().connections === 0);
  });

  it('degradation: one degraded event at the threshold, violations start over in the stream as in the frames, then one disconnect at the second threshold', async () => {
    const running = await start({ degradeCooldownMs: 60_000, violations: { max: 2, windowMs: 60_000 } });
    const { events, subscription } = record(running);
    const client = await connect(running);
    for (let i = 0; i < 7; i++) client.send('chat', i);
    const closed = await client.waitClose();
    await settle(() => running.limiter.stats().connections === 0);
    subscription.unsubscribe();
    const frames = client.events('rate_limit');
    expect(frames.map((frame) => [frame.data.code, frame.data.warningCount])).toEqual([
      ['TYPE_LIMIT', 1],
      ['DEGRADED', 2],
      ['DEGRADED', 1],
      ['DEGRADED', 2],
    ]);
    const violations = events.filter((event) => event.kind === 'violation');
    expect(violations.map((event) => event.kind === 'violation' && event.warningCount)).toEqual(
      frames.map((frame) => frame.data.warningCount),
    );
    // The one that starts the restriction is streamed as the tier's (README, Graceful degradation).
    expect(violations.map((event) => event.kind === 'violation' && event.code)).toEqual([
      'TYPE_LIMIT',
      'TYPE_LIMIT',
      'DEGRADED',
      'DEGRADED',
    ]);
    expect(events.filter((event) => event.kind === 'degraded')).toEqual([
      {
        kind: 'degraded',
        tracker: violations[0]!.kind === 'violation' && violations[0]!.tracker,
        cooldownMs: 60_000,
        enforced: true,
      },
    ]);
    const refusals = events.filter((event) => event.kind === 'decision' && !event.allowed);
    // DEGRADED refusals: no tier, the frame's retryAfter.
    expect(refusals.slice(2)).toEqual([
      expect.objectContaining({ code: 'DEGRADED', retryAfter: frames[2]!.data.retryAfter }),
      expect.objectContaining({ code: 'DEGRADED', retryAfter: frames[3]!.data.retryAfter }),
    ]);
    for (const refusal of refusals.slice(2)) expect(refusal).not.toHaveProperty('tier');
    expect(events.filter((event) => event.kind === 'disconnect')).toEqual([
      expect.objectContaining({ closeCode: closed.code, reason: closed.reason, enforced: true }),
    ]);
    // The degraded event comes after the violation that caused it, the disconnect last of all.
    const degradedAt = events.findIndex((event) => event.kind === 'degraded');
    expect(degradedAt).toBeGreaterThan(events.indexOf(violations[1]!));
    expect(degradedAt).toBeLessThan(events.indexOf(violations[2]!));
  });

  // --- subscribers ----------------------------------------------------------------------------

  it('a slow subscriber (synchronous busy work per event) loses no frame, changes no decision and stops no other subscriber', async () => {
    const running = await start({ violations: { max: 1_000_000, windowMs: 60_000 } });
    const slow = running.limiter.events$.subscribe(() => {
      const until = performance.now() + 2;
      while (performance.now() < until) {
        // busy
      }
    });
    const { events, subscription } = record(running);
    const client = await connect(running);
    client.inOneWrite(() => {
      for (let i = 0; i < 150; i++) client.send('chat', i);
    });
    await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 150, 60_000);
    slow.unsubscribe();
    subscription.unsubscribe();
    // chat: 3 burst, refilling 1 per 1000 s: the time the subscriber takes refills nothing.
    expect(client.events('ack').map((frame) => frame.data)).toEqual([0, 1, 2]);
    expect(client.events('rate_limit')).toHaveLength(147);
    expect(client.events('rate_limit').map((frame) => frame.data.warningCount)).toEqual(
      Array.from({ length: 147 }, (_v, i) => i + 1),
    );
    expect(count(events, (event) => event.kind === 'decision')).toBe(150);
    expect(count(events, (event) => event.kind === 'violation')).toBe(147);
    expect(client.socket.readyState).toBe(WebSocket.OPEN);
  }, 90_000);

  it('socket.io: a subscriber that throws on every event (connection ones too) changes no answer; the others keep receiving', async () => {
    const faults: unknown[] = [];
    const saved = rxjsConfig.onUnhandledError;
    rxjsConfig.onUnhandledError = (error) => void faults.push(error);
    try {
      const running = await start(
        {
          tracker: 'connection',
          violations: { max: 100, windowMs: 60_000 },
          global: { capacity: 1000, refillRate: 1000 },
        },
        { io: true },
      );
      const bad = running.limiter.events$.subscribe(() => {
        throw new Error('sink down');
      });
      const { events, subscription } = record(running);
      const client = new IoTestClient(`http://127.0.0.1:${running.port}`, 'websocket');
      ios.push(client);
      await client.connected();
      for (let i = 0; i < 6; i++) client.socket.emit('chat', i);
      await client.until(() => client.of('ack').length + client.of('rate_limit').length === 6);
      bad.unsubscribe();
      subscription.unsubscribe();
      expect(client.of('ack')).toEqual([0, 1, 2]);
      expect(client.of('rate_limit')).toHaveLength(3);
      expect(client.socket.connected).toBe(true);
      // connection + 6 decisions + 3 violations
      expect(events).toHaveLength(10);
      await waitFor(() => faults.length >= 10, 5000, 'the errors reported');
    } finally {
      await sleep(50);
      rxjsConfig.onUnhandledError = saved;
    }
  });

  it('a subscriber that calls consume() from inside its violation handler neither loses the frame nor doubles an event', async () => {
    const running = await start({ violations: { max: 100, windowMs: 60_000 } });
    const { events, subscription } = record(running);
    const reacted: string[] = [];
    const reactor = running.limiter.events$.subscribe((event) => {
      if (event.kind === 'violation' && event.warningCount === 1) {
        reacted.push(event.tracker);
        void running.limiter.consume(event.tracker, { type: 'audit' });
      }
    });
    const client = await connect(running);
    for (let i = 0; i < 5; i++) client.send('chat', i);
    await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 5);
    await sleep(100);
    reactor.unsubscribe();
    subscription.unsubscribe();
    expect(reacted).toHaveLength(1);
    expect(client.events('rate_limit').map((frame) => frame.data.warningCount)).toEqual([1, 2]);
    expect(count(events, (event) => event.kind === 'violation')).toBe(2);
    // 5 chat decisions and the one consume() from the subscriber.
    expect(count(events, (event) => event.kind === 'decision')).toBe(6);
    expect(count(events, (event) => event.kind === 'decision' && event.type === 'audit')).toBe(1);
  });

  it('a hot stream: a late subscriber gets only what happens after it subscribed; unsubscribing everyone and subscribing again works', async () => {
    const running = await start({ violations: { max: 100, windowMs: 60_000 } });
    const client = await connect(running);
    for (let i = 0; i < 4; i++) client.send('chat', i);
    await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 4);
    const first = record(running);
    client.send('chat', 'late');
    await client.waitForEvent('rate_limit', 2);
    first.subscription.unsubscribe();
    client.send('chat', 'unseen');
    await client.waitForEvent('rate_limit', 3);
    const second = record(running);
    client.send('chat', 'again');
    await client.waitForEvent('rate_limit', 4);
    second.subscription.unsubscribe();
    expect(first.events).toEqual([
      expect.objectContaining({ kind: 'decision', allowed: false, code: 'TYPE_LIMIT' }),
      expect.objectContaining({ kind: 'violation', warningCount: 2 }),
    ]);
    expect(second.events).toEqual([
      expect.objectContaining({ kind: 'decision', allowed: false, code: 'TYPE_LIMIT' }),
      // The window counted the violation nobody watched.
      expect.objectContaining({ kind: 'violation', warningCount: 4 }),
    ]);
  });

  // --- apps and lifetime -------------------------------------------------------------------

  it("two apps in one process: each stream carries its own app's events only", async () => {
    const a = await start({ violations: { max: 100, windowMs: 60_000 } });
    const b = await start({ violations: { max: 100, windowMs: 60_000 } }, { io: true });
    const seenA = record(a);
    const seenB = record(b);
    const wsClient = await connect(a);
    for (let i = 0; i < 4; i++) wsClient.send('chat', i);
    await wsClient.waitForEvent('rate_limit');
    const ioClient = new IoTestClient(`http://127.0.0.1:${b.port}`, 'websocket');
    ios.push(ioClient);
    await ioClient.connected();
    for (let i = 0; i < 5; i++) ioClient.socket.emit('chat', i);
    await ioClient.until(() => ioClient.of('rate_limit').length === 2);
    await sleep(100);
    seenA.subscription.unsubscribe();
    seenB.subscription.unsubscribe();
    expect(count(seenA.events, (event) => event.kind === 'decision')).toBe(4);
    expect(count(seenA.events, (event) => event.kind === 'violation')).toBe(1);
    expect(count(seenA.events, (event) => event.kind === 'connection')).toBe(1);
    expect(count(seenB.events, (event) => event.kind === 'decision')).toBe(5);
    expect(count(seenB.events, (event) => event.kind === 'violation')).toBe(2);
    expect(count(seenB.events, (event) => event.kind === 'connection')).toBe(1);
    // Closing one app completes its stream only.
    let completedA = false;
    let completedB = false;
    a.limiter.events$.subscribe({ complete: () => (completedA = true) });
    b.limiter.events$.subscribe({ complete: () => (completedB = true) });
    await wsClient.close();
    await a.close();
    expect([completedA, completedB]).toEqual([true, false]);
    ioClient.socket.emit('bulk', 'still');
    await ioClient.until(() => ioClient.of('ack').includes('still'));
  });

  it('app.close() with subscribers still subscribed, a client connected and violations counted leaves nothing running', async () => {
    const baseline = new Map<string, number>();
    for (const type of process.getActiveResourcesInfo()) baseline.set(type, (baseline.get(type) ?? 0) + 1);
    const running = await start({ violations: { max: 100, windowMs: 60_000 }, pingIntervalMs: 500 });
    running.limiter.events$.subscribe(() => undefined);
    running.limiter.events$.subscribe({ next: () => undefined, complete: () => undefined });
    const client = await connect(running);
    for (let i = 0; i < 6; i++) client.send('chat', i);
    await client.waitForEvent('rate_limit', 3);
    await running.close();
    await client.waitClose();
    let left: Record<string, number>;
    const deadline = Date.now() + 8000;
    for (;;) {
      left = {};
      const now = new Map<string, number>();
      for (const type of process.getActiveResourcesInfo()) now.set(type, (now.get(type) ?? 0) + 1);
      for (const [type, n] of now) if (n > (baseline.get(type) ?? 0)) left[type] = n - (baseline.get(type) ?? 0);
      if (Object.keys(left).length === 0 || Date.now() > deadline) break;
      await sleep(50);
    }
    expect(left).toEqual({});
  });

  // --- floods: memory and logs ------------------------------------------------------------

  it('10,000 refusals with nobody subscribed (and after a subscriber left) keep no growing memory; the violation debug log stays bounded', async () => {
    const logger = new Captured();
    const running = await start({ violations: { max: 1_000_000, windowMs: 60_000 } }, { logger });
    // A subscriber that came and went.
    running.limiter.events$.subscribe(() => undefined).unsubscribe();
    const client = await connect(running);
    const gc = (globalThis as { gc?: () => void }).gc;
    const heap = () => {
      gc?.();
      gc?.();
      return process.memoryUsage().heapUsed;
    };
    // Warm up (a first batch), then measure over the flood.
    const batch = async (n: number, from: number) => {
      client.inOneWrite(() => {
        for (let i = 0; i < n; i++) client.send('chat', from + i);
      });
      await client.waitFor((frame) => frame.event === 'rate_limit', from + n - 3, 60_000);
    };
    const began = performance.now();
    await batch(1000, 0);
    const before = heap();
    for (let sent = 1000; sent < 11_000; sent += 1000) await batch(1000, sent);
    client.frames.length = 0; // the test's own record of frames
    const after = heap();
    expect(running.limiter.stats().connections).toBe(1);
    // The violation log keeps 8 bytes per counted violation (10,000: 80 kB); a stream buffering
    // 10,000 events would hold several MB.
    expect(after - before).toBeLessThan(4 * 1024 * 1024);
    const debug = logger.lines.filter((line) => line.level === 'debug' && /Violation/.test(line.text));
    // One line per 10 s at most (IntervalLog), over however long the flood took.
    expect(debug.length).toBeLessThanOrEqual(1 + Math.ceil((performance.now() - began) / 10_000));
    // Nothing else a line per message.
    expect(logger.lines.length).toBeLessThan(20);
  }, 120_000);

  it('a flood of frames a custom message parser rejects writes one error line, then debug (it wrote an error line per frame: a client-caused log flood)', async () => {
    const logger = new Captured();
    // A custom parser (e.g. a schema check) that throws on what it cannot read: README, "a
    // custom parser that throws is also logged".
    const parser = (data: unknown) => {
      const parsed = JSON.parse(String(data)) as { event?: unknown };
      if (typeof parsed.event !== 'string') throw new Error('not a message');
      return parsed;
    };
    const running = await start(
      { violations: { max: 1_000_000, windowMs: 60_000 }, global: { capacity: 100_000, refillRate: 100_000 } },
      { logger, parser },
    );
    const client = await connect(running);
    client.inOneWrite(() => {
      for (let i = 0; i < 500; i++) client.sendRaw(`garbage ${i}`);
    });
    await client.waitFor((frame) => frame.event === 'error', 500, 30_000);
    expect(client.events('error').every((frame) => frame.data.code === 'INVALID_MESSAGE')).toBe(true);
    const errors = logger.lines.filter((line) => line.level === 'error');
    // The app bug is worth saying, but a client sending garbage must not write a line per
    // frame (the README bounds every line a client can cause: once, or one per 10 s).
    expect(errors.length).toBeGreaterThan(0);
    expect(errors.length).toBeLessThanOrEqual(3);
  }, 60_000);

  it('a store given in code that fails and recovers: one store down event (with the error) and one up, warned once per outage however many messages fail', async () => {
    const logger = new Captured();
    const store = new FlakyMemoryStore();
    const running = await start({ store, tracker: 'ip', violations: { max: 1_000_000, windowMs: 60_000 } }, { logger });
    const { events, subscription } = record(running);
    const client = await connect(running);
    client.send('bulk', 'before');
    await client.waitForEvent('ack');
    for (let outage = 0; outage < 2; outage++) {
      store.failing = true;
      for (let i = 0; i < 50; i++) client.send('bulk', `down-${outage}-${i}`);
      await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 1 + (outage + 1) * 51 - 1);
      store.failing = false;
      client.send('bulk', `up-${outage}`);
      await client.waitFor((frame) => frame.event === 'ack' && frame.data === `up-${outage}`);
    }
    subscription.unsubscribe();
    const storeEvents = events.filter((event) => event.kind === 'store');
    expect(storeEvents).toEqual([
      { kind: 'store', state: 'down', error: 'backend unreachable' },
      { kind: 'store', state: 'up' },
      { kind: 'store', state: 'down', error: 'backend unreachable' },
      { kind: 'store', state: 'up' },
    ]);
    // Fail mode open: every message decided by the local fallback, each streamed once.
    expect(count(events, (event) => event.kind === 'decision')).toBe(1 + 2 * 51);
    const warns = logger.lines.filter((line) => line.level === 'warn' && /cannot decide/.test(line.text));
    expect(warns).toHaveLength(2);
    const ups = logger.lines.filter((line) => line.level === 'log' && /answers again/.test(line.text));
    expect(ups).toHaveLength(2);
    await client.close();
    await running.close();
    await store.close();
  });

  it('planResolver problems caused per message are said once (a throw, a promise) or per name up to 16, never a line per message', async () => {
    const logger = new Captured();
    let calls = 0;
    const running = await start(
      {
        global: { capacity: 100_000, refillRate: 100_000 },
        plans: { premium: { global: { capacity: 200_000, refillRate: 200_000 } } },
        planResolver: () => {
          calls++;
          if (calls % 3 === 0) throw new Error('no user');
          if (calls % 3 === 1) return Promise.resolve('premium') as never;
          return `plan-${calls}`; // a new unknown name each time
        },
        violations: { max: 1_000_000, windowMs: 60_000 },
      },
      { logger },
    );
    const client = await connect(running);
    for (let i = 0; i < 150; i++) client.send('bulk', i);
    await client.waitForEvent('ack', 150);
    const lines = logger.lines.filter((line) => line.level !== 'log' && /planResolver/.test(line.text));
    // One for the throw, one for the promise, 16 names and the line that says no more are.
    expect(lines.length).toBeLessThanOrEqual(19);
    expect(calls).toBeGreaterThanOrEqual(150);
  });

  it('the forwarding-header warning is said once over many connections carrying the header', async () => {
    const logger = new Captured();
    const running = await start({ connection: { capacity: 50, refillRate: 50 } }, { logger });
    for (let i = 0; i < 8; i++) {
      const client = await TestClient.connect(running.url, { headers: { 'x-forwarded-for': `203.0.113.${i}` } });
      clients.push(client);
    }
    const warns = logger.lines.filter((line) => line.level === 'warn' && /forward/i.test(line.text));
    expect(warns).toHaveLength(1);
  });
});
