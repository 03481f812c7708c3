/**
 * Adversarial review of the Redis store on a Redis Cluster WITH replicas under faults, on
 * real redis-server processes this file starts (three masters and one replica each, started
 * with startRedis and joined by `redis-cli --cluster create`; never port 6379):
 *
 * - a master frozen (SIGSTOP) past cluster-node-timeout, its replica promoted meanwhile
 *   (the store API);
 * - a master killed (SIGKILL) and its replica promoted by the Cluster itself, under traffic
 *   from two listening NestJS apps with real `ws` clients, fail mode `closed`: every message
 *   answered, decisions resume within a bound, no over-admission;
 * - the same kill under token reservations on and off (the store API, two instances each);
 * - `maxConnectionsPerIp` shared by two apps while the master of the address's slot dies
 *   and connections close meanwhile: are the leases given back once Redis answers again?
 * - slots migrated (SETSLOT/MIGRATE, as redis-cli reshard does per slot) while ws clients
 *   of two apps send and connect: no errors reach clients, exact shared limits;
 * - a master paused past the command deadline (shorter than the node timeout): breaker,
 *   fallback, recovery, seen by ws clients;
 * - app.close() while a master is down or frozen: bounded, and no socket left behind.
 *
 * Existing Cluster tests cover resharding and a master killed without replicas
 * (cluster-topology), a graceful CLUSTER FAILOVER (failover-edges), single slots in
 * migration through the store API (topology-plans-review-edges, round4-fixes-review-edges).
 *
 * Two cases failed on the reviewed code (282bd07), and are fixed: with a master frozen and
 * its replica promoted, no decision on its slots was admitted for 12 s (ioredis refreshes
 * its slot map on a MOVED reply or a closed connection only, and a frozen master sends
 * neither: a missed deadline on a Cluster now asks for the slot map, at most once a second,
 * lib/storage/redis/call-gate.ts); connections closed while their slot had no master gave
 * their open-connection slots back only at the next lease refresh (17.7 s here), since a
 * dead Cluster slot often never opens the breaker whose recovery resyncs leases (dirty lease
 * keys are now synced again within 250 ms, then at doubling waits up to 2 s,
 * lib/storage/redis/lease-book.ts).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import {
  RedisRateLimitStore,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../lib/index.js';
import type { RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { createRedisStore, RedisStoreUnavailableError, type RedisStoreOptions } from '../../lib/storage/redis/index.js';
import { startApp, type RunningApp } from '../support/app.js';
import { upgrade } from '../support/http.js';
import {
  clusterCli,
  freePort,
  rawCommand,
  startRedis,
  type RedisServer,
  type RespReply,
} from '../support/redis-server.js';
import { TestClient, type Frame } from '../support/ws-client.js';
import { sleep } from './helpers.js';
import { waitUntil } from './sentinel-helpers.js';

const HOST = '127.0.0.1';
const NODE_TIMEOUT_MS = 1000;

// ---------------------------------------------------------------------------------------
// The replicated Cluster and its faults
// ---------------------------------------------------------------------------------------

const nodes: RedisServer[] = [];

const alive = (node: RedisServer): boolean => node.process.exitCode === null && node.process.signalCode === null;

async function info(port: number, section: string): Promise<string> {
  return String(await rawCommand(port, ['INFO', section], 1000));
}

async function roleOf(port: number): Promise<string> {
  return /role:(\w+)/.exec(await info(port, 'replication'))?.[1] ?? '?';
}

/** A node that answers now (not killed, not paused by the test). */
let paused = new Set<RedisServer>();
const answering = (): RedisServer => nodes.find((node) => alive(node) && !paused.has(node))!;

/** The master serving `key`'s slot, as an answering node sees it. */
async function ownerOf(key: string): Promise<RedisServer> {
  const port = answering().port;
  const slot = Number(await rawCommand(port, ['CLUSTER', 'KEYSLOT', key]));
  const ranges = (await rawCommand(port, ['CLUSTER', 'SLOTS'])) as RespReply[];
  for (const range of ranges as RespReply[][]) {
    if (Number(range[0]) <= slot && slot <= Number(range[1])) {
      const master = Number((range[2] as RespReply[])[1]);
      return nodes.find((node) => node.port === master)!;
    }
  }
  throw new Error(`no owner of slot ${slot}`);
}

async function ownerOfSlot(slot: number): Promise<RedisServer> {
  const ranges = (await rawCommand(answering().port, ['CLUSTER', 'SLOTS'])) as RespReply[][];
  const range = ranges.find((r) => Number(r[0]) <= slot && slot <= Number(r[1]))!;
  return nodes.find((node) => node.port === Number((range[2] as RespReply[])[1]))!;
}

async function slotOf(key: string): Promise<number> {
  return Number(await rawCommand(answering().port, ['CLUSTER', 'KEYSLOT', key]));
}

