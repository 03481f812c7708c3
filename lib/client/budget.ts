/** Longest refill interval a learned budget can grow to, in ms per message. */
export const MAX_PACE_MS = 60_000;

/** Tolerance for floating-point error when comparing token counts. */
const EPSILON = 1e-9;

/**
 * The client's conservative model of one server token bucket: it never holds more tokens
 * than the server's bucket, so a message the model admits is not rejected.
 *
 * Learned from a `rate_limit` frame received at `now` with `retryAfter` R: the model's first
 * token comes at now + R (when the server's does, since R is "never a lie"), then one token
 * per `intervalMs` >= 1 / (server refill rate), up to `capacity`. Tokens may go negative
 * when priority messages are sent on credit.
 */
export class Budget {
  private constructor(
    /** Burst size. */
    readonly capacity: number,
    /** Milliseconds per token. */
    readonly intervalMs: number,
    private tokens: number,
    private updatedAt: number,
    /**
     * The client's count of messages sent when the model was built: a message sent after
     * it (a higher count) was admitted by this model. -1 for a declared model.
     */
    readonly builtAtSend: number,
  ) {}

  /** A model of a limit declared in the options: full, at the declared rate. */
  static declared(capacity: number, refillPerSecond: number, now: number): Budget {
    return new Budget(capacity, 1000 / refillPerSecond, capacity, now, -1);
  }

  /** A model rebuilt from a frame: empty, its first token `retryAfterMs` from now. */
  static afterRejection(
    capacity: number,
    intervalMs: number,
    retryAfterMs: number,
    now: number,
    sends: number,
  ): Budget {
    const tokens = 1 - Math.min(retryAfterMs, intervalMs) / intervalMs;
    return new Budget(capacity, intervalMs, tokens, now, sends);
  }

  /** Tokens available at `now`. */
  available(now: number): number {
    const elapsed = Math.max(0, now - this.updatedAt);
    return Math.min(this.capacity, this.tokens + elapsed / this.intervalMs);
  }

  /** Milliseconds until one token is available (0 if one is). */
  waitMs(now: number): number {
    const missing = 1 - this.available(now);
    return missing <= EPSILON ? 0 : missing * this.intervalMs;
  }

  /** Spends one token, going into debt if none is left. */
  take(now: number): void {
    this.tokens = this.available(now) - 1;
    this.updatedAt = now;
  }
}
