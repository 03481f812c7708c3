// Over 400 lines: one class, the enforcer, whose answers (the refusal's frame, the violation
// count, the degradation and the close, and shadow mode's reports of each) read one
// connection's state together; split, the threshold's rules would be in two places.
import { performance } from 'node:perf_hooks';
import { createSlidingLog, logCount, logRecord } from '../algorithms/sliding-log.js';
import type { ResolvedWsRateLimitOptions } from '../config/resolve-options.js';
import type { AnswerOrder, AnswerSlot } from '../connection/answer-order.js';
import { CONNECTION_STATE, type ConnectionState, type TrackedClient } from '../connection/connection-state.js';
import { GOING_AWAY, PING_TIMEOUT_REASON } from '../connection/heartbeat.js';
import type { WsRateLimitException } from '../exceptions/ws-rate-limit.exception.js';
import type { RateLimitFrameBuilder } from '../interfaces/frame.interface.js';
import { IntervalLog, VIOLATION_LOG_INTERVAL_MS } from '../metrics/interval-log.js';
import { frameCode, type Telemetry } from '../metrics/telemetry.js';
import { RATE_LIMIT_EVENT, type RateLimitFrameInfo } from '../protocol/rate-limit-protocol.js';
import { isPromise } from '../services/shared-store.js';
import type { RateLimitTransport } from '../transports/transport.js';
import { wsTransport } from '../transports/ws-transport.js';
import { CLOSE_POLICY_VIOLATION, SLOW_CONSUMER_REASON } from '../ws-rate-limit.constants.js';
import { errorText } from '../utils/error-text.js';
import { answeredInTransit, decidedWhileDegraded } from './in-transit.js';

/** Close reason for a tracker on the deny list. */
export const DENIED_REASON = 'Denied';

/** Why the limiter closes a socket: its `disconnects_total` label (and how it is closed). */
export type DisconnectKind = 'violations' | 'slow_consumer' | 'denied';

/** What the enforcer reads from the module's options. */
export type EnforcerOptions = Pick<
  ResolvedWsRateLimitOptions,
  'violations' | 'degradeCooldownMs' | 'maxBufferedBytes' | 'frameBuilder' | 'closeGraceMs'
>;

/** Where the enforcer logs. */
export interface EnforcerLogger {
  warn(message: string): void;
  debug(message: string): void;
}

const defaultFrameBuilder: RateLimitFrameBuilder = (info) => ({ event: RATE_LIMIT_EVENT, data: info });

/** What a frame builder returned, for the warning. */
function describeFrame(frame: unknown): string {
  if (frame === undefined) return 'undefined';
  if (isPromise(frame)) return 'a promise (the builder must be synchronous)';
  return `a ${typeof frame}`;
}

/**
 * Answers rejected messages on a connection, through its transport: counts violations in
 * a sliding window, sends the `rate_limit` frame, degrades or closes repeat offenders, and
 * cuts off slow consumers. Shadow mode (`telemetry.enforced` false, the one reading of the
 * `shadow` option) is applied here for everything that would reach a client: violations
 * are counted and reported, nothing is sent or closed.
 */
export class Enforcer {
  /** False in shadow mode. */
  readonly enforced: boolean;
  private readonly frameBuilder: RateLimitFrameBuilder;
  /** How long a policy close waits for replies of earlier messages (and frames for them). */
  readonly closeGraceMs: number;
  /** The debug lines about violations, at most one per `VIOLATION_LOG_INTERVAL_MS`. */
  private readonly violationLog: IntervalLog;
  /** Whether a frame that could not be built or written was reported (see `frameFailed`). */
  private frameFailureReported = false;

  constructor(
    private readonly options: EnforcerOptions,
    private readonly telemetry: Telemetry,
    private readonly logger: EnforcerLogger,
  ) {
    this.enforced = telemetry.enforced;
    this.frameBuilder = options.frameBuilder ?? defaultFrameBuilder;
    this.closeGraceMs = options.closeGraceMs;
    this.violationLog = new IntervalLog(VIOLATION_LOG_INTERVAL_MS, (line) => logger.debug(line));
  }

  /**
   * Answers a rejected message: in shadow mode records it; otherwise counts the violation,
   * sends the `rate_limit` frame, and at the threshold degrades the connection (with
   * `degradeCooldownMs`) or closes it after that frame.
   */
  answer(client: object, state: ConnectionState, exception: WsRateLimitException, slot?: AnswerSlot): void {
    if (this.enforced) this.reject(client, state, exception, slot);
    else this.record(state, exception);
  }

