/**
 * Gateways in the shapes real NestJS apps have them, from an adversarial review: a gateway on
 * its own port (with and without a path), two gateways on different paths of one HTTP
 * server, a gateway sharing its HTTP server with an upgrade handler the application adds
 * itself (a raw `ws` server with `noServer`, as GraphQL subscriptions are served), two
 * adapters given to one app, an adapter given the HTTP server instead of the app, and
 * NestJS's lifecycle hooks for refused connections; on `WsRateLimitAdapter` (platform-ws) and
 * `WsRateLimitIoAdapter` (socket.io). Real apps on 127.0.0.1, real `ws` and socket.io
 * clients, every refill slow enough (0.01/s) that timing never decides a count.
 *
 * Four cases (three bugs) failed on the code reviewed (0914953) and were fixed: on socket.io,
 * the WebSockets of an app's own upgrade handler on the same server were ended at
 * handshakeTimeoutMs and held pending-handshake slots (so their address was refused plain
 * requests): an upgrade is now done once whoever serves it has answered; an adapter given the
 * HTTP server instead of the app said the module was missing (now: it needs the application).
 * The others held and guard the edges.
 *
 * Seen, not asserted: on platform-ws (the stock `WsAdapter` as well as ours), an upgrade to a
 * path no gateway has is destroyed by platform-ws's own `upgrade` listener, so an upgrade
 * handler of the application's own on the same HTTP server cannot work there at all (its
 * client opens, then sees 1006 at once); socket.io leaves other paths alone.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import type { INestApplication, WebSocketAdapter } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import {
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  type OnGatewayConnection,
  type OnGatewayDisconnect,
} from '@nestjs/websockets';
import { request, type IncomingMessage, type Server as HttpServer } from 'node:http';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import WebSocket, { WebSocketServer } from 'ws';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitConfigError,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { connectionsEndedByServer } from '../../support/http.js';
import { connectIo, waitFor, type IoTestClient } from '../../support/io-client.js';
import { sleep, TestClient } from '../../support/ws-client.js';

// --- Helpers -----------------------------------------------------------------------------

const SLOW = 0.01;
const KEY = 'dGhlIHNhbXBsZSBub25jZQ==';

type Kind = 'ws' | 'io';

/** A port nothing listens on (found by listening on 0, then closing). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** An HTTP answer: its status (101 for an upgrade) and `Retry-After`. */
interface Answer {
  status: number;
  retryAfter?: string;
}

/** A WebSocket upgrade to a path: 101 when upgraded (its socket destroyed at once), else the refusal. */
function upgradeTo(port: number, path = '/'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port,
      path,
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

/** A plain HTTP GET (or an Engine.IO polling handshake on `path`): its status, or the error's message. */
function httpGet(port: number, path: string): Promise<Answer | string> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false });
    req.on('response', (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'] as string | undefined });
    });
    req.on('error', (error) => resolve(error.message));
    req.end();
  });
}

/** An Engine.IO polling handshake on a socket.io server's path: 200 when admitted. */
const ioHandshake = (port: number, path = '/socket.io/') => httpGet(port, `${path}?EIO=4&transport=polling`);

/** Whether something accepts TCP connections on the port. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = request({ host: '127.0.0.1', port, path: '/', agent: false });
    probe.on('response', (res) => {
      res.resume();
      resolve(true);
    });
    probe.on('error', (error: NodeJS.ErrnoException) => resolve(error.code !== 'ECONNREFUSED'));
    probe.end();
  });
}

/** Lifecycle hooks the gateways saw. */
const seen = { connections: 0, disconnections: 0 };

// --- Gateways ----------------------------------------------------------------------------

/** A gateway on its own port (as `@WebSocketGateway(8080)`), optionally on a path. */
function ownPortGateway(port: number, path?: string) {
  @WebSocketGateway(port, path === undefined ? {} : { path })
  @WsRateLimit()
  class OwnPortGateway implements OnGatewayConnection, OnGatewayDisconnect {
    handleConnection() {
      seen.connections++;
    }
    handleDisconnect() {
      seen.disconnections++;
    }
    @SubscribeMessage('echo')
    echo(@MessageBody() data: unknown) {
      return { event: 'echo', data };
    }
  }
  return OwnPortGateway;
}

