import { WsRateLimitConfigError } from '../exceptions/ws-rate-limit-config.error.js';
import type {
  BucketLimitOptions,
  ExpensiveLimitOptions,
  RedisModuleOptions,
  ViolationOptions,
  WsRateLimitModuleOptions,
} from '../interfaces/options.interface.js';
import { isRecord, shape } from './check-values.js';
import { editDistance } from './unknown-variables.js';

/**
 * The fields of the module's options, checked before any value is read: a misspelled
 * field (`globl`, `global.capactiy`, `maxConnectionPerIp`) would otherwise be ignored
 * without a word and its default used, as a misspelled `@Throttle` field or variable is
 * not. Typed as records of every field so that a new option cannot be left out.
 */
type Fields<T> = { readonly [K in keyof Required<T>]: true };

const BUCKET: Fields<BucketLimitOptions> = { capacity: true, refillRate: true };
const EXPENSIVE: Fields<ExpensiveLimitOptions> = { max: true, windowMs: true, algorithm: true };
const VIOLATIONS: Fields<ViolationOptions> = { max: true, windowMs: true, closeCode: true, closeReason: true };
const REDIS: Fields<RedisModuleOptions> = {
  url: true,
  sentinels: true,
  sentinelName: true,
  password: true,
  clusterNodes: true,
  client: true,
  commandTimeoutMs: true,
  clock: true,
  leaseTtlMs: true,
  blockCache: true,
  reservationBatch: true,
  reservationTtlMs: true,
  redisOptions: true,
};
const TOP: Fields<WsRateLimitModuleOptions> = {
  store: true,
  redis: true,
  tracker: true,
  global: true,
  type: true,
  types: true,
  expensive: true,
  connection: true,
  maxConnectionsPerIp: true,
  connectionRefusal: true,
  ipv6Prefix: true,
  handshakeTimeoutMs: true,
  maxPendingHandshakesPerIp: true,
  pingIntervalMs: true,
  pongTimeoutMs: true,
  perMessageDeflate: true,
  violations: true,
  maxPayload: true,
  trustProxy: true,
  forwardedHeader: true,
  failMode: true,
  frameBuilder: true,
  skipIf: true,
  keyPrefix: true,
  maxKeys: true,
  maxBufferedBytes: true,
  plans: true,
  planResolver: true,
  shadow: true,
  degradeCooldownMs: true,
  closeGraceMs: true,
  allowList: true,
  denyList: true,
  metrics: true,
  metricsPrefix: true,
  metricsRegistry: true,
  useEnv: true,
};

/** The option groups whose fields are checked here (`types` and `plans` check their own). */
const GROUPS: Readonly<Record<string, Readonly<Record<string, true>>>> = {
  global: BUCKET,
  type: BUCKET,
  connection: BUCKET,
  expensive: EXPENSIVE,
  violations: VIOLATIONS,
  redis: REDIS,
};

/**
 * Refuses options that are not an object (a factory of `forRootAsync` that returned nothing,
 * `null`, a string...) and fields the module does not read, naming the closest known one.
 * A group given as something other than an object is left to its values' own checks.
 */
export function checkOptionFields(options: unknown): asserts options is WsRateLimitModuleOptions {
  if (!isRecord(options)) {
    const got = typeof options === 'string' ? JSON.stringify(options) : String(shape(options));
    throw new WsRateLimitConfigError(
      `the module's options must be an object (forRoot's argument, or what forRootAsync's factory returns), got ${got}`,
    );
  }
  refuseUnknown(options, TOP, 'option ');
  for (const [group, fields] of Object.entries(GROUPS)) {
    const value = options[group];
    if (isRecord(value)) refuseUnknown(value, fields, `option ${group}.`);
  }
}

function refuseUnknown(value: Record<string, unknown>, fields: Readonly<Record<string, true>>, prefix: string): void {
  for (const field of Object.keys(value)) {
    if (Object.hasOwn(fields, field)) continue;
    const closest = closestField(field, Object.keys(fields));
    const hint = closest === undefined ? '' : `: did you mean ${prefix}${closest}?`;
    throw new WsRateLimitConfigError(`${prefix}${field} is not an option of nestjs-ws-rate-limit${hint}`);
  }
}

/** The known field at the smallest edit distance, if close enough to be a typo (case aside). */
function closestField(field: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bound = Math.max(2, Math.floor(field.length / 3)) + 1;
  for (const name of known) {
    const distance = editDistance(field.toLowerCase(), name.toLowerCase(), bound);
    if (distance < bound) {
      best = name;
      bound = distance;
    }
  }
  return best;
}
