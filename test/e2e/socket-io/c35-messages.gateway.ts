import { MessageBody, SubscribeMessage, WebSocketGateway, type OnGatewayConnection } from '@nestjs/websockets';
import type { Socket } from 'socket.io';
import { Throttle, WsRateLimit } from '../../../lib/index.js';
import { later } from '../../support/ws-client.js';

/**
 * Handlers that ran, by event (counted on the server, to tell processed events from refused
 * ones); `<event>:settled` counts slow handlers that finished.
 */
export const handled = new Map<string, number>();

/** Server-side sockets, in connection order (for answering a socket after it is gone). */
export const serverSockets: Socket[] = [];

function count(event: string): void {
  handled.set(event, (handled.get(event) ?? 0) + 1);
}

/**
 * The shapes of the ws close-order gateway (test/e2e/messages/close-order.gateway.ts) on
 * socket.io: chat (30 burst), a slow search (100 ms), presence (1 burst), a handler that
 * stalls, and `ask` / `slow_ask`, which answer through the acknowledgement.
 */
@WebSocketGateway()
@WsRateLimit()
export class C35MessagesGateway implements OnGatewayConnection {
  handleConnection(socket: Socket) {
    serverSockets.push(socket);
  }

  @Throttle({ type: 'chat', capacity: 30, refillRate: 0.01 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    count('chat');
    return { event: 'ack', data };
  }

  @Throttle({ type: 'search', capacity: 10, refillRate: 0.01 })
  @SubscribeMessage('search')
  async search(@MessageBody() data: unknown) {
    count('search');
    const reply = await later(100, { event: 'search_results', data });
    count('search:settled');
    return reply;
  }

  @Throttle({ type: 'presence', capacity: 1, refillRate: 0.01 })
  @SubscribeMessage('presence')
  presence(@MessageBody() data: unknown) {
    count('presence');
    return { event: 'presence_ack', data };
  }

  @Throttle({ type: 'ask', capacity: 5, refillRate: 0.01 })
  @SubscribeMessage('ask')
  ask(@MessageBody() data: unknown) {
    count('ask');
    return { answer: data };
  }

  /** Answers through the acknowledgement after 100 ms. */
  @Throttle({ type: 'slow_ask', capacity: 5, refillRate: 0.01 })
  @SubscribeMessage('slow_ask')
  async slowAsk(@MessageBody() data: unknown) {
    count('slow_ask');
    const answer = await later(100, { answer: data });
    count('slow_ask:settled');
    return answer;
  }

  /** Never answers in time (an admitted handler the close grace has to give up on). */
  @Throttle({ type: 'stall', capacity: 10, refillRate: 0.01 })
  @SubscribeMessage('stall')
  stall(@MessageBody() data: unknown) {
    count('stall');
    return later(10_000, { event: 'stalled', data });
  }
}
