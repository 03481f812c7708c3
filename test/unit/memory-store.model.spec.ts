import { afterEach, beforeEach, describe, expect, it, jest } from '@jest/globals';
import fc from 'fast-check';
import type {
  RateLimitDecision,
  RateLimitPlan,
  RateLimitRejected,
  TierSpec,
} from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import { TICKS_PER_MS, advanceTicks, check, checkSame, fcParams, ms } from './support/exact-model.js';
import { forEachTightInterval, forEachWindowFrom, type Admission } from './support/schedules.js';
import { buildPlans, distinctKeys, planSetup, RefStore, storeSnapshot } from './support/store-model.js';

/** One command of a model run. */
type Command =
  | { readonly kind: 'advance'; readonly ticks: number }
  | { readonly kind: 'consume'; readonly pick: number }
  | { readonly kind: 'peek'; readonly pick: number }
  /** The wall clock steps by an hour (an NTP step): the store must not notice. */
  | { readonly kind: 'jumpWallClock'; readonly forward: boolean }
  /** Right after a rejection: wait exactly `retryAfter`, send the same plan again. */
  | { readonly kind: 'retry' };

const commands: fc.Arbitrary<Command[]> = fc.array(
  fc.oneof(
    { weight: 4, arbitrary: advanceTicks.map((ticks): Command => ({ kind: 'advance', ticks })) },
    { weight: 7, arbitrary: fc.nat().map((pick): Command => ({ kind: 'consume', pick })) },
    { weight: 1, arbitrary: fc.nat().map((pick): Command => ({ kind: 'peek', pick })) },
    { weight: 2, arbitrary: fc.constant<Command>({ kind: 'retry' }) },
    { weight: 1, arbitrary: fc.boolean().map((forward): Command => ({ kind: 'jumpWallClock', forward })) },
  ),
  { maxLength: 200, size: 'max' },
);

const HOUR = 3_600_000;
/** What the mocked `Date.now` returns during model runs. */
let wallClock = Date.now();

/**
 * The bound each key's admissions must keep, checked on what the store admitted (not on
 * the model): a bucket at most `C + r*t` in any interval (exact integers: ticks and
 * tokens x 16000), a log at most `limit` in any window of its length, a counter at most
 * `limit` per aligned window and `2 * limit` in any sliding window.
 */
function checkBounds(key: string, spec: TierSpec, admitted: readonly Admission[]): void {
  switch (spec.algorithm) {
    case 'token-bucket':
      forEachTightInterval(admitted, (total, ticks, from) => {
        check(
          total * 16_000 <= spec.limit * 16_000 + 2 * spec.refillRate * ticks,
          () => `${key}: ${total} admitted in ${ms(ticks)} ms from ${ms(from)} ms`,
        );
      });
      break;
    case 'sliding-log':
    case 'sliding-counter': {
      const width = spec.windowMs * TICKS_PER_MS;
      const most = spec.algorithm === 'sliding-log' ? spec.limit : 2 * spec.limit;
      forEachWindowFrom(admitted, width, (total, from) => {
        check(total <= most, () => `${key}: ${total} admitted in the window from ${ms(from)} ms`);
      });
      const aligned = new Map<number, number>();
      for (const { at, cost } of admitted) {
        aligned.set(Math.floor(at / width), (aligned.get(Math.floor(at / width)) ?? 0) + cost);
      }
      for (const total of aligned.values()) check(total <= spec.limit, () => `${key}: ${total} in one aligned window`);
      break;
    }
    case 'concurrency':
      break;
  }
}

/**
 * Runs commands against the store and the reference store side by side, asserting exact
 * equality of every decision (allowed, tier, index, retryAfter, limit, remaining) and
 * every peek, that a rejected call leaves the store's state untouched, and at the end
 * that every key kept its algorithm's bound.
 */
