/**
 * Review of every way a NestJS user declares a gateway, and whether each gets the library's
 * full protection. On WsRateLimitAdapter (platform-ws): the app server without and with a
 * `path`, a port of its own with and without a path, two gateways sharing one own port on two
 * paths, a gateway given `server` in its options, and a `verifyClient` of the user's own (both
 * of ws's forms). On WsRateLimitIoAdapter (socket.io): the default namespace, a named one, a
 * RegExp (dynamic) one, a gateway on its own port (default and named namespace), a custom
 * `path`, each over websocket and polling. For each, the README's promises: the per-IP
 * connection rate at the upgrade, the open-connection cap (both connectionRefusal modes, the
 * slot given back), maxPayload, message limits with rate_limit frames in message order (3
 * messages in one write against capacity 2, the handler answering later than the refusal),
 * the heartbeat ending a silent peer, the 1008 close at the violation threshold after the
 * admitted replies, and app.close() closing everything (no server, socket or ref'd timer left).
 * Real apps on 127.0.0.1, real `ws` / socket.io-client clients, refills slow enough (0.001/s)
 * that time never decides a count.
 *
 * On the reviewed code (3985c13, with the own-port connection hook) every message-level
 * promise held in every variant. Four cases failed (three defects, all in the shutdown and
 * HTTP handling of a gateway's own port on ws), and are fixed: without a path, app.close()
 * waited for a TCP connection that had sent nothing yet (handshakeTimeoutMs; for ever with it
 * off): the adapter now ends the connections left on that server as it closes it, and waits
 * for its WebSockets' `close` events (so handleDisconnect runs before app.close() resolves);
 * with a path, a plain HTTP request was never answered nor timed out (any number per
 * address, past maxPendingHandshakesPerIp) and held app.close(): the server platform-ws makes
 * there now answers 426 Upgrade Required, as ws's own does.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import type { INestApplication, WebSocketAdapter } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import {
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  type GatewayMetadata,
  type OnGatewayConnection,
  type OnGatewayDisconnect,
} from '@nestjs/websockets';
import { createServer as createHttpServer, request, type Server as HttpServer } from 'node:http';
import { connect as netConnect, createServer, type AddressInfo, type Socket } from 'node:net';
import WebSocket from 'ws';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { IoTestClient, waitFor, type EngineTransport } from '../support/io-client.js';
import { later, sleep, TestClient } from '../support/ws-client.js';

// --- Helpers -----------------------------------------------------------------------------

const SLOW = 0.001;
const KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
/** How long the handler takes to answer: longer than the limiter takes to refuse. */
const HANDLER_MS = 80;

/** What the gateways saw (reset per test). */
const seen = { connections: 0, disconnections: 0, handled: 0 };

/** A port nothing listens on (found by listening on 0, then closing). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

interface Answer {
  status: number;
  retryAfter?: string;
}

/** A WebSocket upgrade to a URL: 101 when upgraded (its socket destroyed at once), else the refusal. */
function upgradeTo(url: string): Promise<Answer> {
  const { port, pathname, search } = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port: Number(port),
      path: pathname + search,
      agent: false,
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': KEY },
    });
    req.on('upgrade', (res, socket: Socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0 });
    });
    req.on('response', (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'] as string | undefined });
    });
    req.on('error', reject);
    req.end();
  });
}

/** Whether something accepts TCP connections on the port (a connect, nothing sent). */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = netConnect(port, '127.0.0.1', () => {
      probe.destroy();
      resolve(true);
    });
    probe.on('error', (error: NodeJS.ErrnoException) => resolve(error.code !== 'ECONNREFUSED'));
  });
}

/** The process's ref'd resources that would keep Jest from exiting: servers, sockets, timers. */
function handles(): string[] {
  return process
    .getActiveResourcesInfo()
    .filter((kind) => kind === 'TCPServerWrap' || kind === 'TCPSocketWrap' || kind === 'Timeout')
    .sort();
}

/** The handles more than `before` has, once they stop going away (at most 5 s). */
async function handlesLeft(before: string[]): Promise<string[]> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const rest = [...before];
    const extra = handles().filter((kind) => {
      const at = rest.indexOf(kind);
      if (at < 0) return true;
      rest.splice(at, 1);
      return false;
    });
    if (extra.length === 0 || Date.now() > deadline) return extra;
    await sleep(50);
  }
}

// --- Gateways ----------------------------------------------------------------------------

