/**
 * Review of 7a463e2 (frameBuilder failures, socket.io acks, skipped handlers, blocks over
 * allow lists), memory store, ws and socket.io.
 *
 * Failed before (fixed with this file): a frameBuilder result JSON writes nothing for
 * without an error (undefined, a function, a toJSON returning undefined) or a promise (an
 * async builder) went out as an empty binary frame or `{}` on ws, and as a null payload or
 * an ack callback on socket.io, with no warning; they now get the default frame and the
 * warning. Checked and as the README says: a denied tracker's @SkipThrottle messages run
 * (deny lists act on the messages the limiter decides).
 */
import { afterEach, beforeEach, describe, expect, it, jest } from '@jest/globals';
import { Logger } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway, type OnGatewayConnection } from '@nestjs/websockets';
import WebSocket from 'ws';
import { config as rxjsConfig } from 'rxjs';
import {
  SkipThrottle,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type TrackerContext,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { IoTestClient, waitFor } from '../../support/io-client.js';
import { sleep, TestClient, type Frame } from '../../support/ws-client.js';

/** Events the app's own socket.io listeners (no handler) received. */
const customSeen: unknown[] = [];

@WebSocketGateway()
@WsRateLimit()
class FramesGateway implements OnGatewayConnection {
  handleConnection(client: { on?: (event: string, listener: (data: unknown) => void) => void }): void {
    if (!(client instanceof WebSocket)) client.on?.('custom', (data) => customSeen.push(data));
  }

  @Throttle({ capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('quick')
  quick(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @SkipThrottle()
  @SubscribeMessage('health')
  health(@MessageBody() data: unknown) {
    return { event: 'healthy', data };
  }

  @SkipThrottle()
  @SubscribeMessage('slowHealth')
  async slowHealth(@MessageBody() data: unknown) {
    await sleep(150);
    return { event: 'healthy', data };
  }

  @Throttle({ capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('maybe')
  maybe(@MessageBody() data: unknown) {
    return { event: 'maybeAck', data };
  }
}

const base = (options: WsRateLimitModuleOptions): WsRateLimitModuleOptions => ({
  useEnv: false,
  metrics: false,
  global: { capacity: 1000, refillRate: 0.001 },
  connection: { capacity: 1000, refillRate: 1000 },
  violations: { max: 1000, windowMs: 60_000 },
  // A message whose data says `skip: true` is not limited (the module's skipIf).
  skipIf: (context) => (context.switchToWs().getData() as { skip?: boolean } | undefined)?.skip === true,
  ...options,
});

const apps: RunningApp[] = [];
const wsClients: TestClient[] = [];
const ioClients: IoTestClient[] = [];

async function start(transport: 'ws' | 'socket.io', options: WsRateLimitModuleOptions): Promise<RunningApp> {
  const running = await startApp(
    { imports: [WsRateLimitModule.forRoot(base(options))], providers: [FramesGateway] },
    (app) => (transport === 'ws' ? new WsRateLimitAdapter(app) : new WsRateLimitIoAdapter(app)),
  );
  apps.push(running);
  return running;
}
async function connectWs(url: string, headers: Record<string, string> = {}): Promise<TestClient> {
  const client = await TestClient.connect(url, { headers });
  wsClients.push(client);
  return client;
}
async function connectIo(port: number, headers: Record<string, string> = {}): Promise<IoTestClient> {
  const client = new IoTestClient(`http://127.0.0.1:${port}`, 'websocket', { extraHeaders: headers });
  ioClients.push(client);
  await client.connected();
  return client;
}

let nextId = 1;
/** One message per event in one TCP write; returns the ids. */
function burstWs(client: TestClient, events: readonly string[], extra: Record<string, unknown> = {}): number[] {
  const ids = events.map(() => nextId++);
  const raw = (event: string, i: number) => JSON.stringify({ event, data: { id: ids[i], ...extra }, id: ids[i] });
  client.inOneWrite(() => events.forEach((event, i) => client.sendRaw(raw(event, i))));
  return ids;
}
function burstIo(client: IoTestClient, events: readonly string[], extra: Record<string, unknown> = {}): number[] {
  const ids = events.map(() => nextId++);
  events.forEach((event, i) => client.socket.emit(event, { id: ids[i], ...extra }));
  return ids;
}
/** Raw ACK packets (`3<id>[...]`) the client's Engine.IO connection received, by ack id. */
function countAckPackets(client: IoTestClient): Map<number, number> {
  const seen = new Map<number, number>();
  const engine = client.socket.io.engine as unknown as { on(event: 'data', listener: (data: unknown) => void): void };
  engine.on('data', (data) => {
    const match = typeof data === 'string' ? /^3(\d+)/.exec(data) : null;
    if (match) seen.set(Number(match[1]), (seen.get(Number(match[1])) ?? 0) + 1);
  });
  return seen;
}

/** Nest Logger warnings and errors while a test runs. */
function captureLogs(): { lines: () => string[]; restore: () => void } {
  const seen: string[] = [];
  const keep = (message: unknown) => void seen.push(message instanceof Error ? message.message : String(message));
  const spies = [Logger.prototype, Logger].flatMap((target) =>
    (['error', 'warn'] as const).map((level) => jest.spyOn(target, level).mockImplementation(keep)),
  );
  return { lines: () => seen, restore: () => spies.forEach((spy) => spy.mockRestore()) };
}
/** Errors rxjs rethrows out of a subscriber (uncaught exceptions otherwise). */
function catchEscaped(): { errors: string[]; restore: () => void } {
  const errors: string[] = [];
  const before = rxjsConfig.onUnhandledError;
  rxjsConfig.onUnhandledError = (error: unknown) => void errors.push(String(error));
  return { errors, restore: () => (rxjsConfig.onUnhandledError = before) };
}
const frameWarnings = (lines: string[]) => lines.filter((line) => /rate_limit frame|frameBuilder/.test(line));

let logs: ReturnType<typeof captureLogs>;
let escaped: ReturnType<typeof catchEscaped>;
beforeEach(() => {
  logs = captureLogs();
  escaped = catchEscaped();
});
afterEach(async () => {
  await Promise.all(wsClients.splice(0).map((client) => client.close()));
  for (const client of ioClients.splice(0)) client.close();
  await sleep(20);
  for (const running of apps.splice(0)) await running.close();
  logs.restore();
  escaped.restore();
  expect(escaped.errors).toEqual([]);
});

const thrower = () => {
  throw new Error('builder bug');
};
const bigint = (info: object) => ({ event: 'rate_limit', data: { ...info, at: 1n } });
const cycle = (info: object) => {
  const data: Record<string, unknown> = { ...info };
  data.self = data;
  return { event: 'rate_limit', data };
};
const isDefault = (frame: Frame) => frame.event === 'rate_limit' && typeof frame.data?.retryAfter === 'number';

describe('frameBuilder failures, ws', () => {
  it.each([
    ['throws', thrower],
    ['builds a BigInt', bigint],
    ['builds a cycle', cycle],
  ])(
    'a builder that %s: routed and unrouted refusals get the default frame, the violation close still comes, the warning is logged once',
    async (_what, builder) => {
      const app = await start('ws', {
        frameBuilder: builder as never,
        global: { capacity: 2, refillRate: 0.001 },
        violations: { max: 4, windowMs: 60_000 },
      });
      const client = await connectWs(app.url);
      // quick: admitted then refused; nope (unknown): the last global token -> error frame, then refused;
      // a malformed frame: refused (global empty). 4 violations: the close.
      const ids = burstWs(client, ['quick', 'quick', 'nope', 'nope']);
      client.sendRaw('{not json');
      client.sendRaw(JSON.stringify({ event: 'nope', data: {}, id: 'late' }));
      const closed = await client.waitClose(8_000);
      expect(closed.code).toBe(1008);
      const refused = client.frames.filter(isDefault);
      expect(refused.map((f) => f.data.messageType)).toEqual(['quick', 'unknown', 'invalid', 'unknown']);
      expect(client.events('error')).toHaveLength(1);
      expect(refused[0]!.data.id).toBe(ids[1]);
      // (A routed refusal is counted by the filter, after the unrouted ones of its read: README.)
      expect(refused.map((f) => f.data.warningCount as number).sort()).toEqual([1, 2, 3, 4]);
      expect(frameWarnings(logs.lines())).toHaveLength(1);
    },
  );

  it.each([
    ['undefined', () => undefined],
    ['a function', () => () => 1],
    ['an object whose toJSON gives undefined', () => ({ toJSON: () => undefined })],
    ['a promise (an async builder)', async (info: object) => ({ event: 'rate_limit', data: info })],
  ])(
    'a builder returning %s (JSON writes nothing, or {}, without throwing): the client gets the default rate_limit frame, and a warning',
    async (_what, builder) => {
      const app = await start('ws', { frameBuilder: builder as never });
      const client = await connectWs(app.url);
      const ids = burstWs(client, ['quick', 'quick']);
      await client.waitFor(() => true, 2, 5_000);
      // Correct: the frame JSON cannot write is replaced by the default one (said once).
      expect(client.frames[1]).toMatchObject({ event: 'rate_limit', data: { code: 'TYPE_LIMIT', id: ids[1] } });
      expect(frameWarnings(logs.lines())).toHaveLength(1);
    },
  );

  it('null and a string are sent as their JSON, and the socket stays open', async () => {
    let calls = 0;
    const app = await start('ws', { frameBuilder: (() => (++calls === 1 ? null : 'slow down')) as never });
    const client = await connectWs(app.url);
    burstWs(client, ['quick', 'quick', 'quick']);
    await client.waitFor(() => true, 3, 5_000);
    expect(client.frames.slice(1)).toEqual([null, 'slow down']);
    expect(client.socket.readyState).toBe(client.socket.OPEN);
    expect(frameWarnings(logs.lines())).toEqual([]);
  });

  it('a throwing builder at the degradation threshold: the DEGRADED default frame, then essential-less messages refused DEGRADED', async () => {
    const app = await start('ws', {
      frameBuilder: thrower as never,
      violations: { max: 2, windowMs: 60_000 },
      degradeCooldownMs: 30_000,
    });
    const client = await connectWs(app.url);
    burstWs(client, ['quick', 'quick', 'quick']);
    await client.waitFor(isDefault, 2, 5_000);
    burstWs(client, ['quick']);
    await client.waitFor(isDefault, 3, 5_000);
    expect(client.frames.filter(isDefault).map((f) => f.data.code)).toEqual(['TYPE_LIMIT', 'DEGRADED', 'DEGRADED']);
    expect(client.socket.readyState).toBe(client.socket.OPEN);
    expect(frameWarnings(logs.lines())).toHaveLength(1);
  });

  it('shadow mode: a throwing builder is never called, nothing is sent, every message is processed', async () => {
    const builder = jest.fn(thrower);
    const app = await start('ws', {
      frameBuilder: builder as never,
      shadow: true,
      violations: { max: 2, windowMs: 60_000 },
    });
    const client = await connectWs(app.url);
    burstWs(client, ['quick', 'quick', 'quick', 'quick', 'nope']);
    await client.waitFor(() => true, 5, 5_000);
    await sleep(100);
    expect(client.frames.map((f) => f.event)).toEqual(['ack', 'ack', 'ack', 'ack', 'error']);
    expect(builder).not.toHaveBeenCalled();
    expect(frameWarnings(logs.lines())).toEqual([]);
  });
});

describe('frameBuilder failures, socket.io', () => {
  it.each([
    ['throws', thrower],
    ['builds a BigInt', bigint],
    ['builds a cycle', cycle],
    ['builds a reserved event', (info: object) => ({ event: 'disconnect', data: info })],
  ])(
    'a builder that %s: each ack answered exactly once with the default frame, plain events get rate_limit, the close comes',
    async (_what, builder) => {
      const app = await start('socket.io', {
        frameBuilder: builder as never,
        violations: { max: 4, windowMs: 60_000 },
      });
      const client = await connectIo(app.port);
      const acks = countAckPackets(client);
      const answers: unknown[] = [];
      for (const id of [1, 2, 3]) client.socket.emit('quick', { id }, (answer: unknown) => answers.push(answer));
      burstIo(client, ['quick', 'quick']);
      await client.disconnected(8_000);
      // The admitted one's { event } reply is emitted as that event (Nest), the refused ones acked.
      expect(client.of('ack')).toEqual([{ id: 1 }]);
      expect(answers).toHaveLength(2);
      expect(answers[0]).toMatchObject({ data: { code: 'TYPE_LIMIT', id: 2, warningCount: 1 } });
      expect(answers[1]).toMatchObject({ data: { code: 'TYPE_LIMIT', id: 3, warningCount: 2 } });
      expect([...acks.values()]).toEqual([1, 1]);
      expect(client.of('rate_limit')).toHaveLength(2);
      expect(client.of('rate_limit_disconnect')).toEqual([{ code: 1008, reason: 'Rate limit violations' }]);
      expect(frameWarnings(logs.lines())).toHaveLength(1);
    },
  );

  it('an unknown event over the global budget, with an ack, a builder that builds a cycle: answered once through the ack with the default frame', async () => {
    const app = await start('socket.io', { frameBuilder: cycle as never, global: { capacity: 1, refillRate: 0.001 } });
    const client = await connectIo(app.port);
    const acks = countAckPackets(client);
    client.socket.emit('nope', { id: 1 });
    const answer = await client.socket.timeout(5_000).emitWithAck('nope', { id: 2 });
    expect(answer).toMatchObject({
      event: 'rate_limit',
      data: { code: 'GLOBAL_LIMIT', messageType: 'unknown', id: 2 },
    });
    await sleep(100);
    expect([...acks.values()]).toEqual([1]);
    expect(frameWarnings(logs.lines())).toHaveLength(1);
  });

  it.each([
    ['throws', thrower],
    ['builds a cycle', cycle],
  ])(
    'a builder that %s, the refusal held behind a slower reply: its ack answered once with the default frame, after the reply, well within closeGraceMs',
    async (_what, builder) => {
      const app = await start('socket.io', { frameBuilder: builder as never, closeGraceMs: 4_000 });
      const client = await connectIo(app.port);
      const acks = countAckPackets(client);
      const order: string[] = [];
      client.socket.on('healthy', () => order.push('healthy'));
      const started = performance.now();
      client.socket.emit('slowHealth', { id: 1 });
      client.socket.emit('quick', { id: 2 });
      const answer = await client.socket.timeout(5_000).emitWithAck('quick', { id: 3 });
      order.push('refused');
      expect(answer).toMatchObject({ event: 'rate_limit', data: { code: 'TYPE_LIMIT', id: 3 } });
      expect(order).toEqual(['healthy', 'refused']);
      expect(performance.now() - started).toBeLessThan(2_000);
      await sleep(100);
      expect([...acks.values()]).toEqual([1]);
      expect(frameWarnings(logs.lines())).toHaveLength(1);
    },
  );

  it.each([
    ['undefined', () => undefined],
    ['a function', () => () => 1],
  ])(
    'a builder returning %s: the refused event carries the default frame (not null, not a function socket.io would take for an ack callback)',
    async (_what, builder) => {
      const app = await start('socket.io', { frameBuilder: builder as never });
      const client = await connectIo(app.port);
      burstIo(client, ['quick', 'quick']);
      await waitFor(() => client.of('rate_limit').length === 1, 5_000, 'the refusal');
      expect(client.of('rate_limit')[0]).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'quick' });
    },
  );

  it('a 2 MB frame through an ack, once, and the socket stays connected', async () => {
    const padding = 'x'.repeat(2_000_000);
    const app = await start('socket.io', {
      frameBuilder: (info) => ({ event: 'rate_limit', data: { ...info, padding } }),
    });
    const client = await connectIo(app.port);
    const acks = countAckPackets(client);
    client.socket.emit('quick', { id: 1 });
    const answer = (await client.socket.timeout(8_000).emitWithAck('quick', { id: 2 })) as {
      data: { padding: string };
    };
    expect(answer.data.padding).toHaveLength(2_000_000);
    await sleep(100);
    expect([...acks.values()]).toEqual([1]);
    expect(client.socket.connected).toBe(true);
  });
});

describe('skipped handlers (@SkipThrottle, skipIf)', () => {
  it.each([['ws'], ['socket.io']] as const)(
    '%s: after the close is decided, skipped messages of the same read are not processed; before it they are',
    async (transport) => {
      const app = await start(transport, { violations: { max: 2, windowMs: 60_000 } });
      // health and a skipIf'd maybe before the close (processed), then three quicks (admitted,
      // refused, refused: the close), then health and a skipIf'd maybe (not processed).
      const events = ['health', 'maybe', 'quick', 'quick', 'quick', 'health', 'maybe'];
      const data = events.map((event) => ({ id: nextId++, ...(event === 'maybe' ? { skip: true } : {}) }));
      let replies: (event: string) => unknown[];
      if (transport === 'ws') {
        const client = await connectWs(app.url);
        client.inOneWrite(() => events.forEach((event, i) => client.send(event, data[i])));
        expect((await client.waitClose(8_000)).code).toBe(1008);
        replies = (event) => client.events(event).map((f) => f.data);
      } else {
        const client = await connectIo(app.port);
        events.forEach((event, i) => client.socket.emit(event, data[i]));
        await client.disconnected(8_000);
        replies = (event) => client.of(event);
      }
      expect(replies('healthy')).toEqual([data[0]]);
      expect(replies('maybeAck')).toEqual([data[1]]);
      expect(replies('rate_limit')).toHaveLength(2);
    },
  );

  it("socket.io: an event no handler takes that skipIf skips, arriving after the close was decided (held behind a slow reply), does not reach the app's own listeners", async () => {
    customSeen.length = 0;
    const app = await start('socket.io', { violations: { max: 2, windowMs: 60_000 }, closeGraceMs: 4_000 });
    const client = await connectIo(app.port);
    client.socket.emit('custom', { id: 0, skip: true });
    await waitFor(() => customSeen.length === 1, 5_000, 'the first custom event');
    burstIo(client, ['slowHealth', 'quick', 'quick', 'quick']);
    client.socket.emit('custom', { id: 99, skip: true });
    client.socket.emit('custom', { id: 100 });
    await client.disconnected(8_000);
    expect(client.of('rate_limit')).toHaveLength(2);
    // Correct (README): events that arrive after the decision are not processed.
    expect(customSeen).toEqual([{ id: 0, skip: true }]);
  });

  it('ws: unknown and malformed frames skipIf skips, after the close was decided (held behind a slow reply), get no error frame', async () => {
    const app = await start('ws', { violations: { max: 2, windowMs: 60_000 }, closeGraceMs: 4_000 });
    const client = await connectWs(app.url);
    burstWs(client, ['nope'], { skip: true });
    await client.waitForEvent('error', 1, 5_000);
    client.inOneWrite(() => {
      for (const event of ['slowHealth', 'quick', 'quick', 'quick']) client.send(event, {});
      client.send('nope', { skip: true });
      client.sendRaw('{not json');
      client.send('health', { skip: true });
    });
    expect((await client.waitClose(8_000)).code).toBe(1008);
    expect(client.events('rate_limit')).toHaveLength(2);
    expect(client.events('error')).toHaveLength(1);
    expect(client.events('healthy')).toHaveLength(1);
  });

  it.each([['ws'], ['socket.io']] as const)(
    '%s: skipped handlers still run for a blocked client, a degraded one, and in shadow mode past the threshold',
    async (transport) => {
      const cases: Array<[string, WsRateLimitModuleOptions]> = [
        ['blocked', {}],
        ['degraded', { violations: { max: 2, windowMs: 60_000 }, degradeCooldownMs: 30_000 }],
        ['shadow', { violations: { max: 2, windowMs: 60_000 }, shadow: true }],
      ];
      for (const [what, options] of cases) {
        const app = await start(transport, options);
        const limiter = app.app.get(WsRateLimitService);
        const send = ['quick', 'quick', 'quick'];
        let healthy: () => number;
        let refusals: () => number;
        if (transport === 'ws') {
          const client = await connectWs(app.url);
          if (what === 'blocked') await limiter.block('127.0.0.1', 60_000);
          burstWs(client, send);
          await client.waitFor(() => true, 3, 5_000);
          burstWs(client, ['health', 'maybe'], { skip: true });
          healthy = () => client.events('healthy').length + client.events('maybeAck').length;
          refusals = () => client.events('rate_limit').length;
        } else {
          const client = await connectIo(app.port);
          if (what === 'blocked') await limiter.block('127.0.0.1', 60_000);
          burstIo(client, send);
          await waitFor(() => client.events.length >= 3, 5_000, 'answers');
          burstIo(client, ['health', 'maybe'], { skip: true });
          healthy = () => client.of('healthy').length + client.of('maybeAck').length;
          refusals = () => client.of('rate_limit').length;
        }
        await waitFor(() => healthy() === 2, 5_000, `${what}: the skipped handlers' replies`);
        if (what !== 'shadow') expect(refusals()).toBe(what === 'blocked' ? 3 : 2);
        if (what === 'shadow') expect(refusals()).toBe(0);
        if (what === 'blocked') await limiter.unblock('127.0.0.1');
      }
    },
    30_000,
  );
});

describe('a block wins over the allow list', () => {
  const userTracker = (_client: unknown, context: TrackerContext) =>
    context.request?.headers['x-user'] as string | undefined;

  it.each([
    ['the address allow list', { allowList: ['127.0.0.1'] }, '127.0.0.1'],
    ['the tracker-name allow list', { allowList: ['user-42'], tracker: userTracker }, 'user-42'],
  ] as const)('ws, %s: routed, unknown and malformed frames get BLOCKED', async (_what, options, target) => {
    const app = await start('ws', options as WsRateLimitModuleOptions);
    const client = await connectWs(app.url, { 'x-user': 'user-42' });
    burstWs(client, ['quick', 'quick']);
    await client.waitForEvent('ack', 2, 5_000);
    await app.app.get(WsRateLimitService).block(target, 60_000);
    burstWs(client, ['quick', 'nope']);
    client.sendRaw('{not json');
    const refused = await client.waitForEvent('rate_limit', 3, 5_000);
    expect(refused.map((f) => [f.data.code, f.data.messageType])).toEqual([
      ['BLOCKED', 'quick'],
      ['BLOCKED', 'unknown'],
      ['BLOCKED', 'invalid'],
    ]);
    // Unblocked, the allow list holds again: nothing limited.
    await app.app.get(WsRateLimitService).unblock(target);
    burstWs(client, ['quick', 'quick']);
    await client.waitForEvent('ack', 4, 5_000);
  });

  it('socket.io, the address allow list: an unknown event and a routed one with an ack get BLOCKED', async () => {
    const app = await start('socket.io', { allowList: ['127.0.0.1'] });
    const client = await connectIo(app.port);
    await app.app.get(WsRateLimitService).block('127.0.0.1', 60_000);
    client.socket.emit('nope', { id: 1 });
    const answer = await client.socket.timeout(5_000).emitWithAck('quick', { id: 2 });
    expect(answer).toMatchObject({ event: 'rate_limit', data: { code: 'BLOCKED', id: 2 } });
    await waitFor(() => client.of('rate_limit').length === 1, 5_000, 'the unknown event refused');
    expect(client.of('rate_limit')[0]).toMatchObject({ code: 'BLOCKED', messageType: 'unknown' });
  });

  it('ws, a denied tracker that sends only @SkipThrottle messages: they run, and its first decided message closes it 1008 (README: deny lists act on the messages the limiter decides)', async () => {
    const app = await start('ws', { denyList: ['user-13'], tracker: userTracker });
    const client = await connectWs(app.url, { 'x-user': 'user-13' });
    burstWs(client, ['health', 'health']);
    await client.waitForEvent('healthy', 2);
    expect(client.socket.readyState).toBe(WebSocket.OPEN);
    burstWs(client, ['quick']);
    expect((await client.waitClose(5_000)).code).toBe(1008);
  });
});
