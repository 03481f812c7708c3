/**
 * Review of the NestJS integration surface as a new user meets it, on the memory store:
 * WsRateLimitModule.forRoot / forRootAsync (ConfigModule, imports/inject, factories returning
 * bad options), every WS_RATE_LIMIT_* variable given invalid values (blank, negative, NaN,
 * '1e3', ' 5 ', huge, wrong choices) and valid edge values (0 where allowed) on live apps,
 * options given both in code and in the environment, two gateways in one app (one on its own
 * port on ws; one on a namespace on socket.io) with class- and handler-level @Throttle and
 * @SkipThrottle, a guard registered globally (APP_GUARD) without @WsRateLimit(), the module
 * imported twice, and a custom frameBuilder (the article's flat frame, and one that throws).
 * Real `ws` and socket.io-client clients against listening apps on 127.0.0.1.
 *
 * Thirteen cases failed on the reviewed code (ee2752f), and are fixed: a gateway on its own
 * port without a path (`@WebSocketGateway(port)`) missed the adapter's connection hook (ws
 * binds its `connection` emit as it builds such a server; its upgrades now go through the
 * hooked emit): answer order, close grace, 'close' refusals and the heartbeat now hold there;
 * a forRootAsync factory returning a non-object, and misspelled option fields, ran on the
 * defaults without a word (now start-up errors, a misspelling with the field it likely
 * means); a feature module importing the bare WsRateLimitModule got Nest's DI error (the
 * bare class now runs as forRoot(), and beside forRoot the error says to import
 * forRoot()/forRootAsync() once and inject WsRateLimitService elsewhere).
 */
