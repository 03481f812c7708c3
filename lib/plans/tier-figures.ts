import { PACKED_LOG_MAX_LIMIT } from '../algorithms/sliding-log.js';
import { AlgorithmKind, type TierName, type TierSpec } from '../interfaces/plan.interface.js';

/**
 * A tier's figures in one object shape whatever its algorithm, made once per plan shape
 * (`createPlan`). The specs of a plan mixing buckets and a sliding log have several hidden
 * classes, so every read of a figure in a loop over them checks which; the memory store's
 * short path reads these instead (a 3-tier decision about a tenth faster). Figures an
 * algorithm has not are 0.
 */
export class TierFigures {
  readonly kind: number;
  readonly tier: TierName;
  readonly suffix: string;
  readonly limit: number;
  readonly cost: number;
  /** A bucket's `slack`, `span` and `nearBound` (see `TokenBucketSpec`). */
  readonly slack: number;
  readonly span: number;
  readonly nearBound: number;
  /** A window's length. */
  readonly windowMs: number;
  /** A sliding log of this tier fits the memory store's slab (whole limit, at most `PACKED_LOG_MAX_LIMIT`). */
  readonly packable: boolean;
  readonly spec: TierSpec;

  constructor(spec: TierSpec) {
    this.kind = spec.kind;
    this.tier = spec.tier;
    this.suffix = spec.suffix;
    this.limit = spec.limit;
    this.cost = spec.cost;
    const bucket = spec.kind === AlgorithmKind.TokenBucket;
    this.slack = bucket ? spec.slack : 0;
    this.span = bucket ? spec.span : 0;
    this.nearBound = bucket ? spec.nearBound : 0;
    this.windowMs =
      spec.kind === AlgorithmKind.SlidingLog || spec.kind === AlgorithmKind.SlidingCounter ? spec.windowMs : 0;
    this.packable = spec.limit <= PACKED_LOG_MAX_LIMIT && Number.isInteger(spec.limit);
    this.spec = spec;
  }
}

/**
 * The figures of each spec, in order, frozen; `undefined` unless every spec's figures are
 * fixed (`fixed`: as `tokenBucketSpec` and `windowSpec` make them): a spec made by hand
 * may still change, and is read as it is at each decision.
 */
export function figuresOf(specs: readonly TierSpec[]): readonly TierFigures[] | undefined {
  if (!specs.every(fixed)) return undefined;
  return Object.freeze(specs.map((spec) => new TierFigures(spec)));
}

/** The fields `TierFigures` reads of every spec, and of a bucket's and a window's. */
const COMMON = ['kind', 'tier', 'suffix', 'limit', 'cost'] as const;
const BUCKET = ['slack', 'span', 'nearBound'] as const;
const WINDOW = ['windowMs'] as const;

/**
 * Whether a spec's figures can never change: frozen, every field read an own data property
 * (a getter, or a field inherited from a prototype that may change, is read at each decision).
 */
function fixed(spec: TierSpec): boolean {
  if (!Object.isFrozen(spec)) return false;
  const own = (key: string): boolean => {
    const field = Object.getOwnPropertyDescriptor(spec, key);
    return field !== undefined && 'value' in field;
  };
  if (!COMMON.every(own)) return false;
  if (spec.kind === AlgorithmKind.TokenBucket) return BUCKET.every(own);
  return spec.kind === AlgorithmKind.SlidingLog || spec.kind === AlgorithmKind.SlidingCounter
    ? WINDOW.every(own)
    : true;
}
