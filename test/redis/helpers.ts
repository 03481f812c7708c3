/** Small helpers shared by the Redis store tests. */
import { Redis, type Cluster } from 'ioredis';
import { RedisRateLimitStore, type RedisStoreOptions } from '../../lib/storage/redis/index.js';
import { trackerHashOf } from '../../lib/storage/redis/redis-keys.js';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js';

/** A plain client for inspecting a test server (not the store's). */
export function adminClient(port: number): Redis {
  return new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0, retryStrategy: () => 100, lazyConnect: false });
}

/** A client shaped like the one the store creates: no offline queue, no retries. */
export function storeClient(port: number): Redis {
  const client = new Redis({
    host: '127.0.0.1',
    port,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    retryStrategy: (times) => Math.min(100 * times, 1000),
  });
  client.on('error', () => undefined);
  return client;
}

/** Redis calls per command name since the last CONFIG RESETSTAT (INFO commandstats). */
export async function commandCounts(admin: Redis): Promise<Record<string, number>> {
  const info = await admin.info('commandstats');
  const counts: Record<string, number> = {};
  for (const [, name, calls] of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) counts[name!] = Number(calls);
  return counts;
}

/** The clients and stores `openStore` made, for a test file to close at its end. */
export interface OpenedStores {
  readonly clients: Redis[];
  readonly stores: RedisRateLimitStore[];
}

/** A store on a fresh store client of the server on `port` (ready), kept in `opened`. */
export async function openStore(
  port: number,
  opened: OpenedStores,
  options: Omit<RedisStoreOptions, 'client'>,
): Promise<RedisRateLimitStore> {
  const client = storeClient(port);
  opened.clients.push(client);
  await ready(client);
  const store = new RedisRateLimitStore({ client, ...options });
  opened.stores.push(store);
  return store;
}

/**
 * A store whose client goes through a TCP proxy of the server on `port` (for latency,
 * blackholes and cuts), kept in `opened`, its proxy in `proxies`.
 */
export async function openProxiedStore(
  port: number,
  opened: OpenedStores,
  proxies: TcpProxy[],
  options: Omit<RedisStoreOptions, 'client'>,
): Promise<{ store: RedisRateLimitStore; proxy: TcpProxy }> {
  const proxy = await startTcpProxy(port);
  proxies.push(proxy);
  return { store: await openStore(proxy.port, opened, options), proxy };
}

/** Resolves once the client is ready. */
export function ready(client: Redis | Cluster): Promise<void> {
  if (client.status === 'ready') return Promise.resolve();
  return new Promise((resolve) => client.once('ready', () => resolve()));
}

/** Closes a client whatever its state. */
export async function closeClient(client: Redis | Cluster): Promise<void> {
  try {
    if (client.status === 'ready') await client.quit();
  } catch {
    // already closing
  }
  // disconnect() after a clean QUIT would leave ioredis's 2 s stream timer behind.
  if (client.status !== 'end') client.disconnect();
}

/**
 * Invariant I-2: every key under `prefix` has a TTL, and no longer than `bound(key)` ms.
 * Returns the number of keys checked.
 */
export async function expectBoundedTtls(
  client: Redis,
  prefix: string,
  bound: (key: string) => number,
): Promise<{ checked: number; problems: string[] }> {
  const problems: string[] = [];
  let checked = 0;
  let cursor = '0';
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
    cursor = next;
    for (const key of keys) {
      const ttl = await client.pttl(key);
      if (ttl === -2) continue; // expired meanwhile
      checked++;
      if (ttl === -1 && key.endsWith('}:~4') && (await fieldTtlsOf(client, key, bound, problems))) continue;
      const limit = await boundOf(client, key, bound);
      // -1 is a key without a TTL (the bug class I-2 is about); 0 is one expiring this very ms.
      if (!(ttl >= 0) || ttl > limit) problems.push(`${key}: PTTL ${ttl} (bound ${limit})`);
    }
  } while (cursor !== '0');
  return { checked, problems };
}

/**
 * The bound of a key: `bound(key)`, or for a tracker hash of key layout 4 (`...}:~4`, which
 * holds the tiers' fields named by their keys' text after the tag) the largest bound of the
 * tier keys whose fields it holds, plus the second a TTL is extended by past the need
 * (`writeTracker` in lib/storage/redis/lua-helpers.ts).
 */
