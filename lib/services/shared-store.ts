import { performance } from 'node:perf_hooks';
import type { RateLimitDecision, RateLimitPlan, TierStatus } from '../interfaces/plan.interface.js';
import { warnEvicting } from '../storage/create-store.js';
import { MemoryRateLimitStore } from '../storage/memory/memory-store.js';
import type { MaybePromise, RateLimitStore } from '../storage/rate-limit-store.js';
import type { SettleOrder } from '../connection/settle-order.js';
import { checkedDecision, checkedStatuses } from '../storage/store-answers.js';

/** The cause given for a peek the fallback answered because the store was down. */
const STORE_DOWN = new Error('the store is unavailable');

/** What the shared store reports to the limiter about its health. */
export interface SharedStoreEvents {
  /** A decision the store answered, and how long it took (ms). */
  answered(durationMs: number): void;
  /** A call the store could not answer (the fail mode decided it). */
  failed(error: unknown): void;
  /** The store stopped answering (once per outage). */
  down(error: unknown): void;
  /** The store answers again (once per outage). */
  up(): void;
}

/**
 * The shared store behind its failure policy: a decision the store cannot make (it throws,
 * rejects or times out) is made by the fail mode: `open`, a local in-memory limiter with
 * the same figures (`fallback`); `closed`, a `STORE_UNAVAILABLE` refusal. Outages are
 * reported once when they start and once when they end: for a store that follows its own
 * availability (`watchAvailability`: the Redis store's circuit breaker), when it says it
 * became unavailable and available again, so a call that failed while the store still
 * answers (a deadline missed under load) is decided by the fail mode and counted as an
 * error, but is no outage; for other stores, from the first failed call to the next answer.
 * Once closed (the application shuts down, and closes the store next), a decision that
 * straggles in is still decided by the fail mode, but a store that no longer answers is no
 * outage: nothing is reported.
 */
export class SharedStore {
  private down = false;
  private closed = false;
  private fallbackStore: MemoryRateLimitStore | undefined;
  /** Stops following the store's availability; `undefined` when the store does not report it. */
  private unwatch: (() => void) | undefined;

  constructor(
    readonly store: RateLimitStore,
    private readonly failMode: 'open' | 'closed',
    private readonly maxKeys: number,
    private readonly events: SharedStoreEvents,
    /** Follow the store's availability from construction; `false`: from `watch()`. */
    watchNow = true,
  ) {
    if (watchNow) this.watch();
  }

  /**
   * Starts following the store's availability (once the events can be counted: the module's
   * metrics exist from its init). A store already unavailable (Redis unreachable at start-up)
   * is an outage from now on, reported as any other.
   */
  watch(): void {
    if (this.unwatch !== undefined || this.closed) return;
    this.unwatch = this.store.watchAvailability((available, cause) => this.availabilityChanged(available, cause));
  }

  /** Whether the fail mode is deciding now: the store failed and has not answered since. */
  get inFallback(): boolean {
    return this.down;
  }

  /** The local limiter of fail mode `open`, created on the first outage. */
  get fallback(): MemoryRateLimitStore | undefined {
    return this.fallbackStore;
  }

  /**
   * Decides a plan; `decided` is told which store did (to give a lease back to it). With
   * `order` (a connection's), the decision settles after the ones put in it before, and the
   * fail mode decides a failed call in that order too; one the store answered or refused at
   * once is made into a promise then, only while an earlier one waits.
   */
  consume(
    plan: RateLimitPlan,
    decided?: (store: RateLimitStore | undefined) => void,
    order?: SettleOrder,
  ): MaybePromise<RateLimitDecision> {
    let decision: MaybePromise<RateLimitDecision>;
    const started = performance.now();
    try {
      decision = this.store.consume(plan);
    } catch (error) {
      if (order?.waiting !== true) return this.failed(plan, error, decided);
      decision = Promise.reject(error);
    }
    if (!isPromise(decision)) {
      if (order?.waiting !== true) return this.answered(plan, decision, undefined, decided);
      decision = Promise.resolve(this.answered(plan, decision, undefined, decided));
    } else if (order === undefined) {
      return decision.then(
        (settled) => this.answered(plan, settled, started, decided),
        (error: unknown) => this.failed(plan, error, decided),
      );
    } else {
      // Timed as the store answered; decided by the fail mode in the connection's order.
      decision = decision.then((settled) => this.answered(plan, settled, started, decided));
    }
    return order.after(decision).then(undefined, (error: unknown) => this.failed(plan, error, decided));
  }

