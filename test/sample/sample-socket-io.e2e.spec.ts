import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { ensureBuilt, ROOT } from '../support/build.js';
import { connectIo, ENGINE_TRANSPORTS, type IoTestClient } from '../support/io-client.js';
import { startIoSample, type RunningIoSample } from '../support/io-sample-app.js';
import { RefillClock } from '../support/refill.js';

type Info = Record<string, unknown>;

describe.each(ENGINE_TRANSPORTS)('the sample chat server on socket.io over %s (in process)', (transport) => {
  let running: RunningIoSample;
  const clients: IoTestClient[] = [];
  const connect = async () => {
    const client = await connectIo(running.url, transport);
    clients.push(client);
    return client;
  };

  beforeAll(async () => {
    // These tests open more connections from 127.0.0.1 than the default 5 burst.
    running = await startIoSample({ WS_RATE_LIMIT_CONNECTION_CAPACITY: '100' });
  });
  afterEach(() => {
    for (const client of clients.splice(0)) client.close();
  });
  afterAll(() => running.close());

  it('welcomes a client with its limits', async () => {
    const client = await connect();
    await client.until(() => client.of('welcome').length === 1, 10_000, 'welcome');
    const [welcome] = client.of('welcome') as Array<{ limits: Info; status: { types: Info } }>;
    expect(welcome!.limits.global).toEqual({ capacity: 100, refillRate: 50 });
    expect(welcome!.status.types).toMatchObject({
      chat: { remaining: 30, capacity: 30 },
      typing: { remaining: 10, capacity: 10 },
      presence: { remaining: 5, capacity: 5 },
      search: { remaining: 5, capacity: 5 },
    });
  });

  it('limits chat at 30 burst: ack events, then rate_limit events naming the message id; peers get the chat', async () => {
    const client = await connect();
    const listener = await connect();
    const sent = 35;
    const clock = new RefillClock();
    for (let i = 0; i < sent; i++) client.socket.emit('chat', { content: `hi ${i}`, id: i });
    const answered = () => client.of('ack').length + client.of('rate_limit').length;
    await client.until(() => answered() === sent, 20_000, 'an answer to every chat');
    const acks = client.of('ack').length;
    // 30 burst, plus what the 15-a-second refill gave while the burst was being handled.
    const refilled = clock.gained(15);
    expect(acks).toBeGreaterThanOrEqual(30);
    expect(acks).toBeLessThanOrEqual(30 + refilled);
    // Some refused, unless the flood took so long (a loaded machine: a third of a second for
    // 35 events, as a clean-clone CI once took) that the refill covered them all.
    if (refilled < sent - 30) expect(acks).toBeLessThan(sent);
    expect(client.of('ack')[0]).toEqual({ messageType: 'chat' });
    // The refusals name the messages they refuse, in the order sent, all after the burst. A
    // token refilled mid-flood (a slow machine) lets a later message through, so the refused
    // ids need not be contiguous; every message is either refused or admitted, never both.
    const refusals = client.of('rate_limit') as Info[];
    const refusedIds = refusals.map((info) => info.id as number);
    expect(refusedIds[0]).toBeGreaterThanOrEqual(30);
    for (let i = 1; i < refusedIds.length; i++) expect(refusedIds[i]).toBeGreaterThan(refusedIds[i - 1]!);
    const admitted = Array.from({ length: sent }, (_, i) => i).filter((id) => !refusedIds.includes(id));
    expect(admitted).toHaveLength(acks);
    if (acks < sent) {
      expect(refusals[0]).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'chat', limit: 30, warningCount: 1 });
      expect(refusals[0]!.retryAfter).toBeGreaterThan(0);
    }
    // Peers got exactly the admitted messages, in order.
    await listener.until(() => listener.of('chat').length === acks, 10_000, 'the broadcast chats');
    expect((listener.of('chat') as Info[]).map((chat) => chat.content)).toEqual(admitted.map((id) => `hi ${id}`));
    expect(client.of('chat')).toEqual([]); // not sent back to the sender
    client.socket.emit('get_limits');
    await client.until(() => client.of('limits_status').length === 1, 10_000, 'limits_status');
    const [status] = client.of('limits_status') as Array<{ types: Record<string, { remaining: number }> }>;
    // Under one token at the last refusal; since then at most the refill (an idle machine: 1-3).
    expect(status!.types.chat!.remaining).toBeLessThanOrEqual(clock.remainingAtMost(15, 30));
    expect(status!.types.typing!.remaining).toBe(10);
  });

  it('answers an invalid payload with an error event that quotes nothing of it', async () => {
    const client = await connect();
    client.socket.emit('chat', { content: 42, secret: 'do-not-echo' });
    await client.until(() => client.of('error').length === 1, 10_000, 'error event');
    expect(client.of('error')).toEqual([
      {
        code: 'INVALID_PAYLOAD',
        messageType: 'chat',
        message: 'chat expects { "content": a string of at most 1000 characters }',
      },
    ]);
  });

  it('disconnects a repeat offender: ten rate_limit events, rate_limit_disconnect, then io server disconnect', async () => {
    const client = await connect();
    const listener = await connect();
    const clock = new RefillClock();
    for (let i = 0; i < 40; i++) client.socket.emit('typing', { isTyping: i % 2 === 0 });
    await client.disconnected(20_000);
    expect(client.disconnectReason).toBe('io server disconnect');
    expect(client.of('rate_limit')).toHaveLength(10);
    expect((client.of('rate_limit') as Info[]).every((info) => info.code === 'TYPE_LIMIT')).toBe(true);
    expect(client.of('rate_limit_disconnect')).toEqual([{ code: 1008, reason: 'Rate limit violations' }]);
    // The disconnect notice is the last event the offender received.
    expect(client.events.at(-1)!.event).toBe('rate_limit_disconnect');
    // Its peers saw the typing events it was allowed: 10 burst, plus the 5-a-second refill.
    const typed = listener.of('typing').length;
    expect(typed).toBeGreaterThanOrEqual(10);
    expect(typed).toBeLessThanOrEqual(10 + clock.gained(5));
  });
});

