/**
 * 31 cases; 5 failed on 01e9c2d (with the Redis review's fixes uncommitted beside it), all
 * fixed: `tolerateStalledPings` judges lateness from when Engine.IO last started the pong's
 * timeout (it starts it again once, at the first other packet); the sweep of refusals in
 * transit waits for a held-up loop at most twice per count (its first look and one late
 * timer), so a loop late on every tick does not keep a count for ever; a block set from code
 * always counts from now, and a block or unblock the store rejects restores the entry as it
 * was, deadline included (lib/services/blocks.ts `snapshot`/`restore`).
 *
 * Review 3 of the session's fixes: the event-loop stall fixes of 8eda3a4 and 01e9c2d, looked
 * at for what they broke or left open.
 *
 * What was reviewed: lib/utils/loop-timeout.ts (new) and its users, lib/connection/answer-order.ts
 * (answer hold, the 1008 close's grace `closeGraceMs`), lib/adapters/event-slots.ts,
 * lib/adapters/handshake-hygiene.ts (handshake timeout); lib/pipeline/in-transit.ts (the sweep
 * of refusals in transit); lib/adapters/engine-io.ts `tolerateStalledPings` (Engine.IO's
 * `onClose` wrapped per connection); lib/services/blocks.ts + operator-blocks.ts (operator
 * blocks on the monotonic clock); README "Blocking from code" and "When the event loop stalls".
 *
 * How: real NestJS apps on 127.0.0.1 (memory store; one case on a real redis-server from
 * test/support/redis-server.ts) behind `WsRateLimitAdapter` and `WsRateLimitIoAdapter`; real
 * `ws` clients, raw Engine.IO v4 peers (a `ws` socket or HTTP long-polling requests speaking
 * the Engine.IO protocol, to be a peer that never answers a ping), raw TCP for slow
 * handshakes. A stall is a busy-wait of this process (which runs the app) from `setImmediate`.
 * A "loop late on every tick" is a chain of busy-waits, one per turn of the loop. Wall-clock
 * steps are `jest.spyOn(Date, 'now')`. Two custom stores wrap `MemoryRateLimitStore`: one
 * whose block writes can be made to reject, one that shares blocks (like Redis, without the
 * clock). Bounds follow measured elapsed time and are generous (a loaded 2-core machine).
 *
 * Cases:
 *  ws, the close's grace and the heartbeat
 *   1. a handler that never replies: the 1008 close comes about closeGraceMs after the
 *      threshold, once (no stall), and within about 2 x closeGraceMs after a stall.
 *   2. socket.io: the same, the disconnect within the same bounds.
 *   3. ws: a peer that never pongs is ended (no stall / a stall right after the ping), once
 *      in ws_rate_limit_disconnects_total{reason=ping_timeout} and once in the events.
 *  handshake timeout
 *   4. (ws and socket.io) a slowloris (a header byte every 100 ms) is dropped at about the
 *      timeout, and after a stall within the stall plus two timeouts.
 *  Engine.IO's heartbeat (tolerateStalledPings)
 *   5. a silent Engine.IO peer (websocket) is ended as a ping timeout (no stall), counted once.
 *   6. the same after a stall past the timeout: ended within two timeouts after the stall,
 *      counted once.
 *   7. over HTTP long-polling, a peer that reads the ping but never posts its pong is ended
 *      as a ping timeout, counted once (a live peer through the same stall is kept).
 *   8. a gateway's own pingInterval/pingTimeout, with WS_RATE_LIMIT_PING_INTERVAL_MS=0: the
 *      gateway's figures are in force (and socket.io's own without them), the peer ended.
 *   9. a connection that closes for another reason (its peer goes; the server disconnects
 *      it) while its verdict is put off: ended once, not counted as a ping timeout, nothing
 *      fires later. Control: a peer that sends nothing is ended pingTimeout after the ping.
 *  10. (it was: BUG) without any stall, a peer that sends a packet while its pong is due (Engine.IO
 *      then extends the timeout once, by design) is kept one whole pingTimeout more: the
 *      wrapper takes the refreshed, on-time verdict for a late one.
 *  refusals in transit
 *  11. a filter of the application that never answers: the count is cleared (no stall), the
 *      connection decides messages again.
 *  12. (it was: BUG) the same under a loop late on every tick (a 600 ms job every turn): the count is
 *      never cleared while the load lasts; every message meanwhile is dropped unanswered
 *      (control: the same load without refusals in transit answers that message).
 *  operator blocks
 *  13. block, unblock, block again with another duration (longer, shorter), listBlocks values.
 *  14. expiry at the end: listed and enforced until its end, gone and admitted right after.
 *  15. a block set while Date.now is an hour ahead / behind lasts its duration, listed with
 *      the (stepped) wall-clock end.
 *  16. a block read back after the store's sync (a store sharing blocks): same end, deadline
 *      kept across a wall-clock step.
 *  17. (it was: BUG) a block given again for the same duration while the wall clock stands still
 *      (Date.now frozen) keeps the first one's deadline: the second `block` is ignored.
 *  18. (it was: BUG) a `block` the store rejects, after a forward step of the wall clock, lifts the
 *      block it should have left alone.
 *  19. (it was: BUG) an `unblock` the store rejects, after a backward step, turns a 2 s block into an
 *      hour's lockout.
 *  20. (Redis store) a forward step of the wall clock does not lift a 10 min block at the next
 *      sync. Failed on 01e9c2d (the store's list filtered by Date.now, the sync dropped what it
 *      omitted); passes with the uncommitted redis-store.ts in the working tree at review time.
 */
