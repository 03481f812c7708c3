/**
 * Plans and their operation, from an adversarial review (README "Plans", "Shadow mode",
 * "Metrics", "Events and logs", "WsRateLimitService", "Graceful degradation"): a connection's
 * plan resolved per message and switched while it is open, on `ws` and socket.io, on the
 * memory store and on a real redis-server this file starts on a free loopback port (never
 * 6379). Counts are compared exactly: admitted + refused (or shadow-refused) = sent.
 *
 * Six cases failed on the code reviewed (d8f2550) and were fixed: on Redis, a plan's
 * expensive window of other figures (same keys) was answered from the block cache with
 * another plan's refusal, and a plan's shorter window erased entries the module's longer
 * window still counted (the memory store got both right: the passing twins); such a window
 * now has its own key (`@<max>/<windowMs>:x`), as a bucket of other figures has. A
 * planResolver that threw left unrouted frames uncharged (ws and socket.io), and a promise
 * from one got no rejection handler: both now give the module's limits, said once.
 * consume() labelled metrics with any type: past 1,024 types, they share `(other)`.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { Logger, type INestApplication } from '@nestjs/common';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Registry } from 'prom-client';
import WebSocket from 'ws';
import {
  SkipThrottle,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { connectIo, type IoTestClient } from '../../support/io-client.js';
import { metricSum } from '../../support/metrics.js';
import { startRedis, type RedisServer } from '../../support/redis-server.js';
import { settle, sleep, TestClient, type Frame } from '../../support/ws-client.js';

/** What the gateway's `setPlan` handler puts on the socket; the resolver reads it. */
interface PlannedSocket {
  plan?: string;
}

/** Every `WsRateLimit` warning written while a test runs (Nest's Logger, spied). */
const warnings: string[] = [];
const warnSpy = jest.spyOn(Logger.prototype, 'warn').mockImplementation(function (this: Logger, message: unknown) {
  if ((this as unknown as { context?: string }).context === 'WsRateLimit') warnings.push(String(message));
});
const errorSpy = jest.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);

/**
 * chat (4 burst, slow refill), search (expensive), an essential receipt, and `setPlan`
 * (skipped: an auth step that changes the socket's plan while it is open).
 */
@WebSocketGateway()
@WsRateLimit()
class PlanReviewGateway {
  handleConnection(client: { emit?: (event: string) => void }): void {
    if (typeof client.emit === 'function' && !(client instanceof WebSocket)) client.emit('ready');
  }

  @Throttle({ type: 'chat', capacity: 4, refillRate: 0.01 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'search', capacity: 50, refillRate: 50, expensive: true })
  @SubscribeMessage('search')
  search(@MessageBody() data: unknown) {
    return { event: 'found', data };
  }

  constructor(private readonly limiter: WsRateLimitService) {}

  /** The socket's plan and chat budget as status() reads them, after an optional consume or reset from code. */
  @SkipThrottle()
  @SubscribeMessage('limits')
  async limits(@ConnectedSocket() client: object, @MessageBody() data: { reset?: boolean; consume?: boolean }) {
    const consumed = data.consume ? (await this.limiter.consume(client, { type: 'chat' })).allowed : undefined;
    if (data.reset) await this.limiter.reset(client);
    const status = await this.limiter.status(client);
    return { event: 'limits', data: { plan: status.plan, chat: status.types['chat'], consumed } };
  }

  @SkipThrottle()
  @SubscribeMessage('setPlan')
  setPlan(@ConnectedSocket() client: PlannedSocket, @MessageBody() data: { plan?: string }) {
    client.plan = data.plan;
    return { event: 'plan', data: { plan: data.plan ?? null } };
  }
}

const resolver = (client: unknown): string | undefined => (client as PlannedSocket).plan;

const isAnswer =
  (...events: string[]) =>
  (frame: Frame): boolean =>
    frame.event === 'rate_limit' || events.includes(frame.event ?? '');

