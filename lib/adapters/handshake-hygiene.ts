import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { ResolvedWsRateLimitOptions } from '../config/resolve-options.js';
import { isTrustedProxy } from '../utils/client-address.js';
import { clientAddressKey } from '../utils/client-ip.js';
import { loopTimeout } from '../utils/loop-timeout.js';

/** A listener put on an HTTP server, to take off again at shutdown. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- listeners of several events
export type ServerListener = [HttpServer, string, (...args: any[]) => void];

/** Sockets in an HTTP exchange or upgrade not yet complete, each with what ends it. */
const pendingExchanges = new WeakMap<Socket, () => void>();
/** The request a socket's pending exchange carries (none for an upgrade). */
const exchangeRequests = new WeakMap<Socket, IncomingMessage>();
/** Per guarded server, its sockets in a pending exchange. */
const pendingSockets = new WeakMap<HttpServer, Set<Socket>>();

/**
 * Takes the listeners `guardHandshakes` added off their servers (at shutdown) and ends the
 * sockets still sending their part of an exchange (a request or an upgrade not yet fully
 * arrived): `server.close()` would otherwise wait for each until its handshake timeout.
 */
export function unguardHandshakes(listeners: ServerListener[]): void {
  const servers = new Set<HttpServer>();
  for (const [server, event, listener] of listeners.splice(0)) {
    server.off(event, listener);
    servers.add(server);
  }
  for (const server of servers) {
    for (const socket of pendingSockets.get(server) ?? []) {
      if (exchangeRequests.get(socket)?.complete !== true) socket.destroy();
    }
  }
}

/**
 * Ends a socket's pending exchange: its WebSocket upgrade is complete (the adapter calls
 * this when the connection opens), so its slot and timeout end here.
 */
export function handshakeCompleted(socket: Socket): void {
  pendingExchanges.get(socket)?.();
}

/**
 * Handshake hygiene on an HTTP server: a TCP connection must complete its part of an
 * exchange (an HTTP request with its whole body, or a WebSocket upgrade up to the open
 * connection) within `handshakeTimeoutMs` (how long the server then takes to answer is not
 * timed: a slow handler, a long poll or a stream is the server's), and at most `maxPendingHandshakesPerIp`
 * per TCP peer address may be in such an exchange at once; others are dropped at once. A
 * body sent a byte at a time keeps its slot and meets the timeout; a request on a
 * kept-alive connection starts a new exchange under the same rules. Trusted proxies
 * (`trustProxy`) are not capped: every client behind one shares its address. With a hop
 * count, every peer is. `onDropped` hears of each new connection dropped over the cap. Returns
 * the listeners it added (none when both limits are off).
 */
