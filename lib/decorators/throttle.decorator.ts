import { SetMetadata, type ExecutionContext } from '@nestjs/common';
import { THROTTLE_METADATA } from '../ws-rate-limit.constants.js';

/** One named token bucket of a type (`@Throttle`'s `limits`). */
export interface NamedLimit {
  /** Burst: messages allowed at once. */
  capacity: number;
  /** Tokens per second (e.g. 100 per minute is `100 / 60`). */
  refillRate: number;
}

/**
 * Returns true to let a message through unlimited (as @nestjs/throttler's `skipIf`). Called
 * with the message's execution context (type `ws`): `context.switchToWs().getClient()` is
 * the socket, `getData()` the payload.
 */
export type SkipIf = (context: ExecutionContext) => boolean;

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
   * Several named buckets for the type instead of its one bucket, e.g. 10 a second and 100
   * a minute: `{ short: { capacity: 10, refillRate: 10 }, long: { capacity: 100, refillRate: 100 / 60 } }`.
   * A message passes only if every one of them (and the global bucket, and the expensive
   * window when marked) has room: all are decided in one atomic step, consuming all or
   * none. The refusing bucket's `limit` and `retryAfter` go in the `rate_limit` frame.
   * Names are letters, digits, `_` and `-` (at most 32 characters); at most 8 limits; each
   * figure has the per-type bounds. Not with `capacity`/`refillRate`. A plan's `types`
   * entry for the type replaces them with its one bucket. A handler's own
   * `capacity`/`refillRate` replace its class's `limits`, and its `limits` the class's bucket.
   */
  limits?: Record<string, NamedLimit>;
  /**
   * Lets a message through unlimited when it returns true (after the module's `skipIf`).
   * On a class, for every handler that has none of its own.
   */
  skipIf?: SkipIf;
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
 * @example
 * // 10 a second and 100 a minute, both decided together
 * @Throttle({ limits: { short: { capacity: 10, refillRate: 10 }, long: { capacity: 100, refillRate: 100 / 60 } } })
 * @SubscribeMessage('chat') chat(...) {}
 */
export const Throttle = (options: ThrottleOptions = {}): ClassDecorator & MethodDecorator =>
  SetMetadata(THROTTLE_METADATA, { ...options });

/** `@Throttle` under a name that does not clash with @nestjs/throttler's in apps using both. */
export const WsThrottle = Throttle;
