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
}

/**
 * The size of the next reservation for one plan, from the last one's outcome:
 *
 * - contention (another instance, or a per-call decision, moved a bucket since this
 *   instance's last reservation): 1, so every decision is one Redis call as without
 *   reservations;
 * - near the limit (fewer slots granted than asked): 1;
 * - otherwise twice the last ask (at least 2), but at most half the slots still free after
 *   the grant (one instance never takes the rest of a bucket, and the size falls to 1 as the
 *   bucket empties) and at most `maxBatch`.
 *
 * Slots a lone instance leaves unspent are not shrunk for: a slot lapses when its time in
 * the bucket comes, and the bucket then has that capacity back, as if the slot had been
 * used; what others lose meanwhile is bounded by `maxBatch` and the reservation TTL.
 */
export function nextBatchSize(outcome: ReservationOutcome, maxBatch: number): number {
  const { asked, granted, alone, more } = outcome;
  if (!alone || granted < asked) return 1;
  return Math.max(1, Math.min(Math.max(2, asked * 2), Math.floor(more / 2), maxBatch));
}
