import { Injectable, type CanActivate, type ExecutionContext } from '@nestjs/common';
import type { ConnectionState } from '../connection/connection-state.js';
import { WsRateLimitException } from '../exceptions/ws-rate-limit.exception.js';
import type { RateLimitDecision, RateLimitPlan } from '../interfaces/plan.interface.js';
import type { MessageSteps } from '../pipeline/message-pipeline.js';
import type { Route } from '../plans/route-resolver.js';
import { WsRateLimitService } from '../services/ws-rate-limit.service.js';
import { messageIdFromArgs } from '../utils/message-id.js';

/**
 * Limits the messages NestJS routes to a gateway's handlers: for each, the plan of tiers
 * (global, type, and the expensive window when marked) is decided in one step, every tier
 * consuming or none. A refused message raises `WsRateLimitException`, which
 * `WsRateLimitFilter` answers (in shadow mode the message passes and the rejection is only
 * recorded). Allow/deny lists, operator blocks and degradation are checked first. Other
 * execution contexts (HTTP, RPC) pass untouched.
 *
 * Each step is a protected method to override: `getRoute`, `getTracker`, `getPlan`,
 * `onRejected`. With `WsRateLimitAdapter`, the guard on a gateway also decides the frames
 * that reach none of its handlers (malformed, unknown events) with the same steps: their
 * context's handler is one of `UNROUTED_HANDLERS`, whose route is the global budget.
 */
@Injectable()
export class WsThrottleGuard implements CanActivate {
  /** Lets the module recognise this guard (and subclasses) in `@UseGuards` metadata. */
  static readonly isWsThrottleGuard = true;
  /** This guard's steps as the message pipeline calls them. */
  private readonly steps: MessageSteps;

  constructor(protected readonly limiter: WsRateLimitService) {
    this.steps = {
      getRoute: (context, connection, client) => this.getRoute(context, connection, client),
      getTracker: (client, connection) => this.getTracker(client, connection),
      getPlan: (connection, route, tracker) => this.getPlan(connection, route, tracker),
      onRejected: (decision, route, plan, context) => this.onRejected(decision, route, plan, context),
    };
    limiter.pipeline.registerSteps(new.target, this.steps);
  }

  canActivate(context: ExecutionContext): boolean | Promise<boolean> {
    if (context.getType() !== 'ws') return true;
    return this.limiter.pipeline.run(context, this.steps, this.constructor);
  }

  /** The limits of the handler under the connection's plan, or `null` to let it through unlimited. */
  protected getRoute(context: ExecutionContext, connection: ConnectionState, client: object): Route | null {
    return this.limiter.routeOf(context.getHandler(), context.getClass(), connection, client);
  }

  /**
   * Whose budget the message spends (the `tracker` option by default). May return a
   * promise, awaited only then (as @nestjs/throttler's async `getTracker`).
   */
  protected getTracker(client: object, connection: ConnectionState): string | Promise<string> {
    return this.limiter.trackerOf(client, connection);
  }

  /** The tiers to decide (cached per connection and handler by default). */
  protected getPlan(connection: ConnectionState, route: Route, tracker: string): RateLimitPlan {
    return this.limiter.planFor(connection, route, tracker);
  }

  /**
   * Called for a refused message; throws the exception the filter answers (in shadow mode,
   * records it and lets the message through).
   */
  protected onRejected(
    decision: RateLimitDecision & { allowed: false },
    route: Route,
    plan: RateLimitPlan,
    context: ExecutionContext,
  ): true {
    const client = context.getArgByIndex<object>(0);
    return this.limiter.pipeline.refuse(
      client,
      new WsRateLimitException(decision, route.type, plan.tracker, messageIdFromArgs(context.getArgs())),
    );
  }
}
