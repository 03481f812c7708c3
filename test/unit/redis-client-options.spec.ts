import { describe, expect, it } from '@jest/globals';
import type { RedisOptions } from 'ioredis';
import { buildClient } from '../../lib/storage/redis/client-factory.js';
import { sentinelClientOptions } from '../../lib/storage/redis/redis-store.js';
import type { RedisStoreOptions } from '../../lib/storage/redis/redis-store.options.js';

/** What buildClient passes as `base`: the user's redisOptions under the store's safety settings. */
const base = (redisOptions: RedisOptions = {}): RedisOptions => ({
  connectTimeout: 2000,
  ...redisOptions,
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
});
const sentinels = [{ host: '127.0.0.1', port: 26379 }];

describe('Sentinel client options', () => {
  it('TLS to the master also turns on ioredis enableTLSForSentinelMode (else it connects in plain text)', () => {
    const options = sentinelClientOptions(base(), { sentinels, name: 'm', tls: true });
    expect(options.tls).toEqual({});
    expect(options.enableTLSForSentinelMode).toBe(true);
    const custom = sentinelClientOptions(base(), { sentinels, name: 'm', tls: { servername: 'redis.internal' } });
    expect(custom).toMatchObject({ tls: { servername: 'redis.internal' }, enableTLSForSentinelMode: true });
  });

  it('settings given only in redisOptions are kept, not overwritten with undefined', () => {
    const options = sentinelClientOptions(
      base({ tls: { servername: 'r' }, username: 'app', password: 'secret', db: 3, sentinelTLS: { servername: 's' } }),
      { sentinels, name: 'm' },
    );
    expect(options).toMatchObject({
      tls: { servername: 'r' },
      enableTLSForSentinelMode: true,
      username: 'app',
      password: 'secret',
      db: 3,
      sentinelTLS: { servername: 's' },
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
    });
  });

  it('the sentinel options win over redisOptions; without TLS anywhere, none is set', () => {
    const options = sentinelClientOptions(base({ password: 'old', db: 1 }), {
      sentinels,
      name: 'm',
      password: 'new',
      db: 2,
      sentinelPassword: 'watch',
    });
    expect(options).toMatchObject({ sentinels, name: 'm', password: 'new', db: 2, sentinelPassword: 'watch' });
    expect(options.tls).toBeUndefined();
    expect(options.enableTLSForSentinelMode).toBeUndefined();
    expect(typeof options.sentinelRetryStrategy).toBe('function');
  });

  it("leaves ioredis's failoverDetector to redisOptions (the store watches the sentinels itself)", () => {
    expect(sentinelClientOptions(base(), { sentinels, name: 'm' }).failoverDetector).toBeUndefined();
  });
});

describe('Cluster client options', () => {
  /** A Cluster client as the store builds it (lazy: it connects to nothing). */
  const clusterOptions = async (store: Omit<RedisStoreOptions, 'cluster'>, extra: Record<string, unknown> = {}) => {
    const ioredis = await import('ioredis');
    const client = buildClient(ioredis, {
      ...store,
      cluster: { nodes: [{ host: '127.0.0.1', port: 1 }], options: { lazyConnect: true, ...extra } },
    }) as unknown as { options: { maxRedirections: number; retryDelayOnTryAgain: number }; disconnect(): void };
    client.disconnect();
    return client.options;
  };

  it("TRYAGAIN is retried every 5 ms for the whole deadline: maxRedirections covers it (16, ioredis's default, ended the retries after 40-80 ms while a slot's keys moved)", async () => {
    expect(await clusterOptions({})).toMatchObject({ retryDelayOnTryAgain: 5, maxRedirections: 16 + 2 * 10 });
    expect(await clusterOptions({ commandTimeoutMs: 2000 })).toMatchObject({ maxRedirections: 16 + 2 * 400 });
    // A larger figure of the application's own is kept.
    expect(await clusterOptions({}, { maxRedirections: 500 })).toMatchObject({ maxRedirections: 500 });
  });
});