describe('plans and their operation (review)', () => {
  const apps: RunningApp[] = [];
  const clients: TestClient[] = [];
  const ios: IoTestClient[] = [];

  const startWs = async (options: WsRateLimitModuleOptions) => {
    const running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false, ...options })],
        providers: [PlanReviewGateway],
      },
      (app: INestApplication) => new WsRateLimitAdapter(app),
    );
    apps.push(running);
    return { running, limiter: running.app.get(WsRateLimitService) };
  };
  const startIo = async (options: WsRateLimitModuleOptions) => {
    const running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false, ...options })],
        providers: [PlanReviewGateway],
      },
      (app: INestApplication) => new WsRateLimitIoAdapter(app),
    );
    apps.push(running);
    return { running, limiter: running.app.get(WsRateLimitService) };
  };
  const connectWs = async (running: RunningApp) => {
    const client = await TestClient.connect(running.url);
    clients.push(client);
    return client;
  };
  const connectSio = async (running: RunningApp) => {
    const client = await connectIo(`http://127.0.0.1:${running.port}`, 'websocket');
    ios.push(client);
    await client.until(() => client.of('ready').length === 1, 10_000, 'ready');
    return client;
  };
  /** Sets a ws connection's plan through the gateway and waits for the handler's answer. */
  const planWs = async (client: TestClient, plan: string | undefined) => {
    const before = client.events('plan').length;
    client.send('setPlan', plan === undefined ? {} : { plan });
    await client.waitForEvent('plan', before + 1);
  };
  const planIo = async (client: IoTestClient, plan: string | undefined) => {
    const before = client.of('plan').length;
    client.socket.emit('setPlan', plan === undefined ? {} : { plan });
    await client.until(() => client.of('plan').length === before + 1, 10_000, 'plan');
  };

  afterEach(async () => {
    for (const client of ios.splice(0)) await client.closeAndSettle().catch(() => undefined);
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (const running of apps.splice(0)) await running.close();
    warnings.length = 0;
  });

  afterAll(() => {
    warnSpy.mockRestore();
    errorSpy.mockRestore();
  });

  // --- Redis ------------------------------------------------------------------------------

  describe('on the Redis store (tracker ip, so the tiers live in Redis)', () => {
    let redis: RedisServer;
    let prefixes = 0;
    const redisOptions = (extra: WsRateLimitModuleOptions['redis'] = {}): WsRateLimitModuleOptions => ({
      store: 'redis',
      keyPrefix: `plans-review-${process.pid}-${++prefixes}:`,
      redis: { url: redis.url, commandTimeoutMs: 3000, ...extra },
      tracker: 'ip',
      connection: { capacity: 1000, refillRate: 1000 },
    });

    beforeAll(async () => {
      redis = await startRedis();
    }, 30_000);
    afterAll(async () => {
      await redis?.stop();
    });

    /**
     * Expected: README "Plans" — a connection whose plan changes "starts the new plan's
     * buckets" and is decided under the new plan's figures; a plan's expensive window with
     * the same algorithm shares the module's key (one log "decided under several windows and
     * limits", each decision "compares with its own figures", sliding-log.ts). The memory
     * store does so (see the passing case below). On Redis, a refusal under the module's
     * window (2 per 60 s) is kept in the block cache under a name made of the tiers' keys and
     * costs only (plan-compiler.ts `blockKey`), and the premium plan's plan has the same keys
     * (its global and type figures equal the module's): its decision (20 per 60 s, 2 spent)
     * is answered from the cache with the free refusal, for up to a minute, with no Redis call.
     */
    it("ws: a connection upgraded to a plan with a larger expensive window is admitted under it, not refused from the block cache with the old plan's refusal", async () => {
      const { running } = await startWs({
        ...redisOptions(),
        expensive: { max: 2, windowMs: 60_000 },
        plans: { premium: { expensive: { max: 20 } } },
        planResolver: resolver,
      });
      const client = await connectWs(running);
      for (let i = 0; i < 3; i++) client.send('search', i);
      await client.waitFor(isAnswer('found'), 3);
      expect(client.events('found')).toHaveLength(2);
      expect(client.events('rate_limit').map((frame) => frame.data.code)).toEqual(['EXPENSIVE_LIMIT']);
      await planWs(client, 'premium');
      client.send('search', 'as premium');
      await client.waitFor(isAnswer('found'), 4);
      // Premium allows 20 per window: 2 spent, so this one is admitted.
      expect(client.events('rate_limit')).toHaveLength(1);
      expect(client.events('found')).toHaveLength(3);
    }, 30_000);

    /**
     * Expected: README "Plans" — a connection whose plan changes "keeps what it spent under
     * the old plan's for when it returns to it"; sliding-log.ts: a log decided under several
     * windows "keeps what the longest window ... need, so a shorter or smaller one never drops
     * what a longer one still counts" (the memory store does: passing case below). On Redis,
     * the log write of a plan with a 1 s window drops the entries older than 1 s
     * (lua-helpers.ts `logWrite`: `edge = now - w`, and PEXPIRE w), so back on the module's
     * plan (2 per 60 s) the two searches made under it a second ago are forgotten and a third
     * and fourth are admitted within the minute. (The block cache is off here, so that this is
     * the log alone.)
     */
    it('ws: a plan with a shorter expensive window leaves what the module plan spent in its longer window (Redis)', async () => {
      const { running } = await startWs({
        ...redisOptions({ blockCache: 0 }),
        expensive: { max: 2, windowMs: 60_000 },
        plans: { burst: { expensive: { max: 2, windowMs: 1000 } } },
        planResolver: resolver,
      });
      const client = await connectWs(running);
      client.send('search', 1);
      client.send('search', 2);
      await client.waitFor(isAnswer('found'), 2);
      expect(client.events('found')).toHaveLength(2);
      await planWs(client, 'burst');
      await sleep(1300);
      client.send('search', 3);
      await client.waitFor(isAnswer('found'), 3);
      // Under burst's 1 s window the two earlier ones have left: admitted.
      expect(client.events('found')).toHaveLength(3);
      await planWs(client, undefined);
      client.send('search', 4);
      await client.waitFor(isAnswer('found'), 4);
      // Back under the module's window: 3 searches within 60 s already, max 2: refused.
      expect(client.events('rate_limit').map((frame) => frame.data.code)).toEqual(['EXPENSIVE_LIMIT']);
      expect(client.events('found')).toHaveLength(3);
    }, 30_000);

    it('ws: plans whose token buckets differ keep their own keys on Redis: a premium chat bucket is not the free one, and back on free the spent free bucket is still spent', async () => {
      const { running } = await startWs({
        ...redisOptions(),
        plans: { premium: { types: { chat: { capacity: 6, refillRate: 0.01 } } } },
        planResolver: resolver,
      });
      const client = await connectWs(running);
      for (let i = 0; i < 5; i++) client.send('chat', i);
      await client.waitFor(isAnswer('ack'), 5);
      expect(client.events('ack')).toHaveLength(4);
      await planWs(client, 'premium');
      for (let i = 0; i < 7; i++) client.send('chat', `p${i}`);
      await client.waitFor(isAnswer('ack'), 12);
      // Premium starts full (6), whatever free spent.
      expect(client.events('ack')).toHaveLength(10);
      await planWs(client, undefined);
      client.send('chat', 'free again');
      await client.waitFor(isAnswer('ack'), 13);
      expect(client.events('ack')).toHaveLength(10);
      expect(client.events('rate_limit').map((frame) => frame.data.code)).toEqual([
        'TYPE_LIMIT',
        'TYPE_LIMIT',
        'TYPE_LIMIT',
      ]);
    }, 30_000);

    it('ws: shadow mode with a plan on Redis: every chat answered, would-be refusals counted with tier type and code TYPE_LIMIT, allowed + shadow_rejected = sent', async () => {
      const registry = new Registry();
      const { running } = await startWs({
        ...redisOptions(),
        shadow: true,
        metrics: true,
        metricsRegistry: registry,
        plans: { premium: { types: { chat: { capacity: 6, refillRate: 0.01 } } } },
        planResolver: resolver,
      });
      const client = await connectWs(running);
      await planWs(client, 'premium');
      client.inOneWrite(() => {
        for (let i = 0; i < 20; i++) client.send('chat', i);
      });
      await client.waitForEvent('ack', 20);
      await settle(() => true, 200);
      expect(client.events('rate_limit')).toEqual([]);
      const allowed = await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'allowed', type: 'chat' });
      const shadow = await metricSum(registry, 'ws_rate_limit_decisions_total', {
        result: 'shadow_rejected',
        tier: 'type',
        code: 'TYPE_LIMIT',
        type: 'chat',
      });
      expect([allowed, shadow]).toEqual([6, 14]);
      expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' })).toBe(0);
    }, 30_000);
  });

  // --- Memory store: the same switches, as the contract says --------------------------------

  describe('on the memory store', () => {
    it('ws: a connection upgraded to a plan with a larger expensive window is admitted under it (memory store)', async () => {
      const { running } = await startWs({
        tracker: 'ip',
        expensive: { max: 2, windowMs: 60_000 },
        plans: { premium: { expensive: { max: 20 } } },
        planResolver: resolver,
      });
      const client = await connectWs(running);
      for (let i = 0; i < 3; i++) client.send('search', i);
      await client.waitFor(isAnswer('found'), 3);
      expect(client.events('found')).toHaveLength(2);
      await planWs(client, 'premium');
      client.send('search', 'as premium');
      await client.waitFor(isAnswer('found'), 4);
      expect(client.events('found')).toHaveLength(3);
      expect(client.events('rate_limit')).toHaveLength(1);
    }, 20_000);

    it("ws: a plan with a shorter expensive window leaves the module plan's longer window intact (memory store)", async () => {
      const { running } = await startWs({
        tracker: 'ip',
        expensive: { max: 2, windowMs: 60_000 },
        plans: { burst: { expensive: { max: 2, windowMs: 1000 } } },
        planResolver: resolver,
      });
      const client = await connectWs(running);
      client.send('search', 1);
      client.send('search', 2);
      await client.waitFor(isAnswer('found'), 2);
      await planWs(client, 'burst');
      await sleep(1300);
      client.send('search', 3);
      await client.waitFor(isAnswer('found'), 3);
      expect(client.events('found')).toHaveLength(3);
      await planWs(client, undefined);
      client.send('search', 4);
      await client.waitFor(isAnswer('found'), 4);
      expect(client.events('rate_limit').map((frame) => frame.data.code)).toEqual(['EXPENSIVE_LIMIT']);
    }, 20_000);

    /**
     * Expected: README "What is limited" — unrouted frames "are charged to the tracker's
     * global budget (the connection's by default; under the connection's plan's figures) ...
     * over budget they are violations like any other"; a resolver that cannot name a plan
     * gives "the module's own limits" (README "Plans"), and a tracker function that throws on
     * an unrouted frame is logged and the frame "charged to its connection"
     * (message-pipeline.ts `trackerFailed`). A planResolver that throws (a `user` not set
     * yet: `client.user.tier`) is caught instead by runUnrouted's catch-all and treated as a
     * store failure ("store threw on an unrouted frame ...; the frame was not charged"): the
     * frame is neither charged nor answered, so a flood of unknown events is never refused
     * nor closed. Fault: message-limiter.ts `planNameOf` (the resolver's call is unguarded),
     * reached from message-pipeline.ts `runUnrouted`.
     */
    it('ws: with a planResolver that throws, unknown events are charged under the module limits and answered, and a flood of them is closed', async () => {
      const { running } = await startWs({
        global: { capacity: 5, refillRate: 0.01 },
        violations: { max: 3, windowMs: 60_000 },
        planResolver: (client) => (client as { user: { tier: string } }).user.tier,
      });
      const client = await connectWs(running);
      client.inOneWrite(() => {
        for (let i = 0; i < 20; i++) client.send('nobody-handles-this', i);
      });
      // Module limits: 5 UNKNOWN_EVENT error frames, then GLOBAL_LIMIT refusals, the third closing with 1008.
      const closed = await client.waitClose(5000).catch(() => undefined);
      expect({
        errors: client.events('error').length,
        refused: client.events('rate_limit').length,
        close: closed?.code,
      }).toEqual({ errors: 5, refused: 3, close: 1008 });
    }, 20_000);

    it('socket.io: with a planResolver that throws, events no handler takes are charged and refused, and a flood of them is disconnected', async () => {
      // As the ws case above: README "Unrouted frames" (charged to the global budget, "over
      // budget they are violations like any other"); the module's limits when no plan is named.
      const { running } = await startIo({
        global: { capacity: 5, refillRate: 0.01 },
        violations: { max: 3, windowMs: 60_000 },
        planResolver: (client) => (client as { user: { tier: string } }).user.tier,
      });
      const client = await connectSio(running);
      for (let i = 0; i < 20; i++) client.socket.emit('nobody-handles-this', i);
      await client.disconnected(5000).catch(() => undefined);
      expect({ refused: client.of('rate_limit').length, disconnected: client.disconnectReason !== undefined }).toEqual({
        refused: 3,
        disconnected: true,
      });
    }, 20_000);

    /**
     * Expected: a promise the library is handed and drops must not become an unhandled
     * rejection (Node ends the process on one by default). The library handles exactly this
     * for `skipIf` (message-pipeline.ts `skipped`: "(answer as Promise).then(undefined, ...)",
     * README: "a promise (an async skipIf) is logged as an error and the message is limited").
     * An `async` planResolver (a plan looked up in a database: the common case) that rejects is
     * read by message-limiter.ts `planNameOf` as the unknown plan name "[object Promise]"
     * (the module's limits apply) and nothing handles its rejection: with a resolver that
     * rejects, one unhandled rejection per message (seen while writing this test: Jest failed
     * the whole file with "plan lookup failed"). Fix: in `planNameOf`, treat a thenable like
     * skipIf's (attach a no-op rejection handler, log once that the resolver must be
     * synchronous, use the module's limits).
     */
    it('ws: a promise returned by the planResolver gets a rejection handler (an async resolver that rejects is no unhandled rejection)', async () => {
      // A rejecting promise would end this test file (Jest fails a suite on an unhandled
      // rejection), so the resolver returns one that never settles and records whether
      // anyone attached a rejection handler to it (`catch`, `then(_, f)`, or `await`).
      const handled: boolean[] = [];
      class Watched<T> extends Promise<T> {
        override then<A = T, B = never>(
          onFulfilled?: ((value: T) => A | PromiseLike<A>) | null,
          onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null,
        ): Promise<A | B> {
          if (typeof onRejected === 'function') handled.push(true);
          return super.then(onFulfilled, onRejected);
        }
      }
      const returned: Watched<string>[] = [];
      const { running } = await startWs({
        planResolver: (() => {
          const promise = new Watched<string>(() => undefined);
          returned.push(promise);
          return promise;
        }) as unknown as WsRateLimitModuleOptions['planResolver'],
      });
      const client = await connectWs(running);
      client.send('chat', 1);
      await settle(() => returned.length > 0, 300);
      expect(returned.length).toBeGreaterThan(0);
      expect(handled.length).toBeGreaterThanOrEqual(returned.length);
    }, 20_000);

    it('a resolver naming plans no one configured (chosen by clients) gets the module limits, and at most 16 names are warned about, then one line', async () => {
      const { running } = await startWs({
        plans: { premium: { types: { chat: { capacity: 100, refillRate: 50 } } } },
        planResolver: resolver,
      });
      const client = await connectWs(running);
      for (let i = 0; i < 30; i++) await planWs(client, `invented-${i}`);
      for (let i = 0; i < 6; i++) client.send('chat', i);
      await client.waitFor(isAnswer('ack'), 6);
      // The module's chat bucket (4): not premium's, not unlimited.
      expect(client.events('ack')).toHaveLength(4);
      const planWarnings = warnings.filter((line) => line.startsWith('planResolver returned'));
      expect(planWarnings).toHaveLength(17);
      expect(planWarnings[16]).toMatch(/more than 16 unknown plan names/);
    }, 20_000);

    it('ws: status, reset and consume of a socket follow its plan, and after a switch the new one', async () => {
      const { running } = await startWs({
        plans: { premium: { types: { chat: { capacity: 6, refillRate: 0.01 } } } },
        planResolver: resolver,
      });
      const client = await connectWs(running);
      const limits = async (data: { reset?: boolean; consume?: boolean } = {}) => {
        const before = client.events('limits').length;
        client.send('limits', data);
        const frames = await client.waitForEvent('limits', before + 1);
        return frames[before]!.data as {
          plan: string;
          chat: { remaining: number; capacity: number };
          consumed?: boolean;
        };
      };
      await planWs(client, 'premium');
      for (let i = 0; i < 6; i++) client.send('chat', i);
      await client.waitForEvent('ack', 6);
      let status = await limits({ consume: true });
      expect(status).toMatchObject({ plan: 'premium', consumed: false, chat: { remaining: 0, capacity: 6 } });
      status = await limits({ reset: true });
      expect(status).toMatchObject({ plan: 'premium', chat: { remaining: 6, capacity: 6 } });
      await planWs(client, undefined);
      status = await limits();
      expect(status).toMatchObject({ plan: 'default', chat: { remaining: 4, capacity: 4 } });
      for (let i = 0; i < 5; i++) client.send('chat', `d${i}`);
      await client.waitFor(isAnswer('ack'), 11);
      expect(client.events('ack')).toHaveLength(10);
      expect(client.events('rate_limit')).toHaveLength(1);
    }, 20_000);

    it('ws: shadow mode with two plans: every chat answered, nothing refused or closed, would-be refusals counted per plan figures (tier type, TYPE_LIMIT), events$ agree', async () => {
      const registry = new Registry();
      const { running, limiter } = await startWs({
        shadow: true,
        metrics: true,
        metricsRegistry: registry,
        violations: { max: 3, windowMs: 60_000 },
        plans: {
          free: { types: { chat: { capacity: 3, refillRate: 0.01 } } },
          premium: { types: { chat: { capacity: 6, refillRate: 0.01 } } },
        },
        planResolver: resolver,
      });
      const events: RateLimitEvent[] = [];
      const subscription = limiter.events$.subscribe((event) => events.push(event));
      try {
        const free = await connectWs(running);
        const premium = await connectWs(running);
        await planWs(free, 'free');
        await planWs(premium, 'premium');
        for (const client of [free, premium]) {
          client.inOneWrite(() => {
            for (let i = 0; i < 10; i++) client.send('chat', i);
          });
        }
        await free.waitForEvent('ack', 10);
        await premium.waitForEvent('ack', 10);
        await sleep(200);
        expect([...free.events('rate_limit'), ...premium.events('rate_limit')]).toEqual([]);
        expect(free.socket.readyState).toBe(WebSocket.OPEN);
        const allowed = await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'allowed', type: 'chat' });
        const shadow = await metricSum(registry, 'ws_rate_limit_decisions_total', {
          result: 'shadow_rejected',
          tier: 'type',
          code: 'TYPE_LIMIT',
          type: 'chat',
        });
        // free: 3 allowed, 7 would-be; premium: 6 allowed, 4 would-be.
        expect([allowed, shadow]).toEqual([9, 11]);
        expect(await metricSum(registry, 'ws_rate_limit_violations_total', { code: 'TYPE_LIMIT', type: 'chat' })).toBe(
          11,
        );
        const decisions = events.filter((event) => event.kind === 'decision');
        expect(
          decisions.filter((event) => event.kind === 'decision' && !event.allowed && !event.enforced),
        ).toHaveLength(11);
        expect(decisions).toHaveLength(20);
        // 7 would-be violations at a threshold of 3: closes reported, none made.
        expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'violations' })).toBe(0);
        expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'shadow_violations' })).toBe(3);
      } finally {
        subscription.unsubscribe();
      }
    }, 20_000);

    it('socket.io: shadow mode with a plan switched mid-connection: every chat answered, would-be refusals counted under each plan', async () => {
      const registry = new Registry();
      const { running } = await startIo({
        shadow: true,
        metrics: true,
        metricsRegistry: registry,
        violations: { max: 1000, windowMs: 60_000 },
        plans: { premium: { types: { chat: { capacity: 6, refillRate: 0.01 } } } },
        planResolver: resolver,
      });
      const client = await connectSio(running);
      for (let i = 0; i < 6; i++) client.socket.emit('chat', i);
      await client.until(() => client.of('ack').length === 6, 10_000, '6 acks');
      await planIo(client, 'premium');
      for (let i = 0; i < 9; i++) client.socket.emit('chat', `p${i}`);
      await client.until(() => client.of('ack').length === 15, 10_000, '15 acks');
      await sleep(200);
      expect(client.of('rate_limit')).toEqual([]);
      const allowed = await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'allowed', type: 'chat' });
      const shadow = await metricSum(registry, 'ws_rate_limit_decisions_total', {
        result: 'shadow_rejected',
        type: 'chat',
      });
      // Module plan: 4 of 6; premium (its own bucket, full): 6 of 9.
      expect([allowed, shadow]).toEqual([10, 5]);
    }, 20_000);

    it('socket.io: enforced, a plan switched mid-connection: admitted + refused = sent, and decisions_total agrees with what the client saw', async () => {
      const registry = new Registry();
      const { running } = await startIo({
        metrics: true,
        metricsRegistry: registry,
        violations: { max: 1000, windowMs: 60_000 },
        plans: { premium: { types: { chat: { capacity: 6, refillRate: 0.01 } } } },
        planResolver: resolver,
      });
      const client = await connectSio(running);
      for (let i = 0; i < 6; i++) client.socket.emit('chat', i);
      const answers = () => client.of('ack').length + client.of('rate_limit').length;
      await client.until(() => answers() === 6, 10_000, '6 answers');
      await planIo(client, 'premium');
      for (let i = 0; i < 9; i++) client.socket.emit('chat', `p${i}`);
      await client.until(() => answers() === 15, 10_000, '15 answers');
      expect([client.of('ack').length, client.of('rate_limit').length]).toEqual([10, 5]);
      expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'allowed', type: 'chat' })).toBe(10);
      expect(
        await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected', tier: 'type', type: 'chat' }),
      ).toBe(5);
    }, 20_000);

    it('ws: degradation under a plan: the threshold counts refusals under either plan, and DEGRADED refusals are decisions', async () => {
      const registry = new Registry();
      const { running } = await startWs({
        metrics: true,
        metricsRegistry: registry,
        violations: { max: 3, windowMs: 60_000 },
        degradeCooldownMs: 30_000,
        plans: { premium: { types: { chat: { capacity: 6, refillRate: 0.01 } } } },
        planResolver: resolver,
      });
      const client = await connectWs(running);
      for (let i = 0; i < 6; i++) client.send('chat', i); // 4 acks, 2 refused
      await client.waitFor(isAnswer('ack'), 6);
      await planWs(client, 'premium');
      // 6 acks, then the 3rd violation degrades (its frame says DEGRADED).
      for (let i = 0; i < 7; i++) client.send('chat', `p${i}`);
      await client.waitFor(isAnswer('ack'), 13);
      // Degraded now: a chat is refused with DEGRADED, not decided by its tier.
      client.send('chat', 'while degraded');
      await client.waitFor(isAnswer('ack'), 14);
      const codes = client.events('rate_limit').map((frame) => frame.data.code as string);
      expect(client.events('ack')).toHaveLength(10);
      expect(codes).toEqual(['TYPE_LIMIT', 'TYPE_LIMIT', 'DEGRADED', 'DEGRADED']);
      expect(client.socket.readyState).toBe(WebSocket.OPEN);
      expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected', code: 'DEGRADED' })).toBe(
        1,
      );
    }, 20_000);

    /**
     * Expected: README "Metrics" lists `type` as a label of decisions_total; the brief of a
     * label is a bounded set (a Prometheus series per value). The library bounds what clients
     * can invent elsewhere: unknown events are labelled `unknown`, and types named from code
     * are remembered "up to 1,024" (README `reset`; route-resolver.ts MAX_REMEMBERED: "names
     * passed from code may come from clients"). `consume(socket, { type })` with a type a
     * client chose (an app limiting "actions" from the payload) creates one label value per
     * name, without bound (telemetry.ts `decision` -> metrics `allowed(type)`): 1,500 names,
     * 1,500 series.
     */
    it('consume() from code with types a client chooses gives at most 1,024 metrics label values, then (other)', async () => {
      const registry = new Registry();
      const { limiter } = await startWs({ metrics: true, metricsRegistry: registry });
      for (let i = 0; i < 1500; i++) await limiter.consume('user-1', { type: `action-${i}` });
      const metric = (await registry.getMetricsAsJSON()).find(
        (entry) => entry.name === 'ws_rate_limit_decisions_total',
      );
      const types = new Set((metric?.values ?? []).map((value) => String(value.labels['type'])));
      expect(types.size).toBeLessThanOrEqual(1025);
    }, 30_000);
  });
});
