import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from '@jest/globals';
import type { Provider } from '@nestjs/common';
import { Manager, type Socket as IoClientSocket } from 'socket.io-client';
import { WsRateLimitAdapter, WsRateLimitModule, type WsRateLimitModuleOptions } from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { startRedis, type RedisServer } from '../../support/redis-server.js';
import { connectIo, ENGINE_TRANSPORTS, IoTestClient, waitFor } from '../../support/io-client.js';
import { settle, sleep, TestClient, type Frame } from '../../support/ws-client.js';
import {
  OtherNamespaceGateway,
  SamePathGateway,
  script,
  ScriptedGateway,
  ScriptedGuard,
} from './frame-hold.review.gateway.js';

/**
 * Review of the frame hold (FrameHold, `waiting` in the message pipeline and both
 * adapters): can a connection's frames be held for ever, do held frames keep their order,
 * is any held frame lost?
 */

const baseOptions: WsRateLimitModuleOptions = {
  useEnv: false,
  tracker: 'connection',
  global: { capacity: 1000, refillRate: 1000 },
  violations: { max: 3, windowMs: 60_000 },
};

/** An app with the scripted gateway and guard (and `extra` providers) behind `makeAdapter`. */
function startScripted(
  options: WsRateLimitModuleOptions,
  makeAdapter: Parameters<typeof startApp>[1],
  extra: Provider[] = [],
): Promise<RunningApp> {
  return startApp(
    {
      imports: [WsRateLimitModule.forRoot({ ...baseOptions, ...options })],
      providers: [ScriptedGateway, ...extra, ScriptedGuard],
    },
    makeAdapter,
  );
}

