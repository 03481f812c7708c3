import { checkOptionFields } from './option-fields.js';
import type { PlanLimitsOptions, TypeLimitOptions, WsRateLimitModuleOptions } from '../interfaces/options.interface.js';
import { WsRateLimitConfigError } from '../exceptions/ws-rate-limit-config.error.js';
import { truncateCloseReason } from '../utils/close-reason.js';
import { MAX_SLIDING_LOG, messageRateProblem } from './bounds.js';
import { checkCodeValue, Described, fail, isRecord, parseEnvValue, shape } from './check-values.js';
import { ENV_VARIABLES } from './env-variables.js';
import type { OptionPath } from './option-paths.js';
import type {
  EnvReader,
  ResolvedAccessList,
  ResolvedPlan,
  ResolvedRedisOptions,
  ResolvedTypeLimit,
  ResolvedValue,
  ResolvedWsRateLimitOptions,
} from './resolved-options.js';

export type {
  EnvReader,
  ResolvedAccessList,
  ResolvedBucket,
  ResolvedPlan,
  ResolvedRedisOptions,
  ResolvedTrustProxy,
  ResolvedTypeLimit,
  ResolvedValue,
  ResolvedWsRateLimitOptions,
} from './resolved-options.js';

/**
 * The name of the module's own limits among the plans (`DEFAULT_PLAN`): what a connection
 * without a plan gets, so no plan of `plans` may take it.
 */
export const DEFAULT_PLAN_NAME = 'default';

/**
 * Resolves module options: a field given in code wins, then its `WS_RATE_LIMIT_*`
 * variable, then its default. Every value is validated; the first invalid one throws a
 * `WsRateLimitConfigError` naming the variable or option.
 */
