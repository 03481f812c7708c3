/**
 * Adversarial review: a team migrating from @nestjs/throttler follows the README's sections
 * "Coming from @nestjs/throttler", "Guards registered globally", "Extending the guard" and
 * "Decorators" literally, on platform-ws and socket.io with the memory store: APP_GUARD
 * registration, the decorators, the guard beside the app's own guards and filters, guard
 * subclasses overriding the documented hooks, and HTTP controllers in the same app.
 * Two cases (each on both transports) failed on the code reviewed (d8f2550) and were fixed:
 * APP_GUARD beside @WsRateLimit() charged each message twice (a context one of our guards
 * decided is now let through by the next), and a class-level catch-all written above
 * @WsRateLimit() took the refusals (the module now has WsRateLimitFilter tried first among
 * a gateway's own filters). The others are edges that held.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import {
  Body,
  Catch,
  Controller,
  Get,
  Injectable,
  Post,
  UseFilters,
  UseGuards,
  type ArgumentsHost,
  type CanActivate,
  type ExceptionFilter,
  type ExecutionContext,
} from '@nestjs/common';
import { APP_FILTER, APP_GUARD } from '@nestjs/core';
import { MessageBody, SubscribeMessage, WebSocketGateway, WsException } from '@nestjs/websockets';
import { request, type IncomingMessage } from 'node:http';
import {
  createPlan,
  SkipThrottle,
  Throttle,
  tokenBucketSpec,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitException,
  WsRateLimitFilter,
  WsRateLimitModule,
  WsSkipThrottle,
  WsThrottle,
  WsThrottleGuard,
  type ConnectionState,
  type RateLimitDecision,
  type RateLimitPlan,
  type Route,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { connectIo, waitFor, type IoTestClient } from '../../support/io-client.js';
import { TestClient, type Frame } from '../../support/ws-client.js';

// ---------------------------------------------------------------------------------------
// Gateways, guards, filters and a controller, as a migrating app would have them.

/** What the handlers ran, to tell processed messages from refused ones. */
const ran = { chat: 0 };

/** A socket.io socket (it has an Engine.IO `conn`) or a ws one. */
const answerApp = (host: ArgumentsHost, event: string): void => {
  const client = host.switchToWs().getClient<{ conn?: unknown; send?(data: string): void }>();
  if (typeof client.conn === 'object') (client as { emit(e: string, d: unknown): void }).emit(event, {});
  else client.send!(JSON.stringify({ event }));
};

