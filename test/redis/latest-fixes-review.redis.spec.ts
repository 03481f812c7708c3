/**
 * Adversarial review of three fixes on main:
 *
 * - 8ff11f6 (lib/storage/redis/block-cache.ts): a cached refusal decided by a token bucket
 *   lasts only until the bucket's next whole unit. Checked with Redis's INFO commandstats: a
 *   flood of cost-1 refusals costs no script call until the retry time; cost 3 at most 2 more
 *   per wait; every retryAfter answered (from Redis or the cache) is honest.
 * - bdf0540 (lib/storage/redis/lease-book.ts): dirty lease keys are synced again after
 *   250 ms, doubling up to 2 s. Checked: a lease taken by a call that missed its deadline is
 *   given back, one still held is not, nothing is double-counted, the retry timer is unref'd,
 *   stops at store close, and the retries stop once the key is in line.
 * - 282bd07 (lib/adapters/ws-rate-limit.adapter.ts): a gateway on a port of its own with a
 *   path: upgrades served, plain HTTP answered 426 (also twice on one keep-alive connection),
 *   app.close() fast with many clients, with clientTracking false, nothing left open.
 *
 * Real parts only: real `ws` clients against NestJS apps on 127.0.0.1, a real redis-server.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { type INestApplication, type ModuleMetadata } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Test } from '@nestjs/testing';
import type { Redis } from 'ioredis';
import { connect as netConnect, createServer, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';
import {
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  concurrencySpec,
  tokenBucketSpec,
  type RateLimitDecision,
  type RateLimitPlan,
  type RateLimitRejected,
  type TierSpec,
} from '../../lib/index.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { freePort, startRedis, type RedisServer } from '../support/redis-server.js';
import { sleep } from '../support/ws-client.js';
import { adminClient, closeClient, ready, storeClient } from './helpers.js';

async function waitUntil(check: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition') {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const later = <T>(ms: number, value: T): Promise<T> =>
  new Promise((resolve) => setTimeout(() => resolve(value), ms).unref());

/** Script calls the server has run since the last CONFIG RESETSTAT (EVAL and EVALSHA). */
async function scriptCalls(admin: Redis): Promise<number> {
  const info = await admin.info('commandstats');
  let calls = 0;
  for (const match of info.matchAll(/^cmdstat_(?:eval|evalsha):calls=(\d+)/gm)) calls += Number(match[1]);
  return calls;
}

