/**
 * Adversarial review of a connection's life after the upgrade (rate limits aside):
 *
 * - the heartbeat (lib/connection/heartbeat.ts): a peer that answers late but within
 *   `pongTimeoutMs` and a server whose event loop is held up past the deadline keep their
 *   connection, a silent peer is ended once; `pingIntervalMs: 0` pings nobody; on socket.io,
 *   whether the module's ping options reach socket.io's own heartbeat;
 * - slow consumers: cut off with the documented close (event 1008 `Slow consumer`, client
 *   sees 1006), counted once whichever path finds them, on ws and socket.io; a reader that
 *   pauses below the threshold loses nothing;
 * - payload limits: a frame of exactly `maxPayload` bytes is admitted and one byte more closes
 *   with 1009 without a decision, for text, binary, fragmented and compressed frames; on
 *   socket.io, `maxHttpBufferSize` at the boundary (WebSocket packets, long-polling bodies,
 *   an event's binary attachments);
 * - the frame hold (lib/connection/frame-hold.ts): frames held while an asynchronous
 *   decision waits are all answered in order, and a flood while holding stays bounded;
 * - timers: the heartbeat's interval and the per-connection timers are gone after
 *   `app.close()`, over several start/close cycles and many connect/close cycles;
 * - the options and variables of this area: every invalid value stops start-up naming it.
 *
 * Three cases failed on the reviewed code, all on socket.io, and are fixed:
 * `pingIntervalMs`/`pongTimeoutMs` and `perMessageDeflate` did not reach socket.io
 * (`WsRateLimitIoAdapter.createIOServer` now passes them as Engine.IO's `pingInterval`,
 * `pingTimeout` and `perMessageDeflate`, a gateway's own winning), and a peer Engine.IO's
 * heartbeat ended was not counted as `ping_timeout` (now counted and streamed as on ws).
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { ConfigModule } from '@nestjs/config';
import { Test } from '@nestjs/testing';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { createHook } from 'node:async_hooks';
import { request as httpRequest } from 'node:http';
import { performance } from 'node:perf_hooks';
import { Registry } from 'prom-client';
import WebSocket from 'ws';
import {
  ENV_VARIABLES,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, withEnv, type RunningApp } from '../../support/app.js';
import { metricSum } from '../../support/metrics.js';
import { settle, sleep, TestClient } from '../../support/ws-client.js';

const NO_ENV = Object.fromEntries(ENV_VARIABLES.map((variable) => [variable.name, undefined]));

/** Echo, a handler that holds the event loop, and one that streams big frames past the limiter. */
@WebSocketGateway()
@WsRateLimit()
class LifecycleGateway {
  static handled: unknown[] = [];

  @Throttle({ type: 'echo', capacity: 10_000, refillRate: 10_000 })
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    LifecycleGateway.handled.push(data);
    return { event: 'echo', data };
  }

  /** Busy-waits `ms` milliseconds: a handler that holds the event loop (a big JSON parse, a sync crypto call). */
  @SubscribeMessage('block')
  block(@MessageBody() ms: number) {
    const end = performance.now() + ms;
    while (performance.now() < end) {
      // busy
    }
    return { event: 'blocked', data: ms };
  }

  /** Pushes `count` frames of `size` bytes straight to the socket (a server streaming data). */
  @Throttle({ type: 'blast', capacity: 1000, refillRate: 1000 })
  @SubscribeMessage('blast')
  blast(@ConnectedSocket() client: object, @MessageBody() data: { count: number; size: number }) {
    const chunk = 'x'.repeat(data.size);
    const io = client as { conn?: unknown; emit(event: string, data: unknown): void };
    for (let i = 0; i < data.count; i++) {
      if (io.conn !== undefined) io.emit('chunk', chunk);
      else (client as WebSocket).send(chunk);
    }
  }
}

/** Answers `held` frames (their decisions wait on the gated tracker). */
@WebSocketGateway()
@WsRateLimit()
class HeldGateway {
  @Throttle({ type: 'held', capacity: 10_000, refillRate: 10_000 })
  @SubscribeMessage('held')
  held(@MessageBody() data: unknown) {
    return { event: 'held', data };
  }
}

