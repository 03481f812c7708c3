export * from './ws-throttle.guard.js';
