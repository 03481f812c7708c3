/**
 * socket.io end to end as a user runs it (an adversarial review): acks and events past the
 * threshold, room broadcasts during a flood, namespaces (static and dynamic), the operator
 * API, named plans, degradation, shadow mode, a flood across the polling-to-websocket
 * upgrade, and the package's client over socket.io-client. Three cases failed before their
 * fixes: a socket the application's own connection listener turned away was counted open for
 * ever once handleConnection read its status (both transports; the socket.io transport could
 * not tell a closed socket); a RateLimitedClient closed while connecting over long polling
 * left a server session holding the address's open-connection slot until the ping timeout.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway, WebSocketServer } from '@nestjs/websockets';
import type { Namespace, Server, Socket } from 'socket.io';
import { io } from 'socket.io-client';
import {
  RateLimitedClient,
  isSocketIoAck,
  socketIoFactory,
  type RateLimitNotice,
  type UndeliveredEvent,
} from '../../../lib/client/index.js';
import { Throttle, WsRateLimit, WsRateLimitService } from '../../../lib/index.js';
import { ioHarness, joined } from '../../support/io-harness.js';
import { ENGINE_TRANSPORTS, IoTestClient, waitFor } from '../../support/io-client.js';

/** What each handler ran with, per event, counted on the server. */
const ran = new Map<string, unknown[]>();
function note(event: string, data: unknown): void {
  ran.set(event, [...(ran.get(event) ?? []), data]);
}

/** The socket.io server of the running app, and what the app's own hooks saw. */
let ioServer: Server | undefined;
const seen = { statusErrors: 0, statusCalls: 0 };

/** Root gateway: chat (event reply), ask (ack reply), essential receipt, room broadcasts. */
@WebSocketGateway()
@WsRateLimit()
class E2eRootGateway {
  @WebSocketServer() server!: Server;

  afterInit(server: Server): void {
    ioServer = server;
    // The app turns some clients away in its own connection listener (before the gateway's).
    server.on('connection', (socket) => {
      if ((socket.handshake.auth as { kick?: boolean }).kick === true) socket.disconnect(true);
    });
  }

  /** A gateway welcoming each client with its budget (the article's get_limits). */
  constructor(private readonly limiter: WsRateLimitService) {}

  async handleConnection(client: Socket): Promise<void> {
    if ((client.handshake.auth as { status?: boolean }).status !== true) return;
    seen.statusCalls++;
    try {
      const status = await this.limiter.status(client);
      client.emit('limits', status.global);
    } catch {
      seen.statusErrors++;
    }
  }

