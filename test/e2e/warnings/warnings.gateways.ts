import { UseGuards } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Throttle, WsRateLimit, WsThrottleGuard } from '../../../lib/index.js';

/** `@Throttle` on handlers, and no guard anywhere: the figures do nothing. */
@WebSocketGateway()
export class UnguardedGateway {
  @Throttle({ capacity: 1, refillRate: 0.01 })
  @SubscribeMessage('search')
  search(@MessageBody() data: unknown) {
    return { event: 'ack', data: typeof data === 'number' ? data : null };
  }

  @SubscribeMessage('ping')
  ping() {
    return { event: 'pong' };
  }
}

/** `@Throttle` on the class; one handler has the guard, the other not. */
@WebSocketGateway()
@Throttle({ capacity: 2 })
export class HalfGuardedGateway {
  @UseGuards(WsThrottleGuard)
  @SubscribeMessage('guarded')
  guarded() {
    return { event: 'ack' };
  }

  @SubscribeMessage('open')
  open() {
    return { event: 'ack' };
  }
}

/** The usual way: `@WsRateLimit()` on the gateway. */
@WebSocketGateway()
@WsRateLimit()
export class GuardedGateway {
  @Throttle({ capacity: 1, refillRate: 0.01 })
  @SubscribeMessage('search')
  search() {
    return { event: 'ack' };
  }
}

/** No `@Throttle`, no guard: an unlimited gateway is not a mistake to warn about. */
@WebSocketGateway()
export class UnlimitedGateway {
  @SubscribeMessage('ping')
  ping() {
    return { event: 'pong' };
  }
}
