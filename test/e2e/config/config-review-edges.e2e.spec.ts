/**
 * Review of configuration end to end: WS_RATE_LIMIT_* variables and their options through
 * forRoot, forRootAsync (ConfigService) and useEnv, on live apps with real `ws` and socket.io
 * clients on 127.0.0.1 (and a redis-server of the test's own).
 *
 * Failed before (fixed with this file): on socket.io, a gateway's own larger
 * maxHttpBufferSize held for text events but a binary event of that size was cut off at the
 * module's maxPayload; a WS_RATE_LIMIT_TYPES that ConfigService returned parsed was refused
 * as "not valid JSON"; option trustProxy "2" was refused where the variable reads two hops;
 * WS_RATE_LIMIT_REDIS_PASSWORD beside WS_RATE_LIMIT_REDIS_URL was dropped without a word (it
 * now fills in for a URL that carries no password).
 */
import { afterEach, describe, expect, it, jest } from '@jest/globals';
import { Logger, type INestApplication } from '@nestjs/common';
import { ConfigModule, ConfigService } from '@nestjs/config';
import { Test } from '@nestjs/testing';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import {
  ENV_VARIABLES,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, withEnv, type RunningApp } from '../../support/app.js';
import { connectionsEndedByServer, upgrade } from '../../support/http.js';
import { connectIo, type IoTestClient } from '../../support/io-client.js';
import { settle, sleep, TestClient } from '../../support/ws-client.js';
import { startRedis, type RedisServer } from '../../support/redis-server.js';
import { Redis } from 'ioredis';

const NO_ENV = Object.fromEntries(ENV_VARIABLES.map((variable) => [variable.name, undefined]));
/** Refill rates slow enough that time never decides a count. */
const SLOW = '0.001';
/** The bytes of `{"event":"note","data":""}`: a note frame's size is this plus its text. */
const SKELETON = JSON.stringify({ event: 'note', data: '' }).length;

// --- Gateways ----------------------------------------------------------------------------

@WebSocketGateway()
@WsRateLimit()
class EdgeGateway {
  @SubscribeMessage('note')
  note(@MessageBody() data: unknown) {
    return { event: 'ack', data: typeof data === 'string' ? data.length : data };
  }

  @Throttle({ type: 'shared' })
  @SubscribeMessage('one')
  one() {
    return { event: 'ack', data: 'one' };
  }

  @Throttle({ type: 'shared' })
  @SubscribeMessage('two')
  two() {
    return { event: 'ack', data: 'two' };
  }

