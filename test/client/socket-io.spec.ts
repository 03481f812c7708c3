import { afterEach, beforeEach, describe, expect, it, jest } from '@jest/globals';
import {
  RateLimitedClient,
  isSocketIoAck,
  socketIoFactory,
  type RateLimitNotice,
  type RateLimitedClientOptions,
  type ReconnectEvent,
  type SocketCloseEvent,
  type SocketIoFactoryOptions,
  type SocketMessageEvent,
  type WebSocketLike,
} from '../../lib/client/index.js';
import { RATE_LIMIT_DISCONNECT_EVENT } from '../../lib/protocol/rate-limit-protocol.js';
import { fakeIo, type FakeIoSocket } from './support/fake-socket-io.js';

beforeEach(() => {
  // The adapter opens an already-connected socket in a microtask: leave those real.
  jest.useFakeTimers({ doNotFake: ['queueMicrotask', 'nextTick'] });
});

afterEach(() => {
  jest.clearAllTimers();
  jest.useRealTimers();
});

const URL = 'http://127.0.0.1:1/chat';

/** A `rate_limit` answer's info, as the server builds it. */
function info(retryAfter: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { code: 'TYPE_LIMIT', messageType: 'chat', retryAfter, warningCount: 1, limit: 2, remaining: 0, ...extra };
}

/** A client on fake socket.io sockets, with what it reported. */
function setup(options: RateLimitedClientOptions = {}, adapter: SocketIoFactoryOptions = {}) {
  const fake = fakeIo();
  const client = new RateLimitedClient(URL, {
    createSocket: socketIoFactory(fake.io, { transports: ['websocket'] }, adapter),
    random: () => 0.5,
    ...options,
  });
  const messages: unknown[] = [];
  const notices: RateLimitNotice[] = [];
  const reconnects: ReconnectEvent[] = [];
  const errors: unknown[] = [];
  client.on('message', (message) => messages.push(message));
  client.on('rateLimit', (notice) => notices.push(notice));
  client.on('reconnect', (event) => reconnects.push(event));
  client.on('error', (error) => errors.push(error));
  return { client, fake, messages, notices, reconnects, errors };
}

/** One adapter socket (no client), with the events it reported. */
function rawSocket(adapter: SocketIoFactoryOptions = {}) {
  const fake = fakeIo();
  const socket: WebSocketLike = socketIoFactory(fake.io, {}, adapter)(URL);
  const log: { opens: number; messages: unknown[]; closes: SocketCloseEvent[]; errors: unknown[] } = {
    opens: 0,
    messages: [],
    closes: [],
    errors: [],
  };
  socket.onopen = () => log.opens++;
  socket.onmessage = (event: SocketMessageEvent) => log.messages.push(event.decoded);
  socket.onclose = (event: SocketCloseEvent) => log.closes.push(event);
  socket.onerror = (error: unknown) => log.errors.push(error);
  return { socket, io: fake.socket(), log };
}

function sentData(socket: FakeIoSocket): unknown[] {
  return socket.emits.map((emit) => emit.args[0]);
}

describe('socketIoFactory: opening', () => {
  it('opens socket.io with the URL, reconnection off and forceNew on, the caller able to override', () => {
    const fake = fakeIo();
    socketIoFactory(fake.io, { transports: ['polling'] })(URL);
    socketIoFactory(fake.io, { forceNew: false, reconnection: true, path: '/x' })(URL);
    expect(fake.sockets.map((socket) => [socket.url, socket.options])).toEqual([
      [URL, { reconnection: false, forceNew: true, transports: ['polling'] }],
      [URL, { reconnection: true, forceNew: false, path: '/x' }],
    ]);
  });

  it('reports open on connect, and at once (next microtask) for a socket connected already', async () => {
    const { socket, io, log } = rawSocket();
    expect(socket.readyState).toBe(0);
    io.connect();
    expect(socket.readyState).toBe(1);
    expect(log.opens).toBe(1);

    const fake = fakeIo();
    const shared = socketIoFactory((url, options) => {
      const s = fake.io(url, options);
      s.connected = true;
      return s;
    })(URL);
    let opened = 0;
    shared.onopen = () => opened++;
    await Promise.resolve();
    expect(shared.readyState).toBe(1);
    expect(opened).toBe(1);
  });

  it('throws on send before the socket is connected, as a WebSocket does', () => {
    const { socket } = rawSocket();
    expect(() => socket.send(JSON.stringify({ event: 'chat', data: 1 }))).toThrow('not connected');
  });

  it('validates its options', () => {
    const { io } = fakeIo();
    expect(() => socketIoFactory(undefined as never)).toThrow(TypeError);
    expect(() => socketIoFactory(io, {}, { ackTimeoutMs: 0 })).toThrow('options.ackTimeoutMs');
    expect(() => socketIoFactory(io, {}, { ackTimeoutMs: Infinity })).toThrow('options.ackTimeoutMs');
    expect(() => socketIoFactory(io, {}, { acks: 'yes' as never })).toThrow('options.acks');
  });
});