function modelRun(maxKeysFor: (keys: number) => number) {
  return fc.property(planSetup, fc.integer({ min: 0, max: 80_000_000 }), commands, (setup, start, run) => {
    let now = start;
    const probe = new MemoryRateLimitStore();
    const keys = distinctKeys(buildPlans(probe, setup));
    const maxKeys = maxKeysFor(keys);
    const store = new MemoryRateLimitStore({ maxKeys, clock: () => ms(now) });
    const plans = buildPlans(store, setup);
    const ref = new RefStore();
    let rejected: { plan: RateLimitPlan; retryAfter: number } | undefined;
    const admitted = new Map<string, { spec: TierSpec; list: Admission[] }>();

    const consume = (plan: RateLimitPlan): RateLimitDecision => {
      const before = storeSnapshot(store);
      const decision = store.consume(plan) as RateLimitDecision;
      checkSame(decision, ref.consume(plan, now), `decision for ${plan.tracker} at ${ms(now)} ms`);
      if (decision.allowed) {
        rejected = undefined;
        for (const { key, spec } of plan.tiers) {
          const entry = admitted.get(key) ?? { spec, list: [] };
          entry.list.push({ at: now, cost: spec.cost });
          admitted.set(key, entry);
        }
      } else {
        checkSame(storeSnapshot(store), before, 'store state after a rejection');
        const wait = decision.retryAfter;
        check(Number.isInteger(wait) && wait >= 1, () => `retryAfter ${wait} is not a whole number >= 1`);
        rejected = { plan, retryAfter: wait };
      }
      check(store.size <= maxKeys, () => `${store.size} keys held, maxKeys ${maxKeys}`);
      return decision;
    };

    for (const command of run) {
      switch (command.kind) {
        case 'advance':
          now += command.ticks;
          if (command.ticks > 0) rejected = undefined;
          break;
        case 'consume':
          consume(plans[command.pick % plans.length]!);
          break;
        case 'peek': {
          const plan = plans[command.pick % plans.length]!;
          const before = storeSnapshot(store);
          checkSame(store.peek(plan), ref.peek(plan, now), `peek for ${plan.tracker} at ${ms(now)} ms`);
          checkSame(storeSnapshot(store), before, 'store state after a peek');
          break;
        }
        case 'jumpWallClock':
          wallClock += command.forward ? HOUR : -HOUR;
          break;
        case 'retry':
          if (rejected) {
            const { plan, retryAfter } = rejected;
            now += retryAfter * TICKS_PER_MS;
            check(consume(plan).allowed, () => `retry after ${retryAfter} ms refused`);
          }
          break;
      }
    }
    for (const [key, { spec, list }] of admitted) checkBounds(key, spec, list);
  });
}