describe('Redis store: block cache and lease book fixes', () => {
  let server: RedisServer;
  let admin: Redis;
  const opened: Array<{ client: Redis; store: RedisRateLimitStore }> = [];

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    await ready(admin);
  }, 60_000);

  afterEach(async () => {
    for (const { client, store } of opened.splice(0)) {
      await store.close();
      await closeClient(client);
    }
  });

  afterAll(async () => {
    if (admin) await closeClient(admin);
    await server?.stop();
  });

  async function open(options: Partial<ConstructorParameters<typeof RedisRateLimitStore>[0]> = {}) {
    const client = storeClient(server.port);
    await ready(client);
    const store = new RedisRateLimitStore({ client, keyPrefix: 'lfr:', commandTimeoutMs: 5000, ...options });
    opened.push({ client, store });
    return store;
  }

  const planOf = (store: RedisRateLimitStore, tracker: string, specs: readonly TierSpec[], lease?: string) =>
    ({
      tracker,
      tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
      ...(lease !== undefined ? { lease } : {}),
    }) as RateLimitPlan;

  /**
   * Floods `plan` until admitted; every refusal's promise (time received + retryAfter) is
   * checked against later refusals: one sent 3 ms or more after a promise passed is a lie.
   */
  async function floodUntilAdmitted(store: RedisRateLimitStore, plan: RateLimitPlan, maxMs: number) {
    let promise = Infinity;
    const lies: string[] = [];
    let refusals = 0;
    const began = performance.now();
    while (performance.now() - began < maxMs) {
      for (let i = 0; i < 10; i++) {
        const sentAt = performance.now();
        const decision = (await store.consume(plan)) as RateLimitDecision;
        const at = performance.now();
        if (decision.allowed) return { refusals, lies, admittedAt: at };
        refusals++;
        if (sentAt >= promise + 3) lies.push(`refused ${(sentAt - promise).toFixed(1)} ms past a promised time`);
        promise = Math.min(promise, at + (decision as RateLimitRejected).retryAfter);
      }
      await sleep(5);
    }
    throw new Error('never admitted');
  }

  it('cost 1: a flood of refused messages costs Redis no script call until the retry time, and retryAfter never lies', async () => {
    const store = await open();
    const plan = planOf(store, 'ip:c1', [tokenBucketSpec('global', 'g', 3, 2)]);
    for (let i = 0; i < 3; i++) expect((await store.consume(plan)).allowed).toBe(true);
    const first = (await store.consume(plan)) as RateLimitRejected;
    expect(first.allowed).toBe(false);
    await admin.config('RESETSTAT');
    const before = await scriptCalls(admin);
    const { refusals, lies } = await floodUntilAdmitted(store, plan, 5000);
    // The admitting call itself is the one script call expected.
    const calls = (await scriptCalls(admin)) - before;
    console.log(`cost 1: ${refusals} refusals from the cache, ${calls} script calls`);
    expect(refusals).toBeGreaterThan(20);
    expect(lies).toEqual([]);
    expect(calls).toBeLessThanOrEqual(1);
  });

  it('cost 3: a flood through one wait costs at most 2 script calls more than the admitting one, and retryAfter never lies', async () => {
    const store = await open();
    const plan = planOf(store, 'ip:c3', [tokenBucketSpec('global', 'g', 6, 2, 3)]);
    expect((await store.consume(plan)).allowed).toBe(true);
    expect((await store.consume(plan)).allowed).toBe(true);
    const first = (await store.consume(plan)) as RateLimitRejected;
    expect(first.allowed).toBe(false);
    expect(first.retryAfter).toBeGreaterThan(1000);
    await admin.config('RESETSTAT');
    const before = await scriptCalls(admin);
    const { refusals, lies } = await floodUntilAdmitted(store, plan, 6000);
    const calls = (await scriptCalls(admin)) - before;
    console.log(`cost 3: ${refusals} refusals, ${calls} script calls`);
    expect(lies).toEqual([]);
    expect(calls).toBeLessThanOrEqual(3);
  });

  it('a lease taken by a call that missed its deadline is given back within seconds (well before the 20 s refresh); a lease still held is kept; nothing is double-counted', async () => {
    const specs = [concurrencySpec('concurrency', 'cc', 2)];
    // Lease TTL 60 s: the refresh (every 20 s) plays no part here.
    const a = await open({ commandTimeoutMs: 150, leaseTtlMs: 60_000, instanceId: 'A' });
    const b = await open({ blockCache: false, leaseTtlMs: 60_000, instanceId: 'B' });
    expect((await a.consume(planOf(a, 'ip:l', specs, 'held'))).allowed).toBe(true);
    // Redis stalls: A's next call misses its deadline but Redis runs it later (a slot A does
    // not know it holds). Paused rather than DEBUG SLEEP, so that a deadline timer firing
    // late on a loaded machine cannot outlast the stall and see the reply in time.
    server.pause();
    try {
      await expect(a.consume(planOf(a, 'ip:l', specs, 'late'))).rejects.toThrow();
    } finally {
      server.resume();
    }
    // Within the retry's doubling waits (well under the 20 s refresh), B gets the slot back.
    const began = performance.now();
    await waitUntil(async () => (await b.consume(planOf(b, 'ip:l', specs, 'b1'))).allowed, 8000, 'the late slot back');
    console.log(`late slot back after ${(performance.now() - began).toFixed(0)} ms`);
    // A's 'held' and B's 'b1' fill the limit of 2: a third is refused (neither given back
    // nor counted twice), and stays so for the next retries.
    for (let i = 0; i < 4; i++) {
      expect((await b.consume(planOf(b, 'ip:l', specs, `x${i}`))).allowed).toBe(false);
      await sleep(600);
    }
    // Released, A's lease frees exactly one slot.
    await a.release(planOf(a, 'ip:l', specs, 'held'));
    expect((await b.consume(planOf(b, 'ip:l', specs, 'b2'))).allowed).toBe(true);
    expect((await b.consume(planOf(b, 'ip:l', specs, 'b3'))).allowed).toBe(false);
  }, 30_000);

  it("once synced, the dirty-key retry stops calling Redis; its timer is unref'd; store.close() clears it and nothing is sent after", async () => {
    const specs = [concurrencySpec('concurrency', 'cc', 5)];
    const a = await open({ commandTimeoutMs: 150, leaseTtlMs: 60_000, instanceId: 'A2' });
    expect((await a.consume(planOf(a, 'ip:q', specs, 'h'))).allowed).toBe(true);
    // Paused, not DEBUG SLEEP: the late reply comes after the deadline however late its timer fires.
    server.pause();
    try {
      await expect(a.consume(planOf(a, 'ip:q', specs, 'late'))).rejects.toThrow();
    } finally {
      server.resume();
    }
    const book = (a as unknown as { leases: { retryTimer?: NodeJS.Timeout } }).leases;
    // The late reply settles the call as not delivered: its key is dirty, a retry is set.
    await waitUntil(() => book.retryTimer !== undefined, 3000, 'a retry timer');
    expect(book.retryTimer!.hasRef()).toBe(false);
    await waitUntil(() => book.retryTimer === undefined, 8000, 'the retries to end');
    await sleep(300);
    await admin.config('RESETSTAT');
    const before = await scriptCalls(admin);
    await sleep(2500);
    expect((await scriptCalls(admin)) - before).toBe(0);
    // Dirty again, then closed: the timer is gone and nothing but the give-back is sent.
    server.pause();
    try {
      await expect(a.consume(planOf(a, 'ip:q', specs, 'late2'))).rejects.toThrow();
    } finally {
      server.resume();
    }
    await a.close();
    expect(book.retryTimer).toBeUndefined();
    await admin.config('RESETSTAT');
    await sleep(2500);
    expect(await scriptCalls(admin)).toBe(0);
  }, 30_000);
});

