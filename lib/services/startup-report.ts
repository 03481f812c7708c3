import { Inject, Injectable, Logger, Optional, type OnApplicationBootstrap } from '@nestjs/common';
import { DiscoveryService, ExternalContextCreator, MetadataScanner } from '@nestjs/core';
import type { ResolvedBucket, ResolvedWsRateLimitOptions } from '../config/resolved-options.js';
import {
  ignoredRedisMessage,
  ignoredRedisVariables,
  unknownVariableMessage,
  unknownVariables,
} from '../config/unknown-variables.js';
import { WsRateLimitConfigError } from '../exceptions/ws-rate-limit-config.error.js';
import { RateLimitStore } from '../storage/rate-limit-store.js';
import { SKIP_THROTTLE_METADATA, THROTTLE_METADATA, WS_RATE_LIMIT_OPTIONS } from '../ws-rate-limit.constants.js';

/** The context the module logs under. */
export const LOG_CONTEXT = 'WsRateLimit';

/**
 * What the module says once the application has started, so that a configuration mistake
 * is not silent: one `log` line with the limits in force, a warning for each gateway
 * whose `@Throttle` figures no `WsThrottleGuard` applies, and one for plans that no
 * `planResolver` can pick.
 */
@Injectable()
export class WsRateLimitStartupReport implements OnApplicationBootstrap {
  private readonly logger = new Logger(LOG_CONTEXT);

  constructor(
    @Inject(WS_RATE_LIMIT_OPTIONS) private readonly options: ResolvedWsRateLimitOptions,
    private readonly discovery: DiscoveryService,
    private readonly metadataScanner: MetadataScanner,
    @Optional() private readonly contexts?: ExternalContextCreator,
  ) {}

  onApplicationBootstrap(): void {
    this.checkAdapter();
    this.logger.log(limitsSummary(this.options));
    for (const warning of this.unguardedThrottles()) this.logger.warn(warning);
    for (const warning of this.skippedThrottles()) this.logger.warn(warning);
    const plans = Object.keys(this.options.plans);
    if (plans.length > 0 && this.options.planResolver === undefined) {
      this.logger.warn(
        `plans ${plans.join(', ')} are configured but no planResolver picks them: ` +
          "every connection gets the module's own limits (give option planResolver)",
      );
    }
  }

  /**
   * One warning per gateway whose `@Throttle` figures a `@SkipThrottle()` makes void: on a
   * handler it skips (its own, or its class's without a `@SkipThrottle(false)` of its own),
   * or on a class all of whose handlers are skipped (by the class or by their own).
   */
  private skippedThrottles(): string[] {
    const warnings: string[] = [];
    for (const wrapper of this.discovery.getProviders()) {
      const gateway = wrapper.metatype as (abstract new (...args: never[]) => unknown) | undefined;
      if (!gateway || !wrapper.instance || !Reflect.getMetadata('websockets:is_gateway', gateway)) continue;
      const classSkips = Reflect.getMetadata(SKIP_THROTTLE_METADATA, gateway) === true;
      const classFigures = Reflect.getMetadata(THROTTLE_METADATA, gateway) !== undefined;
      const prototype = Object.getPrototypeOf(wrapper.instance) as Record<string, unknown>;
      const skipped: string[] = [];
      let limited = false;
      let handlers = 0;
      for (const name of this.metadataScanner.getAllMethodNames(prototype)) {
        const handler = prototype[name] as object;
        if (Reflect.getMetadata('message', handler) === undefined) continue;
        handlers++;
        const own = Reflect.getMetadata(SKIP_THROTTLE_METADATA, handler) as boolean | undefined;
        if (!(own ?? classSkips)) {
          limited = true;
          continue;
        }
        if (Reflect.getMetadata(THROTTLE_METADATA, handler) !== undefined) skipped.push(`${gateway.name}.${name}`);
      }
      // Class figures apply to no handler when every handler is skipped (by the class or its own).
      if (classFigures && !limited && handlers > 0) skipped.unshift(gateway.name);
      if (skipped.length > 0) {
        warnings.push(
          `@Throttle on ${skipped.join(', ')} does nothing: @SkipThrottle() skips ` +
            `${skipped.length === 1 ? 'it' : 'them'}; add @SkipThrottle(false) to a handler that should be limited`,
        );
      }
    }
    return warnings;
  }

