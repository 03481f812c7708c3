/**
 * Shadow mode (`WS_RATE_LIMIT_SHADOW=true` / `shadow: true`) across the features, on both
 * transports, on the memory store, from an adversarial review. README, "Shadow mode": every
 * decision is made, counted, streamed and logged, but nothing is rejected or closed
 * (`result="shadow_rejected"`, events with `enforced: false`).
 *
 * The first test failed on the code reviewed (31df3ae): a `STORE_UNAVAILABLE` refusal (fail
 * mode `closed`), which enforcement never counts, was counted as a violation in shadow mode
 * and reported as would-be 1008 closes (fixed: `Enforcer.record` skips it, as `reject`
 * does). The others pin edges that held: refusals at the upgrade,
 * operator blocks, frames no handler takes, a refusal thrown by the application, the heartbeat.
 */
import { afterAll, afterEach, describe, expect, it, jest } from '@jest/globals';
import { Logger, type INestApplication, type WebSocketAdapter } from '@nestjs/common';
import {
  ConnectedSocket,
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  type OnGatewayConnection,
} from '@nestjs/websockets';
import { Registry } from 'prom-client';
import type { Socket } from 'socket.io';
import WebSocket from 'ws';
import {
  ENV_VARIABLES,
  MemoryRateLimitStore,
  Throttle,
  type RateLimitDecision,
  type RateLimitPlan,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitException,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, withEnv, type RunningApp } from '../../support/app.js';
import { connectIo, waitFor, type IoTestClient } from '../../support/io-client.js';
import { metricSum } from '../../support/metrics.js';
import { sleep, TestClient } from '../../support/ws-client.js';

/** Chat (3 burst, slow refill), an expensive search, and a handler that spends a budget from code. */
@WebSocketGateway()
@WsRateLimit()
class ShadowGateway implements OnGatewayConnection {
  static unknownHeard = 0;
  constructor(private readonly limiter: WsRateLimitService) {}

  handleConnection(client: object): void {
    // socket.io: the application's own listener for an event no handler takes.
    const socket = client as Partial<Socket>;
    if (typeof socket.emit === 'function' && typeof socket.on === 'function' && 'nsp' in socket) {
      socket.on('custom', () => ShadowGateway.unknownHeard++);
    }
  }

  @Throttle({ type: 'chat', capacity: 3, refillRate: 0.01 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'search', capacity: 50, refillRate: 50, expensive: true })
  @SubscribeMessage('search')
  search(@MessageBody() data: unknown) {
    return { event: 'results', data };
  }

  /**
   * Spends the `report` budget from code and refuses as the README maps throttler's
   * `ThrottlerException`: with `WsRateLimitException`, answered by `WsRateLimitFilter`.
   */
  @SubscribeMessage('export')
  async export(@ConnectedSocket() client: object, @MessageBody() data: unknown) {
    const decision = await this.limiter.consume(client, { type: 'report' });
    if (!decision.allowed) throw new WsRateLimitException(decision, 'report', 'code');
    return { event: 'exported', data };
  }
}

/** The memory store, made to fail on demand (a store that cannot decide: the fail mode applies). */
class FailingStore extends MemoryRateLimitStore {
  failing = false;
  override consume(plan: RateLimitPlan): RateLimitDecision {
    if (this.failing) throw new Error('store unreachable');
    return super.consume(plan);
  }
}

const NO_ENV = Object.fromEntries(ENV_VARIABLES.map((variable) => [variable.name, undefined]));

/** Every line the module logs while a test runs. */
const lines: Array<{ level: string; context: string | undefined; text: string }> = [];
const spies = (['log', 'warn', 'debug', 'error'] as const).map((level) =>
  jest.spyOn(Logger.prototype, level).mockImplementation(function (this: Logger, message: unknown) {
    lines.push({ level, context: (this as unknown as { context?: string }).context, text: String(message) });
  }),
);
const ours = (level: string): string[] =>
  lines.filter((line) => line.context === 'WsRateLimit' && line.level === level).map((line) => line.text);

let running: RunningApp | undefined;
const wsClients: TestClient[] = [];
const ioClients: IoTestClient[] = [];

