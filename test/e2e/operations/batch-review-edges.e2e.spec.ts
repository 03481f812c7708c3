import { afterEach, describe, expect, it, jest } from '@jest/globals';
import { Logger } from '@nestjs/common';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { IncomingMessage } from 'node:http';
import { createHash } from 'node:crypto';
import { Registry } from 'prom-client';
import {
  ENV_VARIABLES,
  RedisRateLimitStore,
  resolveOptions,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, withEnv, type RunningApp } from '../../support/app.js';
import { ioHarness, joined } from '../../support/io-harness.js';
import { metricSum } from '../../support/metrics.js';
import { TestClient } from '../../support/ws-client.js';

// Adversarial review of the second batch of this session's fixes (9c5b06f..e9872cf):
// types from code past 1,024 known types sharing `(other)` (route-resolver.ts `specsFor`),
// tracker names over 256 characters keyed `key#<sha256>` (tracker.ts), the per-process
// count of open connections per address (connection-admission.ts), the Redis lease TTL's
// minimum, the warning for plans without a planResolver, IPv4-mapped addresses in any
// notation (client-ip.ts) and numeric socket.io event names.
// Three cases failed on e9872cf and were fixed: status() of a type past the cap read the
// type's own (never spent) bucket, not the shared one its consume() spends, and reset() of
// a socket or a name left the shared `(other)` bucket spent (the resolver's `bucketOf` now
// names a type's bucket for status too, and a reset takes `(other)` with the rest).

/** Answers `ping`, and records the latest connection for spending from code. */
/** Refuses, in its own verifyClient, upgrades that carry `x-refuse` (after the limiter admitted them). */
@WebSocketGateway({ verifyClient: (info: { req: IncomingMessage }) => info.req.headers['x-refuse'] === undefined })
@WsRateLimit()
class VerifyingGateway {
  @SubscribeMessage('ping')
  ping(@MessageBody() data: unknown) {
    return { event: 'pong', data };
  }
}

@WebSocketGateway()
@WsRateLimit()
class EdgeGateway {
  static latest: object | undefined;

  constructor(private readonly limiter: WsRateLimitService) {}

  handleConnection(client: object): void {
    EdgeGateway.latest = client;
  }

  @SubscribeMessage('ping')
  ping(@MessageBody() data: unknown) {
    return { event: 'pong', data };
  }

  @SubscribeMessage('whoami')
  async whoami(@ConnectedSocket() client: object) {
    return { event: 'whoami', data: (await this.limiter.status(client)).tracker };
  }
}

/** The `key#...` a tracker name over 256 characters is keyed by (README: "keyed by its SHA-256 digest"). */
const digestKey = (name: string): string => `key#${createHash('sha256').update(name, 'utf16le').digest('base64url')}`;

