import { describe, expect, it } from '@jest/globals';
import { bucketAfter, bucketAllows, bucketTokens, bucketWait } from '../../lib/algorithms/token-bucket.js';
import {
  counterAllows,
  counterCount,
  counterFreshAt,
  counterRecord,
  counterWait,
  createSlidingCounter,
  type SlidingCounterState,
} from '../../lib/algorithms/sliding-counter.js';
import type { RateLimitDecision, RateLimitPlan, TierSpec, TierStatus } from '../../lib/interfaces/plan.interface.js';
import { createPlan } from '../../lib/plans/create-plan.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import type { LogSlab } from '../../lib/storage/memory/log-slab.js';
import { mulberry32 } from './support/prng.js';

// Adversarial review of the embedded memory store: a model-based test against a plain
// per-(tracker, suffix) reference (shared tiers decided under several plans' figures, 1-8
// tiers, leases, deletes, clock jumps, a tiny maxKeys), then one test per bug found.
//
// From a review; these cases failed before their fixes (lib/storage/memory, lib/algorithms,
// lib/plans/check-spec.ts), one line each:
// - a packed log grown under a larger limit let a smaller plan's limit through (5 where 2);
//   the model-based runs too, once plans on one log suffix differ in limits
// - a hand-made bucket spec with cost > capacity was admitted once the state existed
// - two plans whose windows differ on one log: the shorter one dropped the longer's history
// - ...and made the tracker look idle (swept, no eviction counted) while the longer counted it
// - a hand-made plan with its own key shared a createPlan plan's state of the same suffix
// - delete() ignored keys that are not key(tracker, suffix)
// - remaining was not whole for a fractional limit (fresh tier, concurrency tier)
// - a tier name outside TierName passed checkSpec, and consume() returned undefined
// - a bucket on a tier decided before as a log read the log's freshAt (refused for the window)
// - the packed-log slab kept ~10x its busiest use after churn through ring sizes
// - (added after the fixes) a longer window that only refused was forgotten

// ---------------------------------------------------------------------------------------
// Deterministic PRNG
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// Reference: one state per (tracker, suffix); a log keeps every timestamp.
// ---------------------------------------------------------------------------------------

type RefState =
  | { kind: 0; fullAt: number }
  | { kind: 1; times: number[] }
  | { kind: 2; counter: SlidingCounterState }
  | { kind: 3; leases: Map<string, number> };

function fresh(spec: TierSpec): RefState {
  switch (spec.kind) {
    case 0:
      return { kind: 0, fullAt: -Infinity };
    case 1:
      return { kind: 1, times: [] };
    case 2:
      return { kind: 2, counter: createSlidingCounter() };
    case 3:
      return { kind: 3, leases: new Map() };
  }
}

const sum = (leases: Map<string, number>): number => [...leases.values()].reduce((a, b) => a + b, 0);

function inWindow(times: number[], now: number, windowMs: number): number[] {
  return times.filter((t) => now - t < windowMs);
}

function allows(state: RefState, spec: TierSpec, now: number): boolean {
  switch (spec.kind) {
    case 0:
      return bucketAllows((state as { fullAt: number }).fullAt, now, spec.slack);
    case 1:
      return (
        spec.cost <= Math.floor(spec.limit) &&
        inWindow((state as { times: number[] }).times, now, spec.windowMs).length + spec.cost <= Math.floor(spec.limit)
      );
    case 2:
      return counterAllows(
        (state as { counter: SlidingCounterState }).counter,
        now,
        spec.windowMs,
        spec.limit,
        spec.cost,
      );
    case 3:
      return sum((state as { leases: Map<string, number> }).leases) + spec.cost <= spec.limit;
  }
}