afterEach(async () => {
  await Promise.all(wsClients.splice(0).map((client) => client.close()));
  for (const client of ioClients.splice(0)) client.close();
  await sleep(30);
  await running?.close();
  running = undefined;
  lines.length = 0;
  ShadowGateway.unknownHeard = 0;
});

afterAll(() => {
  for (const spy of spies) spy.mockRestore();
});

type Transport = 'ws' | 'socket.io';

/** Starts the gateway on a transport; `module` replaces `forRoot({ useEnv: false, ...options })`. */
async function start(
  transport: Transport,
  options: WsRateLimitModuleOptions,
  module?: ReturnType<typeof WsRateLimitModule.forRoot>,
): Promise<{ running: RunningApp; limiter: WsRateLimitService; events: RateLimitEvent[] }> {
  const adapter = (app: INestApplication): WebSocketAdapter =>
    transport === 'ws' ? new WsRateLimitAdapter(app) : new WsRateLimitIoAdapter(app);
  running = await startApp(
    {
      imports: [module ?? WsRateLimitModule.forRoot({ useEnv: false, pingIntervalMs: 0, ...options })],
      providers: [ShadowGateway],
    },
    adapter,
  );
  const limiter = running.app.get(WsRateLimitService);
  const events: RateLimitEvent[] = [];
  const subscription = limiter.events$.subscribe((event) => events.push(event));
  const close = running.close;
  running.close = async () => {
    subscription.unsubscribe();
    await close();
  };
  return { running, limiter, events };
}

async function wsConnect(options: WebSocket.ClientOptions = {}): Promise<TestClient> {
  const client = await TestClient.connect(running!.url, options);
  wsClients.push(client);
  return client;
}

async function ioConnect(): Promise<IoTestClient> {
  const client = await connectIo(`http://127.0.0.1:${running!.port}`, 'websocket');
  ioClients.push(client);
  return client;
}

/**
 * A client on either transport: `send` an event, count the events of a name it received,
 * whether it is still connected.
 */
interface AnyClient {
  send(event: string, data?: unknown): void;
  count(event: string): number;
  open(): boolean;
}

async function anyClient(transport: Transport): Promise<AnyClient> {
  if (transport === 'ws') {
    const client = await wsConnect();
    return {
      send: (event, data = {}) => client.send(event, data),
      count: (event) => client.events(event).length,
      open: () => client.socket.readyState === WebSocket.OPEN,
    };
  }
  const client = await ioConnect();
  return {
    send: (event, data = {}) => client.socket.emit(event, data),
    count: (event) => client.of(event).length,
    open: () => client.socket.connected,
  };
}

describe.each<Transport>(['ws', 'socket.io'])('shadow mode and the fail mode on %s', (transport) => {
  it('STORE_UNAVAILABLE refusals (fail mode closed) are not counted as violations nor reported as would-be 1008 closes, as enforcement never makes them', async () => {
    const options = { failMode: 'closed' as const, tracker: 'ip' as const, violations: { max: 2, windowMs: 60_000 } };
    // Enforced, the same traffic: every chat refused with STORE_UNAVAILABLE, none counted,
    // the socket stays open ("not the client's fault and is not counted").
    const enforcedStore = new FailingStore();
    const enforcedRegistry = new Registry();
    const enforced = await start(transport, { ...options, store: enforcedStore, metricsRegistry: enforcedRegistry });
    const real = await anyClient(transport);
    enforcedStore.failing = true;
    for (let i = 0; i < 5; i++) real.send('chat', i);
    await waitFor(() => real.count('rate_limit') === 5 || !real.open(), 10_000, 'five refusals');
    await sleep(100);
    expect({ open: real.open(), refused: real.count('rate_limit') }).toEqual({ open: true, refused: 5 });
    expect(enforced.events.filter((event) => event.kind === 'violation' || event.kind === 'disconnect')).toEqual([]);
    expect(await metricSum(enforcedRegistry, 'ws_rate_limit_violations_total')).toBe(0);
    await running!.close();
    running = undefined;

    // Shadow mode: "What enforcement would do at the violation threshold is reported as it
    // would happen": no violation, no would-be close.
    const store = new FailingStore();
    const registry = new Registry();
    const { events } = await start(transport, { ...options, store, metricsRegistry: registry, shadow: true });
    const client = await anyClient(transport);
    store.failing = true;
    for (let i = 0; i < 5; i++) client.send('chat', i);
    await waitFor(() => client.count('ack') === 5, 10_000, 'five acks');
    expect(client.count('rate_limit')).toBe(0);
    const refusals = events.filter((event) => event.kind === 'decision' && !event.allowed);
    expect(refusals).toHaveLength(5);
    expect(
      refusals.every((event) => event.kind === 'decision' && event.code === 'STORE_UNAVAILABLE' && !event.enforced),
    ).toBe(true);
    expect(
      await metricSum(registry, 'ws_rate_limit_decisions_total', {
        result: 'shadow_rejected',
        code: 'STORE_UNAVAILABLE',
      }),
    ).toBe(5);
    expect({
      violationEvents: events.filter((event) => event.kind === 'violation').length,
      wouldBeCloses: events.filter((event) => event.kind === 'disconnect').length,
      violations: await metricSum(registry, 'ws_rate_limit_violations_total'),
      shadowCloses: await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'shadow_violations' }),
    }).toEqual({ violationEvents: 0, wouldBeCloses: 0, violations: 0, shadowCloses: 0 });
  });
});

