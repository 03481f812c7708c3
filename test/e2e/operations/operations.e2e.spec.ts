import { afterEach, describe, expect, it } from '@jest/globals';
import { Registry } from 'prom-client';
import {
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { upgrade } from '../../support/http.js';
import { sleep, TestClient } from '../../support/ws-client.js';
import { OperationsGateway } from './operations.gateway.js';

const answered = (frame: { event?: string }) => frame.event === 'ack' || frame.event === 'rate_limit';

/** One sample's value from the registry's text exposition. */
async function sample(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const metric = (await registry.getMetricsAsJSON()).find((entry) => entry.name === name);
  const values = (metric?.values ?? []) as Array<{ value: number; labels: Record<string, string | number> }>;
  const match = values.find((value) =>
    Object.entries(labels).every(([key, want]) => String(value.labels[key]) === want),
  );
  return match?.value ?? 0;
}

describe('operations', () => {
  let running: RunningApp | undefined;
  let limiter: WsRateLimitService;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions) => {
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })], providers: [OperationsGateway] },
      (app) => new WsRateLimitAdapter(app),
    );
    limiter = running.app.get(WsRateLimitService);
    return running;
  };
  const connect = async (headers: Record<string, string> = {}, localAddress?: string) => {
    const client = await TestClient.connect(running!.url, { headers, ...(localAddress ? { localAddress } : {}) });
    clients.push(client);
    return client;
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  describe('metrics', () => {
    it('counts decisions, violations, connections and open connections exactly', async () => {
      const registry = new Registry();
      await start({ metricsRegistry: registry, metricsPrefix: 'test_' });
      const client = await connect();
      for (let i = 0; i < 8; i++) client.send('chat', i);
      await client.waitFor(answered, 8);
      expect(await sample(registry, 'test_decisions_total', { result: 'allowed', type: 'chat' })).toBe(5);
      expect(
        await sample(registry, 'test_decisions_total', {
          result: 'rejected',
          tier: 'type',
          code: 'TYPE_LIMIT',
          type: 'chat',
        }),
      ).toBe(3);
      expect(await sample(registry, 'test_violations_total', { code: 'TYPE_LIMIT', type: 'chat' })).toBe(3);
      // Only the 5th message left the chat bucket below 20% (0 tokens of 5; the 4th left 1).
      expect(await sample(registry, 'test_near_limit_total', { tier: 'type', type: 'chat' })).toBe(1);
      expect(await sample(registry, 'test_connections_total', { result: 'accepted' })).toBe(1);
      expect(await sample(registry, 'test_open_connections')).toBe(1);
      const text = await registry.metrics();
      expect(text).toContain('# TYPE test_decisions_total counter');
      expect(text).toContain('# TYPE test_store_decision_seconds histogram');
    });

    it('works without metrics, and when turned off', async () => {
      await start({ metrics: false });
      const client = await connect();
      client.send('chat', 1);
      await client.waitForEvent('ack');
    });
  });

  describe('plans', () => {
    it('gives each plan its own limits, picked from the handshake', async () => {
      await start({
        plans: {
          free: { types: { chat: { capacity: 2, refillRate: 0.1 } } },
          premium: { types: { chat: { capacity: 8, refillRate: 0.1 } }, global: { capacity: 500, refillRate: 100 } },
        },
        planResolver: (_client, { request }) => (request?.headers['x-plan'] as string | undefined) ?? 'free',
      });
      const free = await connect();
      const premium = await connect({ 'x-plan': 'premium' });
      const unknown = await connect({ 'x-plan': 'platinum' });
      for (const client of [free, premium, unknown]) for (let i = 0; i < 10; i++) client.send('chat', i);
      await Promise.all([free, premium, unknown].map((client) => client.waitFor(answered, 10)));
      expect(free.events('ack')).toHaveLength(2);
      expect(premium.events('ack')).toHaveLength(8);
      // A plan name that does not exist means the module's own limits (the decorator's 5).
      expect(unknown.events('ack')).toHaveLength(5);
      expect(premium.events('rate_limit')[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', limit: 8 });
    });
  });

  describe('shadow mode', () => {
    it('delivers the whole flood while metrics and the stream show what would have been rejected', async () => {
      const registry = new Registry();
      await start({ shadow: true, metricsRegistry: registry, violations: { max: 3, windowMs: 60_000 } });
      const events: RateLimitEvent[] = [];
      const subscription = limiter.events$.subscribe((event) => events.push(event));
      const client = await connect();
      for (let i = 0; i < 12; i++) client.send('chat', i);
      await client.waitForEvent('ack', 12);
      subscription.unsubscribe();
      expect(client.events('rate_limit')).toHaveLength(0);
      expect(client.socket.readyState).toBe(client.socket.OPEN);
      const decisions = events.filter((event) => event.kind === 'decision');
      expect(decisions.filter((event) => !event.allowed)).toHaveLength(7);
      expect(decisions.filter((event) => !event.allowed).every((event) => !event.enforced)).toBe(true);
      // 7 violations with a threshold of 3: two closes that did not happen.
      expect(events.filter((event) => event.kind === 'disconnect' && !event.enforced)).toHaveLength(2);
      expect(await sample(registry, 'ws_rate_limit_decisions_total', { result: 'shadow_rejected', type: 'chat' })).toBe(
        7,
      );
    });
  });

  describe('graceful degradation', () => {
    it('restricts a repeat offender to essential types for a cooldown, then restores it', async () => {
      await start({ degradeCooldownMs: 1500, violations: { max: 2, windowMs: 60_000 } });
      const client = await connect();
      for (let i = 0; i < 7; i++) client.send('chat', i);
      await client.waitFor(answered, 7);
      const frames = client.events('rate_limit');
      expect(frames.map((frame) => frame.data.code)).toEqual(['TYPE_LIMIT', 'DEGRADED']);
      // The cooldown, or the wait of the tier that refused when longer (chat: 10 s a token).
      expect(frames[1]!.data.retryAfter).toBeGreaterThan(8000);
      expect(frames[1]!.data.retryAfter).toBeLessThanOrEqual(10_000);
      expect(client.socket.readyState).toBe(client.socket.OPEN);
      // Degraded: essential receipts pass, chat does not (and each try is a violation).
      client.send('receipt', 1);
      await client.waitForEvent('receipt');
      client.send('chat', 'while degraded');
      const [, , third] = await client.waitForEvent('rate_limit', 3);
      expect(third!.data).toMatchObject({ code: 'DEGRADED', messageType: 'chat' });
      expect(third!.data.retryAfter).toBeLessThanOrEqual(1500);
      await sleep(1600);
      client.send('receipt', 2);
      await client.waitForEvent('receipt', 2);
      expect(client.socket.readyState).toBe(client.socket.OPEN);
    });

    it('still closes with 1008 when the abuse goes on while degraded', async () => {
      await start({ degradeCooldownMs: 60_000, violations: { max: 2, windowMs: 60_000 } });
      const client = await connect();
      for (let i = 0; i < 20; i++) client.send('chat', i);
      expect((await client.waitClose()).code).toBe(1008);
      // The burst's later messages were decided before the degradation began, so they count
      // as ordinary violations in the new window: two of them close the socket.
      const codes = client.events('rate_limit').map((frame) => frame.data.code);
      expect(codes.slice(0, 2)).toEqual(['TYPE_LIMIT', 'DEGRADED']);
      expect(codes).toHaveLength(4);
    });
  });

  describe('allow and deny lists', () => {
    it('refuses a denied address at the handshake and lets an allowed one skip every limit', async () => {
      const { port } = await start({ denyList: '127.0.0.2', allowList: ['127.0.0.3'] });
      const denied = await upgradeFrom(port, '127.0.0.2');
      expect(denied).toBe(403);
      const allowed = await connect({}, '127.0.0.3');
      for (let i = 0; i < 20; i++) allowed.send('chat', i);
      await allowed.waitForEvent('ack', 20);
      const ordinary = await connect();
      for (let i = 0; i < 6; i++) ordinary.send('chat', i);
      await ordinary.waitForEvent('rate_limit');
    });

    it('closes the connections of a denied tracker and frees an allowed one', async () => {
      await start({
        // The user comes from the handshake here; an auth step would put it on the socket.
        tracker: (_client, { request }) => request?.headers['x-user'] as string | undefined,
        denyList: 'mallory',
        allowList: 'admin',
      });
      const mallory = await connect({ 'x-user': 'mallory' });
      const admin = await connect({ 'x-user': 'admin' });
      mallory.send('chat', 1);
      expect(await mallory.waitClose()).toEqual({ code: 1008, reason: 'Denied' });
      for (let i = 0; i < 20; i++) admin.send('chat', i);
      await admin.waitForEvent('ack', 20);
    });
  });

  describe('blocks', () => {
    it('blocks an address for a while: new handshakes get 403, open connections BLOCKED frames', async () => {
      const { port } = await start({});
      const client = await connect();
      client.send('chat', 1);
      await client.waitForEvent('ack');
      await limiter.block('127.0.0.1', 60_000);
      expect(Object.keys(limiter.listBlocks())).toEqual(['ip:127.0.0.1']);
      expect(await upgradeFrom(port, '127.0.0.1')).toBe(403);
      client.send('chat', 2);
      const [frame] = await client.waitForEvent('rate_limit');
      expect(frame!.data.code).toBe('BLOCKED');
      expect(frame!.data.retryAfter).toBeGreaterThan(55_000);
      await limiter.unblock('127.0.0.1');
      client.send('chat', 3);
      await client.waitForEvent('ack', 2);
      expect(await upgradeFrom(port, '127.0.0.1')).toBe(101);
    });
  });
});

/** The status of an upgrade from a given loopback source address. */
function upgradeFrom(port: number, localAddress: string): Promise<number> {
  return upgrade(port, {}, localAddress).then((answer) => answer.status);
}
