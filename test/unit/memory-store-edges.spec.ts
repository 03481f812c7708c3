import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { bucketAfter, bucketTokens, bucketWait } from '../../lib/algorithms/token-bucket.js';
import {
  createSlidingLog,
  logAllows,
  logCount,
  logFreshAt,
  logRecord,
  logWait,
  type SlidingLogState,
} from '../../lib/algorithms/sliding-log.js';
import {
  counterCount,
  counterFreshAt,
  counterRecord,
  counterWait,
  createSlidingCounter,
  type SlidingCounterState,
} from '../../lib/algorithms/sliding-counter.js';
import type { RateLimitDecision, RateLimitPlan, TierSpec, TierStatus } from '../../lib/interfaces/plan.interface.js';
import { SubscribeMessage } from '@nestjs/websockets';
import { resolveOptions } from '../../lib/config/resolve-options.js';
import { Throttle } from '../../lib/decorators/throttle.decorator.js';
import { Telemetry } from '../../lib/metrics/telemetry.js';
import { MessageLimiter } from '../../lib/pipeline/message-limiter.js';
import type { Tracker } from '../../lib/pipeline/tracker.js';
import { SharedStore } from '../../lib/services/shared-store.js';
import { createPlan } from '../../lib/plans/create-plan.js';
import { fakeConnection, fakeSocket } from './support/fake-transport.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import { RateLimitStore } from '../../lib/storage/rate-limit-store.js';

// The memory store at its edges, from an adversarial review: a randomized differential test
// against one Map per (tracker, suffix) decided by the pure algorithms, with a small
// maxKeys; one tier decided under two plans' figures (named plans share the expensive tier);
// trackers made idle by a release; a sliding log's last entry at the float edge of its
// window; and a reset while the fail-open fallback decides. Each test but the differential
// one failed before the fix it came with.

// ---------------------------------------------------------------------------------------
// A simple reference: one Map entry per (tracker, suffix), decided with the pure algorithm
// functions, never evicting (the differential test forgets a tracker in the reference
// exactly when the store dropped it, and checks that it was allowed to drop it).
// ---------------------------------------------------------------------------------------

type RefState =
  | { kind: 0; fullAt: number }
  | { kind: 1; log: SlidingLogState }
  | { kind: 2; counter: SlidingCounterState }
  | { kind: 3; leases: Map<string, number> };

function freshState(spec: TierSpec): RefState {
  switch (spec.kind) {
    case 0:
      return { kind: 0, fullAt: -Infinity };
    case 1:
      return { kind: 1, log: createSlidingLog(spec.limit) };
    case 2:
      return { kind: 2, counter: createSlidingCounter() };
    case 3:
      return { kind: 3, leases: new Map() };
  }
}

function held(leases: Map<string, number>): number {
  let sum = 0;
  for (const v of leases.values()) sum += v;
  return sum;
}

class Reference {
  readonly states = new Map<string, Map<string, RefState>>();

  private state(tracker: string, spec: TierSpec): RefState | undefined {
    return this.states.get(tracker)?.get(spec.suffix);
  }

  wait(state: RefState | undefined, spec: TierSpec, now: number): number {
    if (state === undefined) return spec.cost > spec.limit ? Infinity : 0;
    switch (state.kind) {
      case 0: {
        const s = spec as Extract<TierSpec, { kind: 0 }>;
        return bucketWait(state.fullAt, now, s.slack);
      }
      case 1:
        return logWait(state.log, now, (spec as { windowMs: number }).windowMs, spec.cost);
      case 2:
        return counterWait(state.counter, now, (spec as { windowMs: number }).windowMs, spec.limit, spec.cost);
      case 3:
        return held(state.leases) + spec.cost > spec.limit ? 1000 : 0;
    }
  }