async function replicaOf(master: RedisServer): Promise<RedisServer> {
  for (const node of nodes) {
    if (!alive(node) || node === master) continue;
    const text = await info(node.port, 'replication');
    if (text.includes('role:slave') && text.includes(`master_port:${master.port}`)) return node;
  }
  throw new Error(`no replica of ${master.port}`);
}

/** Waits until the replica has every write its master has. */
async function synced(master: RedisServer, replica: RedisServer): Promise<void> {
  await waitUntil(
    'the replica in sync',
    async () => {
      const m = /master_repl_offset:(\d+)/.exec(await info(master.port, 'replication'))?.[1];
      const r = await info(replica.port, 'replication');
      const offset = /slave_repl_offset:(\d+)/.exec(r)?.[1];
      return r.includes('master_link_status:up') && m !== undefined && m === offset;
    },
    10_000,
  );
}

/** The Cluster as it started: every node up, state ok everywhere, three masters each with a replica in sync. */
async function heal(): Promise<void> {
  for (const node of nodes) {
    node.resume();
    if (!alive(node)) await node.restart();
  }
  paused = new Set();
  for (const node of nodes) await node.command('CONFIG', 'SET', 'cluster-node-timeout', String(NODE_TIMEOUT_MS));
  await waitUntil(
    'the Cluster healed',
    async () => {
      let masters = 0;
      for (const node of nodes) {
        const state = String(await rawCommand(node.port, ['CLUSTER', 'INFO'], 500));
        if (!state.includes('cluster_state:ok')) return false;
        const replication = await info(node.port, 'replication');
        if (replication.includes('role:master')) {
          if (!/connected_slaves:1/.test(replication)) return false;
          masters++;
        } else if (!replication.includes('master_link_status:up')) return false;
      }
      return masters === 3;
    },
    40_000,
  );
}

async function startReplicatedCluster(): Promise<void> {
  for (let i = 0; i < 6; i++) {
    const bus = await freePort();
    nodes.push(
      await startRedis([
        '--cluster-enabled',
        'yes',
        '--cluster-port',
        String(bus),
        '--cluster-config-file',
        `nodes-${bus}.conf`,
        '--cluster-node-timeout',
        String(NODE_TIMEOUT_MS),
      ]),
    );
  }
  await clusterCli([
    'create',
    ...nodes.map((node) => `${HOST}:${node.port}`),
    '--cluster-replicas',
    '1',
    '--cluster-yes',
  ]);
  await heal();
}

const startupNodes = () => nodes.map((node) => ({ host: HOST, port: node.port }));

/** Waits (polling, bounded) for `replica` to be a master; the time it was first seen so. */
function watchPromotion(replica: RedisServer, timeoutMs = 20_000): { at: () => number; done: Promise<void> } {
  let at = NaN;
  const done = waitUntil(
    'the replica promoted',
    async () => {
      if ((await roleOf(replica.port)) !== 'master') return false;
      at = performance.now();
      return true;
    },
    timeoutMs,
  );
  done.catch(() => undefined);
  return { at: () => at, done };
}

// ---------------------------------------------------------------------------------------
// Store API helpers
// ---------------------------------------------------------------------------------------

type Result = 'allowed' | 'refused' | 'unavailable' | 'other';

interface Outcome {
  readonly at: number;
  readonly latency: number;
  readonly result: Result;
  readonly cause: string;
}

async function decide(store: RedisRateLimitStore, plan: RateLimitPlan): Promise<Outcome> {
  const at = performance.now();
  try {
    const allowed = (await store.consume(plan)).allowed;
    return { at, latency: performance.now() - at, result: allowed ? 'allowed' : 'refused', cause: '' };
  } catch (error) {
    const cause = String((error as { cause?: Error }).cause?.message ?? (error as Error).message);
    return {
      at,
      latency: performance.now() - at,
      result: error instanceof RedisStoreUnavailableError ? 'unavailable' : 'other',
      cause,
    };
  }
}

const planOf = (store: RedisRateLimitStore, tracker: string, specs: readonly TierSpec[]): RateLimitPlan => ({
  tracker,
  tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
});

// ---------------------------------------------------------------------------------------
// The apps
// ---------------------------------------------------------------------------------------

const CHAT_CAPACITY = 40;

@WebSocketGateway()
@WsRateLimit()
class ChatGateway {
  @Throttle({ type: 'chat', capacity: CHAT_CAPACITY, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'big', capacity: 1_000_000, refillRate: 1 })
  @SubscribeMessage('big')
  big(@MessageBody() data: unknown) {
    return { event: 'big_ack', data };
  }
}

/** The user named in the upgrade's query string (`?u=`): budgets shared by every instance. */
const userTracker: WsRateLimitModuleOptions['tracker'] = (_client, context) =>
  new URL(context.request?.url ?? '/', 'http://h').searchParams.get('u') ?? undefined;

/** The tracker the store keys for a name the tracker function returned. */
const asUser = (name: string): string => `key:${name}`;

// ---------------------------------------------------------------------------------------

