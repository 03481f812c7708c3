import { afterAll, describe, expect, it } from '@jest/globals';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { createSlidingLog } from '../../lib/algorithms/sliding-log.js';
import {
  MAX_CAPACITY,
  MAX_MAP_ENTRIES,
  MAX_MESSAGE_RATE,
  MAX_PAYLOAD_BYTES,
  MAX_SLIDING_COUNTER,
  MAX_SLIDING_LOG,
  MAX_TIMER_MS,
  MAX_VIOLATIONS,
  MIN_REFILL_RATE,
} from '../../lib/config/bounds.js';
import { ENV_VARIABLES } from '../../lib/config/env-variables.js';
import type { OptionPath, OptionValue } from '../../lib/config/option-paths.js';
import { resolveOptions, type ResolvedValue } from '../../lib/config/resolve-options.js';
import { WsRateLimitConfigError } from '../../lib/exceptions/ws-rate-limit-config.error.js';
import type { WsRateLimitModuleOptions } from '../../lib/interfaces/options.interface.js';
import { createPlan } from '../../lib/plans/create-plan.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';

/**
 * Issue 10 item 5 and C-32: every value that passed validation yet switched a limit off or
 * crashed it is refused at start-up, naming the variable (or the option, plan and field).
 */

const env =
  (table: Record<string, string>) =>
  (name: string): string | undefined =>
    Object.prototype.hasOwnProperty.call(table, name) ? table[name] : undefined;

/** The message of the config error `call` throws. */
function refusal(call: () => unknown): string {
  try {
    call();
  } catch (error) {
    expect(error).toBeInstanceOf(WsRateLimitConfigError);
    return (error as Error).message;
  }
  throw new Error('accepted');
}

const fromEnv = (table: Record<string, string>) => resolveOptions({}, env(table));
const fromCode = (options: WsRateLimitModuleOptions) => resolveOptions({ useEnv: false, ...options }, env({}));

/** Options with `value` at a dotted path. */
function optionAt(path: string, value: unknown): WsRateLimitModuleOptions {
  const [head, tail] = path.split('.') as [string, string | undefined];
  return (tail === undefined ? { [head]: value } : { [head]: { [tail]: value } }) as WsRateLimitModuleOptions;
}

const TIMERS = ENV_VARIABLES.filter((variable) => variable.option.endsWith('Ms'));

describe('timers: at most 2^31-1 ms, as setTimeout accepts', () => {
  it('covers every millisecond option', () => {
    expect(TIMERS.map((variable) => variable.option).sort()).toEqual(
      [
        'closeGraceMs',
        'degradeCooldownMs',
        'expensive.windowMs',
        'handshakeTimeoutMs',
        'pingIntervalMs',
        'pongTimeoutMs',
        'redis.commandTimeoutMs',
        'redis.leaseTtlMs',
        'redis.reservationTtlMs',
        'violations.windowMs',
      ].sort(),
    );
    for (const variable of TIMERS) expect(variable.max).toBe(MAX_TIMER_MS);
  });

  it('WS_RATE_LIMIT_HANDSHAKE_TIMEOUT_MS=2147483648 is refused, naming the variable', () => {
    const message = refusal(() => fromEnv({ WS_RATE_LIMIT_HANDSHAKE_TIMEOUT_MS: '2147483648' }));
    expect(message).toContain('WS_RATE_LIMIT_HANDSHAKE_TIMEOUT_MS must be a whole number from 0 to 2147483647');
  });

  it.each(TIMERS.map((variable) => [variable.name, variable] as const))('%s: 2^31 refused, 2^31-1 kept', (name, v) => {
    for (const text of ['2147483648', '4294967296', '1e15']) {
      expect(refusal(() => fromEnv({ [name]: text }))).toContain(name);
    }
    expect(refusal(() => fromCode(optionAt(v.option, 2 ** 31)))).toContain(`option ${v.option}`);
    const kept = fromEnv({ [name]: String(MAX_TIMER_MS) });
    const path = v.option.split('.');
    const value = path.reduce<unknown>((node, part) => (node as Record<string, unknown>)[part], kept);
    expect(value).toBe(MAX_TIMER_MS);
  });

  it('a timer of the largest accepted delay does not fire early', async () => {
    let fired = false;
    const timer = setTimeout(
      () => (fired = true),
      fromEnv({ WS_RATE_LIMIT_PING_INTERVAL_MS: '2147483647' }).pingIntervalMs,
    );
    timer.unref();
    await new Promise((resolve) => setTimeout(resolve, 20));
    clearTimeout(timer);
    expect(fired).toBe(false);
  });
});

