/**
 * socket.io support for {@link RateLimitedClient}: `socketIoFactory(io)` turns
 * socket.io-client's `io` function into the client's `createSocket` option.
 *
 * Nothing here imports socket.io-client (the caller passes `io`), so the client stays
 * dependency-free and bundles for browsers without it.
 */
import {
  RATE_LIMIT_DISCONNECT_EVENT,
  RATE_LIMIT_EVENT,
  toMessageId,
  type MessageId,
} from '../protocol/rate-limit-protocol.js';
import type { AckMatch, SocketCloseEvent, SocketMessageEvent, WebSocketFactory, WebSocketLike } from './types.js';

/** A listener type checked bivariantly, so socket.io-client's typed listeners fit. */
type Listener<A extends unknown[]> = { bivarianceHack(...args: A): void }['bivarianceHack'];

/** What `emit` needs; `timeout(ms)` returns it too. */
export interface SocketIoEmitterLike {
  /** Emits an event; a function as last argument asks for an acknowledgement. */
  emit(event: string, ...args: unknown[]): unknown;
}

/** The part of a socket.io-client `Socket` (4.4 or later) the adapter uses. */
export interface SocketIoSocketLike extends SocketIoEmitterLike {
  /** True once connected to its namespace. */
  readonly connected: boolean;
  /** Adds a listener of a named event (`connect`, `disconnect`, `connect_error`). */
  on(event: string, listener: Listener<unknown[]>): unknown;
  /** Adds a listener of every event the server emits. */
  onAny(listener: Listener<[event: string, ...args: unknown[]]>): unknown;
  /** The next `emit`'s acknowledgement gives up (with an error) after `ms`. */
  timeout(ms: number): SocketIoEmitterLike;
  /** Disconnects and releases the socket (and its manager, when it was its last socket). */
  disconnect(): unknown;
}

/** socket.io-client's `io` function, or any function of that shape. */
export type SocketIoConnect = {
  bivarianceHack(url: string, options: SocketIoConnectOptions): SocketIoSocketLike;
}['bivarianceHack'];

/**
 * Options passed to `io`: socket.io-client's own (`transports`, `path`, `auth`, ...), with
 * the two defaults the adapter sets.
 */
export interface SocketIoConnectOptions {
  /**
   * socket.io's own reconnection: off, since {@link RateLimitedClient} reconnects (with its
   * back-off and its policy delay after a rate-limit disconnect). The adapter ends a socket at
   * its first disconnect or `connect_error` either way.
   * @default false
   */
  reconnection?: boolean;
  /**
   * A new Manager (Engine.IO connection) per socket, so that each reconnect of the client is
   * a new connection the server counts (and may refuse), as with a WebSocket.
   * @default true
   */
  forceNew?: boolean;
  /** Any other socket.io-client option. */
  [option: string]: unknown;
}

/** Options of the adapter itself. */
export interface SocketIoFactoryOptions {
  /**
   * Ask for an acknowledgement with every message. The server then answers a refused
   * message through it, so the client knows exactly which message was refused whatever its
   * payload; and a handler's return value (other than `{ event, data }`) reaches the client
   * as a message `{ event, data, ack: true, id }` (see {@link isSocketIoAck}). Without acks,
   * refusals come as `rate_limit` events and handlers' plain return values are lost; the
   * server then echoes `data.id`, so the adapter adds the client's message id to object
   * payloads that have no `id` of their own (handlers see it).
   * @default true
   */
  acks?: boolean;
  /**
   * How long an acknowledgement is awaited before socket.io-client forgets it (a handler
   * that returns nothing never answers). A refusal arriving later is missed, and its message
   * counted as accepted.
   * @default 30000
   */
  ackTimeoutMs?: number;
}

/** `readyState` values, as WebSocket has them. */
const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;
/** Close code of a connection lost, or never made. */
const ABNORMAL_CLOSURE = 1006;
/** Close code a `rate_limit_disconnect` event stands for when it names none. */
const POLICY_VIOLATION = 1008;
/** Message ids remembered per socket to tell the ones the adapter put into payloads. */
const MAX_TRACKED_IDS = 1024;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** An event's or acknowledgement's arguments as one value: none, the one, or all as an array. */
function payloadOf(args: readonly unknown[]): unknown {
  return args.length === 1 ? args[0] : args.length === 0 ? undefined : [...args];
}