  remaining(state: RefState | undefined, spec: TierSpec, now: number): number {
    // Whole units: a fractional limit leaves its whole part.
    if (state === undefined) return Math.floor(spec.limit);
    switch (state.kind) {
      case 0: {
        const s = spec as Extract<TierSpec, { kind: 0 }>;
        return Math.floor(bucketTokens(state.fullAt, now, s.limit, s.intervalMs));
      }
      case 1:
        return Math.max(0, Math.floor(spec.limit) - logCount(state.log, now, (spec as { windowMs: number }).windowMs));
      case 2:
        return Math.max(
          0,
          Math.floor(spec.limit - counterCount(state.counter, now, (spec as { windowMs: number }).windowMs)),
        );
      case 3:
        return Math.max(0, Math.floor(spec.limit - held(state.leases)));
    }
  }

  freshAt(state: RefState | undefined, spec: TierSpec): number {
    if (state === undefined) return -Infinity;
    switch (state.kind) {
      case 0:
        return state.fullAt;
      case 1:
        return logFreshAt(state.log, (spec as { windowMs: number }).windowMs);
      case 2:
        return counterFreshAt(state.counter, (spec as { windowMs: number }).windowMs);
      case 3:
        return Infinity;
    }
  }

  consume(tracker: string, specs: readonly TierSpec[], lease: string, now: number): RateLimitDecision {
    const states = specs.map((spec) => this.state(tracker, spec));
    const waits = specs.map((spec, i) => this.wait(states[i], spec, now));
    const worst = Math.max(...waits);
    if (worst > 0) {
      const index = waits.indexOf(worst);
      const spec = specs[index]!;
      return {
        allowed: false,
        tier: spec.tier,
        index,
        retryAfter: worst,
        limit: spec.limit,
        remaining: this.remaining(states[index], spec, now),
      };
    }
    let near: string | undefined;
    let byTracker = this.states.get(tracker);
    if (byTracker === undefined) this.states.set(tracker, (byTracker = new Map()));
    specs.forEach((spec, i) => {
      let state = states[i];
      if (state === undefined) byTracker!.set(spec.suffix, (state = freshState(spec)));
      switch (state.kind) {
        case 0: {
          const s = spec as Extract<TierSpec, { kind: 0 }>;
          state.fullAt = bucketAfter(state.fullAt, now, s.span);
          if ((state.fullAt - now) * 5 > s.nearBound && near === undefined) near = spec.tier;
          break;
        }
        case 1:
          logRecord(state.log, now, spec.cost, (spec as { windowMs: number }).windowMs);
          break;
        case 2:
          counterRecord(state.counter, now, (spec as { windowMs: number }).windowMs, spec.cost);
          break;
        case 3:
          state.leases.set(lease, (state.leases.get(lease) ?? 0) + spec.cost);
          break;
      }
    });
    return near === undefined ? { allowed: true } : { allowed: true, nearLimit: near as never };
  }

  peek(tracker: string, specs: readonly TierSpec[], now: number): TierStatus[] {
    return specs.map((spec) => {
      const state = this.state(tracker, spec);
      const fresh = this.freshAt(state, spec);
      return {
        tier: spec.tier,
        limit: spec.limit,
        remaining: this.remaining(state, spec, now),
        resetIn: fresh === Infinity || fresh <= now ? 0 : Math.ceil(fresh - now),
      };
    });
  }

  release(tracker: string, specs: readonly TierSpec[], lease: string): void {
    for (const spec of specs) {
      if (spec.kind !== 3) continue;
      const state = this.state(tracker, spec);
      if (state === undefined || state.kind !== 3) continue;
      const left = (state.leases.get(lease) ?? 0) - spec.cost;
      if (left > 0) state.leases.set(lease, left);
      else state.leases.delete(lease);
      if (state.leases.size === 0) this.deleteTier(tracker, spec.suffix);
    }
  }

  deleteTier(tracker: string, suffix: string): void {
    const byTracker = this.states.get(tracker);
    if (byTracker === undefined) return;
    byTracker.delete(suffix);
    if (byTracker.size === 0) this.states.delete(tracker);
  }

  deleteTracker(tracker: string): void {
    this.states.delete(tracker);
  }

  /** Latest freshAt of a tracker's states (Infinity: pinned by a lease). */
  trackerFreshAt(tracker: string, specsBySuffix: Map<string, TierSpec>): number {
    let fresh = -Infinity;
    for (const [suffix, state] of this.states.get(tracker) ?? []) {
      fresh = Math.max(fresh, this.freshAt(state, specsBySuffix.get(suffix)!));
    }
    return fresh;
  }

