/**
 * The memory-store metrics: `memory_store_keys` (tier states held, what `maxKeys` bounds) and
 * `memory_store_evictions_total` (states dropped to stay within it while they still
 * mattered), labelled `store="memory"` (the module's memory store) and `store="fallback"`
 * (the fail-open fallback a Redis outage makes). Before them an operator learnt of evictions
 * from one warning line and `stats()`, and of the fallback's size from `stats()` alone.
 * Checked against `stats()` on real apps: exact at every read, never counted twice (two reads,
 * two apps on one store), kept by the counter after an app closes, and the fallback's series
 * appearing with a real Redis paused.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Registry } from 'prom-client';
import {
  MemoryRateLimitStore,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { startRedis, type RedisServer } from '../../support/redis-server.js';

@WebSocketGateway()
@WsRateLimit()
class StoreGateway {
  @Throttle({ type: 'chat', capacity: 5, refillRate: 1 })
  @SubscribeMessage('chat')
  chat() {
    return { event: 'chat' };
  }
}

const apps: RunningApp[] = [];
const servers: RedisServer[] = [];

afterEach(async () => {
  for (const app of apps.splice(0).reverse()) await app.close();
  for (const server of servers.splice(0)) await server.stop();
});

async function start(options: WsRateLimitModuleOptions): Promise<{ running: RunningApp; limiter: WsRateLimitService }> {
  const running = await startApp(
    { imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })], providers: [StoreGateway] },
    (app) => new WsRateLimitAdapter(app),
  );
  apps.push(running);
  return { running, limiter: running.app.get(WsRateLimitService) };
}

/** Each series of a metric as `label=value` -> value. */
async function series(registry: Registry, name: string): Promise<Record<string, number>> {
  const metric = (await registry.getMetricsAsJSON()).find((entry) => entry.name === name);
  const out: Record<string, number> = {};
  for (const sample of (metric?.values ?? []) as { value: number; labels: Record<string, string> }[]) {
    out[`store=${sample.labels['store']}`] = sample.value;
  }
  return out;
}

/** A decision for each of `count` trackers (`user:<from>`...), from code. */
async function spend(limiter: WsRateLimitService, from: number, count: number): Promise<void> {
  for (let i = from; i < from + count; i++) await limiter.consume(`user:${i}`, { type: 'chat' });
}

describe('memory-store metrics', () => {
  it('memory store past maxKeys: keys and evictions equal stats() at every read, and a second read adds nothing', async () => {
    const registry = new Registry();
    const { limiter } = await start({ metricsRegistry: registry, maxKeys: 12 });
    expect(await series(registry, 'ws_rate_limit_memory_store_keys')).toEqual({
      'store=memory': 0,
      'store=fallback': 0,
    });
    expect(await series(registry, 'ws_rate_limit_memory_store_evictions_total')).toEqual({ 'store=memory': 0 });

    await spend(limiter, 0, 40);
    const first = limiter.stats();
    expect(first.evictions).toBeGreaterThan(0);
    expect(first.storeKeys).toBeLessThanOrEqual(12);
    expect(await series(registry, 'ws_rate_limit_memory_store_keys')).toEqual({
      'store=memory': first.storeKeys,
      'store=fallback': 0,
    });
    expect(await series(registry, 'ws_rate_limit_memory_store_evictions_total')).toEqual({
      'store=memory': first.evictions,
    });
    // Read again with nothing decided in between: the counter does not add the total twice.
    expect(await series(registry, 'ws_rate_limit_memory_store_evictions_total')).toEqual({
      'store=memory': first.evictions,
    });

    await spend(limiter, 1000, 40);
    const second = limiter.stats();
    expect(second.evictions).toBeGreaterThan(first.evictions!);
    expect(await series(registry, 'ws_rate_limit_memory_store_evictions_total')).toEqual({
      'store=memory': second.evictions,
    });
    expect(registry.getSingleMetric('ws_rate_limit_memory_store_evictions_total')?.constructor.name).toBe('Counter');
  });

  it('two apps in one registry: their stores add up; one store shared by both counts once; a closed app leaves the gauge, its evictions stay counted', async () => {
    const registry = new Registry();
    const a = await start({ metricsRegistry: registry, maxKeys: 10 });
    const b = await start({ metricsRegistry: registry, maxKeys: 10 });
    await spend(a.limiter, 0, 30);
    await spend(b.limiter, 0, 4);
    const [sa, sb] = [a.limiter.stats(), b.limiter.stats()];
    expect(sa.evictions).toBeGreaterThan(0);
    expect(await series(registry, 'ws_rate_limit_memory_store_keys')).toEqual({
      'store=memory': sa.storeKeys! + sb.storeKeys!,
      'store=fallback': 0,
    });
    expect(await series(registry, 'ws_rate_limit_memory_store_evictions_total')).toEqual({
      'store=memory': sa.evictions! + sb.evictions!,
    });
    await a.running.close();
    apps.splice(apps.indexOf(a.running), 1);
    expect(await series(registry, 'ws_rate_limit_memory_store_keys')).toEqual({
      'store=memory': sb.storeKeys,
      'store=fallback': 0,
    });
    expect(await series(registry, 'ws_rate_limit_memory_store_evictions_total')).toEqual({
      'store=memory': sa.evictions! + sb.evictions!,
    });

    // One store object given to two apps (`store: instance`): held once, counted once.
    const shared = new MemoryRateLimitStore({ maxKeys: 8 });
    const sharedRegistry = new Registry();
    const c = await start({ metricsRegistry: sharedRegistry, store: shared });
    await start({ metricsRegistry: sharedRegistry, store: shared });
    await spend(c.limiter, 0, 20);
    expect(shared.evictions).toBeGreaterThan(0);
    expect(await series(sharedRegistry, 'ws_rate_limit_memory_store_keys')).toEqual({
      'store=memory': shared.size,
      'store=fallback': 0,
    });
    expect(await series(sharedRegistry, 'ws_rate_limit_memory_store_evictions_total')).toEqual({
      'store=memory': shared.evictions,
    });
  });

  it('Redis store, fail mode open, Redis paused: the fallback store appears under store="fallback" with what stats() says it holds', async () => {
    const redis = await startRedis();
    servers.push(redis);
    const registry = new Registry();
    const { limiter } = await start({
      metricsRegistry: registry,
      store: 'redis',
      redis: { url: redis.url, commandTimeoutMs: 200 },
      failMode: 'open',
    });
    await spend(limiter, 0, 3);
    expect(await series(registry, 'ws_rate_limit_memory_store_keys')).toEqual({
      'store=memory': 0,
      'store=fallback': 0,
    });
    expect(await series(registry, 'ws_rate_limit_memory_store_evictions_total')).toEqual({});
    redis.pause();
    try {
      await spend(limiter, 0, 3);
    } finally {
      redis.resume();
    }
    const stats = limiter.stats();
    expect(stats.fallbackKeys).toBeGreaterThan(0);
    expect(await series(registry, 'ws_rate_limit_memory_store_keys')).toEqual({
      'store=memory': 0,
      'store=fallback': stats.fallbackKeys,
    });
    expect(await series(registry, 'ws_rate_limit_memory_store_evictions_total')).toEqual({ 'store=fallback': 0 });
  });
});
