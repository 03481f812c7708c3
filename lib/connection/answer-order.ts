/**
 * One inbound message's place in its connection's order of answers. Its answers (a reply,
 * a `rate_limit` or `error` frame) wait until every earlier message is answered.
 */
export interface AnswerSlot {
  /** Answered: its first reply went out, or it ended without one. */
  done: boolean;
  /** Answers held until the earlier messages are answered. */
  writes: Array<() => void> | undefined;
  next: AnswerSlot | undefined;
}

/**
 * A connection's answers in the order its messages arrived, so that a `rate_limit` frame
 * never overtakes the reply of an earlier admitted message, and a policy close waits (up to
 * a grace period) for the replies of the messages admitted before it. Cheap when nothing is
 * pending: an answer for the oldest open message is written at once.
 *
 * Only the first reply of a message is ordered: a handler that streams (returns an
 * observable emitting many times) is answered at its first emission, the rest flow as
 * they come.
 */
export class AnswerOrder {
  /** The oldest message not yet answered; later ones follow through `next`. */
  private head: AnswerSlot | undefined;
  private tail: AnswerSlot | undefined;
  private closer: (() => void) | undefined;
  private grace: NodeJS.Timeout | undefined;

  /** Nothing is waiting for an answer. */
  get idle(): boolean {
    return this.head === undefined;
  }

  /** A place for a message that has just arrived. */
  open(): AnswerSlot {
    const slot: AnswerSlot = { done: false, writes: undefined, next: undefined };
    if (this.tail === undefined) this.head = slot;
    else this.tail.next = slot;
    this.tail = slot;
    return slot;
  }

  /** Writes an answer of a message now if every earlier message is answered, else holds it. */
  write(slot: AnswerSlot | undefined, write: () => void): void {
    if (slot === undefined || slot === this.head || slot.done) write();
    else (slot.writes ??= []).push(write);
  }

  /** The message is answered: releases the answers of later messages that were waiting. */
  done(slot: AnswerSlot): void {
    if (slot.done) return;
    slot.done = true;
    if (slot !== this.head) return;
    let next: AnswerSlot | undefined = slot;
    while (next !== undefined && next.done) {
      next = next.next;
      if (next === undefined) break;
      const writes = next.writes;
      next.writes = undefined;
      if (writes !== undefined) for (const held of writes) held();
    }
    this.head = next;
    if (next === undefined) {
      this.tail = undefined;
      if (this.closer !== undefined) this.finish();
    }
  }

  /**
   * Runs `close` once every message that arrived so far is answered, or after `graceMs`,
   * whichever comes first. At once when nothing is pending.
   */
  closeAfter(close: () => void, graceMs: number): void {
    if (this.closer !== undefined) return;
    this.closer = close;
    if (this.head === undefined || graceMs <= 0) return this.finish();
    this.grace = setTimeout(() => this.finish(), graceMs);
    this.grace.unref();
  }

  /** The socket has closed: nothing will be written any more. */
  dispose(): void {
    clearTimeout(this.grace);
    this.closer = undefined;
    this.head = this.tail = undefined;
  }

  private finish(): void {
    clearTimeout(this.grace);
    const close = this.closer;
    this.closer = undefined;
    close?.();
  }
}
