import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import type { Redis } from 'ioredis';
import { bucketAfter, bucketTokens, bucketWait } from '../../lib/algorithms/token-bucket.js';
import {
  createSlidingLog,
  logCount,
  logFreshAt,
  logRecord,
  logWait,
  type SlidingLogState,
} from '../../lib/algorithms/sliding-log.js';
import {
  counterCount,
  counterFreshAt,
  counterRecord,
  counterWait,
  createSlidingCounter,
  type SlidingCounterState,
} from '../../lib/algorithms/sliding-counter.js';
import type { RateLimitDecision, RateLimitPlan, TierSpec, TierStatus } from '../../lib/interfaces/plan.interface.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { MAX_TTL_MS } from '../../lib/storage/redis/lua-helpers.js';
import { fieldTtlRedisServer, startRedis, type RedisServer } from '../support/redis-server.js';
import { clockKeyOf, trackerHashOf } from '../../lib/storage/redis/redis-keys.js';
import { adminClient, closeClient, ready, storeClient } from './helpers.js';

/**
 * Edge cases of the Redis store's decision scripts (generic `consume` and the per-plan
 * scripts) against the pure algorithms of lib/algorithms, on Redis 7.0 (one TTL per
 * tracker hash) and Redis 8 (hash-field TTLs), with an injected app clock. Each case runs
 * on four variants: 7.0 and 8, each with plan scripts and with the generic script only.
 *
 * From an adversarial review. These cases failed before their fixes:
 * - a sliding log of a large cost (5000) living in its sorted set: its one ZADD of 10,000
 *   arguments raised "too many results to unpack" (Lua 5.1), now added 500 members a call;
 * - all or nothing: the same error, raised after another tier's sorted set was written,
 *   charged that tier (Redis does not roll a script back);
 * - a bucket refilled once in 3e7 years: its TTL (1e18 ms) was refused by Redis 7.0's
 *   PEXPIRE ('1e+18' is not an integer) and Redis 8's HSETEX, after the HSET had run on
 *   7.0; every TTL the scripts set is now clamped to `MAX_TTL_MS` (2^45 ms).
 * The other cases pinned what already held, or what came with those fixes (a bucket at the
 * config bounds driven past Redis 8's largest field TTL, the generic script's tier count,
 * a concurrency tier's whole cost).
 */

const FIELD_TTLS = fieldTtlRedisServer();
if (FIELD_TTLS === undefined && process.env['WSRL_REQUIRE_FIELD_TTL_REDIS'] === '1') {
  throw new Error('WSRL_REQUIRE_FIELD_TTL_REDIS=1 but no Redis with hash-field TTLs was found');
}

interface Clock {
  now: number;
}

interface Variant {
  readonly name: string;
  readonly server: RedisServer;
  readonly store: RedisRateLimitStore;
  readonly clock: Clock;
  readonly admin: Redis;
}

// ---------------------------------------------------------------------------------------
// Reference: pure algorithms per (tracker, suffix), with the app clock clamped per tracker
// to the latest time of an admitted decision (what `readClock`/`saveClock` do).
// ---------------------------------------------------------------------------------------

type RefState =
  { kind: 0; fullAt: number } | { kind: 1; log: SlidingLogState } | { kind: 2; counter: SlidingCounterState };

type Spec = Exclude<TierSpec, { kind: 3 }>;

class Reference {
  readonly states = new Map<string, Map<string, RefState>>();
  readonly last = new Map<string, number>();

  clamp(tracker: string, now: number): number {
    const last = this.last.get(tracker);
    return last !== undefined && last > now ? last : now;
  }

  private state(tracker: string, spec: Spec): RefState | undefined {
    return this.states.get(tracker)?.get(spec.suffix);
  }

  wait(state: RefState | undefined, spec: Spec, now: number): number {
    if (spec.cost > spec.limit) return Infinity;
    if (state === undefined) return 0;
    switch (state.kind) {
      case 0:
        return bucketWait(state.fullAt, now, (spec as Extract<Spec, { kind: 0 }>).slack);
      case 1:
        return logWait(state.log, now, (spec as { windowMs: number }).windowMs, spec.cost, Math.floor(spec.limit));
      case 2:
        return counterWait(state.counter, now, (spec as { windowMs: number }).windowMs, spec.limit, spec.cost);
    }
  }

