import { describe, expect, it } from '@jest/globals';
import { APP_GUARD } from '@nestjs/core';
import { WsAdapter } from '@nestjs/platform-ws';
import { Test } from '@nestjs/testing';
import { SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { resolveOptions } from '../../lib/config/resolve-options.js';
import { unknownVariables } from '../../lib/config/unknown-variables.js';
import { SkipThrottle } from '../../lib/decorators/skip-throttle.decorator.js';
import { Throttle } from '../../lib/decorators/throttle.decorator.js';
import { SKIP_THROTTLE_METADATA } from '../../lib/ws-rate-limit.constants.js';
import { WsRateLimit } from '../../lib/decorators/ws-rate-limit.decorator.js';
import { WsThrottleGuard } from '../../lib/guards/ws-throttle.guard.js';
import { WsRateLimitService } from '../../lib/services/ws-rate-limit.service.js';
import { WsRateLimitModule } from '../../lib/ws-rate-limit.module.js';
import { WsRateLimitConfigError } from '../../lib/exceptions/ws-rate-limit-config.error.js';
import type { WsRateLimitModuleOptions } from '../../lib/interfaces/options.interface.js';
import { AccessRules } from '../../lib/services/access-rules.js';

// Configuration at its edges, from an adversarial review: trust-proxy entries named like
// Object.prototype members, access-list entries that look like addresses but are not, a
// metrics prefix no metric name allows, a plan named like the module's own limits or given
// undefined fields, option groups that are not objects, a useEnv that is not a boolean,
// misspelled @Throttle fields, a variable in the wrong case, and block() given a CIDR. Each
// failed before its fix but the last group, kept as guards. (Added later: @SkipThrottle given
// a string or an object, which skipped.)

/** An environment reader over a plain table. */
const envOf =
  (table: Record<string, string>) =>
  (name: string): string | undefined =>
    Object.prototype.hasOwnProperty.call(table, name) ? table[name] : undefined;

/** The error a call throws, asserted to be a WsRateLimitConfigError. */
function configError(call: () => unknown): WsRateLimitConfigError {
  let thrown: unknown;
  try {
    call();
  } catch (error) {
    thrown = error;
  }
  if (thrown === undefined) throw new Error('no error thrown');
  expect(thrown).toBeInstanceOf(WsRateLimitConfigError);
  return thrown as WsRateLimitConfigError;
}

const fromEnv = (table: Record<string, string>) => resolveOptions({}, envOf(table));
const fromCode = (options: WsRateLimitModuleOptions) => resolveOptions({ useEnv: false, ...options }, envOf({}));

describe('config edges: trust proxy entries named like Object.prototype members', () => {
  it.each(['constructor', 'toString', '__proto__', 'hasOwnProperty'])(
    'WS_RATE_LIMIT_TRUST_PROXY=%s is a config error naming the variable',
    (entry) => {
      expect(configError(() => fromEnv({ WS_RATE_LIMIT_TRUST_PROXY: entry })).message).toContain(
        'WS_RATE_LIMIT_TRUST_PROXY',
      );
    },
  );

  it('option trustProxy ["10.0.0.1", "constructor"] is a config error naming the option', () => {
    expect(configError(() => fromCode({ trustProxy: ['10.0.0.1', 'constructor'] })).message).toContain(
      'option trustProxy',
    );
  });
});

describe('config edges: allow/deny list entries that look like addresses but are not valid', () => {
  it.each(['10.0.0/8', '10.0.0.256', '300.1.2.3/24', '10.0.0.0 /8', '2001:db8::/ 32', '::ffff:10.0.0.0.1'])(
    'WS_RATE_LIMIT_DENY_LIST=%s is refused, not kept as a tracker name',
    (entry) => {
      expect(configError(() => fromEnv({ WS_RATE_LIMIT_DENY_LIST: entry })).message).toContain(
        'WS_RATE_LIMIT_DENY_LIST',
      );
    },
  );
});

describe('config edges: IPv4-mapped entries in access lists', () => {
  it('a mapped CIDR in the deny list matches the IPv4 client and vice versa', () => {
    const mapped = fromEnv({ WS_RATE_LIMIT_DENY_LIST: '::ffff:10.0.0.0/104' });
    expect(new AccessRules(mapped.allowList, mapped.denyList).deniesAddress('10.1.2.3')).toBe(true);
    const v4 = fromEnv({ WS_RATE_LIMIT_DENY_LIST: '10.0.0.0/8' });
    expect(new AccessRules(v4.allowList, v4.denyList).deniesAddress('::ffff:10.1.2.3')).toBe(true);
  });
});

describe('config edges: metrics prefix', () => {
  it.each(['my-app-', '1app_', 'my app_', 'a.b_'])(
    'WS_RATE_LIMIT_METRICS_PREFIX=%s (not a valid Prometheus name start) is refused naming the variable',
    (prefix) => {
      expect(configError(() => fromEnv({ WS_RATE_LIMIT_METRICS_PREFIX: prefix })).message).toContain(
        'WS_RATE_LIMIT_METRICS_PREFIX',
      );
    },
  );
});

describe('config edges: plans', () => {
  it('a plan named "default" (the internal name of the module limits) is refused', () => {
    expect(
      configError(() => fromCode({ plans: { default: { global: { capacity: 5, refillRate: 1 } } } })).message,
    ).toContain('default');
  });

  it('a plan field given as undefined keeps the module figure, not the built-in default', () => {
    const resolved = fromCode({
      global: { capacity: 500, refillRate: 200 },
      plans: { pro: { global: { capacity: undefined, refillRate: 300 } } },
    });
    expect(resolved.plans['pro']!.global).toEqual({ capacity: 500, refillRate: 300 });
  });
});

const noop = (): void => undefined;
@WebSocketGateway()
@WsRateLimit()
class TypoGateway {
  @Throttle({ capcity: 5, refilRate: 1 } as never)
  @SubscribeMessage('y')
  y() {
    return { event: 'ack' };
  }
}

async function initError(providers: unknown[]): Promise<string> {
  const moduleRef = await Test.createTestingModule({
    imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false })],
    providers: providers as never[],
  }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  app.useWebSocketAdapter(new WsAdapter(app));
  let message = 'started without error';
  try {
    await app.init();
  } catch (error) {
    message = (error as Error).message;
  }
  await app.close().catch(noop);
  return message;
}

