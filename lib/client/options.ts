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
  confirmMs: number;
  reconnect: boolean;
  backoffBaseMs: number;
  backoffCapMs: number;
  maxReconnectAttempts: number;
  policyDelayMs: number;
  stableMs: number;
  openTimeoutMs: number;
  random: () => number;
}

function fail(name: string, expected: string, value: unknown): never {
  throw new RangeError(`RateLimitedClient: options.${name} must be ${expected}, got ${String(value)}`);
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
  const messageIds = options.messageIds ?? true;
  if (typeof messageIds !== 'boolean') fail('messageIds', 'a boolean', messageIds);
  return {
    createSocket: socketFactory(options),
    protocols: options.protocols,
    autoConnect: options.autoConnect ?? true,
    maxQueue: numberOption(options, 'maxQueue', 1000, 0, 'integer'),
    overflow,
    messageIds,
    minPaceMs: numberOption(options, 'minPaceMs', 125, 1, 'finite'),
    maxUnconfirmed: numberOption(options, 'maxUnconfirmed', 1, 1, 'integer'),
    isAck: options.isAck,
    undelivered,
    confirmMs: numberOption(options, 'confirmMs', options.isAck ? 10_000 : 250, 0, 'finite'),
    reconnect: options.reconnect ?? true,
    backoffBaseMs: numberOption(options, 'backoffBaseMs', 1000, 0, 'finite'),
    backoffCapMs: numberOption(options, 'backoffCapMs', 30_000, 0, 'finite'),
    maxReconnectAttempts: numberOption(options, 'maxReconnectAttempts', Infinity, 0, 'integer'),
    policyDelayMs: numberOption(options, 'policyDelayMs', 30_000, 0, 'finite'),
    stableMs: numberOption(options, 'stableMs', 10_000, 0),
    openTimeoutMs: numberOption(options, 'openTimeoutMs', 20_000, 1),
    random,
  };
}

export function declaredBudgets(
  options: RateLimitedClientOptions,
  at: number,
): { global: Budget | undefined; types: Map<string, Budget> } {
  const build = (name: string, spec: { capacity: number; refillPerSecond: number }): Budget => {
    if (!(spec.capacity >= 1)) fail(`${name}.capacity`, 'a number >= 1', spec.capacity);
    if (!(spec.refillPerSecond > 0 && Number.isFinite(spec.refillPerSecond))) {
      fail(`${name}.refillPerSecond`, 'a finite number > 0', spec.refillPerSecond);
    }
    return Budget.declared(spec.capacity, spec.refillPerSecond, at);
  };
  const limits = options.limits ?? {};
  const types = new Map<string, Budget>();
  for (const [event, spec] of Object.entries(limits.types ?? {})) {
    types.set(event, build(`limits.types.${event}`, spec));
  }
  return { global: limits.global && build('limits.global', limits.global), types };
}
