// Over 400 lines: one class, the adapter, whose socket.io hooks (handshake, namespace,
// middleware, handlers, heartbeat) share the limiter and the per-socket routing.
import { Logger, type INestApplicationContext } from '@nestjs/common';
import { IoAdapter } from '@nestjs/platform-socket.io';
import type { MessageMappingProperties } from '@nestjs/websockets';
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import { EMPTY, type Observable, type Subscription } from 'rxjs';
import { catchError, filter } from 'rxjs/operators';
import type { Namespace } from 'socket.io';
import { AnswerOrder } from '../connection/answer-order.js';
import type { ConnectionState } from '../connection/connection-state.js';
import { FrameHold } from '../connection/frame-hold.js';
import { startHeartbeat } from '../connection/heartbeat.js';
import { WsRateLimitService, type ConnectionAdmission } from '../services/ws-rate-limit.service.js';
import { noteClosedSocket, socketIoTransport } from '../transports/socket-io-transport.js';
import type { RateLimitTransport } from '../transports/transport.js';
import { answerSlotFromArgs, messageIdOfData as idOf, messageMeta } from '../utils/message-id.js';
import { clientAddressOf, limiterFrom } from './adapter-support.js';
import { ForwardingWarning } from './forwarding-warning.js';
import { guardHandshakes, handshakeCompleted, unguardHandshakes, type ServerListener } from './handshake-hygiene.js';
import {
  tolerateStalledPings,
  type EngineConnectionLike,
  type EngineMiddleware,
  type EngineServerLike,
} from './engine-io.js';
import { EventSlots } from './event-slots.js';
import { NamespaceGuard, type Refusal } from './namespace-guard.js';
import { REFUSALS, refuseHttp } from './refusals.js';

/** What the adapter keeps per socket.io socket. */
interface SocketRouting {
  /** The events NestJS handlers take on this socket. */
  readonly events: Set<string>;
  /** Answer slots of routed events, until their handler runs. */
  readonly slots: EventSlots;
}

/**
 * How long a connection refused in `close` mode may stay open without joining a namespace
 * (where it learns why): socket.io would wait its `connectTimeout`, 45 s.
 */
const REFUSED_SESSION_MS = 2000;

/**
 * socket.io's types as NestJS's `IoAdapter` declares them. An application may hold two copies
 * of socket.io (the driver pins one, and keeps it nested when the application installs
 * another version): the overrides take the driver's, or their declarations would not
 * type-check against `IoAdapter`'s (TS2416, with `skipLibCheck: false`).
 */
type Server = ReturnType<IoAdapter['createIOServer']>;
type ServerOptions = NonNullable<Parameters<IoAdapter['createIOServer']>[1]>;
type Socket = Parameters<IoAdapter['bindMessageHandlers']>[0];
type SocketIoServerOptions = NonNullable<Parameters<IoAdapter['create']>[1]>;

const noop = (): void => undefined;

/**
 * NestJS's socket.io adapter (`IoAdapter`) with the limiter at every level socket.io exposes:
 *
 * - before the Engine.IO handshake completes (polling and WebSocket alike): the per-IP
 *   connection rate and open-connection cap, answered with HTTP 429 and `Retry-After` (or,
 *   with `connectionRefusal: 'close'`, a `connect_error` whose `data` says why), client
 *   addresses from trusted proxies only, and the handshake hygiene of the HTTP server;
 * - on every event: the payload limit (`maxHttpBufferSize` from `maxPayload`), events no
 *   handler takes charged to the connection's global budget, refusals answered with a
 *   `rate_limit` event or through the event's acknowledgement, answers in arrival order and
 *   a disconnect at the violation threshold only after the replies of admitted events;
 * - for the connection's life: slow consumers cut off, state freed on `disconnect`.
 *
 * Import it from `nestjs-ws-rate-limit/socket.io` (socket.io stays optional for `ws` users).
 * @example
 * const app = await NestFactory.create(AppModule);
 * app.useWebSocketAdapter(new WsRateLimitIoAdapter(app));
 */