  get size(): number {
    let n = 0;
    for (const byTracker of this.states.values()) n += byTracker.size;
    return n;
  }
}

interface TableView {
  head(tracker: string): number;
  readonly trackerCount: number;
}
function tableOf(store: MemoryRateLimitStore): TableView {
  return (store as unknown as { table: TableView }).table;
}

// ---------------------------------------------------------------------------------------
// Randomized differential test with a small maxKeys.
// ---------------------------------------------------------------------------------------

const SUFFIXES = ['g', 't:a', 't:b', 'x', 'y', 'c'] as const;
const TRACKERS = ['A', 'B', 'C', 'D', 'E', 'ip:1|x'] as const;

const specArb: fc.Arbitrary<(suffix: string) => TierSpec> = fc.oneof(
  fc
    .record({
      capacity: fc.oneof(fc.integer({ min: 1, max: 6 }), fc.constantFrom(1.5, 2.5, 0.75)),
      rate: fc.constantFrom(0.5, 1, 4, 250, 3, 0.3),
      cost: fc.constantFrom(1, 1, 2, 0.5, 3),
    })
    .map(
      ({ capacity, rate, cost }) =>
        (suffix: string) =>
          tokenBucketSpec('type', suffix, capacity, rate, Math.min(cost, capacity)),
    ),
  fc
    .record({
      limit: fc.oneof(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 14, max: 18 })),
      windowMs: fc.oneof(fc.integer({ min: 1, max: 20 }), fc.integer({ min: 100, max: 2000 }), fc.constant(33.3)),
      cost: fc.oneof(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 1, max: 18 })),
    })
    .map(
      ({ limit, windowMs, cost }) =>
        (suffix: string) =>
          windowSpec('expensive', suffix, 'sliding-log', limit, windowMs, Math.min(cost, limit)),
    ),
  fc
    .record({
      limit: fc.oneof(fc.integer({ min: 1, max: 6 }), fc.constant(2.5)),
      windowMs: fc.integer({ min: 1, max: 1000 }),
      cost: fc.constantFrom(1, 2, 0.5),
    })
    .map(
      ({ limit, windowMs, cost }) =>
        (suffix: string) =>
          windowSpec('expensive', suffix, 'sliding-counter', limit, windowMs, Math.min(cost, limit)),
    ),
  fc.integer({ min: 1, max: 2 }).map((limit) => (suffix: string) => concurrencySpec('concurrency', suffix, limit)),
);

type PlanKind = 'created' | 'handMade' | 'frozenCreated' | 'frozenHandMade';

type Command =
  | { kind: 'advance'; ms: number }
  | { kind: 'consume'; pick: number }
  | { kind: 'peek'; pick: number }
  | { kind: 'release'; pick: number }
  | { kind: 'rebuild'; pick: number; as: PlanKind }
  | { kind: 'delete'; pick: number; mask: number }
  | { kind: 'deleteTracker'; pick: number }
  | { kind: 'close' };

const commandArb: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc
      .oneof(fc.constant(0), fc.double({ min: 0, max: 50, noNaN: true }), fc.integer({ min: 1, max: 3000 }))
      .map((ms): Command => ({ kind: 'advance', ms })),
  },
  { weight: 10, arbitrary: fc.nat().map((pick): Command => ({ kind: 'consume', pick })) },
  { weight: 1, arbitrary: fc.nat().map((pick): Command => ({ kind: 'peek', pick })) },
  { weight: 1, arbitrary: fc.nat().map((pick): Command => ({ kind: 'release', pick })) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.nat(), fc.constantFrom<PlanKind>('created', 'handMade', 'frozenCreated', 'frozenHandMade'))
      .map(([pick, as]): Command => ({ kind: 'rebuild', pick, as })),
  },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.nat(), fc.nat()).map(([pick, mask]): Command => ({ kind: 'delete', pick, mask })),
  },
  { weight: 1, arbitrary: fc.nat().map((pick): Command => ({ kind: 'deleteTracker', pick })) },
  { weight: 1, arbitrary: fc.constant<Command>({ kind: 'close' }) },
);

