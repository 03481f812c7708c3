// Over 400 lines: one class, the reservation book, whose methods (take, consume, the
// background batch, settle, sweep, close) share one state machine per plan; the batch's own
// arithmetic is in reservation-batch.ts and the sizing in batch-sizing.ts.
import { performance } from 'node:perf_hooks';
import { ALLOWED, type RateLimitDecision, type RateLimitPlan } from '../../interfaces/plan.interface.js';
import { nextBatchSize } from './batch-sizing.js';
import type { CallGate } from './call-gate.js';
import { toNumber } from './plan-compiler.js';
import { compileReservable, nearOf, type ReservablePlan } from './reservable-plan.js';
import { batchOf, exhaust, futureLeft, spendSlots, unspent, type Batch } from './reservation-batch.js';
import type { FieldTtlMode } from './server-checks.js';
import {
  DEFAULT_BLOCK_CACHE_ENTRIES,
  DEFAULT_RESERVATION_MAX_BATCH,
  DEFAULT_RESERVATION_TTL_MS,
  type RedisStoreOptions,
} from './redis-store.options.js';

type ScriptCall = (...args: string[]) => Promise<unknown>;

/**
 * With a batch size of 1, one decision in this many goes through a reserving call (a probe:
 * its reply, or the next reserving call's, tells whether this instance is alone again); the
 * others use the per-call script, which costs less.
 */
const PROBE_EVERY = 32;

/**
 * The next batch is asked for in the background once the current one would run out (its
 * slots lapsing, or spent at this instance's rate) within this many times the reserving
 * calls' recent latency (its recent peak, from sent to read in this process, so it counts the
 * event loop's own delay; or `MIN_LEAD_MS`): its slots then start where the current ones
 * end, instead of lapsing while the reply is on its way.
 */
const LEAD_LATENCIES = 2;
const MIN_LEAD_MS = 2;

/** The decision rate behind the batch sizing is read over at least this long. */
const RATE_SAMPLE_MS = 10;

interface Entry {
  readonly plan: ReservablePlan;
  size: number;
  batch: Batch | undefined;
  /** The next batch, asked for before the current one ran out; its slots start after it. */
  queued: Batch | undefined;
  /**
   * A reserving call with a batch size above 1 (or a background one) in flight: other
   * decisions wait for it.
   */
  pending: Pending | undefined;
  /** The reserving calls' recent latency (ms, from sent to settled in this process). */
  latencyMs: number;
  waiting: number;
  /** Decisions on the plan since `countedSince` (performance.now()), read into `perMs`. */
  counted: number;
  countedSince: number;
  /** This instance's recent decision rate on the plan, per ms (0 until measured). */
  perMs: number;
  /** Decisions sent per call since the last probe. */
  skipped: number;
  /**
   * Decisions sent per call since the last reserving call was sent: they may move the
   * buckets after its reservation, so the next reply's `alone` cannot tell them from another
   * instance's.
   */
  direct: number;
  touched: boolean;
}

/** A reserving call other decisions wait for. */
interface Pending {
  readonly sent: Promise<unknown>;
  readonly call: Call;
}

/** One reserving call, as its reply is read. */
interface Call {
  readonly plan: ReservablePlan;
  /** The plan's reservation state when the call was sent (none when the book was full). */
  readonly entry: Entry | undefined;
  readonly asked: number;
  /** The ask was cut to what this instance may hold (`maxBatch`, `ttlSlots`), below the decisions wanting a slot. */
  readonly capped: boolean;
  readonly sentAt: number;
  /** This instance's per-call decisions may have moved the buckets since its last reservation. */
  readonly ownPerCall: boolean;
  /** The call decides a message (its slot 0), rather than filling the next batch in the background. */
  readonly decides: boolean;
  /** The book's epoch when the call was sent. */
  readonly epoch: number;
  /**
   * Set from its reply: it was granted fewer slots than asked (the TTL or the limit cut it),
   * or none; the decisions that waited for it then go per call rather than one reserving
   * call at a time.
   */
  cut: boolean;
  /**
   * Decisions that waited for it and failed with it (the failure mode answered them, perhaps
   * admitting them): a reply that comes after all keeps that many of its slots spent.
   */
  failedWaiters: number;
}

