/**
 * Adversarial review of d3b6e7d, c374999 and aa3714d:
 * - `refusalsReachOurFilter` (lib/filters/filter-order.ts): a refusal is pending (for the
 *   same-read look-ahead of the degradation and of the 1008 close) only when the handler's
 *   own `@UseFilters` leave it to `WsRateLimitFilter`: filter classes and instances,
 *   `@Catch(WsException)`, `@Catch(Error)`, `@Catch(SomeOtherError)`, a subclass of ours,
 *   two filters in one `@UseFilters`, a class-level catch-all, an `APP_FILTER`, the README's
 *   own hand-on filter, and a guard whose `onRejected` calls `pipeline.refuse` itself;
 * - socket.io acks confirming their exact send (`Ledger.confirmSent`, `refuseSent`,
 *   `SocketMessageEvent.answers`): after a reconnect, and a refusal whose ack comes after
 *   the message was presumed accepted;
 * - the client waiting a `connect_error`'s `data.retryAfter` (clamped to 2^31-1 ms).
 *
 * Real NestJS apps on 127.0.0.1, real `ws` and socket.io clients, the real RateLimitedClient.
 *
 * Four cases failed on the code reviewed (aa3714d), each fixed since: the README's own
 * hand-on catch-all (refusals counted) made them not pending, so the same read's next message
 * was neither DEGRADED nor skipped at the threshold (2; a handler filter injected with
 * WsRateLimitFilter now counts as handing refusals on: `handsOn`); a guard's `onRejected`
 * calling `pipeline.refuse` with two arguments brought back the round-2 bug (1; a refusal is
 * now noted pending where the pipeline has the message's context, around `onRejected`);
 * with messageIds off, a refusal through its ack that came after `confirmMs` refused
 * nothing (1; messages presumed accepted are kept by send number, `presumedBySend`).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import {
  Catch,
  Injectable,
  UseFilters,
  UseGuards,
  type ArgumentsHost,
  type ExceptionFilter,
  type ExecutionContext,
} from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway, WsException } from '@nestjs/websockets';
import { io } from 'socket.io-client';
import '../../support/io-settle.js';
import {
  RateLimitedClient,
  isSocketIoAck,
  socketIoFactory,
  type RateLimitNotice,
  type ReconnectEvent,
  type UndeliveredEvent,
} from '../../../lib/client/index.js';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitException,
  WsRateLimitFilter,
  WsRateLimitModule,
  WsRateLimitService,
  WsThrottleGuard,
  type RateLimitDecision,
  type RateLimitPlan,
  type Route,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { later, sleep, TestClient, type Frame } from '../../support/ws-client.js';

/** What handlers ran, by event (reset per app). */
const ran: Record<string, unknown[]> = {};
const note = (event: string, data: unknown): void => void (ran[event] ??= []).push(data);
const resetRan = (): void => {
  for (const key of Object.keys(ran)) delete ran[key];
};

/** Exceptions the swallowing filters took, by filter. */
const swallowed: Record<string, number> = {};
const took = (name: string): void => void (swallowed[name] = (swallowed[name] ?? 0) + 1);

class SomeOtherError extends Error {}

/** A catch-all that answers nothing and hands nothing on (README: no violation counted). */
@Catch()
class SwallowAllFilter implements ExceptionFilter {
  catch(_exception: unknown, _host: ArgumentsHost): void {
    took('all');
  }
}

@Catch(WsException)
class SwallowWsExceptionFilter implements ExceptionFilter {
  catch(_exception: unknown, _host: ArgumentsHost): void {
    took('ws');
  }
}

@Catch(Error)
class SwallowErrorFilter implements ExceptionFilter {
  catch(_exception: unknown, _host: ArgumentsHost): void {
    took('error');
  }
}

/** Catches only an error of the app's own: refusals pass it by. */
@Catch(SomeOtherError)
class OtherErrorFilter implements ExceptionFilter {
  catch(_exception: unknown, _host: ArgumentsHost): void {
    took('other-error');
  }
}

/** A subclass of ours on a handler: it counts refusals as ours does. */
@Injectable()
class SubRateLimitFilter extends WsRateLimitFilter {}

/** The README's catch-all ("Your own filters"), handing the limiter's refusals on to ours. */
@Catch()
@Injectable()
class AllErrorsFilter implements ExceptionFilter {
  constructor(private readonly rateLimit: WsRateLimitFilter) {}
  catch(exception: unknown, host: ArgumentsHost) {
    if (exception instanceof WsRateLimitException) return this.rateLimit.catch(exception, host);
    took('readme');
  }
}

