/**
 * 17 cases; 10 failed on 17c4cc5, all fixed: timeouts that wait for work on the event loop
 * (an answer's hold and the close's grace, lib/connection/answer-order.ts; socket.io event
 * slots, lib/adapters/event-slots.ts; the handshake timeout, lib/adapters/handshake-hygiene.ts)
 * count time the loop ran (lib/utils/loop-timeout.ts: a timeout that fires more than half its
 * period late waits its period once more); the sweep of refusals in transit clears a count
 * only from a timer that fired on time; Engine.IO's ping timeout, fired late, waits one more
 * timeout for the pong (lib/adapters/engine-io.ts `tolerateStalledPings`); operator blocks
 * are enforced on the monotonic clock (lib/services/blocks.ts).
 *
 * Review: a stalled event loop must not turn into wrong decisions or lost answers.
 *
 * What was reviewed: every grace period, timeout and duration in lib/ that is measured on
 * the clock while the work it waits for may be queued behind a stall of the event loop (a
 * long synchronous job, a GC pause, a loaded machine): lib/pipeline/in-transit.ts (fixed in
 * 8eda3a4: the sweep looks twice), lib/connection/answer-order.ts (the hold of answers and
 * the close's grace, `closeGraceMs`), lib/adapters/event-slots.ts, lib/connection/heartbeat.ts
 * (ws: the late-tick rule), Engine.IO's heartbeat as the socket.io adapter configures it,
 * lib/adapters/handshake-hygiene.ts (the handshake timeout), lib/connection/settle-order.ts
 * (the 5 s tracker stall), lib/pipeline/enforcer.ts (degradation cooldown, violation window),
 * lib/services/operator-blocks.ts + blocks.ts (`block()` durations, and RELIABILITY C-29:
 * wall-clock steps).
 *
 * How: real NestJS apps on 127.0.0.1 (memory store) behind `WsRateLimitAdapter` and
 * `WsRateLimitIoAdapter`, real `ws` / socket.io-client clients. A stall is a busy-wait of the
 * test process (which runs the app) started from `setImmediate`, i.e. in the check phase
 * right after the turn that made the decision under test. Where the peer must answer during
 * the stall (a pong), the client runs in a worker thread, whose own event loop keeps going
 * while the main one is stalled, as a remote client's would. Where a handler's work must be
 * done during the stall, it is an `fs.stat` started just before the busy-wait: the thread
 * pool completes it while the loop is stalled, and the loop delivers it in the poll phase of
 * the turn after, which comes after that turn's timers.
 *
 * Cases:
 *  1. (it was: BUG; ws) the 1008 close's grace (`closeGraceMs`) runs out on the clock during a stall:
 *     the reply of an admitted message, ready one turn after the stall, is lost.
 *  2. (it was: BUG; ws) an answer's hold runs out on the clock during a stall: the rate_limit frame
 *     overtakes the reply of an earlier admitted message that came the turn after.
 *  3. (ws) control of 1: without the stall the same reply goes out before the close.
 *  4. (ws) a handler whose timer fell due during the stall still gets its reply before the close.
 *  5. (it was: BUG; socket.io, websocket and polling) case 1 on socket.io.
 *  6. (ws) the library's heartbeat does not end a live peer whose pong is queued behind a stall.
 *  7. (it was: BUG; socket.io) Engine.IO's heartbeat, configured from `pongTimeoutMs`, ends a live
 *     peer whose pong is queued behind a stall (reason 'ping timeout').
 *  8. (it was: BUG; ws and socket.io) the handshake timeout drops a client whose whole request arrived
 *     in time but sat unread behind a stall (each with an unstalled control first).
 *  9. (ws) refusals in transit through a filter of the application that awaits I/O, one
 *     stall past the 250 ms grace: the count stands (8eda3a4), the close comes at the threshold.
 * 10. (ws) control of 11: a three-step filter without stalls: nothing after the threshold runs.
 * 11. (it was: BUG; ws) two stalls back to back while such a filter awaits its I/O: the sweep's two
 *     looks have one turn between them, the count is cleared, a message after the threshold
 *     is admitted.
 * 12. (ws) a flood read after another connection's 800 ms job: every message answered once,
 *     retryAfter honest, warningCounts 1..max, the close exactly at the threshold.
 * 13. (ws) DEGRADED, then a stall longer than the cooldown: the next message after the
 *     retryAfter told is decided by its tier again.
 * 14. (it was: BUG; ws, C-29) an operator block is timed on the wall clock: a backward step of one
 *     hour turns a 2 s block into an hour's lockout (retryAfter 3,602,000).
 * 15. (it was: BUG; ws, C-29) a forward step of one hour lifts a 10 min block at once.
 */
