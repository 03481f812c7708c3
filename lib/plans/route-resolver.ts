import { messageRateProblem } from '../config/bounds.js';
import { typeFigureProblem } from '../config/check-values.js';
import type { ResolvedPlan, ResolvedTypeLimit } from '../config/resolve-options.js';
import type { ThrottleOptions } from '../decorators/throttle.decorator.js';
import { WsRateLimitConfigError } from '../exceptions/ws-rate-limit-config.error.js';
import type { TierSpec, TokenBucketSpec } from '../interfaces/plan.interface.js';
import { SKIP_THROTTLE_METADATA, THROTTLE_METADATA } from '../ws-rate-limit.constants.js';
import { tokenBucketSpec, windowSpec } from './tier-specs.js';

/** Most types, and specs per type or cost, a resolver remembers (the rest are built per call). */
const MAX_REMEMBERED = 1024;
/** NestJS's metadata key for `@SubscribeMessage`'s event. */
const MESSAGE_METADATA = 'message';

/** The limits of one handler, resolved once from decorators and options. */
export interface Route {
  /** The type bucket the handler spends (its `@Throttle` type, else its event). */
  readonly type: string;
  /** The tiers every message of this handler passes, in order: global, type, expensive. */
  readonly specs: readonly TierSpec[];
  /** `Gateway.method`, for messages. */
  readonly where: string;
  /** Allowed while the connection is degraded. */
  readonly essential: boolean;
}

/** The limits a resolver works from: the module's, or a plan's. */
export interface RouteLimits extends ResolvedPlan {
  /** Per-type figures that win over `@Throttle`'s (a plan's own `types`). */
  readonly overrides?: Readonly<Record<string, ResolvedTypeLimit>>;
}

interface TypeFigures {
  readonly capacity: number;
  readonly refillRate: number;
  readonly where: string;
}

/**
 * Turns `@Throttle`/`@SkipThrottle` metadata and module options into routes, validating
 * the figures (the first invalid one throws, naming the handler). Results are cached per
 * handler, and specs are shared between routes that share a type or a cost.
 */
export class RouteResolver {
  private readonly routes = new Map<object, Route | null>();
  private readonly figures = new Map<string, TypeFigures>();
  private readonly typeSpecs = new Map<string, TokenBucketSpec>();
  private readonly globalSpecs = new Map<number, TokenBucketSpec>();
  private readonly expensiveSpec: TierSpec;

  constructor(private readonly options: RouteLimits) {
    const { expensive } = options;
    this.expensiveSpec = windowSpec('expensive', 'x', expensive.algorithm, expensive.max, expensive.windowMs);
  }

  /** The route of a handler, or `null` when `@SkipThrottle` exempts it. */
  resolve(handler: object, gateway: object): Route | null {
    let route = this.routes.get(handler);
    if (route === undefined) {
      route = this.build(handler, gateway);
      this.routes.set(handler, route);
    }
    return route;
  }

  /** Sets the route of a handler that carries no metadata (frames that reach no handler). */
  seed(handler: object, route: Route): void {
    this.routes.set(handler, route);
  }

  /** The global tier for a message of the given cost. */
  globalSpec(cost: number): TokenBucketSpec {
    let spec = this.globalSpecs.get(cost);
    if (!spec) {
      spec = tokenBucketSpec('global', 'g', this.options.global.capacity, this.options.global.refillRate, cost);
      if (this.globalSpecs.size < MAX_REMEMBERED) this.globalSpecs.set(cost, spec);
    }
    return spec;
  }

  /**
   * Records the figures a `@Throttle` sets for its type, before any route is built, so that
   * handlers sharing a type agree whatever order they are resolved in. Throws if two
   * handlers give one type different figures.
   */
  declare(handler: object, gateway: object): void {
    const { type, throttle, where } = this.describe(handler, gateway);
    if (throttle === null || (throttle.capacity === undefined && throttle.refillRate === undefined)) return;
    checkFigure(where, 'capacity', throttle.capacity);
    checkFigure(where, 'refillRate', throttle.refillRate);
    const configured = this.options.types[type];
    const override = this.options.overrides?.[type];
    const figures = {
      capacity: override?.capacity ?? throttle.capacity ?? configured?.capacity ?? this.options.type.capacity,
      refillRate: override?.refillRate ?? throttle.refillRate ?? configured?.refillRate ?? this.options.type.refillRate,
      where,
    };
    const known = this.figures.get(type);
    if (known && (known.capacity !== figures.capacity || known.refillRate !== figures.refillRate)) {
      throw new WsRateLimitConfigError(
        `${where}: type "${type}" is limited to ${figures.capacity} burst, ${figures.refillRate}/s here but to ` +
          `${known.capacity} burst, ${known.refillRate}/s at ${known.where}; one type has one bucket`,
      );
    }
    this.figures.set(type, figures);
  }

  /**
   * The type tier of a type, for a message of the given cost: figures declared by a
   * `@Throttle`, else the module's `types`, else the module's `type` defaults.
   */
  typeSpec(type: string, cost: number): TokenBucketSpec {
    const figures = this.figuresOf(type);
    const cacheKey = `${cost}|${type}`;
    let spec = this.typeSpecs.get(cacheKey);
    if (!spec) {
      spec = tokenBucketSpec('type', `t:${type}`, figures.capacity, figures.refillRate, cost);
      if (this.typeSpecs.size < MAX_REMEMBERED) this.typeSpecs.set(cacheKey, spec);
    }
    return spec;
  }

