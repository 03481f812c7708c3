import { Catch, Injectable, type ArgumentsHost, type ExceptionFilter } from '@nestjs/common';
import { WsRateLimitException } from '../exceptions/ws-rate-limit.exception.js';
import { WsRateLimitService } from '../services/ws-rate-limit.service.js';
import { answerSlotFromArgs } from '../utils/message-id.js';
import { refusalOwner } from '../pipeline/refusal-owner.js';
import { RATE_LIMIT_FILTER } from './filter-order.js';

/**
 * Answers `WsRateLimitException`: sends the `rate_limit` frame on the same socket (with
 * `ws.send`, never echoing the message; on `WsRateLimitAdapter` after the replies of the
 * connection's earlier messages), counts the violation, and at the threshold closes the
 * socket with 1008 after that frame.
 */
@Catch(WsRateLimitException)
@Injectable()
export class WsRateLimitFilter implements ExceptionFilter<WsRateLimitException> {
  /** How the limiter knows this filter among a handler's own (see `refusalsReachOurFilter`). */
  static readonly [RATE_LIMIT_FILTER] = true;

  constructor(private readonly limiter: WsRateLimitService) {}

  catch(exception: WsRateLimitException, host: ArgumentsHost): void {
    if (host.getType() !== 'ws') return;
    const client = host.switchToWs().getClient<object>();
    // The message's place in its connection's answers: the frame follows earlier replies.
    const slot = answerSlotFromArgs(host.getArgs());
    // Answered by the limiter that refused it (this filter may be another application's:
    // filters put on a gateway class are shared by every application declaring it).
    const owner = refusalOwner(exception);
    if (owner !== undefined) owner.answer(client, exception, slot);
    else this.limiter.reject(client, exception, slot);
  }
}
