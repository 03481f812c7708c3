// #region gateway
import {
  ConnectedSocket,
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  WebSocketServer,
  type OnGatewayConnection,
} from '@nestjs/websockets';
import { SkipThrottle, Throttle, WsRateLimit, WsRateLimitService } from 'nestjs-ws-rate-limit';
import type { Server, WebSocket } from 'ws';

@WebSocketGateway()
@WsRateLimit()
export class ChatGateway implements OnGatewayConnection {
  @WebSocketServer() server!: Server;

  constructor(private readonly limiter: WsRateLimitService) {}

  async handleConnection(client: WebSocket): Promise<void> {
    const { global, expensive } = this.limiter.options;
    // A rejection here would be unhandled (NestJS does not await this hook): catch it.
    const status = await this.limiter.status(client).catch(() => undefined);
    client.send(JSON.stringify({ event: 'welcome', data: { limits: { global, expensive }, status } }));
  }

  @Throttle({ type: 'chat', capacity: 30, refillRate: 15 })
  @SubscribeMessage('chat')
  chat(@ConnectedSocket() client: WebSocket, @MessageBody() data: { content?: unknown }) {
    this.broadcast(client, { event: 'chat', data: { content: data?.content, timestamp: Date.now() } });
    return { event: 'ack', data: { messageType: 'chat' } };
  }

  @Throttle({ type: 'typing', capacity: 10, refillRate: 5 })
  @SubscribeMessage('typing')
  typing(@ConnectedSocket() client: WebSocket, @MessageBody() data: { isTyping?: unknown }) {
    this.broadcast(client, { event: 'typing', data: { isTyping: data?.isTyping === true } });
  }

  @Throttle({ type: 'presence', capacity: 5, refillRate: 2 })
  @SubscribeMessage('presence')
  presence(@ConnectedSocket() client: WebSocket, @MessageBody() data: { status?: unknown }) {
    this.broadcast(client, { event: 'presence', data: { status: String(data?.status ?? 'online').slice(0, 32) } });
  }

  @Throttle({ type: 'search', capacity: 5, refillRate: 1, expensive: true })
  @SubscribeMessage('search')
  async search(@MessageBody() data: { query?: unknown }) {
    await new Promise((resolve) => setTimeout(resolve, 100)); // an expensive operation
    return { event: 'search_results', data: { query: String(data?.query ?? '').slice(0, 200), results: [] } };
  }

  @SkipThrottle()
  @SubscribeMessage('get_limits')
  async getLimits(@ConnectedSocket() client: WebSocket) {
    return { event: 'limits_status', data: await this.limiter.status(client) };
  }

  private broadcast(sender: WebSocket, frame: unknown): void {
    const text = JSON.stringify(frame);
    for (const peer of this.server.clients) if (peer !== sender && peer.readyState === peer.OPEN) peer.send(text);
  }
}
// #endregion gateway
