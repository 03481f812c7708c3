import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import type { Redis } from 'ioredis';
import { AlgorithmKind, type RateLimitPlan, type TierSpec } from '../../lib/interfaces/plan.interface.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import type { RateLimitStore } from '../../lib/storage/rate-limit-store.js';
import { fieldTtlRedisServer, startRedis, type RedisServer } from '../support/redis-server.js';
import { expectedOutcomes, runScenario, SCENARIOS, T0, type ManualClock } from './decision-table.js';
import { adminClient, closeClient, expectBoundedTtls, ready, storeClient } from './helpers.js';

/** A server with hash-field TTLs (Redis 7.4+), when this machine has one (`.ci/redis-field-ttls`). */
const FIELD_TTLS = fieldTtlRedisServer();

/**
 * A store that writes hash-field TTLs the Redis 7.4 way (HSET, then HPEXPIRE) on a server
 * that also has HSETEX: its mode, read at start-up, set to 1 once the read is in.
 */
async function asRedis74(store: RedisRateLimitStore): Promise<void> {
  await store.evictionPolicyChecked;
  (store as unknown as { fieldTtls: number }).fieldTtls = 1;
}

/**
 * A store whose plan scripts all take their field names and field-TTL mode as arguments
 * (the kind plans get once a store has its fill of scripts with them written in).
 */
function shapeScriptsOnly(store: RedisRateLimitStore): RedisRateLimitStore {
  (store as unknown as { planScripts: { namedMax: number } }).planScripts.namedMax = 0;
  return store;
}

/**
 * Run three times: with plan scripts (the default: a consume script per plan shape and
 * field names, see `plan-scripts.ts`), with plan scripts taking the field names as
 * arguments, and with every plan on the generic script (`planScripts: 0`); the
 * random schedules also run with both kinds of store deciding one tracker's plans in turn.
 * On a server with hash-field TTLs, where there is one (else `field-ttls.redis.spec.ts`
 * says it was skipped), both again, and both writing them as on Redis 7.4.
 */
