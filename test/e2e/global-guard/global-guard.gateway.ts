import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Throttle } from '../../../lib/index.js';

/** A gateway with no limiter decorator of its own: only the globally registered guard limits it. */
@WebSocketGateway()
export class PlainGateway {
  @Throttle({ capacity: 3, refillRate: 0.01 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data: typeof data === 'number' ? data : null };
  }
}