/** Adds to a set that forgets its oldest entries beyond {@link MAX_TRACKED_IDS}. */
function remember(set: Set<MessageId>, id: MessageId): void {
  set.delete(id);
  set.add(id);
  if (set.size > MAX_TRACKED_IDS) set.delete(set.values().next().value as MessageId);
}

/**
 * One socket.io socket seen as a WebSocket: the client's `{ event, data, id }` frames
 * become `emit(event, data, ack)`, the server's events and acknowledgements become decoded
 * messages, and disconnects become close events with WebSocket close codes.
 */
class SocketIoConnection implements WebSocketLike {
  readyState = CONNECTING;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: SocketMessageEvent) => void) | null = null;
  onclose: ((event: SocketCloseEvent) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  /** The server's `rate_limit_disconnect`, which the disconnect that follows reports. */
  private announced: SocketCloseEvent | undefined;
  /** The client's own `close(code, reason)`. */
  private closing: SocketCloseEvent | undefined;
  /** Ids the adapter put into payloads (without acks), which the server echoes. */
  private readonly ownIds = new Set<MessageId>();
  /** Ids payloads carried of their own: a frame echoing one names no message of the client. */
  private readonly foreignIds = new Set<MessageId>();
  private released = false;
  /** Messages `send` was called with (see `SocketMessageEvent.answers`). */
  private sent = 0;

  constructor(
    private readonly socket: SocketIoSocketLike,
    private readonly acks: boolean,
    private readonly ackTimeoutMs: number,
  ) {
    socket.on('connect', () => this.handleConnect());
    socket.on('disconnect', (reason: unknown) => this.handleDisconnect(reason));
    socket.on('connect_error', (error: unknown) => this.handleConnectError(error));
    socket.onAny((event: string, ...args: unknown[]) => this.handleEvent(event, args));
    // A socket of a shared manager may be connected already; the client's handlers are set
    // once this constructor has returned.
    if (socket.connected) queueMicrotask(() => this.handleConnect());
  }

  send(text: string): void {
    if (this.readyState !== OPEN) throw new Error('socket.io socket is not connected');
    const { event, data, id } = JSON.parse(text) as { event: string; data?: unknown; id?: MessageId };
    // Counted before it may fail: the client counts every send that did not throw.
    const place = ++this.sent;
    try {
      if (this.acks) {
        this.socket
          .timeout(this.ackTimeoutMs)
          .emit(event, data, (error: unknown, ...response: unknown[]) =>
            this.handleAck(event, id, place, error, response),
          );
      } else {
        this.socket.emit(event, this.withId(data, id));
      }
    } catch (error) {
      // A reserved event name ('disconnect', ...; `RateLimitedClient.send` refuses those of
      // `reservedEvents`, but another caller may not): report it, and let the message go
      // rather than have it block the queue.
      this.onerror?.(error);
    }
  }

  close(code = 1000, reason = ''): void {
    if (this.readyState >= CLOSING) return;
    const connecting = this.readyState === CONNECTING;
    this.readyState = CLOSING;
    this.closing = { code, reason };
    if (connecting && openingOnLongPolling(this.socket)) {
      // Disconnected now, Engine.IO would close mid-handshake, and over long polling its close
      // never reaches the server (engine.io-client sends it once open, which then never
      // comes): the session would hold the server's open-connection slot until its ping
      // timeout. It is disconnected once the handshake ends (or socket.io-client's own
      // `timeout` gives it up); the client hears of the close now.
      this.released = true;
      const release = (): void => void this.socket.disconnect();
      this.socket.on('connect', release);
      this.socket.on('connect_error', release);
      this.finish(this.closing);
      return;
    }
    // Fires `disconnect` at once when connected; a socket still connecting closes silently.
    this.release();
    if (this.readyState !== CLOSED) this.finish(this.closing);
  }

  private handleConnect(): void {
    if (this.readyState !== CONNECTING) return;
    this.readyState = OPEN;
    this.onopen?.({ type: 'open' });
  }

  private handleDisconnect(reason: unknown): void {
    if (this.readyState === CLOSED) return;
    const text = typeof reason === 'string' ? reason : '';
    this.finish(this.closing ?? this.announced ?? { code: ABNORMAL_CLOSURE, reason: text });
  }

  private handleConnectError(error: unknown): void {
    if (this.readyState === CLOSED) return;
    const message = error instanceof Error ? error.message : String(error);
    this.readyState = CLOSED;
    this.release();
    this.onerror?.(error);
    // A refusal of the server's says when a retry could succeed.
    const data = (error as { data?: unknown } | null)?.data;
    const retryAfter = isRecord(data) ? data.retryAfter : undefined;
    const wait = typeof retryAfter === 'number' && Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : 0;
    this.onclose?.(
      wait > 0
        ? { code: ABNORMAL_CLOSURE, reason: message, retryAfterMs: wait }
        : { code: ABNORMAL_CLOSURE, reason: message },
    );
  }

  /** Ends the socket for good: socket.io must not reconnect it behind the client's back. */
  private finish(event: SocketCloseEvent): void {
    this.readyState = CLOSED;
    this.release();
    this.onclose?.(event);
  }

  /** Disconnects the socket once. */
  private release(): void {
    if (this.released) return;
    this.released = true;
    this.socket.disconnect();
  }

  private handleEvent(event: string, args: unknown[]): void {
    if (this.readyState === CLOSED) return;
    // The server asked for an acknowledgement the client has no way to give.
    if (typeof args.at(-1) === 'function') args = args.slice(0, -1);
    const data = payloadOf(args);
    if (event === RATE_LIMIT_DISCONNECT_EVENT) {
      const info = isRecord(data) ? data : {};
      this.announced = {
        code: typeof info.code === 'number' ? info.code : POLICY_VIOLATION,
        reason: typeof info.reason === 'string' ? info.reason : '',
        policy: true,
      };
      return;
    }
    this.deliver({ event, data: event === RATE_LIMIT_EVENT ? this.checkedId(data) : data });
  }

  /** An acknowledgement: the refusal of the message, or its handler's return value. */
  private handleAck(
    event: string,
    id: MessageId | undefined,
    place: number,
    error: unknown,
    response: unknown[],
  ): void {
    // Timed out, or disconnected: the message is unanswered, which the client handles.
    if (error !== null && error !== undefined) return;
    if (this.readyState === CLOSED) return;
    const reply = payloadOf(response);
    // A refusal in either form a frame builder gives it: `{ event: 'rate_limit', data }` or
    // flat, `{ type: 'rate_limit', ... }`.
    const refusal = !isRecord(reply)
      ? undefined
      : reply.event === RATE_LIMIT_EVENT && isRecord(reply.data)
        ? reply.data
        : reply.type === RATE_LIMIT_EVENT
          ? reply
          : undefined;
    if (refusal !== undefined) {
      // The acknowledgement names the message exactly, whatever its payload held.
      const { id: echoed, ...info } = refusal;
      const named = id ?? toMessageId(echoed);
      const data = named === undefined ? info : { ...info, id: named };
      this.deliver({ event: RATE_LIMIT_EVENT, data }, place);
      return;
    }
    this.deliver(id === undefined ? { event, data: reply, ack: true } : { event, data: reply, ack: true, id }, place);
  }

  /** Hands a message to the client; `answers`: the place of the message it answers (see `SocketMessageEvent`). */
  private deliver(message: Record<string, unknown>, answers?: number): void {
    this.onmessage?.(
      answers === undefined ? { data: undefined, decoded: message } : { data: undefined, decoded: message, answers },
    );
  }

  /**
   * Without acks, the server echoes `data.id`: the adapter puts the client's id there when
   * the payload is an object without an `id` of its own.
   */
  private withId(data: unknown, id: MessageId | undefined): unknown {
    if (id === undefined || !isRecord(data)) return data;
    if (Object.hasOwn(data, 'id')) {
      const foreign = toMessageId(data.id);
      if (foreign !== undefined) remember(this.foreignIds, foreign);
      return data;
    }
    remember(this.ownIds, id);
    return { ...data, id };
  }

  /** A `rate_limit` event's payload, without an echoed id that is not surely the client's. */
  private checkedId(data: unknown): unknown {
    if (!isRecord(data) || data.id === undefined) return data;
    const id = toMessageId(data.id);
    if (id !== undefined && this.ownIds.has(id) && !this.foreignIds.has(id)) return data;
    const { id: _dropped, ...rest } = data;
    return rest;
  }
}

