import type { AnswerOrder, AnswerSlot } from '../connection/answer-order.js';

/** A slot opened for an event, with the event's first argument to know it again by. */
interface Opened {
  readonly slot: AnswerSlot;
  readonly key: unknown;
}

/**
 * The answer slots of a socket's routed events between the socket.io middleware that opens
 * them (in arrival order) and the handler's listener that takes them. socket.io runs the
 * application's middlewares after ours, and one may drop an event or let it through later,
 * so a listener takes the slot opened for its own event: the oldest with the same name and
 * the same first argument (the very object for object payloads), else the oldest of that
 * name. Slots older than it of the same name were dropped on the way: they are answered
 * then, so they hold nothing back.
 */
export class EventSlots {
  private readonly byEvent = new Map<string, Opened[]>();

  /** Whether an event's slots have a taker (its first handler); later handlers take none. */
  claim(event: string): boolean {
    if (this.byEvent.has(event)) return false;
    this.byEvent.set(event, []);
    return true;
  }

  /** Keeps a slot opened for an event whose first argument is `key` (for a claimed event). */
  add(event: string, key: unknown, slot: AnswerSlot): void {
    this.byEvent.get(event)?.push({ slot, key });
  }

  /** The slot of an event the listener got, or undefined when none was kept for it. */
  take(event: string, key: unknown, order: AnswerOrder): AnswerSlot | undefined {
    const opened = this.byEvent.get(event);
    if (opened === undefined || opened.length === 0) return undefined;
    let index = 0;
    while (index < opened.length && !Object.is(opened[index]!.key, key)) index++;
    // No slot kept the very payload (an application middleware replaced the event's data):
    // the oldest, in arrival order, rather than none (its answer would miss the ack, and the
    // slot, never taken, would hold later answers back).
    if (index === opened.length) index = 0;
    const passed = opened.splice(0, index + 1);
    const taken = passed.pop()!;
    for (const dropped of passed) order.done(dropped.slot);
    return taken.slot;
  }
}
