import { describe, expect, it } from '@jest/globals';
import { ConfigModule, ConfigService } from '@nestjs/config';
import { WsAdapter } from '@nestjs/platform-ws';
import { Test } from '@nestjs/testing';
import { ENV_VARIABLES, WsRateLimitModule, WsRateLimitService } from '../../../lib/index.js';
import { startApp, withEnv } from '../../support/app.js';
import { TestClient } from '../../support/ws-client.js';
import {
  ConflictingTypeGateway,
  ImpossibleCostGateway,
  NegativeCapacityGateway,
  VanishingCostGateway,
  VanishingRateGateway,
  PlainGateway,
} from './config.gateways.js';

const NO_ENV = Object.fromEntries(ENV_VARIABLES.map((variable) => [variable.name, undefined]));

/** Starts a module that reads the environment, sends `count` notes, returns what came back. */
async function sendNotes(module: ReturnType<typeof WsRateLimitModule.forRoot>, count: number) {
  const running = await startApp({
    imports: [ConfigModule.forRoot({ ignoreEnvFile: true }), module],
    providers: [PlainGateway],
  });
  const client = await TestClient.connect(running.url);
  try {
    for (let i = 0; i < count; i++) client.send('note', i);
    await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', count);
    return { acks: client.events('ack').length, limits: client.events('rate_limit'), client };
  } finally {
    await client.close();
    await running.close();
  }
}

