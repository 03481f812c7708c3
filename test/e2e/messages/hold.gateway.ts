import { Injectable, UseFilters, UseGuards } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Throttle, WsRateLimitFilter, WsThrottleGuard, type ConnectionState } from '../../../lib/index.js';

/** A gate the test opens: until then, every tracker the guard names waits on it. */
export const gate = {
  /** How often the guard was asked for a tracker (once per message that reached it). */
  calls: 0,
  /** Chat messages whose handler ran, in order. */
  handled: [] as unknown[],
  open: (): void => undefined,
  opened: Promise.resolve(),
  close(): void {
    this.calls = 0;
    this.handled = [];
    this.opened = new Promise<void>((resolve) => (this.open = resolve));
  },
};

/** A guard whose tracker takes as long as the test wants: a decision that waits. */
@Injectable()
export class GatedGuard extends WsThrottleGuard {
  protected override getTracker(_client: object, connection: ConnectionState): Promise<string> {
    gate.calls++;
    return gate.opened.then(() => connection.connectionTracker);
  }
}

@WebSocketGateway()
@UseGuards(GatedGuard)
@UseFilters(WsRateLimitFilter)
export class GatedGateway {
  @Throttle({ type: 'chat', capacity: 1000, refillRate: 1000 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    gate.handled.push(data);
    return { event: 'ack', data };
  }
}
