import { afterEach, beforeEach, describe, expect, it, jest } from '@jest/globals';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { WebSocket, WebSocketServer, type WebSocket as ServerSocket } from 'ws';
import {
  RateLimitedClient,
  type ClientState,
  type DropEvent,
  type RateLimitNotice,
  type UndeliveredEvent,
  type WebSocketLike,
} from '../../lib/client/index.js';
import { advance, harness, isAck, rateLimitFrame } from './support/fake-socket.js';

// The client at its edges, from an adversarial review: more messages in flight than it
// keeps confirmed ids for, frames naming a shared limit type, a server answering
// retryAfter 0, listeners that close the client mid-call, close frames that cannot be sent
// or are never answered, and strange frames. The rule: nothing is lost without a word, no
// resend loop, no socket or timer left after close(). Eight of these tests failed before
// the fixes they came with.

describe('client edges: fake sockets', () => {
  beforeEach(() => {
    jest.useFakeTimers();
  });

  afterEach(() => {
    jest.clearAllTimers();
    jest.useRealTimers();
  });

  it('re-sends (or reports) refused messages whose ids fell out of the 1024 ids it tracks', () => {
    // More than 1024 messages in flight at once (maxUnconfirmed: Infinity, declared limits
    // above 1024, or many events): the server, its budget spent, refuses all of them by id.
    // Frames are matched by id only (ledger.takeById), the id map has evicted the oldest 76,
    // and those are left unconfirmed, then "presumed accepted": lost without a word.
    const h = harness({ maxUnconfirmed: Infinity, isAck });
    const reports: UndeliveredEvent[] = [];
    const drops: DropEvent[] = [];
    h.client.on('undelivered', (report) => reports.push(report));
    h.client.on('drop', (drop) => drops.push(drop));
    h.socket().open();
    const count = 1100;
    for (let i = 0; i < count; i++) expect(h.client.send('chat', i)).toBe(true);
    expect(h.socket().sent).toHaveLength(count);

    for (let id = 0; id < count; id++) h.socket().receive(rateLimitFrame(100, { id, limit: 5 }));
    // Every refused message should now wait in the queue for its retry (it holds 1024).
    advance(20_000);
    h.client.close();
    const resent = new Set(
      h
        .socket()
        .sent.slice(count)
        .map((frame) => frame.id),
    );
    const reported = new Set(reports.flatMap((report) => report.messages.map((message) => message.id)));
    const dropped = new Set(drops.map((drop) => drop.message.id));
    const lost = Array.from({ length: count }, (_, id) => id).filter(
      (id) => !resent.has(id) && !reported.has(id) && !dropped.has(id),
    );
    expect(lost).toEqual([]);
  });

  it('re-sends (or reports) a message refused by a frame without id whose messageType is a shared @Throttle type', () => {
    // The server names the @Throttle type, not the event, and sends no id with BLOCKED,
    // DEGRADED and closing frames (lib/pipeline/message-pipeline.ts screen()). The message
    // it refused is of event 'cursor_move', type 'cursor'.
    const h = harness();
    const reports: UndeliveredEvent[] = [];
    const notices: RateLimitNotice[] = [];
    h.client.on('undelivered', (report) => reports.push(report));
    h.client.on('rateLimit', (notice) => notices.push(notice));
    h.socket().open();
    h.client.send('cursor_move', { x: 1 });
    h.socket().receive({
      event: 'rate_limit',
      data: { code: 'BLOCKED', messageType: 'cursor', retryAfter: 200, warningCount: 1, limit: 0, remaining: 0 },
    });
    // The application carries on: another message after the block, acknowledged by time.
    advance(1000);
    h.client.send('chat', 'later');
    advance(5000);
    const resent = h.socket().sent.filter((frame) => frame.event === 'cursor_move').length;
    h.client.close();
    expect(notices).toHaveLength(1);
    // Either sent again after the block, or at least reported as not delivered.
    const reported = reports.some((report) => report.messages.some((message) => message.event === 'cursor_move'));
    expect(resent === 2 || reported).toBe(true);
  });

  it('stays closed, with no timer, when an undelivered listener closes the client from inside the pump', () => {
    const h = harness({ messageIds: false, maxUnconfirmed: 2 });
    const states: ClientState[] = [];
    h.client.on('state', (state) => states.push(state));
    h.client.on('undelivered', (report) => {
      if (report.reason === 'ambiguous') h.client.close();
    });
    h.socket().open();
    h.client.send('chat', 0);
    h.client.send('chat', 1);
    // One of the two was refused, which one is unknown: the group is in doubt until it expires.
    h.socket().receive(rateLimitFrame(5000));
    advance(1000); // the pump wakes at the doubt's expiry, reports it, the listener closes
    expect(states).toContain('closed');
    expect(h.client.state).toBe('closed');
    expect(jest.getTimerCount()).toBe(0);
    expect(h.client.send('chat', 2)).toBe(false);
  });

  it('does not accept a message it will never send when a listener closes the client during send()', () => {
    // send() runs expireUnconfirmed() first; the ambiguous report's listener closes the
    // client; send() then writes to no socket and queues the message on a closed client.
    const h = harness({ messageIds: false, maxUnconfirmed: 2 });
    const drops: DropEvent[] = [];
    h.client.on('drop', (drop) => drops.push(drop));
    h.client.on('error', () => undefined);
    h.client.on('undelivered', (report) => {
      if (report.reason === 'ambiguous') h.client.close();
    });
    h.socket().open();
    h.client.send('chat', 0);
    h.client.send('chat', 1);
    h.socket().receive(rateLimitFrame(50));
    // Time passes without the pump timer having run yet (a busy event loop).
    const realNow = performance.now.bind(performance);
    const skew = 10_000;
    const spy = jest.spyOn(performance, 'now').mockImplementation(() => realNow() + skew);
    try {
      const accepted = h.client.send('other', 'x');
      // Accepted means delivered or reported: here the client is closed, nothing can deliver it.
      if (accepted) expect(drops.map((drop) => drop.message.event)).toContain('other');
      expect(h.client.state).toBe('closed');
      expect(h.client.queued).toBe(0);
    } finally {
      spy.mockRestore();
    }
  });

  it('stays closed when a state listener closes the client as a reconnect starts connecting', () => {
    const h = harness({ random: () => 0, backoffBaseMs: 10 });
    const states: ClientState[] = [];
    h.client.on('state', (state) => {
      states.push(state);
      // "Give up after the first reconnect attempt", written against the state event.
      if (state === 'connecting' && h.sockets.length >= 1 && states.includes('reconnecting')) h.client.close();
    });
    h.socket().open();
    h.socket().serverClose(1006);
    advance(100);
    expect(h.client.state).toBe('closed');
    // A socket opened after close() is a leak: it must not exist, or be closed.
    // The reconnect's socket was created after close() returned; its handshake completes.
    for (const socket of h.sockets.slice(1)) socket.open();
    expect(h.client.state).toBe('closed');
    expect(h.client.send('chat', 'after close')).toBe(false);
    // A socket opened after close() is a leak: it must not exist, or be closed.
    for (const socket of h.sockets.slice(1)) expect(socket.closeCalls.length).toBeGreaterThan(0);
    expect(jest.getTimerCount()).toBe(0);
  });

  it('handles malformed and strange frames without throwing and without losing the message', () => {
    const h = harness({ isAck });
    const errors: unknown[] = [];
    const notices: RateLimitNotice[] = [];
    h.client.on('error', (error) => errors.push(error));
    h.client.on('rateLimit', (notice) => notices.push(notice));
    h.socket().open();
    h.client.send('chat', 0);
    const junk: unknown[] = [
      'not json',
      'null',
      '[]',
      '"rate_limit"',
      '{"event":"rate_limit"}',
      '{"event":"rate_limit","data":null}',
      '{"event":"rate_limit","data":[1,2]}',
      '{"type":"rate_limit","retryAfter":"soon"}',
      '{"event":"rate_limit","data":{"retryAfter":-5,"id":{"x":1}}}',
      '{"event":"rate_limit","data":{"retryAfter":1e400,"code":"TYPE_LIMIT","messageType":"__proto__"}}',
      '{"event":"rate_limit","data":{"retryAfter":100,"id":987654}}',
      '{"event":"error","data":{"id":"nope"}}',
      '{"__proto__":{"polluted":true},"event":"x"}',
    ];
    expect(() => {
      for (const frame of junk) h.socket().onmessage?.({ data: frame });
      h.socket().onmessage?.({ data: 42 });
      h.socket().onmessage?.({ data: new ArrayBuffer(3) });
      h.socket().onmessage?.({ data: undefined, decoded: { event: 'rate_limit', data: { retryAfter: Number.NaN } } });
      h.socket().onmessage?.({ data: undefined, decoded: undefined });
    }).not.toThrow();
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    // None of those frames named message 0: it is still awaiting its ack, and the ack confirms it.
    h.socket().receive({ event: 'ack' });
    h.client.send('chat', 1);
    advance(20_000);
    expect(h.socket().payloads()).toContain(1);
    expect(notices.every((notice) => Number.isFinite(notice.retryAfter) && notice.retryAfter >= 0)).toBe(true);
    h.client.close();
  });

  it('a huge retryAfter (1e300 ms) holds the message without a firing loop, and close() frees everything', () => {
    const h = harness();
    const drops: DropEvent[] = [];
    h.client.on('drop', (drop) => drops.push(drop));
    h.socket().open();
    h.client.send('chat', 0);
    h.socket().receive(rateLimitFrame(1e300, { id: 0, code: 'GLOBAL_LIMIT' }));
    const spy = jest.spyOn(globalThis, 'setTimeout');
    try {
      advance(2 ** 31 * 3);
      // One timer per 2^31-1 ms step at most: a few, never thousands.
      expect(spy.mock.calls.length).toBeLessThan(10);
    } finally {
      spy.mockRestore();
    }
    expect(h.socket().sent).toHaveLength(1);
    h.client.close();
    expect(jest.getTimerCount()).toBe(0);
    expect(drops.map((drop) => [drop.reason, drop.message.data])).toEqual([['closed', 0]]);
  });

  it('keeps a refused message across a close mid-flight and re-sends it, once, after the reconnect', () => {
    const h = harness({ isAck, random: () => 0, policyDelayMs: 100, backoffBaseMs: 10 });
    const reports: UndeliveredEvent[] = [];
    h.client.on('undelivered', (report) => reports.push(report));
    h.socket().open();
    h.client.send('chat', 0);
    h.socket().receive(rateLimitFrame(300, { id: 0 }));
    h.socket().serverClose(1008, 'Rate limit violations');
    expect(h.client.queued).toBe(1);
    expect(reports).toEqual([]);
    advance(100); // policy delay: the reconnect starts at t = 100, inside the retry window (t < 300)
    h.socket().open();
    advance(199);
    expect(h.sockets[1].sent).toHaveLength(0);
    advance(1);
    expect(h.sockets[1].sent.map((frame) => frame.id)).toEqual([0]);
    h.client.close();
  });
});

