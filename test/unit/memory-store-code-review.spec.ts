// Code-reading review of the embedded memory store (MemoryRateLimitStore, TrackerTable,
// LogSlab) and the pure algorithms it runs (token bucket, sliding log, sliding counter), at
// commit d147fb6. Probed: a fast-check differential run (fixed seed, bounded runs) of the
// store against a reference of the pure algorithms, one state per (tracker, suffix), with a
// maxKeys of 1-9, fractional costs, rates and windows, a log suffix decided under several
// limits (packed 1-16 and object 17), a counter, leases, peeks, releases, clocks starting at
// 0, 1,000 and 1.7e12 with jumps of 1e6 ms: decisions and peeks match, store.size and
// trackers match, `evictions` grows by exactly the dropped states that had not recovered, a
// refused decision drops nothing, the decider and leased trackers are never dropped, size
// stays within maxKeys unless leases pin more. Targeted: peek marks nothing used and changes
// nothing on a full table; a plan kept across its tracker's eviction decides afresh. Found,
// failing on d147fb6: a refill rate whose interval overflows (tokenBucketSpec accepted it)
// made the store's bucket admit without end (tokenBucketSpec now refuses figures whose times
// are not finite); a packed sliding log's ring grows past `max` (8 for max 5, 16 for 10),
// which the README promised it would not (the ring doubles: the README now says it grows up
// to the first ring that holds `max`). Noted by the review, then fixed: the store's
// constructor took any maxKeys (NaN never evicted).
// Noted, not a promise break: a log suffix decided first under a short window and then a
// longer one may have dropped what the longer one would count (README: kept for the
// longest window "that has decided it"; the module keys other figures apart).
import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import {
  bucketAfter,
  bucketTokens,
  bucketWait,
  counterCount,
  counterFreshAt,
  counterRecord,
  counterWait,
  counterAllows,
  createSlidingCounter,
  logFreshAt,
  type SlidingCounterState,
} from '../../lib/algorithms/index.js';
import {
  MemoryRateLimitStore,
  concurrencySpec,
  createPlan,
  tokenBucketSpec,
  windowSpec,
  type RateLimitDecision,
  type RateLimitPlan,
  type TierSpec,
  type TierStatus,
} from '../../lib/index.js';

// ---------------------------------------------------------------------------------------
// Reference: one state per (tracker, suffix), decided by the pure algorithms; a sliding log
// keeps every timestamp (so it is exact under any mix of limits and windows), and the
// longest window that reached it (the store's promise: kept for the longest window).
// ---------------------------------------------------------------------------------------

type Ref =
  | { kind: 0; fullAt: number }
  | { kind: 1; times: number[]; windowMs: number }
  | { kind: 2; counter: SlidingCounterState; counterWindow: number }
  | { kind: 3; leases: Map<string, number> };

const win = (spec: TierSpec): number => (spec as { windowMs: number }).windowMs;

function logLive(times: number[], now: number, windowMs: number): number {
  const edge = now - windowMs;
  return times.filter((t) => t > edge).length;
}

/** As the library's waitPast: whole ms until `oldest` has left the window (0: it has). */
function waitPast(oldest: number, now: number, windowMs: number): number {
  if (oldest <= now - windowMs) return 0;
  let wait = Math.ceil(oldest + windowMs - now);
  if (wait < 1) wait = 1;
  while (oldest > now + wait - windowMs) wait++;
  return wait;
}

function logFresh(times: number[], windowMs: number): number {
  if (times.length === 0) return -Infinity;
  const last = times[times.length - 1]!;
  return logFreshAt({ ring: new Float64Array([last]), head: 0, count: 1, limit: 1, windowMs }, windowMs);
}

class Reference {
  readonly states = new Map<string, Map<string, Ref>>();

  get(tracker: string, suffix: string): Ref | undefined {
    return this.states.get(tracker)?.get(suffix);
  }

  allows(state: Ref | undefined, spec: TierSpec, now: number): boolean {
    return this.wait(state, spec, now) === 0;
  }

