/**
 * The Redis store could not decide: Redis is down, frozen, slow past the deadline, out of
 * memory, or the store is closed. The caller applies its fail mode; `cause` holds the
 * underlying error when there is one.
 */
export class RedisStoreUnavailableError extends Error {
  /** Always `STORE_UNAVAILABLE`, the frame code the fail mode `closed` answers with. */
  readonly code = 'STORE_UNAVAILABLE';

  constructor(message: string, options?: { cause?: unknown }) {
    super(`nestjs-ws-rate-limit: ${message}`, options);
    this.name = 'RedisStoreUnavailableError';
  }
}