function wait(state: RefState, spec: TierSpec, now: number): number {
  switch (spec.kind) {
    case 0:
      return bucketWait((state as { fullAt: number }).fullAt, now, spec.slack);
    case 1: {
      const limit = Math.floor(spec.limit);
      if (spec.cost > limit) return Infinity;
      const live = inWindow((state as { times: number[] }).times, now, spec.windowMs);
      const leave = live.length + spec.cost - limit;
      if (leave <= 0) return 0;
      const blocker = live[leave - 1]!;
      let w = Math.max(1, Math.ceil(blocker + spec.windowMs - now));
      while (blocker > now + w - spec.windowMs) w++;
      return w;
    }
    case 2:
      return counterWait(
        (state as { counter: SlidingCounterState }).counter,
        now,
        spec.windowMs,
        spec.limit,
        spec.cost,
      );
    case 3:
      return allows(state, spec, now) ? 0 : 1000;
  }
}

function remaining(state: RefState, spec: TierSpec, now: number): number {
  switch (spec.kind) {
    case 0:
      return Math.floor(bucketTokens((state as { fullAt: number }).fullAt, now, spec.limit, spec.intervalMs));
    case 1:
      return Math.max(
        0,
        Math.floor(spec.limit) - inWindow((state as { times: number[] }).times, now, spec.windowMs).length,
      );
    case 2:
      return Math.max(
        0,
        Math.floor(spec.limit - counterCount((state as { counter: SlidingCounterState }).counter, now, spec.windowMs)),
      );
    case 3:
      return Math.max(0, spec.limit - sum((state as { leases: Map<string, number> }).leases));
  }
}

/** When the state equals a fresh one (Infinity: pinned by a lease). */
function freshAt(state: RefState, windowMs: number): number {
  switch (state.kind) {
    case 0:
      return state.fullAt;
    case 1:
      return state.times.length === 0 ? -Infinity : state.times[state.times.length - 1]! + windowMs;
    case 2:
      return counterFreshAt(state.counter, windowMs);
    case 3:
      return state.leases.size > 0 ? Infinity : -Infinity;
  }
}

class Reference {
  readonly trackers = new Map<string, Map<string, { state: RefState; windowMs: number }>>();

  get size(): number {
    let n = 0;
    for (const t of this.trackers.values()) n += t.size;
    return n;
  }

  private get(tracker: string, spec: TierSpec): RefState {
    return this.trackers.get(tracker)?.get(spec.suffix)?.state ?? fresh(spec);
  }

  consume(tracker: string, specs: readonly TierSpec[], lease: string, now: number): RateLimitDecision {
    const states = specs.map((spec) => this.get(tracker, spec));
    const first = specs.findIndex((spec, i) => !allows(states[i]!, spec, now));
    if (first >= 0) {
      let worst = first;
      let worstWait = wait(states[first]!, specs[first]!, now);
      for (let i = first + 1; i < specs.length; i++) {
        const w = wait(states[i]!, specs[i]!, now);
        if (w > worstWait) [worst, worstWait] = [i, w];
      }
      const spec = specs[worst]!;
      return {
        allowed: false,
        tier: spec.tier,
        index: worst,
        retryAfter: worstWait,
        limit: spec.limit,
        remaining: remaining(states[worst]!, spec, now),
      };
    }
    let nearLimit: string | undefined;
    let held = this.trackers.get(tracker);
    if (held === undefined) this.trackers.set(tracker, (held = new Map()));
    specs.forEach((spec, i) => {
      const state = states[i]!;
      switch (spec.kind) {
        case 0: {
          const s = state as { fullAt: number };
          s.fullAt = bucketAfter(s.fullAt, now, spec.span);
          if ((s.fullAt - now) * 5 > spec.nearBound && nearLimit === undefined) nearLimit = spec.tier;
          break;
        }
        case 1:
          for (let k = 0; k < spec.cost; k++) (state as { times: number[] }).times.push(now);
          break;
        case 2:
          counterRecord((state as { counter: SlidingCounterState }).counter, now, spec.windowMs, spec.cost);
          break;
        case 3: {
          const leases = (state as { leases: Map<string, number> }).leases;
          leases.set(lease, (leases.get(lease) ?? 0) + spec.cost);
          break;
        }
      }
      held.set(spec.suffix, { state, windowMs: 'windowMs' in spec ? spec.windowMs : 0 });
    });
    return nearLimit === undefined ? { allowed: true } : { allowed: true, nearLimit: nearLimit as never };
  }