  wait(state: Ref | undefined, spec: TierSpec, now: number): number {
    if (state === undefined || state.kind !== spec.kind) return spec.cost > spec.limit ? Infinity : 0;
    switch (state.kind) {
      case 0: {
        const s = spec as Extract<TierSpec, { kind: 0 }>;
        return bucketWait(state.fullAt, now, s.slack);
      }
      case 1: {
        if (spec.cost > spec.limit) return Infinity;
        const limit = Math.floor(spec.limit);
        const over = state.times.length + spec.cost - limit;
        if (over <= 0) return 0;
        return waitPast(state.times[over - 1]!, now, win(spec));
      }
      case 2:
        return counterWait(state.counter, now, win(spec), spec.limit, spec.cost);
      case 3: {
        let held = 0;
        for (const v of state.leases.values()) held += v;
        return held + spec.cost > spec.limit ? 1000 : 0;
      }
    }
  }

  remaining(state: Ref | undefined, spec: TierSpec, now: number): number {
    if (state === undefined || state.kind !== spec.kind) return Math.floor(spec.limit);
    switch (state.kind) {
      case 0: {
        const s = spec as Extract<TierSpec, { kind: 0 }>;
        return Math.floor(bucketTokens(state.fullAt, now, s.limit, s.intervalMs));
      }
      case 1:
        return Math.max(0, Math.floor(spec.limit) - logLive(state.times, now, win(spec)));
      case 2:
        return Math.max(0, Math.floor(spec.limit - counterCount(state.counter, now, win(spec))));
      case 3: {
        let held = 0;
        for (const v of state.leases.values()) held += v;
        return Math.max(0, Math.floor(spec.limit - held));
      }
    }
  }

  /** When the state equals a fresh one (for eviction accounting: a log by its longest window). */
  freshAt(state: Ref): number {
    switch (state.kind) {
      case 0:
        return state.fullAt;
      case 1:
        return logFresh(state.times, state.windowMs);
      case 2:
        return counterFreshAt(state.counter, state.counterWindow);
      case 3:
        return state.leases.size > 0 ? Infinity : -Infinity;
    }
  }

  trackerFresh(tracker: string): number {
    let fresh = -Infinity;
    for (const state of this.states.get(tracker)?.values() ?? []) fresh = Math.max(fresh, this.freshAt(state));
    return fresh;
  }

  liveStates(tracker: string, now: number): number {
    let live = 0;
    for (const state of this.states.get(tracker)?.values() ?? []) if (this.freshAt(state) > now) live++;
    return live;
  }

  consume(tracker: string, specs: readonly TierSpec[], lease: string, now: number): RateLimitDecision {
    const states = specs.map((spec) => this.get(tracker, spec.suffix));
    // The store notes a log's longer window on the tiers it reaches (up to the refusing one).
    let refusedAt = -1;
    for (let i = 0; i < specs.length; i++) {
      const state = states[i];
      if (state?.kind === 1 && specs[i]!.kind === 1 && win(specs[i]!) > state.windowMs) state.windowMs = win(specs[i]!);
      if (!this.allows(state, specs[i]!, now)) {
        refusedAt = i;
        break;
      }
    }
    if (refusedAt >= 0) {
      let worst = refusedAt;
      let worstWait = this.wait(states[refusedAt], specs[refusedAt]!, now);
      for (let i = refusedAt + 1; i < specs.length; i++) {
        const w = this.wait(states[i], specs[i]!, now);
        if (w > worstWait) {
          worst = i;
          worstWait = w;
        }
      }
      const spec = specs[worst]!;
      return {
        allowed: false,
        tier: spec.tier,
        index: worst,
        retryAfter: worstWait,
        limit: spec.limit,
        remaining: this.remaining(states[worst], spec, now),
      };
    }
    let byTracker = this.states.get(tracker);
    if (byTracker === undefined) this.states.set(tracker, (byTracker = new Map()));
    let near: string | undefined;
    specs.forEach((spec, i) => {
      let state = states[i];
      if (state === undefined || state.kind !== spec.kind) {
        state =
          spec.kind === 0
            ? { kind: 0, fullAt: -Infinity }
            : spec.kind === 1
              ? { kind: 1, times: [], windowMs: win(spec) }
              : spec.kind === 2
                ? { kind: 2, counter: createSlidingCounter(), counterWindow: win(spec) }
                : { kind: 3, leases: new Map() };
        byTracker!.set(spec.suffix, state);
      }
      switch (state.kind) {
        case 0: {
          const s = spec as Extract<TierSpec, { kind: 0 }>;
          state.fullAt = bucketAfter(state.fullAt, now, s.span);
          if ((state.fullAt - now) * 5 > s.nearBound && near === undefined) near = spec.tier;
          break;
        }
        case 1:
          if (win(spec) > state.windowMs) state.windowMs = win(spec);
          for (let k = 0; k < spec.cost; k++) state.times.push(now);
          break;
        case 2:
          expect(counterAllows(state.counter, now, win(spec), spec.limit, spec.cost)).toBe(true);
          counterRecord(state.counter, now, win(spec), spec.cost);
          break;
        case 3:
          state.leases.set(lease, (state.leases.get(lease) ?? 0) + spec.cost);
          break;
      }
    });
    return near === undefined ? { allowed: true } : ({ allowed: true, nearLimit: near } as RateLimitDecision);
  }

