import { afterEach, describe, expect, it } from '@jest/globals';
import { ConnectedSocket, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import {
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { ioHarness } from '../../support/io-harness.js';
import { sleep, TestClient } from '../../support/ws-client.js';

// Adversarial review of the attack catalogue's sections A-C (RELIABILITY.md C-1..C-20),
// cases C-4 (hostile type values), C-15 (distinct-key floods), C-17/C-18 (forwarding chains,
// IPv6 grouping and IPv4-mapped forms), on both transports where they apply.
// Two cases failed on the code reviewed (d8f2550) and were fixed: one connection spending
// 20,000 client-named types from code held 20,000 states (types from code past 1,024 now
// share one bucket), and 32 KiB tracker names were held whole by the memory store (names
// over 256 characters are now keyed by a digest).

const MiB = 1024 * 1024;

/** Reports whose budget a client spends, and spends a type named by the client from code. */
@WebSocketGateway()
@WsRateLimit()
class ReviewGateway {
  constructor(private readonly limiter: WsRateLimitService) {}

  @SubscribeMessage('whoami')
  async whoami(@ConnectedSocket() client: object) {
    return { event: 'whoami', data: (await this.limiter.status(client)).tracker };
  }

  /** The server side of the latest connection, for spending from code. */
  static latest: object | undefined;

  handleConnection(client: object): void {
    ReviewGateway.latest = client;
  }
}

async function waitUntil(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await sleep(10);
  }
}

const gc = (): void => (globalThis as { gc?: () => void }).gc?.();

describe('catalogue A-C review (ws, WsRateLimitAdapter)', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions) => {
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })], providers: [ReviewGateway] },
      (app) => new WsRateLimitAdapter(app),
    );
    return running.app.get(WsRateLimitService);
  };
  const connect = async (headers: Record<string, string> = {}) => {
    const client = await TestClient.connect(running!.url, { headers });
    clients.push(client);
    return client;
  };
  const refusal = (headers: Record<string, string>) =>
    TestClient.connect(running!.url, { headers }).then(
      (client) => {
        clients.push(client);
        return 'accepted';
      },
      (error: Error) => error.message,
    );
  const whoami = async (client: TestClient) => {
    const before = client.events('whoami').length;
    client.send('whoami');
    return (await client.waitForEvent('whoami', before + 1))[before]!.data;
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  describe('C-17/C-18 forwarding chains end to end', () => {
    it('keys every spelling of one IPv4 client (mapped, hex-mapped, uncompressed) as that address, sharing one bucket', async () => {
      await start({ trustProxy: 'loopback', tracker: 'ip', connection: { capacity: 5, refillRate: 0.001 } });
      const spellings = ['1.2.3.4', '::ffff:1.2.3.4', '::FFFF:102:304', '0:0:0:0:0:ffff:1.2.3.4', '::0:ffff:0102:0304'];
      for (const spelling of spellings) {
        const client = await connect({ 'X-Forwarded-For': `9.9.9.9, ${spelling}` });
        expect(await whoami(client)).toBe('ip:1.2.3.4');
      }
      // The bucket of 5 is spent, whatever the spelling of the sixth attempt.
      expect(await refusal({ 'X-Forwarded-For': '::ffff:1.2.3.4' })).toBe('HTTP 429');
      expect(await refusal({ 'X-Forwarded-For': '1.2.3.4' })).toBe('HTTP 429');
      // Another client behind the same proxy is unaffected.
      expect(await refusal({ 'X-Forwarded-For': '1.2.3.5' })).toBe('accepted');
    });

    it('skips a trusted hop written in IPv4-mapped hex form, and stops at an untrusted one', async () => {
      await start({ trustProxy: ['loopback', '10.0.0.0/8'], tracker: 'ip' });
      const through = await connect({ 'X-Forwarded-For': '6.6.6.6, ::ffff:a00:1, ::ffff:7f00:1' });
      expect(await whoami(through)).toBe('ip:6.6.6.6');
      // 11.0.0.1 is not trusted: the walk stops there, the spoofed left part is not believed.
      const spoofed = await connect({ 'X-Forwarded-For': '6.6.6.6, 11.0.0.1, 10.0.0.1' });
      expect(await whoami(spoofed)).toBe('ip:11.0.0.1');
    });

    it('groups IPv6 clients by ipv6Prefix and keys 2001:db8::1.2.3.4 as IPv6, not as 1.2.3.4', async () => {
      await start({
        trustProxy: 'loopback',
        tracker: 'ip',
        ipv6Prefix: 48,
        connection: { capacity: 2, refillRate: 0.001 },
      });
      const a = await connect({ 'X-Forwarded-For': '2001:db8:1:2::1' });
      expect(await whoami(a)).toBe('ip:2001:db8:1::/48');
      const b = await connect({ 'X-Forwarded-For': '[2001:DB8:1:ffff::9]:443' });
      expect(await whoami(b)).toBe('ip:2001:db8:1::/48');
      expect(await refusal({ 'X-Forwarded-For': '2001:db8:1:abcd::77' })).toBe('HTTP 429');
      // A neighbouring /48 has its own bucket; an embedded-IPv4 tail is no IPv4 client.
      const c = await connect({ 'X-Forwarded-For': '2001:db8:2::1' });
      expect(await whoami(c)).toBe('ip:2001:db8:2::/48');
      const d = await connect({ 'X-Forwarded-For': '2001:db8::1.2.3.4' });
      expect(await whoami(d)).toBe('ip:2001:db8::/48');
    });

    it('with a hop count, believes exactly that many entries, whatever the peer', async () => {
      await start({ trustProxy: 2, tracker: 'ip' });
      const client = await connect({ 'X-Forwarded-For': '6.6.6.6, 1.1.1.1, 2.2.2.2' });
      expect(await whoami(client)).toBe('ip:1.1.1.1');
      // Two entries and two hops: the left-most is the client.
      const twice = await connect({ 'X-Forwarded-For': '6.6.6.6, 3.3.3.3' });
      expect(await whoami(twice)).toBe('ip:6.6.6.6');
    });
  });

  describe('C-4 / C-15 types named by the client, spent from code', () => {
    it('consume(socket, { type }) with client-named types keeps one connection to a bounded number of states', async () => {
      // README ("Metrics"): types passed to consume() "may come from clients". RELIABILITY C-4:
      // "no key is created per arbitrary string"; C-15: memory bounded. A connection's own
      // states live in a store with no maxKeys (its limits are exact), so one connection that
      // named 20,000 types held 20,000 bucket states until it closed (this case failed so on
      // d8f2550). Past 1,024 known types, types from code share one bucket, `(other)`: the
      // states stay bounded, and inventing names is no way around a type limit.
      const limiter = await start({
        maxKeys: 1000,
        global: { capacity: 100_000, refillRate: 100_000 },
        type: { capacity: 5, refillRate: 1000 },
      });
      await connect();
      const socket = ReviewGateway.latest!;
      // What `consume(client, { type: data.kind })` in a handler does for 20,000 messages.
      let allowed = 0;
      for (let i = 0; i < 20_000; i++) if ((await limiter.consume(socket, { type: `kind-${i}` })).allowed) allowed++;
      // At least every type that got its own bucket (1,024 less those the gateway's handlers named).
      expect(allowed).toBeGreaterThanOrEqual(1000);
      expect(allowed).toBeLessThan(20_000);
      // The global bucket, at most 1,024 type buckets and the shared one.
      expect(limiter.stats().localKeys).toBeLessThanOrEqual(1026);
    });
  });

  describe('C-16 residue of types spent from code', () => {
    it('frees every state a connection spent from code when it closes', async () => {
      const limiter = await start({ global: { capacity: 100_000, refillRate: 100_000 } });
      const client = await connect();
      const socket = ReviewGateway.latest!;
      for (let i = 0; i < 2000; i++) await limiter.consume(socket, { type: `kind-${i}` });
      // 1,024 types' own buckets (past them, types from code share one) and the global bucket.
      expect(limiter.stats().localKeys).toBeGreaterThan(1000);
      await client.close();
      await waitUntil(() => limiter.stats().connections === 0);
      expect(limiter.stats().localKeys).toBe(0);
    });
  });

  describe('C-15 distinct-key flood with long tracker names', () => {
    it('tracker names over 256 characters are keyed by a digest in the memory store, not held at their full length', async () => {
      // RELIABILITY C-15: "Keys are hashed to a fixed length"; pass: heap bounded (~181 B an
      // entry). README ("Performance"): "a tracker costs 78 bytes of heap in the memory store".
      // A `tracker` function typically returns something the client chose (an API key, a
      // token's subject): with names of 32 KiB each, the 500 trackers that maxKeys 1,000 keeps
      // (two tier states each) hold 16 MB of names; 50,000 (the default maxKeys) 1.6 GB. The Redis store hashes them (sha1), the
      // memory store keeps them verbatim.
      const limiter = await start({ maxKeys: 1000, tracker: () => undefined });
      const name = (i: number) => `${i}:`.padEnd(32 * 1024, 'x');
      // Warm up what one-off structures need (table pages, plans).
      for (let i = 0; i < 50; i++) await limiter.consume(name(-i - 1), { type: 'whoami' });
      gc();
      const before = process.memoryUsage().heapUsed;
      for (let i = 0; i < 1500; i++) await limiter.consume(name(i), { type: 'whoami' });
      gc();
      const grown = process.memoryUsage().heapUsed - before;
      expect(limiter.stats().storeKeys).toBeLessThanOrEqual(1000);
      // 500 trackers of a few hundred bytes each would be well under 2 MiB.
      expect(grown).toBeLessThan(2 * MiB);
    });
  });
});

