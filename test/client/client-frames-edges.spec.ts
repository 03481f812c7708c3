import { afterEach, beforeEach, describe, expect, it, jest } from '@jest/globals';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server, type Socket as IoServerSocket } from 'socket.io';
import { io } from 'socket.io-client';
import '../support/io-settle.js';
import { WebSocket } from 'ws';
import {
  RateLimitedClient,
  isSocketIoAck,
  socketIoFactory,
  type DropEvent,
  type RateLimitNotice,
  type ReconnectEvent,
  type UndeliveredEvent,
} from '../../lib/client/index.js';
import { MAX_EVENT_TYPES, MAX_LEARNED_MODELS } from '../../lib/client/rate-limited-client.js';
import { Throttle, WsRateLimit, WsRateLimitAdapter, WsRateLimitModule } from '../../lib/index.js';
import { startApp, type RunningApp } from '../support/app.js';
import { advance, harness, isAck, rateLimitFrame, type Harness } from './support/fake-socket.js';
import { listen, rateLimit, sleep, stop, waitFor } from './support/ws-server.js';

// These cases came from a review of lib/client (real servers: a NestJS app with the library,
// or a bare `ws` server scripted on 127.0.0.1 for exact frame shapes; then fake sockets for
// exact timings). Three failed before the fix that came with them:
// - four events sharing one @Throttle type kept spending the shared bucket until the server closed 1008;
// - with 'requeue', a message the server closed 1009 for was re-sent on every reconnect, blocking the queue;
// - frames naming ever new messageTypes made the client learn a pacing model per type, never freed.

// ---------------------------------------------------------------------------------------
// A real NestJS app: two events sharing one @Throttle type.
// ---------------------------------------------------------------------------------------

const EVENTS = ['cursor_move', 'cursor_click', 'cursor_scroll', 'cursor_hover'] as const;

@WebSocketGateway()
@WsRateLimit()
class SharedTypeGateway {
  @Throttle({ type: 'cursor', capacity: 5, refillRate: 5 })
  @SubscribeMessage('cursor_move')
  move(@MessageBody() data: { seq: number }) {
    return { event: 'ack', data: { event: 'cursor_move', seq: data.seq } };
  }

  @Throttle({ type: 'cursor', capacity: 5, refillRate: 5 })
  @SubscribeMessage('cursor_click')
  click(@MessageBody() data: { seq: number }) {
    return { event: 'ack', data: { event: 'cursor_click', seq: data.seq } };
  }

  @Throttle({ type: 'cursor', capacity: 5, refillRate: 5 })
  @SubscribeMessage('cursor_scroll')
  scroll(@MessageBody() data: { seq: number }) {
    return { event: 'ack', data: { event: 'cursor_scroll', seq: data.seq } };
  }

  @Throttle({ type: 'cursor', capacity: 5, refillRate: 5 })
  @SubscribeMessage('cursor_hover')
  hover(@MessageBody() data: { seq: number }) {
    return { event: 'ack', data: { event: 'cursor_hover', seq: data.seq } };
  }
}

