import { toMessageId, type MessageId } from '../protocol/rate-limit-protocol.js';

export type { MessageId } from '../protocol/rate-limit-protocol.js';

/** Brands the extra handler argument through which the adapter passes a message's id. */
const MESSAGE_META: unique symbol = Symbol('nestjs-ws-rate-limit.message');

/** The extra argument `WsRateLimitAdapter` passes to a handler callback. */
export interface MessageMeta {
  readonly [MESSAGE_META]: true;
  readonly id: MessageId;
}

/**
 * The id of a message if it is one the limiter echoes: a safe integer, or a string of at
 * most 64 characters. Anything else is ignored, so a frame never carries more client text.
 */
export function messageIdOf(message: { id?: unknown }): MessageId | undefined {
  return toMessageId(message.id);
}

/** Wraps an id for the handler callback. */
export function messageMeta(id: MessageId): MessageMeta {
  return { [MESSAGE_META]: true, id };
}

/** The id among a handler's arguments, if the adapter passed one. */
export function messageIdFromArgs(args: readonly unknown[]): MessageId | undefined {
  for (let i = 2; i < args.length; i++) {
    const arg = args[i] as Partial<MessageMeta> | undefined;
    if (arg !== null && typeof arg === 'object' && arg[MESSAGE_META] === true) return arg.id;
  }
  return undefined;
}
