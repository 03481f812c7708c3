import { createPlan } from 'nestjs-ws-rate-limit';
import type { MemoryRateLimitStore, RateLimitPlan, RateLimitStore, TierSpec } from 'nestjs-ws-rate-limit';
import { performance } from 'node:perf_hooks';
import type { RateLimiterMemory } from 'rate-limiter-flexible';
import type { AsyncRun, SyncRun } from '../support/timing.js';

// Each contender loads its library when it is prepared (a worker runs one contender), so
// no worker pays for importing, or has in its heap, the libraries of the others.

/** One column of the decisions table. */
export interface Workload {
  /** Distinct trackers (keys) the decisions spread over. */
  readonly keys: number;
  /** `allowed`: figures so large that nearly everything passes; `rejected`: nearly nothing does after warm-up. */
  readonly mode: 'allowed' | 'rejected' | 'fresh';
}

/**
 * Distinct new trackers of the `fresh` column. When they run out, a contender starts over
 * with an empty store (the cost of emptying it is part of the figure, for every contender).
 */
export const FRESH_TRACKERS = 1 << 18;

/** The columns, in table order. */
export const WORKLOADS = {
  'hot-allowed': { keys: 1, mode: 'allowed' },
  'hot-rejected': { keys: 1, mode: 'rejected' },
  'many-allowed': { keys: 100_000, mode: 'allowed' },
  'many-rejected': { keys: 100_000, mode: 'rejected' },
  /** Every decision on a tracker never seen before (its plan built first, as the guard does). */
  fresh: { keys: FRESH_TRACKERS, mode: 'fresh' },
} as const satisfies Record<string, Workload>;

export type WorkloadId = keyof typeof WORKLOADS;

/** A limiter under test: builds its state for a workload and returns the decision loop. */
export interface Contender {
  readonly label: string;
  prepare(workload: Workload, order: KeyOrder): Promise<SyncRun | AsyncRun>;
}

/**
 * The sequence of key indexes every contender follows: one index for the hot key, else a
 * fixed pseudo-random sequence (xorshift32, same seed for all), so no contender gets an
 * easier access pattern.
 */
export class KeyOrder {
  static readonly LENGTH = 1 << 20;
  readonly indexes: Uint32Array;

  constructor(keys: number) {
    this.indexes = new Uint32Array(KeyOrder.LENGTH);
    if (keys === 1) return;
    let x = 0x9e3779b9;
    for (let i = 0; i < KeyOrder.LENGTH; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      this.indexes[i] = (x >>> 0) % keys;
    }
  }
}

const MASK = KeyOrder.LENGTH - 1;

/**
 * Decisions per key, in key order, before the timed warm-up: every key is resident when
 * timing starts (the 100k columns measure 100,000 tracked keys, not their insertion), and
 * in the rejected columns the 6th decision of a key is past every limit below (5).
 */
function passes(workload: Workload): number {
  return workload.mode === 'rejected' ? 6 : workload.mode === 'fresh' ? 0 : 1;
}

/** Tracker names as the guard makes them (`conn:<id>`); every contender keys on these. */
export function trackers(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `conn:${i + 1}`);
}

// --- Figures ----------------------------------------------------------------------------
// Rejected columns use the library's defaults (global 100 burst at 50/s, type 20 at 10/s,
// expensive 5 per 60 s): after warm-up the expensive window refuses every decision.
// Baselines get the same 5 per 60 s. Allowed columns use figures nothing reaches.

const HUGE = 1e9;
/**
 * The expensive sliding log of the allowed columns: a 1 ms window, with room for more events
 * per key and window than the decision rate can produce (the log keeps `limit` timestamps
 * per key, so its limit is sized to the column rather than set to `HUGE`).
 */
const ALLOWED_WINDOW_MS = 1;
const ALLOWED_LOG_LIMIT = { hot: 65_536, many: 16 };

/** Our three-tier plan figures for a workload. */
export async function planSpecs(workload: Workload): Promise<TierSpec[]> {
  const { tokenBucketSpec, windowSpec } = await import('nestjs-ws-rate-limit');
  if (workload.mode === 'rejected') {
    return [
      tokenBucketSpec('global', 'g', 100, 50),
      tokenBucketSpec('type', 't:chat', 20, 10),
      windowSpec('expensive', 'x', 'sliding-log', 5, 60_000),
    ];
  }
  const logLimit = workload.keys === 1 ? ALLOWED_LOG_LIMIT.hot : ALLOWED_LOG_LIMIT.many;
  return [
    tokenBucketSpec('global', 'g', HUGE, HUGE),
    tokenBucketSpec('type', 't:chat', HUGE, HUGE),
    windowSpec('expensive', 'x', 'sliding-log', logLimit, ALLOWED_WINDOW_MS),
  ];
}