/** socket.io's own heartbeat set fast on the gateway. */
@WebSocketGateway({ pingInterval: 200, pingTimeout: 200 })
@WsRateLimit()
class FastPingGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}

/** A tracker whose answer waits on a gate the test opens (an asynchronous tracker, or a store round trip). */
const gate = {
  open: true,
  waiters: [] as Array<() => void>,
  calls: 0,
  close(): void {
    this.open = false;
    this.calls = 0;
  },
  release(): void {
    this.open = true;
    for (const wake of this.waiters.splice(0)) wake();
  },
  async tracker(): Promise<string> {
    gate.calls++;
    if (!gate.open) await new Promise<void>((resolve) => gate.waiters.push(resolve));
    return 'gated-user';
  },
};

const BASE: WsRateLimitModuleOptions = {
  useEnv: false,
  tracker: 'connection',
  connection: { capacity: 10_000, refillRate: 10_000 },
  global: { capacity: 10_000, refillRate: 10_000 },
  violations: { max: 1000, windowMs: 60_000 },
};

/** The JSON text of an `echo` message padded to exactly `bytes` bytes. */
function echoFrame(bytes: number): string {
  const empty = JSON.stringify({ event: 'echo', data: '' });
  if (bytes < empty.length) throw new Error(`no echo frame fits in ${bytes} bytes`);
  return JSON.stringify({ event: 'echo', data: 'x'.repeat(bytes - empty.length) });
}

/** One HTTP request on a connection of its own (no keep-alive left behind): status and body. */
function http(url: string, method = 'GET', body?: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(url, { method, agent: false }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode!, text: Buffer.concat(chunks).toString() }));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(body);
  });
}

/** Waits until `check` holds, or fails after `timeoutMs` naming `what`. */
async function until(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** A raw `ws` socket, open. */
async function rawWs(url: string, options: WebSocket.ClientOptions = {}): Promise<WebSocket> {
  const socket = new WebSocket(url, options);
  socket.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    socket.once('open', () => resolve());
    socket.once('error', reject);
  });
  return socket;
}

