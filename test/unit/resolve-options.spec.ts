import { afterEach, describe, expect, it } from '@jest/globals';
import { ENV_VARIABLES, type EnvKind, type EnvVariable } from '../../lib/config/env-variables.js';
import { resolveOptions, type ResolvedWsRateLimitOptions } from '../../lib/config/resolve-options.js';
import { WsRateLimitConfigError } from '../../lib/exceptions/ws-rate-limit-config.error.js';
import type { WsRateLimitModuleOptions } from '../../lib/interfaces/options.interface.js';

/**
 * Table-driven tests of `resolveOptions`, generated from ENV_VARIABLES so that a variable
 * added later is covered at once (and a new kind fails the "every kind has cases" test
 * until it gets some).
 */

/** Text that no variable of the kind accepts. */
const INVALID_ENV: Record<EnvKind, readonly string[]> = {
  'positive-number': ['abc', '-1', '0', '0.0', 'NaN', 'Infinity', '1e400', '0x10', '1,5', '5 tokens', '--5'],
  'positive-integer': ['abc', '-1', '0', '1.5', '5e-1', '1e400', '9007199254740993', '0x10'],
  'non-negative-integer': ['abc', '-1', '1.5', 'Infinity', '1e400'],
  enum: ['bogus', 'memory,redis', '[]'],
  string: [],
  json: [
    '{bad',
    '[]',
    'null',
    '42',
    '"chat"',
    '{"chat":5}',
    '{"chat":{"bogus":1}}',
    '{"chat":{"capacity":-1}}',
    '{"chat":{"refillRate":0}}',
    '{"chat":{"cost":"2"}}',
    '{"chat":{"expensive":"yes"}}',
    '{"":{}}',
    // A cost above the type's own capacity, and above the global capacity (default 100).
    '{"chat":{"capacity":1,"cost":2}}',
    '{"chat":{"capacity":500,"cost":200}}',
  ],
  'trust-proxy': [
    'true',
    'TRUE',
    'yes',
    'not-an-ip',
    '10.0.0.0/33',
    '10.0.0.0/abc',
    '10.0.0.0/',
    '::1/129',
    '-1',
    '1.5',
    '10.0.0.1,evil',
  ],
  'redis-url': ['http://localhost:6379', 'not a url', 'localhost:6379', 'redis://user:secret@ho st:6379'],
  'close-code': ['1004', '1005', '1006', '1015', '999', '2000', '5000', '1000.5', 'abc', '-1008'],
  'ipv6-prefix': ['0', '31', '129', '64.5', 'abc', '-64'],
  boolean: ['yes', '1', '0', 'abc', 'truthy'],
  plans: [
    '{bad',
    '[]',
    '"premium"',
    '{"premium":5}',
    '{"premium":{"bogus":{}}}',
    '{"premium":{"global":{"capacity":0}}}',
    '{"premium":{"types":{"chat":{"capacity":1,"cost":2}}}}',
    '{"premium":{"expensive":{"max":1.5}}}',
    '{"":{}}',
  ],
  'access-list': ['10.0.0.0/33', '::1/129', '1.2.3.4/abc'],
  'host-list': ['localhost', 'localhost:', ':6379', 'localhost:0', 'localhost:70000', 'localhost:port', ' , '],
};

/** Extra invalid text for single variables, where the kind alone allows it. */
const INVALID_ENV_EXTRA: Record<string, readonly string[]> = {
  // A bucket must hold at least one token (the cost of one message or connection).
  WS_RATE_LIMIT_GLOBAL_CAPACITY: ['0.5'],
  WS_RATE_LIMIT_TYPE_CAPACITY: ['0.5'],
  WS_RATE_LIMIT_CONNECTION_CAPACITY: ['0.5'],
};

/** Values no option of the kind accepts. */
const INVALID_CODE: Record<EnvKind, readonly unknown[]> = {
  'positive-number': ['5', -1, 0, Number.NaN, Number.POSITIVE_INFINITY, null, true],
  'positive-integer': ['5', -1, 0, 1.5, Number.NaN, Number.POSITIVE_INFINITY, null],
  'non-negative-integer': ['0', -1, 1.5, Number.NaN, null],
  enum: ['bogus', 42, null, {}],
  string: [42, null, {}, ['a']],
  json: [[], 'chat', 42, null, { chat: 5 }, { chat: { bogus: 1 } }, { chat: { capacity: 1, cost: 2 } }, { '': {} }],
  'trust-proxy': [true, -1, 1.5, 'true', '10.0.0.0/33', ['not-an-ip'], [42], {}],
  'redis-url': [42, 'http://localhost:6379', 'not a url'],
  'close-code': [1004, 1005, 1006, 1015, 999, 5000, '1008', 1000.5],
  'ipv6-prefix': [31, 129, 64.5, '64'],
  boolean: ['true', 1, null],
  plans: [[], 'premium', 42, { premium: 5 }, { premium: { global: { capacity: -1 } } }, { premium: { bogus: 1 } }],
  'access-list': [42, [42], '10.0.0.0/33', {}],
  'host-list': ['localhost:6379', [], ['localhost'], [{ host: 'localhost' }], [{ host: '', port: 1 }], 42],
};

