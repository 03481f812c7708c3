import { afterEach, describe, expect, it } from '@jest/globals';
import { APP_GUARD } from '@nestjs/core';
import { WsAdapter } from '@nestjs/platform-ws';
import { WsRateLimitAdapter, WsRateLimitModule, WsThrottleGuard } from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { TestClient } from '../../support/ws-client.js';
import { PlainGateway } from './global-guard.gateway.js';

/**
 * A guard registered with APP_GUARD runs for gateway handlers, but global filters do not
 * apply to gateways: the module puts its filter on every gateway, so a global guard answers
 * exactly as `@WsRateLimit()` does (rate_limit frames, violations counted, the close at the
 * threshold) instead of NestJS's generic `exception` frames, which echo the message.
 */
describe.each([
  // On WsRateLimitAdapter the replies of admitted messages go out before the close.
  ['WsRateLimitAdapter', (app: ConstructorParameters<typeof WsAdapter>[0]) => new WsRateLimitAdapter(app as never), 3],
  // The stock adapter sends replies later than the close, so they may be lost (README).
  ['stock WsAdapter', (app: ConstructorParameters<typeof WsAdapter>[0]) => new WsAdapter(app), undefined],
])('a guard registered globally (%s)', (_name, adapter, acks) => {
  let running: RunningApp | undefined;

  afterEach(async () => {
    await running?.close();
    running = undefined;
  });

  it('answers with rate_limit frames, counts violations and closes at the threshold', async () => {
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, violations: { max: 3, windowMs: 60_000 } })],
        providers: [PlainGateway, { provide: APP_GUARD, useClass: WsThrottleGuard }],
      },
      adapter,
    );
    const client = await TestClient.connect(running.url);
    for (let i = 0; i < 6; i++) client.send('chat', `SECRET-${i}`);
    expect(await client.waitClose()).toEqual({ code: 1008, reason: 'Rate limit violations' });
    if (acks !== undefined) expect(client.events('ack')).toHaveLength(acks);
    const frames = client.events('rate_limit');
    expect(frames.map((frame) => frame.data.warningCount)).toEqual([1, 2, 3]);
    expect(frames[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'chat', limit: 3, remaining: 0 });
    expect(client.events('exception')).toEqual([]);
    expect(JSON.stringify(client.events('rate_limit'))).not.toContain('SECRET');
  });
});
