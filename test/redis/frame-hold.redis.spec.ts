import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from '@jest/globals';
import { WsRateLimitAdapter, WsRateLimitModule, type WsRateLimitModuleOptions } from '../../lib/index.js';
import { CloseOrderGateway, handled } from '../e2e/messages/close-order.gateway.js';
import { startApp, type RunningApp } from '../support/app.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { TestClient, type Frame } from '../support/ws-client.js';

/**
 * The close-order edges on the Redis store, where every decision waits on a round trip and
 * the adapter holds a connection's later frames meanwhile: the threshold and the close of a
 * burst in one read come out as on the memory store.
 */
describe('a burst in one read on Redis: held frames, the threshold and the close', () => {
  let redis: RedisServer;
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}) => {
    running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            store: 'redis',
            tracker: 'ip',
            global: { capacity: 1000, refillRate: 1000 },
            violations: { max: 10, windowMs: 60_000 },
            ...options,
            // Exact counts are the store's promise while Redis answers: a long deadline keeps
            // every decision in Redis on a loaded machine (the fallback is tested elsewhere).
            redis: { url: redis.url, commandTimeoutMs: 2000, ...options.redis },
          }),
        ],
        providers: [CloseOrderGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
  };
  const connect = async () => {
    const client = await TestClient.connect(running!.url, { perMessageDeflate: false });
    clients.push(client);
    return client;
  };
  const burst = (client: TestClient, count: number, event: string) =>
    client.inOneWrite(() => {
      for (let i = 0; i < count; i++) client.send(event, i);
    });
  const events = (frames: Frame[]) => frames.map((frame) => frame.event);

  beforeAll(async () => {
    redis = await startRedis();
  });
  beforeEach(() => {
    handled.chat = handled.search = 0;
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
    await redis.command('FLUSHALL');
  });
  afterAll(() => redis.stop());

  for (const reservationBatch of [0, 64]) {
    it(`45 chats in one write (reservation batch ${reservationBatch}): 30 acks in order, 10 rate_limit frames, the 1008 close`, async () => {
      await start({ redis: { reservationBatch } });
      const client = await connect();
      burst(client, 45, 'chat');
      const closed = await client.waitClose();
      expect(closed.code).toBe(1008);
      expect(events(client.frames)).toEqual([...Array(30).fill('ack'), ...Array(10).fill('rate_limit')]);
      expect(client.frames.slice(0, 30).map((frame) => frame.data)).toEqual([...Array(30).keys()]);
      expect(client.frames.slice(30).map((frame) => frame.data.warningCount)).toEqual(
        [...Array(10).keys()].map((i) => i + 1),
      );
      // The five after the tenth violation were not processed.
      expect(handled.chat).toBe(30);
    });
  }

  it('200 presences in one write, beyond the hold limit: 1 reply, 10 rate_limit frames, the close', async () => {
    await start({ redis: { reservationBatch: 0 } });
    const client = await connect();
    burst(client, 200, 'presence');
    expect((await client.waitClose()).code).toBe(1008);
    expect(events(client.frames)).toEqual(['presence_ack', ...Array(10).fill('rate_limit')]);
    expect(client.frames.slice(1).map((frame) => frame.data.warningCount)).toEqual(
      [...Array(10).keys()].map((i) => i + 1),
    );
  });
});
