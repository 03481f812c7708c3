/**
 * How a Sentinel store follows failovers (its own `+switch-master` subscribers, see
 * lib/storage/redis/sentinel-watch.ts), closes, warns of a master name a sentinel does not
 * know, and checks keyPrefix braces. Real redis-server processes on free loopback ports;
 * every process and client is closed at the end. From a review of 1dd7841, which turned
 * ioredis's own failoverDetector on; five cases failed on it: the store reconnected on a
 * failover of another master the sentinels watch, an onWarning that threw ended the client
 * for good, the unknown-name warning said "decisions fail" while another sentinel served
 * the master, a sentinel that was down made ioredis print "Unhandled error event", and a
 * close while the master died with QUIT unanswered left the sentinel subscription open.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import type { RateLimitPlan } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { createRedisStore, RedisRateLimitStore, RedisStoreUnavailableError } from '../../lib/storage/redis/index.js';
import { freePort, rawCommand, startRedis, startSentinel, type RedisServer } from '../support/redis-server.js';
import { ensureBuilt, ROOT } from '../support/build.js';
import { sleep } from './helpers.js';
import { forceFailover, masterPortOf, subscribers, waitUntil } from './sentinel-helpers.js';

const HOST = '127.0.0.1';

/** A sentinel that monitors nothing: it knows no master of any name. */
const bare: { child: ChildProcess; dir: string }[] = [];
async function bareSentinel(): Promise<number> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'wsrl-bare-sentinel-'));
  const conf = join(dir, 'sentinel.conf');
  writeFileSync(conf, [`port ${port}`, `bind ${HOST}`, `dir ${dir}`, ''].join('\n'));
  const child = spawn('redis-server', [conf, '--sentinel'], { stdio: 'ignore' });
  bare.push({ child, dir });
  await waitUntil('bare sentinel PING', async () => (await rawCommand(port, ['PING'], 500)) === 'PONG', 10_000);
  return port;
}

const spec = tokenBucketSpec('global', 'g', 1000, 10);
let n = 0;
const planOf = (store: RedisRateLimitStore): RateLimitPlan => {
  const tracker = `ip:203.0.113.${n++}`;
  return { tracker, tiers: [{ key: store.key(tracker, 'g'), spec }] };
};

afterAll(async () => {
  for (const { child, dir } of bare) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await new Promise((resolve) => child.once('exit', resolve));
    }
    rmSync(dir, { recursive: true, force: true });
  }
});

describe('failover detector: a failover of another master monitored by the same sentinels', () => {
  it('the store keeps its connection when the sentinels fail over a different master name', async () => {
    const setup = await startSentinel('wsrlmine');
    const otherMaster = await startRedis();
    const otherReplica = await startRedis(['--replicaof', HOST, String(otherMaster.port)]);
    let store: RedisRateLimitStore | undefined;
    try {
      await waitUntil(
        'other replica in sync',
        async () =>
          String(await rawCommand(otherReplica.port, ['INFO', 'replication'])).includes('master_link_status:up'),
        10_000,
      );
      const s = setup.sentinel.port;
      await rawCommand(s, ['SENTINEL', 'MONITOR', 'other', HOST, String(otherMaster.port), '1']);
      await rawCommand(s, ['SENTINEL', 'SET', 'other', 'down-after-milliseconds', '1000']);
      await rawCommand(s, ['SENTINEL', 'SET', 'other', 'failover-timeout', '5000']);
      await waitUntil(
        'sentinel seeing the other replica',
        async () => ((await rawCommand(s, ['SENTINEL', 'REPLICAS', 'other'])) as unknown[]).length > 0,
        15_000,
      );
      const availability: boolean[] = [];
      store = await createRedisStore({
        sentinel: { sentinels: [{ host: HOST, port: s }], name: setup.name },
        commandTimeoutMs: 500,
        onAvailabilityChange: (available) => availability.push(available),
      });
      expect(store.client.status).toBe('ready');
      await waitUntil('detector subscribed', async () => (await subscribers(s)) >= 1, 5000);
      let closes = 0;
      store.client.on('close', () => closes++);
      // Decisions run all along the other master's failover.
      let stop = false;
      const results: string[] = [];
      const loop = (async () => {
        while (!stop) {
          try {
            await store!.consume(planOf(store!));
            results.push('ok');
          } catch (error) {
            results.push(error instanceof RedisStoreUnavailableError ? `unavailable: ${error.message}` : String(error));
          }
          await sleep(5);
        }
      })();
      await forceFailover(s, 'other');
      await waitUntil('other switched', async () => (await masterPortOf(s, 'other')) === otherReplica.port, 15_000);
      await sleep(1500);
      stop = true;
      await loop;
      // Our master never changed: nothing should have touched our connection.
      expect(await masterPortOf(s, setup.name)).toBe(setup.master.port);
      expect({ closes, availability, failed: results.filter((r) => r !== 'ok').slice(0, 3) }).toEqual({
        closes: 0,
        availability: [],
        failed: [],
      });
    } finally {
      await store?.close();
      await Promise.all([setup.stop(), otherMaster.stop(), otherReplica.stop()]);
    }
  }, 90_000);
});

