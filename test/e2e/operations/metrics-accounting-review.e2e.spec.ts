/**
 * Review of the accounting: metrics (prom-client) and the `events$` decision stream, against
 * what real clients saw, on both adapters (`WsRateLimitAdapter` on `ws`, `WsRateLimitIoAdapter`
 * on socket.io). Is every message counted exactly once (allowed or refused, by type, tier and
 * code)? Do the refusals a client was sent equal the refused count? Are 1008 closes, upgrade
 * refusals and payload-limit closes counted once each (or, as the README says for the payload
 * limit, not at all)? Is label cardinality bounded when clients invent thousands of event names?
 * Is the Prometheus text exposition valid? Does a Redis outage (the test's own redis-server,
 * frozen) show as the fall-back gauge and a `store` event, and its recovery too? Does the
 * README's metrics table match what is emitted (names, types, labels, units)?
 *
 * Two cases failed on the reviewed code, and are fixed: `BLOCKED` and `DEGRADED` refusals
 * (and `STORE_UNAVAILABLE` ones, by the same code) were counted and streamed as the global
 * tier's, which refused nothing (now `tier="none"` in the metric and no `tier` in the
 * event); a metric of one of our names that the application registered first with other
 * labels (or of another kind) was used as it was, and every decision then threw
 * prom-client's label error in the guard (now start-up stops with an error naming it).
 */
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Counter, Gauge, Registry } from 'prom-client';
import WebSocket from 'ws';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { upgrade } from '../../support/http.js';
import { IoTestClient, waitFor } from '../../support/io-client.js';
import { ioHarness } from '../../support/io-harness.js';
import { startRedis } from '../../support/redis-server.js';
import { settle, sleep, TestClient } from '../../support/ws-client.js';
import { http } from '../socket-io/c35-messages.harness.js';

/** Two typed handlers with small bursts and (next to) no refill, so a test's own counts decide. */
@WebSocketGateway()
@WsRateLimit()
class AccountingGateway {
  @Throttle({ type: 'chat', capacity: 5, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'chat', data };
  }

  @Throttle({ type: 'news', capacity: 3, refillRate: 0.001 })
  @SubscribeMessage('news')
  news(@MessageBody() data: unknown) {
    return { event: 'news', data };
  }
}

type Sample = { value: number; labels: Record<string, string | number>; metricName?: string };

async function samples(registry: Registry, name: string): Promise<Sample[]> {
  const metric = (await registry.getMetricsAsJSON()).find((entry) => entry.name === name);
  return (metric?.values ?? []) as Sample[];
}

async function sum(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  return (await samples(registry, name))
    .filter((value) => Object.entries(labels).every(([key, want]) => String(value.labels[key]) === want))
    .reduce((total, value) => total + value.value, 0);
}

/** Non-zero samples of a counter as `label=value,...` -> count, for whole-table comparisons. */
async function table(registry: Registry, name: string, keys: readonly string[]): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const value of await samples(registry, name)) {
    if (value.value === 0) continue;
    const key = keys.map((label) => `${label}=${String(value.labels[label] ?? '')}`).join(',');
    out[key] = (out[key] ?? 0) + value.value;
  }
  return out;
}

function bump(into: Record<string, number>, key: string): void {
  into[key] = (into[key] ?? 0) + 1;
}