describe('client frames edges: a real NestJS app (WsRateLimitAdapter)', () => {
  let running: RunningApp | undefined;
  const clients: RateLimitedClient[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await running?.close();
    running = undefined;
  });

  const start = async (): Promise<string> => {
    running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            tracker: 'connection',
            global: { capacity: 1000, refillRate: 1000 },
            violations: { max: 10, windowMs: 60_000 },
          }),
        ],
        providers: [SharedTypeGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    return running.url;
  };

  /** Sends `count` messages cycling over `events`; resolves with what happened. */
  const burst = async (events: readonly string[], count: number) => {
    const client = new RateLimitedClient(await start(), {
      WebSocket,
      policyDelayMs: 60_000, // a 1008 is seen as a scheduled reconnect, which afterEach cancels
      isAck: (message) => {
        const { event, data } = message as { event?: string; data?: { event?: string } };
        return event === 'ack' && typeof data?.event === 'string' ? { event: data.event } : false;
      },
    });
    clients.push(client);
    const notices: RateLimitNotice[] = [];
    const acked: number[] = [];
    const closes: number[] = [];
    client.on('rateLimit', (notice) => notices.push(notice));
    client.on('message', (message) => {
      const { event, data } = message as { event?: string; data?: { seq: number } };
      if (event === 'ack' && data) acked.push(data.seq);
    });
    client.on('reconnect', (event) => closes.push(event.code));
    client.on('error', () => undefined);
    expect(await waitFor(() => client.state === 'open')).toBe(true);
    for (let seq = 0; seq < count; seq++) client.send(events[seq % events.length], { seq });
    await waitFor(() => acked.length === count || closes.length > 0, 40_000);
    return { notices, acked, closes };
  };

  it('one event over a 5-message type limit: 40 messages delivered in order, refused once', async () => {
    const { notices, acked, closes } = await burst(['cursor_move'], 40);
    expect(closes).toEqual([]);
    expect(acked).toEqual(Array.from({ length: 40 }, (_, seq) => seq));
    expect(notices.length).toBeLessThanOrEqual(2);
  }, 60_000);

  it('four events sharing one @Throttle type: paced by the type the frames name, all 40 delivered, no 1008', async () => {
    const { notices, acked, closes } = await burst(EVENTS, 40);
    // Every frame names the limit type 'cursor' (and the refused message by id): the client
    // learns each event's type from the frame refusing it, and paces all four by the one
    // window and model of 'cursor'. Keyed by the refused message's event instead, the
    // three other events went on spending the same bucket, each refused in turn, and the
    // 10th violation closed the connection (1008) after 7 of 40 messages.
    expect({ closes, delivered: acked.length }).toEqual({ closes: [], delivered: 40 });
    // One refusal per event teaches the client its type; then, as for one event above, at
    // most one more for the pace misjudged (minPaceMs, 125 ms, is below the 200 ms refill).
    expect(notices.length).toBeLessThanOrEqual(EVENTS.length + 1);
    expect(notices.every((notice) => notice.messageType === 'cursor')).toBe(true);
  }, 60_000);
});

// ---------------------------------------------------------------------------------------
// Bare ws servers, scripted.
// ---------------------------------------------------------------------------------------

describe('client frames edges: close codes', () => {
  it("with undelivered 'requeue', the message a close 1009 refused (too big) is dropped, not re-sent, and the queue goes on", async () => {
    const received: string[] = [];
    let connections = 0;
    const { wss, url } = await listen(
      (socket) => {
        connections++;
        socket.on('message', (raw) => {
          const { event } = JSON.parse(String(raw)) as { event: string };
          received.push(event);
          socket.send(JSON.stringify({ event: 'ack' }));
        });
      },
      { maxPayload: 1024 },
    );
    const client = new RateLimitedClient(url, {
      WebSocket,
      undelivered: 'requeue',
      isAck: (message) => (message as { event?: string }).event === 'ack',
      random: () => 0.5,
      backoffBaseMs: 20,
      backoffCapMs: 200,
      policyDelayMs: 20,
    });
    const reports: UndeliveredEvent[] = [];
    const drops: DropEvent[] = [];
    const reconnects: ReconnectEvent[] = [];
    client.on('undelivered', (report) => reports.push(report));
    client.on('drop', (drop) => drops.push(drop));
    client.on('reconnect', (event) => reconnects.push(event));
    client.on('error', () => undefined);
    try {
      expect(await waitFor(() => client.state === 'open')).toBe(true);
      client.send('upload', 'x'.repeat(4096)); // over the server's 1024-byte frame limit: close 1009
      client.send('chat', 'small'); // fits
      await waitFor(() => received.includes('chat') || connections >= 5, 20_000);
      // The 1009 names the message just sent as one that can never be accepted: re-queued,
      // it would end every later connection the same way, with 'chat' stuck behind it. It
      // is dropped (reason 'rejected') instead, and 'chat' goes on the next connection.
      expect(reconnects.map((event) => event.code)).toContain(1009);
      // No report says 'upload' was re-queued.
      const uploadRequeued = reports.filter((report) => report.requeued.some((m) => m.event === 'upload')).length;
      expect({ chatDelivered: received.includes('chat'), uploadRequeued: Math.min(uploadRequeued, 1) }).toEqual({
        chatDelivered: true,
        uploadRequeued: 0,
      });
      expect(drops.map((drop) => [drop.reason, drop.message.event])).toEqual([['rejected', 'upload']]);
    } finally {
      client.close();
      await stop(wss);
    }
  }, 40_000);
});