describe.each<Transport>(['ws', 'socket.io'])('shadow mode on %s', (transport) => {
  it('the upgrade: over the connection rate, and blocked, every handshake completes; each would-be refusal counted (shadow_refused) and streamed (enforced: false)', async () => {
    const registry = new Registry();
    const { events, limiter } = await start(transport, {
      shadow: true,
      metricsRegistry: registry,
      connection: { capacity: 1, refillRate: 0.01 },
    });
    const first = await anyClient(transport);
    const second = await anyClient(transport);
    await limiter.block('127.0.0.1', 60_000);
    const blocked = await anyClient(transport);
    for (const client of [first, second, blocked]) client.send('chat', 1);
    await waitFor(() => [first, second, blocked].every((client) => client.count('ack') === 1), 10_000, 'acks');
    expect([first, second, blocked].map((client) => client.open())).toEqual([true, true, true]);
    const connections = events.filter((event) => event.kind === 'connection');
    expect(connections).toEqual([
      { kind: 'connection', accepted: true, ip: '127.0.0.1', enforced: true },
      { kind: 'connection', accepted: true, ip: '127.0.0.1', reason: 'rate', enforced: false },
      { kind: 'connection', accepted: true, ip: '127.0.0.1', reason: 'blocked', enforced: false },
    ]);
    const counted = async (result: string, reason: string) =>
      metricSum(registry, 'ws_rate_limit_connections_total', { result, reason });
    expect({
      accepted: await counted('accepted', ''),
      rate: await counted('shadow_refused', 'rate'),
      blocked: await counted('shadow_refused', 'blocked'),
      refused: await metricSum(registry, 'ws_rate_limit_connections_total', { result: 'refused' }),
    }).toEqual({ accepted: 1, rate: 1, blocked: 1, refused: 0 });
    // While blocked, open sockets' messages reach their handler (BLOCKED only recorded) ...
    expect(
      await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'shadow_rejected', code: 'BLOCKED' }),
    ).toBe(3);
    expect([first, second, blocked].every((client) => client.count('rate_limit') === 0)).toBe(true);
    // ... and once unblocked they are decided as before.
    await limiter.unblock('127.0.0.1');
    first.send('chat', 2);
    await waitFor(() => first.count('ack') === 2, 10_000, 'ack after unblock');
    expect(
      await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'shadow_rejected', code: 'BLOCKED' }),
    ).toBe(3);
  });

  it('frames no handler takes, over the global budget: each answered as within it (ws: error frame; socket.io: the app listener), never rate_limit', async () => {
    const registry = new Registry();
    await start(transport, { shadow: true, metricsRegistry: registry, global: { capacity: 2, refillRate: 0.01 } });
    const client = await anyClient(transport);
    for (let i = 0; i < 5; i++) client.send('custom', i);
    if (transport === 'ws') await waitFor(() => client.count('error') === 5, 10_000, 'five error frames');
    else await waitFor(() => ShadowGateway.unknownHeard === 5, 10_000, 'the app listener five times');
    expect(
      await metricSum(registry, 'ws_rate_limit_decisions_total', {
        result: 'shadow_rejected',
        type: 'unknown',
        code: 'GLOBAL_LIMIT',
      }),
    ).toBe(3);
    // Over the global budget, a routed message still reaches its handler.
    client.send('chat', 'after');
    await waitFor(() => client.count('ack') === 1, 10_000, 'the chat reply');
    expect({ refusals: client.count('rate_limit'), open: client.open() }).toEqual({ refusals: 0, open: true });
  });

  it('a handler that refuses with WsRateLimitException itself (a budget spent from code): its frames are sent, the threshold only reported, nothing closed', async () => {
    const registry = new Registry();
    const { events } = await start(transport, {
      shadow: true,
      metricsRegistry: registry,
      types: { report: { capacity: 1, refillRate: 0.01 } },
      violations: { max: 3, windowMs: 60_000 },
    });
    const client = await anyClient(transport);
    for (let i = 0; i < 6; i++) client.send('export', { i });
    await waitFor(() => client.count('exported') + client.count('rate_limit') === 6 || !client.open(), 10_000);
    await sleep(200);
    expect({ open: client.open(), exported: client.count('exported'), refused: client.count('rate_limit') }).toEqual({
      open: true,
      exported: 1,
      refused: 5,
    });
    expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'violations' })).toBe(0);
    expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'shadow_violations' })).toBe(1);
    expect(events.filter((event) => event.kind === 'disconnect').map((event) => event.enforced)).toEqual([false]);
  });
});