/** A valid value from the environment and a different one from code, per kind. */
const VALID: Record<EnvKind, (v: EnvVariable) => { env: string; code: unknown }> = {
  'positive-number': () => ({ env: '7.5', code: 3 }),
  // Above a variable's minimum (the Redis lease TTL's is 1000), different from its default.
  'positive-integer': (v) =>
    v.min === undefined ? { env: '7', code: 3 } : { env: String(v.min + 7), code: v.min + 3 },
  // 0 from code must still win: "given" means "not undefined", not "truthy".
  'non-negative-integer': () => ({ env: '7', code: 0 }),
  enum: (v) => ({ env: v.values![v.values!.length - 1]!, code: v.values![0]! }),
  string: () => ({ env: 'from_env_', code: 'from_code_' }),
  json: () => ({ env: '{"envtype":{"capacity":3}}', code: { codetype: { capacity: 2 } } }),
  'trust-proxy': () => ({ env: '10.0.0.0/8', code: ['192.168.0.0/16'] }),
  'redis-url': () => ({ env: 'redis://from-env:6379', code: 'redis://from-code:6379' }),
  'close-code': () => ({ env: '4001', code: 4002 }),
  'ipv6-prefix': () => ({ env: '48', code: 56 }),
  boolean: (v) => (v.default === 'true' ? { env: 'false', code: true } : { env: 'true', code: false }),
  plans: () => ({ env: '{"free":{"global":{"capacity":10}}}', code: { pro: { type: { capacity: 40 } } } }),
  'access-list': () => ({ env: '10.0.0.0/8, user-1', code: ['192.168.0.0/16', 'user-2'] }),
  'host-list': () => ({ env: 'a.example:26379, [::1]:26380', code: [{ host: 'b.example', port: 7000 }] }),
};

/** Options with `value` at a dotted path. */
function optionAt(path: string, value: unknown): WsRateLimitModuleOptions {
  const root: Record<string, unknown> = {};
  const parts = path.split('.');
  let node = root;
  for (const part of parts.slice(0, -1)) node = node[part] = {} as Record<string, unknown>;
  node[parts[parts.length - 1]!] = value;
  return root as WsRateLimitModuleOptions;
}

/** An environment reader over a plain table. */
const envOf =
  (table: Record<string, string>) =>
  (name: string): string | undefined =>
    Object.prototype.hasOwnProperty.call(table, name) ? table[name] : undefined;

/** Variables other than the one under test that a value needs to be valid. */
function companions(variable: EnvVariable): Record<string, string> {
  return variable.option === 'store' ? { WS_RATE_LIMIT_REDIS_URL: 'redis://localhost:6379' } : {};
}

/** The resolved value of an option, in a comparable form. */
function resolvedAt(resolved: ResolvedWsRateLimitOptions, variable: EnvVariable): unknown {
  let value: unknown = resolved;
  for (const part of variable.option.split('.')) value = (value as Record<string, unknown>)[part];
  if (variable.kind === 'trust-proxy') {
    const trust = value as ResolvedWsRateLimitOptions['trustProxy'];
    return trust.kind === 'list' ? trust.entries : trust;
  }
  if (variable.kind === 'access-list') return (value as ResolvedWsRateLimitOptions['allowList']).entries;
  if (variable.kind === 'plans') return Object.keys(value as object);
  return variable.kind === 'json' ? JSON.parse(JSON.stringify(value)) : value;
}

/** The error a call throws, asserted to be a WsRateLimitConfigError. */
function configError(call: () => unknown): WsRateLimitConfigError {
  try {
    call();
  } catch (error) {
    expect(error).toBeInstanceOf(WsRateLimitConfigError);
    return error as WsRateLimitConfigError;
  }
  throw new Error('no error thrown');
}

