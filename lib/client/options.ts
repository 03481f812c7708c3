import { Budget } from './budget.js';
import type {
  OverflowPolicy,
  RateLimitedClientOptions,
  UndeliveredPolicy,
  WebSocketConstructorLike,
  WebSocketFactory,
} from './types.js';

/** The options of a client, validated, with their defaults. */
export interface ResolvedOptions {
  createSocket: WebSocketFactory;
  protocols: string | string[] | undefined;
  autoConnect: boolean;
  maxQueue: number;
  overflow: OverflowPolicy;
  messageIds: boolean;
  minPaceMs: number;
  maxUnconfirmed: number;
  isAck: RateLimitedClientOptions['isAck'];
  undelivered: UndeliveredPolicy;
  /** The time-based confirmation delay: the given `confirmMs`, else 250 ms. */
  confirmMs: number;
  /**
   * With `isAck` and no `confirmMs` given, the delay of the events an ack has answered (a
   * safety net for a lost ack, 10 s); undefined otherwise (`confirmMs` applies to every event).
   */
  ackedConfirmMs: number | undefined;
  /** Whether the time-based delay grows when frames come later than it: unless `isAck` is set with a `confirmMs`. */
  adaptiveConfirmMs: boolean;
  reconnect: boolean;
  backoffBaseMs: number;
  backoffCapMs: number;
  maxReconnectAttempts: number;
  policyDelayMs: number;
  policyCloseCode: number;
  stableMs: number;
  openTimeoutMs: number;
  random: () => number;
}

function fail(name: string, expected: string, value: unknown): never {
  throw new RangeError(`RateLimitedClient: options.${name} must be ${expected}, got ${shown(value)}`);
}

/** A value as an error shows it: a text in quotes, an object by its JSON where it has one, else its kind. */
function shown(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value !== 'object' || value === null) return typeof value === 'function' ? 'a function' : String(value);
  try {
    return JSON.stringify(value) ?? typeof value;
  } catch {
    return typeof value;
  }
}

function numberOption(
  options: RateLimitedClientOptions,
  name: keyof RateLimitedClientOptions,
  fallback: number,
  min: number,
  kind: 'number' | 'finite' | 'integer' = 'number',
): number {
  const value = options[name] ?? fallback;
  if (
    typeof value !== 'number' ||
    Number.isNaN(value) ||
    value < min ||
    (kind === 'finite' && !Number.isFinite(value)) ||
    (kind === 'integer' && Number.isFinite(value) && !Number.isInteger(value))
  ) {
    const what = { number: 'a number', finite: 'a finite number', integer: 'an integer' }[kind];
    fail(name, `${what} >= ${min}`, value);
  }
  return value;
}

/**
 * `policyCloseCode`: a close code a server may send in a close frame (1000-1003, 1007-1014,
 * 3000-4999; 1006 would put every dropped connection on the policy delay), 1008 when not given.
 */
function closeCodeOption(value: unknown): number {
  if (value === undefined) return 1008;
  if (
    typeof value !== 'number' ||
    !Number.isInteger(value) ||
    !((value >= 1000 && value <= 1003) || (value >= 1007 && value <= 1014) || (value >= 3000 && value <= 4999))
  ) {
    fail('policyCloseCode', 'a close code a server sends (1000-1003, 1007-1014 or 3000-4999)', value);
  }
  return value;
}

/** A boolean option, `true` when not given (a text such as 'false' is refused, not taken as true). */
function booleanOption(options: RateLimitedClientOptions, name: 'autoConnect' | 'messageIds' | 'reconnect'): boolean {
  const value = options[name] ?? true;
  if (typeof value !== 'boolean') fail(name, 'a boolean', value);
  return value;
}

function socketFactory(options: RateLimitedClientOptions): WebSocketFactory {
  if (options.createSocket !== undefined) {
    if (typeof options.createSocket !== 'function') {
      fail('createSocket', 'a function', options.createSocket);
    }
    return options.createSocket;
  }
  const Ctor = options.WebSocket ?? (globalThis as unknown as { WebSocket?: WebSocketConstructorLike }).WebSocket;
  if (typeof Ctor !== 'function') {
    throw new TypeError(
      'RateLimitedClient: no WebSocket implementation found; pass options.WebSocket ' +
        "(for example `WebSocket` from the 'ws' package) or options.createSocket",
    );
  }
  return (url, protocols) => (protocols === undefined ? new Ctor(url) : new Ctor(url, protocols));
}

