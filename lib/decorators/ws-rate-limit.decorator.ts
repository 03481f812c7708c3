import { applyDecorators, UseFilters, UseGuards } from '@nestjs/common';
import { WsRateLimitFilter } from '../filters/ws-rate-limit.filter.js';
import { WsThrottleGuard } from '../guards/ws-throttle.guard.js';

/**
 * Puts `WsThrottleGuard` and `WsRateLimitFilter` on a gateway: its routed messages are
 * limited and rejected ones answered with `rate_limit` frames. (Or register
 * `WsThrottleGuard` globally with `APP_GUARD`: the module puts the filter on every gateway.)
 * @example
 * @WebSocketGateway()
 * @WsRateLimit()
 * export class ChatGateway {}
 */
export const WsRateLimit = (): ClassDecorator =>
  applyDecorators(UseGuards(WsThrottleGuard), UseFilters(WsRateLimitFilter));
