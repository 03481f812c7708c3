import { afterEach, beforeEach, describe, expect, it, jest } from '@jest/globals';
import fc from 'fast-check';
import {
  RateLimitedClient,
  parseRateLimitFrame,
  type ClientState,
  type DropEvent,
  type RateLimitInfo,
  type RateLimitNotice,
  type RateLimitedClientOptions,
  type ReconnectEvent,
  type UndeliveredEvent,
} from '../../lib/client/index.js';
import { FakeSocket, advance, harness, isAck, rateLimitFrame, type Harness } from './support/fake-socket.js';

beforeEach(() => {
  jest.useFakeTimers();
});

afterEach(() => {
  jest.clearAllTimers();
  jest.useRealTimers();
});

describe('RateLimitedClient: sending', () => {
  it('sends NestJS { event, data } frames, queueing them until the socket opens', () => {
    const h = harness();
    expect(h.client.state).toBe('connecting');
    expect(h.client.send('chat', { text: 'hi' })).toBe(true);
    expect(h.client.queued).toBe(1);
    expect(h.socket().sent).toEqual([]);

    h.socket().open();

    expect(h.client.state).toBe('open');
    expect(h.socket().sent.map(({ event, data }) => ({ event, data }))).toEqual([
      { event: 'chat', data: { text: 'hi' } },
    ]);
    expect(h.client.queued).toBe(0);
    h.client.close();
  });

  it('opens sockets with the WebSocket class and protocols given in the options', () => {
    const opened: FakeSocket[] = [];
    class Socket extends FakeSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, protocols);
        opened.push(this);
      }
    }
    const client = new RateLimitedClient('ws://example.test/chat', {
      WebSocket: Socket,
      protocols: ['v1'],
    });
    expect(opened).toHaveLength(1);
    expect(opened[0].url).toBe('ws://example.test/chat');
    expect(opened[0].protocols).toEqual(['v1']);
    client.close();
  });

  it('keeps one message of an event with an unknown limit unconfirmed at a time (confirmed by time)', () => {
    const h = harness();
    h.socket().open();
    for (let i = 0; i < 3; i++) expect(h.client.send('chat', i)).toBe(true);
    h.client.send('other', 'x');
    expect(h.socket().payloads()).toEqual([0]);

    advance(249);
    expect(h.socket().payloads()).toEqual([0]);
    advance(1);
    expect(h.socket().payloads()).toEqual([0, 1]);
    advance(250);
    // FIFO across events: 'other' waited behind chat 2, then goes with it.
    expect(h.socket().payloads()).toEqual([0, 1, 2, 'x']);
    h.client.close();
  });

  it('sends the next message as soon as the previous one is acknowledged when isAck is set', () => {
    const h = harness({ isAck });
    const messages: unknown[] = [];
    h.client.on('message', (message) => messages.push(message));
    h.socket().open();
    for (let i = 0; i < 3; i++) h.client.send('chat', i);
    expect(h.socket().payloads()).toEqual([0]);

    h.socket().receive({ event: 'ack', data: 0 });
    expect(h.socket().payloads()).toEqual([0, 1]);
    h.socket().receive({ event: 'ack', data: 1 });
    expect(h.socket().payloads()).toEqual([0, 1, 2]);
    expect(messages).toEqual([
      { event: 'ack', data: 0 },
      { event: 'ack', data: 1 },
    ]);
    h.client.close();
  });

  it('sends without waiting for confirmations when maxUnconfirmed is Infinity', () => {
    const h = harness({ maxUnconfirmed: Infinity });
    h.socket().open();
    for (let i = 0; i < 5; i++) h.client.send('chat', i);
    expect(h.socket().payloads()).toEqual([0, 1, 2, 3, 4]);
    h.client.close();
  });

  it('paces by declared limits from the start', () => {
    const h = harness({ limits: { types: { chat: { capacity: 2, refillPerSecond: 4 } } } });
    h.socket().open();
    for (let i = 0; i < 5; i++) h.client.send('chat', i);
    expect(h.socket().payloads()).toEqual([0, 1]);
    advance(249);
    expect(h.socket().payloads()).toEqual([0, 1]);
    advance(1);
    expect(h.socket().payloads()).toEqual([0, 1, 2]);
    advance(500);
    expect(h.socket().payloads()).toEqual([0, 1, 2, 3, 4]);
    h.client.close();
  });

  it('validates its options, naming the option', () => {
    const createSocket = (url: string) => new FakeSocket(url);
    expect(() => new RateLimitedClient('ws://x', { createSocket, maxQueue: -1 })).toThrow(/options\.maxQueue/);
    expect(() => new RateLimitedClient('ws://x', { createSocket, maxUnconfirmed: 0 })).toThrow(
      /options\.maxUnconfirmed/,
    );
    expect(() => new RateLimitedClient('ws://x', { createSocket, backoffCapMs: Infinity })).toThrow(
      /options\.backoffCapMs/,
    );
    for (const policyCloseCode of [999, 1006, 1015, 2000, 5000, 4008.5, NaN, '4008' as unknown as number]) {
      expect(() => new RateLimitedClient('ws://x', { createSocket, policyCloseCode })).toThrow(
        /options\.policyCloseCode must be a close code a server sends \(1000-1003, 1007-1014 or 3000-4999\)/,
      );
    }
    expect(
      () =>
        new RateLimitedClient('ws://x', {
          createSocket,
          overflow: 'drop-everything' as RateLimitedClientOptions['overflow'],
        }),
    ).toThrow(/options\.overflow/);
    expect(
      () =>
        new RateLimitedClient('ws://x', {
          createSocket,
          limits: { types: { chat: { capacity: 5, refillPerSecond: 0 } } },
        }),
    ).toThrow(/options\.limits\.types\.chat\.refillPerSecond/);

    const global = globalThis as { WebSocket?: unknown };
    const saved = global.WebSocket;
    delete global.WebSocket;
    try {
      expect(() => new RateLimitedClient('ws://x')).toThrow(/options\.WebSocket/);
    } finally {
      if (saved !== undefined) global.WebSocket = saved;
    }
  });
});

