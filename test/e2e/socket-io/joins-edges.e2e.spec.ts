import { afterEach, describe, expect, it } from '@jest/globals';
import { MessageBody, SubscribeMessage, WebSocketGateway, WebSocketServer } from '@nestjs/websockets';
import type { Manager } from 'socket.io-client';
import type { Namespace, Socket } from 'socket.io';
import { Throttle, WsRateLimit } from '../../../lib/index.js';
import { ENGINE_TRANSPORTS, waitFor } from '../../support/io-client.js';
import { ioHarness, joined } from '../../support/io-harness.js';

/**
 * Namespace joins and session recovery at their edges, from a review of the fixes in
 * transport-edges.e2e.spec.ts (joins counted at connection, joins again given back at the
 * next attempt, RegExp children screened once, recovery's skipMiddlewares, the oldest-slot
 * fallback). Three regressions of those fixes failed here before they landed: two joins
 * sent before either connected were both first joins (the second paid nothing); a join
 * again still in the application's middleware was given back by the next attempt (both
 * connected on one slot); `connectionStateRecovery: false` or `null` turned recovery on.
 * The controls and guards held.
 */

// --- Gateways ------------------------------------------------------------------------

/** The root namespace. */
@WebSocketGateway()
@WsRateLimit()
class RootGateway {
  @SubscribeMessage('hello')
  hello(@MessageBody() data: unknown) {
    return { event: 'hello', data };
  }
}

/** A namespace whose app middleware is asynchronous (e.g. a token looked up in a store). */
@WebSocketGateway({ namespace: '/slow-auth' })
@WsRateLimit()
class SlowAuthGateway {
  @WebSocketServer() namespace!: Namespace;

  afterInit(namespace: Namespace): void {
    namespace.use((_socket, next) => {
      setTimeout(() => next(), 200);
    });
  }

  @SubscribeMessage('whoami')
  whoami() {
    return { event: 'whoami', data: 'ok' };
  }
}

/** Recovery turned off the way `cond && {...}` does (the decorator's options are untyped). */
@WebSocketGateway({ connectionStateRecovery: false })
@WsRateLimit()
class RecoveryOffGateway {
  @SubscribeMessage('hello')
  hello(@MessageBody() data: unknown) {
    return { event: 'hello', data };
  }
}

/** Recovery turned off with `null` (e.g. from a config object). */
@WebSocketGateway({ connectionStateRecovery: null })
@WsRateLimit()
class RecoveryNullGateway {
  @SubscribeMessage('hello')
  hello(@MessageBody() data: unknown) {
    return { event: 'hello', data };
  }
}

/** Recovery on with `{}` (socket.io's defaults): the guard must still run for recovered sessions. */
@WebSocketGateway({ connectionStateRecovery: {} })
@WsRateLimit()
class RecoveryEmptyGateway {
  @WebSocketServer() server!: { emit(event: string, data: unknown): boolean };

  @SubscribeMessage('broadcast')
  broadcast(@MessageBody() data: unknown) {
    this.server.emit('news', data);
    return { event: 'sent', data };
  }
}

/**
 * An app middleware that drops invalid `ask` events (no next()) and replaces the payload
 * of the valid ones with a copy.
 */
