import { afterEach, describe, expect, it } from '@jest/globals';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { io } from 'socket.io-client';
import {
  RateLimitedClient,
  isSocketIoAck,
  socketIoFactory,
  type DropEvent,
  type RateLimitNotice,
  type ReconnectEvent,
  type RateLimitedClientOptions,
  type UndeliveredEvent,
} from '../../lib/client/index.js';
import { Throttle, WsRateLimit } from '../../lib/index.js';
import { ioHarness } from '../support/io-harness.js';
import { settle, sleep } from '../support/ws-client.js';

// Review of the client (`nestjs-ws-rate-limit/client`) over socket.io-client against a real
// NestJS socket.io gateway on WsRateLimitIoAdapter. Three cases failed on the code reviewed
// (31df3ae), each fixed since:
// - a `rate_limit_disconnect` with another close code (`violations.closeCode` 4008) was
//   followed by the ordinary back-off: the policy delay was decided by the code 1008 alone
//   (now the socket.io connection marks an announced close `policy`; on ws the client option
//   `policyCloseCode` names the server's code);
// - with `messageIds: false`, a refusal through the ack of a message presumed accepted before
//   its answer came settled nothing: the message was lost without a word (a refusal through
//   an ack now answers, as an ack does, the oldest message of its event presumed or
//   unconfirmed: `Ledger.refuseAnswer`);
// - with a flat frame builder (`{ type: 'rate_limit', ...info }`), a refusal through the ack
//   was taken for the handler's answer: the message was lost (the ack reader takes both forms).

/** What each handler ran, in order (counted on the server). */
const seen: { event: string; seq: number }[] = [];

/**
 * `slow` and `chat` share one type (`chat`: 1 burst, 1 per second); `slow` answers its ack
 * after 800 ms, `chat` at once; `echo` has generous limits and answers at once.
 */
@WebSocketGateway()
@WsRateLimit()
class ReviewGateway {
  @Throttle({ type: 'chat', capacity: 1, refillRate: 1 })
  @SubscribeMessage('slow')
  async slow(@MessageBody() data: { seq: number }) {
    seen.push({ event: 'slow', seq: data.seq });
    await sleep(800);
    return { seq: data.seq };
  }