import { afterEach, describe, expect, it, jest } from '@jest/globals';
import { Logger, Module } from '@nestjs/common';
import { ConfigModule, ConfigService } from '@nestjs/config';
import { APP_GUARD } from '@nestjs/core';
import { Test } from '@nestjs/testing';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import type WebSocket from 'ws';
import {
  ENV_VARIABLES,
  SkipThrottle,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  WsThrottleGuard,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { startApp, withEnv, type RunningApp } from '../support/app.js';
import { connectIo, waitFor, type IoTestClient } from '../support/io-client.js';
import { sleep, TestClient } from '../support/ws-client.js';

const NO_ENV = Object.fromEntries(ENV_VARIABLES.map((variable) => [variable.name, undefined]));
/** A refill rate slow enough that time never decides a count. */
const SLOW = 0.001;

// --- Harness -----------------------------------------------------------------------------

const closers: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

type AnyModule = ReturnType<typeof WsRateLimitModule.forRoot>;

/** Compiles `imports` (and `providers`) under `env` (every other WS_RATE_LIMIT_* unset). */
function compile(imports: unknown[], env: Record<string, string | undefined> = {}, providers: unknown[] = []) {
  return withEnv({ ...NO_ENV, ...env }, async () => {
    const moduleRef = await Test.createTestingModule({
      imports: imports as never[],
      providers: providers as never[],
    }).compile();
    closers.push(() => moduleRef.close());
    return moduleRef;
  });
}

/** The resolved options of forRoot() under `env`, or the start-up error's message. */
async function resolvedUnder(env: Record<string, string>): Promise<WsRateLimitService['options'] | string> {
  // No option in code: each variable decides (WS_RATE_LIMIT_METRICS included).
  return compile([ConfigModule.forRoot({ ignoreEnvFile: true }), WsRateLimitModule.forRoot()], env).then(
    (ref) => ref.get(WsRateLimitService).options,
    (error: Error) => error.message,
  );
}

/** Captures Logger warnings for the rest of the test. */
function captureWarnings(): string[] {
  const lines: string[] = [];
  const spy = jest.spyOn(Logger.prototype, 'warn').mockImplementation((message: unknown) => {
    lines.push(String(message));
  });
  closers.push(() => spy.mockRestore());
  return lines;
}

/** A live app (ws or socket.io adapter) on these imports and gateways. */
async function start(
  imports: unknown[],
  providers: unknown[],
  io = false,
  env: Record<string, string | undefined> = {},
): Promise<RunningApp> {
  const running = await withEnv({ ...NO_ENV, ...env }, () =>
    startApp({ imports: imports as never[], providers: providers as never[] }, (app) =>
      io ? new WsRateLimitIoAdapter(app) : new WsRateLimitAdapter(app),
    ),
  );
  closers.push(() => running.close());
  return running;
}

async function wsClient(url: string, options: WebSocket.ClientOptions = {}): Promise<TestClient> {
  const client = await TestClient.connect(url, options);
  closers.push(() => client.close());
  return client;
}

async function ioClient(url: string): Promise<IoTestClient> {
  const client = await connectIo(url, 'websocket');
  closers.push(() => client.closeAndSettle().catch(() => undefined));
  return client;
}

/** A port nothing listens on (found by listening on 0, then closing). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const answered = (frame: { event?: string }) => frame.event === 'ack' || frame.event === 'rate_limit';

/** Sends `events` in one TCP write; returns the answers' events in order (ack / rate_limit). */
async function burst(client: TestClient, events: string[]): Promise<string[]> {
  const before = client.frames.filter(answered).length;
  client.inOneWrite(() => {
    for (const event of events) client.send(event);
  });
  const all = await client.waitFor(answered, before + events.length);
  return all.slice(before).map((frame) => frame.event!);
}

/** Emits `events` on a socket.io client; returns for each whether it got its ack or a rate_limit. */
async function ioBurst(client: IoTestClient, events: string[]): Promise<string[]> {
  const before = client.events.length;
  for (const event of events) client.socket.emit(event, {});
  const done = () => client.events.slice(before).filter((e) => e.event === 'ack' || e.event === 'rate_limit');
  await waitFor(() => done().length >= events.length, 10_000, `${events.length} answers`);
  return done().map((e) => e.event);
}

// --- Gateways ----------------------------------------------------------------------------

/** Class figures (capacity 3), one handler's own (capacity 1), one handler skipped. */
@WebSocketGateway()
@WsRateLimit()
@Throttle({ capacity: 3, refillRate: SLOW })
class RootGateway {
  @SubscribeMessage('classed')
  classed() {
    return { event: 'ack', data: 'classed' };
  }

  @Throttle({ capacity: 1 })
  @SubscribeMessage('own')
  own() {
    return { event: 'ack', data: 'own' };
  }

  @SkipThrottle()
  @SubscribeMessage('free')
  free() {
    return { event: 'ack', data: 'free' };
  }
}

/** A skipped class with one handler limited again, class figures on the handler's type. */
function ownPortGateway(port: number) {
  @WebSocketGateway(port)
  @WsRateLimit()
  @SkipThrottle()
  class OwnPortGateway {
    @SubscribeMessage('loose')
    loose() {
      return { event: 'ack', data: 'loose' };
    }

    @SkipThrottle(false)
    @Throttle({ capacity: 2, refillRate: SLOW })
    @SubscribeMessage('tight')
    tight() {
      return { event: 'ack', data: 'tight' };
    }
  }
  return OwnPortGateway;
}

/** socket.io, default namespace. */
@WebSocketGateway()
@WsRateLimit()
class IoRootGateway {
  @Throttle({ capacity: 2, refillRate: SLOW })
  @SubscribeMessage('root')
  root() {
    return { event: 'ack', data: 'root' };
  }
}

/** socket.io, own namespace: class figures, a handler's own, a skipped handler. */
@WebSocketGateway({ namespace: '/admin' })
@WsRateLimit()
@Throttle({ capacity: 3, refillRate: SLOW })
class IoAdminGateway {
  @SubscribeMessage('classed')
  classed() {
    return { event: 'ack', data: 'classed' };
  }

  @Throttle({ capacity: 1 })
  @SubscribeMessage('own')
  own() {
    return { event: 'ack', data: 'own' };
  }

  @SkipThrottle()
  @SubscribeMessage('free')
  free() {
    return { event: 'ack', data: 'free' };
  }
}

/** No limiter decorator of its own: only a guard registered globally limits it. */
@WebSocketGateway()
class BareGateway {
  @Throttle({ capacity: 2, refillRate: SLOW })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data: typeof data === 'number' ? data : null };
  }
}

/** The same on a socket.io namespace. */
@WebSocketGateway({ namespace: '/bare' })
class BareIoGateway {
  @Throttle({ capacity: 2, refillRate: SLOW })
  @SubscribeMessage('chat')
  chat() {
    return { event: 'ack', data: 'chat' };
  }
}