describe('the demo page on socket.io', () => {
  let running: RunningIoSample;

  beforeAll(async () => {
    running = await startIoSample({}, { demoPage: true });
  }, 120_000);
  afterAll(() => running.close());

  it('tells the page the transport and serves the page, its socket.io module and the socket.io client', async () => {
    const get = async (path: string) => {
      const response = await fetch(`${running.pageUrl}${path}`);
      return { status: response.status, type: response.headers.get('content-type'), body: await response.text() };
    };
    const transport = await get('demo-transport.json');
    expect(transport.status).toBe(200);
    expect(JSON.parse(transport.body)).toEqual({ transport: 'socket.io' });
    const page = await get('');
    expect(page.status).toBe(200);
    expect(page.body).toContain('id="disconnect"');
    const module = await get('io-client.js');
    expect(module.status).toBe(200);
    expect(module.body).toContain('export class IoChatClient');
    const served = await get('socket.io/socket.io.js');
    expect(served.status).toBe(200);
    expect(served.type).toContain('javascript');
    expect(served.body).toContain('Socket.IO');
  });
});

describe('the socket.io sample as `npm run start:socket.io` runs it', () => {
  let child: ChildProcess | undefined;
  let client: IoTestClient | undefined;

  afterAll(() => {
    client?.close();
    child?.kill('SIGKILL');
  });

  it('starts from the build on PORT and serves the socket.io gateway', async () => {
    const scripts = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Info }).scripts;
    expect(scripts['start:socket.io']).toContain('node dist/sample/main-socket-io.js');
    ensureBuilt('package');
    ensureBuilt('sample');
    const port = await freePort();
    child = spawn(process.execPath, [join(ROOT, 'dist/sample/main-socket-io.js')], {
      env: { ...process.env, PORT: String(port), NODE_OPTIONS: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const deadline = Date.now() + 20_000;
    while (!output.includes('Chat sample (socket.io): http://localhost:')) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`sample did not start:\n${output}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    client = await connectIo(`http://127.0.0.1:${port}`, 'websocket');
    await client.until(() => client!.of('welcome').length === 1, 10_000, 'welcome');
    client.close();
    client = undefined;
    const exited = new Promise((resolve) => child!.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
    child = undefined;
    // Building first (when a test file runs on its own) takes a while on a busy machine.
  }, 180_000);
});

describe('the README', () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');

  it.each([
    ['sample/chat-io.gateway.ts', 'gateway-io'],
    ['sample/main-socket-io.ts', 'main-io'],
  ])('quotes %s (region %s) as it is', (file, region) => {
    const source = readFileSync(join(ROOT, file), 'utf8');
    const start = source.indexOf(`// #region ${region}\n`);
    const end = source.indexOf(`// #endregion ${region}`);
    expect(start).toBeGreaterThanOrEqual(0);
    const snippet = source.slice(start + `// #region ${region}\n`.length, end).trim();
    expect(readme).toContain(snippet);
  });
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
