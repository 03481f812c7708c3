import type { INestApplication, ModuleMetadata } from '@nestjs/common';
import type { WebSocketAdapter } from '@nestjs/common';
import { WsAdapter } from '@nestjs/platform-ws';
import { Test } from '@nestjs/testing';
import type { AddressInfo } from 'node:net';

/** A listening NestJS app on a free loopback port. */
export interface RunningApp {
  app: INestApplication;
  port: number;
  url: string;
  close(): Promise<void>;
}

/**
 * Compiles a testing module, serves it on 127.0.0.1 with a free port and returns its
 * WebSocket URL. The adapter is the stock platform-ws one unless a factory is given.
 */
export async function startApp(
  metadata: ModuleMetadata,
  adapter: (app: INestApplication) => WebSocketAdapter = (app) => new WsAdapter(app),
): Promise<RunningApp> {
  const moduleRef = await Test.createTestingModule(metadata).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  app.useWebSocketAdapter(adapter(app));
  await app.listen(0, '127.0.0.1');
  const port = (app.getHttpServer().address() as AddressInfo).port;
  return { app, port, url: `ws://127.0.0.1:${port}`, close: () => app.close() };
}

/** Sets environment variables for the length of a callback, restoring them after. */
export async function withEnv<T>(vars: Record<string, string | undefined>, run: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((name) => [name, process.env[name]]));
  for (const [name, value] of Object.entries(vars)) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
  try {
    return await run();
  } finally {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
}