describe('configuration from the environment', () => {
  it('reads WS_RATE_LIMIT_* variables through @nestjs/config', async () => {
    await withEnv({ ...NO_ENV, WS_RATE_LIMIT_TYPE_CAPACITY: '3', WS_RATE_LIMIT_TYPE_REFILL_RATE: '0.1' }, async () => {
      const { acks, limits } = await sendNotes(WsRateLimitModule.forRoot(), 4);
      expect(acks).toBe(3);
      expect(limits[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'note', limit: 3 });
    });
  });

  it('closes at the variable-configured violation threshold', async () => {
    await withEnv(
      {
        ...NO_ENV,
        WS_RATE_LIMIT_GLOBAL_CAPACITY: '1',
        WS_RATE_LIMIT_GLOBAL_REFILL_RATE: '0.1',
        WS_RATE_LIMIT_MAX_VIOLATIONS: '1',
      },
      async () => {
        const running = await startApp({
          imports: [ConfigModule.forRoot({ ignoreEnvFile: true }), WsRateLimitModule.forRoot()],
          providers: [PlainGateway],
        });
        const client = await TestClient.connect(running.url);
        client.send('note', 1);
        client.send('note', 2);
        expect((await client.waitClose()).code).toBe(1008);
        expect(client.events('rate_limit')[0]!.data).toMatchObject({ code: 'GLOBAL_LIMIT', warningCount: 1 });
        await running.close();
      },
    );
  });

  it('lets options given in code win over the environment, and the environment over defaults', async () => {
    await withEnv(
      {
        ...NO_ENV,
        WS_RATE_LIMIT_TYPE_CAPACITY: '2',
        WS_RATE_LIMIT_TYPE_REFILL_RATE: '0.1',
        WS_RATE_LIMIT_GLOBAL_CAPACITY: '50',
      },
      async () => {
        const { acks, limits } = await sendNotes(WsRateLimitModule.forRoot({ type: { capacity: 4 } }), 5);
        expect(acks).toBe(4); // capacity from code; the refill rate still from the environment
        expect(limits[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', limit: 4 });
        const moduleRef = await Test.createTestingModule({
          imports: [
            ConfigModule.forRoot({ ignoreEnvFile: true }),
            WsRateLimitModule.forRoot({ type: { capacity: 4 } }),
          ],
        }).compile();
        const { options } = moduleRef.get(WsRateLimitService);
        expect(options.type).toEqual({ capacity: 4, refillRate: 0.1 });
        expect(options.global).toEqual({ capacity: 50, refillRate: 50 });
        expect(options.expensive).toEqual({ max: 5, windowMs: 60_000, algorithm: 'sliding-log' });
        await moduleRef.close();
      },
    );
  });

  it('ignores the environment when useEnv is false', async () => {
    await withEnv({ ...NO_ENV, WS_RATE_LIMIT_TYPE_CAPACITY: '2' }, async () => {
      const moduleRef = await Test.createTestingModule({
        imports: [WsRateLimitModule.forRoot({ useEnv: false })],
      }).compile();
      expect(moduleRef.get(WsRateLimitService).options.type.capacity).toBe(20);
      await moduleRef.close();
    });
  });

  it('supports forRootAsync with a factory reading ConfigService', async () => {
    await withEnv({ ...NO_ENV, APP_NOTE_CAPACITY: '2' }, async () => {
      const module = WsRateLimitModule.forRootAsync({
        imports: [ConfigModule],
        inject: [ConfigService],
        useFactory: (config: ConfigService) => ({
          type: { capacity: Number(config.get('APP_NOTE_CAPACITY')), refillRate: 0.1 },
        }),
      });
      const { acks } = await sendNotes(module, 3);
      expect(acks).toBe(2);
    });
  });
});

describe('invalid configuration stops start-up with an error naming the variable or option', () => {
  const compile = (module: ReturnType<typeof WsRateLimitModule.forRoot>, providers: any[] = []) =>
    Test.createTestingModule({ imports: [ConfigModule.forRoot({ ignoreEnvFile: true }), module], providers }).compile();

  const invalidVariables: Array<[string, string]> = [
    ['WS_RATE_LIMIT_GLOBAL_CAPACITY', 'lots'],
    ['WS_RATE_LIMIT_GLOBAL_CAPACITY', '-5'],
    ['WS_RATE_LIMIT_GLOBAL_CAPACITY', '0'],
    ['WS_RATE_LIMIT_GLOBAL_CAPACITY', '0.5'],
    ['WS_RATE_LIMIT_GLOBAL_REFILL_RATE', '0'],
    ['WS_RATE_LIMIT_TYPE_CAPACITY', '1e400'],
    ['WS_RATE_LIMIT_TYPE_REFILL_RATE', 'fast'],
    ['WS_RATE_LIMIT_EXPENSIVE_MAX', '2.5'],
    ['WS_RATE_LIMIT_EXPENSIVE_WINDOW_MS', '-1'],
    ['WS_RATE_LIMIT_EXPENSIVE_ALGORITHM', 'fixed-window'],
    ['WS_RATE_LIMIT_CONNECTION_CAPACITY', '0'],
    ['WS_RATE_LIMIT_MAX_CONNECTIONS_PER_IP', '-1'],
    ['WS_RATE_LIMIT_MAX_VIOLATIONS', '0'],
    ['WS_RATE_LIMIT_VIOLATION_WINDOW_MS', 'soon'],
    ['WS_RATE_LIMIT_VIOLATION_CLOSE_CODE', '1006'],
    ['WS_RATE_LIMIT_MAX_PAYLOAD', '64k'],
    ['WS_RATE_LIMIT_STORE', 'postgres'],
    ['WS_RATE_LIMIT_TRACKER', 'user'],
    ['WS_RATE_LIMIT_FAIL_MODE', 'maybe'],
    ['WS_RATE_LIMIT_TRUST_PROXY', 'true'],
    ['WS_RATE_LIMIT_TRUST_PROXY', '10.0.0.0/33'],
    ['WS_RATE_LIMIT_REDIS_URL', 'http://example.com'],
    ['WS_RATE_LIMIT_TYPES', '{"chat":'],
    ['WS_RATE_LIMIT_TYPES', '{"chat":{"capacity":2,"cost":3}}'],
    ['WS_RATE_LIMIT_TYPES', '{"chat":{"burst":2}}'],
    ['WS_RATE_LIMIT_IPV6_PREFIX', '16'],
    ['WS_RATE_LIMIT_PER_MESSAGE_DEFLATE', 'yes'],
    ['WS_RATE_LIMIT_CONNECTION_REFUSAL', 'drop'],
    // Issue 10 item 5: values that used to pass and then switch a limit off or crash it.
    ['WS_RATE_LIMIT_HANDSHAKE_TIMEOUT_MS', '2147483648'],
    ['WS_RATE_LIMIT_MAX_PAYLOAD', '4294968296'],
    ['WS_RATE_LIMIT_MAX_PAYLOAD', '3000000000'],
    ['WS_RATE_LIMIT_TYPE_REFILL_RATE', '1e-320'],
    ['WS_RATE_LIMIT_MAX_VIOLATIONS', '1e11'],
    ['WS_RATE_LIMIT_EXPENSIVE_MAX', '1000000'],
    ['WS_RATE_LIMIT_PLANS', '{"pro":"premium"}'],
    ['WS_RATE_LIMIT_PLANS', '{"pro":{"global":null}}'],
    ['WS_RATE_LIMIT_PLANS', '{"pro":{"types":[]}}'],
    ['WS_RATE_LIMIT_TRUST_PROXY', '0.0.0.0/0,::/0'],
    ['WS_RATE_LIMIT_TRUST_PROXY', '::/0'],
  ];

  it.each(invalidVariables)('%s=%s', async (name, value) => {
    await withEnv({ ...NO_ENV, [name]: value }, async () => {
      await expect(compile(WsRateLimitModule.forRoot())).rejects.toThrow(name);
    });
  });

  it('names the variable when redis is chosen without a URL', async () => {
    await withEnv({ ...NO_ENV, WS_RATE_LIMIT_STORE: 'redis' }, async () => {
      await expect(compile(WsRateLimitModule.forRoot())).rejects.toThrow('WS_RATE_LIMIT_REDIS_URL');
    });
  });

  it.each([
    [{ global: { capacity: 0 } }, 'option global.capacity'],
    [{ type: { refillRate: -1 } }, 'option type.refillRate'],
    [{ tracker: 'user' as never }, 'option tracker'],
    [{ violations: { closeCode: 1005 } }, 'option violations.closeCode'],
    [{ types: { chat: { capacity: 1, cost: 2 } } }, 'option types'],
    [{ maxPayload: 0 }, 'option maxPayload'],
  ])('option %j', async (options, named) => {
    await expect(compile(WsRateLimitModule.forRoot({ useEnv: false, ...options }))).rejects.toThrow(named);
  });

  it.each([
    [ImpossibleCostGateway, '@Throttle on ImpossibleCostGateway.bulk: cost 10 exceeds the type capacity 5'],
    [NegativeCapacityGateway, '@Throttle on NegativeCapacityGateway.x: capacity must be a number greater than 0'],
    [
      VanishingRateGateway,
      '@Throttle on VanishingRateGateway.x: refillRate must be a number from 0.000001 to 1000000, got 1e-320',
    ],
    [VanishingCostGateway, '@Throttle on VanishingCostGateway.x: refill rate 10 for messages costing 1e-300'],
    [ConflictingTypeGateway, 'type "chat" is limited to 6 burst'],
  ])('%p', async (gateway, message) => {
    const moduleRef = await compile(WsRateLimitModule.forRoot({ useEnv: false }), [gateway]);
    const app = moduleRef.createNestApplication({ logger: false });
    app.useWebSocketAdapter(new WsAdapter(app));
    await expect(app.init()).rejects.toThrow(message);
    await app.close();
  });
});
