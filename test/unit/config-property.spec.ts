import { afterAll, describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { BlockList } from 'node:net';
import * as ws from 'ws';
import { createSlidingLog } from '../../lib/algorithms/sliding-log.js';
import { MAX_MAP_ENTRIES, MAX_TIMER_MS, MAX_VIOLATIONS } from '../../lib/config/bounds.js';
import { ENV_VARIABLES } from '../../lib/config/env-variables.js';
import { resolveOptions, type ResolvedWsRateLimitOptions } from '../../lib/config/resolve-options.js';
import { WsRateLimitConfigError } from '../../lib/exceptions/ws-rate-limit-config.error.js';
import type { SlidingCounterSpec, SlidingLogSpec, TierSpec } from '../../lib/interfaces/plan.interface.js';
import { createPlan } from '../../lib/plans/create-plan.js';
import { tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import { fcParams } from './support/exact-model.js';

/**
 * C-32 as a property: values drawn for every numeric variable (edges included), the per-type
 * and plan JSON and the trusted proxies. Start-up either refuses, naming a variable it was
 * given, or every consumer works: each bucket and window refuses a burst of its capacity + 1,
 * timers do not overflow, ws keeps the maxPayload, the violation log can be made.
 */

const NUMERIC = ENV_VARIABLES.filter((variable) =>
  ['positive-number', 'positive-integer', 'non-negative-integer'].includes(variable.kind),
);

/** The edges of item 5 and of every bound, each side. */
const EDGES = [
  '0',
  '1',
  '2',
  '0.5',
  '1.5',
  '4',
  '1e-320',
  '5e-324',
  '0.000001',
  '0.0000009',
  '1000000',
  '1000001',
  '100000',
  '100001',
  '2147483647',
  '2147483648',
  '4294967295',
  '4294968296',
  '16777215',
  '16777216',
  '1000000000',
  '1000000001',
  '1e11',
  '1e15',
  '1e400',
  '9007199254740993',
  '-1',
];

/** A number as an operator might write it. */
const figure: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...EDGES) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 2 ** 33 }).map(String) },
  { weight: 2, arbitrary: fc.integer({ min: 1, max: 200 }).map(String) },
  { weight: 1, arbitrary: fc.double({ min: 1e-9, max: 1e7, noNaN: true }).map(String) },
);

/** A JSON figure: a number, or something that is not one. */
const jsonFigure: fc.Arbitrary<string> = fc.oneof(
  { weight: 6, arbitrary: figure.filter((text) => !text.startsWith('1e4')) },
  { weight: 1, arbitrary: fc.constantFrom('null', '"5"', '[]', '{}', 'true') },
);

const bucketJson = fc
  .record({ capacity: jsonFigure, refillRate: jsonFigure, cost: jsonFigure }, { requiredKeys: [] })
  .map((fields) => `{${Object.entries(fields).map(([key, value]) => `"${key}":${value}`)}}`);

/** `WS_RATE_LIMIT_TYPES`: one type's figures, or a wrong shape. */
const typesJson = fc.oneof(
  { weight: 5, arbitrary: bucketJson.map((figures) => `{"chat":${figures}}`) },
  { weight: 1, arbitrary: fc.constantFrom('{"chat":null}', '{"chat":"fast"}', '{"chat":[]}', '[]', 'null') },
);

/** `WS_RATE_LIMIT_PLANS`: one plan "p", of any shape. */
const plansJson = fc.oneof(
  {
    weight: 4,
    arbitrary: fc
      .record({ capacity: jsonFigure, refillRate: jsonFigure }, { requiredKeys: [] })
      .map((fields) => `{"p":{"global":{${Object.entries(fields).map(([key, value]) => `"${key}":${value}`)}}}}`),
  },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      '{"p":null}',
      '{"p":"premium"}',
      '{"p":[]}',
      '{"p":{"global":"fast"}}',
      '{"p":{"global":null}}',
      '{"p":{"global":[]}}',
      '{"p":{"type":"x"}}',
      '{"p":{"types":null}}',
      '{"p":{"types":{"chat":null}}}',
      '{"p":{"expensive":[]}}',
      '{"p":{"expensive":{"max":200000}}}',
      '{"p":{"global":{"capacity":5,"refillRate":1e-320}}}',
    ),
  },
);

/** Coarse ranges (prefixes of 0 to 3 bits), so that coverage is decided by 8 addresses a family. */
const coarseRange = fc.oneof(
  fc
    .record({ block: fc.integer({ min: 0, max: 7 }), prefix: fc.integer({ min: 0, max: 3 }) })
    .map(({ block, prefix }) => `${block * 32}.0.0.0/${prefix}`),
  fc
    .record({ block: fc.integer({ min: 0, max: 7 }), prefix: fc.integer({ min: 0, max: 3 }) })
    .map(({ block, prefix }) => `${(block * 0x2000).toString(16)}::/${prefix}`),
  fc.constantFrom('loopback', 'uniquelocal', '::ffff:0:0/96', '10.0.0.1'),
);
const trustList = fc.array(coarseRange, { minLength: 1, maxLength: 4 }).map((entries) => entries.join(','));

