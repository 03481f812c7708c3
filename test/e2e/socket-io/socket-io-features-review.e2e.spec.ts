/*
 * Adversarial review: socket.io as NestJS teams use it, behind `WsRateLimitIoAdapter`
 * ('nestjs-ws-rate-limit/socket.io': lib/socket-io.ts, lib/adapters/ws-rate-limit-io.adapter.ts,
 * lib/transports/socket-io-transport.ts). Several gateways on namespaces multiplexed over one
 * Engine.IO connection, connection state recovery, acknowledgements, catch-all listeners,
 * reserved event names, refusing middlewares (socket.io's and Engine.IO's `allowRequest`), on
 * WebSocket, long-polling and polling upgraded to WebSocket.
 *
 * 33 cases; 4 failed on 398cbb7 (three bugs), all fixed: catch-all listeners hear an event
 * once the limiter lets it through (the adapter keeps them from socket.io's own call); a
 * retried first join costs a connection-rate token (no slot); a routed event's id is its
 * first argument's. What failed:
 * - an application's `socket.onAny` catch-all runs for every event, refused ones and those
 *   after the violation disconnect decision included (socket.io calls it before `socket.use`);
 * - a namespace join refused by the application's auth middleware and retried on the same
 *   Engine.IO connection is never charged: unlimited token guesses for one handshake;
 * - a routed event with several arguments is refused with no `id`, while an event no handler
 *   takes, with the same arguments, names its first argument's `id` (minor).
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway, WebSocketServer } from '@nestjs/websockets';
import { Manager, type Socket as ClientSocket } from 'socket.io-client';
import type { Namespace, Server, Socket } from 'socket.io';
import { Throttle, WsRateLimit, type WsRateLimitModuleOptions } from '../../../lib/index.js';
import { ENGINE_TRANSPORTS, IoTestClient, waitFor, type EngineTransport } from '../../support/io-client.js';
import { ioHarness, joined } from '../../support/io-harness.js';
import { sleep } from '../../support/ws-client.js';
import { rawSession } from './raw-session.js';

// --- What the server saw ---------------------------------------------------------------

/** Handler runs, by `<namespace>:<event>`. */
const ran = new Map<string, number>();
const note = (key: string): void => void ran.set(key, (ran.get(key) ?? 0) + 1);
const runs = (key: string): number => ran.get(key) ?? 0;
/** What the application's catch-all (`socket.onAny`) listeners heard, by namespace. */
const heardAny: Array<{ nsp: string; event: string }> = [];
/** Sockets that connected, with socket.io's `recovered` flag. */
const connected: Array<{ nsp: string; id: string; recovered: boolean }> = [];

let chatNamespace: Namespace | undefined;
let rootServer: Server | undefined;

function reset(): void {
  ran.clear();
  heardAny.length = 0;
  connected.length = 0;
}

// --- Gateways --------------------------------------------------------------------------

/** `/chat`: replies as events and through acknowledgements, rooms, a catch-all listener. */
@WebSocketGateway({ namespace: '/chat' })
@WsRateLimit()
class ChatGateway {
  afterInit(namespace: Namespace): void {
    chatNamespace = namespace;
  }

  handleConnection(socket: Socket): void {
    connected.push({ nsp: socket.nsp.name, id: socket.id, recovered: socket.recovered });
    // An application's catch-all (audit log, metrics, a generic dispatcher).
    socket.onAny((event: string) => void heardAny.push({ nsp: socket.nsp.name, event }));
  }