/** A gateway on `port` (0: the app server) with `options`: one limited event, answered late. */
function gateway(port: number, options: GatewayMetadata, name = 'G') {
  @WebSocketGateway(port, options)
  @WsRateLimit()
  class VariantGateway implements OnGatewayConnection, OnGatewayDisconnect {
    handleConnection() {
      seen.connections++;
    }
    handleDisconnect() {
      seen.disconnections++;
    }
    @Throttle({ capacity: 2, refillRate: SLOW })
    @SubscribeMessage('slow')
    async slow(@MessageBody() data: unknown) {
      seen.handled++;
      await sleep(HANDLER_MS);
      return { event: 'ack', data };
    }
  }
  Object.defineProperty(VariantGateway, 'name', { value: `${name}Gateway` });
  return VariantGateway;
}

// --- Harness -----------------------------------------------------------------------------

let app: INestApplication | undefined;
const closers: Array<() => unknown> = [];
const extraServers: HttpServer[] = [];

afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
  await app?.close();
  app = undefined;
  for (const server of extraServers.splice(0)) await new Promise((resolve) => server.close(resolve));
  seen.connections = seen.disconnections = seen.handled = 0;
});

async function start(kind: 'ws' | 'io', providers: unknown[], options: WsRateLimitModuleOptions): Promise<number> {
  const moduleRef = await Test.createTestingModule({
    imports: [
      WsRateLimitModule.forRoot({
        useEnv: false,
        connection: { capacity: 100, refillRate: 100 },
        ...options,
      }),
    ],
    providers: providers as never[],
  }).compile();
  app = moduleRef.createNestApplication({ logger: false });
  app.useWebSocketAdapter(
    (kind === 'ws' ? new WsRateLimitAdapter(app) : new WsRateLimitIoAdapter(app)) as WebSocketAdapter,
  );
  await app.listen(0, '127.0.0.1');
  return (app.getHttpServer().address() as AddressInfo).port;
}

// --- platform-ws -------------------------------------------------------------------------

interface WsVariant {
  name: string;
  /** The gateways, given the app's own spare port. */
  gateways(own: number): unknown[];
  /** The URLs clients use, given the app's port and the spare port. */
  urls(port: number, own: number): string[];
  /** The ports the gateways listen on besides the app's. */
  ownPorts(own: number): number[];
}

const acceptAll = (_info: unknown, done: (ok: boolean) => void) => done(true);

const WS_VARIANTS: WsVariant[] = [
  {
    name: 'app server, no path',
    gateways: () => [gateway(0, {})],
    urls: (port) => [`ws://127.0.0.1:${port}/`],
    ownPorts: () => [],
  },
  {
    name: 'app server, path /p',
    gateways: () => [gateway(0, { path: '/p' })],
    urls: (port) => [`ws://127.0.0.1:${port}/p`],
    ownPorts: () => [],
  },
  {
    name: 'own port, path /own',
    gateways: (own) => [gateway(own, { path: '/own' })],
    urls: (_port, own) => [`ws://127.0.0.1:${own}/own`],
    ownPorts: (own) => [own],
  },
  {
    name: 'own port, no path',
    gateways: (own) => [gateway(own, {})],
    urls: (_port, own) => [`ws://127.0.0.1:${own}/`],
    ownPorts: (own) => [own],
  },
  {
    name: 'two gateways on one own port, paths /x and /y',
    gateways: (own) => [gateway(own, { path: '/x' }, 'X'), gateway(own, { path: '/y' }, 'Y')],
    urls: (_port, own) => [`ws://127.0.0.1:${own}/x`, `ws://127.0.0.1:${own}/y`],
    ownPorts: (own) => [own],
  },
  {
    name: 'a gateway given `server` in its options',
    gateways: () => {
      const server = createHttpServer();
      extraServers.push(server);
      return [gateway(0, { server } as GatewayMetadata)];
    },
    urls: (port) => [`ws://127.0.0.1:${port}/`],
    ownPorts: () => [],
  },
  {
    name: "app server, the user's own verifyClient (callback form)",
    gateways: () => [gateway(0, { verifyClient: acceptAll } as GatewayMetadata)],
    urls: (port) => [`ws://127.0.0.1:${port}/`],
    ownPorts: () => [],
  },
  {
    name: "own port, no path, the user's own verifyClient (boolean form)",
    gateways: (own) => [gateway(own, { verifyClient: () => true } as GatewayMetadata)],
    urls: (_port, own) => [`ws://127.0.0.1:${own}/`],
    ownPorts: (own) => [own],
  },
  {
    name: "own port, path /own, the user's own verifyClient (callback form)",
    gateways: (own) => [gateway(own, { path: '/own', verifyClient: acceptAll } as GatewayMetadata)],
    urls: (_port, own) => [`ws://127.0.0.1:${own}/own`],
    ownPorts: (own) => [own],
  },
];