/** A catch-all given through APP_FILTER: global filters never apply to gateways. */
@Catch()
class GlobalSwallowFilter implements ExceptionFilter {
  catch(_exception: unknown, _host: ArgumentsHost): void {
    took('global');
  }
}

const TIGHT = { capacity: 1, refillRate: 0.001 } as const;

/**
 * One tight handler per filter arrangement (each its own type: 1 burst, no refill to speak
 * of), and `other`, generous and non-essential. The class has a catch-all of its own, which
 * the module puts after ours.
 */
@WebSocketGateway()
@UseFilters(SwallowAllFilter)
@WsRateLimit()
class FilterOrderGateway {
  @Throttle({ type: 'plain', ...TIGHT })
  @SubscribeMessage('plain')
  plain(@MessageBody() data: unknown) {
    return { event: 'plain', data };
  }

  @Throttle({ type: 'swallow', ...TIGHT })
  @UseFilters(SwallowAllFilter)
  @SubscribeMessage('swallow')
  swallow(@MessageBody() data: unknown) {
    return { event: 'swallow', data };
  }

  @Throttle({ type: 'wsInstance', ...TIGHT })
  @UseFilters(new SwallowWsExceptionFilter())
  @SubscribeMessage('wsInstance')
  wsInstance(@MessageBody() data: unknown) {
    return { event: 'wsInstance', data };
  }

  @Throttle({ type: 'error', ...TIGHT })
  @UseFilters(SwallowErrorFilter)
  @SubscribeMessage('error-class')
  errorClass(@MessageBody() data: unknown) {
    return { event: 'error-class', data };
  }

  @Throttle({ type: 'otherError', ...TIGHT })
  @UseFilters(OtherErrorFilter)
  @SubscribeMessage('otherError')
  otherError(@MessageBody() data: unknown) {
    return { event: 'otherError', data };
  }

  @Throttle({ type: 'sub', ...TIGHT })
  @UseFilters(SubRateLimitFilter)
  @SubscribeMessage('sub')
  sub(@MessageBody() data: unknown) {
    return { event: 'sub', data };
  }

  /** NestJS tries the last first: ours. */
  @Throttle({ type: 'oursLast', ...TIGHT })
  @UseFilters(SwallowAllFilter, WsRateLimitFilter)
  @SubscribeMessage('oursLast')
  oursLast(@MessageBody() data: unknown) {
    return { event: 'oursLast', data };
  }

  /** NestJS tries the last first: the catch-all. */
  @Throttle({ type: 'oursFirst', ...TIGHT })
  @UseFilters(WsRateLimitFilter, SwallowAllFilter)
  @SubscribeMessage('oursFirst')
  oursFirst(@MessageBody() data: unknown) {
    return { event: 'oursFirst', data };
  }

