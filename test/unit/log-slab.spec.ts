import { describe, expect, it } from '@jest/globals';
import {
  PACKED_LOG_HEADER,
  type LogWindow,
  packedLogCount,
  packedLogInitialSize,
  packedLogRecord,
  packedLogRoom,
  packedLogSize,
} from '../../lib/algorithms/sliding-log.js';
import { createPlan } from '../../lib/plans/create-plan.js';
import type { RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { LOG_PAGE_MASK, LogSlab } from '../../lib/storage/memory/log-slab.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';

/** The memory store's slab of packed sliding logs (`LogSlab`), and the store's use of it. */
describe('LogSlab', () => {
  it('adds pages as logs need them, never moves a log by itself, and reuses freed space per size', () => {
    const logs = new LogSlab();
    const offsets: number[] = [];
    const limitOf = (i: number): number => 1 + (i % 16);
    // About 1,100 logs of up to 19 doubles: past the first page of 4,096 doubles.
    for (let i = 0; i < 1100; i++) {
      const at = logs.alloc(limitOf(i));
      packedLogRecord(logs.pageOf(at), at & LOG_PAGE_MASK, 1000 + i, {
        windowMs: 10,
        limit: limitOf(i),
        cost: limitOf(i),
      });
      offsets.push(at);
    }
    expect(logs.pages.length).toBeGreaterThan(2);
    expect(logs.doubles).toBe(logs.pages.length * (LOG_PAGE_MASK + 1));
    // No log straddles two pages, and every one still holds its own entries.
    offsets.forEach((at, i) => {
      expect((at & LOG_PAGE_MASK) + PACKED_LOG_HEADER + limitOf(i)).toBeLessThanOrEqual(LOG_PAGE_MASK + 1);
      const page = logs.pageOf(at);
      expect(page[(at & LOG_PAGE_MASK) + 2]).toBe(limitOf(i));
      expect(packedLogCount(page, at & LOG_PAGE_MASK, 1000 + i, 10)).toBe(limitOf(i));
    });
    const inUse = logs.doublesInUse;
    expect(inUse).toBe(offsets.reduce((sum, _at, i) => sum + PACKED_LOG_HEADER + limitOf(i), 0));
    const pages = logs.pages.length;
    // Freed logs are reused by logs of the same size, fresh: no page is added.
    for (const at of offsets.slice(0, 50)) logs.release(at);
    expect(logs.doublesInUse).toBeLessThan(inUse);
    for (let i = 0; i < 50; i++) {
      const at = logs.alloc(limitOf(i));
      expect(offsets.slice(0, 50)).toContain(at);
      expect(logs.pageOf(at)[(at & LOG_PAGE_MASK) + 1]).toBe(0);
    }
    expect(logs.doublesInUse).toBe(inUse);
    expect(logs.pages.length).toBe(pages);
    logs.clear();
    expect([logs.doublesInUse, logs.doubles]).toEqual([0, 0]);
  });

  it('a log whose ring must grow moves: its entries go along, its old place is reused', () => {
    const logs = new LogSlab();
    const first = logs.alloc(4);
    const neighbour = logs.alloc(4);
    packedLogRecord(logs.pageOf(neighbour), neighbour & LOG_PAGE_MASK, 7, { windowMs: 10, limit: 4, cost: 4 });
    const page = logs.pageOf(first);
    const off = first & LOG_PAGE_MASK;
    // 4 events (the ring is full), then 2 more need a ring of 8 (for a window of 16).
    const window = (cost: number): LogWindow => ({ windowMs: 1000, limit: 16, cost });
    packedLogRecord(page, off, 100, window(1));
    packedLogRecord(page, off, 101, window(3));
    expect(packedLogRoom(page, off, 102, window(2))).toBe(8);
    const moved = logs.copy(first, 8);
    logs.release(first);
    expect(moved).not.toBe(first);
    const to = logs.pageOf(moved);
    packedLogRecord(to, moved & LOG_PAGE_MASK, 102, window(2));
    expect(packedLogSize(to, moved & LOG_PAGE_MASK)).toBe(8);
    expect(packedLogCount(to, moved & LOG_PAGE_MASK, 102, 1000)).toBe(6);
    expect(packedLogCount(to, moved & LOG_PAGE_MASK, 101.5, 1.2)).toBe(5);
    expect(logs.doublesInUse).toBe(PACKED_LOG_HEADER * 2 + 8 + 4);
    // The neighbour is untouched; the old place goes to the next log of 4.
    expect(packedLogCount(logs.pageOf(neighbour), neighbour & LOG_PAGE_MASK, 7, 10)).toBe(4);
    expect(logs.alloc(4)).toBe(first);
    // Expired entries make room before a ring grows: the same 4 events, long after.
    const aged = logs.alloc(4);
    packedLogRecord(logs.pageOf(aged), aged & LOG_PAGE_MASK, 100, window(4));
    expect(packedLogRoom(logs.pageOf(aged), aged & LOG_PAGE_MASK, 5000, window(2))).toBe(4);
    expect(packedLogCount(logs.pageOf(aged), aged & LOG_PAGE_MASK, 5000, 1000)).toBe(0);
  });

  it('a store under tracker churn gives evicted trackers’ logs back: the slab stays at the live logs', () => {
    const store = new MemoryRateLimitStore({ maxKeys: 3_000 });
    const specs = [tokenBucketSpec('global', 'g', 100, 50), windowSpec('expensive', 'x', 'sliding-log', 5, 60_000)];
    for (let i = 0; i < 50_000; i++) expect(store.consume(createPlan(store, `conn:${i}`, specs)).allowed).toBe(true);
    const logs = (store as unknown as { table: { logs: LogSlab } }).table.logs;
    // 1,500 trackers fit (2 tier states each); each holds one packed log for a window of 5,
    // one event in a ring of 4.
    const each = PACKED_LOG_HEADER + packedLogInitialSize(5);
    expect(each).toBe(PACKED_LOG_HEADER + 4);
    expect(store.trackers).toBeLessThanOrEqual(1_500);
    expect(logs.doublesInUse).toBe(store.trackers * each);
    expect(logs.doubles).toBeLessThanOrEqual(1_501 * each + LOG_PAGE_MASK + 1);
    // Deleting a tracker frees its log too.
    store.deleteTracker('conn:49999');
    expect(logs.doublesInUse).toBe(store.trackers * each);
  });

  it('logs past 16 entries stay objects; both decide alike through the store', () => {
    const store = new MemoryRateLimitStore({ clock: () => 0 });
    const small = createPlan(store, 'a', [windowSpec('expensive', 'x', 'sliding-log', 16, 1000)]);
    const large = createPlan(store, 'b', [windowSpec('expensive', 'x', 'sliding-log', 17, 1000)]);
    let smallAdmitted = 0;
    let largeAdmitted = 0;
    for (let i = 0; i < 40; i++) {
      if (store.consume(small).allowed) smallAdmitted++;
      if (store.consume(large).allowed) largeAdmitted++;
    }
    expect([smallAdmitted, largeAdmitted]).toEqual([16, 17]);
    const table = (store as unknown as { table: { slotCount: number; stateOf(slot: number): unknown } }).table;
    const states = (): unknown[] => Array.from({ length: table.slotCount }, (_, slot) => table.stateOf(slot));
    expect(states().filter((state) => typeof state === 'number')).toHaveLength(1);
    expect(states().filter((state) => typeof state === 'object' && state !== null)).toHaveLength(1);
    expect(store.consume(small)).toMatchObject({ allowed: false, retryAfter: 1000, remaining: 0, limit: 16 });
    // A spec made by hand with a limit that is not whole (windowSpec refuses one) stays an object.
    const odd = { ...windowSpec('expensive', 'x', 'sliding-log', 2, 1000), limit: 2.5 } as TierSpec;
    const oddPlan: RateLimitPlan = { tracker: 'c', tiers: [{ key: store.key('c', 'x'), spec: odd }] };
    expect([store.consume(oddPlan).allowed, store.consume(oddPlan).allowed]).toEqual([true, true]);
    // Two held, a third does not fit in 2.5: it may come when the oldest leaves the window.
    expect(store.consume(oddPlan)).toMatchObject({ allowed: false, retryAfter: 1000, remaining: 0, limit: 2.5 });
    expect(states().filter((state) => typeof state === 'number')).toHaveLength(1);
    expect(store.consume(large)).toMatchObject({ allowed: false, retryAfter: 1000, remaining: 0, limit: 17 });
  });
});
