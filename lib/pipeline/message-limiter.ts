import { DEFAULT_PLAN_NAME, type ResolvedWsRateLimitOptions } from '../config/resolve-options.js';
import type { ConnectionState } from '../connection/connection-state.js';
import type { SkipIf } from '../decorators/throttle.decorator.js';
import type { RateLimitDecision, RateLimitPlan, TierSpec, TierStatus } from '../interfaces/plan.interface.js';
import type { Telemetry } from '../metrics/telemetry.js';
import { planOf } from '../plans/create-plan.js';
import { EXPENSIVE_SUFFIXES, RouteResolver, type Route } from '../plans/route-resolver.js';
import { MemoryRateLimitStore } from '../storage/memory/memory-store.js';
import type { MaybePromise, RateLimitStore } from '../storage/rate-limit-store.js';
import type { SharedStore } from '../services/shared-store.js';
import { isPromise } from '../services/shared-store.js';
import { SettleOrder } from '../connection/settle-order.js';
import { addressTracker, isLocal, namedTracker, trackerOfKey, type Tracker } from './tracker.js';
import { errorText } from '../utils/error-text.js';

/** The name of the module's own limits among plans. */
export const DEFAULT_PLAN = DEFAULT_PLAN_NAME;
const noop = (): void => undefined;
/** Distinct unknown plan names a `planResolver` may return that are each warned about once. */
export const UNKNOWN_PLAN_WARNINGS = 16;

/** Handlers standing for frames that reach no handler, so that they take the same steps. */
export const UNROUTED_HANDLERS = Object.freeze({
  INVALID_MESSAGE: Object.freeze(function invalidMessage(): void {}),
  UNKNOWN_EVENT: Object.freeze(function unknownEvent(): void {}),
});

/**
 * Message budgets: which limits a message takes (routes, per plan), whose budget it spends
 * (trackers), the plans built for them, and their decision: connection-keyed plans exact in
 * this process, the others in the shared store (behind its fail mode). Every decision is
 * reported to telemetry.
 */
export class MessageLimiter {
  /** Tiers keyed by a connection: exact, in this process, whatever the store. */
  readonly local = new MemoryRateLimitStore({ maxKeys: Number.MAX_SAFE_INTEGER });
  /** Routes per plan; the module's own limits are `DEFAULT_PLAN`. */
  readonly plans = new Map<string, RouteResolver>();
  readonly routes: RouteResolver;
  /** The module's `skipIf`: true lets a message through unlimited. */
  readonly skipIf: SkipIf | undefined;
  /** Plan names a `planResolver` returned that no plan has, warned about once each. */
  private readonly unknownPlans = new Set<string>();
  /** The ways a `planResolver` failed (it threw, it returned a promise) that were reported once. */
  private readonly planResolverFailures = new Set<string>();
  /** Whether a `tracker` function's answer that names no tracker was reported (see `trackerName`). */
  private badTrackerReported = false;

  constructor(
    private readonly options: ResolvedWsRateLimitOptions,
    readonly store: RateLimitStore,
    readonly shared: SharedStore,
    private readonly telemetry: Telemetry,
    private readonly warn: (message: string) => void = noop,
  ) {
    this.skipIf = options.skipIf;
    this.routes = new RouteResolver(options);
    this.plans.set(DEFAULT_PLAN, this.routes);
    for (const [name, limits] of Object.entries(options.plans)) {
      this.plans.set(name, new RouteResolver(limits, this.routes));
    }
    // Frames that reach no handler spend the global budget of the connection's plan.
    for (const routes of this.plans.values()) {
      const global = Object.freeze([routes.globalSpec(1)]);
      const unrouted = (type: string, where: string): Route =>
        Object.freeze({ type, specs: global, where, essential: false });
      routes.seed(UNROUTED_HANDLERS.INVALID_MESSAGE, unrouted('invalid', 'malformed frames'));
      routes.seed(UNROUTED_HANDLERS.UNKNOWN_EVENT, unrouted('unknown', 'frames for no handler'));
    }
  }

