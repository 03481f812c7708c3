import { describe, expect, it } from '@jest/globals';
import { SubscribeMessage } from '@nestjs/websockets';
import { resolveOptions } from '../../lib/config/resolve-options.js';
import { Throttle, type ThrottleOptions } from '../../lib/decorators/throttle.decorator.js';
import { WsRateLimitConfigError } from '../../lib/exceptions/ws-rate-limit-config.error.js';
import type { WsRateLimitModuleOptions } from '../../lib/interfaces/options.interface.js';
import { Telemetry } from '../../lib/metrics/telemetry.js';
import { MessageLimiter } from '../../lib/pipeline/message-limiter.js';
import { isPromise } from '../../lib/services/shared-store.js';
import { SharedStore } from '../../lib/services/shared-store.js';
import { createPlan } from '../../lib/plans/create-plan.js';
import { RouteResolver, type RouteLimits } from '../../lib/plans/route-resolver.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import { fakeConnection, fakeSocket } from './support/fake-transport.js';

const SECOND_AND_MINUTE = { short: { capacity: 10, refillRate: 10 }, long: { capacity: 100, refillRate: 100 / 60 } };

/** A gateway class with one `chat` handler under the given `@Throttle`. */
function gatewayWith(options: ThrottleOptions, event = 'chat') {
  class Gateway {
    handle(): void {}
  }
  const descriptor = Object.getOwnPropertyDescriptor(Gateway.prototype, 'handle')!;
  Throttle(options)(Gateway.prototype, 'handle', descriptor);
  SubscribeMessage(event)(Gateway.prototype, 'handle', descriptor);
  return { gateway: Gateway, handler: Gateway.prototype.handle };
}

const resolver = (options: WsRateLimitModuleOptions = {}, overrides?: RouteLimits['overrides']) =>
  new RouteResolver({ ...resolveOptions({ useEnv: false, ...options }), ...(overrides ? { overrides } : {}) });

const routeOf = (routes: RouteResolver, options: ThrottleOptions, event?: string) => {
  const { gateway, handler } = gatewayWith(options, event);
  return routes.resolve(handler, gateway)!;
};

