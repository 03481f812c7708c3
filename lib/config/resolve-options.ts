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
import { ENV_VARIABLES, type EnvKind, type EnvVariable } from './env-variables.js';

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
  const values = new Map<string, unknown>();
  const labels = new Map<string, string>();
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
  const value = <T>(path: string): T => {
    if (path === 'expensive') {
      return {
        max: values.get('expensive.max'),
        windowMs: values.get('expensive.windowMs'),
        algorithm: values.get('expensive.algorithm'),
      } as T;
    }
    return values.get(path) as T;
  };
  const label = (path: string): string => labels.get(path)!;

  const global = { capacity: value<number>('global.capacity'), refillRate: value<number>('global.refillRate') };
  const type = { capacity: value<number>('type.capacity'), refillRate: value<number>('type.refillRate') };
  const connection = {
    capacity: value<number>('connection.capacity'),
    refillRate: value<number>('connection.refillRate'),
  };
  const types = value<Record<string, ResolvedTypeLimit>>('types');

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
  }

  const store = value<'memory' | 'redis' | RateLimitStore>('store');
  const redis: ResolvedRedisOptions = {
    url: value<string | undefined>('redis.url'),
    sentinels: value<ResolvedRedisOptions['sentinels']>('redis.sentinels'),
    sentinelName: value<string | undefined>('redis.sentinelName'),
    password: value<string | undefined>('redis.password'),
    clusterNodes: value<ResolvedRedisOptions['clusterNodes']>('redis.clusterNodes'),
    client: options.redis?.client,
    commandTimeoutMs: value<number>('redis.commandTimeoutMs'),
    clock: value<'redis' | 'app'>('redis.clock'),
    leaseTtlMs: value<number>('redis.leaseTtlMs'),
    blockCache: value<number>('redis.blockCache'),
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
  const base = { global, type, types, expensive: value<ResolvedPlan['expensive']>('expensive') };
  const plans: Record<string, ResolvedPlan> = Object.create(null);
  for (const [name, overrides] of Object.entries(value<Record<string, PlanLimitsOptions>>('plans'))) {
    plans[name] = resolvePlan(name, overrides, base, label('plans'));
  }

  return {
    store,
    redis,
    tracker: value<TrackerOption>('tracker'),
    global,
    type,
    types,
    expensive: base.expensive,
    connection,
    maxConnectionsPerIp: value<number>('maxConnectionsPerIp'),
    violations: {
      max: value<number>('violations.max'),
      windowMs: value<number>('violations.windowMs'),
      closeCode: value<number>('violations.closeCode'),
      closeReason: truncateCloseReason(value<string>('violations.closeReason')),
    },
    connectionRefusal: value<'http' | 'close'>('connectionRefusal'),
    ipv6Prefix: value<number>('ipv6Prefix'),
    handshakeTimeoutMs: value<number>('handshakeTimeoutMs'),
    maxPendingHandshakesPerIp: value<number>('maxPendingHandshakesPerIp'),
    pingIntervalMs: value<number>('pingIntervalMs'),
    pongTimeoutMs: value<number>('pongTimeoutMs'),
    perMessageDeflate: value<boolean>('perMessageDeflate'),
    maxPayload: value<number>('maxPayload'),
    trustProxy: value<ResolvedTrustProxy | undefined>('trustProxy') ?? { kind: 'none' },
    forwardedHeader: value<'x-forwarded-for' | 'forwarded'>('forwardedHeader'),
    failMode: value<'open' | 'closed'>('failMode'),
    frameBuilder: options.frameBuilder,
    keyPrefix: value<string>('keyPrefix'),
    maxKeys: value<number>('maxKeys'),
    maxBufferedBytes: value<number>('maxBufferedBytes'),
    plans,
    planResolver: options.planResolver,
    shadow: value<boolean>('shadow'),
    degradeCooldownMs: value<number>('degradeCooldownMs'),
    allowList: value<ResolvedAccessList | undefined>('allowList') ?? EMPTY_LIST,
    denyList: value<ResolvedAccessList | undefined>('denyList') ?? EMPTY_LIST,
    metrics: value<boolean>('metrics'),
    metricsPrefix: value<string>('metricsPrefix'),
    metricsRegistry: options.metricsRegistry,
  };
}

const EMPTY_LIST: ResolvedAccessList = Object.freeze({
  addresses: undefined,
  trackers: new Set<string>(),
  entries: [],
});

const PLAN_FIELDS = new Set(['global', 'type', 'types', 'expensive']);

/**
 * A plan's limits: the module's, with the plan's overrides, validated as module options
 * are (an error names the plan).
 */
