/**
 * The arguments `WsRateLimitService`'s methods take from application code, checked before
 * anything is spent or kept: what is wrong is named in the error, never decided silently.
 */
import { isIP } from 'node:net';
import { valueText } from '../utils/error-text.js';

/** The longest type accepted from code: types name budgets, store keys and metric labels. */
export const MAX_TYPE_LENGTH = 256;

/** A value in an error message, cut short. */
export function describeValue(value: unknown): string {
  const text = typeof value === 'string' ? JSON.stringify(value) : valueText(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** A target of `consume`, `peek`, `status` or `reset`: a tracker name or address, or a socket. */
export function checkTarget(method: string, target: unknown): void {
  if (typeof target === 'string' ? target !== '' : typeof target === 'object' && target !== null) return;
  throw new TypeError(
    `nestjs-ws-rate-limit: ${method}'s target is a tracker name, an address or a socket: got ${describeValue(target)}`,
  );
}

/** A type named from code: a non-empty string of at most MAX_TYPE_LENGTH characters. */
export function checkType(what: string, type: unknown): asserts type is string {
  if (typeof type !== 'string' || type === '') {
    throw new TypeError(`nestjs-ws-rate-limit: ${what} needs a non-empty string type: got ${describeValue(type)}`);
  }
  if (type.length > MAX_TYPE_LENGTH) {
    throw new RangeError(
      `nestjs-ws-rate-limit: ${what}'s type is at most ${MAX_TYPE_LENGTH} characters (it names budgets, store keys and metric labels): got ${type.length}`,
    );
  }
}

/** An IPv6 network key as the adapter makes it (`2001:db8::/64`, with the module's `ipv6Prefix`), or a TypeError. */
export function networkKey(key: string, ipv6Prefix: number): string {
  const slash = typeof key === 'string' ? key.lastIndexOf('/') : -1;
  if (slash > 0 && isIP(key.slice(0, slash)) === 6 && key.slice(slash + 1) === String(ipv6Prefix)) return key;
  throw new TypeError(
    `nestjs-ws-rate-limit: connectionStatus takes an IP address, or an IPv6 network key as the adapter makes it ` +
      `(<address>/${ipv6Prefix}): got ${describeValue(key)}`,
  );
}