export interface ReservationBookOptions {
  readonly gate: CallGate;
  /** Whether a call can be sent now (also while the store closes: the gate refuses then). */
  readonly canCall: () => boolean;
  readonly reserve: ScriptCall;
  readonly unreserve: ScriptCall;
  readonly owner: string;
  readonly maxBatch: number;
  readonly ttlMs: number;
  /** Whether the server keeps hash-field TTLs, as the store last read it. */
  readonly fieldTtls: () => FieldTtlMode;
  /** At most this many plans keep reservation state; others decide per call. */
  readonly maxEntries: number;
}

/**
 * Token reservations (option `reservations`): for a plan of token buckets only, this
 * instance takes a batch of slots from the shared buckets in one script call and spends them
 * locally, each only until its slot starts on Redis's clock (mapped to this process's
 * monotonic clock from the moment the call was sent, so a spend is never later than allowed;
 * see `reserve-scripts.ts` for why that keeps the buckets exact). The batch size adapts
 * (`nextBatchSize`); an idle batch's unspent tail, and every tail at close, goes back.
 */
export class ReservationBook {
  private readonly plans = new WeakMap<RateLimitPlan, ReservablePlan | null>();
  private readonly entries = new Map<string, Entry>();
  /** The slots a decision takes from a batch, one per bucket (reused: decisions are synchronous here). */
  private readonly slots: number[] = [];
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** Bumped by `clear()`: replies to calls sent before it are of buckets since reset. */
  private epoch = 0;
  /** Batches that arrived while the book closed, on their way back. */
  private readonly closingTails: Promise<unknown>[] = [];
  /**
   * Give-backs started outside `close()` (a sweep's, a batch ended early, a batch that came
   * when both places were taken), still in flight: `close()` waits for them, so that none is
   * sent after the store's connection is gone (a tail detached from its entry is in no other
   * list that `close()` gives back).
   */
  private readonly returning = new Set<Promise<unknown>>();
  /** Set while a decision released from a wait is retried: it goes per call (see `wants`). */
  private perCall = false;

  constructor(private readonly options: ReservationBookOptions) {}

  /** Plans that keep reservation state (for tests and metrics). */
  get size(): number {
    return this.entries.size;
  }

  /** The plan as the reservation scripts take it, or undefined when it is not token buckets only. */
  reservable(plan: RateLimitPlan): ReservablePlan | undefined {
    let known = this.plans.get(plan);
    if (known === undefined) {
      known = compileReservable(plan, this.options);
      this.plans.set(plan, known);
    }
    return known ?? undefined;
  }

  /**
   * Spends a slot of a batch held for the plan, or returns undefined when none is left; asks
   * for the next batch in the background when this one is about to run out.
   */
  take(plan: ReservablePlan): RateLimitDecision | undefined {
    const entry = this.entries.get(plan.key);
    if (entry === undefined) return undefined;
    entry.counted++;
    let batch = entry.batch;
    if (batch === undefined) return undefined;
    const now = performance.now();
    let slots = spendSlots(plan, batch, now, this.slots);
    if (slots === undefined) {
      this.over(entry, batch, now);
      if (entry.queued === undefined) return undefined;
      batch = entry.batch = entry.queued;
      entry.queued = undefined;
      slots = spendSlots(plan, batch, now, this.slots);
      if (slots === undefined) {
        this.over(entry, batch, now);
        return undefined;
      }
    }
    this.prefetch(entry, batch, now);
    return nearOf(plan, batch.bases, slots, batch.redisNow + (now - batch.sentAt));
  }

  /**
   * A batch that can no longer be spent: one of its buckets has no slot left. When another
   * bucket still holds slots that start later (a slow bucket beside a fast one, whose slots
   * lapse a few milliseconds apart), they go back now, ahead of this decision's own call, so
   * that the slow bucket does not lose them.
   */
  private over(entry: Entry, batch: Batch, now: number): void {
    // Only while nothing was reserved after it (else the buckets moved: it could not go back).
    if (
      unspent(batch) > 0 &&
      !batch.kept &&
      entry.queued === undefined &&
      entry.pending === undefined &&
      futureLeft(entry.plan, batch, now)
    ) {
      this.inFlight(this.giveBack(entry.plan, batch));
    }
    exhaust(batch);
  }