const invalidEnvCases = ENV_VARIABLES.flatMap((variable) =>
  [...INVALID_ENV[variable.kind], ...(INVALID_ENV_EXTRA[variable.name] ?? [])].map(
    (text) => [variable.name, text, variable] as const,
  ),
);
const invalidCodeCases = ENV_VARIABLES.flatMap((variable) =>
  INVALID_CODE[variable.kind].map((value) => [variable.option, JSON.stringify(value), value, variable] as const),
);

describe('resolveOptions: invalid values stop start-up, naming the variable or option', () => {
  it('every kind of variable has invalid cases (a new kind needs rows here)', () => {
    for (const variable of ENV_VARIABLES) {
      expect(Object.keys(INVALID_CODE)).toContain(variable.kind);
      if (variable.kind !== 'string') expect(INVALID_ENV[variable.kind].length).toBeGreaterThan(0);
    }
  });

  it.each(invalidEnvCases)('%s=%j', (name, text, variable) => {
    const error = configError(() => resolveOptions({}, envOf({ ...companions(variable), [name]: text })));
    expect(error.message).toContain(name);
    expect(error.message.startsWith('nestjs-ws-rate-limit: ')).toBe(true);
  });

  it.each(invalidCodeCases)('option %s = %s', (path, _shown, value, variable) => {
    const error = configError(() => resolveOptions(optionAt(path, value), envOf(companions(variable))));
    expect(error.message).toContain(`option ${path}`);
  });

  it('store "redis" without a Redis URL names the variable that chose redis', () => {
    expect(configError(() => resolveOptions({}, envOf({ WS_RATE_LIMIT_STORE: 'redis' }))).message).toContain(
      'WS_RATE_LIMIT_STORE',
    );
    expect(configError(() => resolveOptions({ store: 'redis' }, envOf({}))).message).toContain('option store');
  });

  it('a key prefix with a brace stops start-up naming the variable or option, with the Redis store only', () => {
    const redis = { WS_RATE_LIMIT_STORE: 'redis', WS_RATE_LIMIT_REDIS_URL: 'redis://127.0.0.1:7000' };
    expect(
      configError(() => resolveOptions({}, envOf({ ...redis, WS_RATE_LIMIT_KEY_PREFIX: 'app{1}:' }))).message,
    ).toContain('WS_RATE_LIMIT_KEY_PREFIX');
    expect(configError(() => resolveOptions({ keyPrefix: 'app}' }, envOf(redis))).message).toContain(
      'option keyPrefix',
    );
    expect(resolveOptions({}, envOf({ WS_RATE_LIMIT_KEY_PREFIX: 'app{1}:' })).keyPrefix).toBe('app{1}:');
  });

  it('a Sentinel master name beside a URL (no Sentinels) names both, instead of being dropped', () => {
    const fromEnv = configError(() =>
      resolveOptions(
        {},
        envOf({
          WS_RATE_LIMIT_STORE: 'redis',
          WS_RATE_LIMIT_REDIS_URL: 'redis://127.0.0.1:7000',
          WS_RATE_LIMIT_REDIS_SENTINEL_NAME: 'main',
        }),
      ),
    );
    expect(fromEnv.message).toContain('WS_RATE_LIMIT_REDIS_SENTINEL_NAME');
    expect(fromEnv.message).toContain('WS_RATE_LIMIT_REDIS_URL');
    const fromCode = configError(() =>
      resolveOptions({ store: 'redis', redis: { clusterNodes: ['127.0.0.1:7000'], sentinelName: 'main' } }, envOf({})),
    );
    expect(fromCode.message).toContain('option redis.sentinelName');
    expect(fromCode.message).toContain('option redis.clusterNodes');
    // With the memory store the Redis variables are not read, so the name stops nothing.
    expect(resolveOptions({}, envOf({ WS_RATE_LIMIT_REDIS_SENTINEL_NAME: 'main' })).store).toBe('memory');
  });

  it('a type whose cost exceeds the global capacity names both', () => {
    const error = configError(() =>
      resolveOptions(
        {},
        envOf({ WS_RATE_LIMIT_GLOBAL_CAPACITY: '10', WS_RATE_LIMIT_TYPES: '{"search":{"capacity":20,"cost":15}}' }),
      ),
    );
    expect(error.message).toContain('WS_RATE_LIMIT_TYPES');
    expect(error.message).toContain('WS_RATE_LIMIT_GLOBAL_CAPACITY');
  });

  it('never echoes a Redis password in an error', () => {
    for (const url of ['redis://user:secret@ho st:6379', 'http://user:secret@localhost:6379']) {
      const fromEnv = configError(() => resolveOptions({}, envOf({ WS_RATE_LIMIT_REDIS_URL: url })));
      const fromCode = configError(() => resolveOptions({ redis: { url } } as WsRateLimitModuleOptions, envOf({})));
      expect(fromEnv.message).not.toContain('secret');
      expect(fromCode.message).not.toContain('secret');
    }
  });
});

