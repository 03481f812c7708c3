// Over 400 lines: the client's public types with their documentation (every option's
// meaning and default is read from here by users' editors).
/**
 * Public types of the rate-limit-aware WebSocket client.
 *
 * This folder is bundled for browsers: it must not import `ws`, Node built-ins or
 * anything outside `lib/client` but the dependency-free `lib/protocol` it shares with the
 * server.
 */

import type {
  MessageId as ProtocolMessageId,
  RateLimitCode as ServerRateLimitCode,
} from '../protocol/rate-limit-protocol.js';

/**
 * A handler type checked bivariantly, so that the `ws` package's, the browser's and
 * Node's own socket classes (whose handlers take their own event classes) all fit.
 */
type Handler<E> = { bivarianceHack(event: E): void }['bivarianceHack'];

/** The part of a message event the client reads. */
export interface SocketMessageEvent {
  /** Frame payload: a string for text frames, bytes for binary ones. */
  readonly data: unknown;
  /**
   * The message already decoded, for sockets that are not WebSockets (socket.io's events
   * carry values, not text): when set, the client takes it as the message and ignores `data`.
   */
  readonly decoded?: unknown;
  /**
   * For a socket that answers each message by an acknowledgement (socket.io): which message
   * this one answers, when it is such an answer, as its place among the messages `send` was
   * called with on this socket (1 for the first). A refusal given this way names its message
   * exactly, whatever order the answers come in.
   */
  readonly answers?: number;
}

/** The part of a close event the client reads. */
export interface SocketCloseEvent {
  /** Close code (1000 normal, 1006 abnormal, 1008 policy violation, ...). */
  readonly code: number;
  /** Close reason sent by the peer, if any. */
  readonly reason?: string;
  /**
   * The server announced the close as a rate-limit disconnect (socket.io's
   * `rate_limit_disconnect` event), whatever its code: the client waits its `policyDelayMs`.
   */
  readonly policy?: boolean;
  /**
   * A refused connection's retry time in ms, as the server gave it (socket.io's
   * `connect_error` data, with `connectionRefusal: 'close'`): the client waits at least
   * this long before connecting again (a block of an hour is not retried every 30 s).
   */
  readonly retryAfterMs?: number;
}

/**
 * The minimal WebSocket shape the client needs; the browser's `WebSocket`, Node's global
 * `WebSocket` and the `ws` package's `WebSocket` all satisfy it.
 */
export interface WebSocketLike {
  /** 0 connecting, 1 open, 2 closing, 3 closed. */
  readonly readyState: number;
  /** Sends one text frame. */
  send(data: string): void;
  /** Starts the closing handshake. */
  close(code?: number, reason?: string): void;
  /**
   * Ends the connection at once, without the closing handshake (optional: `ws` in Node has
   * it, a browser's WebSocket does not). The client calls it on a socket whose closing
   * handshake has not ended 2 s after `close()`, and when the close frame cannot be sent.
   */
  terminate?(): void;
  /** Called once the handshake has completed. */
  onopen: Handler<unknown> | null;
  /** Called for every frame received. */
  onmessage: Handler<SocketMessageEvent> | null;
  /** Called once the socket is closed, including when the handshake failed. */
  onclose: Handler<SocketCloseEvent> | null;
  /** Called on a transport error; a close follows. */
  onerror: Handler<unknown> | null;
}

/** A WebSocket class, such as `globalThis.WebSocket` or `import { WebSocket } from 'ws'`. */
export type WebSocketConstructorLike = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** A function that opens a socket, for set-ups a plain constructor cannot express. */
export type WebSocketFactory = ((url: string, protocols?: string | string[]) => WebSocketLike) & {
  /**
   * Event names the sockets it makes cannot send (socket.io's own: `connect`, `disconnect`,
   * ...): `RateLimitedClient.send` refuses them with a `TypeError` before queueing anything.
   */
  readonly reservedEvents?: readonly string[];
};

/** Lifecycle state of a {@link RateLimitedClient}. */
export type ClientState = 'connecting' | 'open' | 'rate_limited' | 'closed' | 'reconnecting';

/** Codes the server puts in a `rate_limit` frame; other strings are accepted too. */
export type RateLimitCode = ServerRateLimitCode | (string & Record<never, never>);

/**
 * A message id: a safe integer or a string of at most 64 printable ASCII characters (`"`
 * and `\` excepted), the forms a server
 * using `WsRateLimitAdapter` echoes in the `rate_limit` and `error` frames that answer
 * a message.
 */
