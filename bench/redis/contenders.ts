/**
 * The contenders of the Redis benchmark. Each worker process runs one of them, and loads
 * only its own library: ours, a minimal one-script token bucket written here, or
 * rate-limiter-flexible's RateLimiterRedis. All use ioredis 6 on the same Redis with the
 * same client settings (no auto-pipelining, no offline queue, no retries).
 */
import type { RedisOptions } from 'ioredis';

/** Limits nothing reaches at these rates: nearly every decision is allowed. */
export const HUGE = 1e9;
/**
 * The buckets' refill rate, per second: far above any decision rate here, and a token
 * (1 µs) still larger than the resolution of a double holding the epoch in ms (about
 * 0.24 µs), so that every decision writes its bucket (SET PX) as in real use. At 10^9/s a
 * token would be 10^-6 ms, lost in rounding: every bucket would read as full and be
 * deleted instead of written.
 */
export const REFILL = 1e6;
/** Trackers the allowed-mostly decisions spread over, picked pseudo-randomly. */
export const TRACKERS = 1000;
/**
 * The expensive sliding log of the allowed three-tier plan: a 1 ms window with room for
 * more events than a tracker gets in it (a log keeps one member per admitted event, up to
 * its limit, so its limit is sized to the load rather than set to `HUGE`, which would grow
 * a sorted set without bound). As in the memory-store benchmark.
 */
export const ALLOWED_LOG = { limit: 65_536, windowMs: 1 };

/**
 * The ioredis settings of every client here: those `createRedisStore` forces on the client
 * it creates (`enableAutoPipelining: false` among them), so no contender gets a different
 * client. ../shared/FACTS.md: auto-pipelining made every limiter slower on this machine.
 */
export const CLIENT_OPTIONS = {
  enableAutoPipelining: false,
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  autoResendUnfulfilledCommands: false,
  connectTimeout: 2000,
} satisfies RedisOptions;

/**
 * A decision: a value, or a promise of one. `allowed` reads it; a promise that rejects with
 * something `isRefusal` recognizes is a refusal (rate-limiter-flexible's way), anything else
 * an error.
 */
export interface Decider {
  decide(index: number): unknown;
  allowed(settled: unknown): boolean;
  isRefusal(error: unknown): boolean;
  close(): Promise<void>;
}

/** One contender, prepared in its worker against the Redis on `port`. */
export interface RedisContender {
  readonly label: string;
  /** `allowed`: huge limits; `flood`: one tracker already over its limit. */
  readonly mode: 'allowed' | 'flood';
  prepare(port: number): Promise<Decider>;
}

/**
 * The pseudo-random order of tracker indexes every contender follows (xorshift32, fixed
 * seed), so no contender gets an easier access pattern.
 */
export function trackerOrder(length: number, trackers: number): Uint16Array | Uint32Array {
  const order = trackers <= 65_536 ? new Uint16Array(length) : new Uint32Array(length);
  let x = 0x9e3779b9;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    order[i] = (x >>> 0) % trackers;
  }
  return order;
}

/** Tracker names as the guard makes them. */
export function trackerNames(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `conn:${i + 1}`);
}

async function ioredisClient(port: number): Promise<import('ioredis').Redis> {
  const { Redis } = await import('ioredis');
  const client = new Redis({ host: '127.0.0.1', port, ...CLIENT_OPTIONS, lazyConnect: true });
  await client.connect();
  return client;
}

// --- Ours ---------------------------------------------------------------------------------

/**
 * Ours' deadline per call here. The default (50 ms) is a production setting; the baselines
 * have no deadline at all, and at 256 in flight on a busy 2-core machine a queue of 256
 * calls can outlast 50 ms, after which the breaker refuses calls at once (fast "decisions"
 * that are failures). A long deadline keeps the comparison about deciding; what a deadline
 * costs per call is still paid. The table reports how many
 * decisions took longer than 50 ms.
 */
export const BENCH_DEADLINE_MS = 1000;

async function oursStore(port: number, blockCache: boolean, reservations = false) {
  const { createRedisStore } = await import('nestjs-ws-rate-limit');
  // Defaults otherwise (key prefix `wsrl:`, block cache of 10,000 entries): what users get.
  return createRedisStore({
    url: `redis://127.0.0.1:${port}`,
    commandTimeoutMs: BENCH_DEADLINE_MS,
    ...(blockCache ? {} : { blockCache: false }),
    ...(reservations ? { reservations: true } : {}),
  });
}