  @Throttle({ type: 'readme', ...TIGHT })
  @UseFilters(AllErrorsFilter)
  @SubscribeMessage('readme')
  readme(@MessageBody() data: unknown) {
    return { event: 'readme', data };
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
  connection: { capacity: 1000, refillRate: 1000 },
  violations: { max: 3, windowMs: 60_000 },
};

const frame = (event: string, data: unknown): string => JSON.stringify({ event, data });

/** `rate_limit` frames answering `other`. */
const otherRefusals = (client: TestClient): Frame[] =>
  client.events('rate_limit').filter((f) => (f.data as { messageType?: unknown }).messageType === 'other');

/**
 * One read: 4 messages of `event` (the first admitted, 3 refused: the violation threshold
 * when they are counted), then one `other` tagged `tag`. Resolves with what became of
 * `other`: `runs` (its handler ran, its reply came) or `degraded` (refused DEGRADED).
 */
async function readAfterRefusals(client: TestClient, event: string, tag: string): Promise<'runs' | 'degraded'> {
  client.inOneWrite(() => {
    for (let i = 0; i < 4; i++) client.sendRaw(frame(event, i));
    client.sendRaw(frame('other', tag));
  });
  await client.waitFor((f) => (f.event === 'other' && f.data === tag) || otherRefusals(client).includes(f));
  await sleep(100);
  const runs = (ran.other ?? []).includes(tag);
  const refusals = otherRefusals(client);
  if (runs && refusals.length === 0) return 'runs';
  if (!runs && refusals.length === 1 && (refusals[0]!.data as { code?: unknown }).code === 'DEGRADED')
    return 'degraded';
  throw new Error(`other ${tag}: ran ${String(runs)}, refusals ${JSON.stringify(refusals)}`);
}

describe('refusalsReachOurFilter: which handler filters leave refusals pending (platform-ws, degradation look-ahead)', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  beforeAll(async () => {
    resetRan();
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ ...BASE, degradeCooldownMs: 60_000 })],
        providers: [FilterOrderGateway, AllErrorsFilter, { provide: APP_FILTER, useClass: GlobalSwallowFilter }],
      },
      (app) => new WsRateLimitAdapter(app),
    );
  });

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
  });

  afterAll(async () => {
    await running?.close();
    running = undefined;
  });

  const connect = async () => {
    const client = await TestClient.connect(running!.url);
    clients.push(client);
    return client;
  };

  // What NestJS does with the 3 refusals decides: counted by ours (degraded at the third,
  // so `other` after them in the read is refused DEGRADED, README "Graceful degradation"),
  // or taken by a handler filter (never counted: `other` runs).
  it.each([
    ['plain', 'no handler filter (the class catch-all comes after ours; APP_FILTER never applies)', 'degraded'],
    ['swallow', '@Catch() class', 'runs'],
    ['wsInstance', '@Catch(WsException) instance', 'runs'],
    ['error-class', '@Catch(Error) class', 'runs'],
    ['otherError', '@Catch(SomeOtherError): refusals pass it by', 'degraded'],
    ['sub', 'a subclass of WsRateLimitFilter', 'degraded'],
    ['oursLast', '@UseFilters(CatchAll, WsRateLimitFilter): ours tried first', 'degraded'],
    ['oursFirst', '@UseFilters(WsRateLimitFilter, CatchAll): the catch-all tried first', 'runs'],
  ] as const)('%s (%s): other in the same read %s', async (event, _what, expected) => {
    const client = await connect();
    expect(await readAfterRefusals(client, event, `after-${event}`)).toBe(expected);
    if (expected === 'degraded') {
      // Counted: three TYPE_LIMIT-or-DEGRADED frames for the refused messages.
      expect(client.events('rate_limit').length).toBe(4);
    } else {
      expect(client.events('rate_limit').length).toBe(0);
    }
    expect(swallowed.global ?? 0).toBe(0);
  });

  it("the README's own catch-all that hands refusals on to WsRateLimitFilter (counted: degraded at the third) restricts a routed message after them in the same read", async () => {
    const client = await connect();
    const outcome = await readAfterRefusals(client, 'readme', 'after-readme');
    // The three refusals were counted (the filter handed them on): three frames, the third
    // starting the degradation.
    expect(client.events('rate_limit').filter((f) => f.data.messageType === 'readme').length).toBe(3);
    // README "Graceful degradation": "Messages of the same read after the refusal that
    // reaches the threshold are restricted already".
    expect(outcome).toBe('degraded');
  });
});

describe("refusalsReachOurFilter: the README's hand-on filter and the 1008 close (platform-ws, no cooldown)", () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  it("with the README's hand-on filter, a routed message after the refusal that reaches the threshold in the same read is not processed (the 1008 comes first)", async () => {
    resetRan();
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ ...BASE, degradeCooldownMs: 0 })],
        providers: [FilterOrderGateway, AllErrorsFilter],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    const client = await TestClient.connect(running.url);
    clients.push(client);
    client.inOneWrite(() => {
      for (let i = 0; i < 4; i++) client.sendRaw(frame('readme', i));
      client.sendRaw(frame('other', 'same-read'));
    });
    const closed = await client.waitClose();
    expect(closed.code).toBe(1008);
    expect(client.events('rate_limit').length).toBe(3);
    // README: at the threshold "messages that arrive after the decision are not processed";
    // the same read's messages after it are (as without the hand-on filter) not processed.
    expect({ ranOther: ran.other ?? [], otherReplies: client.events('other').length }).toEqual({
      ranOther: [],
      otherReplies: 0,
    });
  });
});

/**
 * A guard overriding the public `onRejected` step and calling the pipeline's `refuse` as the
 * guard did before d3b6e7d (two arguments: the handler was not a parameter then).
 */
@Injectable()
class LoggingGuard extends WsThrottleGuard {
  static rejected = 0;
  constructor(limiter: WsRateLimitService) {
    super(limiter);
  }
  protected override onRejected(
    decision: RateLimitDecision & { allowed: false },
    route: Route,
    plan: RateLimitPlan,
    context: ExecutionContext,
  ): true {
    LoggingGuard.rejected++;
    return this.limiter.pipeline.refuse(
      context.getArgByIndex<object>(0),
      new WsRateLimitException(decision, route.type, plan.tracker),
    );
  }
}