  peek(tracker: string, specs: readonly TierSpec[], now: number): TierStatus[] {
    return specs.map((spec) => {
      const held = this.trackers.get(tracker)?.get(spec.suffix);
      const state = held?.state ?? fresh(spec);
      const at = freshAt(state, 'windowMs' in spec ? spec.windowMs : 0);
      return {
        tier: spec.tier,
        limit: spec.limit,
        remaining: remaining(state, spec, now),
        resetIn: at === Infinity || at <= now ? 0 : Math.ceil(at - now),
      };
    });
  }

  release(tracker: string, specs: readonly TierSpec[], lease: string): void {
    for (const spec of specs) {
      if (spec.kind !== 3) continue;
      const held = this.trackers.get(tracker)?.get(spec.suffix);
      if (held === undefined) continue;
      const leases = (held.state as { leases: Map<string, number> }).leases;
      const left = (leases.get(lease) ?? 0) - spec.cost;
      if (left > 0) leases.set(lease, left);
      else leases.delete(lease);
      if (leases.size === 0) this.deleteState(tracker, spec.suffix);
    }
  }

  deleteState(tracker: string, suffix: string): void {
    const held = this.trackers.get(tracker);
    if (held === undefined) return;
    held.delete(suffix);
    if (held.size === 0) this.trackers.delete(tracker);
  }

  /** States of a tracker that still matter at `now`; Infinity when a lease pins it. */
  live(tracker: string, now: number): number {
    let n = 0;
    for (const { state, windowMs } of this.trackers.get(tracker)?.values() ?? []) {
      const at = freshAt(state, windowMs);
      if (at === Infinity) return Infinity;
      if (at > now) n++;
    }
    return n;
  }
}

// ---------------------------------------------------------------------------------------
// Random plans over shared tiers: each suffix keeps its algorithm (and a window's length);
// plans differ in limits, costs and rates, as named plans sharing a tier do.
// ---------------------------------------------------------------------------------------

const SUFFIXES: { suffix: string; kind: 0 | 1 | 2 | 3; windowMs: number }[] = [
  { suffix: 'g', kind: 0, windowMs: 0 },
  { suffix: 't:a', kind: 0, windowMs: 0 },
  { suffix: 't:b', kind: 0, windowMs: 0 },
  { suffix: 'x', kind: 1, windowMs: 1_000 },
  { suffix: 'y', kind: 1, windowMs: 250 },
  { suffix: 'xc', kind: 2, windowMs: 500 },
  { suffix: 'c', kind: 3, windowMs: 0 },
  { suffix: 't:c', kind: 0, windowMs: 0 },
];
const TIERS = ['global', 'type', 'expensive', 'connection', 'concurrency'] as const;

function randomSpec(rnd: () => number, at: number): TierSpec {
  const { suffix, kind, windowMs } = SUFFIXES[at]!;
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const tier = pick(TIERS);
  switch (kind) {
    case 0: {
      const capacity = pick([1, 2, 3, 5, 8]);
      return tokenBucketSpec(
        tier,
        suffix,
        capacity,
        pick([0.5, 1, 3, 8, 250]),
        pick([1, 1, 1, 2].filter((c) => c <= capacity)),
      );
    }
    case 1: {
      // Plans on one log suffix differ in limits (packed and not: 16 is the largest packed),
      // as named plans sharing the expensive window do; each keeps its suffix's window.
      const limit = pick(suffix === 'x' ? [2, 9, 16] : [3, 16, 17]);
      return windowSpec(tier, suffix, 'sliding-log', limit, windowMs, pick([1, 1, 1, 2, 3].filter((c) => c <= limit)));
    }
    case 2:
      return windowSpec(tier, suffix, 'sliding-counter', pick([1, 2, 5]), windowMs, pick([1, 1, 0.5]));
    default:
      return concurrencySpec(tier, suffix, pick([1, 2, 3]));
  }
}