function resolvePlan(name: string, overrides: PlanLimitsOptions, base: ResolvedPlan, where: string): ResolvedPlan {
  const at = `${where} (plan "${name}")`;
  if (name === '') throw new WsRateLimitConfigError(`${where}: a plan needs a non-empty name`);
  if (overrides === null || typeof overrides !== 'object' || Array.isArray(overrides)) {
    fail(at, 'an object like {"global":{"capacity":500,"refillRate":200}}', overrides);
  }
  for (const field of Object.keys(overrides)) {
    if (!PLAN_FIELDS.has(field)) fail(at, 'made of global, type, types and expensive', `field "${field}"`);
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
function checkRedisChoice(redis: ResolvedRedisOptions, label: (path: string) => string): void {
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
      if (!NUMBER.test(text)) fail(where, expectation(variable.kind), text);
      return checkNumber(variable.kind, Number(text), where, text);
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
      if (typeof value !== 'number') fail(where, expectation(variable.kind), value);
      return checkNumber(variable.kind, value, where, value);
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
    fail(where, 'an object of plans by name', Array.isArray(value) ? 'an array' : value);
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

function expectation(kind: EnvKind): string {
  switch (kind) {
    case 'positive-number':
      return 'a number greater than 0';
    case 'positive-integer':
      return 'a whole number greater than 0';
    case 'non-negative-integer':
      return 'a whole number, 0 or more';
    case 'close-code':
      return 'a close code in 1000-1003, 1007-1014 or 3000-4999';
    case 'ipv6-prefix':
      return 'a prefix length from 32 to 128';
    default:
      return kind;
  }
}

function checkNumber(kind: EnvKind, value: number, where: string, shown: unknown): number {
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
  if (!ok) fail(where, expectation(kind), shown);
  return value;
}

const TYPE_FIELDS = new Set(['capacity', 'refillRate', 'expensive', 'cost', 'essential']);

function checkTypes(value: unknown, where: string): Record<string, ResolvedTypeLimit> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    fail(where, 'an object of per-type figures', Array.isArray(value) ? 'an array' : value);
  }
  const result: Record<string, ResolvedTypeLimit> = Object.create(null);
  for (const [name, figures] of Object.entries(value as Record<string, unknown>)) {
    const at = `${where} (type "${name}")`;
    if (name === '') fail(where, 'keyed by non-empty type names', '""');
    if (figures === null || typeof figures !== 'object' || Array.isArray(figures)) {
      fail(at, 'an object like {"capacity":30,"refillRate":15}', figures);
    }
    const limit = figures as TypeLimitOptions & Record<string, unknown>;
    for (const field of Object.keys(limit)) {
      if (!TYPE_FIELDS.has(field)) fail(at, 'made of capacity, refillRate, expensive and cost', `field "${field}"`);
    }
    for (const field of ['capacity', 'refillRate', 'cost'] as const) {
      const figure = limit[field];
      if (figure !== undefined && (typeof figure !== 'number' || !(Number.isFinite(figure) && figure > 0))) {
        fail(`${at} ${field}`, 'a number greater than 0', figure);
      }
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
  for (const raw of entries as unknown[]) {
    if (typeof raw !== 'string') fail(where, 'addresses or CIDRs', raw);
    const entry = raw.trim();
    if (entry === '') continue;
    addTrusted(list, entry, where);
    kept.push(entry);
  }
  if (kept.length === 0)
    fail(where, 'a hop count or addresses/CIDRs (an empty list trusts nobody: leave it unset)', value);
  return { kind: 'list', list, entries: kept };
}

/** Named ranges, as Express's `trust proxy` accepts them. */
const NAMED_RANGES: Record<string, readonly string[]> = {
  loopback: ['127.0.0.1/8', '::1/128'],
  linklocal: ['169.254.0.0/16', 'fe80::/10'],
  uniquelocal: ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7'],
};

function addTrusted(list: BlockList, entry: string, where: string): void {
  const named = NAMED_RANGES[entry];
  if (named) {
    for (const range of named) addTrusted(list, range, where);
    return;
  }
  const slash = entry.indexOf('/');
  const address = slash < 0 ? entry : entry.slice(0, slash);
  const family = isIP(address);
  if (family === 0) fail(where, 'addresses or CIDRs (or loopback, linklocal, uniquelocal)', entry);
  const type = family === 4 ? 'ipv4' : 'ipv6';
  if (slash < 0) {
    list.addAddress(address, type);
    return;
  }
  const bits = entry.slice(slash + 1);
  const prefix = Number(bits);
  if (!/^\d+$/.test(bits) || prefix > (family === 4 ? 32 : 128)) fail(where, 'a valid CIDR', entry);
  list.addSubnet(address, prefix, type);
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
