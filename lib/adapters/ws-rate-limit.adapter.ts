// Over 400 lines: one class, the ws adapter, whose hooks (upgrade admission, routing and
// answers, heartbeat, shutdown) share the limiter and each socket's state.
import type { INestApplicationContext } from '@nestjs/common';
import type { MessageMappingProperties } from '@nestjs/websockets';
import { WsAdapter } from '@nestjs/platform-ws';
import { STATUS_CODES, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { EMPTY, type Observable, type Subscription } from 'rxjs';
import { catchError, filter } from 'rxjs/operators';
import { WebSocketServer as WsServer } from 'ws';
import type { AnswerSlot } from '../connection/answer-order.js';
import { FrameHold } from '../connection/frame-hold.js';
import type { ConnectionState } from '../connection/connection-state.js';
import { startHeartbeat, watchPongs } from '../connection/heartbeat.js';
import { IntervalLog, VIOLATION_LOG_INTERVAL_MS } from '../metrics/interval-log.js';
import { errorText } from '../utils/error-text.js';
import { clientAddressOf, limiterFrom } from './adapter-support.js';
import { ForwardingWarning } from './forwarding-warning.js';
import { guardHandshakes, handshakeCompleted, unguardHandshakes, type ServerListener } from './handshake-hygiene.js';
import { REFUSALS } from './refusals.js';
import { WsRateLimitService, type ConnectionAdmission } from '../services/ws-rate-limit.service.js';
import { messageIdOf, messageMeta, type MessageId } from '../utils/message-id.js';
import { wsTransport } from '../transports/ws-transport.js';
import type { RateLimitTransport } from '../transports/transport.js';
import type { UnroutedCode } from '../protocol/rate-limit-protocol.js';
import { CLOSE_POLICY_VIOLATION, OPEN } from '../ws-rate-limit.constants.js';
import type { WebSocket, WebSocketServer } from './ws-types.js';

/** The port NestJS uses for "share the application's HTTP server". */
const APP_SERVER_PORT = 0;

/**
 * How long a connection refused in `close` mode may take to answer the close frame before
 * it is terminated (ws itself would wait its `closeTimeout`, 30 s).
 */
const REFUSAL_CLOSE_GRACE_MS = 1000;

/** ws's `readyState` of a closed socket. */
const CLOSED = 3;

/** What the adapter learned about an upgrade before the WebSocket existed. */
interface Upgrade {
  /** The connection's record, made at admission. */
  readonly connection: ConnectionState;
  /** Set in `close` refusal mode: the connection is upgraded only to be closed. */
  readonly refusal?: string;
}

type VerifyCallback = (result: boolean, code?: number, message?: string, headers?: Record<string, string>) => void;
interface VerifyInfo {
  origin: string;
  secure: boolean;
  req: IncomingMessage;
}
/** What platform-ws hands a message parser: text frames as strings, binary ones as received. */
type WsData = string | Buffer | ArrayBuffer | Buffer[];
type MessageParser = (data: WsData) => unknown;
type UserVerifyClient = ((info: VerifyInfo) => boolean) | ((info: VerifyInfo, done: VerifyCallback) => void);

/**
 * The platform-ws adapter with the limiter at every level a WebSocket server is exposed:
 *
 * - before the handshake completes: the per-IP connection rate and open-connection cap
 *   (HTTP 429 + `Retry-After`, no WebSocket allocated, no gateway code run), client
 *   addresses from trusted proxies only, a cap on TCP connections per peer address (trusted
 *   proxies exempt) still sending their request, and a handshake timeout;
 * - on every frame: the payload limit (1009, after inflation), and frames NestJS would
 *   drop silently (rejected by the message parser, events with no handler) charged to the
 *   connection's global budget;
 * - for the connection's life: a ping heartbeat that ends dead peers, and open-connection
 *   slots given back on every kind of end.
 *
 * Its settings are the module's options (`WS_RATE_LIMIT_*` variables).
 * @example
 * const app = await NestFactory.create(AppModule);
 * app.useWebSocketAdapter(new WsRateLimitAdapter(app));
 */
export class WsRateLimitAdapter extends WsAdapter {
  protected readonly limiter: WsRateLimitService;
  private readonly upgrades = new WeakMap<IncomingMessage, Upgrade>();
  /** Listeners this adapter put on HTTP servers, taken off again by `dispose`. */
  private readonly httpListeners: ServerListener[] = [];
  private readonly guardedServers = new WeakSet<object>();
  /** HTTP servers platform-ws made here for gateways on ports of their own, with a path. */
  private readonly ownHttpServers = new Set<HttpServer>();
  private readonly heartbeats = new Map<WebSocketServer, NodeJS.Timeout>();
  /** Each socket's handlers by event, from every gateway bound to it. */
  private readonly routing = new WeakMap<WebSocket, Map<string, MessageMappingProperties[]>>();
  /** platform-ws's own parser, to tell whether `setMessageParser` replaced it. */
  private readonly defaultMessageParser: MessageParser;
  /** Set once a custom message parser has thrown (logged as an error once, then bounded debug). */
  private parserLog: IntervalLog | undefined;
  /** Warns once when forwarding headers come from peers that are not trusted proxies. */
  private readonly forwarding: ForwardingWarning;

  constructor(app: INestApplicationContext) {
    super(app);
    const limiter = (this.limiter = limiterFrom(app, 'WsRateLimitAdapter'));
    this.defaultMessageParser = this.messageParser;
    this.forwarding = new ForwardingWarning(limiter.options);
    if (!('maxFragments' in new WsServer({ noServer: true }).options)) {
      throw new Error(
        'nestjs-ws-rate-limit: the installed "ws" predates 8.21.0 and lacks its fragment-flood limits; install ws@^8.21.0',
      );
    }
  }

  override create(
    port: number,
    options: Record<string, unknown> & { namespace?: string; server?: unknown; path?: string } = {},
  ): WebSocketServer {
    const { server, path, namespace, ...gatewayOptions } = options;
    if (namespace) return super.create(port, options) as WebSocketServer;
    if (server) return server as WebSocketServer;
    const { maxPayload, perMessageDeflate } = this.limiter.options;
    const userVerify = gatewayOptions.verifyClient as UserVerifyClient | undefined;
    const wsOptions = {
      maxPayload,
      perMessageDeflate,
      ...gatewayOptions,
      verifyClient: (info: VerifyInfo, done: VerifyCallback) =>
        this.verifyUpgrade(info.req, (allowed, ...refusal) => {
          // Ours runs first; a gateway's own verifyClient then has its say. A slot taken
          // here is given back by the socket's close whichever of the two refuses.
          if (!allowed || !userVerify) return done(allowed, ...refusal);
          this.runUserVerify(userVerify, info, done);
        }),
    };
    let wsServer: WebSocketServer;
    if (port === APP_SERVER_PORT && this.httpServer) {
      this.ensureHttpServerExists(port, this.httpServer);
      this.guardHttpServer(this.httpServer as HttpServer);
      wsServer = this.bindErrorHandler(new WsServer({ noServer: true, ...wsOptions }));
      this.addWsServerToRegistry(wsServer, port, path as string);
    } else if (path && port !== APP_SERVER_PORT) {
      const httpServer = this.ensureHttpServerExists(port);
      if (httpServer) {
        // platform-ws makes it with no request handler: a plain HTTP request would be held
        // open, unanswered, for ever (and hold the app's close). Answered as ws answers one
        // on a port of its own.
        if (httpServer.listenerCount('request') === 0) httpServer.on('request', upgradeRequired);
        this.ownHttpServers.add(httpServer);
        this.guardHttpServer(httpServer);
        httpServer.listen(port);
      } else {
        this.guardHttpServer(this.httpServersRegistry.get(port) as HttpServer);
      }
      wsServer = this.bindErrorHandler(new WsServer({ noServer: true, ...wsOptions }));
      this.addWsServerToRegistry(wsServer, port, path);
    } else {
      wsServer = this.bindErrorHandler(new WsServer({ port, path: path as string, ...wsOptions }));
      const own = (wsServer as unknown as { _server?: HttpServer })._server;
      if (own) this.guardHttpServer(own);
      // On a port of its own, ws binds its `connection` emit as it builds the server, before
      // `instrument` hooks `emit`: without this its sockets were never attached (no answer
      // order, no heartbeat, no `close` refusal). Its upgrade listener is the only caller.
      const handleUpgrade = wsServer.handleUpgrade.bind(wsServer);
      const server = wsServer;
      wsServer.handleUpgrade = (request, socket, head) =>
        handleUpgrade(request, socket, head, (client, upgraded) => server.emit('connection', client, upgraded));
    }
    this.instrument(wsServer);
    return wsServer;
  }

  /**
   * Routes frames like platform-ws does, except that frames it would drop without a word
   * (rejected by the message parser, no handler) are charged and answered. The parser gets
   * what platform-ws gives it: a text frame as a string, a binary frame as received.
   */
  override bindMessageHandlers(
    client: WebSocket,
    handlers: MessageMappingProperties[],
    transform: (data: unknown) => Observable<unknown>,
  ): void {
    // Gateways sharing a server are bound one after the other on each socket: one routing
    // table and one listener for them all (a listener per gateway parsed every frame once
    // per gateway, answering UNKNOWN_EVENT and charging the global budget in each that
    // lacked its handler).
    const known = this.routing.get(client);
    const byEvent = known ?? new Map<string, MessageMappingProperties[]>();
    // An event two gateways handle runs both handlers, as on platform-ws.
    for (const handler of handlers) {
      const event = handler.message as string;
      byEvent.set(event, [...(byEvent.get(event) ?? []), handler]);
    }
    if (known !== undefined) return;
    this.routing.set(client, byEvent);
    const state = this.limiter.connectionOf(client);
    const { pipeline } = this.limiter;
    // Frames no handler takes go through the steps of the gateway's guard.
    const bound = pipeline.stepsFor(handlers);
    const unrouted = (code: UnroutedCode, id: MessageId | undefined, slot: AnswerSlot | undefined): void =>
      pipeline.runUnrouted(client, state, code, id, bound, slot);
    // Answers go out in the order messages came (see AnswerOrder), when this adapter attached the socket.
    const order = state.order;
    // What handlers return runs until the socket closes, as platform-ws's takeUntil(close$).
    const running = new Set<Subscription>();
    client.once('close', () => {
      for (const subscription of running) subscription.unsubscribe();
      running.clear();
    });
    // While one of this socket's decisions waits on the store, later frames wait as received.
    const hold = (state.hold ??= new FrameHold(state, (error) => this.logger.error(error)));
    client.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
      if (hold.open) onMessage(data, isBinary);
      else hold.add(() => onMessage(data, isBinary));
    });
    const onMessage = (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void => {
      // Once the limiter has decided to close, later messages are not processed.
      if (state.closing) return;
      const slot = order?.open();
      let message: { event?: unknown; data?: unknown; id?: unknown } | void;
      try {
        message = (this.messageParser as MessageParser)(isBinary ? data : data.toString()) as typeof message;
      } catch (error) {
        // A custom parser that throws is worth a log, once: it may throw on client input (a
        // schema check), and a line per frame would be a log-flood target. The default one
        // throws on client input only: not logged.
        if (this.messageParser !== this.defaultMessageParser) this.parserThrew(error);
        return unrouted('INVALID_MESSAGE', undefined, slot);
      }
      if (message === null || typeof message !== 'object') return unrouted('INVALID_MESSAGE', undefined, slot);
      const id = messageIdOf(message);
      if (typeof message.event !== 'string') return unrouted('INVALID_MESSAGE', id, slot);
      const routed = byEvent.get(message.event);
      if (!routed) return unrouted('UNKNOWN_EVENT', id, slot);
      const answered = (): void => {
        if (slot !== undefined) order!.done(slot);
      };
      for (const handler of routed) run(handler, message, id, slot, answered);
    };
    const run = (
      handler: MessageMappingProperties,
      message: { event?: unknown; data?: unknown },
      id: MessageId | undefined,
      slot: AnswerSlot | undefined,
      answered: () => void,
    ): void => {
      let response$: Observable<unknown>;
      try {
        // The id and the answer slot ride as an extra argument (after the event), where
        // WsThrottleGuard and WsRateLimitFilter find them.
        const result: unknown =
          id === undefined && slot === undefined
            ? handler.callback(message.data, message.event)
            : handler.callback(message.data, message.event, messageMeta(id, slot));
        // Answered at its first reply, or when its stream ends (or fails) without one: not
        // when the handler returns an observable, which is all NestJS returns once any
        // interceptor applies (the handler has not even run then).
        response$ = transform(result);
      } catch {
        // As platform-ws: a synchronous throw must not stop this client's later messages.
        return answered();
      }
      if (client.readyState === CLOSED) return answered();
      const subscription = response$
        .pipe(
          filter((response) => response !== undefined && response !== null),
          catchError((error: unknown) => {
            this.logger.error(error);
            return EMPTY;
          }),
        )
        .subscribe({
          // Replies are never held; the first one answers the message.
          next: (response) => {
            // A reader over maxBufferedBytes is cut off rather than written to (C-14).
            if (client.readyState === OPEN && !this.limiter.cutOffIfSlow(client, state)) {
              let frame: string;
              try {
                frame = JSON.stringify(response);
              } catch (error) {
                // A reply JSON cannot write (a cycle, a BigInt, nesting past the stack): logged,
                // not thrown out of the subscription (rxjs would rethrow it on a timer).
                this.logger.error(error);
                return answered();
              }
              client.send(frame);
            }
            answered();
          },
          complete: answered,
        });
      if (subscription.closed) return;
      running.add(subscription);
      subscription.add(() => running.delete(subscription));
    };
  }

  override async close(server: WebSocketServer): Promise<void> {
    // Sockets closing meanwhile (a 1008 waiting for the peer's close frame) are terminated
    // below; the close resolves once their `close` events (and so the gateway's
    // handleDisconnect) have run, not before: ws's own server may report closed first.
    const ending = new Set<WebSocket>(server.clients ?? []);
    for (const state of this.limiter.connectionsOf(server)) ending.add(state.client as WebSocket);
    this.stopHeartbeat(server);
    // platform-ws terminates `server.clients`, which `clientTracking: false` leaves undefined.
    if (!server.clients) {
      for (const state of [...this.limiter.connectionsOf(server)]) (state.client as WebSocket).terminate();
    }
    this.limiter.dropConnections(server);
    // On a port of its own, ws closes the HTTP server it made, which waits for every TCP
    // connection on it: one that has sent nothing yet would hold the app's close until its
    // handshake timeout (for ever without one). Its clients are terminated by then.
    const own = (server as unknown as { _server?: HttpServer | null })._server ?? undefined;
    const closing = super.close(server);
    own?.closeAllConnections();
    await closing;
    await allClosed([...ending]);
  }

  /**
   * Also takes this adapter's listeners off the HTTP servers: an `upgrade` listener left
   * behind would keep Node from destroying upgrades that arrive during shutdown, and such
   * sockets would hold `server.close()` open.
   */
  override async dispose(): Promise<void> {
    unguardHandshakes(this.httpListeners);
    // platform-ws closes the servers it made for own ports (ours after `close`): connections
    // still on them, not WebSockets (those are ended), would hold that close open.
    const disposing = super.dispose();
    for (const httpServer of this.ownHttpServers) httpServer.closeAllConnections();
    this.ownHttpServers.clear();
    await disposing;
  }

  /** Decides an upgrade before the WebSocket exists. */
  private verifyUpgrade(request: IncomingMessage, done: VerifyCallback): void {
    this.forwarding.check(request);
    const address = clientAddressOf(request, this.limiter.options);
    if (address === undefined) {
      // The socket is gone or has no address: no shared "unknown" budget, no upgrade.
      done(false, 400, 'Client address unknown');
      return;
    }
    let admission: ReturnType<WsRateLimitService['admitConnection']>;
    try {
      admission = this.limiter.admitConnection(address, request);
    } catch (error) {
      this.logger.error(error);
      done(false, 503, 'Service Unavailable');
      return;
    }
    const settle = (settled: ConnectionAdmission): void => {
      if (request.socket.destroyed) {
        // Gone while the store decided: give the slot back now, its close has passed.
        settled.release();
        done(false, 400, 'Bad Request');
        return;
      }
      if (settled.accepted) {
        this.upgrades.set(request, { connection: settled.connection });
        // The TCP socket's end is the one event every path reaches: clean close, error,
        // reset, ping timeout, server shutdown, or a handshake that never completed.
        request.socket.once('close', settled.release);
        done(true);
        return;
      }
      this.refuse(request, settled, done);
    };
    if (admission instanceof Promise) {
      admission.then(settle, (error: unknown) => {
        this.logger.error(error);
        done(false, 503, 'Service Unavailable');
      });
    } else {
      settle(admission);
    }
  }

  /**
   * A gateway's own verifyClient, in either of ws's forms. One that throws is answered with
   * a 500 (and logged) instead of leaving the upgrade unanswered: after an asynchronous
   * store decision the throw would otherwise be an unhandled rejection, and the socket would
   * hold its connection slot until the peer gave up.
   */
  private runUserVerify(verify: UserVerifyClient, info: VerifyInfo, done: VerifyCallback): void {
    let answered = false;
    const answer: VerifyCallback = (...args) => {
      if (answered) return;
      answered = true;
      done(...args);
    };
    try {
      if (verify.length >= 2) verify(info, answer);
      else answer((verify as (info: VerifyInfo) => boolean)(info));
    } catch (error) {
      this.logger.error(error);
      answer(false, 500);
    }
  }

  private refuse(request: IncomingMessage, admission: ConnectionAdmission, done: VerifyCallback): void {
    const { status, reason } = REFUSALS[admission.reason!];
    if (this.limiter.options.connectionRefusal === 'close') {
      this.upgrades.set(request, { connection: admission.connection, refusal: reason });
      done(true);
      return;
    }
    const headers: Record<string, string> =
      admission.retryAfter > 0 ? { 'Retry-After': String(Math.max(1, Math.ceil(admission.retryAfter / 1000))) } : {};
    done(false, status, STATUS_CODES[status], headers);
  }

  /**
   * Logs a custom message parser's throw: an error the first time, then at debug level at
   * most one line per 10 s (client input can make it throw on every frame).
   */
  private parserThrew(error: unknown): void {
    if (this.parserLog === undefined) {
      this.parserLog = new IntervalLog(VIOLATION_LOG_INTERVAL_MS, (line) => this.logger.debug(line));
      this.logger.error(
        `the message parser threw (${errorText(error)}): the frame is answered INVALID_MESSAGE; later throws are logged at debug level, at most one line per 10 s`,
        error instanceof Error ? error.stack : undefined,
      );
      return;
    }
    this.parserLog.note(() => `the message parser threw: ${errorText(error)}`);
  }

  /** Hooks a server's `connection` event ahead of NestJS, and starts its heartbeat. */
  private instrument(server: WebSocketServer): void {
    const emit = server.emit.bind(server);
    const transport = wsTransport as RateLimitTransport;
    server.emit = ((event: string | symbol, ...args: unknown[]): boolean => {
      if (event !== 'connection') return emit(event, ...args);
      const [client, request] = args as [WebSocket, IncomingMessage];
      // The upgrade's exchange is over: its pending-handshake slot and timeout end here.
      handshakeCompleted(request.socket);
      const upgrade = this.upgrades.get(request);
      this.upgrades.delete(request);
      if (upgrade?.refusal !== undefined) {
        // `close` refusal mode: the client learns why, the gateway never hears of it. A peer
        // that does not answer the close frame is cut off soon, not after ws's closeTimeout.
        client.on('error', () => undefined);
        client.close(CLOSE_POLICY_VIOLATION, upgrade.refusal);
        const cutOff = setTimeout(() => client.terminate(), REFUSAL_CLOSE_GRACE_MS).unref();
        client.once('close', () => clearTimeout(cutOff));
        return true;
      }
      // The record made at admission; a server this adapter did not verify makes one here.
      const state = this.limiter.attach(client, upgrade?.connection, request, server, transport);
      this.limiter.orderAnswers(state);
      watchPongs(state, transport);
      return emit(event, ...args);
    }) as typeof server.emit;
    this.startHeartbeat(server, transport);
  }

  /** The server's heartbeat (see `startHeartbeat`), stopped with the server. */
  private startHeartbeat(server: WebSocketServer, transport: RateLimitTransport): void {
    const records = this.limiter.connectionsOf(server);
    const timer = startHeartbeat(
      records,
      transport,
      this.limiter.options,
      (client, state) => this.limiter.cutOffIfSlow(client, state),
      (client, state) => this.limiter.pingTimedOut(client, state),
    );
    this.heartbeats.set(server, timer);
    server.once('close', () => this.stopHeartbeat(server));
  }

  private stopHeartbeat(server: WebSocketServer): void {
    const timer = this.heartbeats.get(server);
    if (timer) clearInterval(timer);
    this.heartbeats.delete(server);
  }

  /** Handshake hygiene on an HTTP server (once per server): see `guardHandshakes`. */
  private guardHttpServer(server: HttpServer | undefined): void {
    if (!server || this.guardedServers.has(server)) return;
    this.guardedServers.add(server);
    this.httpListeners.push(
      ...guardHandshakes(server, this.limiter.options, (address) => this.limiter.handshakeDropped(address)),
    );
  }
}

/** Answers a plain HTTP request on a port that serves only WebSocket upgrades, as ws does. */
function upgradeRequired(_request: IncomingMessage, response: ServerResponse): void {
  const body = STATUS_CODES[426]!;
  response.writeHead(426, { 'Content-Length': Buffer.byteLength(body), 'Content-Type': 'text/plain' });
  response.end(body);
}

/** The longest `close` waits for terminated sockets to report closed. */
const CLOSE_EVENTS_WAIT_MS = 1000;

/** Resolves when every client has emitted `close` (terminated: at once), or after a bound. */
function allClosed(clients: readonly WebSocket[]): Promise<void> {
  const open = clients.filter((client) => client.readyState !== CLOSED);
  if (open.length === 0) return Promise.resolve();
  return new Promise((resolve) => {
    let left = open.length;
    const done = (): void => {
      if (--left === 0) {
        clearTimeout(bound);
        resolve();
      }
    };
    const bound = setTimeout(resolve, CLOSE_EVENTS_WAIT_MS).unref();
    for (const client of open) client.once('close', done);
  });
}
