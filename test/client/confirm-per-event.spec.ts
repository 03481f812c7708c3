import { afterEach, beforeEach, describe, expect, it, jest } from '@jest/globals';
import type { AckMatch, OutboundMessage, RateLimitedClientOptions, UndeliveredEvent } from '../../lib/client/index.js';
import { Ledger } from '../../lib/client/ledger.js';
import type { OutboxEntry } from '../../lib/client/outbox.js';
import { advance, harness, rateLimitFrame, type FakeSocket, type Harness } from './support/fake-socket.js';

// With `isAck` and no `confirmMs`, the 10 s safety net holds only the events an ack has
// answered on this client; an event the server never answers (typing, presence) is
// confirmed by time as without `isAck` (250 ms, growing), instead of being held 10 s per
// message while its limit is unknown. A given `confirmMs` applies to every event.

beforeEach(() => {
  jest.useFakeTimers();
});

afterEach(() => {
  jest.clearAllTimers();
  jest.useRealTimers();
});

/** The README's Node example: every `ack` frame answers a chat. */
const chatAck = (message: unknown): AckMatch | false =>
  (message as { event?: unknown } | null)?.event === 'ack' && { event: 'chat' };

/** When (ms after `t0`) each frame of `event` was written, and its payload. */
function sends(socket: FakeSocket, event: string, t0: number): Array<[number, unknown]> {
  return socket.sent.filter((frame) => frame.event === event).map((frame) => [frame.at - t0, frame.data]);
}

function opened(options: RateLimitedClientOptions): Harness & { t0: number; reports: UndeliveredEvent[] } {
  const h = harness({ random: () => 0, openTimeoutMs: Infinity, ...options });
  const reports: UndeliveredEvent[] = [];
  h.client.on('undelivered', (report) => reports.push(report));
  h.socket().open();
  return Object.assign(h, { t0: performance.now(), reports });
}

const payloads = (messages: OutboundMessage[]): unknown[] => messages.map((message) => message.data);

