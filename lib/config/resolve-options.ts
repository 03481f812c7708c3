import { BlockList, isIP } from 'node:net';
import type {
  MetricsRegistry,
  RedisModuleOptions,
  PlanLimitsOptions,
  PlanResolver,
  TrackerOption,
  TypeLimitOptions,
  WsRateLimitModuleOptions,
} from '../interfaces/options.interface.js';
import type { RateLimitFrameBuilder } from '../interfaces/frame.interface.js';
import { WsRateLimitConfigError } from '../exceptions/ws-rate-limit-config.error.js';
import { RateLimitStore } from '../storage/rate-limit-store.js';
import { isSendableCloseCode, truncateCloseReason } from '../utils/close-reason.js';
import { addressRange, familyCoveredBy, type AddressRange } from './address-ranges.js';
import { formatBound, MAX_CAPACITY, MAX_SLIDING_LOG, messageRateProblem } from './bounds.js';
import { ENV_VARIABLES, type EnvVariable } from './env-variables.js';
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
  readonly keyPrefix: string;
  readonly maxKeys: number;
  readonly maxBufferedBytes: number;
  /** Plans by name; the module's own limits are not among them. */
  readonly plans: Readonly<Record<string, ResolvedPlan>>;
  readonly planResolver: PlanResolver | undefined;
  readonly shadow: boolean;
  readonly degradeCooldownMs: number;
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

const NUMBER = /^\s*\+?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/;

/**
 * Resolves module options: a field given in code wins, then its `WS_RATE_LIMIT_*`
 * variable, then its default. Every value is validated; the first invalid one throws a
 * `WsRateLimitConfigError` naming the variable or option.
 */