describe('frame hold review, WsRateLimitAdapter', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}) => {
    running = await startScripted(options, (app) => new WsRateLimitAdapter(app));
  };
  const connect = async () => {
    const client = await TestClient.connect(running!.url, { perMessageDeflate: false });
    clients.push(client);
    return client;
  };
  /** Sends frames in one TCP write, so that the server reads them in one go. */
  const burst = (client: TestClient, frames: Array<string | [string, unknown]>) =>
    client.inOneWrite(() => {
      for (const frame of frames) {
        if (typeof frame === 'string') client.sendRaw(frame);
        else client.send(frame[0], frame[1]);
      }
    });
  const times = (count: number, event: string): Array<[string, unknown]> =>
    Array.from({ length: count }, (_, i) => [event, i]);
  const events = (frames: Frame[]) => frames.map((frame) => frame.event);

  beforeEach(() => script.reset());
  afterEach(async () => {
    script.open();
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  it('a tracker answering with a thenable that is not a native promise is decided as a promise is, and does not hold the later frames for ever', async () => {
    await start();
    const client = await connect();
    script.modes = ['thenable'];
    client.send('chat', 0);
    // Nest answered it with an `exception` frame (Forbidden: the guard's verdict, the
    // thenable's `then`'s return, was no boolean) until the tracker's answer was made a
    // promise to settle in arrival order: it is decided as a promise's is now.
    const first = await client.waitForEvent('ack', 1, 3000).catch((error: Error) => error.message);
    expect(Array.isArray(first) ? first.map((frame) => frame.data) : first).toEqual([0]);
    client.send('chat', 1);
    client.send('chat', 2);
    const acks = await client.waitForEvent('ack', 3, 3000).catch((error: Error) => error.message);
    expect(Array.isArray(acks) ? acks.map((frame) => frame.data) : acks).toEqual([0, 1, 2]);
    expect(client.events('exception')).toEqual([]);
  });

  it('a released frame whose tracker throws or rejects: the frames after it are answered, in order', async () => {
    await start();
    const client = await connect();
    script.modes = ['gate', 'throw', 'gate', 'reject', 'gate'];
    burst(client, times(6, 'chat'));
    await settle(() => script.calls >= 1);
    expect(script.calls).toBe(1);
    script.open();
    const acks = await client.waitForEvent('ack', 4);
    expect(acks.map((frame) => frame.data)).toEqual([0, 2, 4, 5]);
    await client.waitForEvent('exception', 2);
    expect(script.handled).toEqual([0, 2, 4, 5]);
    expect({ waiting: script.state!.waiting, held: script.state!.hold!.size }).toEqual({ waiting: 0, held: 0 });
  });

  it('the violation threshold reached while frames are held: one reply, the rate_limit frames, the close; later frames not processed', async () => {
    await start();
    const client = await connect();
    script.mode = 'gate';
    burst(client, times(8, 'presence'));
    await settle(() => script.calls >= 1);
    expect(script.calls).toBe(1);
    script.open();
    expect((await client.waitClose()).code).toBe(1008);
    expect(events(client.frames)).toEqual(['presence_ack', 'rate_limit', 'rate_limit', 'rate_limit']);
    expect(client.frames.slice(1).map((frame) => frame.data.warningCount)).toEqual([1, 2, 3]);
    expect(script.handled).toEqual([0]);
  });

  it('shadow mode: every held frame is processed, in order, nothing refused', async () => {
    await start({ shadow: true });
    const client = await connect();
    script.mode = 'gate';
    burst(client, times(6, 'presence'));
    await settle(() => script.calls >= 1);
    expect(script.calls).toBe(1);
    script.open();
    const replies = await client.waitForEvent('presence_ack', 6);
    expect(replies.map((frame) => frame.data)).toEqual([0, 1, 2, 3, 4, 5]);
    await sleep(50);
    expect(events(client.frames)).not.toContain('rate_limit');
  });

  it('held routed and unrouted frames are answered in arrival order', async () => {
    await start();
    const client = await connect();
    script.mode = 'gate';
    burst(client, [['chat', 0], 'not json', ['nosuch', 1], ['chat', 1], ['presence', 0], ['presence', 1], ['chat', 2]]);
    await settle(() => script.calls >= 1);
    expect(script.calls).toBe(1);
    script.open();
    await client.waitForEvent('ack', 3);
    await client.waitForEvent('rate_limit');
    expect(client.frames.map((frame) => [frame.event, frame.data?.code ?? frame.data])).toEqual([
      ['ack', 0],
      ['error', 'INVALID_MESSAGE'],
      ['error', 'UNKNOWN_EVENT'],
      ['ack', 1],
      ['presence_ack', 0],
      ['rate_limit', 'TYPE_LIMIT'],
      ['ack', 2],
    ]);
  });

  it('two gateways on the same path: every frame reaches its handler once, in arrival order', async () => {
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot(baseOptions)],
        providers: [ScriptedGateway, SamePathGateway, ScriptedGuard],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    const client = await connect();
    script.mode = 'gate';
    burst(client, [
      ['chat', 0],
      ['other', 0],
      ['chat', 1],
      ['other', 1],
    ]);
    await sleep(150);
    script.open();
    await client.waitForEvent('ack', 2);
    await client.waitForEvent('other_ack', 2);
    await sleep(100);
    expect(script.handled).toEqual([0, 'other:0', 1, 'other:1']);
    expect(client.frames.filter((frame) => frame.event !== 'error').map((frame) => [frame.event, frame.data])).toEqual([
      ['ack', 0],
      ['other_ack', 0],
      ['ack', 1],
      ['other_ack', 1],
    ]);
  });

  it('a socket closed while its frames are held: the hold empties and nothing waits any more', async () => {
    await start();
    const client = await connect();
    script.mode = 'gate';
    burst(client, times(5, 'chat'));
    await settle(() => script.calls >= 1);
    expect(script.calls).toBe(1);
    await client.close();
    script.open();
    await waitFor(() => script.handled.length > 0, 2000, 'the first chat');
    await settle(() => script.state!.waiting === 0 && script.state!.hold!.size === 0, 0, 5000);
    expect({ waiting: script.state!.waiting, held: script.state!.hold!.size }).toEqual({ waiting: 0, held: 0 });
  });
});