describe('RateLimitedClient: inbound frames', () => {
  it('reads both forms of the rate_limit frame', () => {
    expect(parseRateLimitFrame(rateLimitFrame(100))).toEqual({
      code: 'TYPE_LIMIT',
      messageType: 'chat',
      retryAfter: 100,
      warningCount: 1,
      limit: 5,
      remaining: 0,
    });
    expect(
      parseRateLimitFrame({
        type: 'rate_limit',
        code: 'GLOBAL_LIMIT',
        messageType: 'chat',
        retryAfter: 250,
        warningCount: 2,
      }),
    ).toEqual({ code: 'GLOBAL_LIMIT', messageType: 'chat', retryAfter: 250, warningCount: 2 });
    expect(parseRateLimitFrame({ event: 'chat', data: { retryAfter: 1 } })).toBeUndefined();
    expect(parseRateLimitFrame(null)).toBeUndefined();
    expect(parseRateLimitFrame('rate_limit')).toBeUndefined();
    // A missing or broken retryAfter must not mean "retry at once".
    expect(parseRateLimitFrame({ event: 'rate_limit', data: { retryAfter: -5 } })).toEqual({
      code: 'UNKNOWN',
      retryAfter: 1000,
    });
  });

  it('emits rateLimit for rate_limit frames and message for every other frame', () => {
    const h = harness();
    const messages: unknown[] = [];
    const limits: RateLimitInfo[] = [];
    h.client.on('message', (message) => messages.push(message));
    h.client.on('rateLimit', (info) => limits.push(info));
    h.socket().open();

    h.socket().receive({ event: 'chat', data: 'hello' });
    h.socket().receive(rateLimitFrame(100));
    h.socket().receive({ type: 'rate_limit', code: 'EXPENSIVE_LIMIT', retryAfter: 5000 });
    h.socket().onmessage?.({
      data: new TextEncoder().encode(JSON.stringify({ event: 'bytes', data: 1 })),
    });

    expect(messages).toEqual([
      { event: 'chat', data: 'hello' },
      { event: 'bytes', data: 1 },
    ]);
    expect(limits.map((info) => [info.code, info.retryAfter])).toEqual([
      ['TYPE_LIMIT', 100],
      ['EXPENSIVE_LIMIT', 5000],
    ]);
    h.client.close();
  });

  it('reports unreadable frames and throwing listeners as errors', () => {
    const h = harness();
    const errors: unknown[] = [];
    h.client.on('error', (error) => errors.push(error));
    h.client.on('message', () => {
      throw new Error('listener bug');
    });
    h.socket().open();

    h.socket().receive('not json');
    h.socket().onmessage?.({ data: { some: 'object' } });
    h.socket().receive({ event: 'chat' });

    expect(errors).toHaveLength(3);
    expect(String(errors[0])).toMatch(/not JSON/);
    expect(String(errors[1])).toMatch(/unreadable/);
    expect(String(errors[2])).toMatch(/listener bug/);
    h.client.close();
  });
});

