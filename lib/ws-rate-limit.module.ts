import { Global, Module, type DynamicModule } from '@nestjs/common';
import { EXCEPTION_FILTERS_METADATA } from '@nestjs/common/constants.js';
import { ConfigModule, ConfigService } from '@nestjs/config';
import { DiscoveryModule, DiscoveryService } from '@nestjs/core';
import { resolveOptions, type ResolvedWsRateLimitOptions } from './config/resolve-options.js';
import { checkOptionFields } from './config/option-fields.js';
import { isRateLimitFilter } from './filters/filter-order.js';
import { WsRateLimitFilter } from './filters/ws-rate-limit.filter.js';
import { WsThrottleGuard } from './guards/ws-throttle.guard.js';
import type { WsRateLimitModuleOptions } from './interfaces/options.interface.js';
import {
  warnIgnoredRedisVariables,
  warnUnknownVariables,
  WsRateLimitStartupReport,
} from './services/startup-report.js';
import { WsRateLimitService } from './services/ws-rate-limit.service.js';
import { closesWithApp, createStore, inUse, releaseStore } from './storage/create-store.js';
import { RateLimitStore } from './storage/rate-limit-store.js';
import { WS_RATE_LIMIT_OPTIONS } from './ws-rate-limit.constants.js';
import {
  WS_RATE_LIMIT_ASYNC_OPTIONS_TYPE,
  WS_RATE_LIMIT_MODULE_OPTIONS,
  WsRateLimitConfigurableModule,
} from './ws-rate-limit.module-definition.js';

/**
 * A variable's value as `ConfigService` gives it, as the text the variable would hold: a
 * `validate` or `load` step may have parsed it already (an object for `WS_RATE_LIMIT_TYPES`
 * or `_PLANS`, written back as JSON; an array for a list, comma-separated).
 */
function configText(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (Array.isArray(value)) return value.map(String).join(',');
  if (typeof value === 'object') {
    try {
      return JSON.stringify(value) ?? String(value);
    } catch {
      return String(value);
    }
  }
  return String(value);
}

/** Marks a module made by forRoot/forRootAsync, whose options are checked to be an object. */
const CONFIGURED = Symbol('WS_RATE_LIMIT_CONFIGURED');

function configured(module: DynamicModule): DynamicModule {
  return { ...module, providers: [...(module.providers ?? []), { provide: CONFIGURED, useValue: true }] };
}

/**
 * Rate limiting for WebSocket gateways. Global: import it once, in the root module.
 * @example
 * @Module({ imports: [ConfigModule.forRoot(), WsRateLimitModule.forRoot()] })
 * export class AppModule {}
 */