interface Slot {
  tracker: string;
  specs: TierSpec[];
  lease: string;
  style: 'created' | 'hand' | 'frozen';
  plan: RateLimitPlan;
}

function buildPlan(store: MemoryRateLimitStore, slot: Omit<Slot, 'plan'>): RateLimitPlan {
  if (slot.style === 'created') return createPlan(store, slot.tracker, slot.specs, slot.lease);
  const plan: RateLimitPlan = {
    tracker: slot.tracker,
    tiers: slot.specs.map((spec) => ({ key: store.key(slot.tracker, spec.suffix), spec })),
    lease: slot.lease,
  };
  return slot.style === 'frozen' ? Object.freeze(plan) : plan;
}

function heldTrackers(store: MemoryRateLimitStore): Set<string> {
  return new Set((store as unknown as { table: { index: Map<string, number> } }).table.index.keys());
}

function run(seed: number, steps: number, maxKeys: number): void {
  const rnd = mulberry32(seed);
  let now = 1_000;
  const store = new MemoryRateLimitStore({ maxKeys, clock: () => now });
  const ref = new Reference();
  const trackers = Array.from({ length: 10 }, (_, i) => (i === 3 ? 'x|1:y' : `t${i}`));
  const slots: Slot[] = [];
  for (let p = 0; p < 30; p++) {
    const count = 1 + Math.floor(rnd() * 8);
    const picked = [...SUFFIXES.keys()].sort(() => rnd() - 0.5).slice(0, count);
    const base = {
      tracker: trackers[Math.floor(rnd() * trackers.length)]!,
      specs: picked.map((at) => randomSpec(rnd, at)),
      lease: `L${Math.floor(rnd() * 3)}`,
      style: (['created', 'created', 'hand', 'frozen'] as const)[Math.floor(rnd() * 4)]!,
    };
    slots.push({ ...base, plan: buildPlan(store, base) });
  }
  const context = (step: number, what: string): string => `seed ${seed} step ${step} ${what}`;
  let refusals = 0;
  let drops = 0;
  for (let step = 0; step < steps; step++) {
    const r = rnd();
    const slot = slots[Math.floor(rnd() * slots.length)]!;
    if (r < 0.2) {
      const jump = rnd();
      now += jump < 0.4 ? 0 : jump < 0.97 ? Math.floor(rnd() * 300) : 3_600_000 * (1 + Math.floor(rnd() * 5));
    } else if (r < 0.8) {
      const before = heldTrackers(store);
      const evictionsBefore = store.evictions;
      const sizeBefore = store.size;
      const idleOthers = [...ref.trackers.keys()].filter((t) => t !== slot.tracker && ref.live(t, now) === 0);
      const liveBefore = new Map([...ref.trackers.keys()].map((t) => [t, ref.live(t, now)]));
      const got = store.consume(slot.plan);
      const want = ref.consume(slot.tracker, slot.specs, slot.lease, now);
      expect([context(step, 'consume'), { ...got }]).toEqual([context(step, 'consume'), want]);
      const after = heldTrackers(store);
      const dropped = [...before].filter((t) => !after.has(t));
      drops += dropped.length;
      if (!got.allowed) refusals++;
      if (!got.allowed)
        expect([context(step, 'refusal dropped'), dropped]).toEqual([context(step, 'refusal dropped'), []]);
      expect(dropped).not.toContain(slot.tracker);
      let mattered = 0;
      for (const t of dropped) {
        const live = liveBefore.get(t)!;
        expect([context(step, `dropped leased ${t}`), live]).not.toEqual([
          context(step, `dropped leased ${t}`),
          Infinity,
        ]);
        mattered += live;
        ref.trackers.delete(t);
      }
      expect([context(step, 'evictions'), store.evictions - evictionsBefore]).toEqual([
        context(step, 'evictions'),
        mattered,
      ]);
      if (mattered > 0) {
        // maxKeys < 64: every eviction may look for idle trackers first.
        expect([context(step, 'idle left behind'), idleOthers.filter((t) => after.has(t))]).toEqual([
          context(step, 'idle left behind'),
          [],
        ]);
      }
      // Past maxKeys only when this decision added states and nothing else could go.
      if (store.size > maxKeys && store.size > sizeBefore) {
        const unpinned = [...after].filter((t) => t !== slot.tracker && ref.live(t, now) !== Infinity);
        expect([context(step, 'over maxKeys'), unpinned]).toEqual([context(step, 'over maxKeys'), []]);
      }
    } else if (r < 0.87) {
      expect([context(step, 'peek'), store.peek(slot.plan)]).toEqual([
        context(step, 'peek'),
        ref.peek(slot.tracker, slot.specs, now),
      ]);
    } else if (r < 0.93) {
      store.release(slot.plan);
      ref.release(slot.tracker, slot.specs, slot.lease);
    } else if (r < 0.96) {
      slot.plan = buildPlan(store, slot);
    } else if (r < 0.985) {
      const suffixes = slot.specs.filter(() => rnd() < 0.5).map((s) => s.suffix);
      store.delete(suffixes.map((s) => store.key(slot.tracker, s)));
      for (const s of suffixes) ref.deleteState(slot.tracker, s);
    } else if (r < 0.998) {
      store.deleteTracker(slot.tracker);
      ref.trackers.delete(slot.tracker);
    } else {
      void store.close();
      ref.trackers.clear();
    }
    expect([context(step, 'size'), store.size, store.trackers]).toEqual([
      context(step, 'size'),
      ref.size,
      ref.trackers.size,
    ]);
  }
  // The run exercised what it checks: refusals, and trackers dropped to make room.
  expect(refusals).toBeGreaterThan(100);
  if (maxKeys < 20) expect([drops, store.evictions]).toEqual([expect.any(Number), expect.any(Number)]);
  if (maxKeys < 20) expect(drops).toBeGreaterThan(50);
}

