import { afterEach, describe, expect, it } from '@jest/globals';
import { io } from 'socket.io-client';
import '../support/io-settle.js';
import {
  RateLimitedClient,
  isSocketIoAck,
  socketIoFactory,
  type AckMatch,
  type RateLimitNotice,
  type ReconnectEvent,
  type SocketCloseEvent,
  type WebSocketLike,
} from '../../lib/client/index.js';
import { WsRateLimitModule, type WsRateLimitModuleOptions } from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { startApp, type RunningApp } from '../support/app.js';
import { ClientIoGateway, processed } from './support/io-gateway.js';

const TRANSPORTS = ['websocket', 'polling'] as const;

/** Resolves when `check` holds, polling; rejects after `timeoutMs`. */
async function waitFor(check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`waitFor: timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** `note` is answered by a `noted` event, `chat` through its acknowledgement. */
function isAck(message: unknown): AckMatch | false {
  const { event } = message as { event?: unknown };
  return event === 'noted' ? { event: 'note' } : isSocketIoAck(message);
}

describe.each(TRANSPORTS)('RateLimitedClient over socket.io-client (%s) against WsRateLimitIoAdapter', (transport) => {
  const ioOptions = { transports: [transport] };
  let running: RunningApp | undefined;
  const clients: RateLimitedClient[] = [];
  const sockets: WebSocketLike[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}): Promise<string> => {
    processed.chat.clear();
    processed.note.clear();
    running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            tracker: 'connection',
            global: { capacity: 1000, refillRate: 1000 },
            violations: { max: 100, windowMs: 60_000 },
            ...options,
          }),
        ],
        providers: [ClientIoGateway],
      },
      (app) => new WsRateLimitIoAdapter(app),
    );
    return `http://127.0.0.1:${running.port}`;
  };

  const client = (url: string, options: ConstructorParameters<typeof RateLimitedClient>[1] = {}) => {
    const created = new RateLimitedClient(url, { createSocket: socketIoFactory(io, ioOptions), ...options });
    clients.push(created);
    return created;
  };

  afterEach(async () => {
    for (const created of clients.splice(0)) created.close();
    for (const socket of sockets.splice(0)) socket.close();
    await running?.close();
    running = undefined;
  });

  it.each([
    ['chat', true],
    ['note', true],
    ['note', false],
  ] as const)(
    'delivers a burst of 30 %s messages over a 5-message limit, each processed exactly once (acks: %s)',
    async (event, acks) => {
      const url = await start();
      const c = client(url, { isAck, createSocket: socketIoFactory(io, ioOptions, { acks }) });
      const replies: number[] = [];
      const notices: RateLimitNotice[] = [];
      const errors: unknown[] = [];
      c.on('message', (message) => replies.push((message as { data: { seq: number } }).data.seq));
      c.on('rateLimit', (notice) => notices.push(notice));
      c.on('error', (error) => errors.push(error));
      await waitFor(() => c.state === 'open', 'open');

      for (let seq = 0; seq < 30; seq++) expect(c.send(event, { seq })).toBe(true);
      await waitFor(() => replies.length === 30, '30 replies');

      const all = Array.from({ length: 30 }, (_, seq) => seq);
      expect(replies).toEqual(all);
      expect([...processed[event].keys()].sort((a, b) => a - b)).toEqual(all);
      expect([...processed[event].values()].every((n) => n === 1)).toBe(true);
      // Refused at least once (the limit was unknown), each refusal naming its message
      // (through the ack, or by the id the adapter put in the payload), re-sent after retryAfter.
      expect(notices.length).toBeGreaterThanOrEqual(1);
      for (const notice of notices) {
        expect(notice).toMatchObject({ code: 'TYPE_LIMIT', messageType: event, limit: 5 });
        expect(notice.message).toEqual({ event, data: { seq: expect.any(Number) }, id: notice.id });
        expect(notice.id).toEqual(expect.any(Number));
      }
      expect(c.dropped).toBe(0);
      expect(errors).toEqual([]);
    },
    60_000,
  );

  it('surfaces the violations disconnect as close 1008 with its reason, after the admitted replies', async () => {
    const url = await start({ violations: { max: 1, windowMs: 60_000 } });
    const socket = socketIoFactory(io, ioOptions)(url);
    sockets.push(socket);
    const closes: SocketCloseEvent[] = [];
    const messages: unknown[] = [];
    socket.onclose = (event) => closes.push(event);
    socket.onmessage = (event) => messages.push(event.decoded);
    await new Promise<void>((resolve) => {
      socket.onopen = () => resolve();
    });
    // A client ignoring the limit: six at once against five (no refill to speak of).
    for (let seq = 0; seq < 6; seq++) socket.send(JSON.stringify({ event: 'burst', data: { seq }, id: seq }));
    await waitFor(() => closes.length === 1, 'close');

    expect(closes).toEqual([{ code: 1008, reason: 'Rate limit violations', policy: true }]);
    expect(messages).toEqual([
      ...[0, 1, 2, 3, 4].map((seq) => ({ event: 'burst', data: { seq }, ack: true, id: seq })),
      { event: 'rate_limit', data: expect.objectContaining({ code: 'TYPE_LIMIT', messageType: 'burst', id: 5 }) },
    ]);
    expect(processed.chat.size).toBe(5);
  }, 30_000);

  it('reconnects after the violations disconnect with the policy delay', async () => {
    const url = await start({ violations: { max: 1, windowMs: 60_000 } });
    const c = client(url, { policyDelayMs: 60_000 });
    const reconnects: ReconnectEvent[] = [];
    c.on('reconnect', (event) => reconnects.push(event));
    await waitFor(() => c.state === 'open', 'open');
    for (let seq = 0; seq < 6; seq++) expect(c.sendPriority('burst', { seq })).toBe(true);
    await waitFor(() => reconnects.length === 1, 'reconnect');

    expect(reconnects).toEqual([{ attempt: 0, delayMs: 60_000, code: 1008, policy: true }]);
    expect(c.state).toBe('reconnecting');
  }, 30_000);

  it.each(['http', 'close'] as const)(
    "reports a refused connection (connectionRefusal %s) and waits the policy delay (with 'close', the refusal's retryAfter when longer)",
    async (connectionRefusal) => {
      const url = await start({ connection: { capacity: 1, refillRate: 0.001 }, connectionRefusal });
      const first = client(url);
      await waitFor(() => first.state === 'open', 'first open');
      const second = client(url, { policyDelayMs: 60_000 });
      const reconnects: ReconnectEvent[] = [];
      const errors: unknown[] = [];
      second.on('reconnect', (event) => reconnects.push(event));
      second.on('error', (error) => errors.push(error));
      await waitFor(() => reconnects.length === 1, 'reconnect');

      expect(errors).toHaveLength(1);
      expect(errors[0]).toBeInstanceOf(Error);
      if (connectionRefusal === 'close') {
        const data = (errors[0] as { data?: { retryAfter?: number } }).data;
        expect(data).toEqual({ code: 'rate', retryAfter: expect.any(Number) });
        // One token per 1,000 s: the refusal's retry time (about 1,000 s) is longer than the policy delay.
        expect(data!.retryAfter).toBeGreaterThan(60_000);
        expect(reconnects).toEqual([{ attempt: 0, delayMs: data!.retryAfter, code: 1006, policy: true }]);
      } else {
        expect(reconnects).toEqual([{ attempt: 0, delayMs: 60_000, code: 1006, policy: true }]);
      }
    },
    30_000,
  );
});