  /**
   * Whether this decision should be a reserving call: yes while batches are worth it (or
   * not known yet); at a batch size of 1 (contention, the limit near, or decisions too rare
   * for the buckets' rates) only one probe every `PROBE_EVERY` decisions, the others going
   * through the per-call script.
   */
  wants(plan: ReservablePlan): boolean {
    const entry = this.entries.get(plan.key);
    if (this.perCall) {
      if (entry !== undefined) {
        entry.touched = true;
        entry.direct++;
      }
      return false;
    }
    if (entry === undefined || entry.size > 1 || entry.pending !== undefined) return true;
    entry.touched = true;
    if (++entry.skipped < PROBE_EVERY) {
      entry.direct++;
      return false;
    }
    entry.skipped = 0;
    return true;
  }

  /**
   * Decides the plan with a reserving call (or, while one with a larger batch is in flight,
   * waits for it and `retry`s). `refused` turns a refusal reply into the decision.
   *
   * A decision that waits for a call which fails (Redis failed or stayed silent past the
   * deadline) fails with the same error (the store's failure mode decides it) instead of
   * sending a call of its own, which would take one more deadline. One whose call was
   * answered in time but left it no slot tries again, with a call of its own or by waiting
   * for the next: each such step is a round trip Redis answered in time, plus at most one
   * deadline for the last (a Redis that froze meanwhile: one round trip and one deadline in
   * all, where a decision per call takes one deadline). When that call was granted fewer
   * slots than asked (or none), or its ask was all this instance may hold (`maxBatch`,
   * `ttlSlots`) and fewer than the decisions waiting for it, the decisions left without a
   * slot go per call, together, instead of one reserving call at a time.
   */
  consume(
    plan: ReservablePlan,
    retry: () => Promise<RateLimitDecision> | RateLimitDecision,
    refused: (reply: unknown, delivered: boolean) => RateLimitDecision,
  ): Promise<RateLimitDecision> {
    const entry = this.entries.get(plan.key) ?? this.open(plan);
    if (entry?.pending !== undefined) {
      const { sent, call } = entry.pending;
      // The call's ask covers the decisions already waiting for it (and its own). One beyond
      // that, when the ask was all it could be (`maxBatch`, `ttlSlots`), goes per call once the
      // call is answered: the next reserving call could not cover it either.
      const perCall = call.capped && entry.waiting + (call.decides ? 1 : 0) >= call.asked;
      // The retry is counted again.
      entry.counted--;
      entry.waiting++;
      return sent.then(
        () => {
          entry.waiting--;
          return call.cut || perCall ? this.retryPerCall(retry) : retry();
        },
        (error: unknown) => {
          entry.waiting--;
          // Its slot, should the call's reply come late after all, is this decision's.
          call.failedWaiters++;
          throw error;
        },
      );
    }
    if (entry === undefined) return this.reserve(plan, entry, 1, false, refused);
    const wanted = Math.max(entry.size, entry.waiting + 1);
    const ask = Math.min(this.options.maxBatch, plan.ttlSlots, wanted);
    return this.reserve(plan, entry, ask, ask < wanted, refused);
  }

  /**
   * Retries a decision per call: `retry` (the store's `consume`) spends a slot still held,
   * else reaches `wants` synchronously, which says no while the flag is set.
   */
  private retryPerCall(
    retry: () => Promise<RateLimitDecision> | RateLimitDecision,
  ): Promise<RateLimitDecision> | RateLimitDecision {
    this.perCall = true;
    try {
      return retry();
    } finally {
      this.perCall = false;
    }
  }

