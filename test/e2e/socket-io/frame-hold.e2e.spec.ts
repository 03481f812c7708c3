import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { HOLD_LIMIT } from '../../../lib/connection/frame-hold.js';
import { WsRateLimitModule } from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { connectIo, ENGINE_TRANSPORTS, IoTestClient } from '../../support/io-client.js';
import { settle } from '../../support/ws-client.js';
import { gate, GatedGateway, GatedGuard } from '../messages/hold.gateway.js';

/** `WsRateLimitIoAdapter` holds a socket's later events while its decision waits, as the ws adapter does. */
describe.each(ENGINE_TRANSPORTS)('events held while a decision waits, socket.io over %s', (transport) => {
  let running: RunningApp | undefined;
  const clients: IoTestClient[] = [];

  const start = async () => {
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, global: { capacity: 1000, refillRate: 1000 } })],
        providers: [GatedGateway, GatedGuard],
      },
      (app) => new WsRateLimitIoAdapter(app),
    );
  };
  const connect = async () => {
    const client = await connectIo(`http://127.0.0.1:${running!.port}`, transport);
    clients.push(client);
    return client;
  };

  beforeEach(() => gate.close());
  afterEach(async () => {
    gate.open();
    await Promise.all(clients.splice(0).map((client) => client.closeAndSettle()));
    await running?.close();
    running = undefined;
  });

  it('only the first event reaches the guard until its decision settles; then all, in order', async () => {
    await start();
    const client = await connect();
    for (let i = 0; i < 5; i++) client.socket.emit('chat', i);
    await settle(() => gate.calls >= 1, 300);
    // Without holding, each event was dispatched and the guard asked five times.
    expect(gate.calls).toBe(1);
    gate.open();
    await client.until(() => client.of('ack').length === 5);
    expect(client.of('ack')).toEqual([0, 1, 2, 3, 4]);
    expect(gate.handled).toEqual([0, 1, 2, 3, 4]);
  });

  it(`holds at most ${HOLD_LIMIT} events; every event is answered in order`, async () => {
    await start();
    const client = await connect();
    const count = HOLD_LIMIT + 40;
    for (let i = 0; i < count; i++) client.socket.emit('chat', i);
    await settle(() => gate.calls > 1, 300);
    expect(gate.calls).toBeGreaterThan(1);
    expect(gate.calls).toBeLessThanOrEqual(1 + HOLD_LIMIT);
    gate.open();
    await client.until(() => client.of('ack').length === count);
    expect(client.of('ack')).toEqual([...Array(count).keys()]);
  });
});
