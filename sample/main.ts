// #region main
import { NestFactory } from '@nestjs/core';
import { WsRateLimitAdapter } from 'nestjs-ws-rate-limit';
import { AppModule } from './app.module.js';

async function bootstrap(): Promise<void> {
  const app = await NestFactory.create(AppModule);
  app.useWebSocketAdapter(new WsRateLimitAdapter(app));
  app.enableShutdownHooks();
  const port = Number(process.env.PORT ?? 8080);
  await app.listen(port);
  console.log(`Chat sample: ws://localhost:${port}`);
}
void bootstrap();
// #endregion main