/** Opens a raw Engine.IO WebSocket handshake: 101 when upgraded (then closed), else the HTTP status. */
function engineWebSocketStatus(port: number): Promise<number> {
  return new Promise((resolve) => {
    const socket = new WebSocket(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`);
    socket.on('error', () => undefined);
    socket.once('open', () => {
      socket.terminate();
      resolve(101);
    });
    socket.once('unexpected-response', (_request, response) => {
      response.resume();
      resolve(response.statusCode ?? 0);
      socket.terminate();
    });
  });
}

const DECISION_KEYS = ['result', 'tier', 'code', 'type'] as const;

describe('metrics and decision-stream accounting (review)', () => {
  const apps: RunningApp[] = [];
  const clients: TestClient[] = [];
  const ios: IoTestClient[] = [];
  const io = ioHarness();

  const start = async (options: WsRateLimitModuleOptions, gateways: object[] = [AccountingGateway]) => {
    const running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })],
        providers: gateways as never[],
      },
      (app: INestApplication) => new WsRateLimitAdapter(app),
    );
    apps.push(running);
    return { running, limiter: running.app.get(WsRateLimitService) };
  };
  const connect = async (running: RunningApp, headers: Record<string, string> = {}) => {
    const client = await TestClient.connect(running.url, { headers });
    clients.push(client);
    return client;
  };

  afterEach(async () => {
    for (const client of ios.splice(0)) client.close();
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (const running of apps.splice(0)) await running.close();
    await io.close();
  });

  // --- Every message counted exactly once ------------------------------------------------

  it('ws: a mixed stream (two types, unknown events, malformed text, binary) is counted once per message, by result, tier, code and type, as the client was answered', async () => {
    const registry = new Registry();
    const { running, limiter } = await start({
      metricsRegistry: registry,
      global: { capacity: 14, refillRate: 0.001 },
      violations: { max: 1000, windowMs: 60_000 },
    });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const client = await connect(running);
    let sent = 0;
    client.inOneWrite(() => {
      for (let i = 0; i < 8; i++, sent++) client.send('chat', { id: sent });
      for (let i = 0; i < 8; i++, sent++) client.send('news', { id: sent });
      for (let i = 0; i < 4; i++, sent++) client.send(`nope-${i}`, { id: sent });
      for (let i = 0; i < 2; i++, sent++) client.sendRaw('not json {');
      for (let i = 0; i < 2; i++, sent++) client.sendRaw(Buffer.from([1, 2, 3]));
      for (let i = 0; i < 3; i++, sent++) client.send(`late-${i}`, { id: sent });
    });
    await client.waitFor(() => true, sent);
    await sleep(150);
    subscription.unsubscribe();
    expect(client.frames).toHaveLength(sent); // one answer per message

    // What the client saw, as decisions_total would count it.
    const seen: Record<string, number> = {};
    for (const frame of client.frames) {
      if (frame.event === 'chat' || frame.event === 'news')
        bump(seen, `result=allowed,tier=,code=,type=${frame.event}`);
      else if (frame.event === 'error') {
        const type = frame.data.code === 'UNKNOWN_EVENT' ? 'unknown' : 'invalid';
        bump(seen, `result=allowed,tier=,code=,type=${type}`);
      } else if (frame.event === 'rate_limit') {
        const tier = frame.data.code === 'TYPE_LIMIT' ? 'type' : 'global';
        bump(seen, `result=rejected,tier=${tier},code=${frame.data.code},type=${frame.data.messageType}`);
      }
    }
    expect(await table(registry, 'ws_rate_limit_decisions_total', DECISION_KEYS)).toEqual(seen);
    // The same from events$.
    const streamed: Record<string, number> = {};
    for (const event of events) {
      if (event.kind !== 'decision') continue;
      bump(
        streamed,
        event.allowed
          ? `result=allowed,tier=,code=,type=${event.type}`
          : `result=rejected,tier=${event.tier},code=${event.code},type=${event.type}`,
      );
    }
    expect(streamed).toEqual(seen);
    const frames = client.events('rate_limit').length;
    expect(frames).toBeGreaterThan(0);
    expect(await sum(registry, 'ws_rate_limit_violations_total')).toBe(frames);
    expect(events.filter((event) => event.kind === 'violation')).toHaveLength(frames);
  });

  it('socket.io: events with and without acknowledgements, known and unknown, are counted once each; refusals sent (events and acks) equal the refused count', async () => {
    const registry = new Registry();
    const url = await io.start([AccountingGateway], {
      metricsRegistry: registry,
      global: { capacity: 14, refillRate: 0.001 },
      violations: { max: 1000, windowMs: 60_000 },
    });
    const limiter = io.limiter();
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const client = await io.connect(url, 'websocket');
    const acks: unknown[] = [];
    let sent = 0;
    for (let i = 0; i < 8; i++, sent++) {
      if (i % 2 === 0) client.socket.emit('chat', { id: sent }, (answer: unknown) => acks.push(answer));
      else client.socket.emit('chat', { id: sent });
    }
    for (let i = 0; i < 8; i++, sent++)
      client.socket.emit('news', { id: sent }, (answer: unknown) => acks.push(answer));
    // The global budget (14) has 6 left: these unknown events take it, then are refused.
    for (let i = 0; i < 10; i++, sent++) {
      if (i % 2 === 0) client.socket.emit(`nope-${i}`, { id: sent }, (answer: unknown) => acks.push(answer));
      else client.socket.emit(`nope-${i}`, { id: sent });
    }
    const refusedAcks = (): number =>
      acks.filter((answer) => (answer as { event?: string } | undefined)?.event === 'rate_limit').length;
    // Every refusal is visible (a rate_limit event or a rate_limit ack); admitted unknown events go to app listeners.
    await client.until(() => client.of('rate_limit').length + refusedAcks() >= 3 + 5 + 4, 10_000, 'refusals');
    await sleep(200);
    subscription.unsubscribe();
    const refusals = client.of('rate_limit').length + refusedAcks();
    expect(refusals).toBe(12);
    // Replies `{ event, data }` are emitted as events (the ack is left for the limiter's refusals).
    expect(client.of('chat').length + client.of('news').length).toBe(8);
    expect(await sum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' })).toBe(refusals);
    expect(await sum(registry, 'ws_rate_limit_decisions_total')).toBe(sent);
    expect(await sum(registry, 'ws_rate_limit_violations_total')).toBe(refusals);
    expect(await table(registry, 'ws_rate_limit_decisions_total', DECISION_KEYS)).toEqual({
      'result=allowed,tier=,code=,type=chat': 5,
      'result=allowed,tier=,code=,type=news': 3,
      'result=allowed,tier=,code=,type=unknown': 6,
      'result=rejected,tier=type,code=TYPE_LIMIT,type=chat': 3,
      'result=rejected,tier=type,code=TYPE_LIMIT,type=news': 5,
      'result=rejected,tier=global,code=GLOBAL_LIMIT,type=unknown': 4,
    });
    expect(events.filter((event) => event.kind === 'decision')).toHaveLength(sent);
  });

  // --- Tier labels: which tier refused ------------------------------------------------------

  it('BLOCKED and DEGRADED refusals are counted under tier="none" and streamed without a tier (they were counted as the global tier\'s, which refused nothing)', async () => {
    const registry = new Registry();
    const { running, limiter } = await start({
      metricsRegistry: registry,
      global: { capacity: 1000, refillRate: 1000 },
      violations: { max: 3, windowMs: 60_000 },
      degradeCooldownMs: 30_000,
    });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    // Degraded: 5 chats allowed, 3 refused by the type tier (the 3rd starts the restriction), 1 refused as degraded.
    const degraded = await connect(running);
    for (let i = 0; i < 9; i++) {
      degraded.send('chat', { id: i });
      await degraded.waitFor(() => true, i + 1);
    }
    // Blocked: an operator block on the address; every message refused BLOCKED (2: below the threshold).
    const blocked = await connect(running);
    await limiter.block('127.0.0.1', 60_000);
    for (let i = 0; i < 2; i++) blocked.send('news', { id: i });
    await blocked.waitForEvent('rate_limit', 2);
    await sleep(100);
    subscription.unsubscribe();
    const codes = [...degraded.events('rate_limit'), ...blocked.events('rate_limit')].map((frame) => frame.data.code);
    expect(codes.filter((code) => code === 'GLOBAL_LIMIT')).toHaveLength(0);
    expect(codes.filter((code) => code === 'BLOCKED')).toHaveLength(2);
    expect(codes.filter((code) => code === 'DEGRADED')).toHaveLength(2);
    // README, "Which tier refuses most?": sum by (tier) (rate(decisions_total{result="rejected"})).
    // The global tier (1000 burst) refused no message; yet the blocks and the restriction land on it.
    const byTier = await table(registry, 'ws_rate_limit_decisions_total', ['result', 'tier']);
    const streamedGlobal = events.filter(
      (event) => event.kind === 'decision' && !event.allowed && event.tier === 'global',
    ).length;
    expect({ metricGlobal: byTier['result=rejected,tier=global'] ?? 0, streamedGlobal }).toEqual({
      metricGlobal: 0,
      streamedGlobal: 0,
    });
    // The type tier refused 3 (the 3rd reached the threshold: its frame announces the
    // restriction as DEGRADED, its decision is the type tier's); 1 DEGRADED and 2 BLOCKED
    // decisions were no tier's.
    expect(byTier['result=rejected,tier=type']).toBe(3);
    expect(byTier['result=rejected,tier=none']).toBe(3);
    const restricted = events.filter(
      (event) => event.kind === 'decision' && (event.code === 'BLOCKED' || event.code === 'DEGRADED'),
    );
    expect(restricted).toHaveLength(3);
    expect(restricted.filter((event) => event.kind === 'decision' && 'tier' in event)).toEqual([]);
    await limiter.unblock('127.0.0.1');
  });

  // --- Label cardinality under hostile input -------------------------------------------------

  it('ws: 3,000 distinct invented event names (and malformed frames) give one type label, not one per name', async () => {
    const registry = new Registry();
    const { running } = await start({
      metricsRegistry: registry,
      global: { capacity: 2500, refillRate: 0.001 },
      violations: { max: 100_000, windowMs: 60_000 },
    });
    const client = await connect(running);
    const names = 3000;
    client.inOneWrite(() => {
      for (let i = 0; i < names; i++) client.send(`evil-${i}-${'x'.repeat(i % 40)}`, i);
    });
    await client.waitFor(() => true, names, 30_000);
    const types = new Set<string>();
    for (const metric of [
      'ws_rate_limit_decisions_total',
      'ws_rate_limit_violations_total',
      'ws_rate_limit_near_limit_total',
    ]) {
      for (const value of await samples(registry, metric)) types.add(String(value.labels.type));
    }
    expect([...types].sort()).toEqual(['unknown']);
    expect(await sum(registry, 'ws_rate_limit_decisions_total')).toBe(names);
    const text = await registry.metrics();
    expect(text).not.toMatch(/evil-/);
    expect(text.length).toBeLessThan(20_000);
  }, 60_000);

  it('types given to consume() from code (client-chosen) stop at 1,024 labels, later ones counted under (other), none lost', async () => {
    const registry = new Registry();
    const { limiter } = await start({ metricsRegistry: registry, global: { capacity: 100_000, refillRate: 1000 } });
    const total = 1500;
    for (let i = 0; i < total; i++) await limiter.consume(`user-${i % 7}`, { type: `t-${i}` });
    const types = new Set(
      (await samples(registry, 'ws_rate_limit_decisions_total')).map((value) => String(value.labels.type)),
    );
    expect(types.size).toBeLessThanOrEqual(1025);
    expect(types.has('(other)')).toBe(true);
    expect(await sum(registry, 'ws_rate_limit_decisions_total')).toBe(total);
  }, 60_000);

  // --- The text exposition ---------------------------------------------------------------

  it('the Prometheus text exposition is valid: HELP and TYPE once per metric, label values escaped, every value a number', async () => {
    const registry = new Registry();
    const { running, limiter } = await start({
      metricsRegistry: registry,
      global: { capacity: 4, refillRate: 0.001 },
      violations: { max: 3, windowMs: 60_000 },
      connection: { capacity: 2, refillRate: 0.001 },
    });
    // Types with a quote, a backslash and a newline (a type passed from code may be anything).
    await limiter.consume('someone', { type: 'we"ird\\type\nwith newline' });
    await limiter.consume('someone', { type: 'ünï©ødé' });
    const client = await connect(running);
    for (let i = 0; i < 8; i++) client.send('chat', i);
    await client.waitClose();
    await upgrade(running.port); // the connection-rate bucket (2) is spent: 429
    const text = await registry.metrics();
    const helps = new Map<string, number>();
    const types = new Map<string, number>();
    const problems: string[] = [];
    const sampleLine =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})? (\S+)$/;
    for (const line of text.split('\n')) {
      if (line === '') continue;
      const comment = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
      if (comment) {
        const into = comment[1] === 'HELP' ? helps : types;
        into.set(comment[2]!, (into.get(comment[2]!) ?? 0) + 1);
        if (comment[1] === 'TYPE' && !['counter', 'gauge', 'histogram'].includes(comment[3]!)) problems.push(line);
        continue;
      }
      const match = sampleLine.exec(line);
      if (!match) {
        problems.push(`unparsable: ${JSON.stringify(line)}`);
        continue;
      }
      const value = match[4]!;
      if (!/^(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf)$/.test(value)) problems.push(`value: ${line}`);
    }
    expect(problems).toEqual([]);
    expect([...helps.values()].every((n) => n === 1)).toBe(true);
    expect([...types.values()].every((n) => n === 1)).toBe(true);
    expect([...helps.keys()].sort()).toEqual([...types.keys()].sort());
    expect(helps.size).toBe(12);
    expect(text).toContain('type="we\\"ird\\\\type\\nwith newline"');
  });

  // --- Closes and refusals counted once each --------------------------------------------------

  it('ws: 1008 closes of offenders and of a denied tracker are counted once each; a 1009 payload close is in no metric (as the README says)', async () => {
    const registry = new Registry();
    const { running, limiter } = await start({
      metricsRegistry: registry,
      violations: { max: 3, windowMs: 60_000 },
      maxPayload: 1024,
      // A named user, or (undefined) the connection's own budget.
      tracker: (_client, { request }) => request?.headers['x-user'] as string | undefined,
      denyList: ['mallory'],
    });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const offenders = await Promise.all([0, 1, 2].map(() => connect(running)));
    for (const client of offenders) {
      client.inOneWrite(() => {
        for (let i = 0; i < 20; i++) client.send('chat', i);
      });
    }
    const denied = await connect(running, { 'x-user': 'mallory' });
    denied.inOneWrite(() => {
      for (let i = 0; i < 10; i++) denied.send('chat', i);
    });
    const big = await connect(running);
    big.sendRaw('x'.repeat(4096));
    const closes = await Promise.all([...offenders, denied, big].map((client) => client.waitClose()));
    expect(closes.map((close) => close.code)).toEqual([1008, 1008, 1008, 1008, 1009]);
    await settle(() => limiter.stats().connections === 0, 200);
    subscription.unsubscribe();
    expect(await table(registry, 'ws_rate_limit_disconnects_total', ['reason'])).toEqual({
      'reason=violations': 3,
      'reason=denied': 1,
    });
    expect(events.filter((event) => event.kind === 'disconnect')).toHaveLength(4);
    const frames = offenders.reduce((total, client) => total + client.events('rate_limit').length, 0);
    expect(frames).toBe(9);
    expect(await sum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' })).toBe(frames);
    expect(await sum(registry, 'ws_rate_limit_violations_total')).toBe(frames);
    // The denied tracker's messages are no decisions (its socket is closing), the oversized frame is none either.
    expect(await sum(registry, 'ws_rate_limit_decisions_total', { result: 'allowed' })).toBe(15);
    expect(await sum(registry, 'ws_rate_limit_open_connections')).toBe(0);
  });

  it('socket.io: refused handshakes (polling and websocket) as the client saw them (429) equal connections_total and connection events, counted once each', async () => {
    const registry = new Registry();
    const url = await io.start([AccountingGateway], {
      metricsRegistry: registry,
      connection: { capacity: 3, refillRate: 0.001 },
    });
    const port = Number(new URL(url).port);
    const limiter = io.limiter();
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    // One client on polling that upgrades to websocket: its session's requests and the upgrade are no new handshakes.
    const upgrading = io.client(url, 'polling', { transports: ['polling', 'websocket'], upgrade: true });
    await upgrading.connected();
    await waitFor(
      () => (upgrading.socket.io.engine as { transport?: { name?: string } }).transport?.name === 'websocket',
      10_000,
      'the upgrade',
    );
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) statuses.push((await http(port, 'GET', '/socket.io/?EIO=4&transport=polling')).status);
    for (let i = 0; i < 2; i++) statuses.push(await engineWebSocketStatus(port));
    subscription.unsubscribe();
    const accepted = 1 + statuses.filter((status) => status === 200 || status === 101).length;
    const refused = statuses.filter((status) => status === 429).length;
    expect(accepted + refused).toBe(8);
    expect(refused).toBeGreaterThan(0);
    expect(await table(registry, 'ws_rate_limit_connections_total', ['result', 'reason'])).toEqual({
      'result=accepted,reason=': accepted,
      'result=refused,reason=rate': refused,
    });
    expect(events.filter((event) => event.kind === 'connection' && !event.accepted)).toHaveLength(refused);
    expect(events.filter((event) => event.kind === 'connection' && event.accepted)).toHaveLength(accepted);
  });

  // --- Redis outage: the fall-back gauge, the stream, and recovery ------------------------------

  it('Redis frozen, fail mode open: every message still counted once; store_fallback 1, one outage, one store down event; after it, 0 and one up event; store_decision_seconds in seconds', async () => {
    const redis = await startRedis();
    try {
      const registry = new Registry();
      const { running, limiter } = await start({
        metricsRegistry: registry,
        store: 'redis',
        redis: { url: redis.url, commandTimeoutMs: 200 },
        tracker: 'ip',
        failMode: 'open',
      });
      const events: RateLimitEvent[] = [];
      const subscription = limiter.events$.subscribe((event) => events.push(event));
      const client = await connect(running);
      let sent = 0;
      const exchange = async (event: string): Promise<void> => {
        const before = client.frames.length;
        client.send(event, sent++);
        await client.waitFor(() => true, before + 1, 10_000);
      };
      await exchange('chat');
      await exchange('chat');
      expect(await sum(registry, 'ws_rate_limit_store_fallback')).toBe(0);
      redis.pause();
      try {
        for (let i = 0; i < 4; i++) await exchange('news');
        expect(await sum(registry, 'ws_rate_limit_store_fallback')).toBe(1);
        expect(await sum(registry, 'ws_rate_limit_store_outages_total')).toBe(1);
        expect(await sum(registry, 'ws_rate_limit_store_errors_total')).toBeGreaterThanOrEqual(1);
        expect(events.filter((event) => event.kind === 'store')).toEqual([
          expect.objectContaining({ kind: 'store', state: 'down' }),
        ]);
      } finally {
        redis.resume();
      }
      // The breaker's probe finds Redis again by itself (no message needed).
      await waitFor(() => events.some((event) => event.kind === 'store' && event.state === 'up'), 15_000, 'store up');
      expect(await sum(registry, 'ws_rate_limit_store_fallback')).toBe(0);
      await exchange('chat');
      subscription.unsubscribe();
      expect(
        events.filter((event) => event.kind === 'store').map((event) => (event as { state: string }).state),
      ).toEqual(['down', 'up']);
      expect(await sum(registry, 'ws_rate_limit_store_outages_total')).toBe(1);
      // Each message once: 3 chats (Redis) + 4 news (3 from the fall-back's fresh bucket, 1 refused).
      expect(await sum(registry, 'ws_rate_limit_decisions_total')).toBe(sent);
      expect(client.frames).toHaveLength(sent);
      expect(await sum(registry, 'ws_rate_limit_decisions_total', { result: 'rejected' })).toBe(
        client.events('rate_limit').length,
      );
      // The histogram is in seconds: a loopback Redis answers in well under a second on average.
      const histogram = await samples(registry, 'ws_rate_limit_store_decision_seconds');
      const count = histogram.find((value) => value.metricName === 'ws_rate_limit_store_decision_seconds_count')!.value;
      const total = histogram.find((value) => value.metricName === 'ws_rate_limit_store_decision_seconds_sum')!.value;
      expect(count).toBeGreaterThanOrEqual(4); // the upgrade and three chats, answered by Redis
      expect(total / count).toBeLessThan(0.5);
      await client.close();
    } finally {
      await redis.stop();
    }
  }, 60_000);

  // --- The README's table against what is registered ------------------------------------------

  it("the README's metrics table names every metric registered, with its type and labels, and nothing else", async () => {
    const registry = new Registry();
    await start({ metricsRegistry: registry });
    const readme = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');
    const rows = [...readme.matchAll(/^\| `(ws_rate_limit_\w+)`\s*\| (\w+)\s*\|([^|]*)\|/gm)].map(
      ([, name, type, labels]) => ({
        name: name!,
        type: type!,
        labels: labels!
          .split(',')
          .map((label) => label.trim().replace(/`/g, ''))
          .filter(Boolean)
          .sort(),
      }),
    );
    expect(rows.length).toBeGreaterThanOrEqual(10);
    const registered = await Promise.all(
      registry.getMetricsAsArray().map(async (metric) => {
        const got = await (metric as unknown as { get(): Promise<{ name: string; type: unknown }> }).get();
        const own = metric as unknown as { labelNames?: string[] };
        return {
          name: got.name,
          type: String(got.type),
          labels: [...(own.labelNames ?? [])].filter((label) => label !== 'le').sort(),
        };
      }),
    );
    expect(registered.sort((a, b) => a.name.localeCompare(b.name))).toEqual(
      rows.sort((a, b) => a.name.localeCompare(b.name)),
    );
  });

  it('a counter of the same name the application registered first, with other labels, stops start-up with an error naming it (it made every message fail); one with our labels is used', async () => {
    const registry = new Registry();
    new Counter({
      name: 'ws_rate_limit_decisions_total',
      help: 'mine',
      labelNames: ['outcome'],
      registers: [registry],
    });
    await expect(start({ metricsRegistry: registry })).rejects.toThrow(
      /already holds ws_rate_limit_decisions_total as a Counter labelled \[outcome\]; the limiter publishes it as a Counter labelled \[result, tier, code, type\]/,
    );
    // A gauge where the limiter keeps a counter: refused too.
    const gauges = new Registry();
    new Gauge({
      name: 'ws_rate_limit_violations_total',
      help: 'mine',
      labelNames: ['code', 'type'],
      registers: [gauges],
    });
    await expect(start({ metricsRegistry: gauges })).rejects.toThrow(/ws_rate_limit_violations_total as a Gauge/);
    // The same labels in the same order: the limiter counts into it, and messages are answered.
    const same = new Registry();
    const mine = new Counter({
      name: 'ws_rate_limit_decisions_total',
      help: 'mine',
      labelNames: ['result', 'tier', 'code', 'type'],
      registers: [same],
    });
    const { running } = await start({ metricsRegistry: same });
    const client = await connect(running);
    client.send('chat', 1);
    await client.waitForEvent('chat');
    const values = (await mine.get()).values;
    expect(values.find((value) => value.labels.result === 'allowed' && value.labels.type === 'chat')?.value).toBe(1);
  });

  it('near_limit_total counts the same allowed messages on the memory store and on Redis (tracker ip), and events$ agrees', async () => {
    const redis = await startRedis();
    try {
      const run = async (options: WsRateLimitModuleOptions) => {
        const registry = new Registry();
        const { running, limiter } = await start({ metricsRegistry: registry, tracker: 'ip', ...options });
        const events: RateLimitEvent[] = [];
        const subscription = limiter.events$.subscribe((event) => events.push(event));
        const client = await connect(running);
        for (let i = 0; i < 7; i++) {
          client.send(i % 2 === 0 ? 'chat' : 'news', i);
          await client.waitFor(() => true, i + 1);
        }
        subscription.unsubscribe();
        const near = await table(registry, 'ws_rate_limit_near_limit_total', ['tier', 'type']);
        const streamed: Record<string, number> = {};
        for (const event of events) {
          if (event.kind === 'decision' && event.nearLimit !== undefined)
            bump(streamed, `tier=${event.nearLimit},type=${event.type}`);
        }
        await client.close();
        apps.splice(apps.indexOf(running), 1);
        await running.close();
        return { near, streamed };
      };
      const memory = await run({});
      const shared = await run({ store: 'redis', redis: { url: redis.url, commandTimeoutMs: 2000 } });
      expect(memory.streamed).toEqual(memory.near);
      expect(shared.streamed).toEqual(shared.near);
      expect(shared.near).toEqual(memory.near);
      expect(Object.keys(memory.near).length).toBeGreaterThan(0);
    } finally {
      await redis.stop();
    }
  }, 60_000);
});
