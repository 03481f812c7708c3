import { describe, expect, it } from '@jest/globals';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { Socket } from 'socket.io';
import { Throttle, WsRateLimit } from '../../../lib/index.js';
import { waitFor } from '../../support/io-client.js';
import { sleep } from '../../support/ws-client.js';
import { rawPollingSession } from './c35-messages.harness.js';
import { rawHarness, rawSession, type RawSession } from './raw-session.js';

/**
 * The socket.io transport under hostile clients (below socket.io-client where useful: raw
 * Engine.IO / socket.io packets over a plain `ws` WebSocket). From a review; five cases
 * failed before they were fixed: an event of ten binary attachments brought ten times
 * `maxPayload` to its handler; every dynamic namespace joined on one Engine.IO connection
 * brought a fresh per-connection budget, uncharged (30 of 40 admitted against 3 per budget
 * and a cap of one connection); a refused event an application middleware let through
 * after a later one lost its answer (with an id: sent as an event, not through its ack;
 * without: held for ever); and events an application middleware dropped were kept, payload
 * and all, for the life of the connection. Later, an event named by a number (`42[5,...]`),
 * which socket.io's emitter hands to a handler of '5', was charged twice (as an event no
 * handler takes, then by the handler's guard): 1 of 4 ran against a global burst of 5.
 */

const KiB = 1024;

/** Handler runs, by event, counted on the server. */
const handled = new Map<string, number>();
/** Bytes of binary data each `upload` handler run received. */
const uploadBytes: number[] = [];
const count = (event: string): void => void handled.set(event, (handled.get(event) ?? 0) + 1);

/**
 * The root namespace. Its async `handleConnection` adds an app middleware (after the
 * adapter's, as an auth lookup would) that refuses every `admin` event of a non-admin.
 */
@WebSocketGateway()
@WsRateLimit()
class RootGateway {
  async handleConnection(client: Socket): Promise<void> {
    await Promise.resolve(); // e.g. a session lookup
    client.on('error', () => undefined);
    client.use((packet, next) => {
      if (packet[0] === 'admin' || packet[0] === 'ghost') return next(new Error('forbidden'));
      next();
    });
  }

  @Throttle({ type: 'admin', capacity: 5, refillRate: 0.001 })
  @SubscribeMessage('admin')
  admin(@MessageBody() data: unknown) {
    count('admin');
    return { event: 'admin', data };
  }

  @Throttle({ type: 'chat', capacity: 5, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    count('chat');
    return { event: 'chat', data };
  }

  /** Counts the bytes of every binary argument it gets. */
  @Throttle({ type: 'upload', capacity: 100, refillRate: 100 })
  @SubscribeMessage('upload')
  upload(@MessageBody() data: unknown) {
    count('upload');
    const args = Array.isArray(data) ? data : [data];
    uploadBytes.push(args.reduce<number>((sum, arg) => sum + (Buffer.isBuffer(arg) ? arg.length : 0), 0));
    return { event: 'uploaded', data: uploadBytes[uploadBytes.length - 1] };
  }
}

/** A gateway on a dynamic (RegExp) namespace: socket.io makes a child namespace per name. */
@WebSocketGateway({ namespace: /^\/room-\w+$/ })
@WsRateLimit()
class RoomGateway {
  @Throttle({ type: 'say', capacity: 3, refillRate: 0.001 })
  @SubscribeMessage('say')
  say(@MessageBody() data: unknown) {
    count('say');
    return { event: 'said', data };
  }
}

/** A handler of an event named by digits: a client may send that name as a number. */
@WebSocketGateway()
@WsRateLimit()
class DigitsGateway {
  @Throttle({ type: 'five', capacity: 3, refillRate: 0.001 })
  @SubscribeMessage('5')
  five(@MessageBody() data: unknown) {
    count('5');
    return { event: 'five', data };
  }
}

/** An app middleware that holds some events back a while (a cache miss on an auth lookup, say). */
@WebSocketGateway()
@WsRateLimit()
class SlowCheckGateway {
  async handleConnection(client: Socket): Promise<void> {
    await Promise.resolve(); // e.g. a session lookup
    client.use((packet, next) => {
      const delay = (packet[1] as { delay?: number } | undefined)?.delay;
      if (typeof delay === 'number') setTimeout(() => next(), delay).unref();
      else next();
    });
  }

