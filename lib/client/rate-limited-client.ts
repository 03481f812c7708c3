// Over 400 lines: one class whose state (queue, retry windows, pacing models, connection)
// is read by every path; option parsing (options.ts) and answer matching (ledger.ts) live
// apart, and splitting the rest would scatter that state across files.
import { fullJitterDelay } from './backoff.js';
import { Budget, MAX_PACE_MS } from './budget.js';
import { Ledger, utf8Bytes, type Settled, type Unanswered } from './ledger.js';
import { declaredBudgets, resolveOptions, type ResolvedOptions } from './options.js';
import { Outbox, type OutboxEntry } from './outbox.js';
import { errorFrameId, parseRateLimitFrame } from './rate-limit-frame.js';
import { watchRefusal } from './refused-upgrade.js';
import { TypedEmitter, type Listener } from './typed-emitter.js';
import type {
  AckMatch,
  ClientState,
  DropReason,
  OutboundMessage,
  RateLimitInfo,
  RateLimitNotice,
  RateLimitedClientEvents,
  RateLimitedClientOptions,
  SocketCloseEvent,
  SocketMessageEvent,
  UndeliveredReason,
  WebSocketLike,
} from './types.js';

/** `WebSocket.OPEN`, read from no class so that any implementation fits. */
const OPEN = 1;
/** `WebSocket.CLOSING`. */
const CLOSING = 2;
/** `WebSocket.CLOSED`. */
const CLOSED = 3;
/** Close code of a connection lost without a close frame (also: handshake failed). */
const ABNORMAL_CLOSURE = 1006;
/** Close code the server uses for rate-limit violations. */
const POLICY_VIOLATION = 1008;
/** Close code of a message too big for the server (`ws`' `maxPayload`, the adapter's payload limit). */
const MESSAGE_TOO_BIG = 1009;
/** Longest the time-based confirmation delay grows to by itself, in ms. */
const MAX_ADAPTIVE_CONFIRM_MS = 5000;
/**
 * Longest delay a timer takes: setTimeout fires after 1 ms for anything longer, so a
 * longer wait (a retryAfter of days) is slept in steps of this.
 */
const MAX_TIMER_MS = 2 ** 31 - 1;
/**
 * Most pacing models learned from frames the client keeps (declared ones are not counted,
 * nor ever evicted): past it, the least recently used is forgotten, one back to full
 * capacity and outside its retry window first.
 */
export const MAX_LEARNED_MODELS = 256;
/** Most event -> server type pairs learned from frames the client keeps (least recently used go first). */
export const MAX_EVENT_TYPES = 1024;
/**
 * Most events the client remembers an acknowledgement of (see `ackedEvents`; the least
 * recently acknowledged go first, back to time-based confirmation).
 */
export const MAX_ACKED_EVENTS = 1024;

type Timer = ReturnType<typeof setTimeout>;

/** Monotonic milliseconds: the wall clock can jump, which would shorten or stretch a wait. */
function now(): number {
  return typeof performance === 'undefined' ? Date.now() : performance.now();
}

/** A message as events report it. */
function outbound(entry: OutboxEntry): OutboundMessage {
  return entry.id === undefined
    ? { event: entry.event, data: entry.data }
    : { event: entry.event, data: entry.data, id: entry.id };
}

/** An `isAck` result as a match: undefined when the frame is no acknowledgement. */
function ackMatch(result: boolean | AckMatch | null | undefined): AckMatch | undefined {
  if (result === true) return {};
  if (typeof result !== 'object' || result === null) return undefined;
  const { id } = result;
  return {
    ...(typeof id === 'string' || typeof id === 'number' ? { id } : {}),
    ...(typeof result.event === 'string' ? { event: result.event } : {}),
  };
}

