import type { RateLimitFrameInfo } from '../protocol/rate-limit-protocol.js';

/** What a frame builder is told about one rejected message (shared with the client). */
export type { RateLimitFrameInfo, RateLimitFrame } from '../protocol/rate-limit-protocol.js';

/**
 * Builds the frame sent for a rejected message; its result is sent as JSON.
 * @example
 * // the reference article's flat frame
 * frameBuilder: (info) => ({ type: 'rate_limit', ...info })
 */
export type RateLimitFrameBuilder = (info: RateLimitFrameInfo) => unknown;
