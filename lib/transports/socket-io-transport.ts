import type { AnswerSlot } from '../connection/answer-order.js';
import { RATE_LIMIT_DISCONNECT_EVENT, RATE_LIMIT_EVENT } from '../protocol/rate-limit-protocol.js';
import type { RateLimitTransport } from './transport.js';

/** The parts of an Engine.IO packet the slow-consumer check reads. */
interface EnginePacketLike {
  readonly data?: unknown;
}

/** The parts of a socket.io socket's Engine.IO connection the limiter uses. */
export interface EngineSocketLike {
  readonly remoteAddress?: string;
  readonly readyState?: string;
  /** Packets not yet handed to the transport. */
  readonly writeBuffer?: readonly EnginePacketLike[];
  /** The current transport; over WebSocket, its `ws` socket. */
  readonly transport?: { readonly name?: string; readonly socket?: { readonly bufferedAmount?: number } };
  /** Ends the connection; with `discard`, without flushing what is queued. */
  close(discard?: boolean): void;
}

/** The parts of a socket.io server-side `Socket` the limiter uses (no import of socket.io). */
export interface SocketIoSocketLike {
  readonly connected: boolean;
  readonly conn: EngineSocketLike;
  readonly nsp: object;
  readonly handshake?: { readonly address?: string };
  /** The Engine.IO connection's socket.io client: its `sockets`, one per namespace joined. */
  readonly client?: { readonly sockets?: ReadonlyMap<unknown, SocketIoSocketLike> };
  emit(event: string, ...args: unknown[]): boolean;
  disconnect(close?: boolean): unknown;
  once(event: 'disconnect', listener: (reason: string) => void): unknown;
}

/**
 * Sockets known to have disconnected before the limiter tracked them (the application's own
 * `connection` listener turned them away): `isClosed` tells the registry, so a service call
 * that meets one later (a gateway's `handleConnection` reading its status) does not count it
 * as open for ever. (A socket.io socket that is not connected may also not be connected *yet*,
 * in a namespace middleware: `connected` alone cannot tell.)
 */
const closedSockets = new WeakSet<object>();

/** Notes that a socket disconnected before it was tracked (see `closedSockets`). */
export function noteClosedSocket(client: object): void {
  closedSockets.add(client);
}

/** Whether a socket is a socket.io server-side `Socket` (by shape: socket.io need not be installed). */
export function isSocketIoSocket(client: object): client is SocketIoSocketLike {
  const socket = client as Partial<SocketIoSocketLike>;
  return (
    typeof socket.emit === 'function' &&
    typeof socket.disconnect === 'function' &&
    typeof socket.connected === 'boolean' &&
    typeof socket.nsp === 'object' &&
    socket.nsp !== null &&
    typeof socket.conn === 'object' &&
    socket.conn !== null
  );
}

/** A frame in NestJS's `{ event, data }` convention, which socket.io sends as that event. */
function isEventFrame(frame: unknown): frame is { event: string; data: unknown } {
  return typeof frame === 'object' && frame !== null && typeof (frame as { event?: unknown }).event === 'string';
}

/** The sockets of the other namespaces the socket's Engine.IO connection carries. */
function carriedSockets(client: SocketIoSocketLike): SocketIoSocketLike[] {
  const sockets = client.client?.sockets;
  if (sockets === undefined) return [];
  return [...sockets.values()].filter((socket) => socket !== client);
}

/** Bytes of a packet's payload, as near as can be told without encoding it. */
function packetBytes(packet: EnginePacketLike): number {
  const { data } = packet;
  if (typeof data === 'string') return data.length;
  return (data as { byteLength?: number } | undefined)?.byteLength ?? 0;
}

/**
 * The socket.io transport: a frame is an event (`rate_limit` with the frame's data, or the
 * frame's own `event` when the frame builder made one), or the message's acknowledgement
 * when the client asked for one; a policy close is a `rate_limit_disconnect` event with the
 * close code and reason, to the socket and to the sockets of the other namespaces on its
 * Engine.IO connection (`carried`), then a disconnect of that whole connection (after what
 * was queued): disconnecting the namespace alone would let the client join it again on the
 * same connection at once, with no upgrade to count. A socket ends on `disconnect`.
 * Engine.IO keeps connections alive itself.
 */
export const socketIoTransport: RateLimitTransport<SocketIoSocketLike> = Object.freeze({
  name: 'socket.io',
  isOpen: (client: SocketIoSocketLike) => client.connected,
  isClosed: (client: SocketIoSocketLike) => closedSockets.has(client),
  bufferedBytes(client: SocketIoSocketLike): number {
    const { writeBuffer, transport } = client.conn;
    let bytes = transport?.socket?.bufferedAmount ?? 0;
    if (writeBuffer !== undefined) for (const packet of writeBuffer) bytes += packetBytes(packet);
    return bytes;
  },
  sendFrame(client: SocketIoSocketLike, frame: unknown, _info?: unknown, slot?: AnswerSlot): void {
    const ack = slot?.ack;
    if (ack !== undefined) {
      // Answered once (an acknowledgement called twice is ignored by socket.io anyway); kept
      // when the frame could not be encoded, for the default frame the caller sends instead.
      ack(frame);
      slot!.ack = undefined;
      return;
    }
    if (isEventFrame(frame)) client.emit(frame.event, frame.data);
    else client.emit(RATE_LIMIT_EVENT, frame);
  },
  close(client: SocketIoSocketLike, code: number, reason: string): void {
    // socket.io has no close codes: each socket the disconnect ends learns them from this
    // event, sent first.
    const sockets = [client, ...carriedSockets(client)].filter((socket) => socket.connected);
    for (const socket of sockets) socket.emit(RATE_LIMIT_DISCONNECT_EVENT, { code, reason });
    // Through a socket still connected (a disconnected one's disconnect does nothing): the
    // offender may have left its namespace while its close waited.
    (sockets[0] ?? client).disconnect(true);
  },
  carried: carriedSockets,
  terminate(client: SocketIoSocketLike): void {
    // Discards what is queued: a slow consumer would not read it.
    client.conn.close(true);
  },
  peerAddress: (client: SocketIoSocketLike) => client.conn.remoteAddress ?? client.handshake?.address,
  onClose(client: SocketIoSocketLike, listener: () => void): void {
    client.once('disconnect', () => listener());
  },
});