/** A gateway with the note event and the module's type figures. */
@WebSocketGateway()
@WsRateLimit()
class NoteGateway {
  @SubscribeMessage('note')
  note() {
    return { event: 'ack', data: 'note' };
  }
}

const module = (options: WsRateLimitModuleOptions = {}): AnyModule =>
  WsRateLimitModule.forRoot({ useEnv: false, metrics: false, ...options });

// --- forRoot / forRootAsync --------------------------------------------------------------

describe('forRoot and forRootAsync as a new user writes them', () => {
  it.each([
    ['undefined (a block body without return)', undefined],
    ['null', null],
    ['a string', 'redis://cache:6379'],
    ['a number', 5],
    ['an array', [{ global: { capacity: 5 } }]],
  ])(
    'a forRootAsync factory returning %s stops start-up (it ran on the defaults in silence)',
    async (_what, returned) => {
      const failure = await compile([
        WsRateLimitModule.forRootAsync({ useFactory: () => returned as unknown as WsRateLimitModuleOptions }),
      ]).then(
        () => 'started on the defaults',
        (error: Error) => error.message,
      );
      // As any other option that is not what it must be: an error naming the options.
      expect(failure).toMatch(/options? .*must be an object|must be an object/i);
    },
  );

  it.each([
    ['a misspelled group', { globl: { capacity: 5, refillRate: 1 } }, 'globl'],
    ['a misspelled field in a group', { global: { capactiy: 5 } }, 'capactiy'],
    ['a misspelled top-level option', { maxConnectionPerIp: 3 }, 'maxConnectionPerIp'],
  ])(
    '%s from a forRootAsync factory is named at start-up (it was ignored in silence)',
    async (_what, returned, name) => {
      const warnings = captureWarnings();
      const failure = await compile([
        WsRateLimitModule.forRootAsync({
          useFactory: () => ({ useEnv: false, metrics: false, ...returned }) as WsRateLimitModuleOptions,
        }),
      ]).then(
        () => '',
        (error: Error) => error.message,
      );
      // @Throttle, WS_RATE_LIMIT_TYPES and plans refuse unknown fields; a misspelled
      // WS_RATE_LIMIT_* variable is warned about. A misspelled module option is neither.
      expect([failure, ...warnings].some((line) => line.includes(name))).toBe(true);
    },
  );

  it('a feature module importing WsRateLimitModule (to inject WsRateLimitService) beside the root forRoot starts, or says to use forRoot (it was a DI error)', async () => {
    @Module({ imports: [WsRateLimitModule] })
    class FeatureModule {}
    const result = await compile([module({ global: { capacity: 7, refillRate: 1 } }), FeatureModule]).then(
      (ref) => `started, global capacity ${ref.get(WsRateLimitService).options.global.capacity}`,
      (error: Error) => error.message,
    );
    // Today: Nest's "can't resolve dependencies of the Symbol(WS_RATE_LIMIT_OPTIONS) (?, ConfigService)".
    expect(result === 'started, global capacity 7' || /forRoot/.test(result)).toBe(true);
  });

  it('a factory that throws, or rejects, stops start-up with its own error', async () => {
    const thrown = compile([
      WsRateLimitModule.forRootAsync({
        useFactory: () => {
          throw new Error('factory failed: CHAT_BURST missing');
        },
      }),
    ]);
    await expect(thrown).rejects.toThrow('factory failed: CHAT_BURST missing');
    const rejected = compile([
      WsRateLimitModule.forRootAsync({ useFactory: () => Promise.reject(new Error('vault unreachable')) }),
    ]);
    await expect(rejected).rejects.toThrow('vault unreachable');
  });

  it('forRootAsync with imports/inject (ConfigModule, ConfigService), async: its figures, the environment, then defaults', async () => {
    const ref = await compile(
      [
        ConfigModule.forRoot({ ignoreEnvFile: true }),
        WsRateLimitModule.forRootAsync({
          imports: [ConfigModule],
          inject: [ConfigService],
          useFactory: async (config: ConfigService) => {
            await sleep(5);
            return { metrics: false, violations: { max: Number(config.get('APP_MAX_VIOLATIONS')) } };
          },
        }),
      ],
      { APP_MAX_VIOLATIONS: '4', WS_RATE_LIMIT_MAX_VIOLATIONS: '9', WS_RATE_LIMIT_VIOLATION_WINDOW_MS: '5000' },
    );
    const { violations, global } = ref.get(WsRateLimitService).options;
    expect({ max: violations.max, windowMs: violations.windowMs, global }).toEqual({
      max: 4,
      windowMs: 5000,
      global: { capacity: 100, refillRate: 50 },
    });
  });

  it('a field given in code wins even where its variable is invalid; an invalid field in code is named, not replaced by the variable', async () => {
    const env = { WS_RATE_LIMIT_GLOBAL_CAPACITY: 'lots' };
    const ref = await compile([module({ useEnv: true, global: { capacity: 8 } })], env);
    expect(ref.get(WsRateLimitService).options.global.capacity).toBe(8);
    await expect(
      compile([module({ useEnv: true, global: { capacity: -1 } })], { WS_RATE_LIMIT_GLOBAL_CAPACITY: '8' }),
    ).rejects.toThrow('option global.capacity');
  });

  it('forRoot twice in one imports list is a start-up error; one forRoot object imported from two modules is one module', async () => {
    await expect(compile([module(), module()])).rejects.toThrow(/imported 2 times/);
    const shared = module({ global: { capacity: 6, refillRate: 1 } });
    @Module({ imports: [shared] })
    class FeatureModule {}
    const ref = await compile([shared, FeatureModule]);
    expect(ref.get(WsRateLimitService).options.global.capacity).toBe(6);
  });
});

