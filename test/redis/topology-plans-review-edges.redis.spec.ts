/**
 * Adversarial review of the Redis store on Cluster and Sentinel topologies, with named plans,
 * token reservations, operator blocks and resets, on real redis-server processes this file
 * starts (three-master Clusters, a Sentinel setup; never port 6379).
 *
 * A slot being migrated is put in that state by hand (`CLUSTER SETSLOT ... IMPORTING` on the
 * target, `MIGRATING` on the source, and for the ASK case the tracker's keys MIGRATEd), as
 * `redis-cli --cluster reshard` does for each slot; both masters stay up meanwhile.
 *
 * Four cases failed on the code reviewed (aa3714d), each fixed since: the generic
 * consume/peek script and the reserve script named every tier key in KEYS although a
 * bucket's tier key never exists (its state is a field of the tracker hash); during a
 * migration Redis answered such a call TRYAGAIN (some keys missing), ioredis retried it
 * 100 ms later, past the 50 ms deadline: the decision failed, three opened the breaker, and
 * the retry still ran after the fail mode answered (counted twice). The scripts now name
 * only the tracker hashes and the keys that may exist (a large sliding log's sorted set, a
 * lease hash), and TRYAGAIN is retried every 5 ms. The module's `redis.redisOptions` (an
 * ACL user) never reached the Cluster client it creates; they now reach every node.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { Throttle, WsRateLimit, WsRateLimitModule, WsRateLimitService } from '../../lib/index.js';
import { concurrencySpec, tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { createRedisStore, RedisRateLimitStore, type RedisStoreOptions } from '../../lib/storage/redis/index.js';
import { startApp, type RunningApp } from '../support/app.js';
import { fieldTtlRedisServer, startCluster, type RedisCluster, type RedisServer } from '../support/redis-server.js';
import { keySlots, sleep, slotOwners } from './helpers.js';
import { waitUntil } from './sentinel-helpers.js';

const planOf = (
  store: RedisRateLimitStore,
  tracker: string,
  specs: readonly TierSpec[],
  lease?: string,
): RateLimitPlan => ({
  tracker,
  tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
  ...(lease === undefined ? {} : { lease }),
});

/** Each decision's outcome: true (allowed), false (refused) or the error's message. */
async function outcomes(
  store: RedisRateLimitStore,
  plan: RateLimitPlan,
  count: number,
  gapMs = 0,
): Promise<(boolean | string)[]> {
  const out: (boolean | string)[] = [];
  for (let i = 0; i < count; i++) {
    try {
      out.push((await store.consume(plan)).allowed);
    } catch (error) {
      out.push((error as Error).message);
    }
    if (gapMs > 0) await sleep(gapMs);
  }
  return out;
}

const errorsOf = (results: readonly (boolean | string)[]) =>
  results.filter((result): result is string => typeof result === 'string');