describe('maxPayload: within what ws honours (it reads maxPayload | 0)', () => {
  it.each(['2147483648', '3000000000', '4294967295', '4294968296', '9007199254740991'])(
    'WS_RATE_LIMIT_MAX_PAYLOAD=%s is refused',
    (text) => {
      expect(refusal(() => fromEnv({ WS_RATE_LIMIT_MAX_PAYLOAD: text }))).toContain(
        'WS_RATE_LIMIT_MAX_PAYLOAD must be a whole number from 1 to 2147483647',
      );
    },
  );

  it('option maxPayload = 2^32 + 1000 is refused', () => {
    expect(refusal(() => fromCode({ maxPayload: 2 ** 32 + 1000 }))).toContain('option maxPayload');
  });

  const servers: WebSocketServer[] = [];
  afterAll(async () => {
    for (const server of servers) await new Promise((resolve) => server.close(resolve));
  });

  /** The close code a ws server configured as resolved gives a frame announcing `length` bytes. */
  async function closeForAnnounced(maxPayload: number, length: number): Promise<number> {
    const server = new WebSocketServer({ port: 0, host: '127.0.0.1', maxPayload });
    servers.push(server);
    await once(server, 'listening');
    server.on('connection', (socket) => socket.on('error', () => undefined));
    const client = new WebSocket(`ws://127.0.0.1:${(server.address() as AddressInfo).port}`);
    client.on('error', () => undefined);
    await once(client, 'open');
    // A masked text frame header announcing `length` bytes (64-bit length), no payload.
    const header = Buffer.alloc(14);
    header[0] = 0x81;
    header[1] = 0x80 | 127;
    header.writeUInt32BE(Math.floor(length / 2 ** 32), 2);
    header.writeUInt32BE(length % 2 ** 32, 6);
    (client as unknown as { _socket: { write(data: Buffer): void } })._socket.write(header);
    const closed = once(client, 'close') as Promise<[number]>;
    const timeout = new Promise<[number]>((resolve) => setTimeout(() => resolve([0]), 1000).unref());
    const [code] = await Promise.race([closed, timeout]);
    client.terminate();
    return code;
  }

  it('ws enforces the largest accepted value: a frame announcing one byte more is closed with 1009', async () => {
    const { maxPayload } = fromEnv({ WS_RATE_LIMIT_MAX_PAYLOAD: String(MAX_PAYLOAD_BYTES) });
    expect(maxPayload).toBe(MAX_PAYLOAD_BYTES);
    expect(await closeForAnnounced(maxPayload, MAX_PAYLOAD_BYTES + 1)).toBe(1009);
  });

  it('the first refused value is one ws would not enforce (why the bound is where it is)', async () => {
    // 2^31 wraps to a negative limit in ws, which means "no limit": the frame is waited for.
    expect(await closeForAnnounced(2 ** 31, 2 ** 31 + 1)).toBe(0);
  });
});

