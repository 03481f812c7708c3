import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Throttle, WsRateLimit } from '../../../lib/index.js';

/** How many times each handler ran, per message `seq` (counted on the server). */
export const processed = { chat: new Map<number, number>(), note: new Map<number, number>() };

function count(map: Map<number, number>, seq: number): void {
  map.set(seq, (map.get(seq) ?? 0) + 1);
}

/**
 * A socket.io gateway for the client's tests, both limited to 5 messages refilled at 10 per
 * second: `chat` answers through the acknowledgement, `note` with a `noted` event. `burst`
 * is `chat` with next to no refill (5 messages, then one per 1,000 s), for tests that need a
 * sixth message refused however slowly the six arrive (over polling, one HTTP round trip
 * apart; a stall of this machine would refill `chat`).
 */
@WebSocketGateway()
@WsRateLimit()
export class ClientIoGateway {
  @Throttle({ type: 'chat', capacity: 5, refillRate: 10 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: { seq: number }) {
    count(processed.chat, data.seq);
    return { seq: data.seq };
  }

  @Throttle({ type: 'note', capacity: 5, refillRate: 10 })
  @SubscribeMessage('note')
  note(@MessageBody() data: { seq: number }) {
    count(processed.note, data.seq);
    return { event: 'noted', data: { seq: data.seq } };
  }

  @Throttle({ type: 'burst', capacity: 5, refillRate: 0.001 })
  @SubscribeMessage('burst')
  burst(@MessageBody() data: { seq: number }) {
    count(processed.chat, data.seq);
    return { seq: data.seq };
  }
}
