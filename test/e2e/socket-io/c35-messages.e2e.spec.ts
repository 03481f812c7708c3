import { afterEach, describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { WsRateLimitException } from '../../../lib/index.js';
import { ENGINE_TRANSPORTS, waitFor } from '../../support/io-client.js';
import { sleep } from '../../support/ws-client.js';
import { handled, serverSockets } from './c35-messages.gateway.js';
import { C35Harness, rawPollingSession, rawWebSocketSession } from './c35-messages.harness.js';

const KiB = 1024;

/** Heap and buffer bytes in use after a full collection (undefined without --expose-gc). */
/**
 * Heap and external memory in use after a collection: the least of five readings 100 ms
 * apart (one reading after one collection varies with what else the process is finishing:
 * CI of f8a784c read 146 KB over polling against the 128 KB bound; it passed on every run
 * before and on three local runs of that commit).
 */
async function retainedMemory(): Promise<number | undefined> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) return undefined;
  let least = Infinity;
  for (let i = 0; i < 5; i++) {
    if (i > 0) await new Promise((resolve) => setTimeout(resolve, 100));
    gc();
    const { heapUsed, external } = process.memoryUsage();
    least = Math.min(least, heapUsed + external);
  }
  return least;
}

/** The fields a `rate_limit` answer may carry: nothing else, so no client text but a valid id. */
const FRAME_FIELDS = ['code', 'id', 'limit', 'messageType', 'remaining', 'retryAfter', 'warningCount'];

