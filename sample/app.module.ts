// #region module
import { Module } from '@nestjs/common';
import { ConfigModule } from '@nestjs/config';
import { WsRateLimitModule } from 'nestjs-ws-rate-limit';
import { ChatGateway } from './chat.gateway.js';
import { MetricsController } from './metrics.controller.js';

@Module({
  imports: [ConfigModule.forRoot(), WsRateLimitModule.forRoot()],
  controllers: [MetricsController],
  providers: [ChatGateway],
})
export class AppModule {}
// #endregion module
