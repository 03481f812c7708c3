/**
 * Random schedules for the algorithm property tests, and the interval checks run on what
 * a schedule admitted.
 */
import fc from 'fast-check';
import { advanceTicks } from './exact-model.js';

/** One step of a schedule for a single limiter. */
export type Step =
  | { readonly kind: 'advance'; readonly ticks: number }
  /** `pick` is reduced into `1..limit` by the test, so one schedule fits any limit. */
  | { readonly kind: 'consume'; readonly pick: number }
  /** After a rejection: wait exactly the reported `retryAfter` and send the same cost again. */
  | { readonly kind: 'retry' };

/** Schedules of up to `maxLength` steps, consumes weighted so limits are hit often. */
export function steps(maxLength: number): fc.Arbitrary<Step[]> {
  return fc.array(
    fc.oneof(
      { weight: 4, arbitrary: advanceTicks.map((ticks): Step => ({ kind: 'advance', ticks })) },
      { weight: 6, arbitrary: fc.integer({ min: 1, max: 1000 }).map((pick): Step => ({ kind: 'consume', pick })) },
      { weight: 2, arbitrary: fc.constant<Step>({ kind: 'retry' }) },
    ),
    { maxLength, size: 'max' },
  );
}

/** A cost in `1..limit` from a step's `pick`. */
export function costOf(pick: number, limit: number): number {
  return 1 + ((pick - 1) % limit);
}

/** An admitted request: when (any unit, non-decreasing) and how much it took. */
export interface Admission {
  readonly at: number;
  readonly cost: number;
}

/**
 * The largest total admitted in a closed interval `[a_i, a_j]`, for every pair of
 * admission times, handed to `check(total, a_j - a_i)`; these intervals are the tightest
 * ones, so checking them checks every interval.
 */
export function forEachTightInterval(
  admissions: readonly Admission[],
  check: (total: number, length: number, from: number) => void,
): void {
  for (let i = 0; i < admissions.length; i++) {
    if (i > 0 && admissions[i - 1]!.at === admissions[i]!.at) continue;
    let total = 0;
    for (let j = i; j < admissions.length; j++) {
      total += admissions[j]!.cost;
      const next = admissions[j + 1];
      if (next !== undefined && next.at === admissions[j]!.at) continue;
      check(total, admissions[j]!.at - admissions[i]!.at, admissions[i]!.at);
    }
  }
}

/** The total admitted in every half-open window `[a_i, a_i + width)`. */
export function forEachWindowFrom(
  admissions: readonly Admission[],
  width: number,
  check: (total: number, from: number) => void,
): void {
  for (let i = 0; i < admissions.length; i++) {
    if (i > 0 && admissions[i - 1]!.at === admissions[i]!.at) continue;
    let total = 0;
    for (let j = i; j < admissions.length && admissions[j]!.at < admissions[i]!.at + width; j++) {
      total += admissions[j]!.cost;
    }
    check(total, admissions[i]!.at);
  }
}