describe('resolveOptions: precedence is code, then environment, then default', () => {
  const cases = ENV_VARIABLES.map((variable) => [variable.name, variable] as const);

  it.each(cases)('%s', (name, variable) => {
    const { env, code } = VALID[variable.kind](variable);
    const base = companions(variable);
    const defaults = resolveOptions({}, envOf(base));
    const fromEnv = resolveOptions({}, envOf({ ...base, [name]: env }));
    const fromCode = resolveOptions(optionAt(variable.option, code), envOf({ ...base, [name]: env }));
    const codeOnly = resolveOptions(optionAt(variable.option, code), envOf(base));

    // The environment beats the default, and code beats both.
    expect(resolvedAt(fromEnv, variable)).not.toEqual(resolvedAt(defaults, variable));
    expect(resolvedAt(fromCode, variable)).toEqual(resolvedAt(codeOnly, variable));
    expect(resolvedAt(fromCode, variable)).not.toEqual(resolvedAt(fromEnv, variable));

    // The documented default is what the variable set to that text gives.
    if (variable.default !== 'none') {
      const documented = resolveOptions({}, envOf({ ...base, [name]: variable.default }));
      expect(resolvedAt(defaults, variable)).toEqual(resolvedAt(documented, variable));
    }

    // Empty and blank values count as unset.
    for (const blank of ['', ' ', '\t\n']) {
      const resolved = resolveOptions({}, envOf({ ...base, [name]: blank }));
      expect(resolvedAt(resolved, variable)).toEqual(resolvedAt(defaults, variable));
    }

    // useEnv: false ignores the environment.
    const ignored = resolveOptions({ useEnv: false }, envOf({ ...base, [name]: env }));
    expect(resolvedAt(ignored, variable)).toEqual(resolvedAt(resolveOptions({ useEnv: false }, envOf({})), variable));
  });

  it('reads process.env when no reader is given', () => {
    const saved = process.env['WS_RATE_LIMIT_GLOBAL_CAPACITY'];
    process.env['WS_RATE_LIMIT_GLOBAL_CAPACITY'] = '42';
    try {
      expect(resolveOptions().global.capacity).toBe(42);
    } finally {
      if (saved === undefined) delete process.env['WS_RATE_LIMIT_GLOBAL_CAPACITY'];
      else process.env['WS_RATE_LIMIT_GLOBAL_CAPACITY'] = saved;
    }
  });

  it('the close reason is cut to 123 bytes wherever it comes from', () => {
    const long = '€'.repeat(100);
    expect(
      Buffer.byteLength(
        resolveOptions({}, envOf({ WS_RATE_LIMIT_VIOLATION_CLOSE_REASON: long })).violations.closeReason,
      ),
    ).toBe(123);
    expect(
      Buffer.byteLength(resolveOptions({ violations: { closeReason: long } }, envOf({})).violations.closeReason),
    ).toBe(123);
  });
});

describe('resolveOptions: per-type figures keyed by hostile names (C-4)', () => {
  it('keeps "__proto__" and "constructor" as plain type names, and inherits nothing', () => {
    const json = '{"__proto__":{"capacity":3},"constructor":{"capacity":4},"a|b:c":{"capacity":5}}';
    for (const resolved of [
      resolveOptions({}, envOf({ WS_RATE_LIMIT_TYPES: json })),
      resolveOptions({ types: JSON.parse(json) as Record<string, { capacity: number }> }, envOf({})),
    ]) {
      const types = resolved.types as Record<string, { capacity?: number } | undefined>;
      expect(Object.keys(types).sort()).toEqual(['__proto__', 'a|b:c', 'constructor']);
      expect(types['__proto__']!.capacity).toBe(3);
      expect(types['constructor']!.capacity).toBe(4);
      expect(types['toString']).toBeUndefined();
      expect(types['hasOwnProperty']).toBeUndefined();
    }
    expect(resolveOptions({}, envOf({})).types['toString']).toBeUndefined();
  });
});

afterEach(() => {
  expect(Object.prototype).not.toHaveProperty('capacity');
});
