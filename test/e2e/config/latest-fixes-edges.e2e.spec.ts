/**
 * Adversarial review of the latest fixes (498da95, 7e5c467/e21a6b8, f8a784c, e9da88d):
 * skipIf answers other than true/false/promise, the skipIf promise on unrouted frames, the
 * @SkipThrottle start-up warning (class figures, inheritance, re-enabled classes), start-up
 * validation under app.useGlobalGuards for valid apps, and the memory store's key parsing.
 * Real apps on 127.0.0.1 with real `ws` clients; refill rates are 0.01/s so time never
 * decides a count. Three cases failed before their fixes: a truthy skipIf answer other than
 * `true` (1, 'yes', an object) limited its messages in silence (now it skips, as
 * @nestjs/throttler's does); class-level @Throttle figures voided by the class's
 * @SkipThrottle(), and figures on a handler with its own @SkipThrottle(), got no start-up
 * warning. (A fourth, a hand-made plan naming another tracker's key, is noted, not fixed.)
 */
import { describe, expect, it } from '@jest/globals';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { SkipThrottle, Throttle, WsRateLimit } from '../../../lib/index.js';
import { createPlan } from '../../../lib/plans/create-plan.js';
import { tokenBucketSpec } from '../../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../../lib/storage/memory/memory-store.js';
import { decoratorHarness } from './decorator-harness.js';

const SLOW = 0.01;

// --- Gateways -----------------------------------------------------------------------------

