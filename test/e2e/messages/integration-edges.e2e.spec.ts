/**
 * The limiter inside NestJS's WebSocket machinery, at its edges, from an adversarial review:
 * interceptors, user guards before and after ours, pipes, failing handlers, streams, catch-all
 * filters, acknowledgements, and several gateways on one server. Seven cases failed before
 * their fixes: with any interceptor, NestJS returns a stream for every handler, and a message
 * counted as answered when its handler returned one, so a rate_limit frame overtook the reply
 * of an earlier async handler and the 1008 close (or socket.io disconnect) lost it; and two
 * gateways on one ws server each parsed every frame, answering UNKNOWN_EVENT (or
 * INVALID_MESSAGE) and charging the global budget once per gateway. The others held already.
 */
import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import {
  Catch,
  Injectable,
  UseFilters,
  UseGuards,
  UseInterceptors,
  UsePipes,
  type ArgumentsHost,
  type CallHandler,
  type CanActivate,
  type ExceptionFilter,
  type ExecutionContext,
  type NestInterceptor,
  type PipeTransform,
} from '@nestjs/common';
import {
  ConnectedSocket,
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  WsException,
  type OnGatewayConnection,
} from '@nestjs/websockets';
import { interval, map, take, type Observable } from 'rxjs';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitException,
  WsRateLimitFilter,
  WsRateLimitModule,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { connectIo, type IoTestClient } from '../../support/io-client.js';
import { settle, sleep, TestClient, type Frame, later } from '../../support/ws-client.js';

/**
 * Adversarial review of how the limiter integrates with NestJS's WebSocket machinery:
 * interceptors, guards, pipes, filters, several gateways on one server, socket.io acks.
 * Tests named `BUG:` fail on the code under review; the others are guards that pass.
 */

/** What ran on the server, to tell processed messages from refused ones. */
const seen = { slow: 0, spam: 0, afterGuard: 0 };

// ---------------------------------------------------------------------------------------
// Interceptors: NestJS wraps an intercepted handler's result in an Observable.

/** The most harmless interceptor there is (a logging or metrics interceptor, say). */
@Injectable()
class PassThroughInterceptor implements NestInterceptor {
  intercept(_context: ExecutionContext, next: CallHandler): Observable<unknown> {
    return next.handle();
  }
}

@WebSocketGateway()
@WsRateLimit()
@UseInterceptors(PassThroughInterceptor)
class InterceptedGateway {
  /** An async handler: its reply comes after 300 ms. */
  @Throttle({ type: 'slow', capacity: 10, refillRate: 0.001 })
  @SubscribeMessage('slow')
  async slow(@MessageBody() data: unknown) {
    seen.slow++;
    return later(300, { event: 'slow_reply', data });
  }

  @Throttle({ type: 'spam', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('spam')
  spam(@MessageBody() data: unknown) {
    seen.spam++;
    return { event: 'spam_ack', data };
  }
}

/** The same gateway without the interceptor: the control. */
@WebSocketGateway()
@WsRateLimit()
class PlainSlowGateway {
  @Throttle({ type: 'slow', capacity: 10, refillRate: 0.001 })
  @SubscribeMessage('slow')
  async slow(@MessageBody() data: unknown) {
    seen.slow++;
    return later(300, { event: 'slow_reply', data });
  }

  @Throttle({ type: 'spam', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('spam')
  spam(@MessageBody() data: unknown) {
    seen.spam++;
    return { event: 'spam_ack', data };
  }
}

// ---------------------------------------------------------------------------------------
// Two gateways on one ws server (the default path): NestJS binds both to every socket.

@WebSocketGateway()
@WsRateLimit()
class ChatGateway {
  @Throttle({ type: 'chat', capacity: 100, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'chat_ack', data };
  }
}

@WebSocketGateway()
@WsRateLimit()
class NewsGateway {
  @Throttle({ type: 'news', capacity: 100, refillRate: 0.001 })
  @SubscribeMessage('news')
  news(@MessageBody() data: unknown) {
    return { event: 'news_ack', data };
  }
}

// ---------------------------------------------------------------------------------------
// Guards, pipes, filters and failing handlers around ours.

/** An auth guard that refuses payloads with `deny: true`. */
@Injectable()
class AuthGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const data = context.switchToWs().getData<{ deny?: boolean } | undefined>();
    return data?.deny !== true;
  }
}

/** An async auth guard that takes its time (a session lookup). */
@Injectable()
class SlowAuthGuard implements CanActivate {
  async canActivate(context: ExecutionContext): Promise<boolean> {
    const data = context.switchToWs().getData<{ deny?: boolean } | undefined>();
    await sleep(50);
    return data?.deny !== true;
  }
}

/** A guard after ours that refuses payloads with `late: true`. */
@Injectable()
class LateGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const data = context.switchToWs().getData<{ late?: boolean } | undefined>();
    seen.afterGuard++;
    return data?.late !== true;
  }
}