/**
 * Turns socket.io-client's `io` into a {@link WebSocketFactory} for the client's
 * `createSocket` option, so that {@link RateLimitedClient} (queueing, `retryAfter`, pacing,
 * back-off, reconnection) works against a socket.io server using `WsRateLimitIoAdapter`.
 *
 * The client's URL is passed to `io` as it is (`http://host:port/namespace`). Each message
 * `send(event, data)` is emitted as `emit(event, data, ack)`; events the server emits reach
 * the client as messages `{ event, data }` (`data` is the single argument, or an array of
 * several); `rate_limit` answers (acknowledgement or event) drive the client's pacing; a
 * `rate_limit_disconnect` followed by the disconnect closes with its code (1008) and reason.
 * Other disconnects close with 1006 (1000 when the client closed), a `connect_error` with an
 * error event then 1006 (the client then waits its `policyDelayMs`, as after HTTP 429).
 * Payloads are sent as JSON, so binary data is not carried; events the server emits may hold
 * any value.
 *
 * @example
 * ```ts
 * import { io } from 'socket.io-client';
 * import { RateLimitedClient, isSocketIoAck, socketIoFactory } from 'nestjs-ws-rate-limit/client';
 * const client = new RateLimitedClient('http://localhost:3000', {
 *   createSocket: socketIoFactory(io, { transports: ['websocket'] }),
 *   isAck: isSocketIoAck, // events whose handlers return nothing are confirmed by time
 * });
 * client.send('chat', { text: 'hello' });
 * ```
 */
