/**
 * Child process: the sample app (`dist/sample/app.module.js`: the chat gateway, limited to
 * 30 burst and 15/s on `chat`) behind `WsRateLimitAdapter` on 127.0.0.1, configured by its
 * `WS_RATE_LIMIT_*` variables (the parent sets them). Counts every decision the limiter
 * publishes on `WsRateLimitService.events$`, per tracker and per second from `mark-start`.
 * Usage (from run.js): server.js <seconds>
 *
 * Protocol: sends `ready` with the port; `{ kind: 'mark-start', at }` sets second 0 at the
 * wall-clock time `at` (ms, `performance.timeOrigin + performance.now()`, which both
 * processes read alike; answered with `started`); `{ kind: 'report' }` is answered with `counts`; then `{ kind: 'stop' }`.
 */
import type { Type } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { WsRateLimitAdapter, WsRateLimitService, type RateLimitEvent } from 'nestjs-ws-rate-limit';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { sendToParent } from '../support/child.js';

/** Decisions per second for one tracker. */
export interface TrackerCounts {
  allowed: number[];
  rejected: number[];
  /** Rejections by tier, over the whole run. */
  tiers: Record<string, number>;
}

export interface ServerCounts {
  byTracker: Record<string, TrackerCounts>;
  /** Violations and limiter disconnects seen (the latter should be 0 with the threshold raised). */
  violations: number;
  disconnects: number;
}

const seconds = Number(process.argv[2]);
const sample = (await import(new URL('../../sample/app.module.js', import.meta.url).href)) as { AppModule: Type };
const app = await NestFactory.create(sample.AppModule, { logger: ['error', 'warn'] });
app.useWebSocketAdapter(new WsRateLimitAdapter(app));
const limiter = app.get(WsRateLimitService);

let start = Number.NaN;
const counts: ServerCounts = { byTracker: {}, violations: 0, disconnects: 0 };
const slot = (tracker: string): TrackerCounts =>
  (counts.byTracker[tracker] ??= {
    allowed: new Array<number>(seconds).fill(0),
    rejected: new Array<number>(seconds).fill(0),
    tiers: {},
  });
limiter.events$.subscribe((event: RateLimitEvent) => {
  if (Number.isNaN(start)) return;
  if (event.kind === 'violation') counts.violations++;
  if (event.kind === 'disconnect') counts.disconnects++;
  if (event.kind !== 'decision') return;
  const second = Math.floor((performance.now() - start) / 1000);
  if (second < 0 || second >= seconds) return;
  const own = slot(event.tracker);
  if (event.allowed) {
    own.allowed[second]!++;
  } else {
    own.rejected[second]!++;
    const tier = event.tier ?? event.code ?? 'unknown';
    own.tiers[tier] = (own.tiers[tier] ?? 0) + 1;
  }
});

await app.listen(0, '127.0.0.1');
const { port } = app.getHttpServer().address() as AddressInfo;
process.on('message', (message: { kind?: string; at?: number }) => {
  if (message.kind === 'mark-start') {
    start = message.at! - performance.timeOrigin;
    void sendToParent('started', {});
  } else if (message.kind === 'report') {
    void sendToParent('counts', counts);
  } else if (message.kind === 'stop') {
    void app.close().then(() => process.disconnect());
  }
});
await sendToParent('ready', { port });
