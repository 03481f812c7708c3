/**
 * The module's options checked field by field before any value is read
 * (lib/config/option-fields.ts): options that are not an object, and fields the module does
 * not read, stop start-up with an error naming the field and the one it most likely means.
 */
import { describe, expect, it } from '@jest/globals';
import { ENV_VARIABLES, WsRateLimitConfigError } from '../../lib/index.js';
import { checkOptionFields } from '../../lib/config/option-fields.js';
import { resolveOptions } from '../../lib/config/resolve-options.js';

const none = (): undefined => undefined;

describe('checkOptionFields', () => {
  it.each([
    ['undefined', undefined, 'undefined'],
    ['null', null, 'null'],
    ['a string', 'redis://cache:6379', '"redis://cache:6379"'],
    ['a number', 5, '5'],
    ['an array', [{ global: { capacity: 5 } }], 'an array'],
  ])('options that are %s are refused, saying what they were', (_what, options, shown) => {
    expect(() => checkOptionFields(options)).toThrow(WsRateLimitConfigError);
    expect(() => checkOptionFields(options)).toThrow(`the module's options must be an object`);
    expect(() => checkOptionFields(options)).toThrow(`got ${shown}`);
  });

  it.each([
    [{ globl: { capacity: 5 } }, 'option globl is not an option of nestjs-ws-rate-limit: did you mean option global?'],
    [
      { global: { capactiy: 5 } },
      'option global.capactiy is not an option of nestjs-ws-rate-limit: did you mean option global.capacity?',
    ],
    [
      { maxConnectionPerIp: 3 },
      'option maxConnectionPerIp is not an option of nestjs-ws-rate-limit: did you mean option maxConnectionsPerIp?',
    ],
    [{ FAILMODE: 'open' }, 'option FAILMODE is not an option of nestjs-ws-rate-limit: did you mean option failMode?'],
    [
      { redis: { uri: 'redis://127.0.0.1:1' } },
      'option redis.uri is not an option of nestjs-ws-rate-limit: did you mean option redis.url?',
    ],
    [
      { violations: { windowMS: 3 } },
      'option violations.windowMS is not an option of nestjs-ws-rate-limit: did you mean option violations.windowMs?',
    ],
    [{ somethingElse: true }, 'option somethingElse is not an option of nestjs-ws-rate-limit'],
  ])('%j is refused: %s', (options, message) => {
    let thrown: unknown;
    try {
      checkOptionFields(options);
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(WsRateLimitConfigError);
    // The whole message, so that a hint where none fits would fail too.
    expect((thrown as Error).message).toBe(`nestjs-ws-rate-limit: ${message}`);
  });

  it('every option a variable sets is a known field (the field lists and the variables agree)', () => {
    const options: Record<string, Record<string, unknown> | undefined> = {};
    for (const { option } of ENV_VARIABLES) {
      const [group, field] = option.split('.') as [string, string | undefined];
      if (field === undefined) options[group] = undefined;
      else options[group] = { ...(options[group] ?? {}), [field]: undefined };
    }
    expect(() => checkOptionFields(options)).not.toThrow();
    expect(() => resolveOptions(options, none)).not.toThrow();
  });

  it('code-only fields (functions, a client, a registry) are known; types and plans check their own fields', () => {
    expect(() =>
      checkOptionFields({
        frameBuilder: () => ({}),
        skipIf: () => false,
        planResolver: () => undefined,
        metricsRegistry: undefined,
        useEnv: false,
        redis: { client: undefined, redisOptions: {} },
        types: { chat: { capacity: 5 } },
      }),
    ).not.toThrow();
    expect(() => resolveOptions({ types: { chat: { capactiy: 5 } } } as never, none)).toThrow(/capactiy/);
  });

  it('resolveOptions checks the fields first: a misspelled field is named, not replaced by its default', () => {
    expect(() => resolveOptions({ global: { capacity: 5, refilRate: 1 } } as never, none)).toThrow(
      'did you mean option global.refillRate?',
    );
  });
});
