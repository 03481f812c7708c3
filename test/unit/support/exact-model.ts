/**
 * Straightforward reference limiters for the property tests, written independently of
 * lib/algorithms and computed in exact integer arithmetic.
 *
 * Time is counted in ticks of 1/8 ms. Every rate the tests use makes `1000 / rate` a
 * dyadic number (see `EXACT_RATES`), so the library's floating-point state stays exact for
 * these schedules, and any difference from these models is a real difference, not rounding:
 * the model tests assert exact equality (zero tolerance).
 */
import fc from 'fast-check';

/** Ticks per millisecond: schedules advance by whole ticks, so fractional ms occur. */
export const TICKS_PER_MS = 8;

/**
 * Refill rates (tokens/s) whose token interval `1000 / r` ms is exactly representable
 * (2000, 1000, 500, 250, 200, 125, 100, 62.5, 50, 40, 25, 20, 8, 4, 1), and for which
 * `2r` is an integer, so the reference can scale tokens to integers.
 */
export const EXACT_RATES = [0.5, 1, 2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 125, 250, 1000] as const;

/** Milliseconds of a tick count (exact: a dyadic number). */
export function ms(ticks: number): number {
  return ticks / TICKS_PER_MS;
}

/** `ceil(a / b)` for integers, `b > 0`. */
export function ceilDiv(a: number, b: number): number {
  return Math.floor((a + b - 1) / b);
}

/** Seed and run count for fast-check: fixed by default, `FC_SEED` explores other runs. */
export function fcParams(numRuns: number): { seed: number; numRuns: number } {
  const fromEnv = process.env['FC_SEED'];
  return { seed: fromEnv === undefined || fromEnv === '' ? 0x5eed : Number(fromEnv), numRuns };
}

/** A clock advance in ticks: 0, fractions of a ms, whole ms, seconds. */
export const advanceTicks: fc.Arbitrary<number> = fc.oneof(
  { weight: 3, arbitrary: fc.constant(0) },
  { weight: 3, arbitrary: fc.integer({ min: 1, max: TICKS_PER_MS - 1 }) },
  { weight: 4, arbitrary: fc.integer({ min: 1, max: 300 }).map((n) => n * TICKS_PER_MS) },
  { weight: 3, arbitrary: fc.integer({ min: 1, max: 4000 }) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 5 }).map((n) => n * 1000 * TICKS_PER_MS) },
);

/** Token scale of the reference bucket: one token is 16000 units. */
export const UNITS = 16_000;

/**
 * The textbook token bucket: a token count and the time it was last brought up to date.
 * Starts full. Units: tokens x 16000, so a refill of `r` tokens/s is `2r` units per tick.
 */
export class RefBucket {
  private units: number;
  private last = -Infinity;

  constructor(
    readonly capacity: number,
    readonly rate: number,
  ) {
    this.units = capacity * UNITS;
  }

  private unitsAt(now: number): number {
    if (now <= this.last) return this.units;
    return Math.min(this.capacity * UNITS, this.units + 2 * this.rate * (now - this.last));
  }

  allows(now: number, cost: number): boolean {
    return this.unitsAt(now) >= cost * UNITS;
  }

  consume(now: number, cost: number): void {
    this.units = this.unitsAt(now) - cost * UNITS;
    this.last = now;
  }

  /** Smallest whole ms `w >= 1` after which `cost` fits; 0 when it fits now. */
  wait(now: number, cost: number): number {
    const missing = cost * UNITS - this.unitsAt(now);
    if (missing <= 0) return 0;
    // 2r units per tick = 16r units per ms.
    return Math.max(1, ceilDiv(missing, 16 * this.rate));
  }

  remaining(now: number): number {
    return Math.floor(this.unitsAt(now) / UNITS);
  }

  resetIn(now: number): number {
    const missing = this.capacity * UNITS - this.unitsAt(now);
    return missing <= 0 ? 0 : ceilDiv(missing, 16 * this.rate);
  }

  /** Tokens held, as an exact fraction `units / 16000`. */
  tokenUnits(now: number): number {
    return this.unitsAt(now);
  }
}