const setupArb = fc.record({
  makers: fc.array(specArb, { minLength: SUFFIXES.length, maxLength: SUFFIXES.length }),
  // Plan shapes: 1-4 distinct suffixes in any order (orders differ between shapes).
  shapes: fc.array(fc.uniqueArray(fc.integer({ min: 0, max: SUFFIXES.length - 1 }), { minLength: 1, maxLength: 4 }), {
    minLength: 1,
    maxLength: 4,
  }),
  trackers: fc.integer({ min: 1, max: TRACKERS.length }),
  maxKeys: fc.integer({ min: 1, max: 8 }),
  kinds: fc.array(fc.constantFrom<PlanKind>('created', 'handMade', 'frozenCreated', 'frozenHandMade'), {
    minLength: 1,
    maxLength: 4,
  }),
  /** Per shape: its tiers' cost (the same suffix spent at other costs by other plans), or none. */
  costs: fc.array(fc.option(fc.constantFrom(1, 2, 3, 0.5), { nil: undefined }), { minLength: 4, maxLength: 4 }),
  commands: fc.array(commandArb, { maxLength: 200 }),
});

function withCost(spec: TierSpec, cost: number | undefined): TierSpec {
  if (cost === undefined) return spec;
  const c = Math.min(cost, spec.limit);
  switch (spec.kind) {
    case 0:
      return tokenBucketSpec(spec.tier, spec.suffix, spec.limit, spec.refillRate, c);
    case 1:
      return windowSpec(spec.tier, spec.suffix, 'sliding-log', spec.limit, spec.windowMs, Math.max(1, Math.floor(c)));
    case 2:
      return windowSpec(spec.tier, spec.suffix, 'sliding-counter', spec.limit, spec.windowMs, c);
    case 3:
      return spec;
  }
}

