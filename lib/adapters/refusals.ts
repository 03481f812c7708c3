import type { ConnectionRefusalReason } from '../interfaces/event.interface.js';

/** How each refused connection is answered: HTTP status, and the reason the client is told. */
export const REFUSALS: Readonly<Record<ConnectionRefusalReason, { status: number; reason: string }>> = Object.freeze({
  rate: { status: 429, reason: 'Connection rate limit exceeded' },
  concurrency: { status: 429, reason: 'Too many connections' },
  denied: { status: 403, reason: 'Denied' },
  blocked: { status: 403, reason: 'Blocked' },
  store: { status: 503, reason: 'Rate limit store unavailable' },
});
