import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { HOLD_LIMIT } from '../../../lib/connection/frame-hold.js';
import { WsRateLimitAdapter, WsRateLimitModule } from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { settle, TestClient } from '../../support/ws-client.js';
import { gate, GatedGateway, GatedGuard } from './hold.gateway.js';

/**
 * While a connection's decision waits (here on a tracker the test holds back; on Redis, on
 * the round trip), its later frames wait as received instead of each entering NestJS.
 */
describe('frames held while a decision waits', () => {
  let running: RunningApp | undefined;
  const clients: TestClient[] = [];

  const start = async () => {
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, global: { capacity: 1000, refillRate: 1000 } })],
        providers: [GatedGateway, GatedGuard],
      },
      (app) => new WsRateLimitAdapter(app),
    );
  };
  const connect = async () => {
    const client = await TestClient.connect(running!.url, { perMessageDeflate: false });
    clients.push(client);
    return client;
  };
  /** Sends chats in one TCP write, so that the server reads them in one go. */
  const burst = (client: TestClient, count: number) =>
    client.inOneWrite(() => {
      for (let i = 0; i < count; i++) client.send('chat', i);
    });

  beforeEach(() => gate.close());
  afterEach(async () => {
    gate.open();
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await running?.close();
    running = undefined;
  });

  it('a burst in one read: only the first frame reaches the guard until its decision settles; then all, in order', async () => {
    await start();
    const client = await connect();
    burst(client, 5);
    await settle(() => gate.calls >= 1);
    // Without holding, NestJS set up all five and the guard was asked five times.
    expect(gate.calls).toBe(1);
    expect(gate.handled).toEqual([]);
    gate.open();
    const acks = await client.waitForEvent('ack', 5);
    expect(acks.map((frame) => frame.data)).toEqual([0, 1, 2, 3, 4]);
    expect(gate.handled).toEqual([0, 1, 2, 3, 4]);
    expect(gate.calls).toBe(5);
  });

  it('another connection is not held by this one', async () => {
    await start();
    const waiting = await connect();
    waiting.send('chat', 'a');
    await settle(() => gate.calls >= 1);
    const other = await connect();
    other.send('chat', 'b');
    await settle(() => gate.calls >= 2);
    // Both decisions wait on the gate; each connection holds only its own later frames.
    expect(gate.calls).toBe(2);
    gate.open();
    await other.waitForEvent('ack');
    await waiting.waitForEvent('ack');
  });

  it(`holds at most ${HOLD_LIMIT} frames: the next one releases them all, and every frame is answered in order`, async () => {
    await start();
    const client = await connect();
    const count = HOLD_LIMIT + 40;
    burst(client, count);
    await settle(() => gate.calls >= 1 + HOLD_LIMIT);
    // The first frame, then the HOLD_LIMIT released side by side; the rest are held again.
    expect(gate.calls).toBe(1 + HOLD_LIMIT);
    gate.open();
    const acks = await client.waitForEvent('ack', count);
    expect(acks.map((frame) => frame.data)).toEqual([...Array(count).keys()]);
    expect(gate.calls).toBe(count);
  });
});
