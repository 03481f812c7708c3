/**
 * Operator features end to end, from an adversarial review (README "Operating it" and
 * "WsRateLimitService"), on both transports, memory store: plans changed while a connection
 * is open, shadow mode past the frame hold, degradation, allow and deny lists, blocks from
 * code, and the figures (metrics, events$) against what the clients saw.
 *
 * Failed before (fixed with this file): a connection upgraded to a premium plan after
 * draining its free chat bucket was refused for seconds (the free plan's debt, a time, read
 * at premium's faster refill; a plan's bucket of other figures now has its own key); the
 * DEGRADED frame's retryAfter was the cooldown even where the refused type needed longer;
 * an allow-listed address an operator blocked was refused new connections but its open ones
 * were served (the block is now checked first, as at the upgrade); a premium connection's
 * unknown events were decided under the module's global figures (now its plan's).
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import {
  ConnectedSocket,
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  type OnGatewayConnection,
} from '@nestjs/websockets';
import { Registry } from 'prom-client';
import WebSocket from 'ws';
import {
  SkipThrottle,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { upgrade } from '../../support/http.js';
import { connectIo, type IoTestClient } from '../../support/io-client.js';
import { metricSum } from '../../support/metrics.js';
import { settle, sleep, TestClient } from '../../support/ws-client.js';

/** Chat (4 burst, 1/s), a slow type (2 burst, one per 10 s), an essential receipt, a login. */
@WebSocketGateway()
@WsRateLimit()
class OperatorGateway implements OnGatewayConnection {
  handleConnection(client: { emit?: (event: string) => void }): void {
    // socket.io: tell the test the gateway has the socket (ws: nothing to say).
    if (typeof client.emit === 'function' && !(client instanceof WebSocket)) client.emit('ready');
  }

  @Throttle({ type: 'chat', capacity: 4, refillRate: 1 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'slow', capacity: 2, refillRate: 0.1 })
  @SubscribeMessage('slow')
  slow(@MessageBody() data: unknown) {
    return { event: 'slowAck', data };
  }

  @Throttle({ type: 'receipt', capacity: 50, refillRate: 50, essential: true })
  @SubscribeMessage('receipt')
  receipt(@MessageBody() data: unknown) {
    return { event: 'receipt', data };
  }

  constructor(private readonly limiter: WsRateLimitService) {}

  /** An auth step after the connection opened: the socket becomes premium. */
  @SkipThrottle()
  @SubscribeMessage('login')
  login(@ConnectedSocket() client: { premium?: boolean }, @MessageBody() data: unknown) {
    client.premium = true;
    return { event: 'premium', data };
  }

  @SkipThrottle()
  @SubscribeMessage('logout')
  logout(@ConnectedSocket() client: { premium?: boolean }) {
    client.premium = false;
    return { event: 'free', data: {} };
  }

  /** The socket's own plan and chat capacity, as status() reads them. */
  @SkipThrottle()
  @SubscribeMessage('status')
  async status(@ConnectedSocket() client: object) {
    const status = await this.limiter.status(client);
    return { event: 'status', data: { plan: status.plan, capacity: status.types.chat?.capacity } };
  }
}

/** Plans whose resolver reads what the login handler put on the socket. */
const PLANS: WsRateLimitModuleOptions = {
  plans: {
    free: { types: { chat: { capacity: 4, refillRate: 0.5 } } },
    premium: { types: { chat: { capacity: 100, refillRate: 50 } } },
  },
  planResolver: (client) => ((client as { premium?: boolean }).premium ? 'premium' : 'free'),
};

const count = (events: RateLimitEvent[], test: (event: RateLimitEvent) => boolean): number =>
  events.filter(test).length;

