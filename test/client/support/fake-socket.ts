import { jest } from '@jest/globals';
import {
  RateLimitedClient,
  type RateLimitedClientOptions,
  type SocketCloseEvent,
  type SocketMessageEvent,
  type WebSocketLike,
} from '../../../lib/client/index.js';

// ---------------------------------------------------------------------------------------
// A fake socket: the test plays the server. Real-server behaviour is covered by the
// `ws` spec next to this one.
// ---------------------------------------------------------------------------------------
/** A sent frame as the fake server saw it. */
export interface SentFrame {
  event: string;
  data: unknown;
  /** The message id, if the frame carried one. */
  id?: unknown;
  /** The frame as written. */
  raw: string;
  /** performance.now() when it was written (fake timers move it). */
  at: number;
}

/** An in-memory WebSocket driven by the test: the test plays the server. */
export class FakeSocket implements WebSocketLike {
  readyState = 0;
  readonly sent: SentFrame[] = [];
  readonly closeCalls: Array<{ code?: number; reason?: string }> = [];
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: SocketMessageEvent) => void) | null = null;
  onclose: ((event: SocketCloseEvent) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {}

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('FakeSocket: send while not open');
    const parsed = JSON.parse(data) as { event: string; data: unknown; id?: unknown };
    this.sent.push({ event: parsed.event, data: parsed.data, id: parsed.id, raw: data, at: performance.now() });
  }

  close(code?: number, reason?: string): void {
    this.closeCalls.push({ code, reason });
    this.readyState = 2;
  }

  /** Completes the handshake. */
  open(): void {
    this.readyState = 1;
    this.onopen?.({ type: 'open' });
  }

  /** Delivers a frame to the client (objects are JSON-encoded). */
  receive(frame: unknown): void {
    this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
  }

  /** The server closes the connection. */
  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The handshake is refused (for example HTTP 429): error, then close 1006, never open. */
  refuse(): void {
    this.readyState = 3;
    this.onerror?.({ type: 'error' });
    this.onclose?.({ code: 1006, reason: '' });
  }

  /** Payloads of the frames sent, in order. */
  payloads(): unknown[] {
    return this.sent.map((frame) => frame.data);
  }

  /** Ids of the frames sent, in order. */
  ids(): unknown[] {
    return this.sent.map((frame) => frame.id);
  }
}

/** A client wired to fake sockets, with the sockets it opened. */
export interface Harness {
  client: RateLimitedClient;
  sockets: FakeSocket[];
  /** The most recent socket. */
  socket(): FakeSocket;
}

/** Creates a client whose sockets are {@link FakeSocket}s. */
export function harness(options: RateLimitedClientOptions = {}): Harness {
  const sockets: FakeSocket[] = [];
  const client = new RateLimitedClient('ws://test.invalid/', {
    ...options,
    createSocket: (url, protocols) => {
      const socket = new FakeSocket(url, protocols);
      sockets.push(socket);
      return socket;
    },
  });
  return { client, sockets, socket: () => sockets[sockets.length - 1] };
}

/** A `rate_limit` frame in the NestJS form. */
export function rateLimitFrame(
  retryAfter: number,
  data: Record<string, unknown> = {},
): { event: 'rate_limit'; data: Record<string, unknown> } {
  return {
    event: 'rate_limit',
    data: {
      code: 'TYPE_LIMIT',
      messageType: 'chat',
      retryAfter,
      warningCount: 1,
      limit: 5,
      remaining: 0,
      ...data,
    },
  };
}

/** Recognises the acknowledgements the fake servers below send. */
export function isAck(message: unknown): boolean {
  return (message as { event?: unknown } | null)?.event === 'ack';
}

export function advance(ms: number): void {
  jest.advanceTimersByTime(ms);
}