export class WsRateLimitIoAdapter extends IoAdapter {
  protected readonly limiter: WsRateLimitService;
  /** Records of admitted handshakes, until Engine.IO makes their connection. */
  private readonly admitted = new WeakMap<IncomingMessage, ConnectionState>();
  /** Handshakes refused in `close` mode, by request. */
  private readonly refusals = new WeakMap<IncomingMessage, Refusal>();
  /** The admission record of each Engine.IO connection, for its first socket.io socket. */
  private readonly records = new WeakMap<object, ConnectionState>();
  private readonly routing = new WeakMap<Socket, SocketRouting>();
  private readonly log = new Logger('WsRateLimitIoAdapter');
  private readonly heartbeats = new Map<object, NodeJS.Timeout>();
  /** Listeners this adapter put on HTTP servers, taken off again by `dispose`. */
  private readonly httpListeners: ServerListener[] = [];
  private readonly forwarding: ForwardingWarning;
  /** Namespace connections: refusals in `close` mode, joins again on one connection. */
  private readonly namespaces: NamespaceGuard;

  constructor(app: INestApplicationContext) {
    super(app);
    const limiter = (this.limiter = limiterFrom(app, 'WsRateLimitIoAdapter'));
    this.forwarding = new ForwardingWarning(limiter.options);
    this.namespaces = new NamespaceGuard(limiter, this.refusals, this.records);
  }

  /**
   * Declared as returning `Server`, as NestJS 11's `IoAdapter.create` is (NestJS 12's says
   * `Server | Namespace`); a gateway with a `namespace` gets its namespace either way.
   */
  override create(port: number, options?: SocketIoServerOptions): Server {
    const created = super.create(port, options) as Server | Namespace;
    this.namespaces.guard(created);
    return created as Server;
  }

  override createIOServer(port: number, options?: ServerOptions): Server {
    const { maxPayload, pingIntervalMs, pongTimeoutMs, perMessageDeflate } = this.limiter.options;
    // The module's figures, a gateway's own winning. Engine.IO's heartbeat is the connection's
    // (it cannot be turned off: with pingIntervalMs 0, socket.io's own figures stay).
    const heartbeat = pingIntervalMs > 0 ? { pingInterval: pingIntervalMs, pingTimeout: pongTimeoutMs } : {};
    const limited = { maxHttpBufferSize: maxPayload, perMessageDeflate, ...heartbeat, ...options } as ServerOptions;
    // A recovered session (connectionStateRecovery) skips namespace middlewares by default,
    // the limiter's among them: a connection refused in `close` mode would recover into its
    // session. Its middlewares run (the application's too, as for any connection).
    const recovery = limited.connectionStateRecovery;
    // (`false` or `null` from an untyped gateway option: recovery stays off.)
    if (recovery) limited.connectionStateRecovery = { ...recovery, skipMiddlewares: false };
    const io = super.createIOServer(port, limited);
    const engine = io.engine as unknown as EngineServerLike;
    if (typeof engine.use !== 'function') {
      throw new Error(
        'nestjs-ws-rate-limit: the installed socket.io predates Engine.IO middlewares (engine.use); install socket.io@^4.7',
      );
    }
    engine.use(this.engineMiddleware);
    // A whole event is bounded as each of its packets is: by the server's maxHttpBufferSize.
    const maxEventBytes = limited.maxHttpBufferSize ?? this.limiter.options.maxPayload;
    engine.on('connection', (socket) => this.engineConnection(socket, maxEventBytes));
    engine.on('connection_error', ({ req }) => req !== undefined && this.giveBack(req));
    if (io.httpServer !== undefined) this.guardHttpServer(io.httpServer as unknown as HttpServer);
    // Every namespace, a gateway's or one the application makes with `io.of()`.
    this.namespaces.guard(io);
    io.on('new_namespace', (namespace) => this.namespaces.guard(namespace));
    this.startHeartbeat(io);
    return io;
  }

