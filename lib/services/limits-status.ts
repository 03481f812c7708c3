/** What `WsRateLimitService` is asked and answers about budgets from code. */

/** What a message asks of the limiter when it is checked from code. */
export interface ConsumeRequest {
  /** The message type: its type bucket, and its figures from the module's `types`. */
  type: string;
  /** Also count it in the expensive-operations window. */
  expensive?: boolean;
  /** Tokens it costs in the global and type buckets. */
  cost?: number;
}

/** Remaining budget of one tier, as the reference article's `get_limits` reports it. */
export interface BudgetStatus {
  readonly remaining: number;
  readonly capacity: number;
  /** Milliseconds until the budget is full again. */
  readonly resetIn: number;
}

/** A client's budgets in every message tier. */
export interface ClientLimitsStatus {
  readonly tracker: string;
  /** The plan the client's messages are limited by (`default`: the module's own limits). */
  readonly plan: string;
  readonly global: BudgetStatus;
  readonly types: Readonly<Record<string, BudgetStatus>>;
  readonly expensive: BudgetStatus;
}