describe('Redis Cluster with replicas under faults (review)', () => {
  const stores: RedisRateLimitStore[] = [];
  const apps: RunningApp[] = [];
  const clients: TestClient[] = [];
  let prefixes = 0;

  beforeAll(async () => {
    await startReplicatedCluster();
  }, 90_000);

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close().catch(() => undefined)));
    for (const app of apps.splice(0)) await app.close().catch(() => undefined);
    for (const store of stores.splice(0)) await store.close().catch(() => undefined);
    await heal();
  }, 60_000);

  afterAll(async () => {
    for (const node of nodes) node.resume();
    await Promise.all(nodes.map((node) => node.stop()));
  }, 30_000);

  async function openStore(options: Partial<RedisStoreOptions> = {}, prefix = `cf${++prefixes}:`) {
    const store = await createRedisStore({
      cluster: { nodes: startupNodes() },
      keyPrefix: prefix,
      commandTimeoutMs: 250,
      ...options,
    });
    stores.push(store);
    return store;
  }

  async function startInstance(options: WsRateLimitModuleOptions) {
    const running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            metrics: false,
            store: 'redis',
            tracker: userTracker,
            connection: { capacity: 100_000, refillRate: 100_000 },
            maxPendingHandshakesPerIp: 0,
            violations: { max: 100_000, windowMs: 60_000 },
            global: { capacity: 1_000_000, refillRate: 1 },
            ...options,
            redis: { clusterNodes: startupNodes().map(({ host, port }) => `${host}:${port}`), ...options.redis },
          }),
        ],
        providers: [ChatGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    apps.push(running);
    const limiter = running.app.get(WsRateLimitService);
    return { running, limiter, store: limiter.store as RedisRateLimitStore };
  }

  async function connect(url: string, options: { localAddress?: string } = {}): Promise<TestClient> {
    const client = await TestClient.connect(url, options);
    clients.push(client);
    return client;
  }

  /**
   * A tracker name (`prefix` + n) whose keys live on `on` (or on any master other than `not`);
   * `stored` maps it to the tracker the store keys (`key:<name>` for a tracker function's name).
   */
  async function trackerOn(
    store: RedisRateLimitStore,
    prefix: string,
    where: { on?: RedisServer; not?: RedisServer },
    stored: (name: string) => string = (name) => name,
  ): Promise<string> {
    for (let n = 0; n < 200; n++) {
      const tracker = `${prefix}${n}`;
      const owner = await ownerOf(store.key(stored(tracker), 'g'));
      if (where.on !== undefined ? owner === where.on : owner !== where.not) return tracker;
    }
    throw new Error('no tracker found');
  }

  /** The masters, as the answering nodes say. */
  async function masters(): Promise<RedisServer[]> {
    const out: RedisServer[] = [];
    for (const node of nodes) if (alive(node) && (await roleOf(node.port)) === 'master') out.push(node);
    return out;
  }

  // -------------------------------------------------------------------------------------
  it('a master frozen (SIGSTOP) past cluster-node-timeout: once its replica is promoted, decisions on its slots resume while the old master stays frozen (they did not for 12 s)', async () => {
    // README (RedisStoreOptions.breaker): decisions go to the fail mode "until the master (or a
    // replica promoted in its place) serves its slots again and the Cluster reports ok". A
    // frozen or partitioned master is the classic failover: its TCP connections stay up.
    const store = await openStore();
    const [victim] = await masters();
    const tracker = await trackerOn(store, 'user:frozen:', { on: victim! });
    const other = await trackerOn(store, 'user:warm:', { not: victim! });
    const spec = tokenBucketSpec('global', 'g', 1_000_000, 10);
    const plan = planOf(store, tracker, [spec]);
    const otherPlan = planOf(store, other, [spec]);
    expect((await decide(store, plan)).result).toBe('allowed');
    const replica = await replicaOf(victim!);
    await synced(victim!, replica);

    victim!.pause();
    paused.add(victim!);
    const frozenAt = performance.now();
    const promotion = watchPromotion(replica);
    const outcomes: Outcome[] = [];
    const others: Outcome[] = [];
    let resumedAfterMs = NaN;
    try {
      // One decision on each tracker every 50 ms, until a decision on the frozen master's
      // slots is admitted after the promotion, or 12 s after it.
      while (performance.now() - frozenAt < 40_000) {
        const [outcome, elsewhere] = await Promise.all([decide(store, plan), decide(store, otherPlan)]);
        outcomes.push(outcome);
        others.push(elsewhere);
        const promotedAt = promotion.at();
        if (Number.isFinite(promotedAt)) {
          if (outcome.result === 'allowed' && outcome.at > promotedAt) {
            resumedAfterMs = outcome.at + outcome.latency - promotedAt;
            break;
          }
          if (performance.now() - promotedAt > 12_000) break;
        }
        await sleep(50);
      }
      await promotion.done;
    } finally {
      victim!.resume();
    }
    const promotedAt = promotion.at();
    const afterPromotion = outcomes.filter((outcome) => outcome.at > promotedAt);
    console.log(
      `master frozen: replica promoted ${(promotedAt - frozenAt).toFixed(0)} ms after the freeze; ` +
        `${afterPromotion.length} decisions on its slots after that: ` +
        `${afterPromotion.filter((o) => o.result === 'allowed').length} allowed, causes ` +
        `${[...new Set(afterPromotion.map((o) => o.cause))].slice(0, 3).join(' / ')}; other slots after: ` +
        `${others.filter((o) => o.at > promotedAt && o.result === 'allowed').length} of ` +
        `${others.filter((o) => o.at > promotedAt).length} allowed`,
    );
    expect(outcomes.filter((outcome) => outcome.result === 'other')).toEqual([]);
    // Expected: back on Redis (the promoted replica) within a bounded time of the promotion.
    expect(resumedAfterMs).toBeLessThan(10_000);
  }, 90_000);

  // -------------------------------------------------------------------------------------
  it('a master killed, its replica promoted under ws traffic of two apps (fail mode closed): every message answered once, STORE_UNAVAILABLE meanwhile, acks resume, never more than the shared capacity', async () => {
    const options: WsRateLimitModuleOptions = {
      failMode: 'closed',
      keyPrefix: `cfws${++prefixes}:`,
      redis: { commandTimeoutMs: 250 },
    };
    const a = await startInstance(options);
    const b = await startInstance(options);
    const [victim] = await masters();
    const onVictim = await trackerOn(a.store, 'u-dead-', { on: victim! }, asUser);
    const elsewhere = await trackerOn(a.store, 'u-live-', { not: victim! }, asUser);
    const users = [onVictim, elsewhere];
    // The tracker is the name the function returned, as `key:<name>`.
    expect(await ownerOf(a.store.key(`key:${onVictim}`, 'g'))).toBe(victim);
    const sockets = new Map<string, TestClient[]>();
    for (const user of users) {
      sockets.set(user, [await connect(`${a.running.url}/?u=${user}`), await connect(`${b.running.url}/?u=${user}`)]);
    }
    const sent = new Map<TestClient, number>();
    let seq = 0;
    const send = (client: TestClient) => {
      client.send('chat', { n: seq++ });
      sent.set(client, (sent.get(client) ?? 0) + 1);
    };
    const answered = (client: TestClient) =>
      client.frames.filter((frame) => frame.event === 'ack' || frame.event === 'rate_limit').length;
    const allAnswered = () => [...sent].every(([client, count]) => answered(client) === count);
    // Before: 5 acks per user and instance, in Redis.
    for (const list of sockets.values()) for (const client of list) for (let i = 0; i < 5; i++) send(client);
    await waitUntil('the first answers', allAnswered, 10_000);
    for (const list of sockets.values()) for (const client of list) expect(client.events('ack')).toHaveLength(5);
    const replica = await replicaOf(victim!);
    await synced(victim!, replica);

    victim!.kill('SIGKILL');
    const killedAt = performance.now();
    const promotion = watchPromotion(replica);
    const ackTimes = new Map<string, number[]>(users.map((user) => [user, []]));
    const watched = new Map<TestClient, string>();
    for (const [user, list] of sockets) for (const client of list) watched.set(client, user);
    const seen = new Map<TestClient, number>();
    const noteAcks = () => {
      for (const [client, user] of watched) {
        const acks = client.events('ack').length;
        const before = seen.get(client) ?? 0;
        for (let i = before; i < acks; i++) ackTimes.get(user)!.push(performance.now());
        seen.set(client, acks);
      }
    };
    noteAcks();
    // A message per socket every 100 ms, until the dead master's user is acked after the
    // promotion (or 12 s after it).
    while (performance.now() - killedAt < 40_000) {
      for (const client of watched.keys()) send(client);
      await sleep(100);
      noteAcks();
      const promotedAt = promotion.at();
      if (Number.isFinite(promotedAt)) {
        if (ackTimes.get(onVictim)!.some((at) => at > promotedAt + 100)) break;
        if (performance.now() - promotedAt > 12_000) break;
      }
    }
    await promotion.done;
    await waitUntil('every message answered', allAnswered, 15_000);
    noteAcks();
    const promotedAt = promotion.at();
    const frames: Frame[] = [...watched.keys()].flatMap((client) => client.frames);
    const codes = frames.filter((f) => f.event === 'rate_limit').map((f) => String(f.data?.code));
    const firstAfter = ackTimes.get(onVictim)!.find((at) => at > promotedAt);
    console.log(
      `ws, master killed: replica promoted ${(promotedAt - killedAt).toFixed(0)} ms after the kill; ` +
        `refusals ${JSON.stringify(Object.fromEntries([...new Set(codes)].map((c) => [c, codes.filter((x) => x === c).length])))}; ` +
        `dead-slot user acked again ${firstAfter === undefined ? 'never' : `${(firstAfter - promotedAt).toFixed(0)} ms`} after the promotion; ` +
        `acks per user ${users.map((u) => `${u}: ${ackTimes.get(u)!.length}`).join(', ')}`,
    );
    // Only acks and rate_limit frames (no NestJS exception frame), sockets still open.
    expect(frames.filter((f) => f.event !== 'ack' && f.event !== 'rate_limit')).toEqual([]);
    for (const client of watched.keys()) expect(client.socket.readyState).toBe(client.socket.OPEN);
    expect(codes.filter((code) => !['TYPE_LIMIT', 'STORE_UNAVAILABLE'].includes(code))).toEqual([]);
    expect(codes).toContain('STORE_UNAVAILABLE');
    expect(firstAfter).toBeDefined();
    expect(firstAfter! - promotedAt).toBeLessThan(10_000);
    // Fail mode closed, replica in sync at the kill: across both apps, never past the capacity.
    for (const user of users) expect(ackTimes.get(user)!.length).toBeLessThanOrEqual(CHAT_CAPACITY);
  }, 90_000);

  // -------------------------------------------------------------------------------------
  it('token reservations on and off, two instances each, a master killed under full-speed traffic: decisions resume, no error but unavailability, admitted within capacity + refill + one limit', async () => {
    const [victim] = await masters();
    const reserving = [
      await openStore({ reservations: { maxBatch: 64, ttlMs: 1000 } }, 'cfres:'),
      await openStore({ reservations: { maxBatch: 64, ttlMs: 1000 } }, 'cfres:'),
    ];
    const plain = [await openStore({}, 'cfres:'), await openStore({}, 'cfres:')];
    const capacity = 100;
    const rate = 100;
    const spec = tokenBucketSpec('global', 'g', capacity, rate);
    const t1 = await trackerOn(reserving[0]!, 'res-on-', { on: victim! });
    const t2 = await trackerOn(reserving[0]!, 'res-off-', { on: victim! });
    const groups = [
      { name: 'reservations on', tracker: t1, stores: reserving },
      { name: 'reservations off', tracker: t2, stores: plain },
    ];
    const replica = await replicaOf(victim!);
    const outcomes = new Map<string, Outcome[]>(groups.map((g) => [g.name, []]));
    let killedAt: number | undefined;
    let promotion: ReturnType<typeof watchPromotion> | undefined;
    const start = performance.now();
    let stop = false;
    const workers = groups.flatMap((group) =>
      group.stores.map(async (store) => {
        const plan = planOf(store, group.tracker, [spec]);
        while (!stop) {
          outcomes.get(group.name)!.push(await decide(store, plan));
          // Yield to timers and I/O (reserved slots answer without any).
          await new Promise((resolve) => setImmediate(resolve));
        }
      }),
    );
    const resumed = (name: string) => {
      const promotedAt = promotion?.at() ?? NaN;
      return outcomes.get(name)!.some((o) => o.at > promotedAt + 200 && o.result === 'allowed');
    };
    try {
      await sleep(1500);
      victim!.kill('SIGKILL');
      killedAt = performance.now();
      promotion = watchPromotion(replica);
      await promotion.done;
      await waitUntil('both groups admitted again', () => groups.every((g) => resumed(g.name)), 12_000).catch(
        () => undefined,
      );
      await sleep(300);
    } finally {
      stop = true;
      await Promise.all(workers);
    }
    const end = performance.now();
    const promotedAt = promotion!.at();
    for (const group of groups) {
      const all = outcomes.get(group.name)!;
      const admitted = all.filter((o) => o.result === 'allowed').length;
      const bound = capacity + (rate * (end - start)) / 1000 + capacity + 2;
      const after = all.filter((o) => o.at > promotedAt && o.result === 'allowed')[0];
      console.log(
        `${group.name}: ${all.length} decisions, ${admitted} admitted (bound ${bound.toFixed(0)}), ` +
          `${all.filter((o) => o.result === 'unavailable').length} unavailable; promoted ` +
          `${(promotedAt - (killedAt ?? NaN)).toFixed(0)} ms after the kill, admitted again ` +
          `${after === undefined ? 'never' : `${(after.at - promotedAt).toFixed(0)} ms`} after it`,
      );
      expect(all.filter((o) => o.result === 'other')).toEqual([]);
      expect(admitted).toBeLessThanOrEqual(bound);
      expect(resumed(group.name)).toBe(true);
    }
  }, 90_000);

  // -------------------------------------------------------------------------------------
  it("maxConnectionsPerIp shared by two apps: connections closed while the master of the address's slot is down give their slots back once its replica serves it, not a lease refresh later (they did at the refresh)", async () => {
    // README (the store on its own / release): "A release that cannot reach Redis does not
    // fail: this instance forgets the lease at once, and brings Redis in line with what it
    // holds as soon as Redis answers again (or at its next lease refresh)"; and
    // "Open-connection slots are given back when the TCP socket closes, whatever the cause".
    const options: WsRateLimitModuleOptions = {
      keyPrefix: `cfcap${++prefixes}:`,
      maxConnectionsPerIp: 3,
      // Closed: an upgrade is admitted only by Redis (open, a failed call's fallback admits it).
      failMode: 'closed',
      // A refresh every 20 s: long enough to tell "as soon as Redis answers" from "at the next refresh".
      redis: { commandTimeoutMs: 250, leaseTtlMs: 60_000 },
    };
    const a = await startInstance(options);
    const b = await startInstance(options);
    const [victim] = await masters();
    let ip = '';
    for (let n = 30; n < 250 && ip === ''; n++) {
      const candidate = `127.0.0.${n}`;
      if ((await ownerOf(a.store.key(`ip:${candidate}`, 'g'))) === victim) ip = candidate;
    }
    expect(ip).not.toBe('');
    const open = [
      await connect(a.running.url, { localAddress: ip }),
      await connect(a.running.url, { localAddress: ip }),
      await connect(b.running.url, { localAddress: ip }),
    ];
    expect((await upgrade(b.running.port, {}, ip)).status).toBe(429);
    // The leases are in the victim's slot (the tracker is `ip:<address>`).
    const keys = (await rawCommand(victim!.port, ['KEYS', `${options.keyPrefix}*`])) as string[];
    expect(keys.length).toBeGreaterThan(0);
    const replica = await replicaOf(victim!);
    await synced(victim!, replica);

    const t0 = performance.now();
    const changes: string[] = [];
    for (const [name, store] of [
      ['A', a.store],
      ['B', b.store],
    ] as const) {
      store.watchAvailability((available, cause) =>
        changes.push(
          `${name} ${available ? 'up' : 'down'} +${(performance.now() - t0).toFixed(0)}${available ? '' : ` (${String((cause as Error)?.message ?? cause)})`}`,
        ),
      );
    }
    victim!.kill('SIGKILL');
    const promotion = watchPromotion(replica);
    // One connection on each app closes while the address's slot has no master (one failed
    // release per store: not enough to open either breaker).
    await Promise.all([open[0]!.close(), open[2]!.close()]);
    await promotion.done;
    const promotedAt = promotion.at();
    await waitUntil(
      'cluster_state:ok',
      async () => String(await rawCommand(replica.port, ['CLUSTER', 'INFO'])).includes('cluster_state:ok'),
      10_000,
    );
    const ccKey = keys.find((key) => key.endsWith(':cc'));
    const atPromotion = ccKey === undefined ? [] : await rawCommand(replica.port, ['HGETALL', ccKey]);
    // One connection is open: the address may open 2 more, decided by Redis (both breakers
    // closed: the new master answers). Polled past the first lease refresh (20 s).
    let admittedAfterMs = NaN;
    const statuses: string[] = [];
    while (performance.now() - promotedAt < 26_000) {
      if (!a.store.available || !b.store.available) {
        statuses.push('breaker open');
        await sleep(100);
        continue;
      }
      const answers = [await upgrade(a.running.port, {}, ip), await upgrade(b.running.port, {}, ip)];
      statuses.push(answers.map((answer) => answer.status).join('+'));
      if (answers.every((answer) => answer.status === 101)) {
        admittedAfterMs = performance.now() - promotedAt;
        break;
      }
      // Each probe's upgrade is closed at once by the client: its slot goes back.
      await sleep(300);
    }
    const leases = await rawCommand(replica.port, ['KEYS', `${options.keyPrefix}*`]);
    console.log(
      `caps: ${ip} admitted 2 more ${Number.isNaN(admittedAfterMs) ? 'not within 26 s' : `${admittedAfterMs.toFixed(0)} ms`} ` +
        `after the promotion (+${(promotedAt - t0).toFixed(0)}); answers ${[...new Set(statuses)].join(', ')}; keys on the new master ${JSON.stringify(leases)}; breakers ${changes.join(', ')}; leases at the promotion ${JSON.stringify(atPromotion)}`,
    );
    expect(admittedAfterMs).toBeLessThan(5000);
  }, 90_000);

  // -------------------------------------------------------------------------------------
  it('slots migrated (SETSLOT + MIGRATE) while ws clients of two apps send and connect: no error reaches a client, every message answered, exact shared limits', async () => {
    const options: WsRateLimitModuleOptions = {
      failMode: 'closed',
      keyPrefix: `cfmig${++prefixes}:`,
      maxConnectionsPerIp: 1000,
      // Generous: this case is about redirections, not a loaded machine's stalls.
      redis: { commandTimeoutMs: 2000 },
    };
    const a = await startInstance(options);
    const b = await startInstance(options);
    const users = Array.from({ length: 6 }, (_, i) => `mig-${i}`);
    const pairs: TestClient[][] = [];
    for (const user of users) {
      pairs.push([await connect(`${a.running.url}/?u=${user}`), await connect(`${b.running.url}/?u=${user}`)]);
    }
    // The users' slots, and the slot of 127.0.0.1's connection plan (its lease hash).
    const keys = [...users.map((user) => a.store.key(`key:${user}`, 'g')), a.store.key('ip:127.0.0.1', 'g')];
    const slots = [...new Set(await Promise.all(keys.map(slotOf)))];
    const idOf = async (node: RedisServer) => String(await node.command('CLUSTER', 'MYID'));

    let sentBig = 0;
    let sentChat = 0;
    let stop = false;
    const upgrades: number[] = [];
    const traffic = (async () => {
      for (let tick = 0; !stop; tick++) {
        // `big` never runs out: every one is a Redis decision. `chat` (40 per user) runs out
        // during the moves.
        for (const pair of pairs) {
          for (const client of pair) {
            client.send('big', { n: sentBig++ });
            if (tick % 10 === 0) {
              client.send('chat', { n: sentChat++ });
            }
          }
        }
        // An upgrade too: the connection plan (rate + open connections, a lease) on its slot.
        if (tick % 5 === 0) {
          void upgrade(a.running.port).then(
            (answer) => upgrades.push(answer.status),
            () => upgrades.push(-1),
          );
        }
        await sleep(20);
      }
    })();
    const migrations: string[] = [];
    try {
      // Each slot moves to another master and on, keys and all, as redis-cli reshard does.
      for (let round = 0; round < 2; round++) {
        for (const slot of slots) {
          const all = await masters();
          const source = await ownerOfSlot(slot);
          const target = all.find((node) => node !== source)!;
          const [sourceId, targetId] = [await idOf(source), await idOf(target)];
          await target.command('CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', sourceId);
          await source.command('CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', targetId);
          await sleep(100);
          for (;;) {
            const moving = (await source.command('CLUSTER', 'GETKEYSINSLOT', String(slot), '10')) as string[];
            if (moving.length === 0) break;
            await source.command('MIGRATE', HOST, String(target.port), '', '0', '5000', 'KEYS', ...moving);
            await sleep(50);
          }
          await sleep(100);
          for (const node of [target, source, ...all.filter((n) => n !== target && n !== source)]) {
            await node.command('CLUSTER', 'SETSLOT', String(slot), 'NODE', targetId);
          }
          migrations.push(`${slot}: ${source.port} -> ${target.port}`);
          await sleep(100);
        }
      }
      // Until every user has had more chat tries than its budget.
      await waitUntil('chat budgets tried', () => sentChat >= users.length * 2 * (CHAT_CAPACITY / 2 + 5), 20_000);
    } finally {
      stop = true;
      await traffic;
    }
    const clientsOfTest = pairs.flat();
    const count = (event: string) => clientsOfTest.reduce((sum, client) => sum + client.events(event).length, 0);
    await waitUntil(
      'every message answered',
      () => count('big_ack') + count('ack') + count('rate_limit') === sentBig + sentChat,
      20_000,
    ).catch(() => undefined);
    await waitUntil('every upgrade answered', () => upgrades.length > 0, 5000);
    const frames = clientsOfTest.flatMap((client) => client.frames);
    const codes = frames
      .filter((f) => f.event === 'rate_limit')
      .map((f) => `${String(f.data?.code)}/${String(f.data?.messageType ?? f.data?.type)}`);
    const acks = pairs.map((pair) => pair.reduce((sum, client) => sum + client.events('ack').length, 0));
    console.log(
      `migration: ${migrations.length} slot moves over ${slots.length} slots, ${sentBig} big + ${sentChat} chat messages, ` +
        `${count('big_ack')} big acks, ${count('ack')} chat acks (per user ${acks.join(',')}), refusals ` +
        `${JSON.stringify(Object.fromEntries([...new Set(codes)].map((c) => [c, codes.filter((x) => x === c).length])))}, ` +
        `upgrades ${[...new Set(upgrades)].join(',')} (${upgrades.length})`,
    );
    expect(frames.filter((f) => !['ack', 'big_ack', 'rate_limit'].includes(String(f.event)))).toEqual([]);
    expect(count('big_ack')).toBe(sentBig);
    expect(count('ack') + count('rate_limit')).toBe(sentChat);
    expect(codes.filter((code) => !code.startsWith('TYPE_LIMIT'))).toEqual([]);
    // Each user's chat budget, shared by both apps, is spent exactly once.
    expect(acks).toEqual(users.map(() => CHAT_CAPACITY));
    expect(upgrades.filter((status) => status !== 101)).toEqual([]);
  }, 90_000);

  // -------------------------------------------------------------------------------------
  it('a master paused past the command deadline (not long enough for a failover), fail mode open: every message answered, the breaker opens and closes, decisions back on Redis', async () => {
    // No failover during this case.
    for (const node of nodes) await node.command('CONFIG', 'SET', 'cluster-node-timeout', '15000');
    const options: WsRateLimitModuleOptions = {
      keyPrefix: `cfpause${++prefixes}:`,
      redis: { commandTimeoutMs: 100 },
    };
    const a = await startInstance(options);
    const b = await startInstance(options);
    const [victim] = await masters();
    const user = await trackerOn(a.store, 'paused-', { on: victim! }, asUser);
    const [ca, cb] = [await connect(`${a.running.url}/?u=${user}`), await connect(`${b.running.url}/?u=${user}`)];
    const availability: boolean[] = [];
    const sub = a.limiter.events$.subscribe((event) => {
      if ((event as { kind?: string }).kind === 'store')
        availability.push((event as { state?: string }).state === 'up');
    });
    let sent = 0;
    const send = () => {
      ca.send('big', { n: sent });
      cb.send('big', { n: sent });
      sent++;
    };
    send();
    await waitUntil('acked', () => ca.events('big_ack').length === 1 && cb.events('big_ack').length === 1, 10_000);
    const hashKey = a.store.key(`key:${user}`, '~4');
    const before = String(await rawCommand(victim!.port, ['HGETALL', hashKey]));

    victim!.pause();
    paused.add(victim!);
    const pausedAt = performance.now();
    try {
      while (performance.now() - pausedAt < 2000) {
        send();
        await sleep(50);
      }
    } finally {
      victim!.resume();
      paused.delete(victim!);
    }
    const resumedAt = performance.now();
    const answered = (client: TestClient) =>
      client.frames.filter((f) => f.event === 'big_ack' || f.event === 'rate_limit').length;
    await waitUntil('every message answered', () => answered(ca) === sent && answered(cb) === sent, 15_000);
    await waitUntil('both stores available', () => a.store.available && b.store.available, 10_000);
    const backAfterMs = performance.now() - resumedAt;
    // Decisions go to Redis again: the tracker's hash changes with the next messages.
    const middle = String(await rawCommand(victim!.port, ['HGETALL', hashKey]));
    send();
    await waitUntil('acked after', () => answered(ca) === sent && answered(cb) === sent, 10_000);
    const after = String(await rawCommand(victim!.port, ['HGETALL', hashKey]));
    sub.unsubscribe();
    const frames = [...ca.frames, ...cb.frames];
    console.log(
      `paused 2 s: ${sent} messages per client, ${frames.filter((f) => f.event === 'big_ack').length} acks, ` +
        `${frames.filter((f) => f.event === 'rate_limit').length} refusals, store events ${JSON.stringify(availability)}, ` +
        `available again ${backAfterMs.toFixed(0)} ms after the resume`,
    );
    expect(frames.filter((f) => f.event !== 'big_ack' && f.event !== 'rate_limit')).toEqual([]);
    expect(availability[0]).toBe(false);
    expect(availability.at(-1)).toBe(true);
    expect(before).not.toBe('');
    expect(after).not.toBe(middle);
  }, 90_000);

  // -------------------------------------------------------------------------------------
  it.each(['SIGKILL', 'SIGSTOP'] as const)(
    'app.close() while a master is down (%s), with open connections holding leases on it: bounded, the client ended, no socket left to any node',
    async (signal) => {
      const ports = new Set(nodes.map((node) => node.port));
      const socketsToCluster = () =>
        (process as unknown as { _getActiveHandles(): unknown[] })
          ._getActiveHandles()
          .filter(
            (handle): handle is Socket =>
              typeof handle === 'object' &&
              handle !== null &&
              (handle as Socket).constructor?.name === 'Socket' &&
              ports.has((handle as Socket).remotePort ?? -1),
          ).length;
      const baseline = socketsToCluster();
      const options: WsRateLimitModuleOptions = {
        keyPrefix: `cfclose${++prefixes}:`,
        maxConnectionsPerIp: 10,
        redis: { commandTimeoutMs: 250, reservationBatch: 32 },
      };
      const app = await startInstance(options);
      const [victim] = await masters();
      let ip = '';
      for (let n = 30; n < 250 && ip === ''; n++) {
        const candidate = `127.0.0.${n}`;
        if ((await ownerOf(app.store.key(`ip:${candidate}`, 'g'))) === victim) ip = candidate;
      }
      const user = await trackerOn(app.store, 'closing-', { on: victim! }, asUser);
      const socket = await connect(`${app.running.url}/?u=${user}`, { localAddress: ip });
      socket.send('chat', {});
      await socket.waitForEvent('ack');
      expect(socketsToCluster()).toBeGreaterThan(baseline);
      if (signal === 'SIGSTOP') {
        victim!.pause();
        paused.add(victim!);
      } else victim!.kill('SIGKILL');
      // A few messages meanwhile (decisions on the dead slots).
      for (let i = 0; i < 5; i++) socket.send('chat', {});
      await sleep(300);
      const closing = performance.now();
      apps.splice(apps.indexOf(app.running), 1);
      await app.running.close();
      const took = performance.now() - closing;
      await socket.waitClose(5000).catch(() => undefined);
      // Reconnect attempts would open sockets again: look a while later too.
      await sleep(2500);
      const left = socketsToCluster() - baseline;
      console.log(`app.close() with a master ${signal}: ${took.toFixed(0)} ms; sockets to the Cluster left: ${left}`);
      expect(took).toBeLessThan(6000);
      expect(app.store.client.status).toBe('end');
      expect(app.store.isClosed).toBe(true);
      expect(left).toBeLessThanOrEqual(0);
    },
    60_000,
  );
});
