import { describe, expect, it } from '@jest/globals';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server, type Socket as ServerSocket } from 'socket.io';
import { io } from 'socket.io-client';
import '../support/io-settle.js';
import {
  RateLimitedClient,
  isSocketIoAck,
  socketIoFactory,
  type ReconnectEvent,
  type SocketCloseEvent,
  type SocketIoFactoryOptions,
} from '../../lib/client/index.js';
import { RATE_LIMIT_DISCONNECT_EVENT, type RateLimitDisconnectInfo } from '../../lib/protocol/rate-limit-protocol.js';

const CAPACITY = 5;
const REFILL_PER_SECOND = 10;
const TRANSPORTS = [['websocket'], ['polling']] as const;

interface ServerOptions {
  /** Violations after which the server emits rate_limit_disconnect and disconnects. */
  disconnectAfter?: number;
  /** Refuse every connection in the namespace middleware (a connect_error with data). */
  refuse?: boolean;
}

interface ServerLog {
  /** performance.now() of every chat the server received. */
  arrivals: number[];
  /** Sequence numbers of the chats it processed, in order. */
  processed: number[];
  /** Every refusal it sent. */
  rejections: { at: number; retryAfter: number; viaAck: boolean }[];
}

interface RunningServer {
  url: string;
  log: ServerLog;
  close(): Promise<void>;
}

/**
 * A plain socket.io server speaking the library's socket.io contract (not NestJS): one
 * token bucket per connection (capacity 5, 10 per second) for `chat`; an accepted chat is
 * answered through its ack (or a `chat_ok` event without one), a refused one with the
 * `rate_limit` frame through its ack (or a `rate_limit` event echoing `data.id`).
 */