  /**
   * The enforced answer to a rejected message (see `answer`); `slot` is the message's place
   * in the connection's order of answers, when its adapter keeps one.
   */
  reject(client: object, state: ConnectionState, exception: WsRateLimitException, slot?: AnswerSlot): void {
    answeredInTransit(state, exception);
    const transport = transportOf(state);
    if (state.closing || !transport.isOpen(client)) return;
    const { max, closeCode, closeReason, windowMs } = this.options.violations;
    const { decision } = exception;
    // Our store being unreachable is not the client's fault: answered, never counted.
    const warningCount = decision.storeUnavailable
      ? currentViolations(state, windowMs)
      : this.countViolation(state, exception, true);
    const cooldown = this.options.degradeCooldownMs;
    // Degraded now, or when it was decided (see `decidedWhileDegraded`): the threshold closes.
    const degraded = state.degradedUntil > performance.now() || decidedWhileDegraded(exception);
    const degrade = warningCount >= max && cooldown > 0 && !degraded;
    const id = exception.messageId === undefined ? {} : { id: exception.messageId };
    const info: RateLimitFrameInfo = degrade
      ? {
          code: 'DEGRADED',
          messageType: exception.messageType,
          // Sent again after the cooldown, the message still meets the tier that refused it.
          retryAfter: Math.max(cooldown, decision.retryAfter),
          warningCount,
          limit: 0,
          remaining: 0,
          ...id,
        }
      : {
          code: frameCode(decision),
          messageType: exception.messageType,
          retryAfter: decision.retryAfter,
          warningCount,
          limit: decision.limit,
          remaining: decision.remaining,
          ...id,
        };
    if (!this.send(client, state, this.buildFrame(info), info, slot)) return;
    if (degrade) {
      state.degradedUntil = performance.now() + cooldown;
      // Violations start over: the same number again, while degraded, closes the socket.
      state.violations = undefined;
      if (this.telemetry.observed) {
        this.telemetry.emit({ kind: 'degraded', tracker: exception.tracker, cooldownMs: cooldown, enforced: true });
      }
    } else if (warningCount >= max) {
      this.disconnect(client, state, closeCode, closeReason, exception.tracker, 'violations');
    }
  }

  /**
   * Shadow mode's answer to a rejected message: the violation is counted, streamed and
   * measured, and nothing is sent or closed. At the threshold, what enforcement would do is
   * reported: with `degradeCooldownMs`, a degradation (a `degraded` event with `enforced:
   * false`; the connection is not restricted, so its messages keep being decided) and,
   * reaching the threshold again within the cooldown, a close; without, a close. A refusal
   * because the store is unreachable is no violation here either (see `reject`).
   */
  record(state: ConnectionState, exception: WsRateLimitException): void {
    if (exception.decision.storeUnavailable) return;
    const { max, closeCode, closeReason } = this.options.violations;
    const warningCount = this.countViolation(state, exception, false);
    if (warningCount < max) return;
    const cooldown = this.options.degradeCooldownMs;
    const now = performance.now();
    if (cooldown > 0 && state.shadowDegradedUntil <= now) {
      state.shadowDegradedUntil = now + cooldown;
      state.violations = undefined;
      if (this.telemetry.observed) {
        this.telemetry.emit({ kind: 'degraded', tracker: exception.tracker, cooldownMs: cooldown, enforced: false });
      }
      return;
    }
    this.telemetry.metrics.disconnect('shadow_violations');
    if (this.telemetry.observed) {
      this.telemetry.emit({
        kind: 'disconnect',
        tracker: exception.tracker,
        closeCode,
        reason: closeReason,
        enforced: false,
      });
    }
    state.violations = undefined;
  }

  /**
   * Sends a frame unless the socket is not open or its reader is too slow (then it is cut
   * off instead). Never throws on a closed socket.
   */
  send(client: object, state: ConnectionState, frame: unknown, info?: RateLimitFrameInfo, slot?: AnswerSlot): boolean {
    const transport = transportOf(state);
    if (!transport.isOpen(client) || this.cutOffIfSlow(client, state)) return false;
    const order = state.order;
    if (order === undefined) {
      this.write(transport, client, frame, info, slot);
    } else {
      // After the answers of earlier messages (which may close the socket meanwhile).
      order.write(slot, () => {
        if (transport.isOpen(client)) this.write(transport, client, frame, info, slot);
      });
    }
    return true;
  }

  /**
   * The frame of a refusal from the module's `frameBuilder`; if it throws, the default frame
   * (the failure reported once): the client is still told, and the violation still counts
   * toward the close.
   */
  private buildFrame(info: RateLimitFrameInfo): unknown {
    if (this.frameBuilder === defaultFrameBuilder) return defaultFrameBuilder(info);
    let frame: unknown;
    try {
      frame = this.frameBuilder(info);
    } catch (error) {
      this.frameFailed('frameBuilder threw', error);
      return defaultFrameBuilder(info);
    }
    // Nothing a frame can be made of: JSON writes nothing for these (ws would send an empty
    // frame, socket.io an event with no data, or take a function for an ack callback), and a
    // promise (an async builder) would be written as {}.
    if (frame === undefined || typeof frame === 'function' || typeof frame === 'symbol' || isPromise(frame)) {
      this.frameFailed('frameBuilder returned no frame', new TypeError(`got ${describeFrame(frame)}`));
      return defaultFrameBuilder(info);
    }
    return frame;
  }