  /**
   * A type's figures: declared by a `@Throttle`, else the options' (recorded on first use, up
   * to MAX_REMEMBERED types: names passed from code may come from clients).
   */
  private figuresOf(type: string): TypeFigures {
    let figures = this.figures.get(type);
    if (!figures) {
      const configured = this.options.overrides?.[type] ?? this.options.types[type];
      figures = {
        capacity: configured?.capacity ?? this.options.type.capacity,
        refillRate: configured?.refillRate ?? this.options.type.refillRate,
        where: configured ? `option types.${type}` : 'option type',
      };
      if (this.figures.size < MAX_REMEMBERED) this.figures.set(type, figures);
    }
    return figures;
  }

  /** Every type a route or a request has used so far. */
  knownTypes(): string[] {
    return [...this.figures.keys()];
  }

  /** The expensive-operations window. */
  get expensive(): TierSpec {
    return this.expensiveSpec;
  }

  /** The tiers for a type requested from code (`WsRateLimitService.consume`). */
  specsFor(type: string, expensive: boolean | undefined, cost: number | undefined): TierSpec[] {
    const configured = this.options.types[type];
    const charge = cost ?? configured?.cost ?? 1;
    const where = `type "${type}"`;
    checkFigure(where, 'cost', charge);
    this.checkCost(where, charge, this.figuresOf(type));
    const typeSpec = this.typeSpec(type, charge);
    const specs: TierSpec[] = [this.globalSpec(charge), typeSpec];
    if (expensive ?? configured?.expensive ?? false) specs.push(this.expensiveSpec);
    return specs;
  }

  private describe(
    handler: object,
    gateway: object,
  ): { type: string; throttle: ThrottleOptions | null; where: string } {
    const method = handler as (...args: unknown[]) => unknown;
    const owner = gateway as new (...args: unknown[]) => unknown;
    const where = `@Throttle on ${owner.name}.${method.name}`;
    const skip =
      (Reflect.getMetadata(SKIP_THROTTLE_METADATA, handler) as boolean | undefined) ??
      (Reflect.getMetadata(SKIP_THROTTLE_METADATA, gateway) as boolean | undefined) ??
      false;
    const throttle: ThrottleOptions = {
      ...(Reflect.getMetadata(THROTTLE_METADATA, gateway) as ThrottleOptions | undefined),
      ...(Reflect.getMetadata(THROTTLE_METADATA, handler) as ThrottleOptions | undefined),
    };
    const event = Reflect.getMetadata(MESSAGE_METADATA, handler) as unknown;
    const type = throttle.type ?? (typeof event === 'string' ? event : method.name);
    if (typeof type !== 'string' || type === '') {
      throw new WsRateLimitConfigError(`${where}: type must be a non-empty string`);
    }
    return { type, throttle: skip ? null : throttle, where };
  }

  private build(handler: object, gateway: object): Route | null {
    this.declare(handler, gateway);
    const { type, throttle, where } = this.describe(handler, gateway);
    if (throttle === null) return null;
    checkFigure(where, 'cost', throttle.cost);
    for (const flag of ['expensive', 'essential'] as const) {
      if (throttle[flag] !== undefined && typeof throttle[flag] !== 'boolean') {
        throw new WsRateLimitConfigError(`${where}: ${flag} must be true or false`);
      }
    }
    const configured = this.options.types[type];
    const override = this.options.overrides?.[type];
    const cost = override?.cost ?? throttle.cost ?? configured?.cost ?? 1;
    this.checkCost(where, cost, this.figuresOf(type));
    const typeSpec = this.typeSpec(type, cost);
    const specs: TierSpec[] = [this.globalSpec(cost), typeSpec];
    if (override?.expensive ?? throttle.expensive ?? configured?.expensive ?? false) specs.push(this.expensiveSpec);
    const essential = override?.essential ?? throttle.essential ?? configured?.essential ?? false;
    return Object.freeze({ type, specs: Object.freeze(specs), where: where.slice('@Throttle on '.length), essential });
  }

  private checkCost(where: string, cost: number, figures: TypeFigures): void {
    const typeCapacity = figures.capacity;
    if (cost > typeCapacity) {
      throw new WsRateLimitConfigError(
        `${where}: cost ${cost} exceeds the type capacity ${typeCapacity}; such a message could never pass`,
      );
    }
    if (cost > this.options.global.capacity) {
      throw new WsRateLimitConfigError(
        `${where}: cost ${cost} exceeds the global capacity ${this.options.global.capacity}; such a message could never pass`,
      );
    }
    // A cost so small that messages come faster than one a microsecond would never be refused.
    const rate =
      messageRateProblem(figures.refillRate, cost) ?? messageRateProblem(this.options.global.refillRate, cost);
    if (rate !== undefined) throw new WsRateLimitConfigError(`${where}: ${rate}`);
  }
}

function checkFigure(where: string, field: 'capacity' | 'refillRate' | 'cost', value: unknown): void {
  if (value === undefined) return;
  // The bounds of the module's per-type figures (a refill rate of 1e-320 would never refill).
  const problem = typeFigureProblem(field, value);
  if (problem !== undefined)
    throw new WsRateLimitConfigError(`${where}: ${field} must be ${problem}, got ${String(value)}`);
}
