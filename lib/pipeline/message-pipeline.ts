// Over 400 lines: one class, the message pipeline, whose routed and unrouted paths share the
// screening, the closing checks and the refusal path; split, they would drift apart.
import type { ExecutionContext } from '@nestjs/common';
import { performance } from 'node:perf_hooks';
import type { AnswerSlot } from '../connection/answer-order.js';
import type { ConnectionRegistry } from '../connection/connection-registry.js';
import type { ConnectionState } from '../connection/connection-state.js';
import { WsRateLimitException } from '../exceptions/ws-rate-limit.exception.js';
import type { RateLimitDecision, RateLimitPlan, RateLimitRejected } from '../interfaces/plan.interface.js';
import type { Route } from '../plans/route-resolver.js';
import type { UnroutedCode } from '../protocol/rate-limit-protocol.js';
import type { AccessRules } from '../services/access-rules.js';
import type { OperatorBlocks } from '../services/operator-blocks.js';
import { SettleOrder, TRACKER_STALL_MS } from '../connection/settle-order.js';
import { isPromise } from '../services/shared-store.js';
import type { MessageId } from '../utils/message-id.js';
import { messageIdFromArgs } from '../utils/message-id.js';
import { CLOSE_POLICY_VIOLATION } from '../ws-rate-limit.constants.js';
import { DENIED_REASON, type Enforcer } from './enforcer.js';
import type { MessageLimiter } from './message-limiter.js';
import { ownRefusal, type RefusalOwner } from './refusal-owner.js';
import { addressTracker, type Tracker } from './tracker.js';
import { noteInTransit } from './in-transit.js';
import { UnroutedContext } from './unrouted-context.js';
import { refusalsReachOurFilter } from '../filters/filter-order.js';
import { errorText } from '../utils/error-text.js';

/**
 * The steps of the pipeline a guard may change (`WsThrottleGuard`'s protected methods):
 * which limits apply, whose budget, which tiers, and what a rejection does.
 */
export interface MessageSteps {
  getRoute(context: ExecutionContext, connection: ConnectionState, client: object): Route | null;
  /** A promise is awaited (only then): a synchronous tracker costs nothing more. */
  getTracker(client: object, connection: ConnectionState): string | Promise<string>;
  getPlan(connection: ConnectionState, route: Route, tracker: string): RateLimitPlan;
  onRejected(decision: RateLimitRejected, route: Route, plan: RateLimitPlan, context: ExecutionContext): true;
}

/** The steps (and gateway) that decide a socket's unrouted frames. */
export interface UnroutedSteps {
  readonly steps: MessageSteps;
  readonly gateway: object | undefined;
  /**
   * The gateway's events whose handler the module knows a guard of ours decides (its own,
   * its class's, or a global one seen at start-up); undefined when not known.
   */
  readonly guarded?: ReadonlySet<unknown>;
}

/** The rejection for messages that arrive while the limiter closes the socket. */
const CLOSING: RateLimitRejected = Object.freeze({
  allowed: false,
  tier: 'global',
  index: 0,
  retryAfter: 1,
  limit: 0,
  remaining: 0,
  closing: true,
});

/** The message type a closing socket's refusal names for a handler the limiter skips (never sent). */
const SKIPPED_TYPE = 'skipped';

/**
 * The one way every inbound message takes, routed by NestJS to a handler (the guard calls
 * `run`) or not (the adapter calls `runUnrouted` for malformed frames and unknown events):
 *
 *   route -> tracker -> screen (lists, blocks, degradation) -> plan -> decide -> answer
 *
 * The route, tracker, plan and rejection steps are the guard's (`MessageSteps`), on both
 * paths: the guard registered on a gateway decides its unrouted frames too.
 */
export class MessagePipeline {
  /** Guard steps by guard class, registered when a guard is built. */
  private readonly stepsByGuard = new Map<object, MessageSteps>();
  /** Guard class and gateway by the signature of a gateway's handlers (see `bindGateway`). */
  private readonly gateways = new Map<
    string,
    { guard: object | undefined; gateway: object | undefined; guarded?: ReadonlySet<unknown> }
  >();
  /** User callbacks that threw on an unrouted frame, logged once each. */
  private readonly callbackErrors = new Set<string>();
  /** The steps of the module's own guard, for frames of gateways with no guard of ours. */
  readonly defaultSteps: MessageSteps;

