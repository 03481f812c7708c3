/* global document, window */
// The demo page on socket.io: plain socket.io-client, as the server serves it
// (/socket.io/socket.io.js), behind the few members of RateLimitedClient the page uses. It
// sends every message at once (no queue, no pacing, nothing sent again), so a flood shows
// what the server does to a client that does not slow down: `rate_limit` events, then
// `rate_limit_disconnect` and the server's disconnect.

/** How long the page waits before connecting again after losing its connection. */
export const RECONNECT_MS = 5_000;

/** Loads the socket.io client the server serves and returns its `io`. */
export function loadSocketIo() {
  if (window.io) return Promise.resolve(window.io);
  return new Promise((resolve, reject) => {
    const script = document.createElement('script');
    script.src = '/socket.io/socket.io.js';
    script.onload = () => resolve(window.io);
    script.onerror = () => reject(new Error('could not load /socket.io/socket.io.js'));
    document.head.append(script);
  });
}

export class IoChatClient {
  /** Nothing waits in a queue: every message is emitted when it is sent. */
  queued = 0;
  /** Messages never answered (the connection was lost) or not sent (no connection). */
  dropped = 0;
  state = 'connecting';
  #socket;
  #isAck;
  #listeners = new Map();
  #nextId = 0;
  /** Messages sent and not answered yet, in send order. */
  #inFlight = [];
  /** The last `rate_limit_disconnect` notice, until the connection it ended is gone. */
  #notice;
  #timer;
  #closed = false;

  /**
   * @param io socket.io-client's `io`
   * @param options.isAck tells which answer confirms a message: `{ event }` of the message
   *   it answers (the oldest in flight of that event), as RateLimitedClient's option
   */
  constructor(io, { isAck } = {}) {
    this.#isAck = isAck ?? (() => undefined);
    this.#socket = io({ reconnection: false });
    this.#socket.on('connect', () => this.#setState('open'));
    this.#socket.on('connect_error', (error) => {
      this.#emit('error', error);
      this.#lost(`connect_error: ${error.message}`);
    });
    this.#socket.on('disconnect', (reason) => this.#lost(reason));
    this.#socket.onAny((event, data) => this.#receive(event, data));
  }

  on(name, listener) {
    const listeners = this.#listeners.get(name) ?? [];
    listeners.push(listener);
    this.#listeners.set(name, listeners);
    return this;
  }

  /** Emits `data` with an `id` added (rate_limit events name it); false when not connected. */
  send(event, data = {}) {
    if (!this.#socket.connected) {
      this.dropped++;
      return false;
    }
    const id = ++this.#nextId;
    this.#inFlight.push({ event, data, id });
    this.#socket.emit(event, { ...data, id });
    return true;
  }

  /** Emits at once and keeps no record (the page's `get_limits` poll); nothing when not connected. */
  sendPriority(event, data) {
    if (this.#socket.connected) this.#socket.emit(event, data);
  }

  close() {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#socket.disconnect();
  }

  #receive(event, data) {
    if (event === 'rate_limit') {
      const index = this.#inFlight.findIndex((message) => data?.id !== undefined && message.id === data.id);
      const [message] = index >= 0 ? this.#inFlight.splice(index, 1) : [];
      this.#emit('rateLimit', { ...data, message });
    } else if (event === 'rate_limit_disconnect') {
      this.#notice = data;
      this.#emit('rateLimitDisconnect', data);
    } else {
      const message = { event, data };
      const answers = this.#isAck(message);
      if (answers) {
        const index = this.#inFlight.findIndex((sent) => sent.event === answers.event);
        if (index >= 0) this.#inFlight.splice(index, 1);
      }
      this.#emit('message', message);
    }
  }

  /** The connection is gone: report what it left unanswered, and connect again later. */
  #lost(reason) {
    const notice = this.#notice;
    this.#notice = undefined;
    const messages = this.#inFlight.splice(0);
    if (messages.length > 0) {
      this.dropped += messages.length;
      this.#emit('undelivered', { reason, messages, requeued: [] });
    }
    this.#emit('disconnect', { reason, notice });
    if (this.#closed) return this.#setState('closed');
    this.#setState('reconnecting');
    this.#emit('reconnect', { delayMs: RECONNECT_MS, code: notice?.code ?? reason, policy: notice !== undefined });
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#setState('connecting');
      this.#socket.connect();
    }, RECONNECT_MS);
  }

  #setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.#emit('state', state);
  }

  #emit(name, value) {
    for (const listener of this.#listeners.get(name) ?? []) listener(value);
  }
}