@WebSocketGateway()
@WsRateLimit()
class DroppingGateway {
  handleConnection(client: Socket): void {
    client.use((packet, next) => {
      const data = packet[1] as { valid?: boolean } | undefined;
      if (packet[0] === 'ask' && data !== null && typeof data === 'object') {
        if (data.valid === false) return; // dropped
        packet[1] = { ...data, normalised: true };
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

/** A gateway on a RegExp namespace. */
@WebSocketGateway({ namespace: /^\/dyn-\w+$/ })
@WsRateLimit()
class DynamicGateway {
  @SubscribeMessage('hello')
  hello(@MessageBody() data: unknown) {
    return { event: 'hello', data };
  }
}

// --- Harness -------------------------------------------------------------------------

describe('socket.io namespace joins and session recovery: edges', () => {
  const { start, connect, client, manager, app, limiter, close } = ioHarness();
  /** CONNECT / CONNECT_ERROR packets the manager received for a namespace. */
  const answersOf = (made: Manager, nsp: string) => {
    const answers: number[] = [];
    (made as unknown as { on(event: 'packet', listener: (packet: { type: number; nsp: string }) => void): void }).on(
      'packet',
      (packet) => {
        if (packet.nsp === nsp && (packet.type === 0 || packet.type === 4)) answers.push(packet.type);
      },
    );
    return answers;
  };
  /** Open-connection slots in use for 127.0.0.1. */
  const slotsUsed = async () => {
    const [, concurrency] = await limiter().connectionStatus('127.0.0.1');
    return concurrency!.limit - concurrency!.remaining;
  };
  const stats = () => limiter().stats();

  afterEach(close);

  describe.each(ENGINE_TRANSPORTS)('joins of one namespace in flight together over %s', (transport) => {
    it('two joins of a namespace sent before either connects: the second is charged as a join again', async () => {
      const url = await start([RootGateway, SlowAuthGateway], {
        connection: { capacity: 100, refillRate: 100 },
        maxConnectionsPerIp: 4,
      });
      const made = manager(url, transport);
      expect(await joined(made.socket('/', {}))).toBe('connected');
      const answers = answersOf(made, '/slow-auth');
      const slow = made.socket('/slow-auth', {});
      // A client retrying its connect before the (slow) answer: two CONNECT packets.
      slow.connect();
      slow.connect();
      await waitFor(() => answers.length === 2, 10_000, 'both joins answered');
      const namespace = app().get(SlowAuthGateway).namespace;
      const sockets = namespace.sockets.size;
      // Each socket beyond the first on this Engine.IO connection is a join again: one slot each.
      expect({ sockets, slotsUsed: await slotsUsed(), tracked: stats().connections }).toEqual({
        sockets: 2,
        slotsUsed: 2,
        tracked: 3,
      });
    });

    it('a join again still pending is not given back by the next attempt: each holds a slot', async () => {
      const url = await start([RootGateway, SlowAuthGateway], {
        connection: { capacity: 100, refillRate: 100 },
        maxConnectionsPerIp: 4,
      });
      const made = manager(url, transport);
      expect(await joined(made.socket('/', {}))).toBe('connected');
      const slow = made.socket('/slow-auth', {});
      expect(await joined(slow)).toBe('connected');
      const namespace = app().get(SlowAuthGateway).namespace;
      // Leave the namespace (the root socket keeps the Engine.IO connection).
      slow.disconnect();
      await waitFor(() => namespace.sockets.size === 0, 10_000, 'the leave');
      expect(await slotsUsed()).toBe(1);

      const answers = answersOf(made, '/slow-auth');
      // Join again, twice before the first is answered (the app's middleware takes 200 ms).
      slow.connect();
      slow.connect();
      await waitFor(() => answers.length === 2, 10_000, 'both joins again answered');
      const rejoinsConnected = namespace.sockets.size;
      // The Engine.IO connection's slot, plus one per join again that holds.
      expect({ rejoinsConnected, slotsUsed: await slotsUsed() }).toEqual({
        rejoinsConnected: 2,
        slotsUsed: 1 + rejoinsConnected,
      });
    });

    it('control: a join again one at a time holds one slot until it leaves', async () => {
      const url = await start([RootGateway, SlowAuthGateway], {
        connection: { capacity: 100, refillRate: 100 },
        maxConnectionsPerIp: 4,
      });
      const made = manager(url, transport);
      expect(await joined(made.socket('/', {}))).toBe('connected');
      const slow = made.socket('/slow-auth', {});
      expect(await joined(slow)).toBe('connected');
      const namespace = app().get(SlowAuthGateway).namespace;
      slow.disconnect();
      await waitFor(() => namespace.sockets.size === 0, 10_000, 'the leave');
      expect(await joined(slow)).toBe('connected');
      slow.disconnect();
      await waitFor(() => namespace.sockets.size === 0, 10_000, 'the second leave');
      await waitFor(() => stats().connections === 1, 10_000, 'the rejoin record freed');
      expect(await slotsUsed()).toBe(1);
    });
  });

  describe.each(ENGINE_TRANSPORTS)('connectionStateRecovery as a gateway option over %s', (transport) => {
    it('connectionStateRecovery: false leaves recovery off (no session id handed out)', async () => {
      const url = await start([RecoveryOffGateway]);
      const made = await connect(url, transport);
      expect((made.socket as unknown as { _pid?: string })._pid).toBeUndefined();
    });

    it('connectionStateRecovery: null leaves recovery off (no session id handed out)', async () => {
      const url = await start([RecoveryNullGateway]);
      const made = await connect(url, transport);
      expect((made.socket as unknown as { _pid?: string })._pid).toBeUndefined();
    });

    it("connectionStateRecovery: {} keeps recovery on, and a refused connection's recovery is refused", async () => {
      const url = await start([RecoveryEmptyGateway], {
        connection: { capacity: 1, refillRate: 0.001 },
        connectionRefusal: 'close',
      });
      const first = await connect(url, transport);
      first.socket.emit('broadcast', 'hi');
      await first.until(() => first.of('news').length === 1 && first.of('sent').length === 1);
      const { _pid: pid, _lastOffset: offset } = first.socket as unknown as { _pid?: string; _lastOffset?: string };
      expect(typeof pid).toBe('string');
      first.socket.io.engine.close();
      await first.disconnected();
      await waitFor(() => stats().connections === 0, 10_000, 'the lost connection freed');
      const refused = client(url, transport, { auth: { pid, offset } });
      expect(
        await refused.connected().then(
          () => 'connected',
          (error: Error) => error.message,
        ),
      ).toBe('Connection rate limit exceeded');
    });
  });

  describe.each(ENGINE_TRANSPORTS)('an app middleware that drops and replaces events over %s', (transport) => {
    it('a refusal goes to its own ack, the dropped event gets nothing, later answers flow', async () => {
      const url = await start([DroppingGateway]);
      const asker = await connect(url, transport);
      const droppedAcks: unknown[] = [];
      // Dropped by the app middleware: its slot is the oldest of `ask`.
      asker.socket.emit('ask', { id: 0, valid: false }, (answer: unknown) => droppedAcks.push(answer));
      expect(await asker.socket.timeout(10_000).emitWithAck('ask', { id: 1 })).toEqual({
        answer: { id: 1, normalised: true },
      });
      asker.socket.emit('ask', { id: 5, valid: false }, (answer: unknown) => droppedAcks.push(answer));
      const refused: unknown = await asker.socket.timeout(10_000).emitWithAck('ask', { id: 2 });
      expect(refused).toEqual({
        event: 'rate_limit',
        data: expect.objectContaining({ code: 'TYPE_LIMIT', messageType: 'ask', id: 2 }),
      });
      const third: unknown = await asker.socket.timeout(10_000).emitWithAck('ask', { id: 3 });
      expect(third).toEqual({
        event: 'rate_limit',
        data: expect.objectContaining({ code: 'TYPE_LIMIT', id: 3 }),
      });
      expect({ droppedAcks, events: asker.of('rate_limit') }).toEqual({ droppedAcks: [], events: [] });
    });
  });

  describe.each(ENGINE_TRANSPORTS)('RegExp children over %s', (transport) => {
    it('a join again of a RegExp child takes one slot (not two), and its leave gives it back', async () => {
      const url = await start([RootGateway, DynamicGateway], {
        connection: { capacity: 100, refillRate: 100 },
        maxConnectionsPerIp: 3,
      });
      const made = manager(url, transport);
      expect(await joined(made.socket('/', {}))).toBe('connected');
      const dyn = made.socket('/dyn-a', {});
      expect(await joined(dyn)).toBe('connected');
      dyn.disconnect();
      await waitFor(() => stats().connections === 1, 10_000, 'the leave');
      expect(await joined(dyn)).toBe('connected');
      expect(await slotsUsed()).toBe(2);
      dyn.disconnect();
      await waitFor(() => stats().connections === 1, 10_000, 'the second leave');
      expect(await slotsUsed()).toBe(1);
    });
  });
});
