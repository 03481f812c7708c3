export * from './ws-rate-limit.adapter.js';
