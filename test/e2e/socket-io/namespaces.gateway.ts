import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway, WebSocketServer } from '@nestjs/websockets';
import type { Namespace, Socket } from 'socket.io';
import { Throttle, WsRateLimit } from '../../../lib/index.js';

/** A gateway on its own namespace whose sockets join rooms and talk in them. */
@WebSocketGateway({ namespace: '/room' })
@WsRateLimit()
export class RoomGateway {
  @WebSocketServer() server!: Namespace;

  @SubscribeMessage('join')
  join(@ConnectedSocket() socket: Socket, @MessageBody() room: string) {
    void socket.join(room);
    return { event: 'joined', data: room };
  }

  @Throttle({ type: 'say', capacity: 3, refillRate: 0.1 })
  @SubscribeMessage('say')
  say(@MessageBody() data: { room: string; text: string }) {
    this.server.to(data.room).emit('said', data.text);
  }
}
