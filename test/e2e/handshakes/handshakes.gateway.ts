import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { IncomingMessage } from 'node:http';
import { WsRateLimit } from '../../../lib/index.js';

/** A gateway with its own verifyClient: upgrades carrying `x-reject` are refused by it. */
@WebSocketGateway({ verifyClient: (info: { req: IncomingMessage }) => info.req.headers['x-reject'] === undefined })
@WsRateLimit()
export class HandshakesGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}
