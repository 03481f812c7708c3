/**
 * How handler decorators turn into limits, as a NestJS user writes them (adversarial review):
 * class- vs method-level `@Throttle`, `@SkipThrottle` with one handler re-enabled, gateway
 * inheritance, one type on two gateways, @nestjs/throttler's shapes, `cost`, plans, `skipIf`,
 * and whether each misuse stops start-up. Real apps on 127.0.0.1, real `ws` clients; every
 * refill rate is slow enough (0.01/s) that timing never decides a count.
 *
 * From a review; four cases failed before their fixes: an async skipIf was counted as false
 * in silence (now logged as an error); with app.useGlobalGuards a cost above the capacity
 * started and failed every message (now a start-up error); an unknown field in a named limit
 * (throttler's `ttl`) was ignored (now a start-up error); @Throttle figures voided by the
 * class's @SkipThrottle() went unmentioned (now a start-up warning). The others held.
 */
import { describe, expect, it } from '@jest/globals';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { SkipThrottle, Throttle, WsRateLimit, WsRateLimitConfigError, WsRateLimitService } from '../../../lib/index.js';
import { decoratorHarness } from './decorator-harness.js';

const SLOW = 0.01;

// --- Gateways -----------------------------------------------------------------------------

/** Class figures, one handler overriding only the capacity, one taking the class's. */
@WebSocketGateway({ path: '/precedence' })
@WsRateLimit()
@Throttle({ capacity: 5, refillRate: SLOW })
class PrecedenceGateway {
  @Throttle({ capacity: 2 })
  @SubscribeMessage('tight')
  tight(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @SubscribeMessage('roomy')
  roomy(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** A skipped class: one handler re-enabled with no figures of its own (the module's type default). */
@WebSocketGateway({ path: '/skipped' })
@WsRateLimit()
@SkipThrottle()
class ReenabledGateway {
  @SkipThrottle(false)
  @SubscribeMessage('limited')
  limited(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @SubscribeMessage('free')
  free(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** A base gateway: class figures (inherited by subclasses) and two handlers. */
@Throttle({ capacity: 4, refillRate: SLOW })
class BaseRoomGateway {
  @SubscribeMessage('say')
  say(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @SubscribeMessage('note')
  note(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** Overrides `say` with figures of its own, keeps `note`, adds `shout`. */
@WebSocketGateway({ path: '/room' })
@WsRateLimit()
class RoomGateway extends BaseRoomGateway {
  @Throttle({ capacity: 2 })
  @SubscribeMessage('say')
  override say(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ capacity: 3 })
  @SubscribeMessage('shout')
  shout(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** The same event on two gateways (two paths), each with its own figures. */
@WebSocketGateway({ path: '/a' })
@WsRateLimit()
class ChatOnAGateway {
  @Throttle({ capacity: 5, refillRate: 1 })
  @SubscribeMessage('chat')
  chat() {
    return { event: 'ack' };
  }
}

@WebSocketGateway({ path: '/b' })
@WsRateLimit()
class ChatOnBGateway {
  @Throttle({ capacity: 50, refillRate: 1 })
  @SubscribeMessage('chat')
  chat() {
    return { event: 'ack' };
  }
}

/** @nestjs/throttler's shape, copied over while migrating. */
@WebSocketGateway()
@WsRateLimit()
class ThrottlerShapeGateway {
  @Throttle({ default: { limit: 3, ttl: 60_000 } } as never)
  @SubscribeMessage('chat')
  chat() {
    return { event: 'ack' };
  }
}

/** A per-handler expensive window, as the migration section's wording suggests. */
@WebSocketGateway()
@WsRateLimit()
class ExpensiveWindowGateway {
  @Throttle({ expensive: { max: 2, windowMs: 60_000 } } as never)
  @SubscribeMessage('report')
  report() {
    return { event: 'ack' };
  }
}

/** A handler whose cost fits the module's figures but not a plan's. */
@WebSocketGateway()
@WsRateLimit()
class BulkGateway {
  @Throttle({ cost: 4 })
  @SubscribeMessage('bulk')
  bulk() {
    return { event: 'ack' };
  }
}

/** A named limit written with throttler's `ttl` next to the figures. */
@WebSocketGateway()
@WsRateLimit()
class NamedTtlGateway {
  @Throttle({ limits: { minute: { capacity: 3, refillRate: 3, ttl: 60_000 } as never } })
  @SubscribeMessage('chat')
  chat() {
    return { event: 'ack' };
  }
}

/** An async `skipIf` (e.g. a lookup) that resolves true: VIP messages are meant to pass. */
@WebSocketGateway()
@WsRateLimit()
class AsyncSkipGateway {
  @Throttle({ capacity: 2, refillRate: SLOW, skipIf: (async () => true) as never })
  @SubscribeMessage('vip')
  vip(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** A `skipIf` that throws on a routed message. */
@WebSocketGateway()
@WsRateLimit()
class ThrowingSkipGateway {
  ran = 0;

  @Throttle({
    capacity: 2,
    refillRate: SLOW,
    skipIf: () => {
      throw new Error('lookup failed');
    },
  })
  @SubscribeMessage('vip')
  vip(@MessageBody() data: unknown) {
    this.ran++;
    return { event: 'ack', data };
  }
}

/** No @WsRateLimit: the guard comes from app.useGlobalGuards. A cost no bucket can pay. */
@WebSocketGateway()
class GloballyGuardedCostGateway {
  @Throttle({ capacity: 3, refillRate: SLOW, cost: 5 })
  @SubscribeMessage('bulk')
  bulk() {
    return { event: 'ack' };
  }
}

/** `@Throttle` figures inside a `@SkipThrottle()` class, the handler not re-enabled. */
@WebSocketGateway()
@WsRateLimit()
@SkipThrottle()
class ForgottenReenableGateway {
  @Throttle({ capacity: 2, refillRate: SLOW })
  @SubscribeMessage('search')
  search(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

/** A limited handler and a `@SkipThrottle` one (a health check), to block the client. */
const sockets: object[] = [];
@WebSocketGateway()
@WsRateLimit()
class BlockGateway {
  @SubscribeMessage('hello')
  hello(@ConnectedSocket() client: object) {
    sockets.push(client);
    return { event: 'hi' };
  }

  @SkipThrottle()
  @SubscribeMessage('ping')
  ping(@MessageBody() data: unknown) {
    return { event: 'pong', data };
  }
}

describe('handler decorators turned into limits (review)', () => {
  const h = decoratorHarness(() => (sockets.length = 0));
  const { start, connect, burst, events, lines } = h;

  // --- What held ----------------------------------------------------------------------------

  it("a handler's @Throttle field wins over its class's, the others come from the class", async () => {
    expect(await start([PrecedenceGateway])).toBeUndefined();
    const client = await connect('/precedence');
    // tight: capacity 2 (its own), refillRate 0.01 (the class's); roomy: the class's 5.
    expect(events(await burst(client, 'tight', 4))).toEqual(['ack', 'ack', 'rate_limit', 'rate_limit']);
    expect(events(await burst(client, 'roomy', 7))).toEqual([...Array(5).fill('ack'), 'rate_limit', 'rate_limit']);
    expect(client.events('rate_limit')[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'tight', limit: 2 });
  });

  it('@SkipThrottle(false) on one handler of a skipped class limits it by the module figures; the rest stay free', async () => {
    expect(await start([ReenabledGateway], { type: { capacity: 3, refillRate: SLOW } })).toBeUndefined();
    const client = await connect('/skipped');
    expect(events(await burst(client, 'limited', 5))).toEqual(['ack', 'ack', 'ack', 'rate_limit', 'rate_limit']);
    expect(events(await burst(client, 'free', 8))).toEqual(Array(8).fill('ack'));
  });

  it("@SkipThrottle({ default: false }) (@nestjs/throttler's re-enable) throws where the class is defined", () => {
    expect(() => SkipThrottle({ default: false } as never)).toThrow(WsRateLimitConfigError);
    expect(() => SkipThrottle({ default: false } as never)).toThrow(/per-throttler form/);
  });

  it("a subclass gateway: its overriding handler's figures, the base class's figures for inherited handlers", async () => {
    expect(await start([RoomGateway])).toBeUndefined();
    const client = await connect('/room');
    // say: the override's capacity 2; note: inherited, the base class's 4; shout: its own 3.
    expect(events(await burst(client, 'say', 3))).toEqual(['ack', 'ack', 'rate_limit']);
    expect(events(await burst(client, 'note', 5))).toEqual(['ack', 'ack', 'ack', 'ack', 'rate_limit']);
    expect(events(await burst(client, 'shout', 4))).toEqual(['ack', 'ack', 'ack', 'rate_limit']);
  });

  it('one event on two gateways (two paths) with different figures stops start-up, naming both handlers', async () => {
    const error = await start([ChatOnAGateway, ChatOnBGateway]);
    expect(error).toBeInstanceOf(WsRateLimitConfigError);
    expect(error!.message).toMatch(/ChatOnBGateway\.chat/);
    expect(error!.message).toMatch(/ChatOnAGateway\.chat/);
    expect(error!.message).toMatch(/type "chat"/);
  });

  it.each([
    ["@nestjs/throttler's { default: { limit, ttl } }", ThrottlerShapeGateway, /unknown field "default"/],
    ['a per-handler expensive window { max, windowMs }', ExpensiveWindowGateway, /expensive must be true or false/],
  ])('stops start-up on %s, naming the handler', async (_name, gateway, message) => {
    const error = await start([gateway]);
    expect(error).toBeInstanceOf(WsRateLimitConfigError);
    expect(error!.message).toMatch(message);
    expect(error!.message).toMatch(new RegExp(`${(gateway as { name: string }).name}\\.`));
  });

  it("a plan whose type capacity is below a handler's cost stops start-up, naming the plan", async () => {
    const error = await start([BulkGateway], {
      plans: { free: { types: { bulk: { capacity: 3 } } } },
      planResolver: () => 'free',
    });
    expect(error).toBeInstanceOf(WsRateLimitConfigError);
    expect(error!.message).toMatch(/BulkGateway\.bulk: cost 4 exceeds the type capacity 3/);
    expect(error!.message).toMatch(/under plan "free"/);
  });

  it('a skipIf that throws on a routed message: the handler does not run, NestJS answers with its exception frame', async () => {
    expect(await start([ThrowingSkipGateway])).toBeUndefined();
    const client = await connect();
    const answers = await burst(client, 'vip', 3);
    expect(events(answers)).toEqual(['exception', 'exception', 'exception']);
    expect(h.app!.get(ThrowingSkipGateway).ran).toBe(0);
  });

  // --- Found by the review ------------------------------------------------------------------

  it('an async skipIf is reported as an error and its messages are limited, not skipped in silence', async () => {
    expect(await start([AsyncSkipGateway])).toBeUndefined();
    const client = await connect();
    const answers = await burst(client, 'vip', 5);
    // Before: 2 acks then TYPE_LIMIT (the promise compared with `=== true`), nothing logged.
    // skipIf must answer synchronously (its type says so): a promise is logged once as an
    // error, and the message is limited.
    const said = lines.filter((line) => line.level === 'error').map((line) => line.text);
    expect({ answers: events(answers), said }).toEqual({
      answers: ['ack', 'ack', 'rate_limit', 'rate_limit', 'rate_limit'],
      said: [expect.stringContaining('skipIf returned a promise')],
    });
  });

  it('with app.useGlobalGuards, a cost above the capacity is refused at start-up', async () => {
    const error = await start([GloballyGuardedCostGateway], {}, true);
    let answers: unknown[] = [];
    if (error === undefined) {
      const client = await connect();
      answers = events(await burst(client, 'bulk', 2));
    }
    // README: "a cost above a capacity is refused at start-up, since it could never pass".
    // Found: the app starts, and each message gets NestJS's generic exception frame (the
    // route is first built, and its cost checked, when the first message arrives).
    expect({ startUp: error?.message, answers }).toEqual({
      startUp: expect.stringMatching(/GloballyGuardedCostGateway\.bulk: cost 5 exceeds the type capacity 3/),
      answers: [],
    });
  });

  it("an unknown field in a named limit (throttler's ttl) stops start-up", async () => {
    const error = await start([NamedTtlGateway]);
    // Unknown @Throttle fields and unknown plan fields stop start-up ("a misspelled field
    // would otherwise leave the default in force, unseen"); inside `limits` they do not.
    // Found: the app starts (the bucket refills 3 a second).
    expect({ startUp: error?.message }).toEqual({ startUp: expect.stringMatching(/limits\.minute.*"ttl"/) });
  });

  it('@Throttle figures on a handler of a @SkipThrottle() class do nothing, and a start-up warning says so', async () => {
    expect(await start([ForgottenReenableGateway])).toBeUndefined();
    const client = await connect();
    const answers = events(await burst(client, 'search', 4));
    expect(answers).toEqual(['ack', 'ack', 'ack', 'ack']); // skipped, as documented
    // As for @Throttle where no guard runs ("its figures would do nothing"), a start-up
    // warning (or error) should name the handler. Found: nothing.
    const warned = lines.filter((line) => line.context === 'WsRateLimit' && line.level === 'warn');
    expect(warned.map((line) => line.text).join('\n')).toMatch(/ForgottenReenableGateway\.search/);
  });

  it('a blocked client gets BLOCKED from limited handlers; a @SkipThrottle handler still answers (as documented)', async () => {
    expect(await start([BlockGateway])).toBeUndefined();
    const client = await connect();
    client.send('hello');
    await client.waitForEvent('hi');
    await h.app!.get(WsRateLimitService).block(sockets[0]!, 60_000);
    expect(events(await burst(client, 'hello', 1))).toEqual(['rate_limit']);
    // Handlers the limiter skips are outside it, blocks included (README, "Blocking from code").
    expect(events(await burst(client, 'ping', 2))).toEqual(['pong', 'pong']);
  });
});