describe('unknown-master warning', () => {
  it('an onWarning that throws does not stop the client from reaching the master through another sentinel', async () => {
    const setup = await startSentinel('wsrlwarn');
    const empty = await bareSentinel();
    let store: RedisRateLimitStore | undefined;
    try {
      const warnings: string[] = [];
      store = await createRedisStore({
        sentinel: {
          sentinels: [
            { host: HOST, port: empty },
            { host: HOST, port: setup.sentinel.port },
          ],
          name: setup.name,
        },
        readyTimeoutMs: 4000,
        onWarning: (message) => {
          warnings.push(message);
          throw new Error('a logger that fails');
        },
      });
      await waitUntil('ready or end', () => ['ready', 'end'].includes(store!.client.status), 5000).catch(() => {});
      expect(warnings.length).toBeLessThanOrEqual(1);
      // The second sentinel knows the master: the store should connect.
      expect(store.client.status).toBe('ready');
    } finally {
      await store?.close();
      await setup.stop();
    }
  }, 60_000);

  it('does not warn that decisions fail while the store is connected through a sentinel that knows the master', async () => {
    const setup = await startSentinel('wsrlwarn2');
    const empty = await bareSentinel();
    let store: RedisRateLimitStore | undefined;
    try {
      const warnings: string[] = [];
      store = await createRedisStore({
        sentinel: {
          sentinels: [
            { host: HOST, port: empty },
            { host: HOST, port: setup.sentinel.port },
          ],
          name: setup.name,
        },
        readyTimeoutMs: 4000,
        onWarning: (message) => warnings.push(message),
      });
      expect(store.client.status).toBe('ready');
      expect((await store.consume(planOf(store))).allowed).toBe(true);
      expect(warnings.filter((w) => /decisions fail/.test(w))).toEqual([]);
    } finally {
      await store?.close();
      await setup.stop();
    }
  }, 60_000);

  it('warns exactly once when no sentinel of several knows the name, and the outage names a sentinel error', async () => {
    const a = await bareSentinel();
    const b = await bareSentinel();
    const warnings: string[] = [];
    const store = await createRedisStore({
      sentinel: {
        sentinels: [
          { host: HOST, port: a },
          { host: HOST, port: b },
        ],
        name: 'nosuch',
      },
      readyTimeoutMs: 1500,
      onWarning: (message) => warnings.push(message),
    });
    try {
      await sleep(1500);
      expect(warnings.filter((w) => /knows no master/.test(w))).toHaveLength(1);
      let failure: string;
      try {
        await store.consume(planOf(store));
        failure = 'allowed';
      } catch (error) {
        failure = (error as Error).message;
      }
      expect(failure).toMatch(/last error/);
    } finally {
      await store.close();
    }
  }, 60_000);
});

describe('failover detector: noise and options', () => {
  it('a sentinel that is down does not make ioredis print "Unhandled error event" (the store listens for errors)', async () => {
    // In a child process on the built package: Jest's console does not see ioredis's print.
    ensureBuilt('package');
    const setup = await startSentinel('wsrlnoise');
    const down = await freePort();
    try {
      const script = [
        `import { createRedisStore } from ${JSON.stringify(join(ROOT, 'dist/esm/storage/redis/index.js'))};`,
        `const store = await createRedisStore({ sentinel: { sentinels: [{ host: '${HOST}', port: ${setup.sentinel.port} }, { host: '${HOST}', port: ${down} }], name: '${setup.name}' }, redisOptions: { updateSentinels: false } });`,
        `console.log('status', store.client.status);`,
        `await new Promise((r) => setTimeout(r, 1000));`,
        `await store.close();`,
      ].join('\n');
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, NODE_OPTIONS: '' },
      });
      let out = '';
      child.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()));
      child.stderr!.on('data', (chunk: Buffer) => (out += chunk.toString()));
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      const code = await new Promise((resolve) => child.once('exit', resolve));
      clearTimeout(timer);
      expect(out).toContain('status ready');
      expect(code).toBe(0);
      expect(out.split('\n').filter((line) => line.includes('[ioredis] Unhandled error event'))).toEqual([]);
    } finally {
      await setup.stop();
    }
  }, 90_000);

  it("ioredis's failoverDetector stays off; the store's own watch holds one subscription per sentinel", async () => {
    const setup = await startSentinel('wsrloff');
    try {
      const before = await subscribers(setup.sentinel.port);
      const store = await createRedisStore({
        sentinel: { sentinels: [{ host: HOST, port: setup.sentinel.port }], name: setup.name },
      });
      await waitUntil('subscribed', async () => (await subscribers(setup.sentinel.port)) === before + 1, 5000);
      expect((store.client.options as { failoverDetector?: boolean }).failoverDetector).toBeFalsy();
      await store.close();
      expect(store.client.status).toBe('end');
    } finally {
      await setup.stop();
    }
  }, 60_000);
});

