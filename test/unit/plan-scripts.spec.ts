import { describe, expect, it } from '@jest/globals';
import type { RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { planScriptArgs, planScriptLua, planSignature } from '../../lib/storage/redis/plan-scripts.js';

const key = (tracker: string, suffix: string) => `p:{${tracker}}:${suffix}`;
const planOf = (tracker: string, specs: readonly TierSpec[]): RateLimitPlan => ({
  tracker,
  tiers: specs.map((spec) => ({ key: key(tracker, spec.suffix), spec })),
});

const bucket = tokenBucketSpec('global', 'g', 100, 50);
const log = windowSpec('expensive', 'x', 'sliding-log', 5, 60_000);
const counter = windowSpec('type', 'c:chat', 'sliding-counter', 20, 1000);

describe('plan scripts: shapes, arguments and the Lua they get', () => {
  it('plans of one shape share a signature whatever their tracker; any other figure or the clock makes another', () => {
    const specs = [bucket, log, counter];
    const a = planSignature(planOf('a', specs), false);
    expect(a).toBeDefined();
    expect(planSignature(planOf('b', specs), false)).toBe(a);
    expect(planSignature(planOf('a', specs), true)).not.toBe(a);
    expect(planSignature(planOf('a', [tokenBucketSpec('global', 'g', 100, 51), log, counter]), false)).not.toBe(a);
    expect(
      planSignature(planOf('a', [bucket, windowSpec('expensive', 'x', 'sliding-log', 5, 60_001), counter]), false),
    ).not.toBe(a);
    expect(planSignature(planOf('a', [bucket, counter, log]), false)).not.toBe(a);
  });

  it('concurrency tiers, plans over two tracker hashes, more than 16 tiers and figures that are not finite stay generic', () => {
    expect(planSignature(planOf('a', [bucket, concurrencySpec('concurrency', 'cc', 2)]), false)).toBeUndefined();
    const twoTrackers: RateLimitPlan = {
      tracker: 'a',
      tiers: [
        { key: key('a', 'g'), spec: bucket },
        { key: key('b', 'g'), spec: bucket },
      ],
    };
    expect(planSignature(twoTrackers, false)).toBeUndefined();
    // A sliding log lives in its tracker's hash too: a log of another tracker splits the plan.
    expect(
      planSignature(
        {
          tracker: 'a',
          tiers: [
            { key: key('a', 'g'), spec: bucket },
            { key: key('b', 'x'), spec: log },
          ],
        },
        false,
      ),
    ).toBeUndefined();
    const many = Array.from({ length: 17 }, (_, i) => tokenBucketSpec('global', `g${i}`, 10, 1));
    expect(planSignature(planOf('a', many), false)).toBeUndefined();
    expect(planSignature(planOf('a', many.slice(0, 16)), false)).toBeDefined();
    expect(planSignature(planOf('a', [{ ...bucket, slack: Infinity }]), false)).toBeUndefined();
    expect(planSignature(planOf('a', [{ ...log, windowMs: NaN }]), false)).toBeUndefined();
  });

  it('KEYS are the tracker hash, each log key and the clock key; ARGV the time and the nonce where used, the field-TTL flag, then the hash fields', () => {
    const plan = planOf('a', [bucket, log, counter]);
    const app = planScriptArgs(plan, planSignature(plan, true)!, true);
    expect(app.args).toEqual(['3', 'p:{a}:~4', 'p:{a}:x', 'p:{a}:~clock', '', '', '0', ':g', ':x', ':c:chat']);
    expect(app.fieldTtlsAt).toBe(6);
    expect([app.nowAt, app.nonceAt]).toEqual([4, 5]);
    const redis = planScriptArgs(plan, planSignature(plan, false)!, false);
    expect(redis.args).toEqual(['2', 'p:{a}:~4', 'p:{a}:x', '', '0', ':g', ':x', ':c:chat']);
    expect([redis.nowAt, redis.nonceAt]).toEqual([-1, 3]);
    const buckets = planOf('a', [bucket]);
    expect(planScriptArgs(buckets, planSignature(buckets, false)!, false)).toMatchObject({
      args: ['1', 'p:{a}:~4', '0', ':g'],
      fieldTtlsAt: 2,
      nonceAt: -1,
    });
  });

  it('the Lua holds the figures as literals and only the helpers its tiers call', () => {
    const lua = planScriptLua([bucket], false);
    expect(lua).toContain(`s1 - now <= ${bucket.slack}`);
    expect(lua).toContain(`fullAt = fullAt + ${bucket.span}`);
    expect(lua).toContain("redis.call('TIME')");
    expect(lua).toContain('local fieldTtls = tonumber(ARGV[1])');
    expect(lua).toContain('unpack(ARGV, 2)');
    expect(lua).not.toMatch(/counterWait|logWait|logRead|readLeases|readClock|ZRANGE/);
    const mixed = planScriptLua([bucket, log, counter], true);
    expect(mixed).toMatch(/counterWait/);
    expect(mixed).toMatch(/logWait/);
    expect(mixed).toContain('readClock(ARGV[1], clockKey)');
    expect(mixed).toContain('logRead(v[3], KEYS[2], 5, 1, true)');
    expect(mixed).toContain('local fieldTtls = tonumber(ARGV[3])');
    expect(() => planScriptLua([concurrencySpec('concurrency', 'cc', 1)], false)).toThrow(/concurrency/);
  });
});