  peek(tracker: string, specs: readonly TierSpec[], now: number): TierStatus[] {
    return specs.map((spec) => {
      const state = this.get(tracker, spec.suffix);
      let fresh = -Infinity;
      if (state !== undefined && state.kind === spec.kind) {
        fresh =
          state.kind === 1
            ? logFresh(state.times, win(spec))
            : state.kind === 2
              ? counterFreshAt(state.counter, win(spec))
              : this.freshAt(state);
      }
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
      const state = this.get(tracker, spec.suffix);
      if (state === undefined || state.kind !== 3) continue;
      const left = (state.leases.get(lease) ?? 0) - spec.cost;
      if (left > 0) state.leases.set(lease, left);
      else state.leases.delete(lease);
      if (state.leases.size === 0) {
        this.states.get(tracker)!.delete(spec.suffix);
        if (this.states.get(tracker)!.size === 0) this.states.delete(tracker);
      }
    }
  }

  get size(): number {
    let n = 0;
    for (const m of this.states.values()) n += m.size;
    return n;
  }
}

const tableOf = (store: MemoryRateLimitStore): { head(tracker: string): number } =>
  (store as unknown as { table: { head(tracker: string): number } }).table;

// Tier specs per suffix as the module makes them (one set of figures per bucket suffix), and
// a log suffix decided under several plans' limits (packed 3 / 16, object 17).
const G = [tokenBucketSpec('global', 'g', 4, 3), tokenBucketSpec('global', 'g', 4, 3, 2.5)];
const T = [tokenBucketSpec('type', 't:a', 2.5, 0.7), tokenBucketSpec('type', 't:a', 2.5, 0.7, 2)];
// One window per log suffix: a log keeps its entries for the longest window that has decided
// it so far (README), so a longer window deciding it later may find entries already gone.
const X = [
  windowSpec('expensive', 'x', 'sliding-log', 3, 500),
  windowSpec('expensive', 'x', 'sliding-log', 3, 500, 2),
  windowSpec('expensive', 'x', 'sliding-log', 16, 500, 5),
  windowSpec('expensive', 'x', 'sliding-log', 17, 500, 4),
  windowSpec('expensive', 'y', 'sliding-log', 1, 33.3),
];
const C = [
  windowSpec('expensive', 'xc', 'sliding-counter', 3, 400),
  windowSpec('expensive', 'xc', 'sliding-counter', 3, 400, 1.5),
];
const K = [concurrencySpec('concurrency', 'k', 2)];

const SHAPES: readonly (readonly TierSpec[])[] = [
  [G[0]!],
  [G[0]!, T[0]!],
  [G[1]!, T[1]!, X[0]!],
  [G[0]!, X[1]!],
  [X[2]!],
  [T[0]!, X[3]!, G[0]!],
  [X[4]!, G[0]!],
  [G[0]!, C[0]!],
  [C[1]!, T[0]!],
  [K[0]!, G[0]!],
];
const TRACKERS = ['A', 'B', 'C', 'D', 'E', 'F', 'G'];

type Command =
  | { kind: 'advance'; ms: number }
  | { kind: 'consume'; tracker: number; shape: number }
  | { kind: 'peek'; tracker: number; shape: number }
  | { kind: 'release'; tracker: number };

const commandArb: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 2,
    arbitrary: fc
      .oneof(
        { weight: 3, arbitrary: fc.constant(0) },
        { weight: 6, arbitrary: fc.double({ min: 0, max: 40, noNaN: true }) },
        { weight: 2, arbitrary: fc.integer({ min: 1, max: 2500 }) },
        { weight: 1, arbitrary: fc.constant(1e6) },
      )
      .map((ms): Command => ({ kind: 'advance', ms })),
  },
  {
    weight: 10,
    arbitrary: fc
      .tuple(fc.nat(TRACKERS.length - 1), fc.nat(SHAPES.length - 1))
      .map(([tracker, shape]): Command => ({ kind: 'consume', tracker, shape })),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.nat(TRACKERS.length - 1), fc.nat(SHAPES.length - 1))
      .map(([tracker, shape]): Command => ({ kind: 'peek', tracker, shape })),
  },
  { weight: 1, arbitrary: fc.nat(TRACKERS.length - 1).map((tracker): Command => ({ kind: 'release', tracker })) },
);