describe('RateLimitedClient: confirmation delay per event with isAck', () => {
  it('sends an event no ack answers at the 250 ms pace, not one per 10 s', () => {
    const h = opened({ isAck: chatAck });
    for (let i = 0; i < 3; i++) h.client.send('typing', i);
    advance(600);
    expect(sends(h.socket(), 'typing', h.t0)).toEqual([
      [0, 0],
      [250, 1],
      [500, 2],
    ]);
    h.client.close();
  });

  it('keeps the 10 s net for an event an ack has answered, and the 250 ms one for the others', () => {
    const h = opened({ isAck: chatAck });
    h.client.send('chat', 'a');
    h.client.send('chat', 'b');
    // The first ack answers chat: b goes at once, and from now on a chat waits for its ack.
    advance(100);
    h.socket().receive({ event: 'ack' });
    h.client.send('chat', 'c');
    h.client.send('typing', 't0');
    h.client.send('typing', 't1');
    advance(9_999);
    // The queue is FIFO: c waits for b's ack (or 10 s), and the typing messages behind it.
    expect(sends(h.socket(), 'chat', h.t0)).toEqual([
      [0, 'a'],
      [100, 'b'],
    ]);
    advance(1);
    expect(sends(h.socket(), 'chat', h.t0).at(-1)).toEqual([10_100, 'c']);
    // The typing messages are not held by chat's net: 250 ms apart.
    advance(1_000);
    expect(sends(h.socket(), 'typing', h.t0)).toEqual([
      [10_100, 't0'],
      [10_350, 't1'],
    ]);
    // An ack lets the next chat go at once.
    h.client.send('chat', 'd');
    expect(h.client.queued).toBe(1);
    h.socket().receive({ event: 'ack' });
    expect(sends(h.socket(), 'chat', h.t0).at(-1)).toEqual([11_100, 'd']);
    h.client.close();
  });

  it('learns the acknowledged event from an ack naming an id, or from `true` confirming the oldest message', () => {
    for (const isAck of [
      (message: unknown): AckMatch | false =>
        (message as { event?: unknown }).event === 'ack' && { id: (message as { id: number }).id },
      (message: unknown): boolean => (message as { event?: unknown }).event === 'ack',
    ]) {
      const h = opened({ isAck });
      h.client.send('chat', 'a');
      h.socket().receive({ event: 'ack', id: 0 });
      h.client.send('chat', 'b');
      h.client.send('chat', 'c');
      advance(9_999);
      expect(sends(h.socket(), 'chat', h.t0)).toEqual([
        [0, 'a'],
        [0, 'b'],
      ]);
      advance(1);
      expect(sends(h.socket(), 'chat', h.t0)).toEqual([
        [0, 'a'],
        [0, 'b'],
        [10_000, 'c'],
      ]);
      h.client.close();
    }
  });

  it('remembers the acknowledged events across a reconnect', () => {
    const h = opened({ isAck: chatAck, backoffBaseMs: 1 });
    h.client.send('chat', 'a');
    h.socket().receive({ event: 'ack' });
    h.socket().serverClose(1001);
    advance(1);
    h.socket().open();
    const t1 = performance.now();
    h.client.send('chat', 'b');
    h.client.send('chat', 'c');
    h.client.send('typing', 't');
    advance(5_000);
    expect(sends(h.socket(), 'chat', t1)).toEqual([[0, 'b']]);
    advance(5_000);
    expect(sends(h.socket(), 'chat', t1)).toEqual([
      [0, 'b'],
      [10_000, 'c'],
    ]);
    h.client.close();
  });

  it('a given confirmMs applies to every event, answered or not, and does not grow', () => {
    const h = opened({ isAck: chatAck, confirmMs: 2_000 });
    h.client.send('typing', 0);
    h.client.send('typing', 1);
    advance(1_999);
    expect(sends(h.socket(), 'typing', h.t0)).toEqual([[0, 0]]);
    advance(1);
    expect(sends(h.socket(), 'typing', h.t0)).toEqual([
      [0, 0],
      [2_000, 1],
    ]);
    // No ack yet for chat: it waits confirmMs too (not 250 ms).
    h.client.send('chat', 'a');
    h.client.send('chat', 'b');
    advance(1_999);
    expect(sends(h.socket(), 'chat', h.t0)).toEqual([[2_000, 'a']]);
    advance(1);
    expect(sends(h.socket(), 'chat', h.t0)).toEqual([
      [2_000, 'a'],
      [4_000, 'b'],
    ]);
    // A late frame does not stretch a given delay when isAck is set.
    h.socket().receive(rateLimitFrame(0, { id: 0, messageType: 'typing' }));
    h.client.send('presence', 0);
    h.client.send('presence', 1);
    advance(2_000);
    expect(sends(h.socket(), 'presence', h.t0)).toEqual([
      [4_000, 0],
      [6_000, 1],
    ]);
    h.client.close();
  });

  it('grows the time-based delay of unanswered events from late frames, as without isAck', () => {
    const h = opened({ isAck: chatAck });
    h.client.send('typing', 0);
    // The frame refusing the typing message comes 400 ms later, after it was presumed accepted.
    advance(400);
    h.socket().receive(rateLimitFrame(0, { id: 0, messageType: 'typing' }));
    const t1 = performance.now();
    h.client.send('presence', 0);
    h.client.send('presence', 1);
    advance(799);
    expect(sends(h.socket(), 'presence', t1)).toEqual([[0, 0]]);
    advance(1);
    expect(sends(h.socket(), 'presence', t1)).toEqual([
      [0, 0],
      [800, 1],
    ]);
    h.client.close();
  });

  it('reports at a close the unanswered messages of each event within its own delay', () => {
    for (const undelivered of ['drop', 'requeue'] as const) {
      const h = opened({ isAck: chatAck, maxUnconfirmed: 10, undelivered });
      h.client.send('chat', 'a');
      h.socket().receive({ event: 'ack' });
      h.client.send('chat', 'b'); // no ack for 5 s: still within chat's 10 s
      advance(100);
      h.client.send('typing', 't1'); // presumed accepted 250 ms later
      advance(4_900);
      h.client.send('typing', 't2');
      advance(100);
      h.socket().serverClose(1006);
      expect(h.reports).toHaveLength(1);
      expect(h.reports[0]).toMatchObject({ reason: 'closed', code: 1006, refused: 0, acknowledged: 0 });
      expect(payloads(h.reports[0].messages)).toEqual(['b', 't2']);
      expect(payloads(h.reports[0].requeued)).toEqual(undelivered === 'requeue' ? ['b', 't2'] : []);
      h.client.close();
    }
  });

  it('keeps a group in doubt of an acknowledged event until its 10 s, while unanswered events go on', () => {
    const h = opened({ isAck: chatAck, maxUnconfirmed: 2, messageIds: false });
    h.client.send('chat', 0);
    h.socket().receive({ event: 'ack' });
    h.client.send('chat', 1);
    h.client.send('chat', 2);
    // A frame without an id while two chats await their acks: which one is unknowable.
    h.socket().receive(rateLimitFrame(50, { limit: 2 }));
    for (let i = 0; i < 4; i++) h.client.send('typing', i);
    advance(9_999);
    expect(h.reports).toEqual([]);
    // Two unconfirmed typing messages at a time, each presumed accepted 500 ms after it went
    // (a frame the client cannot attribute doubled the time-based 250 ms, as without isAck).
    expect(sends(h.socket(), 'typing', h.t0).map(([at]) => at)).toEqual([0, 0, 500, 500]);
    advance(1);
    expect(h.reports).toEqual([
      {
        reason: 'ambiguous',
        messages: [
          { event: 'chat', data: 1 },
          { event: 'chat', data: 2 },
        ],
        requeued: [],
        refused: 1,
        acknowledged: 0,
      },
    ]);
    h.client.close();
  });
});