describe.each(ENGINE_TRANSPORTS)('frame hold review, WsRateLimitIoAdapter over %s', (transport) => {
  let running: RunningApp | undefined;
  const clients: IoTestClient[] = [];
  const sockets: IoClientSocket[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}) => {
    running = await startScripted(options, (app) => new WsRateLimitIoAdapter(app), [OtherNamespaceGateway]);
  };
  const connect = async () => {
    const client = await connectIo(`http://127.0.0.1:${running!.port}`, transport);
    clients.push(client);
    return client;
  };

  beforeEach(() => script.reset());
  afterEach(async () => {
    script.open();
    await Promise.all(clients.splice(0).map((client) => client.closeAndSettle()));
    for (const socket of sockets.splice(0)) socket.disconnect();
    await running?.close();
    running = undefined;
  });

  it('an app middleware that refuses (next(err)) or drops an event while a decision waits holds no later event', async () => {
    await start();
    const client = await connect();
    script.modes = ['gate'];
    client.socket.emit('chat', { n: 0 });
    await sleep(100);
    client.socket.emit('chat', { n: 1, block: true });
    client.socket.emit('chat', { n: 2, stall: true });
    client.socket.emit('chat', { n: 3 });
    client.socket.emit('chat', { n: 4 });
    await settle(() => script.calls >= 1);
    expect(script.calls).toBe(1);
    script.open();
    await client.until(() => client.of('ack').length === 3);
    expect(client.of('ack')).toEqual([{ n: 0 }, { n: 3 }, { n: 4 }]);
    await client.until(() => script.state?.hold?.size === 0 && script.state.waiting === 0, 2000, 'an empty hold');
  });

  it("another namespace on the same connection is not held by this one's waiting decision", async () => {
    await start();
    const manager = new Manager(`http://127.0.0.1:${running!.port}`, {
      transports: [transport],
      upgrade: false,
      reconnection: false,
      forceNew: true,
    });
    const root = manager.socket('/');
    const other = manager.socket('/other');
    sockets.push(root, other);
    const acks: string[] = [];
    root.on('ack', (data: string) => acks.push(`root:${data}`));
    other.on('ack', (data: string) => acks.push(`other:${data}`));
    root.connect();
    other.connect();
    await waitFor(() => root.connected && other.connected, 5000, 'both namespaces');
    script.modes = ['gate'];
    root.emit('chat', 'a');
    await sleep(100);
    root.emit('chat', 'b');
    other.emit('chat', 'c');
    await waitFor(() => acks.length === 1, 3000, "the other namespace's ack");
    expect(acks).toEqual(['other:c']);
    script.open();
    await waitFor(() => acks.length === 3, 3000, 'every ack');
    expect(acks).toEqual(['other:c', 'root:a', 'root:b']);
  });
});

