/**
 * Child process, run with `--expose-gc`: inserts `keys` trackers into one store and sends
 * the heap growth. Usage (from run.js): worker.js <contender> <keys>
 *
 * Key strings the caller already holds are built before the first measurement (they exist
 * whether or not a limiter runs); whatever a store builds or keeps itself is counted.
 */
import { ThrottlerStorageService } from '@nestjs/throttler';
import {
  MemoryRateLimitStore,
  tokenBucketSpec,
  windowSpec,
  type RateLimitPlan,
  type TierSpec,
} from 'nestjs-ws-rate-limit';
import { performance } from 'node:perf_hooks';
import { RateLimiterMemory } from 'rate-limiter-flexible';
import { sendToParent } from '../support/child.js';
import { guardPlan, trackers } from '../store/contenders.js';

/** What one store costs, in bytes, over the whole insertion. */
export interface MemoryResult {
  /** Growth of the V8 heap (`heapUsed`). */
  heapBytes: number;
  /** Growth of ArrayBuffer backing stores, which live outside the V8 heap (typed arrays). */
  bufferBytes: number;
  /** Keys the store holds at the end (checks the insertion really happened). */
  stored: number;
}

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');

function settle(): NodeJS.MemoryUsage {
  gc!();
  gc!();
  return process.memoryUsage();
}

const oneTier: TierSpec[] = [tokenBucketSpec('global', 'g', 100, 50)];
const threeTiers: TierSpec[] = [
  tokenBucketSpec('global', 'g', 100, 50),
  tokenBucketSpec('type', 't:chat', 20, 10),
  windowSpec('expensive', 'x', 'sliding-log', 5, 60_000),
];

/**
 * Flattens each string before measuring. A key built by concatenation starts as a rope (a
 * V8 ConsString); reading a character flattens it, and the next GC frees the rope's pieces.
 * The memory store flattens the keys it inserts: left to happen inside the measured window,
 * that shrinking of the caller's strings would be subtracted from the store's cost.
 */
function flattenAll(strings: Iterable<string>): void {
  for (const string of strings) string.charCodeAt(0);
}

function plansFor(store: MemoryRateLimitStore, names: readonly string[], specs: readonly TierSpec[]): RateLimitPlan[] {
  return names.map((tracker) => guardPlan(store, tracker, specs));
}

/** Prepares what exists before the limiter runs, then returns the insertion and a size probe. */
type Setup = (names: readonly string[]) => { insert: () => void; size: () => number };

function ours(specs: readonly TierSpec[], plansCounted: boolean, frozen = false): Setup {
  return (names) => {
    const store = new MemoryRateLimitStore({ maxKeys: 10_000_000 });
    // The guard builds a plan (and its key strings) once per connection and handler; by
    // default they are built before measuring, as key strings are for every other store.
    // A frozen plan cannot carry anything the store would keep on it.
    const build = (): RateLimitPlan[] => {
      const built = plansFor(store, names, specs);
      return frozen ? built.map((plan) => Object.freeze(plan)) : built;
    };
    let plans = plansCounted ? [] : build();
    flattenAll(plans.flatMap((plan) => plan.tiers.map((tier) => tier.key)));
    return {
      insert: () => {
        if (plansCounted) plans = build();
        for (const plan of plans) store.consume(plan);
      },
      // `insert` keeps `plans` alive until the process ends.
      size: () => store.size,
    };
  };
}

const SETUPS: Record<string, Setup> = {
  ours: ours(oneTier, false),
  oursFrozen: ours(oneTier, false, true),
  oursWithPlans: ours(oneTier, true),
  ours3: ours(threeTiers, false),
  rlf: (names) => {
    const limiter = new RateLimiterMemory({ points: 100, duration: 60 });
    return {
      insert: () => {
        for (const name of names) void limiter.consume(name).catch(() => undefined);
      },
      size: () => limiter.dump().storage.length,
    };
  },
  rlfNoPrefix: (names) => {
    const limiter = new RateLimiterMemory({ points: 100, duration: 60, keyPrefix: '' });
    return {
      insert: () => {
        for (const name of names) void limiter.consume(name).catch(() => undefined);
      },
      size: () => limiter.dump().storage.length,
    };
  },
  throttler: (names) => {
    const storage = new ThrottlerStorageService();
    return {
      insert: () => {
        for (const name of names) void storage.increment(name, 60_000, 100, 60_000, 'default');
      },
      size: () => {
        const held = storage.storage.size;
        storage.onApplicationShutdown();
        return held;
      },
    };
  },
  bare: (names) => {
    const buckets = new Map<string, { tokens: number; last: number }>();
    return {
      insert: () => {
        for (const name of names) {
          const now = performance.now();
          let bucket = buckets.get(name);
          if (bucket === undefined) {
            bucket = { tokens: 100, last: now };
            buckets.set(name, bucket);
          }
          bucket.tokens = Math.min(100, bucket.tokens + (now - bucket.last) * 0.05) - 1;
          bucket.last = now;
        }
      },
      size: () => buckets.size,
    };
  },
};

const [setupId, keyCount] = process.argv.slice(2);
const setup = SETUPS[setupId!];
if (!setup) throw new Error(`unknown store: ${setupId}`);
const names = trackers(Number(keyCount));
flattenAll(names);
const { insert, size } = setup(names);
const before = settle();
insert();
// Let the promise-based stores settle their promises before measuring.
await new Promise((resolve) => setImmediate(resolve));
const after = settle();
const result: MemoryResult = {
  heapBytes: after.heapUsed - before.heapUsed,
  bufferBytes: after.arrayBuffers - before.arrayBuffers,
  stored: size(),
};
await sendToParent('result', { ...result, names: names.length });