export function resolveOptions(
  options: WsRateLimitModuleOptions = {},
  readEnv: EnvReader = (name) => process.env[name],
): ResolvedWsRateLimitOptions {
  checkOptionFields(options);
  if (options.useEnv !== undefined && typeof options.useEnv !== 'boolean') {
    fail('option useEnv', 'true or false', options.useEnv);
  }
  const useEnv = options.useEnv ?? true;
  const values = new Map<OptionPath, unknown>();
  const labels = new Map<OptionPath, string>();
  for (const variable of ENV_VARIABLES) {
    const fromCode = getPath(options, variable.option);
    if (fromCode !== undefined && !(variable.kind === 'access-list' && fromCode === '')) {
      labels.set(variable.option, `option ${variable.option}`);
      values.set(variable.option, checkCodeValue(variable, fromCode));
      continue;
    }
    const text = useEnv ? readEnv(variable.name) : undefined;
    if (text !== undefined && text.trim() !== '') {
      labels.set(variable.option, variable.name);
      values.set(variable.option, parseEnvValue(variable, text));
      continue;
    }
    labels.set(variable.option, `option ${variable.option} (default)`);
    values.set(variable.option, variable.default === 'none' ? undefined : parseEnvValue(variable, variable.default));
  }
  /** An option that has a value (given, or by default). */
  const value = <P extends OptionPath>(path: P): ResolvedValue<P> => {
    const found = values.get(path);
    if (found === undefined) throw new Error(`nestjs-ws-rate-limit: option ${path} has no value and no default`);
    return found as ResolvedValue<P>;
  };
  /** An option that may be left unset (its default is `none`). */
  const optional = <P extends OptionPath>(path: P): ResolvedValue<P> | undefined =>
    values.get(path) as ResolvedValue<P> | undefined;
  const label = (path: OptionPath): string => labels.get(path)!;

  const global = { capacity: value('global.capacity'), refillRate: value('global.refillRate') };
  const type = { capacity: value('type.capacity'), refillRate: value('type.refillRate') };
  const connection = { capacity: value('connection.capacity'), refillRate: value('connection.refillRate') };
  const types = value('types');
  const expensive = {
    max: value('expensive.max'),
    windowMs: value('expensive.windowMs'),
    algorithm: value('expensive.algorithm'),
  };
  if (expensive.algorithm === 'sliding-log' && expensive.max > MAX_SLIDING_LOG) {
    throw new WsRateLimitConfigError(
      `${label('expensive.max')} must be at most ${MAX_SLIDING_LOG} with the sliding-log algorithm ` +
        `(${label('expensive.algorithm')}; one timestamp is kept per operation), got ${expensive.max}: ` +
        'use sliding-counter for more',
    );
  }

  // One message costs at least one token, so a bucket must hold one.
  requireCapacity(global.capacity, 1, label('global.capacity'), 'the cost of one message (1)');
  requireCapacity(type.capacity, 1, label('type.capacity'), 'the cost of one message (1)');
  requireCapacity(connection.capacity, 1, label('connection.capacity'), 'one connection');
  for (const [name, limit] of Object.entries(types)) {
    const where = `${label('types')} (type "${name}")`;
    const capacity = limit.capacity ?? type.capacity;
    const cost = limit.cost ?? 1;
    requireCapacity(capacity, cost, where, `its cost (${cost})`);
    if (cost > global.capacity) {
      throw new WsRateLimitConfigError(
        `${where}: cost ${cost} exceeds ${label('global.capacity')} = ${global.capacity}; such a message could never pass`,
      );
    }
    const typeRate = messageRateProblem(limit.refillRate ?? type.refillRate, cost);
    if (typeRate !== undefined) throw new WsRateLimitConfigError(`${where}: ${typeRate}`);
    const globalRate = messageRateProblem(global.refillRate, cost);
    if (globalRate !== undefined) {
      throw new WsRateLimitConfigError(`${where} with ${label('global.refillRate')}: ${globalRate}`);
    }
  }

  const store = value('store');
  const redis: ResolvedRedisOptions = {
    url: optional('redis.url'),
    sentinels: optional('redis.sentinels'),
    sentinelName: optional('redis.sentinelName'),
    password: optional('redis.password'),
    clusterNodes: optional('redis.clusterNodes'),
    client: options.redis?.client,
    commandTimeoutMs: value('redis.commandTimeoutMs'),
    clock: value('redis.clock'),
    leaseTtlMs: value('redis.leaseTtlMs'),
    blockCache: value('redis.blockCache'),
    reservationBatch: value('redis.reservationBatch'),
    reservationTtlMs: value('redis.reservationTtlMs'),
    redisOptions: options.redis?.redisOptions,
  };
  if (store === 'redis') {
    checkRedisChoice(redis, label);
    // Braces would pick the Cluster slot of every key (see the Redis store's own check).
    if (/[{}]/.test(value('keyPrefix'))) {
      throw new WsRateLimitConfigError(
        `${label('keyPrefix')} must not contain { or } with the Redis store (keys carry the tracker's hash tag)`,
      );
    }
  }
  for (const name of ['frameBuilder', 'planResolver', 'skipIf'] as const) {
    if (options[name] !== undefined && typeof options[name] !== 'function') {
      throw new WsRateLimitConfigError(`option ${name} must be a function`);
    }
  }
  if (
    options.metricsRegistry !== undefined &&
    typeof (options.metricsRegistry as { registerMetric?: unknown })?.registerMetric !== 'function'
  ) {
    throw new WsRateLimitConfigError('option metricsRegistry must be a prom-client Registry');
  }
  const base = { global, type, types, expensive };
  const plans: Record<string, ResolvedPlan> = Object.create(null);
  for (const [name, overrides] of Object.entries(value('plans'))) {
    plans[name] = resolvePlan(name, overrides, base, label('plans'));
  }

  return {
    store,
    redis,
    tracker: value('tracker'),
    global,
    type,
    types,
    expensive: base.expensive,
    connection,
    maxConnectionsPerIp: value('maxConnectionsPerIp'),
    violations: {
      max: value('violations.max'),
      windowMs: value('violations.windowMs'),
      closeCode: value('violations.closeCode'),
      closeReason: truncateCloseReason(value('violations.closeReason')),
    },
    connectionRefusal: value('connectionRefusal'),
    ipv6Prefix: value('ipv6Prefix'),
    handshakeTimeoutMs: value('handshakeTimeoutMs'),
    maxPendingHandshakesPerIp: value('maxPendingHandshakesPerIp'),
    pingIntervalMs: value('pingIntervalMs'),
    pongTimeoutMs: value('pongTimeoutMs'),
    perMessageDeflate: value('perMessageDeflate'),
    maxPayload: value('maxPayload'),
    trustProxy: optional('trustProxy') ?? { kind: 'none' },
    forwardedHeader: value('forwardedHeader'),
    failMode: value('failMode'),
    frameBuilder: options.frameBuilder,
    skipIf: options.skipIf,
    keyPrefix: value('keyPrefix'),
    maxKeys: value('maxKeys'),
    maxBufferedBytes: value('maxBufferedBytes'),
    plans,
    planResolver: options.planResolver,
    shadow: value('shadow'),
    degradeCooldownMs: value('degradeCooldownMs'),
    closeGraceMs: value('closeGraceMs'),
    allowList: optional('allowList') ?? EMPTY_LIST,
    denyList: optional('denyList') ?? EMPTY_LIST,
    metrics: value('metrics'),
    metricsPrefix: value('metricsPrefix'),
    metricsRegistry: options.metricsRegistry,
  };
}

