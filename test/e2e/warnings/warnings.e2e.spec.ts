import { afterAll, afterEach, describe, expect, it, jest } from '@jest/globals';
import { Logger, type INestApplication, type ModuleMetadata } from '@nestjs/common';
import { ConfigModule } from '@nestjs/config';
import { APP_GUARD } from '@nestjs/core';
import { Test } from '@nestjs/testing';
import type { AddressInfo } from 'node:net';
import { ENV_VARIABLES, WsRateLimitAdapter, WsRateLimitModule, WsThrottleGuard } from '../../../lib/index.js';
import type { WsRateLimitModuleOptions } from '../../../lib/interfaces/options.interface.js';
import { startApp, withEnv, type RunningApp } from '../../support/app.js';
import { TestClient } from '../../support/ws-client.js';
import { GuardedGateway, HalfGuardedGateway, UnguardedGateway, UnlimitedGateway } from './warnings.gateways.js';

interface Line {
  level: string;
  context: string | undefined;
  text: string;
}

/** Every line written through Nest's `Logger` instances while a test runs. */
const lines: Line[] = [];
const spies = (['log', 'warn', 'debug', 'error'] as const).map((level) =>
  jest.spyOn(Logger.prototype, level).mockImplementation(function (this: Logger, message: unknown) {
    lines.push({ level, context: (this as unknown as { context?: string }).context, text: String(message) });
  }),
);

/** The module's lines at one level. */
const ours = (level: string): string[] =>
  lines.filter((line) => line.context === 'WsRateLimit' && line.level === level).map((line) => line.text);

const NO_ENV = Object.fromEntries(ENV_VARIABLES.map((variable) => [variable.name, undefined]));

let running: RunningApp | undefined;

afterEach(async () => {
  await running?.close();
  running = undefined;
  lines.length = 0;
});

afterAll(() => {
  for (const spy of spies) spy.mockRestore();
});

/** On `WsRateLimitAdapter` unless `stock` (platform-ws's own `WsAdapter`, itself warned about). */
function start(options: WsRateLimitModuleOptions, providers: ModuleMetadata['providers'], stock = false) {
  return startApp(
    { imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })], providers },
    stock ? undefined : (app) => new WsRateLimitAdapter(app),
  );
}

describe('the start-up line', () => {
  it('says once, at log level, which limits are in force', async () => {
    running = await start(
      {
        maxConnectionsPerIp: 4,
        types: { search: { capacity: 3, refillRate: 1 } },
        plans: { free: { global: { capacity: 10, refillRate: 5 } }, premium: {} },
        metrics: false,
      },
      [GuardedGateway],
    );
    expect(ours('log')).toEqual([
      'Limits in force: store memory (this process only); tracker connection; trusted proxies none; ' +
        'global 100 burst, 50/s; type default 20 burst, 10/s (+1 type in options); expensive 5 per 60 s (sliding-log); ' +
        'connections 5 burst, 1/s per address, at most 4 open; violations 10 in 60 s, then close 1008; ' +
        'plans free, premium',
    ]);
    // Plans without a planResolver never apply: said once.
    expect(ours('warn')).toEqual([
      "plans free, premium are configured but no planResolver picks them: every connection gets the module's own limits (give option planResolver)",
    ]);
  });

  it('says nothing of plans a planResolver picks', async () => {
    running = await start({ plans: { premium: {} }, planResolver: () => 'premium', metrics: false }, [GuardedGateway]);
    expect(ours('warn')).toEqual([]);
  });

  it('opens with shadow mode when nothing is enforced', async () => {
    running = await start({ shadow: true, metrics: false }, [GuardedGateway]);
    expect(ours('log')).toEqual([
      expect.stringMatching(/^Limits in force: SHADOW MODE, nothing is rejected or closed; /),
    ]);
  });
});

describe("platform-ws's own WsAdapter", () => {
  it('is warned about at start-up: connections are not limited there, and answers not ordered at a close', async () => {
    running = await start({ metrics: false }, [GuardedGateway], true);
    expect(ours('warn')).toEqual([
      expect.stringMatching(
        /^Gateways run on ws through WsAdapter: messages are limited, but connections are not .*Use WsRateLimitAdapter/,
      ),
    ]);
    // Messages are limited on it all the same.
    const client = await TestClient.connect(running.url);
    client.send('search', 1);
    client.send('search', 2);
    await client.waitForEvent('rate_limit');
    expect(client.events('ack')).toHaveLength(1);
    await client.close();
  });

  it('is not warned about on WsRateLimitAdapter, nor on a subclass of it', async () => {
    running = await start({ metrics: false }, [GuardedGateway]);
    expect(ours('warn')).toEqual([]);
    await running.close();
    class OwnAdapter extends WsRateLimitAdapter {}
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false })], providers: [GuardedGateway] },
      (app) => new OwnAdapter(app),
    );
    expect(ours('warn')).toEqual([]);
  });
});

