export * from './token-bucket.js';
export * from './sliding-log.js';
export * from './sliding-counter.js';