describe('violations and sliding logs: documented maxima', () => {
  it('WS_RATE_LIMIT_MAX_VIOLATIONS=1e11 is refused; the maximum is accepted and its log can be made', () => {
    for (const text of ['1e11', '100000000000', String(MAX_VIOLATIONS + 1)]) {
      expect(refusal(() => fromEnv({ WS_RATE_LIMIT_MAX_VIOLATIONS: text }))).toContain(
        `WS_RATE_LIMIT_MAX_VIOLATIONS must be a whole number from 1 to ${MAX_VIOLATIONS}`,
      );
    }
    const { violations } = fromEnv({ WS_RATE_LIMIT_MAX_VIOLATIONS: String(MAX_VIOLATIONS) });
    expect(violations.max).toBe(MAX_VIOLATIONS);
    expect(() => createSlidingLog(violations.max)).not.toThrow();
  });

  it('a sliding log is limited to MAX_SLIDING_LOG; the sliding counter to MAX_SLIDING_COUNTER', () => {
    const log = refusal(() => fromEnv({ WS_RATE_LIMIT_EXPENSIVE_MAX: String(MAX_SLIDING_LOG + 1) }));
    expect(log).toContain('WS_RATE_LIMIT_EXPENSIVE_MAX must be at most 100000 with the sliding-log algorithm');
    expect(log).toContain('option expensive.algorithm (default)');
    expect(refusal(() => fromCode({ expensive: { max: 1e6 } }))).toContain('option expensive.max');
    expect(
      fromEnv({ WS_RATE_LIMIT_EXPENSIVE_MAX: '1000000', WS_RATE_LIMIT_EXPENSIVE_ALGORITHM: 'sliding-counter' })
        .expensive.max,
    ).toBe(1e6);
    expect(
      refusal(() =>
        fromEnv({ WS_RATE_LIMIT_EXPENSIVE_MAX: '1000000001', WS_RATE_LIMIT_EXPENSIVE_ALGORITHM: 'sliding-counter' }),
      ),
    ).toContain(`WS_RATE_LIMIT_EXPENSIVE_MAX must be a whole number from 1 to ${MAX_SLIDING_COUNTER}`);
    expect(fromEnv({ WS_RATE_LIMIT_EXPENSIVE_MAX: String(MAX_SLIDING_LOG) }).expensive.max).toBe(MAX_SLIDING_LOG);
  });

  it('maxKeys and the block cache stay below what a Map holds', () => {
    for (const name of ['WS_RATE_LIMIT_MAX_KEYS', 'WS_RATE_LIMIT_REDIS_BLOCK_CACHE']) {
      expect(refusal(() => fromEnv({ [name]: String(2 ** 24) }))).toContain(name);
      expect(() => fromEnv({ [name]: String(MAX_MAP_ENTRIES) })).not.toThrow();
    }
  });
});

describe('refill rates: 1000 / rate finite, derived figures safe', () => {
  const RATES = [
    'WS_RATE_LIMIT_GLOBAL_REFILL_RATE',
    'WS_RATE_LIMIT_TYPE_REFILL_RATE',
    'WS_RATE_LIMIT_CONNECTION_REFILL_RATE',
  ];

  it.each(RATES)('%s=1e-320 is refused, naming the variable', (name) => {
    for (const text of ['1e-320', '5e-324', '0.0000009', '1000001', '1e300']) {
      expect(refusal(() => fromEnv({ [name]: text }))).toContain(
        `${name} must be a number from 0.000001 to ${MAX_MESSAGE_RATE}`,
      );
    }
  });

  it('per-type and plan figures get the same bounds and messages', () => {
    expect(refusal(() => fromEnv({ WS_RATE_LIMIT_TYPES: '{"chat":{"refillRate":1e-320}}' }))).toContain(
      'WS_RATE_LIMIT_TYPES (type "chat") refillRate must be a number from 0.000001 to 1000000, got 1e-320',
    );
    expect(refusal(() => fromEnv({ WS_RATE_LIMIT_TYPES: '{"chat":{"capacity":1e7}}' }))).toContain(
      `WS_RATE_LIMIT_TYPES (type "chat") capacity must be a number greater than 0 and at most ${MAX_CAPACITY}`,
    );
    expect(
      refusal(() => fromEnv({ WS_RATE_LIMIT_PLANS: '{"pro":{"global":{"capacity":100,"refillRate":1e-320}}}' })),
    ).toContain(
      'WS_RATE_LIMIT_PLANS (plan "pro") field "global.refillRate" must be a number from 0.000001 to 1000000, got 1e-320',
    );
  });

  it('a cost so small that messages would come faster than one a microsecond is refused', () => {
    const message = refusal(() =>
      fromEnv({ WS_RATE_LIMIT_TYPES: '{"chat":{"capacity":10,"refillRate":10,"cost":1e-300}}' }),
    );
    expect(message).toContain('WS_RATE_LIMIT_TYPES (type "chat")');
    expect(message).toContain('messages a second');
    // The global bucket is checked for the type's cost too.
    expect(
      refusal(() =>
        fromEnv({
          WS_RATE_LIMIT_GLOBAL_REFILL_RATE: '1000000',
          WS_RATE_LIMIT_TYPES: '{"chat":{"capacity":10,"refillRate":1,"cost":0.5}}',
        }),
      ),
    ).toContain('WS_RATE_LIMIT_GLOBAL_REFILL_RATE');
  });

  it.each([
    [MIN_REFILL_RATE, 1],
    [MIN_REFILL_RATE, MAX_CAPACITY],
    [MAX_MESSAGE_RATE, 1],
    [4, 1_000_000],
    [1_000_000, 4],
  ])('at rate %d and capacity %d the bucket refuses a burst of capacity + 1 (Redis-like clock)', (rate, capacity) => {
    const { global } = fromCode({ global: { capacity, refillRate: rate } });
    const spec = tokenBucketSpec('global', 'g', global.capacity, global.refillRate);
    for (const figure of [spec.intervalMs, spec.slack, spec.span, spec.nearBound]) {
      expect(Number.isFinite(figure)).toBe(true);
      expect(figure).toBeLessThanOrEqual(Number.MAX_SAFE_INTEGER);
    }
    // Epoch milliseconds, as Redis's TIME gives: the coarsest clock a bucket runs on.
    const now = Date.now() + 0.123;
    const store = new MemoryRateLimitStore({ clock: () => now });
    const plan = createPlan(store, 'conn:1', [spec]);
    let admitted = 0;
    while (admitted <= capacity && (store.consume(plan) as { allowed: boolean }).allowed) admitted++;
    expect(admitted).toBe(capacity);
  });
});