const EMPTY_LIST: ResolvedAccessList = Object.freeze({
  addresses: undefined,
  trackers: new Set<string>(),
  entries: [],
});

/** The fields a plan may set, with the fields each holds (`types` is checked as `WS_RATE_LIMIT_TYPES`). */
const PLAN_FIELDS: Readonly<Record<string, { readonly example: string; readonly fields?: readonly string[] }>> = {
  global: { example: '{"capacity":500,"refillRate":200}', fields: ['capacity', 'refillRate'] },
  type: { example: '{"capacity":50,"refillRate":20}', fields: ['capacity', 'refillRate'] },
  types: { example: '{"chat":{"capacity":30,"refillRate":15}}' },
  expensive: { example: '{"max":20,"windowMs":60000}', fields: ['max', 'windowMs', 'algorithm'] },
};

/**
 * A plan's limits: the module's, with the plan's overrides, validated as module options
 * are (an error names the plan).
 */
function resolvePlan(name: string, overrides: PlanLimitsOptions, base: ResolvedPlan, where: string): ResolvedPlan {
  const at = `${where} (plan "${name}")`;
  if (name === '') throw new WsRateLimitConfigError(`${where}: a plan needs a non-empty name`);
  if (name === DEFAULT_PLAN_NAME) {
    throw new WsRateLimitConfigError(
      `${where}: "${DEFAULT_PLAN_NAME}" names the module's own limits (what a connection without a plan gets); give the plan another name`,
    );
  }
  if (!isRecord(overrides as unknown)) {
    fail(at, 'an object like {"global":{"capacity":500,"refillRate":200}}', shape(overrides));
  }
  for (const [field, given] of Object.entries(overrides)) {
    if (given === undefined) continue;
    const rule = Object.hasOwn(PLAN_FIELDS, field) ? PLAN_FIELDS[field] : undefined;
    if (rule === undefined) fail(at, 'made of global, type, types and expensive', new Described(`field "${field}"`));
    // A string, array or null here would otherwise be spread into nothing: the module's figures.
    if (!isRecord(given)) fail(`${at} field "${field}"`, `an object like ${rule.example}`, shape(given));
    for (const inner of rule.fields === undefined ? [] : Object.keys(given)) {
      if (!rule.fields!.includes(inner)) {
        fail(`${at} field "${field}"`, `made of ${rule.fields!.join(', ')}`, new Described(`field "${inner}"`));
      }
    }
  }
  try {
    const resolved = resolveOptions(
      {
        useEnv: false,
        global: { ...base.global, ...given(overrides.global) },
        type: { ...base.type, ...given(overrides.type) },
        types: { ...base.types, ...mergeTypes(base.types, given(overrides.types)) },
        expensive: { ...base.expensive, ...given(overrides.expensive) },
      },
      () => undefined,
    );
    return {
      global: resolved.global,
      type: resolved.type,
      types: resolved.types,
      expensive: resolved.expensive,
      // Only the fields the plan gives win over `@Throttle`; the others are the module's.
      overrides: Object.fromEntries(
        Object.entries(given(overrides.types) ?? {}).map(([type, entry]) => [
          type,
          pick(resolved.types[type]!, Object.keys(given(entry as object) ?? {})),
        ]),
      ),
    };
  } catch (error) {
    if (!(error instanceof WsRateLimitConfigError)) throw error;
    // `option global.capacity ...` from the module's rules is, in a plan, a field of the plan.
    const detail = error.message
      .replace(/^nestjs-ws-rate-limit: /, '')
      .replace(/\boption ([\w.]+)/g, (_, path: string) => `field "${path}"`);
    throw new WsRateLimitConfigError(detail.startsWith('field ') ? `${at} ${detail}` : `${at}: ${detail}`);
  }
}