describe('RateLimitedClient: retry windows and pacing', () => {
  it('re-sends the rejected message after retryAfter and sends nothing before', () => {
    const h = harness();
    const states: ClientState[] = [];
    h.client.on('state', (state) => states.push(state));
    h.socket().open();
    for (let i = 0; i < 3; i++) h.client.send('chat', i);
    expect(h.socket().payloads()).toEqual([0]);

    h.socket().receive(rateLimitFrame(400));
    expect(h.client.state).toBe('rate_limited');
    expect(h.client.queued).toBe(3);

    advance(399);
    expect(h.socket().payloads()).toEqual([0]);
    expect(h.client.state).toBe('rate_limited');
    advance(1);
    expect(h.socket().payloads()).toEqual([0, 0]);
    expect(h.client.state).toBe('open');
    expect(states).toEqual(['open', 'rate_limited', 'open']);

    // Paced at max(retryAfter, minPaceMs) = 400 ms per message.
    advance(399);
    expect(h.socket().payloads()).toEqual([0, 0]);
    advance(1);
    expect(h.socket().payloads()).toEqual([0, 0, 1]);
    advance(400);
    expect(h.socket().payloads()).toEqual([0, 0, 1, 2]);
    h.client.close();
  });

  it('paces at minPaceMs after a short retryAfter, then allows the learned burst once idle', () => {
    const h = harness();
    h.socket().open();
    const start = performance.now();
    for (let i = 0; i < 5; i++) h.client.send('chat', i);
    h.socket().receive(rateLimitFrame(60, { limit: 3 }));

    advance(60 + 4 * 125);
    const times = h.socket().sent.map((frame) => frame.at - start);
    expect(h.socket().payloads()).toEqual([0, 0, 1, 2, 3, 4]);
    expect(times).toEqual([0, 60, 185, 310, 435, 560]);

    // Idle long enough for the model to refill 3 tokens: a burst of 3 goes at once.
    advance(3 * 125);
    for (let i = 5; i < 9; i++) h.client.send('chat', i);
    expect(h.socket().payloads().slice(6)).toEqual([5, 6, 7]);
    advance(124);
    expect(h.socket().payloads().slice(6)).toEqual([5, 6, 7]);
    advance(1);
    expect(h.socket().payloads().slice(6)).toEqual([5, 6, 7, 8]);
    h.client.close();
  });

  it('doubles the pace when a message it had paced is rejected all the same', () => {
    const h = harness();
    h.socket().open();
    for (let i = 0; i < 3; i++) h.client.send('chat', i);
    h.socket().receive(rateLimitFrame(60));
    advance(60);
    expect(h.socket().payloads()).toEqual([0, 0]);

    // The server's refill is slower than minPaceMs assumed: 0 is rejected again.
    h.socket().receive(rateLimitFrame(100));
    advance(100);
    expect(h.socket().payloads()).toEqual([0, 0, 0]);
    advance(249);
    expect(h.socket().payloads()).toEqual([0, 0, 0]);
    advance(1);
    expect(h.socket().payloads()).toEqual([0, 0, 0, 1]);
    h.client.close();
  });

  it('without acks and with several messages unconfirmed, reports the burst it cannot attribute and sends none twice', () => {
    // Issue 10: the client used to assume the newest messages were refused and re-sent
    // them; a wrong guess delivered an accepted message twice.
    const h = harness({ maxUnconfirmed: Infinity, messageIds: false });
    const reports: UndeliveredEvent[] = [];
    h.client.on('undelivered', (report) => reports.push(report));
    h.socket().open();
    for (let i = 0; i < 5; i++) h.client.send('chat', i);
    // Three of the five were refused (the frames carry no id): which three is unknown.
    for (const retryAfter of [100, 100, 100]) h.socket().receive(rateLimitFrame(retryAfter));
    expect(h.client.queued).toBe(0);
    expect(reports).toEqual([]);

    // Confirmed by time: once they reach confirmMs, the group is reported, not guessed at.
    advance(10_000);
    expect(h.socket().payloads()).toEqual([0, 1, 2, 3, 4]);
    expect(reports).toEqual([
      {
        reason: 'ambiguous',
        messages: [0, 1, 2, 3, 4].map((data) => ({ event: 'chat', data })),
        requeued: [],
        refused: 3,
        acknowledged: 0,
      },
    ]);
    h.client.close();
  });

  it('re-sends the messages of a burst once the frames without ids account for every one of them', () => {
    const h = harness({ maxUnconfirmed: Infinity, messageIds: false });
    const notices: RateLimitNotice[] = [];
    h.client.on('rateLimit', (notice) => notices.push(notice));
    h.socket().open();
    for (let i = 0; i < 3; i++) h.client.send('chat', i);
    for (let i = 0; i < 3; i++) h.socket().receive(rateLimitFrame(100));
    expect(h.client.queued).toBe(3);
    expect(notices.map((notice) => notice.messages?.map((message) => message.data))).toEqual([
      undefined,
      undefined,
      [0, 1, 2],
    ]);
    advance(100 + 2 * 125);
    expect(h.socket().payloads()).toEqual([0, 1, 2, 0, 1, 2]);
    h.client.close();
  });

  it('holds every event after GLOBAL_LIMIT, and paces them all', () => {
    const h = harness({ maxUnconfirmed: Infinity });
    h.socket().open();
    h.client.send('chat', 0);
    h.socket().receive(rateLimitFrame(200, { code: 'GLOBAL_LIMIT', limit: 100 }));
    h.client.send('other', 'x');
    expect(h.socket().payloads()).toEqual([0]);

    advance(199);
    expect(h.socket().payloads()).toEqual([0]);
    advance(1);
    expect(h.socket().payloads()).toEqual([0, 0]);
    advance(200);
    expect(h.socket().payloads()).toEqual([0, 0, 'x']);
    h.client.close();
  });

  it('holds everything after STORE_UNAVAILABLE without learning a pace', () => {
    const h = harness({ maxUnconfirmed: Infinity });
    h.socket().open();
    h.client.send('a', 0);
    h.socket().receive(rateLimitFrame(300, { code: 'STORE_UNAVAILABLE', messageType: 'a' }));
    h.client.send('b', 1);
    h.client.send('c', 2);

    advance(299);
    expect(h.socket().payloads()).toEqual([0]);
    advance(1);
    expect(h.socket().payloads()).toEqual([0, 0, 1, 2]);
    h.client.close();
  });

  it('keeps FIFO order: a held event also holds the messages queued behind it', () => {
    const h = harness({ maxUnconfirmed: Infinity });
    h.socket().open();
    h.client.send('chat', 0);
    h.socket().receive(rateLimitFrame(100));
    h.client.send('other', 'x');
    advance(99);
    expect(h.socket().payloads()).toEqual([0]);
    advance(1);
    expect(h.socket().payloads()).toEqual([0, 0, 'x']);
    h.client.close();
  });

  it('delivers a burst against a simulated token-bucket server completely, in order, rejected at most once', () => {
    fc.assert(
      fc.property(
        fc.record({
          capacity: fc.integer({ min: 1, max: 10 }),
          // 1000 / refill <= minPaceMs (125 ms), the documented condition.
          refillPerSecond: fc.integer({ min: 8, max: 50 }),
          burst: fc.integer({ min: 1, max: 40 }),
          latencyMs: fc.integer({ min: 0, max: 20 }),
          acks: fc.boolean(),
          messageIds: fc.boolean(),
          echoIds: fc.boolean(),
        }),
        ({ capacity, refillPerSecond, burst, latencyMs, acks, messageIds, echoIds }) => {
          const h = harness(acks ? { isAck, messageIds } : { messageIds });
          const server = simulatedServer(h.socket(), capacity, refillPerSecond, latencyMs, echoIds);
          h.socket().open();
          for (let i = 0; i < burst; i++) h.client.send('chat', i);
          advance(60_000);

          expect(server.accepted).toEqual(Array.from({ length: burst }, (_, i) => i));
          expect(server.rejections.length).toBeLessThanOrEqual(1);
          for (const { at, retryAfter } of server.rejections) {
            expect(server.arrivals.filter((t) => t > at && t < at + retryAfter)).toEqual([]);
          }
          h.client.close();
          expect(jest.getTimerCount()).toBe(0);
        },
      ),
      { numRuns: 60 },
    );
  });
});

