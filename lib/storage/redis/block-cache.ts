import type { RateLimitRejected } from '../../interfaces/plan.interface.js';

interface Blocked {
  /** Local time (ms) until which the entry answers (the retry time, or a bucket's next unit). */
  readonly until: number;
  /** Local time (ms) at which the same message would be allowed: what `retryAfter` counts down to. */
  readonly retryAt: number;
  readonly decision: RateLimitRejected;
}

/**
 * Plans known to be refused until a local time: a refusal with `retryAfter` R received at
 * t stays true until t + R whatever other instances do (they only spend more), so it can be
 * answered again from memory. Refusals decided by a concurrency tier are not kept, since a
 * closing connection frees its slot at any moment. The exception is a reset: `delete` clears
 * this instance's entries for the keys, but another instance's cache keeps refusing them
 * until the retry time it last reported (a reset is not published through Redis).
 *
 * An answer from the cache names the time still left and the `remaining` Redis answered.
 * Where a token bucket decided, the entry is kept only until the bucket would hold one more
 * whole unit than that (its next unit, as far as this instance knows): a message after it
 * asks Redis again, which answers what the bucket holds then (other plans and instances may
 * have spent it) and is cached in turn. A bucket of cost 1 gains its next unit at the retry
 * time, so this costs Redis nothing more there; a message of cost c at most c - 1 more calls
 * per wait. Where a sliding window decided, entries leaving the window before the retry time
 * are not known here: its `remaining` stays Redis's answer until then.
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
    if (blocked.until <= now) {
      this.entries.delete(key);
      return undefined;
    }
    const retryAfter = Math.ceil(blocked.retryAt - now);
    const decision = blocked.decision;
    return retryAfter >= decision.retryAfter ? decision : { ...decision, retryAfter };
  }

  /**
   * Remembers a refusal received at `now`, decided at `at` or later (the call's send time;
   * default `now`); `perMs` is the deciding tier's refill per ms and `cost` the message's cost
   * there when it is a token bucket (0 and 0 otherwise).
   *
   * The entry refuses until `at + retryAfter` at the latest: Redis decided after `at`, so its
   * wait ends no later, and a refusal read late (the event loop stalled while the reply
   * waited, and Redis's wait has run meanwhile) is not held past the time Redis admits again;
   * one whose wait ended by `now` is not remembered. The retryAfter it answers counts down
   * from `now + retryAfter`, never shorter than Redis's own wait (which may have started up to
   * the call's round trip after `at`): a client waiting it finds the entry gone and Redis's
   * wait over.
   */
  set(key: string, decision: RateLimitRejected, now: number, perMs = 0, cost = 0, at = now): void {
    const retryAt = now + decision.retryAfter;
    let until = at + decision.retryAfter;
    if (perMs > 0) {
      // The bucket held about `cost - retryAfter * perMs` when Redis decided (the wait was
      // rounded up to whole ms, and Redis decided a little after `at`: a little more, in
      // truth), so its next whole unit above `remaining` comes at about this time, if nothing
      // else spends it.
      const holds = cost - decision.retryAfter * perMs;
      until = Math.min(until, at + (decision.remaining + 1 - holds) / perMs);
    }
    if (until <= now) {
      this.entries.delete(key);
      return;
    }
    if (this.entries.size >= this.maxEntries && !this.entries.has(key)) this.prune(now);
    this.entries.delete(key);
    this.entries.set(key, { until, retryAt, decision });
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
