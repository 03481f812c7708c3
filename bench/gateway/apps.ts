import { Injectable, Module, UseGuards, type CanActivate, type DynamicModule, type Type } from '@nestjs/common';
import { ThrottlerGuard, ThrottlerModule, type ThrottlerRequest } from '@nestjs/throttler';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { WsRateLimit, WsRateLimitModule } from 'nestjs-ws-rate-limit';
import { metricsOn } from '../support/prom.js';

/** The stock echo gateway: what every variant does, without a limiter. */
@WebSocketGateway()
export class EchoGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}

/** A guard that lets everything through: what NestJS's guard machinery costs by itself. */
@Injectable()
export class AllowAllGuard implements CanActivate {
  canActivate(): boolean {
    return true;
  }
}

/** The echo gateway behind a guard that does nothing: the control for the guards below. */
@WebSocketGateway()
@UseGuards(AllowAllGuard)
export class NoopGuardedEchoGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}

/** The same gateway behind this library, as its README puts it on a gateway. */
@WebSocketGateway()
@WsRateLimit()
export class RateLimitedEchoGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}

/**
 * @nestjs/throttler's documented WebSocket guard, as its docs give it: ThrottlerGuard with
 * `handleRequest` keyed by the client address from `client._socket.remoteAddress`.
 */
@Injectable()
export class WsThrottlerGuard extends ThrottlerGuard {
  override async handleRequest(requestProps: ThrottlerRequest): Promise<boolean> {
    const { context, limit, ttl, throttler, blockDuration, generateKey } = requestProps;
    const client = context.switchToWs().getClient<{ _socket: { remoteAddress: string } }>();
    const tracker = client._socket.remoteAddress;
    const key = generateKey(context, tracker, throttler.name!);
    const { totalHits, timeToExpire, isBlocked, timeToBlockExpire } = await this.storageService.increment(
      key,
      ttl,
      limit,
      blockDuration,
      throttler.name!,
    );
    if (isBlocked) {
      await this.throwThrottlingException(context, {
        limit,
        ttl,
        key,
        tracker,
        totalHits,
        timeToExpire,
        isBlocked,
        timeToBlockExpire,
      });
    }
    return true;
  }
}

/** The same gateway behind @nestjs/throttler's documented WebSocket guard. */
@WebSocketGateway()
@UseGuards(WsThrottlerGuard)
export class ThrottledEchoGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}

/**
 * Limits nothing reaches at these rates, so every message is allowed: only the guard's cost
 * shows. The largest figures the options accept (lib/config/bounds.ts).
 */
export const HUGE = 1e6;

/**
 * V8's allocation-site pretenuring: when most objects from one allocation site outlive two
 * young-generation collections, V8 allocates that site's objects in old space from then on,
 * and does not go back. On the stock WsAdapter, a server whose messages all wait on Redis for
 * a round trip (at start, before reservations are in place) gets NestJS's per-message objects
 * pretenured, and pays old-space collections for every message for the rest of its life.
 * `WsRateLimitAdapter` holds a connection's later frames while its decision waits, so they
 * never enter NestJS to wait there (lib/connection/frame-hold.ts). The stock-adapter runs with
 * this flag show what that costs (see bench/README.md).
 */
export const NO_PRETENURING = '--no-allocation-site-pretenuring';

/** The variants of the gateway benchmark, by id. */
export const VARIANTS = {
  unguarded: {
    label: 'unguarded echo gateway',
    clientAddresses: 1,
  },
  noop: {
    label: 'control: a guard that returns true',
    clientAddresses: 1,
  },
  ours: {
    label: `ours: @WsRateLimit(), defaults (memory store, tracker connection, metrics ${metricsOn ? 'on' : 'off'})`,
    clientAddresses: 1,
  },
  throttler: {
    label: '@nestjs/throttler WsThrottlerGuard (docs), 1 client address',
    clientAddresses: 1,
  },
  throttler64: {
    label: '@nestjs/throttler WsThrottlerGuard (docs), 64 client addresses',
    clientAddresses: 64,
  },
  oursRedis: {
    label: 'ours: Redis store, tracker ip, 64 client addresses, no reservations, WsRateLimitAdapter',
    clientAddresses: 64,
    adapter: 'ours',
  },
  oursRedisReserve: {
    label: 'ours: Redis store, tracker ip, 64 client addresses, reservations (batch 64), WsRateLimitAdapter',
    clientAddresses: 64,
    adapter: 'ours',
  },
  oursRedisReserveTtl: {
    label:
      'ours: Redis store, tracker ip, 64 client addresses, reservations (batch 1000: rate x 1 s TTL), WsRateLimitAdapter',
    clientAddresses: 64,
    adapter: 'ours',
  },
  oursRedisReserveFast: {
    label:
      'ours: Redis store, tracker ip, 64 client addresses, buckets refilling 4,000/s, reservations (batch 4000: rate x 1 s TTL), WsRateLimitAdapter',
    clientAddresses: 64,
    adapter: 'ours',
  },
  oursRedisReserveBurst: {
    label:
      'ours: Redis store, tracker ip, 64 client addresses, buckets refilling 250/s (each address spends its burst), reservations (batch 250: rate x 1 s TTL), WsRateLimitAdapter',
    clientAddresses: 64,
    adapter: 'ours',
  },
  oursRedisReserveTtlStock: {
    label:
      'ours: Redis store, tracker ip, 64 client addresses, reservations (batch 1000), guard only on the stock WsAdapter',
    clientAddresses: 64,
  },
  unguardedNoPretenure: {
    label: `unguarded echo gateway, node ${NO_PRETENURING}`,
    clientAddresses: 1,
    nodeFlags: [NO_PRETENURING],
  },
  oursRedisReserveTtlStockNoPretenure: {
    label: `ours: Redis store, tracker ip, 64 client addresses, reservations (batch 1000), guard only on the stock WsAdapter, node ${NO_PRETENURING}`,
    clientAddresses: 64,
    nodeFlags: [NO_PRETENURING],
  },
} satisfies Record<string, GatewayVariant>;