describe.each(WS_VARIANTS)('WsRateLimitAdapter, $name', (variant) => {
  async function run(options: WsRateLimitModuleOptions): Promise<{ urls: string[]; port: number; own: number }> {
    const own = await freePort();
    const port = await start('ws', variant.gateways(own), options);
    // A server on a port of its own listens as the app starts, without being awaited.
    for (const extra of variant.ownPorts(own)) {
      const deadline = Date.now() + 5000;
      while (!(await listening(extra)) && Date.now() < deadline) await sleep(20);
    }
    return { urls: variant.urls(port, own), port, own };
  }

  const connect = async (url: string, options: WebSocket.ClientOptions = {}): Promise<TestClient> => {
    const client = await TestClient.connect(url, options);
    closers.push(() => client.close());
    return client;
  };

  it('the connection rate refuses the 3rd upgrade with 429 and Retry-After, before any gateway code', async () => {
    const { urls } = await run({ connection: { capacity: 2, refillRate: SLOW } });
    for (const url of urls) {
      // One budget per address for every server: the first URL spends it.
      const answers: Answer[] = [];
      for (let i = 0; i < 3; i++) answers.push(await upgradeTo(url));
      if (url === urls[0]) {
        expect(answers.map((answer) => answer.status)).toEqual([101, 101, 429]);
        expect(answers[2]!.retryAfter).toBe('1000');
      } else {
        expect(answers.map((answer) => answer.status)).toEqual([429, 429, 429]);
      }
    }
    await waitFor(() => seen.connections === 2, 5000, 'two connections');
    await sleep(100);
    expect(seen.connections).toBe(2);
  });

  it("the open-connection cap, connectionRefusal 'http': 429 over the cap, the slot given back on close", async () => {
    const { urls } = await run({ maxConnectionsPerIp: 1 });
    for (const url of urls) {
      const first = await connect(url);
      for (const other of urls) expect(await upgradeTo(other)).toMatchObject({ status: 429 });
      await first.close();
      await waitFor(() => seen.disconnections === seen.connections, 5000, 'the close to be seen');
      // Its slot is back (the TCP close may follow the WebSocket close a moment later).
      let status = 0;
      const deadline = Date.now() + 5000;
      while (status !== 101 && Date.now() < deadline) {
        status = (await upgradeTo(url)).status;
        if (status !== 101) await sleep(50);
      }
      expect(status).toBe(101);
      await waitFor(() => seen.disconnections === seen.connections, 5000, 'the probe to be seen leaving');
    }
  });

  it("the open-connection cap, connectionRefusal 'close': the client over the cap is closed with 1008 and never served", async () => {
    const { urls } = await run({ maxConnectionsPerIp: 1, connectionRefusal: 'close' });
    const first = await connect(urls[0]!);
    for (const url of urls) {
      const refused = await connect(url);
      refused.send('slow', 'x');
      expect(await refused.waitClose()).toEqual({ code: 1008, reason: 'Too many connections' });
    }
    await sleep(HANDLER_MS * 2);
    expect(first.socket.readyState).toBe(WebSocket.OPEN);
    expect(seen.connections).toBe(1);
    expect(seen.handled).toBe(0);
  });

  it('maxPayload: a frame over it closes the connection with 1009 before its handler runs', async () => {
    const { urls } = await run({ maxPayload: 1024 });
    for (const url of urls) {
      const client = await connect(url);
      client.send('slow', 'x'.repeat(2000));
      expect((await client.waitClose()).code).toBe(1009);
    }
    expect(seen.handled).toBe(0);
  });

  it('3 messages in one write against capacity 2: ack, ack, then the rate_limit frame (never before the acks)', async () => {
    const { urls } = await run({});
    for (const url of urls) {
      const client = await connect(url);
      client.inOneWrite(() => [1, 2, 3].forEach((i) => client.send('slow', i)));
      const answers = await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 3);
      expect(answers.map((frame) => frame.event)).toEqual(['ack', 'ack', 'rate_limit']);
      expect(answers[2]!.data).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'slow', limit: 2 });
    }
  });

  it('the heartbeat ends a peer that does not answer pings, and keeps one that does', async () => {
    const { urls } = await run({ pingIntervalMs: 200, pongTimeoutMs: 200 });
    for (const url of urls) {
      const live = await connect(url);
      const silent = await connect(url, { autoPong: false });
      expect((await silent.waitClose(5000)).code).toBe(1006);
      expect(live.socket.readyState).toBe(WebSocket.OPEN);
      live.send('slow', 'alive');
      await live.waitForEvent('ack');
    }
  });

  it('at the violation threshold: the admitted replies, the refusals, then 1008; later messages not processed', async () => {
    const { urls } = await run({ violations: { max: 2, windowMs: 60_000 } });
    for (const url of urls) {
      const handledBefore = seen.handled;
      const client = await connect(url);
      client.inOneWrite(() => [1, 2, 3, 4, 5].forEach((i) => client.send('slow', i)));
      expect(await client.waitClose()).toEqual({ code: 1008, reason: 'Rate limit violations' });
      expect(client.frames.map((frame) => frame.event)).toEqual(['ack', 'ack', 'rate_limit', 'rate_limit']);
      expect(client.events('ack').map((frame) => frame.data)).toEqual([1, 2]);
      expect(client.events('rate_limit').map((frame) => frame.data.warningCount)).toEqual([1, 2]);
      expect(seen.handled - handledBefore).toBe(2);
    }
  });

  // Expected (RELIABILITY I-4, F-27: app.close() releases everything in at most 1 s; README:
  // slots are given back on "shutdown, or a handshake that never completed"): the shutdown
  // ends a connection still in its handshake. On a port of its own without a path, ws's
  // close(server) closes the HTTP server ws made and waits for its every TCP connection
  // before dispose() ends the pending ones: handshakeTimeoutMs (10 s), for ever with it off.
  it(`app.close() ends every client and a TCP connection that has sent nothing yet, frees the ports, leaves no handle`, async () => {
    const before = handles();
    // With the handshake timeout off, nothing but the shutdown ends a silent TCP connection.
    const { urls, port, own } = await run({ pingIntervalMs: 200, pongTimeoutMs: 5000, handshakeTimeoutMs: 0 });
    const gatewayPorts = variant.ownPorts(own).length > 0 ? variant.ownPorts(own) : [port];
    const clients: TestClient[] = [];
    for (const url of urls) clients.push(await connect(url));
    const raw: Socket[] = [];
    for (const target of gatewayPorts) {
      const socket = await new Promise<Socket>((resolve, reject) => {
        const s = netConnect(target, '127.0.0.1', () => resolve(s));
        s.once('error', reject);
      });
      socket.on('error', () => undefined);
      raw.push(socket);
    }
    closers.push(() => raw.forEach((socket) => socket.destroy()));
    const closing = app!.close();
    app = undefined;
    const outcome = await Promise.race([closing.then(() => 'closed'), later(5000, 'app.close() pending after 5 s')]);
    // (Let a pending close finish, so nothing is left for the next test.)
    for (const socket of raw) socket.destroy();
    await closing;
    expect(outcome).toBe('closed');
    for (const client of clients) await client.waitClose();
    for (const target of [port, ...variant.ownPorts(own)]) expect(await listening(target)).toBe(false);
    await waitFor(() => seen.disconnections === seen.connections, 5000, 'every disconnect');
    expect(await handlesLeft(before)).toEqual([]);
  });
});