describe('socketIoFactory: sending', () => {
  it('queues while connecting, then emits each message as emit(event, data, ack) with the ack timeout', () => {
    const { client, fake } = setup({}, { ackTimeoutMs: 5000 });
    expect(client.send('chat', { text: 'a' })).toBe(true);
    expect(client.send('chat', { text: 'b' })).toBe(true);
    expect(fake.socket().emits).toEqual([]);
    expect(client.queued).toBe(2);

    fake.socket().connect();

    // One unconfirmed message per event of unknown limit: the second waits for confirmMs.
    expect(fake.socket().emits).toEqual([
      { event: 'chat', args: [{ text: 'a' }], ack: expect.any(Function), timeoutMs: 5000 },
    ]);
    jest.advanceTimersByTime(250);
    expect(sentData(fake.socket())).toEqual([{ text: 'a' }, { text: 'b' }]);
    expect(fake.socket().emits[1].ack).toEqual(expect.any(Function));
    client.close();
  });

  it('without acks, puts the message id into object payloads that have none, and nowhere else', () => {
    const { client, fake } = setup({ maxUnconfirmed: 10 }, { acks: false });
    fake.socket().connect();
    client.send('chat', { text: 'a' });
    client.send('chat', { text: 'b', id: 'mine' });
    client.send('chat', 'plain');
    client.send('chat', [1, 2]);
    expect(fake.socket().emits).toEqual([
      { event: 'chat', args: [{ text: 'a', id: 0 }], ack: undefined, timeoutMs: undefined },
      { event: 'chat', args: [{ text: 'b', id: 'mine' }], ack: undefined, timeoutMs: undefined },
      { event: 'chat', args: ['plain'], ack: undefined, timeoutMs: undefined },
      { event: 'chat', args: [[1, 2]], ack: undefined, timeoutMs: undefined },
    ]);
    client.close();
  });

  it('refuses a reserved event name with a TypeError, before sending or queueing it', () => {
    const { client, fake, errors } = setup({ maxUnconfirmed: 10 });
    // Before the connection opens (it would be queued) as after.
    expect(() => client.send('connect', 0)).toThrow(/"connect" is a reserved event name/);
    fake.socket().connect();
    expect(() => client.send('disconnect', 1)).toThrow(
      new TypeError('RateLimitedClient: "disconnect" is a reserved event name of this transport; it cannot be sent'),
    );
    expect(() => client.sendPriority('removeListener', 1)).toThrow(TypeError);
    expect(client.send('chat', 2)).toBe(true);
    expect(errors).toEqual([]);
    expect(fake.socket().emits.map((emit) => emit.event)).toEqual(['chat']);
    expect(client.queued).toBe(0);
    client.close();
  });
});

describe('socketIoFactory: receiving', () => {
  it('turns server events into { event, data } messages (several arguments as an array)', () => {
    const { client, fake, messages } = setup();
    fake.socket().connect();
    fake.socket().serverEmit('news', { title: 't' });
    fake.socket().serverEmit('pair', 1, 'two');
    fake.socket().serverEmit('ping');
    fake.socket().serverEmit('ask', 5, () => undefined);
    const bytes = Buffer.from([1, 2]);
    fake.socket().serverEmit('blob', bytes);
    expect(messages).toEqual([
      { event: 'news', data: { title: 't' } },
      { event: 'pair', data: [1, 'two'] },
      { event: 'ping', data: undefined },
      { event: 'ask', data: 5 },
      { event: 'blob', data: bytes },
    ]);
    // Decoded values are passed as they are, not through JSON.
    expect((messages[4] as { data: unknown }).data).toBe(bytes);
    client.close();
  });

  it("turns an ack's reply into { event, data, ack: true, id }, which isSocketIoAck confirms exactly", () => {
    const { client, fake, messages } = setup({ isAck: isSocketIoAck, maxUnconfirmed: 1 });
    fake.socket().connect();
    client.send('chat', 'a');
    client.send('chat', 'b');
    expect(sentData(fake.socket())).toEqual(['a']);

    fake.socket().ack(0, { ok: true });

    expect(messages).toEqual([{ event: 'chat', data: { ok: true }, ack: true, id: 0 }]);
    // The ack confirmed message 0 at once (no confirmMs wait): message 1 went out.
    expect(sentData(fake.socket())).toEqual(['a', 'b']);
    fake.socket().ack(1, 'x', 'y');
    expect(messages[1]).toEqual({ event: 'chat', data: ['x', 'y'], ack: true, id: 1 });
    expect(isSocketIoAck(messages[1])).toEqual({ id: 1 });
    expect(isSocketIoAck({ event: 'chat', data: 1, ack: true })).toEqual({ event: 'chat' });
    expect(isSocketIoAck({ event: 'chat', data: 1 })).toBe(false);
    expect(isSocketIoAck(null)).toBe(false);
    client.close();
  });

  it('ignores acks that time out or end with the disconnect', () => {
    const { client, fake, messages, notices } = setup();
    fake.socket().connect();
    client.send('chat', 'a');
    fake.socket().emits[0].ack?.(new Error('operation has timed out'));
    expect(messages).toEqual([]);
    expect(notices).toEqual([]);
    client.close();
  });
});

