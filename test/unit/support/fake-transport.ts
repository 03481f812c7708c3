import { ConnectionState } from '../../../lib/connection/connection-state.js';
import type { RateLimitTransport } from '../../../lib/transports/transport.js';

/** A socket as the fake transport sees it: what was sent to it and how it ended. */
export interface FakeSocket {
  open: boolean;
  buffered: number;
  sent: unknown[];
  closed?: { code: number; reason: string; terminated: boolean };
  onClose: Array<() => void>;
}

export function fakeSocket(): FakeSocket {
  return { open: true, buffered: 0, sent: [], onClose: [] };
}

/** A transport over `FakeSocket`s, for the core's unit tests (no socket library, no NestJS). */
export const fakeTransport: RateLimitTransport<FakeSocket> = {
  name: 'fake',
  isOpen: (socket) => socket.open,
  bufferedBytes: (socket) => socket.buffered,
  sendFrame: (socket, frame) => void socket.sent.push(frame),
  close(socket, code, reason) {
    socket.open = false;
    socket.closed = { code, reason, terminated: false };
    for (const listener of socket.onClose.splice(0)) listener();
  },
  terminate(socket, code, reason) {
    socket.open = false;
    socket.closed = { code, reason, terminated: true };
    for (const listener of socket.onClose.splice(0)) listener();
  },
  peerAddress: () => '127.0.0.1',
  onClose: (socket, listener) => void socket.onClose.push(listener),
};

let nextId = 1;

/** A connection record attached to a fake socket. */
export function fakeConnection(socket: FakeSocket, address = '127.0.0.1'): ConnectionState {
  const state = new ConnectionState(nextId++, address, address, undefined, false);
  state.client = socket;
  state.transport = fakeTransport as RateLimitTransport;
  return state;
}
