import { afterEach, beforeEach, describe, expect, it, jest } from '@jest/globals';
import fc from 'fast-check';
import type {
  OutboundMessage,
  RateLimitNotice,
  RateLimitedClientOptions,
  UndeliveredEvent,
} from '../../lib/client/index.js';
import { advance, harness, isAck, rateLimitFrame, type FakeSocket, type Harness } from './support/fake-socket.js';

// Issue 10 (C-31): the client never loses a message silently. Every message gets a reply,
// a rate_limit frame, or an `undelivered` report; answers are attributed whatever order
// they come in, and never by a guess that would send an accepted message twice.

beforeEach(() => {
  jest.useFakeTimers();
});

afterEach(() => {
  jest.clearAllTimers();
  jest.useRealTimers();
});

const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i);

/** A client with the events this spec reads recorded. */
function recorded(options: RateLimitedClientOptions): Harness & {
  reports: UndeliveredEvent[];
  notices: RateLimitNotice[];
  drops: OutboundMessage[];
} {
  const h = harness({ maxUnconfirmed: 100, policyDelayMs: 1000, random: () => 0, ...options });
  const reports: UndeliveredEvent[] = [];
  const notices: RateLimitNotice[] = [];
  const drops: OutboundMessage[] = [];
  h.client.on('undelivered', (report) => reports.push(report));
  h.client.on('rateLimit', (notice) => notices.push(notice));
  h.client.on('drop', (drop) => drops.push(drop.message));
  return Object.assign(h, { reports, notices, drops });
}

/** What the server saw of the chats on one socket: their payloads. */
const chats = (socket: FakeSocket): unknown[] =>
  socket.sent.filter((frame) => frame.event === 'chat').map((frame) => frame.data);

const payloads = (messages: OutboundMessage[]): unknown[] => messages.map((message) => message.data);

describe('RateLimitedClient: messages a close leaves unanswered', () => {
  // The burst: 45 chats against a capacity of 30 and a close at the 10th
  // violation. The server refuses 30-39 (frames naming them), stops reading after the
  // close decision (40-44 never processed), and loses some acks at the close.
  function burstOf45(options: RateLimitedClientOptions): ReturnType<typeof recorded> {
    const h = recorded({ isAck, ...options });
    h.socket().open();
    for (let i = 0; i < 45; i++) h.client.send('chat', i);
    expect(chats(h.socket())).toEqual(range(0, 45));
    // The stock adapter writes the frames before the acks of earlier messages.
    for (let id = 30; id < 40; id++) h.socket().receive(rateLimitFrame(100, { id, limit: 30 }));
    for (let i = 0; i < 20; i++) h.socket().receive({ event: 'ack' });
    h.socket().serverClose(1008, 'Rate limit violations');
    return h;
  }

  it("reports them at the close and, by default ('drop'), gives them up", () => {
    // The reconnect's socket is opened by hand after a minute: no handshake time-out meanwhile.
    const h = burstOf45({ openTimeoutMs: Infinity });
    expect(h.reports).toEqual([
      {
        reason: 'closed',
        code: 1008,
        messages: [...range(20, 30), ...range(40, 45)].map((i) => ({ event: 'chat', data: i, id: i })),
        requeued: [],
        refused: 0,
        acknowledged: 0,
      },
    ]);
    // The refused ones, named by the frames, go again after the reconnect; nothing else does.
    expect(h.notices.map((notice) => notice.message?.id)).toEqual(range(30, 40));
    advance(60_000);
    expect(h.sockets).toHaveLength(2);
    h.socket().open();
    advance(60_000);
    expect(chats(h.socket())).toEqual(range(30, 40));
    expect(h.socket().ids()).toEqual(range(30, 40));
    expect(h.drops).toEqual([]);
    h.client.close();
  });

  it("with 'requeue', sends them again after the reconnect, in send order and with the same ids", () => {
    const h = burstOf45({ undelivered: 'requeue' });
    expect(h.reports).toHaveLength(1);
    expect(payloads(h.reports[0].requeued)).toEqual([...range(20, 30), ...range(40, 45)]);
    expect(h.reports[0].requeued).toEqual(h.reports[0].messages);
    expect(h.client.queued).toBe(25);
    advance(1000);
    h.socket().open();
    advance(60_000);
    expect(chats(h.socket())).toEqual(range(20, 45));
    expect(h.socket().ids()).toEqual(range(20, 45));
    h.client.close();
  });

  it('re-queues neither priority messages nor anything when it will not reconnect', () => {
    const h = recorded({ undelivered: 'requeue', reconnect: false });
    h.socket().open();
    h.client.sendPriority('get_limits');
    h.client.send('chat', 'a');
    h.socket().serverClose(1006);
    expect(h.reports).toEqual([expect.objectContaining({ reason: 'closed', code: 1006, requeued: [] })]);
    expect(h.reports[0].messages.map((message) => message.event)).toEqual(['get_limits', 'chat']);

    const again = recorded({ undelivered: 'requeue' });
    again.socket().open();
    again.client.sendPriority('get_limits');
    again.client.send('chat', 'a');
    again.socket().serverClose(1006);
    expect(payloads(again.reports[0].requeued)).toEqual(['a']);
    again.client.close();
  });

  it('reports what is unanswered when the application closes the client', () => {
    const h = recorded({ undelivered: 'requeue' });
    h.socket().open();
    h.client.send('chat', 'a');
    h.client.close(1000);
    expect(h.reports).toEqual([
      {
        reason: 'closed',
        code: 1000,
        messages: [{ event: 'chat', data: 'a', id: 0 }],
        requeued: [],
        refused: 0,
        acknowledged: 0,
      },
    ]);
  });

  it('stays closed when a listener of the report closes the client', () => {
    const h = recorded({ undelivered: 'requeue' });
    h.client.on('undelivered', () => h.client.close());
    h.socket().open();
    h.client.send('chat', 'a');
    h.socket().serverClose(1006);
    expect(h.client.state).toBe('closed');
    advance(60_000);
    expect(h.sockets).toHaveLength(1);
    expect(jest.getTimerCount()).toBe(0);
  });

  it('without isAck, reports what was sent within confirmMs of the close, and nothing older', () => {
    const h = recorded({ maxUnconfirmed: Infinity });
    h.socket().open();
    h.client.send('chat', 'old');
    advance(300);
    h.client.send('chat', 'new');
    h.socket().serverClose(1001);
    expect(h.reports.map((report) => payloads(report.messages))).toEqual([['new']]);
    h.client.close();
  });
});