describe('batch review (ws, WsRateLimitAdapter, memory store)', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions, gateway: object = EdgeGateway) => {
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false, ...options })],
        providers: [gateway as never],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    return running.app.get(WsRateLimitService);
  };
  const connect = async (headers: Record<string, string> = {}) => {
    const client = await TestClient.connect(running!.url, { headers });
    clients.push(client);
    return client;
  };
  const attempt = (headers: Record<string, string> = {}) =>
    TestClient.connect(running!.url, { headers }).then(
      (client) => {
        clients.push(client);
        return 'accepted';
      },
      (error: Error) => error.message,
    );
  /** Sends one ping and waits for its answer: `pong`, or the `rate_limit` frame's code. */
  const ping = async (client: TestClient): Promise<string> => {
    const before = client.frames.length;
    client.send('ping', before);
    const [frame] = (await client.waitFor(() => client.frames.length > before)).slice(before);
    if (frame!.event === 'pong') return 'pong';
    return String((frame!.data as { code?: unknown } | undefined)?.code ?? JSON.stringify(frame));
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  describe('(1) types from code past 1,024 known types share (other)', () => {
    const overflowOptions: WsRateLimitModuleOptions = {
      global: { capacity: 1_000_000, refillRate: 1_000_000 },
      // Each type bucket: 2 at once, then next to nothing for the length of a test.
      type: { capacity: 2, refillRate: 0.01 },
      types: { named: { capacity: 2, refillRate: 0.01 } },
    };
    /** Spends one message of 1,100 fresh types, so that the last ones are past the cap. */
    const fill = async (limiter: WsRateLimitService, target: string | object) => {
      for (let i = 0; i < 1100; i++) await limiter.consume(target, { type: `kind-${i}` });
    };

    it('past the cap, fresh types share one bucket, and peek() reads the bucket consume() spends', async () => {
      const limiter = await start(overflowOptions);
      await connect();
      const socket = EdgeGateway.latest!;
      await fill(limiter, socket);
      // kind-1098 and kind-1099 were both past the cap: the shared bucket of 2 is spent.
      expect((await limiter.consume(socket, { type: 'fresh-a' })).allowed).toBe(false);
      const peeked = await limiter.peek(socket, { type: 'fresh-b' });
      expect(peeked.find((tier) => tier.tier === 'type')?.remaining).toBe(0);
      // A type the options name keeps its own bucket past the cap, as does a handler's type.
      expect((await limiter.consume(socket, { type: 'named' })).allowed).toBe(true);
      expect((await limiter.consume(socket, { type: 'ping' })).allowed).toBe(true);
    });

    it('status() of a type past the cap reports the bucket consume() spends, not a full one', async () => {
      // README (`WsRateLimitService`): "status(target, types?): remaining budget per tier"
      // and "once 1,024 types are known, types the options do not name share one bucket,
      // (other)". consume() and peek() of such a type go to (other), but status() builds the
      // type's tier from `typeSpec(name)`, i.e. its own never-spent bucket `t:<name>`: it says
      // 2 of 2 left while consume() of that very type is refused.
      const limiter = await start(overflowOptions);
      await connect();
      const socket = EdgeGateway.latest!;
      await fill(limiter, socket);
      expect((await limiter.consume(socket, { type: 'fresh-c' })).allowed).toBe(false);
      const status = await limiter.status(socket, ['fresh-c']);
      expect(status.types['fresh-c']?.remaining).toBe(0);
    });

    it('reset() gives the shared (other) bucket back too', async () => {
      // README: "reset(target): full budgets back (in the types the limiter knows ...)". Types
      // past the cap spend (other), which reset() does not know of (it resets `t:<type>` of
      // the types recorded, and (other) is never recorded): after reset() a type past the cap
      // is still refused.
      const limiter = await start(overflowOptions);
      await connect();
      const socket = EdgeGateway.latest!;
      await fill(limiter, socket);
      expect((await limiter.consume(socket, { type: 'fresh-d' })).allowed).toBe(false);
      await limiter.reset(socket);
      // Its own types are full again ...
      expect((await limiter.consume(socket, { type: 'kind-0' })).allowed).toBe(true);
      // ... and so should be the bucket a type past the cap spends.
      expect((await limiter.consume(socket, { type: 'fresh-e' })).allowed).toBe(true);
    });

    it('reset(name) gives back the (other) bucket of a named tracker (a string target)', async () => {
      // The same for a tracker named by a string, whose budgets live in the store.
      const limiter = await start(overflowOptions);
      await fill(limiter, 'user-1');
      expect((await limiter.consume('user-1', { type: 'fresh-f' })).allowed).toBe(false);
      await limiter.reset('user-1');
      expect((await limiter.consume('user-1', { type: 'fresh-g' })).allowed).toBe(true);
    });

    it('the metrics label of a type past the cap is (other), as its bucket is', async () => {
      const registry = new Registry();
      const limiter = await start({ ...overflowOptions, metrics: true, metricsRegistry: registry });
      await connect();
      const socket = EdgeGateway.latest!;
      await fill(limiter, socket);
      await limiter.consume(socket, { type: 'fresh-h' });
      expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { type: 'fresh-h' })).toBe(0);
      expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { type: '(other)' })).toBeGreaterThan(0);
    });

    it('a handler type first charged after the cap keeps its own bucket for its messages and from code', async () => {
      // The gateway's handlers are resolved at start-up, before any type from code.
      const limiter = await start(overflowOptions);
      const client = await connect();
      const socket = EdgeGateway.latest!;
      await fill(limiter, socket);
      expect(await ping(client)).toBe('pong');
      expect((await limiter.consume(socket, { type: 'ping' })).allowed).toBe(true);
      // The handler's bucket of 2 is now spent by one message and one call from code.
      expect(await ping(client)).toBe('TYPE_LIMIT');
    });
  });

  describe('(2) tracker names over 256 characters', () => {
    const long = 'u'.repeat(300);
    const byHeader = {
      tracker: (_client: unknown, context: { request?: IncomingMessage }) =>
        (context.request?.headers['x-user'] as string | undefined) ?? undefined,
    } as const;

    it('a name of exactly 256 characters is keyed key:<name>, one of 257 by its digest', async () => {
      const limiter = await start({ ...byHeader });
      const at = 'a'.repeat(256);
      const past = 'a'.repeat(257);
      expect(await whoami(await connect({ 'x-user': at }))).toBe(`key:${at}`);
      expect(await whoami(await connect({ 'x-user': past }))).toBe(digestKey(past));
      expect((await limiter.status(past)).tracker).toBe(digestKey(past));
    });

    it('block(), listBlocks() and unblock() with a long name act on its connections', async () => {
      const limiter = await start({ ...byHeader });
      const client = await connect({ 'x-user': long });
      expect(await ping(client)).toBe('pong');
      await limiter.block(long, 60_000);
      expect(Object.keys(limiter.listBlocks())).toEqual([digestKey(long)]);
      expect(await ping(client)).toBe('BLOCKED');
      await limiter.unblock(long);
      expect(limiter.listBlocks()).toEqual({});
      expect(await ping(client)).toBe('pong');
    });

    it('the deny list closes, and the allow list frees, a long tracker name', async () => {
      await start({ ...byHeader, denyList: [long], type: { capacity: 1, refillRate: 0.01 } });
      const denied = await connect({ 'x-user': long });
      denied.send('ping');
      expect((await denied.waitClose()).code).toBe(1008);
      await running!.close();
      await start({ ...byHeader, allowList: [long], type: { capacity: 1, refillRate: 0.01 } });
      const allowed = await connect({ 'x-user': long });
      for (let i = 0; i < 4; i++) expect(await ping(allowed)).toBe('pong');
    });

    it('consume(), reset() and events$ name a long tracker as its connections do', async () => {
      const limiter = await start({ ...byHeader, type: { capacity: 2, refillRate: 0.01 } });
      const events: RateLimitEvent[] = [];
      const subscription = limiter.events$.subscribe((event) => events.push(event));
      try {
        const client = await connect({ 'x-user': long });
        expect((await limiter.consume(long, { type: 'ping' })).allowed).toBe(true);
        expect(await ping(client)).toBe('pong');
        expect(await ping(client)).toBe('TYPE_LIMIT');
        await limiter.reset(long);
        expect(await ping(client)).toBe('pong');
        const trackers = new Set(
          events.filter((event) => event.kind === 'decision').map((event) => (event as { tracker: string }).tracker),
        );
        expect([...trackers]).toEqual([digestKey(long)]);
      } finally {
        subscription.unsubscribe();
      }
    });

    it('a tracker function answering a number shares the budget of its digits', async () => {
      const limiter = await start({
        // A numeric user id (README: a finite number is read as its digits); typed as a string.
        tracker: (_client: unknown, context: { request?: IncomingMessage }) =>
          Number(context.request?.headers['x-user']) as unknown as string,
        type: { capacity: 2, refillRate: 0.01 },
      });
      const client = await connect({ 'x-user': '12345' });
      expect((await limiter.consume('12345', { type: 'ping' })).allowed).toBe(true);
      expect(await ping(client)).toBe('pong');
      expect(await ping(client)).toBe('TYPE_LIMIT');
    });

    const whoami = async (client: TestClient) => {
      const before = client.events('whoami').length;
      client.send('whoami');
      return (await client.waitForEvent('whoami', before + 1))[before]!.data as string;
    };
  });

  describe('(3) the per-process count of open connections per address', () => {
    const capped = { maxConnectionsPerIp: 2, connection: { capacity: 1_000_000, refillRate: 1_000_000 } };
    const openSlots = async (limiter: WsRateLimitService) =>
      (await limiter.connectionStatus('127.0.0.1')).find((tier) => tier.tier === 'concurrency')?.remaining;

    it('is released exactly once: 30 connections opened and closed one after another leave the cap whole and exact', async () => {
      const limiter = await start(capped);
      for (let i = 0; i < 30; i++) await (await connect()).close();
      clients.length = 0;
      await waitFor(async () => (await openSlots(limiter)) === 2);
      expect(await attempt()).toBe('accepted');
      expect(await attempt()).toBe('accepted');
      expect(await attempt()).toBe('HTTP 429');
    });

    it("does not leak the slot of an upgrade the gateway's own verifyClient refuses after admission", async () => {
      const limiter = await start(capped, VerifyingGateway);
      for (let i = 0; i < 6; i++) expect(await attempt({ 'x-refuse': '1' })).toMatch(/^HTTP 4/);
      await waitFor(async () => (await openSlots(limiter)) === 2);
      expect(await attempt()).toBe('accepted');
      expect(await attempt()).toBe('accepted');
      expect(await attempt()).toBe('HTTP 429');
      // One closed: its slot comes back in the store and in the process's count.
      await clients.shift()!.close();
      await waitFor(async () => (await openSlots(limiter)) === 1);
      expect(await attempt()).toBe('accepted');
    });

    it('does not count allow-listed addresses, and shadow mode leaves nothing behind', async () => {
      const allowed = await start({ ...capped, maxConnectionsPerIp: 1, allowList: ['127.0.0.1'] });
      for (let i = 0; i < 3; i++) expect(await attempt()).toBe('accepted');
      expect(await openSlots(allowed)).toBe(1);
      await Promise.all(clients.splice(0).map((client) => client.close()));
      await running!.close();
      const shadow = await start({ ...capped, maxConnectionsPerIp: 1, shadow: true });
      for (let i = 0; i < 3; i++) expect(await attempt()).toBe('accepted');
      await Promise.all(clients.splice(0).map((client) => client.close()));
      await waitFor(async () => (await openSlots(shadow)) === 1);
      // Whatever shadow mode let through, the cap is whole once they are gone.
      const events: RateLimitEvent[] = [];
      const subscription = shadow.events$.subscribe((event) => events.push(event));
      try {
        expect(await attempt()).toBe('accepted');
        expect(events.filter((event) => event.kind === 'connection')).toEqual([
          // An accepted connection is no refusal let through: enforced, as an allowed decision.
          expect.objectContaining({ accepted: true, enforced: true }),
        ]);
        expect(events.some((event) => 'reason' in event)).toBe(false);
      } finally {
        subscription.unsubscribe();
      }
    });
  });
});