  /**
   * The reservation state of a plan decided for the first time (none when the book is full
   * or closed). Its first call asks for 2 slots, so the decisions that come while it is in
   * flight wait for it, and the next ask covers them all; for 1 when the TTL grants no slot
   * after the deciding one (a span longer than `ttlMs`), so that none waits.
   */
  private open(plan: ReservablePlan): Entry | undefined {
    if (this.closed || this.entries.size >= this.options.maxEntries) return undefined;
    const entry: Entry = {
      plan,
      // 1 when the TTL grants no slot after the deciding one: every decision then goes per call.
      size: Math.min(2, plan.ttlSlots),
      batch: undefined,
      queued: undefined,
      pending: undefined,
      latencyMs: 0,
      waiting: 0,
      counted: 1,
      countedSince: performance.now(),
      perMs: 0,
      skipped: 0,
      direct: 0,
      touched: true,
    };
    this.entries.set(plan.key, entry);
    this.startSweep();
    return entry;
  }

  /**
   * Sends a reserving call for `ask` slots: for a decision (slot 0 is its answer) when
   * `refused` is given, else in the background (every slot goes to the batches).
   */
  private reserve(
    plan: ReservablePlan,
    entry: Entry | undefined,
    ask: number,
    capped: boolean,
    refused: ((reply: unknown, delivered: boolean) => RateLimitDecision) | undefined,
  ): Promise<RateLimitDecision> {
    const args = plan.reserveArgs.slice();
    // After numkeys and KEYS (the tracker hashes): ARGV, whose 4th and 5th are the field-TTL mode and the ask.
    const head = 1 + plan.hashes.length;
    args[head + 3] = String(this.options.fieldTtls());
    args[head + 4] = String(ask);
    const sentAt = performance.now();
    const ownPerCall = entry !== undefined && entry.direct > 0;
    if (entry !== undefined) entry.direct = 0;
    const call: Call = {
      plan,
      entry,
      asked: ask,
      capped,
      sentAt,
      ownPerCall,
      decides: refused !== undefined,
      epoch: this.epoch,
      cut: false,
      failedWaiters: 0,
    };
    const answer = refused ?? this.backgroundRefusal(entry);
    const sent = this.options.gate.within(
      this.options.reserve(...args),
      (reply, delivered) => this.settle(call, reply, delivered, answer),
      (reply, delivered) => {
        // An answer that came too late still took its slots: keep them for the next decisions
        // (but a deciding call's slot 0, which the store's failure mode answered for).
        if (!delivered && Array.isArray(reply) && toNumber(reply[0]) === 2) {
          try {
            this.settle(call, reply, false, answer);
          } catch {
            // A malformed late answer: its slots lapse.
          }
        }
      },
    );
    if (entry !== undefined && (ask > 1 || !call.decides)) {
      const pending: Pending = { sent, call };
      entry.pending = pending;
      const done = (): void => {
        if (entry.pending === pending) entry.pending = undefined;
      };
      // A failed call: the next decisions go per call (each within its own deadline) rather
      // than wait for another reserving call, until a probe finds Redis answering again.
      const failed = (): void => {
        done();
        entry.size = 1;
      };
      sent.then(done, failed);
    }
    return sent;
  }

  /**
   * A background call that got no slot: refused (the buckets are at their limit), batches
   * stop for now.
   */
  private backgroundRefusal(entry: Entry | undefined): (reply: unknown, delivered: boolean) => RateLimitDecision {
    return (reply) => {
      const refusal = Array.isArray(reply) && toNumber(reply[0]) === 0;
      if (entry !== undefined && refusal && this.entries.get(entry.plan.key) === entry) entry.size = 1;
      return ALLOWED;
    };
  }

  /**
   * Asks for the next batch in the background when the current one would run out within
   * the lead time (its last slot's deadline, or its unspent slots at this instance's recent
   * rate), keeping what this instance holds unspent within `maxBatch` slots and `ttlMs` of
   * the slowest bucket's refill (`ttlSlots`).
   */
  private prefetch(entry: Entry, batch: Batch, now: number): void {
    if (entry.size < 2 || entry.pending !== undefined || entry.queued !== undefined || this.closed) return;
    const left = unspent(batch);
    // Decisions still waiting on the last call (retrying one by one) count in the ask; what
    // this instance holds unspent stays within `maxBatch` slots and `ttlMs` of refill.
    const room = Math.min(this.options.maxBatch, entry.plan.ttlSlots) - left;
    const wanted = Math.max(entry.size, entry.waiting + 1);
    const ask = Math.min(wanted, room);
    if (ask < 2) return;
    const perMs = entry.perMs > 0 ? entry.perMs : entry.counted / Math.max(1, now - entry.countedSince);
    // Two decisions' gap on top: the next check comes only with the next decision.
    const lead = Math.max(MIN_LEAD_MS, LEAD_LATENCIES * entry.latencyMs) + (perMs > 0 ? 2 / perMs : 0);
    if (Math.min(batch.lastDeadline - now, left / perMs) > lead || !this.options.canCall()) return;
    this.reserve(entry.plan, entry, ask, ask < wanted, undefined).catch(() => undefined);
  }