async function boundOf(client: Redis, key: string, bound: (key: string) => number): Promise<number> {
  if (!key.endsWith('}:~4')) return bound(key);
  const base = key.slice(0, -':~4'.length);
  // A reservation's owner mark `~o<field>` lives as long as its bucket's field.
  const fields = (await client.hkeys(key)).filter((field) => field !== '~e');
  const need = Math.max(0, ...fields.map((field) => bound(base + field.replace(/^~o/, ''))));
  return need + 1000;
}

/**
 * A tracker hash without a TTL of its own, on a server with hash-field TTLs (Redis 7.4+):
 * every field must carry one, bounded as the hash would be. Adds what breaks that to
 * `problems`; false when the server has no HPTTL (the hash's missing TTL is then the problem).
 */
async function fieldTtlsOf(
  client: Redis,
  key: string,
  bound: (key: string) => number,
  problems: string[],
): Promise<boolean> {
  const fields = await client.hkeys(key);
  if (fields.length === 0) return true; // emptied meanwhile
  let ttls: unknown;
  try {
    ttls = await client.call('HPTTL', key, 'FIELDS', String(fields.length), ...fields);
  } catch {
    return false;
  }
  // The fields a decision writes share one TTL (their longest need plus a second), so each is
  // bounded as the whole hash is without hash-field TTLs.
  const limit = await boundOf(client, key, bound);
  fields.forEach((field, i) => {
    const ttl = (ttls as number[])[i]!;
    if (ttl === -2) return; // expired meanwhile
    if (!(ttl >= 0) || ttl > limit) problems.push(`${key} field ${field}: HPTTL ${ttl} (bound ${limit})`);
  });
  return true;
}

/** A sliding log's field in its tracker hash (key layout 3 and later), as bytes; null when absent. */
export function logField(client: Redis, key: string): Promise<Buffer | null> {
  const { hash, field } = trackerHashOf(key);
  return client.hgetBuffer(hash, field);
}

/**
 * The entries a sliding log holds (key layout 3 and later): in its tracker hash's field (`L` and 8
 * bytes per entry), or, once it outgrew the field (`Z`), in the sorted set at its key.
 */
export async function logSize(client: Redis, key: string): Promise<number> {
  const field = await logField(client, key);
  if (field === null) return 0;
  if (field.toString() === 'Z') return client.zcard(key);
  return (field.length - 1) / 8;
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The p-th percentile (0-100) of a list of numbers. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** The Cluster slot of each key, as the node on `port` computes it (`CLUSTER KEYSLOT`, pipelined). */
export async function keySlots(port: number, keys: readonly string[]): Promise<number[]> {
  const client = adminClient(port);
  try {
    await ready(client);
    const pipeline = client.pipeline();
    for (const key of keys) pipeline.call('CLUSTER', 'KEYSLOT', key);
    const replies = (await pipeline.exec()) ?? [];
    return replies.map(([error, slot]) => {
      if (error) throw error;
      return Number(slot);
    });
  } finally {
    await closeClient(client);
  }
}

/** The port of the master that serves each of the 16,384 slots, as the node on `port` sees it. */
export async function slotOwners(port: number): Promise<number[]> {
  const client = adminClient(port);
  try {
    await ready(client);
    const owners = new Array<number>(16_384).fill(-1);
    const ranges = (await client.call('CLUSTER', 'SLOTS')) as [number, number, [string, number, ...unknown[]]][];
    for (const [from, to, [, owner]] of ranges) owners.fill(Number(owner), from, to + 1);
    return owners;
  } finally {
    await closeClient(client);
  }
}

/** An admitted decision: when it was asked for and when its answer came (local ms). */
export type Admission = readonly [asked: number, answered: number];

/**
 * The most any window exceeds the bucket's refill over it, counting in a window [a, b]
 * the admissions asked and answered within it (so decided within it, wherever Redis or
 * the process took the decision in between): max over a, b of count - rate * (b - a). A
 * bucket of capacity C admits at most C + rate * T in any window T, so this is at most C.
 */
export function worstBurst(admissions: readonly Admission[], ratePerMs: number): number {
  const byAsked = [...admissions].sort((x, y) => x[0] - y[0]);
  let worst = 0;
  for (let i = 0; i < byAsked.length; i++) {
    const from = byAsked[i]![0];
    const answered = byAsked
      .slice(i)
      .map(([, at]) => at)
      .sort((x, y) => x - y);
    answered.forEach((to, k) => {
      worst = Math.max(worst, k + 1 - ratePerMs * (to - from));
    });
  }
  return worst;
}
