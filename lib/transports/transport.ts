import type { AnswerSlot } from '../connection/answer-order.js';
import type { RateLimitFrameInfo } from '../protocol/rate-limit-protocol.js';

/**
 * What the limiter needs from a socket library, and nothing more: the core (pipeline,
 * enforcer, connection registry) decides and answers through it without knowing which
 * library carries the messages. One transport object serves every socket of its kind
 * (methods take the socket), so a connection costs no closures.
 *
 * `ws` is the first implementation (`wsTransport`). A socket.io one answers `sendFrame`
 * with a `rate_limit` event (and the pending acknowledgement), `close` with a disconnect,
 * `onClose` with `disconnect`, and leaves liveness to Engine.IO's own pings.
 */
export interface RateLimitTransport<Client extends object = object> {
  /** Names the transport in messages and metrics. */
  readonly name: string;
  /** Whether the socket can still be written to. */
  isOpen(client: Client): boolean;
  /**
   * Whether the socket has closed for good (its close event has passed): a socket met only
   * then is not counted as open. Transports that cannot tell it from one not yet open
   * (socket.io, in a namespace middleware) leave it out.
   */
  isClosed?(client: Client): boolean;
  /** Bytes queued on the socket and not yet taken by the peer (slow-consumer check). */
  bufferedBytes(client: Client): number;
  /**
   * Sends one answer: `frame` is what the frame builder (or the limiter, for `error`
   * frames) made; `info` is set for `rate_limit` answers, for transports with their own
   * event shape; `slot` is the answered message's place in the connection's answers, whose
   * `ack` (socket.io) takes the answer instead of an event. Never throws.
   */
  sendFrame(client: Client, frame: unknown, info?: RateLimitFrameInfo, slot?: AnswerSlot): void;
  /**
   * Closes the socket with a close code and reason (after what was sent before). Where one
   * connection carries several sockets (`carried`), it ends them all, and tells each why.
   */
  close(client: Client, code: number, reason: string): void;
  /**
   * The other sockets the socket's connection carries, which `close` ends with it (socket.io:
   * the sockets of the other namespaces multiplexed on its Engine.IO connection). Absent
   * where a connection carries one socket.
   */
  carried?(client: Client): Iterable<Client>;
  /**
   * Ends the socket at once (a slow consumer: a close frame would queue behind its
   * backlog); a library that cannot closes it with `code` and `reason`.
   */
  terminate(client: Client, code: number, reason: string): void;
  /** The peer address the socket itself reports, when no upgrade request told one. */
  peerAddress(client: Client): string | undefined;
  /** Calls `listener` once when the socket has closed, whichever way. */
  onClose(client: Client, listener: () => void): void;
  /**
   * Liveness, for transports whose protocol has no heartbeat of its own: sends a ping and
   * reports its answer. Absent when the library keeps connections alive itself.
   */
  readonly liveness?: {
    ping(client: Client): void;
    onPong(client: Client, listener: () => void): void;
  };
}
