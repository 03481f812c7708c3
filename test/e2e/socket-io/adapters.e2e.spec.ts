import { afterAll, afterEach, describe, expect, it, jest } from '@jest/globals';
import { EventEmitter } from 'node:events';
import { Logger, type INestApplication } from '@nestjs/common';
import { IoAdapter } from '@nestjs/platform-socket.io';
import { AbstractWsAdapter, type MessageMappingProperties } from '@nestjs/websockets';
import { Test } from '@nestjs/testing';
import type { Observable } from 'rxjs';
import { WsRateLimitModule, WsRateLimitService } from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { connectIo, waitFor, type IoTestClient } from '../../support/io-client.js';
import { SocketIoGateway } from './socket-io.gateway.js';

const warnings: string[] = [];
const spies = (['log', 'warn', 'debug', 'error'] as const).map((level) =>
  jest.spyOn(Logger.prototype, level).mockImplementation(function (this: Logger, message: unknown) {
    if (level === 'warn' && (this as unknown as { context?: string }).context === 'WsRateLimit') {
      warnings.push(String(message));
    }
  }),
);
afterAll(() => {
  for (const spy of spies) spy.mockRestore();
});

const MODULE = WsRateLimitModule.forRoot({
  useEnv: false,
  tracker: 'connection',
  violations: { max: 3, windowMs: 60_000 },
});

/** An adapter of no socket library the limiter knows. */
class HomemadeAdapter extends AbstractWsAdapter {
  create(): object {
    return new EventEmitter();
  }
  override async close(): Promise<void> {}
  bindMessageHandlers(
    _client: unknown,
    _handlers: MessageMappingProperties[],
    _transform: (data: unknown) => Observable<unknown>,
  ): void {}
}

describe('the WebSocket adapter a gateway runs on', () => {
  let running: RunningApp | undefined;
  const clients: IoTestClient[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await running?.close();
    running = undefined;
    warnings.length = 0;
  });

  it('is a start-up error when the limiter cannot answer through it', async () => {
    const moduleRef = await Test.createTestingModule({ imports: [MODULE], providers: [SocketIoGateway] }).compile();
    const app: INestApplication = moduleRef.createNestApplication({ logger: false });
    app.useWebSocketAdapter(new HomemadeAdapter(app));
    try {
      await expect(app.init()).rejects.toThrow(
        /HomemadeAdapter is not supported: use WsRateLimitAdapter .* or WsRateLimitIoAdapter/,
      );
    } finally {
      await app.close();
    }
  });

  it("is NestJS's own IoAdapter: refusals answered, state freed on disconnect, a warning about the handshake", async () => {
    running = await startApp({ imports: [MODULE], providers: [SocketIoGateway] }, (app) => new IoAdapter(app));
    expect(warnings).toEqual([expect.stringContaining('Use WsRateLimitIoAdapter')]);
    const url = `http://127.0.0.1:${running.port}`;
    const client = await connectIo(url, 'websocket');
    clients.push(client);
    for (let i = 0; i < 5; i++) client.socket.emit('chat', { id: i });
    const answer = await client.socket.timeout(10_000).emitWithAck('ask', { id: 'with-ack' });
    expect(answer).toEqual({ answer: { id: 'with-ack' } });
    for (let i = 0; i < 4; i++) client.socket.emit('chat', { id: 5 + i });
    await client.disconnected();
    expect(client.of('ack')).toHaveLength(5);
    expect(client.of('rate_limit')).toHaveLength(3);
    expect(client.of('rate_limit')[0]).toMatchObject({ code: 'TYPE_LIMIT', messageType: 'chat' });
    expect(client.disconnectReason).toBe('io server disconnect');
    const service = running.app.get(WsRateLimitService);
    await waitFor(() => service.stats().connections === 0, 5000, 'state freed');
    expect(service.stats()).toMatchObject({ connections: 0, localKeys: 0 });
  });

  it('is WsRateLimitIoAdapter: no warning', async () => {
    running = await startApp(
      { imports: [MODULE], providers: [SocketIoGateway] },
      (app) => new WsRateLimitIoAdapter(app),
    );
    expect(warnings).toEqual([]);
  });
});
