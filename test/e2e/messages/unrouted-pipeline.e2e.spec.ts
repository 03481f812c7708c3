import { afterEach, describe, expect, it } from '@jest/globals';
import {
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { TestClient } from '../../support/ws-client.js';
import { OperationsGateway } from '../operations/operations.gateway.js';
import { TeamGateway, TeamGuard } from './pipeline.gateway.js';

/** Frames that reach no handler take the same pipeline as routed messages (issue 9). */
describe('unrouted frames take the routed pipeline', () => {
  let running: RunningApp | undefined;
  let limiter: WsRateLimitService;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions, gateway: object = OperationsGateway) => {
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })],
        providers: gateway === TeamGateway ? [TeamGateway, TeamGuard] : [gateway as never],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    limiter = running.app.get(WsRateLimitService);
  };
  const connect = async (headers: Record<string, string> = {}) => {
    const client = await TestClient.connect(running!.url, { headers });
    clients.push(client);
    return client;
  };
  const byUser = (): WsRateLimitModuleOptions => ({
    tracker: (_client, { request }) => request?.headers['x-user'] as string | undefined,
  });

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  it("closes a denied tracker's connection on an unknown event or a malformed frame, as on a routed message", async () => {
    await start({ ...byUser(), denyList: 'mallory' });
    const unknown = await connect({ 'x-user': 'mallory' });
    unknown.send('no-such-event', 1);
    expect(await unknown.waitClose()).toEqual({ code: 1008, reason: 'Denied' });
    const malformed = await connect({ 'x-user': 'mallory' });
    malformed.sendRaw('not json');
    expect(await malformed.waitClose()).toEqual({ code: 1008, reason: 'Denied' });
    expect([...unknown.events('error'), ...malformed.events('error')]).toEqual([]);
  });

  it("answers a blocked tracker's unrouted frames with BLOCKED, as its routed ones", async () => {
    await start(byUser());
    await limiter.block('bob', 60_000);
    const bob = await connect({ 'x-user': 'bob' });
    const alice = await connect({ 'x-user': 'alice' });
    bob.socket.send(JSON.stringify({ event: 'no-such-event', data: 1, id: 'u-1' }));
    bob.sendRaw('not json');
    bob.send('chat', 1);
    const frames = await bob.waitForEvent('rate_limit', 3);
    expect(frames.map((frame) => frame.data.code)).toEqual(['BLOCKED', 'BLOCKED', 'BLOCKED']);
    expect(frames[0]!.data.id).toBe('u-1');
    expect(bob.events('error')).toEqual([]);
    // Another tracker from the same address is not blocked: its unknown event gets the error frame.
    alice.send('no-such-event', 1);
    const [error] = await alice.waitForEvent('error');
    expect(error!.data.code).toBe('UNKNOWN_EVENT');
  });

  it("decides a gateway's unrouted frames with its guard subclass's getTracker", async () => {
    await start({ tracker: 'connection', global: { capacity: 4, refillRate: 0.01 } }, TeamGateway);
    const first = await connect({ 'x-team': 'red' });
    const second = await connect({ 'x-team': 'red' });
    for (let i = 0; i < 3; i++) first.send('no-such-event', i);
    await first.waitForEvent('error', 3);
    // The team's budget (4) is shared: one more frame passes, then the team is refused.
    for (let i = 0; i < 3; i++) second.send('no-such-event', i);
    await second.waitFor((frame) => frame.event === 'error' || frame.event === 'rate_limit', 3);
    expect(second.events('error')).toHaveLength(1);
    expect(second.events('rate_limit').map((frame) => frame.data.code)).toEqual(['GLOBAL_LIMIT', 'GLOBAL_LIMIT']);
    expect((await limiter.status('team-red')).global.remaining).toBe(0);
    // Routed messages of the team spend the same budget.
    second.send('chat', 1);
    const frames = await second.waitForEvent('rate_limit', 3);
    expect(frames[2]!.data.messageType).toBe('chat');
  });
});
