import { afterEach, describe, expect, it } from '@jest/globals';
import { Manager, type Socket as ClientSocket } from 'socket.io-client';
import { WsRateLimitModule, WsRateLimitService, type WsRateLimitModuleOptions } from '../../../lib/index.js';
import { WsRateLimitIoAdapter } from '../../../lib/socket-io.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { connectIo, ENGINE_TRANSPORTS, IoTestClient, waitFor } from '../../support/io-client.js';
import { RoomGateway } from './namespaces.gateway.js';
import { SocketIoGateway } from './socket-io.gateway.js';

/** Issue 11: namespaces and rooms, on both Engine.IO transports. */
describe.each(ENGINE_TRANSPORTS)('namespaces and rooms over %s', (transport) => {
  let running: RunningApp | undefined;
  const clients: IoTestClient[] = [];
  const managers: Manager[] = [];

  const start = async (options: WsRateLimitModuleOptions = {}) => {
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, tracker: 'connection', ...options })],
        providers: [SocketIoGateway, RoomGateway],
      },
      (app) => new WsRateLimitIoAdapter(app),
    );
    return `http://127.0.0.1:${running.port}`;
  };
  const connect = async (url: string) => {
    const client = await connectIo(url, transport);
    clients.push(client);
    return client;
  };
  const stats = () => running!.app.get(WsRateLimitService).stats();

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    for (const manager of managers.splice(0)) manager.engine?.close();
    await running?.close();
    running = undefined;
  });

  it("limits a namespaced gateway's events; a room hears only what was admitted", async () => {
    const url = await start();
    const speaker = await connect(`${url}/room`);
    const listener = await connect(`${url}/room`);
    for (const client of [speaker, listener]) {
      client.socket.emit('join', 'lobby');
      await client.until(() => client.of('joined').length === 1);
    }
    for (let i = 0; i < 5; i++) speaker.socket.emit('say', { room: 'lobby', text: `m${i}`, id: i });
    await speaker.until(() => speaker.of('rate_limit').length === 2);
    await listener.until(() => listener.of('said').length === 3);
    expect(listener.of('said')).toEqual(['m0', 'm1', 'm2']);
    expect((speaker.of('rate_limit') as Array<{ id: number; messageType: string }>).map((info) => info.id)).toEqual([
      3, 4,
    ]);
    expect(listener.of('rate_limit')).toEqual([]);
  });

  it('charges events no handler of the namespace takes to that socket', async () => {
    const url = await start({ global: { capacity: 3, refillRate: 0.1 } });
    const client = await connect(`${url}/room`);
    // `chat` is the root namespace's event: on /room no handler takes it.
    for (let i = 0; i < 5; i++) client.socket.emit('chat', { id: i });
    await client.until(() => client.of('rate_limit').length === 2);
    expect(client.of('rate_limit')).toEqual([
      expect.objectContaining({ code: 'GLOBAL_LIMIT', id: 3 }),
      expect.objectContaining({ code: 'GLOBAL_LIMIT', id: 4 }),
    ]);
  });

  it('counts one connection per Engine.IO connection, whatever its namespaces, and frees them all', async () => {
    const url = await start({ maxConnectionsPerIp: 1 });
    const manager = new Manager(url, { transports: [transport], upgrade: false, reconnection: false, forceNew: true });
    managers.push(manager);
    const sockets: ClientSocket[] = [manager.socket('/'), manager.socket('/room')];
    await Promise.all(
      sockets.map(
        (socket) =>
          new Promise<void>((resolve, reject) => {
            socket.once('connect', () => resolve());
            socket.once('connect_error', reject);
            socket.connect();
          }),
      ),
    );
    sockets[0]!.emit('chat', { id: 'root' });
    sockets[1]!.emit('join', 'lobby');
    const heard: string[] = [];
    sockets[0]!.on('ack', () => heard.push('ack'));
    sockets[1]!.on('joined', () => heard.push('joined'));
    await waitFor(() => heard.length === 2);
    expect(stats().connections).toBe(2);
    // The cap of one is the Engine.IO connection's: a second one is refused.
    const refused = new IoTestClient(url, transport);
    clients.push(refused);
    await expect(refused.connected()).rejects.toThrow();
    for (const socket of sockets) socket.disconnect();
    await waitFor(() => stats().connections === 0, 5000, 'sockets freed');
    expect(stats()).toMatchObject({ connections: 0, localKeys: 0 });
    // The slot comes back with the Engine.IO connection.
    manager.engine.close();
    const again = await waitForAdmission(url, transport);
    clients.push(again);
  });

  it("refuses a connection to a gateway's namespace in close mode, with the reason", async () => {
    const url = await start({ connection: { capacity: 1, refillRate: 0.01 }, connectionRefusal: 'close' });
    await connect(`${url}/room`);
    const refused = new IoTestClient(`${url}/room`, transport);
    clients.push(refused);
    await expect(refused.connected()).rejects.toThrow('Connection rate limit exceeded');
    expect(refused.connectError?.data).toMatchObject({ code: 'rate', retryAfter: expect.any(Number) });
  });
});

/** Connects once the open-connection slot is back (the Engine.IO close is seen a moment later). */
async function waitForAdmission(url: string, transport: 'websocket' | 'polling'): Promise<IoTestClient> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return await connectIo(url, transport);
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}