/**
 * What a variant is: its label, how many client addresses the load uses, node's flags for its
 * server, and its WebSocket adapter: platform-ws's stock `WsAdapter` unless `ours`
 * (`WsRateLimitAdapter`, as the README sets the library up).
 */
export interface GatewayVariant {
  readonly label: string;
  readonly clientAddresses: number;
  readonly nodeFlags?: readonly string[];
  readonly adapter?: 'ours';
}

/** The variants that need a Redis server (its URL in `BENCH_REDIS_URL`). */
export const REDIS_VARIANTS: readonly VariantId[] = [
  'oursRedis',
  'oursRedisReserve',
  'oursRedisReserveTtl',
  'oursRedisReserveFast',
  'oursRedisReserveBurst',
  'oursRedisReserveTtlStock',
  'oursRedisReserveTtlStockNoPretenure',
];

/**
 * The Redis variants' shared limits: a burst no run spends, and a refill near what one
 * address sends (about 500 messages a second of the load's ~30 k/s over 64 addresses on the
 * machine these were set on), the case reservations are for (a full bucket's slots lapse at
 * its refill rate). On a machine where one address sends more than the refill, the buckets
 * spend their burst, their fullAt running ahead of now (until 2026-12-05 reservations then
 * granted no slot past their TTL, and decided per call); `oursRedisReserveFast` keeps the
 * refill above what one address sends there (up to about 3,000 a second), and
 * `oursRedisReserveBurst` keeps it below (250 a second): every address spends its burst.
 */
const redisLimits = (reservationBatch: number, refillRate = 1000) => ({
  useEnv: false,
  store: 'redis' as const,
  redis: { url: process.env.BENCH_REDIS_URL, reservationBatch },
  tracker: 'ip' as const,
  global: { capacity: HUGE, refillRate },
  type: { capacity: HUGE, refillRate },
});

export type VariantId = keyof typeof VARIANTS;

/** The root module of a variant's server. */
export function appModule(variant: VariantId): DynamicModule {
  const gateways: Record<VariantId, Type> = {
    unguarded: EchoGateway,
    noop: NoopGuardedEchoGateway,
    ours: RateLimitedEchoGateway,
    throttler: ThrottledEchoGateway,
    throttler64: ThrottledEchoGateway,
    oursRedis: RateLimitedEchoGateway,
    oursRedisReserve: RateLimitedEchoGateway,
    oursRedisReserveTtl: RateLimitedEchoGateway,
    oursRedisReserveFast: RateLimitedEchoGateway,
    oursRedisReserveBurst: RateLimitedEchoGateway,
    oursRedisReserveTtlStock: RateLimitedEchoGateway,
    unguardedNoPretenure: EchoGateway,
    oursRedisReserveTtlStockNoPretenure: RateLimitedEchoGateway,
  };
  const imports: Record<VariantId, DynamicModule[]> = {
    unguarded: [],
    noop: [],
    ours: [
      WsRateLimitModule.forRoot({
        useEnv: false,
        global: { capacity: HUGE, refillRate: HUGE },
        type: { capacity: HUGE, refillRate: HUGE },
      }),
    ],
    // The docs' figures are `ttl: 60000, limit: 10`; the limit is raised so nothing is refused.
    throttler: [ThrottlerModule.forRoot({ throttlers: [{ ttl: 60_000, limit: HUGE }] })],
    throttler64: [ThrottlerModule.forRoot({ throttlers: [{ ttl: 60_000, limit: HUGE }] })],
    oursRedis: [WsRateLimitModule.forRoot(redisLimits(0))],
    oursRedisReserve: [WsRateLimitModule.forRoot(redisLimits(64))],
    oursRedisReserveTtl: [WsRateLimitModule.forRoot(redisLimits(1000))],
    oursRedisReserveFast: [WsRateLimitModule.forRoot(redisLimits(4000, 4000))],
    oursRedisReserveBurst: [WsRateLimitModule.forRoot(redisLimits(250, 250))],
    oursRedisReserveTtlStock: [WsRateLimitModule.forRoot(redisLimits(1000))],
    unguardedNoPretenure: [],
    oursRedisReserveTtlStockNoPretenure: [WsRateLimitModule.forRoot(redisLimits(1000))],
  };
  return { module: BenchAppModule, imports: imports[variant], providers: [gateways[variant]] };
}

@Module({})
class BenchAppModule {}
