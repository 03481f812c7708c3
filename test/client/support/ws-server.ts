/** A bare `ws` server scripted by a test (exact frame shapes), and small waits. */
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { WebSocketServer, type WebSocket as ServerSocket } from 'ws';

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` every 20 ms; false if it does not hold within `timeoutMs`. */
export async function waitFor(check: () => boolean, timeoutMs = 15_000): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

/** A `ws` server on 127.0.0.1 (a free port); `onConnection` gets each socket and its index. */
export async function listen(
  onConnection: (socket: ServerSocket, index: number) => void,
  options: { maxPayload?: number } = {},
): Promise<{ wss: WebSocketServer; url: string }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, ...options });
  let index = 0;
  wss.on('connection', (socket) => {
    socket.on('error', () => undefined);
    onConnection(socket, index++);
  });
  await new Promise<void>((resolve, reject) => {
    wss.once('listening', resolve);
    wss.once('error', reject);
  });
  return { wss, url: `ws://127.0.0.1:${(wss.address() as AddressInfo).port}` };
}

/** Ends every connection and closes the server. */
export async function stop(wss: WebSocketServer): Promise<void> {
  for (const socket of wss.clients) socket.terminate();
  await new Promise<void>((resolve) => wss.close(() => resolve()));
}

/** A `rate_limit` frame as the server sends it (TYPE_LIMIT unless `data` says otherwise). */
export function rateLimit(data: Record<string, unknown>): string {
  return JSON.stringify({ event: 'rate_limit', data: { code: 'TYPE_LIMIT', warningCount: 1, remaining: 0, ...data } });
}
