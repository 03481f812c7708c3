// #region module
import { Module } from '@nestjs/common';
import { ConfigModule } from '@nestjs/config';
import { WsRateLimitModule } from 'nestjs-ws-rate-limit';
import { ChatGateway } from './chat.gateway.js';

@Module({
  imports: [ConfigModule.forRoot(), WsRateLimitModule.forRoot()],
  providers: [ChatGateway],
})
export class AppModule {}
// #endregion module
