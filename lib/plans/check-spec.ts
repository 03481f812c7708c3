import { bucketSlack, intervalMs } from '../algorithms/token-bucket.js';
import { AlgorithmKind, type PlanTier, type TierName, type TierSpec } from '../interfaces/plan.interface.js';

/** The `algorithm` name each kind goes with. */
const ALGORITHMS: Record<number, string> = {
  [AlgorithmKind.TokenBucket]: 'token-bucket',
  [AlgorithmKind.SlidingLog]: 'sliding-log',
  [AlgorithmKind.SlidingCounter]: 'sliding-counter',
  [AlgorithmKind.Concurrency]: 'concurrency',
};

/** The tier names a spec may have (`TierName`): decisions, metrics and frames know no other. */
const TIER_NAMES: ReadonlySet<string> = new Set<TierName>(['global', 'type', 'expensive', 'connection', 'concurrency']);

/** Specs found sound: each object is checked once. */
const sound = new WeakSet<object>();

/**
 * Refuses a tier spec no store can decide soundly, with an error that names the tier and
 * what is wrong. Specs from `tokenBucketSpec`, `windowSpec` and `concurrencySpec` always
 * pass; a spec made by hand (a plan's tiers are public) must hold the same figures, its
 * token bucket's derived ones (`intervalMs`, `slack`, `span`, `nearBound`) included, as
 * computed from its limit, cost and rate. What the stores define beyond those builders is
 * allowed: a cost above the limit (never admitted) and a log limit that is not whole (its
 * whole part). The tier must be a `TierName`. A sliding log's cost and a concurrency tier's must be whole. Each spec
 * object is checked once; later calls cost one `WeakSet` lookup.
 */
export function checkSpec(spec: TierSpec): void {
  if (sound.has(spec)) return;
  const problem = problemOf(spec);
  if (problem !== undefined) {
    const name =
      spec !== null && typeof spec === 'object' ? `'${String(spec.tier)}' (suffix '${String(spec.suffix)}')` : '';
    throw new RangeError(`nestjs-ws-rate-limit: tier spec ${name}: ${problem}`);
  }
  sound.add(spec);
}

/**
 * `checkSpec` of every spec of a plan, whose tiers must name distinct states: two tiers on
 * one suffix would be one state to a store that looks them up, two to one that remembers
 * where they are.
 */
export function checkSpecs(specs: readonly TierSpec[]): void {
  for (const spec of specs) checkSpec(spec);
  checkDistinct(specs, (spec) => spec.suffix, 'tier specs', 'suffix');
}

/**
 * The tiers of a plan made by hand (`{ tracker, tiers }`) must have distinct keys, as a
 * `createPlan` plan's have distinct suffixes (see `checkSpecs`).
 */
export function checkTierKeys(tiers: readonly PlanTier[]): void {
  checkDistinct(tiers, (tier) => tier.key, 'tiers', 'key');
}

function checkDistinct<T>(items: readonly T[], name: (item: T) => string, what: string, field: string): void {
  for (let i = 1; i < items.length; i++) {
    for (let j = 0; j < i; j++) {
      if (name(items[j]!) === name(items[i]!)) {
        throw new RangeError(
          `nestjs-ws-rate-limit: ${what} ${j} and ${i} of one plan share the ${field} '${name(items[i]!)}': each tier names its own state`,
        );
      }
    }
  }
}

function positive(value: unknown): boolean {
  return typeof value === 'number' && value > 0 && Number.isFinite(value);
}

function problemOf(spec: TierSpec): string | undefined {
  if (spec === null || typeof spec !== 'object') return `not an object (${String(spec)})`;
  if (typeof spec.tier !== 'string' || (spec.tier as string) === '') return 'tier must be a non-empty string';
  if (!TIER_NAMES.has(spec.tier)) return `tier must be one of ${[...TIER_NAMES].map((t) => `'${t}'`).join(', ')}`;
  if (typeof spec.suffix !== 'string' || spec.suffix === '') return 'suffix must be a non-empty string';
  const algorithm = ALGORITHMS[spec.kind as number];
  if (algorithm === undefined) return `unknown kind ${String(spec.kind)}`;
  if (spec.algorithm !== algorithm) return `kind ${spec.kind} is '${algorithm}', not '${String(spec.algorithm)}'`;
  if (!positive(spec.limit)) return `limit must be a positive number (got ${String(spec.limit)})`;
  if (!positive(spec.cost)) return `cost must be a positive number (got ${String(spec.cost)})`;
  switch (spec.kind) {
    case AlgorithmKind.TokenBucket: {
      if (!positive(spec.refillRate)) return `refillRate must be a positive number (got ${String(spec.refillRate)})`;
      const interval = intervalMs(spec.refillRate);
      const derived = {
        intervalMs: interval,
        slack: bucketSlack(spec.limit, spec.cost, interval),
        span: spec.cost * interval,
        nearBound: 4 * spec.limit * interval,
      };
      for (const [figure, value] of Object.entries(derived)) {
        const held = (spec as unknown as Record<string, unknown>)[figure];
        if (!Object.is(held, value)) {
          const fix = 'build it with tokenBucketSpec()';
          return `${figure} is ${String(held)}, but its limit, cost and refillRate make it ${value} (${fix})`;
        }
      }
      return undefined;
    }
    case AlgorithmKind.SlidingLog:
      if (!positive(spec.windowMs)) return `windowMs must be a positive number (got ${String(spec.windowMs)})`;
      // A log keeps one entry per unit spent: half an entry cannot be kept.
      if (!Number.isInteger(spec.cost)) return `a sliding log's cost must be whole (got ${spec.cost})`;
      return undefined;
    case AlgorithmKind.SlidingCounter:
      if (!positive(spec.windowMs)) return `windowMs must be a positive number (got ${String(spec.windowMs)})`;
      return undefined;
    default:
      // A lease holds whole slots: Redis counts them with HINCRBY, which refuses anything
      // but an integer (after the plan's other tiers were written).
      if (!Number.isSafeInteger(spec.cost)) return `a concurrency tier's cost must be whole (got ${spec.cost})`;
      return undefined;
  }
}