export function resolveOptions(
  options: WsRateLimitModuleOptions = {},
  readEnv: EnvReader = (name) => process.env[name],
): ResolvedWsRateLimitOptions {
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
    redisOptions: options.redis?.redisOptions,
  };
  if (store === 'redis') checkRedisChoice(redis, label);
  for (const name of ['frameBuilder', 'planResolver'] as const) {
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
    keyPrefix: value('keyPrefix'),
    maxKeys: value('maxKeys'),
    maxBufferedBytes: value('maxBufferedBytes'),
    plans,
    planResolver: options.planResolver,
    shadow: value('shadow'),
    degradeCooldownMs: value('degradeCooldownMs'),
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

/** A plain object: not null, an array, a string or a number. */
function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** A description shown as is in an error, where a string value would be quoted. */
class Described {
  constructor(private readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

/** How a value that should have been an object is shown in an error. */
function shape(value: unknown): unknown {
  return Array.isArray(value) ? new Described('an array') : value;
}

/**
 * A plan's limits: the module's, with the plan's overrides, validated as module options
 * are (an error names the plan).
 */
function resolvePlan(name: string, overrides: PlanLimitsOptions, base: ResolvedPlan, where: string): ResolvedPlan {
  const at = `${where} (plan "${name}")`;
  if (name === '') throw new WsRateLimitConfigError(`${where}: a plan needs a non-empty name`);
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
        global: { ...base.global, ...overrides.global },
        type: { ...base.type, ...overrides.type },
        types: { ...base.types, ...overrides.types },
        expensive: { ...base.expensive, ...overrides.expensive },
      },
      () => undefined,
    );
    return {
      global: resolved.global,
      type: resolved.type,
      types: resolved.types,
      expensive: resolved.expensive,
      overrides: Object.fromEntries(Object.keys(overrides.types ?? {}).map((type) => [type, resolved.types[type]!])),
    };
  } catch (error) {
    if (!(error instanceof WsRateLimitConfigError)) throw error;
    throw new WsRateLimitConfigError(`${at}: ${error.message.replace(/^nestjs-ws-rate-limit: /, '')}`);
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
}

function requireCapacity(capacity: number, cost: number, where: string, what: string): void {
  if (capacity < cost) {
    throw new WsRateLimitConfigError(
      `${where}: capacity ${capacity} is smaller than ${what}; such a message could never pass`,
    );
  }
}

function getPath(source: object, path: string): unknown {
  let current: unknown = source;
  for (const part of path.split('.')) {
    if (current === null || typeof current !== 'object') return undefined;
    current = (current as Record<string, unknown>)[part];
  }
  return current;
}

function fail(where: string, expected: string, got: unknown): never {
  const shown = typeof got === 'string' ? JSON.stringify(got) : String(got);
  throw new WsRateLimitConfigError(`${where} must be ${expected}, got ${shown}`);
}

/** Parses a variable's text (or a default written as text). */
function parseEnvValue(variable: EnvVariable, text: string): unknown {
  const where = variable.name;
  switch (variable.kind) {
    case 'positive-number':
    case 'positive-integer':
    case 'non-negative-integer':
    case 'close-code':
    case 'ipv6-prefix': {
      if (!NUMBER.test(text)) fail(where, expectation(variable), text);
      return checkNumber(variable, Number(text), where, text);
    }
    case 'boolean': {
      const choice = text.trim().toLowerCase();
      if (choice !== 'true' && choice !== 'false') fail(where, 'true or false', text);
      return choice === 'true';
    }
    case 'enum': {
      const choice = text.trim();
      if (!variable.values!.includes(choice)) fail(where, `one of ${variable.values!.join(', ')}`, text);
      return choice;
    }
    case 'string':
      return text;
    case 'json': {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (error) {
        throw new WsRateLimitConfigError(`${where} is not valid JSON: ${(error as Error).message}`);
      }
      return checkTypes(parsed, where);
    }
    case 'trust-proxy': {
      const trimmed = text.trim();
      if (/^\d+$/.test(trimmed)) return checkTrustProxy(Number(trimmed), where);
      return checkTrustProxy(trimmed.split(','), where);
    }
    case 'redis-url':
      return checkRedisUrl(text.trim(), where);
    case 'plans': {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (error) {
        throw new WsRateLimitConfigError(`${where} is not valid JSON: ${(error as Error).message}`);
      }
      return checkPlans(parsed, where);
    }
    case 'access-list':
      return checkAccessList(text, where);
    case 'host-list':
      return checkHostList(text.split(','), where);
  }
}

/** Checks a value given in code. */
function checkCodeValue(variable: EnvVariable, value: unknown): unknown {
  const where = `option ${variable.option}`;
  switch (variable.kind) {
    case 'positive-number':
    case 'positive-integer':
    case 'non-negative-integer':
    case 'close-code':
    case 'ipv6-prefix':
      if (typeof value !== 'number') fail(where, expectation(variable), value);
      return checkNumber(variable, value, where, value);
    case 'boolean':
      if (typeof value !== 'boolean') fail(where, 'true or false', value);
      return value;
    case 'enum':
      if (variable.option === 'store' && value instanceof RateLimitStore) return value;
      if (variable.option === 'tracker' && typeof value === 'function') return value;
      if (typeof value !== 'string' || !variable.values!.includes(value)) {
        const extra =
          variable.option === 'store' ? ' or a RateLimitStore' : variable.option === 'tracker' ? ' or a function' : '';
        fail(where, `one of ${variable.values!.join(', ')}${extra}`, value);
      }
      return value;
    case 'string':
      if (typeof value !== 'string') fail(where, 'a string', value);
      return value;
    case 'json':
      return checkTypes(value, where);
    case 'trust-proxy':
      return checkTrustProxy(value, where);
    case 'redis-url':
      if (typeof value !== 'string') fail(where, 'a redis:// or rediss:// URL', value);
      return checkRedisUrl(value, where);
    case 'plans':
      return checkPlans(value, where);
    case 'access-list':
      return checkAccessList(value, where);
    case 'host-list':
      return checkHostList(value, where);
  }
}

/** `host:port` entries (or `{ host, port }` objects in code), at least one. */
function checkHostList(value: unknown, where: string): { host: string; port: number }[] {
  if (!Array.isArray(value)) fail(where, 'host:port entries', value);
  const hosts: { host: string; port: number }[] = [];
  for (const entry of value as unknown[]) {
    let host: unknown;
    let port: unknown;
    if (typeof entry === 'string') {
      const text = entry.trim();
      if (text === '') continue;
      const colon = text.lastIndexOf(':');
      host = colon > 0 ? text.slice(0, colon).replace(/^\[(.*)\]$/, '$1') : '';
      port = colon > 0 && /^\d+$/.test(text.slice(colon + 1)) ? Number(text.slice(colon + 1)) : NaN;
    } else if (entry !== null && typeof entry === 'object') {
      ({ host, port } = entry as { host?: unknown; port?: unknown });
    }
    if (
      typeof host !== 'string' ||
      host === '' ||
      typeof port !== 'number' ||
      !Number.isInteger(port) ||
      port < 1 ||
      port > 65535
    ) {
      fail(where, 'host:port entries', entry);
    }
    hosts.push({ host, port });
  }
  if (hosts.length === 0) fail(where, 'at least one host:port', value);
  return hosts;
}

function checkPlans(value: unknown, where: string): Record<string, PlanLimitsOptions> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    fail(where, 'an object of plans by name', shape(value));
  }
  return value as Record<string, PlanLimitsOptions>;
}

