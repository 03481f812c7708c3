import type {
  RateLimitDecision,
  RateLimitPlan,
  RateLimitRejected,
  TierName,
  TierStatus,
} from '../interfaces/plan.interface.js';
import type { RateLimitStore } from './rate-limit-store.js';

/**
 * Checks of what a store answers, for stores of the application's own: the limiter acts on a
 * decision's `allowed`, and a refusal's figures become the client's `rate_limit` frame, so
 * an answer that is not a decision (`null`, `{}`, `{ allowed: 'yes' }`, a refusal whose wait
 * is `NaN` or negative) is a store failure, decided by the fail mode and reported as one,
 * never a message admitted or a frame with holes in it. The built-in stores answer well-formed
 * decisions; for them the cost is a comparison on the allowed path.
 */

const TIER_NAMES: ReadonlySet<string> = new Set<TierName>(['global', 'type', 'expensive', 'connection', 'concurrency']);

/** A store's answer that is no decision or status (the fail mode decides instead). */
export class MalformedStoreAnswerError extends TypeError {
  override readonly name = 'MalformedStoreAnswerError';
}

function isFigure(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0;
}

function shown(value: unknown): string {
  if (value === undefined) return 'undefined';
  try {
    const text = JSON.stringify(value, (_key, field: unknown) =>
      typeof field === 'number' && !Number.isFinite(field) ? String(field) : field,
    );
    if (text !== undefined) return text.length > 120 ? `${text.slice(0, 117)}...` : text;
  } catch {
    // A cycle or a throwing getter: its type says enough.
  }
  return typeof value;
}

/**
 * The decision a store answered, as the limiter may act on it: `{ allowed: true }` (with
 * anything else beside it) as it is; a refusal whose `tier` is a tier name and whose
 * `retryAfter` (or Infinity: never), `limit` and `remaining` are finite and not negative, with the wait made whole
 * milliseconds, at least 1, and `remaining` whole units (the frame's promise). Anything else
 * throws `MalformedStoreAnswerError`, naming what was wrong.
 */
export function checkedDecision(answer: unknown): RateLimitDecision {
  const decision = answer as Partial<
    Record<keyof RateLimitDecision | 'retryAfter' | 'limit' | 'remaining' | 'tier', unknown>
  >;
  if (decision?.allowed === true) return answer as RateLimitDecision;
  if (decision === null || typeof decision !== 'object' || decision.allowed !== false) {
    throw new MalformedStoreAnswerError(
      `the store's consume() answered ${shown(answer)}: a decision is { allowed: true } or a refusal { allowed: false, tier, retryAfter, limit, remaining }`,
    );
  }
  const { tier, retryAfter, limit, remaining } = decision;
  const wrong =
    typeof tier !== 'string' || !TIER_NAMES.has(tier)
      ? 'tier'
      : !isFigure(retryAfter) && retryAfter !== Infinity
        ? 'retryAfter'
        : !isFigure(limit)
          ? 'limit'
          : !isFigure(remaining)
            ? 'remaining'
            : undefined;
  if (wrong !== undefined) {
    throw new MalformedStoreAnswerError(
      `the store's consume() answered a refusal whose ${wrong} is ${shown(decision[wrong])} (${shown(answer)}): ` +
        `tier is one of ${[...TIER_NAMES].join(', ')}; retryAfter (or Infinity), limit and remaining are finite numbers, not negative`,
    );
  }
  const wait = retryAfter as number;
  const left = remaining as number;
  const refusal = answer as RateLimitRejected;
  // (Infinity: never, as the built-in stores answer a cost above a tier's limit.)
  if (
    (Number.isInteger(wait) || wait === Infinity) &&
    wait >= 1 &&
    Number.isInteger(left) &&
    refusal.storeUnavailable === undefined &&
    refusal.blocked === undefined &&
    refusal.degraded === undefined &&
    refusal.closing === undefined
  ) {
    return refusal;
  }
  // The limiter's own marks (an operator's block, a degradation, its fail mode, a closing
  // connection) are not a store's to give: a refusal is its tier's.
  return {
    allowed: false,
    tier: tier as TierName,
    index: refusal.index,
    retryAfter: Math.max(1, Math.ceil(wait)),
    limit: limit as number,
    remaining: Math.floor(left),
  };
}

/**
 * The tier statuses a store's `peek` answered for a plan: one per tier, in the plan's order,
 * each with finite figures that are not negative. Anything else throws
 * `MalformedStoreAnswerError`.
 */
export function checkedStatuses(answer: unknown, plan: RateLimitPlan): readonly TierStatus[] {
  const count = plan.tiers.length;
  if (!Array.isArray(answer) || answer.length !== count) {
    throw new MalformedStoreAnswerError(
      `the store's peek() answered ${shown(answer)} for a plan of ${count} tier${count === 1 ? '' : 's'}: it answers one status per tier`,
    );
  }
  for (let i = 0; i < count; i++) {
    const status = answer[i] as Partial<Record<keyof TierStatus, unknown>> | null | undefined;
    const wrong =
      status === null || typeof status !== 'object'
        ? 'status'
        : status.tier !== plan.tiers[i]!.spec.tier
          ? 'tier'
          : !isFigure(status.limit)
            ? 'limit'
            : !isFigure(status.remaining)
              ? 'remaining'
              : !isFigure(status.resetIn)
                ? 'resetIn'
                : undefined;
    if (wrong !== undefined) {
      throw new MalformedStoreAnswerError(
        `the store's peek() answered ${shown(status)} for tier ${i}: its tier is the plan's (${plan.tiers[i]!.spec.tier}); its limit, remaining and resetIn are finite numbers, not negative`,
      );
    }
  }
  return answer as readonly TierStatus[];
}

const STORE_METHODS = ['consume', 'peek', 'release', 'delete', 'close'] as const;

/**
 * The methods the limiter calls that a store of the application's own lacks, as `name()`: a
 * subclass that left an abstract method out still runs in JavaScript, and would fail every
 * call at run time, each decided by the fail mode, so start-up names them instead.
 */
export function missingStoreMethods(store: RateLimitStore): string[] {
  return STORE_METHODS.filter(
    (method) => typeof (store as unknown as Record<string, unknown>)[method] !== 'function',
  ).map((method) => `${method}()`);
}
