import { Module } from '@nestjs/common';
import { ConfigModule } from '@nestjs/config';
import { WsRateLimitModule } from 'nestjs-ws-rate-limit';
import { ChatIoGateway } from './chat-io.gateway.js';
import { MetricsController } from './metrics.controller.js';

/** The sample on socket.io: the same module as `AppModule`, with the socket.io gateway. */
@Module({
  imports: [ConfigModule.forRoot(), WsRateLimitModule.forRoot()],
  controllers: [MetricsController],
  providers: [ChatIoGateway],
})
export class IoAppModule {}