  /** The route of a handler (cached) under a connection's plan, or `null` for `@SkipThrottle`. */
  routeOf(handler: object, gateway: object, state?: ConnectionState, client?: object): Route | null {
    const routes =
      state === undefined || this.options.planResolver === undefined
        ? this.routes
        : this.plans.get(this.planNameOf(client ?? {}, state))!;
    return routes.resolve(handler, gateway);
  }

  /** The plan a connection's messages are limited by (`DEFAULT_PLAN` without a resolver). */
  planNameOf(client: object, state: ConnectionState): string {
    const resolver = this.options.planResolver;
    if (resolver === undefined) return DEFAULT_PLAN;
    let name: unknown;
    try {
      name = resolver(client, {
        ip: state.ip,
        address: state.address,
        connectionId: state.id,
        request: state.request,
      });
    } catch (error) {
      // Not a reason to stop limiting (or answering): the module's own limits, as for no plan.
      this.planResolverFailed('threw', `(${errorText(error)})`);
      return DEFAULT_PLAN;
    }
    // `null` from JavaScript code means no plan, as `undefined` does.
    if (name === undefined || name === null) return DEFAULT_PLAN;
    if (typeof name === 'string' && this.plans.has(name)) return name;
    if (isPromise(name)) {
      // A plan is picked for each message as it is decided, so it cannot be waited for.
      Promise.resolve(name).catch(noop);
      this.planResolverFailed('returned a promise', '(it must return a plan name synchronously)');
      return DEFAULT_PLAN;
    }
    this.unknownPlan(name);
    return DEFAULT_PLAN;
  }

  /** A `planResolver` that threw or returned a promise: said once each, then left alone. */
  private planResolverFailed(what: 'threw' | 'returned a promise', detail: string): void {
    if (this.planResolverFailures.has(what)) return;
    this.planResolverFailures.add(what);
    this.warn(
      `planResolver ${what} ${detail}: those connections get the module's own limits (said once; ` +
        `later ones are not logged)`,
    );
  }

  /** A `planResolver` named a plan that does not exist (a typo, or a plan not configured here): said once per name. */
  private unknownPlan(name: unknown): void {
    const text = typeof name === 'string' ? name : String(name);
    if (this.unknownPlans.size > UNKNOWN_PLAN_WARNINGS || this.unknownPlans.has(text)) return;
    this.unknownPlans.add(text);
    if (this.unknownPlans.size > UNKNOWN_PLAN_WARNINGS) {
      this.warn(`planResolver returned more than ${UNKNOWN_PLAN_WARNINGS} unknown plan names: no more are reported`);
      return;
    }
    const known = [...this.plans.keys()].filter((plan) => plan !== DEFAULT_PLAN);
    this.warn(
      `planResolver returned ${JSON.stringify(text)}, which is not a plan (plans: ${known.join(', ') || 'none'}): ` +
        `those connections get the module's own limits`,
    );
  }

  /**
   * Whose budget a message from this socket spends, per the `tracker` option: a promise
   * only when the `tracker` function returned one.
   */
  trackerOf(client: object, state: ConnectionState): MaybePromise<Tracker> {
    const tracker = this.options.tracker;
    if (tracker === 'connection') return state.tracker;
    if (tracker === 'ip') return state.ip === undefined ? state.tracker : this.addressTrackerOf(state);
    const name = tracker(client, {
      ip: state.ip,
      address: state.address,
      connectionId: state.id,
      request: state.request,
    });
    if (typeof name === 'string' && name !== '') return namedTracker(name);
    if (isPromise(name)) {
      return name.then((settled) => {
        const named = this.trackerName(settled);
        return named === undefined ? state.tracker : namedTracker(named);
      });
    }
    const named = this.trackerName(name);
    return named === undefined ? state.tracker : namedTracker(named);
  }