@WebSocketGateway()
@UseGuards(LoggingGuard)
class OverriddenGateway {
  @Throttle({ type: 'swallow', ...TIGHT })
  @UseFilters(SwallowAllFilter)
  @SubscribeMessage('swallow')
  swallow(@MessageBody() data: unknown) {
    return { event: 'swallow', data };
  }

  @Throttle({ type: 'other', capacity: 500, refillRate: 500 })
  @SubscribeMessage('other')
  other(@MessageBody() data: unknown) {
    note('other', data);
    return { event: 'other', data };
  }
}

describe('a guard whose onRejected calls pipeline.refuse(client, exception) (platform-ws)', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  it('refusals a handler catch-all takes (never counted) do not degrade the rest of the read when the guard overrides onRejected', async () => {
    resetRan();
    LoggingGuard.rejected = 0;
    swallowed.all = 0;
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ ...BASE, degradeCooldownMs: 60_000 })],
        providers: [OverriddenGateway, LoggingGuard],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    const client = await TestClient.connect(running.url);
    clients.push(client);
    const outcome = await readAfterRefusals(client, 'swallow', 'after-override').catch((error: Error) => error.message);
    expect({ rejected: LoggingGuard.rejected, swallowed: swallowed.all }).toEqual({ rejected: 3, swallowed: 3 });
    // No violation was counted (README "Your own filters"), so nothing degrades: `other` runs,
    // as it does with the guard's own onRejected (the 'swallow' case above).
    expect(outcome).toBe('runs');
  });
});

/**
 * `work`: answers through its acknowledgement after `data.ms`; `limited`: 1 burst, 2 a
 * second, answered through its acknowledgement; `kick`: the server disconnects the socket.
 */
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

  @Throttle({ type: 'limited', capacity: 1, refillRate: 2 })
  @SubscribeMessage('limited')
  limited(@MessageBody() data: unknown) {
    note('limited', data);
    return { limited: data };
  }

  @Throttle({ type: 'kick', capacity: 500, refillRate: 500 })
  @SubscribeMessage('kick')
  kick(@ConnectedSocket() socket: { disconnect(close?: boolean): void }) {
    note('kick', true);
    setTimeout(() => socket.disconnect(true), 20);
  }
}

/** Waits until `check` holds, at most `timeoutMs`. */
async function until(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('RateLimitedClient over socket.io: acknowledgements confirm their exact send', () => {
  let running: RunningApp | undefined;
  const made: RateLimitedClient[] = [];

  afterEach(async () => {
    for (const client of made.splice(0)) client.close();
    await sleep(30);
    await running?.close();
    running = undefined;
  });

  const startAckApp = async (options: WsRateLimitModuleOptions = {}) => {
    resetRan();
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ ...BASE, ...options })], providers: [AckGateway] },
      (app) => new WsRateLimitIoAdapter(app),
    );
  };

  const makeClient = (options: ConstructorParameters<typeof RateLimitedClient>[1]) => {
    const client = new RateLimitedClient(`http://127.0.0.1:${running!.port}`, {
      createSocket: socketIoFactory(io, { transports: ['websocket'] }),
      isAck: isSocketIoAck,
      autoConnect: false,
      ...options,
    });
    made.push(client);
    return client;
  };

  const opened = (client: RateLimitedClient) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('client did not open')), 10_000);
      const off = client.on('state', (state) => {
        if (state !== 'open') return;
        clearTimeout(timer);
        off();
        resolve();
      });
    });

  /**
   * `limited` 0 (admitted), then `work` (a handler of 800 ms) and `limited` 1, refused: its
   * refusal goes through its ack, after `work`'s answer (answers leave in arrival order), so
   * well after the client's confirmMs (150 ms) presumed it accepted.
   */
  async function lateRefusal(messageIds: boolean) {
    await startAckApp();
    const client = makeClient({ messageIds, confirmMs: 150, reconnect: false });
    const notices: RateLimitNotice[] = [];
    const acks: unknown[] = [];
    client.on('rateLimit', (notice) => notices.push(notice));
    client.on('message', (message) => acks.push((message as { data: unknown }).data));
    const open = opened(client);
    client.connect();
    await open;
    client.send('limited', 0);
    await until(() => acks.length === 1, 'the first ack');
    const sentAt = Date.now();
    client.send('work', { n: 0, ms: 800 });
    client.send('limited', 1);
    await until(() => notices.length === 1, 'the refusal');
    const refusedAfter = Date.now() - sentAt;
    // Sent again once its retry time passes, it is admitted (2 a second).
    await until(() => (ran.limited ?? []).length === 2, 'limited 1 sent again', 3000).catch(() => undefined);
    return { notices, refusedAfter };
  }

  it('control, messageIds on: a refusal through its ack that comes after confirmMs still names its message, which is sent again', async () => {
    const { notices, refusedAfter } = await lateRefusal(true);
    expect(refusedAfter).toBeGreaterThan(300);
    expect(notices[0]!.message?.data).toBe(1);
    expect(ran.limited).toEqual([0, 1]);
  });

  it('messageIds off, a refusal through its ack that comes after confirmMs names its message: it is sent again', async () => {
    const { notices, refusedAfter } = await lateRefusal(false);
    expect(refusedAfter).toBeGreaterThan(300);
    // README (client on socket.io): "a refusal names exactly the message it refuses (with
    // `messageIds` off too, whatever order the answers come in)"; as with ids, a message
    // presumed accepted before its refusal came is the one refused, and is sent again.
    expect({ refused: notices[0]!.message?.data, ran: ran.limited }).toEqual({ refused: 1, ran: [0, 1] });
  });

  it('after a reconnect, messageIds off, acks out of order still confirm their exact send: the close reports the one never answered', async () => {
    await startAckApp({ closeGraceMs: 0 });
    const client = makeClient({
      messageIds: false,
      maxUnconfirmed: 10,
      reconnect: true,
      backoffBaseMs: 20,
      backoffCapMs: 50,
    });
    const acks: unknown[] = [];
    const undelivered: UndeliveredEvent[] = [];
    const reconnects: ReconnectEvent[] = [];
    client.on('message', (message) => acks.push((message as { data: unknown }).data));
    client.on('undelivered', (event) => undelivered.push(event));
    client.on('reconnect', (event) => reconnects.push(event));
    const first = opened(client);
    client.connect();
    await first;
    // Three sends on the first socket (the kick is never answered: the server disconnects).
    client.send('work', { n: 0, ms: 0 });
    await until(() => acks.length === 1, 'work 0');
    client.send('work', { n: 1, ms: 0 });
    await until(() => acks.length === 2, 'work 1');
    const second = opened(client);
    client.send('kick', {});
    await until(() => reconnects.length === 1, 'the reconnect');
    await second;
    undelivered.length = 0;
    client.send('work', { n: 2, ms: 3000 });
    client.send('work', { n: 3, ms: 0 });
    await until(() => acks.length === 3, 'work 3');
    expect(acks).toEqual([{ n: 0 }, { n: 1 }, { n: 3 }]);
    client.close();
    expect(undelivered.map((event) => event.messages.map((message) => message.data))).toEqual([[{ n: 2, ms: 3000 }]]);
  });
});

