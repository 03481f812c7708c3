import { describe, expect, it } from '@jest/globals';
import { windowSpec } from '../../lib/plans/tier-specs.js';

describe('windowSpec', () => {
  it('a sliding log keeps one entry per unit: its limit and its cost must be whole', () => {
    expect(() => windowSpec('expensive', 'x', 'sliding-log', 4.5, 1000)).toThrow("a log's limit must be whole");
    expect(() => windowSpec('expensive', 'x', 'sliding-log', 4, 1000, 1.5)).toThrow("a log's cost must be whole");
    expect(windowSpec('expensive', 'x', 'sliding-log', 4, 1000, 2)).toMatchObject({ limit: 4, cost: 2 });
  });

  it('a sliding counter takes fractional figures', () => {
    expect(windowSpec('expensive', 'x', 'sliding-counter', 4.5, 1000, 1.5)).toMatchObject({ limit: 4.5, cost: 1.5 });
  });
});