  /**
   * A `tracker` function's answer as a tracker name: a non-empty string, or a finite number
   * as its digits (a numeric user id); `undefined`, `null` or `''` give the connection's own
   * budget, as does anything else (an object: the user instead of its id), reported once.
   */
  private trackerName(value: unknown): string | undefined {
    if (typeof value === 'string') return value === '' ? undefined : value;
    if (typeof value === 'number' && Number.isFinite(value)) return String(value);
    if (value === undefined || value === null) return undefined;
    if (!this.badTrackerReported) {
      this.badTrackerReported = true;
      this.warn(
        `the tracker function returned ${describeValue(value)}, not a string: those messages spend their ` +
          `connection's own budget (return a user id as a string; said once)`,
      );
    }
    return undefined;
  }

  /**
   * `trackerOf`'s key (a promise only when the `tracker` function returned one): the
   * message hot path, so the built-in trackers are not tested for a promise.
   */
  trackerKeyOf(client: object, state: ConnectionState): MaybePromise<string> {
    const tracker = this.options.tracker;
    if (tracker === 'connection') return state.tracker.key;
    if (tracker === 'ip') return state.ip === undefined ? state.tracker.key : this.addressTrackerOf(state).key;
    // A tracker function: its answer read as `trackerOf` reads it.
    const named = this.trackerOf(client, state);
    return isPromise(named) ? named.then((settled) => settled.key) : named.key;
  }

  /** The plan of a route for a tracker, built once per connection and reused. */
  planFor(state: ConnectionState, route: Route, tracker: string | Tracker): RateLimitPlan {
    const key = typeof tracker === 'string' ? tracker : tracker.key;
    const cached = state.plans.get(route);
    if (cached !== undefined && cached.tracker === key) return cached;
    const value =
      typeof tracker === 'string' ? (key === state.tracker.key ? state.tracker : trackerOfKey(key)) : tracker;
    const plan = this.buildPlan(value, route.specs, route.type);
    state.plans.set(route, plan);
    this.remember(state, plan);
    return plan;
  }

  /** A plan for a tracker; `lease` names an open-connection lease. */
  buildPlan(tracker: Tracker, specs: readonly TierSpec[], type: string, lease?: string): RateLimitPlan {
    const local = isLocal(tracker);
    const facts = lease === undefined ? { type, connectionKeyed: local } : { type, connectionKeyed: local, lease };
    return planOf(local ? this.local : this.store, tracker.key, specs, facts);
  }

  /**
   * Notes the tracker of a connection-keyed plan, so that its states are deleted when the
   * connection closes (by tracker: the plan's key strings are never built for it).
   */
  remember(state: ConnectionState, plan: RateLimitPlan): void {
    if (connectionKeyed(plan)) state.localTrackers.add(plan.tracker);
  }

  /**
   * Decides a plan: connection-keyed plans in process memory, the rest in the store (the
   * fail mode deciding when it cannot). Counted in metrics and, when observed, streamed.
   */
  decide(plan: RateLimitPlan, route?: Route): MaybePromise<RateLimitDecision> {
    const decision = connectionKeyed(plan) ? this.local.consume(plan) : this.shared.consume(plan);
    if (this.telemetry.reporting) {
      const type = route?.type ?? plan.type ?? typeOfSpecs(plan);
      if (isPromise(decision)) {
        // A throw here would be an unhandled rejection, which ends a Node process: the decision
        // itself reaches its caller through `decision`, whatever its counting does.
        decision.then((settled) => {
          try {
            this.telemetry.decision(plan.tracker, type, settled);
          } catch {
            // Not counted; nothing else to do from a callback nobody awaits.
          }
        }, noop);
      } else {
        this.telemetry.decision(plan.tracker, type, decision);
      }
    }
    return decision;
  }

  /** Counts and streams a refusal made before any tier decided (an operator block, a degradation). */
  report(tracker: string, type: string, decision: RateLimitDecision): void {
    if (this.telemetry.reporting) this.telemetry.decision(tracker, type, decision);
  }

  /** The state of a plan's tiers, consuming nothing. */
  async peek(plan: RateLimitPlan): Promise<readonly TierStatus[]> {
    return connectionKeyed(plan) ? this.local.peek(plan) : this.shared.peek(plan);
  }

