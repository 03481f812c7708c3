import { request } from 'node:http';
import { connect, type Socket } from 'node:net';

/** The HTTP answer to an upgrade request that was refused. */
export interface UpgradeAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  upgraded: boolean;
}

/** Sends a WebSocket upgrade request and reports the status (101 when upgraded). */
export function upgrade(
  port: number,
  headers: Record<string, string> = {},
  localAddress = '127.0.0.1',
): Promise<UpgradeAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port,
      localAddress,
      path: '/',
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
        ...headers,
      },
    });
    req.on('upgrade', (res, socket: Socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, headers: res.headers, upgraded: true });
    });
    req.on('response', (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, headers: res.headers, upgraded: false });
    });
    req.on('error', reject);
    req.end();
  });
}

/** A raw TCP connection to a loopback port. */
export function rawSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => resolve(socket));
    socket.on('error', reject);
  });
}

/**
 * Opens `count` TCP connections that send nothing (handshakes the server is waiting on) and
 * returns how many of them the server ended within `waitMs`; every one is destroyed after.
 */
export async function connectionsEndedByServer(port: number, count: number, waitMs: number): Promise<number> {
  const sockets = await Promise.all(Array.from({ length: count }, () => rawSocket(port)));
  const ended = await Promise.all(
    sockets.map(
      (socket) =>
        new Promise<boolean>((resolve) => {
          socket.on('error', () => undefined);
          socket.once('close', () => resolve(true));
          setTimeout(() => resolve(false), waitMs).unref();
        }),
    ),
  );
  for (const socket of sockets) socket.destroy();
  return ended.filter(Boolean).length;
}
