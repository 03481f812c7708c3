/**
 * Review of WsRateLimitService used from application code (lib/services/ws-rate-limit.service.ts,
 * lib/pipeline/message-limiter.ts, lib/plans/): `consume`, `peek`, `status`, `connectionStatus`,
 * `stats`, `reset`, `block`/`unblock`/`listBlocks`, on the memory store and on a real Redis
 * started here. Targets: tracker names, IP addresses, ws sockets (own, closed, another app's,
 * look-alikes). Questions: does code spend the budget a socket's messages spend, does `peek`
 * never consume, does `status` agree with the next frame, is bad input refused with a clear
 * error and no leaked state, do concurrent `consume` calls on Redis never over-admit, and do
 * blocks cross instances.
 *
 * Nine cases failed on the reviewed code (df5808c), and are fixed: `block()` kept an address
 * with a port or in brackets as a tracker name; `consume('')` spent a tracker `key:` and
 * `consume(null)` failed inside the registry; `expensive: 'false'` counted in the expensive
 * window; a 100,000-character type was kept whole in Redis and in the resolver (types from
 * code are now at most 256 characters); `status()` listed every type code had named, another
 * client's text among them (now the handlers', the options' and the asked); `connectionStatus`
 * answered anything with a full bucket; a socket look-alike was counted as a connection that
 * never closes; a socket of another application was spent as this one's connection of the same
 * id, and its keys outlived its close (now a TypeError).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { ConfigModule } from '@nestjs/config';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Registry } from 'prom-client';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { startApp, type RunningApp } from '../support/app.js';
import { ioHarness } from '../support/io-harness.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { sleep, TestClient, type Frame } from '../support/ws-client.js';

/** Keeps the server side of every socket it sees, and answers chat (5 burst, slow) and one (1 burst, slow). */
@WebSocketGateway()
@WsRateLimit()
class ReviewGateway {
  readonly sockets: object[] = [];

  handleConnection(client: object): void {
    this.sockets.push(client);
  }

  @Throttle({ type: 'chat', capacity: 5, refillRate: 0.1 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'one', capacity: 1, refillRate: 0.1 })
  @SubscribeMessage('one')
  one(@ConnectedSocket() _client: object, @MessageBody() data: unknown) {
    return { event: 'ack1', data };
  }
}