/** A gateway with no limiter decorator: only a guard registered globally limits it. */
@WebSocketGateway()
class PlainGateway {
  @Throttle({ capacity: 3, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    ran.chat++;
    return { event: 'ack', data };
  }

  @SkipThrottle()
  @SubscribeMessage('ping')
  ping(@MessageBody() data: unknown) {
    return { event: 'pong', data };
  }
}

/** The same gateway with `@WsRateLimit()`, as the quick start has it. */
@WebSocketGateway()
@WsRateLimit()
class DecoratedGateway {
  @Throttle({ capacity: 3, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    ran.chat++;
    return { event: 'ack', data };
  }
}

/** A catch-everything filter of the app's own, answering with a frame of its own. */
@Catch()
class AppCatchAllFilter implements ExceptionFilter {
  catch(_exception: unknown, host: ArgumentsHost): void {
    answerApp(host, 'app_error');
  }
}

/**
 * The app's class-level catch-everything filter written above `@WsRateLimit()`: a team adds
 * `@WsRateLimit()` under the decorators its gateway already has.
 */
@WebSocketGateway()
@UseFilters(AppCatchAllFilter)
@WsRateLimit()
class FilterAboveGateway {
  @Throttle({ capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** The app's class-level catch-everything filter, the guard registered globally. */
@WebSocketGateway()
@UseFilters(AppCatchAllFilter)
class FilteredPlainGateway {
  @Throttle({ capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** An auth guard that throws `WsException` for payloads without the token. */
@Injectable()
class TokenGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    if (context.getType() !== 'ws') return true;
    const data = context.switchToWs().getData<{ token?: string } | null>();
    if (data?.token !== 'ok') throw new WsException('Unauthorized');
    return true;
  }
}

/** Ours, then the auth guard (decorators apply bottom-up and `@UseGuards` appends). */
@WebSocketGateway()
@UseGuards(TokenGuard)
@WsRateLimit()
class AuthAfterGateway {
  @Throttle({ capacity: 2, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** HTTP routes in the same app. */
@Controller('api')
class ApiController {
  @Get('health')
  health() {
    return { ok: true };
  }

  @Post('echo')
  echo(@Body() body: unknown) {
    return body;
  }
}

/** A global HTTP-style filter of the app's (NestJS never applies global filters to gateways). */
@Catch()
class GlobalCatchAllFilter implements ExceptionFilter {
  catch(_exception: unknown, host: ArgumentsHost): void {
    if (host.getType() === 'ws') answerApp(host, 'global_filter');
    else
      host.switchToHttp().getResponse<{ status(code: number): { json(body: unknown): void } }>().status(418).json({});
  }
}

/** A subclass overriding `onRejected` (records, then answers as the default does). */
const rejectedTypes: string[] = [];
@Injectable()
class LoggingGuard extends WsThrottleGuard {
  protected override onRejected(
    decision: RateLimitDecision & { allowed: false },
    route: Route,
    plan: RateLimitPlan,
    context: ExecutionContext,
  ): true {
    rejectedTypes.push(route.type);
    return super.onRejected(decision, route, plan, context);
  }
}

/** A subclass overriding `getRoute` (admins unlimited) and `getPlan` (one bucket of 2, by `createPlan`). */
@Injectable()
class CustomPlanGuard extends WsThrottleGuard {
  protected override getRoute(context: ExecutionContext, connection: ConnectionState, client: object): Route | null {
    if (context.switchToWs().getData<{ admin?: boolean } | null>()?.admin === true) return null;
    return super.getRoute(context, connection, client);
  }

  protected override getPlan(_connection: ConnectionState, _route: Route, tracker: string): RateLimitPlan {
    return createPlan(this.limiter.store, tracker, [tokenBucketSpec('global', 'mine', 2, 0.001)]);
  }
}

@WebSocketGateway()
@UseGuards(LoggingGuard)
class LoggingGateway {
  @Throttle({ capacity: 2, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

@WebSocketGateway()
@UseGuards(CustomPlanGuard)
class CustomPlanGateway {
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** The README's "After" gateway (Coming from @nestjs/throttler), its handlers answering. */
@WebSocketGateway()
@WsRateLimit()
class ReadmeChatGateway {
  @WsThrottle({ limits: { short: { capacity: 10, refillRate: 10 }, long: { capacity: 100, refillRate: 100 / 60 } } })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @WsSkipThrottle()
  @SubscribeMessage('ping')
  ping(@MessageBody() data: unknown) {
    return { event: 'pong', data };
  }
}

/** The README's AllErrorsFilter (Guards registered globally), its own answer filled in. */
@Catch()
@Injectable()
class AllErrorsFilter implements ExceptionFilter {
  constructor(private readonly rateLimit: WsRateLimitFilter) {}
  catch(exception: unknown, host: ArgumentsHost) {
    if (exception instanceof WsRateLimitException) return this.rateLimit.catch(exception, host);
    answerApp(host, 'app_error');
  }
}

@WebSocketGateway()
@WsRateLimit()
class HandedGateway {
  @Throttle({ capacity: 1, refillRate: 0.001 })
  @UseFilters(AllErrorsFilter)
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return data; // no event: on socket.io the reply goes to the acknowledgement
  }
}

/** What the README's TeamGuard calls: the team from the upgrade request's `x-team` header. */
const teams = {
  of: async (request: unknown): Promise<string | undefined> =>
    (request as IncomingMessage | undefined)?.headers['x-team'] as string | undefined,
};

/** The README's TeamGuard (Coming from @nestjs/throttler), verbatim. */
@Injectable()
export class TeamGuard extends WsThrottleGuard {
  protected override async getTracker(client: object, connection: ConnectionState): Promise<string> {
    const team = await teams.of(connection.request);
    return team === undefined ? super.getTracker(client, connection) : `key:team-${team}`;
  }
}

@WebSocketGateway()
@UseGuards(TeamGuard)
class TeamGateway {
  @Throttle({ capacity: 2, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

// ---------------------------------------------------------------------------------------
// Apps and clients on both platforms.

type Metadata = Parameters<typeof startApp>[0];
type Platform = 'ws' | 'socket.io';

let running: RunningApp | undefined;
const wsClients: TestClient[] = [];
const ioClients: IoTestClient[] = [];

afterEach(async () => {
  await Promise.all(wsClients.splice(0).map((client) => client.close()));
  await Promise.all(ioClients.splice(0).map((client) => client.closeAndSettle()));
  await running?.close();
  running = undefined;
  ran.chat = 0;
  rejectedTypes.length = 0;
});

const start = async (
  platform: Platform,
  metadata: Omit<Metadata, 'imports'>,
  options: WsRateLimitModuleOptions = {},
): Promise<RunningApp> =>
  (running = await startApp(
    { imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })], ...metadata },
    (app) => (platform === 'ws' ? new WsRateLimitAdapter(app) : new WsRateLimitIoAdapter(app)),
  ));

/** One client of either platform, answering one message at a time. */
interface Peer {
  /** Sends one message and returns the event of the answer that follows it. */
  ask(event: string, extra?: object): Promise<string>;
  /** Sends `count` messages at once (one tick) and returns the events of their answers, in order. */
  burst(event: string, count: number): Promise<string[]>;
  /** Every answer received so far, in order: event and data. */
  answers(): Array<{ event: string; data: unknown }>;
  /** Resolves when the server ends the connection for repeat offences (ws 1008, socket.io rate_limit_disconnect). */
  closedForViolations(): Promise<void>;
}

let nextId = 1;

const connectPeer = async (platform: Platform, headers: Record<string, string> = {}): Promise<Peer> => {
  if (platform === 'ws') {
    const client = await TestClient.connect(running!.url, { headers });
    wsClients.push(client);
    return {
      ask: async (event, extra = {}) => {
        const from = client.frames.length;
        const id = nextId++;
        client.socket.send(JSON.stringify({ event, data: { n: id, ...extra }, id }));
        await client.waitFor(() => client.frames.length > from);
        return client.frames[from]!.event ?? 'raw';
      },
      burst: async (event, count) => {
        const from = client.frames.length;
        client.inOneWrite(() => {
          for (let i = 0; i < count; i++) client.send(event, { n: nextId++ });
        });
        await client.waitFor(() => client.frames.length >= from + count);
        return client.frames.slice(from, from + count).map((frame) => frame.event ?? 'raw');
      },
      answers: () => client.frames.map((frame: Frame) => ({ event: frame.event ?? 'raw', data: frame.data })),
      closedForViolations: async () => {
        expect((await client.waitClose()).code).toBe(1008);
      },
    };
  }
  const client = await connectIo(`http://127.0.0.1:${running!.port}`, 'websocket', { extraHeaders: headers });
  ioClients.push(client);
  return {
    ask: async (event, extra = {}) => {
      const from = client.events.length;
      const id = nextId++;
      client.socket.emit(event, { n: id, id, ...extra });
      await waitFor(() => client.events.length > from, 10_000, `an answer to ${event}`);
      return client.events[from]!.event;
    },
    burst: async (event, count) => {
      const from = client.events.length;
      for (let i = 0; i < count; i++) client.socket.emit(event, { n: nextId++ });
      await waitFor(() => client.events.length >= from + count, 10_000, `${count} answers to ${event}`);
      return client.events.slice(from, from + count).map((answer) => answer.event);
    },
    answers: () => client.events.map(({ event, data }) => ({ event, data })),
    closedForViolations: async () => {
      await client.disconnected();
      expect(client.of('rate_limit_disconnect')).toHaveLength(1);
    },
  };
};

const askMany = async (peer: Peer, event: string, count: number, extra: object = {}): Promise<string[]> => {
  const answers: string[] = [];
  for (let i = 0; i < count; i++) answers.push(await peer.ask(event, extra));
  return answers;
};

const http = (port: number, method: string, path: string, body?: string) =>
  new Promise<{ status: number; body: string }>((resolve, reject) => {
    const headers: Record<string, string> = body === undefined ? {} : { 'content-type': 'application/json' };
    const req = request({ host: '127.0.0.1', port, method, path, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });

// ---------------------------------------------------------------------------------------

describe.each<Platform>(['ws', 'socket.io'])('coming from @nestjs/throttler, on %s (memory store)', (platform) => {
  it('WsThrottleGuard as APP_GUARD and @WsRateLimit() on a gateway charge each message once', async () => {
    // The README's migration table maps ThrottlerGuard "(APP_GUARD or @UseGuards)" to
    // "WsThrottleGuard: @WsRateLimit() on a gateway, or APP_GUARD"; the quick start puts
    // @WsRateLimit() on gateways and "Guards registered globally" adds APP_GUARD. A team doing
    // both (a global guard, gateways keeping their quick-start decorator) expects the limits
    // it wrote: `@Throttle({ capacity: 3 })` admits 3 messages. NestJS runs both guard
    // instances for each message (same ExecutionContext), and each spends the plan: the
    // first message takes 2 tokens, the second spends the last one in the first guard and
    // is refused by the second (having spent it anyway). Only 1 of 3 is admitted.
    await start(platform, { providers: [DecoratedGateway, { provide: APP_GUARD, useClass: WsThrottleGuard }] });
    const peer = await connectPeer(platform);
    expect(await askMany(peer, 'chat', 4)).toEqual(['ack', 'ack', 'ack', 'rate_limit']);
    expect(ran.chat).toBe(3);
  });

  it("an app's class-level catch-all filter written above @WsRateLimit() leaves the limiter's refusals to WsRateLimitFilter", async () => {
    // README (Guards registered globally): "NestJS tries a handler's filters before its
    // gateway's, so a filter on a handler that catches everything ... gets the limiter's
    // refusals": only a handler's filter is said to take them. With the guard registered
    // globally the module puts WsRateLimitFilter last on the gateway (tried first), so the
    // same class-level filter does not see refusals (next test). With @WsRateLimit() under
    // the app's @UseFilters, NestJS tries the app's filter first: the client gets the app's
    // frame instead of rate_limit, no retryAfter, no violation counted, never the 1008 close.
    // Expected: rate_limit answers whatever the order of the gateway's class decorators.
    await start(platform, { providers: [FilterAboveGateway] }, { violations: { max: 2, windowMs: 60_000 } });
    const peer = await connectPeer(platform);
    expect(await askMany(peer, 'chat', 3)).toEqual(['ack', 'rate_limit', 'rate_limit']);
    await peer.closedForViolations();
  });

  it('with APP_GUARD, a class-level catch-all filter of the app does not see the refusals', async () => {
    await start(platform, { providers: [FilteredPlainGateway, { provide: APP_GUARD, useClass: WsThrottleGuard }] });
    const peer = await connectPeer(platform);
    expect(await askMany(peer, 'chat', 3)).toEqual(['ack', 'rate_limit', 'rate_limit']);
    const refusal = peer.answers().find((answer) => answer.event === 'rate_limit')!.data;
    expect(refusal).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'chat', limit: 1, warningCount: 1 });
  });

  it('with APP_GUARD, HTTP routes of the same app answer as usual and gateways are still limited', async () => {
    await start(platform, {
      providers: [PlainGateway, { provide: APP_GUARD, useClass: WsThrottleGuard }],
      controllers: [ApiController],
    });
    // Well past every default budget: the guard passes HTTP contexts untouched.
    for (let i = 0; i < 30; i++) expect((await http(running!.port, 'GET', '/api/health')).status).toBe(200);
    const echoed = await http(running!.port, 'POST', '/api/echo', JSON.stringify({ a: 1 }));
    expect(echoed).toEqual({ status: 201, body: '{"a":1}' });
    const peer = await connectPeer(platform);
    expect(await askMany(peer, 'chat', 4)).toEqual(['ack', 'ack', 'ack', 'rate_limit']);
    // @SkipThrottle(): unlimited, even right after a refusal.
    expect(await askMany(peer, 'ping', 25)).toEqual(Array.from({ length: 25 }, () => 'pong'));
    expect((await http(running!.port, 'GET', '/api/health')).status).toBe(200);
  });

  it("with APP_GUARD and an app's global filter (APP_FILTER): HTTP errors reach it, gateway refusals stay rate_limit", async () => {
    await start(platform, {
      providers: [
        PlainGateway,
        { provide: APP_GUARD, useClass: WsThrottleGuard },
        { provide: APP_FILTER, useClass: GlobalCatchAllFilter },
      ],
      controllers: [ApiController],
    });
    expect((await http(running!.port, 'GET', '/api/missing')).status).toBe(418);
    const peer = await connectPeer(platform);
    expect(await askMany(peer, 'chat', 4)).toEqual(['ack', 'ack', 'ack', 'rate_limit']);
  });

  it('an auth guard (APP_GUARD) before ours that throws WsException: the exception answers, nothing is charged', async () => {
    await start(platform, {
      providers: [
        PlainGateway,
        { provide: APP_GUARD, useClass: TokenGuard },
        { provide: APP_GUARD, useClass: WsThrottleGuard },
      ],
    });
    const peer = await connectPeer(platform);
    expect(await askMany(peer, 'chat', 5)).toEqual(Array.from({ length: 5 }, () => 'exception'));
    expect(await askMany(peer, 'chat', 4, { token: 'ok' })).toEqual(['ack', 'ack', 'ack', 'rate_limit']);
  });

  it('an auth guard after ours (guards run in order): the message it refuses was charged, as ThrottlerGuard would', async () => {
    await start(platform, { providers: [AuthAfterGateway] });
    const peer = await connectPeer(platform);
    expect(await peer.ask('chat')).toBe('exception');
    expect(await askMany(peer, 'chat', 2, { token: 'ok' })).toEqual(['ack', 'rate_limit']);
  });

  it("a subclass overriding onRejected hears the gateway's routed refusals, and its unrouted ones on ws", async () => {
    await start(platform, { providers: [LoggingGateway] }, { global: { capacity: 4, refillRate: 0.001 } });
    const peer = await connectPeer(platform);
    expect(await askMany(peer, 'chat', 3)).toEqual(['ack', 'ack', 'rate_limit']);
    expect(rejectedTypes).toEqual(['chat']);
    if (platform === 'ws') {
      // README (Extending the guard): a subclass on a gateway "also decides that gateway's
      // malformed frames and unknown events". Global: 4, the two acks spent 2.
      expect(await askMany(peer, 'nope', 3)).toEqual(['error', 'error', 'rate_limit']);
      expect(rejectedTypes).toEqual(['chat', 'unknown']);
    }
  });

  it('a subclass overriding getRoute (null: unlimited) and getPlan (createPlan, tokenBucketSpec)', async () => {
    await start(platform, { providers: [CustomPlanGateway] });
    const peer = await connectPeer(platform);
    expect(await askMany(peer, 'chat', 5, { admin: true })).toEqual(Array.from({ length: 5 }, () => 'ack'));
    expect(await askMany(peer, 'chat', 3)).toEqual(['ack', 'ack', 'rate_limit']);
    const refusal = peer.answers().find((answer) => answer.event === 'rate_limit')!.data;
    expect(refusal).toMatchObject({ code: 'GLOBAL_LIMIT', messageType: 'chat', limit: 2, remaining: 0 });
  });

  it("the README's TeamGuard: connections of one team (upgrade header) share a budget", async () => {
    await start(platform, { providers: [TeamGateway] });
    const red = await connectPeer(platform, { 'x-team': 'red' });
    const red2 = await connectPeer(platform, { 'x-team': 'red' });
    const blue = await connectPeer(platform, { 'x-team': 'blue' });
    expect(await red.ask('chat')).toBe('ack');
    expect(await askMany(red2, 'chat', 2)).toEqual(['ack', 'rate_limit']);
    expect(await askMany(blue, 'chat', 2)).toEqual(['ack', 'ack']);
  });

  it("the README's throttler migration, literally: module options, named limits, WsSkipThrottle", async () => {
    const sessions = new Map<string, { userId: string }>();
    await start(
      platform,
      { providers: [ReadmeChatGateway] },
      {
        tracker: async (client) => (await sessions.get((client as { sid: string }).sid))?.userId,
        skipIf: (context) => (context.switchToWs().getClient() as { internal?: boolean }).internal === true,
      },
    );
    const peer = await connectPeer(platform);
    // short: 10 at once, then 10 a second (a slow machine may refill one or two meanwhile).
    // (14: at most 4 refusals, under the default 10 violations that close the connection.)
    const answers = await peer.burst('chat', 14);
    expect(answers.slice(0, 10)).toEqual(Array.from({ length: 10 }, () => 'ack'));
    expect(answers.filter((event) => event === 'rate_limit').length).toBeGreaterThanOrEqual(2);
    const refusal = peer.answers().find((answer) => answer.event === 'rate_limit')!.data;
    expect(refusal).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'chat', limit: 10 });
    expect(await askMany(peer, 'ping', 30)).toEqual(Array.from({ length: 30 }, () => 'pong'));
  });
});

describe('coming from @nestjs/throttler: socket.io acknowledgements', () => {
  it("the README's AllErrorsFilter on a handler hands refusals on: an acked event gets rate_limit through its ack", async () => {
    await start('socket.io', { providers: [HandedGateway] });
    const client = await connectIo(`http://127.0.0.1:${running!.port}`, 'websocket');
    ioClients.push(client);
    expect(await client.socket.timeout(10_000).emitWithAck('chat', { id: 1 })).toEqual({ id: 1 });
    const refused = (await client.socket.timeout(10_000).emitWithAck('chat', { id: 2 })) as {
      event: string;
      data: Record<string, unknown>;
    };
    expect(refused).toMatchObject({
      event: 'rate_limit',
      data: { code: 'TYPE_LIMIT', messageType: 'chat', limit: 1, warningCount: 1, id: 2 },
    });
    // "the answer comes through the ack instead ... and no event is emitted".
    expect(client.of('rate_limit')).toEqual([]);
    expect(client.of('app_error')).toEqual([]);
  });
});
