import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Throttle, WsRateLimit } from '../../../lib/index.js';

/** Chat (5 burst, slow refill) and an essential acknowledgement. */
@WebSocketGateway()
@WsRateLimit()
export class OperationsGateway {
  @Throttle({ type: 'chat', capacity: 5, refillRate: 0.1 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ type: 'receipt', capacity: 50, refillRate: 50, essential: true })
  @SubscribeMessage('receipt')
  receipt(@MessageBody() data: unknown) {
    return { event: 'receipt', data };
  }
}
