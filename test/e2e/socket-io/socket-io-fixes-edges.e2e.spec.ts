/**
 * Adversarial review of commit 034eb26: sockets disconnected before the limiter tracks them
 * (`noteClosedSocket` / `isClosed`, `bindClientConnect`), and `close()` of the socket.io
 * client while connecting over long polling. Real apps on 127.0.0.1, real socket.io-client.
 * Four cases failed before their fixes: a join the namespace guard admitted as a new
 * connection kept its open-connection slot for ever when its namespace had no gateway, or the
 * application turned the socket away (three cases: the slot now ends with the socket); a
 * client closed while its namespace join waited on the server kept its Engine.IO session (it
 * waited for the join although the handshake was over). Two more are noted, not tested here:
 * a socket of a namespace without a gateway met by a service call only after it disconnected,
 * and sockets `consume`d in a namespace middleware that refuses them, stay counted.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { Namespace, Server, Socket } from 'socket.io';
import { io } from 'socket.io-client';
import { RateLimitedClient, socketIoFactory } from '../../../lib/client/index.js';
import { Throttle, WsRateLimit, WsRateLimitService } from '../../../lib/index.js';
import { ioHarness, joined } from '../../support/io-harness.js';
import { ENGINE_TRANSPORTS, waitFor } from '../../support/io-client.js';

type Auth = {
  kick?: boolean;
  status?: boolean;
  statusOnLeave?: boolean;
  refuse?: boolean;
  hold?: boolean;
};
const authOf = (socket: Socket): Auth => (socket.handshake.auth ?? {}) as Auth;

let ioServer: Server | undefined;
const seen = { statusCalls: 0, leaveCalls: 0, refusals: 0, holding: [] as Array<(error?: Error) => void> };
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Root gateway; the app also makes `/x` and a dynamic `/dyn-<n>` of its own (no gateway). */
@WebSocketGateway()
@WsRateLimit()
class ReviewRootGateway {
  constructor(private readonly limiter: WsRateLimitService) {}

  afterInit(server: Server): void {
    ioServer = server;
    server.on('connection', (socket) => {
      if (authOf(socket).kick === true) socket.disconnect(true);
    });
    const appNamespace = (nsp: Namespace) =>
      nsp.on('connection', (socket: Socket) => {
        if (authOf(socket).statusOnLeave === true) {
          socket.on('disconnect', () => {
            void this.limiter.status(socket).finally(() => seen.leaveCalls++);
          });
        }
        if (authOf(socket).kick === true) socket.disconnect();
      });
    appNamespace(server.of('/x'));
    appNamespace(server.of(/^\/dyn-\d+$/) as unknown as Namespace);
  }

  async handleConnection(client: Socket): Promise<void> {
    if (authOf(client).status !== true) return;
    try {
      await this.limiter.status(client);
    } finally {
      seen.statusCalls++;
    }
  }

  handleDisconnect(client: Socket): void {
    if (authOf(client).statusOnLeave === true) void this.limiter.status(client).finally(() => seen.leaveCalls++);
  }

