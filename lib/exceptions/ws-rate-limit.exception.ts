import { WsException } from '@nestjs/websockets';
import type { RateLimitRejected } from '../interfaces/plan.interface.js';

/**
 * A message refused by the limiter. `WsRateLimitFilter` turns it into a `rate_limit` frame
 * and counts the violation. It carries the decision, never the message's payload.
 */
export class WsRateLimitException extends WsException {
  constructor(
    /** The decision that refused the message. */
    readonly decision: RateLimitRejected,
    /** The message type that was refused. */
    readonly messageType: string,
    /** Whose budget it was. */
    readonly tracker: string,
    /** The id the client gave the message, echoed in the frame so it knows which one. */
    readonly messageId?: string | number,
  ) {
    super('Rate limit exceeded');
    this.name = 'WsRateLimitException';
  }

  /**
   * The message arrived while the limiter closes its connection: no decision was made and
   * nothing is to be sent for it. A catch-all filter of yours that sees this exception
   * before `WsRateLimitFilter` should send nothing.
   */
  get closing(): boolean {
    return this.decision.closing === true;
  }
}
