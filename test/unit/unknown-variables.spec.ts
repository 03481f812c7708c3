import { describe, expect, it } from '@jest/globals';
import { ENV_VARIABLES } from '../../lib/config/env-variables.js';
import { ConsoleLogger, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import {
  ignoredRedisMessage,
  ignoredRedisVariables,
  unknownVariableMessage,
  unknownVariables,
} from '../../lib/config/unknown-variables.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import { WsRateLimitModule } from '../../lib/ws-rate-limit.module.js';
import { withEnv } from '../support/app.js';

describe('unknown WS_RATE_LIMIT_* variables', () => {
  it('names a misspelled variable with the one it most likely means', () => {
    expect(unknownVariables(['WS_RATE_LIMIT_GLOBAL_CAPACTIY', 'WS_RATE_LIMIT_TRAKER', 'PATH'])).toEqual([
      { name: 'WS_RATE_LIMIT_GLOBAL_CAPACTIY', closest: 'WS_RATE_LIMIT_GLOBAL_CAPACITY' },
      { name: 'WS_RATE_LIMIT_TRAKER', closest: 'WS_RATE_LIMIT_TRACKER' },
    ]);
  });

  it('offers no guess for a name close to none', () => {
    const [unknown] = unknownVariables(['WS_RATE_LIMIT_SOMETHING_ELSE_ENTIRELY']);
    expect(unknown).toEqual({ name: 'WS_RATE_LIMIT_SOMETHING_ELSE_ENTIRELY', closest: undefined });
    expect(unknownVariableMessage(unknown!)).toBe(
      'WS_RATE_LIMIT_SOMETHING_ELSE_ENTIRELY is not a variable of nestjs-ws-rate-limit and is ignored: no option reads it',
    );
  });

  it('never reports a variable the module reads', () => {
    expect(unknownVariables(ENV_VARIABLES.map((variable) => variable.name))).toEqual([]);
  });
});

describe('WS_RATE_LIMIT_REDIS_* variables with the memory store', () => {
  const env: Record<string, string> = {
    WS_RATE_LIMIT_REDIS_URL: 'redis://127.0.0.1:6390',
    WS_RATE_LIMIT_REDIS_TIMEOUT_MS: '80',
    WS_RATE_LIMIT_GLOBAL_CAPACITY: '5',
  };
  const read = (name: string): string | undefined => env[name];

  it('names the Redis variables nothing reads when the store is memory', () => {
    expect(ignoredRedisVariables('memory', read)).toEqual([
      'WS_RATE_LIMIT_REDIS_URL',
      'WS_RATE_LIMIT_REDIS_TIMEOUT_MS',
    ]);
    expect(ignoredRedisMessage(ignoredRedisVariables('memory', read))).toBe(
      'the store is memory, so nothing reads WS_RATE_LIMIT_REDIS_URL, WS_RATE_LIMIT_REDIS_TIMEOUT_MS: ' +
        'set WS_RATE_LIMIT_STORE=redis (or the store option) to share limits through Redis',
    );
  });

  it('says nothing for the Redis store, a store given as an instance, or no Redis variable', () => {
    expect(ignoredRedisVariables('redis', read)).toEqual([]);
    expect(ignoredRedisVariables(new MemoryRateLimitStore(), read)).toEqual([]);
    expect(ignoredRedisVariables('memory', () => undefined)).toEqual([]);
  });

  it('is warned at start-up by the module', async () => {
    const warnings: string[] = [];
    class Capture extends ConsoleLogger {
      override warn(message: unknown): void {
        warnings.push(String(message));
      }
      override log(): void {}
    }
    await withEnv({ WS_RATE_LIMIT_STORE: 'memory', WS_RATE_LIMIT_REDIS_URL: 'redis://127.0.0.1:6390' }, async () => {
      @Module({ imports: [WsRateLimitModule.forRoot()] })
      class AppModule {}
      const app = await NestFactory.createApplicationContext(AppModule, { logger: new Capture() });
      await app.close();
    });
    expect(warnings.filter((warning) => warning.includes('nothing reads'))).toEqual([
      'the store is memory, so nothing reads WS_RATE_LIMIT_REDIS_URL: ' +
        'set WS_RATE_LIMIT_STORE=redis (or the store option) to share limits through Redis',
    ]);
  });
});