describe('client frames edges: hostile rate_limit frames', () => {
  it('frames naming ever new messageTypes the client never sent leave no model nor window behind', async () => {
    const FRAMES = 20_000;
    let done = false;
    const { wss, url } = await listen((socket) => {
      // A server (buggy or hostile) refusing "types" the client never sent, each once,
      // with a short retryAfter: every window ends after 5 ms.
      for (let i = 0; i < FRAMES; i++) socket.send(rateLimit({ messageType: `type-${i}`, retryAfter: 5, limit: 10 }));
      socket.send(JSON.stringify({ event: 'done' }));
    });
    const client = new RateLimitedClient(url, { WebSocket, reconnect: false });
    client.on('message', (message) => {
      if ((message as { event?: string }).event === 'done') done = true;
    });
    try {
      expect(await waitFor(() => done, 30_000)).toBe(true);
      await sleep(100); // every retry window has ended; nothing is held
      client.send('chat', 'hello'); // a pump pass prunes what it can
      await sleep(50);
      const internals = client as unknown as {
        typeBudgets: Map<string, unknown>;
        typeBlockedUntil: Map<string, number>;
        eventTypes?: Map<string, string>;
      };
      // No message of this client has any of these types: nothing is learned for them (a
      // model per type, kept forever, let memory grow with every messageType a server names).
      expect(internals.typeBlockedUntil.size).toBeLessThan(100);
      expect(internals.typeBudgets.size).toBeLessThan(100);
      expect(internals.eventTypes?.size ?? 0).toBe(0);
    } finally {
      client.close();
      await stop(wss);
    }
  }, 60_000);
});