/** The textbook sliding-window log: every admitted event's time, kept forever. */
export class RefLog {
  private readonly events: number[] = [];

  constructor(
    readonly limit: number,
    readonly windowMs: number,
  ) {}

  private live(now: number): number[] {
    const width = this.windowMs * TICKS_PER_MS;
    return this.events.filter((t) => now - t < width);
  }

  allows(now: number, cost: number): boolean {
    return this.live(now).length + cost <= this.limit;
  }

  consume(now: number, cost: number): void {
    for (let i = 0; i < cost; i++) this.events.push(now);
  }

  wait(now: number, cost: number): number {
    const live = this.live(now);
    const over = live.length + cost - this.limit;
    if (over <= 0) return 0;
    const blocker = live[over - 1]!;
    return Math.max(1, ceilDiv(blocker + this.windowMs * TICKS_PER_MS - now, TICKS_PER_MS));
  }

  remaining(now: number): number {
    return Math.max(0, this.limit - this.live(now).length);
  }

  resetIn(now: number): number {
    if (this.events.length === 0) return 0;
    const freshAt = this.events[this.events.length - 1]! + this.windowMs * TICKS_PER_MS;
    return freshAt <= now ? 0 : ceilDiv(freshAt - now, TICKS_PER_MS);
  }
}

/**
 * The sliding-window counter as documented: counts per aligned window, the previous one
 * weighted by its share still inside the sliding window. Decided in exact integers:
 * `prev * (W - e) / W + curr + cost <= limit`  <=>  `prev * (W - e) + (curr + cost) * W <= limit * W`.
 */
export class RefCounter {
  private readonly counts = new Map<number, number>();
  private lastIndex = -Infinity;

  constructor(
    readonly limit: number,
    readonly windowMs: number,
  ) {}

  private get width(): number {
    return this.windowMs * TICKS_PER_MS;
  }

  /** `[W - e, prev, curr]` at `now`, in ticks and counts. */
  private view(now: number): [number, number, number] {
    const index = Math.floor(now / this.width);
    const elapsed = now - index * this.width;
    return [this.width - elapsed, this.counts.get(index - 1) ?? 0, this.counts.get(index) ?? 0];
  }

  allows(now: number, cost: number): boolean {
    const [left, prev, curr] = this.view(now);
    return prev * left + (curr + cost) * this.width <= this.limit * this.width;
  }

  consume(now: number, cost: number): void {
    const index = Math.floor(now / this.width);
    this.counts.set(index, (this.counts.get(index) ?? 0) + cost);
    this.lastIndex = index;
  }

  /** Found by trying every whole ms: the definition of "earliest", with no formula to trust. */
  wait(now: number, cost: number): number {
    if (this.allows(now, cost)) return 0;
    for (let w = 1; ; w++) {
      if (this.allows(now + w * TICKS_PER_MS, cost)) return w;
    }
  }

  remaining(now: number): number {
    const [left, prev, curr] = this.view(now);
    const free = this.limit * this.width - prev * left - curr * this.width;
    return Math.max(0, Math.floor(free / this.width));
  }

  resetIn(now: number): number {
    if (this.lastIndex === -Infinity) return 0;
    const freshAt = (this.lastIndex + 2) * this.width;
    return freshAt <= now ? 0 : ceilDiv(freshAt - now, TICKS_PER_MS);
  }
}

/** Any of the reference limiters. */
export type RefLimiter = RefBucket | RefLog | RefCounter;

/**
 * Cheap assertions for the inner loops of property tests (Jest's `expect` costs too much
 * there); fast-check reports the thrown message with the shrunk counterexample.
 */
export function check(condition: boolean, message: () => string): void {
  if (!condition) throw new Error(message());
}

/** JSON with object keys sorted, so equal plain data gives equal text. */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, inner: unknown) =>
    inner !== null && typeof inner === 'object' && !Array.isArray(inner)
      ? Object.fromEntries(Object.entries(inner).sort(([a], [b]) => (a < b ? -1 : 1)))
      : inner,
  );
}

/** Deep equality of plain data (keys in any order), with both values in the message. */
export function checkSame(actual: unknown, expected: unknown, what: string): void {
  const a = canonical(actual);
  const e = canonical(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}
