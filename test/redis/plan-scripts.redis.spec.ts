import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Redis } from 'ioredis';
import type { RateLimitDecision, RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { FMT_LUA, LOG_FIELD_LUA, PRELUDE_LUA } from '../../lib/storage/redis/lua-helpers.js';
import { PlanScriptBook } from '../../lib/storage/redis/plan-scripts.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { adminClient, closeClient, ready, storeClient } from './helpers.js';

/**
 * Plan scripts (`lib/storage/redis/plan-scripts.ts`): which plans get a consume script of
 * their own, the `planScripts` bound, and that they decide as the generic script does on
 * Redis's own clock (the decision table covers the app clock).
 */
describe('Redis store: consume scripts per plan shape', () => {
  let server: RedisServer;
  let admin: Redis;
  let client: Redis;
  const stores: RedisRateLimitStore[] = [];
  const storeOf = (planScripts?: number) => {
    const store = new RedisRateLimitStore({
      client,
      keyPrefix: 'ps:',
      blockCache: false,
      commandTimeoutMs: 2000,
      planScripts,
    });
    stores.push(store);
    return store;
  };
  const planOf = (
    store: RedisRateLimitStore,
    tracker: string,
    specs: readonly TierSpec[],
    lease?: string,
  ): RateLimitPlan => ({
    tracker,
    tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
    lease,
  });
  const cachedScripts = async () => Number(/number_of_cached_scripts:(\d+)/.exec(await admin.info('memory'))?.[1]);

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    client = storeClient(server.port);
    await Promise.all([ready(admin), ready(client)]);
  });

  afterAll(async () => {
    for (const store of stores) await store.close();
    await closeClient(client);
    await closeClient(admin);
    await server?.stop();
  });

  const shape = [
    tokenBucketSpec('global', 'g', 5, 1),
    tokenBucketSpec('type', 't:chat', 3, 1),
    windowSpec('expensive', 'x', 'sliding-log', 2, 60_000),
    windowSpec('type', 'c:chat', 'sliding-counter', 4, 10_000),
  ];

  it('one script per shape and field names, shared by every tracker; the same decisions as the generic script', async () => {
    const own = storeOf();
    const generic = storeOf(0);
    await Promise.all([own.evictionPolicyChecked, generic.evictionPolicyChecked]);
    const scriptsBefore = await cachedScripts();
    const got: RateLimitDecision[] = [];
    const want: RateLimitDecision[] = [];
    for (let i = 0; i < 4; i++) {
      got.push(await own.consume(planOf(own, `user:own-${i % 2}`, shape)));
      want.push(await generic.consume(planOf(generic, `user:generic-${i % 2}`, shape)));
    }
    expect(own.planScriptCount).toBe(1);
    expect(generic.planScriptCount).toBe(0);
    // Allowed twice per tracker, then refused by the expensive log for a minute.
    expect(got.map((decision) => decision.allowed)).toEqual([true, true, true, true]);
    for (let i = 0; i < 3; i++) {
      got.push(await own.consume(planOf(own, 'user:own-0', shape)));
      want.push(await generic.consume(planOf(generic, 'user:generic-0', shape)));
    }
    expect(got.at(-1)).toMatchObject({ allowed: false, tier: 'expensive', index: 2, limit: 2, remaining: 0 });
    // Redis's clock moves between the calls: retry times may differ by a millisecond or two
    // (more on a loaded machine; a minute-long window's wait, so within a second is the same).
    const withoutWait = (decisions: RateLimitDecision[]) =>
      decisions.map((decision) => (decision.allowed ? decision : { ...decision, retryAfter: 0 }));
    expect(withoutWait(got)).toEqual(withoutWait(want));
    got.forEach((decision, i) => {
      const other = want[i]!;
      if (!decision.allowed && !other.allowed) {
        expect(Math.abs(decision.retryAfter - other.retryAfter)).toBeLessThanOrEqual(1000);
      }
    });
    // Loaded into Redis: the plan's script and the generic consume.
    expect((await cachedScripts()) - scriptsBefore).toBe(2);
  });

  it('another figure is another shape; concurrency tiers and plans over two trackers stay generic', async () => {
    const store = storeOf();
    // Once the server's field-TTL mode is read (a script per mode it is seen in).
    await store.evictionPolicyChecked;
    await store.consume(planOf(store, 'user:a', [tokenBucketSpec('global', 'g', 10, 1)]));
    await store.consume(planOf(store, 'user:b', [tokenBucketSpec('global', 'g', 10, 1)]));
    expect(store.planScriptCount).toBe(1);
    await store.consume(planOf(store, 'user:a', [tokenBucketSpec('global', 'g', 11, 1)]));
    expect(store.planScriptCount).toBe(2);

    const leased = planOf(
      store,
      'user:c',
      [tokenBucketSpec('global', 'g', 10, 1), concurrencySpec('concurrency', 'cc', 1)],
      'L1',
    );
    expect(await store.consume(leased)).toMatchObject({ allowed: true });
    expect(await store.consume(leased)).toMatchObject({ allowed: false, tier: 'concurrency' });
    await store.release(leased);

    const spec = tokenBucketSpec('global', 'g', 1, 0.001);
    const twoTrackers: RateLimitPlan = {
      tracker: 'user:d',
      tiers: [
        { key: store.key('user:d', spec.suffix), spec },
        { key: store.key('ip:d', spec.suffix), spec },
      ],
    };
    expect(await store.consume(twoTrackers)).toMatchObject({ allowed: true });
    expect(await store.consume(twoTrackers)).toMatchObject({ allowed: false, tier: 'global', index: 0 });
    expect(store.planScriptCount).toBe(2);
  });

  it("on Redis's clock, a log in its sorted set gets a member per event (the nonce is Redis's time)", async () => {
    const own = storeOf();
    const specs = [
      windowSpec('expensive', 'x1', 'sliding-log', 100, 60_000),
      windowSpec('expensive', 'x3', 'sliding-log', 240, 60_000, 3),
    ];
    const plan = planOf(own, 'user:zset-log', specs);
    // 80 decisions: 80 events in one log, 240 in the other (past 64: both in their sorted sets).
    for (let i = 0; i < 80; i++) expect(await own.consume(plan)).toMatchObject({ allowed: true });
    expect(await own.consume(plan)).toMatchObject({ allowed: false, tier: 'expensive', index: 1, remaining: 0 });
    expect(await admin.zcard(plan.tiers[0]!.key)).toBe(80);
    expect(await admin.zcard(plan.tiers[1]!.key)).toBe(240);
  });

  it('members named as earlier ones (a clock stepped back onto a microsecond) are each counted', async () => {
    const lua = [
      PRELUDE_LUA,
      FMT_LUA,
      LOG_FIELD_LUA,
      "logWrite(nil, false, KEYS[1], 10, 3, 5, 1000, 'n')",
      "logWrite(nil, false, KEYS[1], 10, 2, 5, 1000, 'n')",
      "return redis.call('ZCARD', KEYS[1])",
    ].join('\n');
    expect(await admin.eval(lua, 1, 'ps:{same-microsecond}:x')).toBe(5);
  });

  it('a field name of any bytes is written into the script as the generic script names it', async () => {
    const own = storeOf();
    const generic = storeOf(0);
    // A quote, a backslash, a newline, '--', a digit after an escape, non-ASCII, a lone surrogate.
    const spec = tokenBucketSpec('type', `t:"it's"\\\n--9\u00e9\u20ac\ud800`, 3, 0.001);
    const plan = (store: RedisRateLimitStore) => planOf(store, 'user:odd-field', [spec]);
    expect(await own.consume(plan(own))).toMatchObject({ allowed: true });
    expect(await generic.consume(plan(generic))).toMatchObject({ allowed: true });
    expect(await own.consume(plan(own))).toMatchObject({ allowed: true });
    expect(await generic.consume(plan(generic))).toMatchObject({ allowed: false, remaining: 0 });
    expect(await own.consume(plan(own))).toMatchObject({ allowed: false, remaining: 0 });
    const hash = plan(own).tiers[0]!.key.replace(/}[\s\S]*$/, '}:~4');
    expect((await admin.hkeys(hash)).filter((field) => field !== '~e')).toEqual([`:t:"it's"\\\n--9\u00e9\u20ac\ufffd`]);
  });

  it('planScripts bounds the scripts with field names written in whatever their modes: one per mode counts', () => {
    const book = new PlanScriptBook(client, 1);
    const specs = [tokenBucketSpec('global', 'g', 2, 1)];
    const first = book.namedCallFor('shape-1', specs, false, ['g'], 0);
    expect(first).toBeDefined();
    expect(book.namedCallFor('shape-1', specs, false, ['g'], 0)).toBe(first);
    // The same shape and fields in another mode is another script: past the bound.
    expect(book.namedCallFor('shape-1', specs, false, ['g'], 2)).toBeUndefined();
    expect(book.namedCallFor('shape-2', specs, false, ['h'], 0)).toBeUndefined();
    // The other kind has a bound of its own.
    expect(book.callFor('shape-1', specs, false)).toBeDefined();
    expect(book.callFor('shape-2', specs, false)).toBeUndefined();
    expect(book.size).toBe(2);
  });

  it('until the server has been read, a plan is decided by the script taking the mode as an argument', async () => {
    const store = storeOf();
    await store.evictionPolicyChecked;
    // As before the first read of the server (the store sets it once INFO has answered).
    const internals = store as unknown as { serverRead: boolean };
    internals.serverRead = false;
    const plan = planOf(store, 'user:unread', [tokenBucketSpec('global', 'g', 2, 0.001)]);
    expect(await store.consume(plan)).toMatchObject({ allowed: true });
    expect(store.planScriptCount).toBe(1);
    internals.serverRead = true;
    // Read: the script with the field names and the mode written in, the same state.
    expect(await store.consume(plan)).toMatchObject({ allowed: true });
    expect(store.planScriptCount).toBe(2);
    expect(await store.consume(plan)).toMatchObject({ allowed: false, tier: 'global', remaining: 0 });
    expect(store.planScriptCount).toBe(2);
  });

  it('past planScripts of each kind: field names as arguments, then the generic script; the same decisions', async () => {
    const store = storeOf(2);
    await store.evictionPolicyChecked;
    const decide = async (capacity: number, suffix = 'g') => {
      const plan = planOf(store, `user:cap-${capacity}-${suffix}`, [
        tokenBucketSpec('global', suffix, capacity, 0.001),
      ]);
      for (let i = 0; i < capacity; i++) expect(await store.consume(plan)).toMatchObject({ allowed: true });
      expect(await store.consume(plan)).toMatchObject({
        allowed: false,
        tier: 'global',
        limit: capacity,
        remaining: 0,
      });
    };
    // Two scripts with the field names written in.
    await decide(1);
    await decide(2);
    expect(store.planScriptCount).toBe(2);
    // Another field name, or another shape: scripts taking the field names as arguments.
    await decide(1, 'g2');
    await decide(3);
    expect(store.planScriptCount).toBe(4);
    // Their shapes again, with other field names: the same scripts.
    await decide(1, 'g3');
    await decide(3, 'g3');
    expect(store.planScriptCount).toBe(4);
    // Further shapes: the generic script.
    await decide(4);
    await decide(5);
    expect(store.planScriptCount).toBe(4);
  });
});
