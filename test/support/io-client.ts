import { io, type Socket } from 'socket.io-client';
import './io-settle.js';
import { sleep } from './ws-client.js';

/** An Engine.IO transport a test runs on. */
export type EngineTransport = 'websocket' | 'polling';

/** Both Engine.IO transports, for `describe.each`. */
export const ENGINE_TRANSPORTS: readonly EngineTransport[] = ['websocket', 'polling'];

/** An event the test client received. */
export interface IoEvent {
  event: string;
  data: unknown;
}

/**
 * A real socket.io-client socket on one transport (no upgrade, no reconnection) that
 * records every event it receives and how it ended.
 */
export class IoTestClient {
  readonly events: IoEvent[] = [];
  disconnectReason: string | undefined;
  connectError: (Error & { data?: unknown; description?: unknown }) | undefined;
  readonly socket: Socket;

  constructor(url: string, transport: EngineTransport, options: Record<string, unknown> = {}) {
    this.socket = io(url, {
      transports: [transport],
      upgrade: false,
      reconnection: false,
      forceNew: true,
      timeout: 10_000,
      ...options,
    });
    this.socket.onAny((event: string, data: unknown) => this.events.push({ event, data }));
    this.socket.on('disconnect', (reason) => (this.disconnectReason = reason));
    this.socket.on('connect_error', (error) => (this.connectError = error));
  }

  /** Resolves once connected; rejects with the connect_error. */
  connected(): Promise<void> {
    if (this.socket.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.socket.once('connect', () => resolve());
      this.socket.once('connect_error', reject);
    });
  }

  /** Events received with this name. */
  of(event: string): unknown[] {
    return this.events.filter((entry) => entry.event === event).map((entry) => entry.data);
  }

  /** Waits until `check` holds (see `waitFor`). */
  until(check: () => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
    return waitFor(check, timeoutMs, what);
  }

  /** Waits until the socket has disconnected. */
  disconnected(timeoutMs = 10_000): Promise<void> {
    return this.until(() => this.disconnectReason !== undefined, timeoutMs, 'disconnect');
  }

  close(): void {
    this.socket.disconnect();
  }

  /**
   * Disconnects and waits until Engine.IO has closed and its last write (over polling, the
   * close packet's request) is done, so that no request is left to fail once the server
   * stops (engine.io-client answers such a failure with another request).
   */
  async closeAndSettle(timeoutMs = 5000): Promise<void> {
    const engine = this.socket.io.engine as { readyState: string; transport?: { writable?: boolean } } | undefined;
    this.close();
    if (engine === undefined) return;
    await waitFor(
      () => engine.readyState === 'closed' && engine.transport?.writable !== false,
      timeoutMs,
      'the client to close',
    );
  }
}

/** Connects a client and waits for the connection; closes it if connecting fails. */
export async function connectIo(
  url: string,
  transport: EngineTransport,
  options?: Record<string, unknown>,
): Promise<IoTestClient> {
  const client = new IoTestClient(url, transport, options);
  try {
    await client.connected();
  } catch (error) {
    client.close();
    throw error;
  }
  return client;
}

/** Waits until `check` holds (polling every 10 ms), failing after `timeoutMs`. */
export async function waitFor(check: () => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/**
 * A client (added to `clients`, for the test's clean-up) once connected and once its
 * gateway's `handleConnection` has said `ready`.
 */
export async function connectReady(
  url: string,
  clients: IoTestClient[],
  transport: EngineTransport = 'websocket',
): Promise<IoTestClient> {
  const client = new IoTestClient(url, transport);
  clients.push(client);
  const ready = new Promise<void>((resolve) => client.socket.once('ready', () => resolve()));
  await client.connected();
  await ready;
  return client;
}

/**
 * The ids a client's answers name, sorted: admitted (a reply event among `replies`) and
 * refused (`rate_limit`).
 */
export function answeredIds(
  client: IoTestClient,
  replies: ReadonlySet<string>,
): { admitted: number[]; refused: number[] } {
  const admitted: number[] = [];
  const refused: number[] = [];
  for (const { event, data } of client.events) {
    const id = (data as { id?: unknown } | undefined)?.id;
    if (typeof id !== 'number') continue;
    if (replies.has(event)) admitted.push(id);
    else if (event === 'rate_limit') refused.push(id);
  }
  return { admitted: admitted.sort((a, b) => a - b), refused: refused.sort((a, b) => a - b) };
}
