import { Injectable, UseFilters, UseGuards } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { IncomingMessage } from 'node:http';
import { Throttle, WsRateLimitFilter, WsThrottleGuard, type ConnectionState } from '../../../lib/index.js';

/** Charges every member of a team (the `x-team` header) to one budget. */
@Injectable()
export class TeamGuard extends WsThrottleGuard {
  protected override getTracker(client: object, connection: ConnectionState): string | Promise<string> {
    const team = (connection.request as IncomingMessage | undefined)?.headers['x-team'];
    return typeof team === 'string' ? `key:team-${team}` : super.getTracker(client, connection);
  }
}

/** A chat gateway behind the team guard. */
@WebSocketGateway()
@UseGuards(TeamGuard)
@UseFilters(WsRateLimitFilter)
export class TeamGateway {
  @Throttle({ type: 'chat', capacity: 100, refillRate: 100 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}
