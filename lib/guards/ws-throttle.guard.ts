import { Injectable, type CanActivate, type ExecutionContext } from '@nestjs/common';
import type { ConnectionState } from '../connection/connection-state.js';
import { WsRateLimitException } from '../exceptions/ws-rate-limit.exception.js';
import type { RateLimitDecision, RateLimitPlan } from '../interfaces/plan.interface.js';
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
 * `onRejected`.
 */
@Injectable()
export class WsThrottleGuard implements CanActivate {
  /** Lets the module recognise this guard (and subclasses) in `@UseGuards` metadata. */
  static readonly isWsThrottleGuard = true;

  constructor(protected readonly limiter: WsRateLimitService) {}

  canActivate(context: ExecutionContext): boolean | Promise<boolean> {
    if (context.getType() !== 'ws') return true;
    // A WebSocket handler's arguments are [client, data, ...]: read the client directly
    // (switchToWs() builds a new object on every call).
    const client = context.getArgByIndex<object>(0);
    const connection = this.limiter.connectionOf(client);
    const route = this.getRoute(context, connection, client);
    if (route === null) return true;
    const tracker = this.getTracker(client, connection);
    const screened = this.limiter.screen(client, connection, route, tracker);
    if (screened === true) return true;
    if (screened !== undefined) return this.refuse(client, screened);
    const plan = this.getPlan(connection, route, tracker);
    const decision = this.limiter.decide(plan, route);
    if (decision instanceof Promise) return decision.then((settled) => this.settle(settled, route, plan, context));
    return this.settle(decision, route, plan, context);
  }

  /** The limits of the handler under the connection's plan, or `null` to let it through unlimited. */
  protected getRoute(context: ExecutionContext, connection: ConnectionState, client: object): Route | null {
    return this.limiter.routeOf(context.getHandler(), context.getClass(), connection, client);
  }

  /** Whose budget the message spends (the `tracker` option by default). */
  protected getTracker(client: object, connection: ConnectionState): string {
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
    return this.refuse(
      client,
      new WsRateLimitException(decision, route.type, plan.tracker, messageIdFromArgs(context.getArgs())),
    );
  }

  private refuse(client: object, exception: WsRateLimitException): true {
    if (!this.limiter.options.shadow) throw exception;
    this.limiter.shadowReject(client, exception);
    return true;
  }

  private settle(decision: RateLimitDecision, route: Route, plan: RateLimitPlan, context: ExecutionContext): true {
    if (decision.allowed) return true;
    return this.onRejected(decision, route, plan, context);
  }
}