  /** Answers this pipeline's refusals, whichever application's filter catches them. */
  private readonly owner: RefusalOwner = {
    answer: (client, exception, slot) => {
      // A message met after the close was decided: neither counted nor answered.
      if (exception.decision !== CLOSING) this.enforcer.reject(client, this.registry.of(client), exception, slot);
    },
  };

  constructor(
    private readonly registry: ConnectionRegistry,
    private readonly limiter: MessageLimiter,
    private readonly enforcer: Enforcer,
    private readonly access: AccessRules,
    private readonly blocks: OperatorBlocks,
    private readonly logger: { error(message: string): void; debug(message: string): void },
  ) {
    this.defaultSteps = {
      getRoute: (context, connection, client) =>
        limiter.routeOf(context.getHandler(), context.getClass(), connection, client),
      getTracker: (client, connection) => limiter.trackerKeyOf(client, connection),
      getPlan: (connection, route, tracker) => limiter.planFor(connection, route, tracker),
      onRejected: (decision, route, plan, context) =>
        this.refuse(
          context.getArgByIndex<object>(0),
          new WsRateLimitException(decision, route.type, plan.tracker, messageIdFromArgs(context.getArgs())),
        ),
    };
  }

  /** Registers the steps of a guard class (its instance calls this when built). */
  registerSteps(guard: object, steps: MessageSteps): void {
    if (!this.stepsByGuard.has(guard)) this.stepsByGuard.set(guard, steps);
  }

  /**
   * Notes which guard class protects a gateway, by the events of its handlers: that is all
   * the adapter learns of a gateway when NestJS binds a socket to it. Two gateways with the
   * same events and different guards cannot be told apart: their frames take the default steps.
   */
  bindGateway(gateway: object, events: readonly unknown[], guard?: object, guarded?: ReadonlySet<unknown>): void {
    const key = signature(events);
    const known = this.gateways.get(key);
    if (known !== undefined && (known.guard !== guard || known.gateway !== gateway)) {
      this.gateways.set(key, { guard: undefined, gateway: undefined });
    } else {
      this.gateways.set(key, { guard, gateway, guarded });
    }
  }

  /** The gateway and guard steps a socket bound to these handlers answers unrouted frames with. */
  stepsFor(handlers: ReadonlyArray<{ message: unknown }>): UnroutedSteps {
    const bound = this.gateways.get(signature(handlers.map((handler) => handler.message)));
    const steps = bound?.guard === undefined ? undefined : this.stepsByGuard.get(bound.guard);
    return { steps: steps ?? this.defaultSteps, gateway: bound?.gateway, guarded: bound?.guarded };
  }

  /**
   * Decides a routed message: `true` lets it through; a rejection is thrown as
   * `WsRateLimitException` for the filter to answer (recorded and let through in shadow mode).
   */
  run(context: ExecutionContext, steps: MessageSteps, guard: object = steps): boolean | Promise<boolean> {
    // A second guard of the same class on one message (APP_GUARD and `@WsRateLimit()`, or
    // `@UseGuards` on a class and its handler): Nest gives every guard of a call one context,
    // and the first decided the message (a refusal would have ended the call there). A guard
    // of another class (a subclass with its own limits) decides as well.
    const marked = context as { [DECIDED]?: object };
    if (marked[DECIDED] === guard) return true;
    marked[DECIDED] = guard;
    const client = context.getArgByIndex<object>(0);
    const connection = this.registry.of(client);
    const route = steps.getRoute(context, connection, client);
    // The violation threshold was reached by earlier messages of this read: the close is
    // decided, so this message is not decided (nor processed) any more, even one the limiter
    // skips (`@SkipThrottle`, `skipIf`).
    if (this.closeDecided(connection)) {
      return this.refuse(
        client,
        new WsRateLimitException(CLOSING, route?.type ?? SKIPPED_TYPE, connection.connectionTracker, undefined),
      );
    }
    if (route === null) return admitted(context, connection);
    if ((this.limiter.skipIf !== undefined || route.skipIf !== undefined) && this.skips(context, route)) {
      return admitted(context, connection);
    }
    const tracker = inTrackerOrder(connection, steps.getTracker(client, connection));
    // An async tracker: a rejection reaches Nest as a throwing tracker's error does.
    const verdict =
      typeof tracker !== 'string'
        ? tracker.then((key) => this.proceed(context, steps, client, connection, route, key))
        : this.proceed(context, steps, client, connection, route, tracker);
    // The common answer, a synchronous `true`, is returned without a promise check.
    if (typeof verdict === 'boolean' || !isPromise(verdict)) return verdict && admitted(context, connection);
    const waited = waitedOn(connection, verdict);
    return connection.onAdmitted === undefined
      ? waited
      : waited.then((through) => through && admitted(context, connection));
  }

