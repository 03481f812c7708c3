import { describe, expect, it } from '@jest/globals';
import { PACKED_LOG_HEADER, packedLogCount, packedLogRecord } from '../../lib/algorithms/sliding-log.js';
import { createPlan } from '../../lib/plans/create-plan.js';
import { tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { LogSlab } from '../../lib/storage/memory/log-slab.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';

/** The memory store's slab of packed sliding logs (`LogSlab`), and the store's use of it. */
describe('LogSlab', () => {
  it('keeps every log where it was when it grows, and reuses freed space per limit', () => {
    const logs = new LogSlab(16);
    const offsets: number[] = [];
    for (let i = 0; i < 200; i++) {
      const limit = 1 + (i % 16);
      const at = logs.alloc(limit);
      packedLogRecord(logs.slab, at, 1000 + i, limit);
      offsets.push(at);
    }
    // Grown many times over; every log still holds its own entries.
    expect(logs.slab.length).toBeGreaterThanOrEqual(logs.doublesInUse);
    offsets.forEach((at, i) => {
      expect(logs.slab[at + 2]).toBe(1 + (i % 16));
      expect(packedLogCount(logs.slab, at, 1000 + i, 10)).toBe(1 + (i % 16));
    });
    const inUse = logs.doublesInUse;
    const length = logs.slab.length;
    // Freed logs are reused by logs of the same limit, fresh: the slab does not grow.
    for (const at of offsets.slice(0, 50)) logs.release(at);
    expect(logs.doublesInUse).toBeLessThan(inUse);
    for (let i = 0; i < 50; i++) {
      const at = logs.alloc(1 + (i % 16));
      expect(offsets.slice(0, 50)).toContain(at);
      expect(logs.slab[at + 1]).toBe(0);
    }
    expect(logs.doublesInUse).toBe(inUse);
    expect(logs.slab.length).toBe(length);
    logs.clear();
    expect(logs.doublesInUse).toBe(0);
  });

  it('a store under tracker churn gives evicted trackers’ logs back: the slab stays at the live logs', () => {
    const store = new MemoryRateLimitStore({ maxKeys: 3_000 });
    const specs = [tokenBucketSpec('global', 'g', 100, 50), windowSpec('expensive', 'x', 'sliding-log', 5, 60_000)];
    for (let i = 0; i < 50_000; i++) expect(store.consume(createPlan(store, `conn:${i}`, specs)).allowed).toBe(true);
    const logs = (store as unknown as { table: { logs: LogSlab } }).table.logs;
    // 1,500 trackers fit (2 tier states each); each holds one packed log of 5.
    expect(store.trackers).toBeLessThanOrEqual(1_500);
    expect(logs.doublesInUse).toBe(store.trackers * (PACKED_LOG_HEADER + 5));
    expect(logs.slab.length).toBeLessThanOrEqual(2 * 1_501 * (PACKED_LOG_HEADER + 5));
    // Deleting a tracker frees its log too.
    store.deleteTracker('conn:49999');
    expect(logs.doublesInUse).toBe(store.trackers * (PACKED_LOG_HEADER + 5));
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
    const table = (store as unknown as { table: { objects: unknown[] } }).table;
    expect(table.objects.filter((state) => typeof state === 'number')).toHaveLength(1);
    expect(table.objects.filter((state) => typeof state === 'object' && state !== null)).toHaveLength(1);
    expect(store.consume(small)).toMatchObject({ allowed: false, retryAfter: 1000, remaining: 0, limit: 16 });
    expect(store.consume(large)).toMatchObject({ allowed: false, retryAfter: 1000, remaining: 0, limit: 17 });
  });
});