const V4_PROBES = Array.from({ length: 8 }, (_, i) => `${i * 32}.0.0.2`);
const V6_PROBES = Array.from({ length: 8 }, (_, i) => `${(i * 0x2000).toString(16)}::2`);

/** Whether the entries trust every address of a family (each coarse block checked by one address). */
function trustsEveryone(text: string): boolean {
  const list = new BlockList();
  for (const entry of text.split(',')) {
    const named: Record<string, string[]> = {
      loopback: ['127.0.0.0/8', '::1/128'],
      uniquelocal: ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7'],
    };
    for (const range of named[entry] ?? [entry]) {
      const [address, bits] = range.split('/') as [string, string | undefined];
      const type = address.includes(':') ? 'ipv6' : 'ipv4';
      if (bits === undefined) list.addAddress(address, type);
      else list.addSubnet(address, Number(bits), type);
    }
  }
  return V4_PROBES.every((probe) => list.check(probe, 'ipv4')) || V6_PROBES.every((probe) => list.check(probe, 'ipv6'));
}

const DRAWN: Record<string, fc.Arbitrary<string>> = {
  ...Object.fromEntries(NUMERIC.map((variable) => [variable.name, figure])),
  WS_RATE_LIMIT_EXPENSIVE_ALGORITHM: fc.constantFrom('sliding-log', 'sliding-counter'),
  WS_RATE_LIMIT_TYPES: typesJson,
  WS_RATE_LIMIT_PLANS: plansJson,
  WS_RATE_LIMIT_TRUST_PROXY: trustList,
};

/** A few variables (so that some draws are valid), each with a drawn value. */
const environment: fc.Arbitrary<Record<string, string>> = fc
  .uniqueArray(fc.constantFrom(...Object.keys(DRAWN)), { minLength: 1, maxLength: 4 })
  .chain((names) =>
    fc
      .tuple(...names.map((name) => DRAWN[name]!))
      .map((values) => Object.fromEntries(names.map((name, i) => [name, values[i]!]))),
  );

/** Epoch milliseconds, as Redis's `TIME` gives: the coarsest clock a bucket runs on. */
const NOW = Date.now() + 0.123;

/** Messages of one spec a full tier admits at one instant, with the rounding the README documents. */
function admittedInBurst(spec: TierSpec, refillRate: number | undefined, store: MemoryRateLimitStore): void {
  const messages = spec.limit / spec.cost;
  // Past 4,000,000 (burst x rate, in messages), time in epoch ms rounds a message's share.
  const slack = refillRate === undefined ? 0 : Math.floor((messages * (refillRate / spec.cost)) / 4e6);
  const tracker = `conn:${++trackers}`;
  const unit = createPlan(store, tracker, [spec]);
  let admitted = 0;
  // Large bursts are mostly paid at once (the same key, one decision), then message by message.
  const bulk = Math.floor(messages) - 1000;
  if (bulk > 0) {
    const paid =
      spec.kind === 0
        ? tokenBucketSpec(spec.tier, spec.suffix, spec.limit, refillRate!, bulk * spec.cost)
        : windowSpec(
            spec.tier,
            spec.suffix,
            spec.algorithm as 'sliding-log',
            spec.limit,
            (spec as SlidingLogSpec | SlidingCounterSpec).windowMs,
            bulk * spec.cost,
          );
    expect(store.consume(createPlan(store, tracker, [paid])).allowed).toBe(true);
    admitted = bulk;
  }
  const most = Math.ceil(messages) + 1 + slack;
  while (admitted <= most && store.consume(unit).allowed) admitted++;
  // The last token of a full bucket sits exactly on the refusal boundary, where the rounding
  // of its time may refuse it (one message less, never more): a known float artifact.
  expect(admitted).toBeGreaterThanOrEqual(Math.floor(messages) - 1 - slack);
  expect(admitted).toBeLessThanOrEqual(Math.ceil(messages) + slack);
}
let trackers = 0;