  /** Whether the module's `skipIf`, then the route's (`@Throttle`'s), lets the message through unlimited. */
  private skips(context: ExecutionContext, route: Route): boolean {
    const skipIf = this.limiter.skipIf;
    if (skipIf !== undefined && this.skipped(skipIf(context))) return true;
    return route.skipIf !== undefined && this.skipped(route.skipIf(context));
  }

  /**
   * A `skipIf` answer: a truthy one skips, as @nestjs/throttler's does. A promise (an `async`
   * skipIf, which the type does not allow but JavaScript does) cannot be waited for here: it
   * is reported, once loudly, and the message is limited (throttler would skip every message).
   */
  private skipped(answer: unknown): boolean {
    if (answer === true) return true;
    if (!answer) return false;
    if (!isPromise(answer)) return true;
    (answer as Promise<unknown>).then(undefined, () => undefined);
    this.reportOnce(
      'skipIf-promise',
      'skipIf returned a promise; it must return true or false synchronously: the message is limited',
    );
    return false;
  }

  /**
   * Decides a frame that reached no handler (malformed, or an unknown event) with the same
   * steps, its route being the global budget: within it, the client gets a small `error`
   * frame; over it, the rejection is answered like any other. Runs in the socket's message
   * listener, outside Nest's exception handling: nothing a step or callback throws escapes.
   * With `admitted` (socket.io, where an event no handler takes may have listeners of the
   * application's own), a frame within the budget is passed on through it instead of
   * being answered; it calls `done` once the application's listeners have had the event
   * (its answer slot stays open until then, so a close decided meanwhile waits for them).
   */
  runUnrouted(
    client: object,
    connection: ConnectionState,
    code: UnroutedCode,
    id: MessageId | undefined,
    bound: UnroutedSteps,
    slot?: AnswerSlot,
    admitted?: (done: () => void) => void,
  ): void {
    const context = new UnroutedContext(client, code, id, bound.gateway, slot);
    const finished = (): void => {
      if (slot !== undefined) connection.order?.done(slot);
    };
    const answer = (): void => {
      if (admitted !== undefined) return admitted(finished);
      try {
        const frame = { event: 'error', data: id === undefined ? { code } : { code, id } };
        this.enforcer.send(client, connection, frame, undefined, slot);
      } catch (error) {
        this.callbackFailed('transport', error, 'the frame was not answered');
      }
      finished();
    };
    const failed = (error: unknown): void => {
      if (!(error instanceof WsRateLimitException)) {
        this.callbackFailed('store', error, 'the frame was not charged');
      } else if (error.decision !== CLOSING) {
        // (A frame met after the close was decided is neither counted nor answered: answered
        // here, sooner than the routed refusals before it reach the filter, it would take a
        // violation and its frame from one of them.)
        try {
          this.enforcer.reject(client, connection, error, slot);
        } catch (thrown) {
          this.callbackFailed('frameBuilder', thrown, 'the frame was not answered');
        }
      }
      finished();
    };
    // The violation threshold was reached by routed messages of this read still on their way
    // to the filter: the close is decided, so this frame is neither decided nor answered
    // (charged first, it would take a violation, and its frame, from one of them).
    if (connection.pendingRejections !== 0 && this.enforcer.closesWith(connection, connection.pendingRejections)) {
      return finished();
    }
    // A refusal decided here is counted at once (`failed`, whose answer takes it out of transit).
    let verdict: boolean | Promise<boolean>;
    try {
      const route = bound.steps.getRoute(context, connection, client);
      if (route === null) return answer();
      if ((this.limiter.skipIf !== undefined || route.skipIf !== undefined) && this.skipsUnrouted(context, route)) {
        return answer();
      }
      let tracker: string | Promise<string>;
      try {
        tracker = bound.steps.getTracker(client, connection);
      } catch (error) {
        tracker = this.trackerFailed(error, connection);
      }
      tracker = inTrackerOrder(connection, tracker);
      if (typeof tracker !== 'string') {
        verdict = tracker
          .then(undefined, (error: unknown) => this.trackerFailed(error, connection))
          .then((key) => this.proceed(context, bound.steps, client, connection, route, key, false));
      } else {
        verdict = this.proceed(context, bound.steps, client, connection, route, tracker, false);
      }
      if (isPromise(verdict)) waitedOn(connection, verdict);
    } catch (error) {
      return failed(error);
    }
    if (verdict === true) answer();
    else if (verdict === false) finished();
    else verdict.then(answer, failed);
  }

