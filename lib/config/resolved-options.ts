import type { BlockList } from 'node:net';
import type { SkipIf } from '../decorators/throttle.decorator.js';
import type { RateLimitFrameBuilder } from '../interfaces/frame.interface.js';
import type {
  MetricsRegistry,
  PlanResolver,
  RedisModuleOptions,
  TrackerOption,
} from '../interfaces/options.interface.js';
import type { RateLimitStore } from '../storage/rate-limit-store.js';
import type { OptionPath, OptionValue } from './option-paths.js';

/** A bucket's figures, resolved. */
export interface ResolvedBucket {
  readonly capacity: number;
  readonly refillRate: number;
}

/** The figures of one message type given in options, resolved. */
export interface ResolvedTypeLimit {
  readonly capacity?: number;
  readonly refillRate?: number;
  readonly expensive?: boolean;
  readonly cost?: number;
  readonly essential?: boolean;
}

/** The limits of one plan, resolved: the module's, overridden. */
export interface ResolvedPlan {
  readonly global: ResolvedBucket;
  readonly type: ResolvedBucket;
  readonly types: Readonly<Record<string, ResolvedTypeLimit>>;
  readonly expensive: ResolvedWsRateLimitOptions['expensive'];
  /** The plan's own per-type figures, which win over `@Throttle`'s. */
  readonly overrides?: Readonly<Record<string, ResolvedTypeLimit>>;
}

/** An allow or deny list: addresses and networks, and tracker names. */
export interface ResolvedAccessList {
  /** Addresses and networks; `undefined` when the list has none. */
  readonly addresses: BlockList | undefined;
  /** Tracker names, as a `tracker` function returns them. */
  readonly trackers: ReadonlySet<string>;
  /** The entries as given. */
  readonly entries: readonly string[];
}

/** Redis settings, resolved. */
export interface ResolvedRedisOptions {
  readonly url: string | undefined;
  readonly sentinels: readonly { host: string; port: number }[] | undefined;
  readonly sentinelName: string | undefined;
  readonly password: string | undefined;
  readonly clusterNodes: readonly { host: string; port: number }[] | undefined;
  readonly client: RedisModuleOptions['client'];
  readonly commandTimeoutMs: number;
  readonly clock: 'redis' | 'app';
  readonly leaseTtlMs: number;
  /** Entries of the block cache; 0 = off. */
  readonly blockCache: number;
  readonly reservationBatch: number;
  readonly reservationTtlMs: number;
  /** Further options for the clients the store creates (code only). */
  readonly redisOptions: RedisModuleOptions['redisOptions'];
}

/** Trusted proxies: none, a hop count, or a list of addresses and networks. */
export type ResolvedTrustProxy =
  | { readonly kind: 'none' }
  | { readonly kind: 'hops'; readonly hops: number }
  | { readonly kind: 'list'; readonly list: BlockList; readonly entries: readonly string[] };

/** Every option with its final value, after code, environment and defaults. */
export interface ResolvedWsRateLimitOptions {
  readonly store: 'memory' | 'redis' | RateLimitStore;
  /** How to reach Redis when `store` is `redis`: exactly one of url, sentinel, cluster, client. */
  readonly redis: ResolvedRedisOptions;
  readonly tracker: TrackerOption;
  readonly global: ResolvedBucket;
  readonly type: ResolvedBucket;
  readonly types: Readonly<Record<string, ResolvedTypeLimit>>;
  readonly expensive: {
    readonly max: number;
    readonly windowMs: number;
    readonly algorithm: 'sliding-log' | 'sliding-counter';
  };
  readonly connection: ResolvedBucket;
  readonly maxConnectionsPerIp: number;
  readonly violations: {
    readonly max: number;
    readonly windowMs: number;
    readonly closeCode: number;
    readonly closeReason: string;
  };
  readonly connectionRefusal: 'http' | 'close';
  readonly ipv6Prefix: number;
  readonly handshakeTimeoutMs: number;
  readonly maxPendingHandshakesPerIp: number;
  readonly pingIntervalMs: number;
  readonly pongTimeoutMs: number;
  readonly perMessageDeflate: boolean;
  readonly maxPayload: number;
  readonly trustProxy: ResolvedTrustProxy;
  readonly forwardedHeader: 'x-forwarded-for' | 'forwarded';
  readonly failMode: 'open' | 'closed';
  readonly frameBuilder: RateLimitFrameBuilder | undefined;
  /** The module's `skipIf` (code only). */
  readonly skipIf?: SkipIf | undefined;
  readonly keyPrefix: string;
  readonly maxKeys: number;
  readonly maxBufferedBytes: number;
  /** Plans by name; the module's own limits are not among them. */
  readonly plans: Readonly<Record<string, ResolvedPlan>>;
  readonly planResolver: PlanResolver | undefined;
  readonly shadow: boolean;
  readonly degradeCooldownMs: number;
  /** See `WsRateLimitModuleOptions.closeGraceMs`. */
  readonly closeGraceMs: number;
  readonly allowList: ResolvedAccessList;
  readonly denyList: ResolvedAccessList;
  readonly metrics: boolean;
  readonly metricsPrefix: string;
  readonly metricsRegistry: MetricsRegistry | undefined;
}

/** Options whose resolved value differs from the type given in code. */
interface ResolvedForms {
  types: Record<string, ResolvedTypeLimit>;
  trustProxy: ResolvedTrustProxy;
  allowList: ResolvedAccessList;
  denyList: ResolvedAccessList;
  'redis.sentinels': NonNullable<ResolvedRedisOptions['sentinels']>;
  'redis.clusterNodes': NonNullable<ResolvedRedisOptions['clusterNodes']>;
}

/** The resolved value of the option at `P`. */
export type ResolvedValue<P extends OptionPath> = P extends keyof ResolvedForms ? ResolvedForms[P] : OptionValue<P>;

/** Reads one environment variable; `undefined` when unset. */
export type EnvReader = (name: string) => string | undefined;
