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
  /** The local time after which the last slot may no longer be spent (set once, when made). */
  lastDeadline: number;
  /** The next slot to spend; the ones before it are spent or lapsed. */
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
    next: first,
    used: true,
    kept: false,
  };
  batch.lastDeadline = deadline(plan, batch, granted - 1);
  return batch;
}

/**
 * The local time after which slot j may no longer be spent: its earliest start over the
 * plan's buckets, mapped from Redis's clock onto this process's from when the call was sent
 * (the script ran later, so the mapped time is never later than the real one).
 */
export function deadline(plan: ReservablePlan, batch: Batch, j: number): number {
  const specs = plan.specs;
  let start = Infinity;
  for (let i = 0; i < specs.length; i++) {
    const at = batch.bases[i]! + j * specs[i]!.span;
    if (at < start) start = at;
  }
  return batch.sentAt + (start - batch.redisNow) - MARGIN_MS;
}

/** Takes the next slot still due at `now` (skipping lapsed ones); -1 when none is left. */
export function spendSlot(plan: ReservablePlan, batch: Batch, now: number): number {
  if (batch.next >= batch.granted || now > batch.lastDeadline) {
    batch.next = batch.granted;
    return -1;
  }
  while (deadline(plan, batch, batch.next) < now) batch.next++;
  batch.used = true;
  return batch.next++;
}

/** Slots of the batch not spent yet (lapsed ones included until a spend skips them). */
export function unspent(batch: Batch | undefined): number {
  return batch === undefined ? 0 : batch.granted - batch.next;
}
