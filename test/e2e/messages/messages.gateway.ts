import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { SkipThrottle, Throttle, WsRateLimit } from '../../../lib/index.js';

/** A gateway with one handler per behaviour under test; every handler acks. */
@WebSocketGateway()
@WsRateLimit()
export class MessagesGateway {
  @Throttle({ type: 'chat', capacity: 5, refillRate: 0.1 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ capacity: 4, refillRate: 0.1 })
  @SubscribeMessage('a')
  a(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ capacity: 4, refillRate: 0.1 })
  @SubscribeMessage('b')
  b(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'search', capacity: 10, refillRate: 10, expensive: true })
  @SubscribeMessage('search')
  search(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'quick', capacity: 2, refillRate: 10 })
  @SubscribeMessage('quick')
  quick(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'heavy', capacity: 6, refillRate: 0.1, cost: 3 })
  @SubscribeMessage('heavy')
  heavy(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @SkipThrottle()
  @SubscribeMessage('ping')
  ping(@MessageBody() data: unknown) {
    return { event: 'pong', data };
  }
}
