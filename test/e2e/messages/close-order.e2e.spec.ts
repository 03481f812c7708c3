import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { performance } from 'node:perf_hooks';
import {
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { sleep, TestClient, type Frame } from '../../support/ws-client.js';
import { CloseOrderGateway, handled } from './close-order.gateway.js';

/** Issue 10, items 1 and 2: nothing admitted is lost at the close, and frames keep their place. */
describe('answers before the close, in order', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}) => {
    running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            tracker: 'connection',
            global: { capacity: 1000, refillRate: 1000 },
            violations: { max: 10, windowMs: 60_000 },
            ...options,
          }),
        ],
        providers: [CloseOrderGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
  };
  const connect = async () => {
    const client = await TestClient.connect(running!.url, { perMessageDeflate: false });
    clients.push(client);
    return client;
  };
  /** Sends messages in one TCP write, so that the server reads them in one go. */
  const burst = (client: TestClient, messages: Array<[string, unknown]>) =>
    client.inOneWrite(() => {
      for (const [event, data] of messages) client.send(event, data);
    });
  const events = (frames: Frame[]) => frames.map((frame) => frame.event);
  const times = (count: number, event: string, from = 0): Array<[string, unknown]> =>
    Array.from({ length: count }, (_, i) => [event, from + i]);

  beforeEach(() => {
    handled.chat = handled.search = 0;
  });

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  it('45 chats in one write: 30 acks, then 10 rate_limit frames, then the 1008 close', async () => {
    await start();
    const client = await connect();
    burst(client, times(45, 'chat'));
    const closed = await client.waitClose();
    expect(closed.code).toBe(1008);
    expect(events(client.frames)).toEqual([...Array(30).fill('ack'), ...Array(10).fill('rate_limit')]);
    expect(client.frames.slice(0, 30).map((frame) => frame.data)).toEqual([...Array(30).keys()]);
    expect(client.frames.slice(30).map((frame) => frame.data.warningCount)).toEqual(
      [...Array(10).keys()].map((i) => i + 1),
    );
    expect(handled.chat).toBe(30);
  });

  it('waits for the replies of slow handlers admitted before the decision, and processes nothing after it', async () => {
    await start();
    const client = await connect();
    const started = performance.now();
    burst(client, [...times(3, 'search'), ...times(15, 'presence')]);
    // Within the grace, before the close: a later search is not processed.
    await sleep(30);
    client.send('search', 'late');
    const closed = await client.waitClose();
    expect(closed.code).toBe(1008);
    expect(performance.now() - started).toBeLessThan(1500);
    // Replies are not held behind slow ones; the rate_limit frames wait for the searches.
    expect(events(client.frames)).toEqual([
      'presence_ack',
      'search_results',
      'search_results',
      'search_results',
      ...Array(10).fill('rate_limit'),
    ]);
    expect(handled.search).toBe(3);
  });

  it('decides nothing, and processes nothing, after the threshold within the same read', async () => {
    await start();
    const limiter = running!.app.get(WsRateLimitService);
    const decisions: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => event.kind === 'decision' && decisions.push(event));
    const client = await connect();
    // 40 chats reach the threshold (30 admitted, the 10th violation); what follows in the same
    // write, 500 chats and an admissible search, comes after the close decision.
    burst(client, [...times(540, 'chat'), ['search', 'after the decision']]);
    const closed = await client.waitClose();
    subscription.unsubscribe();
    expect(closed.code).toBe(1008);
    expect(events(client.frames)).toEqual([...Array(30).fill('ack'), ...Array(10).fill('rate_limit')]);
    expect(handled.chat).toBe(30);
    expect(handled.search).toBe(0);
    // Only the messages up to the threshold were decided (no store work for the rest).
    expect(decisions).toHaveLength(40);
  });

  it('31 chats in one write: the 30 acks go out before the rate_limit frame', async () => {
    await start();
    const client = await connect();
    burst(client, times(31, 'chat'));
    await client.waitForEvent('rate_limit');
    expect(events(client.frames)).toEqual([...Array(30).fill('ack'), 'rate_limit']);
    expect(client.socket.readyState).toBe(client.socket.OPEN);
  });

  it('closes after the grace when an admitted handler does not answer in time', async () => {
    await start({ closeGraceMs: 300 });
    const client = await connect();
    const started = performance.now();
    burst(client, [['stall', 1], ...times(11, 'presence')]);
    const closed = await client.waitClose();
    const elapsed = performance.now() - started;
    expect(closed.code).toBe(1008);
    expect(elapsed).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(3000);
    // The frames were held behind the stalled message until the grace ended the wait, then
    // went out before the close.
    expect(events(client.frames)).toEqual(['presence_ack', ...Array(10).fill('rate_limit')]);
  });

  it('holds frames behind a stream with nothing to say yet for closeGraceMs at most, never replies', async () => {
    // A stream is answered at its first emission (or its end): what NestJS returns for any
    // handler once an interceptor applies is a stream, so its return says nothing.
    await start({ closeGraceMs: 300 });
    const client = await connect();
    const started = performance.now();
    burst(client, [['watch', 1], ...times(3, 'presence')]);
    await client.waitForEvent('rate_limit', 2, 5000);
    expect(performance.now() - started).toBeGreaterThanOrEqual(250);
    expect(events(client.frames)).toEqual(['presence_ack', 'rate_limit', 'rate_limit']);
  });

  it('refuses a closeGraceMs that is not a whole number of milliseconds at start-up', async () => {
    await expect(start({ closeGraceMs: -1 })).rejects.toThrow(/option closeGraceMs/);
    await expect(start({ closeGraceMs: 2 ** 31 })).rejects.toThrow(/option closeGraceMs/);
  });
});