@WebSocketGateway({ path: '/plain' })
@WsRateLimit()
class PlainGateway {
  @Throttle({ capacity: 2, refillRate: SLOW })
  @SubscribeMessage('vip')
  vip(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** Class-level figures voided by the class's own @SkipThrottle(); no handler re-enabled. */
@WebSocketGateway({ path: '/classfig' })
@WsRateLimit()
@SkipThrottle()
@Throttle({ capacity: 2, refillRate: SLOW })
class ClassFiguresSkippedGateway {
  @SubscribeMessage('search')
  search(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** A handler carrying both @SkipThrottle() and @Throttle figures (a limited class). */
@WebSocketGateway({ path: '/both' })
@WsRateLimit()
class BothOnHandlerGateway {
  @SkipThrottle()
  @Throttle({ capacity: 2, refillRate: SLOW })
  @SubscribeMessage('search')
  search(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** A skipped base class; a gateway subclass inherits the skip and the handler figures. */
@SkipThrottle()
class SkippedBase {
  @Throttle({ capacity: 2, refillRate: SLOW })
  @SubscribeMessage('inherited')
  inherited(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

@WebSocketGateway({ path: '/child' })
@WsRateLimit()
class InheritsSkipGateway extends SkippedBase {}

/** The same base, re-enabled on the subclass with @SkipThrottle(false). */
@WebSocketGateway({ path: '/reenabled' })
@WsRateLimit()
@SkipThrottle(false)
class ReenablesClassGateway extends SkippedBase {}

/** A valid app under app.useGlobalGuards: shared types, a skipped costly handler, a skipped class. */
@WebSocketGateway({ path: '/g1' })
class SharedTypeOneGateway {
  @Throttle({ type: 'chat', capacity: 3, refillRate: SLOW })
  @SubscribeMessage('say')
  say(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @SkipThrottle()
  @Throttle({ cost: 50 })
  @SubscribeMessage('bulk')
  bulk(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

@WebSocketGateway({ path: '/g2' })
@SkipThrottle()
class SharedTypeTwoGateway {
  @SkipThrottle(false)
  @Throttle({ type: 'chat', capacity: 3, refillRate: SLOW })
  @SubscribeMessage('shout')
  shout(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @SubscribeMessage('free')
  free(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

describe('latest fixes (review)', () => {
  const { start, connect, burst, events, warnings, errors } = decoratorHarness();

  // --- skipIf answers -------------------------------------------------------------------------

  it.each([
    ['1', 1],
    ["'yes'", 'yes'],
    ['an object', { internal: true }],
  ])("a skipIf returning %s (truthy, not true) skips, as @nestjs/throttler's does", async (_name, answer) => {
    expect(await start([PlainGateway], { skipIf: (() => answer) as never })).toBeUndefined();
    const client = await connect('/plain');
    // Before: ack, ack, rate_limit, rate_limit (only `true` skipped), and nothing logged.
    expect({ answers: events(await burst(client, 'vip', 4)), errors: errors() }).toEqual({
      answers: ['ack', 'ack', 'ack', 'ack'],
      errors: [],
    });
  });

  it('an async module skipIf: unrouted frames (WsRateLimitAdapter) are limited too, one error logged for both kinds', async () => {
    expect(
      await start([PlainGateway], {
        skipIf: (async () => true) as never,
        global: { capacity: 3, refillRate: SLOW },
      }),
    ).toBeUndefined();
    const client = await connect('/plain');
    client.inOneWrite(() => {
      for (let i = 0; i < 5; i++) client.sendRaw('not json');
    });
    // Three within the global budget get the small `error` frame, the rest a rate_limit.
    await client.waitFor((frame) => frame.event === 'error' || frame.event === 'rate_limit', 5);
    const unrouted = events(client.frames.filter((f) => f.event === 'error' || f.event === 'rate_limit'));
    const routed = events(await burst(client, 'vip', 1));
    expect({ unrouted, routed, errors: errors() }).toEqual({
      unrouted: ['error', 'error', 'error', 'rate_limit', 'rate_limit'],
      routed: ['rate_limit'],
      errors: [expect.stringContaining('skipIf returned a promise')],
    });
  });

  // --- The @SkipThrottle start-up warning ----------------------------------------------------

  it("class-level @Throttle figures voided by the same class's @SkipThrottle() get a start-up warning", async () => {
    expect(await start([ClassFiguresSkippedGateway])).toBeUndefined();
    const client = await connect('/classfig');
    expect(events(await burst(client, 'search', 4))).toEqual(['ack', 'ack', 'ack', 'ack']);
    // The class's { capacity: 2 } does nothing, exactly as a handler's would; only handler
    // figures are looked at (startup-report `skippedThrottles`).
    expect(warnings()).toMatch(/ClassFiguresSkippedGateway/);
  });

  it('a handler with both @SkipThrottle() and @Throttle figures gets a start-up warning (its figures do nothing)', async () => {
    expect(await start([BothOnHandlerGateway])).toBeUndefined();
    const client = await connect('/both');
    expect(events(await burst(client, 'search', 4))).toEqual(['ack', 'ack', 'ack', 'ack']);
    expect(warnings()).toMatch(/BothOnHandlerGateway\.search/);
  });

  it('a gateway inheriting a skipped base: the warning names the subclass handler; @SkipThrottle(false) on the subclass limits it and warns nothing', async () => {
    expect(await start([InheritsSkipGateway, ReenablesClassGateway])).toBeUndefined();
    const said = warnings();
    const child = await connect('/child');
    const reenabled = await connect('/reenabled');
    const childAnswers = events(await burst(child, 'inherited', 3));
    expect({
      child: /InheritsSkipGateway\.inherited/.test(said),
      reenabled: /ReenablesClassGateway/.test(said),
      childAnswers,
    }).toEqual({ child: true, reenabled: false, childAnswers: ['ack', 'ack', 'ack'] });
    // The two gateways have the same events: the adapter cannot tell them apart, but routed
    // messages go through each handler's own guard.
    const answers = events(await burst(reenabled, 'inherited', 3));
    expect(answers).toEqual(['ack', 'ack', 'rate_limit']);
  });

  // --- Start-up validation under app.useGlobalGuards -----------------------------------------

  it('app.useGlobalGuards: a valid app (one type on two gateways, a skipped costly handler, a skipped class, a plan) starts and limits', async () => {
    const error = await start(
      [SharedTypeOneGateway, SharedTypeTwoGateway],
      { plans: { small: { global: { capacity: 10, refillRate: SLOW } } } },
      true,
    );
    expect(error?.message).toBeUndefined();
    const one = await connect('/g1');
    const two = await connect('/g2');
    const said = events(await burst(one, 'say', 2));
    const shouted = events(await burst(two, 'shout', 2));
    const bulk = events(await burst(one, 'bulk', 3));
    const free = events(await burst(two, 'free', 3));
    // One tracker per connection: each connection has the type's 3.
    expect({ said, shouted, bulk, free }).toEqual({
      said: ['ack', 'ack'],
      shouted: ['ack', 'ack'],
      bulk: ['ack', 'ack', 'ack'],
      free: ['ack', 'ack', 'ack'],
    });
  });

  // --- Memory store keys (e9da88d) -----------------------------------------------------------

  it("memory store: delete() by key forgets createPlan states of trackers with ':' and '|', an empty tracker and a 100,000-character one", () => {
    const store = new MemoryRateLimitStore({ clock: () => 0 });
    const spec = tokenBucketSpec('global', 'g', 1, SLOW);
    const trackers = ['a:b|c', '1:u|g', '', '|', ':', 'x'.repeat(100_000)];
    for (const tracker of trackers) {
      const plan = createPlan(store, tracker, [spec]);
      expect(store.consume(plan).allowed).toBe(true);
      expect(store.consume(plan).allowed).toBe(false);
    }
    expect(store.size).toBe(trackers.length);
    store.delete(trackers.map((tracker) => store.key(tracker, 'g')));
    expect(store.size).toBe(0);
    for (const tracker of trackers) expect(store.consume(createPlan(store, tracker, [spec])).allowed).toBe(true);
  });
});