export type MessageId = ProtocolMessageId;

/** The content of a `rate_limit` frame, normalised from either frame form. */
export interface RateLimitInfo {
  /** Which limit was hit. */
  code: RateLimitCode;
  /** The limited message type (usually the message's event), when the server names it. */
  messageType?: string;
  /** Milliseconds until the same message would be allowed (a missing or invalid value reads as 1000). */
  retryAfter: number;
  /** Violations counted in the server's current window, this one included. */
  warningCount?: number;
  /** Capacity of the limit that was hit. */
  limit?: number;
  /** Budget left in that limit when the message was rejected. */
  remaining?: number;
  /** The id of the refused message, when the server echoed one (a safe integer or a string). */
  id?: MessageId;
}

/** Payload of the `rateLimit` event: the frame, and the message it refused when known. */
export interface RateLimitNotice extends RateLimitInfo {
  /**
   * The message the frame refused, when the client knows which: the one whose id the
   * frame echoes, or, for a frame without an id, the one the confirmation rules point to
   * (see {@link RateLimitedClient}). It is sent again after the retry window; a priority
   * message is dropped instead.
   */
  message?: OutboundMessage;
  /**
   * Every message this frame's arrival showed to be refused, oldest first: `message`
   * alone, or several when earlier frames without an id could not be attributed until
   * now (see {@link RateLimitedClient}). They are sent again like `message`.
   */
  messages?: OutboundMessage[];
}

/** A message as the client sends it: NestJS's `{ event, data }`. */
export interface OutboundMessage {
  /** The NestJS message event (the `@SubscribeMessage` name). */
  event: string;
  /** The message payload. */
  data: unknown;
  /** The id the client gave the message (see the `messageIds` option). */
  id?: MessageId;
}

/** Why a message was dropped. */
export type DropReason =
  /** The queue was full (`drop-oldest` or `drop-newest`). */
  | 'queue_full'
  /**
   * The server refused the message for good: a priority message refused by a `rate_limit`
   * frame (priority messages are never re-sent), or the message a close 1009 (message too
   * big) refused: the largest message sent on the connection and not answered by the
   * server, even one presumed accepted after `confirmMs` (when the round trip is longer).
   * It is not in the `undelivered` report, and never sent again, whatever the `undelivered`
   * policy.
   */
  | 'rejected'
  /** The client was closed, or gave up reconnecting, with the message still queued. */
  | 'closed';

/** Payload of the `drop` event. */
export interface DropEvent {
  /** Why the message was dropped. */
  reason: DropReason;
  /** The message that was dropped. */
  message: OutboundMessage;
}

/** Payload of the `reconnect` event, emitted when a reconnect is scheduled. */
export interface ReconnectEvent {
  /** 0 for the first reconnect after a stable connection, then 1, 2, ... */
  attempt: number;
  /** Milliseconds until the next connection attempt. */
  delayMs: number;
  /** Close code of the connection that ended (1006 when the handshake was refused). */
  code: number;
  /** True when the policy delay applied (close 1008, or a handshake that never opened). */
  policy: boolean;
}

/** What the client does with messages a closed connection left unanswered. */
export type UndeliveredPolicy =
  /**
   * Put them back at the front of the queue, in send order, to be sent after the
   * reconnect: nothing is lost, but a message the server processed without its reply
   * reaching the client is delivered twice (at least once).
   */
  | 'requeue'
  /** Give them up (at most once). */
  | 'drop';

/** Why messages are reported as undelivered. */
export type UndeliveredReason =
  /** The connection ended before they were answered. */
  | 'closed'
  /**
   * They were all answered, some refused by `rate_limit` frames without an id, and the
   * client cannot tell which: none is sent again, since that could deliver one twice.
   */
  | 'ambiguous';

/** Payload of the `undelivered` event. */
export interface UndeliveredEvent {
  /** Why these messages are reported. */
  reason: UndeliveredReason;
  /** The close code of the connection that ended (reason `closed`). */
  code?: number;
  /** The messages whose delivery the client cannot confirm, in send order. */
  messages: OutboundMessage[];
  /**
   * Those of `messages` put back in the queue (policy `requeue`); the others are given
   * up. Never a priority message, nor one that may have been accepted while another of
   * its event was refused by a frame the client could not attribute.
   */
  requeued: OutboundMessage[];
  /** How many of `messages` the server refused with frames the client could not attribute. */
  refused: number;
  /** How many of `messages` the server acknowledged with acks the client could not attribute. */
  acknowledged: number;
}

