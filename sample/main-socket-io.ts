// #region main-io
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { WsRateLimitIoAdapter } from 'nestjs-ws-rate-limit/socket.io';
import { IoAppModule } from './app-io.module.js';
import { serveDemoPage } from './demo-page.js';

async function bootstrap(): Promise<void> {
  const app = await NestFactory.create<NestExpressApplication>(IoAppModule);
  app.useWebSocketAdapter(new WsRateLimitIoAdapter(app));
  serveDemoPage(app, 'socket.io'); // the demo page, on socket.io (not needed in your app)
  app.enableShutdownHooks();
  const port = Number(process.env.PORT ?? 8080);
  await app.listen(port);
  console.log(`Chat sample (socket.io): http://localhost:${port}/socket.io/, demo page: http://localhost:${port}/`);
}
void bootstrap();
// #endregion main-io
