import { afterEach, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import { interval, map } from 'rxjs';
import WebSocket from 'ws';
import {
  MemoryRateLimitStore,
  RateLimitStore,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitDecision,
  type RateLimitPlan,
  type TierStatus,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { upgrade } from '../../support/http.js';
import { sleep, TestClient } from '../../support/ws-client.js';

// --- Gateways --------------------------------------------------------------------------

type Info = { req: IncomingMessage };
const explodes = (info: Info) => info.req.headers['x-throw'] !== undefined;

/** A gateway whose own verifyClient (boolean form) throws on upgrades carrying `x-throw`. */
@WebSocketGateway({
  verifyClient: (info: Info) => {
    if (explodes(info)) throw new Error('verifyClient exploded');
    return true;
  },
})
class ThrowingVerifyGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}

/** The same in ws's callback form. */
@WebSocketGateway({
  verifyClient: (info: Info, done: (result: boolean) => void) => {
    if (explodes(info)) throw new Error('verifyClient exploded');
    done(true);
  },
})
class ThrowingCallbackVerifyGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}

/** Echoes, and streams ticks for as long as something listens. */
@WebSocketGateway()
class EdgesGateway {
  static ticks = 0;

  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }

  @SubscribeMessage('ticks')
  ticks() {
    return interval(50).pipe(map((i) => ({ event: 'tick', data: (EdgesGateway.ticks = i + 1) })));
  }
}

/** A gateway without ws's client set. */
@WebSocketGateway({ clientTracking: false })
class UntrackedGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}

/** The memory store behind promises: every decision is asynchronous, as with Redis. */
class AsyncMemoryStore extends RateLimitStore {
  private readonly inner = new MemoryRateLimitStore();
  async consume(plan: RateLimitPlan): Promise<RateLimitDecision> {
    return this.inner.consume(plan);
  }
  async peek(plan: RateLimitPlan): Promise<readonly TierStatus[]> {
    return this.inner.peek(plan);
  }
  async release(plan: RateLimitPlan): Promise<void> {
    this.inner.release(plan);
  }
  async delete(keys: readonly string[]): Promise<void> {
    this.inner.delete(keys);
  }
  async close(): Promise<void> {
    await this.inner.close();
  }
}

// --- Raw peers ---------------------------------------------------------------------------

const KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
const CLOSE_OPCODE = 0x88;

/**
 * A TCP peer that speaks the upgrade by hand and nothing after it: it reads every byte the
 * server sends (so it sees the server's end) and never answers a close frame.
 */
class RawPeer {
  private received = Buffer.alloc(0);
  private wakers: Array<() => void> = [];
  readonly closed: Promise<void>;

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk]);
      this.wake();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    void this.closed.then(() => this.wake());
  }

  static open(port: number): Promise<RawPeer> {
    return new Promise((resolve, reject) => {
      const socket = connect({ port, host: '127.0.0.1' }, () => resolve(new RawPeer(socket)));
      socket.once('error', reject);
    });
  }

  get isClosed(): boolean {
    return this.socket.destroyed;
  }

  sendUpgrade(headers: Record<string, string> = {}): void {
    const extra = Object.entries(headers)
      .map(([name, value]) => `${name}: ${value}\r\n`)
      .join('');
    this.socket.write(
      'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
        `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${KEY}\r\n${extra}\r\n`,
    );
  }

  /** The HTTP status of the answer, or `undefined` if none came (in full) within the time. */
  async status(timeoutMs = 3000): Promise<number | undefined> {
    const ok = await this.until(() => this.headerEnd() >= 0, timeoutMs);
    if (!ok) return undefined;
    return Number(/^HTTP\/1\.1 (\d{3})/.exec(this.received.toString('latin1'))?.[1]);
  }

  /** The code of the close frame right after a 101, once received. */
  async closeCode(timeoutMs = 3000): Promise<number | undefined> {
    const frameAt = () => this.headerEnd() + 4;
    await this.until(() => this.headerEnd() >= 0 && this.received.length >= frameAt() + 4, timeoutMs);
    if (this.headerEnd() < 0 || this.received.length < frameAt() + 4) return undefined;
    if (this.received[frameAt()] !== CLOSE_OPCODE) return undefined;
    return this.received.readUInt16BE(frameAt() + 2);
  }

  /** Resolves `true` when the socket closed within the time. */
  waitClosed(timeoutMs: number): Promise<boolean> {
    return this.until(() => this.isClosed, timeoutMs);
  }

  private headerEnd(): number {
    return this.received.indexOf('\r\n\r\n');
  }

  private async until(done: () => boolean, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!done()) {
      const left = deadline - Date.now();
      if (left <= 0 || this.socket.destroyed) return done();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wakers.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return true;
  }

  private wake(): void {
    const wakers = this.wakers;
    this.wakers = [];
    for (const wake of wakers) wake();
  }
}