export function guardHandshakes(
  server: HttpServer,
  options: Pick<
    ResolvedWsRateLimitOptions,
    'handshakeTimeoutMs' | 'maxPendingHandshakesPerIp' | 'ipv6Prefix' | 'trustProxy'
  >,
  /** Told of each connection dropped over the cap, with its address key. */
  onDropped?: (address: string) => void,
): ServerListener[] {
  const { handshakeTimeoutMs, maxPendingHandshakesPerIp, ipv6Prefix, trustProxy } = options;
  const capped = maxPendingHandshakesPerIp > 0 && trustProxy.kind !== 'hops';
  if (handshakeTimeoutMs === 0 && !capped) return [];
  const pending = new Map<string, number>();
  const waiting = pendingExchanges;
  const held = new Set<Socket>();
  pendingSockets.set(server, held);
  // Over TLS, requests arrive on the TLS socket, so count from the end of the TLS handshake.
  const accepted =
    typeof (server as { addContext?: unknown }).addContext === 'function' ? 'secureConnection' : 'connection';
  /**
   * Starts an exchange on a socket; false when the socket was over the cap and is destroyed
   * (reported when it was a new connection; a later request of a kept-alive one is no
   * connection attempt).
   */
  const hold = (socket: Socket, fresh: boolean): boolean => {
    // The key this socket counts under, or `undefined` when it is not counted.
    const ip =
      capped && !isTrustedProxy(socket.remoteAddress, trustProxy)
        ? (clientAddressKey(socket.remoteAddress, ipv6Prefix) ?? '')
        : undefined;
    if (ip !== undefined) {
      const count = (pending.get(ip) ?? 0) + 1;
      if (count > maxPendingHandshakesPerIp) {
        socket.destroy();
        if (fresh) onDropped?.(ip);
        return false;
      }
      pending.set(ip, count);
    } else if (handshakeTimeoutMs === 0) {
      return true;
    }
    // At the timeout, a request that has fully arrived is the server's to answer, however long
    // that takes (a slow handler, a stream): only the client's part of the exchange is timed.
    const expire = (): void => {
      if (exchangeRequests.get(socket)?.complete === true || answeredUpgrade(socket)) settle();
      else socket.destroy();
    };
    // Counted while the loop runs (see loop-timeout.ts): a request that arrived during a stall
    // is read before the timeout judges it.
    const timer = handshakeTimeoutMs > 0 ? loopTimeout(expire, handshakeTimeoutMs) : undefined;
    const settle = (): void => {
      if (waiting.get(socket) !== settle) return;
      waiting.delete(socket);
      held.delete(socket);
      socket.off('close', settle);
      timer?.clear();
      if (ip === undefined) return;
      const left = (pending.get(ip) ?? 1) - 1;
      if (left > 0) pending.set(ip, left);
      else pending.delete(ip);
    };
    waiting.set(socket, settle);
    held.add(socket);
    socket.once('close', settle);
    return true;
  };
  const onAccepted = (socket: Socket): void => void hold(socket, true);
  // Engine.IO (socket.io) takes over a server's `request` listeners and calls them itself for
  // other paths: a listener prepended again after it would otherwise see such requests twice.
  const seen = new WeakSet<IncomingMessage>();
  // An HTTP exchange ends when the whole request body has arrived and the answer is sent.
  const onRequest = (request: IncomingMessage, response: ServerResponse): void => {
    if (seen.has(request)) return;
    seen.add(request);
    const socket = request.socket;
    if (!waiting.has(socket) && !hold(socket, false)) return;
    exchangeRequests.set(socket, request);
    const ended = (): void => {
      if (response.writableFinished && request.complete) waiting.get(socket)?.();
    };
    response.once('finish', ended);
    request.once('end', ended);
    // A request without a body is complete once its headers are parsed (just after this event):
    // its slot goes back then, so a long poll or a stream does not hold it.
    process.nextTick(() => {
      if (request.complete && exchangeRequests.get(socket) === request) waiting.get(socket)?.();
    });
  };
  // An upgrade keeps its slot until its WebSocket opens (`handshakeCompleted`), its socket
  // ends, or whoever serves it answered (an app's own upgrade handler on another path, as
  // GraphQL subscriptions have, never tells us: its open sockets were ended at the timeout
  // and held their slots, so the address was refused plain requests).
  const onUpgrade = (_request: IncomingMessage, socket: Socket): void => {
    upgrades.add(socket);
    // After every listener of the event ran (a handler that answers at once has written by then).
    setImmediate(() => {
      if (answeredUpgrade(socket)) waiting.get(socket)?.();
    });
  };
  server.on(accepted, onAccepted);
  server.prependListener('request', onRequest);
  server.on('upgrade', onUpgrade);
  return [
    [server, accepted, onAccepted],
    [server, 'request', onRequest],
    [server, 'upgrade', onUpgrade],
  ];
}

/** Sockets that asked for an upgrade. */
const upgrades = new WeakSet<Socket>();

/**
 * Whether an upgrade was answered (a 101, or a refusal): the client's part of the exchange,
 * its request, is over. Engine.IO tells a foreign upgrade by the same sign.
 */
function answeredUpgrade(socket: Socket): boolean {
  return upgrades.has(socket) && socket.bytesWritten > 0;
}