async function oursAllowed(port: number, tiers: 1 | 3, reserve?: { refill: number }): Promise<Decider> {
  const { createPlan, tokenBucketSpec, windowSpec } = await import('nestjs-ws-rate-limit');
  const store = await oursStore(port, true, reserve !== undefined);
  const specs =
    tiers === 1
      ? [tokenBucketSpec('global', 'g', HUGE, reserve?.refill ?? REFILL)]
      : [
          tokenBucketSpec('global', 'g', HUGE, REFILL),
          tokenBucketSpec('type', 't:chat', HUGE, REFILL),
          windowSpec('expensive', 'x', 'sliding-log', ALLOWED_LOG.limit, ALLOWED_LOG.windowMs),
        ];
  // One plan per tracker, built once and reused, as the guard does per connection and handler.
  const plans = trackerNames(TRACKERS).map((tracker) => createPlan(store, tracker, specs));
  return {
    decide: (index) => store.consume(plans[index]!),
    allowed: (settled) => (settled as { allowed: boolean }).allowed,
    isRefusal: () => false,
    close: () => store.close(),
  };
}

/** Ours, the whole three-tier plan (global bucket, type bucket, expensive sliding log) in one script. */
export const ours3: RedisContender = {
  label: 'ours: RedisRateLimitStore, 3-tier plan in one script',
  mode: 'allowed',
  prepare: (port) => oursAllowed(port, 3),
};

/** Ours with a one-tier plan (the global bucket only). */
export const ours1: RedisContender = {
  label: 'ours: RedisRateLimitStore, 1-tier plan',
  mode: 'allowed',
  prepare: (port) => oursAllowed(port, 1),
};

/**
 * The library's default message tiers: global 100 burst at 50/s, type 20 at 10/s,
 * expensive 5 per 60 s. A flooding tracker is refused by the expensive window for a minute
 * after its fifth decision.
 */
async function defaultSpecs() {
  const { tokenBucketSpec, windowSpec } = await import('nestjs-ws-rate-limit');
  return [
    tokenBucketSpec('global', 'g', 100, 50),
    tokenBucketSpec('type', 't:chat', 20, 10),
    windowSpec('expensive', 'x', 'sliding-log', 5, 60_000),
  ];
}

/**
 * A flooding client known to be over its limit: the worker makes a fresh tracker spend its
 * budget through Redis (awaited) until the first refusal, then times `decide` on that one
 * plan, which the block cache answers synchronously.
 */
export interface FloodDecider extends Decider {
  /** A fresh flooding tracker, driven over its limit through Redis; returns the decisions it took. */
  exhaust(): Promise<number>;
}

async function oursFlood(port: number, blockCache: boolean): Promise<FloodDecider> {
  const { createPlan } = await import('nestjs-ws-rate-limit');
  const store = await oursStore(port, blockCache);
  const specs = await defaultSpecs();
  let plan = createPlan(store, 'conn:flood-0', specs);
  let generation = 0;
  return {
    decide: () => store.consume(plan),
    allowed: (settled) => (settled as { allowed: boolean }).allowed,
    isRefusal: () => false,
    async exhaust() {
      plan = createPlan(store, `conn:flood-${++generation}`, specs);
      for (let taken = 1; taken <= 1000; taken++) {
        if (!(await store.consume(plan)).allowed) return taken;
      }
      throw new Error('the flooding tracker was never refused');
    },
    close: () => store.close(),
  };
}

/** Ours, the flooding client with the block cache (the default). */
export const oursFloodCached: RedisContender = {
  label: 'ours: flooding client over its limit, block cache on (default)',
  mode: 'flood',
  prepare: (port) => oursFlood(port, true),
};

/** Ours, the flooding client with the block cache off: Redis decides every refusal. */
export const oursFloodUncached: RedisContender = {
  label: 'ours: flooding client over its limit, block cache off',
  mode: 'flood',
  prepare: (port) => oursFlood(port, false),
};

/**
 * Ours with the one-tier plan and token reservations on (`reservations: true`: batches up to
 * 64, slots within 1 s). At the benchmark's refill (10^6/s) a full bucket's slots lapse a
 * microsecond apart: this shows what reservations cost where they cannot help.
 */
export const ours1Reserved: RedisContender = {
  label: 'ours: 1-tier plan, reservations on',
  mode: 'allowed',
  prepare: (port) => oursAllowed(port, 1, { refill: REFILL }),
};

/**
 * The same with the bucket refilling 100 a second (capacity still huge): each of the 1,000
 * trackers gets some tens of decisions a second here, a fair share of its rate, so batches
 * of slots are spent before they lapse.
 */
