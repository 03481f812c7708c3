// #region gateway-io
import { Logger } from '@nestjs/common';
import {
  ConnectedSocket,
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  type OnGatewayConnection,
} from '@nestjs/websockets';
import { Throttle, WsRateLimit, WsRateLimitService } from 'nestjs-ws-rate-limit';
import type { Socket } from 'socket.io';
import { field, PRESENCE, USAGE } from './chat.gateway.js';

/**
 * The chat gateway on socket.io: the same events, limits and answers as the `ws` one
 * (`{ event, data }` replies become socket.io events), welcoming with `emit` and broadcasting
 * with `socket.broadcast`.
 */
@WebSocketGateway()
@WsRateLimit()
export class ChatIoGateway implements OnGatewayConnection {
  private readonly logger = new Logger(ChatIoGateway.name);
  /** Connections whose invalid payload was logged already: once per connection, no log flood. */
  private readonly logged = new WeakSet<Socket>();

  constructor(private readonly limiter: WsRateLimitService) {}

  async handleConnection(client: Socket): Promise<void> {
    const { global, expensive } = this.limiter.options;
    // A rejection here would be unhandled (NestJS does not await this hook): catch it.
    const status = await this.limiter.status(client).catch(() => undefined);
    client.emit('welcome', { limits: { global, expensive }, status });
  }

  @Throttle({ type: 'chat', capacity: 30, refillRate: 15 })
  @SubscribeMessage('chat')
  chat(@ConnectedSocket() client: Socket, @MessageBody() data: unknown) {
    const content = field(data, 'content');
    if (typeof content !== 'string' || content.length > 1000) return this.invalid(client, 'chat');
    client.broadcast.emit('chat', { content, timestamp: Date.now() });
    return { event: 'ack', data: { messageType: 'chat' } };
  }
  // #endregion gateway-io

  @Throttle({ type: 'typing', capacity: 10, refillRate: 5 })
  @SubscribeMessage('typing')
  typing(@ConnectedSocket() client: Socket, @MessageBody() data: unknown) {
    client.broadcast.emit('typing', { isTyping: field(data, 'isTyping') === true });
  }

  @Throttle({ type: 'presence', capacity: 5, refillRate: 2 })
  @SubscribeMessage('presence')
  presence(@ConnectedSocket() client: Socket, @MessageBody() data: unknown) {
    const status = data === undefined ? 'online' : field(data, 'status');
    if (!PRESENCE.includes(status as never)) return this.invalid(client, 'presence');
    client.broadcast.emit('presence', { status });
    return undefined; // no reply
  }

  @Throttle({ type: 'search', capacity: 5, refillRate: 1, expensive: true })
  @SubscribeMessage('search')
  async search(@ConnectedSocket() client: Socket, @MessageBody() data: unknown) {
    const query = field(data, 'query');
    if (typeof query !== 'string' || query.length > 200) return this.invalid(client, 'search');
    await new Promise((resolve) => setTimeout(resolve, 100)); // an expensive operation
    return { event: 'search_results', data: { results: [] } };
  }

  @Throttle({ type: 'get_limits', capacity: 10, refillRate: 5 })
  @SubscribeMessage('get_limits')
  async getLimits(@ConnectedSocket() client: Socket) {
    return { event: 'limits_status', data: await this.limiter.status(client) };
  }

  private invalid(client: Socket, messageType: string) {
    if (!this.logged.has(client)) {
      this.logged.add(client);
      this.logger.debug(`Invalid ${messageType} payload; later ones on this connection are not logged`);
    }
    return { event: 'error', data: { code: 'INVALID_PAYLOAD', messageType, message: USAGE[messageType] } };
  }
}
