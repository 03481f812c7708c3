/**
 * `nestjs-ws-rate-limit/store`: the stores, the algorithms and the plan builders without the
 * NestJS module, so code that only decides limits (a worker, a script, an HTTP middleware)
 * loads them without @nestjs/config, @nestjs/core or the WebSocket packages. The Redis store
 * logs through @nestjs/common's Logger and loads ioredis only when created.
 */
export * from './storage/index.js';
export * from './algorithms/index.js';
export * from './interfaces/plan.interface.js';
export { tokenBucketSpec, windowSpec, concurrencySpec, figuresSuffix } from './plans/tier-specs.js';
export { createPlan } from './plans/create-plan.js';