import { afterAll, afterEach, describe, expect, it, jest } from '@jest/globals';
import { Catch, UseFilters, type ArgumentsHost, type ExceptionFilter } from '@nestjs/common';
import {
  ConnectedSocket,
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  type OnGatewayConnection,
} from '@nestjs/websockets';
import { request as httpRequest } from 'node:http';
import { connect as netConnect, type Socket as NetSocket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { Registry } from 'prom-client';
import WebSocket from 'ws';
import {
  MemoryRateLimitStore,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitException,
  WsRateLimitFilter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { startApp, withEnv, type RunningApp } from '../support/app.js';
import { connectIo, type IoTestClient } from '../support/io-client.js';
import { metricSum } from '../support/metrics.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { sleep, TestClient, type Frame } from '../support/ws-client.js';

/** Holds the event loop of this process (the app's) for `ms`. */
function busyWait(ms: number): void {
  const started = performance.now();
  while (performance.now() - started < ms);
}

/**
 * A loaded server: a `jobMs` synchronous job in every turn of the loop (from the check
 * phase), for about `forMs`; a timer due meanwhile fires up to `jobMs` late, every time.
 */
function loadEveryTurn(jobMs: number, forMs: number): { ended: boolean } {
  const state = { ended: false };
  const endAt = performance.now() + forMs;
  const turn = (): void => {
    if (performance.now() >= endAt) {
      state.ended = true;
      return;
    }
    busyWait(jobMs);
    setImmediate(turn);
  };
  setImmediate(turn);
  return state;
}

/** Waits until `check` holds, polling; fails after `timeoutMs` (on the monotonic clock). */
async function until(check: () => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const started = performance.now();
  while (!check()) {
    if (performance.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** Handlers that never reply, released at the end of each test. */
const neverReplies: Array<() => void> = [];

/** What the socket.io side saw: Engine.IO pings written, and how connections ended. */
const io = {
  pings: [] as number[],
  ends: [] as Array<{ reason: string; at: number }>,
  sockets: [] as any[],
  /** Stall the loop for this long right after the next ping (0: no). */
  stallAfterPing: 0,
  stallEnd: 0,
};
/** The server side of every ws connection to ReviewGateway (not socket.io), newest last. */
const wsSockets: object[] = [];

/** The application's filter on `kept`: injected with ours (so it claims to hand refusals on) but never does. */
@Catch()
class KeepsRefusals implements ExceptionFilter {
  constructor(readonly rateLimit: WsRateLimitFilter) {}
  catch(exception: unknown, _host: ArgumentsHost): void {
    // A refusal is kept (logged elsewhere, say): never answered, never handed on.
    if (exception instanceof WsRateLimitException) return;
  }
}

@WebSocketGateway()
@WsRateLimit()
class ReviewGateway implements OnGatewayConnection {
  handleConnection(@ConnectedSocket() client: any): void {
    if (client.conn === undefined) {
      wsSockets.push(client);
      return;
    }
    io.sockets.push(client);
    client.once('disconnect', (reason: string) => io.ends.push({ reason, at: performance.now() }));
    client.conn.on('packetCreate', (packet: { type: string }) => {
      if (packet.type !== 'ping') return;
      io.pings.push(performance.now());
      if (io.stallAfterPing > 0) {
        const ms = io.stallAfterPing;
        io.stallAfterPing = 0;
        setImmediate(() => {
          busyWait(ms);
          io.stallEnd = performance.now();
        });
      }
    });
  }

  /** Admitted, never replied to. */
  @Throttle({ type: 'never', capacity: 10, refillRate: 0.001 })
  @SubscribeMessage('never')
  never(@MessageBody() _data: unknown) {
    return new Promise((resolve) => neverReplies.push(() => resolve(undefined)));
  }

  @Throttle({ type: 'one', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('one')
  one(@MessageBody() data: unknown) {
    return { event: 'one_ack', data };
  }

  @Throttle({ type: 'chat', capacity: 1000, refillRate: 1000 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'chat_ack', data };
  }

  /** One admitted, then refusals the application's filter keeps. */
  @Throttle({ type: 'kept', capacity: 1, refillRate: 0.001 })
  @UseFilters(KeepsRefusals)
  @SubscribeMessage('kept')
  kept(@MessageBody() data: unknown) {
    return { event: 'kept_ack', data };
  }
}

/** A gateway with socket.io heartbeat figures of its own. */
@WebSocketGateway({ pingInterval: 300, pingTimeout: 700 })
@WsRateLimit()
class OwnHeartbeatGateway implements OnGatewayConnection {
  handleConnection(@ConnectedSocket() client: any): void {
    if (client.conn === undefined) return;
    io.sockets.push(client);
    client.once('disconnect', (reason: string) => io.ends.push({ reason, at: performance.now() }));
    client.conn.on('packetCreate', (packet: { type: string }) => {
      if (packet.type === 'ping') io.pings.push(performance.now());
    });
  }

  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'chat_ack', data };
  }
}

/** A memory store whose block writes can be made to reject (Redis unavailable, say). */
class FlakyBlockStore extends MemoryRateLimitStore {
  failBlocks = false;
  override async setBlock(name: string, until: number): Promise<void> {
    if (this.failBlocks) throw new Error('store unavailable');
    return super.setBlock(name, until);
  }
  override async deleteBlock(name: string): Promise<void> {
    if (this.failBlocks) throw new Error('store unavailable');
    return super.deleteBlock(name);
  }
}

/** A memory store that shares blocks (as a shared store does), returning every one it holds. */
class SharedBlockStore extends MemoryRateLimitStore {
  readonly held = new Map<string, number>();
  override setBlock(name: string, until: number): void {
    this.held.set(name, until);
  }
  override deleteBlock(name: string): void {
    this.held.delete(name);
  }
  override listBlocks(): Readonly<Record<string, number>> {
    return Object.fromEntries(this.held);
  }
}

const BASE: WsRateLimitModuleOptions = {
  useEnv: false,
  tracker: 'connection',
  global: { capacity: 1000, refillRate: 1000 },
  connection: { capacity: 1000, refillRate: 1000 },
  violations: { max: 10, windowMs: 60_000 },
};

function resetIo(): void {
  io.pings.length = 0;
  io.ends.length = 0;
  io.sockets.length = 0;
  io.stallAfterPing = 0;
  io.stallEnd = 0;
}

/** A raw Engine.IO v4 peer over WebSocket: joins the main namespace, answers pings only if told to. */
interface RawEioPeer {
  readonly ws: WebSocket;
  readonly pings: number[];
  open: Record<string, unknown> | undefined;
  joined: boolean;
  closedAt: number | undefined;
  pong: boolean;
}

function rawEioPeer(port: number, pong = false): RawEioPeer {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`, { perMessageDeflate: false });
  const peer: RawEioPeer = { ws, pings: [], open: undefined, joined: false, closedAt: undefined, pong };
  ws.on('error', () => undefined);
  ws.on('message', (data) => {
    const text = data.toString();
    if (text.startsWith('0')) {
      peer.open = JSON.parse(text.slice(1)) as Record<string, unknown>;
      ws.send('40');
    } else if (text.startsWith('40')) {
      peer.joined = true;
    } else if (text === '2') {
      peer.pings.push(performance.now());
      if (peer.pong) ws.send('3');
    }
  });
  ws.on('close', () => (peer.closedAt = performance.now()));
  return peer;
}

/** One HTTP request (no keep-alive); the body as text. */
function http(port: number, method: string, path: string, body?: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        agent: false,
        headers: { Connection: 'close', ...(body === undefined ? {} : { 'Content-Type': 'text/plain;charset=UTF-8' }) },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

describe('session fixes review 3: event-loop stall fixes', () => {
  let running: RunningApp | undefined;
  let redis: RedisServer | undefined;
  const clients: TestClient[] = [];
  const ioClients: IoTestClient[] = [];
  const peers: RawEioPeer[] = [];
  const rawSockets: NetSocket[] = [];
  const cleanups: Array<() => void> = [];

  const start = async (
    options: WsRateLimitModuleOptions = {},
    kind: 'ws' | 'io' = 'ws',
    gateway: new (...args: any[]) => unknown = ReviewGateway,
  ) => {
    const registry = new Registry();
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ ...BASE, metricsRegistry: registry, ...options })],
        providers: [gateway],
      },
      (app) => (kind === 'ws' ? new WsRateLimitAdapter(app) : new WsRateLimitIoAdapter(app)),
    );
    const limiter = running.app.get(WsRateLimitService);
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    cleanups.push(() => subscription.unsubscribe());
    return { ...running, registry, limiter, events, httpUrl: `http://127.0.0.1:${running.port}` };
  };
  const connectWs = async (options: WebSocket.ClientOptions = {}) => {
    const client = await TestClient.connect(running!.url, { perMessageDeflate: false, ...options });
    clients.push(client);
    return client;
  };
  const peer = (port: number, pong = false) => {
    const made = rawEioPeer(port, pong);
    peers.push(made);
    return made;
  };
  const events = (frames: Frame[]) => frames.map((frame) => frame.event);
  const pingTimeouts = (events: RateLimitEvent[]) =>
    events.filter((event) => event.kind === 'disconnect' && /ping timeout/i.test(String((event as any).reason)));

  afterEach(async () => {
    jest.restoreAllMocks();
    for (const cleanup of cleanups.splice(0)) cleanup();
    for (const release of neverReplies.splice(0)) release();
    io.stallAfterPing = 0;
    for (const socket of rawSockets.splice(0)) socket.destroy();
    for (const made of peers.splice(0)) made.ws.terminate();
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (const client of ioClients.splice(0)) {
      if (client.disconnectReason !== undefined) client.close();
      else await client.closeAndSettle().catch(() => undefined);
    }
    await sleep(20);
    await running?.close();
    running = undefined;
    // After the app is gone: its last disconnects are not the next test's.
    await sleep(20);
    resetIo();
  });

  afterAll(async () => {
    await redis?.stop();
  });

  describe("the close's grace with a handler that never replies", () => {
    it.each([0, 1000])(
      'ws: the 1008 close comes once, within about 2 x closeGraceMs after a stall of %i ms at the threshold',
      async (stallMs) => {
        const graceMs = 400;
        const {
          registry,
          limiter,
          events: seen,
        } = await start({ closeGraceMs: graceMs, violations: { max: 1, windowMs: 60_000 } });
        const client = await connectWs();
        let decidedAt = 0;
        const subscription = limiter.events$.subscribe((event) => {
          if (event.kind !== 'disconnect' || decidedAt !== 0) return;
          decidedAt = performance.now();
          if (stallMs > 0) setImmediate(() => busyWait(stallMs));
        });
        cleanups.push(() => subscription.unsubscribe());
        client.inOneWrite(() => {
          client.send('never', 'n1');
          client.send('one', 'o1');
          client.send('one', 'o2');
        });
        const closed = await client.waitClose();
        const closedAt = performance.now();
        expect(closed.code).toBe(1008);
        expect(decidedAt).toBeGreaterThan(0);
        // The close waited for the silent handler: not at once...
        expect(closedAt - decidedAt).toBeGreaterThanOrEqual(graceMs - 50);
        // ...and not longer than the stall plus two graces (with slack for a loaded machine).
        expect(closedAt - decidedAt).toBeLessThanOrEqual(stallMs + 2 * graceMs + 1500);
        expect(events(client.frames)).toEqual(['one_ack', 'rate_limit']);
        await sleep(2 * graceMs);
        expect(seen.filter((event) => event.kind === 'disconnect')).toHaveLength(1);
        expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'violations' })).toBe(1);
      },
    );

    it.each([0, 1000])(
      'socket.io: the disconnect comes once, within about 2 x closeGraceMs after a stall of %i ms at the threshold',
      async (stallMs) => {
        const graceMs = 400;
        const {
          httpUrl,
          registry,
          limiter,
          events: seen,
        } = await start({ closeGraceMs: graceMs, violations: { max: 1, windowMs: 60_000 } }, 'io');
        const client = await connectIo(httpUrl, 'websocket');
        ioClients.push(client);
        let decidedAt = 0;
        const subscription = limiter.events$.subscribe((event) => {
          if (event.kind !== 'disconnect' || decidedAt !== 0) return;
          decidedAt = performance.now();
          if (stallMs > 0) setImmediate(() => busyWait(stallMs));
        });
        cleanups.push(() => subscription.unsubscribe());
        client.socket.emit('never', 'n1');
        client.socket.emit('one', 'o1');
        client.socket.emit('one', 'o2');
        await client.disconnected();
        const closedAt = performance.now();
        expect(client.disconnectReason).toBe('io server disconnect');
        expect(closedAt - decidedAt).toBeGreaterThanOrEqual(graceMs - 50);
        expect(closedAt - decidedAt).toBeLessThanOrEqual(stallMs + 2 * graceMs + 1500);
        const seenEvents = client.events.map((entry) => entry.event);
        expect(seenEvents.filter((event) => event === 'rate_limit')).toHaveLength(1);
        expect(seenEvents).toContain('one_ack');
        await sleep(2 * graceMs);
        expect(seen.filter((event) => event.kind === 'disconnect')).toHaveLength(1);
        expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'violations' })).toBe(1);
        expect(io.ends).toHaveLength(1);
      },
    );

    it.each([0, 1000])(
      'ws: a peer that never pongs is ended once (ping_timeout counted once) after a stall of %i ms right after the ping',
      async (stallMs) => {
        const pongTimeoutMs = 400;
        const { registry, events: seen } = await start({ pingIntervalMs: 200, pongTimeoutMs });
        const client = await connectWs({ autoPong: false });
        let pingAt = 0;
        let stallEnd = 0;
        client.socket.once('ping', () => {
          pingAt = performance.now();
          if (stallMs > 0) {
            setImmediate(() => {
              busyWait(stallMs);
              stallEnd = performance.now();
            });
          }
        });
        await client.waitClose(10_000);
        const closedAt = performance.now();
        expect(pingAt).toBeGreaterThan(0);
        const from = stallMs > 0 ? stallEnd : pingAt;
        expect(closedAt - pingAt).toBeGreaterThanOrEqual(pongTimeoutMs - 50);
        expect(closedAt - from).toBeLessThanOrEqual(2 * pongTimeoutMs + 1500);
        await sleep(300);
        expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'ping_timeout' })).toBe(1);
        expect(pingTimeouts(seen)).toHaveLength(1);
      },
    );
  });

  describe.each(['ws', 'io'] as const)('handshake timeout (%s): a slowloris', (kind) => {
    it.each([0, 1000])(
      'is dropped, within the stall (%i ms) plus two timeouts, and not before the timeout',
      async (stallMs) => {
        const timeoutMs = 600;
        const { port } = await start({ handshakeTimeoutMs: timeoutMs }, kind);
        const server = running!.app.getHttpServer();
        const accepted = new Promise<void>((resolve) => server.once('connection', () => resolve()));
        const socket = netConnect({ port, host: '127.0.0.1' });
        rawSockets.push(socket);
        let endedAt = 0;
        let answered = '';
        socket.on('error', () => undefined);
        socket.on('data', (chunk) => (answered += chunk.toString('latin1')));
        socket.on('close', () => (endedAt = performance.now()));
        await Promise.all([accepted, new Promise<void>((resolve) => socket.once('connect', () => resolve()))]);
        const began = performance.now();
        const path = kind === 'ws' ? '/' : '/socket.io/?EIO=4&transport=websocket';
        socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n`);
        // A header byte every 100 ms: never a whole request.
        const drip = setInterval(() => {
          if (!socket.destroyed) socket.write('X');
        }, 100);
        cleanups.push(() => clearInterval(drip));
        if (stallMs > 0) busyWait(stallMs);
        await until(() => endedAt !== 0, 10_000, 'the slow handshake to be dropped');
        clearInterval(drip);
        expect(answered).not.toMatch(/^HTTP\/1\.1 101/);
        expect(endedAt - began).toBeGreaterThanOrEqual(timeoutMs - 50);
        expect(endedAt - began).toBeLessThanOrEqual(stallMs + 2 * timeoutMs + 1500);
      },
    );
  });

  describe("Engine.IO's heartbeat with tolerateStalledPings", () => {
    it('a silent peer (websocket) is ended as a ping timeout within pingInterval + pingTimeout, counted once', async () => {
      const { port, registry, events: seen } = await start({ pingIntervalMs: 300, pongTimeoutMs: 500 }, 'io');
      const silent = peer(port);
      await until(() => silent.joined, 10_000, 'the peer to join');
      const joinedAt = performance.now();
      await until(() => silent.closedAt !== undefined, 10_000, 'the silent peer to be ended');
      expect(silent.closedAt! - joinedAt).toBeLessThanOrEqual(300 + 500 + 1500);
      expect(io.pings.length).toBeGreaterThanOrEqual(1);
      expect(silent.closedAt! - io.pings[0]!).toBeGreaterThanOrEqual(500 - 50);
      await sleep(700);
      expect(io.ends.map((end) => end.reason)).toEqual(['ping timeout']);
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'ping_timeout' })).toBe(1);
      expect(pingTimeouts(seen)).toHaveLength(1);
    });

    it('a silent peer after a stall past the timeout is ended within two timeouts after the stall, counted once', async () => {
      const timeoutMs = 500;
      const { port, registry, events: seen } = await start({ pingIntervalMs: 300, pongTimeoutMs: timeoutMs }, 'io');
      const silent = peer(port);
      await until(() => silent.joined, 10_000, 'the peer to join');
      io.stallAfterPing = 1200;
      await until(() => io.ends.length > 0, 10_000, 'the silent peer to be ended');
      expect(io.stallEnd).toBeGreaterThan(0);
      const end = io.ends[0]!;
      expect(end.reason).toBe('ping timeout');
      // Put off once (the verdict came 700 ms late), not more.
      expect(end.at - io.stallEnd).toBeLessThanOrEqual(2 * timeoutMs + 1200);
      await sleep(2 * timeoutMs);
      expect(io.ends).toHaveLength(1);
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'ping_timeout' })).toBe(1);
      expect(pingTimeouts(seen)).toHaveLength(1);
    });

    it('a live peer (it pongs) through a stall past the timeout is kept', async () => {
      const { port } = await start({ pingIntervalMs: 300, pongTimeoutMs: 500 }, 'io');
      const live = peer(port, true);
      await until(() => live.joined, 10_000, 'the peer to join');
      io.stallAfterPing = 1200;
      await until(() => io.stallEnd > 0, 10_000, 'the stall');
      await sleep(1500);
      expect(io.ends).toEqual([]);
      expect(live.closedAt).toBeUndefined();
      expect(live.pings.length).toBeGreaterThanOrEqual(2);
    });

    it('over long-polling, a peer that reads the ping but never posts its pong is ended as a ping timeout, counted once', async () => {
      const { port, registry, events: seen } = await start({ pingIntervalMs: 300, pongTimeoutMs: 500 }, 'io');
      const handshake = await http(port, 'GET', '/socket.io/?EIO=4&transport=polling');
      expect(handshake.status).toBe(200);
      const open = JSON.parse(handshake.text.slice(handshake.text.indexOf('{'))) as { sid: string };
      const posted = await http(port, 'POST', `/socket.io/?EIO=4&transport=polling&sid=${open.sid}`, '40');
      expect(posted.status).toBe(200);
      const began = performance.now();
      // The peer keeps a poll waiting (it reads the ping) but never posts the pong. (A peer
      // that stops polling altogether leaves Engine.IO's own 30 s closeTimeout behind it.)
      const received: string[] = [];
      for (let poll = 0; poll < 10; poll++) {
        const answer = await http(port, 'GET', `/socket.io/?EIO=4&transport=polling&sid=${open.sid}`);
        received.push(...answer.text.split('\x1e'));
        if (answer.status !== 200 || received.includes('1') || io.ends.length > 0) break;
      }
      await until(() => io.ends.length > 0, 10_000, 'the polling peer to be ended');
      expect(received).toContain('2');
      expect(io.ends[0]!.reason).toBe('ping timeout');
      expect(io.ends[0]!.at - began).toBeLessThanOrEqual(300 + 500 + 1500);
      await sleep(700);
      expect(io.ends).toHaveLength(1);
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'ping_timeout' })).toBe(1);
      expect(pingTimeouts(seen)).toHaveLength(1);
    });

    it("WS_RATE_LIMIT_PING_INTERVAL_MS=0: socket.io's own figures stay, and a gateway's own pingInterval/pingTimeout are in force", async () => {
      await withEnv({ WS_RATE_LIMIT_PING_INTERVAL_MS: '0' }, async () => {
        const { port } = await start({ useEnv: true }, 'io');
        const plain = peer(port, true);
        await until(() => plain.joined, 10_000, 'the peer to join');
        expect(plain.open).toMatchObject({ pingInterval: 25_000, pingTimeout: 20_000 });
      });
      await running!.close();
      running = undefined;
      await sleep(20);
      resetIo();
      await withEnv({ WS_RATE_LIMIT_PING_INTERVAL_MS: '0' }, async () => {
        const { port, registry, events: seen } = await start({ useEnv: true }, 'io', OwnHeartbeatGateway);
        const silent = peer(port);
        await until(() => silent.joined, 10_000, 'the peer to join');
        expect(silent.open).toMatchObject({ pingInterval: 300, pingTimeout: 700 });
        await until(() => io.ends.length > 0, 10_000, 'the silent peer to be ended');
        expect(io.ends[0]!.reason).toBe('ping timeout');
        expect(io.ends[0]!.at - io.pings[0]!).toBeGreaterThanOrEqual(700 - 50);
        expect(io.ends[0]!.at - io.pings[0]!).toBeLessThanOrEqual(700 + 1500);
        await sleep(500);
        expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'ping_timeout' })).toBe(1);
        expect(pingTimeouts(seen)).toHaveLength(1);
      });
    });

    it('a connection whose peer goes while its late verdict is put off ends once, as a transport close, and nothing fires later', async () => {
      const timeoutMs = 500;
      const { port, registry, events: seen } = await start({ pingIntervalMs: 300, pongTimeoutMs: timeoutMs }, 'io');
      const silent = peer(port);
      await until(() => silent.joined, 10_000, 'the peer to join');
      await until(() => io.pings.length === 1, 10_000, 'a ping');
      // A stall past the timeout, at whose end the peer goes: the verdict (read first, in the
      // timers phase) is put off; the close is read after it.
      setImmediate(() => {
        busyWait(1200);
        silent.ws.terminate();
      });
      await until(() => io.ends.length > 0, 10_000, 'the connection to end');
      await sleep(3 * timeoutMs);
      expect(io.ends.map((end) => end.reason)).toEqual(['transport close']);
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'ping_timeout' })).toBe(0);
      expect(pingTimeouts(seen)).toHaveLength(0);
    });

    it('a connection the server ends while its late verdict is put off ends once, and is not counted as a ping timeout', async () => {
      const timeoutMs = 500;
      const { port, registry, events: seen } = await start({ pingIntervalMs: 300, pongTimeoutMs: timeoutMs }, 'io');
      const silent = peer(port);
      await until(() => silent.joined, 10_000, 'the peer to join');
      await until(() => io.pings.length === 1, 10_000, 'a ping');
      const socket = io.sockets[0];
      setImmediate(() => {
        busyWait(1200);
        // The verdict runs in the timers phase of the next turn; this after it.
        setImmediate(() => socket.disconnect(true));
      });
      await until(() => io.ends.length > 0, 10_000, 'the connection to end');
      await sleep(3 * timeoutMs);
      expect(io.ends.map((end) => end.reason)).toEqual(['server namespace disconnect']);
      expect(silent.closedAt).toBeDefined();
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'ping_timeout' })).toBe(0);
      expect(pingTimeouts(seen)).toHaveLength(0);
    });

    it('control: without a stall, a peer that never pongs (and sends nothing) is ended pingTimeout after the ping', async () => {
      const timeoutMs = 2000;
      await start({ pingIntervalMs: 300, pongTimeoutMs: timeoutMs }, 'io');
      const port = running!.port;
      const silent = peer(port);
      await until(() => silent.joined, 10_000, 'the peer to join');
      await until(() => io.ends.length > 0, 15_000, 'the silent peer to be ended');
      expect(io.ends[0]!.reason).toBe('ping timeout');
      expect(io.ends[0]!.at - io.pings[0]!).toBeLessThanOrEqual(timeoutMs + 1000);
    });

    it('without a stall, a peer that sends an event while its pong is due (Engine.IO extends the timeout once) is ended when that timeout runs out, not one more pingTimeout later (it was: BUG)', async () => {
      const timeoutMs = 2000;
      await start({ pingIntervalMs: 300, pongTimeoutMs: timeoutMs }, 'io');
      const silent = peer(running!.port);
      await until(() => silent.joined, 10_000, 'the peer to join');
      await until(() => silent.pings.length === 1, 10_000, 'a ping');
      // 1.7 s into the 2 s pong timeout, the peer sends an event (its pong never comes).
      // Engine.IO refreshes its ping timeout once on a packet received while waiting for the
      // pong ("got packet while waiting for pong"): the verdict is due 2 s after the event.
      await sleep(1700);
      const sentAt = performance.now();
      silent.ws.send('42["chat","while the pong is due"]');
      await until(() => io.ends.length > 0, 15_000, 'the peer to be ended');
      expect(io.ends[0]!.reason).toBe('ping timeout');
      // Engine.IO's verdict came on time (the loop never stalled): expected, the end about
      // pingTimeout after the event. Actual: tolerateStalledPings measures lateness from the
      // ping (not from the refreshed timer), takes the on-time verdict (1.7 s "late") for a
      // stalled one and keeps the peer a whole pingTimeout more (about 3.7 s after the event).
      expect(io.ends[0]!.at - sentAt).toBeLessThanOrEqual(timeoutMs + 1000);
    });
  });

  describe('refusals in transit that a filter of the application never answers (ws)', () => {
    it('the count is cleared after the grace: the connection decides and answers messages again', async () => {
      const { limiter } = await start({ violations: { max: 2, windowMs: 60_000 } });
      const client = await connectWs();
      client.inOneWrite(() => {
        for (let i = 1; i <= 3; i++) client.send('kept', i);
      });
      await client.waitForEvent('kept_ack');
      // Until the sweep has cleared the count (a grace of 250 ms, more when this machine
      // stalls: a look from a late timer waits a grace again), then the probe.
      const server = wsSockets[wsSockets.length - 1]!;
      await sleep(300);
      await until(() => limiter.connectionOf(server).pendingRejections === 0, 10_000, 'the count to be cleared');
      client.send('chat', 'after the grace');
      const [answer] = await client.waitForEvent('chat_ack');
      expect(answer!.data).toBe('after the grace');
      expect(client.socket.readyState).toBe(WebSocket.OPEN);
    });

    it('control: under the same load without refusals in transit, a message meanwhile is answered', async () => {
      await start({ violations: { max: 2, windowMs: 60_000 } });
      const client = await connectWs();
      const load = loadEveryTurn(600, 4800);
      await sleep(2000);
      expect(load.ended).toBe(false);
      client.send('chat', 'during the load');
      await until(() => load.ended, 15_000, 'the load to end');
      await client.waitFor((frame) => frame.data === 'during the load', 1, 10_000);
      expect(client.frames.map((frame) => frame.event)).toEqual(['chat_ack']);
    });

    it('under a loop late on every tick the count is still cleared (waits once more, only once): a message meanwhile is answered (it was: BUG)', async () => {
      await start({ violations: { max: 2, windowMs: 60_000 } });
      const client = await connectWs();
      client.inOneWrite(() => {
        for (let i = 1; i <= 3; i++) client.send('kept', i);
      });
      await client.waitForEvent('kept_ack');
      // A loaded server: each turn of the loop runs a 600 ms job (timers due meanwhile fire
      // about 350 ms late, more than half the 250 ms grace), for about 4.8 s.
      const load = loadEveryTurn(600, 4800);
      // Eight grace periods into the load (the loop turning all along), a message.
      await sleep(2000);
      expect(load.ended).toBe(false);
      client.send('chat', 'during the load');
      await until(() => load.ended, 15_000, 'the load to end');
      await sleep(1000);
      client.send('chat', 'after the load');
      await client.waitFor((frame) => frame.data === 'after the load', 1, 10_000);
      // README ("When the event loop stalls"): the sweep of refusals in transit waits its
      // period once more when late, "only once, so a loop late on every tick still" gets it.
      // Actual (in-transit.ts): a look from a late timer always waits again; the count of
      // the two kept refusals stood through the whole load, and 'during the load' was
      // dropped unanswered (the close counted as decided).
      expect(client.frames.filter((frame) => frame.data === 'during the load').map((frame) => frame.event)).toEqual([
        'chat_ack',
      ]);
    });
  });

  describe('operator blocks (memory store)', () => {
    const blocked = (frame: Frame) => frame.event === 'rate_limit' && frame.data?.code === 'BLOCKED';
    /** Sends a chat and returns the frame answering it (a reply or a rate_limit frame). */
    const ask = async (client: TestClient, label: string): Promise<Frame> => {
      const before = client.frames.length;
      client.send('chat', label);
      const [frame] = await client.waitFor((candidate) => client.frames.indexOf(candidate) >= before, 1, 10_000);
      return frame!;
    };

    it('block, unblock, block again longer and shorter: listBlocks and retryAfter follow each', async () => {
      const { limiter } = await start();
      const client = await connectWs();
      let before = Date.now();
      await limiter.block('127.0.0.1', 60_000);
      let after = Date.now();
      const first = limiter.listBlocks()['ip:127.0.0.1']!;
      expect(first).toBeGreaterThanOrEqual(before + 60_000);
      expect(first).toBeLessThanOrEqual(after + 60_000);
      let frame = await ask(client, 'a');
      expect(blocked(frame)).toBe(true);
      expect(frame.data.retryAfter).toBeLessThanOrEqual(60_000);
      expect(frame.data.retryAfter).toBeGreaterThan(55_000);

      await limiter.unblock('127.0.0.1');
      expect(limiter.listBlocks()).toEqual({});
      expect((await ask(client, 'b')).event).toBe('chat_ack');

      before = Date.now();
      await limiter.block('127.0.0.1', 1500);
      after = Date.now();
      const second = limiter.listBlocks()['ip:127.0.0.1']!;
      expect(second).toBeGreaterThanOrEqual(before + 1500);
      expect(second).toBeLessThanOrEqual(after + 1500);
      frame = await ask(client, 'c');
      expect(blocked(frame)).toBe(true);
      expect(frame.data.retryAfter).toBeLessThanOrEqual(1500);

      // Longer, without unblocking first.
      await limiter.block('127.0.0.1', 90_000);
      frame = await ask(client, 'd');
      expect(frame.data.retryAfter).toBeGreaterThan(85_000);
      // Shorter, without unblocking first.
      await limiter.block('127.0.0.1', 800);
      const third = limiter.listBlocks()['ip:127.0.0.1']!;
      expect(third).toBeLessThanOrEqual(Date.now() + 800);
      frame = await ask(client, 'e');
      expect(frame.data.retryAfter).toBeLessThanOrEqual(800);
      await sleep(1000);
      expect(limiter.listBlocks()).toEqual({});
      expect((await ask(client, 'f')).event).toBe('chat_ack');
    });

    it('a block is listed and enforced until its end, and gone (admitted) right after it', async () => {
      const { limiter } = await start();
      const client = await connectWs();
      await limiter.block('127.0.0.1', 700);
      const end = limiter.listBlocks()['ip:127.0.0.1']!;
      // Well before the end: listed, refused with a retryAfter that reaches the end.
      const frame = await ask(client, 'before');
      expect(blocked(frame)).toBe(true);
      expect(Date.now() + frame.data.retryAfter).toBeGreaterThanOrEqual(end - 50);
      // Polls the list: it goes at the end (within the clocks' drift and a poll).
      await until(() => limiter.listBlocks()['ip:127.0.0.1'] === undefined, 5000, 'the block to end');
      const goneAt = Date.now();
      expect(goneAt).toBeGreaterThanOrEqual(end - 5);
      expect(goneAt).toBeLessThanOrEqual(end + 500);
      expect((await ask(client, 'after')).event).toBe('chat_ack');
    });

    it.each([
      ['ahead', 3_600_000],
      ['behind', -3_600_000],
    ])(
      'a block set while Date.now is an hour %s lasts its duration and lists the wall-clock end it was given',
      async (_, offset) => {
        const { limiter } = await start();
        const client = await connectWs();
        const real = Date.now.bind(Date);
        const spy = jest.spyOn(Date, 'now').mockImplementation(() => real() + offset);
        const before = Date.now();
        await limiter.block('127.0.0.1', 1500);
        const listed = limiter.listBlocks()['ip:127.0.0.1']!;
        expect(listed).toBeGreaterThanOrEqual(before + 1500);
        expect(listed).toBeLessThanOrEqual(Date.now() + 1500);
        // The clock is put right.
        spy.mockRestore();
        const frame = await ask(client, 'blocked');
        expect(blocked(frame)).toBe(true);
        expect(frame.data.retryAfter).toBeLessThanOrEqual(1500);
        await sleep(1700);
        expect((await ask(client, 'after')).event).toBe('chat_ack');
        expect(limiter.listBlocks()).toEqual({});
      },
    );

    it('a block read back after the sync of a store that shares blocks keeps its end and its deadline across a forward step', async () => {
      const store = new SharedBlockStore();
      const { limiter } = await start({ store });
      const client = await connectWs();
      await limiter.block('127.0.0.1', 600_000);
      const end = limiter.listBlocks()['ip:127.0.0.1']!;
      expect(store.held.get('ip:127.0.0.1')).toBe(end);
      const real = Date.now.bind(Date);
      jest.spyOn(Date, 'now').mockImplementation(() => real() + 3_600_000);
      // At least one sync (every second) reads it back.
      await sleep(2200);
      expect(limiter.listBlocks()).toEqual({ 'ip:127.0.0.1': end });
      const frame = await ask(client, 'after the sync');
      expect(blocked(frame)).toBe(true);
      expect(frame.data.retryAfter).toBeGreaterThan(590_000);
      expect(frame.data.retryAfter).toBeLessThanOrEqual(600_000);
    });

    it('a block given again for the same duration while Date.now stands still (frozen) starts over; it kept the first deadline (it was: BUG)', async () => {
      const { limiter } = await start();
      const client = await connectWs();
      jest.spyOn(Date, 'now').mockReturnValue(Date.now());
      await limiter.block('127.0.0.1', 10_000);
      const firstAt = performance.now();
      await sleep(3000);
      // The operator blocks the address again, for 10 s from now.
      await limiter.block('127.0.0.1', 10_000);
      const secondAt = performance.now();
      expect(secondAt - firstAt).toBeGreaterThanOrEqual(2900);
      const frame = await ask(client, 'blocked');
      expect(blocked(frame)).toBe(true);
      // Expected: about 10 s left (`block` is "for durationMs"). Actual: the wall-clock end
      // is the same number, so blocks.ts `held()` keeps the first block's deadline (7 s).
      expect(frame.data.retryAfter).toBeGreaterThan(10_000 - (performance.now() - secondAt) - 200);
    });

    it('a block the store rejects, after a forward step of the wall clock, leaves the block in force as it was (it was: BUG)', async () => {
      const store = new FlakyBlockStore();
      const { limiter } = await start({ store });
      const client = await connectWs();
      await limiter.block('127.0.0.1', 600_000);
      const end = limiter.listBlocks()['ip:127.0.0.1']!;
      const real = Date.now.bind(Date);
      jest.spyOn(Date, 'now').mockImplementation(() => real() + 3_600_000);
      store.failBlocks = true;
      await expect(limiter.block('127.0.0.1', 5_000)).rejects.toThrow('store unavailable');
      // README: "A block or unblock that rejects ... changes nothing, on this instance either",
      // and a step of the wall clock does not lift a block early. Actual (operator-blocks.ts
      // `write` restores the old end through `Blocks.set`, which makes a new deadline from
      // the stepped Date.now): the 10 min block is over.
      expect(limiter.listBlocks()).toEqual({ 'ip:127.0.0.1': end });
      const frame = await ask(client, 'still blocked');
      expect(blocked(frame)).toBe(true);
    });

    it('an unblock the store rejects, after a backward step of the wall clock, leaves a 2 s block a 2 s block (no lockout) (it was: BUG)', async () => {
      const store = new FlakyBlockStore();
      const { limiter } = await start({ store });
      const client = await connectWs();
      await limiter.block('127.0.0.1', 2000);
      const real = Date.now.bind(Date);
      jest.spyOn(Date, 'now').mockImplementation(() => real() - 3_600_000);
      store.failBlocks = true;
      await expect(limiter.unblock('127.0.0.1')).rejects.toThrow('store unavailable');
      const frame = await ask(client, 'blocked');
      expect(blocked(frame)).toBe(true);
      // Expected: at most the 2 s given. Actual: about 3,602,000 ms (the restored end is
      // turned into a deadline on the stepped wall clock).
      expect(frame.data.retryAfter).toBeLessThanOrEqual(2000);
    });
  });

  describe('operator blocks (Redis store)', () => {
    it('a forward step of the wall clock does not lift a 10 min block at the next sync (failed on 01e9c2d)', async () => {
      redis ??= await startRedis();
      const { limiter } = await start({ store: 'redis', redis: { url: redis.url } });
      const client = await connectWs();
      await limiter.block('127.0.0.1', 600_000);
      const end = limiter.listBlocks()['ip:127.0.0.1']!;
      const real = Date.now.bind(Date);
      jest.spyOn(Date, 'now').mockImplementation(() => real() + 3_600_000);
      await sleep(2200);
      const before = client.frames.length;
      client.send('chat', 'after the step');
      const [frame] = await client.waitFor((candidate) => client.frames.indexOf(candidate) >= before, 1, 10_000);
      // README: each instance enforces the end on its monotonic clock from when it learns it,
      // "so a step of the wall clock afterwards neither stretches a block nor lifts it early".
      // On 01e9c2d: RedisRateLimitStore.listBlocks dropped ends before its (stepped) Date.now,
      // and OperatorBlocks.sync replaced the blocks with that list: the block was gone within a
      // second. (Passes with the uncommitted redis-store.ts of the working tree at review time.)
      expect(limiter.listBlocks()).toEqual({ 'ip:127.0.0.1': end });
      expect(frame!.data?.code).toBe('BLOCKED');
    });
  });
});
