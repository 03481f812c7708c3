import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import type { INestApplicationContext } from '@nestjs/common';
import { createAdapter } from '@socket.io/redis-adapter';
import { Redis } from 'ioredis';
import type { Server, ServerOptions } from 'socket.io';
import {
  RedisRateLimitStore,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { closeClients, rawHandshake, refusalStatus } from '../e2e/socket-io/c35-support.js';
import { C35Gateway, resetSeen, seen } from '../e2e/socket-io/c35.gateway.js';
import { startApp, type RunningApp } from '../support/app.js';
import { connectIo, ENGINE_TRANSPORTS, IoTestClient, waitFor } from '../support/io-client.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { closeClient, ready, sleep } from './helpers.js';

/** `WsRateLimitIoAdapter` with socket.io's Redis adapter, as an app running several instances sets it up. */
class RedisIoAdapter extends WsRateLimitIoAdapter {
  constructor(
    app: INestApplicationContext,
    private readonly redisAdapter: ReturnType<typeof createAdapter>,
  ) {
    super(app);
  }

  override createIOServer(port: number, options?: ServerOptions): Server {
    const server = super.createIOServer(port, options);
    server.adapter(this.redisAdapter);
    return server;
  }
}

/** One instance: a NestJS app on the Redis store, its sockets shared through the Redis adapter. */
interface Instance {
  running: RunningApp;
  limiter: WsRateLimitService;
  url: string;
  pub: Redis;
  sub: Redis;
}

/**
 * C-35 (RELIABILITY.md) on socket.io across instances: two NestJS apps in this process on one
 * real Redis, with `store: 'redis'` (tracker `ip`) and `@socket.io/redis-adapter`. Shared
 * limits hold exactly across them (C-10's open-connection cap, a message type's budget), and
 * a broadcast through the Redis adapter reaches the other instance's clients.
 */
describe.each(ENGINE_TRANSPORTS)('socket.io instances sharing one Redis over %s (C-35)', (transport) => {
  let redis: RedisServer;
  const instances: Instance[] = [];
  const clients: IoTestClient[] = [];
  let test = 0;

  beforeAll(async () => {
    redis = await startRedis();
  }, 60_000);
  afterAll(() => redis.stop());

  afterEach(async () => {
    await closeClients(clients.splice(0));
    for (const instance of instances.splice(0)) {
      await instance.running.close();
      await closeClient(instance.pub);
      await closeClient(instance.sub);
    }
  });

  /** Two instances with the same options, keys of this test only. */
  const startPair = async (options: WsRateLimitModuleOptions = {}): Promise<[Instance, Instance]> => {
    resetSeen();
    const keyPrefix = `wsrl:io${++test}:`;
    const one = async (): Promise<Instance> => {
      const pub = new Redis(redis.url, { maxRetriesPerRequest: 1 });
      const sub = pub.duplicate();
      await Promise.all([ready(pub), ready(sub)]);
      const running = await startApp(
        {
          imports: [
            WsRateLimitModule.forRoot({
              useEnv: false,
              store: 'redis',
              // A long deadline keeps every decision in Redis on a loaded machine (exactness is
              // the store's promise while Redis answers).
              redis: { url: redis.url, commandTimeoutMs: 5000 },
              keyPrefix,
              tracker: 'ip',
              violations: { max: 1000, windowMs: 60_000 },
              ...options,
            }),
          ],
          providers: [C35Gateway],
        },
        (app) => new RedisIoAdapter(app, createAdapter(pub, sub)),
      );
      const instance = {
        running,
        limiter: running.app.get(WsRateLimitService),
        url: `http://127.0.0.1:${running.port}`,
        pub,
        sub,
      };
      instances.push(instance);
      return instance;
    };
    const pair: [Instance, Instance] = [await one(), await one()];
    expect(pair[0].limiter.store).toBeInstanceOf(RedisRateLimitStore);
    return pair;
  };
  const connect = async (instance: Instance) => {
    const client = await connectIo(instance.url, transport);
    clients.push(client);
    return client;
  };
  const engineClients = (instance: Instance) =>
    (instance.running.app.get(C35Gateway).server as Server).engine.clientsCount;

  it('C-10: opens exactly the cap of 20 across both instances and refuses the rest with 429', async () => {
    const pair = await startPair({
      connection: { capacity: 100_000, refillRate: 100_000 },
      maxConnectionsPerIp: 20,
      maxPendingHandshakesPerIp: 0,
    });
    const attempts = 500;
    const flood = Array.from(
      { length: attempts },
      (_, i) => new IoTestClient(pair[i % 2]!.url, transport, { timeout: 60_000 }),
    );
    clients.push(...flood);
    const results = await Promise.allSettled(flood.map((client) => client.connected()));
    const statuses = results.flatMap((result) => (result.status === 'rejected' ? [refusalStatus(result.reason)] : []));
    expect(results.filter((result) => result.status === 'fulfilled')).toHaveLength(20);
    expect(statuses).toEqual(Array.from({ length: attempts - 20 }, () => 429));
    expect(seen.connections).toBe(20);
    expect(engineClients(pair[0]) + engineClients(pair[1])).toBe(20);

    // Either instance refuses a raw handshake now, with Retry-After.
    for (const instance of pair) {
      const answer = await rawHandshake(instance.running.port, transport);
      expect(answer.status).toBe(429);
      expect(Number(answer.retryAfter)).toBeGreaterThanOrEqual(1);
    }

    // All closed: the shared count is back to zero (the leases hold no units).
    await closeClients(clients.splice(0));
    let held = -1;
    for (let i = 0; i < 250 && held !== 0; i++) {
      held = await heldLeaseUnits(redis);
      if (held !== 0) await sleep(20);
    }
    expect(held).toBe(0);
    for (const instance of pair) expect(instance.limiter.stats()).toMatchObject({ connections: 0, localKeys: 0 });
  }, 120_000);

  it('shares a message budget exactly: events alternated between the instances, 5 admitted in all', async () => {
    const [a, b] = await startPair({ connection: { capacity: 100, refillRate: 100 } });
    const clientA = await connect(a);
    const clientB = await connect(b);
    const answers = () => clientA.events.length + clientB.events.length;
    for (let i = 0; i < 12; i++) {
      const client = i % 2 === 0 ? clientA : clientB;
      client.socket.emit('chat', { id: i });
      await waitFor(() => answers() === i + 1, 10_000, `answer to ${i}`);
    }
    const acked = [...clientA.of('ack'), ...clientB.of('ack')].map((data) => (data as { id: number }).id);
    const refused = [...clientA.of('rate_limit'), ...clientB.of('rate_limit')] as Array<Record<string, unknown>>;
    expect(acked.sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4]);
    expect(refused.map((info) => info.id).sort((x, y) => Number(x) - Number(y))).toEqual([5, 6, 7, 8, 9, 10, 11]);
    for (const info of refused) expect(info).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'chat', limit: 5 });
    // Both instances decided: each admitted and refused some.
    expect(clientA.of('ack').length).toBeGreaterThan(0);
    expect(clientB.of('ack').length).toBeGreaterThan(0);
    expect(clientA.of('rate_limit').length).toBeGreaterThan(0);
    expect(clientB.of('rate_limit').length).toBeGreaterThan(0);
  });

  it('passes a broadcast through the Redis adapter to a client of the other instance', async () => {
    const [a, b] = await startPair({ connection: { capacity: 100, refillRate: 100 } });
    const sender = await connect(a);
    const listener = await connect(b);
    // Both instances' adapters have subscribed (their request channel, after their pattern).
    const subscribers = async () => {
      const reply = (await redis.command('PUBSUB', 'NUMSUB', 'socket.io-request#/#')) as [string, number];
      return Number(reply[1]);
    };
    for (let i = 0; i < 250 && (await subscribers()) < 2; i++) await sleep(20);
    expect(await subscribers()).toBe(2);
    sender.socket.emit('broadcast', { id: 'hello' });
    await listener.until(() => listener.of('news').length === 1, 10_000, 'news on the other instance');
    await sender.until(() => sender.of('news').length === 1, 10_000, 'news on the sender');
    // Over polling the reply may come in a later poll than the broadcast.
    await sender.until(() => sender.of('sent').length === 1, 10_000, 'the reply to the sender');
    expect(listener.of('news')).toEqual([{ id: 'hello' }]);
    expect(sender.of('sent')).toEqual([{ id: 'hello' }]);
    // Once each: the adapter does not echo an instance's own broadcast back to it.
    await sleep(200);
    expect(listener.of('news')).toHaveLength(1);
    expect(sender.of('news')).toHaveLength(1);
  });
});

/** Units held by every open-connection lease in Redis (fields `l:<instance>|<lease>`). */
async function heldLeaseUnits(redis: RedisServer): Promise<number> {
  const keys = (await redis.command('KEYS', '*:cc')) as string[];
  let held = 0;
  for (const key of keys) {
    const flat = (await redis.command('HGETALL', key)) as string[];
    for (let i = 0; i < flat.length; i += 2) if (flat[i]!.startsWith('l:')) held += Number(flat[i + 1]);
  }
  return held;
}
