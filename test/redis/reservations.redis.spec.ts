import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Redis } from 'ioredis';
import { performance } from 'node:perf_hooks';
import type { RateLimitDecision, RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { WsRateLimitConfigError } from '../../lib/exceptions/ws-rate-limit-config.error.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import type { RedisStoreOptions } from '../../lib/storage/redis/redis-store.options.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { RefillClock } from '../support/refill.js';
import { startTcpProxy } from '../support/tcp-proxy.js';
import { watchStalls } from './stalls.js';
import {
  adminClient,
  closeClient,
  expectBoundedTtls,
  openStore,
  ready,
  sleep,
  storeClient,
  worstBurst,
  type Admission,
  type OpenedStores,
} from './helpers.js';

/**
 * Token reservations (option `reservations`), case C-34 of shared/RELIABILITY.md: instances
 * take batches of a shared bucket's slots and spend them locally; the bucket never admits
 * more than it would without reservations, and what a dead instance held comes back.
 */
describe('token reservations (C-34)', () => {
  const stalls = watchStalls();
  /** Tokens a bucket could not hold while this process was stalled (nobody could ask for them). */
  const lostToStalls = (capacity: number, rate: number) => Math.max(0, (rate * stalls.longestMs()) / 1000 - capacity);
  let server: RedisServer;
  let admin: Redis;
  const opened: OpenedStores = { clients: [], stores: [] };
  const { clients, stores } = opened;

  function makeStore(options: Partial<RedisStoreOptions> = {}): Promise<RedisRateLimitStore> {
    return openStore(server.port, opened, {
      keyPrefix: 'resv:',
      commandTimeoutMs: 5000,
      reservations: { maxBatch: 64, ttlMs: 500 },
      ...options,
    });
  }

  const planOf = (store: RedisRateLimitStore, tracker: string, specs: readonly TierSpec[]): RateLimitPlan => ({
    tracker,
    tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })),
  });

  /**
   * A store on a client of its own, to be killed (its client disconnected) while it holds
   * slots: not in `stores`, so never closed (closing would give its slots back).
   */
  async function doomedStore(ttlMs: number): Promise<{ doomedClient: Redis; doomed: RedisRateLimitStore }> {
    const doomedClient = storeClient(server.port);
    await ready(doomedClient);
    const doomed = new RedisRateLimitStore({
      client: doomedClient,
      keyPrefix: 'resv:',
      commandTimeoutMs: 5000,
      reservations: { maxBatch: 64, ttlMs },
    });
    return { doomedClient, doomed };
  }

  /** Script calls (EVALSHA and EVAL) the server ran so far. */
  async function scriptCalls(): Promise<number> {
    const info = await admin.info('commandstats');
    let calls = 0;
    for (const match of info.matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+)/g)) calls += Number(match[1]);
    return calls;
  }

  /**
   * Each store keeps `inFlight` decisions on the plan going until `until`; returns the local
   * times of the admitted ones, per store.
   */
  async function flood(
    parties: readonly {
      store: RedisRateLimitStore;
      plan: RateLimitPlan;
      /** Starts at this time (local ms) rather than at once. */
      from?: number;
      /** Waits this long after each decision. */
      paceMs?: number;
      inFlight?: number;
    }[],
    until: number,
    inFlight = 4,
  ): Promise<Admission[][]> {
    return Promise.all(
      parties.map(async ({ store, plan, from, paceMs, ...party }) => {
        const admitted: Admission[] = [];
        if (from !== undefined) await sleep(from - performance.now());
        const worker = async (): Promise<void> => {
          while (performance.now() < until) {
            const asked = performance.now();
            const decision = await store.consume(plan);
            if (decision.allowed) admitted.push([asked, performance.now()]);
            else await sleep(Math.min(20, decision.retryAfter));
            if (paceMs !== undefined) await sleep(paceMs);
          }
        };
        await Promise.all(Array.from({ length: party.inFlight ?? inFlight }, worker));
        return admitted;
      }),
    );
  }

  beforeAll(async () => {
    server = await startRedis();
    admin = adminClient(server.port);
    await ready(admin);
  });

  afterAll(async () => {
    server?.resume();
    await Promise.all(stores.map((store) => store.close().catch(() => undefined)));
    await Promise.all([admin, ...clients].map(closeClient));
    await server?.stop();
  });

  it('a lone instance spends most decisions locally, with batches that grow', async () => {
    const store = await makeStore();
    // 1,000 tokens a second: far above the 200 decisions a second sent here.
    const plan = planOf(store, 'ip:lone', [tokenBucketSpec('global', 'g', 1000, 1000)]);
    const before = await scriptCalls();
    let allowed = 0;
    const started = performance.now();
    for (let i = 0; i < 200; i++) {
      if ((await store.consume(plan)).allowed) allowed++;
      if (i % 10 === 9) await sleep(10);
    }
    const elapsedMs = performance.now() - started;
    const calls = (await scriptCalls()) - before;
    expect(allowed).toBe(200);
    // Per call, 200 decisions would be 200 scripts; batches of up to 64 make it a handful
    // (8-10 here, ~220 ms). A batch of 64 slots at 1,000/s covers 64 ms and lapses after that
    // however few were spent (and an instance deciding fewer than 2 per 64 ms goes per call),
    // so on a loaded machine the loop takes longer and needs more calls: a clean-clone CI
    // measured 43 against the old bound of 40. The bound is what the batches can cover in
    // the time the loop really took (two calls per 64 ms: a lapsed batch and the one
    // prefetched after it, plus 8 for the ramp-up 1, 2, 4, ... 64), never below 40; batches
    // stuck at 1 still exceed it on any machine that runs the loop within 6 s.
    expect(calls).toBeLessThan(Math.max(40, (2 * elapsedMs) / 64 + 8));
  });

  it('a tracker at a fifth of its bucket rate makes a fraction of the calls (slots lapse at the bucket rate)', async () => {
    const store = await makeStore({ reservations: { maxBatch: 64, ttlMs: 1000 } });
    // 100 burst at 50 a second (slots 20 ms apart); 10 decisions a second for 2 s.
    const plan = planOf(store, 'ip:fifth', [tokenBucketSpec('global', 'g', 100, 50)]);
    const before = await scriptCalls();
    const began = performance.now();
    for (let i = 0; i < 20; i++) {
      expect((await store.consume(plan)).allowed).toBe(true);
      await sleep(100);
    }
    const elapsedMs = performance.now() - began;
    const calls = (await scriptCalls()) - before;
    console.log(`10/s against a 50/s bucket: ${calls} scripts for 20 decisions in ${elapsedMs.toFixed(0)} ms`);
    // Slots lapse within ttlMs (1 s): a handful of calls for the ramp-up, then about two per
    // second of the loop (a lapsed batch and the next), so a loop stretched by a loaded
    // machine may take more; per call (20) still exceeds the bound for a loop within 7 s.
    expect(calls).toBeLessThanOrEqual(Math.max(12, 6 + (2 * elapsedMs) / 1000));
  });

  it("after contention ends, its own per-call decisions do not keep an instance's batches at 1", async () => {
    // A long TTL: slots far ahead are still granted (decisions here outrun the refill).
    const store = await makeStore({ reservations: { maxBatch: 64, ttlMs: 60_000 } });
    const other = await makeStore({ reservations: false });
    // A burst no test spends, slots 100 ms apart: a decision moves the bucket's next slot
    // far past the time of the next one.
    const spec = tokenBucketSpec('global', 'g', 1_000_000, 10);
    const plan = planOf(store, 'ip:own-per-call', [spec]);
    const otherPlan = planOf(other, 'ip:own-per-call', [spec]);
    // Contention: another instance's per-call decisions between this one's reservations.
    for (let i = 0; i < 4; i++) {
      await store.consume(plan);
      await other.consume(otherPlan);
    }
    // Alone from now on, in bursts of 34 decisions at once: at a batch size of 1, a burst
    // holds a probe (two reserving calls) with per-call decisions before and after it.
    const before = await scriptCalls();
    let allowed = 0;
    for (let burst = 0; burst < 8; burst++) {
      const decisions = await Promise.all(Array.from({ length: 34 }, () => store.consume(plan)));
      allowed += decisions.filter((decision) => decision.allowed).length;
    }
    const scripts = (await scriptCalls()) - before;
    console.log(`alone again, bursts of 34: ${scripts} scripts for ${allowed} decisions`);
    expect(allowed).toBe(8 * 34);
    // Its batches grow again: a few calls per burst at most, not one per decision as when its
    // own per-call decisions were taken for another instance's.
    expect(scripts).toBeLessThan(allowed / 4);
  });

  it('a steady lone instance asks for its next batch before the current one runs out: its decisions do not wait on Redis', async () => {
    const store = await makeStore({ reservations: { maxBatch: 64, ttlMs: 1000 } });
    // 1,000 tokens a second: a batch of 64 slots lasts 64 ms, fewer than 64 decisions at the
    // pace below, so batches end by lapsing as well as by being spent.
    const plan = planOf(store, 'ip:steady', [tokenBucketSpec('global', 'g', 1_000_000, 1000)]);
    let waited = 0;
    let stretched = 0;
    let allowed = 0;
    let before = 0;
    let last = performance.now();
    for (let i = 0; i < 400; i++) {
      if (i === 50) before = await scriptCalls();
      const now = performance.now();
      // The lead is two of the recent gaps between decisions: a sleep stretched to many times
      // its length (a loaded machine) can outlast it, which is not what this test is about;
      // such waits are counted apart.
      const paced = now - last < 12;
      last = now;
      const decision = store.consume(plan);
      // A decision that comes as a promise waited on a reserving call (or went per call).
      if (decision instanceof Promise) {
        if (i >= 50 && paced) waited++;
        else if (i >= 50) stretched++;
        if ((await decision).allowed) allowed++;
      } else if (decision.allowed) allowed++;
      if (i % 4 === 3) await sleep(2);
    }
    const calls = (await scriptCalls()) - before;
    console.log(
      `steady lone instance: ${waited} of 350 decisions waited (${stretched} more after a stretched pause), ${calls} scripts`,
    );
    expect(allowed).toBe(400);
    // Batches keep coming (every batch lapses within 64 ms)...
    expect(calls).toBeGreaterThanOrEqual(3);
    // ...but in the background: a decision waits only when a reply comes later than the
    // lead allowed for (a stalled event loop), not once per batch as when the next batch was
    // asked for by the decision that found the last one empty.
    expect(waited).toBeLessThanOrEqual(Math.floor(calls / 2));
  });

  it('batches taken while the store closes go back: close mid-flood leaves the bucket as spent', async () => {
    const spec = tokenBucketSpec('global', 'g', 100, 10);
    for (let trial = 0; trial < 5; trial++) {
      const store = await makeStore({ reservations: { maxBatch: 8, ttlMs: 5000 } });
      const other = await makeStore();
      const plan = planOf(store, `ip:closing-mid-${trial}`, [spec]);
      let spent = 0;
      const clock = new RefillClock();
      // Sequential decisions: batches of 2, 4 and 8 with the next one asked for ahead; the
      // close comes in the same tick as a decision, with a reserving call often in flight.
      for (let i = 0; i < 10 + trial; i++) if ((await store.consume(plan)).allowed) spent++;
      // Decided now, or refused as the store closes (when it waited on a reserving call).
      const last = Promise.resolve(store.consume(plan)).then(
        (decision) => decision.allowed,
        () => false,
      );
      const closing = store.close();
      if (await last) spent++;
      await closing;
      const [back] = await other.peek(planOf(other, `ip:closing-mid-${trial}`, [spec]));
      expect(back!.remaining).toBeGreaterThanOrEqual(100 - spent);
      // Plus what the 10-a-second refill gave since the first decision (one on an idle machine).
      const refilled = clock.gained(10) + 1;
      expect(back!.remaining).toBeLessThanOrEqual(100 - spent + refilled);
    }
  });

  it('a reserved slot is never spent after its time: an idle batch then a burst stay within the capacity', async () => {
    // A long TTL: no sweep gives the idle batch back during the test.
    const store = await makeStore({ reservations: { maxBatch: 64, ttlMs: 5000 } });
    // Capacity 20, 100 tokens a second: slots 10 ms apart.
    const spec = tokenBucketSpec('global', 'g', 20, 100);
    let telling = 0;
    for (let trial = 0; trial < 10 && telling < 3; trial++) {
      const plan = planOf(store, `ip:late-${trial}`, [spec]);
      // Batches of 1, 2, 4 and 6: the last leaves 5 slots held, due within 50 ms.
      const sinceFirst = new RefillClock();
      for (let i = 0; i < 8; i++) expect((await store.consume(plan)).allowed).toBe(true);
      const [held] = await store.peek(plan);
      // 20 - 8 spent - 5 held, plus what refilled since the first decision (one token in
      // 10 ms). A run slow enough to refill what is held tells nothing: the next trial.
      const refilledHeld = sinceFirst.gained(100) + 1;
      if (refilledHeld >= 5) continue;
      expect(held!.remaining).toBeLessThanOrEqual(20 - 8 - 5 + refilledHeld);
      // The bucket refills meanwhile; the held slots' times pass.
      await sleep(300);
      const clock = new RefillClock();
      const burst = await Promise.all(Array.from({ length: 60 }, () => store.consume(plan)));
      // A full bucket admits 20, plus what refills during the burst; spending the 5 stale
      // slots on top would make it 25.
      const refilled = clock.gained(100) + 1;
      expect(burst.filter((decision) => decision.allowed).length).toBeLessThanOrEqual(20 + refilled);
      // A burst slowed down by a busy machine refills as much as the stale slots: it tells nothing.
      if (refilled < 5) telling++;
    }
    expect(telling).toBeGreaterThan(0);
  });

  it('four instances never admit more than one budget (no refill), flooded concurrently', async () => {
    const four = await Promise.all([0, 1, 2, 3].map(() => makeStore()));
    for (let trial = 0; trial < 3; trial++) {
      const spec = tokenBucketSpec('global', 'g', 50, 0.001);
      const decisions = await Promise.all(
        Array.from({ length: 1000 }, (_, i) => {
          const store = four[i % 4]!;
          return store.consume(planOf(store, `ip:budget-${trial}`, [spec]));
        }),
      );
      expect(decisions.filter((decision) => decision.allowed)).toHaveLength(50);
    }
  });

  it('global and per-type buckets of one tracker are reserved together and stay exact', async () => {
    const store = await makeStore();
    const global = tokenBucketSpec('global', 'g', 30, 0.001);
    const chat = planOf(store, 'ip:pair', [global, tokenBucketSpec('type', 't:chat', 20, 0.001)]);
    const move = planOf(store, 'ip:pair', [global, tokenBucketSpec('type', 't:move', 20, 0.001)]);
    let chats = 0;
    let moves = 0;
    for (let i = 0; i < 60; i++) {
      if ((await store.consume(chat)).allowed) chats++;
      if ((await store.consume(move)).allowed) moves++;
    }
    expect(chats).toBeLessThanOrEqual(20);
    expect(moves).toBeLessThanOrEqual(20);
    expect(chats + moves).toBeLessThanOrEqual(30);
  });

  it('a plan with a sliding log is decided per call (one script per decision)', async () => {
    const store = await makeStore();
    const plan = planOf(store, 'ip:log', [
      tokenBucketSpec('global', 'g', 1000, 1000),
      windowSpec('expensive', 'x', 'sliding-log', 1000, 60_000),
    ]);
    const before = await scriptCalls();
    for (let i = 0; i < 50; i++) await store.consume(plan);
    expect((await scriptCalls()) - before).toBe(50);
  });

  it('C-34: four instances with skewed clocks flooding one tracker: never above the bucket, >= 95 % of its rate', async () => {
    // The instances' own clocks (the block cache's) are skewed by up to 5 s; the scripts
    // read Redis TIME, and reserved slots are timed on each process's monotonic clock.
    const four = await Promise.all(
      [-5000, 0, 400, 5000].map((offset) => makeStore({ now: () => Date.now() + offset })),
    );
    const capacity = 50;
    const rate = 200; // tokens a second
    const spec = tokenBucketSpec('global', 'g', capacity, rate);
    const start = performance.now();
    // The first instance starts alone at about half the rate, so its batches grow; the
    // three others join the flood after 500 ms, while it still holds slots.
    const parties = four.map((store, i) => ({
      store,
      plan: planOf(store, 'ip:c34', [spec]),
      ...(i === 0 ? { paceMs: 10, inFlight: 1 } : { from: start + 500 }),
    }));
    const calls = await scriptCalls();
    // 3 s of steady load (not RELIABILITY's 10 s, to keep the suite fast).
    const perStore = await flood(parties, start + 3000);
    const admitted = perStore.flat();
    const scripts = (await scriptCalls()) - calls;
    const worst = worstBurst(admitted, rate / 1000);
    // Steady load: the second and third seconds (the first starts with a full bucket).
    const steady = admitted.filter(([, t]) => t >= start + 1000 && t < start + 3000).length;
    console.log(
      `C-34: admitted ${admitted.length} (${perStore.map((a) => a.length).join('/')}) in 3 s with ${scripts} scripts; worst window ${worst.toFixed(2)} over its refill (capacity ${capacity}); steady ${steady} of ${rate * 2}`,
    );
    expect(worst).toBeLessThanOrEqual(capacity);
    expect(steady).toBeGreaterThanOrEqual(0.95 * (rate * 2 - lostToStalls(capacity, rate)));
    expect(steady).toBeLessThanOrEqual(rate * 2 + capacity + 1);
  }, 30_000);

  it('C-34: an instance killed while holding a reservation: its slots come back within its TTL', async () => {
    const ttlMs = 500;
    const capacity = 100;
    const rate = 100;
    const spec = tokenBucketSpec('global', 'g', capacity, rate);
    const { doomedClient, doomed } = await doomedStore(ttlMs);
    const survivors = await Promise.all([0, 1, 2].map(() => makeStore({ reservations: { maxBatch: 64, ttlMs } })));
    const doomedPlan = planOf(doomed, 'ip:killed', [spec]);
    // Alone, well under the rate: its batches grow.
    for (let i = 0; i < 40; i++) {
      await doomed.consume(doomedPlan);
      await sleep(5);
    }
    const peekPlan = planOf(survivors[0]!, 'ip:killed', [spec]);
    const [held] = await survivors[0]!.peek(peekPlan);
    // It holds slots: the bucket shows more taken than the few tokens spent lately.
    expect(held!.remaining).toBeLessThan(capacity - 2);
    // Killed: its connection drops, nothing is given back.
    doomedClient.disconnect();
    const killedAt = performance.now();
    await sleep(ttlMs + 20);
    const [after] = await survivors[0]!.peek(peekPlan);
    expect(after!.remaining).toBeGreaterThanOrEqual(capacity - 1);

    // And under a flood by the three others, the rate from the TTL on is the bucket's.
    const parties = survivors.map((store) => ({ store, plan: planOf(store, 'ip:killed', [spec]) }));
    const start = performance.now();
    const admitted = (await flood(parties, start + 2000)).flat();
    expect(worstBurst(admitted, rate / 1000)).toBeLessThanOrEqual(capacity);
    const steady = admitted.filter(([, t]) => t >= start + 1000).length;
    expect(steady).toBeGreaterThanOrEqual(0.95 * (rate - lostToStalls(capacity, rate)));
    expect(performance.now() - killedAt).toBeGreaterThan(ttlMs);
    await doomed.close();
  }, 30_000);

  it('a lone tracker spending its burst faster than its bucket refills keeps deciding locally (a call takes ttlMs of refill wherever fullAt stands)', async () => {
    const store = await makeStore({ reservations: { maxBatch: 64, ttlMs: 500 } });
    // A burst no test spends, 100 tokens a second (slots 10 ms apart, 51 within ttlMs): the
    // flood below runs the bucket's fullAt seconds ahead of now. Slots granted only within
    // ttlMs of now (before) left every decision per call once fullAt was 500 ms ahead.
    const spec = tokenBucketSpec('global', 'g', 1_000_000, 100);
    const plan = planOf(store, 'ip:burst-ahead', [spec]);
    const before = await scriptCalls();
    const decisions = 600;
    let allowed = 0;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        for (let i = 0; i < decisions / 4; i++) if ((await store.consume(plan)).allowed) allowed++;
      }),
    );
    const scripts = (await scriptCalls()) - before;
    const [status] = await store.peek(plan);
    const ahead = (1_000_000 - status!.remaining) / 100;
    console.log(`burst of ${decisions} against 100/s: ${scripts} scripts, bucket ${ahead.toFixed(1)} s ahead`);
    expect(allowed).toBe(decisions);
    // Well past ttlMs ahead: the case the change is about (unless the machine was so slow
    // that the flood did not outrun the refill).
    expect(ahead).toBeGreaterThan(1);
    // At most 51 slots a call: about 12 calls; per call, 600.
    expect(scripts).toBeLessThan(decisions / 8);
  }, 30_000);

  it('an instance killed while spending its burst ahead of the refill held at most ttlMs of it unspent', async () => {
    const ttlMs = 500;
    const capacity = 1_000_000;
    const rate = 100;
    const spec = tokenBucketSpec('global', 'g', capacity, rate);
    const { doomedClient, doomed } = await doomedStore(ttlMs);
    const survivor = await makeStore({ reservations: false });
    const doomedPlan = planOf(doomed, 'ip:killed-ahead', [spec]);
    const peekPlan = planOf(survivor, 'ip:killed-ahead', [spec]);
    const clock = new RefillClock();
    let spent = 0;
    for (let i = 0; i < 300; i++) if ((await doomed.consume(doomedPlan)).allowed) spent++;
    doomedClient.disconnect();
    const [after] = await survivor.peek(peekPlan);
    // What the bucket lacks beyond what was spent (less what it refilled meanwhile) is what the
    // dead instance held unspent: at most ttlMs of refill (51 slots) and maxBatch.
    const held = capacity - after!.remaining - spent;
    console.log(
      `killed after ${spent} decisions: ${held} held unspent (refill since start at most ${clock.gained(rate)})`,
    );
    expect(spent).toBe(300);
    expect(held).toBeLessThanOrEqual(Math.floor(ttlMs / (1000 / rate)) + 1);
    await doomed.close();
  }, 30_000);

  it('two instances spending a burst ahead of the refill never admit more than the bucket', async () => {
    const two = await Promise.all([0, 1].map(() => makeStore({ reservations: { maxBatch: 64, ttlMs: 1000 } })));
    // 300 burst at 200 a second: the flood spends the burst in well under a second, with
    // fullAt running ahead while it does, then lives on the refill.
    const capacity = 300;
    const rate = 200;
    const spec = tokenBucketSpec('global', 'g', capacity, rate);
    const start = performance.now();
    const perStore = await flood(
      two.map((store) => ({ store, plan: planOf(store, 'ip:burst-two', [spec]) })),
      start + 2000,
    );
    const admitted = perStore.flat();
    const worst = worstBurst(admitted, rate / 1000);
    console.log(
      `two instances, burst ahead: admitted ${admitted.length} (${perStore.map((a) => a.length).join('/')}); worst window ${worst.toFixed(2)} over its refill (capacity ${capacity})`,
    );
    expect(worst).toBeLessThanOrEqual(capacity);
    expect(admitted.length).toBeGreaterThanOrEqual(capacity);
  }, 30_000);

  it('close gives back the unspent slots of a batch', async () => {
    const store = await makeStore({ reservations: { maxBatch: 64, ttlMs: 5000 } });
    const other = await makeStore();
    // 10 tokens a second, capacity 100: slots 100 ms apart, up to 5 s ahead.
    const spec = tokenBucketSpec('global', 'g', 100, 10);
    const plan = planOf(store, 'ip:closing', [spec]);
    let spent = 0;
    const clock = new RefillClock();
    for (let i = 0; i < 12; i++) if ((await store.consume(plan)).allowed) spent++;
    const otherPlan = planOf(other, 'ip:closing', [spec]);
    const [held] = await other.peek(otherPlan);
    expect(held!.remaining).toBeLessThan(100 - spent);
    await store.close();
    const [back] = await other.peek(otherPlan);
    expect(back!.remaining).toBeGreaterThanOrEqual(100 - spent);
    // Plus what the 10-a-second refill gave since the first decision (one on an idle machine).
    const refilled = clock.gained(10) + 1;
    expect(back!.remaining).toBeLessThanOrEqual(100 - spent + refilled);
  });

  it('rejects invalid reservation options', async () => {
    const client = storeClient(server.port);
    clients.push(client);
    for (const reservations of [
      { maxBatch: 0 },
      { maxBatch: 1.5 },
      { maxBatch: 5000 },
      { ttlMs: -1 },
      { ttlMs: NaN },
      7,
    ]) {
      expect(
        () => new RedisRateLimitStore({ client, reservations: reservations as RedisStoreOptions['reservations'] }),
      ).toThrow(WsRateLimitConfigError);
    }
    const store = new RedisRateLimitStore({ client, reservations: true });
    stores.push(store);
  });

  it('every key keeps a bounded TTL', async () => {
    // The longest-lived state here: 50 tokens at 0.001 a second take 50,000 s to refill.
    const { problems, checked } = await expectBoundedTtls(admin, 'resv:', () => 50_000_000 + 1000);
    expect(checked).toBeGreaterThan(0);
    expect(problems).toEqual([]);
  });

  /**
   * Cases from the review of the background reservations (each failed on the code it
   * reviewed): stores with batches of 16 and a long TTL unless a case says otherwise.
   */
  describe('review cases', () => {
    const makeReviewStore = (options: Partial<RedisStoreOptions> = {}): Promise<RedisRateLimitStore> =>
      makeStore({ keyPrefix: 'review:', reservations: { maxBatch: 16, ttlMs: 120_000 }, ...options });
    const allowed = (decisions: readonly RateLimitDecision[]): number => decisions.filter((d) => d.allowed).length;

    it('delete() resets the bucket: a batch reserved before the reset (its reply still in flight) is not spent after it', async () => {
      const store = await makeReviewStore();
      // Capacity 20, 1 token a second: no refill to speak of during the test.
      const capacity = 20;
      const spec = tokenBucketSpec('global', 'g', capacity, 1);
      const plan = planOf(store, 'ip:reset-in-flight', [spec]);
      // A new plan: the first call asks 2, the 30 others wait on it.
      const first = store.consume(plan);
      const waiters = Promise.all(Array.from({ length: 30 }, () => store.consume(plan)));
      // When it settles, the first waiter spends slot 1 and asks the next batch (16) in the background.
      expect((await first).allowed).toBe(true);
      // The keys are reset while that background call is in flight; the next decision opens a new entry.
      const clock = new RefillClock();
      const reset = store.delete(plan.tiers.map((tier) => tier.key));
      const next = store.consume(plan);
      await reset;
      const afterReset: RateLimitDecision[] = [await next, ...(await waiters).slice(1)];
      afterReset.push(...(await Promise.all(Array.from({ length: 60 }, () => store.consume(plan)))));
      const refilled = clock.gained(1) + 1;
      // A bucket reset to full admits its capacity (plus its refill); the background batch's 16
      // slots were taken before the reset and belong to the bucket as it was.
      expect(allowed(afterReset)).toBeLessThanOrEqual(capacity + refilled);
    });
    it('a batch that comes back late while the store closes, and whose give-back then fails, is no unhandled rejection', async () => {
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown): void => {
        unhandled.push(reason);
      };
      process.on('unhandledRejection', onUnhandled);
      try {
        const store = await makeReviewStore({ commandTimeoutMs: 100 });
        const spec = tokenBucketSpec('global', 'g', 100, 1);
        const held = planOf(store, 'ip:close-late-held', [spec]);
        const late = planOf(store, 'ip:close-late-late', [spec]);
        // One plan holds unspent slots: close gives them back (a round trip close waits for).
        for (let i = 0; i < 3; i++) expect((await store.consume(held)).allowed).toBe(true);
        await sleep(50);
        // The other's first reserving call is in flight when Redis stalls and the store closes.
        server.pause();
        const stalled = Promise.resolve(store.consume(late)).catch(() => undefined);
        const closing = store.close();
        // The call misses its deadline (100 ms); close sends the first plan's give-back.
        await sleep(150);
        // Redis answers both (the reserve late), then stalls again before the late batch's give-back.
        server.resume();
        const until = performance.now() + 30;
        while (performance.now() < until) {
          // the event loop is held: the replies wait in the socket
        }
        server.pause();
        await closing;
        await stalled;
        // The late batch's give-back misses its deadline after close() resolved.
        await sleep(300);
        server.resume();
        await sleep(50);
        expect(unhandled).toEqual([]);
      } finally {
        server.resume();
        process.off('unhandledRejection', onUnhandled);
      }
    });
    it('concurrent refused decisions on a new plan are not sent one reserving call at a time (block cache off)', async () => {
      const proxy = await startTcpProxy(server.port);
      const client = storeClient(proxy.port);
      clients.push(client);
      await ready(client);
      const store = new RedisRateLimitStore({
        client,
        keyPrefix: 'review:',
        commandTimeoutMs: 5000,
        blockCache: false,
        reservations: { maxBatch: 16, ttlMs: 1000 },
      });
      stores.push(store);
      const other = await makeReviewStore({ reservations: false });
      try {
        // Another instance spent the bucket (no refill to speak of).
        const spec = tokenBucketSpec('global', 'g', 5, 0.001);
        for (let i = 0; i < 5; i++) await other.consume(planOf(other, 'ip:refused-serial', [spec]));
        const plan = planOf(store, 'ip:refused-serial', [spec]);
        proxy.latency(100);
        const began = performance.now();
        const decisions = await Promise.all(Array.from({ length: 20 }, () => store.consume(plan)));
        const took = performance.now() - began;
        console.log(`20 concurrent refused decisions at 100 ms a round trip: ${took.toFixed(0)} ms`);
        expect(allowed(decisions)).toBe(0);
        // Per call (as before b61a01a, or at a batch size of 1) they go out together: one round
        // trip, or two (not twenty: 2,000 ms), plus the longest stall of this process.
        expect(took).toBeLessThan(500 + Math.min(stalls.longestMs(), 1000));
      } finally {
        proxy.pass();
        await store.close();
        await proxy.close();
      }
    });
    it('a burst within the capacity running ahead of the refill gets no Redis error and never opens the breaker', async () => {
      const changes: boolean[] = [];
      const errors: unknown[] = [];
      const store = await makeReviewStore({
        reservations: { maxBatch: 64, ttlMs: 1000 },
        onAvailabilityChange: (available) => changes.push(available),
      });
      // 100 burst, 10 a second (slots 100 ms apart): a batch of 8 reaches past the TTL.
      const spec = tokenBucketSpec('global', 'g', 100, 10);
      const plan = planOf(store, 'ip:ttl-cut-background', [spec]);
      let admitted = 0;
      for (let i = 0; i < 60; i++) {
        try {
          if ((await store.consume(plan)).allowed) admitted++;
        } catch (error) {
          errors.push(error);
        }
        // A steady pace (500 a second, above the refill but within the burst).
        await sleep(2);
      }
      // Once, the background call for the slots after a TTL-cut batch (they started more than
      // ttlMs ahead of now) got the script's error reply 'wsrl: a refused reservation with no wait'.
      console.log((await admin.info('errorstats')).trim(), errors[0]);
      console.log(
        `burst of 60 within a capacity of 100: ${admitted} admitted, ${errors.length} errors, breaker ${JSON.stringify(changes)}`,
      );
      expect(changes).toEqual([]);
      expect(errors).toEqual([]);
      expect(admitted).toBe(60);
    });
  });
});