  @Throttle({ type: 'chat', capacity: 3, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    note('/chat:chat');
    return { event: 'chat_ok', data };
  }

  /** Answers through the acknowledgement with its return value. */
  @Throttle({ type: 'ask', capacity: 2, refillRate: 0.001 })
  @SubscribeMessage('ask')
  ask(@MessageBody() data: unknown) {
    note('/chat:ask');
    return { answer: data };
  }

  /** Joins a room inside the handler. */
  @Throttle({ type: 'enter', capacity: 100, refillRate: 100 })
  @SubscribeMessage('enter')
  enter(@ConnectedSocket() socket: Socket, @MessageBody() room: string) {
    void socket.join(room);
    return { event: 'entered', data: room };
  }

  /** Broadcasts to a room from the handler (volatile too, as apps do for presence). */
  @Throttle({ type: 'shout', capacity: 2, refillRate: 0.001 })
  @SubscribeMessage('shout')
  shout(@ConnectedSocket() socket: Socket, @MessageBody() data: { room: string; text: string }) {
    note('/chat:shout');
    socket.to(data.room).emit('heard', data.text);
    socket.volatile.to(data.room).emit('presence', data.text);
    return { event: 'shouted', data: data.text };
  }
}

/** `/news`: a second namespaced gateway the same clients join beside `/chat`. */
@WebSocketGateway({ namespace: '/news' })
@WsRateLimit()
class NewsGateway {
  @Throttle({ type: 'news', capacity: 3, refillRate: 0.001 })
  @SubscribeMessage('news')
  news(@MessageBody() data: unknown) {
    note('/news:news');
    return { event: 'news_ok', data };
  }
}

/** `/vault`: a namespace guarded by the application's own auth middleware. */
@WebSocketGateway({ namespace: '/vault' })
@WsRateLimit()
class VaultGateway {
  afterInit(namespace: Namespace): void {
    namespace.use((socket, next) => {
      note('/vault:auth');
      if ((socket.handshake.auth as { token?: string }).token === 'ok') return next();
      next(new Error('auth'));
    });
  }

  @SubscribeMessage('secret')
  secret() {
    return { event: 'secret', data: 42 };
  }
}

/** The root namespace with socket.io's connection state recovery (socket.io >= 4.6). */
@WebSocketGateway({ connectionStateRecovery: { maxDisconnectionDuration: 60_000 } })
@WsRateLimit()
class RecoveryGateway {
  @WebSocketServer() server!: Server;

  afterInit(server: Server): void {
    rootServer = server;
  }

  handleConnection(socket: Socket): void {
    connected.push({ nsp: socket.nsp.name, id: socket.id, recovered: socket.recovered });
    void socket.join('everyone');
  }

