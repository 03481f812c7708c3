/**
 * Observability and modes at their edges, from an adversarial review: metrics, events$,
 * shadow mode, graceful degradation and the violations -> 1008 path. The first eight failed
 * before their fixes (gauges of a second app on one registry, heartbeat closes uncounted,
 * BLOCKED and DEGRADED refusals missing from decisions, a denied tracker's messages counted
 * as GLOBAL_LIMIT violations in shadow mode, a socket met after its close counted forever,
 * shadow mode reporting a close where enforcement degrades, messages processed after a
 * degraded connection's closing decision); the others pin behaviour that held.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import {
  ConnectedSocket,
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  type OnGatewayDisconnect,
} from '@nestjs/websockets';
import { WsAdapter } from '@nestjs/platform-ws';
import { Registry } from 'prom-client';
import WebSocket from 'ws';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { settle, TestClient } from '../../support/ws-client.js';

/** Chat (5 burst, slow refill) and an essential receipt. */
@WebSocketGateway()
@WsRateLimit()
class ReviewGateway {
  @Throttle({ type: 'chat', capacity: 5, refillRate: 0.1 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'receipt', capacity: 50, refillRate: 50, essential: true })
  @SubscribeMessage('receipt')
  receipt(@MessageBody() data: unknown) {
    return { event: 'receipt', data };
  }
}

/** A gateway that reads a client's budget when it leaves (a common audit pattern). */
@WebSocketGateway()
@WsRateLimit()
class AuditGateway implements OnGatewayDisconnect {
  static statuses = 0;
  static failures = 0;
  constructor(private readonly limiter: WsRateLimitService) {}