// --- Every variable, invalid and blank ----------------------------------------------------

const NUMERIC = new Set(['positive-number', 'positive-integer', 'non-negative-integer', 'close-code', 'ipv6-prefix']);

/** Values no numeric variable accepts. */
const BAD_NUMBERS = ['-1', 'NaN', 'abc', '1e400', '9007199254740993', '5 5', '0x10', 'Infinity', '-0.5'];

describe('every WS_RATE_LIMIT_* variable given invalid values stops start-up naming it', () => {
  const numeric = ENV_VARIABLES.filter((variable) => NUMERIC.has(variable.kind));
  const cases = numeric.flatMap((variable) => BAD_NUMBERS.map((value) => [variable.name, value] as const));
  const choices = ENV_VARIABLES.filter((variable) => variable.kind === 'enum' || variable.kind === 'boolean');
  for (const variable of choices) cases.push([variable.name, 'wrong'] as const, [variable.name, '1'] as const);

  it(`${cases.length} invalid values, each refused naming its variable and the value`, async () => {
    const missed: string[] = [];
    for (const [name, value] of cases) {
      const result = await resolvedUnder({ [name]: value });
      if (typeof result !== 'string' || !result.includes(name) || !result.includes(JSON.stringify(value))) {
        missed.push(`${name}=${JSON.stringify(value)}: ${typeof result === 'string' ? result : 'started'}`);
      }
    }
    expect(missed).toEqual([]);
  });

  it('a positive figure set to 0 is refused; a 0-allowed one reads 0 (and blank or spaces are unset)', async () => {
    const missed: string[] = [];
    const defaults = await resolvedUnder({});
    if (typeof defaults === 'string') throw new Error(defaults);
    for (const variable of ENV_VARIABLES) {
      const path = variable.option.split('.');
      const at = (options: object) => path.reduce<unknown>((value, key) => (value as never)?.[key], options);
      for (const blank of ['', '   ']) {
        const result = await resolvedUnder({ [variable.name]: blank });
        if (typeof result === 'string') missed.push(`${variable.name}=${JSON.stringify(blank)}: ${result}`);
        else if (JSON.stringify(at(result)) !== JSON.stringify(at(defaults)))
          missed.push(`${variable.name}=${JSON.stringify(blank)} is not the default`);
      }
      if (!NUMERIC.has(variable.kind)) continue;
      const zero = await resolvedUnder({ [variable.name]: '0' });
      if (variable.kind === 'non-negative-integer') {
        if (typeof zero === 'string' || at(zero) !== 0) missed.push(`${variable.name}=0 should read 0`);
      } else if (typeof zero !== 'string' || !zero.includes(variable.name)) {
        missed.push(`${variable.name}=0 should be refused`);
      }
    }
    expect(missed).toEqual([]);
  });

  it("numbers written '1e3', ' 5 ', '+7' or '007' read as the number they write", async () => {
    const result = await resolvedUnder({
      WS_RATE_LIMIT_MAX_CONNECTIONS_PER_IP: '1e3',
      WS_RATE_LIMIT_MAX_VIOLATIONS: ' 5 ',
      WS_RATE_LIMIT_GLOBAL_CAPACITY: '+7',
      WS_RATE_LIMIT_EXPENSIVE_MAX: '007',
      WS_RATE_LIMIT_TRACKER: ' ip ',
    });
    if (typeof result === 'string') throw new Error(result);
    expect({
      maxConnectionsPerIp: result.maxConnectionsPerIp,
      violations: result.violations.max,
      global: result.global.capacity,
      expensive: result.expensive.max,
      tracker: result.tracker,
    }).toEqual({ maxConnectionsPerIp: 1000, violations: 5, global: 7, expensive: 7, tracker: 'ip' });
  });
});