describe('RateLimitedClient: answers without ids, in any order', () => {
  const options: RateLimitedClientOptions = { isAck, messageIds: false };

  it('re-sends the refused message when the frame comes after the acks of earlier ones', () => {
    const h = recorded(options);
    h.socket().open();
    for (let i = 0; i < 31; i++) h.client.send('chat', i);
    for (let i = 0; i < 30; i++) h.socket().receive({ event: 'ack' });
    h.socket().receive(rateLimitFrame(100, { limit: 30 }));
    expect(h.notices[0].message).toEqual({ event: 'chat', data: 30 });
    advance(100);
    expect(chats(h.socket())).toEqual([...range(0, 31), 30]);
    expect(h.reports).toEqual([]);
    h.client.close();
  });

  it('sends nothing twice when the frame overtakes the acks, and reports the group it cannot split', () => {
    const h = recorded(options);
    h.socket().open();
    for (let i = 0; i < 31; i++) h.client.send('chat', i);
    h.socket().receive(rateLimitFrame(100, { limit: 30 }));
    expect(h.notices[0]).not.toHaveProperty('message');
    for (let i = 0; i < 30; i++) h.socket().receive({ event: 'ack' });
    advance(60_000);
    expect(chats(h.socket())).toEqual(range(0, 31));
    expect(h.reports).toEqual([
      {
        reason: 'ambiguous',
        messages: range(0, 31).map((i) => ({ event: 'chat', data: i })),
        requeued: [],
        refused: 1,
        acknowledged: 30,
      },
    ]);
    h.client.close();
  });

  it("the issue's 45 chats: no duplicate, no silent loss, whatever the policy", () => {
    for (const undelivered of ['drop', 'requeue'] as const) {
      const h = recorded({ ...options, undelivered });
      h.socket().open();
      for (let i = 0; i < 45; i++) h.client.send('chat', i);
      for (let i = 0; i < 10; i++) h.socket().receive(rateLimitFrame(100, { limit: 30 }));
      for (let i = 0; i < 12; i++) h.socket().receive({ event: 'ack' });
      expect(h.client.queued).toBe(0);
      h.socket().serverClose(1008);
      // 12 acks and 10 frames for 45 messages, none attributable: all reported, none re-queued.
      expect(h.reports).toEqual([
        {
          reason: 'closed',
          code: 1008,
          messages: range(0, 45).map((i) => ({ event: 'chat', data: i })),
          requeued: [],
          refused: 10,
          acknowledged: 12,
        },
      ]);
      advance(1000);
      h.socket().open();
      advance(60_000);
      expect(chats(h.socket())).toEqual([]);
      h.client.close();
    }
  });

  it('re-queues a group refused by frames alone when the connection ends (no ack makes it doubtful)', () => {
    // An in-order server: acks of 0-29, then frames for 30-39, then the close.
    const h = recorded({ ...options, undelivered: 'requeue' });
    h.socket().open();
    for (let i = 0; i < 45; i++) h.client.send('chat', i);
    for (let i = 0; i < 30; i++) h.socket().receive({ event: 'ack' });
    for (let i = 0; i < 10; i++) h.socket().receive(rateLimitFrame(100, { limit: 30 }));
    h.socket().serverClose(1008);
    expect(h.reports).toEqual([expect.objectContaining({ refused: 10, acknowledged: 0 })]);
    expect(payloads(h.reports[0].messages)).toEqual(range(30, 45));
    expect(h.reports[0].requeued).toEqual(h.reports[0].messages);
    advance(1000);
    h.socket().open();
    advance(60_000);
    expect(chats(h.socket())).toEqual(range(30, 45));
    h.client.close();
  });

  it("uses the frame's messageType: a frame about chat never blames a search", () => {
    const h = recorded(options);
    h.socket().open();
    h.client.send('search', 's');
    h.client.send('chat', 'c');
    h.socket().receive(rateLimitFrame(100, { messageType: 'chat' }));
    expect(h.notices[0].message).toEqual({ event: 'chat', data: 'c' });
    h.client.close();
  });

  it('attributes acks by the event isAck names, so a slow reply of another event does not shift them', () => {
    // search answers late; chat's ack and then a frame for the second chat arrive first.
    const h = recorded({
      messageIds: false,
      isAck: (message) => {
        const frame = message as { event?: string; data?: { messageType?: string } };
        return frame.event === 'ack' || frame.event === 'search_results'
          ? { event: frame.event === 'ack' ? frame.data?.messageType : 'search' }
          : false;
      },
    });
    h.socket().open();
    h.client.send('search', 's');
    h.client.send('chat', 'c0');
    h.client.send('chat', 'c1');
    h.socket().receive({ event: 'ack', data: { messageType: 'chat' } });
    h.socket().receive(rateLimitFrame(100, { messageType: 'chat' }));
    expect(h.notices[0].message).toEqual({ event: 'chat', data: 'c1' });
    h.socket().receive({ event: 'search_results' });
    advance(100);
    expect(h.socket().payloads()).toEqual(['s', 'c0', 'c1', 'c1']);
    h.client.close();
  });

  it('confirms exactly the message an ack names by id, and none for an id it does not know', () => {
    const h = recorded({
      isAck: (message) => {
        const frame = message as { event?: string; id?: number };
        return frame.event === 'ack' && { id: frame.id };
      },
    });
    h.socket().open();
    for (let i = 0; i < 3; i++) h.client.send('chat', i);
    h.socket().receive({ event: 'ack', id: 2 });
    h.socket().receive({ event: 'ack', id: 99 });
    h.socket().receive({ event: 'ack', id: 0 });
    h.socket().serverClose(1006);
    expect(h.reports.map((report) => payloads(report.messages))).toEqual([[1]]);
    h.client.close();
  });
});

