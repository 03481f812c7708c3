import { performance } from 'node:perf_hooks';
import { loopTimeout, type LoopTimeout } from '../utils/loop-timeout.js';

/**
 * One inbound message's place in its connection's order of answers: the limiter's answers
 * to it (a `rate_limit` or `error` frame) wait until every earlier message is answered.
 */
export interface AnswerSlot {
  /** Answered: its handler's reply went out, or it ended without one. */
  done: boolean;
  /** The limiter's answers held until the earlier messages are answered. */
  writes: Array<() => void> | undefined;
  next: AnswerSlot | undefined;
  /** When the message arrived (on the order's clock): it is given up `holdMs` after. */
  readonly at?: number;
  /** Given up (past its hold time) before it was answered, and not answered since. */
  givenUp?: boolean;
  /**
   * The acknowledgement callback the client asked for with the message (socket.io): the
   * limiter's answer to it goes there instead of an event, once.
   */
  ack?: ((answer: unknown) => void) | undefined;
  /**
   * Runs the application's catch-all listeners for the message once it is let through
   * (socket.io's `onAny`, which socket.io itself would run before any middleware or guard).
   */
  heard?: (() => void) | undefined;
}

/**
 * A connection's answers in the order its messages arrived, so that a `rate_limit` frame
 * never overtakes the reply of an earlier admitted message, and a policy close waits for
 * the replies of the messages admitted before it. Cheap when nothing is pending: an answer
 * for the oldest open message is written at once, and no timer runs.
 *
 * Handler replies are never held (one slow handler does not delay another's reply). A
 * message counts as answered at its first reply, or when it ends without one (a stream's
 * later emissions are not ordered; one with nothing to say yet holds the limiter's later
 * answers until it says something, `holdMs` at most). Held answers wait `holdMs` at most,
 * and the close as long: a message still unanswered `holdMs` after it arrived is given up
 * (taken as answered), so a subscription that never says anything does not keep every later
 * message's slot for the life of the connection. With no hold time nothing is ordered.
 */
export class AnswerOrder {
  /** The oldest message not yet answered; later ones follow through `next`. */
  private head: AnswerSlot | undefined;
  private tail: AnswerSlot | undefined;
  private closer: (() => void) | undefined;
  /** Runs while messages wait behind the oldest: gives up the ones past `holdMs`. */
  private timer: LoopTimeout | undefined;
  /** Runs while a close waits: releases every answer and closes when it fires. */
  private closeTimer: LoopTimeout | undefined;
  /** The socket has closed (see `dispose`). */
  private disposed = false;
  /** Messages given up before they were answered, and not answered since (see `gaveUp`). */
  private unansweredGivenUp = 0;

  constructor(
    /** Longest time an answer or the close waits for earlier messages (ms). */
    private readonly holdMs: number,
    /** Told how many messages were still unanswered (waited for, or given up before) when a close went ahead. */
    private readonly gaveUp?: (unanswered: number) => void,
    /**
     * The clock holds are measured on: the time the event loop ran (`LoopClock`), so that a
     * message read just after a stall does not find an earlier one's hold run out by it.
     */
    readonly clock: () => number = () => performance.now(),
  ) {}

  /** Nothing is waiting for an answer. */
  get idle(): boolean {
    return this.head === undefined;
  }

  /** A place for a message that has just arrived. */
  open(): AnswerSlot {
    // No hold time: nothing is held, so nothing is linked (an answer is written at once);
    // nor once the socket has closed.
    if (this.holdMs <= 0 || this.disposed) return { done: true, writes: undefined, next: undefined };
    const slot: AnswerSlot = { done: false, writes: undefined, next: undefined, at: this.clock() };
    if (this.tail === undefined) this.head = slot;
    else {
      this.tail.next = slot;
      // A message waits behind the oldest: that one is given up once past its hold time.
      this.arm();
    }
    this.tail = slot;
    return slot;
  }

  /** Writes an answer now if every earlier message is answered, else holds it (at most `holdMs`). */
  write(slot: AnswerSlot | undefined, write: () => void): void {
    if (slot === undefined || slot === this.head || slot.done || this.holdMs <= 0) return write();
    (slot.writes ??= []).push(write);
    this.arm();
  }

  /** The message is answered: releases the answers of later messages that were waiting. */
  done(slot: AnswerSlot): void {
    if (slot.done) {
      if (slot.givenUp === true) {
        slot.givenUp = false;
        this.unansweredGivenUp--;
      }
      return;
    }
    slot.done = true;
    if (slot !== this.head) return;
    let next: AnswerSlot | undefined = slot;
    while (next !== undefined && next.done) {
      next = next.next;
      if (next !== undefined) flush(next);
    }
    this.head = next;
    if (next === undefined) {
      this.tail = undefined;
      this.finish();
    }
  }

  /**
   * Runs `close` once every message that arrived so far is answered, or after `holdMs`,
   * whichever comes first (held answers go out before it). At once when nothing is pending.
   */
  closeAfter(close: () => void): void {
    if (this.closer !== undefined) return;
    this.closer = close;
    if (this.head === undefined || this.holdMs <= 0) return this.release();
    // Counted while the loop runs (a stall longer than half of it adds a second wait): a
    // reply whose work finished during a stall is delivered before the close goes ahead.
    this.closeTimer = loopTimeout(() => this.release(), this.holdMs);
  }

  /** The socket has closed: nothing will be written any more. */
  dispose(): void {
    this.disposed = true;
    this.timer?.clear();
    this.closeTimer?.clear();
    this.timer = this.closeTimer = undefined;
    this.closer = undefined;
    this.head = this.tail = undefined;
  }

  /** Arms the timer for the oldest message's hold time, if it is not running. */
  private arm(): void {
    const head = this.head;
    if (this.timer !== undefined || head === undefined || this.disposed) return;
    const left = head.at === undefined ? this.holdMs : head.at + this.holdMs - this.clock();
    this.timer = loopTimeout(this.expire, Math.max(0, left), this.holdMs);
  }

  /** Gives up the oldest messages past their hold time (their held answers go out in order). */
  private readonly expire = (): void => {
    this.timer = undefined;
    const now = this.clock();
    let head = this.head;
    while (head !== undefined && (head.done || head.at === undefined || now - head.at >= this.holdMs)) {
      if (!head.done) {
        head.givenUp = true;
        this.unansweredGivenUp++;
      }
      head.done = true;
      head = head.next;
      if (head !== undefined) flush(head);
    }
    this.head = head;
    if (head !== undefined) return this.arm();
    this.tail = undefined;
    this.finish();
  };

  /** Gives up waiting: every held answer goes out in order, then the close if one waits. */
  private release(): void {
    let unanswered = 0;
    for (let slot = this.head; slot !== undefined; slot = slot.next) {
      if (!slot.done) unanswered++;
      slot.done = true;
      flush(slot);
    }
    this.head = this.tail = undefined;
    this.finish(unanswered);
  }

  /**
   * Nothing is pending any more: stops the timer and runs the close that waited, telling
   * `gaveUp` of the messages it leaves unanswered (`unanswered` still waited for, and those
   * given up before).
   */
  private finish(unanswered = 0): void {
    this.timer?.clear();
    this.closeTimer?.clear();
    this.timer = this.closeTimer = undefined;
    const close = this.closer;
    this.closer = undefined;
    if (close === undefined) return;
    const lost = unanswered + this.unansweredGivenUp;
    if (lost > 0) this.gaveUp?.(lost);
    close();
  }
}

function flush(slot: AnswerSlot): void {
  const writes = slot.writes;
  slot.writes = undefined;
  if (writes !== undefined) for (const write of writes) write();
}
