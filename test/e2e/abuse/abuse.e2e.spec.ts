import { afterEach, describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import WebSocket from 'ws';
import {
  WsRateLimitAdapter,
  WsRateLimitException,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { sleep, TestClient } from '../../support/ws-client.js';
import { AbuseGateway } from './abuse.gateway.js';

const MiB = 1024 * 1024;

describe('abuse over real WebSockets (RELIABILITY cases)', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions) => {
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })], providers: [AbuseGateway] },
      (app) => new WsRateLimitAdapter(app),
    );
    return running.app.get(WsRateLimitService);
  };
  const connect = async (options: WebSocket.ClientOptions = {}) => {
    const client = await TestClient.connect(running!.url, options);
    clients.push(client);
    return client;
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  describe('C-1 oversized message', () => {
    it.each([
      ['text, one frame', (socket: WebSocket, bytes: Buffer) => socket.send(bytes.toString())],
      ['binary, one frame', (socket: WebSocket, bytes: Buffer) => socket.send(bytes, { binary: true })],
      [
        'text, fragmented',
        (socket: WebSocket, bytes: Buffer) => {
          const half = bytes.length >> 1;
          socket.send(bytes.subarray(0, half).toString(), { fin: false });
          socket.send(bytes.subarray(half).toString(), { fin: true });
        },
      ],
    ])('%s of maxPayload + 1 bytes: 1009 before the limiter is charged', async (_name, send) => {
      const limiter = await start({ maxPayload: 64 * 1024 });
      const decisions: RateLimitEvent[] = [];
      const subscription = limiter.events$.subscribe((event) => event.kind === 'decision' && decisions.push(event));
      const client = await connect();
      const rssBefore = process.memoryUsage().rss;
      const sentAt = performance.now();
      send(client.socket, Buffer.alloc(64 * 1024 + 1, 0x61));
      const closed = await client.waitClose();
      const elapsed = performance.now() - sentAt;
      subscription.unsubscribe();
      expect(closed.code).toBe(1009);
      // The target is 100 ms; a loaded CI box gets slack, the figure is in the test name's log.
      expect(elapsed).toBeLessThan(2000);
      expect(process.memoryUsage().rss - rssBefore).toBeLessThan(2 * 64 * 1024 + 4 * MiB);
      expect(decisions).toEqual([]);
    });
  });

  describe('C-3 tiny-fragment flood', () => {
    it('closes with 1008 once ws counts too many fragments, without growing the heap', async () => {
      await start({});
      const client = await connect();
      const heapBefore = process.memoryUsage().heapUsed;
      const one = Buffer.from('a');
      for (let i = 0; i < 20_000 && client.socket.readyState === WebSocket.OPEN; i++) {
        client.socket.send(one, { fin: false, binary: false });
      }
      const closed = await client.waitClose(20_000);
      expect(closed.code).toBe(1008);
      expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(32 * MiB);
    });
  });

  describe('C-4 hostile message types', () => {
    it('answers hostile event values without throwing, with one bucket per connection', async () => {
      const limiter = await start({ global: { capacity: 100_000, refillRate: 100_000 } });
      const client = await connect();
      const hostile: unknown[] = [
        '__proto__',
        'constructor',
        'hasOwnProperty',
        'toString',
        '',
        'x'.repeat(60 * 1024),
        '{x}',
        'a:b',
        'a\u0000b\r\nc',
        '😀',
        [],
        {},
        5,
        null,
        true,
      ];
      for (const event of hostile) client.sendRaw(JSON.stringify({ event, data: 1 }));
      await client.waitForEvent('error', hostile.length);
      expect(client.events('error').map((frame) => frame.data.code)).toEqual([
        ...Array(10).fill('UNKNOWN_EVENT'),
        ...Array(5).fill('INVALID_MESSAGE'),
      ]);
      // Whatever the event, a connection has one key for unrouted frames: its global bucket.
      expect(limiter.stats().localKeys).toBe(1);
    });

    it('stays up under arbitrary values as the event (fast-check)', async () => {
      const limiter = await start({ global: { capacity: 100_000, refillRate: 100_000 } });
      const client = await connect();
      let sent = 0;
      fc.assert(
        fc.property(fc.anything({ withNullPrototype: true, withBigInt: false }), (event) => {
          let text: string;
          try {
            text = JSON.stringify({ event, data: event });
          } catch {
            return;
          }
          if (text === undefined) return;
          client.sendRaw(text);
          sent++;
        }),
        { numRuns: 2000, seed: 4 },
      );
      client.send('chat', 'still alive');
      await client.waitForEvent('ack');
      expect(client.events('error')).toHaveLength(sent);
      expect(limiter.stats().localKeys).toBeLessThanOrEqual(3); // global, chat, nothing else
    });
  });

  describe('C-5 unparseable flood', () => {
    it('processes at most C + r*t frames, closes after the strike threshold, cheaply', async () => {
      await start({ global: { capacity: 20, refillRate: 10 }, violations: { max: 10, windowMs: 60_000 } });
      const client = await connect();
      const cpuBefore = process.cpuUsage();
      const started = performance.now();
      for (let i = 0; i < 10_000; i++) client.sendRaw(i % 2 ? '{broken' : JSON.stringify({ event: 'nope', id: i }));
      expect((await client.waitClose()).code).toBe(1008);
      const seconds = (performance.now() - started) / 1000;
      const cpu = process.cpuUsage(cpuBefore);
      const processed = client.events('error').length;
      expect(processed).toBeLessThanOrEqual(Math.floor(20 + 10 * seconds));
      expect(processed).toBeGreaterThanOrEqual(20);
      expect(client.events('rate_limit')).toHaveLength(10);
      // Client and server share this process: both together stay well under a core-second.
      expect((cpu.user + cpu.system) / 1e6).toBeLessThan(5);
    });
  });

  describe('C-6 filter output safety', () => {
    it('cuts a long multibyte close reason to 123 bytes on a character boundary', async () => {
      await start({
        global: { capacity: 1, refillRate: 0.01 },
        violations: { max: 1, windowMs: 60_000, closeReason: 'é'.repeat(100) },
      });
      const client = await connect();
      client.send('chat', 1);
      client.send('chat', 2);
      const closed = await client.waitClose();
      expect(closed.code).toBe(1008);
      expect(closed.reason).toBe('é'.repeat(61));
      expect(Buffer.byteLength(closed.reason)).toBeLessThanOrEqual(123);
    });

    it('never throws answering a socket that is closing or closed, and frames stay small', async () => {
      const limiter = await start({ global: { capacity: 1, refillRate: 0.01 } });
      const client = await connect();
      client.send('chat', 'x'.repeat(10_000));
      client.send('chat', 'y'.repeat(10_000));
      const [frame] = await client.waitForEvent('rate_limit');
      expect(Buffer.byteLength(JSON.stringify(frame))).toBeLessThanOrEqual(256);
      // Ask the service to answer a rejection on sockets in every closed state.
      const decision = { allowed: false, tier: 'global', index: 0, retryAfter: 10, limit: 1, remaining: 0 } as const;
      for (const readyState of [WebSocket.CLOSING, WebSocket.CLOSED]) {
        const fake = {
          readyState,
          bufferedAmount: 0,
          send: () => {
            throw new Error('must not send');
          },
          close: () => undefined,
          once: () => undefined,
        };
        expect(() => limiter.reject(fake, new WsRateLimitException(decision, 'chat', 'conn:0'))).not.toThrow();
      }
    });
  });

  describe('C-7 per-type flood', () => {
    it('admits at most C + r*t in every interval, per type and globally, and keeps types apart', async () => {
      const limiter = await start({
        global: { capacity: 10, refillRate: 5 },
        violations: { max: 1_000_000, windowMs: 1000 },
      });
      const admitted: Record<string, number[]> = { typing: [], chat: [], global: [] };
      const subscription = limiter.events$.subscribe((event) => {
        if (event.kind !== 'decision' || !event.allowed) return;
        const now = performance.now();
        admitted[event.type]!.push(now);
        admitted.global!.push(now);
      });
      const client = await connect();
      const end = performance.now() + 3000;
      let chats = 0;
      while (performance.now() < end) {
        for (let i = 0; i < 200; i++) client.send('typing');
        if (chats++ % 2 === 0) client.send('chat', chats);
        await sleep(20);
      }
      await sleep(200);
      subscription.unsubscribe();
      // Times are read when the decision is published, a few microseconds after the store
      // read its clock (more under a GC pause): 2 ms of slack covers that measurement error.
      // The exact bound, with the store's own clock, is the model test's (test/unit).
      const check = (times: number[], capacity: number, rate: number) => {
        for (let i = 0; i < times.length; i++) {
          for (let j = i; j < times.length; j++) {
            expect(j - i + 1).toBeLessThanOrEqual(capacity + (rate * (times[j]! - times[i]! + 2)) / 1000);
          }
        }
      };
      check(admitted.typing!, 5, 2);
      check(admitted.chat!, 5, 2);
      check(admitted.global!, 10, 5);
      // Flooding typing did not starve chat: chat got its own burst at least.
      expect(admitted.chat!.length).toBeGreaterThanOrEqual(5);
    });
  });

  describe('C-8 notice amplification', () => {
    it('answers at most one frame per violation, closes at the threshold, never echoes the payload', async () => {
      await start({ global: { capacity: 2, refillRate: 0.01 } });
      const client = await connect();
      for (let i = 0; i < 10_000 && client.socket.readyState === WebSocket.OPEN; i++) {
        client.sendRaw(JSON.stringify({ event: 'chat', data: `SECRET-PAYLOAD-${i}` }));
      }
      expect(await client.waitClose()).toEqual({ code: 1008, reason: 'Rate limit violations' });
      const limits = client.events('rate_limit');
      expect(limits.map((frame) => frame.data.warningCount)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      expect(JSON.stringify(limits)).not.toContain('SECRET-PAYLOAD');
    });
  });

  describe('C-14 slow consumer', () => {
    it('terminates a client that stops reading once it holds more than maxBufferedBytes', async () => {
      const limiter = await start({ maxBufferedBytes: 256 * 1024, pingIntervalMs: 0 });
      const client = await connect();
      (client.socket as unknown as { _socket: { pause(): void } })._socket.pause();
      client.send('blast', { count: 200, size: 64 * 1024 });
      // The client is not reading, so it may never see the close: the server's state counts.
      const started = performance.now();
      while (limiter.stats().connections > 0 && performance.now() - started < 10_000) await sleep(20);
      expect(limiter.stats().connections).toBe(0);
      // Cut off within a second of crossing the threshold (plus the time to fill the buffers).
      expect(performance.now() - started).toBeLessThan(5_000);
      client.socket.terminate();
    });
  });

  describe('C-16 churn', () => {
    it('leaves no per-connection residue after thousands of connect/send/close cycles', async () => {
      const limiter = await start({
        connection: { capacity: 100_000, refillRate: 100_000 },
        maxConnectionsPerIp: 1000,
      });
      const timers = () => process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;
      const cycle = async () => {
        const client = await TestClient.connect(running!.url);
        client.send('chat', 1);
        await client.waitForEvent('ack');
        await client.close();
      };
      await Promise.all(Array.from({ length: 50 }, cycle));
      const gc = (globalThis as { gc?: () => void }).gc;
      gc?.();
      const heapBefore = process.memoryUsage().heapUsed;
      const timersBefore = timers();
      for (let round = 0; round < 40; round++) await Promise.all(Array.from({ length: 50 }, cycle));
      for (let i = 0; i < 100 && limiter.stats().connections > 0; i++) await sleep(20);
      expect(limiter.stats()).toMatchObject({ connections: 0, localKeys: 0 });
      const [, concurrency] = await limiter.connectionStatus('127.0.0.1');
      expect(concurrency!.remaining).toBe(1000);
      // Back to baseline (F-27): on a loaded machine a timer of the last closes (a socket's
      // own, Node's or ws's) may still be settling; a timer per connection would not.
      for (let i = 0; i < 100 && timers() > timersBefore; i++) await sleep(20);
      expect(timers()).toBeLessThanOrEqual(timersBefore);
      if (gc) {
        gc();
        // 2,000 cycles: a leak of even 1 KiB per connection would show as 2 MB.
        expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(2 * MiB);
      }
    });
  });
});
