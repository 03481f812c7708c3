import { afterEach, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway, WebSocketServer } from '@nestjs/websockets';
import { request as httpRequest } from 'node:http';
import { connect as tcpConnect, type AddressInfo } from 'node:net';
import type { Namespace, Socket as IoSocket } from 'socket.io';
import WebSocket from 'ws';
import {
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { connectIo, IoTestClient, waitFor, type EngineTransport } from '../../support/io-client.js';
import { sleep, TestClient } from '../../support/ws-client.js';

/*
 * Adversarial review: who a client is, and the upgrade.
 *
 * Reviews lib/adapters (handshake-hygiene, forwarding-warning, ws-rate-limit(.io).adapter,
 * engine-io, namespace-guard), lib/connection (connection-admission, connection-registry),
 * lib/config/address-ranges.ts, lib/utils/client-address.ts / client-ip.ts and the `tracker`
 * option, with real `ws` and socket.io-client clients against listening apps on 127.0.0.1,
 * the dual-stack `::` and ::1:
 *
 * - spoofing X-Forwarded-For / Forwarded / X-Real-IP with no trusted proxy, and through a
 *   trusted one (the right-most untrusted hop decides), against the connection rate and the
 *   open-connection cap;
 * - IPv4, IPv4-mapped IPv6 and IPv6 written in several ways: one tracker where they are one
 *   client, two where they are not;
 * - `tracker` functions that throw, reject, return '' or a huge string, or resolve slowly
 *   while messages arrive: every message gets its reply or a frame;
 * - open-connection seats given back on every way a connection ends (client close, abrupt
 *   destroy, server close, a refusal during the handshake, polling->websocket upgrade, a
 *   namespace connect refused), and what a connection that closes while its tracker is still
 *   being decided leaves behind.
 *
 * Two cases failed on the reviewed code (ws and socket.io), and are fixed: a connection that
 * closed while an asynchronous `tracker` was still answering, and whose answer was the
 * connection's own budget (undefined, '', a rejection on an unrouted frame), had its
 * per-connection tier states created after the close released them, and they were never
 * deleted (`stats().localKeys`; the connection store evicts nothing, so a client could grow
 * the server's memory by connecting, sending and leaving). Now a connection is marked ended
 * when it is forgotten, and a decision made for it after that (`MessageLimiter.decideFor`,
 * and `WsRateLimitService.consume` naming its socket, tested here too) forgets again what it
 * made.
 */

// --- Gateways ------------------------------------------------------------------------------

@WebSocketGateway()
@WsRateLimit()
class IdentityGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }

  @SubscribeMessage('whoami')
  async whoami(@ConnectedSocket() client: object) {
    const status = await IdentityGateway.limiter!.status(client);
    return { event: 'whoami', data: status.tracker };
  }

  /** The server ends the connection (ws: close 4000; socket.io: disconnect). */
  @SubscribeMessage('kick')
  kick(@ConnectedSocket() client: WebSocket | IoSocket) {
    if (client instanceof WebSocket) client.close(4000, 'kicked');
    else client.disconnect(true);
  }

  static limiter: WsRateLimitService | undefined;
}

/** A socket.io namespace whose own middleware refuses every connection. */
@WebSocketGateway({ namespace: '/locked' })
@WsRateLimit()
class LockedGateway {
  @WebSocketServer() namespace!: Namespace;

  afterInit(namespace: Namespace): void {
    namespace.use((_socket, next) => next(new Error('locked')));
  }

  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}

/** A ws gateway on its own path whose own verifyClient refuses requests carrying `x-deny`. */
@WebSocketGateway({
  path: '/guarded',
  verifyClient: (info: { req: { headers: Record<string, unknown> } }) => info.req.headers['x-deny'] === undefined,
})
@WsRateLimit()
class GuardedGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}

