import type { RateLimitRejected } from '../../interfaces/plan.interface.js';

interface Blocked {
  /** Local time (ms) until which the plan is known to be refused. */
  readonly until: number;
  readonly decision: RateLimitRejected;
  /** Tokens the deciding tier gains per ms (a token bucket's refill), else 0. */
  readonly perMs: number;
  /** What the message costs on the deciding tier (a token bucket's, with `perMs`). */
  readonly cost: number;
}

/**
 * Plans known to be refused until a local time: a refusal with `retryAfter` R received at
 * t stays true until t + R whatever other instances do (they only spend more), so it can be
 * answered again from memory. Refusals decided by a concurrency tier are not kept, since a
 * closing connection frees its slot at any moment. The exception is a reset: `delete` clears
 * this instance's entries for the keys, but another instance's cache keeps refusing them
 * until the retry time it last reported (a reset is not published through Redis).
 *
 * An answer from the cache names the time still left and, where a token bucket decided,
 * what it holds now as this instance can know it: the message's cost less the refill still
 * to come (the bucket is full at `until` for the cost, so it holds `cost - left * rate`);
 * where a sliding window decided, the `remaining` Redis answered (entries leaving the
 * window meanwhile are not known here).
 *
 * Bounded by `maxEntries` without timers: a full cache first drops expired entries, then
 * the oldest ones, down to seven eighths of the bound, so the sweep is paid once per
 * `maxEntries / 8` insertions at most.
 */
export class BlockCache {
  private readonly entries = new Map<string, Blocked>();

  constructor(readonly maxEntries: number) {}

  /** Entries held now (expired ones included until swept). */
  get size(): number {
    return this.entries.size;
  }

  /**
   * The cached refusal of a plan at `now`, its `retryAfter` the time still left (whole ms,
   * rounded up, at least 1); undefined when none holds.
   */
  get(key: string, now: number): RateLimitRejected | undefined {
    const blocked = this.entries.get(key);
    if (blocked === undefined) return undefined;
    const left = blocked.until - now;
    if (left <= 0) {
      this.entries.delete(key);
      return undefined;
    }
    const retryAfter = Math.ceil(left);
    const decision = blocked.decision;
    if (retryAfter >= decision.retryAfter) return decision;
    // `until` was rounded up to whole ms from the exact wait, so this never says more than
    // the bucket holds.
    const remaining =
      blocked.perMs === 0
        ? decision.remaining
        : Math.min(decision.limit, Math.max(decision.remaining, Math.floor(blocked.cost - left * blocked.perMs)));
    return { ...decision, retryAfter, remaining };
  }

  /**
   * Remembers a refusal received at `now`; `perMs` and `cost` are the deciding tier's refill
   * per ms and the message's cost there when it is a token bucket (0 and 0 otherwise).
   */
  set(key: string, decision: RateLimitRejected, now: number, perMs = 0, cost = 0): void {
    if (this.entries.size >= this.maxEntries && !this.entries.has(key)) this.prune(now);
    this.entries.delete(key);
    this.entries.set(key, { until: now + decision.retryAfter, decision, perMs, cost });
  }

  /** Forgets every refusal (after keys were deleted). */
  clear(): void {
    this.entries.clear();
  }

  private prune(now: number): void {
    const target = this.maxEntries - Math.max(1, this.maxEntries >> 3);
    for (const [key, blocked] of this.entries) {
      if (blocked.until <= now) this.entries.delete(key);
    }
    for (const key of this.entries.keys()) {
      if (this.entries.size <= target) break;
      this.entries.delete(key);
    }
  }
}
