import { describe, expect, it } from '@jest/globals';
import { Logger } from '@nestjs/common';
import { Counter, Registry } from 'prom-client';
import { resolveOptions } from '../../lib/config/resolve-options.js';
import { createMetrics } from '../../lib/metrics/ws-rate-limit.metrics.js';

const logger = new Logger('metrics.spec');

async function metricsOn(registry: Registry) {
  return createMetrics(resolveOptions({ useEnv: false, metricsRegistry: registry }), () => 0, logger);
}

/** The value of one label set of a counter, as a scrape would read it. */
async function valueOf(registry: Registry, name: string, labels: Record<string, string>): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) throw new Error(`no metric ${name}`);
  const { values } = await metric.get();
  const found = values.find((entry) => Object.entries(labels).every(([key, value]) => entry.labels[key] === value));
  return found?.value ?? 0;
}

describe('metrics counters', () => {
  it('counts on the hot path without prom-client and publishes exact totals at every read', async () => {
    const registry = new Registry();
    const metrics = await metricsOn(registry);
    for (let i = 0; i < 1000; i++) metrics.allowed('chat');
    for (let i = 0; i < 7; i++) metrics.rejected('chat', 'rejected', 'type', 'TYPE_LIMIT');
    metrics.nearLimit('global', 'chat');
    metrics.connection('refused', 'rate');
    metrics.disconnect('violations');
    metrics.violation('TYPE_LIMIT', 'chat');

    const allowed = { result: 'allowed', type: 'chat' };
    expect(await valueOf(registry, 'ws_rate_limit_decisions_total', allowed)).toBe(1000);
    // A second read adds nothing twice; later decisions show at the next read.
    expect(await valueOf(registry, 'ws_rate_limit_decisions_total', allowed)).toBe(1000);
    metrics.allowed('chat');
    expect(await valueOf(registry, 'ws_rate_limit_decisions_total', allowed)).toBe(1001);

    const text = await registry.metrics();
    expect(text).toContain(
      'ws_rate_limit_decisions_total{result="rejected",tier="type",code="TYPE_LIMIT",type="chat"} 7',
    );
    expect(text).toContain('ws_rate_limit_near_limit_total{tier="global",type="chat"} 1');
    expect(text).toContain('ws_rate_limit_connections_total{result="refused",reason="rate"} 1');
    expect(text).toContain('ws_rate_limit_disconnects_total{reason="violations"} 1');
    expect(text).toContain('ws_rate_limit_violations_total{code="TYPE_LIMIT",type="chat"} 1');
  });

  it('two apps on one registry share the counters and their totals add up', async () => {
    const registry = new Registry();
    const first = await metricsOn(registry);
    const second = await metricsOn(registry);
    for (let i = 0; i < 5; i++) first.allowed('chat');
    for (let i = 0; i < 3; i++) second.allowed('chat');
    expect(await valueOf(registry, 'ws_rate_limit_decisions_total', { result: 'allowed', type: 'chat' })).toBe(8);
  });

  it('a counter of the same name that the user registered first is added to at once', async () => {
    const registry = new Registry();
    const theirs = new Counter({
      name: 'ws_rate_limit_decisions_total',
      help: 'registered by the application',
      labelNames: ['result', 'tier', 'code', 'type'],
      registers: [registry],
    });
    const metrics = await metricsOn(registry);
    metrics.allowed('chat');
    metrics.allowed('chat');
    // Read without any collect hook of ours: the adds are already in prom-client.
    const { values } = await theirs.get();
    expect(values.find((entry) => entry.labels.type === 'chat')?.value).toBe(2);
  });
});