/** Keeps the socket that sent `keep`, for code that consumes for it after it closed. */
@WebSocketGateway()
class KeepGateway {
  @SubscribeMessage('keep')
  keep(@ConnectedSocket() client: WebSocket) {
    KeepGateway.socket = client;
    return { event: 'kept', data: true };
  }

  static socket: WebSocket | undefined;
}

// --- Harness -------------------------------------------------------------------------------

interface Running {
  app: INestApplication;
  port: number;
  limiter: WsRateLimitService;
}

let running: Running | undefined;
const wsClients: TestClient[] = [];
const ioClients: IoTestClient[] = [];

async function start(
  options: WsRateLimitModuleOptions,
  { io = false, host = '127.0.0.1', gateways = [] as unknown[] } = {},
): Promise<Running> {
  const moduleRef = await Test.createTestingModule({
    imports: [
      WsRateLimitModule.forRoot({
        useEnv: false,
        violations: { max: 1000, windowMs: 60_000 },
        ...options,
      }),
    ],
    providers: [IdentityGateway, ...(gateways as never[])],
  }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  app.useWebSocketAdapter(io ? new WsRateLimitIoAdapter(app) : new WsRateLimitAdapter(app));
  await app.listen(0, host);
  const port = (app.getHttpServer().address() as AddressInfo).port;
  const limiter = app.get(WsRateLimitService);
  IdentityGateway.limiter = limiter;
  running = { app, port, limiter };
  return running;
}

afterEach(async () => {
  for (const client of wsClients.splice(0)) await client.close().catch(() => undefined);
  for (const client of ioClients.splice(0)) client.close();
  await running?.app.close();
  running = undefined;
  IdentityGateway.limiter = undefined;
});

const wsUrl = (host = '127.0.0.1', path = '') =>
  `ws://${host.includes(':') ? `[${host}]` : host}:${running!.port}${path}`;
const ioUrl = () => `http://127.0.0.1:${running!.port}`;

/** A ws client, kept for clean-up. */
async function wsConnect(headers: Record<string, string> = {}, host = '127.0.0.1', path = ''): Promise<TestClient> {
  const client = await TestClient.connect(wsUrl(host, path), { headers });
  wsClients.push(client);
  return client;
}

/** The HTTP status of a refused ws upgrade ('open' when it opened; then closed at once). */
async function wsStatus(headers: Record<string, string> = {}, host = '127.0.0.1', path = ''): Promise<number | 'open'> {
  try {
    const client = await TestClient.connect(wsUrl(host, path), { headers });
    wsClients.push(client);
    return 'open';
  } catch (error) {
    const match = /HTTP (\d+)/.exec(String(error));
    if (match) return Number(match[1]);
    throw error;
  }
}

/** The tracker key a ws connection spends (via the `whoami` handler). */
async function whoami(client: TestClient): Promise<unknown> {
  const before = client.events('whoami').length;
  client.send('whoami');
  const frames = await client.waitForEvent('whoami', before + 1);
  return frames[before]!.data;
}

async function ioConnect(transport: EngineTransport, options: Record<string, unknown> = {}): Promise<IoTestClient> {
  const client = await connectIo(ioUrl(), transport, options);
  ioClients.push(client);
  return client;
}

/** The concurrency tier's remaining seats for an address. */
async function seatsLeft(address: string): Promise<number> {
  const statuses = await running!.limiter.connectionStatus(address);
  const concurrency = statuses.find((status) => status.tier === 'concurrency');
  if (concurrency === undefined) throw new Error('no concurrency tier');
  return concurrency.remaining;
}

/** Waits until the concurrency tier of `address` shows `seats` left (or fails after 5 s). */
async function seatsBackTo(address: string, seats: number): Promise<void> {
  const deadline = Date.now() + 5000;
  let left = await seatsLeft(address);
  while (left !== seats && Date.now() < deadline) {
    await sleep(20);
    left = await seatsLeft(address);
  }
  expect(left).toBe(seats);
}

// Rates high enough that only the cap decides, or low enough that nothing refills in a test.
const NO_REFILL = { capacity: 3, refillRate: 0.001 };
const WIDE_RATE = { capacity: 1000, refillRate: 1000 };

// --- 1. Spoofed forwarding headers ----------------------------------------------------------

describe('spoofed forwarding headers', () => {
  it('with no trusted proxy, X-Forwarded-For, Forwarded and X-Real-IP buy no fresh connection-rate budget', async () => {
    await start({ connection: NO_REFILL, tracker: 'ip' });
    const spoofs: Record<string, string>[] = [
      { 'X-Forwarded-For': '198.51.100.1' },
      { Forwarded: 'for=198.51.100.2' },
      { 'X-Real-IP': '198.51.100.3', 'X-Forwarded-For': '198.51.100.3, 198.51.100.4' },
    ];
    for (const headers of spoofs) {
      const client = await wsConnect(headers);
      expect(await whoami(client)).toBe('ip:127.0.0.1');
    }
    expect(await wsStatus({ 'X-Forwarded-For': '203.0.113.99', Forwarded: 'for=203.0.113.98' })).toBe(429);
  });

  it('with no trusted proxy, spoofed headers do not lift the open-connection cap', async () => {
    await start({ connection: WIDE_RATE, maxConnectionsPerIp: 2 });
    await wsConnect({ 'X-Forwarded-For': '198.51.100.10' });
    await wsConnect({ Forwarded: 'for="[2001:db8::10]"' });
    expect(await wsStatus({ 'X-Forwarded-For': '198.51.100.11', 'X-Real-IP': '198.51.100.12' })).toBe(429);
  });

  it('through a trusted proxy, what the client wrote left of the hop the proxy appended changes nothing', async () => {
    await start({ connection: NO_REFILL, tracker: 'ip', trustProxy: 'loopback' });
    // The proxy (this test, on loopback) appends the address it saw: 203.0.113.7.
    const chains = [
      '198.51.100.1, 203.0.113.7',
      '127.0.0.1, ::1, 203.0.113.7', // trusted-looking entries the client wrote itself
      'not-an-ip, 203.0.113.7',
    ];
    for (const chain of chains) {
      const client = await wsConnect({ 'X-Forwarded-For': chain, 'X-Real-IP': '198.51.100.50' });
      expect(await whoami(client)).toBe('ip:203.0.113.7');
    }
    expect(await wsStatus({ 'X-Forwarded-For': '198.51.100.99, 203.0.113.7' })).toBe(429);
    // Another client behind the same proxy has its own budget.
    expect(await wsStatus({ 'X-Forwarded-For': '198.51.100.99, 203.0.113.8' })).toBe('open');
  });

  it('through a trusted proxy, the right-most untrusted hop decides the cap', async () => {
    await start({ connection: WIDE_RATE, maxConnectionsPerIp: 1, trustProxy: '127.0.0.1, 10.0.0.0/8' });
    // A client-written line, then the proxies' (a trusted 10.x hop and the peer itself).
    const first = await wsConnect({ 'X-Forwarded-For': '198.51.100.1, 203.0.113.20, 10.1.2.3' });
    expect(first).toBeDefined();
    expect(await wsStatus({ 'X-Forwarded-For': '203.0.113.20, 10.9.9.9' })).toBe(429);
    expect(await wsStatus({ 'X-Forwarded-For': '203.0.113.21, 10.9.9.9' })).toBe('open');
  });

  it('Forwarded (forwardedHeader: forwarded) from a trusted proxy: the right-most for= decides, X-Forwarded-For is not read', async () => {
    await start({ connection: NO_REFILL, tracker: 'ip', trustProxy: 'loopback', forwardedHeader: 'forwarded' });
    const a = await wsConnect({ Forwarded: 'for=198.51.100.1, for="[2001:db8:1::5]:4711";proto=https' });
    expect(await whoami(a)).toBe('ip:2001:db8:1::/64');
    const b = await wsConnect({
      Forwarded: 'for="_hidden";by=x, FOR="[2001:DB8:1:0:ffff::9]"',
      'X-Forwarded-For': '198.51.100.77',
    });
    expect(await whoami(b)).toBe('ip:2001:db8:1::/64');
    const c = await wsConnect({ 'X-Forwarded-For': '198.51.100.78' });
    // No Forwarded: the proxy's own address, whatever X-Forwarded-For says.
    expect(await whoami(c)).toBe('ip:127.0.0.1');
  });

  it('socket.io: spoofed X-Forwarded-For with no trusted proxy neither changes the tracker nor the cap', async () => {
    await start({ connection: WIDE_RATE, maxConnectionsPerIp: 2, tracker: 'ip' }, { io: true });
    const a = await ioConnect('polling', { extraHeaders: { 'X-Forwarded-For': '198.51.100.1' } });
    a.socket.emit('whoami');
    await a.until(() => a.of('whoami').length === 1);
    expect(a.of('whoami')).toEqual(['ip:127.0.0.1']);
    await ioConnect('websocket', { extraHeaders: { 'X-Forwarded-For': '198.51.100.2' } });
    const refused = new IoTestClient(ioUrl(), 'polling', { extraHeaders: { 'X-Forwarded-For': '198.51.100.3' } });
    ioClients.push(refused);
    await expect(refused.connected()).rejects.toBeDefined();
  });
});

// --- 2. Address spellings -----------------------------------------------------------------

describe('IPv4, IPv4-mapped and IPv6 spellings', () => {
  it('on a dual-stack listener, 127.0.0.1 and ::ffff:127.0.0.1 are one client; ::1 is another', async () => {
    await start({ connection: { capacity: 2, refillRate: 0.001 }, tracker: 'ip' }, { host: '::' });
    const v4 = await wsConnect({}, '127.0.0.1');
    expect(await whoami(v4)).toBe('ip:127.0.0.1');
    const mapped = await wsConnect({}, '::ffff:127.0.0.1');
    expect(await whoami(mapped)).toBe('ip:127.0.0.1');
    expect(await wsStatus({}, '127.0.0.1')).toBe(429);
    expect(await wsStatus({}, '::ffff:127.0.0.1')).toBe(429);
    const v6 = await wsConnect({}, '::1');
    expect(await whoami(v6)).toBe('ip:::/64');
  });

  it('IPv6 written in several ways through a trusted proxy is one /64 tracker', async () => {
    await start({ connection: { capacity: 4, refillRate: 0.001 }, tracker: 'ip', trustProxy: 'loopback' });
    const forms = [
      '2001:db8::1',
      '2001:0DB8:0000:0000:0000:0000:0000:0002',
      '[2001:db8::3]:443',
      '2001:db8:0:0:ffff:ffff:1.2.3.4',
    ];
    for (const form of forms) {
      const client = await wsConnect({ 'X-Forwarded-For': form });
      expect(await whoami(client)).toBe('ip:2001:db8::/64');
    }
    expect(await wsStatus({ 'X-Forwarded-For': '2001:db8:0::5' })).toBe(429);
    expect(await wsStatus({ 'X-Forwarded-For': '2001:db8:0:1::5' })).toBe('open');
  });

  it('IPv4 and its IPv4-mapped spellings through a trusted proxy are one tracker', async () => {
    await start({ connection: { capacity: 4, refillRate: 0.001 }, tracker: 'ip', trustProxy: 'loopback' });
    const forms = ['203.0.113.9', '::ffff:203.0.113.9', '::FFFF:cb00:7109', '0:0:0:0:0:ffff:203.0.113.9'];
    for (const form of forms) {
      const client = await wsConnect({ 'X-Forwarded-For': form });
      expect(await whoami(client)).toBe('ip:203.0.113.9');
    }
    expect(await wsStatus({ 'X-Forwarded-For': '[::ffff:203.0.113.9]:80' })).toBe(429);
  });

  it('a trusted proxy listed by its IPv4-mapped spelling is trusted when it connects over IPv4', async () => {
    await start({ connection: NO_REFILL, tracker: 'ip', trustProxy: '::ffff:127.0.0.1' });
    const client = await wsConnect({ 'X-Forwarded-For': '203.0.113.30' });
    expect(await whoami(client)).toBe('ip:203.0.113.30');
  });
});

// --- 3. tracker functions -----------------------------------------------------------------

/** Frames of a ws client answering messages with ids (replies, rate_limit and error frames). */
function answeredIds(client: TestClient): unknown[] {
  return client.frames
    .map((frame) => (frame.data as { id?: unknown } | undefined)?.id)
    .filter((id) => id !== undefined);
}

/** Sends `count` echo messages with ids 0..count-1 in one write. */
function burst(client: TestClient, count: number, from = 0): void {
  client.inOneWrite(() => {
    for (let i = from; i < from + count; i++)
      client.socket.send(JSON.stringify({ event: 'echo', data: { id: i }, id: i }));
  });
}

const ROOMY = {
  global: { capacity: 1000, refillRate: 1000 },
  type: { capacity: 1000, refillRate: 1000 },
};

describe('tracker functions', () => {
  it('one that throws: every routed message gets an exception frame, every unrouted one its error frame', async () => {
    await start({
      ...ROOMY,
      tracker: () => {
        throw new Error('tracker down');
      },
    });
    const client = await wsConnect();
    burst(client, 5);
    client.sendRaw('{"event":"nope","id":99}');
    await client.waitFor((frame) => frame.event === 'exception' || frame.event === 'error', 6);
    expect(client.events('exception')).toHaveLength(5);
    expect(client.events('error').map((frame) => frame.data)).toEqual([{ code: 'UNKNOWN_EVENT', id: 99 }]);
    expect(client.socket.readyState).toBe(WebSocket.OPEN);
  });

  it('one that returns a rejected promise: the same, and the connection stays usable', async () => {
    let fail = true;
    await start({
      ...ROOMY,
      tracker: () => (fail ? Promise.reject(new Error('session store down')) : Promise.resolve('user-1')),
    });
    const client = await wsConnect();
    burst(client, 5);
    await client.waitForEvent('exception', 5);
    fail = false;
    burst(client, 3, 10);
    expect((await client.waitForEvent('echo', 3)).map((frame) => (frame.data as { id: number }).id)).toEqual([
      10, 11, 12,
    ]);
  });

  it("one that returns '': the connection's own budget, and every message answered", async () => {
    await start({ global: { capacity: 3, refillRate: 0.001 }, type: ROOMY.type, tracker: () => '' });
    const a = await wsConnect();
    const b = await wsConnect();
    expect(String(await whoami(a))).toMatch(/^conn:\d+$/);
    burst(a, 4);
    await a.waitFor((frame) => frame.event === 'echo' || frame.event === 'rate_limit', 4);
    expect(a.events('echo')).toHaveLength(2); // whoami spent one
    expect(a.events('rate_limit')).toHaveLength(2);
    // b is another connection: its own budget, untouched by a's.
    burst(b, 2);
    expect(await b.waitForEvent('echo', 2)).toHaveLength(2);
  });

  it('one that returns a huge string: keyed by a short digest, shared by equal names, apart for names that differ at the end', async () => {
    const base = 'u'.repeat(1_000_000);
    await start({
      global: { capacity: 2, refillRate: 0.001 },
      type: ROOMY.type,
      tracker: (_client, info) => base + String(info.request?.headers['x-user'] ?? ''),
    });
    const a1 = await wsConnect({ 'x-user': 'a' });
    const a2 = await wsConnect({ 'x-user': 'a' });
    const b = await wsConnect({ 'x-user': 'b' });
    const key = String(await whoami(a1));
    expect(key).toMatch(/^key#[\w-]+$/);
    expect(key.length).toBeLessThan(64);
    expect(await whoami(b)).not.toBe(key);
    // a1's whoami spent one of "a"'s two; a2 gets the other, then a refusal.
    burst(a2, 2);
    await a2.waitFor((frame) => frame.event === 'echo' || frame.event === 'rate_limit', 2);
    expect(a2.frames.map((frame) => frame.event)).toEqual(['echo', 'rate_limit']);
    // b's whoami spent one of its own two.
    burst(b, 1);
    expect(await b.waitForEvent('echo')).toHaveLength(1);
  });

  it('one that resolves slowly while 100 messages (and unrouted frames) arrive: each is answered, in order', async () => {
    await start({
      ...ROOMY,
      tracker: () => new Promise<string>((resolve) => setTimeout(() => resolve('user-slow'), 30)),
    });
    const client = await wsConnect();
    client.inOneWrite(() => {
      for (let i = 0; i < 100; i++) {
        if (i % 10 === 9) client.sendRaw(JSON.stringify({ event: 'nope', id: i }));
        else client.socket.send(JSON.stringify({ event: 'echo', data: { id: i }, id: i }));
      }
    });
    await client.waitFor((frame) => frame.event === 'echo' || frame.event === 'error', 100, 30_000);
    expect(answeredIds(client)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(client.events('error')).toHaveLength(10);
  });

  it('socket.io: one that resolves slowly while 40 events (and 5 no handler takes) arrive: each routed one is answered, in order', async () => {
    await start(
      { ...ROOMY, tracker: () => new Promise<string>((resolve) => setTimeout(() => resolve('user-slow'), 30)) },
      { io: true },
    );
    const client = await ioConnect('websocket');
    for (let i = 0; i < 45; i++) {
      if (i % 9 === 8) client.socket.emit('nope', { id: i });
      else client.socket.emit('echo', { id: i });
    }
    await client.until(() => client.of('echo').length === 40, 20_000, '40 echo replies');
    expect(client.of('echo').map((data) => (data as { id: number }).id)).toEqual(
      Array.from({ length: 45 }, (_, i) => i).filter((i) => i % 9 !== 8),
    );
    expect(client.of('rate_limit')).toEqual([]);
  });

  it('a connection that closes while its async tracker is deciding leaves no per-connection tier states behind (it left them for good: stats().localKeys)', async () => {
    const { limiter } = await start({
      ...ROOMY,
      tracker: () => new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 200)),
    });
    for (let i = 0; i < 5; i++) {
      const client = await wsConnect();
      client.send('echo', { id: i });
      // Gone before its tracker answers.
      await sleep(20);
      client.socket.terminate();
    }
    await waitFor(() => limiter.stats().connections === 0, 5000, 'connections to close');
    // Every tracker has answered by now (200 ms each); the decisions they led to have run.
    // (Nothing evicts them later: the per-connection store has no key limit.)
    await sleep(1500);
    expect(limiter.stats()).toMatchObject({ connections: 0, localKeys: 0 });
  });

  it('socket.io: a connection that closes while its async tracker is deciding leaves no per-connection tier states behind', async () => {
    const { limiter } = await start(
      { ...ROOMY, tracker: () => new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 200)) },
      { io: true },
    );
    for (let i = 0; i < 5; i++) {
      const client = await ioConnect('websocket');
      client.socket.emit('echo', { id: i });
      await sleep(20);
      client.close();
    }
    await waitFor(() => limiter.stats().connections === 0, 5000, 'connections to close');
    await sleep(1500);
    expect(limiter.stats()).toMatchObject({ connections: 0, localKeys: 0 });
  });

  it('code that consumes for a socket after it closed (as a handleDisconnect may) leaves nothing behind, with the connection tracker or an async tracker function', async () => {
    for (const tracker of ['connection' as const, async () => undefined]) {
      const { app, limiter } = await start({ ...ROOMY, tracker }, { gateways: [KeepGateway] });
      const client = await wsConnect();
      client.send('keep');
      await client.waitForEvent('kept');
      client.socket.terminate();
      await waitFor(() => limiter.stats().connections === 0, 5000, 'the connection to close');
      const decision = await limiter.consume(KeepGateway.socket!, { type: 'chat' });
      expect(decision.allowed).toBe(true);
      expect(limiter.stats()).toMatchObject({ connections: 0, localKeys: 0 });
      KeepGateway.socket = undefined;
      running = undefined;
      await app.close();
    }
  });

  it('control: a connection that closes after its async tracker decided leaves nothing behind', async () => {
    const { limiter } = await start({
      ...ROOMY,
      tracker: () => new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 20)),
    });
    for (let i = 0; i < 5; i++) {
      const client = await wsConnect();
      client.send('echo', { id: i });
      await client.waitForEvent('echo');
      client.socket.terminate();
    }
    await waitFor(() => limiter.stats().connections === 0, 5000, 'connections to close');
    await sleep(100);
    expect(limiter.stats()).toMatchObject({ connections: 0, localKeys: 0 });
  });
});

