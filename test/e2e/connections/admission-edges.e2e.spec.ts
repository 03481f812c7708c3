import { afterEach, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import type { IncomingMessage } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
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
import { resolveClientAddress } from '../../../lib/utils/client-address.js';
import { resolveOptions } from '../../../lib/config/resolve-options.js';
import { watchStalls } from '../../redis/stalls.js';
import { sleep, TestClient } from '../../support/ws-client.js';
import { ConnectionsGateway } from './connections.gateway.js';

// Admission at its edges, from an adversarial review: the open-connection cap under a burst
// of concurrent upgrades (synchronous and held-back store), a client leaving while its
// upgrade is decided, app.close() with a decision pending or an upgrade request still
// arriving (it waited for the handshake timeout before the fix), IPv4-mapped and ::1 peers
// (connectionStatus now takes the address itself), forwarding chains, and a heartbeat
// tick that ran across the pong deadline while a live peer's pong sat unread (it was
// terminated before the fix).

// --- Helpers -----------------------------------------------------------------------------

const KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
const UPGRADE = (extra = '') =>
  'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
  `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${KEY}\r\n${extra}\r\n`;

/** The memory store behind promises that the test can hold back (every decision waits on `gate`). */
class GatedStore extends RateLimitStore {
  private readonly inner = new MemoryRateLimitStore();
  private opened: Promise<void> = Promise.resolve();
  private openGate: () => void = () => undefined;
  pending = 0;
  hold(): void {
    this.opened = new Promise((resolve) => (this.openGate = resolve));
  }
  open(): void {
    this.openGate();
  }
  async consume(plan: RateLimitPlan): Promise<RateLimitDecision> {
    this.pending++;
    await this.opened;
    this.pending--;
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
    this.openGate();
    await this.inner.close();
  }
}

/** A raw TCP peer that records what the server sends. */
class Peer {
  received = '';
  readonly closed: Promise<void>;
  constructor(readonly socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (this.received += chunk));
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }
  static open(port: number, host = '127.0.0.1'): Promise<Peer> {
    return new Promise((resolve, reject) => {
      const socket = connect({ port, host }, () => resolve(new Peer(socket)));
      socket.once('error', reject);
    });
  }
  get isClosed(): boolean {
    return this.socket.destroyed;
  }
  /** Status of the first (or `nth`) response once its head arrived. */
  async status(nth = 0, timeoutMs = 3000): Promise<number | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const statuses = [...this.received.matchAll(/HTTP\/1\.1 (\d{3})[^\r]*\r\n/g)].map((m) => Number(m[1]));
      if (statuses.length > nth && this.received.includes('\r\n\r\n')) return statuses[nth];
      if (Date.now() > deadline || this.isClosed) return undefined;
      await sleep(5);
    }
  }
  async waitClosed(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.isClosed && Date.now() < deadline) await sleep(10);
    return this.isClosed;
  }
}

interface Running {
  app: INestApplication;
  port: number;
  host: string;
  limiter: WsRateLimitService;
}

