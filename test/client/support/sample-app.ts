import type { NestExpressApplication } from '@nestjs/platform-express';
import { Test } from '@nestjs/testing';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { WsRateLimitAdapter, WsRateLimitService, type RateLimitEvent } from 'nestjs-ws-rate-limit';
import { AppModule } from '../../../sample/app.module.js';
import { serveDemoPage } from '../../../sample/demo-page.js';
import { withEnv } from '../../support/app.js';
import { ensureBuilt, ROOT } from '../../support/build.js';

/** The sample chat server, running in this process on a free loopback port. */
export interface RunningSample {
  readonly app: NestExpressApplication;
  readonly port: number;
  /** The gateway: `ws://127.0.0.1:<port>`. */
  readonly url: string;
  /** The demo page (when served): `http://127.0.0.1:<port>/`. */
  readonly pageUrl: string;
  /** Everything the limiter published, with the `performance.now()` it was published at. */
  readonly events: ReadonlyArray<{ readonly at: number; readonly event: RateLimitEvent }>;
  close(): Promise<void>;
}

/**
 * Starts the sample's AppModule with WsRateLimitAdapter, as `sample/main.ts` does, on
 * 127.0.0.1 and a free port; with `demoPage`, it also serves the demo page the way
 * `main.ts` does. `env` sets `WS_RATE_LIMIT_*` variables for the start-up only.
 */
export async function startSample(
  env: Record<string, string | undefined> = {},
  { demoPage = false }: { demoPage?: boolean } = {},
): Promise<RunningSample> {
  if (demoPage) ensureClientBuilt();
  const app = await withEnv({ WS_RATE_LIMIT_STORE: undefined, ...env }, async () => {
    const moduleRef = await Test.createTestingModule({ imports: [AppModule] }).compile();
    const created = moduleRef.createNestApplication<NestExpressApplication>({ logger: false });
    created.useWebSocketAdapter(new WsRateLimitAdapter(created));
    if (demoPage) serveDemoPage(created);
    await created.init();
    return created;
  });
  const events: Array<{ at: number; event: RateLimitEvent }> = [];
  const subscription = app
    .get(WsRateLimitService)
    .events$.subscribe((event) => events.push({ at: performance.now(), event }));
  await app.listen(0, '127.0.0.1');
  const port = (app.getHttpServer().address() as AddressInfo).port;
  return {
    app,
    port,
    url: `ws://127.0.0.1:${port}`,
    pageUrl: `http://127.0.0.1:${port}/`,
    events,
    close: async () => {
      subscription.unsubscribe();
      await app.close();
    },
  };
}

/**
 * The demo page serves the client as built in dist/esm/client: build the package unless
 * every file of lib/client has a build at least as new.
 */
export function ensureClientBuilt(): void {
  ensureBuilt('package');
  const sources = join(ROOT, 'lib', 'client');
  const built = join(ROOT, 'dist', 'esm', 'client');
  const stale = readdirSync(sources)
    .filter((file) => file.endsWith('.ts'))
    .some((file) => {
      const output = join(built, file.replace(/\.ts$/, '.js'));
      return !existsSync(output) || statSync(output).mtimeMs < statSync(join(sources, file)).mtimeMs;
    });
  if (stale) execFileSync('npm', ['run', 'build', '--silent'], { cwd: ROOT, stdio: 'pipe' });
}