  /**
   * Forgets the batches of the plans with a tier among `keys` (every plan's without `keys`)
   * without giving anything back (the keys were reset); replies to calls sent before are not
   * kept either (their slots are of the buckets before the reset). Other plans keep theirs:
   * their buckets were not reset.
   */
  clear(keys?: readonly string[]): void {
    if (keys === undefined) {
      this.entries.clear();
      this.epoch++;
      return;
    }
    if (keys.length === 0 || this.entries.size === 0) return;
    const reset = new Set(keys);
    for (const [key, entry] of this.entries) {
      if (entry.plan.tierKeys.some((tierKey) => reset.has(tierKey))) this.entries.delete(key);
    }
  }

  /** Gives back every batch's unspent tail (best effort, within the deadline) and stops. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    const entries = [...this.entries.values()];
    // Calls still in flight first: their batches are the newest, so they go back first.
    await Promise.allSettled(entries.map((entry) => entry.pending?.sent));
    await Promise.allSettled(entries.map((entry) => this.giveBackAll(entry)));
    this.entries.clear();
    // Give-backs the sweep (or a decision) started before: their tails left their entries.
    while (this.returning.size > 0) await Promise.allSettled([...this.returning]);
    // Batches whose replies came while closing (each give-back handles its own failure).
    while (this.closingTails.length > 0) await Promise.all(this.closingTails.splice(0));
  }

  private settle(
    call: Call,
    reply: unknown,
    delivered: boolean,
    refused: (reply: unknown, delivered: boolean) => RateLimitDecision,
  ): RateLimitDecision {
    const { plan, asked, sentAt, decides } = call;
    // The entry the call was sent for, unless the keys were reset since (`clear`).
    const current =
      call.epoch === this.epoch && call.entry !== undefined && this.entries.get(plan.key) === call.entry
        ? call.entry
        : undefined;
    if (!Array.isArray(reply) || toNumber(reply[0]) !== 2) {
      call.cut = true;
      // Refused: batches stop until a probe finds room (the block cache answers meanwhile),
      // so concurrent decisions do not queue one call at a time behind each other's refusal.
      if (current !== undefined && decides && Array.isArray(reply) && toNumber(reply[0]) === 0) current.size = 1;
      return refused(reply, delivered);
    }
    // Slot 0 of a deciding call is its decision's, also when the reply came after the
    // deadline: the failure mode answered that decision (perhaps admitting it), so the slot
    // is not spent again; so are the slots of the decisions that waited for the call and
    // failed with it (its ask covered them).
    const granted = toNumber(reply[1]);
    const spent = (decides ? 1 : 0) + (delivered ? 0 : call.failedWaiters);
    const batch = batchOf(plan, reply, asked, sentAt, granted >= 1 ? Math.min(granted, spent) : spent);
    call.cut = batch.granted < asked;
    if (this.closed) {
      // Taken while the store closes: straight back.
      if (unspent(batch) > 0) this.closingTails.push(this.giveBack(plan, batch).catch(() => undefined));
      return delivered && decides ? nearOf(plan, batch.bases, 0, batch.redisNow) : ALLOWED;
    }
    const entry = current;
    let spendable = Infinity;
    if (entry !== undefined && delivered) {
      const now = performance.now();
      this.measureRate(entry, now);
      if (entry.perMs > 0) spendable = entry.perMs * Math.min(this.options.ttlMs, plan.batchMs);
      const latency = now - sentAt;
      // Up at once, down slowly: the lead covers the slow replies, not the average one.
      entry.latencyMs = latency > entry.latencyMs ? latency : 0.9 * entry.latencyMs + 0.1 * latency;
    }
    const size = nextBatchSize(
      {
        asked,
        granted: batch.granted,
        alone: toNumber(reply[3]) === 1,
        more: toNumber(reply[4]),
        spendable,
        ownPerCall: call.ownPerCall,
        current: entry?.size,
        decides,
        ttlSlots: plan.ttlSlots,
      },
      this.options.maxBatch,
    );
    if (entry !== undefined) {
      entry.size = size;
      entry.touched = true;
      this.keep(entry, batch);
    }
    return delivered && decides ? nearOf(plan, batch.bases, 0, batch.redisNow) : ALLOWED;
  }

  /**
   * Reads the decisions counted since the last reading (at least `RATE_SAMPLE_MS` ago) into
   * the entry's recent rate (an average that halves the weight of older readings).
   */
  private measureRate(entry: Entry, now: number): void {
    const elapsed = now - entry.countedSince;
    if (elapsed < RATE_SAMPLE_MS) return;
    const sample = entry.counted / elapsed;
    entry.perMs = entry.perMs === 0 ? sample : (entry.perMs + sample) / 2;
    entry.counted = 0;
    entry.countedSince = now;
  }