describe('RateLimitedClient: timers', () => {
  const MAX_TIMER_MS = 2 ** 31 - 1;

  it('waits out a retryAfter of 30 days without a spinning timer', () => {
    const delays: number[] = [];
    const original = globalThis.setTimeout;
    const spy = jest.spyOn(globalThis, 'setTimeout').mockImplementation(((handler: () => void, delay?: number) => {
      delays.push(delay ?? 0);
      return original(handler, delay);
    }) as typeof setTimeout);
    try {
      const h = recorded({ isAck });
      h.socket().open();
      h.client.send('chat', 0);
      const thirtyDays = 30 * 24 * 3600 * 1000;
      h.socket().receive(rateLimitFrame(thirtyDays, { code: 'GLOBAL_LIMIT', limit: 1, id: 0 }));
      h.client.send('chat', 1);
      advance(60_000);
      expect(Math.max(...delays)).toBe(MAX_TIMER_MS);
      expect(delays.length).toBeLessThan(5);
      expect(chats(h.socket())).toEqual([0]);
      advance(MAX_TIMER_MS);
      expect(chats(h.socket())).toEqual([0]);
      advance(thirtyDays - MAX_TIMER_MS);
      expect(chats(h.socket())).toEqual([0, 0]);
      expect(delays.every((delay) => delay >= 1 && delay <= MAX_TIMER_MS)).toBe(true);
      h.client.close();
    } finally {
      spy.mockRestore();
    }
  });

  it('cuts a reconnect delay to the longest timer', () => {
    const h = recorded({ policyDelayMs: 40 * 24 * 3600 * 1000 });
    const delays: number[] = [];
    h.client.on('reconnect', (event) => delays.push(event.delayMs));
    h.socket().open();
    h.socket().serverClose(1008);
    expect(delays).toEqual([MAX_TIMER_MS]);
    advance(1000);
    expect(h.sockets).toHaveLength(1);
    h.client.close();
  });

  it('validates the undelivered option, naming it', () => {
    expect(() => harness({ undelivered: 'keep' as 'drop' })).toThrow(/options\.undelivered/);
  });
});

