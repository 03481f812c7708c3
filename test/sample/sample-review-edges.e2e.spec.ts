import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import {
  RateLimitedClient,
  socketIoFactory,
  type DropEvent,
  type RateLimitedClientOptions,
  type ReconnectEvent,
  type UndeliveredEvent,
} from 'nestjs-ws-rate-limit/client';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { io } from 'socket.io-client';
import '../support/io-settle.js';
import { WebSocket } from 'ws';
import { startSample, type RunningSample } from '../client/support/sample-app.js';
import { ensureBuilt, ROOT } from '../support/build.js';
import { startIoSample, type RunningIoSample } from '../support/io-sample-app.js';
import { TestClient, type Frame } from '../support/ws-client.js';

// A review of the sample, its README sections ("Quick start", "A complete app: the sample",
// "Client", "The client on socket.io", "The demo page", "Recipes") and the client, as a new
// user meets them: the sample's answers to hostile frames, the README's Node client against
// the sample, the client's option checks, and the sample's `.env`.
//
// Seven cases failed on the code reviewed (d8f2550) and were fixed: the README's isAck did
// not take the sample's INVALID_PAYLOAD error for a chat as its answer (the next chat waited
// 10 s; the README's and the demo page's isAck now do), an event no ack ever answers
// (typing) was held 10 s per message once isAck was set (the 10 s net now holds only events
// an ack has answered), and the client took autoConnect/reconnect 'false', a null type
// limit, a text or infinite capacity without a word (now refused, naming the option).

/** Many connections from 127.0.0.1 in one file: more than the default 5 burst. */
const ROOMY = { WS_RATE_LIMIT_CONNECTION_CAPACITY: '200', WS_RATE_LIMIT_CONNECTION_REFILL_RATE: '200' };

/** Text a test puts in client data to see whether any frame sent back quotes it. */
const MARKER = 'ECHO-5b1d';

/**
 * The README's Node example's `isAck` ("The sample answers every chat with an ack naming its
 * type: the next chat goes as soon as one is through").
 */
const readmeIsAck = (message: unknown) => {
  const { event, data } = message as { event?: string; data?: { messageType?: string } };
  return (event === 'ack' || event === 'error') && data?.messageType === 'chat' && { event: 'chat' };
};

