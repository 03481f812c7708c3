import { afterEach, describe, expect, it } from '@jest/globals';
import WebSocket from 'ws';
import {
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { upgrade } from '../../support/http.js';
import { sleep, TestClient } from '../../support/ws-client.js';
import { ConnectionsGateway } from './connections.gateway.js';

describe('connection limits at the upgrade (WsRateLimitAdapter)', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions) => {
    ConnectionsGateway.connections = 0;
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })], providers: [ConnectionsGateway] },
      (app) => new WsRateLimitAdapter(app),
    );
    return running;
  };
  const connect = async (headers: Record<string, string> = {}) => {
    const client = await TestClient.connect(running!.url, { headers });
    clients.push(client);
    return client;
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  it('refuses the sixth rapid connection with 429 and a Retry-After that, honoured, succeeds', async () => {
    const { port } = await start({ connection: { capacity: 5, refillRate: 1 } });
    for (let i = 0; i < 5; i++) expect((await upgrade(port)).status).toBe(101);
    const refused = await upgrade(port);
    expect(refused.status).toBe(429);
    expect(refused.upgraded).toBe(false);
    const retryAfter = Number(refused.headers['retry-after']);
    expect(retryAfter).toBe(1);
    await sleep(retryAfter * 1000);
    expect((await upgrade(port)).status).toBe(101);
    // No gateway code ran for the refused one.
    expect(ConnectionsGateway.connections).toBe(6);
  });

  it('caps open connections per client and frees a slot when one closes', async () => {
    await start({ connection: { capacity: 1000, refillRate: 1000 }, maxConnectionsPerIp: 3 });
    const open = [await connect(), await connect(), await connect()];
    expect((await upgrade(running!.port)).status).toBe(429);
    await open[0]!.close();
    // The slot comes back when the server sees the TCP close.
    const limiter = running!.app.get(WsRateLimitService);
    for (let i = 0; i < 100; i++) {
      const [, concurrency] = await limiter.connectionStatus('127.0.0.1');
      if (concurrency!.remaining === 1) break;
      await sleep(20);
    }
    await connect();
    expect(ConnectionsGateway.connections).toBe(4);
  });

  it('can accept and close with 1008 instead, so browsers learn why', async () => {
    await start({ connection: { capacity: 2, refillRate: 0.1 }, connectionRefusal: 'close' });
    await connect();
    await connect();
    const refused = await connect();
    expect(await refused.waitClose()).toEqual({ code: 1008, reason: 'Connection rate limit exceeded' });
    expect(ConnectionsGateway.connections).toBe(2);
  });

  it('closes with 1008 when the open-connection cap is reached, in close mode', async () => {
    await start({ connection: { capacity: 100, refillRate: 100 }, maxConnectionsPerIp: 1, connectionRefusal: 'close' });
    await connect();
    const refused = await connect();
    expect(await refused.waitClose()).toEqual({ code: 1008, reason: 'Too many connections' });
    expect(ConnectionsGateway.connections).toBe(1);
  });

  it('ignores X-Forwarded-For from an untrusted peer', async () => {
    const { port } = await start({ connection: { capacity: 3, refillRate: 0.1 }, tracker: 'ip' });
    for (let i = 0; i < 3; i++) {
      expect((await upgrade(port, { 'X-Forwarded-For': `6.6.6.${i}` })).status).toBe(101);
    }
    expect((await upgrade(port, { 'X-Forwarded-For': '7.7.7.7' })).status).toBe(429);
    const client = await TestClient.connect(`ws://127.0.0.1:${port}`, {
      headers: { 'X-Forwarded-For': '8.8.8.8' },
    }).catch((error: Error) => error);
    expect(client).toBeInstanceOf(Error);
  });

  it('reads only the configured forwarding header from a trusted proxy (forwardedHeader)', async () => {
    const { port } = await start({
      connection: { capacity: 2, refillRate: 0.1 },
      trustProxy: 'loopback',
      forwardedHeader: 'forwarded',
    });
    // Each Forwarded address has its own bucket of 2.
    for (let i = 0; i < 4; i++) expect((await upgrade(port, { Forwarded: `for=6.6.6.${i}` })).status).toBe(101);
    // X-Forwarded-For is not read at all: these all count as the proxy's own address.
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) statuses.push((await upgrade(port, { 'X-Forwarded-For': `7.7.7.${i}` })).status);
    expect(statuses).toEqual([101, 101, 429]);
  });

  it('believes a trusted proxy, taking the right-most untrusted entry', async () => {
    await start({ connection: { capacity: 2, refillRate: 0.1 }, tracker: 'ip', trustProxy: 'loopback, 10.0.0.0/8' });
    const client = await connect({ 'X-Forwarded-For': '6.6.6.6, 203.0.113.7, 10.1.2.3' });
    client.send('whoami');
    expect((await client.waitForEvent('whoami'))[0]!.data).toBe('ip:203.0.113.7');
    await connect({ 'X-Forwarded-For': '1.1.1.1, 203.0.113.7' });
    expect((await upgrade(running!.port, { 'X-Forwarded-For': '203.0.113.7' })).status).toBe(429);
    // Another client behind the same proxy has its own budget.
    expect((await upgrade(running!.port, { 'X-Forwarded-For': '203.0.113.8' })).status).toBe(101);
  });

  it('groups IPv6 clients by /64', async () => {
    await start({ connection: { capacity: 2, refillRate: 0.1 }, tracker: 'ip', trustProxy: 1 });
    const client = await connect({ 'X-Forwarded-For': '2001:db8:1:2:aaaa::1' });
    client.send('whoami');
    expect((await client.waitForEvent('whoami'))[0]!.data).toBe('ip:2001:db8:1:2::/64');
    expect((await upgrade(running!.port, { 'X-Forwarded-For': '2001:db8:1:2:bbbb::9' })).status).toBe(101);
    expect((await upgrade(running!.port, { 'X-Forwarded-For': '2001:db8:1:2::ffff' })).status).toBe(429);
    expect((await upgrade(running!.port, { 'X-Forwarded-For': '2001:db8:1:3::1' })).status).toBe(101);
  });

  it('closes an oversized frame with 1009', async () => {
    await start({ maxPayload: 1024 });
    const client = await connect();
    client.send('echo', 'x'.repeat(1024));
    expect((await client.waitClose()).code).toBe(1009);
  });

  it('limits compressed frames after inflation', async () => {
    await start({ maxPayload: 64 * 1024, perMessageDeflate: true });
    const client = await TestClient.connect(running!.url, { perMessageDeflate: true });
    clients.push(client);
    // 1 MiB of one character deflates to about a kilobyte on the wire.
    client.send('echo', 'a'.repeat(1024 * 1024));
    expect((await client.waitClose()).code).toBe(1009);
  });

  it('charges malformed and unknown frames, ends the flood with 1008, and spares other clients', async () => {
    await start({ global: { capacity: 5, refillRate: 0.1 }, violations: { max: 3, windowMs: 60_000 } });
    const flooder = await connect();
    const bystander = await connect();
    flooder.sendRaw('{not json');
    flooder.sendRaw(Buffer.from([1, 2, 3]));
    flooder.sendRaw(JSON.stringify({ event: 'nope', data: 1 }));
    flooder.sendRaw('"a string"');
    flooder.sendRaw(JSON.stringify({ event: '__proto__' }));
    for (let i = 0; i < 50 && flooder.socket.readyState === WebSocket.OPEN; i++) flooder.sendRaw('garbage');
    const closed = await flooder.waitClose();
    expect(closed).toEqual({ code: 1008, reason: 'Rate limit violations' });
    expect(flooder.events('error').map((frame) => frame.data.code)).toEqual([
      'INVALID_MESSAGE',
      'INVALID_MESSAGE',
      'UNKNOWN_EVENT',
      'INVALID_MESSAGE',
      'UNKNOWN_EVENT',
    ]);
    const limits = flooder.events('rate_limit');
    expect(limits.map((frame) => frame.data.warningCount)).toEqual([1, 2, 3]);
    expect(limits[0]!.data).toMatchObject({ code: 'GLOBAL_LIMIT', messageType: 'invalid', limit: 5 });
    for (let i = 0; i < 5; i++) bystander.send('echo', i);
    await bystander.waitForEvent('echo', 5);
    expect(bystander.events('rate_limit')).toHaveLength(0);
  });

  it('echoes a message id in the frame answering it, so a client knows which message was refused', async () => {
    await start({ type: { capacity: 1, refillRate: 0.1 } });
    const client = await connect();
    const send = (frame: object) => client.sendRaw(JSON.stringify(frame));
    send({ event: 'echo', data: 1, id: 'first' });
    send({ event: 'echo', data: 2, id: 'second' });
    send({ event: 'echo', data: 3, id: 42 });
    send({ event: 'echo', data: 4, id: 'x'.repeat(65) });
    send({ event: 'echo', data: 5, id: { not: 'an id' } });
    send({ event: 'missing', id: 7 });
    await client.waitFor((frame) => frame.event === 'rate_limit' || frame.event === 'error', 5);
    expect(client.events('echo')).toHaveLength(1);
    expect(client.events('rate_limit').map((frame) => frame.data.id)).toEqual(['second', 42, undefined, undefined]);
    expect(client.events('error')[0]!.data).toEqual({ code: 'UNKNOWN_EVENT', id: 7 });
  });
});
