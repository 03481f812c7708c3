import type { RateLimitTransport } from './transport.js';

/** `readyState` of an open WebSocket. */
const OPEN = 1;
/** `readyState` of a WebSocket whose close has passed. */
const CLOSED = 3;
const noop = (): void => undefined;

/** The parts of a `ws` WebSocket the limiter uses. */
export interface WsClientLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: string, callback?: (error?: Error) => void): void;
  close(code?: number, reason?: string): void;
  once(event: 'close', listener: () => void): unknown;
}

/** What `ws` adds beyond `WsClientLike`, used when present. */
interface WsExtras {
  terminate?(): void;
  ping?(): void;
  on?(event: 'pong', listener: () => void): unknown;
  _socket?: { remoteAddress?: string };
}

/** The `ws` transport: frames are JSON text, closes are WebSocket close frames. */
export const wsTransport: RateLimitTransport<WsClientLike> = Object.freeze({
  name: 'ws',
  isOpen: (client: WsClientLike) => client.readyState === OPEN,
  isClosed: (client: WsClientLike) => client.readyState === CLOSED,
  bufferedBytes: (client: WsClientLike) => client.bufferedAmount,
  sendFrame(client: WsClientLike, frame: unknown): void {
    const text = JSON.stringify(frame) as string | undefined;
    // JSON writes nothing for some values (a `toJSON` returning undefined): not a frame.
    if (typeof text !== 'string') throw new TypeError('the frame has no JSON text');
    // The callback keeps a write error on a dying socket from being thrown.
    client.send(text, noop);
  },
  close(client: WsClientLike, code: number, reason: string): void {
    client.close(code, reason);
  },
  terminate(client: WsClientLike, code: number, reason: string): void {
    const { terminate } = client as WsClientLike & WsExtras;
    if (typeof terminate === 'function') terminate.call(client);
    else client.close(code, reason);
  },
  peerAddress: (client: WsClientLike) => (client as WsClientLike & WsExtras)._socket?.remoteAddress,
  onClose(client: WsClientLike, listener: () => void): void {
    client.once('close', listener);
  },
  liveness: Object.freeze({
    ping: (client: WsClientLike) => (client as WsClientLike & WsExtras).ping?.(),
    onPong(client: WsClientLike, listener: () => void): void {
      (client as WsClientLike & WsExtras).on?.('pong', listener);
    },
  }),
});
