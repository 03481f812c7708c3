import { describe, expect, it } from '@jest/globals';
import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { ForwardingWarning } from '../../lib/adapters/forwarding-warning.js';
import { resolveOptions } from '../../lib/config/resolve-options.js';
import { limitsSummary } from '../../lib/services/startup-report.js';

describe('limitsSummary', () => {
  it('is, with the defaults, the line the README shows', () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const shown = readme.split('\n').find((line) => line.startsWith('Limits in force: '));
    expect(limitsSummary(resolveOptions({ useEnv: false }))).toBe(shown);
  });

  it('names a shared store with its fail mode, the trusted proxies, a tracker function and degradation', () => {
    const summary = limitsSummary(
      resolveOptions({
        useEnv: false,
        store: 'redis',
        redis: { url: 'redis://127.0.0.1:1' },
        failMode: 'closed',
        tracker: function byUser() {
          return 'u';
        },
        trustProxy: 2,
        global: { capacity: 30, refillRate: 0.5 },
        expensive: { max: 2, windowMs: 1500 },
        violations: { max: 3, windowMs: 10_000 },
        degradeCooldownMs: 30_000,
      }),
    );
    expect(summary).toBe(
      'Limits in force: store redis, fail closed; tracker function byUser; trusted proxies 2 hops (x-forwarded-for); ' +
        'global 30 burst, 0.5/s; type default 20 burst, 10/s; expensive 2 per 1500 ms (sliding-log); ' +
        'connections 5 burst, 1/s per address, no open-connection cap; ' +
        'violations 3 in 10 s, then degrade for 30 s, then close 1008; plans none',
    );
  });
});

describe('ForwardingWarning', () => {
  const request = (peer: string, headers: Record<string, string>) =>
    ({ headers, socket: { remoteAddress: peer } }) as unknown as IncomingMessage;

  it('never warns with a hop count (every peer is a trusted proxy)', () => {
    const warnings: string[] = [];
    const check = new ForwardingWarning(resolveOptions({ useEnv: false, trustProxy: 1 }), (m) => warnings.push(m));
    check.check(request('198.51.100.1', { 'x-forwarded-for': '203.0.113.7' }));
    expect(warnings).toEqual([]);
  });

  it('warns once, whatever the number of peers', () => {
    const warnings: string[] = [];
    const check = new ForwardingWarning(resolveOptions({ useEnv: false }), (m) => warnings.push(m));
    check.check(request('198.51.100.1', {}));
    for (let i = 1; i < 100; i++) check.check(request(`198.51.100.${i}`, { 'x-forwarded-for': '203.0.113.7' }));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^An upgrade from 198\.51\.100\.1 carries X-Forwarded-For/);
  });
});
