import type { AnswerOrder, AnswerSlot } from '../connection/answer-order.js';
import { HOLD_LIMIT } from '../connection/frame-hold.js';
import { loopTimeout, type LoopTimeout } from '../utils/loop-timeout.js';

/** A slot opened for an event, with the event's first argument to know it again by. */
interface Opened {
  readonly slot: AnswerSlot;
  readonly key: unknown;
  /** When it was opened (on the order's clock: the time the event loop ran). */
  readonly at: number;
}

/**
 * Most slots of one event name kept waiting for their listener. Events wait a tick (socket.io
 * emits them on the next one), up to a whole frame hold's release at once (`HOLD_LIMIT`: all
 * of one name, in a flood), and longer only when an application middleware holds one back
 * or drops it. (16 gave up the oldest slots of a released hold before their listeners took
 * them, so later events' answers went out first.)
 */
export const MAX_WAITING_EVENTS = 2 * HOLD_LIMIT;

/**
 * Of the slots of one name waiting, the most that keep their event's first argument to be
 * known again by; the others are taken in arrival order. A dropped event's payload is not
 * kept past these few.
 */
const MAX_KEYED = 16;

/**
 * The answer slots of a socket's routed events between the socket.io middleware that opens
 * them (in arrival order) and the handler's listener that takes them. socket.io runs the
 * application's middlewares after ours, and one may drop an event or let it through later
 * (after events that came behind it), so a listener takes the slot opened for its own
 * event: the oldest with the same name and the same first argument (the very object for
 * object payloads), else (a middleware replaced the payload) the oldest of that name.
 *
 * An event a middleware dropped never reaches its listener: its slot is given up (answered
 * with nothing, so it holds no later answer back, and its payload is let go) once it has
 * waited `holdMs` (found by a timer, armed at most once per `holdMs` while slots wait), or
 * when more than `MAX_WAITING_EVENTS` of its name wait. An event let through after its slot
 * was given up gets a slot of its own from its listener.
 */
export class EventSlots {
  private readonly byEvent = new Map<string, Opened[]>();
  /** Runs while slots wait (armed at most once per `holdMs`): gives up the ones past it. */
  private timer: LoopTimeout | undefined;
  private readonly sweep = (): void => {
    this.timer = undefined;
    const now = this.order.clock();
    let waiting = false;
    for (const opened of this.byEvent.values()) {
      this.expire(opened, now);
      waiting ||= opened.length > 0;
    }
    if (waiting) this.arm();
  };

  constructor(
    private readonly order: AnswerOrder,
    /** How long a slot waits for its listener (the order's own hold time). */
    private readonly holdMs: number,
  ) {}

  /** Whether an event's slots have a taker (its first handler); later handlers take none. */
  claim(event: string): boolean {
    if (this.byEvent.has(event)) return false;
    this.byEvent.set(event, []);
    return true;
  }

  /** Keeps a slot opened for an event whose first argument is `key` (for a claimed event). */
  add(event: string, key: unknown, slot: AnswerSlot): void {
    const opened = this.byEvent.get(event);
    if (opened === undefined) return;
    const now = this.order.clock();
    // With a hold time, slots are given up by the sweep, whose timer counts time the loop ran
    // (an event read just after a stall must not give up an earlier one's slot by the clock);
    // with none, here.
    if (this.holdMs <= 0) this.expire(opened, now);
    if (opened.length >= MAX_WAITING_EVENTS) this.order.done(opened.shift()!.slot);
    opened.push({ slot, key: opened.length < MAX_KEYED ? key : undefined, at: now });
    // A dropped event's slot is given up even when no event of its name comes after it.
    if (this.timer === undefined) this.arm();
  }

  /** The socket has closed: nothing waits any more. */
  dispose(): void {
    this.timer?.clear();
    this.timer = undefined;
    this.byEvent.clear();
  }

  /** The slot of an event the listener got, or undefined when none is kept for it. */
  take(event: string, key: unknown): AnswerSlot | undefined {
    const opened = this.byEvent.get(event);
    if (opened === undefined || opened.length === 0) return undefined;
    let index = 0;
    while (index < opened.length && !Object.is(opened[index]!.key, key)) index++;
    // No slot kept the very payload (an application middleware replaced the event's data):
    // the oldest, in arrival order, rather than none.
    if (index === opened.length) index = 0;
    const taken = index === 0 ? opened.shift()! : opened.splice(index, 1)[0]!;
    return taken.slot;
  }

  private arm(): void {
    // With no hold time, `add` gives up every earlier slot itself.
    if (this.holdMs <= 0) return;
    // Counted while the loop runs (see loop-timeout.ts).
    this.timer = loopTimeout(this.sweep, this.holdMs);
  }

  /** Gives up the slots that waited `holdMs` (their events were dropped, or are very late). */
  private expire(opened: Opened[], now: number): void {
    while (opened.length > 0 && now - opened[0]!.at >= this.holdMs) this.order.done(opened.shift()!.slot);
  }
}