/**
 * A plan built as `WsRateLimitService` builds it for the guard, with `createPlan`: frozen
 * tiers of frozen `{ key, spec }` and room for the store's per-plan cache (the memory store
 * remembers the slots of the plan's keys there). Built once per tracker and reused for
 * every decision, as the guard does per connection and handler.
 */
export function guardPlan(store: RateLimitStore, tracker: string, specs: readonly TierSpec[]): RateLimitPlan {
  return createPlan(store, tracker, specs);
}

/** One plan per tracker, for a workload's figures. */
export async function buildPlans(
  store: MemoryRateLimitStore,
  names: readonly string[],
  workload: Workload,
): Promise<RateLimitPlan[]> {
  const specs = await planSpecs(workload);
  return names.map((tracker) => guardPlan(store, tracker, specs));
}

// --- Ours -------------------------------------------------------------------------------

/** The first tier of a plan alone: the global token bucket. */
async function oneTierSpecs(workload: Workload): Promise<TierSpec[]> {
  return (await planSpecs(workload)).slice(0, 1);
}

/** MemoryRateLimitStore deciding a prebuilt plan per decision, synchronously. */
function oursWith(label: string, specsOf: (workload: Workload) => Promise<TierSpec[]>): Contender {
  return {
    label,
    async prepare(workload, order) {
      // 100,000 trackers x 3 tiers = 300,000 keys: above the default maxKeys (100,000 keys),
      // which would make this a benchmark of eviction. Raised so every key stays resident.
      const { MemoryRateLimitStore } = await import('nestjs-ws-rate-limit');
      const specs = await specsOf(workload);
      if (workload.mode === 'fresh') {
        // A new tracker per decision: the guard builds its plan, the store decides it.
        const names = trackers(workload.keys);
        let store = new MemoryRateLimitStore({ maxKeys: 10_000_000 });
        let next = 0;
        return (n: number): number => {
          let allowed = 0;
          for (let i = 0; i < n; i++) {
            if (next === names.length) {
              store = new MemoryRateLimitStore({ maxKeys: 10_000_000 });
              next = 0;
            }
            if (store.consume(guardPlan(store, names[next++]!, specs)).allowed) allowed++;
          }
          return allowed;
        };
      }
      const store = new MemoryRateLimitStore({ maxKeys: 1_000_000 });
      const plans = trackers(workload.keys).map((tracker) => guardPlan(store, tracker, specs));
      for (let pass = 0; pass < passes(workload); pass++) for (const plan of plans) store.consume(plan);
      const indexes = order.indexes;
      let position = 0;
      return (n: number): number => {
        let allowed = 0;
        for (let i = 0; i < n; i++) {
          if (store.consume(plans[indexes[position++ & MASK]!]!).allowed) allowed++;
        }
        return allowed;
      };
    },
  };
}

/** MemoryRateLimitStore deciding a prebuilt three-tier plan per decision, synchronously. */
export const ours: Contender = oursWith('ours: MemoryRateLimitStore, 3-tier plan', planSpecs);

/** The same store with a one-tier plan (the global bucket): like for like with the bare Map. */
export const ours1: Contender = oursWith('ours: MemoryRateLimitStore, 1-tier plan', oneTierSpecs);

// --- rate-limiter-flexible --------------------------------------------------------------

async function rlfLimiter(workload: Workload): Promise<RateLimiterMemory> {
  const { RateLimiterMemory } = await import('rate-limiter-flexible');
  return workload.mode === 'rejected'
    ? new RateLimiterMemory({ points: 5, duration: 60 })
    : new RateLimiterMemory({ points: HUGE, duration: 60 });
}

async function rlfPrefill(limiter: RateLimiterMemory, keys: readonly string[], workload: Workload): Promise<void> {
  for (let pass = 0; pass < passes(workload); pass++) {
    for (const key of keys) await limiter.consume(key).catch(() => undefined);
  }
}

/**
 * RateLimiterMemory, one `consume(key)` awaited at a time: what a guard does per message.
 * Its promise rejects with a RateLimiterRes when over the limit, so the loop catches.
 */
export const rlfAwait: Contender = {
  label: 'rate-limiter-flexible RateLimiterMemory (await each)',
  async prepare(workload, order) {
    const limiter = await rlfLimiter(workload);
    const keys = trackers(workload.keys);
    await rlfPrefill(limiter, keys, workload);
    const indexes = order.indexes;
    let position = 0;
    return async (n: number): Promise<number> => {
      let allowed = 0;
      for (let i = 0; i < n; i++) {
        try {
          await limiter.consume(keys[indexes[position++ & MASK]!]!);
          allowed++;
        } catch {
          // Over the limit: RateLimiterMemory rejects with a RateLimiterRes.
        }
      }
      return allowed;
    };
  },
};

/** How many consumes are in flight together in the batched discipline. */
export const RLF_BATCH = 64;

