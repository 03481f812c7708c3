import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Throttle, WsRateLimit } from '../../../lib/index.js';

/** Handlers with no figures of their own: the module's options decide. */
@WebSocketGateway()
@WsRateLimit()
export class PlainGateway {
  @SubscribeMessage('note')
  note(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** A handler whose cost can never be paid. */
@WebSocketGateway()
@WsRateLimit()
export class ImpossibleCostGateway {
  @Throttle({ capacity: 5, cost: 10 })
  @SubscribeMessage('bulk')
  bulk() {
    return { event: 'ack' };
  }
}

/** A handler with a negative capacity. */
@WebSocketGateway()
@WsRateLimit()
export class NegativeCapacityGateway {
  @Throttle({ capacity: -1 })
  @SubscribeMessage('x')
  x() {
    return { event: 'ack' };
  }
}

/** A handler whose refill rate makes `1000 / rate` infinite: its bucket would never refill nor refuse. */
@WebSocketGateway()
@WsRateLimit()
export class VanishingRateGateway {
  @Throttle({ capacity: 5, refillRate: 1e-320 })
  @SubscribeMessage('x')
  x() {
    return { event: 'ack' };
  }
}

/** A handler whose cost is so small that its messages would never be refused. */
@WebSocketGateway()
@WsRateLimit()
export class VanishingCostGateway {
  @Throttle({ capacity: 5, refillRate: 10, cost: 1e-300 })
  @SubscribeMessage('x')
  x() {
    return { event: 'ack' };
  }
}

/** Two handlers giving one type different figures. */
@WebSocketGateway()
@WsRateLimit()
export class ConflictingTypeGateway {
  @Throttle({ type: 'chat', capacity: 5, refillRate: 1 })
  @SubscribeMessage('a')
  a() {
    return { event: 'ack' };
  }

  @Throttle({ type: 'chat', capacity: 6, refillRate: 1 })
  @SubscribeMessage('b')
  b() {
    return { event: 'ack' };
  }
}