// --- Valid edge values on live apps --------------------------------------------------------

describe('0 where the README allows it means what it says, on a live app', () => {
  const env = (vars: Record<string, string>) => ({ WS_RATE_LIMIT_METRICS: 'false', ...vars });
  const live = (vars: Record<string, string>) =>
    start(
      [ConfigModule.forRoot({ ignoreEnvFile: true }), WsRateLimitModule.forRoot()],
      [NoteGateway],
      false,
      env(vars),
    );

  it('MAX_CONNECTIONS_PER_IP=0: no cap on open connections (the rate alone decides)', async () => {
    const running = await live({ WS_RATE_LIMIT_MAX_CONNECTIONS_PER_IP: '0', WS_RATE_LIMIT_CONNECTION_CAPACITY: '12' });
    const open = await Promise.all(Array.from({ length: 12 }, () => wsClient(running.url)));
    expect(open).toHaveLength(12);
    await expect(TestClient.connect(running.url)).rejects.toThrow('HTTP 429');
  });

  it('MAX_PENDING_HANDSHAKES_PER_IP=0: twelve silent TCP connections are all kept; an upgrade still works', async () => {
    const running = await live({ WS_RATE_LIMIT_MAX_PENDING_HANDSHAKES_PER_IP: '0' });
    const sockets: Socket[] = [];
    closers.push(() => sockets.forEach((socket) => socket.destroy()));
    const ended: number[] = [];
    for (let i = 0; i < 12; i++) {
      const socket = createConnection({ host: '127.0.0.1', port: running.port });
      socket.on('error', () => undefined);
      socket.on('close', () => ended.push(i));
      sockets.push(socket);
    }
    await Promise.all(sockets.map((socket) => new Promise((resolve) => socket.once('connect', resolve))));
    const client = await wsClient(running.url);
    client.send('note');
    await client.waitForEvent('ack');
    await sleep(200);
    expect(ended).toEqual([]);
  });

  it('PING_INTERVAL_MS=0: no heartbeat, a client that never answers pings is kept', async () => {
    const running = await live({ WS_RATE_LIMIT_PING_INTERVAL_MS: '0', WS_RATE_LIMIT_PONG_TIMEOUT_MS: '100' });
    const client = await wsClient(running.url, { autoPong: false });
    let pings = 0;
    client.socket.on('ping', () => pings++);
    await sleep(800);
    client.send('note');
    await client.waitForEvent('ack');
    expect({ pings, open: client.socket.readyState }).toEqual({ pings: 0, open: 1 });
  });

  it('CLOSE_GRACE_MS=0 and DEGRADE_COOLDOWN_MS=0: the threshold closes with 1008 (no degradation)', async () => {
    const running = await live({
      WS_RATE_LIMIT_CLOSE_GRACE_MS: '0',
      WS_RATE_LIMIT_DEGRADE_COOLDOWN_MS: '0',
      WS_RATE_LIMIT_TYPE_CAPACITY: '1',
      WS_RATE_LIMIT_TYPE_REFILL_RATE: String(SLOW),
      WS_RATE_LIMIT_MAX_VIOLATIONS: '2',
    });
    const client = await wsClient(running.url);
    for (let i = 0; i < 3; i++) client.send('note');
    expect(await client.waitClose()).toEqual({ code: 1008, reason: 'Rate limit violations' });
    expect(client.events('rate_limit').map((frame) => frame.data.code)).toEqual(['TYPE_LIMIT', 'TYPE_LIMIT']);
  });

  it('TRUST_PROXY=0 trusts nobody: a spoofed X-Forwarded-For does not get a fresh connection budget', async () => {
    const running = await live({ WS_RATE_LIMIT_TRUST_PROXY: '0', WS_RATE_LIMIT_CONNECTION_CAPACITY: '2' });
    await wsClient(running.url, { headers: { 'x-forwarded-for': '203.0.113.1' } });
    await wsClient(running.url, { headers: { 'x-forwarded-for': '203.0.113.2' } });
    await expect(TestClient.connect(running.url, { headers: { 'x-forwarded-for': '203.0.113.3' } })).rejects.toThrow(
      'HTTP 429',
    );
  });
});

