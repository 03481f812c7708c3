// A new user's read of README.md, claim by claim, against the library (the README sentence
// each test checks is quoted above it). Two cases failed before they were fixed: an
// out-of-bounds figure in WS_RATE_LIMIT_PLANS was named `(plan "pro"): option global.capacity`
// (not the README's `(plan "pro") field "global.capacity"`), and the unknown-field error of
// WS_RATE_LIMIT_TYPES left `essential` out of the fields it lists.
import { afterEach, describe, expect, it } from '@jest/globals';
import { Catch, type ArgumentsHost, type ExceptionFilter, UseFilters } from '@nestjs/common';
import { ConfigModule } from '@nestjs/config';
import { Test } from '@nestjs/testing';
import { Registry } from 'prom-client';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import {
  ENV_VARIABLES,
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
  type TrackerContext,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, withEnv, type RunningApp } from '../../support/app.js';
import { sleep, TestClient } from '../../support/ws-client.js';

const NO_ENV = Object.fromEntries(ENV_VARIABLES.map((variable) => [variable.name, undefined]));

/** Handlers with figures a test can exhaust quickly. */
@WebSocketGateway()
@WsRateLimit()
class ReviewGateway {
  constructor(private readonly limiter: WsRateLimitService) {}

  @SkipThrottle()
  @SubscribeMessage('limits')
  async limits(@ConnectedSocket() client: object) {
    return { event: 'limits_status', data: await this.limiter.status(client) };
  }

  @SubscribeMessage('note')
  note(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ limits: { short: { capacity: 2, refillRate: 0.01 }, long: { capacity: 5, refillRate: 0.001 } } })
  @SubscribeMessage('multi')
  multi() {
    return { event: 'ack', data: 'multi' };
  }

  @Throttle({ capacity: 1, refillRate: 1 })
  @SubscribeMessage('quick')
  quick() {
    return { event: 'ack', data: 'quick' };
  }

  @Throttle({ essential: true })
  @SubscribeMessage('logout')
  logout() {
    return { event: 'ack', data: 'logout' };
  }

  @Throttle({ capacity: 100, refillRate: 100, expensive: true })
  @SubscribeMessage('costly')
  costly() {
    return { event: 'ack', data: 'costly' };
  }
}

/** README 486-497: a catch-all handler filter that hands the limiter's refusals on. */
@Catch()
class AllErrorsFilter implements ExceptionFilter {
  constructor(private readonly rateLimit: WsRateLimitFilter) {}
  catch(exception: unknown, host: ArgumentsHost) {
    if (exception instanceof WsRateLimitException) return this.rateLimit.catch(exception, host);
    host
      .switchToWs()
      .getClient<{ send(text: string): void }>()
      .send(JSON.stringify({ event: 'own_error' }));
  }
}