describe('@Throttle limits (named limits on one handler)', () => {
  // Every bucket's suffix names its figures (`@<capacity>/<refillRate>:`, see `figuresSuffix`).
  it('gives each named limit its own tier and key suffix, distinct from every type', () => {
    const routes = resolver();
    const route = routeOf(routes, { limits: SECOND_AND_MINUTE, expensive: true });
    expect(route.specs.map((spec) => [spec.tier, spec.suffix, spec.limit])).toEqual([
      ['global', '@100/50:g', 100],
      ['type', '@10/10:n:short:chat', 10],
      ['type', '@100/1.6666666666666667:n:long:chat', 100],
      ['expensive', 'x', 5],
    ]);
    // A type whose name looks like a limit's suffix still has its own key.
    const tricky = routeOf(routes, { capacity: 3, refillRate: 1 }, 'short:chat');
    expect(tricky.specs[1]!.suffix).toBe('@3/1:t:short:chat');
    expect(routes.knownTypeSuffixes().sort()).toEqual([
      '@10/10:n:short:chat',
      '@100/1.6666666666666667:n:long:chat',
      '@3/1:t:short:chat',
    ]);
    // Requests from code spend the same tiers.
    expect(routes.specsFor('chat', false, 1).map((spec) => spec.suffix)).toEqual([
      '@100/50:g',
      '@10/10:n:short:chat',
      '@100/1.6666666666666667:n:long:chat',
    ]);
  });

  it('keeps the one-bucket @Throttle unchanged', () => {
    const route = routeOf(resolver(), { type: 'chat', capacity: 30, refillRate: 15, cost: 2 });
    expect(route.specs.map((spec) => [spec.suffix, spec.limit, spec.cost])).toEqual([
      ['@100/50:g', 100, 2],
      ['@30/15:t:chat', 30, 2],
    ]);
  });

  it.each<[string, ThrottleOptions, RegExp]>([
    ['with capacity', { capacity: 5, limits: SECOND_AND_MINUTE }, /either limits or capacity\/refillRate/],
    ['with refillRate', { refillRate: 5, limits: SECOND_AND_MINUTE }, /either limits or capacity\/refillRate/],
    ['not an object', { limits: [] as never }, /limits must be an object/],
    ['empty', { limits: {} }, /1 to 8 limits, got 0/],
    [
      'more than 8',
      { limits: Object.fromEntries([...Array(9).keys()].map((i) => [`l${i}`, { capacity: 1, refillRate: 1 }])) },
      /1 to 8 limits, got 9/,
    ],
    ['a name with a colon', { limits: { 'a:b': { capacity: 1, refillRate: 1 } } }, /limit name "a:b"/],
    ['a missing figure', { limits: { short: { capacity: 1 } as never } }, /limits\.short\.refillRate is required/],
    ['a zero capacity', { limits: { short: { capacity: 0, refillRate: 1 } } }, /limits\.short: capacity must be/],
    ['a capacity past the bound', { limits: { short: { capacity: 2e6, refillRate: 1 } } }, /capacity must be/],
    ['a refill rate below the bound', { limits: { short: { capacity: 1, refillRate: 1e-9 } } }, /refillRate must be/],
    [
      'a cost above a limit',
      { cost: 20, limits: SECOND_AND_MINUTE },
      /cost 20 exceeds the capacity 10 of limit "short"/,
    ],
    [
      'a cost too small for a limit',
      { cost: 0.000001, limits: { fast: { capacity: 10, refillRate: 10 } } },
      /limit "fast"/,
    ],
    ['a skipIf that is no function', { skipIf: true as never }, /skipIf must be a function/],
  ])('refuses at start-up: %s', (_name, options, message) => {
    expect(() => routeOf(resolver(), options)).toThrow(WsRateLimitConfigError);
    expect(() => routeOf(resolver(), options)).toThrow(message);
  });

  it("a handler's buckets win over its class's of the other kind", () => {
    class Gateway {
      named(): void {}
      single(): void {}
    }
    const named = Object.getOwnPropertyDescriptor(Gateway.prototype, 'named')!;
    const single = Object.getOwnPropertyDescriptor(Gateway.prototype, 'single')!;
    Throttle({ capacity: 7, refillRate: 7 })(Gateway);
    Throttle({ type: 'a', limits: SECOND_AND_MINUTE })(Gateway.prototype, 'named', named);
    Throttle({ type: 'b', refillRate: 2 })(Gateway.prototype, 'single', single);
    const routes = resolver();
    expect(routes.resolve(Gateway.prototype.named, Gateway)!.specs.map((spec) => spec.suffix)).toEqual([
      '@100/50:g',
      '@10/10:n:short:a',
      '@100/1.6666666666666667:n:long:a',
    ]);
    const other = new RouteResolver(resolveOptions({ useEnv: false }));
    Throttle({ limits: SECOND_AND_MINUTE })(Gateway);
    expect(other.resolve(Gateway.prototype.single, Gateway)!.specs.map((spec) => [spec.suffix, spec.limit])).toEqual([
      ['@100/50:g', 100],
      ['@20/2:t:b', 20],
    ]);
  });

  it('refuses two handlers giving one type different limits, and accepts the same ones', () => {
    const routes = resolver();
    routeOf(routes, { limits: SECOND_AND_MINUTE });
    routeOf(routes, { limits: { ...SECOND_AND_MINUTE } });
    expect(() => routeOf(routes, { limits: { short: { capacity: 10, refillRate: 10 } } })).toThrow(
      /one type has one set of buckets/,
    );
    expect(() => routeOf(routes, { capacity: 10, refillRate: 10 })).toThrow(/one type has one set of buckets/);
  });

  it("a plan's own figures for the type replace the named limits with its one bucket", () => {
    const routes = resolver({}, { chat: { capacity: 50, refillRate: 5 } });
    const route = routeOf(routes, { limits: SECOND_AND_MINUTE });
    expect(route.specs.map((spec) => [spec.suffix, spec.limit])).toEqual([
      ['@100/50:g', 100],
      ['@50/5:t:chat', 50],
    ]);
  });

  it('decides every limit in one step: the refusing one is reported, and a refusal spends none', () => {
    const routes = resolver();
    const specs = routeOf(routes, {
      limits: { short: { capacity: 2, refillRate: 1e-3 }, long: { capacity: 3, refillRate: 1e-3 } },
    }).specs;
    const store = new MemoryRateLimitStore();
    const plan = createPlan(store, 'key:ann', specs);
    expect([0, 1].map(() => store.consume(plan).allowed)).toEqual([true, true]);
    const refused = store.consume(plan);
    expect(refused).toMatchObject({ allowed: false, tier: 'type', index: 1, limit: 2 });
    // short refused: long (3) was not spent by the refusal.
    expect(store.peek(plan).map((status) => status.remaining)).toEqual([98, 0, 1]);
    // A plan with only long: one left.
    const longOnly = createPlan(store, 'key:ann', [specs[2]!]);
    expect(store.consume(longOnly).allowed).toBe(true);
    expect(store.consume(longOnly)).toMatchObject({ allowed: false, index: 0, limit: 3 });
  });
});

describe('an async tracker', () => {
  const limiter = (options: WsRateLimitModuleOptions) => {
    const resolved = resolveOptions({ useEnv: false, ...options });
    const store = new MemoryRateLimitStore();
    const noop = (): void => undefined;
    const shared = new SharedStore(store, resolved.failMode, resolved.maxKeys, {
      answered: noop,
      failed: noop,
      down: noop,
      up: noop,
    });
    return new MessageLimiter(resolved, store, shared, new Telemetry(false));
  };

  it('is awaited only when the tracker function returns a promise', async () => {
    const state = fakeConnection(fakeSocket());
    const sync = limiter({ tracker: () => 'ann' });
    const key = sync.trackerKeyOf({}, state);
    expect(isPromise(key)).toBe(false);
    expect(key).toBe('key:ann');
    const async = limiter({ tracker: async () => 'ann' });
    const pending = async.trackerKeyOf({}, state);
    expect(isPromise(pending)).toBe(true);
    expect(await pending).toBe('key:ann');
    // undefined falls back to the connection, as for a synchronous tracker.
    expect(await limiter({ tracker: async () => undefined }).trackerKeyOf({}, state)).toBe(state.connectionTracker);
  });

  it('resets the keys of named limits with the rest', async () => {
    const subject = limiter({ tracker: () => 'ann' });
    const { gateway, handler } = gatewayWith({ limits: { short: { capacity: 1, refillRate: 1e-3 } } });
    const state = fakeConnection(fakeSocket());
    const route = subject.routeOf(handler, gateway)!;
    const plan = subject.planFor(state, route, 'key:ann');
    expect((await subject.decide(plan, route)).allowed).toBe(true);
    expect((await subject.decide(plan, route)).allowed).toBe(false);
    await subject.reset({ kind: 'name', id: 'ann', key: 'key:ann' });
    expect((await subject.decide(plan, route)).allowed).toBe(true);
  });
});