/**
 * A server with one token bucket per connection: processes frames in arrival order after
 * `latencyMs`, answers an accepted one with an ack `replyMs` later and a refused one with
 * a frame (at once when `overtake`, as the stock adapter does; else in order with the
 * acks), and at the `maxViolations`th refusal stops reading and closes with 1008 after its
 * answers, or before them when `loseReplies`.
 */
function burstServer(
  socket: FakeSocket,
  processed: unknown[],
  config: {
    capacity: number;
    refillPerSecond: number;
    latencyMs: number;
    replyMs: number;
    overtake: boolean;
    loseReplies: boolean;
    maxViolations: number;
  },
): void {
  let tokens = config.capacity;
  let updatedAt = performance.now();
  let violations = 0;
  let closing = false;
  const answer = (frame: unknown, delay: number): void => {
    setTimeout(() => {
      if (socket.readyState === 1 && !(closing && config.loseReplies)) socket.receive(frame);
    }, delay);
  };
  const send = socket.send.bind(socket);
  socket.send = (data: string) => {
    send(data);
    const { data: payload, id } = JSON.parse(data) as { data: unknown; id?: unknown };
    setTimeout(() => {
      if (closing || socket.readyState !== 1) return;
      const t = performance.now();
      tokens = Math.min(config.capacity, tokens + ((t - updatedAt) * config.refillPerSecond) / 1000);
      updatedAt = t;
      if (tokens >= 1) {
        tokens -= 1;
        processed.push(payload);
        answer({ event: 'ack' }, config.replyMs);
        return;
      }
      const retryAfter = Math.ceil(((1 - tokens) / config.refillPerSecond) * 1000);
      answer(
        rateLimitFrame(retryAfter, { limit: config.capacity, ...(id === undefined ? {} : { id }) }),
        config.overtake ? 0 : config.replyMs,
      );
      if (++violations < config.maxViolations) return;
      closing = true;
      setTimeout(() => {
        if (socket.readyState === 1) socket.serverClose(1008);
      }, config.replyMs + 1);
    }, config.latencyMs);
  };
}

describe('RateLimitedClient: any burst, any answer order, any close (property)', () => {
  it('delivers each message once or reports it; never twice unless the policy allows it', () => {
    fc.assert(
      fc.property(
        fc.record({
          burst: fc.integer({ min: 1, max: 60 }),
          capacity: fc.integer({ min: 1, max: 30 }),
          refillPerSecond: fc.integer({ min: 8, max: 30 }),
          latencyMs: fc.integer({ min: 0, max: 20 }),
          replyMs: fc.integer({ min: 0, max: 20 }),
          overtake: fc.boolean(),
          loseReplies: fc.boolean(),
          maxViolations: fc.integer({ min: 1, max: 10 }),
          acks: fc.boolean(),
          messageIds: fc.boolean(),
          maxUnconfirmed: fc.integer({ min: 1, max: 100 }),
          undelivered: fc.constantFrom('drop' as const, 'requeue' as const),
        }),
        (config) => {
          const h = recorded({
            ...(config.acks ? { isAck } : {}),
            messageIds: config.messageIds,
            maxUnconfirmed: config.maxUnconfirmed,
            undelivered: config.undelivered,
          });
          const processed: unknown[] = [];
          for (let i = 0; i < config.burst; i++) h.client.send('chat', i);
          for (let step = 0; step < 1200; step++) {
            const socket = h.socket();
            if (socket.readyState === 0) {
              burstServer(socket, processed, config);
              socket.open();
            }
            advance(100);
          }
          // What is still queued or unanswered is dropped and reported by the close.
          h.client.close();
          const reported = new Set(h.reports.flatMap((report) => payloads(report.messages)));
          const dropped = new Set(payloads(h.drops));
          for (let i = 0; i < config.burst; i++) {
            expect(processed.includes(i) || reported.has(i) || dropped.has(i)).toBe(true);
          }
          // At most once, unless the policy re-queues a message whose reply may be lost.
          const exact = config.undelivered === 'drop' || (config.acks && !config.loseReplies);
          if (exact) expect(new Set(processed).size).toBe(processed.length);
          expect(jest.getTimerCount()).toBe(0);
        },
      ),
      { numRuns: 150 },
    );
  });
});