describe('an unknown WS_RATE_LIMIT_* variable', () => {
  const misspelled = { ...NO_ENV, WS_RATE_LIMIT_GLOBAL_CAPACTIY: '5', WS_RATE_LIMIT_METRICS: 'false' };

  it('is named at start-up, with the variable it most likely means', async () => {
    await withEnv(misspelled, async () => {
      running = await startApp(
        {
          imports: [ConfigModule.forRoot({ ignoreEnvFile: true }), WsRateLimitModule.forRoot()],
          providers: [GuardedGateway],
        },
        (app) => new WsRateLimitAdapter(app),
      );
    });
    expect(ours('warn')).toEqual([
      'WS_RATE_LIMIT_GLOBAL_CAPACTIY is not a variable of nestjs-ws-rate-limit and is ignored: ' +
        'did you mean WS_RATE_LIMIT_GLOBAL_CAPACITY?',
    ]);
    // It was indeed ignored: the default global burst is in force.
    expect(ours('log')).toEqual([expect.stringContaining('global 100 burst, 50/s')]);
  });

  it('is not looked for when the module reads no variables (useEnv: false)', async () => {
    await withEnv(misspelled, async () => {
      running = await start({ metrics: false }, [GuardedGateway]);
    });
    expect(ours('warn')).toEqual([]);
  });
});

describe('forwarding headers from a peer that is not a trusted proxy', () => {
  const BUDGET = "behind a reverse proxy without WS_RATE_LIMIT_TRUST_PROXY every client shares the proxy's budget";
  /** Room for the test's connections (the default, 5 burst per address, is the budget the warning is about). */
  const connection = { capacity: 100, refillRate: 100 };

  async function connectThrice(headers: Record<string, string>): Promise<void> {
    for (let i = 0; i < 3; i++) await (await TestClient.connect(running!.url, { headers })).close();
  }

  it('are warned about once, when no proxy is trusted', async () => {
    running = await start({ metrics: false, connection }, [GuardedGateway]);
    await connectThrice({});
    expect(ours('warn')).toEqual([]);
    await connectThrice({ 'X-Forwarded-For': '203.0.113.7' });
    expect(ours('warn')).toEqual([
      expect.stringContaining(
        'An upgrade from 127.0.0.1 carries X-Forwarded-For, but WS_RATE_LIMIT_TRUST_PROXY is not set',
      ),
    ]);
    expect(ours('warn')[0]).toContain(BUDGET);
  });

  it('are warned about when the peer is not on the list of proxies', async () => {
    running = await start({ metrics: false, connection, trustProxy: '10.0.0.0/8' }, [GuardedGateway]);
    await connectThrice({ 'X-Forwarded-For': '203.0.113.7' });
    expect(ours('warn')).toEqual([
      expect.stringContaining('127.0.0.1 is not among the trusted proxies (WS_RATE_LIMIT_TRUST_PROXY=10.0.0.0/8)'),
    ]);
  });

  it('are not warned about from a trusted proxy, nor when it is another header than the one read', async () => {
    running = await start({ metrics: false, connection, trustProxy: '127.0.0.1' }, [GuardedGateway]);
    await connectThrice({ 'X-Forwarded-For': '203.0.113.7' });
    await running.close();
    running = await start({ metrics: false, connection, forwardedHeader: 'forwarded' }, [GuardedGateway]);
    await connectThrice({ 'X-Forwarded-For': '203.0.113.7' });
    expect(ours('warn')).toEqual([]);
    await connectThrice({ Forwarded: 'for=203.0.113.7' });
    expect(ours('warn')).toEqual([
      expect.stringContaining('carries Forwarded, but WS_RATE_LIMIT_TRUST_PROXY is not set'),
    ]);
  });
});