describe('admission edges: handshakes, shutdown and heartbeat (WsRateLimitAdapter)', () => {
  let running: Running | undefined;
  const peers: Peer[] = [];
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions, host = '127.0.0.1'): Promise<Running> => {
    ConnectionsGateway.connections = 0;
    const moduleRef = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })],
      providers: [ConnectionsGateway],
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    app.useWebSocketAdapter(new WsRateLimitAdapter(app));
    await app.listen(0, host);
    const port = (app.getHttpServer().address() as AddressInfo).port;
    running = { app, port, host, limiter: app.get(WsRateLimitService) };
    return running;
  };
  const peer = async (host?: string) => {
    const opened = await Peer.open(running!.port, host ?? (running!.host.includes(':') ? running!.host : '127.0.0.1'));
    peers.push(opened);
    return opened;
  };
  const openSlots = async (ip = '127.0.0.1') => (await running!.limiter.connectionStatus(ip))[1]!.remaining;
  const serverSockets = () =>
    new Promise<number>((resolve) =>
      running!.app.getHttpServer().getConnections((_e: unknown, count: number) => resolve(count)),
    );

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (const one of peers.splice(0)) one.socket.destroy();
    const app = running?.app;
    running = undefined;
    await app?.close();
  });

  // --- Pre-upgrade socket cap and handshake timeout on kept-alive connections ---------------

  describe('concurrent handshakes from one IP at the open-connection cap', () => {
    it.each([
      ['synchronous store', false],
      ['asynchronous store', true],
    ])('admits exactly the cap and gives every slot back (%s)', async (_name, gated) => {
      const store = gated ? new GatedStore() : undefined;
      await start({
        ...(store ? { store } : {}),
        maxConnectionsPerIp: 7,
        maxPendingHandshakesPerIp: 0,
        connection: { capacity: 1000, refillRate: 1000 },
      });
      store?.hold();
      const burst = await Promise.all(Array.from({ length: 40 }, () => peer()));
      for (const one of burst) one.socket.write(UPGRADE());
      if (store) {
        for (let i = 0; i < 200 && store.pending < 40; i++) await sleep(10);
        expect(store.pending).toBe(40);
        store.open();
      }
      const statuses = await Promise.all(burst.map((one) => one.status()));
      expect(statuses.filter((s) => s === 101)).toHaveLength(7);
      expect(statuses.filter((s) => s === 429)).toHaveLength(33);
      for (const one of burst) {
        if (one.received.startsWith('HTTP/1.1 429')) expect(one.received).toMatch(/\r\nRetry-After: [1-9]\d*\r\n/i);
      }
      expect(ConnectionsGateway.connections).toBe(7);
      expect(await openSlots()).toBe(0);
      for (const one of burst) one.socket.destroy();
      for (let i = 0; i < 200 && ((await openSlots()) !== 7 || running!.limiter.stats().connections !== 0); i++) {
        await sleep(10);
      }
      expect(await openSlots()).toBe(7);
      expect(running!.limiter.stats().connections).toBe(0);
    });
  });

  // --- A close racing the store's decision ---------------------------------------------------

  describe('a client that leaves while the store decides its upgrade', () => {
    it.each([
      ['reset', (s: Socket) => s.resetAndDestroy()],
      ['FIN', (s: Socket) => s.end()],
    ])('gives the slot back and never opens a WebSocket (%s)', async (_name, leave) => {
      const store = new GatedStore();
      await start({ store, maxConnectionsPerIp: 3, connection: { capacity: 1000, refillRate: 1000 } });
      store.hold();
      const leaving = await Promise.all([peer(), peer(), peer()]);
      for (const one of leaving) one.socket.write(UPGRADE());
      for (let i = 0; i < 200 && store.pending < 3; i++) await sleep(10);
      for (const one of leaving) leave(one.socket);
      // Let the server see the end (a reset closes the socket; a FIN half-closes it) before the decision.
      await sleep(150);
      store.open();
      await sleep(100);
      for (let i = 0; i < 200 && (await serverSockets()) > 0; i++) await sleep(10);
      expect(await serverSockets()).toBe(0);
      expect(ConnectionsGateway.connections).toBe(0);
      expect(await openSlots()).toBe(3);
      expect(running!.limiter.stats().connections).toBe(0);
    });
  });

  // --- app.close() during handshakes ---------------------------------------------------------

  describe('app.close() during handshakes', () => {
    // The bounds on close() allow for the longest stall of this process.
    const stalls = watchStalls();
    it('finishes promptly while a store decision is pending, and leaves no socket open', async () => {
      const store = new GatedStore();
      const { app } = await start({ store, maxConnectionsPerIp: 3, handshakeTimeoutMs: 5000 });
      store.hold();
      const waiting = await peer();
      waiting.socket.write(UPGRADE());
      for (let i = 0; i < 200 && store.pending < 1; i++) await sleep(10);
      const started = performance.now();
      setTimeout(() => store.open(), 100).unref();
      running = undefined;
      await app.close();
      const took = performance.now() - started;
      expect(await waiting.waitClosed(2000)).toBe(true);
      expect(waiting.received).not.toMatch(/^HTTP\/1\.1 101/);
      expect(took).toBeLessThan(1000 + Math.min(stalls.longestMs(), 2000));
    });

    it('finishes promptly while an upgrade request is still arriving', async () => {
      const { app } = await start({ handshakeTimeoutMs: 4000 });
      const slow = await peer();
      slow.socket.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n');
      await sleep(50);
      const started = performance.now();
      running = undefined;
      await app.close();
      const took = performance.now() - started;
      expect(await slow.waitClosed(1000)).toBe(true);
      expect(took).toBeLessThan(1000 + Math.min(stalls.longestMs(), 2000));
    }, 10_000);
  });

  // --- Address spellings on real sockets -------------------------------------------------

  describe('IPv4-mapped and IPv6 peers', () => {
    it('keys an IPv4 client reaching a v4-mapped listener as its IPv4 address, and trusts it as loopback', async () => {
      const { port } = await start(
        {
          connection: { capacity: 2, refillRate: 0.01 },
          tracker: 'ip',
          trustProxy: 'loopback',
          maxPendingHandshakesPerIp: 2,
        },
        '::ffff:127.0.0.1',
      );
      const a = await TestClient.connect(`ws://127.0.0.1:${port}`, { headers: { 'X-Forwarded-For': '203.0.113.1' } });
      clients.push(a);
      a.send('whoami');
      expect((await a.waitForEvent('whoami'))[0]!.data).toBe('ip:203.0.113.1');
      // Without a forwarding header, the trusted peer's own address: 127.0.0.1 (not ::ffff:127.0.0.1).
      const b = await TestClient.connect(`ws://127.0.0.1:${port}`);
      clients.push(b);
      b.send('whoami');
      expect((await b.waitForEvent('whoami'))[0]!.data).toBe('ip:127.0.0.1');
      expect((await running!.limiter.connectionStatus('127.0.0.1'))[0]!.remaining).toBe(1);
    });

    it('groups ::1 under ::/64 and refuses past the rate with 429', async () => {
      const { port } = await start({ connection: { capacity: 2, refillRate: 0.01 } }, '::1');
      const url = `ws://[::1]:${port}`;
      const ok = [await TestClient.connect(url), await TestClient.connect(url)];
      clients.push(...ok);
      const refused = await TestClient.connect(url).catch((error: Error) => error);
      expect(String(refused)).toMatch(/HTTP 429/);
      // connectionStatus takes the key as the adapter makes it, or the address itself.
      expect((await running!.limiter.connectionStatus('::/64'))[0]!.remaining).toBe(0);
      expect((await running!.limiter.connectionStatus('::1'))[0]!.remaining).toBe(0);
      const client = await TestClient.connect(url, {}).catch(() => undefined);
      expect(client).toBeUndefined();
    });
  });

  // --- Forwarding chains (table) -----------------------------------------------------------

  describe('forwarding chains', () => {
    const request = (peer: string, headers: Record<string, string>) =>
      ({ socket: { remoteAddress: peer }, headers }) as unknown as IncomingMessage;
    const trust = (value: WsRateLimitModuleOptions['trustProxy']) =>
      resolveOptions({ useEnv: false, trustProxy: value } as WsRateLimitModuleOptions).trustProxy;

    it.each<[string, WsRateLimitModuleOptions['trustProxy'], string, Record<string, string>, string | undefined]>([
      ['untrusted peer, spoofed XFF', undefined, '127.0.0.1', { 'x-forwarded-for': '6.6.6.6' }, '127.0.0.1'],
      ['mapped untrusted peer', undefined, '::ffff:127.0.0.1', { 'x-forwarded-for': '6.6.6.6' }, '127.0.0.1'],
      ['right-most untrusted', 'loopback', '127.0.0.1', { 'x-forwarded-for': '1.1.1.1, 6.6.6.6' }, '6.6.6.6'],
      ['mapped trusted peer', 'loopback', '::ffff:127.0.0.1', { 'x-forwarded-for': '6.6.6.6' }, '6.6.6.6'],
      ['port stripped', 'loopback', '127.0.0.1', { 'x-forwarded-for': '1.2.3.4:5678' }, '1.2.3.4'],
      ['bracketed v6 with port', 'loopback', '127.0.0.1', { 'x-forwarded-for': '[2001:db8::1]:443' }, '2001:db8::1'],
      [
        'invalid entry stops at trusted hop',
        'loopback',
        '127.0.0.1',
        { 'x-forwarded-for': '::8:8:8:8:8:8:8:8:8' },
        '127.0.0.1',
      ],
      ['zone id dropped', 'loopback', '127.0.0.1', { 'x-forwarded-for': 'fe80::1%eth0' }, 'fe80::1'],
      ['trusted hops skipped', 'loopback', '127.0.0.1', { 'x-forwarded-for': '9.9.9.9, 127.0.0.5, ::1' }, '9.9.9.9'],
      ['one plain entry', 'loopback', '127.0.0.1', { 'x-forwarded-for': '5.5.5.5' }, '5.5.5.5'],
      [
        '1000 trusted entries capped',
        'loopback',
        '127.0.0.1',
        { 'x-forwarded-for': Array(1000).fill('127.0.0.1').join(',') },
        '127.0.0.1',
      ],
      ['hop count 1 takes the last entry', 1, '127.0.0.1', { 'x-forwarded-for': '1.1.1.1, 2.2.2.2' }, '2.2.2.2'],
      ['hop count 2', 2, '127.0.0.1', { 'x-forwarded-for': '1.1.1.1, 2.2.2.2' }, '1.1.1.1'],
    ])('%s', (_name, trustProxy, peerAddress, headers, expected) => {
      expect(resolveClientAddress(request(peerAddress, headers), trust(trustProxy))).toBe(expected);
    });

    it('reads Forwarded for= (quoted, bracketed, with port) from a trusted proxy', () => {
      const chain = { forwarded: 'for=1.1.1.1, for="[2001:db8::7]:4711";proto=https' };
      expect(resolveClientAddress(request('127.0.0.1', chain), trust('loopback'), 'forwarded')).toBe('2001:db8::7');
    });
  });

  // --- Heartbeat ----------------------------------------------------------------------------

  describe('heartbeat', () => {
    it('keeps a peer that answers each ping well within pongTimeoutMs while the loop is busy for under a tick', async () => {
      // tick = min(ping/2, pong/2) = 250 ms. The peer answers 300 ms after a ping (pong
      // timeout 500 ms), then the process is busy for 220 ms (less than one tick), across
      // the deadline. Long figures: a loaded machine's delays stay well inside them.
      const { port } = await start({ pingIntervalMs: 1000, pongTimeoutMs: 500 });
      // A round where a pong went out late (this machine stalled: the peer's 300 ms timer
      // fired 150 ms or more late) proves nothing: the server may rightly end that peer. Such
      // a run is tried again with a new peer, at most three times.
      for (let attempt = 1; ; attempt++) {
        const live = await TestClient.connect(`ws://127.0.0.1:${port}`, { autoPong: false });
        clients.push(live);
        let pings = 0;
        const answeredAfter: number[] = [];
        live.socket.on('ping', () => {
          pings++;
          const pinged = performance.now();
          // Answer from the check phase (after a poll), then keep the process busy so the
          // server's next timers phase comes before the poll that would read the pong.
          setTimeout(
            () =>
              setImmediate(() => {
                if (live.socket.readyState !== WebSocket.OPEN) return;
                live.socket.pong();
                answeredAfter.push(Math.round(performance.now() - pinged));
                const until = performance.now() + 220;
                while (performance.now() < until);
              }),
            300,
          );
        });
        for (let i = 0; i < 600 && pings < 3 && live.socket.readyState === WebSocket.OPEN; i++) await sleep(10);
        // Every pong went out well inside the 500 ms pong timeout, or the run is tried again.
        if (!answeredAfter.every((ms) => ms < 450) && attempt < 3) {
          live.socket.terminate();
          continue;
        }
        expect(answeredAfter.every((ms) => ms < 450)).toBe(true);
        expect({ open: live.socket.readyState === WebSocket.OPEN, pings, answeredAfter }).toEqual({
          open: true,
          pings: 3,
          answeredAfter,
        });
        return;
      }
    }, 40_000);
  });
});
