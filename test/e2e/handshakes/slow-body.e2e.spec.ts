import { afterEach, describe, expect, it } from '@jest/globals';
import { connect, type Socket } from 'node:net';
import { WsRateLimitAdapter, WsRateLimitModule, type WsRateLimitModuleOptions } from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { sleep, TestClient } from '../../support/ws-client.js';
import { HandshakesGateway } from './handshakes.gateway.js';

/**
 * C-33 (issue 10, item 4): the pending-handshake cap and the handshake timeout cover the
 * whole HTTP exchange, not only its headers. A request that announces a large body and
 * sends it a byte at a time holds its slot until the exchange ends, and is cut off when
 * the timeout passes.
 */
describe('slow request bodies (RELIABILITY C-33)', () => {
  let running: RunningApp | undefined;
  const sockets: Socket[] = [];

  const start = async (options: WsRateLimitModuleOptions) => {
    running = await startApp(
      { imports: [WsRateLimitModule.forRoot({ useEnv: false, ...options })], providers: [HandshakesGateway] },
      (app) => new WsRateLimitAdapter(app),
    );
    return running;
  };

  afterEach(async () => {
    for (const socket of sockets.splice(0)) socket.destroy();
    await running?.close();
    running = undefined;
  });

  /** Opens a socket that sends a request's headers announcing `length` bytes of body, then dribbles it. */
  const slowPost = (port: number, length: number): Promise<Socket> =>
    new Promise((resolve) => {
      const socket = connect({ port, host: '127.0.0.1' }, () => {
        socket.write(
          `POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: ${length}\r\n\r\n`,
        );
        resolve(socket);
      });
      // A refused or cut-off socket ends with a reset or an early close: both are expected here.
      socket.on('error', () => undefined);
      socket.resume();
      sockets.push(socket);
    });

  const open = () => sockets.filter((socket) => !socket.destroyed && !socket.readableEnded).length;

  it('keeps at most the cap open and cuts every exchange off at the timeout', async () => {
    const { port, url } = await start({
      handshakeTimeoutMs: 1000,
      maxPendingHandshakesPerIp: 10,
      connection: { capacity: 1000, refillRate: 1000 },
    });
    for (let i = 0; i < 300; i++) await slowPost(port, 100_000_000);
    // One byte of body every 100 ms on every socket still open, for 2.5 s: well past the timeout.
    const started = Date.now();
    let answeredOther = false;
    while (Date.now() - started < 2500) {
      for (const socket of sockets) if (!socket.destroyed && socket.writable) socket.write('x');
      await sleep(100);
      // Never more than the cap holding a slot at once.
      expect(open()).toBeLessThanOrEqual(10);
      if (!answeredOther) {
        // The server still answers a client from another address during the attack.
        const other = await TestClient.connect(url, { localAddress: '127.0.0.2' });
        other.send('echo', 2);
        expect((await other.waitForEvent('echo'))[0]!.data).toBe(2);
        await other.close();
        answeredOther = true;
      }
    }
    await sleep(200);
    expect(open()).toBe(0);
    // The slots came back: a WebSocket client from the same address still gets in.
    const client = await TestClient.connect(url);
    client.send('echo', 1);
    expect((await client.waitForEvent('echo'))[0]!.data).toBe(1);
    await client.close();
  });

  it('holds the slot until a request body has arrived, then gives it back', async () => {
    const { port, url } = await start({ handshakeTimeoutMs: 5000, maxPendingHandshakesPerIp: 1 });
    const socket = await slowPost(port, 4);
    socket.write('ab');
    await sleep(100);
    // The first request is still sending its body: a second connection is over the cap of 1.
    const second = await slowPost(port, 4);
    for (let i = 0; i < 100 && !second.destroyed; i++) await sleep(20);
    expect(second.destroyed).toBe(true);
    // The body completes (the server answered when the headers arrived): the slot is free
    // again, while the kept-alive socket stays open.
    socket.write('cd');
    await sleep(200);
    expect(socket.destroyed).toBe(false);
    const client = await TestClient.connect(url);
    await client.close();
  });
});
