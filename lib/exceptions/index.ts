export * from './ws-rate-limit.exception.js';
export * from './ws-rate-limit-config.error.js';