// --- 282bd07: a gateway on a port of its own, with a path ---------------------------------

describe('a ws gateway on its own port with a path', () => {
  let app: INestApplication | undefined;
  const sockets: Array<WebSocket | Socket> = [];

  afterEach(async () => {
    for (const s of sockets.splice(0)) {
      if (s instanceof WebSocket) s.terminate();
      else s.destroy();
    }
    if (app) await app.close();
    app = undefined;
  });

  function plainGatewayOn(port: number) {
    // A gateway without @WsRateLimit beside a limited app, clientTracking false.
    @WebSocketGateway(port, { path: '/plain', clientTracking: false })
    class PlainGateway {
      @SubscribeMessage('echo')
      echo(@MessageBody() data: unknown) {
        return { event: 'ack', data };
      }
    }
    return PlainGateway;
  }

  function gatewayOn(port: number, clientTracking?: boolean) {
    @WebSocketGateway(port, { path: '/own', ...(clientTracking === false ? { clientTracking: false } : {}) })
    @WsRateLimit()
    class OwnGateway {
      @SubscribeMessage('echo')
      echo(@MessageBody() data: unknown) {
        return { event: 'ack', data };
      }
    }
    return OwnGateway;
  }

  async function start(metadata: ModuleMetadata) {
    const moduleRef = await Test.createTestingModule(metadata).compile();
    app = moduleRef.createNestApplication({ logger: false });
    app.useWebSocketAdapter(new WsRateLimitAdapter(app));
    await app.listen(0, '127.0.0.1');
  }

  function open(url: string): Promise<WebSocket> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      sockets.push(ws);
      ws.once('open', () => resolve(ws));
      ws.once('error', reject);
    });
  }

  async function listening(port: number): Promise<boolean> {
    return new Promise((resolve) => {
      const s = netConnect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
  }

  async function portFree(port: number): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const probe = createServer();
      probe.once('error', () => resolve(false));
      probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
    });
  }

  async function startOwn(clientTracking?: boolean): Promise<number> {
    const own = await freePort();
    await start({
      imports: [
        WsRateLimitModule.forRoot({
          useEnv: false,
          metrics: false,
          maxConnectionsPerIp: 500,
          connection: { capacity: 1000, refillRate: 1000 },
        }),
      ],
      providers: [gatewayOn(own, clientTracking)],
    });
    await waitUntil(() => listening(own), 5000, 'the own port');
    return own;
  }

  it('serves upgrades and messages, and answers two plain HTTP requests on one keep-alive connection with 426 each', async () => {
    const own = await startOwn();
    const ws = await open(`ws://127.0.0.1:${own}/own`);
    const reply = new Promise<string>((resolve) => ws.once('message', (data) => resolve(String(data))));
    ws.send(JSON.stringify({ event: 'echo', data: 7 }));
    expect(JSON.parse(await reply)).toMatchObject({ event: 'ack', data: 7 });
    const socket = netConnect(own, '127.0.0.1');
    sockets.push(socket);
    socket.on('error', () => undefined);
    let answer = '';
    socket.on('data', (data) => (answer += String(data)));
    socket.write('GET /a HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitUntil(() => answer.includes('Upgrade Required'), 5000, 'the first answer');
    socket.write('GET /b HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitUntil(() => (answer.match(/HTTP\/1\.1 426/g) ?? []).length === 2, 5000, 'the second answer');
    expect(socket.destroyed).toBe(false);
    // The WebSocket still serves after.
    const again = new Promise<string>((resolve) => ws.once('message', (data) => resolve(String(data))));
    ws.send(JSON.stringify({ event: 'echo', data: 8 }));
    expect(JSON.parse(await again)).toMatchObject({ data: 8 });
  });

  for (const clientTracking of [true, false]) {
    it(`app.close() with 40 clients, an idle keep-alive connection and a half-sent request (clientTracking ${clientTracking}): resolves, every client closed, port freed`, async () => {
      const own = await startOwn(clientTracking);
      const clients = await Promise.all(Array.from({ length: 40 }, () => open(`ws://127.0.0.1:${own}/own`)));
      const closed = clients.map((ws) => new Promise<void>((resolve) => ws.once('close', () => resolve())));
      const idle = netConnect(own, '127.0.0.1');
      const half = netConnect(own, '127.0.0.1');
      sockets.push(idle, half);
      for (const s of [idle, half]) s.on('error', () => undefined);
      let idleAnswer = '';
      idle.on('data', (d) => (idleAnswer += String(d)));
      idle.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
      await waitUntil(() => idleAnswer.includes('426'), 5000, 'the 426');
      half.write('GET / HTTP/1.1\r\nHost: x\r\n');
      await sleep(100);
      const closing = app!.close();
      app = undefined;
      const outcome = await Promise.race([closing.then(() => 'closed'), later(8000, 'pending after 8 s')]);
      expect(outcome).toBe('closed');
      const allClosed = await Promise.race([Promise.all(closed).then(() => true), later(3000, false)]);
      expect(allClosed).toBe(true);
      await waitUntil(() => idle.destroyed || idle.readableEnded, 3000, 'the idle connection ended');
      await waitUntil(() => half.destroyed || half.readableEnded, 3000, 'the half-sent request ended');
      expect(await portFree(own)).toBe(true);
    }, 30_000);
  }

  it('app.close() with a client of an undecorated gateway (clientTracking false) on its own port with a path: resolves, the client is closed', async () => {
    const own = await freePort();
    await start({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false })],
      providers: [plainGatewayOn(own)],
    });
    await waitUntil(() => listening(own), 5000, 'the own port');
    const ws = await open(`ws://127.0.0.1:${own}/plain`);
    const closed = new Promise<boolean>((resolve) => ws.once('close', () => resolve(true)));
    const closing = app!.close();
    app = undefined;
    const outcome = await Promise.race([closing.then(() => 'closed'), later(5000, 'pending after 5 s')]);
    const clientClosed = await Promise.race([closed, later(2000, false)]);
    ws.terminate();
    await closing;
    expect({ outcome, clientClosed }).toEqual({ outcome: 'closed', clientClosed: true });
  }, 30_000);
});