// ---------------------------------------------------------------------------------------
// 1. A slot being migrated, both masters up
// ---------------------------------------------------------------------------------------
describe('Cluster: a slot being migrated (CLUSTER SETSLOT), both masters up', () => {
  let cluster: RedisCluster;
  const stores: RedisRateLimitStore[] = [];
  let prefixes = 0;

  beforeAll(async () => {
    cluster = await startCluster();
  }, 60_000);

  afterAll(async () => {
    for (const store of stores) await store.close().catch(() => undefined);
    await cluster?.stop();
  });

  async function openStore(options: Partial<RedisStoreOptions> = {}): Promise<RedisRateLimitStore> {
    const store = await createRedisStore({
      cluster: { nodes: [...cluster.startupNodes] },
      keyPrefix: `mig${++prefixes}:`,
      ...options,
    });
    stores.push(store);
    return store;
  }

  const idOf = async (node: RedisServer) => String(await node.command('CLUSTER', 'MYID'));

  /**
   * Puts the slot of `tracker`'s keys in migration from its owner to another master (the
   * tracker's keys MIGRATEd already when `moved`: its decisions are then ASKed to the
   * target); returns how to end the migration as redis-cli does (SETSLOT NODE everywhere).
   */
  async function migrate(store: RedisRateLimitStore, tracker: string, moved: boolean): Promise<() => Promise<void>> {
    const [slot] = await keySlots(cluster.nodes[0]!.port, [store.key(tracker, 'g')]);
    const owners = await slotOwners(cluster.nodes[0]!.port);
    const source = cluster.nodes.find((node) => node.port === owners[slot!])!;
    const target = cluster.nodes.find((node) => node !== source)!;
    const [sourceId, targetId] = [await idOf(source), await idOf(target)];
    await target.command('CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', sourceId);
    await source.command('CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', targetId);
    if (moved) {
      const keys = (await source.command('CLUSTER', 'GETKEYSINSLOT', String(slot), '1000')) as string[];
      expect(keys.length).toBeGreaterThan(0);
      await source.command('MIGRATE', '127.0.0.1', String(target.port), '', '0', '5000', 'KEYS', ...keys);
    }
    return async () => {
      if (!moved) {
        // Called off: the slot stays with its owner.
        for (const node of [source, target]) await node.command('CLUSTER', 'SETSLOT', String(slot), 'STABLE');
        return;
      }
      // The new owner first, as redis-cli does, then the others.
      for (const node of [target, ...cluster.nodes.filter((n) => n !== target)]) {
        await node.command('CLUSTER', 'SETSLOT', String(slot), 'NODE', targetId);
      }
    };
  }

  it('a plan script (one key) on a slot being migrated is decided by Redis, before and after its keys moved (ASK followed)', async () => {
    const store = await openStore();
    const plan = planOf(store, 'user:script', [tokenBucketSpec('global', 'g', 100, 0.001)]);
    expect(await outcomes(store, plan, 2)).toEqual([true, true]);
    const done = await migrate(store, 'user:script', false);
    let results: (boolean | string)[];
    try {
      results = await outcomes(store, plan, 3, 20);
    } finally {
      await done();
    }
    const moved = await migrate(store, 'user:script', true);
    try {
      results.push(...(await outcomes(store, plan, 3, 20)));
    } finally {
      await moved();
    }
    expect(results).toEqual([true, true, true, true, true, true]);
  }, 30_000);

  it("an address's connection plan (connection rate + open connections, a lease) on a slot being migrated is decided, the breaker closed, both masters up", async () => {
    const store = await openStore();
    const specs = [tokenBucketSpec('connection', 'cr', 100, 0.001), concurrencySpec('concurrency', 'cc', 50)];
    const plan = planOf(store, 'ip:203.0.113.7', specs, 'L1');
    expect(await outcomes(store, plan, 2)).toEqual([true, true]);
    // Redis holds the tracker hash and the lease hash; the slot goes to another master.
    const done = await migrate(store, 'ip:203.0.113.7', false);
    let results: (boolean | string)[];
    let available: boolean;
    try {
      // One upgrade every 20 ms, as a trickle of handshakes from one address.
      results = await outcomes(store, plan, 5, 20);
      available = store.available;
    } finally {
      await done();
    }
    // Expected: decided by Redis like the plan script above (the slot's masters both answer;
    // RELIABILITY C-27: MOVED/ASK followed, only unavailable slots go to the fallback).
    // Observed: each call is a multi-key script whose tier keys do not exist, which Redis
    // answers with TRYAGAIN during a migration; ioredis retries it after 100 ms, past the
    // 50 ms deadline: every decision fails, and three open the breaker for every tracker.
    expect(errorsOf(results)).toEqual([]);
    expect(available).toBe(true);
  }, 30_000);

  it('token reservations on a slot being migrated (its keys moved, ASK): the reserving calls are decided, as the plan script is', async () => {
    const store = await openStore({ reservations: { maxBatch: 32, ttlMs: 1000 } });
    // 100 at 100/s: ttlSlots 101, the plan is reserved in batches.
    const plan = planOf(store, 'user:reserved', [tokenBucketSpec('global', 'g', 100, 100)]);
    expect(errorsOf(await outcomes(store, plan, 4))).toEqual([]);
    const done = await migrate(store, 'user:reserved', true);
    let results: (boolean | string)[];
    try {
      // Spaced past the batch's slots (ttlMs 1000 holds them; 300 ms apart the batch is swept
      // back after a quarter of it): each decision needs a reserving call.
      results = await outcomes(store, plan, 4, 300);
    } finally {
      await done();
    }
    expect(errorsOf(results)).toEqual([]);
  }, 30_000);

  it('a bucket plan through the generic script on a slot being migrated is decided, each decision counted once', async () => {
    // It failed with TRYAGAIN (the script named the bucket's tier key, which never exists),
    // and ioredis resent it 100 ms later, past the deadline: Redis charged the tracker for
    // decisions the fail mode had answered (2 of 5 tokens left where 4 should be).
    const store = await openStore({ planScripts: 0 });
    const bucket = tokenBucketSpec('global', 'g', 5, 0.001);
    const plan = planOf(store, 'user:late', [bucket]);
    expect(await outcomes(store, plan, 1)).toEqual([true]);
    const done = await migrate(store, 'user:late', false);
    let failed: string[];
    try {
      failed = errorsOf(await outcomes(store, plan, 2, 20));
    } finally {
      await done();
    }
    expect(failed).toEqual([]);
    await sleep(500);
    // Three decisions, three tokens: nothing resent, nothing counted twice.
    const [status] = await store.peek(plan);
    expect(status!.remaining).toBe(2);
  }, 30_000);
});