/**
 * What an `isAck` function may return for an acknowledgement that says which message it
 * answers: its id (exact), or its event (the oldest unconfirmed message of that event).
 */
export interface AckMatch {
  /** The id of the acknowledged message, as the client sent it. */
  id?: MessageId;
  /** The event of the acknowledged message. */
  event?: string;
}

/** Events of a {@link RateLimitedClient} and their payloads. */
export interface RateLimitedClientEvents {
  /** Every frame that is not a `rate_limit` frame, parsed from JSON. */
  message: unknown;
  /** Every `rate_limit` frame, normalised, with the message it refused when known. */
  rateLimit: RateLimitNotice;
  /** The new state, on every change. */
  state: ClientState;
  /** A message the client had accepted and then lost. */
  drop: DropEvent;
  /**
   * Messages sent that got neither a reply nor an attributable `rate_limit` frame: at
   * the end of a connection, or once the client knows they cannot be attributed.
   */
  undelivered: UndeliveredEvent;
  /** A reconnect was scheduled. */
  reconnect: ReconnectEvent;
  /** A transport error, an unreadable frame, a failed send, or a listener that threw. */
  error: unknown;
}

/** What to do with a message sent while the queue already holds `maxQueue` messages. */
export type OverflowPolicy =
  /** Evict the oldest queued message (reported as a drop); `send` returns true. */
  | 'drop-oldest'
  /** Discard the new message (reported as a drop); `send` returns false. */
  | 'drop-newest'
  /** Refuse the new message without reporting a drop; `send` returns false and the caller keeps it. */
  | 'reject';

/** A server limit declared up front, so the client paces without having to hit it first. */
export interface LimitSpec {
  /** Burst size (token bucket capacity). */
  capacity: number;
  /** Tokens added per second. */
  refillPerSecond: number;
}

/** Server limits known in advance; limits learned from frames are added to these. */
export interface DeclaredLimits {
  /** The limit on all messages of the connection. */
  global?: LimitSpec;
  /**
   * Limits per message event, or per server type (`@Throttle({ type })`): a limit keyed by
   * a type holds the events `rate_limit` frames have shown to be of that type.
   */
  types?: Record<string, LimitSpec>;
}

