import type { INestApplicationContext } from '@nestjs/common';
import type { IncomingMessage } from 'node:http';
import type { ResolvedWsRateLimitOptions } from '../config/resolve-options.js';
import { WsRateLimitService } from '../services/ws-rate-limit.service.js';
import { resolveClientAddress } from '../utils/client-address.js';

/** The module's service, for an adapter built with the application; a clear error without the module. */
export function limiterFrom(app: INestApplicationContext, adapter: string): WsRateLimitService {
  // NestJS's own adapters also take an HTTP server; ours read the module from the application.
  if (typeof (app as { get?: unknown } | null)?.get !== 'function') {
    throw new TypeError(
      `nestjs-ws-rate-limit: ${adapter} needs the NestJS application (new ${adapter}(app)), ` +
        'not its HTTP server: it reads WsRateLimitModule from it',
    );
  }
  try {
    return app.get(WsRateLimitService, { strict: false });
  } catch {
    throw new Error(
      `nestjs-ws-rate-limit: ${adapter} needs WsRateLimitModule: import WsRateLimitModule.forRoot() in the root module`,
    );
  }
}

/** A request's client address under the module's proxy settings (`undefined` when unknown). */
export function clientAddressOf(
  request: IncomingMessage,
  options: Pick<ResolvedWsRateLimitOptions, 'trustProxy' | 'forwardedHeader'>,
): string | undefined {
  return resolveClientAddress(request, options.trustProxy, options.forwardedHeader);
}
