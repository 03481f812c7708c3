// Over 400 lines: one class, the route resolver, whose declare, build and the checks of a
// handler's figures share the same reading of its decorators; split, they would read them apart.
import { MAX_NAMED_LIMITS, messageRateProblem, NAMED_LIMIT_NAME } from '../config/bounds.js';
import { typeFigureProblem } from '../config/check-values.js';
import type { ResolvedPlan, ResolvedTypeLimit } from '../config/resolve-options.js';
import type { SkipIf, ThrottleOptions } from '../decorators/throttle.decorator.js';
import { WsRateLimitConfigError } from '../exceptions/ws-rate-limit-config.error.js';
import type { TierSpec, TokenBucketSpec } from '../interfaces/plan.interface.js';
import { SKIP_THROTTLE_METADATA, THROTTLE_METADATA } from '../ws-rate-limit.constants.js';
import { figuresSuffix, tokenBucketSpec, windowSpec } from './tier-specs.js';

/** The fields `@Throttle` takes (`ThrottleOptions`). */
const THROTTLE_FIELDS: readonly string[] = [
  'type',
  'capacity',
  'refillRate',
  'limits',
  'skipIf',
  'expensive',
  'cost',
  'essential',
] satisfies (keyof ThrottleOptions)[];

/** Most types, and specs per type or cost, a resolver remembers (the rest are built per call). */
const MAX_REMEMBERED = 1024;
/**
 * The type whose bucket types from code share once MAX_REMEMBERED types are known (see
 * `specsFor`); parentheses set it apart from usual event names.
 */
export const OTHER_TYPES = '(other)';
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
  /** `@Throttle`'s `skipIf`: true lets the message through unlimited. */
  readonly skipIf?: SkipIf;
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
  /** `@Throttle`'s named limits, which replace the one bucket (`capacity`, `refillRate`). */
  readonly limits?: readonly NamedFigures[];
}

interface NamedFigures {
  readonly name: string;
  readonly capacity: number;
  readonly refillRate: number;
}

/**
 * Turns `@Throttle`/`@SkipThrottle` metadata and module options into routes, validating
 * the figures (the first invalid one throws, naming the handler). Results are cached per
 * handler, and specs are shared between routes that share a type or a cost.
 */
export class RouteResolver {
  /**
   * Routes by handler, with the gateway they were built for (`undefined`: any gateway, for
   * the unrouted handlers); a handler inherited by several gateways, whose metadata differ,
   * keeps the routes of the others in `inherited`.
   */
  private readonly routes = new Map<object, { readonly gateway: object | undefined; readonly route: Route | null }>();
  private readonly inherited = new Map<object, Map<object, Route | null>>();
  private readonly figures = new Map<string, TypeFigures>();
  /** The types of the handlers declared (see `declare`): what `status()` lists besides the options' and the asked. */
  private readonly declaredTypes = new Set<string>();
  private readonly typeSpecCache = new Map<string, readonly TokenBucketSpec[]>();
  private readonly globalSpecs = new Map<number, TokenBucketSpec>();
  private readonly expensiveSpec: TierSpec;
  /** The global bucket's key suffix: `g` with its figures (`@<capacity>/<refillRate>:g`, see `figuresSuffix`). */
  readonly globalSuffix: string;
  /** The expensive window's key suffix: `x` or `xc`, or with its figures (see `figuresSuffix`). */
  readonly expensiveSuffix: string;

  /**
   * `base`: the module's own resolver, for a plan's: the plan's expensive window, when its
   * figures differ from the module's, is kept under a suffix naming its figures (see
   * `figuresSuffix`; buckets always are).
   */
  constructor(
    readonly options: RouteLimits,
    private readonly base?: RouteResolver,
  ) {
    const { expensive, global } = options;
    this.globalSuffix = figuresSuffix('g', global.capacity, global.refillRate);
    const ownWindow = expensiveSuffix(expensive.algorithm);
    this.expensiveSuffix =
      base === undefined ||
      (base.options.expensive.max === expensive.max && base.options.expensive.windowMs === expensive.windowMs)
        ? ownWindow
        : figuresSuffix(ownWindow, expensive.max, expensive.windowMs);
    this.expensiveSpec = windowSpec(
      'expensive',
      this.expensiveSuffix,
      expensive.algorithm,
      expensive.max,
      expensive.windowMs,
    );
  }