describe('client frames edges: held messages across a reconnect', () => {
  it("with 'requeue', re-sends refused and unanswered messages once each, in send order, before newer ones", async () => {
    const perConnection: number[][] = [];
    const { wss, url } = await listen((socket, index) => {
      const seen: number[] = [];
      perConnection[index] = seen;
      socket.on('message', (raw) => {
        const { data, id } = JSON.parse(String(raw)) as { data: number; id: number };
        seen.push(data);
        if (index > 0) {
          socket.send(JSON.stringify({ event: 'ack', data: { id } }));
          return;
        }
        // First connection: refuse 0 (by id), accept 1, leave 2 and 3 unanswered, then drop.
        if (data === 0) socket.send(rateLimit({ messageType: 'chat', retryAfter: 300, limit: 10, id }));
        if (data === 1) socket.send(JSON.stringify({ event: 'ack', data: { id } }));
        if (data === 3) setTimeout(() => socket.terminate(), 50);
      });
    });
    const client = new RateLimitedClient(url, {
      WebSocket,
      undelivered: 'requeue',
      maxUnconfirmed: Infinity,
      isAck: (message) => {
        const { event, data } = message as { event?: string; data?: { id?: number } };
        return event === 'ack' ? { id: data?.id } : false;
      },
      random: () => 0.5,
      backoffBaseMs: 100,
    });
    const reports: UndeliveredEvent[] = [];
    client.on('undelivered', (report) => reports.push(report));
    client.on('error', () => undefined);
    try {
      expect(await waitFor(() => client.state === 'open')).toBe(true);
      for (let i = 0; i < 4; i++) client.send('chat', i);
      expect(await waitFor(() => client.state === 'reconnecting')).toBe(true);
      client.send('chat', 4);
      client.send('chat', 5);
      // All five (then a while for any sent twice): on a loaded machine the fifth can take
      // longer than the pause after the fourth.
      expect(await waitFor(() => (perConnection[1]?.length ?? 0) >= 5)).toBe(true);
      await sleep(300);
      expect(perConnection[0]).toEqual([0, 1, 2, 3]);
      expect(perConnection[1]).toEqual([0, 2, 3, 4, 5]);
      expect(reports).toHaveLength(1);
      expect(reports[0]).toMatchObject({ reason: 'closed', code: 1006 });
      expect(reports[0].messages.map((m) => m.data)).toEqual([2, 3]);
      expect(reports[0].requeued.map((m) => m.data)).toEqual([2, 3]);
    } finally {
      client.close();
      await stop(wss);
    }
  }, 30_000);

  it('close() with held messages drops each once (reason closed), send() after close() returns false, and nothing keeps the process alive', async () => {
    const timers = () => process.getActiveResourcesInfo().filter((name) => name === 'Timeout').length;
    const sockets = () => process.getActiveResourcesInfo().filter((name) => name.startsWith('TCP')).length;
    const baseline = { timers: timers(), sockets: sockets() };
    const { wss, url } = await listen((socket) => {
      socket.on('message', (raw) => {
        const { id } = JSON.parse(String(raw)) as { id: number };
        // A 60 s retry window, and a server that then drops the connection: the client
        // holds the refused message and reconnects (a timer) meanwhile.
        socket.send(rateLimit({ code: 'GLOBAL_LIMIT', retryAfter: 60_000, limit: 100, id }));
      });
    });
    const client = new RateLimitedClient(url, { WebSocket, backoffBaseMs: 60_000, random: () => 0.9 });
    const drops: DropEvent[] = [];
    const notices: RateLimitNotice[] = [];
    client.on('drop', (drop) => drops.push(drop));
    client.on('rateLimit', (notice) => notices.push(notice));
    client.on('error', () => undefined);
    try {
      expect(await waitFor(() => client.state === 'open')).toBe(true);
      client.send('chat', 0);
      expect(await waitFor(() => notices.length === 1)).toBe(true);
      for (let i = 1; i < 5; i++) expect(client.send('chat', i)).toBe(true);
      expect(client.state).toBe('rate_limited');
      expect(client.queued).toBe(5);
      for (const socket of wss.clients) socket.terminate();
      expect(await waitFor(() => client.state === 'reconnecting')).toBe(true);
      client.close();
      expect(client.send('chat', 99)).toBe(false);
      expect(client.sendPriority('chat', 98)).toBe(false);
      expect(drops.map((drop) => [drop.reason, drop.message.data])).toEqual([0, 1, 2, 3, 4].map((i) => ['closed', i]));
      expect(client.queued).toBe(0);
    } finally {
      client.close();
      await stop(wss);
    }
    await sleep(100);
    // Earlier tests' leftovers may still be closing: nothing of this test may remain.
    expect(timers()).toBeLessThanOrEqual(baseline.timers);
    expect(sockets()).toBeLessThanOrEqual(baseline.sockets);
  }, 30_000);
});

// ---------------------------------------------------------------------------------------
// A bare socket.io server, scripted.
// ---------------------------------------------------------------------------------------

async function ioListen(
  onConnection: (socket: IoServerSocket, index: number) => void,
): Promise<{ url: string; close(): Promise<void> }> {
  const http = createServer();
  const server = new Server(http, { transports: ['websocket'] });
  let index = 0;
  server.on('connection', (socket) => onConnection(socket, index++));
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(http.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.disconnectSockets(true);
        void server.close(() => resolve());
      }),
  };
}

type Ack = (reply: unknown) => void;

