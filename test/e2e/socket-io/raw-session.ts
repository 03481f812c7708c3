/** A raw Engine.IO session over a plain WebSocket, below socket.io-client (hostile packets). */
import WebSocket from 'ws';
import { waitFor } from '../../support/io-client.js';

/** A raw Engine.IO WebSocket session: every text frame it received, in order. */
export interface RawSession {
  readonly socket: WebSocket;
  readonly frames: string[];
  closed: number | undefined;
  send(packet: string | Buffer): void;
  /** Waits for a frame matching `test`, from index `from` on. */
  waitFrame(test: (frame: string) => boolean, what: string, timeoutMs?: number): Promise<string>;
}

/** Opens a session and joins `namespaces` (each waits for its CONNECT answer). */
export async function rawSession(port: number, namespaces: string[] = ['/']): Promise<RawSession> {
  const socket = new WebSocket(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`);
  socket.on('error', () => undefined);
  const session: RawSession = {
    socket,
    frames: [],
    closed: undefined,
    send: (packet) => socket.send(packet),
    async waitFrame(test, what, timeoutMs = 10_000) {
      let found: string | undefined;
      await waitFor(() => (found = session.frames.find(test)) !== undefined, timeoutMs, what);
      return found!;
    },
  };
  socket.on('message', (data: Buffer, binary: boolean) => {
    const text = binary ? `<binary ${data.length}>` : data.toString();
    if (text === '2') socket.send('3'); // answer Engine.IO pings
    session.frames.push(text);
  });
  socket.on('close', (code: number) => (session.closed = code));
  await session.waitFrame((frame) => frame.startsWith('0{'), 'the Engine.IO open packet');
  for (const nsp of namespaces) {
    socket.send(nsp === '/' ? '40' : `40${nsp},`);
    const prefix = nsp === '/' ? '40{' : `40${nsp},{`;
    await session.waitFrame((frame) => frame.startsWith(prefix), `connect to ${nsp}`);
  }
  return session;
}
