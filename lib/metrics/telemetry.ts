import { Observable, Subject } from 'rxjs';
import type { RateLimitEvent } from '../interfaces/event.interface.js';
import type { RateLimitDecision, RateLimitRejected, TierName } from '../interfaces/plan.interface.js';
import type { RateLimitCode } from '../protocol/rate-limit-protocol.js';
import { NO_METRICS, type LimiterMetrics } from './ws-rate-limit.metrics.js';
import { errorText } from '../utils/error-text.js';

const FRAME_CODES: Record<TierName, RateLimitCode> = {
  global: 'GLOBAL_LIMIT',
  type: 'TYPE_LIMIT',
  expensive: 'EXPENSIVE_LIMIT',
  connection: 'GLOBAL_LIMIT',
  concurrency: 'GLOBAL_LIMIT',
};

/** The frame code for a rejection. */
export function frameCode(decision: RateLimitRejected): RateLimitCode {
  if (decision.storeUnavailable) return 'STORE_UNAVAILABLE';
  if (decision.blocked) return 'BLOCKED';
  if (decision.degraded) return 'DEGRADED';
  return FRAME_CODES[decision.tier];
}

/**
 * The tier that refused, or undefined for a refusal no tier made (an operator's block, a
 * restriction, a store that could not decide): their `tier` is a placeholder, and `code`
 * says why.
 */
function refusingTier(decision: RateLimitRejected): TierName | undefined {
  return decision.storeUnavailable || decision.blocked || decision.degraded ? undefined : decision.tier;
}

/**
 * Where the limiter reports: Prometheus metrics (when enabled) and the `events$` stream
 * (events are built only while someone subscribes). Knows whether rejections are enforced
 * (shadow mode), as every report says so.
 */
export class Telemetry {
  private readonly subject = new Subject<RateLimitEvent>();
  /** Every decision (when observed), violation, disconnect, connection and store outage. */
  readonly events$: Observable<RateLimitEvent> = this.subject.asObservable();
  metrics: LimiterMetrics = NO_METRICS;

  constructor(
    /** False in shadow mode. */
    readonly enforced: boolean,
  ) {}

  /** Whether anyone listens to `events$` (build an event only then). */
  get observed(): boolean {
    return this.subject.observed;
  }

  /** Whether a decision needs reporting at all. */
  get reporting(): boolean {
    return this.metrics !== NO_METRICS || this.subject.observed;
  }

  emit(event: RateLimitEvent): void {
    this.subject.next(event);
  }

  complete(): void {
    this.subject.complete();
  }

  /** The store stopped answering (once per outage): logged, counted, streamed. */
  storeDown(error: unknown, failMode: 'open' | 'closed', logger: { warn(message: string): void }): void {
    const message = errorText(error);
    this.metrics.storeOutage();
    logger.warn(
      `The rate-limit store cannot decide (${message}); ` +
        (failMode === 'open'
          ? 'deciding with local in-memory limits until it answers again'
          : 'refusing with STORE_UNAVAILABLE until it answers again'),
    );
    if (this.subject.observed) this.subject.next({ kind: 'store', state: 'down', error: message });
  }

  /** The store answers again (once per outage). */
  storeUp(logger: { log(message: string): void }): void {
    logger.log('The rate-limit store answers again; shared limits are back in use');
    if (this.subject.observed) this.subject.next({ kind: 'store', state: 'up' });
  }

  /** Counts a message decision and, when observed, streams it. */
  decision(tracker: string, type: string, decision: RateLimitDecision): void {
    const tier = decision.allowed ? undefined : refusingTier(decision);
    if (decision.allowed) {
      this.metrics.allowed(type);
      if (decision.nearLimit !== undefined) this.metrics.nearLimit(decision.nearLimit, type);
    } else {
      this.metrics.rejected(type, this.enforced ? 'rejected' : 'shadow_rejected', tier ?? 'none', frameCode(decision));
    }
    if (!this.subject.observed) return;
    this.subject.next(
      decision.allowed
        ? {
            kind: 'decision',
            allowed: true,
            enforced: true,
            tracker,
            type,
            ...(decision.nearLimit === undefined ? {} : { nearLimit: decision.nearLimit }),
          }
        : {
            kind: 'decision',
            allowed: false,
            enforced: this.enforced,
            tracker,
            type,
            ...(tier === undefined ? {} : { tier }),
            code: frameCode(decision),
            retryAfter: decision.retryAfter,
          },
    );
  }
}