describe('WsRateLimitAdapter, own port with a path: a plain HTTP request', () => {
  /** A plain GET on a raw socket: what the server wrote within `waitMs`, and the socket. */
  async function plainGet(port: number, waitMs: number): Promise<{ answer: string; socket: Socket }> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = netConnect(port, '127.0.0.1', () => resolve(s));
      s.once('error', reject);
    });
    socket.on('error', () => undefined);
    closers.push(() => socket.destroy());
    let answer = '';
    socket.on('data', (data) => (answer += String(data)));
    socket.write('GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    await waitFor(() => answer.length > 0 || socket.destroyed, waitMs, 'an answer').catch(() => undefined);
    return { answer, socket };
  }

  it('is answered (or dropped), not held open for ever (one address could hold any number of connections past maxPendingHandshakesPerIp)', async () => {
    // Expected: the gateway's own HTTP server answers what is not an upgrade, as ws's own
    // server does on a port without a path (426) and the app server does (404); or the
    // handshake hygiene ends it. platform-ws makes this server with http.createServer() and
    // no request handler; the adapter's hygiene takes the request's slot back once it has
    // arrived ("how long the server then takes to answer is not timed"), so nobody ever
    // answers: five such connections from one address (cap 2, timeout 1 s) all stay open.
    const own = await freePort();
    await start('ws', [gateway(own, { path: '/own' })], { maxPendingHandshakesPerIp: 2, handshakeTimeoutMs: 1000 });
    const deadline = Date.now() + 5000;
    while (!(await listening(own)) && Date.now() < deadline) await sleep(20);
    const gets = [];
    for (let i = 0; i < 5; i++) gets.push(await plainGet(own, 100));
    await sleep(3000);
    const held = gets.filter(({ answer, socket }) => answer === '' && !socket.destroyed);
    expect(held).toHaveLength(0);
  });

  it('does not keep app.close() from resolving (it did, as long as its client stayed)', async () => {
    // Expected (RELIABILITY I-4: app.close() releases everything in at most 1 s): the pending
    // request of the case above holds the server's close() for as long as its client stays.
    const own = await freePort();
    await start('ws', [gateway(own, { path: '/own' })], {});
    const deadline = Date.now() + 5000;
    while (!(await listening(own)) && Date.now() < deadline) await sleep(20);
    const { socket } = await plainGet(own, 500);
    const closing = app!.close();
    app = undefined;
    const outcome = await Promise.race([closing.then(() => 'closed'), later(5000, 'app.close() pending after 5 s')]);
    socket.destroy();
    await closing;
    expect(outcome).toBe('closed');
  });
});