describe('MemoryRateLimitStore against a reference model (multi-tier, all-or-nothing)', () => {
  beforeEach(() => {
    jest.spyOn(Date, 'now').mockImplementation(() => wallClock);
  });
  afterEach(() => {
    jest.restoreAllMocks();
  });

  it('decides exactly as the reference store: allowed/rejected, tier, retryAfter, remaining, peek', () => {
    fc.assert(
      modelRun(() => 100_000),
      fcParams(250),
    );
  });

  it('decides exactly as the reference store when maxKeys equals the keys in use (nothing needs evicting)', () => {
    fc.assert(
      modelRun((keys) => keys),
      fcParams(250),
    );
  });

  it('C-29: a blocked plan reports a retryAfter that never grows, and passes exactly when it says', () => {
    const waits = fc.array(
      fc.oneof(
        fc.constant(0),
        fc.integer({ min: 1, max: 7 }),
        fc.integer({ min: 1, max: 400 }).map((n) => n * 8),
      ),
      { minLength: 1, maxLength: 200, size: 'max' },
    );
    fc.assert(
      fc.property(planSetup, fc.nat(), fc.integer({ min: 0, max: 80_000_000 }), waits, (setup, pick, start, steps) => {
        let now = start;
        const store = new MemoryRateLimitStore({ clock: () => ms(now) });
        const plans = buildPlans(store, setup);
        const plan = plans[pick % plans.length]!;
        let decision = store.consume(plan) as RateLimitDecision;
        for (let i = 0; i < 1000 && decision.allowed; i++) decision = store.consume(plan) as RateLimitDecision;
        expect(decision.allowed).toBe(false);
        let last = decision as RateLimitRejected;
        // The plan passes from an unknown time T (ticks). Each rejection at `now` with
        // `retryAfter = w` says T <= now + w ms (a retry then succeeds) and T > now + (w - 1) ms
        // (one ms earlier would not): keep the bounds, check every decision against them.
        let low = now + (last.retryAfter - 1) * TICKS_PER_MS;
        let high = now + last.retryAfter * TICKS_PER_MS;
        for (const step of steps) {
          now += step;
          const before = storeSnapshot(store);
          const next = store.consume(plan) as RateLimitDecision;
          check(now < high || next.allowed, () => `refused at ${ms(now)} ms, past the promised ${ms(high)} ms`);
          check(now > low || !next.allowed, () => `allowed at ${ms(now)} ms, before ${ms(low)} ms`);
          if (next.allowed) return;
          checkSame(storeSnapshot(store), before, 'store state after a rejection');
          const rejected = next as RateLimitRejected;
          check(
            rejected.retryAfter <= last.retryAfter,
            () => `retryAfter grew: ${last.retryAfter} -> ${rejected.retryAfter}`,
          );
          low = Math.max(low, now + (rejected.retryAfter - 1) * TICKS_PER_MS);
          high = Math.min(high, now + rejected.retryAfter * TICKS_PER_MS);
          // No wobble: the promised times stay consistent, differing by less than 1 ms.
          check(low < high, () => `inconsistent retryAfter: passes after ${ms(low)} ms and by ${ms(high)} ms`);
          last = rejected;
        }
      }),
      fcParams(250),
    );
  });
});

describe('C-29: wall-clock jumps do not move limits', () => {
  afterEach(() => {
    jest.restoreAllMocks();
  });

  const plan = (store: MemoryRateLimitStore): RateLimitPlan => {
    const spec = tokenBucketSpec('type', 't:chat', 3, 1);
    return { tracker: 'conn:1', tiers: [{ key: store.key('conn:1', spec.suffix), spec }] };
  };

  it('with an injected monotonic clock, Date.now stepping by an hour either way changes no decision', () => {
    let wall = Date.now();
    jest.spyOn(Date, 'now').mockImplementation(() => wall);
    let now = 5_000;
    const jumped = new MemoryRateLimitStore({ clock: () => now });
    const steady = new MemoryRateLimitStore({ clock: () => now });
    const schedule = [0, 0, 0, 0, 250, 250, 500, 0, 1000, 0, 0, 1, 999, 3000, 0, 0, 0, 0];
    schedule.forEach((advance, i) => {
      now += advance;
      wall += i % 2 === 0 ? HOUR : -2 * HOUR;
      expect(jumped.consume(plan(jumped))).toEqual(steady.consume(plan(steady)));
    });
  });

  it('with the default clock (performance.now), a forward jump gives no burst and a backward jump no lockout', () => {
    let wall = Date.now();
    jest.spyOn(Date, 'now').mockImplementation(() => wall);
    const store = new MemoryRateLimitStore();
    const spec = tokenBucketSpec('type', 't:slow', 2, 0.001); // one token per 1,000,000 ms
    const slow: RateLimitPlan = { tracker: 'conn:1', tiers: [{ key: store.key('conn:1', spec.suffix), spec }] };
    expect(store.consume(slow).allowed).toBe(true);
    expect(store.consume(slow).allowed).toBe(true);
    const blocked = store.consume(slow) as RateLimitRejected;
    expect(blocked.allowed).toBe(false);
    wall += HOUR;
    const afterForward = store.consume(slow) as RateLimitRejected;
    expect(afterForward.allowed).toBe(false);
    expect(afterForward.retryAfter).toBeGreaterThan(1_000_000 - 60_000);
    expect(afterForward.retryAfter).toBeLessThanOrEqual(blocked.retryAfter);
    wall -= 2 * HOUR;
    const afterBackward = store.consume(slow) as RateLimitRejected;
    expect(afterBackward.allowed).toBe(false);
    expect(afterBackward.retryAfter).toBeLessThanOrEqual(afterForward.retryAfter);
  });
});

