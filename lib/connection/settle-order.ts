import { loopTimeout, type LoopTimeout } from '../utils/loop-timeout.js';

/**
 * One connection's promises settling in the order they were put in: its asynchronous
 * trackers (so that its decisions are asked for in arrival order) and its decisions that
 * wait on the store (so that they settle in the order they were asked for). A store may
 * answer out of order (a store of the application's own; Redis with token reservations,
 * whose decisions released with a batch's slot settle a few promise jobs before the call
 * that fetched it), and so may a tracker function; a refusal settled first would have the
 * close decided ahead of messages admitted before it, whose replies would then be lost.
 *
 * A promise that never settles would hold every later one of its connection. A store's
 * decisions settle (the Redis store's within their deadline, whatever it is: the order does
 * not cut them short, which could have a refusal answered at once settle ahead of an
 * earlier message's decision still on its way); a tracker function of the application's
 * own has no deadline: with `stallMs`, once none has settled for that long, the ones
 * waiting settle as they do, out of order if need be.
 */
export class SettleOrder {
  /** The last promise put in, until it settles. */
  private last: Promise<unknown> | undefined;
  /** Resolved when the promises put in stall; made when one first waits for another. */
  private stall: Promise<void> | undefined;
  private stalled: (() => void) | undefined;
  private timer: LoopTimeout | undefined;
  /** Promises settled so far: a release put off to the next turn checks the line did not move. */
  private settled = 0;

  /** `stallMs`: how long the line waits with none settling (undefined: for as long as it takes). */
  constructor(private readonly stallMs?: number) {}

  /** Whether a promise put in has not settled yet: one made now must settle after it. */
  get waiting(): boolean {
    return this.last !== undefined;
  }

  /** `promise`, settling (as it does) only after every promise put in before it. */
  after<T>(promise: Promise<T>): Promise<T> {
    const before = this.last;
    let ordered = promise;
    if (before !== undefined) {
      // Its rejection is handled through `ordered`, once the ones before it settled: until
      // then (perhaps a turn later) Node would call it unhandled.
      promise.then(undefined, noop);
      const turn = () => promise;
      ordered = (this.stallMs === undefined ? before : Promise.race([before, this.stallSignal()])).then(turn, turn);
    }
    this.last = ordered;
    const done = (): void => {
      // One settled: the others are moving.
      this.settled++;
      this.timer?.restart();
      if (this.last !== ordered) return;
      this.last = undefined;
      this.endStall();
    };
    ordered.then(done, done);
    return ordered;
  }

  private stallSignal(): Promise<void> {
    // Called only with a stall time.
    if (this.stall === undefined) {
      this.stall = new Promise<void>((resolve) => (this.stalled = resolve));
      // Counted while the loop runs (utils/loop-timeout.ts).
      this.timer = loopTimeout(this.stallTimedOut, this.stallMs!);
    }
    return this.stall;
  }

  /**
   * None settled for `stallMs`: the waiting ones go on, decided after this turn's poll phase,
   * so that a promise whose I/O finished during a stall of the loop settles first, in its place.
   */
  private readonly stallTimedOut = (): void => {
    const stall = this.stall;
    const settled = this.settled;
    setImmediate(() => {
      // One settled meanwhile (the line moves: the timer runs again), or none waits any more.
      if (this.stall !== stall || this.settled !== settled) return;
      this.stalled?.();
      this.endStall();
      // The one that stalled may never settle: the next ones do not wait for it.
      this.last = undefined;
    });
  };

  private endStall(): void {
    this.timer?.clear();
    this.timer = undefined;
    this.stall = undefined;
    this.stalled = undefined;
  }
}

/** Longest a connection's tracker promises wait for one before them with none settling. */
export const TRACKER_STALL_MS = 5000;

function noop(): void {
  // Handled where the ordered promise is.
}
