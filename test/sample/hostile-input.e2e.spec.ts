import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { INestApplication, LoggerService } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { WsRateLimitAdapter } from 'nestjs-ws-rate-limit';
import type { AddressInfo } from 'node:net';
import { AppModule } from '../../sample/app.module.js';
import { withEnv } from '../support/app.js';
import { TestClient, type Frame } from '../support/ws-client.js';

// Issue 10 item 6: the sample's status query is limited like any other message, and no
// handler throws on any JSON, echoes what a client sent, or logs a client's mistake at
// ERROR or with a stack.

/** A log line as the application's logger received it. */
interface LogLine {
  level: string;
  text: string;
}

/** A logger that keeps every line, at every level. */
function capturingLogger(lines: LogLine[]): LoggerService {
  const keep =
    (level: string) =>
    (...args: unknown[]): void => {
      lines.push({
        level,
        text: args.map((arg) => (arg instanceof Error ? String(arg.stack) : String(arg))).join(' '),
      });
    };
  return {
    log: keep('log'),
    error: keep('error'),
    warn: keep('warn'),
    debug: keep('debug'),
    verbose: keep('verbose'),
    fatal: keep('fatal'),
  };
}

/** Text a test puts in client data to see whether any frame sent back quotes it. */
const MARKER = 'ECHO-7f3a';

describe('the sample against hostile and abusive input', () => {
  let app: INestApplication;
  let url: string;
  const lines: LogLine[] = [];

  beforeAll(async () => {
    app = await withEnv(
      // One connection per case: more than the per-address connection limit allows by default.
      {
        WS_RATE_LIMIT_STORE: undefined,
        WS_RATE_LIMIT_CONNECTION_CAPACITY: '100',
        WS_RATE_LIMIT_CONNECTION_REFILL_RATE: '100',
      },
      async () => {
        const moduleRef = await Test.createTestingModule({ imports: [AppModule] }).compile();
        const created = moduleRef.createNestApplication({ logger: capturingLogger(lines) });
        created.useWebSocketAdapter(new WsRateLimitAdapter(created));
        await created.listen(0, '127.0.0.1');
        return created;
      },
    );
    url = `ws://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}`;
  });
  afterAll(() => app.close());

  it('refuses a get_limits flood: status queries spend a budget like any other message', async () => {
    const client = await TestClient.connect(url);
    await client.waitForEvent('welcome');
    // In one write (so in one read): 10 burst and 5 per second, no token back mid-flood.
    client.inOneWrite(() => {
      for (let i = 0; i < 15; i++) client.send('get_limits');
    });
    const answers = await client.waitFor(
      (frame) => frame.event === 'limits_status' || frame.event === 'rate_limit',
      15,
    );
    const refused = answers.filter((frame) => frame.event === 'rate_limit');
    // 10 burst and 5 per second: a burst of 15 is refused at least 4 times (5 on a quick machine).
    expect(refused.length).toBeGreaterThanOrEqual(4);
    for (const frame of refused) expect(frame.data).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'get_limits' });
    await client.close();
  });

  it.each<[string, string, unknown]>([
    ['search', 'a query object with toString', { query: { toString: MARKER } }],
    ['search', 'a null payload', null],
    ['search', 'an array payload', [MARKER]],
    ['search', 'an over-long query', { query: MARKER.repeat(40) }],
    ['presence', 'a status object with toString', { status: { toString: MARKER } }],
    ['presence', 'the query object of the issue', { query: { toString: 1 }, status: MARKER }],
    ['presence', 'a string payload', MARKER],
    ['chat', 'a content object with toString', { content: { toString: MARKER } }],
    ['chat', 'a number payload', 42],
    ['chat', 'an over-long content', { content: MARKER.repeat(200) }],
  ])('answers %s with %s by an error frame that quotes nothing of it', async (event, _, data) => {
    const client = await TestClient.connect(url);
    await client.waitForEvent('welcome');
    const before = lines.length;
    client.send(event, data);
    const [answer] = await client.waitForEvent('error');
    expect(answer).toEqual({
      event: 'error',
      data: { code: 'INVALID_PAYLOAD', messageType: event, message: expect.any(String) },
    });
    // A valid message afterwards is served: the handler did not throw, nothing broke.
    client.send('get_limits');
    await client.waitForEvent('limits_status');
    expectNoEcho(client.frames);
    const logged = lines.slice(before);
    expect(logged.filter((line) => !['debug', 'verbose'].includes(line.level))).toEqual([]);
    expect(logged.filter((line) => /\n\s+at /.test(line.text))).toEqual([]);
    await client.close();
  });

  it('logs a client’s invalid payloads once per connection, at debug level', async () => {
    const client = await TestClient.connect(url);
    await client.waitForEvent('welcome');
    const before = lines.length;
    for (let i = 0; i < 3; i++) client.send('chat', { content: { toString: MARKER } });
    client.send('presence', { status: MARKER });
    await client.waitForEvent('error', 4);
    expect(lines.slice(before)).toEqual([{ level: 'debug', text: expect.stringContaining('Invalid chat payload') }]);
    expectNoEcho(client.frames);
    await client.close();
  });

  it('sends back nothing of a valid message either', async () => {
    const client = await TestClient.connect(url);
    await client.waitForEvent('welcome');
    client.send('search', { query: MARKER });
    client.send('chat', { content: MARKER });
    client.send('presence', { status: 'away' });
    await client.waitForEvent('search_results');
    await client.waitForEvent('ack');
    expectNoEcho(client.frames);
    await client.close();
  });
});

/** No frame the client received quotes the marker, or the issue's `toString` key. */
function expectNoEcho(frames: Frame[]): void {
  for (const frame of frames) {
    const text = JSON.stringify(frame);
    expect(text).not.toContain(MARKER);
    expect(text).not.toContain('toString');
  }
}
