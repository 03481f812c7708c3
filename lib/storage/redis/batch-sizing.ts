/** What one reservation call told about a plan's buckets. */
export interface ReservationOutcome {
  /** Slots asked for. */
  readonly asked: number;
  /** Slots granted (>= 1). */
  readonly granted: number;
  /** Every bucket was full, or last written by this instance's own reservation. */
  readonly alone: boolean;
  /** Slots that would still have fitted after the grant (capped by the script). */
  readonly more: number;
  /**
   * Decisions this instance could spend from the largest batch before its slots lapse: its
   * decision rate for the plan times the time `maxBatch` slots of a full bucket cover (at
   * most the reservation TTL). Infinity while unknown.
   */
  readonly spendable: number;
  /**
   * This instance sent decisions of the plan per call (the batch size was 1) after its
   * previous reservation: they, not another instance, may be what moved a bucket, so a
   * reply that is not `alone` tells nothing about contention.
   */
  readonly ownPerCall?: boolean;
}

/**
 * The size of the next reservation for one plan, from the last one's outcome:
 *
 * - contention (another instance, or a per-call decision, moved a bucket since this
 *   instance's last reservation): 1, so every decision is one Redis call as without
 *   reservations; but when this instance's own per-call decisions may have moved the bucket
 *   since its last reservation, not being alone tells nothing, and the size stays as asked
 *   (still at most half the slots free and `maxBatch`); otherwise they would keep it at 1
 *   for good, as the per-call decisions made while the size is 1 make the next reply say
 *   "not alone" again;
 * - near the limit (fewer slots granted than asked): 1;
 * - otherwise twice the last ask (at least 2), but at most half the slots still free after
 *   the grant (one instance never takes the rest of a bucket, and the size falls to 1 as the
 *   bucket empties) and at most `maxBatch`.
 *
 * - fewer than 2 decisions spendable from even the largest batch (this instance decides too
 *   rarely for the bucket's rate, so a batch's slots lapse before they are spent): 1, as a
 *   batch that saves no call costs script time for nothing.
 *
 * A lapsed slot costs the bucket nothing lasting (its time has passed, so the bucket has
 * that capacity back, as if the slot had been used); what others lose while slots are held
 * is bounded by `maxBatch` and the reservation TTL.
 */
export function nextBatchSize(outcome: ReservationOutcome, maxBatch: number): number {
  const { asked, granted, alone, more, spendable, ownPerCall } = outcome;
  if (granted < asked || !(spendable >= 2) || (!alone && ownPerCall !== true)) return 1;
  const next = alone ? Math.max(2, asked * 2) : asked;
  return Math.max(1, Math.min(next, Math.floor(more / 2), maxBatch));
}