@WebSocketGateway()
@WsRateLimit()
class FilteredGateway {
  @UseFilters(AllErrorsFilter)
  @Throttle({ capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('guarded')
  guarded() {
    return { event: 'ack' };
  }

  @UseFilters(AllErrorsFilter)
  @SkipThrottle()
  @SubscribeMessage('boom')
  boom() {
    throw new Error('boom');
  }
}

const answered = (frame: { event?: string }) => frame.event === 'ack' || frame.event === 'rate_limit';

describe('README claims: running apps', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions, gateways: object[] = [ReviewGateway], adapter = true) => {
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false, ...options })],
        providers: gateways as never[],
      },
      adapter ? (app) => new WsRateLimitAdapter(app) : undefined,
    );
    return running;
  };
  const connect = async () => {
    const client = await TestClient.connect(running!.url);
    clients.push(client);
    return client;
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  // README 238 / 1226: "The builder is an option, e.g. for the reference article's
  // flat frame: `frameBuilder: (info) => ({ type: 'rate_limit', ...info })`."
  it('sends the flat frame a frameBuilder returns', async () => {
    await start({ frameBuilder: (info) => ({ type: 'rate_limit', ...info }) });
    const client = await connect();
    client.inOneWrite(() => {
      client.send('quick');
      client.send('quick');
    });
    const [frame] = await client.waitFor((f) => f.type === 'rate_limit');
    expect(frame).toEqual({
      type: 'rate_limit',
      code: 'TYPE_LIMIT',
      messageType: 'quick',
      retryAfter: expect.any(Number),
      warningCount: 1,
      limit: 1,
      remaining: 0,
    });
  });

  // README 233-236: "`id`: present when the refused message carried one (... a safe integer
  // or a string of at most 64 characters) and the app uses `WsRateLimitAdapter` ...
  // `error` frames for unrouted frames echo it too. No other client text is ever echoed."
  it('echoes only safe-integer and short-string ids, in rate_limit and error frames', async () => {
    await start({});
    const client = await connect();
    const send = (id: unknown, event = 'quick') => client.sendRaw(JSON.stringify({ event, data: {}, id }));
    client.inOneWrite(() => {
      send(1); // allowed
      send(2); // refused: id 2
      send(2 ** 53); // refused: not a safe integer
      send('x'.repeat(65)); // refused: too long
      send('y'.repeat(64)); // refused: echoed
      send(7, 'nope'); // no handler
    });
    const limits = await client.waitForEvent('rate_limit', 4);
    expect(limits.map((frame) => frame.data.id)).toEqual([2, undefined, undefined, 'y'.repeat(64)]);
    expect(limits.every((frame) => Object.hasOwn(frame.data, 'id') === (frame.data.id !== undefined))).toBe(true);
    const [error] = await client.waitForEvent('error');
    expect(error).toEqual({ event: 'error', data: { code: 'UNKNOWN_EVENT', id: 7 } });
  });

  // README 442-443: "`status()` reports the first of them as the type's budget."
  it("status() reports a type's first named limit as its budget", async () => {
    await start({});
    const client = await connect();
    client.send('multi');
    await client.waitForEvent('ack');
    client.send('limits');
    const [{ data: status }] = await client.waitForEvent('limits_status');
    expect(status.types.multi).toMatchObject({ capacity: 2, remaining: 1 });
  });

  // README 458-461: "with `tracker: 'ip'`, an IP address names that address's budget, as
  // its connections spend it. The same targets for `peek`, `status` and `reset`."
  it("consume('127.0.0.1') spends the budget of that address's connections with tracker 'ip'", async () => {
    await start({ tracker: 'ip', type: { capacity: 3, refillRate: 0.001 } });
    const limiter = running!.app.get(WsRateLimitService);
    expect(await limiter.consume('127.0.0.1', { type: 'note' })).toEqual({ allowed: true });
    expect(await limiter.consume('127.0.0.1', { type: 'note' })).toEqual({ allowed: true });
    const client = await connect();
    client.inOneWrite(() => {
      client.send('note', 1);
      client.send('note', 2);
    });
    await client.waitFor(answered, 2);
    expect(client.events('ack')).toHaveLength(1);
    expect(client.events('rate_limit')[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', limit: 3 });
    expect((await limiter.status('127.0.0.1')).types.note).toMatchObject({ remaining: 0, capacity: 3 });
    await limiter.reset('127.0.0.1');
    expect((await limiter.peek('127.0.0.1', { type: 'note' })).map((tier) => tier.remaining)).toEqual([100, 3]);
  });

  // README 1044-1051: "listBlocks(); // { 'ip:203.0.113.9': <until, ms since the epoch>, ... }"
  // and "a CIDR (or a mistyped address) is refused with a `TypeError`".
  it('blocks an address and a tracker name, lists them, refuses a CIDR with a TypeError', async () => {
    await start({});
    const limiter = running!.app.get(WsRateLimitService);
    const before = Date.now();
    await limiter.block('203.0.113.9', 10 * 60_000);
    await limiter.block('user-42', 60_000);
    const blocks = limiter.listBlocks();
    expect(blocks['ip:203.0.113.9']).toBeGreaterThanOrEqual(before + 10 * 60_000);
    expect(blocks['key:user-42']).toBeGreaterThanOrEqual(before + 60_000);
    await limiter.unblock('203.0.113.9');
    expect(limiter.listBlocks()['ip:203.0.113.9']).toBeUndefined();
    await expect(limiter.block('10.0.0.0/8', 1000)).rejects.toThrow(TypeError);
    await expect(limiter.block('10.0.0.300', 1000)).rejects.toThrow(TypeError);
  });

  // README 1222-1224: "The function's second argument gives `address` ..., `ip` ...,
  // `connectionId` and the upgrade `request`."
  it("gives a tracker function the connection's address, ip, connectionId and request", async () => {
    const seen: TrackerContext[] = [];
    await start({
      tracker: (_client, context) => {
        seen.push(context);
        return undefined; // per connection
      },
    });
    const client = await connect();
    client.send('note');
    await client.waitForEvent('ack');
    expect(seen[0]).toMatchObject({ address: '127.0.0.1', ip: '127.0.0.1', connectionId: expect.any(Number) });
    expect(seen[0]!.request?.headers.upgrade).toBe('websocket');
  });

  // README 483-497: a handler filter catching everything "gets the limiter's refusals before
  // `WsRateLimitFilter` does ... Let such a filter hand them on (`WsRateLimitFilter` is injectable)".
  it("the README's AllErrorsFilter hands refusals on: rate_limit frames and the 1008 close", async () => {
    await start({ violations: { max: 2, windowMs: 60_000 } }, [FilteredGateway]);
    const client = await connect();
    client.send('boom');
    await client.waitForEvent('own_error');
    client.inOneWrite(() => {
      for (let i = 0; i < 3; i++) client.send('guarded');
    });
    expect((await client.waitClose()).code).toBe(1008);
    expect(client.events('ack')).toHaveLength(1);
    expect(client.events('rate_limit').map((frame) => frame.data.warningCount)).toEqual([1, 2]);
  });

  // README 228-229: "When several tiers refuse, the one with the longest wait decides the frame."
  it('lets the tier with the longest wait decide the frame', async () => {
    await start({ global: { capacity: 1, refillRate: 0.1 } });
    const client = await connect();
    client.inOneWrite(() => {
      client.send('quick'); // type: 1 burst, 1/s; global: 1 burst, one every 10 s
      client.send('quick');
    });
    const [frame] = await client.waitForEvent('rate_limit');
    expect(frame!.data).toMatchObject({ code: 'GLOBAL_LIMIT', limit: 1 });
    expect(frame!.data.retryAfter).toBeGreaterThan(5_000);
  });

  // README 226-227: "`retryAfter`: whole milliseconds until the same message would be
  // allowed; never 0, and sending it again after that long succeeds if nothing else was sent."
  it('honours retryAfter for a sliding-counter expensive window', async () => {
    await start({ expensive: { max: 2, windowMs: 1_500, algorithm: 'sliding-counter' } });
    const client = await connect();
    client.inOneWrite(() => {
      for (let i = 0; i < 3; i++) client.send('costly');
    });
    const [frame] = await client.waitForEvent('rate_limit');
    expect(frame!.data.code).toBe('EXPENSIVE_LIMIT');
    const retryAfter = frame!.data.retryAfter as number;
    expect(Number.isInteger(retryAfter) && retryAfter >= 1).toBe(true);
    await sleep(retryAfter + 30);
    client.send('costly');
    await client.waitFor(answered, 4);
    expect(client.frames.filter(answered).at(-1)!.event).toBe('ack');
  }, 20_000);

  // README 370 / 128: "`WS_RATE_LIMIT_VIOLATION_CLOSE_REASON` ... Close reason for repeat
  // offenders, cut to 123 bytes." / 128: "close 1008 `Rate limit violations`".
  it('closes repeat offenders with the configured code and a reason cut to 123 bytes', async () => {
    await start({ violations: { max: 1, windowMs: 60_000, closeCode: 4000, closeReason: 'r'.repeat(200) } });
    const client = await connect();
    client.inOneWrite(() => {
      client.send('quick');
      client.send('quick');
    });
    const closed = await client.waitClose();
    expect(closed.code).toBe(4000);
    expect(Buffer.byteLength(closed.reason)).toBe(123);
  });

  // README 88-90: "With no argument, `forRoot()` takes every setting from `WS_RATE_LIMIT_*`
  // environment variables, read through `@nestjs/config` ...; `ConfigModule.forRoot()` in
  // your root module is only needed to load a `.env` file."
  it('reads WS_RATE_LIMIT_* without ConfigModule.forRoot() in the app (quick start module)', async () => {
    await withEnv({ ...NO_ENV, WS_RATE_LIMIT_TYPE_CAPACITY: '2', WS_RATE_LIMIT_METRICS: 'false' }, async () => {
      running = await startApp(
        { imports: [WsRateLimitModule.forRoot()], providers: [ReviewGateway] },
        (app) => new WsRateLimitAdapter(app),
      );
      expect(running.app.get(WsRateLimitService).options.type.capacity).toBe(2);
    });
  });

  // README 469-470: "`stats()`: open connections and keys held, for health checks (with the
  // memory store, `storeKeys` counts tier states, the unit of `maxKeys`)."
  it('stats() counts connections and, with tracker ip, the tier states in the memory store', async () => {
    await start({ tracker: 'ip' });
    const client = await connect();
    client.send('note');
    await client.waitForEvent('ack');
    const limiter = running!.app.get(WsRateLimitService);
    // The address's tiers: its connection-rate bucket, its global and its note buckets.
    expect(limiter.stats()).toMatchObject({ connections: 1, storeKeys: 3, evictions: 0 });
  });
});

describe('README claims: degradation and metrics', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  // README 1026-1031: "at the violation threshold, instead of closing, the connection may only
  // use handlers marked `@Throttle({ essential: true })` ...; other messages get `rate_limit`
  // frames with code `DEGRADED` and `retryAfter` the time left. Reaching the threshold again
  // while degraded closes with 1008".
  it('degrades at the threshold, lets essential handlers through, closes at the threshold again', async () => {
    running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            metrics: false,
            degradeCooldownMs: 30_000,
            violations: { max: 2, windowMs: 60_000 },
          }),
        ],
        providers: [ReviewGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    const client = await TestClient.connect(running.url);
    clients.push(client);
    client.inOneWrite(() => {
      for (let i = 0; i < 3; i++) client.send('quick');
    });
    const limits = await client.waitForEvent('rate_limit', 2);
    expect(limits.map((frame) => frame.data.code)).toEqual(['TYPE_LIMIT', 'DEGRADED']);
    expect(limits[1]!.data.retryAfter).toBe(30_000);
    client.send('logout');
    await client.waitFor((frame) => frame.data === 'logout');
    client.send('note');
    const [, , degraded] = await client.waitForEvent('rate_limit', 3);
    expect(degraded!.data.code).toBe('DEGRADED');
    expect(degraded!.data.retryAfter).toBeGreaterThan(20_000);
    expect(degraded!.data.retryAfter).toBeLessThanOrEqual(30_000);
    client.send('note');
    expect((await client.waitClose()).code).toBe(1008);
  });

  // README 902-904: "`WS_RATE_LIMIT_METRICS_PREFIX` renames them"; the registry is "the
  // `metricsRegistry` you pass".
  it('publishes the metrics under metricsPrefix in the metricsRegistry given', async () => {
    const registry = new Registry();
    running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({ useEnv: false, metricsRegistry: registry, metricsPrefix: 'chat_limits_' }),
        ],
        providers: [ReviewGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    const client = await TestClient.connect(running.url);
    clients.push(client);
    client.inOneWrite(() => {
      client.send('quick');
      client.send('quick');
    });
    await client.waitForEvent('rate_limit');
    const names = (await registry.getMetricsAsJSON()).map((metric) => metric.name).sort();
    expect(names).toEqual(
      [
        'connections_total',
        'decisions_total',
        'disconnects_total',
        'memory_store_evictions_total',
        'memory_store_keys',
        'near_limit_total',
        'open_connections',
        'store_decision_seconds',
        'store_errors_total',
        'store_fallback',
        'store_outages_total',
        'violations_total',
      ]
        .map((name) => `chat_limits_${name}`)
        .sort(),
    );
    const text = await registry.metrics();
    expect(text).toContain(
      'chat_limits_decisions_total{result="rejected",tier="type",code="TYPE_LIMIT",type="quick"} 1',
    );
  });
});