  /**
   * Checks that come before a message's decision: allow and deny lists, operator blocks,
   * degradation. Returns `true` to let the message through undecided, an exception to
   * reject it with, or `undefined` to decide it. `routed`: a message a handler takes (one
   * no handler takes is refused and counted at once, ahead of the routed refusals before it
   * in its read, so it does not look ahead at them).
   */
  screen(
    client: object,
    state: ConnectionState,
    route: Route,
    tracker: string,
    routed = true,
  ): true | WsRateLimitException | undefined {
    // Checked again here: an asynchronous tracker settles after earlier messages were refused.
    if (this.closeDecided(state)) return new WsRateLimitException(CLOSING, route.type, tracker, undefined);
    // An operator's block wins over the allow list, as at the upgrade (see ConnectionAdmission).
    if (this.blocks.active) {
      const blocked = this.blocks.remainingFor(tracker, state.ip === undefined ? undefined : addressOf(state).key);
      if (blocked > 0) return new WsRateLimitException(restriction('blocked', blocked), route.type, tracker, undefined);
    }
    if (state.allowed) return true;
    if (this.access.hasTrackerRules) {
      if (this.access.allowsTracker(tracker)) return true;
      if (this.access.deniesTracker(tracker)) {
        this.enforcer.disconnect(client, state, CLOSE_POLICY_VIOLATION, DENIED_REASON, tracker, 'denied');
        return new WsRateLimitException(CLOSING, route.type, tracker, undefined);
      }
    }
    if (route.essential) return undefined;
    return this.degradation(state, route, tracker, routed);
  }

  /**
   * The refusal of a degraded connection's non-essential message: degraded now, or about to
   * be by the refusals on their way to the filter before it (a routed message's look-ahead).
   */
  private degradation(
    state: ConnectionState,
    route: Route,
    tracker: string,
    routed: boolean,
  ): WsRateLimitException | undefined {
    if (state.degradedUntil !== 0) {
      const left = Math.ceil(state.degradedUntil - performance.now());
      if (left > 0) return new WsRateLimitException(restriction('degraded', left), route.type, tracker, undefined);
      state.degradedUntil = 0;
    }
    // Refusals before this message, not counted yet, degrade the connection.
    if (routed && state.pendingRejections !== 0) {
      const cooldown = this.enforcer.degradesWith(state, state.pendingRejections);
      if (cooldown > 0)
        return new WsRateLimitException(restriction('degraded', cooldown), route.type, tracker, undefined);
    }
    return undefined;
  }

  /** A rejection: thrown for the filter to answer, or in shadow mode recorded and let through. */
  refuse(client: object, exception: WsRateLimitException): true {
    const { decision } = exception;
    if (this.enforcer.enforced) {
      ownRefusal(exception, this.owner);
      throw exception;
    }
    // Shadow mode: a socket that would be closing (a denied tracker: its would-be close is
    // reported already) lets its messages through without counting them as violations.
    if (decision !== CLOSING) this.enforcer.record(this.registry.of(client), exception);
    return true;
  }

