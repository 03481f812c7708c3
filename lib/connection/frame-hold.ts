/**
 * Most frames one connection may hold while its decision waits; the next one releases them
 * all at once (decided side by side, as without holding), so a client that floods a slow
 * store costs at most this many frames of memory each before the usual pipelining applies.
 */
export const HOLD_LIMIT = 64;

/** What a connection's hold reads: how many of its decisions wait on the store. */
export interface WaitCount {
  waiting: number;
}

/**
 * A connection's frames that arrived while one of its decisions waited on the store (a
 * shared store's round trip, or an asynchronous tracker), held as the socket gave them until
 * that decision settles, then run in arrival order, one waiting decision at a time.
 *
 * Why: a frame handed to NestJS while an earlier one waits sets up its whole pipeline
 * (execution context, guards' promises, rxjs subscriptions) and keeps it alive for the
 * round trip. With thousands of messages in flight those objects outlive young-generation
 * collections, and V8 then allocates them in old space for the rest of the process's life
 * (allocation-site pretenuring): measured, that halved a Redis-backed gateway's throughput
 * even once reservations answered every decision in process. A held frame is its buffer and
 * one closure. Frames decided in process (the memory store, a reservation's slots) are not
 * held on ws: nothing waits. On socket.io an event counts as waiting until its handler's
 * guard has run (a tick after the middlewares), so the events of one read go one by one.
 *
 * Decisions stay in arrival order. The cost: a frame that arrives while an earlier one waits
 * starts its own round trip only after that one settles (one connection has one store call
 * in flight at a time, up to `HOLD_LIMIT` frames held).
 */
export class FrameHold {
  /** Held frames from `next` on (the ones before it ran and were cleared). */
  private held: Array<(() => void) | undefined> | undefined;
  private next = 0;
  private scheduled = false;

  constructor(
    private readonly count: WaitCount,
    /** Told of an exception a released frame's handling threw (nothing else would catch it). */
    private readonly onError: (error: unknown) => void,
  ) {}

  /** Frames held now. */
  get size(): number {
    return this.held === undefined ? 0 : this.held.length - this.next;
  }

  /** No decision waits and nothing is held: a frame may run now. */
  get open(): boolean {
    return this.count.waiting === 0 && this.held === undefined;
  }

  /** Runs a frame now, or holds it while a decision of the connection waits. */
  admit(run: () => void): void {
    if (this.open) run();
    else this.add(run);
  }

  /** Holds a frame (the caller found the hold not `open`). */
  add(run: () => void): void {
    const held = (this.held ??= []);
    held.push(run);
    if (held.length - this.next < HOLD_LIMIT) return;
    const from = this.next;
    this.held = undefined;
    this.next = 0;
    for (let i = from; i < held.length; i++) this.runOne(held[i]!);
  }

  /**
   * A decision of the connection settled: once none waits, the held frames run in a
   * `process.nextTick` callback (after the promise jobs in which the settled message's own
   * handler runs; no event-loop turn, which would cost socket.io, whose events count as
   * waiting until their handler's tick, a turn per event of a burst), until one waits in turn.
   */
  settled(): void {
    if (this.count.waiting !== 0 || this.held === undefined || this.scheduled) return;
    this.scheduled = true;
    process.nextTick(this.release);
  }

  private readonly release = (): void => {
    this.scheduled = false;
    const held = this.held;
    if (held === undefined) return;
    while (this.next < held.length) {
      if (this.count.waiting !== 0 || this.held !== held) return;
      const frame = held[this.next]!;
      held[this.next++] = undefined;
      this.runOne(frame);
    }
    if (this.held === held) {
      this.held = undefined;
      this.next = 0;
    }
  };

  private runOne(run: () => void): void {
    try {
      run();
    } catch (error) {
      this.onError(error);
    }
  }
}