describe('plans JSON: validated field by field, naming the plan and the field', () => {
  it.each([
    ['{"pro":"premium"}', 'WS_RATE_LIMIT_PLANS (plan "pro") must be an object'],
    [
      '{"pro":[]}',
      'WS_RATE_LIMIT_PLANS (plan "pro") must be an object like {"global":{"capacity":500,"refillRate":200}}, got an array',
    ],
    ['{"pro":null}', 'WS_RATE_LIMIT_PLANS (plan "pro") must be an object'],
    [
      '{"pro":{"global":"fast"}}',
      'WS_RATE_LIMIT_PLANS (plan "pro") field "global" must be an object like {"capacity":500,"refillRate":200}, got "fast"',
    ],
    [
      '{"pro":{"global":[1,2]}}',
      'WS_RATE_LIMIT_PLANS (plan "pro") field "global" must be an object like {"capacity":500,"refillRate":200}, got an array',
    ],
    [
      '{"pro":{"global":null}}',
      'WS_RATE_LIMIT_PLANS (plan "pro") field "global" must be an object like {"capacity":500,"refillRate":200}, got null',
    ],
    ['{"pro":{"type":"x"}}', 'WS_RATE_LIMIT_PLANS (plan "pro") field "type" must be an object'],
    ['{"pro":{"types":null}}', 'WS_RATE_LIMIT_PLANS (plan "pro") field "types" must be an object'],
    ['{"pro":{"types":"chat"}}', 'WS_RATE_LIMIT_PLANS (plan "pro") field "types" must be an object'],
    [
      '{"pro":{"types":{"chat":null}}}',
      'WS_RATE_LIMIT_PLANS (plan "pro") field "types" (type "chat") must be an object',
    ],
    [
      '{"pro":{"types":{"chat":"fast"}}}',
      'WS_RATE_LIMIT_PLANS (plan "pro") field "types" (type "chat") must be an object',
    ],
    ['{"pro":{"expensive":[]}}', 'WS_RATE_LIMIT_PLANS (plan "pro") field "expensive" must be an object'],
    [
      '{"pro":{"global":{"capcity":5}}}',
      'WS_RATE_LIMIT_PLANS (plan "pro") field "global" must be made of capacity, refillRate, got field "capcity"',
    ],
    [
      '{"pro":{"expensive":{"window":5}}}',
      'WS_RATE_LIMIT_PLANS (plan "pro") field "expensive" must be made of max, windowMs, algorithm',
    ],
    [
      '{"pro":{"global":{"capacity":null}}}',
      'WS_RATE_LIMIT_PLANS (plan "pro") field "global.capacity" must be a number greater than 0 and at most 1000000, got null',
    ],
    [
      '{"pro":{"global":{"capacity":"500"}}}',
      'WS_RATE_LIMIT_PLANS (plan "pro") field "global.capacity" must be a number',
    ],
    [
      '{"pro":{"expensive":{"windowMs":2147483648}}}',
      'WS_RATE_LIMIT_PLANS (plan "pro") field "expensive.windowMs" must be a whole number from 1 to 2147483647',
    ],
    [
      '{"pro":{"expensive":{"max":200000}}}',
      'WS_RATE_LIMIT_PLANS (plan "pro") field "expensive.max" must be at most 100000 with the sliding-log algorithm',
    ],
  ])('%s', (json, expected) => {
    expect(refusal(() => fromEnv({ WS_RATE_LIMIT_PLANS: json }))).toContain(expected);
  });

  it('the same shapes given in code are refused, naming option plans', () => {
    for (const plan of ['premium', [], null, { global: 'fast' }, { global: null }, { types: [] }]) {
      expect(refusal(() => fromCode({ plans: { pro: plan as never } }))).toContain('option plans (plan "pro")');
    }
  });

  it('a complete plan is still accepted', () => {
    const { plans } = fromEnv({
      WS_RATE_LIMIT_PLANS:
        '{"pro":{"global":{"capacity":500,"refillRate":200},"type":{"capacity":50},"types":{"chat":{"capacity":40}},"expensive":{"max":20,"windowMs":1000,"algorithm":"sliding-counter"}}}',
    });
    expect(plans['pro']!.global).toEqual({ capacity: 500, refillRate: 200 });
    expect(plans['pro']!.expensive).toEqual({ max: 20, windowMs: 1000, algorithm: 'sliding-counter' });
  });
});