describe('(4) the Redis lease TTL minimum, (5) the plans warning', () => {
  const NO_ENV = Object.fromEntries(ENV_VARIABLES.map((variable) => [variable.name, undefined]));

  it('WS_RATE_LIMIT_REDIS_LEASE_TTL_MS under 1000 stops start-up naming the variable; 1000 is taken', () => {
    // Resolving options connects to nothing: the URL names a port nothing listens on.
    const vars = (ttl: string): Record<string, string> => ({
      WS_RATE_LIMIT_STORE: 'redis',
      WS_RATE_LIMIT_REDIS_URL: 'redis://127.0.0.1:1',
      WS_RATE_LIMIT_REDIS_LEASE_TTL_MS: ttl,
    });
    const env = (ttl: string) => (name: string) => vars(ttl)[name];
    for (const ttl of ['999', '1', '0']) {
      expect(() => resolveOptions({}, env(ttl))).toThrow(/WS_RATE_LIMIT_REDIS_LEASE_TTL_MS.*1000/);
    }
    expect(() =>
      resolveOptions({ store: 'redis', redis: { url: 'redis://127.0.0.1:1', leaseTtlMs: 999.5 } }, () => undefined),
    ).toThrow(/redis\.leaseTtlMs/);
    expect(resolveOptions({}, env('1000')).redis.leaseTtlMs).toBe(1000);
  });

  it("the Redis store's own leaseTtlMs takes at least 1000", () => {
    for (const leaseTtlMs of [1, 999, 999.9]) {
      expect(() => new RedisRateLimitStore({ client: {} as never, leaseTtlMs })).toThrow(/leaseTtlMs/);
    }
  });

  it('plans read from WS_RATE_LIMIT_PLANS without a planResolver are warned of at start-up', async () => {
    const warnings: string[] = [];
    const spy = jest.spyOn(Logger.prototype, 'warn').mockImplementation((message: unknown) => {
      warnings.push(String(message));
    });
    const quiet = jest.spyOn(Logger.prototype, 'log').mockImplementation(() => undefined);
    try {
      await withEnv(
        { ...NO_ENV, WS_RATE_LIMIT_PLANS: '{"free":{"global":{"capacity":10,"refillRate":5}}}' },
        async () => {
          const running = await startApp(
            { imports: [WsRateLimitModule.forRoot({ metrics: false })], providers: [EdgeGateway] },
            (app) => new WsRateLimitAdapter(app),
          );
          await running.close();
        },
      );
      expect(warnings.filter((line) => line.includes('planResolver'))).toEqual([
        "plans free are configured but no planResolver picks them: every connection gets the module's own limits (give option planResolver)",
      ]);
    } finally {
      spy.mockRestore();
      quiet.mockRestore();
    }
  });
});