@Global()
@Module({
  imports: [ConfigModule, DiscoveryModule],
  providers: [
    {
      provide: WS_RATE_LIMIT_OPTIONS,
      useFactory: (
        given: WsRateLimitModuleOptions | undefined,
        config: ConfigService,
        fromForRoot: true | undefined,
      ): ResolvedWsRateLimitOptions => {
        // The class imported bare (`imports: [WsRateLimitModule]`) has no options: it runs as
        // `forRoot()` does. From forRoot/forRootAsync, options that are not an object (a
        // factory that returned nothing) are refused.
        if (fromForRoot) checkOptionFields(given);
        const options = given ?? {};
        // A misspelled variable would otherwise be ignored without a word.
        if (options?.useEnv !== false) warnUnknownVariables(Object.keys(process.env));
        const read = (name: string): string | undefined => configText(config.get<unknown>(name));
        const resolved = resolveOptions(options, read);
        if (options?.useEnv !== false) warnIgnoredRedisVariables(resolved.store, read);
        return resolved;
      },
      inject: [
        { token: WS_RATE_LIMIT_MODULE_OPTIONS, optional: true },
        ConfigService,
        { token: CONFIGURED, optional: true },
      ],
    },
    {
      provide: RateLimitStore,
      useFactory: (options: ResolvedWsRateLimitOptions) => createStore(options),
      inject: [WS_RATE_LIMIT_OPTIONS],
    },
    WsRateLimitService,
    WsThrottleGuard,
    WsRateLimitFilter,
    WsRateLimitStartupReport,
  ],
  exports: [WS_RATE_LIMIT_OPTIONS, RateLimitStore, WsRateLimitService, WsThrottleGuard, WsRateLimitFilter],
})
export class WsRateLimitModule extends WsRateLimitConfigurableModule {
  /**
   * Puts the module's filter on every gateway, before NestJS binds their handlers: global
   * filters never apply to gateways, so without it a guard registered globally (`APP_GUARD`,
   * `useGlobalGuards`) would have its refusals answered by NestJS's generic `exception`
   * frames (which echo the message) instead of `rate_limit` frames. The filter catches only
   * `WsRateLimitException`, so gateways the guard does not run for are unaffected.
   */
  constructor(discovery: DiscoveryService, filter: WsRateLimitFilter) {
    super();
    const providers = discovery.getProviders();
    // Global: a second forRoot/forRootAsync would make a second limiter (store, metrics,
    // filter), and which one a gateway gets would depend on the order of imports.
    const limiters = providers.filter((wrapper) => wrapper.token === WsRateLimitService).length;
    if (limiters > 1) {
      // No application will exist to close the stores made so far (their Redis connections
      // would keep the process alive): closed here.
      closeMadeStores(providers);
      throw new Error(
        `WsRateLimitModule is imported ${limiters} times in this application (forRoot, forRootAsync or the bare class); ` +
          'it is global: import WsRateLimitModule.forRoot() or forRootAsync() once, in the root module, ' +
          'and inject WsRateLimitService in other modules without importing it',
      );
    }
    for (const wrapper of providers) {
      const gateway = wrapper.metatype;
      if (typeof gateway !== 'function' || !Reflect.getMetadata('websockets:is_gateway', gateway)) continue;
      const filters = (Reflect.getMetadata(EXCEPTION_FILTERS_METADATA, gateway) as unknown[] | undefined) ?? [];
      // The gateway's own WsRateLimitFilter stays; one this module put there for an earlier
      // application of the process (closed, or still running) is replaced by this one's.
      const own = filters.filter((entry) => !placed.has(entry as object));
      const ours = own.filter(isRateLimitFilter);
      if (ours.length === 0) {
        placed.add(filter);
        Reflect.defineMetadata(EXCEPTION_FILTERS_METADATA, [...own, filter], gateway);
      } else if (!isRateLimitFilter(own.at(-1))) {
        // Nest tries a class's last filter first: an app's catch-all written above
        // `@WsRateLimit()` (`@UseFilters(AllErrors) @WsRateLimit()`) came before ours and took
        // the refusals, which the order of two decorators should not decide. Ours go last.
        const others = own.filter((entry) => !isRateLimitFilter(entry));
        Reflect.defineMetadata(EXCEPTION_FILTERS_METADATA, [...others, ...ours], gateway);
      }
    }
  }

  /**
   * Configures the module in code; fields left out come from `WS_RATE_LIMIT_*` variables
   * (read through @nestjs/config), then defaults. No argument: environment only.
   */
  static override forRoot(options: WsRateLimitModuleOptions = {}): DynamicModule {
    return configured(super.forRoot(options));
  }

  /**
   * Configures the module from a factory, e.g. one reading a config service.
   * @example
   * WsRateLimitModule.forRootAsync({
   *   imports: [ConfigModule],
   *   inject: [ConfigService],
   *   useFactory: (config: ConfigService) => ({ tracker: config.get('TRACKER') }),
   * })
   */
  static override forRootAsync(options: typeof WS_RATE_LIMIT_ASYNC_OPTIONS_TYPE): DynamicModule {
    return configured(super.forRootAsync(options));
  }
}

/** The filter instances the module put on gateway classes (one per application that started). */
const placed = new WeakSet<object>();

/**
 * Closes the stores the modules of a failed start-up made (see `closesWithApp`), in the
 * background: each module's store beside its resolved options; a store given in code that
 * another application of this process holds is left to it.
 */
function closeMadeStores(providers: ReturnType<DiscoveryService['getProviders']>): void {
  // The limiter services built so far belong to this failed application: they let go.
  for (const wrapper of providers) {
    const service = wrapper.instance as { readonly store?: unknown } | undefined;
    if (wrapper.token === WsRateLimitService && service?.store instanceof RateLimitStore)
      releaseStore(service.store, service);
  }
  for (const wrapper of providers) {
    if (wrapper.token !== RateLimitStore || !(wrapper.instance instanceof RateLimitStore)) continue;
    const options = providers.find((other) => other.token === WS_RATE_LIMIT_OPTIONS && other.host === wrapper.host)
      ?.instance as ResolvedWsRateLimitOptions | undefined;
    // A store given in code may serve another application of the process: it closes with that one.
    if (options !== undefined && closesWithApp(wrapper.instance, options) && !inUse(wrapper.instance))
      wrapper.instance.close().catch(() => undefined);
  }
}
