export * from './ws-rate-limit.filter.js';
