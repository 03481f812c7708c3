export { WsRateLimitModule } from './ws-rate-limit.module.js';
export { WsRateLimitService, frameCode, DEFAULT_PLAN } from './services/ws-rate-limit.service.js';
export type {
  ConsumeRequest,
  BudgetStatus,
  ClientLimitsStatus,
  ConnectionAdmission,
} from './services/ws-rate-limit.service.js';
export { METRICS } from './metrics/ws-rate-limit.metrics.js';
export * from './decorators/index.js';
export * from './guards/index.js';
export * from './filters/index.js';
export * from './exceptions/index.js';
export * from './interfaces/index.js';
export * from './storage/index.js';
export * from './algorithms/index.js';
export { tokenBucketSpec, windowSpec, concurrencySpec, figuresSuffix } from './plans/tier-specs.js';
export { createPlan } from './plans/create-plan.js';
export type { Route } from './plans/route-resolver.js';
export { ConnectionState, CONNECTION_STATE } from './connection/connection-state.js';
export type { RateLimitTransport } from './transports/transport.js';
export { wsTransport } from './transports/ws-transport.js';
export { UNROUTED_HANDLERS } from './pipeline/message-limiter.js';
export type { MessageSteps } from './pipeline/message-pipeline.js';
export type { Tracker, TrackerKind } from './pipeline/tracker.js';
export type { UnroutedCode } from './protocol/rate-limit-protocol.js';
export type { WsClientLike } from './connection/connection-state.js';
export { resolveOptions } from './config/resolve-options.js';
export type {
  ResolvedWsRateLimitOptions,
  ResolvedBucket,
  ResolvedTrustProxy,
  ResolvedPlan,
  ResolvedAccessList,
} from './config/resolve-options.js';
export { ENV_VARIABLES, ENV_PREFIX } from './config/env-variables.js';
export type { EnvVariable } from './config/env-variables.js';
export { clientAddressKey } from './utils/client-ip.js';
export type { MessageId } from './utils/message-id.js';
export { truncateCloseReason } from './utils/close-reason.js';
export {
  WS_RATE_LIMIT_OPTIONS,
  THROTTLE_METADATA,
  SKIP_THROTTLE_METADATA,
  RATE_LIMIT_EVENT,
} from './ws-rate-limit.constants.js';
export * from './adapters/index.js';