  @Throttle({ type: 'chat', capacity: 3, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    note('/:chat');
    return { event: 'chat_ok', data };
  }

  /** Broadcasts to every socket (a recovering client gets it replayed). */
  @Throttle({ type: 'announce', capacity: 100, refillRate: 100 })
  @SubscribeMessage('announce')
  announce(@MessageBody() data: unknown) {
    this.server.to('everyone').emit('announcement', data);
    return { event: 'announced', data };
  }
}

/** Engine.IO's `allowRequest` (CORS or an auth check at the handshake) refusing some. */
@WebSocketGateway({
  allowRequest: (request: { url?: string }, callback: (error: string | null, ok: boolean) => void) =>
    callback(null, !(request.url ?? '').includes('reject=1')),
})
@WsRateLimit()
class AllowRequestGateway {
  @SubscribeMessage('hello')
  hello(@MessageBody() data: unknown) {
    return { event: 'hello', data };
  }
}

// --- Helpers ---------------------------------------------------------------------------

/** How a test's clients reach the server: one transport, or polling upgraded to WebSocket. */
type Mode = EngineTransport | 'upgrade';
const MODES: readonly Mode[] = [...ENGINE_TRANSPORTS, 'upgrade'];

function managerOptions(mode: Mode): Record<string, unknown> {
  return mode === 'upgrade'
    ? { transports: ['polling', 'websocket'], upgrade: true }
    : { transports: [mode], upgrade: false };
}

/** Records every event a namespace socket receives, and how it ended. */
interface Recorded {
  readonly socket: ClientSocket;
  readonly events: Array<{ event: string; data: unknown }>;
  disconnectReason?: string;
  of(event: string): unknown[];
}

function record(socket: ClientSocket): Recorded {
  const recorded: Recorded = {
    socket,
    events: [],
    of: (event) => recorded.events.filter((entry) => entry.event === event).map((entry) => entry.data),
  };
  socket.onAny((event: string, data: unknown) => void recorded.events.push({ event, data }));
  socket.on('disconnect', (reason) => (recorded.disconnectReason = reason));
  return recorded;
}

/** Emits with an acknowledgement and a timeout: the answer, or `error: <message>`. */
function ask(socket: ClientSocket, event: string, ...args: unknown[]): Promise<unknown> {
  return socket
    .timeout(15_000)
    .emitWithAck(event, ...args)
    .then(
      (answer: unknown) => answer,
      (error: Error) => `error: ${error.message}`,
    );
}

/** Whether a new connection is admitted now: `'connected'` or the connect_error's message. */
function outcome(client: IoTestClient): Promise<string> {
  return client.connected().then(
    () => 'connected',
    (error: Error) => error.message,
  );
}

describe('socket.io features NestJS apps use, behind WsRateLimitIoAdapter (review)', () => {
  const harness = ioHarness();
  const managers: Manager[] = [];
  const faults: unknown[] = [];
  const onFault = (error: unknown): void => void faults.push(error);

  const start = async (gateways: object[], options: WsRateLimitModuleOptions = {}): Promise<string> => {
    reset();
    faults.length = 0;
    process.on('uncaughtException', onFault);
    process.on('unhandledRejection', onFault);
    return harness.start(gateways, options);
  };
  const stats = () => harness.limiter().stats();
  /**
   * A client whose connection ends in `expected` (its namespace join's outcome) once the
   * open-connection cap lets its handshake in: attempts refused at the handshake (the slot
   * of a connection that just closed not given back yet) are retried, for up to 10 s
   * (a slot never given back fails).
   */
  const admittedWithin = async (
    url: string,
    transport: EngineTransport,
    options: Record<string, unknown> = {},
    expected = 'connected',
  ): Promise<IoTestClient> => {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const attempt = harness.client(url, transport, options);
      const result = await outcome(attempt);
      if (result === expected) return attempt;
      attempt.close();
      if (Date.now() > deadline) throw new Error(`not admitted within 10 s: last outcome ${result}`);
      await sleep(50);
    }
  };
  /** An Engine.IO connection (kept for clean-up) whose namespace sockets the test connects. */
  const manager = (url: string, mode: Mode, options: Record<string, unknown> = {}): Manager => {
    const made = new Manager(url, {
      autoConnect: false,
      reconnection: false,
      forceNew: true,
      timeout: 10_000,
      ...managerOptions(mode),
      ...options,
    });
    managers.push(made);
    return made;
  };
  /** Connects `/chat` and `/news` over one Engine.IO connection. */
  const multiplexed = async (url: string, mode: Mode) => {
    const made = manager(url, mode);
    const chat = record(made.socket('/chat'));
    const news = record(made.socket('/news'));
    expect(await Promise.all([joined(chat.socket), joined(news.socket)])).toEqual(['connected', 'connected']);
    if (mode === 'upgrade') {
      await waitFor(() => made.engine.transport.name === 'websocket', 10_000, 'the upgrade to websocket');
    }
    return { made, chat, news };
  };

  afterEach(async () => {
    for (const made of managers.splice(0)) {
      for (const socket of Object.values((made as unknown as { nsps: Record<string, ClientSocket> }).nsps)) {
        socket.disconnect();
      }
      made.engine?.close();
    }
    await sleep(50);
    await harness.close();
    process.off('uncaughtException', onFault);
    process.off('unhandledRejection', onFault);
    expect(faults).toEqual([]);
  });

  // --- Several namespaces over one Engine.IO connection ------------------------------

  describe.each(MODES)('two namespaced gateways multiplexed over one connection (%s)', (mode) => {
    it('one open-connection slot for both; each refusal reaches the namespace it belongs to; budgets apart', async () => {
      const url = await start([ChatGateway, NewsGateway], { maxConnectionsPerIp: 1 });
      const { chat, news } = await multiplexed(url, mode);
      expect(stats().connections).toBe(2);
      // The cap is the Engine.IO connection's: a second connection is refused.
      const second = harness.client(`${url}/news`, mode === 'polling' ? 'polling' : 'websocket');
      expect(await outcome(second)).not.toBe('connected');

      for (let id = 0; id < 5; id++) chat.socket.emit('chat', { id });
      for (let id = 10; id < 13; id++) news.socket.emit('news', { id });
      await waitFor(() => chat.of('rate_limit').length === 2 && news.of('news_ok').length === 3, 10_000, 'answers');
      await sleep(100);
      expect(chat.of('chat_ok')).toEqual([{ id: 0 }, { id: 1 }, { id: 2 }]);
      expect(chat.of('rate_limit')).toEqual([
        expect.objectContaining({ code: 'TYPE_LIMIT', messageType: 'chat', id: 3 }),
        expect.objectContaining({ code: 'TYPE_LIMIT', messageType: 'chat', id: 4 }),
      ]);
      // /news spent its own budget only, and heard nothing of /chat's refusals.
      expect(news.of('news_ok')).toEqual([{ id: 10 }, { id: 11 }, { id: 12 }]);
      expect(news.of('rate_limit')).toEqual([]);
      expect([runs('/chat:chat'), runs('/news:news')]).toEqual([3, 3]);
    });

    it('the violation disconnect on /chat ends /news too (told why), the whole connection goes and its slot comes back', async () => {
      const url = await start([ChatGateway, NewsGateway], {
        maxConnectionsPerIp: 1,
        violations: { max: 3, windowMs: 60_000 },
      });
      const { made, chat, news } = await multiplexed(url, mode);
      for (let id = 0; id < 6; id++) chat.socket.emit('chat', { id });
      await waitFor(
        () => chat.disconnectReason !== undefined && news.disconnectReason !== undefined,
        10_000,
        'both namespaces disconnected',
      );
      expect(chat.of('rate_limit')).toHaveLength(3);
      for (const side of [chat, news]) {
        expect(side.of('rate_limit_disconnect')).toEqual([{ code: 1008, reason: 'Rate limit violations' }]);
        expect(side.disconnectReason).toBe('io server disconnect');
      }
      await waitFor(() => made.engine.readyState === 'closed', 10_000, 'the Engine.IO connection to close');
      await waitFor(() => stats().connections === 0, 10_000, 'the sockets freed');
      // The slot came back with the Engine.IO connection: a new one is admitted under a cap of 1.
      await admittedWithin(`${url}/news`, mode === 'polling' ? 'polling' : 'websocket');
    });

    it('after the violation disconnect a client with reconnection on does not come back; acks of later events reject at the disconnect', async () => {
      const url = await start([ChatGateway, NewsGateway], { violations: { max: 2, windowMs: 60_000 } });
      const made = manager(url, mode, { reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 200 });
      const chat = record(made.socket('/chat'));
      const news = record(made.socket('/news'));
      expect(await Promise.all([joined(chat.socket), joined(news.socket)])).toEqual(['connected', 'connected']);
      const answers = [0, 1, 2, 3, 4, 5].map((id) => ask(chat.socket, 'ask', { id }));
      const late = ask(news.socket, 'news', { id: 'late' });
      const settled = await Promise.all([...answers, late]);
      // 2 answered, 2 refused through their acks (the 2nd refusal is the threshold), the rest
      // not processed: their acks fail with the disconnect instead of waiting for the timeout.
      expect(settled.slice(0, 2)).toEqual([{ answer: { id: 0 } }, { answer: { id: 1 } }]);
      expect(settled.slice(2, 4)).toEqual([
        expect.objectContaining({ event: 'rate_limit' }),
        expect.objectContaining({ event: 'rate_limit' }),
      ]);
      for (const answer of settled.slice(4, 6)) expect(answer).toBe('error: socket has been disconnected');
      expect(chat.disconnectReason).toBe('io server disconnect');
      expect(news.disconnectReason).toBe('io server disconnect');
      const joinsBefore = connected.length;
      // Reconnection would take 100-200 ms: nothing comes back within 2 s.
      await sleep(2000);
      expect(connected.length).toBe(joinsBefore);
      expect(made.engine.readyState).toBe('closed');
      expect(stats().connections).toBe(0);
    });

    it('a room broadcast and a volatile broadcast from a handler reach the room as admitted; listeners are charged nothing', async () => {
      const url = await start([ChatGateway, NewsGateway], {
        maxConnectionsPerIp: 5,
        global: { capacity: 1000, refillRate: 0.001 },
      });
      const speaker = (await multiplexed(url, mode)).chat;
      const listener = record(manager(url, mode).socket('/chat'));
      expect(await joined(listener.socket)).toBe('connected');
      for (const side of [speaker, listener]) side.socket.emit('enter', 'lobby');
      await waitFor(() => speaker.of('entered').length === 1 && listener.of('entered').length === 1);
      for (let i = 0; i < 4; i++) speaker.socket.emit('shout', { room: 'lobby', text: `t${i}`, id: i });
      await waitFor(() => speaker.of('rate_limit').length === 2 && listener.of('heard').length === 2);
      await sleep(150);
      expect(listener.of('heard')).toEqual(['t0', 't1']);
      expect(listener.of('rate_limit')).toEqual([]);
      expect(runs('/chat:shout')).toBe(2);
      const listenerServerSocket = chatNamespace!.sockets.get(listener.socket.id!);
      expect(listenerServerSocket).toBeDefined();
      // Only its own 'enter' was charged.
      expect((await harness.limiter().status(listenerServerSocket!)).global.remaining).toBe(999);
    });
  });

  it.each(ENGINE_TRANSPORTS)(
    "tracker 'ip': two connections' /chat sockets share the address's type budget, /news keeps its own, violations stay per socket (%s)",
    async (transport) => {
      const url = await start([ChatGateway, NewsGateway], { tracker: 'ip', violations: { max: 2, windowMs: 60_000 } });
      const first = await multiplexed(url, transport);
      const second = record(manager(url, transport).socket('/chat'));
      expect(await joined(second.socket)).toBe('connected');
      for (let id = 0; id < 2; id++) first.chat.socket.emit('chat', { id });
      await waitFor(() => first.chat.of('chat_ok').length === 2);
      for (let id = 2; id < 4; id++) second.socket.emit('chat', { id });
      await waitFor(() => second.of('chat_ok').length + second.of('rate_limit').length === 2);
      expect(second.of('chat_ok')).toEqual([{ id: 2 }]);
      expect(second.of('rate_limit')).toEqual([expect.objectContaining({ code: 'TYPE_LIMIT', id: 3 })]);
      // /news: a type of its own.
      first.news.socket.emit('news', { id: 'n' });
      await waitFor(() => first.news.of('news_ok').length === 1);
      // One violation each: neither socket reached the threshold of 2.
      first.chat.socket.emit('chat', { id: 4 });
      await waitFor(() => first.chat.of('rate_limit').length === 1);
      await sleep(100);
      expect([first.chat.disconnectReason, second.disconnectReason]).toEqual([undefined, undefined]);
    },
  );

  // --- Catch-all listeners -------------------------------------------------------------

  it.each(ENGINE_TRANSPORTS)(
    "an app's catch-all listener (socket.onAny) hears only the events the limiter let through (it was: refused ones and those after the disconnect decision too) (%s)",
    async (transport) => {
      const url = await start([ChatGateway, NewsGateway], {
        global: { capacity: 6, refillRate: 0.001 },
        violations: { max: 4, windowMs: 60_000 },
      });
      const chat = record(manager(url, transport).socket('/chat'));
      expect(await joined(chat.socket)).toBe('connected');
      // chats 0-2 admitted, 3-4 refused (TYPE_LIMIT: they spend no global token); unknown
      // events 5-7 admitted (global 6 spent), 8 and 9 refused (GLOBAL_LIMIT, the 4th violation
      // is the threshold), 10-11 after the disconnect decision: not processed.
      for (let id = 0; id < 5; id++) chat.socket.emit('chat', { id });
      for (let id = 5; id < 12; id++) chat.socket.emit('whatever', { id });
      await waitFor(() => chat.disconnectReason !== undefined, 10_000, 'the violation disconnect');
      await sleep(200);
      expect(chat.of('chat_ok')).toHaveLength(3);
      expect((chat.of('rate_limit') as Array<{ id: number }>).map((info) => info.id)).toEqual([3, 4, 8, 9]);
      // What the application's catch-all heard should be what the limiter let through, as for
      // its `socket.on` listeners: refused events and those after the decision are not processed.
      expect(heardAny.filter((entry) => entry.nsp === '/chat').map((entry) => entry.event)).toEqual([
        'chat',
        'chat',
        'chat',
        'whatever',
        'whatever',
        'whatever',
      ]);
    },
  );

  // --- Acknowledgements ---------------------------------------------------------------

  it.each(ENGINE_TRANSPORTS)(
    'emitWithAck with a timeout: return values, then the refusal as the ack answer (no rate_limit event); several arguments too (%s)',
    async (transport) => {
      const url = await start([ChatGateway, NewsGateway]);
      const chat = record(manager(url, transport).socket('/chat'));
      expect(await joined(chat.socket)).toBe('connected');
      expect(await ask(chat.socket, 'ask', { id: 1 })).toEqual({ answer: { id: 1 } });
      // Several arguments: the handler gets them as an array.
      expect(await ask(chat.socket, 'ask', { id: 2 }, 'two', 3)).toEqual({ answer: [{ id: 2 }, 'two', 3] });
      const refusedOne = await ask(chat.socket, 'ask', { id: 3 });
      const refusedMany = await ask(chat.socket, 'ask', { id: 4 }, 'two', 3);
      expect(refusedOne).toEqual({
        event: 'rate_limit',
        data: expect.objectContaining({ code: 'TYPE_LIMIT', messageType: 'ask', id: 3 }),
      });
      expect(refusedMany).toEqual({
        event: 'rate_limit',
        data: expect.objectContaining({ code: 'TYPE_LIMIT', messageType: 'ask' }),
      });
      await sleep(100);
      expect(chat.of('rate_limit')).toEqual([]);
      expect(runs('/chat:ask')).toBe(2);
    },
  );

  it("a refused routed event sent with several arguments names its first argument's id, as an unknown one does (it was none)", async () => {
    const url = await start([ChatGateway, NewsGateway], { global: { capacity: 3, refillRate: 0.001 } });
    const chat = record(manager(url, 'websocket').socket('/chat'));
    expect(await joined(chat.socket)).toBe('connected');
    for (let id = 0; id < 3; id++) chat.socket.emit('chat', { id });
    await waitFor(() => chat.of('chat_ok').length === 3);
    chat.socket.emit('chat', { id: 7 }, 'second');
    chat.socket.emit('nobody', { id: 8 }, 'second');
    await waitFor(() => chat.of('rate_limit').length === 2);
    const ids = (chat.of('rate_limit') as Array<{ id?: unknown }>).map((info) => info.id);
    expect(ids).toEqual([7, 8]);
  });

  // --- Connection state recovery ------------------------------------------------------

  it.each(ENGINE_TRANSPORTS)(
    'a recovered session: counted once, fresh budgets (its state was freed), buffered emits limited, missed broadcasts replayed uncharged (%s)',
    async (transport) => {
      const url = await start([RecoveryGateway], {
        maxConnectionsPerIp: 2,
        connection: { capacity: 10, refillRate: 0.001 },
        global: { capacity: 1000, refillRate: 0.001 },
      });
      const observer = await harness.connect(url, transport);
      const client = harness.client(url, transport, {
        reconnection: true,
        reconnectionDelay: 1000,
        reconnectionDelayMax: 1000,
        randomizationFactor: 0,
      });
      await client.connected();
      const firstId = client.socket.id;
      client.socket.emit('announce', 'before');
      client.socket.emit('chat', { id: 100 });
      client.socket.emit('chat', { id: 101 });
      await client.until(() => client.of('announcement').length === 1 && client.of('chat_ok').length === 2);

      // The connection is lost (not closed by the client): socket.io keeps its session.
      client.socket.io.engine.close();
      await client.disconnected();
      await waitFor(() => stats().connections === 1, 10_000, 'the lost socket freed');
      // Missed while away: replayed on recovery. Emitted while away: buffered by the client.
      observer.socket.emit('announce', 'missed');
      for (let id = 0; id < 5; id++) client.socket.emit('chat', { id });
      await client.until(() => client.socket.connected, 15_000, 'the reconnection');
      expect(client.socket.recovered).toBe(true);
      expect(client.socket.id).toBe(firstId);
      expect(connected.filter((entry) => entry.id === firstId).map((entry) => entry.recovered)).toEqual([false, true]);

      await client.until(() => client.of('chat_ok').length + client.of('rate_limit').length === 7, 10_000, 'answers');
      expect(client.of('announcement')).toEqual(['before', 'missed']);
      // A new socket: its budgets start full (README: a socket's state is freed on disconnect).
      expect(client.of('chat_ok')).toEqual([{ id: 100 }, { id: 101 }, { id: 0 }, { id: 1 }, { id: 2 }]);
      expect((client.of('rate_limit') as Array<{ id: number }>).map((info) => info.id)).toEqual([3, 4]);
      expect(runs('/:chat')).toBe(5);

      // Counted once: the observer and the recovered socket, at a cap of 2.
      expect(stats().connections).toBe(2);
      const third = harness.client(url, transport);
      expect(await outcome(third)).not.toBe('connected');
      // The recovered socket's status is its own, and the replayed broadcast cost it nothing.
      const serverSocket = rootServer!.sockets.sockets.get(firstId!);
      expect(serverSocket).toBeDefined();
      expect((await harness.limiter().status(serverSocket!)).global.remaining).toBe(1000 - 3);

      await client.closeAndSettle();
      await observer.closeAndSettle();
      await waitFor(() => stats().connections === 0, 10_000, 'every socket freed');
    },
  );

  // --- Reserved event names sent by a client ------------------------------------------

  it.each(['disconnect', 'connect', 'disconnecting', 'newListener', 'connect_error'])(
    "a client event named '%s' (raw) ends the connection as socket.io does; nothing runs, the slot comes back",
    async (name) => {
      const url = await start([ChatGateway, NewsGateway], { maxConnectionsPerIp: 1 });
      const chat = record(manager(url, 'websocket').socket('/chat'));
      expect(await joined(chat.socket)).toBe('connected');
      (chat.socket.io.engine as unknown as { write(packet: string): void }).write(`42/chat,["${name}",{"id":1}]`);
      await waitFor(() => chat.disconnectReason !== undefined, 10_000, 'the connection to end');
      expect(runs('/chat:chat')).toBe(0);
      await waitFor(() => stats().connections === 0, 10_000, 'the socket freed');
      await admittedWithin(`${url}/chat`, 'websocket');
    },
  );

  // --- Middlewares that refuse a connection --------------------------------------------

  it.each(ENGINE_TRANSPORTS)(
    "a namespace middleware's refusals (bad token) give their open-connection slot back (%s)",
    async (transport) => {
      const url = await start([ChatGateway, NewsGateway, VaultGateway], {
        maxConnectionsPerIp: 1,
        connection: { capacity: 50, refillRate: 50 },
      });
      for (let i = 0; i < 4; i++) {
        // Admitted at the handshake once the slot of the attempt before came back.
        const refused = await admittedWithin(`${url}/vault`, transport, { auth: { token: 'bad' } }, 'auth');
        await refused.closeAndSettle();
      }
      const admitted = await admittedWithin(`${url}/vault`, transport, { auth: { token: 'ok' } });
      admitted.socket.emit('secret');
      await admitted.until(() => admitted.of('secret').length === 1);
    },
  );

  it.each(ENGINE_TRANSPORTS)(
    'refused joins beside a connected namespace hold the one slot of their connection, given back when it closes (%s)',
    async (transport) => {
      const url = await start([ChatGateway, NewsGateway, VaultGateway], {
        maxConnectionsPerIp: 1,
        connection: { capacity: 50, refillRate: 50 },
      });
      const made = manager(url, transport);
      const chat = made.socket('/chat');
      expect(await joined(chat)).toBe('connected');
      // (socket.io-client keeps one socket per namespace on a Manager: the retries reuse it.)
      const vault = made.socket('/vault', { auth: { token: 'bad' } });
      for (let i = 0; i < 3; i++) expect(await joined(vault)).toBe('auth');
      expect(made.engine.readyState).toBe('open');
      const second = harness.client(`${url}/news`, transport);
      expect(await outcome(second)).not.toBe('connected');
      vault.auth = { token: 'ok' };
      expect(await joined(vault)).toBe('connected');
      made.engine.close();
      await waitFor(() => stats().connections === 0, 10_000, 'the sockets freed');
      await admittedWithin(`${url}/news`, transport);
    },
  );

  it.each(ENGINE_TRANSPORTS)(
    "handshakes Engine.IO's allowRequest refuses give their open-connection slot back (%s)",
    async (transport) => {
      const url = await start([AllowRequestGateway], {
        maxConnectionsPerIp: 1,
        connection: { capacity: 50, refillRate: 50 },
      });
      for (let i = 0; i < 4; i++) {
        const refused = harness.client(url, transport, { query: { reject: '1' } });
        expect(await outcome(refused)).not.toBe('connected');
        refused.close();
      }
      const admitted = await admittedWithin(url, transport);
      admitted.socket.emit('hello', 1);
      await admitted.until(() => admitted.of('hello').length === 1);
    },
  );

  it('namespace joins an auth middleware refuses, retried one after another on one Engine.IO connection, are bounded by the connection rate (it was: never limited, token guessing)', async () => {
    const url = await start([ChatGateway, NewsGateway, VaultGateway], {
      connection: { capacity: 5, refillRate: 1 },
      global: { capacity: 20, refillRate: 0.001 },
      violations: { max: 10, windowMs: 60_000 },
    });
    const port = Number(new URL(url).port);
    const raw = await rawSession(port, []);
    const attempts = 200;
    const started = Date.now();
    const answers = (): string[] => raw.frames.filter((frame) => frame.startsWith('44/vault,'));
    for (let i = 0; i < attempts && raw.closed === undefined; i++) {
      raw.send(`40/vault,{"token":"guess-${i}"}`);
      // The next guess goes once this one is answered: no two joins are ever in flight.
      const answered = await waitFor(() => answers().length > i || raw.closed !== undefined, 10_000).then(
        () => answers().length > i,
        () => false,
      );
      if (!answered) break;
    }
    // Every guess was answered by the app's own refusal ('auth'), none by the limiter.
    const refusedByAuth = answers().filter((frame) => frame.includes('"auth"')).length;
    const elapsed = Date.now() - started;
    raw.socket.terminate();
    // One Engine.IO handshake bought `attempts` token guesses in `elapsed` ms. A new
    // connection per guess would be bounded by the connection rate (5 burst, 1/s); through
    // one connection they should be bounded as well: by that rate, or by the global budget.
    const bound = 5 + 1 + Math.ceil(elapsed / 1000) + 20;
    expect({ guessesTheMiddlewareTried: runs('/vault:auth'), refusedByAuth }).toEqual({
      guessesTheMiddlewareTried: Math.min(runs('/vault:auth'), bound),
      refusedByAuth: Math.min(refusedByAuth, bound),
    });
  });
});