describe('trust ranges that cover every address are refused like true', () => {
  it.each([
    '0.0.0.0/0',
    '::/0',
    '0.0.0.0/0,::/0',
    '10.0.0.0/0',
    '0.0.0.0/1,128.0.0.0/1',
    '0.0.0.0/2, 64.0.0.0/2, 128.0.0.0/1',
    '::ffff:0:0/96',
    '::/1,8000::/1',
    // ::/1 holds ::ffff:0:0/96, every IPv4 address as BlockList matches it.
    '::/1',
    'loopback, 0.0.0.0/0',
  ])('WS_RATE_LIMIT_TRUST_PROXY=%s', (text) => {
    const message = refusal(() => fromEnv({ WS_RATE_LIMIT_TRUST_PROXY: text }));
    expect(message).toContain('WS_RATE_LIMIT_TRUST_PROXY');
    expect(message).toContain('would let any client choose its address');
  });

  it('in code too, as an array or a string', () => {
    expect(refusal(() => fromCode({ trustProxy: ['0.0.0.0/0', '::/0'] }))).toContain('option trustProxy');
    expect(refusal(() => fromCode({ trustProxy: '::/0' }))).toContain('option trustProxy');
  });

  it.each(['0.0.0.0/1', '10.0.0.0/8,::1', 'loopback, linklocal, uniquelocal', '8000::/1', '0.0.0.0/1,128.0.0.0/2'])(
    'a list leaving some address out is kept: %s',
    (text) => {
      expect(fromEnv({ WS_RATE_LIMIT_TRUST_PROXY: text }).trustProxy.kind).toBe('list');
    },
  );
});

describe('option paths are typed', () => {
  it('a misspelled path or a wrong value type does not compile', () => {
    const path: OptionPath = 'global.capacity';
    const capacity: OptionValue<'global.capacity'> = 5;
    const trust: ResolvedValue<'trustProxy'> = { kind: 'none' };
    // @ts-expect-error: no such option
    const misspelled: OptionPath = 'global.capcity';
    // @ts-expect-error: a capacity is a number
    const wrong: OptionValue<'global.capacity'> = '5';
    // @ts-expect-error: code-only objects are not groups of options
    const inside: OptionPath = 'metricsRegistry.registerMetric';
    // @ts-expect-error: the resolved trust setting is not the text given
    const text: ResolvedValue<'trustProxy'> = '10.0.0.0/8';
    expect([path, capacity, trust.kind, misspelled, wrong, inside, text]).toHaveLength(7);
    // Every variable's option is a path of the options interface (checked by the compiler).
    const options: readonly OptionPath[] = ENV_VARIABLES.map((variable) => variable.option);
    expect(options).toContain('violations.max');
  });
});
