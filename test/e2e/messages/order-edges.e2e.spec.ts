/**
 * Answer slots that expire, the slow-consumer check on handler replies, the pendingRejections
 * restore in runUnrouted and the narrower message ids, at their edges. From a review of
 * 50520e4; two of its regressions failed here before they were fixed: in shadow mode a
 * client over maxBufferedBytes lost handler replies (8 of 40 arrived, the socket stayed
 * open), and on socket.io a client reading promptly was cut off by a burst of replies
 * Engine.IO queues in its write buffer for one tick (replies there are left to the
 * heartbeat's check, as before).
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { MessageBody, SubscribeMessage, WebSocketGateway, type OnGatewayConnection } from '@nestjs/websockets';
import type { WebSocket as ServerSocket } from 'ws';
import { AnswerOrder } from '../../../lib/connection/answer-order.js';
import { toMessageId } from '../../../lib/protocol/rate-limit-protocol.js';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { watchStalls } from '../../redis/stalls.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { ioHarness } from '../../support/io-harness.js';
import { settle, sleep, TestClient, later } from '../../support/ws-client.js';

const served = { big: 0, slow: 0 };
const serverSockets: ServerSocket[] = [];
@WebSocketGateway()
@WsRateLimit()
class ReviewGateway implements OnGatewayConnection {
  handleConnection(client: ServerSocket): void {
    if (typeof (client as { send?: unknown }).send === 'function') serverSockets.push(client);
  }

  @Throttle({ type: 'big', capacity: 100_000, refillRate: 100_000 })
  @SubscribeMessage('big')
  big(@MessageBody() data: { size: number; n?: number }) {
    served.big++;
    return { event: 'big', data: { n: data.n, blob: 'x'.repeat(data.size) } };
  }

  @Throttle({ type: 'slow', capacity: 100_000, refillRate: 100_000 })
  @SubscribeMessage('slow')
  slow(@MessageBody() data: { delay: number }) {
    served.slow++;
    return later(data.delay, { event: 'slow_reply', data: data.delay });
  }

  @Throttle({ type: 'spam', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('spam')
  spam(@MessageBody() data: unknown) {
    return { event: 'spam_ack', data };
  }
}

const BASE: WsRateLimitModuleOptions = {
  useEnv: false,
  tracker: 'connection',
  global: { capacity: 100_000, refillRate: 100_000 },
  violations: { max: 10, windowMs: 60_000 },
};

// ----- AnswerOrder, unit -------------------------------------------------------------------

describe('AnswerOrder with expiring slots (unit)', () => {
  const stalls = watchStalls();
  const timersOf = (order: AnswerOrder) =>
    order as unknown as { timer?: NodeJS.Timeout; closeTimer?: NodeJS.Timeout; head?: unknown; tail?: unknown };

  it('writes a held answer once when the expiry timer and done() race', async () => {
    const order = new AnswerOrder(40);
    const first = order.open();
    const second = order.open();
    const written: string[] = [];
    order.write(second, () => written.push('second'));
    expect(written).toEqual([]);
    // (Until written: a hold timer that fires late waits its period once more.)
    await settle(() => written.length > 0, 20);
    expect(written).toEqual(['second']);
    order.done(first);
    order.done(second);
    expect(written).toEqual(['second']);
    expect(order.idle).toBe(true);
    expect(timersOf(order).timer).toBeUndefined();
  });

  it('unrefs both timers and clears them on dispose (nothing fires after)', async () => {
    const order = new AnswerOrder(30);
    const first = order.open();
    const second = order.open();
    void first;
    let closes = 0;
    const written: string[] = [];
    order.write(second, () => written.push('held'));
    order.closeAfter(() => closes++);
    const { timer, closeTimer } = timersOf(order);
    expect(timer?.hasRef()).toBe(false);
    expect(closeTimer?.hasRef()).toBe(false);
    order.dispose();
    await sleep(100);
    expect({ closes, written }).toEqual({ closes: 0, written: [] });
  });

  it('closes once, at most holdMs after the decision, for a lone unanswered slot', async () => {
    const order = new AnswerOrder(60);
    order.open();
    let closes = 0;
    const started = performance.now();
    let at = 0;
    order.closeAfter(() => {
      closes++;
      at = performance.now() - started;
    });
    await settle(() => closes > 0, 20);
    expect(closes).toBe(1);
    expect(at).toBeGreaterThanOrEqual(50);
    // (Plus the longest stall of this process: a timer runs that much late.)
    expect(at).toBeLessThan(190 + Math.min(stalls.longestMs(), 2000));
    order.closeAfter(() => closes++);
    expect(closes).toBe(2); // a second decision on an idle order runs at once (the enforcer guards it)
  });

  it('closes when the older slots expire (before the close timer) and writes held answers first', async () => {
    const order = new AnswerOrder(80);
    order.open();
    const second = order.open();
    const log: string[] = [];
    order.write(second, () => log.push('frame'));
    await sleep(40);
    order.closeAfter(() => log.push('close'));
    await settle(() => log.length >= 2, 20);
    expect(log).toEqual(['frame', 'close']);
    expect(timersOf(order).closeTimer).toBeUndefined();
  });

  it('with holdMs 0 links nothing: answers go out at once and the close runs at once', () => {
    const order = new AnswerOrder(0);
    const first = order.open();
    const second = order.open();
    const log: string[] = [];
    order.write(second, () => log.push('second'));
    order.write(first, () => log.push('first'));
    order.closeAfter(() => log.push('close'));
    expect(log).toEqual(['second', 'first', 'close']);
    expect(order.idle).toBe(true);
    expect(timersOf(order).timer).toBeUndefined();
  });
});

describe('message ids (unit)', () => {
  it('still echoes the usual ids: UUIDs, numbers, numeric strings, msg-1', () => {
    for (const id of ['3f1c2a4e-9b7d-4c2e-8f1a-0d9e8c7b6a5f', '42', 'msg-1', 'a b', "it's", 7, 0]) {
      expect(toMessageId(id)).toBe(id);
    }
    expect(toMessageId('x'.repeat(64))).toBe('x'.repeat(64));
    expect(toMessageId('x'.repeat(65))).toBeUndefined();
  });
});

// ----- ws transport ------------------------------------------------------------------------

describe('ws adapter: replies, refusals and the close', () => {
  const stalls = watchStalls();
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}) => {
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ ...BASE, ...options })], providers: [ReviewGateway] },
      (app) => new WsRateLimitAdapter(app),
    );
    return running.app.get(WsRateLimitService);
  };
  const connect = async () => {
    const client = await TestClient.connect(running!.url, { perMessageDeflate: false });
    clients.push(client);
    return client;
  };

  afterEach(async () => {
    for (const client of clients.splice(0)) client.socket.terminate();
    serverSockets.length = 0;
    served.big = served.slow = 0;
    await running?.close();
    running = undefined;
  });

  it('in shadow mode writes every handler reply to a client over maxBufferedBytes (nothing changes for the client)', async () => {
    // README: shadow mode "Decide, count, stream and log everything, but reject and close
    // nothing". cutOffIfSlow returns true in shadow mode although disconnect() only reports,
    // so the adapter silently skips the reply and the socket stays open with replies missing.
    const limiter = await start({ shadow: true, maxBufferedBytes: 256 * 1024, pingIntervalMs: 0 });
    const client = await connect();
    const tcp = (client.socket as unknown as { _socket: { pause(): void; resume(): void } })._socket;
    tcp.pause();
    const count = 40;
    client.inOneWrite(() => {
      for (let n = 0; n < count; n++) client.send('big', { size: 500_000, n });
    });
    await settle(() => served.big === count, 50, 20_000);
    tcp.resume();
    await settle(() => client.events('big').length === count, 0, 8_000).catch(() => undefined);
    await sleep(300);
    expect({ replies: client.events('big').length, connections: limiter.stats().connections }).toEqual({
      replies: count,
      connections: 1,
    });
  }, 60_000);

  it('a refusal after a slow handler is held until the handler replies, closeGraceMs at most (then it overtakes)', async () => {
    // README: a rate_limit frame never overtakes the reply of an earlier admitted message
    // ... held closeGraceMs at most. The expiry makes this "at most" count from the earlier
    // message's arrival, which the README allows.
    await start({ closeGraceMs: 300 });
    const client = await connect();
    client.inOneWrite(() => {
      client.send('slow', { delay: 100 });
      client.send('spam', 1);
      client.send('spam', 2);
    });
    await client.waitForEvent('rate_limit', 1, 10_000);
    // Handler replies are not held (spam_ack may pass slow_reply); the refusal waits for both.
    expect(client.frames.map((frame) => frame.event).slice(-1)).toEqual(['rate_limit']);
    expect(client.frames).toHaveLength(3);

    // The handler replies after 3 s; the refusal goes out at closeGraceMs (300 ms), or, when
    // the grace timer fires more than half late (a stall of this machine), after one more
    // grace: within 850 ms plus the longest stall, and before the handler's reply either way.
    client.inOneWrite(() => {
      client.send('slow', { delay: 3000 });
      client.send('spam', 3);
    });
    const started = performance.now();
    await client.waitForEvent('rate_limit', 2, 10_000);
    const waited = performance.now() - started;
    expect(waited).toBeGreaterThanOrEqual(250);
    expect(waited).toBeLessThan(Math.min(2_900, 850 + stalls.longestMs()));
    expect(client.events('slow_reply')).toHaveLength(1);
    await client.waitForEvent('slow_reply', 2, 10_000);
  }, 30_000);

  it('closeGraceMs 0: refusals are answered and the 1008 close is at once, even behind a slow handler', async () => {
    await start({ closeGraceMs: 0, violations: { max: 2, windowMs: 60_000 } });
    const client = await connect();
    client.inOneWrite(() => {
      client.send('slow', { delay: 1500 });
      for (let i = 0; i < 3; i++) client.send('spam', i);
    });
    const started = performance.now();
    const closed = await client.waitClose(10_000);
    expect(closed.code).toBe(1008);
    expect(performance.now() - started).toBeLessThan(1200);
    expect(client.events('rate_limit').map((frame) => frame.data.warningCount)).toEqual([1, 2]);
  }, 30_000);

  it('the 1008 close waits for a slow earlier reply within closeGraceMs, and happens once', async () => {
    await start({ closeGraceMs: 1000, violations: { max: 2, windowMs: 60_000 } });
    const client = await connect();
    client.inOneWrite(() => {
      client.send('slow', { delay: 300 });
      for (let i = 0; i < 3; i++) client.send('spam', i);
    });
    const closed = await client.waitClose(10_000);
    expect(closed.code).toBe(1008);
    expect(client.frames.map((frame) => frame.event).sort()).toEqual([
      'rate_limit',
      'rate_limit',
      'slow_reply',
      'spam_ack',
    ]);
    expect(client.frames.map((frame) => frame.event).slice(-2)).toEqual(['rate_limit', 'rate_limit']);
  }, 30_000);
});

// ----- socket.io -----------------------------------------------------------------------------

describe.each(['websocket', 'polling'] as const)('socket.io over %s: replies to a prompt reader', (transport) => {
  const harness = ioHarness();
  afterEach(async () => {
    served.big = 0;
    await harness.close();
  });

  it(`does not cut off a client reading promptly for a burst of replies queued in Engine.IO's write buffer (${transport})`, async () => {
    // README: "A client that leaves more than maxBufferedBytes unread is cut off". Engine.IO
    // queues every packet written in one tick in writeBuffer (polling: until the next GET;
    // websocket: until the previous send's callback), so a burst of 20 replies of 20 kB to
    // a client that reads everything at once counts 400 kB "unread" and the client is cut off.
    const url = await harness.start([ReviewGateway], { maxBufferedBytes: 128 * 1024, pingIntervalMs: 0 });
    const client = await harness.connect(url, transport);
    const count = 20;
    for (let n = 0; n < count; n++) client.socket.emit('big', { size: 20_000, n });
    await settle(() => client.of('big').length === count || client.disconnectReason !== undefined, 0, 10_000).catch(
      () => undefined,
    );
    await sleep(300);
    expect({ replies: client.of('big').length, disconnected: client.disconnectReason }).toEqual({
      replies: count,
      disconnected: undefined,
    });
  }, 30_000);
});
