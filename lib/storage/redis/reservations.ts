import { performance } from 'node:perf_hooks';
import { ALLOWED, type RateLimitDecision, type RateLimitPlan } from '../../interfaces/plan.interface.js';
import { nextBatchSize } from './batch-sizing.js';
import type { CallGate } from './call-gate.js';
import { toNumber, unexpected } from './plan-compiler.js';
import { compileReservable, nearOf, type ReservablePlan } from './reservable-plan.js';
import {
  DEFAULT_BLOCK_CACHE_ENTRIES,
  DEFAULT_RESERVATION_MAX_BATCH,
  DEFAULT_RESERVATION_TTL_MS,
  type RedisStoreOptions,
} from './redis-store.options.js';

type ScriptCall = (...args: string[]) => Promise<unknown>;

/**
 * With a batch size of 1, one decision in this many goes through a reserving call (with the
 * next one: the second tells whether this instance is alone again); the others use the
 * per-call script, which costs less.
 */
const PROBE_EVERY = 32;

/** Local time is compared with a slot's start this much early (clock rates, rounding). */
const MARGIN_MS = 0.5;

/** A run of slots this instance took and spends locally. */
interface Batch {
  /** `performance.now()` when the reserving call was sent: the script ran after it. */
  readonly sentAt: number;
  /** The script's clock when it ran. */
  readonly redisNow: number;
  readonly bases: readonly number[];
  readonly baseTexts: readonly string[];
  readonly endTexts: readonly string[];
  readonly granted: number;
  /** The next slot to spend; the ones before it are spent or lapsed. */
  next: number;
  /** Spent from since the last sweep. */
  used: boolean;
}

interface Entry {
  readonly plan: ReservablePlan;
  size: number;
  batch: Batch | undefined;
  /** A reserving call with a batch size above 1 in flight: other decisions wait for it. */
  pending: Promise<unknown> | undefined;
  waiting: number;
  /** When the last reserving call was sent, and the decisions made since (its own included). */
  since: number;
  decisions: number;
  /** Decisions sent per call since the last probe, and reserving calls still to make in a probe. */
  skipped: number;
  probing: number;
  /**
   * Decisions sent per call since the last reserving call was sent: they may move the
   * buckets after its reservation, so the next reply's `alone` cannot tell them from another
   * instance's.
   */
  direct: number;
  touched: boolean;
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
  readonly fieldTtls: () => boolean;
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
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

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

  /** Spends a slot of a batch held for the plan, or returns undefined when none is left. */
  take(plan: ReservablePlan): RateLimitDecision | undefined {
    const entry = this.entries.get(plan.key);
    const batch = entry?.batch;
    if (batch === undefined) return undefined;
    const decision = this.spend(plan, batch, performance.now());
    if (decision !== undefined) entry!.decisions++;
    return decision;
  }

  /**
   * Whether this decision should be a reserving call: yes while batches are worth it (or
   * not known yet); at a batch size of 1 (contention, the limit near, or decisions too rare
   * for the buckets' rates) only a probe of two calls in a row every `PROBE_EVERY`
   * decisions, the others going through the per-call script.
   */
  wants(plan: ReservablePlan): boolean {
    const entry = this.entries.get(plan.key);
    if (entry === undefined || entry.size > 1 || entry.pending !== undefined) return true;
    entry.touched = true;
    if (entry.probing > 0) {
      entry.probing--;
      return true;
    }
    entry.decisions++;
    if (++entry.skipped < PROBE_EVERY) {
      entry.direct++;
      return false;
    }
    entry.skipped = 0;
    entry.probing = 1;
    return true;
  }

  /**
   * Decides the plan with a reserving call (or, while one with a larger batch is in flight,
   * waits for it and `retry`s). `refused` turns a refusal reply into the decision.
   */
  consume(
    plan: ReservablePlan,
    retry: () => Promise<RateLimitDecision> | RateLimitDecision,
    refused: (reply: unknown, delivered: boolean) => RateLimitDecision,
  ): Promise<RateLimitDecision> {
    const entry = this.entries.get(plan.key);
    if (entry?.pending !== undefined) {
      entry.waiting++;
      const again = (): Promise<RateLimitDecision> | RateLimitDecision => {
        entry.waiting--;
        return retry();
      };
      return entry.pending.then(again, again);
    }
    const ask = entry === undefined ? 1 : Math.min(this.options.maxBatch, Math.max(entry.size, entry.waiting + 1));
    const args = plan.reserveArgs.slice();
    const head = 1 + plan.hashes.length + plan.specs.length;
    args[head + 3] = this.options.fieldTtls() ? '1' : '0';
    args[head + 4] = String(ask);
    const sentAt = performance.now();
    const ownPerCall = entry !== undefined && entry.direct > 0;
    if (entry !== undefined) entry.direct = 0;
    const call = this.options.gate.within(
      this.options.reserve(...args),
      (reply, delivered) => this.settle(plan, ask, sentAt, reply, delivered, refused, ownPerCall),
      (reply, delivered) => {
        // An answer that came too late still took its slots: keep them for the next decisions.
        if (!delivered && Array.isArray(reply) && toNumber(reply[0]) === 2) {
          try {
            this.settle(plan, ask, sentAt, reply, false, refused, ownPerCall);
          } catch {
            // A malformed late answer: its slots lapse.
          }
        }
      },
    );
    if (ask > 1 && entry !== undefined) {
      entry.pending = call;
      const done = (): void => {
        if (entry.pending === call) entry.pending = undefined;
      };
      call.then(done, done);
    }
    return call;
  }