  /**
   * Keeps a new batch: as the current one when that is spent, as the next one when it came
   * from a background call, otherwise (decisions raced past the wait with asks of 1) its tail
   * goes back and the older run stays.
   */
  private keep(entry: Entry, batch: Batch): void {
    if (unspent(entry.batch) === 0 && entry.queued !== undefined) {
      entry.batch = entry.queued;
      entry.queued = undefined;
    }
    if (unspent(batch) === 0) {
      if (unspent(entry.batch) === 0) entry.batch = undefined;
      return;
    }
    if (unspent(entry.batch) === 0) {
      entry.batch = batch;
    } else if (entry.queued === undefined && batch.next === 0 && batch.bases[0]! >= entry.batch!.bases[0]!) {
      entry.queued = batch;
    } else {
      // One that cannot go back is kept, as at a sweep (dropped, its slots would be lost to
      // every instance): a batch starting before the current one's (the buckets were reset
      // or their data lost, so their ends moved back) is then spent first.
      const epoch = this.epoch;
      this.inFlight(
        this.giveBack(entry.plan, batch)
          // One that failed or missed its deadline may still run in Redis: dropped, as at a sweep.
          .catch(() => true)
          .then((back) => {
            if (!back && !this.closed && epoch === this.epoch && this.entries.get(entry.plan.key) === entry) {
              this.readopt(entry, batch);
            }
          }),
      );
      return;
    }
    this.startSweep();
  }

  /**
   * Every quarter of the TTL: the tail of a batch not spent from since the last sweep goes
   * back (one kept after a failed give-back is only dropped, once its slots have lapsed);
   * entries idle since the last sweep go. Runs only while entries exist.
   */
  /** Tracks a give-back started outside `close()` until it settles (its failure is handled where it started). */
  private inFlight(giveBack: Promise<unknown>): void {
    const settled: Promise<unknown> = giveBack.catch(() => undefined).finally(() => this.returning.delete(settled));
    this.returning.add(settled);
  }