/** RELIABILITY C-35: C-1, C-4 and C-6 (message level) on a socket.io gateway, both Engine.IO transports. */
describe.each(ENGINE_TRANSPORTS)('C-35 message cases on socket.io over %s', (transport) => {
  const harness = new C35Harness(transport);

  afterEach(async () => {
    const { faults, loggedErrors } = await harness.stop();
    expect(faults).toEqual([]);
    expect(loggedErrors).toEqual([]);
  });

  describe('C-1 oversized event', () => {
    it.each([
      ['text', 'a'.repeat(64 * KiB + 1)],
      ['binary', Buffer.alloc(64 * KiB + 1, 0x61)],
    ])(
      '%s of maxPayload + 1 bytes: Engine.IO ends the connection, the limiter is not charged',
      async (_kind, big) => {
        await harness.start({ maxPayload: 64 * KiB });
        const client = await harness.connect();
        // Just under the limit passes: the limit is maxPayload, not less.
        client.socket.emit('chat', 'a'.repeat(60 * KiB));
        await client.until(() => client.of('ack').length === 1);
        expect(harness.decisions()).toHaveLength(1);
        // One oversized event first, on another connection: what the first one leaves for good
        // (the close path compiled, pools sized) is not what each one leaves behind.
        const warmUp = await harness.connect();
        warmUp.socket.emit('chat', big);
        await warmUp.disconnected();
        await waitFor(() => harness.stats().connections === 1, 30_000, 'warm-up connection freed');
        const memoryBefore = await retainedMemory();
        client.socket.emit('chat', big);
        await client.disconnected();
        // Cut by Engine.IO (a 1009 close, or a 413 answer to the POST), not by the limiter.
        expect(client.disconnectReason).toBe('transport close');
        await waitFor(() => harness.stats().connections === 0, 10_000, 'state freed');
        expect(harness.stats()).toMatchObject({ connections: 0, localKeys: 0 });
        expect(harness.decisions()).toHaveLength(1);
        expect(harness.ofKind('violation')).toEqual([]);
        expect(handled.get('chat')).toBe(1);
        // What the oversized event left behind once collected: well under 2 x maxPayload.
        if (memoryBefore !== undefined) expect((await retainedMemory())! - memoryBefore).toBeLessThan(2 * 64 * KiB);
        // The process is fine: the next connection works.
        const next = await harness.connect();
        next.socket.emit('chat', 'again');
        await next.until(() => next.of('ack').length === 1);
        expect(next.of('ack')).toEqual(['again']);
        // 2 minutes: ten full collections of a long Jest run's heap take seconds each on a
        // loaded machine (a clean-clone run with a busy core next to it timed out at 30 s).
      },
      120_000,
    );

    it(
      transport === 'polling'
        ? 'a raw POST of maxPayload + 1 bytes is answered 413, uncharged'
        : 'a raw event of maxPayload + 1 bytes in two fragments is closed with 1009, uncharged',
      async () => {
        await harness.start({ maxPayload: 64 * KiB });
        const packet = `42["chat","${'a'.repeat(64 * KiB)}"]`;
        if (transport === 'polling') {
          const session = await rawPollingSession(harness.running!.port);
          // A long poll waiting, as a client keeps one (else Engine.IO holds a 30 s close timer).
          const poll = session.poll();
          await waitFor(() => serverSockets[0]?.conn.transport.writable === true, 10_000, 'long poll');
          expect(await session.post(packet)).toBe(413);
          expect(await poll).toBe('1'); // Engine.IO's close packet
        } else {
          const socket = await rawWebSocketSession(harness.running!.port);
          const closed = new Promise<number>((resolve) => socket.once('close', resolve));
          const half = packet.length >> 1;
          socket.send(packet.slice(0, half), { fin: false });
          socket.send(packet.slice(half), { fin: true });
          expect(await closed).toBe(1009);
        }
        await waitFor(() => harness.stats().connections === 0, 10_000, 'state freed');
        expect(harness.decisions()).toEqual([]);
        expect(handled.get('chat')).toBeUndefined();
      },
    );
  });

  describe('C-4 hostile event names and data', () => {
    const NAMES: Array<string | number> = [
      '__proto__',
      'constructor',
      'hasOwnProperty',
      'toString',
      '',
      'x'.repeat(64 * KiB),
      '{x}',
      'a:b',
      'a\u0000b\r\nc',
      '😀',
      5,
    ];

    it('unknown names share the global budget, create no key each, and refusals carry no client text', async () => {
      const limiter = await harness.start({
        maxPayload: 256 * KiB,
        // One chat, then every name once within the budget, then every name once over it.
        global: { capacity: NAMES.length + 1, refillRate: 0.01 },
        violations: { max: 1000, windowMs: 60_000 },
      });
      const client = await harness.connect();
      client.socket.emit('chat', 'alive');
      await client.until(() => client.of('ack').length === 1);
      const emit = client.socket.emit.bind(client.socket) as (event: unknown, ...args: unknown[]) => unknown;
      for (const round of [0, 1]) {
        for (const [i, name] of NAMES.entries()) emit(name, { id: round * 100 + i, text: `SECRET-${i}` });
      }
      await client.until(() => client.of('rate_limit').length === NAMES.length);
      const refusals = client.of('rate_limit') as Array<Record<string, unknown>>;
      // Within the budget, no answer; over it, one refusal each, in order, with its id.
      expect(refusals.map((info) => [info.code, info.id])).toEqual(NAMES.map((_name, i) => ['GLOBAL_LIMIT', 100 + i]));
      for (const info of refusals) {
        expect(Object.keys(info).every((field) => FRAME_FIELDS.includes(field))).toBe(true);
        expect(info.messageType).toBe('unknown');
        expect(Buffer.byteLength(JSON.stringify(info))).toBeLessThanOrEqual(256);
      }
      const text = JSON.stringify(client.events.filter((entry) => entry.event !== 'ack'));
      expect(text).not.toContain('SECRET');
      for (const name of NAMES.slice(5, 10)) expect(text).not.toContain(JSON.stringify(name).slice(1, -1));
      // Every name was charged (1 chat + 2 rounds), and to one bucket: global and chat keys only.
      expect(harness.decisions().map((decision) => decision.type)).toEqual([
        'chat',
        ...Array(2 * NAMES.length).fill('unknown'),
      ]);
      expect(limiter.stats().localKeys).toBe(2);
      expect(client.socket.connected).toBe(true);
    });

    it.each([
      ['an array', ['SECRET']],
      ['an object', { SECRET: 1 }],
      ['null', null],
      ['true', true],
    ])('a name socket.io cannot route (%s) ends the connection before the limiter runs', async (_kind, name) => {
      await harness.start();
      const client = await harness.connect();
      (client.socket.emit as (event: unknown, ...args: unknown[]) => unknown).call(client.socket, name, 1);
      await client.disconnected();
      await waitFor(() => harness.stats().connections === 0, 10_000, 'state freed');
      expect(harness.decisions()).toEqual([]);
      const next = await harness.connect();
      next.socket.emit('chat', 'ok');
      await next.until(() => next.of('ack').length === 1);
    });

    it('echoes only valid ids: objects, arrays, long strings and unsafe numbers are dropped', async () => {
      await harness.start({ violations: { max: 1000, windowMs: 60_000 } });
      const client = await harness.connect();
      const ids: unknown[] = [
        { SECRET: 1 },
        ['SECRET'],
        'SECRET'.repeat(11), // 66 characters
        2 ** 53,
        1.5,
        null,
        true,
        'k'.repeat(64),
        7,
        '',
      ];
      client.socket.emit('presence', { id: 'first' });
      for (const id of ids) client.socket.emit('presence', { id, text: 'SECRET' });
      for (const data of ['SECRET', ['SECRET'], null, 42]) client.socket.emit('presence', data);
      const answers = await Promise.all(
        [{ SECRET: 1 }, 'SECRET'.repeat(11), 'q'].map((id) =>
          client.socket.timeout(10_000).emitWithAck('presence', { id }),
        ),
      );
      await client.until(() => client.of('rate_limit').length === ids.length + 4);
      expect(client.of('presence_ack')).toEqual([{ id: 'first' }]);
      const refusals = client.of('rate_limit') as Array<Record<string, unknown>>;
      expect(refusals.map((info) => info.id)).toEqual([
        ...Array(7).fill(undefined),
        'k'.repeat(64),
        7,
        '',
        ...Array(4).fill(undefined),
      ]);
      expect(answers.map((answer) => (answer as { data: { id?: unknown } }).data.id)).toEqual([
        undefined,
        undefined,
        'q',
      ]);
      expect(JSON.stringify([refusals, answers])).not.toContain('SECRET');
    });

    it('stays up under arbitrary names and data (fast-check), one key for all unknown names', async () => {
      const limiter = await harness.start({ global: { capacity: 100_000, refillRate: 100_000 } });
      const client = await harness.connect();
      const reserved = new Set([
        'connect',
        'connect_error',
        'disconnect',
        'disconnecting',
        'newListener',
        'removeListener',
      ]);
      const known = new Set(['chat', 'search', 'presence', 'ask', 'slow_ask']);
      let sent = 0;
      fc.assert(
        fc.property(
          fc.string({ unit: 'binary', maxLength: 40 }),
          fc.anything({ withNullPrototype: true, withBigInt: false }),
          (name, data) => {
            if (reserved.has(name) || known.has(name)) return;
            client.socket.emit(name, data);
            sent++;
          },
        ),
        { numRuns: 2000, seed: 4 },
      );
      client.socket.emit('chat', 'still alive');
      await client.until(() => client.of('ack').length === 1, 30_000);
      expect(client.of('rate_limit')).toEqual([]);
      expect(harness.decisions()).toHaveLength(sent + 1);
      expect(harness.decisions('unknown')).toHaveLength(sent);
      expect(limiter.stats().localKeys).toBe(2);
    });
  });

  describe('C-6 answers to a socket that is going or gone', () => {
    it.each([
      ['while its slow handlers run, refusals queued behind them', 5, 4],
      ['during the close grace, after the limiter decided to disconnect', 30, 10],
    ])('a client leaving %s: no throw, state freed', async (_when, presences, violations) => {
      await harness.start({ violations: { max: 10, windowMs: 60_000 } });
      const client = await harness.connect();
      for (let i = 0; i < 3; i++) client.socket.emit('search', i);
      for (let i = 0; i < 3; i++) client.socket.timeout(10_000).emit('slow_ask', i, () => undefined);
      for (let i = 0; i < presences; i++) client.socket.emit('presence', { id: i });
      await waitFor(
        () =>
          handled.get('search') === 3 &&
          handled.get('slow_ask') === 3 &&
          harness.ofKind('violation').length === violations,
        10_000,
        'the burst decided',
      );
      client.close();
      await waitFor(() => harness.stats().connections === 0, 10_000, 'state freed');
      // The slow handlers answer a socket that is gone.
      await waitFor(() => handled.get('search:settled') === 3, 10_000, 'slow handlers settled');
      await waitFor(() => handled.get('slow_ask:settled') === 3, 10_000, 'slow acks settled');
      await sleep(50);
      expect(harness.stats()).toMatchObject({ connections: 0, localKeys: 0 });
      expect(handled.get('presence')).toBe(1);
      expect(harness.ofKind('violation')).toHaveLength(violations);
    });

    it('a client leaving in the same tick as its burst: no throw, state freed', async () => {
      await harness.start({ violations: { max: 10, windowMs: 60_000 } });
      const client = await harness.connect();
      for (let i = 0; i < 3; i++) client.socket.emit('search', i);
      for (let i = 0; i < 30; i++) client.socket.emit('presence', { id: i });
      client.close();
      await waitFor(() => harness.stats().connections === 0, 10_000, 'state freed');
      // socket.io drops the events it reads with the disconnect; the ones it took settle.
      const searches = handled.get('search') ?? 0;
      await waitFor(() => (handled.get('search:settled') ?? 0) === searches, 10_000, 'slow handlers settled');
      await sleep(50);
      expect(harness.stats()).toMatchObject({ connections: 0, localKeys: 0 });
    });

    it('cuts a long multibyte close reason to 123 bytes on a character boundary', async () => {
      await harness.start({
        global: { capacity: 1, refillRate: 0.01 },
        violations: { max: 1, windowMs: 60_000, closeReason: 'é'.repeat(100) },
      });
      const client = await harness.connect();
      client.socket.emit('chat', 1);
      client.socket.emit('chat', 2);
      await client.disconnected();
      expect(client.disconnectReason).toBe('io server disconnect');
      expect(client.of('rate_limit_disconnect')).toEqual([{ code: 1008, reason: 'é'.repeat(61) }]);
    });

    it('never throws answering a socket that is gone, and refusals stay small', async () => {
      const limiter = await harness.start({ global: { capacity: 1, refillRate: 0.01 } });
      const client = await harness.connect();
      client.socket.emit('chat', 'x'.repeat(10_000));
      client.socket.emit('chat', 'y'.repeat(10_000));
      await client.until(() => client.of('rate_limit').length === 1);
      expect(Buffer.byteLength(JSON.stringify(client.of('rate_limit')[0]))).toBeLessThanOrEqual(256);
      const server = serverSockets.find((socket) => socket.id === client.socket.id)!;
      client.close();
      await waitFor(() => !server.connected, 10_000, 'server-side disconnect');
      const emitted: unknown[] = [];
      server.emit = ((...args: unknown[]) => emitted.push(args) > 0) as typeof server.emit;
      const decision = { allowed: false, tier: 'global', index: 0, retryAfter: 10, limit: 1, remaining: 0 } as const;
      expect(() => limiter.reject(server, new WsRateLimitException(decision, 'chat', 'conn:0'))).not.toThrow();
      expect(emitted).toEqual([]);
      expect(harness.stats().connections).toBe(0);
    });
  });
});