  @Throttle({ type: 'chat', capacity: 50, refillRate: 0.01 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** A gateway namespace whose middleware throttles auth attempts, or holds joins. */
@WebSocketGateway({ namespace: '/side' })
@WsRateLimit()
class ReviewSideGateway {
  constructor(private readonly limiter: WsRateLimitService) {}

  afterInit(server: Namespace): void {
    server.use((socket, next) => {
      const auth = authOf(socket);
      if (auth.hold === true) return void seen.holding.push(next);
      if (auth.refuse !== true) return next();
      // An auth check that throttles failed attempts per connection, then refuses.
      void this.limiter.consume(socket, { type: 'auth' }).then(() => {
        seen.refusals++;
        next(new Error('bad token'));
      });
    });
    server.on('connection', (socket: Socket) => {
      if (authOf(socket).kick === true) socket.disconnect();
    });
  }

  @SubscribeMessage('side')
  side(@MessageBody() data: unknown) {
    return { side: data };
  }
}

/** A RegExp gateway namespace whose connection listener turns some joins away. */
@WebSocketGateway({ namespace: /^\/board-\d+$/ })
@WsRateLimit()
class ReviewBoardGateway {
  afterInit(server: Namespace): void {
    server.on('connection', (socket: Socket) => {
      if (authOf(socket).kick === true) socket.disconnect();
    });
  }

  @SubscribeMessage('post')
  post(@MessageBody() data: unknown) {
    return { post: data };
  }
}

const GATEWAYS = [ReviewRootGateway, ReviewSideGateway, ReviewBoardGateway];
const MODULE = {
  types: { auth: { capacity: 100, refillRate: 0.01 } },
  connection: { capacity: 100_000, refillRate: 100_000 },
};

describe('socket.io fixes of 034eb26 (adversarial review)', () => {
  const harness = ioHarness();
  const rlClients: RateLimitedClient[] = [];

  afterEach(async () => {
    for (const client of rlClients.splice(0)) client.close();
    for (const next of seen.holding.splice(0)) next(new Error('test over'));
    await harness.close();
    seen.statusCalls = 0;
    seen.leaveCalls = 0;
    seen.refusals = 0;
    ioServer = undefined;
  });

  const stats = () => harness.limiter().stats();

  /** Whether a fresh connection of this address gets in (the cap's slots that are free). */
  async function admits(url: string, count: number): Promise<string[]> {
    const outcomes: string[] = [];
    for (let i = 0; i < count; i++) {
      const client = harness.client(url, 'websocket');
      outcomes.push(
        await client.connected().then(
          () => 'connected',
          (error: Error) => error.message,
        ),
      );
    }
    return outcomes;
  }

  describe('sockets disconnected before the limiter tracks them', () => {
    it('a gateway socket reading its status in handleDisconnect is not counted after it left', async () => {
      const url = await harness.start(GATEWAYS, MODULE);
      const client = await harness.connect(url, 'polling', { auth: { statusOnLeave: true } });
      expect(stats().connections).toBe(1);
      await client.closeAndSettle();
      await waitFor(() => seen.leaveCalls === 1, 10_000, 'handleDisconnect');
      await sleep(100);
      expect(stats().connections).toBe(0);
    });

    it.each([
      ['an app-made namespace (no gateway) joined again on one connection', '/x', {}],
      ['a dynamic gateway namespace join the app turned away in its connection listener', '/board-1', { kick: true }],
      ['a gateway namespace joined again and turned away by the app', '/side', { kick: true }],
    ] as const)('%s gives its open-connection slot back once the client has left', async (_title, name, auth) => {
      const url = await harness.start(GATEWAYS, { ...MODULE, maxConnectionsPerIp: 2 });
      const manager = harness.manager(url, 'websocket');
      const root = manager.socket('/');
      expect(await joined(root)).toBe('connected');
      const other = manager.socket(name, { auth });
      if (name === '/x' || name === '/side') {
        // First join: free (an application namespace); then joined again on the connection.
        const first = manager.socket(name);
        expect(await joined(first)).toBe('connected');
        first.disconnect();
        const nsp = ioServer!.of(name);
        await waitFor(() => nsp.sockets.size === 0, 10_000, 'the first join to leave');
        (first as unknown as { auth: unknown }).auth = auth;
        const outcome = await new Promise<string>((resolve) => {
          first.once('connect', () => resolve('connected'));
          first.once('disconnect', (reason) => resolve(reason));
          first.once('connect_error', (error: Error) => resolve(error.message));
          first.connect();
        });
        expect(['connected', 'io server disconnect']).toContain(outcome);
        first.disconnect();
      } else {
        const outcome = await new Promise<string>((resolve) => {
          other.once('connect', () => resolve('connected'));
          other.once('disconnect', (reason) => resolve(reason));
          other.once('connect_error', (error: Error) => resolve(error.message));
          other.connect();
        });
        expect(['connected', 'io server disconnect']).toContain(outcome);
        other.disconnect();
      }
      await sleep(200);
      root.disconnect();
      await waitFor(() => ioServer!.engine.clientsCount === 0, 10_000, 'the session to end');
      await sleep(200);
      const [concurrency] = (await harness.limiter().connectionStatus('127.0.0.1')).filter((tier) => tier.limit === 2);
      // The client left: both slots are free, two new connections get in.
      expect({ slotsLeft: concurrency?.remaining, next: await admits(url, 2) }).toEqual({
        slotsLeft: 2,
        next: ['connected', 'connected'],
      });
    });

    it('a dynamic child of an app-made RegExp namespace joined beside / gives its slot back (it takes none)', async () => {
      const url = await harness.start(GATEWAYS, { ...MODULE, maxConnectionsPerIp: 2 });
      const manager = harness.manager(url, 'websocket');
      const root = manager.socket('/');
      expect(await joined(root)).toBe('connected');
      const dyn = manager.socket('/dyn-1');
      expect(await joined(dyn)).toBe('connected');
      dyn.disconnect();
      root.disconnect();
      await waitFor(() => ioServer!.engine.clientsCount === 0, 10_000, 'the session to end');
      await sleep(200);
      expect(await admits(url, 2)).toEqual(['connected', 'connected']);
    });

    it.each(ENGINE_TRANSPORTS)(
      'over %s, hundreds of clients the app turned away (status read in handleConnection) leave nothing counted, kept or held',
      async (transport) => {
        const url = await harness.start(GATEWAYS, { ...MODULE, maxConnectionsPerIp: 3 });
        const rounds = transport === 'websocket' ? 300 : 60;
        const gc = (globalThis as { gc?: () => void }).gc;
        gc?.();
        const before = process.memoryUsage().heapUsed;
        for (let i = 0; i < rounds; i += 3) {
          const batch = [0, 1, 2].map(() => harness.client(url, transport, { auth: { kick: true, status: true } }));
          await Promise.all(batch.map((client) => client.disconnected(20_000)));
          for (const client of batch) client.close();
        }
        await waitFor(() => seen.statusCalls === rounds, 20_000, 'every handleConnection');
        await waitFor(() => ioServer!.engine.clientsCount === 0, 20_000, 'the sessions to end');
        await sleep(200);
        gc?.();
        const grown = process.memoryUsage().heapUsed - before;
        expect(stats()).toMatchObject({ connections: 0, localKeys: 0 });
        expect(await admits(url, 3)).toEqual(['connected', 'connected', 'connected']);
        // Loose bound: no per-socket leak of any size.
        expect(grown).toBeLessThan(40 * 1024 * 1024);
      },
      120_000,
    );
  });

  describe('RateLimitedClient close() while connecting over long polling', () => {
    it('closed while its namespace join waits on the server, the client leaves no session (nor the open-connection slot)', async () => {
      const url = await harness.start(GATEWAYS, { ...MODULE, maxConnectionsPerIp: 1 });
      const client = new RateLimitedClient(`${url}/side`, {
        createSocket: socketIoFactory(io, { transports: ['polling'], auth: { hold: true } }),
      });
      rlClients.push(client);
      // The Engine.IO session is open; the join waits on the application's middleware.
      await waitFor(() => seen.holding.length === 1, 10_000, 'the join to reach the middleware');
      expect(ioServer!.engine.clientsCount).toBe(1);
      client.close();
      expect(client.state).toBe('closed');
      await waitFor(() => ioServer!.engine.clientsCount === 0, 5_000, 'no session').catch(() => undefined);
      const sessions = ioServer!.engine.clientsCount;
      const next = await admits(url, 1);
      expect({ sessions, next }).toEqual({ sessions: 0, next: ['connected'] });
    });

    it('closed while connecting to a namespace that refuses the join (connect_error), no session is left', async () => {
      const url = await harness.start(GATEWAYS, { ...MODULE, maxConnectionsPerIp: 1 });
      const client = new RateLimitedClient(`${url}/side`, {
        createSocket: socketIoFactory(io, { transports: ['polling'], auth: { refuse: true } }),
      });
      rlClients.push(client);
      client.close();
      await waitFor(() => seen.refusals === 1, 10_000, 'the refusal');
      await waitFor(() => ioServer!.engine.clientsCount === 0, 10_000, 'no session');
      expect(await admits(url, 1)).toEqual(['connected']);
    });

    it('close() then connect() at once: the first session is disconnected, one stays open', async () => {
      const url = await harness.start(GATEWAYS, MODULE);
      const client = new RateLimitedClient(url, {
        createSocket: socketIoFactory(io, { transports: ['polling'] }),
        policyDelayMs: 100,
      });
      rlClients.push(client);
      client.close();
      client.connect();
      await waitFor(() => client.state === 'open', 10_000, 'open');
      await sleep(300);
      await waitFor(() => ioServer!.engine.clientsCount === 1, 10_000, 'one session');
      await waitFor(() => stats().connections === 1, 10_000, 'one tracked');
      await sleep(500);
      expect(ioServer!.engine.clientsCount).toBe(1);
      client.close();
      await waitFor(() => ioServer!.engine.clientsCount === 0, 10_000, 'no session');
    });

    it('closed before its open: no reconnect, no event after close', async () => {
      const url = await harness.start(GATEWAYS, MODULE);
      const client = new RateLimitedClient(url, { createSocket: socketIoFactory(io, { transports: ['polling'] }) });
      rlClients.push(client);
      const states: string[] = [];
      client.on('state', (state) => states.push(state));
      client.close();
      await sleep(1500);
      expect(states).toEqual(['closed']);
      expect(ioServer!.engine.clientsCount).toBe(0);
    });

    it('polling then websocket: close() right after open, during the upgrade, ends the session', async () => {
      const url = await harness.start(GATEWAYS, MODULE);
      for (let i = 0; i < 5; i++) {
        const client = new RateLimitedClient(url, {
          createSocket: socketIoFactory(io, { transports: ['polling', 'websocket'] }),
        });
        rlClients.push(client);
        await waitFor(() => client.state === 'open', 10_000, 'open');
        client.close();
      }
      await waitFor(() => ioServer!.engine.clientsCount === 0, 10_000, 'no session');
      await waitFor(() => stats().connections === 0, 10_000, 'none tracked');
    });

    it('openTimeoutMs abandonment over polling against a held join: the abandoned sessions end once answered', async () => {
      const url = await harness.start(GATEWAYS, MODULE);
      const client = new RateLimitedClient(`${url}/side`, {
        createSocket: socketIoFactory(io, { transports: ['polling'], auth: { hold: true } }),
        openTimeoutMs: 300,
        reconnect: false,
      });
      rlClients.push(client);
      await waitFor(() => client.state === 'closed', 10_000, 'abandoned');
      await waitFor(() => seen.holding.length === 1, 10_000, 'the held join');
      for (const next of seen.holding.splice(0)) next();
      await waitFor(() => ioServer!.engine.clientsCount === 0, 10_000, 'no session');
      await waitFor(() => stats().connections === 0, 10_000, 'none tracked');
    });
  });
});