// ---------------------------------------------------------------------------------------
// 2. The module on a Cluster: its Redis options
// ---------------------------------------------------------------------------------------
@WebSocketGateway()
@WsRateLimit()
class ChatGateway {
  @Throttle({ capacity: 3, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat() {
    return { event: 'ok' };
  }
}

describe('the module on a Cluster (redis.clusterNodes)', () => {
  let cluster: RedisCluster;
  const apps: RunningApp[] = [];

  beforeAll(async () => {
    cluster = await startCluster();
    for (const node of cluster.nodes) {
      await node.command('ACL', 'SETUSER', 'limiter', 'on', '>s3cret', '~*', '&*', '+@all');
    }
  }, 60_000);

  afterAll(async () => {
    for (const app of apps) await app.close().catch(() => undefined);
    await cluster?.stop();
  });

  it('redis.redisOptions (an ACL user) reach the Cluster client the module creates: it connects as that user', async () => {
    const running = await startApp({
      imports: [
        WsRateLimitModule.forRoot({
          useEnv: false,
          metrics: false,
          store: 'redis',
          keyPrefix: 'acl:',
          redis: {
            clusterNodes: cluster.startupNodes.map(({ host, port }) => `${host}:${port}`),
            commandTimeoutMs: 2000,
            // "Further ioredis options for the clients the store creates (TLS, ACL user...)";
            // the module has no username option of its own.
            redisOptions: { username: 'limiter', password: 's3cret', connectionName: 'wsrl-acl' },
          },
        }),
      ],
      providers: [ChatGateway],
    });
    apps.push(running);
    const service = running.app.get(WsRateLimitService);
    // Decisions on trackers spread over the masters open the store's node connections.
    for (let i = 0; i < 30; i++) await service.consume(`user:${i}`, { type: 'chat' });
    const lines: string[] = [];
    for (const node of cluster.nodes) {
      lines.push(...String(await node.command('CLIENT', 'LIST')).split('\n'));
    }
    const store = lines.filter((line) => /\bname=wsrl-acl\b/.test(line));
    const asLimiter = lines.filter((line) => /\buser=limiter\b/.test(line));
    // The store works, as the default user: the options were dropped, not refused.
    expect((running.app.get(WsRateLimitService).store as RedisRateLimitStore).available).toBe(true);
    // Expected: the store's connections carry the name and the user it was given.
    expect({ named: store.length > 0, asLimiter: asLimiter.length > 0 }).toEqual({ named: true, asLimiter: true });
  }, 30_000);

  it('operator blocks on a Cluster: a block set on one instance is listed by another within the sync, and an unblock too', async () => {
    const instance = async () => {
      const running = await startApp({
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            metrics: false,
            store: 'redis',
            keyPrefix: 'blk:',
            redis: {
              clusterNodes: cluster.startupNodes.map(({ host, port }) => `${host}:${port}`),
              commandTimeoutMs: 2000,
            },
          }),
        ],
        providers: [ChatGateway],
      });
      apps.push(running);
      return running.app.get(WsRateLimitService);
    };
    const [a, b] = [await instance(), await instance()];
    await a.block('user-42', 60_000);
    await a.block('203.0.113.9', 60_000);
    await waitUntil('B lists both blocks', () => Object.keys(b.listBlocks()).length === 2, 5000);
    expect(Object.keys(b.listBlocks()).sort()).toEqual(Object.keys(a.listBlocks()).sort());
    await b.unblock('user-42');
    await waitUntil('A lists one block', () => Object.keys(a.listBlocks()).length === 1, 5000);
    expect(Object.keys(a.listBlocks())).toEqual(Object.keys(b.listBlocks()));
  }, 30_000);
});

// ---------------------------------------------------------------------------------------
// 3. A Cluster upgraded in place to a server with hash-field TTLs
// ---------------------------------------------------------------------------------------
const upgraded = fieldTtlRedisServer();
(upgraded === undefined ? describe.skip : describe)('Cluster: masters upgraded in place (Redis 7.0 -> 8)', () => {
  let cluster: RedisCluster;
  let store: RedisRateLimitStore;

  beforeAll(async () => {
    cluster = await startCluster();
    store = await createRedisStore({
      cluster: { nodes: [...cluster.startupNodes] },
      keyPrefix: 'up:',
      commandTimeoutMs: 2000,
    });
  }, 60_000);

  afterAll(async () => {
    await store?.close().catch(() => undefined);
    await cluster?.stop();
  });

  it('every master restarted with Redis 8 (a rolling upgrade): the store reads them again and turns hash-field TTLs on', async () => {
    const plan = planOf(store, 'user:up', [tokenBucketSpec('global', 'g', 1000, 0.001)]);
    await store.evictionPolicyChecked;
    expect(store.hashFieldTtls).toBe(false);
    for (const node of cluster.nodes) {
      await node.restart(upgraded);
      await waitUntil(
        'cluster_state:ok',
        async () => {
          for (const each of cluster.nodes) {
            if (!String(await each.command('CLUSTER', 'INFO')).includes('cluster_state:ok')) return false;
          }
          return true;
        },
        20_000,
      );
    }
    for (const node of cluster.nodes) expect(String(await node.command('INFO', 'server'))).toMatch(/redis_version:8\./);
    // Decisions go on (each master's connection reconnected); README: the server's version is
    // "read from INFO server at start-up and again at each reconnect, so a server upgraded in
    // place is noticed; every master of a Cluster must have it".
    let noticed = false;
    const until = Date.now() + 10_000;
    while (!noticed && Date.now() < until) {
      await outcomes(store, plan, 3);
      noticed = store.hashFieldTtls;
      await sleep(200);
    }
    expect(noticed).toBe(true);
  }, 90_000);
});