  /** The route of a handler, or `null` when `@SkipThrottle` exempts it. */
  resolve(handler: object, gateway: object): Route | null {
    const cached = this.routes.get(handler);
    if (cached !== undefined && (cached.gateway === gateway || cached.gateway === undefined)) return cached.route;
    if (cached === undefined) {
      const route = this.build(handler, gateway);
      this.routes.set(handler, { gateway, route });
      return route;
    }
    // One method function, inherited by another gateway: its own class's metadata apply.
    let byGateway = this.inherited.get(handler);
    if (byGateway === undefined) this.inherited.set(handler, (byGateway = new Map()));
    let route = byGateway.get(gateway);
    if (route === undefined) byGateway.set(gateway, (route = this.build(handler, gateway)));
    return route;
  }

  /** Sets the route of a handler that carries no metadata (frames that reach no handler). */
  seed(handler: object, route: Route): void {
    this.routes.set(handler, { gateway: undefined, route });
  }

  /** The global tier for a message of the given cost. */
  globalSpec(cost: number): TokenBucketSpec {
    let spec = this.globalSpecs.get(cost);
    if (!spec) {
      const { capacity, refillRate } = this.options.global;
      spec = tokenBucketSpec('global', this.globalSuffix, capacity, refillRate, cost);
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
    if (throttle === null) return;
    this.declaredTypes.add(type);
    if (throttle.capacity === undefined && throttle.refillRate === undefined && throttle.limits === undefined) return;
    checkFigure(where, 'capacity', throttle.capacity);
    checkFigure(where, 'refillRate', throttle.refillRate);
    const limits = namedLimits(where, throttle);
    const configured = this.options.types[type];
    const override = this.options.overrides?.[type];
    // A plan's own figures for the type replace the named limits with its one bucket.
    const named = override?.capacity === undefined && override?.refillRate === undefined ? limits : undefined;
    const figures: TypeFigures = {
      capacity: override?.capacity ?? throttle.capacity ?? configured?.capacity ?? this.options.type.capacity,
      refillRate: override?.refillRate ?? throttle.refillRate ?? configured?.refillRate ?? this.options.type.refillRate,
      where,
      ...(named === undefined ? {} : { limits: named }),
    };
    const known = this.figures.get(type);
    if (known && describeFigures(known) !== describeFigures(figures)) {
      throw new WsRateLimitConfigError(
        `${where}: type "${type}" is limited to ${describeFigures(figures)} here but to ` +
          `${describeFigures(known)} at ${known.where}; one type has one set of buckets`,
      );
    }
    this.figures.set(type, figures);
  }

  /**
   * The type tier of a type, for a message of the given cost: figures declared by a
   * `@Throttle`, else the module's `types`, else the module's `type` defaults. For a type
   * with named limits, the first of them (see `typeSpecs`).
   */
  typeSpec(type: string, cost: number): TokenBucketSpec {
    return this.typeSpecs(this.bucketOf(type), cost)[0]!;
  }

  /**
   * The type whose bucket a type spends: its own, or, for types from code past
   * MAX_REMEMBERED known ones that the options do not name (names that may come from
   * clients), the one bucket they share, `OTHER_TYPES`.
   */
  bucketOf(type: string): string {
    const overrides = this.options.overrides;
    return Object.hasOwn(this.options.types, type) ||
      (overrides !== undefined && Object.hasOwn(overrides, type)) ||
      this.figures.has(type) ||
      this.figures.size < MAX_REMEMBERED
      ? type
      : OTHER_TYPES;
  }

  /** The key suffix of the bucket types past MAX_REMEMBERED share (see `bucketOf`), for a reset. */
  otherTypesSuffix(): string {
    // Read, not recorded: a reset does not make `(other)` a known type.
    return this.typeSuffix(OTHER_TYPES, this.figures.get(OTHER_TYPES) ?? this.optionFigures(OTHER_TYPES));
  }

  /**
   * The type tiers of a type, for a message of the given cost: its one bucket (suffix
   * `t:<type>`), or one per named limit (suffix `n:<name>:<type>`; a name holds no `:`, so
   * no two limits, and no limit and a type, share a key), each with its figures (see
   * `figuresSuffix`).
   */
  typeSpecs(type: string, cost: number): readonly TokenBucketSpec[] {
    const figures = this.figuresOf(type);
    const cacheKey = `${cost}|${type}`;
    let specs = this.typeSpecCache.get(cacheKey);
    if (!specs) {
      specs = Object.freeze(
        figures.limits === undefined
          ? [tokenBucketSpec('type', this.typeSuffix(type, figures), figures.capacity, figures.refillRate, cost)]
          : figures.limits.map((limit) =>
              tokenBucketSpec('type', namedLimitSuffix(type, limit), limit.capacity, limit.refillRate, cost),
            ),
      );
      if (this.typeSpecCache.size < MAX_REMEMBERED) this.typeSpecCache.set(cacheKey, specs);
    }
    return specs;
  }

  /**
   * A type's figures: declared by a `@Throttle`, else the options' (recorded on first use, up
   * to MAX_REMEMBERED types: names passed from code may come from clients).
   */
  private figuresOf(type: string): TypeFigures {
    let figures = this.figures.get(type);
    if (!figures) {
      figures = this.optionFigures(type);
      if (this.figures.size < MAX_REMEMBERED) this.figures.set(type, figures);
    }
    return figures;
  }

  /** A type's figures from the options alone (a plan's `types` are the module's entries with the plan's fields over them). */
  private optionFigures(type: string): TypeFigures {
    const configured = this.options.types[type];
    return {
      capacity: configured?.capacity ?? this.options.type.capacity,
      refillRate: configured?.refillRate ?? this.options.type.refillRate,
      where: configured ? `option types.${type}` : 'option type',
    };
  }

  /** The key suffix of a type's one bucket: `t:<type>` with its figures (see `figuresSuffix`). */
  private typeSuffix(type: string, figures: TypeFigures): string {
    return figuresSuffix(`t:${type}`, figures.capacity, figures.refillRate);
  }

  /** Every type a route or a request has used so far. */
  knownTypes(): string[] {
    return [...this.figures.keys()];
  }

  /**
   * The types of the handlers (those a `@SkipThrottle` exempts left out), not those named
   * from code: a type passed to `consume()` may be a client's text, which `status()` of
   * another client must not show.
   */
  handlerTypes(): string[] {
    return [...this.declaredTypes];
  }

  /**
   * The key suffixes of the types the options name that are not known yet, for a reset: past
   * MAX_REMEMBERED types, one first used is never recorded, but has its own bucket still.
   */
  optionTypeSuffixes(): string[] {
    return Object.keys(this.options.types)
      .filter((type) => !this.figures.has(type))
      .flatMap((type) => [this.typeSuffix(type, this.optionFigures(type)), `t:${type}`]);
  }

  /** The key suffixes of every type tier known so far (named limits included). */
  knownTypeSuffixes(): string[] {
    const suffixes: string[] = [];
    for (const [type, figures] of this.figures) {
      if (figures.limits === undefined) suffixes.push(this.typeSuffix(type, figures));
      else for (const limit of figures.limits) suffixes.push(namedLimitSuffix(type, limit));
    }
    return suffixes;
  }

  /** The expensive-operations window. */
  get expensive(): TierSpec {
    return this.expensiveSpec;
  }

  /** The tiers for a type requested from code (`WsRateLimitService.consume`). */
  specsFor(type: string, expensive: boolean | undefined, cost: number | undefined): TierSpec[] {
    // A plan's own figures for the type first, as for its handlers' routes.
    const override = this.options.overrides?.[type];
    const configured = this.options.types[type];
    const charge = cost ?? override?.cost ?? configured?.cost ?? 1;
    const where = `type "${type}"`;
    checkFigure(where, 'cost', charge);
    // Types from code may come from clients: past MAX_REMEMBERED known ones, those the
    // options do not name share one bucket, so that a connection (in process memory) or a
    // tracker hash (in Redis) holds a bounded number of states, not one per name sent.
    const bucket = this.bucketOf(type);
    this.checkCost(where, charge, this.figuresOf(bucket));
    const specs: TierSpec[] = [this.globalSpec(charge), ...this.typeSpecs(bucket, charge)];
    if (expensive ?? override?.expensive ?? configured?.expensive ?? false) specs.push(this.expensiveSpec);
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
    const own = Reflect.getMetadata(THROTTLE_METADATA, handler) as ThrottleOptions | undefined;
    const inherited = Reflect.getMetadata(THROTTLE_METADATA, gateway) as ThrottleOptions | undefined;
    for (const [options, on] of [
      [inherited, `@Throttle on ${owner.name}`],
      [own, where],
    ] as const) {
      // A misspelled field (`capcity`) would otherwise leave the default in force, unseen.
      for (const field of Object.keys(options ?? {})) {
        if (!THROTTLE_FIELDS.includes(field)) {
          throw new WsRateLimitConfigError(`${on}: unknown field "${field}" (fields: ${THROTTLE_FIELDS.join(', ')})`);
        }
      }
    }
    const throttle: ThrottleOptions = { ...inherited, ...own };
    // The handler's buckets win over its class's of the other kind (named limits or one bucket).
    if (own?.limits !== undefined && own.capacity === undefined && own.refillRate === undefined) {
      delete throttle.capacity;
      delete throttle.refillRate;
    } else if (own !== undefined && (own.capacity !== undefined || own.refillRate !== undefined) && !own.limits) {
      delete throttle.limits;
    }
    const event = Reflect.getMetadata(MESSAGE_METADATA, handler) as unknown;
    const type = throttle.type ?? (typeof event === 'string' ? event : method.name);
    if (typeof type !== 'string' || type === '') {
      throw new WsRateLimitConfigError(`${where}: type must be a non-empty string`);
    }
    return { type, throttle: skip ? null : throttle, where };
  }

  private build(handler: object, gateway: object): Route | null {
    // The module's figures for the handler's type first: a plan's buckets are named after them (see `typeSuffix`).
    this.base?.declare(handler, gateway);
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
    if (throttle.skipIf !== undefined && typeof throttle.skipIf !== 'function') {
      throw new WsRateLimitConfigError(`${where}: skipIf must be a function`);
    }
    this.checkCost(where, cost, this.figuresOf(type));
    const specs: TierSpec[] = [this.globalSpec(cost), ...this.typeSpecs(type, cost)];
    if (override?.expensive ?? throttle.expensive ?? configured?.expensive ?? false) specs.push(this.expensiveSpec);
    const essential = override?.essential ?? throttle.essential ?? configured?.essential ?? false;
    const skipIf = throttle.skipIf === undefined ? {} : { skipIf: throttle.skipIf };
    return Object.freeze({
      type,
      specs: Object.freeze(specs),
      where: where.slice('@Throttle on '.length),
      essential,
      ...skipIf,
    });
  }

  private checkCost(where: string, cost: number, figures: TypeFigures): void {
    for (const limit of figures.limits ?? []) {
      if (cost > limit.capacity) {
        throw new WsRateLimitConfigError(
          `${where}: cost ${cost} exceeds the capacity ${limit.capacity} of limit "${limit.name}"; such a message could never pass`,
        );
      }
      const rate = messageRateProblem(limit.refillRate, cost);
      if (rate !== undefined) throw new WsRateLimitConfigError(`${where}: limit "${limit.name}": ${rate}`);
    }
    const typeCapacity = figures.capacity;
    if (figures.limits === undefined && cost > typeCapacity) {
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
      (figures.limits === undefined ? messageRateProblem(figures.refillRate, cost) : undefined) ??
      messageRateProblem(this.options.global.refillRate, cost);
    if (rate !== undefined) throw new WsRateLimitConfigError(`${where}: ${rate}`);
  }
}

/**
 * The key suffix of the expensive window: one per algorithm (`x` for a sliding log, `xc`
 * for a sliding counter), so that a tracker whose connections are on plans with different
 * algorithms keeps both windows, instead of each algorithm's decision finding the other's
 * state and starting it over (every switch of plan reset the window).
 */
export function expensiveSuffix(algorithm: 'sliding-log' | 'sliding-counter'): string {
  return algorithm === 'sliding-log' ? 'x' : 'xc';
}

/** The key suffix of a type's named limit: `n:<name>:<type>` with its figures (see `figuresSuffix`). */
function namedLimitSuffix(type: string, limit: NamedFigures): string {
  return figuresSuffix(`n:${limit.name}:${type}`, limit.capacity, limit.refillRate);
}

/** Every suffix the module's expensive window may have (for a reset; plans add their own). */
export const EXPENSIVE_SUFFIXES: readonly string[] = Object.freeze(['x', 'xc']);

function checkFigure(where: string, field: 'capacity' | 'refillRate' | 'cost', value: unknown): void {
  if (value === undefined) return;
  // The bounds of the module's per-type figures (a refill rate of 1e-320 would never refill).
  const problem = typeFigureProblem(field, value);
  if (problem !== undefined)
    throw new WsRateLimitConfigError(`${where}: ${field} must be ${problem}, got ${String(value)}`);
}

/** `@Throttle`'s named limits, checked (names, count, the per-type bounds), or `undefined`. */
function namedLimits(where: string, throttle: ThrottleOptions): readonly NamedFigures[] | undefined {
  const { limits } = throttle;
  if (limits === undefined) return undefined;
  if (throttle.capacity !== undefined || throttle.refillRate !== undefined) {
    throw new WsRateLimitConfigError(
      `${where}: give either limits or capacity/refillRate (limits replace the type's one bucket)`,
    );
  }
  if (limits === null || typeof limits !== 'object' || Array.isArray(limits)) {
    throw new WsRateLimitConfigError(`${where}: limits must be an object of named { capacity, refillRate }`);
  }
  const names = Object.keys(limits);
  if (names.length === 0 || names.length > MAX_NAMED_LIMITS) {
    throw new WsRateLimitConfigError(`${where}: limits must name 1 to ${MAX_NAMED_LIMITS} limits, got ${names.length}`);
  }
  return Object.freeze(
    names.map((name) => {
      if (!NAMED_LIMIT_NAME.test(name)) {
        throw new WsRateLimitConfigError(
          `${where}: limit name "${name}" must be 1 to 32 letters, digits, _ or - (it is part of a key)`,
        );
      }
      const limit = limits[name] as { capacity?: unknown; refillRate?: unknown } | null;
      if (limit === null || typeof limit !== 'object') {
        throw new WsRateLimitConfigError(`${where}: limits.${name} must be { capacity, refillRate }`);
      }
      // A field of another limiter's shape (@nestjs/throttler's `ttl`, `limit`) would be ignored.
      for (const field of Object.keys(limit)) {
        if (field !== 'capacity' && field !== 'refillRate') {
          throw new WsRateLimitConfigError(
            `${where}: limits.${name}: unknown field "${field}" (fields: capacity, refillRate)`,
          );
        }
      }
      for (const field of ['capacity', 'refillRate'] as const) {
        if (limit[field] === undefined)
          throw new WsRateLimitConfigError(`${where}: limits.${name}.${field} is required`);
        checkFigure(`${where}: limits.${name}`, field, limit[field]);
      }
      return Object.freeze({ name, capacity: limit.capacity as number, refillRate: limit.refillRate as number });
    }),
  );
}

/** A type's buckets as one string, to compare and to name in messages. */
function describeFigures(figures: TypeFigures): string {
  if (figures.limits === undefined) return `${figures.capacity} burst, ${figures.refillRate}/s`;
  return figures.limits.map((limit) => `${limit.name}: ${limit.capacity} burst, ${limit.refillRate}/s`).join('; ');
}