  private proceed(
    context: ExecutionContext,
    steps: MessageSteps,
    client: object,
    connection: ConnectionState,
    route: Route,
    tracker: string,
    routed = true,
  ): boolean | Promise<boolean> {
    const screened = this.screen(client, connection, route, tracker, routed);
    if (screened === true) return true;
    if (screened !== undefined) {
      // A block or a degradation refuses the message as a tier would: a decision like any
      // other in the metrics and the stream (a closing socket's messages are none).
      if (screened.decision !== CLOSING) this.limiter.report(tracker, route.type, screened.decision);
      const refusal = withMessageId(screened, context);
      this.notePending(client, refusal, context);
      return this.refuse(client, refusal);
    }
    const plan = steps.getPlan(connection, route, tracker);
    const decision = this.limiter.decideFor(connection, plan, route);
    if (isPromise(decision)) {
      return decision.then((settled) =>
        this.settleLate(client, connection, settled, steps, route, plan, context, routed),
      );
    }
    return this.settle(client, decision, steps, route, plan, context);
  }

  /**
   * A decision that waited on the store, settling in its connection's order: decided side by
   * side with messages refused meanwhile (a flood past the frame hold), it meets what their
   * refusals decided, as it would have at its screening had it come after them: a close
   * decided (not answered, processed or counted) or a degradation (refused as degraded,
   * counted as such, whatever the store said). Counted in metrics and the stream here.
   */
  private settleLate(
    client: object,
    connection: ConnectionState,
    settled: RateLimitDecision,
    steps: MessageSteps,
    route: Route,
    plan: RateLimitPlan,
    context: ExecutionContext,
    routed: boolean,
  ): true {
    if (this.closeDecided(connection)) {
      return this.refuse(client, new WsRateLimitException(CLOSING, route.type, plan.tracker, undefined));
    }
    const degraded = route.essential ? undefined : this.degradation(connection, route, plan.tracker, routed);
    if (degraded !== undefined) {
      this.limiter.report(plan.tracker, route.type, degraded.decision);
      const refusal = withMessageId(degraded, context);
      this.notePending(client, refusal, context);
      return this.refuse(client, refusal);
    }
    this.limiter.report(plan.tracker, route.type, settled);
    return this.settle(client, settled, steps, route, plan, context);
  }

  /**
   * A decision's outcome: allowed, or the guard's `onRejected` step (which throws the
   * refusal, or records it in shadow mode). A refusal thrown, by `refuse` or by an
   * `onRejected` of the application's own, is noted pending on its way to the filter.
   */
  private settle(
    client: object,
    decision: RateLimitDecision,
    steps: MessageSteps,
    route: Route,
    plan: RateLimitPlan,
    context: ExecutionContext,
  ): true {
    if (decision.allowed) return true;
    try {
      return steps.onRejected(decision, route, plan, context);
    } catch (error) {
      if (error instanceof WsRateLimitException) this.notePending(client, error, context);
      throw error;
    }
  }

  /**
   * Notes an enforced refusal that the filter will count later, for the messages decided
   * before it runs (the rest of the read, decisions that settle meanwhile: the look-ahead of
   * the degradation and of the close), until its answer takes it back: not one
   * that is never counted (closing, store unavailable, or taken by a filter of the handler's
   * own before ours).
   */
  private notePending(client: object, exception: WsRateLimitException, context: ExecutionContext): void {
    const { decision } = exception;
    if (!this.enforcer.enforced || decision === CLOSING || decision.storeUnavailable === true) return;
    const handler = handlerOf(context);
    if (handler !== undefined && !refusalsReachOurFilter(handler)) return;
    noteInTransit(this.registry.of(client), exception);
  }

  /**
   * Whether the connection's close is decided: the limiter is closing it, or the refusals on
   * their way to the filter reach the violation threshold. A message met then is neither
   * decided, answered, processed nor counted (the client is never told of it).
   */
  private closeDecided(connection: ConnectionState): boolean {
    return (
      connection.closing ||
      (connection.pendingRejections !== 0 && this.enforcer.closesWith(connection, connection.pendingRejections))
    );
  }