describe('memory store edges: memory store against a per-key reference of the pure algorithms, small maxKeys', () => {
  it('decisions, peeks, size; drops only whole other trackers, never a leased one, never the decider', () => {
    fc.assert(
      fc.property(setupArb, ({ makers, shapes, trackers, maxKeys, kinds, costs, commands }) => {
        let now = 1_000;
        const store = new MemoryRateLimitStore({ clock: () => now, maxKeys });
        const ref = new Reference();
        const specs = SUFFIXES.map((suffix, i) => makers[i]!(suffix));
        const bySuffix = new Map(specs.map((spec) => [spec.suffix, spec]));
        const pairs: { tracker: string; specs: TierSpec[]; lease: string; kind: PlanKind }[] = [];
        for (const tracker of TRACKERS.slice(0, trackers)) {
          shapes.forEach((shape, i) =>
            pairs.push({
              tracker,
              specs: shape.map((pick) => withCost(specs[pick]!, costs[i])),
              lease: `lease-${i % 2}`,
              kind: kinds[(pairs.length + i) % kinds.length]!,
            }),
          );
        }
        const build = (pair: (typeof pairs)[number], kind: PlanKind): RateLimitPlan => {
          switch (kind) {
            case 'created':
              return createPlan(store, pair.tracker, pair.specs, pair.lease);
            case 'frozenCreated':
              return Object.freeze(createPlan(store, pair.tracker, pair.specs, pair.lease));
            case 'handMade':
              return {
                tracker: pair.tracker,
                lease: pair.lease,
                tiers: pair.specs.map((spec) => ({ key: store.key(pair.tracker, spec.suffix), spec })),
              };
            case 'frozenHandMade':
              return Object.freeze({
                tracker: pair.tracker,
                lease: pair.lease,
                tiers: pair.specs.map((spec) => ({ key: store.key(pair.tracker, spec.suffix), spec })),
              });
          }
        };
        const plans = pairs.map((pair) => build(pair, pair.kind));
        let decider = '';
        for (const [step, command] of commands.entries()) {
          const at = `step ${step} (${command.kind}) at ${now}`;
          const sizeBefore = store.size;
          if (command.kind === 'advance') {
            now += command.ms;
            continue;
          }
          if (command.kind === 'close') {
            void store.close();
            ref.states.clear();
            continue;
          }
          const index = command.pick % plans.length;
          const pair = pairs[index]!;
          const plan = plans[index]!;
          switch (command.kind) {
            case 'consume': {
              // Which trackers the store may drop: every other one not pinned by a lease.
              const before = new Map<string, number>();
              for (const tracker of ref.states.keys()) before.set(tracker, ref.trackerFreshAt(tracker, bySuffix));
              const ours = store.consume(plan);
              if (ours.allowed) decider = pair.tracker;
              const theirs = ref.consume(pair.tracker, pair.specs, pair.lease, now);
              expect([at, { ...ours }]).toEqual([at, theirs]);
              // Sync: trackers the store no longer holds.
              for (const tracker of [...ref.states.keys()]) {
                if (tableOf(store).head(tracker) >= 0) continue;
                expect([at, 'dropped the deciding tracker', tracker === pair.tracker && ours.allowed]).toEqual([
                  at,
                  'dropped the deciding tracker',
                  false,
                ]);
                expect([at, 'dropped a leased tracker', tracker, before.get(tracker)]).not.toEqual([
                  at,
                  'dropped a leased tracker',
                  tracker,
                  Infinity,
                ]);
                ref.deleteTracker(tracker);
              }
              break;
            }
            case 'peek':
              expect([at, store.peek(plan)]).toEqual([at, ref.peek(pair.tracker, pair.specs, now)]);
              break;
            case 'release':
              store.release(plan);
              ref.release(pair.tracker, pair.specs, pair.lease);
              break;
            case 'rebuild':
              plans[index] = build(pair, command.as);
              break;
            case 'delete': {
              const chosen = pair.specs.filter((_, i) => (command.mask >> i) & 1);
              store.delete(chosen.map((spec) => store.key(pair.tracker, spec.suffix)));
              for (const spec of chosen) ref.deleteTier(pair.tracker, spec.suffix);
              break;
            }
            case 'deleteTracker':
              store.deleteTracker(pair.tracker);
              ref.deleteTracker(pair.tracker);
              break;
          }
          expect([at, store.size, store.trackers]).toEqual([at, ref.size, ref.states.size]);
          if (command.kind === 'consume') {
            // Bounded, unless leases pin more than maxKeys (plus the decider's own states).
            let pinned = 0;
            for (const [tracker, states] of ref.states) {
              if (ref.trackerFreshAt(tracker, bySuffix) === Infinity || tracker === decider) pinned += states.size;
            }
            expect([at, store.size <= Math.max(maxKeys, pinned, sizeBefore)]).toEqual([at, true]);
          }
        }
      }),
      { seed: Number(process.env.RSEED ?? 0x5eed), numRuns: Number(process.env.RUNS ?? 300) },
    );
  });
});

// ---------------------------------------------------------------------------------------
// One tier suffix decided with other figures: named plans (`plans` option) override the
// expensive window (`max`, `windowMs`, `algorithm`) but every plan's expensive tier has the
// suffix 'x' (route-resolver.ts), so one tracker (an IP shared by a free and a pro client,
// or a user whose plan changes) decides 'x' under both plans' specs.
// ---------------------------------------------------------------------------------------

