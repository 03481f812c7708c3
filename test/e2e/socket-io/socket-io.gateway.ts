import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { Socket } from 'socket.io';
import { SkipThrottle, Throttle, WsRateLimit } from '../../../lib/index.js';

/** Events each handler took, by event (counted on the server). */
export const handled = new Map<string, number>();

function count(event: string): void {
  handled.set(event, (handled.get(event) ?? 0) + 1);
}

/** A socket.io gateway: `chat` replies with an event, `ask` through the acknowledgement. */
@WebSocketGateway()
@WsRateLimit()
export class SocketIoGateway {
  @Throttle({ type: 'chat', capacity: 5, refillRate: 0.1 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    count('chat');
    return { event: 'ack', data };
  }

  @Throttle({ type: 'ask', capacity: 3, refillRate: 0.1 })
  @SubscribeMessage('ask')
  ask(@MessageBody() data: unknown) {
    count('ask');
    return { answer: data };
  }

  @Throttle({ type: 'slow', capacity: 30, refillRate: 0.1 })
  @SubscribeMessage('slow')
  async slow(@MessageBody() data: { ms?: number }) {
    await new Promise((resolve) => setTimeout(resolve, data?.ms ?? 50));
    count('slow');
    return { event: 'slow-done', data };
  }

  @SkipThrottle()
  @SubscribeMessage('ping')
  ping(@ConnectedSocket() socket: Socket, @MessageBody() data: unknown) {
    count('ping');
    return { event: 'pong', data: { data, id: socket.id } };
  }
}
