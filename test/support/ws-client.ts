import WebSocket from 'ws';

/** A parsed frame received by a test client. */
export interface Frame {
  event?: string;
  data?: any;
  [key: string]: unknown;
}

/** How a socket closed. */
export interface CloseInfo {
  code: number;
  reason: string;
}

/**
 * A real `ws` client that records every frame it receives and lets a test wait for frames
 * or for the close. Every wait has a timeout, so a failing test fails instead of hanging.
 */
export class TestClient {
  readonly frames: Frame[] = [];
  readonly closed: Promise<CloseInfo>;
  private waiters: Array<() => void> = [];

  private constructor(readonly socket: WebSocket) {
    socket.on('message', (data, isBinary) => {
      const text = isBinary ? '' : data.toString();
      try {
        this.frames.push(JSON.parse(text) as Frame);
      } catch {
        this.frames.push({ raw: text });
      }
      this.wake();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.once('close', (code, reason) => {
        resolve({ code, reason: reason.toString() });
        this.wake();
      }),
    );
  }

  /** Connects and waits for the socket to open. */
  static connect(url: string, options: WebSocket.ClientOptions = {}): Promise<TestClient> {
    const socket = new WebSocket(url, options);
    const client = new TestClient(socket);
    return new Promise((resolve, reject) => {
      socket.once('open', () => resolve(client));
      socket.once('error', reject);
      socket.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    });
  }

  /** Sends a NestJS message. */
  send(event: string, data: unknown = {}): void {
    this.socket.send(JSON.stringify({ event, data }));
  }

  /** Sends raw text or bytes. */
  sendRaw(data: string | Buffer): void {
    this.socket.send(data);
  }

  /** Runs `send` with the TCP socket corked: its frames go in one write, read by the server in one go. */
  inOneWrite(send: () => void): void {
    const tcp = (this.socket as unknown as { _socket: { cork(): void; uncork(): void } })._socket;
    tcp.cork();
    try {
      send();
    } finally {
      tcp.uncork();
    }
  }

  /** Frames of one event. */
  events(event: string): Frame[] {
    return this.frames.filter((frame) => frame.event === event);
  }

  /** Waits until `count` frames match (or the socket closed), then returns them. */
  async waitFor(predicate: (frame: Frame) => boolean, count = 1, timeoutMs = 10_000): Promise<Frame[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const matched = this.frames.filter(predicate);
      if (matched.length >= count) return matched;
      if (this.socket.readyState === WebSocket.CLOSED) {
        throw new Error(`socket closed after ${matched.length}/${count} matching frames`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out with ${matched.length}/${count} matching frames`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Waits for `count` frames of one event. */
  waitForEvent(event: string, count = 1, timeoutMs?: number): Promise<Frame[]> {
    return this.waitFor((frame) => frame.event === event, count, timeoutMs);
  }

  /** Waits for the close, with a timeout. */
  async waitClose(timeoutMs = 10_000): Promise<CloseInfo> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('socket did not close')), timeoutMs);
    });
    try {
      return await Promise.race([this.closed, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Closes the socket and waits for it to be closed. */
  async close(): Promise<void> {
    if (this.socket.readyState === WebSocket.CLOSED) return;
    this.socket.close();
    await this.waitClose().catch(() => this.socket.terminate());
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}

/** Resolves after `ms` milliseconds. */
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves with `value` after `ms` (a timer that keeps no process alive). */
export const later = <T>(ms: number, value: T): Promise<T> =>
  new Promise((resolve) => setTimeout(() => resolve(value), ms).unref());

/**
 * Waits until `reached()` holds (at most `timeoutMs`), then `restMs` more, so that what must
 * not happen has had time to. A fixed sleep instead fails when a loaded machine is slow to
 * deliver what must happen.
 */
export async function settle(reached: () => boolean, restMs = 100, timeoutMs = 10_000): Promise<void> {
  const start = performance.now();
  while (!reached()) {
    if (performance.now() - start > timeoutMs) throw new Error(`not reached within ${timeoutMs} ms`);
    await sleep(5);
  }
  await sleep(restMs);
}