/** Every consumer of the resolved options, fed with them. */
function checkConsumers(resolved: ResolvedWsRateLimitOptions): void {
  for (const ms of [
    resolved.handshakeTimeoutMs,
    resolved.pingIntervalMs,
    resolved.pongTimeoutMs,
    resolved.degradeCooldownMs,
    resolved.violations.windowMs,
    resolved.expensive.windowMs,
    resolved.redis.commandTimeoutMs,
    resolved.redis.leaseTtlMs,
  ]) {
    expect(Number.isInteger(ms) && ms >= 0 && ms <= MAX_TIMER_MS).toBe(true);
    timers.add(ms);
  }
  // ws keeps the limit it is given (it reads `maxPayload | 0`).
  const { Receiver } = ws as unknown as { Receiver: new (options: object) => { _maxPayload: number } };
  const receiver = new Receiver({ maxPayload: resolved.maxPayload });
  expect(receiver._maxPayload).toBe(resolved.maxPayload);
  expect(resolved.violations.max).toBeLessThanOrEqual(MAX_VIOLATIONS);
  if (resolved.violations.max <= 10_000) expect(createSlidingLog(resolved.violations.max).count).toBe(0);
  expect(resolved.maxKeys).toBeLessThanOrEqual(MAX_MAP_ENTRIES);

  const store = new MemoryRateLimitStore({ maxKeys: resolved.maxKeys, clock: () => NOW });
  const buckets = [
    ['global', resolved.global.capacity, resolved.global.refillRate, 1],
    ['type', resolved.type.capacity, resolved.type.refillRate, 1],
    ['connection', resolved.connection.capacity, resolved.connection.refillRate, 1],
  ] as Array<['global' | 'type' | 'connection', number, number, number]>;
  for (const limit of Object.values(resolved.types)) {
    const cost = limit.cost ?? 1;
    buckets.push([
      'type',
      limit.capacity ?? resolved.type.capacity,
      limit.refillRate ?? resolved.type.refillRate,
      cost,
    ]);
    buckets.push(['global', resolved.global.capacity, resolved.global.refillRate, cost]);
  }
  for (const plan of Object.values(resolved.plans)) {
    buckets.push(['global', plan.global.capacity, plan.global.refillRate, 1]);
  }
  for (const [tier, capacity, rate, cost] of buckets) {
    admittedInBurst(tokenBucketSpec(tier, tier[0]!, capacity, rate, cost), rate, store);
  }
  const { max, windowMs, algorithm } = resolved.expensive;
  admittedInBurst(windowSpec('expensive', 'x', algorithm, max, windowMs), undefined, store);
}

const timers = new Set<number>();

describe('C-32: no accepted setting disables a limit', () => {
  const warnings: string[] = [];
  const onWarning = (warning: Error): void => void warnings.push(warning.name);
  process.on('warning', onWarning);
  afterAll(() => void process.off('warning', onWarning));

  it('start-up refuses naming a drawn variable, or every consumer accepts the values', () => {
    let accepted = 0;
    let refused = 0;
    fc.assert(
      fc.property(environment, (table) => {
        let resolved: ResolvedWsRateLimitOptions;
        try {
          resolved = resolveOptions({}, (name) => table[name]);
        } catch (error) {
          expect(error).toBeInstanceOf(WsRateLimitConfigError);
          const message = (error as Error).message;
          expect(Object.keys(table).some((name) => message.includes(name))).toBe(true);
          if (message.includes('WS_RATE_LIMIT_PLANS (')) expect(message).toContain('(plan "p")');
          refused++;
          return;
        }
        accepted++;
        if (table['WS_RATE_LIMIT_TRUST_PROXY'] !== undefined) {
          expect(trustsEveryone(table['WS_RATE_LIMIT_TRUST_PROXY'])).toBe(false);
        }
        checkConsumers(resolved);
      }),
      fcParams(400),
    );
    // Both outcomes were exercised.
    expect(accepted).toBeGreaterThan(20);
    expect(refused).toBeGreaterThan(20);
  });

  it('trust lists are refused exactly when they trust every address of a family', () => {
    fc.assert(
      fc.property(trustList, (text) => {
        let refused = false;
        try {
          resolveOptions({ useEnv: false, trustProxy: text });
        } catch (error) {
          expect((error as Error).message).toContain('option trustProxy');
          refused = true;
        }
        expect(refused).toBe(trustsEveryone(text));
      }),
      fcParams(500),
    );
  });

  it('no accepted delay overflows a timer: none fires early, Node warns of none', async () => {
    const fired: number[] = [];
    const waiting = [...timers]
      .filter((ms) => ms > 100)
      .slice(0, 200)
      .map((ms) => {
        const timer = setTimeout(() => fired.push(ms), ms);
        timer.unref();
        return timer;
      });
    expect(waiting.length).toBeGreaterThan(3);
    await new Promise((resolve) => setTimeout(resolve, 60));
    for (const timer of waiting) clearTimeout(timer);
    expect(fired).toEqual([]);
    expect(warnings).not.toContain('TimeoutOverflowWarning');
  });
});