  remaining(state: RefState | undefined, spec: Spec, now: number): number {
    if (state === undefined) return Math.floor(spec.limit);
    switch (state.kind) {
      case 0:
        return Math.floor(bucketTokens(state.fullAt, now, spec.limit, (spec as Extract<Spec, { kind: 0 }>).intervalMs));
      case 1:
        return Math.max(0, Math.floor(spec.limit) - logCount(state.log, now, (spec as { windowMs: number }).windowMs));
      case 2:
        return Math.max(
          0,
          Math.floor(spec.limit - counterCount(state.counter, now, (spec as { windowMs: number }).windowMs)),
        );
    }
  }

  freshAt(state: RefState | undefined, spec: Spec): number {
    if (state === undefined) return -Infinity;
    switch (state.kind) {
      case 0:
        return state.fullAt;
      case 1:
        return logFreshAt(state.log, (spec as { windowMs: number }).windowMs);
      case 2:
        return counterFreshAt(state.counter, (spec as { windowMs: number }).windowMs);
    }
  }

  consume(tracker: string, specs: readonly Spec[], at: number): RateLimitDecision {
    const now = this.clamp(tracker, at);
    const states = specs.map((spec) => this.state(tracker, spec));
    const waits = specs.map((spec, i) => this.wait(states[i], spec, now));
    const worst = Math.max(...waits);
    if (worst > 0) {
      const index = waits.indexOf(worst);
      const spec = specs[index]!;
      return {
        allowed: false,
        tier: spec.tier,
        index,
        retryAfter: worst,
        limit: spec.limit,
        remaining: this.remaining(states[index], spec, now),
      };
    }
    this.last.set(tracker, now);
    let near: string | undefined;
    let byTracker = this.states.get(tracker);
    if (byTracker === undefined) this.states.set(tracker, (byTracker = new Map()));
    specs.forEach((spec, i) => {
      let state = states[i];
      if (state === undefined) {
        state =
          spec.kind === 0
            ? { kind: 0, fullAt: -Infinity }
            : spec.kind === 1
              ? { kind: 1, log: createSlidingLog(spec.limit) }
              : { kind: 2, counter: createSlidingCounter() };
        byTracker!.set(spec.suffix, state);
      }
      switch (state.kind) {
        case 0: {
          const s = spec as Extract<Spec, { kind: 0 }>;
          state.fullAt = bucketAfter(state.fullAt, now, s.span);
          if ((state.fullAt - now) * 5 > s.nearBound && near === undefined) near = spec.tier;
          break;
        }
        case 1:
          logRecord(state.log, now, spec.cost, (spec as { windowMs: number }).windowMs, Math.floor(spec.limit));
          break;
        case 2:
          counterRecord(state.counter, now, (spec as { windowMs: number }).windowMs, spec.cost);
          break;
      }
    });
    return near === undefined ? { allowed: true } : { allowed: true, nearLimit: near as never };
  }

  peek(tracker: string, specs: readonly Spec[], at: number): TierStatus[] {
    const now = this.clamp(tracker, at);
    return specs.map((spec) => {
      const state = this.state(tracker, spec);
      const fresh = this.freshAt(state, spec);
      return {
        tier: spec.tier,
        limit: spec.limit,
        remaining: this.remaining(state, spec, now),
        resetIn: fresh <= now ? 0 : Math.ceil(fresh - now),
      };
    });
  }

  forget(tracker: string, suffixes: readonly string[]): void {
    const byTracker = this.states.get(tracker);
    for (const suffix of suffixes) byTracker?.delete(suffix);
  }
}

const plain = (value: unknown): unknown => JSON.parse(JSON.stringify(value)) as unknown;

function planOf(store: RedisRateLimitStore, tracker: string, specs: readonly TierSpec[]): RateLimitPlan {
  return { tracker, tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })) };
}

// ---------------------------------------------------------------------------------------

