import { afterEach, describe, expect, it } from '@jest/globals';
import { WsRateLimitModule, WsRateLimitService, type WsRateLimitModuleOptions } from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { connectIo, ENGINE_TRANSPORTS, IoTestClient, waitFor } from '../../support/io-client.js';
import { sleep } from '../../support/ws-client.js';
import { handled, SocketIoGateway } from './socket-io.gateway.js';

describe.each(ENGINE_TRANSPORTS)('socket.io gateway over %s', (transport) => {
  let running: RunningApp | undefined;
  const clients: IoTestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}) => {
    handled.clear();
    running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            tracker: 'connection',
            global: { capacity: 1000, refillRate: 1000 },
            violations: { max: 10, windowMs: 60_000 },
            ...options,
          }),
        ],
        providers: [SocketIoGateway],
      },
      (app) => new WsRateLimitIoAdapter(app),
    );
    return running;
  };
  const url = () => `http://127.0.0.1:${running!.port}`;
  const connect = async (options?: Record<string, unknown>) => {
    const client = await connectIo(url(), transport, options);
    clients.push(client);
    return client;
  };
  const stats = () => running!.app.get(WsRateLimitService).stats();

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await running?.close();
    running = undefined;
  });

  it('answers events over the limit with rate_limit events carrying the frame data and the id', async () => {
    await start();
    const client = await connect();
    for (let i = 0; i < 8; i++) client.socket.emit('chat', { id: i, text: 'hi' });
    await client.until(() => client.of('ack').length + client.of('rate_limit').length === 8);
    expect(client.of('ack')).toEqual([0, 1, 2, 3, 4].map((id) => ({ id, text: 'hi' })));
    const refusals = client.of('rate_limit') as Array<Record<string, unknown>>;
    expect(refusals).toHaveLength(3);
    expect(refusals.map((info) => info.id)).toEqual([5, 6, 7]);
    expect(refusals[0]).toMatchObject({
      code: 'TYPE_LIMIT',
      messageType: 'chat',
      limit: 5,
      remaining: 0,
      warningCount: 1,
    });
    expect(refusals[0]!.retryAfter).toBeGreaterThan(0);
    expect(handled.get('chat')).toBe(5);
  });

  it('answers a refused event sent with an acknowledgement through the ack', async () => {
    await start();
    const client = await connect();
    const answers = await Promise.all(
      Array.from({ length: 5 }, (_, i) => client.socket.timeout(10_000).emitWithAck('ask', { id: `q${i}` })),
    );
    expect(answers.slice(0, 3)).toEqual([0, 1, 2].map((i) => ({ answer: { id: `q${i}` } })));
    for (const [i, answer] of answers.slice(3).entries()) {
      expect(answer).toMatchObject({
        event: 'rate_limit',
        data: { code: 'TYPE_LIMIT', messageType: 'ask', id: `q${i + 3}` },
      });
    }
    // Answered through the ack, not also as an event.
    expect(client.of('rate_limit')).toHaveLength(0);
  });

  it('disconnects at the threshold after the replies of admitted events, telling why', async () => {
    await start({ violations: { max: 3, windowMs: 60_000 } });
    const client = await connect();
    // Three slow admitted events, then enough chat to pass the threshold.
    for (let i = 0; i < 3; i++) client.socket.emit('slow', { ms: 200, id: `s${i}` });
    for (let i = 0; i < 12; i++) client.socket.emit('chat', { id: i });
    await client.disconnected();
    expect(client.disconnectReason).toBe('io server disconnect');
    expect(client.of('slow-done')).toHaveLength(3);
    expect(client.of('ack')).toHaveLength(5);
    expect(client.of('rate_limit')).toHaveLength(3);
    expect(client.of('rate_limit_disconnect')).toEqual([{ code: 1008, reason: expect.any(String) }]);
    // Nothing after the close decision was processed.
    expect(handled.get('chat')).toBe(5);
    await client.until(() => stats().connections === 0, 5000, 'state freed');
    expect(stats()).toMatchObject({ connections: 0, localKeys: 0 });
  });

  it('charges events no handler takes to the global budget', async () => {
    await start({ global: { capacity: 4, refillRate: 0.1 } });
    const client = await connect();
    for (let i = 0; i < 6; i++) client.socket.emit('nobody-listens', { id: i });
    await client.until(() => client.of('rate_limit').length === 2);
    const refusals = client.of('rate_limit') as Array<Record<string, unknown>>;
    expect(refusals.map((info) => [info.code, info.id])).toEqual([
      ['GLOBAL_LIMIT', 4],
      ['GLOBAL_LIMIT', 5],
    ]);
  });

  it('frees a socket state on disconnect, every time', async () => {
    await start({ connection: { capacity: 100, refillRate: 100 } });
    for (let i = 0; i < 30; i++) {
      const client = await connect();
      client.socket.emit('chat', { id: i });
      await client.until(() => client.of('ack').length === 1);
      client.close();
    }
    await waitFor(() => stats().connections === 0, 5000, 'connections back to zero');
    expect(stats()).toMatchObject({ connections: 0, localKeys: 0 });
  });

  it('refuses the sixth rapid connection from one address with 429', async () => {
    await start({ connection: { capacity: 5, refillRate: 0.01 } });
    for (let i = 0; i < 5; i++) await connect();
    const refused = new IoTestClient(url(), transport);
    clients.push(refused);
    await expect(refused.connected()).rejects.toThrow();
    await sleep(50);
    expect(stats().connections).toBe(5);
  });
});