describe('memory store code review: against the pure algorithms, with eviction accounting', () => {
  it('decisions and peeks match; evictions count exactly the dropped states that had not recovered; a refused decision drops nothing; the decider and leased trackers are never dropped', () => {
    fc.assert(
      fc.property(
        fc.record({
          maxKeys: fc.integer({ min: 1, max: 9 }),
          start: fc.constantFrom(0, 1_000, 1.7e12),
          commands: fc.array(commandArb, { minLength: 40, maxLength: 250, size: 'max' }),
        }),
        ({ maxKeys, start, commands }) => {
          let now = start;
          const store = new MemoryRateLimitStore({ clock: () => now, maxKeys });
          const ref = new Reference();
          const plans = new Map<string, RateLimitPlan>();
          const planOf = (tracker: string, shape: number): RateLimitPlan => {
            const id = `${tracker}/${shape}`;
            let plan = plans.get(id);
            if (plan === undefined)
              plans.set(id, (plan = createPlan(store, tracker, SHAPES[shape]!, `lease-${tracker}`)));
            return plan;
          };
          for (const [step, command] of commands.entries()) {
            const at = `step ${step} ${JSON.stringify(command)} at ${now}`;
            if (command.kind === 'advance') {
              now += command.ms;
              continue;
            }
            const tracker = TRACKERS[command.tracker]!;
            if (command.kind === 'release') {
              const plan = planOf(tracker, SHAPES.length - 1);
              store.release(plan);
              ref.release(tracker, SHAPES[SHAPES.length - 1]!, `lease-${tracker}`);
            } else if (command.kind === 'peek') {
              const specs = SHAPES[command.shape]!;
              expect([at, store.peek(planOf(tracker, command.shape))]).toEqual([at, ref.peek(tracker, specs, now)]);
            } else {
              const specs = SHAPES[command.shape]!;
              const evictionsBefore = store.evictions;
              const sizeBefore = store.size;
              const fresh = new Map<string, { fresh: number; live: number }>();
              for (const t of ref.states.keys())
                fresh.set(t, { fresh: ref.trackerFresh(t), live: ref.liveStates(t, now) });
              const ours = store.consume(planOf(tracker, command.shape));
              const theirs = ref.consume(tracker, specs, `lease-${tracker}`, now);
              expect([at, { ...ours }]).toEqual([at, theirs]);
              let live = 0;
              for (const t of [...ref.states.keys()]) {
                if (tableOf(store).head(t) >= 0) continue;
                const before = fresh.get(t);
                expect([at, 'dropped', t, 'refused decision', ours.allowed]).toEqual([
                  at,
                  'dropped',
                  t,
                  'refused decision',
                  true,
                ]);
                expect([at, 'dropped the decider', t]).not.toEqual([at, 'dropped the decider', tracker]);
                expect([at, 'dropped a leased tracker', t, before?.fresh]).not.toEqual([
                  at,
                  'dropped a leased tracker',
                  t,
                  Infinity,
                ]);
                live += before?.live ?? 0;
                ref.states.delete(t);
              }
              expect([at, 'evictions', store.evictions - evictionsBefore]).toEqual([at, 'evictions', live]);
              // Bounded by maxKeys, unless leases (and the decider's own states) pin more.
              let pinned = 0;
              for (const [t, states] of ref.states) {
                if (ref.trackerFresh(t) === Infinity || t === tracker) pinned += states.size;
              }
              expect([at, 'size', store.size <= Math.max(maxKeys, pinned, sizeBefore)]).toEqual([at, 'size', true]);
            }
            expect([at, store.size, store.trackers]).toEqual([at, ref.size, ref.states.size]);
          }
        },
      ),
      { seed: 0xc0de, numRuns: Number(process.env.RUNS ?? 120) },
    );
  });
});