describe('socketIoFactory: rate_limit answers', () => {
  it('re-sends a message refused through its ack after retryAfter, naming it exactly (its payload has no id)', () => {
    const { client, fake, notices } = setup();
    fake.socket().connect();
    client.send('chat', 'first');
    fake.socket().ack(0, { event: 'rate_limit', data: info(400) });

    expect(notices).toEqual([
      {
        ...info(400),
        id: 0,
        message: { event: 'chat', data: 'first', id: 0 },
        messages: [{ event: 'chat', data: 'first', id: 0 }],
      },
    ]);
    expect(client.state).toBe('rate_limited');
    jest.advanceTimersByTime(399);
    expect(sentData(fake.socket())).toEqual(['first']);
    jest.advanceTimersByTime(1);
    expect(sentData(fake.socket())).toEqual(['first', 'first']);
    expect(client.state).toBe('open');
    client.close();
  });

  it("replaces the id a refusal echoes from the payload's own id with the client's", () => {
    const { client, fake, notices } = setup({ maxUnconfirmed: 5 });
    fake.socket().connect();
    client.send('chat', { id: 1 });
    client.send('chat', { id: 0 });
    // The server echoes data.id (0), which is message 1's payload id but message 0's client id.
    fake.socket().ack(1, { event: 'rate_limit', data: info(100, { id: 0 }) });
    expect(notices.map((notice) => [notice.id, notice.message])).toEqual([
      [1, { event: 'chat', data: { id: 0 }, id: 1 }],
    ]);
    jest.advanceTimersByTime(100);
    expect(sentData(fake.socket())).toEqual([{ id: 1 }, { id: 0 }, { id: 0 }]);
    client.close();
  });

  it('without acks, a rate_limit event echoing an id the adapter put in names that message', () => {
    const { client, fake, notices } = setup({ maxUnconfirmed: 5 }, { acks: false });
    fake.socket().connect();
    client.send('chat', { n: 0 });
    client.send('chat', { n: 1 });
    fake.socket().serverEmit('rate_limit', info(300, { id: 1 }));
    expect(notices.map((notice) => notice.message)).toEqual([{ event: 'chat', data: { n: 1 }, id: 1 }]);
    jest.advanceTimersByTime(300);
    expect(sentData(fake.socket())).toEqual([
      { n: 0, id: 0 },
      { n: 1, id: 1 },
      { n: 1, id: 1 },
    ]);
    client.close();
  });

  it('without acks, drops an echoed id that may be a payload’s own, leaving the client its confirmation rules', () => {
    const { client, fake, notices } = setup({ maxUnconfirmed: 5 }, { acks: false });
    fake.socket().connect();
    client.send('chat', { n: 0 });
    // This payload's own id equals message 0's client id: an echoed 0 names neither surely.
    client.send('chat', { n: 1, id: 0 });
    fake.socket().serverEmit('rate_limit', info(300, { id: 0 }));
    expect(notices).toHaveLength(1);
    expect(notices[0].id).toBeUndefined();
    // Two unconfirmed chats and a frame without an id: the client does not guess.
    expect(notices[0].message).toBeUndefined();
    client.close();
  });
});