/** A validation pipe: the payload must be an object with a numeric `n`. */
@Injectable()
class NumberPipe implements PipeTransform {
  transform(value: unknown): unknown {
    if (typeof (value as { n?: unknown } | undefined)?.n !== 'number') throw new WsException('n must be a number');
    return value;
  }
}

/** A catch-everything filter that answers with a frame of its own. */
@Catch()
class CatchAllFilter implements ExceptionFilter {
  catch(_exception: unknown, host: ArgumentsHost): void {
    const client = host.switchToWs().getClient<{ send(data: string): void }>();
    client.send(JSON.stringify({ event: 'app_error' }));
  }
}

/** The README's catch-everything filter that hands the limiter's refusals on. */
@Catch()
@Injectable()
class DelegatingFilter implements ExceptionFilter {
  constructor(private readonly rateLimit: WsRateLimitFilter) {}
  catch(exception: unknown, host: ArgumentsHost): void {
    if (exception instanceof WsRateLimitException) return this.rateLimit.catch(exception, host);
    const client = host.switchToWs().getClient<{ send(data: string): void }>();
    client.send(JSON.stringify({ event: 'app_error' }));
  }
}

@WebSocketGateway()
@WsRateLimit()
class DelegatingGateway {
  @Throttle({ type: 'handed', capacity: 1, refillRate: 0.001 })
  @UseFilters(DelegatingFilter)
  @SubscribeMessage('handed')
  handed() {
    return { event: 'handed_ack' };
  }
}