async function startServer(options: ServerOptions = {}): Promise<RunningServer> {
  const log: ServerLog = { arrivals: [], processed: [], rejections: [] };
  const http = createServer();
  const server = new Server(http);
  if (options.refuse) {
    server.use((_socket, next) => {
      next(Object.assign(new Error('Too many connections'), { data: { code: 'rate', retryAfter: 1000 } }));
    });
  }
  server.on('connection', (socket: ServerSocket) => {
    let tokens = CAPACITY;
    let updatedAt = performance.now();
    let violations = 0;
    socket.on('chat', (data: { seq: number; id?: number }, ack?: (reply: unknown) => void) => {
      const t = performance.now();
      log.arrivals.push(t);
      tokens = Math.min(CAPACITY, tokens + ((t - updatedAt) * REFILL_PER_SECOND) / 1000);
      updatedAt = t;
      // The epsilon absorbs floating-point error at the exact moment a token is due.
      if (tokens >= 1 - 1e-9) {
        tokens = Math.max(0, tokens - 1);
        log.processed.push(data.seq);
        if (ack) ack({ seq: data.seq });
        else socket.emit('chat_ok', { seq: data.seq });
        return;
      }
      const retryAfter = Math.ceil(((1 - tokens) / REFILL_PER_SECOND) * 1000);
      log.rejections.push({ at: t, retryAfter, viaAck: ack !== undefined });
      const info = {
        code: 'TYPE_LIMIT',
        messageType: 'chat',
        retryAfter,
        warningCount: ++violations,
        limit: CAPACITY,
        remaining: 0,
        ...(data.id === undefined ? {} : { id: data.id }),
      };
      if (ack) ack({ event: 'rate_limit', data: info });
      else socket.emit('rate_limit', info);
      if (options.disconnectAfter !== undefined && violations >= options.disconnectAfter) {
        const bye: RateLimitDisconnectInfo = { code: 1008, reason: 'Too many rate limit violations' };
        socket.emit(RATE_LIMIT_DISCONNECT_EVENT, bye);
        socket.disconnect(true);
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(0, '127.0.0.1', resolve);
  });
  const { port } = http.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, log, close: () => server.close() };
}

/** Resolves when `check` holds, polling; rejects after `timeoutMs`. */
async function waitFor(check: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('waitFor: timed out');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function counts(values: number[]): Map<number, number> {
  const map = new Map<number, number>();
  for (const value of values) map.set(value, (map.get(value) ?? 0) + 1);
  return map;
}

describe.each(TRANSPORTS)(
  'RateLimitedClient over socket.io-client (%s) against a real socket.io server',
  (transport) => {
    const ioOptions = { transports: [transport] };

    it.each([
      ['with acks', { acks: true }],
      ['without acks', { acks: false }],
    ] as [string, SocketIoFactoryOptions][])(
      'delivers a burst of 30 over a 5-message bucket exactly once, in order, re-sent after retryAfter (%s)',
      async (_name, adapter) => {
        const server = await startServer();
        const client = new RateLimitedClient(server.url, {
          createSocket: socketIoFactory(io, ioOptions, adapter),
          isAck: adapter.acks ? isSocketIoAck : (message) => (message as { event?: unknown }).event === 'chat_ok',
        });
        try {
          const replies: number[] = [];
          const refused: unknown[] = [];
          const errors: unknown[] = [];
          client.on('message', (message) => replies.push((message as { data: { seq: number } }).data.seq));
          client.on('rateLimit', (notice) => refused.push(notice.message?.data));
          client.on('error', (error) => errors.push(error));
          await waitFor(() => client.state === 'open');

          for (let seq = 0; seq < 30; seq++) expect(client.send('chat', { seq })).toBe(true);
          await waitFor(() => replies.length === 30);

          const all = Array.from({ length: 30 }, (_, seq) => seq);
          expect(server.log.processed).toEqual(all);
          expect([...counts(server.log.processed).values()].every((n) => n === 1)).toBe(true);
          expect(replies).toEqual(all);
          // Every refusal (one, unless a loaded machine bunches paced messages up) came the
          // way asked for and named its message, which was re-sent and processed once.
          expect(server.log.rejections.length).toBeGreaterThanOrEqual(1);
          expect(server.log.rejections.every((rejection) => rejection.viaAck === adapter.acks)).toBe(true);
          expect(refused).toHaveLength(server.log.rejections.length);
          expect(refused.every((data) => typeof (data as { seq?: unknown } | undefined)?.seq === 'number')).toBe(true);
          // The first refusal came with nothing else in flight: nothing arrived in its window.
          const [{ at, retryAfter }] = server.log.rejections;
          expect(server.log.arrivals.filter((t) => t > at && t < at + retryAfter)).toEqual([]);
          expect(client.dropped).toBe(0);
          expect(errors).toEqual([]);
        } finally {
          client.close();
          await server.close();
        }
      },
      60_000,
    );

    it('surfaces rate_limit_disconnect and the disconnect as a close 1008 with its reason', async () => {
      const server = await startServer({ disconnectAfter: 1 });
      const socket = socketIoFactory(io, ioOptions)(server.url);
      const closes: SocketCloseEvent[] = [];
      const messages: unknown[] = [];
      try {
        socket.onclose = (event) => closes.push(event);
        socket.onmessage = (event) => messages.push(event.decoded);
        await new Promise<void>((resolve) => {
          socket.onopen = () => resolve();
        });
        // Priority-style: send past the bucket at once, as a client ignoring the limits would.
        for (let seq = 0; seq < CAPACITY + 1; seq++)
          socket.send(JSON.stringify({ event: 'chat', data: { seq }, id: seq }));
        await waitFor(() => closes.length === 1);

        expect(closes).toEqual([{ code: 1008, reason: 'Too many rate limit violations', policy: true }]);
        expect(socket.readyState).toBe(3);
        // The replies written before the disconnect all arrived, the refusal naming message 5.
        expect(messages).toEqual([
          ...Array.from({ length: CAPACITY }, (_, seq) => ({ event: 'chat', data: { seq }, ack: true, id: seq })),
          { event: 'rate_limit', data: expect.objectContaining({ code: 'TYPE_LIMIT', id: CAPACITY }) },
        ]);
      } finally {
        socket.close();
        await server.close();
      }
    }, 30_000);

    it('reconnects after the 1008-equivalent disconnect with the policy delay', async () => {
      const server = await startServer({ disconnectAfter: 1 });
      const client = new RateLimitedClient(server.url, {
        createSocket: socketIoFactory(io, ioOptions),
        policyDelayMs: 60_000,
      });
      try {
        const reconnects: ReconnectEvent[] = [];
        client.on('reconnect', (event) => reconnects.push(event));
        await waitFor(() => client.state === 'open');
        for (let seq = 0; seq < CAPACITY + 1; seq++) expect(client.sendPriority('chat', { seq })).toBe(true);
        await waitFor(() => reconnects.length === 1);

        expect(reconnects).toEqual([{ attempt: 0, delayMs: 60_000, code: 1008, policy: true }]);
        expect(client.state).toBe('reconnecting');
        expect(server.log.processed).toEqual([0, 1, 2, 3, 4]);
      } finally {
        client.close();
        await server.close();
      }
    }, 30_000);

    it('reports a refused connection (connect_error with data) and waits the policy delay', async () => {
      const server = await startServer({ refuse: true });
      const client = new RateLimitedClient(server.url, {
        createSocket: socketIoFactory(io, ioOptions),
        policyDelayMs: 60_000,
      });
      try {
        const reconnects: ReconnectEvent[] = [];
        const errors: unknown[] = [];
        client.on('reconnect', (event) => reconnects.push(event));
        client.on('error', (error) => errors.push(error));
        await waitFor(() => reconnects.length === 1);

        expect(reconnects).toEqual([{ attempt: 0, delayMs: 60_000, code: 1006, policy: true }]);
        expect(errors).toHaveLength(1);
        expect(errors[0]).toBeInstanceOf(Error);
        expect((errors[0] as Error).message).toBe('Too many connections');
        expect((errors[0] as { data?: unknown }).data).toEqual({ code: 'rate', retryAfter: 1000 });
      } finally {
        client.close();
        await server.close();
      }
    }, 30_000);
  },
);
