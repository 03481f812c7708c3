import { describe, expect, it } from '@jest/globals';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { Socket } from 'socket.io';
import { Throttle, WsRateLimit } from '../../../lib/index.js';
import { waitFor } from '../../support/io-client.js';
import { sleep } from '../../support/ws-client.js';
import { rawPollingSession } from './c35-messages.harness.js';
import { rawHarness, rawSession, type RawSession } from './raw-session.js';

/**
 * The socket.io adapter's answer slots, dynamic namespaces and binary-attachment cap, at
 * their edges. From a review of ef975da; five cases failed on it: an attachment count spelled
 * `0000000010`, `1e1` or `+10` (socket.io-parser reads them all as 10) escaped the cap; the
 * slot of a dropped event was given up only when another event of its name came (now a
 * timer finds it); and every dynamic room joined and left kept a `close` listener on the
 * Engine.IO connection.
 */

const KiB = 1024;

const handled = new Map<string, number>();
const uploadBytes: number[] = [];
const count = (event: string): void => void handled.set(event, (handled.get(event) ?? 0) + 1);
/** The server-side socket of the latest connection of each gateway. */
const serverSockets: Socket[] = [];

@WebSocketGateway()
@WsRateLimit()
class RootGateway {
  async handleConnection(client: Socket): Promise<void> {
    serverSockets.push(client);
    await Promise.resolve();
    client.on('error', () => undefined);
    // An app middleware (after the adapter's) that refuses every `admin` event.
    client.use((packet, next) => {
      if (packet[0] === 'admin') return next(new Error('forbidden'));
      next();
    });
  }

  @SubscribeMessage('admin')
  admin(@MessageBody() data: unknown) {
    count('admin');
    return { event: 'admin', data };
  }

  /** Replies through the acknowledgement. */
  @Throttle({ type: 'chat', capacity: 1000, refillRate: 1000 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    count('chat');
    return data;
  }

  @Throttle({ type: 'upload', capacity: 100, refillRate: 100 })
  @SubscribeMessage('upload')
  upload(@MessageBody() data: unknown) {
    count('upload');
    const args = Array.isArray(data) ? data : [data];
    uploadBytes.push(args.reduce<number>((sum, arg) => sum + (Buffer.isBuffer(arg) ? arg.length : 0), 0));
    return { event: 'uploaded', data: uploadBytes[uploadBytes.length - 1] };
  }
}

@WebSocketGateway({ namespace: /^\/room-\w+$/ })
@WsRateLimit()
class RoomGateway {
  handleConnection(client: Socket): void {
    serverSockets.push(client);
  }