describe('(6) IPv4-mapped addresses in any notation reach tracker functions as IPv4', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  it('a tracker function sees address and ip unmapped, and a mapped-looking IPv6 address stays IPv6', async () => {
    running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            metrics: false,
            trustProxy: 'loopback',
            tracker: (_client: unknown, context: { ip?: string; address?: string }) =>
              `${context.address}|${context.ip}`,
          }),
        ],
        providers: [EdgeGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    const seen = async (forwarded: string) => {
      const client = await TestClient.connect(running!.url, { headers: { 'X-Forwarded-For': forwarded } });
      clients.push(client);
      client.send('whoami');
      return (await client.waitForEvent('whoami'))[0]!.data as string;
    };
    for (const spelling of [
      '::ffff:102:304',
      '::FFFF:0102:0304',
      '0:0:0:0:0:ffff:1.2.3.4',
      '0::ffff:1.2.3.4',
      '[::ffff:102:304]:443',
    ]) {
      expect(await seen(spelling)).toBe('key:1.2.3.4|1.2.3.4');
    }
    // Neither an IPv4-translated (::ffff:0:a.b.c.d) nor an IPv4-compatible address is mapped.
    expect(await seen('::ffff:0:102:304')).toBe('key:::ffff:0:102:304|::/64');
    expect(await seen('::102:304')).toBe('key:::102:304|::/64');
  });
});

