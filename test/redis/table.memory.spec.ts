import { describe, expect, it } from '@jest/globals';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import { expectedOutcomes, runScenario, SCENARIOS, type ManualClock } from './decision-table.js';

describe('decision table: memory store', () => {
  const clock: ManualClock = { now: 0 };
  const store = new MemoryRateLimitStore({ clock: () => clock.now });

  it.each(SCENARIOS.map((scenario) => [scenario.name, scenario] as const))('%s', async (_name, scenario) => {
    expect(await runScenario(store, clock, scenario, 'memory')).toEqual(expectedOutcomes(scenario));
  });
});