export const ours1ReservedSlow: RedisContender = {
  label: 'ours: 1-tier plan at 100/s per tracker, reservations on',
  mode: 'allowed',
  prepare: (port) => oursAllowed(port, 1, { refill: 100 }),
};

// --- A minimal one-script token bucket ----------------------------------------------------

/**
 * One key, one short script: the bucket's state is the time it is full again (as ours),
 * read and written with GET and SET PX on Redis's clock (a key whose bucket is full again
 * is deleted instead: SET PX refuses a TTL of 0). What one decision costs at least.
 * ARGV: ms per token, burst in ms (capacity x ms per token).
 */
export const BASELINE_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local fullAt = tonumber(redis.call('GET', KEYS[1]))
if fullAt == nil or fullAt < now then fullAt = now end
if fullAt + interval - now > burst then return 0 end
fullAt = fullAt + interval
local ttl = math.ceil(fullAt - now)
if ttl > 0 then
  redis.call('SET', KEYS[1], string.format('%.17g', fullAt), 'PX', ttl)
else
  redis.call('DEL', KEYS[1])
end
return 1
`;

type BucketCommand = (key: string, interval: string, burst: string) => Promise<number>;

/**
 * The minimal script as a decider: ioredis `defineCommand`, one EVALSHA per decision. With
 * `coalesce`, the writes of one tick go out together, at most 32 a write, and a command sent
 * with nothing in flight goes at once, as ours do (`TickWrites` in the library): the
 * like-for-like comparison for what ours gains from that.
 */
async function baselineDecider(port: number, coalesce: boolean): Promise<Decider> {
  const client = await ioredisClient(port);
  client.defineCommand('benchBucket', { numberOfKeys: 1, lua: BASELINE_LUA });
  const bucket = (client as unknown as { benchBucket: BucketCommand }).benchBucket.bind(client);
  const interval = 1000 / REFILL;
  const burst = String(HUGE * interval);
  const keys = trackerNames(TRACKERS).map((tracker) => `tb:{${tracker}}`);
  const intervalArg = String(interval);
  const socket = (client as unknown as { stream: import('node:stream').Writable }).stream;
  let corked = 0;
  const uncork = (): void => {
    if (corked > 0) socket.uncork();
    corked = 0;
  };
  return {
    decide: (index) => {
      if (coalesce && client.commandQueue.length > 0) {
        if (corked === 32) uncork();
        if (corked++ === 0) {
          socket.cork();
          process.nextTick(uncork);
        }
      }
      return bucket(keys[index]!, intervalArg, burst);
    },
    allowed: (settled) => settled === 1,
    isRefusal: () => false,
    close: async () => void (await client.quit()),
  };
}

/** The minimal baseline: ioredis `defineCommand`, one EVALSHA per decision. */
export const baseline: RedisContender = {
  label: 'baseline: minimal 1-key token-bucket script (defineCommand)',
  mode: 'allowed',
  prepare: (port) => baselineDecider(port, false),
};

/** The same, its writes of one tick coalesced as ours are. */
export const baselineCoalesced: RedisContender = {
  label: 'baseline, its writes of one tick coalesced as ours are (32 a write)',
  mode: 'allowed',
  prepare: (port) => baselineDecider(port, true),
};

// --- rate-limiter-flexible ------------------------------------------------------------------

/**
 * RateLimiterRedis 11.4 on an ioredis client: `consume(key)` runs its `rlflxIncr` script
 * (SET NX EX, INCRBY, PTTL), one EVALSHA per decision; it rejects with a RateLimiterRes
 * when over the limit. `points: 10^9, duration: 60`, default key prefix.
 */
export const rlf: RedisContender = {
  label: 'rate-limiter-flexible RateLimiterRedis (ioredis)',
  mode: 'allowed',
  async prepare(port) {
    const client = await ioredisClient(port);
    const { RateLimiterRedis, RateLimiterRes } = await import('rate-limiter-flexible');
    const limiter = new RateLimiterRedis({ storeClient: client, points: HUGE, duration: 60 });
    const keys = trackerNames(TRACKERS);
    return {
      decide: (index) => limiter.consume(keys[index]!),
      allowed: () => true,
      isRefusal: (error) => error instanceof RateLimiterRes,
      close: async () => void (await client.quit()),
    };
  },
};

/** Every contender by the id a worker is given, in table order. */
export const REDIS_CONTENDERS = {
  ours3,
  ours1,
  ours1Reserved,
  ours1ReservedSlow,
  baseline,
  baselineCoalesced,
  rlf,
  oursFloodCached,
  oursFloodUncached,
} as const satisfies Record<string, RedisContender>;

export type RedisContenderId = keyof typeof REDIS_CONTENDERS;