describe('shadow mode on ws: the heartbeat', () => {
  it('still ends a peer that does not answer its ping (ping_timeout, enforced: true); a live peer stays', async () => {
    const registry = new Registry();
    const { events } = await start('ws', {
      shadow: true,
      metricsRegistry: registry,
      pingIntervalMs: 100,
      pongTimeoutMs: 300,
    });
    const live = await wsConnect();
    const dead = await wsConnect({ autoPong: false } as WebSocket.ClientOptions);
    const closed = await dead.waitClose(10_000);
    expect(closed.code).toBe(1006);
    expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'ping_timeout' })).toBe(1);
    expect(events.filter((event) => event.kind === 'disconnect')).toEqual([
      expect.objectContaining({ kind: 'disconnect', closeCode: 1001, reason: 'Ping timeout', enforced: true }),
    ]);
    live.send('chat', 1);
    await live.waitForEvent('ack');
    expect(live.socket.readyState).toBe(WebSocket.OPEN);
  });
});

describe('shadow mode from WS_RATE_LIMIT_SHADOW', () => {
  it.each<Transport>(['ws', 'socket.io'])(
    '%s: forRoot() with the variable alone is shadow mode (start-up line, nothing refused); shadow: false in code wins over it',
    async (transport) => {
      await withEnv({ ...NO_ENV, WS_RATE_LIMIT_SHADOW: 'true', WS_RATE_LIMIT_PING_INTERVAL_MS: '0' }, async () => {
        await start(transport, {}, WsRateLimitModule.forRoot());
      });
      expect(ours('log')).toEqual([
        expect.stringMatching(/^Limits in force: SHADOW MODE, nothing is rejected or closed; /),
      ]);
      const client = await anyClient(transport);
      for (let i = 0; i < 6; i++) client.send('chat', i);
      await waitFor(() => client.count('ack') === 6, 10_000, 'six acks');
      expect(client.count('rate_limit')).toBe(0);
      await running!.close();
      running = undefined;
      lines.length = 0;

      await withEnv({ ...NO_ENV, WS_RATE_LIMIT_SHADOW: 'true', WS_RATE_LIMIT_PING_INTERVAL_MS: '0' }, async () => {
        await start(transport, {}, WsRateLimitModule.forRoot({ shadow: false }));
      });
      expect(ours('log')).toEqual([expect.not.stringMatching(/SHADOW MODE/)]);
      const enforced = await anyClient(transport);
      for (let i = 0; i < 6; i++) enforced.send('chat', i);
      await waitFor(() => enforced.count('ack') + enforced.count('rate_limit') === 6, 10_000, 'six answers');
      expect({ acks: enforced.count('ack'), refusals: enforced.count('rate_limit') }).toEqual({ acks: 3, refusals: 3 });
    },
  );
});