describe('client frames edges: socket.io variant', () => {
  it("a server kick ('io server disconnect') reports the unanswered messages (1006) and, with 'requeue', re-sends them once, in order", async () => {
    const timers = () => process.getActiveResourcesInfo().filter((name) => name === 'Timeout').length;
    const sockets = () => process.getActiveResourcesInfo().filter((name) => name.startsWith('TCP')).length;
    const baseline = { timers: timers(), sockets: sockets() };
    const perConnection: number[][] = [];
    const server = await ioListen((socket, index) => {
      const seen: number[] = [];
      perConnection[index] = seen;
      socket.on('chat', (data: { seq: number }, ack: Ack) => {
        seen.push(data.seq);
        if (index > 0) return ack({ seq: data.seq });
        // First connection: answer 0, keep 1 and 2 unanswered, then kick the client.
        if (data.seq === 0) ack({ seq: 0 });
        if (data.seq === 2) setTimeout(() => socket.disconnect(true), 50);
      });
    });
    const client = new RateLimitedClient(server.url, {
      createSocket: socketIoFactory(io, { transports: ['websocket'] }),
      isAck: isSocketIoAck,
      maxUnconfirmed: Infinity,
      undelivered: 'requeue',
      random: () => 0.5,
      backoffBaseMs: 100,
    });
    const reports: UndeliveredEvent[] = [];
    const reconnects: ReconnectEvent[] = [];
    client.on('undelivered', (report) => reports.push(report));
    client.on('reconnect', (event) => reconnects.push(event));
    client.on('error', () => undefined);
    try {
      expect(await waitFor(() => client.state === 'open')).toBe(true);
      for (let seq = 0; seq < 3; seq++) client.send('chat', { seq });
      expect(await waitFor(() => (perConnection[1]?.length ?? 0) >= 2)).toBe(true);
      await sleep(200);
      expect(perConnection[0]).toEqual([0, 1, 2]);
      expect(perConnection[1]).toEqual([1, 2]);
      expect(reconnects.map((event) => [event.code, event.policy])).toEqual([[1006, false]]);
      expect(reports.map((report) => [report.reason, report.code, report.requeued.map((m) => m.data)])).toEqual([
        ['closed', 1006, [{ seq: 1 }, { seq: 2 }]],
      ]);
    } finally {
      client.close();
      await server.close();
    }
    // Nothing of socket.io-client (managers, engine timers, sockets) outlives close() for
    // long (the server side may take a few hundred ms to finish closing).
    await waitFor(() => timers() <= baseline.timers && sockets() <= baseline.sockets, 3000);
    expect(timers()).toBeLessThanOrEqual(baseline.timers);
    expect(sockets()).toBeLessThanOrEqual(baseline.sockets);
  }, 30_000);

  it('acks answered out of order (a refusal after a later reply) re-send exactly the refused message', async () => {
    const seen: number[] = [];
    const server = await ioListen((socket) => {
      const pending: Array<{ seq: number; ack: Ack }> = [];
      let refused = false;
      socket.on('chat', (data: { seq: number }, ack: Ack) => {
        seen.push(data.seq);
        if (refused || data.seq !== 0) {
          pending.push({ seq: data.seq, ack });
        } else {
          pending.push({ seq: 0, ack });
        }
        if (pending.length === 2 && !refused) {
          refused = true;
          // Reply to 1 first, then refuse 0 through its ack.
          pending[1].ack({ seq: 1 });
          pending[0].ack({
            event: 'rate_limit',
            data: { code: 'TYPE_LIMIT', messageType: 'chat', retryAfter: 200, warningCount: 1, limit: 5, remaining: 0 },
          });
          pending.splice(0);
        } else if (refused) {
          pending.splice(0).forEach((entry) => entry.ack({ seq: entry.seq }));
        }
      });
    });
    const client = new RateLimitedClient(server.url, {
      createSocket: socketIoFactory(io, { transports: ['websocket'] }),
      isAck: isSocketIoAck,
      maxUnconfirmed: Infinity,
    });
    const notices: RateLimitNotice[] = [];
    client.on('rateLimit', (notice) => notices.push(notice));
    client.on('error', () => undefined);
    try {
      expect(await waitFor(() => client.state === 'open')).toBe(true);
      client.send('chat', { seq: 0 });
      client.send('chat', { seq: 1 });
      expect(await waitFor(() => seen.length >= 3)).toBe(true);
      await sleep(400);
      expect(seen).toEqual([0, 1, 0]);
      expect(notices.map((notice) => notice.message?.data)).toEqual([{ seq: 0 }]);
    } finally {
      client.close();
      await server.close();
    }
  }, 30_000);
});

// ---------------------------------------------------------------------------------------
// Fake sockets, for exact timings and bounds.
// ---------------------------------------------------------------------------------------

/** The client's type bookkeeping, read for the bounds it must keep. */
function internals(h: Harness): {
  typeBudgets: Map<string, unknown>;
  typeBlockedUntil: Map<string, number>;
  eventTypes: Map<string, string>;
} {
  return h.client as unknown as ReturnType<typeof internals>;
}

