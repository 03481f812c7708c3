import type { Namespace, Server, Socket } from 'socket.io';
import type { ConnectionState } from '../connection/connection-state.js';
import type { ConnectionRefusalReason } from '../interfaces/event.interface.js';
import type { ConnectionAdmission, WsRateLimitService } from '../services/ws-rate-limit.service.js';
import { clientAddressOf } from './adapter-support.js';
import type { EngineConnectionLike } from './engine-io.js';
import { REFUSALS } from './refusals.js';

/**
 * Whether a socket is still on its way through its namespace's middlewares (not connected,
 * not refused). socket.io keeps such sockets in a private map of its own (4.8 does); where it
 * does not, none is taken for waiting.
 */
function waiting(socket: Socket): boolean {
  const preConnect = (socket.nsp as unknown as { _preConnectSockets?: Map<string, Socket> })._preConnectSockets;
  return preConnect?.get(socket.id) === socket;
}

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
  /** The namespaces each Engine.IO connection has joined (connected to). */
  private readonly joined = new WeakMap<object, Set<string>>();
  /**
   * Sockets the guard has screened: a child of a RegExp namespace inherits its parent's
   * middlewares, the guard among them, and is guarded itself too; a socket is screened once.
   */
  private readonly screened = new WeakSet<Socket>();
  /** A join again admitted and not connected yet, by connection and namespace name. */
  private readonly pendingRejoins = new WeakMap<object, Map<string, { socket: Socket; release: () => void }>>();
  /** The children of the RegExp and function namespaces (socket.io's `ParentNamespace`s). */
  private readonly parents: { readonly children: ReadonlySet<object> }[] = [];
  /**
   * The `close` listener of a join again's connection that gives its slot back if the join
   * never connects; taken off when it connects (a connection joining and leaving rooms
   * would otherwise pile them up for its whole life).
   */
  private readonly watched = new WeakMap<Socket, () => void>();
  /** First joins on their way through the namespace's middlewares, by connection and name. */
  private readonly pendingJoins = new WeakMap<object, Map<string, Set<Socket>>>();
  /** Namespaces whose first join on a connection ended without connecting (refused), by connection. */
  private readonly refusedJoins = new WeakMap<object, Set<string>>();

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
   * namespace joined again on the same connection (after leaving it), or a dynamic one
   * joined beside others (see `free`), is decided as a new connection, so joining cannot
   * start a per-connection budget for free.
   */
  guard(namespace: Server | Namespace): void {
    if (this.namespaces.has(namespace)) return;
    this.namespaces.add(namespace);
    // A RegExp or function namespace (socket.io's ParentNamespace): its children are dynamic.
    const children = (namespace as { children?: unknown }).children;
    if (children instanceof Set) this.parents.push({ children: children as ReadonlySet<object> });
    // A namespace counts as joined once the socket connects: a join the application's own
    // middlewares refused (a bad token, then a retry) is not a join again.
    (namespace as Namespace).on('connection', (socket: Socket) => {
      let joined = this.joined.get(socket.conn);
      if (joined === undefined) this.joined.set(socket.conn, (joined = new Set()));
      joined.add(socket.nsp.name);
      this.pendingJoins.get(socket.conn)?.get(socket.nsp.name)?.delete(socket);
      const pending = this.pendingRejoins.get(socket.conn);
      if (pending?.get(socket.nsp.name)?.socket === socket) pending.delete(socket.nsp.name);
      // Connected: its record (and slot) now ends with the socket, not with the connection
      // (the adapter's record gives it back too; a release runs once): a namespace without a
      // gateway, or a socket the application's own listener turns away, has no record to.
      const release = this.watched.get(socket);
      this.unwatch(socket);
      if (release !== undefined) socket.once('disconnect', release);
    });
    namespace.use((socket, next) => {
      if (this.screened.has(socket)) return next();
      this.screened.add(socket);
      const refusal = this.refusals.get(socket.request);
      if (refusal !== undefined) return this.refuse(socket, refusal, next, true);
      const first = this.joined.get(socket.conn)?.has(socket.nsp.name) ? 'waiting' : this.joining(socket);
      if (first !== 'waiting' && this.free(socket)) {
        const pass = (): void => {
          let byName = this.pendingJoins.get(socket.conn);
          if (byName === undefined) this.pendingJoins.set(socket.conn, (byName = new Map()));
          let sockets = byName.get(socket.nsp.name);
          if (sockets === undefined) byName.set(socket.nsp.name, (sockets = new Set()));
          sockets.add(socket);
          next();
        };
        if (first === 'first') return pass();
        // A retry of a first join the application's middleware refused (a bad token): still
        // no join again (it takes no second slot), but each retry costs what a new connection
        // would, a connection-rate token, so that one handshake cannot buy unlimited attempts.
        return this.chargeRetry(socket, next, pass);
      }
      // A join again admitted before on this connection that never connected and no longer
      // waits (the application refused it) gives its slot back: one slot per join that holds.
      const pending = this.pendingRejoins.get(socket.conn);
      const earlier = pending?.get(socket.nsp.name);
      if (earlier !== undefined && !earlier.socket.connected && !waiting(earlier.socket)) {
        pending!.delete(socket.nsp.name);
        this.unwatch(earlier.socket);
        earlier.release();
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
        // A socket that never connects (its client left) gives its slot back with its
        // connection. (An admission's release runs once, however often it is called.)
        const release = admission.release;
        socket.conn.once('close', release);
        this.watched.set(socket, release);
        let byName = this.pendingRejoins.get(socket.conn);
        if (byName === undefined) this.pendingRejoins.set(socket.conn, (byName = new Map()));
        byName.set(socket.nsp.name, { socket, release });
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
   * Charges a retried first join as a new connection's attempt (blocks, the connection-rate
   * bucket; no open-connection slot: the handshake's covers the connection), then passes it
   * on, or fails it with why.
   */
  private chargeRetry(socket: Socket, next: (error?: Error) => void, pass: () => void): void {
    const address = this.records.get(socket.conn)?.address ?? clientAddressOf(socket.request, this.limiter.options);
    if (address === undefined) return next(new Error('Client address unknown'));
    const settle = (admission: ConnectionAdmission): void => {
      if (admission.accepted) return pass();
      const { reason } = REFUSALS[admission.reason!];
      this.refuse(socket, { reason, code: admission.reason!, retryAfter: admission.retryAfter }, next, false);
    };
    try {
      const admission = this.limiter.admitConnection(address, socket.request, false);
      if (admission instanceof Promise) admission.then(settle, (error: unknown) => next(error as Error));
      else settle(admission);
    } catch (error) {
      next(error as Error);
    }
  }

  /** Takes off the `close` listener a join again put on its connection (see `watched`). */
  private unwatch(socket: Socket): void {
    const release = this.watched.get(socket);
    if (release === undefined) return;
    this.watched.delete(socket);
    socket.conn.off('close', release);
  }

  /**
   * Whether a first join of a namespace costs nothing: a namespace of the application's own
   * (a gateway's, or one made with `io.of()`: as many as it has), or the connection's first
   * namespace, whose slot its handshake took. A child of a RegExp or function namespace
   * joined beside others is decided as a new connection: every name makes a child, and
   * each would otherwise bring a fresh per-connection budget for free.
   */
  private free(socket: Socket): boolean {
    let dynamic = false;
    for (const parent of this.parents) if ((dynamic = parent.children.has(socket.nsp))) break;
    if (!dynamic) return true;
    const conn = socket.conn;
    if ((this.joined.get(conn)?.size ?? 0) > 0) return false;
    const pending = this.pendingJoins.get(conn);
    if (pending === undefined) return true;
    for (const [name, sockets] of pending) {
      if (name === socket.nsp.name) continue;
      for (const other of sockets) if (other.connected || waiting(other)) return false;
    }
    return true;
  }

  /**
   * Whether another first join of this socket's namespace on its connection is still on its
   * way (`waiting`: two joins sent before either connects, the second is a join again), or
   * ended without connecting (`retry`: the application refused it, or it was refused for a
   * retry, and this is a retry), or neither (`first`). Ended ones are forgotten here, and
   * remembered as refused until the connection closes.
   */
  private joining(socket: Socket): 'waiting' | 'retry' | 'first' {
    const name = socket.nsp.name;
    const sockets = this.pendingJoins.get(socket.conn)?.get(name);
    if (sockets !== undefined) {
      for (const other of sockets) {
        if (other.connected || waiting(other)) return 'waiting';
        sockets.delete(other);
        let refused = this.refusedJoins.get(socket.conn);
        if (refused === undefined) this.refusedJoins.set(socket.conn, (refused = new Set()));
        refused.add(name);
      }
    }
    return this.refusedJoins.get(socket.conn)?.has(name) === true ? 'retry' : 'first';
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