  override bindClientConnect(server: Server | Namespace, callback: (socket: Socket) => void): void {
    server.on('connection', (socket: Socket) => {
      // A socket the application's own listener already disconnected gets no record (and one
      // a service call makes for it later is not counted as open).
      if (socket.connected) this.attach(socket, ioServerOf(server));
      else noteClosedSocket(socket);
      callback(socket);
    });
  }

  /**
   * Routes events like `IoAdapter` does (a reply `{ event, data }` is emitted, anything else
   * goes to the acknowledgement), with the message's id and answer slot passed to the
   * handler for `WsThrottleGuard` and `WsRateLimitFilter`.
   */
  override bindMessageHandlers(
    socket: Socket,
    handlers: MessageMappingProperties[],
    transform: (data: unknown) => Observable<unknown>,
  ): void {
    if (!socket.connected) return;
    const state = this.limiter.connectionOf(socket);
    const routing = this.route(socket, state, handlers);
    const order = state.order;
    const running = new Set<Subscription>();
    socket.once('disconnect', () => {
      for (const subscription of running) subscription.unsubscribe();
      running.clear();
    });
    for (const handler of handlers) {
      const event = handler.message as string;
      // The first handler of an event takes the slots the middleware opened for it.
      const slots = routing.slots.claim(event) ? routing.slots : undefined;
      const manualAck = (handler as { isAckHandledManually?: boolean }).isAckHandledManually === true;
      socket.on(event, (...args: unknown[]) => {
        // As rxjs's fromEvent, which IoAdapter reads events with: one argument as itself.
        const payload = args.length === 1 ? args[0] : args;
        let slot = order === undefined ? undefined : slots?.take(event, args[0]);
        // Its slot was given up (an application middleware held it back past the hold time):
        // one of its own, so the limiter's answer still goes to its acknowledgement.
        if (slot === undefined && slots !== undefined && order !== undefined) slot = order.open();
        const answered = (): void => {
          if (slot !== undefined) order!.done(slot);
        };
        if (state.closing) return answered();
        const { data, ack } = this.mapPayload(payload) as { data: unknown; ack?: (...args: unknown[]) => void };
        // The limiter's answer to this event goes to its own acknowledgement, if it asked for one.
        if (slot !== undefined) slot.ack = ack as ((answer: unknown) => void) | undefined;
        // The first argument's id, as for an event no handler takes (with several arguments,
        // `data` is all of them).
        const id = idOf(args.length === 1 ? data : typeof args[0] === 'function' ? undefined : args[0]);
        let response$: Observable<unknown>;
        try {
          const result: unknown =
            id === undefined && slot === undefined
              ? handler.callback(data, ack)
              : handler.callback(data, ack, messageMeta(id, slot));
          // Answered at its first reply, or when its stream ends (or fails) without one (see
          // WsRateLimitAdapter).
          response$ = transform(result);
        } catch (error) {
          this.log.error(error);
          return answered();
        }
        if (!socket.connected) return answered();
        const subscription = response$
          .pipe(
            filter((response) => response !== undefined && response !== null),
            catchError((error: unknown) => {
              this.log.error(error);
              return EMPTY;
            }),
          )
          .subscribe({
            // Replies are never held; the first one answers the message.
            next: (response) => {
              // (No slow-consumer check here: Engine.IO queues every packet of one tick in its
              // write buffer, which the check would count as unread; the heartbeat checks.)
              const reply = response as { event?: unknown; data?: unknown };
              if (reply.event) socket.emit(reply.event as string, reply.data);
              else if (!manualAck && typeof ack === 'function') ack(response);
              answered();
            },
            complete: answered,
          });
        if (subscription.closed) return;
        running.add(subscription);
        subscription.add(() => running.delete(subscription));
      });
    }
  }

  override async close(server: Server): Promise<void> {
    const io = ioServerOf(server);
    this.stopHeartbeat(io);
    this.limiter.dropConnections(io);
    await super.close(server);
  }

