/**
 * Adversarial review of 7179fce and f3be115: the client over socket.io matching answers to
 * its sends (`SocketMessageEvent.answers`, `Ledger.refuseSent`), the degradation look-ahead
 * (`screen` refusing routed non-essential messages as DEGRADED once the read's pending
 * refusals reach the threshold: `Enforcer.degradesWith`), and stores given in code closed
 * with the app (`closesWithApp`). Real NestJS apps on loopback ports, real `ws` and
 * socket.io clients (memory store: the failing cases need no Redis).
 *
 * Four cases failed on the code reviewed (f3be115), each fixed since:
 * - the look-ahead (and `closeDecided`, its older sibling for the close) counted refusals that
 *   will never be counted as violations: those a handler-level catch-all filter takes (README
 *   "Your own filters": no violation counted). A routed message after them in the same read
 *   was refused DEGRADED (warningCount 1, no degradation followed) or, without a cooldown,
 *   skipped as CLOSING with no answer at all while the socket stayed open (ws and socket.io).
 *   A refusal is now pending only when its handler's own filters leave it to ours
 *   (`refusalsReachOurFilter`);
 * - with messageIds off, an acknowledgement that is not a refusal still confirmed the oldest
 *   unconfirmed message of its event: acks out of order made the close report the answered
 *   message and not the unanswered one. Acks now confirm their exact send (`Ledger.confirmSent`).
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { Catch, UseFilters, type ArgumentsHost, type ExceptionFilter } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { io } from 'socket.io-client';
import { RateLimitedClient, isSocketIoAck, socketIoFactory, type UndeliveredEvent } from '../../../lib/client/index.js';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { connectIo, type IoTestClient } from '../../support/io-client.js';
import { later, sleep, TestClient } from '../../support/ws-client.js';

/** What handlers ran, by event (reset per test). */
const ran: Record<string, unknown[]> = {};
const note = (event: string, data: unknown): void => void (ran[event] ??= []).push(data);
const resetRan = (): void => {
  for (const key of Object.keys(ran)) delete ran[key];
};

/** Exceptions a handler's own catch-all filter took (README: it gets the limiter's refusals first). */
let caught = 0;

/** A handler-level catch-all, as the README describes (it does not hand refusals on). */
@Catch()
class SwallowAllFilter implements ExceptionFilter {
  catch(_exception: unknown, _host: ArgumentsHost): void {
    caught++;
  }
}

/**
 * `limited`: 1 burst, 1 a second, under a handler-level catch-all filter; `other`: generous,
 * non-essential, under no filter of its own.
 */
@WebSocketGateway()
@WsRateLimit()
class LookAheadGateway {
  @Throttle({ type: 'limited', capacity: 1, refillRate: 1 })
  @UseFilters(SwallowAllFilter)
  @SubscribeMessage('limited')
  limited(@MessageBody() data: unknown) {
    note('limited', data);
    return { event: 'limited', data };
  }

  @Throttle({ type: 'other', capacity: 500, refillRate: 500 })
  @SubscribeMessage('other')
  other(@MessageBody() data: unknown) {
    note('other', data);
    return { event: 'other', data };
  }
}

const BASE: WsRateLimitModuleOptions = {
  useEnv: false,
  tracker: 'connection',
  global: { capacity: 1000, refillRate: 1000 },
  violations: { max: 3, windowMs: 60_000 },
};

const frame = (event: string, data: unknown): string => JSON.stringify({ event, data });

/** Runs `emit` with the socket.io client's WebSocket corked: its packets leave in one TCP write. */
function ioInOneWrite(client: IoTestClient, emit: () => void): void {
  const engine = client.socket.io.engine as unknown as {
    transport: { ws?: { _socket?: { cork(): void; uncork(): void } } };
  };
  const tcp = engine.transport.ws?._socket;
  if (tcp === undefined) throw new Error('not on a ws transport');
  tcp.cork();
  try {
    emit();
  } finally {
    tcp.uncork();
  }
}

describe('degradation look-ahead: refusals of the read that are never counted (platform-ws)', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions) => {
    resetRan();
    caught = 0;
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ ...BASE, ...options })], providers: [LookAheadGateway] },
      (app) => new WsRateLimitAdapter(app),
    );
  };
  const connect = async () => {
    const client = await TestClient.connect(running!.url);
    clients.push(client);
    return client;
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  it('refusals a handler catch-all filter takes (never counted, README) do not degrade the connection: a routed message after them in the same read runs', async () => {
    await start({ degradeCooldownMs: 5000 });
    const client = await connect();
    // One read: limited 0 admitted, limited 1-3 refused (taken by the handler's own filter:
    // no frame, no violation, README "Your own filters"), then a generous non-essential message.
    client.inOneWrite(() => {
      for (let i = 0; i < 4; i++) client.sendRaw(frame('limited', i));
      client.sendRaw(frame('other', 'same-read'));
    });
    await client.waitFor((f) => f.event === 'other' || f.event === 'rate_limit');
    await sleep(200);
    // The same message alone, in a read of its own: the connection was never degraded.
    client.sendRaw(frame('other', 'next-read'));
    await client.waitFor((f) => f.event === 'other' && f.data === 'next-read');
    expect(caught).toBe(3);
    // No violation was ever counted, so the threshold (3) was never reached: the 'other'
    // handler should have run for both messages, and no DEGRADED frame should come.
    expect({
      ranOther: ran.other,
      rateLimit: client.events('rate_limit').map((f) => f.data),
    }).toEqual({ ranOther: ['same-read', 'next-read'], rateLimit: [] });
  });

  it('without a cooldown, refusals a handler catch-all filter takes do not decide a close: a routed message after them in the same read is answered (not silently skipped)', async () => {
    await start({ degradeCooldownMs: 0 });
    const client = await connect();
    client.inOneWrite(() => {
      for (let i = 0; i < 4; i++) client.sendRaw(frame('limited', i));
      client.sendRaw(frame('other', 'same-read'));
    });
    await client.waitFor((f) => f.event === 'limited');
    await sleep(300);
    client.sendRaw(frame('other', 'next-read'));
    await client.waitFor((f) => f.event === 'other' && f.data === 'next-read');
    // Socket still open (no violation counted, no close): the first 'other' got neither its
    // reply nor a rate_limit frame, its handler never ran.
    expect({
      open: client.socket.readyState === client.socket.OPEN,
      ranOther: ran.other,
      otherReplies: client.events('other').map((f) => f.data),
      rateLimit: client.events('rate_limit').length,
    }).toEqual({
      open: true,
      ranOther: ['same-read', 'next-read'],
      otherReplies: ['same-read', 'next-read'],
      rateLimit: 0,
    });
  });
});

