/**
 * How a message's limits are resolved at the edges (which tiers, figures, costs, types and
 * plans apply to a handler), from an adversarial review. The first seven failed before their
 * fixes: a handler inherited by two gateways got the first one's route, a plan's `types`
 * entry replaced the module's whole entry (losing `expensive` and `cost`), plans with
 * different expensive algorithms reset each other's window, `consume()` on a socket used
 * the default plan, handlers sharing a type under `app.useGlobalGuards` disagreed by which
 * message came first, and a tracker function could not learn the address of an IPv6 client
 * (`ip` is the /64 key, as documented now; `address` was added). The others held already,
 * but the last two, added with their fixes: an address string named no budget under
 * `tracker: 'ip'` (a reset that did nothing), and a tracker function's '' made one budget of
 * every connection it was returned for.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { resolveOptions } from '../../../lib/config/resolve-options.js';
import type { RateLimitEvent } from '../../../lib/interfaces/event.interface.js';
import type { WsRateLimitModuleOptions } from '../../../lib/interfaces/options.interface.js';
import { Telemetry } from '../../../lib/metrics/telemetry.js';
import { MessageLimiter } from '../../../lib/pipeline/message-limiter.js';
import { namedTracker } from '../../../lib/pipeline/tracker.js';
import { SharedStore } from '../../../lib/services/shared-store.js';
import { MemoryRateLimitStore } from '../../../lib/storage/memory/memory-store.js';
import {
  SkipThrottle,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  WsThrottleGuard,
} from '../../../lib/index.js';
import { Test } from '@nestjs/testing';
import type { AddressInfo } from 'node:net';
import { startApp, type RunningApp } from '../../support/app.js';
import { TestClient } from '../../support/ws-client.js';
import { fakeConnection, fakeSocket } from '../../unit/support/fake-transport.js';

const noop = (): void => undefined;

/** A MessageLimiter over a memory store, as the service builds it (no NestJS). */
function limiterOf(options: WsRateLimitModuleOptions = {}) {
  const resolved = resolveOptions({ useEnv: false, ...options });
  const store = new MemoryRateLimitStore();
  const shared = new SharedStore(store, resolved.failMode, resolved.maxKeys, {
    answered: noop,
    failed: noop,
    down: noop,
    up: noop,
  });
  const telemetry = new Telemetry(true);
  const events: RateLimitEvent[] = [];
  telemetry.events$.subscribe((event) => events.push(event));
  return new MessageLimiter(resolved, store, shared, telemetry);
}

// --- Gateways -----------------------------------------------------------------------------

