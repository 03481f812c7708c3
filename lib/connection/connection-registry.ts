import type { IncomingMessage } from 'node:http';
import type { AccessRules } from '../services/access-rules.js';
import type { RateLimitTransport } from '../transports/transport.js';
import { isSocketIoSocket, socketIoTransport } from '../transports/socket-io-transport.js';
import { wsTransport } from '../transports/ws-transport.js';
import { clientAddressKey, plainAddress } from '../utils/client-ip.js';
import { CONNECTION_STATE, ConnectionState, type TrackedClient } from './connection-state.js';

/** The group of connections that no server registered (sockets met from code). */
const UNGROUPED = Object.freeze({});

/**
 * The open connections: their records (one per socket, see `ConnectionState`), counted
 * once, grouped by the server that accepted them (for its heartbeat and its shutdown).
 * A record is forgotten, its lease given back and `forget` told, when its socket closes.
 */
export class ConnectionRegistry {
  private nextId = 1;
  private open = 0;
  private readonly groups = new Map<object, Set<ConnectionState>>();

  constructor(
    private readonly ipv6Prefix: number,
    private readonly access: AccessRules,
    /** Frees what the limiter held for a closed connection. */
    private readonly forget: (state: ConnectionState) => void,
  ) {}

  /** Connections attached and not yet closed. */
  get count(): number {
    return this.open;
  }

  /**
   * A record for a connection about to be admitted: its address (trusted proxies applied),
   * address key and allow-list status, computed once here.
   */
  create(address: string | undefined, request?: IncomingMessage): ConnectionState {
    const ip = clientAddressKey(address, this.ipv6Prefix);
    const state = new ConnectionState(this.nextId++, address, ip, request, this.access.allowsAddress(address));
    state.registry = this;
    return state;
  }

  /**
   * Attaches a record to its socket when the connection opens (a socket the adapter did
   * not admit gets a record made from its peer address) and counts it until it closes.
   */
  attach(
    client: object,
    transport: RateLimitTransport,
    record?: ConnectionState,
    group: object = UNGROUPED,
    request?: IncomingMessage,
  ): ConnectionState {
    const state = record ?? this.create(plainAddress(transport.peerAddress(client)), request);
    state.client = client;
    state.transport = transport;
    (client as TrackedClient)[CONNECTION_STATE] = state;
    if (transport.isClosed?.(client) === true) {
      // Met after it closed (a service call from a gateway's handleDisconnect, on an adapter
      // that attached nothing before): its close has passed and will not be told again, so
      // it is never counted, and what it held is freed once the call that met it is done.
      setImmediate(() => {
        state.release();
        this.forget(state);
      });
      return state;
    }
    const members = this.members(group);
    // Told first, counted after: a socket whose close cannot be followed is never counted.
    transport.onClose(client, () => {
      this.open--;
      members.delete(state);
      if (members.size === 0 && group === UNGROUPED) this.groups.delete(group);
      state.order?.dispose();
      state.release();
      this.forget(state);
    });
    members.add(state);
    this.open++;
    return state;
  }

  /**
   * The record of a socket, made on first use for sockets no adapter attached (a `ws` or a
   * socket.io socket, told apart by shape; anything else is an error naming both).
   */
  of(client: object): ConnectionState {
    const state = (client as TrackedClient)[CONNECTION_STATE];
    if (state === undefined) return this.attach(client, transportFor(client));
    // Another application's limiter tracks it: its budgets and its close are that one's.
    if (state.registry !== this) {
      throw new TypeError(
        "nestjs-ws-rate-limit: this socket is another application's (its limiter tracks it); ask that application's WsRateLimitService",
      );
    }
    return state;
  }

  /** The open connections a server accepted (a live view). */
  group(server: object): ReadonlySet<ConnectionState> {
    return this.members(server);
  }

  private members(group: object): Set<ConnectionState> {
    let members = this.groups.get(group);
    if (members === undefined) this.groups.set(group, (members = new Set()));
    return members;
  }

  /** Forgets a server's group (its connections are being closed with it). */
  dropGroup(server: object): void {
    this.groups.delete(server);
  }
}

/** The transport of a socket no adapter attached, by its shape. */
export function transportFor(client: object): RateLimitTransport {
  if (isSocketIoSocket(client)) return socketIoTransport as RateLimitTransport;
  const socket = client as { readyState?: unknown; send?: unknown; once?: unknown };
  if (typeof socket.readyState === 'number' && typeof socket.send === 'function' && typeof socket.once === 'function') {
    return wsTransport as RateLimitTransport;
  }
  const name = (client.constructor as { name?: string } | undefined)?.name ?? typeof client;
  throw new Error(
    `nestjs-ws-rate-limit: unsupported socket (${name}): the limiter supports ws sockets (@nestjs/platform-ws) and socket.io sockets (@nestjs/platform-socket.io)`,
  );
}
