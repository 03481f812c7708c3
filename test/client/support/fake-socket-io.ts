import type { SocketIoConnectOptions, SocketIoEmitterLike, SocketIoSocketLike } from '../../../lib/client/index.js';

type AnyListener = (...args: unknown[]) => void;

/** socket.io-client's reserved event names: `emit` throws for them. */
const RESERVED = new Set(['connect', 'connect_error', 'disconnect', 'disconnecting', 'newListener', 'removeListener']);

/** An emit the fake server saw. */
export interface FakeEmit {
  event: string;
  /** Arguments without the acknowledgement callback. */
  args: unknown[];
  /** The acknowledgement callback, when one was asked for. */
  ack?: AnyListener;
  /** The `timeout(ms)` in force for this emit. */
  timeoutMs?: number;
}

/**
 * An in-memory socket.io-client Socket driven by the test, which plays the server; it
 * behaves as socket.io-client 4.8 does where the adapter can tell (synchronous
 * `disconnect` event on a client-side disconnect, `(error, ...args)` acks after `timeout`).
 */
export class FakeIoSocket implements SocketIoSocketLike {
  connected = false;
  readonly emits: FakeEmit[] = [];
  disconnectCalls = 0;
  private readonly listeners = new Map<string, AnyListener[]>();
  private readonly anyListeners: Array<(event: string, ...args: unknown[]) => void> = [];

  constructor(
    readonly url: string,
    readonly options: SocketIoConnectOptions,
  ) {}

  on(event: string, listener: AnyListener): this {
    this.listeners.set(event, [...(this.listeners.get(event) ?? []), listener]);
    return this;
  }

  onAny(listener: (event: string, ...args: unknown[]) => void): this {
    this.anyListeners.push(listener);
    return this;
  }

  emit(event: string, ...args: unknown[]): this {
    return this.record(event, args, undefined);
  }

  timeout(ms: number): SocketIoEmitterLike {
    return { emit: (event: string, ...args: unknown[]) => this.record(event, args, ms) };
  }

  disconnect(): this {
    this.disconnectCalls++;
    if (this.connected) {
      this.connected = false;
      this.fire('disconnect', 'io client disconnect');
    }
    return this;
  }

  // --- the server's side ---------------------------------------------------------------

  /** The namespace handshake completes. */
  connect(): void {
    this.connected = true;
    this.fire('connect');
  }

  /** The server emits an event. */
  serverEmit(event: string, ...args: unknown[]): void {
    for (const listener of [...this.anyListeners]) listener(event, ...args);
  }

  /** The server answers the acknowledgement of emit number `index` (as `timeout` acks are called). */
  ack(index: number, ...response: unknown[]): void {
    const ack = this.emits[index].ack;
    if (!ack) throw new Error(`emit ${index} asked for no acknowledgement`);
    ack(null, ...response);
  }

  /** The server (or the network) ends the connection. */
  serverDisconnect(reason = 'io server disconnect'): void {
    this.connected = false;
    this.fire('disconnect', reason);
  }

  /** The connection or the namespace handshake is refused. */
  connectError(error: Error): void {
    this.fire('connect_error', error);
  }

  private record(event: string, args: unknown[], timeoutMs: number | undefined): this {
    if (RESERVED.has(event)) throw new Error(`"${event}" is a reserved event name`);
    const last = args.at(-1);
    const ack = typeof last === 'function' ? (last as AnyListener) : undefined;
    this.emits.push({ event, args: ack ? args.slice(0, -1) : args, ack, timeoutMs });
    return this;
  }

  private fire(event: string, ...args: unknown[]): void {
    for (const listener of [...(this.listeners.get(event) ?? [])]) listener(...args);
  }
}

/** A fake `io` function, with the sockets it made. */
export function fakeIo(): {
  io: (url: string, options: SocketIoConnectOptions) => FakeIoSocket;
  sockets: FakeIoSocket[];
  socket(): FakeIoSocket;
} {
  const sockets: FakeIoSocket[] = [];
  return {
    io: (url, options) => {
      const socket = new FakeIoSocket(url, options);
      sockets.push(socket);
      return socket;
    },
    sockets,
    socket: () => sockets[sockets.length - 1],
  };
}