  /**
   * The state of a plan's tiers; while the store cannot answer (fail mode `open`), from the
   * fallback, whose figures are the ones deciding meanwhile.
   */
  async peek(plan: RateLimitPlan): Promise<readonly TierStatus[]> {
    // Fail mode `closed` has no figures of its own: the store answers, or the caller hears why
    // not (an answer that is no list of statuses included).
    if (this.failMode === 'closed') return checkedStatuses(await this.store.peek(plan), plan);
    if (!this.down) {
      try {
        return checkedStatuses(await this.store.peek(plan), plan);
      } catch (error) {
        // The fallback's figures, below: a store call the fail mode answered, counted as one
        // (this layer reports no outage for it: a peek decides nothing).
        if (!this.closed) this.events.failed(error);
      }
    } else if (!this.closed) {
      // Refused at once while the store is down, as a decision then is: counted the same way.
      this.events.failed(STORE_DOWN);
    }
    return this.localFallback().peek(plan);
  }

  /**
   * Forgets a tracker's tiers (by suffix) in the store and in the fallback, each store
   * naming them its own way (the Redis store's keys mean nothing to the memory fallback).
   */
  async deleteTiers(tracker: string, suffixes: readonly string[]): Promise<void> {
    const fallback = this.fallbackStore;
    fallback?.delete(suffixes.map((suffix) => fallback.key(tracker, suffix)));
    await this.store.delete(suffixes.map((suffix) => this.store.key(tracker, suffix)));
  }

  async close(): Promise<void> {
    this.closed = true;
    this.unwatch?.();
    await this.fallbackStore?.close();
  }

  /** The store says it became unavailable, or available again. */
  private availabilityChanged(available: boolean, cause: unknown): void {
    if (this.closed) return;
    if (!available) this.goDown(cause);
    else if (this.down) {
      this.down = false;
      this.events.up();
    }
  }

  private goDown(cause: unknown): void {
    if (this.down) return;
    this.down = true;
    this.events.down(cause);
  }

  /**
   * `started` is undefined for a synchronous answer, which made no round trip (the Redis
   * store's block cache): it is not timed, and while the store reports itself unavailable
   * it does not end the outage. An answer that is no decision (a store of the application's
   * own: `null`, `{ allowed: 'yes' }`, a refusal without figures) failed: the fail mode decides.
   */
  private answered(
    plan: RateLimitPlan,
    answer: RateLimitDecision,
    started: number | undefined,
    decided: ((store: RateLimitStore | undefined) => void) | undefined,
  ): RateLimitDecision {
    let decision: RateLimitDecision;
    try {
      decision = checkedDecision(answer);
    } catch (error) {
      return this.failed(plan, error, decided);
    }
    if (started !== undefined) this.events.answered(performance.now() - started);
    // A store that follows its availability says when the outage ends (and the answer of an
    // available one ends it too); for another, an answer that made a round trip, or any
    // answer while the store says it is available.
    if (this.down && (this.store.available || (this.unwatch === undefined && started !== undefined))) {
      this.down = false;
      this.events.up();
    }
    decided?.(this.store);
    return decision;
  }

  private failed(
    plan: RateLimitPlan,
    error: unknown,
    decided: ((store: RateLimitStore | undefined) => void) | undefined,
  ): RateLimitDecision {
    if (!this.closed) {
      this.events.failed(error);
      // A store that follows its availability and still says it is available failed this
      // call only (load): no outage.
      if (this.unwatch === undefined || !this.store.available) this.goDown(error);
    }
    if (this.failMode === 'closed') {
      decided?.(undefined);
      const spec = plan.tiers[0]!.spec;
      return {
        allowed: false,
        tier: spec.tier,
        index: 0,
        retryAfter: 1000,
        limit: spec.limit,
        remaining: 0,
        storeUnavailable: true,
      };
    }
    const fallback = this.localFallback();
    decided?.(fallback);
    return fallback.consume(plan);
  }

  private localFallback(): MemoryRateLimitStore {
    return (this.fallbackStore ??= new MemoryRateLimitStore({ maxKeys: this.maxKeys }).onFirstEviction(() =>
      warnEvicting(this.maxKeys, 'The fail-open fallback store'),
    ));
  }
}

/** Whether a store's answer is a promise. */
export function isPromise<T>(value: MaybePromise<T>): value is Promise<T> {
  return typeof (value as { then?: unknown })?.then === 'function';
}
