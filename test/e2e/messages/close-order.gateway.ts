import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { NEVER } from 'rxjs';
import { Throttle, WsRateLimit } from '../../../lib/index.js';
import { later } from '../../support/ws-client.js';

/** Counts the handlers that ran, to tell processed messages from refused ones. */
export const handled = { chat: 0, search: 0 };

/** The sample's shapes: chat (30 burst), a slow search, presence (1 burst), a handler that stalls. */
@WebSocketGateway()
@WsRateLimit()
export class CloseOrderGateway {
  @Throttle({ type: 'chat', capacity: 30, refillRate: 0.01 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    handled.chat++;
    return { event: 'ack', data };
  }

  @Throttle({ type: 'search', capacity: 10, refillRate: 0.01 })
  @SubscribeMessage('search')
  async search(@MessageBody() data: unknown) {
    handled.search++;
    return later(100, { event: 'search_results', data });
  }

  @Throttle({ type: 'presence', capacity: 1, refillRate: 0.01 })
  @SubscribeMessage('presence')
  presence(@MessageBody() data: unknown) {
    return { event: 'presence_ack', data };
  }

  /** A subscription: a stream that has nothing to say yet. */
  @Throttle({ type: 'watch', capacity: 10, refillRate: 0.01 })
  @SubscribeMessage('watch')
  watch() {
    return NEVER;
  }

  @Throttle({ type: 'stall', capacity: 10, refillRate: 0.01 })
  @SubscribeMessage('stall')
  stall(@MessageBody() data: unknown) {
    return later(10_000, { event: 'stalled', data });
  }
}