describe('a trusted proxy sending the other forwarding header', () => {
  const connection = { capacity: 100, refillRate: 100 };

  async function connectTwice(headers: Record<string, string>): Promise<void> {
    for (let i = 0; i < 2; i++) await (await TestClient.connect(running!.url, { headers })).close();
  }

  it.each([
    ['a list', '127.0.0.1'],
    ['a hop count', 1],
  ] as const)(
    'is warned about once (proxies trusted by %s), naming the variable and its other value',
    async (_, trustProxy) => {
      running = await start({ metrics: false, connection, trustProxy }, [GuardedGateway]);
      await connectTwice({ 'X-Forwarded-For': '203.0.113.7' });
      expect(ours('warn')).toEqual([]);
      await connectTwice({ Forwarded: 'for=203.0.113.7' });
      await connectTwice({ Forwarded: 'for=203.0.113.8' });
      expect(ours('warn')).toEqual([
        'An upgrade from the trusted proxy 127.0.0.1 carries Forwarded but not X-Forwarded-For, the header read ' +
          "(WS_RATE_LIMIT_FORWARDED_HEADER=x-forwarded-for), so the proxy's address is taken for the client's: every " +
          'client behind it shares one budget. Set WS_RATE_LIMIT_FORWARDED_HEADER=forwarded, or have the proxy send ' +
          'X-Forwarded-For. (Said once.)',
      ]);
    },
  );

  it('is not warned about when the peer is no trusted proxy, or sends both headers', async () => {
    running = await start({ metrics: false, connection, trustProxy: '10.0.0.0/8' }, [GuardedGateway]);
    await connectTwice({ Forwarded: 'for=203.0.113.7' });
    await running.close();
    running = await start({ metrics: false, connection, trustProxy: '127.0.0.1', forwardedHeader: 'forwarded' }, [
      GuardedGateway,
    ]);
    await connectTwice({ Forwarded: 'for=203.0.113.7', 'X-Forwarded-For': '203.0.113.9' });
    expect(ours('warn')).toEqual([]);
  });
});

describe('@Throttle where no WsThrottleGuard runs', () => {
  it('is warned about at start-up, naming the handlers (and the figures indeed do nothing)', async () => {
    running = await start({ metrics: false }, [UnguardedGateway, UnlimitedGateway]);
    expect(ours('warn')).toEqual([
      '@Throttle on UnguardedGateway.search has no effect: no WsThrottleGuard runs for it. ' +
        'Add @WsRateLimit() to UnguardedGateway, or register WsThrottleGuard with APP_GUARD.',
    ]);
    const client = await TestClient.connect(running.url);
    for (let i = 0; i < 3; i++) client.send('search', i);
    await client.waitForEvent('ack', 3);
    expect(client.events('rate_limit')).toEqual([]);
    await client.close();
  });

  it('names the handlers left out when only some have the guard', async () => {
    running = await start({ metrics: false }, [HalfGuardedGateway]);
    expect(ours('warn')).toEqual([
      '@Throttle on HalfGuardedGateway (handlers HalfGuardedGateway.open) has no effect: no WsThrottleGuard runs for it. ' +
        'Add @WsRateLimit() to HalfGuardedGateway, or register WsThrottleGuard with APP_GUARD.',
    ]);
  });

  it.each([
    ['@WsRateLimit() on the gateway', [GuardedGateway]],
    ['APP_GUARD (useClass)', [UnguardedGateway, { provide: APP_GUARD, useClass: WsThrottleGuard }]],
    ['APP_GUARD (useExisting)', [UnguardedGateway, { provide: APP_GUARD, useExisting: WsThrottleGuard }]],
  ])('is not warned about with %s', async (_name, providers) => {
    running = await start({ metrics: false }, providers);
    expect(ours('warn')).toEqual([]);
  });

  it('is not warned about with a guard given to app.useGlobalGuards, which does limit the handler', async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false })],
      providers: [UnguardedGateway],
    }).compile();
    const app: INestApplication = moduleRef.createNestApplication({ logger: false });
    app.useWebSocketAdapter(new WsRateLimitAdapter(app));
    app.useGlobalGuards(app.get(WsThrottleGuard));
    await app.listen(0, '127.0.0.1');
    running = { app, port: 0, url: '', close: () => app.close() };
    expect(ours('warn')).toEqual([]);
    const url = `ws://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}`;
    const client = await TestClient.connect(url);
    client.send('search', 1);
    client.send('search', 2);
    await client.waitForEvent('rate_limit');
    expect(client.events('ack')).toHaveLength(1);
    await client.close();
  });
});