describe('socketIoFactory: closing', () => {
  it('closes with the code and reason of rate_limit_disconnect when the disconnect follows it', () => {
    const { socket, io, log } = rawSocket();
    io.connect();
    io.serverEmit(RATE_LIMIT_DISCONNECT_EVENT, { code: 1008, reason: 'Too many rate limit violations' });
    expect(log.messages).toEqual([]);
    expect(log.closes).toEqual([]);
    io.serverDisconnect('io server disconnect');
    expect(log.closes).toEqual([{ code: 1008, reason: 'Too many rate limit violations', policy: true }]);
    expect(socket.readyState).toBe(3);
    expect(io.disconnectCalls).toBe(1);
  });

  it('closes 1006 with socket.io’s reason for any other disconnect', () => {
    const { io, log } = rawSocket();
    io.connect();
    io.serverDisconnect('transport close');
    expect(log.closes).toEqual([{ code: 1006, reason: 'transport close' }]);
  });

  it('closes with the caller’s code (1000 by default) on a client-side close, once', () => {
    const first = rawSocket();
    first.io.connect();
    first.socket.close();
    first.socket.close(4000);
    expect(first.log.closes).toEqual([{ code: 1000, reason: '' }]);
    expect(first.io.disconnectCalls).toBe(1);

    const connecting = rawSocket();
    connecting.socket.close(4000, 'bye');
    expect(connecting.log.closes).toEqual([{ code: 4000, reason: 'bye' }]);
    connecting.io.connect();
    expect(connecting.log.opens).toBe(0);
  });

  it('turns connect_error into an error then a close 1006, and ignores the socket afterwards', () => {
    const { socket, io, log } = rawSocket();
    const refusal = Object.assign(new Error('Too many connections'), { data: { code: 'rate', retryAfter: 1000 } });
    io.connectError(refusal);
    expect(log.errors).toEqual([refusal]);
    // The refusal's retry time goes with the close: the client waits at least that long.
    expect(log.closes).toEqual([{ code: 1006, reason: 'Too many connections', retryAfterMs: 1000 }]);
    expect(socket.readyState).toBe(3);
    expect(io.disconnectCalls).toBe(1);
    io.serverEmit('late', 1);
    expect(log.messages).toEqual([]);
  });

  it('reconnects after rate_limit_disconnect with the policy delay (close code 1008)', () => {
    const { client, fake, reconnects } = setup({ policyDelayMs: 5000, backoffBaseMs: 100 });
    fake.socket().connect();
    fake.socket().serverEmit(RATE_LIMIT_DISCONNECT_EVENT, { code: 1008, reason: 'violations' });
    fake.socket().serverDisconnect();
    expect(reconnects).toEqual([{ attempt: 0, delayMs: 5000, code: 1008, policy: true }]);
    expect(client.state).toBe('reconnecting');
    jest.advanceTimersByTime(4999);
    expect(fake.sockets).toHaveLength(1);
    jest.advanceTimersByTime(1);
    expect(fake.sockets).toHaveLength(2);
    client.close();
  });

  it("waits a refused connection's retryAfter (connectionRefusal 'close') when it is longer than the policy delay", () => {
    const { client, fake, reconnects } = setup({ policyDelayMs: 5000, backoffBaseMs: 100 });
    const blocked = Object.assign(new Error('Blocked'), { data: { code: 'blocked', retryAfter: 3_600_000 } });
    fake.socket().connectError(blocked);
    const limited = Object.assign(new Error('Too many connections'), { data: { code: 'rate', retryAfter: 1000 } });
    jest.advanceTimersByTime(3_600_000);
    fake.socket().connectError(limited);
    expect(reconnects.map(({ delayMs, code, policy }) => [delayMs, code, policy])).toEqual([
      [3_600_000, 1006, true],
      [5000, 1006, true],
    ]);
    client.close();
  });

  it('backs off exponentially on repeated connect_errors, keeping queued messages for the next socket', () => {
    const { client, fake, reconnects, errors } = setup({ policyDelayMs: 0, backoffBaseMs: 100 });
    client.send('chat', 'kept');
    for (let attempt = 0; attempt < 3; attempt++) {
      fake.socket().connectError(new Error('xhr poll error'));
      jest.advanceTimersByTime(reconnects[attempt].delayMs);
    }
    // Full jitter with random() = 0.5: half of 100, 200, 400.
    expect(reconnects.map(({ attempt, delayMs, code, policy }) => [attempt, delayMs, code, policy])).toEqual([
      [0, 50, 1006, true],
      [1, 100, 1006, true],
      [2, 200, 1006, true],
    ]);
    expect(errors).toHaveLength(3);
    expect(fake.sockets).toHaveLength(4);
    expect(fake.sockets.slice(0, 3).every((socket) => socket.emits.length === 0)).toBe(true);
    fake.socket().connect();
    expect(sentData(fake.socket())).toEqual(['kept']);
    client.close();
  });
});
