// Over 400 lines: the checks of every kind of option and variable value, which share their
// error wording (`fail`, `expectation`) and the address parsing of lists and trusted proxies.
import { BlockList, isIP } from 'node:net';
import { WsRateLimitConfigError } from '../exceptions/ws-rate-limit-config.error.js';
import type { PlanLimitsOptions, TypeLimitOptions } from '../interfaces/options.interface.js';
import { RateLimitStore } from '../storage/rate-limit-store.js';
import { missingStoreMethods } from '../storage/store-answers.js';
import { isSendableCloseCode } from '../utils/close-reason.js';
import { addressRange, familyCoveredBy, type AddressRange } from './address-ranges.js';
import { formatBound, MAX_CAPACITY } from './bounds.js';
import { ENV_VARIABLES, type EnvVariable } from './env-variables.js';
import type { ResolvedAccessList, ResolvedTrustProxy, ResolvedTypeLimit } from './resolved-options.js';

/**
 * Reading and checking one option's value: a variable's text or a value given in code. The
 * first invalid value throws a `WsRateLimitConfigError` naming the variable or option.
 */

const NUMBER = /^\s*\+?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/;

/** A plain object: not null, an array, a string or a number. */
export function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** A description shown as is in an error, where a string value would be quoted. */
export class Described {
  constructor(private readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

/** How a value that should have been an object is shown in an error. */
export function shape(value: unknown): unknown {
  return Array.isArray(value) ? new Described('an array') : value;
}

export function fail(where: string, expected: string, got: unknown): never {
  const shown = typeof got === 'string' ? JSON.stringify(got) : String(got);
  throw new WsRateLimitConfigError(`${where} must be ${expected}, got ${shown}`);
}

/** Parses a variable's text (or a default written as text). */
export function parseEnvValue(variable: EnvVariable, text: string): unknown {
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
      return checkString(variable, text, where);
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
export function checkCodeValue(variable: EnvVariable, value: unknown): unknown {
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
      if (variable.option === 'store' && value instanceof RateLimitStore) {
        const missing = missingStoreMethods(value);
        if (missing.length > 0) {
          const name = value.constructor.name || 'a store';
          fail(
            where,
            'a RateLimitStore with consume, peek, release, delete and close',
            `${name} without ${missing.join(', ')}`,
          );
        }
        return value;
      }
      if (variable.option === 'tracker' && typeof value === 'function') return value;
      if (typeof value !== 'string' || !variable.values!.includes(value)) {
        const extra =
          variable.option === 'store' ? ' or a RateLimitStore' : variable.option === 'tracker' ? ' or a function' : '';
        fail(where, `one of ${variable.values!.join(', ')}${extra}`, value);
      }
      return value;
    case 'string':
      if (typeof value !== 'string') fail(where, 'a string', value);
      return checkString(variable, value, where);
    case 'json':
      return checkTypes(value, where);
    case 'trust-proxy':
      // A hop count as text (a value passed on from ConfigService), as the variable takes it.
      if (typeof value === 'string' && /^\s*\d+\s*$/.test(value)) return checkTrustProxy(Number(value.trim()), where);
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
    if (looksLikeAddress(entry)) {
      // Validated as one: a malformed address or CIDR is an error, not a tracker name that
      // would never match anyone.
      addresses ??= new BlockList();
      addTrusted(addresses, entry, where);
    } else {
      trackers.add(entry);
    }
  }
  return { addresses, trackers, entries: kept };
}

/**
 * Whether an access-list entry is meant as an address or CIDR: what comes before a `/` is
 * an address, or made of digits and dots (`10.0.0`, `10.0.0.256`), or of hex digits, dots
 * and at least two colons (IPv6). Tracker names (`user-42`, `key:abc`) look like none.
 */
export function looksLikeAddress(entry: string): boolean {
  const slash = entry.indexOf('/');
  const address = (slash < 0 ? entry : entry.slice(0, slash)).trim();
  return (
    isIP(address) !== 0 ||
    /^\d+(\.\d*)+$/.test(address) ||
    (/^[0-9a-f:.]+$/i.test(address) && address.split(':').length > 2)
  );
}

/** Metric names' rule (Prometheus): a prefix must keep every name within it. */
const METRIC_PREFIX = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;

/** A string option, with the rule of the one that has one (`metricsPrefix`). */
function checkString(variable: EnvVariable, value: string, where: string): string {
  if (variable.option === 'metricsPrefix' && !METRIC_PREFIX.test(value)) {
    fail(where, 'a metric name prefix: letters, digits, _ and :, not starting with a digit', value);
  }
  return value;
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
      return max === undefined
        ? 'a whole number greater than 0'
        : `a whole number from ${formatBound(min ?? 1)} to ${formatBound(max)}`;
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
        fail(
          at,
          `made of ${[...TYPE_FIELDS].slice(0, -1).join(', ')} and ${[...TYPE_FIELDS].at(-1)}`,
          new Described(`field "${field}"`),
        );
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
  // Own entries only: `constructor` or `__proto__` must be refused as addresses, not iterated.
  const named = Object.hasOwn(NAMED_RANGES, entry) ? NAMED_RANGES[entry] : undefined;
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

/**
 * Why a `@Throttle` figure is not one a type may have (`undefined` when it is): the bounds of
 * the per-type figures of `WS_RATE_LIMIT_TYPES`, as the end of a sentence.
 */
export function typeFigureProblem(field: 'capacity' | 'refillRate' | 'cost', value: unknown): string | undefined {
  const rule = TYPE_FIGURES[field];
  try {
    if (typeof value !== 'number') return expectation(rule);
    checkNumber(rule, value, '', value);
    return undefined;
  } catch {
    return expectation(rule);
  }
}