describe('catalogue A-C review (socket.io, WsRateLimitIoAdapter)', () => {
  const harness = ioHarness();

  afterEach(() => harness.close());

  @WebSocketGateway()
  @WsRateLimit()
  class IoReviewGateway {
    constructor(private readonly limiter: WsRateLimitService) {}

    @SubscribeMessage('whoami')
    async whoami(@ConnectedSocket() client: object) {
      return { event: 'whoami', data: (await this.limiter.status(client)).tracker };
    }
  }

  it.each(['websocket', 'polling'] as const)(
    'C-18 on %s: keys mapped spellings of one IPv4 client as one address, sharing one bucket',
    async (transport) => {
      const url = await harness.start([IoReviewGateway], {
        trustProxy: 'loopback',
        tracker: 'ip',
        connection: { capacity: 3, refillRate: 0.001 },
      });
      for (const spelling of ['1.2.3.4', '::ffff:102:304', '0:0:0:0:0:ffff:1.2.3.4']) {
        const client = await harness.connect(url, transport, { extraHeaders: { 'X-Forwarded-For': spelling } });
        client.socket.emit('whoami');
        await client.until(() => client.of('whoami').length === 1);
        expect(client.of('whoami')).toEqual(['ip:1.2.3.4']);
      }
      const refused = harness.client(url, transport, { extraHeaders: { 'X-Forwarded-For': '::ffff:1.2.3.4' } });
      await expect(refused.connected()).rejects.toBeDefined();
      const other = await harness.connect(url, transport, { extraHeaders: { 'X-Forwarded-For': '1.2.3.5' } });
      other.socket.emit('whoami');
      await other.until(() => other.of('whoami').length === 1);
      expect(other.of('whoami')).toEqual(['ip:1.2.3.5']);
    },
  );
});
