/** Metadata key of `@Throttle`. */
export const THROTTLE_METADATA = 'WS_RATE_LIMIT:throttle';
/** Metadata key of `@SkipThrottle`. */
export const SKIP_THROTTLE_METADATA = 'WS_RATE_LIMIT:skip';
/** Injection token of the resolved options (`ResolvedWsRateLimitOptions`). */
export const WS_RATE_LIMIT_OPTIONS = Symbol('WS_RATE_LIMIT_OPTIONS');
export { RATE_LIMIT_EVENT, MAX_MESSAGE_ID_LENGTH } from './protocol/rate-limit-protocol.js';
/** `readyState` of an open WebSocket. */
export const OPEN = 1;
/** Close code for policy violations (RFC 6455). */
export const CLOSE_POLICY_VIOLATION = 1008;
/** Close reason when a client leaves more than `maxBufferedBytes` unread. */
export const SLOW_CONSUMER_REASON = 'Slow consumer';