describe.each([
  ['plan scripts', undefined, undefined, false],
  ['plan scripts taking field names as arguments', -1, undefined, false],
  ['generic script', 0, undefined, false],
  ...(FIELD_TTLS === undefined
    ? []
    : ([
        ['plan scripts, hash-field TTLs', undefined, FIELD_TTLS, false],
        ['generic script, hash-field TTLs', 0, FIELD_TTLS, false],
        ['plan scripts, hash-field TTLs as on Redis 7.4', undefined, FIELD_TTLS, true],
        ['plan scripts taking field names as arguments, hash-field TTLs', -1, FIELD_TTLS, false],
        ['generic script, hash-field TTLs as on Redis 7.4', 0, FIELD_TTLS, true],
      ] as const)),
] as const)('decision table: Redis store (standalone, app clock, %s)', (_variant, scripts, binary, redis74) => {
  // -1: plan scripts of the kind taking field names as arguments only.
  const shapeOnly = scripts === -1;
  const planScripts = shapeOnly ? undefined : scripts;
  let server: RedisServer;
  let client: Redis;
  let admin: Redis;
  let store: RedisRateLimitStore;
  const clock: ManualClock = { now: T0 };
  const prefix = `table${scripts ?? ''}:`;

  beforeAll(async () => {
    server = await startRedis([], binary);
    client = storeClient(server.port);
    admin = adminClient(server.port);
    await Promise.all([ready(client), ready(admin)]);
    store = new RedisRateLimitStore({
      client,
      keyPrefix: prefix,
      clock: 'app',
      now: () => clock.now,
      blockCache: false,
      planScripts,
      // Generous: this file checks the math, not the latency.
      commandTimeoutMs: 2000,
    });
    if (shapeOnly) shapeScriptsOnly(store);
    await store.evictionPolicyChecked;
    if (binary !== undefined) expect(store.hashFieldTtls).toBe(true);
    if (redis74) await asRedis74(store);
  });

  afterAll(async () => {
    await store?.close();
    await closeClient(client);
    await closeClient(admin);
    await server?.stop();
  });

  it.each(SCENARIOS.map((scenario) => [scenario.name, scenario] as const))('%s', async (_name, scenario) => {
    expect(await runScenario(store, clock, scenario, `redis-${Date.now()}`)).toEqual(expectedOutcomes(scenario));
  });

  it.each([
    ['one store', false],
    ['this store and one of the other kind in turn', true],
  ] as const)(
    'agrees with the memory store on random schedules with fractional times and rates (%s)',
    async (_how, mixed) => {
      const bucketArb = fc
        .record({
          capacity: fc.integer({ min: 1, max: 6 }),
          rate: fc.constantFrom(0.3, 1, 2.5, 3, 7, 10 / 3),
          cost: fc.integer({ min: 1, max: 6 }),
        })
        .map(
          ({ capacity, rate, cost }) =>
            (suffix: string) =>
              tokenBucketSpec('global', suffix, capacity, rate, Math.min(cost, capacity)),
        );
      const windowArb = (algorithm: 'sliding-log' | 'sliding-counter') =>
        fc
          .record({
            limit: fc.integer({ min: 1, max: 5 }),
            window: fc.constantFrom(100, 333, 1000, 1234.5, 250.25),
            cost: fc.integer({ min: 1, max: 3 }),
          })
          .map(
            ({ limit, window, cost }) =>
              (suffix: string) =>
                windowSpec('expensive', suffix, algorithm, limit, window, Math.min(cost, limit)),
          );
      const concurrencyArb = fc
        .integer({ min: 1, max: 3 })
        .map((limit) => (suffix: string) => concurrencySpec('concurrency', suffix, limit));
      const specArb = fc.oneof(bucketArb, windowArb('sliding-log'), windowArb('sliding-counter'), concurrencyArb);
      const scheduleArb = fc.record({
        start: fc.double({ min: 0, max: 1, noNaN: true }),
        pool: fc.array(specArb, { minLength: 4, maxLength: 4 }),
        plans: fc.array(fc.shuffledSubarray([0, 1, 2, 3], { minLength: 1 }), { minLength: 3, maxLength: 3 }),
        steps: fc.array(
          fc.record({
            advance: fc.oneof(
              fc.constant(0),
              fc.integer({ min: 0, max: 1500 }),
              fc.double({ min: 0, max: 1500, noNaN: true }),
            ),
            plan: fc.nat(2),
            op: fc.constantFrom('consume', 'consume', 'consume', 'consume', 'peek', 'release'),
          }),
          { minLength: 5, maxLength: 40 },
        ),
      });

      let run = 0;
      await fc.assert(
        fc.asyncProperty(scheduleArb, async ({ start, pool, plans, steps }) => {
          run++;
          const memoryClock: ManualClock = { now: T0 + start };
          const redisClock: ManualClock = { now: T0 + start };
          const memory = new MemoryRateLimitStore({ clock: () => memoryClock.now });
          const redisStore = (count: number | undefined, shapes = false) => {
            const made = new RedisRateLimitStore({
              client,
              keyPrefix: 'diff:',
              clock: 'app',
              now: () => redisClock.now,
              blockCache: false,
              commandTimeoutMs: 2000,
              leaseTtlMs: 1_000_000_000,
              planScripts: count,
            });
            return shapes ? shapeScriptsOnly(made) : made;
          };
          const redis = redisStore(planScripts, shapeOnly);
          const other = mixed ? redisStore(planScripts === 0 ? undefined : 0) : undefined;
          if (redis74) await Promise.all([redis, other].filter((one) => one !== undefined).map(asRedis74));
          try {
            const specs: TierSpec[] = pool.map((make, i) => make(`s${i}`));
            const tracker = `ip:diff/${run}-${Date.now()}`;
            const build = (store: RateLimitStore): RateLimitPlan[] =>
              plans.map((indices, p) => {
                const tiers = indices.map((i) => ({ key: store.key(tracker, specs[i]!.suffix), spec: specs[i]! }));
                return { tracker, tiers, lease: `L${p}` };
              });
            const memoryPlans = build(memory);
            const redisPlans = build(redis);
            const history: unknown[] = [];
            for (const [i, step] of steps.entries()) {
              memoryClock.now += step.advance;
              redisClock.now += step.advance;
              const act = async (store: RateLimitStore, plan: RateLimitPlan) =>
                step.op === 'consume'
                  ? store.consume(plan)
                  : step.op === 'peek'
                    ? store.peek(plan)
                    : Promise.resolve(store.release(plan)).then(() => 'released');
              const want = JSON.parse(JSON.stringify(await act(memory, memoryPlans[step.plan]!))) as unknown;
              const plan = redisPlans[step.plan]!;
              // Mixed: every other consume of a plan without a concurrency tier (whose leases are
              // the deciding store's own) goes to the other store.
              const leased = plan.tiers.some(({ spec }) => spec.kind === AlgorithmKind.Concurrency);
              const decider = other !== undefined && i % 2 === 1 && step.op === 'consume' && !leased ? other : redis;
              const got = JSON.parse(JSON.stringify(await act(decider, plan))) as unknown;
              history.push({ step: i, advance: step.advance, plan: step.plan, op: step.op, want, got });
              if (process.env.DEBUG_DIFF && JSON.stringify(got) !== JSON.stringify(want)) {
                console.log(JSON.stringify({ start, specs, plans, history }, null, 1));
              }
              expect({ step: i, got }).toEqual({ step: i, got: want });
            }
          } finally {
            await redis.close();
            await other?.close();
          }
        }),
        { numRuns: 60 },
      );
    },
  );

  it('leaves every key with a TTL bounded by its meaning (I-2)', async () => {
    const { checked, problems } = await expectBoundedTtls(admin, prefix, (key) =>
      /:(cc2?|~clock)$/.test(key) ? 30_000 : key.endsWith(':xc') ? 2 * 1000 + 1000 : 10_000 + 1000,
    );
    expect(problems).toEqual([]);
    expect(checked).toBeGreaterThan(0);
  });
});
