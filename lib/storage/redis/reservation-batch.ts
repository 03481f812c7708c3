/** A run of reserved slots (see `reserve-scripts.ts`) and how this process spends it. */
import { toNumber, unexpected } from './plan-compiler.js';
import type { ReservablePlan } from './reservable-plan.js';

/** Local time is compared with a slot's start this much early (clock rates, rounding). */
const MARGIN_MS = 0.5;

/** A run of slots this instance took and spends locally. */
export interface Batch {
  /** `performance.now()` when the reserving call was sent: the script ran after it. */
  readonly sentAt: number;
  /** The script's clock when it ran. */
  readonly redisNow: number;
  readonly bases: readonly number[];
  readonly baseTexts: readonly string[];
  readonly endTexts: readonly string[];
  readonly granted: number;
  /**
   * The local time after which no decision can be spent from it any more: the earliest, over
   * the plan's buckets, of the time the bucket's last slot lapses (set once, when made).
   */
  lastDeadline: number;
  /**
   * Per bucket, the next slot to consider: the ones before it are spent or lapsed. Buckets
   * of different rates lapse at their own pace (a slot of a fast bucket starts a few
   * milliseconds after the one before it, a slow bucket's far later), so each keeps its own.
   */
  readonly cursors: number[];
  /** The largest cursor: slots from it on are unspent in every bucket. */
  next: number;
  /** Spent from since the last sweep. */
  used: boolean;
  /**
   * Its give-back found the buckets moved since (another decision came after it): it stays
   * with this instance, spent before any new call, until its slots lapse; never offered back
   * again.
   */
  kept: boolean;
}

/**
 * The batch a granting reply (`{2, g, now, alone, more, base_1..n, end_1..n}`) holds, or
 * throws on a reply of the wrong shape. `first` is the first slot still to spend: 1 when the
 * call's own decision took slot 0.
 */
export function batchOf(
  plan: ReservablePlan,
  reply: readonly unknown[],
  asked: number,
  sentAt: number,
  first: number,
): Batch {
  const n = plan.specs.length;
  const granted = toNumber(reply[1]);
  const redisNow = toNumber(reply[2]);
  if (reply.length !== 5 + 2 * n || !(granted >= 1 && granted <= asked) || !Number.isFinite(redisNow)) {
    throw unexpected('reserve', reply);
  }
  const baseTexts = reply.slice(5, 5 + n).map(String);
  const bases = baseTexts.map(Number);
  const batch: Batch = {
    sentAt,
    redisNow,
    bases,
    baseTexts,
    endTexts: reply.slice(5 + n).map(String),
    granted,
    lastDeadline: 0,
    cursors: bases.map(() => first),
    next: first,
    used: true,
    kept: false,
  };
  let last = Infinity;
  for (let i = 0; i < n; i++) last = Math.min(last, deadline(plan, batch, i, granted - 1));
  batch.lastDeadline = last;
  return batch;
}

/**
 * The local time after which slot j of bucket i may no longer be spent: its start, mapped
 * from Redis's clock onto this process's from when the call was sent (the script ran later,
 * so the mapped time is never later than the real one).
 */
export function deadline(plan: ReservablePlan, batch: Batch, i: number, j: number): number {
  return batch.sentAt + (batch.bases[i]! + j * plan.specs[i]!.span - batch.redisNow) - MARGIN_MS;
}

/**
 * Takes, in every bucket, the next slot still due at `now` (skipping the bucket's lapsed
 * ones: their start has passed, so the bucket has that capacity back, as if spent); returns
 * the slots taken, or undefined when a bucket has none left (nothing is taken then; the
 * batch is over, see `futureLeft`). `into` receives the slots.
 */
export function spendSlots(plan: ReservablePlan, batch: Batch, now: number, into: number[]): number[] | undefined {
  const { cursors, granted } = batch;
  if (batch.next >= granted || now > batch.lastDeadline) return undefined;
  for (let i = 0; i < cursors.length; i++) {
    let j = cursors[i]!;
    while (j < granted && deadline(plan, batch, i, j) < now) j++;
    if (j >= granted) return undefined;
    into[i] = j;
  }
  let next = 0;
  for (let i = 0; i < cursors.length; i++) {
    cursors[i] = into[i]! + 1;
    if (cursors[i]! > next) next = cursors[i]!;
  }
  batch.next = next;
  batch.used = true;
  return into;
}

/**
 * Whether a batch that can no longer be spent still holds, in some bucket, slots that start
 * after `now`: they would be lost to that bucket (its `fullAt` counts them) unless given
 * back. A slow bucket beside a fast one is the case: the fast one's slots lapse after a few
 * milliseconds, the slow one's not for seconds.
 */
export function futureLeft(plan: ReservablePlan, batch: Batch, now: number): boolean {
  for (let i = 0; i < batch.cursors.length; i++) {
    const j = batch.cursors[i]!;
    if (j < batch.granted && deadline(plan, batch, i, batch.granted - 1) >= now) return true;
  }
  return false;
}

/** Marks a batch as spent (nothing more is taken from it). */
export function exhaust(batch: Batch): void {
  batch.next = batch.granted;
  batch.cursors.fill(batch.granted);
}

/** Slots of the batch not spent yet (lapsed ones included until a spend skips them). */
export function unspent(batch: Batch | undefined): number {
  return batch === undefined ? 0 : batch.granted - batch.next;
}