describe('client frames edges: shared types, close 1009 and bounds (fake sockets)', () => {
  beforeEach(() => {
    jest.useFakeTimers();
  });

  afterEach(() => {
    jest.clearAllTimers();
    jest.useRealTimers();
  });

  it("once frames name the type two events share, both are paced by that type's one window and model", () => {
    const h = harness({ isAck });
    h.socket().open();
    // Two events, each its own type until a frame says otherwise: both go at once.
    expect(h.client.send('move', 0)).toBe(true);
    expect(h.client.send('click', 1)).toBe(true);
    expect(h.socket().payloads()).toEqual([0, 1]);
    h.socket().receive(rateLimitFrame(500, { messageType: 'cursor', id: 0, limit: 2 }));
    h.socket().receive(rateLimitFrame(500, { messageType: 'cursor', id: 1, limit: 2 }));
    expect([...internals(h).eventTypes]).toEqual([
      ['move', 'cursor'],
      ['click', 'cursor'],
    ]);
    expect([...internals(h).typeBudgets.keys()]).toEqual(['cursor']);
    advance(499);
    expect(h.socket().payloads()).toEqual([0, 1]);
    advance(1);
    // The bucket holds one token: the oldest refused message takes it, the other waits.
    expect(h.socket().payloads()).toEqual([0, 1, 0]);
    advance(499);
    expect(h.socket().payloads()).toEqual([0, 1, 0]);
    advance(1);
    expect(h.socket().sent.map((frame) => [frame.event, frame.data])).toEqual([
      ['move', 0],
      ['click', 1],
      ['move', 0],
      ['click', 1],
    ]);
    // A message of either event sent now waits for the type's next token too.
    expect(h.client.send('move', 2)).toBe(true);
    expect(h.socket().payloads()).toEqual([0, 1, 0, 1]);
    advance(500);
    expect(h.socket().payloads()).toEqual([0, 1, 0, 1, 2]);
    h.client.close();
  });

  it("a close 1009 drops the largest unanswered message (reason 'rejected'), not the first, and re-queues the others", () => {
    const h = harness({ undelivered: 'requeue', random: () => 0.5, backoffBaseMs: 100 });
    const reports: UndeliveredEvent[] = [];
    const drops: DropEvent[] = [];
    h.client.on('undelivered', (report) => reports.push(report));
    h.client.on('drop', (drop) => drops.push(drop));
    h.socket().open();
    const big = 'x'.repeat(4096);
    h.client.send('a', 'small'); // read by the server, its reply still on its way
    h.client.send('upload', big); // the server closes at it
    h.client.send('b', 'small'); // never read
    expect(h.socket().sent).toHaveLength(3);
    h.socket().serverClose(1009, 'Max payload size exceeded');
    expect(drops).toEqual([{ reason: 'rejected', message: { event: 'upload', data: big, id: 1 } }]);
    expect(h.client.dropped).toBe(1);
    expect(reports).toHaveLength(1);
    expect(reports[0]).toMatchObject({ reason: 'closed', code: 1009, refused: 0, acknowledged: 0 });
    expect(reports[0].messages.map((m) => m.event)).toEqual(['a', 'b']);
    expect(reports[0].requeued.map((m) => m.event)).toEqual(['a', 'b']);
    advance(100);
    expect(h.sockets).toHaveLength(2);
    h.socket().open();
    expect(h.socket().sent.map((frame) => frame.event)).toEqual(['a', 'b']);
    h.client.close();
  });

  it("a close 1009 under the 'drop' policy reports the refused message as a drop, not as undelivered", () => {
    const h = harness({ random: () => 0.5, backoffBaseMs: 100 });
    const reports: UndeliveredEvent[] = [];
    const drops: DropEvent[] = [];
    h.client.on('undelivered', (report) => reports.push(report));
    h.client.on('drop', (drop) => drops.push(drop));
    h.socket().open();
    h.client.send('upload', 'x'.repeat(4096));
    h.client.send('chat', 'small');
    h.socket().serverClose(1009);
    expect(drops.map((drop) => [drop.reason, drop.message.event])).toEqual([['rejected', 'upload']]);
    expect(reports.map((report) => [report.code, report.messages.map((m) => m.event), report.requeued])).toEqual([
      [1009, ['chat'], []],
    ]);
    h.client.close();
  });

  it(`keeps at most ${MAX_LEARNED_MODELS} learned models, evicting one back to full capacity first, never a declared one`, () => {
    const h = harness({
      isAck,
      maxUnconfirmed: Infinity,
      limits: { types: { declared: { capacity: 5, refillPerSecond: 5 } } },
    });
    h.client.on('error', () => undefined);
    h.socket().open();
    const learned = () => [...internals(h).typeBudgets.keys()].filter((key) => key !== 'declared');
    for (let i = 0; i < MAX_LEARNED_MODELS; i++) expect(h.client.send(`e${i}`, i)).toBe(true);
    expect(h.socket().sent).toHaveLength(MAX_LEARNED_MODELS);
    // t0, the least recently learned, gets a long window; the others a short one.
    for (let i = 0; i < MAX_LEARNED_MODELS; i++) {
      h.socket().receive(rateLimitFrame(i === 0 ? 60_000 : 10, { messageType: `t${i}`, id: i, limit: 3 }));
    }
    expect(learned()).toHaveLength(MAX_LEARNED_MODELS);
    advance(1000); // every model but t0's is back to full capacity, its window over
    expect(h.client.sendPriority('extra', 'x')).toBe(true);
    h.socket().receive(rateLimitFrame(10, { messageType: 'extra-type', id: MAX_LEARNED_MODELS, limit: 3 }));
    expect(learned()).toHaveLength(MAX_LEARNED_MODELS);
    expect(internals(h).typeBudgets.has('extra-type')).toBe(true);
    expect(internals(h).typeBudgets.has('t0')).toBe(true); // least recently used, but still holding e0 back
    expect(internals(h).typeBudgets.has('t1')).toBe(false);
    expect(internals(h).typeBudgets.has('declared')).toBe(true);
    h.client.close();
  });

  it(`keeps at most ${MAX_EVENT_TYPES} event -> type pairs, forgetting the least recently used`, () => {
    const h = harness({ isAck, maxUnconfirmed: Infinity });
    h.socket().open();
    const count = MAX_EVENT_TYPES + 10;
    for (let i = 0; i < count; i++) expect(h.client.send(`e${i}`, i)).toBe(true);
    for (let i = 0; i < count; i++) h.socket().receive(rateLimitFrame(10, { messageType: `t${i}`, id: i }));
    const { eventTypes, typeBudgets } = internals(h);
    expect(eventTypes.size).toBe(MAX_EVENT_TYPES);
    expect(eventTypes.has('e9')).toBe(false);
    expect(eventTypes.get('e10')).toBe('t10');
    expect(eventTypes.get(`e${count - 1}`)).toBe(`t${count - 1}`);
    expect(typeBudgets.size).toBe(MAX_LEARNED_MODELS);
    h.client.close();
  });

  it('a TYPE_LIMIT frame naming neither a type nor a message still holds everything for its retryAfter', () => {
    const h = harness({ isAck });
    h.socket().open();
    h.socket().receive({ event: 'rate_limit', data: { code: 'TYPE_LIMIT', retryAfter: 300 } });
    expect(h.client.send('chat', 0)).toBe(true);
    expect(h.client.state).toBe('rate_limited');
    advance(299);
    expect(h.socket().payloads()).toEqual([]);
    advance(1);
    expect(h.socket().payloads()).toEqual([0]);
    h.client.close();
  });

  it('a frame naming a type no message of the client has learns nothing and holds nothing back', () => {
    const h = harness({ isAck });
    h.socket().open();
    h.socket().receive(rateLimitFrame(60_000, { messageType: 'other', limit: 3 }));
    expect(internals(h).typeBudgets.size).toBe(0);
    expect(internals(h).typeBlockedUntil.size).toBe(0);
    expect(h.client.send('other', 0)).toBe(true);
    expect(h.socket().payloads()).toEqual([0]);
    h.client.close();
  });
});
