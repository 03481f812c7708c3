import { toMessageId } from '../protocol/rate-limit-protocol.js';
import type { MessageId, RateLimitInfo } from './types.js';

/** The `retryAfter` assumed when a frame carries none, or one that is not a finite number >= 0. */
export const DEFAULT_RETRY_AFTER_MS = 1000;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function finite(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

/** A message id in one of the forms a server echoes, or undefined. */
export const messageIdOf: (value: unknown) => MessageId | undefined = toMessageId;

/**
 * The message id an `error` frame (`{ event: 'error', data: { code, id } }`, the answer of
 * `WsRateLimitAdapter` to a message it could not route) echoes, or undefined.
 */
export function errorFrameId(frame: unknown): MessageId | undefined {
  if (!isRecord(frame) || frame.event !== 'error' || !isRecord(frame.data)) return undefined;
  return messageIdOf(frame.data.id);
}

/**
 * Reads a parsed frame as a `rate_limit` frame, or returns undefined if it is not one.
 *
 * Accepts the NestJS form `{ event: 'rate_limit', data: { code, retryAfter, ... } }` and the
 * flat form `{ type: 'rate_limit', code, retryAfter, ... }`.
 */
export function parseRateLimitFrame(frame: unknown): RateLimitInfo | undefined {
  if (!isRecord(frame)) return undefined;
  let body: Record<string, unknown>;
  if (frame.event === 'rate_limit' && isRecord(frame.data)) body = frame.data;
  else if (frame.type === 'rate_limit') body = frame;
  else return undefined;

  const retryAfter = finite(body.retryAfter);
  const info: RateLimitInfo = {
    code: typeof body.code === 'string' ? body.code : 'UNKNOWN',
    retryAfter: retryAfter !== undefined && retryAfter >= 0 ? retryAfter : DEFAULT_RETRY_AFTER_MS,
  };
  if (typeof body.messageType === 'string') info.messageType = body.messageType;
  const warningCount = finite(body.warningCount);
  if (warningCount !== undefined) info.warningCount = warningCount;
  const limit = finite(body.limit);
  if (limit !== undefined) info.limit = limit;
  const remaining = finite(body.remaining);
  if (remaining !== undefined) info.remaining = remaining;
  const id = messageIdOf(body.id);
  if (id !== undefined) info.id = id;
  return info;
}
