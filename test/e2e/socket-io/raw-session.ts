/** A raw Engine.IO session over a plain WebSocket, below socket.io-client (hostile packets). */
import { afterEach, expect } from '@jest/globals';
import WebSocket from 'ws';
import { waitFor } from '../../support/io-client.js';
import { ioHarness } from '../../support/io-harness.js';

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

/**
 * An app on the io harness for raw sessions: `start` (after `reset`, which clears the test's
 * own counters) returns its URL and port; after each test the raw sessions are ended, the app
 * closed, and no uncaught exception or unhandled rejection may have happened meanwhile.
 */
export function rawHarness(reset: () => void) {
  const harness = ioHarness();
  const raws: RawSession[] = [];
  const faults: unknown[] = [];
  const onFault = (error: unknown): void => void faults.push(error);

  const start = async (gateways: object[], options: Parameters<typeof harness.start>[1] = {}) => {
    reset();
    faults.length = 0;
    process.on('uncaughtException', onFault);
    process.on('unhandledRejection', onFault);
    const url = await harness.start(gateways, options);
    return { url, port: Number(new URL(url).port) };
  };

  afterEach(async () => {
    for (const raw of raws.splice(0)) raw.socket.terminate();
    await harness.close();
    process.off('uncaughtException', onFault);
    process.off('unhandledRejection', onFault);
    expect(faults).toEqual([]);
  });

  return { harness, raws, start };
}
