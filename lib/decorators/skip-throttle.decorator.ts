import { SetMetadata } from '@nestjs/common';
import { WsRateLimitConfigError } from '../exceptions/ws-rate-limit-config.error.js';
import { SKIP_THROTTLE_METADATA } from '../ws-rate-limit.constants.js';

/**
 * Exempts a handler (or every handler of a class) from every message tier, the global one
 * included. `@SkipThrottle(false)` on a handler limits it again inside a skipped class.
 * Anything but a boolean (`'false'` from JavaScript, or @nestjs/throttler's
 * `{ default: true }`) is an error where the class is defined: it would have skipped.
 */
export const SkipThrottle = (skip = true): ClassDecorator & MethodDecorator => {
  if (typeof skip !== 'boolean') {
    const given = typeof skip === 'string' ? JSON.stringify(skip) : typeof skip;
    throw new WsRateLimitConfigError(
      `@SkipThrottle takes true or false (or nothing), not ${given}` +
        (typeof skip === 'object' && skip !== null
          ? `: @nestjs/throttler's per-throttler form ({ default: true }) has no meaning here`
          : ''),
    );
  }
  return SetMetadata(SKIP_THROTTLE_METADATA, skip);
};

/** `@SkipThrottle` under a name that does not clash with @nestjs/throttler's in apps using both. */
export const WsSkipThrottle = SkipThrottle;
