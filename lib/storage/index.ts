export * from './rate-limit-store.js';
export * from './memory/memory-store.js';