  private startSweep(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => this.sweep(), Math.max(10, this.options.ttlMs / 4));
    this.timer.unref();
  }

  private sweep(): void {
    const now = performance.now();
    for (const [key, entry] of this.entries) {
      const batch = entry.batch;
      if (batch !== undefined) {
        if (batch.used) {
          batch.used = false;
        } else if (!batch.kept || (entry.queued !== undefined && !entry.queued.kept)) {
          this.inFlight(this.giveBackAll(entry, true));
        } else if (now > (entry.queued ?? batch).lastDeadline) {
          // Kept batches (their give-back failed) whose slots have all lapsed.
          entry.batch = entry.queued = undefined;
        }
        continue;
      }
      if (entry.pending === undefined && !entry.touched) this.entries.delete(key);
      entry.touched = false;
    }
    if (this.entries.size === 0 && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /**
   * Gives back the next batch's tail, then the current one's (which can go back only once
   * the bucket is again at the end the current batch left it at). A tail that cannot go
   * back (a decision moved the buckets after it) stays with the entry, marked kept: this
   * instance spends it first, and it lapses as time passes its slots. Dropped, it would be
   * lost to every instance for as long as the bucket's `fullAt` runs ahead of now, which
   * for a bucket spending its burst is far longer than `ttlMs`. A give-back whose answer
   * never came (an error, or past the deadline: the script may still run) drops its batch:
   * lost slots are under-admission, bounded; slots both given back and spent would not be.
   */
  private async giveBackAll(entry: Entry, idle = false): Promise<void> {
    const { batch, queued } = entry;
    entry.batch = undefined;
    entry.queued = undefined;
    const epoch = this.epoch;
    // A give-back that failed or missed its deadline may still run in Redis: its batch is
    // dropped (spent too, its slots would count twice), never kept.
    const queuedBack = queued === undefined || (await this.giveBack(entry.plan, queued, idle).catch(() => true));
    const batchBack =
      batch === undefined || (queuedBack && (await this.giveBack(entry.plan, batch, idle).catch(() => true)));
    // Not while closing, nor once the plan's keys were reset (its slots are of the old buckets).
    if (this.closed || epoch !== this.epoch || this.entries.get(entry.plan.key) !== entry) return;
    if (!batchBack) this.readopt(entry, batch!);
    if (!queuedBack) this.readopt(entry, queued!);
  }

  /** Keeps a batch whose give-back failed, as the current or next batch, unless both are taken. */
  private readopt(entry: Entry, batch: Batch): void {
    batch.kept = true;
    if (unspent(batch) === 0 || performance.now() > batch.lastDeadline) return;
    const current = entry.batch;
    if (current === undefined || unspent(current) === 0) {
      entry.batch = batch;
    } else if (entry.queued === undefined) {
      // The batch whose slots start first is spent first.
      if (batch.bases[0]! < current.bases[0]!) {
        entry.batch = batch;
        entry.queued = current;
      } else {
        entry.queued = batch;
      }
    } else {
      // Both places taken (new batches came meanwhile): it lapses unspent.
      return;
    }
    this.startSweep();
  }

  /**
   * Sends a batch's unspent tail back; resolves whether it went back, or there was none, or
   * it is of buckets reset since (a bucket's field gone: nothing counts it any more).
   */
  private async giveBack(plan: ReservablePlan, batch: Batch, idle = false): Promise<boolean> {
    if (Math.min(...batch.cursors) >= batch.granted) return true;
    const args = [String(plan.hashes.length), ...plan.hashes, String(plan.specs.length)];
    // An idle batch's give-back keeps the bucket this instance's alone (see UNRESERVE_LUA).
    args.push(String(this.options.fieldTtls()), '', idle ? '1' : '0');
    // Each bucket from its own cursor: its slots before it are spent or have lapsed.
    plan.specs.forEach((spec, i) => {
      const [hashIndex, field] = plan.places[i]!;
      const from = String(batch.cursors[i]);
      args.push(hashIndex, field, batch.endTexts[i]!, batch.baseTexts[i]!, from, String(spec.span));
    });
    if (!this.options.canCall()) return false;
    return this.options.gate.within(this.options.unreserve(...args), (reply) => toNumber(reply) !== 0);
  }
}

/**
 * The reservation book the store option asks for: none when off, or with the app clock (an
 * app clock cannot time a slot across instances).
 */
export function reservationBook(
  option: RedisStoreOptions['reservations'],
  appClock: boolean,
  parts: Omit<ReservationBookOptions, 'maxBatch' | 'ttlMs' | 'maxEntries'>,
): ReservationBook | undefined {
  if (option === undefined || option === false || appClock) return undefined;
  const figures = option === true ? {} : option;
  return new ReservationBook({
    ...parts,
    maxBatch: figures.maxBatch ?? DEFAULT_RESERVATION_MAX_BATCH,
    ttlMs: figures.ttlMs ?? DEFAULT_RESERVATION_TTL_MS,
    maxEntries: DEFAULT_BLOCK_CACHE_ENTRIES,
  });
}