describe('memory store code review: targeted probes', () => {
  it('peek marks nothing recently used: a tracker only peeked goes before one consumed again', () => {
    let now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now, maxKeys: 2 });
    const spec = tokenBucketSpec('global', 'g', 5, 1);
    const a = createPlan(store, 'A', [spec]);
    const b = createPlan(store, 'B', [spec]);
    store.consume(a);
    store.consume(b);
    now += 10;
    store.consume(a); // a use after its first decision: A earns its second chance
    for (let i = 0; i < 5; i++) store.peek(b);
    expect(store.consume(createPlan(store, 'C', [spec])).allowed).toBe(true);
    expect([tableOf(store).head('A') >= 0, tableOf(store).head('B') >= 0]).toEqual([true, false]);
    // B had spent a token (not recovered): one state dropped while it mattered.
    expect(store.evictions).toBe(1);
    expect(store.size).toBe(2);
  });

  it('peek on a full table adds, drops and changes nothing (size, trackers, evictions, later decisions)', () => {
    const now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now, maxKeys: 3 });
    const log = windowSpec('expensive', 'x', 'sliding-log', 3, 1000);
    const big = windowSpec('expensive', 'x', 'sliding-log', 20, 1000);
    const g = tokenBucketSpec('global', 'g', 2, 1);
    const a = createPlan(store, 'A', [g, log]);
    store.consume(a);
    store.consume(a);
    store.consume(createPlan(store, 'B', [g]));
    const before = [store.size, store.trackers, store.evictions];
    // Peeks of new trackers and of A under another plan's figures (a limit a packed log cannot take).
    for (const t of ['N1', 'N2', 'N3']) store.peek(createPlan(store, t, [g, log]));
    expect(store.peek(createPlan(store, 'A', [big]))).toEqual([
      { tier: 'expensive', limit: 20, remaining: 18, resetIn: 1000 },
    ]);
    expect([store.size, store.trackers, store.evictions]).toEqual(before);
    // A's window still holds its 2 events for a limit of 3: one more, then refused.
    expect(store.consume(createPlan(store, 'A', [log])).allowed).toBe(true);
    expect(store.consume(createPlan(store, 'A', [log]))).toMatchObject({
      allowed: false,
      tier: 'expensive',
      retryAfter: 1000,
    });
  });

  it('a plan kept across the eviction of its tracker, with its slots given to another tracker, decides afresh and leaves the other alone', () => {
    const now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now, maxKeys: 4 });
    const specs = [tokenBucketSpec('global', 'g', 2, 1), windowSpec('expensive', 'x', 'sliding-log', 2, 10_000)];
    const g = [specs[0]!];
    const a = createPlan(store, 'A', specs);
    expect(store.consume(a).allowed).toBe(true); // A: new, not marked used
    for (const t of ['F1', 'F2']) {
      store.consume(createPlan(store, t, g));
      store.consume(createPlan(store, t, g)); // marked used
    }
    // B needs two states: A (unmarked) is dropped, B takes its two slots.
    const b = createPlan(store, 'B', specs);
    expect(store.consume(b).allowed).toBe(true);
    expect(store.consume(b).allowed).toBe(true);
    expect(tableOf(store).head('A')).toBe(-1);
    expect(store.evictions).toBe(2);
    // A's kept plan remembers B's slots now: A starts over, B keeps its spent budgets.
    expect(store.consume(a)).toEqual({ allowed: true });
    expect(tableOf(store).head('B')).toBeGreaterThanOrEqual(0);
    expect(store.peek(a).map((s) => s.remaining)).toEqual([1, 1]);
    expect(store.peek(b).map((s) => s.remaining)).toEqual([0, 0]);
    expect(store.consume(b)).toMatchObject({ allowed: false });
  });

  it('a token bucket never admits more than its capacity plus its refill: at a refill rate whose interval overflows (1e-306/s), tokenBucketSpec refuses it (it was: accepted, and the store admitted without end)', () => {
    // tokenBucketSpec: "Refuses figures no decision could ever satisfy, or that make no sense"
    // (lib/plans/tier-specs.ts); token-bucket.ts: never more than C + r*t. 1000 / 1e-306 is
    // Infinity: slack (1 - 1) * Infinity is NaN, and the store's test
    // `!(fullAt - now > slack || slack < 0)` is true for NaN (the pure bucketAllows refuses);
    // at capacity 3 the slack is Infinity and both admit without end.
    for (const capacity of [1, 3]) {
      let spec: TierSpec;
      try {
        spec = tokenBucketSpec('global', 'g', capacity, 1e-306);
      } catch (error) {
        expect(error).toBeInstanceOf(RangeError);
        expect((error as Error).message).toContain('global tier: capacity');
        continue;
      }
      let now = 0;
      const store = new MemoryRateLimitStore({ clock: () => now });
      const plan = createPlan(store, 'A', [spec]);
      let admitted = 0;
      for (let i = 0; i < 10; i++) {
        if (store.consume(plan).allowed) admitted++;
        now += 1000;
      }
      expect([capacity, admitted]).toEqual([capacity, capacity]);
    }
  });

  it('a packed sliding log grows with its traffic up to the first ring that holds max timestamps (README; it said "up to max", which a doubling ring cannot be)', () => {
    // README, Stores > Memory: a log of max 16 or less "starts with room for 4 timestamps (8
    // numbers) and moves to a ring twice as large when its traffic needs it", up to the first
    // ring that holds `max`: max 5 takes a ring of 8 (12 numbers with the header of 4), max 10
    // a ring of 16 (20 numbers). The review read "up to max" (the README's words then) as 5.
    for (const max of [5, 10]) {
      let now = 0;
      const store = new MemoryRateLimitStore({ clock: () => now });
      const plan = createPlan(store, 'A', [windowSpec('expensive', 'x', 'sliding-log', max, 60_000)]);
      for (let i = 0; i < 3 * max; i++) {
        store.consume(plan);
        now += 1;
      }
      const logs = (store as unknown as { table: { logs: { doublesInUse: number } } }).table.logs;
      // 4 numbers of header, then the ring: 4, doubled until it holds `max`.
      let ring = 4;
      while (ring < max) ring *= 2;
      expect([max, logs.doublesInUse]).toEqual([max, 4 + ring]);
    }
  });

  it('the store refuses a maxKeys that is not a whole number of at least 1, and a clock that is no function (it was: NaN accepted, and the store never evicted)', () => {
    for (const maxKeys of [Number.NaN, 0, -1, 2.5, Infinity]) {
      expect(() => new MemoryRateLimitStore({ maxKeys })).toThrow(
        `memory store: maxKeys must be a whole number of at least 1, got ${String(maxKeys)}`,
      );
    }
    expect(() => new MemoryRateLimitStore({ clock: 5 as unknown as () => number })).toThrow(TypeError);
    // The bound holds at its smallest.
    let now = 0;
    const store = new MemoryRateLimitStore({ maxKeys: 1, clock: () => now });
    for (const tracker of ['a', 'b', 'c']) {
      store.consume(createPlan(store, tracker, [tokenBucketSpec('global', 'g', 2, 0.001)]));
      now += 1;
    }
    expect(store.size).toBe(1);
  });
});