  /** Gives a tracker its full budget back in every message tier the limiter knows. */
  async reset(tracker: Tracker): Promise<void> {
    const types = new Set<string>();
    for (const routes of this.plans.values()) {
      // A type's one bucket, and its named limits' (a plan may give a type either), under
      // suffixes naming their figures; a plan's window of figures other than the module's
      // under its own. The suffixes of the layout before buckets were keyed by their figures
      // (`g`, `t:<type>`) too, whose states may outlive an upgrade by their TTL.
      types.add('g');
      types.add(routes.globalSuffix);
      types.add(routes.expensiveSuffix);
      types.add(routes.otherTypesSuffix());
      for (const type of routes.knownTypes()) types.add(`t:${type}`);
      for (const suffix of routes.knownTypeSuffixes()) types.add(suffix);
      for (const suffix of routes.optionTypeSuffixes()) types.add(suffix);
    }
    const suffixes = [...EXPENSIVE_SUFFIXES, ...types];
    if (isLocal(tracker)) this.local.delete(suffixes.map((suffix) => this.local.key(tracker.key, suffix)));
    else await this.shared.deleteTiers(tracker.key, suffixes);
  }

  /**
   * Drops what a closed connection held: its connection-keyed keys and its plans. Called at
   * its close, and again after each decision made for it once it ended (`decideFor`).
   */
  forget(state: ConnectionState): void {
    state.ended = true;
    for (const tracker of state.localTrackers) this.local.deleteTracker(tracker);
    state.localTrackers.clear();
    state.plans.clear();
  }

  /**
   * `decide` for a plan made for a connection (a message's, or one code asked for naming its
   * socket). A connection that ended before its plan was made (its tracker answered after
   * the close) would otherwise keep the states the decision made, in the connection store
   * that nothing evicts, for as long as the process runs. The connection's decisions settle
   * in the order they were asked for (`SettleOrder`), the fail mode's included.
   */
  decideFor(state: ConnectionState, plan: RateLimitPlan, route: Route): MaybePromise<RateLimitDecision> {
    let decision: MaybePromise<RateLimitDecision>;
    if (connectionKeyed(plan)) {
      decision = this.local.consume(plan);
      // Made at once, it still settles after the connection's decisions waiting before it.
      if (state.decisionOrder?.waiting === true) decision = state.decisionOrder.after(Promise.resolve(decision));
    } else {
      decision = this.shared.consume(plan, undefined, (state.decisionOrder ??= new SettleOrder()));
    }
    // One that waits is counted by the pipeline when it settles (`count`), if it is told then.
    if (this.telemetry.reporting && !isPromise(decision)) this.telemetry.decision(plan.tracker, route.type, decision);
    if (state.ended) this.forget(state);
    return decision;
  }

  async close(): Promise<void> {
    await this.local.close();
    await this.shared.close();
  }

  private addressTrackerOf(state: ConnectionState): Tracker {
    return (state.addressTracker ??= addressTracker(state.ip!));
  }
}

/** A value for a warning: its type, and a short text of it. */
function describeValue(value: unknown): string {
  if (typeof value === 'object') return Array.isArray(value) ? 'an array' : 'an object';
  return `${typeof value} ${String(value).slice(0, 40)}`;
}

/** Whether a plan is decided in process memory (plans built outside the limiter: by tracker). */
function connectionKeyed(plan: RateLimitPlan): boolean {
  return plan.connectionKeyed ?? isLocal(trackerOfKey(plan.tracker));
}

/** The message type of a plan built outside the limiter: its type tier's (suffix `t:<type>`). */
function typeOfSpecs(plan: RateLimitPlan): string {
  const suffix = plan.tiers.find((tier) => tier.spec.tier === 'type')?.spec.suffix ?? '';
  // `t:<type>`, or a named limit's `n:<name>:<type>` (a name holds no `:`), after a plan's
  // `@<figures>:` (see `figuresSuffix`).
  const bare = suffix.startsWith('@') ? suffix.slice(suffix.indexOf(':') + 1) : suffix;
  return bare.startsWith('n:') ? bare.slice(bare.indexOf(':', 2) + 1) : bare.slice(2);
}