// --- socket.io ---------------------------------------------------------------------------

interface IoVariant {
  name: string;
  gateways(own: number): unknown[];
  /** The client's URL and options. */
  url(port: number, own: number): string;
  clientOptions?: Record<string, unknown>;
  /** The port of the gateway's server: the app's or its own. */
  serverPort(port: number, own: number): number;
}

const IO_VARIANTS: IoVariant[] = [
  {
    name: 'default namespace',
    gateways: () => [gateway(0, {})],
    url: (port) => `http://127.0.0.1:${port}`,
    serverPort: (port) => port,
  },
  {
    name: 'named namespace /chat',
    gateways: () => [gateway(0, { namespace: 'chat' })],
    url: (port) => `http://127.0.0.1:${port}/chat`,
    serverPort: (port) => port,
  },
  {
    name: 'RegExp namespace (dynamic)',
    gateways: () => [gateway(0, { namespace: /^\/dyn-\w+$/ })],
    url: (port) => `http://127.0.0.1:${port}/dyn-a`,
    serverPort: (port) => port,
  },
  {
    name: 'own port',
    gateways: (own) => [gateway(own, {})],
    url: (_port, own) => `http://127.0.0.1:${own}`,
    serverPort: (_port, own) => own,
  },
  {
    name: 'own port, named namespace /chat',
    gateways: (own) => [gateway(own, { namespace: 'chat' })],
    url: (_port, own) => `http://127.0.0.1:${own}/chat`,
    serverPort: (_port, own) => own,
  },
  {
    name: 'custom path /io',
    gateways: () => [gateway(0, { path: '/io' })],
    url: (port) => `http://127.0.0.1:${port}`,
    clientOptions: { path: '/io' },
    serverPort: (port) => port,
  },
];

const IO_CASES = IO_VARIANTS.flatMap((variant) =>
  (['websocket', 'polling'] as EngineTransport[]).map((transport) => ({ ...variant, transport })),
);

