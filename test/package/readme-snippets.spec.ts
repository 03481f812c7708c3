/**
 * Adversarial review of README.md's code blocks: each ```ts block, written as a user copies
 * it (imports from the public entry points only: the root, /client, /store, /socket.io),
 * must compile against the library's types (`npx tsc -p tsconfig.json --noEmit`), and the
 * claims around it that are cheap to check run below. Snippet bodies are functions the test
 * does not call: their compilation is the check. One claim failed when written (class
 * `@Throttle` figures voided by `@SkipThrottle()` on every handler got no start-up warning).
 */
import { afterEach, describe, expect, it, jest } from '@jest/globals';
import {
  Catch,
  Injectable,
  Logger,
  Module,
  type ArgumentsHost,
  type ExceptionFilter,
  type INestApplication,
} from '@nestjs/common';
import { ConfigModule, ConfigService } from '@nestjs/config';
import { APP_GUARD, NestFactory } from '@nestjs/core';
// Type only: @nestjs/throttler is CommonJS requiring ES-module @nestjs/common, which Jest's ESM mode cannot load.
import type { ThrottlerModule as ThrottlerModuleClass } from '@nestjs/throttler';
import { Test } from '@nestjs/testing';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { Redis } from 'ioredis';
import { createServer, type Server as NetServer, type Socket as NetSocket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Registry } from 'prom-client';
import { io } from 'socket.io-client';
import '../support/io-settle.js';
import { WebSocket } from 'ws';
import {
  ConnectionState,
  SkipThrottle,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitConfigError,
  WsRateLimitException,
  WsRateLimitFilter,
  WsRateLimitModule,
  WsRateLimitService,
  WsSkipThrottle,
  WsThrottle,
  WsThrottleGuard,
  UNROUTED_HANDLERS,
  type RateLimitEvent,
} from '../../lib/index.js';
import {
  RateLimitedClient,
  isSocketIoAck,
  socketIoFactory,
  type RateLimitedClientOptions,
} from '../../lib/client/index.js';
import {
  MemoryRateLimitStore,
  RedisRateLimitStore,
  concurrencySpec,
  createPlan,
  createRedisStore,
  tokenBucketSpec,
  windowSpec,
  type RateLimitDecision,
  type TierSpec,
} from '../../lib/store.js';
import { RATE_LIMIT_DISCONNECT_EVENT, WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { startApp, type RunningApp } from '../support/app.js';
import { connectionsEndedByServer, upgrade } from '../support/http.js';
import { settle, TestClient } from '../support/ws-client.js';
import { metricSum } from '../support/metrics.js';

// --- Compile-only snippets ------------------------------------------------------------------
// Each block below is a README block (line numbers of README.md at review time), with the
// imports and declarations its prose assumes.

// README 62-74: the quick start gateway and module.
@WebSocketGateway()
@WsRateLimit() // the guard and the filter: rate_limit frames, repeat offenders closed
export class QuickStartGateway {
  @Throttle({ capacity: 30, refillRate: 15 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

@Module({ imports: [WsRateLimitModule.forRoot()], providers: [QuickStartGateway] })
export class QuickStartModule {}

// README, Configuration: figures from the app's own configuration through forRootAsync.
@Module({
  imports: [
    ConfigModule.forRoot(),
    WsRateLimitModule.forRootAsync({
      imports: [ConfigModule],
      inject: [ConfigService],
      useFactory: (config: ConfigService) => ({
        global: { capacity: Number(config.get('CHAT_BURST') ?? 60), refillRate: 20 },
      }),
    }),
  ],
})
export class ForRootAsyncModule {}

// README 80-84: main.ts.
export async function quickStartMain(): Promise<void> {
  const app = await NestFactory.create(QuickStartModule);
  app.useWebSocketAdapter(new WsRateLimitAdapter(app));
  await app.listen(3000);
}

// README 256-262: socket.io main.ts.
export async function socketIoMain(): Promise<void> {
  const app = await NestFactory.create(QuickStartModule);
  app.useWebSocketAdapter(new WsRateLimitIoAdapter(app));
  await app.listen(3000);
}
// README 275-280: the disconnect event's name, exported from /socket.io.
export const disconnectEventName: string = RATE_LIMIT_DISCONNECT_EVENT;

// README 433-466: @Throttle's fields (decorators section), limits, skipIf, essential, cost.
@WebSocketGateway({ path: '/decorators' })
@WsRateLimit()
@Throttle({ capacity: 10, refillRate: 5 })
export class DecoratorsGateway {
  @Throttle({
    type: 'search',
    expensive: true,
    cost: 2,
    essential: false,
    skipIf: (context) => (context.switchToWs().getData() as { internal?: boolean }).internal === true,
  })
  @SubscribeMessage('search')
  search() {}

  @Throttle({ limits: { short: { capacity: 10, refillRate: 10 }, long: { capacity: 100, refillRate: 100 / 60 } } })
  @SubscribeMessage('chat')
  chat() {}

  @SkipThrottle()
  @SubscribeMessage('health')
  health() {}

  @SkipThrottle(false)
  @SubscribeMessage('limited')
  limited() {}
}

// README 468-484 (and the migration table, 1328): WsRateLimitService's operations, as the prose names them.
export async function serviceApi(limiter: WsRateLimitService, socket: object): Promise<void> {
  const decision: RateLimitDecision = await limiter.consume(socket, { type: 'chat', expensive: true, cost: 2 });
  if (!decision.allowed) console.log(decision.retryAfter, decision.tier, decision.limit, decision.remaining);
  await limiter.consume('user-42', { type: 'chat' });
  const tiers = await limiter.peek('203.0.113.9', { type: 'chat' });
  console.log(tiers.map((tier) => [tier.tier, tier.remaining, tier.resetIn]));
  const status = await limiter.status(socket, ['search']);
  console.log(status.global.remaining, status.types['chat']?.capacity, status.expensive.resetIn);
  console.log(await limiter.connectionStatus('203.0.113.9'));
  await limiter.reset(socket);
  await limiter.block(socket, 1000);
  await limiter.unblock('user-42');
  const blocks: Readonly<Record<string, number>> = limiter.listBlocks();
  const stats = limiter.stats();
  console.log(blocks, stats.connections, stats.storeKeys);
  limiter.events$.subscribe((event: RateLimitEvent) => console.log(event.kind));
  // Migration table: `WsRateLimitService.connectionOf(socket).request`.
  console.log(limiter.connectionOf(socket).request?.headers['user-agent']);
}

// README 501-509: a filter that hands refusals on.
@Catch()
export class AllErrorsFilter implements ExceptionFilter {
  constructor(private readonly rateLimit: WsRateLimitFilter) {}
  catch(exception: unknown, host: ArgumentsHost) {
    if (exception instanceof WsRateLimitException) return this.rateLimit.catch(exception, host);
    // ... your own answer
  }
}

// README 516-522: the guard registered globally.
@Module({
  imports: [ConfigModule.forRoot(), WsRateLimitModule.forRoot()],
  providers: [QuickStartGateway, { provide: APP_GUARD, useClass: WsThrottleGuard }],
})
export class GlobalGuardModule {}

// README 524-537: extending the guard; a plan is tiers of specs applied to keys.
@Injectable()
export class PlanGuard extends WsThrottleGuard {
  protected override getPlan(
    connection: ConnectionState,
    route: Parameters<WsThrottleGuard['getPlan']>[1],
    tracker: string,
  ) {
    const plan = super.getPlan(connection, route, tracker);
    for (const { key, spec } of plan.tiers) console.log(key, spec.tier, spec.limit);
    return plan;
  }
}
export const unroutedHandlers: unknown = UNROUTED_HANDLERS;

// README 595-600 (and 701-704): the Redis store from module options.
declare const myIoredisClient: Redis;
export function redisOptions(): unknown[] {
  return [
    WsRateLimitModule.forRoot({ store: 'redis', redis: { url: 'redis://redis.internal:6379' } }),
    WsRateLimitModule.forRoot({ store: 'redis', redis: { sentinels: ['10.0.0.5:26379'], sentinelName: 'main' } }),
    WsRateLimitModule.forRoot({ store: 'redis', redis: { clusterNodes: ['10.0.0.7:7000', '10.0.0.8:7000'] } }),
    WsRateLimitModule.forRoot({ store: 'redis', redis: { client: myIoredisClient } }),
    WsRateLimitModule.forRoot({ redis: { reservationBatch: 64, reservationTtlMs: 1000 } }),
  ];
}

// README 621-760: createRedisStore's options and the store's read-outs the prose names.
export async function redisStoreOptions(url: string): Promise<number> {
  const a = await createRedisStore({ url, planScripts: 64 });
  const b = await createRedisStore({ url, hashFieldTtls: false });
  const c = await createRedisStore({ url, reservations: { maxBatch: 64, ttlMs: 1000 } });
  const d = await createRedisStore({ url, reservations: true });
  const flags: boolean[] = [a.hashFieldTtls, b instanceof RedisRateLimitStore];
  return flags.length + c.deadlineMissesUnderLoad + (d.available ? 1 : 0);
}

// README 843-849: the store on its own.
export async function storeOnItsOwn(): Promise<RateLimitDecision> {
  const store = new MemoryRateLimitStore();
  const plan = createPlan(store, 'user-42', [tokenBucketSpec('global', 'g', 100, 50)]); // build once, reuse
  const decision = await store.consume(plan); // { allowed: true } or { allowed: false, retryAfter, ... }
  return decision;
}

// README 851-852: the other builders.
export const builders: TierSpec[] = [
  windowSpec('expensive', 'x', 'sliding-log', 5, 60_000),
  windowSpec('expensive', 'xc', 'sliding-counter', 5, 60_000),
  concurrencySpec('concurrency', 'cc', 3),
];

// README 578-583: the memory store's read-outs and deletes.
export function memoryStoreApi(store: MemoryRateLimitStore): number {
  store.delete([store.key('user-42', 'g')]);
  store.deleteTracker('user-42');
  return store.trackers + store.evictions + store.size;
}

// README 1030-1036: plans and the resolver.
export const plansModule = WsRateLimitModule.forRoot({
  plans: {
    free: { types: { chat: { capacity: 10, refillRate: 2 } } },
    premium: { global: { capacity: 500, refillRate: 200 }, types: { chat: { capacity: 100, refillRate: 50 } } },
  },
  planResolver: (client) => ((client as { user?: { premium?: boolean } }).user?.premium ? 'premium' : 'free'),
});

// README 1078-1083: blocking from code.
export async function blocking(limiter: WsRateLimitService): Promise<void> {
  await limiter.block('203.0.113.9', 10 * 60_000); // an address: 403 at the handshake, BLOCKED frames on open sockets
  await limiter.block('user-42', 60_000); // a tracker name, as your tracker function returns it
  await limiter.unblock('203.0.113.9');
  limiter.listBlocks(); // { 'ip:203.0.113.9': <until, ms since the epoch>, ... }
}

// README 1104-1120: the browser client's options (as TypeScript; `document` left out).
export function browserClient(host: string): RateLimitedClient {
  const client = new RateLimitedClient(`ws://${host}/`, {
    WebSocket,
    limits: { types: { chat: { capacity: 30, refillPerSecond: 15 } } }, // optional: pace from the start
  });
  client.on('message', (message) => console.log(message));
  client.on('rateLimit', ({ code, retryAfter, message }) =>
    console.warn(`${code}: ${message?.event ?? 'a message'} goes again in ${retryAfter} ms`),
  );
  client.on('state', (state) => console.log(state));
  client.send('chat', { content: 'hello' }); // sent now, or queued while limited
  client.sendPriority('get_limits'); // skips the queue (the server may still refuse it)
  return client;
}

// README 1123-1140: the client in Node.
export function nodeClient(): RateLimitedClient {
  const client = new RateLimitedClient('ws://localhost:8080', {
    WebSocket,
    // The sample answers every chat with an ack naming its type: the next chat goes as soon
    // as one is through, and a slow reply of another event cannot be taken for it.
    isAck: (message) => (message as { event?: string }).event === 'ack' && { event: 'chat' },
    undelivered: 'requeue', // or 'drop' (the default), see "Nothing lost silently"
  });
  client.on('drop', ({ reason, message }) => console.error(`lost ${message.event}: ${reason}`));
  client.on('undelivered', ({ reason, messages, requeued }) =>
    console.warn(`${messages.length} unanswered (${reason}), ${requeued.length} sent again after the reconnect`),
  );
  client.on('reconnect', ({ delayMs, code }) => console.log(`close ${code}: reconnecting in ${delayMs} ms`));
  for (let i = 0; i < 60; i++) client.send('chat', { content: `message ${i}` }); // all delivered, in order
  return client;
}

// README 1142-1222: every client option and read-out the prose names.
export const everyClientOption: Required<Omit<RateLimitedClientOptions, 'WebSocket' | 'createSocket'>> = {
  protocols: [],
  autoConnect: true,
  maxQueue: 1000,
  overflow: 'drop-oldest',
  limits: { global: { capacity: 100, refillPerSecond: 50 } },
  minPaceMs: 125,
  messageIds: true,
  maxUnconfirmed: 1,
  isAck: () => true,
  undelivered: 'drop',
  confirmMs: 250,
  reconnect: true,
  backoffBaseMs: 1000,
  backoffCapMs: 30_000,
  maxReconnectAttempts: 5,
  policyDelayMs: 30_000,
  policyCloseCode: 1008,
  openTimeoutMs: 20_000,
  stableMs: 10_000,
  random: Math.random,
};
export function clientReadOuts(client: RateLimitedClient): number {
  client.on('undelivered', ({ code, refused, acknowledged }) => console.log(code, refused, acknowledged));
  client.on('error', (error) => console.error(error));
  client.close(1000, 'bye');
  return client.dropped + client.queued;
}

// README 1230-1238: the client on socket.io.
export function socketIoClient(): RateLimitedClient {
  const client = new RateLimitedClient('http://localhost:3000', {
    createSocket: socketIoFactory(io, { transports: ['websocket'] }),
    isAck: isSocketIoAck, // only if every handler returns a value (answers the ack)
  });
  client.send('chat', { text: 'hello' });
  // "option `acks`, default on"
  socketIoFactory(io, {}, { acks: false });
  return client;
}

// README 1276-1294: recipes.
export const recipes = [
  WsRateLimitModule.forRoot({
    tracker: (client) => (client as { user?: { id: string } }).user?.id, // undefined: per connection
  }),
  WsRateLimitModule.forRoot({ frameBuilder: (info) => ({ type: 'rate_limit', ...info }) }),
  WsRateLimitModule.forRoot({ expensive: { algorithm: 'sliding-counter' } }),
  WsRateLimitModule.forRoot({
    tracker: (_client, { address, ip, connectionId, request }) => `${address}${ip}${connectionId}${request?.url}`,
  }),
  WsRateLimitModule.forRootAsync({
    imports: [ConfigModule],
    inject: [],
    useFactory: () => ({ tracker: 'ip' as const }),
  }),
];

// README 1339-1364: migration from @nestjs/throttler.
declare const sessions: { get(sid: string): Promise<{ userId: string } | undefined> };
declare const ThrottlerModule: typeof ThrottlerModuleClass;
export const before = () =>
  ThrottlerModule.forRoot([
    { name: 'short', ttl: 1000, limit: 10 },
    { name: 'long', ttl: 60000, limit: 100 },
  ]);
export const after = WsRateLimitModule.forRoot({
  tracker: async (client) => (await sessions.get((client as { sid: string }).sid))?.userId,
  skipIf: (context) => (context.switchToWs().getClient() as { internal?: boolean }).internal === true,
});

@WebSocketGateway({ path: '/migrated' })
@WsRateLimit()
export class MigratedChatGateway {
  @WsThrottle({ limits: { short: { capacity: 10, refillRate: 10 }, long: { capacity: 100, refillRate: 100 / 60 } } })
  @SubscribeMessage('chat')
  chat() {}

  @WsSkipThrottle()
  @SubscribeMessage('ping')
  ping() {}
}

// README 1372-1380: a guard subclass with an async tracker.
declare const teams: { of(request: unknown): Promise<string | undefined> };
@Injectable()
export class TeamGuard extends WsThrottleGuard {
  protected override async getTracker(client: object, connection: ConnectionState): Promise<string> {
    const team = await teams.of(connection.request);
    return team === undefined ? super.getTracker(client, connection) : `key:team-${team}`;
  }
}

// --- Runtime checks of the claims around the blocks -------------------------------------------

const SLOW = 0.01;

interface Line {
  level: string;
  text: string;
}
/** Captures the library's log lines (Nest's Logger) for one test. */
function captureLogs(): { lines: Line[]; restore(): void } {
  const lines: Line[] = [];
  const spies = (['log', 'warn', 'debug', 'error'] as const).map((level) =>
    jest.spyOn(Logger.prototype, level).mockImplementation(function (this: Logger, message: unknown) {
      lines.push({ level, text: String(message) });
    }),
  );
  return { lines, restore: () => spies.forEach((spy) => spy.mockRestore()) };
}

const apps: RunningApp[] = [];
const clients: TestClient[] = [];
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await Promise.all(apps.splice(0).map((running) => running.close()));
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

async function start(metadata: Parameters<typeof startApp>[0]): Promise<RunningApp> {
  const running = await startApp(metadata, (app: INestApplication) => new WsRateLimitAdapter(app));
  apps.push(running);
  return running;
}

async function connect(url: string): Promise<TestClient> {
  const client = await TestClient.connect(url);
  clients.push(client);
  return client;
}

describe('README: the store on its own (835-861)', () => {
  it("decides the snippet's plan: { allowed: true }, then a refusal with retryAfter past the capacity", async () => {
    expect(await storeOnItsOwn()).toEqual({ allowed: true });
    const store = new MemoryRateLimitStore();
    const plan = createPlan(store, 'user-42', [tokenBucketSpec('global', 'g', 3, SLOW)]);
    for (let i = 0; i < 3; i++) expect((await store.consume(plan)).allowed).toBe(true);
    const refused = await store.consume(plan);
    expect(refused).toMatchObject({ allowed: false, tier: 'global', limit: 3, remaining: 0 });
    expect(refused.allowed === false && refused.retryAfter > 0).toBe(true);
  });

  it('refuses a hand-made spec with another tier name, or a kind that does not match its algorithm, with a RangeError naming the tier', () => {
    const store = new MemoryRateLimitStore();
    const good = tokenBucketSpec('type', 't:chat', 5, 1);
    const badTier = { ...good, tier: 'chat' } as unknown as TierSpec;
    const badKind = { ...good, algorithm: 'sliding-log' } as unknown as TierSpec;
    expect(() => store.consume({ tracker: 'u', tiers: [{ key: 'k1', spec: badTier }] })).toThrow(RangeError);
    expect(() => store.consume({ tracker: 'u', tiers: [{ key: 'k1', spec: badTier }] })).toThrow(/'chat'/);
    expect(() => createPlan(store, 'u', [badKind])).toThrow(/tier spec 'type'/);
    expect(store.size).toBe(0);
  });

  it('the builders check the figures (a cost above the capacity, a fractional log limit)', () => {
    expect(() => tokenBucketSpec('global', 'g', 2, 1, 3)).toThrow(RangeError);
    expect(() => windowSpec('expensive', 'x', 'sliding-log', 2.5, 1000)).toThrow(RangeError);
    expect(() => concurrencySpec('concurrency', 'cc', 0)).toThrow(RangeError);
  });
});

describe('README: the memory store (565-583)', () => {
  it('counts trackers, forgets single tier states with delete(keys), a tracker left without any, and whole trackers', () => {
    const store = new MemoryRateLimitStore();
    const specs = [tokenBucketSpec('global', 'g', 2, SLOW), tokenBucketSpec('type', 't:chat', 2, SLOW)];
    const alice = createPlan(store, 'alice', specs);
    const bob = createPlan(store, 'bob', specs);
    store.consume(alice);
    store.consume(alice);
    store.consume(bob);
    expect({ trackers: store.trackers, size: store.size }).toEqual({ trackers: 2, size: 4 });
    expect(store.consume(alice).allowed).toBe(false);
    store.delete([store.key('alice', 'g')]);
    expect({ trackers: store.trackers, size: store.size }).toEqual({ trackers: 2, size: 3 });
    store.delete([store.key('alice', 't:chat')]);
    expect({ trackers: store.trackers, size: store.size }).toEqual({ trackers: 1, size: 2 });
    expect(store.consume(alice).allowed).toBe(true); // forgotten: full budgets again
    store.deleteTracker('bob');
    expect({ trackers: store.trackers, size: store.size }).toEqual({ trackers: 1, size: 2 });
  });

  it('delete() forgets the key of a plan made by hand', () => {
    const store = new MemoryRateLimitStore();
    const plan = { tracker: 'carol', tiers: [{ key: 'my-own-key', spec: tokenBucketSpec('global', 'g', 1, SLOW) }] };
    expect(store.consume(plan).allowed).toBe(true);
    expect(store.consume(plan).allowed).toBe(false);
    store.delete(['my-own-key']);
    expect(store.consume(plan).allowed).toBe(true);
  });

  it('counts evictions of tier states that still mattered; never drops a tracker holding a lease', () => {
    const store = new MemoryRateLimitStore({ maxKeys: 4 });
    const lease = createPlan(store, 'leaser', [concurrencySpec('concurrency', 'cc', 1)], 'lease-1');
    expect(store.consume(lease).allowed).toBe(true);
    for (let i = 0; i < 20; i++) store.consume(createPlan(store, `t${i}`, [tokenBucketSpec('global', 'g', 5, SLOW)]));
    expect(store.size).toBeLessThanOrEqual(4);
    expect(store.evictions).toBeGreaterThan(0);
    // The lease is still held: a second one is refused.
    expect(
      store.consume(createPlan(store, 'leaser', [concurrencySpec('concurrency', 'cc', 1)], 'lease-2')).allowed,
    ).toBe(false);
  });
});

describe('README: the client (1142-1250)', () => {
  it('refuses a confirmMs that is not finite', () => {
    expect(
      () => new RateLimitedClient('ws://127.0.0.1:1', { WebSocket, autoConnect: false, confirmMs: Infinity }),
    ).toThrow(RangeError);
  });

  it('gives up a handshake after openTimeoutMs (default 20 s): an error event, then a reconnect as after one that never opened', () => {
    jest.useFakeTimers();
    try {
      const sockets: Array<{ closed: boolean }> = [];
      const events: string[] = [];
      const client = new RateLimitedClient('ws://never', {
        policyDelayMs: 5000,
        random: () => 0,
        createSocket: () => {
          const socket = {
            readyState: 0,
            closed: false,
            send() {},
            close() {
              socket.closed = true;
            },
            onopen: null,
            onmessage: null,
            onclose: null,
            onerror: null,
          };
          sockets.push(socket);
          return socket;
        },
      });
      client.on('error', (error) => events.push(`error: ${(error as Error).message}`));
      client.on('reconnect', ({ delayMs, policy }) => events.push(`reconnect ${delayMs} ${policy}`));
      jest.advanceTimersByTime(19_999);
      expect({ state: client.state, events }).toEqual({ state: 'connecting', events: [] });
      jest.advanceTimersByTime(1);
      expect(events).toEqual([
        'error: RateLimitedClient: the handshake did not complete within 20000 ms',
        'reconnect 5000 true',
      ]);
      expect(sockets[0]!.closed).toBe(true);
      client.close();
    } finally {
      jest.useRealTimers();
    }
  });

  it('ends the TCP connection of a server that never answers the upgrade (ws, and socket.io over websocket)', async () => {
    const accepted: NetSocket[] = [];
    const server: NetServer = createServer((socket) => {
      socket.on('error', () => undefined);
      socket.resume(); // read, so that the client's FIN is seen
      accepted.push(socket);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => {
      for (const socket of accepted) socket.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    });
    const port = (server.address() as AddressInfo).port;
    for (const createSocket of [undefined, socketIoFactory(io, { transports: ['websocket'] })]) {
      const before = accepted.length;
      const errors: unknown[] = [];
      const client = new RateLimitedClient(createSocket ? `http://127.0.0.1:${port}` : `ws://127.0.0.1:${port}`, {
        WebSocket,
        ...(createSocket ? { createSocket } : {}),
        openTimeoutMs: 300,
        policyDelayMs: 60_000,
      });
      client.on('error', (error) => errors.push(error));
      await settle(() => accepted.length > before, 50, 3000);
      const socket = accepted[before]!;
      const ended = await new Promise<boolean>((resolve) => {
        socket.once('close', () => resolve(true));
        setTimeout(() => resolve(false), 3000).unref();
      });
      client.close();
      expect({
        transport: createSocket ? 'socket.io' : 'ws',
        ended,
        state: client.state,
        gaveUp: errors.length > 0,
      }).toEqual({
        transport: createSocket ? 'socket.io' : 'ws',
        ended: true,
        state: 'closed',
        gaveUp: true,
      });
    }
  });
});

describe('README: module start-up (57-97, 458-463)', () => {
  it('a second forRoot in one application is a start-up error', async () => {
    @Module({ imports: [WsRateLimitModule.forRoot()] })
    class FeatureModule {}
    await expect(
      Test.createTestingModule({ imports: [WsRateLimitModule.forRoot(), FeatureModule] }).compile(),
    ).rejects.toThrow(/imported 2 times/);
  });

  it('so is a forRootAsync next to a forRoot', async () => {
    @Module({ imports: [WsRateLimitModule.forRootAsync({ useFactory: () => ({ useEnv: false }) })] })
    class AsyncFeatureModule {}
    await expect(
      Test.createTestingModule({
        imports: [WsRateLimitModule.forRoot({ useEnv: false }), AsyncFeatureModule],
      }).compile(),
    ).rejects.toThrow(/imported 2 times/);
  });

  it("forRootAsync with ConfigService: the factory's figure is used, and a NaN stops start-up naming option global.capacity", async () => {
    const saved = process.env['CHAT_BURST'];
    try {
      process.env['CHAT_BURST'] = '7';
      const moduleRef = await Test.createTestingModule({ imports: [ForRootAsyncModule] }).compile();
      expect(moduleRef.get(WsRateLimitService).options.global.capacity).toBe(7);
      await moduleRef.close();
      process.env['CHAT_BURST'] = 'lots';
      await expect(Test.createTestingModule({ imports: [ForRootAsyncModule] }).compile()).rejects.toThrow(
        /option global\.capacity/,
      );
    } finally {
      if (saved === undefined) delete process.env['CHAT_BURST'];
      else process.env['CHAT_BURST'] = saved;
    }
  });

  it("@SkipThrottle({ short: true }) (throttler's per-throttler form) throws WsRateLimitConfigError", () => {
    expect(() => SkipThrottle({ short: true } as unknown as boolean)).toThrow(WsRateLimitConfigError);
  });

  it('the quick start: a 31st chat at once gets TYPE_LIMIT, a sixth rapid connection HTTP 429 with Retry-After', async () => {
    // The defaults, but for the connection bucket's refill (1/s): the six connections must
    // come within a second of the first, which a stall of a loaded machine can exceed.
    const saved = process.env['WS_RATE_LIMIT_CONNECTION_REFILL_RATE'];
    process.env['WS_RATE_LIMIT_CONNECTION_REFILL_RATE'] = '0.01';
    let running: Awaited<ReturnType<typeof start>>;
    try {
      running = await start({ imports: [WsRateLimitModule.forRoot()], providers: [QuickStartGateway] });
    } finally {
      if (saved === undefined) delete process.env['WS_RATE_LIMIT_CONNECTION_REFILL_RATE'];
      else process.env['WS_RATE_LIMIT_CONNECTION_REFILL_RATE'] = saved;
    }
    const url = running.url;
    const client = await connect(url);
    client.inOneWrite(() => {
      for (let i = 0; i < 31; i++) client.send('chat', { i });
    });
    const [frame] = await client.waitForEvent('rate_limit');
    expect(frame!.data).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'chat', limit: 30 });
    expect(client.events('ack')).toHaveLength(30);
    for (let i = 0; i < 4; i++) await connect(url);
    const sixth = await upgrade(running.port, {}, '127.0.0.1');
    expect(sixth.status).toBe(429);
    expect(Number(sixth.headers['retry-after'])).toBeGreaterThan(0);
  });
});

describe('README: skipIf (452-457)', () => {
  @WebSocketGateway({ path: '/skip' })
  @WsRateLimit()
  class SkipGateway {
    @Throttle({
      capacity: 1,
      refillRate: SLOW,
      skipIf: (context) => (context.switchToWs().getData() as { n?: number }).n as unknown as boolean,
    })
    @SubscribeMessage('numbered')
    numbered() {
      return { event: 'ack' };
    }

    @Throttle({
      capacity: 1,
      refillRate: SLOW,
      skipIf: (async () => true) as unknown as () => boolean,
    })
    @SubscribeMessage('async')
    asyncSkip() {
      return { event: 'ack' };
    }
  }

  it('a truthy answer (1) skips; a promise is logged as an error and the message limited', async () => {
    const logs = captureLogs();
    cleanups.push(logs.restore);
    const running = await start({ imports: [WsRateLimitModule.forRoot({ useEnv: false })], providers: [SkipGateway] });
    const client = await connect(`${running.url}/skip`);
    for (let i = 0; i < 3; i++) client.send('numbered', { n: 1 });
    await client.waitForEvent('ack', 3);
    for (let i = 0; i < 2; i++) client.send('async', {});
    await client.waitForEvent('rate_limit', 1);
    expect(client.events('rate_limit')).toHaveLength(1);
    expect(
      logs.lines.filter((line) => line.level === 'error' && /skipIf returned a promise/.test(line.text)),
    ).toHaveLength(1);
  });

  it('the module option skipIf: a truthy answer skips every message, unrouted frames too', async () => {
    const running = await start({
      imports: [
        WsRateLimitModule.forRoot({
          useEnv: false,
          global: { capacity: 2, refillRate: SLOW },
          skipIf: () => 'yes' as unknown as boolean,
        }),
      ],
      providers: [SkipGateway],
    });
    const client = await connect(`${running.url}/skip`);
    for (let i = 0; i < 4; i++) client.send('nobody-handles-this', {});
    for (let i = 0; i < 4; i++) client.send('async', {});
    await client.waitForEvent('ack', 4);
    expect(client.events('rate_limit')).toHaveLength(0);
  });
});

describe('README: @SkipThrottle warnings (458-461)', () => {
  @WebSocketGateway({ path: '/w1' })
  @WsRateLimit()
  class SkippedHandlerGateway {
    @SkipThrottle()
    @Throttle({ capacity: 5 })
    @SubscribeMessage('a')
    a() {}

    @SubscribeMessage('b')
    b() {}
  }

  @WebSocketGateway({ path: '/w2' })
  @WsRateLimit()
  @SkipThrottle()
  @Throttle({ capacity: 5 })
  class SkippedClassGateway {
    @SubscribeMessage('a')
    a() {}
  }

  @WebSocketGateway({ path: '/w3' })
  @WsRateLimit()
  @SkipThrottle()
  @Throttle({ capacity: 5 })
  class ReenabledGateway {
    @SkipThrottle(false)
    @SubscribeMessage('a')
    a() {}

    @SubscribeMessage('b')
    b() {}
  }

  @WebSocketGateway({ path: '/w4' })
  @WsRateLimit()
  @Throttle({ capacity: 5 })
  class EveryHandlerSkippedGateway {
    @SkipThrottle()
    @SubscribeMessage('a')
    a() {}

    @SkipThrottle()
    @SubscribeMessage('b')
    b() {}
  }

  const warningsFor = async (gateway: new () => unknown): Promise<string[]> => {
    const logs = captureLogs();
    try {
      await start({ imports: [WsRateLimitModule.forRoot({ useEnv: false })], providers: [gateway] });
    } finally {
      logs.restore();
    }
    return logs.lines
      .filter((line) => line.level === 'warn' && /@SkipThrottle/.test(line.text))
      .map((line) => line.text);
  };

  it('names figures on a skipped handler, and on a skipped class none of whose handlers is re-enabled', async () => {
    expect(await warningsFor(SkippedHandlerGateway)).toEqual([expect.stringContaining('SkippedHandlerGateway.a')]);
    expect(await warningsFor(SkippedClassGateway)).toEqual([expect.stringContaining('SkippedClassGateway')]);
    expect(await warningsFor(ReenabledGateway)).toEqual([]);
  });

  it('class @Throttle figures voided by @SkipThrottle() on every handler get a start-up warning', async () => {
    expect(await warningsFor(EveryHandlerSkippedGateway)).toEqual([
      expect.stringContaining('EveryHandlerSkippedGateway'),
    ]);
  });
});

describe('README: connections_total reason handshakes (953-957)', () => {
  it('counts TCP connections dropped over maxPendingHandshakesPerIp, in shadow mode too (ws adapter)', async () => {
    for (const shadow of [false, true]) {
      const registry = new Registry();
      const running = await start({
        imports: [
          WsRateLimitModule.forRoot({ useEnv: false, metricsRegistry: registry, maxPendingHandshakesPerIp: 2, shadow }),
        ],
        providers: [QuickStartGateway],
      });
      const limiter = running.app.get(WsRateLimitService);
      const events: RateLimitEvent[] = [];
      const subscription = limiter.events$.subscribe((event) => events.push(event));
      const dropped = await connectionsEndedByServer(running.port, 4, 2000);
      subscription.unsubscribe();
      expect({
        shadow,
        dropped,
        metric: await metricSum(registry, 'ws_rate_limit_connections_total', {
          result: 'refused',
          reason: 'handshakes',
        }),
        events: events.filter((event) => event.kind === 'connection' && event.reason === 'handshakes').length,
      }).toEqual({ shadow, dropped: 2, metric: 2, events: 2 });
    }
  });
});

describe('README: blocking from code (1076-1091)', () => {
  class FailingBlocksStore extends MemoryRateLimitStore {
    fail = false;
    override setBlock(): Promise<void> | undefined {
      return this.fail ? Promise.reject(new Error('down')) : undefined;
    }
    override deleteBlock(): Promise<void> | undefined {
      return this.fail ? Promise.reject(new Error('down')) : undefined;
    }
  }

  it('lists blocks as ip:<address> and key:<tracker>, refuses a CIDR, and a rejected block or unblock changes nothing', async () => {
    const store = new FailingBlocksStore();
    const moduleRef = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, store })],
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    await app.init();
    cleanups.push(() => app.close());
    const limiter = app.get(WsRateLimitService);
    await blocking(limiter);
    expect(Object.keys(limiter.listBlocks())).toEqual(['key:user-42']);
    await limiter.block('203.0.113.9', 60_000);
    expect(Object.keys(limiter.listBlocks()).sort()).toEqual(['ip:203.0.113.9', 'key:user-42']);
    await expect(limiter.block('10.0.0.0/8', 1000)).rejects.toThrow(TypeError);
    store.fail = true;
    await expect(limiter.block('198.51.100.7', 1000)).rejects.toThrow('down');
    await expect(limiter.unblock('user-42')).rejects.toThrow('down');
    expect(Object.keys(limiter.listBlocks()).sort()).toEqual(['ip:203.0.113.9', 'key:user-42']);
  });
});
