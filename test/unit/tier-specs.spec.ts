import { describe, expect, it } from '@jest/globals';
import { resolveOptions } from '../../lib/config/resolve-options.js';
import { RouteResolver } from '../../lib/plans/route-resolver.js';
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

describe('RouteResolver memory', () => {
  it('remembers at most 1,024 types named from code (names may come from clients), and still limits the rest', () => {
    const routes = new RouteResolver(resolveOptions({ useEnv: false }));
    for (let i = 0; i < 5000; i++) {
      const specs = routes.specsFor(`client-chosen-${i}`, false, 1 + (i % 7) / 10);
      expect(specs.map((spec) => spec.tier)).toEqual(['global', 'type']);
    }
    expect(routes.knownTypes().length).toBe(1024);
    // A type past the bound gets the configured figures all the same, in the one bucket such
    // types share (its own bucket, before: one state per name a client sent).
    expect(routes.typeSpec('client-chosen-4999', 1)).toMatchObject({ limit: 20, suffix: '@20/10:t:(other)' });
    expect(routes.specsFor('client-chosen-4998', false, 1)[1]).toMatchObject({ limit: 20, suffix: '@20/10:t:(other)' });
    // The first 1,024 keep their own.
    expect(routes.typeSpec('client-chosen-0', 1)).toMatchObject({ suffix: '@20/10:t:client-chosen-0' });
  });
});
