import type { AnswerSlot } from '../connection/answer-order.js';
import type { WsRateLimitException } from '../exceptions/ws-rate-limit.exception.js';

/** What answers a refusal: the pipeline of the application whose guard made it. */
export interface RefusalOwner {
  answer(client: object, exception: WsRateLimitException, slot: AnswerSlot | undefined): void;
}

/**
 * The owner of each refusal the limiter throws. A gateway class's filters are class metadata,
 * shared by every application of the process that declares the gateway (tests start one app
 * after another, some run two at once); a refusal is answered by the limiter that made it,
 * whichever application's filter instance catches it.
 */
const owners = new WeakMap<WsRateLimitException, RefusalOwner>();

export function ownRefusal(exception: WsRateLimitException, owner: RefusalOwner): void {
  owners.set(exception, owner);
}

export function refusalOwner(exception: WsRateLimitException): RefusalOwner | undefined {
  return owners.get(exception);
}