/** A base gateway whose handler the subclasses inherit unchanged. */
class BaseJobsGateway {
  @SubscribeMessage('job')
  job(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** Internal traffic: exempt from every message limit. */
@WebSocketGateway({ path: '/internal' })
@WsRateLimit()
@SkipThrottle()
class InternalJobsGateway extends BaseJobsGateway {}

/** Public traffic: 2 jobs, slowly refilled. */
@WebSocketGateway({ path: '/public' })
@WsRateLimit()
@Throttle({ capacity: 2, refillRate: 0.01 })
class PublicJobsGateway extends BaseJobsGateway {}

/** The server-side sockets of the last connections, to call the service with. */
const sockets: object[] = [];

@WebSocketGateway()
@WsRateLimit()
class PlanGateway {
  @SubscribeMessage('hello')
  hello(@ConnectedSocket() client: object) {
    sockets.push(client);
    return { event: 'hi' };
  }

  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ expensive: true })
  @SubscribeMessage('search')
  search(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** A gateway skipped as a whole, one handler limited again. */
@SkipThrottle()
class SkippedClassGateway {
  @SkipThrottle(false)
  @Throttle({ capacity: 3, refillRate: 0.5 })
  @SubscribeMessage('limited')
  limited() {}

  @SubscribeMessage('free')
  free() {}
}

class SearchGateway {
  @SubscribeMessage('search')
  search() {}
}

class ExpensiveGateway {
  @Throttle({ expensive: true, capacity: 100, refillRate: 100 })
  @SubscribeMessage('report')
  report() {}
}

/** Two handlers sharing the `chat` type: one sets its figures, one takes them (no @WsRateLimit: a global guard). */
@WebSocketGateway()
class SharedTypeGateway {
  @Throttle({ type: 'chat' })
  @SubscribeMessage('plain')
  plain(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'chat', capacity: 2, refillRate: 0.01 })
  @SubscribeMessage('tight')
  tight(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** What a tracker function was told. */
const seenContexts: Array<{ ip: string | undefined; address: string | undefined }> = [];

class NamedLimitsGateway {
  @Throttle({ limits: { short: { capacity: 2, refillRate: 0.01 }, long: { capacity: 5, refillRate: 0.01 } } })
  @SubscribeMessage('chat')
  chat() {}
}

// --- Unit-level: the resolver and the limiter ------------------------------------------------

describe('route resolution (unit)', () => {
  it('a handler inherited by two gateways gets each gateway its own limits (not the first one resolved)', () => {
    const limiter = limiterOf();
    const handler = BaseJobsGateway.prototype.job;
    // The service resolves every gateway's handlers at start-up, in provider order.
    expect(limiter.routes.resolve(handler, InternalJobsGateway)).toBeNull();
    const route = limiter.routes.resolve(handler, PublicJobsGateway);
    // The public gateway's class-level @Throttle is ignored: its route is the internal one's (null).
    expect(route).not.toBeNull();
    expect(route!.specs.map((spec) => [spec.suffix, spec.limit])).toEqual([
      ['@100/50:g', 100],
      ['@2/0.01:t:job', 2],
    ]);
  });

  it("a plan's types entry overrides only the fields it gives (the module's `expensive`, `refillRate`, `cost` stay)", () => {
    // "The limits a plan overrides; anything left out is the module's" (PlanLimitsOptions).
    const limiter = limiterOf({
      types: { search: { capacity: 5, refillRate: 0.1, cost: 2, expensive: true } },
      plans: { premium: { types: { search: { capacity: 50 } } } },
    });
    const handler = SearchGateway.prototype.search;
    const free = limiter.routes.resolve(handler, SearchGateway)!;
    expect(free.specs.map((spec) => [spec.tier, spec.limit, spec.cost])).toEqual([
      ['global', 100, 2],
      ['type', 5, 2],
      ['expensive', 5, 1],
    ]);
    const premium = limiter.plans.get('premium')!.resolve(handler, SearchGateway)!;
    // Premium raised the search burst; nothing else was meant to change. Found: the
    // expensive window is gone, the cost is 1 and the refill is the default 10/s.
    expect(premium.specs.map((spec) => spec.tier)).toEqual(['global', 'type', 'expensive']);
    expect(premium.specs[1]).toMatchObject({ limit: 50, cost: 2, refillRate: 0.1 });
  });

  it('a tracker whose connections are on plans with different expensive algorithms still gets the window', () => {
    // tracker 'ip' (or a user id) with the plan picked per connection: a free and a premium
    // connection of one tracker share the expensive key `x`.
    const limiter = limiterOf({
      tracker: 'ip',
      expensive: { max: 2, windowMs: 60_000, algorithm: 'sliding-log' },
      plans: { premium: { expensive: { max: 3, algorithm: 'sliding-counter' } } },
    });
    const handler = ExpensiveGateway.prototype.report;
    const free = limiter.routes.resolve(handler, ExpensiveGateway)!;
    const premium = limiter.plans.get('premium')!.resolve(handler, ExpensiveGateway)!;
    const tracker = namedTracker('shared-user');
    const freePlan = limiter.buildPlan(tracker, free.specs, free.type);
    const premiumPlan = limiter.buildPlan(tracker, premium.specs, premium.type);
    const allowed = { free: 0, premium: 0 };
    for (let i = 0; i < 20; i++) {
      const plan = i % 2 === 0 ? 'free' : 'premium';
      const decision = limiter.decide(plan === 'free' ? freePlan : premiumPlan) as { allowed: boolean };
      if (decision.allowed) allowed[plan]++;
    }
    // Each algorithm keeps its own window (suffixes `x` and `xc`, the premium one with its own
    // figures as well): neither starts over when the other decides. Before, each found the
    // other's state and started over: 20 of 20.
    expect(allowed).toEqual({ free: 2, premium: 3 });
    expect([freePlan, premiumPlan].map((plan) => plan.tiers.at(-1)!.spec.suffix)).toEqual(['x', '@3/60000:xc']);
  });

  it('guard: @SkipThrottle(false) with @Throttle limits one handler of a skipped class; the others stay exempt', () => {
    const limiter = limiterOf();
    const limited = limiter.routes.resolve(SkippedClassGateway.prototype.limited, SkippedClassGateway)!;
    expect(limited.specs.map((spec) => [spec.suffix, spec.limit])).toEqual([
      ['@100/50:g', 100],
      ['@3/0.5:t:limited', 3],
    ]);
    expect(limiter.routes.resolve(SkippedClassGateway.prototype.free, SkippedClassGateway)).toBeNull();
  });

  it('guard: named limits where one refuses charge none of the tiers (global included)', () => {
    const limiter = limiterOf({ global: { capacity: 4, refillRate: 0.01 } });
    const route = limiter.routes.resolve(NamedLimitsGateway.prototype.chat, NamedLimitsGateway)!;
    const plan = limiter.buildPlan(namedTracker('u'), route.specs, route.type);
    expect([0, 1, 2].map(() => (limiter.decide(plan) as { allowed: boolean }).allowed)).toEqual([true, true, false]);
    // The refused third message spent nothing: the global bucket still holds 2 of 4.
    const other = limiter.buildPlan(namedTracker('u'), [limiter.routes.globalSpec(1)], 'x');
    expect([0, 1, 2].map(() => (limiter.decide(other) as { allowed: boolean }).allowed)).toEqual([true, true, false]);
  });

  it('guard: reset gives back every tier of every plan (named limits, a plan bucket, the expensive window)', async () => {
    const limiter = limiterOf({
      expensive: { max: 1, windowMs: 60_000 },
      plans: { premium: { types: { chat: { capacity: 1, refillRate: 0.01 } } } },
    });
    const state = fakeConnection(fakeSocket());
    const tracker = namedTracker('reset-me');
    const named = limiter.routes.resolve(NamedLimitsGateway.prototype.chat, NamedLimitsGateway)!;
    const premium = limiter.plans.get('premium')!.resolve(NamedLimitsGateway.prototype.chat, NamedLimitsGateway)!;
    const expensive = limiter.routes.resolve(ExpensiveGateway.prototype.report, ExpensiveGateway)!;
    const plans = [named, premium, expensive].map((route) => limiter.buildPlan(tracker, route.specs, route.type));
    for (const plan of plans) {
      while ((limiter.decide(plan) as { allowed: boolean }).allowed);
    }
    await limiter.reset(tracker);
    for (const plan of plans) expect(limiter.decide(plan)).toMatchObject({ allowed: true });
    limiter.forget(state);
    await limiter.close();
  });
});

// --- End to end --------------------------------------------------------------------------------

describe('route resolution (end to end)', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];
  const answered = (frame: { event?: string }) => frame.event === 'ack' || frame.event === 'rate_limit';

  const start = async (options: WsRateLimitModuleOptions, providers: any[]) => {
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })], providers },
      (app) => new WsRateLimitAdapter(app),
    );
    return { running, limiter: running.app.get(WsRateLimitService) };
  };
  /** As `start`, on a chosen host, with a global WsThrottleGuard when asked. */
  const startOn = async (
    host: string,
    options: WsRateLimitModuleOptions,
    providers: any[],
    globalGuard = false,
  ): Promise<string> => {
    const moduleRef = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })],
      providers,
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    app.useWebSocketAdapter(new WsRateLimitAdapter(app));
    if (globalGuard) app.useGlobalGuards(new WsThrottleGuard(app.get(WsRateLimitService)));
    await app.listen(0, host);
    const { port } = app.getHttpServer().address() as AddressInfo;
    const url = host.includes(':') ? `ws://[${host}]:${port}` : `ws://${host}:${port}`;
    running = { app, port, url, close: () => app.close() };
    return url;
  };
  const connect = async (path = '', headers: Record<string, string> = {}) => {
    const client = await TestClient.connect(`${running!.url}${path}`, { headers });
    clients.push(client);
    return client;
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
    sockets.length = 0;
  });

  it('a public gateway inheriting its handler from a base class is limited even when a skipped gateway shares it', async () => {
    await start({}, [InternalJobsGateway, PublicJobsGateway]);
    const internal = await connect('/internal');
    for (let i = 0; i < 3; i++) internal.send('job', i);
    await internal.waitForEvent('ack', 3);
    const client = await connect('/public');
    for (let i = 0; i < 5; i++) client.send('job', i);
    await client.waitFor(answered, 5);
    // @Throttle({ capacity: 2 }) on PublicJobsGateway: 2 pass, 3 refused. Found: all 5 pass.
    expect(client.events('ack')).toHaveLength(2);
    expect(client.events('rate_limit')[0]?.data).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'job', limit: 2 });
  });

  it("consume() on a socket spends the socket's plan, the figures status() reports for it", async () => {
    const { limiter } = await start(
      {
        types: { chat: { capacity: 3, refillRate: 0.01 } },
        plans: { premium: { types: { chat: { capacity: 8, refillRate: 0.01 } } } },
        planResolver: (_client, { request }) => request?.headers['x-plan'] as string | undefined,
      },
      [PlanGateway],
    );
    const client = await connect('', { 'x-plan': 'premium' });
    client.send('hello');
    await client.waitForEvent('hi');
    const socket = sockets[0]!;
    const before = await limiter.status(socket, ['chat']);
    expect(before.plan).toBe('premium');
    expect(before.types.chat).toMatchObject({ capacity: 8, remaining: 8 });
    const decisions = [];
    for (let i = 0; i < 5; i++) decisions.push(await limiter.consume(socket, { type: 'chat' }));
    // The premium chat bucket holds 8: five requests pass. Found: the 4th is refused with
    // the module's figures (limit 3) while status() says 8 of capacity.
    expect(decisions.map((decision) => decision.allowed)).toEqual([true, true, true, true, true]);
    const after = await limiter.status(socket, ['chat']);
    expect(after.types.chat!.remaining).toBeLessThanOrEqual(3);
  });

  it('with app.useGlobalGuards, handlers sharing a type agree on its figures whatever message comes first', async () => {
    const url = await startOn('127.0.0.1', {}, [SharedTypeGateway], true);
    const client = await TestClient.connect(url);
    clients.push(client);
    // The handler without figures first: the type then takes the module's default (20 burst).
    client.send('plain', 0);
    await client.waitForEvent('ack');
    for (let i = 1; i <= 3; i++) client.send('tight', i);
    await client.waitFor((frame) => frame.event !== 'ack' || frame.data !== 0, 3);
    // `chat` is 2 burst (tight's @Throttle, "one type has one set of buckets"): 1 more passes,
    // then TYPE_LIMIT. Found: every 'tight' message fails with a config error at message time.
    expect(client.frames.slice(1).map((frame) => frame.event)).toEqual(['ack', 'rate_limit', 'rate_limit']);
  });

  it('guard: with app.useGlobalGuards and the figured handler first, the shared type takes its figures', async () => {
    const url = await startOn('127.0.0.1', {}, [SharedTypeGateway], true);
    const client = await TestClient.connect(url);
    clients.push(client);
    client.send('tight', 0);
    await client.waitForEvent('ack');
    for (let i = 1; i <= 3; i++) client.send('plain', i);
    await client.waitFor(answered, 4);
    expect(client.frames.map((frame) => frame.event)).toEqual(['ack', 'ack', 'rate_limit', 'rate_limit']);
    expect(client.events('rate_limit')[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'chat', limit: 2 });
  });

  it('a tracker function is told the client address (TrackerContext.address) and its IPv6 /64 key (ip)', async () => {
    const url = await startOn(
      '::1',
      {
        tracker: (_client, context) => {
          seenContexts.push({ ip: context.ip, address: context.address });
          return undefined;
        },
      },
      [PlanGateway],
    );
    const client = await TestClient.connect(url);
    clients.push(client);
    client.send('chat', 1);
    await client.waitForEvent('ack');
    // `ip` is the key `tracker: 'ip'` counts by (an IPv6 address's /64); `address` the address.
    expect(seenContexts.at(-1)).toEqual({ ip: '::/64', address: '::1' });
  });

  it('guard: the pipeline and status() agree on a premium socket; reset() restores its plan tiers', async () => {
    const { limiter } = await start(
      {
        expensive: { max: 1, windowMs: 60_000 },
        types: { chat: { capacity: 2, refillRate: 0.01 } },
        plans: {
          premium: { types: { chat: { capacity: 4, refillRate: 0.01 } }, expensive: { max: 2, windowMs: 60_000 } },
        },
        planResolver: (_client, { request }) => request?.headers['x-plan'] as string | undefined,
      },
      [PlanGateway],
    );
    const client = await connect('', { 'x-plan': 'premium' });
    client.send('hello');
    await client.waitForEvent('hi');
    for (let i = 0; i < 6; i++) client.send('chat', i);
    for (let i = 0; i < 3; i++) client.send('search', i);
    await client.waitFor(answered, 9);
    expect(client.events('ack')).toHaveLength(4 + 2);
    const status = await limiter.status(sockets[0]!);
    expect(status.plan).toBe('premium');
    expect(status.types.chat).toMatchObject({ capacity: 4 });
    expect(status.types.chat!.remaining).toBeLessThan(1);
    expect(status.expensive).toMatchObject({ capacity: 2, remaining: 0 });
    await limiter.reset(sockets[0]!);
    const fresh = await limiter.status(sockets[0]!);
    expect(fresh.types.chat!.remaining).toBe(4);
    expect(fresh.expensive.remaining).toBe(2);
    client.send('search', 'again');
    await client.waitForEvent('ack', 7);
  });

  it("with tracker 'ip', an address given as a string names that address's budget (status, reset, consume)", async () => {
    const { running, limiter } = await start({ tracker: 'ip', types: { chat: { capacity: 2, refillRate: 0.001 } } }, [
      PlanGateway,
    ]);
    const client = await TestClient.connect(running.url);
    clients.push(client);
    for (let i = 0; i < 3; i++) client.send('chat', i);
    await client.waitForEvent('rate_limit');
    expect((await limiter.status('127.0.0.1', ['chat'])).types['chat']!.remaining).toBe(0);
    // Before: a tracker named "127.0.0.1", which no message spends: a reset that did nothing.
    await limiter.reset('127.0.0.1');
    client.send('chat', 3);
    await client.waitForEvent('ack', 3);
    expect((await limiter.consume('127.0.0.1', { type: 'chat' })).allowed).toBe(true);
    expect((await limiter.consume('127.0.0.1', { type: 'chat' })).allowed).toBe(false);
  });

  it("a tracker function returning '' falls back to the connection, as undefined does", async () => {
    const { running } = await start({ tracker: () => '', types: { chat: { capacity: 1, refillRate: 0.001 } } }, [
      PlanGateway,
    ]);
    const a = await TestClient.connect(running.url);
    const b = await TestClient.connect(running.url);
    clients.push(a, b);
    a.send('chat', 'a');
    await a.waitForEvent('ack');
    // Before: one budget for every connection whose user had no id.
    b.send('chat', 'b');
    await b.waitForEvent('ack');
  });
});
