import { describe, expect, it } from '@jest/globals';
import { nextBatchSize } from '../../lib/storage/redis/batch-sizing.js';

describe('nextBatchSize (token reservations)', () => {
  const alone = { alone: true, more: 1000 };
  const none = { spendable: Infinity };

  it('doubles while the instance is alone and far from the limit, from 1 to 2 and up to maxBatch', () => {
    let size = 1;
    const seen: number[] = [];
    for (let i = 0; i < 10; i++) {
      size = nextBatchSize({ asked: size, granted: size, ...alone, ...none }, 64);
      seen.push(size);
    }
    expect(seen).toEqual([2, 4, 8, 16, 32, 64, 64, 64, 64, 64]);
  });

  it('falls to 1 under contention, whatever the size', () => {
    expect(nextBatchSize({ asked: 32, granted: 32, alone: false, more: 1000, ...none }, 64)).toBe(1);
    expect(nextBatchSize({ asked: 1, granted: 1, alone: false, more: 1000, ...none }, 64)).toBe(1);
  });

  it('keeps the size (at least 2) when not alone but its own per-call decisions may have moved the bucket', () => {
    const own = { alone: false, more: 1000, ownPerCall: true, ...none };
    expect(nextBatchSize({ asked: 2, granted: 2, ...own }, 64)).toBe(2);
    // A probe from a size of 1: the next call, a reservation with no per-call decision before it, can tell.
    expect(nextBatchSize({ asked: 1, granted: 1, ...own }, 64)).toBe(2);
    // A later reply set a larger size meanwhile: kept.
    expect(nextBatchSize({ asked: 1, granted: 1, ...own, current: 8 }, 64)).toBe(8);
    // Still at most half of what is left and maxBatch, and 1 near the limit.
    expect(nextBatchSize({ asked: 16, granted: 16, ...own, more: 10 }, 64)).toBe(5);
    expect(nextBatchSize({ asked: 16, granted: 16, ...own }, 8)).toBe(8);
    expect(nextBatchSize({ asked: 16, granted: 5, ...own, more: 3 }, 64)).toBe(1);
    expect(nextBatchSize({ asked: 16, granted: 16, alone: false, more: 1000, ownPerCall: false, ...none }, 64)).toBe(1);
  });

  it('falls to 1 when the buckets could not fill the ask (near the limit)', () => {
    expect(nextBatchSize({ asked: 16, granted: 5, alone: true, more: 3, ...none }, 64)).toBe(1);
    expect(nextBatchSize({ asked: 16, granted: 5, alone: true, more: 15, ...none }, 64)).toBe(1);
  });

  it('keeps growing when only the TTL cut the grant (as many slots as asked still free)', () => {
    expect(nextBatchSize({ asked: 16, granted: 5, ...alone, ...none }, 64)).toBe(32);
    expect(nextBatchSize({ asked: 16, granted: 5, alone: true, more: 16, ...none }, 64)).toBe(8);
  });

  it('falls to 1 when a deciding call got only its own slot, the TTL cutting the rest (slots running more than ttlMs ahead)', () => {
    expect(nextBatchSize({ asked: 16, granted: 1, ...alone, ...none, decides: true }, 64)).toBe(1);
    // A background call's slots start after the current batch: a cut there keeps the size.
    expect(nextBatchSize({ asked: 16, granted: 1, ...alone, ...none, decides: false }, 64)).toBe(32);
    expect(nextBatchSize({ asked: 16, granted: 2, ...alone, ...none, decides: true }, 64)).toBe(32);
  });

  it('never above what the TTL can grant one call (1 for a span longer than ttlMs: every decision one call)', () => {
    expect(nextBatchSize({ asked: 16, granted: 16, ...alone, ...none, ttlSlots: 11 }, 64)).toBe(11);
    expect(nextBatchSize({ asked: 1, granted: 1, ...alone, ...none, ttlSlots: 1 }, 64)).toBe(1);
    expect(nextBatchSize({ asked: 2, granted: 2, ...alone, ...none, ttlSlots: 1000 }, 64)).toBe(4);
  });

  it('never asks for more than half of what is left, so it shrinks to 1 as the bucket empties', () => {
    expect(nextBatchSize({ asked: 16, granted: 16, alone: true, more: 20, ...none }, 64)).toBe(10);
    expect(nextBatchSize({ asked: 8, granted: 8, alone: true, more: 5, ...none }, 64)).toBe(2);
    expect(nextBatchSize({ asked: 2, granted: 2, alone: true, more: 1, ...none }, 64)).toBe(1);
    expect(nextBatchSize({ asked: 2, granted: 2, alone: true, more: 0, ...none }, 64)).toBe(1);
  });

  it('stays at 1 when even the largest batch would lapse before 2 decisions (too rare for the bucket rate)', () => {
    expect(nextBatchSize({ asked: 4, granted: 4, alone: true, more: 1000, spendable: 1.5 }, 64)).toBe(1);
    expect(nextBatchSize({ asked: 1, granted: 1, alone: true, more: 1000, spendable: 0.002 }, 64)).toBe(1);
    expect(nextBatchSize({ asked: 4, granted: 4, alone: true, more: 1000, spendable: 2 }, 64)).toBe(8);
  });

  it('keeps to maxBatch, also a maxBatch of 1 (every decision one call)', () => {
    expect(nextBatchSize({ asked: 48, granted: 48, ...alone, ...none }, 50)).toBe(50);
    expect(nextBatchSize({ asked: 1, granted: 1, ...alone, ...none }, 1)).toBe(1);
  });
});