  /** Forgets every batch without giving anything back (the keys were reset). */
  clear(): void {
    this.entries.clear();
  }

  /** Gives back every batch's unspent tail (best effort, within the deadline) and stops. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    const tails: Promise<unknown>[] = [];
    for (const entry of this.entries.values()) {
      if (entry.batch !== undefined) tails.push(this.giveBack(entry.plan, entry.batch));
    }
    this.entries.clear();
    await Promise.allSettled(tails);
  }

  private settle(
    plan: ReservablePlan,
    asked: number,
    sentAt: number,
    reply: unknown,
    delivered: boolean,
    refused: (reply: unknown, delivered: boolean) => RateLimitDecision,
    ownPerCall: boolean,
  ): RateLimitDecision {
    if (!Array.isArray(reply) || toNumber(reply[0]) !== 2) return refused(reply, delivered);
    const n = plan.specs.length;
    const granted = toNumber(reply[1]);
    const redisNow = toNumber(reply[2]);
    if (reply.length !== 5 + 2 * n || !(granted >= 1 && granted <= asked) || !Number.isFinite(redisNow)) {
      throw unexpected('reserve', reply);
    }
    const baseTexts = reply.slice(5, 5 + n).map(String);
    const batch: Batch = {
      sentAt,
      redisNow,
      bases: baseTexts.map(Number),
      baseTexts,
      endTexts: reply.slice(5 + n).map(String),
      granted,
      next: delivered ? 1 : 0,
      used: true,
    };
    let entry = this.entries.get(plan.key);
    let spendable = Infinity;
    if (entry !== undefined && delivered) {
      // This instance's decision rate for the plan, since its last reserving call.
      const elapsed = sentAt - entry.since;
      if (elapsed > 0) spendable = (entry.decisions / elapsed) * Math.min(this.options.ttlMs, plan.batchMs);
      entry.since = sentAt;
      entry.decisions = 1;
    }
    const size = nextBatchSize(
      {
        asked,
        granted,
        alone: toNumber(reply[3]) === 1,
        more: toNumber(reply[4]),
        spendable,
        ownPerCall,
      },
      this.options.maxBatch,
    );
    if (entry === undefined && !this.closed) {
      if (this.entries.size < this.options.maxEntries) {
        entry = {
          plan,
          size,
          batch: undefined,
          pending: undefined,
          waiting: 0,
          since: sentAt,
          decisions: 1,
          skipped: 0,
          probing: 0,
          direct: 0,
          touched: true,
        };
        this.entries.set(plan.key, entry);
        this.startSweep();
      }
    }
    if (entry !== undefined) {
      entry.size = size;
      entry.touched = true;
      const held = entry.batch;
      if (held !== undefined && held.next < held.granted) {
        // Decisions raced past the wait (asks of 1): keep the older run, give this one's tail back.
        this.giveBack(plan, batch).catch(() => undefined);
      } else if (granted > batch.next && !this.closed) {
        if (held !== undefined) this.finish(entry);
        entry.batch = batch;
        this.startSweep();
      } else if (held !== undefined) {
        this.finish(entry);
      }
    }
    return delivered ? nearOf(plan, batch.bases, 0, redisNow) : ALLOWED;
  }

  private spend(plan: ReservablePlan, batch: Batch, now: number): RateLimitDecision | undefined {
    while (batch.next < batch.granted && this.deadline(plan, batch, batch.next) < now) batch.next++;
    if (batch.next >= batch.granted) return undefined;
    const slot = batch.next++;
    batch.used = true;
    return nearOf(plan, batch.bases, slot, batch.redisNow + (now - batch.sentAt));
  }

  /** The local time after which slot j may no longer be spent. */
  private deadline(plan: ReservablePlan, batch: Batch, j: number): number {
    let start = Infinity;
    plan.specs.forEach((spec, i) => {
      start = Math.min(start, batch.bases[i]! + j * spec.span);
    });
    return batch.sentAt + (start - batch.redisNow) - MARGIN_MS;
  }

  private finish(entry: Entry): void {
    entry.batch = undefined;
  }

  /**
   * Every quarter of the TTL: the tail of a batch not spent from since the last sweep goes
   * back; entries idle since the last sweep go. Runs only while entries exist.
   */
  private startSweep(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => this.sweep(), Math.max(10, this.options.ttlMs / 4));
    this.timer.unref();
  }

  private sweep(): void {
    for (const [key, entry] of this.entries) {
      const batch = entry.batch;
      if (batch !== undefined) {
        if (!batch.used) {
          this.giveBack(entry.plan, batch).catch(() => undefined);
          this.finish(entry);
        } else {
          batch.used = false;
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

  private giveBack(plan: ReservablePlan, batch: Batch): Promise<unknown> {
    if (batch.next >= batch.granted) return Promise.resolve();
    const args = [String(plan.hashes.length), ...plan.hashes, String(plan.specs.length)];
    args.push(this.options.fieldTtls() ? '1' : '0', '');
    plan.specs.forEach((spec, i) => {
      const [hashIndex, field] = plan.places[i]!;
      args.push(hashIndex, field, batch.endTexts[i]!, batch.baseTexts[i]!, String(batch.next), String(spec.span));
    });
    if (!this.options.canCall()) return Promise.resolve();
    return this.options.gate.within(this.options.unreserve(...args), () => undefined);
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