export function socketIoFactory(
  io: SocketIoConnect,
  ioOptions: SocketIoConnectOptions = {},
  options: SocketIoFactoryOptions = {},
): WebSocketFactory {
  if (typeof io !== 'function') throw new TypeError('socketIoFactory: io must be a function (socket.io-client `io`)');
  const acks = options.acks ?? true;
  if (typeof acks !== 'boolean') throw new RangeError(`socketIoFactory: options.acks must be a boolean, got ${acks}`);
  const ackTimeoutMs = options.ackTimeoutMs ?? 30_000;
  if (typeof ackTimeoutMs !== 'number' || !(ackTimeoutMs > 0) || !Number.isFinite(ackTimeoutMs)) {
    throw new RangeError(
      `socketIoFactory: options.ackTimeoutMs must be a finite number > 0, got ${String(ackTimeoutMs)}`,
    );
  }
  const connectOptions: SocketIoConnectOptions = { reconnection: false, forceNew: true, ...ioOptions };
  const factory = (url: string) => new SocketIoConnection(io(url, { ...connectOptions }), acks, ackTimeoutMs);
  return Object.assign(factory, { reservedEvents: RESERVED_EVENTS });
}

/** The event names socket.io-client keeps for itself: its `emit` throws on them. */
const RESERVED_EVENTS: readonly string[] = Object.freeze([
  'connect',
  'connect_error',
  'disconnect',
  'disconnecting',
  'newListener',
  'removeListener',
]);

/**
 * An `isAck` for {@link RateLimitedClient} with {@link socketIoFactory}: recognises the
 * messages made of acknowledgements (a handler's return value) and confirms exactly the
 * message answered. An event whose handler answers no ack (returns nothing, or an
 * `{ event, data }` reply) is confirmed by time, unless you give `confirmMs`; an event whose
 * handler answers only sometimes waits up to 10 s for an ack that does not come.
 */
export function isSocketIoAck(message: unknown): AckMatch | false {
  if (!isRecord(message) || message.ack !== true || typeof message.event !== 'string') return false;
  const id = toMessageId(message.id);
  return id === undefined ? { event: message.event } : { id };
}

/**
 * Whether a socket's Engine.IO connection is still in its handshake, over long polling
 * (`io.engine.readyState` and `io.engine.transport.name`, as socket.io's documentation reads
 * them; false when they cannot be read). Once open, a disconnect reaches the server at once,
 * even while the namespace join waits on the server.
 */
function openingOnLongPolling(socket: SocketIoSocketLike): boolean {
  const engine = (socket as { io?: { engine?: { readyState?: unknown; transport?: { name?: unknown } } } }).io?.engine;
  return engine?.readyState === 'opening' && engine.transport?.name === 'polling';
}