/** Addresses and CIDRs go to a BlockList; any other entry is a tracker name. */
function checkAccessList(value: unknown, where: string): ResolvedAccessList {
  const entries = typeof value === 'string' ? value.split(',') : value;
  if (!Array.isArray(entries)) fail(where, 'addresses, CIDRs or tracker names', value);
  let addresses: BlockList | undefined;
  const trackers = new Set<string>();
  const kept: string[] = [];
  for (const raw of entries as unknown[]) {
    if (typeof raw !== 'string') fail(where, 'addresses, CIDRs or tracker names', raw);
    const entry = raw.trim();
    if (entry === '') continue;
    kept.push(entry);
    const slash = entry.indexOf('/');
    if (isIP(entry) !== 0 || (slash > 0 && isIP(entry.slice(0, slash)) !== 0)) {
      addresses ??= new BlockList();
      addTrusted(addresses, entry, where);
    } else {
      trackers.add(entry);
    }
  }
  return { addresses, trackers, entries: kept };
}

/** The figures a number variable accepts, as a sentence's end. */
type NumberRule = Pick<EnvVariable, 'kind' | 'min' | 'max'>;

function expectation({ kind, min, max }: NumberRule): string {
  switch (kind) {
    case 'positive-number':
      if (max === undefined) return 'a number greater than 0';
      return min === undefined
        ? `a number greater than 0 and at most ${formatBound(max)}`
        : `a number from ${formatBound(min)} to ${formatBound(max)}`;
    case 'positive-integer':
      return max === undefined ? 'a whole number greater than 0' : `a whole number from 1 to ${formatBound(max)}`;
    case 'non-negative-integer':
      return max === undefined ? 'a whole number, 0 or more' : `a whole number from 0 to ${formatBound(max)}`;
    case 'close-code':
      return 'a close code in 1000-1003, 1007-1014 or 3000-4999';
    case 'ipv6-prefix':
      return 'a prefix length from 32 to 128';
    default:
      return kind;
  }
}

function checkNumber(rule: NumberRule, value: number, where: string, shown: unknown): number {
  const { kind, min, max } = rule;
  const ok =
    kind === 'positive-number'
      ? Number.isFinite(value) && value > 0
      : kind === 'positive-integer'
        ? Number.isSafeInteger(value) && value > 0
        : kind === 'non-negative-integer'
          ? Number.isSafeInteger(value) && value >= 0
          : kind === 'ipv6-prefix'
            ? Number.isInteger(value) && value >= 32 && value <= 128
            : isSendableCloseCode(value);
  if (!ok || (min !== undefined && !(value >= min)) || (max !== undefined && !(value <= max))) {
    fail(where, expectation(rule), shown);
  }
  return value;
}

const TYPE_FIELDS = new Set(['capacity', 'refillRate', 'expensive', 'cost', 'essential']);

/** A type's figures obey the bounds of the module's `type` figures; a cost is at most a capacity. */
const TYPE_FIGURES: Record<'capacity' | 'refillRate' | 'cost', NumberRule> = {
  capacity: ENV_VARIABLES.find((variable) => variable.option === 'type.capacity')!,
  refillRate: ENV_VARIABLES.find((variable) => variable.option === 'type.refillRate')!,
  cost: { kind: 'positive-number', max: MAX_CAPACITY },
};

