import { afterEach, describe, expect, it } from '@jest/globals';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway, WebSocketServer } from '@nestjs/websockets';
import type { Namespace, Server, Socket } from 'socket.io';
import { SkipThrottle, Throttle, WsRateLimit } from '../../../lib/index.js';
import { ENGINE_TRANSPORTS, IoTestClient, waitFor, type EngineTransport } from '../../support/io-client.js';
import { ioHarness, joined } from '../../support/io-harness.js';

/**
 * socket.io at its edges, from an adversarial review, on both Engine.IO transports: RegExp
 * namespaces, connection state recovery, application middlewares, polling bursts and the
 * polling -> websocket upgrade. Four bugs failed before their fixes: a gateway on a RegExp
 * namespace was guarded twice (its child inherits the parent's middlewares) and charged
 * every connection twice; a connection refused in `close` mode recovered into its session
 * (socket.io skips middlewares for recovered sessions); a refused event whose payload an
 * application middleware replaced lost its acknowledgement (slots were matched by payload
 * identity only); a join the application's middleware refused counted as joined, so the
 * retry took a second open-connection slot. The controls and the rest held already.
 */

// --- Gateways ------------------------------------------------------------------------

/** A gateway on a dynamic namespace (a RegExp: socket.io makes a child namespace per name). */
@WebSocketGateway({ namespace: /^\/dyn-\w+$/ })
@WsRateLimit()
class DynamicNamespaceGateway {
  @SubscribeMessage('hello')
  hello(@MessageBody() data: unknown) {
    return { event: 'hello', data };
  }
}

/** The same gateway on a plain string namespace (control). */
@WebSocketGateway({ namespace: '/static' })
@WsRateLimit()
class StaticNamespaceGateway {
  @SubscribeMessage('hello')
  hello(@MessageBody() data: unknown) {
    return { event: 'hello', data };
  }
}

/** A gateway with socket.io's connection state recovery (socket.io ≥ 4.6). */
@WebSocketGateway({ connectionStateRecovery: { maxDisconnectionDuration: 60_000 } })
@WsRateLimit()
class RecoveryGateway {
  @WebSocketServer() server!: Server;

  @SubscribeMessage('broadcast')
  broadcast(@MessageBody() data: unknown) {
    this.server.emit('news', data);
    return { event: 'sent', data };
  }
}

/** A gateway whose app middleware normalises each event's payload (a copy), as apps do. */
@WebSocketGateway()
@WsRateLimit()
class NormalisingGateway {
  async handleConnection(client: Socket): Promise<void> {
    await Promise.resolve(); // e.g. a session lookup
    client.use((packet, next) => {
      const data = packet[1] as unknown;
      if (data !== null && typeof data === 'object' && !Array.isArray(data)) {
        packet[1] = { ...(data as Record<string, unknown>), normalised: true };
      }
      next();
    });
  }

