import { afterEach, describe, expect, it } from '@jest/globals';
import { ConnectedSocket, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import {
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { sleep, TestClient, type Frame } from '../../support/ws-client.js';

type Client = { user?: { id: string } };

/** A chat type, a login that names the user, a spend from code, and an essential receipt. */
@WebSocketGateway()
@WsRateLimit()
class EdgeGateway {
  constructor(private readonly limiter: WsRateLimitService) {}

  @Throttle({ type: 'chat', capacity: 2, refillRate: 0.1 })
  @SubscribeMessage('chat')
  chat() {
    return { event: 'ack', data: 'chat' };
  }

  @Throttle({ type: 'login', capacity: 100, refillRate: 100 })
  @SubscribeMessage('login')
  login(@ConnectedSocket() client: Client) {
    client.user = { id: 'alice' };
    return { event: 'ack', data: 'login' };
  }

  @Throttle({ type: 'spend', capacity: 100, refillRate: 100 })
  @SubscribeMessage('spend')
  async spend(@ConnectedSocket() client: object) {
    await this.limiter.consume(client, { type: 'search', expensive: true });
    return { event: 'ack', data: 'spend' };
  }

  @Throttle({ type: 'receipt', capacity: 1, refillRate: 0.1, essential: true })
  @SubscribeMessage('receipt')
  receipt() {
    return { event: 'ack', data: 'receipt' };
  }
}

const answered = (frame: Frame) => frame.event === 'ack' || frame.event === 'rate_limit' || frame.event === 'error';

/** Service paths that review found unsafe: each test fails without its fix. */
describe('service edges over real WebSockets', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async (options: WsRateLimitModuleOptions) => {
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })], providers: [EdgeGateway] },
      (app) => new WsRateLimitAdapter(app),
    );
    return running.app.get(WsRateLimitService);
  };
  const connect = async () => {
    const client = await TestClient.connect(running!.url);
    clients.push(client);
    return client;
  };
  const closedAll = async (limiter: WsRateLimitService) => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (let i = 0; i < 100 && limiter.stats().connections > 0; i++) await sleep(20);
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  it('a tracker function that throws on an unrouted frame neither crashes the process nor goes unanswered', async () => {
    // Throws for every client that has not logged in (no `user`).
    await start({ tracker: (client) => (client as Client).user!.id });
    const client = await connect();
    client.send('no-such-event', 1);
    client.sendRaw('not json');
    await client.waitFor(answered, 2);
    expect(client.events('error').map((frame) => frame.data.code)).toEqual(['UNKNOWN_EVENT', 'INVALID_MESSAGE']);
    // Charged to the connection instead: a flood of them still ends in a close.
    for (let i = 0; i < 400 && client.socket.readyState === client.socket.OPEN; i++) client.send('no-such-event', i);
    expect((await client.waitClose()).code).toBe(1008);
  });

  it('frees the per-connection keys of a connection whose tracker changed, and of consume() from code', async () => {
    const limiter = await start({
      tracker: (client) => (client as Client).user?.id,
      connection: { capacity: 100, refillRate: 100 },
    });
    const before = limiter.stats().localKeys;
    for (let n = 0; n < 5; n++) {
      const client = await connect();
      client.send('chat', n); // per connection: conn:N keys
      client.send('login');
      client.send('chat', n); // per user now: the conn:N plan is replaced
      await client.waitFor(answered, 3);
    }
    await closedAll(limiter);
    expect(limiter.stats().localKeys).toBe(before);

    const spender = await connect();
    for (let i = 0; i < 3; i++) spender.send('spend', i);
    await spender.waitFor(answered, 3);
    await closedAll(limiter);
    expect(limiter.stats().localKeys).toBe(before);
  });

  it('after the cooldown, a repeat offender on essential types is degraded again, not closed', async () => {
    await start({ degradeCooldownMs: 300, violations: { max: 2, windowMs: 60_000 } });
    const client = await connect();
    for (let i = 0; i < 4; i++) client.send('chat', i);
    await client.waitFor(answered, 4);
    expect(client.events('rate_limit').map((frame) => frame.data.code)).toEqual(['TYPE_LIMIT', 'DEGRADED']);
    await sleep(400);
    // Only essential messages since: their own limit (1) is spent at once, and two more
    // violations reach the threshold again (the degradation began a new window).
    for (let i = 0; i < 3; i++) client.send('receipt', i);
    await client.waitFor(answered, 7);
    expect(client.events('rate_limit').map((frame) => frame.data.code)).toEqual([
      'TYPE_LIMIT',
      'DEGRADED',
      'TYPE_LIMIT',
      'DEGRADED',
    ]);
    await sleep(100);
    expect(client.socket.readyState).toBe(client.socket.OPEN);
  });
});
