import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { WsRateLimitAdapter } from 'nestjs-ws-rate-limit';
import { AppModule } from '../../sample/app.module.js';
import { startApp, withEnv, type RunningApp } from '../support/app.js';
import { ensureBuilt, ROOT } from '../support/build.js';
import { RefillClock } from '../support/refill.js';
import { TestClient } from '../support/ws-client.js';

describe('the sample chat server (in process)', () => {
  let running: RunningApp;

  beforeAll(async () => {
    running = await withEnv({ WS_RATE_LIMIT_STORE: undefined }, () =>
      startApp({ imports: [AppModule] }, (app) => new WsRateLimitAdapter(app)),
    );
  });
  afterAll(() => running.close());

  it('welcomes a client with its limits', async () => {
    const client = await TestClient.connect(running.url);
    const [welcome] = await client.waitForEvent('welcome');
    expect(welcome!.data.limits.global).toEqual({ capacity: 100, refillRate: 50 });
    expect(welcome!.data.status.types).toMatchObject({
      chat: { remaining: 30, capacity: 30 },
      typing: { remaining: 10, capacity: 10 },
      presence: { remaining: 5, capacity: 5 },
      search: { remaining: 5, capacity: 5 },
    });
    await client.close();
  });

  it('limits chat at the reference article figures and reports it in get_limits', async () => {
    const client = await TestClient.connect(running.url);
    const listener = await TestClient.connect(running.url);
    const sent = 35;
    const clock = new RefillClock();
    // In one write, read by the server in one go: sent one by one on a loaded machine, the 35
    // took a third of a second and the refill admitted them all (35 acks in a CI run).
    client.inOneWrite(() => {
      for (let i = 0; i < sent; i++) client.send('chat', { content: `hi ${i}` });
    });
    await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', sent);
    // 30 burst, plus what the 15-a-second refill gave while the burst was being handled.
    const acks = client.events('ack').length;
    expect(acks).toBeGreaterThanOrEqual(30);
    expect(acks).toBeLessThanOrEqual(30 + clock.gained(15));
    expect(acks).toBeLessThan(sent);
    expect(client.events('rate_limit')[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'chat', limit: 30 });
    await listener.waitForEvent('chat', acks);
    client.send('get_limits');
    const [status] = await client.waitForEvent('limits_status');
    // Under one token at the last refusal; since then at most the refill (an idle machine: 1-3).
    expect(status!.data.types.chat.remaining).toBeLessThanOrEqual(clock.remainingAtMost(15, 30));
    expect(status!.data.types.typing.remaining).toBe(10);
    await client.close();
    await listener.close();
  });

  it('serves /metrics, whose counters move by exactly what a scripted flood caused', async () => {
    const scrape = async (): Promise<string> => {
      const response = await fetch(`http://127.0.0.1:${running.port}/metrics`);
      expect(response.headers.get('content-type')).toContain('text/plain');
      return response.text();
    };
    const value = (text: string, series: string): number => {
      const line = text.split('\n').find((entry) => entry.startsWith(`${series} `));
      return line === undefined ? 0 : Number(line.slice(series.length + 1));
    };
    const before = await scrape();
    const flooder = await TestClient.connect(running.url);
    // In one read: typing refills 5 a second, and exact counts need no token back mid-flood.
    flooder.inOneWrite(() => {
      for (let i = 0; i < 40; i++) flooder.send('typing', { isTyping: i % 2 === 0 });
      for (let i = 0; i < 3; i++) flooder.send('presence', { status: 'online' });
    });
    await flooder.waitForEvent('rate_limit', 10);
    await flooder.waitClose();
    const after = await scrape();
    const delta = (series: string) => value(after, series) - value(before, series);
    // typing: 10 burst, then 10 violations close the socket (1008) before anything else.
    expect(delta('ws_rate_limit_decisions_total{result="allowed",tier="",code="",type="typing"}')).toBe(10);
    expect(
      delta('ws_rate_limit_decisions_total{result="rejected",tier="type",code="TYPE_LIMIT",type="typing"}'),
    ).toBeGreaterThanOrEqual(10);
    expect(delta('ws_rate_limit_violations_total{code="TYPE_LIMIT",type="typing"}')).toBe(10);
    expect(delta('ws_rate_limit_disconnects_total{reason="violations"}')).toBe(1);
    expect(delta('ws_rate_limit_connections_total{result="accepted",reason=""}')).toBe(1);
    expect(delta('ws_rate_limit_near_limit_total{tier="type",type="typing"}')).toBe(2);
    await flooder.close();
  });

  it('marks search as expensive: five per minute', async () => {
    const client = await TestClient.connect(running.url);
    for (let i = 0; i < 6; i++) client.send('search', { query: `q${i}` });
    await client.waitFor((frame) => frame.event === 'search_results' || frame.event === 'rate_limit', 6);
    expect(client.events('search_results')).toHaveLength(5);
    const [limited] = client.events('rate_limit');
    expect(limited!.data).toMatchObject({ code: 'EXPENSIVE_LIMIT', messageType: 'search', limit: 5 });
    expect(limited!.data.retryAfter).toBeGreaterThan(55_000);
    await client.close();
  });
});

describe('the sample as `npm start` runs it', () => {
  let child: ChildProcess | undefined;

  afterAll(() => {
    child?.kill('SIGKILL');
  });

  it('starts from the build on PORT and serves the gateway', async () => {
    ensureBuilt('package');
    ensureBuilt('sample');
    const port = await freePort();
    child = spawn(process.execPath, [join(ROOT, 'dist/sample/main.js')], {
      env: { ...process.env, PORT: String(port), NODE_OPTIONS: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const deadline = Date.now() + 20_000;
    while (!output.includes('Chat sample: ws://localhost:')) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`sample did not start:\n${output}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const client = await TestClient.connect(`ws://127.0.0.1:${port}`);
    await client.waitForEvent('welcome');
    await client.close();
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
    ['sample/app.module.ts', 'module'],
    ['sample/chat.gateway.ts', 'gateway'],
    ['sample/main.ts', 'main'],
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
