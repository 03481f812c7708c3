import { describe, expect, it } from '@jest/globals';
import type { RateLimitPlan, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { luaString, planScriptArgs, planScriptLua, planSignature } from '../../lib/storage/redis/plan-scripts.js';

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

  it('KEYS are the tracker hash, each log key and the clock key; ARGV the time and the nonce on the app clock; the other kind adds the field-TTL mode and the fields', () => {
    const plan = planOf('a', [bucket, log, counter]);
    const app = planScriptArgs(plan, planSignature(plan, true)!, true);
    expect(app.args).toEqual(['3', 'p:{a}:~4', 'p:{a}:x', 'p:{a}:~clock', '', '']);
    expect(app.fields).toEqual([':g', ':x', ':c:chat']);
    expect(app.fieldTtlsAt).toBe(6);
    expect([app.nowAt, app.nonceAt]).toEqual([4, 5]);
    // On Redis's clock the script makes the nonce of log members from Redis's time.
    const redis = planScriptArgs(plan, planSignature(plan, false)!, false);
    expect(redis.args).toEqual(['2', 'p:{a}:~4', 'p:{a}:x']);
    expect([redis.nowAt, redis.nonceAt, redis.fieldTtlsAt]).toEqual([-1, -1, 3]);
    const buckets = planOf('a', [bucket]);
    expect(planScriptArgs(buckets, planSignature(buckets, false)!, false)).toMatchObject({
      args: ['1', 'p:{a}:~4'],
      fields: [':g'],
      fieldTtlsAt: 2,
      nonceAt: -1,
    });
  });

  it('the Lua holds the figures as literals and only the helpers its tiers call', () => {
    // The kind taking field names and mode as arguments.
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
    expect(mixed).toContain('logRead(raws2, KEYS[2], 5, 1, true)');
    expect(mixed).toContain('local fieldTtls = tonumber(ARGV[3])');
    expect(mixed).toContain('logWrite(logs2, fulls2, KEYS[2], 5, 1, now, 60000, ARGV[2])');
    // No comment line: the helpers' own are stripped.
    expect(mixed).not.toMatch(/^\s*--/m);
    expect(() => planScriptLua([concurrencySpec('concurrency', 'cc', 1)], false)).toThrow(/concurrency/);
  });

  it('with field names and mode written in, the script reads no argument but the app time and nonce', () => {
    const named = planScriptLua([bucket, log, counter], false, { fields: [':g', ':x', ':c:chat'], mode: 2 });
    expect(named).toContain("redis.pcall('HMGET', KEYS[1], '~e', ':g', ':x', ':c:chat')");
    expect(named).not.toMatch(/ARGV/);
    expect(named).toContain("t[1] .. '.' .. t[2]");
    expect(named).toContain(
      "redis.call('HSETEX', KEYS[1], 'PX', hmax + 1000, 'FIELDS', 3, ':g', val1, ':x', val2, ':c:chat', val3)",
    );
    // Where some field is deleted, the general write (`WRITE_TRACKER_STATEMENTS`) with the mode as a literal.
    expect(named).toContain('local key, s, ttl, exp, mode = KEYS[1], sets, hmax, hexp, 2');
    const hashTtl = planScriptLua([bucket], false, { fields: [':g'], mode: 0 });
    expect(hashTtl).toContain("redis.call('HSET', KEYS[1], ':g', val1, '~e', struct.pack('<d', at))");
    expect(hashTtl).not.toContain("redis.call('HSETEX', KEYS[1], 'PX', hmax");
    const redis74 = planScriptLua([bucket], true, { fields: [':g'], mode: 1 });
    expect(redis74).toContain("redis.call('HPEXPIRE', KEYS[1], hmax + 1000, 'FIELDS', 1, ':g')");
    expect(redis74).toContain('readClock(ARGV[1], clockKey)');
  });

  it('field names become Lua literals of their UTF-8 bytes', () => {
    expect(luaString(':t:chat')).toBe("':t:chat'");
    expect(luaString("a'b\\c")).toBe("'a\\039b\\092c'");
    expect(luaString('\n1\u00e9')).toBe("'\\0101\\195\\169'");
    // A lone surrogate: U+FFFD, as ioredis sends it.
    expect(luaString('\ud800')).toBe("'\\239\\191\\189'");
  });
});
