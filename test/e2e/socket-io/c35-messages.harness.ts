import { Logger } from '@nestjs/common';
import { jest } from '@jest/globals';
import { request } from 'node:http';
import WebSocket from 'ws';
import {
  WsRateLimitModule,
  WsRateLimitService,
  type RateLimitEvent,
  type WsRateLimitModuleOptions,
} from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { connectIo, type EngineTransport, type IoTestClient } from '../../support/io-client.js';
import { C35MessagesGateway, handled, serverSockets } from './c35-messages.gateway.js';

/**
 * One socket.io app per test for the C-35 message cases, with what every case checks
 * after it (RELIABILITY I-1): no uncaught exception, no unhandled rejection, no error
 * logged by the limiter or the adapter.
 */
export class C35Harness {
  running: RunningApp | undefined;
  readonly clients: IoTestClient[] = [];
  /** Everything the service published since the app started. */
  readonly published: RateLimitEvent[] = [];
  /** Uncaught exceptions and unhandled rejections seen while the test ran. */
  readonly faults: unknown[] = [];
  private readonly onFault = (error: unknown): void => void this.faults.push(error);
  private loggedErrors: ReturnType<typeof jest.spyOn> | undefined;

  constructor(readonly transport: EngineTransport) {}

  /** Starts the app; the test's options go over quiet defaults (violations as the library's). */
  async start(options: WsRateLimitModuleOptions = {}): Promise<WsRateLimitService> {
    handled.clear();
    serverSockets.length = 0;
    this.published.length = 0;
    this.faults.length = 0;
    process.on('uncaughtException', this.onFault);
    process.on('unhandledRejection', this.onFault);
    this.loggedErrors = jest.spyOn(Logger.prototype, 'error');
    this.running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            tracker: 'connection',
            global: { capacity: 1000, refillRate: 1000 },
            ...options,
          }),
        ],
        providers: [C35MessagesGateway],
      },
      (app) => new WsRateLimitIoAdapter(app),
    );
    const service = this.service();
    service.events$.subscribe((event) => this.published.push(event));
    return service;
  }

  get url(): string {
    return `http://127.0.0.1:${this.running!.port}`;
  }

  service(): WsRateLimitService {
    return this.running!.app.get(WsRateLimitService);
  }

  stats(): ReturnType<WsRateLimitService['stats']> {
    return this.service().stats();
  }

  async connect(options?: Record<string, unknown>): Promise<IoTestClient> {
    const client = await connectIo(this.url, this.transport, options);
    this.clients.push(client);
    return client;
  }

  /** Decisions the limiter published (allowed or not), optionally of one message type. */
  decisions(type?: string): Array<Extract<RateLimitEvent, { kind: 'decision' }>> {
    return this.published.filter(
      (event): event is Extract<RateLimitEvent, { kind: 'decision' }> =>
        event.kind === 'decision' && (type === undefined || event.type === type),
    );
  }

  /** Events the limiter published of one kind. */
  ofKind<K extends RateLimitEvent['kind']>(kind: K): Array<Extract<RateLimitEvent, { kind: K }>> {
    return this.published.filter((event): event is Extract<RateLimitEvent, { kind: K }> => event.kind === kind);
  }

  /** Closes clients and app; returns what went wrong meanwhile (I-1), for the test to assert. */
  async stop(): Promise<{ faults: unknown[]; loggedErrors: unknown[][] }> {
    for (const client of this.clients.splice(0)) client.close();
    endHalfClosedPolls();
    try {
      await this.running?.close();
    } finally {
      this.running = undefined;
      process.off('uncaughtException', this.onFault);
      process.off('unhandledRejection', this.onFault);
    }
    const loggedErrors = (this.loggedErrors?.mock.calls ?? []) as unknown[][];
    this.loggedErrors?.mockRestore();
    this.loggedErrors = undefined;
    return { faults: [...this.faults], loggedErrors: [...loggedErrors] };
  }
}

/**
 * Ends the Engine.IO polling sessions the server closed between two polls. engine.io 6
 * (transports/polling.js, `doClose`) then waits up to 30 s, on a timer that holds the
 * process, for a poll the departed client may never send; the limiter's disconnects can
 * meet that. The limiter's state is freed by then (socket.io's `disconnect` comes first):
 * this only lets Jest exit at once.
 */
function endHalfClosedPolls(): void {
  for (const socket of serverSockets) {
    const conn = socket.conn as unknown as { readyState: string; transport?: { shouldClose?: (() => void) | null } };
    const close = conn.transport?.shouldClose;
    if (conn.readyState === 'closed' || typeof close !== 'function') continue;
    conn.transport!.shouldClose = null;
    close();
  }
}

/** Records the order of everything a client saw: events by name, then `#disconnect`. */
export function timeline(client: IoTestClient): string[] {
  const seen: string[] = [];
  client.socket.onAny((event: string) => seen.push(event));
  client.socket.on('disconnect', () => seen.push('#disconnect'));
  return seen;
}

/** An HTTP exchange on its own connection (no keep-alive agent left behind). */
export function http(
  port: number,
  method: 'GET' | 'POST',
  path: string,
  body?: string,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        agent: false,
        headers: { Connection: 'close', 'Content-Type': 'text/plain;charset=UTF-8' },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
        res.on('error', reject);
      },
    );
    // A server that answers before reading the whole body may reset the upload.
    req.on('error', reject);
    req.end(body);
  });
}

/** A raw Engine.IO polling session, connected to the main namespace. */
export interface RawPollingSession {
  /** Sends packets; resolves with the HTTP status. */
  post(body: string): Promise<number>;
  /** A long poll: resolves with what the server sends next. */
  poll(): Promise<string>;
}

/** Opens a raw Engine.IO polling session and connects it to the main namespace. */
export async function rawPollingSession(port: number): Promise<RawPollingSession> {
  const open = await http(port, 'GET', '/socket.io/?EIO=4&transport=polling');
  const { sid } = JSON.parse(open.body.slice(1)) as { sid: string };
  const path = `/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`;
  const session: RawPollingSession = {
    post: async (body) => (await http(port, 'POST', path, body)).status,
    poll: async () => (await http(port, 'GET', path)).body,
  };
  if ((await session.post('40')) !== 200) throw new Error('namespace connect refused');
  const connected = await session.poll();
  if (!connected.startsWith('40')) throw new Error(`unexpected answer ${connected.slice(0, 40)}`);
  return session;
}

/** A raw Engine.IO WebSocket (no socket.io-client), connected to the main namespace. */
export async function rawWebSocketSession(port: number): Promise<WebSocket> {
  const socket = new WebSocket(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`);
  socket.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    socket.on('message', (data: Buffer) => {
      const text = data.toString();
      if (text.startsWith('0')) socket.send('40');
      else if (text.startsWith('40')) resolve();
    });
    socket.once('close', () => reject(new Error('closed before connecting')));
  });
  return socket;
}