  /**
   * The WebSocket adapter the gateways run on (NestJS has made it by now): one the limiter
   * cannot answer through is a start-up error; NestJS's own adapters (platform-ws's `WsAdapter`,
   * platform-socket.io's `IoAdapter`) work for messages but leave the handshake unprotected and
   * answers unordered at a close, which is worth a warning.
   */
  private checkAdapter(): void {
    const config = (this.contexts as { container?: { applicationConfig?: { getIoAdapter?: unknown } } } | undefined)
      ?.container?.applicationConfig;
    if (typeof config?.getIoAdapter !== 'function') return;
    const adapter = (config.getIoAdapter as () => unknown).call(config);
    if (adapter === null || adapter === undefined || !this.hasGateways()) return;
    const family = adapterFamily(adapter);
    const name = (adapter as object).constructor?.name ?? 'an adapter';
    if (family === undefined) {
      throw new WsRateLimitConfigError(
        `the WebSocket adapter ${name} is not supported: use WsRateLimitAdapter (ws, from 'nestjs-ws-rate-limit') ` +
          `or WsRateLimitIoAdapter (socket.io, from 'nestjs-ws-rate-limit/socket.io'), or an adapter extending ` +
          `@nestjs/platform-ws's WsAdapter or @nestjs/platform-socket.io's IoAdapter`,
      );
    }
    if (family === 'ws' && !chainNames(adapter).includes('WsRateLimitAdapter')) {
      this.logger.warn(
        `Gateways run on ws through ${name}: messages are limited, but connections are not (no per-address ` +
          `rate or cap at the upgrade), frames NestJS drops are not charged, and answers are not ordered at a ` +
          `1008 close (replies of admitted messages may be lost). Use WsRateLimitAdapter from ` +
          `'nestjs-ws-rate-limit': app.useWebSocketAdapter(new WsRateLimitAdapter(app)).`,
      );
    }
    if (family === 'socket.io' && !chainNames(adapter).includes('WsRateLimitIoAdapter')) {
      this.logger.warn(
        `Gateways run on socket.io through ${name}: messages are limited, but connections are not (no per-address ` +
          `rate or cap at the handshake) and answers are not ordered at a disconnect. Use WsRateLimitIoAdapter ` +
          `from 'nestjs-ws-rate-limit/socket.io': app.useWebSocketAdapter(new WsRateLimitIoAdapter(app)).`,
      );
    }
  }

  private hasGateways(): boolean {
    return this.discovery
      .getProviders()
      .some(
        (wrapper) =>
          typeof wrapper.metatype === 'function' && Reflect.getMetadata('websockets:is_gateway', wrapper.metatype),
      );
  }

  /** One warning per gateway with `@Throttle` handlers that no `WsThrottleGuard` runs for. */
  private unguardedThrottles(): string[] {
    const global = this.globalGuard();
    if (global === true) return [];
    const warnings: string[] = [];
    for (const wrapper of this.discovery.getProviders()) {
      const gateway = wrapper.metatype as (abstract new (...args: never[]) => unknown) | undefined;
      if (!gateway || !wrapper.instance || !Reflect.getMetadata('websockets:is_gateway', gateway)) continue;
      if (throttleGuardOf(gateway) !== undefined) continue;
      const onClass = Reflect.getMetadata(THROTTLE_METADATA, gateway) !== undefined;
      const prototype = Object.getPrototypeOf(wrapper.instance) as Record<string, unknown>;
      const unguarded: string[] = [];
      for (const name of this.metadataScanner.getAllMethodNames(prototype)) {
        const handler = prototype[name] as object;
        if (Reflect.getMetadata('message', handler) === undefined || throttleGuardOf(handler) !== undefined) continue;
        if (onClass || Reflect.getMetadata(THROTTLE_METADATA, handler) !== undefined) {
          unguarded.push(`${gateway.name}.${name}`);
        }
      }
      if (unguarded.length > 0) warnings.push(unguardedMessage(gateway.name, onClass, unguarded, global));
    }
    return warnings;
  }

