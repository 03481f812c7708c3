import { SetMetadata } from '@nestjs/common';
import { THROTTLE_METADATA } from '../ws-rate-limit.constants.js';

/** The figures `@Throttle` sets on a handler or a gateway. */
export interface ThrottleOptions {
  /**
   * Name of the type bucket the handler spends; handlers may share one.
   * @default the handler's message event
   */
  type?: string;
  /**
   * Burst of the type bucket.
   * @default the module's `types[type].capacity`, else `type.capacity` (20)
   */
  capacity?: number;
  /**
   * Tokens per second of the type bucket.
   * @default the module's `types[type].refillRate`, else `type.refillRate` (10)
   */
  refillRate?: number;
  /**
   * Also count the message in the expensive-operations window.
   * @default false
   */
  expensive?: boolean;
  /**
   * Tokens one message costs in the global and type buckets (an expensive operation still
   * counts once in its window). Must not exceed either capacity.
   * @default 1
   */
  cost?: number;
  /**
   * Still allowed while the connection is degraded (module option `degradeCooldownMs`),
   * e.g. a logout, an acknowledgement or a heartbeat.
   * @default false
   */
  essential?: boolean;
}

/**
 * Sets a handler's (or, on a class, every handler's) message-type limits. A handler's
 * fields win over its class's; unset fields come from the module options.
 * @example
 * @Throttle({ type: 'search', capacity: 5, refillRate: 1, expensive: true })
 * @SubscribeMessage('search') search(...) {}
 */
export const Throttle = (options: ThrottleOptions = {}): ClassDecorator & MethodDecorator =>
  SetMetadata(THROTTLE_METADATA, { ...options });
