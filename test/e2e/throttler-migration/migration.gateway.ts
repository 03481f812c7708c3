import { Injectable, UseFilters, UseGuards } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { IncomingMessage } from 'node:http';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitFilter,
  WsSkipThrottle,
  WsThrottle,
  WsThrottleGuard,
  type ConnectionState,
} from '../../../lib/index.js';

/** What @nestjs/throttler users reach for: named limits, skipIf, the aliases. */
@WebSocketGateway()
@WsRateLimit()
export class MigrationGateway {
  /** 2 at once (refilled every 250 ms) and 5 in all (refilled every 100 s), decided together. */
  @Throttle({
    type: 'chat',
    limits: { short: { capacity: 2, refillRate: 4 }, long: { capacity: 5, refillRate: 0.01 } },
  })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  /** One message, unless the payload says `{ vip: true }`. */
  @Throttle({
    capacity: 1,
    refillRate: 0.01,
    skipIf: (context) => (context.switchToWs().getData<{ vip?: boolean } | null>() ?? {}).vip === true,
  })
  @SubscribeMessage('vip')
  vip(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  /** One message (for the module's skipIf and the async tracker). */
  @Throttle({ capacity: 1, refillRate: 0.01 })
  @SubscribeMessage('once')
  once(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @WsThrottle({ capacity: 2, refillRate: 0.01 })
  @SubscribeMessage('aliased')
  aliased(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @WsSkipThrottle()
  @SubscribeMessage('free')
  free(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** A guard whose tracker is looked up asynchronously (the `x-team` header, after a delay). */
@Injectable()
export class AsyncTeamGuard extends WsThrottleGuard {
  protected override async getTracker(client: object, connection: ConnectionState): Promise<string> {
    await new Promise((resolve) => setTimeout(resolve, 2));
    const team = (connection.request as IncomingMessage | undefined)?.headers['x-team'];
    return typeof team === 'string' ? `key:team-${team}` : super.getTracker(client, connection);
  }
}

/** A gateway behind the async guard. */
@WebSocketGateway()
@UseGuards(AsyncTeamGuard)
@UseFilters(WsRateLimitFilter)
export class AsyncTeamGateway {
  @Throttle({ capacity: 2, refillRate: 0.01 })
  @SubscribeMessage('once')
  once(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}