describe('Ledger: per-event confirmation delays', () => {
  let seq = 0;
  const entry = (event: string, sentAt: number, frame = '{}'): OutboxEntry => ({
    seq: seq++,
    event,
    data: undefined,
    id: seq,
    frame,
    priority: false,
    sentAt,
    sendNo: seq,
    refusals: 0,
  });

  it('expires messages out of send order, each at its own delay, and keeps the others', () => {
    const delays: Record<string, number> = { chat: 10_000, typing: 250 };
    const ledger = new Ledger((event) => delays[event]);
    const chat = entry('chat', 0, 'x'.repeat(50));
    const typing = entry('typing', 100, 'y'.repeat(10));
    ledger.record(chat);
    ledger.record(typing);
    expect(ledger.expire(349)).toEqual({ refused: [] });
    expect(ledger.pending('typing').count).toBe(1);
    ledger.expire(350);
    expect(ledger.pending('typing').count).toBe(0);
    expect(ledger.pending('chat').oldest).toBe(chat);
    // A delay that grows while a message waits holds it longer.
    delays.chat = 20_000;
    ledger.expire(15_000);
    expect(ledger.pending('chat').count).toBe(1);
    // One that shrinks is seen after a rescan.
    delays.chat = 1_000;
    ledger.expire(15_001);
    expect(ledger.pending('chat').count).toBe(1);
    ledger.rescan();
    ledger.expire(15_002);
    expect(ledger.pending('chat').count).toBe(0);
    // Both were presumed accepted: the largest of them is kept for a close 1009.
    expect(ledger.drain().presumed?.entry).toBe(chat);
  });

  it('ends a group in doubt when one of its messages reaches its delay, confirming the expired ones before it', () => {
    const ledger = new Ledger((event) => (event === 'chat' ? 10_000 : 250));
    const typing = entry('typing', 0);
    const chats = [entry('chat', 10), entry('chat', 20)];
    ledger.record(typing);
    for (const chat of chats) ledger.record(chat);
    expect(ledger.refuse('chat')).toEqual({ refused: [] });
    expect(ledger.doubtExpiry()).toBe(10_010);
    expect(ledger.expire(300)).toEqual({ refused: [] });
    expect(ledger.pending('typing').count).toBe(0);
    expect(ledger.expire(10_010)).toEqual({
      refused: [],
      ambiguous: { messages: chats, refused: 1, acknowledged: 0 },
    });
    expect(ledger.drain().messages).toEqual([]);
  });
});
