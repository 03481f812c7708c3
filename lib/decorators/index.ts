export * from './throttle.decorator.js';
export * from './skip-throttle.decorator.js';
export * from './ws-rate-limit.decorator.js';
