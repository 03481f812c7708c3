/**
 * H-proxy of shared/RELIABILITY.md: an in-process TCP proxy between a client and a server on
 * loopback, whose mode a test changes at any moment (as toxiproxy's toxics do):
 * - `pass`: bytes go through as they come;
 * - `latency(ms)`: every chunk the server sends waits `ms` (each round trip takes `ms` more),
 *   order kept;
 * - `blackhole`: connections stay open and new ones are accepted, but nothing goes through:
 *   the proxy stops reading, so bytes wait in the kernel's buffers (TCP stays up, as with a
 *   frozen server or a lossy path) and flow again in order when the mode changes;
 * - `reset`: every connection is destroyed with a TCP RST, and each new one as it arrives.
 * Every direction holds at most `MAX_QUEUED` bytes before it stops reading its source;
 * `close()` ends every socket and timer the proxy opened.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

const HOST = '127.0.0.1';
const MAX_QUEUED = 1 << 20;

interface State {
  mode: 'pass' | 'latency' | 'blackhole' | 'reset';
  delayMs: number;
}

export interface TcpProxy {
  readonly port: number;
  /** `redis://127.0.0.1:<port>` */
  readonly url: string;
  pass(): void;
  latency(ms: number): void;
  blackhole(): void;
  reset(): void;
  close(): Promise<void>;
}

/** One direction of a connection: chunks from `from`, in order and maybe delayed, to `to`. */
class Pipe {
  private readonly queue: { chunk: Buffer; due: number }[] = [];
  private queued = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly from: Socket,
    private readonly to: Socket,
    private readonly state: State,
    delayed: boolean,
  ) {
    from.on('data', (chunk: Buffer) => {
      const delay = delayed && state.mode === 'latency' ? state.delayMs : 0;
      this.queue.push({ chunk, due: performance.now() + delay });
      this.queued += chunk.length;
      this.flush();
    });
    to.on('drain', () => this.flush());
  }

  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const held = this.state.mode === 'blackhole';
    while (!held && this.queue.length > 0 && !this.to.destroyed && this.to.writableNeedDrain === false) {
      const head = this.queue[0]!;
      const wait = head.due - performance.now();
      if (wait > 0) {
        this.timer = setTimeout(() => this.flush(), Math.ceil(wait));
        break;
      }
      this.queue.shift();
      this.queued -= head.chunk.length;
      this.to.write(head.chunk);
    }
    if (held || this.queued > MAX_QUEUED) this.from.pause();
    else this.from.resume();
  }

  stop(): void {
    clearTimeout(this.timer);
    this.queue.length = 0;
  }
}

/** Starts a proxy on a free loopback port to `127.0.0.1:<targetPort>`, in `pass` mode. */
export async function startTcpProxy(targetPort: number): Promise<TcpProxy> {
  const state: State = { mode: 'pass', delayMs: 0 };
  const pairs = new Set<{ down: Socket; up: Socket; pipes: Pipe[] }>();
  const end = (pair: { down: Socket; up: Socket; pipes: Pipe[] }, rst: boolean) => {
    pairs.delete(pair);
    for (const pipe of pair.pipes) pipe.stop();
    if (rst && !pair.down.destroyed) pair.down.resetAndDestroy();
    pair.down.destroy();
    pair.up.destroy();
  };
  const server: Server = createServer((down) => {
    if (state.mode === 'reset') {
      down.on('error', () => undefined);
      down.resetAndDestroy();
      return;
    }
    const up = connect({ host: HOST, port: targetPort });
    const pair = { down, up, pipes: [] as Pipe[] };
    pairs.add(pair);
    pair.pipes.push(new Pipe(down, up, state, false), new Pipe(up, down, state, true));
    for (const socket of [down, up]) {
      socket.on('error', () => end(pair, false));
      socket.on('close', () => end(pair, false));
    }
    for (const pipe of pair.pipes) pipe.flush();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, HOST, () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  const set = (mode: State['mode'], delayMs = 0) => {
    state.mode = mode;
    state.delayMs = delayMs;
    for (const pair of [...pairs]) {
      if (mode === 'reset') end(pair, true);
      else for (const pipe of pair.pipes) pipe.flush();
    }
  };
  return {
    port,
    url: `redis://${HOST}:${port}`,
    pass: () => set('pass'),
    latency: (ms: number) => set('latency', ms),
    blackhole: () => set('blackhole'),
    reset: () => set('reset'),
    close: () =>
      new Promise<void>((resolve) => {
        for (const pair of [...pairs]) end(pair, false);
        server.close(() => resolve());
      }),
  };
}