describe('memory store review: model-based, against a per-(tracker, suffix) reference', () => {
  it.each([1, 2, 3, 4, 5, 6, 7, 8])(
    'seed %i: decisions, peeks, size, whole-tracker drops, evictions and idle-first agree (maxKeys 12)',
    (seed) => {
      run(seed, 4_000, 12);
    },
  );
  it.each([11, 12])('seed %i: maxKeys 40 (room for most trackers)', (seed) => {
    run(seed, 4_000, 40);
  });
});

// ---------------------------------------------------------------------------------------
// Bugs
// ---------------------------------------------------------------------------------------

describe('memory store review: slot reuse', () => {
  it("a kept plan whose tracker was dropped and whose slots went to another tracker never decides on that tracker's state", () => {
    let now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now, maxKeys: 3 });
    const specs = [
      tokenBucketSpec('global', 'g', 1, 1),
      tokenBucketSpec('type', 't:a', 1, 1),
      windowSpec('expensive', 'x', 'sliding-log', 1, 10_000),
    ];
    const a = createPlan(store, 'a', specs);
    expect(store.consume(a).allowed).toBe(true);
    now = 20_000; // 'a' idle: dropped for 'b', which takes its three slots back in order
    const b = createPlan(store, 'b', specs);
    expect(store.consume(b).allowed).toBe(true);
    expect(store.consume(b).allowed).toBe(false);
    // 'a' (its cache points at b's slots) decides fresh: room is made by evicting b, which still
    // mattered (3 states counted), and a never reads b's refused state.
    expect(store.consume(a).allowed).toBe(true);
    expect([store.trackers, store.evictions]).toEqual([1, 3]);
    expect(store.consume(a).allowed).toBe(false);
  });
});

