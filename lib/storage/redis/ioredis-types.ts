/**
 * The ioredis types the public declarations use. ioredis is an optional peer dependency:
 * each alias below carries `@ts-ignore` as the last line of its JSDoc (TypeScript keeps
 * JSDoc in the emitted .d.ts, and honours a directive there), so an app without ioredis
 * that type-checks libraries (`skipLibCheck: false`) sees `any` instead of TS2307. Import
 * ioredis types from here, never from 'ioredis', in any file whose declarations are shipped.
 */
/* eslint-disable @typescript-eslint/ban-ts-comment -- @ts-expect-error would fail where ioredis IS installed */

/**
 * ioredis's standalone (or Sentinel) client.
 * @ts-ignore ioredis may be absent */
export type Redis = import('ioredis').Redis;
/**
 * ioredis's Cluster client.
 * @ts-ignore ioredis may be absent */
export type Cluster = import('ioredis').Cluster;
/**
 * ioredis's client options.
 * @ts-ignore ioredis may be absent */
export type RedisOptions = import('ioredis').RedisOptions;
/**
 * ioredis's Cluster options.
 * @ts-ignore ioredis may be absent */
export type ClusterOptions = import('ioredis').ClusterOptions;