// --- Two gateways in one app -------------------------------------------------------------

describe('two gateways in one app: handler figures win over the class, @SkipThrottle on class vs handler', () => {
  it('ws: the app-server gateway and one on its own port each get their own figures', async () => {
    const own = await freePort();
    const running = await start(
      [module({ violations: { max: 100, windowMs: 60_000 } })],
      [RootGateway, ownPortGateway(own)],
    );
    const root = await wsClient(running.url);
    expect(await burst(root, ['classed', 'classed', 'classed', 'classed'])).toEqual([
      'ack',
      'ack',
      'ack',
      'rate_limit',
    ]);
    expect(await burst(root, ['own', 'own'])).toEqual(['ack', 'rate_limit']);
    expect(root.events('rate_limit').map((frame) => frame.data.limit)).toEqual([3, 1]);
    expect(await burst(root, Array(30).fill('free'))).toEqual(Array(30).fill('ack'));

    const side = await wsClient(`ws://127.0.0.1:${own}`);
    expect(await burst(side, Array(30).fill('loose'))).toEqual(Array(30).fill('ack'));
    // The order of answers is a case of its own below: here only how many of each.
    expect((await burst(side, ['tight', 'tight', 'tight'])).sort()).toEqual(['ack', 'ack', 'rate_limit']);
    expect(side.events('rate_limit')[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'tight', limit: 2 });
  });

  it('socket.io: a gateway on the default namespace and one on /admin each get their own figures', async () => {
    const running = await start(
      [module({ violations: { max: 100, windowMs: 60_000 } })],
      [IoRootGateway, IoAdminGateway],
      true,
    );
    const base = `http://127.0.0.1:${running.port}`;
    const root = await ioClient(base);
    const admin = await ioClient(`${base}/admin`);
    expect(await ioBurst(admin, ['classed', 'classed', 'classed', 'classed'])).toEqual([
      'ack',
      'ack',
      'ack',
      'rate_limit',
    ]);
    expect(await ioBurst(admin, ['own', 'own'])).toEqual(['ack', 'rate_limit']);
    expect(await ioBurst(admin, Array(20).fill('free'))).toEqual(Array(20).fill('ack'));
    expect(admin.of('rate_limit')).toEqual([
      expect.objectContaining({ code: 'TYPE_LIMIT', messageType: 'classed', limit: 3, warningCount: 1 }),
      expect.objectContaining({ code: 'TYPE_LIMIT', messageType: 'own', limit: 1, warningCount: 2 }),
    ]);
    expect(await ioBurst(root, ['root', 'root', 'root'])).toEqual(['ack', 'ack', 'rate_limit']);
  });
});

// --- A gateway on its own port (no path) ------------------------------------------------
//
// `@WebSocketGateway(port)` without a path: the adapter makes `new WebSocketServer({ port })`,
// which binds `this.emit.bind(this, 'connection')` in its constructor, so the hook that
// `instrument()` puts on `server.emit` afterwards never sees that server's connections. With a
// path (or on the app server) the adapter emits through the hook, and all of this holds.

/** A gateway on its own port, limited by its own figures. */
function ownPortLimited(port: number, path?: string) {
  @WebSocketGateway(port, path === undefined ? {} : { path })
  @WsRateLimit()
  class OwnPortLimitedGateway {
    @Throttle({ capacity: 2, refillRate: SLOW })
    @SubscribeMessage('tight')
    tight() {
      return { event: 'ack', data: 'tight' };
    }
  }
  return OwnPortLimitedGateway;
}