describe('closing a Sentinel store', () => {
  it('several failovers leave one subscription, and none after close', async () => {
    const setup = await startSentinel('wsrlmany');
    let store: RedisRateLimitStore | undefined;
    try {
      const s = setup.sentinel.port;
      const before = await subscribers(s);
      store = await createRedisStore({
        sentinel: { sentinels: [{ host: HOST, port: s }], name: setup.name },
        commandTimeoutMs: 500,
      });
      await waitUntil('subscribed', async () => (await subscribers(s)) === before + 1, 5000);
      for (let i = 0; i < 3; i++) {
        const from = await masterPortOf(s, setup.name);
        const to = from === setup.master.port ? setup.replica.port : setup.master.port;
        // The new replica must be in sync before the next failover.
        await waitUntil(
          'replica synced',
          async () =>
            String(
              await rawCommand(from === setup.master.port ? setup.replica.port : setup.master.port, [
                'INFO',
                'replication',
              ]),
            ).includes('master_link_status:up'),
          15_000,
        );
        await forceFailover(s, setup.name);
        await waitUntil('switched', async () => (await masterPortOf(s, setup.name)) === to, 15_000);
        await waitUntil(
          'store on the new master',
          async () => store!.client.status === 'ready' && (await store!.consume(planOf(store!))).allowed,
          10_000,
        );
      }
      await sleep(500);
      expect(await subscribers(s)).toBe(before + 1);
      await store.close();
      await waitUntil('no subscription', async () => (await subscribers(s)) === before, 3000);
    } finally {
      await store?.close();
      await setup.stop();
    }
  }, 120_000);

  it('close while reconnecting (master killed, no replica to promote) ends the sentinel subscription', async () => {
    const setup = await startSentinel('wsrlreco');
    let store: RedisRateLimitStore | undefined;
    try {
      const s = setup.sentinel.port;
      const before = await subscribers(s);
      store = await createRedisStore({
        sentinel: { sentinels: [{ host: HOST, port: s }], name: setup.name },
      });
      await waitUntil('subscribed', async () => (await subscribers(s)) === before + 1, 5000);
      await setup.replica.stop();
      setup.master.kill('SIGKILL');
      await waitUntil('not ready', () => store!.client.status !== 'ready', 5000);
      await sleep(300);
      await store.close();
      await waitUntil('no subscription', async () => (await subscribers(s)) === before, 3000);
    } finally {
      await store?.close();
      await setup.stop();
    }
  }, 60_000);

  it('close of a store that never connected (sentinels down) ends its client', async () => {
    const down = await freePort();
    const store = await createRedisStore({
      sentinel: { sentinels: [{ host: HOST, port: down }], name: 'x' },
      readyTimeoutMs: 500,
    });
    await store.close();
    await waitUntil('ended', () => store.client.status === 'end', 3000);
  }, 30_000);

  it('close while the master dies with QUIT unanswered ends the sentinel subscription', async () => {
    const setup = await startSentinel('wsrlquit');
    let store: RedisRateLimitStore | undefined;
    try {
      const s = setup.sentinel.port;
      const before = await subscribers(s);
      store = await createRedisStore({
        sentinel: { sentinels: [{ host: HOST, port: s }], name: setup.name },
      });
      await waitUntil('subscribed', async () => (await subscribers(s)) === before + 1, 5000);
      // No replica: no failover whose +switch-master would end a forgotten detector by chance.
      await setup.replica.stop();
      // The master freezes (QUIT goes unanswered), then dies before the 1.5 s timeout.
      setup.master.pause();
      const closing = store.close();
      await sleep(300);
      setup.master.kill('SIGKILL');
      await closing;
      expect(store.client.status).toBe('end');
      await sleep(1000);
      expect(await subscribers(s)).toBe(before);
    } finally {
      await store?.close();
      await setup.stop();
    }
  }, 60_000);
});

describe('keyPrefix checks', () => {
  let server: RedisServer | undefined;
  const clients: Redis[] = [];
  afterAll(async () => {
    for (const client of clients) client.disconnect();
    await server?.stop();
  });

  it('a given client with keyPrefix "app:" or "" and redisOptions.keyPrefix "" are accepted', async () => {
    server = await startRedis();
    for (const keyPrefix of ['app:', '']) {
      const client = new Redis({
        host: HOST,
        port: server.port,
        keyPrefix,
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
      });
      client.on('error', () => undefined);
      clients.push(client);
      await waitUntil('ready', () => client.status === 'ready', 5000);
      const store = new RedisRateLimitStore({ client });
      expect((await store.consume(planOf(store))).allowed).toBe(true);
      await store.close();
    }
    const store = await createRedisStore({ url: server.url, redisOptions: { keyPrefix: '' } });
    expect((await store.consume(planOf(store))).allowed).toBe(true);
    await store.close();
  }, 30_000);
});
