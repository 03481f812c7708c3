import type { RateLimitDecision, RateLimitPlan, TierStatus } from '../interfaces/plan.interface.js';

/** A value, or a promise of it: stores that can answer synchronously do. */
export type MaybePromise<T> = T | Promise<T>;

/**
 * The contract every store keeps; also the injection token of the store in use
 * (`@Inject(RateLimitStore)` or by type). The store reports, the guard decides what to do:
 * a rejection is a returned value, never a thrown one. A store that cannot decide throws
 * or rejects, and the fail mode applies.
 */
export abstract class RateLimitStore {
  /**
   * Decides a plan atomically: every tier consumes its cost, or none does and the decision
   * says which tier refused and when the plan would pass. The decision is read-only (its
   * type says so): a store may return one frozen object to many calls, as the memory store
   * does for every allowed decision and for a run of refusals with the same figures.
   */
  abstract consume(plan: RateLimitPlan): MaybePromise<RateLimitDecision>;

  /** The state of every tier of a plan, consuming nothing. */
  abstract peek(plan: RateLimitPlan): MaybePromise<readonly TierStatus[]>;

  /** Gives back the lease a plan's concurrency tiers took (an open connection ended). */
  abstract release(plan: RateLimitPlan): MaybePromise<void>;

  /** Forgets the given keys, as if they had never been used. */
  abstract delete(keys: readonly string[]): MaybePromise<void>;

  /** Releases what the store opened (connections, memory). */
  abstract close(): Promise<void>;

  /**
   * Whether `close()` ended the store for good: it answers nothing any more, and an
   * application given it refuses to start. False by default, and for the memory store,
   * which closing empties and which serves on.
   */
  get isClosed(): boolean {
    return false;
  }

  /**
   * Whether the store can answer now, as far as it knows. A store that answers some calls
   * from memory (the Redis store's block cache) reports false while its backend is down, so
   * such answers do not end an outage. Stores without a backend are always available.
   */
  get available(): boolean {
    return true;
  }

  /**
   * Tells `listener` each time the store becomes unavailable (`false`, with the cause) and
   * available again (`true`), and returns the function that stops telling it; `undefined`
   * for a store that does not follow its own availability (the default). The module's fail
   * mode reports an outage from these changes when the store gives them, so that a call
   * that merely failed (a deadline missed under load) is not taken for one. A store that is
   * unavailable when the listener is added should tell it at once.
   */
  watchAvailability(_listener: (available: boolean, cause?: unknown) => void): (() => void) | undefined {
    return undefined;
  }

  /**
   * Records an operator's block (`WsRateLimitService.block`) where other instances see it.
   * Stores that share state across instances override this and the two methods below; the
   * default keeps blocks in this process only.
   */
  setBlock(_name: string, _until: number): MaybePromise<void> {
    return undefined;
  }

  /** Lifts a block set with `setBlock`. */
  deleteBlock(_name: string): MaybePromise<void> {
    return undefined;
  }

  /**
   * Every block any instance set, as name -> until (ms since the epoch), or `undefined` for
   * a store that does not share blocks. Blocks that have ended may be listed (the limiter
   * judges by its monotonic clock from when it first read a block); one no longer listed is
   * lifted.
   */
  listBlocks(): MaybePromise<Readonly<Record<string, number>> | undefined> {
    return undefined;
  }

  /**
   * The key of one tier of one tracker. The tracker is length-prefixed, so the key reads
   * back into exactly one (tracker, suffix) pair: no tracker text (which may come from a
   * client) and no type name can make two keys equal.
   */
  key(tracker: string, suffix: string): string {
    return `${tracker.length}:${tracker}|${suffix}`;
  }
}