describe('degradation look-ahead: refusals of the read that are never counted (socket.io)', () => {
  let running: RunningApp | undefined;
  const clients: IoTestClient[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await sleep(30);
    await running?.close();
    running = undefined;
  });

  it('socket.io: refusals a handler catch-all filter takes do not degrade the connection: an event after them in the same read runs', async () => {
    resetRan();
    caught = 0;
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ ...BASE, degradeCooldownMs: 5000 })],
        providers: [LookAheadGateway],
      },
      (app) => new WsRateLimitIoAdapter(app),
    );
    const client = await connectIo(`http://127.0.0.1:${running.port}`, 'websocket');
    clients.push(client);
    const answers: unknown[] = [];
    ioInOneWrite(client, () => {
      for (let i = 0; i < 4; i++) client.socket.emit('limited', i);
      client.socket.emit('other', 'same-read', (answer: unknown) => answers.push(answer));
    });
    await client.until(() => answers.length === 1 || client.of('other').length === 1);
    await sleep(200);
    client.socket.emit('other', 'next-read');
    await client.until(() => client.of('other').includes('next-read'));
    expect(caught).toBe(3);
    expect({ ranOther: ran.other, answers }).toEqual({ ranOther: ['same-read', 'next-read'], answers: [] });
  });
});

/** `work`: answers through its acknowledgement after `data.ms`. */
@WebSocketGateway()
@WsRateLimit()
class AckGateway {
  @Throttle({ type: 'work', capacity: 500, refillRate: 500 })
  @SubscribeMessage('work')
  async work(@MessageBody() data: { n: number; ms: number }) {
    note('work', data.n);
    await later(data.ms, undefined);
    return { n: data.n };
  }
}

describe('RateLimitedClient over socket.io: which message an acknowledgement answers', () => {
  let running: RunningApp | undefined;
  const made: RateLimitedClient[] = [];

  afterEach(async () => {
    for (const client of made.splice(0)) client.close();
    await sleep(30);
    await running?.close();
    running = undefined;
  });

  const open = (client: RateLimitedClient) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('client did not open')), 10_000);
      client.on('state', (state) => {
        if (state !== 'open') return;
        clearTimeout(timer);
        resolve();
      });
    });

  it('messageIds off, acks out of order (a slow handler, then a fast one): at the close the report names the message never answered, not the one whose ack came', async () => {
    resetRan();
    // closeGraceMs 0: the server does not hold a later ack behind an earlier message's answer.
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ ...BASE, closeGraceMs: 0 })], providers: [AckGateway] },
      (app) => new WsRateLimitIoAdapter(app),
    );
    const client = new RateLimitedClient(`http://127.0.0.1:${running.port}`, {
      createSocket: socketIoFactory(io, { transports: ['websocket'] }),
      isAck: isSocketIoAck,
      messageIds: false,
      maxUnconfirmed: 10,
      reconnect: false,
      autoConnect: false,
    });
    made.push(client);
    const acks: unknown[] = [];
    const undelivered: UndeliveredEvent[] = [];
    client.on('message', (message) => acks.push((message as { data: unknown }).data));
    client.on('undelivered', (event) => undelivered.push(event));
    const opened = open(client);
    client.connect();
    await opened;
    // The event is known to be acked (its messages wait up to 10 s for their acks).
    client.send('work', { n: 0, ms: 0 });
    const deadline = Date.now() + 10_000;
    while (acks.length < 1 && Date.now() < deadline) await sleep(10);
    client.send('work', { n: 1, ms: 3000 });
    client.send('work', { n: 2, ms: 0 });
    while (acks.length < 2 && Date.now() < deadline) await sleep(10);
    expect(acks).toEqual([{ n: 0 }, { n: 2 }]);
    expect(ran.work).toEqual([0, 1, 2]);
    // work 1 is still running on the server: its ack has not come; work 2's has.
    client.close();
    // README: the undelivered report lists every message that got no reply recognised by
    // isAck (work 1), and isSocketIoAck "confirms exactly the message answered" (work 2).
    expect(undelivered.map((event) => event.messages.map((message) => message.data))).toEqual([[{ n: 1, ms: 3000 }]]);
  });
});