describe('a gateway on its own port, as README promises for every gateway on WsRateLimitAdapter', () => {
  it('with a path: answers in message order, refused connections closed (close mode), dead peers ended', async () => {
    const own = await freePort();
    await start(
      [
        module({
          connectionRefusal: 'close',
          maxConnectionsPerIp: 2,
          pingIntervalMs: 200,
          pongTimeoutMs: 200,
        }),
      ],
      [ownPortLimited(own, '/side')],
    );
    const url = `ws://127.0.0.1:${own}/side`;
    const client = await wsClient(url);
    expect(await burst(client, ['tight', 'tight', 'tight'])).toEqual(['ack', 'ack', 'rate_limit']);
    const silent = await wsClient(url, { autoPong: false });
    expect((await silent.waitClose()).code).toBe(1006);
    await wsClient(url);
    const refused = await wsClient(url);
    expect(await refused.waitClose()).toEqual({ code: 1008, reason: 'Too many connections' });
  });

  it("without a path: a rate_limit frame does not overtake the replies of the connection's earlier admitted messages (it did)", async () => {
    const own = await freePort();
    await start([module()], [ownPortLimited(own)]);
    const client = await wsClient(`ws://127.0.0.1:${own}`);
    // README: "a connection's answers leave in the order its messages came, so a rate_limit
    // frame never overtakes the reply of an earlier admitted message".
    expect(await burst(client, ['tight', 'tight', 'tight'])).toEqual(['ack', 'ack', 'rate_limit']);
  });

  it("without a path, connectionRefusal 'close': a client over the open-connection cap is closed with 1008, not served (it was served)", async () => {
    const own = await freePort();
    await start([module({ connectionRefusal: 'close', maxConnectionsPerIp: 1 })], [ownPortLimited(own)]);
    const url = `ws://127.0.0.1:${own}`;
    await wsClient(url);
    const refused = await wsClient(url);
    refused.send('tight');
    const served = refused.waitForEvent('ack', 1, 5000).then(
      () => 'served by the gateway',
      () => 'not served',
    );
    const outcome = await refused.waitClose(5000).then((close) => `closed ${close.code} ${close.reason}`);
    expect(outcome).toBe('closed 1008 Too many connections');
    expect(await served).toBe('not served');
  });

  it('without a path: a peer that never answers pings is ended after PONG_TIMEOUT_MS (it was kept)', async () => {
    const own = await freePort();
    await start([module({ pingIntervalMs: 200, pongTimeoutMs: 200 })], [ownPortLimited(own)]);
    const silent = await wsClient(`ws://127.0.0.1:${own}`, { autoPong: false });
    let pings = 0;
    silent.socket.on('ping', () => pings++);
    const ended = await silent.waitClose(5000).then(
      (close) => `ended ${close.code}`,
      () => `still open after 5 s (${pings} pings)`,
    );
    expect(ended).toBe('ended 1006');
  });
});

// --- A guard registered globally ---------------------------------------------------------