  /** Also takes this adapter's listeners off the HTTP servers and stops every heartbeat. */
  override async dispose(): Promise<void> {
    unguardHandshakes(this.httpListeners);
    for (const io of [...this.heartbeats.keys()]) this.stopHeartbeat(io);
    await super.dispose();
  }

  /**
   * The Engine.IO middleware: a request with no session id is a handshake, decided here
   * before Engine.IO makes a connection; a session's own requests (long polls, uploads, the
   * upgrade) are not handshakes, so a long poll does not hold a pending-handshake slot.
   */
  private readonly engineMiddleware: EngineMiddleware = (request, response, next) => {
    // As Engine.IO: an empty `sid` is a new handshake, not a session.
    if (request._query?.sid) {
      if (request.method !== 'POST') handshakeCompleted(request.socket);
      return next();
    }
    this.forwarding.check(request);
    const address = clientAddressOf(request, this.limiter.options);
    if (address === undefined) return refuseHttp(response, 400, 'Client address unknown', 0);
    let admission: ReturnType<WsRateLimitService['admitConnection']>;
    try {
      admission = this.limiter.admitConnection(address, request);
    } catch (error) {
      this.log.error(error);
      return refuseHttp(response, 503, 'Service Unavailable', 0);
    }
    const settle = (settled: ConnectionAdmission): void => {
      if (request.socket.destroyed) {
        settled.release();
        return;
      }
      if (settled.accepted) {
        this.hold(request, response, settled.connection);
        return next();
      }
      const { status, reason } = REFUSALS[settled.reason!];
      if (this.limiter.options.connectionRefusal === 'close') {
        // The connection opens; its namespace connections fail with a connect_error saying why.
        this.refusals.set(request, { reason, code: settled.reason!, retryAfter: settled.retryAfter });
        return next();
      }
      refuseHttp(response, status, reason, settled.retryAfter);
    };
    if (admission instanceof Promise) {
      admission.then(settle, (error: unknown) => {
        this.log.error(error);
        refuseHttp(response, 503, 'Service Unavailable', 0);
      });
    } else {
      settle(admission);
    }
  };

  /** Keeps an admitted handshake's record until Engine.IO makes its connection, or gives it back. */
  private hold(request: IncomingMessage, response: ServerResponse, record: ConnectionState): void {
    this.admitted.set(request, record);
    // A handshake that fails after this (an upgrade `ws` rejects) still gives its slot back.
    response.once('close', () => this.giveBack(request));
  }

  /** Gives back the slot of an admitted handshake that made no connection. */
  private giveBack(request: IncomingMessage): void {
    const record = this.admitted.get(request);
    if (record === undefined) return;
    this.admitted.delete(request);
    record.release();
  }

  /** An Engine.IO connection is made: its slot is given back when it closes, whichever way. */
  private engineConnection(socket: EngineConnectionLike, maxEventBytes: number): void {
    const request = socket.request;
    // A WebSocket handshake's exchange is over (a polling one ended with its answer).
    handshakeCompleted(request.socket);
    this.capEvents(socket, maxEventBytes);
    tolerateStalledPings(socket);
    const record = this.admitted.get(request);
    if (this.refusals.has(request)) {
      // Refused in `close` mode: it may only learn why, then it goes.
      // Discarded: a polling session with no poll waiting would otherwise linger 30 s more.
      const timer = setTimeout(() => socket.close(true), REFUSED_SESSION_MS).unref();
      socket.once('close', () => clearTimeout(timer));
    }
    if (record === undefined) return;
    this.admitted.delete(request);
    const release = record.release;
    record.release = noop;
    socket.once('close', release);
    this.records.set(socket, record);
  }

