import { EXCEPTION_FILTERS_METADATA, FILTER_CATCH_EXCEPTIONS } from '@nestjs/common/constants.js';
import { WsRateLimitException } from '../exceptions/ws-rate-limit.exception.js';

/** Marks `WsRateLimitFilter` (and its subclasses, as a static): no import of the filter here. */
export const RATE_LIMIT_FILTER = Symbol.for('nestjs-ws-rate-limit:filter');

/** The class of a filter entry (a class or an instance, as `@UseFilters` holds it). */
function filterClass(entry: unknown): unknown {
  return typeof entry === 'function' ? entry : (entry as { constructor?: unknown } | null)?.constructor;
}

/** Whether a filter entry is `WsRateLimitFilter` or a subclass. */
export function isRateLimitFilter(entry: unknown): boolean {
  const type = filterClass(entry);
  return typeof type === 'function' && (type as { [RATE_LIMIT_FILTER]?: unknown })[RATE_LIMIT_FILTER] === true;
}

/**
 * Whether a filter entry hands refusals on to `WsRateLimitFilter`: one injected with it (the
 * README's catch-all that calls `rateLimit.catch(exception, host)` for a refusal), as its
 * constructor's parameter types say (`design:paramtypes`, which NestJS's injection needs).
 */
function handsOn(entry: unknown): boolean {
  const type = filterClass(entry);
  if (typeof type !== 'function') return false;
  const params = (Reflect.getMetadata('design:paramtypes', type) as unknown[] | undefined) ?? [];
  return params.some(isRateLimitFilter);
}

/** Whether a filter entry catches `WsRateLimitException` (`@Catch()` with no types, or none, catches all). */
function catchesRefusals(entry: unknown): boolean {
  const type = filterClass(entry);
  if (typeof type !== 'function') return false;
  const types = (Reflect.getMetadata(FILTER_CATCH_EXCEPTIONS, type) as unknown[] | undefined) ?? [];
  return (
    types.length === 0 ||
    types.some(
      (caught) =>
        typeof caught === 'function' &&
        (caught === WsRateLimitException || WsRateLimitException.prototype instanceof (caught as new () => unknown)),
    )
  );
}

const answeredByUs = new WeakMap<object, boolean>();

/**
 * Whether the refusals of a handler reach `WsRateLimitFilter` (which counts them as
 * violations): NestJS tries a handler's own filters, the last first, before its gateway's
 * (where the module has ours tried first), and the first that catches the exception takes
 * it. A handler's catch-all before ours takes them, and nothing counts them (README, "Your
 * own filters"), unless it hands them on to ours (see `handsOn`).
 */
export function refusalsReachOurFilter(handler: object): boolean {
  let known = answeredByUs.get(handler);
  if (known === undefined) {
    known = true;
    const filters = (Reflect.getMetadata(EXCEPTION_FILTERS_METADATA, handler) as unknown[] | undefined) ?? [];
    for (let i = filters.length - 1; i >= 0; i--) {
      if (isRateLimitFilter(filters[i])) break;
      if (catchesRefusals(filters[i])) {
        known = handsOn(filters[i]);
        break;
      }
    }
    answeredByUs.set(handler, known);
  }
  return known;
}