/**
 * RateLimiterMemory with `RLF_BATCH` consumes started together and awaited as one batch:
 * the cheapest way to await its promises (fewer microtask hops per decision than awaiting
 * each), as a caller deciding many keys at once could do.
 */
export const rlfBatch: Contender = {
  label: `rate-limiter-flexible RateLimiterMemory (batches of ${RLF_BATCH})`,
  async prepare(workload, order) {
    const limiter = await rlfLimiter(workload);
    const keys = trackers(workload.keys);
    await rlfPrefill(limiter, keys, workload);
    const indexes = order.indexes;
    let position = 0;
    const pending: Promise<boolean>[] = new Array<Promise<boolean>>(RLF_BATCH);
    const yes = (): boolean => true;
    const no = (): boolean => false;
    return async (n: number): Promise<number> => {
      let allowed = 0;
      for (let done = 0; done < n; done += RLF_BATCH) {
        for (let j = 0; j < RLF_BATCH; j++)
          pending[j] = limiter.consume(keys[indexes[position++ & MASK]!]!).then(yes, no);
        const results = await Promise.all(pending);
        for (let j = 0; j < RLF_BATCH; j++) if (results[j]) allowed++;
      }
      return allowed;
    };
  },
};

// --- @nestjs/throttler --------------------------------------------------------------------

/**
 * ThrottlerStorageService.increment, awaited per decision, with the arguments
 * ThrottlerGuard passes (blockDuration = ttl). It records one expiry timestamp per hit and
 * filters that list on every call, so its cost grows with the hits a key holds within `ttl`:
 * the allowed columns use ttl = 1 s (a longer ttl would only be slower).
 */
export const throttler: Contender = {
  label: '@nestjs/throttler ThrottlerStorageService.increment (await each)',
  async prepare(workload, order) {
    const { ThrottlerStorageService } = await import('@nestjs/throttler');
    const storage = new ThrottlerStorageService();
    const [ttl, limit] = workload.mode === 'rejected' ? [60_000, 5] : [1_000, HUGE];
    const keys = trackers(workload.keys);
    for (let pass = 0; pass < passes(workload); pass++) {
      for (const key of keys) await storage.increment(key, ttl, limit, ttl, 'default');
    }
    const indexes = order.indexes;
    let position = 0;
    process.once('beforeExit', () => storage.onApplicationShutdown());
    return async (n: number): Promise<number> => {
      let allowed = 0;
      for (let i = 0; i < n; i++) {
        const record = await storage.increment(keys[indexes[position++ & MASK]!]!, ttl, limit, ttl, 'default');
        if (!record.isBlocked) allowed++;
      }
      return allowed;
    };
  },
};

// --- A bare token bucket --------------------------------------------------------------------

/** The reference article's bucket: `{ tokens, last }` per key in a Map, refilled on use. */
interface Bucket {
  tokens: number;
  last: number;
}

/** A bare token bucket in a Map, one tier, synchronous: the floor of what a limiter can cost. */
export const bare: Contender = {
  label: 'bare token bucket in a Map (1 tier)',
  async prepare(workload, order) {
    const [capacity, perSecond] = workload.mode === 'rejected' ? [5, 5 / 60] : [HUGE, HUGE];
    const perMs = perSecond / 1000;
    let buckets = new Map<string, Bucket>();
    const take = (key: string): boolean => {
      const now = performance.now();
      let bucket = buckets.get(key);
      if (bucket === undefined) {
        bucket = { tokens: capacity, last: now };
        buckets.set(key, bucket);
      }
      bucket.tokens = Math.min(capacity, bucket.tokens + (now - bucket.last) * perMs);
      bucket.last = now;
      if (bucket.tokens < 1) return false;
      bucket.tokens -= 1;
      return true;
    };
    const keys = trackers(workload.keys);
    if (workload.mode === 'fresh') {
      let next = 0;
      return (n: number): number => {
        let allowed = 0;
        for (let i = 0; i < n; i++) {
          if (next === keys.length) {
            buckets = new Map<string, Bucket>();
            next = 0;
          }
          if (take(keys[next++]!)) allowed++;
        }
        return allowed;
      };
    }
    for (let pass = 0; pass < passes(workload); pass++) for (const key of keys) take(key);
    const indexes = order.indexes;
    let position = 0;
    return (n: number): number => {
      let allowed = 0;
      for (let i = 0; i < n; i++) if (take(keys[indexes[position++ & MASK]!]!)) allowed++;
      return allowed;
    };
  },
};

/** Contenders of the `fresh` column: ours and the bare Map (the floor of a first decision). */
export const FRESH_CONTENDERS = ['ours', 'ours1', 'bare'] as const;

/** Every contender by the id the worker is given. */
export const CONTENDERS = { ours, ours1, rlfAwait, rlfBatch, throttler, bare } as const satisfies Record<
  string,
  Contender
>;

export type ContenderId = keyof typeof CONTENDERS;