/** The Quick start's shape: on the application's HTTP server. */
@WebSocketGateway()
@WsRateLimit()
class RootGateway implements OnGatewayConnection, OnGatewayDisconnect {
  handleConnection() {
    seen.connections++;
  }
  handleDisconnect() {
    seen.disconnections++;
  }
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}

/** Two gateways on paths of one server, each with its own figures for an event of the same name. */
@WebSocketGateway({ path: '/a' })
@WsRateLimit()
class PathAGateway implements OnGatewayConnection {
  handleConnection() {
    seen.connections++;
  }
  @Throttle({ capacity: 2, refillRate: SLOW })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'a', data };
  }
}

@WebSocketGateway({ path: '/b' })
@WsRateLimit()
class PathBGateway implements OnGatewayConnection {
  handleConnection() {
    seen.connections++;
  }
  // A type of its own: `chat` with other figures than /a's would be one type with two sets of figures.
  @Throttle({ type: 'b-chat', capacity: 4, refillRate: SLOW })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'b', data };
  }
}

/** As PathBGateway, without a type of its own: `chat` at 4 where /a says 2. */
@WebSocketGateway({ path: '/b' })
@WsRateLimit()
class ClashingPathBGateway {
  @Throttle({ capacity: 4, refillRate: SLOW })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'b', data };
  }
}

// --- Harness -----------------------------------------------------------------------------