/** Reads a frame's payload as text: strings as they are, bytes as UTF-8. */
function frameText(data: unknown): string | undefined {
  if (typeof data === 'string') return data;
  // Tag checks rather than instanceof: the bytes may come from another realm.
  if (ArrayBuffer.isView(data)) {
    return new TextDecoder().decode(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  if (Object.prototype.toString.call(data) === '[object ArrayBuffer]') {
    return new TextDecoder().decode(new Uint8Array(data as ArrayBuffer));
  }
  return undefined;
}

/**
 * How long a socket closed by `close()` may take over its closing handshake before it is
 * terminated (where the implementation can, as `ws` in Node): `ws` itself would wait 30 s
 * for a server that never answers the close frame, holding the process open meanwhile.
 */
const CLOSE_GRACE_MS = 2000;

/** Shortest wait after a message's second refusal; it doubles with each further one (see `repeatFloorMs`). */
const REPEAT_FLOOR_MS = 10;

/**
 * The least a message refused `refusals` times in all waits before it is sent again: none
 * after its first refusal (the frame's `retryAfter` decides), then 10 ms doubling with each
 * further one, up to `MAX_PACE_MS`. An honest server's `retryAfter` is longer; a server that
 * keeps answering one near 0 would otherwise be sent the message again at once, in a loop.
 */
function repeatFloorMs(refusals: number): number {
  return refusals < 2 ? 0 : Math.min(MAX_PACE_MS, REPEAT_FLOOR_MS * 2 ** (refusals - 2));
}

/**
 * The message a close 1009 (message too big) refused, taken out of a connection's
 * unanswered messages when it is one of them. The server closes at the first message over
 * its size limit: the messages before it fit, the ones after it were never read. Which one
 * it was, the client cannot tell (the limit is the server's); the largest message sent on
 * the connection and not answered by the server is at least as big, so it is over the limit
 * too, and a message that fits is never taken for it. That may be a message already
 * presumed accepted (`confirmMs` ended before the close came, a round trip longer than
 * `confirmMs`): when it is at least as large as every unanswered one, it is the one
 * returned and no unanswered message is taken. Otherwise the first of the largest
 * unanswered, in send order, is taken.
 */
function takeTooBig(unanswered: Unanswered): OutboxEntry | undefined {
  let largest: OutboxEntry | undefined;
  let largestBytes = unanswered.presumed?.bytes ?? -1;
  for (const entry of unanswered.messages) {
    // At most 3 UTF-8 bytes per UTF-16 unit: skip the count when it cannot be larger.
    if (3 * entry.frame.length <= largestBytes) continue;
    const bytes = utf8Bytes(entry.frame);
    if (bytes > largestBytes) {
      largest = entry;
      largestBytes = bytes;
    }
  }
  if (!largest) return unanswered.presumed?.entry;
  unanswered.messages = unanswered.messages.filter((entry) => entry !== largest);
  unanswered.doubtful.delete(largest);
  // Unattributed answers are counted among the messages left.
  unanswered.refused = Math.min(unanswered.refused, unanswered.messages.length);
  unanswered.acknowledged = Math.min(unanswered.acknowledged, unanswered.messages.length - unanswered.refused);
  return largest;
}

/** Terminates a closing socket still not closed after `CLOSE_GRACE_MS` (never keeps the process alive). */
function endAfterGrace(socket: WebSocketLike): void {
  if (typeof socket.terminate !== 'function') return;
  const timer = setTimeout(() => {
    if (socket.readyState !== CLOSED) socket.terminate?.();
  }, CLOSE_GRACE_MS);
  (timer as { unref?: () => void }).unref?.();
}

/**
 * A WebSocket client that understands the server's `rate_limit` frames: it queues while
 * rate-limited, releases the queue paced so as not to trip the limit again, and
 * reconnects politely.
 *
 * **Sending.** `send(event, data)` writes NestJS's `{ event, data }` at once when nothing
 * holds it back, else queues it (bounded by `maxQueue`, see `overflow`). The queue is FIFO
 * across all events; `sendPriority` skips it.
 *
 * **Confirmation.** Each sent message stays *unconfirmed* until its fate is known: an
 * inbound frame recognised by `isAck` confirms a message (the one whose id or event it
 * names, else the oldest unconfirmed), an `error` frame echoing a message's id confirms
 * that message (the server answered it), and otherwise a message is presumed accepted
 * `confirmMs` after it was sent. With `isAck` and no `confirmMs` given, that is 10 s (a
 * safety net for a lost ack) only for the events an ack has answered on this client; the
 * others (events the server never answers) are confirmed by time as without `isAck`. For
 * an event whose limit is unknown, at most `maxUnconfirmed` messages are unconfirmed at
 * once, so a burst against an unknown limit is rejected once, not once per message.
 *
 * **Which message was refused.** Each message carries an `id` (option `messageIds`), which
 * a server using `WsRateLimitAdapter` echoes in its `rate_limit` frame: the frame then
 * names the refused message exactly, even one already presumed accepted, and a frame whose
 * id the client does not know refuses none of its messages. A frame without an id refuses
 * an unconfirmed message of the frame's `messageType` (of any event when it names none),
 * and it says which only when one is unconfirmed, or when such frames account for every
 * unconfirmed message of the event: a server may write the frame before the replies of
 * earlier messages, so order proves nothing. Otherwise the client does not guess (a wrong
 * guess would send an accepted message twice): once acks and frames account for the
 * group, or it reaches `confirmMs`, it is reported by the `undelivered` event (reason
 * `ambiguous`, with how many were refused) and none of it is sent again. A refused message
 * goes back to its place at the front of the queue and is sent again with the same id (a
 * refused priority message is reported as a drop instead); the `rateLimit` event names it.
 *
 * **A connection that ends.** Messages sent on it that got neither a reply nor a frame
 * naming them (the server may stop reading a connection it is closing, or lose the replies)
 * are reported by the `undelivered` event (reason `closed`), then re-queued in send order
 * for the reconnect or given up, per the `undelivered` option. Priority messages, and
 * messages that may have been accepted while a frame without an id refused another of
 * their event, are never re-queued. After a close 1009 (message too big), the largest
 * message sent on the connection and not answered by the server is dropped (reason
 * `rejected`), never sent again, and not reported there, even one already presumed
 * accepted after `confirmMs` (the connection keeps the largest such message, one entry):
 * the unanswered messages then all follow the policy.
 *
 * **Pacing rule.** No message is sent inside a retry window: after a frame, nothing of its
 * type (code `TYPE_LIMIT`, `EXPENSIVE_LIMIT`) or nothing at all (`GLOBAL_LIMIT`,
 * `STORE_UNAVAILABLE`, other codes) is sent until `retryAfter` ms after the frame arrived.
 * The type is the frame's `messageType`, the server's bucket: the event, or a `@Throttle`
 * type several events share; a frame refusing messages tells the client their events' type
 * (each of them, when a frame without an id refuses messages of several events), and the
 * type's window and model then hold every event of it; every refused message waits out the
 * window. A wrong guess holds an event until a frame about it names its own type. A type none
 * of the client's messages has is not paced (a server cannot grow the client by naming ever
 * new ones), and at most `MAX_LEARNED_MODELS` models and `MAX_EVENT_TYPES` event types are
 * kept. The frame also (re)builds a model of that server bucket (per type, or global): capacity
 * = the frame's `limit` (1 if absent), first token at frame + `retryAfter`, then one token
 * per `max(retryAfter, minPaceMs)` ms. A message is sent only when every model that applies
 * holds a token, so the queue drains one message per interval and, once idle, the client
 * may burst up to `limit` again. Against a token bucket, provided `minPaceMs` >= 1000 /
 * (the server's refill rate per second), the model never holds more tokens than the server,
 * so the client causes no further rejection. A limit the model misjudges (a sliding window,
 * a slower refill) may reject a paced message once more: the interval then doubles, up to
 * 60 s. Limits declared in `limits` are modelled the same way from the start; the model
 * counts time from the client's sends and the server from its decisions, so with varying
 * network delays a message paced at exactly the server's refill can arrive a few ms early
 * (declared limits a little under the server's avoid it). A message
 * refused again and again waits at least 10 ms after its second refusal, doubling with each
 * further one up to 60 s (a server answering a `retryAfter` near 0 is not sent it in a loop).
 *
 * **Closing.** `close()` sends a close frame (a plain one when the code or reason cannot be
 * sent) and terminates a socket that can be (`ws`) if its closing handshake has not ended
 * 2 s later.
 *
 * **Reconnecting.** After a connection ends other than by `close()`, the client reconnects
 * after a full-jitter exponential back-off, random in [0, min(backoffCapMs,
 * backoffBaseMs * 2^attempt)). After a close 1008 (rate-limit violations) or a handshake
 * that never opened (HTTP 429, but also a server that is down), it waits at least
 * `policyDelayMs`, and at least the refusal's `Retry-After` where the socket shows it (`ws`
 * in Node; a browser's WebSocket does not). The attempt counter resets once a connection
 * stays open `stableMs`.
 * Every timer is clamped to 2^31-1 ms (about 24.8 days), the longest `setTimeout` honours
 * (longer ones fire at once): a longer retry window is waited out in steps, a longer
 * reconnect delay is cut to it.
 *
 * **socket.io.** With `createSocket: socketIoFactory(io)` (socket.io-client's `io`), the
 * client speaks to a socket.io server using `WsRateLimitIoAdapter`: messages become
 * `emit(event, data, ack)`, the server's events and acknowledgements become messages, and a
 * rate-limit disconnect reads as close 1008 (see `socketIoFactory` in `socket-io.ts`).
 *
 * @example
 * ```ts
 * import { RateLimitedClient } from 'nestjs-ws-rate-limit/client';
 * const client = new RateLimitedClient('ws://localhost:8080');
 * client.on('message', (msg) => console.log(msg));
 * client.on('rateLimit', (info) => console.warn(`slowing down for ${info.retryAfter} ms`));
 * client.send('chat', { text: 'hello' });
 * ```
 */
export class RateLimitedClient {
  /** The server URL. */
  readonly url: string;
  private readonly options: ResolvedOptions;
  private readonly emitter: TypedEmitter<RateLimitedClientEvents>;
  private readonly outbox: Outbox;
  /** Messages sent on the current connection whose fate is unknown. */
  private readonly ledger = new Ledger(
    (event) => this.confirmDelay(event),
    (event) => this.options.ackedConfirmMs !== undefined && !this.ackedEvents.has(event),
  );
  private socket: WebSocketLike | undefined;
  private currentState: ClientState = 'closed';
  /** The time-based confirmation delay (see `confirmDelay`); it grows when frames come later than it. */
  private confirmMs: number;
  /**
   * With `isAck` and no `confirmMs` given: the events an acknowledgement has answered on
   * this client (whatever the connection), in least recently acknowledged order, at most
   * `MAX_ACKED_EVENTS`. Their messages get `ackedConfirmMs`; other events' are confirmed by
   * time, as without `isAck`: an event the server never answers (a typing indicator) is not
   * held 10 s per message.
   */
  private readonly ackedEvents = new Set<string>();
  private droppedCount = 0;
  private nextSeq = 0;
  /** Messages written to sockets so far. */
  private sends = 0;
  /** `sends` when the current socket was made: a socket's n-th message is `sendNo` this + n. */
  private sendsBeforeSocket = 0;
  private globalBudget: Budget | undefined;
  /**
   * Pacing models of server buckets (a `@Throttle` type, which is the event unless several
   * share one), declared and learned; learned ones in least recently used order, at most
   * `MAX_LEARNED_MODELS`.
   */
  private readonly typeBudgets: Map<string, Budget>;
  /** Keys of the models declared in `limits.types`: never evicted. */
  private readonly declaredTypes: ReadonlySet<string>;
  /**
   * The server type of each event whose frames named one other than the event itself, in
   * least recently used order, at most `MAX_EVENT_TYPES`; an event not in it is its own type.
   */
  private readonly eventTypes = new Map<string, string>();
  private globalBlockedUntil = -Infinity;
  /** Retry windows per server type (see `eventTypes`). */
  private readonly typeBlockedUntil = new Map<string, number>();
  private pumpTimer: Timer | undefined;
  private reconnectTimer: Timer | undefined;
  /** Ends a handshake that has not completed within `openTimeoutMs`. */
  private openTimer: Timer | undefined;
  private attempt = 0;
  private openedAt: number | undefined;
  /** A socket whose upgrade the server refused, and the `Retry-After` it gave (see `watchRefusal`). */
  private refusal: { readonly socket: WebSocketLike; readonly retryAfterMs: number | undefined } | undefined;
  private pumping = false;
  private pumpRequested = false;

  /** Creates the client and, unless `autoConnect` is false, starts connecting. */
  constructor(url: string, options: RateLimitedClientOptions = {}) {
    this.url = url;
    this.options = resolveOptions(options);
    this.confirmMs = this.options.confirmMs;
    this.outbox = new Outbox(this.options.maxQueue, this.options.overflow);
    const declared = declaredBudgets(options, now());
    this.globalBudget = declared.global;
    this.typeBudgets = declared.types;
    this.declaredTypes = new Set(declared.types.keys());
    this.emitter = new TypedEmitter((error, event) => {
      // A bug in the caller's own listener must not vanish: report it, or rethrow it.
      if (event !== 'error' && this.emitter.listenerCount('error') > 0) {
        this.emitter.emit('error', error);
      } else {
        queueMicrotask(() => {
          throw error;
        });
      }
    });
    if (this.options.autoConnect) this.connect();
  }

  /** The current state. */
  get state(): ClientState {
    return this.currentState;
  }

  /** Number of messages waiting in the queue. */
  get queued(): number {
    return this.outbox.length;
  }

  /** Number of messages dropped since the client was created. */
  get dropped(): number {
    return this.droppedCount;
  }

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof RateLimitedClientEvents>(event: K, listener: Listener<RateLimitedClientEvents[K]>): () => void {
    return this.emitter.on(event, listener);
  }

  /** Adds a listener called at most once; returns a function that removes it. */
  once<K extends keyof RateLimitedClientEvents>(event: K, listener: Listener<RateLimitedClientEvents[K]>): () => void {
    return this.emitter.once(event, listener);
  }

  /** Removes a listener added with `on`. */
  off<K extends keyof RateLimitedClientEvents>(event: K, listener: Listener<RateLimitedClientEvents[K]>): void {
    this.emitter.off(event, listener);
  }

  /**
   * Connects, if the client is closed (does nothing otherwise); throws if the socket
   * cannot even be created (for example an invalid URL).
   */
  connect(): void {
    if (this.currentState !== 'closed') return;
    this.attempt = 0;
    this.openSocket();
  }

  /**
   * Sends a message, or queues it while it may not be sent yet; returns true if it was
   * sent or queued, false if the client is closed or the overflow policy refused it.
   * Throws if `data` cannot be serialised to JSON.
   */
  send(event: string, data?: unknown): boolean {
    if (this.currentState === 'closed') return false;
    const entry = this.createEntry(event, data, false);
    if (this.outbox.length === 0 && this.isOpen()) {
      const t = now();
      this.expireUnconfirmed(t);
      if (this.isOpen() && this.waitMs(entry, t) === 0 && this.transmit(entry, t)) return true;
    }
    // A listener of what the lines above reported may have closed the client.
    if (this.isClosed()) return false;
    const result = this.outbox.push(entry);
    if (result.dropped) this.drop(result.dropped, 'queue_full');
    if (!result.accepted) return false;
    this.pump();
    return true;
  }

  /**
   * Sends a message at once, skipping the queue and any retry window; returns false (and
   * sends nothing) unless the connection is open. The server may reject it.
   */
  sendPriority(event: string, data?: unknown): boolean {
    if (!this.isOpen()) return false;
    const entry = this.createEntry(event, data, true);
    const t = now();
    this.expireUnconfirmed(t);
    return this.isOpen() && this.transmit(entry, t);
  }

  /**
   * Closes the connection for good: stops every timer and reconnect, drops queued messages
   * (reason `closed`); `connect()` starts again.
   */
  close(code = 1000, reason?: string): void {
    const socket = this.socket;
    const unanswered = this.ledger.drain();
    this.stop();
    this.setState('closed');
    this.reportUnanswered(unanswered, code, false);
    this.dropQueued();
    if (socket && socket.readyState < CLOSING) {
      try {
        if (reason === undefined) socket.close(code);
        else socket.close(code, reason);
      } catch (error) {
        // A code or reason the close frame cannot carry (a reason over 123 bytes): the
        // connection still ends, with a plain close.
        try {
          socket.close();
        } catch {
          socket.terminate?.();
        }
        this.emitter.emit('error', error);
      }
      endAfterGrace(socket);
    }
  }

  private createEntry(event: string, data: unknown, priority: boolean): OutboxEntry {
    if (typeof event !== 'string' || event === '') {
      throw new TypeError('RateLimitedClient: the event must be a non-empty string');
    }
    if (this.options.createSocket.reservedEvents?.includes(event)) {
      throw new TypeError(
        `RateLimitedClient: "${event}" is a reserved event name of this transport; it cannot be sent`,
      );
    }
    const seq = this.nextSeq++;
    // The sequence number is a safe integer, unique for this client: what the server echoes.
    const id = this.options.messageIds ? seq : undefined;
    return {
      seq,
      event,
      data,
      id,
      frame: JSON.stringify(id === undefined ? { event, data } : { event, data, id }),
      priority,
      sentAt: Number.NaN,
      sendNo: 0,
      refusals: 0,
    };
  }

  /** A method, not a field read: listeners called meanwhile may have changed the state. */
  private isClosed(): boolean {
    return this.currentState === 'closed';
  }

  private isOpen(): boolean {
    return this.socket !== undefined && this.socket.readyState === OPEN;
  }

  private setState(state: ClientState): void {
    if (state === this.currentState) return;
    this.currentState = state;
    this.emitter.emit('state', state);
  }

  private openSocket(): void {
    this.setState('connecting');
    // A listener of that state may have closed the client.
    if (this.currentState !== 'connecting') return;
    let socket: WebSocketLike;
    try {
      socket = this.options.createSocket(this.url, this.options.protocols);
    } catch (error) {
      this.setState('closed');
      throw error;
    }
    this.socket = socket;
    this.sendsBeforeSocket = this.sends;
    // Handlers stay attached for the socket's whole life (a `ws` socket without an error
    // listener crashes the process); each ignores a socket that is no longer current.
    socket.onopen = () => {
      if (this.socket === socket) this.handleOpen();
    };
    socket.onmessage = (event) => {
      if (this.socket === socket) this.handleFrame(event);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      const refusal = this.refusal?.socket === socket ? this.refusal : undefined;
      this.refusal = undefined;
      // A refused upgrade's Retry-After, where the socket showed it: waited like socket.io's.
      this.handleClose(refusal?.retryAfterMs === undefined ? event : { ...event, retryAfterMs: refusal.retryAfterMs });
    };
    socket.onerror = (event) => {
      // A refused upgrade was reported as such (the socket's own error would say it was closed early).
      if (this.socket === socket && this.refusal?.socket !== socket) this.emitter.emit('error', event);
    };
    watchRefusal(socket, (status, retryAfterMs) => {
      if (this.socket !== socket) return;
      this.refusal = { socket, retryAfterMs };
      const after = retryAfterMs === undefined ? '' : ` (Retry-After: ${Math.ceil(retryAfterMs / 1000)} s)`;
      this.emitter.emit(
        'error',
        new Error(`RateLimitedClient: the server refused the connection: HTTP ${status}${after}`),
      );
    });
    const timeoutMs = this.options.openTimeoutMs;
    if (Number.isFinite(timeoutMs)) {
      this.openTimer = setTimeout(
        () => {
          this.openTimer = undefined;
          if (this.socket === socket && socket.readyState !== OPEN) this.abandonHandshake(socket, timeoutMs);
        },
        Math.min(MAX_TIMER_MS, timeoutMs),
      );
    }
  }

  /**
   * A handshake past `openTimeoutMs`: the socket is ended (its own events are ignored from
   * now on) and the connection is over as if it had closed without opening.
   */
  private abandonHandshake(socket: WebSocketLike, timeoutMs: number): void {
    // The cause first, as a failed handshake's `error` comes before its close (which may give up).
    this.emitter.emit('error', new Error(`RateLimitedClient: the handshake did not complete within ${timeoutMs} ms`));
    // A listener may have closed the client (which ended the socket).
    if (this.socket === socket) this.handleClose({ code: ABNORMAL_CLOSURE });
    try {
      if (typeof socket.terminate === 'function') socket.terminate();
      else socket.close();
    } catch {
      // A socket that cannot be closed while connecting ends by itself; nothing holds it.
    }
  }

  private handleOpen(): void {
    if (this.openTimer !== undefined) clearTimeout(this.openTimer);
    this.openTimer = undefined;
    this.openedAt = now();
    this.pump();
  }

  private handleClose(event: SocketCloseEvent): void {
    const opened = this.openedAt !== undefined;
    if (opened && now() - (this.openedAt as number) >= this.options.stableMs) this.attempt = 0;
    const unanswered = this.ledger.drain();
    this.stop();
    const code = typeof event.code === 'number' ? event.code : ABNORMAL_CLOSURE;
    const policy =
      code === POLICY_VIOLATION || code === this.options.policyCloseCode || event.policy === true || !opened;
    const reconnecting = this.options.reconnect && this.attempt < this.options.maxReconnectAttempts;
    // A close 1009 refuses a message as too big: sent again, it would end every connection the same way.
    const tooBig = code === MESSAGE_TOO_BIG ? takeTooBig(unanswered) : undefined;
    this.reportUnanswered(unanswered, code, reconnecting);
    if (tooBig) this.drop(tooBig, 'rejected');
    // A listener of the report may have closed the client: nothing more to do then.
    if (this.currentState === 'closed') return;
    if (!this.options.reconnect) {
      this.giveUp(undefined);
      return;
    }
    if (this.attempt >= this.options.maxReconnectAttempts) {
      this.giveUp(new Error(`RateLimitedClient: gave up after ${this.attempt} reconnect attempts`));
      return;
    }
    const backoff = fullJitterDelay(
      this.attempt,
      this.options.backoffBaseMs,
      this.options.backoffCapMs,
      this.options.random,
    );
    // A refused connection whose server said when to come back (socket.io) waits that long too.
    const least = policy ? Math.max(this.options.policyDelayMs, event.retryAfterMs ?? 0) : 0;
    const delayMs = Math.min(MAX_TIMER_MS, Math.max(backoff, least));
    const attempt = this.attempt++;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      try {
        this.openSocket();
      } catch (error) {
        this.giveUp(error);
      }
    }, delayMs);
    this.setState('reconnecting');
    this.emitter.emit('reconnect', { attempt, delayMs, code, policy });
  }

  /** Forgets the connection and cancels every timer; the queue is kept. */
  private stop(): void {
    if (this.pumpTimer !== undefined) clearTimeout(this.pumpTimer);
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    if (this.openTimer !== undefined) clearTimeout(this.openTimer);
    this.pumpTimer = undefined;
    this.reconnectTimer = undefined;
    this.openTimer = undefined;
    this.socket = undefined;
    this.openedAt = undefined;
    this.refusal = undefined;
    this.ledger.clear();
  }

  /**
   * Reports what a connection's end left unanswered and, by the `undelivered` policy and
   * if the client will reconnect, puts back in the queue what may be sent again.
   */
  private reportUnanswered(unanswered: Unanswered, code: number, reconnecting: boolean): void {
    if (unanswered.messages.length === 0) return;
    const requeue = reconnecting && this.options.undelivered === 'requeue';
    const requeued: OutboxEntry[] = [];
    for (const entry of unanswered.messages) {
      if (!requeue || entry.priority || unanswered.doubtful.has(entry)) continue;
      this.outbox.requeue(entry);
      requeued.push(entry);
    }
    this.reportUndelivered('closed', unanswered, requeued, code);
  }

  private reportUndelivered(
    reason: UndeliveredReason,
    group: { messages: OutboxEntry[]; refused: number; acknowledged: number },
    requeued: OutboxEntry[],
    code?: number,
  ): void {
    const messages = new Map(group.messages.map((entry) => [entry, outbound(entry)]));
    this.emitter.emit('undelivered', {
      reason,
      ...(code === undefined ? {} : { code }),
      messages: [...messages.values()],
      requeued: requeued.map((entry) => messages.get(entry) as OutboundMessage),
      refused: group.refused,
      acknowledged: group.acknowledged,
    });
  }

  private giveUp(error: unknown): void {
    this.stop();
    this.setState('closed');
    this.dropQueued();
    if (error !== undefined) this.emitter.emit('error', error);
  }

  private dropQueued(): void {
    for (const entry of this.outbox.clear()) this.drop(entry, 'closed');
  }

  private drop(entry: OutboxEntry, reason: DropReason): void {
    this.droppedCount++;
    this.emitter.emit('drop', { reason, message: outbound(entry) });
  }

  private handleFrame(event: SocketMessageEvent): void {
    const message = event.decoded === undefined ? this.decode(event.data) : event.decoded;
    if (message === undefined) return;
    const info = parseRateLimitFrame(message);
    if (info) {
      this.handleRateLimit(info, event.answers);
      return;
    }
    // An error frame naming one of this client's messages answers exactly that message.
    const errorId = this.options.messageIds ? errorFrameId(message) : undefined;
    const answered = errorId === undefined ? undefined : this.ledger.takeById(errorId);
    let ack: AckMatch | undefined;
    try {
      ack = ackMatch(this.options.isAck?.(message));
    } catch (error) {
      this.emitter.emit('error', error);
    }
    const settled = ack && !answered ? this.acknowledge(ack, event.answers) : undefined;
    this.emitter.emit('message', message);
    if (settled?.ambiguous) this.reportAmbiguous(settled.ambiguous);
    if (ack || answered) this.pump();
  }

  /** Parses a frame's payload; undefined (reported as an error) when it is not JSON text. */
  private decode(data: unknown): unknown {
    const text = frameText(data);
    if (text === undefined) {
      this.emitter.emit('error', new TypeError('RateLimitedClient: unreadable frame payload'));
      return undefined;
    }
    try {
      return JSON.parse(text) as unknown;
    } catch {
      this.emitter.emit('error', new SyntaxError(`RateLimitedClient: frame is not JSON: ${text.slice(0, 80)}`));
      return undefined;
    }
  }

  /**
   * Confirms the message an acknowledgement answers: by id or, on socket.io, by its place
   * among this socket's sends (`answers`), exactly; else by the ledger's rules.
   */
  private acknowledge(ack: AckMatch, answers: number | undefined): Settled | undefined {
    if (ack.id !== undefined) {
      const entry = this.ledger.takeById(ack.id);
      if (entry) this.noteAcked(entry.event);
      return undefined;
    }
    if (answers !== undefined) {
      const { entry, settled } = this.ledger.confirmSent(this.sendsBeforeSocket + answers);
      if (entry) this.noteAcked(entry.event);
      return settled;
    }
    // An ack naming no event answers the oldest unconfirmed message (see `Ledger.ack`).
    const event = ack.event ?? this.ledger.oldestEvent();
    if (event !== undefined && this.ledger.hasSent(event)) this.noteAcked(event);
    return this.ledger.ack(ack.event);
  }

  /**
   * Milliseconds after which an unconfirmed message of `event` is presumed accepted: the
   * given `confirmMs` for every event; without one, with `isAck`, the 10 s safety net for
   * an event an ack has answered, else the time-based delay (250 ms, growing).
   */
  private confirmDelay(event: string): number {
    const net = this.options.ackedConfirmMs;
    return net !== undefined && this.ackedEvents.has(event) ? net : this.confirmMs;
  }

  /** Remembers that an ack answered a message of `event` (see `ackedEvents`). */
  private noteAcked(event: string): void {
    if (this.options.ackedConfirmMs === undefined) return;
    this.ackedEvents.delete(event);
    this.ackedEvents.add(event);
    if (this.ackedEvents.size <= MAX_ACKED_EVENTS) return;
    this.ackedEvents.delete(this.ackedEvents.values().next().value as string);
    // That event's delay shrank back to the time-based one.
    this.ledger.rescan();
  }

  private reportAmbiguous(group: NonNullable<Settled['ambiguous']>): void {
    this.reportUndelivered('ambiguous', group, []);
  }

  /** A refusal; `answers`: the place on this socket of the message it answers as an acknowledgement (socket.io). */
  private handleRateLimit(info: RateLimitInfo, answers?: number): void {
    const t = now();
    const socket = this.socket;
    this.expireUnconfirmed(t);
    // A listener of that report may have closed the client (or it reconnected).
    if (this.socket !== socket) return;
    const settled = this.takeRejected(info, answers);
    const refused = settled.refused;
    let repeats = 0;
    for (const entry of refused) repeats = Math.max(repeats, ++entry.refusals);
    // How long nothing it blocks is sent: the frame's retryAfter, or longer for a message
    // refused again and again (see `repeatFloorMs`).
    const waitMs = Math.max(info.retryAfter, repeatFloorMs(repeats));
    // The newest refused message says whether the model had admitted it (see relearn).
    const rejected = refused.at(-1);
    if (this.options.adaptiveConfirmMs) {
      // Time-based confirmation is only right if frames come back within confirmMs.
      const cap = Math.max(MAX_ADAPTIVE_CONFIRM_MS, this.options.confirmMs);
      const wanted = refused.length > 0 ? 2 * (t - refused[0].sentAt) : 2 * this.confirmMs;
      this.confirmMs = Math.min(cap, Math.max(this.confirmMs, wanted));
    }
    const until = t + waitMs;
    // The frame's messageType names the server's bucket; the messages it refused, the
    // events spending it: several events may share one type (`@Throttle({ type })`). Every
    // refused message's event is taken to be of that type: a wrong guess (a frame without
    // an id refusing messages of several types) holds an event for this window and paces it
    // by this model, until a frame about that event names its own type.
    if (info.messageType !== undefined) {
      for (const entry of refused) this.learnType(entry.event, info.messageType);
    }
    const key = info.messageType ?? (rejected && this.typeOf(rejected.event));
    if ((info.code === 'TYPE_LIMIT' || info.code === 'EXPENSIVE_LIMIT') && key !== undefined) {
      // A type none of this client's messages has is no one's to pace (and learning it
      // would let a server grow the client without bound).
      if (rejected !== undefined || this.isKnownType(key)) {
        this.block(key, until);
        this.setModel(key, this.relearn(this.typeBudgets.get(key), info, rejected, waitMs, t), t);
      }
      // Each refused message waits out the window, whatever type its event maps to (one the
      // frame names none for, or whose mapping the cap on event types has forgotten).
      for (const entry of refused) {
        const type = this.typeOf(entry.event);
        if (type !== key) this.block(type, until);
      }
    } else {
      this.globalBlockedUntil = Math.max(this.globalBlockedUntil, until);
      if (info.code === 'GLOBAL_LIMIT') {
        this.globalBudget = this.relearn(this.globalBudget, info, rejected, waitMs, t);
      }
    }
    const messages = refused.map(outbound);
    for (const entry of refused) {
      if (entry.priority) this.drop(entry, 'rejected');
      else this.outbox.requeue(entry);
    }
    let notice: RateLimitNotice = info;
    if (messages.length === 1) notice = { ...info, message: messages[0], messages };
    else if (messages.length > 1) notice = { ...info, messages };
    this.emitter.emit('rateLimit', notice);
    if (settled.ambiguous) this.reportAmbiguous(settled.ambiguous);
    this.pump();
  }

  /** Removes and returns the sent messages a frame shows to be refused (see {@link Ledger}). */
  private takeRejected(info: RateLimitInfo, answers: number | undefined): Settled {
    // An echoed id is exact: a message that is not (or no longer) ours is no one's to blame.
    if (this.options.messageIds && info.id !== undefined) {
      const entry = this.ledger.takeById(info.id);
      return { refused: entry ? [entry] : [] };
    }
    // An acknowledgement answers exactly the message whose callback it came to.
    if (answers !== undefined) return this.ledger.refuseSent(this.sendsBeforeSocket + answers);
    return this.ledger.refuse(info.messageType);
  }

  /** Rebuilds a bucket model from a frame (see the pacing rule on the class). */
  private relearn(
    old: Budget | undefined,
    info: RateLimitInfo,
    rejected: OutboxEntry | undefined,
    firstMs: number,
    t: number,
  ): Budget {
    let interval = Math.max(info.retryAfter, this.options.minPaceMs);
    if (old) {
      interval = Math.max(interval, old.intervalMs);
      // A queued message the model had admitted was rejected: the model was too generous.
      if (rejected && !rejected.priority && rejected.sendNo > old.builtAtSend) {
        interval = Math.max(interval, Math.min(MAX_PACE_MS, old.intervalMs * 2));
      }
    }
    const capacity = info.limit !== undefined && info.limit >= 1 ? Math.floor(info.limit) : (old?.capacity ?? 1);
    return Budget.afterRejection(capacity, interval, firstMs, t, this.sends);
  }

  private expireUnconfirmed(t: number): void {
    const settled = this.ledger.expire(t);
    if (settled.ambiguous) this.reportAmbiguous(settled.ambiguous);
  }

  /** Extends the retry window of a type (or event) to `until`. */
  private block(key: string, until: number): void {
    this.typeBlockedUntil.set(key, Math.max(this.typeBlockedUntil.get(key) ?? -Infinity, until));
  }

  /** The server type (bucket) of an event's messages: the event itself unless a frame said otherwise. */
  private typeOf(event: string): string {
    return this.eventTypes.get(event) ?? event;
  }

  /** The keys of the retry windows and models that apply to an event: its type, and the event if it differs. */
  private keysOf(event: string): string[] {
    const type = this.eventTypes.get(event);
    return type === undefined ? [event] : [type, event];
  }

  /** Remembers that a frame about a message of `event` named the server type `type`. */
  private learnType(event: string, type: string): void {
    this.eventTypes.delete(event);
    if (type === event) return;
    this.eventTypes.set(event, type);
    if (this.eventTypes.size > MAX_EVENT_TYPES) this.eventTypes.delete(this.eventTypes.keys().next().value as string);
  }

  /** A type this client paces or may send: it has a model or window, an event maps to it, or it is an event sent on this connection. */
  private isKnownType(type: string): boolean {
    if (this.typeBudgets.has(type) || this.typeBlockedUntil.has(type) || this.ledger.hasSent(type)) return true;
    for (const mapped of this.eventTypes.values()) if (mapped === type) return true;
    return false;
  }

  /**
   * Stores a model as the most recently used; past `MAX_LEARNED_MODELS` learned ones, evicts
   * the least recently used, preferring one back to full capacity outside its retry window
   * (forgetting it costs the least: the next frame relearns it).
   */
  private setModel(key: string, budget: Budget, t: number): void {
    this.typeBudgets.delete(key);
    this.typeBudgets.set(key, budget);
    if (this.typeBudgets.size - this.declaredTypes.size <= MAX_LEARNED_MODELS) return;
    let victim: string | undefined;
    for (const [candidate, model] of this.typeBudgets) {
      if (candidate === key || this.declaredTypes.has(candidate)) continue;
      victim ??= candidate;
      if (model.available(t) >= model.capacity && !((this.typeBlockedUntil.get(candidate) ?? -Infinity) > t)) {
        victim = candidate;
        break;
      }
    }
    if (victim !== undefined) this.typeBudgets.delete(victim);
  }

  /** Milliseconds before `entry` may be sent (0: now), ignoring whether the socket is open. */
  private waitMs(entry: OutboxEntry, t: number): number {
    let wait = Math.max(0, this.globalBlockedUntil - t);
    if (this.globalBudget) wait = Math.max(wait, this.globalBudget.waitMs(t));
    let modelled = false;
    for (const key of this.keysOf(entry.event)) {
      wait = Math.max(wait, (this.typeBlockedUntil.get(key) ?? -Infinity) - t);
      const budget = this.typeBudgets.get(key);
      if (budget) {
        modelled = true;
        wait = Math.max(wait, budget.waitMs(t));
      }
    }
    if (modelled) return wait;
    const { count, oldest } = this.ledger.pending(entry.event);
    if (oldest && count >= this.options.maxUnconfirmed) {
      wait = Math.max(wait, this.ledger.deadline(oldest) - t);
    }
    return wait;
  }

  /** Writes a message to the socket and books it; false if the socket refused it. */
  private transmit(entry: OutboxEntry, t: number): boolean {
    try {
      (this.socket as WebSocketLike).send(entry.frame);
    } catch (error) {
      this.emitter.emit('error', error);
      return false;
    }
    entry.sentAt = t;
    entry.sendNo = ++this.sends;
    this.globalBudget?.take(t);
    const type = this.eventTypes.get(entry.event);
    if (type !== undefined) this.learnType(entry.event, type); // most recently used
    for (const key of this.keysOf(entry.event)) {
      const budget = this.typeBudgets.get(key);
      if (!budget) continue;
      budget.take(t);
      if (!this.declaredTypes.has(key)) this.setModel(key, budget, t); // most recently used
    }
    this.ledger.record(entry);
    return true;
  }

  /** Sends what may be sent now and schedules the next look; re-entrant calls are merged. */
  private pump(): void {
    if (this.pumping) {
      this.pumpRequested = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.pumpRequested = false;
        this.pumpOnce();
      } while (this.pumpRequested);
    } finally {
      this.pumping = false;
    }
  }

  private pumpOnce(): void {
    if (this.pumpTimer !== undefined) clearTimeout(this.pumpTimer);
    this.pumpTimer = undefined;
    if (!this.isOpen()) return;
    const t = now();
    this.expireUnconfirmed(t);
    let wake = Infinity;
    for (let head = this.outbox.peek(); head; head = this.outbox.peek()) {
      const wait = this.waitMs(head, t);
      if (wait > 0) {
        wake = wait;
        break;
      }
      if (!this.isOpen() || !this.transmit(head, t)) break;
      this.outbox.shift();
    }
    // A listener of what this pass reported (or of a send error) may have closed the client.
    if (!this.isOpen()) return;
    const blockedFor = this.pruneBlocks(t);
    // A group in doubt is reported when it expires, whether or not anything else wakes the pump.
    wake = Math.min(wake, blockedFor, Math.max(0, this.ledger.doubtExpiry() - t));
    if (wake < Infinity) {
      this.pumpTimer = setTimeout(
        () => {
          this.pumpTimer = undefined;
          this.pump();
        },
        Math.min(MAX_TIMER_MS, Math.max(1, Math.ceil(wake))),
      );
    }
    this.setState(blockedFor < Infinity ? 'rate_limited' : 'open');
  }

  /** Forgets retry windows that have passed; returns ms until the next one ends. */
  private pruneBlocks(t: number): number {
    let next = this.globalBlockedUntil > t ? this.globalBlockedUntil - t : Infinity;
    for (const [type, until] of this.typeBlockedUntil) {
      if (until <= t) this.typeBlockedUntil.delete(type);
      else next = Math.min(next, until - t);
    }
    return next;
  }
}
