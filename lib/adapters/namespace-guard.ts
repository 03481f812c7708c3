import type { Namespace, Server, Socket } from 'socket.io';
import type { ConnectionState } from '../connection/connection-state.js';
import type { ConnectionRefusalReason } from '../interfaces/event.interface.js';
import type { ConnectionAdmission, WsRateLimitService } from '../services/ws-rate-limit.service.js';
import { clientAddressOf } from './adapter-support.js';
import type { EngineConnectionLike } from './engine-io.js';
import { REFUSALS } from './refusals.js';

/** A connection refused in `close` mode: its namespace connections fail with this. */
export interface Refusal {
  readonly reason: string;
  readonly code: ConnectionRefusalReason;
  readonly retryAfter: number;
}

/** The namespace connections of `WsRateLimitIoAdapter`'s servers (every namespace, once). */
export class NamespaceGuard {
  private readonly namespaces = new WeakSet<object>();
  /** Records of sockets that joined a namespace again on one connection, admitted anew. */
  private readonly rejoins = new WeakMap<Socket, ConnectionState>();
  /** The namespaces each Engine.IO connection has joined. */
  private readonly joined = new WeakMap<object, Set<string>>();

  constructor(
    private readonly limiter: WsRateLimitService,
    /** Handshakes refused in `close` mode, by request. */
    private readonly refusals: WeakMap<object, Refusal>,
    /** The admission record of each Engine.IO connection. */
    private readonly records: WeakMap<object, ConnectionState>,
  ) {}

  /** The record admitted for a socket that joined its namespace again, if it did. */
  rejoined(socket: Socket): ConnectionState | undefined {
    return this.rejoins.get(socket);
  }

  /**
   * Namespace connections: in `close` refusal mode a refused connection's fail with why; a
   * namespace joined again on the same connection (after leaving it) is decided as a new
   * connection, so leaving and joining cannot reset a per-connection budget for free.
   */
  guard(namespace: Server | Namespace): void {
    if (this.namespaces.has(namespace)) return;
    this.namespaces.add(namespace);
    namespace.use((socket, next) => {
      const refusal = this.refusals.get(socket.request);
      if (refusal !== undefined) return this.refuse(socket, refusal, next, true);
      let joined = this.joined.get(socket.conn);
      if (joined === undefined) this.joined.set(socket.conn, (joined = new Set()));
      if (!joined.has(socket.nsp.name)) {
        joined.add(socket.nsp.name);
        return next();
      }
      const address = this.records.get(socket.conn)?.address ?? clientAddressOf(socket.request, this.limiter.options);
      if (address === undefined) return next(new Error('Client address unknown'));
      const settle = (admission: ConnectionAdmission): void => {
        if (!admission.accepted) {
          const { reason } = REFUSALS[admission.reason!];
          return this.refuse(
            socket,
            { reason, code: admission.reason!, retryAfter: admission.retryAfter },
            next,
            false,
          );
        }
        this.rejoins.set(socket, admission.connection);
        // A socket that never connects (its client left) gives its slot back with its connection.
        socket.conn.once('close', admission.release);
        next();
      };
      try {
        const admission = this.limiter.admitConnection(address, socket.request);
        if (admission instanceof Promise) admission.then(settle, (error: unknown) => next(error as Error));
        else settle(admission);
      } catch (error) {
        next(error as Error);
      }
    });
  }

  /**
   * Fails a namespace connection with a `connect_error` saying why; a refused handshake's
   * connection ends after it (a refused join again leaves the connection's other namespaces).
   */
  private refuse(socket: Socket, refusal: Refusal, next: (error?: Error) => void, end: boolean): void {
    const error = new Error(refusal.reason) as Error & { data?: unknown };
    error.data = { code: refusal.code, retryAfter: refusal.retryAfter };
    next(error);
    // socket.io sends the connect_error on the next tick; the connection ends after it.
    if (end) process.nextTick(() => (socket.conn as unknown as EngineConnectionLike).close());
  }
}