// --- 4. Open-connection seats -------------------------------------------------------------

/** A raw upgrade request on a TCP socket, destroyed `after` ms after it was written (0: at once). */
function rawUpgrade(port: number, path: string, after: number, host = '127.0.0.1'): Promise<string> {
  return new Promise((resolve) => {
    let received = '';
    const socket = tcpConnect({ port, host }, () => {
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
          'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
      );
      if (after === 0) socket.destroy();
      else setTimeout(() => socket.destroy(), after);
    });
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (received += chunk));
    socket.on('error', () => undefined);
    socket.once('close', () => resolve(received));
  });
}

/** One raw HTTP request (no agent); resolves with its status, or 0 when the socket was ended. */
function rawHttp(port: number, method: string, path: string, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path, agent: false, headers });
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', () => resolve(0));
    req.end();
  });
}

describe('open-connection seats (ws)', () => {
  it.each([
    ['a client close', (client: TestClient) => client.close()],
    ['an abrupt socket destroy', (client: TestClient) => void client.socket.terminate()],
    [
      'a server close',
      async (client: TestClient) => {
        client.send('kick');
        expect((await client.waitClose()).code).toBe(4000);
      },
    ],
  ])('are given back on %s, every time', async (_name, end) => {
    await start({ connection: WIDE_RATE, maxConnectionsPerIp: 1 });
    for (let i = 0; i < 4; i++) {
      const client = await wsConnect();
      expect(await wsStatus()).toBe(429);
      await end(client);
      await seatsBackTo('127.0.0.1', 1);
    }
    expect(running!.limiter.stats().connections).toBe(0);
  });

  it('are given back when the client leaves during the handshake, or the gateway’s own verifyClient refuses it', async () => {
    await start({ connection: WIDE_RATE, maxConnectionsPerIp: 1 }, { gateways: [GuardedGateway] });
    for (const after of [0, 0, 1, 5, 20]) await rawUpgrade(running!.port, '/', after);
    await seatsBackTo('127.0.0.1', 1);
    for (let i = 0; i < 3; i++) expect(await wsStatus({ 'x-deny': '1' }, '127.0.0.1', '/guarded')).toBe(401);
    await seatsBackTo('127.0.0.1', 1);
    const guarded = await wsConnect({}, '127.0.0.1', '/guarded');
    guarded.send('echo', { ok: 1 });
    expect(await guarded.waitForEvent('echo')).toHaveLength(1);
    expect(await wsStatus()).toBe(429);
  });

  it('refusals at the cap take no seat; seats of ::1 are its own and given back too', async () => {
    await start({ connection: WIDE_RATE, maxConnectionsPerIp: 1 }, { host: '::' });
    const v4 = await wsConnect({}, '127.0.0.1');
    for (let i = 0; i < 3; i++) expect(await wsStatus({}, '::ffff:127.0.0.1')).toBe(429);
    const v6 = await wsConnect({}, '::1');
    expect(await wsStatus({}, '::1')).toBe(429);
    await v4.close();
    v6.socket.terminate();
    await seatsBackTo('127.0.0.1', 1);
    await seatsBackTo('::1', 1);
    expect(await wsStatus({}, '::ffff:127.0.0.1')).toBe('open');
    expect(await wsStatus({}, '::1')).toBe('open');
  });
});