  @Throttle({ capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('own')
  own() {
    return { event: 'ack', data: 'own' };
  }
}

/** Class-level figures, and the module's types for the same event. */
@WebSocketGateway({ path: '/classy' })
@WsRateLimit()
@Throttle({ capacity: 2, refillRate: 0.001 })
class ClassFiguresGateway {
  @SubscribeMessage('classed')
  classed() {
    return { event: 'ack', data: 'classed' };
  }
}

/** socket.io: the module's maxPayload decides. */
@WebSocketGateway()
@WsRateLimit()
class PlainIoGateway {
  @SubscribeMessage('upload')
  upload(@MessageBody() data: unknown) {
    return { event: 'uploaded', data: Buffer.isBuffer(data) || typeof data === 'string' ? data.length : -1 };
  }
}

/** socket.io: a gateway that raises its own maxHttpBufferSize (README: it wins). */
@WebSocketGateway({ maxHttpBufferSize: 1_000_000 })
@WsRateLimit()
class BigBufferIoGateway extends PlainIoGateway {}

/** socket.io: an invalid figure. */
@WebSocketGateway()
@WsRateLimit()
class InvalidIoGateway {
  @Throttle({ limits: { 'a:b': { capacity: 2, refillRate: 1 } } })
  @SubscribeMessage('bad')
  bad() {
    return { event: 'ok' };
  }
}

// --- Harness -----------------------------------------------------------------------------

const apps: Array<RunningApp | INestApplication> = [];
const clients: TestClient[] = [];
const ioClients: IoTestClient[] = [];
const cleanups: Array<() => void> = [];

async function closeAll(): Promise<void> {
  await Promise.all(clients.splice(0).map((client) => client.close()));
  for (const client of ioClients.splice(0)) await client.closeAndSettle().catch(() => undefined);
  for (const app of apps.splice(0)) await app.close();
  for (const cleanup of cleanups.splice(0)) cleanup();
}
afterEach(closeAll);

type Module = ReturnType<typeof WsRateLimitModule.forRoot>;

/** A live ws app reading the environment `env` (every other WS_RATE_LIMIT_* unset). */
async function startWs(
  env: Record<string, string>,
  module: Module = WsRateLimitModule.forRoot({ metrics: false }),
  gateways: object[] = [EdgeGateway],
  io = false,
): Promise<RunningApp> {
  return withEnv({ ...NO_ENV, ...env }, async () => {
    const running = await startApp(
      { imports: [ConfigModule.forRoot({ ignoreEnvFile: true }), module], providers: gateways as never[] },
      (app) => (io ? new WsRateLimitIoAdapter(app) : new WsRateLimitAdapter(app)),
    );
    apps.push(running);
    return running;
  });
}

/** A socket.io app on these options (no environment); returns its http:// address. */
async function startIo(options: WsRateLimitModuleOptions, gateways: object[]): Promise<string> {
  const module = WsRateLimitModule.forRoot({ useEnv: false, metrics: false, ...options });
  return `http://127.0.0.1:${(await startWs({}, module, gateways, true)).port}`;
}

async function connect(url: string, options: WebSocket.ClientOptions = {}): Promise<TestClient> {
  const client = await TestClient.connect(url, options);
  clients.push(client);
  return client;
}

/** Connects, or returns the HTTP status of the refusal. */
async function tryConnect(url: string, headers: Record<string, string> = {}): Promise<'open' | string> {
  try {
    await connect(url, { headers });
    return 'open';
  } catch (error) {
    return (error as Error).message;
  }
}

const answered = (frame: { event?: string }) => frame.event === 'ack' || frame.event === 'rate_limit';

/** Sends `events` in one TCP write and returns the answers' events (ack / rate_limit). */
async function burst(client: TestClient, events: string[]): Promise<string[]> {
  const before = client.frames.filter(answered).length;
  client.inOneWrite(() => {
    for (const event of events) client.send(event);
  });
  const all = await client.waitFor(answered, before + events.length);
  return all.slice(before).map((frame) => frame.event!);
}

/** Captures Logger warnings for the length of the test. */
function captureWarnings(): string[] {
  const lines: string[] = [];
  const spy = jest.spyOn(Logger.prototype, 'warn').mockImplementation((message: unknown) => {
    lines.push(String(message));
  });
  cleanups.push(() => spy.mockRestore());
  return lines;
}

/** Compiles a module under `env`; `config` makes the app's ConfigModule (inside the environment). */
const compile = (
  env: Record<string, string>,
  module: Module = WsRateLimitModule.forRoot({ metrics: false }),
  config = () => ConfigModule.forRoot({ ignoreEnvFile: true }),
) =>
  withEnv({ ...NO_ENV, ...env }, async () => {
    const moduleRef = await Test.createTestingModule({ imports: [config(), module] }).compile();
    apps.push(moduleRef as unknown as INestApplication);
    return moduleRef;
  });

// --- Payload -----------------------------------------------------------------------------

describe('WS_RATE_LIMIT_MAX_PAYLOAD on a live app', () => {
  it.each([
    ['text', false],
    ['binary', true],
  ])('ws: a %s frame of exactly MAX_PAYLOAD bytes is handled, one byte more closes with 1009', async (_k, binary) => {
    const running = await startWs({ WS_RATE_LIMIT_MAX_PAYLOAD: '200' });
    const frame = (size: number) => {
      const text = JSON.stringify({ event: 'note', data: 'x'.repeat(size - SKELETON) });
      return binary ? Buffer.from(text) : text;
    };
    const client = await connect(running.url);
    client.sendRaw(frame(200));
    const [ack] = await client.waitForEvent('ack');
    expect(ack!.data).toBe(200 - SKELETON);
    client.sendRaw(frame(201));
    expect((await client.waitClose()).code).toBe(1009);
  });

  it('socket.io: an Engine.IO packet of exactly maxPayload bytes is handled, one byte more ends the connection', async () => {
    const url = await startIo({ maxPayload: 300 }, [PlainIoGateway]);
    // Over the websocket transport the frame is `42["upload","..."]`.
    const overhead = Buffer.byteLength('42["upload",""]');
    const client = await connectIo(url, 'websocket');
    ioClients.push(client);
    client.socket.emit('upload', 'x'.repeat(300 - overhead));
    await client.until(() => client.of('uploaded').length === 1);
    expect(client.of('uploaded')).toEqual([300 - overhead]);
    client.socket.emit('upload', 'x'.repeat(301 - overhead));
    await client.disconnected();
    expect(client.of('uploaded')).toHaveLength(1);
  });

  it("socket.io: a gateway's own larger maxHttpBufferSize wins for text events and for a binary event of the same size", async () => {
    const url = await startIo({ maxPayload: 64 * 1024 }, [BigBufferIoGateway]);
    const client = await connectIo(url, 'websocket');
    ioClients.push(client);
    // 100 KiB: above maxPayload, well within the gateway's maxHttpBufferSize of 1 MB.
    client.socket.emit('upload', 'x'.repeat(100 * 1024));
    await client.until(() => client.of('uploaded').length === 1, 10_000, 'the text upload');
    client.socket.emit('upload', Buffer.alloc(100 * 1024, 0x61));
    await client
      .until(() => client.of('uploaded').length === 2 || client.disconnectReason !== undefined, 10_000, 'an answer')
      .catch(() => undefined);
    expect({ uploaded: client.of('uploaded'), disconnect: client.disconnectReason }).toEqual({
      uploaded: [100 * 1024, 100 * 1024],
      disconnect: undefined,
    });
  });
});

// --- Client addresses --------------------------------------------------------------------

describe('trusted proxies and forwarding headers from the environment', () => {
  const ONE_CONNECTION = { WS_RATE_LIMIT_CONNECTION_CAPACITY: '1', WS_RATE_LIMIT_CONNECTION_REFILL_RATE: SLOW };

  it('without WS_RATE_LIMIT_TRUST_PROXY a spoofed X-Forwarded-For is ignored (and warned about once)', async () => {
    const warnings = captureWarnings();
    const running = await startWs(ONE_CONNECTION);
    expect(await tryConnect(running.url, { 'x-forwarded-for': '198.51.100.1' })).toBe('open');
    expect(await tryConnect(running.url, { 'x-forwarded-for': '198.51.100.2' })).toBe('HTTP 429');
    const answer = await upgrade(running.port, { 'x-forwarded-for': '198.51.100.3' });
    expect(answer.status).toBe(429);
    expect(Number(answer.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(warnings.filter((line) => line.includes('X-Forwarded-For'))).toHaveLength(1);
  });

  it('TRUST_PROXY=loopback: the right-most untrusted X-Forwarded-For entry is the client; left entries cannot dodge', async () => {
    const running = await startWs({ ...ONE_CONNECTION, WS_RATE_LIMIT_TRUST_PROXY: 'loopback' });
    expect(await tryConnect(running.url, { 'x-forwarded-for': '198.51.100.1' })).toBe('open');
    expect(await tryConnect(running.url, { 'x-forwarded-for': '198.51.100.2' })).toBe('open');
    // A spoofed entry on the left, the proxy's on the right: still 198.51.100.1.
    expect(await tryConnect(running.url, { 'x-forwarded-for': '203.0.113.7, 198.51.100.1' })).toBe('HTTP 429');
    // A trusted hop on the right is walked past.
    expect(await tryConnect(running.url, { 'x-forwarded-for': '198.51.100.2, 127.0.0.9' })).toBe('HTTP 429');
    // Forwarded is not read in place of X-Forwarded-For: this is the peer's own address.
    expect(await tryConnect(running.url, { forwarded: 'for=198.51.100.50' })).toBe('open');
    expect(await tryConnect(running.url, { forwarded: 'for=198.51.100.51' })).toBe('HTTP 429');
  });

  it('TRUST_PROXY as a hop count: the last entry is the client whatever comes before it', async () => {
    const running = await startWs({ ...ONE_CONNECTION, WS_RATE_LIMIT_TRUST_PROXY: '1' });
    expect(await tryConnect(running.url, { 'x-forwarded-for': '203.0.113.1, 198.51.100.9' })).toBe('open');
    expect(await tryConnect(running.url, { 'x-forwarded-for': '203.0.113.2, 198.51.100.9' })).toBe('HTTP 429');
    expect(await tryConnect(running.url, { 'x-forwarded-for': '198.51.100.10' })).toBe('open');
  });

  it.each([
    ['64', ['open', 'HTTP 429']],
    ['128', ['open', 'open']],
  ])(
    'FORWARDED_HEADER=forwarded, IPV6_PREFIX=%s: IPv6 clients behind the proxy are grouped by that prefix',
    async (prefix, expected) => {
      const running = await startWs({
        ...ONE_CONNECTION,
        WS_RATE_LIMIT_TRUST_PROXY: '127.0.0.1',
        WS_RATE_LIMIT_FORWARDED_HEADER: 'forwarded',
        WS_RATE_LIMIT_IPV6_PREFIX: prefix,
      });
      const first = await tryConnect(running.url, { forwarded: 'for="[2001:db8:1:2::1]:4711";proto=http' });
      const second = await tryConnect(running.url, {
        forwarded: 'For="[2001:db8:1:2::99]"',
        'x-forwarded-for': '198.51.100.77',
      });
      expect([first, second]).toEqual(expected);
      // IPv4-mapped IPv6 is the IPv4 client.
      expect(await tryConnect(running.url, { forwarded: 'for="198.51.100.5:80"' })).toBe('open');
      expect(await tryConnect(running.url, { forwarded: 'for="[::ffff:198.51.100.5]"' })).toBe('HTTP 429');
    },
  );
});

// --- Connections and handshakes -------------------------------------------------------------

describe('connection and handshake limits from the environment', () => {
  it('CONNECTION_CAPACITY=N admits exactly N upgrades; MAX_CONNECTIONS_PER_IP frees a slot when a client leaves', async () => {
    const running = await startWs({
      WS_RATE_LIMIT_CONNECTION_CAPACITY: '3',
      WS_RATE_LIMIT_CONNECTION_REFILL_RATE: SLOW,
    });
    const results = [];
    for (let i = 0; i < 4; i++) results.push(await tryConnect(running.url));
    expect(results).toEqual(['open', 'open', 'open', 'HTTP 429']);

    const capped = await startWs({
      WS_RATE_LIMIT_MAX_CONNECTIONS_PER_IP: '2',
      WS_RATE_LIMIT_CONNECTION_CAPACITY: '50',
    });
    const first = await connect(capped.url);
    await connect(capped.url);
    expect(await tryConnect(capped.url)).toBe('HTTP 429');
    await first.close();
    const limiter = capped.app.get(WsRateLimitService);
    await settle(() => limiter.stats().connections === 1, 0, 5_000);
    expect(await tryConnect(capped.url)).toBe('open');
  });

  it('CONNECTION_REFUSAL=close upgrades and closes a refused client with 1008 and a reason', async () => {
    const running = await startWs({
      WS_RATE_LIMIT_CONNECTION_CAPACITY: '1',
      WS_RATE_LIMIT_CONNECTION_REFILL_RATE: SLOW,
      WS_RATE_LIMIT_CONNECTION_REFUSAL: 'close',
    });
    await connect(running.url);
    const refused = await connect(running.url);
    expect(await refused.waitClose()).toEqual({ code: 1008, reason: 'Connection rate limit exceeded' });
  });

  it('MAX_PENDING_HANDSHAKES_PER_IP=2 drops the third silent TCP connection; HANDSHAKE_TIMEOUT_MS ends the others', async () => {
    const running = await startWs({
      WS_RATE_LIMIT_MAX_PENDING_HANDSHAKES_PER_IP: '2',
      WS_RATE_LIMIT_HANDSHAKE_TIMEOUT_MS: '60000',
    });
    expect(await connectionsEndedByServer(running.port, 3, 1_500)).toBe(1);
    const timed = await startWs({ WS_RATE_LIMIT_HANDSHAKE_TIMEOUT_MS: '300' });
    expect(await connectionsEndedByServer(timed.port, 2, 5_000)).toBe(2);
  });

  it('PING_INTERVAL_MS / PONG_TIMEOUT_MS end a client that does not answer pings, and keep one that does', async () => {
    const running = await startWs({ WS_RATE_LIMIT_PING_INTERVAL_MS: '200', WS_RATE_LIMIT_PONG_TIMEOUT_MS: '300' });
    const silent = await connect(running.url, { autoPong: false });
    const alive = await connect(running.url);
    expect((await silent.waitClose(8_000)).code).toBe(1006);
    expect(alive.socket.readyState).toBe(WebSocket.OPEN);
    alive.send('note', 'still here');
    await alive.waitForEvent('ack');
  });
});

// --- Messages ----------------------------------------------------------------------------

describe('message limits and precedence', () => {
  it('forRootAsync (ConfigService): a factory field wins, the environment fills the rest, then defaults', async () => {
    const module = WsRateLimitModule.forRootAsync({
      imports: [ConfigModule],
      inject: [ConfigService],
      useFactory: (config: ConfigService) => ({
        metrics: false,
        type: { capacity: Number(config.get('APP_TYPE_BURST')) },
      }),
    });
    const running = await startWs(
      {
        APP_TYPE_BURST: '3',
        WS_RATE_LIMIT_TYPE_CAPACITY: '1',
        WS_RATE_LIMIT_TYPE_REFILL_RATE: SLOW,
        WS_RATE_LIMIT_MAX_VIOLATIONS: '2',
        WS_RATE_LIMIT_VIOLATION_CLOSE_CODE: '4001',
        WS_RATE_LIMIT_VIOLATION_CLOSE_REASON: 'slow down',
      },
      module,
    );
    const client = await connect(running.url);
    expect(await burst(client, ['note', 'note', 'note', 'note'])).toEqual(['ack', 'ack', 'ack', 'rate_limit']);
    expect(client.events('rate_limit')[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', limit: 3, warningCount: 1 });
    client.send('note');
    expect(await client.waitClose()).toEqual({ code: 4001, reason: 'slow down' });
    const options = running.app.get(WsRateLimitService).options;
    expect(options.global).toEqual({ capacity: 100, refillRate: 50 });
  });

  it('GLOBAL_CAPACITY=N admits exactly N messages of any types; TYPES figures apply to a shared @Throttle type', async () => {
    const running = await startWs({
      WS_RATE_LIMIT_GLOBAL_CAPACITY: '5',
      WS_RATE_LIMIT_GLOBAL_REFILL_RATE: SLOW,
      WS_RATE_LIMIT_TYPES: '{"shared":{"capacity":2,"refillRate":0.001}}',
    });
    const client = await connect(running.url);
    expect(await burst(client, ['one', 'two', 'one'])).toEqual(['ack', 'ack', 'rate_limit']);
    expect(client.events('rate_limit')[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'shared', limit: 2 });
    expect(await burst(client, ['note', 'note', 'note', 'note'])).toEqual(['ack', 'ack', 'ack', 'rate_limit']);
    expect(client.events('rate_limit')[1]!.data).toMatchObject({ code: 'GLOBAL_LIMIT', limit: 5 });
  });

  it('@Throttle figures win over WS_RATE_LIMIT_TYPES, on the handler and on the class', async () => {
    const running = await startWs(
      {
        WS_RATE_LIMIT_TYPES: '{"own":{"capacity":5,"refillRate":0.001},"classed":{"capacity":5,"refillRate":0.001}}',
      },
      undefined,
      [EdgeGateway, ClassFiguresGateway],
    );
    const client = await connect(running.url);
    expect(await burst(client, ['own', 'own'])).toEqual(['ack', 'rate_limit']);
    const classy = await connect(`${running.url}/classy`);
    expect(await burst(classy, ['classed', 'classed', 'classed'])).toEqual(['ack', 'ack', 'rate_limit']);
  });

  it('SHADOW=true decides but refuses nothing; ALLOW_LIST skips every limit; DENY_LIST refuses with 403', async () => {
    const shadow = await startWs({ WS_RATE_LIMIT_SHADOW: 'true', WS_RATE_LIMIT_TYPE_CAPACITY: '1' });
    const client = await connect(shadow.url);
    expect(await burst(client, ['note', 'note', 'note'])).toEqual(['ack', 'ack', 'ack']);
    const allowed = await startWs({
      WS_RATE_LIMIT_ALLOW_LIST: ' 127.0.0.1 ,',
      WS_RATE_LIMIT_CONNECTION_CAPACITY: '1',
      WS_RATE_LIMIT_CONNECTION_REFILL_RATE: SLOW,
      WS_RATE_LIMIT_TYPE_CAPACITY: '1',
    });
    await connect(allowed.url);
    const second = await connect(allowed.url);
    expect(await burst(second, ['note', 'note', 'note'])).toEqual(['ack', 'ack', 'ack']);
    const denied = await startWs({ WS_RATE_LIMIT_DENY_LIST: '127.0.0.0/8' });
    expect((await upgrade(denied.port)).status).toBe(403);
  });
});

// --- Invalid values ----------------------------------------------------------------------

describe('invalid values stop start-up naming the variable and the value', () => {
  it.each([
    ['WS_RATE_LIMIT_MAX_PAYLOAD', '0x10'],
    ['WS_RATE_LIMIT_PING_INTERVAL_MS', '10ms'],
    ['WS_RATE_LIMIT_GLOBAL_REFILL_RATE', 'true'],
    ['WS_RATE_LIMIT_CONNECTION_REFILL_RATE', '1e309'],
    ['WS_RATE_LIMIT_MAX_PENDING_HANDSHAKES_PER_IP', '-1'],
    ['WS_RATE_LIMIT_PONG_TIMEOUT_MS', '0'],
    ['WS_RATE_LIMIT_MAX_BUFFERED_BYTES', '1.5'],
    ['WS_RATE_LIMIT_CLOSE_GRACE_MS', '2s'],
    ['WS_RATE_LIMIT_MAX_KEYS', '16777216'],
    ['WS_RATE_LIMIT_REDIS_RESERVATION_BATCH', '4097'],
    ['WS_RATE_LIMIT_REDIS_CLOCK', 'server'],
    ['WS_RATE_LIMIT_SHADOW', '1'],
    ['WS_RATE_LIMIT_IPV6_PREFIX', '64.5'],
    ['WS_RATE_LIMIT_FORWARDED_HEADER', 'x-real-ip'],
    ['WS_RATE_LIMIT_METRICS_PREFIX', 'my-app'],
    ['WS_RATE_LIMIT_ALLOW_LIST', '10.0.0.0/33'],
    ['WS_RATE_LIMIT_TRUST_PROXY', '1.5'],
    ['WS_RATE_LIMIT_TRUST_PROXY', 'proxy.internal'],
    ['WS_RATE_LIMIT_VIOLATION_CLOSE_CODE', '1004'],
  ])('%s=%s', async (name, value) => {
    const failure = compile({ [name]: value }, WsRateLimitModule.forRoot());
    await expect(failure).rejects.toThrow(name);
    await expect(failure).rejects.toThrow(`got ${JSON.stringify(value)}`);
  });

  it('forRootAsync: a NaN from the factory (Number("10ms")) stops start-up naming option global.capacity', async () => {
    const module = WsRateLimitModule.forRootAsync({
      imports: [ConfigModule],
      inject: [ConfigService],
      useFactory: (config: ConfigService) => ({ global: { capacity: Number(config.get('APP_BURST')) } }),
    });
    await expect(compile({ APP_BURST: '10ms' }, module)).rejects.toThrow(
      'option global.capacity must be a number greater than 0 and at most 1000000, got NaN',
    );
  });

  it('useEnv: false from a factory: invalid and misspelled variables are not looked at', async () => {
    const warnings = captureWarnings();
    const module = WsRateLimitModule.forRootAsync({ useFactory: () => ({ useEnv: false, metrics: false }) });
    const moduleRef = await compile(
      { WS_RATE_LIMIT_GLOBAL_CAPACITY: 'lots', WS_RATE_LIMIT_GLOBAL_CAPACTIY: '5', WS_RATE_LIMIT_REDIS_URL: 'x' },
      module,
    );
    expect(moduleRef.get(WsRateLimitService).options.global.capacity).toBe(100);
    expect(warnings).toEqual([]);
  });

  it('a misspelled variable in a .env file is warned about with the name it most likely means, and ignored', async () => {
    const warnings = captureWarnings();
    const file = join(tmpdir(), `wsrl-review-${process.pid}.env`);
    writeFileSync(file, 'WS_RATE_LIMIT_MAX_PAYLAOD=10\n');
    cleanups.push(() => {
      rmSync(file, { force: true });
      delete process.env['WS_RATE_LIMIT_MAX_PAYLAOD'];
    });
    const moduleRef = await compile({}, undefined, () => ConfigModule.forRoot({ envFilePath: file }));
    expect(moduleRef.get(WsRateLimitService).options.maxPayload).toBe(65536);
    expect(warnings).toContainEqual(
      'WS_RATE_LIMIT_MAX_PAYLAOD is not a variable of nestjs-ws-rate-limit and is ignored: did you mean WS_RATE_LIMIT_MAX_PAYLOAD?',
    );
  });

  it('a WS_RATE_LIMIT_TYPES that ConfigService returns parsed (a validate step that reads the JSON) is taken as its JSON', async () => {
    const parsing = () =>
      ConfigModule.forRoot({
        ignoreEnvFile: true,
        validate: (env: Record<string, unknown>) => ({
          ...env,
          WS_RATE_LIMIT_TYPES: JSON.parse(String(env['WS_RATE_LIMIT_TYPES'])),
        }),
      });
    const started = await compile(
      { WS_RATE_LIMIT_TYPES: '{"note":{"capacity":2,"refillRate":0.001}}' },
      undefined,
      parsing,
    ).then(
      (ref) => ref.get(WsRateLimitService).options.types,
      (error: Error) => error.message,
    );
    expect(started).toEqual({ note: { capacity: 2, refillRate: 0.001 } });
  });
});

// --- More variables on live apps --------------------------------------------------------

describe('more variables and options on live apps', () => {
  it('WS_RATE_LIMIT_PLANS from the environment with a planResolver in code; an unknown plan name is warned about', async () => {
    const warnings = captureWarnings();
    const module = WsRateLimitModule.forRoot({
      metrics: false,
      planResolver: (_client, context) => context.request?.headers['x-plan'] as string | undefined,
    });
    const running = await startWs(
      {
        WS_RATE_LIMIT_PLANS:
          '{"pro":{"global":{"capacity":3,"refillRate":0.001}},"free":{"types":{"own":{"capacity":3}}}}',
      },
      module,
    );
    const pro = await connect(running.url, { headers: { 'x-plan': 'pro' } });
    expect(await burst(pro, ['note', 'note', 'note', 'note'])).toEqual(['ack', 'ack', 'ack', 'rate_limit']);
    const free = await connect(running.url, { headers: { 'x-plan': 'free' } });
    expect(await burst(free, ['own', 'own', 'own', 'own'])).toEqual(['ack', 'ack', 'ack', 'rate_limit']);
    const typo = await connect(running.url, { headers: { 'x-plan': 'prro' } });
    expect(await burst(typo, ['own', 'own'])).toEqual(['ack', 'rate_limit']);
    expect(warnings.join('\n')).toContain('prro');
  });

  it('VIOLATION_WINDOW_MS: violations older than the window no longer count toward MAX_VIOLATIONS', async () => {
    // A window of 1.5 s: the two refusals after the wait must fall in one window, and a
    // stall of a loaded machine between them must not split them.
    const running = await startWs({ WS_RATE_LIMIT_MAX_VIOLATIONS: '2', WS_RATE_LIMIT_VIOLATION_WINDOW_MS: '1500' });
    const client = await connect(running.url);
    expect(await burst(client, ['own', 'own'])).toEqual(['ack', 'rate_limit']);
    await sleep(1800);
    expect(await burst(client, ['own'])).toEqual(['rate_limit']);
    expect(client.events('rate_limit').map((frame) => frame.data.warningCount)).toEqual([1, 1]);
    expect(await burst(client, ['own'])).toEqual(['rate_limit']);
    expect((await client.waitClose()).code).toBe(1008);
  });

  it('PER_MESSAGE_DEFLATE=true: MAX_PAYLOAD applies after decompression, at the exact byte', async () => {
    const running = await startWs({ WS_RATE_LIMIT_MAX_PAYLOAD: '1000', WS_RATE_LIMIT_PER_MESSAGE_DEFLATE: 'true' });
    const client = await connect(running.url, { perMessageDeflate: true });
    client.sendRaw(JSON.stringify({ event: 'note', data: 'x'.repeat(1000 - SKELETON) }));
    await client.waitForEvent('ack');
    client.sendRaw(JSON.stringify({ event: 'note', data: 'x'.repeat(1001 - SKELETON) }));
    expect((await client.waitClose()).code).toBe(1009);
  });

  it('socket.io: MAX_VIOLATIONS and VIOLATION_CLOSE_CODE from the environment shape rate_limit_disconnect', async () => {
    const running = await startWs(
      {
        WS_RATE_LIMIT_MAX_VIOLATIONS: '1',
        WS_RATE_LIMIT_VIOLATION_CLOSE_CODE: '4002',
        WS_RATE_LIMIT_TYPES: '{"upload":{"capacity":1,"refillRate":0.001}}',
      },
      undefined,
      [PlainIoGateway],
      true,
    );
    const client = await connectIo(`http://127.0.0.1:${running.port}`, 'websocket');
    ioClients.push(client);
    client.socket.emit('upload', 'a');
    client.socket.emit('upload', 'b');
    await client.disconnected();
    expect(client.of('rate_limit_disconnect')).toEqual([{ code: 4002, reason: 'Rate limit violations' }]);
    expect(client.of('uploaded')).toEqual([1]);
  });

  it('socket.io: an invalid @Throttle (a named limit "a:b") stops start-up, not the first message', async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false })],
      providers: [InvalidIoGateway],
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    app.useWebSocketAdapter(new WsRateLimitIoAdapter(app));
    apps.push(app);
    await expect(app.init()).rejects.toThrow('@Throttle on InvalidIoGateway.bad: limit name "a:b"');
  });

  it('a variable given through ConfigModule.forRoot({ load }) is read through ConfigService', async () => {
    const load = () =>
      ConfigModule.forRoot({ ignoreEnvFile: true, load: [() => ({ WS_RATE_LIMIT_TYPE_CAPACITY: '3' })] });
    const moduleRef = await compile({}, undefined, load);
    expect(moduleRef.get(WsRateLimitService).options.type.capacity).toBe(3);
  });

  it('option trustProxy "2" (the text WS_RATE_LIMIT_TRUST_PROXY=2 reads as two hops, e.g. passed on from ConfigService) is two hops', async () => {
    const started = await startWs(
      { WS_RATE_LIMIT_CONNECTION_CAPACITY: '1', WS_RATE_LIMIT_CONNECTION_REFILL_RATE: SLOW },
      WsRateLimitModule.forRootAsync({ useFactory: () => ({ metrics: false, trustProxy: '2' }) }),
    ).then(
      (running) => running,
      (error: Error) => error.message,
    );
    expect(typeof started === 'string' ? started : started.app.get(WsRateLimitService).options.trustProxy).toEqual({
      kind: 'hops',
      hops: 2,
    });
  });
});

// --- Redis -------------------------------------------------------------------------------

describe('the Redis store configured from the environment', () => {
  let server: RedisServer | undefined;
  afterEach(async () => {
    await closeAll();
    await server?.stop();
    server = undefined;
  });

  it('STORE, REDIS_URL (with a db), KEY_PREFIX, TRACKER=ip, REDIS_CLOCK=app: two apps share one budget under the prefix', async () => {
    server = await startRedis();
    const env = {
      WS_RATE_LIMIT_STORE: 'redis',
      WS_RATE_LIMIT_REDIS_URL: `${server.url}/2`,
      WS_RATE_LIMIT_KEY_PREFIX: 'rv:',
      WS_RATE_LIMIT_TRACKER: 'ip',
      WS_RATE_LIMIT_GLOBAL_CAPACITY: '3',
      WS_RATE_LIMIT_GLOBAL_REFILL_RATE: SLOW,
      WS_RATE_LIMIT_REDIS_CLOCK: 'app',
      WS_RATE_LIMIT_REDIS_BLOCK_CACHE: '0',
    };
    const a = await startWs(env);
    const b = await startWs(env);
    expect(await burst(await connect(a.url), ['note', 'note'])).toEqual(['ack', 'ack']);
    expect(await burst(await connect(b.url), ['note', 'note'])).toEqual(['ack', 'rate_limit']);
    const admin = new Redis({ host: '127.0.0.1', port: server.port, db: 2 });
    const keys = await admin.keys('*');
    await admin.quit();
    expect(keys.length).toBeGreaterThan(0);
    expect(keys.filter((key) => !key.startsWith('rv:'))).toEqual([]);
  });

  it('WS_RATE_LIMIT_REDIS_PASSWORD beside a WS_RATE_LIMIT_REDIS_URL without one is used: the store authenticates and shares its limits', async () => {
    const warnings = captureWarnings();
    server = await startRedis();
    await server.command('CONFIG', 'SET', 'requirepass', 'secret');
    const env = {
      WS_RATE_LIMIT_STORE: 'redis',
      WS_RATE_LIMIT_REDIS_URL: server.url,
      WS_RATE_LIMIT_REDIS_PASSWORD: 'secret',
      WS_RATE_LIMIT_TRACKER: 'ip',
    };
    let outcome: string;
    try {
      const running = await startWs(env);
      expect(await burst(await connect(running.url), ['note'])).toEqual(['ack']);
      const admin = new Redis({ host: '127.0.0.1', port: server.port, password: 'secret' });
      const keys = await admin.keys('*');
      await admin.quit();
      const named = warnings.find((line) => line.includes('WS_RATE_LIMIT_REDIS_PASSWORD'));
      outcome =
        keys.length > 0 ? 'the password is used' : (named ?? `silently ignored; logged: ${warnings.join(' | ')}`);
    } catch (error) {
      outcome = (error as Error).message;
    }
    // Either the password reaches the URL's server, or start-up says it is not read.
    expect(outcome).toMatch(/the password is used|WS_RATE_LIMIT_REDIS_PASSWORD/);
  });
});