  @Throttle({ type: 'chat', capacity: 5, refillRate: 0.01 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    note('chat', data);
    return { event: 'ack', data };
  }

  @Throttle({ type: 'ask', capacity: 3, refillRate: 0.01 })
  @SubscribeMessage('ask')
  ask(@MessageBody() data: unknown) {
    note('ask', data);
    return { answer: data };
  }

  @Throttle({ type: 'receipt', capacity: 50, refillRate: 0.01, essential: true })
  @SubscribeMessage('receipt')
  receipt(@MessageBody() data: unknown) {
    note('receipt', data);
    return { receipt: data };
  }

  @Throttle({ type: 'quick', capacity: 2, refillRate: 2 })
  @SubscribeMessage('quick')
  quick(@MessageBody() data: unknown) {
    note('quick', data);
    return { quick: data };
  }

  @Throttle({ type: 'join', capacity: 50, refillRate: 0.01 })
  @SubscribeMessage('join')
  join(@ConnectedSocket() socket: Socket, @MessageBody() room: string) {
    void socket.join(room);
    return { joined: room };
  }

  @Throttle({ type: 'say', capacity: 4, refillRate: 0.01 })
  @SubscribeMessage('say')
  say(@MessageBody() data: { room: string; n: number }) {
    note('say', data);
    this.server.to(data.room).emit('said', data.n);
    return { said: data.n };
  }
}

/** A gateway on its own namespace: its own figures for its own types. */
@WebSocketGateway({ namespace: '/side' })
@WsRateLimit()
class E2eSideGateway {
  @Throttle({ type: 'side', capacity: 4, refillRate: 0.01 })
  @SubscribeMessage('side')
  side(@MessageBody() data: unknown) {
    note('side', data);
    return { side: data };
  }
}

/** A gateway on a RegExp namespace (one child per board). */
@WebSocketGateway({ namespace: /^\/board-\d+$/ })
@WsRateLimit()
class E2eBoardGateway {
  @Throttle({ type: 'post', capacity: 2, refillRate: 0.01 })
  @SubscribeMessage('post')
  post(@ConnectedSocket() socket: Socket, @MessageBody() data: unknown) {
    note('post', data);
    return { post: data, nsp: socket.nsp.name };
  }
}

const GATEWAYS = [E2eRootGateway, E2eSideGateway, E2eBoardGateway];

/** Emits with an acknowledgement; resolves with the answer (or the error's message). */
function ask(socket: IoTestClient['socket'], event: string, data: unknown, ms = 15_000): Promise<unknown> {
  return new Promise((resolve) => {
    socket.timeout(ms).emit(event, data, (error: Error | null, answer?: unknown) => {
      resolve(error ? `error: ${error.message}` : answer);
    });
  });
}

const isRefusal = (answer: unknown): answer is { event: 'rate_limit'; data: Record<string, unknown> } =>
  typeof answer === 'object' && answer !== null && (answer as { event?: unknown }).event === 'rate_limit';

describe('socket.io end to end (review)', () => {
  const harness = ioHarness();
  const rlClients: RateLimitedClient[] = [];

  afterEach(async () => {
    for (const client of rlClients.splice(0)) client.close();
    await harness.close();
    ran.clear();
    seen.statusCalls = 0;
    seen.statusErrors = 0;
    ioServer = undefined;
  });

  describe.each(ENGINE_TRANSPORTS)('over %s', (transport) => {
    it('a client the app turned away in its connection listener is not counted once handleConnection reads its status', async () => {
      const url = await harness.start(GATEWAYS);
      const stats = () => harness.limiter().stats();
      const kicked = harness.client(url, transport, { auth: { kick: true, status: true } });
      await kicked.disconnected();
      await waitFor(() => seen.statusCalls === 1, 10_000, 'handleConnection');
      await waitFor(() => ioServer!.engine.clientsCount === 0, 10_000, 'the Engine.IO connection to close');
      const kept = await harness.connect(url, transport);
      kept.socket.emit('chat', 'x');
      await kept.until(() => kept.of('ack').length === 1);
      // One socket is open: the turned-away one must not be counted.
      await waitFor(() => stats().connections === 1, 3_000, 'one tracked connection').catch(() => undefined);
      expect(stats().connections).toBe(1);
      kept.close();
      await waitFor(() => stats().connections === 0, 3_000, 'no tracked connection').catch(() => undefined);
      expect(stats().connections).toBe(0);
    });

    it('acked and unacked events interleaved past the threshold: every admitted one answered, every refused one answered once, in order, then the disconnect', async () => {
      const url = await harness.start(GATEWAYS, { violations: { max: 4, windowMs: 60_000 } });
      const client = await harness.connect(url, transport);
      const order: string[] = [];
      client.socket.onAny((event: string, data: unknown) => {
        if (event === 'ack') order.push(`ack:${String(data)}`);
        if (event === 'rate_limit') order.push(`rl:${String((data as { id?: unknown }).id)}`);
        if (event === 'rate_limit_disconnect') order.push('bye');
      });
      const answers: Array<Promise<unknown>> = [];
      for (let i = 0; i < 6; i++) {
        client.socket.emit('chat', i);
        answers.push(
          new Promise((resolve) => {
            client.socket.timeout(15_000).emit('ask', { id: 100 + i }, (error: Error | null, answer?: unknown) => {
              // Recorded as it arrives (not a microtask later), beside the events.
              if (error) order.push(`ask-error:${100 + i}`);
              else order.push(isRefusal(answer) ? `ask-rl:${String(answer.data.id)}` : `ask:${JSON.stringify(answer)}`);
              resolve(answer);
            });
          }),
        );
      }
      await client.disconnected();
      await Promise.all(answers);
      // Sent: chat0, ask100, chat1, ask101, ... chat5, ask105. Admitted: chats 0-4, asks 100-102.
      // Refused: ask103 (1), ask104 (2), chat5 (3), ask105 (4, the threshold).
      expect(order).toEqual([
        'ack:0',
        'ask:{"answer":{"id":100}}',
        'ack:1',
        'ask:{"answer":{"id":101}}',
        'ack:2',
        'ask:{"answer":{"id":102}}',
        'ack:3',
        'ask-rl:103',
        'ack:4',
        'ask-rl:104',
        'rl:undefined',
        'ask-rl:105',
        'bye',
      ]);
      expect(client.disconnectReason).toBe('io server disconnect');
    });

    it('a room broadcast flood reaches the listeners exactly as admitted and leaves their own budgets alone', async () => {
      const url = await harness.start(GATEWAYS);
      const speaker = await harness.connect(url, transport);
      const listeners = [await harness.connect(url, transport), await harness.connect(url, transport)];
      for (const client of [speaker, ...listeners]) {
        expect(await ask(client.socket, 'join', 'lobby')).toEqual({ joined: 'lobby' });
      }
      const answers = await Promise.all(
        Array.from({ length: 30 }, (_, n) => ask(speaker.socket, 'say', { room: 'lobby', n, id: n })),
      );
      expect(answers.filter((answer) => !isRefusal(answer))).toEqual([0, 1, 2, 3].map((n) => ({ said: n })));
      expect(answers.filter(isRefusal).map((answer) => answer.data.id)).toEqual(
        Array.from({ length: 26 }, (_, i) => i + 4),
      );
      for (const listener of listeners) {
        await listener.until(() => listener.of('said').length >= 4);
        // The listener's own budget is whole: a broadcast is not its message.
        const mine = await Promise.all(Array.from({ length: 3 }, (_, i) => ask(listener.socket, 'ask', { id: i })));
        expect(mine.every((answer) => !isRefusal(answer))).toBe(true);
        expect(listener.of('said')).toEqual([0, 1, 2, 3]);
        expect(listener.of('rate_limit')).toEqual([]);
      }
      expect(speaker.socket.connected).toBe(true);
    });

    it('two namespaces on one Engine.IO connection: budgets, status and reset apply to the socket named, block to both', async () => {
      const url = await harness.start(GATEWAYS);
      const manager = harness.manager(url, transport);
      const root = manager.socket('/');
      const side = manager.socket('/side');
      expect(await joined(root)).toBe('connected');
      expect(await joined(side)).toBe('connected');
      const limiter = harness.limiter();
      const serverSocket = (name: string) => [...ioServer!.of(name).sockets.values()][0]!;

      const rootAnswers = await Promise.all(Array.from({ length: 5 }, (_, i) => ask(root, 'ask', { id: i })));
      expect(rootAnswers.filter(isRefusal)).toHaveLength(2);
      const rootStatus = await limiter.status(serverSocket('/'));
      const sideStatus = await limiter.status(serverSocket('/side'));
      expect(rootStatus.types.ask!.remaining).toBe(0);
      expect(sideStatus.types.ask!.remaining).toBe(3);
      expect(rootStatus.tracker).not.toBe(sideStatus.tracker);
      // The side namespace still has its own figures.
      const sideAnswers = await Promise.all(Array.from({ length: 5 }, (_, i) => ask(side, 'side', { id: i })));
      expect(sideAnswers.filter((answer) => !isRefusal(answer))).toHaveLength(4);
      expect(sideAnswers.filter(isRefusal)[0]).toMatchObject({ data: { code: 'TYPE_LIMIT', limit: 4 } });

      await limiter.reset(serverSocket('/'));
      expect(await ask(root, 'ask', { id: 10 })).toEqual({ answer: { id: 10 } });
      // The side socket was not reset.
      expect(isRefusal(await ask(side, 'side', { id: 11 }))).toBe(true);

      await limiter.block(serverSocket('/side'), 60_000);
      const blockedRoot = await ask(root, 'ask', { id: 12 });
      const blockedSide = await ask(side, 'side', { id: 13 });
      expect(blockedRoot).toMatchObject({ event: 'rate_limit', data: { code: 'BLOCKED', id: 12 } });
      expect(blockedSide).toMatchObject({ event: 'rate_limit', data: { code: 'BLOCKED', id: 13 } });
      await limiter.unblock('127.0.0.1');
      expect(await ask(root, 'ask', { id: 14 })).toEqual({ answer: { id: 14 } });
      root.disconnect();
      side.disconnect();
    });

    it('children of a RegExp namespace on one connection keep their own budgets', async () => {
      const url = await harness.start(GATEWAYS);
      const manager = harness.manager(url, transport);
      const one = manager.socket('/board-1');
      const two = manager.socket('/board-2');
      expect(await joined(one)).toBe('connected');
      expect(await joined(two)).toBe('connected');
      const first = await Promise.all(Array.from({ length: 4 }, (_, i) => ask(one, 'post', { id: i })));
      expect(first.filter((answer) => !isRefusal(answer))).toEqual([
        { post: { id: 0 }, nsp: '/board-1' },
        { post: { id: 1 }, nsp: '/board-1' },
      ]);
      const second = await Promise.all(Array.from({ length: 2 }, (_, i) => ask(two, 'post', { id: i })));
      expect(second).toEqual([
        { post: { id: 0 }, nsp: '/board-2' },
        { post: { id: 1 }, nsp: '/board-2' },
      ]);
      one.disconnect();
      two.disconnect();
    });

    it('degraded: an essential event is answered through its ack, others get DEGRADED through theirs', async () => {
      const url = await harness.start(GATEWAYS, {
        degradeCooldownMs: 60_000,
        violations: { max: 2, windowMs: 60_000 },
      });
      const client = await harness.connect(url, transport);
      const answers = await Promise.all(Array.from({ length: 5 }, (_, i) => ask(client.socket, 'ask', { id: i })));
      expect(answers.filter(isRefusal).map((answer) => answer.data.code)).toEqual(['TYPE_LIMIT', 'DEGRADED']);
      expect(await ask(client.socket, 'receipt', { id: 'r1' })).toEqual({ receipt: { id: 'r1' } });
      expect(await ask(client.socket, 'chat', { id: 'c1' })).toMatchObject({
        event: 'rate_limit',
        data: { code: 'DEGRADED', messageType: 'chat', id: 'c1' },
      });
      expect(ran.get('chat')).toBeUndefined();
      expect(client.socket.connected).toBe(true);
    });

    it('shadow mode: a flood of acknowledged events is answered by the handler every time', async () => {
      const url = await harness.start(GATEWAYS, { shadow: true, violations: { max: 2, windowMs: 60_000 } });
      const client = await harness.connect(url, transport);
      const answers = await Promise.all(Array.from({ length: 12 }, (_, i) => ask(client.socket, 'ask', { id: i })));
      expect(answers).toEqual(Array.from({ length: 12 }, (_, i) => ({ answer: { id: i } })));
      expect(client.of('rate_limit')).toEqual([]);
      expect(client.socket.connected).toBe(true);
    });

    it('named plans picked by planResolver from the socket.io handshake auth', async () => {
      const url = await harness.start(GATEWAYS, {
        plans: { gold: { types: { ask: { capacity: 7, refillRate: 0.01 } } } },
        planResolver: (client) => ((client as Socket).handshake?.auth as { plan?: string } | undefined)?.plan,
      });
      const gold = await harness.connect(url, transport, { auth: { plan: 'gold' } });
      const plain = await harness.connect(url, transport);
      const goldAnswers = await Promise.all(Array.from({ length: 9 }, (_, i) => ask(gold.socket, 'ask', { id: i })));
      const plainAnswers = await Promise.all(Array.from({ length: 9 }, (_, i) => ask(plain.socket, 'ask', { id: i })));
      expect(goldAnswers.filter((answer) => !isRefusal(answer))).toHaveLength(7);
      expect(plainAnswers.filter((answer) => !isRefusal(answer))).toHaveLength(3);
      expect(goldAnswers.filter(isRefusal)[0]).toMatchObject({ data: { limit: 7 } });
      const status = await harness
        .limiter()
        .status(
          [...ioServer!.of('/').sockets.values()].find(
            (socket) => (socket.handshake.auth as { plan?: string }).plan === 'gold',
          )!,
        );
      expect(status.plan).toBe('gold');
    });
  });

  describe('a flood across the polling -> websocket upgrade', () => {
    it('events without acks: each admitted once, each refused answered once with its id, in order', async () => {
      const url = await harness.start(GATEWAYS);
      // The WebSocket upgrade reaches the server 200 ms late, so that the flood starts on polling.
      const http = harness.app().getHttpServer() as import('node:http').Server;
      const upgrades = http.listeners('upgrade') as Array<(...args: unknown[]) => void>;
      http.removeAllListeners('upgrade');
      http.on('upgrade', (...args: unknown[]) => {
        setTimeout(() => {
          for (const listener of upgrades) listener.apply(http, args);
        }, 200);
      });
      const client = harness.client(url, 'polling', { transports: ['polling', 'websocket'], upgrade: true });
      await client.connected();
      const total = 40;
      const transports: string[] = [];
      for (let i = 0; i < total; i++) {
        transports.push(client.socket.io.engine.transport.name);
        client.socket.emit('chat', { id: i });
        await new Promise((done) => setTimeout(done, 10));
      }
      await client.until(() => client.of('ack').length + client.of('rate_limit').length >= total, 15_000, 'answers');
      await waitFor(() => client.socket.io.engine.transport.name === 'websocket', 10_000, 'the upgrade');
      await new Promise((resolve) => setTimeout(resolve, 100));
      // The flood began on polling and ended on websocket.
      expect(transports[0]).toBe('polling');
      expect(transports.at(-1)).toBe('websocket');
      expect(client.of('ack')).toEqual([0, 1, 2, 3, 4].map((id) => ({ id })));
      expect((client.of('rate_limit') as Array<{ id: number }>).map((info) => info.id)).toEqual(
        Array.from({ length: 35 }, (_, i) => i + 5),
      );
      expect(ran.get('chat')).toHaveLength(5);
    });

    it("RateLimitedClient on socket.io-client's default transports: a burst over the limit is delivered once each", async () => {
      const url = await harness.start(GATEWAYS);
      const client = new RateLimitedClient(url, {
        createSocket: socketIoFactory(io, {}),
        isAck: isSocketIoAck,
        // ask refills at 0.01/s: a slow pace would take minutes; one refill per message is fine.
        minPaceMs: 10,
      });
      rlClients.push(client);
      const replies: unknown[] = [];
      const notices: RateLimitNotice[] = [];
      const undelivered: UndeliveredEvent[] = [];
      client.on('message', (message) => replies.push(message));
      client.on('rateLimit', (notice) => notices.push(notice));
      client.on('undelivered', (event) => undelivered.push(event));
      await waitFor(() => client.state === 'open', 10_000, 'open');
      for (let seq = 0; seq < 3; seq++) expect(client.send('ask', { seq })).toBe(true);
      await waitFor(() => replies.length === 3, 10_000, '3 replies');
      // A fourth is refused (capacity 3, almost no refill) and queued, then sent again after retryAfter.
      expect(client.send('ask', { seq: 3 })).toBe(true);
      await waitFor(() => notices.length >= 1, 10_000, 'a refusal');
      expect(notices[0]).toMatchObject({
        code: 'TYPE_LIMIT',
        messageType: 'ask',
        message: { event: 'ask', data: { seq: 3 } },
      });
      expect(client.queued).toBe(1);
      expect(ran.get('ask')).toHaveLength(3);
      expect(undelivered).toEqual([]);
      expect(client.dropped).toBe(0);
    });
  });

  it.each([
    [
      'over long polling, a RateLimitedClient closed while connecting leaves no server session holding its open-connection slot',
      'polling',
    ],
    ['control: over websocket, a RateLimitedClient closed while connecting leaves no session', 'websocket'],
  ] as const)('%s', async (_title, transport) => {
    const url = await harness.start(GATEWAYS, { maxConnectionsPerIp: 1 });
    const client = new RateLimitedClient(url, { createSocket: socketIoFactory(io, { transports: [transport] }) });
    client.close();
    // The handshake was on its way: the server may open the session; it must then end soon.
    await new Promise((resolve) => setTimeout(resolve, 300));
    await waitFor(() => ioServer!.engine.clientsCount === 0, 3_000, 'no session').catch(() => undefined);
    const sessions = ioServer!.engine.clientsCount;
    // The user's next connection, under a cap of one open connection per address.
    const next = harness.client(url, transport);
    const outcome = await next.connected().then(
      () => 'connected',
      (error: Error) => error.message,
    );
    expect({ sessions, outcome }).toEqual({ sessions: 0, outcome: 'connected' });
  });

  describe.each(ENGINE_TRANSPORTS)('RateLimitedClient over socket.io (%s)', (transport) => {
    it('close() leaves no session on the server and no socket tracked', async () => {
      const url = await harness.start(GATEWAYS);
      const client = new RateLimitedClient(url, { createSocket: socketIoFactory(io, { transports: [transport] }) });
      rlClients.push(client);
      await waitFor(() => client.state === 'open', 10_000, 'open');
      client.send('chat', { seq: 1 });
      await waitFor(() => ran.get('chat')?.length === 1, 10_000, 'chat ran');
      expect(harness.limiter().stats().connections).toBe(1);
      client.close();
      await waitFor(() => ioServer!.engine.clientsCount === 0, 10_000, 'the session to end');
      await waitFor(() => harness.limiter().stats().connections === 0, 10_000, 'no tracked socket');
    });

    it('after the violations disconnect, requeued messages are delivered on the next connection, each processed once', async () => {
      const url = await harness.start(GATEWAYS, { violations: { max: 1, windowMs: 60_000 } });
      const client = new RateLimitedClient(url, {
        createSocket: socketIoFactory(io, { transports: [transport] }),
        isAck: isSocketIoAck,
        undelivered: 'requeue',
        policyDelayMs: 100,
        backoffBaseMs: 50,
        maxUnconfirmed: 8,
      });
      rlClients.push(client);
      const replies: Array<{ seq: number }> = [];
      const closes: number[] = [];
      const undelivered: UndeliveredEvent[] = [];
      client.on('message', (message) => {
        const reply = (message as { data?: { quick?: { seq: number } } }).data?.quick;
        if (reply) replies.push(reply);
      });
      client.on('reconnect', (event) => closes.push(event.code));
      client.on('undelivered', (event) => undelivered.push(event));
      await waitFor(() => client.state === 'open', 10_000, 'open');
      for (let seq = 0; seq < 8; seq++) expect(client.send('quick', { seq })).toBe(true);
      await waitFor(() => replies.length === 8, 30_000, '8 replies');
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(closes[0]).toBe(1008);
      expect(replies.map((reply) => reply.seq).sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
      const processed = (ran.get('quick') as Array<{ seq: number }>).map((data) => data.seq).sort((a, b) => a - b);
      expect(processed).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
      expect(client.dropped).toBe(0);
    }, 40_000);

    it('a flood to a namespace URL with rooms: each message processed once, refusals named', async () => {
      const url = await harness.start(GATEWAYS);
      const client = new RateLimitedClient(`${url}/side`, {
        createSocket: socketIoFactory(io, { transports: [transport] }),
        isAck: isSocketIoAck,
        limits: { types: { side: { capacity: 4, refillPerSecond: 0.01 } } },
      });
      rlClients.push(client);
      const replies: unknown[] = [];
      const notices: RateLimitNotice[] = [];
      client.on('message', (message) => replies.push(message));
      client.on('rateLimit', (notice) => notices.push(notice));
      await waitFor(() => client.state === 'open', 10_000, 'open');
      for (let seq = 0; seq < 6; seq++) client.send('side', { seq });
      await waitFor(() => replies.length === 4, 10_000, '4 replies');
      await new Promise((resolve) => setTimeout(resolve, 300));
      // Declared limits: the client never sends past them, so nothing is refused.
      expect(notices).toEqual([]);
      expect(ran.get('side')).toHaveLength(4);
      expect(client.queued).toBe(2);
    });
  });
});

export type { Namespace };