describe('WsRateLimitService from code (review)', () => {
  let redis: RedisServer;
  const apps: RunningApp[] = [];
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}, store: 'redis' | 'memory' = 'redis') => {
    const { redis: redisOptions, ...rest } = options;
    const registry = new Registry();
    const running = await startApp(
      {
        imports: [
          ConfigModule.forRoot({ ignoreEnvFile: true }),
          WsRateLimitModule.forRoot({
            metricsRegistry: registry,
            ...(store === 'redis'
              ? { store: 'redis', redis: { url: redis.url, ...redisOptions } }
              : { store: 'memory' }),
            ...rest,
          } as WsRateLimitModuleOptions),
        ],
        providers: [ReviewGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    apps.push(running);
    return {
      running,
      registry,
      limiter: running.app.get(WsRateLimitService),
      gateway: running.app.get(ReviewGateway),
    };
  };

  /** Connects a client and returns it with the server side of its socket. */
  const connect = async (
    app: { running: RunningApp; gateway: ReviewGateway },
    options: Record<string, unknown> = {},
    search = '',
  ): Promise<{ client: TestClient; server: object }> => {
    const before = app.gateway.sockets.length;
    const client = await TestClient.connect(`${app.running.url}/${search}`, options);
    clients.push(client);
    for (let i = 0; i < 500 && app.gateway.sockets.length === before; i++) await sleep(5);
    const server = app.gateway.sockets[before];
    if (server === undefined) throw new Error('the gateway did not see the connection');
    return { client, server };
  };

  const redisKeys = async (): Promise<string[]> => {
    const keys = (await redis.command('KEYS', '*')) as string[];
    return keys.filter((key) => !key.includes('blocks')).sort();
  };

  beforeAll(async () => {
    redis = await startRedis();
  }, 60_000);
  afterEach(async () => {
    for (const client of clients.splice(0)) await client.close().catch(() => undefined);
    for (const app of apps.splice(0)) await app.close().catch(() => undefined);
    await redis.command('FLUSHALL').catch(() => undefined);
  }, 60_000);
  afterAll(() => redis.stop(), 60_000);

  /** The `user` and `plan` query parameters of a connection's upgrade request. */
  const query = (context: { request?: { url?: string } | undefined }, name: string): string | undefined =>
    new URL(context.request?.url ?? '/', 'http://x').searchParams.get(name) ?? undefined;

  /** Sends `count` chats and waits for as many answers (acks and rate_limit frames). */
  const chats = async (client: TestClient, count: number, event = 'chat'): Promise<Frame[]> => {
    const before = client.frames.length;
    for (let i = 0; i < count; i++) client.send(event, i);
    await client.waitFor(() => true, before + count);
    return client.frames.slice(before);
  };

  describe('code spends the budget the socket messages spend', () => {
    for (const store of ['memory', 'redis'] as const) {
      it(`${store}: consume('user-1') with a tracker function is what user-1's socket then lacks; the refusal matches status()`, async () => {
        const a = await start({ tracker: (_client, context) => query(context, 'user') }, store);
        const { client } = await connect(a, {}, '?user=user-1');
        for (let i = 0; i < 3; i++) expect((await a.limiter.consume('user-1', { type: 'chat' })).allowed).toBe(true);
        const status = await a.limiter.status('user-1');
        expect(status.tracker).toBe('key:user-1');
        expect(status.types['chat']!.remaining).toBe(2);
        const answers = await chats(client, 3);
        expect(answers.map((frame) => frame.event)).toEqual(['ack', 'ack', 'rate_limit']);
        expect(answers[2]!.data).toMatchObject({ code: 'TYPE_LIMIT', limit: 5, remaining: 0 });
        // The refused message spent nothing: status says 0 left, and nothing else.
        const after = await a.limiter.status('user-1');
        expect(after.types['chat']!.remaining).toBe(0);
        // retryAfter is the wait for one token: what status says is left to full, less the 4 other tokens (10 s each).
        const oneToken = after.types['chat']!.resetIn - 4 * 10_000;
        expect(Math.abs((answers[2]!.data as { retryAfter: number }).retryAfter - oneToken)).toBeLessThan(1_000);
      }, 60_000);

      it(`${store}: status() of a socket agrees with its next frame: refused exactly at remaining 0, retryAfter = resetIn`, async () => {
        const a = await start({}, store);
        const { client, server } = await connect(a);
        expect((await a.limiter.consume(server, { type: 'one' })).allowed).toBe(true);
        const status = await a.limiter.status(server);
        expect(status.types['one']).toMatchObject({ remaining: 0, capacity: 1 });
        const asked = performance.now();
        const [frame] = await chats(client, 1, 'one');
        const elapsed = performance.now() - asked;
        expect(frame!.event).toBe('rate_limit');
        const retryAfter = (frame!.data as { retryAfter: number }).retryAfter;
        // A one-token bucket: the wait for one token is the wait to full.
        expect(retryAfter).toBeLessThanOrEqual(status.types['one']!.resetIn + 5);
        expect(retryAfter).toBeGreaterThanOrEqual(status.types['one']!.resetIn - elapsed - 50);
        // And chat, 2 spent from code: exactly 3 more pass.
        for (let i = 0; i < 2; i++) await a.limiter.consume(server, { type: 'chat' });
        expect((await a.limiter.status(server)).types['chat']!.remaining).toBe(3);
        expect((await chats(client, 4)).map((f) => f.event)).toEqual(['ack', 'ack', 'ack', 'rate_limit']);
      }, 60_000);
    }

    it("redis: a socket on a named plan: consume(socket) spends the plan's bucket its messages spend (limit 10), a name the module's", async () => {
      const a = await start({
        tracker: (_client, context) => query(context, 'user'),
        plans: { premium: { types: { chat: { capacity: 10, refillRate: 0.1 } } } },
        planResolver: (_client, context) => query(context, 'plan'),
      });
      const { client, server } = await connect(a, {}, '?user=p1&plan=premium');
      for (let i = 0; i < 8; i++) expect((await a.limiter.consume(server, { type: 'chat' })).allowed).toBe(true);
      const status = await a.limiter.status(server);
      expect(status.plan).toBe('premium');
      expect(status.types['chat']).toMatchObject({ remaining: 2, capacity: 10 });
      // README: a string's calls use the module's own limits, so the premium bucket is not among them.
      expect((await a.limiter.status('p1')).types['chat']).toMatchObject({ remaining: 5, capacity: 5 });
      const answers = await chats(client, 3);
      expect(answers.map((frame) => frame.event)).toEqual(['ack', 'ack', 'rate_limit']);
      expect(answers[2]!.data).toMatchObject({ limit: 10, remaining: 0 });
      // reset of the name resets every plan's buckets.
      await a.limiter.reset('p1');
      expect((await a.limiter.status(server)).types['chat']!.remaining).toBe(10);
    }, 60_000);

    it("redis: with tracker 'ip', consume('::ffff:127.0.0.1') spends what the 127.0.0.1 connection's messages spend", async () => {
      const a = await start({ tracker: 'ip' });
      const { client, server } = await connect(a);
      for (let i = 0; i < 4; i++) await a.limiter.consume('::ffff:127.0.0.1', { type: 'chat' });
      expect((await a.limiter.status(server)).tracker).toBe('ip:127.0.0.1');
      expect((await a.limiter.status('127.0.0.1')).types['chat']!.remaining).toBe(1);
      expect((await chats(client, 2)).map((frame) => frame.event)).toEqual(['ack', 'rate_limit']);
      const [mapped] = await a.limiter.connectionStatus('::ffff:127.0.0.1');
      expect(mapped).toMatchObject({ tier: 'connection', limit: 5, remaining: 4 });
      expect((await a.limiter.connectionStatus('127.0.0.1'))[0]).toMatchObject({ remaining: mapped!.remaining });
    }, 60_000);
  });

  describe('socket.io on Redis', () => {
    const io = ioHarness();
    afterEach(() => io.close(), 30_000);

    it('consume(socket.io socket) spends the chat bucket its events spend; status and peek agree', async () => {
      const url = await io.start([ReviewGateway], { store: 'redis', redis: { url: redis.url } });
      const gateway = io.app().get(ReviewGateway);
      const limiter = io.limiter();
      const client = await io.connect(url, 'websocket');
      await client.until(() => gateway.sockets.length === 1);
      const server = gateway.sockets[0]!;
      for (let i = 0; i < 4; i++) expect((await limiter.consume(server, { type: 'chat' })).allowed).toBe(true);
      expect((await limiter.status(server)).types['chat']!.remaining).toBe(1);
      expect((await limiter.peek(server, { type: 'chat' }))[1]!.remaining).toBe(1);
      client.socket.emit('chat', 1);
      client.socket.emit('chat', 2);
      await client.until(() => client.of('ack').length + client.of('rate_limit').length >= 2);
      expect(client.of('ack')).toHaveLength(1);
      expect(client.of('rate_limit')[0]).toMatchObject({ code: 'TYPE_LIMIT', remaining: 0 });
    }, 60_000);
  });

  describe('peek never consumes', () => {
    for (const [store, redisOptions] of [
      ['memory', {}],
      ['redis', {}],
      ['redis', { reservationBatch: 16 }],
    ] as const) {
      it(`${store}${'reservationBatch' in redisOptions ? ' with reservations' : ''}: 100 peeks, then exactly the capacity is admitted (name and socket)`, async () => {
        const a = await start({ redis: redisOptions }, store);
        const { server } = await connect(a);
        for (const target of ['peeker', server]) {
          for (let i = 0; i < 100; i++) {
            const tiers = await a.limiter.peek(target, { type: 'chat', expensive: true });
            expect(tiers.map((tier) => tier.remaining)).toEqual([100, 5, 5]);
          }
          let admitted = 0;
          for (let i = 0; i < 10; i++) if ((await a.limiter.consume(target, { type: 'chat' })).allowed) admitted++;
          expect(admitted).toBe(5);
          expect((await a.limiter.peek(target, { type: 'chat' }))[1]!.remaining).toBe(0);
        }
      }, 60_000);
    }
  });

  describe('concurrent consume on Redis', () => {
    const burst: WsRateLimitModuleOptions = {
      global: { capacity: 1000, refillRate: 1 },
      types: { burst: { capacity: 50, refillRate: 0.001 } },
    };
    /** 300 concurrent consume() calls from each app on one tracker; the decisions. */
    const race = async (apps: Array<{ limiter: WsRateLimitService }>) =>
      Promise.all(
        apps.flatMap(({ limiter }) => Array.from({ length: 300 }, () => limiter.consume('hot', { type: 'burst' }))),
      );
    const storeErrors = async (registry: Registry): Promise<number> => {
      const line = (await registry.metrics()).split('\n').find((l) => l.startsWith('ws_rate_limit_store_errors_total'));
      return Number(line?.split(' ')[1] ?? 0);
    };

    for (const reservationBatch of [0, 16]) {
      it(`two apps, 2 x 300 concurrent calls on one tracker of capacity 50 (reservations ${reservationBatch}), Redis answering in time: never more than 50`, async () => {
        const options = { ...burst, redis: { reservationBatch, commandTimeoutMs: 5_000 } };
        const [a, b] = await Promise.all([start(options), start(options)]);
        const admitted = (await race([a, b])).filter((decision) => decision.allowed).length;
        expect(admitted).toBeLessThanOrEqual(50);
        // Without reservations nothing is held back: exactly the capacity.
        if (reservationBatch === 0) expect(admitted).toBe(50);
        expect(await storeErrors(a.registry)).toBe(0);
        expect((await a.limiter.status('hot', ['burst'])).types['burst']!.remaining).toBeLessThan(50 - admitted + 0.5);
      }, 60_000);
    }

    it('with the default 50 ms deadline, what is admitted over 50 is at most what the fail mode decided (store errors)', async () => {
      // README: a call that misses its deadline while Redis answers others "fails (the fail mode
      // decides)"; fail mode open's fallback starts full. Observed in this file's full run: 11
      // misses on one app, all 11 admitted (61 of 50) while Redis refused the tracker.
      const [a, b] = await Promise.all([start(burst), start(burst)]);
      const admitted = (await race([a, b])).filter((decision) => decision.allowed).length;
      const errors = (await storeErrors(a.registry)) + (await storeErrors(b.registry));
      if (admitted > 50) console.log(`over-admitted: ${admitted} of 50, ${errors} decisions by the fail mode`);
      expect(admitted - 50).toBeLessThanOrEqual(errors);
      expect(admitted).toBeLessThanOrEqual(100);
    }, 60_000);
  });

  describe('blocks between two apps sharing one Redis', () => {
    it("block(socket) on A reaches B's open socket of that address (BLOCKED); unblock of its IPv4-mapped form on B lifts it on A", async () => {
      const [a, b] = await Promise.all([start(), start()]);
      const onA = await connect(a, { localAddress: '127.0.0.7' });
      const onB = await connect(b, { localAddress: '127.0.0.7' });
      await a.limiter.block(onA.server, 60_000);
      expect(Object.keys(a.limiter.listBlocks())).toEqual(['ip:127.0.0.7']);
      for (let i = 0; i < 60 && !('ip:127.0.0.7' in b.limiter.listBlocks()); i++) await sleep(50);
      expect(Object.keys(b.limiter.listBlocks())).toEqual(['ip:127.0.0.7']);
      const [blocked] = await chats(onB.client, 1);
      expect(blocked).toMatchObject({ event: 'rate_limit', data: { code: 'BLOCKED' } });
      await b.limiter.unblock('::ffff:127.0.0.7');
      expect(b.limiter.listBlocks()).toEqual({});
      for (let i = 0; i < 60 && Object.keys(a.limiter.listBlocks()).length > 0; i++) await sleep(50);
      expect(a.limiter.listBlocks()).toEqual({});
      // A's socket was not sending meanwhile: its next chat is served.
      expect((await chats(onA.client, 1))[0]!.event).toBe('ack');
    }, 60_000);

    it('block() of a CIDR, an empty name or a non-finite duration is refused with a named error, nothing kept', async () => {
      const a = await start();
      await expect(a.limiter.block('10.0.0.0/8', 1000)).rejects.toThrow(TypeError);
      await expect(a.limiter.block('2001:db8::/64', 1000)).rejects.toThrow(TypeError);
      await expect(a.limiter.block('', 1000)).rejects.toThrow(TypeError);
      for (const ms of [NaN, -1, 0, Infinity]) await expect(a.limiter.block('u', ms)).rejects.toThrow(RangeError);
      expect(a.limiter.listBlocks()).toEqual({});
      expect(await redis.command('HGETALL', 'wsrl:blocks')).toEqual([]);
    }, 60_000);

    it('block() of an address with a port or in brackets is refused, not kept as a tracker name that matches no one', async () => {
      const a = await start();
      // README: "a CIDR (or a mistyped address) is refused with a TypeError rather than kept as a
      // tracker name that matches no one". These are kept as `key:203.0.113.9:443`, `key:[2001:db8::1]`.
      const outcomes: string[] = [];
      for (const target of ['203.0.113.9:443', '[2001:db8::1]']) {
        outcomes.push(
          await a.limiter.block(target, 60_000).then(
            () => `${target}: kept as ${JSON.stringify(a.limiter.listBlocks())}`,
            (error: Error) => `${target}: ${error.name}`,
          ),
        );
      }
      expect(outcomes).toEqual(['203.0.113.9:443: TypeError', '[2001:db8::1]: TypeError']);
    }, 60_000);
  });

  describe('bad input from code', () => {
    it('a bad cost (NaN, negative, 0, huge) is refused with an error naming the cost, leaving no key anywhere', async () => {
      const a = await start();
      const { server } = await connect(a);
      const keysBefore = await redisKeys();
      for (const target of ['u', server]) {
        for (const cost of [NaN, -1, 0, 1e9, Infinity]) {
          await expect(a.limiter.consume(target, { type: 'chat', cost })).rejects.toThrow(/cost/);
          await expect(a.limiter.peek(target, { type: 'chat', cost })).rejects.toThrow(/cost/);
        }
      }
      for (const type of ['', 42, undefined]) {
        await expect(a.limiter.consume('u', { type } as never)).rejects.toThrow(TypeError);
      }
      expect(a.limiter.stats().localKeys).toBe(0);
      expect(await redisKeys()).toEqual(keysBefore);
    }, 60_000);

    it('an empty-string or null target is refused with a TypeError naming the target, not spent as tracker "key:"', async () => {
      const a = await start();
      // block('') is refused ("block needs an address, a tracker name or a socket"); consume('')
      // spends a tracker no client has, and null fails inside the registry with no word of the target.
      const outcomes: string[] = [];
      for (const target of ['', null]) {
        outcomes.push(
          await a.limiter.consume(target as never, { type: 'chat' }).then(
            (decision) => `${String(target)}: allowed=${decision.allowed}`,
            (error: Error) =>
              error instanceof TypeError && /target/.test(error.message) ? 'TypeError(target)' : error.message,
          ),
        );
      }
      expect(outcomes).toEqual(['TypeError(target)', 'TypeError(target)']);
    }, 60_000);

    it("consume() with expensive: 'false' (a string) is refused, not silently counted in the expensive window", async () => {
      const a = await start();
      // @Throttle's expensive must be true or false (a config error); from code any truthy value counts.
      const outcome = await a.limiter.consume('u', { type: 'chat', expensive: 'false' as never }).then(
        () => 'accepted',
        (error: Error) => error.name,
      );
      const { expensive } = await a.limiter.status('u');
      expect({ outcome, expensiveRemaining: expensive.remaining }).toEqual({
        outcome: 'TypeError',
        expensiveRemaining: 5,
      });
    }, 60_000);

    it('a huge type from code (100,000 characters) is refused or keyed by a digest, not kept whole in Redis', async () => {
      const a = await start();
      const type = 'x'.repeat(100_000);
      const outcome = await a.limiter.consume('u', { type }).then(
        () => 'accepted',
        (error: Error) =>
          error instanceof RangeError && /type/.test(error.message) ? 'RangeError(type)' : error.message,
      );
      let longest = 0;
      for (const key of await redisKeys()) {
        const fields = (await redis.command('HKEYS', key)) as string[];
        for (const field of fields) longest = Math.max(longest, field.length);
      }
      // Tracker names over 256 characters are keyed by a SHA-256 digest "so a store holds 50
      // bytes of key per tracker whatever the names"; a type (which "may come from clients") is not.
      expect(outcome === 'RangeError(type)' || longest < 1_000).toBe(true);
    }, 60_000);

    it('status() of one client lists only handler, option and asked types, not types code named for another tracker', async () => {
      const a = await start();
      const { server } = await connect(a);
      // A type from a client (README: `{ type: data.kind }`), spent for user u1 only.
      await a.limiter.consume('u1', { type: 'client-text-of-u1' });
      const forOther = Object.keys((await a.limiter.status(server)).types);
      const forName = Object.keys((await a.limiter.status('u2')).types);
      // JSDoc of status(): "each known type (every handler's, plus the module's `types`, plus any asked for)".
      // The sample's get_limits sends this to every client: one client's text reaches all of them.
      expect({ forOther, forName }).toEqual({ forOther: ['chat', 'one'], forName: ['chat', 'one'] });
    }, 60_000);

    it('connectionStatus() of something that is no address (nor an adapter key) is refused, not answered with a full bucket', async () => {
      const a = await start();
      const outcomes: string[] = [];
      for (const ip of ['', 'not-an-address', '10.0.0.0/8x']) {
        outcomes.push(
          await a.limiter.connectionStatus(ip).then(
            (tiers) =>
              `${JSON.stringify(ip)}: ${tiers.map((tier) => `${tier.tier} ${tier.remaining}/${tier.limit}`).join()}`,
            (error: Error) => error.name,
          ),
        );
      }
      expect(outcomes).toEqual(['TypeError', 'TypeError', 'TypeError']);
    }, 60_000);

    it('a socket look-alike ({ readyState, send }) is refused without counting a connection that never closes', async () => {
      const a = await start();
      await connect(a);
      expect(a.limiter.stats().connections).toBe(1);
      for (let i = 0; i < 3; i++) {
        await expect(a.limiter.consume({ readyState: 1, send() {} }, { type: 'chat' })).rejects.toThrow();
      }
      // Each call counted one more open connection (`open++` before `client.once` threw).
      expect(a.limiter.stats().connections).toBe(1);
    }, 60_000);

    it('a socket of another application is refused by this one, not spent as its own connection of the same id', async () => {
      const a = await start();
      const b = await start();
      const onA = await connect(a);
      const onB = await connect(b);
      const before = await b.limiter.status(onB.server);
      const outcome = await b.limiter.consume(onA.server, { type: 'chat' }).then(
        () => 'accepted',
        (error: Error) => error.name,
      );
      const after = await b.limiter.status(onB.server);
      const localKeys = b.limiter.stats().localKeys;
      // Both sockets are connection 1 of their app: B spent its own socket's chat bucket.
      expect({ outcome, chat: after.types['chat']!.remaining }).toEqual({
        outcome: expect.stringMatching(/Error/) as unknown as string,
        chat: before.types['chat']!.remaining,
      });
      expect(localKeys).toBe(0);
    }, 60_000);

    it('consume() of a socket of another application leaves no keys in this one after that socket closes', async () => {
      const a = await start();
      const b = await start();
      const onA = await connect(a);
      await b.limiter.consume(onA.server, { type: 'chat' }).catch(() => undefined);
      await onA.client.close();
      for (let i = 0; i < 100 && a.limiter.stats().connections > 0; i++) await sleep(10);
      await sleep(50);
      // A forgot the socket's keys in A's own connection store; B's stay for the life of the process.
      expect({ a: a.limiter.stats().localKeys, b: b.limiter.stats().localKeys }).toEqual({ a: 0, b: 0 });
    }, 60_000);

    it('a closed socket: consume, peek and status answer and leave no connection or key behind', async () => {
      const a = await start();
      const { client, server } = await connect(a);
      await chats(client, 2);
      await client.close();
      const keysBefore = await redisKeys();
      for (let i = 0; i < 100 && a.limiter.stats().connections > 0; i++) await sleep(10);
      expect(a.limiter.stats()).toMatchObject({ connections: 0, localKeys: 0 });
      await a.limiter.consume(server, { type: 'chat' });
      await a.limiter.peek(server, { type: 'chat' });
      await a.limiter.status(server);
      // A client-side socket this app never saw, closed too.
      const stranger = await TestClient.connect(a.running.url);
      await stranger.close();
      await a.limiter.consume(stranger.socket, { type: 'chat' });
      await sleep(20);
      expect(a.limiter.stats()).toMatchObject({ connections: 0, localKeys: 0 });
      // The stranger's handshake took the address's connection bucket; code made no key.
      expect((await redisKeys()).length).toBe(keysBefore.length);
    }, 60_000);
  });
});