describe('operator features, edges (review)', () => {
  const apps: RunningApp[] = [];
  const clients: TestClient[] = [];
  const ios: IoTestClient[] = [];

  const startWs = async (options: WsRateLimitModuleOptions) => {
    const running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false, ...options })],
        providers: [OperatorGateway],
      },
      (app: INestApplication) => new WsRateLimitAdapter(app),
    );
    apps.push(running);
    return { running, limiter: running.app.get(WsRateLimitService) };
  };
  const startIo = async (options: WsRateLimitModuleOptions) => {
    const running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false, ...options })],
        providers: [OperatorGateway],
      },
      (app: INestApplication) => new WsRateLimitIoAdapter(app),
    );
    apps.push(running);
    return { running, limiter: running.app.get(WsRateLimitService) };
  };
  const connectWs = async (running: RunningApp, headers: Record<string, string> = {}, localAddress?: string) => {
    const client = await TestClient.connect(running.url, { headers, ...(localAddress ? { localAddress } : {}) });
    clients.push(client);
    return client;
  };
  const connectSio = async (running: RunningApp, options: Record<string, unknown> = {}) => {
    const client = await connectIo(`http://127.0.0.1:${running.port}`, 'websocket', options);
    ios.push(client);
    // The gateway has the socket once it says so (events before that reach no handler).
    await client.until(() => client.of('ready').length === 1, 10_000, 'ready');
    return client;
  };

  afterEach(async () => {
    for (const client of ios.splice(0)) await client.closeAndSettle().catch(() => undefined);
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (const running of apps.splice(0)) await running.close();
  });

  // --- Plans ------------------------------------------------------------------------------

  describe('a plan assigned while the connection is open', () => {
    it('ws: a connection upgraded to premium after draining its free chat bucket is served at least as well as one that stayed free', async () => {
      const { running } = await startWs(PLANS);
      const upgraded = await connectWs(running);
      const stayed = await connectWs(running);
      for (const client of [upgraded, stayed]) for (let i = 0; i < 4; i++) client.send('chat', i);
      await Promise.all([upgraded.waitForEvent('ack', 4), stayed.waitForEvent('ack', 4)]);
      upgraded.send('login', 1);
      await upgraded.waitForEvent('premium');
      // Free refills one chat every 2 s: 2.3 s after draining, a free client has a token.
      await sleep(2300);
      upgraded.send('chat', 'after login');
      stayed.send('chat', 'still free');
      await stayed.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 5);
      await upgraded.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 5);
      // The free client is served: its plan refilled a token.
      expect(stayed.events('ack')).toHaveLength(5);
      // The premium one (capacity 100, 50/s) must be served at least as well.
      expect(upgraded.events('rate_limit').map((frame) => frame.data)).toEqual([]);
      expect(upgraded.events('ack')).toHaveLength(5);
    }, 20_000);

    it('socket.io: a socket upgraded to premium after draining its free chat bucket is served at least as well as one that stayed free', async () => {
      const { running } = await startIo(PLANS);
      const upgraded = await connectSio(running);
      const stayed = await connectSio(running);
      for (const client of [upgraded, stayed]) for (let i = 0; i < 4; i++) client.socket.emit('chat', i);
      await upgraded.until(() => upgraded.of('ack').length === 4);
      await stayed.until(() => stayed.of('ack').length === 4);
      upgraded.socket.emit('login', 1);
      await upgraded.until(() => upgraded.of('premium').length === 1);
      await sleep(2300);
      upgraded.socket.emit('chat', 'after login');
      stayed.socket.emit('chat', 'still free');
      const answers = (client: IoTestClient) => client.of('ack').length + client.of('rate_limit').length;
      await stayed.until(() => answers(stayed) === 5);
      await upgraded.until(() => answers(upgraded) === 5);
      expect(stayed.of('ack')).toHaveLength(5);
      expect(upgraded.of('rate_limit')).toEqual([]);
      expect(upgraded.of('ack')).toHaveLength(5);
    }, 20_000);

    it('ws: a connection downgraded mid-flood gets no more than the lower plan allows, and status() follows its plan', async () => {
      const { running } = await startWs({ ...PLANS, violations: { max: 1000, windowMs: 60_000 } });
      const client = await connectWs(running);
      client.send('login', 1);
      await client.waitForEvent('premium');
      client.send('status');
      const [premium] = await client.waitForEvent('status');
      expect(premium!.data).toEqual({ plan: 'premium', capacity: 100 });
      for (let i = 0; i < 10; i++) client.send('chat', i);
      await client.waitForEvent('ack', 10);
      client.send('logout');
      await client.waitForEvent('free');
      client.send('status');
      const [, free] = await client.waitForEvent('status', 2);
      expect(free!.data.plan).toBe('free');
      expect(free!.data.capacity).toBe(4);
      client.inOneWrite(() => {
        for (let i = 10; i < 30; i++) client.send('chat', i);
      });
      await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 30);
      // The free plan holds at most 4 chats, whatever the premium bucket had left.
      expect(client.events('ack').length - 10).toBeLessThanOrEqual(4);
      expect(client.events('rate_limit')[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', limit: 4 });
    });
  });

  // --- Shadow mode ------------------------------------------------------------------------

  describe('shadow mode past the frame hold', () => {
    it('ws: 100 chats in one TCP write are all answered, nothing refused or closed, and every would-be refusal is counted', async () => {
      const registry = new Registry();
      const { running, limiter } = await startWs({ shadow: true, metrics: true, metricsRegistry: registry });
      const events: RateLimitEvent[] = [];
      const subscription = limiter.events$.subscribe((event) => events.push(event));
      const client = await connectWs(running);
      client.inOneWrite(() => {
        for (let i = 0; i < 100; i++) client.send('chat', i);
      });
      await client.waitForEvent('ack', 100);
      await sleep(100);
      subscription.unsubscribe();
      expect(client.events('rate_limit')).toHaveLength(0);
      expect(client.socket.readyState).toBe(WebSocket.OPEN);
      expect(client.events('ack').map((frame) => frame.data)).toEqual(Array.from({ length: 100 }, (_, i) => i));
      expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'allowed' })).toBe(4);
      expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'shadow_rejected' })).toBe(96);
      expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' })).toBe(0);
      expect(await metricSum(registry, 'ws_rate_limit_violations_total')).toBe(96);
      // 96 violations, 10 to a would-be close: 9 closes that did not happen.
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'shadow_violations' })).toBe(9);
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'violations' })).toBe(0);
      expect(count(events, (e) => e.kind === 'decision' && !e.allowed && !e.enforced)).toBe(96);
      expect(count(events, (e) => e.kind === 'violation' && !e.enforced)).toBe(96);
      expect(count(events, (e) => e.kind === 'disconnect' && !e.enforced)).toBe(9);
      expect(count(events, (e) => e.kind === 'disconnect' && e.enforced)).toBe(0);
    });

    it('socket.io: 100 chats emitted at once are all answered, nothing refused or closed, and every would-be refusal is counted', async () => {
      const registry = new Registry();
      const { running, limiter } = await startIo({ shadow: true, metrics: true, metricsRegistry: registry });
      const events: RateLimitEvent[] = [];
      const subscription = limiter.events$.subscribe((event) => events.push(event));
      const client = await connectSio(running);
      for (let i = 0; i < 100; i++) client.socket.emit('chat', i);
      await client.until(() => client.of('ack').length === 100, 10_000, '100 acks');
      await sleep(100);
      subscription.unsubscribe();
      expect(client.of('rate_limit')).toHaveLength(0);
      expect(client.socket.connected).toBe(true);
      expect(client.of('ack')).toEqual(Array.from({ length: 100 }, (_, i) => i));
      expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'shadow_rejected' })).toBe(96);
      expect(await metricSum(registry, 'ws_rate_limit_violations_total')).toBe(96);
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'shadow_violations' })).toBe(9);
      expect(count(events, (e) => e.kind === 'decision' && !e.allowed && !e.enforced)).toBe(96);
    });
  });

  // --- Degradation ------------------------------------------------------------------------

  describe('graceful degradation', () => {
    it("ws: the DEGRADED frame's retryAfter covers the refused type's own wait when longer than the cooldown, so retrying after it succeeds", async () => {
      const { running } = await startWs({ degradeCooldownMs: 1000, violations: { max: 2, windowMs: 60_000 } });
      const client = await connectWs(running);
      // 2 slow admitted, the 3rd refused (TYPE_LIMIT), the 4th reaches the threshold: DEGRADED.
      for (let i = 0; i < 4; i++) client.send('slow', i);
      const frames = await client.waitForEvent('rate_limit', 2);
      expect(frames.map((frame) => frame.data.code)).toEqual(['TYPE_LIMIT', 'DEGRADED']);
      const { retryAfter } = frames[1]!.data as { retryAfter: number };
      // README: "sending it again after that long succeeds if nothing else was sent".
      await sleep(retryAfter + 300);
      client.send('slow', 'retry');
      await client.waitFor((frame) => frame.event === 'slowAck' || frame.event === 'rate_limit', 5);
      expect(
        client
          .events('rate_limit')
          .slice(2)
          .map((frame) => frame.data),
      ).toEqual([]);
      expect(client.events('slowAck')).toHaveLength(3);
    }, 15_000);

    it('socket.io: while degraded, an essential event passes, others (routed or not) get DEGRADED, through the ack when asked', async () => {
      const { running } = await startIo({ degradeCooldownMs: 60_000, violations: { max: 3, windowMs: 60_000 } });
      const client = await connectSio(running);
      // 4 admitted, 2 refused, the 7th reaches the threshold: degraded.
      for (let i = 0; i < 7; i++) client.socket.emit('chat', i);
      await client.until(() => client.of('ack').length + client.of('rate_limit').length === 7);
      expect((client.of('rate_limit') as Array<{ code: string }>).map((info) => info.code)).toEqual([
        'TYPE_LIMIT',
        'TYPE_LIMIT',
        'DEGRADED',
      ]);
      client.socket.emit('receipt', 1);
      await client.until(() => client.of('receipt').length === 1);
      const acked = (await client.socket.timeout(5000).emitWithAck('chat', { id: 7 })) as {
        event: string;
        data: { code: string; id: number };
      };
      expect(acked).toMatchObject({ event: 'rate_limit', data: { code: 'DEGRADED', id: 7 } });
      client.socket.emit('nobody-handles-this', { id: 8 });
      await client.until(() => client.of('rate_limit').length === 4);
      expect(client.of('rate_limit')[3]).toMatchObject({ code: 'DEGRADED', messageType: 'unknown', id: 8 });
      // The third violation while degraded reaches the threshold again: disconnected.
      client.socket.emit('chat', 9);
      await client.disconnected();
      expect(client.of('rate_limit_disconnect')).toEqual([{ code: 1008, reason: 'Rate limit violations' }]);
      expect(client.of('ack')).toHaveLength(4);
    });
  });

  // --- Allow and deny lists ---------------------------------------------------------------

  describe('allow and deny lists', () => {
    it('ws: an allowed address is never limited at the upgrade (rate and cap) nor for unrouted frames', async () => {
      const registry = new Registry();
      const { running } = await startWs({
        allowList: '127.0.0.3',
        maxConnectionsPerIp: 2,
        metrics: true,
        metricsRegistry: registry,
      });
      const allowed: TestClient[] = [];
      for (let i = 0; i < 8; i++) allowed.push(await connectWs(running, {}, '127.0.0.3'));
      expect(allowed.every((client) => client.socket.readyState === WebSocket.OPEN)).toBe(true);
      const [first] = allowed;
      first!.inOneWrite(() => {
        for (let i = 0; i < 150; i++) first!.sendRaw('not json');
      });
      await first!.waitForEvent('error', 150);
      expect(first!.events('rate_limit')).toHaveLength(0);
      // Another address is limited as usual: its third open connection is refused.
      await connectWs(running, {}, '127.0.0.4');
      await connectWs(running, {}, '127.0.0.4');
      expect((await upgrade(running.port, {}, '127.0.0.4')).status).toBe(429);
      expect(await metricSum(registry, 'ws_rate_limit_connections_total', { result: 'accepted' })).toBe(10);
      expect(await metricSum(registry, 'ws_rate_limit_connections_total', { result: 'refused' })).toBe(1);
    });

    it('ws: a denied address gets 403 without Retry-After, or with connectionRefusal close a 1008 "Denied", and is counted', async () => {
      const registry = new Registry();
      const { running, limiter } = await startWs({
        denyList: '127.0.0.0/29',
        metrics: true,
        metricsRegistry: registry,
      });
      const events: RateLimitEvent[] = [];
      const subscription = limiter.events$.subscribe((event) => events.push(event));
      const answer = await upgrade(running.port, {}, '127.0.0.5');
      expect(answer.status).toBe(403);
      expect(answer.headers['retry-after']).toBeUndefined();
      const other = await connectWs(running, {}, '127.0.0.9');
      other.send('chat', 1);
      await other.waitForEvent('ack');
      subscription.unsubscribe();
      expect(await metricSum(registry, 'ws_rate_limit_connections_total', { reason: 'denied' })).toBe(1);
      expect(count(events, (e) => e.kind === 'connection' && !e.accepted && e.reason === 'denied')).toBe(1);
      const closing = await startWs({ denyList: '127.0.0.5', connectionRefusal: 'close' });
      const refused = await TestClient.connect(closing.running.url, { localAddress: '127.0.0.5' });
      clients.push(refused);
      expect(await refused.waitClose()).toEqual({ code: 1008, reason: 'Denied' });
    });
    it('ws: a denied tracker flooding in one write is closed 1008 "Denied" at its first frame (unrouted too), nothing else processed or answered', async () => {
      const registry = new Registry();
      const { running, limiter } = await startWs({
        tracker: (_client, { request }) => request?.headers['x-user'] as string | undefined,
        denyList: 'mallory',
        metrics: true,
        metricsRegistry: registry,
      });
      const events: RateLimitEvent[] = [];
      const subscription = limiter.events$.subscribe((event) => events.push(event));
      const mallory = await connectWs(running, { 'x-user': 'mallory' });
      mallory.inOneWrite(() => {
        mallory.send('nobody-handles-this', 0);
        for (let i = 0; i < 80; i++) mallory.send('chat', i);
      });
      expect(await mallory.waitClose()).toEqual({ code: 1008, reason: 'Denied' });
      await settle(() => limiter.stats().connections === 0);
      subscription.unsubscribe();
      expect(mallory.frames).toEqual([]);
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'denied' })).toBe(1);
      expect(await metricSum(registry, 'ws_rate_limit_violations_total')).toBe(0);
      expect(count(events, (e) => e.kind === 'disconnect' && e.enforced && e.reason === 'Denied')).toBe(1);
    });
  });

  // --- Blocking from code -----------------------------------------------------------------

  describe('blocking from code', () => {
    it('ws: an allow-listed address an operator blocks gets 403 at the handshake and BLOCKED frames on its open connection', async () => {
      const { running, limiter } = await startWs({ allowList: '127.0.0.3' });
      const client = await connectWs(running, {}, '127.0.0.3');
      client.send('chat', 1);
      await client.waitForEvent('ack');
      await limiter.block('127.0.0.3', 60_000);
      // At the handshake the block wins over the allow list...
      expect((await upgrade(running.port, {}, '127.0.0.3')).status).toBe(403);
      // ...and README: "an address: 403 at the handshake, BLOCKED frames on open sockets".
      client.send('chat', 2);
      await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 2);
      expect(client.events('rate_limit').map((frame) => frame.data.code)).toEqual(['BLOCKED']);
      expect(client.events('ack')).toHaveLength(1);
    });

    it('socket.io: an allow-listed address an operator blocks is refused a new session and its open socket gets BLOCKED', async () => {
      const { running, limiter } = await startIo({ allowList: '127.0.0.3' });
      const client = await connectSio(running, { localAddress: '127.0.0.3' });
      client.socket.emit('chat', 1);
      await client.until(() => client.of('ack').length === 1);
      await limiter.block('127.0.0.3', 60_000);
      const refused = await connectIo(`http://127.0.0.1:${running.port}`, 'websocket', {
        localAddress: '127.0.0.3',
      }).then(
        (extra) => {
          ios.push(extra);
          return false;
        },
        () => true,
      );
      expect(refused).toBe(true);
      client.socket.emit('chat', 2);
      await client.until(() => client.of('ack').length + client.of('rate_limit').length === 2);
      expect(client.of('rate_limit')).toMatchObject([{ code: 'BLOCKED' }]);
    });

    it('ws: a timed block expires by itself: BLOCKED with the time left, then served, and new handshakes upgraded again', async () => {
      const { running, limiter } = await startWs({});
      const client = await connectWs(running);
      await limiter.block('127.0.0.1', 1500);
      const refused = await upgrade(running.port);
      expect(refused.status).toBe(403);
      expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect(Number(refused.headers['retry-after'])).toBeLessThanOrEqual(2);
      client.send('chat', 1);
      const [frame] = await client.waitForEvent('rate_limit');
      expect(frame!.data.code).toBe('BLOCKED');
      expect(frame!.data.retryAfter).toBeGreaterThan(0);
      expect(frame!.data.retryAfter).toBeLessThanOrEqual(1500);
      await sleep(frame!.data.retryAfter + 50);
      client.send('chat', 2);
      await client.waitForEvent('ack');
      expect(limiter.listBlocks()).toEqual({});
      expect((await upgrade(running.port)).status).toBe(101);
    });

    it('ws: blocking a tracker name restricts every open connection of that user only, lets them connect, and unblock restores them', async () => {
      const { running, limiter } = await startWs({
        tracker: (_client, { request }) => request?.headers['x-user'] as string | undefined,
      });
      const a = await connectWs(running, { 'x-user': 'user-42' });
      const b = await connectWs(running, { 'x-user': 'user-42' });
      const other = await connectWs(running, { 'x-user': 'user-7' });
      await limiter.block('user-42', 60_000);
      expect(limiter.listBlocks()).toHaveProperty(['key:user-42']);
      // The tracker is not known at the upgrade: a third connection of user-42 opens...
      const c = await connectWs(running, { 'x-user': 'user-42' });
      for (const client of [a, b, c, other]) client.send('chat', 1);
      for (const client of [a, b, c]) {
        const [frame] = await client.waitForEvent('rate_limit');
        expect(frame!.data).toMatchObject({ code: 'BLOCKED', messageType: 'chat' });
      }
      await other.waitForEvent('ack');
      await limiter.unblock('user-42');
      for (const client of [a, b, c]) client.send('chat', 2);
      await Promise.all([a, b, c].map((client) => client.waitForEvent('ack')));
    });

    it('ws: a blocked connection flooding in one write gets one BLOCKED frame per violation up to the threshold, then 1008; figures agree', async () => {
      const registry = new Registry();
      const { running, limiter } = await startWs({ metrics: true, metricsRegistry: registry });
      const events: RateLimitEvent[] = [];
      const subscription = limiter.events$.subscribe((event) => events.push(event));
      const client = await connectWs(running);
      await limiter.block('127.0.0.1', 60_000);
      client.inOneWrite(() => {
        for (let i = 0; i < 80; i++) client.send('chat', i);
      });
      expect((await client.waitClose()).code).toBe(1008);
      await settle(() => limiter.stats().connections === 0);
      subscription.unsubscribe();
      const frames = client.events('rate_limit');
      expect(frames.map((frame) => frame.data.code)).toEqual(Array(10).fill('BLOCKED'));
      expect(frames.map((frame) => frame.data.warningCount)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
      expect(client.events('ack')).toHaveLength(0);
      expect(await metricSum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected', code: 'BLOCKED' })).toBe(
        10,
      );
      expect(await metricSum(registry, 'ws_rate_limit_violations_total', { code: 'BLOCKED' })).toBe(10);
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'violations' })).toBe(1);
      expect(count(events, (e) => e.kind === 'decision' && !e.allowed)).toBe(10);
      expect(count(events, (e) => e.kind === 'disconnect' && e.enforced)).toBe(1);
    });
  });

  // --- Plans and the unrouted path --------------------------------------------------------

  describe("a plan's global budget and frames no handler takes", () => {
    it("ws: a premium connection's unknown event is charged to its plan's global budget (500), not refused under the module's (100)", async () => {
      const { running } = await startWs({
        plans: {
          premium: {
            global: { capacity: 500, refillRate: 10 },
            types: { chat: { capacity: 1000, refillRate: 1000 } },
          },
        },
        planResolver: () => 'premium',
        violations: { max: 1000, windowMs: 60_000 },
      });
      const client = await connectWs(running);
      client.inOneWrite(() => {
        for (let i = 0; i < 300; i++) client.send('chat', i);
      });
      await client.waitForEvent('ack', 300);
      // 300 of its 500 global tokens spent: 200 left. An event no handler takes is charged
      // to "the tracker's global budget", and answered with an UNKNOWN_EVENT error frame.
      client.send('nobody-handles-this', { n: 1 });
      await client.waitFor((frame) => frame.event === 'error' || frame.event === 'rate_limit');
      expect(client.events('rate_limit').map((frame) => frame.data)).toEqual([]);
      expect(client.events('error').map((frame) => frame.data)).toEqual([{ code: 'UNKNOWN_EVENT' }]);
    });

    it("socket.io: a premium socket's event for the app's own listeners is charged to its plan's global budget (500) and passed on", async () => {
      const { running } = await startIo({
        plans: {
          premium: {
            global: { capacity: 500, refillRate: 10 },
            types: { chat: { capacity: 1000, refillRate: 1000 } },
          },
        },
        planResolver: () => 'premium',
        violations: { max: 1000, windowMs: 60_000 },
      });
      const client = await connectSio(running);
      for (let i = 0; i < 300; i++) client.socket.emit('chat', i);
      await client.until(() => client.of('ack').length === 300, 10_000, '300 acks');
      // Within the budget it passes on to the app's listeners without an answer: the ack
      // times out; over it, a rate_limit answer comes through the ack.
      const answer = await client.socket
        .timeout(1500)
        .emitWithAck('app-event', { id: 1 })
        .then(
          (reply: unknown) => reply,
          () => 'passed on',
        );
      expect(answer).toBe('passed on');
    });
  });
});
