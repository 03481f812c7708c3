import type { NestExpressApplication } from '@nestjs/platform-express';
import { existsSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/**
 * Serves the sample's demo page on the application's own HTTP server (the port the
 * gateway shares): `sample/public` at `/`, and the package's browser client, as built
 * (`dist/esm/client`), at `/client/`. Browsers load the client's ES modules as they are:
 * their imports are relative `.js` paths, so no bundler is involved.
 *
 * The directories are found through the package's own name, as an app would find the
 * package; the sample runs from this repository, from source in the tests and from
 * `dist/sample` with `npm start`, and both resolve to the same root.
 *
 * The page follows the server's transport, which it reads from `/demo-transport.json`: on
 * `ws` it uses the package's client; on `socket.io` it loads the socket.io client that
 * socket.io serves itself (`/socket.io/socket.io.js`, its default `serveClient`).
 */
export function serveDemoPage(app: NestExpressApplication, transport: 'ws' | 'socket.io' = 'ws'): void {
  const root = dirname(createRequire(import.meta.url).resolve('nestjs-ws-rate-limit/package.json'));
  const client = join(root, 'dist', 'esm', 'client');
  if (!existsSync(join(client, 'index.js'))) {
    throw new Error(`The demo page needs the built client in ${client}: run \`npm run build\` first`);
  }
  app.useStaticAssets(client, { prefix: '/client/', index: false, redirect: false });
  // The client imports the frame protocol it shares with the server from `../protocol/`.
  app.useStaticAssets(join(root, 'dist', 'esm', 'protocol'), { prefix: '/protocol/', index: false, redirect: false });
  const body = JSON.stringify({ transport });
  app.use('/demo-transport.json', (_request: IncomingMessage, response: ServerResponse) => {
    response.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(body);
  });
  app.useStaticAssets(join(root, 'sample', 'public'), { index: 'index.html', redirect: false });
}
