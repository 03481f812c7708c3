import { SetMetadata } from '@nestjs/common';
import { SKIP_THROTTLE_METADATA } from '../ws-rate-limit.constants.js';

/**
 * Exempts a handler (or every handler of a class) from every message tier, the global one
 * included. `@SkipThrottle(false)` on a handler limits it again inside a skipped class.
 */
export const SkipThrottle = (skip = true): ClassDecorator & MethodDecorator =>
  SetMetadata(SKIP_THROTTLE_METADATA, skip);

/** `@SkipThrottle` under a name that does not clash with @nestjs/throttler's in apps using both. */
export const WsSkipThrottle = SkipThrottle;