  /** `skips` for a frame that reached no handler: a throwing `skipIf` is logged and the frame limited. */
  private skipsUnrouted(context: ExecutionContext, route: Route): boolean {
    try {
      return this.skips(context, route);
    } catch (error) {
      this.callbackFailed('skipIf', error, 'the frame is limited');
      return false;
    }
  }

  /** A tracker that threw (or rejected) on an unrouted frame: logged, the frame charged to its connection. */
  private trackerFailed(error: unknown, connection: ConnectionState): string {
    this.callbackFailed('tracker', error, 'the frame is charged to its connection');
    return connection.connectionTracker;
  }

  /** A step threw outside Nest's handling: logged once per step, then at debug. */
  private callbackFailed(what: string, error: unknown, outcome: string): void {
    this.reportOnce(what, `${what} threw on an unrouted frame (${errorText(error)}); ${outcome}`);
  }

  /** Logs a problem as an error the first time it is met (by `key`), at debug level after. */
  private reportOnce(key: string, message: string): void {
    if (this.callbackErrors.has(key)) {
      this.logger.debug(message);
    } else {
      this.callbackErrors.add(key);
      this.logger.error(message);
    }
  }
}

/** A routed message's handler (an unrouted frame's context has none). */
function handlerOf(context: ExecutionContext): object | undefined {
  return context instanceof UnroutedContext ? undefined : context.getHandler();
}

/** Marks an execution context whose message one of our guards has decided. */
const DECIDED = Symbol('nestjs-ws-rate-limit:decided');

/**
 * A tracker key, settling in the connection's arrival order: a promise (or a key given at
 * once while an earlier message's promise waits) after the ones before it, so that its
 * decision is asked for after theirs, whatever order the tracker function answers in (one
 * that never answers holds the later ones until none has answered for `TRACKER_STALL_MS`).
 */
function inTrackerOrder(connection: ConnectionState, tracker: string | Promise<string>): string | Promise<string> {
  if (typeof tracker === 'string' || !isPromise(tracker)) {
    if (connection.trackerOrder?.waiting !== true) return tracker as string;
    return connection.trackerOrder.after(Promise.resolve(tracker));
  }
  // A thenable of the application's own becomes a promise here.
  return (connection.trackerOrder ??= new SettleOrder(TRACKER_STALL_MS)).after(Promise.resolve(tracker));
}

/**
 * Counts a verdict that waits (on the store or an asynchronous tracker) until it settles:
 * meanwhile the adapter holds the connection's later frames (see `FrameHold`).
 */
function waitedOn<T>(connection: ConnectionState, verdict: Promise<T>): Promise<T> {
  connection.waiting++;
  const settled = (): void => {
    connection.waiting--;
    connection.hold?.settled();
  };
  // A thenable from a custom tracker or store may throw from `then`: this never throws.
  Promise.resolve(verdict).then(settled, settled);
  return verdict;
}

/** A screening's rejection with the message's id, so that the frame names the message. */
function withMessageId(exception: WsRateLimitException, context: ExecutionContext): WsRateLimitException {
  const id = messageIdFromArgs(context.getArgs());
  if (id === undefined) return exception;
  return new WsRateLimitException(exception.decision, exception.messageType, exception.tracker, id);
}

/** The tracker of a connection's address key, made once per connection. */
function addressOf(state: ConnectionState): Tracker {
  return (state.addressTracker ??= addressTracker(state.ip!));
}

/** A rejection by an operator's block or by degradation, lasting `ms`. */
function restriction(kind: 'blocked' | 'degraded', ms: number): RateLimitRejected {
  return {
    allowed: false,
    tier: 'global',
    index: 0,
    retryAfter: Math.max(1, Math.ceil(ms)),
    limit: 0,
    remaining: 0,
    ...(kind === 'blocked' ? { blocked: true as const } : { degraded: true as const }),
  };
}

/** Names a gateway by the events of its handlers, in a stable order. */
function signature(events: readonly unknown[]): string {
  return events.map(String).sort().join('\u0000');
}

/** `true`, after telling the connection's adapter, when it asked, of a routed message let through. */
function admitted(context: ExecutionContext, connection: ConnectionState): true {
  connection.onAdmitted?.(context.getArgs());
  return true;
}