/** A raw Engine.IO session over WebSocket: joins `/`; `answerPings: false` never answers a ping. */
interface RawIo {
  socket: WebSocket;
  frames: string[];
  closed: Promise<number>;
  isClosed(): boolean;
}
async function rawIo(port: number, answerPings = true): Promise<RawIo> {
  const socket = new WebSocket(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`);
  socket.on('error', () => undefined);
  const frames: string[] = [];
  let closedCode: number | undefined;
  const closed = new Promise<number>((resolve) =>
    socket.once('close', (code: number) => {
      closedCode = code;
      resolve(code);
    }),
  );
  socket.on('message', (data: Buffer, binary: boolean) => {
    const text = binary ? `<binary ${data.length}>` : data.toString();
    if (text === '2' && answerPings) socket.send('3');
    frames.push(text);
  });
  await until(() => frames.some((frame) => frame.startsWith('0{')), 'the Engine.IO open packet');
  socket.send('40');
  await until(() => frames.some((frame) => frame.startsWith('40{')), 'the namespace connect');
  return { socket, frames, closed, isClosed: () => closedCode !== undefined };
}

/**
 * Live intervals and timeouts created while tracking, by async id; timers the test itself
 * made (its sleeps and waits, its clients' calls) are left out: their stacks pass through test/.
 */
function trackTimers() {
  const intervals = new Set<number>();
  const timeouts = new Set<number>();
  const stacks = new Map<number, string>();
  const hook = createHook({
    init(id, type, _trigger, resource) {
      if (type !== 'Timeout') return;
      const stack = new Error().stack ?? '';
      // The frame that called setTimeout / setInterval: the test's own, or the app's.
      const lines = stack.split('\n');
      const at = lines.findIndex((line) => /at (setTimeout|setInterval) /.test(line));
      if (at >= 0 && lines[at + 1]?.includes('/test/')) return;
      if ((resource as { _repeat?: unknown })._repeat) intervals.add(id);
      else timeouts.add(id);
      stacks.set(id, `${(resource as { _idleTimeout?: number })._idleTimeout} ms: ${stack}`);
    },
    destroy(id) {
      intervals.delete(id);
      timeouts.delete(id);
      stacks.delete(id);
    },
  }).enable();
  return { intervals, timeouts, stacks, stop: () => hook.disable() };
}

describe('connection lifecycle review (WsRateLimitAdapter)', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];
  const raws: WebSocket[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}, providers: unknown[] = [LifecycleGateway]) => {
    LifecycleGateway.handled = [];
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ ...BASE, ...options })], providers: providers as never[] },
      (app) => new WsRateLimitAdapter(app),
    );
    const limiter = running.app.get(WsRateLimitService);
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const close = running.close;
    running.close = async () => {
      subscription.unsubscribe();
      await close();
    };
    return { limiter, events, decisions: () => events.filter((event) => event.kind === 'decision').length };
  };
  const connect = async (options: WebSocket.ClientOptions = {}) => {
    const client = await TestClient.connect(running!.url, { perMessageDeflate: false, ...options });
    clients.push(client);
    return client;
  };
  const raw = async (options: WebSocket.ClientOptions = {}) => {
    const socket = await rawWs(running!.url, { perMessageDeflate: false, ...options });
    raws.push(socket);
    return socket;
  };

  afterEach(async () => {
    gate.release();
    for (const socket of raws.splice(0)) socket.terminate();
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  describe('payload limit (maxPayload)', () => {
    const LIMIT = 4096;

    it('a text frame of exactly maxPayload bytes is answered; one byte more closes 1009 with no decision', async () => {
      const { decisions } = await start({ maxPayload: LIMIT });
      const client = await connect();
      client.sendRaw(echoFrame(LIMIT));
      await client.waitForEvent('echo');
      expect(decisions()).toBe(1);
      client.sendRaw(echoFrame(LIMIT + 1));
      expect((await client.waitClose()).code).toBe(1009);
      await sleep(100);
      expect(decisions()).toBe(1);
      expect(LifecycleGateway.handled).toHaveLength(1);
    });

    it('a binary frame: exactly maxPayload bytes is routed, one byte more closes 1009', async () => {
      const { decisions } = await start({ maxPayload: LIMIT });
      const client = await connect();
      client.sendRaw(Buffer.from(echoFrame(LIMIT)));
      await client.waitForEvent('echo');
      client.sendRaw(Buffer.from(echoFrame(LIMIT + 1)));
      expect((await client.waitClose()).code).toBe(1009);
      await sleep(100);
      expect(decisions()).toBe(1);
    });

    it('a fragmented message is limited as a whole: maxPayload across fragments passes, +1 closes 1009', async () => {
      const { decisions } = await start({ maxPayload: LIMIT });
      const client = await connect();
      const send = (text: string) => {
        const third = Math.floor(text.length / 3);
        client.socket.send(text.slice(0, third), { fin: false });
        client.socket.send(text.slice(third, 2 * third), { fin: false });
        client.socket.send(text.slice(2 * third), { fin: true });
      };
      send(echoFrame(LIMIT));
      await client.waitForEvent('echo');
      // No fragment is over the limit on its own: only the message is.
      send(echoFrame(LIMIT + 1));
      expect((await client.waitClose()).code).toBe(1009);
      await sleep(100);
      expect(decisions()).toBe(1);
    });

    it('compressed frames are limited after inflation: exactly maxPayload inflated passes, +1 closes 1009', async () => {
      const { decisions } = await start({ maxPayload: LIMIT, perMessageDeflate: true });
      const client = await connect({ perMessageDeflate: { threshold: 0 } });
      const at = echoFrame(LIMIT);
      client.sendRaw(at);
      await client.waitForEvent('echo');
      expect(client.frames[0]!.data).toHaveLength((JSON.parse(at) as { data: string }).data.length);
      client.sendRaw(echoFrame(LIMIT + 1));
      expect((await client.waitClose()).code).toBe(1009);
      await sleep(100);
      expect(decisions()).toBe(1);
    });

    it('the oversized frame of one client does not touch another connection', async () => {
      await start({ maxPayload: LIMIT });
      const big = await connect();
      const other = await connect();
      big.sendRaw(echoFrame(LIMIT + 1));
      expect((await big.waitClose()).code).toBe(1009);
      other.sendRaw(echoFrame(LIMIT));
      await other.waitForEvent('echo');
    });
  });

  describe('heartbeat', () => {
    it('a peer that answers every ping late, but within pongTimeoutMs, is never ended', async () => {
      const { limiter, events } = await start({ pingIntervalMs: 200, pongTimeoutMs: 1500 });
      const socket = await raw({ autoPong: false });
      let pings = 0;
      socket.on('ping', () => {
        pings++;
        // A third of the timeout: late, never too late.
        setTimeout(() => socket.readyState === WebSocket.OPEN && socket.pong(), 500);
      });
      await until(() => pings >= 5, '5 pings', 20_000);
      expect(socket.readyState).toBe(WebSocket.OPEN);
      expect(limiter.stats().connections).toBe(1);
      expect(events.filter((event) => event.kind === 'disconnect')).toEqual([]);
    });

    it('a server event loop held up past the pong deadline does not end a live peer', async () => {
      const { limiter, events } = await start({ pingIntervalMs: 100, pongTimeoutMs: 300 });
      const client = await connect();
      let pings = 0;
      client.socket.on('ping', () => pings++);
      await until(() => pings >= 1, 'the first ping');
      // Each block holds the loop for three pong timeouts; the client's pong sits unread.
      for (const ms of [900, 450, 1200]) {
        client.send('block', ms);
        await client.waitFor((frame) => frame.event === 'blocked' && frame.data === ms);
        await sleep(150);
      }
      await sleep(500);
      expect(client.socket.readyState).toBe(WebSocket.OPEN);
      expect(limiter.stats().connections).toBe(1);
      expect(events.filter((event) => event.kind === 'disconnect')).toEqual([]);
    });

    it('a busy peer (sending all the time) that answers pings stays; a silent one is ended once, counted once', async () => {
      const registry = new Registry();
      const { limiter, events } = await start({ pingIntervalMs: 150, pongTimeoutMs: 300, metricsRegistry: registry });
      const busy = await connect();
      const silent = await raw({ autoPong: false });
      const silentClosed = new Promise<number>((resolve) => silent.once('close', (code: number) => resolve(code)));
      const startedAt = performance.now();
      let sent = 0;
      while (performance.now() - startedAt < 2000) {
        for (let i = 0; i < 20; i++) busy.send('echo', sent++);
        await sleep(5);
      }
      await busy.waitForEvent('echo', sent);
      expect(await silentClosed).toBe(1006);
      expect(busy.socket.readyState).toBe(WebSocket.OPEN);
      await settle(() => limiter.stats().connections === 1);
      expect(limiter.stats().connections).toBe(1);
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'ping_timeout' })).toBe(1);
      const disconnects = events.filter((event) => event.kind === 'disconnect');
      expect(disconnects).toEqual([expect.objectContaining({ closeCode: 1001, reason: 'Ping timeout' })]);
    });

    it('pingIntervalMs 0: no ping is sent, and a silent peer is not ended', async () => {
      const { limiter } = await start({ pingIntervalMs: 0, pongTimeoutMs: 100 });
      const socket = await raw({ autoPong: false });
      let pings = 0;
      socket.on('ping', () => pings++);
      await sleep(1500);
      expect(pings).toBe(0);
      expect(socket.readyState).toBe(WebSocket.OPEN);
      expect(limiter.stats().connections).toBe(1);
    });
  });

  describe('slow consumer (maxBufferedBytes)', () => {
    it('is terminated (client sees 1006), reported once as 1008 "Slow consumer" while replies and refusals keep finding it', async () => {
      const registry = new Registry();
      const { limiter, events } = await start({
        maxBufferedBytes: 128 * 1024,
        pingIntervalMs: 0,
        metricsRegistry: registry,
        types: { echo: { capacity: 5, refillRate: 0.01 } },
      });
      const client = await connect();
      const tcp = (client.socket as unknown as { _socket: { pause(): void; resume(): void } })._socket;
      tcp.pause();
      client.send('blast', { count: 200, size: 32 * 1024 });
      // Replies and rate_limit frames: each send checks the reader again.
      for (let i = 0; i < 30; i++) client.send('echo', i);
      await until(() => limiter.stats().connections === 0, 'the slow consumer cut off');
      tcp.resume();
      expect((await client.waitClose()).code).toBe(1006);
      await sleep(1200); // a heartbeat tick or two more
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'slow_consumer' })).toBe(1);
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total')).toBe(1);
      expect(events.filter((event) => event.kind === 'disconnect')).toEqual([
        expect.objectContaining({ closeCode: 1008, reason: 'Slow consumer', enforced: true }),
      ]);
    });

    it('a reader that pauses below the threshold, then reads again, gets every reply in order', async () => {
      await start({ maxBufferedBytes: 4 * 1024 * 1024, pingIntervalMs: 100, pongTimeoutMs: 5000 });
      const client = await connect();
      const tcp = (client.socket as unknown as { _socket: { pause(): void; resume(): void } })._socket;
      tcp.pause();
      for (let i = 0; i < 200; i++) client.send('echo', i);
      await until(() => LifecycleGateway.handled.length === 200, 'every echo handled');
      await sleep(300);
      tcp.resume();
      const echoes = await client.waitForEvent('echo', 200);
      expect(echoes.map((frame) => frame.data)).toEqual([...Array(200).keys()]);
      expect(client.socket.readyState).toBe(WebSocket.OPEN);
    });
  });

  describe('frame hold', () => {
    it('frames held while a decision waits are all answered in order once it settles, and the hold empties', async () => {
      await start({ tracker: () => gate.tracker() }, [HeldGateway]);
      const client = await connect();
      gate.close();
      client.inOneWrite(() => {
        for (let i = 0; i < 30; i++) client.send('held', i);
      });
      await settle(() => gate.calls >= 1);
      expect(gate.calls).toBe(1);
      gate.release();
      const answers = await client.waitForEvent('held', 30);
      expect(answers.map((frame) => frame.data)).toEqual([...Array(30).keys()]);
    });

    it('a flood while a decision never settles: every 64 frames are released, nothing lost, the socket stays usable to close', async () => {
      const { limiter } = await start({ tracker: () => gate.tracker() }, [HeldGateway]);
      const client = await connect();
      gate.close();
      const flood = 64 * 10 + 5;
      client.inOneWrite(() => {
        for (let i = 0; i < flood; i++) client.send('held', i);
      });
      await settle(() => gate.calls >= 1 + 64 * 10);
      // Released in groups of 64: the first, then 10 groups; 4 frames still held.
      expect(gate.calls).toBe(1 + 64 * 10);
      gate.release();
      const answers = await client.waitForEvent('held', flood);
      expect(answers.map((frame) => frame.data)).toEqual([...Array(flood).keys()]);
      await client.close();
      await settle(() => limiter.stats().connections === 0);
      expect(limiter.stats()).toMatchObject({ connections: 0, localKeys: 0 });
    });
  });

  describe('timers', () => {
    it('no interval or timer of the app outlives app.close(), over start/close cycles with connections open', async () => {
      const timers = trackTimers();
      try {
        for (let cycle = 0; cycle < 3; cycle++) {
          await start({ pingIntervalMs: 50, pongTimeoutMs: 100, closeGraceMs: 5000 });
          const open = await Promise.all(Array.from({ length: 10 }, () => connect()));
          for (const client of open) client.send('echo', cycle);
          await Promise.all(open.map((client) => client.waitForEvent('echo')));
          expect(timers.intervals.size).toBeGreaterThan(0);
          await running!.close();
          running = undefined;
          await Promise.all(clients.splice(0).map((client) => client.close()));
        }
        await until(() => timers.intervals.size === 0, 'every interval cleared', 5000).catch(() => undefined);
        expect(timers.intervals.size).toBe(0);
        // (A timer still pending names where it was made.)
        await until(() => timers.timeouts.size === 0, 'every timer cleared', 5000).catch(() => undefined);
        expect([...timers.stacks.values()]).toEqual([]);
      } finally {
        timers.stop();
      }
    });

    it('many connect/close cycles leave no connection, key or timer behind', async () => {
      const { limiter } = await start({ pingIntervalMs: 50, pongTimeoutMs: 1000 });
      const timers = trackTimers();
      try {
        for (let round = 0; round < 10; round++) {
          await Promise.all(
            Array.from({ length: 20 }, async (_, i) => {
              const client = await TestClient.connect(running!.url, { perMessageDeflate: false });
              client.send('echo', i);
              await client.waitForEvent('echo');
              // Half close cleanly, half vanish (a reset).
              if (i % 2 === 0) await client.close();
              else client.socket.terminate();
            }),
          );
        }
        await settle(() => limiter.stats().connections === 0);
        expect(limiter.stats()).toMatchObject({ connections: 0, localKeys: 0 });
        await until(() => timers.timeouts.size === 0, 'per-connection timers cleared', 5000).catch(() => undefined);
        expect(timers.timeouts.size).toBe(0);
      } finally {
        timers.stop();
      }
    });
  });
});

describe('connection lifecycle review (WsRateLimitIoAdapter)', () => {
  let running: RunningApp | undefined;
  const sessions: RawIo[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}) => {
    LifecycleGateway.handled = [];
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ ...BASE, ...options })], providers: [LifecycleGateway] },
      (app) => new WsRateLimitIoAdapter(app),
    );
    const limiter = running.app.get(WsRateLimitService);
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const close = running.close;
    running.close = async () => {
      subscription.unsubscribe();
      await close();
    };
    return { limiter, events, decisions: () => events.filter((event) => event.kind === 'decision').length };
  };
  const session = async (answerPings = true) => {
    const made = await rawIo(running!.port, answerPings);
    sessions.push(made);
    return made;
  };

  afterEach(async () => {
    for (const made of sessions.splice(0)) made.socket.terminate();
    await running?.close();
    running = undefined;
  });

  describe('payload limit (maxHttpBufferSize from maxPayload)', () => {
    const LIMIT = 2048;
    /** A socket.io event packet (`42["echo","x..."]`) of exactly `bytes` bytes on the wire. */
    const packet = (bytes: number) => {
      const empty = '42["echo",""]';
      return `42["echo","${'x'.repeat(bytes - empty.length)}"]`;
    };

    it('over WebSocket: a packet of exactly maxPayload bytes is answered; one byte more closes 1009 with no decision', async () => {
      const { decisions } = await start({ maxPayload: LIMIT });
      const raw = await session();
      raw.socket.send(packet(LIMIT));
      await until(() => raw.frames.some((frame) => frame.startsWith('42["echo"')), 'the echo');
      expect(decisions()).toBe(1);
      raw.socket.send(packet(LIMIT + 1));
      expect(await raw.closed).toBe(1009);
      await sleep(100);
      expect(decisions()).toBe(1);
    });

    it('over long polling: a body of exactly maxPayload bytes is taken; one byte more is 413 and ends the session', async () => {
      await start({ maxPayload: LIMIT });
      const base = `http://127.0.0.1:${running!.port}/socket.io/?EIO=4&transport=polling`;
      const open = (await http(base)).text;
      const sid = (JSON.parse(open.slice(1)) as { sid: string }).sid;
      const url = `${base}&sid=${sid}`;
      expect((await http(url, 'POST', '40')).status).toBe(200);
      await http(url); // the CONNECT answer
      const atLimit = await http(url, 'POST', packet(LIMIT));
      expect(atLimit.status).toBe(200);
      await until(() => LifecycleGateway.handled.length === 1, 'the echo handled');
      expect((await http(url)).text).toContain('42["echo"');
      // A poll waits (so that Engine.IO closes the session at once, not after its closeTimeout).
      const poll = http(url);
      await sleep(50);
      const over = await http(url, 'POST', packet(LIMIT + 1)).catch(() => ({ status: -1, text: '' }));
      expect(over.status).toBe(413);
      expect((await poll).text).toBe('1'); // Engine.IO's close packet
      expect(LifecycleGateway.handled).toHaveLength(1);
      // The session is gone: its next poll is refused.
      expect((await http(url)).status).toBe(400);
    });

    it('an event with binary attachments: exactly maxPayload in all is taken, one byte more ends the connection', async () => {
      await start({ maxPayload: LIMIT });
      const head = '451-["echo",{"_placeholder":true,"num":0}]';
      // Counted as socket.io sees it: the packet without Engine.IO's leading "4", and the attachment.
      const room = LIMIT - (head.length - 1);
      const ok = await session();
      ok.socket.send(head);
      ok.socket.send(Buffer.alloc(room, 1));
      await until(() => LifecycleGateway.handled.length === 1, 'the echo with its attachment');
      expect(ok.isClosed()).toBe(false);
      const over = await session();
      over.socket.send(head);
      over.socket.send(Buffer.alloc(room + 1, 1));
      await over.closed;
      expect(LifecycleGateway.handled).toHaveLength(1);
    });

    it('perMessageDeflate reaches socket.io: a client offering permessage-deflate is granted it (it was not)', async () => {
      // README: "WS_RATE_LIMIT_PER_MESSAGE_DEFLATE: Accept permessage-deflate"; maxPayload does
      // reach socket.io (as maxHttpBufferSize), this option silently does not.
      await start({ perMessageDeflate: true });
      const socket = await rawWs(`ws://127.0.0.1:${running!.port}/socket.io/?EIO=4&transport=websocket`, {
        perMessageDeflate: {},
      });
      try {
        expect(socket.extensions).toContain('permessage-deflate');
      } finally {
        socket.terminate();
      }
    });
  });

  describe('heartbeat', () => {
    it('our heartbeat never ends a socket.io peer that answers Engine.IO pings (socket.io pings by itself)', async () => {
      // Pings every 50 ms; a pong timeout of a second rather than 100 ms, since Engine.IO ends
      // a socket from a plain timer that an event-loop stall of 100 ms fires ahead of the
      // pong already received (a loaded machine's GC pause would end the peer, not our
      // heartbeat). 70 of our pings go by in the window.
      const { limiter } = await start({ pingIntervalMs: 50, pongTimeoutMs: 1000 });
      const raw = await session(true);
      await sleep(3500);
      expect(raw.isClosed()).toBe(false);
      expect(limiter.stats().connections).toBe(1);
    });

    it("pingIntervalMs / pongTimeoutMs reach socket.io: a silent peer is ended after ours (it lasted socket.io's default 45 s)", async () => {
      // README: "WS_RATE_LIMIT_PING_INTERVAL_MS: How often each connection is pinged";
      // "PONG_TIMEOUT_MS: A connection that has not answered a ping within this time is
      // terminated"; liveness row "terminated, slots freed". Nothing says socket.io differs.
      const { limiter } = await start({ pingIntervalMs: 200, pongTimeoutMs: 300 });
      const silent = await session(false);
      await until(() => silent.isClosed(), 'the silent peer ended', 8000).catch(() => undefined);
      expect({ closed: silent.isClosed(), tracked: limiter.stats().connections }).toEqual({ closed: true, tracked: 0 });
    });

    it('a socket.io peer ended for not answering pings is counted as ping_timeout in disconnects_total (it was not)', async () => {
      // README: disconnects_total reason `ping_timeout` (the heartbeat ended a peer that did not
      // answer its ping). Here socket.io's own heartbeat (set fast on the server) ends it.
      const registry = new Registry();
      running = await startApp(
        {
          imports: [WsRateLimitModule.forRoot({ ...BASE, metricsRegistry: registry })],
          providers: [FastPingGateway],
        },
        (app) => new WsRateLimitIoAdapter(app),
      );
      const silent = await session(false);
      await until(() => silent.isClosed(), 'the silent peer ended by socket.io', 10_000);
      const limiter = running.app.get(WsRateLimitService);
      await settle(() => limiter.stats().connections === 0);
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'ping_timeout' })).toBe(1);
    });
  });

  describe('slow consumer', () => {
    it('a socket.io reader that stops reading is cut off, counted once, its state freed', async () => {
      const registry = new Registry();
      const { limiter, events } = await start({
        maxBufferedBytes: 128 * 1024,
        metricsRegistry: registry,
      });
      const raw = await session(true);
      const tcp = (raw.socket as unknown as { _socket: { pause(): void; resume(): void } })._socket;
      tcp.pause();
      raw.socket.send('42["blast",{"count":300,"size":32768}]');
      await until(() => limiter.stats().connections === 0, 'the slow consumer cut off', 10_000);
      tcp.resume();
      await raw.closed;
      await sleep(1200);
      expect(await metricSum(registry, 'ws_rate_limit_disconnects_total', { reason: 'slow_consumer' })).toBe(1);
      expect(events.filter((event) => event.kind === 'disconnect')).toEqual([
        expect.objectContaining({ closeCode: 1008, reason: 'Slow consumer' }),
      ]);
    });
  });

  describe('timers', () => {
    it('no interval of the socket.io app outlives app.close()', async () => {
      const timers = trackTimers();
      try {
        for (let cycle = 0; cycle < 2; cycle++) {
          await start({ pingIntervalMs: 50, pongTimeoutMs: 100 });
          for (let i = 0; i < 5; i++) await session(true);
          expect(timers.intervals.size).toBeGreaterThan(0);
          await running!.close();
          running = undefined;
          for (const made of sessions.splice(0)) made.socket.terminate();
        }
        await until(() => timers.intervals.size === 0, 'every interval cleared', 5000).catch(() => undefined);
        expect(timers.intervals.size).toBe(0);
      } finally {
        timers.stop();
      }
    });
  });
});