export function resolveOptions(options: RateLimitedClientOptions): ResolvedOptions {
  const overflow = options.overflow ?? 'drop-oldest';
  if (!['drop-oldest', 'drop-newest', 'reject'].includes(overflow)) {
    fail('overflow', "'drop-oldest', 'drop-newest' or 'reject'", overflow);
  }
  if (options.isAck !== undefined && typeof options.isAck !== 'function') {
    fail('isAck', 'a function', options.isAck);
  }
  const random = options.random ?? Math.random;
  if (typeof random !== 'function') fail('random', 'a function', random);
  const undelivered = options.undelivered ?? 'drop';
  if (undelivered !== 'requeue' && undelivered !== 'drop') fail('undelivered', "'requeue' or 'drop'", undelivered);
  const confirmGiven = options.confirmMs !== undefined && options.confirmMs !== null;
  return {
    createSocket: socketFactory(options),
    protocols: options.protocols,
    autoConnect: booleanOption(options, 'autoConnect'),
    maxQueue: numberOption(options, 'maxQueue', 1000, 0, 'integer'),
    overflow,
    messageIds: booleanOption(options, 'messageIds'),
    minPaceMs: numberOption(options, 'minPaceMs', 125, 1, 'finite'),
    maxUnconfirmed: numberOption(options, 'maxUnconfirmed', 1, 1, 'integer'),
    isAck: options.isAck,
    undelivered,
    confirmMs: numberOption(options, 'confirmMs', 250, 0, 'finite'),
    ackedConfirmMs: options.isAck && !confirmGiven ? 10_000 : undefined,
    adaptiveConfirmMs: !options.isAck || !confirmGiven,
    reconnect: booleanOption(options, 'reconnect'),
    backoffBaseMs: numberOption(options, 'backoffBaseMs', 1000, 0, 'finite'),
    backoffCapMs: numberOption(options, 'backoffCapMs', 30_000, 0, 'finite'),
    maxReconnectAttempts: numberOption(options, 'maxReconnectAttempts', Infinity, 0, 'integer'),
    policyDelayMs: numberOption(options, 'policyDelayMs', 30_000, 0, 'finite'),
    policyCloseCode: closeCodeOption(options.policyCloseCode),
    stableMs: numberOption(options, 'stableMs', 10_000, 0),
    openTimeoutMs: numberOption(options, 'openTimeoutMs', 20_000, 1),
    random,
  };
}

export function declaredBudgets(
  options: RateLimitedClientOptions,
  at: number,
): { global: Budget | undefined; types: Map<string, Budget> } {
  const build = (name: string, spec: unknown): Budget => {
    if (!isObject(spec)) fail(name, 'an object { capacity, refillPerSecond }', spec);
    const { capacity, refillPerSecond } = spec as { capacity: unknown; refillPerSecond: unknown };
    if (typeof capacity !== 'number' || !(capacity >= 1) || !Number.isFinite(capacity)) {
      fail(`${name}.capacity`, 'a finite number >= 1', capacity);
    }
    if (typeof refillPerSecond !== 'number' || !(refillPerSecond > 0) || !Number.isFinite(refillPerSecond)) {
      fail(`${name}.refillPerSecond`, 'a finite number > 0', refillPerSecond);
    }
    return Budget.declared(capacity, refillPerSecond, at);
  };
  const limits: unknown = options.limits ?? {};
  if (!isObject(limits)) fail('limits', 'an object { global?, types? }', limits);
  const { global, types: typeSpecs = {} } = limits as { global?: unknown; types?: unknown };
  if (!isObject(typeSpecs)) fail('limits.types', 'an object of { capacity, refillPerSecond } by event', typeSpecs);
  const types = new Map<string, Budget>();
  for (const [event, spec] of Object.entries(typeSpecs)) types.set(event, build(`limits.types.${event}`, spec));
  return { global: global === undefined ? undefined : build('limits.global', global), types };
}

function isObject(value: unknown): value is object {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