import { afterEach, describe, expect, it, jest } from '@jest/globals';
import { Catch, UseFilters, type ArgumentsHost, type ExceptionFilter } from '@nestjs/common';
import {
  ConnectedSocket,
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  type OnGatewayConnection,
} from '@nestjs/websockets';
import { stat } from 'node:fs';
import { stat as statAsync } from 'node:fs/promises';
import { connect as netConnect, type Socket as NetSocket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import {
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
import { startApp, type RunningApp } from '../support/app.js';
import { connectIo, type EngineTransport, type IoTestClient } from '../support/io-client.js';
import { sleep, TestClient, type Frame } from '../support/ws-client.js';

const THIS_FILE = fileURLToPath(import.meta.url);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Holds the event loop of this process (the app's) for `ms`. */
function busyWait(ms: number): void {
  const started = performance.now();
  while (performance.now() - started < ms);
}

/** Admitted `slow` messages waiting for their "I/O": each resolves its handler's reply. */
const gates: Array<() => void> = [];
const openGates = (): void => {
  for (const open of gates.splice(0)) open();
};

/**
 * The stall of these tests: in the check phase of the current turn, start an I/O (a stat the
 * thread pool completes in microseconds) whose completion releases the `slow` handlers, then
 * hold the loop for `ms`. The I/O is done during the stall; its callback runs in the poll
 * phase of the next turn, after that turn's timers.
 */
function stallWithIoInFlight(ms: number): void {
  setImmediate(() => {
    stat(THIS_FILE, () => openGates());
    busyWait(ms);
  });
}

/** Same, with the handlers released by a timer that falls due during the stall. */
function stallWithTimerInFlight(ms: number): void {
  setImmediate(() => {
    setTimeout(openGates, 20);
    busyWait(ms);
  });
}

/**
 * The application's own filter on the `filtered` handler hands refusals on to ours after
 * `steps` I/O round trips (a stat each: microseconds, one loop turn each); `onStep` hears
 * each completed step (its index) of each refusal.
 */
const filterSteps: { steps: number; onStep?: (step: number) => void } = { steps: 1 };

@Catch()
class HandOnAfterIo implements ExceptionFilter {
  constructor(private readonly rateLimit: WsRateLimitFilter) {}
  async catch(exception: unknown, host: ArgumentsHost) {
    if (!(exception instanceof WsRateLimitException)) return;
    for (let step = 0; step < filterSteps.steps; step++) {
      await statAsync(THIS_FILE);
      filterSteps.onStep?.(step);
    }
    return this.rateLimit.catch(exception, host);
  }
}

/** A stall requested by the next ping the server sends (see the gateway). */
const pingStall = { armed: false, ms: 0, fired: 0 };
/** How the server side ended its connections (socket.io reasons). */
const serverReasons: string[] = [];

@WebSocketGateway()
@WsRateLimit()
class StallGateway implements OnGatewayConnection {
  handleConnection(@ConnectedSocket() client: any): void {
    // ws: the library's heartbeat pings through `client.ping()`; a stall starts right after.
    if (typeof client.ping === 'function' && typeof client.emit === 'function' && client.conn === undefined) {
      const ping = client.ping.bind(client);
      client.ping = (...args: unknown[]) => {
        ping(...args);
        if (pingStall.armed) {
          pingStall.armed = false;
          pingStall.fired++;
          setImmediate(() => busyWait(pingStall.ms));
        }
      };
      return;
    }
    // socket.io: Engine.IO's own ping; its write happens synchronously after this event.
    if (client.conn !== undefined) {
      client.once('disconnect', (reason: string) => serverReasons.push(reason));
      client.conn.on('packetCreate', (packet: { type: string }) => {
        if (packet.type !== 'ping' || !pingStall.armed) return;
        pingStall.armed = false;
        pingStall.fired++;
        setImmediate(() => busyWait(pingStall.ms));
      });
    }
  }

  /** Admitted, answered once its "I/O" completes (see `gates`). */
  @Throttle({ type: 'slow', capacity: 10, refillRate: 0.001 })
  @SubscribeMessage('slow')
  slow(@MessageBody() data: unknown) {
    return new Promise((resolve) => gates.push(() => resolve({ event: 'slow_done', data })));
  }

  /** One message, then refusals, answered through the application's filter. */
  @Throttle({ type: 'filtered', capacity: 1, refillRate: 0.001 })
  @UseFilters(HandOnAfterIo)
  @SubscribeMessage('filtered')
  filtered(@MessageBody() data: unknown) {
    return { event: 'filtered_ack', data };
  }

  /** One message, then refusals. */
  @Throttle({ type: 'one', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('one')
  one(@MessageBody() data: unknown) {
    return { event: 'one_ack', data };
  }

  /** Several per second, for the flood. */
  @Throttle({ type: 'chat', capacity: 5, refillRate: 2 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'chat_ack', data };
  }

  /** A synchronous job of the application: holds the loop while it runs. */
  @Throttle({ type: 'hog', capacity: 10, refillRate: 0.001 })
  @SubscribeMessage('hog')
  hog(@MessageBody() data: { ms: number }) {
    busyWait(data.ms);
    return { event: 'hog_done', data };
  }
}

const BASE: WsRateLimitModuleOptions = {
  useEnv: false,
  tracker: 'connection',
  global: { capacity: 1000, refillRate: 1000 },
  connection: { capacity: 1000, refillRate: 1000 },
  violations: { max: 10, windowMs: 60_000 },
};

/** Waits until `check` holds, polling; fails after `timeoutMs`. */
async function until(check: () => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const started = performance.now();
  while (!check()) {
    if (performance.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** A client in a worker thread: its loop runs (and answers pings) while this one is stalled. */
interface WorkerClient {
  readonly notes: Array<{ type: string; [key: string]: unknown }>;
  end(): Promise<void>;
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const req = require('node:module').createRequire(workerData.root + 'package.json');
let end;
if (workerData.kind === 'ws') {
  const WebSocket = req('ws');
  const ws = new WebSocket(workerData.url, { perMessageDeflate: false });
  ws.on('open', () => parentPort.postMessage({ type: 'open' }));
  ws.on('ping', () => parentPort.postMessage({ type: 'ping' }));
  ws.on('error', () => undefined);
  ws.on('close', (code, reason) => {
    parentPort.postMessage({ type: 'close', code, reason: reason.toString() });
  });
  end = () => { if (ws.readyState !== WebSocket.CLOSED) ws.terminate(); };
} else {
  const { io } = req('socket.io-client');
  const socket = io(workerData.url, { transports: ['websocket'], upgrade: false, reconnection: false, forceNew: true });
  socket.on('connect', () => parentPort.postMessage({ type: 'open' }));
  socket.io.engine?.on?.('ping', () => parentPort.postMessage({ type: 'ping' }));
  socket.io.on('ping', () => parentPort.postMessage({ type: 'ping' }));
  socket.on('disconnect', (reason) => parentPort.postMessage({ type: 'close', reason }));
  end = () => socket.disconnect();
}
parentPort.on('message', (message) => {
  if (message === 'end') { end(); setTimeout(() => process.exit(0), 50); }
});
`;

function workerClient(kind: 'ws' | 'io', url: string): WorkerClient {
  const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { kind, url, root: ROOT } });
  const notes: WorkerClient['notes'] = [];
  worker.on('message', (note) => notes.push(note));
  worker.on('error', (error) => notes.push({ type: 'error', message: String(error) }));
  return {
    notes,
    async end() {
      worker.postMessage('end');
      const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
      const bound = sleep(1000);
      await Promise.race([exited, bound]);
      await worker.terminate();
    },
  };
}

describe('a stalled event loop: no wrong decisions, no lost answers', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];
  const ioClients: IoTestClient[] = [];
  const workers: WorkerClient[] = [];
  const rawSockets: NetSocket[] = [];
  const unsubscribe: Array<() => void> = [];

  const startWs = async (options: WsRateLimitModuleOptions = {}) => {
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ ...BASE, ...options })], providers: [StallGateway] },
      (app) => new WsRateLimitAdapter(app),
    );
    return running;
  };
  const startIo = async (options: WsRateLimitModuleOptions = {}) => {
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ ...BASE, ...options })], providers: [StallGateway] },
      (app) => new WsRateLimitIoAdapter(app),
    );
    return { ...running, httpUrl: `http://127.0.0.1:${running.port}` };
  };
  const connectWs = async () => {
    const client = await TestClient.connect(running!.url, { perMessageDeflate: false });
    clients.push(client);
    return client;
  };
  /** Runs `react` once, at the first event of `kind` the limiter streams. */
  const onFirst = (kind: RateLimitEvent['kind'], react: (event: RateLimitEvent) => void) => {
    let done = false;
    const subscription = running!.app.get(WsRateLimitService).events$.subscribe((event) => {
      if (done || event.kind !== kind) return;
      done = true;
      react(event);
    });
    unsubscribe.push(() => subscription.unsubscribe());
  };
  const events = (frames: Frame[]) => frames.map((frame) => frame.event);

  afterEach(async () => {
    jest.restoreAllMocks();
    for (const stop of unsubscribe.splice(0)) stop();
    openGates();
    pingStall.armed = false;
    pingStall.fired = 0;
    filterSteps.steps = 1;
    filterSteps.onStep = undefined;
    serverReasons.length = 0;
    for (const socket of rawSockets.splice(0)) socket.destroy();
    await Promise.all(workers.splice(0).map((worker) => worker.end()));
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (const client of ioClients.splice(0)) {
      if (client.disconnectReason !== undefined) client.close();
      else await client.closeAndSettle().catch(() => undefined);
    }
    await sleep(20);
    await running?.close();
    running = undefined;
  });

  describe('answers held behind a stall (ws)', () => {
    it('the 1008 close waits for a reply that was ready during a stall longer than closeGraceMs (it is sent before the close) (it was: BUG)', async () => {
      await startWs({ closeGraceMs: 300, violations: { max: 1, windowMs: 60_000 } });
      const client = await connectWs();
      // The close is decided; in the same turn a job of the app stalls the loop for 900 ms,
      // while the slow handler's I/O completes (in microseconds) on the thread pool.
      onFirst('disconnect', () => stallWithIoInFlight(900));
      client.inOneWrite(() => {
        client.send('slow', 's1');
        client.send('one', 'o1');
        client.send('one', 'o2');
      });
      const closed = await client.waitClose();
      expect(closed.code).toBe(1008);
      // The refusal that reached the threshold got its frame; the admitted 'one' its reply.
      expect(events(client.frames)).toContain('one_ack');
      expect(events(client.frames)).toContain('rate_limit');
      // The slow message was admitted before the decision and its reply was ready after one
      // turn of the loop: the close's grace ran out only on the clock, while the loop stood
      // still. Expected (README "Order of answers"; as the heartbeat does for a pong, and the
      // in-transit sweep since 8eda3a4): a grace timer that ran late looks again after a
      // poll phase before closing. Actual: the reply is lost.
      expect(events(client.frames)).toEqual(['one_ack', 'slow_done', 'rate_limit']);
    });

    it('a rate_limit frame does not overtake the reply of an earlier admitted message that was ready during a stall (it was: BUG)', async () => {
      await startWs({ closeGraceMs: 300 });
      const client = await connectWs();
      onFirst('violation', () => stallWithIoInFlight(900));
      client.inOneWrite(() => {
        client.send('slow', 's1');
        client.send('one', 'o1');
        client.send('one', 'o2');
      });
      await client.waitForEvent('slow_done');
      await client.waitForEvent('rate_limit');
      expect(client.socket.readyState).toBe(client.socket.OPEN);
      // README: "a rate_limit frame never overtakes the reply of an earlier admitted
      // message". The hold (closeGraceMs) ran out on the clock during the stall; the reply
      // came in the very turn after it.
      expect(events(client.frames)).toEqual(['one_ack', 'slow_done', 'rate_limit']);
    });

    it('control: without a stall, the reply waiting on the same I/O goes out before the close', async () => {
      await startWs({ closeGraceMs: 300, violations: { max: 1, windowMs: 60_000 } });
      const client = await connectWs();
      onFirst('disconnect', () => stallWithIoInFlight(0));
      client.inOneWrite(() => {
        client.send('slow', 's1');
        client.send('one', 'o1');
        client.send('one', 'o2');
      });
      const closed = await client.waitClose();
      expect(closed.code).toBe(1008);
      expect(events(client.frames)).toEqual(['one_ack', 'slow_done', 'rate_limit']);
    });

    it('a reply whose timer fell due during the stall still goes out before the close', async () => {
      await startWs({ closeGraceMs: 300, violations: { max: 1, windowMs: 60_000 } });
      const client = await connectWs();
      onFirst('disconnect', () => stallWithTimerInFlight(900));
      client.inOneWrite(() => {
        client.send('slow', 's1');
        client.send('one', 'o1');
        client.send('one', 'o2');
      });
      const closed = await client.waitClose();
      expect(closed.code).toBe(1008);
      expect(events(client.frames)).toEqual(['one_ack', 'slow_done', 'rate_limit']);
    });
  });

  describe.each(['websocket', 'polling'] as EngineTransport[])(
    'answers held behind a stall (socket.io over %s)',
    (transport) => {
      it('the disconnect waits for a reply that was ready during a stall longer than closeGraceMs (it was: BUG)', async () => {
        const { httpUrl } = await startIo({ closeGraceMs: 300, violations: { max: 1, windowMs: 60_000 } });
        const client = await connectIo(httpUrl, transport);
        ioClients.push(client);
        onFirst('disconnect', () => stallWithIoInFlight(900));
        client.socket.emit('slow', 's1');
        client.socket.emit('one', 'o1');
        client.socket.emit('one', 'o2');
        await client.disconnected();
        expect(client.disconnectReason).toBe('io server disconnect');
        const seen = client.events.map((entry) => entry.event);
        expect(seen).toContain('one_ack');
        expect(seen).toContain('rate_limit');
        expect(seen).toContain('rate_limit_disconnect');
        // Expected: the admitted slow event's reply, ready one turn after the stall, goes out
        // before the disconnect. Actual: lost.
        expect(seen).toContain('slow_done');
      });
    },
  );

  describe('heartbeat: a pong queued behind a stall', () => {
    it('ws: the library heartbeat does not end a live peer whose pong was unread during a stall past pongTimeoutMs', async () => {
      await startWs({ pingIntervalMs: 200, pongTimeoutMs: 300 });
      const peer = workerClient('ws', running!.url);
      workers.push(peer);
      await until(() => peer.notes.some((note) => note.type === 'open'), 10_000, 'the worker client to open');
      // The next ping is followed at once by a stall of 900 ms (three times the pong timeout).
      pingStall.ms = 900;
      pingStall.armed = true;
      await until(() => pingStall.fired === 1, 5000, 'a ping');
      // A few more ping rounds after the stall.
      await sleep(1200);
      expect(peer.notes.filter((note) => note.type === 'close')).toEqual([]);
      const stats = running!.app.get(WsRateLimitService).stats();
      expect(stats.connections).toBe(1);
    });

    it('socket.io: a live peer whose pong was unread during a stall past pongTimeoutMs is not ended as a ping timeout (it was: BUG)', async () => {
      // Engine.IO's pingInterval/pingTimeout come from pingIntervalMs/pongTimeoutMs. The
      // interval is long enough that the client's own deadline (interval + timeout after a
      // ping) is not reached by the stall.
      const { httpUrl } = await startIo({ pingIntervalMs: 1000, pongTimeoutMs: 300 });
      const peer = workerClient('io', httpUrl);
      workers.push(peer);
      await until(() => peer.notes.some((note) => note.type === 'open'), 10_000, 'the worker client to connect');
      pingStall.ms = 700;
      pingStall.armed = true;
      await until(() => pingStall.fired === 1, 5000, 'a ping');
      // Just past the stall: a turn or two for the pong to be read.
      await sleep(150);
      // The README (WS_RATE_LIMIT_PONG_TIMEOUT_MS): "A connection that has not answered a ping
      // within this time is terminated (not by a check that ran late: its pong may be unread)".
      // Actual: Engine.IO's pingTimeout timer, run late by the stall before the poll phase
      // that reads the pong, ends the connection ('ping timeout', counted as ping_timeout).
      expect(serverReasons).toEqual([]);
      expect(peer.notes.filter((note) => note.type === 'close')).toEqual([]);
    });
  });

  describe('handshake timeout: a request that arrived in time but sat unread behind a stall', () => {
    /**
     * Opens a raw TCP connection, waits until both ends have it, writes the whole `request`
     * at once and stalls the loop for `stallMs` right after. Resolves with what the server
     * answered (empty when it dropped the connection).
     */
    const sendThenStall = async (port: number, request: string, stallMs: number): Promise<string> => {
      const server = running!.app.getHttpServer();
      const accepted = new Promise<void>((resolve) => server.once('connection', () => resolve()));
      const socket = netConnect({ port, host: '127.0.0.1' });
      rawSockets.push(socket);
      let received = '';
      let ended = false;
      socket.on('data', (chunk) => (received += chunk.toString('latin1')));
      socket.on('error', () => undefined);
      socket.on('close', () => (ended = true));
      const connected = new Promise<void>((resolve) => socket.once('connect', () => resolve()));
      await Promise.all([accepted, connected]);
      socket.write(request);
      // The whole request left this end before the stall.
      expect(socket.writableLength).toBe(0);
      busyWait(stallMs);
      await until(() => ended || received.includes('\r\n\r\n'), 5000, 'an answer or the end');
      return received;
    };

    it('ws: an upgrade sent at once is answered 101, not dropped, when a stall outlasts handshakeTimeoutMs (it was: BUG)', async () => {
      const { port } = await startWs({ handshakeTimeoutMs: 300 });
      const request =
        'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';
      // Control: without a stall, the upgrade is answered.
      expect(await sendThenStall(port, request, 0)).toMatch(/^HTTP\/1\.1 101/);
      // The client sent its whole upgrade within a millisecond of connecting; the server's
      // loop then stalled 900 ms. README: the timeout is the "time to send it" ("a TCP
      // connection that has not sent its whole request ... by then is dropped"). Actual: the
      // timer, run late before the poll phase that reads the request, drops the connection.
      expect(await sendThenStall(port, request, 900)).toMatch(/^HTTP\/1\.1 101/);
    });

    it('socket.io: a polling handshake sent at once is answered, not dropped, when a stall outlasts handshakeTimeoutMs (it was: BUG)', async () => {
      const { port } = await startIo({ handshakeTimeoutMs: 300 });
      const request =
        'GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n';
      expect(await sendThenStall(port, request, 0)).toMatch(/^HTTP\/1\.1 200/);
      expect(await sendThenStall(port, request, 900)).toMatch(/^HTTP\/1\.1 200/);
    });
  });

  describe('refusals in transit through a filter of the application (ws)', () => {
    it('a stall past the 250 ms grace while the filter awaits I/O: the count stands, nothing after the threshold is processed', async () => {
      await startWs({ violations: { max: 2, windowMs: 60_000 } });
      const client = await connectWs();
      filterSteps.steps = 1;
      // After the read's decisions, while both refusals wait on their filter's I/O.
      onFirst('decision', () => stallWithIoInFlight(900));
      client.inOneWrite(() => {
        for (let i = 1; i <= 3; i++) client.send('filtered', i);
      });
      // Read after the stall (on the wire before it): the threshold is already reached.
      client.send('chat', 'after the threshold');
      const closed = await client.waitClose();
      expect(closed.code).toBe(1008);
      expect(events(client.frames)).toEqual(['filtered_ack', 'rate_limit', 'rate_limit']);
      expect(client.events('rate_limit').map((frame) => frame.data.warningCount)).toEqual([1, 2]);
    });

    it('control: the same three-step filter and the same late message, without stalls: the message is not processed', async () => {
      await startWs({ violations: { max: 2, windowMs: 60_000 } });
      const client = await connectWs();
      filterSteps.steps = 3;
      let sent = false;
      filterSteps.onStep = (step) => {
        if (step !== 0 || sent) return;
        sent = true;
        client.send('chat', 'after the threshold');
      };
      client.inOneWrite(() => {
        for (let i = 1; i <= 3; i++) client.send('filtered', i);
      });
      const closed = await client.waitClose();
      expect(closed.code).toBe(1008);
      expect(sent).toBe(true);
      expect(events(client.frames)).toEqual(['filtered_ack', 'rate_limit', 'rate_limit']);
    });

    it('two stalls back to back while the filter awaits I/O: a message after the threshold is not admitted (it was: BUG)', async () => {
      await startWs({ violations: { max: 2, windowMs: 60_000 } });
      const client = await connectWs();
      // Three I/O round trips: three turns of the loop (well under a millisecond unstalled).
      filterSteps.steps = 3;
      let second = false;
      filterSteps.onStep = (step) => {
        if (step !== 0 || second) return;
        second = true;
        // The turn between the stalls: the client sends one more message, and the loop
        // stalls again (a GC pause after a long job, say).
        client.send('chat', 'after the threshold');
        setImmediate(() => busyWait(900));
      };
      onFirst('decision', () => setImmediate(() => busyWait(900)));
      client.inOneWrite(() => {
        for (let i = 1; i <= 3; i++) client.send('filtered', i);
      });
      const closed = await client.waitClose();
      expect(closed.code).toBe(1008);
      // The two refusals of the first read reach the threshold (README: "no message after it
      // is admitted, counted or answered"). The sweep of refusals in transit looked twice
      // (8eda3a4), but with one turn of the loop between its looks: the filter's answer was
      // two turns away, the count was cleared, and the chat read meanwhile was admitted.
      expect(events(client.frames)).toEqual(['filtered_ack', 'rate_limit', 'rate_limit']);
    });
  });

  describe('decisions and counts across a stall (ws)', () => {
    it('a flood read after a stall: every message answered once, retryAfter honest, the close exactly at the threshold', async () => {
      await startWs({ violations: { max: 4, windowMs: 60_000 } });
      const client = await connectWs();
      const other = await connectWs();
      // Another connection's synchronous job holds the loop for 800 ms; this client's 20 chats
      // (5 burst, 2/s), one write each, are on the wire before it starts and are read after.
      other.send('hog', { ms: 800 });
      for (let i = 0; i < 20; i++) client.send('chat', i);
      const closed = await client.waitClose();
      expect(closed.code).toBe(1008);
      await other.waitForEvent('hog_done');
      const acks = client.events('chat_ack').map((frame) => frame.data);
      const refusals = client.events('rate_limit').map((frame) => frame.data);
      // Decided after the stall: the burst and what refilled, then exactly 4 refusals, counted
      // 1..4, then nothing (the later messages are not processed).
      expect(acks.length).toBeGreaterThanOrEqual(5);
      expect(acks).toEqual([...Array(acks.length).keys()]);
      expect(refusals.map((info: any) => info.warningCount)).toEqual([1, 2, 3, 4]);
      for (const info of refusals as any[]) {
        expect(info.code).toBe('TYPE_LIMIT');
        expect(info.retryAfter).toBeGreaterThan(0);
        expect(info.retryAfter).toBeLessThanOrEqual(500);
      }
      expect(events(client.frames)).toEqual([...Array(acks.length).fill('chat_ack'), ...Array(4).fill('rate_limit')]);
    });

    it('DEGRADED then a stall longer than the cooldown: the retryAfter told is honest, the next message is decided by its tier', async () => {
      await startWs({ violations: { max: 2, windowMs: 60_000 }, degradeCooldownMs: 600 });
      const client = await connectWs();
      // 5 chats admitted (5 burst, 2/s), the 6th refused, the 7th refused and degrading.
      client.inOneWrite(() => {
        for (let i = 0; i < 7; i++) client.send('chat', i);
      });
      const [degraded] = await client.waitFor(
        (frame) => frame.event === 'rate_limit' && frame.data.code === 'DEGRADED',
      );
      const toldAt = performance.now();
      expect(degraded!.data.retryAfter).toBeGreaterThanOrEqual(600);
      // A stall of 800 ms: the cooldown lapses meanwhile.
      setImmediate(() => busyWait(800));
      await sleep(20);
      // After what the frame said, an ordinary message is decided by its tier again.
      const wait = Math.max(0, degraded!.data.retryAfter - (performance.now() - toldAt));
      await sleep(wait + 20);
      client.send('chat', 'after');
      const [answer] = await client.waitFor(
        (frame) => frame.data === 'after' || (frame.data?.messageType === 'chat' && client.frames.indexOf(frame) > 6),
      );
      expect(answer!.event).toBe('chat_ack');
      expect(client.socket.readyState).toBe(client.socket.OPEN);
    });
  });

  describe('operator blocks and the wall clock (RELIABILITY C-29)', () => {
    it('a 2 s block stays a 2 s block when the wall clock steps back an hour (no lockout, retryAfter never grows) (it was: BUG)', async () => {
      await startWs();
      const client = await connectWs();
      const limiter = running!.app.get(WsRateLimitService);
      // The client's address: its open connections' messages are refused BLOCKED.
      await limiter.block('127.0.0.1', 2000);
      client.send('chat', 'blocked');
      const [first] = await client.waitFor((frame) => frame.event === 'rate_limit' && frame.data.code === 'BLOCKED');
      expect(first!.data.retryAfter).toBeLessThanOrEqual(2000);
      // NTP steps the wall clock back by an hour (the process's monotonic clock does not move).
      const real = Date.now.bind(Date);
      jest.spyOn(Date, 'now').mockImplementation(() => real() - 3_600_000);
      client.send('chat', 'after the step');
      await client.waitFor((frame) => frame.event === 'rate_limit' && frame.data.code === 'BLOCKED', 2);
      const second = client.events('rate_limit')[1]!;
      // C-29: "no lockout after a backward jump", "successive retryAfter values never
      // increase". Actual: about 3,602,000 ms.
      expect(second.data.retryAfter).toBeLessThanOrEqual(first!.data.retryAfter);
    });

    it('a 10 min block is not lifted when the wall clock steps forward an hour (no admission after a forward jump) (it was: BUG)', async () => {
      await startWs();
      const client = await connectWs();
      const limiter = running!.app.get(WsRateLimitService);
      await limiter.block('127.0.0.1', 600_000);
      client.send('chat', 'blocked');
      await client.waitFor((frame) => frame.event === 'rate_limit' && frame.data.code === 'BLOCKED');
      const real = Date.now.bind(Date);
      jest.spyOn(Date, 'now').mockImplementation(() => real() + 3_600_000);
      client.send('chat', 'after the step');
      await client.waitFor((frame) => frame.data === 'after the step' || client.frames.length >= 2);
      // C-29: "no admission burst after a forward jump". Actual: the block is over at once.
      expect(events(client.frames)).toEqual(['rate_limit', 'rate_limit']);
      expect(client.frames[1]!.data.code).toBe('BLOCKED');
    });
  });
});
