import type { NestExpressApplication } from '@nestjs/platform-express';
import { Test } from '@nestjs/testing';
import type { AddressInfo } from 'node:net';
import { WsRateLimitIoAdapter } from 'nestjs-ws-rate-limit/socket.io';
import { IoAppModule } from '../../sample/app-io.module.js';
import { serveDemoPage } from '../../sample/demo-page.js';
import { ensureClientBuilt } from '../client/support/sample-app.js';
import { withEnv } from './app.js';

/** The sample on socket.io, running in this process on a free loopback port. */
export interface RunningIoSample {
  readonly app: NestExpressApplication;
  readonly port: number;
  /** The socket.io server: `http://127.0.0.1:<port>`. */
  readonly url: string;
  /** The demo page (when served): `http://127.0.0.1:<port>/`. */
  readonly pageUrl: string;
  close(): Promise<void>;
}

/**
 * Starts the sample's IoAppModule with WsRateLimitIoAdapter, as `sample/main-socket-io.ts`
 * does, on 127.0.0.1 and a free port; with `demoPage`, it also serves the demo page on
 * socket.io. `env` sets `WS_RATE_LIMIT_*` variables for the start-up only.
 */
export async function startIoSample(
  env: Record<string, string | undefined> = {},
  { demoPage = false }: { demoPage?: boolean } = {},
): Promise<RunningIoSample> {
  if (demoPage) ensureClientBuilt();
  const app = await withEnv({ WS_RATE_LIMIT_STORE: undefined, ...env }, async () => {
    const moduleRef = await Test.createTestingModule({ imports: [IoAppModule] }).compile();
    const created = moduleRef.createNestApplication<NestExpressApplication>({ logger: false });
    created.useWebSocketAdapter(new WsRateLimitIoAdapter(created));
    if (demoPage) serveDemoPage(created, 'socket.io');
    await created.init();
    return created;
  });
  await app.listen(0, '127.0.0.1');
  const port = (app.getHttpServer().address() as AddressInfo).port;
  return {
    app,
    port,
    url: `http://127.0.0.1:${port}`,
    pageUrl: `http://127.0.0.1:${port}/`,
    close: () => app.close(),
  };
}
