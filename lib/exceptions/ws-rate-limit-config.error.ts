/**
 * Invalid configuration: thrown at start-up. The message names the environment variable or
 * the option (`option global.capacity`, `@Throttle on ChatGateway.search`) at fault.
 */
export class WsRateLimitConfigError extends Error {
  constructor(message: string) {
    super(`nestjs-ws-rate-limit: ${message}`);
    this.name = 'WsRateLimitConfigError';
  }
}
