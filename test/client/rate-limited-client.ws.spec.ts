import { describe, expect, it } from '@jest/globals';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { RateLimitedClient, type RateLimitInfo } from '../../lib/client/index.js';

const CAPACITY = 5;
const REFILL_PER_SECOND = 10;

interface ServerLog {
  /** performance.now() of every message the server received. */
  arrivals: number[];
  /** Sequence numbers of the messages it accepted, in order. */
  accepted: number[];
  /** Every rate_limit frame it sent. */
  rejections: { at: number; retryAfter: number }[];
}

/**
 * A tiny server that is not NestJS: one token bucket per connection (capacity 5, 10 per
 * second), an ack for each accepted message, a rate_limit frame (the product's format)
 * for each rejected one.
 */
async function startServer(): Promise<{ wss: WebSocketServer; port: number; log: ServerLog }> {
  const log: ServerLog = { arrivals: [], accepted: [], rejections: [] };
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  wss.on('connection', (socket) => {
    let tokens = CAPACITY;
    let updatedAt = performance.now();
    let warnings = 0;
    socket.on('error', () => undefined);
    socket.on('message', (raw) => {
      const t = performance.now();
      log.arrivals.push(t);
      const { event, data } = JSON.parse(String(raw)) as { event: string; data: { seq: number } };
      tokens = Math.min(CAPACITY, tokens + ((t - updatedAt) * REFILL_PER_SECOND) / 1000);
      updatedAt = t;
      // The epsilon absorbs floating-point error at the exact moment a token is due.
      if (tokens >= 1 - 1e-9) {
        tokens = Math.max(0, tokens - 1);
        log.accepted.push(data.seq);
        socket.send(JSON.stringify({ event: 'ack', data: { seq: data.seq } }));
        return;
      }
      const retryAfter = Math.ceil(((1 - tokens) / REFILL_PER_SECOND) * 1000);
      log.rejections.push({ at: t, retryAfter });
      socket.send(
        JSON.stringify({
          event: 'rate_limit',
          data: {
            code: 'TYPE_LIMIT',
            messageType: event,
            retryAfter,
            warningCount: ++warnings,
            limit: CAPACITY,
            remaining: 0,
          },
        }),
      );
    });
  });
  await new Promise<void>((resolve, reject) => {
    wss.once('listening', resolve);
    wss.once('error', reject);
  });
  return { wss, port: (wss.address() as AddressInfo).port, log };
}

async function stopServer(wss: WebSocketServer): Promise<void> {
  for (const socket of wss.clients) socket.terminate();
  await new Promise<void>((resolve, reject) => wss.close((error) => (error ? reject(error) : resolve())));
}

describe('RateLimitedClient against a real ws server', () => {
  it('delivers a burst of 30 over a 5-message bucket completely, in order, rejected once', async () => {
    const { wss, port, log } = await startServer();
    const client = new RateLimitedClient(`ws://127.0.0.1:${port}`, {
      WebSocket,
      isAck: (message) => (message as { event?: unknown }).event === 'ack',
    });
    try {
      const acked: number[] = [];
      const limits: RateLimitInfo[] = [];
      const errors: unknown[] = [];
      client.on('rateLimit', (info) => limits.push(info));
      client.on('error', (error) => errors.push(error));
      const allAcked = new Promise<void>((resolve) => {
        client.on('message', (message) => {
          const { event, data } = message as { event: string; data: { seq: number } };
          if (event === 'ack') acked.push(data.seq);
          if (acked.length === 30) resolve();
        });
      });
      await new Promise<void>((resolve) => {
        const off = client.on('state', (state) => {
          if (state === 'open') {
            off();
            resolve();
          }
        });
      });

      for (let seq = 0; seq < 30; seq++) expect(client.send('chat', { seq })).toBe(true);
      await allAcked;

      const all = Array.from({ length: 30 }, (_, seq) => seq);
      expect(acked).toEqual(all);
      expect(log.accepted).toEqual(all);
      expect(log.rejections).toHaveLength(1);
      expect(limits).toHaveLength(1);
      const [{ at, retryAfter }] = log.rejections;
      expect(log.arrivals.filter((t) => t > at && t < at + retryAfter)).toEqual([]);
      expect(client.dropped).toBe(0);
      expect(errors).toEqual([]);
    } finally {
      client.close();
      await stopServer(wss);
    }
  }, 60_000);
});
