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
  /**
   * The size as it is now (another reply may have set it since this call was sent): kept
   * when this reply tells nothing.
   */
  readonly current?: number;
  /**
   * The call decided a message (its slot 0 was granted however far ahead it starts), rather
   * than filling the next batch in the background.
   */
  readonly decides?: boolean;
  /**
   * The most slots the TTL lets one call be granted (`floor(ttlMs / span) + 1` for the
   * slowest bucket): a larger ask only makes decisions wait for slots that cannot come.
   */
  readonly ttlSlots?: number;
}

/**
 * The size of the next reservation for one plan, from the last one's outcome:
 *
 * - contention (another instance, or a per-call decision, moved a bucket since this
 *   instance's last reservation): 1, so every decision is one Redis call as without
 *   reservations; but when this instance's own per-call decisions may have moved the bucket
 *   since its last reservation, not being alone tells nothing, and the size is kept (as
 *   asked, or as a later reply set it), and is at least 2 so that the next call, a
 *   reservation with no per-call decision before it, can tell (still at most half the slots
 *   free and `maxBatch`); otherwise the per-call decisions made while the size is 1 would
 *   make every reply say "not alone" and keep it at 1 for good;
 * - near the limit (fewer slots granted than asked, and fewer than asked still free after
 *   them): 1; a grant cut short only by the TTL (slots more than `ttlMs` after the first
 *   are not granted) with many slots still free is not a sign of the limit, and keeps the
 *   size;
 * - but a deciding call granted only its own slot: 1, since no batch can be granted now,
 *   and decisions waiting for one would each wait a round trip in turn;
 * - otherwise twice the last ask (at least 2), but at most half the slots still free after
 *   the grant (one instance never takes the rest of a bucket, and the size falls to 1 as the
 *   bucket empties), at most `maxBatch`, and at most `ttlSlots` (1 for a bucket whose span
 *   is longer than `ttlMs`: every decision one call);
 * - fewer than 2 decisions spendable from even the largest batch (this instance decides too
 *   rarely for the bucket's rate, so a batch's slots lapse before they are spent): 1, as a
 *   batch that saves no call costs script time for nothing.
 *
 * A lapsed slot costs the bucket nothing lasting (its time has passed, so the bucket has
 * that capacity back, as if the slot had been used); a slower bucket's slot of the same
 * batch, still ahead, would be lost, so a batch that ends that way gives those back (see
 * `ReservationBook.take`); what others lose while slots are held is bounded by `maxBatch`
 * and the reservation TTL.
 */
export function nextBatchSize(outcome: ReservationOutcome, maxBatch: number): number {
  const { asked, granted, alone, more, spendable, ownPerCall } = outcome;
  // Fewer slots than asked with as many still free: the TTL, not the limit, cut the grant.
  const nearLimit = granted < asked && more < asked;
  if (nearLimit || !(spendable >= 2) || (!alone && ownPerCall !== true)) return 1;
  if (outcome.decides === true && granted === 1 && asked > 1) return 1;
  const next = alone ? Math.max(2, asked * 2) : Math.max(2, asked, outcome.current ?? 0);
  return Math.max(1, Math.min(next, Math.floor(more / 2), maxBatch, outcome.ttlSlots ?? Infinity));
}