@WebSocketGateway()
@WsRateLimit()
class PlainIoGateway {
  @SubscribeMessage('ping')
  ping() {
    return 'pong';
  }
}

describe("RateLimitedClient over socket.io: a refused handshake's connect_error retryAfter (connectionRefusal 'close')", () => {
  let running: RunningApp | undefined;
  const made: RateLimitedClient[] = [];

  afterEach(async () => {
    for (const client of made.splice(0)) client.close();
    await sleep(30);
    await running?.close();
    running = undefined;
  });

  it.each([
    ['an hour', 3_600_000, (delay: number) => delay > 3_590_000 && delay <= 3_600_000],
    ['30 days (past the longest timer)', 30 * 86_400_000, (delay: number) => delay === 2 ** 31 - 1],
  ] as const)(
    'a block of %s: the reconnect waits it (cut to 2^31-1 ms), not policyDelayMs',
    async (_what, ms, fits) => {
      running = await startApp(
        {
          imports: [WsRateLimitModule.forRoot({ ...BASE, connectionRefusal: 'close' })],
          providers: [PlainIoGateway],
        },
        (app) => new WsRateLimitIoAdapter(app),
      );
      await running.app.get(WsRateLimitService).block('127.0.0.1', ms);
      const client = new RateLimitedClient(`http://127.0.0.1:${running.port}`, {
        createSocket: socketIoFactory(io, { transports: ['websocket'] }),
        policyDelayMs: 1000,
      });
      made.push(client);
      const reconnects: ReconnectEvent[] = [];
      const errors: unknown[] = [];
      client.on('reconnect', (event) => reconnects.push(event));
      client.on('error', (error) => errors.push(error));
      await until(() => reconnects.length === 1, 'the reconnect');
      expect((errors[0] as { data?: { code?: unknown } }).data?.code).toBe('blocked');
      expect({ policy: reconnects[0]!.policy, fits: fits(reconnects[0]!.delayMs) }).toEqual({
        policy: true,
        fits: true,
      });
      // Nothing tried again meanwhile.
      await sleep(300);
      expect(reconnects.length).toBe(1);
    },
  );
});