  @Throttle({ type: 'ask', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('ask')
  ask(@MessageBody() data: unknown) {
    count('ask');
    return { answer: data };
  }
}

/** Heap and buffer bytes in use after full collections (undefined without --expose-gc). */
async function retainedMemory(): Promise<number | undefined> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) return undefined;
  for (let i = 0; i < 3; i++) {
    gc();
    await sleep(20);
  }
  const { heapUsed, external } = process.memoryUsage();
  return heapUsed + external;
}

describe('socket.io transport under hostile clients', () => {
  const { harness, raws, start } = rawHarness(() => {
    handled.clear();
    uploadBytes.length = 0;
  });

  // --- 2. The payload limit and binary attachments ---------------------------------

  /** A binary event of `parts` attachments of `size` bytes each, sent as raw packets. */
  const sendBinaryEvent = (raw: RawSession, parts: number, size: number): void => {
    const placeholders = Array.from({ length: parts }, (_v, num) => `{"_placeholder":true,"num":${num}}`);
    raw.send(`45${parts}-["upload",${placeholders.join(',')}]`);
    for (let i = 0; i < parts; i++) raw.send(Buffer.alloc(size, 0x61));
  };

  it('control: a binary event within maxPayload is processed', async () => {
    const { port } = await start([RootGateway], { maxPayload: 64 * KiB });
    const raw = await rawSession(port);
    raws.push(raw);
    sendBinaryEvent(raw, 1, 60 * KiB);
    await raw.waitFrame((frame) => frame.startsWith('42["uploaded"'), 'the upload reply');
    expect(uploadBytes).toEqual([60 * KiB]);
  });

  it('ends the connection of an event whose 10 binary attachments together exceed maxPayload', async () => {
    const { port } = await start([RootGateway], { maxPayload: 64 * KiB });
    const raw = await rawSession(port);
    raws.push(raw);
    // One socket.io event, 600 KiB of data, each Engine.IO packet under 64 KiB.
    sendBinaryEvent(raw, 10, 60 * KiB);
    raw.send('42["chat","after"]');
    await waitFor(
      () => raw.closed !== undefined || raw.frames.some((frame) => frame.startsWith('42["chat"')),
      10_000,
      'the connection to end or the next reply',
    );
    // No handler got the event, and the connection ended before the next one.
    expect(uploadBytes).toEqual([]);
    expect(raw.closed).toBeDefined();
    expect(raw.frames.some((frame) => frame.startsWith('42["chat"'))).toBe(false);
  }, 30_000);

  it('charges an event named by a number (42[5,...]) once, as its handler of the same digits', async () => {
    // socket.io's emitter takes 5 for '5', so the handler runs; the adapter took it for an
    // event no handler takes, charged it as UNKNOWN_EVENT and passed it on to the handler's
    // guard, which charged it again (found in a review, fixed).
    // A global burst of 5: enough for the four events charged once, not charged twice.
    const { port } = await start([DigitsGateway], { global: { capacity: 5, refillRate: 0.001 } });
    const raw = await rawSession(port);
    raws.push(raw);
    for (let i = 0; i < 4; i++) raw.send(`42[5,${i}]`);
    await waitFor(
      () =>
        raw.frames.filter((frame) => frame.startsWith('42["five"') || frame.startsWith('42["rate_limit"')).length >= 4,
      10_000,
      'four answers',
    );
    await sleep(100);
    expect(handled.get('5')).toBe(3);
    const refusals = raw.frames.filter((frame) => frame.startsWith('42["rate_limit"'));
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toContain('"TYPE_LIMIT"');
    // Nothing answered it as an event no handler takes.
    expect(raw.frames.some((frame) => frame.includes('UNKNOWN_EVENT'))).toBe(false);
  });

  // --- 3. Namespaces on one Engine.IO connection ---------------------------------------

  it('decides a dynamic namespace joined beside another on one Engine.IO connection as a new connection', async () => {
    const { port } = await start([RoomGateway], {
      connection: { capacity: 2, refillRate: 0.001 },
      maxConnectionsPerIp: 1,
    });
    // One Engine.IO connection (the only one the cap of 1 allows): its first namespace is free.
    const raw = await rawSession(port, ['/room-0']);
    raws.push(raw);
    const rooms = Array.from({ length: 9 }, (_v, i) => `/room-${i + 1}`);
    for (const room of rooms) raw.send(`40${room},`);
    for (const room of rooms) {
      const refusal = await raw.waitFrame((frame) => frame.startsWith(`44${room},`), `the refusal of ${room}`);
      expect(JSON.parse(refusal.slice(`44${room},`.length))).toMatchObject({
        message: 'Too many connections',
        data: { code: 'concurrency' },
      });
    }
    // The one namespace socket has one budget (capacity 3). (An event sent to a namespace
    // not joined would end the connection: socket.io's rule.)
    for (let i = 0; i < 4; i++) raw.send(`42/room-0,["say",${i}]`);
    await raw.waitFrame((frame) => frame.startsWith('42/room-0,["rate_limit"'), 'the refusal of the 4th say');
    expect(handled.get('say')).toBe(3);
    expect(raw.closed).toBeUndefined();
  }, 30_000);

  // --- 4. Events an app middleware lets through out of order -------------------------

  it.each([
    ['with an id', (n: number) => ({ id: n })],
    ['without an id', (n: number) => ({ n })],
  ])(
    '%s, answers a refused event an app middleware let through late (after a later one) through its ack',
    async (_kind, payload) => {
      const { url } = await start([SlowCheckGateway]);
      const client = await harness.connect(url, 'websocket');
      const ask = (data: unknown) =>
        client.socket
          .timeout(5_000)
          .emitWithAck('ask', data)
          .catch((error: Error) => `no answer: ${error.message}`);
      // The first is held 300 ms by the app; the second overtakes it and takes the one token.
      const first = ask({ ...payload(1), delay: 300 });
      const second = ask(payload(2));
      expect(await second).toEqual({ answer: payload(2) });
      // The first is refused: its answer is due through its own acknowledgement (with an id
      // it goes out as a rate_limit event instead; without one it is held for ever).
      expect(await first).toMatchObject({ event: 'rate_limit', data: { code: 'TYPE_LIMIT', messageType: 'ask' } });
      expect(handled.get('ask')).toBe(1);
    },
    30_000,
  );

  // --- 5. Many packets in one polling POST ------------------------------------------------

  it('40 acknowledged events in one polling POST: 5 replies, 35 rate_limit answers through their acks', async () => {
    const { port } = await start([RootGateway]);
    const session = await rawPollingSession(port);
    const packets = Array.from({ length: 40 }, (_v, i) => `42${i}["chat",${i}]`);
    expect(await session.post(packets.join('\x1e'))).toBe(200);
    const received: string[] = [];
    const deadline = Date.now() + 15_000;
    while (received.length < 40 && Date.now() < deadline) {
      received.push(...(await session.poll()).split('\x1e').filter((packet) => packet.startsWith('4')));
    }
    const replies = received.filter((packet) => packet.startsWith('42["chat"'));
    const refusals = received.filter((packet) => /^43\d+\[\{"event":"rate_limit"/.test(packet));
    expect(replies).toEqual([0, 1, 2, 3, 4].map((i) => `42["chat",${i}]`));
    expect(refusals.map((packet) => Number(/^43(\d+)/.exec(packet)![1]))).toEqual(
      Array.from({ length: 35 }, (_v, i) => i + 5),
    );
    expect(handled.get('chat')).toBe(5);
    // Leave: a close packet, so the session ends now.
    await session.post('1');
  }, 30_000);

  it('a burst sent across the polling -> websocket upgrade: 5 replies, 35 refusals through their acks, none lost', async () => {
    const { url } = await start([RootGateway]);
    const client = harness.client(url, 'polling', { transports: ['polling', 'websocket'], upgrade: true });
    await client.connected();
    const refused: number[] = [];
    const engine = client.socket.io.engine as unknown as { transport: { name: string } };
    // Sent one by one while the upgrade probes: some go over polling, some over the WebSocket.
    for (let i = 0; i < 40; i++) {
      client.socket.emit('chat', i, (answer: { event?: string }) => {
        if (answer?.event === 'rate_limit') refused.push(i);
      });
      await sleep(5);
    }
    await client.until(() => client.of('chat').length + refused.length === 40, 15_000, 'every event answered');
    expect(engine.transport.name).toBe('websocket');
    expect(client.of('chat')).toEqual([0, 1, 2, 3, 4]);
    expect(refused).toEqual(Array.from({ length: 35 }, (_v, i) => i + 5));
  }, 30_000);

  // --- 1. Events an app middleware drops: what the adapter keeps for them ------------

  /** Sends `events` packets of about 48 KiB that the app middleware drops; the retained growth. */
  const dropFlood = async (event: string, events: number): Promise<number | undefined> => {
    const { port } = await start([RootGateway], { maxPayload: 64 * KiB });
    const raw = await rawSession(port);
    raws.push(raw);
    // Warm up: the paths below run once before the baseline.
    raw.send(`42["${event}","${'w'.repeat(100)}"]`);
    raw.send('42["chat",0]');
    await raw.waitFrame((frame) => frame === '42["chat",0]', 'the warm-up reply');
    const before = await retainedMemory();
    const body = 'x'.repeat(48 * KiB);
    for (let i = 0; i < events; i++) raw.send(`42["${event}","${i}${body}"]`);
    // An event after them: once it is answered, every dropped one went through the middlewares.
    raw.send('42["chat",1]');
    await raw.waitFrame((frame) => frame === '42["chat",1]', 'the reply after the flood', 30_000);
    const after = await retainedMemory();
    // The app refused them all: no handler ran, the connection is up.
    expect(handled.get(event)).toBeUndefined();
    expect(raw.closed).toBeUndefined();
    return before === undefined || after === undefined ? undefined : after - before;
  };

  it('control: events of no handler that an app middleware drops leave nothing behind', async () => {
    const grown = await dropFlood('ghost', 300);
    if (grown !== undefined) expect(grown).toBeLessThan(4 * 1024 * KiB);
  }, 60_000);

  it('keeps nothing of the events an app middleware (after the adapter) drops, beyond a bounded few', async () => {
    // 300 events of a handler's name, 48 KiB each (14 MiB in all), that the app refuses.
    const grown = await dropFlood('admin', 300);
    // Bounded: far less than the 14 MiB the dropped events carried.
    if (grown !== undefined) expect(grown).toBeLessThan(4 * 1024 * KiB);
  }, 60_000);
});