  @Throttle({ type: 'chat', capacity: 1, refillRate: 1 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: { seq: number }) {
    seen.push({ event: 'chat', seq: data.seq });
    return { seq: data.seq };
  }

  @Throttle({ capacity: 5, refillRate: 10 })
  @SubscribeMessage('echo')
  echo(@MessageBody() data: { seq: number }) {
    seen.push({ event: 'echo', seq: data.seq });
    return { seq: data.seq };
  }
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** A client's reports, recorded. */
interface Recorded {
  client: RateLimitedClient;
  notices: RateLimitNotice[];
  drops: DropEvent[];
  undelivered: UndeliveredEvent[];
  reconnects: ReconnectEvent[];
  errors: unknown[];
}

describe('RateLimitedClient over socket.io: review edges', () => {
  const harness = ioHarness();
  const clients: RateLimitedClient[] = [];

  const client = (url: string, options: RateLimitedClientOptions = {}): Recorded => {
    const made = new RateLimitedClient(url, {
      createSocket: socketIoFactory(io, { transports: ['websocket'] }),
      isAck: isSocketIoAck,
      ...options,
    });
    clients.push(made);
    const recorded: Recorded = { client: made, notices: [], drops: [], undelivered: [], reconnects: [], errors: [] };
    made.on('rateLimit', (notice) => recorded.notices.push(notice));
    made.on('drop', (drop) => recorded.drops.push(drop));
    made.on('undelivered', (report) => recorded.undelivered.push(report));
    made.on('reconnect', (event) => recorded.reconnects.push(event));
    made.on('error', (error) => recorded.errors.push(error));
    return recorded;
  };

  afterEach(async () => {
    for (const made of clients.splice(0)) made.close();
    await harness.close();
    seen.length = 0;
  });

  it('a rate_limit_disconnect with a configured violations.closeCode (4008) gets the policy delay', async () => {
    const url = await harness.start([ReviewGateway], {
      violations: { max: 1, windowMs: 60_000, closeCode: 4008, closeReason: 'Slow down' },
    });
    const c = client(url, { policyDelayMs: 60_000, random: () => 0.5 });
    await waitFor(() => c.client.state === 'open', 'open');
    // A client ignoring the limit: seven at once against a burst of five; the first refusal
    // is the violation that reaches the threshold.
    for (let seq = 0; seq < 7; seq++) expect(c.client.sendPriority('echo', { seq })).toBe(true);
    await waitFor(() => c.reconnects.length === 1, 'the reconnect');

    // The server told this client, by its rate_limit_disconnect event, that it was closed as
    // a repeat offender: the README's "the client reconnects, with its policy delay after a
    // rate_limit_disconnect".
    expect(c.reconnects[0]).toMatchObject({ code: 4008 });
    expect(c.reconnects[0]).toMatchObject({ policy: true, delayMs: 60_000 });
  }, 30_000);

  it('a refusal through its ack of a message presumed accepted before the answer came names it by id: it is sent again', async () => {
    const url = await harness.start([ReviewGateway]);
    const c = client(url);
    await waitFor(() => c.client.state === 'open', 'open');
    expect(c.client.send('slow', { seq: 0 })).toBe(true);
    expect(c.client.send('chat', { seq: 1 })).toBe(true);
    await waitFor(() => seen.some((entry) => entry.event === 'chat'), 'the chat sent again and processed');
    expect(c.notices).toHaveLength(1);
    expect(c.notices[0]).toMatchObject({
      code: 'TYPE_LIMIT',
      messageType: 'chat',
      message: { event: 'chat', data: { seq: 1 } },
    });
    expect(seen).toEqual([
      { event: 'slow', seq: 0 },
      { event: 'chat', seq: 1 },
    ]);
    expect(c.drops).toEqual([]);
    expect(c.errors).toEqual([]);
  }, 30_000);

  it('with messageIds off, a refusal through its ack of a message presumed accepted before the answer came names it: it is sent again', async () => {
    const url = await harness.start([ReviewGateway]);
    const c = client(url, { messageIds: false });
    await waitFor(() => c.client.state === 'open', 'open');
    // `slow` spends the chat type's one token and answers 800 ms later; the chat sent right
    // behind it is refused at once, and its refusal (through its ack) waits behind slow's
    // answer: it comes after the client presumed the chat accepted (250 ms).
    expect(c.client.send('slow', { seq: 0 })).toBe(true);
    expect(c.client.send('chat', { seq: 1 })).toBe(true);
    await waitFor(() => c.notices.length >= 1, 'the refusal');
    expect(c.notices[0]).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'chat' });
    // Its retry window (1 s) and more: until the chat is processed again, then 1.5 s for
    // anything that must not happen (a second retry, a duplicate).
    const chats = () => seen.filter((entry) => entry.event === 'chat');
    await settle(() => chats().length > 0, 1_500);
    const processed = chats().map((entry) => entry.seq);
    c.client.close();

    // Answers of one event come in order: the refusal names the chat, which goes again.
    expect(c.notices).toHaveLength(1);
    expect(c.notices[0]!.message).toMatchObject({ event: 'chat', data: { seq: 1 } });
    expect(processed).toEqual([1]);
    expect(c.drops).toEqual([]);
    expect(c.undelivered).toEqual([]);
  }, 30_000);

  it("with a flat frameBuilder (the README's example), a refusal through the ack is read as one: the message goes again", async () => {
    const url = await harness.start([ReviewGateway], {
      frameBuilder: (info) => ({ type: 'rate_limit', ...info }),
    });
    const c = client(url);
    const acked: unknown[] = [];
    c.client.on('message', (message) => acked.push(message));
    await waitFor(() => c.client.state === 'open', 'open');
    // chat: 1 burst, 1 per second. The second goes once the first is acknowledged, and is refused.
    expect(c.client.send('chat', { seq: 0 })).toBe(true);
    expect(c.client.send('chat', { seq: 1 })).toBe(true);
    await waitFor(() => c.notices.length >= 1, 'the refusal');
    // Until the chat sent again is processed, then 1.5 s for anything that must not happen.
    await settle(() => seen.filter((entry) => entry.event === 'chat' && entry.seq === 1).length > 0, 1_500);
    // No refusal among the handler's answers.
    expect(acked).not.toContainEqual(
      expect.objectContaining({ data: expect.objectContaining({ type: 'rate_limit' }) }),
    );
    const processed = seen.filter((entry) => entry.event === 'chat').map((entry) => entry.seq);
    c.client.close();

    // Expected: the refusal is read as one (a rateLimit event naming the message), and the
    // message is sent again after retryAfter and processed.
    expect(c.notices.map((notice) => notice.message?.data)).toEqual([{ seq: 1 }]);
    expect(processed).toEqual([0, 1]);
  }, 30_000);
});