  @Throttle({ type: 'chat', capacity: 5, refillRate: 0.1 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown, @ConnectedSocket() _client: unknown) {
    return { event: 'ack', data };
  }

  async handleDisconnect(client: object): Promise<void> {
    try {
      await this.limiter.status(client);
      AuditGateway.statuses++;
    } catch {
      AuditGateway.failures++;
    }
  }
}

const answered = (frame: { event?: string }) => frame.event === 'ack' || frame.event === 'rate_limit';

type Sample = { value: number; labels: Record<string, string | number> };

async function samples(registry: Registry, name: string): Promise<Sample[]> {
  const metric = (await registry.getMetricsAsJSON()).find((entry) => entry.name === name);
  return (metric?.values ?? []) as Sample[];
}

/** The sum of the samples whose labels match. */
async function sum(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  return (await samples(registry, name))
    .filter((value) => Object.entries(labels).every(([key, want]) => String(value.labels[key]) === want))
    .reduce((total, value) => total + value.value, 0);
}

describe('telemetry edges', () => {
  const apps: RunningApp[] = [];
  const clients: TestClient[] = [];
  const raw: WebSocket[] = [];

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
  const connect = async (running: RunningApp, headers: Record<string, string> = {}) => {
    const client = await TestClient.connect(running.url, { headers });
    clients.push(client);
    return client;
  };

  afterEach(async () => {
    for (const socket of raw.splice(0)) socket.terminate();
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (const running of apps.splice(0)) await running.close();
  });

  it('open_connections counts the connections of the app now running on a shared registry', async () => {
    const registry = new Registry();
    // A first app (e.g. an earlier test, a restarted module, a second Nest app) used the registry.
    const first = await start({ metricsRegistry: registry, metricsPrefix: 'two_' });
    const early = await connect(first.running);
    await early.close();
    await first.running.close();
    apps.splice(apps.indexOf(first.running), 1);

    const second = await start({ metricsRegistry: registry, metricsPrefix: 'two_' });
    const a = await connect(second.running);
    const b = await connect(second.running);
    a.send('chat', 1);
    b.send('chat', 1);
    await a.waitForEvent('ack');
    await b.waitForEvent('ack');
    expect(second.limiter.stats().connections).toBe(2);
    // "Connections the limiter tracks now": the running app has 2.
    expect(await sum(registry, 'two_open_connections')).toBe(2);
  });

  it('a connection the heartbeat terminates is counted in disconnects_total and streamed', async () => {
    const registry = new Registry();
    const { running, limiter } = await start({ metricsRegistry: registry, pingIntervalMs: 200, pongTimeoutMs: 300 });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    // A client that never answers pings.
    const silent = new WebSocket(running.url, { autoPong: false });
    raw.push(silent);
    silent.on('error', () => undefined);
    const closed = new Promise<number>((resolve) => silent.once('close', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      silent.once('open', () => resolve());
      silent.once('error', reject);
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<number>((resolve) => (timer = setTimeout(() => resolve(-1), 15_000)));
    const code = await Promise.race([closed, timeout]);
    clearTimeout(timer);
    expect(code).not.toBe(-1); // it was cut off by the heartbeat
    await settle(() => limiter.stats().connections === 0);
    subscription.unsubscribe();
    // "Connections the limiter closed, and why": the liveness tier closed this one.
    expect(await sum(registry, 'ws_rate_limit_disconnects_total')).toBe(1);
    expect(events.filter((event) => event.kind === 'disconnect')).toHaveLength(1);
  });

  it('a BLOCKED refusal is a rejected decision: counted in decisions_total and streamed', async () => {
    const registry = new Registry();
    const { running, limiter } = await start({ metricsRegistry: registry });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const client = await connect(running);
    client.send('chat', 1);
    await client.waitForEvent('ack');
    await limiter.block('127.0.0.1', 60_000);
    client.send('chat', 2);
    const [frame] = await client.waitForEvent('rate_limit');
    expect(frame!.data.code).toBe('BLOCKED');
    subscription.unsubscribe();
    // The violation is counted with code BLOCKED...
    expect(await sum(registry, 'ws_rate_limit_violations_total', { code: 'BLOCKED' })).toBe(1);
    // ...but the decision that refused the message must be counted and streamed too.
    expect(await sum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' })).toBe(1);
    expect(events.filter((event) => event.kind === 'decision' && !event.allowed)).toHaveLength(1);
  });

  it('DEGRADED refusals appear in decisions_total: rejected decisions equal rate_limit frames', async () => {
    const registry = new Registry();
    const { running } = await start({
      metricsRegistry: registry,
      degradeCooldownMs: 60_000,
      violations: { max: 2, windowMs: 60_000 },
    });
    const client = await connect(running);
    for (let i = 0; i < 7; i++) client.send('chat', i);
    await client.waitFor(answered, 7);
    client.send('chat', 'while degraded');
    await client.waitForEvent('rate_limit', 3);
    expect(client.events('rate_limit').map((frame) => frame.data.code)).toEqual(['TYPE_LIMIT', 'DEGRADED', 'DEGRADED']);
    expect(await sum(registry, 'ws_rate_limit_violations_total')).toBe(3);
    // "Who is being limited? Rejections per second by message type and code": 3 refusals.
    expect(await sum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' })).toBe(3);
  });

  it('shadow mode: a denied tracker is not reported as GLOBAL_LIMIT violations and repeat-offender closes', async () => {
    const registry = new Registry();
    const { running, limiter } = await start({
      metricsRegistry: registry,
      shadow: true,
      tracker: (_client, { request }) => request?.headers['x-user'] as string | undefined,
      denyList: 'mallory',
      violations: { max: 2, windowMs: 60_000 },
    });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const mallory = await connect(running, { 'x-user': 'mallory' });
    // Well within every tier: 4 chat of a 5 burst.
    for (let i = 0; i < 4; i++) mallory.send('chat', i);
    await mallory.waitForEvent('ack', 4);
    subscription.unsubscribe();
    expect(mallory.socket.readyState).toBe(WebSocket.OPEN);
    // What would have happened: one close for the deny list.
    expect(await sum(registry, 'ws_rate_limit_disconnects_total', { reason: 'shadow_denied' })).toBe(1);
    // No tier refused anything: no GLOBAL_LIMIT violation, no repeat-offender close.
    expect(await sum(registry, 'ws_rate_limit_violations_total', { code: 'GLOBAL_LIMIT' })).toBe(0);
    expect(await sum(registry, 'ws_rate_limit_disconnects_total', { reason: 'shadow_violations' })).toBe(0);
    expect(events.filter((event) => event.kind === 'disconnect')).toHaveLength(1);
  });

  it('stock WsAdapter: reading status() in handleDisconnect does not leave the connection counted forever', async () => {
    const registry = new Registry();
    AuditGateway.statuses = 0;
    AuditGateway.failures = 0;
    const running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, metricsRegistry: registry })],
        providers: [AuditGateway],
      },
      (app: INestApplication) => new WsAdapter(app),
    );
    apps.push(running);
    const limiter = running.app.get(WsRateLimitService);
    // Three clients that connect and leave without a message.
    for (let i = 0; i < 3; i++) {
      const client = await connect(running);
      await client.close();
    }
    await settle(() => AuditGateway.statuses + AuditGateway.failures === 3);
    expect(limiter.stats().connections).toBe(0);
    expect(await sum(registry, 'ws_rate_limit_open_connections')).toBe(0);
  });

  it('shadow mode with degradeCooldownMs reports the degradation enforcement would make, not a 1008 close', async () => {
    const registry = new Registry();
    const options = { degradeCooldownMs: 60_000, violations: { max: 2, windowMs: 60_000 } };
    // Enforced, the same traffic degrades the connection and closes nothing.
    const enforced = await start({ ...options, metrics: false });
    const real = await connect(enforced.running);
    for (let i = 0; i < 7; i++) real.send('chat', i);
    await real.waitFor(answered, 7);
    expect(real.events('rate_limit').map((frame) => frame.data.code)).toEqual(['TYPE_LIMIT', 'DEGRADED']);
    expect(real.socket.readyState).toBe(WebSocket.OPEN);

    const { running, limiter } = await start({ ...options, shadow: true, metricsRegistry: registry });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const client = await connect(running);
    for (let i = 0; i < 7; i++) client.send('chat', i);
    await client.waitForEvent('ack', 7);
    subscription.unsubscribe();
    // Shadow mode must report what enforcement would have done: no close.
    expect(events.filter((event) => event.kind === 'disconnect')).toHaveLength(0);
    expect(await sum(registry, 'ws_rate_limit_disconnects_total')).toBe(0);
  });

  it('while degraded, messages after the threshold-reaching one in the same read are not processed', async () => {
    const { running } = await start({
      metrics: false,
      degradeCooldownMs: 60_000,
      violations: { max: 2, windowMs: 60_000 },
    });
    const client = await connect(running);
    for (let i = 0; i < 7; i++) client.send('chat', i);
    await client.waitFor(answered, 7);
    expect(client.events('rate_limit').map((frame) => frame.data.code)).toEqual(['TYPE_LIMIT', 'DEGRADED']);
    // Degraded. Two non-essential messages reach the threshold again (close 1008); three
    // essential receipts follow in the same TCP write, after the close is decided.
    client.inOneWrite(() => {
      client.send('chat', 'a');
      client.send('chat', 'b');
      for (let i = 0; i < 3; i++) client.send('receipt', i);
    });
    expect((await client.waitClose()).code).toBe(1008);
    expect(client.events('rate_limit').map((frame) => frame.data.code)).toEqual([
      'TYPE_LIMIT',
      'DEGRADED',
      'DEGRADED',
      'DEGRADED',
    ]);
    // As without degradation: "messages that arrive after the decision are not processed".
    expect(client.events('receipt')).toHaveLength(0);
  });

  it('without degradation, messages after the threshold-reaching one in the same read are not processed', async () => {
    const { running } = await start({ metrics: false, violations: { max: 2, windowMs: 60_000 } });
    const client = await connect(running);
    for (let i = 0; i < 6; i++) client.send('chat', i);
    await client.waitFor(answered, 6);
    client.inOneWrite(() => {
      client.send('chat', 'a');
      for (let i = 0; i < 3; i++) client.send('receipt', i);
    });
    expect((await client.waitClose()).code).toBe(1008);
    expect(client.events('rate_limit')).toHaveLength(2);
    expect(client.events('receipt')).toHaveLength(0);
  });

  it('unknown event names from the client never become label values', async () => {
    const registry = new Registry();
    const { running } = await start({ metricsRegistry: registry, violations: { max: 1000, windowMs: 60_000 } });
    const client = await connect(running);
    for (let i = 0; i < 30; i++) client.send(`evil-${i}-${'x'.repeat(20)}`, i);
    client.sendRaw('not json');
    await client.waitFor((frame) => frame.event === 'error', 31);
    const types = new Set(
      [
        ...(await samples(registry, 'ws_rate_limit_decisions_total')),
        ...(await samples(registry, 'ws_rate_limit_violations_total')),
      ].map((value) => String(value.labels.type)),
    );
    expect([...types].sort()).toEqual(['invalid', 'unknown']);
    expect(await sum(registry, 'ws_rate_limit_decisions_total', { result: 'allowed' })).toBe(31);
  });

  it('violations -> 1008: one disconnect counted and streamed, each refusal counted once', async () => {
    const registry = new Registry();
    const { running, limiter } = await start({ metricsRegistry: registry, violations: { max: 3, windowMs: 60_000 } });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const client = await connect(running);
    for (let i = 0; i < 8; i++) client.send('chat', i);
    expect((await client.waitClose()).code).toBe(1008);
    await settle(() => limiter.stats().connections === 0);
    subscription.unsubscribe();
    expect(client.events('ack')).toHaveLength(5);
    expect(client.events('rate_limit')).toHaveLength(3);
    expect(await sum(registry, 'ws_rate_limit_decisions_total', { result: 'allowed' })).toBe(5);
    expect(await sum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' })).toBe(3);
    expect(await sum(registry, 'ws_rate_limit_violations_total')).toBe(3);
    expect(await sum(registry, 'ws_rate_limit_disconnects_total', { reason: 'violations' })).toBe(1);
    expect(events.filter((event) => event.kind === 'disconnect')).toHaveLength(1);
    expect(events.filter((event) => event.kind === 'decision')).toHaveLength(8);
    expect(await sum(registry, 'ws_rate_limit_open_connections')).toBe(0);
  });

  it('open_connections goes back to 0 after terminate, close and server shutdown', async () => {
    const registry = new Registry();
    const { running, limiter } = await start({ metricsRegistry: registry });
    const a = await connect(running);
    const b = await connect(running);
    const c = await connect(running);
    expect(await sum(registry, 'ws_rate_limit_open_connections')).toBe(3);
    a.socket.terminate();
    await b.close();
    await settle(() => limiter.stats().connections === 1);
    expect(await sum(registry, 'ws_rate_limit_open_connections')).toBe(1);
    await running.close();
    apps.splice(apps.indexOf(running), 1);
    await c.waitClose();
    await settle(() => limiter.stats().connections === 0);
    expect(await sum(registry, 'ws_rate_limit_open_connections')).toBe(0);
  });

  it('shadow mode sends no rate_limit frame and closes nothing, counts shadow_rejected once each, and reports the degradation it did not make', async () => {
    const registry = new Registry();
    const { running, limiter } = await start({
      metricsRegistry: registry,
      shadow: true,
      degradeCooldownMs: 60_000,
      violations: { max: 2, windowMs: 60_000 },
    });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const client = await connect(running);
    for (let i = 0; i < 10; i++) client.send('chat', i);
    for (let i = 0; i < 5; i++) client.send(`nope${i}`, i);
    await client.waitForEvent('ack', 10);
    await client.waitForEvent('error', 5);
    subscription.unsubscribe();
    expect(client.events('rate_limit')).toHaveLength(0);
    expect(client.socket.readyState).toBe(WebSocket.OPEN);
    expect(await sum(registry, 'ws_rate_limit_decisions_total', { result: 'shadow_rejected' })).toBe(5);
    expect(await sum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' })).toBe(0);
    // The degradation enforcement would make is reported, not made.
    expect(events.filter((event) => event.kind === 'degraded')).toEqual([
      expect.objectContaining({ kind: 'degraded', cooldownMs: 60_000, enforced: false }),
    ]);
  });

  it('events$ completes on app.close() and nothing is emitted after', async () => {
    const { running, limiter } = await start({ metrics: false });
    let completed = false;
    const after: RateLimitEvent[] = [];
    const client = await connect(running);
    limiter.events$.subscribe({ complete: () => (completed = true) });
    await client.close();
    await running.close();
    apps.splice(apps.indexOf(running), 1);
    expect(completed).toBe(true);
    limiter.events$.subscribe((event) => after.push(event));
    await limiter.consume('someone', { type: 'chat' });
    expect(after).toHaveLength(0);
  });
});
