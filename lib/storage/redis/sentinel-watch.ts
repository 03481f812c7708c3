import type { Redis, RedisOptions } from './ioredis-types.js';

const noop = (): void => undefined;

/** The channel on which every sentinel announces a master it has switched. */
const SWITCH_CHANNEL = '+switch-master';
/** Reconnect delays of the watching connections: 0.5 s, 1 s, ... capped at 5 s. */
const retryStrategy = (times: number): number => Math.min(500 * times, 5000);

/** Follows the sentinels' announcements for one Sentinel client; `close` ends it. */
export interface SentinelWatch {
  close(): void;
}

/**
 * Makes a Sentinel client move to a new master as soon as a sentinel announces it, instead
 * of when the old master is demoted (it accepts writes until then, about ten seconds whose
 * writes the demotion throws away). One subscriber per sentinel listens on
 * `+switch-master`; an announcement for the client's own master name, while the client is
 * ready, makes it reconnect (ioredis then asks the sentinels for the master again).
 *
 * ioredis's own `failoverDetector` does this too, but reconnects on a switch of any master
 * the sentinels watch, leaves its sentinel connections without an `error` listener (ioredis
 * then prints every refused reconnect) and outlives a `quit()`. The subscribers here are
 * the store's, closed with it.
 */
export function watchSentinels(
  /** ioredis's `Redis` class (the store loads ioredis itself: it is optional). */
  RedisClass: new (options: RedisOptions) => Redis,
  client: Redis,
): SentinelWatch | undefined {
  const options = client.options as RedisOptions;
  const sentinels = options.sentinels;
  const name = options.name;
  if (!Array.isArray(sentinels) || sentinels.length === 0 || typeof name !== 'string') return undefined;
  /** The announcement last seen: every sentinel makes the same one, and one is enough. */
  let last: string | undefined;
  const subscribers = sentinels.map((sentinel) => {
    const subscriber = new RedisClass({
      host: sentinel.host ?? '127.0.0.1',
      port: sentinel.port ?? 26379,
      family: sentinel.family,
      username: options.sentinelUsername,
      password: options.sentinelPassword,
      tls: options.sentinelTLS,
      connectTimeout: options.connectTimeout,
      // SUBSCRIBE waits for the connection; ioredis subscribes again after each reconnect.
      enableOfflineQueue: true,
      maxRetriesPerRequest: null,
      retryStrategy,
      lazyConnect: true,
    });
    // A sentinel that is down is the client's business (it asks the others); nothing printed.
    subscriber.on('error', noop);
    subscriber.on('message', (channel: string, message: string) => {
      if (channel !== SWITCH_CHANNEL) return;
      // "<master name> <old ip> <old port> <new ip> <new port>"
      if (message.split(' ', 1)[0] !== name || message === last) return;
      last = message;
      // Not ready: a reconnect is under way, and it asks the sentinels anyway.
      if (client.status === 'ready') client.disconnect(true);
    });
    subscriber.subscribe(SWITCH_CHANNEL).catch(noop);
    return subscriber;
  });
  return {
    close: () => {
      for (const subscriber of subscribers) subscriber.disconnect();
    },
  };
}
