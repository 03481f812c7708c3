import { afterEach, describe, expect, it } from '@jest/globals';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { request } from 'node:http';
import type { Namespace, Server, Socket } from 'socket.io';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { connectIo, IoTestClient, waitFor } from '../../support/io-client.js';

/** The socket.io server of the running app (set by the gateway's afterInit). */
let ioServer: Server | undefined;

/**
 * Review of the socket.io transport (issue 11): each test here is the evidence of one
 * finding and fails on the code under review.
 */

/** A gateway whose async handleConnection adds a socket.io middleware (an auth check, say). */
@WebSocketGateway()
@WsRateLimit()
class ReviewGateway {
  afterInit(server: Server): void {
    ioServer = server;
    // An app's own connection listener (registered before the adapter's) turning a client away.
    server.on('connection', (socket) => {
      if ((socket.handshake.auth as { kick?: boolean }).kick === true) socket.disconnect(true);
    });
  }

  async handleConnection(client: Socket): Promise<void> {
    await Promise.resolve(); // e.g. a session lookup
    client.on('error', () => undefined);
    client.use((packet, next) => {
      const data = packet[1] as { block?: boolean } | undefined;
      if (data?.block === true) return next(new Error('blocked by the app'));
      next();
    });
  }

  @Throttle({ type: 'ask', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('ask')
  ask(@MessageBody() data: unknown) {
    return { answer: data };
  }
}

/** A gateway on a namespace of its own: the only gateway of its app. */
@WebSocketGateway({ namespace: '/review' })
@WsRateLimit()
class NamespacedGateway {
  afterInit(namespace: Namespace): void {
    // A namespace the app serves with plain socket.io, beside its gateway.
    namespace.server.of('/plain').on('connection', (socket) => socket.emit('welcome'));
  }

  @SubscribeMessage('hello')
  hello(@MessageBody() data: unknown) {
    return { event: 'hello', data };
  }
}

/** A raw Engine.IO polling handshake; resolves with the HTTP status and body. */
function pollingHandshake(port: number, query: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path: `/socket.io/?EIO=4&transport=polling${query}`, agent: false },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

describe('socket.io transport review', () => {
  let running: RunningApp | undefined;
  const clients: IoTestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}, gateway: object = ReviewGateway) => {
    running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            tracker: 'connection',
            global: { capacity: 1000, refillRate: 1000 },
            violations: { max: 10, windowMs: 60_000 },
            ...options,
          }),
        ],
        providers: [gateway as typeof ReviewGateway],
      },
      (app) => new WsRateLimitIoAdapter(app),
    );
    return running;
  };

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await running?.close();
    running = undefined;
  });

  it('refuses a handshake sent with an empty sid (Engine.IO treats `sid=` as a handshake)', async () => {
    const { port } = await start({ connection: { capacity: 100, refillRate: 100 }, maxConnectionsPerIp: 1 });
    const first = await connectIo(`http://127.0.0.1:${port}`, 'polling');
    clients.push(first);
    // Control: a second handshake from the same address is refused by the open-connection cap.
    const plain = await pollingHandshake(port, '');
    expect(plain.status).toBe(429);
    // The same handshake with `sid=` skips the limiter's middleware, yet Engine.IO opens a session.
    const bypass = await pollingHandshake(port, '&sid=');
    expect({ status: bypass.status, opened: bypass.body.includes('"sid"') }).toEqual({ status: 429, opened: false });
  });

  it('control: with no blocked event, the refused event is answered through its ack', async () => {
    const { port } = await start();
    const client = await connectIo(`http://127.0.0.1:${port}`, 'websocket');
    clients.push(client);
    expect(await client.socket.timeout(10_000).emitWithAck('ask', { id: 2 })).toEqual({ answer: { id: 2 } });
    const third: unknown = await client.socket.timeout(10_000).emitWithAck('ask', { id: 3 });
    expect(third).toMatchObject({ event: 'rate_limit', data: { code: 'TYPE_LIMIT', messageType: 'ask', id: 3 } });
  });

  it('answers a refused event through its own ack after an app middleware blocked an earlier event', async () => {
    const { port } = await start();
    const client = await connectIo(`http://127.0.0.1:${port}`, 'websocket');
    clients.push(client);
    // Blocked by the app's own socket.use middleware (registered after the adapter's): no answer.
    client.socket.emit('ask', { id: 1, block: true }, () => undefined);
    const second = await client.socket.timeout(10_000).emitWithAck('ask', { id: 2 });
    expect(second).toEqual({ answer: { id: 2 } });
    // Over the limit: the refusal must reach this event's ack.
    const third: unknown = await client.socket
      .timeout(5_000)
      .emitWithAck('ask', { id: 3 })
      .catch((error: Error) => `no answer: ${error.message}`);
    expect(third).toMatchObject({ event: 'rate_limit', data: { code: 'TYPE_LIMIT', messageType: 'ask', id: 3 } });
  });

  it('decides a namespace joined again on the same Engine.IO connection as a new connection', async () => {
    const { port } = await start({ connection: { capacity: 1, refillRate: 0.001 } });
    const client = await connectIo(`http://127.0.0.1:${port}`, 'websocket');
    clients.push(client);
    expect(await client.socket.timeout(10_000).emitWithAck('ask', { id: 1 })).toEqual({ answer: { id: 1 } });
    expect(await client.socket.timeout(10_000).emitWithAck('ask', { id: 2 })).toMatchObject({ event: 'rate_limit' });
    // Leave the namespace and join it again on the same Engine.IO connection (packets 41, 40):
    // no handshake, yet it must not be a free new socket with a fresh per-connection budget.
    const engine = client.socket.io.engine;
    engine.send('1'); // socket.io DISCONNECT for '/' (Engine.IO message 41)
    await waitFor(() => ioServer!.of('/').sockets.size === 0, 10_000, 'the namespace disconnect');
    engine.send('0'); // socket.io CONNECT for '/' (Engine.IO message 40)
    // The connection bucket (capacity 1) was spent by the handshake: the join is refused.
    await waitFor(() => client.connectError !== undefined, 10_000, 'the refused join');
    expect(client.connectError!.message).toBe('Connection rate limit exceeded');
    expect(client.connectError!.data).toMatchObject({ code: 'rate', retryAfter: expect.any(Number) });
    expect(ioServer!.of('/').sockets.size).toBe(0);
  });

  it('closes an Engine.IO session refused in close mode even if it never joins a namespace', async () => {
    const { port } = await start({
      connection: { capacity: 1, refillRate: 0.001 },
      connectionRefusal: 'close',
    });
    const first = await connectIo(`http://127.0.0.1:${port}`, 'polling');
    clients.push(first);
    // Over the connection rate: in close mode Engine.IO opens a session for each (by design)...
    for (let i = 0; i < 3; i++) {
      const refused = await pollingHandshake(port, '');
      expect(refused.status).toBe(200);
    }
    // ...which should end promptly; a client that never sends a namespace CONNECT keeps it
    // open, uncounted, until socket.io's connectTimeout (45 s by default).
    await waitFor(() => ioServer!.engine.clientsCount === 1, 10_000, 'the refused sessions to close').catch(
      () => undefined,
    );
    expect(ioServer!.engine.clientsCount).toBe(1);
  });

  it('forgets a socket the app disconnected in its own connection listener', async () => {
    const { port, app } = await start();
    const stats = () => app.get(WsRateLimitService).stats();
    const kicked = new IoTestClient(`http://127.0.0.1:${port}`, 'websocket', { auth: { kick: true } });
    clients.push(kicked);
    await kicked.disconnected();
    await waitFor(() => ioServer!.engine.clientsCount === 0, 10_000, 'the Engine.IO connection to close');
    const kept = await connectIo(`http://127.0.0.1:${port}`, 'websocket');
    clients.push(kept);
    // One socket is open; the kicked one must not be counted any more.
    await waitFor(() => stats().connections === 1, 5_000, 'one tracked connection').catch(() => undefined);
    expect(stats().connections).toBe(1);
  });

  it('refuses, in close mode, a refused connection on a namespace the app made itself', async () => {
    const { port } = await start(
      { connection: { capacity: 1, refillRate: 0.001 }, connectionRefusal: 'close' },
      NamespacedGateway,
    );
    const first = await connectIo(`http://127.0.0.1:${port}/review`, 'websocket');
    clients.push(first);
    // Control: over the connection rate, the gateway's namespace is refused with the reason.
    const onGateway = new IoTestClient(`http://127.0.0.1:${port}/review`, 'websocket');
    clients.push(onGateway);
    await expect(onGateway.connected()).rejects.toThrow('Connection rate limit exceeded');
    // The same refused client joins a namespace the app made with `server.of` (not guarded) and
    // keeps its Engine.IO connection open, uncounted, for as long as it likes.
    const onRoot = new IoTestClient(`http://127.0.0.1:${port}/plain`, 'websocket');
    clients.push(onRoot);
    const outcome = await onRoot.connected().then(
      () => 'connected',
      (error: Error) => error.message,
    );
    expect(outcome).toBe('Connection rate limit exceeded');
  });
});