  /**
   * `maxHttpBufferSize` (`maxPayload` unless the gateway gives its own) bounds a whole
   * socket.io event, its binary attachments included: each comes as an Engine.IO packet of
   * its own (each within `maxHttpBufferSize`), and up to ten make one event. The connection
   * of an event past the limit ends at once, before socket.io has put the event together (as
   * a packet past `maxHttpBufferSize` ends it).
   */
  private capEvents(socket: EngineConnectionLike, limit: number): void {
    /** Attachments still to come for the event being put together, and its bytes so far. */
    let expected = 0;
    let bytes = 0;
    socket.on('packet', ({ type, data }) => {
      if (type !== 'message') return;
      if (typeof data === 'string') {
        expected = attachmentsOf(data);
        bytes = expected > 0 ? Buffer.byteLength(data) : 0;
        return;
      }
      if (expected === 0) return;
      expected--;
      bytes += (data as { byteLength?: number } | undefined)?.byteLength ?? 0;
      if (bytes > limit) {
        expected = 0;
        this.log.debug(`a socket.io event of more than ${limit} bytes with its attachments: disconnected`);
        socket.close(true);
      }
    });
  }

  /** Attaches a record to a socket.io socket as it connects to a namespace. */
  private attach(socket: Socket, io: object): void {
    if (this.limiter.isTracked(socket)) return;
    const transport = socketIoTransport as RateLimitTransport;
    const record = this.records.get(socket.conn);
    const rejoin = this.namespaces.rejoined(socket);
    let state: ConnectionState;
    if (rejoin !== undefined) {
      state = this.limiter.attach(socket, rejoin, socket.request, io, transport);
    } else if (record !== undefined && record.client === undefined) {
      state = this.limiter.attach(socket, record, socket.request, io, transport);
    } else {
      // A second namespace on the same connection: a record of its own, same address.
      const address = record?.address ?? clientAddressOf(socket.request, this.limiter.options);
      state = this.limiter.track(socket, address, socket.request, io, transport);
    }
    this.limiter.orderAnswers(state);
    // Engine.IO's heartbeat ended a silent peer: counted and streamed as on ws.
    socket.once('disconnect', (reason: string) => {
      if (reason === 'ping timeout') this.limiter.pingTimedOut(socket, state);
    });
  }