  @SubscribeMessage('say')
  say(@MessageBody() data: unknown) {
    count('say');
    return { event: 'said', data };
  }
}

/** The length of a connection's chain of answer slots (from its oldest unanswered one). */
function orderChain(order: unknown): number {
  let length = 0;
  for (let slot = (order as { head?: { next?: unknown } }).head; slot !== undefined && length < 1e6; length++) {
    slot = (slot as { next?: { next?: unknown } }).next;
  }
  return length;
}

describe('socket.io answer slots, dynamic namespaces and attachments', () => {
  const { harness, raws, start } = rawHarness(() => {
    handled.clear();
    uploadBytes.length = 0;
    serverSockets.length = 0;
  });

  // --- The binary-attachment cap --------------------------------------------------------

  /** One binary `upload` event whose header spells its attachment count as `count`. */
  const sendUpload = (raw: RawSession, count: string, parts: number, size: number): void => {
    const placeholders = Array.from({ length: parts }, (_v, num) => `{"_placeholder":true,"num":${num}}`);
    raw.send(`45${count}-["upload",${placeholders.join(',')}]`);
    for (let i = 0; i < parts; i++) raw.send(Buffer.alloc(size, 0x61));
  };

  it('a binary event of exactly maxPayload (header and attachment together) passes; one byte more ends it', async () => {
    const { port } = await start([RootGateway], { maxPayload: 64 * KiB });
    const header = `51-["upload",{"_placeholder":true,"num":0}]`;
    const exact = 64 * KiB - Buffer.byteLength(header);
    const raw = await rawSession(port);
    raws.push(raw);
    raw.send(`4${header}`);
    raw.send(Buffer.alloc(exact, 0x61));
    await raw.waitFrame((frame) => frame.startsWith('42["uploaded"'), 'the upload reply');
    expect(uploadBytes).toEqual([exact]);
    raw.send(`4${header}`);
    raw.send(Buffer.alloc(exact + 1, 0x61));
    await waitFor(() => raw.closed !== undefined, 10_000, 'the connection to end');
    expect(uploadBytes).toEqual([exact]);
  }, 30_000);

  it('a header announcing 99999999 attachments ends the connection (socket.io refuses it)', async () => {
    const { port } = await start([RootGateway], { maxPayload: 64 * KiB });
    const raw = await rawSession(port);
    raws.push(raw);
    raw.send('4599999999-["upload",{"_placeholder":true,"num":0}]');
    for (let i = 0; i < 3; i++) raw.send(Buffer.alloc(60 * KiB, 0x61));
    await waitFor(() => raw.closed !== undefined, 10_000, 'the connection to end');
    expect(uploadBytes).toEqual([]);
  }, 30_000);

  it('a binary acknowledgement (6<n>-) past maxPayload ends the connection', async () => {
    const { port } = await start([RootGateway], { maxPayload: 64 * KiB });
    const raw = await rawSession(port);
    raws.push(raw);
    // (No ack with that id is pending: the cap decides before socket.io looks.)
    raw.send(`4610-[${Array.from({ length: 10 }, (_v, num) => `{"_placeholder":true,"num":${num}}`).join(',')}]`);
    for (let i = 0; i < 10; i++) raw.send(Buffer.alloc(60 * KiB, 0x61));
    raw.send('42["chat","after"]');
    await waitFor(() => raw.closed !== undefined, 10_000, 'the connection to end');
  }, 30_000);

  it('attachments sent as base64 over long-polling count toward maxPayload too', async () => {
    const { port } = await start([RootGateway], { maxPayload: 64 * KiB });
    const session = await rawPollingSession(port);
    const placeholders = Array.from({ length: 10 }, (_v, num) => `{"_placeholder":true,"num":${num}}`);
    expect(await session.post(`4510-["upload",${placeholders.join(',')}]`)).toBe(200);
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) {
      // 40 KiB each (54 KiB of base64: one POST within maxHttpBufferSize).
      const status = await session.post(`b${Buffer.alloc(40 * KiB, 0x61).toString('base64')}`).catch(() => -1);
      statuses.push(status);
      if (status !== 200) break;
    }
    await sleep(200);
    expect(uploadBytes).toEqual([]);
    // The session is gone: a later request is refused (400, unknown sid).
    expect(await session.post('42["chat","after"]')).not.toBe(200);
  }, 30_000);

  it.each([
    ['zero-padded (0000000010)', '0000000010'],
    ['in exponent form (1e1)', '1e1'],
    ['with a plus sign (+10)', '+10'],
  ])(
    'bounds the event by maxPayload whatever the spelling of its attachment count (%s)',
    async (_kind, spelled) => {
      const { port } = await start([RootGateway], { maxPayload: 64 * KiB });
      const raw = await rawSession(port);
      raws.push(raw);
      // socket.io-parser reads the count as Number(text): 10 attachments, 600 KiB in all.
      sendUpload(raw, spelled, 10, 60 * KiB);
      raw.send('42["chat","after"]');
      await waitFor(
        () =>
          raw.closed !== undefined || uploadBytes.length > 0 || raw.frames.some((f) => f.startsWith('42["uploaded"')),
        10_000,
        'the connection to end or the upload to be handled',
      );
      await sleep(100);
      // 600 KiB reached the handler under a 64 KiB limit; the connection stays up.
      expect({ handlerGotBytes: uploadBytes, closed: raw.closed !== undefined }).toEqual({
        handlerGotBytes: [],
        closed: true,
      });
    },
    30_000,
  );

  // --- Answer order: the 16-per-event cap against events in flight -----------------------

  it('a burst of 20 acknowledged events of one name in one POST (past the 16 cap): a later event’s rate_limit does not overtake their answers', async () => {
    // One token: the first (unknown) event takes it; everything after is refused.
    const { port } = await start([RootGateway], { global: { capacity: 1, refillRate: 0.001 } });
    const session = await rawPollingSession(port);
    const chats = Array.from({ length: 20 }, (_v, i) => `42${i}["chat",{"n":${i}}]`);
    // No app middleware holds or drops anything: all 22 events are in flight, in order.
    expect(await session.post(['42["warm"]', ...chats, '42["late"]'].join('\x1e'))).toBe(200);
    const received: string[] = [];
    const deadline = Date.now() + 15_000;
    while (received.length < 21 && Date.now() < deadline) {
      received.push(...(await session.poll()).split('\x1e').filter((packet) => packet.startsWith('4')));
    }
    const answers = received.map((packet) =>
      packet.startsWith('42["rate_limit"') ? 'late' : (/^43(\d+)\[/.exec(packet)?.[1] ?? packet),
    );
    // Every chat is answered (refused, through its ack) before the later unknown event's refusal.
    expect(answers).toEqual([...Array.from({ length: 20 }, (_v, i) => String(i)), 'late']);
    await session.post('1');
  }, 30_000);

  it('control: a burst of 16 acknowledged events of one name keeps the order', async () => {
    const { port } = await start([RootGateway], { global: { capacity: 1, refillRate: 0.001 } });
    const session = await rawPollingSession(port);
    const chats = Array.from({ length: 16 }, (_v, i) => `42${i}["chat",{"n":${i}}]`);
    expect(await session.post(['42["warm"]', ...chats, '42["late"]'].join('\x1e'))).toBe(200);
    const received: string[] = [];
    const deadline = Date.now() + 15_000;
    while (received.length < 17 && Date.now() < deadline) {
      received.push(...(await session.poll()).split('\x1e').filter((packet) => packet.startsWith('4')));
    }
    const answers = received.map((packet) =>
      packet.startsWith('42["rate_limit"') ? 'late' : (/^43(\d+)\[/.exec(packet)?.[1] ?? packet),
    );
    expect(answers).toEqual([...Array.from({ length: 16 }, (_v, i) => String(i)), 'late']);
    await session.post('1');
  }, 30_000);

  // --- Slots of dropped events: given up after the hold time? ----------------------------

  it('gives up the slot of an event an app middleware dropped after the hold time, even when no event of its name follows', async () => {
    const { port } = await start([RootGateway], { closeGraceMs: 200 });
    const raw = await rawSession(port);
    raws.push(raw);
    await waitFor(() => serverSockets.length === 1, 5_000, 'the server socket');
    const order = harness.limiter().connectionOf(serverSockets[0]!).order;
    // One `admin` the app drops, then (well past the hold time) 200 admitted chats.
    raw.send('42["admin",{}]');
    await sleep(600);
    for (let i = 0; i < 200; i++) raw.send(`42${i}["chat",${i}]`);
    await raw.waitFrame((frame) => frame.startsWith('43199['), 'the last chat reply');
    await sleep(100);
    expect(handled.get('chat')).toBe(200);
    // Nothing is pending: the dropped event's slot was given up long ago. It is not: it heads
    // the order for the life of the connection, and every later (answered) slot stays linked.
    expect(orderChain(order)).toBeLessThanOrEqual(1);
  }, 30_000);

  // --- Dynamic namespaces ---------------------------------------------------------------

  it('a charged dynamic namespace gives its open-connection slot back when it is left (the Engine.IO connection stays)', async () => {
    const { port } = await start([RoomGateway], {
      connection: { capacity: 100, refillRate: 100 },
      maxConnectionsPerIp: 2,
    });
    const raw = await rawSession(port, ['/room-0']);
    raws.push(raw);
    for (let i = 1; i <= 4; i++) {
      raw.send(`40/room-${i},`);
      const answer = await raw.waitFrame(
        (frame) => frame.startsWith(`40/room-${i},`) || frame.startsWith(`44/room-${i},`),
        `the answer to /room-${i}`,
      );
      expect(answer.startsWith(`40/room-${i},`)).toBe(true);
      raw.send(`41/room-${i},`);
      await sleep(100);
    }
    expect(raw.closed).toBeUndefined();
    expect(harness.limiter().stats().connections).toBe(1);
  }, 30_000);

  it('dynamic first, then a static namespace: both free; a second dynamic one is charged', async () => {
    const { port } = await start([RoomGateway, RootGateway], {
      connection: { capacity: 100, refillRate: 100 },
      maxConnectionsPerIp: 1,
    });
    const raw = await rawSession(port, ['/room-a', '/']);
    raws.push(raw);
    raw.send('40/room-b,');
    const refusal = await raw.waitFrame((frame) => frame.startsWith('44/room-b,'), 'the refusal of /room-b');
    expect(JSON.parse(refusal.slice('44/room-b,'.length))).toMatchObject({ data: { code: 'concurrency' } });
    expect(raw.closed).toBeUndefined();
  }, 30_000);

  it('two dynamic joins sent before either connects: one is free, the other charged', async () => {
    const { port } = await start([RoomGateway], {
      connection: { capacity: 100, refillRate: 100 },
      maxConnectionsPerIp: 1,
    });
    const raw = await rawSession(port, []);
    raws.push(raw);
    raw.send('40/room-a,');
    raw.send('40/room-b,');
    await raw.waitFrame((frame) => frame.startsWith('4') && frame.includes('/room-b,'), 'the answer to /room-b');
    await raw.waitFrame((frame) => frame.startsWith('4') && frame.includes('/room-a,'), 'the answer to /room-a');
    const answers = raw.frames.filter((frame) => /^4[04]\/room-/.test(frame)).map((frame) => frame.slice(0, 2));
    expect(answers.sort()).toEqual(['40', '44']);
  }, 30_000);

  it("a refused dynamic join in connectionRefusal 'close' mode says why and leaves the connection up", async () => {
    const { port } = await start([RoomGateway], {
      connection: { capacity: 100, refillRate: 100 },
      maxConnectionsPerIp: 1,
      connectionRefusal: 'close',
    });
    const raw = await rawSession(port, ['/room-a']);
    raws.push(raw);
    raw.send('40/room-b,');
    const refusal = await raw.waitFrame((frame) => frame.startsWith('44/room-b,'), 'the refusal of /room-b');
    expect(JSON.parse(refusal.slice('44/room-b,'.length))).toMatchObject({ data: { code: 'concurrency' } });
    raw.send('42/room-a,["say",1]');
    await raw.waitFrame((frame) => frame.startsWith('42/room-a,["said"'), 'the reply on /room-a');
  }, 30_000);

  it('keeps no listener per room on the Engine.IO connection when switching dynamic rooms', async () => {
    const { port } = await start([RoomGateway], { connection: { capacity: 100, refillRate: 100 } });
    const raw = await rawSession(port, ['/room-0']);
    raws.push(raw);
    const conn = serverSockets[0]!.conn;
    const baseline = conn.listenerCount('close');
    // A client moving from room to room (one open at a time, each left before the next).
    for (let i = 1; i <= 15; i++) {
      raw.send(`40/room-${i},`);
      await raw.waitFrame((frame) => frame.startsWith(`40/room-${i},`), `the join of /room-${i}`);
      raw.send(`41/room-${i},`);
      await waitFor(() => !serverSockets[i]!.connected, 5_000, `the leave of /room-${i}`);
    }
    expect(harness.limiter().stats().connections).toBe(1);
    // Each charged join left a `close` listener (holding its admission) on the Engine.IO
    // connection for its whole life: 15 more (Node warns MaxListenersExceededWarning at 11).
    await sleep(50);
    expect(conn.listenerCount('close') - baseline).toBe(0);
  }, 30_000);
});