describe('options and variables of the connection lifecycle', () => {
  const compile = () =>
    Test.createTestingModule({
      imports: [ConfigModule.forRoot({ ignoreEnvFile: true }), WsRateLimitModule.forRoot()],
    }).compile();

  it.each([
    ['WS_RATE_LIMIT_PING_INTERVAL_MS', '-1'],
    ['WS_RATE_LIMIT_PING_INTERVAL_MS', '1.5'],
    ['WS_RATE_LIMIT_PING_INTERVAL_MS', '2147483648'],
    ['WS_RATE_LIMIT_PING_INTERVAL_MS', '30s'],
    ['WS_RATE_LIMIT_PONG_TIMEOUT_MS', '0'],
    ['WS_RATE_LIMIT_PONG_TIMEOUT_MS', '2147483648'],
    ['WS_RATE_LIMIT_MAX_BUFFERED_BYTES', '0'],
    ['WS_RATE_LIMIT_MAX_BUFFERED_BYTES', '1e400'],
    ['WS_RATE_LIMIT_MAX_BUFFERED_BYTES', '1MiB'],
    ['WS_RATE_LIMIT_MAX_PAYLOAD', '0'],
    ['WS_RATE_LIMIT_MAX_PAYLOAD', '2147483648'],
    ['WS_RATE_LIMIT_MAX_PAYLOAD', '65536.5'],
    ['WS_RATE_LIMIT_PER_MESSAGE_DEFLATE', '1'],
    ['WS_RATE_LIMIT_CLOSE_GRACE_MS', '-5'],
    ['WS_RATE_LIMIT_CLOSE_GRACE_MS', '2147483648'],
  ])('%s=%j stops start-up naming the variable', async (name, value) => {
    await withEnv({ ...NO_ENV, [name]: value }, async () => {
      await expect(compile()).rejects.toThrow(name);
    });
  });

  it.each([
    [{ pingIntervalMs: Number.NaN }, 'option pingIntervalMs'],
    [{ pingIntervalMs: -1 }, 'option pingIntervalMs'],
    [{ pongTimeoutMs: Number.POSITIVE_INFINITY }, 'option pongTimeoutMs'],
    [{ pongTimeoutMs: 0 }, 'option pongTimeoutMs'],
    [{ maxBufferedBytes: '1048576' as never }, 'option maxBufferedBytes'],
    [{ maxBufferedBytes: 0.5 }, 'option maxBufferedBytes'],
    [{ maxPayload: 2 ** 32 + 1000 }, 'option maxPayload'],
    [{ perMessageDeflate: {} as never }, 'option perMessageDeflate'],
    [{ closeGraceMs: 1.5 }, 'option closeGraceMs'],
  ])('%j in code stops start-up naming %s', async (options, name) => {
    const compiled = Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, ...(options as WsRateLimitModuleOptions) })],
    }).compile();
    await expect(compiled).rejects.toThrow(name);
  });
});
