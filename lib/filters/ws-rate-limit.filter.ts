import { Catch, Injectable, type ArgumentsHost, type ExceptionFilter } from '@nestjs/common';
import { WsRateLimitException } from '../exceptions/ws-rate-limit.exception.js';
import { WsRateLimitService } from '../services/ws-rate-limit.service.js';

/**
 * Answers `WsRateLimitException`: sends the `rate_limit` frame on the same socket (with
 * `ws.send`, never echoing the message), counts the violation, and at the threshold closes
 * the socket with 1008 after that frame.
 */
@Catch(WsRateLimitException)
@Injectable()
export class WsRateLimitFilter implements ExceptionFilter<WsRateLimitException> {
  constructor(private readonly limiter: WsRateLimitService) {}

  catch(exception: WsRateLimitException, host: ArgumentsHost): void {
    if (host.getType() !== 'ws') return;
    this.limiter.reject(host.switchToWs().getClient<object>(), exception);
  }
}
