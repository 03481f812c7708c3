import { describe, expect, it } from '@jest/globals';
import type { RateLimitPlan } from '../../lib/interfaces/plan.interface.js';
import { createPlan, planOf, PLAN_SHAPE } from '../../lib/plans/create-plan.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import { fullGc } from './support/heap.js';

/** A memory store that counts the key strings it is asked to build. */
class CountingStore extends MemoryRateLimitStore {
  keys = 0;
  override key(tracker: string, suffix: string): string {
    this.keys++;
    return super.key(tracker, suffix);
  }
}

const global = tokenBucketSpec('global', 'g', 3, 0.001);
const chat = tokenBucketSpec('type', 't:chat', 2, 0.001);

describe('createPlan: a tracker and a shared shape, tiers built on first read', () => {
  it('reads as before: tiers with the store-made keys, frozen, the same array on every read', () => {
    const store = new MemoryRateLimitStore();
    const plan = createPlan(store, 'conn:1', [global, chat], 'lease-a');
    expect(plan.tracker).toBe('conn:1');
    expect(plan.lease).toBe('lease-a');
    expect(plan.tiers).toEqual([
      { key: store.key('conn:1', 'g'), spec: global },
      { key: store.key('conn:1', 't:chat'), spec: chat },
    ]);
    expect(Object.isFrozen(plan.tiers)).toBe(true);
    expect(Object.isFrozen(plan.tiers[0])).toBe(true);
    expect(plan.tiers).toBe(plan.tiers);
    const facts = planOf(store, 'conn:1', [global], { type: 'chat', connectionKeyed: true });
    expect(facts).toMatchObject({ tracker: 'conn:1', type: 'chat', connectionKeyed: true });
    expect(createPlan(store, 'conn:1', [global]).type).toBeUndefined();
  });

  it('the memory store decides from the specs: no key string is built, however many decisions', () => {
    const store = new CountingStore();
    const plans = Array.from({ length: 100 }, (_, i) => createPlan(store, `conn:${i}`, [global, chat]));
    for (const plan of plans) for (let i = 0; i < 3; i++) store.consume(plan);
    expect(store.keys).toBe(0);
    // The second chat message was the last the type tier admits.
    expect(store.consume(plans[0]!)).toMatchObject({ allowed: false, tier: 'type' });
    expect(store.peek(plans[0]!).map((status) => status.remaining)).toEqual([1, 0]);
    store.release(plans[0]!);
    expect(store.keys).toBe(0);
  });

  it('a plan from createPlan and a hand-made plan with the same keys share their states', () => {
    const store = new MemoryRateLimitStore();
    const kept = createPlan(store, 'conn:7', [global]);
    const byHand: RateLimitPlan = { tracker: 'conn:7', tiers: [{ key: store.key('conn:7', 'g'), spec: global }] };
    expect(store.consume(kept).allowed).toBe(true);
    expect(store.consume(byHand).allowed).toBe(true);
    expect(store.consume(kept).allowed).toBe(true);
    expect(store.consume(byHand)).toMatchObject({ allowed: false, remaining: 0 });
    expect(store.size).toBe(1);
    // delete() by the key forgets the state both plans spend.
    store.delete([kept.tiers[0]!.key]);
    expect(store.size).toBe(0);
    expect(store.consume(kept).allowed).toBe(true);
  });

  it('plans of one frozen specs array, facts and store share one shape; a changed array gets its own', () => {
    const store = new MemoryRateLimitStore();
    const other = new MemoryRateLimitStore();
    const frozen = Object.freeze([global, chat]);
    const shapeOf = (plan: RateLimitPlan) => (plan as unknown as Record<typeof PLAN_SHAPE, unknown>)[PLAN_SHAPE];
    const a = planOf(store, 'conn:1', frozen, { type: 'chat' });
    expect(shapeOf(planOf(store, 'conn:2', frozen, { type: 'chat' }))).toBe(shapeOf(a));
    expect(shapeOf(planOf(store, 'conn:2', frozen, { type: 'other' }))).not.toBe(shapeOf(a));
    expect(shapeOf(planOf(other, 'conn:2', frozen, { type: 'chat' }))).not.toBe(shapeOf(a));

    const mutable = [global];
    const before = createPlan(store, 'conn:3', mutable);
    expect(shapeOf(createPlan(store, 'conn:4', mutable))).toBe(shapeOf(before));
    mutable.push(chat);
    const after = createPlan(store, 'conn:5', mutable);
    expect(after.tiers.map((tier) => tier.spec)).toEqual([global, chat]);
    // A plan made before the change keeps the specs it was made with.
    expect(before.tiers.map((tier) => tier.spec)).toEqual([global]);
  });

  // Before: shapes were kept by specs array alone, each holding its store, so the last eight
  // stores that planned a long-lived specs array stayed in memory with all their trackers (in
  // `npm run bench`'s new-tracker column a quarter of the time went to collecting them).
  it('a store dropped after planning is collected while the specs array lives on', async () => {
    const gc = fullGc();
    if (gc === undefined) throw new Error('this test needs a garbage collector it can call (--expose-gc)');
    const specs = Object.freeze([global, chat]);
    // Made in a function of their own: a suspended async function keeps its last locals.
    const planned = (): WeakRef<MemoryRateLimitStore> => {
      const store = new MemoryRateLimitStore();
      for (let t = 0; t < 100; t++) store.consume(createPlan(store, `conn:${t}`, specs));
      return new WeakRef(store);
    };
    const dropped = [planned(), planned(), planned()];
    const kept = new MemoryRateLimitStore();
    const plan = createPlan(kept, 'conn:1', specs);
    // WeakRef targets are held until the end of the current job.
    await new Promise((resolve) => setImmediate(resolve));
    gc();
    gc();
    expect(dropped.map((ref) => ref.deref() === undefined)).toEqual([true, true, true]);
    expect(kept.consume(plan).allowed).toBe(true);
    expect(specs).toHaveLength(2);
  });

  it('a frozen plan still reads its tiers and is decided (the store keeps nothing on it)', () => {
    const store = new CountingStore();
    const plan = Object.freeze(createPlan(store, 'conn:9', [global]));
    expect(plan.tiers).toEqual([{ key: store.key('conn:9', 'g'), spec: global }]);
    expect([1, 2, 3, 4].map(() => store.consume(plan).allowed)).toEqual([true, true, true, false]);
  });
});
