import { Module, type DynamicModule } from '@nestjs/common';
import { WebSocketGateway } from '@nestjs/websockets';
import { WsRateLimitModule } from 'nestjs-ws-rate-limit';
import { metricsOn } from '../support/prom.js';

/** A gateway with no handlers: connections are accepted and closed, nothing else runs. */
@WebSocketGateway()
export class EmptyGateway {}

/**
 * The adapter's per-IP guards as the benchmark sets them. The defaults would refuse a
 * benchmark's single loopback client: the connection-rate bucket (5 burst, 1/s) after five
 * connections, and the cap of 10 TCP connections per IP still sending their request
 * (`maxPendingHandshakesPerIp`) at 32 in flight. Everything else is the default: heartbeat
 * (ping every 30 s), handshake timeout (10 s, a timer per TCP connection), memory store,
 * metrics.
 */
// The largest figures the options accept: far above the handshakes the load can make.
const OPEN_DOOR = { connection: { capacity: 1e6, refillRate: 1e6 }, maxPendingHandshakesPerIp: 0 };
/** One connection per 1,000 s after the first: nearly every handshake is refused with 429. */
const SHUT_DOOR = { connection: { capacity: 1, refillRate: 0.001 }, maxPendingHandshakesPerIp: 0 };

/** The variants of the connection benchmark, by id. */
export const VARIANTS = {
  plain: {
    label: 'stock @nestjs/platform-ws WsAdapter',
    adapter: 'plain',
    expect: 'accept',
  },
  ours: {
    label: `WsRateLimitAdapter, connection bucket 10^6 (defaults otherwise, metrics ${metricsOn ? 'on' : 'off'})`,
    adapter: 'ours',
    expect: 'accept',
  },
  refusing: {
    label: 'WsRateLimitAdapter, connection bucket 1 burst, 1 per 1,000 s (429 before the upgrade)',
    adapter: 'ours',
    expect: 'refuse',
  },
} as const;

export type VariantId = keyof typeof VARIANTS;

/** The root module of a variant's server: the empty gateway, and our module for our adapter. */
export function appModule(variant: VariantId): DynamicModule {
  const imports =
    variant === 'plain'
      ? []
      : [WsRateLimitModule.forRoot({ useEnv: false, ...(variant === 'ours' ? OPEN_DOOR : SHUT_DOOR) })];
  return { module: ConnectionsAppModule, imports, providers: [EmptyGateway] };
}

/** The module settings of our variants, for the report. */
export const SETTINGS = { ours: OPEN_DOOR, refusing: SHUT_DOOR };

@Module({})
class ConnectionsAppModule {}