// --- Tests -------------------------------------------------------------------------------

describe('WsRateLimitAdapter edge cases', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];
  const peers: RawPeer[] = [];

  const start = async (
    options: WsRateLimitModuleOptions,
    gateway: new (...args: never[]) => object = EdgesGateway,
    configure: (adapter: WsRateLimitAdapter) => void = () => undefined,
  ) => {
    EdgesGateway.ticks = 0;
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })], providers: [gateway] },
      (app: INestApplication) => {
        const adapter = new WsRateLimitAdapter(app);
        configure(adapter);
        return adapter;
      },
    );
    return running;
  };
  const client = async (options: WebSocket.ClientOptions = {}) => {
    const opened = await TestClient.connect(running!.url, options);
    clients.push(opened);
    return opened;
  };
  const peer = async () => {
    const opened = await RawPeer.open(running!.port);
    peers.push(opened);
    return opened;
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((opened) => opened.close()));
    for (const opened of peers.splice(0)) opened.socket.destroy();
    await running?.close();
    running = undefined;
  });

  describe("a gateway's own verifyClient that throws", () => {
    it.each([
      ['boolean form, synchronous store', ThrowingVerifyGateway, undefined],
      ['boolean form, asynchronous store', ThrowingVerifyGateway, () => new AsyncMemoryStore()],
      ['callback form, synchronous store', ThrowingCallbackVerifyGateway, undefined],
      ['callback form, asynchronous store', ThrowingCallbackVerifyGateway, () => new AsyncMemoryStore()],
    ])('%s: the upgrade is answered 500 and its slot is given back', async (_name, gateway, store) => {
      await start({ ...(store ? { store: store() } : {}), maxConnectionsPerIp: 5 }, gateway);
      const limiter = running!.app.get(WsRateLimitService);
      const refused = await peer();
      refused.sendUpgrade({ 'X-Throw': '1' });
      expect(await refused.status()).toBe(500);
      expect(await refused.waitClosed(3000)).toBe(true);
      for (let i = 0; i < 50 && (await limiter.connectionStatus('127.0.0.1'))[1]!.remaining !== 5; i++) {
        await sleep(20);
      }
      expect((await limiter.connectionStatus('127.0.0.1'))[1]!.remaining).toBe(5);
      // The server still upgrades everyone else.
      const accepted = await client();
      accepted.send('echo', 1);
      expect((await accepted.waitForEvent('echo'))[0]!.data).toBe(1);
    });
  });

  describe('the pending-handshake cap and trusted proxies', () => {
    const burst = async (trustProxy: WsRateLimitModuleOptions['trustProxy']) => {
      await start({
        trustProxy,
        maxPendingHandshakesPerIp: 3,
        handshakeTimeoutMs: 10_000,
        connection: { capacity: 1000, refillRate: 1000 },
      });
      const opened: RawPeer[] = [];
      for (let i = 0; i < 8; i++) opened.push(await peer());
      // The cap acts the moment a connection is accepted; give the server time to act.
      await sleep(300);
      return opened;
    };

    it('does not cap a trusted proxy (loopback): every pending connection upgrades', async () => {
      const opened = await burst('loopback');
      expect(opened.filter((one) => one.isClosed).length).toBe(0);
      for (const one of opened) one.sendUpgrade({ 'X-Forwarded-For': '203.0.113.9' });
      expect(await Promise.all(opened.map((one) => one.status()))).toEqual(Array(8).fill(101));
    });

    it('does not cap any peer with a hop count', async () => {
      const opened = await burst(1);
      expect(opened.filter((one) => one.isClosed).length).toBe(0);
    });

    it('still caps a peer the trusted list does not cover', async () => {
      const opened = await burst('10.0.0.0/8');
      for (const one of opened.slice(3)) expect(await one.waitClosed(3000)).toBe(true);
      expect(opened.slice(0, 3).filter((one) => one.isClosed).length).toBe(0);
    });
  });

  describe('observables returned by handlers', () => {
    it('are unsubscribed when the socket closes', async () => {
      await start({});
      const ticking = await client();
      ticking.send('ticks');
      await ticking.waitForEvent('tick', 3);
      await ticking.close();
      await sleep(200);
      const afterClose = EdgesGateway.ticks;
      await sleep(500);
      expect(EdgesGateway.ticks).toBe(afterClose);
    });
  });

  describe("'close' refusal mode", () => {
    const refusedPeer = async (options: WsRateLimitModuleOptions) => {
      const { port } = await start({
        connection: { capacity: 1, refillRate: 0.01 },
        connectionRefusal: 'close',
        ...options,
      });
      const limiter = running!.app.get(WsRateLimitService);
      // Spend the one token; wait until that connection is gone.
      expect((await upgrade(port)).status).toBe(101);
      for (let i = 0; i < 50 && limiter.stats().connections !== 0; i++) await sleep(20);
      expect(limiter.stats().connections).toBe(0);
      const refused = await peer();
      refused.sendUpgrade();
      expect(await refused.status()).toBe(101);
      expect(await refused.closeCode()).toBe(1008);
      return { refused, limiter };
    };

    it('terminates a refused peer that never answers the close frame, within seconds', async () => {
      const { refused } = await refusedPeer({ pingIntervalMs: 0 });
      // ws alone would wait its closeTimeout (30 s) for the answer.
      expect(await refused.waitClosed(3000)).toBe(true);
    });

    it('does not count a refused socket as an open connection in the heartbeat', async () => {
      // A 200 ms heartbeat tick, no ping due before the refused socket is gone.
      const { refused, limiter } = await refusedPeer({ pingIntervalMs: 10_000, pongTimeoutMs: 400 });
      let most = 0;
      for (const deadline = Date.now() + 3000; !refused.isClosed && Date.now() < deadline;) {
        most = Math.max(most, limiter.stats().connections);
        await refused.waitClosed(25);
      }
      expect(most).toBe(0);
      expect(refused.isClosed).toBe(true);
    });
  });

  describe('message parsers', () => {
    /** Binary frames: [event length][event][data]; text frames: JSON. */
    const seen: string[] = [];
    const parser = (data: unknown) => {
      seen.push(typeof data === 'string' ? 'string' : Buffer.isBuffer(data) ? 'buffer' : 'other');
      if (typeof data === 'string') return JSON.parse(data) as { event: string; data: unknown };
      const bytes = data as Buffer;
      if (bytes.length === 0 || bytes[0] === 0) throw new Error('not a frame of ours');
      const end = 1 + bytes[0]!;
      return { event: bytes.subarray(1, end).toString(), data: bytes.subarray(end).toString() };
    };
    const binary = (event: string, data: string) =>
      Buffer.concat([Buffer.from([event.length]), Buffer.from(event), Buffer.from(data)]);

    it('routes binary frames through a custom parser, and gives it text frames as platform-ws does', async () => {
      seen.length = 0;
      await start({}, EdgesGateway, (adapter) => adapter.setMessageParser(parser));
      const one = await client();
      one.socket.send(binary('echo', 'from bytes'), { binary: true });
      expect((await one.waitForEvent('echo'))[0]!.data).toBe('from bytes');
      one.send('echo', 'from text');
      expect((await one.waitForEvent('echo', 2))[1]!.data).toBe('from text');
      expect(seen).toEqual(['buffer', 'string']);
      // What the parser rejects is still charged as invalid.
      one.socket.send(Buffer.from([0, 1, 2]), { binary: true });
      one.sendRaw(JSON.stringify({ data: 'no event' }));
      const errors = await one.waitForEvent('error', 2);
      expect(errors.map((frame) => frame.data.code)).toEqual(['INVALID_MESSAGE', 'INVALID_MESSAGE']);
    });

    it('with the default parser, routes a binary JSON frame and charges binary that is not JSON', async () => {
      await start({});
      const one = await client();
      one.socket.send(Buffer.from(JSON.stringify({ event: 'echo', data: 'json bytes' })), { binary: true });
      expect((await one.waitForEvent('echo'))[0]!.data).toBe('json bytes');
      one.socket.send(Buffer.from([1, 2, 3]), { binary: true });
      expect((await one.waitForEvent('error'))[0]!.data.code).toBe('INVALID_MESSAGE');
    });
  });

  describe('clientTracking: false', () => {
    it('keeps the heartbeat running: dead peers are terminated, live ones kept', async () => {
      await start({ pingIntervalMs: 200, pongTimeoutMs: 100, maxConnectionsPerIp: 10 }, UntrackedGateway);
      const limiter = running!.app.get(WsRateLimitService);
      const live = await client();
      const dead = await client({ autoPong: false });
      expect((await dead.waitClose(5000)).code).toBe(1006);
      for (let i = 0; i < 50 && limiter.stats().connections !== 1; i++) await sleep(20);
      expect(limiter.stats().connections).toBe(1);
      await sleep(600);
      expect(live.socket.readyState).toBe(WebSocket.OPEN);
      live.send('echo', 'still here');
      expect((await live.waitForEvent('echo'))[0]!.data).toBe('still here');
    });

    it('terminates its connections when the app closes', async () => {
      await start({}, UntrackedGateway);
      const open = await client();
      const closing = running!.close();
      running = undefined;
      expect((await open.waitClose(3000)).code).toBe(1006);
      await closing;
    });
  });
});