/** Options of a {@link RateLimitedClient}. */
export interface RateLimitedClientOptions {
  /**
   * WebSocket class used to open connections.
   * @default globalThis.WebSocket
   */
  WebSocket?: WebSocketConstructorLike;
  /**
   * Opens a connection; takes precedence over `WebSocket` when set.
   * @default undefined
   */
  createSocket?: WebSocketFactory;
  /**
   * Sub-protocols passed to the socket.
   * @default undefined
   */
  protocols?: string | string[];
  /**
   * Connect from the constructor; otherwise call `connect()`.
   * @default true
   */
  autoConnect?: boolean;
  /**
   * Largest number of messages waiting in the queue.
   * @default 1000
   */
  maxQueue?: number;
  /**
   * What `send` does when the queue is full.
   * @default 'drop-oldest'
   */
  overflow?: OverflowPolicy;
  /**
   * Server limits known in advance (token buckets); the client paces to them from the
   * start. The model counts from when the client sends, the server from when the first
   * message arrives, so a burst that spends a whole declared capacity can still be refused
   * once if that first message was slower than a later one; the frame then re-anchors the
   * model (see the pacing rule).
   * @default undefined (limits are learned from rate_limit frames)
   */
  limits?: DeclaredLimits;
  /**
   * Slowest refill interval assumed for a limit learned from a frame, in ms per message;
   * set it to at least 1000 / (the server's slowest refill rate per second).
   * @default 125
   */
  minPaceMs?: number;
  /**
   * Give each message an `id`, a number unique for this client, sent as
   * `{ event, data, id }`. A server using `WsRateLimitAdapter` echoes it in the
   * `rate_limit` frame (and the `error` frame) that answers the message, so the client
   * knows exactly which message was refused, even when the frame comes late; frames
   * without an id fall back to the confirmation rules. The client remembers the ids of
   * every unconfirmed message of the current connection and of the last 1024 confirmed
   * ones. Turn it off for a server that refuses fields it does not know.
   * @default true
   */
  messageIds?: boolean;
  /**
   * Messages of an event with no known limit that may await confirmation at once; 1 means a
   * burst against an unknown limit provokes at most one rate_limit frame.
   * @default 1
   */
  maxUnconfirmed?: number;
  /**
   * Recognises the server's acknowledgement of a message. Returning `true` confirms the
   * oldest unconfirmed message; returning an {@link AckMatch} confirms the message with
   * that id, or the oldest unconfirmed one of that event (use it when the server's acks
   * name what they answer, and when handlers of different events answer at different
   * speeds). Set it only if the server answers every message of an event, in order, with
   * such a frame or a rate_limit frame (a rate_limit frame may come before the acks of
   * earlier messages). Events it never answers may be sent too: unless `confirmMs` is
   * given, an event waits for an ack (up to 10 s) only once an ack has answered it on this
   * client (a result naming the event, or the id of one of its messages, or `true`
   * confirming one of its messages); until then its messages are confirmed by time, as
   * without `isAck` (see `confirmMs`).
   * @default undefined (messages are confirmed by time, see `confirmMs`)
   */
  isAck?: (message: unknown) => boolean | AckMatch | null | undefined;
  /**
   * What to do with the messages a closed connection left unanswered (sent, but with
   * neither a reply recognised by `isAck` nor a `rate_limit` frame naming them); they are
   * reported by the `undelivered` event either way. `requeue` sends them again after the
   * reconnect (at least once: a message whose reply was lost is delivered twice); `drop`
   * gives them up (at most once). A message confirmed by time (without `isAck`, or of an
   * event no ack has answered yet) counts as unanswered if it was sent in the last
   * `confirmMs` before the close.
   * @default 'drop'
   */
  undelivered?: UndeliveredPolicy;
  /**
   * Milliseconds after which a sent message with no answer (no ack recognised by `isAck`,
   * no rate_limit frame) is presumed accepted. Given, it applies to every event, and grows
   * by itself when frames arrive later than it unless `isAck` is set. Not given: 250 ms,
   * growing by itself the same way (up to 5 s); with `isAck`, the events an ack has
   * answered on this client (see `isAck`) get 10 s instead, a safety net for a lost ack,
   * while events the server never answers (a typing indicator) keep the 250 ms, so they
   * are not held 10 s per message. Finite (a message never presumed accepted would hold its
   * event for ever).
   * @default 250, growing; 10000 (fixed) for the events an ack has answered when `isAck` is set
   */
  confirmMs?: number;
  /**
   * Reconnect after a connection the client did not close itself has ended.
   * @default true
   */
  reconnect?: boolean;
  /**
   * Base of the exponential back-off, in ms.
   * @default 1000
   */
  backoffBaseMs?: number;
  /**
   * Cap of the exponential back-off, in ms.
   * @default 30000
   */
  backoffCapMs?: number;
  /**
   * Consecutive reconnect attempts before giving up (state `closed`).
   * @default Infinity
   */
  maxReconnectAttempts?: number;
  /**
   * Least delay before reconnecting after a close 1008 (rate-limit violations), a close
   * with `policyCloseCode`, a socket.io `rate_limit_disconnect`, or a handshake that never
   * opened (for example HTTP 429); the back-off applies if larger, and so does a refusal's
   * `Retry-After` where the socket shows it (`ws` in Node; socket.io's `connect_error` data).
   * @default 30000
   */
  policyDelayMs?: number;
  /**
   * The close code the server ends repeat offenders with, when its `violations.closeCode`
   * is not 1008 (a close 1008 is always one): a close with it waits `policyDelayMs` too.
   * Over socket.io the server announces such a close, so this is only needed on `ws`.
   * A code a server sends: 1000-1003, 1007-1014 or 3000-4999.
   * @default 1008
   */
  policyCloseCode?: number;
  /**
   * A connection whose handshake has not completed this many ms after it began is given up
   * (its socket ended) and counts as a handshake that never opened: the client reconnects
   * after at least `policyDelayMs`. Without it, a server that accepts the TCP connection
   * and never answers the upgrade would leave the client `connecting` for ever. `Infinity`
   * waits as long as the socket does.
   * @default 20000 (as socket.io-client's `timeout`)
   */
  openTimeoutMs?: number;
  /**
   * A connection that stayed open this long resets the back-off attempt counter.
   * @default 10000
   */
  stableMs?: number;
  /**
   * Random source in [0, 1) for the back-off jitter.
   * @default Math.random
   */
  random?: () => number;
}