  /**
   * The socket's routing, made on its first binding: one socket.io middleware opens each
   * event's answer slot in arrival order, and charges events no handler takes to the global
   * budget (passed on to the application's own listeners when within it).
   */
  private route(socket: Socket, state: ConnectionState, handlers: MessageMappingProperties[]): SocketRouting {
    let routing = this.routing.get(socket);
    if (routing === undefined) {
      // (An adapter's socket always has an order: `attach` gives it one.)
      const slots = new EventSlots(state.order ?? new AnswerOrder(0), this.limiter.options.closeGraceMs);
      routing = { events: new Set(), slots };
      socket.once('disconnect', () => slots.dispose());
      this.routing.set(socket, routing);
      const known = routing;
      const { pipeline } = this.limiter;
      const bound = pipeline.stepsFor(handlers);
      const order = state.order;
      // While one of this socket's decisions waits on the store, later events wait as received.
      const hold = (state.hold ??= new FrameHold(state, (error) => this.log.error(error)));
      // socket.io runs a socket's catch-all listeners (`onAny`) for every event before its
      // middlewares, ours among them, and so before any decision: they would hear refused
      // events, and events after the disconnect decision, which are not processed. The
      // adapter handles events as socket.io's `onevent` does (socket.io 4: the event's
      // arguments, an acknowledgement for an id, then `dispatch` through the middlewares)
      // without that call, and hears them when the limiter lets them through. socket.io's own
      // methods (`onAny`, `prependAny`, `offAny`, `listenersAny`) keep working on its array.
      // (A socket.io without those methods keeps calling them itself: nothing is heard here.)
      const eventing = socket as unknown as EventingSocket;
      const { onevent, ack, dispatch } = eventing;
      const deferred = typeof onevent === 'function' && typeof ack === 'function' && typeof dispatch === 'function';
      const listening = (): boolean => deferred && (eventing._anyListeners?.length ?? 0) > 0;
      const hear = (packet: readonly unknown[]): void => {
        if (!listening()) return;
        for (const listener of eventing._anyListeners!.slice()) listener.apply(socket, packet as unknown[]);
      };
      if (deferred) {
        eventing.onevent = function (this: EventingSocket, packet: { data?: unknown[]; id?: unknown }): void {
          // Once the limiter has decided to disconnect, later events are not processed.
          if (state.closing) return;
          const args = packet.data ?? [];
          if (packet.id !== null && packet.id !== undefined) args.push(ack.call(this, packet.id));
          dispatch.call(this, args);
        };
        // The adapter's guard calls this with a routed event's handler arguments as it lets
        // the event through: its slot knows the packet.
        state.onAdmitted = (args) => {
          const slot = answerSlotFromArgs(args);
          const heard = slot?.heard;
          if (heard === undefined) return;
          slot!.heard = undefined;
          heard();
        };
      }
      /** Routed events passed on whose handler (and guard) has not run yet. */
      let routedInTransit = 0;
      const inTransit = (): void => {
        routedInTransit--;
        state.waiting--;
        hold.settled();
      };
      const passOn = (packet: Packet, next: (error?: Error) => void): void => {
        // Once the limiter has decided to disconnect, later events are not processed.
        if (state.closing) return;
        // A number is its digits to socket.io's emitter (`42[5,...]` reaches a handler of '5').
        const event = typeof packet[0] === 'number' ? String(packet[0]) : packet[0];
        const last = packet[packet.length - 1];
        const slot = order?.open();
        if (typeof event === 'string' && known.events.has(event)) {
          if (slot !== undefined) known.slots.add(event, packet[1], slot);
          // Heard when a guard of ours lets it through; an event no guard of ours decides
          // (as far as the module knows) is heard now, before its handler, as socket.io would.
          if (listening()) {
            if (slot !== undefined && bound.guarded?.has(event) === true) slot.heard = () => hear(packet);
            else hear(packet);
          }
          // socket.io emits it to its handler (whose guard decides) on the next tick: until
          // then it counts as waiting, ended on a tick queued after socket.io's, so an app
          // middleware that holds it back or drops it holds no later event for ever.
          state.waiting++;
          routedInTransit++;
          try {
            return next();
          } finally {
            process.nextTick(inTransit);
          }
        }
        if (slot !== undefined && typeof last === 'function') slot.ack = last as (answer: unknown) => void;
        const id = typeof packet[1] === 'function' ? undefined : idOf(packet[1]);
        // Within the budget: on to the application's listeners, which socket.io calls on a
        // tick queued by `next`; the slot ends on a tick after it.
        const admitted = (done: () => void): void => {
          try {
            hear(packet);
            next();
          } finally {
            process.nextTick(done);
          }
        };
        const decide = (): void => pipeline.runUnrouted(socket, state, 'UNKNOWN_EVENT', id, bound, slot, admitted);
        // Routed events before it still on their way to their guard (a released frame hold
        // runs up to 64 events at once): decided after them, on a tick queued behind theirs,
        // so decisions keep arrival order (decided at once, it took the budget, the refusal
        // and the violation of an earlier event, and was passed on after the close).
        if (routedInTransit > 0) process.nextTick(decide);
        else decide();
      };
      /** Passes a packet on now, or once the frame hold opens. */
      const screen = (packet: Packet, next: (error?: Error) => void): void => {
        if (hold.open) passOn(packet, next);
        else hold.add(() => passOn(packet, next));
      };
      socket.use(screen);
      // Acknowledgement packets skip socket.io's middlewares: one answering an emit of the
      // server's goes through, late too (after its timeout dropped it: the last 64 ids
      // dropped are remembered); one naming an id the server never used (socket.io drops
      // it, as NestJS drops an event no handler takes) is charged as such an event.
      const acking = socket as unknown as AckingSocket;
      const onack = acking.onack;
      const acks = acking.acks;
      if (typeof onack === 'function' && acks instanceof Map) {
        let dropped: Set<unknown> | undefined;
        acks.delete = function (this: Map<unknown, unknown>, id: unknown): boolean {
          if (this.has(id)) {
            dropped ??= new Set();
            dropped.add(id);
            if (dropped.size > LATE_ACKS) dropped.delete(dropped.values().next().value);
          }
          return Map.prototype.delete.call(this, id);
        };
        acking.onack = function (this: AckingSocket, packet: { id?: unknown }): void {
          if (acks.has(packet.id) || dropped?.delete(packet.id) === true) return onack.call(this, packet);
          screen([undefined as unknown as string], () => onack.call(acking, packet));
        };
      }
    }
    for (const handler of handlers) routing.events.add(handler.message as string);
    return routing;
  }