describe('C-7: per-type buckets under a shared global bucket, exact counts', () => {
  // global C=10 r=5; typing C=5 r=2; chat C=5 r=2 (and a third type to show the global cap).
  let now = 0;
  const store = () => new MemoryRateLimitStore({ clock: () => now });
  const plansOf = (s: MemoryRateLimitStore) => {
    const global = tokenBucketSpec('global', 'g', 10, 5);
    const make = (type: string): RateLimitPlan => {
      const spec = tokenBucketSpec('type', `t:${type}`, 5, 2);
      return {
        tracker: 'conn:1',
        tiers: [
          { key: s.key('conn:1', global.suffix), spec: global },
          { key: s.key('conn:1', spec.suffix), spec },
        ],
      };
    };
    return { typing: make('typing'), chat: make('chat'), presence: make('presence') };
  };
  const admit = (s: MemoryRateLimitStore, plan: RateLimitPlan, n: number): number => {
    let admitted = 0;
    for (let i = 0; i < n; i++) if (s.consume(plan).allowed) admitted++;
    return admitted;
  };

  it('a typing flood never spends chat: 5 typing, then still 5 chat, at the same instant', () => {
    now = 1_000;
    const s = store();
    const { typing, chat } = plansOf(s);
    expect(admit(s, typing, 10_000)).toBe(5);
    const refused = s.consume(typing) as RateLimitRejected;
    expect(refused).toMatchObject({ allowed: false, tier: 'type', index: 1, retryAfter: 500, remaining: 0 });
    expect(s.peek(chat)).toEqual([
      { tier: 'global', limit: 10, remaining: 5, resetIn: 1000 },
      { tier: 'type', limit: 5, remaining: 5, resetIn: 0 },
    ]);
    expect(admit(s, chat, 100)).toBe(5);
  });

  it('over 5 s of a 10,000/s typing flood and 100/s of chat: typing 5 + 2*5 = 15, chat 5 + 2*5 = 15', () => {
    now = 0;
    const s = store();
    const { typing, chat } = plansOf(s);
    let typed = 0;
    let chatted = 0;
    // Every 0.1 ms a typing message, every 10 ms a chat message, for 5 s (t = 0 .. 5000 ms).
    for (let tick = 0; tick <= 50_000; tick++) {
      now = tick / 10;
      if (s.consume(typing).allowed) typed++;
      if (tick % 100 === 0 && s.consume(chat).allowed) chatted++;
    }
    expect(typed).toBe(15);
    expect(chatted).toBe(15);
  });

  it('the global cap applies to every type: chat refused by the global tier while its own bucket is full', () => {
    now = 0;
    const s = store();
    const { typing, chat, presence } = plansOf(s);
    expect(admit(s, typing, 100)).toBe(5);
    expect(admit(s, presence, 100)).toBe(5);
    const refused = s.consume(chat) as RateLimitRejected;
    expect(refused).toMatchObject({
      allowed: false,
      tier: 'global',
      index: 0,
      retryAfter: 200,
      limit: 10,
      remaining: 0,
    });
    expect(s.peek(chat)[1]).toEqual({ tier: 'type', limit: 5, remaining: 5, resetIn: 0 });
    now = 200;
    expect(admit(s, chat, 100)).toBe(1);
    now = 1_000;
    // 800 ms later the global bucket holds 4 tokens; chat's own is full again (5).
    expect(admit(s, chat, 100)).toBe(4);
  });
});
