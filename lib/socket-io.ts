/**
 * `nestjs-ws-rate-limit/socket.io`: the limiter on NestJS's socket.io driver
 * (`@nestjs/platform-socket.io`). A subpath of its own, so that `ws` users need not install
 * socket.io; everything else (module, decorators, guard, stores) comes from the main entry.
 */
export { WsRateLimitIoAdapter } from './adapters/ws-rate-limit-io.adapter.js';
export { socketIoTransport, isSocketIoSocket } from './transports/socket-io-transport.js';
export type { SocketIoSocketLike, EngineSocketLike } from './transports/socket-io-transport.js';
export { RATE_LIMIT_DISCONNECT_EVENT } from './protocol/rate-limit-protocol.js';
export type { RateLimitDisconnectInfo } from './protocol/rate-limit-protocol.js';
