import {
  ConnectedSocket,
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  WebSocketServer,
  type OnGatewayConnection,
  type OnGatewayDisconnect,
} from '@nestjs/websockets';
import type { Server, Socket } from 'socket.io';
import { Throttle, WsRateLimit, WsRateLimitService } from '../../../lib/index.js';

/** What the C-35 gateways saw, counted on the server. */
export const seen = { connections: 0, disconnections: 0, reasons: [] as string[] };

/** Resets `seen` for a new test. */
export function resetSeen(): void {
  seen.connections = 0;
  seen.disconnections = 0;
  seen.reasons = [];
}

/**
 * The C-35 socket.io gateway: counts `handleConnection`/`handleDisconnect` (and the server's
 * disconnect reasons); `chat` replies
 * with an `ack` event (a budget of 5), `whoami` tells whose budget the socket spends,
 * `broadcast` emits `news` to every socket of the server (through its adapter).
 */
@WebSocketGateway()
@WsRateLimit()
export class C35Gateway implements OnGatewayConnection, OnGatewayDisconnect {
  @WebSocketServer() server!: Server;

  constructor(private readonly limiter: WsRateLimitService) {}

  handleConnection(socket: Socket): void {
    seen.connections++;
    socket.once('disconnect', (reason: string) => seen.reasons.push(reason));
  }

  handleDisconnect(): void {
    seen.disconnections++;
  }

  @Throttle({ type: 'chat', capacity: 5, refillRate: 0.000001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @SubscribeMessage('whoami')
  async whoami(@ConnectedSocket() socket: Socket) {
    const status = await this.limiter.status(socket);
    return { event: 'whoami', data: status.tracker };
  }

  @SubscribeMessage('broadcast')
  broadcast(@MessageBody() data: unknown) {
    this.server.emit('news', data);
    return { event: 'sent', data };
  }
}

/** The same gateway with a fast Engine.IO heartbeat: a silent client times out in ~400 ms. */
@WebSocketGateway({ pingInterval: 200, pingTimeout: 200 })
@WsRateLimit()
export class FastPingGateway extends C35Gateway {}
