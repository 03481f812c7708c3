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
  /** An announcement that came while the client was not ready. */
  let unchecked: string | undefined;
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
      if (client.status === 'ready') client.disconnect(true);
      // Not ready: a connection under way may have asked the sentinels before the switch;
      // checked once it is ready (see `rewind`).
      else unchecked = message;
    });
    subscriber.subscribe(SWITCH_CHANNEL).catch(noop);
    return subscriber;
  });
  // ioredis moves on to the next sentinel at every connection and, past the last, reports
  // "All sentinels are unreachable" and waits before starting over; only its own failover
  // detector puts the sentinel that answered first again. Once ready, so is it here: the
  // next reconnect asks that sentinel first, as it would with the detector.
  const rewind = (): void => {
    const connector = (client as unknown as { connector?: { sentinelIterator?: { reset?(first: boolean): void } } })
      .connector;
    connector?.sentinelIterator?.reset?.(true);
    // Ready on another server than the one announced meanwhile: once more, not again after
    // that (an address written otherwise, a host name or a NAT, costs one reconnect at most).
    const announced = unchecked?.split(' ');
    unchecked = undefined;
    if (announced?.length !== 5) return;
    const stream = (client as unknown as { stream?: { remoteAddress?: string; remotePort?: number } }).stream;
    if (stream?.remoteAddress !== announced[3] || String(stream.remotePort) !== announced[4]) client.disconnect(true);
  };
  client.on('ready', rewind);
  return {
    close: () => {
      client.off('ready', rewind);
      for (const subscriber of subscribers) subscriber.disconnect();
    },
  };
}