describe('Redis decision scripts vs the pure algorithms: edge cases', () => {
  const servers: RedisServer[] = [];
  const clients: Redis[] = [];
  const stores: RedisRateLimitStore[] = [];
  const variants: Variant[] = [];

  beforeAll(async () => {
    const v7 = await startRedis();
    servers.push(v7);
    const kinds: [string, RedisServer][] = [['redis-7.0', v7]];
    if (FIELD_TTLS !== undefined) {
      const v8 = await startRedis([], FIELD_TTLS);
      servers.push(v8);
      kinds.push(['redis-8', v8]);
    }
    for (const [name, server] of kinds) {
      const admin = adminClient(server.port);
      clients.push(admin);
      await ready(admin);
      for (const planScripts of [undefined, 0]) {
        const client = storeClient(server.port);
        clients.push(client);
        await ready(client);
        const clock: Clock = { now: 1_700_000_000_000 };
        const store = new RedisRateLimitStore({
          client,
          keyPrefix: `rv${planScripts ?? ''}:`,
          clock: 'app',
          now: () => clock.now,
          blockCache: false,
          planScripts,
          commandTimeoutMs: 5000,
        });
        stores.push(store);
        await store.evictionPolicyChecked;
        variants.push({
          name: `${name} ${planScripts === 0 ? 'generic' : 'plan script'}`,
          server,
          store,
          clock,
          admin,
        });
      }
    }
  }, 60_000);

  afterAll(async () => {
    for (const store of stores) await store.close();
    for (const client of clients) await closeClient(client);
    for (const server of servers) await server.stop();
  });

  it('runs on both layouts (7.0 fallback and Redis 8 hash-field TTLs)', () => {
    expect(variants.map((v) => v.name)).toEqual(
      FIELD_TTLS === undefined
        ? ['redis-7.0 plan script', 'redis-7.0 generic']
        : ['redis-7.0 plan script', 'redis-7.0 generic', 'redis-8 plan script', 'redis-8 generic'],
    );
    const fieldTtls = variants.map((v) => v.store.hashFieldTtls);
    expect(fieldTtls).toEqual(variants.map((v) => v.name.startsWith('redis-8')));
  });

  // ---- A sliding log with a large cost, once in its sorted set ---------------------------
  it.each([0, 1, 2, 3])(
    'a sliding log of cost 5000 (limit 20000) admits a second decision as the algorithm does (variant %i)',
    async (index) => {
      const variant = variants[index];
      if (variant === undefined) return;
      const spec = windowSpec('expensive', 'x', 'sliding-log', 20_000, 60_000, 5000);
      const plan = planOf(variant.store, `big-cost-${index}`, [spec]);
      const ref = new Reference();
      const got: unknown[] = [];
      const want: unknown[] = [];
      for (let i = 0; i < 3; i++) {
        variant.clock.now += 10;
        want.push(plain(ref.consume(plan.tracker, [spec], variant.clock.now)));
        try {
          got.push(plain(await variant.store.consume(plan)));
        } catch (error) {
          got.push(`error: ${(error as Error).message.slice(0, 160)}`);
        }
      }
      expect(got).toEqual(want);
    },
    30_000,
  );

  // ---- Randomized differential run: random plans, costs, time steps, peeks, resets ------
  type Op =
    | { op: 'consume'; advance: number }
    | { op: 'peek'; advance: number }
    | { op: 'delete'; advance: number; which: number }
    | { op: 'retry'; advance: number }
    | { op: 'skew'; advance: number };

  const tierArb = (index: number): fc.Arbitrary<Spec> => {
    const tier = (['global', 'type', 'expensive'] as const)[index]!;
    const suffix = `s${index}`;
    const bucket = fc
      .record({
        limit: fc.oneof(fc.integer({ min: 1, max: 6 }), fc.constantFrom(2.5, 100, 1_000_000)),
        rate: fc.constantFrom(0.5, 1, 3, 7, 1000, 0.001, 1 / 3),
        cost: fc.constantFrom(1, 1, 2, 0.5, 3),
      })
      .filter(({ limit, cost }) => cost <= limit)
      .map(({ limit, rate, cost }) => tokenBucketSpec(tier, suffix, limit, rate, cost) as Spec);
    const log = fc
      .record({
        limit: fc.oneof(fc.integer({ min: 1, max: 5 }), fc.constantFrom(63, 64, 65, 70, 200)),
        windowMs: fc.constantFrom(1, 2, 10, 1000, 60_000),
        cost: fc.constantFrom(1, 1, 2, 3, 40),
      })
      .filter(({ limit, cost }) => cost <= limit)
      // Logs that may outgrow their field (more than 64 live entries) live in a sorted set whose
      // TTL is the window in real time: keep those windows far above a run's real duration.
      .map(
        ({ limit, windowMs, cost }) =>
          windowSpec(tier, suffix, 'sliding-log', limit, limit > 64 ? 60_000 : windowMs, cost) as Spec,
      );
    const counter = fc
      .record({
        limit: fc.oneof(fc.integer({ min: 1, max: 6 }), fc.constantFrom(2.5, 1000)),
        windowMs: fc.constantFrom(1, 3, 10, 1000, 60_000),
        cost: fc.constantFrom(1, 1, 2, 0.5),
      })
      .filter(({ limit, cost }) => cost <= limit)
      .map(({ limit, windowMs, cost }) => windowSpec(tier, suffix, 'sliding-counter', limit, windowMs, cost) as Spec);
    return fc.oneof(bucket, log, counter);
  };

  const planArb = fc
    .integer({ min: 1, max: 3 })
    .chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => tierArb(i))));

  const advanceArb = (specs: readonly Spec[]): fc.Arbitrary<number> => {
    const window = (specs.find((s) => s.kind !== 0) as { windowMs?: number } | undefined)?.windowMs ?? 1000;
    return fc.oneof(
      { weight: 4, arbitrary: fc.constant(0) },
      { weight: 3, arbitrary: fc.constantFrom(1, 0.5, 0.001, 2, 7) },
      { weight: 2, arbitrary: fc.constantFrom(window, window - 1, window + 1, 2 * window) },
      { weight: 2, arbitrary: fc.integer({ min: 1, max: 3000 }) },
      { weight: 1, arbitrary: fc.constantFrom(86_400_000, 3_600_000) },
    );
  };

  const programArb = planArb.chain((specs) =>
    fc.record({
      specs: fc.constant(specs),
      ops: fc.array(
        fc.oneof(
          { weight: 8, arbitrary: advanceArb(specs).map((advance) => ({ op: 'consume', advance }) as Op) },
          { weight: 1, arbitrary: advanceArb(specs).map((advance) => ({ op: 'peek', advance }) as Op) },
          { weight: 2, arbitrary: fc.constant({ op: 'retry', advance: 0 } as Op) },
          {
            weight: 1,
            arbitrary: fc.constantFrom(-1, -3, -20, -0.5).map((advance) => ({ op: 'skew', advance }) as Op),
          },
          {
            weight: 1,
            arbitrary: fc.integer({ min: 0, max: 7 }).map((which) => ({ op: 'delete', advance: 0, which }) as Op),
          },
        ),
        { minLength: 5, maxLength: 40 },
      ),
    }),
  );

  const PROGRAMS = fc.sample(programArb, { seed: 20240611, numRuns: 250 });

  /** State that must outlive its TTL: every tier field's (or the hash's) TTL covers its need. */
  async function ttlProblems(
    variant: Variant,
    tracker: string,
    specs: readonly Spec[],
    ref: Reference,
  ): Promise<string[]> {
    const now = ref.clamp(tracker, variant.clock.now);
    const problems: string[] = [];
    for (const spec of specs) {
      const state = ref.states.get(tracker)?.get(spec.suffix);
      const need = ref.freshAt(state, spec) - now;
      if (!(need > 0)) continue;
      const key = variant.store.key(tracker, spec.suffix);
      const { hash, field } = trackerHashOf(key);
      let ttl = await variant.admin.pttl(hash);
      if (ttl === -1) {
        const ttls = (await variant.admin.call('HPTTL', hash, 'FIELDS', '1', field)) as number[];
        ttl = ttls[0]!;
      }
      // Real time passes between the write and this read: a generous 200 ms.
      if (!(ttl >= 0) || ttl + 200 < need) problems.push(`${spec.suffix}: ttl ${ttl} < need ${need}`);
      if (spec.kind === 1 && (await variant.admin.hget(hash, field)) === 'Z') {
        const zttl = await variant.admin.pttl(key);
        if (!(zttl >= 0) || zttl + 200 < need) problems.push(`${spec.suffix} zset: ttl ${zttl} < need ${need}`);
      }
    }
    return problems;
  }

  it.each([0, 1, 2, 3])(
    'random programs decide as the pure algorithms (variant %i)',
    async (index) => {
      const variant = variants[index];
      if (variant === undefined) return;
      const failures: string[] = [];
      for (const [p, program] of PROGRAMS.entries()) {
        const tracker = `fuzz-${index}-${p}`;
        const plan = planOf(variant.store, tracker, program.specs);
        const ref = new Reference();
        const trace: string[] = [];
        let lastRetry = 0;
        let retryChecked = false;
        const clockKey = clockKeyOf(plan.tiers[0]!.key);
        for (const [step, op] of program.ops.entries()) {
          let advance = op.advance;
          if (op.op === 'retry') advance = lastRetry;
          if (op.op === 'skew') {
            // Only while the clamp is sure to hold for the op (the clock key lives in real time).
            const pttl = await variant.admin.pttl(clockKey);
            if (pttl < 500) advance = 0;
          }
          variant.clock.now += advance;
          const now = variant.clock.now;
          let got: unknown;
          let want: unknown;
          if (op.op === 'consume' || op.op === 'retry' || op.op === 'skew') {
            want = plain(ref.consume(tracker, program.specs, now));
            try {
              got = plain(await variant.store.consume(plan));
            } catch (error) {
              got = `error: ${(error as Error).message.slice(0, 120)}`;
            }
            const decision = got as RateLimitDecision;
            // retryAfter is measured on the clamped clock: checked only for refusals decided at the app time itself.
            if (
              op.op === 'retry' &&
              retryChecked &&
              lastRetry > 0 &&
              Number.isFinite(lastRetry) &&
              decision.allowed !== true
            ) {
              got = { retriedAfter: lastRetry, got };
            }
            lastRetry = decision.allowed === false ? (decision.retryAfter ?? 0) : 0;
            retryChecked = ref.clamp(tracker, now) === now;
            if (decision.allowed === true) {
              const problems = await ttlProblems(variant, tracker, program.specs, ref);
              if (problems.length > 0) got = { ttl: problems, got };
            }
          } else if (op.op === 'peek') {
            want = plain(ref.peek(tracker, program.specs, now));
            got = plain(await variant.store.peek(plan));
          } else {
            retryChecked = false;
            const chosen = program.specs.filter((_, i) => (op.which >> i) & 1);
            ref.forget(
              tracker,
              chosen.map((s) => s.suffix),
            );
            await variant.store.delete(chosen.map((s) => variant.store.key(tracker, s.suffix)));
            got = want = 'deleted';
          }
          trace.push(`#${step} +${op.advance} ${op.op}${op.op === 'delete' ? op.which : ''} -> ${JSON.stringify(got)}`);
          if (JSON.stringify(got) !== JSON.stringify(want)) {
            failures.push(
              `program ${p} specs ${JSON.stringify(program.specs.map((s) => ({ a: s.algorithm, l: s.limit, c: s.cost, w: (s as { windowMs?: number }).windowMs, r: (s as { refillRate?: number }).refillRate })))}\n  ${trace.join('\n  ')}\n  want ${JSON.stringify(want)}`,
            );
            break;
          }
        }
        if (failures.length >= 3) break;
      }
      expect(failures).toEqual([]);
    },
    60_000,
  );

  // ---- All or nothing with a log of a large cost -----------------------------------------
  it.each([0, 1, 2, 3])(
    'all or nothing: a log of a large cost next to another log charges both or neither (variant %i)',
    async (index) => {
      const variant = variants[index];
      if (variant === undefined) return;
      // Tier 1: a log that lives in its sorted set from the first decision (65 > 64 entries).
      const small = windowSpec('type', 'a', 'sliding-log', 200, 60_000, 65);
      // Tier 2: a log whose second decision adds 5000 members to its sorted set.
      const big = windowSpec('expensive', 'b', 'sliding-log', 20_000, 60_000, 5000);
      const tracker = `atomic-${index}`;
      const both = planOf(variant.store, tracker, [small, big]);
      const alone = planOf(variant.store, tracker, [small]);
      variant.clock.now += 10;
      expect(await variant.store.consume(both)).toEqual({ allowed: true });
      variant.clock.now += 10;
      // Whatever this decision answers, it must charge every tier or none.
      const second = await Promise.resolve(variant.store.consume(both)).then(
        (decision) => decision,
        (error: Error) => error,
      );
      const charged = second instanceof Error ? 0 : second.allowed ? 65 : 0;
      // The small log now holds 65 + charged entries: 200 - that leaves this many decisions of 65.
      const room = Math.floor((200 - 65 - charged) / 65);
      const admitted: boolean[] = [];
      for (let i = 0; i < 3; i++) {
        variant.clock.now += 10;
        admitted.push((await variant.store.consume(alone)).allowed);
      }
      expect({ second: second instanceof Error ? 'error' : second, admitted }).toEqual({
        second: second instanceof Error ? 'error' : second,
        admitted: [0, 1, 2].map((i) => i < room),
      });
    },
    30_000,
  );

  // ---- TTLs past what Redis accepts (hand-made figures past the config bounds) -----------
  /** The TTL (ms) a tier's state lives by: its tracker hash's, else its field's (hash-field TTLs). */
  async function stateTtl(variant: Variant, key: string): Promise<number> {
    const { hash, field } = trackerHashOf(key);
    const ttl = await variant.admin.pttl(hash);
    if (ttl !== -1) return ttl;
    const ttls = (await variant.admin.call('HPTTL', hash, 'FIELDS', '1', field)) as number[];
    return ttls[0]!;
  }

  it.each([0, 1, 2, 3])(
    'a bucket refilled once in 3e7 years decides as the algorithm, its state kept for MAX_TTL_MS (variant %i)',
    async (index) => {
      const variant = variants[index];
      if (variant === undefined) return;
      // tokenBucketSpec and checkSpec accept it (only the module's config bounds refuse rates below 1e-6).
      const spec = tokenBucketSpec('global', 'g', 1, 1e-15);
      const plan = planOf(variant.store, `huge-${index}`, [spec]);
      const ref = new Reference();
      const got: unknown[] = [];
      const want: unknown[] = [];
      for (let i = 0; i < 2; i++) {
        variant.clock.now += 10;
        want.push(plain(ref.consume(plan.tracker, [spec], variant.clock.now)));
        got.push(
          await Promise.resolve(variant.store.consume(plan)).then(
            plain,
            (e: Error) => `error: ${e.message.slice(0, 140)}`,
          ),
        );
      }
      expect(got).toEqual(want);
      // Its fullAt lies 1e18 ms ahead: the state lives as long as Redis lets it, not 1e18 ms.
      const ttl = await stateTtl(variant, plan.tiers[0]!.key);
      expect(ttl).toBeGreaterThan(MAX_TTL_MS - 60_000);
      expect(ttl).toBeLessThanOrEqual(MAX_TTL_MS + 1000);
      const clockTtl = await variant.admin.pttl(clockKeyOf(plan.tiers[0]!.key));
      expect(clockTtl).toBeGreaterThan(MAX_TTL_MS - 60_000);
      expect(clockTtl).toBeLessThanOrEqual(MAX_TTL_MS);
    },
    30_000,
  );

  it.each([0, 1, 2, 3])(
    'a sliding log and a counter of windows past MAX_TTL_MS decide as the algorithms (variant %i)',
    async (index) => {
      const variant = variants[index];
      if (variant === undefined) return;
      const specs = [
        // 70 entries: the log lives in its sorted set, whose own TTL is clamped too.
        windowSpec('expensive', 'x', 'sliding-log', 200, 1e18, 70),
        windowSpec('type', 'c', 'sliding-counter', 5, 1e17),
      ] as Spec[];
      const plan = planOf(variant.store, `windows-${index}`, specs);
      const ref = new Reference();
      const got: unknown[] = [];
      const want: unknown[] = [];
      for (let i = 0; i < 4; i++) {
        variant.clock.now += 10;
        want.push(plain(ref.consume(plan.tracker, specs, variant.clock.now)));
        got.push(
          await Promise.resolve(variant.store.consume(plan)).then(
            plain,
            (e: Error) => `error: ${e.message.slice(0, 140)}`,
          ),
        );
      }
      expect(got).toEqual(want);
      const zttl = await variant.admin.pttl(plan.tiers[0]!.key);
      expect(zttl).toBeGreaterThan(MAX_TTL_MS - 60_000);
      expect(zttl).toBeLessThanOrEqual(MAX_TTL_MS);
    },
    30_000,
  );

  // ---- A bucket at the config bounds, driven far ahead -----------------------------------
  it.each([0, 1, 2, 3])(
    'a bucket at the config bounds (capacity 1e6, rate 1e-6/s, cost 300) decides as the algorithm far ahead (variant %i)',
    async (index) => {
      const variant = variants[index];
      if (variant === undefined) return;
      // MAX_CAPACITY and MIN_REFILL_RATE of lib/config/bounds.ts: each decision moves fullAt
      // 3e11 ms ahead; 400 of them, 1.2e14 ms, past the largest hash-field TTL Redis 8 sets
      // (one ending 2^46 - 1 ms after the epoch: about 6.8e13 ms from now).
      const spec = tokenBucketSpec('global', 'g', 1_000_000, 0.000_001, 300);
      const plan = planOf(variant.store, `bounds-${index}`, [spec]);
      const ref = new Reference();
      const got: unknown[] = [];
      const want: unknown[] = [];
      for (let i = 0; i < 400; i++) {
        variant.clock.now += 1;
        want.push(plain(ref.consume(plan.tracker, [spec], variant.clock.now)));
        got.push(
          await Promise.resolve(variant.store.consume(plan)).then(
            plain,
            (e: Error) => `error: ${e.message.slice(0, 140)}`,
          ),
        );
      }
      expect(got).toEqual(want);
      expect(await stateTtl(variant, plan.tiers[0]!.key)).toBeGreaterThan(MAX_TTL_MS - 60_000);
    },
    30_000,
  );

  // ---- Nothing can fail once a decision has written ---------------------------------------
  it.each([0, 1, 2, 3])(
    'the generic script refuses a plan of more than 3000 tiers before writing anything (variant %i)',
    async (index) => {
      const variant = variants[index];
      if (variant === undefined) return;
      // Past 16 tiers a plan is decided by the generic script, whose write names every field
      // of a hash in one call: 4001 tiers would pass over 8000 values through unpack, which
      // raises, after the log's sorted set was written.
      const tracker = `many-${index}`;
      const log = windowSpec('expensive', 'x', 'sliding-log', 200, 60_000, 70);
      const counters = Array.from({ length: 4000 }, (_, i) =>
        windowSpec('type', `c${i}`, 'sliding-counter', 5, 60_000),
      );
      await expect(variant.store.consume(planOf(variant.store, tracker, [log, ...counters]))).rejects.toThrow(
        /more than 3000 tiers/,
      );
      expect(await variant.admin.exists(trackerHashOf(variant.store.key(tracker, 'x')).hash)).toBe(0);
      expect(await variant.admin.exists(variant.store.key(tracker, 'x'))).toBe(0);
      // 3000 tiers are decided as ever.
      variant.clock.now += 10;
      expect(await variant.store.consume(planOf(variant.store, tracker, [log, ...counters.slice(0, 2999)]))).toEqual({
        allowed: true,
      });
      expect(await variant.admin.zcard(variant.store.key(tracker, 'x'))).toBe(70);
    },
    30_000,
  );

  it('a concurrency tier of a cost that is not whole is refused before any script runs', async () => {
    const variant = variants[1]!;
    const leases = { ...concurrencySpec('concurrency', 'cc', 3), cost: 0.5 } as TierSpec;
    const log = windowSpec('expensive', 'x', 'sliding-log', 200, 60_000, 70);
    const plan = planOf(variant.store, 'half-lease', [log, leases]);
    await expect(Promise.resolve().then(() => variant.store.consume(plan))).rejects.toThrow(
      /a concurrency tier's cost must be whole \(got 0.5\)/,
    );
    expect(await variant.admin.exists(variant.store.key('half-lease', 'x'))).toBe(0);
  });
});
