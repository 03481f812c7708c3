/**
 * `nestjs-ws-rate-limit/client`: a dependency-free WebSocket client for browsers and Node
 * that understands the server's `rate_limit` frames.
 */
export { RateLimitedClient } from './rate-limited-client.js';
export { parseRateLimitFrame } from './rate-limit-frame.js';
export type { Listener } from './typed-emitter.js';
export type {
  AckMatch,
  ClientState,
  DeclaredLimits,
  DropEvent,
  DropReason,
  LimitSpec,
  MessageId,
  OutboundMessage,
  OverflowPolicy,
  RateLimitCode,
  RateLimitInfo,
  RateLimitNotice,
  RateLimitedClientEvents,
  RateLimitedClientOptions,
  ReconnectEvent,
  SocketCloseEvent,
  SocketMessageEvent,
  UndeliveredEvent,
  UndeliveredPolicy,
  UndeliveredReason,
  WebSocketConstructorLike,
  WebSocketFactory,
  WebSocketLike,
} from './types.js';
export { isSocketIoAck, socketIoFactory } from './socket-io.js';
export type {
  SocketIoConnect,
  SocketIoConnectOptions,
  SocketIoEmitterLike,
  SocketIoFactoryOptions,
  SocketIoSocketLike,
} from './socket-io.js';
