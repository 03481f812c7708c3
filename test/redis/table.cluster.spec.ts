import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { Cluster } from 'ioredis';
import { tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { createRedisStore, RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { rawCommand, startCluster, type RedisCluster } from '../support/redis-server.js';
import { expectedOutcomes, runScenario, SCENARIOS, T0, type ManualClock } from './decision-table.js';
import { adminClient, closeClient, expectBoundedTtls, keySlots, ready, slotOwners } from './helpers.js';

/** Identity text as hostile as C-20 has it: braces, colons, stars, spaces, newlines, `{x}` forms. */
const HOSTILE_UNITS = [
  '{',
  '}',
  ':',
  '*',
  ' ',
  '\n',
  '{x}',
  '{}',
  '}{',
  'a',
  'b',
  '1',
  '\u0000',
  '🚀',
  '\ud800',
  '\udc00',
];
const hostileIdentity: fc.Arbitrary<string> = fc.oneof(
  fc.string({ unit: fc.constantFrom(...HOSTILE_UNITS), maxLength: 16 }),
  fc.string({ unit: 'binary', maxLength: 32 }),
  fc
    .tuple(fc.string({ maxLength: 8 }), fc.string({ maxLength: 8 }), fc.string({ maxLength: 8 }))
    .map(([before, tag, after]) => `${before}{${tag}}${after}`),
);
/** Short text over the characters where a lossy encoding or a separator would make two keys one. */
const collidingText = fc.string({
  unit: fc.constantFrom('{', '}', ':', 'a', '\ud800', '\udbff', '\udc00', '\ufffd'),
  maxLength: 4,
});

/** Survival function of the chi-square distribution for an even number of degrees of freedom. */
function chiSquareP(chi2: number, dof: number): number {
  let term = 1;
  let sum = 1;
  for (let j = 1; j < dof / 2; j++) {
    term *= chi2 / 2 / j;
    sum += term;
  }
  return Math.exp(-chi2 / 2) * sum;
}

function chiSquare(observed: readonly number[], expected: readonly number[]): number {
  return observed.reduce((sum, o, i) => sum + (o - expected[i]!) ** 2 / expected[i]!, 0);
}

/**
 * The shared decision table on a three-master Cluster (C-20): every key of a plan shares the
 * tracker's hash tag, so each script runs on one node, and no CROSSSLOT ever occurs.
 */
describe('decision table: Redis Cluster (3 masters)', () => {
  let cluster: RedisCluster;
  let client: Cluster;
  let store: RedisRateLimitStore;
  const clock: ManualClock = { now: T0 };

  beforeAll(async () => {
    cluster = await startCluster();
    client = new Cluster([...cluster.startupNodes], {
      enableOfflineQueue: false,
      redisOptions: { maxRetriesPerRequest: 0, autoResendUnfulfilledCommands: false },
    });
    client.on('error', () => undefined);
    await ready(client);
    store = new RedisRateLimitStore({
      client,
      keyPrefix: 'cl:',
      clock: 'app',
      now: () => clock.now,
      blockCache: false,
      commandTimeoutMs: 2000,
    });
  }, 30_000);

  afterAll(async () => {
    await store?.close();
    if (client) await closeClient(client);
    await cluster?.stop();
  });

  it.each(SCENARIOS.map((scenario) => [scenario.name, scenario] as const))('%s', async (_name, scenario) => {
    expect(await runScenario(store, clock, scenario, `cluster-${Date.now()}`)).toEqual(expectedOutcomes(scenario));
  });

  it('hostile trackers: no CROSSSLOT, and the keys spread over every master', async () => {
    const specs = [tokenBucketSpec('global', 'g', 10, 1), windowSpec('expensive', 'x', 'sliding-log', 5, 60_000)];
    const hostile = ['{x}', '}{', '{', '}', 'a:b', '*', ' ', '\n', '{user}:1', '', '\u0000', '🚀'];
    const trackers = [...hostile, ...Array.from({ length: 600 }, (_, i) => `key:{${i}}:${i % 7}`)];
    const errors: unknown[] = [];
    for (const tracker of trackers) {
      const plan = { tracker, tiers: specs.map((spec) => ({ key: store.key(tracker, spec.suffix), spec })) };
      try {
        await store.consume(plan);
        await store.peek(plan);
      } catch (error) {
        errors.push(error);
      }
    }
    expect(errors).toEqual([]);
    const sizes = await Promise.all(cluster.nodes.map((node) => rawCommand(node.port, ['DBSIZE'])));
    // 612 trackers x 2 keys (+ clock keys): an even spread puts about a third on each master.
    for (const size of sizes) expect(size as number).toBeGreaterThan(300);
  });

  it('C-20: no two identities (or tiers) share a key, and no identity text reaches the hash tag (fast-check)', () => {
    const keyOf = (tracker: string, suffix: string) => store.key(tracker, suffix);
    const tagOf = (key: string) => key.slice(key.indexOf('{') + 1, key.indexOf('}'));
    fc.assert(
      fc.property(
        fc.oneof(hostileIdentity, collidingText),
        fc.oneof(hostileIdentity, collidingText),
        fc.constantFrom('g', 'x', 't:chat', 't:{x}', 'cr'),
        fc.constantFrom('g', 'x', 't:chat', 't:{x}', 'cr'),
        (one, two, suffixOne, suffixTwo) => {
          const first = keyOf(one, suffixOne);
          const second = keyOf(two, suffixTwo);
          // The tag Redis Cluster hashes is the identity's fixed-length hash, whatever the text.
          return (
            (first === second) === (one === two && suffixOne === suffixTwo) &&
            /^[A-Za-z0-9_-]{27}$/.test(tagOf(first)) &&
            (tagOf(first) === tagOf(second)) === (one === two)
          );
        },
      ),
      { numRuns: 10_000 },
    );
  });

  it('C-20: 10,000 random hostile identities decide with 0 CROSSSLOT, each on one master, spread evenly (chi-square p > 0.01)', async () => {
    const inj = new RedisRateLimitStore({ client, keyPrefix: 'inj:', blockCache: false, commandTimeoutMs: 2000 });
    // A fixed seed: the same 10,000 identities every run, so the chi-square test cannot flake.
    const identities = [...new Set(fc.sample(hostileIdentity, { numRuns: 14_000, seed: 20 }))].slice(0, 10_000);
    const types = fc.sample(hostileIdentity, { numRuns: identities.length, seed: 21 });
    expect(identities).toHaveLength(10_000);
    // Slow refill: a spent token keeps the key 1,000 s, so every key is still there to count.
    const global = tokenBucketSpec('global', 'g', 10, 0.001);
    const plans = identities.map((tracker, i) => {
      const type = windowSpec('expensive', `t:${types[i]!}`, 'sliding-log', 5, 10_000);
      return { tracker, tiers: [global, type].map((spec) => ({ key: inj.key(tracker, spec.suffix), spec })) };
    });
    const errors: string[] = [];
    let next = 0;
    const worker = async () => {
      while (next < plans.length) {
        const plan = plans[next++]!;
        try {
          if (!(await inj.consume(plan)).allowed) errors.push(`refused ${JSON.stringify(plan.tracker)}`);
        } catch (error) {
          errors.push(String((error as Error & { cause?: Error }).cause?.message ?? error));
        }
      }
    };
    await Promise.all(Array.from({ length: 32 }, worker));
    await inj.close();
    expect(errors.filter((error) => error.includes('CROSSSLOT'))).toEqual([]);
    expect(errors).toEqual([]);

    // Where the keys are: each identity's tracker hash (key layout 4: both tiers are fields of
    // it; the log's own key, on the same tag, is declared but unused), one per identity.
    const tagsByNode: Map<string, number>[] = [];
    for (const node of cluster.nodes) {
      const admin = adminClient(node.port);
      const tags = new Map<string, number>();
      try {
        let cursor = '0';
        do {
          const [nextCursor, keys] = await admin.scan(cursor, 'MATCH', 'inj:*', 'COUNT', 1000);
          cursor = nextCursor;
          for (const key of keys) {
            const tag = key.slice('inj:{'.length, 'inj:{'.length + 27);
            tags.set(tag, (tags.get(tag) ?? 0) + 1);
          }
        } while (cursor !== '0');
      } finally {
        await closeClient(admin);
      }
      tagsByNode.push(tags);
    }
    const perNode = tagsByNode.map((tags) => tags.size);
    expect(perNode.reduce((a, b) => a + b, 0)).toBe(10_000);
    expect(tagsByNode.flatMap((tags) => [...tags].filter(([, count]) => count !== 1)).slice(0, 5)).toEqual([]);

    // Even spread over the masters (2 degrees of freedom: p = exp(-chi2 / 2)) ...
    const owners = await slotOwners(cluster.nodes[0]!.port);
    const share = cluster.nodes.map((node) => owners.filter((owner) => owner === node.port).length / 16_384);
    const masters = chiSquare(
      perNode,
      share.map((s) => s * 10_000),
    );
    // ... and over 17 equal slot ranges (16 degrees of freedom).
    const slots = await keySlots(
      cluster.nodes[0]!.port,
      plans.map((plan) => plan.tiers[0]!.key),
    );
    const ranges = new Array<number>(17).fill(0);
    for (const slot of slots) ranges[Math.floor((slot * 17) / 16_384)]!++;
    const bounds = Array.from({ length: 18 }, (_, i) => Math.ceil((i * 16_384) / 17));
    const rangeExpected = ranges.map((_, i) => ((bounds[i + 1]! - bounds[i]!) / 16_384) * 10_000);
    const spread = chiSquare(ranges, rangeExpected);
    console.log(
      `C-20: 10,000 hostile identities, 0 CROSSSLOT, 0 errors; per master ${perNode.join(' / ')} ` +
        `(chi2 ${masters.toFixed(2)}, p ${chiSquareP(masters, 2).toFixed(3)}); over 17 slot ranges chi2 ${spread.toFixed(2)}, ` +
        `p ${chiSquareP(spread, 16).toFixed(3)}`,
    );
    expect(chiSquareP(masters, 2)).toBeGreaterThan(0.01);
    expect(chiSquareP(spread, 16)).toBeGreaterThan(0.01);

    for (const node of cluster.nodes) {
      const admin = adminClient(node.port);
      try {
        const { problems } = await expectBoundedTtls(admin, 'inj:', (key) => (key.endsWith(':g') ? 1_000_000 : 11_000));
        expect(problems).toEqual([]);
      } finally {
        await closeClient(admin);
      }
    }
  });

  it('connects by itself from cluster options and closes what it opened', async () => {
    const own = await createRedisStore({ cluster: { nodes: [...cluster.startupNodes] }, keyPrefix: 'own:' });
    const tracker = 'ip:192.0.2.1';
    const plan = { tracker, tiers: [{ key: own.key(tracker, 'g'), spec: tokenBucketSpec('global', 'g', 1, 1) }] };
    try {
      expect((await own.consume(plan)).allowed).toBe(true);
      expect((await own.consume(plan)).allowed).toBe(false);
    } finally {
      await own.close();
    }
    expect(own.client.status).toBe('end');
  });
});