@WebSocketGateway()
class GloballyGuardedGateway {
  @Throttle({ capacity: -1 })
  @SubscribeMessage('x')
  x() {
    return { event: 'ack' };
  }
}

describe('config edges: @Throttle validated at start-up', () => {
  it('with WsThrottleGuard registered as APP_GUARD, an invalid @Throttle stops start-up', async () => {
    expect(await initError([GloballyGuardedGateway, { provide: APP_GUARD, useClass: WsThrottleGuard }])).toContain(
      'GloballyGuardedGateway.x',
    );
  });

  it('an @Throttle with misspelled fields stops start-up', async () => {
    expect(await initError([TypoGateway])).toContain('@Throttle on TypoGateway.y');
  });
});

describe('config edges: unknown variable hints', () => {
  it('a variable with the right name in the wrong case is pointed at the known one', () => {
    expect(unknownVariables(['WS_RATE_LIMIT_global_capacity'])[0]!.closest).toBe('WS_RATE_LIMIT_GLOBAL_CAPACITY');
  });
});

describe('config edges: option groups given as something other than an object', () => {
  it.each([[{ global: null }], [{ expensive: true }], [{ violations: 10 }], [{ redis: 'redis://localhost:6379' }]])(
    '%j is refused, not silently replaced by the environment or defaults',
    (options) => {
      const name = Object.keys(options)[0]!;
      expect(configError(() => fromCode(options as WsRateLimitModuleOptions)).message).toContain(`option ${name}`);
    },
  );
});

describe('config edges: operator blocks', () => {
  it('block() with a CIDR is refused (or blocks the network), not kept as a tracker name', async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, metrics: false })],
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    await app.init();
    try {
      const service = app.get(WsRateLimitService);
      let refused = false;
      try {
        await service.block('10.0.0.0/8', 60_000);
      } catch {
        refused = true;
      }
      if (!refused) expect(Object.keys(service.listBlocks())).not.toContain('key:10.0.0.0/8');
    } finally {
      await app.close();
    }
  });
});

describe('config edges: useEnv', () => {
  it.each(['false', 0])('useEnv = %j is refused, not read as "use the environment"', (useEnv) => {
    expect(
      configError(() =>
        resolveOptions({ useEnv } as unknown as WsRateLimitModuleOptions, envOf({ WS_RATE_LIMIT_SHADOW: 'true' })),
      ).message,
    ).toContain('option useEnv');
  });
});

describe('config edges: guards that passed already', () => {
  it('IPv6 CIDR with a space after the slash is refused', () => {
    expect(configError(() => fromEnv({ WS_RATE_LIMIT_ALLOW_LIST: '2001:db8::/ 32' })).message).toContain(
      'WS_RATE_LIMIT_ALLOW_LIST',
    );
  });
  it('hex, comma and suffixed numbers are refused for every integer variable kind', () => {
    for (const text of ['0x10', '10abc', '1_000', '1,000', '0b11', '0o7', '∞']) {
      expect(configError(() => fromEnv({ WS_RATE_LIMIT_MAX_PAYLOAD: text })).message).toContain(
        'WS_RATE_LIMIT_MAX_PAYLOAD',
      );
    }
  });
  it('trust-proxy mapped /96 covering all of IPv4 is refused', () => {
    expect(configError(() => fromEnv({ WS_RATE_LIMIT_TRUST_PROXY: '::ffff:0.0.0.0/96' })).message).toContain(
      'WS_RATE_LIMIT_TRUST_PROXY',
    );
  });
});

describe('@SkipThrottle given something other than a boolean', () => {
  it('is an error where the class is defined, not a skipped handler', () => {
    const skip = SkipThrottle as unknown as (value: unknown) => MethodDecorator;
    expect(configError(() => skip('false')).message).toBe(
      'nestjs-ws-rate-limit: @SkipThrottle takes true or false (or nothing), not "false"',
    );
    expect(configError(() => skip({ default: true })).message).toContain("@nestjs/throttler's per-throttler form");
    expect(configError(() => skip(0)).message).toContain('not number');
    // The forms the type allows are unchanged.
    class Gateway {
      @SkipThrottle()
      skipped(): void {}
      @SkipThrottle(false)
      limited(): void {}
    }
    expect(Reflect.getMetadata(SKIP_THROTTLE_METADATA, Gateway.prototype.skipped)).toBe(true);
    expect(Reflect.getMetadata(SKIP_THROTTLE_METADATA, Gateway.prototype.limited)).toBe(false);
  });
});