describe('WsThrottleGuard as APP_GUARD, with no @WsRateLimit() on the gateway', () => {
  it('ws, gateway on its own port: the 1008 close at the threshold waits for the replies of the messages admitted before it (they were lost)', async () => {
    const own = await freePort();
    @WebSocketGateway(own)
    class OwnPortBareGateway extends BareGateway {}
    const running = await start(
      [module({ violations: { max: 3, windowMs: 60_000 } })],
      [OwnPortBareGateway, { provide: APP_GUARD, useClass: WsThrottleGuard }],
    );
    void running;
    const client = await wsClient(`ws://127.0.0.1:${own}`);
    for (let i = 0; i < 6; i++) client.send('chat', i);
    expect(await client.waitClose()).toEqual({ code: 1008, reason: 'Rate limit violations' });
    // What holds: rate_limit frames with the count, the close at the threshold, no exception frames.
    expect(client.events('rate_limit').map((frame) => frame.data.warningCount)).toEqual([1, 2, 3]);
    expect(client.events('exception')).toEqual([]);
    // README: "the 1008 close waits for the replies of the messages admitted before the
    // decision" (closeGraceMs, 2 s). On the app server both acks arrive; here none does.
    expect(client.frames.map((frame) => frame.event)).toEqual(['ack', 'ack', 'rate_limit', 'rate_limit', 'rate_limit']);
  });

  it('socket.io namespace: rate_limit events with the violation count, then rate_limit_disconnect', async () => {
    const running = await start(
      [module({ violations: { max: 3, windowMs: 60_000 } })],
      [BareIoGateway, { provide: APP_GUARD, useClass: WsThrottleGuard }],
      true,
    );
    const client = await ioClient(`http://127.0.0.1:${running.port}/bare`);
    for (let i = 0; i < 6; i++) client.socket.emit('chat', i);
    await client.disconnected();
    expect(client.of('ack')).toHaveLength(2);
    expect(client.of('rate_limit').map((data) => (data as { warningCount: number }).warningCount)).toEqual([1, 2, 3]);
    expect(client.of('rate_limit_disconnect')).toEqual([{ code: 1008, reason: 'Rate limit violations' }]);
    expect(client.of('exception')).toEqual([]);
  });

  it("the frameBuilder's flat frame is what the global guard's refusals send too", async () => {
    const running = await start(
      [module({ frameBuilder: (info) => ({ type: 'rate_limit', ...info }) })],
      [BareGateway, { provide: APP_GUARD, useClass: WsThrottleGuard }],
    );
    const client = await wsClient(running.url);
    client.inOneWrite(() => [0, 1, 2].forEach((i) => client.send('chat', i)));
    const [flat] = await client.waitFor((frame) => frame['type'] === 'rate_limit');
    expect(flat).toEqual({
      type: 'rate_limit',
      code: 'TYPE_LIMIT',
      messageType: 'chat',
      retryAfter: expect.any(Number),
      warningCount: 1,
      limit: 2,
      remaining: 0,
    });
    expect(client.events('rate_limit')).toEqual([]);
  });
});

// --- Frame builders ------------------------------------------------------------------------

describe('frameBuilder', () => {
  it('ws: a builder that throws: the default frame goes out, violations count, 1008 at the threshold, one warning', async () => {
    const warnings = captureWarnings();
    let calls = 0;
    const running = await start(
      [
        module({
          violations: { max: 3, windowMs: 60_000 },
          frameBuilder: () => {
            calls++;
            throw new Error('builder bug');
          },
        }),
      ],
      [BareGateway, { provide: APP_GUARD, useClass: WsThrottleGuard }],
    );
    const client = await wsClient(running.url);
    for (let i = 0; i < 5; i++) client.send('chat', i);
    expect(await client.waitClose()).toEqual({ code: 1008, reason: 'Rate limit violations' });
    expect(client.events('rate_limit').map((frame) => frame.data.warningCount)).toEqual([1, 2, 3]);
    expect(calls).toBe(3);
    expect(warnings.filter((line) => line.includes('frameBuilder threw'))).toHaveLength(1);
    expect(warnings.find((line) => line.includes('frameBuilder threw'))).toContain('builder bug');
  });

  it('socket.io: the flat frame arrives as the rate_limit event; a throwing builder gives the default data', async () => {
    const flat = await start(
      [module({ frameBuilder: (info) => ({ type: 'rate_limit', ...info }) })],
      [IoRootGateway],
      true,
    );
    const a = await ioClient(`http://127.0.0.1:${flat.port}`);
    expect(await ioBurst(a, ['root', 'root', 'root'])).toEqual(['ack', 'ack', 'rate_limit']);
    expect(a.of('rate_limit')[0]).toMatchObject({ type: 'rate_limit', code: 'TYPE_LIMIT', messageType: 'root' });

    captureWarnings();
    const throwing = await start(
      [
        module({
          frameBuilder: () => {
            throw new Error('builder bug');
          },
        }),
      ],
      [IoRootGateway],
      true,
    );
    const b = await ioClient(`http://127.0.0.1:${throwing.port}`);
    expect(await ioBurst(b, ['root', 'root', 'root'])).toEqual(['ack', 'ack', 'rate_limit']);
    const data = b.of('rate_limit')[0] as Record<string, unknown>;
    expect(data).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'root', warningCount: 1, limit: 2 });
    expect(data['type']).toBeUndefined();
  });

  it('a frameBuilder that is not a function stops start-up naming option frameBuilder', async () => {
    await expect(
      compile([
        module({ frameBuilder: { type: 'rate_limit' } as unknown as WsRateLimitModuleOptions['frameBuilder'] }),
      ]),
    ).rejects.toThrow('option frameBuilder must be a function');
  });
});