  /**
   * Writes a frame. One the transport cannot write (a `frameBuilder`'s frame that JSON cannot
   * serialize: a cycle, a BigInt) is replaced by the default frame, the failure reported
   * once; never throws, so that the answers held behind it (see `AnswerOrder`) still go out.
   */
  private write(
    transport: RateLimitTransport,
    client: object,
    frame: unknown,
    info: RateLimitFrameInfo | undefined,
    slot: AnswerSlot | undefined,
  ): void {
    try {
      transport.sendFrame(client, frame, info, slot);
    } catch (error) {
      this.frameFailed('a rate_limit frame could not be written', error);
      if (info === undefined) return;
      try {
        transport.sendFrame(client, defaultFrameBuilder(info), info, slot);
      } catch {
        // The socket itself failed: its close reports the rest.
      }
    }
  }

  /** A frame that could not be built or written: said once (a flood would repeat it per message). */
  private frameFailed(what: string, error: unknown): void {
    if (this.frameFailureReported) return;
    this.frameFailureReported = true;
    const detail = error instanceof Error ? `${error.name}: ${error.message}` : errorText(error);
    this.logger.warn(`${what} (${detail}); the default rate_limit frame is sent instead (said once)`);
  }

  /**
   * The cooldown a connection not degraded yet will be degraded for once `more` violations
   * (refusals of this read on their way to the filter) are counted on top of its counted
   * ones, or 0 if they will not degrade it: the messages after them in the read are refused
   * as degraded already, as the frame of the threshold tells the client.
   */
  degradesWith(state: ConnectionState, more: number): number {
    const cooldown = this.options.degradeCooldownMs;
    if (!this.enforced || cooldown <= 0 || state.degradedUntil > performance.now()) return 0;
    const { max, windowMs } = this.options.violations;
    return currentViolations(state, windowMs) + more >= max ? cooldown : 0;
  }

  /**
   * Whether `more` violations on top of the connection's counted ones would close it. With a
   * cooldown, the threshold degrades a connection that is not degraded (its violations start
   * over) and closes one that is: one not degraded yet closes at twice the threshold.
   */
  closesWith(state: ConnectionState, more: number): boolean {
    if (!this.enforced) return false;
    const { max, windowMs } = this.options.violations;
    const degrades = this.options.degradeCooldownMs > 0 && state.degradedUntil <= performance.now();
    return currentViolations(state, windowMs) + more >= (degrades ? 2 * max : max);
  }

  /**
   * The slow-consumer check (the one place it is made): a reader with more than
   * `maxBufferedBytes` unread is disconnected. Returns whether it was (in shadow mode it is
   * not: the close is only reported).
   */
  cutOffIfSlow(client: object, state: ConnectionState): boolean {
    const transport = transportOf(state);
    if (transport.bufferedBytes(client) <= this.options.maxBufferedBytes) return false;
    // A policy close already under way (reported then) would wait behind the data this
    // reader does not read, until ws gives up on it: ended now.
    if (state.closing) {
      transport.terminate(client, CLOSE_POLICY_VIOLATION, SLOW_CONSUMER_REASON);
      return true;
    }
    this.disconnect(
      client,
      state,
      CLOSE_POLICY_VIOLATION,
      SLOW_CONSUMER_REASON,
      state.connectionTracker,
      'slow_consumer',
    );
    // In shadow mode the close is only reported: the reader stays, and is written to.
    return this.enforced;
  }

  /**
   * Ends a peer that did not answer the heartbeat's ping within `pongTimeoutMs` (terminated:
   * a close frame would wait for a peer that is gone). Counted in `disconnects_total` as
   * `ping_timeout` and streamed, in shadow mode too: liveness is not a limit, and a dead
   * peer is ended either way.
   */
  pingTimedOut(client: object, state: ConnectionState): void {
    const transport = transportOf(state);
    // A policy close already under way (reported then) waits for a close frame a dead peer
    // will not send: the socket is ended all the same.
    if (state.closing) return transport.terminate(client, GOING_AWAY, PING_TIMEOUT_REASON);
    state.closing = true;
    this.telemetry.metrics.disconnect('ping_timeout');
    if (this.telemetry.observed) {
      this.telemetry.emit({
        kind: 'disconnect',
        tracker: state.connectionTracker,
        closeCode: GOING_AWAY,
        reason: PING_TIMEOUT_REASON,
        enforced: true,
      });
    }
    transport.terminate(client, GOING_AWAY, PING_TIMEOUT_REASON);
  }

