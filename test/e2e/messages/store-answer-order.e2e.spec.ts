/**
 * A store whose answers settle in another order than its decisions were asked for: a
 * custom `RateLimitStore` (the public extension point) that decides each call at once, in
 * order, on a real `MemoryRateLimitStore`, and answers them later, the last asked first, or
 * through promise chains of different lengths (as Redis with token reservations does: a
 * decision released with a batch's slot settles a few promise jobs before the call that
 * fetched the batch). The promise checked (README, "Where the limiter acts"): a message the
 * limiter admitted gets its reply before the 1008 close, a refused one its `rate_limit`
 * frame up to the close, and metrics and events count exactly what the client was told.
 *
 * Real app on 127.0.0.1, real `ws` clients, floods in one TCP write.
 *
 * Failed before (on 24d1a24, both orders, 100 chats: past the frame hold's 64, the held
 * frames are decided side by side): the refusals of chats 55-64, settled first, closed the
 * socket with warning counts 10 down to 1, and none of the 20 admitted chats got its reply
 * (nor ran). Settling each connection's decisions in the order they were asked for left one
 * refusal too many counted (`rejected` 11, 31 decision events): refusals on their way to the
 * filter were forgotten at the next promise job, before the filter had counted them, so a
 * decision settling in between saw neither. They are now counted until answered
 * (`lib/pipeline/in-transit.ts`). The same accounting failed once in a clean-clone CI on
 * Redis with token reservations (test/redis/pipeline-review-edges, "80 messages of a
 * reservable plan": `rejected` 20 for 10 frames).
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { Injectable } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Registry } from 'prom-client';
import {
  MemoryRateLimitStore,
  RateLimitStore,
  Throttle,
  WsRateLimit,
  WsRateLimitAdapter,
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitDecision,
  type RateLimitEvent,
  type RateLimitPlan,
  type TierStatus,
} from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { metricSum } from '../../support/metrics.js';
import { settle, TestClient, type Frame } from '../../support/ws-client.js';

/** How a reordering store answers the decisions it was asked for within one turn. */
type Order = 'reversed' | 'chains';

/**
 * Decides every call at once on a memory store (so the decisions are those of arrival
 * order) and answers later: `reversed` resolves the calls of one event-loop turn last
 * first; `chains` resolves each through a promise chain whose length falls with its place
 * (the first call asked settles last of its turn).
 */
class ReorderingStore extends RateLimitStore {
  private readonly inner = new MemoryRateLimitStore();
  private queued: Array<() => void> = [];
  answered = 0;

  constructor(private readonly order: Order) {
    super();
  }

  consume(plan: RateLimitPlan): Promise<RateLimitDecision> {
    const decision = this.inner.consume(plan);
    return new Promise((resolve) => {
      if (this.queued.length === 0) setImmediate(() => this.flush());
      this.queued.push(() => {
        this.answered++;
        resolve(decision);
      });
    });
  }

  private flush(): void {
    const queued = this.queued;
    this.queued = [];
    if (this.order === 'reversed') {
      for (let i = queued.length - 1; i >= 0; i--) queued[i]!();
      return;
    }
    queued.forEach((answer, i) => {
      let chain = Promise.resolve();
      for (let k = 0; k < queued.length - i; k++) chain = chain.then(() => undefined);
      void chain.then(answer);
    });
  }

  peek(plan: RateLimitPlan): readonly TierStatus[] {
    return this.inner.peek(plan);
  }
  release(plan: RateLimitPlan): void {
    this.inner.release(plan);
  }
  delete(keys: readonly string[]): void {
    this.inner.delete(keys);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

@Injectable()
class Handled {
  total = 0;
}

@WebSocketGateway()
@WsRateLimit()
class OrderGateway {
  constructor(private readonly handled: Handled) {}

  @Throttle({ type: 'chat', capacity: 1000, refillRate: 1000 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    this.handled.total++;
    return { event: 'chat_ack', data };
  }
}

interface Instance {
  running: RunningApp;
  limiter: WsRateLimitService;
  handled: Handled;
  registry: Registry;
  events: RateLimitEvent[];
  store: ReorderingStore;
}

describe('a store that answers out of order, where the limiter acts', () => {
  const instances: Instance[] = [];
  const clients: TestClient[] = [];
  const subscriptions: Array<{ unsubscribe(): void }> = [];

  afterEach(async () => {
    for (const subscription of subscriptions.splice(0)) subscription.unsubscribe();
    await Promise.all(clients.splice(0).map((client) => client.close()));
    for (const instance of instances.splice(0)) await instance.running.close();
  });

  const start = async (order: Order, burst: number): Promise<Instance> => {
    const registry = new Registry();
    const store = new ReorderingStore(order);
    const running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            store,
            tracker: 'ip',
            metricsRegistry: registry,
            global: { capacity: burst, refillRate: 0.001 },
            violations: { max: 10, windowMs: 60_000 },
            maxPendingHandshakesPerIp: 0,
            connection: { capacity: 1000, refillRate: 1000 },
          }),
        ],
        providers: [Handled, OrderGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    const limiter = running.app.get(WsRateLimitService);
    const events: RateLimitEvent[] = [];
    subscriptions.push(limiter.events$.subscribe((event) => events.push(event)));
    const instance = { running, limiter, handled: running.app.get(Handled), registry, events, store };
    instances.push(instance);
    return instance;
  };

  /** Sends `count` chats in one TCP write, each `{ event, data: i, id: i }`. */
  const flood = async (instance: Instance, count: number): Promise<TestClient> => {
    const client = await TestClient.connect(instance.running.url, { perMessageDeflate: false });
    clients.push(client);
    client.inOneWrite(() => {
      for (let i = 0; i < count; i++) client.sendRaw(JSON.stringify({ event: 'chat', data: i, id: i }));
    });
    return client;
  };

  const accounted = async (instance: Instance, frames: readonly Frame[]) => {
    const replies = frames.filter((frame) => frame.event === 'chat_ack').map((frame) => frame.data as number);
    const refusals = frames.filter((frame) => frame.event === 'rate_limit');
    return {
      replies,
      refused: refusals.map((frame) => frame.data.id as number),
      warningCounts: refusals.map((frame) => frame.data.warningCount as number),
      handled: instance.handled.total,
      allowed: await metricSum(instance.registry, 'ws_rate_limit_decisions_total', { result: 'allowed' }),
      rejected: await metricSum(instance.registry, 'ws_rate_limit_decisions_total', { result: 'rejected' }),
      violations: await metricSum(instance.registry, 'ws_rate_limit_violations_total'),
      decisionEvents: instance.events.filter((event) => event.kind === 'decision').length,
    };
  };

  const range = (from: number, to: number) => Array.from({ length: to - from }, (_v, k) => from + k);

  for (const order of ['reversed', 'chains'] as const) {
    for (const count of [40, 100]) {
      it(`${count} chats in one write, a burst of 20, answers ${order}: the 20 admitted get replies, the next 10 frames, the rest nothing; figures match`, async () => {
        const instance = await start(order, 20);
        const client = await flood(instance, count);
        expect((await client.waitClose(15_000)).code).toBe(1008);
        await settle(() => instance.limiter.stats().connections === 0, 100, 15_000);
        expect(await accounted(instance, client.frames)).toEqual({
          replies: range(0, 20),
          refused: range(20, 30),
          warningCounts: range(1, 11),
          handled: 20,
          allowed: 20,
          rejected: 10,
          violations: 10,
          decisionEvents: 30,
        });
      }, 30_000);
    }
  }
});
