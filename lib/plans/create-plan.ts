import type { PlanTier, RateLimitPlan, TierSpec } from '../interfaces/plan.interface.js';
import type { RateLimitStore } from '../storage/rate-limit-store.js';
import { checkSpecs } from './check-spec.js';
import { figuresOf, type TierFigures } from './tier-figures.js';

/**
 * Where a store may remember things about a plan it has decided (the memory store keeps
 * the table slots of the plan's keys there). Declared when a plan is created so that it
 * lives inside the plan object rather than in a property store added later.
 */
export const PLAN_CACHE: unique symbol = Symbol('nestjs-ws-rate-limit.plan-cache');

/** What the limiter tells a plan about itself besides its tiers. */
export interface PlanFacts {
  /** Identifies the lease of a concurrency tier. */
  readonly lease?: string;
  /** The message type the plan limits. */
  readonly type?: string;
  /** The tiers are keyed by one connection (decided in process memory). */
  readonly connectionKeyed?: boolean;
}

/**
 * Builds a plan the way the guard does: the tracker, a shape shared by every plan made from
 * the same specs array, facts and store, and room for the store's per-plan cache (64 bytes
 * of heap in all). Its `tiers`, with their keys from the store, are built and frozen on
 * first read; the memory store decides without reading them. Build a plan once and reuse
 * it for every decision of the same tracker and tiers.
 * @example
 * const plan = createPlan(store, 'key:user-42', [tokenBucketSpec('global', 'g', 100, 50)]);
 * store.consume(plan);
 */
export function createPlan(
  store: RateLimitStore,
  tracker: string,
  specs: readonly TierSpec[],
  lease?: string,
): RateLimitPlan {
  return planOf(store, tracker, specs, lease === undefined ? undefined : { lease });
}

/**
 * What the plans of one route share whatever their tracker: the specs and the facts. Plans
 * point to it rather than each holding a copy, and build their `tiers` (one key string per
 * tier) only when something reads them: the memory store decides from the specs alone.
 */
export interface PlanShape {
  /** The store that names the plans' keys. */
  readonly store: RateLimitStore;
  readonly specs: readonly TierSpec[];
  readonly lease: string | undefined;
  readonly type: string | undefined;
  readonly connectionKeyed: boolean | undefined;
  /** The specs' figures in one object shape (the memory store's short path reads them), if none can change (`figuresOf`). */
  readonly figures: readonly TierFigures[] | undefined;
}

/** Where a plan made by `createPlan` keeps its shape (the memory store reads it). */
export const PLAN_SHAPE: unique symbol = Symbol('nestjs-ws-rate-limit.plan-shape');

/** A plan as `createPlan` makes it: a tracker and its shape (four fields in all). */
class KeptPlan implements RateLimitPlan {
  readonly tracker: string;
  readonly [PLAN_SHAPE]: PlanShape;
  private built: readonly PlanTier[] | undefined = undefined;
  [PLAN_CACHE]: unknown = undefined;

  constructor(tracker: string, shape: PlanShape) {
    this.tracker = tracker;
    this[PLAN_SHAPE] = shape;
  }

  /** The tiers with their keys, built on first read (kept, unless the plan was frozen). */
  get tiers(): readonly PlanTier[] {
    if (this.built !== undefined) return this.built;
    const tracker = this.tracker;
    const { store, specs } = this[PLAN_SHAPE];
    const tiers = Object.freeze(specs.map((spec) => Object.freeze({ key: store.key(tracker, spec.suffix), spec })));
    if (!Object.isFrozen(this)) this.built = tiers;
    return tiers;
  }

  get lease(): string | undefined {
    return this[PLAN_SHAPE].lease;
  }

  get type(): string | undefined {
    return this[PLAN_SHAPE].type;
  }

  get connectionKeyed(): boolean | undefined {
    return this[PLAN_SHAPE].connectionKeyed;
  }
}