  /**
   * Closes a socket for a policy reason (`kind`, never read from the reason's text, which the
   * options may set to anything). A slow consumer is terminated at once, since a close frame
   * would wait behind the data it does not read. Nothing is closed in shadow mode (the event
   * still says what would have happened, once).
   */
  disconnect(
    client: object,
    state: ConnectionState,
    code: number,
    reason: string,
    tracker: string,
    kind: DisconnectKind,
  ): void {
    if (state.closing || state.shadowClosed) return;
    const enforced = this.enforced;
    this.telemetry.metrics.disconnect(enforced ? kind : `shadow_${kind}`);
    if (this.telemetry.observed)
      this.telemetry.emit({ kind: 'disconnect', tracker, closeCode: code, reason, enforced });
    if (!enforced) {
      // Reported once: the heartbeat and every send would find a slow consumer again.
      state.shadowClosed = true;
      return;
    }
    state.closing = true;
    const transport = transportOf(state);
    const close = (): void => {
      try {
        if (kind === 'slow_consumer') transport.terminate(client, code, reason);
        else transport.close(client, code, reason);
      } catch (error) {
        this.logger.warn(`Closing a socket failed: ${(error as Error).message}`);
      }
      this.logger.debug(`Closed ${loggable(tracker)}: ${reason}`);
    };
    // A slow consumer is ended at once: it would not read the replies.
    if (kind === 'slow_consumer') return close();
    // Replies of the messages admitted before this decision go out first, within the grace:
    // this socket's, and those of the sockets its connection carries (socket.io namespaces),
    // which the close ends too and which take no message from now on.
    const carried: [object, ConnectionState][] = [];
    for (const other of transport.carried?.(client) ?? []) {
      const otherState = (other as TrackedClient)[CONNECTION_STATE];
      if (otherState === undefined || otherState.registry !== state.registry || otherState.closing) continue;
      otherState.closing = true;
      if (otherState.order !== undefined && !otherState.order.idle) carried.push([other, otherState]);
    }
    const order = state.order;
    if (carried.length === 0) {
      if (order === undefined || order.idle) close();
      else order.closeAfter(close);
      return;
    }
    let waiting = carried.length + 1;
    // Each socket once, either way: its replies are out (or the grace is over), or it closed
    // meanwhile (a closed socket's order drops its closer; the close still ends the others).
    const whenAnswered = (socket: object, socketOrder: AnswerOrder | undefined): void => {
      let done = false;
      const answered = (): void => {
        if (done) return;
        done = true;
        if (--waiting === 0) close();
      };
      if (socketOrder === undefined || socketOrder.idle) return answered();
      socketOrder.closeAfter(answered);
      transport.onClose(socket, answered);
    };
    for (const [other, otherState] of carried) whenAnswered(other, otherState.order);
    whenAnswered(client, order);
  }

  /** Records a violation in the connection's window; returns the count in the window. */
  private countViolation(state: ConnectionState, exception: WsRateLimitException, enforced: boolean): number {
    const { max, windowMs } = this.options.violations;
    const now = performance.now();
    const log = (state.violations ??= createSlidingLog(max));
    // With the window, expired violations make room before the log grows (at most `max` slots).
    logRecord(log, now, 1, windowMs);
    const warningCount = logCount(log, now, windowMs);
    const code = frameCode(exception.decision);
    this.telemetry.metrics.violation(code, exception.messageType);
    if (this.telemetry.observed) {
      this.telemetry.emit({
        kind: 'violation',
        tracker: exception.tracker,
        type: exception.messageType,
        code,
        warningCount,
        enforced,
      });
    }
    this.violationLog.note(
      () =>
        `${this.enforced ? 'Violation' : 'Violation (shadow mode, not enforced)'} ${warningCount}/${max} by ` +
        `${loggable(exception.tracker)} (${code}, ${loggable(exception.messageType)})`,
    );
    return warningCount;
  }
}

/** A connection's transport (`ws` for sockets the limiter met outside an adapter). */
function transportOf(state: ConnectionState): RateLimitTransport {
  return state.transport ?? (wsTransport as RateLimitTransport);
}

/** Violations of a connection in the current window, without counting a new one. */
function currentViolations(state: ConnectionState, windowMs: number): number {
  return state.violations === undefined ? 0 : logCount(state.violations, performance.now(), windowMs);
}

/**
 * Text for a log line: as it is when printable ASCII, else quoted as JSON. A tracker or a
 * type may be a client's text (a `tracker` function's name, a type passed from code): a CR
 * or LF in it must not start a log line of its own.
 */
function loggable(text: string): string {
  return /^[\x20-\x7e]*$/.test(text) ? text : JSON.stringify(text);
}
