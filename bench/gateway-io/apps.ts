import { Module, type DynamicModule, type Type } from '@nestjs/common';
import { WsRateLimitModule } from 'nestjs-ws-rate-limit';
import { EchoGateway, HUGE, NoopGuardedEchoGateway, RateLimitedEchoGateway } from '../gateway/apps.js';
import { metricsOn } from '../support/prom.js';

/**
 * The socket.io variants of the echo gateway benchmark: the `ws` part's gateways (they name
 * no driver), served by NestJS's socket.io driver instead of `WsAdapter`.
 */
export const IO_VARIANTS = {
  unguarded: {
    label: 'socket.io: unguarded echo gateway (stock IoAdapter)',
    adapter: 'stock',
  },
  noop: {
    label: 'socket.io: control, a guard that returns true (stock IoAdapter)',
    adapter: 'stock',
  },
  ours: {
    label: `socket.io: WsRateLimitIoAdapter + @WsRateLimit(), memory store, tracker connection, metrics ${metricsOn ? 'on' : 'off'}`,
    adapter: 'ours',
  },
  oursStock: {
    label: '(for comparison) socket.io: @WsRateLimit() on the stock IoAdapter (guard only)',
    adapter: 'stock',
  },
} as const;

export type IoVariantId = keyof typeof IO_VARIANTS;

/**
 * Our module's settings in the socket.io part: the `ws` part's (message buckets nothing
 * reaches), and the handshake checks opened wide, because their defaults refuse a benchmark
 * that connects 64 clients from one address at once: the connection-rate bucket (5 burst,
 * 1/s per IP) and the cap of 10 pending handshakes per IP. The checks still run for every
 * handshake (the open-connection cap is off by default, as on `ws`).
 */
export const IO_LIMITS = {
  useEnv: false,
  global: { capacity: HUGE, refillRate: HUGE },
  type: { capacity: HUGE, refillRate: HUGE },
  connection: { capacity: HUGE, refillRate: HUGE },
  maxPendingHandshakesPerIp: 0,
};

/** The root module of a socket.io variant's server. */
export function ioAppModule(variant: IoVariantId): DynamicModule {
  const gateways: Record<IoVariantId, Type> = {
    unguarded: EchoGateway,
    noop: NoopGuardedEchoGateway,
    ours: RateLimitedEchoGateway,
    oursStock: RateLimitedEchoGateway,
  };
  const limited = variant === 'ours' || variant === 'oursStock';
  return {
    module: BenchIoAppModule,
    imports: limited ? [WsRateLimitModule.forRoot(IO_LIMITS)] : [],
    providers: [gateways[variant]],
  };
}

@Module({})
class BenchIoAppModule {}
