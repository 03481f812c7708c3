import type { AnswerSlot } from '../connection/answer-order.js';
import { toMessageId, type MessageId } from '../protocol/rate-limit-protocol.js';

export type { MessageId } from '../protocol/rate-limit-protocol.js';

/** Brands the extra handler argument through which the adapter passes a message's id. */
const MESSAGE_META: unique symbol = Symbol('nestjs-ws-rate-limit.message');

/**
 * The extra argument `WsRateLimitAdapter` passes to a handler callback: the message's id
 * (when the client gave one) and its place in the connection's order of answers.
 */
export interface MessageMeta {
  readonly [MESSAGE_META]: true;
  readonly id: MessageId | undefined;
  readonly slot: AnswerSlot | undefined;
}

/**
 * The id of a message if it is one the limiter echoes: a safe integer, or a string of at
 * most 64 printable ASCII characters (see `toMessageId`). Anything else is ignored, so a
 * frame never carries more client text.
 */
export function messageIdOf(message: { id?: unknown }): MessageId | undefined {
  return toMessageId(message.id);
}

/** Wraps an id and an answer slot for the handler callback. */
export function messageMeta(id: MessageId | undefined, slot?: AnswerSlot): MessageMeta {
  return { [MESSAGE_META]: true, id, slot };
}

/** The adapter's argument among a handler's arguments, if it passed one. */
function metaOf(args: readonly unknown[]): MessageMeta | undefined {
  for (let i = 2; i < args.length; i++) {
    const arg = args[i] as Partial<MessageMeta> | undefined;
    if (arg !== null && typeof arg === 'object' && arg[MESSAGE_META] === true) return arg as MessageMeta;
  }
  return undefined;
}

/** The id among a handler's arguments, if the adapter passed one. */
export function messageIdFromArgs(args: readonly unknown[]): MessageId | undefined {
  return metaOf(args)?.id;
}

/**
 * The message's place in its connection's order of answers, if the adapter keeps one. A
 * socket.io message sent with an acknowledgement through an adapter that keeps no order
 * (NestJS's own `IoAdapter`: arguments `[socket, data, ack]`) gets a slot of its own
 * carrying the ack, so that the limiter's answer reaches it.
 */
export function answerSlotFromArgs(args: readonly unknown[]): AnswerSlot | undefined {
  const meta = metaOf(args);
  if (meta !== undefined) return meta.slot;
  const ack = args[2];
  if (typeof ack !== 'function') return undefined;
  // In no order (done: an answer to it is written at once).
  return { done: true, writes: undefined, next: undefined, ack: ack as (answer: unknown) => void };
}

/** The id the limiter echoes for a socket.io event's data: its `id` field, when it is an object. */
export function messageIdOfData(data: unknown): MessageId | undefined {
  if (data === null || typeof data !== 'object') return undefined;
  return toMessageId((data as { id?: unknown }).id);
}