/**
 * Plays a server with one token bucket per connection that processes frames in order
 * after `latencyMs`, answers accepted ones with an ack and rejected ones with a frame,
 * which echoes the message's id when `echoIds` is set (as WsRateLimitAdapter does).
 */
function simulatedServer(
  socket: FakeSocket,
  capacity: number,
  refillPerSecond: number,
  latencyMs: number,
  echoIds = false,
): { accepted: unknown[]; arrivals: number[]; rejections: { at: number; retryAfter: number }[] } {
  const accepted: unknown[] = [];
  const arrivals: number[] = [];
  const rejections: { at: number; retryAfter: number }[] = [];
  let tokens = capacity;
  let updatedAt = performance.now();
  const send = socket.send.bind(socket);
  socket.send = (data: string) => {
    send(data);
    const { data: payload, id } = JSON.parse(data) as { data: unknown; id?: unknown };
    setTimeout(() => {
      const t = performance.now();
      arrivals.push(t);
      tokens = Math.min(capacity, tokens + ((t - updatedAt) * refillPerSecond) / 1000);
      updatedAt = t;
      let reply: unknown;
      if (tokens >= 1) {
        tokens -= 1;
        accepted.push(payload);
        reply = { event: 'ack', data: payload };
      } else {
        const retryAfter = Math.ceil(((1 - tokens) / refillPerSecond) * 1000);
        rejections.push({ at: t, retryAfter });
        reply = rateLimitFrame(retryAfter, echoIds && id !== undefined ? { limit: capacity, id } : { limit: capacity });
      }
      setTimeout(() => {
        if (socket.readyState === 1) socket.receive(reply);
      }, latencyMs);
    }, latencyMs);
  };
  return { accepted, arrivals, rejections };
}