describe('socket.io: (3) open-connection slots of namespaces, (7) numeric event names', () => {
  const harness = ioHarness();
  afterEach(() => harness.close());

  @WebSocketGateway()
  @WsRateLimit()
  class NumericGateway {
    @SubscribeMessage('5')
    five(@MessageBody() data: unknown) {
      return { event: 'five', data };
    }
  }

  @WebSocketGateway({ namespace: '/b' })
  @WsRateLimit()
  class SecondNamespaceGateway {
    @SubscribeMessage('ping')
    ping(@MessageBody() data: unknown) {
      return { event: 'pong', data };
    }
  }

  it('the per-process open-connection count: namespaces of one connection hold one slot, given back at its close', async () => {
    const url = await harness.start([NumericGateway, SecondNamespaceGateway], {
      maxConnectionsPerIp: 2,
      connection: { capacity: 1_000_000, refillRate: 1_000_000 },
    });
    const limiter = harness.limiter();
    const first = harness.manager(url, 'websocket');
    expect(await joined(first.socket('/'))).toBe('connected');
    expect(await joined(first.socket('/b'))).toBe('connected');
    const second = harness.manager(url, 'websocket');
    expect(await joined(second.socket('/b'))).toBe('connected');
    expect(await joined(harness.manager(url, 'websocket').socket('/'))).not.toBe('connected');
    first.engine.close();
    await waitFor(
      async () =>
        (await limiter.connectionStatus('127.0.0.1')).find((tier) => tier.tier === 'concurrency')?.remaining === 1,
    );
    expect(await joined(harness.manager(url, 'websocket').socket('/'))).toBe('connected');
    expect(await joined(harness.manager(url, 'polling').socket('/b'))).not.toBe('connected');
  });

  it("an event sent as the number 5 and as '5' spends the handler's one bucket, once a message", async () => {
    const url = await harness.start([NumericGateway], { type: { capacity: 3, refillRate: 0.01 } });
    const client = await harness.connect(url, 'websocket');
    const emit = client.socket.emit.bind(client.socket) as unknown as (event: unknown, data: unknown) => void;
    emit(5, 1);
    emit('5', 2);
    emit(5, 3);
    emit('5', 4);
    await client.until(() => client.of('five').length + client.of('rate_limit').length === 4);
    expect(client.of('five')).toEqual([1, 2, 3]);
    expect(client.of('rate_limit')).toEqual([expect.objectContaining({ code: 'TYPE_LIMIT' })]);
  });
});

async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