/**
 * Shapes by store, then by specs array, then by facts: the plans of one route and placement
 * share one. Both maps are weak and the store is their first key, so a shape (which holds its
 * store) keeps no store alive: a store dropped by its application is collected with its
 * state even while the specs arrays live on (module constants, say).
 */
const shapes = new WeakMap<RateLimitStore, WeakMap<readonly TierSpec[], PlanShape[]>>();

function shapeOf(store: RateLimitStore, specs: readonly TierSpec[], facts: PlanFacts | undefined): PlanShape {
  const lease = facts?.lease;
  const type = facts === undefined ? undefined : (facts.type ?? '');
  const connectionKeyed = facts === undefined ? undefined : facts.connectionKeyed === true;
  let ofStore = shapes.get(store);
  if (ofStore === undefined) {
    ofStore = new WeakMap();
    shapes.set(store, ofStore);
  }
  let known = ofStore.get(specs);
  if (known === undefined) {
    known = [];
    ofStore.set(specs, known);
  }
  for (const shape of known) {
    if (
      shape.lease === lease &&
      shape.type === type &&
      shape.connectionKeyed === connectionKeyed &&
      sameSpecs(shape.specs, specs)
    ) {
      return shape;
    }
  }
  // Once per shape: a spec made by hand that no store could decide soundly is refused here.
  checkSpecs(specs);
  // An array the caller may still change: the shape keeps a frozen copy, and is shared only
  // while the array holds the same specs.
  const kept = Object.isFrozen(specs) ? specs : Object.freeze([...specs]);
  const shape: PlanShape = Object.freeze({
    store,
    specs: kept,
    lease,
    type,
    connectionKeyed,
    figures: figuresOf(kept),
  });
  // A few shapes per array at most (placements, leases): an array changed on every
  // call does not pile them up.
  if (known.length >= 8) known.shift();
  known.push(shape);
  return shape;
}

function sameSpecs(kept: readonly TierSpec[], specs: readonly TierSpec[]): boolean {
  if (kept === specs) return true;
  if (kept.length !== specs.length) return false;
  for (let i = 0; i < kept.length; i++) if (kept[i] !== specs[i]) return false;
  return true;
}

/** `createPlan` with the facts the limiter knows: lease, message type, placement. */
export function planOf(
  store: RateLimitStore,
  tracker: string,
  specs: readonly TierSpec[],
  facts?: PlanFacts,
): RateLimitPlan {
  return new KeptPlan(tracker, shapeOf(store, specs, facts));
}

type ShapedPlan = RateLimitPlan & { readonly [PLAN_SHAPE]?: PlanShape };

/** The specs of a plan from `createPlan` (read without building its tiers), else undefined. */
export function specsOf(plan: RateLimitPlan): readonly TierSpec[] | undefined {
  return (plan as ShapedPlan)[PLAN_SHAPE]?.specs;
}

/**
 * The figures of a `createPlan` plan's tiers (see `TierFigures`), or `undefined` for a plan
 * made by hand or one of specs whose figures may change (see `figuresOf`).
 */
export function figuresOfPlan(plan: RateLimitPlan): readonly TierFigures[] | undefined {
  return (plan as ShapedPlan)[PLAN_SHAPE]?.figures;
}

/** The number of tiers of a plan. */
export function tierCount(plan: RateLimitPlan): number {
  const specs = specsOf(plan);
  return specs !== undefined ? specs.length : plan.tiers.length;
}

/** The spec of tier i of a plan. */
export function specAt(plan: RateLimitPlan, i: number): TierSpec {
  const specs = specsOf(plan);
  return specs !== undefined ? specs[i]! : plan.tiers[i]!.spec;
}

/**
 * What names tier i of a plan in the memory store's table besides its suffix: for a plan
 * from `createPlan` the suffix itself (its key is `key(tracker, suffix)` by construction,
 * which the table stores as the suffix), for any other plan its key.
 */
export function keyAt(plan: RateLimitPlan, i: number): string {
  const specs = specsOf(plan);
  return specs !== undefined ? specs[i]!.suffix : plan.tiers[i]!.key;
}