  /** The server's heartbeat: socket.io pings by itself, so it only cuts off slow consumers. */
  private startHeartbeat(io: object): void {
    const transport = socketIoTransport as RateLimitTransport;
    const records = this.limiter.connectionsOf(io);
    const timer = startHeartbeat(records, transport, this.limiter.options, (client, state) =>
      this.limiter.cutOffIfSlow(client, state),
    );
    this.heartbeats.set(io, timer);
  }

  private stopHeartbeat(io: object): void {
    const timer = this.heartbeats.get(io);
    if (timer) clearInterval(timer);
    this.heartbeats.delete(io);
  }

  /**
   * Handshake hygiene on an HTTP server. Engine.IO takes over a server's `request`
   * listeners when it attaches, so ours is put back in front after every server it makes.
   */
  private guardHttpServer(server: HttpServer): void {
    const ours = this.httpListeners.find(([http, event]) => http === server && event === 'request');
    if (ours !== undefined) {
      server.off('request', ours[2]);
      server.prependListener('request', ours[2]);
      return;
    }
    if (this.httpListeners.some(([http]) => http === server)) return;
    this.httpListeners.push(
      ...guardHandshakes(server, this.limiter.options, (address) => this.limiter.handshakeDropped(address)),
    );
  }
}

/**
 * A socket.io socket's acknowledgement handling (socket.io 4: its `acks` by id, and `onack`,
 * which calls the one a packet names and drops any other).
 */
interface AckingSocket {
  acks?: Map<unknown, unknown>;
  onack?: (packet: { id?: unknown }) => void;
}

/** A socket.io catch-all listener (`onAny`): the event's name, then its arguments. */
type AnyListener = (...args: unknown[]) => void;

/**
 * A socket.io socket's event handling (socket.io 4: `onevent` makes the event's arguments,
 * with `ack` for an id, runs its catch-all listeners, `_anyListeners`, then `dispatch`es
 * through its middlewares to its listeners).
 */
interface EventingSocket {
  onevent?: (packet: { data?: unknown[]; id?: unknown }) => void;
  ack?: (id: unknown) => (...args: unknown[]) => void;
  dispatch?: (args: unknown[]) => void;
  _anyListeners?: AnyListener[];
}

/**
 * Ids of a socket's acknowledgements socket.io dropped (answered, or timed out) that a late
 * answer may still name without being charged.
 */
const LATE_ACKS = 64;

/** A packet as socket.io's middleware gets it: the event, its arguments, maybe an ack. */
type Packet = Parameters<Parameters<Socket['use']>[0]>[0];

/**
 * The binary attachments a socket.io packet announces: `5<n>-...` (a binary event) or
 * `6<n>-...` (a binary acknowledgement); 0 for any other packet. `<n>` is read as
 * socket.io-parser reads it (any text up to the first `-` that is a number: `010`, `1e1`
 * and `+10` are ten), so no spelling it accepts escapes the count.
 */
function attachmentsOf(packet: string): number {
  const type = packet.charCodeAt(0);
  if (type !== 53 /* 5 */ && type !== 54 /* 6 */) return 0;
  const dash = packet.indexOf('-', 1);
  if (dash < 0) return 0;
  const count = Number(packet.slice(1, dash));
  return Number.isInteger(count) && count >= 1 ? count : 0;
}

/** The socket.io server of a server or namespace. */
function ioServerOf(server: Server | Namespace): Server {
  return 'engine' in server ? server : server.server;
}
