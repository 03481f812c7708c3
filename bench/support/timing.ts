import { performance } from 'node:perf_hooks';

/** How long to warm up and to measure. */
export interface Timing {
  /** Untimed decisions before the first round. */
  warmupMs: number;
  /** Untimed decisions just before each round (a worker that waited has cold caches). */
  rewarmMs: number;
  rounds: number;
  roundMs: number;
}

/** One timed round. */
export interface Round {
  /** Decisions per second. */
  opsPerSecond: number;
  /**
   * CPU time of the process over wall-clock time: about 1 when the loop had a core to
   * itself, less when other processes took the CPU (or more, when GC threads worked).
   */
  cpuShare: number;
  /** Decisions that were allowed. */
  allowed: number;
  /** Decisions made. */
  total: number;
}

/** Runs `n` decisions and returns how many were allowed. */
export type SyncRun = (n: number) => number;
/** Runs `n` decisions, awaiting them as a caller would, and returns how many were allowed. */
export type AsyncRun = (n: number) => Promise<number>;

const MIN_BATCH = 64;
const MAX_BATCH = 1 << 16;
/** A batch should take about this long, so reading the clock costs nothing measurable. */
const BATCH_MS = 2;

/**
 * Drives a decision loop in batches. The clock is read once per batch; batches grow until
 * one takes about 2 ms. Every loop ends by time.
 */
export class DecisionTimer {
  private batch = MIN_BATCH;

  constructor(private readonly run: SyncRun | AsyncRun) {}

  /** Decides for `ms` without counting. */
  async warm(ms: number): Promise<void> {
    await this.spin(ms);
  }

  /** Decides for `ms` and reports the round. */
  async round(ms: number): Promise<Round> {
    const cpuAtStart = process.cpuUsage();
    const { ops, allowed, elapsed } = await this.spin(ms);
    const cpu = process.cpuUsage(cpuAtStart);
    return {
      opsPerSecond: (ops / elapsed) * 1000,
      cpuShare: (cpu.user + cpu.system) / 1000 / elapsed,
      allowed,
      total: ops,
    };
  }

  private async spin(ms: number): Promise<{ ops: number; allowed: number; elapsed: number }> {
    const start = performance.now();
    let ops = 0;
    let allowed = 0;
    let now = start;
    while (now - start < ms) {
      const result = this.run(this.batch);
      allowed += typeof result === 'number' ? result : await result;
      ops += this.batch;
      const after = performance.now();
      if (after - now < BATCH_MS && this.batch < MAX_BATCH) this.batch *= 2;
      now = after;
    }
    return { ops, allowed, elapsed: now - start };
  }
}