describe('memory store edges: one suffix under two plans (named plans share the expensive suffix "x")', () => {
  it('a log packed under a small limit (free plan, 5) then decided under a limit above 16 (pro plan, 20) does not throw and admits up to 20', () => {
    let now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now });
    const free = createPlan(store, 'ip:198.51.100.7', [windowSpec('expensive', 'x', 'sliding-log', 5, 60_000)]);
    const pro = createPlan(store, 'ip:198.51.100.7', [windowSpec('expensive', 'x', 'sliding-log', 20, 60_000)]);
    expect(store.consume(free).allowed).toBe(true);
    const outcomes: boolean[] = [];
    for (let i = 0; i < 25; i++) {
      now += 1;
      outcomes.push(store.consume(pro).allowed);
    }
    // 1 event under free + 19 under pro = 20 in the window; the rest refused.
    expect(outcomes.filter(Boolean)).toHaveLength(19);
  });

  it('the same history decides the same whatever limit created the state: 10 pro events, then the free plan (limit 5) refuses', () => {
    // Packed (pro limit 16) and object (pro limit 20) logs must agree on the free plan's answer.
    const freeAnswer = (proLimit: number): boolean => {
      let now = 0;
      const store = new MemoryRateLimitStore({ clock: () => now });
      const pro = createPlan(store, 'user:42', [windowSpec('expensive', 'x', 'sliding-log', proLimit, 60_000)]);
      const free = createPlan(store, 'user:42', [windowSpec('expensive', 'x', 'sliding-log', 5, 60_000)]);
      for (let i = 0; i < 10; i++) {
        now += 1;
        expect(store.consume(pro).allowed).toBe(true);
      }
      now += 1;
      return store.consume(free).allowed;
    };
    // 10 events live in the window: a window of 5 must refuse (as the Redis script does: it
    // compares with the limit it is given). The packed log (limit 16) does.
    expect(freeAnswer(16)).toBe(false);
    // The object log keeps the limit it was created with (20) and admits.
    expect(freeAnswer(20)).toBe(false);
  });

  it('a packed log filled under a limit of 16, then decided under 5, keeps deciding as the pure log does', () => {
    // The smaller limit admits while the log holds more entries than it: recording must stay
    // within the ring (it used to count past it, writing beyond the log's place in the slab).
    const windowMs = 100;
    let now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now });
    const pro = createPlan(store, 'user:9', [windowSpec('expensive', 'x', 'sliding-log', 16, windowMs)]);
    const free = createPlan(store, 'user:9', [windowSpec('expensive', 'x', 'sliding-log', 5, windowMs)]);
    const reference = createSlidingLog(16);
    for (let i = 0; i < 16; i++) {
      now += 1;
      expect(store.consume(pro).allowed).toBe(true);
      logRecord(reference, now, 1, windowMs);
    }
    // Other trackers' logs: the first takes the place this log left when it grew, the
    // second the place right after its ring in the slab.
    const neighbours = ['user:10', 'user:11'].map((tracker) =>
      createPlan(store, tracker, [windowSpec('expensive', 'x', 'sliding-log', 16, 1e9)]),
    );
    for (const neighbour of neighbours) for (let i = 0; i < 3; i++) expect(store.consume(neighbour).allowed).toBe(true);
    const outcomes: boolean[] = [];
    const expected: boolean[] = [];
    for (let i = 0; i < 2000; i++) {
      now += 1;
      outcomes.push(store.consume(free).allowed);
      const allowed = logAllows(reference, now, windowMs, 1, 5);
      if (allowed) logRecord(reference, now, 1, windowMs, 5);
      expected.push(allowed);
    }
    expect(outcomes).toEqual(expected);
    expect(outcomes.filter(Boolean).length).toBeGreaterThan(50);
    for (const neighbour of neighbours) expect(store.peek(neighbour)[0]!.remaining).toBe(13);
  });

  it('a plan switching the expensive algorithm (log <-> counter) on one tracker does not throw', () => {
    let now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now });
    const log = createPlan(store, 'user:7', [windowSpec('expensive', 'x', 'sliding-log', 5, 1_000)]);
    const counter = createPlan(store, 'user:7', [windowSpec('expensive', 'x', 'sliding-counter', 5, 1_000)]);
    expect(store.consume(log).allowed).toBe(true);
    now += 1;
    expect(() => store.consume(counter)).not.toThrow();
    const other = new MemoryRateLimitStore({ clock: () => now });
    const counter2 = createPlan(other, 'user:8', [windowSpec('expensive', 'x', 'sliding-counter', 5, 1_000)]);
    const log2 = createPlan(other, 'user:8', [windowSpec('expensive', 'x', 'sliding-log', 5, 1_000)]);
    for (let i = 0; i < 5; i++) other.consume(counter2);
    expect(() => other.consume(log2)).not.toThrow();
    expect(() => other.peek(log2)).not.toThrow();
  });
});

