import type { IncomingMessage, Server as HttpServer } from 'node:http';
import type { Socket } from 'node:net';
import type { ResolvedWsRateLimitOptions } from '../config/resolve-options.js';
import { isTrustedProxy } from '../utils/client-address.js';
import { clientAddressKey } from '../utils/client-ip.js';

/** A listener put on an HTTP server, to take off again at shutdown. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- listeners of several events
export type ServerListener = [HttpServer, string, (...args: any[]) => void];

/**
 * Handshake hygiene on an HTTP server: a TCP connection must send its request within
 * `handshakeTimeoutMs`, and at most `maxPendingHandshakesPerIp` per TCP peer address may
 * be waiting to do so; others are dropped at once. Trusted proxies (`trustProxy`) are not
 * capped: every client behind one shares its address. With a hop count, every peer is.
 * Returns the listeners it added (none when both limits are off).
 */
export function guardHandshakes(
  server: HttpServer,
  options: Pick<
    ResolvedWsRateLimitOptions,
    'handshakeTimeoutMs' | 'maxPendingHandshakesPerIp' | 'ipv6Prefix' | 'trustProxy'
  >,
): ServerListener[] {
  const { handshakeTimeoutMs, maxPendingHandshakesPerIp, ipv6Prefix, trustProxy } = options;
  const capped = maxPendingHandshakesPerIp > 0 && trustProxy.kind !== 'hops';
  if (handshakeTimeoutMs === 0 && !capped) return [];
  const pending = new Map<string, number>();
  const waiting = new WeakMap<Socket, () => void>();
  // Over TLS, requests arrive on the TLS socket, so count from the end of the TLS handshake.
  const accepted =
    typeof (server as { addContext?: unknown }).addContext === 'function' ? 'secureConnection' : 'connection';
  const onAccepted = (socket: Socket): void => {
    // The key this socket counts under, or `undefined` when it is not counted.
    const ip =
      capped && !isTrustedProxy(socket.remoteAddress, trustProxy)
        ? (clientAddressKey(socket.remoteAddress, ipv6Prefix) ?? '')
        : undefined;
    if (ip !== undefined) {
      const count = (pending.get(ip) ?? 0) + 1;
      if (count > maxPendingHandshakesPerIp) {
        socket.destroy();
        return;
      }
      pending.set(ip, count);
    } else if (handshakeTimeoutMs === 0) {
      return;
    }
    const timer = handshakeTimeoutMs > 0 ? setTimeout(() => socket.destroy(), handshakeTimeoutMs).unref() : undefined;
    const settle = (): void => {
      if (!waiting.has(socket)) return;
      waiting.delete(socket);
      clearTimeout(timer);
      if (ip === undefined) return;
      const left = (pending.get(ip) ?? 1) - 1;
      if (left > 0) pending.set(ip, left);
      else pending.delete(ip);
    };
    waiting.set(socket, settle);
    socket.once('close', settle);
  };
  const started = (request: IncomingMessage): void => waiting.get(request.socket)?.();
  server.on(accepted, onAccepted);
  server.prependListener('request', started);
  server.prependListener('upgrade', started);
  return [
    [server, accepted, onAccepted],
    [server, 'request', started],
    [server, 'upgrade', started],
  ];
}
