/**
 * Timeouts that count time the event loop ran, not time it stood still.
 *
 * A timer measures the clock; the work it waits for (a handler's reply, a request's bytes, a
 * filter's answer) runs on the event loop. When the loop stalls (a long synchronous job, a
 * GC pause, a loaded machine), the clock runs on and every timer due meanwhile fires as soon
 * as the loop runs again, in the timers phase, before the poll phase that would deliver what
 * finished during the stall: a grace period measured on the clock alone would run out having
 * given the work no turn at all. So a timeout that fires more than half its period late (the
 * loop was held up that long) waits its period once more from then, and runs on the next
 * firing whatever its lateness: at most one extra period, so a loop late on every tick still
 * gets its timeouts, one period later. The same rule as the heartbeat's stalled tick, and as
 * the sweep of refusals in transit.
 */
import { performance } from 'node:perf_hooks';

/** A running loop timeout; `clear` stops it. Never keeps the process alive. */
export interface LoopTimeout {
  clear(): void;
  /** Starts it again: `fire` runs `period` from now (the loop running), even after it fired. */
  restart(): void;
  /** Whether its timer keeps the process alive (never: for tests that check it). */
  hasRef(): boolean;
}

/**
 * Runs `fire` after `ms` (the loop running meanwhile); `period` is the grace the timeout
 * stands for when `ms` is what is left of it (an answer's hold time, of which part has
 * passed): lateness is judged against half of it, and the second wait is that long.
 */
export function loopTimeout(fire: () => void, ms: number, period = ms): LoopTimeout {
  let due = performance.now() + ms;
  let waitedAgain = false;
  let timer: NodeJS.Timeout;
  const tick = (): void => {
    const now = performance.now();
    if (!waitedAgain && period > 0 && now - due > period / 2) {
      waitedAgain = true;
      due = now + period;
      timer = setTimeout(tick, period).unref();
      return;
    }
    fire();
  };
  timer = setTimeout(tick, ms).unref();
  return {
    clear: () => clearTimeout(timer),
    restart: () => {
      clearTimeout(timer);
      due = performance.now() + period;
      waitedAgain = false;
      timer = setTimeout(tick, period).unref();
    },
    hasRef: () => timer.hasRef(),
  };
}

/** How often a `LoopClock` looks at the loop while it runs. */
const LOOP_BEAT_MS = 50;

/**
 * A clock of the time the event loop ran: `performance.now()` less the stalls it has seen.
 * While watching, a timer beats every `LOOP_BEAT_MS`; time since the last beat beyond two
 * beats is a stall (the loop stood still), and does not count. A reading taken before the
 * beat that ends a stall has come (a timer of the same turn) already leaves it out, so the
 * clock never runs backwards: it stands still through a stall. Beats run in the timers
 * phase, before the poll phase reads what arrived during a stall, so a message read just
 * after a stall finds it off the clock: the hold of an earlier message's answer, measured on
 * it, has not run out during the stall. Unref'd; `stop` ends it (it then runs as
 * `performance.now()`, less the stalls it saw).
 */
export class LoopClock {
  private timer: NodeJS.Timeout | undefined;
  private lastBeat = 0;
  private stalled = 0;

  /** The loop's time (ms; never runs backwards, nor faster than `performance.now()`). */
  readonly now = (): number => {
    const now = performance.now();
    const pending = this.timer === undefined ? 0 : now - this.lastBeat - 2 * LOOP_BEAT_MS;
    return now - this.stalled - (pending > 0 ? pending : 0);
  };

  /** Starts beating, if it is not (idempotent). */
  watch(): void {
    if (this.timer !== undefined) return;
    this.lastBeat = performance.now();
    this.timer = setInterval(this.beat, LOOP_BEAT_MS).unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private readonly beat = (): void => {
    const now = performance.now();
    const stood = now - this.lastBeat - 2 * LOOP_BEAT_MS;
    this.lastBeat = now;
    if (stood > 0) this.stalled += stood;
  };
}