  /**
   * Whether a `WsThrottleGuard` runs for every handler of the application: registered with
   * `APP_GUARD`, or given to `app.useGlobalGuards` (read from NestJS's application config;
   * `undefined` when this NestJS version does not expose it, so only `APP_GUARD` was seen).
   */
  private globalGuard(): boolean | undefined {
    return globalThrottleGuard(this.discovery, this.contexts);
  }
}

/**
 * Whether a `WsThrottleGuard` runs for every handler of the application: registered with
 * `APP_GUARD`, or given to `app.useGlobalGuards` before the application's init (read from
 * NestJS's application config through `contexts`; `undefined` when it cannot be read, so only
 * `APP_GUARD` was seen).
 */
export function globalThrottleGuard(discovery: DiscoveryService, contexts: unknown): boolean | undefined {
  if (throttleAppGuard(discovery)) return true;
  const config = (contexts as { container?: { applicationConfig?: { getGlobalGuards?: unknown } } } | undefined)
    ?.container?.applicationConfig;
  if (typeof config?.getGlobalGuards !== 'function') return undefined;
  const guards = (config.getGlobalGuards as () => unknown[]).call(config);
  return Array.isArray(guards) && guards.some(isThrottleGuard);
}

/** The names of an object's classes, from its own up. */
function chainNames(value: object): string[] {
  const names: string[] = [];
  for (
    let proto = Object.getPrototypeOf(value) as object | null;
    proto !== null;
    proto = Object.getPrototypeOf(proto)
  ) {
    const name = (proto.constructor as { name?: string } | undefined)?.name;
    if (name) names.push(name);
  }
  return names;
}

/**
 * Which socket library an adapter speaks, from its classes (NestJS's `WsAdapter` or
 * `IoAdapter`, or one extending them), without importing either package.
 */
export function adapterFamily(adapter: object): 'ws' | 'socket.io' | undefined {
  const names = chainNames(adapter);
  if (names.includes('WsAdapter')) return 'ws';
  if (names.includes('IoAdapter')) return 'socket.io';
  return undefined;
}

/** Warns about each `WS_RATE_LIMIT_*` variable in `names` that no option reads, naming the closest known one. */
export function warnUnknownVariables(
  names: Iterable<string>,
  logger: Pick<Logger, 'warn'> = new Logger(LOG_CONTEXT),
): void {
  for (const unknown of unknownVariables(names)) logger.warn(unknownVariableMessage(unknown));
}

/** Warns when `WS_RATE_LIMIT_REDIS_*` variables are set but the store is not Redis. */
export function warnIgnoredRedisVariables(
  store: ResolvedWsRateLimitOptions['store'],
  read: (name: string) => string | undefined,
  logger: Pick<Logger, 'warn'> = new Logger(LOG_CONTEXT),
): void {
  const names = ignoredRedisVariables(store, read);
  if (names.length === 0) return;
  logger.warn(ignoredRedisMessage(names));
}

/**
 * The limits in force, on one line: store, tracker, trusted proxies, each tier, violations
 * and plans, e.g. `Limits in force: store memory; tracker connection; ...`.
 */
export function limitsSummary(options: ResolvedWsRateLimitOptions): string {
  const parts = [
    `store ${storeName(options)}`,
    `tracker ${trackerName(options.tracker)}`,
    `trusted proxies ${trustedProxies(options)}`,
    `global ${bucket(options.global)}`,
    `type default ${bucket(options.type)}${typesNote(options)}`,
    `expensive ${options.expensive.max} per ${duration(options.expensive.windowMs)} (${options.expensive.algorithm})`,
    `connections ${bucket(options.connection)} per address, ` +
      (options.maxConnectionsPerIp > 0 ? `at most ${options.maxConnectionsPerIp} open` : 'no open-connection cap'),
    `violations ${violations(options)}`,
    `plans ${Object.keys(options.plans).join(', ') || 'none'}`,
  ];
  const shadow = options.shadow ? 'SHADOW MODE, nothing is rejected or closed; ' : '';
  return `Limits in force: ${shadow}${parts.join('; ')}`;
}

