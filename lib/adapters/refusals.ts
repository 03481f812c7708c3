import { ServerResponse, STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { ConnectionRefusalReason } from '../interfaces/event.interface.js';

/** How each refused connection is answered: HTTP status, and the reason the client is told. */
export const REFUSALS: Readonly<Record<ConnectionRefusalReason, { status: number; reason: string }>> = Object.freeze({
  rate: { status: 429, reason: 'Connection rate limit exceeded' },
  concurrency: { status: 429, reason: 'Too many connections' },
  denied: { status: 403, reason: 'Denied' },
  blocked: { status: 403, reason: 'Blocked' },
  store: { status: 503, reason: 'Rate limit store unavailable' },
  // Never sent: such a connection is dropped before its request (see `guardHandshakes`).
  handshakes: { status: 429, reason: 'Too many pending handshakes' },
});

/**
 * Refuses a handshake with an HTTP status: on a polling request through its response; on
 * an upgrade (where Engine.IO's stand-in response can send no status) on the socket itself.
 */
export function refuseHttp(response: ServerResponse, status: number, reason: string, retryAfterMs: number): void {
  const headers: Record<string, string> = { 'Content-Type': 'application/json', Connection: 'close' };
  if (retryAfterMs > 0) headers['Retry-After'] = String(Math.max(1, Math.ceil(retryAfterMs / 1000)));
  const body = JSON.stringify({ message: reason, ...(retryAfterMs > 0 ? { retryAfter: retryAfterMs } : {}) });
  if (response instanceof ServerResponse) {
    if (response.headersSent || response.destroyed) return;
    response.writeHead(status, { ...headers, 'Content-Length': String(Buffer.byteLength(body)) });
    response.end(body);
    return;
  }
  const socket = (response as unknown as { socket: Duplex }).socket;
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  headers['Content-Length'] = String(Buffer.byteLength(body));
  const head = Object.entries(headers)
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('');
  socket.once('finish', () => socket.destroy());
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\n${head}\r\n${body}`);
}