  @Throttle({ type: 'ask', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('ask')
  ask(@MessageBody() data: unknown) {
    return { answer: data };
  }
}

/** The root namespace, plus `/admin` guarded by the app's own auth middleware. */
@WebSocketGateway()
@WsRateLimit()
class RootGateway {
  @SubscribeMessage('hello')
  hello(@MessageBody() data: unknown) {
    return { event: 'hello', data };
  }
}

@WebSocketGateway({ namespace: '/admin' })
@WsRateLimit()
class AdminGateway {
  afterInit(namespace: Namespace): void {
    namespace.use((socket, next) => {
      if ((socket.handshake.auth as { token?: string }).token === 'ok') return next();
      next(new Error('unauthorized'));
    });
  }

  @SubscribeMessage('whoami')
  whoami(@ConnectedSocket() socket: Socket) {
    return { event: 'whoami', data: socket.nsp.name };
  }
}

/** A handler with a large reply (100 kB), to fill a polling session's queue between polls. */
const BIG = 'x'.repeat(100_000);

@WebSocketGateway()
@WsRateLimit()
class BigReplyGateway {
  @Throttle({ type: 'big', capacity: 20, refillRate: 0.001 })
  @SubscribeMessage('big')
  big(@MessageBody() data: { i: number }) {
    return { event: 'big', data: { i: data.i, body: BIG } };
  }

  @SkipThrottle()
  @SubscribeMessage('ping')
  ping(@MessageBody() data: unknown) {
    return { event: 'pong', data };
  }
}

// --- Harness -------------------------------------------------------------------------

describe('socket.io transport edges', () => {
  const { start, connect, client, manager, limiter, close } = ioHarness();
  /** Whether a client connects (`'connected'`) or the connect_error message. */
  const outcome = (made: IoTestClient) =>
    made.connected().then(
      () => 'connected',
      (error: Error) => error.message,
    );
  const stats = () => limiter().stats();

  afterEach(close);

  describe.each(ENGINE_TRANSPORTS)('dynamic (RegExp) namespaces over %s', (transport) => {
    it('control: a gateway on a string namespace admits one client under a cap of 1', async () => {
      const url = await start([StaticNamespaceGateway], {
        connection: { capacity: 100, refillRate: 100 },
        maxConnectionsPerIp: 1,
      });
      const first = client(`${url}/static`, transport);
      expect(await outcome(first)).toBe('connected');
      first.socket.emit('hello', 1);
      await first.until(() => first.of('hello').length === 1);
    });

    it('a gateway on a RegExp namespace charges each connection once (one client admitted under a cap of 1)', async () => {
      const url = await start([DynamicNamespaceGateway], {
        connection: { capacity: 100, refillRate: 100 },
        maxConnectionsPerIp: 1,
      });
      // One client, one Engine.IO connection, one namespace: within a cap of one.
      const first = client(`${url}/dyn-a`, transport);
      expect(await outcome(first)).toBe('connected');
    });

    it('a gateway on a RegExp namespace spends one connection-rate token per connection', async () => {
      const url = await start([DynamicNamespaceGateway], { connection: { capacity: 2, refillRate: 0.001 } });
      // A burst of 2 connections: both must be admitted.
      const first = client(`${url}/dyn-a`, transport);
      const firstOutcome = await outcome(first);
      const second = client(`${url}/dyn-b`, transport);
      expect([firstOutcome, await outcome(second)]).toEqual(['connected', 'connected']);
    });
  });

  describe.each(ENGINE_TRANSPORTS)("connectionRefusal: 'close' with connection state recovery over %s", (transport) => {
    it('a refused connection that recovers a session is refused too (the namespace guard runs)', async () => {
      const url = await start([RecoveryGateway], {
        connection: { capacity: 1, refillRate: 0.001 },
        connectionRefusal: 'close',
      });
      const first = await connect(url, transport);
      // A broadcast gives the client an offset to recover from.
      first.socket.emit('broadcast', 'hi');
      await first.until(() => first.of('news').length === 1 && first.of('sent').length === 1);
      const { _pid: pid, _lastOffset: offset } = first.socket as unknown as { _pid?: string; _lastOffset?: string };
      expect(typeof pid).toBe('string');
      expect(typeof offset).toBe('string');
      // The connection is lost (not closed by the client): socket.io keeps its session.
      first.socket.io.engine.close();
      await first.disconnected();
      await waitFor(() => stats().connections === 0, 10_000, 'the lost connection to be freed');

      // Over the connection rate (capacity 1, spent): in close mode the namespace connection
      // must fail with the reason, whatever the CONNECT packet carries.
      const refused = client(url, transport, { auth: { pid, offset } });
      expect(await outcome(refused)).toBe('Connection rate limit exceeded');
    });

    it('control: a refused connection without a session to recover is told why', async () => {
      const url = await start([RecoveryGateway], {
        connection: { capacity: 1, refillRate: 0.001 },
        connectionRefusal: 'close',
      });
      await connect(url, transport);
      const refused = client(url, transport);
      expect(await outcome(refused)).toBe('Connection rate limit exceeded');
    });
  });

  describe.each(ENGINE_TRANSPORTS)('app middleware that rewrites the payload over %s', (transport) => {
    it('a refused event whose payload a middleware replaced is answered through its acknowledgement', async () => {
      const url = await start([NormalisingGateway]);
      const asker = await connect(url, transport);
      // Admitted: the handler's answer comes through the ack (the middleware's copy reached it).
      expect(await asker.socket.timeout(10_000).emitWithAck('ask', { id: 1 })).toEqual({
        answer: { id: 1, normalised: true },
      });
      // Refused (capacity 1): the README says the answer comes through the ack, and no event.
      const second: unknown = await asker.socket
        .timeout(5_000)
        .emitWithAck('ask', { id: 2 })
        .catch((error: Error) => `no answer: ${error.message}`);
      expect({ ack: second, events: asker.of('rate_limit') }).toEqual({
        ack: { event: 'rate_limit', data: expect.objectContaining({ code: 'TYPE_LIMIT', messageType: 'ask', id: 2 }) },
        events: [],
      });
    });
  });

  describe.each(ENGINE_TRANSPORTS)('a namespace join the app refused, then retried, over %s', (transport) => {
    it('an auth retry on the same Engine.IO connection takes no second open-connection slot', async () => {
      const url = await start([RootGateway, AdminGateway], {
        connection: { capacity: 100, refillRate: 100 },
        maxConnectionsPerIp: 2,
      });
      const made = manager(url, transport);
      const root = made.socket('/', {});
      expect(await joined(root)).toBe('connected');
      // The app's auth middleware turns the first attempt away; the client retries with a
      // good token on the same Engine.IO connection (its root socket keeps it open).
      const admin = made.socket('/admin', { auth: { token: 'expired' } });
      expect(await joined(admin)).toBe('unauthorized');
      admin.auth = { token: 'ok' };
      expect(await joined(admin)).toBe('connected');
      admin.emit('whoami');
      await new Promise<void>((resolve) => admin.once('whoami', () => resolve()));

      // One Engine.IO connection is open from this address, under a cap of 2: one slot is free...
      const [, concurrency] = await limiter().connectionStatus('127.0.0.1');
      expect(concurrency).toMatchObject({ tier: 'concurrency', limit: 2, remaining: 1 });
      // ...and a second connection is admitted.
      const second = client(url, transport);
      expect(await outcome(second)).toBe('connected');
    });

    it('control: two namespaces joined at once on one Engine.IO connection take one slot', async () => {
      const url = await start([RootGateway, AdminGateway], {
        connection: { capacity: 100, refillRate: 100 },
        maxConnectionsPerIp: 2,
      });
      const made = manager(url, transport);
      const sockets = [made.socket('/', {}), made.socket('/admin', { auth: { token: 'ok' } })];
      await Promise.all(
        sockets.map(
          (socket) =>
            new Promise<void>((resolve, reject) => {
              socket.once('connect', () => resolve());
              socket.once('connect_error', reject);
              socket.connect();
            }),
        ),
      );
      const second = client(url, transport);
      expect(await outcome(second)).toBe('connected');
    });
  });

  describe('large replies to a burst (slow-consumer check)', () => {
    /**
     * 22 `big` events at once: 20 admitted (each a 100 kB reply), 2 refused. The client reads
     * everything as fast as its transport allows; it is no slow consumer.
     */
    const burst = async (transport: EngineTransport) => {
      const url = await start([BigReplyGateway]);
      const reader = await connect(url, transport);
      for (let i = 0; i < 22; i++) reader.socket.emit('big', { i });
      await reader.until(
        () => (reader.of('big').length === 20 && reader.of('rate_limit').length === 2) || !reader.socket.connected,
        30_000,
        'the burst answered',
      );
      return reader;
    };

    it.each(ENGINE_TRANSPORTS)(
      'over %s: every reply and both refusals arrive, the client stays connected',
      async (transport) => {
        const reader = await burst(transport);
        expect({
          big: reader.of('big').length,
          refused: reader.of('rate_limit').length,
          disconnect: reader.disconnectReason,
        }).toEqual({ big: 20, refused: 2, disconnect: undefined });
      },
    );
  });

  describe('passing guards', () => {
    it('a polling→websocket upgrade is not charged as a new connection', async () => {
      const url = await start([RootGateway], {
        connection: { capacity: 1, refillRate: 0.001 },
        maxConnectionsPerIp: 1,
      });
      const upgraded = client(url, 'polling', { transports: ['polling', 'websocket'], upgrade: true });
      await upgraded.connected();
      const engine = upgraded.socket.io.engine;
      await waitFor(() => engine.transport.name === 'websocket', 10_000, 'the upgrade');
      upgraded.socket.emit('hello', 'after upgrade');
      await upgraded.until(() => upgraded.of('hello').length === 1);
      expect(upgraded.socket.connected).toBe(true);
      expect(stats().connections).toBe(1);
    });

    it.each(ENGINE_TRANSPORTS)('many events in one read over %s: answers in order, none lost', async (transport) => {
      const url = await start([BigReplyGateway]);
      const sender = await connect(url, transport);
      for (let i = 0; i < 200; i++) sender.socket.emit('ping', i);
      await sender.until(() => sender.of('pong').length === 200, 30_000, 'every pong');
      expect(sender.of('pong')).toEqual(Array.from({ length: 200 }, (_, i) => i));
    });
  });
});