// ---------------------------------------------------------------------------------------
// Real ws servers on 127.0.0.1.
// ---------------------------------------------------------------------------------------

async function listen(onConnection: (socket: ServerSocket) => void): Promise<{ wss: WebSocketServer; url: string }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  wss.on('connection', (socket) => {
    socket.on('error', () => undefined);
    onConnection(socket);
  });
  await new Promise<void>((resolve, reject) => {
    wss.once('listening', resolve);
    wss.once('error', reject);
  });
  return { wss, url: `ws://127.0.0.1:${(wss.address() as AddressInfo).port}` };
}

async function stop(wss: WebSocketServer): Promise<void> {
  for (const socket of wss.clients) socket.terminate();
  await new Promise<void>((resolve) => wss.close(() => resolve()));
}

function opened(client: RateLimitedClient): Promise<void> {
  return new Promise((resolve) => {
    const off = client.on('state', (state) => {
      if (state === 'open') {
        off();
        resolve();
      }
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('client edges: a real ws server', () => {
  it('does not resend in a tight loop when the server keeps answering retryAfter 0', async () => {
    let received = 0;
    const { wss, url } = await listen((socket) => {
      socket.on('message', (raw) => {
        received++;
        const { event, id } = JSON.parse(String(raw)) as { event: string; id: number };
        socket.send(
          JSON.stringify({
            event: 'rate_limit',
            data: {
              code: 'TYPE_LIMIT',
              messageType: event,
              retryAfter: 0,
              warningCount: 1,
              limit: 5,
              remaining: 0,
              id,
            },
          }),
        );
      });
    });
    const client = new RateLimitedClient(url, { WebSocket, reconnect: false });
    try {
      await opened(client);
      client.send('chat', 'hello');
      await sleep(500);
      // minPaceMs is 125 ms and the pace doubles on each repeated refusal: a handful, not hundreds.
      expect(received).toBeLessThan(10);
    } finally {
      client.close();
      await stop(wss);
    }
  });

  it('closes the socket even when the close reason is too long for a close frame', async () => {
    let serverSocket: ServerSocket | undefined;
    const { wss, url } = await listen((socket) => {
      serverSocket = socket;
    });
    const client = new RateLimitedClient(url, { WebSocket, reconnect: false });
    const errors: unknown[] = [];
    client.on('error', (error) => errors.push(error));
    try {
      await opened(client);
      const serverClosed = new Promise<boolean>((resolve) => {
        serverSocket?.once('close', () => resolve(true));
        // unref'd: it must not keep Jest waiting once the socket has closed.
        setTimeout(() => resolve(false), 5000).unref();
      });
      client.close(1000, 'shutting down because '.repeat(10)); // > 123 bytes
      expect(client.state).toBe('closed');
      // The connection must end: a socket left open keeps the Node process alive.
      expect(await serverClosed).toBe(true);
    } finally {
      await stop(wss);
    }
  });

  it('reports the messages in flight when the server drops the connection, and leaves no timer after close()', async () => {
    const { wss, url } = await listen((socket) => {
      socket.on('message', () => socket.terminate());
    });
    const client = new RateLimitedClient(url, {
      WebSocket,
      isAck,
      maxUnconfirmed: Infinity,
      random: () => 0.5,
      backoffBaseMs: 20,
    });
    const reports: UndeliveredEvent[] = [];
    client.on('undelivered', (report) => reports.push(report));
    client.on('error', () => undefined);
    try {
      await opened(client);
      for (let i = 0; i < 3; i++) client.send('chat', i);
      await new Promise<void>((resolve) => client.once('reconnect', () => resolve()));
      expect(reports).toHaveLength(1);
      expect(reports[0].messages.map((message) => message.data)).toEqual([0, 1, 2]);
      expect(reports[0].reason).toBe('closed');
      client.close();
      expect(client.state).toBe('closed');
    } finally {
      client.close();
      await stop(wss);
    }
  });
});

describe('client edges: a real ws server that never completes the closing handshake', () => {
  it("releases its socket soon after close(), not after ws's 30 s close timer", async () => {
    let serverSocket: ServerSocket | undefined;
    const { wss, url } = await listen((socket) => {
      serverSocket = socket;
    });
    const sockets: WebSocket[] = [];
    const client = new RateLimitedClient(url, {
      reconnect: false,
      createSocket: (target) => {
        const socket = new WebSocket(target);
        sockets.push(socket);
        return socket as unknown as WebSocketLike;
      },
    });
    try {
      await opened(client);
      // The server stops reading: it never sees the client's close frame, never answers it.
      (serverSocket as unknown as { _socket: { pause(): void } })._socket.pause();
      const closedAt = performance.now();
      client.close();
      // The client terminates it 2 s after close(); ws alone would wait 30 s, an open TCP
      // socket and a timer keeping the Node process alive meanwhile.
      const deadline = closedAt + 10_000;
      while (sockets[0].readyState !== WebSocket.CLOSED && performance.now() < deadline) await sleep(50);
      expect(sockets[0].readyState).toBe(WebSocket.CLOSED);
      expect(performance.now() - closedAt).toBeGreaterThanOrEqual(1900);
    } finally {
      for (const socket of sockets) socket.terminate();
      await stop(wss);
    }
  });
});

describe('client edges: a server that never answers the upgrade', () => {
  // Before `openTimeoutMs`, a server that accepted the TCP connection and never answered the
  // upgrade left the client `connecting` for as long as the TCP connection lasted (for ever
  // on a healthy network): no reconnect, no error, the queue held.
  it('gives the handshake up after openTimeoutMs, reports it and reconnects; close() ends everything', async () => {
    const held: Socket[] = [];
    const ended = new Set<Socket>();
    const server = createServer((socket) => {
      held.push(socket);
      socket.on('error', () => undefined);
      // Read (and ignore) the upgrade request, so that the client's end is seen.
      socket.resume();
      socket.on('close', () => ended.add(socket));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `ws://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const client = new RateLimitedClient(url, {
      WebSocket,
      openTimeoutMs: 300,
      policyDelayMs: 0,
      backoffBaseMs: 1,
      backoffCapMs: 1,
    });
    const errors: unknown[] = [];
    const reconnects: { code: number; policy: boolean }[] = [];
    client.on('error', (error) => errors.push(error));
    client.on('reconnect', (event) => reconnects.push(event));
    try {
      expect(client.send('chat', 'kept')).toBe(true);
      const deadline = performance.now() + 15_000;
      while (reconnects.length < 2 && performance.now() < deadline) await sleep(50);
      expect(reconnects.slice(0, 2)).toEqual([
        expect.objectContaining({ code: 1006, policy: true }),
        expect.objectContaining({ code: 1006, policy: true }),
      ]);
      expect(String(errors[0])).toContain('the handshake did not complete within 300 ms');
      // Each attempt was a connection of its own, and the abandoned ones were ended.
      expect(held.length).toBeGreaterThanOrEqual(2);
      while (held.slice(0, 2).some((socket) => !ended.has(socket)) && performance.now() < deadline) await sleep(50);
      expect(held.slice(0, 2).map((socket) => ended.has(socket))).toEqual([true, true]);
      // The message is still queued, not lost.
      expect(client.queued).toBe(1);
    } finally {
      client.close();
      for (const socket of held) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('refuses an openTimeoutMs below 1 ms and a confirmMs that is not finite', () => {
    expect(
      () => new RateLimitedClient('ws://127.0.0.1:1', { WebSocket, autoConnect: false, openTimeoutMs: 0 }),
    ).toThrow('RateLimitedClient: options.openTimeoutMs must be a number >= 1, got 0');
    expect(
      () => new RateLimitedClient('ws://127.0.0.1:1', { WebSocket, autoConnect: false, confirmMs: Infinity }),
    ).toThrow('RateLimitedClient: options.confirmMs must be a finite number >= 0, got Infinity');
  });
});