function checkTypes(value: unknown, where: string): Record<string, ResolvedTypeLimit> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    fail(where, 'an object of per-type figures', shape(value));
  }
  const result: Record<string, ResolvedTypeLimit> = Object.create(null);
  for (const [name, figures] of Object.entries(value as Record<string, unknown>)) {
    const at = `${where} (type "${name}")`;
    if (name === '') fail(where, 'keyed by non-empty type names', new Described('""'));
    if (figures === null || typeof figures !== 'object' || Array.isArray(figures)) {
      fail(at, 'an object like {"capacity":30,"refillRate":15}', shape(figures));
    }
    const limit = figures as TypeLimitOptions & Record<string, unknown>;
    for (const field of Object.keys(limit)) {
      if (!TYPE_FIELDS.has(field))
        fail(at, 'made of capacity, refillRate, expensive and cost', new Described(`field "${field}"`));
    }
    for (const field of ['capacity', 'refillRate', 'cost'] as const) {
      const figure = limit[field];
      if (figure === undefined) continue;
      if (typeof figure !== 'number') fail(`${at} ${field}`, expectation(TYPE_FIGURES[field]), figure);
      checkNumber(TYPE_FIGURES[field], figure, `${at} ${field}`, figure);
    }
    for (const flag of ['expensive', 'essential'] as const) {
      if (limit[flag] !== undefined && typeof limit[flag] !== 'boolean')
        fail(`${at} ${flag}`, 'true or false', limit[flag]);
    }
    result[name] = { ...limit };
  }
  return result;
}

function checkTrustProxy(value: unknown, where: string): ResolvedTrustProxy {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) fail(where, 'a hop count (0 or more) or addresses/CIDRs', value);
    return value === 0 ? { kind: 'none' } : { kind: 'hops', hops: value };
  }
  if (value === true) {
    // Trusting every hop lets any client pick its own address.
    fail(where, 'a hop count or addresses/CIDRs (true would let any client choose its address)', value);
  }
  const entries = typeof value === 'string' ? value.split(',') : value;
  if (!Array.isArray(entries)) fail(where, 'a hop count or addresses/CIDRs', value);
  const list = new BlockList();
  const kept: string[] = [];
  const ranges: AddressRange[] = [];
  for (const raw of entries as unknown[]) {
    if (typeof raw !== 'string') fail(where, 'addresses or CIDRs', raw);
    const entry = raw.trim();
    if (entry === '') continue;
    addTrusted(list, entry, where, ranges);
    kept.push(entry);
  }
  if (kept.length === 0)
    fail(where, 'a hop count or addresses/CIDRs (an empty list trusts nobody: leave it unset)', value);
  const covered = familyCoveredBy(ranges);
  if (covered !== undefined) {
    // Every client would then be a trusted proxy, free to choose its address: as `true`.
    fail(
      where,
      `the addresses of your proxies (these cover every IPv${covered} address, which would let any client choose its address, as true would)`,
      kept.join(','),
    );
  }
  return { kind: 'list', list, entries: kept };
}

/** Named ranges, as Express's `trust proxy` accepts them. */
const NAMED_RANGES: Record<string, readonly string[]> = {
  loopback: ['127.0.0.1/8', '::1/128'],
  linklocal: ['169.254.0.0/16', 'fe80::/10'],
  uniquelocal: ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7'],
};

/** Adds an address, CIDR or named range to `list` (and, when given, its ranges to `ranges`). */
function addTrusted(list: BlockList, entry: string, where: string, ranges?: AddressRange[]): void {
  const named = NAMED_RANGES[entry];
  if (named) {
    for (const range of named) addTrusted(list, range, where, ranges);
    return;
  }
  const slash = entry.indexOf('/');
  const address = slash < 0 ? entry : entry.slice(0, slash);
  const family = isIP(address);
  if (family === 0) fail(where, 'addresses or CIDRs (or loopback, linklocal, uniquelocal)', entry);
  const type = family === 4 ? 'ipv4' : 'ipv6';
  if (slash < 0) {
    list.addAddress(address, type);
    ranges?.push(addressRange(address));
    return;
  }
  const bits = entry.slice(slash + 1);
  const prefix = Number(bits);
  if (!/^\d+$/.test(bits) || prefix > (family === 4 ? 32 : 128)) fail(where, 'a valid CIDR', entry);
  list.addSubnet(address, prefix, type);
  ranges?.push(addressRange(address, prefix));
}

function checkRedisUrl(value: string, where: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    fail(where, 'a redis:// or rediss:// URL', value.replace(/\/\/[^@/]*@/, '//***@'));
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    fail(where, 'a redis:// or rediss:// URL', `${url.protocol}//...`);
  }
  return value;
}