/** Waits until `condition` holds, checking every 10 ms; fails after `timeoutMs`. */
async function until(condition: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** What a test saw of one RateLimitedClient. */
interface Seen {
  client: RateLimitedClient;
  messages: Frame[];
  drops: DropEvent[];
  undelivered: UndeliveredEvent[];
  reconnects: ReconnectEvent[];
  errors: unknown[];
  of(event: string): Frame[];
}

function observe(url: string, options: RateLimitedClientOptions): Seen {
  const client = new RateLimitedClient(url, { WebSocket, ...options });
  const seen: Seen = {
    client,
    messages: [],
    drops: [],
    undelivered: [],
    reconnects: [],
    errors: [],
    of: (event) => seen.messages.filter((frame) => frame.event === event),
  };
  client.on('message', (message) => seen.messages.push(message as Frame));
  client.on('drop', (drop) => seen.drops.push(drop));
  client.on('undelivered', (report) => seen.undelivered.push(report));
  client.on('reconnect', (event) => seen.reconnects.push(event));
  client.on('error', (error) => seen.errors.push(error));
  return seen;
}

describe('the sample (ws) against frames no handler takes', () => {
  let sample: RunningSample;
  const clients: TestClient[] = [];
  const connect = async () => {
    const client = await TestClient.connect(sample.url);
    clients.push(client);
    await client.waitForEvent('welcome');
    return client;
  };

  beforeAll(async () => {
    sample = await startSample(ROOMY);
  });
  afterEach(async () => {
    for (const client of clients.splice(0)) await client.close();
  });
  afterAll(() => sample.close());

  // README, "Unrouted frames": answered with { event: 'error', data: { code: 'INVALID_MESSAGE' |
  // 'UNKNOWN_EVENT' } }, the id echoed when the message carried a valid one, no other client text.
  it.each<[string, string | Buffer, unknown]>([
    ['malformed JSON', `{"event":"chat","data":"${MARKER}"`, { code: 'INVALID_MESSAGE' }],
    ['a JSON array', JSON.stringify(['chat', MARKER]), { code: 'INVALID_MESSAGE' }],
    ['a numeric event', JSON.stringify({ event: 5, data: MARKER }), { code: 'INVALID_MESSAGE' }],
    ['binary garbage', Buffer.from([0xff, 0xfe, 0x00, 0x01]), { code: 'INVALID_MESSAGE' }],
    ['an unknown event', JSON.stringify({ event: MARKER, data: MARKER }), { code: 'UNKNOWN_EVENT' }],
    [
      'an unknown event with a string id',
      JSON.stringify({ event: 'nope', data: MARKER, id: 'm-1' }),
      { code: 'UNKNOWN_EVENT', id: 'm-1' },
    ],
    [
      'an unknown event with an over-long id (not echoed)',
      JSON.stringify({ event: 'nope', data: 1, id: 'x'.repeat(65) }),
      { code: 'UNKNOWN_EVENT' },
    ],
  ])('answers %s with the documented error frame, quoting nothing', async (_, frame, data) => {
    const client = await connect();
    client.sendRaw(frame);
    const [error] = await client.waitForEvent('error');
    expect(error).toEqual({ event: 'error', data });
    expect(JSON.stringify(client.frames)).not.toContain(MARKER);
    // The connection goes on.
    client.send('get_limits');
    await client.waitForEvent('limits_status');
  });

  it('routes a binary frame holding JSON like a text one', async () => {
    const client = await connect();
    client.sendRaw(Buffer.from(JSON.stringify({ event: 'chat', data: { content: 'binary' } })));
    const [ack] = await client.waitForEvent('ack');
    expect(ack).toEqual({ event: 'ack', data: { messageType: 'chat' } });
  });

  it('closes with 1009 on a frame over the 64 KiB payload limit, and one just under it is an invalid chat', async () => {
    const client = await connect();
    const under = JSON.stringify({ event: 'chat', data: { content: 'x'.repeat(60_000) } });
    client.sendRaw(under);
    const [error] = await client.waitForEvent('error');
    expect(error!.data).toMatchObject({ code: 'INVALID_PAYLOAD', messageType: 'chat' });
    client.sendRaw(JSON.stringify({ event: 'chat', data: { content: 'x'.repeat(70_000) } }));
    expect((await client.waitClose()).code).toBe(1009);
  });
});

describe('the README’s Node client against the sample (ws)', () => {
  let sample: RunningSample;
  const closers: Array<() => unknown> = [];

  beforeAll(async () => {
    sample = await startSample(ROOMY);
  });
  afterEach(async () => {
    for (const close of closers.splice(0)) await close();
  });
  afterAll(() => sample.close());

  /** The README's Node client: its isAck and `undelivered: 'requeue'`. */
  const readmeClient = async (extra: RateLimitedClientOptions = {}): Promise<Seen> => {
    const seen = observe(sample.url, { isAck: readmeIsAck, undelivered: 'requeue', ...extra });
    closers.push(() => seen.client.close());
    await until(() => seen.client.state === 'open' && seen.of('welcome').length === 1, 'the welcome');
    return seen;
  };

  // README (Client, the Node example): "The sample answers every chat with an ack naming
  // its type: the next chat goes as soon as one is through". It does not: a chat whose content
  // the handler refuses (over 1000 characters, or not a string) is answered with
  // { event: 'error', data: { code: 'INVALID_PAYLOAD', messageType: 'chat', message } }, which
  // carries no id (so the client's errorFrameId cannot match it) and which the README's isAck
  // does not take for an answer. The chat stays unconfirmed for confirmMs (10 s with isAck) and,
  // the limit being unknown (maxUnconfirmed 1), holds every later chat that long. Expected: the
  // answer the client got is taken as the chat's answer and the next chat goes at once.
  it('after a chat the sample answers with INVALID_PAYLOAD, the next chat goes at once, not 10 s later', async () => {
    const seen = await readmeClient();
    expect(seen.client.send('chat', { content: 'x'.repeat(1001) })).toBe(true);
    await until(() => seen.of('error').length === 1, 'the INVALID_PAYLOAD answer');
    expect(seen.of('error')[0]!.data).toMatchObject({ code: 'INVALID_PAYLOAD', messageType: 'chat' });
    expect(seen.client.send('chat', { content: 'hello' })).toBe(true);
    // Answered: nothing should hold the second chat back.
    expect(seen.client.queued).toBe(0);
    await until(() => seen.of('ack').length === 1, 'the ack of the valid chat', 5_000);
  });

  // The sample's typing and presence handlers never reply (README: presence returns
  // "undefined, // no reply"). With the README's client (isAck set for chat only), confirmMs
  // is 10 s for every event, so a typing indicator waits 10 s for the one before it to be
  // "presumed accepted": three typing messages take 20 s to reach the room, although the
  // server's typing bucket (10 burst) admits them at once. Expected: an event isAck never
  // answers is confirmed by time as without isAck (250 ms), or the README says isAck must not
  // be used with events that have no reply.
  it('typing indicators (no reply) are not held 10 s each by an isAck that only answers chat', async () => {
    const room = await TestClient.connect(sample.url);
    closers.push(() => room.close());
    await room.waitForEvent('welcome');
    const seen = await readmeClient();
    for (let i = 0; i < 3; i++) seen.client.send('typing', { isTyping: i % 2 === 0 });
    await room.waitForEvent('typing', 3, 5_000);
  });

  it('sends an unknown event and is answered by the error frame echoing its id: nothing reported undelivered', async () => {
    const seen = await readmeClient();
    seen.client.send('nope', { x: 1 });
    await until(() => seen.of('error').length === 1, 'the UNKNOWN_EVENT answer');
    expect(seen.of('error')[0]).toEqual({ event: 'error', data: { code: 'UNKNOWN_EVENT', id: expect.any(Number) } });
    seen.client.close();
    expect(seen.undelivered).toEqual([]);
    expect(seen.drops).toEqual([]);
  });

  it('accounts for every message of a priority flood that ends in 1008, then reconnects after the policy delay', async () => {
    const seen = await readmeClient({ policyDelayMs: 300, backoffBaseMs: 1 });
    const FLOOD = 60;
    for (let i = 0; i < FLOOD; i++) expect(seen.client.sendPriority('chat', { content: `p${i}` })).toBe(true);
    await until(() => seen.reconnects.length === 1, 'the close 1008 and its reconnect');
    const rejected = seen.drops.filter((drop) => drop.reason === 'rejected');
    const unanswered = seen.undelivered.flatMap((report) => report.messages);
    // Every message: acknowledged, refused (a priority message is dropped, not re-sent) or
    // reported unanswered at the close; none twice, none without a word.
    expect(seen.of('ack').length + rejected.length + unanswered.length).toBe(FLOOD);
    expect(rejected).toHaveLength(10);
    expect(seen.drops).toHaveLength(10);
    expect(seen.undelivered.every((report) => report.reason === 'closed' && report.code === 1008)).toBe(true);
    expect(seen.undelivered.flatMap((report) => report.requeued)).toEqual([]);
    expect(seen.reconnects[0]).toMatchObject({ code: 1008, policy: true });
    expect(seen.reconnects[0]!.delayMs).toBeGreaterThanOrEqual(300);
    await until(() => seen.of('welcome').length === 2 && seen.client.state === 'open', 'the reconnect');
    // A fresh connection, a fresh budget.
    seen.client.send('chat', { content: 'back' });
    await until(() => seen.of('ack').length === FLOOD - 10 - unanswered.length + 1, 'the ack after the reconnect');
  });

  it('drops a chat over the payload limit as rejected (close 1009), delivers the chat sent behind it after the reconnect', async () => {
    const room = await TestClient.connect(sample.url);
    closers.push(() => room.close());
    await room.waitForEvent('welcome');
    const seen = await readmeClient({ backoffBaseMs: 1, backoffCapMs: 50 });
    seen.client.send('chat', { content: 'y'.repeat(70_000) });
    seen.client.send('chat', { content: 'behind' });
    await room.waitForEvent('chat', 1, 15_000);
    expect(room.events('chat').map((frame) => frame.data.content)).toEqual(['behind']);
    expect(seen.drops.map((drop) => drop.reason)).toEqual(['rejected']);
    expect((seen.drops[0]!.message.data as { content: string }).content).toHaveLength(70_000);
  });
});

describe('the client on socket.io against the socket.io sample', () => {
  let sample: RunningIoSample;
  const closers: Array<() => unknown> = [];

  beforeAll(async () => {
    sample = await startIoSample(ROOMY);
  });
  afterEach(async () => {
    for (const close of closers.splice(0)) await close();
  });
  afterAll(() => sample.close());

  it('delivers 45 chats (past the 30 burst) completely and in order, refused once at most', async () => {
    const room = observe(sample.url, { createSocket: socketIoFactory(io, { transports: ['websocket'] }) });
    closers.push(() => room.client.close());
    const seen = observe(sample.url, {
      createSocket: socketIoFactory(io, { transports: ['websocket'] }),
      isAck: readmeIsAck,
    });
    closers.push(() => seen.client.close());
    const notices: unknown[] = [];
    seen.client.on('rateLimit', (notice) => notices.push(notice));
    await until(() => seen.of('welcome').length === 1 && room.of('welcome').length === 1, 'both welcomes');
    const contents = Array.from({ length: 45 }, (_, i) => `io ${i}`);
    for (const content of contents) seen.client.send('chat', { content });
    await until(() => room.of('chat').length === contents.length, 'the room to hear every chat', 30_000);
    expect(room.of('chat').map((frame) => (frame.data as { content: string }).content)).toEqual(contents);
    expect(notices.length).toBeLessThanOrEqual(1);
    expect(seen.drops).toEqual([]);
  });
});

describe('RateLimitedClient options, checked with errors that name them', () => {
  // README (Client): "Every option is documented on RateLimitedClientOptions"; the client
  // validates its options at construction with `options.<name> must be ...` (messageIds must
  // be a boolean, isAck a function, limits' figures numbers). Options read from configuration
  // often arrive as text: `autoConnect: 'false'` connected anyway and `reconnect: 'false'`
  // reconnected, without a word; a null limit threw a bare TypeError; a capacity given as text
  // or Infinity was taken (an infinite capacity turns the declared limit into no pacing at
  // all, and the maxUnconfirmed safeguard off with it). Expected: each refused at construction
  // with an error naming the option, as the other options are.
  it.each<[string, Record<string, unknown>, RegExp]>([
    ["autoConnect: 'false'", { autoConnect: 'false' }, /options\.autoConnect/],
    ["reconnect: 'false'", { reconnect: 'false' }, /options\.reconnect/],
    ['limits.types.chat: null', { limits: { types: { chat: null } } }, /options\.limits\.types\.chat/],
    [
      "limits.types.chat.capacity: '30'",
      { limits: { types: { chat: { capacity: '30', refillPerSecond: 15 } } } },
      /options\.limits\.types\.chat\.capacity/,
    ],
    [
      'limits.types.chat.capacity: Infinity',
      { limits: { types: { chat: { capacity: Infinity, refillPerSecond: 15 } } } },
      /options\.limits\.types\.chat\.capacity/,
    ],
  ])('refuses %s, naming it', (_, options, named) => {
    let client: RateLimitedClient | undefined;
    try {
      expect(() => {
        client = new RateLimitedClient('ws://127.0.0.1:9', { WebSocket, autoConnect: false, ...options });
      }).toThrow(named);
    } finally {
      client?.close();
    }
  });

  it.each<[string, Record<string, unknown>, RegExp]>([
    ['messageIds: 1', { messageIds: 1 }, /options\.messageIds must be a boolean/],
    ['isAck: true', { isAck: true }, /options\.isAck must be a function/],
    ["maxQueue: '10'", { maxQueue: '10' }, /options\.maxQueue must be an integer >= 0/],
    ['limits.global: 5', { limits: { global: 5 } }, /options\.limits\.global must be an object/],
    [
      'limits.types.chat.refillPerSecond: 0',
      { limits: { types: { chat: { capacity: 30, refillPerSecond: 0 } } } },
      /options\.limits\.types\.chat\.refillPerSecond/,
    ],
  ])('refuses %s, naming it', (_, options, named) => {
    expect(() => new RateLimitedClient('ws://127.0.0.1:9', { WebSocket, autoConnect: false, ...options })).toThrow(
      named,
    );
  });
});

describe('the sample as `npm start` runs it, configured by a .env file', () => {
  let child: ChildProcess | undefined;
  let dir: string | undefined;

  afterAll(() => {
    child?.kill('SIGKILL');
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  // README: "ConfigModule.forRoot() in your root module is only needed to load a .env file";
  // the sample imports it, so a .env in the working directory configures it.
  it('reads WS_RATE_LIMIT_* variables from .env in its working directory, and PORT', async () => {
    ensureBuilt('package');
    ensureBuilt('sample');
    dir = mkdtempSync(join(tmpdir(), 'wsrl-sample-env-'));
    writeFileSync(join(dir, '.env'), 'WS_RATE_LIMIT_GLOBAL_CAPACITY=7\nWS_RATE_LIMIT_GLOBAL_REFILL_RATE=3\n');
    const port = await freePort();
    const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(port), NODE_OPTIONS: '' };
    for (const name of Object.keys(env)) if (name.startsWith('WS_RATE_LIMIT_')) delete env[name];
    child = spawn(process.execPath, [join(ROOT, 'dist/sample/main.js')], {
      cwd: dir,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    await until(
      () => output.includes('Chat sample: ws://localhost:') || child!.exitCode !== null,
      'the sample to start',
      30_000,
    );
    expect(output).toContain(`Chat sample: ws://localhost:${port}`);
    const client = await TestClient.connect(`ws://127.0.0.1:${port}`);
    const [welcome] = await client.waitForEvent('welcome');
    expect(welcome!.data.limits.global).toEqual({ capacity: 7, refillRate: 3 });
    expect(welcome!.data.status.global).toMatchObject({ capacity: 7 });
    await client.close();
    const exited = new Promise((resolve) => child!.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
    child = undefined;
  }, 180_000);
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