/** Opens a raw Engine.IO session over WebSocket and joins the main namespace. */
async function connectRaw(port: number, clients: TestClient[]): Promise<TestClient> {
  const client = await TestClient.connect(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`, {
    perMessageDeflate: false,
  });
  clients.push(client);
  const raw = (prefix: string) => (frame: Frame) => typeof frame.raw === 'string' && frame.raw.startsWith(prefix);
  await client.waitFor(raw('0{'));
  client.sendRaw('40');
  await client.waitFor(raw('40{'));
  return client;
}

/** socket.io EVENT packets, in one TCP write. */
function rawBurst(client: TestClient, events: Array<[string, unknown]>): void {
  client.inOneWrite(() => {
    for (const event of events) client.sendRaw(`42${JSON.stringify(event)}`);
  });
}

/** The EVENT packets a raw client received, as [event, data]. */
function received(client: TestClient): Array<[string, any]> {
  return client.frames
    .filter((frame) => typeof frame.raw === 'string' && frame.raw.startsWith('42'))
    .map((frame) => JSON.parse((frame.raw as string).slice(2)) as [string, any]);
}

/**
 * socket.io events in one TCP read: a raw Engine.IO client over `ws` (socket.io-client
 * writes each packet on its own), its packets corked into one write.
 */
describe('frame hold review, WsRateLimitIoAdapter, events in one read', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}) => {
    running = await startScripted(options, (app) => new WsRateLimitIoAdapter(app));
  };
  beforeEach(() => script.reset());
  afterEach(async () => {
    script.open();
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  it('control: with the tracker waiting, events of one read are held behind the first', async () => {
    await start();
    const client = await connectRaw(running!.port, clients);
    script.mode = 'gate';
    rawBurst(
      client,
      [0, 1, 2, 3].map((i): [string, unknown] => ['chat', i]),
    );
    await settle(() => script.calls >= 1);
    expect(script.calls).toBe(1);
    script.open();
    await waitFor(() => received(client).length === 4, 3000, 'four acks');
    expect(received(client)).toEqual([0, 1, 2, 3].map((i) => ['ack', i]));
  });

  it('decisions made in process (memory store, synchronous tracker): the events of one read reach their guards one after another, in order (README)', async () => {
    await start();
    const client = await connectRaw(running!.port, clients);
    rawBurst(
      client,
      [0, 1, 2, 3, 4, 5].map((i): [string, unknown] => ['chat', i]),
    );
    await waitFor(() => received(client).length === 6, 3000, 'six acks');
    expect(received(client)).toEqual([0, 1, 2, 3, 4, 5].map((i) => ['ack', i]));
    // README: on socket.io an event counts as waiting until its handler's guard has run (a tick
    // after the middlewares), so each of the five after the first was held until the previous
    // one's guard decided, then released (in a nextTick callback, no event-loop turn).
    expect(script.heldAtGuard).toEqual([5, 4, 3, 2, 1, 0]);
  });
});

/** socket.io on a real Redis (tracker `ip`): every decision waits on a round trip, or a reservation. */
describe('frame hold review, WsRateLimitIoAdapter on Redis, events in one read', () => {
  let redis: RedisServer;
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (reservationBatch: number) => {
    running = await startScripted(
      { store: 'redis', tracker: 'ip', redis: { url: redis.url, reservationBatch, commandTimeoutMs: 2000 } },
      (app) => new WsRateLimitIoAdapter(app),
    );
  };

  beforeAll(async () => {
    redis = await startRedis();
  });
  beforeEach(() => script.reset());
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
    await redis.command('FLUSHALL');
  });
  afterAll(() => redis.stop());

  it('12 presences in one read (no reservations): one reply, 3 rate_limit events, the disconnect; the rest not processed', async () => {
    await start(0);
    const client = await connectRaw(running!.port, clients);
    // The guard's tracker is synchronous here: the decisions wait on Redis only.
    rawBurst(
      client,
      Array.from({ length: 12 }, (_, i): [string, unknown] => ['presence', i]),
    );
    await client.waitClose();
    expect(received(client).map(([event]) => event)).toEqual([
      'presence_ack',
      'rate_limit',
      'rate_limit',
      'rate_limit',
      'rate_limit_disconnect',
    ]);
    expect(
      received(client)
        .slice(1, 4)
        .map(([, data]) => data.warningCount),
    ).toEqual([1, 2, 3]);
    expect(script.handled).toEqual([0]);
  });

  it('40 chats in one read (reservations of 64): all answered, in order', async () => {
    await start(64);
    const client = await connectRaw(running!.port, clients);
    rawBurst(
      client,
      Array.from({ length: 40 }, (_, i): [string, unknown] => ['chat', i]),
    );
    await waitFor(() => received(client).length === 40, 5000, '40 acks');
    expect(received(client)).toEqual(Array.from({ length: 40 }, (_, i) => ['ack', i]));
  });
});