describe('memory store edges: named plans through the MessageLimiter (tracker ip, free and pro clients behind one address)', () => {
  it('a pro client after a free client of the same IP: the memory store does not throw, the pro window admits 20 in all', async () => {
    const noop = (): void => undefined;
    const resolved = resolveOptions({
      useEnv: false,
      tracker: 'ip',
      global: { capacity: 1000, refillRate: 1000 },
      type: { capacity: 1000, refillRate: 1000 },
      plans: { free: { expensive: { max: 5, windowMs: 60_000 } }, pro: { expensive: { max: 20, windowMs: 60_000 } } },
      planResolver: (client) => ((client as { pro?: boolean }).pro === true ? 'pro' : 'free'),
    });
    const store = new MemoryRateLimitStore();
    const failures: unknown[] = [];
    const shared = new SharedStore(store, resolved.failMode, resolved.maxKeys, {
      answered: noop,
      failed: (error) => failures.push(error),
      down: noop,
      up: noop,
    });
    const limiter = new MessageLimiter(resolved, store, shared, new Telemetry(false));
    class Gateway {
      search(): void {}
    }
    const descriptor = Object.getOwnPropertyDescriptor(Gateway.prototype, 'search')!;
    Throttle({ expensive: true })(Gateway.prototype, 'search', descriptor);
    SubscribeMessage('search')(Gateway.prototype, 'search', descriptor);
    const send = async (client: object, state: ReturnType<typeof fakeConnection>) => {
      const route = limiter.routeOf(Gateway.prototype.search, Gateway, state, client)!;
      const plan = limiter.planFor(state, route, limiter.trackerOf(client, state) as Tracker);
      return (await limiter.decide(plan, route)).allowed;
    };
    const freeClient = { pro: false };
    const proClient = { pro: true };
    const freeState = fakeConnection(fakeSocket(), '198.51.100.7');
    const proState = fakeConnection(fakeSocket(), '198.51.100.7');
    expect(await send(freeClient, freeState)).toBe(true);
    const outcomes: boolean[] = [];
    for (let i = 0; i < 25; i++) outcomes.push(await send(proClient, proState));
    // The embedded store never "fails" (today it throws a TypeError from LogSlab.alloc, the
    // shared store declares it down and a fresh fallback admits everything after).
    expect(failures.map(String)).toEqual([]);
    // The pro window admits its 20: a plan's window of figures other than the module's has its
    // own key (`@20/60000:x`), so the free client's event is in the free plan's window (it
    // counted in the pro one, 19, when windows of other figures shared the key `x`).
    expect(outcomes.filter(Boolean)).toHaveLength(20);
  });
});

// ---------------------------------------------------------------------------------------
// Eviction order: idle trackers before live ones.
// ---------------------------------------------------------------------------------------