describe('open-connection seats (socket.io)', () => {
  it('a polling->websocket upgrade takes one seat, given back when it ends', async () => {
    await start({ connection: WIDE_RATE, maxConnectionsPerIp: 1 }, { io: true });
    for (let i = 0; i < 3; i++) {
      const client = new IoTestClient(ioUrl(), 'polling', { transports: ['polling', 'websocket'], upgrade: true });
      ioClients.push(client);
      await client.connected();
      await client.until(() => client.socket.io.engine.transport.name === 'websocket', 10_000, 'the upgrade');
      expect(await seatsLeft('127.0.0.1')).toBe(0);
      client.socket.emit('echo', { i });
      await client.until(() => client.of('echo').length === 1);
      await client.closeAndSettle();
      await seatsBackTo('127.0.0.1', 1);
    }
  });

  it('a server disconnect and an abrupt transport close give the seat back', async () => {
    await start({ connection: WIDE_RATE, maxConnectionsPerIp: 1 }, { io: true });
    const kicked = await ioConnect('websocket');
    kicked.socket.emit('kick');
    await kicked.disconnected();
    await seatsBackTo('127.0.0.1', 1);
    const dropped = await ioConnect('polling');
    (dropped.socket.io.engine as unknown as { close(): void }).close();
    await seatsBackTo('127.0.0.1', 1);
    expect(running!.limiter.stats().connections).toBe(0);
  });

  it("a namespace connect refused by the namespace's own middleware gives the seat back once the client leaves", async () => {
    await start({ connection: WIDE_RATE, maxConnectionsPerIp: 1 }, { io: true, gateways: [LockedGateway] });
    for (let i = 0; i < 3; i++) {
      const client = new IoTestClient(`${ioUrl()}/locked`, 'websocket');
      ioClients.push(client);
      await expect(client.connected()).rejects.toThrow('locked');
      await client.closeAndSettle();
      client.socket.io.engine?.close();
      await seatsBackTo('127.0.0.1', 1);
    }
    await ioConnect('polling');
  });

  it('handshakes Engine.IO refuses after the limiter admitted them (bad method, bad protocol version) give their seats back', async () => {
    const { port } = await start({ connection: WIDE_RATE, maxConnectionsPerIp: 1 }, { io: true });
    expect(await rawHttp(port, 'POST', '/socket.io/?EIO=4&transport=polling')).toBe(400);
    expect(await rawHttp(port, 'GET', '/socket.io/?EIO=9&transport=polling')).toBe(400);
    expect(await rawHttp(port, 'GET', '/socket.io/?EIO=4&transport=bogus')).toBe(400);
    const upgrade = {
      Connection: 'Upgrade',
      Upgrade: 'websocket',
      'Sec-WebSocket-Version': '13',
      'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
    };
    await rawHttp(port, 'GET', '/socket.io/?EIO=9&transport=websocket', upgrade);
    await rawHttp(port, 'GET', '/socket.io/?EIO=4&transport=websocket', { ...upgrade, 'Sec-WebSocket-Version': '99' });
    await seatsBackTo('127.0.0.1', 1);
    await ioConnect('websocket');
    expect(await seatsLeft('127.0.0.1')).toBe(0);
  });
});