/** With the Redis store, exactly one way to reach Redis, complete. */
function checkRedisChoice(redis: ResolvedRedisOptions, label: (path: OptionPath) => string): void {
  const ways = [
    redis.url !== undefined && label('redis.url'),
    redis.sentinels !== undefined && label('redis.sentinels'),
    redis.clusterNodes !== undefined && label('redis.clusterNodes'),
    redis.client !== undefined && 'option redis.client',
  ].filter((way): way is string => way !== false);
  if (ways.length === 0) {
    throw new WsRateLimitConfigError(
      `${label('store')} is "redis" but no Redis is configured: set WS_RATE_LIMIT_REDIS_URL ` +
        '(or WS_RATE_LIMIT_REDIS_SENTINELS, WS_RATE_LIMIT_REDIS_CLUSTER_NODES, or option redis.client)',
    );
  }
  if (ways.length > 1) {
    throw new WsRateLimitConfigError(`only one way to reach Redis may be given, got ${ways.join(' and ')}`);
  }
  if (redis.sentinels !== undefined && redis.sentinelName === undefined) {
    throw new WsRateLimitConfigError(
      `${label('redis.sentinels')} needs the master's name: set WS_RATE_LIMIT_REDIS_SENTINEL_NAME or option redis.sentinelName`,
    );
  }
  // A master's name beside a URL, Cluster nodes or a client would be dropped without a word.
  if (redis.sentinelName !== undefined && redis.sentinels === undefined) {
    throw new WsRateLimitConfigError(
      `${label('redis.sentinelName')} names a Sentinel master, but Redis is reached through ${ways[0]!}: ` +
        'give the Sentinels (WS_RATE_LIMIT_REDIS_SENTINELS or option redis.sentinels) instead, or drop the name',
    );
  }
}

function requireCapacity(capacity: number, cost: number, where: string, what: string): void {
  if (capacity < cost) {
    throw new WsRateLimitConfigError(
      `${where}: capacity ${capacity} is smaller than ${what}; such a message could never pass`,
    );
  }
}

/**
 * A plan's `types`, each merged field by field over the module's entry for that type (a
 * plan giving `{ capacity: 50 }` keeps the module's `cost`, `expensive` and the rest).
 */
function mergeTypes(
  base: Readonly<Record<string, ResolvedTypeLimit>>,
  types: Record<string, TypeLimitOptions> | undefined,
): Record<string, TypeLimitOptions> | undefined {
  if (types === undefined) return undefined;
  return Object.fromEntries(
    Object.entries(types).map(([type, entry]) => [
      type,
      // Anything but an object is left for the validation to name.
      Object.hasOwn(base, type) && isRecord(entry) ? { ...base[type], ...given(entry) } : entry,
    ]),
  );
}

/** The fields of `entry` named in `fields`. */
function pick<T extends object>(entry: T, fields: readonly string[]): T {
  return Object.fromEntries(Object.entries(entry).filter(([field]) => fields.includes(field))) as T;
}

/** A plan's overrides without the fields given as `undefined` (they keep the module's figure). */
function given<T extends object>(overrides: T | undefined): T | undefined {
  return overrides === undefined
    ? undefined
    : (Object.fromEntries(Object.entries(overrides).filter(([, value]) => value !== undefined)) as T);
}

/**
 * The option at a dotted path, or undefined. A group on the way that is given but is not an
 * object (`global: null`, `redis: 'redis://…'`) is an error naming it: it would otherwise
 * be read as not given, and the environment or the defaults would decide in silence.
 */
function getPath(source: object, path: string): unknown {
  let current: unknown = source;
  let at = '';
  for (const part of path.split('.')) {
    if (current !== source && (current === null || typeof current !== 'object' || Array.isArray(current))) {
      if (current === undefined) return undefined;
      fail(`option ${at}`, 'an object', shape(current));
    }
    current = (current as Record<string, unknown>)[part];
    at = at === '' ? part : `${at}.${part}`;
  }
  return current;
}
