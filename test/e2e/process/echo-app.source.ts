/**
 * The source of a small app run in its own process: an echo gateway behind
 * WsRateLimitAdapter, configured from WS_RATE_LIMIT_* variables. It answers IPC requests:
 * `memory` (process.memoryUsage()), `stats` (WsRateLimitService.stats()) and `block`
 * (WsRateLimitService.block(target, ms)).
 * CLOCK_OFFSET_MS skews its wall clock (Date.now), as a badly synchronised host would be.
 */
export const ECHO_APP = `
const offset = Number(process.env.CLOCK_OFFSET_MS ?? 0);
if (offset !== 0) {
  const real = Date.now;
  Date.now = () => real() + offset;
}
import { Module } from '@nestjs/common';
import { ConfigModule } from '@nestjs/config';
import { NestFactory } from '@nestjs/core';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { WsRateLimit, WsRateLimitAdapter, WsRateLimitModule, WsRateLimitService } from 'nestjs-ws-rate-limit';
import type { AddressInfo } from 'node:net';

@WebSocketGateway()
@WsRateLimit()
class EchoGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}

@Module({ imports: [ConfigModule.forRoot({ ignoreEnvFile: true }), WsRateLimitModule.forRoot()], providers: [EchoGateway] })
class AppModule {}

async function main(): Promise<void> {
  const app = await NestFactory.create(AppModule, { logger: ['error', 'warn'] });
  app.useWebSocketAdapter(new WsRateLimitAdapter(app));
  app.enableShutdownHooks();
  await app.listen(0, '127.0.0.1');
  const limiter = app.get(WsRateLimitService);
  process.on('message', (message: { id: number; type: string; target?: string; ms?: number }) => {
    if (message.type === 'memory') process.send!({ id: message.id, ...process.memoryUsage() });
    if (message.type === 'stats') process.send!({ id: message.id, ...limiter.stats() });
    if (message.type === 'block') {
      void limiter.block(message.target!, message.ms!).then(() => process.send!({ id: message.id }));
    }
  });
  process.send!({ type: 'listening', port: (app.getHttpServer().address() as AddressInfo).port });
}
void main();
`;