describe('memory store edges: eviction prefers idle trackers', () => {
  it('a tracker made idle by release (its lease given back) is dropped before live trackers, even long after a sweep', () => {
    let now = 0;
    const maxKeys = 64; // a sweep may run at every insertion
    const store = new MemoryRateLimitStore({ maxKeys, clock: () => now });
    const seat = concurrencySpec('concurrency', 'c', 1);
    const rate = tokenBucketSpec('connection', 'cr', 5, 1000); // fresh again 5 ms after use
    const slow = tokenBucketSpec('type', 's', 1, 0.001);
    const live = Array.from({ length: 24 }, (_, i) => createPlan(store, `live-${i}`, [slow]));
    const leased = Array.from({ length: 20 }, (_, i) => createPlan(store, `ip:${i}`, [rate, seat], 'instance-a'));
    for (const plan of live) expect(store.consume(plan).allowed).toBe(true);
    for (const plan of leased) expect(store.consume(plan).allowed).toBe(true);
    expect(store.size).toBe(64);
    // At 6 ms nothing is idle (leases pin their trackers): one live tracker goes, counted.
    now = 6;
    expect(store.consume(createPlan(store, 'new-0', [slow])).allowed).toBe(true);
    expect(store.evictions).toBe(1);
    // Every connection closes: the leases are given back, each ip tracker keeps only its
    // connection-rate bucket, fresh again since 5 ms: idle.
    now = 7;
    for (const plan of leased) store.release(plan);
    expect(store.size).toBe(44);
    for (let i = 1; i <= 20; i++) store.consume(createPlan(store, `fill-${i}`, [slow]));
    // Full again; 20 idle trackers are held. Ten new trackers must take their room.
    now = 1_000;
    const before = store.evictions;
    for (let i = 1; i <= 10; i++) expect(store.consume(createPlan(store, `new-${i}`, [slow])).allowed).toBe(true);
    expect(store.evictions - before).toBe(0);
  });

  it('a sliding log whose last entry still counts at now (float rounding of last + W) is not idle: dropping it changes the decision', () => {
    // With W = 60,000 and a fractional timestamp `a`, `(a + W) - W < a`: at now = a + W the
    // log still counts `a` (an entry counts while a > now - W), yet freshAt = a + W <= now.
    const a = 234235.06599965194;
    const windowMs = 60_000;
    const at = a + windowMs;
    expect(a > at - windowMs).toBe(true); // the rounding this test is about
    const log = createSlidingLog(1);
    logRecord(log, a, 1, windowMs);
    expect(logAllows(log, at, windowMs, 1)).toBe(false); // the pure algorithm refuses at `at`

    let now = a;
    const store = new MemoryRateLimitStore({ maxKeys: 2, clock: () => now });
    const expensive = createPlan(store, 'A', [windowSpec('expensive', 'x', 'sliding-log', 1, windowMs)]);
    expect(store.consume(expensive).allowed).toBe(true);
    // B is idle by `at` (its bucket is full again a microsecond later): room for C is B's.
    expect(store.consume(createPlan(store, 'B', [tokenBucketSpec('global', 'g', 1, 1e6)])).allowed).toBe(true);
    now = at;
    // Without any eviction the store refuses, as the algorithm does.
    expect(store.consume(expensive).allowed).toBe(false);
    // A newcomer needs room at this very instant: the idle B goes. A, whose entry still
    // counts, is not idle (it was taken for idle and dropped with B, and then allowed a
    // second event inside one window of 1).
    expect(store.consume(createPlan(store, 'C', [tokenBucketSpec('global', 'g', 1, 0.001)])).allowed).toBe(true);
    expect(store.evictions).toBe(0);
    expect(store.consume(expensive).allowed).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------
// delete with another store's keys: the fail-open fallback (a MemoryRateLimitStore) is
// given the shared store's keys (Redis: `<prefix>{<hash>}:<suffix>`).
// ---------------------------------------------------------------------------------------

describe('memory store edges: reset reaches the fail-open fallback memory store', () => {
  it('SharedStore.delete with a Redis-style store forgets the keys in the fallback too', async () => {
    const noop = (): void => undefined;
    /** A store that is down, naming its keys as the Redis store does. */
    class DownStore extends RateLimitStore {
      override key(tracker: string, suffix: string): string {
        return `wsrl:{${Buffer.from(tracker).toString('base64url')}}:${suffix}`;
      }
      consume(): never {
        throw new Error('down');
      }
      peek(): never {
        throw new Error('down');
      }
      release(): void {}
      delete(): void {}
      async close(): Promise<void> {}
    }
    const down = new DownStore();
    const shared = new SharedStore(down, 'open', 1000, { answered: noop, failed: noop, down: noop, up: noop });
    const spec = tokenBucketSpec('global', 'g', 1, 0.001);
    const plan = createPlan(down, 'key:user-1', [spec]);
    expect((shared.consume(plan) as RateLimitDecision).allowed).toBe(true); // the fallback decides
    expect((shared.consume(plan) as RateLimitDecision).allowed).toBe(false);
    // The operator resets the user (WsRateLimitService.reset -> MessageLimiter.reset).
    await shared.deleteTiers('key:user-1', ['g']);
    expect((shared.consume(plan) as RateLimitDecision).allowed).toBe(true);
  });
});