describe.each(IO_CASES)('WsRateLimitIoAdapter, $name, over $transport', (variant) => {
  let url = '';
  let serverPort = 0;

  async function run(options: WsRateLimitModuleOptions): Promise<number> {
    const own = await freePort();
    const port = await start('io', variant.gateways(own), options);
    url = variant.url(port, own);
    serverPort = variant.serverPort(port, own);
    return port;
  }

  const client = (): IoTestClient => {
    const made = new IoTestClient(url, variant.transport, variant.clientOptions ?? {});
    closers.push(() => (made.socket.connected ? made.closeAndSettle(2000).catch(() => undefined) : made.close()));
    return made;
  };
  const connected = async (): Promise<IoTestClient> => {
    const made = client();
    await made.connected();
    return made;
  };
  /** The error a connection attempt ends with, or 'connected'. */
  const attempt = async (): Promise<string> => {
    const made = client();
    return made.connected().then(
      () => 'connected',
      (error: Error) => error.message,
    );
  };

  it('the connection rate refuses the 3rd handshake before any gateway code', async () => {
    await run({ connection: { capacity: 2, refillRate: SLOW } });
    expect([await attempt(), await attempt(), await attempt()].map((outcome) => outcome === 'connected')).toEqual([
      true,
      true,
      false,
    ]);
    await sleep(100);
    expect(seen.connections).toBe(2);
  });

  it("the open-connection cap, 'http': refused over the cap, the slot given back on disconnect", async () => {
    await run({ maxConnectionsPerIp: 1 });
    const first = await connected();
    expect(await attempt()).not.toBe('connected');
    await first.closeAndSettle();
    await waitFor(() => seen.disconnections === 1, 5000, 'the disconnect');
    let outcome = '';
    const deadline = Date.now() + 5000;
    while (outcome !== 'connected' && Date.now() < deadline) {
      outcome = await attempt();
      if (outcome !== 'connected') await sleep(50);
    }
    expect(outcome).toBe('connected');
  });

  it("the open-connection cap, 'close': a connect_error saying why, never served", async () => {
    await run({ maxConnectionsPerIp: 1, connectionRefusal: 'close' });
    await connected();
    const refused = client();
    refused.socket.emit('slow', 'x');
    await expect(refused.connected()).rejects.toThrow('Too many connections');
    expect(refused.connectError?.data).toMatchObject({ code: 'concurrency' });
    await sleep(HANDLER_MS * 2);
    expect(seen.connections).toBe(1);
    expect(seen.handled).toBe(0);
  });

  it('maxPayload: an event over it ends the connection before its handler runs', async () => {
    await run({ maxPayload: 1024 });
    const made = await connected();
    made.socket.emit('slow', 'x'.repeat(4000));
    await made.disconnected();
    await sleep(HANDLER_MS * 2);
    expect(seen.handled).toBe(0);
  });

  it('3 events at once against capacity 2: ack, ack, then rate_limit', async () => {
    await run({});
    const made = await connected();
    for (const i of [1, 2, 3]) made.socket.emit('slow', i);
    const answers = () => made.events.filter((entry) => entry.event === 'ack' || entry.event === 'rate_limit');
    await made.until(() => answers().length >= 3);
    expect(answers().map((entry) => entry.event)).toEqual(['ack', 'ack', 'rate_limit']);
    expect(answers()[2]!.data).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'slow', limit: 2 });
  });

  it('at the violation threshold: the admitted replies, the refusals, then rate_limit_disconnect and the disconnect', async () => {
    await run({ violations: { max: 2, windowMs: 60_000 } });
    const made = await connected();
    for (const i of [1, 2, 3, 4, 5]) made.socket.emit('slow', i);
    await made.disconnected();
    expect(made.events.map((entry) => entry.event)).toEqual([
      'ack',
      'ack',
      'rate_limit',
      'rate_limit',
      'rate_limit_disconnect',
    ]);
    expect(made.of('ack')).toEqual([1, 2]);
    expect(seen.handled).toBe(2);
  });

  it('the heartbeat (pingIntervalMs, pongTimeoutMs) ends a peer that stops answering pings', async () => {
    // A pong timeout of a second: an event-loop stall longer than the timeout lets Engine.IO's
    // timer fire ahead of the live peer's pong (a slow machine's pause, not the heartbeat).
    await run({ pingIntervalMs: 200, pongTimeoutMs: 1000 });
    const live = await connected();
    const silent = await connected();
    await waitFor(() => seen.connections === 2, 5000, 'both connections');
    // The silent one's Engine.IO client no longer sends anything, pongs included.
    const engine = silent.socket.io.engine as unknown as { _sendPacket?: unknown; sendPacket?: unknown };
    engine._sendPacket = () => undefined;
    engine.sendPacket = () => undefined;
    await waitFor(() => seen.disconnections === 1, 10_000, 'the silent peer to be ended');
    expect(live.socket.connected).toBe(true);
    live.socket.emit('slow', 'alive');
    await live.until(() => live.of('ack').length === 1);
  });

  it('app.close() disconnects every client, frees the port and leaves no handle', async () => {
    const before = handles();
    const port = await run({});
    const made = await connected();
    const closing = app!.close();
    app = undefined;
    const outcome = await Promise.race([closing.then(() => 'closed'), later(5000, 'app.close() pending after 5 s')]);
    await closing;
    expect(outcome).toBe('closed');
    await made.disconnected();
    made.close();
    expect(await listening(serverPort)).toBe(false);
    expect(await listening(port)).toBe(false);
    expect(seen.disconnections).toBe(seen.connections);
    expect(await handlesLeft(before)).toEqual([]);
  });
});
