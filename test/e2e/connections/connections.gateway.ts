import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { WsRateLimit, WsRateLimitService } from '../../../lib/index.js';

/** Counts connections the gateway saw, and reports whose budget a client spends. */
@WebSocketGateway()
@WsRateLimit()
export class ConnectionsGateway {
  static connections = 0;

  constructor(private readonly limiter: WsRateLimitService) {}

  handleConnection(): void {
    ConnectionsGateway.connections++;
  }

  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }

  @SubscribeMessage('whoami')
  async whoami(@ConnectedSocket() client: object) {
    const status = await this.limiter.status(client);
    return { event: 'whoami', data: status.tracker };
  }
}