describe('gateways in less common shapes', () => {
  let app: INestApplication | undefined;
  let foreign: WebSocketServer | undefined;
  const clients: TestClient[] = [];
  const ioClients: IoTestClient[] = [];
  const foreignClients: WebSocket[] = [];

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (const client of ioClients.splice(0)) client.close();
    for (const client of foreignClients.splice(0)) client.terminate();
    for (const client of foreign?.clients ?? []) client.terminate();
    foreign?.close();
    foreign = undefined;
    await sleep(50);
    await app?.close();
    app = undefined;
    seen.connections = seen.disconnections = 0;
  });

  /** Compiles the app (not listening yet), with the adapter of `kind`. */
  async function create(kind: Kind, providers: unknown[], options: WsRateLimitModuleOptions = {}) {
    const moduleRef = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })],
      providers: providers as never[],
    }).compile();
    app = moduleRef.createNestApplication({ logger: false });
    app.useWebSocketAdapter(
      (kind === 'ws' ? new WsRateLimitAdapter(app) : new WsRateLimitIoAdapter(app)) as WebSocketAdapter,
    );
    return app;
  }

  async function listen(): Promise<number> {
    await app!.listen(0, '127.0.0.1');
    return (app!.getHttpServer().address() as AddressInfo).port;
  }

  async function start(kind: Kind, providers: unknown[], options: WsRateLimitModuleOptions = {}): Promise<number> {
    await create(kind, providers, options);
    return listen();
  }

  const wsClient = async (url: string) => {
    const client = await TestClient.connect(url);
    clients.push(client);
    return client;
  };
  const ioClient = async (port: number, path?: string) => {
    const client = await connectIo(`http://127.0.0.1:${port}`, 'websocket', path === undefined ? {} : { path });
    ioClients.push(client);
    return client;
  };

  /**
   * The application's own upgrade handler on its HTTP server (a raw ws server, `noServer`,
   * on `/graphql`, as GraphQL subscriptions are served): it echoes what it gets.
   */
  function addForeignHandler(): void {
    const server = app!.getHttpServer() as HttpServer;
    const wss = (foreign = new WebSocketServer({ noServer: true }));
    wss.on('connection', (socket) => socket.on('message', (data) => socket.send(String(data))));
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (req.url === '/graphql') wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
    });
  }

  /** A client of the application's own handler, once open. */
  async function foreignClient(port: number): Promise<WebSocket> {
    const socket = new WebSocket(`ws://127.0.0.1:${port}/graphql`);
    foreignClients.push(socket);
    socket.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve());
      socket.once('close', (code) => reject(new Error(`closed ${code} before open`)));
    });
    return socket;
  }

  /** Sends `text` and waits for its echo (rejects when the socket closes first). */
  function echoed(socket: WebSocket, text: string): Promise<string> {
    return new Promise((resolve, reject) => {
      if (socket.readyState !== WebSocket.OPEN) return reject(new Error(`socket not open (${socket.readyState})`));
      const onMessage = (data: WebSocket.RawData) => {
        socket.off('close', onClose);
        resolve(String(data));
      };
      const onClose = (code: number) => {
        socket.off('message', onMessage);
        reject(new Error(`closed ${code}`));
      };
      socket.once('message', onMessage);
      socket.once('close', onClose);
      socket.send(text);
    });
  }

  // --- A gateway on its own port -------------------------------------------------------

  describe('a gateway on its own port', () => {
    it.each([
      ['no path', undefined],
      ['a path', '/own'],
    ])(
      'ws, %s: the connection rate refuses the 4th upgrade with 429, the handshake cap holds there, app.close() frees the port',
      async (_name, path) => {
        const own = await freePort();
        await start('ws', [ownPortGateway(own, path)], {
          connection: { capacity: 3, refillRate: SLOW },
          maxPendingHandshakesPerIp: 2,
        });
        const answers: Answer[] = [];
        for (let i = 0; i < 4; i++) answers.push(await upgradeTo(own, path ?? '/'));
        expect(answers.map((answer) => answer.status)).toEqual([101, 101, 101, 429]);
        expect(answers[3]!.retryAfter).toBe('100');
        await waitFor(() => seen.connections === 3 && seen.disconnections === 3, 10_000, 'the hooks');
        // Handshake hygiene on the gateway's own HTTP server: 2 pending per address, the 3rd dropped.
        expect(await connectionsEndedByServer(own, 3, 1000)).toBe(1);
        await app!.close();
        app = undefined;
        // No server left behind on the gateway's port.
        expect(await listening(own)).toBe(false);
        expect(seen.connections).toBe(3);
      },
    );

    it('socket.io: the connection rate refuses the 4th handshake with 429, the handshake cap holds there, app.close() frees the port', async () => {
      const own = await freePort();
      await start('io', [ownPortGateway(own)], {
        connection: { capacity: 3, refillRate: SLOW },
        maxPendingHandshakesPerIp: 2,
      });
      const first = await ioClient(own);
      first.socket.emit('echo', 1);
      await first.until(() => first.of('echo').length === 1);
      const answers = [await ioHandshake(own), await ioHandshake(own), await ioHandshake(own)];
      expect(answers).toEqual([
        { status: 200, retryAfter: undefined },
        { status: 200, retryAfter: undefined },
        { status: 429, retryAfter: '100' },
      ]);
      expect(await connectionsEndedByServer(own, 3, 1000)).toBe(1);
      expect(seen.connections).toBe(1);
      first.close();
      await app!.close();
      app = undefined;
      expect(await listening(own)).toBe(false);
    });

    it.each(['ws', 'io'] as Kind[])(
      '%s: the open-connection cap counts a gateway on its own port and one on the app server together',
      async (kind) => {
        const own = await freePort();
        const port = await start(kind, [RootGateway, ownPortGateway(own)], {
          connection: { capacity: 100, refillRate: 100 },
          maxConnectionsPerIp: 2,
        });
        if (kind === 'ws') {
          await wsClient(`ws://127.0.0.1:${port}`);
          await wsClient(`ws://127.0.0.1:${own}`);
          expect((await upgradeTo(port)).status).toBe(429);
          expect((await upgradeTo(own)).status).toBe(429);
        } else {
          await ioClient(port);
          await ioClient(own);
          expect(await ioHandshake(port)).toMatchObject({ status: 429 });
          expect(await ioHandshake(own)).toMatchObject({ status: 429 });
        }
        const [, concurrency] = await app!.get(WsRateLimitService).connectionStatus('127.0.0.1');
        expect(concurrency).toMatchObject({ remaining: 0 });
        expect(seen.connections).toBe(2);
      },
    );
    it.each(['ws', 'io'] as Kind[])(
      '%s: app.close() with clients open on both servers ends them, runs handleDisconnect and frees both ports',
      async (kind) => {
        const own = await freePort();
        const port = await start(kind, [RootGateway, ownPortGateway(own)], {
          connection: { capacity: 100, refillRate: 100 },
        });
        let ended = 0;
        if (kind === 'ws') {
          for (const target of [port, own]) {
            const client = await wsClient(`ws://127.0.0.1:${target}`);
            void client.closed.then(() => ended++);
          }
        } else {
          for (const target of [port, own]) {
            const client = await ioClient(target);
            client.socket.on('disconnect', () => ended++);
          }
        }
        await waitFor(() => seen.connections === 2, 10_000, 'both connections');
        await app!.close();
        app = undefined;
        await waitFor(() => ended === 2, 10_000, 'both clients to see the end');
        expect(seen.disconnections).toBe(2);
        expect(await listening(own)).toBe(false);
        expect(await listening(port)).toBe(false);
      },
    );
  });

  // --- Two gateways on two paths of one server -----------------------------------------

  describe('two gateways on paths /a and /b of the app server', () => {
    it('ws: one connection rate and cap for both paths, each gateway its own message figures, an unknown event answered once', async () => {
      const port = await start('ws', [PathAGateway, PathBGateway], {
        connection: { capacity: 100, refillRate: 100 },
        maxConnectionsPerIp: 3,
      });
      const a = await wsClient(`ws://127.0.0.1:${port}/a`);
      const b = await wsClient(`ws://127.0.0.1:${port}/b`);
      for (let i = 0; i < 3; i++) a.send('chat', i);
      for (let i = 0; i < 5; i++) b.send('chat', i);
      a.send('nope');
      await a.waitFor((frame) => frame.event === 'error');
      await b.waitForEvent('rate_limit');
      expect(a.events('a')).toHaveLength(2);
      expect(a.events('rate_limit').map((frame) => frame.data)).toEqual([
        expect.objectContaining({ code: 'TYPE_LIMIT', messageType: 'chat', limit: 2 }),
      ]);
      expect(a.events('error')).toEqual([{ event: 'error', data: { code: 'UNKNOWN_EVENT' } }]);
      expect(b.events('b')).toHaveLength(4);
      expect(b.events('rate_limit').map((frame) => frame.data)).toEqual([
        expect.objectContaining({ code: 'TYPE_LIMIT', messageType: 'b-chat', limit: 4 }),
      ]);
      await wsClient(`ws://127.0.0.1:${port}/b`);
      // The third open connection fills the cap for both paths.
      expect((await upgradeTo(port, '/a')).status).toBe(429);
      expect((await upgradeTo(port, '/b')).status).toBe(429);
      expect(seen.connections).toBe(3);
    });

    it('ws: upgrades to a path no gateway has are not charged to the connection rate', async () => {
      const port = await start('ws', [PathAGateway, PathBGateway], { connection: { capacity: 2, refillRate: SLOW } });
      for (let i = 0; i < 4; i++) await expect(upgradeTo(port, '/c')).rejects.toThrow();
      expect((await upgradeTo(port, '/a')).status).toBe(101);
      expect((await upgradeTo(port, '/b')).status).toBe(101);
      expect(await upgradeTo(port, '/b')).toEqual({ status: 429, retryAfter: '100' });
    });

    it('socket.io: one connection rate and cap for both paths, each gateway its own message figures', async () => {
      const port = await start('io', [PathAGateway, PathBGateway], {
        connection: { capacity: 100, refillRate: 100 },
        maxConnectionsPerIp: 3,
      });
      const a = await ioClient(port, '/a');
      const b = await ioClient(port, '/b');
      for (let i = 0; i < 3; i++) a.socket.emit('chat', i);
      for (let i = 0; i < 5; i++) b.socket.emit('chat', i);
      await a.until(() => a.of('rate_limit').length === 1);
      await b.until(() => b.of('rate_limit').length === 1);
      expect(a.of('a')).toEqual([0, 1]);
      expect(a.of('rate_limit')).toEqual([expect.objectContaining({ code: 'TYPE_LIMIT', limit: 2 })]);
      expect(b.of('b')).toEqual([0, 1, 2, 3]);
      expect(b.of('rate_limit')).toEqual([expect.objectContaining({ code: 'TYPE_LIMIT', limit: 4 })]);
      await ioClient(port, '/b');
      expect(await ioHandshake(port, '/a/')).toMatchObject({ status: 429 });
      expect(await ioHandshake(port, '/b/')).toMatchObject({ status: 429 });
      expect(seen.connections).toBe(3);
    });

    it('an event of one name with other figures on the two paths stops start-up, naming both gateways (README: handlers sharing a type must agree on its figures)', async () => {
      await create('ws', [PathAGateway, ClashingPathBGateway]);
      const started = listen();
      await expect(started).rejects.toThrow(WsRateLimitConfigError);
      await expect(started).rejects.toThrow(/ClashingPathBGateway\.chat.*PathAGateway\.chat/);
    });
  });

  // --- Lifecycle hooks -----------------------------------------------------------------

  describe('handleConnection / handleDisconnect and refused connections', () => {
    it.each([
      ['ws', 'http'],
      ['ws', 'close'],
      ['io', 'http'],
      ['io', 'close'],
    ] as Array<[Kind, 'http' | 'close']>)(
      '%s, connectionRefusal %s: a refused connection reaches neither hook ("runs no gateway code"); an admitted one both',
      async (kind, connectionRefusal) => {
        const port = await start(kind, [RootGateway], {
          connection: { capacity: 1, refillRate: SLOW },
          connectionRefusal,
        });
        if (kind === 'ws') {
          const admitted = await wsClient(`ws://127.0.0.1:${port}`);
          if (connectionRefusal === 'http') {
            await expect(TestClient.connect(`ws://127.0.0.1:${port}`)).rejects.toThrow('HTTP 429');
          } else {
            const refused = await wsClient(`ws://127.0.0.1:${port}`);
            expect(await refused.waitClose()).toEqual({ code: 1008, reason: 'Connection rate limit exceeded' });
          }
          await admitted.close();
        } else {
          const admitted = await ioClient(port);
          await expect(connectIo(`http://127.0.0.1:${port}`, 'websocket')).rejects.toThrow(
            connectionRefusal === 'http' ? /websocket error/ : /Connection rate limit exceeded/,
          );
          admitted.close();
        }
        await waitFor(() => seen.disconnections === 1, 10_000, 'the admitted one to be seen leaving');
        await sleep(200);
        expect(seen).toEqual({ connections: 1, disconnections: 1 });
      },
    );
  });

  // --- Adapters given twice, or given the HTTP server ----------------------------------

  describe('how the adapter is given', () => {
    it('app.useWebSocketAdapter called twice with WsRateLimitAdapter: the last one decides, each upgrade charged once, close ends all', async () => {
      const moduleRef = await Test.createTestingModule({
        imports: [WsRateLimitModule.forRoot({ useEnv: false, connection: { capacity: 3, refillRate: SLOW } })],
        providers: [RootGateway],
      }).compile();
      app = moduleRef.createNestApplication({ logger: false });
      app.useWebSocketAdapter(new WsRateLimitAdapter(app));
      app.useWebSocketAdapter(new WsRateLimitAdapter(app));
      const port = await listen();
      const answers: Answer[] = [];
      for (let i = 0; i < 4; i++) answers.push(await upgradeTo(port));
      expect(answers.map((answer) => answer.status)).toEqual([101, 101, 101, 429]);
      const open = await TestClient.connect(`ws://127.0.0.1:${port}`).catch((error: Error) => error.message);
      expect(open).toBe('HTTP 429');
      await app.close();
      app = undefined;
      expect(await listening(port)).toBe(false);
    });

    it.each(['ws', 'io'] as Kind[])(
      '%s adapter given the HTTP server instead of the app: the error says it needs the application, not that the module is missing',
      async (kind) => {
        // Expected: platform-ws's WsAdapter and IoAdapter take `appOrHttpServer`, so a NestJS
        // user may well write `new WsRateLimitAdapter(app.getHttpServer())` (from JavaScript,
        // or through a cast). The limiter needs the application (README: `new
        // WsRateLimitAdapter(app)`), so refusing is right; but the error must say that, not
        // "needs WsRateLimitModule: import WsRateLimitModule.forRoot() in the root module"
        // to an app whose root module imports it.
        const moduleRef = await Test.createTestingModule({
          imports: [WsRateLimitModule.forRoot({ useEnv: false })],
          providers: [RootGateway],
        }).compile();
        app = moduleRef.createNestApplication({ logger: false });
        const server = app.getHttpServer() as never;
        let message = '';
        try {
          if (kind === 'ws') new WsRateLimitAdapter(server);
          else new WsRateLimitIoAdapter(server);
        } catch (error) {
          message = (error as Error).message;
        }
        expect(message).not.toBe('');
        expect(message).not.toMatch(/import WsRateLimitModule\.forRoot\(\)/);
        expect(message).toMatch(/\bapp(lication)?\b/i);
      },
    );
  });

  // --- The application's own upgrade handler on the same HTTP server --------------------

  describe("an upgrade handler of the application's own on the gateway's HTTP server (socket.io)", () => {
    it("its path is not charged to the gateway's connection rate", async () => {
      await create('io', [RootGateway], { connection: { capacity: 1, refillRate: SLOW } });
      addForeignHandler();
      const port = await listen();
      for (let i = 0; i < 3; i++) {
        const socket = await foreignClient(port);
        expect(await echoed(socket, `hi ${i}`)).toBe(`hi ${i}`);
      }
      await ioClient(port);
      expect(seen.connections).toBe(1);
    });

    it('its WebSocket connections are not cut off at handshakeTimeoutMs: their upgrade completed', async () => {
      // Expected: the handshake timeout drops "a TCP connection that has not sent its whole
      // request (headers and body) or completed its upgrade by then" (README, variables);
      // this one completed its upgrade (101, then messages both ways) on the application's
      // own handler. On NestJS's stock IoAdapter it stays open; on WsRateLimitIoAdapter its
      // TCP socket is destroyed when the timeout expires, because only an upgrade the
      // adapter's own servers open ends its pending exchange (handshakeCompleted). GraphQL
      // subscriptions served beside a socket.io gateway would all die after 10 s.
      await create('io', [RootGateway], { handshakeTimeoutMs: 1000 });
      addForeignHandler();
      const port = await listen();
      const socket = await foreignClient(port);
      expect(await echoed(socket, 'first')).toBe('first');
      // Three timeouts later, still talking.
      for (let i = 0; i < 6; i++) {
        await sleep(500);
        expect(await echoed(socket, `still ${i}`)).toBe(`still ${i}`);
      }
    });

    it('its open WebSocket connections hold no pending-handshake slots: the same address is still answered plain HTTP and socket.io handshakes', async () => {
      // Expected: `maxPendingHandshakesPerIp` counts "TCP connections per peer address in an
      // exchange not yet complete" (README, variables). An open WebSocket of the
      // application's own handler has completed its exchange, so two of them must not use up
      // a cap of 2; on the current code each holds a slot for as long as it stays open (here
      // with the timeout off), and the address's next TCP connection is dropped unanswered.
      await create('io', [RootGateway], { handshakeTimeoutMs: 0, maxPendingHandshakesPerIp: 2 });
      addForeignHandler();
      const port = await listen();
      const first = await foreignClient(port);
      const second = await foreignClient(port);
      expect(await echoed(first, 'one')).toBe('one');
      expect(await echoed(second, 'two')).toBe('two');
      expect(await httpGet(port, '/health')).toEqual({ status: 404, retryAfter: undefined });
      expect(await ioHandshake(port)).toMatchObject({ status: 200 });
    });
  });
});