describe('memory store review: edges found by the review (each failed before its fix)', () => {
  it("a packed log grown under a larger plan's limit still holds a smaller plan on the same tier to its 2 a second", () => {
    // Named plans share the expensive window: pro (max 8) and free (max 2) behind one address.
    let now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now });
    const pro = createPlan(store, 'ip:1', [windowSpec('expensive', 'x', 'sliding-log', 8, 1_000)]);
    const free = createPlan(store, 'ip:1', [windowSpec('expensive', 'x', 'sliding-log', 2, 1_000)]);
    // Five pro operations: the packed ring grows from 4 to 8 slots and holds 5 entries.
    for (let i = 0; i < 5; i++) expect(store.consume(pro).allowed).toBe(true);
    now = 5_000; // every entry has left the window
    const admitted = Array.from({ length: 6 }, () => store.consume(free).allowed).filter(Boolean).length;
    // The free window admits 2 per second, whatever the pro client did before.
    expect(admitted).toBe(2);
  });

  it('a hand-made token-bucket spec whose cost exceeds its capacity is never admitted, even once the shared bucket has refilled', () => {
    // checkSpec allows a cost above the limit by design: "never admitted".
    let now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now });
    const small = tokenBucketSpec('global', 'g', 2, 1);
    const tooBig = { ...small, cost: 5, slack: (2 - 5) * 1000, span: 5 * 1000 } as TierSpec;
    const spend = createPlan(store, 'u', [small]);
    const heavy: RateLimitPlan = { tracker: 'u', tiers: [{ key: store.key('u', 'g'), spec: tooBig }] };
    expect(store.consume(heavy)).toMatchObject({ allowed: false, retryAfter: Infinity }); // fresh state: refused
    expect(store.consume(spend).allowed).toBe(true); // the state now exists
    now = 10_000; // long refilled
    expect(store.consume(heavy)).toMatchObject({ allowed: false, retryAfter: Infinity });
  });

  it('a tracker on two plans whose expensive windows differ gets no more than the longer window allows', () => {
    // free: 5 per 60 s; pro: 16 per 1 s; one tracker (ip), one window suffix ('x').
    let now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now });
    const free = createPlan(store, 'ip', [windowSpec('expensive', 'x', 'sliding-log', 5, 60_000)]);
    const pro = createPlan(store, 'ip', [windowSpec('expensive', 'x', 'sliding-log', 16, 1_000)]);
    for (let i = 0; i < 3; i++) expect(store.consume(free).allowed).toBe(true);
    now = 2_000;
    for (let i = 0; i < 2; i++) expect(store.consume(pro).allowed).toBe(true);
    now = 2_001;
    // Five operations in the last 60 s: the free window (5 per 60 s) is full. With a ring
    // that did not need to grow (4 entries, not 5) the same history is refused.
    expect(store.consume(free).allowed).toBe(false);
  });

  it('a tier decided last under a short window is not idle while a longer window still counts it (dropping it is an eviction)', () => {
    let now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now, maxKeys: 2 });
    const free = createPlan(store, 'ip', [windowSpec('expensive', 'x', 'sliding-log', 2, 60_000)]);
    const pro = createPlan(store, 'ip', [windowSpec('expensive', 'x', 'sliding-log', 16, 1_000)]);
    expect([store.consume(free).allowed, store.consume(pro).allowed]).toEqual([true, true]);
    // 'a' decides only under a window of 1 s: idle from 1 s on.
    store.consume(createPlan(store, 'a', [windowSpec('expensive', 'x', 'sliding-log', 2, 1_000)]));
    now = 5_000;
    // Room for 'b': the idle tracker goes ('a'), not 'ip', which the free window still counts.
    const other = [windowSpec('expensive', 'x', 'sliding-log', 2, 60_000)];
    store.consume(createPlan(store, 'b', other));
    // Two operations 5 s ago: the free window (2 per 60 s) is still full.
    expect({ evictions: store.evictions, trackers: store.trackers, free: store.consume(free).allowed }).toEqual({
      evictions: 0,
      trackers: 2,
      free: false,
    });
    // When 'ip' must go to make room (the least recently used, nothing idle: 'b' used again,
    // as a new tracker earns its second chance by a second use), its state still mattered:
    // the drop is an eviction.
    store.consume(createPlan(store, 'b', other));
    store.consume(createPlan(store, 'c', other));
    expect({ evictions: store.evictions, ip: store.peek(free)[0]!.remaining }).toEqual({ evictions: 1, ip: 2 });
  });

  it('a hand-made plan with its own key and a createPlan plan of the same suffix decide on two states, in either order', () => {
    // Keys name states ("no tracker text and no type name can make two keys equal"): '1:u|g'
    // and 'custom:u:g' are two states, as they are two keys in Redis.
    const spec = tokenBucketSpec('global', 'g', 1, 1);
    const outcome = (createdFirst: boolean): boolean[] => {
      const store = new MemoryRateLimitStore({ clock: () => 0 });
      const created = createPlan(store, 'u', [spec]);
      const custom: RateLimitPlan = { tracker: 'u', tiers: [{ key: 'custom:u:g', spec }] };
      const order = createdFirst ? [created, custom] : [custom, created];
      return order.map((plan) => store.consume(plan).allowed);
    };
    expect(outcome(false)).toEqual([true, true]);
    expect(outcome(true)).toEqual([true, true]);
  });

  it("delete() with a hand-made plan's own keys forgets their states", () => {
    // RateLimitStore.delete: "Forgets the given keys, as if they had never been used."
    const store = new MemoryRateLimitStore({ clock: () => 0 });
    const spec = tokenBucketSpec('global', 'g', 1, 1);
    const plan: RateLimitPlan = { tracker: 'u', tiers: [{ key: 'tenant-7:u:g', spec }] };
    expect(store.consume(plan).allowed).toBe(true);
    expect(store.consume(plan).allowed).toBe(false);
    store.delete(plan.tiers.map((tier) => tier.key));
    expect({ size: store.size, allowed: store.consume(plan).allowed }).toEqual({ size: 0, allowed: true });
  });

  it('remaining is whole for fractional limits: a fresh or full tier, and a concurrency tier', () => {
    // TierStatus.remaining / RateLimitRejected.remaining: "whole units".
    let now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now });
    const bucket = createPlan(store, 'a', [tokenBucketSpec('global', 'g', 2.5, 1)]);
    const fresh = store.peek(bucket)[0]!.remaining;
    store.consume(bucket);
    now = 60_000; // full again
    const refilled = store.peek(bucket)[0]!.remaining;
    const seats = createPlan(store, 'b', [concurrencySpec('concurrency', 'c', 2.5)], 'lease');
    store.consume(seats);
    store.consume(seats);
    const refused = store.consume(seats);
    expect({
      fresh,
      refilled,
      refused: refused.allowed ? 'allowed' : refused.remaining,
      peek: store.peek(seats)[0]!.remaining,
    }).toEqual({ fresh: 2, refilled: 2, refused: 0, peek: 0 });
  });

  it('a hand-made spec whose tier name is not a TierName is refused by checkSpec (consume decides nothing)', () => {
    // TierSpec.tier is a TierName: decisions (nearLimit), metrics and frames know no other
    // name, so checkSpec refuses one, naming the tier, and the plan decides nothing.
    const store = new MemoryRateLimitStore({ clock: () => 0 });
    const spec = { ...tokenBucketSpec('global', 'g', 2, 1), tier: 'burst' } as unknown as TierSpec;
    const plan: RateLimitPlan = { tracker: 'u', tiers: [{ key: store.key('u', 'g'), spec }] };
    expect(() => store.consume(plan)).toThrow(/tier spec 'burst' \(suffix 'g'\): tier must be one of 'global'/);
    expect(() => createPlan(store, 'u', [spec])).toThrow(RangeError);
    expect(store.size).toBe(0);
    // The same spec with a tier name decides, and says which tier is near its limit.
    const named: RateLimitPlan = { ...plan, tiers: [{ ...plan.tiers[0]!, spec: { ...spec, tier: 'type' } }] };
    const decisions: (RateLimitDecision | undefined)[] = [store.consume(named), store.consume(named)];
    expect(decisions).toEqual([{ allowed: true }, { allowed: true, nearLimit: 'type' }]);
  });

  it('a tier first decided as a window and then as a token bucket starts afresh as a bucket', () => {
    // "a window whose algorithm changed starts afresh"; the bucket reads the log's freshAt.
    const store = new MemoryRateLimitStore({ clock: () => 0 });
    const log = createPlan(store, 'u', [windowSpec('expensive', 'x', 'sliding-log', 5, 60_000)]);
    const bucket = createPlan(store, 'u', [tokenBucketSpec('expensive', 'x', 10, 1)]);
    expect(store.consume(log).allowed).toBe(true);
    expect(store.consume(bucket)).toEqual({ allowed: true });
  });

  it('the packed-log slab keeps about its busiest use after churn through different window limits', () => {
    // LogSlab: "The slab never holds more than the logs alive at its busiest, plus the end of
    // their last page". Freed space is reused only by logs of the same ring size.
    const store = new MemoryRateLimitStore({ clock: () => 0 });
    const logs = (store as unknown as { table: { logs: LogSlab } }).table.logs;
    let busiest = 0;
    for (let limit = 1; limit <= 16; limit++) {
      const specs = [windowSpec('expensive', 'x', 'sliding-log', limit, 60_000)];
      for (let t = 0; t < 1_000; t++) {
        const plan = createPlan(store, `t${t}`, specs);
        for (let k = 0; k < limit; k++) store.consume(plan);
      }
      busiest = Math.max(busiest, logs.doublesInUse);
      for (let t = 0; t < 1_000; t++) store.deleteTracker(`t${t}`);
    }
    expect(logs.doublesInUse).toBe(0);
    expect(logs.doubles).toBeLessThanOrEqual(busiest + 4_096);
  });
  it('a longer window that only refused is remembered: a shorter one recording later keeps what it counts', () => {
    let now = 0;
    const store = new MemoryRateLimitStore({ clock: () => now });
    const pro = createPlan(store, 'ip', [windowSpec('expensive', 'x', 'sliding-log', 16, 1_000)]);
    const free = createPlan(store, 'ip', [windowSpec('expensive', 'x', 'sliding-log', 5, 60_000)]);
    for (let i = 0; i < 5; i++) expect(store.consume(pro).allowed).toBe(true);
    expect(store.consume(free)).toMatchObject({ allowed: false, retryAfter: 60_000 });
    now = 2_000;
    for (let i = 0; i < 4; i++) expect(store.consume(pro).allowed).toBe(true);
    // Nine operations in the last 60 s: the free window is still full, until the first five leave it.
    expect(store.consume(free)).toMatchObject({ allowed: false, retryAfter: 58_000, remaining: 0 });
    expect(store.peek(free)[0]).toEqual({ tier: 'expensive', limit: 5, remaining: 0, resetIn: 60_000 });
    expect(store.peek(pro)[0]).toEqual({ tier: 'expensive', limit: 16, remaining: 12, resetIn: 1_000 });
  });
});