/** The `WsThrottleGuard` (or subclass) a class or handler lists in `@UseGuards`, if any. */
export function throttleGuardOf(target: object): object | undefined {
  const guards = (Reflect.getMetadata('__guards__', target) as unknown[] | undefined) ?? [];
  for (const guard of guards) {
    if (isThrottleGuard(guard)) return typeof guard === 'function' ? guard : (guard as object).constructor;
  }
  return undefined;
}

/** Whether a `WsThrottleGuard` (or a subclass) is registered with `APP_GUARD`. */
export function throttleAppGuard(discovery: DiscoveryService): boolean {
  return discovery
    .getProviders()
    .some(
      (wrapper) =>
        typeof wrapper.token === 'string' &&
        wrapper.token.startsWith('APP_GUARD') &&
        (isThrottleGuard(wrapper.metatype) || isThrottleGuard(wrapper.instance)),
    );
}

/** Whether a guard class or instance is `WsThrottleGuard` or a subclass (without importing the guard). */
function isThrottleGuard(guard: unknown): boolean {
  const type = typeof guard === 'function' ? guard : (guard as object | null | undefined)?.constructor;
  return typeof type === 'function' && (type as { isWsThrottleGuard?: boolean }).isWsThrottleGuard === true;
}

function unguardedMessage(gateway: string, onClass: boolean, handlers: string[], global: boolean | undefined): string {
  const where = onClass ? `${gateway} (handlers ${handlers.join(', ')})` : handlers.join(', ');
  const unseen =
    global === undefined
      ? ' (A WsThrottleGuard given to app.useGlobalGuards cannot be seen on this NestJS version: if the app has one, ignore this.)'
      : '';
  return (
    `@Throttle on ${where} has no effect: no WsThrottleGuard runs for ${handlers.length > 1 ? 'them' : 'it'}. ` +
    `Add @WsRateLimit() to ${gateway}, or register WsThrottleGuard with APP_GUARD.${unseen}`
  );
}

function storeName(options: ResolvedWsRateLimitOptions): string {
  const { store, failMode } = options;
  if (store === 'memory') return 'memory (this process only)';
  const name = store instanceof RateLimitStore ? `${store.constructor.name} (given in options)` : store;
  return `${name}, fail ${failMode}`;
}

function trackerName(tracker: ResolvedWsRateLimitOptions['tracker']): string {
  if (typeof tracker !== 'function') return tracker;
  return tracker.name ? `function ${tracker.name}` : 'a function';
}

function trustedProxies(options: ResolvedWsRateLimitOptions): string {
  const trust = options.trustProxy;
  if (trust.kind === 'none') return 'none';
  const which = trust.kind === 'hops' ? `${trust.hops} hop${trust.hops === 1 ? '' : 's'}` : trust.entries.join(',');
  return `${which} (${options.forwardedHeader})`;
}

function typesNote(options: ResolvedWsRateLimitOptions): string {
  const count = Object.keys(options.types).length;
  return count === 0 ? '' : ` (+${count} type${count === 1 ? '' : 's'} in options)`;
}

function violations(options: ResolvedWsRateLimitOptions): string {
  const { max, windowMs, closeCode } = options.violations;
  const cooldown = options.degradeCooldownMs;
  const then = cooldown > 0 ? `degrade for ${duration(cooldown)}, then close ${closeCode}` : `close ${closeCode}`;
  return `${max} in ${duration(windowMs)}, then ${then}`;
}

/** `capacity burst, rate/s`. */
function bucket({ capacity, refillRate }: ResolvedBucket): string {
  return `${capacity} burst, ${refillRate}/s`;
}

function duration(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}
