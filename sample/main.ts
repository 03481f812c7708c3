// #region main
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { WsRateLimitAdapter } from 'nestjs-ws-rate-limit';
import { AppModule } from './app.module.js';
import { serveDemoPage } from './demo-page.js';

async function bootstrap(): Promise<void> {
  const app = await NestFactory.create<NestExpressApplication>(AppModule);
  app.useWebSocketAdapter(new WsRateLimitAdapter(app));
  serveDemoPage(app); // the sample's demo page at http://localhost:PORT/ (not needed in your app)
  app.enableShutdownHooks();
  const port = Number(process.env.PORT ?? 8080);
  await app.listen(port);
  console.log(`Chat sample: ws://localhost:${port}, demo page: http://localhost:${port}/`);
}
void bootstrap();
// #endregion main
