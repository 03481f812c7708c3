import { afterEach, describe, expect, it } from '@jest/globals';
import { Agent, request as httpRequest } from 'node:http';
import {
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { connectIo, ENGINE_TRANSPORTS, type EngineTransport, type IoTestClient } from '../../support/io-client.js';
import { sleep } from '../../support/ws-client.js';
import { OperationsGateway } from '../operations/operations.gateway.js';

/** The status of an Engine.IO polling handshake from a loopback source address. */
function handshakeFrom(port: number, localAddress: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(
      { host: '127.0.0.1', port, path: '/socket.io/?EIO=4&transport=polling', localAddress, agent: false },
      (response) => {
        response.resume();
        resolve(response.statusCode ?? 0);
      },
    );
    request.on('error', reject);
    request.end();
  });
}

/** Issue 11: plans, shadow mode, degradation, lists and blocks work unchanged on socket.io gateways. */
describe.each(ENGINE_TRANSPORTS)('operations on a socket.io gateway over %s', (transport: EngineTransport) => {
  let running: RunningApp | undefined;
  let limiter: WsRateLimitService;
  const clients: IoTestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions) => {
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })], providers: [OperationsGateway] },
      (app) => new WsRateLimitIoAdapter(app),
    );
    limiter = running.app.get(WsRateLimitService);
    return running;
  };
  const connect = async (headers: Record<string, string> = {}, localAddress?: string) => {
    const client = await connectIo(`http://127.0.0.1:${running!.port}`, transport, {
      extraHeaders: headers,
      // Over WebSocket the option itself; polling requests go through an agent bound to it.
      ...(localAddress ? { localAddress, agent: new Agent({ localAddress }) } : {}),
    });
    clients.push(client);
    return client;
  };
  const answered = (client: IoTestClient, n: number) =>
    client.until(() => client.of('ack').length + client.of('rate_limit').length >= n, 10_000, `${n} answers`);

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await running?.close();
    running = undefined;
  });

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
    for (const client of [free, premium]) for (let i = 0; i < 10; i++) client.socket.emit('chat', i);
    await Promise.all([answered(free, 10), answered(premium, 10)]);
    expect(free.of('ack')).toHaveLength(2);
    expect(premium.of('ack')).toHaveLength(8);
    expect(premium.of('rate_limit')[0]).toMatchObject({ code: 'TYPE_LIMIT', limit: 8 });
  });

  it('shadow mode delivers the whole flood and reports what would have been rejected', async () => {
    await start({ shadow: true, violations: { max: 3, windowMs: 60_000 } });
    const events: RateLimitEvent[] = [];
    const subscription = limiter.events$.subscribe((event) => events.push(event));
    const client = await connect();
    for (let i = 0; i < 12; i++) client.socket.emit('chat', i);
    await client.until(() => client.of('ack').length === 12);
    subscription.unsubscribe();
    expect(client.of('rate_limit')).toHaveLength(0);
    expect(client.socket.connected).toBe(true);
    const rejected = events.filter((event) => event.kind === 'decision' && !event.allowed);
    expect(rejected).toHaveLength(7);
    expect(events.filter((event) => event.kind === 'disconnect' && !event.enforced)).toHaveLength(2);
  });

  it('degrades a repeat offender to essential types for a cooldown, then restores it', async () => {
    await start({ degradeCooldownMs: 1500, violations: { max: 2, windowMs: 60_000 } });
    const client = await connect();
    for (let i = 0; i < 7; i++) client.socket.emit('chat', i);
    await answered(client, 7);
    const refusals = client.of('rate_limit') as Array<{ code: string; retryAfter: number }>;
    expect(refusals.map((info) => info.code)).toEqual(['TYPE_LIMIT', 'DEGRADED']);
    // The cooldown, or the wait of the tier that refused when longer (chat: 10 s a token).
    expect(refusals[1]!.retryAfter).toBeGreaterThan(8000);
    expect(refusals[1]!.retryAfter).toBeLessThanOrEqual(10_000);
    client.socket.emit('receipt', 1);
    await client.until(() => client.of('receipt').length === 1);
    client.socket.emit('chat', 'while degraded');
    await client.until(() => client.of('rate_limit').length === 3);
    expect(client.of('rate_limit')[2]).toMatchObject({ code: 'DEGRADED', messageType: 'chat' });
    await sleep(1600);
    client.socket.emit('receipt', 2);
    await client.until(() => client.of('receipt').length === 2);
    expect(client.socket.connected).toBe(true);
  });

  it('refuses a denied address at the handshake and lets an allowed one skip every limit', async () => {
    const { port } = await start({ denyList: '127.0.0.2', allowList: ['127.0.0.3'] });
    expect(await handshakeFrom(port, '127.0.0.2')).toBe(403);
    const allowed = await connect({}, '127.0.0.3');
    for (let i = 0; i < 20; i++) allowed.socket.emit('chat', i);
    await allowed.until(() => allowed.of('ack').length === 20);
    const ordinary = await connect();
    for (let i = 0; i < 6; i++) ordinary.socket.emit('chat', i);
    await ordinary.until(() => ordinary.of('rate_limit').length === 1);
  });

  it('disconnects a denied tracker, telling why', async () => {
    await start({
      tracker: (_client, { request }) => request?.headers['x-user'] as string | undefined,
      denyList: 'mallory',
      allowList: 'admin',
    });
    const mallory = await connect({ 'x-user': 'mallory' });
    const admin = await connect({ 'x-user': 'admin' });
    mallory.socket.emit('chat', 1);
    await mallory.disconnected();
    expect(mallory.of('rate_limit_disconnect')).toEqual([{ code: 1008, reason: 'Denied' }]);
    for (let i = 0; i < 20; i++) admin.socket.emit('chat', i);
    await admin.until(() => admin.of('ack').length === 20);
  });

  it('blocks an address: new handshakes get 403, open sockets BLOCKED answers, until unblocked', async () => {
    const { port } = await start({});
    const client = await connect();
    client.socket.emit('chat', 1);
    await client.until(() => client.of('ack').length === 1);
    await limiter.block('127.0.0.1', 60_000);
    expect(await handshakeFrom(port, '127.0.0.1')).toBe(403);
    client.socket.emit('chat', 2);
    await client.until(() => client.of('rate_limit').length === 1);
    expect(client.of('rate_limit')[0]).toMatchObject({ code: 'BLOCKED' });
    expect((client.of('rate_limit')[0] as { retryAfter: number }).retryAfter).toBeGreaterThan(55_000);
    await limiter.unblock('127.0.0.1');
    client.socket.emit('chat', 3);
    await client.until(() => client.of('ack').length === 2);
    expect(await handshakeFrom(port, '127.0.0.1')).toBe(200);
  });
});
