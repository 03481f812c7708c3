// #region gateway
import { Logger } from '@nestjs/common';
import {
  ConnectedSocket,
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  WebSocketServer,
  type OnGatewayConnection,
} from '@nestjs/websockets';
import { Throttle, WsRateLimit, WsRateLimitService } from 'nestjs-ws-rate-limit';
import type { Server, WebSocket } from 'ws';

export const PRESENCE = ['online', 'away', 'busy', 'offline'] as const;

@WebSocketGateway()
@WsRateLimit()
export class ChatGateway implements OnGatewayConnection {
  @WebSocketServer() server!: Server;
  private readonly logger = new Logger(ChatGateway.name);
  /** Connections whose invalid payload was logged already: once per connection, no log flood. */
  private readonly logged = new WeakSet<WebSocket>();

  constructor(private readonly limiter: WsRateLimitService) {}

  async handleConnection(client: WebSocket): Promise<void> {
    const { global, expensive } = this.limiter.options;
    // A rejection here would be unhandled (NestJS does not await this hook): catch it.
    const status = await this.limiter.status(client).catch(() => undefined);
    client.send(JSON.stringify({ event: 'welcome', data: { limits: { global, expensive }, status } }));
  }

  // Handlers validate what they read and answer bad input with an `error` frame that never
  // quotes it: a handler that throws would get NestJS's exception frame, which echoes it.
  @Throttle({ type: 'chat', capacity: 30, refillRate: 15 })
  @SubscribeMessage('chat')
  chat(@ConnectedSocket() client: WebSocket, @MessageBody() data: unknown) {
    const content = field(data, 'content');
    if (typeof content !== 'string' || content.length > 1000) return this.invalid(client, 'chat');
    this.broadcast(client, { event: 'chat', data: { content, timestamp: Date.now() } });
    return { event: 'ack', data: { messageType: 'chat' } };
  }

  @Throttle({ type: 'typing', capacity: 10, refillRate: 5 })
  @SubscribeMessage('typing')
  typing(@ConnectedSocket() client: WebSocket, @MessageBody() data: unknown) {
    this.broadcast(client, { event: 'typing', data: { isTyping: field(data, 'isTyping') === true } });
  }

  @Throttle({ type: 'presence', capacity: 5, refillRate: 2 })
  @SubscribeMessage('presence')
  presence(@ConnectedSocket() client: WebSocket, @MessageBody() data: unknown) {
    const status = data === undefined ? 'online' : field(data, 'status');
    if (!PRESENCE.includes(status as never)) return this.invalid(client, 'presence');
    this.broadcast(client, { event: 'presence', data: { status } });
    return undefined; // no reply
  }

  @Throttle({ type: 'search', capacity: 5, refillRate: 1, expensive: true })
  @SubscribeMessage('search')
  async search(@ConnectedSocket() client: WebSocket, @MessageBody() data: unknown) {
    const query = field(data, 'query');
    if (typeof query !== 'string' || query.length > 200) return this.invalid(client, 'search');
    await new Promise((resolve) => setTimeout(resolve, 100)); // an expensive operation
    return { event: 'search_results', data: { results: [] } };
  }

  // Status reads the store: limited like any other message (never @SkipThrottle).
  @Throttle({ type: 'get_limits', capacity: 10, refillRate: 5 })
  @SubscribeMessage('get_limits')
  async getLimits(@ConnectedSocket() client: WebSocket) {
    return { event: 'limits_status', data: await this.limiter.status(client) };
  }

  /** The answer to a payload a handler cannot use: its type and a fixed message, no input. */
  private invalid(client: WebSocket, messageType: string) {
    if (!this.logged.has(client)) {
      this.logged.add(client);
      this.logger.debug(`Invalid ${messageType} payload; later ones on this connection are not logged`);
    }
    return { event: 'error', data: { code: 'INVALID_PAYLOAD', messageType, message: USAGE[messageType] } };
  }

  private broadcast(sender: WebSocket, frame: unknown): void {
    const text = JSON.stringify(frame);
    for (const peer of this.server.clients) if (peer !== sender && peer.readyState === peer.OPEN) peer.send(text);
  }
}

/** What each message expects, as the error frame says it. */
export const USAGE: Record<string, string> = {
  chat: 'chat expects { "content": a string of at most 1000 characters }',
  presence: `presence expects { "status": one of ${PRESENCE.join(', ')} }`,
  search: 'search expects { "query": a string of at most 200 characters }',
};

function isObject(data: unknown): data is Record<string, unknown> {
  return typeof data === 'object' && data !== null && !Array.isArray(data);
}

/** An own property of a JSON object payload, or undefined (for any other payload too). */
export function field(data: unknown, name: string): unknown {
  return isObject(data) && Object.hasOwn(data, name) ? data[name] : undefined;
}
// #endregion gateway