describe('README claims: decorators and start-up errors', () => {
  // README 448-450: "Anything but a boolean (`'false'`, or @nestjs/throttler's
  // `{ default: true }`) throws a `WsRateLimitConfigError` where the class is defined."
  it("@SkipThrottle('false') and @SkipThrottle({ default: true }) throw WsRateLimitConfigError", () => {
    expect(() => SkipThrottle('false' as never)).toThrow(WsRateLimitConfigError);
    expect(() => SkipThrottle({ default: true } as never)).toThrow(WsRateLimitConfigError);
  });

  // README 451-452: "`@WsThrottle` and `@WsSkipThrottle` are the same decorators".
  it('exports WsThrottle and WsSkipThrottle as the same decorators', () => {
    expect(WsThrottle).toBe(Throttle);
    expect(WsSkipThrottle).toBe(SkipThrottle);
  });

  const compile = (options: WsRateLimitModuleOptions, env: Record<string, string> = {}) =>
    withEnv({ ...NO_ENV, ...env }, () =>
      Test.createTestingModule({
        imports: [
          ConfigModule.forRoot({ ignoreEnvFile: true }),
          WsRateLimitModule.forRoot({ metrics: false, ...options }),
        ],
      }).compile(),
    );

  // README 319: "An empty variable counts as unset."
  it('treats an empty variable as unset', async () => {
    const moduleRef = await compile({}, { WS_RATE_LIMIT_GLOBAL_CAPACITY: '', WS_RATE_LIMIT_TRACKER: '' });
    expect(moduleRef.get(WsRateLimitService).options.global.capacity).toBe(100);
    expect(moduleRef.get(WsRateLimitService).options.tracker).toBe('connection');
    await moduleRef.close();
  });

  // README 394-396: "a value outside its bounds stops start-up with an error naming the
  // variable (or `option x.y` for options given in code, or
  // `WS_RATE_LIMIT_PLANS (plan "pro") field "global.capacity"` in a plan)."
  it('names a plan figure outside its bounds as WS_RATE_LIMIT_PLANS (plan "pro") field "global.capacity"', async () => {
    const failure = compile({}, { WS_RATE_LIMIT_PLANS: '{"pro":{"global":{"capacity":0}}}' });
    await expect(failure).rejects.toThrow(WsRateLimitConfigError);
    await expect(failure).rejects.toThrow('WS_RATE_LIMIT_PLANS (plan "pro") field "global.capacity" must be');
  });

  // The error for an unknown field of WS_RATE_LIMIT_TYPES lists the fields a type may have;
  // `essential` is accepted (README 430, `@Throttle({ essential })`; TypeLimitOptions.essential)
  // but missing from that list, so a user reading the error thinks it is not allowed.
  it('lists every accepted field (essential too) in the WS_RATE_LIMIT_TYPES unknown-field error', async () => {
    // `essential` is accepted...
    const moduleRef = await compile({}, { WS_RATE_LIMIT_TYPES: '{"chat":{"essential":true}}' });
    expect(moduleRef.get(WsRateLimitService).options.types.chat).toEqual({ essential: true });
    await moduleRef.close();
    // ...and the error naming the accepted fields lists it.
    await expect(compile({}, { WS_RATE_LIMIT_TYPES: '{"chat":{"burst":2}}' })).rejects.toThrow(/essential/);
  });
});
