import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { WebSocket } from 'ws';
import { Throttle, WsRateLimit } from '../../../lib/index.js';

/** Handlers for the abuse cases: two independent types, and one that pushes big frames. */
@WebSocketGateway()
@WsRateLimit()
export class AbuseGateway {
  @Throttle({ type: 'typing', capacity: 5, refillRate: 2 })
  @SubscribeMessage('typing')
  typing() {
    return undefined;
  }

  @Throttle({ type: 'chat', capacity: 5, refillRate: 2 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  /** Pushes `count` frames of `size` bytes, bypassing the limiter (a server streaming data). */
  @Throttle({ capacity: 1000, refillRate: 1000 })
  @SubscribeMessage('blast')
  blast(@ConnectedSocket() client: WebSocket, @MessageBody() data: { count: number; size: number }) {
    const chunk = 'x'.repeat(data.size);
    for (let i = 0; i < data.count; i++) client.send(chunk);
  }
}