describe('RateLimitedClient: message ids', () => {
  it('sends { event, data, id } with an id unique per message, and the same id when it sends a message again', () => {
    const h = harness({ maxUnconfirmed: Infinity });
    h.socket().open();
    for (let i = 0; i < 3; i++) h.client.send('chat', i);
    h.client.sendPriority('get_limits');
    expect(h.socket().sent[0].raw).toBe('{"event":"chat","data":0,"id":0}');
    expect(h.socket().ids()).toEqual([0, 1, 2, 3]);

    h.socket().receive(rateLimitFrame(100, { id: 1 }));
    advance(100);
    expect(h.socket().payloads()).toEqual([0, 1, 2, undefined, 1]);
    expect(h.socket().ids()).toEqual([0, 1, 2, 3, 1]);
    h.client.close();
  });

  it('sends plain { event, data } when messageIds is false', () => {
    const h = harness({ messageIds: false });
    h.socket().open();
    h.client.send('chat', 'hi');
    h.client.sendPriority('ping');
    expect(h.socket().sent.map((frame) => frame.raw)).toEqual(['{"event":"chat","data":"hi"}', '{"event":"ping"}']);
    expect(() => harness({ messageIds: 'yes' as unknown as boolean })).toThrow(/options\.messageIds/);
    h.client.close();
  });

  it('reads the id a rate_limit frame echoes, in either form, ignoring ids the server would not echo', () => {
    expect(parseRateLimitFrame(rateLimitFrame(100, { id: 7 }))?.id).toBe(7);
    expect(parseRateLimitFrame({ type: 'rate_limit', code: 'TYPE_LIMIT', retryAfter: 1, id: 'm-1' })?.id).toBe('m-1');
    for (const id of ['x'.repeat(65), 1.5, 2 ** 53, { n: 1 }, null]) {
      expect(parseRateLimitFrame(rateLimitFrame(100, { id }))).not.toHaveProperty('id');
    }
  });

  it('re-sends exactly the message a frame names, where inference would blame another', () => {
    const run = (messageIds: boolean): { payloads: unknown[]; refused: unknown } => {
      const h = harness({ maxUnconfirmed: Infinity, messageIds });
      let refused: unknown;
      h.client.on('rateLimit', (notice) => (refused = notice.message));
      h.socket().open();
      for (let i = 0; i < 5; i++) h.client.send('chat', i);
      // The server refused message 1 only (a token came back before 2 arrived).
      h.socket().receive(rateLimitFrame(100, messageIds ? { id: 1 } : {}));
      advance(10_000);
      const payloads = h.socket().payloads();
      h.client.close();
      return { payloads, refused };
    };

    expect(run(true)).toEqual({ payloads: [0, 1, 2, 3, 4, 1], refused: { event: 'chat', data: 1, id: 1 } });
    // Without ids the frame may refuse any of the five: the client names none and sends
    // none again (it used to blame the newest, here sending the accepted 4 twice).
    expect(run(false)).toEqual({ payloads: [0, 1, 2, 3, 4], refused: undefined });
  });

  it('re-sends a refused message whose frame came after it was presumed accepted', () => {
    const h = harness();
    const notices: RateLimitInfo[] = [];
    h.client.on('rateLimit', (notice) => notices.push(notice));
    h.socket().open();
    h.client.send('chat', 0);
    h.client.send('chat', 1);
    advance(250);
    expect(h.socket().payloads()).toEqual([0, 1]);

    // A slow server: the frame refusing 0 arrives after confirmMs, once 1 is on its way.
    advance(50);
    h.socket().receive(rateLimitFrame(100, { id: 0 }));
    expect(h.client.queued).toBe(1);
    advance(99);
    expect(h.socket().payloads()).toEqual([0, 1]);
    advance(1);
    expect(h.socket().payloads()).toEqual([0, 1, 0]);
    advance(10_000);
    expect(h.socket().payloads()).toEqual([0, 1, 0]);
    expect(notices).toEqual([expect.objectContaining({ id: 0, message: { event: 'chat', data: 0, id: 0 } })]);
    h.client.close();
  });

  it('blames none of its messages for a frame naming an id it does not know, but keeps the retry window', () => {
    const h = harness();
    const notices: RateLimitInfo[] = [];
    h.client.on('rateLimit', (notice) => notices.push(notice));
    h.socket().open();
    h.client.send('chat', 0);
    h.socket().receive(rateLimitFrame(300, { id: 'not-mine' }));
    h.client.send('chat', 1);
    expect(h.client.queued).toBe(1);

    advance(299);
    expect(h.socket().payloads()).toEqual([0]);
    advance(1);
    expect(h.socket().payloads()).toEqual([0, 1]);
    expect(notices).toHaveLength(1);
    expect(notices[0]).not.toHaveProperty('message');
    h.client.close();
  });

  it('treats an error frame echoing an id as the answer to that message', () => {
    const h = harness();
    const messages: unknown[] = [];
    h.client.on('message', (message) => messages.push(message));
    h.socket().open();
    h.client.send('nope', 0);
    h.client.send('nope', 1);
    expect(h.socket().payloads()).toEqual([0]);

    // Answered: the next message of the event needs no confirmMs wait.
    h.socket().receive({ event: 'error', data: { code: 'UNKNOWN_EVENT', id: 0 } });
    expect(h.socket().payloads()).toEqual([0, 1]);
    // An error frame naming no message of this client confirms nothing.
    h.client.send('nope', 2);
    h.socket().receive({ event: 'error', data: { code: 'UNKNOWN_EVENT', id: 99 } });
    expect(h.socket().payloads()).toEqual([0, 1]);
    expect(messages).toHaveLength(2);
    h.client.close();
  });

  it('finds a refused message by its id after an ack confirmed another one in its place', () => {
    // The server answers get_limits late (an async handler), so the chat's ack comes first
    // and, by position, confirms get_limits; the frame refusing the chat must still find it.
    const h = harness({ isAck: (message) => isAck(message) || (message as { event?: unknown }).event === 'status' });
    h.socket().open();
    h.client.sendPriority('get_limits');
    h.client.send('chat', 'a');
    h.client.send('chat', 'b');
    h.socket().receive({ event: 'ack' });
    h.socket().receive(rateLimitFrame(100, { id: 1 }));
    h.socket().receive({ event: 'status' });
    advance(100);
    expect(h.socket().payloads()).toEqual([undefined, 'a', 'a']);
    h.socket().receive({ event: 'ack' });
    // Then paced by the bucket learned from the frame (one message per 125 ms).
    advance(125);
    expect(h.socket().payloads()).toEqual([undefined, 'a', 'a', 'b']);
    h.client.close();
  });

  it('delivers every message of a burst sent all at once exactly once, given ids', () => {
    fc.assert(
      fc.property(
        fc.record({
          capacity: fc.integer({ min: 1, max: 10 }),
          refillPerSecond: fc.integer({ min: 8, max: 50 }),
          burst: fc.integer({ min: 1, max: 40 }),
          latencyMs: fc.integer({ min: 0, max: 20 }),
        }),
        ({ capacity, refillPerSecond, burst, latencyMs }) => {
          // No confirmation gate: the whole burst is in flight before the first frame.
          const h = harness({ maxUnconfirmed: Infinity });
          const server = simulatedServer(h.socket(), capacity, refillPerSecond, latencyMs, true);
          h.socket().open();
          for (let i = 0; i < burst; i++) h.client.send('chat', i);
          advance(120_000);

          expect([...server.accepted].sort((a, b) => (a as number) - (b as number))).toEqual(
            Array.from({ length: burst }, (_, i) => i),
          );
          expect(h.client.queued).toBe(0);
          h.client.close();
          expect(jest.getTimerCount()).toBe(0);
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe('RateLimitedClient: priority sends', () => {
  it('skips the queue and any retry window, but only while open', () => {
    const h = harness();
    expect(h.client.sendPriority('ping', 'early')).toBe(false);
    expect(h.client.queued).toBe(0);

    h.socket().open();
    h.client.send('chat', 0);
    h.socket().receive(rateLimitFrame(1000));
    h.client.send('chat', 1);
    expect(h.client.sendPriority('ping', 'now')).toBe(true);
    expect(h.socket().sent.map((frame) => frame.event)).toEqual(['chat', 'ping']);
    expect(h.client.queued).toBe(2);
    h.client.close();
  });

  it('reports a rejected priority message as dropped and does not re-send it', () => {
    const h = harness();
    const drops: DropEvent[] = [];
    h.client.on('drop', (drop) => drops.push(drop));
    h.socket().open();
    h.client.sendPriority('search', { q: 'x' });
    h.socket().receive(rateLimitFrame(100, { code: 'EXPENSIVE_LIMIT', messageType: 'search' }));

    advance(1000);
    expect(h.socket().sent).toHaveLength(1);
    expect(drops).toEqual([{ reason: 'rejected', message: { event: 'search', data: { q: 'x' }, id: 0 } }]);
    expect(h.client.dropped).toBe(1);
    h.client.close();
  });
});

describe('RateLimitedClient: bounded queue', () => {
  function fill(overflow: 'drop-oldest' | 'drop-newest' | 'reject'): {
    h: Harness;
    results: boolean[];
    drops: DropEvent[];
  } {
    const h = harness({ maxQueue: 2, overflow, maxUnconfirmed: Infinity });
    const drops: DropEvent[] = [];
    h.client.on('drop', (drop) => drops.push(drop));
    const results = ['a', 'b', 'c'].map((data) => h.client.send('chat', data));
    return { h, results, drops };
  }

  it("'drop-oldest' (the default) evicts the oldest queued message", () => {
    const { h, results, drops } = fill('drop-oldest');
    expect(results).toEqual([true, true, true]);
    expect(drops).toEqual([{ reason: 'queue_full', message: { event: 'chat', data: 'a', id: 0 } }]);
    expect(h.client.dropped).toBe(1);
    h.socket().open();
    expect(h.socket().payloads()).toEqual(['b', 'c']);
    h.client.close();
  });

  it("'drop-newest' discards the new message and reports it", () => {
    const { h, results, drops } = fill('drop-newest');
    expect(results).toEqual([true, true, false]);
    expect(drops).toEqual([{ reason: 'queue_full', message: { event: 'chat', data: 'c', id: 2 } }]);
    expect(h.client.dropped).toBe(1);
    h.socket().open();
    expect(h.socket().payloads()).toEqual(['a', 'b']);
    h.client.close();
  });

  it("'reject' refuses the new message; the caller keeps it, nothing is dropped", () => {
    const { h, results, drops } = fill('reject');
    expect(results).toEqual([true, true, false]);
    expect(drops).toEqual([]);
    expect(h.client.dropped).toBe(0);
    h.socket().open();
    expect(h.socket().payloads()).toEqual(['a', 'b']);
    h.client.close();
  });

  it('uses the default policy when the default bound is reached', () => {
    const h = harness();
    for (let i = 0; i < 1001; i++) h.client.send('chat', i);
    expect(h.client.queued).toBe(1000);
    expect(h.client.dropped).toBe(1);
    h.client.close();
  });
});

describe('RateLimitedClient: close()', () => {
  it('stops every timer, drops the queue and never reconnects', () => {
    const h = harness();
    const drops: DropEvent[] = [];
    h.client.on('drop', (drop) => drops.push(drop));
    h.socket().open();
    for (let i = 0; i < 3; i++) h.client.send('chat', i);
    h.socket().receive(rateLimitFrame(5000));
    expect(jest.getTimerCount()).toBeGreaterThan(0);

    h.client.close();

    expect(jest.getTimerCount()).toBe(0);
    expect(h.client.state).toBe('closed');
    expect(h.socket().closeCalls).toEqual([{ code: 1000, reason: undefined }]);
    expect(drops.map((drop) => [drop.reason, drop.message.data])).toEqual([
      ['closed', 0],
      ['closed', 1],
      ['closed', 2],
    ]);
    expect(h.client.send('chat', 'late')).toBe(false);

    // The close handshake completing later must not bring the client back.
    h.socket().serverClose(1000);
    advance(120_000);
    expect(h.sockets).toHaveLength(1);
    expect(jest.getTimerCount()).toBe(0);
  });

  it('cancels a scheduled reconnect', () => {
    const h = harness({ random: () => 0.5 });
    h.socket().open();
    h.socket().serverClose(1006);
    expect(h.client.state).toBe('reconnecting');
    expect(jest.getTimerCount()).toBe(1);

    h.client.close();
    expect(jest.getTimerCount()).toBe(0);
    advance(120_000);
    expect(h.sockets).toHaveLength(1);
  });

  it('can connect again afterwards', () => {
    const h = harness();
    h.client.close();
    h.client.connect();
    expect(h.sockets).toHaveLength(2);
    expect(h.client.state).toBe('connecting');
    h.client.close();
  });
});

describe('RateLimitedClient: reconnecting', () => {
  it('waits a full-jitter back-off within [0, min(cap, base * 2^attempt)] before each reconnect', () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), {
          minLength: 1,
          maxLength: 12,
        }),
        (draws) => {
          let draw = 0;
          const h = harness({
            backoffBaseMs: 100,
            backoffCapMs: 2000,
            random: () => draws[draw++],
          });
          const scheduled: ReconnectEvent[] = [];
          h.client.on('reconnect', (event) => scheduled.push(event));

          for (let attempt = 0; attempt < draws.length; attempt++) {
            h.socket().open();
            h.socket().serverClose(1006);
            const ceiling = Math.min(2000, 100 * 2 ** attempt);
            const { delayMs, policy } = scheduled[attempt];
            expect(scheduled[attempt].attempt).toBe(attempt);
            expect(policy).toBe(false);
            expect(delayMs).toBeGreaterThanOrEqual(0);
            expect(delayMs).toBeLessThan(ceiling);
            expect(delayMs).toBe(Math.floor(draws[attempt] * ceiling));

            const before = h.sockets.length;
            if (delayMs >= 1) {
              advance(delayMs - 1);
              expect(h.sockets).toHaveLength(before);
            }
            advance(1);
            expect(h.sockets).toHaveLength(before + 1);
          }
          h.client.close();
          expect(jest.getTimerCount()).toBe(0);
        },
      ),
      { numRuns: 50 },
    );
  });

  it.each([
    ['a close 1008', (socket: FakeSocket) => (socket.open(), socket.serverClose(1008, 'Rate limit violations'))],
    ['a refused handshake', (socket: FakeSocket) => socket.refuse()],
  ])('does not reconnect at once after %s (no storm over a minute)', (_, hostile) => {
    // random 0: the back-off alone would reconnect at once, every time.
    const h = harness({ random: () => 0 });
    const scheduled: ReconnectEvent[] = [];
    h.client.on('reconnect', (event) => scheduled.push(event));
    hostile(h.socket());

    for (let elapsed = 0; elapsed < 60_000; elapsed += 100) {
      advance(100);
      if (h.socket().readyState === 0) hostile(h.socket());
    }

    // Connections at 0 s, 30 s and 60 s at most.
    expect(h.sockets.length).toBeGreaterThanOrEqual(2);
    expect(h.sockets.length).toBeLessThanOrEqual(3);
    for (const event of scheduled) {
      expect(event.policy).toBe(true);
      expect(event.delayMs).toBeGreaterThanOrEqual(30_000);
    }
    h.client.close();
    expect(jest.getTimerCount()).toBe(0);
  });

  it("waits policyDelayMs after a close with the server's own violations.closeCode, given as policyCloseCode", () => {
    const scheduled: ReconnectEvent[] = [];
    const h = harness({ random: () => 0, policyCloseCode: 4008 });
    h.client.on('reconnect', (event) => scheduled.push(event));
    h.socket().open();
    h.socket().serverClose(4008, 'Slow down');
    // Another code is an ordinary close: the back-off alone (0 with this random source).
    advance(30_000);
    h.socket().open();
    h.socket().serverClose(4000, 'bye');
    expect(scheduled).toEqual([
      { attempt: 0, delayMs: 30_000, code: 4008, policy: true },
      { attempt: 1, delayMs: 0, code: 4000, policy: false },
    ]);
    h.client.close();
    expect(jest.getTimerCount()).toBe(0);
  });

  it('waits max(policyDelayMs, back-off) after each refused handshake, the back-off still growing', () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { minLength: 1, maxLength: 10 }),
        fc.integer({ min: 0, max: 5000 }),
        (draws, policyDelayMs) => {
          let draw = 0;
          const h = harness({ backoffBaseMs: 500, backoffCapMs: 8000, policyDelayMs, random: () => draws[draw++] });
          const scheduled: ReconnectEvent[] = [];
          h.client.on('reconnect', (event) => scheduled.push(event));

          for (let attempt = 0; attempt < draws.length; attempt++) {
            h.socket().refuse();
            const backoff = Math.floor(draws[attempt] * Math.min(8000, 500 * 2 ** attempt));
            expect(scheduled[attempt]).toEqual({
              attempt,
              delayMs: Math.max(policyDelayMs, backoff),
              code: 1006,
              policy: true,
            });
            const before = h.sockets.length;
            const { delayMs } = scheduled[attempt];
            if (delayMs >= 1) {
              advance(delayMs - 1);
              expect(h.sockets).toHaveLength(before);
            }
            advance(1);
            expect(h.sockets).toHaveLength(before + 1);
          }
          h.client.close();
          expect(jest.getTimerCount()).toBe(0);
        },
      ),
      { numRuns: 40 },
    );
  });

  it('keeps the back-off under its cap however many attempts fail', () => {
    const h = harness({ backoffBaseMs: 1000, backoffCapMs: 30_000, random: () => 1 - Number.EPSILON });
    const scheduled: ReconnectEvent[] = [];
    h.client.on('reconnect', (event) => scheduled.push(event));
    for (let i = 0; i < 1100; i++) {
      h.socket().open();
      h.socket().serverClose(1006);
      advance(scheduled[i].delayMs);
    }
    expect(scheduled.map((event) => event.attempt)).toEqual(Array.from({ length: 1100 }, (_, i) => i));
    for (const { delayMs } of scheduled) {
      expect(Number.isInteger(delayMs)).toBe(true);
      expect(delayMs).toBeGreaterThanOrEqual(0);
      expect(delayMs).toBeLessThan(30_000);
    }
    // From attempt 5 on, base * 2^attempt is past the cap: the ceiling is the cap itself.
    expect(scheduled.slice(5).every((event) => event.delayMs === 29_999)).toBe(true);
    h.client.close();
  });

  it('resets the back-off once a connection has stayed open for stableMs', () => {
    const h = harness({ random: () => 0.5, backoffBaseMs: 1000, stableMs: 5000 });
    const scheduled: ReconnectEvent[] = [];
    h.client.on('reconnect', (event) => scheduled.push(event));

    h.socket().open();
    h.socket().serverClose(1006);
    advance(500);
    h.socket().open();
    h.socket().serverClose(1006);
    advance(1000);
    h.socket().open();
    advance(5000);
    h.socket().serverClose(1001);

    expect(scheduled.map((event) => [event.attempt, event.delayMs])).toEqual([
      [0, 500],
      [1, 1000],
      [0, 500],
    ]);
    h.client.close();
  });

  it('gives up after maxReconnectAttempts: closed, queue dropped, error emitted, no timers', () => {
    const h = harness({ maxReconnectAttempts: 2, random: () => 0, policyDelayMs: 0 });
    const errors: unknown[] = [];
    const drops: DropEvent[] = [];
    h.client.on('error', (error) => errors.push(error));
    h.client.on('drop', (drop) => drops.push(drop));
    h.client.send('chat', 'pending');

    for (let i = 0; i < 3; i++) {
      h.socket().refuse();
      advance(1);
    }

    expect(h.sockets).toHaveLength(3);
    expect(h.client.state).toBe('closed');
    expect(String(errors[errors.length - 1])).toMatch(/gave up after 2 reconnect attempts/);
    expect(drops).toEqual([{ reason: 'closed', message: { event: 'chat', data: 'pending', id: 0 } }]);
    expect(jest.getTimerCount()).toBe(0);
  });

  it('does not reconnect when reconnect is false', () => {
    const h = harness({ reconnect: false });
    h.socket().open();
    h.socket().serverClose(1006);
    expect(h.client.state).toBe('closed');
    expect(jest.getTimerCount()).toBe(0);
  });

  it('goes through the expected states', () => {
    const h = harness({ autoConnect: false, random: () => 0 });
    const states: ClientState[] = [];
    h.client.on('state', (state) => states.push(state));
    expect(h.client.state).toBe('closed');
    expect(h.client.send('chat', 'too early')).toBe(false);

    h.client.connect();
    h.socket().open();
    h.client.send('chat', 0);
    h.socket().receive(rateLimitFrame(100));
    advance(100);
    h.socket().serverClose(1006);
    advance(1);
    h.socket().open();
    h.client.close();

    expect(states).toEqual([
      'connecting',
      'open',
      'rate_limited',
      'open',
      'reconnecting',
      'connecting',
      'open',
      'closed',
    ]);
  });
});
