import { applyDecorators, UseFilters, UseGuards } from '@nestjs/common';
import { WsRateLimitFilter } from '../filters/ws-rate-limit.filter.js';
import { WsThrottleGuard } from '../guards/ws-throttle.guard.js';

/**
 * Puts `WsThrottleGuard` and `WsRateLimitFilter` on a gateway: its routed messages are
 * limited and rejected ones answered with `rate_limit` frames. (NestJS does not apply
 * global guards to gateways, so a gateway opts in with this or with `@UseGuards` plus
 * `@UseFilters`.)
 * @example
 * @WebSocketGateway()
 * @WsRateLimit()
 * export class ChatGateway {}
 */
export const WsRateLimit = (): ClassDecorator =>
  applyDecorators(UseGuards(WsThrottleGuard), UseFilters(WsRateLimitFilter));
