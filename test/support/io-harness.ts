import { Manager, type Socket as ClientSocket } from 'socket.io-client';
import { WsRateLimitModule, WsRateLimitService, type WsRateLimitModuleOptions } from '../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../lib/socket-io.js';
import { startApp, type RunningApp } from './app.js';
import { connectIo, IoTestClient, type EngineTransport } from './io-client.js';
import { sleep } from './ws-client.js';

/**
 * One socket.io app at a time on `WsRateLimitIoAdapter` (generous message limits, so a
 * test's own figures are the ones that decide), and the clients a test opens against it;
 * `close()` ends them all (call it in `afterEach`).
 */
export interface IoHarness {
  /** Starts the app with these gateways; returns its `http://127.0.0.1:port` address. */
  start(gateways: object[], options?: WsRateLimitModuleOptions): Promise<string>;
  /** A client (connecting, not awaited). */
  client(url: string, transport: EngineTransport, options?: Record<string, unknown>): IoTestClient;
  /** A connected client. */
  connect(url: string, transport: EngineTransport, options?: Record<string, unknown>): Promise<IoTestClient>;
  /** An Engine.IO connection whose namespace sockets a test connects itself (no reconnection). */
  manager(url: string, transport: EngineTransport): Manager;
  /** The running app. */
  app(): RunningApp['app'];
  /** The running app's limiter. */
  limiter(): WsRateLimitService;
  close(): Promise<void>;
}

export function ioHarness(): IoHarness {
  let running: RunningApp | undefined;
  const clients: IoTestClient[] = [];
  const managers: Manager[] = [];
  return {
    async start(gateways, options = {}) {
      running = await startApp(
        {
          imports: [
            WsRateLimitModule.forRoot({
              useEnv: false,
              tracker: 'connection',
              global: { capacity: 1000, refillRate: 1000 },
              violations: { max: 100, windowMs: 60_000 },
              ...options,
            }),
          ],
          providers: gateways as never[],
        },
        (app) => new WsRateLimitIoAdapter(app),
      );
      return `http://127.0.0.1:${running.port}`;
    },
    client(url, transport, options) {
      const made = new IoTestClient(url, transport, options);
      clients.push(made);
      return made;
    },
    async connect(url, transport, options) {
      const made = await connectIo(url, transport, options);
      clients.push(made);
      return made;
    },
    manager(url, transport) {
      const made = new Manager(url, {
        autoConnect: false,
        transports: [transport],
        upgrade: false,
        reconnection: false,
        forceNew: true,
        timeout: 10_000,
      });
      managers.push(made);
      return made;
    },
    app() {
      return running!.app;
    },
    limiter() {
      return running!.app.get(WsRateLimitService);
    },
    async close() {
      for (const made of clients.splice(0)) made.close();
      for (const made of managers.splice(0)) made.engine?.close();
      // Polling clients send their close packet in a request of their own: let it go out.
      await sleep(50);
      await running?.close();
      running = undefined;
    },
  };
}

/** Connects a namespace socket: `'connected'`, or the connect_error's message. */
export function joined(socket: ClientSocket): Promise<string> {
  return new Promise<string>((resolve) => {
    socket.once('connect', () => resolve('connected'));
    socket.once('connect_error', (error: Error) => resolve(error.message));
    socket.connect();
  });
}