// Decorators apply bottom-up and `@UseGuards` appends: AuthGuard runs first, then ours, then LateGuard.
@WebSocketGateway()
@UseGuards(LateGuard)
@WsRateLimit()
@UseGuards(AuthGuard)
class StackGateway {
  @Throttle({ type: 'spam', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('spam')
  spam(@MessageBody() data: unknown) {
    seen.spam++;
    return { event: 'spam_ack', data };
  }

  @Throttle({ type: 'validated', capacity: 100, refillRate: 0.001 })
  @UsePipes(NumberPipe)
  @SubscribeMessage('validated')
  validated(@MessageBody() data: unknown) {
    return { event: 'validated_ack', data };
  }

  @Throttle({ type: 'fails', capacity: 100, refillRate: 0.001 })
  @SubscribeMessage('fails')
  fails(@MessageBody() data: { how?: string }) {
    if (data?.how === 'ws') throw new WsException('nope');
    if (data?.how === 'reject') return Promise.reject(new Error('rejected'));
    throw new Error('plain');
  }

  @Throttle({ type: 'quiet', capacity: 100, refillRate: 0.001 })
  @SubscribeMessage('quiet')
  quiet() {
    return undefined;
  }

  @Throttle({ type: 'stream', capacity: 100, refillRate: 0.001 })
  @SubscribeMessage('stream')
  stream() {
    return interval(20).pipe(
      take(3),
      map((i) => ({ event: 'tick', data: i })),
    );
  }

  /** A handler with its own catch-everything filter (method filters run before class ones). */
  @Throttle({ type: 'caught', capacity: 1, refillRate: 0.001 })
  @UseFilters(CatchAllFilter)
  @SubscribeMessage('caught')
  caught() {
    return { event: 'caught_ack' };
  }
}

@WebSocketGateway()
@UseGuards(SlowAuthGuard)
@WsRateLimit()
class SlowAuthGateway {
  @Throttle({ type: 'slow', capacity: 10, refillRate: 0.001 })
  @SubscribeMessage('slow')
  async slow(@MessageBody() data: unknown) {
    return later(200, { event: 'slow_reply', data });
  }

  @Throttle({ type: 'spam', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('spam')
  spam(@MessageBody() data: unknown) {
    return { event: 'spam_ack', data };
  }
}

/** `@WsRateLimit()` above a class-level catch-everything filter of the app's. */
@WebSocketGateway()
@WsRateLimit()
@UseFilters(CatchAllFilter)
class ClassCatchAllGateway {
  @Throttle({ type: 'spam', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('spam')
  spam(@MessageBody() data: unknown) {
    return { event: 'spam_ack', data };
  }
}

/** Turns away clients that ask to be kicked, in handleConnection. */
@WebSocketGateway()
@WsRateLimit()
class KickingGateway implements OnGatewayConnection {
  handleConnection(@ConnectedSocket() client: { close(code?: number): void }, request: { url?: string }): void {
    if (request?.url?.includes('kick') === true) client.close(4000);
  }

  @Throttle({ type: 'spam', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('spam')
  spam(@MessageBody() data: unknown) {
    return { event: 'spam_ack', data };
  }
}

// ---------------------------------------------------------------------------------------
// socket.io

@WebSocketGateway()
@WsRateLimit()
@UseInterceptors(PassThroughInterceptor)
class IoInterceptedGateway {
  @Throttle({ type: 'slow', capacity: 10, refillRate: 0.001 })
  @SubscribeMessage('slow')
  async slow(@MessageBody() data: unknown) {
    seen.slow++;
    return later(300, { event: 'slow_reply', data });
  }

  @Throttle({ type: 'spam', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('spam')
  spam(@MessageBody() data: unknown) {
    seen.spam++;
    return { event: 'spam_ack', data };
  }
}

@WebSocketGateway()
@WsRateLimit()
class IoAckGateway {
  @Throttle({ type: 'ask', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('ask')
  ask(@MessageBody() data: unknown) {
    return { answer: data };
  }

  @Throttle({ type: 'slowask', capacity: 10, refillRate: 0.001 })
  @SubscribeMessage('slowask')
  async slowAsk(@MessageBody() data: unknown) {
    return later(200, { answer: data });
  }
}

@WebSocketGateway()
@WsRateLimit()
class IoSecondGateway {
  @Throttle({ type: 'second', capacity: 100, refillRate: 0.001 })
  @SubscribeMessage('second')
  second(@MessageBody() data: unknown) {
    return { event: 'second_ack', data };
  }
}

// ---------------------------------------------------------------------------------------

const BASE: WsRateLimitModuleOptions = {
  useEnv: false,
  tracker: 'connection',
  global: { capacity: 1000, refillRate: 1000 },
  violations: { max: 10, windowMs: 60_000 },
  // Long enough that an answer slot left open would hold later answers for the whole test.
  closeGraceMs: 60_000,
};

const events = (frames: Frame[]) => frames.map((frame) => frame.event);

describe('NestJS integration edges: WsRateLimitAdapter (ws)', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (providers: unknown[], options: WsRateLimitModuleOptions = {}) => {
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ ...BASE, ...options })],
        providers: providers as never[],
      },
      (app) => new WsRateLimitAdapter(app),
    );
  };
  const connect = async (path = '') => {
    const client = await TestClient.connect(running!.url + path, { perMessageDeflate: false });
    clients.push(client);
    return client;
  };
  const burst = (client: TestClient, messages: Array<[string, unknown]>) =>
    client.inOneWrite(() => {
      for (const [event, data] of messages) client.send(event, data);
    });

  beforeEach(() => {
    seen.slow = seen.spam = seen.afterGuard = 0;
  });

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  // ----- interceptors ---------------------------------------------------------------------

  it('control (no interceptor): a rate_limit frame waits for the reply of an earlier async handler', async () => {
    await start([PlainSlowGateway]);
    const client = await connect();
    burst(client, [
      ['slow', 'a'],
      ['spam', 1],
      ['spam', 2],
    ]);
    await client.waitForEvent('rate_limit');
    await client.waitForEvent('slow_reply');
    expect(events(client.frames)).toEqual(['spam_ack', 'slow_reply', 'rate_limit']);
  });

  it('with an interceptor on the gateway, a rate_limit frame waits for the reply of an earlier async handler', async () => {
    await start([InterceptedGateway]);
    const client = await connect();
    burst(client, [
      ['slow', 'a'],
      ['spam', 1],
      ['spam', 2],
    ]);
    await client.waitForEvent('rate_limit');
    await client.waitForEvent('slow_reply');
    // README: "a rate_limit frame never overtakes the reply of an earlier admitted message".
    expect(events(client.frames)).toEqual(['spam_ack', 'slow_reply', 'rate_limit']);
  });

  it('with an interceptor on the gateway, the 1008 close waits for an admitted async reply', async () => {
    await start([InterceptedGateway], { violations: { max: 2, windowMs: 60_000 } });
    const client = await connect();
    burst(client, [
      ['slow', 'a'],
      ['spam', 1],
      ['spam', 2],
      ['spam', 3],
    ]);
    const closed = await client.waitClose(15_000);
    expect(closed.code).toBe(1008);
    expect(seen.slow).toBe(1); // admitted and processed on the server
    // README: "the 1008 close after the replies of admitted messages" (closeGraceMs is 60 s here).
    expect(events(client.frames)).toEqual(['spam_ack', 'slow_reply', 'rate_limit', 'rate_limit']);
  });

  // ----- two gateways on one server ------------------------------------------------------

  it('two gateways on one ws server: a routed message is not answered UNKNOWN_EVENT by the other gateway', async () => {
    await start([ChatGateway, NewsGateway]);
    const client = await connect();
    burst(client, [
      ['chat', 1],
      ['news', 2],
    ]);
    await client.waitForEvent('chat_ack');
    await client.waitForEvent('news_ack');
    await sleep(200);
    // Both events have a handler: neither is an "event with no handler".
    expect(events(client.frames)).toEqual(['chat_ack', 'news_ack']);
  });

  it('two gateways on one ws server: each routed message is charged once to the global budget', async () => {
    await start([ChatGateway, NewsGateway], { global: { capacity: 6, refillRate: 0.001 } });
    const client = await connect();
    burst(
      client,
      Array.from({ length: 6 }, (_, i): [string, unknown] => ['chat', i]),
    );
    await settle(() => client.frames.filter((frame) => frame.event !== 'error').length >= 6, 200);
    // Six messages within a global capacity of six: all six answered, none refused.
    expect(client.events('chat_ack')).toHaveLength(6);
    expect(client.events('rate_limit')).toHaveLength(0);
  });

  it('two gateways on one ws server: a malformed frame is answered INVALID_MESSAGE once', async () => {
    await start([ChatGateway, NewsGateway]);
    const client = await connect();
    client.sendRaw('not json');
    client.send('chat', 'after');
    await client.waitForEvent('chat_ack');
    await settle(() => client.events('error').length >= 1, 200);
    // README: a frame the parser rejects is "answered with { event: 'error', data: { code: 'INVALID_MESSAGE' } }".
    expect(client.events('error').map((frame) => frame.data.code)).toEqual(['INVALID_MESSAGE']);
  });

  // ----- guards around ours ----------------------------------------------------------------

  it('an auth guard before ours that refuses: not charged, and later answers are not held', async () => {
    await start([StackGateway]);
    const client = await connect();
    burst(client, [
      ['spam', { deny: true }],
      ['spam', { n: 1 }],
      ['spam', { n: 2 }],
    ]);
    await client.waitForEvent('rate_limit', 1, 10_000);
    expect(client.events('spam_ack')).toHaveLength(1);
    expect(client.events('rate_limit')).toHaveLength(1);
    expect(seen.spam).toBe(1);
  });

  it('a guard after ours that refuses: its slot is released (later answers flow)', async () => {
    await start([StackGateway]);
    const client = await connect();
    burst(client, [
      ['spam', { late: true }],
      ['spam', { n: 2 }],
    ]);
    // The first was charged by our guard (it ran first) and refused by the late guard.
    await client.waitForEvent('rate_limit', 1, 10_000);
    expect(seen.afterGuard).toBe(1);
    expect(seen.spam).toBe(0);
    expect(events(client.frames).filter((event) => event !== 'exception')).toEqual(['rate_limit']);
  });

  it('a slow async auth guard before ours: order kept, refusal after the earlier async reply', async () => {
    await start([SlowAuthGateway]);
    const client = await connect();
    burst(client, [
      ['slow', 'a'],
      ['spam', 1],
      ['spam', 2],
    ]);
    await client.waitForEvent('rate_limit', 1, 10_000);
    await client.waitForEvent('slow_reply', 1, 10_000);
    expect(events(client.frames)).toEqual(['spam_ack', 'slow_reply', 'rate_limit']);
  });

  // ----- pipes, failing handlers, streams --------------------------------------------------

  it('a pipe that refuses the payload: the slot is released and later refusals still go out', async () => {
    await start([StackGateway]);
    const client = await connect();
    burst(client, [
      ['validated', { n: 'x' }],
      ['spam', 1],
      ['spam', 2],
    ]);
    await client.waitForEvent('rate_limit', 1, 10_000);
    expect(events(client.frames).filter((event) => event !== 'exception')).toEqual(['spam_ack', 'rate_limit']);
  });

  it.each(['ws', 'plain', 'reject'])(
    'a handler that fails (%s): its slot is released and a later refusal still goes out',
    async (how) => {
      await start([StackGateway]);
      const client = await connect();
      burst(client, [
        ['fails', { how }],
        ['quiet', {}],
        ['spam', 1],
        ['spam', 2],
      ]);
      await client.waitForEvent('rate_limit', 1, 10_000);
      expect(events(client.frames).filter((event) => event !== 'exception')).toEqual(['spam_ack', 'rate_limit']);
    },
  );

  it('a handler streaming three values: all three arrive, and a later refusal is not held', async () => {
    await start([StackGateway]);
    const client = await connect();
    burst(client, [
      ['stream', {}],
      ['spam', 1],
      ['spam', 2],
    ]);
    await client.waitForEvent('tick', 3, 10_000);
    await client.waitForEvent('rate_limit', 1, 10_000);
    expect(client.events('tick').map((frame) => frame.data)).toEqual([0, 1, 2]);
  });

  // ----- filters ---------------------------------------------------------------------------

  it('a class-level catch-everything filter under @WsRateLimit(): our rate_limit frame still goes out', async () => {
    await start([ClassCatchAllGateway]);
    const client = await connect();
    burst(client, [
      ['spam', 1],
      ['spam', 2],
    ]);
    await client.waitForEvent('rate_limit', 1, 10_000);
    expect(events(client.frames)).toEqual(['spam_ack', 'rate_limit']);
  });

  it('a method-level catch-everything filter swallowing the refusal leaves no slot stuck', async () => {
    await start([StackGateway]);
    const client = await connect();
    burst(client, [
      ['caught', 1],
      ['caught', 2],
      ['spam', 1],
      ['spam', 2],
    ]);
    await client.waitForEvent('rate_limit', 1, 10_000);
    // The app's filter answers the refused `caught` its own way (no rate_limit frame for it).
    expect(events(client.frames).filter((event) => event !== 'app_error')).toEqual([
      'caught_ack',
      'spam_ack',
      'rate_limit',
    ]);
    expect(client.events('app_error')).toHaveLength(1);
  });

  it("a catch-everything filter that hands WsRateLimitException to WsRateLimitFilter (the README's): frames, violations and the close", async () => {
    await start([DelegatingGateway], { violations: { max: 2, windowMs: 60_000 } });
    const client = await connect();
    burst(client, [
      ['handed', 1],
      ['handed', 2],
      ['handed', 3],
    ]);
    expect((await client.waitClose()).code).toBe(1008);
    expect(events(client.frames)).toEqual(['handed_ack', 'rate_limit', 'rate_limit']);
  });

  // ----- connection hooks --------------------------------------------------------------------

  it('handleConnection closing a client at once: no crash, other clients still limited', async () => {
    await start([KickingGateway]);
    const kicked = await connect('/?kick=1');
    const closed = await kicked.waitClose();
    expect(closed.code).toBe(4000);
    const client = await connect();
    burst(client, [
      ['spam', 1],
      ['spam', 2],
    ]);
    await client.waitForEvent('rate_limit', 1, 10_000);
    expect(events(client.frames)).toEqual(['spam_ack', 'rate_limit']);
  });
});

describe('NestJS integration edges: WsRateLimitIoAdapter (socket.io, websocket transport)', () => {
  let running: RunningApp | undefined;
  const clients: IoTestClient[] = [];

  const start = async (providers: unknown[], options: WsRateLimitModuleOptions = {}) => {
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ ...BASE, ...options })],
        providers: providers as never[],
      },
      (app) => new WsRateLimitIoAdapter(app),
    );
  };
  const connect = async () => {
    const client = await connectIo(`http://127.0.0.1:${running!.port}`, 'websocket');
    clients.push(client);
    return client;
  };

  beforeEach(() => {
    seen.slow = seen.spam = seen.afterGuard = 0;
  });

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.closeAndSettle()));
    await running?.close();
    running = undefined;
  });

  it('with an interceptor on the gateway, a rate_limit event waits for the reply of an earlier async handler', async () => {
    await start([IoInterceptedGateway]);
    const client = await connect();
    client.socket.emit('slow', 'a');
    client.socket.emit('spam', 1);
    client.socket.emit('spam', 2);
    await client.until(() => client.of('rate_limit').length === 1 && client.of('slow_reply').length === 1);
    expect(client.events.map((entry) => entry.event)).toEqual(['spam_ack', 'slow_reply', 'rate_limit']);
  });

  it('with an interceptor on the gateway, the disconnect waits for an admitted async reply', async () => {
    await start([IoInterceptedGateway], { violations: { max: 2, windowMs: 60_000 } });
    const client = await connect();
    client.socket.emit('slow', 'a');
    client.socket.emit('spam', 1);
    client.socket.emit('spam', 2);
    client.socket.emit('spam', 3);
    await client.disconnected(15_000);
    // README: the disconnect comes "once the replies of the events admitted before the decision are out".
    expect(client.events.map((entry) => entry.event)).toEqual([
      'spam_ack',
      'slow_reply',
      'rate_limit',
      'rate_limit',
      'rate_limit_disconnect',
    ]);
  });

  it('two gateways on one socket.io namespace: no spurious answers, one charge per event', async () => {
    await start([IoAckGateway, IoSecondGateway], { global: { capacity: 4, refillRate: 0.001 } });
    const client = await connect();
    for (let i = 0; i < 4; i++) client.socket.emit('second', i);
    await client.until(() => client.of('second_ack').length === 4);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(client.events.map((entry) => entry.event)).toEqual(Array(4).fill('second_ack'));
  });

  it('emitWithAck: an admitted event gets its reply through the ack, a refused one the rate_limit answer', async () => {
    await start([IoAckGateway]);
    const client = await connect();
    const first = client.socket.emitWithAck('ask', { q: 1 });
    const second = client.socket.emitWithAck('ask', { q: 2 });
    expect(await first).toEqual({ answer: { q: 1 } });
    const refused = (await second) as { event: string; data: { code: string } };
    expect(refused.event).toBe('rate_limit');
    expect(refused.data.code).toBe('TYPE_LIMIT');
    // The refusal went to the ack, not to an event.
    expect(client.of('rate_limit')).toEqual([]);
  });

  it('emitWithAck: a refusal through an ack waits for the reply of an earlier async handler', async () => {
    await start([IoAckGateway]);
    const client = await connect();
    const order: string[] = [];
    const slow = client.socket.emitWithAck('slowask', 's').then(() => order.push('slow'));
    const first = client.socket.emitWithAck('ask', 1).then(() => order.push('ask'));
    const second = client.socket.emitWithAck('ask', 2).then(() => order.push('refused'));
    await Promise.all([slow, first, second]);
    expect(order).toEqual(['ask', 'slow', 'refused']);
  });
});
